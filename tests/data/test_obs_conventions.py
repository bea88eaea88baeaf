"""Files in other conventions load to the same tensors as a clean file (issue 5, Tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from climgrad.data import ModelGrid, ObservationSpec, load_observations
from climgrad.data.obsset import ObservedVariable
from climgrad.data.synthetic import synthetic_field, write_synthetic, write_synthetic_profiles

GRID = ModelGrid.latitude_bands(18, sites={"okla": [36.4, -97.5]})
HOLES = [(0, 3, 5), (4, 10, 70), (13, 17, 0)]


def _load(
    path: Path | list[str], operator: str, grid: ModelGrid = GRID, **spec: Any
) -> ObservedVariable:
    options: dict[str, Any] = {"error": 0.5, **spec}
    obs_spec = ObservationSpec(
        name="t",
        path=path if isinstance(path, list) else str(path),
        variable="tas",
        model_output="surface_temperature",
        units="K",
        operator=operator,
        **options,
    )
    return load_observations([obs_spec], grid, dtype=torch.float64)["t"]


def _assert_same(a: ObservedVariable, b: ObservedVariable, atol: float = 1e-9) -> None:
    assert a.dims == b.dims
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.values, b.values, atol=atol, rtol=0)
    torch.testing.assert_close(a.error, b.error, atol=atol, rtol=0)
    torch.testing.assert_close(a.weights, b.weights, atol=1e-12, rtol=0)
    assert set(a.coords) == set(b.coords)
    for key in a.coords:
        torch.testing.assert_close(a.coords[key], b.coords[key], atol=1e-9, rtol=0)


VARIANTS: dict[str, tuple[dict[str, Any], float]] = {
    "descending_latitude": ({"descending_lat": True}, 1e-9),
    "descending_latitude_with_bounds": ({"descending_lat": True, "with_bounds": True}, 1e-9),
    "longitude_0_360": ({"lon_0_360": True}, 1e-9),
    "degC": ({"units": "degC"}, 1e-9),
    "packed_int16": ({"packed": True}, 0.005),  # half the packing step of 0.01 K
    "packed_int16_degC": ({"packed": True, "units": "degC"}, 0.005),
    "netcdf3": ({"file_format": "NETCDF3_CLASSIC"}, 1e-9),
    "calendar_noleap": ({"calendar": "noleap"}, 1e-9),
    "calendar_360_day": ({"calendar": "360_day"}, 1e-9),
    "calendar_julian": ({"calendar": "julian"}, 1e-9),
}
OPERATORS = ["annual_mean+zonal_mean", "monthly_climatology+site"]


@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_gives_the_clean_tensors(tmp_path: Path, variant: str, operator: str) -> None:
    options, atol = VARIANTS[variant]
    clean = _load(write_synthetic(tmp_path / "clean.nc"), operator, site="okla")
    other = _load(write_synthetic(tmp_path / f"{variant}.nc", **options), operator, site="okla")
    _assert_same(other, clean, atol)


@pytest.mark.parametrize(
    "encoding",
    [
        {},  # NaN holes in a float file
        {"fill_value": -999.0},
        {"missing_value": -1.0e20},
        {"packed": True},  # holes become the int16 _FillValue
    ],
    ids=["nan", "fill_value", "missing_value", "packed_fill"],
)
def test_holes_are_masked_and_the_rest_matches_the_clean_file(
    tmp_path: Path, encoding: dict[str, Any]
) -> None:
    clean = _load(write_synthetic(tmp_path / "clean.nc"), "identity+site", site="okla")
    holey_path = write_synthetic(tmp_path / "holes.nc", holes=[(2, 25, 16), *HOLES], **encoding)
    holey = _load(holey_path, "identity+site", site="okla")
    # The site cell is lat index 25 (36.4N on 5-degree cells), lon index 16 (-97.5 E).
    expected_mask = torch.ones(24, dtype=torch.bool)
    expected_mask[2] = False
    assert torch.equal(holey.mask, expected_mask)
    atol = 0.005 if encoding.get("packed") else 1e-9
    torch.testing.assert_close(
        holey.values[holey.mask], clean.values[holey.mask], atol=atol, rtol=0
    )
    assert holey.values[2] == 0.0 and holey.error[2] == 1.0 and holey.weights[2] == 0.0
    assert torch.isfinite(holey.values).all()


def test_holes_reduce_coverage_not_values(tmp_path: Path) -> None:
    """A zonal mean over a longitude-constant field is unchanged by holes; cells under
    `min_coverage` are masked, never filled with zeros."""
    path = write_synthetic(tmp_path / "holes.nc", n_lon=4, holes=[(0, 5, 0), (0, 6, 0), (0, 6, 1)])
    spec = {"min_coverage": 0.6}
    result = _load(path, "zonal_mean", ModelGrid(), **spec)
    clean = _load(write_synthetic(tmp_path / "clean.nc", n_lon=4), "zonal_mean", ModelGrid())
    # lat 5: 3 of 4 longitudes valid (0.75 >= 0.6); lat 6: 2 of 4 (0.5 < 0.6) -> masked
    assert result.mask[0, 5] and not result.mask[0, 6]
    assert result.mask.sum() == clean.mask.sum() - 1
    # the n_lon=4 field has sin(lon) terms at +-45, +-135 degrees: recompute the exact mean
    lon = np.array([-135.0, -45.0, 45.0, 135.0])
    lat5 = -90 + 5 * 5 + 2.5
    row = synthetic_field(np.array([lat5]), lon, np.array([1]))[0, 0]
    np.testing.assert_allclose(result.values[0, 5].item(), row[1:].mean(), atol=1e-9)


def test_time_window_and_calendar_agnostic_years(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "clean.nc", years=(1999, 2000, 2001))
    result = _load(path, "annual_mean+global_mean", ModelGrid(), time=[2000, 2001])
    torch.testing.assert_close(result.coords["time"], torch.tensor([2000.5, 2001.5]).double())
    # global mean of 20 cos(lat) over the sphere is 20 * pi / 4; sin(lon) and the annual
    # cycle average out (to discretisation error of the 5-degree cells)
    expected = 280.0 + 20.0 * np.pi / 4.0
    torch.testing.assert_close(
        result.values, torch.full((2,), expected, dtype=torch.float64), atol=0.02, rtol=0
    )


def test_time_onto_model_years(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "clean.nc", years=(2000, 2001))
    grid = ModelGrid(years=[1999.5, 2000.5, 2001.5])
    result = _load(path, "global_mean", grid)
    assert result.dims == ("time",)
    assert result.mask.tolist() == [False, True, True]
    annual = _load(path, "annual_mean+global_mean", ModelGrid())
    torch.testing.assert_close(result.values[1:], annual.values, atol=1e-9, rtol=0)


def test_latitude_interpolation_when_model_is_finer(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "clean.nc", n_lat=18)  # 10-degree cells
    fine = ModelGrid.latitude_bands(36)  # 5-degree bands: finer -> linear interpolation
    result = _load(path, "time_mean+zonal_mean", fine)
    assert "lat:linear" in result.attrs["history"]
    coarse = _load(path, "time_mean+zonal_mean", ModelGrid.latitude_bands(9))
    assert "lat:conservative" in coarse.attrs["history"]
    # bands beyond the outermost data centres (+-85) are outside the interpolation range
    assert not result.mask[0] and not result.mask[-1] and result.mask[1:-1].all()


def test_log_pressure_profiles_from_a_level_axis_in_hpa(tmp_path: Path) -> None:
    path = write_synthetic_profiles(tmp_path / "profiles.nc")
    spec = ObservationSpec(
        name="ta",
        path=str(path),
        variable="ta",
        model_output="air_temperature",
        units="K",
        operator="time_mean",
        error=1.0,
    )
    levels = [92500.0, 60000.0, 25000.0, 15000.0, 5000.0]
    result = load_observations([spec], ModelGrid(pressure_levels=levels), dtype=torch.float64)
    ta = result["ta"]
    assert ta.dims == ("plev",)
    plev = ta.coords["plev"].numpy()
    assert np.all(np.diff(plev) > 0)
    expected = 300.0 + 30.0 * np.log(plev / 1.0e5)
    valid = ta.mask.numpy()
    assert valid.tolist() == [False, True, True, True, True]  # 50 hPa lies above the data
    np.testing.assert_allclose(ta.values.numpy()[valid], expected[valid], atol=1e-9)


def test_several_files_join_along_time(tmp_path: Path) -> None:
    first = write_synthetic(tmp_path / "a.nc", years=(2000,))
    second = write_synthetic(tmp_path / "b.nc", years=(2001,))
    both = write_synthetic(tmp_path / "both.nc", years=(2000, 2001))
    joined = _load([str(second), str(first)], "annual_mean+zonal_mean")
    single = _load(both, "annual_mean+zonal_mean")
    _assert_same(joined, single)


def test_quality_flags_mask_samples(tmp_path: Path) -> None:
    import xarray as xr

    path = tmp_path / "flags.nc"
    values = np.array([1.0, 2.0, 3.0, 4.0])
    xr.Dataset(
        {
            "h": (("time",), values, {"units": "W/m^2"}),
            "flag_h": (("time",), np.array([0, 1, 2, 0], dtype=np.int16)),
        },
        coords={"time": ("time", np.arange(4.0), {"units": "hours since 2023-06-01"})},
    ).to_netcdf(path)
    spec = ObservationSpec(
        name="h",
        path=str(path),
        variable="h",
        model_output="sensible_heat_flux",
        units="W m-2",
        quality_variable="flag_h",
        quality_max=1,
        error=10.0,
    )
    result = load_observations([spec], ModelGrid())["h"]
    assert result.mask.tolist() == [True, True, False, True]
    assert result.values.tolist() == [1.0, 2.0, 0.0, 4.0]


def test_axes_found_by_attributes_not_names(tmp_path: Path) -> None:
    """Latitude called `y` (found by its units) and longitude `longitude` load like lat/lon."""
    import xarray as xr

    clean_path = write_synthetic(tmp_path / "clean.nc")
    with xr.open_dataset(clean_path, decode_times=False) as data:
        renamed = data.load().rename({"lat": "y", "lon": "longitude"})
    del renamed["y"].attrs["standard_name"], renamed["y"].attrs["axis"]
    renamed["longitude"].attrs = {"units": "degree_east"}
    renamed.to_netcdf(tmp_path / "renamed.nc")
    clean = _load(clean_path, "annual_mean+zonal_mean")
    other = _load(tmp_path / "renamed.nc", "annual_mean+zonal_mean")
    _assert_same(other, clean)


def test_files_outside_the_window_are_skipped_when_joining(tmp_path: Path) -> None:
    first = write_synthetic(tmp_path / "a.nc", years=(1990,))
    second = write_synthetic(tmp_path / "b.nc", years=(2001,))
    joined = _load([str(first), str(second)], "annual_mean+zonal_mean", time=[2001, 2001])
    single = _load(second, "annual_mean+zonal_mean")
    _assert_same(joined, single)


def test_iso_date_window_equals_year_window(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "clean.nc")
    by_year = _load(path, "time_mean+zonal_mean", time=[2001, 2001])
    by_date = _load(path, "time_mean+zonal_mean", time=["2001-01-01", "2001-12-31"])
    _assert_same(by_date, by_year)


def test_seasonal_climatology_matches_the_field(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "clean.nc", n_lon=4)
    result = _load(path, "seasonal_climatology+zonal_mean", ModelGrid())
    assert result.dims == ("season", "lat") and result.shape == (4, 36)
    lat = result.coords["lat"].numpy()
    lon = np.array([-135.0, -45.0, 45.0, 135.0])
    for season, months in enumerate(([12, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11])):
        expected = synthetic_field(lat, lon, np.array(months)).mean(axis=(0, 2))
        np.testing.assert_allclose(result.values[season].numpy(), expected, atol=1e-9)
