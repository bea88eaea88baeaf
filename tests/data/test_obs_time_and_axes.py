"""Month-index climatologies and coordinates found by their CF attributes (issue "Trustworthy
under real files", D and E)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr

from climgrad.data import ModelGrid, ObservationError, ObservationSpec, load_observations
from climgrad.data.__main__ import main
from climgrad.data.obsset import ObservedVariable
from climgrad.data.synthetic import write_synthetic

GRID = ModelGrid.latitude_bands(18)


def _load(path: Path, operator: str, grid: ModelGrid = GRID, **extra: Any) -> ObservedVariable:
    spec = ObservationSpec(
        name="t",
        path=str(path),
        variable="tas",
        model_output="surface_temperature",
        units="K",
        operator=operator,
        error=0.5,
        **extra,
    )
    return load_observations([spec], grid, dtype=torch.float64)["t"]


def _message(path: Path, operator: str, **extra: Any) -> str:
    with pytest.raises(ObservationError) as info:
        _load(path, operator, **extra)
    message = str(info.value)
    assert "\n" not in message and "Fix: " in message and path.name in message
    return message


def _assert_same(a: ObservedVariable, b: ObservedVariable) -> None:
    assert a.dims == b.dims
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.values, b.values, atol=1e-9, rtol=0)
    torch.testing.assert_close(a.error, b.error, atol=1e-9, rtol=0)
    torch.testing.assert_close(a.weights, b.weights, atol=1e-12, rtol=0)
    for key in a.coords:
        torch.testing.assert_close(a.coords[key], b.coords[key], atol=1e-9, rtol=0)


def _rewrite(source: Path, target: Path, edit: Any) -> Path:
    with xr.open_dataset(source, decode_times=False) as data:
        loaded = data.load()
    edit(loaded).to_netcdf(target)
    return target


# ---- D: a month index as the time axis ------------------------------------------------------


def _month_index(
    units: str = "months", values: Any = None, dim: str = "time", reorder: bool = False
) -> Any:
    """Replace the dates of one year of monthly data by month numbers ``values``.

    With ``reorder`` the data are permuted so that each month number labels that month's data.
    """

    def edit(data: xr.Dataset) -> xr.Dataset:
        months = np.arange(1.0, 13.0) if values is None else np.asarray(values, dtype=np.float64)
        if reorder:
            data = data.isel(time=months.astype(int) - 1)
        data = data.assign_coords(time=("time", months))
        data["time"].attrs = {"units": units} if units else {}
        if dim != "time":
            data = data.rename({"time": dim})
        return data

    return edit


@pytest.fixture
def one_year(tmp_path: Path) -> Path:
    return write_synthetic(tmp_path / "dated.nc", years=(2000,), n_lon=8)


@pytest.mark.parametrize(
    "edit",
    [
        _month_index("months"),
        _month_index("month"),
        _month_index("", dim="month"),  # a dimension called month, no units
        _month_index("months", values=[7, 8, 9, 10, 11, 12, 1, 2, 3, 4, 5, 6], reorder=True),
    ],
    ids=["months", "month", "month_dimension", "july_first"],
)
@pytest.mark.parametrize(
    "operator",
    [
        "time_mean+zonal_mean",
        "monthly_climatology+zonal_mean",
        "seasonal_climatology+zonal_mean",
        "zonal_mean",
    ],
)
def test_month_index_climatology_loads_like_dated_months(
    tmp_path: Path, one_year: Path, edit: Any, operator: str
) -> None:
    indexed = _rewrite(one_year, tmp_path / "indexed.nc", edit)
    result = _load(indexed, operator)
    # identity on a month index gives the monthly climatology of the dated file
    same = "monthly_climatology+zonal_mean" if operator == "zonal_mean" else operator
    _assert_same(result, _load(one_year, same))


def test_month_index_refuses_what_needs_years(tmp_path: Path, one_year: Path) -> None:
    indexed = _rewrite(one_year, tmp_path / "indexed.nc", _month_index("months"))
    message = _message(indexed, "annual_mean+zonal_mean")
    assert "month of year" in message and "time_mean" in message
    message = _message(indexed, "time_mean+zonal_mean", time=[2000, 2000])
    assert "month of year" in message and "remove `time`" in message


def test_month_index_outside_1_to_12_is_refused(tmp_path: Path, one_year: Path) -> None:
    indexed = _rewrite(
        one_year, tmp_path / "zero_based.nc", _month_index("months", values=np.arange(12.0))
    )
    message = _message(indexed, "time_mean+zonal_mean")
    assert "month index" in message and "1 (January) to 12" in message


# ---- E: coordinates stored as variables of their own -----------------------------------------


def _coordinates_as_variables(index_coords: bool, as_coords: bool) -> Any:
    """``tas(time, latitude, longitude)`` with ``lat(latitude)``, ``lon(longitude)``."""

    def edit(data: xr.Dataset) -> xr.Dataset:
        lat, lon = data["lat"], data["lon"]
        out = data.drop_vars(["lat", "lon"]).rename_dims({"lat": "latitude", "lon": "longitude"})
        out["lat"] = (("latitude",), lat.values, {"units": "degrees_north"})
        out["lon"] = (("longitude",), lon.values, {"units": "degrees_east"})
        if as_coords:
            out = out.set_coords(["lat", "lon"])
        if index_coords:  # plain integer indices, as some writers add
            out = out.assign_coords(latitude=np.arange(lat.size), longitude=np.arange(lon.size))
        return out

    return edit


@pytest.mark.parametrize(
    ("index_coords", "as_coords"),
    [(False, False), (False, True), (True, False)],
    ids=["data_variables", "non_index_coordinates", "beside_integer_indices"],
)
def test_coordinates_stored_as_variables_are_found(
    tmp_path: Path, index_coords: bool, as_coords: bool
) -> None:
    clean = write_synthetic(tmp_path / "clean.nc")
    odd = _rewrite(clean, tmp_path / "odd.nc", _coordinates_as_variables(index_coords, as_coords))
    with xr.open_dataset(odd) as data:
        assert "lat" not in data.dims and "latitude" in data.dims
    for operator in ("annual_mean+zonal_mean", "time_mean+global_mean"):
        _assert_same(_load(odd, operator), _load(clean, operator))


def test_operator_errors_name_the_recognised_dimension(tmp_path: Path) -> None:
    clean = write_synthetic(tmp_path / "clean.nc")
    odd = _rewrite(clean, tmp_path / "odd.nc", _coordinates_as_variables(False, False))
    message = _message(odd, "zonal_mean+zonal_mean")
    assert "operator 'zonal_mean' needs dimension(s) ['lon']" in message
    assert "lat [file dimension 'latitude', coordinate 'lat']" in message
    message = _message(odd, "time_mean")
    assert "lon [file dimension 'longitude', coordinate 'lon']" in message


def test_an_unrecognised_dimension_is_named_with_the_attributes_to_add(tmp_path: Path) -> None:
    clean = write_synthetic(tmp_path / "clean.nc")

    def strip_lon(data: xr.Dataset) -> xr.Dataset:
        values = data["lon"].values
        out = data.drop_vars("lon").rename_dims({"lon": "nx"})
        out["x_position"] = (("nx",), values)  # no attributes: nothing says it is longitude
        return out

    bare = _rewrite(clean, tmp_path / "bare.nc", strip_lon)
    message = _message(bare, "time_mean+zonal_mean")
    assert "['nx'] were recognised as no axis" in message
    assert "if 'nx' is that axis" in message and "degrees_east" in message
    message = _message(bare, "time_mean")
    assert "['nx'] match no model-grid dimension" in message
    assert "if 'nx' is an axis" in message


def test_cli_show_lists_the_recognised_axes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = write_synthetic(tmp_path / "clean.nc")
    odd = _rewrite(clean, tmp_path / "odd.nc", _coordinates_as_variables(False, False))
    assert main(["show", str(odd)]) == 0
    out = capsys.readouterr().out
    assert "latitude" in out and "-> lat (coordinate 'lat')" in out
    assert "-> lon (coordinate 'lon')" in out


def test_a_track_along_time_does_not_turn_time_into_latitude(tmp_path: Path) -> None:
    """A drifting sonde's ``lat(time)`` in degrees_north leaves ``time`` (in years) the time."""
    path = tmp_path / "track.nc"
    xr.Dataset(
        {
            "tas": (("time",), np.array([280.0, 281.0, 282.0]), {"units": "K"}),
            "lat": (("time",), np.array([10.0, 10.5, 11.0]), {"units": "degrees_north"}),
        },
        coords={"time": ("time", np.array([2000.5, 2001.5, 2002.5]), {"units": "years"})},
    ).to_netcdf(path)
    result = _load(path, "identity", ModelGrid())
    assert result.dims == ("time",)
    torch.testing.assert_close(
        result.coords["time"], torch.tensor([2000.5, 2001.5, 2002.5]).double()
    )
