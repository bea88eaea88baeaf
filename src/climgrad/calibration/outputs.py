"""End-of-run outputs: ``params.nc`` (CF), ``fit.nc``, ``metrics.json`` and the summary table."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from torch import Tensor, nn

from climgrad.data import ObsSet
from climgrad.params import display_names

__all__ = ["summary_table", "write_fit", "write_metrics", "write_params"]


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
) -> Path:
    """Write every declared parameter of ``model`` as a CF NetCDF variable.

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
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda target: dataset.to_netcdf(target))
    return path


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


def summary_table(model: nn.Module, initial: Mapping[str, Tensor]) -> str:
    """Text table: parameter, initial, calibrated, units, bounds, learned."""
    header = ("parameter", "initial", "calibrated", "units", "bounds", "learned")
    rows = []
    for name, info in display_names(model).items():
        lower, upper = info.spec.bounds
        rows.append(
            (
                name,
                _format(initial[name]) if name in initial else "-",
                _format(info.value),
                info.spec.units,
                f"({_bound(lower, '-inf')}, {_bound(upper, 'inf')})",
                "yes" if info.learnable else "no",
            )
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
