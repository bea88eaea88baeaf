"""Tests of climgrad.physics.radiation: gray two-stream longwave, shortwave, GrayRadiation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from climgrad.autograd.verify import check_gradients, taylor_test
from climgrad.constants import gravity, heat_capacity_dry_air, stefan_boltzmann
from climgrad.physics.radiation import (
    GrayRadiation,
    _EmissionOperatorFunction,
    absorbed_shortwave,
    emission_operator,
    emission_operator_kernel,
    gray_longwave_fluxes,
    gray_longwave_fluxes_kernel,
    gray_longwave_fluxes_matrix_kernel,
    heating_rate_operator,
    interface_optical_depth,
    radiative_heating_rate,
    transmission_matrices,
)

F64 = torch.float64
SURFACE_PRESSURE = 1.0e5


def interfaces(levels: int) -> torch.Tensor:
    return SURFACE_PRESSURE * torch.arange(levels + 1, dtype=F64) / levels


def column(columns: int = 3, levels: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A profile cooling upward (about 200 K at the top), with noise, and a surface temperature."""
    generator = torch.Generator().manual_seed(seed)
    surface = 270.0 + 30.0 * torch.rand(columns, generator=generator, dtype=F64)
    middle = (torch.arange(levels, dtype=F64) + 0.5) / levels
    temperature = 200.0 + (surface[:, None] - 205.0) * middle
    temperature = temperature + 2.0 * torch.rand(columns, levels, generator=generator, dtype=F64)
    return temperature, surface


def optical_depth(levels: int, tau0: float = 3.0, exponent: float = 3.5) -> torch.Tensor:
    return interface_optical_depth(interfaces(levels), tau0, exponent, SURFACE_PRESSURE)


# --------------------------------------------------------------------------------------------------
# Optical depth
# --------------------------------------------------------------------------------------------------


def test_optical_depth_power_law_and_top() -> None:
    tau0 = torch.tensor(4.0, dtype=F64, requires_grad=True)
    exponent = torch.tensor(2.0, dtype=F64, requires_grad=True)
    tau = interface_optical_depth(interfaces(4), tau0, exponent, SURFACE_PRESSURE)
    torch.testing.assert_close(tau, torch.tensor([0.0, 0.25, 1.0, 2.25, 4.0], dtype=F64))
    (grad_n,) = torch.autograd.grad(tau.sum(), exponent)
    # d/dn of τ0 (p/ps)^n is τ0 (p/ps)^n ln(p/ps); the top (p = 0) must contribute 0, not NaN.
    ratio = torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=F64)
    expected = (4.0 * ratio**2 * torch.log(ratio)).sum()
    assert torch.isfinite(grad_n)
    torch.testing.assert_close(grad_n, expected)


# --------------------------------------------------------------------------------------------------
# Forward: the three forms agree
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shared_tau", [True, False])
def test_matrix_form_matches_recurrences(shared_tau: bool) -> None:
    temperature, surface = column(4, 12)
    tau = optical_depth(12)
    if not shared_tau:
        tau = tau * torch.linspace(0.5, 2.0, 4, dtype=F64)[:, None]
    reference = gray_longwave_fluxes_kernel(temperature, surface, tau)
    for result in (
        gray_longwave_fluxes(temperature, surface, tau),
        gray_longwave_fluxes_matrix_kernel(temperature, surface, tau),
    ):
        for got, want in zip(result, reference, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-10)


def test_optically_thin_top_keeps_relative_precision() -> None:
    # Near the top the layer emissivity 1 - t_k is ~1e-8; forming it as 1 - exp(-Δτ) loses half
    # the digits (the recurrences do), expm1 keeps them: D_1 = (1 - e^{-τ_1}) σT_0⁴ exactly.
    temperature, surface = column(2, 40)
    tau = optical_depth(40, tau0=1.0, exponent=5.0)
    _, downward = gray_longwave_fluxes(temperature, surface, tau)
    expected = -torch.expm1(-tau[1]) * stefan_boltzmann * temperature[:, 0] ** 4
    torch.testing.assert_close(downward[:, 1], expected, rtol=1e-14, atol=0.0)


def test_transmission_matrices_are_triangular() -> None:
    down, up, surface = transmission_matrices(optical_depth(5))
    layer = torch.arange(5)[:, None]
    interface = torch.arange(6)[None, :]
    assert bool((down[layer >= interface] == 0).all())
    assert bool((up[layer < interface] == 0).all())
    assert float(surface[-1]) == 1.0


# --------------------------------------------------------------------------------------------------
# Gradients of the custom Function
# --------------------------------------------------------------------------------------------------


def test_emission_operator_gradcheck_shared_matrix() -> None:
    temperature, surface = column(3, 4)
    _, up, surface_vector = transmission_matrices(optical_depth(4))
    inputs = (
        temperature.requires_grad_(),
        surface.requires_grad_(),
        up.clone().requires_grad_(),
        surface_vector.clone().requires_grad_(),
    )
    assert torch.autograd.gradcheck(_EmissionOperatorFunction.apply, inputs)


def test_emission_operator_gradcheck_per_column_matrix() -> None:
    temperature, surface = column(2, 3)
    tau = optical_depth(3) * torch.tensor([[1.0], [1.7]], dtype=F64)
    _, up, surface_vector = transmission_matrices(tau)
    inputs = (
        temperature.requires_grad_(),
        surface.requires_grad_(),
        up.clone().requires_grad_(),
        surface_vector.clone().requires_grad_(),
    )
    assert torch.autograd.gradcheck(_EmissionOperatorFunction.apply, inputs)


@pytest.mark.parametrize("shared_tau", [True, False])
def test_fluxes_gradcheck_through_optical_depth(shared_tau: bool) -> None:
    temperature, surface = column(2, 4)
    tau = optical_depth(4)
    if not shared_tau:
        tau = tau * torch.tensor([[0.6], [1.3]], dtype=F64)
    inputs = (temperature.requires_grad_(), surface.requires_grad_(), tau.requires_grad_())
    assert torch.autograd.gradcheck(gray_longwave_fluxes, inputs)


def test_custom_backward_matches_autograd_through_recurrences() -> None:
    temperature, surface = column(5, 10)
    weights = torch.Generator().manual_seed(1)
    weight_up = torch.randn(5, 11, generator=weights, dtype=F64)
    weight_down = torch.randn(5, 11, generator=weights, dtype=F64)
    gradients = []
    for fluxes in (gray_longwave_fluxes, gray_longwave_fluxes_kernel):
        t = temperature.clone().requires_grad_()
        ts = surface.clone().requires_grad_()
        tau0 = torch.tensor(3.0, dtype=F64, requires_grad=True)
        exponent = torch.tensor(3.5, dtype=F64, requires_grad=True)
        tau = interface_optical_depth(interfaces(10), tau0, exponent, SURFACE_PRESSURE)
        upward, downward = fluxes(t, ts, tau)
        objective = (weight_up * upward).sum() + (weight_down * downward).sum()
        gradients.append(torch.autograd.grad(objective, (t, ts, tau0, exponent)))
    for custom, reference in zip(*gradients, strict=True):
        torch.testing.assert_close(custom, reference, rtol=1e-11, atol=1e-14)


def test_heating_operator_matches_flux_divergence() -> None:
    temperature, surface = column(3, 8)
    tau = optical_depth(8)
    thickness = torch.full((8,), SURFACE_PRESSURE / 8, dtype=F64)
    upward, downward = gray_longwave_fluxes_kernel(temperature, surface, tau)
    net = upward - downward
    matrix, vector = heating_rate_operator(transmission_matrices(tau), thickness)
    budget = emission_operator(temperature, surface, matrix, vector)
    torch.testing.assert_close(
        budget[:, :8], radiative_heating_rate(net, thickness), rtol=1e-12, atol=1e-20
    )
    torch.testing.assert_close(budget[:, 8], net[:, -1], rtol=1e-12, atol=1e-12)
    kernel_budget = emission_operator_kernel(temperature, surface, matrix, vector)
    torch.testing.assert_close(budget, kernel_budget, rtol=1e-14, atol=0.0)


def test_taylor_rate_two_in_parameters() -> None:
    temperature, surface = column(3, 6)

    def olr_and_heating(tau0: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
        tau = interface_optical_depth(interfaces(6), tau0, exponent, SURFACE_PRESSURE)
        upward, downward = gray_longwave_fluxes(temperature, surface, tau)
        return upward[:, 0].sum() + (upward - downward).square().mean()

    point = [torch.tensor(3.0, dtype=F64), torch.tensor(3.5, dtype=F64)]
    result = taylor_test(olr_and_heating, point)
    assert result.passed, result.rates
    assert min(result.rates) > 1.8


def test_taylor_rate_two_in_temperature() -> None:
    temperature, surface = column(3, 6)
    tau = optical_depth(6)

    def olr(t: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        return gray_longwave_fluxes(t, ts, tau)[0][:, 0].square().sum()

    result = taylor_test(olr, [temperature, surface])
    assert result.passed, result.rates


def test_process_gradients_and_liveness() -> None:
    temperature, surface = column(2, 5)
    process = GrayRadiation(
        interfaces(5), surface_optical_depth=3.0, pressure_exponent=3.5, surface_albedo=0.25
    )
    state = {
        "air_temperature": temperature.requires_grad_(),
        "surface_temperature": surface.requires_grad_(),
        "insolation": torch.tensor([400.0, 200.0], dtype=F64),
    }
    report = check_gradients(process, (state,), names=["state"])
    assert report.passed, str(report)
    live = {r.target for r in report.results if r.check == "liveness" and r.passed}
    assert {"surface_optical_depth", "pressure_exponent", "surface_albedo"} <= live


# --------------------------------------------------------------------------------------------------
# Physics
# --------------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    surface_temperature=st.floats(250.0, 320.0),
    contrast=st.floats(5.0, 90.0),
    tau0=st.floats(0.05, 10.0),
    exponent=st.floats(1.0, 5.0),
    factor=st.floats(1.05, 3.0),
)
def test_more_optical_depth_lowers_olr(
    surface_temperature: float, contrast: float, tau0: float, exponent: float, factor: float
) -> None:
    levels = 20
    middle = (torch.arange(levels, dtype=F64) + 0.5) / levels
    temperature = (surface_temperature - contrast + contrast * middle)[None, :]
    surface = torch.tensor([surface_temperature], dtype=F64)
    olr = [
        float(
            gray_longwave_fluxes(temperature, surface, optical_depth(levels, t, exponent))[0][0, 0]
        )
        for t in (tau0, tau0 * factor)
    ]
    assert olr[1] < olr[0]


@settings(max_examples=25, deadline=None)
@given(
    insolation=st.floats(1.0, 1400.0),
    albedo=st.floats(0.0, 0.95),
    increase=st.floats(0.001, 0.05),
)
def test_higher_albedo_lowers_absorbed_shortwave(
    insolation: float, albedo: float, increase: float
) -> None:
    q = torch.tensor([insolation], dtype=F64)
    assert float(absorbed_shortwave(q, albedo + increase)) < float(absorbed_shortwave(q, albedo))
    temperature, surface = column(1, 4)
    state = {"air_temperature": temperature, "surface_temperature": surface, "insolation": q}
    diagnostics = [
        GrayRadiation(interfaces(4), surface_albedo=a).double()(state)[1]["absorbed_shortwave"]
        for a in (albedo, albedo + increase)
    ]
    assert float(diagnostics[1].detach()) < float(diagnostics[0].detach())


def test_transparent_atmosphere_olr_is_surface_emission() -> None:
    temperature, surface = column(3, 10)
    for tau0, tolerance in ((0.0, 1e-15), (1e-8, 1e-7)):
        upward, downward = gray_longwave_fluxes(temperature, surface, optical_depth(10, tau0))
        torch.testing.assert_close(
            upward[:, 0], stefan_boltzmann * surface**4, rtol=tolerance, atol=0.0
        )
        assert float(downward[:, -1].abs().max()) <= tolerance * float(stefan_boltzmann * 300**4)


def test_isothermal_column_has_the_analytic_net_flux() -> None:
    # Isothermal atmosphere over a surface at the same temperature: U = σT⁴ at every interface and
    # D_j = σT⁴ (1 - e^{-τ_j}), so the net upward flux is σT⁴ e^{-τ_j}: every layer cools to space.
    temperature = torch.full((2, 8), 260.0, dtype=F64)
    surface = torch.full((2,), 260.0, dtype=F64)
    tau = optical_depth(8)
    upward, downward = gray_longwave_fluxes(temperature, surface, tau)
    emission = stefan_boltzmann * 260.0**4
    torch.testing.assert_close(upward, torch.full_like(upward, emission), rtol=1e-14, atol=0.0)
    torch.testing.assert_close(
        upward - downward, (emission * torch.exp(-tau)).expand(2, 9), rtol=1e-13, atol=1e-12
    )
    heating = radiative_heating_rate(upward - downward, torch.full((8,), 1.25e4, dtype=F64))
    assert float(heating.max()) < 0.0


def test_column_energy_budget_closes() -> None:
    temperature, surface = column(3, 12)
    thickness = torch.full((12,), SURFACE_PRESSURE / 12, dtype=F64)
    upward, downward = gray_longwave_fluxes(temperature, surface, optical_depth(12))
    net = upward - downward
    heating = radiative_heating_rate(net, thickness)
    column_heating = (heating * thickness * heat_capacity_dry_air / gravity).sum(-1)
    torch.testing.assert_close(column_heating, net[:, -1] - net[:, 0], rtol=1e-12, atol=1e-9)


def test_process_tendencies_and_diagnostics() -> None:
    temperature, surface = column(2, 6)
    process = GrayRadiation(interfaces(6), surface_heat_capacity=2.0e7).double()
    insolation = torch.tensor([300.0, 100.0], dtype=F64)
    state = {
        "air_temperature": temperature,
        "surface_temperature": surface,
        "insolation": insolation,
    }
    tendencies, diagnostics = process(state)
    net = diagnostics["net_upward_longwave_flux"]
    expected_surface = (0.7 * insolation - net[:, -1]) / 2.0e7
    torch.testing.assert_close(tendencies["surface_temperature"], expected_surface)
    torch.testing.assert_close(diagnostics["outgoing_longwave_radiation"], net[:, 0])
    assert tendencies["air_temperature"].shape == (2, 6)


def test_validation_messages() -> None:
    temperature, surface = column(1, 3)
    tau = optical_depth(3)
    with pytest.raises(ValueError, match=r"adding 273\.15"):
        gray_longwave_fluxes(temperature - 273.15, surface, tau)
    with pytest.raises(ValueError, match="interfaces"):
        gray_longwave_fluxes(temperature, surface, tau[:-1])
    with pytest.raises(ValueError, match="must not decrease downward"):
        gray_longwave_fluxes(temperature, surface, tau.flip(0))
    with pytest.raises(ValueError, match="strictly increase"):
        GrayRadiation(interfaces(3).flip(0))


def test_torch_func_vmap_and_jacrev() -> None:
    temperature, surface = column(3, 5)
    tau = optical_depth(5)
    thickness = torch.full((5,), SURFACE_PRESSURE / 5, dtype=F64)
    matrix, vector = heating_rate_operator(transmission_matrices(tau), thickness)

    def budget(t: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        return emission_operator(t, ts, matrix, vector)

    torch.testing.assert_close(
        torch.func.vmap(budget)(temperature, surface), budget(temperature, surface)
    )
    jacobian = torch.func.jacrev(budget)(temperature[0], surface[0])
    reference = torch.autograd.functional.jacobian(
        lambda t: emission_operator_kernel(t, surface[0], matrix, vector), temperature[0]
    )
    torch.testing.assert_close(jacobian, reference)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_and_matches_cpu() -> None:
    temperature, surface = column(3, 6)
    tau = optical_depth(6)
    cpu = gray_longwave_fluxes(temperature, surface, tau)
    gpu = gray_longwave_fluxes(temperature.cuda(), surface.cuda(), tau.cuda())
    for got, want in zip(gpu, cpu, strict=True):
        torch.testing.assert_close(got.cpu(), want)
    process = GrayRadiation(interfaces(6)).double().cuda()
    state = {
        "air_temperature": temperature.cuda(),
        "surface_temperature": surface.cuda(),
        "insolation": torch.full((3,), 340.0, dtype=F64, device="cuda"),
    }
    tendencies, _ = process(state)
    tendencies["air_temperature"].sum().backward()
    assert process.surface_optical_depth.grad is not None
