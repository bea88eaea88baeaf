"""Adapter of :class:`~climgrad.models.TwoLayerEBM`: annual series driven by AR6 forcing."""

from __future__ import annotations

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
from climgrad.data.drivers import read_forcing_by_agent
from climgrad.models import Model, TwoLayerEBM
from climgrad.models.two_layer import AR6_AGENTS, SPECS

__all__ = ["TwoLayerAdapter"]


@register_adapter
class TwoLayerAdapter(ModelAdapter):
    """:class:`~climgrad.models.two_layer.TwoLayerEBM` driven by AR6 ERF, annual means.

    ``model.options``: ``forcing_file`` (the AR6 ERF NetCDF, read by
    :func:`climgrad.data.drivers.read_forcing_by_agent`),
    ``start_year`` and ``end_year`` (one annual step per year). ``model.simulate`` options:
    ``temperature_reference`` (``[first, last]`` calendar years whose mean model temperature is
    subtracted, to match the observations' baseline, e.g. HadCRUT5's 1961-1990) and
    ``heat_reference_year`` (heat contents relative to that year, e.g. 1971 for the energy
    inventory). Outputs: every series of ``TwoLayerEBM.simulate``, shape ``(year,)``.
    """

    name: ClassVar[str] = "two_layer"
    path_options: ClassVar[tuple[str, ...]] = ("forcing_file",)
    simulate_defaults: ClassVar[dict[str, Any]] = {
        "temperature_reference": [1961, 1990],
        "heat_reference_year": 1971,
    }
    _OPTIONS: ClassVar[dict[str, Any]] = {
        "forcing_file": None,
        "start_year": 1850,
        "end_year": 2019,
    }

    def model_class(self) -> type[Model]:
        return TwoLayerEBM

    def option_names(self) -> list[str]:
        return list(self._OPTIONS)

    def parameter_names(self) -> list[str]:
        return [*SPECS, "aerosol_forcing_scale"]

    def build(
        self, options: Mapping[str, Any], *, dtype: torch.dtype, device: torch.device
    ) -> Model:
        settings = {**self._OPTIONS, **dict(options)}
        if settings["forcing_file"] is None:
            raise CalibrationError(
                "model.options.forcing_file is not set; give the AR6 ERF table, e.g. "
                "${paths.data_dir}/global_ebm/ar6_erf_1750-2019.nc."
            )
        series = read_forcing_by_agent(
            settings["forcing_file"],
            AR6_AGENTS,
            start_year=int(settings["start_year"]),
            end_year=int(settings["end_year"]),
        )
        try:
            return TwoLayerEBM.from_forcing(series, dtype=dtype, device=device)
        except ValueError as err:
            raise CalibrationError(f"cannot build two_layer from model.options: {err}") from None

    def simulate(self, model: Model, options: Mapping[str, Any]) -> dict[str, Tensor]:
        settings = {**self.simulate_defaults, **dict(options)}
        two_layer = typed_model(model, TwoLayerEBM, self.name)
        outputs = two_layer.simulate()
        years = torch.floor(outputs["time"].detach())
        first, last = (float(y) for y in settings["temperature_reference"])
        window = (years >= first) & (years <= last)
        if not bool(window.any()):
            raise CalibrationError(
                f"model.simulate.temperature_reference={[first, last]} lies outside the run "
                f"({int(years[0])}-{int(years[-1])})."
            )
        for name in ("surface_temperature_anomaly", "deep_ocean_temperature_anomaly"):
            series = outputs[name]
            outputs[name] = series - series[window].mean()
        reference = (years == float(settings["heat_reference_year"])).nonzero()
        if reference.numel() != 1:
            raise CalibrationError(
                f"model.simulate.heat_reference_year={settings['heat_reference_year']} is not a "
                f"year of the run ({int(years[0])}-{int(years[-1])})."
            )
        index = int(reference[0, 0])
        for name in (
            "heat_content_per_area",
            "upper_ocean_heat_content",
            "deep_ocean_heat_content",
            "ocean_heat_content",
            "ocean_heat_content_zj",
        ):
            if name in outputs:
                outputs[name] = outputs[name] - outputs[name][index]
        return outputs

    def layout(self, model: Model) -> ObservationLayout:
        return ObservationLayout.uniform("time", typed_model(model, TwoLayerEBM, self.name).years)

    def derived(self, model: Model, outputs: Mapping[str, Tensor]) -> dict[str, float]:
        two_layer = typed_model(model, TwoLayerEBM, self.name)
        return {
            "equilibrium_climate_sensitivity_K": float(two_layer.ecs()),
            "transient_climate_response_K": float(two_layer.tcr()),
        }
