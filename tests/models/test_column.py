"""SingleColumnModel: benchmark B2 reference values, equilibrium gradients, twin calibration."""

from __future__ import annotations

import pytest
import torch

from climgrad.autograd import check_gradients
from climgrad.models.column import SingleColumnModel
from climgrad.params import physical_gradients

DTYPE = torch.float64


def b2_columns(indices, n=1024):
    """B2's forcing and initial state for the given column indices of an N-column problem."""
    i = torch.tensor(indices, dtype=DTYPE)
    x = -1 + (2 * i + 1) / n
    insolation = 340.0 * (1 - 0.482 * (3 * x**2 - 1) / 2)
    surface_temperature = 250 + 40 * (1 - x**2)
    return surface_temperature, insolation


def test_b2_reference_values_after_200_steps():
    # Columns are independent, so columns 0 and 512 of B2's 1024 can be run on their own.
    model = SingleColumnModel(40)
    surface_temperature, insolation = b2_columns([0, 512])
    with torch.no_grad():
        final = model.run(model.initial_state(surface_temperature, insolation), 200)
    temperature, surface = final["air_temperature"], final["surface_temperature"]
    reference = [
        (surface[0], 253.625611924),
        (surface[1], 297.659191593),
        (temperature[1, 0], 201.125261198),
        (temperature[1, 20], 244.122988145),
        (temperature[1, 39], 284.550537651),
        (temperature[0, 39], 246.744561023),
    ]
    for got, want in reference:
        assert float(got) == pytest.approx(want, rel=1e-9)


@pytest.fixture(scope="module")
def column_equilibrium():
    model = SingleColumnModel(10)
    state = model.initial_state(
        torch.tensor([290.0, 300.0], dtype=DTYPE), torch.tensor([300.0, 340.0], dtype=DTYPE)
    )
    with torch.no_grad():
        solved = model.equilibrium(state)
    return state, solved


def test_equilibrium_has_zero_tendencies_and_a_stable_lapse_rate(column_equilibrium):
    state, solved = column_equilibrium
    model = SingleColumnModel(10)
    tendencies, diagnostics = model(solved)
    for tendency in tendencies.values():
        assert float(tendency.abs().max()) * 86400 < 1e-8  # K per day
    # Radiative-convective equilibrium: the surface is warmer than the air above it and the OLR
    # balances the absorbed shortwave.
    assert bool((solved["surface_temperature"] > solved["air_temperature"][:, -1]).all())
    absorbed = (1 - 0.3) * state["insolation"]
    torch.testing.assert_close(diagnostics["outgoing_longwave_radiation"], absorbed)


def test_implicit_gradient_matches_finite_differences(column_equilibrium):
    state, solved = column_equilibrium

    def objective(albedo, lapse_rate, requires_grad=False):
        model = SingleColumnModel(10, surface_albedo=albedo, critical_lapse_rate=lapse_rate)
        with torch.set_grad_enabled(requires_grad):
            result = model.equilibrium(
                {**state, **{k: solved[k] for k in ("air_temperature", "surface_temperature")}},
                spin_up_steps=0,
            )
            value = result["air_temperature"].mean() + result["surface_temperature"].mean()
        return model, value

    model, value = objective(0.3, 6.5e-3, requires_grad=True)
    value.backward()
    gradients = physical_gradients(model)
    for name, (center, step) in {
        "surface_albedo": (0.3, 1e-5),
        "critical_lapse_rate": (6.5e-3, 1e-7),
    }.items():
        args = {"surface_albedo": 0.3, "critical_lapse_rate": 6.5e-3}
        plus = dict(args, **{name: center + step})
        minus = dict(args, **{name: center - step})
        fd = (
            float(objective(plus["surface_albedo"], plus["critical_lapse_rate"])[1])
            - float(objective(minus["surface_albedo"], minus["critical_lapse_rate"])[1])
        ) / (2 * step)
        assert float(gradients[name]) == pytest.approx(fd, rel=1e-6), name


class _Equilibrium(torch.nn.Module):
    def __init__(self, model, state):
        super().__init__()
        self.model = model
        self.state = state

    def forward(self):
        solved = self.model.equilibrium(self.state, spin_up_steps=0, tol=1e-11)
        return solved["air_temperature"], solved["surface_temperature"]


def test_equilibrium_gradients_pass_check_gradients(column_equilibrium):
    _, solved = column_equilibrium
    single = {k: v[:1] for k, v in solved.items()}
    # gradcheck's differences carry the Newton tolerance / eps (~1e-6): loosen its atol only.
    report = check_gradients(_Equilibrium(SingleColumnModel(10), single), (), atol=1e-5)
    assert report.passed, str(report)
    assert len([r for r in report.results if r.check == "liveness"]) == 6


def test_twin_recovers_radiative_parameters(column_equilibrium):
    state, solved = column_equilibrium
    truth = SingleColumnModel(10)
    start = {**state, **{k: solved[k] for k in ("air_temperature", "surface_temperature")}}
    with torch.no_grad():
        observed = truth.equilibrium(start, spin_up_steps=0)
    model = SingleColumnModel(
        10,
        surface_optical_depth=3.5,
        surface_albedo=0.27,
        learn=("surface_optical_depth", "surface_albedo"),
    )
    optimizer = torch.optim.LBFGS(
        model.learnable_parameters(),
        max_iter=40,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
    )

    def closure():
        optimizer.zero_grad()
        fit = model.equilibrium(start, spin_up_steps=0)
        loss = ((fit["air_temperature"] - observed["air_temperature"]) ** 2).sum() + (
            (fit["surface_temperature"] - observed["surface_temperature"]) ** 2
        ).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = model.physical_parameters()
    assert float(fitted["surface_optical_depth"]) == pytest.approx(4.0, rel=0.01)
    assert float(fitted["surface_albedo"]) == pytest.approx(0.3, rel=0.01)


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown parameter"):
        SingleColumnModel(10, learn=("albedo",))
    with pytest.raises(ValueError, match="outside its bounds"):
        SingleColumnModel(10, critical_lapse_rate=0.011)


def test_moist_column_with_diffusion_reaches_equilibrium_with_live_parameters():
    dry = SingleColumnModel(10, diffusivity=1.0)
    moist = SingleColumnModel(10, diffusivity=1.0, moisture=True)
    forcing = (torch.tensor([295.0], dtype=DTYPE), torch.tensor([340.0], dtype=DTYPE))
    with torch.no_grad():
        dry_state = dry.equilibrium(dry.initial_state(*forcing))
    moist_state = moist.equilibrium(moist.initial_state(*forcing))
    tendencies, diagnostics = moist(moist_state)
    assert float(tendencies["specific_humidity"].abs().max()) * 86400 < 1e-9
    assert float(diagnostics["latent_heat_flux"][0]) > 0  # the surface evaporates
    # Evaporation cools the surface relative to the dry column.
    assert float(moist_state["surface_temperature"][0]) < float(dry_state["surface_temperature"][0])
    objective = (
        moist_state["air_temperature"].mean() + 1e3 * moist_state["specific_humidity"].mean()
    )
    objective.backward()
    gradients = physical_gradients(moist)
    assert len(gradients) == 9
    for name, gradient in gradients.items():
        assert bool(torch.isfinite(gradient).all()) and float(gradient.abs().max()) > 0, name
    with pytest.raises(ValueError, match="pass a diffusivity"):
        SingleColumnModel(10, moisture=True)


def test_failed_newton_is_retried_after_four_times_the_spin_up(monkeypatch):
    import climgrad.models.column as column_module
    from climgrad.integrate import EquilibriumError

    model = SingleColumnModel(levels=10)
    state = model.initial_state(
        torch.tensor([300.0], dtype=torch.float64), torch.tensor([340.0], dtype=torch.float64)
    )
    steps: list[int] = []
    original_run, original_solve = model.run, column_module.equilibrium
    calls = {"solve": 0}

    def counting_run(state, count, **kwargs):
        steps.append(count)
        return original_run(state, count, **kwargs)

    def failing_once(*args, **kwargs):
        calls["solve"] += 1
        if calls["solve"] == 1:
            raise EquilibriumError("first Newton fails")
        return original_solve(*args, **kwargs)

    monkeypatch.setattr(model, "run", counting_run)
    monkeypatch.setattr(column_module, "equilibrium", failing_once)
    solution = model.equilibrium(state, spin_up_steps=30)
    assert steps == [30, 120] and calls["solve"] == 2
    tendencies, _ = model(solution)
    assert float(tendencies["air_temperature"].abs().max()) * 86400 < 1e-8
    calls["solve"] = 0
    with pytest.raises(EquilibriumError):  # no spin-up: nothing to retry from
        model.equilibrium(solution, spin_up_steps=0)
