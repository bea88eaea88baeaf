"""What the run loader and the sweep loader share: run-directory checks and small readers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import xarray as xr
from omegaconf import OmegaConf

from climgrad.calibration.errors import CalibrationError

__all__ = [
    "RunError",
    "check_run_dir",
    "failure",
    "is_run_dir",
    "job_dirs",
    "load_dataset",
    "overrides",
]


class RunError(CalibrationError):
    """A run directory that cannot be loaded; the message is one line with the fix."""


def is_run_dir(path: Path) -> bool:
    return any(
        (path / marker).exists()
        for marker in ("checkpoints", "params.nc", "metrics.json", ".hydra/config.yaml")
    )


def job_dirs(path: Path) -> list[Path]:
    """The job directories of a sweep, in job order (numeric names numerically)."""
    jobs = [child for child in path.iterdir() if child.is_dir() and is_run_dir(child)]
    return sorted(jobs, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))


def check_run_dir(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise RunError(
            f"{run_dir} is not a directory; pass the output directory of a climgrad-calibrate "
            "run (outputs/DATE/TIME)."
        )
    if is_run_dir(run_dir):
        return
    if job_dirs(run_dir):
        raise RunError(
            f"{run_dir} is a sweep (multirun) directory, not a run; load one job with "
            f"load_run('{run_dir}/0') or every job's parameters with load_runs('{run_dir}')."
        )
    raise RunError(
        f"{run_dir} is not a run directory (no checkpoints/, params.nc or .hydra/); pass the "
        "output directory of a climgrad-calibrate run, e.g. outputs/DATE/TIME."
    )


def overrides(run_dir: Path, fallback: Sequence[str]) -> list[str]:
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        loaded = OmegaConf.to_container(OmegaConf.load(overrides_file))
        if isinstance(loaded, list):
            return [str(item) for item in loaded]
    return [str(item) for item in fallback]


def load_dataset(path: Path) -> xr.Dataset:
    with xr.open_dataset(path) as dataset:
        return dataset.load()


def failure(run_dir: Path) -> str | None:
    """The message of a failed run (``metrics.json`` with ``status: failed``), else ``None``."""
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        return None
    try:
        recorded = json.loads(metrics.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(recorded, dict) and recorded.get("status") == "failed":
        return str(recorded.get("message") or recorded.get("stop_message") or "failed")
    return None
