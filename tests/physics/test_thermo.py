"""Tests of climgrad.physics.thermo: saturation, humidity conversions, large-scale condensation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from climgrad.autograd.verify import check_gradients, taylor_test
from climgrad.constants import heat_capacity_dry_air, latent_heat_vaporization
from climgrad.physics.thermo import (
    LargeScaleCondensation,
    _SaturationAdjustmentFunction,
    _SaturationSpecificHumidityFunction,
    _SaturationVapourPressureFunction,
    condensation_rate,
    log_saturation_vapour_pressure_derivative,
    relative_humidity,
    saturation_adjustment,
    saturation_adjustment_kernel,
    saturation_specific_humidity,
    saturation_specific_humidity_kernel,
    saturation_vapour_pressure,
    saturation_vapour_pressure_kernel,
    specific_humidity_from_relative_humidity,
)

F64 = torch.float64
FORMULAS = ("bolton", "clausius_clapeyron")
MODES = ("exact", "smooth", "straight_through")
KAPPA = latent_heat_vaporization / heat_capacity_dry_air


def tensor(values: object, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=grad)


def moist_column(relative: list[float]) -> dict[str, torch.Tensor]:
    """A (1, level) state at the given humidity ratios q / q_s(T, p)."""
    temperature = torch.linspace(300.0, 260.0, len(relative), dtype=F64)
    pressure = torch.linspace(1.0e5, 5.0e4, len(relative), dtype=F64)
    saturation = saturation_specific_humidity_kernel(temperature, pressure)
    humidity = tensor(relative) * saturation
    return {
        "air_temperature": temperature[None],
        "specific_humidity": humidity[None],
        "air_pressure": pressure[None],
    }


# ---------------------------------------------------------------------------------------------
# Saturation vapour pressure
# ---------------------------------------------------------------------------------------------


def test_bolton_reference_values() -> None:
    values = saturation_vapour_pressure(tensor([273.15, 303.15]))
    assert float(values[0]) == pytest.approx(611.2, rel=1e-12)
    # Wexler / Goff-Gratch give 4243-4246 Pa at 30 degC; Bolton is within 0.1 %.
    assert float(values[1]) == pytest.approx(4243.0, rel=1e-3)


@pytest.mark.parametrize("formula", FORMULAS)
def test_clausius_clapeyron_rate_near_288_kelvin(formula: str) -> None:
    temperature = tensor([288.0])
    rate = float(log_saturation_vapour_pressure_derivative(temperature, formula))
    assert 0.06 < rate < 0.075  # the textbook "about 7 % per K"
    finite_difference = float(
        saturation_vapour_pressure(temperature + 0.5, formula=formula)
        / saturation_vapour_pressure(temperature - 0.5, formula=formula)
    )
    assert math.log(finite_difference) == pytest.approx(rate, rel=1e-4)


def test_formulas_agree_near_freezing() -> None:
    temperature = torch.linspace(253.15, 303.15, 11, dtype=F64)
    bolton = saturation_vapour_pressure(temperature)
    clausius = saturation_vapour_pressure(temperature, formula="clausius_clapeyron")
    assert torch.allclose(bolton, clausius, rtol=0.03)


@pytest.mark.parametrize("formula", FORMULAS)
def test_vapour_pressure_backward_matches_autograd_of_kernel(formula: str) -> None:
    temperature = torch.linspace(240.0, 310.0, 8, dtype=F64, requires_grad=True)
    (custom,) = torch.autograd.grad(
        _SaturationVapourPressureFunction.apply(temperature, formula).sum(), temperature
    )
    (reference,) = torch.autograd.grad(
        saturation_vapour_pressure_kernel(temperature, formula).sum(), temperature
    )
    assert torch.allclose(custom, reference, rtol=1e-13)


@pytest.mark.parametrize("formula", FORMULAS)
def test_vapour_pressure_gradients(formula: str) -> None:
    temperature = tensor([250.0, 288.0, 305.0], grad=True)
    check_gradients(
        lambda t: saturation_vapour_pressure(t, formula=formula), (temperature,), strict=True
    )
    assert torch.autograd.gradgradcheck(
        lambda t: saturation_vapour_pressure(t, formula=formula), (temperature,)
    )


@settings(max_examples=25, deadline=None)
@given(st.floats(230.0, 320.0), st.floats(0.01, 5.0))
def test_vapour_pressure_increases_with_temperature(temperature: float, step: float) -> None:
    for formula in FORMULAS:
        low = saturation_vapour_pressure(tensor(temperature), formula=formula)
        high = saturation_vapour_pressure(tensor(temperature + step), formula=formula)
        assert float(high) > float(low)


def test_celsius_input_is_rejected_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"adding 273\.15"):
        saturation_vapour_pressure(tensor([15.0, -3.2]))


def test_hectopascal_pressure_is_rejected_with_the_fix() -> None:
    with pytest.raises(ValueError, match="multiply hPa"):
        saturation_specific_humidity(tensor(303.0), 1000.0)


def test_missing_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        saturation_vapour_pressure(tensor([288.0, float("nan")]))


# ---------------------------------------------------------------------------------------------
# Saturation specific humidity and conversions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("formula", FORMULAS)
def test_saturation_humidity_backward_matches_autograd_of_kernel(formula: str) -> None:
    temperature = torch.linspace(250.0, 305.0, 6, dtype=F64, requires_grad=True)
    pressure = torch.linspace(4.0e4, 1.05e5, 6, dtype=F64, requires_grad=True)
    custom = torch.autograd.grad(
        _SaturationSpecificHumidityFunction.apply(temperature, pressure, formula).sum(),
        (temperature, pressure),
    )
    reference = torch.autograd.grad(
        saturation_specific_humidity_kernel(temperature, pressure, formula).sum(),
        (temperature, pressure),
    )
    for a, b in zip(custom, reference):
        assert torch.allclose(a, b, rtol=1e-12)


def test_saturation_humidity_gradients_with_broadcasting() -> None:
    temperature = tensor([[260.0, 280.0, 300.0]], grad=True)  # (1, level)
    pressure = tensor([[9.0e4], [1.0e5]], grad=True)  # (column, 1)
    check_gradients(
        saturation_specific_humidity, (temperature, pressure), names=["T", "p"], strict=True
    )
    assert torch.autograd.gradgradcheck(saturation_specific_humidity, (temperature, pressure))


def test_saturation_humidity_vmap_and_grad() -> None:
    temperature = torch.linspace(260.0, 300.0, 5, dtype=F64)
    pressure = torch.full((5,), 9.0e4, dtype=F64)
    slopes = torch.func.vmap(torch.func.grad(lambda t, p: saturation_specific_humidity(t, p)))(
        temperature, pressure
    )
    temperature.requires_grad_(True)
    (expected,) = torch.autograd.grad(
        saturation_specific_humidity(temperature, pressure).sum(), temperature
    )
    assert torch.allclose(slopes, expected, rtol=1e-13)


@settings(max_examples=25, deadline=None)
@given(st.floats(0.0, 1.2), st.floats(235.0, 310.0), st.floats(5.0e4, 1.05e5))
def test_relative_specific_humidity_round_trip(
    relative: float, temperature: float, pressure: float
) -> None:
    humidity = specific_humidity_from_relative_humidity(
        tensor(relative), tensor(temperature), tensor(pressure)
    )
    back = relative_humidity(humidity, tensor(temperature), tensor(pressure))
    assert float(back) == pytest.approx(relative, rel=1e-12, abs=1e-15)
    again = specific_humidity_from_relative_humidity(back, tensor(temperature), tensor(pressure))
    assert float(again) == pytest.approx(float(humidity), rel=1e-12, abs=1e-18)


def test_relative_humidity_is_one_at_saturation() -> None:
    temperature, pressure = tensor([250.0, 290.0]), tensor([6.0e4, 1.0e5])
    saturated = saturation_specific_humidity(temperature, pressure)
    assert torch.allclose(relative_humidity(saturated, temperature, pressure), tensor([1.0, 1.0]))


# ---------------------------------------------------------------------------------------------
# Saturation adjustment
# ---------------------------------------------------------------------------------------------


def adjustment_inputs() -> tuple[torch.Tensor, ...]:
    temperature = tensor([300.0, 290.0, 275.0, 260.0], grad=True)
    pressure = tensor([1.0e5, 9.0e4, 7.0e4, 5.0e4], grad=True)
    saturation = saturation_specific_humidity_kernel(temperature.detach(), pressure.detach())
    humidity = (tensor([1.05, 0.8, 1.2, 1.01]) * saturation).requires_grad_(True)
    critical = tensor(0.95, grad=True)
    return temperature, humidity, pressure, critical


@pytest.mark.parametrize("formula", FORMULAS)
def test_adjustment_solves_its_equation(formula: str) -> None:
    temperature, humidity, pressure, critical = adjustment_inputs()
    condensate = saturation_adjustment(
        temperature, humidity, pressure, critical_relative_humidity=critical, formula=formula
    )
    adjusted = saturation_specific_humidity(
        temperature + KAPPA * condensate, pressure, formula=formula
    )
    residual = (humidity - condensate - critical * adjusted).detach()
    assert float(residual.abs().max()) < 1e-15
    # The humidity ratios are [1.05, 0.8, 1.2, 1.01] against RH_c = 0.95.
    assert (condensate > 0).tolist() == [True, False, True, True]


def test_adjustment_implicit_gradient_matches_unrolled_newton() -> None:
    inputs = adjustment_inputs()
    custom = torch.autograd.grad(
        _SaturationAdjustmentFunction.apply(*inputs, "bolton", 6).sum(), inputs
    )
    reference = torch.autograd.grad(
        saturation_adjustment_kernel(*inputs, "bolton", 30).sum(), inputs
    )
    for a, b in zip(custom, reference):
        assert torch.allclose(a, b, rtol=1e-10, atol=0.0)


def test_adjustment_gradient_analytic_for_linear_saturation_limit() -> None:
    # d δ / d q = 1 / (1 + RH_c (L / c_p) dq_s/dT) at the solution: the classic adjustment factor.
    temperature, humidity, pressure, critical = adjustment_inputs()
    condensate = saturation_adjustment(
        temperature, humidity, pressure, critical_relative_humidity=critical
    )
    (grad_q,) = torch.autograd.grad(condensate.sum(), humidity)
    adjusted_temperature = (temperature + KAPPA * condensate).detach().requires_grad_(True)
    (slope,) = torch.autograd.grad(
        saturation_specific_humidity(adjusted_temperature, pressure.detach()).sum(),
        adjusted_temperature,
    )
    assert torch.allclose(grad_q, 1.0 / (1.0 + critical.detach() * KAPPA * slope), rtol=1e-12)


def test_adjustment_gradients() -> None:
    inputs = adjustment_inputs()
    check_gradients(
        lambda t, q, p, r: saturation_adjustment(t, q, p, critical_relative_humidity=r),
        inputs,
        names=["T", "q", "p", "RH_c"],
        strict=True,
    )
    assert torch.autograd.gradgradcheck(
        lambda t, q, p, r: saturation_adjustment(t, q, p, critical_relative_humidity=r), inputs
    )


# ---------------------------------------------------------------------------------------------
# Condensation rate and the LargeScaleCondensation process
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["relaxation", "adjustment"])
@pytest.mark.parametrize("mode", MODES)
def test_condensation_conserves_moist_enthalpy(method: str, mode: str) -> None:
    process = LargeScaleCondensation(method=method, mode=mode).double()  # type: ignore[arg-type]
    tendencies, diagnostics = process(moist_column([1.1, 0.95, 0.5, 1.3, 0.89]))
    enthalpy_tendency = (
        heat_capacity_dry_air * tendencies["air_temperature"]
        + latent_heat_vaporization * tendencies["specific_humidity"]
    )
    scale = heat_capacity_dry_air * float(tendencies["air_temperature"].detach().abs().max())
    assert float(enthalpy_tendency.detach().abs().max()) <= 1e-14 * scale
    assert bool((diagnostics["condensation_rate"] >= 0).all())


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.5), min_size=1, max_size=6),
    st.floats(0.5, 1.0),
    st.sampled_from(["relaxation", "adjustment"]),
)
def test_condensation_bounds_and_conservation(
    ratios: list[float], critical: float, method: str
) -> None:
    state = moist_column(ratios)
    process = LargeScaleCondensation(critical, method=method).double()  # type: ignore[arg-type]
    tendencies, diagnostics = process(state)
    rate = diagnostics["condensation_rate"].detach()
    critical = float(process.critical_relative_humidity.detach())  # as stored (float32 -> 64)
    assert bool((rate >= 0).all())
    # Nothing condenses below the threshold; above it, no more than the excess per timescale.
    excess = state["specific_humidity"] - critical * saturation_specific_humidity(
        state["air_temperature"], state["air_pressure"]
    )
    # Rounding: q_s inside the Function and here differ by ~1e-16 relative, so a layer exactly
    # at the threshold may condense (or not) ~1e-23 kg kg-1 s-1; allow that much.
    slack = 1e-12 * float(state["specific_humidity"].abs().max())
    assert bool((rate[excess <= -slack] == 0).all())
    assert bool((rate * 3600.0 <= excess.clamp(min=0) + slack).all())
    enthalpy = (
        heat_capacity_dry_air * tendencies["air_temperature"]
        + latent_heat_vaporization * tendencies["specific_humidity"]
    )
    assert float(enthalpy.detach().abs().max()) <= 1e-9


def test_one_adjustment_step_reaches_the_critical_humidity() -> None:
    timestep = 900.0
    process = LargeScaleCondensation(0.9, timestep, method="adjustment").double()
    state = moist_column([1.2, 1.0, 0.95])
    tendencies, _ = process(state)
    temperature = state["air_temperature"] + timestep * tendencies["air_temperature"]
    humidity = state["specific_humidity"] + timestep * tendencies["specific_humidity"]
    target = 0.9 * saturation_specific_humidity(temperature, state["air_pressure"])
    assert torch.allclose(humidity, target, rtol=1e-12)


@pytest.mark.parametrize("method", ["relaxation", "adjustment"])
@pytest.mark.parametrize("mode", ["exact", "smooth"])
def test_condensation_process_gradients(method: str, mode: str) -> None:
    process = LargeScaleCondensation(method=method, mode=mode)  # type: ignore[arg-type]
    state = moist_column([1.1, 0.7, 1.3])
    state["air_temperature"].requires_grad_(True)
    state["specific_humidity"].requires_grad_(True)
    check_gradients(process, (state,), names=["state"], strict=True)


@pytest.mark.parametrize("method", ["relaxation", "adjustment"])
def test_condensation_taylor_rate_two(method: str) -> None:
    state = moist_column([1.1, 1.3, 1.05])
    result = taylor_test(
        lambda t, q: condensation_rate(
            t,
            q,
            state["air_pressure"],
            method=method,  # type: ignore[arg-type]
        ),
        (state["air_temperature"], state["specific_humidity"]),
    )
    assert result.passed, str(result)
    assert min(result.judged_rates) > 1.8


# Which of RH_c and τ get gradient, per mode, on supersaturated and on subsaturated air
# (the table in the condensation_rate docstring).
LIVENESS = {
    ("exact", "super"): (),
    ("exact", "sub"): ("critical_relative_humidity", "condensation_timescale"),
    ("smooth", "super"): (),
    ("smooth", "sub"): (),
    ("straight_through", "super"): (),
    ("straight_through", "sub"): ("condensation_timescale",),
}


@pytest.mark.parametrize("method", ["relaxation", "adjustment"])
@pytest.mark.parametrize(("mode", "air"), list(LIVENESS))
def test_parameter_liveness_by_mode(method: str, mode: str, air: str) -> None:
    ratios = [1.2, 1.05, 1.4] if air == "super" else [0.8, 0.85, 0.88]
    process = LargeScaleCondensation(0.9, method=method, mode=mode)  # type: ignore[arg-type]
    dead = LIVENESS[(mode, air)]
    report = check_gradients(
        process, (moist_column(ratios),), checks=("liveness",), expect_dead=dead
    )
    report.raise_if_failed()
    assert {r.target for r in report.results} == {
        "critical_relative_humidity",
        "condensation_timescale",
    }


def test_straight_through_keeps_the_exact_forward() -> None:
    state = moist_column([1.2, 0.5, 0.95])
    exact, _ = LargeScaleCondensation(mode="exact").double()(state)
    straight, _ = LargeScaleCondensation(mode="straight_through").double()(state)
    smooth, _ = LargeScaleCondensation(mode="smooth").double()(state)
    assert torch.equal(exact["specific_humidity"], straight["specific_humidity"])
    assert not torch.equal(exact["specific_humidity"], smooth["specific_humidity"])


def test_condensation_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="method"):
        LargeScaleCondensation(method="kessler")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gradient mode"):
        LargeScaleCondensation(mode="sharp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timescale"):
        condensation_rate(tensor(290.0), 0.01, 1.0e5, timescale=0.0)
    with pytest.raises(KeyError, match="air_pressure"):
        LargeScaleCondensation()({"air_temperature": tensor([290.0])})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_condensation_runs_on_cuda() -> None:
    state = {k: v.cuda() for k, v in moist_column([1.2, 0.5, 1.05]).items()}
    for method in ("relaxation", "adjustment"):
        process = LargeScaleCondensation(method=method).cuda()  # type: ignore[arg-type]
        tendencies, _ = process(state)
        tendencies["air_temperature"].sum().backward()
        assert tendencies["air_temperature"].device.type == "cuda"
        assert process.critical_relative_humidity.grad is not None
        cpu_process = LargeScaleCondensation(method=method)  # type: ignore[arg-type]
        cpu_tendencies, _ = cpu_process({k: v.cpu() for k, v in state.items()})
        assert torch.allclose(
            tendencies["air_temperature"].cpu(), cpu_tendencies["air_temperature"], rtol=1e-10
        )


def test_fixed_relative_humidity_profile_of_manabe_wetherald() -> None:
    from climgrad.physics.thermo import FixedRelativeHumidity, saturation_specific_humidity_kernel

    pressure = torch.linspace(500.0, 1.0e5, 40, dtype=torch.float64)
    temperature = 200.0 + 100.0 * pressure / 1.0e5
    humidity = FixedRelativeHumidity(0.77)
    q = humidity(temperature, pressure, 1.0e5)
    saturation = saturation_specific_humidity_kernel(temperature, pressure)
    expected = 0.77 * torch.clamp((pressure / 1.0e5 - 0.02) / 0.98, min=0.0) * saturation
    wet = expected > 3e-6
    torch.testing.assert_close(q[wet], expected[wet])
    assert bool((q[~wet] == 3e-6).all()) and bool((~wet).any())  # the stratospheric floor
    assert float(q[-1] / saturation[-1]) == pytest.approx(0.77)
    q.sum().backward()
    assert float(humidity.surface_relative_humidity.grad) > 0
    with pytest.raises(ValueError, match="surface_relative_humidity"):
        FixedRelativeHumidity(1.5)
