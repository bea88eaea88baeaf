"""Making code differentiable (external callables, threshold surrogates) and verifying gradients."""

from __future__ import annotations

from climgrad.autograd.smooth import GradientMode, positive_part, step

__all__ = ["GradientMode", "positive_part", "step"]
