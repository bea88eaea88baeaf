"""A NumPy "legacy" column scheme shared by the examples: gray longwave emission to space.

The function stands in for compiled code that autograd cannot see (a Fortran radiation scheme):
it takes and returns NumPy arrays. Each layer ``k`` of a column emits ``(1 - t_k) σ T_k⁴`` and the
layers above transmit it with ``prod_{j<k} t_j``, so the outgoing longwave radiation is

    OLR = Σ_k (1 - t_k) σ T_k⁴ Π_{j<k} t_j + σ T_s⁴ Π_j t_j,

with layer transmissivity ``t_k = exp(-τ δ_k)`` for a column optical depth ``τ`` split into
fractions ``δ_k``. Derivatives derived by hand are in :func:`olr_gradients`; the exact reference
for every example is PyTorch autograd through :func:`outgoing_longwave_torch`, the same formula
written in torch (independent of both the finite differences and the hand derivation).
"""

from __future__ import annotations

import numpy as np
import torch

SIGMA = 5.670374419e-8  # W m-2 K-4, CODATA 2018
LEVELS = 10
FRACTIONS = np.linspace(0.5, 1.5, LEVELS) / np.linspace(0.5, 1.5, LEVELS).sum()


def outgoing_longwave(temperature: np.ndarray, optical_depth: np.ndarray) -> np.ndarray:
    """OLR (W m-2) of columns ``(column, level)`` (top first; last level above the surface).

    The surface is taken 2 K warmer than the lowest layer. ``optical_depth`` is a scalar.
    Returns ``(column, 1)`` so that the column structure ``(..., L) -> (..., M)`` applies.
    """
    transmissivity = np.exp(-optical_depth * FRACTIONS)
    above = np.concatenate([[1.0], np.cumprod(transmissivity)[:-1]])
    emission = (1 - transmissivity) * SIGMA * temperature**4 * above
    surface = SIGMA * (temperature[..., -1] + 2.0) ** 4 * np.prod(transmissivity)
    return (emission.sum(axis=-1) + surface)[..., None]


def olr_gradients(temperature: np.ndarray, optical_depth: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact dOLR/dT ``(column, level)`` and dOLR/dτ ``(column,)``, derived by hand."""
    transmissivity = np.exp(-optical_depth * FRACTIONS)
    above = np.concatenate([[1.0], np.cumprod(transmissivity)[:-1]])
    total = np.prod(transmissivity)
    d_temperature = 4 * (1 - transmissivity) * SIGMA * temperature**3 * above
    d_temperature[..., -1] += 4 * SIGMA * (temperature[..., -1] + 2.0) ** 3 * total
    # d t_k/dτ = -δ_k t_k; d above_k/dτ = -above_k Σ_{j<k} δ_j; d total/dτ = -total Σ_j δ_j
    cumulative = np.concatenate([[0.0], np.cumsum(FRACTIONS)[:-1]])
    planck = SIGMA * temperature**4
    d_emission = planck * (
        FRACTIONS * transmissivity * above - (1 - transmissivity) * above * cumulative
    )
    d_surface = -SIGMA * (temperature[..., -1] + 2.0) ** 4 * total * FRACTIONS.sum()
    return d_temperature, d_emission.sum(axis=-1) + d_surface


def outgoing_longwave_torch(temperature: torch.Tensor, optical_depth: torch.Tensor) -> torch.Tensor:
    """:func:`outgoing_longwave` in torch, for exact reference gradients by autograd."""
    fractions = torch.as_tensor(FRACTIONS, dtype=temperature.dtype)
    transmissivity = torch.exp(-optical_depth * fractions)
    above = torch.cat(
        [torch.ones(1, dtype=temperature.dtype), torch.cumprod(transmissivity, 0)[:-1]]
    )
    emission = (1 - transmissivity) * SIGMA * temperature**4 * above
    surface = SIGMA * (temperature[..., -1] + 2.0) ** 4 * torch.prod(transmissivity)
    return (emission.sum(dim=-1) + surface)[..., None]


def exact_gradients(temperature: np.ndarray, optical_depth: float) -> tuple[np.ndarray, float]:
    """d(sum of OLR)/dT and d(sum of OLR)/dτ by autograd through the torch twin."""
    t = torch.tensor(temperature, requires_grad=True)
    tau = torch.tensor(optical_depth, dtype=torch.float64, requires_grad=True)
    outgoing_longwave_torch(t, tau).sum().backward()
    return t.grad.numpy(), float(tau.grad)


def sample_columns(columns: int, seed: int = 0) -> np.ndarray:
    """Temperature profiles (K), warming downward from about 210 K to about 300 K."""
    rng = np.random.default_rng(seed)
    base = np.linspace(210.0, 295.0, LEVELS)
    return base + rng.normal(0.0, 3.0, size=(columns, LEVELS))
