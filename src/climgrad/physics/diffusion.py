"""Implicit (backward-Euler) vertical diffusion in a column, with an adjoint backward.

Turbulent mixing in the boundary layer and ocean mixed layer is commonly parameterised as
down-gradient diffusion with an eddy diffusivity profile ``K(z)`` (e.g. Holtslag & Boville 1993,
J. Climate 6, 1825; Large et al. 1994, Rev. Geophys. 32, 363):

.. math::

    \\frac{\\partial T}{\\partial t} = \\frac{\\partial}{\\partial z}
        \\left( K(z) \\frac{\\partial T}{\\partial z} \\right),
    \\qquad K \\frac{\\partial T}{\\partial z} = 0 \\text{ at both ends (no flux).}

Finite volumes (benchmark B1.2 of ``docs/benchmark_problems.md``, generalised to uneven cells):
cell ``k`` has width ``w_k`` and centre ``z_k``; interface ``k+1/2`` lies between centres ``k`` and
``k+1`` at distance ``d_{k+1/2} = z_{k+1} - z_k`` and carries the arithmetic-mean diffusivity
``K_{k+1/2} = (K_k + K_{k+1}) / 2``. With the interface conductance ``g_{k+1/2} = dt K_{k+1/2} /
d_{k+1/2}`` one backward-Euler step solves, in every column,

.. math::

    T^{n+1}_k - \\frac{g_{k+1/2} (T^{n+1}_{k+1} - T^{n+1}_k)
                      - g_{k-1/2} (T^{n+1}_k - T^{n+1}_{k-1})}{w_k} = T^n_k,
    \\qquad g_{-1/2} = g_{L-1/2} = 0,

a tridiagonal system with sub-diagonal ``-g_{k-1/2}/w_k``, super-diagonal ``-g_{k+1/2}/w_k`` and
diagonal ``1 + (g_{k-1/2} + g_{k+1/2})/w_k``. The matrix is a strictly diagonally dominant M-matrix
for ``K >= 0``, so the step is unconditionally stable, the Thomas algorithm needs no pivoting, and
the step conserves the column integral ``sum_k w_k T_k`` exactly (up to rounding) and obeys a
maximum principle (no new extrema). On a uniform grid ``w = d = dz`` this is B1's scheme with
``r_{k} = dt K_{k+1/2} / dz**2``; B1's per-column factor ``f_i`` is a diffusivity of shape
``(column, level)`` equal to ``f_i K_k``.

Coordinates (:class:`VerticalGrid`): any monotonic vertical coordinate works when ``K`` is given
in that coordinate's units squared per second: height (m, ``K`` in m2 s-1), nondimensional (B1), or
pressure (Pa, ``K`` in Pa2 s-1; convert a height diffusivity with
:func:`pressure_coordinate_diffusivity`, ``K_p = (rho g)**2 K_z`` from hydrostatic balance, which
makes the scheme conserve the mass-weighted column integral ``sum_k dp_k T_k``).

Gradients. For one step ``A x = T^n`` with loss gradient ``G = dl/dx`` the adjoint ``lam = A^{-T}
G`` gives ``dl/dT^n = lam`` and ``dl/dg_{k+1/2} = -(x_{k+1} - x_k)(lam_{k+1}/w_{k+1} -
lam_k/w_k)``, so the backward saves only the solution. Over ``S`` steps with a fixed ``K`` the
matrix is the same at every step: :func:`implicit_vertical_diffusion_steps` factors it once (or
every step, as B1's reference workload does), keeps only the ``S`` states, and runs the adjoint
recurrence ``lam^n = A^{-T} lam^{n+1}`` backwards, accumulating the ``K`` gradient on the way.
Regime: any ``dt`` (implicit), ``K >= 0``; the accuracy in time is first order.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from climgrad.constants import gravity
from climgrad.physics.process import Process
from climgrad.tridiagonal import (
    factor_levels_first,
    solve_factored_levels_first,
    solve_factored_transposed_levels_first,
    solve_transposed_and_accumulate,
)
from climgrad.typing import Diagnostics, State, Tendencies
from climgrad.validation import (
    check_broadcastable,
    check_choice,
    check_count,
    check_floating,
    check_last_dimension,
    check_not_scalar,
    check_positive,
    check_same_device,
    check_same_dtype,
    check_same_last_dimension,
    is_traced,
    is_transformed,
)

__all__ = [
    "VerticalDiffusion",
    "VerticalGrid",
    "implicit_diffusion_kernel",
    "implicit_vertical_diffusion",
    "implicit_vertical_diffusion_steps",
    "interface_conductance",
    "pressure_coordinate_diffusivity",
]

COORDINATES = ("height", "pressure", "nondimensional")

# --------------------------------------------------------------------------------------------------
# Grid
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerticalGrid:
    """Finite-volume geometry of a column.

    Attributes:
        cell_width: Cell widths ``w_k`` (positive), shape ``(..., level)``, in coordinate units (m
            for height, Pa for pressure, 1 for nondimensional).
        center_distance: Distances ``d_{k+1/2}`` between adjacent cell centres (positive), shape
            ``(..., level - 1)``, same units.
        coordinate: ``"height"``, ``"pressure"`` or ``"nondimensional"``; sets the units the
            diffusivity must have (m2 s-1, Pa2 s-1, 1).

    Leading dimensions, if any, broadcast against the columns of the state (a grid per column).
    """

    cell_width: Tensor
    center_distance: Tensor
    coordinate: str = "height"

    def __post_init__(self) -> None:
        check_choice("coordinate", self.coordinate, COORDINATES)
        if self.cell_width.ndim == 0 or self.cell_width.shape[-1] < 1:
            raise ValueError("`cell_width` needs at least one level (last dimension).")
        if self.center_distance.shape[-1] != self.cell_width.shape[-1] - 1:
            raise ValueError(
                f"`center_distance` must have one entry fewer than `cell_width` along the last "
                f"dimension (one per interior interface); got {self.center_distance.shape[-1]} and "
                f"{self.cell_width.shape[-1]}. Build the grid with VerticalGrid.from_interfaces()."
            )
        for name in ("cell_width", "center_distance"):
            value = getattr(self, name)
            if value.requires_grad:
                raise ValueError(
                    f"`{name}` requires grad, but gradients with respect to the grid are not "
                    "implemented. Pass `.detach()`ed grid tensors."
                )
            check_positive(
                name,
                value,
                "",
                "Order the interfaces monotonically and remove repeated ones.",
            )

    @property
    def levels(self) -> int:
        """Number of cells (levels) in a column."""
        return int(self.cell_width.shape[-1])

    @classmethod
    def from_interfaces(cls, interfaces: Tensor, coordinate: str = "height") -> VerticalGrid:
        """Grid from ``level + 1`` interface coordinates (increasing or decreasing).

        Cell centres are interface midpoints, so widths are ``|diff(interfaces)|`` and centre
        distances ``|diff(centres)|``.

        Args:
            interfaces: Interface coordinates, shape ``(..., level + 1)``: heights in m,
                pressures in Pa, or nondimensional.
            coordinate: ``"height"``, ``"pressure"`` or ``"nondimensional"``.
        """
        if interfaces.ndim == 0 or interfaces.shape[-1] < 2:
            raise ValueError(
                "`interfaces` needs at least two entries along the last dimension (the bounds of "
                f"one cell); got shape {tuple(interfaces.shape)}."
            )
        interfaces = interfaces.detach()
        centres = 0.5 * (interfaces[..., 1:] + interfaces[..., :-1])
        return cls(
            cell_width=torch.diff(interfaces, dim=-1).abs(),
            center_distance=torch.diff(centres, dim=-1).abs(),
            coordinate=coordinate,
        )

    @classmethod
    def uniform(
        cls,
        levels: int,
        depth: float = 1.0,
        coordinate: str = "nondimensional",
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> VerticalGrid:
        """``levels`` equal cells spanning ``depth`` (B1: ``depth = 1``, nondimensional)."""
        check_count("levels", levels, 1)
        width = torch.full((levels,), depth / levels, dtype=dtype, device=device)
        return cls(cell_width=width, center_distance=width[1:].clone(), coordinate=coordinate)

    def to(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> VerticalGrid:
        """The same grid with tensors converted (like :meth:`torch.Tensor.to`)."""
        return VerticalGrid(
            self.cell_width.to(dtype=dtype, device=device),
            self.center_distance.to(dtype=dtype, device=device),
            self.coordinate,
        )


def pressure_coordinate_diffusivity(height_diffusivity: Tensor, air_density: Tensor) -> Tensor:
    """Diffusivity in pressure coordinates from one in height coordinates.

    With hydrostatic balance ``dp = -rho g dz``, mass-weighted diffusion
    ``dT/dt = (1/rho) d/dz(rho K dT/dz)`` becomes ``dT/dt = d/dp(K_p dT/dp)`` with
    ``K_p = (rho g)**2 K`` (e.g. Holtslag & Boville 1993, eq. A1, in flux form).

    Args:
        height_diffusivity: ``K`` in m2 s-1, shape ``(..., level)``.
        air_density: ``rho`` in kg m-3 at the same levels, broadcastable.

    Returns:
        ``K_p`` in Pa2 s-1, for a :class:`VerticalGrid` with ``coordinate="pressure"``.
    """
    return (air_density * float(gravity)) ** 2 * height_diffusivity


# --------------------------------------------------------------------------------------------------
# Kernels (pure torch; the autograd reference)
# --------------------------------------------------------------------------------------------------


def interface_conductance(diffusivity: Tensor, time_step: float, center_distance: Tensor) -> Tensor:
    """``g_{k+1/2} = dt (K_k + K_{k+1}) / (2 d_{k+1/2})``, shape ``(..., level - 1)``.

    Args:
        diffusivity: ``K`` at the levels, shape ``(..., level)``, coordinate units squared per s.
        time_step: ``dt`` in s (nondimensional in B1).
        center_distance: ``d_{k+1/2}``, shape ``(..., level - 1)``, coordinate units.

    Returns:
        Conductance in coordinate units (m for height coordinates).
    """
    interface_diffusivity = 0.5 * (diffusivity[..., 1:] + diffusivity[..., :-1])
    return time_step * interface_diffusivity / center_distance


def _coefficients_levels_first(
    conductance: Tensor, inverse_width: Tensor, batch_shape: torch.Size
) -> tuple[Tensor, Tensor, Tensor]:
    """The three diagonals, levels first ``(level, *batch)``, from ``g`` and ``1 / w``."""
    levels = inverse_width.shape[-1]
    inverse_width = inverse_width.expand(*batch_shape, levels).movedim(-1, 0)
    conductance = conductance.expand(*batch_shape, levels - 1).movedim(-1, 0)
    # Padding the conductance with the zero boundary fluxes g_{-1/2} = g_{L-1/2} = 0.
    below = torch.cat([torch.zeros_like(conductance[:1]), conductance]) if levels > 1 else None
    above = torch.cat([conductance, torch.zeros_like(conductance[:1])]) if levels > 1 else None
    if below is None or above is None:
        zeros = torch.zeros_like(inverse_width)
        return zeros, torch.ones_like(inverse_width), zeros
    lower = -(below * inverse_width).contiguous()
    upper = -(above * inverse_width).contiguous()
    diag = 1.0 - lower - upper
    return lower, diag, upper


def _batch_shape(temperature: Tensor, diffusivity: Tensor, grid: VerticalGrid) -> torch.Size:
    return torch.broadcast_shapes(
        temperature.shape[:-1],
        diffusivity.shape[:-1],
        grid.cell_width.shape[:-1],
        grid.center_distance.shape[:-1],
    )


def implicit_diffusion_kernel(
    temperature: Tensor,
    diffusivity: Tensor,
    time_step: float,
    cell_width: Tensor,
    center_distance: Tensor,
    steps: int = 1,
    reuse_factorization: bool = False,
) -> Tensor:
    """Reference kernel: ``steps`` backward-Euler steps, differentiable by plain autograd.

    Same equations and arguments as :func:`implicit_vertical_diffusion_steps` (without
    validation). With ``reuse_factorization=False`` every step factors and solves its tridiagonal
    system (B1's reference workload); with ``True`` the factors are computed once.

    Returns:
        The state after ``steps`` steps, shape ``(*batch, level)``.
    """
    batch_shape = torch.broadcast_shapes(
        temperature.shape[:-1],
        diffusivity.shape[:-1],
        cell_width.shape[:-1],
        center_distance.shape[:-1],
    )
    conductance = interface_conductance(diffusivity, time_step, center_distance)
    lower, diag, upper = _coefficients_levels_first(
        conductance, torch.reciprocal(cell_width), batch_shape
    )
    state = temperature.expand(*batch_shape, temperature.shape[-1]).movedim(-1, 0)
    factors = factor_levels_first(lower, diag, upper) if reuse_factorization else None
    for _ in range(steps):
        upper_ratio, inverse_pivot = (
            factors if factors is not None else factor_levels_first(lower, diag, upper)
        )
        state = solve_factored_levels_first(lower, upper_ratio, inverse_pivot, state)
    return state.movedim(0, -1)


# --------------------------------------------------------------------------------------------------
# Custom Functions
# --------------------------------------------------------------------------------------------------


def _diffusivity_gradient(
    conductance_gradient: Tensor, time_step: float, center_distance: Tensor, shape: torch.Size
) -> Tensor:
    """Chain ``dl/dg`` (``(..., level-1)``) through ``g = dt (K_k + K_{k+1}) / (2 d)`` to ``K``."""
    per_interface = conductance_gradient * (0.5 * time_step) / center_distance
    padded = torch.nn.functional.pad(per_interface, (1, 0)) + torch.nn.functional.pad(
        per_interface, (0, 1)
    )
    return padded.sum_to_size(shape)


_HUGE_PAGE = 2 * 1024 * 1024
_MADV_HUGEPAGE = 14  # Linux <sys/mman.h>


def _new_history(like: Tensor, steps: int) -> Tensor:
    """An uninitialised ``(steps, *like.shape)`` buffer for the saved states.

    The buffer holds every state of the march, so it is large and freshly mapped, and filling it
    costs one page fault per 4 KiB page, which on virtual machines rivals the solves themselves
    (see ``docs/benchmarks.md`` for the measured sizes). On Linux CPU tensors we ask for
    transparent huge pages (``madvise(MADV_HUGEPAGE)``, honoured when THP is in ``madvise`` or
    ``always`` mode), 512 times fewer faults; anywhere else this is a plain allocation.
    """
    history = like.new_empty((steps, *like.shape))
    nbytes = history.numel() * history.element_size()
    if (
        history.device.type != "cpu"
        or nbytes < 4 * _HUGE_PAGE
        or is_traced(history)  # no storage (and no pointer) while torch.compile traces
        or not _libc_madvise()
    ):
        return history
    start = (history.data_ptr() + _HUGE_PAGE - 1) // _HUGE_PAGE * _HUGE_PAGE
    end = (history.data_ptr() + nbytes) // _HUGE_PAGE * _HUGE_PAGE
    if end > start:
        _MADVISE[0](ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_HUGEPAGE)
    return history


_MADVISE: list[Any] = []


def _libc_madvise() -> bool:
    if not _MADVISE:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            madvise = libc.madvise
            madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            _MADVISE.append(madvise if sys.platform.startswith("linux") else None)
        except (OSError, AttributeError):
            _MADVISE.append(None)
    return _MADVISE[0] is not None


def _march(
    lower: Tensor,
    diag: Tensor,
    upper: Tensor,
    initial: Tensor,
    steps: int,
    reuse_factorization: bool,
    history: Tensor | None = None,
) -> Tensor:
    """``steps`` solves into preallocated buffers (levels first); not differentiable.

    With ``history`` (shape ``(steps, level, *batch)``) state ``n+1`` is written to ``history[n]``;
    without, two buffers alternate and only the final state survives. Buffers are allocated once
    because fresh multi-MiB allocations cost page faults at every step.
    """
    upper_ratio, inverse_pivot = torch.empty_like(diag), torch.empty_like(diag)
    if reuse_factorization:
        factor_levels_first(lower, diag, upper, out=(upper_ratio, inverse_pivot))
    alternating = None if history is not None else (torch.empty_like(diag), torch.empty_like(diag))
    state = initial
    for n in range(steps):
        if not reuse_factorization:
            factor_levels_first(lower, diag, upper, out=(upper_ratio, inverse_pivot))
        target = history[n] if history is not None else alternating[n % 2]  # type: ignore[index]
        state = solve_factored_levels_first(lower, upper_ratio, inverse_pivot, state, out=target)
    return state


class _ImplicitDiffusionStepsFunction(torch.autograd.Function):
    """``steps`` implicit diffusion steps; backward = adjoint recurrence of transposed solves.

    Outputs: the final state (levels last) and the history ``T^1 .. T^S`` (shape
    ``(S, level, *batch)``, non-differentiable), returned only so that it can be saved for the
    backward pass. The body writes into preallocated buffers, so there is no generated vmap rule;
    the function is batched over columns already.
    """

    @staticmethod
    def forward(
        temperature: Tensor,
        diffusivity: Tensor,
        cell_width: Tensor,
        center_distance: Tensor,
        time_step: float,
        steps: int,
        reuse_factorization: bool,
    ) -> tuple[Tensor, Tensor]:
        batch_shape = torch.broadcast_shapes(
            temperature.shape[:-1],
            diffusivity.shape[:-1],
            cell_width.shape[:-1],
            center_distance.shape[:-1],
        )
        conductance = interface_conductance(diffusivity, time_step, center_distance)
        lower, diag, upper = _coefficients_levels_first(
            conductance, torch.reciprocal(cell_width), batch_shape
        )
        # Contiguous levels-first copy: the compiled sweeps take contiguous rows only.
        initial = temperature.expand(*batch_shape, temperature.shape[-1]).movedim(-1, 0)
        initial = initial.contiguous()
        history = _new_history(diag, steps)
        _march(lower, diag, upper, initial, steps, reuse_factorization, history=history)
        return history[-1].movedim(0, -1), history

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        (temperature, diffusivity, cell_width, center_distance, time_step, _, reuse) = inputs
        history = output[1]
        ctx.mark_non_differentiable(history)
        # Otherwise autograd would hand backward a zero-filled gradient of the whole history.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(diffusivity, cell_width, center_distance, history)
        ctx.time_step = time_step
        ctx.reuse_factorization = reuse
        ctx.temperature_shape = temperature.shape

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: Any, grad_final: Tensor | None, grad_history: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        diffusivity, cell_width, center_distance, history = ctx.saved_tensors
        if grad_final is None:  # only the (non-differentiable) history was used
            return None, None, None, None, None, None, None
        time_step: float = ctx.time_step
        batch_shape = history.shape[2:]
        levels = history.shape[1]
        conductance = interface_conductance(diffusivity, time_step, center_distance)
        inverse_width = torch.reciprocal(cell_width)
        lower, diag, upper = _coefficients_levels_first(conductance, inverse_width, batch_shape)
        inverse_width_lf = inverse_width.expand(*batch_shape, levels).movedim(-1, 0).contiguous()
        upper_ratio, inverse_pivot = torch.empty_like(diag), torch.empty_like(diag)
        if ctx.reuse_factorization:
            factor_levels_first(lower, diag, upper, out=(upper_ratio, inverse_pivot))
        # One adjoint buffer, solved in place step after step: lam^n = A^{-T} lam^{n+1}.
        adjoint = grad_final.expand(*batch_shape, levels).movedim(-1, 0)
        adjoint = adjoint.clone(memory_format=torch.contiguous_format)  # never alias grad_final
        need_diffusivity = ctx.needs_input_grad[1] and levels > 1
        if need_diffusivity:
            accumulated = torch.zeros_like(diag[1:])
        for n in range(history.shape[0] - 1, -1, -1):
            if not ctx.reuse_factorization:
                factor_levels_first(lower, diag, upper, out=(upper_ratio, inverse_pivot))
            if need_diffusivity:
                # lam^n = A^{-T} lam^{n+1}, and with it
                # dl/dg_{k+1/2} -= (x_{k+1} - x_k)(lam_{k+1}/w_{k+1} - lam_k/w_k), x = T^{n+1}.
                solve_transposed_and_accumulate(
                    lower,
                    upper_ratio,
                    inverse_pivot,
                    adjoint,
                    history[n],
                    inverse_width_lf,
                    out=adjoint,
                    accumulated=accumulated,
                )
            else:
                solve_factored_transposed_levels_first(
                    lower, upper_ratio, inverse_pivot, adjoint, out=adjoint
                )
        grad_temperature = grad_diffusivity = None
        if ctx.needs_input_grad[0]:
            grad_temperature = adjoint.movedim(0, -1).sum_to_size(ctx.temperature_shape)
        if ctx.needs_input_grad[1]:
            if need_diffusivity:
                grad_diffusivity = _diffusivity_gradient(
                    -accumulated.movedim(0, -1), time_step, center_distance, diffusivity.shape
                )
            else:  # a single level: K has no effect
                grad_diffusivity = torch.zeros_like(diffusivity)
        return grad_temperature, grad_diffusivity, None, None, None, None, None


# --------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------


def _validate(
    temperature: Tensor, diffusivity: Tensor, time_step: float, grid: VerticalGrid
) -> None:
    for name, value in (("temperature", temperature), ("diffusivity", diffusivity)):
        check_floating(name, value)
        check_not_scalar(name, value, "the levels")
    named = {"temperature": temperature, "diffusivity": diffusivity, "grid": grid.cell_width}
    check_same_last_dimension(
        named,
        "levels",
        "Give one diffusivity per level (`diffusivity.expand(levels)` for a constant) and a grid "
        "with matching levels.",
    )
    check_same_dtype(named, "Convert with `.to(temperature.dtype)` / `grid.to(...)`.")
    check_same_device(named, "Move them with `.to(device)`.")
    check_positive("time_step", float(time_step), "s")
    check_broadcastable(
        {**named, "grid.center_distance": grid.center_distance},
        "Insert singleton dimensions with `unsqueeze` so the columns line up.",
    )
    check_positive(
        "diffusivity",
        diffusivity,
        "coordinate units squared per second",
        "Parameterise it as a positive quantity (e.g. exp or softplus of a raw parameter).",
        allow_zero=True,
    )


def implicit_vertical_diffusion_steps(
    temperature: Tensor,
    diffusivity: Tensor,
    time_step: float,
    steps: int,
    grid: VerticalGrid,
    reuse_factorization: bool = True,
) -> Tensor:
    """``steps`` backward-Euler steps of column diffusion with an adjoint backward.

    Solves ``(I - dt D_K) T^{n+1} = T^n`` for ``n = 0 .. steps-1`` (equations in the module
    docstring). The backward pass keeps only the ``steps`` states (one ``(*batch, level)`` tensor
    each) and runs ``lam^n = A^{-T} lam^{n+1}``; autograd through the kernel would instead keep
    every elimination step. Gradients reach ``temperature`` and ``diffusivity``.

    Args:
        temperature: Initial state ``T^0``, shape ``(*batch, level)`` (K, or any diffused tracer).
        diffusivity: ``K >= 0`` per level, shape ``(..., level)`` broadcastable to the batch (one
            profile shared by all columns, or one per column), in coordinate units squared per
            second (m2 s-1 for height, Pa2 s-1 for pressure; nondimensional for B1).
        time_step: ``dt`` in s (> 0; any size, the scheme is implicit).
        steps: Number of steps ``S >= 0``.
        grid: The column geometry (:class:`VerticalGrid`), same dtype and device.
        reuse_factorization: Factor the (fixed) matrix once and reuse it for every step and for the
            adjoint (faster). ``False`` factors at every step, as a model whose ``K`` depends on the
            state must (B1's reference workload); the result is the same.

    Returns:
        ``T^S``, shape ``(*batch, level)``.

    Under ``torch.func`` transforms (``vmap``, ``grad``) the pure kernel runs instead of the custom
    Function (same values; the transform differentiates through the elimination, with autograd's
    memory cost). The function is batched over leading dimensions already, so ``vmap`` is rarely
    needed.

    >>> import torch
    >>> grid = VerticalGrid.uniform(4)
    >>> temperature = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    >>> result = implicit_vertical_diffusion_steps(
    ...     temperature, torch.ones(4, dtype=torch.float64), 0.01, 10, grid)
    >>> round(float((result * grid.cell_width).sum()), 12)  # the column integral is conserved
    0.25
    """
    _validate(temperature, diffusivity, time_step, grid)
    check_count("steps", steps, 0)
    if steps == 0:
        batch_shape = _batch_shape(temperature, diffusivity, grid)
        return temperature.expand(*batch_shape, temperature.shape[-1]) + 0.0 * diffusivity.sum()
    if is_transformed(temperature, diffusivity):
        # Inside torch.func.vmap / grad: the buffered sweeps cannot run on wrapped tensors, so the
        # pure kernel runs instead and the transform differentiates or batches it.
        return implicit_diffusion_kernel(
            temperature,
            diffusivity,
            float(time_step),
            grid.cell_width,
            grid.center_distance,
            steps,
            reuse_factorization,
        )
    if not (torch.is_grad_enabled() and (temperature.requires_grad or diffusivity.requires_grad)):
        # Nothing to differentiate: march in two alternating buffers instead of keeping S states.
        with torch.no_grad():
            batch_shape = _batch_shape(temperature, diffusivity, grid)
            conductance = interface_conductance(diffusivity, float(time_step), grid.center_distance)
            lower, diag, upper = _coefficients_levels_first(
                conductance, torch.reciprocal(grid.cell_width), batch_shape
            )
            initial = temperature.expand(*batch_shape, temperature.shape[-1]).movedim(-1, 0)
            marched = _march(lower, diag, upper, initial.contiguous(), steps, reuse_factorization)
            return marched.movedim(0, -1)
    outputs = _ImplicitDiffusionStepsFunction.apply(
        temperature,
        diffusivity,
        grid.cell_width,
        grid.center_distance,
        float(time_step),
        steps,
        reuse_factorization,
    )
    final: Tensor = outputs[0]
    return final


def implicit_vertical_diffusion(
    temperature: Tensor, diffusivity: Tensor, time_step: float, grid: VerticalGrid
) -> Tensor:
    """One backward-Euler step of column diffusion (see :func:`implicit_vertical_diffusion_steps`).

    The backward pass saves only the new state (plus ``K`` and the grid) and costs one transposed
    tridiagonal solve.

    Args:
        temperature: ``T^n``, shape ``(*batch, level)``.
        diffusivity: ``K >= 0``, shape ``(..., level)``, coordinate units squared per second.
        time_step: ``dt`` in s.
        grid: Column geometry.

    Returns:
        ``T^{n+1}``, shape ``(*batch, level)``.
    """
    return implicit_vertical_diffusion_steps(temperature, diffusivity, time_step, 1, grid)


# --------------------------------------------------------------------------------------------------
# Process
# --------------------------------------------------------------------------------------------------


class VerticalDiffusion(Process):
    """Implicit vertical diffusion of one state variable with a learnable diffusivity profile.

    The tendency is the *implicit-step tendency* ``(T^{n+1} - T^n) / dt`` of one backward-Euler step
    of length ``time_step`` (module docstring): adding ``dt`` times it to the state reproduces the
    implicit step exactly, and it stays stable for any ``dt``, but it is not the instantaneous
    ``d/dz(K dT/dz)`` at ``T^n`` (the two agree as ``dt -> 0``).

    Args:
        grid: Column geometry (:class:`VerticalGrid`); stored as buffers.
        diffusivity: Initial ``K`` per level (> 0), shape ``(level,)`` or ``(column, level)``, in
            coordinate units squared per second (m2 s-1 for height coordinates). Learnable.
        time_step: ``dt`` in s of the implicit step.
        variable: State variable to diffuse (default ``"air_temperature"``, K).

    Learnable parameters:
        diffusivity: eddy diffusivity per level, m2 s-1 (height coordinates; Pa2 s-1 in pressure
            coordinates), positive. Stored as is for now; a constrained parameterisation replaces
            it later, and until then keep optimiser steps from crossing zero.

    Diagnostics:
        ``"<variable>_diffusive_flux"``: the down-gradient flux ``-K_{k+1/2} dT/dz`` at the
        ``level - 1`` interior interfaces after the step, in variable units times coordinate
        units per second (K m s-1 for temperature in height coordinates).

    >>> import torch
    >>> grid = VerticalGrid.from_interfaces(torch.linspace(0.0, 1000.0, 5, dtype=torch.float64))
    >>> process = VerticalDiffusion(grid, torch.full((4,), 10.0, dtype=torch.float64), 600.0)
    >>> temperature = torch.tensor([[300.0, 295.0, 290.0, 285.0]], dtype=torch.float64)
    >>> state = {"air_temperature": temperature}
    >>> tendencies, diagnostics = process(state)
    >>> abs(float((tendencies["air_temperature"] * grid.cell_width).sum().detach())) < 1e-9
    True
    """

    def __init__(
        self,
        grid: VerticalGrid,
        diffusivity: Tensor,
        time_step: float,
        variable: str = "air_temperature",
    ) -> None:
        super().__init__()
        diffusivity = torch.as_tensor(diffusivity).detach().clone()
        check_last_dimension("diffusivity", diffusivity, grid.levels, "levels (those of the grid)")
        check_positive(
            "diffusivity",
            diffusivity,
            "coordinate units squared per second",
            "Start from a positive profile; the learnable diffusivity is stored as is.",
        )
        check_positive("time_step", time_step, "s")
        self.diffusivity = nn.Parameter(diffusivity.to(grid.cell_width.dtype))
        self.register_buffer("cell_width", grid.cell_width.clone())
        self.register_buffer("center_distance", grid.center_distance.clone())
        self.coordinate = grid.coordinate
        self.time_step = float(time_step)
        self.variable = variable
        self.inputs = (variable,)

    @property
    def grid(self) -> VerticalGrid:
        """The column geometry, on the module's current device and dtype."""
        cell_width, center_distance = self.cell_width, self.center_distance
        assert isinstance(cell_width, Tensor) and isinstance(center_distance, Tensor)
        return VerticalGrid(cell_width, center_distance, self.coordinate)

    def forward(self, state: State) -> tuple[Tendencies, Diagnostics]:
        (temperature,) = self.require(state, self.variable)
        grid = self.grid
        diffusivity = self.diffusivity.to(temperature.dtype)
        if grid.cell_width.dtype != temperature.dtype:
            grid = grid.to(dtype=temperature.dtype)
        new_temperature = implicit_vertical_diffusion(
            temperature, diffusivity, self.time_step, grid
        )
        tendency = (new_temperature - temperature) / self.time_step
        interface_diffusivity = 0.5 * (diffusivity[..., 1:] + diffusivity[..., :-1])
        flux = -interface_diffusivity * torch.diff(new_temperature, dim=-1) / grid.center_distance
        return {self.variable: tendency}, {f"{self.variable}_diffusive_flux": flux}
