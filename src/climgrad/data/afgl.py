"""AFGL reference atmospheres (Anderson et al. 1986) as background profiles for column models.

The six AFGL atmospheres (tropical, midlatitude and subarctic summer and winter, US standard;
Anderson, Clough, Kneizys, Chetwynd & Shettle 1986, AFGL-TR-86-0110) give temperature and the
volume mixing ratios of H2O, CO2, O3, N2O, CO, CH4 and O2 on 50 levels from 0 to 120 km. They
ship in ``data/single_column/afgl_standard_atmospheres/*.dat`` (whitespace columns: z km, p hPa,
air number density cm-3, T K, then the seven gases in ppmv). :func:`read_afgl` reads one;
:meth:`ReferenceAtmosphere.on_pressure` interpolates it in ln(p) onto model layers, in SI units.

Example:
    >>> from climgrad.data.afgl import read_afgl
    >>> tropical = read_afgl("data/single_column/afgl_standard_atmospheres/tropical.dat")
    >>> profiles = tropical.on_pressure(layer_pressure)  # doctest: +SKIP
    >>> profiles["ozone_mass_mixing_ratio"]  # kg kg-1, one value per layer  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from climgrad.constants import Constant
from climgrad.data.errors import ObservationError

__all__ = ["ReferenceAtmosphere", "read_afgl"]

molar_mass_water = Constant(
    18.015e-3, "kg mol-1", "IUPAC standard atomic weights (H 1.008, O 15.999)", "molar mass of H2O"
)
molar_mass_dry_air = Constant(28.964e-3, "kg mol-1", "US Standard Atmosphere 1976", "dry air")
molar_mass_ozone = Constant(47.998e-3, "kg mol-1", "IUPAC standard atomic weights", "O3")

_GAS_COLUMNS = {"carbon_dioxide": 5, "nitrous_oxide": 7, "methane": 9, "oxygen": 10}
_FIX = (
    "pass one of the AFGL tables in data/single_column/afgl_standard_atmospheres/*.dat "
    "(11 whitespace columns: z km, p hPa, n cm-3, T K, H2O CO2 O3 N2O CO CH4 O2 ppmv)"
)

Array = NDArray[np.float64]


@dataclass(frozen=True)
class ReferenceAtmosphere:
    """One AFGL atmosphere in SI units, levels ordered from the top (increasing pressure).

    Attributes:
        path: The file it was read from.
        pressure: Level pressure in Pa ``(level,)``, increasing.
        temperature: K.
        specific_humidity: kg kg-1 (from the H2O volume mixing ratio ``w``:
            ``r = w M_H2O / M_air``, ``q = r / (1 + r)``).
        ozone_mass_mixing_ratio: kg kg-1 (``w M_O3 / M_air``).
        mole_fractions: Surface mole fractions (mol mol-1) of ``carbon_dioxide``, ``methane``,
            ``nitrous_oxide`` and ``oxygen``, the names :mod:`climgrad.physics.rrtmg` takes.
    """

    path: str
    pressure: Array
    temperature: Array
    specific_humidity: Array
    ozone_mass_mixing_ratio: Array
    mole_fractions: dict[str, float] = field(default_factory=dict)

    def on_pressure(
        self, pressure: Tensor, *, dtype: torch.dtype | None = None
    ) -> dict[str, Tensor]:
        """The profiles interpolated linearly in ln(p) onto ``pressure`` (Pa), held constant beyond.

        Args:
            pressure: Target pressures in Pa, any shape (layer pressures of a model, say); a
                pressure of 0 (a model top) takes the top value.
            dtype: Of the returned tensors (default: ``pressure``'s).

        Returns:
            ``temperature`` (K), ``specific_humidity`` and ``ozone_mass_mixing_ratio``
            (kg kg-1), each of ``pressure``'s shape.
        """
        target = pressure.detach().cpu().double().numpy()
        log_target = np.log(np.maximum(target, self.pressure[0]))
        log_pressure = np.log(self.pressure)
        result = {}
        for name in ("temperature", "specific_humidity", "ozone_mass_mixing_ratio"):
            values = np.interp(log_target, log_pressure, getattr(self, name))
            result[name] = torch.as_tensor(values, dtype=dtype or pressure.dtype).to(
                pressure.device
            )
        return result


def read_afgl(path: str | Path) -> ReferenceAtmosphere:
    """Read an AFGL reference atmosphere table.

    Args:
        path: A ``.dat`` file of ``data/single_column/afgl_standard_atmospheres`` (relative paths
            start from the working directory).

    Returns:
        The :class:`ReferenceAtmosphere`.

    Raises:
        ObservationError: The file is missing or is not an AFGL table (one line, with the fix).
    """
    file = Path(path)
    if not file.is_file():
        raise ObservationError(path, None, "no such file", _FIX)
    try:
        table = np.loadtxt(file, ndmin=2)
    except ValueError as error:
        raise ObservationError(path, None, f"not a numeric table ({error})", _FIX) from error
    if table.shape[1] != 11 or table.shape[0] < 2:
        raise ObservationError(
            path, None, f"expected >= 2 rows of 11 columns, got shape {table.shape}", _FIX
        )
    if not np.isfinite(table).all() or (table[:, 1] <= 0).any() or (table[:, 4:] < 0).any():
        raise ObservationError(
            path, None, "non-finite values, non-positive pressures or negative mixing ratios", _FIX
        )
    table = table[np.argsort(table[:, 1])]  # top first: increasing pressure
    if (np.diff(table[:, 1]) <= 0).any():
        raise ObservationError(path, None, "repeated pressure levels", _FIX)
    ozone_per_ppmv = float(molar_mass_ozone) / float(molar_mass_dry_air)
    water = table[:, 4] * 1e-6 * (float(molar_mass_water) / float(molar_mass_dry_air))
    bottom = int(np.argmax(table[:, 1]))
    gases = {name: float(table[bottom, column]) * 1e-6 for name, column in _GAS_COLUMNS.items()}
    return ReferenceAtmosphere(
        path=str(path),
        pressure=table[:, 1] * 100.0,
        temperature=table[:, 3].copy(),
        specific_humidity=water / (1.0 + water),
        ozone_mass_mixing_ratio=table[:, 6] * 1e-6 * ozone_per_ppmv,
        mole_fractions=gases,
    )
