"""``torch.compile`` of the model step (issue 14, ``trainer.compile``).

    python scripts/bench.py COMPILE                       # inductor, 5 repeats; table
    python scripts/bench.py COMPILE --backend aot_eager   # quick to compile
    python scripts/bench.py COMPILE --size small --json

Problems: ``EBM1D`` (90 bands, a batch of 4 states, semi-implicit steps of 4 days) and the gray
``SingleColumnModel`` (40 levels, 4 columns, hourly forward-Euler steps), each rolled out
``steps`` steps by :func:`climgrad.integrate.rollout` with the model's eager step and with the
step compiled by :meth:`climgrad.models.Model.compile_step` (what ``trainer.compile=true`` does).
Modes: ``forward`` (no gradient, as a spin-up runs) and ``forward+backward`` (the gradient of
the mean final temperature with respect to every learnable parameter).

Reported: the compile time, i.e. the first call of each mode's compiled rollout (compilation
and one rollout; the forward+backward mode compiles twice, for the first step's state that
needs no gradient and for the later ones that do); the steady-state time per step, eager and
compiled (medians of interleaved rounds, with min-max); and the eager/compiled ratio (the
median of per-round ratios: > 1 means compiled is faster). Reference check: the compiled
rollout gives the eager final state and gradients to 1e-10 relative.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import common
import torch

from climgrad.integrate import rollout
from climgrad.models import EBM1D, Model, SingleColumnModel

SIZES = {"default": 50, "small": 10}
BATCH = 4
EBM_TIME_STEP = 4 * 86400.0  # s
TOLERANCE = 1e-10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["inductor", "aot_eager", "eager"], default="inductor")


def _ebm(dtype: torch.dtype, device: str) -> tuple[Model, dict[str, torch.Tensor], Any]:
    model = EBM1D(heat_capacity=4.2e6, dtype=dtype, device=device)
    start = model.initial_state()["surface_temperature"]
    offsets = torch.linspace(-2.0, 2.0, BATCH, dtype=dtype, device=device).unsqueeze(-1)
    return model, {"surface_temperature": start + offsets}, lambda s: model.step(s, EBM_TIME_STEP)


def _column(dtype: torch.dtype, device: str) -> tuple[Model, dict[str, torch.Tensor], Any]:
    model = SingleColumnModel(40, dtype=dtype, device=device)
    state = model.initial_state(
        torch.linspace(290.0, 300.0, BATCH, dtype=dtype, device=device),
        torch.linspace(200.0, 350.0, BATCH, dtype=dtype, device=device),
    )
    return model, state, lambda s: model.step(s)


PROBLEMS: dict[str, Callable[[torch.dtype, str], tuple[Model, dict[str, torch.Tensor], Any]]] = {
    "EBM1D": _ebm,
    "SingleColumnModel(40)": _column,
}


def _rollout(
    model: Model, state: dict[str, torch.Tensor], step: Any, steps: int, backward: bool
) -> list[torch.Tensor]:
    """Final temperatures, and with ``backward`` the parameter gradients of their mean."""
    if not backward:
        with torch.no_grad():
            final, _ = rollout(step, state, steps)
        return [final["surface_temperature"]]
    final, _ = rollout(step, state, steps, parameters=model.parameters())
    loss = final["surface_temperature"].mean()
    if "air_temperature" in final:
        loss = loss + final["air_temperature"].mean()
    gradients = torch.autograd.grad(loss, model.learnable_parameters(), allow_unused=True)
    return [final["surface_temperature"].detach(), *(g for g in gradients if g is not None)]


def _measure(name: str, args: argparse.Namespace, steps: int) -> dict[str, Any]:
    dtype = common.dtype_from_name(args.dtype)
    model, state, step = PROBLEMS[name](dtype, args.device)
    eager_model, eager_state, eager_step = PROBLEMS[name](dtype, args.device)
    (compiled_step,) = model.compile_step(args.backend)
    torch._dynamo.reset()
    modes: dict[str, Any] = {}
    worst = 0.0
    for mode, backward in (("forward", False), ("forward+backward", True)):

        def eager(backward: bool = backward) -> list[torch.Tensor]:
            return _rollout(eager_model, eager_state, eager_step, steps, backward)

        def compiled(backward: bool = backward) -> list[torch.Tensor]:
            return _rollout(model, state, step, steps, backward)

        first = common.first_call_seconds(compiled, args.device)
        for value, reference in zip(compiled(), eager(), strict=True):
            worst = max(worst, common.relative_error(value, reference))
        timings = common.time_interleaved(
            {"eager": eager, "compiled": compiled}, args.repeats, args.warmup, args.device
        )
        per_step = {
            key: {k: v / steps for k, v in timing.milliseconds().items()}
            for key, timing in timings.items()
        }
        modes[mode] = {
            "compile_first_call_s": first,
            "per_step_ms": per_step,
            "eager_over_compiled": common.paired_ratio(timings["eager"], timings["compiled"]),
        }
    return {
        "steps": steps,
        "compilations": compiled_step.compilations,
        "fallback": compiled_step.fallback,
        "modes": modes,
        "max_relative_difference": worst,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    steps = SIZES[args.size]
    problems = {name: _measure(name, args, steps) for name in PROBLEMS}
    worst = max(p["max_relative_difference"] for p in problems.values())
    return {
        "problem": "COMPILE",
        "backend": args.backend,
        "dtype": args.dtype,
        "size": args.size,
        "machine": common.machine_info(args.device),
        "problems": problems,
        "reference_check": {
            "passed": worst <= TOLERANCE,
            "max_relative_difference_to_eager": worst,
            "entries": {},
        },
    }


def format_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        for name, problem in result["problems"].items():
            for mode, entry in problem["modes"].items():
                eager, compiled = entry["per_step_ms"]["eager"], entry["per_step_ms"]["compiled"]
                ratio = entry["eager_over_compiled"]
                rows.append(
                    [
                        name,
                        mode,
                        f"{entry['compile_first_call_s']:.1f}",
                        f"{eager['median']:.3f} ({eager['min']:.3f}-{eager['max']:.3f})",
                        f"{compiled['median']:.3f} ({compiled['min']:.3f}-{compiled['max']:.3f})",
                        f"{ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f})",
                    ]
                )
    columns = [
        "model",
        "mode",
        "compile s (1st call)",
        "eager ms/step",
        "compiled ms/step",
        "eager/compiled",
    ]
    lines = [common.format_table(rows, columns)]
    for result in results:
        machine = result["machine"]
        lines.append(
            f"\nCOMPILE {result['dtype']}, backend {result['backend']}, size {result['size']}, "
            f"on {machine['cpu_model']} ({machine['torch_threads']} threads, torch "
            f"{machine['torch_version']}, device {machine['device']}); compiled = eager to "
            f"{result['reference_check']['max_relative_difference_to_eager']:.1e}"
        )
    return "\n".join(lines)
