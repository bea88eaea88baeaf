"""Remapping cells with bounds onto model latitude bands is conservative in both directions
(issue "Trustworthy under real files", F)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from climgrad.data import ModelGrid, ObservationSpec, load_observations
from climgrad.data.obsset import ObservedVariable
from climgrad.data.synthetic import write_synthetic


def _load(path: Path, grid: ModelGrid, **extra: object) -> ObservedVariable:
    spec = ObservationSpec(
        name="t",
        path=str(path),
        variable="tas",
        model_output="surface_temperature",
        units="K",
        operator="time_mean+zonal_mean",
        error=0.5,
        **extra,  # type: ignore[arg-type]
    )
    return load_observations([spec], grid, dtype=torch.float64)["t"]


def _area_mean(obs: ObservedVariable) -> float:
    return float((obs.weights * obs.values).sum())


@pytest.fixture
def five_degree(tmp_path: Path) -> Path:
    """5-degree cells with CF bounds, pole to pole."""
    return write_synthetic(tmp_path / "five.nc", n_lat=36, n_lon=8, with_bounds=True)


def test_finer_bands_take_the_covering_cells_values(five_degree: Path) -> None:
    cells = _load(five_degree, ModelGrid.latitude_bands(36))  # the data's own cells
    fine = _load(five_degree, ModelGrid.latitude_bands(90))  # 2-degree bands
    assert "lat:conservative" in fine.attrs["history"]
    # every band is filled, the polar ones (88-90, whose centre 89 lies poleward of the
    # outermost cell centre 87.5) included
    assert bool(fine.mask.all())
    edges = np.linspace(-90.0, 90.0, 91)
    cell_edges = np.linspace(-90.0, 90.0, 37)
    for band in range(90):
        south, north = edges[band], edges[band + 1]
        first = np.searchsorted(cell_edges, south, side="right") - 1
        last = np.searchsorted(cell_edges, north, side="left") - 1
        if first == last:  # inside one data cell: its value exactly
            assert float(fine.values[band]) == pytest.approx(float(cells.values[first]), abs=1e-9)
        else:  # straddles two cells: between their values
            low, high = sorted((float(cells.values[first]), float(cells.values[last])))
            assert low - 1e-9 <= float(fine.values[band]) <= high + 1e-9
    # the area-weighted global mean is conserved to rounding
    assert _area_mean(fine) == pytest.approx(_area_mean(cells), abs=1e-10)


def test_coarser_bands_conserve_the_area_weighted_mean(five_degree: Path) -> None:
    cells = _load(five_degree, ModelGrid.latitude_bands(36))
    for bands in (18, 12, 6, 1):
        coarse = _load(five_degree, ModelGrid.latitude_bands(bands))
        assert "lat:conservative" in coarse.attrs["history"] and bool(coarse.mask.all())
        assert _area_mean(coarse) == pytest.approx(_area_mean(cells), abs=1e-10)


def test_regional_data_fill_only_the_bands_they_cover(tmp_path: Path) -> None:
    import xarray as xr

    path = write_synthetic(tmp_path / "five.nc", n_lat=36, n_lon=8, with_bounds=True)
    with xr.open_dataset(path, decode_times=False) as data:
        tropics = data.isel(lat=slice(12, 24)).load()  # cells -30..30
    tropics.to_netcdf(tmp_path / "tropics.nc")
    fine = _load(tmp_path / "tropics.nc", ModelGrid.latitude_bands(90))
    centres = fine.coords["lat"].numpy()
    np.testing.assert_array_equal(fine.mask.numpy(), np.abs(centres) < 30.0)


def test_without_bounds_finer_bands_still_interpolate(tmp_path: Path) -> None:
    """Edges inferred halfway between centres are a guess: no conservative claim is made."""
    path = write_synthetic(tmp_path / "five.nc", n_lat=36, n_lon=8)
    fine = _load(path, ModelGrid.latitude_bands(90))
    assert "lat:linear" in fine.attrs["history"]
    forced = _load(path, ModelGrid.latitude_bands(90), regrid="conservative")
    assert bool(forced.mask.all())
