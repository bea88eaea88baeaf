"""Smoke test of the benchmark harness on B1: JSON shape and the reference gate (no timings)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
IMPLEMENTATION_KEYS = {
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


def _run_bench(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPOSITORY / "scripts" / "bench.py"), *arguments],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPOSITORY,
    )


@pytest.fixture(scope="module")
def small_b1() -> dict:
    completed = _run_bench("B1", "--size", "small", "--json", "--repeats", "2", "--threads", "1")
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout)


def test_json_has_the_documented_shape(small_b1: dict) -> None:
    assert small_b1["problem"] == "B1"
    assert small_b1["dtype"] == "float64"
    for key in ("cpu_model", "logical_cores", "torch_threads", "torch_version"):
        assert key in small_b1["machine"]
    assert small_b1["machine"]["torch_threads"] == 1
    implementations = [small_b1["custom"], small_b1["autograd"], *small_b1["variants"].values()]
    assert len(implementations) == 4
    for entry in implementations:
        assert IMPLEMENTATION_KEYS <= set(entry)
        assert entry["forward_s"] > 0 and entry["forward_backward_s"] > 0
        assert len(entry["forward"]["samples_s"]) == 2
        assert entry["grad_forward_ratio"]["median"] > 0
    assert "speedup_forward_backward" in small_b1["comparisons"]


def test_reference_check_passes(small_b1: dict) -> None:
    check = small_b1["reference_check"]
    assert check["passed"], {k: v for k, v in check["entries"].items() if not v["passed"]}
    entries = check["entries"]
    # The B1.7 values are reproduced at the defined size even when the timed size is small.
    assert entries["target T[2048,31]"]["relative_error"] <= 1e-9
    assert entries["custom: loss"]["relative_error"] <= 1e-9
    assert entries["custom: dT0[2048,31]"]["relative_error"] <= 1e-9
    assert entries["autograd: agrees with custom at size small"]["passed"]


def test_readable_table_and_unknown_problem(small_b1: dict) -> None:
    sys.path.insert(0, str(REPOSITORY / "scripts"))
    try:
        bench = importlib.import_module("bench")
        table = bench._table([small_b1])
    finally:
        sys.path.remove(str(REPOSITORY / "scripts"))
    assert "| B1 | float64 | custom |" in table
    assert "| B1 | float64 | autograd_factor_once |" in table
    assert "reference check: passed" in table
    unknown = _run_bench("B9")
    assert unknown.returncode != 0
    assert "invalid choice" in unknown.stderr
