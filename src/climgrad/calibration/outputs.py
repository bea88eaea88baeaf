"""End-of-run outputs: ``params.nc`` (CF), ``fit.nc``, ``metrics.json`` and the summary table."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
from torch import Tensor, nn

from climgrad.data import ObsSet
from climgrad.params import display_names

if TYPE_CHECKING:
    from climgrad.calibration.methods.base import PosteriorDraws

__all__ = [
    "QUANTILES",
    "posterior_summary",
    "summary_table",
    "write_fit",
    "write_metrics",
    "write_params",
    "write_posterior",
]

#: Quantiles reported for every parameter with a posterior (5 %, 50 %, 95 %).
QUANTILES = (0.05, 0.5, 0.95)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _atomic_write(path: Path, write: Any) -> None:
    """Write through ``write(temporary_path)`` and rename, so readers never see half a file."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _version() -> str:
    from climgrad import __version__

    return str(__version__)


def _array(value: Tensor) -> np.ndarray[Any, Any]:
    return np.asarray(value.detach().double().cpu().numpy())


def write_params(
    path: str | Path,
    model: nn.Module,
    initial: Mapping[str, Tensor],
    *,
    experiment: str,
    overrides: list[str],
    config_yaml: str,
    posterior: Mapping[str, Tensor] | None = None,
    method: str = "gradient",
) -> Path:
    """Write every declared parameter of ``model`` as a CF NetCDF variable.

    With ``posterior`` (physical draws ``name -> (chain, draw, *shape)``), each learnt parameter
    also gets ``<name>_sd`` and ``<name>_q05``/``_q50``/``_q95`` (5/50/95 % quantiles, its units)
    and the file a ``correlation`` matrix over the elements of the learnt parameters
    (``element`` coordinate: ``"A"``, ``"D[3]"``).

    Each variable holds the calibrated physical value with attributes ``units``, ``long_name``,
    ``valid_min``/``valid_max`` (where bounded), ``prior``, ``learnable``, ``transform`` and
    ``initial_value``. Global attributes: ``Conventions``, ``title``, ``history``, ``source``
    (climgrad version), ``experiment``, ``overrides`` and the resolved ``config`` (YAML).

    Args:
        path: Output file, usually ``<run>/params.nc``.
        model: The calibrated model.
        initial: Physical values before calibration, keyed as :func:`display_names`.
        experiment: Experiment name.
        overrides: Command-line overrides of the run.
        config_yaml: The resolved config.

    Returns:
        The path written.
    """
    path = Path(path)
    variables: dict[str, xr.DataArray] = {}
    for name, info in display_names(model).items():
        value = _array(info.value)
        dims = tuple(
            f"{name}_index{i}" if value.ndim > 1 else f"{name}_index" for i in range(value.ndim)
        )
        lower, upper = info.spec.bounds
        attrs: dict[str, Any] = {
            "units": info.spec.units,
            "long_name": info.spec.description or name,
            "prior": info.spec.prior.describe() if info.spec.prior else "none",
            "learnable": int(info.learnable),
            "transform": info.spec.resolved_transform,
            "module_path": info.qualified_name,
        }
        if lower is not None:
            attrs["valid_min"] = float(lower)
        if upper is not None:
            attrs["valid_max"] = float(upper)
        if name in initial:
            start = _array(initial[name])
            attrs["initial_value"] = float(start) if start.size == 1 else start.reshape(-1)
        variables[name] = xr.DataArray(value, dims=dims, attrs=attrs)
        if posterior is not None and name in posterior:
            flat = _array(posterior[name]).reshape(-1, *value.shape)
            spread = {"sd": flat.std(axis=0, ddof=1)}
            for q in QUANTILES:
                spread[f"q{round(q * 100):02d}"] = np.quantile(flat, q, axis=0)
            for suffix, array in spread.items():
                what = "standard deviation" if suffix == "sd" else f"{suffix[1:]} % quantile"
                variables[f"{name}_{suffix}"] = xr.DataArray(
                    array,
                    dims=dims,
                    attrs={
                        "units": info.spec.units,
                        "long_name": f"posterior {what} of {info.spec.description or name}",
                        "method": method,
                    },
                )
    if posterior:
        labels, columns = _elements(posterior)
        correlation = np.corrcoef(columns, rowvar=False).reshape(len(labels), len(labels))
        variables["correlation"] = xr.DataArray(
            correlation,
            dims=("element", "element_"),
            coords={"element": labels, "element_": labels},
            attrs={"units": "1", "long_name": "posterior correlation of the learnt parameters"},
        )
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    dataset = xr.Dataset(
        variables,
        attrs={
            "Conventions": "CF-1.10",
            "title": f"climgrad calibrated parameters: {experiment}",
            "history": f"{now}: climgrad-calibrate {' '.join(overrides)}".rstrip(),
            "source": f"climgrad {_version()}",
            "experiment": experiment,
            "overrides": " ".join(overrides),
            "config": config_yaml,
            "method": method,
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda target: dataset.to_netcdf(target))
    return path


def _elements(draws: Mapping[str, Tensor]) -> tuple[list[str], np.ndarray[Any, Any]]:
    """Element labels and the draws as columns ``(sample, element)``."""
    labels: list[str] = []
    columns = []
    for name, value in draws.items():
        array = _array(value)
        flat = array.reshape(array.shape[0] * array.shape[1], -1)
        columns.append(flat)
        labels.extend(
            [name]
            if flat.shape[1] == 1 and array.ndim == 2
            else [f"{name}[{i}]" for i in range(flat.shape[1])]
        )
    return labels, np.concatenate(columns, axis=1)


def posterior_summary(draws: Mapping[str, Tensor]) -> dict[str, dict[str, Any]]:
    """Mean, standard deviation and 5/50/95 % quantiles of each quantity's draws
    ``(chain, draw, *shape)`` (lists for fields), for ``metrics.json`` and the summary table."""
    summary = {}
    for name, value in draws.items():
        array = _array(value)
        flat = array.reshape(-1, *array.shape[2:])
        entry: dict[str, Any] = {
            "mean": flat.mean(axis=0),
            "sd": flat.std(axis=0, ddof=1) if flat.shape[0] > 1 else np.zeros(flat.shape[1:]),
        }
        for q in QUANTILES:
            entry[f"q{round(q * 100):02d}"] = np.quantile(flat, q, axis=0)
        summary[name] = {k: v.tolist() for k, v in entry.items()}
    return summary


def write_posterior(
    path: str | Path,
    model: nn.Module,
    physical: Mapping[str, Tensor],
    draws: PosteriorDraws,
    derived: Mapping[str, Tensor],
    *,
    experiment: str,
    method: str,
    likelihood: Mapping[str, str],
    prior: Mapping[str, str],
    config_yaml: str,
) -> Path:
    """``posterior.nc``: the posterior in ArviZ's InferenceData layout (NetCDF-4 groups).

    Groups: ``posterior`` (each learnt parameter in physical units, dims ``chain``, ``draw``
    and ``<name>_dim_0`` for fields), ``unconstrained_posterior`` (the same draws in the
    coordinates the method worked in, ``element`` labels), ``derived_posterior`` (derived
    quantities of a thinned subset, e.g. ECS and TCR) and ``sample_stats`` (per-draw
    statistics: acceptance, divergences, misfit). The root holds the method, its diagnostics,
    the likelihood's error model and the priors as attributes. ``arviz.from_netcdf`` reads it.
    """
    path = Path(path)
    infos = display_names(model)

    def dataset(values: Mapping[str, Tensor], attrs: dict[str, Any]) -> xr.Dataset:
        variables = {}
        for name, value in values.items():
            array = _array(value)
            dims = ("chain", "draw", *(f"{name}_dim_{i}" for i in range(array.ndim - 2)))
            info = infos.get(name)
            variables[name] = xr.DataArray(
                array,
                dims=dims,
                attrs={
                    "units": info.spec.units if info is not None else _derived_units(name),
                    "long_name": (info.spec.description or name) if info is not None else name,
                },
            )
        chains, draws_per_chain = next(iter(values.values())).shape[:2]
        return xr.Dataset(
            variables,
            coords={"chain": np.arange(chains), "draw": np.arange(draws_per_chain)},
            attrs=attrs,
        )

    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    root_attrs: dict[str, Any] = {
        "title": f"climgrad posterior: {experiment}",
        "created_at": now,
        "source": f"climgrad {_version()}",
        "inference_library": "climgrad",
        "experiment": experiment,
        "method": method,
        "posterior_kind": draws.kind,
        "config": config_yaml,
    }
    for name, text in likelihood.items():
        root_attrs[f"likelihood_{name}"] = text
    for name, text in prior.items():
        root_attrs[f"prior_{name}"] = text
    for key, value in draws.diagnostics.items():
        root_attrs[f"diagnostic_{key}"] = _attribute(value)
    raw = draws.raw.detach().double().cpu().numpy()
    labels = _elements(physical)[0]
    unconstrained = xr.Dataset(
        {
            "u": xr.DataArray(
                raw,
                dims=("chain", "draw", "element"),
                attrs={"long_name": "draws in the unconstrained coordinates of the parameters"},
            )
        },
        coords={"element": labels},
    )
    if draws.mean is not None:
        unconstrained["method_mean"] = xr.DataArray(_array(draws.mean), dims=("element",))
    if draws.covariance is not None:
        unconstrained["method_covariance"] = xr.DataArray(
            _array(draws.covariance), dims=("element", "element_")
        )
    groups = {
        "posterior": dataset(physical, dict(root_attrs)),
        "unconstrained_posterior": unconstrained,
    }
    if derived:
        groups["derived_posterior"] = dataset(derived, {})
    if draws.sample_stats:
        groups["sample_stats"] = dataset(draws.sample_stats, {})

    def write(target: str) -> None:
        mode: Any = "w"
        for group, data in groups.items():
            data.to_netcdf(target, group=group, mode=mode, engine="netcdf4")
            mode = "a"
        import netCDF4

        with netCDF4.Dataset(target, "a") as handle:
            handle.setncatts(root_attrs)

    _atomic_write(path, write)
    return path


def _derived_units(name: str) -> str:
    """Units from a derived quantity's name suffix (``..._K``, ``..._deg``)."""
    suffix = name.rsplit("_", 1)[-1]
    return {"K": "K", "deg": "degrees_north"}.get(suffix, "1")


def _attribute(value: Any) -> Any:
    """A NetCDF attribute value: numbers, strings, or numeric lists."""
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(value, Tensor):
        value = value.detach().double().cpu().numpy()
    if isinstance(value, (list, tuple, np.ndarray)):
        try:
            return np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            return json.dumps(_json_safe(value))
    if isinstance(value, dict):
        return json.dumps(_json_safe(value))
    return str(value)


def write_fit(
    path: str | Path, observations: ObsSet, predictions: Mapping[str, Tensor], experiment: str
) -> Path:
    """Observations (with errors and weights) and the calibrated model in one CF Dataset.

    Each observation ``<name>`` is joined by ``model_<name>`` on the same dimensions.
    """
    path = Path(path)
    dataset = observations.to_xarray()
    for name in observations:
        dims = dataset[name].dims
        dataset[f"model_{name}"] = xr.DataArray(
            _array(predictions[name]).reshape(dataset[name].shape),
            dims=dims,
            attrs={
                "units": observations[name].units,
                "long_name": f"calibrated model {observations[name].model_output}",
                "climgrad_role": "model",
            },
        )
    dataset.attrs.update(
        title=f"climgrad calibration fit: {experiment}", source=f"climgrad {_version()}"
    )
    _atomic_write(path, lambda target: dataset.to_netcdf(target))
    return path


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_metrics(path: str | Path, metrics: Mapping[str, Any]) -> Path:
    """``metrics.json``: final loss by variable, RMSE, steps, wall time, device (non-finite
    numbers as strings, so that strict JSON readers accept the file)."""
    path = Path(path)
    text = json.dumps(_json_safe(dict(metrics)), indent=2, sort_keys=False)
    _atomic_write(path, lambda target: Path(target).write_text(text + "\n"))
    return path


def _format(value: Tensor) -> str:
    flat = value.detach().double().cpu().reshape(-1)
    if flat.numel() == 1:
        return f"{float(flat[0]):.6g}"
    return f"[{float(flat.min()):.4g} .. {float(flat.max()):.4g}]"


def _bound(value: float | None, infinite: str) -> str:
    return infinite if value is None else f"{value:g}"


def summary_table(
    model: nn.Module,
    initial: Mapping[str, Tensor],
    posterior: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """Text table: parameter, initial, calibrated, units, bounds, learned (and the 5-95 %
    posterior interval where ``posterior`` (:func:`posterior_summary`) has one)."""
    header: tuple[str, ...] = ("parameter", "initial", "calibrated", "units", "bounds", "learned")
    if posterior:
        header = (*header, "5-95 %")
    rows = []
    for name, info in display_names(model).items():
        lower, upper = info.spec.bounds
        row: tuple[str, ...] = (
            name,
            _format(initial[name]) if name in initial else "-",
            _format(info.value),
            info.spec.units,
            f"({_bound(lower, '-inf')}, {_bound(upper, 'inf')})",
            "yes" if info.learnable else "no",
        )
        if posterior:
            entry = posterior.get(name)
            interval = "-"
            if entry is not None and not isinstance(entry["q05"], list):
                interval = f"{entry['q05']:.4g} .. {entry['q95']:.4g}"
            row = (*row, interval)
        rows.append(row)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
