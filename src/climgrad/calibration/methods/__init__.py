"""Methods: what updates the parameters of a :class:`~climgrad.calibration.experiment.Problem`.

``method.name`` selects one (docs/posteriors.md):

* ``gradient`` (:class:`GradientMethod`): Adam or L-BFGS on the point-estimate loss;
* ``eki``, ``uki``, ``cmaes`` (:mod:`.ensemble`): ensemble Kalman inversion, unscented Kalman
  inversion and CMA-ES, derivative-free, on batched ensembles;
* ``laplace``, ``hybrid`` (:mod:`.laplace`): L-BFGS to the MAP then the Gauss-Newton covariance;
  a UKI/EKI warm start before that;
* ``nuts`` (:mod:`.nuts`): No-U-Turn sampling with the model's own gradients.

All but ``gradient`` target the posterior of :mod:`climgrad.calibration.posterior`.
"""

from __future__ import annotations

from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.experiment import Problem
from climgrad.calibration.methods.base import (
    Method,
    PosteriorDraws,
    StepResult,
    StepSkipped,
    state_copy,
)
from climgrad.calibration.methods.gradient import GradientMethod

__all__ = [
    "METHODS",
    "GradientMethod",
    "Method",
    "PosteriorDraws",
    "StepResult",
    "StepSkipped",
    "build_method",
    "state_copy",
]

#: ``method.name`` values.
METHODS = ("gradient", "eki", "uki", "cmaes", "laplace", "nuts", "hybrid")


def build_method(problem: Problem) -> Method:
    """The method ``problem.config.method`` names, on ``problem``.

    Raises:
        CalibrationError: An unknown method, a missing prior, or a missing optional library
            (the message names the extra to install).
    """
    config = problem.config
    name = config.method.name
    if name == "gradient":
        return GradientMethod(problem, config.optimizer, config.trainer.max_steps)
    if name not in METHODS:
        raise CalibrationError(f"method={name!r} is unknown; use one of {', '.join(METHODS)}.")
    from climgrad.calibration.methods import ensemble, laplace, nuts

    builders: dict[str, type[Method]] = {
        "eki": ensemble.EKIMethod,
        "uki": ensemble.UKIMethod,
        "cmaes": ensemble.CMAESMethod,
        "laplace": laplace.LaplaceMethod,
        "hybrid": laplace.HybridMethod,
        "nuts": nuts.NUTSMethod,
    }
    return builders[name](problem)  # type: ignore[call-arg]
