"""Run services: checkpoints, resume, TensorBoard, progress, stopping and end-of-run outputs.

Every method shares them. :class:`RunServices` owns the run directory: ``checkpoints/last.pt``
and ``best.pt`` (atomic, ``torch.load(weights_only=True)``), ``tb/``, and at the end
``params.nc``, ``fit.nc`` and ``metrics.json``. Everything a later step depends on (parameters,
optimizer and schedule state, :class:`Progress`, RNG) is in the checkpoint, so on the CPU in
float64 a resumed run ends bit-identical to an uninterrupted one.

In a data-parallel run (``trainer.distributed=true``) every rank has its services, which keep
progress and the stopping rules in step; only rank 0's write (checkpoints, TensorBoard, progress
bar, outputs), and every rank resumes from the same checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from climgrad.calibration.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from climgrad.calibration.config import CalibrateConfig
from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.experiment import Problem, config_yaml
from climgrad.calibration.methods import Method, PosteriorDraws, StepResult, state_copy
from climgrad.calibration.outputs import (
    posterior_summary,
    summary_table,
    write_fit,
    write_metrics,
    write_params,
    write_posterior,
)
from climgrad.calibration.rundir import log_to_files
from climgrad.calibration.tensorboard_logger import TensorBoardLogger, flatten_overrides
from climgrad.params import display_names, physical_parameters

__all__ = ["Progress", "RunServices"]

log = logging.getLogger("climgrad.calibrate")

#: Config keys that may differ between a checkpoint and the run resuming it without a warning.
_RESUME_NEUTRAL = (
    "trainer.resume",
    "trainer.max_steps",
    "trainer.step_delay",
    "trainer.progress",
    # Where ensemble members run changes no number (tested bit for bit).
    "method.executor",
    "method.workers",
    "method.chunk_size",
    "method.member_cache",
    "method.dask",
)


@dataclasses.dataclass
class Progress:
    """Everything besides model and method that later steps depend on (checkpointed)."""

    step: int = 0
    best_loss: float = float("inf")
    best_step: int = -1
    last_improvement: int = 0
    nonfinite_streak: int = 0
    skipped: int = 0
    elapsed: float = 0.0
    first_bad: str = ""
    stop_reason: str = ""


def _cpu(tree: Any) -> Any:
    if isinstance(tree, Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_cpu(v) for v in tree)
    return tree


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def _config_differences(old_yaml: str, new: CalibrateConfig) -> list[str]:
    old = _flat(OmegaConf.to_container(OmegaConf.create(old_yaml)))
    current = _flat(OmegaConf.to_container(OmegaConf.structured(new), resolve=True))
    return [
        k
        for k in sorted(set(old) | set(current))
        if old.get(k) != current.get(k) and not any(k.startswith(n) for n in _RESUME_NEUTRAL)
    ]


class RunServices:
    """The run directory and everything written to it; progress and the stopping rules.

    Args:
        config: The run's config.
        run_dir: Output directory.
        overrides: Command-line overrides (recorded in outputs and hparams).
        problem: The problem being calibrated.
        method: The method updating its parameters.
        rank, world_size: Of a data-parallel run (``trainer.distributed``); rank 0 alone writes.
    """

    def __init__(
        self,
        config: CalibrateConfig,
        run_dir: Path,
        overrides: list[str],
        problem: Problem,
        method: Method,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.config = config
        # [distributed] the other ranks compute, keep progress and stop in step; they write nothing
        self.writes = rank == 0
        self.rank, self.world_size = rank, world_size
        self.trainer = config.trainer
        self.run_dir = run_dir
        self.overrides = overrides
        self.problem = problem
        self.method = method
        self.config_yaml = config_yaml(config)
        self.progress = Progress()
        self.best_state = state_copy(problem.model)
        self.initial = physical_parameters(problem.model)
        self.resumed_from: str | None = None
        self.stop_message = ""
        self.board: TensorBoardLogger | None = None
        self._bar: Any = None
        self._session_start = 0.0
        self._elapsed_before = 0.0

    # -- start ------------------------------------------------------------------------------

    def resume(self) -> None:
        """Continue from ``trainer.resume``'s checkpoint, if any (before :meth:`open`)."""
        root = Path(self.config.paths.root_dir)
        path = resolve_resume(self.trainer.resume, self.run_dir, root)
        if path is None:
            return
        checkpoint = load_checkpoint(path)
        changed = _config_differences(checkpoint["config"], self.config)
        if changed:
            log.warning("Resuming with a config that differs in: %s", ", ".join(changed))
        device = self.problem.device
        self.problem.model.load_state_dict(checkpoint["model"])
        # Checkpoints written before the method group kept the optimizer state at the top level.
        method_state = checkpoint.get("method") or {
            "optimizer": checkpoint["optimizer"],
            "schedule": checkpoint["schedule"],
        }
        self.method.load_state_dict(method_state, self.trainer.max_steps)
        self.progress = Progress(**checkpoint["progress"])
        self.progress.stop_reason = ""
        self.best_state = {k: v.to(device) for k, v in checkpoint["best_model"].items()}
        self.initial = {k: v.to(device) for k, v in checkpoint["initial"].items()}
        torch.set_rng_state(checkpoint["rng"])
        self.resumed_from = str(path)
        log.info("Resuming from %s at step %d.", path, self.progress.step)

    def __enter__(self) -> RunServices:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            # The bar ends where the run stopped, not at trainer.max_steps.
            self._bar.total = self._bar.n
            self._bar.refresh()
            self._bar.close()
            self._bar = None
        if exc_info[0] is KeyboardInterrupt and self.writes:
            print(
                f"\nInterrupted at step {self.progress.step}; continue from the last checkpoint "
                f"with: climgrad-calibrate {' '.join(self.overrides)} trainer.resume=true "
                f"hydra.run.dir={self.run_dir}",
                file=sys.stderr,
            )

    def _tag_descriptions(self) -> dict[str, str]:
        """Units of every scalar tag (TensorBoard descriptions)."""
        descriptions = {
            "loss/": "dimensionless (weighted chi-square per variable; prior penalty)",
            "grad_norm/total": "norm of the gradient of the unconstrained parameters",
            "optimizer/lr": "learning rate (step size in the unconstrained parameters)",
            "nonfinite/skipped": "count of skipped steps",
            "final/loss_": "dimensionless",
        }
        if self.method.name != "gradient":
            descriptions.update(
                {
                    "loss/": "dimensionless: negative log posterior at the ensemble mean or "
                    "current point (½ Σ whitened residual² per variable; ½ prior term)",
                    "eki/time": "EKI algorithm time (finite-time EKI stops at 1)",
                    "eki/dt": "EKI time step (data-misfit controller)",
                    "eki/": "count or dimensionless",
                    "uki/": "dimensionless (unconstrained coordinates)",
                    "laplace/": "dimensionless (negative log posterior; unconstrained sd)",
                    "nuts/": "acceptance probability, leapfrog step size, divergences (per chain)",
                    "cmaes/": "CMA-ES step size (prior sd), failed members, best objective",
                }
            )
        for name, info in display_names(self.problem.model).items():
            units = info.spec.units
            descriptions[f"param_sd/{name}"] = f"ensemble spread of {name} [{units}]"
            descriptions[f"param/{name}"] = f"{info.spec.description or name} [{units}]"
            descriptions[f"param/{name}/"] = f"{info.spec.description or name} [{units}]"
            descriptions[f"grad_norm/{name}"] = f"|d loss / d {name}| [1 / ({units})]"
        for name, observed in self.problem.observations.items():
            descriptions[f"final/rmse_{name}"] = f"RMSE of {name} [{observed.units}]"
        return descriptions

    def open(self) -> None:
        """Create the checkpoint and TensorBoard directories and the progress bar."""
        if not self.writes:  # [distributed] ranks other than 0
            self._session_start = time.perf_counter()
            self._elapsed_before = self.progress.elapsed
            return
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        if self.resumed_from is None:
            # A run killed before its first periodic checkpoint can still be resumed.
            self.save_checkpoints()
        if self.config.logger.tensorboard:
            self.board = TensorBoardLogger(
                self.run_dir / "tb",
                purge_step=self.progress.step if self.resumed_from else None,
                histograms=self.config.logger.histograms,
                descriptions=self._tag_descriptions(),
            )
        if self.trainer.progress:
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(
                    total=self.max_steps,
                    initial=self.progress.step,
                    desc=self.config.name,
                    dynamic_ncols=True,
                    file=sys.stderr,
                )
            except ImportError:
                log.info("tqdm is not installed: no progress bar (log lines instead).")
        self._session_start = time.perf_counter()
        self._elapsed_before = self.progress.elapsed

    # -- during the run ---------------------------------------------------------------------

    @property
    def max_steps(self) -> int:
        """``trainer.max_steps`` for the gradient method; the posterior methods' own budget."""
        return self.method.max_steps(self.trainer.max_steps)

    def running(self) -> bool:
        """Whether another step is due (the step budget not reached, no stop decided)."""
        if self.progress.stop_reason:
            return False
        if self.method.finished:
            self.progress.stop_reason = "finished"
            self.stop_message = f"method {self.method.name} finished: {self.method.finish_reason}"
            return False
        if self.progress.step >= self.max_steps:
            self.progress.stop_reason = "max_steps"
            budget = "trainer.max_steps" if self.method.name == "gradient" else "the step budget"
            self.stop_message = f"reached {budget} ({self.max_steps})"
            return False
        return True

    def logs_step(self) -> bool:
        """Whether the coming step is logged to TensorBoard (its details are computed then)."""
        return self.board is not None and self.progress.step % max(self.config.logger.every, 1) == 0

    def observe(self, result: StepResult) -> None:
        """Log a step at its evaluation point and keep the best state."""
        step, logger, progress = self.progress.step, self.config.logger, self.progress
        if self.board is not None and step % max(logger.every, 1) == 0:
            values = {f"loss/{k}": v for k, v in result.terms.as_floats().items()}
            values.update({f"grad_norm/{k}": v for k, v in result.gradient_norms.items()})
            if result.learning_rate == result.learning_rate:  # not NaN
                values["optimizer/lr"] = result.learning_rate
            values.update(result.scalars)
            self.board.scalars(values, step)
            for tag, histogram in result.histograms.items():
                finite = histogram[torch.isfinite(histogram)]
                if finite.numel():
                    self.board.writer.add_histogram(tag, finite.double().cpu(), step)
            parameters = result.parameters
            if parameters is None:
                parameters = physical_parameters(self.problem.model)
            self.board.parameters(parameters, step)
        if self.board is not None and logger.figure_every > 0 and step % logger.figure_every == 0:
            with torch.no_grad():
                predictions = self.problem.predictions(self.problem.simulate())
            self.board.figures(self.problem.observations, predictions, step)
        if self.method.tracks_best and result.loss < progress.best_loss:
            if result.loss < progress.best_loss - self.trainer.plateau_tol * abs(
                progress.best_loss
            ):
                progress.last_improvement = step
            progress.best_loss, progress.best_step = result.loss, step
            self.best_state = (
                result.state if result.state is not None else state_copy(self.problem.model)
            )

    def advance(self, result: StepResult) -> None:
        """Count a taken step: progress, checkpoints, stopping rules."""
        progress, trainer = self.progress, self.trainer
        step = progress.step
        progress.nonfinite_streak = 0
        progress.step += 1
        progress.elapsed = self._elapsed_before + time.perf_counter() - self._session_start
        gradient_norm = result.gradient_norms.get("total", float("inf"))
        if not self.method.tracks_best:
            progress.best_loss, progress.best_step = result.loss, step
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{result.loss:.5g}", refresh=False)
        elif trainer.log_every > 0 and step % trainer.log_every == 0:
            log.info(
                "step %d/%d loss %.6g |grad| %.3g",
                step,
                self.max_steps,
                result.loss,
                gradient_norm,
            )
        if progress.step % trainer.checkpoint_every == 0:
            self.save_checkpoints()
        if trainer.step_delay > 0:
            time.sleep(trainer.step_delay)
        if gradient_norm < trainer.min_grad_norm:
            progress.stop_reason = "small_gradient"
            self.stop_message = f"gradient norm {gradient_norm:.3g} < trainer.min_grad_norm"
        elif (
            self.method.uses_plateau
            and trainer.plateau_patience > 0
            and progress.step - progress.last_improvement > trainer.plateau_patience
        ):
            progress.stop_reason = "plateau"
            self.stop_message = (
                f"no relative improvement above {trainer.plateau_tol:g} for "
                f"{trainer.plateau_patience} steps"
            )

    def skip(self, why: str) -> None:
        """Count a skipped step; stop after ``trainer.max_nonfinite`` in a row."""
        progress = self.progress
        step = progress.step
        progress.skipped += 1
        progress.nonfinite_streak += 1
        if progress.nonfinite_streak == 1:
            progress.first_bad = f"step {step}: {why}"
        log.warning("Step %d skipped: %s.", step, why)
        if self.board is not None:
            self.board.scalars({"nonfinite/skipped": progress.skipped}, step)
        progress.step += 1
        if progress.nonfinite_streak >= self.trainer.max_nonfinite:
            progress.stop_reason = "nonfinite"
            self.stop_message = (
                f"stopped after {progress.nonfinite_streak} non-finite steps in a row; "
                f"it started at {progress.first_bad}. {self._likely_cause()} The last good "
                "checkpoint is kept."
            )

    def _likely_cause(self) -> str:
        """What usually makes a calibration diverge, as far as the run can tell."""
        causes = []
        at_bound = []
        for name, info in display_names(self.problem.model).items():
            if not info.learnable:
                continue
            value = info.value.detach().double()
            for bound in info.spec.bounds:
                if bound is not None and bool(
                    ((value - bound).abs() <= 1e-6 * max(abs(bound), 1.0)).any()
                ):
                    at_bound.append(f"{name} = {bound:g}")
        if at_bound:
            causes.append(
                f"parameters at a bound ({', '.join(at_bound)}): the data pull them out of "
                "their range; check the data's units and the model's regime, or fix them "
                "(model.params.<name>.learn=false)"
            )
        if self.config.optimizer.name == "adam" and self.progress.best_step >= 0:
            causes.append(
                f"a learning rate too large for this problem: try optimizer.lr="
                f"{self.config.optimizer.lr / 10:g}"
            )
        elif self.progress.best_step < 0:
            causes.append(
                "no step succeeded: the initial parameters or the data are out of the model's "
                "range (check the data's units and model.params)"
            )
        return "Likely cause: " + "; or ".join(causes) + "." if causes else ""

    # -- checkpoints ------------------------------------------------------------------------

    def _parameters_of(self, state: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
        """Physical parameter values of ``state`` (default: the model's current state)."""
        model = self.problem.model
        if state is None:
            return {k: v.detach().clone() for k, v in physical_parameters(model).items()}
        current = state_copy(model)
        model.load_state_dict(dict(state))
        values = {k: v.detach().clone() for k, v in physical_parameters(model).items()}
        model.load_state_dict(current)
        return values

    def _payload(self, state: Mapping[str, Tensor] | None = None) -> dict[str, Any]:
        model = self.problem.model
        return {
            "step": self.progress.step,
            "model": _cpu(dict(state) if state is not None else state_copy(model)),
            "method": _cpu(self.method.state_dict()),
            "progress": dataclasses.asdict(self.progress),
            "best_model": _cpu(self.best_state),
            "initial": _cpu(self.initial),
            "parameters": _cpu(self._parameters_of(state)),
            "rng": torch.get_rng_state(),
            "config": self.config_yaml,
            "overrides": self.overrides,
        }

    def save_checkpoints(self, *, last: bool = True) -> None:
        """``last.pt`` (the current state) and ``best.pt`` (the best state so far)."""
        if not self.writes:  # [distributed] rank 0 writes them
            return
        checkpoints = self.run_dir / "checkpoints"
        if last:
            save_checkpoint(checkpoints / "last.pt", self._payload())
        save_checkpoint(checkpoints / "best.pt", self._payload(self.best_state))

    # -- end --------------------------------------------------------------------------------

    def finish(self, wall_start: float) -> dict[str, Any]:
        """Final checkpoints, ``params.nc``, ``fit.nc``, TensorBoard summary, ``metrics.json``.

        Raises:
            CalibrationError: The run stopped on non-finite steps (after writing its outputs).
        """
        progress, problem, config = self.progress, self.problem, self.config
        progress.elapsed = self._elapsed_before + time.perf_counter() - self._session_start
        log.info("Stopped at step %d: %s.", progress.step, self.stop_message)
        if not self.writes:  # [distributed] rank 0 solves every site once more and writes
            if progress.stop_reason == "nonfinite":
                raise CalibrationError(self.stop_message)
            return {
                "status": "completed",
                "rank": self.rank,
                "world_size": self.world_size,
                "steps": progress.step,
                "stop_reason": progress.stop_reason,
                "loss": {"total": progress.best_loss},  # rank 0 re-solves at the best state
                "best_loss": progress.best_loss,
                "best_step": progress.best_step,
            }
        # last.pt: the latest state, to resume from (after non-finite steps, the last good one
        # is kept). The outputs, best.pt and params.nc describe the best state: the lowest loss
        # evaluated, whose parameters the loss in metrics.json belongs to.
        # Posterior methods: the point estimate is the method's (ensemble mean, MAP).
        if not self.method.tracks_best and progress.stop_reason != "nonfinite":
            self.method.finalize()
            self.best_state = state_copy(problem.model)
        self.save_checkpoints(last=progress.stop_reason != "nonfinite")
        problem.model.load_state_dict(self.best_state)
        with torch.no_grad():
            outputs = problem.simulate()
            terms = problem.evaluate(outputs)
        final = terms.as_floats()
        rmse = problem.loss.rmse(outputs)
        point = (
            f"best (step {progress.best_step})"
            if self.method.tracks_best
            else self.method.point_label
        )
        metrics: dict[str, Any] = {
            "status": "failed" if progress.stop_reason == "nonfinite" else "completed",
            "experiment": config.name,
            "model": config.model.name,
            "method": self.method.name,
            "state": point,
            "stop_reason": progress.stop_reason,
            "stop_message": self.stop_message,
            "steps": progress.step,
            "skipped_steps": progress.skipped,
            "loss": final,
            "rmse": rmse,
            "units": {name: v.units for name, v in problem.observations.items()},
            "best_loss": progress.best_loss,
            "best_step": progress.best_step,
            "parameters": {
                k: v.double().cpu().tolist() for k, v in physical_parameters(problem.model).items()
            },
            "derived": problem.derived(outputs),
            "residual_lag1_autocorrelation": problem.likelihood.lag1_autocorrelation(
                problem.observations, outputs
            ),
            "model_solves": self.method.solves,
            "optimizer_time_s": progress.elapsed,
            "wall_time_s": time.perf_counter() - wall_start,
            "device": str(problem.device),
            "threads": torch.get_num_threads(),
            "dtype": config.trainer.dtype,
            "world_size": self.world_size,
            "seed": config.seed,
            "resumed_from": self.resumed_from,
            "overrides": self.overrides,
        }
        draws = self.method.posterior() if progress.stop_reason != "nonfinite" else None
        physical_draws = None
        if draws is not None:
            physical_draws, derived_draws = self._posterior_draws(draws)
            metrics["posterior"] = posterior_summary(physical_draws)
            metrics["posterior_diagnostics"] = draws.diagnostics
            if derived_draws:
                metrics["derived_posterior"] = posterior_summary(derived_draws)
            write_posterior(
                self.run_dir / "posterior.nc",
                problem.model,
                physical_draws,
                draws,
                derived_draws,
                experiment=config.name,
                method=self.method.name,
                likelihood=problem.likelihood.describe(),
                prior=self._prior_description(),
                config_yaml=self.config_yaml,
            )
        write_params(
            self.run_dir / "params.nc",
            problem.model,
            self.initial,
            experiment=config.name,
            overrides=self.overrides,
            config_yaml=self.config_yaml,
            posterior=physical_draws,
            method=self.method.name,
        )
        predictions = problem.predictions(outputs)
        write_fit(self.run_dir / "fit.nc", problem.observations, predictions, config.name)
        self._close_board(final, rmse, predictions)
        metrics["wall_time_s"] = time.perf_counter() - wall_start
        write_metrics(self.run_dir / "metrics.json", metrics)
        units = {name: v.units for name, v in problem.observations.items()}
        report = "\n".join(
            [
                f"\n{config.name}: {progress.step} steps in {metrics['wall_time_s']:.1f} s on "
                f"{problem.device} ({config.trainer.dtype}), loss {final['total']:.6g} "
                f"({point}); stopped: {self.stop_message}",
                summary_table(problem.model, self.initial, metrics.get("posterior")),
                "RMSE: " + ", ".join(f"{k} {v:.4g} {units[k]}" for k, v in rmse.items()),
                f"Outputs in {self.run_dir}",
            ]
        )
        print(report)
        log_to_files(report)
        if progress.stop_reason == "nonfinite":
            raise CalibrationError(self.stop_message)
        return metrics

    def _prior_description(self) -> dict[str, str]:
        return {
            name: info.spec.prior.describe() if info.spec.prior else "none"
            for name, info in display_names(self.problem.model).items()
            if info.learnable
        }

    def _posterior_draws(
        self, draws: PosteriorDraws
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Physical draws ``name -> (chain, draw, *shape)`` and derived quantities of a thinned
        subset (``method.derived_draws`` solves: ECS and TCR of a two-layer model, ...)."""
        from climgrad.calibration.posterior import ParameterVector

        problem = self.problem
        vector = ParameterVector(problem.model)
        raw = draws.raw.to(device=problem.device, dtype=problem.dtype)
        with torch.no_grad():
            physical = {k: v.detach() for k, v in vector.physical(raw).items()}
        derived: dict[str, list[float]] = {}
        count = int(self.config.method.derived_draws)
        flat = raw.reshape(-1, raw.shape[-1])
        if count > 0 and flat.shape[0] > 0:
            saved = vector.get()
            chosen = torch.linspace(0, flat.shape[0] - 1, min(count, flat.shape[0]))
            try:
                for index in chosen.round().long().tolist():
                    vector.set(flat[index])
                    try:
                        with torch.no_grad():
                            values = problem.derived(problem.simulate())
                    except Exception:  # a draw the model cannot solve: left out
                        continue
                    for key, value in values.items():
                        derived.setdefault(key, []).append(value)
            finally:
                vector.set(saved)
        derived_draws = {
            k: torch.tensor(v, dtype=torch.float64).reshape(1, -1) for k, v in derived.items()
        }
        return physical, derived_draws

    def _close_board(
        self, final: dict[str, float], rmse: dict[str, float], predictions: dict[str, Tensor]
    ) -> None:
        if self.board is None:
            return
        config, step = self.config, self.progress.step
        final_scalars = {f"final/loss_{k}": v for k, v in final.items()}
        final_scalars.update({f"final/rmse_{k}": v for k, v in rmse.items()})
        if config.logger.figure_every > 0:
            self.board.figures(self.problem.observations, predictions, step)
        if config.logger.hparams:
            hyper: dict[str, Any] = {
                "experiment": config.name,
                "model": config.model.name,
                "seed": config.seed,
                "optimizer": config.optimizer.name,
                "lr": config.optimizer.lr,
            }
            hyper.update(flatten_overrides(self.overrides))
            self.board.hparams(hyper, final_scalars, step)
        else:
            self.board.scalars(final_scalars, step)
        self.board.close()
