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
import os
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
    "DaskConfig",
    "DataConfig",
    "LikelihoodConfig",
    "LoggerConfig",
    "LossConfig",
    "MethodConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ParamConfig",
    "PathsConfig",
    "PriorConfig",
    "ScheduleConfig",
    "TrainerConfig",
    "TwinVariableConfig",
    "VariableErrorConfig",
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
    "method",
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
class PriorConfig:
    """A parameter's prior (``model.params.<name>.prior``).

    Attributes:
        kind: ``normal``, ``lognormal`` or ``uniform`` (between the parameter's bounds);
            ``null``: none.
        loc: Mean (normal, parameter units) or mean of the logarithm (lognormal).
        scale: Standard deviation (normal) or of the logarithm (lognormal).
    """

    kind: str | None = None
    loc: float = 0.0
    scale: float = 1.0


@dataclass
class ParamConfig:
    """Initial value and learnability of one model parameter.

    Attributes:
        value: Initial value in the parameter's physical units (``null`` keeps the model default).
        learn: Whether the optimizer updates it (``null`` keeps the model default).
        prior: The prior (:class:`PriorConfig`). The posterior methods need one on every learnt
            parameter; the point-estimate loss adds it with ``loss.prior_weight``.
    """

    value: Any = None
    learn: bool | None = None
    prior: PriorConfig = field(default_factory=PriorConfig)


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
class VariableErrorConfig:
    """The error model of one observed variable in the likelihood (``likelihood.variables.<name>``).

    Attributes:
        effective_n: Effective number of independent observations of the variable (errors
            correlated in space count less than the number of elements); default the number of
            valid elements. Element ``i`` then counts as ``effective_n * a_i`` observations, with
            ``a_i`` its element (area) weight.
        ar1_phi: Lag-1 autocorrelation of the errors of a 1-D series (AR(1) error model, exact
            Gaussian likelihood); ``null``: independent errors. Not with ``effective_n``.
        extra_error: Added in quadrature to the observation error (the variable's units), e.g.
            internal variability that the model does not simulate.
    """

    effective_n: float | None = None
    ar1_phi: float | None = None
    extra_error: float = 0.0


@dataclass
class LikelihoodConfig:
    """The Gaussian likelihood the posterior methods use (``-log p(y|θ) = ½ Σ_v r_vᵀ Γ_v⁻¹ r_v``).

    Attributes:
        variables: Error model per observation name (see :class:`VariableErrorConfig`);
            variables not listed have independent errors, one observation per valid element.
    """

    variables: dict[str, VariableErrorConfig] = field(default_factory=dict)


@dataclass
class DaskConfig:
    """Where ``method.executor=dask`` runs the ensemble members (``method.dask``;
    docs/scaling.md).

    Attributes:
        cluster: ``local`` (a ``distributed.LocalCluster`` of ``method.workers`` single-threaded
            worker processes on this machine) or ``slurm`` (a ``dask_jobqueue.SLURMCluster``:
            each job runs ``cluster_kwargs.processes`` workers).
        address: A running scheduler (``tcp://host:8786``) to connect to in place of a cluster
            (its workers must be able to import climgrad and read the run's data).
        cluster_kwargs: Keyword arguments of the cluster class, passed through: ``queue``,
            ``account``, ``cores``, ``processes``, ``memory``, ``walltime``,
            ``job_extra_directives``, ... for SLURM; ``dashboard_address`` and the like for the
            local one.
        scale: SLURM jobs to start (``null``: enough for ``method.workers``).
        config: Dask settings applied while the cluster starts (``dask.config.set``), e.g.
            ``{distributed.scheduler.allowed-failures: 1}``.
    """

    cluster: str = "local"
    address: str | None = None
    cluster_kwargs: dict[str, Any] = field(default_factory=dict)
    scale: int | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodConfig:
    """What updates the parameters (``method`` group; docs/posteriors.md).

    ``gradient`` is Adam or L-BFGS on the point-estimate loss (the ``optimizer`` group); the
    others target the posterior of the Gaussian likelihood (``likelihood``) and the parameters'
    priors, in the unconstrained coordinates of the parameters.

    Attributes:
        name: ``gradient``, ``eki``, ``uki``, ``cmaes``, ``laplace``, ``nuts`` or ``hybrid``.
        ensemble_size: EKI members.
        variant: EKI: ``finite_time`` (stops at algorithm time 1: the ensemble approximates the
            posterior) or ``tikhonov`` (prior-regularised; iterates to the MAP).
        step: EKI time step: ``dmc`` (data-misfit controller) or a number.
        sigma0: CMA-ES initial step size, in prior standard deviations (unconstrained).
        popsize: CMA-ES population (``null``: cma's default, 4 + 3 ln p).
        tolerance: UKI and CMA-ES stop when the mean moves less than this (unconstrained units).
        jacobian: Laplace Jacobian: ``reverse`` (autograd through the model) or ``fd`` (central
            differences in one batched evaluation: for compiled code).
        fd_step: Step of the ``fd`` Jacobian in unconstrained units.
        map_iterations: L-BFGS iterations to the MAP before the Laplace covariance (laplace,
            hybrid).
        warm_start: hybrid: ``uki`` or ``eki`` before the L-BFGS polish.
        warm_iterations: hybrid: iterations of the warm start.
        num_samples, warmup, chains: NUTS draws kept per chain, adaptation steps, chains.
        target_accept, max_tree_depth: NUTS settings.
        posterior_draws: Draws from a Gaussian posterior (UKI, Laplace, hybrid) stored in
            ``posterior.nc``.
        derived_draws: Posterior draws (thinned) for which the derived quantities (ECS, TCR,
            global mean temperature, ...) are computed, one model solve each; 0: none.
        max_iterations: Step budget of the posterior methods (iterations, chains, L-BFGS
            steps; the smaller of it and a method's own, e.g. Laplace's map_iterations / 10 + 2);
            ``trainer.max_steps`` is the gradient method's.
        executor: Where the ensemble methods' members are evaluated (docs/scaling.md):
            ``batched`` (in this process, one batched solve where the model family has one),
            ``processes`` (``workers`` spawned processes on this machine) or ``dask`` (a Dask
            cluster, ``method.dask``). Off ``batched``, members are cut into chunks that workers
            evaluate with the family's batched path; a chunk whose worker dies comes back as
            failed members.
        workers: Worker processes of ``processes`` and of a local Dask cluster, and the number of
            chunks per evaluation (``null``: the CPUs available; SLURM: jobs x processes).
        chunk_size: Members per chunk (``null``: one chunk per worker).
        member_cache: Record each finished chunk in ``<run>/ensemble_cache`` so that a resumed
            run does not solve an interrupted iteration's finished members again (``null``: on
            for executors other than ``batched``).
        dask: The Dask cluster of ``executor=dask`` (:class:`DaskConfig`).
    """

    name: str = "gradient"
    ensemble_size: int = 50
    variant: str = "finite_time"
    step: Any = "dmc"
    sigma0: float = 0.5
    popsize: int | None = None
    tolerance: float = 1e-4
    jacobian: str = "reverse"
    fd_step: float = 1e-5
    map_iterations: int = 100
    warm_start: str = "uki"
    warm_iterations: int = 10
    num_samples: int = 500
    warmup: int = 300
    chains: int = 2
    target_accept: float = 0.8
    max_tree_depth: int = 8
    posterior_draws: int = 2000
    derived_draws: int = 200
    max_iterations: int = 100
    executor: str = "batched"
    workers: int | None = None
    chunk_size: int | None = None
    member_cache: bool | None = None
    dask: DaskConfig = field(default_factory=DaskConfig)


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
        distributed: Data-parallel calibration with ``torch.distributed``: launched by
            ``torchrun --nproc_per_node=N`` (or ``srun`` exporting ``RANK``, ``WORLD_SIZE``,
            ``MASTER_ADDR``, ``MASTER_PORT``), each rank simulates its share of the sites of a
            multi-site model (``model=column_sites``), and the misfit and the gradient are summed
            over the ranks by one all-reduce per evaluation, so every rank takes the same
            optimizer step (L-BFGS line searches in lockstep); rank 0 alone writes checkpoints,
            TensorBoard and outputs. Without a launcher (``WORLD_SIZE`` unset) the run is one
            process, as with ``false`` (see :mod:`climgrad.calibration.distributed`).
        backend: ``torch.distributed`` backend: ``auto`` (NCCL for CUDA tensors, gloo on the
            CPU), ``gloo`` or ``nccl``.
        threads: torch's intra-op CPU threads for the run (``null``: torch's default, one per
            core). Small models (EBM1D, the two-layer model) run fastest on 1: their tensors are
            too small for threads to pay, and on a shared machine threads cost far more (NUTS
            gradient of the two-layer posterior: 13 ms on 1 thread, 140-280 ms on 2 under load).
            Set back to what it was when the run ends.
        compile: Compile the model's time step with ``torch.compile`` once per run
            (:meth:`~climgrad.models.Model.compile_step`), so that rollouts and spin-ups (the
            column's spin-up before Newton, the seasonal EBM rollout) run the compiled step:
            the same values and gradients, faster steps after a compilation of seconds (each
            logged: ``compiled <Model>.step in X s``; numbers in docs/benchmarks.md). Newton
            solves and closed-form rollouts (the two-layer model) do not call the step and are
            unaffected (one log line at the end says so); a step that cannot compile runs
            eagerly with one warning line, never failing the run. Ensemble worker processes
            stay eager.
        compile_backend: ``inductor`` (fused generated kernels; needs a C++ compiler on the
            CPU), ``aot_eager`` (forward and backward traced, run eagerly: quick to compile, for
            debugging) or ``eager``.
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
    distributed: bool = False
    backend: str = "auto"
    threads: int | None = None
    compile: bool = False
    compile_backend: str = "inductor"


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
        paths, model, data, loss, likelihood, method, optimizer, trainer, logger: The groups
            above.
    """

    name: str = "calibration"
    seed: int = 0
    debug: bool = False
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    likelihood: LikelihoodConfig = field(default_factory=LikelihoodConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def _attempt_record(output_dir: str) -> str | None:
    # [distributed] rank 0 alone records a torchrun launch: the other ranks get no .hydra/.
    if (
        int(os.environ.get("RANK", "0") or 0) != 0
        and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    ):
        return None
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
            if len(parts) > 3 and parts[3] not in ("value", "learn", "prior"):
                raise CalibrationError(
                    f"unknown config key {key!r}: a parameter has the keys value, learn, prior."
                )
            continue
        close = difflib.get_close_matches(parts[2], valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise CalibrationError(
            f"{'.'.join(parts[:3])} is not a parameter of model {composed.model.name!r}; its "
            f"parameters are {', '.join(valid)}.{hint}"
        )
