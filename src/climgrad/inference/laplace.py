"""Gauss-Newton/Laplace posterior: a Gaussian around the MAP point from the forward map's Jacobian.

For a forward map :math:`G: \\mathbb{R}^p \\to \\mathbb{R}^d` (unconstrained parameters to
predicted observations), data :math:`y = G(u) + \\varepsilon` with
:math:`\\varepsilon \\sim N(0, \\Gamma)` and a Gaussian prior :math:`u \\sim N(m_0, C_0)`, the
negative log posterior is

.. math::

    \\Phi(u) = \\tfrac12 \\lVert \\Gamma^{-1/2} (y - G(u)) \\rVert^2
             + \\tfrac12 (u - m_0)^T C_0^{-1} (u - m_0) + \\text{const}.

The Laplace approximation (MacKay 1992, Neural Comput. 4, 415 and 448; Bishop 2006, *Pattern
Recognition and Machine Learning*, section 4.4) replaces the posterior by
:math:`N(u^\\ast, H^{-1})`, with :math:`u^\\ast` the MAP point and
:math:`H = \\nabla^2 \\Phi(u^\\ast)`.
The Gauss-Newton approximation of the Hessian (Nocedal & Wright 2006, *Numerical Optimization*,
2nd ed., section 10.3) drops the term with second derivatives of :math:`G`,

.. math::

    H \\approx H_{GN} = J^T \\Gamma^{-1} J + C_0^{-1},
    \\qquad J = \\partial G / \\partial u \\, (u^\\ast),

so the posterior covariance is :math:`C = (J^T \\Gamma^{-1} J + C_0^{-1})^{-1}`
(:func:`gauss_newton_covariance`). The dropped term is
:math:`-\\sum_i [\\Gamma^{-1}(y - G(u^\\ast))]_i \\nabla^2 G_i(u^\\ast)`: it vanishes when
:math:`G` is linear (then the posterior is exactly Gaussian and :math:`C` exact) and is small
when the residuals at the MAP point are small compared to the noise or the curvature of :math:`G`
is weak (small-residual problems). For a strongly nonlinear map with large residuals, or a
posterior far from Gaussian (several modes, hard parameter bounds that matter), sample it instead
(:func:`climgrad.inference.sampling.nuts`).

Computation. With :math:`\\Gamma = L_\\Gamma L_\\Gamma^T` and :math:`C_0 = L_0 L_0^T` (Cholesky
factors), :math:`B = L_\\Gamma^{-1} J L_0` and :math:`M = I + B^T B = R R^T`,

.. math::

    C = L_0 M^{-1} L_0^T = K^T K, \\qquad K = R^{-1} L_0^T,

which needs no inverse of :math:`C_0` or :math:`\\Gamma` (only triangular solves), is symmetric by
construction and positive definite to rounding, and stays accurate when the prior is much wider
than the posterior (the eigenvalues of :math:`M` are at least one).

Jacobians. :func:`jacobian_reverse` takes one backward pass per output (reverse mode, best when
:math:`d \\lesssim p`), :func:`jacobian_forward` one forward-mode pass per parameter (best when
:math:`p < d`; every custom Function on the path must define ``jvp``), and :func:`jacobian_fd`
central differences from one batched evaluation of :math:`2p` points (for compiled models without
gradients that run an ensemble as a batch).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd import forward_ad

__all__ = [
    "gauss_newton_covariance",
    "jacobian_fd",
    "jacobian_forward",
    "jacobian_reverse",
    "laplace_samples",
]


def _check_vector(name: str, u: Tensor) -> None:
    if not isinstance(u, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor; got {type(u).__name__}.")
    if u.ndim != 1:
        raise ValueError(
            f"`{name}` must be a flat (p,) vector of unconstrained parameters; got shape "
            f"{tuple(u.shape)}. Flatten it with .reshape(-1)."
        )
    if not u.is_floating_point():
        raise TypeError(f"`{name}` must be a floating tensor (float64); got {u.dtype}.")


def _cholesky(name: str, matrix: Tensor, size: int) -> Tensor:
    """Cholesky factor of a (size, size) matrix, or of ``diag(matrix)`` for a (size,) vector."""
    if matrix.ndim == 1:
        if matrix.shape[0] != size:
            raise ValueError(
                f"`{name}` as a vector of variances must have {size} entries; "
                f"got {matrix.shape[0]}."
            )
        if not bool(torch.isfinite(matrix).all()) or not bool((matrix > 0).all()):
            raise ValueError(
                f"`{name}` must hold positive finite variances; got a minimum of "
                f"{float(matrix.min()):.3g}. Check the units and the prior/noise scales."
            )
        return torch.diag(matrix.sqrt())
    if matrix.shape != (size, size):
        raise ValueError(
            f"`{name}` must be a ({size}, {size}) covariance matrix or a ({size},) vector of "
            f"variances; got shape {tuple(matrix.shape)}."
        )
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError(f"`{name}` has non-finite entries; pass a finite covariance matrix.")
    factor, info = torch.linalg.cholesky_ex((matrix + matrix.mT) / 2)
    if int(info) != 0:
        raise ValueError(
            f"`{name}` is not positive definite (Cholesky failed at column {int(info)}); pass a "
            "symmetric positive definite covariance, e.g. add a small multiple of the identity."
        )
    return factor


def gauss_newton_covariance(
    jacobian: Tensor, prior_cov: Tensor, noise_cov: Tensor | None = None
) -> Tensor:
    """Posterior covariance :math:`(J^T \\Gamma^{-1} J + C_0^{-1})^{-1}` (Gauss-Newton/Laplace).

    Args:
        jacobian: (d, p) Jacobian of the forward map at the MAP point, in the same (whitened or
            not) units as the data.
        prior_cov: (p, p) prior covariance :math:`C_0` of the unconstrained parameters, or a (p,)
            vector of prior variances (a diagonal covariance).
        noise_cov: (d, d) noise covariance :math:`\\Gamma`, a (d,) vector of noise variances, or
            ``None`` for whitened data (:math:`\\Gamma = I`).

    Returns:
        (p, p) symmetric positive definite covariance, in the dtype and on the device of
        ``jacobian``. Computed with Cholesky factors and triangular solves (module docstring);
        neither covariance is inverted.

    Raises:
        ValueError: on shape mismatches, non-finite entries, or a covariance that is not
            positive definite.
    """
    if not isinstance(jacobian, Tensor) or jacobian.ndim != 2:
        shape = tuple(jacobian.shape) if isinstance(jacobian, Tensor) else type(jacobian).__name__
        raise ValueError(f"`jacobian` must be a (d, p) tensor; got {shape}.")
    if not jacobian.is_floating_point():
        raise TypeError(f"`jacobian` must be a floating tensor (float64); got {jacobian.dtype}.")
    if not bool(torch.isfinite(jacobian).all()):
        raise ValueError(
            "`jacobian` has non-finite entries; evaluate it at a point where the model runs "
            "(for finite differences, a smaller step)."
        )
    d, p = jacobian.shape
    dtype, device = jacobian.dtype, jacobian.device
    prior_factor = _cholesky("prior_cov", prior_cov.to(dtype=dtype, device=device), p)
    whitened = jacobian
    if noise_cov is not None:
        noise = noise_cov.to(dtype=dtype, device=device)
        if noise.ndim == 1:
            _cholesky("noise_cov", noise, d)  # validates
            whitened = jacobian / noise.sqrt()[:, None]
        else:
            noise_factor = _cholesky("noise_cov", noise, d)
            whitened = torch.linalg.solve_triangular(noise_factor, jacobian, upper=False)
    b = whitened @ prior_factor
    m = torch.eye(p, dtype=dtype, device=device) + b.mT @ b
    r, info = torch.linalg.cholesky_ex((m + m.mT) / 2)
    if int(info) != 0:  # I + BᵀB is SPD in exact arithmetic: only overflow gets here
        raise ValueError(
            "I + BᵀB is not positive definite (overflow in the Jacobian?); rescale the "
            "parameters or the data so that the Jacobian entries are moderate."
        )
    k = torch.linalg.solve_triangular(r, prior_factor.mT, upper=False)
    cov = k.mT @ k
    return (cov + cov.mT) / 2


def _flat_output(name: str, value: Tensor) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"`{name}` must return a tensor; got {type(value).__name__}.")
    return value.reshape(-1)


def jacobian_reverse(f: Callable[[Tensor], Tensor], u: Tensor) -> Tensor:
    """Jacobian :math:`\\partial f / \\partial u` by reverse-mode autograd, one backward per output.

    ``f`` is evaluated once; then ``torch.autograd.grad`` runs once per output entry with
    ``retain_graph=True`` (the loop of ``torch.autograd.functional.jacobian(vectorize=False)``).
    No ``vmap`` is involved, so ``f`` may contain custom ``torch.autograd.Function``\\ s without
    vmap support (Thomas sweeps, implicit equilibria, external solvers): each only needs a
    ``backward``. The cost is ``d`` backward passes; for ``d`` much larger than ``p`` prefer
    :func:`jacobian_forward`.

    Args:
        f: maps a (p,) tensor to outputs of any shape (flattened to (d,)).
        u: (p,) point.

    Returns:
        (d, p) Jacobian in the dtype of ``u``; outputs that do not depend on ``u`` give zero rows.

    Raises:
        ValueError: if ``f(u)`` or the Jacobian has non-finite entries.
    """
    _check_vector("u", u)
    point = u.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = _flat_output("f", f(point))
        if not bool(torch.isfinite(out).all()):
            raise ValueError(
                "f(u) has non-finite entries; evaluate the Jacobian at a point where the "
                "model runs."
            )
        rows = []
        if out.requires_grad:
            for i in range(out.shape[0]):
                (grad,) = torch.autograd.grad(out[i], point, retain_graph=True, allow_unused=True)
                rows.append(torch.zeros_like(point) if grad is None else grad)
    jac = torch.stack(rows) if rows else point.new_zeros(out.shape[0], point.shape[0])
    if not bool(torch.isfinite(jac).all()):
        raise ValueError(
            "the Jacobian has non-finite entries although f(u) is finite; check the backward "
            "of the model at this point (or use jacobian_fd)."
        )
    return jac.detach()


def jacobian_forward(f: Callable[[Tensor], Tensor], u: Tensor) -> Tensor:
    """Jacobian :math:`\\partial f / \\partial u` by forward-mode AD, one pass per parameter.

    Uses ``torch.autograd.forward_ad`` dual numbers with the tangent :math:`e_j` for each
    parameter :math:`j` (no ``vmap``): ``p`` evaluations of ``f``, cheaper than
    :func:`jacobian_reverse` when the outputs outnumber the parameters. Every custom
    ``torch.autograd.Function`` on the path must implement ``jvp``; otherwise PyTorch raises and
    :func:`jacobian_reverse` is the path to take.

    Args:
        f: maps a (p,) tensor to outputs of any shape (flattened to (d,)).
        u: (p,) point.

    Returns:
        (d, p) Jacobian in the dtype of ``u``; outputs that do not depend on ``u`` give zeros.

    Raises:
        ValueError: if ``f(u)`` or the Jacobian has non-finite entries.
    """
    _check_vector("u", u)
    point = u.detach()
    columns = []
    eye = torch.eye(point.shape[0], dtype=point.dtype, device=point.device)
    for j in range(point.shape[0]):
        with forward_ad.dual_level():
            out = _flat_output("f", f(forward_ad.make_dual(point, eye[j])))
            primal, tangent = forward_ad.unpack_dual(out)
            if not bool(torch.isfinite(primal).all()):
                raise ValueError(
                    "f(u) has non-finite entries; evaluate the Jacobian at a point where the "
                    "model runs."
                )
            columns.append(torch.zeros_like(primal) if tangent is None else tangent.detach())
    if not columns:
        return point.new_zeros(_flat_output("f", f(point)).shape[0], 0)
    jac = torch.stack(columns, dim=1)
    if not bool(torch.isfinite(jac).all()):
        raise ValueError(
            "the Jacobian has non-finite entries although f(u) is finite; check the model's "
            "derivatives at this point (or use jacobian_fd)."
        )
    return jac


def jacobian_fd(
    evaluate_batch: Callable[[Tensor], Tensor], u: Tensor, step: float | Tensor = 1e-5
) -> Tensor:
    """Jacobian by central differences from one batched evaluation of :math:`2p` points.

    .. math::

        J_{:,j} \\approx \\frac{G(u + h_j e_j) - G(u - h_j e_j)}{(u_j + h_j) - (u_j - h_j)},

    with the denominator taken from the points actually evaluated (so rounding of :math:`u \\pm h`
    does not bias the slope). The error is :math:`O(h^2)` from truncation plus
    :math:`O(\\epsilon |G| / h)` from rounding; the default :math:`h = 10^{-5}` suits float64 and
    parameters of order one (in unconstrained coordinates). This is the path for models without
    gradients (compiled code) whose ensemble members run as one batch.

    Args:
        evaluate_batch: maps (n, p) points to (n, d) outputs (any trailing shape is flattened).
        u: (p,) point.
        step: step :math:`h`, a positive float or a (p,) tensor of per-parameter steps.

    Returns:
        (d, p) Jacobian in the dtype of ``u``.

    Raises:
        ValueError: on a non-positive step, a wrong output shape, or non-finite outputs (the
            message names the perturbed parameters).
    """
    _check_vector("u", u)
    point = u.detach()
    p = point.shape[0]
    h = torch.as_tensor(step, dtype=point.dtype, device=point.device)
    if h.ndim > 1 or (h.ndim == 1 and h.shape[0] != p):
        raise ValueError(
            f"`step` must be a float or a ({p},) tensor of per-parameter steps; got shape "
            f"{tuple(h.shape)}."
        )
    h = h.expand(p)
    if not bool(torch.isfinite(h).all()) or not bool((h > 0).all()):
        raise ValueError(
            "`step` must be positive and finite; 1e-5 suits float64 parameters of order one."
        )
    eye = torch.eye(p, dtype=point.dtype, device=point.device)
    plus = point + eye * h
    minus = point - eye * h
    with torch.no_grad():
        out = evaluate_batch(torch.cat([plus, minus]))
    if not isinstance(out, Tensor) or out.ndim < 1 or out.shape[0] != 2 * p:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"`evaluate_batch` must return one row per point, ({2 * p}, d); got {shape}."
        )
    out = out.reshape(2 * p, -1).to(point.dtype)
    finite = torch.isfinite(out).all(dim=1)
    if not bool(finite.all()):
        bad = sorted({int(i) % p for i in torch.nonzero(~finite).reshape(-1)})
        raise ValueError(
            f"the forward map is not finite at u ± step·e_j for parameters j = {bad}; reduce the "
            "step or move u inside the region where the model runs."
        )
    width = (plus.diagonal() - minus.diagonal())[None, :]
    return (out[:p] - out[p:]).mT / width


def laplace_samples(mean: Tensor, cov: Tensor, num: int, generator: torch.Generator) -> Tensor:
    """Gaussian draws :math:`u = m + L z`, :math:`z \\sim N(0, I)`, :math:`L L^T` = ``cov``.

    Args:
        mean: (p,) mean (the MAP point).
        cov: (p, p) covariance (e.g. from :func:`gauss_newton_covariance`).
        num: number of draws (at least 1).
        generator: the source of randomness, on the device of ``mean``; the same generator
            state gives the same draws.

    Returns:
        (num, p) draws in the dtype and on the device of ``mean``.

    Raises:
        ValueError: on a bad ``num``, shapes, or a covariance that is not positive definite.
    """
    _check_vector("mean", mean)
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"`num` must be a positive integer; got {num!r}.")
    p = mean.shape[0]
    factor = _cholesky("cov", cov.to(dtype=mean.dtype, device=mean.device), p)
    z = torch.randn(num, p, generator=generator, dtype=mean.dtype, device=mean.device)
    return mean.detach() + z @ factor.mT
