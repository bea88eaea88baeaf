"""``Model``: named processes whose tendencies are summed, with parameter bookkeeping.

A model is an ``nn.Module`` holding an ``nn.ModuleDict`` of named :class:`~climgrad.physics.Process`
objects (the composition of climlab's ``TimeDependentProcess`` with subprocesses). Calling it on a
state returns the summed tendencies per state variable and the merged diagnostics; each process
still runs on its own. Time stepping lives in :mod:`climgrad.integrate`.

:meth:`Model.compile_step` swaps a model's ``step`` for a ``torch.compile``-d one (and
:meth:`Model.restore_step` swaps it back), so that every rollout and spin-up that calls
``model.step`` runs the compiled step: ``trainer.compile=true`` of the calibration.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from climgrad import params as _params
from climgrad.typing import Diagnostics, State, Tendencies

__all__ = ["COMPILE_BACKENDS", "CompiledStep", "Model", "functional"]

log = logging.getLogger(__name__)

#: ``torch.compile`` backends :meth:`Model.compile_step` accepts: ``inductor`` generates fused
#: kernels (the fast one; C++ on the CPU, Triton on CUDA); ``aot_eager`` traces forward and
#: backward through AOT autograd and runs them eagerly (quick to compile: for debugging and
#: tests); ``eager`` only captures the graph with Dynamo.
COMPILE_BACKENDS: tuple[str, ...] = ("inductor", "aot_eager", "eager")


def _model_name(model: nn.Module) -> str:
    """The class name, without the ``Parametrized`` subclass torch's parametrizations create."""
    cls = type(model)
    if torch.nn.utils.parametrize.is_parametrized(model):
        cls = cls.__bases__[0]
    return cls.__name__


class CompiledStep:
    """A model's ``step`` compiled by ``torch.compile``, timed, and eager where it cannot compile.

    Called like the step it replaces. Compilation happens on the first call (and again when the
    guards of the compiled code fail: another grad mode, an input that now requires grad, other
    shapes); each such call logs one line ``compiled <Model>.step in X s``, whose time is that
    call's wall time (compilation and one step). If Dynamo or the backend fails (an operation it
    cannot trace or a missing compiler), one line says so and the step runs eagerly from then on:
    compilation is an optimisation and never fails a run. Graph breaks (code Dynamo cannot
    capture, such as NumPy behind :func:`~climgrad.autograd.external`) are not failures: the
    compiled step runs those parts eagerly.

    Picklable and deep-copyable (the copy compiles again on its first call).

    Attributes:
        model: The model whose step this is.
        backend: One of :data:`COMPILE_BACKENDS`.
        calls: Calls so far.
        compilations: Calls that compiled.
        compile_seconds: Wall time of those calls, in s.
        fallback: Why the step runs eagerly (``None`` while compiled).
    """

    def __init__(self, model: Model, backend: str = "inductor") -> None:
        if backend not in COMPILE_BACKENDS:
            raise ValueError(
                f"Unknown torch.compile backend {backend!r}; use one of "
                f"{', '.join(COMPILE_BACKENDS)}."
            )
        self.model = model
        self.backend = backend
        self.calls = 0
        self.compilations = 0
        self.compile_seconds = 0.0
        self.fallback: str | None = None
        self._compiled: Callable[..., dict[str, Tensor]] | None = None

    @property
    def name(self) -> str:
        """``<Model>.step``, for log lines."""
        return f"{_model_name(self.model)}.step"

    @property
    def eager(self) -> Callable[..., dict[str, Tensor]]:
        """The class's own ``step``, bound to the model (what this replaces)."""
        method: Callable[..., dict[str, Tensor]] = type(self.model).step.__get__(self.model)
        return method

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        self.calls += 1
        if self.fallback is not None:
            return self.eager(*args, **kwargs)
        if self._compiled is None:
            self._compiled = torch.compile(self.eager, backend=self.backend)
        frames = torch._dynamo.utils.counters["frames"]
        before = frames["total"]
        start = time.perf_counter()
        try:
            result = self._compiled(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            self.fallback = f"{type(error).__name__}: {reason}"[:300]
            log.warning(
                "torch.compile not applied to %s (%s); it runs eagerly.", self.name, self.fallback
            )
            return self.eager(*args, **kwargs)
        if frames["total"] != before:
            seconds = time.perf_counter() - start
            self.compilations += 1
            self.compile_seconds += seconds
            again = f", compilation {self.compilations}" if self.compilations > 1 else ""
            log.info(
                "compiled %s in %.2f s (backend %s%s)", self.name, seconds, self.backend, again
            )
        return result

    def __reduce__(self) -> tuple[Any, ...]:
        return (CompiledStep, (self.model, self.backend))

    def __repr__(self) -> str:
        return f"CompiledStep({self.name}, backend={self.backend!r}, calls={self.calls})"


class Model(nn.Module):
    """Processes composed by summing their tendencies.

    Args:
        processes: Mapping of names to processes (``state -> (tendencies, diagnostics)``).

    Diagnostics of different processes must have different names (a clash is an error naming both
    processes, so that no diagnostic silently hides another).
    """

    #: Diagnostics added to the state that the processes after the one producing them see (in
    #: the order of ``processes``), e.g. the surface latent heat flux that moist convection
    #: releases in the column.
    passed_on: tuple[str, ...] = ()

    def __init__(self, processes: Mapping[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.processes = nn.ModuleDict(dict(processes or {}))

    def forward(self, state: State) -> tuple[Tendencies, Diagnostics]:
        tendencies: Tendencies = {}
        diagnostics: Diagnostics = {}
        origin: dict[str, str] = {}
        for name, process in self.processes.items():
            process_tendencies, process_diagnostics = process(state)
            passed = {k: process_diagnostics[k] for k in self.passed_on if k in process_diagnostics}
            if passed:
                state = {**state, **passed}
            for variable, tendency in process_tendencies.items():
                previous = tendencies.get(variable)
                tendencies[variable] = tendency if previous is None else previous + tendency
            for key, value in process_diagnostics.items():
                if key in diagnostics:
                    raise ValueError(
                        f"Processes {origin[key]!r} and {name!r} both return the diagnostic "
                        f"{key!r}; rename one of them."
                    )
                diagnostics[key] = value
                origin[key] = name
        return tendencies, diagnostics

    def step(self, state: State, time_step: float) -> dict[str, Tensor]:
        """One forward-Euler step: ``x + Δt dx/dt`` for each variable with a tendency."""
        tendencies, _ = self(state)
        return {
            name: value + time_step * tendencies[name] if name in tendencies else value
            for name, value in state.items()
        }

    # Compiled time stepping -----------------------------------------------------------------

    def compile_step(self, backend: str = "inductor") -> list[CompiledStep]:
        """Make ``step`` (of this model and of every model inside it) a :class:`CompiledStep`.

        Rollouts and spin-ups call ``model.step`` (:func:`climgrad.integrate.rollout`), so they
        then run the compiled step: one graph per step instead of one Python call per operation,
        the same values and parameter gradients (to rounding). The instance attribute ``step``
        shadows the class's method; :meth:`restore_step` removes it. Calling this again replaces
        the compiled steps (e.g. with another backend).

        Args:
            backend: One of :data:`COMPILE_BACKENDS`.

        Returns:
            The compiled steps, this model's first (sub-models: e.g. the site columns of a
            multi-site model).

        Raises:
            ValueError: An unknown backend (the message lists the valid ones).
        """
        steps = []
        for module in self.modules():
            if isinstance(module, Model):
                compiled = CompiledStep(module, backend)
                module.__dict__["step"] = compiled
                steps.append(compiled)
        return steps

    def restore_step(self) -> None:
        """Undo :meth:`compile_step`: ``step`` is the class's method again (here and inside)."""
        for module in self.modules():
            if isinstance(module, Model):
                module.__dict__.pop("step", None)

    @contextmanager
    def compiled_step(self, backend: str = "inductor") -> Iterator[list[CompiledStep]]:
        """:meth:`compile_step` for the ``with`` block, then :meth:`restore_step`."""
        steps = self.compile_step(backend)
        try:
            yield steps
        finally:
            self.restore_step()

    # Parameter bookkeeping (see climgrad.params) -------------------------------------------

    def parameter_table(self) -> str:
        """Name, value, units, bounds, learnable and prior of every declared parameter."""
        return _params.parameter_table(self)

    def physical_parameters(self) -> dict[str, Tensor]:
        """Plain dict of parameter values in physical units (detached)."""
        return _params.physical_parameters(self)

    def prior_penalty(self) -> Tensor:
        """Negative log prior of the learnable parameters (0 without priors)."""
        return _params.prior_penalty(self)

    def configure_parameters(self, settings: Mapping[str, Any]) -> None:
        """Set values and ``learn`` flags from config, e.g. ``{"D": {"learn": False}}``."""
        _params.configure_parameters(self, settings)

    def learnable_parameters(self) -> list[nn.Parameter]:
        """The unconstrained tensors an optimizer should update."""
        return [p for p in self.parameters() if p.requires_grad]


class _Bound(nn.Module):
    """Calls one method of a module, so torch.func.functional_call can reach any method."""

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, *args: Any) -> Any:
        return getattr(self.module, self.method)(*args)


def functional(module: nn.Module, method: str) -> tuple[Callable[..., Any], list[nn.Parameter]]:
    """``module.method`` as a pure function of its parameter tensors.

    Returns ``(fn, tensors)`` with ``fn(*args, *tensors)`` equal to ``module.method(*args)`` when
    called with the module's own learnable tensors, and differentiable in any replacement. This is
    what :func:`climgrad.integrate.equilibrium` needs to differentiate an equilibrium implicitly.
    """
    # Every parameter, learnable or not: under torch.func transforms the wrapped tensors do not
    # report requires_grad, and the Functions that consume these honour needs_input_grad anyway.
    names = [name for name, _ in module.named_parameters()]
    tensors = list(module.parameters())
    bound = _Bound(module, method)

    def fn(*args: Any) -> Any:
        n_args = len(args) - len(tensors)
        replacements = {f"module.{n}": t for n, t in zip(names, args[n_args:])}
        return torch.func.functional_call(bound, replacements, args[:n_args])

    return fn, tensors
