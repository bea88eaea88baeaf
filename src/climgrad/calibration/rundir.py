"""Run directories: one live run per directory, a record per attempt, failures written down.

* **Lock.** A run holds ``<run>/.lock`` (its pid and host) while it writes. A second run that finds
  a live owner stops with one line instead of interleaving outputs; a lock left by a killed run
  (its pid gone) is taken over, so ``kill -9`` and resume still work.
* **Attempts.** The first attempt in a directory records its config in ``.hydra/`` (Hydra's
  files); a resumed or repeated attempt records its own beside it, in ``.hydra/attempt-N/``, so
  the record of the run that wrote ``params.nc`` is never overwritten. ``calibrate.log`` is
  appended to, with a line marking each attempt.
* **Failures.** A run that fails on bad input or an error records ``status: failed`` and the
  message in ``metrics.json`` when the directory holds no finished run (a sweep's job directory,
  a fresh run), and always in the attempt's record as ``failure.json``; a finished run's outputs
  are never replaced by a failure.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.outputs import write_metrics

__all__ = [
    "LOCK_NAME",
    "RECORD_DIR",
    "RunLock",
    "attempt_record",
    "log_to_files",
    "record_failure",
]

#: Hydra's record of the first attempt (config, overrides, hydra config).
RECORD_DIR = ".hydra"
#: The lock file of a live run.
LOCK_NAME = ".lock"


@functools.lru_cache(maxsize=64)
def attempt_record(output_dir: str) -> str:
    """Where this attempt's record goes, relative to the run directory (resolved once per run).

    ``.hydra`` for the first attempt in ``output_dir``; ``.hydra/attempt-N`` (N = 2, 3, ...) for
    later ones. Used as Hydra's ``hydra.output_subdir`` through the ``climgrad_record``
    resolver; cached, so that every evaluation within one attempt agrees.
    """
    record = Path(output_dir) / RECORD_DIR
    if not (record / "config.yaml").exists():
        return RECORD_DIR
    number = 2
    while (record / f"attempt-{number}").exists():
        number += 1
    return f"{RECORD_DIR}/attempt-{number}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class RunLock:
    """``<run_dir>/.lock`` held while a run writes (a context manager).

    Raises:
        CalibrationError: Another live process on this host holds the lock.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._held = False

    def _owner(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner() or {}
                pid, host = int(owner.get("pid", -1)), owner.get("host")
                live = pid > 0 and (host != me["host"] or _alive(pid))
                if live and pid != me["pid"]:
                    where = f"pid {pid}" + (f" on {host}" if host != me["host"] else "")
                    raise CalibrationError(
                        f"another climgrad-calibrate run ({where}) is writing to "
                        f"{self.path.parent}; wait for it to finish, or start this one in "
                        "another directory (hydra.run.dir=...). If that run is gone, delete "
                        f"{self.path}."
                    ) from None
                self.path.unlink(missing_ok=True)  # left by a killed run (or by this process)
                continue
            with os.fdopen(handle, "w") as stream:
                json.dump(me, stream)
            self._held = True
            return
        raise CalibrationError(f"cannot take the run lock {self.path}; delete it and retry.")

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def record_failure(
    run_dir: Path, message: str, *, record: str | None = None, **fields: Any
) -> None:
    """Write down a failed attempt: ``failure.json`` in its record, ``metrics.json`` if none.

    Args:
        run_dir: The run directory.
        message: What went wrong (one line).
        record: The attempt's record directory relative to ``run_dir`` (``.hydra`` or
            ``.hydra/attempt-N``); no ``failure.json`` without it.
        **fields: More entries (experiment, overrides, ...).
    """
    run_dir = Path(run_dir)
    failure = {"status": "failed", "message": " ".join(str(message).split()), **fields}
    if record is not None and (run_dir / record).is_dir():
        write_metrics(run_dir / record / "failure.json", failure)
    metrics = run_dir / "metrics.json"
    if run_dir.is_dir() and not metrics.exists():
        write_metrics(metrics, failure)


def log_to_files(text: str, level: int = logging.INFO) -> None:
    """Write ``text`` to the run's log files (``calibrate.log``) without repeating it on the
    console, where it was printed (tables) or is reported otherwise (errors)."""
    logger = logging.getLogger("climgrad.calibrate")
    record = logger.makeRecord(logger.name, level, __file__, 0, text, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
