"""The gradient method: Adam or L-BFGS on the point-estimate loss.

:class:`GradientMethod`
is Adam or L-BFGS (``optimizer`` config) on the unconstrained (``raw_``) parameters with a
learning-rate schedule: one step evaluates the loss and its gradient (L-BFGS: ``max_iter`` inner
evaluations with a line search) and updates the parameters.

A step whose loss or gradient is not finite, or whose equilibrium does not converge, raises
:class:`StepSkipped` after restoring the parameters and optimizer state it started from, so the
run services can count it and go on.

Data-parallel runs (``trainer.distributed=true``, :mod:`climgrad.calibration.distributed`): with
:attr:`GradientMethod.parallel` set, each evaluation of the closure solves this rank's sites and
all-reduces the misfits and the gradient, so that the loss the closure returns and the ``.grad``
it leaves are those of the whole problem on every rank: L-BFGS's line search runs in lockstep.
After each step the sites' states are copied to every rank.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from climgrad.calibration.config import OptimizerConfig
from climgrad.calibration.experiment import Problem
from climgrad.calibration.loss import LossTerms
from climgrad.calibration.methods.base import Method, StepResult, StepSkipped, state_copy
from climgrad.calibration.optim import build_optimizer, build_schedule
from climgrad.integrate import EquilibriumError
from climgrad.params import display_names, physical_gradients, physical_parameters

if TYPE_CHECKING:
    from climgrad.calibration.distributed import DataParallel

__all__ = ["GradientMethod"]


class GradientMethod(Method):
    """Adam or L-BFGS on the problem's unconstrained parameters, with a schedule.

    Args:
        problem: The problem whose model parameters are updated.
        config: The ``optimizer`` config.
        max_steps: ``trainer.max_steps`` (the cosine schedule anneals over it).

    Attributes:
        parallel: This rank's share of a data-parallel run (``None``: one process); set by
            :meth:`~climgrad.calibration.distributed.DataParallel.attach`.
    """

    parallel: DataParallel | None = None

    def __init__(self, problem: Problem, config: OptimizerConfig, max_steps: int) -> None:
        self.problem = problem
        self.config = config
        infos = display_names(problem.model)
        self.learnable = [(name, info.raw) for name, info in infos.items() if info.learnable]
        self.optimizer = build_optimizer([raw for _, raw in self.learnable], config)
        self.schedule = build_schedule(self.optimizer, config.schedule, max_steps)
        self._last_good = self._raw_values()

    def _raw_values(self) -> dict[str, Tensor]:
        return {name: raw.detach().clone() for name, raw in self.learnable}

    @property
    def is_lbfgs(self) -> bool:
        return isinstance(self.optimizer, torch.optim.LBFGS)

    def step(
        self, observe: Callable[[StepResult], None] | None = None, *, details: bool = True
    ) -> StepResult:
        """Evaluate the loss and gradient, then update the parameters.

        Args:
            observe: Called with the result at the evaluation point, before the update (logging
                and best-state tracking see the parameters the loss belongs to).
            details: Also give the gradient norm of every parameter in physical units (for
                logging; ``"total"`` is always there).

        Raises:
            StepSkipped: Non-finite loss or gradient, or an equilibrium that did not converge;
                parameters and optimizer state are as before the step.
        """
        model = self.problem.model
        first: list[tuple[LossTerms, dict[str, float]]] = []

        def closure() -> Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            if self.parallel is None:
                terms = self.problem.evaluate()
            else:  # [distributed] this rank's sites; misfits and gradients summed over ranks
                terms = self.parallel.evaluate([raw for _, raw in self.learnable])
            bad = [name for name, term in terms.misfit.items() if not bool(torch.isfinite(term))]
            if not bool(torch.isfinite(terms.prior)):
                bad.append("prior")
            if bad:
                raise StepSkipped(f"non-finite loss in {', '.join(bad)}")
            if self.parallel is None:
                terms.total.backward()
            bad = [
                n
                for n, raw in self.learnable
                if raw.grad is not None and not bool(torch.isfinite(raw.grad).all())
            ]
            if bad:
                raise StepSkipped(f"non-finite gradient of {', '.join(bad)}")
            if not first:
                # Logged values are those at the start of the step (L-BFGS evaluates repeatedly).
                norms = [
                    torch.linalg.vector_norm(raw.grad)
                    for _, raw in self.learnable
                    if raw.grad is not None
                ]
                gradients = {"total": float(torch.linalg.vector_norm(torch.stack(norms)))}
                if details:
                    for name, grad in physical_gradients(model).items():
                        gradients[name] = float(torch.linalg.vector_norm(grad))
                first.append((terms, gradients))
            if self.config.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(
                    [raw for _, raw in self.learnable], self.config.grad_clip_norm
                )
            return terms.total.detach()

        lbfgs = isinstance(self.optimizer, torch.optim.LBFGS)
        # L-BFGS moves the parameters and its state inside the step; Adam's evaluation changes
        # neither (its update comes after), so only L-BFGS needs a snapshot to restore.
        snapshot = (
            (state_copy(model), copy.deepcopy(self.optimizer.state_dict())) if lbfgs else None
        )
        try:
            if isinstance(self.optimizer, torch.optim.LBFGS):
                self.optimizer.step(closure)
            else:
                closure()
        except (StepSkipped, EquilibriumError) as problem:
            if snapshot is not None:
                model.load_state_dict(snapshot[0])
                self.optimizer.load_state_dict(snapshot[1])
            if self.parallel is not None:  # [distributed] every rank skips together
                self.parallel.synchronize()
            raise StepSkipped(self._explain(problem)) from None
        terms, gradients = first[0]
        evaluated: dict[str, Tensor] | None = None
        parameters: dict[str, Tensor] | None = None
        if snapshot is not None:
            # The step has moved the parameters already; report those the loss belongs to.
            evaluated, model_now = snapshot[0], state_copy(model)
            model.load_state_dict(evaluated)
            parameters = {k: v.detach().clone() for k, v in physical_parameters(model).items()}
            model.load_state_dict(model_now)
        result = StepResult(
            terms, gradients, parameters, evaluated, float(self.optimizer.param_groups[0]["lr"])
        )
        if observe is not None:
            observe(result)
        if not self.is_lbfgs:
            self.optimizer.step()
        if isinstance(self.schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.schedule.step(result.loss)
        else:
            self.schedule.step()
        if self.parallel is not None:  # [distributed] each site's state from the rank solving it
            self.parallel.synchronize()
        self._last_good = self._raw_values()
        return result

    def _explain(self, problem: Exception) -> str:
        if not isinstance(problem, EquilibriumError):
            return str(problem).split(";")[0]
        where = "equilibrium did not converge"
        moved = {
            name: float((raw.detach() - self._last_good[name]).abs().max())
            for name, raw in self.learnable
        }
        culprit = max(moved, key=moved.__getitem__)
        if moved[culprit] > 0:
            where += f" (largest change since the last good step: {culprit})"
        return where

    def state_dict(self) -> dict[str, Any]:
        """Optimizer and schedule state (for checkpoints)."""
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any], max_steps: int) -> None:
        """Restore :meth:`state_dict`; a cosine schedule anneals to the new ``max_steps``."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if isinstance(self.schedule, torch.optim.lr_scheduler.CosineAnnealingLR):
            self.schedule.T_max = max(max_steps, 1)
        self._last_good = self._raw_values()
