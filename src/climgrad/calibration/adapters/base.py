"""The adapter interface: how a model family meets the calibration loop.

An adapter builds the model from the ``model`` config group (reading what drives it through
:mod:`climgrad.data`), names the grid the observations are put onto, and simulates the model to a
dict ``model output name -> tensor`` on that grid, which the loss pairs with the observations by
their ``model_output``. Add a family by subclassing :class:`ModelAdapter` in a module of this
subpackage, decorating it with :func:`register_adapter`, and importing that module in
``climgrad/calibration/adapters/__init__.py``; the config then selects it with ``model.name``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from climgrad.calibration.errors import CalibrationError
from climgrad.data import ModelGrid
from climgrad.models import Model

__all__ = [
    "ADAPTERS",
    "ModelAdapter",
    "ObservationLayout",
    "get_adapter",
    "register_adapter",
    "typed_model",
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

    @classmethod
    def uniform(cls, dim: str, coordinate: Tensor) -> ObservationLayout:
        """One dimension with equal weights, e.g. annual steps or pressure levels."""
        coordinate = coordinate.detach().double()
        weights = torch.full_like(coordinate, 1.0 / coordinate.shape[0])
        return cls((dim,), {dim: coordinate}, weights)


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
    #: ``model.options`` that name files; relative ones are taken from ``paths.root_dir``.
    path_options: ClassVar[tuple[str, ...]] = ()
    #: Whether :meth:`simulate_batch` solves J parameter sets in one call.
    batched: ClassVar[bool] = False

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

    def simulate_batch(
        self, model: Model, parameters: Mapping[str, Tensor], options: Mapping[str, Any]
    ) -> dict[str, Tensor]:
        """Outputs of J parameter sets in one call, each ``(J, *observation shape)``.

        Args:
            model: The model (its other parameters as they are).
            parameters: Physical values of the learnable parameters, ``name -> (J, *shape)``.
            options: ``model.simulate``.

        Families whose maths takes a batch (``batched = True``) override this; the ensemble
        evaluator (:mod:`climgrad.calibration.posterior`) goes member by member otherwise.
        """
        raise NotImplementedError(f"the {self.name} adapter has no batched simulation.")

    def layout(self, model: Model) -> ObservationLayout:
        """Dimensions, coordinates and weights of the outputs (for twin experiments)."""
        raise CalibrationError(f"the {self.name} adapter does not support twin experiments.")

    def derived(self, model: Model, outputs: Mapping[str, Tensor]) -> dict[str, float]:
        """Scalar diagnostics worth reporting (e.g. global mean, ECS); default none."""
        return {}

    def scenario(self, model: Model, drivers: Any, options: Mapping[str, Any]) -> dict[str, Tensor]:
        """Outputs of the calibrated ``model`` under new ``drivers`` (e.g. a forcing scenario)."""
        raise CalibrationError(
            f"the {self.name} model takes no new drivers; run.simulate(forcing=...) works for "
            "two_layer runs."
        )


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


_ModelType = TypeVar("_ModelType", bound=Model)


def typed_model(model: Model, expected: type[_ModelType], adapter: str) -> _ModelType:
    """``model`` as ``expected``, or a :class:`CalibrationError` naming the adapter."""
    if not isinstance(model, expected):
        raise CalibrationError(
            f"the {adapter} adapter needs a {expected.__name__}, got {type(model).__name__}."
        )
    return model
