"""The calibration loop: build, load, optimise, log, checkpoint, resume, write outputs.

:func:`run_calibration` is what ``climgrad-calibrate`` runs for each job; it needs no Hydra and
can be called from a notebook with a :class:`~climgrad.calibration.config.CalibrateConfig`.

One step evaluates the model and the loss at the current parameters, back-propagates, and takes
one optimizer step (Adam) or one L-BFGS step (``max_iter`` inner iterations with a line search).
A step whose loss or gradient is not finite, or whose equilibrium does not converge, is skipped:
the parameters and optimizer state stay as they were, the step counts, and the skip is logged;
after ``trainer.max_nonfinite`` such steps in a row the run stops, names where the trouble
started, and keeps the last good checkpoint. Every state that affects later steps (parameters,
optimizer and schedule state, stopping counters, RNG) is in the checkpoint, so on CPU in float64 a
resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from climgrad.calibration.adapters import ModelAdapter, get_adapter
from climgrad.calibration.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from climgrad.calibration.config import CalibrateConfig, DataConfig
from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.loss import CalibrationLoss, LossTerms
from climgrad.calibration.optim import build_optimizer, build_schedule
from climgrad.calibration.outputs import summary_table, write_fit, write_metrics, write_params
from climgrad.calibration.tensorboard_logger import TensorBoardLogger, flatten_overrides
from climgrad.data import ObservedVariable, ObsSet, load_observations
from climgrad.data.spec import grid_from_dict, read_spec_file, spec_from_dict
from climgrad.integrate import EquilibriumError
from climgrad.models.base import Model
from climgrad.params import display_names, physical_gradients, physical_parameters

__all__ = ["build_observations", "resolve_device", "resolve_dtype", "run_calibration"]

log = logging.getLogger("climgrad.calibrate")

_DTYPES = {"float64": torch.float64, "float32": torch.float32}
#: Config keys that may differ between a checkpoint and the run resuming it without a warning.
_RESUME_NEUTRAL = ("trainer.resume", "trainer.max_steps", "trainer.step_delay", "trainer.progress")


class _NonFinite(Exception):
    """A step produced a non-finite loss or gradient (message: where)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cpu``; ``cuda`` / ``cuda:N`` (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CalibrationError(
            f"trainer.device={name!r} is not a device; use auto, cpu, cuda or cuda:N."
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CalibrationError(
            "trainer.device=cuda but torch sees no CUDA device; use trainer.device=auto or cpu."
        )
    return device


def resolve_dtype(name: str) -> torch.dtype:
    """``float64`` or ``float32``."""
    if name not in _DTYPES:
        raise CalibrationError(f"trainer.dtype={name!r} is unknown; use float64 or float32.")
    return _DTYPES[name]


def _as_config(cfg: CalibrateConfig | DictConfig) -> CalibrateConfig:
    if isinstance(cfg, CalibrateConfig):
        return cfg
    merged = OmegaConf.merge(OmegaConf.structured(CalibrateConfig), cfg)
    config = OmegaConf.to_object(merged)
    assert isinstance(config, CalibrateConfig)
    return config


def _yaml(config: CalibrateConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config), resolve=True)


# ---------------------------------------------------------------------------------------------
# Observations


def build_observations(
    config: DataConfig,
    adapter: ModelAdapter,
    model: Model,
    *,
    model_options: Mapping[str, Any],
    simulate_options: Mapping[str, Any],
    device: torch.device,
    dtype: torch.dtype,
    launch_dir: Path,
) -> ObsSet:
    """The observations of a run, on the model's grid, device and dtype.

    ``data.kind="observations"`` reads the spec file and the NetCDF files it names;
    ``data.kind="twin"`` simulates a copy of the model at ``data.truth`` (plus optional noise).
    """
    if config.kind == "observations":
        return _read_observations(config, adapter, model, device, dtype, launch_dir)
    if config.kind == "twin":
        return _twin_observations(config, adapter, model_options, simulate_options, device, dtype)
    raise CalibrationError(f"data.kind={config.kind!r} is unknown; use observations or twin.")


def _read_observations(
    config: DataConfig,
    adapter: ModelAdapter,
    model: Model,
    device: torch.device,
    dtype: torch.dtype,
    launch_dir: Path,
) -> ObsSet:
    if config.spec:
        spec_path = Path(config.spec)
        spec_path = spec_path if spec_path.is_absolute() else launch_dir / spec_path
        spec_grid, specs = read_spec_file(spec_path)
    elif config.inline:
        spec_grid, specs = grid_from_dict(dict(config.grid), "data.grid"), []
    else:
        raise CalibrationError(
            "data.spec is not set and data.inline is empty; give an observation spec YAML file."
        )
    names = [spec.name for spec in specs]
    if config.variables is not None:
        unknown = [name for name in config.variables if name not in names]
        if unknown:
            raise CalibrationError(
                f"data.variables names {unknown[0]!r}, which {config.spec} does not hold; "
                f"it holds {', '.join(names)}."
            )
        specs = [spec for spec in specs if spec.name in config.variables]
    for name, fields in config.inline.items():
        if name in names and (config.variables is None or name in config.variables):
            raise CalibrationError(
                f"data.inline.{name} repeats an observation of {config.spec}; rename it."
            )
        specs.append(spec_from_dict({"name": name, **dict(fields)}, "data.inline"))
    for name in config.weights:
        if name not in [spec.name for spec in specs]:
            raise CalibrationError(
                f"data.weights.{name} names no selected observation; selected: "
                f"{', '.join(spec.name for spec in specs)}."
            )
    specs = [
        dataclasses.replace(spec, weight=float(config.weights.get(spec.name, spec.weight)))
        for spec in specs
    ]
    root = launch_dir if config.root is None else launch_dir / config.root
    grid = adapter.observation_grid(model, spec_grid)
    return load_observations(specs, grid, device=device, dtype=dtype, root=root)


def _twin_observations(
    config: DataConfig,
    adapter: ModelAdapter,
    model_options: Mapping[str, Any],
    simulate_options: Mapping[str, Any],
    device: torch.device,
    dtype: torch.dtype,
) -> ObsSet:
    if not config.observations:
        raise CalibrationError("data.kind=twin needs data.observations (name -> model_output).")
    truth_model = adapter.build(model_options, dtype=dtype, device=device)
    _configure(truth_model, {k: {"value": v} for k, v in config.truth.items()}, "data.truth")
    try:
        with torch.no_grad():
            outputs = adapter.simulate(truth_model, simulate_options)
    except EquilibriumError as err:
        raise CalibrationError(
            f"the twin's truth model does not solve ({err}); change data.truth or model.simulate."
        ) from None
    layout = adapter.layout(truth_model)
    generator = torch.Generator().manual_seed(int(config.noise_seed))
    variables = {}
    for name, spec in config.observations.items():
        if spec.model_output not in outputs:
            raise CalibrationError(
                f"data.observations.{name}.model_output={spec.model_output!r} is not an output "
                f"of {adapter.name}; outputs: {', '.join(sorted(outputs))}."
            )
        if not spec.error > 0:
            raise CalibrationError(f"data.observations.{name}.error must be positive.")
        values = outputs[spec.model_output].detach()
        if config.noise:
            noise = torch.randn(values.shape, generator=generator, dtype=torch.float64)
            values = values + spec.error * noise.to(device=device, dtype=dtype)
        variables[name] = ObservedVariable(
            name=name,
            model_output=spec.model_output,
            operator="identity",
            units=spec.units,
            weight=float(spec.weight),
            dims=layout.dims,
            values=values,
            mask=torch.ones(values.shape, dtype=torch.bool, device=device),
            weights=layout.weights.to(device=device, dtype=dtype).expand_as(values).clone(),
            error=torch.full_like(values, float(spec.error)),
            coords={k: v.to(device) for k, v in layout.coords.items()},
            attrs={"source": f"twin experiment: {adapter.name} at {dict(config.truth)}"},
        )
    return ObsSet(variables)


def _configure(model: Model, settings: Mapping[str, Any], where: str) -> None:
    try:
        model.configure_parameters(settings)
    except KeyError as err:
        raise CalibrationError(f"{where}: {err.args[0]}") from None
    except ValueError as err:
        raise CalibrationError(f"{where}: {err}") from None


# ---------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass
class _Progress:
    """Everything besides model and optimizer that later steps depend on (checkpointed)."""

    step: int = 0
    best_loss: float = float("inf")
    best_step: int = -1
    last_improvement: int = 0
    nonfinite_streak: int = 0
    skipped: int = 0
    elapsed: float = 0.0
    first_bad: str = ""
    stop_reason: str = ""


def _state_dict(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _cpu(tree: Any) -> Any:
    if isinstance(tree, Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_cpu(v) for v in tree)
    return tree


def _bad_terms(terms: LossTerms) -> list[str]:
    bad = [name for name, term in terms.misfit.items() if not bool(torch.isfinite(term))]
    if not bool(torch.isfinite(terms.prior)):
        bad.append("prior")
    return bad


def _config_differences(old_yaml: str, new: CalibrateConfig) -> list[str]:
    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for key, value in node.items():
                out.update(flat(value, f"{prefix}{key}."))
            return out
        return {prefix.rstrip("."): node}

    old = flat(OmegaConf.to_container(OmegaConf.create(old_yaml)))
    current = flat(OmegaConf.to_container(OmegaConf.structured(new), resolve=True))
    keys = sorted(set(old) | set(current))
    return [
        k
        for k in keys
        if old.get(k) != current.get(k) and not any(k.startswith(n) for n in _RESUME_NEUTRAL)
    ]


def _progress_bar(enabled: bool, total: int, initial: int, name: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        log.info("tqdm is not installed: no progress bar (log lines instead).")
        return None
    return tqdm(total=total, initial=initial, desc=name, dynamic_ncols=True, file=sys.stderr)


def run_calibration(
    cfg: CalibrateConfig | DictConfig,
    run_dir: str | Path,
    *,
    overrides: Sequence[str] = (),
    launch_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Calibrate a model against observations as ``cfg`` says; write the run's outputs.

    Args:
        cfg: The composed config (a :class:`CalibrateConfig` or a DictConfig of one).
        run_dir: Output directory: ``tb/``, ``checkpoints/``, ``params.nc``, ``fit.nc``,
            ``metrics.json`` are written there.
        overrides: Command-line overrides (recorded in outputs and hparams).
        launch_dir: Directory relative data paths start from (default: the current one).

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        CalibrationError, ObservationError: Bad input, before anything is written.
    """
    wall_start = time.perf_counter()
    config = _as_config(cfg)
    run_dir = Path(run_dir)
    launch = Path.cwd() if launch_dir is None else Path(launch_dir)
    overrides = list(overrides)
    trainer = config.trainer

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    device = resolve_device(trainer.device)
    dtype = resolve_dtype(trainer.dtype)
    if trainer.max_steps < 0 or trainer.checkpoint_every < 1 or trainer.max_nonfinite < 1:
        raise CalibrationError(
            "trainer.max_steps must be >= 0, trainer.checkpoint_every and "
            "trainer.max_nonfinite >= 1."
        )

    # Build everything, and fail on bad input, before writing anything.
    adapter = get_adapter(config.model.name)
    options = dict(config.model.options)
    simulate_options = dict(config.model.simulate)
    adapter.check_options(options, simulate_options)
    model = adapter.build(options, dtype=dtype, device=device)
    settings = {
        name: {k: v for k, v in dataclasses.asdict(p).items() if v is not None}
        for name, p in config.model.params.items()
    }
    _configure(model, settings, "model.params")
    observations = build_observations(
        config.data,
        adapter,
        model,
        model_options=options,
        simulate_options=simulate_options,
        device=device,
        dtype=dtype,
        launch_dir=launch,
    )
    loss_fn = CalibrationLoss(observations, config.loss.prior_weight, config.loss.weights)

    def simulate() -> dict[str, Tensor]:
        return adapter.simulate(model, simulate_options)

    try:
        with torch.no_grad():
            loss_fn.check_outputs(simulate())
    except EquilibriumError as err:
        raise CalibrationError(
            f"the model does not solve at its initial parameters ({err}); change "
            "model.params or model.simulate."
        ) from None
    infos = display_names(model)
    learnable = [(name, info.raw) for name, info in infos.items() if info.learnable]
    parameters = [raw for _, raw in learnable]
    optimizer = build_optimizer(parameters, config.optimizer)
    schedule = build_schedule(optimizer, config.optimizer.schedule, trainer.max_steps)
    initial = physical_parameters(model)
    progress = _Progress()
    best_state = _state_dict(model)
    config_yaml = _yaml(config)

    checkpoint_path = resolve_resume(trainer.resume, run_dir, launch)
    resumed_from = None
    if checkpoint_path is not None:
        checkpoint = load_checkpoint(checkpoint_path)
        changed = _config_differences(checkpoint["config"], config)
        if changed:
            log.warning("Resuming with a config that differs in: %s", ", ".join(changed))
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
        if isinstance(schedule, torch.optim.lr_scheduler.CosineAnnealingLR):
            # A run continued with a larger trainer.max_steps anneals to the new end.
            schedule.T_max = max(trainer.max_steps, 1)
        progress = _Progress(**checkpoint["progress"])
        progress.stop_reason = ""
        best_state = {k: v.to(device) for k, v in checkpoint["best_model"].items()}
        initial = {k: v.to(device) for k, v in checkpoint["initial"].items()}
        torch.set_rng_state(checkpoint["rng"])
        resumed_from = str(checkpoint_path)
        log.info("Resuming from %s at step %d.", checkpoint_path, progress.step)

    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    board = (
        TensorBoardLogger(
            run_dir / "tb",
            purge_step=progress.step if resumed_from else None,
            histograms=config.logger.histograms,
        )
        if config.logger.tensorboard
        else None
    )

    def payload(state: Mapping[str, Tensor] | None = None) -> dict[str, Any]:
        return {
            "step": progress.step,
            "model": _cpu(dict(state) if state is not None else _state_dict(model)),
            "optimizer": _cpu(optimizer.state_dict()),
            "schedule": schedule.state_dict(),
            "progress": dataclasses.asdict(progress),
            "best_model": _cpu(best_state),
            "initial": _cpu(initial),
            "parameters": _cpu(physical_parameters(model)),
            "rng": torch.get_rng_state(),
            "config": config_yaml,
            "overrides": overrides,
        }

    first_terms: list[LossTerms] = []
    first_gradients: dict[str, Tensor] = {}

    def closure() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        outputs = simulate()
        terms = loss_fn(model, outputs)
        bad = _bad_terms(terms)
        if bad:
            raise _NonFinite(f"non-finite loss in {', '.join(bad)}")
        terms.total.backward()
        bad = [
            n
            for n, raw in learnable
            if raw.grad is not None and not bool(torch.isfinite(raw.grad).all())
        ]
        if bad:
            raise _NonFinite(f"non-finite gradient of {', '.join(bad)}")
        if not first_terms:
            # Logged values are those at the start of the step (L-BFGS evaluates several times).
            norms = [
                torch.linalg.vector_norm(raw.grad) for _, raw in learnable if raw.grad is not None
            ]
            first_terms.append(terms)
            first_gradients["total"] = torch.linalg.vector_norm(torch.stack(norms))
            for name, grad in physical_gradients(model).items():
                first_gradients[name] = torch.linalg.vector_norm(grad)
        if config.optimizer.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, config.optimizer.grad_clip_norm)
        return terms.total.detach()

    bar = _progress_bar(trainer.progress, trainer.max_steps, progress.step, config.name)
    session_start = time.perf_counter()
    elapsed_before = progress.elapsed
    last_good = {name: raw.detach().clone() for name, raw in learnable}
    stop_message = ""
    try:
        while progress.step < trainer.max_steps:
            step = progress.step
            first_terms.clear()
            first_gradients.clear()
            snapshot = (_state_dict(model), copy.deepcopy(optimizer.state_dict()))
            try:
                if isinstance(optimizer, torch.optim.LBFGS):
                    optimizer.step(closure)
                else:
                    closure()
            except (_NonFinite, EquilibriumError) as problem:
                model.load_state_dict(snapshot[0])
                optimizer.load_state_dict(snapshot[1])
                where = str(problem).split(";")[0]
                if isinstance(problem, EquilibriumError):
                    where = "equilibrium did not converge"
                    moved = {
                        name: float((raw.detach() - last_good[name]).abs().max())
                        for name, raw in learnable
                    }
                    culprit = max(moved, key=moved.__getitem__)
                    if moved[culprit] > 0:
                        where += f" (largest change since the last good step: {culprit})"
                progress.skipped += 1
                progress.nonfinite_streak += 1
                if progress.nonfinite_streak == 1:
                    progress.first_bad = f"step {step}: {where}"
                log.warning("Step %d skipped: %s.", step, where)
                if board is not None:
                    board.scalars({"nonfinite/skipped": progress.skipped}, step)
                progress.step += 1
                if progress.nonfinite_streak >= trainer.max_nonfinite:
                    progress.stop_reason = "nonfinite"
                    stop_message = (
                        f"stopped after {progress.nonfinite_streak} non-finite steps in a row; "
                        f"it started at {progress.first_bad}. The last good checkpoint is kept."
                    )
                    break
                continue
            progress.nonfinite_streak = 0
            terms = first_terms[0]
            loss_value = float(terms.total.detach())
            gradient_norm = float(first_gradients["total"])
            if board is not None and step % max(config.logger.every, 1) == 0:
                values = {f"loss/{k}": v for k, v in terms.as_floats().items()}
                values.update({f"grad_norm/{k}": float(v) for k, v in first_gradients.items()})
                values["optimizer/lr"] = float(optimizer.param_groups[0]["lr"])
                board.scalars(values, step)
                board.parameters(physical_parameters(model), step)
            if (
                board is not None
                and config.logger.figure_every > 0
                and step % config.logger.figure_every == 0
            ):
                with torch.no_grad():
                    board.figures(observations, loss_fn.predictions(simulate()), step)
            if loss_value < progress.best_loss:
                if loss_value < progress.best_loss - trainer.plateau_tol * abs(progress.best_loss):
                    progress.last_improvement = step
                progress.best_loss, progress.best_step = loss_value, step
                best_state = _state_dict(model)
            if not isinstance(optimizer, torch.optim.LBFGS):
                optimizer.step()
            if isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
                schedule.step(loss_value)
            else:
                schedule.step()
            last_good = {name: raw.detach().clone() for name, raw in learnable}
            progress.step += 1
            progress.elapsed = elapsed_before + time.perf_counter() - session_start
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.5g}", refresh=False)
            elif trainer.log_every > 0 and step % trainer.log_every == 0:
                log.info(
                    "step %d/%d loss %.6g |grad| %.3g",
                    step,
                    trainer.max_steps,
                    loss_value,
                    gradient_norm,
                )
            if progress.step % trainer.checkpoint_every == 0:
                save_checkpoint(checkpoints / "last.pt", payload())
                save_checkpoint(checkpoints / "best.pt", payload(best_state))
            if trainer.step_delay > 0:
                time.sleep(trainer.step_delay)
            if gradient_norm < trainer.min_grad_norm:
                progress.stop_reason = "small_gradient"
                stop_message = f"gradient norm {gradient_norm:.3g} < trainer.min_grad_norm"
                break
            if (
                trainer.plateau_patience > 0
                and progress.step - progress.last_improvement > trainer.plateau_patience
            ):
                progress.stop_reason = "plateau"
                stop_message = (
                    f"no relative improvement above {trainer.plateau_tol:g} for "
                    f"{trainer.plateau_patience} steps"
                )
                break
        else:
            progress.stop_reason = "max_steps"
            stop_message = f"reached trainer.max_steps={trainer.max_steps}"
    finally:
        if bar is not None:
            bar.close()
    progress.elapsed = elapsed_before + time.perf_counter() - session_start
    log.info("Stopped at step %d: %s.", progress.step, stop_message)

    if progress.stop_reason == "nonfinite":
        # Keep last.pt as the last good state; report the best parameters.
        model.load_state_dict(best_state)
    else:
        save_checkpoint(checkpoints / "last.pt", payload())
    save_checkpoint(checkpoints / "best.pt", payload(best_state))

    with torch.no_grad():
        outputs = simulate()
        terms = loss_fn(model, outputs)
    final = terms.as_floats()
    rmse = loss_fn.rmse(outputs)
    parameters_now = physical_parameters(model)
    with torch.no_grad():
        derived = adapter.derived(model, outputs)
    metrics: dict[str, Any] = {
        "experiment": config.name,
        "model": config.model.name,
        "stop_reason": progress.stop_reason,
        "stop_message": stop_message,
        "steps": progress.step,
        "skipped_steps": progress.skipped,
        "loss": final,
        "rmse": rmse,
        "units": {name: v.units for name, v in observations.items()},
        "best_loss": progress.best_loss,
        "best_step": progress.best_step,
        "parameters": {k: v.double().cpu().tolist() for k, v in parameters_now.items()},
        "derived": derived,
        "optimizer_time_s": progress.elapsed,
        "wall_time_s": time.perf_counter() - wall_start,
        "device": str(device),
        "dtype": trainer.dtype,
        "seed": config.seed,
        "resumed_from": resumed_from,
        "overrides": overrides,
    }
    write_params(
        run_dir / "params.nc",
        model,
        initial,
        experiment=config.name,
        overrides=overrides,
        config_yaml=config_yaml,
    )
    write_fit(run_dir / "fit.nc", observations, loss_fn.predictions(outputs), config.name)
    if board is not None:
        final_scalars = {f"final/loss_{k}": v for k, v in final.items()}
        final_scalars.update({f"final/rmse_{k}": v for k, v in rmse.items()})
        if config.logger.figure_every > 0:
            board.figures(observations, loss_fn.predictions(outputs), progress.step)
        if config.logger.hparams:
            hyper: dict[str, Any] = {
                "experiment": config.name,
                "seed": config.seed,
                "optimizer": config.optimizer.name,
                "lr": config.optimizer.lr,
            }
            hyper.update(flatten_overrides(overrides))
            board.hparams(hyper, final_scalars, progress.step)
        else:
            board.scalars(final_scalars, progress.step)
        board.close()
    metrics["wall_time_s"] = time.perf_counter() - wall_start
    write_metrics(run_dir / "metrics.json", metrics)
    print(
        f"\n{config.name}: {progress.step} steps in {metrics['wall_time_s']:.1f} s on {device} "
        f"({trainer.dtype}), loss {final['total']:.6g}; stopped: {stop_message}"
    )
    print(summary_table(model, initial))
    print("RMSE: " + ", ".join(f"{k} {v:.4g} {observations[k].units}" for k, v in rmse.items()))
    print(f"Outputs in {run_dir}")
    if progress.stop_reason == "nonfinite":
        raise CalibrationError(stop_message)
    return metrics
