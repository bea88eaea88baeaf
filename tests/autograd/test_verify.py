"""check_gradients and taylor_test catch a wrong backward, a dead parameter and a NaN gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from climgrad.autograd import GradientCheckError, check_gradients, taylor_test


class _CubeWithWrongBackward(torch.autograd.Function):
    """x**3 whose backward is off by 3 %: the kind of slip a hand-written backward makes."""

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * 2.9 * x**2


class _Cube(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * 3 * x**2


class Emission(nn.Module):
    """Toy module with a live, a dead and a NaN-gradient parameter."""

    def __init__(self):
        super().__init__()
        self.emissivity = nn.Parameter(torch.tensor(0.9))
        self.unused_offset = nn.Parameter(torch.tensor(1.0))
        self.at_the_kink = nn.Parameter(torch.tensor(0.0))

    def forward(self, state):
        temperature = state["air_temperature"]
        flux = self.emissivity * 5.67e-8 * temperature**4
        return {"flux": flux + 0.0 * self.unused_offset + torch.sqrt(self.at_the_kink) * 0.0}


def x64(*values):
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def test_correct_custom_function_passes_every_check():
    report = check_gradients(_Cube.apply, (x64(0.5, 1.0, 2.0),), names=["x"], strict=True)
    assert report.passed
    assert [r.check for r in report.results] == ["gradcheck", "taylor", "adjoint", "liveness"]


def test_wrong_backward_is_caught_by_gradcheck_taylor_and_adjoint():
    report = check_gradients(_CubeWithWrongBackward.apply, (x64(0.5, 1.0, 2.0),), names=["x"])
    failed = {r.check for r in report.failures}
    assert failed == {"gradcheck", "taylor", "adjoint"}
    taylor = next(r for r in report.results if r.check == "taylor")
    assert "rates 0." in taylor.detail or "rates 1." in taylor.detail
    with pytest.raises(GradientCheckError, match="gradcheck"):
        report.raise_if_failed()


def test_dead_and_nan_parameters_are_named():
    state = {"air_temperature": torch.tensor([250.0, 300.0], dtype=torch.float64)}
    report = check_gradients(Emission(), (state,), checks=["liveness"])
    by_target = {r.target: r for r in report.results}
    assert by_target["emissivity"].passed
    assert not by_target["unused_offset"].passed
    assert "dead" in by_target["unused_offset"].detail
    assert not by_target["at_the_kink"].passed
    assert "non-finite" in by_target["at_the_kink"].detail
    table = str(report)
    assert "unused_offset" in table and "FAIL" in table
    with pytest.raises(GradientCheckError):
        check_gradients(Emission(), (state,), checks=["liveness"], strict=True)


def test_expect_dead_accepts_a_legitimately_zero_gradient():
    state = {"air_temperature": torch.tensor([250.0], dtype=torch.float64)}
    module = Emission()
    module.at_the_kink.requires_grad_(False)
    report = check_gradients(module, (state,), expect_dead=["unused_offset"])
    assert report.passed, str(report)
    with pytest.raises(ValueError, match="not among"):
        check_gradients(module, (state,), expect_dead=["no_such_parameter"])


def test_state_dict_inputs_are_named_by_key():
    state = {
        "air_temperature": torch.tensor([250.0, 260.0], dtype=torch.float64, requires_grad=True)
    }
    module = Emission()
    for p in module.parameters():
        p.requires_grad_(False)
    report = check_gradients(module, (state,), names=["state"])
    assert report.passed
    assert [r.target for r in report.results if r.check == "liveness"] == ["state.air_temperature"]


def test_float32_inputs_and_module_are_checked_in_float64_without_touching_the_original():
    module = Emission().float()
    module.at_the_kink.requires_grad_(False)
    module.unused_offset.requires_grad_(False)
    state = {"air_temperature": torch.tensor([250.0], requires_grad=True)}
    assert check_gradients(module, (state,)).passed
    assert module.emissivity.dtype == torch.float32


def test_taylor_rates_are_two_for_a_correct_gradient_and_one_for_a_wrong_one():
    x = torch.tensor([0.3, 1.2, -0.7], dtype=torch.float64)
    good = taylor_test(lambda t: torch.exp(t) * torch.sin(t), x)
    assert good.passed and all(abs(rate - 2) < 0.1 for rate in good.rates)
    bad = taylor_test(_CubeWithWrongBackward.apply, x + 2)
    assert not bad.passed and all(abs(rate - 1) < 0.2 for rate in bad.judged_rates)


def test_taylor_of_a_linear_function_is_reported_as_linear():
    result = taylor_test(lambda t: 3 * t + 1, torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert result.linear and result.passed


def test_several_inputs_and_explicit_direction():
    a = torch.tensor([1.0, 2.0], dtype=torch.float64)
    b = torch.tensor([0.5], dtype=torch.float64)
    result = taylor_test(lambda u, v: (u**2 * v).sum(), (a, b), (torch.ones(2), torch.ones(1)))
    assert result.passed


def test_nothing_to_check_is_an_error():
    with pytest.raises(ValueError, match="requires_grad"):
        check_gradients(torch.sin, (torch.ones(2),))
    with pytest.raises(ValueError, match="Unknown check"):
        check_gradients(torch.sin, (x64(1.0),), checks=["gradchek"])
