"""Gradients through thresholds: exact, smooth, or straight-through.

Physics is full of switches: ice forms below a freezing temperature, convection acts when the
lapse rate exceeds a critical value, vapour condenses above saturation. The exact derivative of a
switch is zero almost everywhere, so a parameter that only moves the switch (a freezing
temperature, a relative humidity threshold) gets no gradient and cannot be calibrated. Each
threshold in climgrad therefore takes a ``mode``:

``"exact"``
    The true function and its true derivative (zero where physics is flat). Parameters that only
    move the threshold are dead.
``"smooth"``
    A smoothed surrogate of chosen ``width`` replaces the switch in the forward pass and in the
    gradient; the model changes (slightly) and the gradient is exact for the smoothed model.
``"straight_through"``
    The forward pass is the exact switch; the backward pass uses the derivative of the smooth
    surrogate (Bengio et al. 2013, arXiv:1308.3432). The model is unchanged and threshold parameters
    are live, at the price of a biased gradient (it is not the derivative of the forward function,
    so ``gradcheck`` does not apply to it by design).

The smooth step is ``h(x) = (1 + tanh(x / width)) / 2`` and the smooth positive part is
``width * softplus(x / width)``; both converge to the exact switch as ``width -> 0``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from climgrad.validation import check_choice, check_positive

GradientMode = Literal["exact", "smooth", "straight_through"]
GRADIENT_MODES: tuple[str, ...] = ("exact", "smooth", "straight_through")


def check_mode(mode: str) -> None:
    """Raise a ValueError naming the valid modes if ``mode`` is not one of them."""
    check_choice("gradient mode", mode, GRADIENT_MODES)


def _smooth_step(x: Tensor, width: Tensor | float) -> Tensor:
    return 0.5 * (1.0 + torch.tanh(x / width))


def _smooth_step_derivative(x: Tensor, width: Tensor | float) -> Tensor:
    return 0.5 * (1.0 - torch.tanh(x / width) ** 2) / width


class _StraightThroughStep(torch.autograd.Function):
    """Heaviside forward, derivative of the tanh step backward (in ``x`` and ``width``)."""

    @staticmethod
    def forward(x: Tensor, width: Tensor) -> Tensor:
        return (x > 0).to(x.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, width = inputs
        ctx.save_for_backward(x, width)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, width = ctx.saved_tensors
        dstep_dx = _smooth_step_derivative(x, width)
        grad_x = grad_output * dstep_dx if ctx.needs_input_grad[0] else None
        grad_width = None
        if ctx.needs_input_grad[1]:
            grad_width = (grad_output * dstep_dx * (-x / width)).sum_to_size(width.shape)
        return grad_x, grad_width


class _StraightThroughPositivePart(torch.autograd.Function):
    """max(x, 0) forward, derivative of ``width * softplus(x / width)`` backward (in ``x``)."""

    @staticmethod
    def forward(x: Tensor, width: Tensor) -> Tensor:
        return torch.clamp(x, min=0.0)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, width = inputs
        ctx.save_for_backward(x, width)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None]:
        x, width = ctx.saved_tensors
        grad_x = grad_output * torch.sigmoid(x / width) if ctx.needs_input_grad[0] else None
        return grad_x, None


def _as_width(width: Tensor | float, like: Tensor) -> Tensor:
    width_tensor = torch.as_tensor(width, dtype=like.dtype, device=like.device)
    check_positive("width", width_tensor, "", "Give the threshold width in the units of `x`.")
    return width_tensor


def step(x: Tensor, width: Tensor | float, mode: GradientMode = "smooth") -> Tensor:
    """Heaviside step ``H(x)`` (1 where ``x > 0``) with a chosen gradient.

    Args:
        x: Distance past the threshold, in any units (e.g. ``T_f - T`` in K for ice).
        width: Transition width in the units of ``x`` (positive). Used by ``"smooth"`` and
            ``"straight_through"``.
        mode: ``"exact"``, ``"smooth"`` or ``"straight_through"`` (see the module docstring).

    Returns:
        Tensor of the shape of ``x`` (broadcast with ``width``), values in [0, 1].

    >>> import torch
    >>> step(torch.tensor([-1.0, 1.0]), 0.1, mode="exact")
    tensor([0., 1.])
    """
    check_mode(mode)
    if mode == "exact":
        # `+ 0 * x` keeps the result in the graph, so the exact derivative (zero) flows back
        # instead of an error about tensors that do not require grad.
        return (x > 0).to(x.dtype) + 0 * x
    width_tensor = _as_width(width, x)
    if mode == "smooth":
        return _smooth_step(x, width_tensor)
    result: Tensor = _StraightThroughStep.apply(x, width_tensor)
    return result


def positive_part(x: Tensor, width: Tensor | float, mode: GradientMode = "smooth") -> Tensor:
    """``max(x, 0)`` with a chosen gradient (the smooth surrogate is ``width * softplus(x/width)``).

    Args:
        x: Any tensor (e.g. supersaturation in kg kg-1).
        width: Smoothing scale in the units of ``x`` (positive).
        mode: ``"exact"``, ``"smooth"`` or ``"straight_through"``.

    Returns:
        Tensor of the shape of ``x``, non-negative.

    >>> import torch
    >>> positive_part(torch.tensor([-1.0, 2.0]), 0.1, mode="exact")
    tensor([0., 2.])
    """
    check_mode(mode)
    if mode == "exact":
        return torch.clamp(x, min=0.0)
    width_tensor = _as_width(width, x)
    if mode == "smooth":
        # logaddexp rather than F.softplus, whose linear cut-over at x/width = 20 is not smooth.
        return width_tensor * torch.logaddexp(x / width_tensor, torch.zeros_like(x))
    result: Tensor = _StraightThroughPositivePart.apply(x, width_tensor)
    return result


__all__ = ["GRADIENT_MODES", "GradientMode", "check_mode", "positive_part", "step"]
