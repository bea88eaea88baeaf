"""Calibrated results in notebooks: :func:`load_run` and :func:`load_runs`.

One line gives everything a ``climgrad-calibrate`` run produced, without Hydra running and from
any working directory::

    run = climgrad.load_run("outputs/2026-11-25/23-38-00")      # checkpoint="best" by default
    run.params, run.history, run.compare()                       # xarray, pandas, xarray
    run.simulate(B=2.0)                                          # a what-if on the obs grid

:func:`load_run` reads the checkpoint with ``torch.load(weights_only=True)`` (no code is
unpickled), takes the resolved config from the YAML string it holds, and rebuilds the model
through the model family's adapter (:mod:`climgrad.calibration.adapters`, selected by
``model.name``), so every registered family works without special cases. Relative paths in the
config (the observation spec, forcing files) are resolved as the run resolved them: from the
directory the run was launched in, read from ``.hydra/hydra.yaml`` (``hydra.runtime.cwd``); if the
data are not found there (a run copied to another machine), from the root of the climgrad checkout
this package lives in, then from the current directory; ``launch_dir=`` overrides all three.

:func:`load_runs` puts the parameters of every job of a sweep (``multirun/DATE/TIME/<job>/``) into
one Dataset along ``run``, with each job's command-line overrides as coordinates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from climgrad.calibration.adapters import ModelAdapter, get_adapter
from climgrad.calibration.checkpoint import CHECKPOINT_FORMAT
from climgrad.calibration.config import CalibrateConfig
from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.loop import build_observations, resolve_device, resolve_dtype
from climgrad.calibration.loss import CalibrationLoss
from climgrad.calibration.outputs import write_params
from climgrad.calibration.tensorboard_logger import flatten_overrides
from climgrad.data import ObservationError, ObsSet
from climgrad.integrate import EquilibriumError
from climgrad.models.base import Model
from climgrad.params import configure_parameters, physical_parameters

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Run", "RunError", "load_run", "load_runs"]

#: The checkout this package lives in (``<root>/src/climgrad/results.py``), if it is one.
_CHECKOUT_ROOT = Path(__file__).resolve().parents[2]
_HISTORY_COLUMNS = ["step", "tag", "value"]


class RunError(CalibrationError):
    """A run directory that cannot be loaded; the message is one line with the fix."""


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """``contextlib.chdir`` (Python 3.11+) for older Pythons too."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _is_run_dir(path: Path) -> bool:
    return any(
        (path / marker).exists()
        for marker in ("checkpoints", "params.nc", "metrics.json", ".hydra/config.yaml")
    )


def _job_dirs(path: Path) -> list[Path]:
    """The job directories of a sweep, in job order (numeric names numerically)."""
    jobs = [child for child in path.iterdir() if child.is_dir() and _is_run_dir(child)]
    return sorted(jobs, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))


def _check_run_dir(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise RunError(
            f"{run_dir} is not a directory; pass the output directory of a climgrad-calibrate "
            "run (outputs/DATE/TIME)."
        )
    if _is_run_dir(run_dir):
        return
    if _job_dirs(run_dir):
        raise RunError(
            f"{run_dir} is a sweep (multirun) directory, not a run; load one job with "
            f"load_run('{run_dir}/0') or every job's parameters with load_runs('{run_dir}')."
        )
    raise RunError(
        f"{run_dir} is not a run directory (no checkpoints/, params.nc or .hydra/); pass the "
        "output directory of a climgrad-calibrate run, e.g. outputs/DATE/TIME."
    )


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for foreign or corrupt files
        raise RunError(
            f"cannot read {path} with torch.load(weights_only=True) ({err}); it is not a "
            "climgrad checkpoint or was written by an incompatible climgrad version."
        ) from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise RunError(f"{path} is not a climgrad checkpoint (no 'format' entry).")
    if payload["format"] != CHECKPOINT_FORMAT or not {"model", "config"} <= set(payload):
        raise RunError(
            f"{path} has checkpoint format {payload['format']!r} but this climgrad reads "
            f"format {CHECKPOINT_FORMAT}; load it with the climgrad version that wrote it "
            "(params.nc's 'source' attribute names it)."
        )
    return payload


def _recorded_launch_dir(run_dir: Path) -> Path | None:
    """``hydra.runtime.cwd`` of ``.hydra/hydra.yaml``: where the run resolved relative paths."""
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file():
        return None
    try:
        cwd = OmegaConf.load(hydra_file).hydra.runtime.cwd
    except Exception:  # an unreadable record only costs us one candidate directory
        return None
    return Path(str(cwd)) if cwd else None


def _overrides(run_dir: Path, fallback: Sequence[str]) -> list[str]:
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        loaded = OmegaConf.to_container(OmegaConf.load(overrides_file))
        if isinstance(loaded, list):
            return [str(item) for item in loaded]
    return [str(item) for item in fallback]


def _load_dataset(path: Path) -> xr.Dataset:
    with xr.open_dataset(path) as dataset:
        return dataset.load()


def _structured_config(config_yaml: str, where: Path) -> tuple[DictConfig, CalibrateConfig]:
    try:
        merged = OmegaConf.merge(
            OmegaConf.structured(CalibrateConfig), OmegaConf.create(config_yaml)
        )
        config = OmegaConf.to_object(merged)
    except Exception as err:  # omegaconf's validation errors have many types
        message = " ".join(str(err).split())
        raise RunError(
            f"the config in {where} does not fit this climgrad's schema ({message}); it was "
            "written by an incompatible climgrad version."
        ) from None
    assert isinstance(config, CalibrateConfig) and isinstance(merged, DictConfig)
    OmegaConf.set_readonly(merged, True)
    return merged, config


def _history(tb_dir: Path) -> pd.DataFrame:
    """Every TensorBoard scalar under ``tb_dir`` as rows ``(step, tag, value)``."""
    if not tb_dir.is_dir():
        return pd.DataFrame({"step": [], "tag": [], "value": []}).astype(
            {"step": "int64", "tag": "object", "value": "float64"}
        )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows: list[tuple[int, str, float]] = []
    event_dirs = sorted(
        {Path(root) for root, _, files in os.walk(tb_dir) if any("tfevents" in f for f in files)}
    )
    for directory in event_dirs:
        # purge_orphaned_data drops the steps a resumed run rewrote.
        accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            rows.extend((event.step, tag, event.value) for event in accumulator.Scalars(tag))
    frame = pd.DataFrame(rows, columns=_HISTORY_COLUMNS)
    frame = frame.drop_duplicates(subset=["step", "tag"], keep="last")
    return frame.sort_values(["tag", "step"], kind="stable").reset_index(drop=True)


class Run:
    """A calibration run loaded back: config, parameters, model, observations, history.

    Build it with :func:`load_run`.

    Attributes:
        run_dir: The run's output directory.
        checkpoint: Path of the checkpoint the model was loaded from.
        step: Optimisation steps taken when that checkpoint was written.
        config: The resolved config (read-only ``DictConfig``); ``config_yaml`` as text.
        overrides: The run's command-line overrides.
        launch_dir: The directory relative paths in the config were resolved from.
        adapter: The model family's adapter (``model.name``).
        model: The model with the checkpoint's parameters, in eval mode, on ``device``.
        observation_set: The observations as tensors (:class:`~climgrad.data.ObsSet`), on the
            observation grid, ``device`` and the run's dtype.
        observations: The same as an xarray Dataset (``<name>``, ``<name>_error``,
            ``<name>_weights``; NaN where masked).
        params: Calibrated parameters (:attr:`params`).
        metrics: ``metrics.json`` (``None`` for a run still in progress).
    """

    def __init__(
        self,
        run_dir: Path,
        checkpoint: Path,
        payload: Mapping[str, Any],
        *,
        device: torch.device,
        launch_dir: Path | None,
    ) -> None:
        self.run_dir = run_dir
        self.checkpoint = checkpoint
        progress = payload.get("progress", {})
        # best.pt records the run's step count; its parameters are those of the best step.
        best = checkpoint.name == "best.pt" and int(progress.get("best_step", -1)) >= 0
        self.step = int(progress["best_step"] if best else payload.get("step", -1))
        self.config_yaml = str(payload["config"])
        self.config, self._config = _structured_config(self.config_yaml, checkpoint)
        self.overrides = _overrides(run_dir, payload.get("overrides", []))
        self.device = device
        self.dtype = resolve_dtype(self._config.trainer.dtype)
        self.adapter: ModelAdapter = get_adapter(self._config.model.name)
        self.simulate_options = dict(self._config.model.simulate)
        self.model, self.observation_set, self.launch_dir = self._build(launch_dir)
        try:
            self.model.load_state_dict(payload["model"])
        except RuntimeError as err:
            raise RunError(
                f"the parameters in {checkpoint} do not fit the {self._config.model.name} model "
                f"this climgrad builds ({' '.join(str(err).split())[:300]}); the checkpoint is "
                "from an incompatible climgrad version."
            ) from None
        self.model.eval()
        self.observations = self.observation_set.to_xarray()
        self.observations.attrs["experiment"] = self._config.name
        self._loss = CalibrationLoss(
            self.observation_set, self._config.loss.prior_weight, dict(self._config.loss.weights)
        )
        self._initial = {k: v for k, v in payload.get("initial", {}).items()}
        metrics_file = run_dir / "metrics.json"
        self.metrics: dict[str, Any] | None = (
            json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
        )
        self.params = self._params()

    # -- building -------------------------------------------------------------------------

    def _launch_candidates(self, launch_dir: Path | None) -> list[Path]:
        if launch_dir is not None:
            return [Path(launch_dir).resolve()]
        candidates = [_recorded_launch_dir(self.run_dir), _CHECKOUT_ROOT, Path.cwd()]
        unique: list[Path] = []
        for candidate in candidates:
            if candidate is not None and candidate.is_dir() and candidate not in unique:
                unique.append(candidate)
        return unique

    def _build(self, launch_dir: Path | None) -> tuple[Model, ObsSet, Path]:
        config = self._config
        options = dict(config.model.options)
        settings = {
            name: {k: v for k, v in dataclasses.asdict(p).items() if v is not None}
            for name, p in config.model.params.items()
        }
        failures: list[str] = []
        candidates = self._launch_candidates(launch_dir)
        for candidate in candidates:
            try:
                # Adapters open files named relative to the launch directory (e.g. a forcing
                # file in model.options), as the run did; chdir makes that hold here too.
                with _working_directory(candidate):
                    model = self.adapter.build(options, dtype=self.dtype, device=self.device)
                    configure_parameters(model, settings)
                    observations = build_observations(
                        config.data,
                        self.adapter,
                        model,
                        model_options=options,
                        simulate_options=self.simulate_options,
                        device=self.device,
                        dtype=self.dtype,
                        launch_dir=candidate,
                    )
                return model, observations, candidate
            except (CalibrationError, ObservationError, OSError, KeyError) as err:
                failures.append(f"{candidate}: {' '.join(str(err).split())}")
        raise RunError(
            "cannot rebuild the run's model and observations from "
            f"{', '.join(str(c) for c in candidates) or 'any directory'} "
            f"({failures[0] if failures else 'no directory exists'}); "
            "pass load_run(..., launch_dir=<the directory the run's relative data paths start "
            "from>)."
        )

    def _params(self) -> xr.Dataset:
        params_file = self.run_dir / "params.nc"
        if params_file.is_file():
            params = _load_dataset(params_file)
        else:
            # A run in progress has no params.nc yet: write the same file from the model.
            with tempfile.TemporaryDirectory() as scratch:
                path = write_params(
                    Path(scratch) / "params.nc",
                    self.model,
                    self._initial,
                    experiment=self._config.name,
                    overrides=self.overrides,
                    config_yaml=self.config_yaml,
                )
                params = _load_dataset(path)
        # params.nc holds the final parameters; best.pt can be a step or more earlier.
        for name, value in physical_parameters(self.model).items():
            if name in params:
                params[name] = params[name].copy(
                    data=value.double().cpu().numpy().reshape(params[name].shape)
                )
        params.attrs.update(checkpoint=self.checkpoint.name, step=self.step)
        return params

    # -- properties -----------------------------------------------------------------------

    @cached_property
    def history(self) -> pd.DataFrame:
        """TensorBoard scalars as a DataFrame with columns ``step``, ``tag``, ``value``.

        Tags as in ``docs/calibration.md`` (``loss/total``, ``param/<name>``, ...); values in
        the tags' units (parameters physical). Empty for a run logged with ``logger=none``.
        """
        return _history(self.run_dir / "tb")

    def parameter_table(self) -> pd.DataFrame:
        """One row per parameter: calibrated and initial values, units, bounds, learnable."""
        rows = []
        for name, variable in self.params.data_vars.items():
            values = np.asarray(variable.values)
            initial = variable.attrs.get("initial_value")
            rows.append(
                {
                    "parameter": str(name),
                    "calibrated": float(values) if values.size == 1 else values,
                    "initial": (
                        float(np.asarray(initial).reshape(-1)[0])
                        if initial is not None and np.asarray(initial).size == 1
                        else initial
                    ),
                    "units": variable.attrs.get("units", ""),
                    "valid_min": variable.attrs.get("valid_min", -math.inf),
                    "valid_max": variable.attrs.get("valid_max", math.inf),
                    "learnable": bool(variable.attrs.get("learnable", 0)),
                    "long_name": variable.attrs.get("long_name", str(name)),
                }
            )
        return pd.DataFrame(rows).set_index("parameter")

    def __repr__(self) -> str:
        return (
            f"Run({self._config.name!r}, model={self._config.model.name}, "
            f"checkpoint={self.checkpoint.name} at step {self.step}, "
            f"observations=[{', '.join(self.observation_set)}], dir={str(self.run_dir)!r})"
        )

    # -- simulate, compare, plot ----------------------------------------------------------

    def _evaluate(
        self, settings: Mapping[str, Any]
    ) -> tuple[dict[str, Tensor], dict[str, float], dict[str, Tensor]]:
        """Outputs, derived scalars and parameters at ``settings``; the model is restored."""
        saved = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        try:
            for name, value in settings.items():
                try:
                    configure_parameters(self.model, {name: {"value": value}})
                except KeyError:
                    raise RunError(
                        f"simulate: {name!r} is not a parameter of the {self._config.model.name} "
                        f"model; its parameters are {', '.join(map(str, self.params.data_vars))} "
                        "(physical units, as in Run.params)."
                    ) from None
                except ValueError as err:
                    raise RunError(f"simulate: {err}") from None
            try:
                outputs = self._solve()
            except EquilibriumError as err:
                try:
                    outputs = self._continue_from_initial()
                except EquilibriumError:
                    raise RunError(
                        f"the model does not solve at "
                        f"{dict(settings) or 'the calibrated parameters'} ({err}); choose values "
                        "closer to the calibrated ones."
                    ) from None
            with torch.no_grad():
                derived = self.adapter.derived(self.model, outputs)
            parameters = physical_parameters(self.model)
        finally:
            self.model.load_state_dict(saved)
        return {k: v.detach() for k, v in outputs.items()}, derived, parameters

    def _solve(self) -> dict[str, Tensor]:
        with torch.no_grad():
            return self.adapter.simulate(self.model, self.simulate_options)

    def _continue_from_initial(self, stages: int = 4) -> dict[str, Tensor]:
        """Solve at the current parameters by continuation from the run's initial ones.

        An adapter may warm-start each solve from the previous one (the column model does); the
        run got to its parameters in small steps from the initial values, where a cold start
        works, and a fresh model may not solve cold far from them. Parameters move linearly
        from initial to target in ``stages`` solves (each within its bounds, as both ends are).
        """
        target = physical_parameters(self.model)
        start = {k: v for k, v in self._initial.items() if k in target}
        if not start:
            return self._solve()
        exact = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        for stage in range(stages):
            fraction = stage / stages
            configure_parameters(
                self.model,
                {
                    name: {
                        "value": start[name].to(value) + fraction * (value - start[name].to(value))
                    }
                    for name, value in target.items()
                    if name in start
                },
            )
            self._solve()
        self.model.load_state_dict(exact)
        return self._solve()

    def outputs(
        self, overrides: Mapping[str, Any] | None = None, /, **param_overrides: Any
    ) -> dict[str, Tensor]:
        """Every output of the adapter's ``simulate`` (tensors, detached), with what-if values.

        Args:
            overrides: Parameter values by name (for names that are not identifiers, e.g.
                ``{"diffusion.D": 0.5}``), in physical units.
            **param_overrides: More parameter values, e.g. ``B=2.0`` (W m-2 K-1).

        Returns:
            Model output name -> tensor on the observation grid (also outputs no observation
            uses; no units attached). The model keeps its calibrated parameters afterwards.

        Raises:
            RunError: An unknown parameter, a value outside its bounds, or a model that does not
                solve at these values.
        """
        return self._evaluate({**dict(overrides or {}), **param_overrides})[0]

    def simulate(
        self, overrides: Mapping[str, Any] | None = None, /, **param_overrides: Any
    ) -> xr.Dataset:
        """Run the model as the experiment does (equilibrium or rollout) on the observation grid.

        Args:
            overrides: Parameter values by name, physical units (see :meth:`outputs`).
            **param_overrides: More parameter values, e.g. ``simulate(B=2.0)``; none gives the
                calibrated model.

        Returns:
            One variable per observation (named as the observation, in its units, on its
            dimensions and coordinates), attributes ``model_output`` and ``long_name``; the
            Dataset's attributes hold the parameter values used (``parameter_<name>`` for
            scalars), the overrides, and the adapter's derived scalars (e.g. ECS, global mean
            temperature).
        """
        settings = {**dict(overrides or {}), **param_overrides}
        outputs, derived, parameters = self._evaluate(settings)
        variables = {}
        for name, observed in self.observation_set.items():
            template = self.observations[name]
            values = outputs[observed.model_output].double().cpu().numpy()
            variables[name] = xr.DataArray(
                values.reshape(template.shape),
                dims=template.dims,
                coords={
                    d: self.observations[d] for d in template.dims if d in self.observations.coords
                },
                attrs={
                    "units": observed.units,
                    "long_name": f"model {observed.model_output}",
                    "model_output": observed.model_output,
                },
            )
        attrs: dict[str, Any] = {
            "title": f"climgrad simulation: {self._config.name}",
            "experiment": self._config.name,
            "checkpoint": self.checkpoint.name,
            "step": self.step,
            "parameter_overrides": ", ".join(f"{k}={v}" for k, v in settings.items()) or "none",
        }
        for name, value in parameters.items():
            if value.numel() == 1:
                attrs[f"parameter_{name}"] = float(value)
        attrs.update({k: float(v) for k, v in derived.items()})
        return xr.Dataset(variables, attrs=attrs)

    def compare(self, simulation: xr.Dataset | None = None) -> xr.Dataset:
        """Model against observations, per observed variable.

        Variables ``<name>_model``, ``<name>_observation`` (NaN where masked), ``<name>_bias``
        (model - observation) and ``<name>_error`` (1-sigma observation error), in the
        observation's units. Summaries, as attributes of the Dataset and of each bias: ``rmse``
        (square root of the element-weighted mean squared bias, in the variable's units; what
        ``metrics.json`` reports), ``mean_bias`` (element-weighted) and ``loss`` (the variable's
        weighted misfit, as in the calibration loss); dataset attributes ``rmse_<name>``,
        ``mean_bias_<name>``, ``loss_<name>`` and ``loss_misfit`` (their sum, without the prior).

        Args:
            simulation: A :meth:`simulate` result (e.g. a what-if); default the calibrated model.
        """
        simulation = self.simulate() if simulation is None else simulation
        predictions = {}
        for name, observed in self.observation_set.items():
            if name not in simulation:
                raise RunError(
                    f"compare: the simulation has no variable {name!r}; pass a Dataset from "
                    "Run.simulate()."
                )
            predictions[observed.model_output] = torch.as_tensor(
                np.asarray(simulation[name].values).reshape(observed.shape),
                dtype=observed.values.dtype,
                device=observed.values.device,
            )
        rmse = self._loss.rmse(predictions)
        variables: dict[str, xr.DataArray] = {}
        attrs: dict[str, Any] = {
            "title": f"climgrad model against observations: {self._config.name}",
            "experiment": self._config.name,
            "parameter_overrides": simulation.attrs.get("parameter_overrides", "none"),
        }
        total = 0.0
        for name, observed in self.observation_set.items():
            observation = self.observations[name]
            model = simulation[name].copy(data=np.asarray(simulation[name].values))
            weights = self.observations[f"{name}_weights"].values
            bias = model.values - observation.values
            mean_bias = float(np.nansum(weights * bias))
            loss = self._loss.weights[name] * float(
                observed.misfit(predictions[observed.model_output])
            )
            total += loss
            summary = {"rmse": rmse[name], "mean_bias": mean_bias, "loss": loss}
            units = {"units": observed.units}
            variables[f"{name}_model"] = model.assign_attrs(units, long_name=f"model {name}")
            variables[f"{name}_observation"] = observation.copy().assign_attrs(
                long_name=f"observed {name}"
            )
            variables[f"{name}_bias"] = observation.copy(data=bias).assign_attrs(
                {**units, "long_name": f"model minus observed {name}", **summary},
            )
            variables[f"{name}_error"] = self.observations[f"{name}_error"].copy()
            attrs.update({f"{key}_{name}": value for key, value in summary.items()})
        attrs["loss_misfit"] = total
        for variable in variables.values():
            for drop in ("ancillary_variables", "climgrad_role"):
                variable.attrs.pop(drop, None)
        return xr.Dataset(variables, attrs=attrs)

    def plot(self, simulation: xr.Dataset | None = None) -> dict[str, Figure]:
        """Figures: ``"fit"`` (model against observations) and ``"parameters"`` (trajectories).

        Args:
            simulation: A what-if from :meth:`simulate`, drawn beside the calibrated model.

        Returns:
            ``{"fit": Figure, "parameters": Figure}`` (matplotlib; show them in a notebook by
            leaving one as a cell's value, save with ``figure.savefig``).
        """
        return {"fit": self.plot_fit(simulation), "parameters": self.plot_parameters()}

    def plot_fit(self, simulation: xr.Dataset | None = None) -> Figure:
        """One panel per observed variable: observations ± 1 sigma, model, optional what-if.

        One-dimensional variables are drawn along their coordinate; others as model against
        observation with the 1:1 line.
        """
        from matplotlib.figure import Figure

        calibrated = self.compare()
        names = list(self.observation_set)
        figure = Figure(figsize=(6.0, 2.8 * len(names)), layout="constrained")
        axes = figure.subplots(len(names), 1, squeeze=False)[:, 0]
        for ax, name in zip(axes, names):
            observed = self.observation_set[name]
            obs = calibrated[f"{name}_observation"]
            error = calibrated[f"{name}_error"]
            model = calibrated[f"{name}_model"]
            label = f"{name} [{observed.units}]"
            if obs.ndim == 1:
                dim = obs.dims[0]
                x = obs[dim].values if dim in obs.coords else np.arange(obs.size)
                ax.fill_between(
                    x, obs - error, obs + error, alpha=0.3, color="0.6", label="obs ± 1σ"
                )
                ax.plot(x, obs.values, "k.", markersize=3, label="observed")
                ax.plot(
                    x,
                    model.values,
                    "C3-",
                    label=f"model (rmse {calibrated.attrs[f'rmse_{name}']:.3g})",
                )
                if simulation is not None:
                    ax.plot(
                        x,
                        np.asarray(simulation[name].values),
                        "C0--",
                        label=f"what-if ({simulation.attrs.get('parameter_overrides', '')})",
                    )
                ax.set_xlabel(str(dim))
                ax.set_ylabel(label)
            else:
                flat_obs = np.ravel(obs.values)
                ax.plot(flat_obs, np.ravel(model.values), "C3.", label="model")
                if simulation is not None:
                    ax.plot(flat_obs, np.ravel(simulation[name].values), "C0.", label="what-if")
                finite = flat_obs[np.isfinite(flat_obs)]
                if finite.size:
                    ax.plot(
                        [finite.min(), finite.max()], [finite.min(), finite.max()], "k-", lw=0.8
                    )
                ax.set_xlabel(f"observed {label}")
                ax.set_ylabel(f"model {label}")
            ax.legend(loc="best", fontsize="small")
        figure.suptitle(f"{self._config.name}: {self.checkpoint.name} at step {self.step}")
        return figure

    def plot_parameters(self) -> Figure:
        """The loss and each learnt parameter against optimisation step (from :attr:`history`)."""
        from matplotlib.figure import Figure

        history = self.history
        learnt = [
            str(name)
            for name, variable in self.params.data_vars.items()
            if variable.attrs.get("learnable", 0)
        ]
        panels = ["loss/total", *[f"param/{name}" for name in learnt]]
        figure = Figure(figsize=(6.0, 1.9 * len(panels)), layout="constrained")
        axes = figure.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
        for ax, tag in zip(axes, panels):
            rows = history[(history.tag == tag) | history.tag.str.startswith(tag + "/")]
            for element, group in rows.groupby("tag", sort=True):
                ax.plot(group.step, group.value, "-", lw=1.2, label=str(element))
            if tag == "loss/total":
                ax.set_yscale("log")
                ax.set_ylabel("loss")
            else:
                name = tag.split("/", 1)[1]
                ax.set_ylabel(f"{name} [{self.params[name].attrs.get('units', '')}]")
            if rows.empty:
                ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center")
            ax.axvline(self.step, color="0.5", lw=0.8, ls=":")
        axes[-1].set_xlabel("step")
        figure.suptitle(f"{self._config.name}: parameter trajectories")
        return figure


def load_run(
    run_dir: str | Path,
    checkpoint: str = "best",
    device: str | torch.device = "cpu",
    *,
    launch_dir: str | Path | None = None,
) -> Run:
    """Load a ``climgrad-calibrate`` run for analysis.

    Args:
        run_dir: The run's output directory (``outputs/DATE/TIME`` or a sweep's
            ``multirun/DATE/TIME/<job>``).
        checkpoint: ``"best"`` (lowest loss), ``"last"`` (the latest state; the only one a run in
            progress may have) or the path of a checkpoint file.
        device: Where the model and observations go (``"cpu"``, ``"cuda"``, ``"auto"``).
        launch_dir: Directory the config's relative paths start from; default the run's recorded
            launch directory, then the climgrad checkout, then the current directory.

    Returns:
        The :class:`Run`.

    Raises:
        RunError: Not a run directory, a run without that checkpoint yet, or a checkpoint of an
            incompatible version (one line, with the fix).
    """
    run_dir = Path(run_dir).expanduser().resolve()
    _check_run_dir(run_dir)
    if checkpoint in ("best", "last"):
        path = run_dir / "checkpoints" / f"{checkpoint}.pt"
        if not path.is_file():
            other = run_dir / "checkpoints" / "last.pt"
            in_progress = not (run_dir / "metrics.json").is_file()
            if checkpoint == "best" and other.is_file():
                raise RunError(
                    f"{run_dir} has no checkpoints/best.pt (a run in progress?); "
                    "load its latest state with load_run(..., checkpoint='last')."
                )
            state = "has not written a checkpoint yet" if in_progress else "has no checkpoints"
            raise RunError(
                f"{run_dir} {state} (no checkpoints/{checkpoint}.pt); wait for the first "
                "trainer.checkpoint_every steps, or check the directory."
            )
    else:
        path = Path(checkpoint).expanduser().resolve()
        if not path.is_file():
            raise RunError(
                f"checkpoint={checkpoint!r} is neither 'best', 'last' nor an existing file."
            )
    try:
        resolved = resolve_device(str(device))
    except CalibrationError as err:
        raise RunError(str(err).replace("trainer.device", "device")) from None
    payload = _read_checkpoint(path)
    return Run(
        run_dir,
        path,
        payload,
        device=resolved,
        launch_dir=None if launch_dir is None else Path(launch_dir),
    )


def _coordinate(values: list[Any]) -> np.ndarray[Any, Any]:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        if len(present) == len(values) and all(isinstance(v, int) for v in present):
            return np.array(values, dtype=np.int64)
        return np.array([math.nan if v is None else float(v) for v in values])
    return np.array(["" if v is None else str(v) for v in values], dtype=object)


def load_runs(multirun_dir: str | Path) -> xr.Dataset:
    """The calibrated parameters of every job of a sweep, along a ``run`` dimension.

    Args:
        multirun_dir: A sweep's directory, ``multirun/DATE/TIME`` (jobs in ``0/``, ``1/``...).

    Returns:
        ``params.nc`` of every finished job concatenated along ``run`` (the job number), with
        coordinates ``run_dir`` and one per override key (``optimizer.lr``, ``seed``...; numeric
        where every job's value is a number, NaN or "" where a job lacks the key), and the final
        ``loss`` of each job from ``metrics.json``. Jobs without ``params.nc`` (still running
        or failed) are skipped with a warning.

    Raises:
        RunError: No job directories, or no job has finished.
    """
    root = Path(multirun_dir).expanduser().resolve()
    if not root.is_dir():
        raise RunError(f"{root} is not a directory; pass a sweep's multirun/DATE/TIME.")
    if _is_run_dir(root):
        raise RunError(f"{root} is a single run, not a sweep; load it with load_run('{root}').")
    jobs = _job_dirs(root)
    if not jobs:
        raise RunError(
            f"{root} holds no job directories (0/, 1/, ... with params.nc); pass a sweep's "
            "multirun/DATE/TIME."
        )
    finished = [job for job in jobs if (job / "params.nc").is_file()]
    skipped = [job.name for job in jobs if job not in finished]
    if skipped:
        warnings.warn(
            f"load_runs: skipped jobs without params.nc (running or failed): {', '.join(skipped)}",
            stacklevel=2,
        )
    if not finished:
        raise RunError(f"no job of {root} has finished (none holds params.nc).")
    datasets, overrides, losses = [], [], []
    for job in finished:
        params = _load_dataset(job / "params.nc")
        fallback = str(params.attrs.get("overrides", "")).split()
        overrides.append(flatten_overrides(_overrides(job, fallback)))
        metrics_file = job / "metrics.json"
        loss = math.nan
        if metrics_file.is_file():
            total = json.loads(metrics_file.read_text()).get("loss", {}).get("total", math.nan)
            loss = float(total)
        losses.append(loss)
        datasets.append(params)
    try:
        combined = xr.concat(datasets, dim="run", combine_attrs="drop_conflicts")
    except ValueError as err:
        raise RunError(
            f"the jobs of {root} have parameters of different shapes ({err}); load them one by "
            "one with load_run."
        ) from None
    names = [job.name for job in finished]
    run_index: Any = [int(n) for n in names] if all(n.isdigit() for n in names) else names
    keys = sorted({key for job in overrides for key in job})
    coords: dict[str, Any] = {"run": run_index, "run_dir": ("run", [str(j) for j in finished])}
    for key in keys:
        coords[key] = ("run", _coordinate([job.get(key) for job in overrides]))
    combined = combined.assign_coords(coords)
    combined["loss"] = xr.DataArray(
        np.array(losses), dims=("run",), attrs={"units": "1", "long_name": "final loss"}
    )
    combined.attrs.pop("config", None)
    return combined
