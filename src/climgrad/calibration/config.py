"""Structured-config schemas of ``climgrad-calibrate``, registered in Hydra's ConfigStore.

The YAML files in the top-level ``conf/`` (shipped as the package ``climgrad.conf`` and loaded by
Hydra as ``pkg://climgrad.conf``) fill these dataclasses, so a misspelt key fails at
composition instead of being silently ignored. :func:`check_overrides` checks command-line keys
against the same schemas before Hydra runs, so that a typo fails with one line listing the valid
keys (Hydra's own message names the bad key but not the good ones).

Groups: ``paths`` (:class:`PathsConfig`), ``model`` (:class:`ModelConfig`), ``data``
(:class:`DataConfig`), ``loss``
(:class:`LossConfig`), ``optimizer`` (:class:`OptimizerConfig`), ``trainer``
(:class:`TrainerConfig`), ``logger`` (:class:`LoggerConfig`); ``experiment`` and ``launcher``
files are ``# @package _global_`` and set several of these at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from climgrad.calibration.errors import CalibrationError

__all__ = [
    "CONFIG_MODULE",
    "GROUPS",
    "CalibrateConfig",
    "DataConfig",
    "LoggerConfig",
    "LossConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ParamConfig",
    "PathsConfig",
    "ScheduleConfig",
    "TrainerConfig",
    "TwinVariableConfig",
    "check_overrides",
    "config_dir",
    "register_configs",
]

#: The package the top-level ``conf/`` ships as (``pkg://climgrad.conf`` for Hydra).
CONFIG_MODULE = "climgrad.conf"
#: Config groups selectable on the command line (``model=ebm1d``).
GROUPS = (
    "paths",
    "model",
    "data",
    "loss",
    "optimizer",
    "trainer",
    "logger",
    "experiment",
    "launcher",
)


def config_dir() -> Path:
    """The folder of the configs: ``conf/`` of the checkout, or ``climgrad/conf`` of a wheel."""
    return Path(str(importlib.resources.files(CONFIG_MODULE)))


@dataclass
class PathsConfig:
    """Where runs read data and write outputs (see :mod:`climgrad.paths`).

    Attributes:
        root_dir: The project root: ``$CLIMGRAD_ROOT``, else the climgrad checkout, else the
            working directory (resolved once). Relative paths in the config start here.
        data_dir: Observations, specs, forcing and background files (default
            ``<root_dir>/data``).
        output_dir: Run directories (default ``<root_dir>/outputs``).
    """

    root_dir: str = "${climgrad_root:}"
    data_dir: str = "${paths.root_dir}/data"
    output_dir: str = "${paths.root_dir}/outputs"


@dataclass
class ParamConfig:
    """Initial value and learnability of one model parameter.

    Attributes:
        value: Initial value in the parameter's physical units (``null`` keeps the model default).
        learn: Whether the optimizer updates it (``null`` keeps the model default).
    """

    value: Any = None
    learn: bool | None = None


@dataclass
class ModelConfig:
    """Which model family to build and how (see :mod:`climgrad.calibration.adapters`).

    Attributes:
        name: Adapter name, e.g. ``"ebm1d"``.
        options: Keyword arguments of the model constructor (``bands``, ``albedo_mode``...).
        params: Per-parameter ``value`` and ``learn`` (names as the model declares them).
        simulate: Options of the forward simulation (``tol``, ``max_iter`` of an equilibrium).
    """

    name: str = "ebm1d"
    options: dict[str, Any] = field(default_factory=dict)
    params: dict[str, ParamConfig] = field(default_factory=dict)
    simulate: dict[str, Any] = field(default_factory=dict)


@dataclass
class TwinVariableConfig:
    """One synthetic observation of a twin experiment.

    Attributes:
        model_output: The model output observed.
        units: Its units (for outputs and plots).
        error: 1-sigma observation error in ``units`` (also the noise level when noise is on).
        weight: Weight of the variable in the loss.
    """

    model_output: str = ""
    units: str = "1"
    error: float = 1.0
    weight: float = 1.0


@dataclass
class DataConfig:
    """Observations: read from NetCDF through a spec file, or synthesised for a twin experiment.

    Attributes:
        kind: ``"observations"`` (files) or ``"twin"`` (model output at ``truth``).
        spec: Observation spec YAML (see ``docs/observations.md``), e.g.
            ``${paths.data_dir}/specs/ebm_1d.yaml``; relative paths inside it start from its
            own folder.
        root: Directory relative paths of ``inline`` observations start from (default
            ``paths.root_dir``).
        variables: Names of the spec's observations to fit (default: all of them).
        inline: More observations, ``name -> ObservationSpec fields`` (``path``, ``variable``,
            ``model_output``, ``units``, ``operator``, ``error``...), added to the spec's.
        grid: The spec file's ``grid`` mapping, for runs without a spec file.
        weights: Per-variable loss weight replacing the spec's ``weight``.
        truth: Twin: parameter values generating the synthetic observations.
        observations: Twin: observed variables by name.
        noise: Twin: add Gaussian noise of standard deviation ``error``.
        noise_seed: Twin: seed of that noise (independent of the run's ``seed``).
    """

    kind: str = "observations"
    spec: str | None = None
    root: str | None = None
    variables: list[str] | None = None
    inline: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    truth: dict[str, Any] = field(default_factory=dict)
    observations: dict[str, TwinVariableConfig] = field(default_factory=dict)
    noise: bool = False
    noise_seed: int = 0


@dataclass
class LossConfig:
    """Loss = sum over variables of weighted misfit + ``prior_weight`` x prior penalty.

    Attributes:
        prior_weight: Multiplier of the negative log prior (0 for maximum likelihood).
        weights: Extra per-variable multipliers on top of the data weights.
    """

    prior_weight: float = 1.0
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class ScheduleConfig:
    """Learning-rate schedule (torch.optim.lr_scheduler), stepped once per optimizer step.

    Attributes:
        name: ``constant``, ``cosine`` (to ``min_lr`` at ``trainer.max_steps``), ``exponential``
            (``gamma`` per step), ``step`` (``gamma`` every ``step_size`` steps) or ``plateau``
            (``factor`` after ``patience`` steps without improvement of the loss).
        gamma: Decay factor of ``exponential`` and ``step``.
        step_size: Period of ``step``.
        min_lr: Floor of ``cosine`` and ``plateau``.
        factor: Reduction of ``plateau``.
        patience: Patience of ``plateau`` in steps.
    """

    name: str = "constant"
    gamma: float = 0.99
    step_size: int = 100
    min_lr: float = 0.0
    factor: float = 0.5
    patience: int = 20


@dataclass
class OptimizerConfig:
    """Optimizer of the unconstrained parameters.

    Attributes:
        name: ``adam`` or ``lbfgs``.
        lr: Learning rate (Adam: a step of about ``lr`` in each unconstrained parameter).
        betas: Adam's moment decay rates.
        weight_decay: Adam's L2 penalty on the unconstrained parameters.
        max_iter: L-BFGS iterations per step.
        history_size: L-BFGS memory.
        line_search: L-BFGS line search (``strong_wolfe`` or ``null``).
        grad_clip_norm: Clip the total gradient norm to this (``null``: no clipping).
        schedule: Learning-rate schedule.
    """

    name: str = "adam"
    lr: float = 0.02
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    max_iter: int = 20
    history_size: int = 10
    line_search: str | None = "strong_wolfe"
    grad_clip_norm: float | None = None
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class TrainerConfig:
    """The loop: stopping, device, precision, checkpoints, resume, progress.

    Attributes:
        max_steps: Stop after this many optimizer steps.
        plateau_patience: Stop when the best loss has not improved by a relative
            ``plateau_tol`` for this many steps (0: never).
        plateau_tol: Relative improvement that counts.
        min_grad_norm: Stop when the total gradient norm falls below this (0: never).
        max_nonfinite: Stop after this many non-finite steps in a row.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``float64`` or ``float32``.
        checkpoint_every: Write ``checkpoints/last.pt`` every N steps (and at the end).
        resume: ``false``; ``true`` (this run directory's ``last.pt``); or the path of a run
            directory or a checkpoint file.
        progress: Show a progress bar (``false``: quiet, for batch jobs).
        log_every: Log a line every N steps when the progress bar is off (0: never).
        step_delay: Seconds to sleep after each step (lets tests kill a run mid-way).
    """

    max_steps: int = 300
    plateau_patience: int = 50
    plateau_tol: float = 1e-7
    min_grad_norm: float = 0.0
    max_nonfinite: int = 5
    device: str = "auto"
    dtype: str = "float64"
    checkpoint_every: int = 50
    resume: Any = False
    progress: bool = True
    log_every: int = 50
    step_delay: float = 0.0


@dataclass
class LoggerConfig:
    """TensorBoard logging into ``<run>/tb``.

    Attributes:
        tensorboard: Write TensorBoard events at all.
        every: Log scalars every N steps.
        figure_every: Model-vs-observation figures every N steps (needs matplotlib; 0: never).
        histograms: Histograms of field parameters.
        hparams: Write the flattened overrides and final metrics to the HPARAMS tab.
    """

    tensorboard: bool = True
    every: int = 1
    figure_every: int = 100
    histograms: bool = True
    hparams: bool = True


@dataclass
class CalibrateConfig:
    """The whole run.

    Attributes:
        name: Experiment name (tags, outputs).
        seed: Seeds torch, numpy and random.
        debug: Show tracebacks on errors.
        paths, model, data, loss, optimizer, trainer, logger: The groups above.
    """

    name: str = "calibration"
    seed: int = 0
    debug: bool = False
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def _attempt_record(output_dir: str) -> str:
    from climgrad.calibration.rundir import attempt_record

    return attempt_record(str(output_dir))


def _register_root_resolver() -> None:
    from climgrad.paths import project_root

    if not OmegaConf.has_resolver("climgrad_root"):
        OmegaConf.register_new_resolver("climgrad_root", lambda: str(project_root()))
    # hydra.output_subdir: .hydra for a run's first attempt, .hydra/attempt-N for later ones.
    if not OmegaConf.has_resolver("climgrad_record"):
        OmegaConf.register_new_resolver("climgrad_record", _attempt_record)


# Configs that interpolate ${climgrad_root:} (paths.root_dir) resolve wherever this is imported,
# Hydra running or not (a notebook reloading a run's config).
_register_root_resolver()


def register_configs() -> None:
    """Register :class:`CalibrateConfig` as ``calibrate_schema`` (first in calibrate.yaml) and
    the ``climgrad_root`` resolver of ``paths.root_dir``."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="calibrate_schema", node=CalibrateConfig)
    _register_root_resolver()


# ---------------------------------------------------------------------------------------------
# Command-line checks (before Hydra, so that a typo lists the valid keys on one line).


def _group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def _field_types(schema: type) -> dict[str, Any]:
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def _strip_optional(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return args[0] if len(args) == 1 else Any
    return annotation


def _unknown(key: str, valid: Sequence[str], where: str) -> CalibrationError:
    close = difflib.get_close_matches(key.split(".")[-1], valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return CalibrationError(
        f"unknown config key {key!r}: {where} has the keys {', '.join(valid)}.{hint}"
    )


def _check_key(key: str) -> None:
    parts = key.split(".")
    annotation: Any = CalibrateConfig
    for depth, part in enumerate(parts):
        annotation = _strip_optional(annotation)
        if dataclasses.is_dataclass(annotation):
            fields = _field_types(annotation)  # type: ignore[arg-type]
            if part not in fields:
                where = ".".join(parts[:depth]) or "the top level"
                raise _unknown(key, list(fields), where)
            annotation = fields[part]
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return  # Any, lists and scalars: nothing further to check here


def check_overrides(arguments: Sequence[str]) -> None:
    """Check command-line overrides against the schemas and the group files.

    Args:
        arguments: ``sys.argv[1:]`` of the app.

    Raises:
        CalibrationError: A key that no schema has, or a group option without a YAML file; the
            message lists the valid keys or options.
    """
    parameter_keys: list[str] = []
    for argument in arguments:
        if argument.startswith("-") or "=" not in argument:
            continue
        key, value = argument.split("=", 1)
        key = key.lstrip("+~")
        if not key or key.startswith("hydra") or "@" in key or "/" in key:
            continue
        if key.startswith("model.params."):
            parameter_keys.append(key)
            continue
        if key in GROUPS:
            options = _group_options(key)
            choices = [v.strip() for v in value.split(",")]
            for choice in choices:
                if choice in ("null", "") or "(" in choice or "*" in choice:
                    continue
                if choice not in options:
                    raise CalibrationError(
                        f"unknown {key} {choice!r}: the options are {', '.join(options)} "
                        f"(files in {config_dir() / key})."
                    )
            continue
        _check_key(key)
    if parameter_keys:
        _check_parameter_names(arguments, parameter_keys)


def _check_parameter_names(arguments: Sequence[str], keys: Sequence[str]) -> None:
    """``model.params.<name>`` must name a parameter of the composed model (one-line error)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    others = [
        a
        for a in arguments
        if "=" in a
        and not a.startswith("-")
        and not a.lstrip("+~").startswith(("model.params.", "hydra", "paths."))
    ]
    register_configs()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            composed = compose(config_name="calibrate", overrides=others)
    except (HydraException, ValueError):
        return  # Hydra reports what is wrong with the other overrides
    valid = [str(name) for name in composed.model.params]
    for key in keys:
        parts = key.split(".")
        if len(parts) < 3 or parts[2] in valid:
            if len(parts) > 3 and parts[3] not in ("value", "learn"):
                raise CalibrationError(
                    f"unknown config key {key!r}: a parameter has the keys value, learn."
                )
            continue
        close = difflib.get_close_matches(parts[2], valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise CalibrationError(
            f"{'.'.join(parts[:3])} is not a parameter of model {composed.model.name!r}; its "
            f"parameters are {', '.join(valid)}.{hint}"
        )
