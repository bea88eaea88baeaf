"""scripts/make_twin_data.py writes CF NetCDF twin observations that load back."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from climgrad.data import ObservationSpec, load_observations

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_twin_data.py"


def load_script():
    spec = importlib.util.spec_from_file_location("make_twin_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_twin_file_with_noise_loads_back(tmp_path):
    script = load_script()
    clean, noisy = tmp_path / "clean.nc", tmp_path / "noisy.nc"
    assert script.main(["experiment=twin_two_layer", "--output", str(clean)]) == 0
    assert (
        script.main(["experiment=twin_two_layer", "data.noise=true", "--output", str(noisy)]) == 0
    )
    with xr.open_dataset(clean) as a, xr.open_dataset(noisy) as b:
        assert a.attrs["Conventions"].startswith("CF") and "twin_two_layer" in a.attrs["history"]
        assert b.attrs["noise"].startswith("Gaussian")
        names = [n for n in a.data_vars if not n.endswith(("_error", "_weights", "_bnds"))]
        assert names
        for name in names:
            residual = (b[name] - a[name]).values / a[f"{name}_error"].values
            residual = residual[np.isfinite(residual)]
            assert abs(residual.mean()) < 0.5 and 0.5 < residual.std() < 1.5, name
            assert a[name].attrs["units"]


def test_non_twin_data_is_refused_and_nothing_is_written(tmp_path):
    script = load_script()
    target = tmp_path / "out.nc"
    with pytest.raises(SystemExit, match="choose a twin data config"):
        script.main(["experiment=ebm_ncep", "--output", str(target)])
    assert not target.exists()


def test_ebm_twin_loads_through_the_observation_pipeline(tmp_path):
    script = load_script()
    path = tmp_path / "ebm.nc"
    script.main(["experiment=twin_ebm1d", "--output", str(path)])
    from climgrad.data import ModelGrid

    spec = ObservationSpec(
        name="t",
        path=str(path),
        variable="surface_temperature",
        model_output="surface_temperature",
        units="K",
        error=1.0,
    )
    observed = load_observations([spec], ModelGrid.latitude_bands(90))
    values = observed["t"].values
    assert values.shape == (90,) and float(values.min()) > 200 and float(values.max()) < 320
