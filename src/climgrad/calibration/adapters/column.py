"""Adapter of :class:`~climgrad.models.SiteColumnModel`: the equilibrium profile at a site.

``model.name=column`` runs the column to radiative-convective equilibrium under the daily-mean
insolation of one latitude and day and reports the temperature profile on the observation levels
inside a pressure window (see :mod:`climgrad.models.site_column` for the physics and the regime).
With ``model.options.background`` the AFGL table is read here (:func:`climgrad.data.afgl.read_afgl`)
and handed to the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
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
from climgrad.data import ModelGrid
from climgrad.data.afgl import read_afgl
from climgrad.models import Model, SingleColumnModel, SiteColumnModel
from climgrad.models.column import OPTIONAL_SPECS, RRTMG_SPECS, SPECS
from climgrad.models.site_column import cold_point, interpolate_log_pressure, largest_growth_rate

__all__ = ["ColumnAdapter"]


@register_adapter
class ColumnAdapter(ModelAdapter):
    """:class:`SingleColumnModel` in radiative-convective equilibrium at a site.

    ``model.options``: the constructor's options (``levels``, ``surface_pressure``,
    ``diffusivity``, ...) plus ``latitude`` (degrees north) and ``day_of_year`` (day 1 = 1
    January) of the daily-mean insolation, ``top_pressure`` / ``bottom_pressure`` (Pa, the
    window of observation levels compared) and ``surface_temperature_guess`` (K, cold start).

    With ``model.options.radiation: rrtmg`` (config ``model=column_rrtmg``) the column runs RRTMG
    in place of the gray radiation (``background``: an AFGL table for ozone and gases,
    ``humidity``, ``mole_fractions``; see :class:`~climgrad.models.column.SingleColumnModel`); the
    shortwave takes the site's daily-mean insolation along the insolation-weighted zenith angle.

    ``model.simulate``: ``tol`` (Newton tolerance in K day-1; default 1e-9 in float64 with gray
    radiation, 1e-3 with RRTMG, 1e-2 in float32), ``max_iter``, ``spin_up_steps`` (explicit
    hourly steps before Newton on a cold start) and ``warm_start`` (start Newton from the
    previous call's equilibrium, without spin-up). Newton can cycle on the steep convective
    switch, or step out of the physical range, when it starts far from the solution; a failed
    solve falls back to the warm state after
    ``spin_up_steps`` and then 10 x ``spin_up_steps`` explicit steps, then to cold starts with as
    many, and raises :class:`~climgrad.integrate.EquilibriumError` (the loop skips the step) if
    all fail. A warm solve returns the cold-start equilibrium (tested after moving a parameter
    away and back) at a fraction of the cost (no spin-up; see ``docs/calibration.md``).
    It makes a step depend on the previous one's solution at the Newton tolerance; the warm
    state is part of the model's state dict (buffers ``warm_*``), so a resumed run continues from
    it (bit-identical on the CPU in float64) and :func:`climgrad.load_run` reproduces the run's
    fit on the branch the run was on.

    Outputs: ``air_temperature`` (K) on the observation levels in the window, ascending pressure,
    shape ``(plev,)``.
    """

    name: ClassVar[str] = "column"
    path_options: ClassVar[tuple[str, ...]] = ("background",)
    simulate_defaults: ClassVar[dict[str, Any]] = {
        "tol": None,
        "max_iter": 30,
        "spin_up_steps": 200,
        "warm_start": True,
    }
    _SITE_OPTIONS: ClassVar[dict[str, Any]] = {
        "latitude": -12.4,
        "day_of_year": 22.0,
        "top_pressure": 25000.0,
        "bottom_pressure": 100000.0,
        "surface_temperature_guess": 300.0,
    }

    def model_class(self) -> type[Model]:
        return SingleColumnModel

    def option_names(self) -> list[str]:
        return [*super().option_names(), *self._SITE_OPTIONS]

    def parameter_names(self) -> list[str]:
        return [*SPECS, *OPTIONAL_SPECS, *RRTMG_SPECS]

    def build(
        self, options: Mapping[str, Any], *, dtype: torch.dtype, device: torch.device
    ) -> Model:
        settings = {**self._SITE_OPTIONS, **dict(options)}
        background = settings.get("background")
        if isinstance(background, (str, Path)):
            settings["background"] = read_afgl(background)
        try:
            return SiteColumnModel(**settings, dtype=dtype, device=device)
        except (TypeError, ValueError, ImportError) as err:
            # ImportError: radiation=rrtmg without the optional extra (the message says how).
            raise CalibrationError(f"cannot build column from model.options: {err}") from err

    def observation_grid(self, model: Model, spec_grid: ModelGrid) -> ModelGrid:
        column = typed_model(model, SiteColumnModel, self.name)
        if not spec_grid.pressure_levels:
            raise CalibrationError(
                "the column adapter needs pressure_levels in the observation grid (data.spec)."
            )
        try:
            column.observation_pressure = column.window(spec_grid.pressure_levels)
        except ValueError as err:
            raise CalibrationError(f"model.options: {err}") from None
        levels = [float(p) for p in column.observation_pressure.cpu()]
        return ModelGrid(pressure_levels=levels, sites=dict(spec_grid.sites))

    def equilibrium(self, model: Model, options: Mapping[str, Any]) -> dict[str, Tensor]:
        """The equilibrium state (:meth:`SiteColumnModel.solve` with ``model.simulate``)."""
        settings = {**self.simulate_defaults, **dict(options)}
        column = typed_model(model, SiteColumnModel, self.name)
        return column.solve(
            tol=None if settings["tol"] is None else float(settings["tol"]),
            max_iter=int(settings["max_iter"]),
            spin_up_steps=int(settings["spin_up_steps"]),
            warm_start=bool(settings["warm_start"]),
        )

    def simulate(self, model: Model, options: Mapping[str, Any]) -> dict[str, Tensor]:
        column = typed_model(model, SiteColumnModel, self.name)
        state = self.equilibrium(column, options)
        profile = interpolate_log_pressure(
            state["air_temperature"][0], column.layer_pressure, column.observation_pressure
        )
        return {"air_temperature": profile}

    def layout(self, model: Model) -> ObservationLayout:
        column = typed_model(model, SiteColumnModel, self.name)
        return ObservationLayout.uniform("plev", column.observation_pressure)

    def derived(self, model: Model, outputs: Mapping[str, Tensor]) -> dict[str, float]:
        column = typed_model(model, SiteColumnModel, self.name)
        result = {"insolation_W_m-2": float(column.insolation[0])}
        if column.warm_state is not None:
            result["surface_temperature_K"] = float(column.warm_state["surface_temperature"][0])
            result["lowest_layer_temperature_K"] = float(
                column.warm_state["air_temperature"][0, -1]
            )
            result["largest_growth_rate_per_day"] = largest_growth_rate(column, column.warm_state)
            result.update(cold_point(column, column.warm_state["air_temperature"][0]))
        return result
