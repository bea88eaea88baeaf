"""The linear-Gaussian inverse problem the inference tests check against (analytic posterior)."""

from __future__ import annotations

import torch

DTYPE = torch.float64


def linear_gaussian(seed: int = 0) -> dict[str, torch.Tensor]:
    """G(u) = A u with p = 3, d = 10, a correlated Gaussian prior and whitened noise.

    Returns ``A``, ``m0``, ``C0``, ``C0inv``, ``y`` and the posterior ``mean`` and ``cov``.
    """
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(10, 3, generator=g, dtype=DTYPE)
    m0 = torch.tensor([0.5, -1.0, 2.0], dtype=DTYPE)
    root = torch.randn(3, 3, generator=g, dtype=DTYPE)
    c0 = root @ root.T + 0.5 * torch.eye(3, dtype=DTYPE)
    u_true = torch.randn(3, generator=g, dtype=DTYPE)
    y = a @ u_true + torch.randn(10, generator=g, dtype=DTYPE)
    c0_inv = torch.linalg.inv(c0)
    cov = torch.linalg.inv(a.T @ a + c0_inv)
    mean = cov @ (a.T @ y + c0_inv @ m0)
    return {"A": a, "m0": m0, "C0": c0, "C0inv": c0_inv, "y": y, "cov": cov, "mean": mean}
