"""Batched tridiagonal solves with an adjoint (transposed-solve) backward.

Implicit time steps of diffusion (vertical diffusion in a column, meridional heat diffusion in an
energy-balance model) reduce to one tridiagonal system per column,

.. math::

    a_k x_{k-1} + b_k x_k + c_k x_{k+1} = d_k, \\qquad k = 0 \\dots n-1,

with :math:`a_0` and :math:`c_{n-1}` unused. :func:`solve_tridiagonal` solves a batch of them with
the Thomas algorithm (Gaussian elimination without pivoting; Thomas 1949, see e.g. Press et al.
2007, *Numerical Recipes*, 3rd ed., section 2.4) and differentiates through the solve with the
adjoint method: for :math:`A x = d` and a loss gradient :math:`g = \\partial \\ell / \\partial x`,

.. math::

    \\lambda = A^{-T} g, \\qquad
    \\frac{\\partial \\ell}{\\partial d} = \\lambda, \\qquad
    \\frac{\\partial \\ell}{\\partial A} = -\\lambda x^T
    \\text{ restricted to the three diagonals,}

so the backward is one more tridiagonal solve (with the transposed matrix) instead of a record of
every elimination step.

Stability: elimination without pivoting is stable when the matrix is strictly diagonally dominant
(:math:`|b_k| > |a_k| + |c_k|`), or symmetric positive definite, or an M-matrix; implicit
diffusion steps, :math:`I - \\Delta t\\, \\partial_z (K \\partial_z)` with :math:`K \\ge 0`, are all
three. Other matrices may hit a zero or tiny pivot and return inf/nan or inaccurate values; nothing
is checked at run time, because a check would synchronise the device.

Internally the level dimension is moved to the front so that every elimination step works on one
contiguous vector per level (see ``factor_levels_first`` and friends; the diffusion module reuses
those helpers to factor a matrix once and solve it many times).
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from climgrad.validation import (
    check_broadcastable,
    check_floating,
    check_not_scalar,
    check_same_device,
    check_same_dtype,
    check_same_last_dimension,
    is_traced,
)

__all__ = [
    "factor_levels_first",
    "solve_factored_levels_first",
    "solve_factored_transposed_levels_first",
    "solve_transposed_and_accumulate",
    "solve_tridiagonal",
    "thomas_solve_kernel",
    "tridiagonal_matvec",
]

# --------------------------------------------------------------------------------------------------
# Native sweeps (optional). Eager PyTorch pays a fixed dispatch cost for every per-level vector
# operation, and the sweeps make several per level (docs/benchmarks.md has the measured overhead);
# a C loop over levels and columns removes that overhead. The loops live in the C extension module
# ``climgrad._tridiagonal`` (src/climgrad/_tridiagonal.c: plain C and the CPython API, no PyTorch
# headers), which the install builds (pyproject.toml ext-modules), as an optional extension: where
# no C compiler exists the install succeeds without it. The extension serves only the
# non-differentiable ``out=`` paths on contiguous CPU float32/float64 tensors; everything else, and
# every install without the extension, uses the eager torch code, which gives the same results up
# to rounding. Set the environment variable CLIMGRAD_NATIVE=0 (or call
# ``set_native_enabled(False)``) to force the eager path.
# --------------------------------------------------------------------------------------------------


def _import_native() -> Any:
    """The extension module ``climgrad._tridiagonal``, or ``None`` where the install lacks it."""
    try:
        module = importlib.import_module("climgrad._tridiagonal")
    except ModuleNotFoundError:
        return None  # built without a C compiler: the eager sweeps serve
    except ImportError as error:  # present but unloadable (e.g. a stale build): say so once
        warnings.warn(
            f"climgrad could not load its compiled tridiagonal sweeps ({error}); using the slower "
            "eager PyTorch path. Reinstall climgrad to rebuild them, or set CLIMGRAD_NATIVE=0.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return module


_native_module: Any = _import_native()
_native_state = {"enabled": os.environ.get("CLIMGRAD_NATIVE", "1") != "0"}
_NATIVE_SUFFIX = {torch.float64: "f64", torch.float32: "f32"}
#: (sweep name, dtype) -> the extension's function, e.g. ("factor", float64) -> factor_f64.
_NATIVE_FUNCTIONS: dict[tuple[str, torch.dtype], Callable[..., None]] = (
    {
        (name, dtype): getattr(_native_module, f"{name}_{suffix}")
        for name in ("factor", "solve", "solve_transposed", "accumulate")
        for dtype, suffix in _NATIVE_SUFFIX.items()
    }
    if _native_module is not None
    else {}
)


def set_native_enabled(enabled: bool) -> None:
    """Use (``True``, the default) or bypass (``False``) the compiled C sweeps on CPU."""
    _native_state["enabled"] = bool(enabled)


def native_available() -> bool:
    """Whether the compiled sweeps are installed and enabled."""
    return _native_state["enabled"] and _native_module is not None


def native_library_path() -> Path | None:
    """Path of the compiled extension module (``None`` when the install has none)."""
    return Path(_native_module.__file__) if _native_module is not None else None


def _native_call(name: str, inputs: tuple[Tensor, ...], outputs: tuple[Tensor, ...]) -> bool:
    """Run the extension's ``<name>_<dtype>`` on levels-first tensors if possible; return whether.

    All tensors must be contiguous CPU tensors of one floating dtype with the shape of the first,
    except that outputs may have one level fewer (``(n - 1, *batch)``, for accumulators).
    """
    if not _native_state["enabled"]:
        return False
    tensors = inputs + outputs
    first = tensors[0]
    function = _NATIVE_FUNCTIONS.get((name, first.dtype))
    if (
        function is None
        or first.device.type != "cpu"
        or first.ndim == 0
        or any(
            t.device.type != "cpu"
            or t.dtype != first.dtype
            or not t.is_contiguous()
            or t.shape[1:] != first.shape[1:]
            or t.shape[0] not in (first.shape[0], first.shape[0] - 1)
            for t in tensors
        )
        or any(t.shape[0] != first.shape[0] for t in inputs)
        # Tensors traced by torch.func transforms or torch.compile have no storage to hand to C.
        or is_traced(*tensors)
    ):
        return False
    levels = first.shape[0]
    batch = first.numel() // levels if levels else 0
    function(levels, batch, *[t.data_ptr() for t in tensors])
    return True


# --------------------------------------------------------------------------------------------------
# Kernels on levels-first tensors of shape (n, *batch). Pure torch, differentiable by autograd.
# --------------------------------------------------------------------------------------------------


def factor_levels_first(
    lower: Tensor, diag: Tensor, upper: Tensor, out: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """LU factors of the Thomas algorithm, levels first.

    ``A = L U`` with ``L`` lower bidiagonal (diagonal ``m_k``, sub-diagonal ``a_k``) and ``U`` unit
    upper bidiagonal (super-diagonal ``c'_k``): ``m_0 = b_0``, ``c'_k = c_k / m_k``,
    ``m_k = b_k - a_k c'_{k-1}``.

    Args:
        lower, diag, upper: Diagonals ``a``, ``b``, ``c``, shape ``(n, *batch)``, broadcast.
        out: Optional preallocated ``(upper_ratio, inverse_pivot)`` buffers, shape ``(n, *batch)``.
            Writing into them avoids fresh allocations (page faults dominate on some machines) but
            is not differentiable; without ``out`` the function is pure and autograd-friendly.

    Returns:
        ``(upper_ratio, inverse_pivot)`` = ``(c', 1/m)``, each of shape ``(n, *batch)``.
    """
    if out is not None and _native_call("factor", (lower, diag, upper), out):
        return out
    n = diag.shape[0]
    a, b, c = lower.unbind(0), diag.unbind(0), upper.unbind(0)
    if out is not None:
        upper_ratio_out, inverse_pivot_out = out
        torch.reciprocal(b[0], out=inverse_pivot_out[0])
        torch.mul(c[0], inverse_pivot_out[0], out=upper_ratio_out[0])
        for k in range(1, n):
            pivot = inverse_pivot_out[k]
            torch.addcmul(b[k], a[k], upper_ratio_out[k - 1], value=-1.0, out=pivot)
            pivot.reciprocal_()
            torch.mul(c[k], pivot, out=upper_ratio_out[k])
        return upper_ratio_out, inverse_pivot_out
    inverse_pivot = [torch.reciprocal(b[0])]
    upper_ratio = [c[0] * inverse_pivot[0]]
    for k in range(1, n):
        pivot = torch.addcmul(b[k], a[k], upper_ratio[k - 1], value=-1.0)
        inverse_pivot.append(torch.reciprocal(pivot))
        upper_ratio.append(c[k] * inverse_pivot[k])
    return torch.stack(upper_ratio), torch.stack(inverse_pivot)


def solve_factored_levels_first(
    lower: Tensor,
    upper_ratio: Tensor,
    inverse_pivot: Tensor,
    rhs: Tensor,
    out: Tensor | None = None,
) -> Tensor:
    """Solve ``A x = rhs`` from the factors of :func:`factor_levels_first` (levels first).

    Forward sweep ``y_k = (d_k - a_k y_{k-1}) / m_k``; back substitution
    ``x_k = y_k - c'_k x_{k+1}``. With ``out`` (which may be ``rhs`` itself, for an in-place solve)
    the result is written there, without allocations and without autograd support.
    """
    if out is not None and _native_call("solve", (lower, upper_ratio, inverse_pivot, rhs), (out,)):
        return out
    n = rhs.shape[0]
    a, c_ratio, inv_m = lower.unbind(0), upper_ratio.unbind(0), inverse_pivot.unbind(0)
    d = rhs.unbind(0)
    if out is not None:
        x_out = out.unbind(0)
        torch.mul(d[0], inv_m[0], out=x_out[0])
        for k in range(1, n):
            torch.addcmul(d[k], a[k], x_out[k - 1], value=-1.0, out=x_out[k])
            x_out[k].mul_(inv_m[k])
        for k in range(n - 2, -1, -1):
            x_out[k].addcmul_(c_ratio[k], x_out[k + 1], value=-1.0)
        return out
    y = [d[0] * inv_m[0]]
    for k in range(1, n):
        y.append(torch.addcmul(d[k], a[k], y[k - 1], value=-1.0) * inv_m[k])
    x = [y[n - 1]]
    for k in range(n - 2, -1, -1):
        x.append(torch.addcmul(y[k], c_ratio[k], x[-1], value=-1.0))
    x.reverse()
    return torch.stack(x)


def solve_factored_transposed_levels_first(
    lower: Tensor,
    upper_ratio: Tensor,
    inverse_pivot: Tensor,
    rhs: Tensor,
    out: Tensor | None = None,
) -> Tensor:
    """Solve ``A^T z = rhs`` reusing the factors of ``A`` (levels first).

    ``A^T = U^T L^T``: forward sweep with the unit lower ``U^T`` (``w_k = g_k - c'_{k-1} w_{k-1}``),
    then back substitution with the upper ``L^T`` (``z_k = (w_k - a_{k+1} z_{k+1}) / m_k``).
    ``out`` as in :func:`solve_factored_levels_first` (``out=rhs`` solves in place).
    """
    if out is not None and _native_call(
        "solve_transposed", (lower, upper_ratio, inverse_pivot, rhs), (out,)
    ):
        return out
    n = rhs.shape[0]
    a, c_ratio, inv_m = lower.unbind(0), upper_ratio.unbind(0), inverse_pivot.unbind(0)
    g = rhs.unbind(0)
    if out is not None:
        z_out = out.unbind(0)
        if out is not rhs:
            z_out[0].copy_(g[0])
        for k in range(1, n):
            torch.addcmul(g[k], c_ratio[k - 1], z_out[k - 1], value=-1.0, out=z_out[k])
        z_out[n - 1].mul_(inv_m[n - 1])
        for k in range(n - 2, -1, -1):
            z_out[k].addcmul_(a[k + 1], z_out[k + 1], value=-1.0).mul_(inv_m[k])
        return out
    w = [g[0]]
    for k in range(1, n):
        w.append(torch.addcmul(g[k], c_ratio[k - 1], w[k - 1], value=-1.0))
    z = [w[n - 1] * inv_m[n - 1]]
    for k in range(n - 2, -1, -1):
        z.append(torch.addcmul(w[k], a[k + 1], z[-1], value=-1.0) * inv_m[k])
    z.reverse()
    return torch.stack(z)


def _accumulate_conductance_gradient(
    adjoint: Tensor, solution: Tensor, inverse_width: Tensor, accumulated: Tensor
) -> Tensor:
    """``accumulated += (x_{k+1} - x_k)(w_{k+1} lam_{k+1} - w_k lam_k)`` in place (levels first).

    For a flux-form diffusion matrix ``A = I + W G`` (``W = diag(inverse_width)``, ``G`` the
    interface-conductance Laplacian) this is minus the gradient of a loss with respect to each
    interface conductance, given the adjoint ``lam = A^{-T} dl/dx`` and the solution ``x``.
    Shapes: ``(n, *batch)`` for the first three, ``(n - 1, *batch)`` for ``accumulated``.
    """
    if _native_call("accumulate", (adjoint, solution, inverse_width), (accumulated,)):
        return accumulated
    scaled = adjoint * inverse_width
    return accumulated.addcmul_(scaled[1:] - scaled[:-1], solution[1:] - solution[:-1])


def solve_transposed_and_accumulate(
    lower: Tensor,
    upper_ratio: Tensor,
    inverse_pivot: Tensor,
    rhs: Tensor,
    solution: Tensor,
    inverse_width: Tensor,
    out: Tensor,
    accumulated: Tensor,
) -> Tensor:
    """``out = A^{-T} rhs``, then :func:`_accumulate_conductance_gradient` with it.

    Two passes, not one fused into the back substitution: rows of the levels-first arrays lie a
    power of two apart, and the seven a fused pass would stream thrash the L1 cache sets (see
    ``docs/benchmarks.md`` for the measured cost).
    ``out`` may be ``rhs``. Not differentiable.
    """
    solve_factored_transposed_levels_first(lower, upper_ratio, inverse_pivot, rhs, out=out)
    _accumulate_conductance_gradient(out, solution, inverse_width, accumulated)
    return out


def _coefficient_gradients_levels_first(
    adjoint: Tensor, solution: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``-adjoint solution^T`` restricted to the three diagonals (levels first).

    Returns ``(grad_lower, grad_diag, grad_upper)`` of shape ``(n, *batch)``, with zeros in the
    unused entries ``grad_lower[0]`` and ``grad_upper[n-1]``.
    """
    grad_diag = -adjoint * solution
    grad_lower = torch.zeros_like(grad_diag)
    grad_upper = torch.zeros_like(grad_diag)
    if adjoint.shape[0] > 1:
        grad_lower[1:] = -adjoint[1:] * solution[:-1]
        grad_upper[:-1] = -adjoint[:-1] * solution[1:]
    return grad_lower, grad_diag, grad_upper


def _broadcast_levels_first(*tensors: Tensor) -> list[Tensor]:
    """Broadcast ``(..., n)`` tensors to a common shape and move the level axis to the front."""
    batch_shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    n = tensors[0].shape[-1]
    return [t.expand(*batch_shape, n).movedim(-1, 0).contiguous() for t in tensors]


def thomas_solve_kernel(lower: Tensor, diag: Tensor, upper: Tensor, rhs: Tensor) -> Tensor:
    """Reference kernel of :func:`solve_tridiagonal`: plain torch, differentiable by autograd.

    Same arguments and result as :func:`solve_tridiagonal` (no validation). Autograd records every
    elimination step, so its memory grows with ``n`` times the batch; use it to check the adjoint.
    """
    a, b, c, d = _broadcast_levels_first(lower, diag, upper, rhs)
    upper_ratio, inverse_pivot = factor_levels_first(a, b, c)
    return solve_factored_levels_first(a, upper_ratio, inverse_pivot, d).movedim(0, -1)


def tridiagonal_matvec(lower: Tensor, diag: Tensor, upper: Tensor, x: Tensor) -> Tensor:
    """The product ``A x`` of a batched tridiagonal matrix and a vector (for residuals and tests).

    Args:
        lower, diag, upper: Diagonals, shape ``(..., n)``; ``lower[..., 0]`` and ``upper[..., -1]``
            are ignored.
        x: Vector, shape ``(..., n)`` (broadcast with the diagonals).

    Returns:
        ``(A x)_k = lower_k x_{k-1} + diag_k x_k + upper_k x_{k+1}``, shape the broadcast shape.
    """
    result = diag * x
    if x.shape[-1] > 1:
        below = lower[..., 1:] * x[..., :-1]
        above = upper[..., :-1] * x[..., 1:]
        result = (
            result + torch.nn.functional.pad(below, (1, 0)) + torch.nn.functional.pad(above, (0, 1))
        )
    return result


# --------------------------------------------------------------------------------------------------
# Custom Function
# --------------------------------------------------------------------------------------------------


def _factor_any(lower: Tensor, diag: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`factor_levels_first` through the native sweeps when they apply, else eager."""
    operands = tuple(t.contiguous() for t in torch.broadcast_tensors(lower, diag, upper))
    out = (torch.empty_like(operands[1]), torch.empty_like(operands[1]))
    if _native_call("factor", operands, out):
        return out
    return factor_levels_first(lower, diag, upper)


def _solve_any(
    lower: Tensor, upper_ratio: Tensor, inverse_pivot: Tensor, rhs: Tensor, transposed: bool
) -> Tensor:
    """Solve with ``A`` (or ``A^T``) from its factors, native when possible, else eager."""
    operands = tuple(
        t.contiguous() for t in torch.broadcast_tensors(lower, upper_ratio, inverse_pivot, rhs)
    )
    out = torch.empty_like(operands[3])
    if _native_call("solve_transposed" if transposed else "solve", operands, (out,)):
        return out
    if transposed:
        return solve_factored_transposed_levels_first(lower, upper_ratio, inverse_pivot, rhs)
    return solve_factored_levels_first(lower, upper_ratio, inverse_pivot, rhs)


class _TridiagonalSolveFunction(torch.autograd.Function):
    """``x = A^{-1} d``; backward ``lambda = A^{-T} g``, ``dA = -lambda x^T`` on three diagonals."""

    generate_vmap_rule = True

    @staticmethod
    def forward(lower: Tensor, diag: Tensor, upper: Tensor, rhs: Tensor) -> Tensor:
        a, b, c, d = _broadcast_levels_first(lower, diag, upper, rhs)
        upper_ratio, inverse_pivot = _factor_any(a, b, c)
        return _solve_any(a, upper_ratio, inverse_pivot, d, transposed=False).movedim(0, -1)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        lower, diag, upper, rhs = inputs
        ctx.save_for_backward(lower, diag, upper, output)
        ctx.rhs_shape = rhs.shape

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        lower, diag, upper, solution = ctx.saved_tensors
        # Re-factoring costs less memory than saving the factors and as much time as one sweep.
        a, b, c, g = _broadcast_levels_first(lower, diag, upper, grad_output)
        upper_ratio, inverse_pivot = _factor_any(a, b, c)
        adjoint = _solve_any(a, upper_ratio, inverse_pivot, g, transposed=True)
        grad_lower = grad_diag = grad_upper = grad_rhs = None
        if ctx.needs_input_grad[3]:
            grad_rhs = adjoint.movedim(0, -1).sum_to_size(ctx.rhs_shape)
        if any(ctx.needs_input_grad[:3]):
            x = solution.movedim(-1, 0).expand_as(adjoint)
            d_lower, d_diag, d_upper = _coefficient_gradients_levels_first(adjoint, x)
            if ctx.needs_input_grad[0]:
                grad_lower = d_lower.movedim(0, -1).sum_to_size(lower.shape)
            if ctx.needs_input_grad[1]:
                grad_diag = d_diag.movedim(0, -1).sum_to_size(diag.shape)
            if ctx.needs_input_grad[2]:
                grad_upper = d_upper.movedim(0, -1).sum_to_size(upper.shape)
        return grad_lower, grad_diag, grad_upper, grad_rhs


# --------------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------------


def _validate(lower: Tensor, diag: Tensor, upper: Tensor, rhs: Tensor) -> None:
    named = {"lower": lower, "diag": diag, "upper": upper, "rhs": rhs}
    for name, tensor in named.items():
        check_floating(name, tensor)
        check_not_scalar(name, tensor, "the n unknowns", "Expand it, e.g. `value.expand(n)`.")
    check_same_dtype(named, "Convert them, e.g. `.to(rhs.dtype)`.")
    check_same_device(named, "Move them with `.to(rhs.device)`.")
    check_same_last_dimension(
        named,
        "the n unknowns",
        "Pad `lower` at the front and `upper` at the end to length n (the padded entries are "
        "ignored).",
    )
    if diag.shape[-1] == 0:
        raise ValueError("The system is empty (n = 0); there is nothing to solve.")
    check_broadcastable(named, "Insert singleton dimensions with `unsqueeze` so they line up.")


def solve_tridiagonal(lower: Tensor, diag: Tensor, upper: Tensor, rhs: Tensor) -> Tensor:
    """Solve batched tridiagonal systems ``A x = rhs`` (Thomas algorithm), with an adjoint backward.

    Row ``k`` of each system reads ``lower_k x_{k-1} + diag_k x_k + upper_k x_{k+1} = rhs_k``.
    Gradients reach all four arguments through one transposed solve (see the module docstring).

    Requires a matrix on which elimination without pivoting is stable: strictly diagonally dominant,
    symmetric positive definite, or an M-matrix (implicit diffusion steps are all of these).
    Otherwise the result may be inaccurate or non-finite; nothing is checked at run time.

    Args:
        lower: Sub-diagonal, shape ``(..., n)``; ``lower[..., 0]`` is ignored (its gradient is 0).
        diag: Diagonal, shape ``(..., n)``.
        upper: Super-diagonal, shape ``(..., n)``; ``upper[..., -1]`` is ignored.
        rhs: Right-hand side, shape ``(..., n)``.
            The leading (batch) dimensions of all four broadcast against each other, so one matrix
            can serve many right-hand sides or one coefficient profile many columns. Units: any,
            consistent (``x`` has the units of ``rhs`` divided by those of the matrix).

    Returns:
        The solution ``x``, shape ``(*broadcast batch, n)``, dtype and device of the inputs.

    Raises:
        TypeError: Non-tensor, non-floating or mixed-dtype arguments.
        ValueError: Mismatched ``n``, non-broadcastable batch shapes, or mixed devices.

    >>> import torch
    >>> lower = torch.tensor([0.0, -1.0, -1.0])
    >>> diag = torch.tensor([2.0, 2.0, 2.0])
    >>> upper = torch.tensor([-1.0, -1.0, 0.0])
    >>> solve_tridiagonal(lower, diag, upper, torch.tensor([1.0, 0.0, 1.0])).round(decimals=6)
    tensor([1., 1., 1.])
    """
    _validate(lower, diag, upper, rhs)
    result: Tensor = _TridiagonalSolveFunction.apply(lower, diag, upper, rhs)
    return result
