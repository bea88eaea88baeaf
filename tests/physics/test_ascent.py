"""Tests of climgrad.physics.ascent: prescribed ascent cooling the tropopause layer."""

from __future__ import annotations

import pytest
import torch

from climgrad.autograd.verify import check_gradients, taylor_test
from climgrad.constants import gas_constant_dry_air, heat_capacity_dry_air
from climgrad.physics.ascent import (
    TropopauseUpwelling,
    _AscentFunction,
    ascent_kernel,
    ascent_profile,
    ascent_tendency,
    log_slope_matrix,
)

F64 = torch.float64
KAPPA = float(gas_constant_dry_air) / float(heat_capacity_dry_air)


def grid(levels: int) -> torch.Tensor:
    return 1.0e5 * (torch.arange(levels, dtype=F64) + 0.5) / levels


def tropical(levels: int, columns: int = 2, seed: int = 0) -> torch.Tensor:
    """A troposphere cooling upward to 195 K near 100 hPa and a stratosphere warming above."""
    pressure = grid(levels)
    generator = torch.Generator().manual_seed(seed)
    troposphere = 300.0 * (pressure / 1.0e5) ** 0.19
    stratosphere = 195.0 + 25.0 * torch.log(1.0e4 / pressure).clamp(min=0.0)
    base = torch.maximum(troposphere, stratosphere)
    return base + torch.randn(columns, levels, generator=generator, dtype=F64)


def test_a_dry_adiabat_is_not_cooled_and_a_stable_layer_is() -> None:
    pressure = grid(20)
    adiabat = 300.0 * (pressure / 1.0e5) ** KAPPA
    everywhere = dict(base_pressure=2.0e5, width=1.0)  # ascent at every level
    flat = ascent_tendency(adiabat[None], pressure, 3.0e-4, **everywhere)
    assert float(flat[0, 1:-1].abs().max()) < 1e-12  # central differences are exact on ln T
    isothermal = torch.full((1, 20), 200.0, dtype=F64)
    cooling = ascent_tendency(isothermal, pressure, 3.0e-4, **everywhere)
    # isothermal: dT/dt = -g w κ / R_d = -w g / c_p = -0.25 K/day for 0.3 mm/s
    expected = -3.0e-4 * 9.80665 / float(heat_capacity_dry_air)
    torch.testing.assert_close(cooling, torch.full_like(cooling, expected), rtol=1e-12, atol=0.0)


def test_ascent_is_confined_above_its_base() -> None:
    pressure = grid(40)
    tendency = ascent_tendency(tropical(40), pressure, 3.0e-4)
    below = pressure > 3.0e4
    assert float(tendency[:, below].abs().max()) * 86400 < 1e-3
    near_tropopause = (pressure > 7.0e4 / 10) & (pressure < 1.5e4)
    assert bool((tendency[:, near_tropopause] < 0).all())
    profile = ascent_profile(pressure, 2.0e4, 2.0e3)
    assert float(profile[0]) > 0.999 and float(profile[-1]) < 1e-12


def test_log_slope_matrix_differentiates_ln_t() -> None:
    pressure = grid(12)
    matrix = log_slope_matrix(pressure)
    log_p = torch.log(pressure)
    torch.testing.assert_close(matrix @ (3.0 * log_p + 1.0), torch.full((12,), 3.0, dtype=F64))


def test_function_gradcheck_forward_mode_and_kernel() -> None:
    pressure = grid(7)
    slope = log_slope_matrix(pressure)
    temperature = tropical(7, seed=3).requires_grad_()
    velocity = (
        1e3 * torch.rand(7, dtype=F64, generator=torch.Generator().manual_seed(1))
    ).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t, w: _AscentFunction.apply(t, slope, w)[0],
        (temperature, velocity),
        check_forward_ad=True,
    )
    weights = torch.randn(2, 7, dtype=F64)
    results = []
    for function in (
        lambda t, w: _AscentFunction.apply(t, slope, w)[0],
        lambda t, w: ascent_kernel(t, slope, w),
    ):
        t, w = (
            temperature.detach().clone().requires_grad_(),
            velocity.detach().clone().requires_grad_(),
        )
        value = function(t, w)
        results.append((value, *torch.autograd.grad((weights * value).sum(), (t, w))))
    for custom, reference in zip(*results, strict=True):
        torch.testing.assert_close(custom, reference, rtol=1e-12, atol=1e-18)


def test_taylor_rate_two() -> None:
    pressure = grid(10)

    def objective(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (ascent_tendency(t, pressure, w) * 86400.0).square().sum()

    result = taylor_test(objective, [tropical(10, seed=5), torch.tensor(3.0e-4, dtype=F64)])
    assert result.passed, result.rates


def test_process_liveness() -> None:
    pressure = grid(12)
    process = TropopauseUpwelling(pressure, upwelling_velocity=4.0e-4)
    state = {"air_temperature": tropical(12, seed=7).requires_grad_()}
    report = check_gradients(
        process, (state,), names=["state"], checks=("taylor", "adjoint", "liveness")
    )
    assert report.passed, str(report)
    live = {r.target for r in report.results if r.check == "liveness" and r.passed}
    assert {"upwelling_velocity", "state.air_temperature"} <= live


def test_validation_messages() -> None:
    pressure = grid(4)
    with pytest.raises(ValueError, match="scalar"):
        ascent_tendency(tropical(4), pressure, torch.ones(4, dtype=F64))
    with pytest.raises(ValueError, match="width"):
        ascent_tendency(tropical(4), pressure, 3.0e-4, width=0.0)


def test_column_option_cools_the_upper_layers_and_its_parameter_is_live() -> None:
    from climgrad.models import SingleColumnModel

    def solve(upwelling: float | None) -> tuple[SingleColumnModel, dict[str, torch.Tensor]]:
        model = SingleColumnModel(20, upwelling=upwelling)
        state = model.initial_state(
            torch.tensor([300.0], dtype=F64), torch.tensor([340.0], dtype=F64)
        )
        return model, model.equilibrium(state)

    _, plain = solve(None)
    model, lifted = solve(3.0e-4)
    assert "upwelling_velocity" in model.physical_parameters()
    pressure = model.layer_pressure
    upper = pressure < 1.5e4
    cooling = (plain["air_temperature"] - lifted["air_temperature"]).detach()[0, upper]
    assert float(cooling.min()) > 0.5  # K: the ascent cools the layers it lifts
    lifted["air_temperature"][0, upper].sum().backward()
    gradient = model.processes["upwelling"].parametrizations["upwelling_velocity"].original.grad
    assert gradient is not None and bool(torch.isfinite(gradient)) and float(gradient) < 0.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ascent_runs_on_cuda_and_matches_cpu() -> None:
    pressure = grid(16)
    temperature = tropical(16, seed=11)
    cpu = ascent_tendency(temperature, pressure, 3.0e-4)
    gpu = ascent_tendency(temperature.cuda(), pressure.cuda(), 3.0e-4)
    torch.testing.assert_close(gpu.cpu(), cpu)
