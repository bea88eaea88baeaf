"""Tests of climgrad.results: load_run, Run.simulate/compare/plot, load_runs, the notebook."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import climgrad
from climgrad.calibration.checkpoint import load_checkpoint, save_checkpoint
from climgrad.calibration.loop import run_calibration
from climgrad.data.drivers import forcing_series
from climgrad.models.two_layer import AR6_AGENTS
from climgrad.results import Run, RunError, load_run, load_runs
from tests.calibration.conftest import RUNNABLE_EXPERIMENTS, compose_config

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "explore_calibration.ipynb"
#: A short, silent EBM1D twin on 18 bands (about a second per step on one core).
SMALL_EBM = [
    "experiment=twin_ebm1d",
    "model.options.bands=18",
    "trainer.max_steps=4",
    "trainer.checkpoint_every=2",
    "trainer.progress=false",
    "trainer.device=cpu",
    "logger.figure_every=0",
]


def _calibrate(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    return run_calibration(compose_config(overrides), run_dir, overrides=overrides)


@pytest.fixture(scope="module")
def ebm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("ebm") / "run"
    _calibrate(run_dir, SMALL_EBM)
    return run_dir


@pytest.fixture(scope="module")
def ebm(ebm_run: Path) -> Run:
    return load_run(ebm_run)  # best.pt: the state params.nc, fit.nc and metrics.json describe


@pytest.fixture(scope="module")
def two_layer_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("two_layer") / "run"
    overrides = [
        "experiment=twin_two_layer",
        "trainer.max_steps=2",
        "optimizer=adam",
        "trainer.progress=false",
        "logger.figure_every=0",
    ]
    _calibrate(run_dir, overrides)
    return run_dir


# ---------------------------------------------------------------------------------------------
# load_run


def test_exported_from_the_package() -> None:
    assert climgrad.load_run is load_run and climgrad.load_runs is load_runs


def test_model_is_the_checkpoint_in_eval_mode(ebm: Run, ebm_run: Path) -> None:
    checkpoint = load_checkpoint(ebm_run / "checkpoints" / "best.pt")
    assert not ebm.model.training
    state = ebm.model.state_dict()
    for key, value in checkpoint["model"].items():
        torch.testing.assert_close(state[key].cpu(), value, rtol=0, atol=0)
    assert ebm.step == checkpoint["progress"]["best_step"] == 3  # the loss fell at every step
    assert ebm.config.name == "twin_ebm1d"
    assert ebm.config.model.options.bands == 18
    assert all(p.device.type == "cpu" for p in ebm.model.parameters())
    assert next(ebm.model.parameters()).dtype == torch.float64


def test_params_carry_the_checkpoint_values_and_cf_attributes(ebm: Run, ebm_run: Path) -> None:
    metrics = json.loads((ebm_run / "metrics.json").read_text())
    for name, value in metrics["parameters"].items():
        np.testing.assert_allclose(ebm.params[name].values, value, rtol=1e-12)
    assert ebm.params["B"].attrs["units"] == "W m-2 K-1"
    assert ebm.params["B"].attrs["learnable"] == 1 and ebm.params["ai"].attrs["learnable"] == 0
    assert ebm.params.attrs["checkpoint"] == "best.pt"
    table = ebm.parameter_table()
    assert table.loc["B", "units"] == "W m-2 K-1" and bool(table.loc["B", "learnable"])
    assert table.loc["B", "initial"] == pytest.approx(2.0)


def test_best_checkpoint_holds_the_best_step(ebm_run: Path) -> None:
    best = load_run(ebm_run)
    progress = load_checkpoint(ebm_run / "checkpoints" / "best.pt")["progress"]
    assert best.step == progress["best_step"]
    assert best.params.attrs["checkpoint"] == "best.pt"
    logged = best.history.query("tag == 'param/B' and step == @best.step").value
    assert float(best.params["B"]) == pytest.approx(float(logged.iloc[0]), rel=1e-6)


def test_compare_reproduces_the_run_metrics_and_fit(ebm: Run, ebm_run: Path) -> None:
    metrics = json.loads((ebm_run / "metrics.json").read_text())
    comparison = ebm.compare()
    fit = xr.open_dataset(ebm_run / "fit.nc")
    for name in ebm.observation_set:
        assert comparison.attrs[f"rmse_{name}"] == pytest.approx(metrics["rmse"][name], rel=1e-9)
        assert comparison.attrs[f"loss_{name}"] == pytest.approx(metrics["loss"][name], rel=1e-9)
        np.testing.assert_allclose(
            comparison[f"{name}_model"].values, fit[f"model_{name}"].values, rtol=1e-10
        )
        np.testing.assert_allclose(
            comparison[f"{name}_bias"].values,
            fit[f"model_{name}"].values - fit[name].values,
            rtol=1e-8,
            atol=1e-10,
        )
        assert comparison[f"{name}_bias"].attrs["units"] == metrics["units"][name]
        assert comparison[f"{name}_error"].attrs["units"] == metrics["units"][name]
    expected = metrics["loss"]["total"] - metrics["loss"]["prior"]
    assert comparison.attrs["loss_misfit"] == pytest.approx(expected, rel=1e-9)
    fit.close()


def test_simulate_what_if_leaves_the_model_calibrated(ebm: Run) -> None:
    calibrated = ebm.simulate()
    a_value = float(ebm.params["A"]) - 2.0
    warmer = ebm.simulate(A=a_value)
    again = ebm.simulate()
    temperature = "surface_temperature"
    assert calibrated[temperature].attrs["units"] == "K"
    assert calibrated[temperature].dims == ebm.observations[temperature].dims
    np.testing.assert_array_equal(calibrated["lat"].values, ebm.observations["lat"].values)
    # Less outgoing longwave at every temperature warms the equilibrium everywhere.
    assert bool((warmer[temperature] > calibrated[temperature]).all())
    xr.testing.assert_identical(calibrated, again)
    assert warmer.attrs["parameter_A"] == pytest.approx(a_value)
    assert "global_mean_surface_temperature_K" in warmer.attrs
    # A mapping reaches names that are not identifiers, and gives the same result.
    xr.testing.assert_identical(warmer, ebm.simulate({"A": a_value}))


def test_simulate_bad_parameters_are_one_line_errors(ebm: Run) -> None:
    with pytest.raises(RunError, match=r"not a parameter of the ebm1d model.* A, B, D"):
        ebm.simulate(not_a_parameter=1.0)
    with pytest.raises(RunError, match="simulate:"):
        ebm.simulate(B=-1.0)
    ebm.simulate()  # still usable afterwards


def test_history_is_a_table_of_tensorboard_scalars(ebm: Run) -> None:
    history = ebm.history
    assert list(history.columns) == ["step", "tag", "value"]
    loss = history[history.tag == "loss/total"]
    assert list(loss.step) == [0, 1, 2, 3]
    first_b = history.query("tag == 'param/B' and step == 0").value
    assert float(first_b.iloc[0]) == pytest.approx(2.0, rel=1e-6)


def test_plot_draws_fit_and_trajectories(ebm: Run) -> None:
    from matplotlib.figure import Figure

    what_if = ebm.simulate(D=0.6)
    figures = ebm.plot(what_if)
    assert set(figures) == {"fit", "parameters"}
    assert all(isinstance(f, Figure) for f in figures.values())
    assert len(figures["fit"].axes) == len(ebm.observation_set)
    learnt = [n for n, v in ebm.params.data_vars.items() if v.attrs["learnable"]]
    assert len(figures["parameters"].axes) == 1 + len(learnt)
    lines = figures["fit"].axes[0].get_lines()
    assert len(lines) == 3  # observed, model, what-if


def test_loads_from_any_working_directory(
    ebm_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = load_run(ebm_run, checkpoint="last")
    assert run.config.paths.root_dir == str(REPO)  # recorded, resolved once by the run
    assert Path.cwd() == tmp_path


def test_two_layer_run_resolves_its_forcing_file_from_elsewhere(
    two_layer_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = load_run(two_layer_run)
    metrics = json.loads((two_layer_run / "metrics.json").read_text())
    comparison = run.compare()
    for name in run.observation_set:
        assert comparison.attrs[f"rmse_{name}"] == pytest.approx(metrics["rmse"][name], rel=1e-8)
    simulation = run.simulate()
    assert simulation.attrs["equilibrium_climate_sensitivity_K"] == pytest.approx(
        metrics["derived"]["equilibrium_climate_sensitivity_K"], rel=1e-10
    )
    assert "time" in simulation.dims


def test_scenario_runs_the_calibrated_model_under_new_forcing(two_layer_run: Path) -> None:
    run = load_run(two_layer_run)
    table = REPO / "data" / "global_ebm" / "ar6_erf_1750-2019.nc"
    history = forcing_series(table, AR6_AGENTS, start_year=1850, end_year=2019)
    frame = pd.DataFrame(history.values, index=history.years, columns=list(history.agents))
    # The historical forcing held at its 2019 value to 2100: committed warming.
    extension = pd.DataFrame(
        np.repeat(history.values[-1:], 81, axis=0),
        index=np.arange(2020, 2101),
        columns=list(history.agents),
    )
    scenario = run.simulate(forcing=pd.concat([frame, extension]))
    assert float(scenario.time[0]) == 1850.5 and float(scenario.time[-1]) == 2100.5
    assert scenario.attrs["forcing_agents"].startswith("co2")
    calibrated = run.outputs()  # the run's own series over 1850-2019
    temperature = scenario["surface_temperature_anomaly"]
    np.testing.assert_allclose(
        temperature.values[:170],
        calibrated["surface_temperature_anomaly"].numpy(),
        rtol=1e-12,
        atol=1e-12,
    )
    assert float(temperature.sel(time=2100.5)) > float(temperature.sel(time=2019.5)) + 0.1
    assert temperature.attrs["units"] == "K"
    assert scenario.attrs["equilibrium_climate_sensitivity_K"] == pytest.approx(run.ecs())
    # A total-forcing series (no agents, so no aerosol scale) from a pandas Series works too.
    total = run.simulate(forcing=pd.Series(frame.sum(axis=1).values, index=frame.index))
    assert total.attrs["forcing_agents"] == "total" and total.sizes["time"] == 170


def test_a_model_without_drivers_refuses_a_scenario(ebm: Run) -> None:
    with pytest.raises(RunError, match="takes no new drivers"):
        ebm.simulate(forcing=pd.Series([1.0, 2.0], index=[2000, 2001]))


def test_derived_quantities_of_a_loaded_run_are_plain_numbers(two_layer_run: Path) -> None:
    run = load_run(two_layer_run)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "requires_grad ... to a scalar" warning
        ecs, tcr = run.ecs(), run.tcr()
        assert isinstance(ecs, float) and isinstance(tcr, float)
        assert float(run.model.ecs()) == ecs
    assert 0 < tcr < ecs
    assert run.derived()["equilibrium_climate_sensitivity_K"] == pytest.approx(ecs)


def test_overrides_are_read_from_the_hydra_record(ebm_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(ebm_run, run_dir)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text("- seed=3\n")
    assert load_run(run_dir).overrides == ["seed=3"]


def test_data_dir_relocates_a_moved_run(two_layer_run: Path, tmp_path: Path) -> None:
    # The run's data folder "moves": a copy elsewhere, found through data_dir=.
    moved = tmp_path / "elsewhere" / "data"
    shutil.copytree(REPO / "data" / "global_ebm", moved / "global_ebm")
    run = load_run(two_layer_run, checkpoint="last", data_dir=moved)
    assert run.config.paths.data_dir == str(moved)
    assert run.config.model.options["forcing_file"].startswith(str(moved))
    reference = load_run(two_layer_run, checkpoint="last")
    assert run.compare().attrs["loss_misfit"] == reference.compare().attrs["loss_misfit"]
    with pytest.raises(RunError, match="data_dir="):
        load_run(two_layer_run, checkpoint="last", data_dir=tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# Errors


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="is not a directory"):
        load_run(tmp_path / "missing")
    with pytest.raises(RunError, match="is not a run directory"):
        load_run(tmp_path)


def test_run_in_progress_suggests_last(ebm_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "running"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(ebm_run / "checkpoints" / "last.pt", run_dir / "checkpoints" / "last.pt")
    with pytest.raises(RunError, match="checkpoint='last'"):
        load_run(run_dir)
    run = load_run(run_dir, checkpoint="last")  # no params.nc, metrics or tb yet
    assert run.metrics is None and run.history.empty
    assert float(run.params["B"]) == pytest.approx(float(load_run(ebm_run, "last").params["B"]))


def test_incompatible_checkpoints(ebm_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "old"
    shutil.copytree(ebm_run, run_dir)
    payload = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    save_checkpoint(run_dir / "checkpoints" / "best.pt", payload)
    future = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    torch.save({**future, "format": 99}, run_dir / "checkpoints" / "best.pt")
    with pytest.raises(RunError, match="format 99 but this climgrad reads format 1"):
        load_run(run_dir)
    torch.save(
        {"format": 1, "model": {"nonsense": torch.zeros(1)}, "config": payload["config"]},
        run_dir / "checkpoints" / "best.pt",
    )
    with pytest.raises(RunError, match="incompatible climgrad version"):
        load_run(run_dir)
    torch.save(object(), run_dir / "checkpoints" / "best.pt")
    with pytest.raises(RunError, match="weights_only=True"):
        load_run(run_dir)


# ---------------------------------------------------------------------------------------------
# load_runs


def test_load_runs_concatenates_a_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun"
    base = [*SMALL_EBM, "trainer.max_steps=2", "logger=none"]
    for job, lr in enumerate(("0.002", "0.01")):
        overrides = [*base, f"optimizer.lr={lr}", f"seed={job}"]
        _calibrate(sweep / str(job), overrides)
        (sweep / str(job) / ".hydra").mkdir()
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(
            "".join(f"- {o}\n" for o in [f"optimizer.lr={lr}", f"seed={job}", "hydra.x=1"])
        )
    (sweep / "2" / "checkpoints").mkdir(parents=True)  # a job still running
    (sweep / "3").mkdir()  # a job that failed on bad input
    (sweep / "3" / "metrics.json").write_text('{"status": "failed", "message": "bad units"}')
    with pytest.warns(UserWarning, match=r"failed: 3; running \(no params\.nc\): 2"):
        params = load_runs(sweep)
    assert params.attrs["failed_runs"] == "3: bad units"
    assert list(params.run.values) == [0, 1]
    np.testing.assert_allclose(params["optimizer.lr"].values, [0.002, 0.01])
    np.testing.assert_array_equal(params["seed"].values, [0, 1])
    assert params["seed"].dtype == np.int64
    assert "hydra.x" not in params.coords
    assert params["B"].dims == ("run",) and params["B"].attrs["units"] == "W m-2 K-1"
    # The larger learning rate moves B further from its start (the best state after one step).
    moved = np.abs(params["B"].values - 2.0)
    assert moved[1] > moved[0] > 0
    assert np.all(np.isfinite(params["loss"].values))
    with pytest.raises(RunError, match="is a single run"):
        load_runs(sweep / "0")
    with pytest.raises(RunError, match="is a sweep"):
        load_run(sweep)
    with pytest.raises(RunError, match="no job directories"):
        load_runs(tmp_path / "multirun" / "2" / "checkpoints")


# ---------------------------------------------------------------------------------------------
# The notebook


def test_notebook_executes_against_a_fresh_run(
    ebm_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("CLIMGRAD_RUN_DIR", str(ebm_run))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # fit, trajectories, what-if
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert " -> " in text  # the what-if names the parameter it changed


# ---------------------------------------------------------------------------------------------
# Slow and GPU


@pytest.mark.slow
@pytest.mark.parametrize("experiment", RUNNABLE_EXPERIMENTS)
def test_every_experiment_loads(tmp_path: Path, experiment: str) -> None:
    overrides = [
        f"experiment={experiment}",
        "trainer.max_steps=1",
        "trainer.progress=false",
        "trainer.device=cpu",
        "logger.figure_every=0",
    ]
    metrics = _calibrate(tmp_path / "run", overrides)
    run = load_run(tmp_path / "run")
    comparison = run.compare()
    for name, rmse in metrics["rmse"].items():
        assert comparison.attrs[f"rmse_{name}"] == pytest.approx(rmse, rel=1e-6)
    assert set(run.plot()) == {"fit", "parameters"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loads_onto_cuda(ebm_run: Path) -> None:
    cpu = load_run(ebm_run, checkpoint="last")
    cuda = load_run(ebm_run, checkpoint="last", device="cuda")
    assert all(p.device.type == "cuda" for p in cuda.model.parameters())
    assert next(iter(cuda.observation_set.values())).values.device.type == "cuda"
    for name in cpu.observation_set:
        np.testing.assert_allclose(
            cuda.compare().attrs[f"rmse_{name}"], cpu.compare().attrs[f"rmse_{name}"], rtol=1e-9
        )
