"""From NetCDF files and :class:`ObservationSpec` s to an :class:`ObsSet`.

The pipeline for one spec: open lazily (only the selection is read), find the variable and its
companions (error, confidence bounds, quality flag), mask fill values / out-of-range values / bad
flags as NaN, convert units to the model's SI units, normalise coordinates (see
:mod:`climgrad.data.coords`), select the time and latitude windows, apply the operator chain, put
the result on the model grid (see :mod:`climgrad.data.regrid`), and finally build weights and the
mask and move everything to tensors on the target device.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
import xarray as xr

from climgrad.data import regrid
from climgrad.data.coords import infer_bounds, month_and_year, normalize
from climgrad.data.errors import NoOverlapError, ObservationError
from climgrad.data.obsset import ObservedVariable, ObsSet
from climgrad.data.plausibility import check_plausible
from climgrad.data.spec import ModelGrid, ObservationSpec
from climgrad.data.units import canonical_units, convert, parse_units

Array = np.ndarray[Any, Any]
_HAVE_DASK = importlib.util.find_spec("dask") is not None
_PASSTHROUGH_DIMS = ("time", "month", "season", "plev", "lat")
_TIME_OPERATORS = ("time_mean", "annual_mean", "monthly_climatology", "seasonal_climatology")


def open_dataset(path: str | Path, variable: str | None = None) -> xr.Dataset:
    """Open a NetCDF file lazily with CF decoding (packing, fill values, any calendar).

    With dask installed the file is opened in chunks; without it xarray's lazy backend indexing
    still reads only what is selected. Times always decode to cftime objects so that
    non-standard calendars (``noleap``, ``360_day``) and year-1 climatologies work alike.

    Raises:
        ObservationError: the file is missing, is not NetCDF, or is truncated.
    """
    path = Path(path)
    if not path.exists():
        nearby = (
            sorted(p.name for p in path.parent.glob("*.nc*"))[:5] if path.parent.is_dir() else []
        )
        hint = f"; NetCDF files in {path.parent}: {nearby}" if nearby else ""
        raise ObservationError(
            path,
            variable,
            "the file does not exist",
            "check the path (relative paths in a spec file are taken from the spec file's folder, "
            "others from `root`); climgrad-calibrate finds data under paths.data_dir "
            f"(paths.data_dir=/my/data){hint}",
        )
    if path.is_dir():
        raise ObservationError(path, variable, "this is a directory", "name one NetCDF file")
    try:
        return xr.open_dataset(
            path,
            engine="netcdf4",
            decode_times=xr.coders.CFDatetimeCoder(use_cftime=True),
            decode_timedelta=False,
            chunks={} if _HAVE_DASK else None,
        )
    except Exception as err:  # netCDF4/HDF5 raise OSError, ValueError, RuntimeError...
        raise _unreadable(path, variable, err) from None


def _unreadable(path: str | Path, variable: str | None, err: Exception) -> ObservationError:
    detail = " ".join(str(err).split())[:120]
    return ObservationError(
        path,
        variable,
        f"the file is not readable NetCDF or is truncated ({type(err).__name__}: {detail})",
        "check it with `ncdump -h FILE`; download or copy it again if it is cut short",
    )


@dataclass
class _Field:
    """A variable and its error on the way through the pipeline (float64, SI, canonical dims)."""

    values: xr.DataArray
    error: xr.DataArray
    lat_bounds: Array | None = None
    notes: list[str] = field(default_factory=list)
    #: where canonical dimensions came from, when the file names them otherwise (for messages)
    sources: dict[str, str] = field(default_factory=dict)
    #: file dimensions recognised as no axis (for messages)
    unrecognised: list[str] = field(default_factory=list)

    def describe_dims(self) -> str:
        """The dimensions as the messages show them: ``(time, lat [file dimension 'y'])``."""
        shown = [
            f"{dim} [{self.sources[dim]}]" if dim in self.sources else str(dim)
            for dim in map(str, self.values.dims)
        ]
        return f"({', '.join(shown)})"


def load_observation(
    spec: ObservationSpec,
    grid: ModelGrid,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    root: str | Path | None = None,
) -> ObservedVariable:
    """Load one observed variable onto the model grid; see :func:`load_observations`."""
    paths = spec.paths(root)
    if not paths:
        raise ObservationError(None, spec.variable, "the spec names no file", "set `path`")
    pieces: list[_Field] = []
    misses: list[NoOverlapError] = []
    for path in paths:
        try:
            pieces.append(_read_one(path, spec))
        except NoOverlapError as miss:
            if len(paths) == 1:
                raise
            misses.append(miss)  # a file outside the window is skipped when joining files
    if not pieces:
        raise misses[0]
    fld = pieces[0] if len(pieces) == 1 else _concatenate(pieces, spec, paths[0])
    file = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} files)"
    _require_valid(fld, spec, file, "after masking fill values and flags")
    for step in spec.operators():
        fld = _apply_operator(step, fld, spec, grid, file)
    fld = _to_grid(fld, spec, grid, file)
    _require_valid(fld, spec, file, f"after the operator {spec.operator!r} and regridding")
    return _to_tensors(fld, spec, file, device, dtype, paths)


def load_observations(
    specs: Sequence[ObservationSpec],
    grid: ModelGrid,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    root: str | Path | None = None,
) -> ObsSet:
    """Load observations onto a model grid as tensors, once.

    Args:
        specs: one :class:`ObservationSpec` per observed variable (names must be unique).
        grid: the model grid (latitude bands, pressure levels in Pa, years, sites).
        device: target device of every tensor (e.g. ``"cuda"``).
        dtype: floating dtype of values, weights and errors (coordinates stay float64).
        root: directory that relative paths of specs built in Python or given inline are taken
            from (default: the working directory). Specs read by
            :func:`~climgrad.data.read_spec_file` hold absolute paths (relative ones are taken
            from the spec file's folder), which ``root`` does not change.

    Returns:
        An :class:`ObsSet` keyed by ``spec.name``.

    Raises:
        ObservationError: one line naming the file, the variable and the fix.

    Example:
        >>> from climgrad.data import ModelGrid, ObservationSpec, load_observations
        >>> spec = ObservationSpec(name="olr", variable="ulwrf", units="W m-2",
        ...     path="data/ebm_1d/ncep_r1_ltm_1991-2020/ulwrf.ntat.mon.ltm.1991-2020.nc",
        ...     model_output="outgoing_longwave_radiation", operator="time_mean+zonal_mean",
        ...     error=5.0)
        >>> obs = load_observations([spec], ModelGrid.latitude_bands(90))  # doctest: +SKIP
        >>> obs["olr"].values.shape  # doctest: +SKIP
        torch.Size([90])
    """
    names = [spec.name for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ObservationError(
            None,
            duplicates[0],
            f"observation name {duplicates[0]!r} is used more than once",
            "give every observation spec a unique `name`",
        )
    return ObsSet({spec.name: load_observation(spec, grid, device, dtype, root) for spec in specs})


# --------------------------------------------------------------------------------------------
# reading


def _read_one(path: Path, spec: ObservationSpec) -> _Field:
    data = open_dataset(path, spec.variable)
    try:
        return _read_opened(data, path, spec)
    except ObservationError:
        raise
    except (OSError, RuntimeError) as err:  # a truncated file fails only when data are read
        raise _unreadable(path, spec.variable, err) from None
    finally:
        data.close()


def _read_opened(data: xr.Dataset, path: Path, spec: ObservationSpec) -> _Field:
    companions = list(spec.error_bounds or [])
    if spec.error_bounds is not None and len(companions) != 2:
        raise ObservationError(
            path,
            spec.variable,
            f"error_bounds must name two variables [lower, upper]; got {companions}",
            "give e.g. error_bounds: [tas_lower, tas_upper]",
        )
    if spec.error_variable:
        companions.append(spec.error_variable)
    if spec.quality_variable:
        companions.append(spec.quality_variable)
    for name in [spec.variable, *companions]:
        if name not in data.variables:
            available = sorted(str(v) for v in data.data_vars)
            shown = ", ".join(available[:25]) + (" ..." if len(available) > 25 else "")
            raise ObservationError(
                path,
                name,
                "no such variable in the file",
                f"use one of the variables that are there: {shown}",
            )
    main = data[spec.variable]
    for name in companions:
        if data[name].dims != main.dims:
            raise ObservationError(
                path,
                name,
                f"its dimensions {data[name].dims} do not match those of "
                f"{spec.variable!r} {main.dims}",
                "give companion variables (error, bounds, quality flag) on the same dimensions",
            )
    normalized = normalize(data, [spec.variable, *companions], path, spec.variable)
    subset, lat_index = _select_windows(normalized.data, spec, path, normalized.sources)

    units = spec.file_units or str(main.attrs.get("units", ""))
    if not units.strip():
        raise ObservationError(
            path,
            spec.variable,
            "it has no units attribute",
            f"add one (e.g. `ncatted -a units,{spec.variable},o,c,'K' FILE`) or set `file_units` "
            "in the spec",
        )
    parse_units(units, path, spec.variable)

    values = _masked(subset[spec.variable], spec.variable, path)
    if spec.quality_variable:
        flag = np.asarray(subset[spec.quality_variable].values, dtype=np.float64)
        values = values.where(np.isfinite(flag) & (flag <= spec.quality_max))
    raw = np.asarray(values.values, dtype=np.float64)
    converted = convert(raw, units, spec.units, path, spec.variable, spec.difference)
    check_plausible(converted, raw, spec, units, dict(main.attrs), path)
    values = values.copy(data=converted)
    error = _error(subset, spec, units, path, values)
    notes = [f"{path.name}:{spec.variable} [{units}] -> [{canonical_units(spec.units)}]"]
    lat_bounds = normalized.bounds.get("lat")
    if lat_bounds is not None and "lat" in values.dims:
        lat_bounds = lat_bounds[lat_index]
    return _Field(
        values=values,
        error=error,
        lat_bounds=lat_bounds,
        notes=notes,
        sources=normalized.sources,
        unrecognised=normalized.unrecognised,
    )


def _masked(data: xr.DataArray, name: str, path: Path) -> xr.DataArray:
    """Float64 values with fill values (already NaN), out-of-range and non-finite values as NaN."""
    values = np.asarray(data.values, dtype=np.float64)
    attrs = data.attrs
    packed = "scale_factor" in data.encoding or "add_offset" in data.encoding
    valid = np.isfinite(values)
    if not packed:  # valid_* of packed data are in packed units; CF decoding has masked those
        low = attrs.get("valid_min")
        high = attrs.get("valid_max")
        if "valid_range" in attrs:
            low, high = np.asarray(attrs["valid_range"]).ravel()[:2]
        if low is not None:
            valid &= values >= float(np.asarray(low).ravel()[0])
        if high is not None:
            valid &= values <= float(np.asarray(high).ravel()[0])
    return data.copy(data=np.where(valid, values, np.nan))


def _error(
    subset: xr.Dataset, spec: ObservationSpec, units: str, path: Path, values: xr.DataArray
) -> xr.DataArray:
    given = [
        label
        for label, present in (
            ("error", spec.error is not None),
            ("error_variable", bool(spec.error_variable)),
            ("error_bounds", bool(spec.error_bounds)),
        )
        if present
    ]
    if len(given) != 1:
        problem = (
            "no observation error is given"
            if not given
            else f"more than one observation error is given ({', '.join(given)})"
        )
        raise ObservationError(
            path,
            spec.variable,
            problem,
            f"give exactly one of `error` (1 sigma, in {spec.units}), `error_variable` or "
            "`error_bounds`",
        )
    if spec.error is not None:
        if not spec.error > 0:
            raise ObservationError(
                path,
                spec.variable,
                f"error must be positive; got {spec.error}",
                "use a 1-sigma > 0",
            )
        return xr.full_like(values, float(spec.error))
    if spec.error_variable:
        raw = subset[spec.error_variable]
        error_units = spec.file_units or str(raw.attrs.get("units", units))
        sigma = _masked(raw, spec.error_variable, path)
        # Errors are differences: 1 degC of error is 1 K.
        converted = convert(sigma.values, error_units, spec.units, path, spec.error_variable, True)
        return values.copy(data=np.where(converted > 0, converted, np.nan))
    lower_name, upper_name = list(spec.error_bounds or [])
    lower = _masked(subset[lower_name], lower_name, path)
    upper = _masked(subset[upper_name], upper_name, path)
    low = convert(lower.values, units, spec.units, path, lower_name, spec.difference)
    high = convert(upper.values, units, spec.units, path, upper_name, spec.difference)
    coverage = spec.error_bounds_coverage
    if not 0.0 < coverage < 1.0:
        raise ObservationError(
            path,
            spec.variable,
            f"error_bounds_coverage must lie in (0, 1); got {coverage}",
            "use 0.95 for 2.5-97.5 % limits or 0.90 for 5-95 %",
        )
    z = NormalDist().inv_cdf(0.5 + coverage / 2.0)
    sigma = (high - low) / (2.0 * z)
    return values.copy(data=np.where(sigma > 0, sigma, np.nan))


def _parse_time_bound(value: Any, is_end: bool, path: Path, name: str) -> tuple[float, bool]:
    """Decimal year of a window bound, and whether the bound is inclusive.

    An integer year as the end means the whole of that year (``[1991, 2020]`` is 30 years).
    """
    from climgrad.data.coords import decimal_years

    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        if is_end and number == int(number):
            return number + 1.0, False
        return number, True
    try:
        stamp = np.datetime64(text)
    except ValueError:
        raise ObservationError(
            path,
            name,
            f"time bound {value!r} is neither a year nor an ISO date",
            "write years (1991) or dates ('1991-01-01')",
        ) from None
    return float(decimal_years(np.array([stamp]).astype("datetime64[ns]"))[0]), True


def _select_windows(
    subset: xr.Dataset, spec: ObservationSpec, path: Path, sources: dict[str, str]
) -> tuple[xr.Dataset, Array | slice]:
    """Select the spec's time and latitude windows; also return the latitude index kept."""
    lat_index: Array | slice = slice(None)
    if spec.time is not None:
        if len(spec.time) != 2:
            raise ObservationError(
                path,
                spec.variable,
                f"time window {spec.time} is not [start, end]",
                "give two bounds",
            )
        if "time" not in subset.dims and "month" in subset.dims:
            raise ObservationError(
                path,
                spec.variable,
                f"a time window is given but its time axis [{sources.get('month', 'month')}] "
                "is a month of year (a climatology without years)",
                "remove `time` from the spec; the months are all there is",
            )
        if "time" not in subset.dims:
            raise ObservationError(
                path,
                spec.variable,
                "a time window is given but the variable has no time dimension",
                "remove `time` from the spec",
            )
        start, _ = _parse_time_bound(spec.time[0], False, path, spec.variable)
        end, inclusive = _parse_time_bound(spec.time[1], True, path, spec.variable)
        years = subset["time"].values
        keep = (years >= start) & ((years <= end) if inclusive else (years < end))
        if not keep.any():
            raise NoOverlapError(
                path,
                spec.variable,
                f"the requested time window {spec.time[0]} to {spec.time[1]} does not overlap the "
                f"data, which span decimal years {years.min():.3f} to {years.max():.3f}",
                "choose a time window inside the data's range",
            )
        subset = subset.isel(time=np.nonzero(keep)[0])
    if spec.lat is not None:
        if len(spec.lat) != 2:
            raise ObservationError(
                path, spec.variable, f"lat window {spec.lat} is not [south, north]", "give two"
            )
        if "lat" not in subset.dims:
            raise ObservationError(
                path,
                spec.variable,
                "a latitude window is given but the variable has no latitude dimension",
                "remove `lat` from the spec",
            )
        south, north = sorted(float(x) for x in spec.lat)
        lat = subset["lat"].values
        keep = (lat >= south) & (lat <= north)
        if not keep.any():
            raise NoOverlapError(
                path,
                spec.variable,
                f"the requested latitudes {south} to {north} do not overlap the data, which span "
                f"{lat.min():.3f} to {lat.max():.3f} degrees north",
                "choose a latitude window inside the data's range",
            )
        lat_index = np.nonzero(keep)[0]
        subset = subset.isel(lat=lat_index)
    return subset, lat_index


def _concatenate(pieces: list[_Field], spec: ObservationSpec, path: Path) -> _Field:
    if any("time" not in p.values.dims for p in pieces):
        raise ObservationError(
            path,
            spec.variable,
            "several files are given but the variable has no time dimension to join them along",
            "give one file, or files that each hold part of a time series",
        )
    try:
        values = xr.concat([p.values for p in pieces], dim="time", join="exact")
        error = xr.concat([p.error for p in pieces], dim="time", join="exact")
    except ValueError as err:
        raise ObservationError(
            path,
            spec.variable,
            f"the files do not share coordinates other than time ({str(err)[:80]})",
            "join files that hold the same grid",
        ) from None
    order = np.argsort(values["time"].values, kind="stable")
    first = pieces[0]
    return _Field(
        values.isel(time=order),
        error.isel(time=order),
        first.lat_bounds,
        first.notes,
        first.sources,
        first.unrecognised,
    )


def _require_valid(fld: _Field, spec: ObservationSpec, file: Any, when: str) -> None:
    valid = np.isfinite(fld.values.values) & np.isfinite(fld.error.values)
    if not valid.any():
        window = []
        if spec.time is not None:
            window.append(f"time {spec.time[0]} to {spec.time[1]}")
        if spec.lat is not None:
            window.append(f"lat {spec.lat[0]} to {spec.lat[1]}")
        where = f" in the selection ({', '.join(window)})" if window else ""
        raise ObservationError(
            file,
            spec.variable,
            f"no valid values remain{where} {when}: all are NaN, fill values, flagged or lack "
            "an error",
            "widen the time or latitude window, relax `quality_max` or `min_coverage`, or check "
            "the file's _FillValue",
        )


# --------------------------------------------------------------------------------------------
# operators


def _mean_over(
    data: xr.DataArray, dims: Sequence[str], weights: xr.DataArray | None, min_coverage: float
) -> xr.DataArray:
    """Weighted mean over ``dims`` of the valid entries; NaN where coverage < ``min_coverage``."""
    valid = data.notnull()
    w = xr.ones_like(data) if weights is None else weights.broadcast_like(data)
    covered = (w * valid).sum(dims)
    total = w.sum(dims)
    mean = (data.fillna(0.0) * w).sum(dims) / covered.where(covered > 0)
    return mean.where(covered >= min_coverage * total * (1.0 - 1e-9))


def _lat_bounds(fld: _Field) -> Array:
    lat = fld.values["lat"].values
    if fld.lat_bounds is not None and len(fld.lat_bounds) == len(lat):
        return np.asarray(fld.lat_bounds)
    return infer_bounds(lat, -90.0, 90.0)


def _need(fld: _Field, dims: Sequence[str], step: str, spec: ObservationSpec, file: Any) -> None:
    missing = [d for d in dims if d not in fld.values.dims]
    if missing:
        raise ObservationError(
            file,
            spec.variable,
            f"operator {step!r} needs dimension(s) {missing} but the variable has "
            f"{fld.describe_dims()}{_unrecognised_note(fld)}",
            _recognition_fix(fld, missing)
            or "drop that operator or load a variable that has those dimensions",
        )


def _unrecognised_note(fld: _Field) -> str:
    if not fld.unrecognised:
        return ""
    return f"; file dimension(s) {fld.unrecognised} were recognised as no axis"


_AXIS_ATTRIBUTES = {
    "lat": "units 'degrees_north' or standard_name 'latitude'",
    "lon": "units 'degrees_east' or standard_name 'longitude'",
    "time": "standard_name 'time' and CF units such as 'days since 2000-01-01'",
    "plev": "standard_name 'air_pressure' and pressure units",
}


def _recognition_fix(fld: _Field, missing: Sequence[str]) -> str:
    """When an unrecognised file dimension may be the missing axis, say how to mark it."""
    wanted = [_AXIS_ATTRIBUTES[d] for d in missing if d in _AXIS_ATTRIBUTES]
    if not fld.unrecognised or not wanted:
        return ""
    return (
        f"if {fld.unrecognised[0]!r} is that axis, give its coordinate variable CF attributes "
        f"({wanted[0]}); otherwise drop the operator"
    )


def _time_dim(fld: _Field, step: str, spec: ObservationSpec, file: Any) -> str:
    """The dimension a time operator reduces: ``time``, or ``month`` for a month index."""
    if "time" in fld.values.dims:
        return "time"
    if "month" in fld.values.dims:
        return "month"
    raise ObservationError(
        file,
        spec.variable,
        f"operator {step!r} needs a time axis (dates or month of year) but the variable has "
        f"{fld.describe_dims()}{_unrecognised_note(fld)}",
        _recognition_fix(fld, ["time"])
        or "drop that operator or load a variable that has a time dimension",
    )


def _apply_operator(
    step: str, fld: _Field, spec: ObservationSpec, grid: ModelGrid, file: Any
) -> _Field:
    cov = spec.min_coverage
    values, error = fld.values, fld.error

    def both(fn: Any) -> tuple[xr.DataArray, xr.DataArray]:
        # Errors are averaged like the values (fully correlated errors: a conservative choice).
        out_values = fn(values)
        out_error = fn(error.where(values.notnull()))
        return out_values, out_error

    if step == "identity":
        return fld
    time_dim = _time_dim(fld, step, spec, file) if step in _TIME_OPERATORS else "time"
    if step == "time_mean":
        v, e = both(
            lambda x: _mean_over(
                x.drop_vars("time_datetime", errors="ignore"), [time_dim], None, cov
            )
        )
    elif step in ("annual_mean", "monthly_climatology", "seasonal_climatology"):
        if time_dim == "month":
            if step == "annual_mean":
                raise ObservationError(
                    file,
                    spec.variable,
                    "operator 'annual_mean' needs years but the time axis "
                    f"[{fld.sources.get('month', 'month')}] is a month of year (a climatology)",
                    "use 'time_mean' for the annual mean of the climatology, or "
                    "'monthly_climatology' / 'seasonal_climatology'",
                )
            month = np.asarray(values["month"].values, dtype=np.int64)
            year = np.zeros_like(month)
        else:
            dates = values["time_datetime"].values if "time_datetime" in values.coords else None
            if dates is None:
                raise ObservationError(
                    file,
                    spec.variable,
                    f"operator {step!r} needs calendar dates but the time axis is numeric years",
                    "store time with CF units such as 'days since 1850-01-01'",
                )
            month, year = month_and_year(dates)
        if step == "annual_mean":
            key, new_dim, labels = year, "time", np.unique(year)
            coord = labels.astype(np.float64) + 0.5
        elif step == "monthly_climatology":
            key, new_dim, labels = month, "month", np.arange(1, 13)
            coord = labels.astype(np.float64)
        else:
            key, new_dim = (month % 12) // 3, "season"
            labels = np.arange(4)
            coord = labels.astype(np.float64)

        def group(x: xr.DataArray) -> xr.DataArray:
            x = x.drop_vars("time_datetime", errors="ignore")
            parts = [
                _mean_over(
                    x.isel({time_dim: np.nonzero(key == label)[0]}), [time_dim], None, cov
                ).drop_vars(time_dim, errors="ignore")
                for label in labels
            ]
            stacked = xr.concat(parts, dim=new_dim)
            return stacked.assign_coords({new_dim: (new_dim, coord)})

        v, e = both(group)
    elif step == "zonal_mean":
        _need(fld, ["lon"], step, spec, file)
        v, e = both(lambda x: _mean_over(x, ["lon"], None, cov))
    elif step == "global_mean":
        _need(fld, ["lat"], step, spec, file)
        area = xr.DataArray(regrid.band_areas(_lat_bounds(fld)), dims=("lat",))
        dims = ["lat", "lon"] if "lon" in values.dims else ["lat"]
        v, e = both(lambda x: _mean_over(x, dims, area, cov))
    elif step == "site":
        v, e = _site(fld, spec, grid, file)
    else:  # pragma: no cover - spec.operators() validated the names
        raise AssertionError(step)
    return _Field(
        v,
        e,
        fld.lat_bounds if "lat" in v.dims else None,
        [*fld.notes, step],
        fld.sources,
        fld.unrecognised,
    )


def _site(
    fld: _Field, spec: ObservationSpec, grid: ModelGrid, file: Any
) -> tuple[xr.DataArray, xr.DataArray]:
    if not spec.site or spec.site not in grid.sites:
        raise ObservationError(
            file,
            spec.variable,
            f"operator 'site' needs `site` naming one of the grid's sites {sorted(grid.sites)}; "
            f"got {spec.site!r}",
            "add the site to grid.sites as {name: [lat, lon]} and set `site: name`",
        )
    site_lat, site_lon = (float(x) for x in grid.sites[spec.site])
    site_lon = (site_lon + 180.0) % 360.0 - 180.0
    values, error = fld.values, fld.error
    if "lat" in values.dims:
        index = int(np.argmin(np.abs(values["lat"].values - site_lat)))
        values, error = values.isel(lat=index), error.isel(lat=index)
    if "lon" in values.dims:
        distance = np.abs((values["lon"].values - site_lon + 180.0) % 360.0 - 180.0)
        index = int(np.argmin(distance))
        values, error = values.isel(lon=index), error.isel(lon=index)
    return values, error


# --------------------------------------------------------------------------------------------
# onto the model grid


def _to_grid(fld: _Field, spec: ObservationSpec, grid: ModelGrid, file: Any) -> _Field:
    values, error = fld.values.drop_vars("time_datetime", errors="ignore"), fld.error
    error = error.drop_vars("time_datetime", errors="ignore")
    unexpected = [str(d) for d in values.dims if d not in _PASSTHROUGH_DIMS]
    if unexpected:
        fix = (
            "add 'zonal_mean', 'global_mean' or 'site' to the operator"
            if "lon" in unexpected
            else "reduce or select that dimension before loading (models have lat, plev, time)"
        )
        unknown = [d for d in unexpected if d in fld.unrecognised]
        if unknown:
            fix = (
                f"if {unknown[0]!r} is an axis, give its coordinate variable CF attributes (e.g. "
                "units 'degrees_east' or 'degrees_north', or standard_name 'time' or "
                f"'air_pressure'); otherwise {fix}"
            )
        raise ObservationError(
            file,
            spec.variable,
            f"after the operator {spec.operator!r} it has dimensions {fld.describe_dims()}, and "
            f"{unexpected} match no model-grid dimension",
            fix,
        )
    notes = list(fld.notes)
    lat_bounds = fld.lat_bounds
    edges = grid.latitude_edges()
    if "lat" in values.dims and edges is not None:
        source_bounds = _lat_bounds(fld)
        method = spec.regrid
        if method not in ("auto", "conservative", "linear"):
            raise ObservationError(
                file,
                spec.variable,
                f"regrid {method!r} is unknown",
                "use 'auto', 'conservative' or 'linear'",
            )
        if method == "auto":
            # Cells with bounds from the file are exact: averaging over them is conservative in
            # both directions (a finer band takes the value of the cell covering it, polar bands
            # included). Edges inferred halfway between centres are a guess, so bands finer than
            # the cells are interpolated between centres instead.
            band_width = float(np.median(np.diff(edges)))
            cell_width = float(np.median(source_bounds[:, 1] - source_bounds[:, 0]))
            from_file = fld.lat_bounds is not None and len(fld.lat_bounds) == values.sizes["lat"]
            coarser = band_width >= cell_width * (1.0 - 1e-6)
            method = "conservative" if from_file or coarser else "linear"
        centres = 0.5 * (edges[:-1] + edges[1:])
        if method == "conservative":

            def fn(x: Array) -> Array:
                return regrid.conservative_average(x, source_bounds, edges, spec.min_coverage)

        else:
            source_lat = values["lat"].values

            def fn(x: Array) -> Array:
                return regrid.interpolate_linear(x, source_lat, centres)

        values = _along(values, "lat", centres, fn)
        error = _along(error.where(fld.values.notnull()), "lat", centres, fn)
        lat_bounds = np.stack([edges[:-1], edges[1:]], axis=-1)
        notes.append(f"lat:{method}")
    elif "lat" in values.dims:
        lat_bounds = _lat_bounds(fld)
    levels = grid.pressure()
    if "plev" in values.dims and levels is not None:
        source_p = values["plev"].values

        def vertical(x: Array) -> Array:
            return regrid.interpolate_log_pressure(x, source_p, levels)

        values = _along(values, "plev", levels, vertical)
        error = _along(error.where(fld.values.notnull()), "plev", levels, vertical)
        notes.append("plev:log-pressure")
    year_edges = grid.year_edges()
    if "time" in values.dims and year_edges is not None:
        source_t = values["time"].values
        centres_t = np.asarray(grid.years, dtype=np.float64)
        if not ((source_t >= year_edges[0]) & (source_t < year_edges[-1])).any():
            raise ObservationError(
                file,
                spec.variable,
                f"the model's time axis {year_edges[0]:.3f} to {year_edges[-1]:.3f} does not "
                f"overlap the data, which span {source_t.min():.3f} to {source_t.max():.3f}",
                "align grid.years with the data's time range",
            )

        def cells(x: Array) -> Array:
            return regrid.bin_average(x, source_t, year_edges, spec.min_coverage)

        values = _along(values, "time", centres_t, cells)
        error = _along(error.where(fld.values.notnull()), "time", centres_t, cells)
        notes.append("time:cells")
    return _Field(values, error, lat_bounds, notes, fld.sources, fld.unrecognised)


def _along(data: xr.DataArray, dim: str, new_coord: Array, fn: Any) -> xr.DataArray:
    """Apply ``fn`` (acting on the last axis) along ``dim``, which takes ``new_coord``."""
    order = [d for d in data.dims if d != dim] + [dim]
    moved = data.transpose(*order)
    out = fn(np.asarray(moved.values, dtype=np.float64))
    coords = {d: moved[d].values for d in order[:-1] if d in moved.coords}
    coords[dim] = np.asarray(new_coord, dtype=np.float64)
    result = xr.DataArray(out, dims=order, coords=coords)
    return result.transpose(*data.dims)


def _to_tensors(
    fld: _Field,
    spec: ObservationSpec,
    file: Any,
    device: torch.device | str | None,
    dtype: torch.dtype,
    paths: list[Path],
) -> ObservedVariable:
    canonical = ("time", "month", "season", "plev", "lat")
    dims = tuple(d for d in canonical if d in fld.values.dims)
    values = np.asarray(fld.values.transpose(*dims).values, dtype=np.float64)
    error = np.asarray(fld.error.transpose(*dims).values, dtype=np.float64)
    mask = np.isfinite(values) & np.isfinite(error) & (error > 0)
    weights = np.ones(values.shape)
    coords: dict[str, torch.Tensor] = {}
    for axis, dim in enumerate(dims):
        coords[dim] = torch.as_tensor(
            np.array(fld.values[dim].values, dtype=np.float64), device=device
        )
        if dim == "lat":
            bounds = fld.lat_bounds if fld.lat_bounds is not None else _lat_bounds(fld)
            coords["lat_bounds"] = torch.as_tensor(np.asarray(bounds, np.float64), device=device)
            shape = [1] * len(dims)
            shape[axis] = -1
            weights = weights * regrid.band_areas(bounds).reshape(shape)
    weights = np.where(mask, weights, 0.0)
    weights = weights / weights.sum()
    attrs = {
        "source_file": ", ".join(str(p) for p in paths),
        "source_variable": spec.variable,
        "history": "; ".join(fld.notes),
    }
    return ObservedVariable(
        name=spec.name,
        model_output=spec.model_output,
        operator=spec.operator,
        units=canonical_units(spec.units),
        weight=float(spec.weight),
        dims=dims,
        values=torch.as_tensor(np.where(mask, values, 0.0), dtype=dtype, device=device),
        mask=torch.as_tensor(mask, device=device),
        weights=torch.as_tensor(weights, dtype=dtype, device=device),
        error=torch.as_tensor(np.where(mask, error, 1.0), dtype=dtype, device=device),
        coords=coords,
        attrs=attrs,
    )
