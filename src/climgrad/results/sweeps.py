"""Sweeps: the calibrated parameters of every job of a multirun in one Dataset."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from climgrad.calibration.tensorboard_logger import flatten_overrides
from climgrad.results.common import (
    RunError,
    failure,
    is_run_dir,
    job_dirs,
    load_dataset,
    overrides,
)

__all__ = ["load_runs"]


def _coordinate(values: list[Any]) -> np.ndarray[Any, Any]:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        if len(present) == len(values) and all(isinstance(v, int) for v in present):
            return np.array(values, dtype=np.int64)
        return np.array([math.nan if v is None else float(v) for v in values])
    return np.array(["" if v is None else str(v) for v in values], dtype=object)


def load_runs(multirun_dir: str | Path) -> xr.Dataset:
    """The calibrated parameters of every job of a sweep, along a ``run`` dimension.

    Args:
        multirun_dir: A sweep's directory, ``outputs/multirun/DATE/TIME`` (jobs ``0/``, ``1/``...).

    Returns:
        ``params.nc`` of every finished job concatenated along ``run`` (the job number), with
        coordinates ``run_dir`` and one per override key (``optimizer.lr``, ``seed``...; numeric
        where every job's value is a number, NaN or "" where a job lacks the key), and the final
        ``loss`` of each job from ``metrics.json``. Failed jobs (``metrics.json`` with
        ``status: failed``: bad input, an error, or a run stopped on non-finite steps) are
        listed in the attribute ``failed_runs`` as ``job: message`` and left out, as are jobs
        still running (no ``params.nc``); a warning names both.

    Raises:
        RunError: No job directories, or no job has finished (the failures are quoted).
    """
    root = Path(multirun_dir).expanduser().resolve()
    if not root.is_dir():
        raise RunError(f"{root} is not a directory; pass a sweep's outputs/multirun/DATE/TIME.")
    if is_run_dir(root):
        raise RunError(f"{root} is a single run, not a sweep; load it with load_run('{root}').")
    jobs = job_dirs(root)
    if not jobs:
        raise RunError(
            f"{root} holds no job directories (0/, 1/, ... with params.nc); pass a sweep's "
            "outputs/multirun/DATE/TIME."
        )
    failed = {job.name: message for job in jobs if (message := failure(job)) is not None}
    finished = [job for job in jobs if job.name not in failed and (job / "params.nc").is_file()]
    running = [job.name for job in jobs if job not in finished and job.name not in failed]
    if failed or running:
        parts = [f"failed: {', '.join(failed)}"] if failed else []
        parts += [f"running (no params.nc): {', '.join(running)}"] if running else []
        warnings.warn(f"load_runs: left out jobs {'; '.join(parts)}", stacklevel=2)
    if not finished:
        quoted = "; ".join(f"{name}: {message}" for name, message in failed.items())
        raise RunError(
            f"no job of {root} has finished" + (f" (failed: {quoted})" if quoted else "") + "."
        )
    datasets, job_overrides, losses = [], [], []
    for job in finished:
        params = load_dataset(job / "params.nc")
        fallback = str(params.attrs.get("overrides", "")).split()
        job_overrides.append(flatten_overrides(overrides(job, fallback)))
        metrics_file = job / "metrics.json"
        loss = math.nan
        if metrics_file.is_file():
            total = json.loads(metrics_file.read_text()).get("loss", {}).get("total", math.nan)
            loss = float(total)
        losses.append(loss)
        datasets.append(params)
    # Posterior summaries (<name>_sd, ..., correlation) exist only in posterior jobs: a sweep that
    # mixes methods keeps them, NaN for the jobs without (join="outer"; data_vars="all").
    try:
        combined = xr.concat(
            datasets, dim="run", combine_attrs="drop_conflicts", join="outer", data_vars="all"
        )
    except ValueError as err:
        raise RunError(
            f"the jobs of {root} have parameters of different shapes ({err}); load them one by "
            "one with load_run."
        ) from None
    names = [job.name for job in finished]
    run_index: Any = [int(n) for n in names] if all(n.isdigit() for n in names) else names
    keys = sorted({key for job in job_overrides for key in job})
    coords: dict[str, Any] = {"run": run_index, "run_dir": ("run", [str(j) for j in finished])}
    for key in keys:
        coords[key] = ("run", _coordinate([job.get(key) for job in job_overrides]))
    combined = combined.assign_coords(coords)
    combined["loss"] = xr.DataArray(
        np.array(losses), dims=("run",), attrs={"units": "1", "long_name": "final loss"}
    )
    combined.attrs.pop("config", None)
    combined.attrs["failed_runs"] = "; ".join(f"{k}: {v}" for k, v in failed.items())
    return combined
