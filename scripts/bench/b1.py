"""Benchmark B1 (docs/benchmark_problems.md): implicit vertical diffusion, N x L levels x S steps.

Implementations (all the same equations, climgrad.physics.diffusion):

``custom``
    :func:`implicit_vertical_diffusion_steps` with ``reuse_factorization=False``: a complete
    tridiagonal solve (factor + substitution) per column per step, as B1's reference workload asks;
    the backward is the adjoint recurrence (transposed solves) and keeps only the S states.
``autograd``
    The same kernel (:func:`implicit_diffusion_kernel`, complete solve per step) differentiated by
    plain autograd.
``custom_factor_once`` / ``autograd_factor_once`` (labelled variants, B1.6)
    The matrix is fixed within one forward evaluation, so it is factored once and the factors are
    reused for all S steps (and, in ``custom``, for the adjoint).

Each implementation reports the forward+backward / forward cost ratio paired per interleaved round,
from wall-clock times (``grad_forward_ratio``; its ``cpu_median`` is the same from CPU times) and
from process CPU times (``grad_forward_ratio_cpu``: median, min, max); ``comparisons`` lists both
medians for every implementation (``grad_forward_ratio_wall_cpu``, also in the readable output).
On a shared machine the CPU-time ratio leaves out the time a call waited for a core.

The correctness gate (B1.7) always runs at the defined size (N=4096, L=64, S=50), where the
reference values live; ``--size small`` shrinks only the timed problem.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from typing import Any

import common
import torch

from climgrad import tridiagonal
from climgrad.physics.diffusion import (
    VerticalGrid,
    implicit_diffusion_kernel,
    implicit_vertical_diffusion_steps,
)

SIZES = {
    "default": {"columns": 4096, "levels": 64, "steps": 50},
    "small": {"columns": 256, "levels": 64, "steps": 20},
}
TIME_STEP = 1.0e-3

TARGET_REFERENCE = {
    (0, 0): 0.721496150369,
    (0, -1): -0.858643260636,
    (-1, 0): 0.0129762289338,
    (-1, -1): -0.00954087546428,
    (2048, 31): 0.138707115334,
}
GRADIENT_REFERENCE = {
    "float64": {
        "loss": 0.00418375916367,
        "dK[0]": -1.40889908042e-06,
        "dK[16]": -0.000338440759946,
        "dK[32]": 4.99639290569e-05,
        "dK[63]": 2.87463598053e-06,
        "sum dK": 0.00491383349325,
        "|dT0|_F": 0.00010288540678,
        "dT0[0,0]": 1.98792765423e-07,
        "dT0[N-1,L-1]": 4.81037758534e-08,
        "dT0[2048,31]": -1.26783133867e-07,
    },
    "float32": {
        "loss": 0.00418371427804,
        "dK[0]": -1.40880626986e-06,
        "dK[16]": -0.000338442740031,
        "dK[32]": 4.99591478729e-05,
        "dK[63]": 2.8740801099e-06,
        "sum dK": 0.00491369041276,
        "|dT0|_F": 0.000102885008271,
        "dT0[0,0]": 1.98787944328e-07,
        "dT0[N-1,L-1]": 4.81038000544e-08,
        "dT0[2048,31]": -1.26790027366e-07,
    },
}
FLOAT64_TOLERANCE = 1e-9
# B1.7 float32 gate, against the float64 values: loss 1e-4; dK 1e-4 and dT0 1e-3 max-normalised.
FLOAT32_TOLERANCE = {"loss": 1e-4, "dK": 1e-4, "dT0": 1e-3}


class Problem:
    """Grids, initial state, target and parameters of B1 in one dtype (built once, untimed)."""

    def __init__(self, columns: int, levels: int, steps: int, dtype: torch.dtype, device: str):
        float64 = torch.float64
        self.columns, self.levels, self.steps = columns, levels, steps
        self.dtype = dtype
        dz = 1.0 / levels
        z = (torch.arange(levels, dtype=float64) + 0.5) * dz
        i = torch.arange(columns, dtype=float64)
        column_factor = 0.5 + (i + 0.5) / columns
        wavenumber = 1.0 + torch.remainder(torch.arange(columns), 4).to(float64)
        initial = torch.cos(math.pi * wavenumber[:, None] * z[None, :])
        true_diffusivity = 1.0 + 0.5 * torch.sin(2.0 * math.pi * z)
        grid64 = VerticalGrid.uniform(levels, dtype=float64, device=device)
        # The target is computed once in float64 (B1.4) and rounded for the float32 variant.
        with torch.no_grad():
            target = implicit_vertical_diffusion_steps(
                initial.to(device),
                column_factor.to(device)[:, None] * true_diffusivity.to(device),
                TIME_STEP,
                steps,
                grid64,
            )
        self.target64 = target
        self.grid = grid64.to(dtype=dtype)
        self.column_factor = column_factor.to(device=device, dtype=dtype)[:, None]
        self.initial = initial.to(device=device, dtype=dtype)
        self.target = target.to(dtype=dtype)
        self.diffusivity = torch.ones(levels, dtype=dtype, device=device)

    def loss_function(self, implementation: str) -> Callable[[Tensor, Tensor], Tensor]:
        """``loss(K, T0)`` for one implementation name (see the module docstring)."""
        reuse = implementation.endswith("factor_once")
        custom = implementation.startswith("custom")
        grid, steps = self.grid, self.steps

        def loss(diffusivity: Tensor, initial: Tensor) -> Tensor:
            column_diffusivity = self.column_factor * diffusivity
            if custom:
                final = implicit_vertical_diffusion_steps(
                    initial, column_diffusivity, TIME_STEP, steps, grid, reuse_factorization=reuse
                )
            else:
                final = implicit_diffusion_kernel(
                    initial,
                    column_diffusivity,
                    TIME_STEP,
                    grid.cell_width,
                    grid.center_distance,
                    steps,
                    reuse_factorization=reuse,
                )
            return torch.mean((final - self.target) ** 2)

        return loss

    def forward(self, implementation: str) -> Callable[[], Tensor]:
        loss = self.loss_function(implementation)

        def run() -> Tensor:
            with torch.no_grad():
                return loss(self.diffusivity, self.initial)

        return run

    def forward_backward(self, implementation: str) -> Callable[[], tuple[Tensor, ...]]:
        loss = self.loss_function(implementation)

        def run() -> tuple[Tensor, ...]:
            diffusivity = self.diffusivity.clone().requires_grad_(True)
            initial = self.initial.clone().requires_grad_(True)
            value = loss(diffusivity, initial)
            grad_diffusivity, grad_initial = torch.autograd.grad(value, (diffusivity, initial))
            return value.detach(), grad_diffusivity, grad_initial

        return run

    def loss_only_with_graph(self, implementation: str) -> Callable[[], Tensor]:
        """The forward half of forward+backward (graph recorded), for saved-tensor bytes."""
        loss = self.loss_function(implementation)

        def run() -> Tensor:
            return loss(
                self.diffusivity.clone().requires_grad_(True),
                self.initial.clone().requires_grad_(True),
            )

        return run


Tensor = torch.Tensor


def _gradient_summary(values: tuple[Tensor, ...]) -> dict[str, Tensor]:
    loss, grad_diffusivity, grad_initial = values
    return {
        "loss": loss,
        "dK[0]": grad_diffusivity[0],
        "dK[16]": grad_diffusivity[16],
        "dK[32]": grad_diffusivity[32],
        "dK[63]": grad_diffusivity[63],
        "sum dK": grad_diffusivity.sum(),
        "|dT0|_F": torch.linalg.vector_norm(grad_initial.double()),
        "dT0[0,0]": grad_initial[0, 0],
        "dT0[N-1,L-1]": grad_initial[-1, -1],
        "dT0[2048,31]": grad_initial[2048, 31],
    }


def _agreement_entry(
    got: tuple[Tensor, ...], want: tuple[Tensor, ...], dtype_name: str
) -> dict[str, Any]:
    """Max-normalised difference of (loss, dK, dT0) between two implementations at one size."""
    tolerances = (
        (FLOAT64_TOLERANCE,) * 3
        if dtype_name == "float64"
        else (FLOAT32_TOLERANCE["loss"], FLOAT32_TOLERANCE["dK"], FLOAT32_TOLERANCE["dT0"])
    )
    errors = [common.relative_error(g, w) for g, w in zip(got, want, strict=True)]
    return {
        "relative_error": max(errors),
        "relative_errors_loss_dK_dT0": errors,
        "tolerance": list(tolerances),
        "passed": all(math.isfinite(e) and e <= t for e, t in zip(errors, tolerances, strict=True)),
    }


def reference_check(
    dtype_name: str, device: str, implementations: list[str], timed_size: str
) -> dict[str, Any]:
    """B1.7 at the defined size: target entries, loss and gradients.

    With the default size every implementation is checked against the reference values. With
    ``--size small`` the two custom implementations are checked at the defined size and the
    autograd ones are checked against ``custom`` at the small size (agreement), to stay quick.
    """
    size = SIZES["default"]
    problem64 = Problem(size["columns"], size["levels"], size["steps"], torch.float64, device)
    entries: dict[str, Any] = {}
    for (i, k), reference in TARGET_REFERENCE.items():
        entries[f"target T[{i},{k}]"] = common.reference_entry(
            problem64.target64[i, k], reference, FLOAT64_TOLERANCE
        )
    full = [name for name in implementations if timed_size == "default" or "custom" in name]
    values64 = problem64.forward_backward("custom")()
    if dtype_name == "float64":
        for name in full:
            values = values64 if name == "custom" else problem64.forward_backward(name)()
            for quantity, value in _gradient_summary(values).items():
                entries[f"{name}: {quantity}"] = common.reference_entry(
                    value, GRADIENT_REFERENCE["float64"][quantity], FLOAT64_TOLERANCE
                )
    else:
        problem32 = Problem(size["columns"], size["levels"], size["steps"], torch.float32, device)
        _, grad_k64, grad_t64 = values64
        for name in full:
            loss32, grad_k32, grad_t32 = problem32.forward_backward(name)()
            entries[f"{name}: loss vs float64"] = common.reference_entry(
                loss32, GRADIENT_REFERENCE["float64"]["loss"], FLOAT32_TOLERANCE["loss"]
            )
            for label, got, want in (("dK", grad_k32, grad_k64), ("dT0", grad_t32, grad_t64)):
                error = common.relative_error(got, want)
                entries[f"{name}: {label} vs float64 (max-normalised)"] = {
                    "relative_error": error,
                    "tolerance": FLOAT32_TOLERANCE[label],
                    "passed": bool(math.isfinite(error) and error <= FLOAT32_TOLERANCE[label]),
                }
    if timed_size != "default":
        small = SIZES[timed_size]
        dtype = common.dtype_from_name(dtype_name)
        problem = Problem(small["columns"], small["levels"], small["steps"], dtype, device)
        reference_values = problem.forward_backward("custom")()
        for name in implementations:
            if name not in full:
                entries[f"{name}: agrees with custom at size {timed_size}"] = _agreement_entry(
                    problem.forward_backward(name)(), reference_values, dtype_name
                )
    return {"passed": all(entry["passed"] for entry in entries.values()), "entries": entries}


def _paired_cpu_ratio(numerator: common.Timing, denominator: common.Timing) -> dict[str, float]:
    """Median, min and max over rounds of the per-round ratio of process CPU times.

    On a shared machine the wall-clock ratio also counts the time each call waited for a core,
    which differs between the two calls of a round; CPU time counts only the work (one thread).
    """
    ratios = [
        n / d if d > 0 else math.nan
        for n, d in zip(numerator.cpu_samples, denominator.cpu_samples, strict=True)
    ]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def _implementation_entry(
    problem: Problem,
    name: str,
    timings: dict[str, common.Timing],
    first_call_s: float,
    device: str,
) -> dict[str, Any]:
    forward, forward_backward = timings[f"{name}/forward"], timings[f"{name}/forward_backward"]
    return {
        "forward_s": forward.median_s,
        "forward_backward_s": forward_backward.median_s,
        "forward_cpu_s": forward.cpu_median_s,
        "forward_backward_cpu_s": forward_backward.cpu_median_s,
        "forward": forward.as_dict(),
        "forward_backward": forward_backward.as_dict(),
        "grad_forward_ratio": common.paired_ratio(forward_backward, forward),
        "grad_forward_ratio_cpu": _paired_cpu_ratio(forward_backward, forward),
        "peak_memory_forward_bytes": common.peak_memory_bytes(problem.forward(name), device),
        "peak_memory_bytes": common.peak_memory_bytes(problem.forward_backward(name), device),
        "saved_tensor_bytes": common.saved_tensor_bytes(problem.loss_only_with_graph(name)),
        "first_call_s": first_call_s,
    }


def _native_info() -> dict[str, Any]:
    """Whether the compiled C sweeps (the extension ``climgrad._tridiagonal``) are used.

    The extension is built when climgrad is installed (pyproject.toml, optional); without a C
    compiler, or ``CLIMGRAD_NATIVE=0``, runs the eager torch sweeps instead.
    """
    path = tridiagonal.native_library_path()
    return {
        "available": tridiagonal.native_available(),
        "installed": path is not None,
        "module": str(path) if path else None,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run B1 for ``args.dtype`` (one of float32/float64); return the JSON-ready result."""
    dtype = common.dtype_from_name(args.dtype)
    size = SIZES[args.size]
    implementations = ["custom", "autograd", "custom_factor_once", "autograd_factor_once"]
    native = _native_info()
    check = reference_check(args.dtype, args.device, implementations, args.size)
    problem = Problem(size["columns"], size["levels"], size["steps"], dtype, args.device)
    first_calls = {
        name: common.first_call_seconds(problem.forward_backward(name), args.device)
        for name in implementations
    }
    functions: dict[str, Callable[[], Any]] = {}
    for name in implementations:
        functions[f"{name}/forward"] = problem.forward(name)
        functions[f"{name}/forward_backward"] = problem.forward_backward(name)
    timings = common.time_interleaved(
        functions, repeats=args.repeats, warmup=args.warmup, device=args.device
    )
    entries = {
        name: _implementation_entry(problem, name, timings, first_calls[name], args.device)
        for name in implementations
    }
    comparisons: dict[str, Any] = {
        # forward+backward / forward, paired per round, as wall-clock and as process-CPU ratios.
        "grad_forward_ratio_wall_cpu": {
            name: {
                "wall": round(entry["grad_forward_ratio"]["median"], 3),
                "cpu": round(entry["grad_forward_ratio_cpu"]["median"], 3),
            }
            for name, entry in entries.items()
        }
    }
    for suffix in ("", "_factor_once"):
        custom_fb = timings[f"custom{suffix}/forward_backward"]
        autograd_fb = timings[f"autograd{suffix}/forward_backward"]
        custom_memory = entries[f"custom{suffix}"]["peak_memory_bytes"]
        autograd_memory = entries[f"autograd{suffix}"]["peak_memory_bytes"]
        comparisons[f"speedup_forward_backward{suffix}"] = common.paired_ratio(
            autograd_fb, custom_fb
        )
        comparisons[f"memory_ratio{suffix}"] = (
            autograd_memory / custom_memory if custom_memory and autograd_memory else None
        )
        comparisons[f"saved_tensor_ratio{suffix}"] = (
            entries[f"autograd{suffix}"]["saved_tensor_bytes"]
            / entries[f"custom{suffix}"]["saved_tensor_bytes"]
        )
    return {
        "problem": "B1",
        "dtype": args.dtype,
        "device": args.device,
        "size": {**size, "time_step": TIME_STEP, "name": args.size},
        "repeats": args.repeats,
        "machine": common.machine_info(args.device),
        "reference_check": check,
        "custom": entries["custom"],
        "autograd": entries["autograd"],
        "variants": {
            "custom_factor_once": entries["custom_factor_once"],
            "autograd_factor_once": entries["autograd_factor_once"],
        },
        "comparisons": comparisons,
        "native_sweeps": native,
        "state_array_bytes": size["columns"] * size["levels"] * dtype.itemsize,
    }
