"""Regridding kernels and unit conversion."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from climgrad.data import ObservationError
from climgrad.data.coords import decimal_years, infer_bounds
from climgrad.data.regrid import (
    band_areas,
    bin_average,
    conservative_average,
    interpolate_linear,
    interpolate_log_pressure,
)
from climgrad.data.units import conversion


@settings(max_examples=25, deadline=None)
@given(
    st.integers(3, 60),
    st.integers(2, 30),
    st.lists(st.floats(-300, 300), min_size=60, max_size=60),
)
def test_conservative_average_preserves_the_global_mean(
    n_cells: int, n_bands: int, raw: list[float]
) -> None:
    values = np.array(raw[:n_cells])
    cells = np.linspace(-90, 90, n_cells + 1)
    bounds = np.stack([cells[:-1], cells[1:]], -1)
    edges = np.linspace(-90, 90, n_bands + 1)
    banded = conservative_average(values, bounds, edges, 0.0)
    assert np.isclose((band_areas(edges) * banded).sum(), (band_areas(bounds) * values).sum())


def test_conservative_average_masks_uncovered_bands() -> None:
    bounds = np.array([[0.0, 10.0], [10.0, 20.0]])
    values = np.array([1.0, np.nan])
    result = conservative_average(values, bounds, np.array([0.0, 10.0, 20.0, 30.0]), 0.5)
    assert result[0] == 1.0 and np.isnan(result[1]) and np.isnan(result[2])


def test_band_areas_sum_to_one() -> None:
    assert band_areas(np.linspace(-90, 90, 91)).sum() == pytest.approx(1.0)


def test_infer_bounds_reproduce_a_regular_grid() -> None:
    edges = np.linspace(-90, 90, 37)
    centres = 0.5 * (edges[:-1] + edges[1:])
    np.testing.assert_allclose(infer_bounds(centres, -90, 90)[:, 0], edges[:-1])


@settings(max_examples=25, deadline=None)
@given(st.floats(-5, 5), st.floats(100, 400))
def test_log_pressure_interpolation_is_exact_for_linear_in_log_p(slope: float, base: float) -> None:
    source = np.array([5000.0, 20000.0, 50000.0, 85000.0, 100000.0])
    target = np.array([10000.0, 30000.0, 70000.0, 92500.0])
    values = base + slope * np.log(source)
    result = interpolate_log_pressure(values, source, target)
    np.testing.assert_allclose(result, base + slope * np.log(target), rtol=1e-12)


def test_interpolation_masks_gaps_and_outside() -> None:
    result = interpolate_linear(np.array([0.0, np.nan, 2.0, 3.0]), np.arange(4.0), [0.5, 2.5, 3.5])
    assert np.isnan(result[0]) and result[1] == 2.5 and np.isnan(result[2])
    assert interpolate_linear(np.array([0.0, np.nan]), np.arange(2.0), [0.0])[0] == 0.0


def test_bin_average() -> None:
    values = np.array([1.0, 3.0, np.nan, 5.0])
    result = bin_average(
        values, np.array([0.1, 0.6, 1.2, 1.7]), np.array([0.0, 1.0, 2.0, 3.0]), 0.5
    )
    assert result[0] == 2.0 and result[1] == 5.0 and np.isnan(result[2])


@pytest.mark.parametrize(
    ("source", "target", "scale", "offset"),
    [
        ("degC", "K", 1.0, 273.15),
        ("C", "K", 1.0, 273.15),
        ("hPa", "Pa", 100.0, 0.0),
        ("mbar", "Pa", 100.0, 0.0),
        ("w/m^2", "W m-2", 1.0, 0.0),
        ("ZJ", "J", 1e21, 0.0),
        ("%", "1", 0.01, 0.0),
        ("fraction", "1", 1.0, 0.0),
        ("kg/(m s^2)", "Pa", 1.0, 0.0),
        ("kPa", "Pa", 1000.0, 0.0),
    ],
)
def test_units_to_si(source: str, target: str, scale: float, offset: float) -> None:
    got_scale, got_offset = conversion(source, target, "f.nc", "v")
    assert got_scale == pytest.approx(scale) and got_offset == pytest.approx(offset)


def test_differences_scale_only() -> None:
    assert conversion("degC", "K", "f.nc", "v", difference=True) == pytest.approx((1.0, 0.0))


def test_unconvertible_units_name_the_variable() -> None:
    with pytest.raises(ObservationError, match=r"f\.nc: variable 'v': its units 'K' do not"):
        conversion("K", "W m-2", "f.nc", "v")


def test_decimal_years_across_calendars() -> None:
    import cftime

    for calendar in ("standard", "noleap", "360_day", "all_leap", "julian"):
        mid = cftime.datetime(2001, 1, 1, calendar=calendar) + 0.5 * (
            cftime.datetime(2002, 1, 1, calendar=calendar)
            - cftime.datetime(2001, 1, 1, calendar=calendar)
        )
        assert decimal_years(np.array([mid], dtype=object))[0] == pytest.approx(2001.5)
    stamps = np.array(["2000-01-01", "2000-07-01T12"], dtype="datetime64[ns]")
    np.testing.assert_allclose(decimal_years(stamps), [2000.0, 2000.0 + 182.5 / 366])
