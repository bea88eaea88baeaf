"""MultiSiteColumnModel: parameters declared once and shared by every site.

The sites read one raw tensor through one bijection, so a value set on the model reaches every
site, the parameter is listed once, and the gradient of a loss summed over the sites is the sum
of the gradients of separate single-site columns at the same parameters.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from climgrad.models.multisite import MultiSiteColumnModel
from climgrad.models.site_column import SiteColumnModel
from climgrad.params import configure_parameters, display_names

SITES = {"tropical": (15.0, 80.0), "midlatitude_summer": (45.0, 196.0)}
NAMES = [
    "surface_optical_depth",
    "pressure_exponent",
    "surface_albedo",
    "heat_exchange",
    "critical_lapse_rate",
    "relaxation_time",
]


def _column(latitude: float, day: float) -> SiteColumnModel:
    return SiteColumnModel(
        latitude=latitude,
        day_of_year=day,
        top_pressure=25000.0,
        bottom_pressure=100000.0,
        surface_temperature_guess=300.0,
        levels=8,
    )


def _model() -> MultiSiteColumnModel:
    return MultiSiteColumnModel({name: _column(*site) for name, site in SITES.items()})


def _value(column: SiteColumnModel, process: str, name: str) -> float:
    """The physical value of ``column.processes.<process>.<name>``."""
    module: Any = column.processes[process]
    return float(getattr(module, name).detach())


def _profile_loss(column: SiteColumnModel) -> torch.Tensor:
    state = column.solve(spin_up_steps=50)
    return (state["air_temperature"] - 250.0).square().mean()


def test_every_parameter_is_declared_once() -> None:
    model = _model()
    assert list(display_names(model)) == NAMES
    learnable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert len(learnable) == len(NAMES)
    assert all(name.startswith("sites.tropical.") for name in learnable)
    assert model.site_names == list(SITES)


def test_a_value_set_on_the_model_reaches_every_site() -> None:
    model = _model()
    configure_parameters(
        model,
        {
            "critical_lapse_rate": {"value": 6.1e-3},
            "surface_albedo": {"value": 0.27, "learn": False},
        },
    )
    for name in model.site_names:
        column = model.site(name)
        assert _value(column, "convection", "critical_lapse_rate") == pytest.approx(
            6.1e-3, rel=1e-14
        )
        assert _value(column, "radiation", "surface_albedo") == 0.27  # exact (fixed)
    assert not display_names(model)["surface_albedo"].learnable


def test_the_gradient_is_the_sum_of_the_sites_gradients() -> None:
    model = _model()
    total = sum((_profile_loss(model.site(name)) for name in model.site_names), torch.tensor(0.0))
    total.backward()
    shared = {
        n: i.raw.grad.clone() for n, i in display_names(model).items() if i.raw.grad is not None
    }
    assert set(shared) >= {"surface_optical_depth", "critical_lapse_rate", "surface_albedo"}
    expected: dict[str, Any] = dict.fromkeys(shared, 0.0)
    for site in SITES.values():
        alone = _column(*site)  # an independent column, same (default) parameters
        _profile_loss(alone).backward()
        for key, info in display_names(alone).items():
            if key in expected and info.raw.grad is not None:
                expected[key] = expected[key] + info.raw.grad
    for key, gradient in shared.items():
        assert torch.allclose(gradient, torch.as_tensor(expected[key]), rtol=1e-9), key


def test_state_dict_round_trip_keeps_sites_tied() -> None:
    model = _model()
    configure_parameters(model, {"surface_optical_depth": 3.3})
    copy = _model()
    copy.load_state_dict(model.state_dict())
    for name in copy.site_names:
        value = _value(copy.site(name), "radiation", "surface_optical_depth")
        assert value == pytest.approx(3.3, rel=1e-14)
    configure_parameters(copy, {"surface_optical_depth": 2.5})  # still one tensor
    for name in SITES:
        value = _value(copy.site(name), "radiation", "surface_optical_depth")
        assert value == pytest.approx(2.5, rel=1e-14)


def test_bad_sites_fail_with_the_fix() -> None:
    with pytest.raises(ValueError, match="at least one site"):
        MultiSiteColumnModel({})
    with pytest.raises(ValueError, match="no dots"):
        MultiSiteColumnModel({"a.b": _column(0.0, 80.0)})
    moist = SiteColumnModel(
        latitude=0.0,
        day_of_year=80.0,
        top_pressure=25000.0,
        bottom_pressure=100000.0,
        surface_temperature_guess=300.0,
        levels=8,
        diffusivity=1.0,
    )
    with pytest.raises(ValueError, match="same radiation, humidity and options"):
        MultiSiteColumnModel({"dry": _column(0.0, 80.0), "diffusive": moist})
    with pytest.raises(KeyError, match="sites: tropical, midlatitude_summer"):
        _model().site("arctic")
