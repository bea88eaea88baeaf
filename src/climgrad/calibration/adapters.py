"""Model adapters: how the calibration loop builds a model family and runs it to observation space.

An adapter is the one place where a model family meets the loop. It builds the model from the
``model`` config group, names the grid the observations are put onto, and simulates the model to a
dict ``model output name -> tensor`` on that grid, which the loss pairs with the observations by
their ``model_output``. Add a family by subclassing :class:`ModelAdapter` and decorating it with
:func:`register_adapter`; the config then selects it with ``model.name``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from climgrad.calibration.errors import CalibrationError
from climgrad.data import ModelGrid
from climgrad.models.base import Model
from climgrad.models.ebm1d import EBM1D
from climgrad.models.ebm1d import SPECS as EBM1D_SPECS
from climgrad.models.two_layer import SPECS as TWO_LAYER_SPECS
from climgrad.models.two_layer import TwoLayerEBM

__all__ = [
    "ADAPTERS",
    "EBM1DAdapter",
    "ModelAdapter",
    "ObservationLayout",
    "TwoLayerAdapter",
    "get_adapter",
    "register_adapter",
]


class ObservationLayout:
    """Dimensions, coordinates and element weights of model outputs, for synthetic observations.

    Attributes:
        dims: Dimension names, e.g. ``("lat",)``.
        coords: Coordinate per dimension (float64), plus ``"<dim>_bounds"`` ``(n, 2)``.
        weights: Element weights summing to one, shape of the outputs.
    """

    def __init__(self, dims: tuple[str, ...], coords: dict[str, Tensor], weights: Tensor) -> None:
        self.dims = dims
        self.coords = coords
        self.weights = weights


class ModelAdapter:
    """Builds one model family and simulates it to observation space.

    Subclasses set :attr:`name` and :attr:`model_class` and implement :meth:`simulate`; the other
    methods have defaults that suit most families.
    """

    name: ClassVar[str] = ""
    #: Constructor arguments that are not options (set by the loop or through ``model.params``).
    reserved_arguments: ClassVar[frozenset[str]] = frozenset({"dtype", "device", "learn", "self"})
    #: Valid keys of ``model.simulate`` with their defaults.
    simulate_defaults: ClassVar[dict[str, Any]] = {}

    def model_class(self) -> type[Model]:
        """The model class; its constructor's keyword arguments are the valid options."""
        raise NotImplementedError

    def option_names(self) -> list[str]:
        """Keyword arguments of the constructor that ``model.options`` may set."""
        signature = inspect.signature(self.model_class().__init__)
        parameter_names = set(self.parameter_names())
        return [
            name
            for name, p in signature.parameters.items()
            if name not in self.reserved_arguments
            and name not in parameter_names
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def parameter_names(self) -> list[str]:
        """Parameters settable through ``model.params`` (as the model declares them)."""
        return []

    def check_options(self, options: Mapping[str, Any], simulate: Mapping[str, Any]) -> None:
        """Raise :class:`CalibrationError` for unknown ``model.options`` / ``model.simulate``."""
        valid = self.option_names()
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise CalibrationError(
                f"model.options.{unknown[0]} is not an option of {self.name}; "
                f"valid options: {', '.join(valid)}."
            )
        unknown = sorted(set(simulate) - set(self.simulate_defaults))
        if unknown:
            raise CalibrationError(
                f"model.simulate.{unknown[0]} is not a simulate option of {self.name}; "
                f"valid: {', '.join(self.simulate_defaults) or '(none)'}."
            )

    def build(
        self, options: Mapping[str, Any], *, dtype: torch.dtype, device: torch.device
    ) -> Model:
        """The model with default parameters, on ``device`` in ``dtype``."""
        try:
            factory: Any = self.model_class()
            model: Model = factory(**dict(options), dtype=dtype, device=device)
            return model
        except (TypeError, ValueError) as err:
            raise CalibrationError(f"cannot build {self.name} from model.options: {err}") from err

    def observation_grid(self, model: Model, spec_grid: ModelGrid) -> ModelGrid:
        """The grid observations are put onto (default: the spec file's grid)."""
        return spec_grid

    def simulate(self, model: Model, options: Mapping[str, Any]) -> dict[str, Tensor]:
        """Model outputs by name on the observation grid (differentiable in the parameters)."""
        raise NotImplementedError

    def layout(self, model: Model) -> ObservationLayout:
        """Dimensions, coordinates and weights of the outputs (for twin experiments)."""
        raise CalibrationError(f"the {self.name} adapter does not support twin experiments.")

    def derived(self, model: Model, outputs: Mapping[str, Tensor]) -> dict[str, float]:
        """Scalar diagnostics worth reporting (e.g. global mean, ECS); default none."""
        return {}


ADAPTERS: dict[str, ModelAdapter] = {}
_AdapterType = TypeVar("_AdapterType", bound=type[ModelAdapter])


def register_adapter(cls: _AdapterType) -> _AdapterType:
    """Class decorator: make ``model.name: <cls.name>`` select this adapter."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name` to be registered.")
    ADAPTERS[cls.name] = cls()
    return cls


def get_adapter(name: str) -> ModelAdapter:
    """The adapter registered under ``name``; a :class:`CalibrationError` lists the others."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise CalibrationError(
            f"model.name {name!r} has no adapter; registered: {', '.join(sorted(ADAPTERS))}."
        ) from None


# ---------------------------------------------------------------------------------------------
# EBM1D


def _ebm1d(model: Model) -> EBM1D:
    if not isinstance(model, EBM1D):
        raise CalibrationError(f"the ebm1d adapter needs an EBM1D, got {type(model).__name__}.")
    return model


@register_adapter
class EBM1DAdapter(ModelAdapter):
    """:class:`~climgrad.models.ebm1d.EBM1D` at equilibrium, diagnostics on its latitude bands.

    ``model.simulate`` options: ``tol`` (Newton tolerance on max |net heating|, W m-2; default
    1e-9 in float64 and 0.1 in float32, where rounding the diffusive fluxes, ~1e3 W m-2 K-1 times
    300 K, leaves residuals of a few 0.01 W m-2) and
    ``max_iter``. Outputs: ``surface_temperature`` (K) and every diagnostic of ``EBM1D.forward``
    (W m-2, albedo 1), shape ``(band,)``.
    """

    name: ClassVar[str] = "ebm1d"
    simulate_defaults: ClassVar[dict[str, Any]] = {"tol": None, "max_iter": 50}

    def model_class(self) -> type[Model]:
        return EBM1D

    def parameter_names(self) -> list[str]:
        return list(EBM1D_SPECS)

    def observation_grid(self, model: Model, spec_grid: ModelGrid) -> ModelGrid:
        # The model's own bands, whatever the spec says, so that model.options.bands just works.
        bounds = torch.rad2deg(_ebm1d(model).grid.band_boundaries).double().cpu()
        edges = [float(b) for b in bounds]
        edges[0], edges[-1] = -90.0, 90.0
        return ModelGrid(latitude_bounds=edges, sites=dict(spec_grid.sites))

    def simulate(self, model: Model, options: Mapping[str, Any]) -> dict[str, Tensor]:
        settings = {**self.simulate_defaults, **dict(options)}
        tol = settings["tol"]
        if tol is None:
            dtype = next(model.parameters()).dtype
            tol = 1e-9 if dtype == torch.float64 else 0.1
        state = _ebm1d(model).equilibrium(tol=float(tol), max_iter=int(settings["max_iter"]))
        _, diagnostics = model(state)
        return {"surface_temperature": state["surface_temperature"], **diagnostics}

    def layout(self, model: Model) -> ObservationLayout:
        grid = _ebm1d(model).grid
        latitude = torch.rad2deg(grid.band_centres).double()
        edges = torch.rad2deg(grid.band_boundaries).double()
        area = torch.sin(grid.band_boundaries[1:]) - torch.sin(grid.band_boundaries[:-1])
        return ObservationLayout(
            ("lat",),
            {"lat": latitude, "lat_bounds": torch.stack([edges[:-1], edges[1:]], dim=-1)},
            area / area.sum(),
        )

    def derived(self, model: Model, outputs: Mapping[str, Tensor]) -> dict[str, float]:
        temperature = outputs["surface_temperature"]
        grid = _ebm1d(model).grid
        return {
            "global_mean_surface_temperature_K": float(grid.global_mean(temperature)),
            "ice_edge_latitude_deg": float(_ebm1d(model).ice_edge(temperature)),
        }


# ---------------------------------------------------------------------------------------------
# TwoLayerEBM


def _two_layer(model: Model) -> TwoLayerEBM:
    if not isinstance(model, TwoLayerEBM):
        raise CalibrationError(
            f"the two_layer adapter needs a TwoLayerEBM, got {type(model).__name__}."
        )
    return model


@register_adapter
class TwoLayerAdapter(ModelAdapter):
    """:class:`~climgrad.models.two_layer.TwoLayerEBM` driven by AR6 ERF, annual means.

    ``model.options``: ``forcing_file`` (the AR6 ERF NetCDF, relative to the launch directory),
    ``start_year`` and ``end_year`` (one annual step per year). ``model.simulate`` options:
    ``temperature_reference`` (``[first, last]`` calendar years whose mean model temperature is
    subtracted, to match the observations' baseline, e.g. HadCRUT5's 1961-1990) and
    ``heat_reference_year`` (heat contents relative to that year, e.g. 1971 for the energy
    inventory). Outputs: every series of ``TwoLayerEBM.simulate``, shape ``(year,)``.
    """

    name: ClassVar[str] = "two_layer"
    simulate_defaults: ClassVar[dict[str, Any]] = {
        "temperature_reference": [1961, 1990],
        "heat_reference_year": 1971,
    }
    _OPTIONS: ClassVar[dict[str, Any]] = {
        "forcing_file": "data/global_ebm/ar6_erf_1750-2019.nc",
        "start_year": 1850,
        "end_year": 2019,
    }

    def model_class(self) -> type[Model]:
        return TwoLayerEBM

    def option_names(self) -> list[str]:
        return list(self._OPTIONS)

    def parameter_names(self) -> list[str]:
        return [*TWO_LAYER_SPECS, "aerosol_forcing_scale"]

    def build(
        self, options: Mapping[str, Any], *, dtype: torch.dtype, device: torch.device
    ) -> Model:
        settings = {**self._OPTIONS, **dict(options)}
        try:
            return TwoLayerEBM.from_ar6_file(
                str(settings["forcing_file"]),
                start_year=int(settings["start_year"]),
                end_year=int(settings["end_year"]),
                dtype=dtype,
                device=device,
            )
        except (OSError, ValueError, KeyError) as err:
            raise CalibrationError(
                f"cannot build two_layer from model.options ({' '.join(str(err).split())}); "
                "check model.options.forcing_file and the years."
            ) from None

    def simulate(self, model: Model, options: Mapping[str, Any]) -> dict[str, Tensor]:
        settings = {**self.simulate_defaults, **dict(options)}
        two_layer = _two_layer(model)
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
        years = _two_layer(model).years.detach().double()
        return ObservationLayout(("time",), {"time": years}, torch.full_like(years, 1 / len(years)))

    def derived(self, model: Model, outputs: Mapping[str, Tensor]) -> dict[str, float]:
        two_layer = _two_layer(model)
        return {
            "equilibrium_climate_sensitivity_K": float(two_layer.ecs()),
            "transient_climate_response_K": float(two_layer.tcr()),
        }
