"""Rollout memory: gradient checkpointing in ``climgrad.integrate.rollout`` (issue 4).

    python scripts/bench.py ROLLOUT            # 10,000 steps; table
    python scripts/bench.py ROLLOUT --json     # one JSON object
    python scripts/bench.py ROLLOUT --size small

Problem: ``EBM1D`` (90 bands, a batch of 4 independent states, 1 m mixed layer) stepped
semi-implicitly (explicit radiation, backward-Euler diffusion) for T steps of 1/90 year; the loss is
the mean final temperature; the gradient is taken with respect to every learnable parameter.
Variants: the whole graph kept (``k = none``) and checkpoint segments of k = 100 ≈ √T steps.
Reported per variant: the bytes autograd saves for the backward pass during the forward
(deterministic), the peak-RSS growth of one forward+backward (docs/benchmark_problems.md 0.4) and
the wall time of that one call (a single sample: a 10,000-step rollout is long, and memory is the
subject). Expected: saved bytes ∝ T without
checkpointing, ∝ T/k (segment boundaries) with it, plus one segment of ~k steps recomputed at a
time during the backward, so peak memory ~ T/k + k; time grows by about one extra forward.

The "reference check" here is that every variant gives the same loss and gradients as the plain
rollout (to 1e-12 relative), since checkpointing must not change the result.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import common
import torch

from climgrad.integrate import rollout
from climgrad.models import EBM1D

SIZES = {
    "default": {"steps": 10_000, "segments": [100]},
    "small": {"steps": 400, "segments": [20]},
}
BATCH = 4
TIME_STEP = 365.2422 * 86400 / 90  # s


def _problem(dtype: torch.dtype, device: str) -> tuple[EBM1D, dict[str, torch.Tensor]]:
    model = EBM1D(heat_capacity=4.2e6, dtype=dtype, device=device)
    start = model.initial_state()["surface_temperature"]
    offsets = torch.linspace(-2.0, 2.0, BATCH, dtype=dtype, device=device).unsqueeze(-1)
    return model, {"surface_temperature": start + offsets}


def _loss_and_gradients(
    model: EBM1D, state: dict[str, torch.Tensor], steps: int, every: int | None
) -> tuple[float, list[torch.Tensor]]:
    final, _ = rollout(
        lambda s: model.step(s, TIME_STEP),
        state,
        steps,
        checkpoint_every=every,
        parameters=model.parameters(),
    )
    loss = final["surface_temperature"].mean()
    parameters = model.learnable_parameters()
    gradients = torch.autograd.grad(loss, parameters)
    return float(loss), [g.detach() for g in gradients]


def run(args: argparse.Namespace) -> dict[str, Any]:
    dtype = common.dtype_from_name(args.dtype)
    size = SIZES[args.size]
    steps = size["steps"]
    model, state = _problem(dtype, args.device)
    variants: dict[str, int | None] = {"none": None}
    variants.update({f"k={k}": k for k in size["segments"]})

    reference_loss, reference_gradients = _loss_and_gradients(model, state, steps, None)
    entries: dict[str, Any] = {}
    worst = 0.0
    for name, every in variants.items():

        def forward_backward(every: int | None = every) -> tuple[float, list[torch.Tensor]]:
            return _loss_and_gradients(model, state, steps, every)

        def forward_with_graph(every: int | None = every) -> None:
            final, _ = rollout(
                lambda s: model.step(s, TIME_STEP),
                state,
                steps,
                checkpoint_every=every,
                parameters=model.parameters(),
            )
            final["surface_temperature"].mean()

        # One measured call each: a 10,000-step rollout is long, and memory is the subject here
        # (the time of that call is reported as a single sample, not a median).
        start = time.perf_counter()
        peak = common.peak_memory_bytes(forward_backward, args.device)
        seconds = time.perf_counter() - start
        loss, gradients = forward_backward()
        errors = [abs(loss - reference_loss) / abs(reference_loss)] + [
            common.relative_error(g, r) for g, r in zip(gradients, reference_gradients)
        ]
        worst = max(worst, *errors)
        entries[name] = {
            "checkpoint_every": every,
            "saved_tensor_bytes": common.saved_tensor_bytes(forward_with_graph),
            "peak_memory_bytes": peak,
            "forward_backward_s_single_run": seconds,
        }
    return {
        "problem": "ROLLOUT",
        "dtype": args.dtype,
        "size": args.size,
        "steps": steps,
        "state_shape": [BATCH, 90],
        "machine": common.machine_info(args.device),
        "variants": entries,
        "reference_check": {
            "passed": worst <= 1e-12,
            "max_relative_difference_to_plain_rollout": worst,
            "entries": {},
        },
    }


def format_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        for name, entry in result["variants"].items():
            rows.append(
                [
                    name,
                    result["dtype"],
                    f"{entry['forward_backward_s_single_run']:.1f}",
                    common.mebibytes(entry["saved_tensor_bytes"]),
                    common.mebibytes(entry["peak_memory_bytes"]),
                ]
            )
    columns = [
        "checkpoint",
        "dtype",
        "forward+backward s (1 run)",
        "saved MiB",
        "peak MiB fwd+bwd",
    ]
    lines = [common.format_table(rows, columns)]
    for result in results:
        machine = result["machine"]
        lines.append(
            f"\nROLLOUT {result['dtype']}: EBM1D, {result['steps']} steps, state "
            f"{result['state_shape']}, on {machine['cpu_model']} ({machine['torch_threads']} "
            f"threads, torch {machine['torch_version']}); same result as the plain rollout to "
            f"{result['reference_check']['max_relative_difference_to_plain_rollout']:.1e}"
        )
    return "\n".join(lines)
