"""Calibration: the problem, the methods that update it, and the services of a run.

The command line is ``climgrad-calibrate`` (:mod:`climgrad.calibrate`); :func:`run_calibration`
runs the same loop from Python with a :class:`CalibrateConfig`, and :func:`build_experiment`
assembles the problem of a config (model, observations, loss) for scripts and notebooks.
"""

from __future__ import annotations

from climgrad.calibration.adapters import ModelAdapter, get_adapter, register_adapter
from climgrad.calibration.checkpoint import load_checkpoint, save_checkpoint
from climgrad.calibration.config import CalibrateConfig, check_overrides, register_configs
from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.experiment import Problem, build_experiment
from climgrad.calibration.loop import run_calibration
from climgrad.calibration.loss import CalibrationLoss, LossTerms
from climgrad.calibration.methods import GradientMethod, StepResult, StepSkipped
from climgrad.calibration.services import Progress, RunServices

__all__ = [
    "CalibrateConfig",
    "CalibrationError",
    "CalibrationLoss",
    "GradientMethod",
    "LossTerms",
    "ModelAdapter",
    "Problem",
    "Progress",
    "RunServices",
    "StepResult",
    "StepSkipped",
    "build_experiment",
    "check_overrides",
    "get_adapter",
    "load_checkpoint",
    "register_adapter",
    "register_configs",
    "run_calibration",
    "save_checkpoint",
]
