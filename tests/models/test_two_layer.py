"""TwoLayerEBM: analytic step response, ECS/TCR, gradients, conservation, twin experiment."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import expm
from torch import Tensor, nn

from climgrad.autograd.verify import check_gradients
from climgrad.constants import seconds_per_year
from climgrad.data.drivers import read_forcing_by_agent
from climgrad.models.two_layer import (
    AR6_AEROSOL_AGENTS,
    AR6_AGENTS,
    GEOFFROY_2013_CMIP5_MEAN,
    TwoLayerEBM,
    earth_surface_area,
    watt_year,
)

AR6_FILE = Path(__file__).resolve().parents[2] / "data" / "global_ebm" / "ar6_erf_1750-2019.nc"


def _ar6(
    path: Path = AR6_FILE,
    *,
    start_year: int = 1850,
    end_year: int = 2019,
    agents: tuple[str, ...] = AR6_AGENTS,
    **kwargs: Any,
) -> TwoLayerEBM:
    """The model on the shipped AR6 table (read by climgrad.data, handed in as arrays)."""
    series = read_forcing_by_agent(path, agents, start_year=start_year, end_year=end_year)
    return TwoLayerEBM.from_forcing(series, **kwargs)


FORCING_4X = 2 * 3.93
YEAR = float(seconds_per_year)


def constant_forcing(value: float, steps: int) -> Tensor:
    return torch.full((steps,), value, dtype=torch.float64)


def geoffroy_modes_numpy(lam, gamma, c, c_deep, eps):
    """Timescales (years) and eigenvectors of A by numpy, independent of the model's formulas."""
    matrix = np.array(
        [[-(lam + eps * gamma) / c, eps * gamma / c], [gamma / c_deep, -gamma / c_deep]]
    )
    rates, vectors = np.linalg.eig(matrix)
    order = np.argsort(-1.0 / rates)
    return -1.0 / rates[order], vectors[:, order], matrix


# Analytic solutions ------------------------------------------------------------------------


@pytest.mark.parametrize("time_step_years", [1.0, 0.25])
def test_step_response_matches_the_two_mode_analytic_solution(time_step_years):
    """Abrupt 4xCO2: the integrator reproduces Geoffroy et al. (2013)'s two-mode solution, both
    the state at the end of each run and every step mean (the analytic time integral)."""
    years = 300
    steps = int(years / time_step_years)
    model = TwoLayerEBM(constant_forcing(FORCING_4X, steps), time_step_years=time_step_years)
    with torch.no_grad():
        out = model.simulate()
        modes = model.modes()
        final = model.step_response(torch.tensor([float(years)], dtype=torch.float64), FORCING_4X)
    assert float(out["final_surface_temperature_anomaly"]) == pytest.approx(
        float(final["surface_temperature_anomaly"][0]), rel=1e-10
    )
    assert float(out["final_deep_ocean_temperature_anomaly"]) == pytest.approx(
        float(final["deep_ocean_temperature_anomaly"][0]), rel=1e-10
    )
    # Step means: (1/Δt) ∫ F/λ (1 − Σ a_i e^{−t/τ_i}) dt over [t0, t0 + Δt], for T and T_d.
    start = torch.arange(steps, dtype=torch.float64) * time_step_years
    equilibrium = FORCING_4X / float(model.feedback.detach())
    for variable, ratio in (("surface", None), ("deep_ocean", "deep_ratio")):
        mean = torch.full_like(start, equilibrium)
        for mode in ("fast", "slow"):
            tau = modes[f"{mode}_timescale"]
            weight = modes[f"{mode}_amplitude"] * (modes[f"{mode}_{ratio}"] if ratio else 1.0)
            decay = torch.exp(-start / tau) * (-torch.expm1(-time_step_years / tau))
            mean = mean - equilibrium * weight * tau / time_step_years * decay
        torch.testing.assert_close(
            out[f"{variable}_temperature_anomaly"], mean, rtol=1e-10, atol=1e-12
        )


def test_modes_match_a_numpy_eigendecomposition():
    model = TwoLayerEBM(constant_forcing(1.0, 1))
    lam, gamma, c, c_deep, eps = 1.13, 0.7, 8.0, 100.0, 1.28
    timescales, vectors, _ = geoffroy_modes_numpy(lam, gamma, c, c_deep, eps)
    with torch.no_grad():
        modes = {k: float(v) for k, v in model.modes().items()}
    assert modes["fast_timescale"] == pytest.approx(timescales[0], rel=1e-12)
    assert modes["slow_timescale"] == pytest.approx(timescales[1], rel=1e-12)
    # φ is T_d/T in each eigenvector.
    assert modes["fast_deep_ratio"] == pytest.approx(vectors[1, 0] / vectors[0, 0], rel=1e-10)
    assert modes["slow_deep_ratio"] == pytest.approx(vectors[1, 1] / vectors[0, 1], rel=1e-10)
    assert modes["fast_amplitude"] + modes["slow_amplitude"] == pytest.approx(1.0, rel=1e-12)
    # Starting from rest: T(0) = 0 and T_d(0) = 0 in the step response.
    with torch.no_grad():
        start = model.step_response(torch.zeros(1, dtype=torch.float64), 3.0)
    assert float(start["surface_temperature_anomaly"][0]) == pytest.approx(0.0, abs=1e-12)
    assert float(start["deep_ocean_temperature_anomaly"][0]) == pytest.approx(0.0, abs=1e-12)


def test_ecs_and_tcr_for_geoffroy_cmip5_mean_parameters():
    """λ = 1.13, γ = 0.7, C = 8.0, C_d = 100 W yr m-2 K-1, ε = 1.28 with AR6 F_2x = 3.93 W m-2.

    Hand values: ECS = 3.93 / 1.13 = 3.47788 K; TCR from the exact response of the linear system
    to the ramp F = F_2x t / 70 at t = 70 yr, x(t) = x_p(t) − e^{At} x_p(0) with
    x_p(t) = −A⁻¹ b k t − A⁻² b k (scipy's expm): 1.98273 K (fast τ = 3.90 yr, slow τ = 259 yr).
    """
    model = TwoLayerEBM(constant_forcing(1.0, 1), **GEOFFROY_2013_CMIP5_MEAN).requires_grad_(False)
    assert float(model.ecs()) == pytest.approx(3.93 / 1.13, rel=1e-12)
    assert float(model.ecs()) == pytest.approx(3.47788, abs=1e-5)
    _, _, matrix = geoffroy_modes_numpy(1.13, 0.7, 8.0, 100.0, 1.28)
    inverse = np.linalg.inv(matrix)
    b = np.array([1.0 / 8.0, 0.0])
    k = 3.93 / 70.0

    def particular(t):
        return -inverse @ b * k * t - inverse @ inverse @ b * k

    ramp = particular(70.0) - expm(matrix * 70.0) @ particular(0.0)
    assert float(model.tcr()) == pytest.approx(ramp[0], rel=1e-10)
    assert float(model.tcr()) == pytest.approx(1.98273, abs=1e-5)
    assert float(model.modes()["fast_timescale"]) == pytest.approx(3.9003, abs=1e-4)
    assert float(model.modes()["slow_timescale"]) == pytest.approx(259.311, abs=1e-3)


def test_analytic_tcr_matches_a_simulated_ramp_in_value_and_gradient():
    """The 70-year ramp simulated with monthly steps (forcing at mid-month) against ``tcr()``."""
    months = 70 * 12
    mid = (torch.arange(months, dtype=torch.float64) + 0.5) / 12.0
    model = TwoLayerEBM(3.93 * mid / 70.0, time_step_years=1.0 / 12.0)
    simulated = model.simulate()["final_surface_temperature_anomaly"]
    analytic = model.tcr()
    assert float(simulated.detach()) == pytest.approx(float(analytic.detach()), rel=1e-5)
    # With respect to the unconstrained (log) parameters; the forcing has no scale factor.
    raw = model.learnable_parameters()
    assert len(raw) == 5
    gradient_simulated = torch.autograd.grad(simulated, raw)
    gradient_analytic = torch.autograd.grad(analytic, raw)
    for a, b in zip(gradient_simulated, gradient_analytic):
        assert float(a) == pytest.approx(float(b), rel=1e-3)
        assert float(b) != 0.0


# Properties --------------------------------------------------------------------------------

positive = st.floats(0.3, 3.0)


@settings(max_examples=25, deadline=None)
@given(
    feedback=positive,
    heat_exchange=positive,
    heat_capacity=st.floats(3.0, 20.0),
    deep_heat_capacity=st.floats(20.0, 300.0),
    efficacy=st.floats(0.5, 2.0),
    seed=st.integers(0, 2**16),
)
def test_heat_content_change_equals_time_integral_of_toa_imbalance(
    feedback, heat_exchange, heat_capacity, deep_heat_capacity, efficacy, seed
):
    """Energy conservation: H(end) − H(0) = Σ N̄ Δt (step means are exact, so equality holds to
    round-off), and C dT/dt + C_d dT_d/dt = N at every state."""
    generator = torch.Generator().manual_seed(seed)
    forcing = torch.randn(40, generator=generator, dtype=torch.float64) * 2.0
    model = TwoLayerEBM(
        forcing,
        feedback=feedback,
        heat_exchange=heat_exchange,
        heat_capacity=heat_capacity * YEAR,
        deep_heat_capacity=deep_heat_capacity * YEAR,
        efficacy=efficacy,
    )
    initial = {
        "surface_temperature_anomaly": torch.tensor(0.3, dtype=torch.float64),
        "deep_ocean_temperature_anomaly": torch.tensor(-0.1, dtype=torch.float64),
    }
    with torch.no_grad():
        out = model.simulate(initial)
        start = model.heat_content(*initial.values())["heat_content_per_area"]
        end = model.heat_content(
            out["final_surface_temperature_anomaly"], out["final_deep_ocean_temperature_anomaly"]
        )["heat_content_per_area"]
        stored = float(end - start)
        supplied = float(out["heat_uptake"].sum() * YEAR)
        assert stored == pytest.approx(supplied, rel=1e-9, abs=1e-9 * abs(float(start)) + 1e-3)
        state = {**initial, "radiative_forcing": forcing[0]}
        tendencies, diagnostics = model(state)
        storage = (
            model.heat_capacity * tendencies["surface_temperature_anomaly"]
            + model.deep_heat_capacity * tendencies["deep_ocean_temperature_anomaly"]
        )
        assert float(storage) == pytest.approx(float(diagnostics["heat_uptake"]), rel=1e-12)


def test_exact_step_agrees_with_the_tendencies_for_a_short_step():
    model = TwoLayerEBM(constant_forcing(1.0, 1))
    state = {
        "surface_temperature_anomaly": torch.tensor([0.5, 1.0], dtype=torch.float64),
        "deep_ocean_temperature_anomaly": torch.tensor([0.1, 0.2], dtype=torch.float64),
        "radiative_forcing": torch.tensor(2.5, dtype=torch.float64),
    }
    with torch.no_grad():
        tendencies, _ = model(state)
        dt = 3600.0
        stepped = model.step(state, dt)
    for name, tendency in tendencies.items():
        difference = (stepped[name] - state[name]) / dt
        torch.testing.assert_close(difference, tendency, rtol=1e-4, atol=0.0)
    # The public one-year step is the step simulate() takes.
    with torch.no_grad():
        yearly = model.step(state, YEAR)
        run = TwoLayerEBM(constant_forcing(2.5, 1)).simulate(state)
    for name in ("surface_temperature_anomaly", "deep_ocean_temperature_anomaly"):
        torch.testing.assert_close(yearly[name], run[f"final_{name}"], rtol=1e-13, atol=0.0)


def test_positive_parameters_are_stored_as_logarithms_in_si_units():
    model = TwoLayerEBM(constant_forcing(1.0, 1), forcing_scales={"total": ["total"]})
    stored = model.parametrizations
    assert float(stored.heat_capacity.original.detach()) == pytest.approx(
        math.log(8.0 * YEAR), rel=1e-14
    )
    assert float(stored.feedback.original.detach()) == pytest.approx(math.log(1.13), rel=1e-14)
    # The scale factor in (0, 3) is a sigmoid: logit(1/3) at 1.0.
    assert float(stored.total_forcing_scale.original.detach()) == pytest.approx(
        math.log(0.5), rel=1e-14
    )
    table = model.parameter_table()
    for text in ("J m-2 K-1", "W m-2 K-1", "total_forcing_scale", "(0, 3)"):
        assert text in table


def test_ensemble_of_initial_states_runs_member_by_member():
    model = _ar6(end_year=1900)
    initial = {
        "surface_temperature_anomaly": torch.tensor([0.0, 0.2, -0.1], dtype=torch.float64),
        "deep_ocean_temperature_anomaly": torch.tensor([0.0, 0.05, 0.0], dtype=torch.float64),
    }
    with torch.no_grad():
        together = model.simulate(initial)["surface_temperature_anomaly"]
        for member in range(3):
            alone = model.simulate({k: v[member] for k, v in initial.items()})
            torch.testing.assert_close(
                together[:, member], alone["surface_temperature_anomaly"], rtol=1e-13, atol=0.0
            )


# The AR6 forcing file ----------------------------------------------------------------------


def test_ar6_forcing_sums_agents_to_the_ar6_total_and_scales_aerosols():
    model = _ar6()
    with xr.open_dataset(AR6_FILE) as dataset:
        total = dataset["erf_total"].sel(time=slice("1850", "2019")).values
        aerosol = dataset["erf_aerosol"].sel(time=slice("1850", "2019")).values
    assert model.agents == list(AR6_AGENTS)
    assert model.steps == 170
    assert float(model.years[0]) == 1850.5 and float(model.years[-1]) == 2019.5
    np.testing.assert_allclose(model.total_forcing().detach().numpy(), total, atol=1e-12)
    model.configure_parameters({"aerosol_forcing_scale": 0.5})
    np.testing.assert_allclose(
        model.total_forcing().detach().numpy(), total - 0.5 * aerosol, atol=1e-12
    )
    assert set(model.physical_parameters()) == {
        "feedback",
        "heat_exchange",
        "heat_capacity",
        "deep_heat_capacity",
        "efficacy",
        "forcing_2x",
        "aerosol_forcing_scale",
    }
    assert "aerosol_forcing_scale" in model.parameter_table()


def test_heat_content_units():
    """1 K in both layers of the default model stores (C + C_d) × 4πR² = 108 W yr m-2 K-1 ×
    3.156e7 s × 5.101e14 m2 = 1.738e24 J = 1738 ZJ."""
    model = TwoLayerEBM(constant_forcing(1.0, 1)).requires_grad_(False)
    one = torch.tensor(1.0, dtype=torch.float64)
    content = model.heat_content(one, one)
    per_area = (8.0 + 100.0) * float(watt_year)
    assert float(content["heat_content_per_area"]) == pytest.approx(per_area, rel=1e-12)
    assert float(content["ocean_heat_content"]) == pytest.approx(
        per_area * 4 * math.pi * 6.371e6**2, rel=1e-12
    )
    assert float(content["ocean_heat_content_zj"]) == pytest.approx(
        per_area * float(earth_surface_area) / 1e21, rel=1e-12
    )
    assert float(content["ocean_heat_content_zj"]) == pytest.approx(1738.4, abs=0.1)


# Gradients ---------------------------------------------------------------------------------


class _ShortRollout(nn.Module):
    """Temperature, deep temperature and heat content (ZJ) over a short AR6 rollout, plus the
    derived ECS and TCR, as one pytree for check_gradients."""

    def __init__(self, model: TwoLayerEBM, checkpoint_every: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.checkpoint_every = checkpoint_every

    def forward(self, initial: dict[str, Tensor]) -> dict[str, Tensor]:
        out = self.model.simulate(initial, checkpoint_every=self.checkpoint_every)
        return {
            "temperature": out["surface_temperature_anomaly"],
            "deep": out["deep_ocean_temperature_anomaly"],
            "heat_content": out["ocean_heat_content_zj"] / 100.0,
            "ecs": self.model.ecs(),
            "tcr": self.model.tcr(),
        }


def _initial(requires_grad: bool = True) -> dict[str, Tensor]:
    return {
        "surface_temperature_anomaly": torch.tensor(0.1, dtype=torch.float64).requires_grad_(
            requires_grad
        ),
        "deep_ocean_temperature_anomaly": torch.tensor(0.02, dtype=torch.float64).requires_grad_(
            requires_grad
        ),
    }


@pytest.mark.parametrize("checkpoint_every", [None, 4])
def test_check_gradients_on_a_short_rollout_every_parameter_live(checkpoint_every):
    model = _ar6(
        AR6_FILE,
        start_year=1880,
        end_year=1890,  # includes the 1883 Krakatoa eruption
        learn=(
            "feedback",
            "heat_exchange",
            "heat_capacity",
            "deep_heat_capacity",
            "efficacy",
            "forcing_2x",
            "aerosol_forcing_scale",
        ),
    )
    report = check_gradients(
        _ShortRollout(model, checkpoint_every), (_initial(),), names=["initial"]
    )
    print(report)
    assert report.passed, str(report)
    checked = {r.target for r in report.results if r.check == "liveness"}
    for name in (
        "feedback",
        "heat_exchange",
        "heat_capacity",
        "deep_heat_capacity",
        "efficacy",
        "forcing_2x",
        "aerosol_forcing_scale",
    ):
        assert any(name in entry for entry in checked), (name, checked)


def test_checkpointed_rollout_matches_the_plain_one():
    # None: the whole run at once (powers of the transition and a causal convolution); 7 and
    # 10**6: step by step, checkpointed every 7 steps or never. Stepping is bit-identical with
    # and without checkpoints; the vectorised run agrees with it to rounding.
    model = _ar6(end_year=1950)
    results = []
    for checkpoint_every in (10**6, 7, None):
        model.zero_grad()
        out = model.simulate(checkpoint_every=checkpoint_every)
        loss = (
            out["surface_temperature_anomaly"].square().sum() + out["ocean_heat_content_zj"].sum()
        )
        loss.backward()
        grads = [p.grad.clone() for p in model.learnable_parameters()]
        results.append((out["surface_temperature_anomaly"].detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0.0, atol=0.0)
    torch.testing.assert_close(results[2][0], results[0][0], rtol=1e-12, atol=1e-15)
    for stepped, checkpointed, vectorised in zip(results[0][1], results[1][1], results[2][1]):
        torch.testing.assert_close(stepped, checkpointed, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(vectorised, stepped, rtol=1e-11, atol=1e-14)


# Twin experiment ---------------------------------------------------------------------------


def test_twin_experiment_recovers_every_parameter_to_one_percent():
    """Synthetic annual GMST 1850-2019 and heat content 1971-2019 (relative to 1971, as the
    energy inventory is) from the default parameters and the AR6 ERF; L-BFGS from a start 15-25 %
    off in every learnable parameter recovers each to better than 1 %."""
    truth = _ar6()
    reference_index = 1971 - 1850
    with torch.no_grad():
        out = truth.simulate()
        temperature_obs = out["surface_temperature_anomaly"]
        heat = out["ocean_heat_content_zj"]
        heat_obs = heat[reference_index:] - heat[reference_index]
    model = _ar6(
        AR6_FILE,
        feedback=1.13 * 1.25,
        heat_exchange=0.7 * 0.8,
        heat_capacity=GEOFFROY_2013_CMIP5_MEAN["heat_capacity"] * 1.2,
        deep_heat_capacity=GEOFFROY_2013_CMIP5_MEAN["deep_heat_capacity"] * 0.8,
        efficacy=1.28 * 0.85,
        scale_values={"aerosol": 0.8},
    )
    optimizer = torch.optim.LBFGS(
        model.learnable_parameters(),
        max_iter=150,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        simulated = model.simulate()
        heat = simulated["ocean_heat_content_zj"]
        misfit_heat = heat[reference_index:] - heat[reference_index] - heat_obs
        # Errors of 0.05 K and 5 ZJ weight the two records.
        loss = ((simulated["surface_temperature_anomaly"] - temperature_obs) / 0.05).square().mean()
        loss = loss + (misfit_heat / 5.0).square().mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = model.physical_parameters()
    errors = {n: float(fitted[n] / v - 1.0) for n, v in truth.physical_parameters().items()}
    print("relative errors:", {n: f"{e:.1e}" for n, e in errors.items()})
    for name, value in truth.physical_parameters().items():
        assert float(fitted[name]) == pytest.approx(float(value), rel=0.01), name


# Errors ------------------------------------------------------------------------------------


def test_bad_arguments_say_the_fix():
    forcing = constant_forcing(1.0, 5)
    with pytest.raises(ValueError, match="outside its bounds"):
        TwoLayerEBM(forcing, feedback=-1.0)
    with pytest.raises(ValueError, match="outside its bounds"):
        TwoLayerEBM(
            torch.ones(5, 2, dtype=torch.float64),
            ["a", "b"],
            forcing_scales={"a": ["a"]},
            scale_values={"a": 4.0},
        )
    with pytest.raises(ValueError, match="multiplying by watt_year"):
        TwoLayerEBM(forcing, heat_capacity=8.0)
    with pytest.raises(ValueError, match="multiplying by watt_year"):
        TwoLayerEBM(forcing, deep_heat_capacity=100.0)
    with pytest.raises(ValueError, match="agents` is required"):
        TwoLayerEBM(torch.ones(5, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="name each of the 2 forcing columns"):
        TwoLayerEBM(torch.ones(5, 2, dtype=torch.float64), ["a"])
    with pytest.raises(ValueError, match="must be \\(step,\\) or \\(step, agent\\)"):
        TwoLayerEBM(torch.ones(5, 2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="nan_to_num"):
        TwoLayerEBM(torch.tensor([1.0, float("nan")], dtype=torch.float64))
    with pytest.raises(ValueError, match="time_step_years` must be positive"):
        TwoLayerEBM(forcing, time_step_years=0.0)
    with pytest.raises(ValueError, match="unknown agent"):
        TwoLayerEBM(forcing, forcing_scales={"aerosol": ["aerosol_cloud_interactions"]})
    with pytest.raises(ValueError, match="put it in one only"):
        TwoLayerEBM(
            torch.ones(5, 2, dtype=torch.float64),
            ["a", "b"],
            forcing_scales={"x": ["a"], "y": ["a", "b"]},
        )
    with pytest.raises(ValueError, match="Unknown parameter"):
        TwoLayerEBM(forcing, learn=("lambda",))
    with pytest.raises(ValueError, match="not in forcing_scales"):
        TwoLayerEBM(forcing, scale_values={"aerosol": 1.0})
    with pytest.raises(ValueError, match="choose agents from"):
        _ar6(agents=("co2", "aerosols"))
    with pytest.raises(ValueError, match="covers the years 1750-2019"):
        _ar6(end_year=2023)
    model = TwoLayerEBM(forcing)
    with pytest.raises(ValueError, match="Extend the forcing series"):
        model.simulate(steps=6)
    with pytest.raises(KeyError, match="radiative_forcing"):
        model({"surface_temperature_anomaly": torch.zeros(()), "deep_ocean_temperature_anomaly": 0})
    with pytest.raises(KeyError, match="initial` lacks"):
        model.simulate({"surface_temperature_anomaly": torch.zeros((), dtype=torch.float64)})
    with pytest.raises(ValueError, match="doubling_time_years"):
        model.tcr(0.0)


def test_aerosol_groups_default_only_with_both_aerosol_agents():
    assert all(a in AR6_AGENTS for a in AR6_AEROSOL_AGENTS)
    model = _ar6(agents=("co2", "volcanic"))
    assert "aerosol_forcing_scale" not in model.physical_parameters()


# GPU ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_in_values_and_gradients():
    results = []
    for device in ("cpu", "cuda"):
        model = _ar6(device=device)
        out = model.simulate(checkpoint_every=20)
        loss = out["surface_temperature_anomaly"].square().sum() + model.tcr()
        loss.backward()
        grads = [p.grad.detach().cpu() for p in model.learnable_parameters()]
        results.append((out["ocean_heat_content_zj"].detach().cpu(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=1e-10)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


# J parameter sets in one rollout ------------------------------------------------------------


def _parameter_sets(count: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(11)

    def draw(low: float, high: float) -> Tensor:
        uniform = torch.rand(count, generator=generator, dtype=torch.float64)
        return (low + (high - low) * uniform).requires_grad_(True)

    return {
        "feedback": draw(0.8, 1.6),
        "heat_capacity": draw(6.0, 10.0) * watt_year,
        "efficacy": draw(1.0, 1.5),
        "aerosol_forcing_scale": draw(0.5, 1.5),
    }


@pytest.mark.parametrize("checkpoint_every", [None, 50])
def test_a_batch_of_parameter_sets_equals_separate_rollouts(checkpoint_every: int | None) -> None:
    model = _ar6()
    sets = _parameter_sets(4)
    batched = model.simulate(parameters=sets, checkpoint_every=checkpoint_every)
    temperature = batched["surface_temperature_anomaly"]
    assert temperature.shape == (170, 4)
    assert batched["radiative_forcing"].shape == (170, 4)  # the aerosol scale is batched
    weights = torch.randn(170, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    loss = (temperature * weights).sum() + batched["ocean_heat_content_zj"][-1].sum()
    gradients = torch.autograd.grad(loss, list(sets.values()))
    for j in range(4):
        one = {name: value[j].detach().requires_grad_(True) for name, value in sets.items()}
        single = model.simulate(parameters=one, checkpoint_every=checkpoint_every)
        for name, series in single.items():
            if name == "time":
                continue
            reference = batched[name][..., j]
            assert float((series - reference).abs().max()) <= 1e-10 * max(
                1.0, float(reference.abs().max())
            ), name
        single_loss = (single["surface_temperature_anomaly"] * weights[:, j]).sum()
        single_loss = single_loss + single["ocean_heat_content_zj"][-1]
        single_gradients = torch.autograd.grad(single_loss, list(one.values()))
        for a, b in zip(single_gradients, gradients):
            assert float(a) == pytest.approx(float(b[j]), rel=1e-10)


def test_parameters_equal_to_the_models_own_change_nothing() -> None:
    model = _ar6()
    plain = model.simulate()
    own = {name: value.detach() for name, value in model.parameter_values().items()}
    replaced = model.simulate(parameters=own)
    for name, series in plain.items():
        torch.testing.assert_close(replaced[name], series, rtol=0, atol=0)
    feedback = torch.tensor([1.0, 1.13, 2.0], dtype=torch.float64)
    propagators = model.propagator(parameters={"feedback": feedback})
    assert propagators.shape == (3, 5, 5)
    torch.testing.assert_close(propagators[1], model.propagator(), rtol=1e-12, atol=1e-14)


def test_parameters_argument_is_checked() -> None:
    model = _ar6()
    with pytest.raises(KeyError, match="valid"):
        model.simulate(parameters={"lambda": torch.ones(2)})
    with pytest.raises(ValueError, match="outside its bounds"):
        model.simulate(parameters={"feedback": torch.tensor([1.0, -1.0])})
