"""Derivative-free methods on batched ensembles: EKI, UKI and CMA-ES.

Each step is one iteration of the algorithm (:mod:`climgrad.inference`): the parameter sets it
asks for are evaluated in one call of the :class:`~climgrad.calibration.posterior.Evaluator`
(batched where the model family allows), and the results update the ensemble. The step's loss
is the negative log posterior at the ensemble mean (EKI: evaluated with the members, one extra
solve), at the predicted mean (UKI: the centre sigma point), or at the best member (CMA-ES).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.experiment import Problem
from climgrad.calibration.loss import LossTerms
from climgrad.calibration.methods.base import Method, PosteriorDraws, StepResult
from climgrad.calibration.posterior import PosteriorTarget
from climgrad.inference.kalman import EKI, UKI, EnsembleFailure

__all__ = ["CMAESMethod", "EKIMethod", "PosteriorMethod", "UKIMethod"]


class PosteriorMethod(Method):
    """What the posterior methods share: the target, the step budget, the point estimate.

    Args:
        problem: The problem; ``problem.config.method`` configures the method and
            ``problem.config.seed`` seeds it.
    """

    tracks_best = False
    uses_plateau = False

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.config = problem.config.method
        self.target = PosteriorTarget(problem)
        self.vector = self.target.vector
        self.generator = torch.Generator().manual_seed(int(problem.config.seed))
        self._solves_before = 0  # solves of earlier sessions (resume)

    @property
    def solves(self) -> int:
        return self._solves_before + self.target.solves

    def max_steps(self, trainer_max_steps: int) -> int:
        return int(self.config.max_iterations)

    def point(self) -> Tensor:
        """The point estimate in unconstrained coordinates."""
        raise NotImplementedError

    def finalize(self) -> None:
        self.vector.set(self.point())

    def _evaluate(self, U: Tensor) -> Tensor:
        return self.target.evaluator(U)

    def _result(
        self,
        u: Tensor,
        whitened: Tensor,
        *,
        scalars: dict[str, float] | None = None,
        histograms: dict[str, Tensor] | None = None,
        spread: Tensor | None = None,
        gradient_norms: dict[str, float] | None = None,
    ) -> StepResult:
        """A step result at ``u`` with predictions ``whitened`` (``inf`` loss if not finite)."""
        if bool(torch.isfinite(whitened).all()):
            terms = self.target.terms(u, whitened)
        else:
            inf = torch.tensor(float("inf"), dtype=u.dtype)
            terms = LossTerms(inf, {}, self.target.prior_term(u).detach())
        physical = {k: v.detach() for k, v in self.vector.physical(u).items()}
        values = dict(scalars or {})
        if spread is not None:
            # Spread of the members in physical units, per scalar parameter.
            members = self.vector.physical(spread)
            for name, member_values in members.items():
                if member_values.dim() == 1:
                    finite = member_values[torch.isfinite(member_values)]
                    if finite.numel() > 1:
                        values[f"param_sd/{name}"] = float(finite.std())
        return StepResult(
            terms,
            gradient_norms or {},
            physical,
            None,
            float("nan"),
            scalars=values,
            histograms=histograms or {},
        )

    def _base_state(self) -> dict[str, Any]:
        return {"solves": self.solves, "generator": self.generator.get_state()}

    def _load_base_state(self, state: dict[str, Any]) -> None:
        self._solves_before = int(state["solves"]) - self.target.solves
        self.generator.set_state(state["generator"].cpu())


def _failure(err: EnsembleFailure, method: str) -> CalibrationError:
    return CalibrationError(
        f"method={method}: {err} (likely cause: the prior reaches where the model does not "
        "solve; narrow model.params.<name>.prior, or check model.simulate)"
    )


class EKIMethod(PosteriorMethod):
    """Ensemble Kalman inversion (``method=eki``): finite-time (stops at algorithm time 1, the
    ensemble approximating the posterior) or Tikhonov-regularised (to the MAP)."""

    name = "eki"
    point_label = "ensemble mean"

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        config = self.config
        if config.variant not in ("finite_time", "tikhonov"):
            raise CalibrationError(
                f"method.variant={config.variant!r} is unknown; use finite_time or tikhonov."
            )
        step = config.step if config.step == "dmc" else float(config.step)
        try:
            self.eki = EKI(
                self.target.prior_mean,
                self.target.prior_cov,
                self.target.data,
                int(config.ensemble_size),
                variant=config.variant,
                step=step,
                max_time=1.0 if config.variant == "finite_time" else float("inf"),
                generator=self.generator,
            )
        except ValueError as err:
            raise CalibrationError(f"method=eki: {err}") from None
        self.failed_total = 0
        self.last_misfit: Tensor | None = None
        self._mean_unchanged = 0

    @property
    def finished(self) -> bool:
        return bool(self.eki.finished) or self._mean_unchanged >= 2

    @property
    def finish_reason(self) -> str:  # type: ignore[override]
        if self.eki.finished:
            return "algorithm time reached 1 (the ensemble approximates the posterior)"
        return f"the ensemble mean moved less than method.tolerance={self.config.tolerance:g}"

    def point(self) -> Tensor:
        return self.eki.mean()

    def step(
        self, observe: Callable[[StepResult], None] | None = None, *, details: bool = True
    ) -> StepResult:
        members = self.eki.ensemble
        mean = self.eki.mean()
        G = self._evaluate(torch.cat([members, mean.unsqueeze(0)]))
        before = mean.clone()
        try:
            info = self.eki.update(G[:-1])
        except EnsembleFailure as err:
            raise _failure(err, "eki") from None
        failed = int(info["n_failed"])
        self.failed_total += failed
        misfit = info["misfit_per_member"]
        assert isinstance(misfit, Tensor)
        self.last_misfit = misfit.detach().clone()
        scalars = {
            "eki/time": float(info["time"]),
            "eki/dt": float(info["dt"]),
            "eki/failed_members": float(failed),
            "eki/mean_member_misfit": float(info["misfit"]),
        }
        result = self._result(
            mean,
            G[-1],
            scalars=scalars,
            histograms={"misfit/members": misfit},
            spread=members,
        )
        if observe is not None:
            observe(result)
        if self.config.variant == "tikhonov":
            moved = float((self.eki.mean() - before).abs().max())
            self._mean_unchanged = self._mean_unchanged + 1 if moved < self.config.tolerance else 0
        return result

    def posterior(self) -> PosteriorDraws:
        ensemble = self.eki.ensemble
        stats = {}
        if self.last_misfit is not None:
            stats["misfit_before_last_update"] = self.last_misfit.reshape(1, -1)
        return PosteriorDraws(
            raw=ensemble.unsqueeze(0),
            kind="ensemble",
            mean=self.eki.mean(),
            covariance=self.eki.covariance(),
            diagnostics={
                "iterations": int(self.eki.iteration),
                "algorithm_time": float(self.eki.time),
                "ensemble_size": int(ensemble.shape[0]),
                "failed_members_total": int(self.failed_total),
                "variant": str(self.config.variant),
                "model_solves": int(self.solves),
            },
            sample_stats=stats,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            **self._base_state(),
            "eki": self.eki.state_dict(),
            "failed_total": self.failed_total,
            "mean_unchanged": self._mean_unchanged,
        }

    def load_state_dict(self, state: dict[str, Any], max_steps: int) -> None:
        self._load_base_state(state)
        self.eki.load_state_dict(state["eki"])
        self.failed_total = int(state["failed_total"])
        self._mean_unchanged = int(state["mean_unchanged"])


class UKIMethod(PosteriorMethod):
    """Unscented Kalman inversion (``method=uki``): 2p+1 sigma points per iteration; at
    convergence its mean and covariance are the Gaussian posterior estimate."""

    name = "uki"
    point_label = "UKI mean"
    finish_reason = "converged (mean and covariance changed less than method.tolerance)"

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        try:
            self.uki = UKI(self.target.prior_mean, self.target.prior_cov, self.target.data)
        except ValueError as err:
            raise CalibrationError(f"method=uki: {err}") from None
        self.converged = False

    @property
    def finished(self) -> bool:
        return self.converged

    def point(self) -> Tensor:
        return self.uki.mean()

    def step(
        self, observe: Callable[[StepResult], None] | None = None, *, details: bool = True
    ) -> StepResult:
        points = self.uki.sigma_points()
        G = self._evaluate(points)
        try:
            info = self.uki.update(G)
        except EnsembleFailure as err:
            raise _failure(err, "uki") from None
        self.converged = self.uki.iteration >= 2 and bool(
            self.uki.converged(float(self.config.tolerance))
        )
        sd = torch.sqrt(torch.diagonal(self.uki.covariance()))
        scalars = {"uki/misfit_at_mean": float(info["misfit"])}
        for label, value in zip(self.vector.labels, sd):
            scalars[f"uki/sd_unconstrained/{label}"] = float(value)
        result = self._result(points[0], G[0], scalars=scalars, spread=points)
        if observe is not None:
            observe(result)
        return result

    def posterior(self) -> PosteriorDraws:
        mean, covariance = self.uki.mean(), self.uki.covariance()
        return gaussian_draws(
            mean,
            covariance,
            int(self.config.posterior_draws),
            self.generator,
            {"iterations": int(self.uki.iteration), "model_solves": int(self.solves)},
        )

    def state_dict(self) -> dict[str, Any]:
        return {**self._base_state(), "uki": self.uki.state_dict(), "converged": self.converged}

    def load_state_dict(self, state: dict[str, Any], max_steps: int) -> None:
        self._load_base_state(state)
        self.uki.load_state_dict(state["uki"])
        self.converged = bool(state["converged"])


def gaussian_draws(
    mean: Tensor,
    covariance: Tensor,
    count: int,
    generator: torch.Generator,
    diagnostics: dict[str, Any],
) -> PosteriorDraws:
    """Draws of ``N(mean, covariance)`` as one chain (a Gaussian posterior estimate)."""
    from climgrad.inference.laplace import laplace_samples

    samples = laplace_samples(mean.double().cpu(), covariance.double().cpu(), count, generator)
    return PosteriorDraws(
        raw=samples.unsqueeze(0).to(mean),
        kind="gaussian",
        mean=mean,
        covariance=covariance,
        diagnostics=diagnostics,
    )


class CMAESMethod(PosteriorMethod):
    """CMA-ES (``method=cmaes``, the ``cma`` library) on the negative log posterior: a
    derivative-free MAP; a point estimate, no posterior spread."""

    name = "cmaes"
    point_label = "best member (MAP)"

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        from climgrad.inference.cmaes import CMAES

        config = self.config
        try:
            self.cma = CMAES(
                self.vector.get().double().cpu(),
                float(config.sigma0),
                popsize=config.popsize,
                seed=int(problem.config.seed) + 1,
                tolerance=float(config.tolerance),
                # Steps in prior standard deviations: sigma0 means the same for every parameter.
                scaling=self.target.prior_cov.diagonal().sqrt().double().cpu(),
            )
        except ImportError as err:
            raise CalibrationError(str(err)) from None
        except ValueError as err:
            raise CalibrationError(f"method=cmaes: {err}") from None

    @property
    def finished(self) -> bool:
        return bool(self.cma.finished)

    @property
    def finish_reason(self) -> str:  # type: ignore[override]
        return f"cma stopped ({self.cma.stop_reason})"

    def point(self) -> Tensor:
        return self.cma.best()[0].to(dtype=self.vector.dtype, device=self.vector.device)

    def step(
        self, observe: Callable[[StepResult], None] | None = None, *, details: bool = True
    ) -> StepResult:
        U = self.cma.ask().to(dtype=self.vector.dtype, device=self.vector.device)
        G = self._evaluate(U)
        values = self.target.objective(U, G)
        values = torch.where(torch.isfinite(values), values, torch.full_like(values, torch.nan))
        try:
            self.cma.tell(U.double().cpu(), values.double().cpu())
        except ValueError as err:
            raise CalibrationError(f"method=cmaes: {err}") from None
        finite = torch.isfinite(values)
        best = int(torch.where(finite, values, torch.full_like(values, torch.inf)).argmin())
        scalars = {
            "cmaes/sigma": float(self.cma.sigma),
            "cmaes/failed_members": float((~finite).sum()),
            "cmaes/best_so_far": float(self.cma.best()[1]),
        }
        result = self._result(
            U[best], G[best], scalars=scalars, histograms={"misfit/members": values}, spread=U
        )
        if observe is not None:
            observe(result)
        return result

    def state_dict(self) -> dict[str, Any]:
        return {**self._base_state(), "cma": self.cma.state_dict()}

    def load_state_dict(self, state: dict[str, Any], max_steps: int) -> None:
        self._load_base_state(state)
        self.cma.load_state_dict(state["cma"])
