"""``Model``: named processes whose tendencies are summed, with parameter bookkeeping.

A model is an ``nn.Module`` holding an ``nn.ModuleDict`` of named :class:`~climgrad.physics.Process`
objects (the composition of climlab's ``TimeDependentProcess`` with subprocesses). Calling it on a
state returns the summed tendencies per state variable and the merged diagnostics; each process
still runs on its own. Time stepping lives in :mod:`climgrad.integrate`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from climgrad import params as _params
from climgrad.typing import Diagnostics, State, Tendencies

__all__ = ["Model", "functional"]


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
