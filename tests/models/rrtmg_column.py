"""Shared set-up of the RRTMG column tests: the Darwin state, an equilibrium loss, Taylor rates."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from climgrad.data.afgl import read_afgl
from climgrad.models.column import SingleColumnModel
from climgrad.physics.insolation import daily_mean_cosine_zenith, daily_mean_insolation

F64 = torch.float64
AFGL = Path(__file__).resolve().parents[2] / "data/single_column/afgl_standard_atmospheres"
TROPICAL = read_afgl(AFGL / "tropical.dat")


def darwin_state(model: SingleColumnModel) -> dict[str, torch.Tensor]:
    """B2's initial profile under Darwin's daily-mean insolation on 22 January (12.4 S)."""
    latitude = torch.tensor([-12.4], dtype=F64)
    day = torch.tensor([22.0], dtype=F64)
    return model.initial_state(
        torch.tensor([300.0], dtype=F64),
        daily_mean_insolation(latitude, day),
        cosine_solar_zenith_angle=daily_mean_cosine_zenith(latitude, day),
    )


def solve(model: SingleColumnModel, spin_up_steps: int) -> dict[str, torch.Tensor]:
    """The Darwin state with the equilibrium's (detached) temperatures."""
    state = darwin_state(model)
    with torch.no_grad():
        equilibrium = model.equilibrium(state, spin_up_steps=spin_up_steps)
    return {**state, **{k: equilibrium[k].detach() for k in equilibrium}}


def equilibrium_loss(model: SingleColumnModel, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """A weighted mean of the equilibrium profile plus T_s, warm-started from ``state``."""
    equilibrium = model.equilibrium(state, spin_up_steps=0)
    weights = torch.linspace(0.5, 1.5, model.levels, dtype=F64)
    return (weights * equilibrium["air_temperature"][0]).mean() + equilibrium[
        "surface_temperature"
    ][0]


def equilibrium_taylor_rates(
    model: SingleColumnModel, state: dict[str, torch.Tensor], scales: Sequence[float]
) -> tuple[list[float], list[float]]:
    """Remainders and rates of ``equilibrium_loss`` along ``scales`` (one per learnable raw
    parameter) at steps 0.16 to 0.02 (RRTMG's staircase needs steps well above 1e-5)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    direction = [torch.full_like(p, s) for p, s in zip(parameters, scales, strict=True)]
    base = [p.detach().clone() for p in parameters]

    def loss_at(h: float) -> torch.Tensor:
        with torch.no_grad():
            for p, b, d in zip(parameters, base, direction):
                p.copy_(b + h * d)
        return equilibrium_loss(model, state)

    try:
        model.zero_grad()
        value = loss_at(0.0)
        value.backward()
        slope = sum(float((p.grad * d).sum()) for p, d in zip(parameters, direction))
        steps = (0.16, 0.08, 0.04, 0.02)
        remainders = [abs(float(loss_at(h)) - float(value) - h * slope) for h in steps]
    finally:
        loss_at(0.0)
    rates = [math.log2(a / b) for a, b in itertools.pairwise(remainders)]
    return remainders, rates


def gradients_and_central_differences(
    model: SingleColumnModel, state: dict[str, torch.Tensor], step: float = 2e-2
) -> dict[str, tuple[float, float]]:
    """``name -> (implicit gradient, central difference)`` of ``equilibrium_loss`` per learnable
    raw parameter; ``step`` in raw (unconstrained) units, well above RRTMG's 1e-5 staircase."""
    model.zero_grad()
    equilibrium_loss(model, state).backward()
    result = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        assert parameter.grad is not None, name
        with torch.no_grad():
            parameter += step
            plus = float(equilibrium_loss(model, state))
            parameter -= 2 * step
            minus = float(equilibrium_loss(model, state))
            parameter += step
        result[name] = (float(parameter.grad), (plus - minus) / (2 * step))
    return result
