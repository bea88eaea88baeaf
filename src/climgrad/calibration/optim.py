"""Optimizers (Adam, L-BFGS) and learning-rate schedules built from the ``optimizer`` config."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LambdaLR,
    LRScheduler,
    ReduceLROnPlateau,
    StepLR,
)

from climgrad.calibration.config import OptimizerConfig, ScheduleConfig
from climgrad.calibration.errors import CalibrationError

__all__ = ["OPTIMIZERS", "SCHEDULES", "Schedule", "build_optimizer", "build_schedule"]

OPTIMIZERS = ("adam", "lbfgs")
SCHEDULES = ("constant", "cosine", "exponential", "step", "plateau")
Schedule = LRScheduler | ReduceLROnPlateau


def _constant(_: int) -> float:
    # A module-level function, not a lambda: LambdaLR.state_dict stores callables that are
    # objects, and plain functions are skipped, so checkpoints stay weights_only-loadable.
    return 1.0


def build_optimizer(parameters: Sequence[nn.Parameter], config: OptimizerConfig) -> Optimizer:
    """``torch.optim.Adam`` or ``torch.optim.LBFGS`` over ``parameters``.

    Raises:
        CalibrationError: Unknown optimizer, non-positive learning rate, or nothing to learn.
    """
    if not parameters:
        raise CalibrationError(
            "no parameter is learnable; set model.params.<name>.learn=true for at least one."
        )
    if not config.lr > 0:
        raise CalibrationError(f"optimizer.lr must be positive; got {config.lr}.")
    if config.name == "adam":
        betas = tuple(float(b) for b in config.betas)
        if len(betas) != 2:
            raise CalibrationError(f"optimizer.betas needs two values; got {list(betas)}.")
        return torch.optim.Adam(
            parameters, lr=config.lr, betas=(betas[0], betas[1]), weight_decay=config.weight_decay
        )
    if config.name == "lbfgs":
        if config.line_search not in (None, "strong_wolfe"):
            raise CalibrationError(
                f"optimizer.line_search must be strong_wolfe or null; got {config.line_search!r}."
            )
        return torch.optim.LBFGS(
            parameters,
            lr=config.lr,
            max_iter=config.max_iter,
            history_size=config.history_size,
            line_search_fn=config.line_search,
        )
    raise CalibrationError(
        f"optimizer.name {config.name!r} is unknown; use one of {', '.join(OPTIMIZERS)}."
    )


def build_schedule(optimizer: Optimizer, config: ScheduleConfig, max_steps: int) -> Schedule:
    """The learning-rate schedule, stepped once per optimizer step.

    ``plateau`` is stepped with the loss; the others without arguments.
    """
    if config.name == "constant":
        return LambdaLR(optimizer, _constant)
    if config.name == "cosine":
        return CosineAnnealingLR(optimizer, T_max=max(int(max_steps), 1), eta_min=config.min_lr)
    if config.name == "exponential":
        return ExponentialLR(optimizer, gamma=config.gamma)
    if config.name == "step":
        return StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if config.name == "plateau":
        return ReduceLROnPlateau(
            optimizer, factor=config.factor, patience=config.patience, min_lr=config.min_lr
        )
    raise CalibrationError(
        f"optimizer.schedule.name {config.name!r} is unknown; use one of {', '.join(SCHEDULES)}."
    )
