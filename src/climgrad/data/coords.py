"""Find coordinates by their CF attributes, and normalise them.

Axes are recognised by ``standard_name``, ``axis`` and ``units`` first and by name last, so a file
calling latitude ``y`` or pressure ``level`` is read like one that says ``lat`` and ``plev``; a
coordinate stored as a variable of its own along an oddly named dimension (``lat(latitude)`` in
``degrees_north``) is found by its attributes too. After :func:`normalize` every variable has
canonical dimension names (``lat``, ``lon``, ``time``, ``month``, ``plev``), ascending latitude,
longitude in [-180, 180) ascending, sorted time, months 1-12, and pressure in Pa ascending; time
is carried as decimal years (float64) so that model time axes in years compare directly. A time
axis in ``months`` without a reference date (a climatology's month index, which CF decoding
cannot turn into dates) becomes the month-of-year dimension ``month``. Latitudes and longitudes
that cannot be degrees north and east (outside [-90, 90], colatitude, radians, longitudes in no
known convention) are refused rather than silently misread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from climgrad.data.errors import ObservationError
from climgrad.data.units import convert, normalize_unit_string

_LAT_NAMES = {"lat", "latitude", "y", "nav_lat", "rlat"}
_LON_NAMES = {"lon", "longitude", "x", "nav_lon", "rlon"}
_TIME_NAMES = {"time", "t", "date", "year", "years"}
_MONTH_NAMES = {"month", "months", "month_of_year", "mon"}
_PLEV_NAMES = {"plev", "level", "lev", "pres", "pressure", "isobaric", "pressure_level"}
_LAT_UNITS = {"degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn"}
_LON_UNITS = {"degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese"}
_MONTH_UNITS = {"month", "months", "mon"}
_DEGREES = {"degree", "degrees", "deg", "degs"}
_RADIANS = {"radian", "radians", "rad"}


def _units_of(coord: xr.DataArray) -> str:
    return str(coord.attrs.get("units", coord.encoding.get("units", ""))).strip()


def _is_numeric(coord: xr.DataArray) -> bool:
    return bool(np.issubdtype(coord.dtype, np.number))


def _axis_from_attributes(coord: xr.DataArray) -> str | None:
    """The axis a coordinate's CF attributes (standard_name, units, axis) or dtype say it is."""
    attrs = coord.attrs
    standard_name = str(attrs.get("standard_name", "")).lower()
    axis = str(attrs.get("axis", "")).upper()
    raw_units = _units_of(coord)
    units = raw_units.lower()
    if standard_name in ("latitude", "grid_latitude") or units in _LAT_UNITS:
        return "lat"
    if standard_name in ("longitude", "grid_longitude") or units in _LON_UNITS:
        return "lon"
    # A month index (units "months", no reference date) is month of year, not a date.
    if units in _MONTH_UNITS and _is_numeric(coord):
        return "month"
    if standard_name == "time" or axis == "T" or _is_time(coord):
        return "time"
    if standard_name == "air_pressure" or (axis == "Z" and _is_pressure_unit(raw_units)):
        return "plev"
    if axis == "Y":
        return "lat"
    if axis == "X":
        return "lon"
    return None


def axis_of(coord: xr.DataArray, name: str) -> str | None:
    """Return ``"lat"``, ``"lon"``, ``"time"``, ``"month"``, ``"plev"`` or ``None``.

    CF attributes (``standard_name``, ``units``, ``axis``) decide first, the name last: a
    coordinate ``y`` in ``degrees_north`` is latitude, ``level`` in hPa is pressure, and a time
    axis in ``months`` without a reference date (or one called ``month``) is month of year.
    """
    found = _axis_from_attributes(coord)
    if found is not None:
        return found
    lowered = name.lower()
    if lowered in _PLEV_NAMES and _is_pressure_unit(_units_of(coord)):
        return "plev"
    if lowered in _LAT_NAMES:
        return "lat"
    if lowered in _LON_NAMES:
        return "lon"
    if lowered in _MONTH_NAMES and _is_numeric(coord):
        return "month"
    if lowered in _TIME_NAMES:
        return "time"
    return None


def find_axes(data: xr.Dataset, dims: Any, exclude: Any = ()) -> dict[str, tuple[str, str]]:
    """Recognise the axis of each dimension: ``{dim: (axis, coordinate variable)}``.

    A dimension's own coordinate variable counts when its CF attributes say what it is. Otherwise
    a one-dimensional variable along it whose attributes do (``lat(latitude)`` in
    ``degrees_north``, stored as a data variable or a non-index coordinate) is its coordinate.
    Failing both, an own coordinate recognised by its name counts; it also wins over a variable
    that says another axis (``lat(time)`` of a drifting sonde leaves ``time`` the time axis).
    Dimensions along which 1-D variables of several axes lie (a station dimension holding ``lat``
    and ``lon``) and unrecognised ones are left out.

    Args:
        data: the opened file.
        dims: the dimensions to recognise.
        exclude: variables that cannot be coordinates (the observed variable and companions).
    """
    skip = {str(name) for name in exclude}
    found: dict[str, tuple[str, str]] = {}
    for dim in sorted(str(d) for d in dims):
        own = data.variables.get(dim)
        own_coord = xr.DataArray(own) if own is not None and own.dims == (dim,) else None
        if own_coord is not None:
            axis = _axis_from_attributes(own_coord)
            if axis is not None:
                found[dim] = (axis, dim)
                continue
        candidates = [
            (axis, str(name))
            for name, variable in data.variables.items()
            if str(name) != dim and str(name) not in skip and variable.dims == (dim,)
            for axis in [_axis_from_attributes(xr.DataArray(variable))]
            if axis is not None
        ]
        by_name = axis_of(own_coord, dim) if own_coord is not None else None
        if len({axis for axis, _ in candidates}) == 1 and by_name in (None, candidates[0][0]):
            # e.g. an integer index `latitude(latitude)` beside `lat(latitude)` in degrees_north;
            # but a `lat(time)` track does not make `time` a latitude
            found[dim] = candidates[0]
        elif by_name is not None:
            found[dim] = (by_name, dim)
    return found


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


@dataclass
class Normalized:
    """What :func:`normalize` returns.

    Attributes:
        data: the observed variables (and companions) with canonical dimensions and coordinates.
        bounds: ``{"lat": (n, 2)}`` cell edges from the file's CF ``bounds`` variable, if any,
            in the new order.
        sources: for each canonical dimension that the file calls otherwise or whose coordinate
            is another variable, where it came from (``"file dimension 'latitude', coordinate
            'lat'"``), for messages.
        unrecognised: file dimensions of the variable that were not recognised as any axis.
    """

    data: xr.Dataset
    bounds: dict[str, np.ndarray[Any, Any]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    unrecognised: list[str] = field(default_factory=list)


def normalize(data: xr.Dataset, variables: list[str], file: str | Path, name: str) -> Normalized:
    """Select ``variables``, give them canonical dimensions, and put those in canonical order.

    Axes are recognised by :func:`find_axes`; implausible latitude and longitude coordinates
    (outside [-90, 90], colatitude, radians, longitude in no known convention) are refused.

    Args:
        data: the opened file (lazily loaded; only indexing happens here).
        variables: the variables to keep and normalise (observed variable, then companions).
        file: for error messages.
        name: variable name for error messages.

    Raises:
        ObservationError: two dimensions look like the same axis, or a coordinate is
            implausible.
    """
    dims = {str(d) for v in variables for d in data[v].dims}
    found = find_axes(data, dims, exclude=variables)
    axes = {dim: axis for dim, (axis, _) in found.items()}
    for dim, axis in sorted(axes.items()):
        others = [d for d, a in axes.items() if a == axis and d != dim]
        if others:
            raise ObservationError(
                file,
                name,
                f"dimensions {min(dim, others[0])!r} and {max(dim, others[0])!r} both look like "
                f"the {axis} axis",
                "drop or rename one of them (e.g. with ncrename) before loading",
            )
    subset = data[variables].reset_coords(drop=True)
    sources: dict[str, str] = {}
    shown: dict[str, str] = {}  # how coordinate checks name each axis's coordinate
    for dim, (axis, coordinate) in found.items():
        shown[axis] = repr(coordinate) + ("" if coordinate == dim else f" (along {dim!r})")
        if coordinate != dim:
            variable = data.variables[coordinate]
            subset = subset.assign_coords(
                {dim: xr.Variable((dim,), variable.values, dict(variable.attrs))}
            )
        if dim != axis or coordinate != dim:
            sources[axis] = f"file dimension {dim!r}" + (
                f", coordinate {coordinate!r}" if coordinate != dim else ""
            )
    renames = {dim: axis for dim, axis in axes.items() if axis != dim}
    lat_dim = next((d for d, a in axes.items() if a == "lat"), None)
    lat_coordinate = found[lat_dim][1] if lat_dim else None
    subset = subset.rename(renames) if renames else subset
    bounds: dict[str, np.ndarray[Any, Any]] = {}

    if "lat" in subset.dims and "lat" in subset.coords:
        where = shown.get("lat", "'lat'")
        lat = np.asarray(subset["lat"].values, dtype=np.float64)
        check_latitude(lat, _units_of(subset["lat"]), where, file, name)
        lat_bounds = _file_lat_bounds(data, lat_coordinate, lat, where, file, name)
        order = np.argsort(lat, kind="stable")
        subset = subset.isel(lat=order)
        if lat_bounds is not None:
            bounds["lat"] = lat_bounds[order]
    if "lon" in subset.dims and "lon" in subset.coords:
        raw_lon = np.asarray(subset["lon"].values, dtype=np.float64)
        check_longitude(raw_lon, _units_of(subset["lon"]), shown.get("lon", "'lon'"), file, name)
        lon = (raw_lon + 180.0) % 360.0 - 180.0
        subset = subset.assign_coords(lon=("lon", lon))
        subset = subset.isel(lon=np.argsort(lon, kind="stable"))
    if "time" in subset.dims and "time" in subset.coords:
        coord = subset["time"]
        if _is_time(coord):
            years = decimal_years(coord.values)
        else:
            years = _numeric_years(coord, file, name)
        subset = subset.assign_coords(time_datetime=("time", coord.values))
        subset = subset.assign_coords(time=("time", years))
        subset = subset.isel(time=np.argsort(years, kind="stable"))
    if "month" in subset.dims and "month" in subset.coords:
        months = _month_numbers(subset["month"], sources.get("month", "'month'"), file, name)
        subset = subset.assign_coords(month=("month", months))
        subset = subset.isel(month=np.argsort(months, kind="stable"))
    if "plev" in subset.dims and "plev" in subset.coords:
        units = _units_of(subset["plev"])
        pa = convert(subset["plev"].values, units, "Pa", file, "plev")
        subset = subset.assign_coords(plev=("plev", pa))
        subset = subset.isel(plev=np.argsort(pa, kind="stable"))
    unrecognised = sorted(d for d in dims if d not in axes)
    return Normalized(subset, bounds, sources, unrecognised)


def check_latitude(
    values: np.ndarray[Any, Any], units: str, where: str, file: str | Path, name: str
) -> None:
    """Refuse latitudes that are not degrees north in [-90, 90].

    Colatitude (0 at the North Pole to 180), radians (units ``radians``, or values within
    +-pi/2 spanning more than one unit with units that are not degrees) and values outside
    [-90, 90] (a scaled or mislabelled coordinate) all raise.

    Args:
        values: the coordinate's values.
        units: its ``units`` attribute (may be empty).
        where: how messages name the coordinate, e.g. ``"'lat'"``.
        file: for messages.
        name: the observed variable, for messages.
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return
    low, high = float(finite.min()), float(finite.max())
    lowered = units.lower()
    degrees = lowered in _LAT_UNITS or lowered in _DEGREES
    tolerance = 1e-6
    if lowered in _RADIANS or (
        not degrees and max(abs(low), abs(high)) <= np.pi / 2 + tolerance and high - low >= 1.0
    ):
        raise ObservationError(
            file,
            name,
            f"its latitude coordinate {where} runs from {low:.4g} to {high:.4g} with units "
            f"{units!r}: latitude in radians, which the loader would read as degrees",
            "convert it to degrees (lat = numpy.rad2deg(lat)) and set its units attribute to "
            "'degrees_north'",
        )
    if low >= -tolerance and high > 90.0 + tolerance and high <= 180.0 + tolerance:
        raise ObservationError(
            file,
            name,
            f"its latitude coordinate {where} runs from {low:.4g} to {high:.4g}: colatitude "
            "(0 at the North Pole, 180 at the South Pole), not latitude in [-90, 90]",
            "convert it to latitude, lat = 90 - colatitude (and its bounds), e.g. with "
            "`ncap2 -s 'lat=90-lat' FILE OUT`",
        )
    if low < -90.0 - tolerance or high > 90.0 + tolerance:
        raise ObservationError(
            file,
            name,
            f"its latitude coordinate {where} spans {low:.4g} to {high:.4g}, outside [-90, 90] "
            "degrees north: it is scaled or is not a latitude",
            "correct the coordinate to degrees north in [-90, 90]; if it is not latitude, give "
            "it a standard_name and units that say what it is",
        )


def check_longitude(
    values: np.ndarray[Any, Any], units: str, where: str, file: str | Path, name: str
) -> None:
    """Refuse longitudes in radians or in neither [-180, 180] nor [0, 360] degrees east."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return
    low, high = float(finite.min()), float(finite.max())
    if units.lower() in _RADIANS:
        raise ObservationError(
            file,
            name,
            f"its longitude coordinate {where} has units {units!r}: longitude in radians",
            "convert it to degrees (lon = numpy.rad2deg(lon)) and set its units attribute to "
            "'degrees_east'",
        )
    tolerance = 1e-6
    east_west = low >= -180.0 - tolerance and high <= 180.0 + tolerance
    all_east = low >= -tolerance and high <= 360.0 + tolerance
    if not (east_west or all_east):
        raise ObservationError(
            file,
            name,
            f"its longitude coordinate {where} spans {low:.4g} to {high:.4g}, which fits neither "
            "[-180, 180] nor [0, 360] degrees east: it is shifted, scaled or not a longitude",
            "correct the coordinate to degrees east in [-180, 180] or [0, 360]",
        )


def _file_lat_bounds(
    data: xr.Dataset,
    coordinate: str | None,
    lat: np.ndarray[Any, Any],
    where: str,
    file: str | Path,
    name: str,
) -> np.ndarray[Any, Any] | None:
    """The CF ``bounds`` of the latitude coordinate, checked against it, or ``None``."""
    if coordinate is None:
        return None
    bounds_name = str(data[coordinate].attrs.get("bounds", ""))
    if bounds_name not in data.variables or data[bounds_name].ndim != 2:
        return None
    raw = np.sort(np.asarray(data[bounds_name].values, dtype=np.float64), axis=-1)
    if raw.shape != (lat.size, 2):
        return None
    tolerance = 1e-3
    inside = (raw[:, 0] <= lat + tolerance) & (lat - tolerance <= raw[:, 1])
    if np.nanmin(raw) < -90.0 - tolerance or np.nanmax(raw) > 90.0 + tolerance or not inside.all():
        raise ObservationError(
            file,
            name,
            f"the latitude bounds {bounds_name!r} of {where} span {np.nanmin(raw):.4g} to "
            f"{np.nanmax(raw):.4g} or do not contain their cell centres",
            f"correct {bounds_name!r} to the cell edges in degrees north within [-90, 90], or "
            f"delete the coordinate's bounds attribute to have edges inferred from the centres",
        )
    return np.clip(raw, -90.0, 90.0)


def _month_numbers(
    coord: xr.DataArray, where: str, file: str | Path, name: str
) -> np.ndarray[Any, Any]:
    """Month-of-year numbers 1-12 of a month-index axis, as float64."""
    values = np.asarray(coord.values, dtype=np.float64)
    ok = (
        np.isfinite(values).all()
        and np.all(values == np.round(values))
        and values.min() >= 1
        and values.max() <= 12
        and np.unique(values).size == values.size
    )
    if not ok:
        shown = ", ".join(f"{v:g}" for v in values[:13])
        raise ObservationError(
            file,
            name,
            f"its time axis {where} is a month index (units {_units_of(coord)!r}, no reference "
            f"date) but holds [{shown}], not distinct month numbers 1-12",
            "number the months 1 (January) to 12, or give the time axis CF units with a "
            "reference date such as 'days since 2000-01-01'",
        )
    return values


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
