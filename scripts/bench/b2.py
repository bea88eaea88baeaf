"""Benchmark B2: gray radiative-convective columns (docs/benchmark_problems.md, section B2).

N independent columns of L layers and a surface slab, stepped S times by forward Euler with gray
two-stream longwave radiation, a bulk sensible heat flux and Betts-Miller convective relaxation;
the loss is the mean squared difference to a twin target, differentiated with respect to six
scalar parameters (tau0, n, albedo, Gamma_c in K/km, tau_c in hours, C_H).

Implementations compared (the same discretisation, B2.4, in every one):

``custom``
    climgrad's custom Functions: :func:`climgrad.physics.radiation.emission_operator` (heating rates
    and surface net flux as one linear operator of the emissions, built once per forward from the
    optical depth; fused backward),
    :func:`climgrad.physics.surface.sensible_heat_flux` and the Betts-Miller Function of
    :mod:`climgrad.physics.convection`; the time loop is recorded by autograd.
``autograd``
    The reference kernels under plain autograd: the two-stream recurrences
    (:func:`~climgrad.physics.radiation.gray_longwave_fluxes_kernel`), the sensible heat flux and
    Betts-Miller kernels. This is "the same kernels differentiated by plain autograd".
``autograd_matrix``
    Plain autograd through the same operator kernel
    (:func:`~climgrad.physics.radiation.emission_operator_kernel`) and the same surface and
    Betts-Miller kernels: the stronger autograd baseline, which isolates what the hand-written
    backwards add over autograd on the same closed form.

``run(args)`` returns one JSON-able dict; ``python scripts/bench.py B2 --json`` prints it.
Recommended on the shared 2-core reference machine: ``--threads 1`` (with 2 threads, each
elementwise op waits for a second core that other processes hold).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import common
import torch
from torch import Tensor

from climgrad.physics import convection, radiation, surface

# B2.2 constants (SI).
GRAVITY = 9.80665
HEAT_CAPACITY = 1004.0
GAS_CONSTANT = 287.04
SURFACE_PRESSURE = 1.0e5
AIR_DENSITY = 1.2
WIND_SPEED = 5.0
SURFACE_HEAT_CAPACITY = 1.0e7
SWITCH_WIDTH = 1.0
SOLAR = 340.0
S2 = -0.482
TIME_STEP = 3600.0

SIZES = {
    "default": {"columns": 1024, "levels": 40, "steps": 200},
    "small": {"columns": 64, "levels": 40, "steps": 20},
}
PARAMETER_NAMES = ("tau0", "n", "albedo", "lapse_rate_K_per_km", "tau_c_hours", "C_H")
TRUE_THETA = (4.0, 4.0, 0.30, 6.5, 4.0, 1.5e-3)
GUESS_THETA = (3.0, 3.5, 0.25, 5.5, 3.0, 1.0e-3)
IMPLEMENTATIONS = ("custom", "autograd", "autograd_matrix")

# B2.7 reference values (float64 target after S steps with the true parameters).
REFERENCE_TARGET = {
    "mean_T": 233.813831687,
    "mean_Ts": 283.1789394,
    "Ts[0]": 253.625611924,
    "Ts[512]": 297.659191593,
    "T[512,0]": 201.125261198,
    "T[512,20]": 244.122988145,
    "T[512,39]": 284.550537651,
    "T[0,39]": 246.744561023,
}
REFERENCE_LOSS = {"float64": 11.3016548689, "float32": 11.3016500473}
REFERENCE_GRADIENT = {
    "float64": (
        0.289147496775,
        -2.46756433399,
        -9.89902578575,
        -12.2471378226,
        -0.668836229999,
        4742.58679623,
    ),
    "float32": (
        0.289145380259,
        -2.46755290031,
        -9.89923477173,
        -12.2483482361,
        -0.668827533722,
        4742.75048828,
    ),
}
# Section 0.2 and B2.7 gates, always against the float64 values.
GATE = {"float64": {"loss": 1e-9, "gradient": 1e-9}, "float32": {"loss": 1e-5, "gradient": 2e-3}}


@dataclass
class Problem:
    """Grid, forcing, initial state and target of one B2 instance (built once, not timed)."""

    columns: int
    levels: int
    steps: int
    dtype: torch.dtype
    device: torch.device
    interface_pressure: Tensor  # (L+1,) Pa
    layer_pressure: Tensor  # (L,) Pa
    insolation: Tensor  # (N,) W m-2
    initial_temperature: Tensor  # (N, L) K
    initial_surface_temperature: Tensor  # (N,) K
    target: Tensor | None = None  # (N, L+1) K


def build_problem(
    columns: int, levels: int, steps: int, dtype: torch.dtype, device: torch.device | str
) -> Problem:
    """B2.1 grid and forcing and B2.5 initial state, built in float64 and rounded once."""
    device = torch.device(device)
    f64 = torch.float64
    index = torch.arange(columns, dtype=f64, device=device)
    x = -1.0 + (2.0 * index + 1.0) / columns
    p2 = (3.0 * x**2 - 1.0) / 2.0
    insolation = SOLAR * (1.0 + S2 * p2)
    interface = SURFACE_PRESSURE * torch.arange(levels + 1, dtype=f64, device=device) / levels
    middle = SURFACE_PRESSURE * (torch.arange(levels, dtype=f64, device=device) + 0.5) / levels
    surface_temperature = 250.0 + 40.0 * (1.0 - x**2)
    temperature = 200.0 + (surface_temperature[:, None] - 200.0) * middle / SURFACE_PRESSURE
    return Problem(
        columns,
        levels,
        steps,
        dtype,
        device,
        interface.to(dtype),
        middle.to(dtype),
        insolation.to(dtype),
        temperature.to(dtype),
        surface_temperature.to(dtype),
    )


def _optical_depth(problem: Problem, theta: Tensor) -> Tensor:
    return radiation.interface_optical_depth(
        problem.interface_pressure, theta[0], theta[1], SURFACE_PRESSURE
    )


def simulate(problem: Problem, theta: Tensor, implementation: str) -> Tensor:
    """Run S steps of B2.4 from the initial state; return ``X = [T, T_s]`` of shape (N, L+1)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"Unknown implementation {implementation!r}; use one of {IMPLEMENTATIONS}."
        )
    levels = problem.levels
    thickness = SURFACE_PRESSURE / levels
    heating_per_flux = GRAVITY / (HEAT_CAPACITY * thickness)  # K s-1 per W m-2
    tau = _optical_depth(problem, theta)
    albedo, lapse_km, tau_c_hours, exchange = theta[2], theta[3], theta[4], theta[5]
    kappa = GAS_CONSTANT * (lapse_km / 1000.0) / GRAVITY
    ratio = (problem.layer_pressure / problem.layer_pressure[-1]) ** kappa
    relaxation_time = 3600.0 * tau_c_hours
    shortwave = radiation.absorbed_shortwave(problem.insolation, albedo)
    temperature = problem.initial_temperature
    surface_temperature = problem.initial_surface_temperature
    wind, density, heat_capacity = (
        torch.tensor(value, dtype=problem.dtype, device=problem.device)
        for value in (WIND_SPEED, AIR_DENSITY, HEAT_CAPACITY)
    )

    thickness_profile = torch.full_like(problem.layer_pressure, thickness)
    if implementation == "autograd":

        def longwave(t: Tensor, ts: Tensor) -> tuple[Tensor, Tensor]:
            upward, downward = radiation.gray_longwave_fluxes_kernel(t, ts, tau)
            net = upward - downward
            return radiation.radiative_heating_rate(net, thickness_profile), net[:, -1]

    else:
        # Heating rates and the surface net flux are linear in the emissions: one operator,
        # built once per forward from the optical depth (autograd differentiates the build).
        operator = radiation.heating_rate_operator(
            radiation.transmission_matrices(tau), thickness_profile
        )
        apply_operator = (
            radiation.emission_operator
            if implementation == "custom"
            else radiation.emission_operator_kernel
        )

        def longwave(t: Tensor, ts: Tensor) -> tuple[Tensor, Tensor]:
            budget = apply_operator(t, ts, *operator)
            return budget[:, :levels], budget[:, levels]

    if implementation == "custom":

        def sensible(ts: Tensor, ta: Tensor) -> Tensor:
            return surface.sensible_heat_flux(ts, ta, wind, exchange, density)

        def convective(t: Tensor) -> Tensor:
            return convection.betts_miller_relaxation(t, ratio, relaxation_time, SWITCH_WIDTH)

    else:

        def sensible(ts: Tensor, ta: Tensor) -> Tensor:
            return surface.sensible_heat_flux_kernel(ts, ta, wind, exchange, density, heat_capacity)

        def convective(t: Tensor) -> Tensor:
            return convection.betts_miller_kernel(t, ratio, relaxation_time, SWITCH_WIDTH)

    for _ in range(problem.steps):
        heating, surface_net_longwave = longwave(temperature, surface_temperature)
        sensible_flux = sensible(surface_temperature, temperature[:, -1])
        # Sensible heating of the lowest layer only (B2.4 step 7), as a padded column.
        lowest = torch.nn.functional.pad(
            (sensible_flux * heating_per_flux)[:, None], (levels - 1, 0)
        )
        tendency = heating + lowest + convective(temperature)
        surface_tendency = (
            shortwave - surface_net_longwave - sensible_flux
        ) / SURFACE_HEAT_CAPACITY
        temperature = temperature + TIME_STEP * tendency
        surface_temperature = surface_temperature + TIME_STEP * surface_tendency
    return torch.cat([temperature, surface_temperature[:, None]], dim=1)


def loss_function(problem: Problem, theta: Tensor, implementation: str) -> Tensor:
    """B2.5 loss: mean over the N (L+1) entries of (X - X_tgt)^2, in K^2."""
    assert problem.target is not None
    state = simulate(problem, theta, implementation)
    return ((state - problem.target) ** 2).mean()


def make_target(problem: Problem) -> Tensor:
    """X_tgt from the true parameters, computed in float64 and rounded once (section 0.1)."""
    if problem.dtype == torch.float64:
        source = problem
    else:
        source = build_problem(
            problem.columns, problem.levels, problem.steps, torch.float64, problem.device
        )
    theta = torch.tensor(TRUE_THETA, dtype=torch.float64, device=problem.device)
    with torch.no_grad():
        return simulate(source, theta, "custom").to(problem.dtype)


def _validate_once(problem: Problem, theta: Tensor) -> None:
    """Run the public, validating entry points once on the initial state (outside the timing)."""
    tau = _optical_depth(problem, theta)
    radiation.gray_longwave_fluxes(
        problem.initial_temperature, problem.initial_surface_temperature, tau
    )
    convection.betts_miller_tendency(
        problem.initial_temperature,
        problem.layer_pressure,
        theta[3] / 1000.0,
        3600.0 * theta[4],
        SWITCH_WIDTH,
    )


def loss_and_gradient(
    problem: Problem, implementation: str
) -> tuple[Callable[[], Tensor], Callable[[], tuple[Tensor, Tensor]]]:
    """The two timed callables: forward (no grad) and forward+backward (loss, 6 gradients)."""
    guess = torch.tensor(GUESS_THETA, dtype=problem.dtype, device=problem.device)

    def forward() -> Tensor:
        with torch.no_grad():
            return loss_function(problem, guess, implementation)

    def forward_backward() -> tuple[Tensor, Tensor]:
        theta = guess.clone().requires_grad_(True)
        loss = loss_function(problem, theta, implementation)
        (gradient,) = torch.autograd.grad(loss, theta)
        return loss.detach(), gradient

    return forward, forward_backward


def reference_check(dtype_name: str, device: str, implementations: list[str]) -> dict[str, Any]:
    """B2.7 at the defined size: target entries (float64), loss and the six gradients.

    Every implementation is checked against the **float64** reference values with the gate of its
    dtype (section 0.2: 1e-9; B2.7 float32 gate: loss 1e-5, each gradient entry 2e-3).
    """
    size = SIZES["default"]
    dtype = common.dtype_from_name(dtype_name)
    problem = build_problem(size["columns"], size["levels"], size["steps"], dtype, device)
    problem.target = make_target(problem)
    entries: dict[str, Any] = {}
    if dtype_name == "float64":
        target = problem.target
        temperature, surface_temperature = target[:, :-1], target[:, -1]
        target_values = {
            "mean_T": temperature.mean(),
            "mean_Ts": surface_temperature.mean(),
            "Ts[0]": surface_temperature[0],
            "Ts[512]": surface_temperature[512],
            "T[512,0]": temperature[512, 0],
            "T[512,20]": temperature[512, 20],
            "T[512,39]": temperature[512, 39],
            "T[0,39]": temperature[0, 39],
        }
        for name, value in target_values.items():
            entries[f"target {name}"] = common.reference_entry(
                value, REFERENCE_TARGET[name], GATE["float64"]["loss"]
            )
    gate = GATE[dtype_name]
    for implementation in implementations:
        loss, gradient = loss_and_gradient(problem, implementation)[1]()
        entries[f"{implementation}: loss"] = common.reference_entry(
            loss, REFERENCE_LOSS["float64"], gate["loss"]
        )
        for index, name in enumerate(PARAMETER_NAMES):
            entries[f"{implementation}: dloss/d{name}"] = common.reference_entry(
                gradient[index], REFERENCE_GRADIENT["float64"][index], gate["gradient"]
            )
    return {"passed": all(entry["passed"] for entry in entries.values()), "entries": entries}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """B2 options for scripts/bench.py (idempotent)."""
    if "--skip-reference" in parser._option_string_actions:
        return
    parser.add_argument(
        "--skip-reference",
        action="store_true",
        help="B2: skip the full-size reference check (for quick shape tests; reported as skipped)",
    )
    parser.add_argument(
        "--implementations",
        default=",".join(IMPLEMENTATIONS),
        help=f"B2: comma-separated subset of {','.join(IMPLEMENTATIONS)} (custom is always run)",
    )


def _implementation_entry(
    problem: Problem,
    name: str,
    timings: dict[str, common.Timing],
    first_call_s: float,
    device: str,
) -> dict[str, Any]:
    forward_fn, forward_backward_fn = loss_and_gradient(problem, name)
    forward, forward_backward = timings[f"{name}/forward"], timings[f"{name}/forward_backward"]
    guess = torch.tensor(GUESS_THETA, dtype=problem.dtype, device=problem.device)

    def loss_with_graph() -> Tensor:
        return loss_function(problem, guess.clone().requires_grad_(True), name)

    return {
        "forward_s": forward.median_s,
        "forward_backward_s": forward_backward.median_s,
        "forward": forward.as_dict(),
        "forward_backward": forward_backward.as_dict(),
        "grad_forward_ratio": common.paired_ratio(forward_backward, forward),
        "peak_memory_forward_bytes": common.peak_memory_bytes(forward_fn, device),
        "peak_memory_bytes": common.peak_memory_bytes(forward_backward_fn, device),
        "saved_tensor_bytes": common.saved_tensor_bytes(loss_with_graph),
        "first_call_s": first_call_s,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run B2 for ``args.dtype``: reference check (full size), then timings at ``args.size``."""
    dtype = common.dtype_from_name(args.dtype)
    device = str(args.device)
    size = SIZES[getattr(args, "size", "default")]
    requested = str(getattr(args, "implementations", ",".join(IMPLEMENTATIONS))).split(",")
    unknown = sorted(set(requested) - set(IMPLEMENTATIONS))
    if unknown:
        raise SystemExit(f"Unknown B2 implementation(s) {unknown}; use {list(IMPLEMENTATIONS)}.")
    implementations = ["custom"] + [name for name in IMPLEMENTATIONS[1:] if name in requested]
    if getattr(args, "skip_reference", False):
        check: dict[str, Any] = {"passed": True, "skipped": True, "entries": {}}
    else:
        check = reference_check(args.dtype, device, implementations)
    problem = build_problem(size["columns"], size["levels"], size["steps"], dtype, device)
    problem.target = make_target(problem)
    _validate_once(problem, torch.tensor(GUESS_THETA, dtype=dtype, device=device))
    first_calls = {
        name: common.first_call_seconds(loss_and_gradient(problem, name)[1], device)
        for name in implementations
    }
    functions: dict[str, Callable[[], Any]] = {}
    for name in implementations:
        forward, forward_backward = loss_and_gradient(problem, name)
        functions[f"{name}/forward"] = forward
        functions[f"{name}/forward_backward"] = forward_backward
    timings = common.time_interleaved(
        functions, repeats=args.repeats, warmup=args.warmup, device=device
    )
    entries = {
        name: _implementation_entry(problem, name, timings, first_calls[name], device)
        for name in implementations
    }
    comparisons: dict[str, Any] = {}
    custom_fb = timings["custom/forward_backward"]
    for name in implementations[1:]:
        comparisons[f"speedup_forward_backward_vs_{name}"] = common.paired_ratio(
            timings[f"{name}/forward_backward"], custom_fb
        )
        custom_memory = entries["custom"]["peak_memory_bytes"]
        other_memory = entries[name]["peak_memory_bytes"]
        comparisons[f"memory_ratio_vs_{name}"] = (
            other_memory / custom_memory if custom_memory and other_memory else None
        )
        comparisons[f"saved_tensor_ratio_vs_{name}"] = (
            entries[name]["saved_tensor_bytes"] / entries["custom"]["saved_tensor_bytes"]
        )
    # The default entry "autograd" is the reference kernels; without it, the matrix kernel.
    baseline = "autograd" if "autograd" in entries else implementations[-1]
    return {
        "problem": "B2",
        "dtype": args.dtype,
        "device": device,
        "size": {**size, "time_step": TIME_STEP, "name": getattr(args, "size", "default")},
        "repeats": args.repeats,
        "machine": common.machine_info(device),
        "reference_check": check,
        "custom": entries["custom"],
        "autograd": entries[baseline],
        "autograd_implementation": baseline,
        "variants": {name: entries[name] for name in implementations[1:] if name != baseline},
        "comparisons": comparisons,
        "state_array_bytes": size["columns"] * size["levels"] * dtype.itemsize,
        "notes": [
            "custom: climgrad custom Functions (radiation.emission_operator with the heating-rate "
            "operator built once per forward, surface.sensible_heat_flux, "
            "convection.betts_miller_relaxation); autograd: reference kernels (two-stream "
            "recurrences, sensible heat flux and Betts-Miller kernels) under plain autograd; "
            "autograd_matrix: the same operator, surface and Betts-Miller kernels under plain "
            "autograd.",
        ],
    }


def main(argv: list[str] | None = None) -> int:
    """``python scripts/bench/b2.py [options]``: scripts/bench.py B2 with the B2 options.

    scripts/bench.py parses its own options before it asks the problem for extra ones, so B2's
    options (``--skip-reference``, ``--implementations``) are reachable through this entry point.
    """
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import bench

    base_parser = bench.build_parser

    def build_parser() -> argparse.ArgumentParser:
        parser = base_parser()
        add_arguments(parser)
        return parser

    bench.build_parser = build_parser
    status: int = bench.main(["B2", *(sys.argv[1:] if argv is None else argv)])
    return status


if __name__ == "__main__":
    raise SystemExit(main())
