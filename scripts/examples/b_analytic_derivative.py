"""Example (b): the same scheme with its analytic derivative supplied (``jacobian=``).

    python scripts/examples/b_analytic_derivative.py

When a scheme comes with derivative code (a tangent-linear or adjoint model, or hand-derived
formulas), pass it and the gradient is exact to rounding, with no extra calls of the scheme.
The printout compares its error with that of central differences on the same columns.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _schemes import (
    exact_gradients,
    olr_gradients,
    outgoing_longwave,
    sample_columns,
)

from climgrad.autograd import external


def olr_jacobian(temperature: np.ndarray, optical_depth: np.ndarray) -> tuple:
    """Column-structured blocks: ``(column, M=1, L)`` for the profile, ``(column, 1)`` for τ."""
    d_temperature, d_tau = olr_gradients(temperature, float(optical_depth))
    return ((d_temperature[:, None, :], d_tau[:, None]),)


def gradient_errors(olr, columns: int) -> tuple[float, float]:
    temperature = torch.tensor(sample_columns(columns, seed=1), requires_grad=True)
    optical_depth = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    olr(temperature, optical_depth).sum().backward()
    exact_t, exact_tau = exact_gradients(temperature.detach().numpy(), 2.0)
    error_t = float(abs(temperature.grad.numpy() - exact_t).max() / abs(exact_t).max())
    error_tau = abs(float(optical_depth.grad) - exact_tau) / abs(exact_tau)
    return error_t, error_tau


def main(columns: int = 100) -> dict[str, float]:
    analytic = external(outgoing_longwave, structure="column", jacobian=olr_jacobian)
    differences = external(outgoing_longwave, structure="column")
    analytic_errors = gradient_errors(analytic, columns)
    fd_errors = gradient_errors(differences, columns)
    print(f"(b) analytic Jacobian vs central differences, {columns} columns, float64")
    print(f"    dOLR/dT   error: analytic {analytic_errors[0]:.1e}, differences {fd_errors[0]:.1e}")
    print(f"    dOLR/dtau error: analytic {analytic_errors[1]:.1e}, differences {fd_errors[1]:.1e}")
    print(
        f"    scheme calls in backward: analytic {analytic.calls.backward}, "
        f"differences {differences.calls.backward}"
    )
    return {
        "analytic": max(analytic_errors),
        "differences": max(fd_errors),
        "analytic_calls": analytic.calls.backward,
    }


if __name__ == "__main__":
    main()
