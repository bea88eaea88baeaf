"""Calibration: loss, optimizers, the training loop, checkpoints, TensorBoard and outputs.

The command line is ``climgrad-calibrate`` (:mod:`climgrad.calibrate`); :func:`run_calibration`
runs the same loop from Python with a :class:`CalibrateConfig`.
"""

from __future__ import annotations

from climgrad.calibration import adapters_column, adapters_surface  # noqa: F401 (registers)
from climgrad.calibration.adapters import (
    ADAPTERS,
    EBM1DAdapter,
    ModelAdapter,
    ObservationLayout,
    TwoLayerAdapter,
    get_adapter,
    register_adapter,
)
from climgrad.calibration.checkpoint import load_checkpoint, save_checkpoint
from climgrad.calibration.config import CalibrateConfig, check_overrides, register_configs
from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.loop import build_observations, run_calibration
from climgrad.calibration.loss import CalibrationLoss, LossTerms
from climgrad.calibration.optim import build_optimizer, build_schedule
from climgrad.calibration.outputs import summary_table, write_metrics, write_params

__all__ = [
    "ADAPTERS",
    "CalibrateConfig",
    "CalibrationError",
    "CalibrationLoss",
    "EBM1DAdapter",
    "LossTerms",
    "ModelAdapter",
    "ObservationLayout",
    "TwoLayerAdapter",
    "build_observations",
    "build_optimizer",
    "build_schedule",
    "check_overrides",
    "get_adapter",
    "load_checkpoint",
    "register_adapter",
    "register_configs",
    "run_calibration",
    "save_checkpoint",
    "summary_table",
    "write_metrics",
    "write_params",
]
