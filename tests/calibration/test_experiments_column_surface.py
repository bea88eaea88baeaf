"""The column (TWP-ICE) and surface-flux (ARM SGP) experiments, their adapters and twins.

Every experiment file is also run for a few steps by ``test_runs.py`` (which discovers
``conf/experiment/*.yaml``); here are the properties specific to these two families.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from climgrad.calibration.adapters import ADAPTERS, ColumnAdapter, SurfaceFluxAdapter
from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.loop import run_calibration
from climgrad.constants import stefan_boltzmann
from climgrad.data import ModelGrid, ObservationError
from climgrad.models import FluxTowerModel, SiteColumnModel
from climgrad.models.site_column import interpolate_log_pressure, largest_growth_rate
from climgrad.physics.insolation import daily_mean_insolation
from climgrad.physics.surface import latent_heat_flux, sensible_heat_flux, skin_temperature

from .conftest import FAST, REPO, compose_config

CPU = torch.device("cpu")


def _run(tmp_path: Path, overrides: list[str]) -> dict[str, Any]:
    return run_calibration(compose_config(overrides), tmp_path / "run", overrides=overrides)


def test_adapters_are_registered() -> None:
    assert isinstance(ADAPTERS["column"], ColumnAdapter)
    assert isinstance(ADAPTERS["surface_flux"], SurfaceFluxAdapter)


# ---------------------------------------------------------------------------------------------
# Log-pressure interpolation


def test_interpolation_is_exact_for_profiles_linear_in_log_pressure() -> None:
    pressure = torch.linspace(1e4, 1e5, 12, dtype=torch.float64)
    profile = 300.0 + 40.0 * torch.log(pressure / 1e5)
    target = torch.tensor([1.05e5, 9.25e4, 5e4, 1.5e4, 9e3], dtype=torch.float64)
    result = interpolate_log_pressure(profile, pressure, target)
    # exact inside and, by linear extrapolation, outside the levels
    torch.testing.assert_close(result, 300.0 + 40.0 * torch.log(target / 1e5))
    # on the levels it returns the values
    torch.testing.assert_close(interpolate_log_pressure(profile, pressure, pressure), profile)


def test_interpolation_gradient_matches_finite_differences() -> None:
    pressure = torch.linspace(1e4, 1e5, 6, dtype=torch.float64)
    values = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1.2e4, 3.3e4, 7.7e4, 1.0e5], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda v: interpolate_log_pressure(v, pressure, target), (values,)
    )


def test_interpolation_rejects_unsorted_pressure() -> None:
    with pytest.raises(ValueError, match="increase"):
        interpolate_log_pressure(torch.ones(3), torch.tensor([3.0, 2.0, 1.0]), torch.tensor([2.5]))


# ---------------------------------------------------------------------------------------------
# Column adapter


@pytest.fixture(scope="module")
def column() -> tuple[ColumnAdapter, SiteColumnModel]:
    adapter = ColumnAdapter()
    model = adapter.build({"levels": 20}, dtype=torch.float64, device=CPU)
    assert isinstance(model, SiteColumnModel)
    return adapter, model


def test_column_insolation_is_darwin_in_january(column: tuple[Any, SiteColumnModel]) -> None:
    _, model = column
    expected = daily_mean_insolation(
        torch.tensor(-12.4, dtype=torch.float64), torch.tensor(22.0, dtype=torch.float64)
    )
    torch.testing.assert_close(model.insolation[0], expected)
    assert 440.0 < float(model.insolation[0]) < 490.0  # austral summer in the deep tropics


def test_column_window_keeps_1000_to_250_hpa(column: tuple[ColumnAdapter, Any]) -> None:
    adapter, model = column
    spec_grid = ModelGrid(pressure_levels=[1e5, 8.5e4, 5e4, 2.5e4, 2e4, 1.5e4, 1e4, 5e3])
    grid = adapter.observation_grid(model, spec_grid)
    assert grid.pressure_levels == [2.5e4, 5e4, 8.5e4, 1e5]
    with pytest.raises(ValueError, match="top_pressure"):
        model.window([5e3, 1e3])
    with pytest.raises(CalibrationError, match=r"model\.options: no observation level"):
        adapter.observation_grid(model, ModelGrid(pressure_levels=[5e3, 1e3]))
    adapter.observation_grid(model, ModelGrid(pressure_levels=[1e5, 7e4, 4e4, 2.5e4]))


def test_column_warm_start_finds_the_cold_start_equilibrium(
    column: tuple[ColumnAdapter, SiteColumnModel],
) -> None:
    adapter, model = column
    model.warm_state = None
    with torch.no_grad():
        cold = adapter.simulate(model, {"warm_start": False})["air_temperature"]
        # move a parameter and come back: the warm start must return to the same branch
        model.configure_parameters({"surface_optical_depth": {"value": 3.6}})
        adapter.simulate(model, {})
        model.configure_parameters({"surface_optical_depth": {"value": 4.0}})
        warm = adapter.simulate(model, {})["air_temperature"]
    torch.testing.assert_close(warm, cold, atol=1e-8, rtol=0)
    # warm in the troposphere: the profile decreases with height
    assert bool((cold[1:] > cold[:-1]).all())


def test_column_solves_from_a_bad_warm_start_and_reports_stability(
    column: tuple[ColumnAdapter, SiteColumnModel],
) -> None:
    adapter, model = column
    with torch.no_grad():
        reference = adapter.simulate(model, {"warm_start": False})["air_temperature"]
        assert model.warm_state is not None
        model.warm_state = {
            "air_temperature": torch.full_like(model.warm_state["air_temperature"], 150.0),
            "surface_temperature": torch.full_like(model.warm_state["surface_temperature"], 400.0),
        }
        result = adapter.simulate(model, {})["air_temperature"]
    # The column has several equilibria that differ in the upper, optically thin layers (here
    # the one from the bad start is linearly stable, the cold start's is not); in the default
    # window (1000-250 hPa) they agree to a small fraction of the observation error.
    assert float(model.observation_pressure.min()) >= 2.5e4
    torch.testing.assert_close(result, reference, atol=0.2, rtol=0)
    rate = adapter.derived(model, {})["largest_growth_rate_per_day"]
    assert rate == pytest.approx(largest_growth_rate(model, model.warm_state))
    assert abs(rate) < 1.0  # slow modes (radiative, days to months)


def test_column_profile_gradient_matches_finite_differences(
    column: tuple[ColumnAdapter, SiteColumnModel],
) -> None:
    adapter, model = column
    model.configure_parameters(
        {
            "surface_optical_depth": {"value": 4.0, "learn": True},
            "critical_lapse_rate": {"value": 6.5e-3, "learn": True},
        }
    )
    weights = torch.linspace(1.0, 2.0, len(model.observation_pressure), dtype=torch.float64)

    def objective() -> torch.Tensor:
        return (weights * adapter.simulate(model, {})["air_temperature"]).sum()

    from climgrad.params import display_names

    infos = display_names(model)
    model.zero_grad()
    objective().backward()
    for name in ("surface_optical_depth", "critical_lapse_rate"):
        raw = infos[name].raw
        assert raw.grad is not None and float(raw.grad.abs()) > 0, name
        step = 1e-5
        with torch.no_grad():
            raw.add_(step)
            plus = float(objective())
            raw.sub_(2 * step)
            minus = float(objective())
            raw.add_(step)
        assert float(raw.grad) == pytest.approx((plus - minus) / (2 * step), rel=1e-4), name


def test_column_unknown_option_lists_the_site_options() -> None:
    with pytest.raises(CalibrationError, match="day_of_year"):
        ColumnAdapter().check_options({"latitud": 0.0}, {})


# ---------------------------------------------------------------------------------------------
# Surface-flux adapter


TOWER = REPO / "data" / "surface_flux" / "arm_sgp_E39_20230601"
TOWER_FILES = {
    "flux_file": str(TOWER / "sgpecorsfE39.b1.20230601.000000.nc"),
    "radiation_file": str(TOWER / "sgpsebsE39.b1.20230601.000000.cdf"),
}


@pytest.fixture(scope="module")
def tower() -> FluxTowerModel:
    model = SurfaceFluxAdapter().build(TOWER_FILES, dtype=torch.float64, device=CPU)
    assert isinstance(model, FluxTowerModel)
    return model


def test_skin_temperature_inverts_gray_emission() -> None:
    temperature = torch.tensor([280.0, 300.0, 320.0], dtype=torch.float64)
    down = torch.tensor([300.0, 380.0, 420.0], dtype=torch.float64)
    up = 0.98 * stefan_boltzmann * temperature**4 + 0.02 * down
    torch.testing.assert_close(skin_temperature(up, down, 0.98), temperature)
    with pytest.raises(ValueError, match="emissivity"):
        skin_temperature(up, down, 1.5)


def test_tower_reads_the_arm_day(tower: FluxTowerModel) -> None:
    state = tower.driving_state()
    assert all(v.shape == (48,) for v in state.values())
    assert 9.0e4 < float(state["surface_pressure"].min()) < 1.0e5  # kPa in the file -> Pa
    assert 280.0 < float(state["surface_temperature"].min())
    assert float(state["surface_temperature"].max()) < 330.0
    # daytime skin warmer than the air
    difference = state["surface_temperature"] - state["air_temperature"]
    assert float(difference.max()) > 3.0


def test_tower_fluxes_are_the_bulk_formulae(tower: FluxTowerModel) -> None:
    adapter = SurfaceFluxAdapter()
    tower.configure_parameters(
        {"heat_exchange": {"value": 5e-3}, "moisture_exchange": {"value": 2e-3}}
    )
    outputs = adapter.simulate(tower, {})
    state = tower.driving_state()
    wind = torch.sqrt(state["wind_speed"] ** 2 + 0.5**2)  # the default gustiness
    expected_h = sensible_heat_flux(
        state["surface_temperature"], state["air_temperature"], wind, 5e-3, state["air_density"]
    )
    expected_e = latent_heat_flux(
        state["surface_temperature"],
        state["specific_humidity"],
        wind,
        2e-3,
        state["air_density"],
        state["surface_pressure"],
    )
    torch.testing.assert_close(outputs["sensible_heat_flux"], expected_h)
    torch.testing.assert_close(outputs["latent_heat_flux"], expected_e)
    assert outputs["sensible_heat_flux"].requires_grad


def test_tower_missing_file_is_one_line() -> None:
    files = {**TOWER_FILES, "flux_file": "no/such.nc"}
    with pytest.raises(ObservationError, match="does not exist") as error:
        SurfaceFluxAdapter().build(files, dtype=torch.float64, device=CPU)
    assert "\n" not in str(error.value)
    with pytest.raises(CalibrationError, match="flux_file is not set"):
        SurfaceFluxAdapter().build({}, dtype=torch.float64, device=CPU)


# ---------------------------------------------------------------------------------------------
# Experiments (a few steps through the same helpers as test_runs.py)


def test_surface_flux_arm_fits_c_h_near_the_indicative_value(tmp_path: Path) -> None:
    metrics = _run(tmp_path, ["experiment=surface_flux_arm", *FAST, "trainer.max_steps=3"])
    c_h = metrics["parameters"]["heat_exchange"]
    # shared data README: median C_H ~ 0.0075 for flag <= 1, U > 1 m s-1, |Ts - Ta| > 1 K
    assert 0.004 < c_h < 0.011
    assert 0 < metrics["parameters"]["moisture_exchange"] < c_h
    assert set(metrics["rmse"]) == {"sensible_heat_flux", "latent_heat_flux"}


def test_surface_flux_stability_option_runs(tmp_path: Path) -> None:
    overrides = ["experiment=surface_flux_arm", *FAST, "model.options.stability=true"]
    metrics = _run(tmp_path, overrides)
    assert metrics["steps"] == 3 and metrics["loss"]["total"] < float("inf")


def test_twin_surface_flux_recovers_the_truth(tmp_path: Path) -> None:
    metrics = _run(tmp_path, ["experiment=twin_surface_flux", *FAST, "trainer.max_steps=3"])
    assert metrics["parameters"]["heat_exchange"] == pytest.approx(6.0e-3, rel=1e-4)
    assert metrics["parameters"]["moisture_exchange"] == pytest.approx(2.5e-3, rel=1e-4)


def test_twin_column_moves_towards_the_truth(tmp_path: Path) -> None:
    overrides = ["experiment=twin_column", *FAST, "model.options.levels=20"]
    metrics = _run(tmp_path, overrides)
    assert metrics["steps"] == 3 and metrics["skipped_steps"] == 0
    # the loss falls: the best parameters are not the starting ones
    assert metrics["best_step"] > 0


def test_rrtmg_column_with_a_missing_background_file_is_one_line(tmp_path: Path) -> None:
    overrides = [
        "experiment=column_rrtmg_twpice",
        *FAST,
        "model.options.background=data/single_column/no_such_atmosphere.dat",
    ]
    with pytest.raises(ObservationError, match="no such file") as error:
        _run(tmp_path, overrides)
    assert "\n" not in str(error.value) and "afgl_standard_atmospheres" in str(error.value)
    assert not (tmp_path / "run" / "params.nc").exists()


def test_column_warm_state_is_checkpointed_so_resume_and_load_run_follow_the_run(
    tmp_path: Path,
) -> None:
    """The warm state is a buffer: resume is bit-identical and load_run reproduces the fit."""
    from climgrad.results import load_run

    common = [
        "experiment=column_twpice",
        "trainer.progress=false",
        "trainer.checkpoint_every=2",
        "optimizer.schedule.name=constant",
    ]
    full = [*common, "trainer.max_steps=4"]
    metrics = run_calibration(compose_config(full), tmp_path / "full", overrides=full)
    first = [*common, "trainer.max_steps=2"]
    run_calibration(compose_config(first), tmp_path / "split", overrides=first)
    resumed = [*common, "trainer.max_steps=4", "trainer.resume=true"]
    run_calibration(compose_config(resumed), tmp_path / "split", overrides=resumed)
    one = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    other = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=True)
    assert "warm_air_temperature" in one["model"]
    assert not bool(torch.isnan(one["model"]["warm_surface_temperature"]).any())
    for key, value in one["model"].items():
        assert torch.equal(other["model"][key], value), key
    # The outputs describe the best state, which best.pt (load_run's default) holds.
    run = load_run(tmp_path / "full")
    assert run.compare().attrs["rmse_air_temperature"] == pytest.approx(
        metrics["rmse"]["air_temperature"], rel=1e-9
    )
