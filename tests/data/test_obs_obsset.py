"""ObsSet: tensor <-> xarray round trips, devices and dtypes, and gradients that masking keeps
finite (issue 5, Tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from climgrad.data import ModelGrid, ObservationSpec, ObservedVariable, ObsSet, load_observations
from climgrad.data.synthetic import write_synthetic

DIMS = ("time", "plev", "lat")


@st.composite
def observed_variables(draw: st.DrawFn, name: str) -> ObservedVariable:
    dims = tuple(d for d in DIMS if draw(st.booleans()))
    sizes = [draw(st.integers(1, 4)) for _ in dims]
    shape = tuple(sizes)
    count = int(np.prod(shape)) if shape else 1
    floats = st.floats(-1e6, 1e6, allow_nan=False, width=32)
    values = np.array(draw(st.lists(floats, min_size=count, max_size=count))).reshape(shape)
    errors = draw(st.lists(st.floats(0.125, 1024.0, width=32), min_size=count, max_size=count))
    mask = np.array(draw(st.lists(st.booleans(), min_size=count, max_size=count))).reshape(shape)
    mask.flat[0] = True
    weights = np.where(mask, 1.0, 0.0)
    weights = weights / weights.sum()
    coords = {}
    for dim, size in zip(dims, sizes, strict=True):
        start = draw(st.floats(-80, 80))
        coords[dim] = torch.tensor(start + np.arange(size, dtype=np.float64))
        if dim == "lat":
            centres = coords[dim].numpy()
            coords["lat_bounds"] = torch.tensor(np.stack([centres - 0.5, centres + 0.5], -1))
    return ObservedVariable(
        name=name,
        model_output=draw(st.sampled_from(["surface_temperature", "olr"])),
        operator=draw(st.sampled_from(["identity", "time_mean+zonal_mean"])),
        units=draw(st.sampled_from(["K", "W m-2", "1"])),
        weight=draw(st.floats(0.1, 10.0)),
        dims=dims,
        values=torch.tensor(np.where(mask, values, 0.0), dtype=torch.float32),
        mask=torch.tensor(mask),
        weights=torch.tensor(weights, dtype=torch.float32),
        error=torch.tensor(np.where(mask, np.reshape(errors, shape), 1.0), dtype=torch.float32),
        coords=coords,
        attrs={"source_file": "synthetic.nc"},
    )


@st.composite
def obs_sets(draw: st.DrawFn) -> ObsSet:
    names = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True))
    return ObsSet({name: draw(observed_variables(name)) for name in names})


def _assert_equal_sets(a: ObsSet, b: ObsSet) -> None:
    assert list(a) == list(b)
    for name in a:
        x, y = a[name], b[name]
        assert (x.dims, x.model_output, x.operator, x.units) == (
            y.dims,
            y.model_output,
            y.operator,
            y.units,
        )
        assert x.weight == pytest.approx(y.weight)
        assert torch.equal(x.mask, y.mask)
        for field in ("values", "weights", "error"):
            torch.testing.assert_close(getattr(x, field), getattr(y, field), rtol=0, atol=0)
        assert set(x.coords) == set(y.coords)
        for key in x.coords:
            torch.testing.assert_close(x.coords[key], y.coords[key], rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(obs_sets())
def test_round_trip_through_xarray(obs: ObsSet) -> None:
    dataset = obs.to_xarray()
    for name, variable in obs.items():
        assert int(dataset[name].notnull().sum()) == int(variable.mask.sum())
        assert dataset[name].attrs["model_output"] == variable.model_output
    _assert_equal_sets(ObsSet.from_xarray(dataset), obs)


@settings(max_examples=10, deadline=None)
@given(obs_sets())
def test_round_trip_through_a_netcdf_file(obs: ObsSet) -> None:
    import tempfile

    import xarray as xr

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "obs.nc"
        obs.to_xarray().to_netcdf(path)
        with xr.open_dataset(path) as reread:
            _assert_equal_sets(ObsSet.from_xarray(reread.load()), obs)


def test_loaded_obsset_round_trips(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "t.nc", holes=[(0, 3, 5)])
    specs = [
        ObservationSpec("zonal", str(path), "tas", "ts", "K", "annual_mean+zonal_mean", error=1.0),
        ObservationSpec("global", str(path), "tas", "ts", "K", "global_mean", error=0.5),
    ]
    obs = load_observations(specs, ModelGrid.latitude_bands(9))
    back = ObsSet.from_xarray(obs.to_xarray())
    _assert_equal_sets(back, obs)
    assert back["zonal"].coords["lat_bounds"].shape == (9, 2)


def test_device_and_dtype(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "t.nc")
    spec = ObservationSpec("t", str(path), "tas", "ts", "K", "time_mean+zonal_mean", error=1.0)
    obs = load_observations([spec], ModelGrid.latitude_bands(9), dtype=torch.float64)
    variable = obs["t"]
    assert variable.values.dtype == torch.float64 and variable.error.dtype == torch.float64
    assert variable.mask.dtype == torch.bool and variable.coords["lat"].dtype == torch.float64
    half = obs.to(dtype=torch.float32)["t"]
    assert half.values.dtype == torch.float32 and half.coords["lat"].dtype == torch.float64
    torch.testing.assert_close(variable.weights.sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loads_onto_cuda(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "t.nc", holes=[(0, 3, 5)])
    spec = ObservationSpec("t", str(path), "tas", "ts", "K", "identity+zonal_mean", error=1.0)
    obs = load_observations([spec], ModelGrid.latitude_bands(9), device="cuda")
    variable = obs["t"]
    assert variable.values.is_cuda and variable.mask.is_cuda and variable.coords["lat"].is_cuda
    prediction = torch.zeros_like(variable.values, requires_grad=True)
    variable.misfit(prediction).backward()
    assert prediction.grad is not None and torch.isfinite(prediction.grad).all()


def test_masked_loss_has_finite_gradients(tmp_path: Path) -> None:
    """NaN holes become a mask: the loss and its gradient stay finite, and are exactly zero
    at masked entries even when the prediction there is NaN."""
    path = write_synthetic(tmp_path / "holes.nc", holes=[(0, 25, 16), (5, 25, 16)])
    grid = ModelGrid(sites={"okla": [36.4, -97.5]})
    spec = ObservationSpec(
        "t", str(path), "tas", "ts", "K", "identity+site", site="okla", error=0.5
    )
    variable = load_observations([spec], grid, dtype=torch.float64)["t"]
    assert (~variable.mask).sum() == 2
    prediction = (variable.values + 1.0).clone()
    prediction[~variable.mask] = float("nan")
    prediction.requires_grad_(True)
    loss = variable.misfit(prediction)
    loss.backward()
    assert prediction.grad is not None
    assert torch.isfinite(prediction.grad).all()
    assert (prediction.grad[~variable.mask] == 0).all()
    # the naive loss shows why the mask is needed: NaN poisons the gradient
    naive_prediction = prediction.detach().clone().requires_grad_(True)
    raw = torch.where(variable.mask, variable.values, torch.tensor(float("nan")).double())
    squared = torch.where(variable.mask, (naive_prediction - raw).square(), torch.zeros_like(raw))
    squared.sum().backward()
    assert naive_prediction.grad is not None
    assert not torch.isfinite(naive_prediction.grad).all()


def test_misfit_matches_chi_square(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "t.nc")
    spec = ObservationSpec(
        "t", str(path), "tas", "ts", "K", "time_mean+zonal_mean", error=2.0, weight=3.0
    )
    obs = load_observations([spec], ModelGrid.latitude_bands(9), dtype=torch.float64)
    offset = obs["t"].values + 4.0  # every residual is 2 sigma
    torch.testing.assert_close(obs.misfit({"t": offset}), torch.tensor(12.0).double())
    with pytest.raises(KeyError, match="predictions lack"):
        obs.misfit({})
