"""Time stepping with bounded memory, and equilibria differentiated implicitly.

``rollout``
    Repeats a step function. With ``checkpoint_every=k`` the steps are grouped in segments of ``k``:
    the forward pass runs each segment without building a graph and keeps only the state at its
    boundary, and the backward pass recomputes one segment at a time with its graph, so memory grows
    like ``T/k + k`` steps instead of ``T`` (Griewank & Walther 2000, ACM TOMS 26, 19, for the
    general theory; here the simple uniform scheme). The segments are a custom Function that
    takes the parameters as explicit inputs, so ``torch.autograd.grad`` and ``.backward()`` both
    work and the forward keeps no per-step autograd nodes (``torch.utils.checkpoint``'s
    non-reentrant mode keeps a node per operation, which dominates for small states).
``equilibrium``
    Solves ``F(x; θ) = 0`` by Newton's method (with backtracking) and differentiates the solution
    by the implicit function theorem instead of through the iterations: for a loss ``ℓ(x*)``,
    ``dℓ/dθ = -λᵀ ∂F/∂θ`` with ``(∂F/∂x)ᵀ λ = ∂ℓ/∂x*``, one adjoint linear solve at the solution
    (e.g. Bai, Kolter & Koltun 2019, NeurIPS, "Deep Equilibrium Models"). The gradient is exact at
    the solution whatever the number of iterations, and costs no memory for them. The Jacobian is
    dense by default (``torch.func``, LU with pivoting: any residual); a residual whose Jacobian
    is tridiagonal (one-dimensional diffusion plus local terms, such as an energy-balance model
    on latitude bands) passes its three bands (``structure="tridiagonal"``), and each Newton step
    and the adjoint solve become one Thomas sweep (:mod:`climgrad.tridiagonal`), rows of a batch
    converging independently; a closed-form ``parameter_vjp`` can replace the recorded residual
    in the backward pass.
``solve_with_restarts`` and ``continuation``
    Where Newton needs a good start (steep switches, several equilibria), a model names its
    starting points (a warm state, longer spin-ups, a cold start) and these try them in turn, or
    walk the parameters from values that solve to the ones wanted. Every retry policy of the
    package lives here, so models and the calibration layer only say where to start.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor
from torch.autograd import forward_ad
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from climgrad.tridiagonal import (
    factor_levels_first,
    solve_factored_levels_first,
    solve_factored_transposed_levels_first,
)

__all__ = [
    "Bands",
    "EquilibriumError",
    "EquilibriumInfo",
    "JacobianStructure",
    "continuation",
    "equilibrium",
    "jacobian",
    "rollout",
    "solve_with_restarts",
]

StateDict = dict[str, Tensor]


class _CheckpointedSegment(torch.autograd.Function):
    """Run ``k`` steps without a graph; recompute them with one in the backward pass.

    Inputs: the segment function, the number of state tensors, the state tensors, then the
    parameters the step closes over (explicit inputs, so that their gradients are returned).
    """

    @staticmethod
    def forward(
        run: Callable[..., tuple[Tensor, ...]], n_state: int, *tensors: Tensor
    ) -> tuple[Tensor, ...]:
        with torch.no_grad():
            return tuple(t.detach() for t in run(*tensors[:n_state]))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        run, n_state, *tensors = inputs
        ctx.run = run
        ctx.n_state = n_state
        ctx.save_for_backward(*tensors[:n_state])
        ctx.parameters = tensors[n_state:]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        state = [
            t.detach().requires_grad_(need)
            for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad[2:])
        ]
        parameters = [p for p, need in zip(ctx.parameters, ctx.needs_input_grad[2 + ctx.n_state :])]
        wanted = [t for t in state if t.requires_grad] + [p for p in parameters if p.requires_grad]
        with torch.enable_grad():
            outputs = ctx.run(*state)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
        grads = iter(
            torch.autograd.grad(
                [o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True
            )
            if pairs and wanted
            else [None] * len(wanted)
        )
        result: list[Tensor | None] = [None, None]
        for t in [*state, *parameters]:
            result.append(next(grads) if t.requires_grad else None)
        return tuple(result)


def rollout(
    step: Callable[[StateDict], StateDict],
    state: Mapping[str, Tensor],
    steps: int,
    *,
    checkpoint_every: int | None = None,
    parameters: Iterable[Tensor] | None = None,
    observe: Callable[[StateDict], Tensor] | None = None,
) -> tuple[StateDict, Tensor | None]:
    """Apply ``step`` ``steps`` times, optionally with gradient checkpointing.

    Args:
        step: ``state -> state`` (one time step; it closes over parameters and ``dt``).
        state: Initial state: a mapping of variable names to tensors.
        steps: Number of steps (≥ 0).
        checkpoint_every: Segment length ``k`` for gradient checkpointing; ``None`` keeps the
            whole graph (fastest, memory ∝ ``steps``).
        parameters: The tensors ``step`` closes over that need gradients (e.g.
            ``model.parameters()``). With ``checkpoint_every``, segments then keep no graph at
            all in the forward pass (memory ∝ T/k + k). Without it, checkpointing falls back to
            :func:`torch.utils.checkpoint.checkpoint` (non-reentrant), which saves no tensors
            but keeps one autograd node per operation.
        observe: Optional ``state -> tensor`` evaluated after every step (a time series such as a
            global mean); the results are stacked along a new leading dimension.

    Returns:
        ``(final_state, observations)``; observations is ``None`` without ``observe``, else a
        tensor of shape ``(steps, *observe(state).shape)``.
    """
    if steps < 0:
        raise ValueError(f"steps must be non-negative, got {steps}.")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every}.")
    names = list(state)
    current: StateDict = dict(state)
    observations: list[Tensor] = []

    def segment(length: int, *tensors: Tensor) -> tuple[Tensor, ...]:
        local = dict(zip(names, tensors))
        seen = []
        for _ in range(length):
            local = step(local)
            if observe is not None:
                seen.append(observe(local))
        stacked = (torch.stack(seen),) if seen else ()
        return (*(local[name] for name in names), *stacked)

    use_checkpoint = checkpoint_every is not None and torch.is_grad_enabled()
    length = checkpoint_every if (checkpoint_every is not None and use_checkpoint) else steps
    explicit = [p for p in parameters if p.requires_grad] if parameters is not None else None
    done = 0
    while done < steps:
        this = min(length, steps - done) if length else steps - done
        tensors = tuple(current[name] for name in names)
        if use_checkpoint and explicit is not None:
            result = _CheckpointedSegment.apply(
                functools.partial(segment, this), len(tensors), *tensors, *explicit
            )
        elif use_checkpoint:
            result = checkpoint(segment, this, *tensors, use_reentrant=False)
        else:
            result = segment(this, *tensors)
        current = dict(zip(names, result[: len(names)]))
        if observe is not None:
            observations.append(result[len(names)])
        done += this
    series = torch.cat(observations) if observations else None
    return current, series


class EquilibriumError(RuntimeError):
    """Newton's method did not reach the tolerance."""


@dataclass
class EquilibriumInfo:
    """Diagnostics of the last solve: iterations and final max-norm residual."""

    iterations: int = 0
    residual: float = float("nan")


Residual = Callable[..., Tensor]
#: Three bands ``(lower, diag, upper)`` of a tridiagonal matrix, each ``(..., n)``.
Bands = tuple[Tensor, Tensor, Tensor]
#: How Newton's method and the adjoint solve with ``∂F/∂x`` (see :func:`equilibrium`).
JacobianStructure = Literal["dense", "tridiagonal"]
_STRUCTURES: tuple[str, ...] = ("dense", "tridiagonal")
_Start = TypeVar("_Start")
_Solution = TypeVar("_Solution")

#: Failures a restart may cure: Newton not converging, or a trial state outside the physical
#: range of the residual (a process's input check raising ValueError).
RECOVERABLE: tuple[type[Exception], ...] = (EquilibriumError, ValueError)


def solve_with_restarts(
    solve: Callable[[_Start], _Solution],
    starts: Iterable[_Start],
    *,
    recoverable: tuple[type[Exception], ...] = RECOVERABLE,
) -> _Solution:
    """The first start from which ``solve`` succeeds.

    ``starts`` may be a generator, so that an expensive start (a longer spin-up continuing the
    previous one) is only computed when the cheaper ones before it failed.

    Args:
        solve: Solver of one start, e.g. Newton from a state.
        starts: Starting points, cheapest (or most likely) first.
        recoverable: Exceptions that mean "try the next start"; others propagate at once.

    Returns:
        ``solve(start)`` for the first start that does not raise.

    Raises:
        EquilibriumError: No start succeeded; the message counts them and quotes the last error.
    """
    failures: list[str] = []
    for start in starts:
        try:
            return solve(start)
        except recoverable as err:
            failures.append(" ".join(str(err).split()))
    if not failures:
        raise EquilibriumError("no starting point was given to solve from.")
    raise EquilibriumError(
        f"no start converged ({len(failures)} tried); the last said: {failures[-1]}"
    )


def continuation(solve: Callable[[float], _Solution], stages: int = 4) -> _Solution:
    """Solve at ``fraction = 0, 1/stages, ..., 1``, each solve starting where the last ended.

    Natural-parameter continuation: ``solve(fraction)`` sets the parameters a fraction of the way
    from values where a solve is known to succeed (``0``) to the ones wanted (``1``) and solves,
    warm-starting from its previous solution (the caller keeps that state). It follows the
    branch of equilibria the start is on, where a cold solve at the target might land on another.

    Returns:
        ``solve(1.0)``.
    """
    if stages < 1:
        raise ValueError(f"`stages` must be >= 1; got {stages}.")
    for stage in range(stages):
        solve(stage / stages)
    return solve(1.0)


def _jacobian(residual: Residual, x: Tensor, params: Sequence[Tensor]) -> Tensor:
    """``∂F/∂x``: dense ``(n, n)``, or ``(batch, n, n)`` for independent rows ``(batch, n)``.

    Uses ``torch.func`` (jacrev, vmapped over rows). Residuals built on custom Functions without
    a vmap rule (such as :func:`~climgrad.autograd.external` wrappers of compiled code) fall back
    to forward mode (``torch.autograd.forward_ad``), all unknowns in one batched evaluation where
    the residual allows it (:func:`_jacobian_forward_mode`; an external function then costs 2
    calls for the whole Jacobian, against 2 per input element and unknown in reverse mode), and,
    if some Function has no forward-mode rule, to one reverse pass per unknown.
    """

    def row(x_row: Tensor) -> Tensor:
        return residual(x_row, *params)

    def single(x_row: Tensor) -> Tensor:
        return residual(x_row.unsqueeze(0), *params).squeeze(0)

    try:
        if x.ndim == 1:
            return torch.func.jacrev(row)(x)
        flat = x.reshape(-1, x.shape[-1])
        jac = torch.func.vmap(torch.func.jacrev(single))(flat)
        return jac.reshape(*x.shape, x.shape[-1])
    except (RuntimeError, NotImplementedError):
        pass
    try:
        return _jacobian_forward_mode(residual, x, params)
    except (RuntimeError, NotImplementedError):
        point = x.detach().requires_grad_(True)
        with torch.enable_grad():
            values = residual(point, *[p.detach() for p in params])
            rows = []
            for k in range(x.shape[-1]):
                seed = torch.zeros_like(values)
                seed[..., k] = 1.0
                # Rows are independent, so one pass gives row k of every block at once.
                (grad,) = torch.autograd.grad(values, point, seed, retain_graph=True)
                rows.append(grad)
        return torch.stack(rows, dim=-2)


def jacobian(residual: Residual, x: Tensor, params: Sequence[Tensor] = ()) -> Tensor:
    """``∂F/∂x`` of ``residual(x, *params)`` at ``x``, as :func:`equilibrium`'s Newton builds it.

    ``torch.func`` (reverse mode, vmapped over independent rows) where the residual allows it;
    residuals through compiled code (:func:`~climgrad.autograd.external`) get one batched
    forward-mode product instead.

    Args:
        residual: ``F(x, *params) -> Tensor`` of the shape of ``x``.
        x: The point, ``(n,)`` or ``(batch, n)`` with independent rows.
        params: Further arguments of ``residual``.

    Returns:
        ``(n, n)`` or ``(batch, n, n)``.
    """
    return _jacobian(residual, x, params)


def _jacobian_forward_mode(residual: Residual, x: Tensor, params: Sequence[Tensor]) -> Tensor:
    """``∂F/∂x`` by forward mode: all ``n`` Jacobian-vector products in one batched evaluation.

    ``x`` is replicated ``n`` times along a new leading dimension, replica ``k`` carrying the
    tangent ``e_k``, so the residual runs once on ``n`` times the rows (residuals must treat
    leading dimensions as independent rows, as the models here do). This matters because forward
    mode pays a fixed cost per operation (zero tangents go through Python meta functions) that
    ``n`` separate products would pay ``n`` times (measured in ``docs/rrtmg.md``). A residual
    that cannot take the extra dimension, or that mixes it with the others (a matrix product over
    a one-dimensional state, say: checked by comparing the replicas' values with one plain
    evaluation), is evaluated once per unknown instead.
    """
    point = x.detach()
    detached = [p.detach() for p in params]
    n = x.shape[-1]
    # Custom Function forwards (such as the Newton solve's) switch forward mode off; the
    # Jacobian is needed there, so switch it back on for these products.
    with forward_ad._set_fwd_grad_enabled(True), forward_ad.dual_level():
        try:
            replicas = point.expand(n, *point.shape).clone()
            eye = torch.eye(n, dtype=point.dtype, device=point.device)
            tangent = eye.reshape(n, *(1,) * (point.ndim - 1), n).expand_as(replicas).clone()
            values = residual(forward_ad.make_dual(replicas, tangent), *detached)
            primal, derivative = forward_ad.unpack_dual(values)
            plain = residual(point, *detached)
            tolerance = 1e-10 if plain.dtype == torch.float64 else 1e-4
            rows_independent = values.shape == replicas.shape and bool(
                torch.allclose(primal, plain.expand_as(primal), rtol=tolerance, atol=0.0)
            )
            if rows_independent:
                if derivative is None:
                    return torch.zeros(*point.shape, n, dtype=values.dtype, device=values.device)
                # derivative[k, ..., i] = ∂F_i/∂x_k
                return torch.movedim(derivative, 0, -1)
        except (RuntimeError, ValueError, IndexError):
            pass
        columns = []
        for k in range(n):
            direction = torch.zeros_like(point)
            direction[..., k] = 1.0
            values = residual(forward_ad.make_dual(point, direction), *detached)
            derivative = forward_ad.unpack_dual(values).tangent
            columns.append(torch.zeros_like(values) if derivative is None else derivative)
    return torch.stack(columns, dim=-1)


def _tridiagonal_solve(bands: Bands, rhs: Tensor, *, transposed: bool = False) -> Tensor:
    """``J⁻¹ rhs`` (or ``J⁻ᵀ rhs``) for a banded ``J = (lower, diag, upper)``, rows independent.

    The bands and ``rhs`` are ``(..., n)`` and broadcast; row ``k`` of ``J`` reads
    ``lower_k x_{k−1} + diag_k x_k + upper_k x_{k+1}``. One Thomas factorisation and one sweep
    (:mod:`climgrad.tridiagonal`'s levels-first kernels, compiled on CPU), no autograd: Newton's
    steps and the adjoint solve need values only.
    """
    lower, diag, upper = bands
    shape = _broadcast_shape(lower.shape, diag.shape, upper.shape, rhs.shape)
    operands = (lower, diag, upper, rhs)
    if len(shape) == 1 and all(t.shape == shape for t in operands):
        # One system: the vectors are already levels first.
        a, b, c, d = (t.contiguous() for t in operands)
    else:
        n = shape[-1]
        a, b, c, d = (t.expand(shape).reshape(-1, n).T.contiguous() for t in operands)
    upper_ratio, inverse_pivot = torch.empty_like(b), torch.empty_like(b)
    factor_levels_first(a, b, c, out=(upper_ratio, inverse_pivot))
    sweep = solve_factored_transposed_levels_first if transposed else solve_factored_levels_first
    solution = sweep(a, upper_ratio, inverse_pivot, d, out=torch.empty_like(d))
    return solution if solution.shape == shape else solution.T.reshape(shape)


def _broadcast_shape(*shapes: torch.Size) -> tuple[int, ...]:
    """The broadcast of ``shapes`` (no checks: ``expand`` rejects a mismatch).

    ``torch.broadcast_shapes`` costs more than a small Thomas sweep on the CPU.
    """
    if all(shape == shapes[0] for shape in shapes):
        return tuple(shapes[0])
    ndim = max(len(shape) for shape in shapes)
    result = [1] * ndim
    for shape in shapes:
        for axis, size in enumerate(shape, ndim - len(shape)):
            if size != 1:
                result[axis] = size
    return tuple(result)


def _dense_from_bands(bands: Bands) -> Tensor:
    """The ``(..., n, n)`` matrix of three ``(..., n)`` bands (for the pivoting fallback)."""
    lower, diag, upper = torch.broadcast_tensors(*bands)
    return (
        torch.diag_embed(diag)
        + torch.diag_embed(lower[..., 1:], offset=-1)
        + torch.diag_embed(upper[..., :-1], offset=1)
    )


def _solve_linearised(
    structure: JacobianStructure,
    jac: Tensor | Bands,
    rhs: Tensor,
    *,
    transposed: bool = False,
    pivot_fallback: bool = True,
) -> Tensor:
    """``J⁻¹ rhs`` or ``J⁻ᵀ rhs`` for a dense ``(..., n, n)`` or banded Jacobian.

    Thomas elimination does not pivot. Near a stable equilibrium ``−J`` is similar to a positive
    definite matrix (diffusion plus damping) and elimination is stable, but an iterate far from
    it may make ``J`` indefinite and a pivot zero; with ``pivot_fallback`` non-finite values
    then send the system to LU with partial pivoting (``torch.linalg.solve``); without it they are
    returned (Newton's loop checks its step's residual instead, which costs nothing extra). A
    singular matrix raises ``torch.linalg.LinAlgError``.
    """
    if structure == "tridiagonal":
        assert isinstance(jac, tuple)
        solution = _tridiagonal_solve(jac, rhs, transposed=transposed)
        if not pivot_fallback or bool(torch.isfinite(solution).all()):
            return solution
        matrix = _dense_from_bands(jac)
    else:
        assert isinstance(jac, Tensor)
        matrix = jac
    if transposed:
        matrix = matrix.transpose(-1, -2)
    return torch.linalg.solve(matrix, rhs.unsqueeze(-1)).squeeze(-1)


def _linearise(
    residual: Residual,
    jacobian: Callable[..., Any] | None,
    structure: JacobianStructure,
    x: Tensor,
    params: Sequence[Tensor],
) -> Tensor | Bands:
    """``∂F/∂x`` at ``x``: the caller's ``jacobian`` (bands or matrix), else dense by autograd."""
    jac = jacobian(x, *params) if jacobian is not None else None
    if jac is None:
        with torch.enable_grad():
            jac = _jacobian(residual, x, [p.detach() for p in params])
    if structure == "tridiagonal":
        return tuple(jac)
    result: Tensor = jac
    return result


def _max_norm(values: Tensor, rowwise: bool) -> Tensor:
    """``max |F|`` over everything (a 0-d tensor), or per row ``(...)`` when ``rowwise``."""
    return values.abs().amax(dim=-1) if rowwise else values.abs().max()


def _newton(
    residual: Residual,
    x0: Tensor,
    params: Sequence[Tensor],
    jacobian: Callable[..., Any] | None,
    structure: JacobianStructure,
    tol: float,
    max_iter: int,
    line_search: bool,
    info: EquilibriumInfo,
) -> Tensor:
    """Newton's method from ``x0``; with ``structure="tridiagonal"`` rows converge on their own.

    With a banded Jacobian and a batch of rows ``(..., n)`` (independent systems, e.g. one per
    parameter set), each row stops moving once its own ``max |F|`` is within ``tol``, and the
    backtracking halves each row's step separately, so a row takes the steps it would take
    alone. The dense path keeps one norm for the whole batch.
    """
    with torch.no_grad():
        x = x0.detach()
        f = residual(x, *params)
        if f.shape != x.shape:
            # Parameters with a leading batch dimension: every row starts from x0.
            x = x.expand(f.shape)
        x = x.clone()
        rowwise = structure == "tridiagonal" and x.ndim > 1
        norms = _max_norm(f, rowwise)
        norm = float(norms.max())
        for iteration in range(max_iter + 1):
            info.iterations, info.residual = iteration, norm
            if norm <= tol:
                return x
            if iteration == max_iter:
                break
            jac = _linearise(residual, jacobian, structure, x, params)
            tries = 30 if line_search else 1
            try:
                delta = _solve_linearised(structure, jac, f, pivot_fallback=False)
                x_new, f_new, norms_new = _backtrack(
                    residual, params, x, delta, norms, tol, tries, rowwise
                )
                norm_new = float(norms_new.max())
                if (
                    isinstance(jac, tuple)
                    and not math.isfinite(norm_new)
                    and not bool(torch.isfinite(delta).all())
                ):
                    # A zero pivot in Thomas elimination: take this step with pivoting LU.
                    delta = _solve_linearised("dense", _dense_from_bands(jac), f)
                    x_new, f_new, norms_new = _backtrack(
                        residual, params, x, delta, norms, tol, tries, rowwise
                    )
                    norm_new = float(norms_new.max())
            except torch.linalg.LinAlgError as error:
                raise EquilibriumError(
                    f"Newton's method met a singular Jacobian at iteration {iteration} (max |F| = "
                    f"{norm:.3e}); start closer to the equilibrium or check that one exists."
                ) from error
            if not math.isfinite(norm_new):
                raise EquilibriumError(
                    f"Newton's step at iteration {iteration} left the residual's domain or gave "
                    f"non-finite values (max |F| was {norm:.3e}); start closer to the "
                    "equilibrium (more spin-up steps)."
                )
            x, f, norms, norm = x_new, f_new, norms_new, norm_new
    raise EquilibriumError(
        f"Newton's method did not converge in {max_iter} iterations: max |F| = {norm:.3e} > "
        f"tol = {tol:.1e}. Raise max_iter, loosen tol, or start closer to the equilibrium."
    )


def _backtrack(
    residual: Residual,
    params: Sequence[Tensor],
    x: Tensor,
    delta: Tensor,
    norms: Tensor,
    tol: float,
    tries: int,
    rowwise: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``x − s δ`` with ``s = 1, ½, ¼, …`` until ``max |F|`` decreases (at most ``tries``).

    Optional backtracking: with ``tries = 1`` this is the plain Newton step. Backtracking is off
    by default, because it changes the path, and so possibly the branch reached. A trial that
    leaves the residual's domain (its checks raise ValueError, e.g. for a negative temperature)
    counts as infinitely bad. ``rowwise``: each row halves its own step.

    Returns:
        ``(x_new, F(x_new), max |F(x_new)|)`` (the norm per row when ``rowwise``).
    """
    if rowwise:
        # Rows already within tol stay where they are.
        delta = torch.where((norms > tol).unsqueeze(-1), delta, torch.zeros_like(delta))
    scale: float | Tensor = 1.0
    candidate, values, candidate_norms = _trial(residual, params, x, scale, delta, norms, rowwise)
    for _ in range(tries - 1):
        accepted = (candidate_norms < norms) | (candidate_norms <= tol)
        if bool(accepted.all()):
            break
        if rowwise:
            halve = torch.where(accepted, 1.0, 0.5).unsqueeze(-1)
            scale = halve if isinstance(scale, float) else scale * halve
        else:
            scale = 0.5 * scale
        candidate, values, candidate_norms = _trial(
            residual, params, x, scale, delta, norms, rowwise
        )
    return candidate, values, candidate_norms


def _trial(
    residual: Residual,
    params: Sequence[Tensor],
    x: Tensor,
    scale: float | Tensor,
    delta: Tensor,
    norms: Tensor,
    rowwise: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``x − scale δ``, its residual and max-norm (inf where the residual raises ValueError)."""
    candidate = x - delta if isinstance(scale, float) and scale == 1.0 else x - scale * delta
    try:
        values = residual(candidate, *params)
        return candidate, values, _max_norm(values, rowwise)
    except ValueError:
        return candidate, torch.full_like(x, math.inf), torch.full_like(norms, math.inf)


#: Arguments of ``_EquilibriumFunction.apply`` before the parameters.
_HEAD = 9


class _EquilibriumFunction(torch.autograd.Function):
    """Forward: Newton solve. Backward: one adjoint solve at the solution (implicit function)."""

    @staticmethod
    def forward(
        residual: Residual,
        jacobian: Callable[..., Any] | None,
        parameter_vjp: Callable[..., Sequence[Tensor | None]] | None,
        structure: JacobianStructure,
        tol: float,
        max_iter: int,
        line_search: bool | str,
        info: EquilibriumInfo,
        x0: Tensor,
        *params: Tensor,
    ) -> Tensor:
        def solve(backtracking: bool) -> Tensor:
            return _newton(
                residual, x0, params, jacobian, structure, tol, max_iter, backtracking, info
            )

        if line_search != "auto":
            return solve(bool(line_search))
        try:
            return solve(False)
        except EquilibriumError:
            # Plain Newton cycled or diverged: restart from x0 with backtracking.
            return solve(True)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        residual, jacobian, parameter_vjp, structure = inputs[:4]
        params = inputs[_HEAD:]
        ctx.residual = residual
        ctx.jacobian = jacobian
        ctx.parameter_vjp = parameter_vjp
        ctx.structure = structure
        ctx.save_for_backward(output, *params)
        ctx.save_for_forward(output, *params)

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> Tensor:
        """Forward mode: ``J dx* = -(∂F/∂θ) dθ`` at the solution."""
        solution, *params = ctx.saved_tensors
        param_tangents = [
            torch.zeros_like(p) if t is None else t for p, t in zip(params, tangents[_HEAD:])
        ]
        x = solution.detach()
        primals = [p.detach() for p in params]
        with torch.enable_grad():
            jac = _linearise(ctx.residual, ctx.jacobian, ctx.structure, x, primals)
        forcing = torch.func.jvp(
            lambda *ps: ctx.residual(x, *ps), tuple(primals), tuple(param_tangents)
        )[1]
        return -_solve_linearised(ctx.structure, jac, forcing.expand(x.shape))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_solution: Tensor) -> tuple[Tensor | None, ...]:
        solution, *params = ctx.saved_tensors
        needs = ctx.needs_input_grad[_HEAD:]
        # residual, jacobian, parameter_vjp, structure, tol, max_iter, line_search, info, x0
        head: tuple[None, ...] = (None,) * _HEAD
        if not any(needs):
            return (*head, *(None for _ in params))
        x = solution.detach()
        if ctx.parameter_vjp is not None:
            primals = [p.detach() for p in params]
            jac = _linearise(ctx.residual, ctx.jacobian, ctx.structure, x, primals)
            adjoint = _solve_linearised(ctx.structure, jac, grad_solution, transposed=True)
            grads = iter(ctx.parameter_vjp(x, -adjoint, *primals, needs=tuple(needs)))
        else:
            detached = [p.detach().requires_grad_(need) for p, need in zip(params, needs)]
            with torch.enable_grad():
                jac = _linearise(ctx.residual, ctx.jacobian, ctx.structure, x, detached)
                adjoint = _solve_linearised(ctx.structure, jac, grad_solution, transposed=True)
                f = ctx.residual(x, *detached)
                wanted = [p for p, need in zip(detached, needs) if need]
                grads = iter(
                    torch.autograd.grad(f, wanted, grad_outputs=-adjoint, allow_unused=True)
                )
            # Only the wanted ones were differentiated: realign with every parameter.
            grads = iter([next(grads) if need else None for need in needs])
        result = []
        for p, need in zip(params, needs):
            g = next(grads)
            result.append(None if not need else torch.zeros_like(p) if g is None else g)
        # x0 gets no gradient: the equilibrium does not depend on the starting point.
        return (*head, *result)


def equilibrium(
    residual: Residual,
    x0: Tensor,
    params: Sequence[Tensor],
    *,
    jacobian: Callable[..., Any] | None = None,
    structure: JacobianStructure = "dense",
    parameter_vjp: Callable[..., Sequence[Tensor | None]] | None = None,
    tol: float = 1e-9,
    max_iter: int = 50,
    line_search: bool | Literal["auto"] = "auto",
    info: EquilibriumInfo | None = None,
) -> Tensor:
    """Solve ``residual(x, *params) = 0`` for ``x``, differentiable in ``params`` (implicitly).

    Args:
        residual: ``F(x, *params) -> Tensor`` of the shape of ``x``: ``(n,)``, or ``(batch, n)``
            with rows independent (e.g. columns, or one row per parameter set: with
            ``params`` that carry a leading batch dimension the residual may return
            ``(batch, n)`` for an ``(n,)`` start, and every row starts from ``x0``). Written in
            torch, so autograd gives ``∂F/∂θ``.
        x0: Starting point. Where several equilibria exist it selects one (document it).
        params: Tensors ``θ`` the solution is differentiated with respect to.
        jacobian: ``(x, *params) -> ∂F/∂x``. With ``structure="dense"`` (optional; default: by
            autograd) a ``(..., n, n)`` tensor; with ``structure="tridiagonal"`` (required) the
            three bands ``(lower, diag, upper)``, each ``(..., n)``, in the layout of
            :func:`climgrad.tridiagonal.solve_tridiagonal` (``lower[..., 0]`` and
            ``upper[..., -1]`` ignored).
        structure: ``"dense"`` (LU with partial pivoting, any Jacobian) or ``"tridiagonal"``
            (Thomas elimination on the bands, ``O(n)`` per Newton step and for the adjoint; each
            row of a batch converges on its own; a zero pivot falls back to dense LU).
        parameter_vjp: Optional ``(x, v, *params, needs=...) -> [vᵀ ∂F/∂θ_i for each i]`` (a
            tensor of ``θ_i``'s shape, or ``None`` where ``needs[i]`` is false), for residuals
            whose parameter derivatives are closed-form; the default records ``residual`` once
            with autograd in the backward pass.
        tol: Convergence when ``max |F| <= tol`` (in the units of ``F``).
        max_iter: Newton iterations before :class:`EquilibriumError`.
        line_search: Halve Newton steps that do not reduce ``max |F|`` (more robust far from
            the solution, but it changes the path and so possibly the equilibrium reached).
            ``"auto"`` (default) runs plain Newton and, only if that fails, restarts from
            ``x0`` with backtracking.
        info: An :class:`EquilibriumInfo` to receive the iteration count and final residual.

    Returns:
        ``x*`` with ``F(x*, θ) = 0``; its gradient flows to ``params`` by the implicit function
        theorem (one transposed linear solve, ``(∂F/∂x)ᵀ λ = ∂ℓ/∂x*``, then one vector-Jacobian
        product ``−λᵀ ∂F/∂θ`` through ``residual``), not through the iterations.

    Raises:
        ValueError: An unknown ``structure``, or ``"tridiagonal"`` without ``jacobian``.
        EquilibriumError: Newton did not reach ``tol``.
    """
    if structure not in _STRUCTURES:
        raise ValueError(f"Unknown Jacobian structure {structure!r}; use one of {_STRUCTURES}.")
    if structure == "tridiagonal" and jacobian is None:
        raise ValueError(
            "structure='tridiagonal' needs `jacobian=`: a function (x, *params) -> (lower, diag, "
            "upper) giving the three bands of dF/dx, each of the shape of x."
        )
    if info is None:
        info = EquilibriumInfo()
    result: Tensor = _EquilibriumFunction.apply(
        residual, jacobian, parameter_vjp, structure, tol, max_iter, line_search, info, x0, *params
    )
    return result
