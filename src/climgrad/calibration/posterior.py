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
non-finite output) comes back as a row of NaN for the method to handle. ``method.executor``
sends chunks of members to worker processes or a Dask cluster instead
(:mod:`climgrad.calibration.executors`, docs/scaling.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.executors import (
    ChunkFailure,
    ChunkTask,
    ExecutorSettings,
    MemberExecutor,
    acquire_executor,
    chunk_bounds,
    scope_cache_dir,
)
from climgrad.calibration.experiment import Problem, config_yaml
from climgrad.calibration.loss import LossTerms
from climgrad.integrate import EquilibriumError
from climgrad.params import ParameterInfo, display_names, raw_gaussian_prior

__all__ = ["MEMBER_FAILURES", "Evaluator", "ParameterVector", "PosteriorTarget"]

#: What a failed member raises: no equilibrium, a value out of a process's range.
MEMBER_FAILURES = (EquilibriumError, ValueError, RuntimeError, CalibrationError)

_log = logging.getLogger("climgrad.calibrate")


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


class Evaluator:
    """Whitened predictions of J parameter vectors in one call.

    Args:
        problem: The problem (adapter, model, simulate options, likelihood).
        vector: Its parameter vector.
        batched: Use the adapter's batched simulation where it has one (default); ``False``
            evaluates member by member.
        executor: Where the members are evaluated: ``None`` (default) reads
            ``problem.config.method.executor``; ``"batched"`` (this process), ``"processes"``,
            ``"dask"``; or a :class:`~climgrad.calibration.executors.MemberExecutor` to use
            (the caller closes it).
        cache_dir: Folder of the member cache (``method.member_cache``): each finished chunk's
            predictions are stored there (``<sha256>.pt``) and re-used when the same members of
            the same problem come again (a resumed run). ``None``: the run's
            (:func:`~climgrad.calibration.executors.ensemble_scope`), outside a run none.

    Attributes:
        settings: ``method.executor`` and its options, checked (an
            :class:`~climgrad.calibration.executors.ExecutorSettings`).
        executor: The executor in use (``None`` until the first call that needs one).
        task: What the workers run on a chunk (a picklable
            :class:`~climgrad.calibration.executors.ChunkTask` of the run's resolved config).
        solves: Members evaluated (those read from the cache included).
        cached: Members read from the cache.

    The model's parameters are the same before and after a call. ``solves`` counts members.
    Off the ``batched`` executor, ``U`` is cut into chunks (``method.chunk_size``, or one per
    worker) that workers evaluate as this class does in process (:class:`ChunkTask`); a chunk
    whose worker dies or raises comes back as NaN rows (all of them raising is an error). The
    executor starts on the first call that needs it and is shut down by :meth:`close` (also a
    context manager), at the end of the run's
    :func:`~climgrad.calibration.executors.ensemble_scope`, when the evaluator is collected, or
    at exit, whichever comes first.
    """

    def __init__(
        self,
        problem: Problem,
        vector: ParameterVector,
        *,
        batched: bool = True,
        executor: str | MemberExecutor | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.problem = problem
        self.vector = vector
        self.batched = batched and problem.adapter.batched
        self.solves = 0
        self.hooks: list[Callable[[Tensor, Tensor], None]] = []
        method = problem.config.method
        if isinstance(executor, str):
            method = dataclasses.replace(method, executor=executor)
        self.settings = ExecutorSettings.from_config(method)
        self.executor: MemberExecutor | None = None
        if isinstance(executor, MemberExecutor):
            self.executor = executor
            self.settings = dataclasses.replace(
                self.settings,
                kind=executor.name,
                workers=executor.workers,
                member_cache=(True if method.member_cache is None else bool(method.member_cache)),
            )
        self._cache_dir = None if cache_dir is None else Path(cache_dir)
        self.cached = 0  #: members taken from the cache
        self.task = ChunkTask(config_yaml(problem.config), problem.dtype)
        self._release: weakref.finalize | None = None
        self._fingerprint: str | None = None

    @property
    def cache_dir(self) -> Path | None:
        """The member cache's folder: this evaluator's own, else the run's
        (:func:`~climgrad.calibration.executors.ensemble_scope`), else ``None`` (no cache)."""
        return self._cache_dir if self._cache_dir is not None else scope_cache_dir()

    @cache_dir.setter
    def cache_dir(self, folder: str | Path | None) -> None:
        self._cache_dir = None if folder is None else Path(folder)

    # -- the executor -------------------------------------------------------------------------

    @property
    def distributed(self) -> bool:
        """Whether members go to an executor (not the in-process ``batched`` path)."""
        return self.executor is not None or self.settings.kind != "batched"

    def _executor(self) -> MemberExecutor:
        if self.executor is not None and self._release is not None and self.executor.closed:
            self.close()  # shut down with the run that started it: start another
        if self.executor is None:
            executor, release = acquire_executor(self.settings)
            self.executor = executor
            self._release = weakref.finalize(self, release)
        return self.executor

    def close(self) -> None:
        """Shut down the executor this evaluator started (idempotent; a later call starts it
        again). An executor given to the constructor is left to its owner."""
        if self._release is not None:
            self._release()
            self._release = None
            self.executor = None

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- evaluation ---------------------------------------------------------------------------

    def __call__(self, U: Tensor) -> Tensor:
        """``G`` ``(J, d)`` for ``U`` ``(J, p)``; rows of NaN for members that failed."""
        U = U.to(dtype=self.vector.dtype, device=self.vector.device)
        if U.dim() != 2 or U.shape[1] != self.vector.size:
            raise ValueError(
                f"expected parameter vectors of shape (J, {self.vector.size}); got "
                f"{tuple(U.shape)}."
            )
        with torch.no_grad():
            caching = self.settings.member_cache and self.cache_dir is not None
            if self.distributed or caching:
                result = self._by_chunks(U, caching)
            else:
                result = self._in_process(U)
        self.solves += U.shape[0]
        for hook in self.hooks:
            hook(U, result)
        return result

    def _in_process(self, U: Tensor) -> Tensor:
        result = self._batched(U) if self.batched else None
        if result is None:
            result = self._one_by_one(U)
        return result

    def _by_chunks(self, U: Tensor, caching: bool) -> Tensor:
        """``U`` cut into chunks: from the cache, else from the executor (or this process)."""
        members = U.shape[0]
        if self.distributed:
            bounds = chunk_bounds(members, self.settings.workers, self.settings.chunk_size)
        else:
            bounds = [slice(0, members)]
        rows = U.detach().cpu()
        chunks = [rows[bound].contiguous() for bound in bounds]
        results: list[Tensor | None] = [None] * len(chunks)
        keys: list[str | None] = [None] * len(chunks)
        if caching:
            fingerprint = self._problem_fingerprint()
            for index, chunk in enumerate(chunks):
                keys[index] = _chunk_key(fingerprint, chunk)
                results[index] = self._cache_load(keys[index], chunk.shape[0])
                if results[index] is not None:
                    self.cached += chunk.shape[0]
        todo = [i for i, result in enumerate(results) if result is None]
        if todo and not self.distributed:
            for index in todo:
                results[index] = self._in_process(chunks[index].to(U.device)).cpu()
        elif todo:
            executor = self._executor()
            state = _cpu_state(self.problem.model)
            calls = [(self.task, (chunks[i], state, self.batched)) for i in todo]
            outcomes = executor.run_all(calls)
            failures = []
            for index, outcome in zip(todo, outcomes):
                if isinstance(outcome, ChunkFailure):
                    failures.append(outcome)
                    bound = bounds[index]
                    _log.warning(
                        "Members %d-%d failed on the %s executor (%s); counted as failed members.",
                        bound.start,
                        bound.stop - 1,
                        executor.name,
                        outcome.describe(),
                    )
                    continue
                results[index] = outcome
            raised = [f for f in failures if not f.lost]
            if raised and len(raised) == len(todo):
                raise CalibrationError(
                    f"every chunk of {members} members raised on the {executor.name} executor; "
                    f"the first said: {raised[0].describe()}"
                ) from raised[0].error
        nan = torch.full((1, self.problem.likelihood.data.shape[-1]), math.nan, dtype=U.dtype)
        for index in todo:
            result = results[index]
            if result is None:
                results[index] = nan.expand(chunks[index].shape[0], -1)
            elif caching:
                self._cache_store(keys[index], result)
        stacked = torch.cat([r for r in results if r is not None])
        whitened = stacked.to(dtype=self.vector.dtype, device=U.device)
        whitened[~torch.isfinite(whitened).all(dim=-1)] = math.nan
        return whitened

    # -- the member cache ---------------------------------------------------------------------

    def _problem_fingerprint(self) -> str:
        """What the predictions of a member depend on besides its row: the config parts of the
        problem, the model's other parameters and buffers, the path (batched or not)."""
        if self._fingerprint is None:
            config = self.problem.config
            parts = {
                "model": config.model,
                "data": config.data,
                "loss": config.loss,
                "likelihood": config.likelihood,
                "paths": config.paths,
            }
            text = OmegaConf.to_yaml(
                OmegaConf.create({k: OmegaConf.structured(v) for k, v in parts.items()}),
                resolve=True,
            )
            self._fingerprint = f"{text}\n{config.trainer.dtype}\n{self.problem.dtype}"
        digest = hashlib.sha256(self._fingerprint.encode())
        digest.update(b"batched" if self.batched else b"one-by-one")
        learnt = {id(leaf) for leaf in self.vector.leaves()}
        for name, tensor in self.problem.model.state_dict(keep_vars=True).items():
            if id(tensor) in learnt:
                continue
            digest.update(name.encode())
            digest.update(_tensor_bytes(tensor.detach()))
        return digest.hexdigest()

    def _cache_load(self, key: str | None, members: int) -> Tensor | None:
        if key is None or self.cache_dir is None:
            return None
        path = self.cache_dir / f"{key}.pt"
        if not path.is_file():
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            result = stored["G"]
        except Exception as err:  # a torn or foreign file: solve again
            _log.warning("Ignoring the member cache file %s: %s", path, err)
            return None
        if not isinstance(result, Tensor) or result.shape[0] != members:
            return None
        return result

    def _cache_store(self, key: str | None, result: Tensor) -> None:
        if key is None or self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.cache_dir, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                torch.save({"G": result.detach().cpu().clone()}, stream)
            os.replace(temporary, self.cache_dir / f"{key}.pt")
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    # -- in this process ----------------------------------------------------------------------

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


def _tensor_bytes(tensor: Tensor) -> bytes:
    """The bytes of a tensor's values (for hashing)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def _chunk_key(fingerprint: str, chunk: Tensor) -> str:
    """The cache key of the members ``chunk`` of the problem ``fingerprint``."""
    digest = hashlib.sha256(fingerprint.encode())
    digest.update(f"{tuple(chunk.shape)} {chunk.dtype}".encode())
    digest.update(_tensor_bytes(chunk))
    return digest.hexdigest()


def _cpu_state(model: torch.nn.Module) -> dict[str, Tensor]:
    """The model's state dict, detached on the CPU (sent to the workers with each chunk)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
