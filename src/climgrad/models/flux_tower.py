"""Bulk surface fluxes driven by a flux tower's observed surface-layer state.

:class:`FluxTowerModel` is the bulk formulae of :class:`~climgrad.physics.surface.SurfaceFluxes`
(Garratt 1992, ch. 4),

.. math::

    H = \\rho\\, c_p\\, C_H\\, f(Ri_B)\\, V_e\\, (T_s - T_a), \\qquad
    LE = \\rho\\, L\\, C_E\\, f(Ri_B)\\, V_e\\, (q_s(T_s, p) - q_a), \\qquad
    V_e = \\sqrt{V^2 + w_g^2},

driven by the observed near-surface state of a flux tower: air temperature, specific humidity,
mean wind, pressure and density from the eddy-covariance system, and the skin temperature from the
radiometers' longwave fluxes (:func:`~climgrad.physics.surface.skin_temperature`, emissivity 0.98
for grassland). The stability factor ``f`` (Louis 1979 type) is optional; without it ``f = 1``.
The driving data are read by :func:`climgrad.data.drivers.read_flux_tower`; the model takes them
as arrays.

Regime: the half-hourly surface layer over homogeneous grassland (ARM SGP E39). ``q_s(T_s)`` is
the flux from a saturated surface, so over land ``C_E`` is an effective coefficient that absorbs
the surface (stomatal and soil) resistance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from climgrad.models.base import Model
from climgrad.models.specs import GUSTINESS, HEAT_EXCHANGE, MOISTURE_EXCHANGE
from climgrad.params import ParamSpec, constrain
from climgrad.physics.surface import SurfaceFluxes, skin_temperature
from climgrad.typing import Diagnostics, State, Tendencies

__all__ = ["DRIVER_NAMES", "SPECS", "FluxTowerModel"]

SPECS: dict[str, ParamSpec] = {
    "heat_exchange": HEAT_EXCHANGE,
    "moisture_exchange": MOISTURE_EXCHANGE,
    "gustiness": GUSTINESS,
}
_ATTRIBUTES = {
    "heat_exchange": "heat_exchange_coefficient",
    "moisture_exchange": "moisture_exchange_coefficient",
    "gustiness": "gustiness",
}
#: The driving arrays the model takes, ``(time,)`` in SI units.
DRIVER_NAMES = (
    "wind_speed",
    "air_temperature",
    "specific_humidity",
    "air_density",
    "surface_pressure",
    "upwelling_longwave",
    "downwelling_longwave",
    "hours",
)
_STATE = (
    "surface_temperature",
    "air_temperature",
    "specific_humidity",
    "wind_speed",
    "surface_pressure",
    "air_density",
)


class FluxTowerModel(Model):
    """Bulk surface fluxes driven by a flux tower's observed surface-layer state.

    Args:
        drivers: ``(time,)`` arrays or tensors by name (:data:`DRIVER_NAMES`): ``wind_speed``
            (m s-1), ``air_temperature`` (K), ``specific_humidity`` (kg kg-1), ``air_density``
            (kg m-3), ``surface_pressure`` (Pa), ``upwelling_longwave`` and
            ``downwelling_longwave`` (W m-2), ``hours`` since the first sample; e.g.
            ``dataclasses.asdict(climgrad.data.drivers.read_flux_tower(...))``.
        emissivity: Surface longwave emissivity for the skin temperature.
        reference_height: Measurement height of wind and temperature in m (for ``Ri_B``).
        stability: Multiply ``C_H`` and ``C_E`` by the Louis-type stability factor.
        heat_exchange, moisture_exchange, gustiness: Initial values (see :data:`SPECS`).
        learn: Names of the learnable parameters (default ``heat_exchange`` and
            ``moisture_exchange``).
        dtype, device: Of parameters and driving state.

    Driving state (buffers): ``(time,)`` tensors ``surface_temperature`` (skin, K),
    ``air_temperature`` (K), ``specific_humidity`` (kg kg-1), ``wind_speed`` (m s-1),
    ``surface_pressure`` (Pa), ``air_density`` (kg m-3); ``hours`` since the first sample.
    """

    surface_temperature: Tensor
    air_temperature: Tensor
    specific_humidity: Tensor
    wind_speed: Tensor
    surface_pressure: Tensor
    air_density: Tensor
    hours: Tensor

    def __init__(
        self,
        drivers: Mapping[str, Tensor | np.ndarray[Any, Any]],
        *,
        emissivity: float = 0.98,
        reference_height: float = 3.0,
        stability: bool = False,
        heat_exchange: float = 7.5e-3,
        moisture_exchange: float = 1.5e-3,
        gustiness: float = 0.5,
        learn: tuple[str, ...] | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        learn = ("heat_exchange", "moisture_exchange") if learn is None else learn
        unknown = sorted(set(learn) - set(SPECS))
        if unknown:
            raise ValueError(f"Unknown parameter(s) {unknown} in learn=; valid: {list(SPECS)}.")
        missing = [name for name in DRIVER_NAMES if name not in drivers]
        if missing:
            raise ValueError(
                f"`drivers` lacks {missing}; read them with climgrad.data.drivers.read_flux_tower."
            )
        arrays = {
            name: torch.as_tensor(np.asarray(drivers[name]), dtype=torch.float64)
            for name in DRIVER_NAMES
        }
        lengths = {tuple(array.shape) for array in arrays.values()}
        if len(lengths) != 1 or len(next(iter(lengths))) != 1:
            raise ValueError(f"`drivers` must be 1-D arrays of one length; got shapes {lengths}.")
        surface = SurfaceFluxes(
            heat_exchange,
            moisture_exchange,
            gustiness,
            stability=stability,
            reference_height=reference_height,
            moisture=True,
        )
        super().__init__({"surface": surface})
        self.to(dtype)
        values = {
            "heat_exchange": heat_exchange,
            "moisture_exchange": moisture_exchange,
            "gustiness": gustiness,
        }
        for name, spec in SPECS.items():
            constrain(surface, _ATTRIBUTES[name], spec, value=values[name], learn=name in learn)
        state = {
            name: arrays[name]
            for name in _STATE
            if name != "surface_temperature"  # diagnosed from the radiometers below
        }
        state["surface_temperature"] = skin_temperature(
            arrays["upwelling_longwave"], arrays["downwelling_longwave"], emissivity
        )
        state["hours"] = arrays["hours"]
        for name, array in state.items():
            self.register_buffer(name, array.to(dtype), persistent=False)
        if device is not None:
            self.to(device)

    def driving_state(self) -> dict[str, Tensor]:
        """The observed surface-layer state, ``(time,)`` tensors in SI units."""
        return {name: getattr(self, name) for name in _STATE}

    def forward(self, state: State) -> tuple[Tendencies, Diagnostics]:
        """Fluxes (W m-2, positive upward) as :class:`SurfaceFluxes` diagnoses them."""
        return super().forward(state)
