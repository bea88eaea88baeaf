"""``SingleColumnModel``: a gray radiative-convective column with a surface slab.

Each column has L layers of equal pressure thickness between the top of the atmosphere (p = 0) and
the surface pressure p_s, and a surface slab of heat capacity C_s. The tendencies are the sum of

* gray two-stream longwave radiation with optical depth τ(p) = τ₀ (p/p_s)^n and shortwave absorbed
  at the surface with albedo α (:class:`~climgrad.physics.radiation.GrayRadiation`);
* bulk sensible (and, with moisture, latent) heat exchange between the surface and the lowest
  layer with coefficient C_H (:class:`~climgrad.physics.surface.SurfaceFluxes`);
* Betts–Miller-style convective relaxation towards a profile of constant lapse rate Γ_c over a
  time τ_c (:class:`~climgrad.physics.convection.BettsMillerConvection`);
* with ``radiation="rrtmg"``, RRTMG longwave and shortwave (:mod:`climgrad.physics.rrtmg`, the
  optional extra ``climgrad[rrtmg]``) in place of the gray scheme: ozone and well-mixed gases from
  a background atmosphere (``background=``, e.g. AFGL tropical via
  :func:`climgrad.data.afgl.read_afgl`), water vapour either the background profile times a
  learnable ``humidity_scale`` (``humidity="background"``) or Manabe & Wetherald's fixed
  relative humidity with a learnable ``surface_relative_humidity`` (``humidity="relative"``), the
  shortwave scaled to the daily-mean insolation along the insolation-weighted zenith angle;
* optionally, implicit vertical diffusion of temperature
  (:class:`~climgrad.physics.diffusion.VerticalDiffusion`) and, with moisture, large-scale
  condensation (:class:`~climgrad.physics.thermo.LargeScaleCondensation`).

With the default settings (dry, no diffusion) one :meth:`step` is exactly one step of benchmark B2
(``docs/benchmark_problems.md``, B2.4), whose reference values the tests reproduce. Regime: a gray
atmosphere (no spectral detail, no clouds), dry convection relaxed to a fixed lapse rate: a
teaching-and-calibration model of radiative-convective equilibrium (Manabe & Wetherald 1967;
Frierson et al. 2006 for the gray radiation and relaxation), not a weather model.

Parameters (SI inside; B2's units in brackets):

=========================  =========  ===========================================  ==============
name                       units      meaning                                      bounds
=========================  =========  ===========================================  ==============
``surface_optical_depth``  1          τ₀, longwave optical depth at p_s            (0, ∞), log
``pressure_exponent``      1          n in τ = τ₀ (p/p_s)^n                        (0, ∞), log
``surface_albedo``         1          α                                            (0, 1)
``critical_lapse_rate``    K m-1      Γ_c [K km-1 × 1e-3]                          (0, 9.76e-3)
``relaxation_time``        s          τ_c [hours × 3600]                           (0, ∞), log
``heat_exchange``          1          C_H, bulk transfer coefficient               (0, ∞), log
=========================  =========  ===========================================  ==============

With ``radiation="rrtmg"`` the table loses ``surface_optical_depth`` and ``pressure_exponent``,
``surface_albedo`` becomes RRTMG's broadband surface albedo (with no clouds it stands for the
reflection by clouds as well), and the humidity parameter is added: ``humidity_scale`` (1,
(0, ∞), log) or ``surface_relative_humidity`` (1, (0, 1)). Regime: clear-sky correlated-k
radiation; dry (``moisture=False``): no latent heat (the surface loses energy by radiation and
sensible heat only) and a fixed convective lapse rate; no export of energy by a circulation.
Near the runaway-greenhouse limit (fixed relative humidity, absorbed sunlight above about
280 W m-2) the equilibrium becomes ill-conditioned or ceases to exist; the background
humidity mode has no water-vapour feedback and stays well-conditioned.

Options add, with their own parameters (declared the same way):

* ``upwelling=w_0`` (m s-1): prescribed ascent of the tropopause layer above 200 hPa
  (:class:`~climgrad.physics.ascent.TropopauseUpwelling`, the Brewer–Dobson upwelling that cools
  the tropical tropopause adiabatically), parameter ``upwelling_velocity`` ((0, ∞), log);
* ``diffusivity=K`` (Pa2 s-1, per level or scalar; K_p = (ρ g)² K_z converts from m2 s-1, see
  :func:`~climgrad.physics.diffusion.pressure_coordinate_diffusivity`): implicit vertical diffusion
  of temperature, parameter ``vertical_diffusivity`` (field, (0, ∞), log);
* ``moisture=True``: a ``specific_humidity`` state, latent heat flux from a saturated surface with
  coefficient C_E (``moisture_exchange``) and large-scale condensation above a critical relative
  humidity (``critical_relative_humidity``, (0, 1)) with latent heating (the gray radiation does not
  see the vapour).

**The moist RRTMG column** (``radiation="rrtmg", moisture=True``): the vapour RRTMG sees stays
diagnosed (``humidity=``, fixed relative humidity by default in the configs), and the latent heat
enters the energy budget: the surface loses the bulk latent heat flux
``LE = ρ C_E |U| L (q_s(T_s) - q_{L-1})`` (:func:`~climgrad.physics.surface.latent_heat_flux`, the
lowest layer's diagnosed ``q``) besides the sensible heat, and moist Betts–Miller convection
(:class:`~climgrad.physics.moist_convection.MoistBettsMillerConvection`) relaxes the column toward
the moist pseudo-adiabat through the lowest layer and releases exactly ``LE`` in the convecting
layers (precipitation equals evaporation). The troposphere then follows the moist adiabat and a
tropopause forms where the radiative profile is warmer than it; ozone from the background heats
the stratosphere. Parameters: ``surface_albedo``, ``relaxation_time``, ``heat_exchange``,
``moisture_exchange`` (C_E) and the humidity parameter; ``critical_lapse_rate`` does not exist
(the lapse rate is the moist adiabat's). Energy is conserved: at equilibrium the net flux at the
top of the atmosphere vanishes (tested). Regime: a clear-sky tropical or global-mean column over
an ocean mixed layer (no clouds: ``surface_albedo`` stands for their reflection; no large-scale
ascent or descent, no entrainment, no ice), the sub-cloud layer folded into the lowest layer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from climgrad.constants import gravity, heat_capacity_dry_air
from climgrad.integrate import (
    EquilibriumError,
    EquilibriumInfo,
    equilibrium,
    rollout,
    solve_with_restarts,
)
from climgrad.models.base import Model, functional
from climgrad.models.specs import HEAT_EXCHANGE, MOISTURE_EXCHANGE
from climgrad.params import ParamSpec, TransformName, constrain
from climgrad.physics.ascent import TropopauseUpwelling
from climgrad.physics.convection import BettsMillerConvection
from climgrad.physics.diffusion import VerticalDiffusion, VerticalGrid
from climgrad.physics.moist_convection import MoistBettsMillerConvection
from climgrad.physics.radiation import GrayRadiation
from climgrad.physics.surface import SurfaceFluxes
from climgrad.physics.thermo import (
    FixedRelativeHumidity,
    LargeScaleCondensation,
    specific_humidity_from_relative_humidity,
)
from climgrad.typing import Diagnostics, State, Tendencies

if TYPE_CHECKING:
    from climgrad.data.afgl import ReferenceAtmosphere

__all__ = ["HUMIDITY_MODES", "RADIATION_SCHEMES", "SingleColumnModel"]

#: ``radiation=`` choices: the gray two-stream scheme or RRTMG (needs ``climgrad[rrtmg]``).
RADIATION_SCHEMES: tuple[str, ...] = ("gray", "rrtmg")
#: ``humidity=`` choices of the RRTMG configuration: the background profile times a learnable
#: factor, or Manabe & Wetherald's fixed relative humidity (vapour follows temperature).
HUMIDITY_MODES: dict[str, str] = {
    "background": "humidity_scale",
    "relative": "surface_relative_humidity",
}

_LOG: TransformName = "exp"
DRY_ADIABATIC_LAPSE_RATE = float(gravity) / float(heat_capacity_dry_air)  # K m-1

OPTIONAL_SPECS: dict[str, ParamSpec] = {
    "vertical_diffusivity": ParamSpec(
        "vertical_diffusivity",
        "Pa2 s-1",
        1.0,
        (0.0, None),
        "vertical eddy diffusivity",
        transform=_LOG,
    ),
    "moisture_exchange": MOISTURE_EXCHANGE,
    "critical_relative_humidity": ParamSpec(
        "critical_relative_humidity", "1", 0.9, (0.0, 1.0), "onset of large-scale condensation"
    ),
    "upwelling_velocity": ParamSpec(
        "upwelling_velocity",
        "m s-1",
        3.0e-4,
        (0.0, None),
        "upward velocity of the tropopause layer (prescribed ascent above 200 hPa)",
        transform=_LOG,
    ),
}
SPECS: dict[str, ParamSpec] = {
    "surface_optical_depth": ParamSpec(
        "surface_optical_depth",
        "1",
        4.0,
        (0.0, None),
        "longwave optical depth at the surface",
        transform=_LOG,
    ),
    "pressure_exponent": ParamSpec(
        "pressure_exponent",
        "1",
        4.0,
        (0.0, None),
        "pressure exponent of the optical depth",
        transform=_LOG,
    ),
    "surface_albedo": ParamSpec("surface_albedo", "1", 0.3, (0.0, 1.0), "surface albedo"),
    "critical_lapse_rate": ParamSpec(
        "critical_lapse_rate",
        "K m-1",
        6.5e-3,
        (0.0, DRY_ADIABATIC_LAPSE_RATE),
        "critical lapse rate of convective relaxation",
    ),
    "relaxation_time": ParamSpec(
        "relaxation_time",
        "s",
        4.0 * 3600.0,
        (0.0, None),
        "convective relaxation time",
        transform=_LOG,
    ),
    "heat_exchange": HEAT_EXCHANGE,
}
#: Parameters of the RRTMG configuration (``radiation="rrtmg"``) besides the convective and
#: surface ones; the gray optical depth and its exponent do not exist there.
RRTMG_SPECS: dict[str, ParamSpec] = {
    "humidity_scale": ParamSpec(
        "humidity_scale",
        "1",
        1.0,
        (0.0, None),
        "factor on the background specific humidity profile seen by RRTMG",
        transform=_LOG,
    ),
    "surface_relative_humidity": ParamSpec(
        "surface_relative_humidity",
        "1",
        0.77,
        (0.0, 1.0),
        "surface relative humidity of the fixed-RH profile (Manabe & Wetherald 1967)",
    ),
}
_GRAY_ONLY = ("surface_optical_depth", "pressure_exponent")
_LOCATION = {
    "surface_optical_depth": ("radiation", "surface_optical_depth"),
    "pressure_exponent": ("radiation", "pressure_exponent"),
    "surface_albedo": ("radiation", "surface_albedo"),
    "critical_lapse_rate": ("convection", "critical_lapse_rate"),
    "relaxation_time": ("convection", "relaxation_time"),
    "heat_exchange": ("surface", "heat_exchange_coefficient"),
}


class ScaledHumidity(nn.Module):
    """``q = s q_b(p)``: a background specific humidity profile times a learnable factor.

    Args:
        profile: ``q_b`` on the model layers ``(level,)`` in kg kg-1 (e.g. an AFGL atmosphere).
        humidity_scale: Initial ``s`` (dimensionless, > 0).
    """

    profile: Tensor

    def __init__(self, profile: Tensor, humidity_scale: float = 1.0) -> None:
        super().__init__()
        if not humidity_scale > 0:
            raise ValueError(f"`humidity_scale` must be positive; got {humidity_scale}.")
        self.register_buffer("profile", torch.as_tensor(profile))
        self.humidity_scale = nn.Parameter(torch.tensor(float(humidity_scale)))

    def forward(
        self, temperature: Tensor, pressure: Tensor, surface_pressure: Tensor | float
    ) -> Tensor:
        """``s q_b`` broadcast to ``temperature``'s shape (kg kg-1); T and p are not used."""
        del pressure, surface_pressure
        return (self.humidity_scale * self.profile).to(temperature).expand_as(temperature)


class SingleColumnModel(Model):
    """Radiative-convective columns, gray or RRTMG (see the module docstring).

    Args:
        levels: Number of layers L.
        surface_pressure: p_s in Pa.
        time_step: Δt in s of :meth:`step`.
        surface_heat_capacity: C_s in J m-2 K-1.
        wind_speed: Surface wind in m s-1 (state default).
        air_density: Near-surface air density in kg m-3 used by the bulk formula (state default).
        convective_width: δ in K of the logistic convective switch.
        surface_optical_depth, pressure_exponent, surface_albedo, critical_lapse_rate,
            relaxation_time, heat_exchange: initial parameter values (SI; table above).
        diffusivity, upwelling, moisture, moisture_exchange, critical_relative_humidity: the
            options above (with ``radiation="rrtmg"``, ``moisture=True`` is the moist RRTMG
            column: latent heat flux and moist Betts–Miller convection, vapour still diagnosed
            by ``humidity=``).
        radiation: ``"gray"`` (default) or ``"rrtmg"`` (needs ``climgrad[rrtmg]``).
        background: With RRTMG: the background atmosphere (a
            :class:`~climgrad.data.afgl.ReferenceAtmosphere`, e.g. from
            :func:`~climgrad.data.afgl.read_afgl`; models take no paths) giving
            ozone, the well-mixed gases and the background humidity, interpolated in ln p.
        mole_fractions: With RRTMG: gas mole fractions (mol mol-1) by RRTMG's names, overriding
            the background's (e.g. ``{"carbon_dioxide": 381.9e-6}``).
        humidity: With RRTMG: ``"background"`` (``q = humidity_scale × q_background``) or
            ``"relative"`` (Manabe–Wetherald fixed relative humidity).
        humidity_scale, surface_relative_humidity: Initial values of the humidity parameter.
        learn: Names of the learnable parameters (default: all of the configuration's).
        dtype, device: Of parameters and grid.

    State: ``air_temperature`` ``(column, level)`` K (top first), ``surface_temperature``
    ``(column,)`` K, ``insolation`` ``(column,)`` W m-2, and ``wind_speed``, ``air_density``,
    ``surface_pressure`` (filled in by :meth:`initial_state`); with RRTMG also
    ``cosine_solar_zenith_angle`` ``(column,)``.
    """

    interface_pressure: Tensor
    layer_pressure: Tensor

    def __init__(
        self,
        levels: int = 40,
        *,
        surface_pressure: float = 1.0e5,
        time_step: float = 3600.0,
        surface_heat_capacity: float = 1.0e7,
        wind_speed: float = 5.0,
        air_density: float = 1.2,
        convective_width: float = 1.0,
        surface_optical_depth: float = 4.0,
        pressure_exponent: float = 4.0,
        surface_albedo: float = 0.3,
        critical_lapse_rate: float = 6.5e-3,
        relaxation_time: float = 4.0 * 3600.0,
        heat_exchange: float = 1.5e-3,
        diffusivity: float | Tensor | None = None,
        upwelling: float | None = None,
        moisture: bool = False,
        moisture_exchange: float = 1.5e-3,
        critical_relative_humidity: float = 0.9,
        radiation: str = "gray",
        background: ReferenceAtmosphere | None = None,
        mole_fractions: Mapping[str, float] | None = None,
        humidity: str = "background",
        humidity_scale: float = 1.0,
        surface_relative_humidity: float = 0.77,
        learn: tuple[str, ...] | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        if levels < 2:
            raise ValueError(f"SingleColumnModel needs at least 2 levels, got {levels}.")
        if radiation not in RADIATION_SCHEMES:
            raise ValueError(
                f"radiation={radiation!r} is not a scheme; choose one of {list(RADIATION_SCHEMES)}."
            )
        rrtmg = radiation == "rrtmg"
        names = [n for n in SPECS if not (rrtmg and n in _GRAY_ONLY)]
        if humidity not in HUMIDITY_MODES:
            raise ValueError(
                f"humidity={humidity!r} is not a mode; choose one of {list(HUMIDITY_MODES)}."
            )
        names += [HUMIDITY_MODES[humidity]] if rrtmg else []
        moist_rrtmg = rrtmg and moisture
        if moist_rrtmg:
            names = [n for n in names if n != "critical_lapse_rate"]
            if learn is not None and "critical_lapse_rate" in learn:
                raise ValueError(
                    "radiation='rrtmg' with moisture=True relaxes toward the moist adiabat and "
                    "has no critical_lapse_rate; drop it from learn= (learn relaxation_time, "
                    "moisture_exchange, ...)."
                )
        if learn is None:
            learn = tuple(names)
            learn += ("vertical_diffusivity",) if diffusivity is not None else ()
            learn += ("upwelling_velocity",) if upwelling is not None else ()
            if moist_rrtmg:
                learn += ("moisture_exchange",)
            elif moisture:
                learn += ("moisture_exchange", "critical_relative_humidity")
        if moist_rrtmg and "critical_relative_humidity" in learn:
            raise ValueError(
                "radiation='rrtmg' with moisture=True diagnoses its vapour (humidity=) and has no "
                "large-scale condensation; drop critical_relative_humidity from learn=."
            )
        unknown = sorted(set(learn) - set(names) - set(OPTIONAL_SPECS))
        if unknown:
            raise ValueError(
                f"Unknown parameter(s) {unknown} in learn= for radiation={radiation!r}; "
                f"valid: {names + list(OPTIONAL_SPECS)}."
            )
        if isinstance(background, (str, Path)):
            raise TypeError(
                "`background` must be a ReferenceAtmosphere, not a path: read the table with "
                f"climgrad.data.afgl.read_afgl({str(background)!r}) and pass the result."
            )
        if rrtmg and background is None:
            raise ValueError(
                "radiation='rrtmg' needs a background atmosphere for ozone: pass "
                "background=climgrad.data.afgl.read_afgl('data/single_column/"
                "afgl_standard_atmospheres/tropical.dat')."
            )
        interfaces = surface_pressure * torch.arange(levels + 1, dtype=dtype) / levels
        layers = surface_pressure * (torch.arange(levels, dtype=dtype) + 0.5) / levels
        thickness = surface_pressure / levels
        convection: nn.Module = (
            MoistBettsMillerConvection(
                layers, thickness, relaxation_time=relaxation_time, width=convective_width
            )
            if moist_rrtmg
            else BettsMillerConvection(layers, width=convective_width)
        )
        if rrtmg:
            assert background is not None
            radiative = self._rrtmg_processes(
                interfaces,
                layers,
                background,
                mole_fractions,
                surface_heat_capacity,
                surface_albedo,
            )
        else:
            radiative = {
                "radiation": GrayRadiation(interfaces, surface_heat_capacity=surface_heat_capacity)
            }
        super().__init__(
            {
                **radiative,
                "surface": SurfaceFluxes(
                    heat_exchange_coefficient=heat_exchange,
                    # B2's bulk formula has no gust floor; a vanishing one keeps it exact.
                    gustiness=1e-9,
                    surface_heat_capacity=surface_heat_capacity,
                    lowest_layer_pressure_thickness=thickness,
                    lowest_level=-1,
                    moisture=moisture,
                ),
                "convection": convection,
            }
        )
        #: Prognostic specific humidity (gray radiation with ``moisture=True``).
        self.moisture = moisture and not moist_rrtmg
        #: Latent heat and moist convection with diagnosed vapour (RRTMG with ``moisture=True``).
        self.moist_convection = moist_rrtmg
        self.radiation = radiation
        if moist_rrtmg:
            # The surface's latent heat flux is what moist convection releases in the column.
            self.passed_on = ("latent_heat_flux",)
        if moisture and not moist_rrtmg and diffusivity is None:
            raise ValueError(
                "moisture=True needs vertical transport of vapour: pass a diffusivity (Pa2 s-1), "
                "e.g. diffusivity=1.0."
            )
        if upwelling is not None:
            self.processes["upwelling"] = TropopauseUpwelling(layers, upwelling)
        if diffusivity is not None:
            grid = VerticalGrid.from_interfaces(interfaces, coordinate="pressure")
            profile = torch.as_tensor(diffusivity, dtype=dtype).expand(levels).clone()
            self.processes["diffusion"] = VerticalDiffusion(grid, profile, time_step)
        if moisture and not moist_rrtmg:
            assert diffusivity is not None
            # Vapour is mixed by the same eddies (same K, not separately calibrated).
            self.processes["humidity_diffusion"] = VerticalDiffusion(
                grid, profile, time_step, variable="specific_humidity"
            )
            self.processes["humidity_diffusion"].diffusivity.requires_grad_(False)
            self.processes["condensation"] = LargeScaleCondensation(critical_relative_humidity)
        surface = self.processes["surface"]
        assert isinstance(surface, SurfaceFluxes)
        # Numerical settings of the dry surface scheme, not calibration targets.
        surface.gustiness.requires_grad_(False)
        if not moisture:
            surface.moisture_exchange_coefficient.requires_grad_(False)
        self.to(dtype)
        self.register_buffer("interface_pressure", interfaces)
        self.register_buffer("layer_pressure", layers)
        self.time_step = float(time_step)
        self.wind_speed = float(wind_speed)
        self.air_density = float(air_density)
        self.surface_pressure = float(surface_pressure)
        values = {
            "surface_optical_depth": surface_optical_depth,
            "pressure_exponent": pressure_exponent,
            "surface_albedo": surface_albedo,
            "critical_lapse_rate": critical_lapse_rate,
            "relaxation_time": relaxation_time,
            "heat_exchange": heat_exchange,
        }
        for name, (process, attribute) in _LOCATION.items():
            if (rrtmg and name in _GRAY_ONLY) or (moist_rrtmg and name == "critical_lapse_rate"):
                continue
            if rrtmg and process == "radiation":
                process = "shortwave"
            constrain(
                self.processes[process],
                attribute,
                SPECS[name],
                value=values[name],
                learn=name in learn,
            )
        self.humidity_mode = humidity
        if rrtmg:
            assert background is not None
            name = HUMIDITY_MODES[humidity]
            if humidity == "relative":
                self.humidity: nn.Module = FixedRelativeHumidity(surface_relative_humidity)
                value = surface_relative_humidity
            else:
                profile = background.on_pressure(layers)["specific_humidity"]
                self.humidity = ScaledHumidity(profile, humidity_scale)
                value = humidity_scale
            self.humidity.to(dtype)
            constrain(self.humidity, name, RRTMG_SPECS[name], value=value, learn=name in learn)
        if upwelling is not None:
            constrain(
                self.processes["upwelling"],
                "upwelling_velocity",
                OPTIONAL_SPECS["upwelling_velocity"],
                value=upwelling,
                learn="upwelling_velocity" in learn,
            )
        if diffusivity is not None:
            constrain(
                self.processes["diffusion"],
                "diffusivity",
                OPTIONAL_SPECS["vertical_diffusivity"],
                learn="vertical_diffusivity" in learn,
            )
        if moisture:
            constrain(
                surface,
                "moisture_exchange_coefficient",
                OPTIONAL_SPECS["moisture_exchange"],
                value=moisture_exchange,
                learn="moisture_exchange" in learn,
            )
        if moisture and not moist_rrtmg:
            condensation = self.processes["condensation"]
            for parameter in condensation.parameters():
                parameter.requires_grad_(False)
            constrain(
                condensation,
                "critical_relative_humidity",
                OPTIONAL_SPECS["critical_relative_humidity"],
                value=critical_relative_humidity,
                learn="critical_relative_humidity" in learn,
            )
        if device is not None:
            self.to(device)

    @staticmethod
    def _rrtmg_processes(
        interfaces: Tensor,
        layers: Tensor,
        background: ReferenceAtmosphere,
        mole_fractions: Mapping[str, float] | None,
        surface_heat_capacity: float,
        surface_albedo: float,
    ) -> dict[str, torch.nn.Module]:
        """RRTMG longwave and shortwave with the background's ozone and well-mixed gases."""
        from climgrad.physics.rrtmg import RRTMGLongwave, RRTMGShortwave

        ozone = background.on_pressure(layers)["ozone_mass_mixing_ratio"]
        gases = {**background.mole_fractions, **dict(mole_fractions or {})}
        longwave = RRTMGLongwave(
            interfaces, ozone, gases, surface_heat_capacity=surface_heat_capacity
        )
        shortwave = RRTMGShortwave(
            interfaces,
            ozone,
            gases,
            surface_heat_capacity=surface_heat_capacity,
            surface_albedo=surface_albedo,
        )
        # Gas amounts are fixed here (the background), not calibration targets.
        for process in (longwave, shortwave):
            for name in process.learnable_gases:
                getattr(process, f"{name}_mole_fraction").requires_grad_(False)
        return {"longwave": longwave, "shortwave": shortwave}

    @property
    def levels(self) -> int:
        """Number of layers."""
        return int(self.layer_pressure.shape[0])

    def initial_state(
        self,
        surface_temperature: Tensor,
        insolation: Tensor,
        air_temperature: Tensor | None = None,
        relative_humidity: float = 0.7,
        cosine_solar_zenith_angle: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """A state for columns ``(column,)``; by default B2's initial profile.

        Args:
            surface_temperature: T_s per column in K.
            insolation: Top-of-atmosphere insolation per column in W m-2 (gray: absorbed at the
                surface after reflection by α; RRTMG: the incoming flux at the top).
            air_temperature: ``(column, level)`` K; default ``200 + (T_s − 200) p/p_s`` (B2.5).
            relative_humidity: Initial relative humidity of every layer (with ``moisture``).
            cosine_solar_zenith_angle: ``(column,)``, the solar path of the RRTMG shortwave
                (required with ``radiation="rrtmg"``; for daily means the insolation-weighted
                :func:`~climgrad.physics.insolation.daily_mean_cosine_zenith`).
        """
        if air_temperature is None:
            fraction = self.layer_pressure / self.surface_pressure
            air_temperature = 200.0 + (surface_temperature.unsqueeze(-1) - 200.0) * fraction
        like = surface_temperature
        state = {
            "air_temperature": air_temperature,
            "surface_temperature": surface_temperature,
            "insolation": insolation,
            "wind_speed": torch.full_like(like, self.wind_speed),
            "air_density": torch.full_like(like, self.air_density),
            "surface_pressure": torch.full_like(like, self.surface_pressure),
        }
        if self.radiation == "rrtmg":
            if cosine_solar_zenith_angle is None:
                raise ValueError(
                    "radiation='rrtmg' needs cosine_solar_zenith_angle= in initial_state (per "
                    "column; e.g. climgrad.physics.insolation.daily_mean_cosine_zenith)."
                )
            state["cosine_solar_zenith_angle"] = (
                torch.as_tensor(cosine_solar_zenith_angle).to(like).expand_as(like)
            )
        if self.moisture:
            pressure = self.layer_pressure.expand_as(air_temperature)
            state["air_pressure"] = pressure
            state["specific_humidity"] = specific_humidity_from_relative_humidity(
                torch.full_like(air_temperature, relative_humidity), air_temperature, pressure
            )
        return state

    def forward(self, state: State) -> tuple[Tendencies, Diagnostics]:
        """Summed tendencies (K s-1) of ``air_temperature`` and ``surface_temperature``.

        With ``radiation="rrtmg"`` the specific humidity seen by the radiation is diagnosed first
        from the fixed relative humidity profile (and returned as a diagnostic).
        """
        if self.radiation == "rrtmg":
            humidity = self.humidity(
                state["air_temperature"], self.layer_pressure, self.surface_pressure
            )
            tendencies, diagnostics = super().forward({**state, "specific_humidity": humidity})
            # The vapour is diagnosed: the evaporation's latent heat went to moist convection.
            tendencies.pop("specific_humidity", None)
            return tendencies, {**diagnostics, "specific_humidity": humidity}
        return super().forward(state)

    def step(self, state: State, time_step: float | None = None) -> dict[str, Tensor]:
        """One forward-Euler step (benchmark B2.4 step 10)."""
        return super().step(state, self.time_step if time_step is None else time_step)

    def run(
        self, state: State, steps: int, *, checkpoint_every: int | None = None
    ) -> dict[str, Tensor]:
        """``steps`` forward-Euler steps, optionally with gradient checkpointing."""
        final, _ = rollout(
            self.step, state, steps, checkpoint_every=checkpoint_every, parameters=self.parameters()
        )
        return final

    def _unpack(self, packed: Tensor) -> dict[str, Tensor]:
        levels = self.levels
        state = {
            "air_temperature": packed[..., :levels],
            "surface_temperature": packed[..., levels],
        }
        if self.moisture:
            # Humidity is packed in g kg-1 so that every unknown has a similar scale.
            state["specific_humidity"] = 1e-3 * packed[..., levels + 1 :]
        return state

    def _pack(self, state: State) -> Tensor:
        parts = [state["air_temperature"], state["surface_temperature"].unsqueeze(-1)]
        if self.moisture:
            parts.append(1e3 * state["specific_humidity"])
        return torch.cat(parts, dim=-1)

    def _residual(self, packed: Tensor, forcing: dict[str, Tensor]) -> Tensor:
        tendencies, _ = self({**forcing, **self._unpack(packed)})
        # Per day (K day-1, g kg-1 day-1) so the Newton tolerance reads in familiar units.
        return 86400.0 * self._pack(tendencies)

    def equilibrium(
        self,
        state: State,
        *,
        spin_up_steps: int | None = None,
        tol: float | None = None,
        max_iter: int = 30,
        info: EquilibriumInfo | None = None,
    ) -> dict[str, Tensor]:
        """Radiative-convective equilibrium, differentiable by implicit differentiation.

        The columns are first spun up by ``spin_up_steps`` time steps without gradient (the
        stable explicit scheme finds the basin), then Newton's method solves
        ``dT/dt = 0, dT_s/dt = 0`` to ``tol`` K day-1; gradients come from one adjoint solve at
        the solution. Default ``tol``: 1e-9 with gray radiation, 1e-3 with RRTMG (about 2e-4 K in
        temperature), whose fluxes are piecewise smooth (linear interpolation in its absorption
        tables) with a staircase of 1e-5 to 1e-4 W m-2, so that Newton with its
        finite-difference Jacobian (forward mode: one batched product, 4 calls per band) stalls
        at a few 1e-4 K day-1 in some states.

        Default ``spin_up_steps``: 200 (gray), 500 (RRTMG: from B2's initial profile, 200 hourly
        steps left Newton short of the basin for some 40-level RRTMG columns). If Newton fails
        after a spin-up, the columns are stepped ``4 × spin_up_steps`` further and Newton is
        tried once more before :class:`~climgrad.integrate.EquilibriumError` is raised.

        Returns:
            The equilibrium state (same keys as ``state``).
        """
        if spin_up_steps is None:
            spin_up_steps = 500 if self.radiation == "rrtmg" else 200
        if tol is None:
            tol = 1e-3 if self.radiation == "rrtmg" else 1e-9
        prognostic = ("air_temperature", "surface_temperature", "specific_humidity")
        forcing = {k: v for k, v in state.items() if k not in prognostic}
        bound, tensors = functional(self, "_residual")

        def residual(x: Tensor, *params: Tensor) -> Tensor:
            result: Tensor = bound(x, forcing, *params)
            return result

        def spun_up() -> Iterator[dict[str, Tensor]]:
            # The second start continues the first spin-up, so it is only paid for if needed.
            # (Yield outside no_grad: a generator suspended inside it would leave grad off.)
            with torch.no_grad():
                spun = self.run(dict(state), spin_up_steps) if spin_up_steps else dict(state)
            yield spun
            if spin_up_steps:
                with torch.no_grad():
                    longer = self.run(spun, 4 * spin_up_steps)
                yield longer

        def newton(start: Mapping[str, Tensor]) -> Tensor:
            packed = self._pack(start).detach()
            return equilibrium(residual, packed, tensors, tol=tol, max_iter=max_iter, info=info)

        solution = solve_with_restarts(newton, spun_up(), recoverable=(EquilibriumError,))
        return {**forcing, **self._unpack(solution)}
