"""Tests of climgrad.physics.rrtmg: RRTMG (climt's Fortran) as differentiable processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip(
    "climt",
    reason="RRTMG needs the optional extra climgrad[rrtmg] (climt, wheels for CPython 3.11 on "
    "x86-64 Linux): pip install 'climgrad[rrtmg]'",
)

from climgrad.autograd.verify import taylor_test
from climgrad.physics.radiation import radiative_heating_rate
from climgrad.physics.rrtmg import (
    RRTMGLongwave,
    RRTMGShortwave,
    rrtmg_longwave_fluxes,
    rrtmg_operator,
    rrtmg_shortwave_fluxes,
)

AFGL_TROPICAL = (
    Path(__file__).resolve().parents[2]
    / "data/single_column/afgl_standard_atmospheres/tropical.dat"
)
LEVELS = 40


def afgl_tropical_column(levels: int = LEVELS) -> dict[str, torch.Tensor]:
    """AFGL tropical clear sky on climt's default 40-level grid, interpolated in log-pressure.

    Returns float64 tensors for one column: ``interface_pressure`` (level + 1,) Pa from the top,
    ``temperature``, ``specific_humidity``, ``ozone`` (1, level) and ``surface_temperature`` (1,).
    """
    import climt

    table = np.loadtxt(AFGL_TROPICAL)
    pressure = table[::-1, 1] * 100.0  # increasing, for np.interp
    grid = climt.get_grid(nx=1, nz=levels)
    interfaces = grid["air_pressure_on_interface_levels"].values[::-1, 0, 0].copy()
    layers = 0.5 * (interfaces[1:] + interfaces[:-1])

    def at_layers(column: int) -> np.ndarray:
        return np.interp(np.log(layers), np.log(pressure), table[::-1, column])

    water = at_layers(4) * 1e-6 * (18.015 / 28.964)  # ppmv -> mass mixing ratio
    return {
        "interface_pressure": torch.tensor(interfaces),
        "temperature": torch.tensor(at_layers(3))[None],
        "specific_humidity": torch.tensor(water / (1.0 + water))[None],
        "ozone": torch.tensor(at_layers(6) * 1e-6 * (47.998 / 28.964))[None],
        "surface_temperature": torch.tensor(table[:1, 3]),
    }


@pytest.fixture(scope="module")
def column() -> dict[str, torch.Tensor]:
    return afgl_tropical_column()


def olr(column: dict[str, torch.Tensor], **changes: object) -> torch.Tensor:
    values = {**column, **changes}
    upward, _ = rrtmg_longwave_fluxes(
        values["temperature"],
        values["specific_humidity"],
        values["ozone"],
        values["surface_temperature"],
        values["interface_pressure"],
        values.get("mole_fractions"),  # type: ignore[arg-type]
        operator=values.get("operator"),  # type: ignore[arg-type]
    )
    return upward[..., 0]


# --------------------------------------------------------------------------------------------------
# Physics on the AFGL tropical atmosphere


def test_afgl_tropical_olr_planck_response_and_co2_doubling(column):
    base = float(olr(column, mole_fractions={"carbon_dioxide": 400e-6}))
    warmer = float(
        olr(
            column,
            temperature=column["temperature"] + 1.0,
            surface_temperature=column["surface_temperature"] + 1.0,
        )
    )
    doubled = float(olr(column, mole_fractions={"carbon_dioxide": 800e-6}))
    # References (climt 0.31, the issue): 292, +4.4, -3.3 W m-2. Measured here: 288.2, +4.30, -3.15.
    assert 280.0 < base < 300.0
    assert 4.0 < warmer - base < 5.0
    assert -3.5 < doubled - base < -3.0


def test_longwave_fluxes_and_heating_are_physical(column):
    upward, downward = rrtmg_longwave_fluxes(
        column["temperature"],
        column["specific_humidity"],
        column["ozone"],
        column["surface_temperature"],
        column["interface_pressure"],
    )
    assert upward.shape == downward.shape == (1, LEVELS + 1)
    sigma = 5.670374419e-8
    assert float(upward[0, -1]) == pytest.approx(sigma * float(column["surface_temperature"]) ** 4)
    assert float(downward[0, 0]) == pytest.approx(0.0, abs=1e-6)  # nothing comes from space
    pressure = column["interface_pressure"]
    heating = radiative_heating_rate(upward - downward, pressure[1:] - pressure[:-1]) * 86400.0
    troposphere = (pressure[1:] > 2.0e4) & (pressure[1:] < 9.0e4)
    # Clear-sky longwave cools the tropical troposphere by about 1 to 3 K per day.
    assert bool((heating[0, troposphere] < -0.5).all() and (heating[0, troposphere] > -4).all())


def test_shortwave_top_of_atmosphere_albedo_and_night(column):
    args = (
        column["temperature"].expand(3, -1),
        column["specific_humidity"],
        column["ozone"],
        column["surface_temperature"].expand(3),
        column["interface_pressure"],
    )
    cosine = torch.tensor([0.5, 0.5, -0.2], dtype=torch.float64)
    albedo = torch.tensor([0.1, 0.6, 0.1], dtype=torch.float64)
    upward, downward = rrtmg_shortwave_fluxes(*args, albedo, cosine)
    operator = rrtmg_operator("shortwave")
    solar = operator.fn.solar_constant
    assert float(downward[0, 0]) == pytest.approx(solar * 0.5, rel=1e-5)  # band sums: 2e-6
    assert float(upward[1, 0]) > float(upward[0, 0]) + 100.0  # a brighter surface reflects more
    assert float(downward[2].abs().max()) < 1e-5  # night (RRTMG floors mu0 at a tiny value)
    assert bool((downward[0, 1:] <= downward[0, :-1] + 1e-9).all())  # absorbed on the way down


# --------------------------------------------------------------------------------------------------
# One call for all columns; backward cost independent of the number of columns


def test_all_columns_in_one_call_and_columns_are_independent(column):
    columns = 16
    offsets = torch.linspace(-5.0, 5.0, columns, dtype=torch.float64)
    operator = rrtmg_operator("longwave")
    temperature = column["temperature"] + offsets[:, None]
    surface = column["surface_temperature"] + offsets
    batch = olr(column, temperature=temperature, surface_temperature=surface, operator=operator)
    assert operator.calls.forward == 1
    for k in (0, 7, 15):
        single = olr(
            column, temperature=temperature[k : k + 1], surface_temperature=surface[k : k + 1]
        )
        assert float(batch[k]) == pytest.approx(float(single[0]), rel=1e-12)


@pytest.mark.parametrize("columns", [1, 16])
def test_backward_makes_2L_calls_per_profile_and_2_per_scalar(column, columns):
    operator = rrtmg_operator("longwave")
    temperature = column["temperature"].expand(columns, -1).clone().requires_grad_(True)
    humidity = column["specific_humidity"].expand(columns, -1).clone().requires_grad_(True)
    surface = column["surface_temperature"].expand(columns).clone().requires_grad_(True)
    co2 = torch.tensor(400e-6, dtype=torch.float64, requires_grad=True)
    ch4 = torch.tensor(1.7e-6, dtype=torch.float64, requires_grad=True)
    upward, downward = rrtmg_longwave_fluxes(
        temperature,
        humidity,
        column["ozone"],
        surface,
        column["interface_pressure"],
        {"carbon_dioxide": co2, "methane": ch4},
        operator=operator,
    )
    (upward[:, 0].sum() + downward[:, -1].sum()).backward()
    # 2 profiles x 2 L + 3 per-column or scalar inputs x 2, whatever the number of columns.
    assert operator.calls.last_backward == 2 * 2 * LEVELS + 2 * 3
    assert operator.calls.forward == 1
    for tensor in (temperature, humidity, surface, co2, ch4):
        assert tensor.grad is not None and bool(torch.isfinite(tensor.grad).all())
        assert bool((tensor.grad != 0).any())
    # dOLR/dTs > 0, dOLR/dCO2 < 0, and every column sees the same gradient.
    assert bool((surface.grad > 0).all()) and float(co2.grad) < 0
    torch.testing.assert_close(temperature.grad, temperature.grad[:1].expand(columns, -1))


def test_shortwave_backward_calls_and_albedo_gradient(column):
    operator = rrtmg_operator("shortwave")
    albedo = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    temperature = column["temperature"].clone().requires_grad_(True)
    upward, _ = rrtmg_shortwave_fluxes(
        temperature,
        column["specific_humidity"],
        column["ozone"],
        column["surface_temperature"],
        column["interface_pressure"],
        albedo,
        torch.tensor([0.7], dtype=torch.float64),
        operator=operator,
    )
    upward[:, 0].sum().backward()
    assert operator.calls.last_backward == 2 * LEVELS + 2
    # Reflected flux grows with albedo by roughly S0 mu0 times the two-way transmission.
    assert 300.0 < float(albedo.grad) < 1000.0


def test_per_column_pressure_matches_a_shared_profile(column):
    columns = 3
    temperature = column["temperature"].expand(columns, -1)
    surface = column["surface_temperature"].expand(columns)
    shared = olr(column, temperature=temperature, surface_temperature=surface)
    per_column = olr(
        column,
        temperature=temperature,
        surface_temperature=surface,
        interface_pressure=column["interface_pressure"].expand(columns, -1),
    )
    torch.testing.assert_close(per_column, shared, rtol=1e-12, atol=0.0)


@settings(max_examples=15, deadline=None)
@given(
    warming=st.floats(0.5, 10.0),
    offset=st.floats(-15.0, 15.0),
    humidity_scale=st.floats(0.5, 1.5),
)
def test_olr_rises_with_uniform_warming_at_fixed_humidity(warming, offset, humidity_scale):
    column = afgl_tropical_column()
    humidity = column["specific_humidity"] * humidity_scale
    temperatures = column["temperature"] + torch.tensor([[offset], [offset + warming]])
    surface = column["surface_temperature"] + torch.tensor([offset, offset + warming])
    both = olr(
        column, temperature=temperatures, surface_temperature=surface, specific_humidity=humidity
    )
    # Planck response 3 to 6 W m-2 K-1 across these climates; never a runaway at fixed q.
    assert 2.5 * warming < float(both[1] - both[0]) < 6.5 * warming


# --------------------------------------------------------------------------------------------------
# Accuracy of the finite-difference gradients


def _fitted_slope(values: list[float], offsets: np.ndarray) -> float:
    """Slope at 0 of a least-squares quadratic: a derivative that averages RRTMG's staircase."""
    return float(np.polyfit(offsets, values, 2)[1])


def test_gradients_against_a_fine_central_difference_reference(column):
    """Directional derivatives from the backward against a 21-point fit over +-1 K / +-5 %."""
    operator = rrtmg_operator("longwave")
    temperature = column["temperature"].clone().requires_grad_(True)
    humidity = column["specific_humidity"].clone().requires_grad_(True)
    co2 = torch.tensor(400e-6, dtype=torch.float64, requires_grad=True)
    value = olr(
        column,
        temperature=temperature,
        specific_humidity=humidity,
        mole_fractions={"carbon_dioxide": co2},
        operator=operator,
    ).sum()
    value.backward()

    kelvin = np.linspace(-1.0, 1.0, 21)
    along_t = [float(olr(column, temperature=column["temperature"] + s)) for s in kelvin]
    reference_t = _fitted_slope(along_t, kelvin)
    assert float(temperature.grad.sum()) == pytest.approx(reference_t, rel=3e-3)

    fraction = np.linspace(-0.05, 0.05, 21)
    along_q = [
        float(olr(column, specific_humidity=column["specific_humidity"] * (1 + s)))
        for s in fraction
    ]
    reference_q = _fitted_slope(along_q, fraction)
    assert float((humidity.grad * column["specific_humidity"]).sum()) == pytest.approx(
        reference_q, rel=3e-2
    )

    along_co2 = [
        float(olr(column, mole_fractions={"carbon_dioxide": 400e-6 * (1 + s)})) for s in fraction
    ]
    reference_co2 = _fitted_slope(along_co2, fraction)
    assert float(co2.grad) * 400e-6 == pytest.approx(reference_co2, rel=3e-2)


def test_float32_inputs_give_the_float64_gradients(column):
    gradients = {}
    for dtype in (torch.float64, torch.float32):
        temperature = column["temperature"].to(dtype).clone().requires_grad_(True)
        surface = column["surface_temperature"].to(dtype).clone().requires_grad_(True)
        value = olr(
            {k: v.to(dtype) for k, v in column.items()},
            temperature=temperature,
            surface_temperature=surface,
        ).sum()
        assert value.dtype == dtype
        value.backward()
        gradients[dtype] = torch.cat([temperature.grad.flatten(), surface.grad]).double()
    error = (gradients[torch.float32] - gradients[torch.float64]).norm()
    assert float(error / gradients[torch.float64].norm()) < 1e-3


def test_taylor_remainder_falls_at_rate_two_where_rrtmg_is_smooth(column):
    """Perturbations of 0.25 to 4 K (random per level) and 3 to 50 % of humidity.

    Below that, RRTMG's table look-ups leave a remainder floor of about 1e-3 W m-2 (docs/rrtmg.md).
    """
    operator = rrtmg_operator("longwave")

    def of_temperature(temperature: torch.Tensor) -> torch.Tensor:
        return olr(column, temperature=temperature, operator=operator).sum()

    def of_humidity(humidity: torch.Tensor) -> torch.Tensor:
        return olr(column, specific_humidity=humidity, operator=operator).sum()

    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(column["temperature"].shape, generator=generator, dtype=torch.float64)
    result = taylor_test(of_temperature, column["temperature"], direction, h0=4.0, halvings=4)
    assert result.passed, result
    humidity = column["specific_humidity"]
    result = taylor_test(of_humidity, humidity, humidity, h0=0.5, halvings=4)
    assert result.passed, result


# --------------------------------------------------------------------------------------------------
# Processes


def _state(column: dict[str, torch.Tensor], columns: int = 2) -> dict[str, torch.Tensor]:
    return {
        "air_temperature": column["temperature"].expand(columns, -1).clone(),
        "specific_humidity": column["specific_humidity"].expand(columns, -1).clone(),
        "surface_temperature": column["surface_temperature"].expand(columns).clone(),
        "cosine_solar_zenith_angle": torch.full((columns,), 0.6, dtype=torch.float64),
    }


@pytest.mark.parametrize("process_class", [RRTMGLongwave, RRTMGShortwave])
def test_process_tendencies_diagnostics_and_parameter_liveness(column, process_class):
    process = process_class(
        column["interface_pressure"], column["ozone"][0], surface_heat_capacity=1.0e7
    ).double()
    state = _state(column)
    tendencies, diagnostics = process(state)
    band = "longwave" if process_class is RRTMGLongwave else "shortwave"
    upward = diagnostics[f"upward_{band}_flux"]
    downward = diagnostics[f"downward_{band}_flux"]
    pressure = column["interface_pressure"]
    expected = radiative_heating_rate(upward - downward, pressure[1:] - pressure[:-1])
    torch.testing.assert_close(tendencies["air_temperature"], expected)
    assert tendencies["surface_temperature"].shape == (2,)
    assert process.operator.calls.forward == 1
    objective = sum(v.sum() for v in diagnostics.values())
    objective.backward()
    learnable = dict(process.named_parameters())
    expected_names = {"carbon_dioxide_mole_fraction", "methane_mole_fraction"}
    expected_names |= {"nitrous_oxide_mole_fraction"} if band == "longwave" else {"surface_albedo"}
    assert set(learnable) == expected_names
    for name, parameter in learnable.items():
        assert parameter.grad is not None, name
        assert bool(torch.isfinite(parameter.grad)) and float(parameter.grad) != 0.0, name
    assert process.operator.calls.last_backward == 2 * len(learnable)


def test_process_reads_ozone_from_the_state_and_explains_what_is_missing(column):
    process = RRTMGLongwave(column["interface_pressure"]).double()
    state = _state(column)
    with pytest.raises(KeyError, match="ozone_mass_mixing_ratio"):
        process(state)
    state["ozone_mass_mixing_ratio"] = column["ozone"].expand(2, -1)
    _, diagnostics = process(state)
    assert diagnostics["outgoing_longwave_radiation"].shape == (2,)


def test_validation_messages_say_the_fix(column):
    with pytest.raises(ValueError, match=r"adding 273\.15"):
        olr(column, temperature=column["temperature"] - 273.15)
    with pytest.raises(ValueError, match="reverse the level order"):
        olr(column, interface_pressure=column["interface_pressure"].flip(0))
    with pytest.raises(ValueError, match="multiplying by 1e-6"):
        olr(column, mole_fractions={"carbon_dioxide": 400.0})
    with pytest.raises(KeyError, match="Unknown gas"):
        olr(column, mole_fractions={"argon": 0.01})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_round_trip_through_the_fortran(column):
    device = torch.device("cuda")
    on_gpu = {k: v.to(device) for k, v in column.items()}
    temperature = on_gpu["temperature"].clone().requires_grad_(True)
    value = olr(on_gpu, temperature=temperature).sum()
    value.backward()
    assert value.device.type == "cuda" and temperature.grad.device.type == "cuda"
    assert float(value) == pytest.approx(float(olr(column).sum()), rel=1e-12)
