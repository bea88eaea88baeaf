"""No-U-Turn sampling of the posterior with the model's own gradients (``method=nuts``).

Each step runs one chain (``method.warmup`` adaptation iterations, then ``method.num_samples``
kept draws) with Pyro's NUTS (:func:`climgrad.inference.sampling.nuts`) on the negative log
posterior of :mod:`climgrad.calibration.posterior`; its gradient is the model's backward pass
(adjoint solves of the equilibrium, the custom backward passes of the processes). Chains start
from the configured initial values plus a seeded jitter of 0.1 prior standard deviations; a run
killed between chains resumes at the next chain. At the end ArviZ gives the bulk effective
sample size and the rank-normalised split R-hat of every parameter over all chains (Vehtari et
al. 2021): R-hat below 1.01 and an ESS above about 400 are the usual marks of a trustworthy
sample.

NUTS is the reference posterior for the cheap models (EBM1D, TwoLayerEBM: each gradient is one
equilibrium or rollout); thousands of model solves make it impractical for RRTMG columns, where
``method=hybrid`` or ``uki`` serve.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.experiment import Problem
from climgrad.calibration.methods.base import PosteriorDraws, StepResult
from climgrad.calibration.methods.ensemble import PosteriorMethod

__all__ = ["NUTSMethod"]


class NUTSMethod(PosteriorMethod):
    """NUTS chains, one per step; the posterior is all their draws."""

    name = "nuts"
    point_label = "posterior mean"
    finish_reason = "all chains sampled"

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        try:
            import pyro  # noqa: F401
        except ImportError:
            raise CalibrationError(
                "method=nuts needs Pyro: pip install 'climgrad[posterior]'."
            ) from None
        config = self.config
        if int(config.chains) < 1 or int(config.num_samples) < 1 or int(config.warmup) < 0:
            raise CalibrationError(
                "method.chains and method.num_samples must be >= 1 and method.warmup >= 0."
            )
        self.start = self.vector.get()
        self.samples: list[Tensor] = []
        self.stats: dict[str, list[Tensor]] = {}
        self.step_sizes: list[float] = []
        self.seed = int(problem.config.seed)

    @property
    def finished(self) -> bool:
        return len(self.samples) >= int(self.config.chains)

    def max_steps(self, trainer_max_steps: int) -> int:
        return min(int(self.config.chains), int(self.config.max_iterations))

    def _all(self) -> Tensor:
        return torch.stack(self.samples)

    def point(self) -> Tensor:
        if not self.samples:
            return self.start
        return self._all().reshape(-1, self.vector.size).mean(dim=0)

    def step(
        self, observe: Callable[[StepResult], None] | None = None, *, details: bool = True
    ) -> StepResult:
        from climgrad.inference.sampling import nuts

        chain = len(self.samples)
        config = self.config
        # Each chain starts a tenth of a prior standard deviation from the initial values.
        jitter = (
            torch.randn(self.vector.size, generator=self.generator, dtype=torch.float64)
            * self.target.prior_cov.diagonal().sqrt().double().cpu()
        )
        start = (self.start.double().cpu() + 0.1 * jitter).to(self.start.device)
        try:
            result = nuts(
                self.target.negative_log_posterior,
                start.unsqueeze(0),
                num_samples=int(config.num_samples),
                warmup=int(config.warmup),
                chains=1,
                seed=self.seed * 1000 + chain,
                target_accept=float(config.target_accept),
                max_tree_depth=int(config.max_tree_depth),
            )
        except ValueError as err:
            raise CalibrationError(f"method=nuts: {err}") from None
        draws = result.samples[0].to(dtype=self.vector.dtype)
        self.samples.append(draws)
        for key, value in (
            ("acceptance_rate", result.acceptance[0]),
            ("diverging", result.divergent[0].to(torch.float64)),
            ("potential", result.potential[0]),
        ):
            self.stats.setdefault(key, []).append(value.detach().double().cpu())
        self.step_sizes.append(float(result.step_size[0]))
        mean = draws.mean(dim=0)
        scalars = {
            "nuts/acceptance": float(result.acceptance[0].mean()),
            "nuts/step_size": float(result.step_size[0]),
            "nuts/divergences": float(result.divergences[0]),
        }
        outcome = self._result(
            mean, self.target.evaluator(mean.unsqueeze(0))[0], scalars=scalars, spread=draws
        )
        if observe is not None:
            observe(outcome)
        return outcome

    def diagnostics(self) -> dict[str, Any]:
        """ESS and R-hat per element over all chains (ArviZ), acceptance, divergences."""
        samples = self._all().double().cpu().numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import arviz

            dataset = arviz.convert_to_dataset({"u": samples})
            ess = np.asarray(arviz.ess(dataset)["u"].values).reshape(-1)
            rhat = np.asarray(arviz.rhat(dataset)["u"].values).reshape(-1)
        result: dict[str, Any] = {
            "chains": len(self.samples),
            "draws_per_chain": int(samples.shape[1]),
            "warmup": int(self.config.warmup),
            "model_solves": int(self.solves),
            "divergences": int(torch.stack(self.stats["diverging"]).sum()),
            "mean_acceptance": float(torch.stack(self.stats["acceptance_rate"]).mean()),
            "step_size": self.step_sizes,
            "ess_min": float(ess.min()),
            "r_hat_max": float(rhat.max()),
        }
        for label, e, r in zip(self.vector.labels, ess, rhat):
            result[f"ess_{label}"] = float(e)
            result[f"r_hat_{label}"] = float(r)
        return result

    def posterior(self) -> PosteriorDraws | None:
        if not self.samples:
            return None
        stats = {key: torch.stack(values) for key, values in self.stats.items()}
        return PosteriorDraws(
            raw=self._all(),
            kind="mcmc",
            diagnostics=self.diagnostics(),
            sample_stats=stats,
        )

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            **self._base_state(),
            "chains_done": len(self.samples),
            "step_sizes": list(self.step_sizes),
        }
        if self.samples:
            state["samples"] = self._all()
            for key, values in self.stats.items():
                state[f"stat_{key}"] = torch.stack(values)
        return state

    def load_state_dict(self, state: dict[str, Any], max_steps: int) -> None:
        self._load_base_state(state)
        done = int(state["chains_done"])
        self.samples = list(state["samples"]) if done else []
        self.stats = {
            key[len("stat_") :]: list(value)
            for key, value in state.items()
            if key.startswith("stat_")
        }
        self.step_sizes = [float(v) for v in state["step_sizes"]]
