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
from climgrad.models.two_layer import AR6_AEROSOL_AGENTS, AR6_AGENTS, SPECS
from climgrad.params import physical_parameters

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
    batched: ClassVar[bool] = True
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
        two_layer = typed_model(model, TwoLayerEBM, self.name)
        return self._referenced(two_layer.simulate(), options, required=True)

    def simulate_batch(
        self, model: Model, parameters: Mapping[str, Tensor], options: Mapping[str, Any]
    ) -> dict[str, Tensor]:
        """J rollouts in one call (one batched matrix exponential); outputs ``(J, step)``."""
        two_layer = typed_model(model, TwoLayerEBM, self.name)
        count = next(iter(parameters.values())).shape[0]
        outputs = two_layer.simulate(parameters=dict(parameters))
        batched = {}
        for name, series in outputs.items():
            if name == "time" or name.startswith("final_"):
                batched[name] = series
            elif series.dim() == 1:  # not affected by the batched parameters
                batched[name] = series.expand(count, -1)
            else:
                batched[name] = series.movedim(0, -1)  # (step, J) -> (J, step)
        return self._referenced(batched, options, required=True)

    def scenario(self, model: Model, drivers: Any, options: Mapping[str, Any]) -> dict[str, Tensor]:
        """The calibrated model under another forcing (a :class:`ForcingSeries`).

        The calibrated feedback, heat exchange, heat capacities, efficacy and ERF of 2xCO2 are
        kept, and the aerosol forcing scale applies when the scenario gives both aerosol agents.
        The state starts at zero anomaly at the scenario's first year; temperatures and heat
        contents are taken relative to ``model.simulate``'s reference years where the scenario
        covers them (as the calibration compared them with observations), else left as they are.
        """
        calibrated = typed_model(model, TwoLayerEBM, self.name)
        values = {k: float(v) for k, v in physical_parameters(calibrated).items() if v.numel() == 1}
        kept = ("feedback", "heat_exchange", "heat_capacity", "deep_heat_capacity", "efficacy")
        settings: dict[str, Any] = {k: values[k] for k in (*kept, "forcing_2x") if k in values}
        if "aerosol_forcing_scale" in values and all(
            a in drivers.agents for a in AR6_AEROSOL_AGENTS
        ):
            settings["scale_values"] = {"aerosol": values["aerosol_forcing_scale"]}
        like = calibrated.forcing_by_agent
        try:
            scenario = TwoLayerEBM.from_forcing(
                drivers, dtype=like.dtype, device=like.device, **settings
            )
        except ValueError as err:
            raise CalibrationError(f"cannot run the scenario: {err}") from None
        return self._referenced(scenario.simulate(), options, required=False)

    def _referenced(
        self, outputs: dict[str, Tensor], options: Mapping[str, Any], *, required: bool
    ) -> dict[str, Tensor]:
        """Temperatures relative to the reference years, heat contents to the reference year."""
        settings = {**self.simulate_defaults, **dict(options)}
        years = torch.floor(outputs["time"].detach())
        first, last = (float(y) for y in settings["temperature_reference"])
        window = (years >= first) & (years <= last)
        if not required and not bool(window.any()):
            return outputs
        if not bool(window.any()):
            raise CalibrationError(
                f"model.simulate.temperature_reference={[first, last]} lies outside the run "
                f"({int(years[0])}-{int(years[-1])})."
            )
        # Time is the last axis (a leading axis holds J parameter sets in simulate_batch).
        for name in ("surface_temperature_anomaly", "deep_ocean_temperature_anomaly"):
            series = outputs[name]
            outputs[name] = series - series[..., window].mean(dim=-1, keepdim=True)
        reference = (years == float(settings["heat_reference_year"])).nonzero()
        if reference.numel() != 1 and not required:
            return outputs
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
                outputs[name] = outputs[name] - outputs[name][..., index : index + 1]
        return outputs

    def layout(self, model: Model) -> ObservationLayout:
        return ObservationLayout.uniform("time", typed_model(model, TwoLayerEBM, self.name).years)

    def derived(self, model: Model, outputs: Mapping[str, Tensor]) -> dict[str, float]:
        two_layer = typed_model(model, TwoLayerEBM, self.name)
        return {
            "equilibrium_climate_sensitivity_K": float(two_layer.ecs()),
            "transient_climate_response_K": float(two_layer.tcr()),
        }
