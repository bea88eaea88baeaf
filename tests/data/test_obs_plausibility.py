"""Implausible coordinates and values are refused with one line naming file, variable and the
likely mislabelling, instead of a calibration that ends with wrong parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr

from climgrad.data import ModelGrid, ObservationError, ObservationSpec, load_observations
from climgrad.data.plausibility import PLAUSIBLE_RANGES, plausible_range_for
from climgrad.data.spec import spec_from_dict
from climgrad.data.synthetic import write_synthetic

from .helpers import one_line_error, tas_spec

GRID = ModelGrid.latitude_bands(18)


def _spec(path: Path | str, **changes: Any) -> ObservationSpec:
    return tas_spec(path, **changes)


def _error(spec: ObservationSpec, grid: ModelGrid = GRID) -> str:
    message = str(one_line_error(spec, grid))
    assert f"'{spec.variable}'" in message
    return message


def _edited(path: Path, edit: Any, name: str = "edited.nc") -> Path:
    with xr.open_dataset(path, decode_times=False) as data:
        loaded = data.load()
    out = path.with_name(name)
    edit(loaded).to_netcdf(out)
    return out


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    return write_synthetic(tmp_path / "clean.nc")


# ---- B: coordinates -------------------------------------------------------------------------


def _set_coord(name: str, values: Any, attrs: dict[str, str] | None = None) -> Any:
    def edit(data: xr.Dataset) -> xr.Dataset:
        new = data.assign_coords({name: (name, np.asarray(values(data[name].values)))})
        new[name].attrs = dict(data[name].attrs) if attrs is None else attrs
        return new

    return edit


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_set_coord("lat", lambda lat: 1.5 * lat), "outside [-90, 90]"),
        (_set_coord("lat", lambda lat: 90.0 - lat), "colatitude"),
        (
            _set_coord("lat", np.deg2rad, {"units": "radians", "standard_name": "latitude"}),
            "radians",
        ),
        (_set_coord("lat", np.deg2rad, {"axis": "Y"}), "radians"),  # no units at all
        (_set_coord("lon", lambda lon: lon + 200.0), "neither [-180, 180] nor [0, 360]"),
        (
            _set_coord("lon", np.deg2rad, {"units": "radians", "standard_name": "longitude"}),
            "radians",
        ),
    ],
    ids=[
        "lat_scaled",
        "colatitude",
        "lat_radians",
        "lat_radians_no_units",
        "lon_shifted",
        "lon_radians",
    ],
)
def test_implausible_coordinates_are_refused(clean: Path, edit: Any, expected: str) -> None:
    message = _error(_spec(_edited(clean, edit)))
    assert expected in message, message
    assert "edited.nc" in message
    assert "coordinate 'lat'" in message or "coordinate 'lon'" in message


def test_regional_latitudes_in_degrees_are_not_taken_for_radians(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "fine.nc", n_lat=180, n_lon=8)
    narrow = _edited(path, lambda d: d.isel(lat=slice(88, 92)), "narrow.nc")  # -1.5..1.5 N
    obs = load_observations([_spec(narrow, operator="time_mean+zonal_mean")], ModelGrid())
    assert obs["t"].shape == (4,)


def test_latitude_bounds_outside_the_sphere_are_refused(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "bounds.nc", with_bounds=True)

    def stretch(data: xr.Dataset) -> xr.Dataset:
        data["lat_bnds"] = data["lat_bnds"] * 1.5
        return data

    message = _error(_spec(_edited(path, stretch)))
    assert "latitude bounds 'lat_bnds'" in message


# ---- C: values against their units ------------------------------------------------------------


def _relabel(units: str) -> Any:
    def edit(data: xr.Dataset) -> xr.Dataset:
        data["tas"].attrs["units"] = units
        return data

    return edit


def test_degc_labelled_as_kelvin_is_named(tmp_path: Path) -> None:
    path = _edited(write_synthetic(tmp_path / "c.nc", units="degC"), _relabel("K"), "f.nc")
    message = _error(_spec(path))
    assert "f.nc: variable 'tas'" in message
    assert "below the plausible 150 K for a temperature" in message
    assert "degC labelled as 'K'" in message and "file_units: degC" in message
    assert "valid_range" in message


def test_kelvin_labelled_as_degc_is_named(clean: Path) -> None:
    message = _error(_spec(_edited(clean, _relabel("degC"))))
    assert "above the plausible 350 K" in message and "K labelled as 'degC'" in message


def test_valid_range_overrides_and_null_switches_off(tmp_path: Path) -> None:
    path = _edited(write_synthetic(tmp_path / "c.nc", units="degC"), _relabel("K"), "f.nc")
    for valid_range in ([-100.0, 100.0], None, [None, 100.0]):
        obs = load_observations([_spec(path, valid_range=valid_range)], GRID)
        assert bool(obs["t"].mask.all())
    message = _error(_spec(path, valid_range=[0.0, 30.0]))
    assert "go up to 31.76 K" in message and "outside the spec's valid_range [0, 30] K" in message


def test_anomalies_have_no_range(tmp_path: Path) -> None:
    path = _edited(write_synthetic(tmp_path / "c.nc", units="degC"), _relabel("K"), "f.nc")
    obs = load_observations([_spec(path, difference=True)], GRID)
    assert bool(obs["t"].mask.all()) and float(obs["t"].values.max()) < 40.0


def _series(path: Path, name: str, values: Any, attrs: dict[str, str]) -> Path:
    xr.Dataset(
        {name: (("time",), np.asarray(values, dtype=np.float64), attrs)},
        coords={
            "time": (
                "time",
                np.arange(len(values), dtype=np.float64),
                {"units": "hours since 2023-06-01", "standard_name": "time"},
            )
        },
    ).to_netcdf(path)
    return path


def _series_spec(path: Path, name: str, model_output: str, units: str, **extra: Any) -> Any:
    return ObservationSpec(
        name=name,
        path=str(path),
        variable=name,
        model_output=model_output,
        units=units,
        error=1.0,
        **extra,
    )


def test_percent_labelled_as_fraction(tmp_path: Path) -> None:
    path = _series(tmp_path / "rh.nc", "hur", [45.0, 80.0, 97.0], {"units": "1"})
    message = _error(_series_spec(path, "hur", "relative_humidity", "1"), ModelGrid())
    assert "a relative humidity as a fraction" in message and "% labelled as '1'" in message


def test_grams_per_kilogram_labelled_as_kilograms(tmp_path: Path) -> None:
    path = _series(tmp_path / "q.nc", "hus", [4.0, 12.0, 18.0], {"units": "kg kg-1"})
    message = _error(_series_spec(path, "hus", "specific_humidity", "kg kg-1"), ModelGrid())
    assert "g kg-1 labelled as 'kg kg-1'" in message


def test_pascal_labelled_as_hectopascal(tmp_path: Path) -> None:
    path = _series(tmp_path / "p.nc", "ps", [98000.0, 101000.0], {"units": "hPa"})
    message = _error(_series_spec(path, "ps", "surface_pressure", "Pa"), ModelGrid())
    assert "above the plausible 110000 Pa" in message and "Pa labelled as 'hPa'" in message


def test_a_flux_magnitude_with_the_wrong_sign(tmp_path: Path) -> None:
    path = _series(tmp_path / "olr.nc", "rlut", [-230.0, -250.0], {"units": "W m-2"})
    message = _error(
        _series_spec(path, "rlut", "outgoing_longwave_radiation", "W m-2"), ModelGrid()
    )
    assert "a radiative flux (a magnitude)" in message and "opposite sign" in message
    assert "mW" not in message


def test_standard_name_decides_when_model_output_does_not(tmp_path: Path) -> None:
    path = _series(
        tmp_path / "olr.nc",
        "olr",
        [230000.0],
        {"units": "W m-2", "standard_name": "toa_outgoing_longwave_flux"},
    )
    message = _error(_series_spec(path, "olr", "olr", "W m-2"), ModelGrid())
    assert "a radiative flux (a magnitude)" in message and "mW m-2 labelled as 'W m-2'" in message


def test_signed_fluxes_and_masked_values_pass(tmp_path: Path) -> None:
    path = _series(tmp_path / "h.nc", "hfss", [-80.0, np.nan, 350.0], {"units": "W/m^2"})
    obs = load_observations(
        [_series_spec(path, "hfss", "sensible_heat_flux", "W m-2")],
        ModelGrid(),
        dtype=torch.float64,
    )
    assert obs["hfss"].mask.tolist() == [True, False, True]


def test_range_table_lookup() -> None:
    def quantity(model_output: str, standard_name: str | None, units: str) -> str | None:
        row = plausible_range_for(model_output, standard_name, units)
        return None if row is None else row.quantity

    assert quantity("air_temperature", None, "K") == "a temperature"
    assert quantity("x", None, "K") == "a temperature"  # by units alone
    assert quantity("x", "air_pressure", "Pa") == "a pressure"  # by standard_name
    assert quantity("x", None, "m") is None
    assert quantity("surface_temperature_anomaly", None, "K") == "an anomaly or difference"
    assert quantity("upper_ocean_heat_content", None, "J") == "a heat content or energy inventory"
    # a name whose units do not fit the row falls through to the next candidates
    assert quantity("temperature_flux", None, "K m s-1") is None
    names = [row.quantity for row in PLAUSIBLE_RANGES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    "bad", [[5.0, 1.0], "wide", [1.0], [None, None], ["a", 2.0], 3.0, [float("nan"), 1.0]]
)
def test_valid_range_is_validated_in_the_spec(bad: Any) -> None:
    raw = {
        "name": "t",
        "path": "f.nc",
        "variable": "tas",
        "model_output": "surface_temperature",
        "units": "K",
        "error": 1.0,
        "valid_range": bad,
    }
    with pytest.raises(ObservationError) as info:
        spec_from_dict(raw, "spec.yaml")
    message = str(info.value)
    assert message.startswith("spec.yaml: variable 'observations[t].valid_range'")
    assert "Fix: write valid_range: [min, max]" in message and "null" in message


def test_valid_range_null_and_auto_are_accepted() -> None:
    raw = {
        "name": "t",
        "path": "f.nc",
        "variable": "tas",
        "model_output": "surface_temperature",
        "units": "K",
        "error": 1.0,
    }
    assert spec_from_dict({**raw, "valid_range": None}).plausible_range() is None
    assert spec_from_dict({**raw, "valid_range": "auto"}).plausible_range() == "auto"
    assert spec_from_dict(raw).plausible_range() == "auto"
    assert spec_from_dict({**raw, "valid_range": [200, 320]}).plausible_range() == (200.0, 320.0)
