"""Moist thermodynamics: saturation, humidity conversions and large-scale condensation.

Saturation vapour pressure over liquid water follows Bolton (1980, Mon. Wea. Rev. 108, 1046-1053,
eq. 10),

.. math:: e_s(T) = 611.2 \\exp\\left(\\frac{17.67\\,(T - 273.15)}{T - 29.65}\\right)\\ \\text{Pa},

accurate to 0.1 % between -35 and 35 degC (a fit to Wexler's values; it is still usable, with
larger error, outside that range, but the formula is singular at T = 29.65 K). The alternative
``formula="clausius_clapeyron"`` integrates the Clausius-Clapeyron equation with a constant latent
heat, :math:`e_s = 611.2 \\exp[(L/R_v)(1/273.15 - 1/T)]`, which is exact thermodynamics for an
idealised constant ``L`` and within 3 % of Bolton between -20 and 30 degC.

Humidity conversions use the exact relations between specific humidity ``q`` (kg kg-1), vapour
pressure ``e`` and pressure ``p`` (Pa), with ``ε = R_d / R_v``:
:math:`e = q p / (ε + (1 - ε) q)` and :math:`q = ε e / (p - (1 - ε) e)`. Relative humidity is
``e / e_s(T)`` (WMO definition over liquid water, as a fraction, not per cent).

Large-scale condensation removes vapour in excess of a critical relative humidity ``RH_c`` and
releases its latent heat (see :func:`condensation_rate` and :class:`LargeScaleCondensation`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from climgrad.autograd.smooth import GradientMode, check_mode, positive_part
from climgrad.constants import (
    Constant,
    epsilon_water_vapour,
    freezing_point,
    gas_constant_dry_air,
    gas_constant_water_vapour,
    heat_capacity_dry_air,
    latent_heat_vaporization,
)
from climgrad.physics.process import Process
from climgrad.typing import Diagnostics, State, Tendencies
from climgrad.validation import (
    HUMIDITY_HINT,
    PASCAL_HINT,
    as_tensors,
    check_choice,
    check_count,
    check_positive,
    check_range,
    check_saturation_defined,
    check_temperature,
)

__all__ = [
    "CONDENSATION_METHODS",
    "SATURATION_FORMULAS",
    "CondensationMethod",
    "FixedRelativeHumidity",
    "LargeScaleCondensation",
    "SaturationFormula",
    "air_density",
    "condensation_rate",
    "log_saturation_vapour_pressure_derivative",
    "relative_humidity",
    "saturation_adjustment",
    "saturation_specific_humidity",
    "saturation_vapour_pressure",
    "specific_humidity_from_relative_humidity",
    "specific_humidity_from_vapour_pressure",
    "vapour_pressure_from_specific_humidity",
    "virtual_temperature",
]

SaturationFormula = Literal["bolton", "clausius_clapeyron"]
SATURATION_FORMULAS: tuple[str, ...] = ("bolton", "clausius_clapeyron")
CondensationMethod = Literal["relaxation", "adjustment"]
CONDENSATION_METHODS: tuple[str, ...] = ("relaxation", "adjustment")

_BOLTON = "Bolton (1980), Mon. Wea. Rev. 108, 1046-1053, eq. 10"
saturation_vapour_pressure_at_freezing = Constant(
    611.2, "Pa", _BOLTON, "saturation vapour pressure over liquid water at 0 degC"
)
bolton_coefficient = Constant(17.67, "1", _BOLTON, "coefficient a in e_s = e0 exp(a t / (t + b))")
bolton_offset = Constant(29.65, "K", _BOLTON, "singular temperature, 273.15 K - 243.5 K")


# --------------------------------------------------------------------------------------------------
# Saturation vapour pressure
# --------------------------------------------------------------------------------------------------


def saturation_vapour_pressure_kernel(temperature: Tensor, formula: str = "bolton") -> Tensor:
    """Reference kernel of :func:`saturation_vapour_pressure` in plain torch."""
    if formula == "bolton":
        celsius = temperature - freezing_point
        exponent = bolton_coefficient * celsius / (temperature - bolton_offset)
    else:
        ratio = latent_heat_vaporization / gas_constant_water_vapour
        exponent = ratio * (1.0 / freezing_point - 1.0 / temperature)
    return saturation_vapour_pressure_at_freezing * torch.exp(exponent)


def log_saturation_vapour_pressure_derivative(
    temperature: Tensor, formula: str = "bolton"
) -> Tensor:
    """``d ln e_s / dT`` in K-1: Bolton ``17.67 * 243.5 / (T - 29.65)**2``, CC ``L / (R_v T**2)``.

    >>> import torch
    >>> round(float(log_saturation_vapour_pressure_derivative(torch.tensor(288.0))), 4)
    0.0645
    """
    if formula == "bolton":
        return (
            bolton_coefficient
            * (freezing_point - bolton_offset)
            / (temperature - bolton_offset) ** 2
        )
    return latent_heat_vaporization / (gas_constant_water_vapour * temperature**2)


class _SaturationVapourPressureFunction(torch.autograd.Function):
    """e_s(T) with the analytic derivative ``e_s * d ln e_s / dT`` (saves T and e_s only)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(temperature: Tensor, formula: str) -> Tensor:
        return saturation_vapour_pressure_kernel(temperature, formula)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        temperature, formula = inputs
        ctx.formula = formula
        ctx.save_for_backward(temperature, output)

    @staticmethod
    def backward(ctx: Any, grad_pressure: Tensor) -> tuple[Tensor | None, None]:
        temperature, pressure = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None
        slope = log_saturation_vapour_pressure_derivative(temperature, ctx.formula)
        return grad_pressure * pressure * slope, None


def saturation_vapour_pressure(
    temperature: Tensor | float, *, formula: SaturationFormula = "bolton"
) -> Tensor:
    """Saturation vapour pressure over liquid water.

    Bolton (1980, eq. 10): :math:`e_s = 611.2 \\exp(17.67 (T - 273.15) / (T - 29.65))` Pa, within
    0.1 % for -35 to 35 degC (temperatures below 100 K are rejected as likely degC); or, with
    ``formula="clausius_clapeyron"``, the constant-``L`` integral
    :math:`611.2 \\exp[(L/R_v)(1/273.15 - 1/T)]`. Its temperature derivative is analytic (see
    :func:`log_saturation_vapour_pressure_derivative`): about 6.5 % per K near 288 K.

    Args:
        temperature: Temperature in K, any shape.
        formula: ``"bolton"`` (default) or ``"clausius_clapeyron"``.

    Returns:
        Saturation vapour pressure in Pa, the shape of ``temperature``.

    >>> import torch
    >>> saturation_vapour_pressure(torch.tensor([273.15, 303.15], dtype=torch.float64))
    tensor([ 611.2000, 4245.5754], dtype=torch.float64)
    """
    check_choice("formula", formula, SATURATION_FORMULAS)
    (temperature_tensor,) = as_tensors(temperature)
    check_temperature("temperature", temperature_tensor)
    result: Tensor = _SaturationVapourPressureFunction.apply(temperature_tensor, formula)
    return result


# --------------------------------------------------------------------------------------------------
# Humidity: conversions, saturation specific humidity, a fixed relative-humidity profile
# --------------------------------------------------------------------------------------------------


def vapour_pressure_from_specific_humidity(
    specific_humidity: Tensor, pressure: Tensor | float
) -> Tensor:
    """Vapour pressure ``e = q p / (ε + (1 - ε) q)`` in Pa, from ``q`` (kg kg-1) and ``p`` (Pa)."""
    return (
        specific_humidity
        * pressure
        / (epsilon_water_vapour + (1.0 - epsilon_water_vapour) * specific_humidity)
    )


def specific_humidity_from_vapour_pressure(
    vapour_pressure: Tensor, pressure: Tensor | float
) -> Tensor:
    """Specific humidity ``q = ε e / (p - (1 - ε) e)`` in kg kg-1, from ``e`` and ``p`` in Pa."""
    return (
        epsilon_water_vapour
        * vapour_pressure
        / (pressure - (1.0 - epsilon_water_vapour) * vapour_pressure)
    )


def saturation_specific_humidity_kernel(
    temperature: Tensor, pressure: Tensor, formula: str = "bolton"
) -> Tensor:
    """Reference kernel of :func:`saturation_specific_humidity` in plain torch."""
    return specific_humidity_from_vapour_pressure(
        saturation_vapour_pressure_kernel(temperature, formula), pressure
    )


def saturation_specific_humidity_derivatives(
    temperature: Tensor, pressure: Tensor, formula: str = "bolton"
) -> tuple[Tensor, Tensor, Tensor]:
    """Saturation specific humidity and its analytic partial derivatives.

    With :math:`D = p - (1 - ε) e_s`: :math:`q_s = ε e_s / D`,
    :math:`\\partial q_s / \\partial T = (ε p / D^2)\\, e_s\\, d\\ln e_s/dT` and
    :math:`\\partial q_s / \\partial p = -q_s / D`.

    Args:
        temperature: Temperature in K.
        pressure: Pressure in Pa, broadcastable with ``temperature``.
        formula: ``"bolton"`` or ``"clausius_clapeyron"``.

    Returns:
        ``(q_s, dq_s/dT, dq_s/dp)`` in kg kg-1, kg kg-1 K-1 and kg kg-1 Pa-1, broadcast shape.
    """
    vapour = saturation_vapour_pressure_kernel(temperature, formula)
    denominator = pressure - (1.0 - epsilon_water_vapour) * vapour
    saturation = epsilon_water_vapour * vapour / denominator
    d_temperature = (
        epsilon_water_vapour
        * pressure
        / denominator**2
        * vapour
        * log_saturation_vapour_pressure_derivative(temperature, formula)
    )
    d_pressure = -saturation / denominator
    return saturation, d_temperature, d_pressure


class _SaturationSpecificHumidityFunction(torch.autograd.Function):
    """q_s(T, p) with analytic partial derivatives, recomputed in the backward (saves T, p)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(temperature: Tensor, pressure: Tensor, formula: str) -> Tensor:
        return saturation_specific_humidity_kernel(temperature, pressure, formula)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        temperature, pressure, formula = inputs
        ctx.formula = formula
        ctx.save_for_backward(temperature, pressure)

    @staticmethod
    def backward(ctx: Any, grad_saturation: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        temperature, pressure = ctx.saved_tensors
        _, d_temperature, d_pressure = saturation_specific_humidity_derivatives(
            temperature, pressure, ctx.formula
        )
        grad_t = grad_p = None
        if ctx.needs_input_grad[0]:
            grad_t = (grad_saturation * d_temperature).sum_to_size(temperature.shape)
        if ctx.needs_input_grad[1]:
            grad_p = (grad_saturation * d_pressure).sum_to_size(pressure.shape)
        return grad_t, grad_p, None


def saturation_specific_humidity(
    temperature: Tensor | float,
    pressure: Tensor | float,
    *,
    formula: SaturationFormula = "bolton",
) -> Tensor:
    """Saturation specific humidity :math:`q_s = ε e_s(T) / (p - (1 - ε) e_s(T))`.

    Exact for an ideal mixture of dry air and vapour (e.g. Wallace & Hobbs 2006, ch. 3), with
    ``e_s`` from :func:`saturation_vapour_pressure`. Requires ``p > e_s(T)``.

    Args:
        temperature: Temperature in K.
        pressure: Total air pressure in Pa, broadcastable with ``temperature``.
        formula: ``"bolton"`` (default) or ``"clausius_clapeyron"``.

    Returns:
        Saturation specific humidity in kg kg-1, the broadcast shape.

    >>> import torch
    >>> round(float(saturation_specific_humidity(torch.tensor(288.15), 1.0e5)), 5)
    0.01067
    """
    check_choice("formula", formula, SATURATION_FORMULAS)
    temperature_tensor, pressure_tensor = as_tensors(temperature, pressure)
    check_temperature("temperature", temperature_tensor)
    check_positive("pressure", pressure_tensor, "Pa", PASCAL_HINT)
    result: Tensor = _SaturationSpecificHumidityFunction.apply(
        temperature_tensor, pressure_tensor, formula
    )
    check_saturation_defined(result)
    return result


def relative_humidity(
    specific_humidity: Tensor | float,
    temperature: Tensor | float,
    pressure: Tensor | float,
    *,
    formula: SaturationFormula = "bolton",
) -> Tensor:
    """Relative humidity ``e / e_s(T)`` (a fraction) from specific humidity.

    Args:
        specific_humidity: Specific humidity ``q`` in kg kg-1 (non-negative).
        temperature: Temperature in K.
        pressure: Total pressure in Pa.
        formula: Saturation formula, as in :func:`saturation_vapour_pressure`.

    Returns:
        Relative humidity (dimensionless, 1 at saturation), the broadcast shape.
    """
    q, t, p = as_tensors(specific_humidity, temperature, pressure)
    check_positive("specific_humidity", q, "kg kg-1", HUMIDITY_HINT, allow_zero=True)
    check_positive("pressure", p, "Pa", PASCAL_HINT)
    return vapour_pressure_from_specific_humidity(q, p) / saturation_vapour_pressure(
        t, formula=formula
    )


def specific_humidity_from_relative_humidity(
    relative_humidity: Tensor | float,
    temperature: Tensor | float,
    pressure: Tensor | float,
    *,
    formula: SaturationFormula = "bolton",
) -> Tensor:
    """Specific humidity from relative humidity: ``q = ε e / (p - (1 - ε) e)``, ``e = RH e_s(T)``.

    The inverse of :func:`relative_humidity`.

    Args:
        relative_humidity: Relative humidity as a fraction (divide per cent by 100).
        temperature: Temperature in K.
        pressure: Total pressure in Pa; must exceed ``RH * e_s(T)``.
        formula: Saturation formula, as in :func:`saturation_vapour_pressure`.

    Returns:
        Specific humidity in kg kg-1, the broadcast shape.
    """
    rh, t, p = as_tensors(relative_humidity, temperature, pressure)
    check_positive(
        "relative_humidity", rh, "1", "Relative humidity is a fraction.", allow_zero=True
    )
    check_positive("pressure", p, "Pa", PASCAL_HINT)
    vapour = rh * saturation_vapour_pressure(t, formula=formula)
    return specific_humidity_from_vapour_pressure(vapour, p)


def virtual_temperature(temperature: Tensor, specific_humidity: Tensor | float) -> Tensor:
    """Virtual temperature :math:`T_v = T (1 + (1/ε - 1) q)` in K (no condensate).

    Args:
        temperature: Temperature in K.
        specific_humidity: Specific humidity in kg kg-1.
    """
    return temperature * (1.0 + (1.0 / epsilon_water_vapour - 1.0) * specific_humidity)


def air_density(
    pressure: Tensor | float,
    temperature: Tensor | float,
    specific_humidity: Tensor | float = 0.0,
) -> Tensor:
    """Density of moist air from the ideal gas law, :math:`ρ = p / (R_d T_v)`, in kg m-3.

    Args:
        pressure: Pressure in Pa.
        temperature: Temperature in K.
        specific_humidity: Specific humidity in kg kg-1 (0 for dry air).

    >>> import torch
    >>> round(float(air_density(torch.tensor(1.0e5), 288.15)), 3)
    1.209
    """
    p, t, q = as_tensors(pressure, temperature, specific_humidity)
    check_positive("pressure", p, "Pa", PASCAL_HINT)
    check_temperature("temperature", t)
    return p / (gas_constant_dry_air * virtual_temperature(t, q))


class FixedRelativeHumidity(nn.Module):
    """Manabe & Wetherald's (1967) fixed relative humidity profile, for radiation that sees vapour.

    ``RH(p) = RH_s max((p/p_s - 0.02) / 0.98, 0)`` and ``q = max(RH(p) q_s(T, p), q_min)``, with
    ``q_s`` from Bolton's (1980) saturation vapour pressure and ``q_min = 3e-6`` kg kg-1 (their
    stratospheric mixing ratio). The vapour follows the temperature (water-vapour feedback at fixed
    relative humidity); ``RH_s`` (``surface_relative_humidity``, dimensionless, 0.77 in MW67) is a
    learnable parameter. Plain torch: autograd and forward mode (``torch.autograd.forward_ad``)
    differentiate it; the floor has zero derivative where it holds.

    Regime: a tropical or global-mean clear-sky column in which large-scale circulation and
    convection keep the relative humidity profile fixed (Manabe & Wetherald 1967, J. Atmos. Sci.
    24, 241); not a prediction of humidity.

    Args:
        surface_relative_humidity: ``RH_s``, in (0, 1].
        minimum_specific_humidity: ``q_min`` in kg kg-1 (>= 0).
    """

    def __init__(
        self, surface_relative_humidity: float = 0.77, minimum_specific_humidity: float = 3e-6
    ) -> None:
        super().__init__()
        check_range(
            "surface_relative_humidity",
            surface_relative_humidity,
            0.0,
            1.0,
            hint="Use a fraction such as 0.77.",
            include_lower=False,
        )
        check_positive(
            "minimum_specific_humidity",
            minimum_specific_humidity,
            "kg kg-1",
            HUMIDITY_HINT,
            allow_zero=True,
        )
        self.surface_relative_humidity = nn.Parameter(
            torch.tensor(float(surface_relative_humidity), dtype=torch.float64)
        )
        self.minimum_specific_humidity = float(minimum_specific_humidity)

    def forward(
        self, temperature: Tensor, pressure: Tensor, surface_pressure: Tensor | float
    ) -> Tensor:
        """Specific humidity (kg kg-1) of ``temperature`` (K) at ``pressure`` (Pa), same shape.

        Args:
            temperature: ``(..., level)`` in K.
            pressure: Layer pressure ``(level,)`` or ``(..., level)`` in Pa.
            surface_pressure: ``p_s`` in Pa (scalar or ``(..., 1)``).
        """
        shape = torch.clamp((pressure / surface_pressure - 0.02) / 0.98, min=0.0)
        humidity = self.surface_relative_humidity.to(temperature.dtype) * shape
        saturation = saturation_specific_humidity_kernel(temperature, pressure.to(temperature))
        return torch.clamp(humidity * saturation, min=self.minimum_specific_humidity)


# --------------------------------------------------------------------------------------------------
# Large-scale condensation
# --------------------------------------------------------------------------------------------------


def saturation_adjustment_kernel(
    temperature: Tensor,
    specific_humidity: Tensor,
    pressure: Tensor,
    critical_relative_humidity: Tensor,
    formula: str = "bolton",
    iterations: int = 6,
) -> Tensor:
    """Reference kernel of :func:`saturation_adjustment`: unrolled Newton iterations in torch.

    Differentiating through the iterations converges to the implicit-function gradient that
    :class:`_SaturationAdjustmentFunction` computes directly.
    """
    heating_per_condensate = latent_heat_vaporization / heat_capacity_dry_air
    condensate = torch.zeros_like(temperature + specific_humidity + pressure)
    for _ in range(iterations):
        saturation, d_temperature, _ = saturation_specific_humidity_derivatives(
            temperature + heating_per_condensate * condensate, pressure, formula
        )
        residual = specific_humidity - condensate - critical_relative_humidity * saturation
        slope = 1.0 + critical_relative_humidity * heating_per_condensate * d_temperature
        condensate = condensate + residual / slope
    return condensate


class _SaturationAdjustmentFunction(torch.autograd.Function):
    """Condensate δ solving ``q - δ = RH_c q_s(T + L δ / c_p, p)``, differentiated implicitly.

    The forward runs Newton's method; the backward applies the implicit function theorem at the
    solution instead of differentiating the iterations: with
    ``F(δ; T, q, p, RH_c) = q - δ - RH_c q_s(T + L δ / c_p, p)`` and ``D = -∂F/∂δ =
    1 + RH_c (L / c_p) ∂q_s/∂T``, ``dδ/dθ = (∂F/∂θ) / D``. It saves T, p, RH_c and δ only, not
    the Newton iterates that autograd through the iterations would keep, so its memory does not
    grow with ``iterations`` and the backward is one evaluation of the derivatives (see
    ``docs/benchmarks.md`` for the measured memory and time). Written in differentiable torch, so
    double backward works.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        temperature: Tensor,
        specific_humidity: Tensor,
        pressure: Tensor,
        critical_relative_humidity: Tensor,
        formula: str,
        iterations: int,
    ) -> Tensor:
        return saturation_adjustment_kernel(
            temperature,
            specific_humidity,
            pressure,
            critical_relative_humidity,
            formula,
            iterations,
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        temperature, specific_humidity, pressure, critical, formula, _ = inputs
        ctx.formula = formula
        ctx.humidity_shape = specific_humidity.shape
        ctx.save_for_backward(temperature, pressure, critical, output)

    @staticmethod
    def backward(ctx: Any, grad_condensate: Tensor) -> tuple[Tensor | None, ...]:
        temperature, pressure, critical, condensate = ctx.saved_tensors
        needs = ctx.needs_input_grad
        heating_per_condensate = latent_heat_vaporization / heat_capacity_dry_air
        saturation, d_temperature, d_pressure = saturation_specific_humidity_derivatives(
            temperature + heating_per_condensate * condensate, pressure, ctx.formula
        )
        scaled = grad_condensate / (1.0 + critical * heating_per_condensate * d_temperature)
        grads: list[Tensor | None] = [
            (-scaled * critical * d_temperature).sum_to_size(temperature.shape)
            if needs[0]
            else None,
            scaled.sum_to_size(ctx.humidity_shape) if needs[1] else None,
            (-scaled * critical * d_pressure).sum_to_size(pressure.shape) if needs[2] else None,
            (-scaled * saturation).sum_to_size(critical.shape) if needs[3] else None,
            None,
            None,
        ]
        return tuple(grads)


def saturation_adjustment(
    temperature: Tensor | float,
    specific_humidity: Tensor | float,
    pressure: Tensor | float,
    *,
    critical_relative_humidity: Tensor | float = 1.0,
    formula: SaturationFormula = "bolton",
    iterations: int = 6,
) -> Tensor:
    """Condensate that brings air to a relative humidity ``RH_c`` at constant moist enthalpy.

    Solves for ``δ`` (kg kg-1) in

    .. math:: q - δ = RH_c\\, q_s\\!\\left(T + \\frac{L}{c_p} δ,\\ p\\right)

    by Newton's method from ``δ = 0`` (the classic isobaric saturation adjustment, e.g. Asai
    1965, with ``c_p T + L q`` conserved). ``δ > 0`` means supersaturation to remove;
    ``δ < 0`` the (not applied) evaporation that would reach ``RH_c``. ``q_s`` is convex in ``T``,
    so Newton converges quadratically; 6 iterations reach float64 round-off for atmospheric values.
    The gradient is implicit (exact at the solution), not the derivative of the iterations.

    Args:
        temperature: Temperature in K.
        specific_humidity: Specific humidity in kg kg-1.
        pressure: Pressure in Pa.
        critical_relative_humidity: ``RH_c`` (fraction, positive).
        formula: Saturation formula, ``"bolton"`` or ``"clausius_clapeyron"``.
        iterations: Number of Newton iterations.

    Returns:
        Signed condensate ``δ`` in kg kg-1, the broadcast shape of the arguments.
    """
    check_choice("formula", formula, SATURATION_FORMULAS)
    check_count("iterations", iterations, 1)
    t, q, p, critical = as_tensors(
        temperature, specific_humidity, pressure, critical_relative_humidity
    )
    check_temperature("temperature", t)
    check_positive("specific_humidity", q, "kg kg-1", HUMIDITY_HINT, allow_zero=True)
    check_positive("pressure", p, "Pa", PASCAL_HINT)
    check_positive("critical_relative_humidity", critical, "1", "Use a fraction such as 0.9.")
    check_saturation_defined(saturation_specific_humidity_kernel(t.detach(), p.detach(), formula))
    result: Tensor = _SaturationAdjustmentFunction.apply(t, q, p, critical, formula, iterations)
    return result


def condensation_rate(
    temperature: Tensor | float,
    specific_humidity: Tensor | float,
    pressure: Tensor | float,
    *,
    critical_relative_humidity: Tensor | float = 0.9,
    timescale: Tensor | float = 3600.0,
    method: CondensationMethod = "relaxation",
    mode: GradientMode = "exact",
    width: float = 0.01,
    formula: SaturationFormula = "bolton",
    iterations: int = 6,
) -> Tensor:
    """Large-scale condensation rate above a critical relative humidity, in kg kg-1 s-1.

    .. math::

        C = \\frac{q_s(T, p)}{τ}\\, \\left[\\frac{X}{q_s(T, p)}\\right]^+, \\qquad
        X = \\begin{cases} q - RH_c\\, q_s(T, p) & \\text{relaxation} \\\\
                           δ & \\text{adjustment}
            \\end{cases}

    where ``δ`` is the condensate of :func:`saturation_adjustment`.

    Relaxation removes the excess over ``RH_c q_s`` over the timescale ``τ`` (as in simplified
    GCM physics, e.g. Frierson et al. 2006, J. Atmos. Sci. 63, 2548); adjustment also counts the
    warming by the released latent heat, so with ``τ`` equal to the time step one explicit step
    leaves the air exactly at ``RH_c``. Applied as ``dq/dt = -C``, ``dT/dt = (L / c_p) C``, which
    conserves the moist enthalpy ``c_p T + L q``.

    The switch ``[x]^+`` is :func:`climgrad.autograd.smooth.positive_part` of the excess measured in
    units of ``q_s`` (so ``width`` is a relative-humidity width, the same at all temperatures).
    Which parameters get gradient (``RH_c``, ``τ``):

    ======================  ========================  ==========================================
    mode                    supersaturated points     subsaturated points (``X < 0``)
    ======================  ========================  ==========================================
    ``"exact"``             ``RH_c`` and ``τ`` live   both dead (``C = 0`` exactly)
    ``"smooth"``            both live                 both live (``C`` small but positive)
    ``"straight_through"``  both live                 ``RH_c`` live, ``τ`` dead (``C = 0``)
    ======================  ========================  ==========================================

    In ``"smooth"`` mode the gradient below the threshold decays like ``exp(x / width)`` with
    ``x = X / q_s < 0``: live, but negligible a few widths away. ``"straight_through"`` keeps the
    exact forward and passes the surrogate gradient ``sigmoid(x / width)`` to ``T``, ``q``, ``p``
    and ``RH_c``; ``τ`` only scales ``C`` and stays dead where ``C = 0``. In every mode the
    gradients of ``T``, ``q`` and ``p`` follow the same pattern as that of ``RH_c``.

    Args:
        temperature: Air temperature in K, e.g. ``(column, level)``.
        specific_humidity: Specific humidity in kg kg-1, broadcastable with ``temperature``.
        pressure: Air pressure in Pa, broadcastable with ``temperature``.
        critical_relative_humidity: ``RH_c`` (fraction).
        timescale: ``τ`` in s (positive).
        method: ``"relaxation"`` (default) or ``"adjustment"``.
        mode: Gradient mode of the threshold: ``"exact"``, ``"smooth"`` or ``"straight_through"``.
        width: Smoothing width in relative-humidity units (fraction), for ``"smooth"`` and
            ``"straight_through"``.
        formula: Saturation formula, ``"bolton"`` or ``"clausius_clapeyron"``.
        iterations: Newton iterations for ``method="adjustment"``.

    Returns:
        Condensation rate in kg kg-1 s-1 (non-negative), the broadcast shape.

    >>> import torch
    >>> rate = condensation_rate(torch.tensor(290.0), 0.012, 1.0e5, critical_relative_humidity=0.9)
    >>> f"{float(rate):.3e}"
    '3.291e-07'
    """
    check_choice("method", method, CONDENSATION_METHODS)
    check_mode(mode)
    t, q, p, critical, tau = as_tensors(
        temperature, specific_humidity, pressure, critical_relative_humidity, timescale
    )
    check_positive("timescale", tau, "s", "A relaxation time of about an hour is typical.")
    check_positive("critical_relative_humidity", critical, "1", "Use a fraction such as 0.9.")
    check_positive("specific_humidity", q, "kg kg-1", HUMIDITY_HINT, allow_zero=True)
    saturation = saturation_specific_humidity(t, p, formula=formula)
    if method == "relaxation":
        excess = q / saturation - critical
    else:
        excess = (
            saturation_adjustment(
                t,
                q,
                p,
                critical_relative_humidity=critical,
                formula=formula,
                iterations=iterations,
            )
            / saturation
        )
    return saturation * positive_part(excess, width, mode) / tau


class LargeScaleCondensation(Process):
    """Large-scale (grid-scale) condensation above a critical relative humidity.

    Tendencies ``dq/dt = -C`` and ``dT/dt = (L / c_p) C`` with ``C`` from
    :func:`condensation_rate`; the condensate precipitates at once (no cloud water is stored), and
    ``c_p dT/dt + L dq/dt = 0``: moist enthalpy is conserved. See :func:`condensation_rate` for
    the methods and for which parameters are live in which gradient mode.

    State (SI units):
        ``air_temperature`` (K), ``specific_humidity`` (kg kg-1) and ``air_pressure`` (Pa), of a
        common shape such as ``(column, level)``.

    Tendencies:
        ``air_temperature`` (K s-1) and ``specific_humidity`` (kg kg-1 s-1).

    Diagnostics:
        ``condensation_rate`` (kg kg-1 s-1) and ``latent_heating_rate`` (K s-1).

    Learnable parameters (``nn.Parameter``, SI units):
        ``critical_relative_humidity``: ``RH_c`` (fraction).
        ``condensation_timescale``: ``τ`` in s.

    Args:
        critical_relative_humidity: Initial ``RH_c``.
        condensation_timescale: Initial ``τ`` in s; for ``method="adjustment"`` use the time step.
        method: ``"relaxation"`` or ``"adjustment"``.
        mode: Threshold gradient mode, ``"exact"``, ``"smooth"`` or ``"straight_through"``.
        width: Threshold width in relative-humidity units.
        formula: Saturation formula, ``"bolton"`` or ``"clausius_clapeyron"``.
        iterations: Newton iterations for ``method="adjustment"``.
    """

    inputs = ("air_temperature", "specific_humidity", "air_pressure")

    def __init__(
        self,
        critical_relative_humidity: float = 0.9,
        condensation_timescale: float = 3600.0,
        *,
        method: CondensationMethod = "relaxation",
        mode: GradientMode = "exact",
        width: float = 0.01,
        formula: SaturationFormula = "bolton",
        iterations: int = 6,
    ) -> None:
        super().__init__()
        check_choice("method", method, CONDENSATION_METHODS)
        check_choice("formula", formula, SATURATION_FORMULAS)
        check_mode(mode)
        check_positive(
            "critical_relative_humidity",
            critical_relative_humidity,
            "1",
            "Use a fraction such as 0.9.",
        )
        check_positive(
            "condensation_timescale",
            condensation_timescale,
            "s",
            "A relaxation time of about an hour is typical.",
        )
        check_positive("width", width, "1", "Use a relative-humidity fraction such as 0.01.")
        self.critical_relative_humidity = nn.Parameter(torch.tensor(critical_relative_humidity))
        self.condensation_timescale = nn.Parameter(torch.tensor(condensation_timescale))
        self.method: CondensationMethod = method
        self.mode: GradientMode = mode
        self.width = width
        self.formula: SaturationFormula = formula
        self.iterations = iterations

    def forward(self, state: State) -> tuple[Tendencies, Diagnostics]:
        """Condensation tendencies for ``state`` (see the class docstring for names and units)."""
        temperature, humidity, pressure = self.require(state)
        rate = condensation_rate(
            temperature,
            humidity,
            pressure,
            critical_relative_humidity=self.critical_relative_humidity.to(temperature.dtype),
            timescale=self.condensation_timescale.to(temperature.dtype),
            method=self.method,
            mode=self.mode,
            width=self.width,
            formula=self.formula,
            iterations=self.iterations,
        )
        heating = latent_heat_vaporization / heat_capacity_dry_air * rate
        tendencies: Tendencies = {"air_temperature": heating, "specific_humidity": -rate}
        diagnostics: Diagnostics = {"condensation_rate": rate, "latent_heating_rate": heating}
        return tendencies, diagnostics
