"""Tests of climgrad.physics.surface: bulk sensible and latent heat fluxes and SurfaceFluxes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from climgrad.autograd.verify import check_gradients, taylor_test
from climgrad.constants import (
    gravity,
    heat_capacity_dry_air,
    latent_heat_vaporization,
    stefan_boltzmann,
)
from climgrad.physics.surface import (
    SurfaceFluxes,
    _LatentHeatFluxFunction,
    _SensibleHeatFluxFunction,
    bulk_richardson_number,
    effective_wind_speed,
    latent_heat_flux,
    latent_heat_flux_kernel,
    sensible_heat_flux,
    sensible_heat_flux_kernel,
    skin_temperature,
    stability_correction,
)
from climgrad.physics.thermo import saturation_specific_humidity

F64 = torch.float64


def tensor(values: object, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=grad)


def sensible_inputs() -> tuple[torch.Tensor, ...]:
    """Broadcasting inputs: (time,) temperatures, scalar coefficient, (1,) density."""
    return (
        tensor([300.0, 295.0, 288.0, 280.0], grad=True),  # surface temperature
        tensor([297.0, 296.0, 285.5, 281.0], grad=True),  # air temperature
        tensor([3.0, 1.5, 6.0, 0.5], grad=True),  # wind speed
        tensor(1.5e-3, grad=True),  # exchange coefficient
        tensor([1.15], grad=True),  # air density
        tensor(1004.0, grad=True),  # heat capacity
    )


def latent_inputs() -> tuple[torch.Tensor, ...]:
    return (
        tensor([300.0, 295.0, 288.0, 280.0], grad=True),  # surface temperature
        tensor([0.015, 0.012, 0.011, 0.004], grad=True),  # specific humidity
        tensor([3.0, 1.5, 6.0, 0.5], grad=True),  # wind speed
        tensor(1.2e-3, grad=True),  # exchange coefficient
        tensor([1.15, 1.16, 1.2, 1.25], grad=True),  # air density
        tensor(9.8e4, grad=True),  # surface pressure
        tensor(2.5e6, grad=True),  # latent heat
    )


def sensible(*args: torch.Tensor) -> torch.Tensor:
    return sensible_heat_flux(*args[:5], heat_capacity=args[5])


def latent(*args: torch.Tensor, formula: str = "bolton") -> torch.Tensor:
    return latent_heat_flux(*args[:6], latent_heat=args[6], formula=formula)  # type: ignore[arg-type]


def column_state(**overrides: torch.Tensor) -> dict[str, torch.Tensor]:
    state = {
        "surface_temperature": tensor([302.0, 290.0, 275.0]),
        "air_temperature": tensor([299.0, 291.0, 276.5]),
        "specific_humidity": tensor([0.016, 0.009, 0.003]),
        "wind_speed": tensor([4.0, 0.3, 8.0]),
        "surface_pressure": tensor([1.0e5, 9.7e4, 8.5e4]),
    }
    state.update(overrides)
    return state


# ---------------------------------------------------------------------------------------------
# Sensible heat flux
# ---------------------------------------------------------------------------------------------


def test_sensible_heat_flux_value_and_sign() -> None:
    flux = sensible_heat_flux(tensor([300.0, 290.0]), tensor([298.0, 292.0]), 5.0, 1.0e-3, 1.2)
    expected = 1.2 * heat_capacity_dry_air * 1.0e-3 * 5.0 * tensor([2.0, -2.0])
    assert torch.allclose(flux, expected, rtol=1e-14)


def test_sensible_heat_flux_broadcasts_and_follows_dtype() -> None:
    flux = sensible_heat_flux(
        torch.full((2, 3), 300.0), torch.full((3,), 299.0), torch.ones(2, 1), 1.0e-3, 1.2
    )
    assert flux.shape == (2, 3)
    assert flux.dtype == torch.float32


def test_sensible_backward_matches_autograd_of_kernel() -> None:
    inputs = sensible_inputs()
    custom = torch.autograd.grad(_SensibleHeatFluxFunction.apply(*inputs).sum(), inputs)
    reference = torch.autograd.grad(sensible_heat_flux_kernel(*inputs).sum(), inputs)
    for a, b in zip(custom, reference):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=1e-13)


def test_sensible_backward_analytic() -> None:
    ts, ta, wind, coefficient, density, cp = sensible_inputs()
    flux = sensible(ts, ta, wind, coefficient, density, cp)
    grad_ts, grad_c = torch.autograd.grad(flux.sum(), (ts, coefficient))
    assert torch.allclose(grad_ts, density * cp * coefficient * wind)
    assert torch.allclose(grad_c, (flux / coefficient).sum())


def test_sensible_gradients() -> None:
    inputs = sensible_inputs()
    names = ["Ts", "Ta", "V", "C_H", "rho", "cp"]
    check_gradients(sensible, inputs, names=names, strict=True)
    assert torch.autograd.gradgradcheck(sensible, inputs)


def test_sensible_taylor_rate_two() -> None:
    result = taylor_test(sensible, sensible_inputs())
    assert result.passed, str(result)


# Winds in the documented regime: calm (exactly 0) or a measurable wind, here from 1 mm s-1. A
# positive wind far below that, such as the subnormal 5e-324 m s-1 that st.floats(0.0, 20.0) can
# draw, makes rho c_p C_H V dT underflow to exactly 0, so "V > 0 implies a flux" fails in float64.
WIND_SPEEDS = st.one_of(st.just(0.0), st.floats(1e-3, 20.0))


@settings(max_examples=25, deadline=None)
@given(
    st.floats(250.0, 320.0),
    st.floats(-15.0, 15.0),
    st.floats(0.1, 10.0),
    WIND_SPEEDS,
    st.floats(5e-4, 1e-2),
)
def test_sensible_heat_flux_increases_with_temperature_difference(
    air: float, difference: float, step: float, wind: float, coefficient: float
) -> None:
    def flux(surface: float) -> float:
        return float(sensible_heat_flux(tensor(surface), tensor(air), wind, coefficient, 1.2))

    assert flux(air) == 0.0
    assert flux(air + difference + step) >= flux(air + difference)
    if wind > 0:
        assert flux(air + difference + step) > flux(air + difference)
        represented = (air + difference) - air  # the difference as float64 can hold it
        assert (flux(air + difference) > 0) == (represented > 0)


def test_sensible_rejects_celsius_and_negative_wind() -> None:
    with pytest.raises(ValueError, match=r"adding 273\.15"):
        sensible_heat_flux(tensor([25.0]), 20.0, 3.0, 1e-3, 1.2)
    with pytest.raises(ValueError, match="wind_speed"):
        sensible_heat_flux(tensor([300.0]), 299.0, -3.0, 1e-3, 1.2)
    with pytest.raises(ValueError, match="`wind_speed` must be finite"):
        sensible_heat_flux(tensor([300.0]), 299.0, tensor([3.0, float("inf")]), 1e-3, 1.2)
    with pytest.raises(ValueError, match="`wind_speed` must be finite"):
        latent_heat_flux(tensor([300.0]), 0.01, float("inf"), 1e-3, 1.2, 1e5)
    with pytest.raises(ValueError, match="NaN"):
        sensible_heat_flux(tensor([300.0]), 299.0, float("nan"), 1e-3, 1.2)
    with pytest.raises(ValueError, match="NaN"):
        latent_heat_flux(tensor([300.0]), tensor([0.01, float("nan")]), 3.0, 1e-3, 1.2, 1e5)


# ---------------------------------------------------------------------------------------------
# Latent heat flux
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("formula", ["bolton", "clausius_clapeyron"])
def test_latent_backward_matches_autograd_of_kernel(formula: str) -> None:
    inputs = latent_inputs()
    custom = torch.autograd.grad(_LatentHeatFluxFunction.apply(*inputs, formula).sum(), inputs)
    reference = torch.autograd.grad(latent_heat_flux_kernel(*inputs, formula).sum(), inputs)
    for a, b in zip(custom, reference):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("formula", ["bolton", "clausius_clapeyron"])
def test_latent_gradients(formula: str) -> None:
    inputs = latent_inputs()
    names = ["Ts", "q", "V", "C_E", "rho", "ps", "L"]
    check_gradients(lambda *a: latent(*a, formula=formula), inputs, names=names, strict=True)
    assert torch.autograd.gradgradcheck(lambda *a: latent(*a, formula=formula), inputs)


def test_latent_heat_flux_vanishes_at_saturation_and_matches_formula() -> None:
    ts, ps = tensor([300.0, 280.0]), tensor([1.0e5, 9.0e4])
    saturated = saturation_specific_humidity(ts, ps)
    zero = latent_heat_flux(ts, saturated, 5.0, 1.2e-3, 1.2, ps)
    assert torch.allclose(zero, torch.zeros_like(zero), atol=1e-12)
    flux = latent_heat_flux(ts, 0.5 * saturated, 5.0, 1.2e-3, 1.2, ps)
    expected = 1.2 * latent_heat_vaporization * 1.2e-3 * 5.0 * 0.5 * saturated
    assert torch.allclose(flux, expected, rtol=1e-14)


@settings(max_examples=25, deadline=None)
@given(st.floats(260.0, 310.0), st.floats(0.01, 5.0), st.floats(0.0, 0.02))
def test_latent_heat_flux_increases_with_surface_temperature(
    surface: float, step: float, humidity: float
) -> None:
    def flux(temperature: float) -> float:
        return float(latent_heat_flux(tensor(temperature), humidity, 4.0, 1.2e-3, 1.2, 1.0e5))

    assert flux(surface + step) > flux(surface)


# ---------------------------------------------------------------------------------------------
# Wind floor and stability
# ---------------------------------------------------------------------------------------------


def test_effective_wind_speed_floor_and_smoothness() -> None:
    wind = tensor([0.0, 0.5, 10.0], grad=True)
    effective = effective_wind_speed(wind, 1.0)
    assert torch.allclose(effective, torch.sqrt(wind.detach() ** 2 + 1.0))
    assert bool((effective >= 1.0).all())
    (grad,) = torch.autograd.grad(effective.sum(), wind)
    assert bool(torch.isfinite(grad).all())
    assert float(grad[0]) == 0.0


def test_gustiness_keeps_fluxes_alive_in_calm_and_subnormal_winds() -> None:
    """The process applies the gust floor, so a wind of 0 or 5e-324 m s-1 still exchanges heat."""
    for wind in (0.0, 5e-324):
        _, diagnostics = SurfaceFluxes(gustiness=1.0).double()(
            column_state(wind_speed=tensor([wind, wind, wind]))
        )
        torch.testing.assert_close(diagnostics["effective_wind_speed"], tensor([1.0, 1.0, 1.0]))
        assert bool((diagnostics["sensible_heat_flux"] != 0).all())


def test_stability_correction_is_bounded_monotone_and_c1() -> None:
    richardson = torch.linspace(-50.0, 50.0, 2001, dtype=F64, requires_grad=True)
    factor = stability_correction(richardson, maximum_enhancement=3.0)
    assert bool(((factor > 0) & (factor < 3.0)).all())
    assert bool((factor.diff() <= 0).all())
    (slope,) = torch.autograd.grad(factor.sum(), richardson)
    assert bool(torch.isfinite(slope).all())
    # Both branches leave Ri = 0 with slope -b (Louis 1979): continuous derivative.
    for side in (-1e-7, 0.0, 1e-7):
        point = tensor(side, grad=True)
        (d,) = torch.autograd.grad(stability_correction(point), point)
        assert float(d) == pytest.approx(-9.4, rel=1e-5)
    assert float(stability_correction(tensor(0.0))) == 1.0


@settings(max_examples=25, deadline=None)
@given(st.floats(-20.0, 20.0), st.floats(1e-3, 5.0))
def test_stability_correction_decreases_with_stability(richardson: float, step: float) -> None:
    low = stability_correction(tensor(richardson))
    high = stability_correction(tensor(richardson + step))
    assert float(high) < float(low)


def test_bulk_richardson_number_sign() -> None:
    # Surface warmer than the air: unstable (negative); colder: stable (positive).
    richardson = bulk_richardson_number(tensor([305.0, 285.0]), tensor([300.0, 290.0]), 3.0, 10.0)
    assert float(richardson[0]) < 0 < float(richardson[1])
    neutral = 300.0 + gravity * 10.0 / heat_capacity_dry_air
    assert float(bulk_richardson_number(tensor(neutral), 300.0, 3.0, 10.0)) == pytest.approx(
        0.0, abs=1e-12
    )


# ---------------------------------------------------------------------------------------------
# Skin temperature from radiometers
# ---------------------------------------------------------------------------------------------


def test_skin_temperature_of_a_black_surface_inverts_stefan_boltzmann() -> None:
    temperature = tensor([250.0, 288.0, 320.0])
    upwelling = stefan_boltzmann * temperature**4
    # Emissivity 1 reflects nothing, so the downwelling flux plays no part.
    for downwelling in (tensor([0.0, 0.0, 0.0]), tensor([200.0, 350.0, 450.0])):
        result = skin_temperature(upwelling, downwelling, emissivity=1.0)
        torch.testing.assert_close(result, temperature, rtol=1e-14, atol=0.0)


@settings(max_examples=25, deadline=None)
@given(st.floats(200.0, 340.0), st.floats(100.0, 500.0), st.floats(0.9, 1.0))
def test_skin_temperature_round_trip(temperature: float, downwelling: float, emissivity: float):
    upwelling = emissivity * stefan_boltzmann * temperature**4 + (1 - emissivity) * downwelling
    result = skin_temperature(tensor(upwelling), tensor(downwelling), emissivity)
    assert float(result) == pytest.approx(temperature, rel=1e-12)


def test_skin_temperature_default_emissivity_and_errors() -> None:
    temperature, downwelling = tensor([290.0, 305.0]), tensor([330.0, 400.0])
    upwelling = 0.98 * stefan_boltzmann * temperature**4 + 0.02 * downwelling
    torch.testing.assert_close(skin_temperature(upwelling, downwelling), temperature)
    with pytest.raises(ValueError, match=r"`emissivity` must lie in \(0, 1\]"):
        skin_temperature(upwelling, downwelling, 1.5)
    with pytest.raises(ValueError, match="radiometer units"):
        skin_temperature(tensor([-1.0, 400.0]), downwelling)


# ---------------------------------------------------------------------------------------------
# SurfaceFluxes process
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stability", [False, True])
def test_surface_fluxes_conserve_energy(stability: bool) -> None:
    process = SurfaceFluxes(stability=stability, lowest_layer_pressure_thickness=4000.0).double()
    tendencies, diagnostics = process(column_state())
    layer_mass = 4000.0 / gravity
    budget = process.surface_heat_capacity * tendencies["surface_temperature"] + layer_mass * (
        heat_capacity_dry_air * tendencies["air_temperature"]
        + latent_heat_vaporization * tendencies["specific_humidity"]
    )
    fluxes = diagnostics["sensible_heat_flux"].abs() + diagnostics["latent_heat_flux"].abs()
    assert bool((budget.detach().abs() <= 1e-12 * fluxes.detach()).all())
    assert torch.allclose(
        diagnostics["evaporation_flux"] * latent_heat_vaporization, diagnostics["latent_heat_flux"]
    )


@pytest.mark.parametrize("stability", [False, True])
def test_surface_fluxes_gradients_and_parameter_liveness(stability: bool) -> None:
    process = SurfaceFluxes(stability=stability)
    state = column_state()
    for name in ("surface_temperature", "air_temperature", "specific_humidity", "wind_speed"):
        state[name].requires_grad_(True)
    report = check_gradients(process, (state,), names=["state"], strict=True)
    live = {r.target for r in report.results if r.check == "liveness" and r.passed}
    assert {"heat_exchange_coefficient", "moisture_exchange_coefficient", "gustiness"} <= live


def test_stability_correction_changes_fluxes_as_physics_says() -> None:
    neutral, _ = SurfaceFluxes().double()(column_state())
    corrected, diagnostics = SurfaceFluxes(stability=True).double()(column_state())
    richardson = diagnostics["bulk_richardson_number"]
    ratio = corrected["surface_temperature"] / neutral["surface_temperature"]
    assert torch.allclose(ratio, diagnostics["stability_factor"])
    assert bool(((ratio > 1) == (richardson < 0)).all())


def test_surface_fluxes_lowest_level_of_a_column() -> None:
    state = column_state()
    levels = 4
    column = dict(state)
    column["air_temperature"] = torch.stack(
        [state["air_temperature"] - 10.0 * k for k in range(levels - 1, -1, -1)], dim=-1
    )
    column["specific_humidity"] = state["specific_humidity"][:, None].expand(-1, levels)
    single, _ = SurfaceFluxes().double()(state)
    full, _ = SurfaceFluxes(lowest_level=-1).double()(column)
    assert full["air_temperature"].shape == (3, levels)
    assert torch.equal(full["air_temperature"][:, -1], single["air_temperature"])
    assert bool((full["air_temperature"][:, :-1] == 0).all())
    assert torch.equal(full["specific_humidity"][:, -1], single["specific_humidity"])


def test_surface_fluxes_use_observed_air_density() -> None:
    state = column_state(air_density=tensor([1.0, 1.0, 1.0]))
    _, observed = SurfaceFluxes().double()(state)
    _, ideal_gas = SurfaceFluxes().double()(column_state())
    assert not torch.allclose(observed["sensible_heat_flux"], ideal_gas["sensible_heat_flux"])
    assert torch.allclose(
        observed["sensible_heat_flux"] / state["air_density"],
        SurfaceFluxes().double()(column_state(air_density=tensor([2.0, 2.0, 2.0])))[1][
            "sensible_heat_flux"
        ]
        / 2.0,
    )


def test_surface_fluxes_missing_state_names_the_fix() -> None:
    state = column_state()
    del state["surface_pressure"]
    with pytest.raises(KeyError, match="surface_pressure"):
        SurfaceFluxes()(state)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_surface_fluxes_run_on_cuda() -> None:
    state = {k: v.cuda() for k, v in column_state().items()}
    process = SurfaceFluxes(stability=True).cuda()
    tendencies, diagnostics = process(state)
    assert diagnostics["latent_heat_flux"].device.type == "cuda"
    tendencies["surface_temperature"].sum().backward()
    assert process.heat_exchange_coefficient.grad is not None
    cpu, _ = SurfaceFluxes(stability=True)(column_state())
    assert torch.allclose(tendencies["surface_temperature"].cpu(), cpu["surface_temperature"])


# ---------------------------------------------------------------------------------------------
# Real data: ARM SGP E39 eddy-covariance fluxes (1 June 2023)
# ---------------------------------------------------------------------------------------------

_ARM_NAME = "surface_flux/arm_sgp_E39_20230601"
_ARM_DIRS = [
    Path(__file__).resolve().parents[2] / "data" / _ARM_NAME,
    Path("/work/shared/data") / _ARM_NAME,
]


def _arm_directory() -> Path:
    for directory in _ARM_DIRS:
        if (directory / "sgpecorsfE39.b1.20230601.000000.nc").exists():
            return directory
    pytest.skip("ARM SGP E39 surface-flux files not found")


def test_calibrate_heat_exchange_coefficient_on_arm_sgp() -> None:
    xarray = pytest.importorskip("xarray")
    directory = _arm_directory()
    with (
        xarray.open_dataset(directory / "sgpecorsfE39.b1.20230601.000000.nc") as flux,
        xarray.open_dataset(directory / "sgpsebsE39.b1.20230601.000000.cdf") as radiation,
    ):
        emissivity = 0.98
        skin = (
            (radiation["up_long"] - (1 - emissivity) * radiation["down_long"])
            / (emissivity * float(stefan_boltzmann))
        ) ** 0.25
        data = {
            "surface_temperature": skin.values,
            "air_temperature": flux["air_temperature"].values,  # K
            "wind_speed": flux["mean_wind"].values,  # m s-1
            "air_density": flux["air_density"].values,  # kg m-3
            "specific_humidity": flux["specific_humidity"].values,  # kg kg-1
            "surface_pressure": flux["air_pressure"].values * 1000.0,  # kPa -> Pa
            "observed": flux["sensible_heat_flux"].values,  # W m-2
            "flag": flux["flag_sensible_heat_flux"].values,
        }
    t = {k: torch.as_tensor(v, dtype=F64) for k, v in data.items()}
    mask = (
        (t["flag"] <= 1)
        & (t["wind_speed"] > 1)
        & ((t["surface_temperature"] - t["air_temperature"]).abs() > 1)
        & torch.isfinite(t["observed"])
    )
    t = {k: v[mask] for k, v in t.items()}
    assert len(t["observed"]) == 15  # as in shared/data/README.md

    # Least squares in C_H by gradient descent through the custom backward ...
    coefficient = tensor(1.0e-3, grad=True)
    optimizer = torch.optim.LBFGS([coefficient], lr=1.0, max_iter=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        model = sensible_heat_flux(
            t["surface_temperature"],
            t["air_temperature"],
            t["wind_speed"],
            coefficient,
            t["air_density"],
        )
        loss = ((model - t["observed"]) ** 2).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    # ... equals the closed form, since H is linear in C_H.
    basis = (
        t["air_density"]
        * heat_capacity_dry_air
        * t["wind_speed"]
        * (t["surface_temperature"] - t["air_temperature"])
    )
    closed_form = float((basis * t["observed"]).sum() / (basis**2).sum())
    assert float(coefficient.detach()) == pytest.approx(closed_form, rel=1e-6)
    assert 3e-3 < closed_form < 1.5e-2  # README: the median ratio is about 7.5e-3

    # The latent heat flux accepts the same SI quantities and is finite.
    latent = latent_heat_flux(
        t["surface_temperature"],
        t["specific_humidity"],
        t["wind_speed"],
        closed_form,
        t["air_density"],
        t["surface_pressure"],
    )
    assert bool(torch.isfinite(latent).all())


def test_dry_surface_fluxes_need_no_humidity_and_give_no_latent_heat():
    dry = SurfaceFluxes(
        heat_exchange_coefficient=1.5e-3,
        gustiness=1e-6,
        moisture=False,
        lowest_layer_pressure_thickness=2500.0,
        lowest_level=-1,
    ).double()
    state = {
        "surface_temperature": torch.tensor([290.0, 300.0], dtype=torch.float64),
        "air_temperature": torch.tensor([[250.0, 285.0], [260.0, 301.0]], dtype=torch.float64),
        "wind_speed": torch.tensor(5.0, dtype=torch.float64),
        "surface_pressure": torch.tensor(1.0e5, dtype=torch.float64),
        "air_density": torch.tensor(1.2, dtype=torch.float64),
    }
    tendencies, diagnostics = dry(state)
    assert "specific_humidity" not in tendencies
    assert torch.equal(diagnostics["latent_heat_flux"], torch.zeros(2, dtype=torch.float64))
    expected = 1.2 * 1004.0 * 1.5e-3 * 5.0 * torch.tensor([5.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(diagnostics["sensible_heat_flux"], expected, rtol=1e-9, atol=0)
    assert float(tendencies["air_temperature"][0, 0]) == 0.0
