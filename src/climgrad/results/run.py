"""Calibrated runs in notebooks: :func:`load_run` and :class:`Run`.

One line gives everything a ``climgrad-calibrate`` run produced, without Hydra running and from
any working directory::

    run = climgrad.load_run("outputs/2026-11-25/23-38-00")      # checkpoint="best" by default
    run.params, run.history, run.compare()                       # xarray, pandas, xarray
    run.simulate(B=2.0)                                          # a what-if on the obs grid

A run of a posterior method (``method=uki|laplace|nuts|eki|hybrid``) also gives its posterior::

    run.posterior, run.posterior_info                            # draws (xarray), diagnostics
    run.simulate(samples=200)                                    # + <name>_q05/_q50/_q95 bands
    run.plot_posterior(), run.derived_interval("ecs")            # corner plot, (median, lo, hi)

:func:`load_run` reads the checkpoint with ``torch.load(weights_only=True)`` (no code is
unpickled), takes the resolved config from the YAML string it holds, and rebuilds model,
observations and loss with :func:`~climgrad.calibration.experiment.build_experiment`, exactly as
the run did. The config's paths are absolute (``paths.data_dir`` resolved when the run started);
for a run moved to another machine, ``load_run(..., data_dir=...)`` points them at the data there.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import pandas as pd
import torch
import xarray as xr
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from climgrad.calibration.adapters import ModelAdapter
from climgrad.calibration.checkpoint import CHECKPOINT_FORMAT
from climgrad.calibration.config import CalibrateConfig
from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.experiment import Problem, build_experiment, resolve_device
from climgrad.calibration.outputs import write_params
from climgrad.calibration.posterior import MEMBER_FAILURES
from climgrad.data import ObservationError
from climgrad.data.drivers import forcing_series
from climgrad.integrate import EquilibriumError, continuation
from climgrad.params import configure_parameters, physical_parameters
from climgrad.results import plots
from climgrad.results.common import RunError, check_run_dir, failure, load_dataset, overrides

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Run", "load_run"]

_HISTORY_COLUMNS = ["step", "tag", "value"]
#: Methods that write ``posterior.nc`` (``cmaes`` and ``gradient`` give a point estimate only).
POSTERIOR_METHODS = ("uki", "laplace", "nuts", "eki", "hybrid")
#: Quantiles of the predictive bands of :meth:`Run.simulate` (``samples=``).
BAND_QUANTILES = {"q05": 0.05, "q50": 0.5, "q95": 0.95}
#: Short names :meth:`Run.derived_interval` accepts for derived quantities.
DERIVED_ALIASES = {
    "ecs": "equilibrium_climate_sensitivity_K",
    "tcr": "transient_climate_response_K",
    "gmst": "global_mean_surface_temperature_K",
}
#: Posterior draws a batched adapter simulates in one call (bounds the memory of big ``samples``).
_BATCH_CHUNK = 512


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


def _relocate(node: Any, old: str, new: str) -> Any:
    """Strings under the folder ``old`` moved to ``new`` (recursively through containers)."""
    if isinstance(node, dict):
        return {key: _relocate(value, old, new) for key, value in node.items()}
    if isinstance(node, list):
        return [_relocate(value, old, new) for value in node]
    if isinstance(node, str) and (node == old or node.startswith(old.rstrip("/") + "/")):
        return new + node[len(old.rstrip("/")) :]
    return node


def _structured_config(
    config_yaml: str, where: Path, data_dir: Path | None = None
) -> tuple[DictConfig, CalibrateConfig]:
    try:
        recorded = OmegaConf.create(config_yaml)
        if data_dir is not None:
            old = OmegaConf.select(recorded, "paths.data_dir")
            container = OmegaConf.to_container(recorded)
            if old:
                container = _relocate(container, str(old), str(data_dir))
            recorded = OmegaConf.create(container)
            OmegaConf.update(recorded, "paths.data_dir", str(data_dir), force_add=True)
        merged = OmegaConf.merge(OmegaConf.structured(CalibrateConfig), recorded)
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


def _read_group(path: Path, group: str | None) -> xr.Dataset:
    """One group of a NetCDF-4 file (the root for ``None``), loaded into memory, file closed."""
    with xr.open_dataset(path, group=group, engine="netcdf4") as dataset:
        return dataset.load()


def _attribute_value(value: Any) -> Any:
    """A NetCDF attribute as a plain Python value (JSON texts of ``write_posterior`` parsed)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


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
        problem: The run's problem as :func:`~climgrad.calibration.build_experiment` rebuilds it.
        adapter: The model family's adapter (``model.name``).
        model: The model with the checkpoint's parameters, in eval mode, on ``device``.
        observation_set: The observations as tensors (:class:`~climgrad.data.ObsSet`), on the
            observation grid, ``device`` and the run's dtype.
        observations: The same as an xarray Dataset (``<name>``, ``<name>_error``,
            ``<name>_weights``; NaN where masked).
        params: Calibrated parameters (:attr:`params`); a posterior run's ``params.nc`` also
            holds ``<name>_sd``, ``<name>_q05``/``_q50``/``_q95`` and ``correlation``.
        metrics: ``metrics.json`` (``None`` for a run still in progress).
        method: The calibration method (``method.name``: ``gradient``, ``uki``, ``laplace``,
            ``nuts``, ``eki``, ``hybrid``, ``cmaes``).

    A run of a posterior method (``uki``, ``laplace``, ``nuts``, ``eki``, ``hybrid``) also has
    :attr:`posterior`, :attr:`derived_posterior`, :attr:`posterior_info`,
    :meth:`plot_posterior`, :meth:`derived_interval` and predictive bands
    (``simulate(samples=N)``); on other runs these raise a one-line :class:`RunError`.
    """

    def __init__(
        self,
        run_dir: Path,
        checkpoint: Path,
        payload: Mapping[str, Any],
        *,
        device: torch.device,
        data_dir: Path | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.checkpoint = checkpoint
        progress = payload.get("progress", {})
        # best.pt records the run's step count; its parameters are those of the best step.
        best = checkpoint.name == "best.pt" and int(progress.get("best_step", -1)) >= 0
        self.step = int(progress["best_step"] if best else payload.get("step", -1))
        self.config_yaml = str(payload["config"])
        self.config, self._config = _structured_config(self.config_yaml, checkpoint, data_dir)
        self.overrides = overrides(run_dir, payload.get("overrides", []))
        self.method = str(self._config.method.name)
        self.device = device
        self.problem = self._build()
        self.adapter: ModelAdapter = self.problem.adapter
        self.model = self.problem.model
        self.observation_set = self.problem.observations
        self.simulate_options = self.problem.simulate_options
        self.dtype = self.problem.dtype
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
        self._loss = self.problem.loss
        self._initial = {k: v for k, v in payload.get("initial", {}).items()}
        metrics_file = run_dir / "metrics.json"
        self.metrics: dict[str, Any] | None = (
            json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
        )
        self.params = self._params()
        # A loaded run is for analysis: its tensors need no gradient, so derived quantities
        # (run.model.ecs(), ...) are plain values without autograd warnings.
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    # -- building -------------------------------------------------------------------------

    def _build(self) -> Problem:
        try:
            return build_experiment(self._config, device=self.device)
        except (CalibrationError, ObservationError, OSError) as err:
            raise RunError(
                f"cannot rebuild the run's model and observations ({' '.join(str(err).split())}); "
                "if the run's data are elsewhere now, pass load_run(..., data_dir=<the folder "
                "holding climgrad's data>)."
            ) from None

    def _params(self) -> xr.Dataset:
        params_file = self.run_dir / "params.nc"
        if params_file.is_file():
            params = load_dataset(params_file)
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
                params = load_dataset(path)
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

    def _parameter_names(self) -> list[str]:
        """The model's parameters in ``params.nc`` (not the posterior summaries beside them)."""
        return [str(name) for name, v in self.params.data_vars.items() if "learnable" in v.attrs]

    def parameter_table(self) -> pd.DataFrame:
        """One row per parameter: calibrated and initial values, units, bounds, learnable.

        For a posterior run, also the columns ``sd`` (posterior standard deviation) and
        ``q05``, ``q50``, ``q95`` (5/50/95 % posterior quantiles), in the parameter's units;
        NaN for parameters that were not learnt. Field parameters hold arrays.
        """
        spread = ("sd", *BAND_QUANTILES)
        posterior = any(f"{name}_sd" in self.params for name in self._parameter_names())
        rows = []
        for name in self._parameter_names():
            variable = self.params[name]
            values = np.asarray(variable.values)
            initial = variable.attrs.get("initial_value")
            row: dict[str, Any] = {
                "parameter": name,
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
                "long_name": variable.attrs.get("long_name", name),
            }
            if posterior:
                for suffix in spread:
                    summary = self.params.get(f"{name}_{suffix}")
                    if summary is None:
                        row[suffix] = math.nan
                    else:
                        array = np.asarray(summary.values)
                        row[suffix] = float(array) if array.size == 1 else array
            rows.append(row)
        return pd.DataFrame(rows).set_index("parameter")

    # -- posterior ------------------------------------------------------------------------

    @property
    def has_posterior(self) -> bool:
        """Whether the run wrote ``posterior.nc`` (methods ``uki``, ``laplace``, ``nuts``,
        ``eki``, ``hybrid``)."""
        return (self.run_dir / "posterior.nc").is_file()

    def _posterior_file(self, what: str = "posterior") -> Path:
        path = self.run_dir / "posterior.nc"
        if path.is_file():
            return path
        if self.method in POSTERIOR_METHODS:
            raise RunError(
                f"{what}: this run (method={self.method}) has no posterior.nc yet (a run in "
                "progress, or one stopped before its posterior was drawn); load it again when "
                "the run has finished."
            )
        raise RunError(
            f"{what}: this run has no posterior (method={self.method}); calibrate with "
            "method=uki, laplace, nuts, eki or hybrid."
        )

    @cached_property
    def posterior(self) -> xr.Dataset:
        """Posterior draws of the learnt parameters (``posterior.nc``, group ``posterior``).

        Returns:
            One variable per learnt parameter in physical units (attribute ``units``), dims
            ``chain`` and ``draw`` (and ``<name>_dim_0`` for fields). An ensemble (EKI) is one
            chain of its members; a Gaussian posterior (UKI, Laplace, hybrid) one chain of
            ``method.posterior_draws`` draws. Attributes: the method and its diagnostics (see
            :attr:`posterior_info`). Read once, then cached (no file is kept open).

        Raises:
            RunError: The run has no posterior (a ``gradient`` or ``cmaes`` run).
        """
        posterior = _read_group(self._posterior_file("run.posterior"), "posterior")
        posterior.attrs.pop("config", None)  # the run's config: Run.config_yaml
        return posterior

    @cached_property
    def derived_posterior(self) -> xr.Dataset:
        """Derived quantities at a thinned subset of the posterior draws (``method.derived_draws``
        model solves): e.g. ``equilibrium_climate_sensitivity_K`` and
        ``transient_climate_response_K`` (K) for ``two_layer``,
        ``global_mean_surface_temperature_K`` (K) for ``ebm1d``; dims ``chain``, ``draw``.

        An empty Dataset where the run computed none (``method.derived_draws=0``).

        Raises:
            RunError: The run has no posterior.
        """
        path = self._posterior_file("run.derived_posterior")
        import netCDF4

        with netCDF4.Dataset(path) as handle:
            present = "derived_posterior" in handle.groups
        return _read_group(path, "derived_posterior") if present else xr.Dataset()

    @cached_property
    def posterior_info(self) -> dict[str, Any]:
        """What ``posterior.nc`` says of its posterior (its root attributes, as plain values).

        Returns:
            ``{"method": "uki", "kind": "gaussian" | "ensemble" | "mcmc", "chains": int,
            "draws": int (per chain), "experiment", "source", "created_at",
            "diagnostics": {name: value} (iterations, model solves, ESS, R-hat, ...),
            "likelihood": {observation: error model}, "prior": {parameter: prior}}``.

        Raises:
            RunError: The run has no posterior.
        """
        root = _read_group(self._posterior_file("run.posterior_info"), None).attrs
        info: dict[str, Any] = {
            "method": str(root.get("method", self.method)),
            "kind": str(root.get("posterior_kind", "")),
            "chains": int(self.posterior.sizes.get("chain", 0)),
            "draws": int(self.posterior.sizes.get("draw", 0)),
            "experiment": str(root.get("experiment", "")),
            "source": str(root.get("source", "")),
            "created_at": str(root.get("created_at", "")),
            "diagnostics": {},
            "likelihood": {},
            "prior": {},
        }
        for key, value in root.items():
            for prefix in ("diagnostic", "likelihood", "prior"):
                if key.startswith(prefix + "_"):
                    group = "diagnostics" if prefix == "diagnostic" else prefix
                    info[group][key[len(prefix) + 1 :]] = _attribute_value(value)
        return info

    def __repr__(self) -> str:
        return (
            f"Run({self._config.name!r}, model={self._config.model.name}, "
            f"checkpoint={self.checkpoint.name} at step {self.step}, "
            f"observations=[{', '.join(self.observation_set)}], dir={str(self.run_dir)!r})"
        )

    # -- simulate, compare, plot ----------------------------------------------------------

    def _evaluate(
        self, settings: Mapping[str, Any], drivers: Any = None
    ) -> tuple[dict[str, Tensor], dict[str, float], dict[str, Tensor]]:
        """Outputs, derived scalars and parameters at ``settings`` (under new ``drivers``, if
        given); the model is restored."""
        saved = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        try:
            for name, value in settings.items():
                try:
                    configure_parameters(self.model, {name: {"value": value}})
                except KeyError:
                    raise RunError(
                        f"simulate: {name!r} is not a parameter of the {self._config.model.name} "
                        f"model; its parameters are {', '.join(self._parameter_names())} "
                        "(physical units, as in Run.params)."
                    ) from None
                except ValueError as err:
                    raise RunError(f"simulate: {err}") from None
            if drivers is not None:
                with torch.no_grad():
                    try:
                        outputs = self.adapter.scenario(self.model, drivers, self.simulate_options)
                    except CalibrationError as err:
                        raise RunError(str(err)) from None
                    derived = self.adapter.derived(self.model, outputs)
                return (
                    {k: v.detach() for k, v in outputs.items()},
                    derived,
                    physical_parameters(self.model),
                )
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
        works, and a fresh model may not solve cold far from them
        (:func:`~climgrad.integrate.continuation`).
        """
        target = physical_parameters(self.model)
        start = {k: v for k, v in self._initial.items() if k in target}
        if not start:
            return self._solve()
        exact = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

        def solve_at(fraction: float) -> dict[str, Tensor]:
            if fraction >= 1.0:
                self.model.load_state_dict(exact)  # the target itself, not a rounded blend
            else:
                blend = {}
                for name, value in target.items():
                    if name in start:
                        origin = start[name].to(value)
                        blend[name] = {"value": origin + fraction * (value - origin)}
                configure_parameters(self.model, blend)
            return self._solve()

        return continuation(solve_at, stages)

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
        self,
        overrides: Mapping[str, Any] | None = None,
        /,
        *,
        forcing: Any = None,
        samples: int | None = None,
        seed: int | None = 0,
        **param_overrides: Any,
    ) -> xr.Dataset:
        """Run the model as the experiment does (equilibrium or rollout) on the observation grid.

        With ``samples=N`` (posterior runs), the model is also run at N posterior draws and each
        variable gets a predictive band from parameter uncertainty (see ``samples``).

        Args:
            overrides: Parameter values by name, physical units (see :meth:`outputs`).
            forcing: New drivers, for models driven by a forcing series (``two_layer``): a
                NetCDF path, an xarray Dataset of ``erf_<agent>`` or DataArray of total ERF, or a
                pandas DataFrame (agents as columns) or Series (total) indexed by year, in W m-2
                (:func:`climgrad.data.drivers.forcing_series`). The result is then every model
                series over the scenario's years (see :meth:`scenario`).
            samples: Posterior draws to run the model at (posterior runs only; ``None`` or 0:
                none). For each variable ``<name>`` the result then also holds ``<name>_q05``,
                ``<name>_q50`` and ``<name>_q95``: the 5/50/95 % quantiles, element by element,
                of the model at those draws, on the same dimensions and in the same units. The
                band is the spread from **parameter uncertainty only**; observation noise is
                not included (it is no prediction interval for new observations). All draws
                are used where the posterior has no more than ``samples``. Models with a batched
                solver (``ebm1d``, ``two_layer``) solve the draws in one call; others one by
                one (``samples`` model solves). Draws the model cannot solve are left out
                (attribute ``posterior_samples_failed``).
            seed: How the ``samples`` draws are picked: at random without replacement, from a
                generator seeded with ``seed`` (reproducible); ``None``: evenly thinned.
            **param_overrides: More parameter values, e.g. ``simulate(B=2.0)``; none gives the
                calibrated model.

        Returns:
            One variable per observation (named as the observation, in its units, on its
            dimensions and coordinates), attributes ``model_output`` and ``long_name``; the
            Dataset's attributes hold the parameter values used (``parameter_<name>`` for
            scalars), the overrides, and the adapter's derived scalars (e.g. ECS, global mean
            temperature). The variables are the model at the calibrated parameters (the point
            estimate: the best step, the UKI/EKI mean, the MAP), also with ``samples``. With
            ``samples``, the bands above and attributes ``posterior_samples`` (draws solved),
            ``posterior_samples_failed``, ``posterior_samples_requested``,
            ``posterior_sampling``, ``posterior_draw_index`` (flat indices ``chain * draws +
            draw`` into :attr:`posterior` of the draws solved), ``posterior_method`` and
            ``band``.

        Raises:
            RunError: Unknown parameters or values out of bounds; ``samples`` on a run without
                a posterior, or together with overrides or ``forcing``; no draw solves.
        """
        settings = {**dict(overrides or {}), **param_overrides}
        if samples is not None and int(samples) < 0:
            raise RunError(f"simulate: samples={samples}; pass a number of posterior draws >= 1.")
        if samples and (settings or forcing is not None):
            raise RunError(
                "simulate: samples=... gives bands around the calibrated model and takes no "
                "parameter overrides or forcing; call simulate(samples=N) and the what-if "
                "separately."
            )
        if forcing is not None:
            return self.scenario(forcing, settings)
        if samples:
            self._posterior_file("simulate(samples=...)")
        band = self._predictive_band(int(samples), seed) if samples else None
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
        if band is not None:
            quantiles, band_attrs = band
            for name in list(variables):
                point = variables[name]
                for suffix, values in quantiles[name].items():
                    percent = suffix[1:]
                    variables[f"{name}_{suffix}"] = point.copy(data=values).assign_attrs(
                        long_name=(
                            f"{percent} % quantile of model {point.attrs['model_output']} over "
                            f"{band_attrs['posterior_samples']} posterior draws (parameter "
                            "uncertainty only)"
                        )
                    )
            attrs.update(band_attrs)
        return xr.Dataset(variables, attrs=attrs)

    def _posterior_sample(
        self, samples: int, seed: int | None
    ) -> tuple[dict[str, Tensor], str, np.ndarray]:
        """``samples`` draws of the learnt parameters (physical, ``name -> (J, *shape)``), how
        they were picked, and their flat indices (``chain * draws_per_chain + draw``)."""
        posterior = self.posterior
        names = [str(name) for name in posterior.data_vars]
        total = int(posterior.sizes["chain"] * posterior.sizes["draw"])
        count = min(samples, total)
        if count == total:
            index = np.arange(total)
            how = f"all {total} draws"
        elif seed is None:
            index = np.unique(np.linspace(0, total - 1, count).round().astype(np.int64))
            how = f"{count} of {total} draws, evenly thinned"
        else:
            generator = np.random.default_rng(seed)
            index = np.sort(generator.choice(total, size=count, replace=False))
            how = f"{count} of {total} draws, at random (seed={seed})"
        draws = {}
        for name in names:
            variable = posterior[name].transpose("chain", "draw", ...)
            flat = np.asarray(variable.values).reshape(total, *variable.shape[2:])
            draws[name] = torch.as_tensor(flat[index], dtype=self.dtype, device=self.device)
        return draws, how, index

    def _draw_outputs(self, draws: Mapping[str, Tensor]) -> list[dict[str, np.ndarray] | None]:
        """The observed model outputs at each draw (flat float64 arrays), ``None`` where the
        model does not solve; the model keeps its calibrated parameters."""
        wanted = {observed.model_output for observed in self.observation_set.values()}
        count = next(iter(draws.values())).shape[0]

        def finite(outputs: Mapping[str, Tensor], row: int | None) -> dict[str, np.ndarray] | None:
            member = {}
            for key in wanted:
                value = outputs[key] if row is None else outputs[key][row]
                array = value.detach().double().cpu().numpy().reshape(-1)
                if not np.all(np.isfinite(array)):
                    return None
                member[key] = array
            return member

        def batch(part: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
            try:
                with torch.no_grad():
                    return self.adapter.simulate_batch(self.model, part, self.simulate_options)
            except MEMBER_FAILURES:
                return None

        results: list[dict[str, np.ndarray] | None] = []
        saved = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        try:
            if self.adapter.batched:
                for start in range(0, count, _BATCH_CHUNK):
                    part = {k: v[start : start + _BATCH_CHUNK] for k, v in draws.items()}
                    size = next(iter(part.values())).shape[0]
                    outputs = batch(part)
                    if outputs is not None:
                        results.extend(finite(outputs, j) for j in range(size))
                        continue
                    for j in range(size):  # find the members that fail, one by one
                        single = batch({k: v[j : j + 1] for k, v in part.items()})
                        results.append(None if single is None else finite(single, 0))
            else:
                for j in range(count):
                    try:
                        configure_parameters(
                            self.model, {k: {"value": v[j]} for k, v in draws.items()}
                        )
                        results.append(finite(self._solve(), None))
                    except MEMBER_FAILURES:
                        results.append(None)
                    finally:
                        self.model.load_state_dict(saved)
        finally:
            self.model.load_state_dict(saved)
        return results

    def _predictive_band(
        self, samples: int, seed: int | None
    ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
        """Quantiles ``name -> {"q05": array, ...}`` (observation shapes) of the model at
        ``samples`` posterior draws, and the attributes that describe them."""
        draws, how, index = self._posterior_sample(samples, seed)
        results = self._draw_outputs(draws)
        solved = [member for member in results if member is not None]
        if not solved:
            raise RunError(
                f"simulate(samples={samples}): the model solves at none of the "
                f"{len(results)} posterior draws; check the run's posterior (run.posterior)."
            )
        quantiles: dict[str, dict[str, np.ndarray]] = {}
        for name, observed in self.observation_set.items():
            shape = self.observations[name].shape
            stacked = np.stack([member[observed.model_output] for member in solved])
            levels = np.quantile(stacked, list(BAND_QUANTILES.values()), axis=0)
            quantiles[name] = {
                suffix: level.reshape(shape) for suffix, level in zip(BAND_QUANTILES, levels)
            }
        attrs = {
            "posterior_samples": len(solved),
            "posterior_samples_failed": len(results) - len(solved),
            "posterior_samples_requested": samples,
            "posterior_sampling": how,
            "posterior_draw_index": np.array(
                [i for i, member in zip(index, results) if member is not None], dtype=np.int64
            ),
            "posterior_method": self.method,
            "band": (
                "<name>_q05/_q50/_q95: 5/50/95 % quantiles of the model at posterior draws of "
                "the parameters (parameter uncertainty only; observation noise not included)"
            ),
        }
        return quantiles, attrs

    def scenario(self, forcing: Any, overrides: Mapping[str, Any] | None = None) -> xr.Dataset:
        """The calibrated model under a new forcing series (``run.simulate(forcing=...)``).

        Args:
            forcing: See :meth:`simulate`.
            overrides: Parameter values by name, physical units.

        Returns:
            Every model series along ``time`` (calendar years at mid-step): temperature
            anomalies (K; relative to the calibration's reference years where the scenario
            covers them), heat uptake (W m-2), heat contents (J, ZJ), forcing (W m-2); attributes
            as :meth:`simulate`'s, plus ``forcing_source`` and ``forcing_agents``.
        """
        try:
            drivers = forcing_series(forcing)
        except ObservationError as err:
            raise RunError(f"simulate(forcing=...): {err}") from None
        settings = dict(overrides or {})
        outputs, derived, parameters = self._evaluate(settings, drivers)
        time = outputs["time"].double().cpu().numpy()
        units = {
            "time": "year",
            "radiative_forcing": "W m-2",
            "heat_uptake": "W m-2",
            "heat_content_per_area": "J m-2",
            "ocean_heat_content_zj": "ZJ",
        }
        variables = {}
        for name, value in outputs.items():
            if name == "time" or value.ndim != 1 or value.shape[0] != time.shape[0]:
                continue
            unit = units.get(name, "K" if "temperature" in name else "J")
            variables[name] = xr.DataArray(
                value.double().cpu().numpy(), dims=("time",), attrs={"units": unit}
            )
        attrs: dict[str, Any] = {
            "title": f"climgrad scenario: {self._config.name}",
            "experiment": self._config.name,
            "checkpoint": self.checkpoint.name,
            "forcing_source": drivers.source,
            "forcing_agents": ", ".join(drivers.agents),
            "parameter_overrides": ", ".join(f"{k}={v}" for k, v in settings.items()) or "none",
        }
        for name, value in parameters.items():
            if value.numel() == 1:
                attrs[f"parameter_{name}"] = float(value)
        attrs.update({k: float(v) for k, v in derived.items()})
        return xr.Dataset(variables, coords={"time": ("time", time, units)}, attrs=attrs)

    def derived(
        self, overrides: Mapping[str, Any] | None = None, /, **param_overrides: Any
    ) -> dict[str, float]:
        """The model family's derived scalars as plain numbers (e.g. ECS, TCR, global mean T).

        Args:
            overrides, **param_overrides: Parameter values, as in :meth:`simulate`.
        """
        return self._evaluate({**dict(overrides or {}), **param_overrides})[1]

    @overload
    def ecs(self, interval: Literal[False] = ...) -> float: ...

    @overload
    def ecs(self, interval: Literal[True], level: float = ...) -> tuple[float, float, float]: ...

    def ecs(self, interval: bool = False, level: float = 0.9) -> float | tuple[float, float, float]:
        """Equilibrium climate sensitivity in K (models that define it, e.g. ``two_layer``).

        Args:
            interval: Return ``(median, low, high)`` over the posterior instead (posterior
                runs; :meth:`derived_interval`).
            level: The interval's probability (default 0.9: the 5-95 % interval).
        """
        return self._scalar_or_interval("ecs", interval, level)

    @overload
    def tcr(self, interval: Literal[False] = ...) -> float: ...

    @overload
    def tcr(self, interval: Literal[True], level: float = ...) -> tuple[float, float, float]: ...

    def tcr(self, interval: bool = False, level: float = 0.9) -> float | tuple[float, float, float]:
        """Transient climate response in K (models that define it, e.g. ``two_layer``).

        Args:
            interval: Return ``(median, low, high)`` over the posterior instead (posterior
                runs; :meth:`derived_interval`).
            level: The interval's probability (default 0.9: the 5-95 % interval).
        """
        return self._scalar_or_interval("tcr", interval, level)

    def _scalar_or_interval(
        self, name: str, interval: bool, level: float
    ) -> float | tuple[float, float, float]:
        """The model's ``name`` (``ecs``, ``tcr``), or its posterior interval."""
        if interval:
            self._posterior_file(f"{name}(interval=True)")
            return self.derived_interval(DERIVED_ALIASES[name], level)
        return self._model_scalar(name)

    def derived_interval(self, name: str, level: float = 0.9) -> tuple[float, float, float]:
        """Posterior median and central interval of a derived quantity.

        Args:
            name: A variable of :attr:`derived_posterior` (e.g.
                ``"equilibrium_climate_sensitivity_K"``) or a short name: ``"ecs"``, ``"tcr"``,
                ``"gmst"`` (global mean surface temperature).
            level: Probability of the central interval, in (0, 1): 0.9 gives the 5 % and 95 %
                quantiles.

        Returns:
            ``(median, low, high)`` in the quantity's units (K for the three above), over the
            ``method.derived_draws`` thinned posterior draws the run solved (parameter
            uncertainty only).

        Raises:
            RunError: No posterior, or no such derived quantity (the message lists those there
                are and how to get them).
        """
        if not 0.0 < level < 1.0:
            raise RunError(f"derived_interval: level={level}; pass a probability in (0, 1).")
        self._posterior_file("derived_interval")
        derived = self.derived_posterior
        key = DERIVED_ALIASES.get(name.lower(), name)
        if key not in derived:
            there = ", ".join(map(str, derived.data_vars))
            raise RunError(
                f"derived_interval: the run's posterior has no {key!r} "
                + (
                    f"(it has {there})."
                    if there
                    else "(no derived quantities: rerun with method.derived_draws=200 or more)."
                )
            )
        values = np.asarray(derived[key].values, dtype=np.float64).reshape(-1)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise RunError(
                f"derived_interval: every posterior draw of {key!r} is NaN (not defined at the "
                "draws, e.g. no ice edge)."
            )
        tail = (1.0 - level) / 2.0
        low, median, high = np.quantile(values, [tail, 0.5, 1.0 - tail])
        return float(median), float(low), float(high)

    def _model_scalar(self, name: str) -> float:
        method = getattr(self.model, name, None)
        if method is None:
            raise RunError(f"the {self._config.model.name} model has no {name}().")
        with torch.no_grad():
            return float(method())

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

    def plot(
        self, simulation: xr.Dataset | None = None, *, samples: int | None = None
    ) -> dict[str, Figure]:
        """Figures: ``"fit"`` (model against observations) and ``"parameters"`` (trajectories);
        for a posterior run also ``"posterior"`` (:meth:`plot_posterior`).

        Args:
            simulation: A what-if from :meth:`simulate`, drawn beside the calibrated model; or a
                ``simulate(samples=N)`` result, whose bands are shaded around the model.
            samples: Posterior draws for the fit's predictive band (see :meth:`plot_fit`).

        Returns:
            ``{"fit": Figure, "parameters": Figure}`` (and ``"posterior"``; matplotlib; show
            them in a notebook by leaving one as a cell's value, save with ``figure.savefig``).
        """
        figures = {
            "fit": self.plot_fit(simulation, samples=samples),
            "parameters": self.plot_parameters(),
        }
        if self.has_posterior and any(v.ndim == 2 for v in self.posterior.data_vars.values()):
            figures["posterior"] = self.plot_posterior()
        return figures

    def plot_fit(
        self, simulation: xr.Dataset | None = None, *, samples: int | None = None
    ) -> Figure:
        """One panel per observed variable (see :func:`climgrad.results.plots.plot_fit`).

        The model's 5-95 % predictive band from parameter uncertainty (not observation noise)
        is shaded behind its line where there is one: from ``simulation`` when it is a
        ``simulate(samples=N)`` result, else from ``simulate(samples=samples)``. ``samples``
        defaults, on a posterior run plotted without ``simulation``, to 200 draws for models
        with a batched solver (``ebm1d``, ``two_layer``: one call) and 50 for others (one
        solve each); ``samples=0`` draws no band. Without a posterior there is no band (and
        ``samples`` > 0 is an error).
        """
        band: xr.Dataset | None = None
        if simulation is not None and plots.has_band(simulation):
            band, simulation = simulation, None
        else:
            if samples is None:
                default = 200 if self.adapter.batched else 50
                samples = default if simulation is None and self.has_posterior else 0
            if samples:
                band = self.simulate(samples=samples)
        return plots.plot_fit(self, simulation, band=band)

    def plot_posterior(self, parameters: list[str] | tuple[str, ...] | None = None) -> Figure:
        """Pairwise (corner) plot of the posterior of learnt scalar parameters.

        See :func:`climgrad.results.plots.plot_posterior`: histograms on the diagonal (titled
        with the median and 5-95 % interval), draws below it, the point estimate (red) and,
        for a twin experiment, the truth (green); physical units.

        Args:
            parameters: Names from :attr:`posterior` (default: every scalar one).

        Raises:
            RunError: No posterior, an unknown name, or a field parameter.
        """
        self._posterior_file("plot_posterior")
        posterior = self.posterior
        scalars = [str(n) for n, v in posterior.data_vars.items() if v.ndim == 2]
        names = list(scalars if parameters is None else parameters)
        for name in names:
            if name not in posterior:
                raise RunError(
                    f"plot_posterior: {name!r} is not a learnt parameter of this run; the "
                    f"posterior has {', '.join(map(str, posterior.data_vars))}."
                )
            if name not in scalars:
                variable = posterior[name]
                elements = math.prod(variable.sizes[d] for d in variable.dims[2:])
                raise RunError(
                    f"plot_posterior: {name!r} is a field ({elements} elements) and "
                    "plot_posterior draws scalar parameters; plot the field's draws from "
                    f"run.posterior[{name!r}]."
                )
        if not names:
            raise RunError(
                "plot_posterior: the run learnt no scalar parameter; plot the fields' draws "
                "from run.posterior."
            )
        truth: dict[str, float] = {}
        if self._config.data.kind == "twin":
            for key, value in dict(self._config.data.truth).items():
                if np.asarray(value).size == 1:
                    truth[str(key)] = float(np.asarray(value, dtype=np.float64).reshape(-1)[0])
        point = {name: float(np.asarray(self.params[name].values)) for name in names}
        return plots.plot_posterior(self, names, point=point, truth=truth)

    def plot_parameters(self) -> Figure:
        """Loss and learnt parameters by step (:func:`climgrad.results.plots.plot_parameters`)."""
        return plots.plot_parameters(self)


def load_run(
    run_dir: str | Path,
    checkpoint: str = "best",
    device: str | torch.device = "cpu",
    *,
    data_dir: str | Path | None = None,
) -> Run:
    """Load a ``climgrad-calibrate`` run for analysis.

    Args:
        run_dir: The run's output directory (``outputs/DATE/TIME`` or a sweep's
            ``outputs/multirun/DATE/TIME/<job>``).
        checkpoint: ``"best"`` (lowest loss), ``"last"`` (the latest state; the only one a run in
            progress may have) or the path of a checkpoint file.
        device: Where the model and observations go (``"cpu"``, ``"cuda"``, ``"auto"``).
        data_dir: Where the run's data are now, for a run moved to another machine or a data
            folder that moved: every path under the run's ``paths.data_dir`` is taken from here
            instead (default: the paths as the run recorded them).

    Returns:
        The :class:`Run`.

    Raises:
        RunError: Not a run directory, a run without that checkpoint yet, or a checkpoint of an
            incompatible version (one line, with the fix).
    """
    run_dir = Path(run_dir).expanduser().resolve()
    check_run_dir(run_dir)
    if checkpoint in ("best", "last"):
        path = run_dir / "checkpoints" / f"{checkpoint}.pt"
        failed = failure(run_dir)
        if not path.is_file() and failed is not None:
            raise RunError(f"{run_dir} is a failed run with nothing to load ({failed}).")
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
        data_dir=None if data_dir is None else Path(data_dir).expanduser().resolve(),
    )
