"""The posterior every posterior method targets, and the evaluator of parameter ensembles.

A run's learnable parameters are gathered into one vector ``u`` of their unconstrained (raw)
values (:class:`ParameterVector`); the physical value of each is its bijection of ``u``
(:mod:`climgrad.params`). In these coordinates the posterior is

    −log p(u | o) = ½ ||G(u) − y||² + ½ (u − m₀)ᵀ C₀⁻¹ (u − m₀) + const,

with ``G(u) = W(y(θ(u)))`` the whitened predictions and ``y = W(o)`` the whitened observations of
the :class:`~climgrad.calibration.likelihood.GaussianLikelihood`, and ``N(m₀, C₀)`` the
parameters' priors seen in unconstrained coordinates (:func:`climgrad.params.raw_gaussian_prior`:
the moment match of the declared prior pushed through the inverse bijection; exact for a normal
prior on an unbounded parameter). EKI, UKI, CMA-ES, Laplace and NUTS all work on this one density,
so their answers can be compared; samples are pushed through the bijections to physical units.

:class:`Evaluator` maps a batch of vectors ``U`` (J, p) to whitened predictions (J, d) in one
call: through the adapter's batched simulation where the model family has one (EBM1D equilibria,
TwoLayerEBM rollouts), else member by member; a member whose simulation fails (no equilibrium,
non-finite output) comes back as a row of NaN for the method to handle.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.experiment import Problem
from climgrad.calibration.loss import LossTerms
from climgrad.integrate import EquilibriumError
from climgrad.params import ParameterInfo, display_names, raw_gaussian_prior

__all__ = ["MEMBER_FAILURES", "Evaluator", "ParameterVector", "PosteriorTarget"]

#: What a failed member raises: no equilibrium, a value out of a process's range.
MEMBER_FAILURES = (EquilibriumError, ValueError, RuntimeError, CalibrationError)


class ParameterVector:
    """The learnable parameters of a model as one flat vector of raw (unconstrained) values.

    Args:
        model: The model; its learnable parameters (``requires_grad`` raw tensors) in the order
            of :func:`~climgrad.params.display_names`.

    Attributes:
        names: Parameter names.
        labels: One label per element of ``u`` (``"A"``, or ``"D[3]"`` for fields).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.infos: dict[str, ParameterInfo] = {
            name: info for name, info in display_names(model).items() if info.learnable
        }
        if not self.infos:
            raise CalibrationError(
                "no parameter is learnt; set model.params.<name>.learn=true for at least one."
            )
        self.names = list(self.infos)
        self.shapes = {name: tuple(info.raw.shape) for name, info in self.infos.items()}
        self.sizes = [math.prod(shape) for shape in self.shapes.values()]
        self.labels: list[str] = []
        for name, shape in self.shapes.items():
            if not shape:
                self.labels.append(name)
            else:
                self.labels.extend(f"{name}[{i}]" for i in range(math.prod(shape)))
        first = next(iter(self.infos.values())).raw
        self.dtype, self.device = first.dtype, first.device

    @property
    def size(self) -> int:
        """Number of elements ``p``."""
        return len(self.labels)

    def leaves(self) -> list[Tensor]:
        """The raw tensors, in order."""
        return [info.raw for info in self.infos.values()]

    def get(self) -> Tensor:
        """The current raw values as a vector ``(p,)`` (detached copy)."""
        return torch.cat([raw.detach().reshape(-1) for raw in self.leaves()]).clone()

    def set(self, u: Tensor) -> None:
        """Copy ``u`` ``(p,)`` into the model's raw parameters."""
        with torch.no_grad():
            for raw, part in zip(self.leaves(), self.split(u)):
                raw.copy_(part.reshape(raw.shape))

    def split(self, u: Tensor) -> list[Tensor]:
        """``u`` ``(..., p)`` cut into one ``(..., n_k)`` piece per parameter."""
        return list(torch.split(u, self.sizes, dim=-1))

    def physical(self, u: Tensor) -> dict[str, Tensor]:
        """Physical values of ``u`` ``(..., p)``: ``name -> (..., *shape)`` (differentiable)."""
        batch = u.shape[:-1]
        values = {}
        for (name, info), part in zip(self.infos.items(), self.split(u)):
            bijection = getattr(info.module.parametrizations, info.attribute)[0]
            values[name] = bijection.transform(part.reshape((*batch, *self.shapes[name])))
        return values

    def gradient(self) -> Tensor:
        """The raw tensors' ``.grad`` as a vector ``(p,)`` (zeros where ``None``)."""
        return torch.cat(
            [
                (raw.grad if raw.grad is not None else torch.zeros_like(raw)).reshape(-1)
                for raw in self.leaves()
            ]
        )

    def prior(self) -> tuple[Tensor, Tensor]:
        """Mean ``(p,)`` and (diagonal) covariance ``(p, p)`` of the prior in raw coordinates.

        Raises:
            CalibrationError: A learnt parameter has no prior (the message says how to set one).
        """
        means, variances = [], []
        for info in self.infos.values():
            try:
                mean, variance = raw_gaussian_prior(info)
            except ValueError as err:
                raise CalibrationError(str(err)) from None
            means.append(mean.reshape(-1))
            variances.append(variance.reshape(-1))
        return torch.cat(means), torch.diag(torch.cat(variances))


class _ForwardMap(torch.autograd.Function):
    """``u -> G(u)`` as one autograd node: the forward runs the model with gradients on its raw
    parameters; the backward is the model's own vector-Jacobian product (adjoint solves,
    custom backward passes), so samplers and Jacobians see ``u`` as their input."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, target: PosteriorTarget) -> Tensor:
        target.vector.set(u.detach())
        with torch.enable_grad():
            for raw in target.vector.leaves():
                raw.grad = None
            whitened = target.whitened_outputs()
        ctx.whitened = whitened
        ctx.target = target
        return whitened.detach()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        leaves = ctx.target.vector.leaves()
        with torch.enable_grad():
            grads = torch.autograd.grad(
                ctx.whitened, leaves, grad_output, retain_graph=True, allow_unused=True
            )
        flat = [
            (g if g is not None else torch.zeros_like(raw)).reshape(-1)
            for g, raw in zip(grads, leaves)
        ]
        return torch.cat(flat), None


class PosteriorTarget:
    """The posterior of a :class:`Problem` in the unconstrained coordinates of its parameters.

    Args:
        problem: The problem (its ``likelihood`` and the model's learnable parameters).

    Attributes:
        vector: The parameter vector.
        prior_mean, prior_cov: ``m₀`` ``(p,)`` and ``C₀`` ``(p, p)``.
        data: Whitened observations ``y`` ``(d,)``.
        evaluator: Batched whitened predictions of parameter ensembles.
    """

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.likelihood = problem.likelihood
        self.vector = ParameterVector(problem.model)
        self.prior_mean, self.prior_cov = self.vector.prior()
        self.prior_precision = torch.linalg.inv(self.prior_cov)
        self.data = self.likelihood.data
        self.evaluator = Evaluator(problem, self.vector)

    @property
    def solves(self) -> int:
        """Model solves so far (batched members count one each)."""
        return self.evaluator.solves

    def whitened_outputs(self) -> Tensor:
        """``G`` at the model's current parameters, in the autograd graph of the raw ones."""
        self.evaluator.solves += 1
        return self.likelihood.whiten(self.problem.simulate())

    def forward_map(self, u: Tensor) -> Tensor:
        """``G(u)`` ``(d,)``, differentiable in ``u`` (sets the model's parameters to ``u``)."""
        result: Tensor = _ForwardMap.apply(u, self)
        return result

    def prior_term(self, u: Tensor) -> Tensor:
        """``½ (u − m₀)ᵀ C₀⁻¹ (u − m₀)`` for ``u`` ``(..., p)``."""
        centred = u - self.prior_mean
        return 0.5 * ((centred @ self.prior_precision) * centred).sum(dim=-1)

    def negative_log_posterior(self, u: Tensor) -> Tensor:
        """``½ ||G(u) − y||² + ½ (u − m₀)ᵀ C₀⁻¹ (u − m₀)``, differentiable in ``u``; ``+inf``
        where the model does not solve."""
        try:
            whitened = self.forward_map(u)
        except MEMBER_FAILURES:
            return u.sum() * 0.0 + math.inf
        return self.likelihood.negative_log_likelihood(whitened) + self.prior_term(u)

    def objective(self, U: Tensor, G: Tensor) -> Tensor:
        """Negative log posterior of members ``U`` ``(J, p)`` from their predictions ``G``."""
        return self.likelihood.negative_log_likelihood(G) + self.prior_term(U)

    def terms(self, u: Tensor, whitened: Tensor) -> LossTerms:
        """Loss terms for logs: the negative log posterior at ``u`` split by variable."""
        misfit = {k: v.detach() for k, v in self.likelihood.per_variable(whitened).items()}
        prior = self.prior_term(u).detach()
        total = torch.stack(list(misfit.values())).sum() + prior
        return LossTerms(total, misfit, prior)

    def point_terms(self, u: Tensor) -> LossTerms:
        """:meth:`terms` at ``u``, with one (unbatched) solve; ``inf`` where it fails."""
        whitened = self.evaluator(u.unsqueeze(0))[0]
        return self.terms(u, whitened)


class Evaluator:
    """Whitened predictions of J parameter vectors in one call.

    Args:
        problem: The problem (adapter, model, simulate options, likelihood).
        vector: Its parameter vector.
        batched: Use the adapter's batched simulation where it has one (default); ``False``
            evaluates member by member.

    The model's parameters are the same before and after a call. ``solves`` counts members.
    """

    def __init__(self, problem: Problem, vector: ParameterVector, *, batched: bool = True) -> None:
        self.problem = problem
        self.vector = vector
        self.batched = batched and problem.adapter.batched
        self.solves = 0
        self.hooks: list[Callable[[Tensor, Tensor], None]] = []

    def __call__(self, U: Tensor) -> Tensor:
        """``G`` ``(J, d)`` for ``U`` ``(J, p)``; rows of NaN for members that failed."""
        U = U.to(dtype=self.vector.dtype, device=self.vector.device)
        if U.dim() != 2 or U.shape[1] != self.vector.size:
            raise ValueError(
                f"expected parameter vectors of shape (J, {self.vector.size}); got "
                f"{tuple(U.shape)}."
            )
        with torch.no_grad():
            result = self._batched(U) if self.batched else None
            if result is None:
                result = self._one_by_one(U)
        self.solves += U.shape[0]
        for hook in self.hooks:
            hook(U, result)
        return result

    def _batched(self, U: Tensor) -> Tensor | None:
        problem = self.problem
        try:
            outputs = problem.adapter.simulate_batch(
                problem.model, self.vector.physical(U), problem.simulate_options
            )
            whitened = problem.likelihood.whiten(outputs)
        except MEMBER_FAILURES:
            return None  # find the failing members one by one
        whitened[~torch.isfinite(whitened).all(dim=-1)] = math.nan
        return whitened

    def _one_by_one(self, U: Tensor) -> Tensor:
        problem = self.problem
        saved = self.vector.get()
        rows = []
        try:
            for u in U:
                try:
                    if self.batched:  # the same solver as the batch, one member at a time
                        row = self._batched(u.unsqueeze(0))
                        if row is None:
                            raise EquilibriumError("member failed")
                        rows.append(row[0])
                        continue
                    self.vector.set(u)
                    rows.append(problem.likelihood.whiten(problem.simulate()))
                except MEMBER_FAILURES:
                    rows.append(torch.full_like(problem.likelihood.data, math.nan))
        finally:
            self.vector.set(saved)
        result = torch.stack(rows)
        bad = ~torch.isfinite(result).all(dim=-1)
        result[bad] = math.nan
        return result
