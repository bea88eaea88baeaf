"""Tests of scripts/bench/rrtmg_column.py (python scripts/bench.py RRTMG) at the small size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "climt",
    reason="the RRTMG benchmark needs the optional extra climgrad[rrtmg]: "
    "pip install 'climgrad[rrtmg]'",
)

ROOT = Path(__file__).resolve().parents[2]
PASSES = ("tendency_forward", "tendency_backward", "equilibrium_forward", "equilibrium_backward")


def test_rrtmg_benchmark_reports_calls_and_time_split() -> None:
    command = [str(ROOT / "scripts" / "bench.py"), "RRTMG", "--size", "small", "--repeats", "1"]
    completed = subprocess.run(
        [sys.executable, *command, "--json", "--threads", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result["problem"] == "RRTMG" and result["levels"] == 20
    assert result["reference_check"]["passed"]
    levels = result["levels"]
    rrtmg, gray = result["rrtmg"], result["gray"]
    for name in PASSES:
        assert gray[name]["rrtmg_calls"] == 0 and gray[name]["rrtmg_s"] == 0.0
        entry = rrtmg[name]
        assert 0.0 < entry["rrtmg_s"] <= entry["wall_s"]
        assert entry["rest_s"] == pytest.approx(entry["wall_s"] - entry["rrtmg_s"])
    # one call per band forward; per band 2L for temperature, 2L for humidity, 2 for the albedo
    assert rrtmg["tendency_forward"]["rrtmg_calls"] == 2
    assert rrtmg["tendency_backward"]["rrtmg_calls"] == 2 * (4 * levels) + 2
    calls = result["reference_check"]["entries"]["backward_calls_independent_of_columns"]
    assert calls["value"]["1 column"] == calls["value"]["8 columns"]
    # the Newton Jacobian is one batched forward-mode product: few calls per warm solve
    assert rrtmg["equilibrium_forward"]["rrtmg_calls"] < 4 * (levels + 1)
