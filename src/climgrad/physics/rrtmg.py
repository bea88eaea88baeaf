"""RRTMG, the correlated-k radiation scheme of WRF, CESM and E3SM, as differentiable processes.

RRTMG (Mlawer et al. 1997, JGR 102, 16663; Iacono et al. 2008, JGR 113, D13103) computes clear-sky
longwave (16 bands, 140 g-points) and shortwave (14 bands, 112 g-points) two-stream fluxes from
temperature, water vapour, ozone and well-mixed gases. It is compiled Fortran, shipped built by
`climt <https://github.com/CliMT/climt>`_ (``pip install 'climgrad[rrtmg]'``, CPython 3.11 on x86-64
Linux); autograd cannot see inside it. climgrad wraps it with :func:`climgrad.autograd.external`:

* the *kernel* (:class:`RRTMGKernel`) calls climt's component on NumPy arrays, **all columns in one
  call**, through the component's ``array_call`` on a raw state that is built once per grid shape
  and overwritten in place (the sympl ``DataArray`` path costs far more than the Fortran itself;
  see ``docs/benchmarks.md``);
* the *Function* is ``external(kernel, structure="column")``: its backward takes central finite
  differences that perturb one level in every column at once, so a backward costs ``2 L`` calls per
  differentiated profile and 2 per differentiated scalar or per-column input, **whatever the number
  of columns** (``operator.calls.last_backward`` counts them);
* the public functions :func:`rrtmg_longwave_fluxes` and :func:`rrtmg_shortwave_fluxes` validate SI
  inputs and call the Function;
* the processes :class:`RRTMGLongwave` and :class:`RRTMGShortwave` own the learnable gas mole
  fractions (and the surface albedo) and return heating rates ``g ΔF / (c_p Δp)`` (K s-1).

Conventions (those of :class:`climgrad.physics.radiation.GrayRadiation`): levels and interfaces run
from the top of the atmosphere (index 0) to the surface; pressures in Pa; fluxes in W m-2, positive
in their own direction, on the ``level + 1`` interfaces.

Regime of validity: clear sky, no aerosol, surface emissivity 1; RRTMG's k-tables cover 160 to
355 K and 1050 to 0.01 hPa. Inside them the fluxes are piecewise smooth: the absorption
coefficients are interpolated linearly between reference temperatures and pressures, so the
derivatives jump (slightly) at the table nodes; the finite-difference gradients are accurate between
nodes (see ``docs/rrtmg.md`` for the measured accuracy).
"""

from __future__ import annotations

import datetime
import importlib.util
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from climgrad.autograd.external import ExternalFunction, external
from climgrad.constants import Constant
from climgrad.constants import solar_constant as default_solar_constant
from climgrad.physics.process import Process
from climgrad.physics.radiation import radiative_heating_rate
from climgrad.typing import Diagnostics, State, Tendencies
from climgrad.validation import (
    HUMIDITY_HINT,
    check_choice,
    check_finite,
    check_interface_pressure,
    check_last_dimension,
    check_not_scalar,
    check_positive,
    check_pressure_levels,
    check_range,
    check_temperature,
)

__all__ = [
    "DEFAULT_MOLE_FRACTIONS",
    "DEFAULT_REL_STEP",
    "GASES",
    "RRTMGKernel",
    "RRTMGLongwave",
    "RRTMGShortwave",
    "climt_available",
    "ozone_mole_fraction",
    "rrtmg_longwave_fluxes",
    "rrtmg_operator",
    "rrtmg_shortwave_fluxes",
]

Band = Literal["longwave", "shortwave"]
Array = NDArray[Any]

molar_mass_dry_air = Constant(
    28.964e-3, "kg mol-1", "climt/RRTMG (mass_to_volume_mixing_ratio)", "molar mass of dry air"
)
molar_mass_ozone = Constant(
    47.998e-3, "kg mol-1", "IUPAC standard atomic weight of O (15.9994) times 3", "molar mass of O3"
)

#: Well-mixed gases, in the order the kernel takes them (mole fraction, mol mol-1).
GASES: tuple[str, ...] = (
    "carbon_dioxide",
    "methane",
    "nitrous_oxide",
    "oxygen",
    "cfc11",
    "cfc12",
    "cfc22",
    "carbon_tetrachloride",
)
_CLIMT_GAS_NAMES = {
    "carbon_dioxide": "mole_fraction_of_carbon_dioxide_in_air",
    "methane": "mole_fraction_of_methane_in_air",
    "nitrous_oxide": "mole_fraction_of_nitrous_oxide_in_air",
    "oxygen": "mole_fraction_of_oxygen_in_air",
    "cfc11": "mole_fraction_of_cfc11_in_air",
    "cfc12": "mole_fraction_of_cfc12_in_air",
    "cfc22": "mole_fraction_of_cfc22_in_air",
    "carbon_tetrachloride": "mole_fraction_of_carbon_tetrachloride_in_air",
}
#: The shortwave scheme reads only these gases (besides water vapour and ozone).
_SHORTWAVE_GASES = ("carbon_dioxide", "methane", "nitrous_oxide", "oxygen")
#: Background mole fractions (mol mol-1): CO2 400 ppm; CH4, N2O and O2 of the AFGL tropical
#: atmosphere (Anderson et al. 1986, AFGL-TR-86-0110); no halocarbons.
DEFAULT_MOLE_FRACTIONS: dict[str, float] = {
    "carbon_dioxide": 400.0e-6,
    "methane": 1.7e-6,
    "nitrous_oxide": 0.32e-6,
    "oxygen": 0.209,
    "cfc11": 0.0,
    "cfc12": 0.0,
    "cfc22": 0.0,
    "carbon_tetrachloride": 0.0,
}
#: Relative finite-difference step of the backward pass. RRTMG's fluxes are a fine staircase
#: (table look-ups of transmittance and of the absorber amounts), so the default ``eps**(1/3)``
#: step differences the noise; 1 % (3 K in temperature) is where central differences were found
#: most accurate (the measured accuracy is in ``docs/rrtmg.md`` and ``docs/benchmarks.md``). The
#: probes run in float64 (``fd_dtype``) whatever the tensors' dtype, as RRTMG does.
DEFAULT_REL_STEP = 1.0e-2


def climt_available() -> bool:
    """True when climt (and so RRTMG) can be imported."""
    return importlib.util.find_spec("climt") is not None


def _import_climt() -> Any:
    try:
        import climt
    except ImportError as error:  # pragma: no cover - exercised only without climt
        raise ImportError(
            "RRTMG needs the optional dependency climt, which ships it compiled for CPython 3.11 "
            "on x86-64 Linux. Install it with `pip install 'climgrad[rrtmg]'` (or `pip install "
            "climt`), or use climgrad.physics.radiation.GrayRadiation instead."
        ) from error
    return climt


def ozone_mole_fraction(ozone_mass_mixing_ratio: Tensor) -> Tensor:
    """Ozone mole fraction ``x = r M_air / M_O3`` from its mass mixing ratio ``r`` (kg kg-1)."""
    return ozone_mass_mixing_ratio * (molar_mass_dry_air / molar_mass_ozone)


# --------------------------------------------------------------------------------------------------
# Kernel: NumPy in, NumPy out, whole batches in one Fortran call
# --------------------------------------------------------------------------------------------------


def _to_climt(profile: Array, columns: int, levels: int) -> Array:
    """``(1 or C, n)`` top first -> climt's ``(n, C)`` surface first, float64, C-contiguous."""
    array = np.broadcast_to(np.asarray(profile, dtype=np.float64), (columns, levels))
    return np.array(array[:, ::-1].T, order="C")  # a writable copy: climt's Cython needs one


def _per_column(value: Array, columns: int) -> Array:
    return np.array(np.broadcast_to(np.asarray(value, dtype=np.float64), (columns,)), order="C")


class RRTMGKernel:
    """One climt RRTMG component called on NumPy arrays (the kernel under :func:`external`).

    ``kernel(layer_pressure, interface_pressure, temperature, specific_humidity, ozone, surface
    temperature, *mole_fractions[, surface_albedo, cosine_zenith]) -> (upward, downward)``, with
    profiles ``(column or 1, level)`` top first, per-column values ``(column,)`` or ``()``, SI units
    (Pa, K, kg kg-1, mol mol-1), and fluxes ``(column, level + 1)`` in W m-2, top first. Ozone is
    given as a mole fraction here. ``mole_fractions`` follow :data:`GASES` (longwave) or the four
    shortwave gases (CO2, CH4, N2O, O2).

    The raw climt state (clouds and aerosols zero, surface emissivity 1) is built once per grid
    shape from ``climt.get_default_state`` and its arrays are overwritten on every call, which
    skips sympl's unit and dimension handling (costlier than the Fortran; see
    ``docs/benchmarks.md``) and leaves the Fortran.

    Args:
        band: ``"longwave"`` or ``"shortwave"``.
        solar_constant: Total solar irradiance at the top of the atmosphere (W m-2, shortwave only;
            climt's Earth-Sun distance and day-of-year factors are switched off).
    """

    def __init__(self, band: Band, solar_constant: float = float(default_solar_constant)) -> None:
        check_choice("band", band, ("longwave", "shortwave"))
        climt = _import_climt()
        import sympl

        self.band = band
        self.solar_constant = float(solar_constant)
        if band == "longwave":
            self.component = climt.RRTMGLongwave()
            self.gases: tuple[str, ...] = GASES
        else:
            # climt reads the irradiance from sympl's global constants when it is built; set it
            # for this component only and put the previous value back.
            previous = sympl.get_constant("stellar_irradiance", "W/m^2")
            sympl.set_constant("stellar_irradiance", self.solar_constant, "W/m^2")
            try:
                self.component = climt.RRTMGShortwave(ignore_day_of_year=True)
            finally:
                sympl.set_constant("stellar_irradiance", previous, "W/m^2")
            self.gases = _SHORTWAVE_GASES
        self._templates: dict[tuple[int, int], dict[str, Any]] = {}
        self.__name__ = f"rrtmg_{band}"

    def _template(self, columns: int, levels: int) -> dict[str, Any]:
        key = (columns, levels)
        if key not in self._templates:
            climt = _import_climt()
            import sympl

            grid = climt.get_grid(nx=columns, nz=levels)
            state = climt.get_default_state([self.component], grid_state=grid)
            raw = sympl.get_numpy_arrays_with_properties(state, self.component.input_properties)
            raw["time"] = datetime.datetime(2000, 1, 1)
            for name in ("flux_adjustment_for_earth_sun_distance", "solar_cycle_fraction"):
                if name in raw:
                    raw[name] = np.asarray(1.0 if name.startswith("flux") else 0.0)
            self._templates[key] = raw
        return self._templates[key]

    def __call__(self, *arrays: Array) -> tuple[Array, Array]:
        expected = 6 + len(self.gases) + (2 if self.band == "shortwave" else 0)
        if len(arrays) != expected:
            raise TypeError(f"rrtmg_{self.band} takes {expected} arrays, got {len(arrays)}.")
        layer_pressure, interface_pressure, temperature, humidity, ozone, surface_temperature = (
            arrays[:6]
        )
        gases = arrays[6 : 6 + len(self.gases)]
        profiles = (layer_pressure, interface_pressure[..., 1:], temperature, humidity, ozone)
        columns = max(np.shape(p)[0] for p in profiles)
        levels = np.shape(temperature)[-1]
        raw = dict(self._template(columns, levels))
        raw["air_pressure"] = _to_climt(layer_pressure / 100.0, columns, levels)
        raw["air_pressure_on_interface_levels"] = _to_climt(
            interface_pressure / 100.0, columns, levels + 1
        )
        raw["air_temperature"] = _to_climt(temperature, columns, levels)
        raw["specific_humidity"] = _to_climt(humidity, columns, levels)
        raw["mole_fraction_of_ozone_in_air"] = _to_climt(ozone, columns, levels)
        raw["surface_temperature"] = _per_column(surface_temperature, columns)
        for name, value in zip(self.gases, gases):
            per_column = _per_column(value, columns)
            raw[_CLIMT_GAS_NAMES[name]] = np.array(
                np.broadcast_to(per_column, (levels, columns)), order="C"
            )
        if self.band == "shortwave":
            albedo = _per_column(arrays[-2], columns)
            for name in (  # one writable array each
                "surface_albedo_for_direct_shortwave",
                "surface_albedo_for_direct_near_infrared",
                "surface_albedo_for_diffuse_shortwave",
                "surface_albedo_for_diffuse_near_infrared",
            ):
                raw[name] = albedo.copy()
            cosine = np.clip(_per_column(arrays[-1], columns), -1.0, 1.0)
            raw["zenith_angle"] = np.arccos(cosine)
        _, diagnostics = self.component.array_call(raw)
        kind = self.band
        upward = diagnostics[f"upwelling_{kind}_flux_in_air"].T[:, ::-1]
        downward = diagnostics[f"downwelling_{kind}_flux_in_air"].T[:, ::-1]
        return np.ascontiguousarray(upward), np.ascontiguousarray(downward)


def rrtmg_operator(
    band: Band,
    *,
    rel_step: float = DEFAULT_REL_STEP,
    solar_constant: float = float(default_solar_constant),
) -> ExternalFunction:
    """RRTMG as a torch op: ``external(RRTMGKernel(band), structure="column")``.

    Central differences in float64 (``fd_dtype``; RRTMG computes in float64 whatever the tensors'
    dtype), step ``rel_step * |x|``. ``operator.calls`` counts the Fortran calls.

    Args:
        band: ``"longwave"`` or ``"shortwave"``.
        rel_step: Relative finite-difference step (default :data:`DEFAULT_REL_STEP`).
        solar_constant: W m-2, shortwave only.

    Returns:
        An :class:`~climgrad.autograd.external.ExternalFunction` taking the kernel's arguments as
        tensors.
    """
    return external(
        RRTMGKernel(band, solar_constant=solar_constant),
        structure="column",
        method="central",
        rel_step=rel_step,
        fd_dtype=torch.float64,
        name=f"rrtmg_{band}",
    )


_DEFAULT_OPERATORS: dict[str, ExternalFunction] = {}


def _default_operator(band: Band) -> ExternalFunction:
    if band not in _DEFAULT_OPERATORS:
        _DEFAULT_OPERATORS[band] = rrtmg_operator(band)
    return _DEFAULT_OPERATORS[band]


# --------------------------------------------------------------------------------------------------
# Public functions: validate SI tensors, call the operator
# --------------------------------------------------------------------------------------------------


def _prepare(
    temperature: Tensor,
    specific_humidity: Tensor,
    ozone_mass_mixing_ratio: Tensor,
    surface_temperature: Tensor,
    interface_pressure: Tensor,
    layer_pressure: Tensor | None,
) -> tuple[tuple[int, ...], list[Tensor]]:
    """Validate, cast to the temperature's dtype and flatten the column dimensions."""
    check_not_scalar("temperature", temperature, "the levels", "Give it as (column, level) in K.")
    dtype, device = temperature.dtype, temperature.device
    batch, levels = tuple(temperature.shape[:-1]), temperature.shape[-1]
    columns = int(np.prod(batch)) if batch else 1
    for name, value in (("temperature", temperature), ("surface_temperature", surface_temperature)):
        check_finite(name, value)
        check_temperature(name, value, minimum=0.0)
    check_positive(
        "specific_humidity",
        specific_humidity,
        "kg kg-1",
        f"Clip negative values (`q.clamp(min=0)`). {HUMIDITY_HINT}",
        allow_zero=True,
        finite=True,
    )
    check_positive("ozone_mass_mixing_ratio", ozone_mass_mixing_ratio, "kg kg-1", allow_zero=True)
    pressure = interface_pressure.to(device=device, dtype=dtype)
    check_last_dimension(
        "interface_pressure", pressure, levels + 1, f"interfaces (around the {levels} levels)"
    )
    check_pressure_levels("interface_pressure", pressure, zero_at_top=True)
    if layer_pressure is None:
        layer_pressure = 0.5 * (pressure[..., 1:] + pressure[..., :-1])
    layer_pressure = layer_pressure.to(device=device, dtype=dtype)

    def profile(value: Tensor, size: int) -> Tensor:
        value = value.to(device=device, dtype=dtype)
        if value.dim() == 1:
            return value.reshape(1, size)
        return value.expand(*batch, size).reshape(columns, size)

    def per_column(value: Tensor) -> Tensor:
        value = value.to(device=device, dtype=dtype)
        return value if value.dim() == 0 else value.expand(batch).reshape(columns)

    arrays = [
        profile(layer_pressure, levels),
        profile(pressure, levels + 1),
        temperature.reshape(columns, levels),
        profile(specific_humidity, levels),
        profile(ozone_mole_fraction(ozone_mass_mixing_ratio), levels),
        per_column(surface_temperature),
    ]
    return batch, arrays


def _gas_tensors(
    mole_fractions: Mapping[str, Tensor | float] | None,
    names: tuple[str, ...],
    like: Tensor,
) -> list[Tensor]:
    given = dict(mole_fractions or {})
    unknown = sorted(set(given) - set(GASES))
    if unknown:
        raise KeyError(f"Unknown gas(es) {unknown}; RRTMG takes mole fractions of {list(GASES)}.")
    tensors = []
    for name in names:
        value = torch.as_tensor(given.get(name, DEFAULT_MOLE_FRACTIONS[name]))
        value = value.to(device=like.device, dtype=like.dtype)
        check_range(
            f"mole_fractions[{name!r}]",
            value,
            0.0,
            1.0,
            "mol mol-1",
            "Convert ppm to mol mol-1 by multiplying by 1e-6.",
        )
        tensors.append(value if value.dim() == 0 else value.reshape(-1))
    return tensors


def rrtmg_longwave_fluxes(
    temperature: Tensor,
    specific_humidity: Tensor,
    ozone_mass_mixing_ratio: Tensor,
    surface_temperature: Tensor,
    interface_pressure: Tensor,
    mole_fractions: Mapping[str, Tensor | float] | None = None,
    *,
    layer_pressure: Tensor | None = None,
    operator: ExternalFunction | None = None,
) -> tuple[Tensor, Tensor]:
    """Clear-sky RRTMG longwave fluxes ``(U, D)`` at the interfaces, differentiable.

    RRTMG_LW (Mlawer et al. 1997, JGR 102, 16663; Iacono et al. 2008): correlated-k absorption in 16
    bands, no scattering, surface emissivity 1. Gradients by central differences through
    :func:`~climgrad.autograd.external` (column structure): ``2 L`` calls per differentiated
    profile, 2 per differentiated scalar or per-column input.

    Args:
        temperature: Layer temperature ``(column, level)`` (or ``(level,)``) in K, top first.
        specific_humidity: ``(column, level)`` or a shared ``(level,)`` profile, kg kg-1 (climt
            converts it to a mole fraction as a mixing ratio, ``q M_air / M_H2O``).
        ozone_mass_mixing_ratio: ``(column, level)`` or ``(level,)``, kg kg-1.
        surface_temperature: ``(column,)`` or ``()`` in K (also the temperature of the lowest
            interface).
        interface_pressure: ``(level + 1,)`` or ``(column, level + 1)`` in Pa, increasing from the
            top.
        mole_fractions: Gas mole fractions (mol mol-1) by name (:data:`GASES`), scalars ``()`` or
            per column ``(column,)``; missing gases take :data:`DEFAULT_MOLE_FRACTIONS`.
        layer_pressure: Layer pressure, Pa; default the mean of the bounding interfaces.
        operator: From :func:`rrtmg_operator` (to count calls or set the step); default a shared
            module-level one.

    Returns:
        ``(upward, downward)``, each ``(column, level + 1)`` in W m-2, interfaces from the top
        (``upward[..., 0]`` is the OLR).
    """
    batch, arrays = _prepare(
        temperature,
        specific_humidity,
        ozone_mass_mixing_ratio,
        surface_temperature,
        interface_pressure,
        layer_pressure,
    )
    gases = _gas_tensors(mole_fractions, GASES, temperature)
    operator = operator or _default_operator("longwave")
    upward, downward = operator(*arrays, *gases)
    size = upward.shape[-1]
    return upward.reshape(*batch, size), downward.reshape(*batch, size)


def rrtmg_shortwave_fluxes(
    temperature: Tensor,
    specific_humidity: Tensor,
    ozone_mass_mixing_ratio: Tensor,
    surface_temperature: Tensor,
    interface_pressure: Tensor,
    surface_albedo: Tensor | float,
    cosine_solar_zenith_angle: Tensor | float,
    mole_fractions: Mapping[str, Tensor | float] | None = None,
    *,
    layer_pressure: Tensor | None = None,
    operator: ExternalFunction | None = None,
) -> tuple[Tensor, Tensor]:
    """Clear-sky RRTMG shortwave fluxes ``(U, D)`` at the interfaces, differentiable.

    RRTMG_SW (Iacono et al. 2008, JGR 113, D13103): 14 bands, delta-Eddington two-stream with
    Rayleigh scattering; incoming flux at the top ``S₀ μ₀`` (``S₀`` from the operator,
    :data:`climgrad.constants.solar_constant` by default). Night columns (``μ₀ <= 0``) get zero.

    Args:
        temperature, specific_humidity, ozone_mass_mixing_ratio, surface_temperature,
            interface_pressure, mole_fractions, layer_pressure, operator: As in
            :func:`rrtmg_longwave_fluxes` (only CO2, CH4, N2O and O2 matter here).
        surface_albedo: Broadband albedo for direct and diffuse light, ``(column,)`` or ``()``,
            dimensionless in [0, 1].
        cosine_solar_zenith_angle: ``μ₀``, ``(column,)`` or ``()``, dimensionless in [-1, 1] (not
            differentiated: pass it without ``requires_grad``).

    Returns:
        ``(upward, downward)``, each ``(column, level + 1)`` in W m-2, interfaces from the top.
    """
    batch, arrays = _prepare(
        temperature,
        specific_humidity,
        ozone_mass_mixing_ratio,
        surface_temperature,
        interface_pressure,
        layer_pressure,
    )
    columns = arrays[2].shape[0]
    albedo = torch.as_tensor(surface_albedo).to(device=temperature.device, dtype=temperature.dtype)
    check_range("surface_albedo", albedo, 0.0, 1.0, hint="Give a fraction, not per cent.")
    cosine = torch.as_tensor(cosine_solar_zenith_angle).to(
        device=temperature.device, dtype=temperature.dtype
    )
    check_range(
        "cosine_solar_zenith_angle", cosine, -1.0, 1.0, hint="Pass cos(zenith), not the angle."
    )
    if albedo.dim() > 0:
        albedo = albedo.expand(batch).reshape(columns)
    if cosine.dim() > 0:
        cosine = cosine.expand(batch).reshape(columns)
    gases = _gas_tensors(mole_fractions, _SHORTWAVE_GASES, temperature)
    operator = operator or _default_operator("shortwave")
    upward, downward = operator(*arrays, *gases, albedo, cosine.detach())
    size = upward.shape[-1]
    return upward.reshape(*batch, size), downward.reshape(*batch, size)


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


class _RRTMGProcess(Process):
    """Shared set-up: interface pressure, background ozone, gases, the operator."""

    interface_pressure: Tensor
    ozone_mass_mixing_ratio: Tensor | None
    band: Band = "longwave"
    gases: tuple[str, ...] = GASES
    #: Gases whose mole fraction is an ``nn.Parameter`` (each costs 2 calls per backward).
    learnable_gases: tuple[str, ...] = ("carbon_dioxide", "methane", "nitrous_oxide")

    def __init__(
        self,
        interface_pressure: Tensor,
        ozone_mass_mixing_ratio: Tensor | None = None,
        mole_fractions: Mapping[str, float] | None = None,
        surface_heat_capacity: float | None = None,
        rel_step: float = DEFAULT_REL_STEP,
        solar_constant: float = float(default_solar_constant),
    ) -> None:
        super().__init__()
        pressure = check_interface_pressure(interface_pressure)
        if surface_heat_capacity is not None:
            check_positive(
                "surface_heat_capacity",
                surface_heat_capacity,
                "J m-2 K-1",
                "Or pass None to leave the surface to other processes.",
            )
        self.register_buffer("interface_pressure", pressure)
        ozone = None
        if ozone_mass_mixing_ratio is not None:
            ozone = torch.as_tensor(ozone_mass_mixing_ratio, dtype=torch.get_default_dtype())
            check_last_dimension(
                "ozone_mass_mixing_ratio", ozone, pressure.numel() - 1, "levels (one value each)"
            )
        self.register_buffer("ozone_mass_mixing_ratio", ozone)
        self.surface_heat_capacity = surface_heat_capacity
        values = dict(DEFAULT_MOLE_FRACTIONS)
        unknown = sorted(set(mole_fractions or {}) - set(GASES))
        if unknown:
            raise KeyError(f"Unknown gas(es) {unknown}; RRTMG takes {list(GASES)}.")
        values.update(mole_fractions or {})
        for name in self.gases:
            tensor = torch.tensor(float(values[name]))
            if name in self.learnable_gases:
                setattr(self, f"{name}_mole_fraction", nn.Parameter(tensor))
            else:
                self.register_buffer(f"{name}_mole_fraction", tensor)
        self.operator = rrtmg_operator(self.band, rel_step=rel_step, solar_constant=solar_constant)

    def _ozone(self, state: State, like: Tensor) -> Tensor:
        if "ozone_mass_mixing_ratio" in state:
            return state["ozone_mass_mixing_ratio"]
        if self.ozone_mass_mixing_ratio is None:
            raise KeyError(
                f"{type(self).__name__} needs ozone: put `ozone_mass_mixing_ratio` (kg kg-1, "
                "(column, level)) in the state or pass `ozone_mass_mixing_ratio=` to the "
                "constructor."
            )
        return self.ozone_mass_mixing_ratio.to(like.dtype)

    def _heating(self, net_upward: Tensor, pressure: Tensor) -> tuple[Tensor, Tendencies]:
        """Layer heating rate (K s-1) from the net upward flux, and the tendencies it implies."""
        heating = radiative_heating_rate(net_upward, pressure[1:] - pressure[:-1])
        tendencies = {"air_temperature": heating}
        if self.surface_heat_capacity is not None:
            tendencies["surface_temperature"] = -net_upward[..., -1] / self.surface_heat_capacity
        return heating, tendencies

    def mole_fractions(self) -> dict[str, Tensor]:
        """The gas mole fractions (mol mol-1) by name, parameters and fixed buffers alike."""
        return {name: getattr(self, f"{name}_mole_fraction") for name in self.gases}


class RRTMGLongwave(_RRTMGProcess):
    """Clear-sky RRTMG longwave radiation of a set of columns (one Fortran call for all of them).

    Tendencies: ``air_temperature`` ``g (F_{k+1} - F_k) / (c_p Δp_k)`` (K s-1) with ``F = U - D``
    the net upward longwave flux; with ``surface_heat_capacity`` ``C_s`` also
    ``surface_temperature`` ``-F_L / C_s``. Diagnostics (W m-2): ``upward_longwave_flux``,
    ``downward_longwave_flux``, ``net_upward_longwave_flux`` ``(..., level + 1)``,
    ``outgoing_longwave_radiation`` ``(...)``; ``longwave_heating_rate`` ``(..., level)`` K s-1.

    State: ``air_temperature`` ``(column, level)`` K, ``specific_humidity`` kg kg-1,
    ``surface_temperature`` ``(column,)`` K, and ``ozone_mass_mixing_ratio`` kg kg-1 unless given to
    the constructor.

    Learnable parameters (mol mol-1): ``carbon_dioxide_mole_fraction``,
    ``methane_mole_fraction``, ``nitrous_oxide_mole_fraction``. Fixed buffers: O2 and the
    halocarbons (``oxygen_mole_fraction``, ...). Backward cost: ``2 L`` RRTMG calls per profile
    that requires grad plus 2 per learnable scalar, counted in ``self.operator.calls``.

    Args:
        interface_pressure: ``(level + 1,)`` in Pa, increasing from the top.
        ozone_mass_mixing_ratio: Background ozone ``(level,)`` kg kg-1, used when the state has
            none.
        mole_fractions: Initial gas mole fractions by name; defaults :data:`DEFAULT_MOLE_FRACTIONS`.
        surface_heat_capacity: J m-2 K-1; None (default) leaves the surface to other processes.
        rel_step: Relative finite-difference step of the backward pass.
        solar_constant: Unused in the longwave (kept for a uniform signature).
    """

    inputs = ("air_temperature", "specific_humidity", "surface_temperature")
    band: Band = "longwave"
    gases = GASES

    def forward(self, state: State) -> tuple[Tendencies, Diagnostics]:
        temperature, humidity, surface_temperature = self.require(state)
        dtype = temperature.dtype
        pressure = self.interface_pressure.to(dtype)
        upward, downward = rrtmg_longwave_fluxes(
            temperature,
            humidity,
            self._ozone(state, temperature),
            surface_temperature,
            pressure,
            self.mole_fractions(),
            operator=self.operator,
        )
        net = upward - downward
        heating, tendencies = self._heating(net, pressure)
        diagnostics = {
            "upward_longwave_flux": upward,
            "downward_longwave_flux": downward,
            "net_upward_longwave_flux": net,
            "outgoing_longwave_radiation": upward[..., 0],
            "longwave_heating_rate": heating,
        }
        return tendencies, diagnostics


class RRTMGShortwave(_RRTMGProcess):
    """Clear-sky RRTMG shortwave radiation of a set of columns (one Fortran call for all of them).

    Tendencies: ``air_temperature`` ``g (F_{k+1} - F_k) / (c_p Δp_k)`` (K s-1) with ``F = U - D``;
    with ``surface_heat_capacity`` ``C_s`` also ``surface_temperature`` ``(D_L - U_L) / C_s``.
    Diagnostics (W m-2): ``upward_shortwave_flux``, ``downward_shortwave_flux``,
    ``net_downward_shortwave_flux`` ``(..., level + 1)``; ``incoming_shortwave``,
    ``reflected_shortwave`` (top of atmosphere) and ``absorbed_shortwave`` (at the surface)
    ``(...)``; ``shortwave_heating_rate`` ``(..., level)`` K s-1.

    State: as :class:`RRTMGLongwave` plus ``cosine_solar_zenith_angle`` ``(column,)`` (or ``()``),
    dimensionless, and optionally ``insolation`` ``(column,)`` (W m-2): when present, the fluxes
    are scaled so that the incoming flux at the top is the insolation (for daily means: pass the
    daily-mean insolation and the insolation-weighted mean cosine of
    :func:`~climgrad.physics.insolation.daily_mean_cosine_zenith`).

    Learnable parameters: ``surface_albedo`` (dimensionless, direct and diffuse, all bands) and the
    mole fractions of CO2 and CH4 (mol mol-1); N2O (no shortwave absorption in RRTMG_SW) and O2 are
    fixed buffers.

    Args:
        interface_pressure, ozone_mass_mixing_ratio, mole_fractions, surface_heat_capacity,
            rel_step: As in :class:`RRTMGLongwave`.
        surface_albedo: Initial albedo in [0, 1].
        solar_constant: Total solar irradiance ``S₀`` in W m-2 (incoming flux ``S₀ μ₀``).
    """

    inputs = (
        "air_temperature",
        "specific_humidity",
        "surface_temperature",
        "cosine_solar_zenith_angle",
    )
    band: Band = "shortwave"
    gases = _SHORTWAVE_GASES
    # RRTMG_SW passes N2O to the Fortran but no band absorbs it: its gradient is exactly zero.
    learnable_gases = ("carbon_dioxide", "methane")

    def __init__(
        self,
        interface_pressure: Tensor,
        ozone_mass_mixing_ratio: Tensor | None = None,
        mole_fractions: Mapping[str, float] | None = None,
        surface_heat_capacity: float | None = None,
        rel_step: float = DEFAULT_REL_STEP,
        solar_constant: float = float(default_solar_constant),
        surface_albedo: float = 0.07,
    ) -> None:
        super().__init__(
            interface_pressure,
            ozone_mass_mixing_ratio,
            mole_fractions,
            surface_heat_capacity,
            rel_step,
            solar_constant,
        )
        check_range(
            "surface_albedo", surface_albedo, 0.0, 1.0, hint="Give a fraction, not per cent."
        )
        #: Broadband surface albedo for direct and diffuse shortwave (dimensionless, 0 to 1).
        self.surface_albedo = nn.Parameter(torch.tensor(float(surface_albedo)))

    def _scale_to_insolation(
        self, insolation: Tensor, cosine: Tensor, upward: Tensor, downward: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Scale the fluxes so that the incoming flux at the top is ``insolation``.

        RRTMG's fluxes are proportional to the incoming flux ``S₀ μ₀``, so multiplying them by
        ``Q / (S₀ μ₀)`` gives those of a top-of-atmosphere flux ``Q`` with the path length of
        ``μ₀``: a daily mean with ``Q`` the daily-mean insolation and ``μ₀`` the
        insolation-weighted mean cosine (:func:`~climgrad.physics.insolation.
        daily_mean_cosine_zenith`). Columns with ``μ₀ <= 0`` get zero.
        """
        insolation = torch.as_tensor(insolation).to(upward)
        check_positive("insolation", insolation, "W m-2", allow_zero=True, finite=True)
        solar = float(self.operator.fn.solar_constant)  # type: ignore[attr-defined]
        mu = torch.as_tensor(cosine).to(upward)
        lit = mu > 0
        factor = torch.where(lit, insolation / (solar * torch.where(lit, mu, 1.0)), 0.0)
        factor = factor.unsqueeze(-1)
        return upward * factor, downward * factor

    def forward(self, state: State) -> tuple[Tendencies, Diagnostics]:
        temperature, humidity, surface_temperature, cosine = self.require(state)
        dtype = temperature.dtype
        pressure = self.interface_pressure.to(dtype)
        upward, downward = rrtmg_shortwave_fluxes(
            temperature,
            humidity,
            self._ozone(state, temperature),
            surface_temperature,
            pressure,
            self.surface_albedo,
            cosine,
            self.mole_fractions(),
            operator=self.operator,
        )
        if "insolation" in state:
            upward, downward = self._scale_to_insolation(
                state["insolation"], cosine, upward, downward
            )
        net_up = upward - downward
        heating, tendencies = self._heating(net_up, pressure)
        diagnostics = {
            "upward_shortwave_flux": upward,
            "downward_shortwave_flux": downward,
            "net_downward_shortwave_flux": -net_up,
            "incoming_shortwave": downward[..., 0],
            "reflected_shortwave": upward[..., 0],
            "absorbed_shortwave": -net_up[..., -1],
            "shortwave_heating_rate": heating,
        }
        return tendencies, diagnostics
