"""Helpers shared by the observation tests: a surface-temperature spec and its one-line error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from climgrad.data import ModelGrid, ObservationError, ObservationSpec, load_observations

GRID = ModelGrid.latitude_bands(18)


def tas_spec(path: Path | str, **changes: Any) -> ObservationSpec:
    """A zonal, time-mean surface temperature observation of ``path`` (``tas`` in K)."""
    options: dict[str, Any] = {
        "name": "t",
        "path": str(path),
        "variable": "tas",
        "model_output": "surface_temperature",
        "units": "K",
        "operator": "time_mean+zonal_mean",
        "error": 1.0,
    }
    options.update(changes)
    return ObservationSpec(**options)


def one_line_error(spec: ObservationSpec, grid: ModelGrid = GRID) -> ObservationError:
    """The error loading ``spec`` raises: one line, with a fix, naming the file."""
    with pytest.raises(ObservationError) as info:
        load_observations([spec], grid)
    message = str(info.value)
    assert "\n" not in message and "Fix: " in message, message
    assert Path(str(info.value.file or "")).name in message
    return info.value
