"""Tests of climgrad.physics.convection: dry convective adjustment and Betts–Miller relaxation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from climgrad.autograd.verify import check_gradients, taylor_test
from climgrad.constants import gas_constant_dry_air, gravity, reference_surface_pressure
from climgrad.physics.convection import (
    BettsMillerConvection,
    DryConvectiveAdjustment,
    _BettsMillerFunction,
    _DryAdjustmentFunction,
    betts_miller_kernel,
    betts_miller_tendency,
    dry_adjustment_kernel,
    dry_adjustment_smooth_kernel,
    dry_convective_adjustment,
    lapse_rate_exponent,
)

F64 = torch.float64
LAPSE = 6.5e-3  # K m-1


def grid(levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Equal-thickness layers: mid-pressures (Pa) and thicknesses (Pa), top first."""
    middle = reference_surface_pressure * (torch.arange(levels, dtype=F64) + 0.5) / levels
    return middle, torch.full((levels,), reference_surface_pressure / levels, dtype=F64)


def profile(columns: int, levels: int, seed: int = 0, noise: float = 4.0) -> torch.Tensor:
    """A roughly linear-in-pressure profile (steeper than 6.5 K/km near the surface) plus noise."""
    generator = torch.Generator().manual_seed(seed)
    pressure, _ = grid(levels)
    surface = 280.0 + 20.0 * torch.rand(columns, 1, generator=generator, dtype=F64)
    base = 200.0 + (surface - 200.0) * pressure / reference_surface_pressure
    return base + noise * torch.randn(columns, levels, generator=generator, dtype=F64)


def exner(levels: int, lapse: float = LAPSE) -> torch.Tensor:
    pressure, _ = grid(levels)
    return (pressure / reference_surface_pressure) ** float(lapse_rate_exponent(lapse))


def theta(temperature: torch.Tensor, lapse: float = LAPSE) -> torch.Tensor:
    return temperature / exner(temperature.shape[-1], lapse)


def enthalpy(temperature: torch.Tensor) -> torch.Tensor:
    _, thickness = grid(temperature.shape[-1])
    return (temperature * thickness).sum(-1)


# ==================================================================================================
# Dry convective adjustment
# ==================================================================================================


def test_two_layer_mixing_is_analytic() -> None:
    pressure, thickness = grid(2)
    temperature = torch.tensor([[230.0, 300.0]], dtype=F64)  # unstable
    adjusted = dry_convective_adjustment(temperature, pressure, thickness, LAPSE)
    pi = exner(2)
    common_theta = temperature.sum() / pi.sum()  # equal masses
    torch.testing.assert_close(adjusted, (pi * common_theta)[None, :], rtol=1e-14, atol=0.0)


def test_stable_column_is_unchanged_and_lapse_rate_is_dead() -> None:
    levels = 6
    pressure, thickness = grid(levels)
    # θ decreasing downward by 5 K per layer: stable everywhere.
    temperature = (exner(levels) * (330.0 - 5.0 * torch.arange(levels, dtype=F64)))[None, :]
    lapse = torch.tensor(LAPSE, dtype=F64, requires_grad=True)
    adjusted = dry_convective_adjustment(temperature, pressure, thickness, lapse, mode="exact")
    torch.testing.assert_close(adjusted, temperature, rtol=1e-14, atol=0.0)
    report = check_gradients(
        lambda t, g: dry_convective_adjustment(t, pressure, thickness, g, mode="exact"),
        (temperature.clone().requires_grad_(), lapse),
        names=["temperature", "critical_lapse_rate"],
        checks=("liveness",),
        expect_dead=("critical_lapse_rate",),
    )
    assert report.passed, str(report)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    noise=st.floats(0.5, 15.0),
    lapse=st.floats(3.0e-3, 9.8e-3),
    levels=st.integers(2, 24),
)
def test_adjustment_conserves_enthalpy_and_is_not_steeper_than_critical(
    seed: int, noise: float, lapse: float, levels: int
) -> None:
    pressure, thickness = grid(levels)
    temperature = profile(3, levels, seed, noise)
    adjusted = dry_convective_adjustment(temperature, pressure, thickness, lapse)
    torch.testing.assert_close(enthalpy(adjusted), enthalpy(temperature), rtol=1e-13, atol=0.0)
    adjusted_theta = theta(adjusted, lapse)
    # θ' non-increasing downward: nowhere steeper than Γ_c (up to rounding).
    drop = adjusted_theta[:, :-1] - adjusted_theta[:, 1:]
    assert float(drop.min()) >= -1e-10
    # Idempotent: an adjusted column is left alone.
    again = dry_convective_adjustment(adjusted, pressure, thickness, lapse)
    torch.testing.assert_close(again, adjusted, rtol=1e-12, atol=0.0)


def test_function_matches_min_max_kernel_forward_and_backward() -> None:
    levels = 10
    _, thickness = grid(levels)
    temperature = profile(4, levels, seed=3)
    pi = exner(levels).requires_grad_()
    mass = (thickness / gravity).requires_grad_()
    weights = torch.randn(4, levels, generator=torch.Generator().manual_seed(2), dtype=F64)
    results = []
    for adjust in (lambda *a: _DryAdjustmentFunction.apply(*a)[0], dry_adjustment_kernel):
        t = temperature.clone().requires_grad_()
        adjusted = adjust(t, pi, mass)
        results.append((adjusted, *torch.autograd.grad((weights * adjusted).sum(), (t, pi, mass))))
    for custom, reference in zip(*results, strict=True):
        torch.testing.assert_close(custom, reference, rtol=1e-11, atol=1e-10)


def test_exact_mode_gradcheck() -> None:
    levels = 6
    pressure, thickness = grid(levels)
    temperature = profile(2, levels, seed=5, noise=6.0).requires_grad_()
    pi = exner(levels).requires_grad_()
    mass = (thickness / gravity).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t, p, m: _DryAdjustmentFunction.apply(t, p, m)[0], (temperature, pi, mass)
    )
    lapse = torch.tensor(LAPSE, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t, g: dry_convective_adjustment(t, pressure, thickness, g), (temperature, lapse)
    )


def test_exact_mode_taylor_rate_two() -> None:
    levels = 8
    pressure, thickness = grid(levels)
    temperature = profile(3, levels, seed=7)

    def objective(t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return dry_convective_adjustment(t, pressure, thickness, g).square().sum()

    # Small steps: the active set must not change within the test's perturbations.
    result = taylor_test(objective, [temperature, torch.tensor(LAPSE, dtype=F64)], h0=1e-6)
    assert result.passed, result.rates


def test_smooth_mode_converges_to_exact_and_conserves_enthalpy() -> None:
    levels = 8
    pressure, thickness = grid(levels)
    temperature = profile(3, levels, seed=11)
    exact = dry_convective_adjustment(temperature, pressure, thickness, LAPSE)
    errors = []
    for width in (1.0, 0.1, 0.01):
        smooth = dry_convective_adjustment(
            temperature, pressure, thickness, LAPSE, mode="smooth", width=width
        )
        torch.testing.assert_close(enthalpy(smooth), enthalpy(temperature), rtol=1e-13, atol=0.0)
        errors.append(float((smooth - exact).abs().max()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.1


def test_smooth_mode_gradcheck_and_liveness_in_stable_column() -> None:
    levels = 5
    pressure, thickness = grid(levels)
    # Stable by 1 K of θ per layer: exact mode leaves Γ_c dead, smooth mode does not.
    temperature = (exner(levels) * (300.0 - torch.arange(levels, dtype=F64)))[None, :]
    lapse = torch.tensor(LAPSE, dtype=F64, requires_grad=True)

    def smooth(t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return dry_convective_adjustment(t, pressure, thickness, g, mode="smooth", width=1.0)

    report = check_gradients(
        smooth, (temperature.clone().requires_grad_(), lapse), names=["temperature", "lapse"]
    )
    assert report.passed, str(report)


def test_straight_through_forward_is_exact_and_gradient_is_smooth() -> None:
    levels = 6
    pressure, thickness = grid(levels)
    temperature = profile(2, levels, seed=13)
    lapse = torch.tensor(LAPSE, dtype=F64, requires_grad=True)
    exact = dry_convective_adjustment(temperature, pressure, thickness, lapse, mode="exact")
    straight = dry_convective_adjustment(
        temperature, pressure, thickness, lapse, mode="straight_through", width=0.5
    )
    smooth = dry_convective_adjustment(
        temperature, pressure, thickness, lapse, mode="smooth", width=0.5
    )
    torch.testing.assert_close(straight, exact, rtol=0.0, atol=0.0)
    (grad_straight,) = torch.autograd.grad(straight.square().sum(), lapse)
    (grad_smooth,) = torch.autograd.grad(
        (2.0 * exact.detach() * smooth).sum(), lapse
    )  # the surrogate's derivative, contracted with the exact forward's d(sum T'^2)/dT'
    torch.testing.assert_close(grad_straight, grad_smooth)
    assert float(grad_straight) != 0.0


def test_smooth_kernel_broadcasts_over_columns() -> None:
    levels = 5
    temperature = profile(4, levels)
    pi, mass = exner(levels), grid(levels)[1] / gravity
    batched = dry_adjustment_smooth_kernel(temperature, pi, mass, 0.5)
    single = torch.stack([dry_adjustment_smooth_kernel(t, pi, mass, 0.5) for t in temperature])
    torch.testing.assert_close(batched, single)


def test_adjustment_process_tendency_lands_on_adjusted_profile() -> None:
    levels = 8
    pressure, thickness = grid(levels)
    temperature = profile(3, levels)
    process = DryConvectiveAdjustment(pressure, thickness, adjustment_time=1800.0).double()
    tendencies, diagnostics = process({"air_temperature": temperature})
    torch.testing.assert_close(
        temperature + 1800.0 * tendencies["air_temperature"], diagnostics["adjusted_temperature"]
    )
    report = check_gradients(
        process, ({"air_temperature": temperature.clone().requires_grad_()},), names=["state"]
    )
    assert report.passed, str(report)


def test_adjustment_validation_messages() -> None:
    pressure, thickness = grid(4)
    temperature = profile(1, 4)
    with pytest.raises(ValueError, match=r"6\.5e-3"):
        dry_convective_adjustment(temperature, pressure, thickness, -6.5)
    with pytest.raises(ValueError, match=r"adding 273\.15"):
        dry_convective_adjustment(temperature - 273.15, pressure, thickness, LAPSE)
    with pytest.raises(ValueError, match="reverse the level order"):
        dry_convective_adjustment(temperature, pressure.flip(0), thickness, LAPSE)
    with pytest.raises(ValueError, match="Unknown gradient mode"):
        dry_convective_adjustment(temperature, pressure, thickness, LAPSE, mode="fuzzy")  # type: ignore[arg-type]


# ==================================================================================================
# Betts–Miller relaxation
# ==================================================================================================


def reference_ratio(levels: int, lapse: float = LAPSE) -> torch.Tensor:
    pressure, _ = grid(levels)
    return (pressure / pressure[-1]) ** float(lapse_rate_exponent(lapse))


def test_betts_miller_gradcheck() -> None:
    levels = 6
    temperature = profile(3, levels, noise=2.0).requires_grad_()
    ratio = reference_ratio(levels).requires_grad_()
    time = torch.tensor(3.0 * 3600.0, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t, r, tau: _BettsMillerFunction.apply(t, r, tau, 1.0)[0], (temperature, ratio, time)
    )
    pressure, _ = grid(levels)
    lapse = torch.tensor(LAPSE, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t, g, tau: betts_miller_tendency(t, pressure, g, tau, 1.0),
        (temperature, lapse, time),
    )


def test_betts_miller_matches_kernel_forward_and_backward() -> None:
    levels = 12
    pressure, _ = grid(levels)
    temperature = profile(5, levels, seed=4)
    weights = torch.randn(5, levels, generator=torch.Generator().manual_seed(8), dtype=F64)
    results = []
    for use_function in (True, False):
        t = temperature.clone().requires_grad_()
        lapse = torch.tensor(5.5e-3, dtype=F64, requires_grad=True)
        time = torch.tensor(3.0 * 3600.0, dtype=F64, requires_grad=True)
        if use_function:
            tendency = betts_miller_tendency(t, pressure, lapse, time, 1.0)
        else:
            ratio = (pressure / pressure[-1]) ** (lapse * (gas_constant_dry_air / gravity))
            tendency = betts_miller_kernel(t, ratio, time, 1.0)
        grads = torch.autograd.grad((weights * tendency).sum(), (t, lapse, time))
        results.append((tendency, *grads))
    for custom, reference in zip(*results, strict=True):
        torch.testing.assert_close(custom, reference, rtol=1e-12, atol=1e-18)


def test_betts_miller_taylor_rate_two() -> None:
    levels = 8
    pressure, _ = grid(levels)
    temperature = profile(2, levels, seed=9)

    def objective(t: torch.Tensor, g: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return (betts_miller_tendency(t, pressure, g, tau, 1.0) * 3600.0).square().sum()

    point = [temperature, torch.tensor(LAPSE, dtype=F64), torch.tensor(14400.0, dtype=F64)]
    result = taylor_test(objective, point)
    assert result.passed, result.rates


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    noise=st.floats(0.0, 20.0),
    lapse=st.floats(3.0e-3, 9.8e-3),
    width=st.floats(0.1, 5.0),
    levels=st.integers(2, 40),
)
def test_betts_miller_tendency_sums_to_zero(
    seed: int, noise: float, lapse: float, width: float, levels: int
) -> None:
    pressure, _ = grid(levels)
    temperature = profile(4, levels, seed, noise)
    tendency = betts_miller_tendency(temperature, pressure, lapse, 7200.0, width)
    scale = float(tendency.abs().max()) + 1e-30
    assert float(tendency.sum(-1).abs().max()) <= 1e-12 * scale * levels


def test_betts_miller_relaxes_toward_reference() -> None:
    # Far warmer than the reference aloft (w ≈ 0 there) and far colder (w ≈ 1): the cold layers
    # warm toward the reference, the anchor layer pays for it.
    levels = 4
    pressure, _ = grid(levels)
    ratio = reference_ratio(levels)
    reference = 300.0 * ratio
    temperature = (reference + torch.tensor([30.0, -20.0, -20.0, 0.0], dtype=F64))[None, :]
    tendency = betts_miller_tendency(temperature, pressure, LAPSE, 3600.0, 1.0)
    assert abs(float(tendency[0, 0])) < 1e-10
    assert float(tendency[0, 1]) > 0.0 and float(tendency[0, 2]) > 0.0
    assert float(tendency[0, 3]) < 0.0


def test_betts_miller_process_liveness() -> None:
    levels = 6
    pressure, _ = grid(levels)
    process = BettsMillerConvection(pressure, critical_lapse_rate=5.5e-3, relaxation_time=10800.0)
    state = {"air_temperature": profile(2, levels).requires_grad_()}
    # gradcheck of the Function is test_betts_miller_gradcheck; here the SI parameters (5.5e-3
    # K m-1, 1.08e4 s) are too far from unit scale for gradcheck's fixed absolute step.
    report = check_gradients(
        process, (state,), names=["state"], checks=("taylor", "adjoint", "liveness")
    )
    assert report.passed, str(report)
    live = {r.target for r in report.results if r.check == "liveness" and r.passed}
    assert {"critical_lapse_rate", "relaxation_time"} <= live


def test_betts_miller_validation_messages() -> None:
    pressure, _ = grid(3)
    temperature = profile(1, 3)
    with pytest.raises(ValueError, match="14400 s"):
        betts_miller_tendency(temperature, pressure, LAPSE, -1.0)
    with pytest.raises(ValueError, match="width"):
        betts_miller_tendency(temperature, pressure, LAPSE, 3600.0, width=0.0)


def test_torch_func_vmap_and_jacrev() -> None:
    levels = 6
    pressure, thickness = grid(levels)
    temperature = profile(3, levels, seed=21)
    pi, mass = exner(levels), thickness / gravity

    def adjust(t: torch.Tensor) -> torch.Tensor:
        return _DryAdjustmentFunction.apply(t, pi, mass)[0]

    def relax(t: torch.Tensor) -> torch.Tensor:
        return betts_miller_tendency(t, pressure, LAPSE, 3600.0)

    for function, kernel in (
        (adjust, lambda t: dry_adjustment_kernel(t, pi, mass)),
        (relax, lambda t: betts_miller_kernel(t, reference_ratio(levels), 3600.0, 1.0)),
    ):
        torch.testing.assert_close(torch.func.vmap(function)(temperature), function(temperature))
        jacobian = torch.func.jacrev(function)(temperature[0])
        reference = torch.autograd.functional.jacobian(kernel, temperature[0])
        torch.testing.assert_close(jacobian, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_convection_runs_on_cuda_and_matches_cpu() -> None:
    levels = 8
    pressure, thickness = grid(levels)
    temperature = profile(3, levels)
    cpu_adjusted = dry_convective_adjustment(temperature, pressure, thickness, LAPSE)
    gpu_adjusted = dry_convective_adjustment(
        temperature.cuda(), pressure.cuda(), thickness.cuda(), LAPSE
    )
    torch.testing.assert_close(gpu_adjusted.cpu(), cpu_adjusted)
    cpu_bm = betts_miller_tendency(temperature, pressure, LAPSE, 3600.0)
    gpu_bm = betts_miller_tendency(temperature.cuda(), pressure.cuda(), LAPSE, 3600.0)
    torch.testing.assert_close(gpu_bm.cpu(), cpu_bm)
