"""Adapter of :class:`~climgrad.models.FluxTowerModel`: bulk fluxes on the tower's half-hours.

The driving files named in ``model.options`` are read by
:func:`climgrad.data.drivers.read_flux_tower` (units through :mod:`climgrad.data.units`) and handed
to the model as arrays; the loss pairs the fluxes with the eddy-covariance observations
(quality-flag filtering as ``data/specs/surface_flux.yaml`` says).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from climgrad.calibration.adapters.base import (
    ModelAdapter,
    ObservationLayout,
    register_adapter,
    typed_model,
)
from climgrad.calibration.errors import CalibrationError
from climgrad.data.drivers import read_flux_tower
from climgrad.models import FluxTowerModel, Model
from climgrad.models.flux_tower import SPECS

__all__ = ["SurfaceFluxAdapter"]


@register_adapter
class SurfaceFluxAdapter(ModelAdapter):
    """:class:`FluxTowerModel`: bulk fluxes on the tower's half-hours.

    ``model.options``: the :class:`FluxTowerModel` constructor's (files, ``emissivity``,
    ``reference_height``, ``stability``). Outputs ``sensible_heat_flux`` and
    ``latent_heat_flux`` (W m-2), plus ``surface_temperature`` (skin, K) and
    ``effective_wind_speed`` (m s-1), shape ``(time,)``.
    """

    name: ClassVar[str] = "surface_flux"
    path_options: ClassVar[tuple[str, ...]] = ("flux_file", "radiation_file")
    _FILES: ClassVar[dict[str, Any]] = {"flux_file": None, "radiation_file": None}

    def model_class(self) -> type[Model]:
        return FluxTowerModel

    def option_names(self) -> list[str]:
        return [*self._FILES, *(n for n in super().option_names() if n != "drivers")]

    def build(
        self, options: Mapping[str, Any], *, dtype: torch.dtype, device: torch.device
    ) -> Model:
        settings = {**self._FILES, **dict(options)}
        files = {name: settings.pop(name) for name in self._FILES}
        unset = [name for name, path in files.items() if path is None]
        if unset:
            raise CalibrationError(
                f"model.options.{unset[0]} is not set; give the tower's NetCDF files "
                "(conf/model/surface_flux.yaml names the shipped ARM SGP E39 day)."
            )
        drivers = read_flux_tower(files["flux_file"], files["radiation_file"])
        try:
            return FluxTowerModel(
                dataclasses.asdict(drivers), **settings, dtype=dtype, device=device
            )
        except (TypeError, ValueError) as err:
            raise CalibrationError(f"cannot build surface_flux from model.options: {err}") from None

    def parameter_names(self) -> list[str]:
        return list(SPECS)

    def simulate(self, model: Model, options: Mapping[str, Any]) -> dict[str, Tensor]:
        tower = typed_model(model, FluxTowerModel, self.name)
        state = tower.driving_state()
        _, diagnostics = tower(state)
        return {
            "sensible_heat_flux": diagnostics["sensible_heat_flux"],
            "latent_heat_flux": diagnostics["latent_heat_flux"],
            "effective_wind_speed": diagnostics["effective_wind_speed"],
            "surface_temperature": state["surface_temperature"],
        }

    def layout(self, model: Model) -> ObservationLayout:
        return ObservationLayout.uniform(
            "time", typed_model(model, FluxTowerModel, self.name).hours
        )

    def derived(self, model: Model, outputs: Mapping[str, Tensor]) -> dict[str, float]:
        tower = typed_model(model, FluxTowerModel, self.name)
        return {
            "mean_skin_minus_air_temperature_K": float(
                (tower.surface_temperature - tower.air_temperature).mean()
            ),
            "mean_sensible_heat_flux_W_m-2": float(outputs["sensible_heat_flux"].mean()),
            "mean_latent_heat_flux_W_m-2": float(outputs["latent_heat_flux"].mean()),
        }
