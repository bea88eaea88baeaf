"""Example (a): differentiate a NumPy column scheme by central differences.

    python scripts/examples/a_central_differences.py

The scheme (``_schemes.outgoing_longwave``) is NumPy in, NumPy out, as a compiled radiation code
would be. ``external(..., structure="column")`` makes it a torch op; its backward perturbs one
level in every column at once, so it costs 2 L calls + 2 for the scalar optical depth, however
many columns there are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _schemes import LEVELS, exact_gradients, outgoing_longwave, sample_columns

from climgrad.autograd import external


def main(columns: int = 100) -> dict[str, float]:
    olr = external(outgoing_longwave, structure="column")
    temperature = torch.tensor(sample_columns(columns), requires_grad=True)
    optical_depth = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)

    olr(temperature, optical_depth).sum().backward()

    exact_t, exact_tau = exact_gradients(temperature.detach().numpy(), 2.0)
    error_t = float(abs(temperature.grad.numpy() - exact_t).max() / abs(exact_t).max())
    error_tau = abs(float(optical_depth.grad) - exact_tau) / abs(exact_tau)
    print(f"(a) central differences, {columns} columns x {LEVELS} levels, float64")
    print(f"    dOLR/dT   max relative error {error_t:.1e}")
    print(f"    dOLR/dtau relative error     {error_tau:.1e}")
    print(f"    calls: forward {olr.calls.forward}, backward {olr.calls.backward} (2L + 2)")
    return {"temperature": error_t, "optical_depth": error_tau, "calls": olr.calls.backward}


if __name__ == "__main__":
    main()
