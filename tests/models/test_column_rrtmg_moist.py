"""The moist RRTMG column (``radiation="rrtmg", moisture=True``): latent heat, moist convection,
a tropopause, energy conservation, and implicit gradients of its equilibrium."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip(
    "climt",
    reason="RRTMG needs the optional extra climgrad[rrtmg] (climt, wheels for CPython 3.11 on "
    "x86-64 Linux): pip install 'climgrad[rrtmg]'",
)

from climgrad.constants import gravity
from climgrad.data.afgl import read_afgl
from climgrad.models.column import SingleColumnModel
from climgrad.physics.insolation import daily_mean_cosine_zenith, daily_mean_insolation
from climgrad.physics.moist_convection import pseudoadiabatic_lapse_rate

F64 = torch.float64
AFGL = Path(__file__).resolve().parents[2] / "data/single_column/afgl_standard_atmospheres"
TROPICAL = read_afgl(AFGL / "tropical.dat")
LEVELS = 20
LEARN = ("surface_albedo", "surface_relative_humidity", "relaxation_time", "moisture_exchange")


def build(**options: object) -> SingleColumnModel:
    settings: dict[str, object] = {
        "radiation": "rrtmg",
        "moisture": True,
        "humidity": "relative",
        "background": TROPICAL,
        "surface_albedo": 0.5,
        "surface_relative_humidity": 0.77,
        "heat_exchange": 1.3e-3,
        "moisture_exchange": 1.3e-3,
        "mole_fractions": {"carbon_dioxide": 381.9e-6},
        "learn": LEARN,
    }
    settings.update(options)
    return SingleColumnModel(LEVELS, **settings)  # type: ignore[arg-type]


def darwin_state(model: SingleColumnModel) -> dict[str, torch.Tensor]:
    latitude = torch.tensor([-12.4], dtype=F64)
    day = torch.tensor([22.0], dtype=F64)
    return model.initial_state(
        torch.tensor([300.0], dtype=F64),
        daily_mean_insolation(latitude, day),
        cosine_solar_zenith_angle=daily_mean_cosine_zenith(latitude, day),
    )


@pytest.fixture(scope="module")
def solved() -> tuple[SingleColumnModel, dict[str, torch.Tensor]]:
    model = build()
    state = darwin_state(model)
    with torch.no_grad():
        equilibrium = model.equilibrium(state, spin_up_steps=200)
    return model, {**state, **{k: equilibrium[k].detach() for k in equilibrium}}


def test_parameters_and_bad_configurations() -> None:
    model = build()
    names = set(model.physical_parameters())
    assert set(LEARN) | {"heat_exchange"} <= names
    assert "critical_lapse_rate" not in names  # the lapse rate is the moist adiabat's
    assert model.moist_convection and not model.moisture  # vapour stays diagnosed
    with pytest.raises(ValueError, match="moist adiabat") as error:
        build(learn=("critical_lapse_rate",))
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="critical_relative_humidity"):
        build(learn=("critical_relative_humidity",))


def test_equilibrium_conserves_energy_and_rains_what_evaporates(solved) -> None:
    model, state = solved
    with torch.no_grad():
        tendencies, diagnostics = model(state)
    assert float(tendencies["air_temperature"].abs().max()) * 86400 < 1e-3
    assert float(tendencies["surface_temperature"].abs().max()) * 86400 < 1e-3
    assert "specific_humidity" not in tendencies
    absorbed = diagnostics["incoming_shortwave"] - diagnostics["reflected_shortwave"]
    torch.testing.assert_close(
        absorbed, diagnostics["outgoing_longwave_radiation"], rtol=0.0, atol=2e-2
    )
    latent = diagnostics["latent_heat_flux"]
    # a tropical ocean evaporates 100-200 W m-2 and loses little sensible heat
    assert 80.0 < float(latent[0]) < 250.0
    assert 0.0 < float(diagnostics["sensible_heat_flux"][0]) < 0.3 * float(latent[0])
    heating = diagnostics["convective_heating_rate"][0]
    mass = 1.0e5 / LEVELS / float(gravity)
    column = float((heating * mass * 1004.0).sum())
    assert column == pytest.approx(float(latent[0]), rel=1e-9)
    torch.testing.assert_close(
        diagnostics["convective_precipitation_flux"], diagnostics["evaporation_flux"]
    )


def test_troposphere_follows_the_moist_adiabat_under_a_tropopause(solved) -> None:
    model, state = solved
    with torch.no_grad():
        _, diagnostics = model(state)
    temperature = state["air_temperature"][0]
    pressure = model.layer_pressure
    cold = int(torch.argmin(temperature))
    # a cold-point tropopause between 50 and 250 hPa, a stratosphere warming upward above it
    assert 5.0e3 < float(pressure[cold]) < 2.5e4
    assert bool((temperature[:cold].diff() < 0).all())
    # the mid-troposphere lapse rate is the pseudo-adiabat's (within 10 %)
    k = int(torch.argmin((pressure - 5.0e4).abs()))
    rate = (
        (temperature[k + 1] - temperature[k - 1])
        / torch.log(pressure[k + 1] / pressure[k - 1])
        * float(gravity)
        / (287.04 * temperature[k])
    )
    expected = pseudoadiabatic_lapse_rate(temperature[k], pressure[k])
    assert float(rate) == pytest.approx(float(expected), rel=0.1)
    # convection heats the troposphere and is off in the stratosphere
    heating = diagnostics["convective_heating_rate"][0]
    assert float(heating[: max(cold - 2, 1)].abs().max()) * 86400 < 0.05
    assert float(heating[cold + 2 : -1].min()) > 0.0


def test_surface_energy_budget_closes_with_evaporation_as_its_main_loss(solved) -> None:
    model, state = solved
    with torch.no_grad():
        _, diagnostics = model(state)
    net_shortwave = diagnostics["net_downward_shortwave_flux"][0, -1]
    net_longwave = diagnostics["net_upward_longwave_flux"][0, -1]
    turbulent = diagnostics["sensible_heat_flux"][0] + diagnostics["latent_heat_flux"][0]
    assert float(net_shortwave - net_longwave) == pytest.approx(float(turbulent), abs=2e-2)
    # evaporation carries most of the absorbed sunlight away (a Bowen ratio below 0.3)
    assert float(diagnostics["latent_heat_flux"][0]) > 0.5 * float(net_shortwave)


def _loss(model: SingleColumnModel, state: dict[str, torch.Tensor]) -> torch.Tensor:
    equilibrium = model.equilibrium(state, spin_up_steps=0)
    weights = torch.linspace(0.5, 1.5, LEVELS, dtype=F64)
    return (weights * equilibrium["air_temperature"][0]).mean() + equilibrium[
        "surface_temperature"
    ][0]


def test_implicit_gradient_matches_finite_differences_and_every_parameter_is_live(solved) -> None:
    model, state = solved
    model.zero_grad()
    _loss(model, state).backward()
    raw = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert len(raw) == len(LEARN)
    for name, parameter in raw.items():
        gradient = float(parameter.grad)
        assert math.isfinite(gradient) and gradient != 0.0, name
        step = 2e-2  # raw (unconstrained) units; RRTMG's staircase needs steps well above 1e-5
        with torch.no_grad():
            parameter += step
            plus = float(_loss(model, state))
            parameter -= 2 * step
            minus = float(_loss(model, state))
            parameter += step
        assert gradient == pytest.approx((plus - minus) / (2 * step), rel=3e-2, abs=1e-3), name


def test_taylor_remainder_of_the_equilibrium_converges_at_rate_two(solved) -> None:
    model, state = solved
    parameters = [p for p in model.parameters() if p.requires_grad]
    direction = [torch.full_like(p, s) for p, s in zip(parameters, (1.0, -0.7, 0.5, 0.8))]
    base = [p.detach().clone() for p in parameters]

    def loss_at(h: float) -> torch.Tensor:
        with torch.no_grad():
            for p, b, d in zip(parameters, base, direction):
                p.copy_(b + h * d)
        return _loss(model, state)

    try:
        model.zero_grad()
        value = loss_at(0.0)
        value.backward()
        slope = sum(float((p.grad * d).sum()) for p, d in zip(parameters, direction))
        steps = (0.16, 0.08, 0.04, 0.02)
        remainders = [abs(float(loss_at(h)) - float(value) - h * slope) for h in steps]
    finally:
        loss_at(0.0)
    rates = [math.log2(a / b) for a, b in itertools.pairwise(remainders)]
    assert all(1.6 < rate < 2.4 for rate in rates), (remainders, rates)
