"""Gradient-based posteriors: Laplace (MAP + Gauss-Newton covariance) and the hybrid method.

``method=laplace``: L-BFGS on the negative log posterior (:mod:`climgrad.calibration.posterior`)
in unconstrained coordinates, one L-BFGS call of up to 10 iterations per step, until the gradient
norm or the change of the objective is small; then one last step computes the Jacobian ``J`` of
the whitened predictions at the MAP (reverse mode through the model's own backward passes, or
central differences in one batched evaluation for compiled code, ``method.jacobian=fd``) and the
Gauss-Newton covariance ``(JᵀJ + C₀⁻¹)⁻¹`` (:func:`climgrad.inference.laplace.
gauss_newton_covariance`). Gauss-Newton drops the residual-curvature term of the Hessian, so it is
the Laplace approximation exactly for linear predictions and close to it where residuals are
small against their errors (MacKay 1992; Bishop 2006, §4.4).

``method=hybrid``: a UKI (or EKI) warm start of ``method.warm_iterations`` iterations, whose mean
starts the L-BFGS polish, then the Laplace covariance: few solves for expensive models, with the
ensemble's robustness far from the optimum and the gradient's precision near it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.experiment import Problem
from climgrad.calibration.methods.base import PosteriorDraws, StepResult, StepSkipped
from climgrad.calibration.methods.ensemble import (
    EKIMethod,
    PosteriorMethod,
    UKIMethod,
    gaussian_draws,
)
from climgrad.calibration.posterior import MEMBER_FAILURES
from climgrad.inference.laplace import gauss_newton_covariance, jacobian_fd, jacobian_reverse

__all__ = ["HybridMethod", "LaplaceMethod"]

#: L-BFGS iterations per step.
_ITERATIONS_PER_STEP = 10


class LaplaceMethod(PosteriorMethod):
    """L-BFGS to the MAP of the posterior, then the Gauss-Newton (Laplace) covariance there.

    Args:
        problem: The problem (``method.map_iterations``, ``method.jacobian``, ``method.fd_step``,
            ``method.tolerance``, ``method.posterior_draws``).
        start: Starting point in unconstrained coordinates (default: the configured initial
            parameter values).
    """

    name = "laplace"
    point_label = "MAP"
    finish_reason = "MAP found and the Gauss-Newton covariance computed"

    def __init__(self, problem: Problem, start: Tensor | None = None) -> None:
        super().__init__(problem)
        if self.config.jacobian not in ("reverse", "fd"):
            raise CalibrationError(
                f"method.jacobian={self.config.jacobian!r} is unknown; use reverse or fd."
            )
        initial = self.vector.get() if start is None else start.detach().clone()
        self.u = initial.to(dtype=self.vector.dtype, device=self.vector.device).requires_grad_(True)
        self.optimizer = torch.optim.LBFGS(
            [self.u],
            lr=1.0,
            max_iter=_ITERATIONS_PER_STEP,
            history_size=20,
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
            line_search_fn="strong_wolfe",
        )
        self.map_iterations = 0
        self.map_done = False
        self.covariance: Tensor | None = None
        self.last_objective = math.inf

    @property
    def finished(self) -> bool:
        return self.covariance is not None

    def max_steps(self, trainer_max_steps: int) -> int:
        own = math.ceil(int(self.config.map_iterations) / _ITERATIONS_PER_STEP) + 2
        return min(own, int(self.config.max_iterations))

    def point(self) -> Tensor:
        return self.u.detach().clone()

    def _map_step(self) -> StepResult:
        first: list[tuple[Tensor, Tensor, float]] = []
        before = self.u.detach().clone()

        def closure() -> Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            try:
                whitened = self.target.forward_map(self.u)
            except MEMBER_FAILURES as err:
                raise StepSkipped(
                    f"the model does not solve at the L-BFGS trial point ({err})"
                ) from None
            value = self.target.likelihood.negative_log_likelihood(
                whitened
            ) + self.target.prior_term(self.u)
            if not bool(torch.isfinite(value)):
                raise StepSkipped("non-finite negative log posterior at the L-BFGS trial point")
            value.backward()
            assert self.u.grad is not None
            if not first:
                first.append(
                    (self.u.detach().clone(), whitened.detach(), float(self.u.grad.norm()))
                )
            return value.detach()

        snapshot = copy.deepcopy(self.optimizer.state_dict())
        try:
            objective = float(self.optimizer.step(closure))
        except StepSkipped:
            with torch.no_grad():
                self.u.copy_(before)
            self.optimizer.load_state_dict(snapshot)
            raise
        self.map_iterations += _ITERATIONS_PER_STEP
        u0, whitened, gradient_norm = first[0]
        change = abs(self.last_objective - objective)
        self.last_objective = objective
        moved = float((self.u.detach() - before).abs().max())
        if (
            gradient_norm < 1e-8
            or change <= 1e-12 * max(1.0, abs(objective))
            or moved < float(self.config.tolerance) * 1e-3
            or self.map_iterations >= int(self.config.map_iterations)
        ):
            self.map_done = True
        return self._result(
            u0,
            whitened,
            gradient_norms={"total": gradient_norm},
            scalars={"laplace/objective": objective},
        )

    def _covariance_step(self) -> StepResult:
        u = self.u.detach().clone()
        if self.config.jacobian == "fd":
            try:
                jacobian = jacobian_fd(self.target.evaluator, u, float(self.config.fd_step))
            except ValueError as err:
                raise CalibrationError(f"method=laplace: {err}") from None
        else:
            jacobian = jacobian_reverse(self.target.forward_map, u)
        self.covariance = gauss_newton_covariance(jacobian, self.target.prior_cov)
        whitened = self.target.forward_map(u)
        sd = torch.sqrt(torch.diagonal(self.covariance))
        scalars = {
            f"laplace/sd_unconstrained/{k}": float(v) for k, v in zip(self.vector.labels, sd)
        }
        return self._result(u, whitened, scalars=scalars)

    def step(
        self, observe: Callable[[StepResult], None] | None = None, *, details: bool = True
    ) -> StepResult:
        result = self._covariance_step() if self.map_done else self._map_step()
        if observe is not None:
            observe(result)
        return result

    def posterior(self) -> PosteriorDraws | None:
        if self.covariance is None:
            return None
        return gaussian_draws(
            self.point(),
            self.covariance,
            int(self.config.posterior_draws),
            self.generator,
            {
                "map_iterations": int(self.map_iterations),
                "jacobian": str(self.config.jacobian),
                "model_solves": int(self.solves),
            },
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            **self._base_state(),
            "u": self.u.detach().clone(),
            "optimizer": self.optimizer.state_dict(),
            "map_iterations": self.map_iterations,
            "map_done": self.map_done,
            "covariance": self.covariance,
            "last_objective": self.last_objective,
        }

    def load_state_dict(self, state: dict[str, Any], max_steps: int) -> None:
        self._load_base_state(state)
        with torch.no_grad():
            self.u.copy_(state["u"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.map_iterations = int(state["map_iterations"])
        self.map_done = bool(state["map_done"])
        self.covariance = state["covariance"]
        self.last_objective = float(state["last_objective"])


class HybridMethod(PosteriorMethod):
    """A UKI or EKI warm start, then :class:`LaplaceMethod` from its mean (``method=hybrid``)."""

    name = "hybrid"
    point_label = "MAP (after the warm start)"
    finish_reason = "warm start, MAP and Gauss-Newton covariance done"

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        warm = self.config.warm_start
        if warm not in ("uki", "eki"):
            raise CalibrationError(f"method.warm_start={warm!r} is unknown; use uki or eki.")
        self.warm: UKIMethod | EKIMethod = (
            UKIMethod(problem) if warm == "uki" else EKIMethod(problem)
        )
        self.warm_steps = 0
        self.laplace: LaplaceMethod | None = None

    @property
    def solves(self) -> int:
        total = self.warm.solves
        if self.laplace is not None:
            total += self.laplace.solves
        return total

    @property
    def finished(self) -> bool:
        return self.laplace is not None and self.laplace.finished

    def max_steps(self, trainer_max_steps: int) -> int:
        laplace_steps = math.ceil(int(self.config.map_iterations) / _ITERATIONS_PER_STEP) + 2
        return min(
            int(self.config.warm_iterations) + laplace_steps, int(self.config.max_iterations)
        )

    def point(self) -> Tensor:
        return self.laplace.point() if self.laplace is not None else self.warm.point()

    def _start_laplace(self) -> LaplaceMethod:
        if self.laplace is None:
            self.laplace = LaplaceMethod(self.problem, start=self.warm.point())
        return self.laplace

    def step(
        self, observe: Callable[[StepResult], None] | None = None, *, details: bool = True
    ) -> StepResult:
        if self.warm_steps < int(self.config.warm_iterations) and not self.warm.finished:
            result = self.warm.step(observe, details=details)
            self.warm_steps += 1
            return result
        return self._start_laplace().step(observe, details=details)

    def posterior(self) -> PosteriorDraws | None:
        if self.laplace is None:
            return self.warm.posterior()
        draws = self.laplace.posterior()
        if draws is not None:
            draws.diagnostics.update(
                warm_start=str(self.config.warm_start),
                warm_iterations=int(self.warm_steps),
                model_solves=int(self.solves),
            )
        return draws

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"warm": self.warm.state_dict(), "warm_steps": self.warm_steps}
        if self.laplace is not None:
            state["laplace"] = self.laplace.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any], max_steps: int) -> None:
        self.warm.load_state_dict(state["warm"], max_steps)
        self.warm_steps = int(state["warm_steps"])
        if "laplace" in state:
            self._start_laplace().load_state_dict(state["laplace"], max_steps)
