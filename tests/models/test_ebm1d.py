"""EBM1D: B3 reference values, implicit gradients, analytic solution, time stepping, twin."""

from __future__ import annotations

import math

import pytest
import torch

from climgrad.autograd import check_gradients
from climgrad.integrate import EquilibriumInfo, rollout
from climgrad.models import EBM1D
from climgrad.params import physical_gradients

CELSIUS = 273.15


def temperature_at(state, model, latitude):
    index = int(torch.argmin((model.grid.latitude_degrees - latitude).abs()))
    return float(state["surface_temperature"][index]) - CELSIUS


@pytest.fixture(scope="module")
def truth():
    model = EBM1D()
    info = EquilibriumInfo()
    with torch.no_grad():
        state = model.equilibrium(tol=1e-10, info=info)
    return model, state, info


def test_b3_equilibrium_at_truth(truth):
    model, state, info = truth
    reference = {
        -89: -15.8491945563,
        -1: 27.7893998288,
        61: -4.09487466008,
        71: -10.3692621857,
        89: -15.8491945563,
    }
    for latitude, value in reference.items():
        assert temperature_at(state, model, latitude) == pytest.approx(value, abs=1e-8)
    diagnostics = model.diagnose(state)
    assert float(diagnostics["global_mean_temperature"]) - CELSIUS == pytest.approx(
        13.8706184083, abs=1e-8
    )
    assert float(diagnostics["global_mean_outgoing_longwave"]) == pytest.approx(
        237.741236817, abs=1e-8
    )
    assert float(diagnostics["ice_edge_latitude"]) == pytest.approx(70.3680967616, abs=1e-7)
    assert info.iterations == 6


def b3_loss(model, observations):
    state = model.equilibrium(tol=1e-10)
    olr = model(state)[1]["outgoing_longwave_radiation"]
    temperature = state["surface_temperature"]
    return (
        0.5 * (((temperature - observations[0]) / 0.1) ** 2).sum()
        + 0.5 * (((olr - observations[1]) / 0.2) ** 2).sum()
    )


def test_b3_loss_and_gradient_at_initial_guess(truth):
    model, state, _ = truth
    with torch.no_grad():
        observations = (
            state["surface_temperature"],
            model(state)[1]["outgoing_longwave_radiation"],
        )
    guess = EBM1D(A=190.0, B=1.8, D=0.45)
    info = EquilibriumInfo()
    assert math.isnan(float(guess.diagnose(guess.equilibrium(info=info))["ice_edge_latitude"]))
    loss = b3_loss(guess, observations)
    loss.backward()
    gradients = physical_gradients(guess)
    assert float(loss) == pytest.approx(893957.153119, rel=1e-8)
    assert float(gradients["A"]) == pytest.approx(-69467.4700283, rel=1e-8)
    assert float(gradients["B"]) == pytest.approx(-1836558.88091, rel=1e-8)
    assert float(gradients["D"]) == pytest.approx(1370821.77127, rel=1e-8)


def test_every_learnable_parameter_is_live_and_gradients_check():
    report = check_gradients(_EquilibriumOf(EBM1D(bands=30)), ())
    assert report.passed, str(report)
    live = {r.target for r in report.results if r.check == "liveness"}
    assert len(live) == 7  # A, B, D, a0, a2, ai, Tf


class _EquilibriumOf(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self):
        # A tight tolerance: the Taylor test sees the solver's error at small steps.
        return self.model.equilibrium(tol=5e-11)["surface_temperature"]


def test_ice_free_linear_model_matches_north_1975_analytic_solution():
    # a2 = 0, no ice (sharp switch, freezing point far below the coldest band): T = T0 + T2 P2(x)
    model = EBM1D(a2=0.0, Tf=224.0, albedo_mode="exact")
    with torch.no_grad():
        temperature = model.equilibrium()["surface_temperature"] - CELSIUS
    x = model.grid.sin_latitude
    p2 = (3 * x**2 - 1) / 2
    q, a0, a, b, d, s2 = 340.0, 0.30, 210.0, 2.0, 0.555, -0.482
    analytic = (q * (1 - a0) - a) / b + q * s2 * (1 - a0) / (b + 6 * d) * p2
    assert float((temperature - analytic).abs().max()) < 0.02  # discretisation error of 2° bands


def test_semi_implicit_time_stepping_reaches_the_newton_equilibrium(truth):
    _, state, _ = truth
    model = EBM1D(heat_capacity=4.2e6)  # 1 m of water; benchmarks.md B3.3
    with torch.no_grad():
        final, _ = rollout(
            lambda s: model.step(s, 365.2422 * 86400 / 90), model.initial_state(), 90 * 3
        )
    assert float((final["surface_temperature"] - state["surface_temperature"]).abs().max()) < 1e-6


def test_seasonal_cycle_is_differentiable_in_the_solar_constant():
    model = EBM1D(bands=18, heat_capacity=4.2e6, learn=("S0", "A"))
    series = model.seasonal_cycle(years=2, steps_per_year=24, checkpoint_every=8)
    assert series.shape == (24, 18)
    north_pole = series[:, -1]
    assert float(north_pole.max() - north_pole.min()) > 10.0  # a real seasonal cycle at the pole
    model.grid.global_mean(series.mean(0)).backward()
    gradients = physical_gradients(model)
    assert float(gradients["S0"]) > 0 and float(gradients["A"]) < 0
    # Checkpointing replays the same days: identical values and gradients without it.
    plain = EBM1D(bands=18, heat_capacity=4.2e6, learn=("S0", "A"))
    plain_series = plain.seasonal_cycle(years=2, steps_per_year=24)
    assert torch.equal(plain_series.detach(), series.detach())
    plain.grid.global_mean(plain_series.mean(0)).backward()
    for name, value in physical_gradients(plain).items():
        assert float(value) == pytest.approx(float(gradients[name]), rel=1e-12)


def test_twin_calibration_recovers_parameters_to_one_percent():
    truth_model = EBM1D(bands=30)
    with torch.no_grad():
        state = truth_model.equilibrium()
        observations = (
            state["surface_temperature"],
            truth_model(state)[1]["outgoing_longwave_radiation"],
        )
    model = EBM1D(bands=30, A=195.0, B=1.8, D=0.45, a0=0.28, learn=("A", "B", "D", "a0"))
    # Adam on the log/logit parameters: every step changes each parameter by ~2 % at most.
    optimizer = torch.optim.Adam(model.learnable_parameters(), lr=0.02)
    for _ in range(400):
        optimizer.zero_grad()
        b3_loss(model, observations).backward()
        optimizer.step()
    fitted = model.physical_parameters()
    expected = {"A": 210.0, "B": 2.0, "D": 0.555, "a0": 0.30}
    for name, value in expected.items():
        assert float(fitted[name]) == pytest.approx(value, rel=0.01), name


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown parameter"):
        EBM1D(learn=("A", "Q"))
    with pytest.raises(ValueError, match="outside its bounds"):
        EBM1D(a0=1.2)
