"""Tests of scripts/bench/b2.py (benchmark B2): JSON shape at a small size; the gate (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
B2 = ROOT / "scripts" / "bench" / "b2.py"
BENCH = ROOT / "scripts" / "bench.py"
ENTRY_KEYS = {
    "forward_s",
    "forward_backward_s",
    "forward",
    "forward_backward",
    "grad_forward_ratio",
    "peak_memory_bytes",
    "peak_memory_forward_bytes",
    "saved_tensor_bytes",
    "first_call_s",
}


def run_json(command: list[str], timeout: float) -> tuple[int, Any]:
    completed = subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert completed.stdout, completed.stderr
    return completed.returncode, json.loads(completed.stdout)


def check_entry(entry: dict[str, Any]) -> None:
    assert ENTRY_KEYS <= set(entry)
    assert entry["forward_s"] > 0 and entry["forward_backward_s"] > 0
    assert entry["grad_forward_ratio"]["median"] > 0
    assert entry["saved_tensor_bytes"] > 0
    for key in ("forward", "forward_backward"):
        assert len(entry[key]["samples_s"]) == 1


def test_small_run_has_the_bench_json_shape() -> None:
    code, result = run_json(
        [
            str(B2),
            "--size",
            "small",
            "--skip-reference",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--json",
            "--implementations",
            "custom,autograd_matrix",
        ],
        timeout=300,
    )
    assert code == 0
    assert result["problem"] == "B2"
    assert result["dtype"] == "float64"
    assert result["size"]["columns"] == 64 and result["size"]["steps"] == 20
    assert result["reference_check"] == {"passed": True, "skipped": True, "entries": {}}
    assert result["machine"]["torch_threads"] == 1
    check_entry(result["custom"])
    check_entry(result["autograd"])
    assert result["autograd_implementation"] == "autograd_matrix"
    assert "speedup_forward_backward_vs_autograd_matrix" in result["comparisons"]


def test_small_custom_and_reference_kernels_agree() -> None:
    # In-process, tiny: the custom Functions and the reference kernels (recurrences) give the same
    # loss and gradients, so the timed variants solve the same problem.
    sys.path.insert(0, str(B2.parent))
    try:
        import b2
        import torch
    finally:
        sys.path.remove(str(B2.parent))
    problem = b2.build_problem(8, 6, 5, torch.float64, "cpu")
    problem.target = b2.make_target(problem) + 0.5
    values = {name: b2.loss_and_gradient(problem, name)[1]() for name in b2.IMPLEMENTATIONS}
    loss, gradient = values["custom"]
    for name in ("autograd", "autograd_matrix"):
        other_loss, other_gradient = values[name]
        torch.testing.assert_close(other_loss, loss, rtol=1e-12, atol=0.0)
        torch.testing.assert_close(other_gradient, gradient, rtol=1e-10, atol=1e-14)
    assert bool((gradient != 0).all())


@pytest.mark.slow
def test_reference_values_are_reproduced() -> None:
    """Full-size B2.7 gate for float64 and float32, every implementation (a few minutes)."""
    code, output = run_json(
        [
            str(BENCH),
            "B2",
            "--size",
            "small",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--json",
            "--dtype",
            "both",
        ],
        timeout=1800,
    )
    for result in output["runs"]:
        failed = [k for k, v in result["reference_check"]["entries"].items() if not v["passed"]]
        assert not failed, (result["dtype"], failed)
        names = " ".join(result["reference_check"]["entries"])
        for implementation in ("custom", "autograd", "autograd_matrix"):
            assert f"{implementation}: loss" in names
    assert code == 0
