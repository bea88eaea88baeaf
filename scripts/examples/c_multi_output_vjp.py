"""Example (c): a multi-output scheme whose backward is a vector-Jacobian product (``vjp=``).

    python scripts/examples/c_multi_output_vjp.py

The scheme returns two outputs, the blackbody emission ``B = σT⁴`` (W m-2) and its temperature
derivative ``dB/dT = 4σT³`` (W m-2 K-1), as a longwave code returning fluxes and Jacobians would.
Its adjoint is given as one VJP call: for cotangents ``(u, v)`` the input cotangent is
``u 4σT³ + v 12σT²``. A downstream loss uses both outputs; the gradient is checked against
PyTorch autograd on the same formulas and against central differences from the same calls.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _schemes import SIGMA

from climgrad.autograd import external


def planck(temperature: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return SIGMA * temperature**4, 4 * SIGMA * temperature**3


def planck_vjp(primals: tuple, cotangents: tuple) -> tuple[np.ndarray]:
    (temperature,) = primals
    emission_bar, slope_bar = cotangents
    return (emission_bar * 4 * SIGMA * temperature**3 + slope_bar * 12 * SIGMA * temperature**2,)


def loss(emission: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    # A feedback-like diagnostic: emission weighted by the local Planck feedback.
    return (emission * slope).mean() / 1e3


def main(points: int = 1000) -> dict[str, float]:
    temperature = torch.linspace(200.0, 320.0, points, dtype=torch.float64)
    reference_input = temperature.clone().requires_grad_()
    (exact,) = torch.autograd.grad(
        loss(SIGMA * reference_input**4, 4 * SIGMA * reference_input**3), reference_input
    )
    errors = {}
    for label, scheme in (
        ("vjp", external(planck, structure="elementwise", vjp=planck_vjp)),
        ("differences", external(planck, structure="elementwise")),
    ):
        x = temperature.clone().requires_grad_()
        (grad,) = torch.autograd.grad(loss(*scheme(x)), x)
        errors[label] = float((grad - exact).abs().max() / exact.abs().max())
        errors[f"{label}_calls"] = scheme.calls.backward
    print(f"(c) two-output scheme, {points} temperatures, float64")
    print(f"    gradient error with vjp=: {errors['vjp']:.1e} (scheme calls in backward: 0)")
    print(
        f"    with central differences: {errors['differences']:.1e} "
        f"({errors['differences_calls']} calls give both outputs' derivatives)"
    )
    return errors


if __name__ == "__main__":
    main()
