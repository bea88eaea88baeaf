"""The process contract: ``state -> (tendencies, diagnostics)``.

A process computes time tendencies and diagnostics from a state and never steps time, so each one
runs, and is tested, on its own (the design of climlab's ``Process`` and of dinosaur's
``explicit_terms``). Models sum the tendencies of named processes; integrators step them.
"""

from __future__ import annotations

from torch import Tensor, nn

from climgrad.typing import Diagnostics, State, Tendencies

__all__ = ["Process"]


class Process(nn.Module):
    """Base class of every physical process.

    Subclasses own their learnable parameters (as ``nn.Parameter`` or through
    :mod:`climgrad.params`) and implement :meth:`forward`. Tendencies are in state units per second;
    diagnostics are in SI units.
    """

    #: State variables the process reads; checked by :meth:`require`.
    inputs: tuple[str, ...] = ()

    def forward(self, state: State) -> tuple[Tendencies, Diagnostics]:  # pragma: no cover
        raise NotImplementedError

    def require(self, state: State, *names: str) -> list[Tensor]:
        """Return ``state[name]`` for each name, or fail with a message listing what is there."""
        missing = [name for name in (names or self.inputs) if name not in state]
        if missing:
            raise KeyError(
                f"{type(self).__name__} needs state variable(s) {missing}, but the state has "
                f"{sorted(state)}. Add them to the state (SI units) before calling the process."
            )
        return [state[name] for name in (names or self.inputs)]
