"""EBM1D's seasonal cycle with land and ocean heat capacities (North & Coakley 1979).

Physics (land bands swing wider and earlier), the periodic state against a long rollout, its
implicit gradient against autograd through that rollout, gradcheck, Taylor remainder, liveness,
and the one-line errors of bad land fractions.
"""

from __future__ import annotations

import pytest
import torch

from climgrad.autograd import check_gradients
from climgrad.autograd.verify import taylor_test
from climgrad.integrate import EquilibriumInfo
from climgrad.models import EBM1D
from climgrad.models.ebm1d import _SeasonalCycle, monthly_means
from climgrad.params import physical_gradients

LEARN_ALL = ("A", "B", "D", "a0", "a2", "ai", "Tf", "land_heat_capacity", "ocean_heat_capacity")


def mirrored_land(bands: int) -> torch.Tensor:
    """All land north of the equator, all ocean south: each band has an ocean twin."""
    fraction = torch.zeros(bands, dtype=torch.float64)
    fraction[bands // 2 :] = 1.0
    return fraction


def small_model(**kwargs: object) -> EBM1D:
    """6 bands of 30 degrees, a mixed land fraction, learnable everything (gradient tests)."""
    settings: dict[str, object] = {
        "land_fraction": torch.tensor([0.9, 0.1, 0.2, 0.3, 0.5, 0.6], dtype=torch.float64),
        "land_heat_capacity": 8.0e6,
        "ocean_heat_capacity": 6.0e7,
        "learn": LEARN_ALL,
    }
    settings.update(kwargs)
    return EBM1D(bands=6, **settings)  # type: ignore[arg-type]


def test_heat_capacity_is_the_area_weighted_land_and_ocean_value():
    fraction = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    model = EBM1D(
        bands=4, land_fraction=fraction, land_heat_capacity=4.0e6, ocean_heat_capacity=2.0e8
    )
    expected = fraction * 4.0e6 + (1 - fraction) * 2.0e8
    torch.testing.assert_close(model.heat_capacity_by_band().detach(), expected)
    assert "heat_capacity" not in model.physical_parameters()
    assert model.parameter_names[-2:] == ("land_heat_capacity", "ocean_heat_capacity")
    # Without a land fraction nothing changes: the same parameters and state dict as before.
    plain = EBM1D(bands=4)
    assert set(plain.physical_parameters()) == {
        "A", "B", "D", "a0", "a2", "ai", "Tf", "S0", "heat_capacity"
    }  # fmt: skip
    assert not any("land" in key or "warm" in key for key in plain.state_dict())
    torch.testing.assert_close(
        plain.heat_capacity_by_band().detach(), torch.full((4,), 4.2e7, dtype=torch.float64)
    )


def test_land_bands_swing_wider_and_earlier_than_their_ocean_twins():
    bands = 12
    model = EBM1D(bands=bands, land_fraction=mirrored_land(bands))
    with torch.no_grad():
        monthly = monthly_means(model.periodic_cycle(48)["surface_temperature"])
    amplitude = monthly.amax(0) - monthly.amin(0)
    for south in range(1, bands // 2 - 1):  # pair each southern (ocean) band with its twin
        north = bands - 1 - south
        assert float(amplitude[north]) > 3.0 * float(amplitude[south]), south
    # Land peaks about a month after the solstice (July, index 6), the ocean later (north: Aug
    # or later); and in the south, whose summer is January, the ocean peaks after January too.
    mid_north, mid_south = bands - 3, 2  # 37.5 N (land), 37.5 S (ocean)
    assert int(monthly[:, mid_north].argmax()) in (6, 7)
    assert int(monthly[:, mid_south].argmax()) in (1, 2, 3)
    # The annual-mean equilibrium does not depend on the heat capacities at all.
    plain = EBM1D(bands=bands)
    with torch.no_grad():
        torch.testing.assert_close(
            model.equilibrium()["surface_temperature"], plain.equilibrium()["surface_temperature"]
        )


def test_periodic_state_is_where_a_long_rollout_settles():
    model = small_model()
    info = EquilibriumInfo()
    with torch.no_grad():
        cycle = model.periodic_cycle(12, info=info)
        state = cycle["periodic_state"]
        # The same scheme, stepped 40 years from the initial state (damping e^(-B yr / C) per year).
        temperature = model.initial_state()["surface_temperature"]
        stepper = _stepper(model, 12)
        for _ in range(40):
            temperature = stepper.year(temperature, *stepper.coefficients)
    assert info.iterations <= 6
    assert float((temperature - state).abs().max()) < 1e-8
    # Energy closes per step: C dT/dt = ASR - OLR + convergence, whose area mean over a periodic
    # year is zero (the diffusion conserves energy): the global, annual net flux vanishes.
    net = cycle["absorbed_shortwave_radiation"] - cycle["outgoing_longwave_radiation"]
    assert abs(float(model.grid.global_mean(net.mean(0)))) < 1e-8


def _stepper(model: EBM1D, steps: int) -> _SeasonalCycle:
    values = model.parameter_values()
    albedo = model.processes["shortwave"].albedo
    cycle = _SeasonalCycle(
        model._daily_insolation_pattern(steps),
        365.2422 * 86400.0 / steps,
        albedo.transition_width,
        albedo.mode,
        model.grid,
    )
    cycle.coefficients = [  # type: ignore[attr-defined]
        values["S0"],
        values["a0"] + values["a2"] * model.legendre_p2_of_latitude,
        values["ai"],
        values["Tf"],
        values["A"],
        values["B"],
        values["D"],
        model.heat_capacity_by_band(),
    ]
    return cycle


def test_implicit_gradient_equals_autograd_through_a_long_rollout():
    """The shooting gradient against backpropagation through 40 recorded years."""
    implicit = small_model()
    monthly = monthly_means(implicit.periodic_cycle(12)["surface_temperature"])
    weights = torch.linspace(-1.0, 2.0, monthly.numel(), dtype=torch.float64).reshape(monthly.shape)
    (weights * monthly).sum().backward()
    shooting = physical_gradients(implicit)

    unrolled = small_model()
    stepper = _stepper(unrolled, 12)
    temperature = unrolled.initial_state()["surface_temperature"]
    for _ in range(40):
        temperature = stepper.year(temperature, *stepper.coefficients)
    series = stepper.year_series(temperature, *stepper.coefficients)["surface_temperature"]
    (weights * monthly_means(series)).sum().backward()
    for name, value in physical_gradients(unrolled).items():
        assert float(shooting[name]) == pytest.approx(float(value), rel=1e-6, abs=1e-10), name


class _MonthlyCycle(torch.nn.Module):
    """Monthly surface temperature and OLR of the periodic cycle, from a fixed start."""

    def __init__(self, model: EBM1D, steps: int = 12) -> None:
        super().__init__()
        self.model = model
        self.steps = steps
        with torch.no_grad():
            self.start = model.periodic_cycle(steps)["periodic_state"].clone()

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        # A fixed start and a tight tolerance: finite differences see the solver's error / eps.
        cycle = self.model.periodic_cycle(self.steps, initial=self.start, tol=1e-12)
        return (
            monthly_means(cycle["surface_temperature"]),
            monthly_means(cycle["outgoing_longwave_radiation"]),
        )


def test_gradcheck_taylor_adjoint_and_liveness_of_every_learnable_parameter():
    report = check_gradients(_MonthlyCycle(small_model()), (), atol=1e-6, rtol=1e-5)
    assert report.passed, str(report)
    live = {r.target for r in report.results if r.check == "liveness" and r.passed}
    assert len(live) == len(LEARN_ALL), str(report)


def test_taylor_remainder_converges_at_second_order():
    """J(θ + h δθ) − J(θ) − h ∇J·δθ = O(h²) along a random direction of every raw parameter."""
    cycle = _MonthlyCycle(small_model())
    names = [name for name, p in cycle.named_parameters() if p.requires_grad]
    point = [p.detach().clone() for p in cycle.parameters() if p.requires_grad]
    target = torch.linspace(240.0, 300.0, 6, dtype=torch.float64)

    def misfit(*raw: torch.Tensor) -> torch.Tensor:
        temperature, olr = torch.func.functional_call(cycle, dict(zip(names, raw)), ())
        return ((temperature - target) ** 2).mean() + 1e-2 * (olr**2).mean()

    result = taylor_test(misfit, point, h0=1e-3, halvings=4)
    assert result.passed, str(result)
    # The ice edge's curvature leaves a third-order term at the largest steps: the rates climb
    # to 2 as h shrinks (a wrong gradient would leave them at 1).
    assert result.rates[-1] > 1.9 and result.rates == sorted(result.rates), str(result)


def test_bad_land_fraction_and_arguments_are_one_line_errors_that_name_the_fix():
    with pytest.raises(ValueError, match=r"\[0, 1\].*percentage by 100") as caught:
        EBM1D(bands=4, land_fraction=[0.0, 0.5, 1.2, 0.1])
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match=r"shape \(3,\).*4 latitude bands.*one value per band"):
        EBM1D(bands=4, land_fraction=[0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        EBM1D(bands=2, land_fraction=[0.1, float("nan")])
    with pytest.raises(ValueError, match="replace heat_capacity"):
        EBM1D(bands=4, land_fraction=[0.0, 0.5, 1.0, 0.1], learn=("heat_capacity",))
    with pytest.raises(ValueError, match="replace heat_capacity"):
        EBM1D(bands=4, learn=("land_heat_capacity",))
    model = small_model()
    with pytest.raises(ValueError, match="at least 4"):
        model.periodic_cycle(2)
    with pytest.raises(ValueError, match="multiple of 12"):
        monthly_means(torch.zeros(18, 6))
