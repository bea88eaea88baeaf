"""``climgrad-calibrate``: the Hydra app that calibrates a model against observations.

Run ``climgrad-calibrate`` (or ``python -m climgrad.calibrate``) for the default experiment,
``ebm_ncep``; override anything on the command line::

    climgrad-calibrate experiment=twin_ebm1d optimizer.lr=3e-2 model.params.D.learn=false
    climgrad-calibrate --cfg job                          # show the composed config
    climgrad-calibrate -m optimizer.lr=1e-3,1e-2 seed=0,1  # a sweep, one job per combination

The configs live in the top-level ``conf/``, shipped as the package ``climgrad.conf`` and loaded as
``pkg://climgrad.conf``, so the app works from a checkout (edits to ``conf/`` count at once) and
from an installed wheel, started from any directory: data and outputs follow ``paths.*``. Bad
input ends with one line on stderr and exit status 2 (config) or 1 (data, model); ``debug=true``
or ``hydra.verbose=true`` shows the traceback instead. See ``docs/calibration.md``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from climgrad.calibration.config import check_overrides, register_configs
from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.rundir import RECORD_DIR, log_to_files, record_failure
from climgrad.data import ObservationError

__all__ = ["main"]

log = logging.getLogger("climgrad.calibrate")
PROGRAM = "climgrad-calibrate"


def _fail(message: str, status: int) -> None:
    print(f"{PROGRAM}: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def _wants_traceback(cfg: DictConfig) -> bool:
    verbose = HydraConfig.get().verbose if HydraConfig.initialized() else False
    return bool(cfg.get("debug", False)) or bool(verbose)


@hydra.main(version_base="1.3", config_path="pkg://climgrad.conf", config_name="calibrate")
def _calibrate(cfg: DictConfig) -> float:
    from climgrad.calibration.loop import run_calibration

    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    overrides = list(hydra_config.overrides.task)
    record = str(hydra_config.output_subdir) if hydra_config.output_subdir else None
    # The unit registry of climgrad.data redefines a few pint units on purpose; not news to users.
    logging.getLogger("pint.util").setLevel(logging.ERROR)
    if record and record != RECORD_DIR:
        log_to_files(f"--- attempt {record.rsplit('-', 1)[-1]}: {' '.join(overrides)}")
    multirun = hydra_config.mode == RunMode.MULTIRUN
    try:
        metrics = run_calibration(cfg, run_dir, overrides=overrides)
    except (CalibrationError, ObservationError) as err:
        record_failure(run_dir, str(err), record=record, overrides=overrides)
        if _wants_traceback(cfg):
            raise
        log_to_files(str(err), logging.ERROR)
        if multirun:
            # An exception (not an exit) lets the sweep go on with its other jobs; Hydra reports
            # the failed ones at the end.
            print(f"{PROGRAM}: error in {run_dir}: {err}", file=sys.stderr)
            raise CalibrationError(str(err)) from None
        _fail(str(err), 1)
        raise AssertionError("unreachable") from err
    except Exception as err:
        record_failure(run_dir, f"{type(err).__name__}: {err}", record=record, overrides=overrides)
        raise
    # Sweepers (e.g. optuna) minimise the returned value.
    return float(metrics["loss"]["total"])


def main() -> None:
    """Console-script entry point: check the command line, then hand over to Hydra."""
    register_configs()
    arguments = sys.argv[1:]
    debug = any(a in ("debug=true", "hydra.verbose=true") for a in arguments)
    try:
        check_overrides(arguments)
    except CalibrationError as err:
        if debug:
            raise
        _fail(str(err), 2)
    _calibrate()


if __name__ == "__main__":
    main()
