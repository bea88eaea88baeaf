"""Benchmark RRTMG: the single column with RRTMG radiation against the gray column.

Both columns are :class:`climgrad.models.column.SingleColumnModel` at Darwin on 22 January
(daily-mean insolation, the TWP-ICE set-up of the dry ``model=column_rrtmg``), with the same
levels, convection and surface; only the radiation differs (``radiation="rrtmg"``: AFGL tropical
ozone and gases, AFGL humidity times ``humidity_scale``; ``radiation="gray"``: the gray two-stream
scheme). The learnable parameters are those of the experiments (RRTMG: surface albedo, humidity
scale, critical lapse rate; gray: optical depth, its exponent, critical lapse rate).

Measured, per pass (medians over ``--repeats`` interleaved rounds):

``tendency``
    One evaluation of all tendencies (forward) and the gradient of a weighted sum of them with
    respect to the parameters and the temperature profile (backward): the cost of one explicit
    time step and of its reverse pass.
``equilibrium``
    One calibration step's solve: Newton from the previous equilibrium after a small parameter
    change (forward; its Jacobian by one batched forward-mode product) and the implicit gradient
    (backward: one Jacobian at the solution and one adjoint solve).

For each pass: wall time, the RRTMG calls (longwave + shortwave, ``ExternalFunction.calls``), the
time inside the Fortran (climt's components, timed around the kernel) and the rest (torch,
argument marshalling, finite-difference bookkeeping). The reference check asserts that the
backward's calls do not depend on the number of columns and that the equilibria converge.

Usage: ``python scripts/bench.py RRTMG [--size small] [--repeats 5] [--json]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import common
import torch

from climgrad.data.afgl import read_afgl
from climgrad.integrate import EquilibriumInfo
from climgrad.models.column import SingleColumnModel
from climgrad.physics.insolation import daily_mean_cosine_zenith, daily_mean_insolation

REPO = Path(__file__).resolve().parents[2]
TROPICAL = read_afgl(REPO / "data/single_column/afgl_standard_atmospheres/tropical.dat")
SIZES = {"default": {"levels": 40}, "small": {"levels": 20}}
LEARN = {
    "rrtmg": ("surface_albedo", "humidity_scale", "critical_lapse_rate"),
    "gray": ("surface_optical_depth", "pressure_exponent", "critical_lapse_rate"),
}


class TimedKernel:
    """Wraps an RRTMG kernel and adds up the seconds spent inside it."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.seconds = 0.0

    def __call__(self, *arrays: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.kernel(*arrays)
        finally:
            self.seconds += time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kernel, name)


def build(radiation: str, levels: int) -> SingleColumnModel:
    options: dict[str, Any] = {"learn": LEARN[radiation]}
    if radiation == "rrtmg":
        options.update(
            background=TROPICAL, surface_albedo=0.4, mole_fractions={"carbon_dioxide": 381.9e-6}
        )
    model = SingleColumnModel(levels, radiation=radiation, **options)
    if radiation == "rrtmg":
        for band in ("longwave", "shortwave"):
            operator = model.processes[band].operator
            operator.fn = TimedKernel(operator.fn)
    return model


def darwin_state(model: SingleColumnModel, columns: int = 1) -> dict[str, torch.Tensor]:
    latitude = torch.full((columns,), -12.4, dtype=torch.float64)
    day = torch.full((columns,), 22.0, dtype=torch.float64)
    extra = {}
    if model.radiation == "rrtmg":
        extra["cosine_solar_zenith_angle"] = daily_mean_cosine_zenith(latitude, day)
    return model.initial_state(
        torch.full((columns,), 300.0, dtype=torch.float64),
        daily_mean_insolation(latitude, day),
        **extra,
    )


def _operators(model: SingleColumnModel) -> list[Any]:
    if model.radiation != "rrtmg":
        return []
    return [model.processes[band].operator for band in ("longwave", "shortwave")]


def _counters(model: SingleColumnModel) -> tuple[int, float]:
    calls = sum(op.calls.total for op in _operators(model))
    seconds = sum(op.fn.seconds for op in _operators(model))
    return calls, seconds


def measured(model: SingleColumnModel, function: Any) -> dict[str, float]:
    """Wall time, RRTMG calls and seconds inside RRTMG of one call of ``function``."""
    calls, inside = _counters(model)
    start = time.perf_counter()
    function()
    wall = time.perf_counter() - start
    calls_after, inside_after = _counters(model)
    return {"wall_s": wall, "rrtmg_calls": calls_after - calls, "rrtmg_s": inside_after - inside}


def _tendency_passes(model: SingleColumnModel, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    weights = torch.linspace(0.5, 1.5, model.levels, dtype=torch.float64)
    holder: dict[str, Any] = {}

    def forward() -> None:
        temperature = state["air_temperature"].clone().requires_grad_()
        tendencies, _ = model({**state, "air_temperature": temperature})
        holder["loss"] = (weights * tendencies["air_temperature"]).sum() + tendencies[
            "surface_temperature"
        ].sum()

    def backward() -> None:
        holder["loss"].backward()

    model.zero_grad()
    return {"forward": measured(model, forward), "backward": measured(model, backward)}


def _equilibrium_passes(
    model: SingleColumnModel, state: dict[str, torch.Tensor], sign: float
) -> dict[str, Any]:
    holder: dict[str, Any] = {}
    info = EquilibriumInfo()
    parameter = next(p for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        parameter += sign * 0.01  # a calibration step's change (raw units)

    def forward() -> None:
        equilibrium = model.equilibrium(state, spin_up_steps=0, info=info)
        holder["loss"] = (
            equilibrium["air_temperature"].mean() + equilibrium["surface_temperature"].mean()
        )
        holder["state"] = {k: equilibrium[k].detach() for k in equilibrium}

    def backward() -> None:
        holder["loss"].backward()

    model.zero_grad()
    result = {"forward": measured(model, forward), "backward": measured(model, backward)}
    result["newton_iterations"] = info.iterations
    result["residual_K_per_day"] = info.residual
    state.update({k: holder["state"][k] for k in ("air_temperature", "surface_temperature")})
    return result


def _median_entry(samples: list[dict[str, float]]) -> dict[str, float]:
    keys = samples[0].keys()
    entry = {key: statistics.median(s[key] for s in samples) for key in keys}
    entry["rest_s"] = entry["wall_s"] - entry["rrtmg_s"]
    entry["rrtmg_share"] = entry["rrtmg_s"] / entry["wall_s"] if entry["wall_s"] else 0.0
    entry["samples"] = len(samples)
    return entry


def _backward_calls(levels: int, columns: int) -> int:
    model = build("rrtmg", levels)
    state = darwin_state(model, columns)
    passes = _tendency_passes(model, state)
    return int(passes["backward"]["rrtmg_calls"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.dtype != "float64":
        raise SystemExit("RRTMG runs in float64 (its probes do anyway); use --dtype float64.")
    if args.device != "cpu":
        raise SystemExit("RRTMG is CPU Fortran; its column runs on --device cpu.")
    levels = SIZES[args.size]["levels"]
    results: dict[str, Any] = {}
    cold: dict[str, float] = {}
    models, states = {}, {}
    for radiation in ("gray", "rrtmg"):
        model = build(radiation, levels)
        state = darwin_state(model)
        start = time.perf_counter()
        with torch.no_grad():
            spun = model.equilibrium(state, spin_up_steps=300)
        cold[radiation] = time.perf_counter() - start
        state.update({k: spun[k].detach() for k in ("air_temperature", "surface_temperature")})
        models[radiation], states[radiation] = model, state
    samples: dict[str, dict[str, list[dict[str, float]]]] = {
        r: {
            "tendency_forward": [],
            "tendency_backward": [],
            "equilibrium_forward": [],
            "equilibrium_backward": [],
        }
        for r in models
    }
    iterations: dict[str, list[int]] = {r: [] for r in models}
    for repeat in range(args.warmup + args.repeats):
        for radiation, model in models.items():  # interleaved rounds
            tendency = _tendency_passes(model, states[radiation])
            solve = _equilibrium_passes(model, states[radiation], 1.0 if repeat % 2 else -1.0)
            if repeat < args.warmup:
                continue
            bucket = samples[radiation]
            bucket["tendency_forward"].append(tendency["forward"])
            bucket["tendency_backward"].append(tendency["backward"])
            bucket["equilibrium_forward"].append(solve["forward"])
            bucket["equilibrium_backward"].append(solve["backward"])
            iterations[radiation].append(int(solve["newton_iterations"]))
    for radiation in models:
        results[radiation] = {
            name: _median_entry(values) for name, values in samples[radiation].items()
        }
        results[radiation]["newton_iterations_median"] = statistics.median(iterations[radiation])
        results[radiation]["cold_equilibrium_s"] = cold[radiation]
    one, many = _backward_calls(levels, 1), _backward_calls(levels, 8)
    ratios = {
        name: results["rrtmg"][name]["wall_s"] / results["gray"][name]["wall_s"]
        for name in samples["rrtmg"]
    }
    return {
        "problem": "RRTMG",
        "dtype": args.dtype,
        "size": args.size,
        "levels": levels,
        "machine": common.machine_info(args.device),
        "gray": results["gray"],
        "rrtmg": results["rrtmg"],
        "comparisons": {"rrtmg_over_gray_wall": ratios},
        "reference_check": {
            "passed": one == many and all(n < 30 for n in iterations["rrtmg"]),
            "entries": {
                "backward_calls_independent_of_columns": {
                    "passed": one == many,
                    "value": {"1 column": one, "8 columns": many},
                },
                "equilibria_converge": {
                    "passed": all(n < 30 for n in iterations["rrtmg"]),
                    "value": iterations["rrtmg"],
                },
            },
        },
    }


def format_table(results: list[dict[str, Any]]) -> str:
    lines = []
    for result in results:
        rows = []
        for radiation in ("gray", "rrtmg"):
            entry = result[radiation]
            for name in (
                "tendency_forward",
                "tendency_backward",
                "equilibrium_forward",
                "equilibrium_backward",
            ):
                value = entry[name]
                rows.append(
                    [
                        radiation,
                        name.replace("_", " "),
                        f"{1e3 * value['wall_s']:.1f}",
                        f"{value['rrtmg_calls']:.0f}",
                        f"{1e3 * value['rrtmg_s']:.1f}",
                        f"{1e3 * value['rest_s']:.1f}",
                        f"{100 * value['rrtmg_share']:.0f} %",
                    ]
                )
        lines.append(
            common.format_table(
                rows,
                ("radiation", "pass", "wall ms", "RRTMG calls", "in RRTMG ms", "rest ms", "share"),
            )
        )
        machine = result["machine"]
        lines.append(
            f"\nRRTMG column, {result['levels']} levels, 1 column, float64, medians of "
            f"{result['rrtmg']['tendency_forward']['samples']} interleaved rounds on "
            f"{machine['cpu_model']} ({machine['torch_threads']} torch threads, torch "
            f"{machine['torch_version']})"
        )
        lines.append(
            "  Newton iterations per warm solve (median): gray "
            f"{result['gray']['newton_iterations_median']}, rrtmg "
            f"{result['rrtmg']['newton_iterations_median']}; cold equilibrium (300 spin-up steps "
            f"+ Newton): gray {result['gray']['cold_equilibrium_s']:.1f} s, rrtmg "
            f"{result['rrtmg']['cold_equilibrium_s']:.1f} s"
        )
        ratios = ", ".join(
            f"{k.replace('_', ' ')} {v:.1f}x"
            for k, v in result["comparisons"]["rrtmg_over_gray_wall"].items()
        )
        lines.append(f"  RRTMG / gray wall time: {ratios}")
        check = result["reference_check"]["entries"]
        lines.append(
            "  backward calls, 1 vs 8 columns: "
            f"{check['backward_calls_independent_of_columns']['value']}; reference check: "
            f"{'passed' if result['reference_check']['passed'] else 'FAILED'}"
        )
    return "\n".join(lines)
