"""Derivative-free minimisation with CMA-ES (the reference implementation ``cma``), on tensors.

The covariance matrix adaptation evolution strategy (Hansen & Ostermeier 2001, Evol. Comput. 9,
159; Hansen 2016, "The CMA Evolution Strategy: A Tutorial", arXiv:1604.00772) samples a population
of :math:`\\lambda` candidates per iteration,

.. math::

    u_k = m + \\sigma\\, D\\, y_k, \\qquad y_k \\sim N(0, C), \\qquad k = 1 \\dots \\lambda,

(:math:`D` = ``diag(scaling)``), ranks them by the objective, and moves the mean :math:`m` to a
weighted mean of the best :math:`\\mu \\approx \\lambda / 2`; the covariance :math:`C` learns the
successful steps (rank-one and rank-:math:`\\mu` updates) and the step size :math:`\\sigma` follows
the length of the evolution path (cumulative step-size adaptation). Only the ranking of the values
enters the update, so the method is invariant to monotone transformations of the objective, needs
no gradients, and tolerates noisy or rugged objectives; the price is many evaluations (the
default :math:`\\lambda = 4 + \\lfloor 3 \\ln p \\rfloor` members per iteration), which a model run
as a batch evaluates at once. On a convex quadratic, :math:`C` approaches a multiple of the inverse
Hessian.

:class:`CMAES` wraps ``cma.CMAEvolutionStrategy`` in the ask/tell interface on (λ, p) tensors of
unconstrained coordinates. It writes no files and prints nothing. Randomness comes from a
``numpy.random.RandomState`` owned by the optimiser (passed to ``cma`` as its ``randn``), not
from numpy's global generator, so several optimisers and other code can run side by side without
changing each other's draws, and :meth:`CMAES.state_dict` captures all of it: a resumed run is
bit-identical to an uninterrupted one.

Failed members (non-finite values: the model diverged, a solver did not converge) are ranked
last: each is replaced by

.. math::

    f_{\\text{fail}} = f_{\\max} + \\max(f_{\\max} - f_{\\min},\\; 10^{-3} |f_{\\max}|,\\; 1)

from the finite values of the same population, so it is worse than every finite member and the
spread of values (which ``cma``'s ``tolfun`` criterion reads) is not shrunk. All failed members
get the same value; ties keep their order. A population with no finite value is an error.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["CMAES"]

_STATE_VERSION = 1


def _import_cma() -> Any:
    try:
        import cma
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise ImportError(
            "CMA-ES needs the package cma; install the posterior extra: "
            "pip install 'climgrad[posterior]'"
        ) from error
    return cma


class CMAES:
    """CMA-ES in ask/tell form on flat tensors of unconstrained parameters (module docstring).

    Example::

        es = CMAES(u0, sigma=0.5, seed=1)
        while not es.finished:
            U = es.ask()  # (λ, p)
            es.tell(U, negative_log_posterior(U))  # (λ,), inf or nan for failed members
        u_best, value = es.best()

    Args:
        mean: (p,) initial mean, unconstrained coordinates.
        sigma: initial step size (> 0): the standard deviation of the first population around
            ``mean`` in every coordinate (times ``scaling``). About a quarter of the width of the
            region where the optimum is expected.
        popsize: population size λ (at least 2); default ``cma``'s :math:`4 + \\lfloor 3 \\ln p
            \\rfloor`. Larger populations are more global and cost more per iteration.
        seed: seed (>= 0) of the optimiser's own random generator.
        max_iterations: stop after this many iterations (``cma``'s ``maxiter``); default
            ``cma``'s :math:`100 + 150 (p+3)^2 / \\sqrt{\\lambda}`.
        tolerance: stop when every coordinate's search step (standard deviation times σ) and the
            evolution path fall below this, in unconstrained coordinates (``cma``'s ``tolx``,
            default 1e-11). ``cma``'s other criteria (``tolfun``: values of recent iterations
            within 1e-11, stagnation, ill-conditioning, ...) stay on.
        scaling: (p,) positive per-coordinate multipliers of σ (``cma``'s ``CMA_stds``), for
            parameters on different scales.
        options: further ``cma`` options (``cma.CMAOptions()`` lists them), e.g. ``{"tolfun":
            1e-8}``; they override the ones above except the generator and the output settings.

    Raises:
        ValueError: for bad arguments (one line each, naming the fix).
        ImportError: without the package ``cma``.
    """

    def __init__(
        self,
        mean: Tensor,
        sigma: float,
        *,
        popsize: int | None = None,
        seed: int = 0,
        max_iterations: int | None = None,
        tolerance: float | None = None,
        scaling: Tensor | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        cma = _import_cma()
        if not isinstance(mean, Tensor) or mean.ndim != 1 or mean.shape[0] < 1:
            shape = tuple(mean.shape) if isinstance(mean, Tensor) else type(mean).__name__
            raise ValueError(f"`mean` must be a flat (p,) tensor with p >= 1; got {shape}.")
        if not mean.is_floating_point() or not bool(torch.isfinite(mean).all()):
            raise ValueError("`mean` must be a finite floating tensor (float64).")
        if isinstance(sigma, bool) or not math.isfinite(float(sigma)) or float(sigma) <= 0:
            raise ValueError(f"`sigma` must be positive and finite; got {sigma!r}.")
        _check_optional_int("popsize", popsize, 2)
        _check_optional_int("max_iterations", max_iterations, 1)
        _check_optional_int("seed", seed, 0)
        if tolerance is not None and not (math.isfinite(tolerance) and tolerance > 0):
            raise ValueError(f"`tolerance` must be positive and finite; got {tolerance!r}.")
        self._device = mean.device
        self._p = int(mean.shape[0])
        opts: dict[str, Any] = {}
        if popsize is not None:
            opts["popsize"] = int(popsize)
        if max_iterations is not None:
            opts["maxiter"] = int(max_iterations)
        if tolerance is not None:
            opts["tolx"] = float(tolerance)
        if scaling is not None:
            stds = torch.as_tensor(scaling, dtype=torch.float64).detach().cpu()
            if stds.shape != (self._p,):
                raise ValueError(
                    f"`scaling` must be a ({self._p},) tensor of per-coordinate multipliers of "
                    f"sigma; got shape {tuple(stds.shape)}."
                )
            if not bool(torch.isfinite(stds).all()) or not bool((stds > 0).all()):
                raise ValueError("`scaling` must be positive and finite in every coordinate.")
            opts["CMA_stds"] = stds.numpy().tolist()
        opts.update(dict(options or {}))
        self._rng = np.random.RandomState(np.random.MT19937(np.random.SeedSequence(int(seed))))
        opts.update(
            # cma draws from this generator only (its seed option is then unused: nan = "do
            # nothing", so numpy's global generator is neither seeded nor used).
            randn=self._rng.randn,
            seed=np.nan,
            # Quiet, and no output files (outcmaes/...).
            verbose=-9,
            verb_log=0,
            verb_disp=0,
            verb_plot=0,
        )
        start = mean.detach().to(dtype=torch.float64, device="cpu").numpy().copy()
        self._es = cma.CMAEvolutionStrategy(start, float(sigma), opts)
        self._best_u: np.ndarray | None = None
        self._best_value = math.inf
        self._failed = 0

    # ------------------------------------------------------------------------------------------
    # ask / tell

    def ask(self) -> Tensor:
        """The next population, (λ, p) float64 on the device of the initial mean."""
        population = np.asarray(self._es.ask(), dtype=np.float64)
        return torch.as_tensor(population, dtype=torch.float64).to(self._device)

    def tell(self, U: Tensor, values: Tensor) -> None:
        """Passes the values of a population from :meth:`ask` to the update (one iteration).

        Args:
            U: (λ, p) population, as returned by :meth:`ask`.
            values: (λ,) objective values to minimise; non-finite entries mark failed members
                and are ranked last (module docstring).

        Raises:
            ValueError: on shape mismatches, or when every member failed.
        """
        lam = self._es.popsize
        points = torch.as_tensor(U).detach().to(dtype=torch.float64, device="cpu")
        if points.shape != (lam, self._p):
            raise ValueError(
                f"`U` must be the ({lam}, {self._p}) population from ask(); got shape "
                f"{tuple(points.shape)}."
            )
        f = torch.as_tensor(values).detach().to(dtype=torch.float64, device="cpu").reshape(-1)
        if f.shape[0] != lam:
            raise ValueError(
                f"`values` must hold one value per member, ({lam},); got {tuple(f.shape)}."
            )
        finite = torch.isfinite(f)
        if not bool(finite.any()):
            raise ValueError(
                f"all {lam} members failed (non-finite values) at iteration {self.iteration + 1}; "
                "restart from a mean where the model runs, or with a smaller sigma."
            )
        self._failed = int((~finite).sum())
        if self._failed:
            worst, best = float(f[finite].max()), float(f[finite].min())
            penalty = worst + max(worst - best, 1e-3 * abs(worst), 1.0)
            f = torch.where(finite, f, torch.full_like(f, penalty))
        x = points.numpy()
        index = int(torch.argmin(f))
        if float(f[index]) < self._best_value:
            self._best_value = float(f[index])
            self._best_u = x[index].copy()
        self._es.tell([row for row in x], f.numpy().tolist())

    # ------------------------------------------------------------------------------------------
    # state

    def best(self) -> tuple[Tensor, float]:
        """The best member told so far and its value (failed members never count).

        Raises:
            RuntimeError: before the first :meth:`tell`.
        """
        if self._best_u is None:
            raise RuntimeError("no values told yet; call ask() and tell() before best().")
        u = torch.as_tensor(self._best_u, dtype=torch.float64).to(self._device)
        return u, self._best_value

    def mean(self) -> Tensor:
        """The current mean of the search distribution, (p,) float64 (the favourite solution)."""
        favourite = np.asarray(self._es.result.xfavorite, dtype=np.float64)
        return torch.as_tensor(favourite, dtype=torch.float64).to(self._device)

    @property
    def sigma(self) -> float:
        """The current overall step size σ."""
        return float(self._es.sigma)

    @property
    def popsize(self) -> int:
        """The population size λ."""
        return int(self._es.popsize)

    @property
    def iteration(self) -> int:
        """Number of completed iterations (tells)."""
        return int(self._es.countiter)

    @property
    def failed(self) -> int:
        """Number of failed (non-finite) members in the last population told."""
        return self._failed

    @property
    def finished(self) -> bool:
        """True when a ``cma`` termination criterion holds (including ``maxiter``)."""
        return bool(self._es.stop())

    @property
    def stop_reason(self) -> str | None:
        """The termination criteria that hold, e.g. ``"tolfun=1e-11"``, or None while running."""
        reasons = dict(self._es.stop())
        if not reasons:
            return None
        return ", ".join(f"{name}={value}" for name, value in reasons.items())

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, loadable with ``torch.load(..., weights_only=True)``.

        The ``cma`` object (with this optimiser's random generator) and the best member are
        pickled into a uint8 tensor; a restored optimiser continues bit-identically.
        """
        blob = pickle.dumps(
            {"es": self._es, "best_u": self._best_u, "best_value": self._best_value},
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        return {
            "version": _STATE_VERSION,
            "dimension": self._p,
            "iteration": self.iteration,
            "failed": self._failed,
            "pickle": torch.frombuffer(bytearray(blob), dtype=torch.uint8).clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores a :meth:`state_dict`; the settings of the constructor are replaced by it.

        The state holds a pickle: load only checkpoints this code wrote (pickle can run code).

        Raises:
            ValueError: for a state of another version or dimension.
        """
        if state.get("version") != _STATE_VERSION or "pickle" not in state:
            raise ValueError(
                f"not a CMAES state of version {_STATE_VERSION}; pass the dict from "
                "CMAES.state_dict()."
            )
        if int(state["dimension"]) != self._p:
            raise ValueError(
                f"the state is for {int(state['dimension'])} parameters, this optimiser has "
                f"{self._p}; construct it with a mean of the checkpoint's dimension."
            )
        data = pickle.loads(state["pickle"].detach().cpu().numpy().tobytes())
        self._es = data["es"]
        self._best_u = data["best_u"]
        self._best_value = float(data["best_value"])
        self._failed = int(state.get("failed", 0))


def _check_optional_int(name: str, value: object, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}; got {value!r}.")
