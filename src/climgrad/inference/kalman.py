r"""Ensemble and unscented Kalman inversion on flat parameter vectors (derivative-free).

Both methods solve the inverse problem

.. math::  y = G(u) + \eta, \qquad \eta \sim N(0, \Gamma), \qquad u \sim N(m_0, C_0),

for the unconstrained parameters :math:`u \in \mathbb{R}^p` from data :math:`y \in
\mathbb{R}^d`, using only evaluations of the forward map :math:`G`. The classes here never call
:math:`G`: they hand out the parameter sets to evaluate (:attr:`EKI.ensemble`,
:meth:`UKI.sigma_points`), the caller evaluates them (in a batch, in parallel, on other machines)
and passes the rows :math:`G(u_j)` back to ``update``. :math:`\Gamma` defaults to the identity
(data already whitened); a ``(d,)`` diagonal or a ``(d, d)`` dense noise covariance is accepted.
Internally every residual is whitened with :math:`\Gamma^{-1/2}` (a Cholesky factor), so the
algebra below holds for any :math:`\Gamma`. All state is float64.

Ensemble Kalman inversion (:class:`EKI`)
----------------------------------------
Stochastic (perturbed-observation) EKI of Iglesias, Law & Stuart (2013, Inverse Problems 29
045001), in the continuous-time scaling of Schillings & Stuart (2017, SIAM J. Numer. Anal. 55
1264). With sample (cross-)covariances :math:`C^{ug}, C^{gg}` over the ensemble members, one step of
size :math:`\Delta t` is

.. math::  u_j \leftarrow u_j + C^{ug} (C^{gg} + \Delta t^{-1}\Gamma)^{-1}
           (y + \xi_j - g_j), \qquad \xi_j \sim N(0, \Delta t^{-1}\Gamma),

and the algorithm time is :math:`t = \sum \Delta t`.

* ``variant="finite_time"``: started from the prior and stopped at :math:`t = 1`, each step is
  the Kalman update for the likelihood tempered by :math:`\Delta t`, so for a *linear* :math:`G`
  the ensemble is distributed as the posterior :math:`N(m_{post}, C_{post})` in the limit
  :math:`J \to \infty` (exact in the mean-field limit, with Monte Carlo error
  :math:`O(J^{-1/2})`). For a nonlinear :math:`G` it is an approximation (a Gaussian, linearised
  update) whose quality degrades with the nonlinearity over the prior's support.
* ``variant="tikhonov"`` (TEKI, Chada, Stuart & Tong 2020, SIAM J. Numer. Anal. 58 1263): the
  same iteration on the augmented system :math:`\tilde G(u) = [G(u); u]`,
  :math:`\tilde y = [y; m_0]`, :math:`\tilde\Gamma = \mathrm{blockdiag}(\Gamma, C_0)`, with the
  whole augmented vector perturbed, :math:`\xi_j \sim N(0, \Delta t^{-1}\tilde\Gamma)`. As
  :math:`t \to \infty` the ensemble collapses onto the minimiser of the Tikhonov-regularised misfit
  :math:`\tfrac12|\Gamma^{-1/2}(y - G(u))|^2 + \tfrac12|C_0^{-1/2}(u - m_0)|^2` (the MAP point,
  equal to the posterior mean for linear :math:`G`); it has no meaning at :math:`t = 1`, so pass a
  large ``max_time`` (``math.inf`` runs until the caller stops it).

Step sizes: ``step="dmc"`` is the data-misfit controller of Iglesias & Yang (2021, Inverse Problems
37 025008), as in EnsembleKalmanProcesses.jl's ``DataMisfitController``: with
:math:`\Phi_j = \tfrac12|\Gamma^{-1/2}(y - g_j)|^2` over the successful members,

.. math::  \Delta t = \min\Big(\max\Big(\frac{d}{2\,\overline{\Phi}},
           \sqrt{\frac{d}{2\,\mathrm{Var}\,\Phi}}\Big),\; T - t\Big),

(EKP's code and the paper set :math:`\Delta t` itself, i.e. the *inverse* of the regularisation
parameter :math:`\alpha_n`, to this maximum: small steps while the misfit is large.) A float
``step`` is a fixed :math:`\Delta t`; either is clipped so that :math:`t` lands exactly on
``max_time`` :math:`T` at the last step. :math:`\Phi` uses the data block only (also for TEKI).

Sample (cross-)covariances use the denominator :math:`J_s - 1` over the :math:`J_s` successful
members (EKP divides by :math:`J_s`; the difference is :math:`O(1/J)`). Failed members (a row of
``G`` with a non-finite entry) are handled as EKP's ``SampleSuccGauss``: the Kalman update is
computed from and applied to the successful members only, and each failed member is replaced by a
draw from :math:`N(\bar u, \hat C)` of the *updated* successful members, drawn as
:math:`\bar u + \sum_k w_k (u_k - \bar u)/\sqrt{J_s - 1}`, :math:`w \sim N(0, I_{J_s})` (exact for
a singular :math:`\hat C` too; EKP inflates it instead). Fewer than two successful members raise
:class:`EnsembleFailure`. The random stream is: the initial ensemble at construction, then per
update the :math:`J \times \tilde d` perturbations (for all members, failed or not) followed by
the replacements; :meth:`EKI.state_dict` carries the generator state, so a resumed run is
bit-identical.

Unscented Kalman inversion (:class:`UKI`)
-----------------------------------------
Huang, Schneider & Stuart (2022, J. Comput. Phys. 463 111262), with the prior imposed through the
augmented system (as in TEKI above and EKP's ``impose_prior``; see also Huang, Huang, Reich &
Stuart 2022, Inverse Problems 38 125006): the unscented Kalman filter applied to

.. math::  u_{n+1} = r + \alpha(u_n - r) + \omega_{n+1},\quad \omega \sim N(0, \Sigma_\omega);
           \qquad \tilde y = \tilde G(u_{n+1}) + \nu_{n+1},\quad \nu \sim N(0, \Sigma_\nu),

with :math:`\tilde G(u) = [G(u); u]`, :math:`\tilde y = [y; m_0]`, :math:`r = m_0`,
:math:`\Sigma_\nu = 2\,\mathrm{blockdiag}(\Gamma, C_0)` and
:math:`\Sigma_\omega = (2 - \alpha^2)\Lambda`, where :math:`\Lambda = C_n` is refreshed every
``update_freq`` iterations (:math:`\Lambda = C_0` when ``update_freq=0``). Prediction:
:math:`\hat m = r + \alpha(m_n - r)`, :math:`\hat C = \alpha^2 C_n + \Sigma_\omega`. Sigma points
(modified unscented transform, :math:`2p+1` points): :math:`\hat u^0 = \hat m`,
:math:`\hat u^{\pm i} = \hat m \pm c\,[\sqrt{\hat C}]_i` with :math:`a = \min(\sqrt{4/p}, 1)`,
:math:`c = a\sqrt p`, covariance weights :math:`W = 1/(2a^2p)` and the mean of the outputs taken at
the centre point, :math:`\hat z = \tilde G(\hat u^0)`. Analysis:

.. math::  C^{uz} = \sum_{i} W (\hat u^i - \hat m)(\tilde G(\hat u^i) - \hat z)^T,\quad
           C^{zz} = \sum_{i} W (\tilde G(\hat u^i) - \hat z)(\cdot)^T + \Sigma_\nu,

.. math::  m_{n+1} = \hat m + C^{uz}(C^{zz})^{-1}(\tilde y - \hat z), \qquad
           C_{n+1} = \hat C - C^{uz}(C^{zz})^{-1}(C^{uz})^T.

With the defaults :math:`\alpha = 1`, ``update_freq=1`` (:math:`\Sigma_\omega = C_n`) and a linear
:math:`G = A`, the iteration is a Kalman filter with :math:`C_{n+1}^{-1} = \tfrac12 C_n^{-1} +
\tfrac12(A^T\Gamma^{-1}A + C_0^{-1})`, whose fixed point is exactly the Gaussian posterior; the
mean and covariance converge geometrically (error halves each iteration). For nonlinear :math:`G`
the result is a Gaussian approximation of the posterior (exact only in the linear-Gaussian case).
Other ``alpha_reg`` / ``update_freq`` give the paper's additionally regularised variants, whose
limit is *not* the posterior.

Note: EnsembleKalmanProcesses.jl (``Unscented(...; impose_prior=true)``) adds :math:`C_0`, not
:math:`2C_0`, to the prior block of :math:`C^{zz}`; with :math:`\Sigma_\omega = C_n` that fixed
point has precision :math:`A^T\Gamma^{-1}A + 2C_0^{-1}`. The factor 2 here is the paper's
:math:`\Sigma_\nu = 2\Sigma_\eta` applied to the augmented noise :math:`\mathrm{blockdiag}(\Gamma,
C_0)` (its authors' InverseProblems.jl writes it as :math:`\Delta t^{-1}\Sigma_\eta`,
:math:`\Delta t = 1/2`), and it is what makes the linear fixed point the posterior.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["EKI", "UKI", "EnsembleFailure", "data_misfit"]

_DTYPE = torch.float64
_VARIANTS = ("finite_time", "tikhonov")


class EnsembleFailure(ValueError):
    """Too many forward-map evaluations failed (non-finite) for a Kalman update to be made."""


# --------------------------------------------------------------------------------------------------
# Input checks and linear algebra helpers
# --------------------------------------------------------------------------------------------------


def _as_float64(name: str, value: object, device: torch.device | None = None) -> Tensor:
    """Return ``value`` as a detached float64 copy (on ``device`` if given), or raise."""
    if not isinstance(value, Tensor):
        raise ValueError(
            f"`{name}` must be a torch.Tensor; got {type(value).__name__}. "
            "Wrap it with torch.as_tensor(..., dtype=torch.float64)."
        )
    if value.is_complex():
        raise ValueError(f"`{name}` must be real; got dtype {value.dtype}. Pass a real tensor.")
    out = value.detach().to(dtype=_DTYPE, device=device if device is not None else value.device)
    return out.clone()


def _check_vector(name: str, value: Tensor, length: int | None = None) -> None:
    """Raise unless ``value`` is a finite 1-D tensor (of ``length`` if given)."""
    if value.ndim != 1 or value.shape[0] == 0:
        raise ValueError(
            f"`{name}` must be a non-empty 1-D tensor; got shape {tuple(value.shape)}. "
            "Flatten it with .reshape(-1)."
        )
    if length is not None and value.shape[0] != length:
        raise ValueError(
            f"`{name}` must have length {length}; got {value.shape[0]}. "
            "Check that it matches the other arguments."
        )
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"`{name}` contains NaN or inf; pass finite values.")


def _cholesky_spd(name: str, cov: Tensor, size: int) -> Tensor:
    """Return the lower Cholesky factor of a symmetric positive definite ``cov``, or raise."""
    if cov.shape != (size, size):
        raise ValueError(
            f"`{name}` must have shape ({size}, {size}); got {tuple(cov.shape)}. "
            "Pass a square covariance matching the vector it describes."
        )
    if not bool(torch.isfinite(cov).all()):
        raise ValueError(f"`{name}` contains NaN or inf; pass a finite covariance.")
    scale = float(cov.abs().max())
    if float((cov - cov.mT).abs().max()) > 1e-10 * max(scale, 1e-300):
        raise ValueError(f"`{name}` is not symmetric; symmetrise it with (C + C.mT) / 2.")
    factor, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0:
        raise ValueError(
            f"`{name}` is not positive definite; add a small diagonal (jitter) or drop "
            "redundant directions."
        )
    return factor


class _Whitener:
    r"""Multiplication by :math:`\Sigma^{-1/2}` for a diagonal or dense covariance."""

    def __init__(self, name: str, cov: Tensor | None, size: int, device: torch.device) -> None:
        self.std: Tensor | None = None
        self.factor: Tensor | None = None
        if cov is None:
            self.std = torch.ones(size, dtype=_DTYPE, device=device)
            self.cov = self.std.clone()
            return
        cov = _as_float64(name, cov, device)
        if cov.ndim == 1:
            if cov.shape[0] != size:
                raise ValueError(
                    f"`{name}` as a diagonal must have length {size}; got {cov.shape[0]}. "
                    "Pass one variance per datum, or a (d, d) matrix."
                )
            if not bool(torch.isfinite(cov).all()) or not bool((cov > 0).all()):
                raise ValueError(
                    f"`{name}` must hold finite positive variances; got a minimum of "
                    f"{float(cov.min()):.3g}. Pass variances (squared standard deviations)."
                )
            self.std = cov.sqrt()
        elif cov.ndim == 2:
            self.factor = _cholesky_spd(name, cov, size)
        else:
            raise ValueError(
                f"`{name}` must be a (d,) diagonal or a (d, d) matrix; got shape "
                f"{tuple(cov.shape)}."
            )
        self.cov = cov

    def whiten(self, x: Tensor) -> Tensor:
        """Return :math:`\\Sigma^{-1/2}x` for ``x`` of shape ``(..., size)`` (row vectors)."""
        if self.std is not None:
            return x / self.std
        assert self.factor is not None
        flat = x.reshape(-1, x.shape[-1])
        out = torch.linalg.solve_triangular(self.factor, flat.mT, upper=False).mT
        return out.reshape(x.shape)


def _gaussian_problem(
    prior_mean: Tensor, prior_cov: Tensor, data: Tensor, noise_cov: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, _Whitener]:
    """Checked float64 ``m0``, ``C0``, ``y``, the Cholesky factor of ``C0`` and the noise
    whitener: what EKI and UKI both start from."""
    m0 = _as_float64("prior_mean", prior_mean)
    _check_vector("prior_mean", m0)
    device = m0.device
    c0 = _as_float64("prior_cov", prior_cov, device)
    factor = _cholesky_spd("prior_cov", c0, m0.shape[0])
    y = _as_float64("data", data, device)
    _check_vector("data", y)
    return m0, c0, y, factor, _Whitener("noise_cov", noise_cov, y.shape[0], device)


def data_misfit(G: Tensor, data: Tensor, noise_cov: Tensor | None = None) -> Tensor:
    r"""Data misfit :math:`\Phi_j = \tfrac12 |\Gamma^{-1/2}(y - G_j)|^2` of each row of ``G``.

    Args:
        G: forward-map values, shape ``(J, d)`` (or ``(d,)`` for one member).
        data: observations :math:`y`, shape ``(d,)``.
        noise_cov: noise covariance :math:`\Gamma`: ``None`` (identity), ``(d,)`` diagonal or
            ``(d, d)`` dense, symmetric positive definite.

    Returns:
        float64 tensor of shape ``(J,)`` (or a 0-d tensor); rows with NaN or inf entries give a
        non-finite misfit.

    Raises:
        ValueError: on shapes that do not match or a noise covariance that is not positive definite.
    """
    y = _as_float64("data", data)
    _check_vector("data", y)
    g = _as_float64("G", G, y.device)
    if g.ndim not in (1, 2) or g.shape[-1] != y.shape[0]:
        raise ValueError(
            f"`G` must have shape (J, {y.shape[0]}) (one row per member); got {tuple(g.shape)}."
        )
    white = _Whitener("noise_cov", noise_cov, y.shape[0], y.device)
    return 0.5 * white.whiten(y - g).square().sum(dim=-1)


def _kalman_gain_apply(dU: Tensor, dG: Tensor, noise: float, rhs: Tensor) -> Tensor:
    r"""Rows :math:`dU^T dG (dG^T dG + \lambda I)^{-1} r_k` for each row :math:`r_k` of ``rhs``.

    ``dU`` (n, p) and ``dG`` (n, D) are scaled deviations, so that :math:`C^{ug} = dU^T dG` and
    :math:`C^{gg} = dG^T dG`; :math:`\lambda` is the (whitened) noise variance. The smaller of the
    D×D (observation space) and n×n (ensemble space, by the push-through identity) systems is
    solved.

    Returns:
        tensor of shape ``(k, p)``.
    """
    n, D = dG.shape
    if D <= n:
        eye = torch.eye(D, dtype=dG.dtype, device=dG.device)
        chol = torch.linalg.cholesky(dG.mT @ dG + noise * eye)
        x = torch.cholesky_solve(rhs.mT, chol)  # (D, k)
        return (dG @ x).mT @ dU
    eye = torch.eye(n, dtype=dG.dtype, device=dG.device)
    chol = torch.linalg.cholesky(dG @ dG.mT + noise * eye)
    x = torch.cholesky_solve(dG @ rhs.mT, chol)  # (n, k)
    return x.mT @ dU


def _square_root(cov: Tensor) -> Tensor:
    """A matrix ``S`` with ``S S^T = cov``: the Cholesky factor, or a clipped eigen-root."""
    factor, info = torch.linalg.cholesky_ex(cov)
    if int(info) == 0:
        return factor
    sym = 0.5 * (cov + cov.mT)
    vals, vecs = torch.linalg.eigh(sym)
    floor = 1e-12 * float(vals.abs().max().clamp_min(1e-300))
    return vecs * vals.clamp_min(floor).sqrt()


def _check_g(G: object, rows: int, cols: int, device: torch.device, what: str) -> Tensor:
    """Return ``G`` as float64 of shape (rows, cols), or raise with the expected layout."""
    g = _as_float64("G", G, device)
    if g.shape != (rows, cols):
        raise ValueError(
            f"`G` must have shape ({rows}, {cols}): one row per {what}, one column per datum; got "
            f"{tuple(g.shape)}."
        )
    return g


def _check_state_keys(state: Mapping[str, Any], keys: tuple[str, ...], kind: str) -> None:
    """Raise unless ``state`` is a complete state dict of class ``kind``."""
    if not isinstance(state, Mapping):
        raise ValueError(
            f"state must be the dict from {kind}.state_dict(); got {type(state).__name__}."
        )
    if state.get("kind", kind) != kind:
        raise ValueError(
            f"state dict is from {state['kind']}, not {kind}; load it with "
            f"{state['kind']}.load_state_dict."
        )
    missing = [key for key in keys if key not in state]
    if missing:
        raise ValueError(
            f"state dict lacks {missing}; pass the dict returned by {kind}.state_dict()."
        )


def _check_same(name: str, saved: Tensor, mine: Tensor, kind: str) -> None:
    """Raise unless the saved configuration tensor equals this object's."""
    saved = saved.to(dtype=_DTYPE, device=mine.device)
    if saved.shape != mine.shape or not torch.equal(saved, mine):
        raise ValueError(
            f"state dict's `{name}` differs from this {kind}'s; build the {kind} with the same "
            "prior, data and noise covariance before loading."
        )


# --------------------------------------------------------------------------------------------------
# Ensemble Kalman inversion
# --------------------------------------------------------------------------------------------------


class EKI:
    r"""Stochastic ensemble Kalman inversion (finite-time or Tikhonov-regularised), step by step.

    The caller evaluates the forward map on :attr:`ensemble` and passes the rows to
    :meth:`update` until :attr:`finished`::

        eki = EKI(m0, C0, y, 100, generator=torch.Generator().manual_seed(0))
        while not eki.finished:
            eki.update(forward(eki.ensemble))    # (J, d), NaN rows for failed runs
        mean, cov = eki.mean(), eki.covariance()

    ``finished`` is ``time >= max_time``. With ``variant="finite_time"`` and the default
    ``max_time=1`` that is the point where, for linear :math:`G`, the ensemble samples the posterior
    (see the module docstring). With ``variant="tikhonov"`` the iteration converges to the
    regularised minimiser only as :math:`t \to \infty`: pass a large ``max_time`` (or
    ``math.inf`` and stop on your own criterion, e.g. the spread of :meth:`covariance`).

    Args:
        prior_mean: :math:`m_0`, shape ``(p,)``, unconstrained coordinates.
        prior_cov: :math:`C_0`, shape ``(p, p)``, symmetric positive definite.
        data: :math:`y`, shape ``(d,)``.
        ensemble_size: :math:`J \ge 2` (a few times :math:`p` at least; posterior sampling wants
            hundreds).
        noise_cov: :math:`\Gamma`: ``None`` (identity), ``(d,)`` diagonal or ``(d, d)``.
        variant: ``"finite_time"`` or ``"tikhonov"``.
        step: ``"dmc"`` (Iglesias & Yang data-misfit controller) or a fixed positive
            :math:`\Delta t`; clipped so that the time lands exactly on ``max_time``.
        max_time: final algorithm time :math:`T > 0` (``math.inf`` allowed).
        generator: the source of all randomness (initial ensemble, perturbations, replacements of
            failed members), on the device of ``prior_mean``; it is advanced in place, and
            :meth:`load_state_dict` sets its state.

    Raises:
        ValueError: on shapes that do not match, covariances that are not symmetric positive
            definite, ``ensemble_size < 2``, an unknown ``variant`` or ``step``, or
            ``max_time <= 0``.
    """

    def __init__(
        self,
        prior_mean: Tensor,
        prior_cov: Tensor,
        data: Tensor,
        ensemble_size: int,
        *,
        noise_cov: Tensor | None = None,
        variant: str = "finite_time",
        step: str | float = "dmc",
        max_time: float = 1.0,
        generator: torch.Generator,
    ) -> None:
        m0, c0, y, self._prior_factor, self._noise = _gaussian_problem(
            prior_mean, prior_cov, data, noise_cov
        )
        device, p = m0.device, m0.shape[0]
        if isinstance(ensemble_size, bool) or not isinstance(ensemble_size, int):
            raise ValueError(f"`ensemble_size` must be an int; got {type(ensemble_size).__name__}.")
        if ensemble_size < 2:
            raise ValueError(
                f"`ensemble_size` must be >= 2 (sample covariances need two members); got "
                f"{ensemble_size}. Use tens to hundreds of members."
            )
        if variant not in _VARIANTS:
            raise ValueError(f"`variant` must be one of {_VARIANTS}; got {variant!r}.")
        if isinstance(step, str):
            if step != "dmc":
                raise ValueError(f"`step` must be 'dmc' or a positive float; got {step!r}.")
        elif isinstance(step, bool) or not isinstance(step, (int, float)):
            raise ValueError(f"`step` must be 'dmc' or a positive float; got {step!r}.")
        elif not (math.isfinite(step) and step > 0):
            raise ValueError(f"`step` must be 'dmc' or a finite positive float; got {step!r}.")
        if isinstance(max_time, bool) or not isinstance(max_time, (int, float)):
            raise ValueError(f"`max_time` must be a positive float; got {max_time!r}.")
        if math.isnan(max_time) or max_time <= 0:
            raise ValueError(
                f"`max_time` must be > 0 (1.0 for posterior sampling, large for 'tikhonov'); got "
                f"{max_time!r}."
            )
        if not isinstance(generator, torch.Generator):
            raise ValueError(
                f"`generator` must be a torch.Generator; got {type(generator).__name__}. "
                "Pass torch.Generator().manual_seed(seed)."
            )
        if generator.device.type != device.type:
            raise ValueError(
                f"`generator` is on {generator.device} but `prior_mean` on {device}; create the "
                "generator on the same device."
            )

        self._prior_mean = m0
        self._prior_cov = c0
        self._data = y
        self._y_white = self._noise.whiten(y)
        self._m0_white = self._whiten_prior(m0)
        self._J = ensemble_size
        self._variant = variant
        self._step: str | float = step if isinstance(step, str) else float(step)
        self._max_time = float(max_time)
        self._generator = generator
        self._device = device
        z = torch.randn((ensemble_size, p), generator=generator, dtype=_DTYPE, device=device)
        self._ensemble = m0 + z @ self._prior_factor.mT
        self._time = 0.0
        self._iteration = 0

    # ------------------------------------------------------------------------------------------
    # State
    # ------------------------------------------------------------------------------------------

    @property
    def ensemble(self) -> Tensor:
        """The current ensemble, shape ``(J, p)`` (a copy): the points to evaluate next."""
        return self._ensemble.clone()

    @property
    def time(self) -> float:
        r"""Algorithm time :math:`t = \sum \Delta t` so far."""
        return self._time

    @property
    def iteration(self) -> int:
        """Number of updates made."""
        return self._iteration

    @property
    def finished(self) -> bool:
        """Whether ``time`` has reached ``max_time`` (no further update is allowed)."""
        return self._time >= self._max_time

    @property
    def max_time(self) -> float:
        """The final algorithm time."""
        return self._max_time

    def mean(self) -> Tensor:
        """Ensemble mean, shape ``(p,)``."""
        return self._ensemble.mean(dim=0)

    def covariance(self) -> Tensor:
        """Ensemble sample covariance (denominator ``J - 1``), shape ``(p, p)``."""
        return torch.cov(self._ensemble.mT)

    def _whiten_prior(self, u: Tensor) -> Tensor:
        flat = u.reshape(-1, u.shape[-1])
        out = torch.linalg.solve_triangular(self._prior_factor, flat.mT, upper=False).mT
        return out.reshape(u.shape)

    # ------------------------------------------------------------------------------------------
    # Update
    # ------------------------------------------------------------------------------------------

    def _next_step(self, phi: Tensor) -> float:
        """Step size from the misfits of the successful members, clipped at ``max_time``."""
        remaining = self._max_time - self._time
        if self._step == "dmc":
            d = self._data.shape[0]
            mean = float(phi.mean())
            var = float(phi.var())  # unbiased, as Julia's var
            candidates = [
                d / (2.0 * mean) if mean > 0 else math.inf,
                math.sqrt(d / (2.0 * var)) if var > 0 else math.inf,
            ]
            dt = max(candidates)
        else:
            assert isinstance(self._step, float)
            dt = self._step
        dt = min(dt, remaining)
        if not math.isfinite(dt):
            raise RuntimeError(
                "the data-misfit controller gave an infinite step (all members fit the data with "
                "identical misfit) and max_time is infinite; stop iterating or use a float step."
            )
        return dt

    def update(self, G: Tensor) -> dict[str, float | Tensor]:
        r"""Make one EKI step from the forward-map values of the current ensemble.

        Args:
            G: :math:`G(u_j)` for each member of :attr:`ensemble`, shape ``(J, d)``, in the same
                order; a row with any NaN or inf marks a failed member.

        Returns:
            Diagnostics: ``"time"`` (after the step), ``"dt"``, ``"iteration"`` (after the step),
            ``"misfit"`` (mean :math:`\Phi` of the successful members, before the step),
            ``"n_failed"`` and ``"misfit_per_member"`` (tensor ``(J,)``, non-finite for failed
            members).

        Raises:
            ValueError: if ``G`` has the wrong shape.
            EnsembleFailure: if fewer than two members succeeded (the state is left unchanged).
            RuntimeError: if the run is already :attr:`finished`.
        """
        if self.finished:
            raise RuntimeError(
                f"EKI has reached max_time={self._max_time} (time {self._time}); read the result, "
                "or build an EKI with a larger max_time to continue."
            )
        J, p = self._ensemble.shape
        d = self._data.shape[0]
        g = _check_g(G, J, d, self._device, "ensemble member")
        ok = torch.isfinite(g).all(dim=1)
        n_ok = int(ok.sum())
        n_failed = J - n_ok
        if n_ok < 2:
            raise EnsembleFailure(
                f"{n_failed} of {J} ensemble members returned non-finite forward-map values, and "
                "EKI needs at least 2 successful ones; narrow (or shift) the prior so that members "
                "stay inside the model's valid range, or check the model at these parameters."
            )
        g_white = self._noise.whiten(g)
        phi = 0.5 * (self._y_white - g_white).square().sum(dim=1)
        dt = self._next_step(phi[ok])

        tikhonov = self._variant == "tikhonov"
        dim = d + p if tikhonov else d
        # Perturbations for all J members (failed ones too): the random stream does not depend
        # on which members failed.
        xi = torch.randn((J, dim), generator=self._generator, dtype=_DTYPE, device=self._device)
        xi = xi * math.sqrt(1.0 / dt)

        u_ok = self._ensemble[ok]
        z_ok = g_white[ok]
        target = self._y_white
        if tikhonov:
            z_ok = torch.cat([z_ok, self._whiten_prior(u_ok)], dim=1)
            target = torch.cat([self._y_white, self._m0_white])
        scale = 1.0 / math.sqrt(n_ok - 1)
        dU = (u_ok - u_ok.mean(dim=0)) * scale
        dZ = (z_ok - z_ok.mean(dim=0)) * scale
        rhs = target + xi[ok] - z_ok
        new = self._ensemble.clone()
        updated = u_ok + _kalman_gain_apply(dU, dZ, 1.0 / dt, rhs)
        new[ok] = updated
        if n_failed:
            centre = updated.mean(dim=0)
            spread = (updated - centre) * scale  # spread^T spread = sample covariance
            w = torch.randn(
                (n_failed, n_ok), generator=self._generator, dtype=_DTYPE, device=self._device
            )
            new[~ok] = centre + w @ spread

        self._ensemble = new
        if dt >= self._max_time - self._time:
            self._time = self._max_time  # land exactly on max_time
        else:
            self._time = self._time + dt
        self._iteration += 1
        return {
            "time": self._time,
            "dt": dt,
            "iteration": self._iteration,
            "misfit": float(phi[ok].mean()),
            "n_failed": n_failed,
            "misfit_per_member": phi,
        }

    # ------------------------------------------------------------------------------------------
    # Checkpointing
    # ------------------------------------------------------------------------------------------

    _STATE_KEYS = (
        "kind",
        "variant",
        "step",
        "ensemble_size",
        "prior_mean",
        "prior_cov",
        "data",
        "noise_cov",
        "ensemble",
        "time",
        "iteration",
        "max_time",
        "generator_state",
    )

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically (tensors, ints, floats and strings only).

        Returns:
            a dict that ``torch.save`` writes and ``torch.load(weights_only=True)`` reads back,
            including the generator state (``generator_state``, a uint8 tensor).
        """
        return {
            "kind": "EKI",
            "variant": self._variant,
            "step": self._step,
            "ensemble_size": self._J,
            "prior_mean": self._prior_mean.clone(),
            "prior_cov": self._prior_cov.clone(),
            "data": self._data.clone(),
            "noise_cov": self._noise.cov.clone(),
            "ensemble": self._ensemble.clone(),
            "time": self._time,
            "iteration": self._iteration,
            "max_time": self._max_time,
            "generator_state": self._generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the ensemble, time, iteration and generator state saved by :meth:`state_dict`.

        This EKI must have been built with the same prior, data, noise covariance, ensemble size,
        variant and step; ``max_time`` is this object's own, so a run can be extended by building
        with a larger one.

        Args:
            state: the dict from :meth:`state_dict` (possibly through ``torch.save``/``load``).

        Raises:
            ValueError: if a key is missing or the configuration differs.
        """
        _check_state_keys(state, self._STATE_KEYS, "EKI")
        for key, mine in (
            ("variant", self._variant),
            ("step", self._step),
            ("ensemble_size", self._J),
        ):
            if state[key] != mine:
                raise ValueError(
                    f"state dict's `{key}` is {state[key]!r} but this EKI's is {mine!r}; build the "
                    "EKI with the same settings before loading."
                )
        _check_same("prior_mean", state["prior_mean"], self._prior_mean, "EKI")
        _check_same("prior_cov", state["prior_cov"], self._prior_cov, "EKI")
        _check_same("data", state["data"], self._data, "EKI")
        _check_same("noise_cov", state["noise_cov"], self._noise.cov, "EKI")
        ensemble = _as_float64("ensemble", state["ensemble"], self._device)
        if ensemble.shape != self._ensemble.shape:
            raise ValueError(
                f"state dict's ensemble has shape {tuple(ensemble.shape)}, expected "
                f"{tuple(self._ensemble.shape)}; pass the dict from a matching EKI."
            )
        self._generator.set_state(state["generator_state"].cpu())
        self._ensemble = ensemble
        self._time = float(state["time"])
        self._iteration = int(state["iteration"])


# --------------------------------------------------------------------------------------------------
# Unscented Kalman inversion
# --------------------------------------------------------------------------------------------------


class UKI:
    r"""Unscented Kalman inversion with the prior imposed through the augmented system.

    The caller evaluates the forward map on :meth:`sigma_points` and passes the rows to
    :meth:`update`::

        uki = UKI(m0, C0, y)
        for _ in range(50):
            uki.update(forward(uki.sigma_points()))   # (2p+1, d)
            if uki.converged(1e-6):
                break
        mean, cov = uki.mean(), uki.covariance()

    Implemented (see the module docstring for the equations): modified unscented transform with
    :math:`2p+1` points (:math:`a = \min(\sqrt{4/p}, 1)`, :math:`c = a\sqrt p`,
    :math:`W = 1/(2a^2 p)`, output mean at the centre point); prediction
    :math:`\hat m = m_0 + \alpha(m_n - m_0)`, :math:`\hat C = \alpha^2 C_n + (2-\alpha^2)\Lambda`;
    augmented observation :math:`[G(u); u]` with :math:`\tilde y = [y; m_0]` and
    :math:`\Sigma_\nu = \mathrm{blockdiag}(2\Gamma, 2C_0)`. With the defaults (``alpha_reg=1``,
    ``update_freq=1``, so :math:`\Sigma_\omega = C_n`) and linear :math:`G` it converges to the
    Gaussian posterior mean and covariance.

    Args:
        prior_mean: :math:`m_0` (also the start :math:`m_0` and the reference :math:`r`), ``(p,)``.
        prior_cov: :math:`C_0` (also the start covariance), ``(p, p)``, symmetric positive
            definite.
        data: :math:`y`, ``(d,)``.
        noise_cov: :math:`\Gamma`: ``None`` (identity), ``(d,)`` diagonal or ``(d, d)``.
        alpha_reg: :math:`\alpha \in (0, 1]`; values below 1 shrink further towards :math:`m_0`
            (on top of the prior), and the limit is then not the posterior.
        update_freq: refresh :math:`\Lambda = C_n` every ``update_freq`` iterations; 0 keeps
            :math:`\Lambda = C_0` (then the limit is not the posterior covariance).

    Raises:
        ValueError: on shapes that do not match, covariances that are not symmetric positive
            definite, ``alpha_reg`` outside (0, 1] or a negative ``update_freq``.
    """

    def __init__(
        self,
        prior_mean: Tensor,
        prior_cov: Tensor,
        data: Tensor,
        *,
        noise_cov: Tensor | None = None,
        alpha_reg: float = 1.0,
        update_freq: int = 1,
    ) -> None:
        m0, c0, y, self._prior_factor, self._noise = _gaussian_problem(
            prior_mean, prior_cov, data, noise_cov
        )
        device, p = m0.device, m0.shape[0]
        if isinstance(alpha_reg, bool) or not isinstance(alpha_reg, (int, float)):
            raise ValueError(f"`alpha_reg` must be a float in (0, 1]; got {alpha_reg!r}.")
        if not 0.0 < alpha_reg <= 1.0:
            raise ValueError(
                f"`alpha_reg` must be in (0, 1] (1 for the posterior); got {alpha_reg!r}."
            )
        if isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq < 0:
            raise ValueError(
                f"`update_freq` must be an int >= 0 (1 for the posterior); got {update_freq!r}."
            )
        self._prior_mean = m0
        self._prior_cov = c0
        self._data = y
        self._alpha = float(alpha_reg)
        self._update_freq = update_freq
        self._device = device
        self._y_aug_white = torch.cat([self._noise.whiten(y), self._whiten_prior(m0)])
        a = min(math.sqrt(4.0 / p), 1.0)
        self._c = a * math.sqrt(p)
        self._w = 1.0 / (2.0 * a * a * p)
        self._mean = m0.clone()
        self._cov = c0.clone()
        self._sigma_omega = (2.0 - self._alpha**2) * c0
        self._previous: tuple[Tensor, Tensor] | None = None
        self._iteration = 0
        self._cache: tuple[int, Tensor, Tensor, Tensor] | None = None

    @property
    def iteration(self) -> int:
        """Number of updates made."""
        return self._iteration

    def mean(self) -> Tensor:
        """Current mean :math:`m_n`, shape ``(p,)``."""
        return self._mean.clone()

    def covariance(self) -> Tensor:
        """Current covariance :math:`C_n`, shape ``(p, p)``."""
        return self._cov.clone()

    def _whiten_prior(self, u: Tensor) -> Tensor:
        flat = u.reshape(-1, u.shape[-1])
        out = torch.linalg.solve_triangular(self._prior_factor, flat.mT, upper=False).mT
        return out.reshape(u.shape)

    def _predict(self) -> tuple[Tensor, Tensor, Tensor]:
        """Predicted mean, the evolution covariance for this update, and the sigma points.

        A pure function of the state, cached per iteration (:meth:`sigma_points` and
        :meth:`update` share it).
        """
        if self._cache is not None and self._cache[0] == self._iteration:
            return self._cache[1], self._cache[2], self._cache[3]
        sigma_omega = self._sigma_omega
        k = self._iteration + 1
        if self._update_freq > 0 and k % self._update_freq == 0:
            sigma_omega = (2.0 - self._alpha**2) * self._cov
        mean = self._prior_mean + self._alpha * (self._mean - self._prior_mean)
        cov = self._alpha**2 * self._cov + sigma_omega
        root = _square_root(0.5 * (cov + cov.mT)) * self._c  # columns: the sigma directions
        points = torch.cat([mean[None, :], mean + root.mT, mean - root.mT])
        self._cache = (self._iteration, mean, sigma_omega, points)
        return mean, sigma_omega, points

    def sigma_points(self) -> Tensor:
        """The :math:`2p+1` points at which to evaluate the forward map next.

        Returns:
            tensor ``(2p+1, p)``: row 0 is the predicted mean, rows ``1..p`` and ``p+1..2p`` are
            the plus and minus points along the columns of the predicted covariance's square root.
        """
        return self._predict()[2].clone()

    def update(self, G: Tensor) -> dict[str, float | Tensor]:
        r"""Make one UKI iteration (prediction and analysis) from the values at the sigma points.

        Args:
            G: :math:`G` at each row of :meth:`sigma_points`, shape ``(2p+1, d)``, same order.

        Returns:
            Diagnostics: ``"iteration"`` (after the update) and ``"misfit"``, the data misfit
            :math:`\Phi` at the centre sigma point (the predicted mean).

        Raises:
            ValueError: if ``G`` has the wrong shape.
            EnsembleFailure: if any row is non-finite (UKI cannot drop sigma points); the state is
                left unchanged.
        """
        p = self._mean.shape[0]
        d = self._data.shape[0]
        g = _check_g(G, 2 * p + 1, d, self._device, "sigma point")
        bad = (~torch.isfinite(g).all(dim=1)).nonzero().flatten().tolist()
        if bad:
            raise EnsembleFailure(
                f"UKI sigma points {bad} (of {2 * p + 1}; 0 is the mean) returned non-finite "
                "forward-map values, and UKI cannot drop sigma points; narrow the prior (smaller "
                "prior_cov) so that the points stay in the model's valid range, or make the model "
                "finite there."
            )
        mean_hat, sigma_omega, points = self._predict()
        z = torch.cat([self._noise.whiten(g), self._whiten_prior(points)], dim=1)
        root_w = math.sqrt(self._w)
        dU = (points[1:] - points[0]) * root_w
        dZ = (z[1:] - z[0]) * root_w
        cov_hat = dU.mT @ dU
        # Whitened Σ_ν = 2 I. Row 0: K (ỹ - ẑ); rows 1..p: (K C^{zu})^T.
        rhs = torch.cat([(self._y_aug_white - z[0])[None, :], dU.mT @ dZ])
        gain = _kalman_gain_apply(dU, dZ, 2.0, rhs)
        increment = gain[0]
        cov = cov_hat - gain[1:].mT
        self._previous = (self._mean, self._cov)
        self._mean = mean_hat + increment
        self._cov = 0.5 * (cov + cov.mT)
        self._sigma_omega = sigma_omega
        self._iteration += 1
        misfit = 0.5 * float((self._y_aug_white[:d] - z[0, :d]).square().sum())
        return {"iteration": self._iteration, "misfit": misfit}

    def converged(self, rtol: float = 1e-6) -> bool:
        r"""Whether the last update changed the mean and covariance by less than ``rtol``.

        The mean change is measured in current standard deviations,
        :math:`\max_i |\Delta m_i| / \sqrt{C_{ii}}`, and the covariance change relative to the
        standard deviations, :math:`\max_{ij} |\Delta C_{ij}| / \sqrt{C_{ii} C_{jj}}`.

        Args:
            rtol: tolerance for both.

        Returns:
            ``False`` before the first update.
        """
        if self._previous is None:
            return False
        old_mean, old_cov = self._previous
        std = self._cov.diagonal().clamp_min(1e-300).sqrt()
        mean_change = float(((self._mean - old_mean).abs() / std).max())
        cov_change = float(((self._cov - old_cov).abs() / (std[:, None] * std[None, :])).max())
        return mean_change <= rtol and cov_change <= rtol

    _STATE_KEYS = (
        "kind",
        "alpha_reg",
        "update_freq",
        "prior_mean",
        "prior_cov",
        "data",
        "noise_cov",
        "mean",
        "cov",
        "sigma_omega",
        "iteration",
        "previous_mean",
        "previous_cov",
    )

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically (tensors, ints, floats and strings only).

        Returns:
            a dict that ``torch.save`` writes and ``torch.load(weights_only=True)`` reads back.
            Before the first update the ``previous_*`` entries are empty tensors.
        """
        empty = torch.empty(0, dtype=_DTYPE, device=self._device)
        previous = self._previous if self._previous is not None else (empty, empty)
        return {
            "kind": "UKI",
            "alpha_reg": self._alpha,
            "update_freq": self._update_freq,
            "prior_mean": self._prior_mean.clone(),
            "prior_cov": self._prior_cov.clone(),
            "data": self._data.clone(),
            "noise_cov": self._noise.cov.clone(),
            "mean": self._mean.clone(),
            "cov": self._cov.clone(),
            "sigma_omega": self._sigma_omega.clone(),
            "iteration": self._iteration,
            "previous_mean": previous[0].clone(),
            "previous_cov": previous[1].clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the mean, covariance and iteration saved by :meth:`state_dict`.

        This UKI must have been built with the same prior, data, noise covariance, ``alpha_reg``
        and ``update_freq``.

        Args:
            state: the dict from :meth:`state_dict` (possibly through ``torch.save``/``load``).

        Raises:
            ValueError: if a key is missing or the configuration differs.
        """
        _check_state_keys(state, self._STATE_KEYS, "UKI")
        for key, mine in (("alpha_reg", self._alpha), ("update_freq", self._update_freq)):
            if state[key] != mine:
                raise ValueError(
                    f"state dict's `{key}` is {state[key]!r} but this UKI's is {mine!r}; build the "
                    "UKI with the same settings before loading."
                )
        _check_same("prior_mean", state["prior_mean"], self._prior_mean, "UKI")
        _check_same("prior_cov", state["prior_cov"], self._prior_cov, "UKI")
        _check_same("data", state["data"], self._data, "UKI")
        _check_same("noise_cov", state["noise_cov"], self._noise.cov, "UKI")
        p = self._mean.shape[0]
        mean = _as_float64("mean", state["mean"], self._device)
        cov = _as_float64("cov", state["cov"], self._device)
        sigma_omega = _as_float64("sigma_omega", state["sigma_omega"], self._device)
        if mean.shape != (p,) or cov.shape != (p, p) or sigma_omega.shape != (p, p):
            raise ValueError(
                "state dict's mean/cov/sigma_omega do not match this UKI's dimension "
                f"{p}; pass the dict from a matching UKI."
            )
        previous_mean = _as_float64("previous_mean", state["previous_mean"], self._device)
        previous_cov = _as_float64("previous_cov", state["previous_cov"], self._device)
        self._mean = mean
        self._cov = cov
        self._sigma_omega = sigma_omega
        self._iteration = int(state["iteration"])
        self._cache = None
        self._previous = (previous_mean, previous_cov) if previous_mean.numel() == p else None
