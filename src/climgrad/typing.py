"""Type aliases shared across climgrad.

A *state* maps variable names (``"air_temperature"``, ``"surface_temperature"``) to tensors in SI
units. A process returns *tendencies* (d/dt of state variables, in state units per second) and
*diagnostics* (anything else worth reporting, such as fluxes in W m-2).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

State = Mapping[str, Tensor]
Tendencies = dict[str, Tensor]
Diagnostics = dict[str, Tensor]

__all__ = ["Diagnostics", "State", "Tendencies"]
