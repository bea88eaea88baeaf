"""Threshold surrogates: exact, smooth and straight-through gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from climgrad.autograd import check_gradients, positive_part, step


def test_exact_step_has_a_zero_gradient_and_smooth_step_a_live_one():
    x = torch.tensor([-0.5, 0.2, 1.5], dtype=torch.float64, requires_grad=True)
    (exact,) = torch.autograd.grad(step(x, 0.5, "exact").sum(), x, allow_unused=True)
    assert exact is None or bool((exact == 0).all())
    report = check_gradients(lambda t: step(t, 0.5, "smooth"), (x,), names=["x"])
    assert report.passed, str(report)


def test_straight_through_forward_is_exact_and_backward_is_smooth():
    x = torch.tensor([-0.5, 0.2, 1.5], dtype=torch.float64, requires_grad=True)
    width = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    y = step(x, width, "straight_through")
    assert torch.equal(y, step(x, width, "exact"))
    grads = torch.autograd.grad(y.sum(), (x, width))
    reference = torch.autograd.grad(step(x, width, "smooth").sum(), (x, width))
    for got, want in zip(grads, reference):
        torch.testing.assert_close(got, want)


def test_positive_part_modes():
    x = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    assert torch.equal(positive_part(x, 0.1, "exact"), torch.tensor([0.0, 0.5, 2.0]).double())
    assert check_gradients(lambda t: positive_part(t, 0.1, "smooth"), (x,)).passed
    y = positive_part(x, 0.1, "straight_through")
    assert torch.equal(y, positive_part(x, 0.1, "exact"))
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, torch.sigmoid(x.detach() / 0.1))


@settings(max_examples=25, deadline=None)
@given(st.floats(-50, 50), st.floats(0.01, 10))
def test_smooth_step_is_bounded_monotone_and_converges(x, width):
    t = torch.tensor([x, x + 1e-3], dtype=torch.float64)
    h = step(t, width, "smooth")
    assert bool(((h >= 0) & (h <= 1)).all()) and h[1] >= h[0]
    if abs(x) > 20 * width:
        assert abs(float(h[0]) - float(x > 0)) < 1e-6


def test_bad_mode_and_width():
    with pytest.raises(ValueError, match="straight_through"):
        step(torch.ones(1), 1.0, "sharp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        positive_part(torch.ones(1), 0.0)
