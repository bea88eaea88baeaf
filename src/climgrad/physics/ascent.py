"""Prescribed large-scale ascent: adiabatic cooling of the tropical tropopause layer.

In the tropics the layer between the top of deep convection (about 200 hPa) and the lower
stratosphere rises slowly, a few 0.1 mm s-1 (the upward branch of the Brewer–Dobson circulation;
Fueglistaler et al. 2009, Rev. Geophys. 47, RG1004, §3): the rising air cools adiabatically,
balancing the radiative heating that would otherwise hold the layer 10-20 K warmer. A single
column without this circulation has a tropopause that is too warm. With upward velocity
``w(p) = w_0 s(p)`` (m s-1) and pressure velocity ``ω = -ρ g w``, ``ρ = p / (R_d T)``, the
temperature tendency of vertical advection plus adiabatic expansion is

.. math::

    \\frac{\\partial T}{\\partial t} = -ω\\left(\\frac{\\partial T}{\\partial p}
        - \\frac{κ T}{p}\\right)
    = \\frac{g\\, w}{R_d}\\left(\\frac{\\partial \\ln T}{\\partial \\ln p} - κ\\right),
    \\qquad κ = R_d / c_p,

(e.g. Holton & Hakim 2013, §2.7.3, thermodynamic equation in pressure coordinates): zero on a
dry adiabat, cooling where the column is more stable than it. ``∂ ln T/∂ ln p`` is taken by
central differences between neighbouring layers (one-sided at the top and bottom). The ascent is
confined to the tropopause layer and above by ``s(p) = logistic((p_b - p)/Δ)`` (base ``p_b``,
default 200 hPa, width ``Δ``, 20 hPa).

Regime: a prescribed, steady circulation acting on one column (its energy is exported sideways:
the column then has a net energy loss at the top of the atmosphere equal to the column integral
of the cooling, a few W m-2); not a prediction of the circulation. Below ``p_b`` the vertical
motion is left to convection.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from climgrad.constants import gas_constant_dry_air, gravity, heat_capacity_dry_air
from climgrad.physics.process import Process
from climgrad.typing import Diagnostics, State, Tendencies
from climgrad.validation import (
    check_last_dimension,
    check_positive,
    check_pressure_levels,
    check_temperature_tensor,
)

__all__ = [
    "TropopauseUpwelling",
    "ascent_kernel",
    "ascent_profile",
    "ascent_tendency",
    "log_slope_matrix",
]

_KAPPA = float(gas_constant_dry_air) / float(heat_capacity_dry_air)
_FACTOR = float(gravity) / float(gas_constant_dry_air)  # K m-1


def log_slope_matrix(layer_pressure: Tensor) -> Tensor:
    """``M`` with ``(M ln T)_k = ∂ ln T/∂ ln p`` at layer ``k``, ``(level, level)``.

    Central differences ``(ln T_{k+1} - ln T_{k-1}) / (ln p_{k+1} - ln p_{k-1})`` inside, one-sided
    at the first and last layers (at least 2 layers).
    """
    log_pressure = torch.log(layer_pressure)
    levels = layer_pressure.shape[-1]
    matrix = torch.zeros(levels, levels, dtype=layer_pressure.dtype, device=layer_pressure.device)
    for k in range(levels):
        lower, upper = max(k - 1, 0), min(k + 1, levels - 1)
        span = log_pressure[upper] - log_pressure[lower]
        matrix[k, upper] += 1.0 / span
        matrix[k, lower] -= 1.0 / span
    return matrix


def ascent_profile(layer_pressure: Tensor, base_pressure: float, width: float) -> Tensor:
    """``s(p) = logistic((p_b - p) / Δ)``: 1 above the base of the ascent, 0 well below it."""
    return torch.sigmoid((base_pressure - layer_pressure) / width)


def ascent_kernel(temperature: Tensor, slope: Tensor, velocity: Tensor) -> Tensor:
    """``(g w / R_d)(M ln T - κ)`` in plain torch (reference kernel).

    Args:
        temperature: ``(..., level)`` in K.
        slope: :func:`log_slope_matrix`, ``(level, level)`` in 1.
        velocity: ``w`` per layer, ``(level,)`` in m s-1.

    Returns:
        Tendency ``(..., level)`` in K s-1.
    """
    gradient = torch.log(temperature) @ slope.T
    return _FACTOR * velocity * (gradient - _KAPPA)


class _AscentFunction(torch.autograd.Function):
    """The ascent tendency with a hand-written backward and forward mode.

    With ``a = g w / R_d`` and ``D = M ln T``: ``C = a (D - κ)``, ``∂C/∂T = diag(a) M diag(1/T)``
    and ``∂C/∂w = g (D - κ) / R_d``; the backward is ``∂ℓ/∂T = (Mᵀ (a ⊙ G)) / T`` and
    ``∂ℓ/∂w = Σ_columns G (g/R_d)(D - κ)``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(temperature: Tensor, slope: Tensor, velocity: Tensor) -> tuple[Tensor, Tensor]:
        excess = torch.log(temperature) @ slope.T - _KAPPA
        return _FACTOR * velocity * excess, excess

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        temperature, slope, velocity = inputs
        _, excess = output
        ctx.mark_non_differentiable(excess)
        ctx.save_for_backward(temperature, slope, velocity, excess)
        ctx.save_for_forward(temperature, slope, velocity, excess)

    @staticmethod
    def jvp(
        ctx: Any, tangent_temperature: Tensor | None, _slope: Any, tangent_velocity: Tensor | None
    ) -> tuple[Tensor, None]:
        temperature, slope, velocity, excess = ctx.saved_tensors
        result = torch.zeros_like(excess)
        if tangent_temperature is not None:
            result = result + _FACTOR * velocity * ((tangent_temperature / temperature) @ slope.T)
        if tangent_velocity is not None:
            result = result + _FACTOR * tangent_velocity * excess
        return result, None

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: Any, grad_tendency: Tensor, _grad_excess: Tensor | None
    ) -> tuple[Tensor | None, None, Tensor | None]:
        temperature, slope, velocity, excess = ctx.saved_tensors
        grad_temperature = grad_velocity = None
        if ctx.needs_input_grad[0]:
            grad_temperature = ((_FACTOR * velocity * grad_tendency) @ slope) / temperature
        if ctx.needs_input_grad[2]:
            grad_velocity = (_FACTOR * grad_tendency * excess).sum_to_size(velocity.shape)
        return grad_temperature, None, grad_velocity


def ascent_tendency(
    temperature: Tensor,
    layer_pressure: Tensor,
    velocity: Tensor | float,
    *,
    base_pressure: float = 2.0e4,
    width: float = 2.0e3,
) -> Tensor:
    """Cooling by a prescribed ascent ``w_0 s(p)`` (module docstring), in K s-1.

    Args:
        temperature: ``(..., level)`` in K, top first.
        layer_pressure: ``(level,)`` in Pa, increasing downward.
        velocity: ``w_0`` in m s-1 (scalar; about 3e-4 in the tropical tropopause layer).
        base_pressure: ``p_b`` in Pa, the base of the ascending layer.
        width: ``Δ`` in Pa, the width of its smooth base.

    Returns:
        ``(..., level)`` in K s-1 (negative where the column is more stable than a dry adiabat).

    >>> import torch
    >>> p = torch.tensor([5.0e3, 1.0e4, 1.5e4], dtype=torch.float64)
    >>> t = torch.tensor([210.0, 195.0, 205.0], dtype=torch.float64)
    >>> c = ascent_tendency(t, p, 3.0e-4)
    >>> round(float(c[0] * 86400), 2)
    -0.35
    """
    check_temperature_tensor("temperature", temperature, minimum=0.0)
    check_last_dimension(
        "layer_pressure", layer_pressure, temperature.shape[-1], "layers (those of `temperature`)"
    )
    check_pressure_levels("layer_pressure", layer_pressure)
    check_positive("width", width, "Pa", "20 hPa (2000 Pa) is the default.")
    w0 = torch.as_tensor(velocity, dtype=temperature.dtype, device=temperature.device)
    if w0.dim():
        raise ValueError("`velocity` must be a scalar (m s-1); the profile is s(p) times it.")
    pressure = layer_pressure.to(temperature)
    profile = w0 * ascent_profile(pressure, base_pressure, width)
    result: Tensor = _AscentFunction.apply(temperature, log_slope_matrix(pressure), profile)[0]
    return result


class TropopauseUpwelling(Process):
    """Prescribed ascent of the tropical tropopause layer as a process (module docstring).

    Reads ``air_temperature`` ``(column, level)`` in K. Tendency: ``air_temperature`` (K s-1).
    Diagnostics: ``ascent_heating_rate`` (K s-1, negative: cooling).

    Learnable parameter: ``upwelling_velocity`` ``w_0`` (m s-1).

    Args:
        layer_pressure: ``(level,)`` in Pa, increasing downward (at least 2 layers).
        upwelling_velocity: Initial ``w_0`` in m s-1 (3e-4: the Brewer–Dobson upwelling near
            100 hPa).
        base_pressure: ``p_b`` in Pa (fixed).
        width: ``Δ`` in Pa (fixed).
    """

    inputs = ("air_temperature",)
    slope: Tensor
    profile: Tensor

    def __init__(
        self,
        layer_pressure: Tensor,
        upwelling_velocity: float = 3.0e-4,
        base_pressure: float = 2.0e4,
        width: float = 2.0e3,
    ) -> None:
        super().__init__()
        check_positive("width", width, "Pa", "20 hPa (2000 Pa) is the default.")
        check_pressure_levels("layer_pressure", layer_pressure)
        if layer_pressure.shape[-1] < 2:
            raise ValueError("TropopauseUpwelling needs at least 2 layers.")
        pressure = torch.as_tensor(layer_pressure)
        self.register_buffer("slope", log_slope_matrix(pressure))
        self.register_buffer("profile", ascent_profile(pressure, base_pressure, width))
        #: w_0, upward velocity of the tropopause layer in m s-1.
        self.upwelling_velocity = nn.Parameter(torch.tensor(float(upwelling_velocity)))

    def forward(self, state: State) -> tuple[Tendencies, Diagnostics]:
        (temperature,) = self.require(state)
        velocity = self.upwelling_velocity.to(temperature.dtype) * self.profile.to(temperature)
        tendency: Tensor = _AscentFunction.apply(temperature, self.slope.to(temperature), velocity)[
            0
        ]
        return {"air_temperature": tendency}, {"ascent_heating_rate": tendency}
