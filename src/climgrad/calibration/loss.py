"""The calibration loss: weighted misfit per observed variable plus the prior penalty.

    L(θ) = Σ_v c_v J_v(θ) + λ_prior (−log p(θ)),
    J_v = w_v Σ_i a_i m_i ((y_i(θ) − o_i) / σ_i)²,

with ``J_v`` the misfit of :meth:`climgrad.data.ObservedVariable.misfit` (data weight ``w_v``,
element weights ``a_i`` summing to one, mask ``m_i``, errors ``σ_i``), ``c_v`` an optional extra
multiplier from the ``loss`` config and ``λ_prior`` the prior weight. With uniform element weights
``J_v`` is a mean chi-square: about 1 for a fit within the errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from climgrad.calibration.errors import CalibrationError
from climgrad.data import ObsSet
from climgrad.params import prior_penalty

__all__ = ["CalibrationLoss", "LossTerms"]


@dataclass
class LossTerms:
    """One evaluation of the loss.

    Attributes:
        total: Scalar loss (dimensionless).
        misfit: Weighted misfit per observed variable, keyed by observation name.
        prior: Weighted prior penalty.
    """

    total: Tensor
    misfit: dict[str, Tensor]
    prior: Tensor

    def as_floats(self) -> dict[str, float]:
        """``{"total", "prior", <variable>...}`` as Python floats (for logs and metrics)."""
        values = {"total": float(self.total.detach()), "prior": float(self.prior.detach())}
        values.update({name: float(term.detach()) for name, term in self.misfit.items()})
        return values


class CalibrationLoss:
    """Pairs model outputs with observations by ``model_output`` and sums the misfits.

    Args:
        observations: The observed variables (on the model's device and dtype).
        prior_weight: Multiplier of the model's prior penalty (0: maximum likelihood).
        weights: Extra multiplier per observation name (default 1).

    Raises:
        CalibrationError: A weight names no observation.
    """

    def __init__(
        self,
        observations: ObsSet,
        prior_weight: float = 1.0,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        self.observations = observations
        self.prior_weight = float(prior_weight)
        self.weights = {name: 1.0 for name in observations}
        for name, weight in (weights or {}).items():
            if name not in observations:
                raise CalibrationError(
                    f"loss.weights.{name} names no observation; observations: "
                    f"{', '.join(observations)}."
                )
            if not weight >= 0:
                raise CalibrationError(f"loss.weights.{name} must be >= 0; got {weight}.")
            self.weights[name] = float(weight)

    def check_outputs(self, outputs: Mapping[str, Tensor]) -> None:
        """Raise a one-line :class:`CalibrationError` if an observation has no matching output.

        Args:
            outputs: Model outputs by name, as the adapter's ``simulate`` returns them.
        """
        for name, observed in self.observations.items():
            if observed.model_output not in outputs:
                raise CalibrationError(
                    f"observation {name!r} wants the model output {observed.model_output!r}, "
                    f"which the model does not produce; its outputs are "
                    f"{', '.join(sorted(outputs))}. Fix model_output in the data spec."
                )
            shape = tuple(outputs[observed.model_output].shape)
            if shape != observed.shape:
                raise CalibrationError(
                    f"model output {observed.model_output!r} has shape {shape} but observation "
                    f"{name!r} has shape {observed.shape}; put the observations on the model grid."
                )

    def predictions(self, outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Model outputs keyed by observation name."""
        return {name: outputs[v.model_output] for name, v in self.observations.items()}

    def __call__(self, model: nn.Module, outputs: Mapping[str, Tensor]) -> LossTerms:
        """The loss terms for ``outputs`` of ``model`` (whose priors are added).

        Args:
            model: The model (its learnable parameters' priors enter the loss).
            outputs: Model outputs by name, each of its observation's shape and units.

        Returns:
            :class:`LossTerms`; ``total`` is differentiable in the model's parameters.
        """
        misfit = {
            name: self.weights[name] * observed.misfit(outputs[observed.model_output])
            for name, observed in self.observations.items()
        }
        prior = self.prior_weight * prior_penalty(model)
        first = next(iter(misfit.values()))
        total = torch.stack(list(misfit.values())).sum() + prior.to(first)
        return LossTerms(total, misfit, prior)

    def rmse(self, outputs: Mapping[str, Tensor]) -> dict[str, float]:
        """Root-mean-square error per variable in its units, weighted by the element weights."""
        result = {}
        for name, observed in self.observations.items():
            prediction = outputs[observed.model_output].detach()
            difference = torch.where(observed.mask, prediction - observed.values, 0.0)
            result[name] = float((observed.weights * difference.square()).sum().sqrt())
        return result
