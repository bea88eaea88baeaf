"""SingleColumnModel with RRTMG radiation: construction, daily-mean shortwave, equilibrium and its
implicit gradients (Newton Jacobian by forward mode through the finite-difference bridge)."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip(
    "climt",
    reason="RRTMG needs the optional extra climgrad[rrtmg] (climt, wheels for CPython 3.11 on "
    "x86-64 Linux): pip install 'climgrad[rrtmg]'",
)

from climgrad.integrate import jacobian as _jacobian
from climgrad.models.base import functional
from climgrad.models.column import SingleColumnModel
from climgrad.params import physical_parameters

from .rrtmg_column import (
    AFGL,
    TROPICAL,
    darwin_state,
    equilibrium_taylor_rates,
    gradients_and_central_differences,
    solve,
)

LEVELS = 20
LEARN = ("surface_albedo", "humidity_scale", "critical_lapse_rate")


def build(**options: object) -> SingleColumnModel:
    settings: dict[str, object] = {
        "radiation": "rrtmg",
        "background": TROPICAL,
        "surface_albedo": 0.4,
        "mole_fractions": {"carbon_dioxide": 381.9e-6},
        "learn": LEARN,
    }
    settings.update(options)
    return SingleColumnModel(LEVELS, **settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def solved() -> tuple[SingleColumnModel, dict[str, torch.Tensor]]:
    model = build()
    return model, solve(model, spin_up_steps=300)


# ---------------------------------------------------------------------------------------------
# Construction


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"radiation": "grey"}, "not a scheme"),
        ({"background": None}, "background"),
        ({"humidity": "prognostic"}, "not a mode"),
        ({"moisture": True, "learn": ("critical_lapse_rate",)}, "moist adiabat"),
        ({"learn": ("surface_optical_depth",)}, "Unknown parameter"),
    ],
)
def test_bad_configurations_are_one_line_errors(options: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match) as error:
        build(**options)
    assert "\n" not in str(error.value)


def test_a_background_path_is_refused_with_the_reader_named() -> None:
    # Models take profile objects, never paths: climgrad.data reads the table.
    with pytest.raises(TypeError, match=r"read_afgl\(") as error:
        build(background=str(AFGL / "tropical.dat"))
    assert "\n" not in str(error.value)


def test_parameters_of_the_rrtmg_configuration() -> None:
    model = build(learn=None)
    names = set(physical_parameters(model))
    assert {"surface_albedo", "humidity_scale", "critical_lapse_rate"} <= names
    assert "surface_optical_depth" not in names and "pressure_exponent" not in names
    learnable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not [n for n in learnable if "mole_fraction" in n]  # gases are background, fixed
    relative = build(humidity="relative", learn=None)
    assert "surface_relative_humidity" in physical_parameters(relative)


def test_shortwave_is_scaled_to_the_daily_mean_insolation() -> None:
    model = build()
    state = darwin_state(model)
    _, diagnostics = model(state)
    torch.testing.assert_close(
        diagnostics["incoming_shortwave"], state["insolation"], rtol=1e-5, atol=0.0
    )
    reflected = diagnostics["reflected_shortwave"] / diagnostics["incoming_shortwave"]
    assert 0.3 < float(reflected) < 0.45  # surface albedo 0.4 seen through a clear atmosphere


def test_relative_humidity_mode_moves_vapour_with_temperature() -> None:
    model = build(humidity="relative", learn=("surface_relative_humidity",))
    state = darwin_state(model)
    _, cold = model(state)
    _, warm = model({**state, "air_temperature": state["air_temperature"] + 2.0})
    lower = slice(LEVELS // 2, None)
    assert bool(
        (warm["specific_humidity"][..., lower] > cold["specific_humidity"][..., lower]).all()
    )
    tendencies, _ = model(state)
    tendencies["air_temperature"].sum().backward()
    gradient = model.humidity.parametrizations.surface_relative_humidity.original.grad
    assert gradient is not None and bool(torch.isfinite(gradient)) and float(gradient) != 0.0


# ---------------------------------------------------------------------------------------------
# Equilibrium and implicit gradients


def test_equilibrium_is_a_radiative_convective_profile(solved) -> None:
    model, state = solved
    tendencies, diagnostics = model(state)
    assert float(tendencies["air_temperature"].abs().max()) * 86400 < 1e-3
    assert float(tendencies["surface_temperature"].abs().max()) * 86400 < 1e-3
    temperature = state["air_temperature"][0]
    assert 290.0 < float(state["surface_temperature"][0]) < 340.0
    # troposphere cools upward from the surface to the tropopause region
    assert bool((temperature[LEVELS // 4 + 1 :].diff() > 0).all())
    # top-of-atmosphere energy balance: absorbed sunlight = OLR at equilibrium
    absorbed = diagnostics["incoming_shortwave"] - diagnostics["reflected_shortwave"]
    torch.testing.assert_close(
        absorbed, diagnostics["outgoing_longwave_radiation"], rtol=0.0, atol=1e-2
    )


def test_forward_mode_jacobian_matches_reverse_mode_rows(solved) -> None:
    model, state = solved
    prognostic = ("air_temperature", "surface_temperature")
    forcing = {k: v for k, v in state.items() if k not in prognostic}
    packed = model._pack(state).detach()
    bound, tensors = functional(model, "_residual")

    def residual(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return bound(x, forcing, *params)

    longwave = model.processes["longwave"].operator
    before = longwave.calls.tangent
    jacobian = _jacobian(residual, packed, tensors)
    assert longwave.calls.tangent - before == 2  # one batched product for all unknowns
    point = packed.clone().requires_grad_()
    values = residual(point, *[t.detach() for t in tensors])
    for row in (0, LEVELS // 2, LEVELS - 1, LEVELS):
        (grad,) = torch.autograd.grad(values[0, row], point, retain_graph=True)
        torch.testing.assert_close(grad[0], jacobian[0, row], rtol=1e-6, atol=1e-6)


def test_implicit_gradient_matches_finite_differences_and_every_parameter_is_live(solved) -> None:
    model, state = solved
    pairs = gradients_and_central_differences(model, state)
    assert len(pairs) == len(LEARN)
    for name, (gradient, difference) in pairs.items():
        assert math.isfinite(gradient) and gradient != 0.0, name
        assert gradient == pytest.approx(difference, rel=3e-2), name


def test_taylor_remainder_of_the_equilibrium_converges_at_rate_two(solved) -> None:
    """r(h) = |L(θ + h d) - L(θ) - h <∇L, d>| halves twice per halving of h (rate 2)."""
    model, state = solved
    remainders, rates = equilibrium_taylor_rates(model, state, (1.0, -0.7, 0.5))
    assert all(1.7 < rate < 2.3 for rate in rates), (remainders, rates)
