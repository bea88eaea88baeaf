"""Constrained physical parameters: bijections, bounds, priors, config, tables."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from climgrad.params import (
    ParamSpec,
    Prior,
    configure_parameters,
    constrain,
    iter_parameters,
    parameter_table,
    physical_parameters,
    prior_penalty,
)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.intercept = nn.Parameter(torch.tensor(210.0, dtype=torch.float64))
        self.diffusivity = nn.Parameter(torch.full((4,), 0.5, dtype=torch.float64))
        self.albedo = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
        self.cap = nn.Parameter(torch.tensor(-1.0, dtype=torch.float64))

    def forward(self):
        return self.intercept + self.diffusivity.sum() + self.albedo + self.cap


SPECS = {
    "intercept": ParamSpec(
        "intercept", "W m-2", 210.0, description="OLR at 0 degC", prior=Prior("normal", 203.3, 10.0)
    ),
    "diffusivity": ParamSpec(
        "diffusivity", "W m-2 K-1", 0.5, bounds=(0.0, None), prior=Prior("lognormal", -0.5, 0.3)
    ),
    "albedo": ParamSpec("albedo", "1", 0.3, bounds=(0.0, 1.0)),
    "cap": ParamSpec("cap", "K", -1.0, bounds=(None, 0.0), transform="exp"),
}


def constrained_toy():
    outer = nn.Module()
    outer.toy = Toy()
    for name, spec in SPECS.items():
        constrain(outer.toy, name, spec)
    return outer


def test_values_read_in_physical_units_and_raw_tensors_are_optimised():
    model = constrained_toy()
    values = physical_parameters(model)
    # Keyed by spec name when unique (qualified module paths otherwise).
    assert set(values) == {"intercept", "diffusivity", "albedo", "cap"}
    assert float(values["albedo"]) == pytest.approx(0.3, abs=1e-15)
    assert values["diffusivity"].shape == (4,)
    names = [n for n, _ in model.named_parameters()]
    assert all(".parametrizations." in n and n.endswith(".original") for n in names)


@pytest.mark.parametrize("lr", [0.1, 10.0, 1000.0])
def test_bounds_hold_after_any_optimizer_step_without_clamping(lr):
    model = constrained_toy()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(20):
        optimizer.zero_grad()
        # Push every parameter hard against its bounds.
        loss = -(model.toy.albedo * 1e3) + model.toy.diffusivity.sum() * 1e3 - model.toy.cap * 1e3
        loss.backward()
        optimizer.step()
    assert 0.0 < float(model.toy.albedo) <= 1.0
    assert bool((model.toy.diffusivity >= 0).all())
    assert float(model.toy.cap) <= 0.0


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(["albedo", "diffusivity", "cap", "intercept"]),
    st.floats(0.01, 0.99),
)
def test_inverse_of_transform_is_identity(name, fraction):
    spec = SPECS[name]
    bijection = spec.bijection()
    lower, upper = spec.bounds
    if lower is not None and upper is not None:
        value = lower + fraction * (upper - lower)
    elif lower is not None:
        value = lower + fraction * 50
    elif upper is not None:
        value = upper - fraction * 50
    else:
        value = (fraction - 0.5) * 500
    tensor = torch.tensor(value, dtype=torch.float64)
    round_trip = bijection(bijection.right_inverse(tensor))
    assert float(round_trip) == pytest.approx(value, rel=1e-12, abs=1e-12)


def test_gradient_flows_to_raw_parameters():
    model = constrained_toy()
    model.toy().backward()
    for info in iter_parameters(model):
        assert info.raw.grad is not None and bool((info.raw.grad != 0).all()), info.qualified_name


def test_priors_give_the_negative_log_density():
    model = constrained_toy()
    log_half = math.log(0.5)
    expected = 0.5 * ((210.0 - 203.3) / 10.0) ** 2
    expected += 4 * (0.5 * ((log_half + 0.5) / 0.3) ** 2 + log_half)
    assert float(prior_penalty(model)) == pytest.approx(float(expected), rel=1e-12)
    configure_parameters(model, {"intercept": {"learn": False}, "diffusivity": {"learn": False}})
    assert float(prior_penalty(model)) == 0.0


def test_configure_values_and_learnability_from_config():
    model = constrained_toy()
    configure_parameters(model, {"toy.albedo": 0.25, "diffusivity": {"value": 0.7, "learn": False}})
    assert float(model.toy.albedo) == pytest.approx(0.25)
    assert torch.allclose(model.toy.diffusivity, torch.full((4,), 0.7, dtype=torch.float64))
    learnable = {i.qualified_name: i.learnable for i in iter_parameters(model)}
    assert learnable["toy.diffusivity"] is False and learnable["toy.albedo"] is True
    table = parameter_table(model)
    assert "diffusivity" in table and "no" in table and "W m-2 K-1" in table
    assert "normal(203.3, 10)" in table


def test_errors_name_the_fix():
    model = constrained_toy()
    with pytest.raises(KeyError, match="not a parameter of the model; parameters are"):
        configure_parameters(model, {"albeod": 0.3})
    with pytest.raises(KeyError, match="use 'value', 'learn' and/or 'prior'"):
        configure_parameters(model, {"albedo": {"lern": False}})
    with pytest.raises(ValueError, match="outside its bounds"):
        configure_parameters(model, {"albedo": 1.2})
    with pytest.raises(ValueError, match="lower < upper"):
        ParamSpec("x", "1", 0.5, bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match="outside its bounds"):
        ParamSpec("x", "1", 2.0, bounds=(0.0, 1.0))
    with pytest.raises(ValueError, match="prior kind"):
        Prior("gaussian")  # type: ignore[arg-type]


def test_state_dict_round_trip():
    model = constrained_toy()
    configure_parameters(model, {"albedo": 0.41, "cap": -3.0})
    restored = constrained_toy()
    restored.load_state_dict(model.state_dict())
    assert float(restored.toy.albedo) == pytest.approx(0.41, rel=1e-14)
    assert float(restored.toy.cap) == pytest.approx(-3.0, rel=1e-14)


@settings(max_examples=200, deadline=None)
@given(
    value=st.floats(1e-6, 1e9, allow_nan=False, allow_infinity=False),
    transform=st.sampled_from(["exp", "softplus"]),
)
def test_configured_values_read_back_exactly(value: float, transform: str) -> None:
    """f(f⁻¹(x)) rounds; the stored correction makes the configured value come back bit for bit."""
    module = nn.Module()
    module.x = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
    spec = ParamSpec("x", "W m-2", 1.0, bounds=(0.0, None), transform=transform)  # type: ignore[arg-type]
    constrain(module, "x", spec, value=value, learn=False)
    assert float(module.x) == value
    configure_parameters(module, {"x": value * 1.5})
    assert float(module.x) == value * 1.5


def test_fixed_parameters_keep_their_configured_values_and_old_state_dicts_load():
    model = constrained_toy()
    configure_parameters(model, {"albedo": {"value": 0.41, "learn": False}, "cap": -3.0})
    assert float(model.toy.albedo) == 0.41  # fixed: exactly as configured
    assert float(model.toy.cap) == pytest.approx(-3.0, rel=1e-15)  # learnable: f(f⁻¹(x))
    assert float(model.toy.parametrizations.cap[0].correction) == 0.0  # bounds hold exactly
    old = {k: v for k, v in model.state_dict().items() if not k.endswith(".correction")}
    restored = constrained_toy()
    restored.load_state_dict(old)  # a checkpoint written before the correction existed
    assert float(restored.toy.albedo) == pytest.approx(0.41, rel=1e-14)
    # Gradients are those of the transform alone.
    raw = model.toy.parametrizations.cap.original
    raw.grad = None
    model.toy.cap.sum().backward()
    assert raw.grad is not None and float(raw.grad) != 0.0
