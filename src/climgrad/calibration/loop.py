"""The calibration loop: a problem, a method that updates it, and the services of a run.

:func:`run_calibration` is what ``climgrad-calibrate`` runs for each job; it needs no Hydra and
can be called from a notebook with a :class:`~climgrad.calibration.config.CalibrateConfig`. The
parts, each in its module:

* the **problem** (:func:`~climgrad.calibration.experiment.build_experiment`): parameters ->
  predictions on the observation grid -> misfit and prior;
* the **method** (``method`` group, :func:`~climgrad.calibration.methods.build_method`): one step
  of a gradient optimizer, an ensemble iteration or a sampler's chain; a gradient step whose loss
  or gradient is not finite, or whose equilibrium does not converge, is skipped with parameters
  and optimizer state restored; the posterior methods also give the posterior at the end;
* the **run services** (:class:`~climgrad.calibration.services.RunServices`): checkpoints and
  resume, TensorBoard, progress, the stopping rules, and the outputs at the end.

With ``trainer.distributed=true`` under torchrun, every rank runs this loop on the whole problem
but solves only its share of the sites (:mod:`climgrad.calibration.distributed`); rank 0 alone
writes, into its run directory, from which every rank resumes.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from climgrad.calibration import distributed
from climgrad.calibration.config import CalibrateConfig
from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.executors import ensemble_scope
from climgrad.calibration.experiment import as_config, build_experiment
from climgrad.calibration.methods import StepSkipped, build_method
from climgrad.calibration.rundir import RunLock
from climgrad.calibration.services import RunServices
from climgrad.models.base import COMPILE_BACKENDS, CompiledStep, Model

__all__ = ["run_calibration"]

log = logging.getLogger("climgrad.calibrate")


def run_calibration(
    cfg: CalibrateConfig | DictConfig, run_dir: str | Path, *, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Calibrate a model against observations as ``cfg`` says; write the run's outputs.

    Args:
        cfg: The composed config (a :class:`CalibrateConfig` or a DictConfig of one).
        run_dir: Output directory: ``tb/``, ``checkpoints/``, ``params.nc``, ``fit.nc``,
            ``metrics.json`` are written there.
        overrides: Command-line overrides (recorded in outputs and hparams).

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        CalibrationError, ObservationError: Bad input, before anything is written; or a run
            that stopped on non-finite steps, after writing its outputs.
    """
    wall_start = time.perf_counter()
    config = as_config(cfg)
    trainer = config.trainer
    if trainer.max_steps < 0 or trainer.checkpoint_every < 1 or trainer.max_nonfinite < 1:
        raise CalibrationError(
            "trainer.max_steps must be >= 0, trainer.checkpoint_every and "
            "trainer.max_nonfinite >= 1."
        )
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    if trainer.compile_backend not in COMPILE_BACKENDS:
        raise CalibrationError(
            f"trainer.compile_backend={trainer.compile_backend!r} is unknown; use one of "
            f"{', '.join(COMPILE_BACKENDS)}."
        )
    if trainer.threads is not None and trainer.threads < 1:
        raise CalibrationError(f"trainer.threads must be >= 1 (or null); got {trainer.threads}.")
    threads_before = torch.get_num_threads()
    if trainer.threads is not None:
        torch.set_num_threads(int(trainer.threads))
    try:
        return _calibrate(config, run_dir, overrides, wall_start)
    finally:
        torch.set_num_threads(threads_before)


def _calibrate(
    config: CalibrateConfig, run_dir: str | Path, overrides: Sequence[str], wall_start: float
) -> dict[str, Any]:
    trainer = config.trainer

    group = distributed.setup(trainer)  # [distributed] None: one process
    model: Model | None = None
    steps: list[CompiledStep] = []
    try:
        problem = build_experiment(config)  # fails on bad input before anything is written
        model = problem.model
        steps = _compile_steps(model, trainer.compile, trainer.compile_backend)
        parallel = distributed.shard(problem, group)  # [distributed] this rank's sites
        if parallel is None:
            problem.check()
        else:
            parallel.check()
            run_dir = parallel.group.shared_path(run_dir)  # rank 0's: every rank resumes from it
        method = build_method(problem)  # method group: gradient, eki, uki, cmaes, laplace, ...
        if parallel is not None:
            parallel.attach(method)
        services = RunServices(
            config,
            Path(run_dir),
            list(overrides),
            problem,
            method,
            rank=0 if group is None else group.rank,  # [distributed] rank 0 alone writes
            world_size=1 if group is None else group.world_size,
        )
        lock = RunLock(Path(run_dir)) if services.writes else nullcontext()
        # Ensemble executors started in the run share <run>/ensemble_cache (finished members of an
        # interrupted iteration are not re-run) and are shut down however the run ends.
        with lock, ensemble_scope(Path(run_dir) / "ensemble_cache"):  # one live run per directory
            services.resume()
            with services:  # checkpoint and TensorBoard directories, progress bar
                while services.running():
                    try:
                        result = method.step(observe=services.observe, details=services.logs_step())
                    except StepSkipped as skipped:
                        services.skip(str(skipped))
                        continue
                    services.advance(result)
            return services.finish(wall_start)
    finally:
        _restore_steps(model, steps)
        distributed.teardown(group)


def _compile_steps(model: Model, enabled: bool, backend: str) -> list[CompiledStep]:
    """``trainer.compile``: the model's step compiled for the run (nothing when disabled)."""
    if not enabled:
        return []
    steps = model.compile_step(backend)
    log.info(
        "trainer.compile: %s compiled with torch.compile (backend %s) on its first call.",
        ", ".join(sorted({step.name for step in steps})),
        backend,
    )
    return steps


def _restore_steps(model: Model | None, steps: Sequence[CompiledStep]) -> None:
    """Undo :func:`_compile_steps`; say so where no rollout ever called the compiled step."""
    if model is None or not steps:
        return
    model.restore_step()
    if not any(step.calls for step in steps):
        log.info(
            "trainer.compile had no effect: %s was never called (this model's simulation "
            "solves equilibria by Newton's method or steps in closed form, without rollouts).",
            steps[0].name,
        )
