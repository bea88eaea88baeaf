"""Checkpoints: written atomically, readable with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors, primitives and containers of them, plus the resolved config as a
YAML string, so that it loads without unpickling arbitrary objects and can be read in a notebook
without Hydra. It is written to a temporary file in the same directory and renamed over the old
one (``os.replace`` is atomic on POSIX), so a run killed mid-write leaves the previous checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from climgrad.calibration.errors import CalibrationError

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "resolve_resume", "save_checkpoint"]

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file, fsync, rename).

    Args:
        path: Destination, e.g. ``<run>/checkpoints/last.pt``.
        payload: Tensors, numbers, strings, lists and dicts of them only.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save({"format": CHECKPOINT_FORMAT, **payload}, stream)
            stream.flush()
            os.fsync(stream.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` onto the CPU.

    Raises:
        CalibrationError: The file is missing, unreadable or of another format.
    """
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"no checkpoint at {path}; check trainer.resume.")
    try:
        payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise CalibrationError(f"cannot read the checkpoint {path}: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CalibrationError(
            f"{path} is not a climgrad checkpoint of format {CHECKPOINT_FORMAT}; "
            "pass the last.pt of a climgrad-calibrate run."
        )
    return payload


def resolve_resume(resume: Any, run_dir: Path, launch_dir: Path) -> Path | None:
    """The checkpoint ``trainer.resume`` points at, or ``None`` for a fresh start.

    Args:
        resume: ``false``/``null``; ``true`` (``<run_dir>/checkpoints/last.pt``, for a run
            relaunched with ``hydra.run.dir=<its dir>``); or a run directory or checkpoint path
            (relative paths from ``launch_dir``).
        run_dir: This run's output directory.
        launch_dir: The directory the command was started in.

    Raises:
        CalibrationError: ``true`` without a checkpoint here, or a path with none.
    """
    if resume is None or resume is False or (isinstance(resume, str) and resume == "false"):
        return None
    if resume is True or (isinstance(resume, str) and resume == "true"):
        candidate = run_dir / "checkpoints" / "last.pt"
        if not candidate.is_file():
            raise CalibrationError(
                f"trainer.resume=true but {candidate} does not exist; pass the run to continue, "
                "trainer.resume=<run dir or last.pt>, or hydra.run.dir=<run dir>."
            )
        return candidate
    path = Path(str(resume))
    if not path.is_absolute():
        path = launch_dir / path
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CalibrationError(
            f"trainer.resume={resume} has no checkpoint at {path}; give a run directory "
            "holding checkpoints/last.pt, or the checkpoint file itself."
        )
    return path
