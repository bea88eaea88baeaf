"""The Gaussian likelihood of the observations, as a whitening of the predictions.

The posterior methods need a negative log-likelihood, not the point-estimate loss (a sum of
*mean* chi-squares, which used as a log-likelihood makes every interval too wide by about the
square root of the number of observations). For each observed variable ``v`` with valid elements
``i``, residuals ``r_i = y_i(θ) − o_i`` and errors ``σ_i``,

    −log p(o | θ) = ½ Σ_v r_vᵀ Γ_v⁻¹ r_v + const,

written as ``½ ||W(y(θ)) − W(o)||²`` with a linear whitening ``W`` (``Wᵀ W = Γ⁻¹``), so that the
Kalman methods see identity noise and every method sees the same numbers. The error model of a
variable (``likelihood.variables.<name>``, :class:`~climgrad.calibration.config.
VariableErrorConfig`) says what ``Γ_v`` is:

* **independent** (default): ``Γ_v = diag(σ_i² / (n_v a_i))`` with ``a_i`` the element (area)
  weights of the observation (summing to one over valid elements) and ``n_v`` the effective number
  of independent observations, by default the number of valid elements ``N_v``. With uniform
  weights and ``n_v = N_v`` this is the textbook ``Σ r_i² / σ_i²``; with area weights each element
  counts in proportion to its area; a smaller ``n_v`` states that errors are correlated in space
  (e.g. ``n_v`` = area / (correlation length)²) and widens the posterior accordingly.
* **ar1** (``ar1_phi``): a 1-D series (its valid values consecutive: a series may start late or
  end early, not have gaps) whose normalised errors follow a stationary AR(1) process
  with lag-1 correlation ``φ``: ``e_1 = r_1/σ_1``, ``e_t = (r_t/σ_t − φ r_{t−1}/σ_{t−1}) /
  √(1 − φ²)``; the exact Gaussian likelihood (Box, Jenkins & Reinsel, *Time Series Analysis*,
  §7.1), the error model used for observed temperature series with internal variability.

``extra_error`` adds a variance ``s²`` in quadrature to every ``σ_i²``. Variables whose loss weight
is zero (``data.weights``, ``loss.weights``) are left out; otherwise the weights of the
point-estimate loss play no part here: in a likelihood the errors are the weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from climgrad.calibration.config import LikelihoodConfig, VariableErrorConfig
from climgrad.calibration.errors import CalibrationError
from climgrad.data import ObservedVariable, ObsSet

__all__ = ["GaussianLikelihood", "VariableWhitening"]


@dataclass
class VariableWhitening:
    """The whitening of one observed variable: valid elements -> independent unit-variance terms.

    Attributes:
        name: Observation name.
        model_output: The model output it is compared with.
        mask: Valid elements (shape of the observation).
        scale: ``1 / σ_i`` times ``√(n_v a_i)`` (independent) or ``1 / σ_i`` (AR(1)), per valid
            element, in the order of ``mask``'s flattening.
        phi: AR(1) lag-1 correlation, or ``None``.
        description: The error model in words (NetCDF attributes, logs).
        sigma: Total error ``√(σ_i² + s²)`` per valid element (the variable's units).
    """

    name: str
    model_output: str
    mask: Tensor
    scale: Tensor
    phi: float | None
    description: str
    sigma: Tensor

    @property
    def size(self) -> int:
        """Number of whitened terms."""
        return int(self.scale.shape[0])

    def __call__(self, values: Tensor) -> Tensor:
        """Whitened values ``(..., size)`` of ``values`` shaped ``(..., *observation shape)``."""
        batch = values.shape[: values.dim() - self.mask.dim()]
        flat = values.reshape(*batch, -1)[..., self.mask.reshape(-1)]
        normalised = flat * self.scale
        if self.phi is None:
            return normalised
        first = normalised[..., :1]
        rest = (normalised[..., 1:] - self.phi * normalised[..., :-1]) / math.sqrt(
            1.0 - self.phi**2
        )
        return torch.cat([first, rest], dim=-1)


def _whitening(
    observed: ObservedVariable, setting: VariableErrorConfig | None
) -> VariableWhitening:
    setting = setting or VariableErrorConfig()
    where = f"likelihood.variables.{observed.name}"
    mask = observed.mask.reshape(-1)
    count = int(mask.sum())
    if count == 0:
        raise CalibrationError(f"observation {observed.name!r} has no valid element to fit.")
    if not setting.extra_error >= 0:
        raise CalibrationError(f"{where}.extra_error must be >= 0; got {setting.extra_error}.")
    error = observed.error.reshape(-1)[mask]
    sigma = torch.sqrt(error.square() + setting.extra_error**2)
    extra = f", extra error {setting.extra_error:g} {observed.units}" * (setting.extra_error > 0)
    if setting.ar1_phi is not None:
        phi = float(setting.ar1_phi)
        if setting.effective_n is not None:
            raise CalibrationError(
                f"{where} sets both ar1_phi and effective_n; choose one error model."
            )
        if not -1.0 < phi < 1.0:
            raise CalibrationError(f"{where}.ar1_phi must lie in (-1, 1); got {phi}.")
        valid = observed.mask.nonzero().reshape(-1)
        contiguous = int(valid[-1] - valid[0]) + 1 == count
        if observed.mask.dim() != 1 or not contiguous:
            raise CalibrationError(
                f"{where}.ar1_phi needs a 1-D series whose valid values are consecutive; "
                f"{observed.name} has shape {tuple(observed.mask.shape)} with gaps."
            )
        return VariableWhitening(
            observed.name,
            observed.model_output,
            observed.mask,
            1.0 / sigma,
            phi,
            f"AR(1) errors, phi {phi:g}{extra}",
            sigma,
        )
    weights = observed.weights.reshape(-1)[mask]
    weights = weights / weights.sum()
    effective = float(count if setting.effective_n is None else setting.effective_n)
    if not effective > 0:
        raise CalibrationError(f"{where}.effective_n must be positive; got {effective}.")
    scale = torch.sqrt(effective * weights) / sigma
    label = "all valid elements" if setting.effective_n is None else "effective_n"
    return VariableWhitening(
        observed.name,
        observed.model_output,
        observed.mask,
        scale,
        None,
        f"independent errors, {effective:g} observations ({label}) of {count} elements{extra}",
        sigma,
    )


class GaussianLikelihood:
    """``−log p(o | θ) = ½ ||W(y(θ)) − W(o)||²`` over the observed variables.

    Args:
        observations: The observations (on the model's device and dtype).
        config: The ``likelihood`` config.
        weights: Point-estimate weight per observation name (data weight times
            ``loss.weights``); variables of weight 0 are left out of the likelihood.

    Raises:
        CalibrationError: A setting names no observation, or is out of range.
    """

    def __init__(
        self,
        observations: ObsSet,
        config: LikelihoodConfig | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        config = config or LikelihoodConfig()
        for name in config.variables:
            if name not in observations:
                raise CalibrationError(
                    f"likelihood.variables.{name} names no observation; observations: "
                    f"{', '.join(observations)}."
                )
        weights = dict(weights or {})
        self.variables = [
            _whitening(observed, config.variables.get(name))
            for name, observed in observations.items()
            if weights.get(name, observed.weight) > 0
        ]
        if not self.variables:
            raise CalibrationError("every observation has weight 0: nothing to fit.")
        self.data = torch.cat(
            [w(observations[w.name].values) for w in self.variables], dim=-1
        ).detach()
        sizes = [w.size for w in self.variables]
        self.slices = {
            w.name: slice(sum(sizes[:i]), sum(sizes[: i + 1])) for i, w in enumerate(self.variables)
        }

    @property
    def size(self) -> int:
        """Number of whitened terms ``d``."""
        return int(self.data.shape[0])

    def describe(self) -> dict[str, str]:
        """The error model per variable, in words."""
        return {w.name: w.description for w in self.variables}

    def whiten(self, outputs: Mapping[str, Tensor]) -> Tensor:
        """Whitened predictions ``W(y)``, ``(..., d)``; outputs may carry leading batch dims."""
        return torch.cat([w(outputs[w.model_output]) for w in self.variables], dim=-1)

    def negative_log_likelihood(self, whitened: Tensor) -> Tensor:
        """``½ ||W(y) − W(o)||²`` from whitened predictions ``(..., d)``."""
        return 0.5 * (whitened - self.data).square().sum(dim=-1)

    def per_variable(self, whitened: Tensor) -> dict[str, Tensor]:
        """``½ ||W_v(y) − W_v(o)||²`` per variable."""
        residual = whitened - self.data
        return {
            name: 0.5 * residual[..., s].square().sum(dim=-1) for name, s in self.slices.items()
        }

    def lag1_autocorrelation(
        self, observations: ObsSet, outputs: Mapping[str, Tensor]
    ) -> dict[str, float]:
        """Lag-1 autocorrelation of the residuals, normalised by the total errors (with
        ``extra_error``), of each 1-D variable without missing values: to choose ``ar1_phi`` from
        the residuals of a fit (``metrics.json`` reports it)."""
        result = {}
        for w in self.variables:
            observed = observations[w.name]
            if observed.mask.dim() != 1:
                continue
            valid = observed.mask
            prediction = outputs[w.model_output].detach().reshape(-1)[valid]
            residual = (prediction - observed.values[valid]) / w.sigma
            residual = residual - residual.mean()
            denominator = float(residual.square().sum())
            if residual.numel() > 2 and denominator > 0:
                result[w.name] = float((residual[1:] * residual[:-1]).sum()) / denominator
        return result
