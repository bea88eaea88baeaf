"""Gradient-verification demo of the autograd bridge: the main job until calibration lands.

    scripts/run.sh            # sets up .venv, then runs this file

1. Runs examples (a) central differences, (b) analytic Jacobian, (c) multi-output VJP.
2. Shows that a column-structured backward costs 2 L + 2 calls for 1, 100 and 10,000 columns.
3. Wraps the NumPy scheme in an ``nn.Module`` with a learnable optical depth and runs
   ``check_gradients`` (gradcheck, Taylor, adjoint, liveness) on it, in float64.
4. Reports the accuracy of float32 central differences, with and without ``fd_dtype=float64``.

Exits with status 1 if any check fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import a_central_differences
import b_analytic_derivative
import c_multi_output_vjp
from _schemes import LEVELS, exact_gradients, outgoing_longwave, sample_columns

from climgrad.autograd import check_gradients, external


class GrayColumn(nn.Module):
    """OLR of columns from the NumPy scheme, with the optical depth as a learnable parameter."""

    def __init__(self, optical_depth: float = 2.0) -> None:
        super().__init__()
        self.optical_depth = nn.Parameter(torch.tensor(optical_depth, dtype=torch.float64))
        self.scheme = external(outgoing_longwave, structure="column")

    def forward(self, temperature: torch.Tensor) -> torch.Tensor:
        return self.scheme(temperature, self.optical_depth)


def call_counts() -> bool:
    print("\nBackward cost with structure='column' (central differences):")
    print(f"    {'columns':>8}  {'forward calls':>13}  {'backward calls':>14}  expected 2L+2")
    ok = True
    for columns in (1, 100, 10_000):
        model = GrayColumn()
        temperature = torch.tensor(sample_columns(columns), requires_grad=True)
        model(temperature).sum().backward()
        calls = model.scheme.calls
        ok &= calls.backward == 2 * LEVELS + 2
        print(f"    {columns:>8}  {calls.forward:>13}  {calls.backward:>14}  {2 * LEVELS + 2}")
    return ok


def float32_accuracy() -> None:
    temperature64 = sample_columns(200, seed=3)
    exact, _ = exact_gradients(temperature64, 2.0)
    print("\nfloat32 inputs (central differences, relative max error of dOLR/dT):")
    for label, options in (
        ("float32 calls", {}),
        ("fd_dtype=float64", {"fd_dtype": torch.float64}),
    ):
        model = GrayColumn()
        model.scheme = external(outgoing_longwave, structure="column", **options)
        model.float()
        temperature = torch.tensor(temperature64, dtype=torch.float32, requires_grad=True)
        model(temperature).sum().backward()
        error = abs(temperature.grad.double().numpy() - exact).max() / abs(exact).max()
        print(f"    {label:<17} {error:.1e}")


def main() -> int:
    print("climgrad autograd bridge: gradient verification demo\n")
    results = [
        a_central_differences.main()["temperature"] < 1e-7,
        b_analytic_derivative.main()["analytic"] < 1e-12,
        c_multi_output_vjp.main()["vjp"] < 1e-12,
        call_counts(),
    ]
    print("\ncheck_gradients on GrayColumn (4 columns, float64):")
    temperature = torch.tensor(sample_columns(4), requires_grad=True)
    report = check_gradients(GrayColumn(), (temperature,), names=["temperature"])
    print(report)
    results.append(report.passed)
    float32_accuracy()
    passed = all(results)
    print("\nall checks passed" if passed else "\nSOME CHECKS FAILED")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
