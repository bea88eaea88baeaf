"""The problem of a run: parameters -> predictions on the observation grid -> misfit and prior.

:func:`build_experiment` is the only place that assembles an experiment from its config: the
model family's adapter builds the model (``model``), the observations are read from NetCDF or
simulated for a twin (``data``), and the loss pairs them (``loss``). The calibration loop, the
twin-data script (``scripts/make_twin_data.py``) and :func:`climgrad.load_run` all call it, so a
notebook sees exactly the problem the run solved.

Paths in the config are absolute after Hydra resolves ``${paths.data_dir}``; a relative one is
taken relative to ``paths.root_dir`` (never to the working directory), and relative paths inside
an observation spec file are taken relative to the spec file's folder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from climgrad.calibration.adapters import ModelAdapter, get_adapter
from climgrad.calibration.config import CalibrateConfig, DataConfig
from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.likelihood import GaussianLikelihood
from climgrad.calibration.loss import CalibrationLoss, LossTerms
from climgrad.data import ObservationError, ObservedVariable, ObsSet, load_observations
from climgrad.data.spec import grid_from_dict, read_spec_file, spec_from_dict
from climgrad.integrate import EquilibriumError
from climgrad.models import Model
from climgrad.paths import resolve_path

__all__ = [
    "Problem",
    "as_config",
    "build_experiment",
    "config_yaml",
    "model_options",
    "parameter_settings",
    "resolve_device",
    "resolve_dtype",
]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def as_config(cfg: CalibrateConfig | DictConfig) -> CalibrateConfig:
    """``cfg`` as a :class:`CalibrateConfig` (checked against the schema)."""
    if isinstance(cfg, CalibrateConfig):
        return cfg
    merged = OmegaConf.merge(OmegaConf.structured(CalibrateConfig), cfg)
    config = OmegaConf.to_object(merged)
    assert isinstance(config, CalibrateConfig)
    return config


def config_yaml(config: CalibrateConfig) -> str:
    """The resolved config as YAML (stored in checkpoints and ``params.nc``)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config), resolve=True)


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


@dataclasses.dataclass
class Problem:
    """What a run calibrates: a model, its observations and the loss that pairs them.

    Attributes:
        config: The run's config.
        adapter: The model family's adapter (``model.name``).
        model: The model with the configured initial parameters, on ``device`` in ``dtype``.
        observations: The observations on the model's grid, device and dtype.
        loss: Misfit per variable plus the prior penalty (the point-estimate objective).
        likelihood: The Gaussian likelihood of the observations (the posterior methods).
        simulate_options: ``model.simulate`` (tolerances, spin-up, ...).
        device, dtype: Where and in which precision the problem lives.
    """

    config: CalibrateConfig
    adapter: ModelAdapter
    model: Model
    observations: ObsSet
    loss: CalibrationLoss
    likelihood: GaussianLikelihood
    simulate_options: dict[str, Any]
    device: torch.device
    dtype: torch.dtype

    def simulate(self) -> dict[str, Tensor]:
        """Model outputs on the observation grid, differentiable in the parameters."""
        return self.adapter.simulate(self.model, self.simulate_options)

    def evaluate(self, outputs: Mapping[str, Tensor] | None = None) -> LossTerms:
        """The loss terms at the current parameters (or of given ``outputs``)."""
        return self.loss(self.model, self.simulate() if outputs is None else outputs)

    def predictions(self, outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Model outputs keyed by observation name."""
        return self.loss.predictions(outputs)

    def derived(self, outputs: Mapping[str, Tensor]) -> dict[str, float]:
        """The family's derived scalars (global mean temperature, ECS, ...)."""
        with torch.no_grad():
            return self.adapter.derived(self.model, outputs)

    def check(self) -> None:
        """Solve once at the initial parameters and check the outputs fit the observations.

        Raises:
            CalibrationError: The model does not solve, or an observation has no matching
                output of the right shape.
        """
        try:
            with torch.no_grad():
                self.loss.check_outputs(self.simulate())
        except EquilibriumError as err:
            raise CalibrationError(
                f"the model does not solve at its initial parameters ({err}); change "
                "model.params or model.simulate."
            ) from None


def _configure(model: Model, settings: Mapping[str, Any], where: str) -> None:
    try:
        model.configure_parameters(settings)
    except KeyError as err:
        raise CalibrationError(f"{where}: {err.args[0]}") from None
    except ValueError as err:
        raise CalibrationError(f"{where}: {err}") from None


def model_options(config: CalibrateConfig, adapter: ModelAdapter) -> dict[str, Any]:
    """``model.options`` with the file options taken relative to ``paths.root_dir``."""
    options = dict(config.model.options)
    for name in adapter.path_options:
        if isinstance(options.get(name), str):
            options[name] = str(resolve_path(options[name], config.paths.root_dir))
    return options


def parameter_settings(config: CalibrateConfig) -> dict[str, dict[str, Any]]:
    """``model.params`` as ``{name: {"value": ..., "learn": ..., "prior": ...}}`` without unset
    entries."""
    settings: dict[str, dict[str, Any]] = {}
    for name, p in config.model.params.items():
        fields = {k: v for k, v in dataclasses.asdict(p).items() if v is not None}
        if fields.get("prior", {}).get("kind") is None:
            fields.pop("prior", None)
        settings[name] = fields
    return settings


def build_experiment(
    cfg: CalibrateConfig | DictConfig,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Problem:
    """Assemble the run's problem from its config; fail on bad input before anything is written.

    Args:
        cfg: The composed config.
        device: Where to build (default: ``trainer.device``).
        dtype: Precision (default: ``trainer.dtype``).

    Returns:
        The :class:`Problem`.

    Raises:
        CalibrationError, ObservationError: Unknown options or parameters, unreadable data.
    """
    config = as_config(cfg)
    device = resolve_device(config.trainer.device) if device is None else device
    dtype = resolve_dtype(config.trainer.dtype) if dtype is None else dtype
    adapter = get_adapter(config.model.name)
    options = model_options(config, adapter)
    simulate_options = dict(config.model.simulate)
    adapter.check_options(options, simulate_options)
    model = adapter.build(options, dtype=dtype, device=device)
    _configure(model, parameter_settings(config), "model.params")
    observations = _observations(config, adapter, model, device, dtype)
    loss = CalibrationLoss(observations, config.loss.prior_weight, config.loss.weights)
    likelihood = GaussianLikelihood(
        observations,
        config.likelihood,
        {name: loss.weights[name] * v.weight for name, v in observations.items()},
    )
    return Problem(
        config, adapter, model, observations, loss, likelihood, simulate_options, device, dtype
    )


def _observations(
    config: CalibrateConfig,
    adapter: ModelAdapter,
    model: Model,
    device: torch.device,
    dtype: torch.dtype,
) -> ObsSet:
    data = config.data
    if data.kind == "observations":
        return _read_observations(data, Path(config.paths.root_dir), adapter, model, device, dtype)
    if data.kind == "twin":
        return _twin_observations(config, adapter, device, dtype)
    raise CalibrationError(f"data.kind={data.kind!r} is unknown; use observations or twin.")


def _read_observations(
    config: DataConfig,
    root_dir: Path,
    adapter: ModelAdapter,
    model: Model,
    device: torch.device,
    dtype: torch.dtype,
) -> ObsSet:
    if config.spec:
        spec_path = resolve_path(config.spec, root_dir)
        if not spec_path.is_file():
            raise ObservationError(
                spec_path,
                None,
                f"data.spec={config.spec} does not exist",
                "point paths.data_dir at a folder holding climgrad's data (specs/, ...), e.g. "
                "paths.data_dir=/path/to/climgrad/data, or set CLIMGRAD_ROOT to a climgrad "
                "checkout",
            )
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
    # Relative paths of inline observations (and of specs built without a file) start here.
    root = root_dir if config.root is None else resolve_path(config.root, root_dir)
    grid = adapter.observation_grid(model, spec_grid)
    return load_observations(specs, grid, device=device, dtype=dtype, root=root)


def _twin_observations(
    config: CalibrateConfig, adapter: ModelAdapter, device: torch.device, dtype: torch.dtype
) -> ObsSet:
    data = config.data
    if not data.observations:
        raise CalibrationError("data.kind=twin needs data.observations (name -> model_output).")
    truth_model = adapter.build(model_options(config, adapter), dtype=dtype, device=device)
    _configure(truth_model, {k: {"value": v} for k, v in data.truth.items()}, "data.truth")
    try:
        with torch.no_grad():
            outputs = adapter.simulate(truth_model, dict(config.model.simulate))
    except EquilibriumError as err:
        raise CalibrationError(
            f"the twin's truth model does not solve ({err}); change data.truth or model.simulate."
        ) from None
    layout = adapter.layout(truth_model)
    generator = torch.Generator().manual_seed(int(data.noise_seed))
    variables = {}
    for name, spec in data.observations.items():
        if spec.model_output not in outputs:
            raise CalibrationError(
                f"data.observations.{name}.model_output={spec.model_output!r} is not an output "
                f"of {adapter.name}; outputs: {', '.join(sorted(outputs))}."
            )
        if not spec.error > 0:
            raise CalibrationError(f"data.observations.{name}.error must be positive.")
        values = outputs[spec.model_output].detach()
        if data.noise:
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
            attrs={"source": f"twin experiment: {adapter.name} at {dict(data.truth)}"},
        )
    return ObsSet(variables)
