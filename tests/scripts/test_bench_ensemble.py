"""Smoke test of scripts/bench/ensemble.py (python scripts/bench.py ENSEMBLE) at the small size.

No timing assertions (the machine is shared): the JSON shape, and that J parameter sets solved in
one call equal J separate calls (the benchmark's reference check, 1e-10).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ensemble_benchmark_checks_batched_against_looped() -> None:
    command = [str(ROOT / "scripts" / "bench.py"), "ENSEMBLE", "--size", "small"]
    completed = subprocess.run(
        [sys.executable, *command, "--repeats", "1", "--members", "3", "--json", "--threads", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = json.loads(completed.stdout)
    assert result["problem"] == "ENSEMBLE" and result["members"] == 3
    check = result["reference_check"]
    assert check["passed"], check
    for model in ("ebm1d", "two_layer"):
        for quantity in ("values", "gradients"):
            assert (
                check["entries"][f"{model}: batched = looped, {quantity}"]["relative_error"]
                <= 1e-10
            )
        entry = result[model]
        assert entry["members"] == 3
        for kind in ("single", "batched", "looped"):
            assert entry["forward_backward_ms"][kind]["median"] > 0
        assert entry["batched_over_single"]["median"] > 0
        assert entry["looped_over_batched"]["median"] > 0


def test_ensemble_table_names_both_models() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench.py"),
            "ENSEMBLE",
            "--size",
            "small",
            "--repeats",
            "1",
            "--members",
            "2",
            "--threads",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "| ebm1d | 2 |" in completed.stdout and "| two_layer | 2 |" in completed.stdout
    assert "reference check: passed" in completed.stdout
