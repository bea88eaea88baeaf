"""The seasonal EBM1D adapter (``ebm1d_seasonal``) and its experiment ``ebm_ncep_seasonal``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from climgrad.calibration.adapters import get_adapter
from climgrad.calibration.adapters.ebm1d_seasonal import read_land_fraction
from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.experiment import build_experiment
from climgrad.calibration.loop import run_calibration
from climgrad.data import ObservationError

from .conftest import FAST, REPO, compose_config

LAND_FRACTION = REPO / "data" / "ebm_1d" / "land_fraction_zonal.nc"
#: A small, quick configuration of the experiment (12 bands of 15 degrees, 2 steps a month).
SMALL = [
    "experiment=ebm_ncep_seasonal",
    "model.options.bands=12",
    "model.simulate.steps_per_year=24",
    "trainer.device=cpu",
    "trainer.progress=false",
    "logger.figure_every=0",
]


def test_shipped_land_fraction_is_earths_on_any_bands():
    for bands in (12, 36):
        fraction = read_land_fraction(str(LAND_FRACTION), bands)
        edges = np.deg2rad(np.linspace(-90.0, 90.0, bands + 1))
        area = np.diff(np.sin(edges)) / 2.0
        assert float((fraction.numpy() * area).sum()) == pytest.approx(0.289, abs=0.002)
    # Antarctica is land, the Southern Ocean at 55-60 S is open sea, the Arctic Ocean mostly sea.
    fraction = read_land_fraction(str(LAND_FRACTION), 36)
    assert float(fraction[0]) > 0.99 and float(fraction[6]) < 0.01 and float(fraction[-1]) < 0.2
    assert LAND_FRACTION.stat().st_size < 200_000


def test_experiment_runs_a_few_steps_with_monthly_outputs(tmp_path: Path) -> None:
    overrides = [*SMALL, *FAST]
    metrics = run_calibration(compose_config(overrides), tmp_path / "run", overrides=overrides)
    assert metrics["steps"] == 3 and metrics["stop_reason"] == "max_steps"
    assert set(metrics["rmse"]) == {"surface_temperature", "outgoing_longwave"}
    derived = metrics["derived"]
    assert derived["ocean_mixed_layer_depth_m"] == pytest.approx(
        metrics["parameters"]["ocean_heat_capacity"] / 4.1813e6
    )
    assert 280.0 < derived["global_mean_surface_temperature_K"] < 295.0
    with xr.open_dataset(tmp_path / "run" / "fit.nc") as fit:
        assert fit["model_surface_temperature"].shape == (12, 12)  # (month, lat)
    with xr.open_dataset(tmp_path / "run" / "params.nc") as params:
        assert params["ocean_heat_capacity"].attrs["units"] == "J m-2 K-1"
        assert "heat_capacity" not in params
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["model"] == "ebm1d_seasonal"


def test_twin_recovers_the_heat_capacities_and_the_radiation_parameters() -> None:
    """Monthly T, OLR and reflected SW of known parameters; L-BFGS from the defaults finds them."""
    truth = {
        "A": 205.0,
        "B": 1.9,
        "D": 0.6,
        "a0": 0.31,
        "a2": 0.06,
        "land_heat_capacity": 8.0e6,
        "ocean_heat_capacity": 1.5e8,
    }
    overrides = [
        *SMALL,
        "data=twin_ebm1d",  # T, OLR and reflected SW of the truth, on the model's (month, lat)
        *(f"data.truth.{k}={v}" for k, v in truth.items() if k in ("A", "B", "D", "a0", "a2")),
        *(f"+data.truth.{k}={v}" for k, v in truth.items() if "heat_capacity" in k),
    ]
    problem = build_experiment(compose_config(overrides))
    parameters = problem.model.learnable_parameters()
    optimizer = torch.optim.LBFGS(
        parameters, lr=1.0, max_iter=60, line_search_fn="strong_wolfe", tolerance_grad=1e-12
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = problem.evaluate().total
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = problem.model.physical_parameters()
    for name, value in truth.items():
        assert float(fitted[name]) == pytest.approx(value, rel=1e-3), name
    assert float(problem.evaluate().total.detach()) < 1e-8


def test_bad_inputs_are_one_line_errors_naming_the_fix(tmp_path: Path) -> None:
    adapter = get_adapter("ebm1d_seasonal")
    with pytest.raises(CalibrationError, match="multiple of 12") as caught:
        problem = build_experiment(compose_config(SMALL))
        adapter.simulate(problem.model, {"steps_per_year": 50})
    assert "\n" not in str(caught.value)
    with pytest.raises(CalibrationError, match="land_fraction_file is not set"):
        adapter.build({"bands": 12}, dtype=torch.float64, device=torch.device("cpu"))
    # A land fraction in percent, outside [0, 1]: the data layer names the file and the fix.
    percent = tmp_path / "percent.nc"
    with xr.open_dataset(LAND_FRACTION) as data:
        scaled = data.copy()
        scaled["land_area_fraction"] = data["land_area_fraction"] * 100.0
        scaled["land_area_fraction"].attrs = {"units": "1"}  # mislabelled: percent, not 1
        scaled.to_netcdf(percent)
    with pytest.raises(ObservationError, match=r"go up to 100.*valid_range.*Fix:") as caught:
        adapter.build(
            {"bands": 12, "land_fraction_file": str(percent)},
            dtype=torch.float64,
            device=torch.device("cpu"),
        )
    assert "\n" not in str(caught.value) and "percent.nc" in str(caught.value)
    with pytest.raises(CalibrationError, match="not an option"):
        adapter.check_options({"land_fraction": [0.1]}, {})
