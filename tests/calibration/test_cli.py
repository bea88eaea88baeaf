"""The app as users run it, in real processes: errors, a multirun, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import xarray as xr

from climgrad.calibration.loop import run_calibration

from .conftest import REPO, compose_config, run_app

TWIN = [
    "experiment=twin_ebm1d",
    "trainer.max_steps=10",
    "trainer.checkpoint_every=2",
    "trainer.progress=false",
    "trainer.device=cpu",
    "trainer.dtype=float64",
]


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def test_misspelt_key_fails_with_one_line_listing_valid_keys(tmp_path: Path) -> None:
    result = run_app(["optimizer.lrr=0.1", f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.returncode == 2
    line = _error_line(result)
    assert line.startswith("climgrad-calibrate: error: unknown config key 'optimizer.lrr'")
    assert "lr, betas" in line and "Did you mean 'lr'?" in line
    assert not (tmp_path / "run").exists()


def test_bad_data_path_fails_with_one_line_and_overwrites_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "params.nc").write_text("earlier results")
    result = run_app(["data.spec=data/specs/missing.yaml", f"hydra.run.dir={run_dir}"])
    assert result.returncode == 1
    line = _error_line(result)
    assert line.startswith("climgrad-calibrate: error: ")
    assert "missing.yaml" in line and "Fix:" in line
    assert (run_dir / "params.nc").read_text() == "earlier results"
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "tb").exists()


def test_multirun_of_two_jobs(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun"
    result = run_app(["-m", *TWIN, "trainer.max_steps=2", "seed=0,1", f"hydra.sweep.dir={sweep}"])
    assert result.returncode == 0, result.stderr[-2000:]
    for job in ("0", "1"):
        job_dir = sweep / job
        for name in ("params.nc", "metrics.json", "checkpoints/last.pt", ".hydra/config.yaml"):
            assert (job_dir / name).is_file(), f"{job}/{name}"
        assert any((job_dir / "tb").iterdir())
        metrics = json.loads((job_dir / "metrics.json").read_text())
        assert metrics["seed"] == int(job) and metrics["steps"] == 2
    assert (sweep / "multirun.yaml").is_file()


def _checkpoint_step(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["step"])
    except Exception:  # not written yet
        return -1


def test_resume_after_sigkill_is_bit_identical(tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "climgrad.calibrate", *TWIN, f"hydra.run.dir={killed}"]
    process = subprocess.Popen(
        [*command, "trainer.step_delay=0.3"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    try:
        while _checkpoint_step(last) < 4:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint at step 4 within 240 s"
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    killed_at = _checkpoint_step(last)
    assert 4 <= killed_at < 10
    assert not (killed / "metrics.json").exists()

    resumed = subprocess.run(
        [*command, "trainer.resume=true"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics["steps"] == 10 and metrics["resumed_from"] == str(last)

    full = tmp_path / "full"
    run_calibration(compose_config(TWIN), full, overrides=TWIN)
    one = torch.load(last, weights_only=True)
    other = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    assert one["step"] == other["step"] == 10
    for key, value in other["model"].items():
        assert torch.equal(one["model"][key], value), key
    for key, value in other["parameters"].items():
        assert torch.equal(one["parameters"][key], value), key
    with xr.open_dataset(killed / "params.nc") as a, xr.open_dataset(full / "params.nc") as b:
        for name in b.data_vars:
            assert a[name].values.tobytes() == b[name].values.tobytes(), name
