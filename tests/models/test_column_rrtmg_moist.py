"""The moist RRTMG column (``radiation="rrtmg", moisture=True``): latent heat, moist convection,
a tropopause, energy conservation, and implicit gradients of its equilibrium."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip(
    "climt",
    reason="RRTMG needs the optional extra climgrad[rrtmg] (climt, wheels for CPython 3.11 on "
    "x86-64 Linux): pip install 'climgrad[rrtmg]'",
)

from climgrad.constants import gravity
from climgrad.models.column import SingleColumnModel
from climgrad.physics.moist_convection import pseudoadiabatic_lapse_rate

from .rrtmg_column import (
    TROPICAL,
    equilibrium_taylor_rates,
    gradients_and_central_differences,
    solve,
)

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


@pytest.fixture(scope="module")
def solved() -> tuple[SingleColumnModel, dict[str, torch.Tensor]]:
    model = build()
    return model, solve(model, spin_up_steps=200)


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


def test_implicit_gradient_matches_finite_differences_and_every_parameter_is_live(solved) -> None:
    model, state = solved
    # step 0.1 (raw units): the Newton tolerance (1e-3 K day-1) leaves noise of about 1e-3 in the
    # loss, which at 0.02 is 10 % of the difference quotient for the weakly acting tau_c
    pairs = gradients_and_central_differences(model, state, step=0.1)
    assert len(pairs) == len(LEARN)
    for name, (gradient, difference) in pairs.items():
        assert math.isfinite(gradient) and gradient != 0.0, name
        assert gradient == pytest.approx(difference, rel=3e-2, abs=1e-3), name


def test_taylor_remainder_of_the_equilibrium_converges_at_rate_two(solved) -> None:
    model, state = solved
    remainders, rates = equilibrium_taylor_rates(model, state, (1.0, -0.7, 0.5, 0.8))
    assert all(1.6 < rate < 2.4 for rate in rates), (remainders, rates)
