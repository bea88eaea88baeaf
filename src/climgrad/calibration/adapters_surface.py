"""Calibration adapter of the bulk surface-flux formulae driven by flux-tower observations.

:class:`FluxTowerModel` is the "model": the bulk formulae of
:class:`~climgrad.physics.surface.SurfaceFluxes` (Garratt 1992, ch. 4),

.. math::

    H = \\rho\\, c_p\\, C_H\\, f(Ri_B)\\, V_e\\, (T_s - T_a), \\qquad
    LE = \\rho\\, L\\, C_E\\, f(Ri_B)\\, V_e\\, (q_s(T_s, p) - q_a), \\qquad
    V_e = \\sqrt{V^2 + w_g^2},

driven by the observed near-surface state of a flux tower: air temperature, specific humidity,
mean wind, pressure and density from the eddy-covariance system, and the skin temperature from the
radiometers, :math:`T_s = ((L_\\uparrow - (1 - \\epsilon) L_\\downarrow) / (\\epsilon
\\sigma))^{1/4}` with emissivity :math:`\\epsilon = 0.98` (shared data README). The stability
factor ``f`` (Louis 1979 type) is a config choice (``model.options.stability``); without it
``f = 1``. :class:`SurfaceFluxAdapter` (``model.name=surface_flux``) returns the fluxes on the
tower's half-hours, which the loss pairs with the eddy-covariance fluxes (quality-flag filtering
as ``data/specs/surface_flux.yaml`` says).

Regime: the half-hourly surface layer over homogeneous grassland (ARM SGP E39). ``q_s(T_s)`` is
the flux from a saturated surface, so over land ``C_E`` is an effective coefficient that absorbs
the surface (stomatal and soil) resistance.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from climgrad.calibration.adapters import ModelAdapter, ObservationLayout, register_adapter
from climgrad.calibration.errors import CalibrationError
from climgrad.constants import stefan_boltzmann
from climgrad.models.base import Model
from climgrad.params import ParamSpec, TransformName, constrain
from climgrad.physics.surface import SurfaceFluxes
from climgrad.typing import Diagnostics, State, Tendencies

__all__ = ["SPECS", "FluxTowerModel", "SurfaceFluxAdapter", "skin_temperature"]

_LOG: TransformName = "exp"
SPECS: dict[str, ParamSpec] = {
    "heat_exchange": ParamSpec(
        "heat_exchange",
        "1",
        7.5e-3,
        (0.0, None),
        "bulk heat transfer coefficient C_H",
        transform=_LOG,
    ),
    "moisture_exchange": ParamSpec(
        "moisture_exchange",
        "1",
        1.5e-3,
        (0.0, None),
        "effective bulk moisture transfer coefficient C_E",
        transform=_LOG,
    ),
    "gustiness": ParamSpec(
        "gustiness", "m s-1", 0.5, (0.0, None), "gust velocity of the wind floor", transform=_LOG
    ),
}
_ATTRIBUTES = {
    "heat_exchange": "heat_exchange_coefficient",
    "moisture_exchange": "moisture_exchange_coefficient",
    "gustiness": "gustiness",
}
_PRESSURE_SCALE = {"Pa": 1.0, "hPa": 100.0, "mb": 100.0, "mbar": 100.0, "kPa": 1000.0}


def skin_temperature(
    upwelling_longwave: Tensor, downwelling_longwave: Tensor, emissivity: float = 0.98
) -> Tensor:
    """Radiometric skin temperature from hemispheric longwave fluxes.

    ``T_s = ((L_up - (1 - ε) L_down) / (ε σ))^(1/4)``: the upwelling flux is the surface's
    emission plus the reflected part of the downwelling flux (a gray surface).

    Args:
        upwelling_longwave: ``L_up`` in W m-2, any shape.
        downwelling_longwave: ``L_down`` in W m-2, broadcastable with ``L_up``.
        emissivity: Broadband longwave emissivity ε in (0, 1] (0.98 for grassland).

    Returns:
        Skin temperature in K, the broadcast shape.
    """
    if not 0.0 < emissivity <= 1.0:
        raise ValueError(f"`emissivity` must lie in (0, 1]; got {emissivity}. Grass: 0.98.")
    emitted = upwelling_longwave - (1.0 - emissivity) * downwelling_longwave
    if not bool((emitted > 0).all()):
        raise ValueError(
            "`upwelling_longwave` - (1 - emissivity) `downwelling_longwave` must be positive "
            "(W m-2); check the radiometer units and fill values."
        )
    result: Tensor = (emitted / (emissivity * float(stefan_boltzmann))) ** 0.25
    return result


def _read(path: Path, variable: str) -> tuple[np.ndarray[Any, Any], str]:
    try:
        with xr.open_dataset(path, decode_times=False) as dataset:
            data = dataset[variable]
            values = np.asarray(data.values, dtype=np.float64)
            units = str(data.attrs.get("units", ""))
    except (OSError, FileNotFoundError) as err:
        raise CalibrationError(
            f"{path}: cannot read ({err}); check model.options (paths are relative to the "
            "launch directory)."
        ) from None
    except KeyError:
        raise CalibrationError(f"{path}: no variable {variable!r}.") from None
    if not np.isfinite(values).all():
        raise CalibrationError(
            f"{path}: variable {variable!r} has missing values; the bulk model needs a complete "
            "driving state (choose a day without gaps)."
        )
    return values, units


class FluxTowerModel(Model):
    """Bulk surface fluxes driven by a flux tower's observed surface-layer state.

    Args:
        flux_file: Eddy-covariance NetCDF with ``mean_wind`` (m s-1), ``air_temperature`` (K),
            ``specific_humidity`` (kg kg-1), ``air_pressure`` (Pa, hPa or kPa) and
            ``air_density`` (kg m-3) along ``time``.
        radiation_file: Surface energy balance NetCDF with ``up_long`` and ``down_long`` (W m-2)
            on the same time axis.
        emissivity: Surface longwave emissivity for the skin temperature.
        reference_height: Measurement height of wind and temperature in m (for ``Ri_B``).
        stability: Multiply ``C_H`` and ``C_E`` by the Louis-type stability factor.
        heat_exchange, moisture_exchange, gustiness: Initial values (see :data:`SPECS`).
        learn: Names of the learnable parameters (default ``heat_exchange`` and
            ``moisture_exchange``).
        dtype, device: Of parameters and driving state.

    Driving state: ``(time,)`` tensors ``surface_temperature`` (K), ``air_temperature`` (K),
    ``specific_humidity`` (kg kg-1), ``wind_speed`` (m s-1), ``surface_pressure`` (Pa),
    ``air_density`` (kg m-3); ``hours`` since the first sample.
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
        flux_file: str = (
            "data/surface_flux/arm_sgp_E39_20230601/sgpecorsfE39.b1.20230601.000000.nc"
        ),
        radiation_file: str = (
            "data/surface_flux/arm_sgp_E39_20230601/sgpsebsE39.b1.20230601.000000.cdf"
        ),
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
        flux_path, radiation_path = Path(flux_file), Path(radiation_file)
        drivers: dict[str, np.ndarray[Any, Any]] = {}
        for name, variable in (
            ("wind_speed", "mean_wind"),
            ("air_temperature", "air_temperature"),
            ("specific_humidity", "specific_humidity"),
            ("air_density", "air_density"),
        ):
            drivers[name], _ = _read(flux_path, variable)
        pressure, units = _read(flux_path, "air_pressure")
        if units not in _PRESSURE_SCALE:
            raise CalibrationError(
                f"{flux_path}: air_pressure has units {units!r}; expected one of "
                f"{', '.join(_PRESSURE_SCALE)}."
            )
        drivers["surface_pressure"] = pressure * _PRESSURE_SCALE[units]
        upwelling, _ = _read(radiation_path, "up_long")
        downwelling, _ = _read(radiation_path, "down_long")
        if upwelling.shape != drivers["wind_speed"].shape:
            raise CalibrationError(
                f"{radiation_path} has {upwelling.shape[0]} samples but {flux_path} has "
                f"{drivers['wind_speed'].shape[0]}; give files of the same day and time axis."
            )
        drivers["surface_temperature"] = skin_temperature(
            torch.from_numpy(upwelling), torch.from_numpy(downwelling), emissivity
        ).numpy()
        drivers["hours"] = 0.5 * np.arange(upwelling.shape[0], dtype=np.float64)
        for name, array in drivers.items():
            self.register_buffer(name, torch.tensor(array, dtype=dtype), persistent=False)
        if device is not None:
            self.to(device)

    def driving_state(self) -> dict[str, Tensor]:
        """The observed surface-layer state, ``(time,)`` tensors in SI units."""
        names = (
            "surface_temperature",
            "air_temperature",
            "specific_humidity",
            "wind_speed",
            "surface_pressure",
            "air_density",
        )
        return {name: getattr(self, name) for name in names}

    def forward(self, state: State) -> tuple[Tendencies, Diagnostics]:
        """Fluxes (W m-2, positive upward) as :class:`SurfaceFluxes` diagnoses them."""
        return super().forward(state)


def _tower(model: Model) -> FluxTowerModel:
    if not isinstance(model, FluxTowerModel):
        raise CalibrationError(f"the surface_flux adapter needs a FluxTowerModel, got {model}.")
    return model


@register_adapter
class SurfaceFluxAdapter(ModelAdapter):
    """:class:`FluxTowerModel`: bulk fluxes on the tower's half-hours.

    ``model.options``: the :class:`FluxTowerModel` constructor's (files, ``emissivity``,
    ``reference_height``, ``stability``). Outputs ``sensible_heat_flux`` and
    ``latent_heat_flux`` (W m-2), plus ``surface_temperature`` (skin, K) and
    ``effective_wind_speed`` (m s-1), shape ``(time,)``.
    """

    name: ClassVar[str] = "surface_flux"

    def model_class(self) -> type[Model]:
        return FluxTowerModel

    def parameter_names(self) -> list[str]:
        return list(SPECS)

    def simulate(self, model: Model, options: Mapping[str, Any]) -> dict[str, Tensor]:
        tower = _tower(model)
        state = tower.driving_state()
        _, diagnostics = tower(state)
        return {
            "sensible_heat_flux": diagnostics["sensible_heat_flux"],
            "latent_heat_flux": diagnostics["latent_heat_flux"],
            "effective_wind_speed": diagnostics["effective_wind_speed"],
            "surface_temperature": state["surface_temperature"],
        }

    def layout(self, model: Model) -> ObservationLayout:
        hours = _tower(model).hours.detach().double()
        return ObservationLayout(("time",), {"time": hours}, torch.full_like(hours, 1 / len(hours)))

    def derived(self, model: Model, outputs: Mapping[str, Tensor]) -> dict[str, float]:
        tower = _tower(model)
        return {
            "mean_skin_minus_air_temperature_K": float(
                (tower.surface_temperature - tower.air_temperature).mean()
            ),
            "mean_sensible_heat_flux_W_m-2": float(outputs["sensible_heat_flux"].mean()),
            "mean_latent_heat_flux_W_m-2": float(outputs["latent_heat_flux"].mean()),
        }
