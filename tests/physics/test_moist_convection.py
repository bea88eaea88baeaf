"""Tests of climgrad.physics.moist_convection: the moist pseudo-adiabat and moist Betts–Miller."""

from __future__ import annotations

import pytest
import torch

from climgrad.autograd.verify import check_gradients, taylor_test
from climgrad.constants import gravity, heat_capacity_dry_air, latent_heat_vaporization
from climgrad.physics.moist_convection import (
    MoistBettsMillerConvection,
    _MoistBettsMillerFunction,
    _saturated_equivalent_newton,
    moist_adiabat,
    moist_adiabat_kernel,
    moist_adiabat_table,
    moist_betts_miller_kernel,
    moist_betts_miller_tendency,
    pseudoadiabatic_lapse_rate,
    saturated_equivalent_temperature,
    tabulated_moist_adiabat,
)
from climgrad.physics.thermo import saturation_specific_humidity

F64 = torch.float64


def grid(levels: int) -> tuple[torch.Tensor, float]:
    """Equal-thickness layers between 0 and 1000 hPa: mid-pressures (Pa) and Δp (Pa)."""
    thickness = 1.0e5 / levels
    return thickness * (torch.arange(levels, dtype=F64) + 0.5), thickness


def column(columns: int, levels: int, seed: int = 0) -> torch.Tensor:
    """Profiles near a moist adiabat from 295-305 K, with noise, warmer aloft (a stratosphere)."""
    generator = torch.Generator().manual_seed(seed)
    pressure, _ = grid(levels)
    anchor = 295.0 + 10.0 * torch.rand(columns, generator=generator, dtype=F64)
    reference = moist_adiabat(anchor, pressure)
    noise = 2.0 * torch.randn(columns, levels, generator=generator, dtype=F64)
    return torch.maximum(reference + noise, torch.full_like(reference, 195.0))


# --------------------------------------------------------------------------------------------------
# The pseudo-adiabat
# --------------------------------------------------------------------------------------------------


def test_lapse_rate_matches_published_values() -> None:
    # Wallace & Hobbs (2006, §3.7.2): about 4 K km-1 near the warm tropical surface, 6-7 K km-1
    # in the cold middle troposphere; the dry adiabat g/c_p = 9.77 K km-1 where q_s vanishes.
    rate = pseudoadiabatic_lapse_rate(
        torch.tensor([300.0, 273.15, 200.0], dtype=F64),
        torch.tensor([1.0e5, 7.0e4, 1.0e4]).double(),
    )
    assert 3.5e-3 < float(rate[0]) < 4.0e-3
    assert 5.5e-3 < float(rate[1]) < 6.5e-3
    dry = float(gravity) / float(heat_capacity_dry_air)
    assert float(rate[2]) == pytest.approx(dry, rel=1e-2)  # q_s(200 K, 100 hPa) = 2e-5


def test_moist_static_energy_is_nearly_conserved_along_the_adiabat() -> None:
    # A pseudo-adiabat conserves the saturated moist static energy c_p T + g z + L q_s to within
    # the neglected heat capacity of vapour (~1 %); z from the hypsometric equation.
    pressure, _ = grid(40)
    profile = moist_adiabat(torch.tensor(300.0, dtype=F64), pressure, substeps=8)
    upper = pressure > 2.0e4  # below the tropopause region, where q_s is still relevant
    rd_over_g = 287.04 / float(gravity)
    log_p = torch.log(pressure)
    layer_height = rd_over_g * 0.5 * (profile[1:] + profile[:-1]) * (log_p[1:] - log_p[:-1])
    height = torch.cat([layer_height.flip(0).cumsum(0).flip(0), torch.zeros(1, dtype=F64)])
    q_s = saturation_specific_humidity(profile, pressure)
    mse = (
        float(heat_capacity_dry_air) * profile
        + float(gravity) * height
        + float(latent_heat_vaporization) * q_s
    )
    spread = float(mse[upper].max() - mse[upper].min())
    assert spread < 0.015 * float(mse[-1] - float(heat_capacity_dry_air) * 150.0)


def test_runge_kutta_converges_at_fourth_order() -> None:
    pressure, _ = grid(20)
    anchor = torch.tensor(300.0, dtype=F64)
    fine = moist_adiabat(anchor, pressure, substeps=64)
    errors = [float((moist_adiabat(anchor, pressure, n) - fine).abs().max()) for n in (1, 2, 4)]
    assert errors[0] < 1e-2  # K, one RK4 step per 50 hPa layer
    assert errors[0] / errors[1] > 12.0 and errors[1] / errors[2] > 12.0  # 16 for order 4


def test_adiabat_gradcheck_forward_mode_and_autograd_reference() -> None:
    pressure, _ = grid(8)
    anchor = torch.tensor([296.0, 303.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a: moist_adiabat(a, pressure), (anchor,), check_forward_ad=True
    )
    custom = torch.autograd.functional.jacobian(lambda a: moist_adiabat(a, pressure), anchor)
    reference = torch.autograd.functional.jacobian(
        lambda a: moist_adiabat_kernel(a, pressure), anchor
    )
    torch.testing.assert_close(custom, reference, rtol=1e-12, atol=1e-12)


def test_adiabat_taylor_rate_two() -> None:
    pressure, _ = grid(10)

    def objective(anchor: torch.Tensor) -> torch.Tensor:
        return moist_adiabat(anchor, pressure).square().sum()

    result = taylor_test(objective, [torch.tensor([298.0, 301.0], dtype=F64)])
    assert result.passed, result.rates


def test_tabulated_adiabat_matches_the_integration_and_its_derivative() -> None:
    pressure, _ = grid(40)
    values, sensitivities = moist_adiabat_table(pressure)
    anchors = torch.linspace(250.0, 330.0, 81, dtype=F64) + 0.123  # between the 0.5 K nodes
    error = (
        tabulated_moist_adiabat(anchors, values, sensitivities) - moist_adiabat(anchors, pressure)
    ).abs()
    assert float(error.max()) < 1e-4  # K, at the top layer
    assert float(error[:, pressure > 1.0e4].max()) < 1e-5
    point = torch.tensor([296.37, 301.81], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a: tabulated_moist_adiabat(a, values, sensitivities), (point,), check_forward_ad=True
    )
    tabulated = torch.autograd.functional.jacobian(
        lambda a: tabulated_moist_adiabat(a, values, sensitivities), point
    )
    integrated = torch.autograd.functional.jacobian(lambda a: moist_adiabat(a, pressure), point)
    torch.testing.assert_close(tabulated, integrated, rtol=0.0, atol=1e-4)
    # exact at the nodes, value and slope
    node = torch.tensor([300.0], dtype=F64)
    torch.testing.assert_close(
        tabulated_moist_adiabat(node, values, sensitivities), moist_adiabat(node, pressure)
    )


def test_adiabat_validation_messages() -> None:
    pressure, _ = grid(4)
    with pytest.raises(ValueError, match="substeps"):
        moist_adiabat(torch.tensor(300.0, dtype=F64), pressure, substeps=0)
    with pytest.raises(ValueError, match="layer_pressure"):
        moist_adiabat(torch.tensor(300.0, dtype=F64), pressure.flip(0))


def test_saturated_equivalent_has_the_moist_static_energy_of_the_parcel() -> None:
    temperature = torch.tensor([300.0, 290.0, 280.0], dtype=F64)
    pressure = torch.tensor(9.875e4, dtype=F64)
    saturated = saturation_specific_humidity(temperature, pressure)
    humidity = saturated * torch.tensor([0.8, 1.0, 0.5], dtype=F64)
    anchor = saturated_equivalent_temperature(temperature, humidity, pressure)
    cp, lv = float(heat_capacity_dry_air), float(latent_heat_vaporization)
    energy = cp * anchor + lv * saturation_specific_humidity(anchor, pressure)
    torch.testing.assert_close(energy, cp * temperature + lv * humidity, rtol=1e-12, atol=0.0)
    assert float(anchor[1]) == pytest.approx(290.0, abs=1e-9)  # already saturated
    assert bool(anchor[0] < temperature[0]) and bool(anchor[2] < temperature[2])


def test_saturated_equivalent_gradients() -> None:
    pressure = torch.tensor(9.5e4, dtype=F64)
    temperature = torch.tensor([299.0, 303.0], dtype=F64, requires_grad=True)
    # humidity in g kg-1 so that gradcheck's step is a sensible perturbation
    grams = torch.tensor([15.0, 19.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t, g: saturated_equivalent_temperature(t, 1e-3 * g, pressure),
        (temperature, grams),
        check_forward_ad=True,
    )
    # against autograd through the Newton iterations themselves
    custom = torch.autograd.functional.jacobian(
        lambda t, g: saturated_equivalent_temperature(t, 1e-3 * g, pressure), (temperature, grams)
    )
    unrolled = torch.autograd.functional.jacobian(
        lambda t, g: _saturated_equivalent_newton(t, 1e-3 * g, pressure)[0], (temperature, grams)
    )
    for a, b in zip(custom, unrolled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    def objective(t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return saturated_equivalent_temperature(t, 1e-3 * g, pressure).square().sum()

    result = taylor_test(objective, [temperature.detach(), grams.detach()])
    assert result.passed, result.rates


# --------------------------------------------------------------------------------------------------
# Moist Betts–Miller
# --------------------------------------------------------------------------------------------------


def test_column_gains_exactly_the_latent_heat() -> None:
    levels = 16
    pressure, thickness = grid(levels)
    temperature = column(4, levels, seed=3)
    latent = torch.tensor([0.0, 50.0, 120.0, -5.0], dtype=F64)
    tendency, _ = moist_betts_miller_tendency(temperature, pressure, thickness, 7200.0, latent)
    gained = (tendency * thickness / float(gravity) * float(heat_capacity_dry_air)).sum(-1)
    torch.testing.assert_close(gained, latent, rtol=1e-10, atol=1e-9)


def test_convection_stops_where_the_column_is_warmer_than_the_adiabat() -> None:
    levels = 10
    pressure, thickness = grid(levels)
    reference = moist_adiabat(torch.tensor(300.0, dtype=F64), pressure)
    temperature = reference.clone()
    temperature[:3] += 40.0  # a warm stratosphere
    temperature[3:-1] -= 3.0  # an unstable troposphere
    tendency, _ = moist_betts_miller_tendency(
        temperature[None], pressure, thickness, 3600.0, torch.tensor([100.0], dtype=F64)
    )
    assert float(tendency[0, :3].abs().max()) < 1e-12
    assert bool((tendency[0, 3:-1] > 0).all())


def test_function_matches_kernel_forward_and_backward() -> None:
    levels = 12
    pressure, thickness = grid(levels)
    mass = torch.full((levels,), thickness / float(gravity), dtype=F64)
    temperature = column(3, levels, seed=5)
    weights = torch.randn(3, levels, generator=torch.Generator().manual_seed(2), dtype=F64)
    results = []
    for kernel in (False, True):
        t = temperature.clone().requires_grad_()
        tau = torch.tensor(7200.0, dtype=F64, requires_grad=True)
        heating = torch.tensor([0.05, 0.1, 0.0], dtype=F64, requires_grad=True)
        reference = moist_adiabat(t[..., -1], pressure) if not kernel else None
        if kernel:
            reference = moist_adiabat_kernel(t[..., -1], pressure)
            tendency = moist_betts_miller_kernel(t, reference, mass, tau, heating, 1.0)
        else:
            assert reference is not None
            tendency = _MoistBettsMillerFunction.apply(t, reference, mass, tau, heating, 1.0)[0]
        grads = torch.autograd.grad((weights * tendency).sum(), (t, tau, heating))
        results.append((tendency, *grads))
    for custom, reference_value in zip(*results, strict=True):
        torch.testing.assert_close(custom, reference_value, rtol=1e-10, atol=1e-16)


def test_relaxation_gradcheck_including_forward_mode() -> None:
    levels = 6
    pressure, thickness = grid(levels)
    mass = torch.linspace(400.0, 600.0, levels, dtype=F64)  # unequal layers too
    temperature = column(2, levels, seed=7).requires_grad_()
    reference = (temperature.detach() + 1.5).requires_grad_()
    tau = torch.tensor(2.0, dtype=F64, requires_grad=True)  # near unit scale for gradcheck
    heating = torch.tensor([0.3, -0.1], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t, r, s, h: _MoistBettsMillerFunction.apply(t, r, mass, s, h, 1.0)[0],
        (temperature, reference, tau, heating),
        check_forward_ad=True,
    )
    latent = torch.tensor([80.0, 20.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t, q: moist_betts_miller_tendency(t, pressure, thickness, 3600.0, q)[0] * 1e3,
        (temperature, latent),
        check_forward_ad=True,
    )


def test_relaxation_taylor_rate_two() -> None:
    levels = 8
    pressure, thickness = grid(levels)

    def objective(t: torch.Tensor, tau: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        tendency, _ = moist_betts_miller_tendency(t, pressure, thickness, tau, latent)
        return (tendency * 86400.0).square().sum()

    point = [column(2, levels, 11), torch.tensor(1.0e4, dtype=F64), torch.tensor([90.0, 40.0])]
    result = taylor_test(objective, [p.double() for p in point])
    assert result.passed, result.rates


def test_process_liveness_and_diagnostics() -> None:
    levels = 8
    pressure, thickness = grid(levels)
    process = MoistBettsMillerConvection(pressure, thickness, relaxation_time=10800.0)
    state = {
        "air_temperature": column(2, levels, 13).requires_grad_(),
        "latent_heat_flux": torch.tensor([100.0, 60.0], dtype=F64, requires_grad=True),
        "specific_humidity": torch.full((2, levels), 0.015, dtype=F64, requires_grad=True),
    }
    report = check_gradients(
        process, (state,), names=["state"], checks=("taylor", "adjoint", "liveness")
    )
    assert report.passed, str(report)
    live = {r.target for r in report.results if r.check == "liveness" and r.passed}
    expected = {"relaxation_time", "state.latent_heat_flux", "state.air_temperature"}
    assert expected | {"state.specific_humidity"} <= live  # the parcel's (lowest layer's) q
    _, diagnostics = process({k: v.detach() for k, v in state.items()})
    torch.testing.assert_close(
        diagnostics["convective_precipitation_flux"] * float(latent_heat_vaporization),
        state["latent_heat_flux"].detach(),
    )
    assert diagnostics["moist_adiabat_temperature"].shape == (2, levels)


def test_relaxation_validation_messages() -> None:
    pressure, thickness = grid(3)
    temperature = column(1, 3)
    with pytest.raises(ValueError, match="14400 s"):
        moist_betts_miller_tendency(temperature, pressure, thickness, -1.0, torch.zeros(1))
    with pytest.raises(ValueError, match="latent_heat_flux"):
        moist_betts_miller_tendency(temperature, pressure, thickness, 3600.0, torch.zeros(2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_moist_convection_runs_on_cuda_and_matches_cpu() -> None:
    levels = 12
    pressure, thickness = grid(levels)
    temperature = column(3, levels, seed=17)
    latent = torch.tensor([90.0, 120.0, 60.0], dtype=F64)
    humidity = torch.tensor([0.015, 0.017, 0.012], dtype=F64)
    cpu, cpu_reference = moist_betts_miller_tendency(
        temperature, pressure, thickness, 7200.0, latent, anchor_humidity=humidity
    )
    gpu, gpu_reference = moist_betts_miller_tendency(
        temperature.cuda(),
        pressure.cuda(),
        thickness,
        7200.0,
        latent.cuda(),
        anchor_humidity=humidity.cuda(),
    )
    torch.testing.assert_close(gpu.cpu(), cpu)
    torch.testing.assert_close(gpu_reference.cpu(), cpu_reference)
