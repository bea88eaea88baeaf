"""Put observations on the model grid: conservative latitude bands, interpolation, time cells.

All functions act on the last axis of a NumPy array, treat NaN as missing, and return NaN where the
model cell holds too little valid data; they run once, when observations are loaded, never in a
forward pass.

Area-conservative averaging into latitude bands weights each data cell by the area it shares with
the band, which on the sphere is proportional to the difference of sin(latitude) between the
overlap's edges (the cell-area formula of e.g. Jones 1999, Mon. Wea. Rev. 127, 2204). Vertical
interpolation is linear in log-pressure, the natural coordinate for hydrostatic profiles
(temperature and height vary nearly linearly in ln p over a layer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]


def band_areas(edges: Array) -> Array:
    """Fractional area of latitude bands: ``(sin(north) - sin(south)) / 2``, summing to 1 globally.

    Args:
        edges: band edges in degrees north, shape ``(band + 1,)`` or bounds ``(band, 2)``.

    Returns:
        Shape ``(band,)``, dimensionless.
    """
    edges = np.asarray(edges, dtype=np.float64)
    south, north = (edges[:-1], edges[1:]) if edges.ndim == 1 else (edges[:, 0], edges[:, 1])
    return 0.5 * (np.sin(np.deg2rad(north)) - np.sin(np.deg2rad(south)))


def conservative_matrix(source_bounds: Array, target_edges: Array) -> Array:
    """Overlap areas between data cells and model bands, shape ``(band, cell)``.

    Entry ``(i, j)`` is the fractional sphere area shared by band ``i`` (edges
    ``target_edges[i:i+2]``) and data cell ``j`` (``source_bounds[j]``), in units of the sphere.
    """
    sin_source = np.sin(np.deg2rad(np.asarray(source_bounds, dtype=np.float64)))
    sin_target = np.sin(np.deg2rad(np.asarray(target_edges, dtype=np.float64)))
    lower = np.maximum(sin_target[:-1, None], sin_source[None, :, 0])
    upper = np.minimum(sin_target[1:, None], sin_source[None, :, 1])
    return 0.5 * np.clip(upper - lower, 0.0, None)


def conservative_average(
    values: Array, source_bounds: Array, target_edges: Array, min_coverage: float
) -> Array:
    """Area-weighted mean of the valid data cells overlapping each band (last axis).

    A band is NaN unless valid data cover at least ``min_coverage`` of its area.

    Args:
        values: ``(..., cell)``; NaN marks missing data.
        source_bounds: ``(cell, 2)`` cell edges, degrees north.
        target_edges: ``(band + 1,)`` band edges, degrees north.
        min_coverage: fraction of band area that valid data must cover, in [0, 1].

    Returns:
        ``(..., band)``.
    """
    overlap = conservative_matrix(source_bounds, target_edges)
    valid = np.isfinite(values)
    filled = np.where(valid, values, 0.0)
    numerator = filled @ overlap.T
    covered = valid.astype(np.float64) @ overlap.T
    area = band_areas(np.asarray(target_edges, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = numerator / covered
    enough = covered >= min_coverage * area * (1.0 - 1e-9)
    return np.where(enough & (covered > 0), mean, np.nan)


def interpolate_linear(values: Array, source: Array, target: Array) -> Array:
    """Linear interpolation along the last axis; NaN outside the data or next to a gap.

    Args:
        values: ``(..., point)``; NaN marks missing data.
        source: ``(point,)`` ascending coordinate of the data.
        target: ``(target,)`` coordinate to interpolate to.

    Returns:
        ``(..., target)``. A target between two data points is valid only if both are.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    flat = np.asarray(values, dtype=np.float64).reshape(-1, source.size)
    out = np.full((flat.shape[0], target.size), np.nan)
    if source.size == 1:
        hit = np.isclose(target, source[0])
        out[:, hit] = flat[:, :1]
        return out.reshape(*np.shape(values)[:-1], target.size)
    index = np.clip(np.searchsorted(source, target, side="right") - 1, 0, source.size - 2)
    inside = (target >= source[0]) & (target <= source[-1])
    fraction = (target - source[index]) / (source[index + 1] - source[index])
    lower, upper = flat[:, index], flat[:, index + 1]
    # An exact hit on a data point needs only that point to be valid.
    at_lower = fraction == 0.0
    at_upper = fraction == 1.0
    blended = lower + fraction * (upper - lower)
    blended = np.where(at_lower, lower, np.where(at_upper, upper, blended))
    out[:, inside] = blended[:, inside]
    return out.reshape(*np.shape(values)[:-1], target.size)


def interpolate_log_pressure(
    values: Array, source_pressure: Array, target_pressure: Array
) -> Array:
    """Interpolate profiles linearly in ln(p) along the last axis (pressures in Pa, ascending)."""
    return interpolate_linear(values, np.log(source_pressure), np.log(target_pressure))


def bin_average(values: Array, source: Array, edges: Array, min_coverage: float) -> Array:
    """Mean of the samples falling in each cell ``[edges[k], edges[k+1])`` (last axis).

    A cell is NaN when it holds no samples or when fewer than ``min_coverage`` of its samples are
    valid. Used for time: samples in decimal years, cells of the model's time axis.
    """
    source = np.asarray(source, dtype=np.float64)
    cell = np.searchsorted(np.asarray(edges, dtype=np.float64), source, side="right") - 1
    n_cells = len(edges) - 1
    membership = np.zeros((source.size, n_cells))
    inside = (cell >= 0) & (cell < n_cells)
    membership[np.nonzero(inside)[0], cell[inside]] = 1.0
    valid = np.isfinite(values)
    total = valid.astype(np.float64) @ membership
    count = membership.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (np.where(valid, values, 0.0) @ membership) / total
    enough = (count > 0) & (total > 0) & (total >= min_coverage * count * (1.0 - 1e-9))
    return np.where(enough, mean, np.nan)
