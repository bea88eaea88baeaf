"""Tests of the posterior side of climgrad.results: Run.posterior, predictive bands, corner plots.

Two runs, each made once for the module: an EBM1D twin calibrated with UKI (a Gaussian
posterior of 200 draws, derived quantities at 20 of them) and a three-step gradient run (no
posterior).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import xarray as xr

from climgrad.calibration.loop import run_calibration
from climgrad.results import Run, RunError, load_run, load_runs
from climgrad.results.plots import BAND_GID
from tests.calibration.conftest import compose_config

matplotlib.use("Agg")

QUIET = ["logger=none", "trainer.progress=false", "trainer.device=cpu"]
UKI = [
    "experiment=twin_ebm1d",
    "method=uki",
    "method.derived_draws=20",
    "method.posterior_draws=200",
    *QUIET,
]
GRADIENT = ["experiment=twin_ebm1d", "model.options.bands=18", "trainer.max_steps=3", *QUIET]
LEARNT = ["a0", "a2", "A", "B", "D"]
NO_POSTERIOR = (
    r"this run has no posterior \(method=gradient\); calibrate with method=uki, laplace, "
    r"nuts, eki or hybrid"
)


@pytest.fixture(scope="module")
def uki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("uki") / "run"
    run_calibration(compose_config(UKI), run_dir, overrides=UKI)
    return run_dir


@pytest.fixture(scope="module")
def uki(uki_dir: Path) -> Run:
    return load_run(uki_dir)


@pytest.fixture(scope="module")
def gradient(tmp_path_factory: pytest.TempPathFactory) -> Run:
    run_dir = tmp_path_factory.mktemp("gradient") / "run"
    run_calibration(compose_config(GRADIENT), run_dir, overrides=GRADIENT)
    return load_run(run_dir)


def _open_files() -> list[str]:
    fd_dir = Path("/proc/self/fd")
    names = []
    for entry in fd_dir.iterdir():
        try:
            names.append(os.readlink(entry))
        except OSError:
            continue
    return names


# ---------------------------------------------------------------------------------------------
# Reading posterior.nc


def test_posterior_agrees_with_the_metrics_summary(uki: Run, uki_dir: Path) -> None:
    metrics = json.loads((uki_dir / "metrics.json").read_text())
    posterior = uki.posterior
    assert uki.method == "uki" and uki.has_posterior
    assert list(posterior.data_vars) == LEARNT
    assert dict(posterior.sizes) == {"chain": 1, "draw": 200}
    assert "config" not in posterior.attrs
    for name in LEARNT:
        variable = posterior[name]
        assert variable.dims == ("chain", "draw")
        assert variable.attrs["units"] == uki.params[name].attrs["units"]
        values = variable.values.reshape(-1)
        summary = metrics["posterior"][name]
        assert values.mean() == pytest.approx(summary["mean"], rel=1e-10)
        assert values.std(ddof=1) == pytest.approx(summary["sd"], rel=1e-10)
        for q in ("q05", "q50", "q95"):
            quantile = np.quantile(values, int(q[1:]) / 100)
            assert quantile == pytest.approx(summary[q], rel=1e-10)
            assert float(uki.params[f"{name}_{q}"]) == pytest.approx(summary[q], rel=1e-10)
    # The point estimate (the UKI mean) is what metrics.json reports.
    for name, value in metrics["parameters"].items():
        np.testing.assert_allclose(uki.params[name].values, value, rtol=1e-12)
    assert uki.posterior is posterior  # cached


def test_derived_posterior_and_info(uki: Run, uki_dir: Path) -> None:
    derived = uki.derived_posterior
    gmst = derived["global_mean_surface_temperature_K"]
    assert gmst.dims == ("chain", "draw") and gmst.size == 20
    assert gmst.attrs["units"] == "K"
    info = uki.posterior_info
    assert info["method"] == "uki" and info["kind"] == "gaussian"
    assert (info["chains"], info["draws"]) == (1, 200)
    assert info["diagnostics"]["iterations"] >= 1
    assert set(info["prior"]) == set(LEARNT)
    assert info["prior"]["B"].startswith("normal(")
    metrics = json.loads((uki_dir / "metrics.json").read_text())
    assert metrics["method"] == info["method"]
    median = np.median(gmst.values)
    assert median == pytest.approx(metrics["derived_posterior"][gmst.name]["q50"], rel=1e-10)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_posterior_reads_leave_no_file_open(uki_dir: Path) -> None:
    run = load_run(uki_dir)
    assert run.posterior.sizes["draw"] == 200
    assert run.derived_posterior.sizes["draw"] == 20
    assert run.posterior_info["method"] == "uki"
    assert not [name for name in _open_files() if name.endswith("posterior.nc")]


def test_arviz_reads_posterior_nc(uki: Run, uki_dir: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        arviz = pytest.importorskip("arviz")
        idata = arviz.from_netcdf(str(uki_dir / "posterior.nc"))
    assert {"posterior", "unconstrained_posterior", "derived_posterior"} <= set(idata.groups())
    assert set(LEARNT) <= set(idata.posterior.data_vars)
    np.testing.assert_array_equal(idata.posterior["B"].values, uki.posterior["B"].values)


# ---------------------------------------------------------------------------------------------
# Parameter table


def test_parameter_table_has_posterior_columns(uki: Run, gradient: Run) -> None:
    table = uki.parameter_table()
    assert {"sd", "q05", "q50", "q95"} <= set(table.columns)
    assert set(table.index) == {"heat_capacity", "S0", "ai", "Tf", *LEARNT}  # no A_sd rows
    for name in LEARNT:
        row = table.loc[name]
        assert row.sd > 0 and row.q05 <= row.q50 <= row.q95
        assert row.q05 == pytest.approx(float(uki.params[f"{name}_q05"]))
        assert row.learnable
    assert np.isnan(table.loc["S0", "sd"]) and not table.loc["S0", "learnable"]
    plain = gradient.parameter_table()
    assert not {"sd", "q05", "q50", "q95"} & set(plain.columns)
    assert set(plain.index) == set(table.index)


# ---------------------------------------------------------------------------------------------
# Predictive bands


def test_simulate_samples_gives_ordered_bands_around_the_truth(uki: Run) -> None:
    banded = uki.simulate(samples=20)
    point = uki.simulate()
    assert banded.attrs["posterior_samples"] == 20
    assert banded.attrs["posterior_samples_failed"] == 0
    assert "observation noise not included" in banded.attrs["band"]
    for name in uki.observation_set:
        xr.testing.assert_identical(banded[name], point[name])  # the point estimate itself
        q05, q50, q95 = (banded[f"{name}_{q}"] for q in ("q05", "q50", "q95"))
        for quantile in (q05, q50, q95):
            assert quantile.dims == point[name].dims
            assert quantile.attrs["units"] == point[name].attrs["units"]
        assert bool((q05 <= q50).all()) and bool((q50 <= q95).all())
        assert float((q95 - q05).mean()) > 0
        # The twin's observations are the truth's outputs (no noise): mostly inside the band.
        truth = uki.observations[name].values
        inside = (truth >= q05.values) & (truth <= q95.values)
        assert inside.mean() >= 0.9, name
    again = uki.simulate(samples=20)
    xr.testing.assert_identical(banded, again)  # seeded: reproducible
    thinned = uki.simulate(samples=20, seed=None)
    assert "evenly thinned" in thinned.attrs["posterior_sampling"]


def test_band_of_one_draw_is_the_model_at_that_draw(uki: Run) -> None:
    one = uki.simulate(samples=1, seed=3)
    (index,) = np.atleast_1d(one.attrs["posterior_draw_index"])
    draw = {k: float(uki.posterior[k].values.reshape(-1)[index]) for k in LEARNT}
    reference = uki.simulate(draw)
    for name in uki.observation_set:
        for q in ("q05", "q50", "q95"):
            np.testing.assert_allclose(
                one[f"{name}_{q}"].values, reference[name].values, rtol=1e-9, atol=1e-9
            )


def test_member_by_member_path_agrees_with_the_batched_one(
    uki: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    batched = uki.simulate(samples=5)
    monkeypatch.setattr(uki.adapter, "batched", False)
    one_by_one = uki.simulate(samples=5)
    for name in uki.observation_set:
        for q in ("q05", "q50", "q95"):
            np.testing.assert_allclose(
                one_by_one[f"{name}_{q}"].values, batched[f"{name}_{q}"].values, rtol=1e-8
            )


def test_draws_that_do_not_solve_are_left_out(uki: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = uki.posterior.copy(deep=True)
    broken["A"][0, 0] = np.nan  # the first draw: evenly thinned draws include it
    monkeypatch.setitem(uki.__dict__, "posterior", broken)
    banded = uki.simulate(samples=6, seed=None)
    assert banded.attrs["posterior_samples"] == 5
    assert banded.attrs["posterior_samples_failed"] == 1
    assert 0 not in banded.attrs["posterior_draw_index"]
    for name in uki.observation_set:
        assert np.all(np.isfinite(banded[f"{name}_q50"].values))


def test_bad_sample_requests_are_one_line_errors(uki: Run) -> None:
    with pytest.raises(RunError, match="takes no parameter overrides"):
        uki.simulate(samples=5, B=2.0)
    with pytest.raises(RunError, match="samples=-1"):
        uki.simulate(samples=-1)


# ---------------------------------------------------------------------------------------------
# Figures


def test_plot_posterior_is_a_corner_plot(uki: Run) -> None:
    from matplotlib.figure import Figure

    figure = uki.plot_posterior()
    assert isinstance(figure, Figure)
    assert len(figure.axes) == len(LEARNT) * (len(LEARNT) + 1) // 2
    pair = uki.plot_posterior(["A", "B"])
    assert len(pair.axes) == 3
    # The twin's truth is drawn (green) on the diagonal histogram of A.
    truth = float(uki.config.data.truth["A"])
    vertical = [
        line
        for line in pair.axes[0].get_lines()
        if np.allclose(line.get_xdata(), truth) and line.get_color() == "C2"
    ]
    assert vertical
    pair.savefig(os.devnull, format="png")  # renders headless
    with pytest.raises(RunError, match="'S0' is not a learnt parameter"):
        uki.plot_posterior(["A", "S0"])


def _band_artists(figure: object) -> list[object]:
    return [c for ax in figure.axes for c in ax.collections if c.get_gid() == BAND_GID]  # type: ignore[attr-defined]


def test_plot_shades_the_predictive_band(uki: Run, gradient: Run) -> None:
    figures = uki.plot(samples=30)
    assert set(figures) == {"fit", "parameters", "posterior"}
    fit = figures["fit"]
    assert len(_band_artists(fit)) == len(uki.observation_set)
    assert all(
        any(c.get_gid() == BAND_GID for c in ax.collections) for ax in fit.axes
    )  # one band per panel, besides the observations' ±1σ
    # A banded simulation is shaded around the model, not drawn as a what-if line.
    shaded = uki.plot_fit(uki.simulate(samples=10))
    assert len(_band_artists(shaded)) == len(uki.observation_set)
    assert len(shaded.axes[0].get_lines()) == 2  # observed, model
    assert not _band_artists(uki.plot_fit(samples=0))
    # A gradient run: no band, and asking for one names the fix.
    plain = gradient.plot()
    assert set(plain) == {"fit", "parameters"} and not _band_artists(plain["fit"])
    with pytest.raises(RunError, match=NO_POSTERIOR):
        gradient.plot_fit(samples=5)


# ---------------------------------------------------------------------------------------------
# Derived quantities


def test_derived_interval(uki: Run) -> None:
    values = uki.derived_posterior["global_mean_surface_temperature_K"].values.reshape(-1)
    median, low, high = uki.derived_interval("gmst")
    assert low <= median <= high
    assert median == pytest.approx(np.median(values))
    assert (low, high) == pytest.approx(tuple(np.quantile(values, [0.05, 0.95])))
    narrow = uki.derived_interval("global_mean_surface_temperature_K", level=0.5)
    assert low <= narrow[1] <= narrow[2] <= high
    with pytest.raises(RunError, match=r"has no 'equilibrium_climate_sensitivity_K'.*global_mean"):
        uki.derived_interval("ecs")
    with pytest.raises(RunError, match=r"level=1.5; pass a probability in \(0, 1\)"):
        uki.derived_interval("gmst", level=1.5)


# ---------------------------------------------------------------------------------------------
# A run without a posterior


@pytest.mark.parametrize(
    "ask",
    [
        lambda run: run.posterior,
        lambda run: run.derived_posterior,
        lambda run: run.posterior_info,
        lambda run: run.simulate(samples=10),
        lambda run: run.plot_posterior(),
        lambda run: run.derived_interval("gmst"),
    ],
    ids=["posterior", "derived_posterior", "posterior_info", "simulate", "plot", "interval"],
)
def test_gradient_run_has_no_posterior(gradient: Run, ask: object) -> None:
    assert not gradient.has_posterior and gradient.method == "gradient"
    with pytest.raises(RunError, match=NO_POSTERIOR) as caught:
        ask(gradient)  # type: ignore[operator]
    assert "\n" not in str(caught.value)


def test_gradient_run_still_simulates(gradient: Run) -> None:
    xr.testing.assert_identical(gradient.simulate(samples=0), gradient.simulate())
    assert not [str(n) for n in gradient.simulate().data_vars if str(n).endswith("_q05")]


# ---------------------------------------------------------------------------------------------
# Sweeps of posterior runs


def test_load_runs_reads_posterior_jobs(uki_dir: Path, tmp_path: Path) -> None:
    for job in ("0", "1"):
        shutil.copytree(uki_dir, tmp_path / "sweep" / job)
    params = load_runs(tmp_path / "sweep")
    assert params["B"].dims == ("run",) and params["B_sd"].dims == ("run",)
    assert params["correlation"].dims == ("run", "element", "element_")


def test_load_runs_reads_a_sweep_that_mixes_methods(
    uki_dir: Path, gradient: Run, tmp_path: Path
) -> None:
    shutil.copytree(gradient.run_dir, tmp_path / "sweep" / "0")
    shutil.copytree(uki_dir, tmp_path / "sweep" / "1")
    params = load_runs(tmp_path / "sweep")
    assert np.isnan(float(params["B_sd"].sel(run=0))) and float(params["B_sd"].sel(run=1)) > 0
    assert np.isfinite(params["B"].values).all()
