"""A sweep through the submitit launcher (the SLURM launcher's code path, run locally)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from climgrad import load_runs

from .conftest import run_app

pytest.importorskip(
    "hydra_plugins.hydra_submitit_launcher", reason="the launchers extra is not installed"
)


def test_a_submitit_local_sweep_of_two_seeds_loads_as_one_dataset(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun"
    result = run_app(
        [
            "-m",
            "experiment=twin_ebm1d",
            "launcher=submitit_local",
            "seed=0,1",
            "trainer.max_steps=3",
            "trainer.checkpoint_every=3",
            "logger=none",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (sweep / ".submitit").is_dir()  # the jobs ran through submitit
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["seed"] == int(job) and metrics["steps"] == 3
    runs = load_runs(sweep)
    assert runs.sizes["run"] == 2
    assert sorted(runs["seed"].values.tolist()) == [0, 1]
    assert "A" in runs and bool(runs["loss"].notnull().all())
