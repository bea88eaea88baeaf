"""Benchmarks B3 and B4: the B3.6 / B4.5 reference gates and the JSON shape of a reduced B4 run.

No timing assertions: the machine is shared. Full B4 runs are not tests (scripts/bench.py B4).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

REPOSITORY = Path(__file__).resolve().parents[2]
BENCH_DIR = REPOSITORY / "scripts" / "bench"


@pytest.fixture(scope="module")
def bench_modules() -> Iterator[tuple[Any, Any, Any]]:
    sys.path.insert(0, str(BENCH_DIR))
    try:
        import b3
        import b4
        import common

        yield b3, b4, common
    finally:
        sys.path.remove(str(BENCH_DIR))


@pytest.fixture(scope="module")
def b3_float64(bench_modules: tuple[Any, Any, Any]) -> tuple[Any, dict[str, Any]]:
    b3 = bench_modules[0]
    problem = b3.Problem("float64")
    return problem, b3.reference_check(problem, list(b3.IMPLEMENTATIONS.values()))


def test_b3_float64_reference_values(b3_float64: tuple[Any, dict[str, Any]]) -> None:
    _, check = b3_float64
    entries = check["entries"]
    assert check["passed"], {k: v for k, v in entries.items() if not v["passed"]}
    # Every exact gradient reproduces B3.6 to the float64 gate (1e-8): the tridiagonal implicit
    # one (θ passed in physical units, or the model's own parameters), the dense implicit one,
    # Newton unrolled through the modules, and the plain-PyTorch reference (12 iterations).
    for implementation in ("implicit", "implicit_raw", "implicit_dense", "unrolled", "plain_torch"):
        for quantity in ("Phi", "dA", "dB", "dD"):
            assert entries[f"{implementation}: {quantity}"]["relative_error"] <= 1e-8
    assert entries["truth Newton iterations to 1e-10"]["value"] == 6
    assert entries["guess Newton iterations to 1e-10"]["value"] == 4
    assert math.isnan(entries["guess ice edge north"]["value"])


def test_b3_float32_gate(bench_modules: tuple[Any, Any, Any]) -> None:
    b3 = bench_modules[0]
    problem = b3.Problem("float32")
    check = b3.reference_check(problem, ["implicit", "plain_torch"])
    assert check["passed"], {k: v for k, v in check["entries"].items() if not v["passed"]}
    loss, gradient = problem.forward_backward("implicit")()
    assert loss.dtype == torch.float32 and gradient.dtype == torch.float32


def test_b3_finite_differences_agree_with_the_implicit_gradient(
    b3_float64: tuple[Any, dict[str, Any]], bench_modules: tuple[Any, Any, Any]
) -> None:
    problem, _ = b3_float64
    common = bench_modules[2]
    _, exact = problem.forward_backward("implicit")()
    _, central = problem.forward_backward("finite_differences_central")()
    _, forward = problem.forward_backward("finite_differences_forward")()
    assert common.relative_error(central, exact) < 1e-7
    assert common.relative_error(forward, exact) < 1e-5
    # The finite-difference probes leave the model at the guess.
    loss, _ = problem.forward_backward("implicit")()
    assert float(loss) == pytest.approx(893957.153119, rel=1e-8)


def test_b3_unrolled_gradient_keeps_the_iterations(
    b3_float64: tuple[Any, dict[str, Any]], bench_modules: tuple[Any, Any, Any]
) -> None:
    b3 = bench_modules[0]
    problem, _ = b3_float64
    implicit = b3.graph_saved_bytes(problem.loss_with_graph("implicit")())
    unrolled = b3.graph_saved_bytes(problem.loss_with_graph("unrolled")())
    plain = b3.graph_saved_bytes(problem.loss_with_graph("plain_torch")())
    # One 90 x 90 Jacobian per Newton iteration (4 at the guess, 12 in the plain reference) is
    # kept by the unrolled graphs; the implicit graph keeps band-sized vectors only.
    assert unrolled > 4 * 90 * 90 * 8 > implicit > 0
    assert plain > 12 * 90 * 90 * 8
    assert implicit < 90 * 90 * 8


def test_b3_plain_torch_reference_is_climgrad_free_and_unrolled(
    b3_float64: tuple[Any, dict[str, Any]], bench_modules: tuple[Any, Any, Any]
) -> None:
    b3, _, common = bench_modules
    problem, _ = b3_float64
    loss, gradient = problem.forward_backward("plain_torch")()
    _, implicit = problem.forward_backward("implicit")()
    assert common.relative_error(gradient, implicit) < 1e-10
    assert float(loss) == pytest.approx(893957.153119, rel=1e-9)
    assert b3.PLAIN_NEWTON_ITERATIONS == 12
    with torch.no_grad():
        assert float(problem.forward("plain_torch")()) == pytest.approx(float(loss), rel=1e-12)


def test_b3_adam_step_of_the_ebm_ncep_calibration_runs(bench_modules: tuple[Any, Any, Any]) -> None:
    b3 = bench_modules[0]
    step = b3.ebm_ncep_step()
    losses = [float(step()) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    result = b3.adam_step_benchmark(2)
    assert result["step_ms"]["median"] > 0
    assert set(result["paired_step_ms"]) == {"tridiagonal", "dense"}
    assert result["speedup_tridiagonal_vs_dense"]["median"] > 0


def test_b3_jax_reference_passes_the_gate_and_is_timed(
    bench_modules: tuple[Any, Any, Any],
) -> None:
    # The optional JAX reference (extra bench-jax): same Φ and ∂Φ/∂θ as climgrad's implicit
    # gradient to 1e-8 (float64), and a timing row from interleaved rounds (2 here, no assertion
    # on the times: the machine is shared). CI does not install jax: skipped there.
    pytest.importorskip("jax")
    b3, _, common = bench_modules
    sys.path.insert(0, str(REPOSITORY / "scripts"))
    try:
        import bench
    finally:
        sys.path.remove(str(REPOSITORY / "scripts"))
    problem = b3.Problem("float64")
    compile_s = problem.jax.compile_seconds(common.first_call_seconds)
    check = b3.reference_check(problem, ["implicit", "jax"])
    entries = check["entries"]
    assert check["passed"], {k: v for k, v in entries.items() if not v["passed"]}
    for name in ("jax vs custom: Phi", "jax vs custom: gradient"):
        assert entries[name]["relative_error"] <= 1e-8 and entries[name]["tolerance"] == 1e-8
    for quantity in ("Phi", "dA", "dB", "dD"):
        assert entries[f"jax: {quantity}"]["relative_error"] <= 1e-8
    # Newton from T⁰ at θ₀: 4 iterations to 1e-10 (B3.6); to 1e-9 no more.
    assert entries["jax: Newton reaches the tolerance"]["value"]["iterations"] <= 4
    functions = {}
    for name, implementation in (("custom", "implicit"), ("autograd", "plain_torch")):
        functions[f"{name}/forward"] = problem.forward(implementation)
        functions[f"{name}/forward_backward"] = problem.forward_backward(implementation)
    functions["jax/forward"] = problem.jax.forward
    functions["jax/forward_backward"] = problem.jax.forward_backward
    timings = common.time_interleaved(functions, repeats=2)
    entry, comparisons, summary = b3.jax_results(problem, timings, compile_s)
    assert compile_s["forward"] > 0 and entry["first_call_s"] == compile_s["forward_backward"]
    assert entry["forward_backward_s"] > 0 and len(entry["forward_backward"]["samples_s"]) == 2
    ratio = comparisons["ratio_forward_backward_custom_over_jax"]
    assert ratio["target"] == 2.0 and ratio["median"] > 0
    assert comparisons["gradient_relative_error_jax_vs_custom"] <= 1e-8
    assert summary["available"] and summary["jax"]
    result = {
        "problem": "B3",
        "dtype": "float64",
        "machine": common.machine_info("cpu"),
        "reference_check": check,
        "custom": b3._entry(
            problem, "implicit", timings["custom/forward"], timings["custom/forward_backward"], 0.0
        ),
        "autograd": b3._entry(
            problem,
            "plain_torch",
            timings["autograd/forward"],
            timings["autograd/forward_backward"],
            0.0,
        ),
        "variants": {"jax": entry},
        "comparisons": comparisons,
    }
    json.dumps(common.as_jsonable(result))
    assert "| B3 | float64 | jax | " in bench._table([result])


def test_b3_without_jax_says_once_how_to_install_it(
    bench_modules: tuple[Any, Any, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b3 = bench_modules[0]
    monkeypatch.setattr(b3, "JAX_AVAILABLE", False)
    monkeypatch.setattr(b3, "_jax_skip_reported", False)
    b3._report_jax_skipped()
    b3._report_jax_skipped()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("JAX row skipped") == 1
    assert "pip install -e '.[bench-jax]'" in captured.err
    with pytest.raises(RuntimeError, match="bench-jax"):
        _ = b3.Problem("float32").jax


def test_b4_p91_reference_values(bench_modules: tuple[Any, Any, Any]) -> None:
    b4 = bench_modules[1]
    twin = b4.Twin(91)
    check = b4.reference_check(twin)
    assert check["passed"], {k: v for k, v in check["entries"].items() if not v["passed"]}
    assert twin.size == 91
    assert twin.u_true[:90].min() == pytest.approx(200.003350498 / 190.0, rel=1e-10)
    # A per-band A reaches the model: the truth is not symmetric about the equator.
    temperature = twin.truth_state["surface_temperature"]
    assert float((temperature - temperature.flip(0)).abs().max()) > 1.0


def test_b4_gradient_in_u_is_theta0_times_the_physical_gradient(
    bench_modules: tuple[Any, Any, Any],
) -> None:
    b4 = bench_modules[1]
    twin = b4.Twin(3)
    u = np.array([1.05, 1.02, 1.1])
    loss, gradient = twin.loss_and_gradient(u)
    step = 1e-6
    for i in range(3):
        probe_plus, probe_minus = u.copy(), u.copy()
        probe_plus[i] += step
        probe_minus[i] -= step
        central = (twin.loss(probe_plus) - twin.loss(probe_minus)) / (2 * step)
        assert gradient is not None
        assert gradient[i] == pytest.approx(central, rel=1e-6)
    assert twin.counters.solves == 7 and twin.counters.reverse_passes == 1
    assert loss == pytest.approx(twin.loss(u), rel=1e-12)


def test_b4_failed_evaluations_are_infinite_and_counted(
    bench_modules: tuple[Any, Any, Any],
) -> None:
    b4 = bench_modules[1]
    twin = b4.Twin(3)
    twin.reset()
    assert twin.loss(np.array([-1.0, 1.0, 1.0])) == math.inf
    assert twin.observe(np.array([1.0, math.nan, 1.0])) is None
    assert twin.loss_and_gradient(np.array([1.0, 0.0, 1.0])) == (math.inf, None)
    assert twin.counters.rejected_points == 3 and twin.counters.solves == 0
    # Newton cannot reach 1e-9 in 0 iterations: a failed solve, counted as a solve.

    def failing(**options: Any) -> None:
        raise b4.EquilibriumError("forced")

    twin.model.equilibrium = failing  # type: ignore[method-assign]
    assert twin.loss(np.ones(3)) == math.inf
    assert twin.counters.solves == 1 and twin.counters.failed_solves == 1


def test_b4_reduced_run_json_shape(bench_modules: tuple[Any, Any, Any]) -> None:
    b4, common = bench_modules[1], bench_modules[2]
    args = argparse.Namespace(
        dtype="float64",
        device="cpu",
        variant="3",
        methods="lbfgs,adam_lr0.1",
        quick=True,
        seeds=5,
        runs=3,
        time_limit=None,
    )
    result = json.loads(json.dumps(common.as_jsonable(b4.run(args))))
    assert result["problem"] == "B4" and result["quick"] is True
    assert result["reference_check"]["passed"]
    calibration = result["calibrations"]["P=3"]
    assert calibration["u_true"] == pytest.approx([1.10526315789, 1.11111111111, 1.23333333333])
    assert set(calibration["methods"]) == {"lbfgs", "adam_lr0.1"}
    for summary in calibration["methods"].values():
        assert summary["success"] is True
        assert summary["final_error"] <= 0.01
        assert summary["solves"] == summary["reverse_passes"] > 0
        assert len(summary["runs"]) == 1
        assert summary["wall_s"]["median"] > 0
    assert "| P=3 | lbfgs | yes |" in b4.format_table([result])


def test_b4_batched_observations_equal_member_by_member(
    bench_modules: tuple[Any, Any, Any],
) -> None:
    b4 = bench_modules[1]
    twin = b4.Twin(3)
    twin.reset()
    members = np.array([[1.0, 1.0, 1.0], [1.05, 1.1, 1.2], [-1.0, 1.0, 1.0], [1.1, 0.95, 1.3]])
    batched = twin.observe_batch(members)
    assert twin.counters.solves == 3 and twin.counters.rejected_points == 1
    assert np.isnan(batched[2]).all()
    for j in (0, 1, 3):
        single = twin.observe(members[j])
        assert single is not None
        np.testing.assert_allclose(batched[j], single, rtol=1e-12, atol=0)
    losses = twin.loss_batch(members)
    assert losses[2] == math.inf
    assert losses[1] == pytest.approx(twin.loss(members[1]), rel=1e-12)


def test_b4_eki_is_the_update_of_b4_3b(bench_modules: tuple[Any, Any, Any]) -> None:
    # The library EKI as B4 configures it makes B4.3(b)'s update: Δt = 1, y_j = y + η_j with
    # η_j ~ N(0, Γ), u_j <- u_j + C^(uG) (C^(GG) + Γ)^-1 (y_j - G_j), from u ~ N(1, 0.1² I).
    b4 = bench_modules[1]
    twin = b4.Twin(3)
    twin.reset()
    members, seed = 10, 3
    eki = b4.make_eki(twin, members, seed)
    generator = torch.Generator().manual_seed(seed)
    initial = 1.0 + 0.1 * torch.randn((members, 3), generator=generator, dtype=torch.float64)
    torch.testing.assert_close(eki.ensemble, initial, rtol=0, atol=1e-15)
    sigma = twin.noise_variance.sqrt().numpy()
    perturbed = (
        twin.data.numpy()
        + sigma * torch.randn((members, 180), generator=generator, dtype=torch.float64).numpy()
    )
    u = initial.numpy()
    outputs = twin.observe_batch(u)
    du, dg = u - u.mean(0), outputs - outputs.mean(0)
    cov_ug, cov_gg = du.T @ dg / (members - 1), dg.T @ dg / (members - 1)
    expected = u + (cov_ug @ np.linalg.solve(cov_gg + np.diag(sigma**2), (perturbed - outputs).T)).T
    info = eki.update(torch.from_numpy(outputs))
    assert info["dt"] == 1.0 and info["n_failed"] == 0
    np.testing.assert_allclose(eki.ensemble.numpy(), expected, rtol=1e-8, atol=1e-10)
    assert not eki.finished and eki.max_time == b4.EKI_ITERATIONS[(3, members)]


def test_b4_library_methods_reduced_run(bench_modules: tuple[Any, Any, Any]) -> None:
    # EKI, UKI, CMA-ES and the hybrid, on the library's algorithms, reach 1 % at P = 3 (quick).
    b4, common = bench_modules[1], bench_modules[2]
    methods = ["lbfgs", "hybrid_uki2", "uki", "eki_J10"]
    if b4.cma_available():
        methods.append("cmaes")
    args = argparse.Namespace(
        dtype="float64",
        device="cpu",
        variant="3",
        methods=",".join(methods),
        quick=True,
        seeds=5,
        runs=3,
        time_limit=None,
    )
    result = json.loads(json.dumps(common.as_jsonable(b4.run(args))))
    calibration = result["calibrations"]["P=3"]
    summaries = calibration["methods"]
    assert list(summaries) == methods
    uki = summaries["uki"]
    assert uki["success"] and uki["reverse_passes"] == 0
    assert uki["solves"] == 7 * uki["iterations"]  # 2P + 1 sigma points per iteration
    hybrid = summaries["hybrid_uki2"]
    assert hybrid["success"] and hybrid["final_error"] <= 0.01
    # Two UKI iterations (14 solves), then L-BFGS-B: one solve and one reverse pass per evaluation.
    assert hybrid["solves"] == 14 + hybrid["reverse_passes"] and hybrid["reverse_passes"] > 0
    for name in methods[3:]:
        summary = summaries[name]
        assert summary["success_rate"] == 1.0 and summary["seeds"] == [0, 1]
        assert summary["final_error"]["max"] <= 0.01 and summary["reverse_passes"] == 0
    for run in summaries["eki_J10"]["runs"]:
        assert run["solves"] >= 10 * run["iterations"]  # failed batches are re-solved
    ratios = calibration["solve_ratios"]
    assert ratios["target"] == 10.0
    expected = {f"{m}/{r}" for r in ("lbfgs", "hybrid_uki2") for m in methods[2:]}
    assert set(ratios["ratios"]) == expected
    entry = ratios["ratios"]["eki_J10/lbfgs"]
    median = np.median([r["solves"] for r in summaries["eki_J10"]["runs"]])
    assert entry["ratio"] == pytest.approx(median / summaries["lbfgs"]["solves"])
    assert entry["meets_target"] == (entry["ratio"] >= 10.0)
    table = b4.format_table([result])
    assert "| P=3 | uki | yes |" in table and "eki_J10/lbfgs:" in table


def test_b4_solve_ratio_of_a_method_that_fails_is_a_lower_bound(
    bench_modules: tuple[Any, Any, Any],
) -> None:
    b4 = bench_modules[1]

    def stochastic(*runs: tuple[bool, int]) -> dict[str, Any]:
        return {
            "success_rate": 0.0,
            "runs": [{"success": ok, "solves": solves} for ok, solves in runs],
        }

    methods = {
        "lbfgs": {"runs": [{"success": True, "solves": 10}]},
        "eki_J100": stochastic((True, 200), (False, 10000), (False, 10000)),
        "cmaes": stochastic((True, 100), (True, 500), (False, 40000)),
    }
    ratios = b4.solve_ratios(91, methods)["ratios"]
    assert ratios["eki_J100/lbfgs"] == {"ratio": 1000.0, "lower_bound": True, "meets_target": True}
    assert ratios["cmaes/lbfgs"] == {"ratio": 50.0, "lower_bound": False, "meets_target": True}
    methods["lbfgs"]["runs"][0]["solves"] = 1000
    ratios = b4.solve_ratios(91, methods)["ratios"]
    assert ratios["eki_J100/lbfgs"]["meets_target"] is None  # a bound below the target
    assert ratios["cmaes/lbfgs"]["meets_target"] is False
