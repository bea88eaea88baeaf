"""Small synthetic CF NetCDF files with known contents, in the conventions real files use.

For tests, documentation examples and trying the pipeline without real data: the same field can
be written with descending latitude, 0-360 longitude, degC instead of K, packed into int16,
with fill values, NaN holes or a non-standard calendar, and must load to the same tensors.

The field is

    tas(time, lat, lon) = 280 + 20 cos(lat) + 3 sin(lon) + 2 sin(2 pi (month - 0.5) / 12)   [K]

on monthly times (the 15th of each month) and regular cells of ``180 / n_lat`` by ``360 / n_lon``
degrees; its exact zonal, annual and global means are known in closed form.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

Array = np.ndarray[Any, Any]


def synthetic_field(lat: Array, lon: Array, month: Array) -> Array:
    """The synthetic temperature (K), shape ``(time, lat, lon)``; arguments in degrees and 1-12."""
    lat_term = 20.0 * np.cos(np.deg2rad(lat))[None, :, None]
    lon_term = 3.0 * np.sin(np.deg2rad(lon))[None, None, :]
    season = 2.0 * np.sin(2.0 * np.pi * (np.asarray(month) - 0.5) / 12.0)[:, None, None]
    return 280.0 + lat_term + lon_term + season


def synthetic_dataset(
    n_lat: int = 36,
    n_lon: int = 72,
    years: Sequence[int] = (2000, 2001),
    calendar: str = "standard",
    descending_lat: bool = False,
    lon_0_360: bool = False,
    units: str = "K",
    holes: Sequence[tuple[int, int, int]] = (),
    with_bounds: bool = False,
    variable: str = "tas",
) -> xr.Dataset:
    """Build the synthetic dataset (not yet encoded; see :func:`write_synthetic`).

    Args:
        n_lat: number of latitude cells (regular, pole to pole).
        n_lon: number of longitude cells.
        years: calendar years of monthly data.
        calendar: CF calendar of the time axis (``standard``, ``noleap``, ``360_day`` ...).
        descending_lat: store latitude north to south.
        lon_0_360: store longitude as 0..360 instead of -180..180.
        units: ``"K"`` or ``"degC"`` (values shifted accordingly).
        holes: ``(time, lat, lon)`` indices, in the clean ordering (ascending latitude,
            longitude from -180), set to NaN.
        with_bounds: add a CF ``lat_bnds`` variable.
        variable: name of the data variable.
    """
    import cftime

    lat_edges = np.linspace(-90.0, 90.0, n_lat + 1)
    lat = 0.5 * (lat_edges[:-1] + lat_edges[1:])
    lon = -180.0 + (np.arange(n_lon) + 0.5) * 360.0 / n_lon
    months = np.tile(np.arange(1, 13), len(years))
    stamps = [cftime.datetime(y, m, 15, calendar=calendar) for y in years for m in range(1, 13)]
    values = synthetic_field(lat, lon, months)
    for t, i, j in holes:
        values[t, i, j] = np.nan
    if units == "degC":
        values = values - 273.15
    elif units != "K":
        raise ValueError(f"units must be 'K' or 'degC'; got {units!r}")
    bounds = np.stack([lat_edges[:-1], lat_edges[1:]], axis=-1)
    if lon_0_360:
        lon = lon % 360.0
        order = np.argsort(lon)
        lon, values = lon[order], values[:, :, order]
    if descending_lat:
        lat, values, bounds = lat[::-1], values[:, ::-1, :], bounds[::-1, ::-1]
    lat_attrs = {"units": "degrees_north", "standard_name": "latitude", "axis": "Y"}
    if with_bounds:
        lat_attrs["bounds"] = "lat_bnds"
    dataset = xr.Dataset(
        {
            variable: (
                ("time", "lat", "lon"),
                values,
                {"units": units, "standard_name": "air_temperature", "long_name": "synthetic"},
            )
        },
        coords={
            "time": (
                "time",
                np.array(stamps, dtype=object),
                {"standard_name": "time", "axis": "T"},
            ),
            "lat": ("lat", lat, lat_attrs),
            "lon": (
                "lon",
                lon,
                {"units": "degrees_east", "standard_name": "longitude", "axis": "X"},
            ),
        },
        attrs={"Conventions": "CF-1.10", "title": "climgrad synthetic observations"},
    )
    if with_bounds:
        dataset["lat_bnds"] = (("lat", "bnds"), bounds)
    return dataset


def write_synthetic(
    path: str | Path,
    packed: bool = False,
    fill_value: float | None = None,
    missing_value: float | None = None,
    calendar: str = "standard",
    file_format: Literal[
        "NETCDF4", "NETCDF4_CLASSIC", "NETCDF3_64BIT", "NETCDF3_CLASSIC"
    ] = "NETCDF4",
    **options: Any,
) -> Path:
    """Write :func:`synthetic_dataset` to ``path`` with the requested encoding.

    Args:
        path: output file.
        packed: store as int16 with ``scale_factor`` 0.01 and ``add_offset`` 280 (CF packing).
        fill_value: ``_FillValue`` for missing entries (NaN holes are written as this value).
        missing_value: ``missing_value`` attribute instead of ``_FillValue``.
        calendar: CF calendar of the time axis.
        file_format: netCDF4 format string (``NETCDF4``, ``NETCDF3_CLASSIC`` ...).
        **options: passed to :func:`synthetic_dataset`.
    """
    dataset = synthetic_dataset(calendar=calendar, **options)
    name = options.get("variable", "tas")
    encoding: dict[str, Any] = {"dtype": "float64", "_FillValue": np.nan}
    if packed:
        encoding = {
            "dtype": "int16",
            "scale_factor": 0.01,
            "add_offset": 280.0 if options.get("units", "K") == "K" else 6.85,
            "_FillValue": np.int16(-32767),
        }
    if fill_value is not None:
        encoding["_FillValue"] = fill_value
    if missing_value is not None:
        encoding.pop("_FillValue", None)
        encoding["missing_value"] = missing_value
    time_encoding = {"units": "days since 1990-01-01", "calendar": calendar, "dtype": "float64"}
    path = Path(path)
    dataset.to_netcdf(
        path,
        format=file_format,
        encoding={name: encoding, "time": time_encoding},
    )
    return path


def write_synthetic_profiles(
    path: str | Path, levels_hpa: Sequence[float] = (1000, 850, 700, 500, 300, 200, 100)
) -> Path:
    """Write profiles ``ta(time, level) = 300 + 30 ln(p / 1000 hPa)`` with ``level`` in hPa.

    The vertical axis is called ``level`` with units ``hPa`` (as reanalyses do), which the loader
    must recognise as pressure and convert to Pa; the profile is linear in ln(p), so log-pressure
    interpolation reproduces it exactly.
    """
    import cftime

    levels = np.asarray(levels_hpa, dtype=np.float64)
    stamps = [cftime.datetime(2006, 1, day, 12, calendar="standard") for day in (19, 20, 21)]
    offsets = np.array([0.0, 1.0, -1.0])[:, None]
    values = 300.0 + 30.0 * np.log(levels / 1000.0)[None, :] + offsets
    dataset = xr.Dataset(
        {"ta": (("time", "level"), values, {"units": "K", "standard_name": "air_temperature"})},
        coords={
            "time": ("time", np.array(stamps, dtype=object)),
            "level": ("level", levels, {"units": "hPa", "positive": "down", "axis": "Z"}),
        },
    )
    path = Path(path)
    dataset.to_netcdf(
        path, encoding={"time": {"units": "hours since 2006-01-01", "calendar": "standard"}}
    )
    return path
