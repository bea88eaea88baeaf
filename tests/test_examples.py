"""The runnable examples of the autograd bridge (scripts/examples) stay correct."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "scripts" / "examples"
sys.path.insert(0, str(EXAMPLES))

import a_central_differences  # noqa: E402
import b_analytic_derivative  # noqa: E402
import c_multi_output_vjp  # noqa: E402


def test_a_central_differences_is_accurate_and_costs_2L_plus_2():
    result = a_central_differences.main(columns=50)
    assert result["temperature"] < 1e-7 and result["optical_depth"] < 1e-7
    assert result["calls"] == 2 * 10 + 2


def test_b_analytic_jacobian_is_exact_and_better_than_differences():
    result = b_analytic_derivative.main(columns=20)
    assert result["analytic"] < 1e-13
    assert result["analytic"] < result["differences"] < 1e-7
    assert result["analytic_calls"] == 0


def test_c_multi_output_vjp_is_exact():
    result = c_multi_output_vjp.main(points=200)
    assert result["vjp"] < 1e-13
    assert result["differences"] < 1e-7
    assert result["differences_calls"] == 2


@pytest.mark.parametrize("script", ["bridge_demo.py"])
def test_demo_runs_and_passes(script):
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "all checks passed" in completed.stdout
