"""Tests of the energy-balance-model terms: grid, OLR, ice albedo, meridional diffusion."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from climgrad.autograd.verify import check_gradients, taylor_test
from climgrad.physics.ebm import (
    AbsorbedShortwave,
    IceAlbedo,
    LatitudeGrid,
    MeridionalDiffusion,
    NetHeatingJacobian,
    OutgoingLongwave,
    absorbed_shortwave,
    ice_albedo,
    implicit_diffusion_kernel,
    implicit_meridional_diffusion_step,
    meridional_diffusion,
    net_heating_coefficients,
    net_heating_kernel,
    net_heating_parameter_vjp,
    outgoing_longwave,
)
from climgrad.physics.insolation import annual_mean_insolation_p2, legendre_p2
from climgrad.tridiagonal import solve_tridiagonal, tridiagonal_matvec

F64 = torch.float64
KELVIN = 273.15


def _temperature(grid: LatitudeGrid, seed: int = 0, spread: float = 30.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(grid.n_bands, generator=generator, dtype=F64)
    return 280.0 - spread * legendre_p2(grid.sin_latitude) + noise


# ----------------------------------------------------------------------------------------------
# Grid


def test_grid_matches_benchmark_b3() -> None:
    grid = LatitudeGrid.uniform(90)
    expected_centres = torch.tensor([-89.0 + 2.0 * j for j in range(90)], dtype=F64)
    torch.testing.assert_close(grid.latitude_degrees, expected_centres, rtol=0, atol=1e-12)
    assert grid.band_width == pytest.approx(math.pi / 90)
    assert grid.interface_weights[0].item() == 0.0
    assert grid.interface_weights[-1].item() == 0.0
    torch.testing.assert_close(grid.interface_weights[1:-1], torch.cos(grid.band_boundaries[1:-1]))
    torch.testing.assert_close(grid.sin_latitude, torch.sin(grid.band_centres))
    torch.testing.assert_close(grid.sin_latitude, -grid.sin_latitude.flip(0))
    # A uniform field has its own value as the global mean.
    assert float(grid.global_mean(torch.full((90,), 3.0, dtype=F64))) == pytest.approx(3.0)


def test_grid_to_casts_every_tensor() -> None:
    grid = LatitudeGrid.uniform(12).to(dtype=torch.float32)
    assert grid.cos_latitude.dtype == torch.float32
    assert grid.interface_weights[0].item() == 0.0
    assert grid.n_bands == 12


def test_grid_rejects_too_few_bands() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        LatitudeGrid.uniform(1)


# ----------------------------------------------------------------------------------------------
# Outgoing longwave


def test_outgoing_longwave_uses_celsius_inside() -> None:
    temperature = torch.tensor([KELVIN - 10.0, KELVIN, KELVIN + 15.0], dtype=F64)
    olr = outgoing_longwave(temperature, 210.0, 2.0)
    torch.testing.assert_close(olr, torch.tensor([190.0, 210.0, 240.0], dtype=F64))


def test_outgoing_longwave_rejects_celsius_state() -> None:
    with pytest.raises(ValueError, match=r"adding 273\.15"):
        outgoing_longwave(torch.tensor([-5.0, 10.0]), 210.0, 2.0)


def test_outgoing_longwave_module_gradients() -> None:
    grid = LatitudeGrid.uniform(6)
    module = OutgoingLongwave(210.0, 2.0, heat_capacity=4.2e6)
    state = {"surface_temperature": _temperature(grid).requires_grad_(True)}
    report = check_gradients(module, (state,), names=["state"])
    assert report.passed, str(report)
    names = {result.target for result in report.results if result.check == "liveness"}
    assert {"olr_intercept", "olr_slope", "state.surface_temperature"} <= names


def test_outgoing_longwave_tendency_and_diagnostic() -> None:
    module = OutgoingLongwave(200.0, 2.0, heat_capacity=2.0e6)
    temperature = torch.tensor([KELVIN + 5.0], dtype=F64)
    tendencies, diagnostics = module({"surface_temperature": temperature})
    assert float(diagnostics["outgoing_longwave_radiation"].detach()) == pytest.approx(210.0)
    assert float(tendencies["surface_temperature"].detach()) == pytest.approx(-210.0 / 2.0e6)
    tendencies, _ = OutgoingLongwave()({"surface_temperature": temperature})
    assert tendencies == {}


def test_process_reports_missing_state() -> None:
    with pytest.raises(KeyError, match="surface_temperature"):
        OutgoingLongwave()({"air_temperature": torch.ones(3)})


# ----------------------------------------------------------------------------------------------
# Ice albedo and absorbed shortwave


def test_smooth_albedo_is_benchmark_b3_formula() -> None:
    grid = LatitudeGrid.uniform(90)
    temperature = _temperature(grid, spread=40.0) - 20.0
    albedo = ice_albedo(grid.sin_latitude, temperature, mode="smooth")
    warm = 0.30 + 0.078 * legendre_p2(grid.sin_latitude)
    celsius = temperature - KELVIN
    ice = 0.5 * (1.0 - torch.tanh((celsius + 10.0) / 2.0))
    torch.testing.assert_close(albedo, warm + (0.62 - warm) * ice, rtol=0, atol=1e-15)


def test_exact_and_straight_through_albedo_are_sharp() -> None:
    x = torch.zeros(2, dtype=F64)
    temperature = torch.tensor([262.0, 264.0], dtype=F64)
    for mode in ("exact", "straight_through"):
        albedo = ice_albedo(x, temperature, mode=mode)
        warm = 0.30 + 0.078 * (-0.5)
        torch.testing.assert_close(albedo, torch.tensor([0.62, warm], dtype=F64))


def _albedo_inputs(mode: str) -> tuple[IceAlbedo, torch.Tensor]:
    grid = LatitudeGrid.uniform(8)
    # Bands on both sides of T_f = 263.15 K, none within 0.5 K of it.
    temperature = torch.tensor([250.0, 258.0, 266.0, 290.0, 295.0, 270.0, 261.0, 240.0], dtype=F64)
    return IceAlbedo(grid.sin_latitude, mode=mode), temperature.requires_grad_(True)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["exact", "smooth"])
def test_ice_albedo_gradients(mode: str) -> None:
    module, temperature = _albedo_inputs(mode)
    dead = ["freezing_temperature", "temperature"] if mode == "exact" else []
    report = check_gradients(module, (temperature,), names=["temperature"], expect_dead=dead)
    assert report.passed, str(report)


def test_ice_albedo_liveness_by_mode() -> None:
    """T_f is dead in "exact", live in "smooth" and "straight_through" (the documented table)."""
    for mode, expect_dead in (
        ("exact", ["freezing_temperature"]),
        ("smooth", []),
        ("straight_through", []),
    ):
        module, temperature = _albedo_inputs(mode)
        report = check_gradients(
            module, (temperature,), names=["temperature"], checks=("liveness",)
        )
        live = {r.target for r in report.results if r.passed and "expected" not in r.detail}
        dead = {r.target for r in report.results if not r.passed}
        for name in ("ice_free_albedo", "ice_free_albedo_p2", "ice_covered_albedo"):
            assert name in live, (mode, str(report))
        assert ("freezing_temperature" in dead) == bool(expect_dead), (mode, str(report))
        strict = check_gradients(
            module,
            (temperature,),
            names=["temperature"],
            checks=("liveness",),
            expect_dead=[*expect_dead, *(["temperature"] if mode == "exact" else [])],
        )
        assert strict.passed, str(strict)


def test_straight_through_backward_is_smooth_backward() -> None:
    smooth, temperature = _albedo_inputs("smooth")
    straight, _ = _albedo_inputs("straight_through")
    weights = torch.linspace(0.5, 1.5, 8, dtype=F64)
    grads = []
    for module in (smooth, straight):
        (module(temperature) * weights).sum().backward()
        grads.append([p.grad.clone() for p in module.parameters()])  # type: ignore[union-attr]
    for smooth_grad, straight_grad, name in zip(
        grads[0], grads[1], [n for n, _ in smooth.named_parameters()]
    ):
        if name == "freezing_temperature":
            # The tanh derivative is the same; the forward values (hence a_i - a_w weights) agree.
            torch.testing.assert_close(smooth_grad, straight_grad)


def test_absorbed_shortwave_module_gradients() -> None:
    grid = LatitudeGrid.uniform(8)
    module = AbsorbedShortwave(grid, heat_capacity=4.2e6)
    state = {"surface_temperature": _albedo_inputs("smooth")[1]}
    report = check_gradients(module, (state,), names=["state"])
    assert report.passed, str(report)


@settings(max_examples=25, deadline=None)
@given(
    low=st.floats(0.0, 1.0),
    extra=st.floats(0.0, 1.0),
    insolation=st.floats(0.0, 600.0),
)
def test_higher_albedo_lowers_absorbed_shortwave(
    low: float, extra: float, insolation: float
) -> None:
    high = min(1.0, low + extra)
    q = torch.tensor([insolation], dtype=F64)
    darker = absorbed_shortwave(q, torch.tensor([low], dtype=F64))
    brighter = absorbed_shortwave(q, torch.tensor([high], dtype=F64))
    assert float(brighter) <= float(darker)
    assert 0.0 <= float(brighter) <= insolation


@settings(max_examples=25, deadline=None)
@given(
    ice_albedo_value=st.floats(0.3, 0.9),
    increase=st.floats(0.0, 0.1),
    temperature=st.floats(200.0, 320.0),
    mode=st.sampled_from(["exact", "smooth", "straight_through"]),
)
def test_brighter_ice_lowers_absorbed_shortwave(
    ice_albedo_value: float, increase: float, temperature: float, mode: str
) -> None:
    grid = LatitudeGrid.uniform(4)
    state = {"surface_temperature": torch.full((4,), temperature, dtype=F64)}
    values = []
    for albedo in (ice_albedo_value, ice_albedo_value + increase):
        module = AbsorbedShortwave(grid, ice_covered_albedo=albedo, mode=mode)  # type: ignore[arg-type]
        values.append(module(state)[1]["absorbed_shortwave_radiation"])
    assert bool((values[1] <= values[0] + 1e-12).all())


def test_absorbed_shortwave_diagnostics() -> None:
    grid = LatitudeGrid.uniform(6)
    module = AbsorbedShortwave(grid, mode="exact", heat_capacity=1.0e6)
    temperature = torch.tensor([250.0, 270.0, 300.0, 300.0, 270.0, 250.0], dtype=F64)
    tendencies, diagnostics = module({"surface_temperature": temperature})
    torch.testing.assert_close(
        diagnostics["ice_fraction"], torch.tensor([1.0, 0, 0, 0, 0, 1.0], dtype=F64)
    )
    expected = annual_mean_insolation_p2(grid.sin_latitude, 1360.0) * (1 - diagnostics["albedo"])
    torch.testing.assert_close(diagnostics["absorbed_shortwave_radiation"], expected)
    torch.testing.assert_close(tendencies["surface_temperature"], expected / 1.0e6)


def test_albedo_validation_messages() -> None:
    x = torch.zeros(2, dtype=F64)
    with pytest.raises(ValueError, match="Unknown gradient mode"):
        ice_albedo(x, torch.full((2,), 280.0, dtype=F64), mode="sharp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="transition_width"):
        ice_albedo(x, torch.full((2,), 280.0, dtype=F64), transition_width=0.0)
    with pytest.raises(ValueError, match="freezing_temperature"):
        IceAlbedo(x, freezing_temperature=-10.0)


# ----------------------------------------------------------------------------------------------
# Meridional diffusion: explicit operator


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_bands=st.integers(2, 40))
def test_explicit_diffusion_conserves_area_integral(seed: int, n_bands: int) -> None:
    grid = LatitudeGrid.uniform(n_bands)
    generator = torch.Generator().manual_seed(seed)
    temperature = 250.0 + 50.0 * torch.rand(3, n_bands, generator=generator, dtype=F64)
    heating = meridional_diffusion(temperature, 0.6, grid)
    total = (heating * grid.cos_latitude).sum(-1)
    scale = (heating.abs() * grid.cos_latitude).sum(-1)
    assert bool((total.abs() <= 1e-13 * scale + 1e-300).all())


def test_explicit_diffusion_matches_tridiagonal_bands_and_b3_formula() -> None:
    grid = LatitudeGrid.uniform(90)
    temperature = _temperature(grid)
    heating = meridional_diffusion(temperature, 0.555, grid)
    lower, diag, upper = grid.diffusion_bands()
    torch.testing.assert_close(heating, 0.555 * tridiagonal_matvec(lower, diag, upper, temperature))
    # B3.2 written out for one interior band and both polar bands.
    c, cos, dphi = grid.interface_weights, grid.cos_latitude, grid.band_width
    t = temperature
    j = 37
    expected = (c[j + 1] * (t[j + 1] - t[j]) - c[j] * (t[j] - t[j - 1])) / (cos[j] * dphi**2)
    assert float(heating[j]) == pytest.approx(0.555 * float(expected), rel=1e-12)
    expected_pole = c[1] * (t[1] - t[0]) / (cos[0] * dphi**2)
    assert float(heating[0]) == pytest.approx(0.555 * float(expected_pole), rel=1e-12)


def test_explicit_diffusion_converges_to_legendre_eigenvalue() -> None:
    """𝓛 P₂ = −6 P₂ in the continuum; the finite-volume error falls as Δφ²."""
    errors = []
    for n_bands in (45, 90, 180):
        grid = LatitudeGrid.uniform(n_bands)
        p2 = legendre_p2(grid.sin_latitude)
        heating = meridional_diffusion(p2 + KELVIN, 1.0, grid)
        errors.append(float((heating + 6.0 * p2).abs().max()))
    assert errors[1] < 0.01
    assert errors[0] / errors[1] == pytest.approx(4.0, rel=0.1)
    assert errors[1] / errors[2] == pytest.approx(4.0, rel=0.1)


def test_meridional_diffusion_module() -> None:
    grid = LatitudeGrid.uniform(6)
    module = MeridionalDiffusion(grid, diffusivity=0.555, heat_capacity=4.2e6)
    state = {"surface_temperature": _temperature(grid).requires_grad_(True)}
    report = check_gradients(module, (state,), names=["state"])
    assert report.passed, str(report)
    tendencies, diagnostics = module(state)
    torch.testing.assert_close(
        tendencies["surface_temperature"], diagnostics["meridional_heat_convergence"] / 4.2e6
    )


def test_diffusion_validation_messages() -> None:
    grid = LatitudeGrid.uniform(6)
    with pytest.raises(ValueError, match="6 latitude bands"):
        meridional_diffusion(torch.full((5,), 280.0, dtype=F64), 0.5, grid)
    with pytest.raises(ValueError, match="diffusivity"):
        meridional_diffusion(torch.full((6,), 280.0, dtype=F64), -0.5, grid)
    with pytest.raises(ValueError, match="heat_capacity"):
        implicit_meridional_diffusion_step(torch.full((6,), 280.0, dtype=F64), 0.5, 0.0, 1.0, grid)
    with pytest.raises(ValueError, match="heat capacity"):
        MeridionalDiffusion(grid).implicit_step(torch.full((6,), 280.0, dtype=F64), 1.0)


# ----------------------------------------------------------------------------------------------
# Meridional diffusion: implicit step (custom Function)

DAY = 86400.0


def _implicit_inputs(
    n_bands: int = 7, batch: tuple[int, ...] = ()
) -> tuple[LatitudeGrid, torch.Tensor, torch.Tensor, torch.Tensor]:
    grid = LatitudeGrid.uniform(n_bands)
    generator = torch.Generator().manual_seed(3)
    temperature = 270.0 + 20.0 * torch.randn(*batch, n_bands, generator=generator, dtype=F64)
    diffusivity = torch.tensor(0.55, dtype=F64)
    heat_capacity = 4.2e6 * (1.0 + 0.5 * torch.rand(n_bands, generator=generator, dtype=F64))
    return grid, temperature, diffusivity, heat_capacity


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_bands=st.integers(2, 30),
    days=st.floats(0.1, 3650.0),
    uniform_capacity=st.booleans(),
)
def test_implicit_step_conserves_energy(
    seed: int, n_bands: int, days: float, uniform_capacity: bool
) -> None:
    grid = LatitudeGrid.uniform(n_bands)
    generator = torch.Generator().manual_seed(seed)
    temperature = 230.0 + 80.0 * torch.rand(2, n_bands, generator=generator, dtype=F64)
    capacity: float | torch.Tensor = 4.2e7
    if not uniform_capacity:
        capacity = 4.2e6 * (1.0 + torch.rand(n_bands, generator=generator, dtype=F64))
    stepped = implicit_meridional_diffusion_step(temperature, 0.6, capacity, days * DAY, grid)
    weights = grid.cos_latitude * torch.as_tensor(capacity, dtype=F64)
    before = (temperature * weights).sum(-1)
    after = (stepped * weights).sum(-1)
    torch.testing.assert_close(after, before, rtol=1e-12, atol=0.0)


def test_implicit_step_solves_backward_euler() -> None:
    grid, temperature, diffusivity, capacity = _implicit_inputs(9, (3,))
    time_step = 30 * DAY
    stepped = implicit_meridional_diffusion_step(
        temperature, diffusivity, capacity, time_step, grid
    )
    residual = capacity * (stepped - temperature) / time_step - meridional_diffusion(
        stepped, diffusivity, grid
    )
    assert float(residual.abs().max()) < 1e-9


def test_implicit_step_tends_to_explicit_tendency() -> None:
    grid, temperature, diffusivity, capacity = _implicit_inputs(9)
    tendency = meridional_diffusion(temperature, diffusivity, grid) / capacity
    errors = []
    for time_step in (1.0, 10.0):
        stepped = implicit_meridional_diffusion_step(
            temperature, diffusivity, capacity, time_step, grid
        )
        difference = (stepped - temperature) / time_step - tendency
        errors.append(float(difference.abs().max() / tendency.abs().max()))
    # Backward Euler is first order: the error of the difference quotient is O(Δt).
    assert errors[0] < 1e-5
    assert errors[1] / errors[0] == pytest.approx(10.0, rel=0.05)


def test_implicit_step_gradients() -> None:
    grid, temperature, diffusivity, capacity = _implicit_inputs(7, (2,))

    def step(t0: torch.Tensor, d: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # Heat capacity in units of 4.2e6 J m-2 K-1, so gradcheck's absolute step is meaningful.
        return implicit_meridional_diffusion_step(t0, d, 4.2e6 * c, 40 * DAY, grid)

    inputs = (
        temperature.requires_grad_(True),
        diffusivity.clone().requires_grad_(True),
        (capacity / 4.2e6).requires_grad_(True),
    )
    report = check_gradients(step, inputs, names=["temperature", "diffusivity", "heat_capacity"])
    assert report.passed, str(report)
    assert "forward-mode AD" in str(report)


def test_implicit_step_backward_matches_autograd_through_thomas_kernel() -> None:
    grid, temperature, _, capacity = _implicit_inputs(11, (3,))
    diffusivity = torch.tensor([0.4, 0.55, 0.7], dtype=F64)
    lower, diag, upper = grid.diffusion_bands()
    weights = torch.randn(3, 11, generator=torch.Generator().manual_seed(1), dtype=F64)
    grads = []
    for use_custom in (True, False):
        leaves = [
            temperature.clone().requires_grad_(True),
            diffusivity.clone().requires_grad_(True),
            capacity.clone().requires_grad_(True),
        ]
        if use_custom:
            out = implicit_meridional_diffusion_step(*leaves, 10 * DAY, grid)
        else:
            out = implicit_diffusion_kernel(
                leaves[0], leaves[1].unsqueeze(-1), leaves[2], lower, diag, upper, 10 * DAY
            )
        grads.append(torch.autograd.grad((out * weights).sum(), leaves))
    for custom, reference in zip(*grads):
        torch.testing.assert_close(custom, reference, rtol=1e-10, atol=1e-18)


def test_implicit_step_jvp_and_vmap_match_reference() -> None:
    grid, temperature, diffusivity, capacity = _implicit_inputs(8, (2,))
    lower, diag, upper = grid.diffusion_bands()
    time_step = 20 * DAY
    tangents = (torch.randn_like(temperature), torch.tensor(0.1, dtype=F64), capacity * 0.01)

    def custom(t0: torch.Tensor, d: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return implicit_meridional_diffusion_step(t0, d, c, time_step, grid)

    def reference(t0: torch.Tensor, d: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return implicit_diffusion_kernel(t0, d, c, lower, diag, upper, time_step)

    primals = (temperature, diffusivity, capacity)
    _, jvp_custom = torch.func.jvp(custom, primals, tangents)
    _, jvp_reference = torch.func.jvp(reference, primals, tangents)
    torch.testing.assert_close(jvp_custom, jvp_reference, rtol=1e-10, atol=1e-12)
    from climgrad.physics.ebm import _ImplicitDiffusionFunction

    def apply(t0: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = _ImplicitDiffusionFunction.apply(
            t0, diffusivity, capacity, lower, diag, upper, time_step
        )
        return result

    batched = torch.func.vmap(apply)(temperature)
    torch.testing.assert_close(batched, custom(*primals))


def test_implicit_step_taylor() -> None:
    grid, temperature, diffusivity, capacity = _implicit_inputs(7)

    def loss(d: torch.Tensor) -> torch.Tensor:
        stepped = implicit_meridional_diffusion_step(temperature, d, capacity, 200 * DAY, grid)
        return (stepped**2).sum()

    result = taylor_test(loss, diffusivity, torch.tensor(0.2, dtype=F64))
    assert result.passed, str(result)
    assert min(result.judged_rates) > 1.8


def test_implicit_step_with_explicit_sources_reaches_b3_equilibrium() -> None:
    """B3.3: implicit diffusion + explicit sources, h = 1 m, 90 steps/year, 2 years (θ₀)."""
    grid = LatitudeGrid.uniform(90)
    sources = [OutgoingLongwave(190.0, 1.8), AbsorbedShortwave(grid)]
    diffusion = MeridionalDiffusion(grid, 0.45)
    equilibrium, _ = _newton(grid, 190.0, 1.8, 0.45)
    capacity = 4.2e6 * 1.0
    time_step = 365.2422 * DAY / 90
    temperature = KELVIN + 12.0 - 40.0 * legendre_p2(grid.sin_latitude)
    with torch.no_grad():
        for _ in range(2 * 90):
            heating = sum(process.heating(temperature) for process in sources)
            temperature = diffusion.implicit_step(
                temperature + time_step * heating / capacity, time_step, capacity
            )
    assert float((temperature - equilibrium).abs().max()) <= 5e-9


# ----------------------------------------------------------------------------------------------
# Steady states: North (1975) analytic solution and the B3 reference values


def _ice_free_forcing(grid: LatitudeGrid) -> torch.Tensor:
    # T_f = 1 K: no band is ever ice-covered, so a = a₀ + a₂ P₂(x).
    shortwave = AbsorbedShortwave(grid, freezing_temperature=1.0, mode="exact")
    with torch.no_grad():
        return shortwave.heating(torch.full((grid.n_bands,), 300.0, dtype=F64))


def _ice_free_steady_state(n_bands: int) -> tuple[LatitudeGrid, torch.Tensor]:
    grid = LatitudeGrid.uniform(n_bands)
    olr_intercept, olr_slope, diffusivity = 210.0, 2.0, 0.555
    absorbed = _ice_free_forcing(grid)
    lower, diag, upper = grid.diffusion_bands()
    # (B − D𝓛) T_C = ASR − A
    celsius = solve_tridiagonal(
        -diffusivity * lower, olr_slope - diffusivity * diag, -diffusivity * upper,
        absorbed - olr_intercept,
    )  # fmt: skip
    return grid, celsius


def test_ice_free_steady_state_matches_north_1975() -> None:
    """T = T₀ + T₂ P₂ + T₄ P₄ (North 1975) with a₂ kept: P₂² = 1/5 + (2/7) P₂ + (18/35) P₄."""
    q, s2, a0, a2 = 340.0, -0.482, 0.30, 0.078
    olr_intercept, olr_slope, diffusivity = 210.0, 2.0, 0.555
    t0 = (q * ((1 - a0) - s2 * a2 / 5) - olr_intercept) / olr_slope
    t2 = q * (s2 * (1 - a0) - a2 - 2.0 / 7.0 * s2 * a2) / (olr_slope + 6 * diffusivity)
    t4 = -q * s2 * a2 * (18.0 / 35.0) / (olr_slope + 20 * diffusivity)
    errors = []
    for n_bands in (90, 180):
        grid, celsius = _ice_free_steady_state(n_bands)
        x = grid.sin_latitude
        p4 = (35 * x**4 - 30 * x**2 + 3) / 8
        analytic = t0 + t2 * legendre_p2(x) + t4 * p4
        errors.append(float((celsius - analytic).abs().max()))
        # Diffusion only moves energy, so the discrete global mean balances exactly; it is T₀ up
        # to the error of the cos-weighted midpoint quadrature of the forcing.
        balance = grid.global_mean(_ice_free_forcing(grid) - olr_intercept) / olr_slope
        assert float(grid.global_mean(celsius)) == pytest.approx(float(balance), rel=1e-12)
        assert float(grid.global_mean(celsius)) == pytest.approx(t0, abs=5e-3)
    assert errors[0] < 0.02  # K, at 2° bands; largest in the polar bands
    assert errors[0] / errors[1] == pytest.approx(4.0, rel=0.15)


B3_TRUTH = (210.0, 2.0, 0.555)
B3_GUESS = (190.0, 1.8, 0.45)


def _processes(
    grid: LatitudeGrid, olr_intercept: object, olr_slope: object, diffusivity: object
) -> tuple[OutgoingLongwave, AbsorbedShortwave, MeridionalDiffusion]:
    return (
        OutgoingLongwave(olr_intercept, olr_slope),  # type: ignore[arg-type]
        AbsorbedShortwave(grid, mode="smooth"),
        MeridionalDiffusion(grid, diffusivity),  # type: ignore[arg-type]
    )


def _newton(
    grid: LatitudeGrid, olr_intercept: float, olr_slope: float, diffusivity: float
) -> tuple[torch.Tensor, int]:
    """B3.3: Newton's method from T⁰ = 12 − 40 P₂(x) °C with the tridiagonal Jacobian of B3.2."""
    olr, shortwave, diffusion = _processes(grid, olr_intercept, olr_slope, diffusivity)
    lower, diag, upper = grid.diffusion_bands()
    temperature = KELVIN + 12.0 - 40.0 * legendre_p2(grid.sin_latitude)
    for iteration in range(20):
        point = temperature.detach().requires_grad_(True)
        local = olr.heating(point) + shortwave.heating(point)
        (local_derivative,) = torch.autograd.grad(local.sum(), point)  # diagonal: pointwise terms
        with torch.no_grad():
            residual = local + diffusion.heating(point)
            if float(residual.abs().max()) <= 1e-10:
                return temperature, iteration
            step = solve_tridiagonal(
                diffusivity * lower, diffusivity * diag + local_derivative, diffusivity * upper,
                -residual,
            )  # fmt: skip
        temperature = temperature + step
    raise AssertionError("Newton did not converge")


def test_b3_equilibria_reference_values() -> None:
    grid = LatitudeGrid.uniform(90)
    reference = {
        B3_TRUTH: ([-15.8491945563, 27.7893998288, -4.09487466008, -10.3692621857],
                   13.8706184083, 237.741236817, 6),
        B3_GUESS: ([-1.87907431659, 43.5917789508, 8.32253207769, 2.67795271754],
                   28.0831757221, 240.5497163, 4),
    }  # fmt: skip
    latitudes = grid.latitude_degrees
    for theta, (temperatures, mean_t, mean_olr, iterations) in reference.items():
        temperature, count = _newton(grid, *theta)
        celsius = temperature - KELVIN
        assert count == iterations
        for latitude, value in zip((-89.0, -1.0, 61.0, 71.0), temperatures):
            index = int(torch.argmin((latitudes - latitude).abs()))
            assert float(celsius[index]) == pytest.approx(value, rel=1e-9, abs=1e-9)
        torch.testing.assert_close(celsius, celsius.flip(0), rtol=0, atol=1e-9)
        assert float(grid.global_mean(celsius)) == pytest.approx(mean_t, rel=1e-9)
        olr = outgoing_longwave(temperature, theta[0], theta[1])
        assert float(grid.global_mean(olr)) == pytest.approx(mean_olr, rel=1e-9)
    # Ice edge at the truth: T = T_f between band centres, linear interpolation.
    temperature, _ = _newton(grid, *B3_TRUTH)
    celsius = (temperature - KELVIN)[45:]
    north = latitudes[45:]
    index = int(torch.nonzero(celsius < -10.0)[0])
    fraction = (celsius[index - 1] + 10.0) / (celsius[index - 1] - celsius[index])
    edge = north[index - 1] + fraction * (north[index] - north[index - 1])
    assert float(edge) == pytest.approx(70.3680967616, rel=1e-9)


def test_b3_loss_and_gradient_by_implicit_differentiation() -> None:
    """Φ(θ₀) and ∂Φ/∂θ (B3.6) from the equilibrium and one adjoint (transposed) solve."""
    grid = LatitudeGrid.uniform(90)
    truth, _ = _newton(grid, *B3_TRUTH)
    observed_temperature = truth - KELVIN
    observed_olr = outgoing_longwave(truth, *B3_TRUTH[:2])
    equilibrium, _ = _newton(grid, *B3_GUESS)
    olr, shortwave, diffusion = _processes(grid, *B3_GUESS)
    theta = [olr.olr_intercept, olr.olr_slope, diffusion.diffusivity]

    point = equilibrium.detach().requires_grad_(True)
    model_olr = olr.heating(point).neg()
    loss = (
        0.5
        * (
            (((point - KELVIN) - observed_temperature) / 0.1) ** 2
            + ((model_olr - observed_olr) / 0.2) ** 2
        ).sum()
    )
    loss_grads = [
        torch.zeros(()) if g is None else g
        for g in torch.autograd.grad(loss, [point, *theta], allow_unused=True)
    ]
    residual = olr.heating(point) + shortwave.heating(point) + diffusion.heating(point)
    # Jacobian ∂F/∂T is tridiagonal: D𝓛 + diag(local derivative); λ solves Jᵀ λ = −∂Φ/∂T.
    local = olr.heating(point) + shortwave.heating(point)
    (local_derivative,) = torch.autograd.grad(local.sum(), point, retain_graph=True)
    lower, diag, upper = grid.diffusion_bands()
    d = B3_GUESS[2]
    transposed_lower = torch.nn.functional.pad(d * upper[:-1], (1, 0))
    transposed_upper = torch.nn.functional.pad(d * lower[1:], (0, 1))
    adjoint = solve_tridiagonal(
        transposed_lower, d * diag + local_derivative.detach(), transposed_upper, -loss_grads[0]
    )
    residual_grads = torch.autograd.grad(residual, theta, grad_outputs=adjoint)
    gradient = [float(a + b) for a, b in zip(loss_grads[1:], residual_grads)]
    assert float(loss.detach()) == pytest.approx(893957.153119, rel=1e-9)
    expected = [-69467.4700283, -1836558.88091, 1370821.77127]
    for value, reference in zip(gradient, expected):
        assert value == pytest.approx(reference, rel=1e-8)


def test_b3_jacobian_by_forward_mode() -> None:
    """torch.func.jacfwd through the processes gives B3.2's tridiagonal Jacobian."""
    grid = LatitudeGrid.uniform(12)
    olr, shortwave, diffusion = _processes(grid, *B3_TRUTH)
    temperature = KELVIN - 10.0 + 15.0 * torch.cos(grid.band_centres)

    def residual(t: torch.Tensor) -> torch.Tensor:
        return olr.heating(t) + shortwave.heating(t) + diffusion.heating(t)

    jacobian = torch.func.jacfwd(residual)(temperature)
    lower, diag, upper = grid.diffusion_bands()
    operator = torch.diag(diag) + torch.diag(lower[1:], -1) + torch.diag(upper[:-1], 1)
    warm = 0.30 + 0.078 * legendre_p2(grid.sin_latitude)
    slope = 1.0 - torch.tanh((temperature - 263.15) / 2.0) ** 2
    albedo_derivative = -(0.62 - warm) * slope / (2 * 2.0)
    expected = B3_TRUTH[2] * operator - torch.diag(
        shortwave.insolation * albedo_derivative + B3_TRUTH[1]
    )
    torch.testing.assert_close(jacobian.detach(), expected, rtol=1e-12, atol=1e-12)


def test_implicit_step_method_runs_under_vmap() -> None:
    grid, temperature, _, capacity = _implicit_inputs(10, (4,))
    module = MeridionalDiffusion(grid, 0.6, heat_capacity=capacity)
    batched = torch.func.vmap(lambda t: module.implicit_step(t, 5 * DAY))(temperature)
    torch.testing.assert_close(
        batched.detach(), module.implicit_step(temperature, 5 * DAY).detach()
    )


# ----------------------------------------------------------------------------------------------
# The whole model's net heating in closed form (Newton's residual), its bands and its VJP

MODES = ("smooth", "exact", "straight_through")


def _net_heating_inputs(
    grid: LatitudeGrid, batch: tuple[int, ...] = ()
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A temperature across the ice edge and the five coefficients at B3-like parameters."""
    generator = torch.Generator().manual_seed(3)
    temperature = KELVIN - 5.0 + 25.0 * torch.cos(grid.band_centres)
    temperature = temperature + torch.randn(*batch, grid.n_bands, generator=generator, dtype=F64)
    insolation = annual_mean_insolation_p2(grid.sin_latitude, solar_constant=1360.0)
    scale = torch.ones(batch, dtype=F64) if batch else torch.ones((), dtype=F64)
    a0, a2, ai = 0.30 * scale, 0.078 * scale, 0.62 * scale
    olr_intercept, olr_slope, diffusivity = 200.0 * scale, 1.9 * scale, 0.5 * scale
    freezing = 263.15 * scale
    if batch:
        a0, a2, ai, olr_intercept, olr_slope, diffusivity, freezing = (
            t.unsqueeze(-1) for t in (a0, a2, ai, olr_intercept, olr_slope, diffusivity, freezing)
        )
    offset, ice_contrast = net_heating_coefficients(
        insolation, a0, a2, ai, olr_intercept, legendre_p2(grid.sin_latitude)
    )
    diffusion_scale = diffusivity / (grid.cos_latitude * grid.band_width**2)
    return temperature, [offset, ice_contrast, olr_slope, diffusion_scale, freezing]


def _constants(grid: LatitudeGrid, mode: str) -> dict[str, object]:
    return {"transition_width": 2.0, "interface_weights": grid.interface_weights, "mode": mode}


@pytest.mark.parametrize("mode", MODES)
def test_net_heating_kernel_is_the_sum_of_the_processes(mode: str) -> None:
    grid = LatitudeGrid.uniform(24)
    temperature, coefficients = _net_heating_inputs(grid)
    olr = OutgoingLongwave(200.0, 1.9)
    shortwave = AbsorbedShortwave(grid, mode=mode)  # type: ignore[arg-type]
    diffusion = MeridionalDiffusion(grid, 0.5)
    expected = olr.heating(temperature) + shortwave.heating(temperature)
    expected = expected + diffusion.heating(temperature)
    with torch.no_grad():
        got = net_heating_kernel(temperature, *coefficients, **_constants(grid, mode))  # type: ignore[arg-type]
    torch.testing.assert_close(got, expected.detach(), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_net_heating_jacobian_is_b3_2_and_autograds(mode: str) -> None:
    grid = LatitudeGrid.uniform(16)
    temperature, coefficients = _net_heating_inputs(grid)
    constants = _constants(grid, mode)
    # Reverse mode row by row: the straight-through step has no vmap rule.
    dense = torch.autograd.functional.jacobian(
        lambda t: net_heating_kernel(t, *coefficients, **constants),  # type: ignore[arg-type]
        temperature,
    )
    lower, diag, upper = NetHeatingJacobian(*coefficients, **constants)(temperature)  # type: ignore[arg-type]
    banded = torch.diag(diag) + torch.diag(lower[1:], -1) + torch.diag(upper[:-1], 1)
    torch.testing.assert_close(banded, dense.detach(), rtol=1e-12, atol=1e-12)
    assert float(lower[0]) == 0.0 and float(upper[-1]) == 0.0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", [(), (3,)])
def test_net_heating_parameter_vjp_matches_autograd(mode: str, batch: tuple[int, ...]) -> None:
    grid = LatitudeGrid.uniform(16)
    temperature, coefficients = _net_heating_inputs(grid, batch)
    constants = _constants(grid, mode)
    leaves = [c.detach().requires_grad_(True) for c in coefficients]
    cotangent = torch.randn(
        temperature.shape, dtype=F64, generator=torch.Generator().manual_seed(4)
    )
    heating = net_heating_kernel(temperature, *leaves, **constants)  # type: ignore[arg-type]
    expected = torch.autograd.grad(heating, leaves, cotangent, allow_unused=True)
    got = net_heating_parameter_vjp(temperature, cotangent, *coefficients, **constants)  # type: ignore[arg-type]
    for name, a, b in zip(("offset", "ice", "B", "scale", "Tf"), got, expected):
        assert a is not None, name
        reference = torch.zeros_like(a) if b is None else b
        assert a.shape == reference.shape, name
        torch.testing.assert_close(a, reference, rtol=1e-12, atol=1e-12, msg=name)
    partial = net_heating_parameter_vjp(
        temperature,
        cotangent,
        *coefficients,
        **constants,
        needs=(False, True, False, False, True),  # type: ignore[arg-type]
    )
    assert [g is None for g in partial] == [True, False, True, True, False]


# ----------------------------------------------------------------------------------------------
# Devices and dtypes


def test_float32_follows_inputs() -> None:
    grid = LatitudeGrid.uniform(10, dtype=torch.float32)
    temperature = torch.full((10,), 280.0, dtype=torch.float32)
    assert meridional_diffusion(temperature, 0.5, grid).dtype == torch.float32
    stepped = implicit_meridional_diffusion_step(temperature, 0.5, 4e6, DAY, grid)
    assert stepped.dtype == torch.float32
    module = AbsorbedShortwave(grid)
    assert module.heating(temperature).dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    grid = LatitudeGrid.uniform(90)
    temperature = _temperature(grid)
    processes = _processes(grid, *B3_TRUTH)
    cpu = [process.heating(temperature) for process in processes]
    cuda = [process.to("cuda").heating(temperature.cuda()) for process in processes]
    for a, b in zip(cpu, cuda):
        torch.testing.assert_close(b.cpu(), a.detach())
    diffusion = processes[2]
    stepped = diffusion.implicit_step(temperature.cuda().requires_grad_(True), DAY, 4e6)
    stepped.sum().backward()
    assert diffusion.diffusivity.grad is not None
    assert diffusion.diffusivity.grad.device.type == "cuda"
    reference = implicit_meridional_diffusion_step(temperature, 0.555, 4e6, DAY, grid)
    torch.testing.assert_close(stepped.detach().cpu(), reference)
