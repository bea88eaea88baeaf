"""What every method shares: the step result, the skipped-step signal and the method interface.

A method updates the parameters of a :class:`~climgrad.calibration.experiment.Problem` one step
at a time (a gradient step, an ensemble iteration, a chain of a sampler) and knows nothing of the
model family; :class:`~climgrad.calibration.services.RunServices` gives it checkpoints, logging,
stopping and the outputs. The posterior methods also return a :class:`PosteriorDraws` at the end,
which the services write to ``posterior.nc`` and summarise in ``params.nc``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from climgrad.calibration.loss import LossTerms

__all__ = ["Method", "PosteriorDraws", "StepResult", "StepSkipped", "state_copy"]


class StepSkipped(Exception):
    """A step was not taken (message: why, e.g. which loss term was not finite)."""


@dataclass
class StepResult:
    """What a step saw at the point where it evaluated the loss.

    Attributes:
        terms: The loss terms there (posterior methods: the negative log posterior at the
            ensemble mean or current point, split into likelihood terms and prior).
        gradient_norms: Norm of the gradient, ``"total"`` over the unconstrained parameters and
            one per parameter in physical units (empty for derivative-free methods).
        parameters: Physical parameter values there (detached), or ``None`` when they are the
            model's current ones (the observer reads them from the model).
        state: The model's state dict there (detached copies), a candidate for ``best.pt``, or
            ``None`` when it is the model's current state.
        learning_rate: The learning rate of the step (``nan`` where there is none).
        scalars: Further scalars to log (``eki/time``, ``param_sd/<name>``, ...).
        histograms: Values to log as histograms (``misfit/members``).
    """

    terms: LossTerms
    gradient_norms: dict[str, float]
    parameters: dict[str, Tensor] | None
    state: dict[str, Tensor] | None
    learning_rate: float
    scalars: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, Tensor] = field(default_factory=dict)
    loss: float = field(init=False)

    def __post_init__(self) -> None:
        self.loss = float(self.terms.total.detach())


@dataclass
class PosteriorDraws:
    """A method's posterior: draws in unconstrained coordinates and what the method reports.

    Attributes:
        raw: Draws ``(chain, draw, p)`` of the parameter vector in unconstrained coordinates
            (an ensemble is one chain of J draws; a Gaussian posterior is sampled).
        kind: ``"mcmc"``, ``"ensemble"``, ``"gaussian"`` (sampled from a mean and covariance) or
            ``"population"`` (CMA-ES's last population: no posterior claim).
        mean, covariance: The method's own Gaussian estimate in unconstrained coordinates, where
            it has one (UKI, Laplace).
        diagnostics: Scalars and short texts for ``posterior.nc``'s attributes and
            ``metrics.json`` (iterations, algorithm time, ESS, R-hat, ...).
        sample_stats: Per-draw statistics ``(chain, draw)`` (acceptance, divergences, misfit).
    """

    raw: Tensor
    kind: str
    mean: Tensor | None = None
    covariance: Tensor | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    sample_stats: dict[str, Tensor] = field(default_factory=dict)


def state_copy(module: torch.nn.Module) -> dict[str, Tensor]:
    """Detached copies of ``module.state_dict()``."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Method:
    """The interface the run services drive.

    Attributes:
        name: The ``method.name`` it implements.
        tracks_best: The services keep the state of the lowest loss seen as the point estimate
            (gradient methods); otherwise the method's :meth:`finalize` sets it.
        uses_plateau: The services stop when the loss stops improving (``trainer.plateau_*``).
        finish_reason: Why :attr:`finished` became true (for the stop message).
        point_label: What the point estimate is (``metrics.json``'s ``state``) when the method
            sets it.
    """

    name = "gradient"
    tracks_best = True
    uses_plateau = True
    finish_reason = ""
    point_label = "best"

    def step(
        self, observe: Callable[[StepResult], None] | None = None, *, details: bool = True
    ) -> StepResult:
        """One step; ``observe`` sees the result before the parameters move on.

        Raises:
            StepSkipped: The step was not taken; parameters and state are as before it.
        """
        raise NotImplementedError

    @property
    def finished(self) -> bool:
        """The method has reached its own end (algorithm time 1, convergence, all chains)."""
        return False

    def max_steps(self, trainer_max_steps: int) -> int:
        """The step budget: ``trainer.max_steps`` for gradient methods, the method's own else."""
        return trainer_max_steps

    @property
    def solves(self) -> int | None:
        """Model solves so far (``None`` where the method does not count them)."""
        return None

    def finalize(self) -> None:
        """Set the model to the point estimate (ensemble mean, MAP) at the end of the run."""

    def posterior(self) -> PosteriorDraws | None:
        """The posterior, or ``None`` for a point estimate only."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Everything later steps depend on (tensors and plain values; for checkpoints)."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any], max_steps: int) -> None:
        """Restore :meth:`state_dict`."""
        raise NotImplementedError
