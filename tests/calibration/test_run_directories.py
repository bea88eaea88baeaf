"""Run directories under real working habits: parallel runs, resumed attempts, failed sweep jobs.

Each test reproduces a failure seen on a fresh clone: two runs sharing a directory, a resume that
rewrote the record of the run it continued, a sweep stopped by one bad job, a run killed before
its first checkpoint that could not be resumed, results tables missing from calibrate.log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.loop import run_calibration
from climgrad.calibration.methods import GradientMethod, StepSkipped
from climgrad.calibration.rundir import RunLock, attempt_record
from climgrad.results import RunError, load_run, load_runs

from .conftest import compose_config, run_app

#: A short EBM1D twin on 18 bands.
TWIN = [
    "experiment=twin_ebm1d",
    "model.options.bands=18",
    "trainer.progress=false",
    "trainer.device=cpu",
    "logger.figure_every=0",
]


def _run(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    return run_calibration(compose_config(overrides), run_dir, overrides=overrides)


# ---------------------------------------------------------------------------------------------
# One live run per directory


def test_a_live_run_in_the_directory_stops_the_second(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / ".lock").write_text(json.dumps({"pid": other.pid, "host": os.uname()[1]}))
        with pytest.raises(CalibrationError, match=f"pid {other.pid}") as error:
            _run(run_dir, [*TWIN, "trainer.max_steps=1"])
        assert "\n" not in str(error.value) and "hydra.run.dir" in str(error.value)
        assert not (run_dir / "checkpoints").exists()
    finally:
        other.kill()
        other.wait()
    # The owner is gone (a kill -9): its lock is taken over, and released at the end.
    metrics = _run(run_dir, [*TWIN, "trainer.max_steps=1"])
    assert metrics["steps"] == 1 and not (run_dir / ".lock").exists()


def test_the_lock_is_released_when_a_run_fails(tmp_path: Path) -> None:
    lock = RunLock(tmp_path)
    with pytest.raises(ValueError), lock:
        assert (tmp_path / ".lock").is_file()
        raise ValueError("boom")
    assert not (tmp_path / ".lock").exists()


def test_runs_started_together_get_their_own_directories(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "climgrad.calibrate",
        *TWIN,
        "trainer.max_steps=1",
        f"paths.output_dir={tmp_path}",
    ]
    processes = [subprocess.Popen(command, stdout=subprocess.DEVNULL) for _ in range(2)]
    assert [p.wait(timeout=300) for p in processes] == [0, 0]
    runs = sorted(p.parent for p in tmp_path.glob("*/*/metrics.json"))
    assert len(runs) == 2 and runs[0] != runs[1]


# ---------------------------------------------------------------------------------------------
# Attempts keep their records


def test_a_resumed_attempt_keeps_the_record_of_the_first(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = run_app([*TWIN, "trainer.max_steps=2", f"hydra.run.dir={run_dir}"])
    assert first.returncode == 0, first.stderr[-2000:]
    record = (run_dir / ".hydra" / "overrides.yaml").read_text()
    resumed = run_app(
        [*TWIN, "trainer.max_steps=3", "trainer.resume=true", f"hydra.run.dir={run_dir}"]
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == record
    second = (run_dir / ".hydra" / "attempt-2" / "overrides.yaml").read_text()
    assert "trainer.resume=true" in second
    log = (run_dir / "calibrate.log").read_text()
    assert "attempt 2" in log and log.count("RMSE:") == 2  # both results tables
    assert "parameter" in log and "calibrated" in log


def test_attempt_records_are_numbered_once_per_attempt(tmp_path: Path) -> None:
    assert attempt_record(str(tmp_path / "a")) == ".hydra"
    (tmp_path / "b" / ".hydra").mkdir(parents=True)
    (tmp_path / "b" / ".hydra" / "config.yaml").write_text("{}")
    (tmp_path / "b" / ".hydra" / "attempt-2").mkdir()
    first = attempt_record(str(tmp_path / "b"))
    (tmp_path / "b" / first).mkdir()
    assert first == ".hydra/attempt-3" == attempt_record(str(tmp_path / "b"))


def test_a_failed_run_is_marked_and_a_finished_one_is_not_overwritten(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    bad = run_app([*TWIN, "model.params.B.value=abc", f"hydra.run.dir={run_dir}"])
    assert bad.returncode == 1
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is not a number" in lines[0], bad.stderr
    failed = json.loads((run_dir / "metrics.json").read_text())
    assert failed["status"] == "failed" and "is not a number" in failed["message"]
    with pytest.raises(RunError, match="failed run"):
        load_run(run_dir)

    done = tmp_path / "done"
    assert run_app([*TWIN, "trainer.max_steps=1", f"hydra.run.dir={done}"]).returncode == 0
    before = (done / "metrics.json").read_text()
    again = run_app([*TWIN, "model.params.B.value=abc", f"hydra.run.dir={done}"])
    assert again.returncode == 1
    assert (done / "metrics.json").read_text() == before
    assert json.loads(before)["status"] == "completed"
    attempt = json.loads((done / ".hydra" / "attempt-2" / "failure.json").read_text())
    assert attempt["status"] == "failed"


def test_a_sweep_survives_a_failed_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_app(
        [
            "-m",
            *TWIN,
            "trainer.max_steps=1",
            "model.params.A.value=210,-5",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert result.returncode != 0  # the sweep reports its failure ...
    assert (sweep / "0" / "params.nc").is_file()  # ... after running the other jobs
    failed = json.loads((sweep / "1" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "A" in failed["message"]
    with pytest.warns(UserWarning, match="failed: 1"):
        params = load_runs(sweep)
    assert list(params.run.values) == [0]
    assert params.attrs["failed_runs"].startswith("1: ")


# ---------------------------------------------------------------------------------------------
# Checkpoints, outputs and the state they describe


def test_a_run_stopped_before_its_first_checkpoint_can_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    overrides = [*TWIN, "trainer.max_steps=3", "trainer.checkpoint_every=100"]
    original = GradientMethod.step
    calls = {"n": 0}

    def interrupted(self: GradientMethod, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GradientMethod, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(run_dir, overrides)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["step"] == 0 and not (run_dir / ".lock").exists()
    monkeypatch.setattr(GradientMethod, "step", original)
    metrics = _run(run_dir, [*overrides, "trainer.resume=true"])
    assert metrics["steps"] == 3 and metrics["resumed_from"].endswith("last.pt")


def test_params_nc_best_pt_and_load_run_describe_the_best_state(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    metrics = _run(run_dir, [*TWIN, "trainer.max_steps=4", "optimizer.lr=0.05"])
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    run = load_run(run_dir)
    assert metrics["status"] == "completed" and metrics["state"].startswith("best")
    assert metrics["loss"]["total"] == pytest.approx(metrics["best_loss"], rel=1e-12)
    with xr.open_dataset(run_dir / "params.nc") as params:
        for name, value in best["parameters"].items():
            np.testing.assert_array_equal(params[name].values, value.double().numpy())
            np.testing.assert_array_equal(run.params[name].values, value.double().numpy())
    assert last["step"] == 4 and best["progress"]["best_step"] == run.step
    # Fixed parameters keep exactly the configured values (conf/model/ebm1d.yaml).
    for name, configured in {
        "S0": 1360.0,
        "Tf": 263.15,
        "ai": 0.62,
        "heat_capacity": 4.2e7,
    }.items():
        assert float(run.params[name]) == configured and metrics["parameters"][name] == configured


def test_divergence_names_the_likely_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = GradientMethod.step
    calls = {"n": 0}

    def diverging(self: GradientMethod, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 1:
            raise StepSkipped("non-finite loss in surface_temperature")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GradientMethod, "step", diverging)
    overrides = [*TWIN, "trainer.max_steps=10", "trainer.max_nonfinite=2", "optimizer.lr=0.5"]
    with pytest.raises(CalibrationError, match=r"Likely cause: .*optimizer\.lr=0\.05") as error:
        _run(tmp_path / "run", overrides)
    assert "\n" not in str(error.value)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["stop_reason"] == "nonfinite"


# ---------------------------------------------------------------------------------------------
# Messages and TensorBoard


def test_misspelt_parameter_name_is_one_line_listing_the_parameters(tmp_path: Path) -> None:
    result = run_app(["model.params.BB.value=2", f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "model.params.BB is not a parameter of model 'ebm1d'" in lines[0]
    assert "A, B, D" in lines[0] and "Did you mean 'B'?" in lines[0]
    assert not (tmp_path / "run").exists()


def test_tensorboard_scalars_carry_units_and_runs_name_their_model(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _run(run_dir, [*TWIN, "trainer.max_steps=2"])
    (events,) = {p.parent for p in (run_dir / "tb").rglob("*tfevents*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert "[W m-2 K-1]" in accumulator.SummaryMetadata("param/B").summary_description
    assert "dimensionless" in accumulator.SummaryMetadata("loss/total").summary_description
    assert (
        "[K]" in accumulator.SummaryMetadata("final/rmse_surface_temperature").summary_description
    )
    hparams = accumulator.summary_metadata["_hparams_/session_start_info"].plugin_data.content
    assert b"ebm1d" in hparams and b"twin_ebm1d" in hparams


def test_progress_bar_ends_where_the_run_stopped(tmp_path: Path) -> None:
    # A plateau stop after 3 of 50 steps: the bar's last line says 3/3, not 3/50.
    overrides = [
        *TWIN,
        "trainer.progress=true",
        "trainer.max_steps=50",
        "trainer.plateau_patience=1",
        "trainer.plateau_tol=10.0",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    started = time.monotonic()
    result = run_app(overrides)
    assert result.returncode == 0, result.stderr[-2000:]
    assert time.monotonic() - started < 300
    # tqdm's lines start with the description, the experiment's name.
    bar = [line for line in result.stderr.replace("\r", "\n").splitlines() if "twin_ebm1d:" in line]
    steps = json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"]
    assert steps < 50 and f"{steps}/{steps}" in bar[-1]
