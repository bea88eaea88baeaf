"""The ``column_sites`` adapter: one column at several sites, parameters shared, losses summed.

Options fail with the key to fix; ``simulate(..., sites=...)`` gives any subset; the shared
parameters appear once in the optimizer, the posterior vector and ``params.nc``; the twin recovers
its truth; the AFGL observations load onto the gray model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import xarray as xr

from climgrad.calibration.adapters import get_adapter
from climgrad.calibration.adapters.multisite import ColumnSitesAdapter, site_output
from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.experiment import build_experiment
from climgrad.calibration.loop import run_calibration
from climgrad.calibration.posterior import ParameterVector
from climgrad.models.multisite import MultiSiteColumnModel

from .conftest import COLUMN_SITES_SMALL, compose_config

SMALL = COLUMN_SITES_SMALL
LEARNT = ["surface_optical_depth", "surface_albedo", "critical_lapse_rate"]


def _build(options: dict[str, Any]) -> Any:
    adapter = get_adapter("column_sites")
    return adapter.build(options, dtype=torch.float64, device=torch.device("cpu"))


def test_options_fail_with_the_key_to_fix() -> None:
    with pytest.raises(CalibrationError, match=r"model\.options\.sites is empty"):
        _build({})
    with pytest.raises(CalibrationError, match=r"sites\.a\.lat is not a site option"):
        _build({"sites": {"a": {"lat": 1.0}}})
    with pytest.raises(CalibrationError, match=r"sites\.a needs day_of_year"):
        _build({"sites": {"a": {"latitude": 1.0}}})
    with pytest.raises(CalibrationError, match=r"set model\.options\.background_dir"):
        _build({"radiation": "rrtmg", "sites": {"a": {"latitude": 1.0, "day_of_year": 80.0}}})
    adapter = get_adapter("column_sites")
    assert isinstance(adapter, ColumnSitesAdapter)
    assert {"sites", "background_dir", "levels", "top_pressure"} <= set(adapter.option_names())
    assert "latitude" not in adapter.option_names()
    with pytest.raises(CalibrationError, match=r"model\.options\.latitude is not an option"):
        adapter.check_options({"latitude": 1.0}, {})


@pytest.fixture(scope="module")
def problem() -> Any:
    return build_experiment(compose_config(SMALL))


def test_sites_are_simulated_alone_or_together(problem: Any) -> None:
    adapter, model = problem.adapter, problem.model
    assert isinstance(model, MultiSiteColumnModel)
    sites = adapter.sites(model)
    assert sites == ["tropical", "midlatitude_summer", "subarctic_summer"]
    with torch.no_grad():
        every = adapter.simulate(model, problem.simulate_options)
        one = adapter.simulate(model, problem.simulate_options, sites=["subarctic_summer"])
    assert list(every) == [site_output(s) for s in sites]
    assert list(one) == ["air_temperature_subarctic_summer"]
    assert torch.equal(one["air_temperature_subarctic_summer"], every[site_output(sites[2])])
    assert every["air_temperature_tropical"].shape == (9,)  # 1000-250 hPa
    # Different sunlight, different columns (the tropics warmer than the subarctic summer here).
    assert not torch.equal(every["air_temperature_tropical"], one[site_output(sites[2])])
    state = adapter.site_state(model, "tropical")
    assert len(state) == 2 and not bool(torch.isnan(state[1]).any())
    with pytest.raises(CalibrationError, match="no site 'arctic'"):
        adapter.simulate(model, problem.simulate_options, sites=["arctic"])
    derived = problem.derived(every)
    assert derived["insolation_W_m-2_tropical"] > derived["insolation_W_m-2_subarctic_summer"] - 60


def test_shared_parameters_appear_once(problem: Any, tmp_path: Path) -> None:
    vector = ParameterVector(problem.model)
    assert vector.names == LEARNT and vector.size == 3
    overrides = [*SMALL, "optimizer=adam", "trainer.max_steps=1"]
    run_calibration(compose_config(overrides), tmp_path / "run", overrides=overrides)
    with xr.open_dataset(tmp_path / "run" / "params.nc") as params:
        names = sorted(str(name) for name in params.data_vars)
    assert names == sorted([*LEARNT, "pressure_exponent", "heat_exchange", "relaxation_time"]), (
        names
    )


def test_the_twin_recovers_its_truth(tmp_path: Path) -> None:
    overrides = [*SMALL, "loss.prior_weight=0", "trainer.max_steps=8", "trainer.plateau_patience=0"]
    metrics = run_calibration(compose_config(overrides), tmp_path / "run", overrides=overrides)
    truth = {"surface_optical_depth": 3.0, "critical_lapse_rate": 6.0e-3, "surface_albedo": 0.33}
    for name, value in truth.items():
        assert metrics["parameters"][name] == pytest.approx(value, rel=1e-4), name
    assert metrics["loss"]["total"] < 1e-6


def test_the_afgl_profiles_load_onto_the_gray_model() -> None:
    problem = build_experiment(
        compose_config(["experiment=column_sites_twin", "data=afgl_sites", "trainer.device=cpu"])
    )
    names = list(problem.observations)
    assert names == [
        "air_temperature_tropical",
        "air_temperature_midlatitude_summer",
        "air_temperature_subarctic_summer",
        "air_temperature_us_standard",
    ]
    tropical = problem.observations["air_temperature_tropical"]
    assert tropical.shape == (9,) and float(tropical.values[-1]) == pytest.approx(299.0, abs=0.1)
    problem.check()
