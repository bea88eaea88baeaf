"""Find coordinates by their CF attributes, and normalise them.

Axes are recognised by ``standard_name``, ``axis`` and ``units`` first and by name last, so a file
calling latitude ``y`` or pressure ``level`` is read like one that says ``lat`` and ``plev``. After
:func:`normalize` every variable has canonical dimension names (``lat``, ``lon``, ``time``,
``plev``), ascending latitude, longitude in [-180, 180) ascending, sorted time, and pressure in Pa
ascending; time is carried as decimal years (float64) so that model time axes in years compare
directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from climgrad.data.errors import ObservationError
from climgrad.data.units import convert, normalize_unit_string

_LAT_NAMES = {"lat", "latitude", "y", "nav_lat", "rlat"}
_LON_NAMES = {"lon", "longitude", "x", "nav_lon", "rlon"}
_TIME_NAMES = {"time", "t", "date", "year", "years"}
_PLEV_NAMES = {"plev", "level", "lev", "pres", "pressure", "isobaric", "pressure_level"}
_LAT_UNITS = {"degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn"}
_LON_UNITS = {"degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese"}


def axis_of(coord: xr.DataArray, name: str) -> str | None:
    """Return ``"lat"``, ``"lon"``, ``"time"``, ``"plev"`` or ``None`` for a coordinate variable."""
    attrs = coord.attrs
    standard_name = str(attrs.get("standard_name", "")).lower()
    axis = str(attrs.get("axis", "")).upper()
    raw_units = str(attrs.get("units", coord.encoding.get("units", ""))).strip()
    units = raw_units.lower()
    lowered = name.lower()
    if standard_name in ("latitude", "grid_latitude") or units in _LAT_UNITS:
        return "lat"
    if standard_name in ("longitude", "grid_longitude") or units in _LON_UNITS:
        return "lon"
    if standard_name == "time" or axis == "T" or _is_time(coord):
        return "time"
    if standard_name == "air_pressure" or (
        (axis == "Z" or lowered in _PLEV_NAMES) and _is_pressure_unit(raw_units)
    ):
        return "plev"
    if lowered in _LAT_NAMES or axis == "Y":
        return "lat"
    if lowered in _LON_NAMES or axis == "X":
        return "lon"
    if lowered in _TIME_NAMES:
        return "time"
    return None


def _is_time(coord: xr.DataArray) -> bool:
    if np.issubdtype(coord.dtype, np.datetime64):
        return True
    return coord.dtype == object and coord.size > 0 and hasattr(coord.values.flat[0], "calendar")


def _is_pressure_unit(units: str) -> bool:
    from climgrad.data.units import unit_registry

    if not units:
        return False
    try:
        unit = unit_registry().Unit(normalize_unit_string(units))
    except Exception:  # not a unit pint reads: not a pressure
        return False
    return bool(unit.dimensionality == unit_registry().Unit("Pa").dimensionality)


def decimal_years(times: Any) -> np.ndarray[Any, Any]:
    """Convert datetimes (numpy or cftime, any calendar) to decimal years (float64).

    ``year + (t - start of year) / (length of that year in its calendar)``, so 1 July 12:00 of a
    365-day year is ``year + 0.5`` and mid-year is ``year + 0.5`` in every calendar.
    """
    values = np.asarray(times)
    if values.size == 0:
        return np.zeros(values.shape)
    if np.issubdtype(values.dtype, np.datetime64):
        import pandas as pd

        stamps = pd.DatetimeIndex(values.ravel())
        years = stamps.year.to_numpy()
        start = pd.to_datetime({"year": years, "month": 1, "day": 1}).to_numpy()
        end = pd.to_datetime({"year": years + 1, "month": 1, "day": 1}).to_numpy()
        frac = (stamps.to_numpy() - start) / (end - start)
        return (years + frac).reshape(values.shape).astype(np.float64)
    import cftime

    out = np.empty(values.size, dtype=np.float64)
    for i, t in enumerate(values.ravel()):
        start = cftime.datetime(t.year, 1, 1, calendar=t.calendar, has_year_zero=t.has_year_zero)
        end = cftime.datetime(t.year + 1, 1, 1, calendar=t.calendar, has_year_zero=t.has_year_zero)
        out[i] = t.year + (t - start) / (end - start)
    return out.reshape(values.shape)


def month_and_year(times: Any) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Calendar month (1-12) and year of each datetime (numpy or cftime)."""
    values = np.asarray(times).ravel()
    if np.issubdtype(values.dtype, np.datetime64):
        import pandas as pd

        stamps = pd.DatetimeIndex(values)
        return stamps.month.to_numpy(), stamps.year.to_numpy()
    return (
        np.array([t.month for t in values], dtype=np.int64),
        np.array([t.year for t in values], dtype=np.int64),
    )


def infer_bounds(centres: np.ndarray[Any, Any], low: float, high: float) -> np.ndarray[Any, Any]:
    """Cell edges halfway between ascending centres, the outer ones mirrored and clipped.

    Returns ``(n, 2)`` bounds. For a Gaussian or regular latitude grid this reproduces the cells
    to within the grid's irregularity; the clip keeps polar cells inside [-90, 90].
    """
    centres = np.asarray(centres, dtype=np.float64)
    if centres.size == 1:
        return np.array([[low, high]])
    mid = 0.5 * (centres[:-1] + centres[1:])
    first = centres[0] - (mid[0] - centres[0])
    last = centres[-1] + (centres[-1] - mid[-1])
    edges = np.clip(np.concatenate([[first], mid, [last]]), low, high)
    return np.stack([edges[:-1], edges[1:]], axis=-1)


def normalize(
    data: xr.Dataset, variables: list[str], file: str | Path, name: str
) -> tuple[xr.Dataset, dict[str, np.ndarray[Any, Any]]]:
    """Rename axes to canonical names and put them in canonical order and units.

    Args:
        data: dataset holding ``variables`` (lazily loaded; only indexing happens here).
        variables: the variables whose dimensions are normalised.
        file: for error messages.
        name: variable name for error messages.

    Returns:
        The normalised dataset, and bounds ``{"lat": (n, 2)}`` taken from the file's CF
        ``bounds`` variable when it has one (in the new order).
    """
    axes: dict[str, str] = {}
    for dim in sorted({str(d) for v in variables for d in data[v].dims}):
        axis = axis_of(data[dim], dim) if dim in data.coords else None
        if axis is None:
            continue
        if axis in axes.values():
            other = next(d for d, a in axes.items() if a == axis)
            raise ObservationError(
                file,
                name,
                f"dimensions {other!r} and {dim!r} both look like the {axis} axis",
                "drop or rename one of them (e.g. with ncrename) before loading",
            )
        axes[dim] = axis
    renames = {dim: axis for dim, axis in axes.items() if axis != dim}
    lat_dim = next((d for d, a in axes.items() if a == "lat"), None)
    lat_bounds_name = str(data[lat_dim].attrs.get("bounds", "")) if lat_dim else ""
    data = data.rename(renames) if renames else data
    bounds: dict[str, np.ndarray[Any, Any]] = {}

    if "lat" in data.dims and "lat" in data.coords:
        lat = data["lat"].values.astype(np.float64)
        lat_bounds = None
        if lat_bounds_name in data.variables and data[lat_bounds_name].ndim == 2:
            raw_bounds = np.asarray(data[lat_bounds_name].values, dtype=np.float64)
            lat_bounds = np.sort(raw_bounds, axis=-1)
        order = np.argsort(lat, kind="stable")
        data = data.isel(lat=order)
        if lat_bounds is not None:
            bounds["lat"] = lat_bounds[order]
    if "lon" in data.dims and "lon" in data.coords:
        lon = (np.asarray(data["lon"].values, dtype=np.float64) + 180.0) % 360.0 - 180.0
        data = data.assign_coords(lon=("lon", lon))
        data = data.isel(lon=np.argsort(lon, kind="stable"))
    if "time" in data.dims and "time" in data.coords:
        coord = data["time"]
        if _is_time(coord):
            years = decimal_years(coord.values)
        else:
            years = _numeric_years(coord, file, name)
        data = data.assign_coords(time_datetime=("time", coord.values))
        data = data.assign_coords(time=("time", years))
        data = data.isel(time=np.argsort(years, kind="stable"))
    if "plev" in data.dims and "plev" in data.coords:
        units = str(data["plev"].attrs.get("units", ""))
        pa = convert(data["plev"].values, units, "Pa", file, "plev")
        data = data.assign_coords(plev=("plev", pa))
        data = data.isel(plev=np.argsort(pa, kind="stable"))
    return data, bounds


def _numeric_years(coord: xr.DataArray, file: str | Path, name: str) -> np.ndarray[Any, Any]:
    units = str(coord.attrs.get("units", "")).strip().lower()
    if units in ("year", "years", "yr", "a", "") and np.issubdtype(coord.dtype, np.number):
        return np.asarray(coord.values, dtype=np.float64)
    raise ObservationError(
        file,
        name,
        f"its time coordinate has units {units!r} that were not decoded as dates",
        "use CF units such as 'days since 1850-01-01' with a calendar attribute, or 'years'",
    )
