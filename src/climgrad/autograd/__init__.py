"""Making code differentiable and proving its gradients right.

- :func:`external` wraps NumPy or compiled code (finite differences, complex step, or a
  user-supplied derivative) with a Jacobian structure that keeps the cost independent of the batch;
  :func:`external_op` registers it as a ``torch.library`` custom operator that ``torch.compile``
  keeps in one graph.
- :func:`check_gradients` and :func:`taylor_test` verify any differentiable function or module.
- :func:`step` and :func:`positive_part` give thresholds an exact, smooth or straight-through
  gradient.
"""

from __future__ import annotations

from climgrad.autograd.custom_op import ExternalOp, external_op
from climgrad.autograd.external import (
    CallCounter,
    ExternalFunction,
    ExternalFunctionError,
    external,
)
from climgrad.autograd.smooth import GradientMode, positive_part, step
from climgrad.autograd.verify import (
    GradientCheckError,
    GradientReport,
    TaylorResult,
    check_gradients,
    taylor_test,
)

__all__ = [
    "CallCounter",
    "ExternalFunction",
    "ExternalFunctionError",
    "ExternalOp",
    "GradientCheckError",
    "GradientMode",
    "GradientReport",
    "TaylorResult",
    "check_gradients",
    "external",
    "external_op",
    "positive_part",
    "step",
    "taylor_test",
]
