"""The posterior methods through the app: outputs, failed members, resume, coverage on twins."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import xarray as xr

from climgrad.calibration.adapters import EBM1DAdapter
from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.experiment import build_experiment
from climgrad.calibration.loop import run_calibration
from climgrad.calibration.methods import build_method
from climgrad.calibration.posterior import PosteriorTarget

from .conftest import compose_config

QUIET = ["logger=none", "trainer.progress=false", "method.derived_draws=10"]
TWIN = ["experiment=twin_ebm1d", *QUIET]
TRUTH = {"A": 203.3, "B": 2.09, "D": 0.649, "a0": 0.31, "a2": 0.06}


def _run(tmp_path: Path, overrides: list[str], name: str = "run") -> tuple[Path, dict[str, Any]]:
    run_dir = tmp_path / name
    metrics = run_calibration(compose_config(overrides), run_dir, overrides=overrides)
    return run_dir, metrics


@pytest.mark.parametrize(
    ("method", "settings"),
    [
        ("uki", []),
        ("eki", ["method.ensemble_size=30"]),
        ("laplace", []),
        ("hybrid", ["method.warm_iterations=3"]),
    ],
)
def test_posterior_methods_recover_the_twin_and_write_the_posterior(
    tmp_path: Path, method: str, settings: list[str]
) -> None:
    run_dir, metrics = _run(tmp_path, [*TWIN, f"method={method}", *settings])
    assert metrics["method"] == method and metrics["stop_reason"] == "finished"
    assert metrics["model_solves"] > 0
    for name, truth in TRUTH.items():
        summary = metrics["posterior"][name]
        # The noise-free twin's truth lies inside the 5-95 % interval, which is not degenerate.
        assert summary["q05"] <= truth <= summary["q95"], (name, summary)
        assert 0 < summary["sd"] < 0.2 * abs(truth) + 0.05
    with xr.open_dataset(run_dir / "params.nc") as params:
        assert params.attrs["method"] == method
        assert float(params["A_q05"]) < float(params["A"]) < float(params["A_q95"])
        assert params["A_sd"].attrs["units"] == "W m-2"
        correlation = params["correlation"].values
        assert correlation.shape == (5, 5)
        assert torch.allclose(
            torch.tensor(correlation).diagonal(), torch.ones(5, dtype=torch.float64)
        )
    with xr.open_dataset(run_dir / "posterior.nc", group="posterior") as posterior:
        assert posterior["A"].dims[:2] == ("chain", "draw")
        assert posterior["A"].attrs["units"] == "W m-2"
        assert float(posterior["A"].mean()) == pytest.approx(metrics["posterior"]["A"]["mean"])
    with xr.open_dataset(run_dir / "posterior.nc") as root:
        assert root.attrs["method"] == method
        assert "independent errors" in root.attrs["likelihood_surface_temperature"]
        assert root.attrs["prior_A"] == "normal(210, 20)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz

        data = arviz.from_netcdf(run_dir / "posterior.nc")
    assert set(TRUTH) <= set(data.posterior.data_vars)
    assert "global_mean_surface_temperature_K" in metrics["derived_posterior"]


def test_cmaes_finds_the_map_without_gradients(tmp_path: Path) -> None:
    run_dir, metrics = _run(tmp_path, [*TWIN, "method=cmaes", "method.max_iterations=60"])
    assert metrics["method"] == "cmaes" and "posterior" not in metrics
    assert not (run_dir / "posterior.nc").exists()
    for name, truth in TRUTH.items():
        assert metrics["parameters"][name] == pytest.approx(truth, rel=0.05), name


def test_nuts_samples_with_the_models_gradients(tmp_path: Path) -> None:
    settings = [
        "method=nuts",
        "method.num_samples=15",
        "method.warmup=15",
        "method.chains=2",
        "method.max_tree_depth=4",
        # A and B learnt; the others fixed at the truth (a quick chain on a 2-D posterior).
        "model.params.a2={value: 0.06, learn: false}",
        "model.params.a0={value: 0.31, learn: false}",
        "model.params.D={value: 0.649, learn: false}",
    ]
    run_dir, metrics = _run(tmp_path, [*TWIN, *settings])
    diagnostics = metrics["posterior_diagnostics"]
    assert diagnostics["chains"] == 2 and diagnostics["draws_per_chain"] == 15
    assert "r_hat_A" in diagnostics and "ess_B" in diagnostics
    with xr.open_dataset(run_dir / "posterior.nc", group="sample_stats") as stats:
        assert stats["acceptance_rate"].shape == (2, 15)
    # Short chains: the mean is near the truth, not a calibrated interval (the slow tests and
    # docs/posteriors.md run NUTS long enough for that).
    assert metrics["posterior"]["A"]["mean"] == pytest.approx(TRUTH["A"], abs=3.0)
    assert metrics["posterior"]["B"]["mean"] == pytest.approx(TRUTH["B"], abs=0.1)


def test_a_missing_prior_is_one_clear_line() -> None:
    config = compose_config([*TWIN, "method=uki", "model.params.A.prior.kind=null"])
    problem = build_experiment(config)
    with pytest.raises(CalibrationError, match=r"A has no prior; set model.params.A.prior"):
        build_method(problem)


def _fail_some(monkeypatch: pytest.MonkeyPatch, fraction: float) -> None:
    """Make ``fraction`` of every batch of members non-finite (the first ones)."""
    original = EBM1DAdapter.simulate_batch

    def failing(self: EBM1DAdapter, model: Any, parameters: Any, options: Any) -> Any:
        outputs = original(self, model, parameters, options)
        count = next(iter(parameters.values())).shape[0]
        bad = math.ceil(fraction * count) if count > 1 else 0
        return {k: torch.cat([v[:bad] * math.nan, v[bad:]]) for k, v in outputs.items()}

    monkeypatch.setattr(EBM1DAdapter, "simulate_batch", failing)


def test_eki_survives_failed_members(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_some(monkeypatch, 0.2)
    _, metrics = _run(tmp_path, [*TWIN, "method=eki", "method.ensemble_size=30"])
    assert metrics["stop_reason"] == "finished"
    assert metrics["posterior_diagnostics"]["failed_members_total"] > 0
    for name, truth in TRUTH.items():
        assert metrics["parameters"][name] == pytest.approx(truth, rel=0.05), name


def test_eki_with_too_few_members_left_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_some(monkeypatch, 0.95)
    with pytest.raises(CalibrationError, match=r"method=eki: .*narrow model.params"):
        _run(tmp_path, [*TWIN, "method=eki", "method.ensemble_size=20"])


def test_a_stopped_ensemble_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    base = [*TWIN, "method=eki", "method.ensemble_size=20"]
    whole_dir, whole = _run(tmp_path, base, "whole")
    part_dir, part = _run(tmp_path, [*base, "method.max_iterations=2"], "part")
    assert part["steps"] == 2 and part["stop_reason"] == "max_steps"
    _, resumed = _run(tmp_path, [*base, "trainer.resume=true"], "part")
    assert resumed["resumed_from"] is not None
    assert resumed["steps"] == whole["steps"]
    assert resumed["parameters"] == whole["parameters"]  # bit-identical (CPU, float64)
    with (
        xr.open_dataset(whole_dir / "posterior.nc", group="unconstrained_posterior") as a,
        xr.open_dataset(part_dir / "posterior.nc", group="unconstrained_posterior") as b,
    ):
        assert bool((a["u"] == b["u"]).all())
    assert (
        json.loads((part_dir / "metrics.json").read_text())["model_solves"] == whole["model_solves"]
    )


def test_batched_and_member_by_member_evaluation_agree() -> None:
    problem = build_experiment(compose_config(TWIN))
    target = PosteriorTarget(problem)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(6, target.vector.size, generator=generator, dtype=torch.float64)
    U = target.prior_mean + 0.2 * noise * target.prior_cov.diagonal().sqrt()
    batched = target.evaluator(U)
    target.evaluator.batched = False
    single = target.evaluator(U)
    assert torch.allclose(batched, single, rtol=1e-7, atol=1e-7)
    assert target.solves == 12


@pytest.mark.slow
def test_laplace_intervals_cover_the_truth_on_noisy_ebm_twins() -> None:
    """Coverage: truths drawn from the prior, noisy observations, Laplace 90 % intervals.

    Over N = 40 replicates each marginal 90 % interval should contain the truth in 90 % ±
    3 binomial standard errors (±14 %). Truths whose equilibrium is not on the present-day
    branch (ice edge outside 30-85 degrees) are redrawn: the coverage is conditional on that.
    """
    import numpy as np

    replicates, hits, total = 40, 0, 0
    generator = torch.Generator().manual_seed(1234)
    base = compose_config([*TWIN, "data.noise=true", "method=laplace"])
    prior_target = PosteriorTarget(build_experiment(base))
    chol = torch.linalg.cholesky(prior_target.prior_cov)
    done = 0
    attempt = 0
    while done < replicates:
        attempt += 1
        raw = prior_target.prior_mean + chol @ torch.randn(
            prior_target.vector.size, generator=generator, dtype=torch.float64
        )
        truth = {k: float(v) for k, v in prior_target.vector.physical(raw).items()}
        overrides = [
            *TWIN,
            "data.noise=true",
            f"data.noise_seed={attempt}",
            "method=laplace",
            *[f"data.truth.{k}={v}" for k, v in truth.items()],
            *[f"model.params.{k}.value={v}" for k, v in truth.items()],
        ]
        try:
            problem = build_experiment(compose_config(overrides))
            problem.check()
            edge = problem.derived(problem.simulate())["ice_edge_latitude_deg"]
        except CalibrationError:
            continue
        if not 30.0 < edge < 85.0:
            continue
        method = build_method(problem)
        while not method.finished:
            method.step()
        draws = method.posterior()
        assert draws is not None
        physical = {
            k: v.reshape(-1).numpy() for k, v in method.vector.physical(draws.raw[0]).items()
        }
        for name, value in truth.items():
            low, high = np.quantile(physical[name], [0.05, 0.95])
            hits += int(low <= value <= high)
            total += 1
        done += 1
    coverage = hits / total
    error = math.sqrt(0.9 * 0.1 / total)
    assert abs(coverage - 0.9) < 3 * error + 0.02, coverage


def test_members_near_the_ice_edge_bifurcation_are_spun_up_longer() -> None:
    # A UKI sigma point of the ebm_ncep posterior: Newton fails after the usual 24 pseudo-time
    # steps (the climate drifts slowly to the snowball); the adapter spins up ten times longer.
    problem = build_experiment(compose_config(["experiment=ebm_ncep", *QUIET]))
    member = {"a0": 0.325, "a2": -0.007, "A": 226.12, "B": 1.708, "D": 1.249}
    batch = {k: torch.tensor([v], dtype=torch.float64) for k, v in member.items()}
    with pytest.raises(Exception, match="did not converge"):
        problem.model.equilibrium(parameters=batch, spin_up=24)  # type: ignore[operator]
    outputs = problem.adapter.simulate_batch(problem.model, batch, problem.simulate_options)
    temperature = outputs["surface_temperature"]
    assert temperature.shape == (1, 90) and float(temperature.max()) < 240.0  # the snowball
