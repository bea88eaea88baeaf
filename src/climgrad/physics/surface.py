"""Bulk aerodynamic surface fluxes of sensible and latent heat.

The turbulent fluxes between the surface and the lowest model level follow the bulk aerodynamic
formulae (Garratt 1992, *The Atmospheric Boundary Layer*, Cambridge University Press, ch. 4):

.. math::

    H = \\rho\\, c_p\\, C_H\\, V\\, (T_s - T_a), \\qquad
    E = \\rho\\, L\\, C_E\\, V\\, (q_s(T_s, p_s) - q_a),

in W m-2, positive upward (from the surface into the atmosphere). ``C_H`` and ``C_E`` are the
(dimensionless) exchange coefficients for heat and moisture at the measurement height, ``V`` the
wind speed, ``q_s(T_s, p_s)`` the saturation specific humidity at the skin temperature (a wet
surface; over land ``C_E`` is an effective coefficient that absorbs the surface wetness).

Every function takes SI quantities exactly as flux-tower data provide them (wind in m s-1, air and
skin temperature in K, specific humidity in kg kg-1, pressure in Pa, air density in kg m-3), and
broadcasts over its arguments, so a scalar coefficient applies to a time series of half-hours.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from climgrad.autograd.tracing import without_jvp
from climgrad.constants import (
    gravity,
    heat_capacity_dry_air,
    latent_heat_vaporization,
    stefan_boltzmann,
)
from climgrad.physics.process import Process
from climgrad.physics.thermo import (
    SATURATION_FORMULAS,
    SaturationFormula,
    air_density,
    saturation_specific_humidity_derivatives,
    saturation_specific_humidity_kernel,
)
from climgrad.typing import Diagnostics, State, Tendencies
from climgrad.validation import (
    HUMIDITY_HINT,
    PASCAL_HINT,
    as_tensors,
    check_choice,
    check_positive,
    check_range,
    check_saturation_defined,
    check_temperature,
)

__all__ = [
    "SurfaceFluxes",
    "bulk_richardson_number",
    "effective_wind_speed",
    "latent_heat_flux",
    "sensible_heat_flux",
    "skin_temperature",
    "stability_correction",
]

_WIND_HINT = (
    "Wind speed is a magnitude (use sqrt(u**2 + v**2) for components); set calm winds to 0."
)
_COEFFICIENT_HINT = "Exchange coefficients are small positive numbers, about 1e-3."

# --------------------------------------------------------------------------------------------------
# Sensible heat flux
# --------------------------------------------------------------------------------------------------


def sensible_heat_flux_kernel(
    surface_temperature: Tensor,
    air_temperature: Tensor,
    wind_speed: Tensor,
    exchange_coefficient: Tensor,
    air_density: Tensor,
    heat_capacity: Tensor,
) -> Tensor:
    """Reference kernel of :func:`sensible_heat_flux`, plain torch (autograd differentiates it)."""
    return (
        air_density
        * heat_capacity
        * exchange_coefficient
        * wind_speed
        * (surface_temperature - air_temperature)
    )


class _SensibleHeatFluxFunction(torch.autograd.Function):
    """H = ρ c_p C_H V (T_s - T_a) with a fused backward.

    The backward saves only the six inputs, where autograd through the kernel also keeps the
    partial products, and forms the gradients from two shared factors: the Function earns its
    place by memory, not speed (the product is memory-bound; see ``docs/benchmarks.md`` for the
    measured memory and time). It is written in differentiable torch, so double backward works.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        surface_temperature: Tensor,
        air_temperature: Tensor,
        wind_speed: Tensor,
        exchange_coefficient: Tensor,
        air_density: Tensor,
        heat_capacity: Tensor,
    ) -> Tensor:
        return sensible_heat_flux_kernel(
            surface_temperature,
            air_temperature,
            wind_speed,
            exchange_coefficient,
            air_density,
            heat_capacity,
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def jvp(ctx: Any, *tangents: Tensor | None) -> Tensor:
        """Forward mode (``torch.autograd.forward_ad``): the product rule.

        ``dH = ρ c_p C_H V (dT_s - dT_a) + (T_s - T_a) d(ρ c_p C_H V)``.
        """
        ts, ta, wind, coefficient, density, cp = ctx.saved_tensors
        d_ts, d_ta, *d_factors = tangents
        factors = (wind, coefficient, density, cp)
        product = wind * coefficient * density * cp
        result = torch.zeros_like(ts - ta) * product
        if d_ts is not None:
            result = result + product * d_ts
        if d_ta is not None:
            result = result - product * d_ta
        difference = ts - ta
        for k, tangent in enumerate(d_factors):
            if tangent is not None:
                others = [f for j, f in enumerate(factors) if j != k]
                result = result + difference * tangent * others[0] * others[1] * others[2]
        return result

    @staticmethod
    def backward(ctx: Any, grad_flux: Tensor) -> tuple[Tensor | None, ...]:
        ts, ta, wind, coefficient, density, cp = ctx.saved_tensors
        needs = ctx.needs_input_grad
        difference = ts - ta
        # g ρ c_p C_H is shared by the temperature and wind gradients, g V ΔT by the factors.
        g_rho_cp_c = grad_flux * (density * cp * coefficient)
        grad_ts = grad_ta = grad_wind = grad_c = grad_rho = grad_cp = None
        if needs[0] or needs[1]:
            g_rho_cp_c_v = g_rho_cp_c * wind
            grad_ts = g_rho_cp_c_v.sum_to_size(ts.shape) if needs[0] else None
            grad_ta = (-g_rho_cp_c_v).sum_to_size(ta.shape) if needs[1] else None
        if needs[2]:
            grad_wind = (g_rho_cp_c * difference).sum_to_size(wind.shape)
        if needs[3] or needs[4] or needs[5]:
            g_v_dt = grad_flux * wind * difference
            if needs[3]:
                grad_c = (g_v_dt * (density * cp)).sum_to_size(coefficient.shape)
            if needs[4]:
                grad_rho = (g_v_dt * (cp * coefficient)).sum_to_size(density.shape)
            if needs[5]:
                grad_cp = (g_v_dt * (density * coefficient)).sum_to_size(cp.shape)
        return grad_ts, grad_ta, grad_wind, grad_c, grad_rho, grad_cp


# torch.compile cannot trace a custom jvp; the twin serves compiled graphs (see autograd.tracing).
_SensibleHeatFluxForTracing = without_jvp(_SensibleHeatFluxFunction)


def sensible_heat_flux(
    surface_temperature: Tensor | float,
    air_temperature: Tensor | float,
    wind_speed: Tensor | float,
    exchange_coefficient: Tensor | float,
    air_density: Tensor | float,
    *,
    heat_capacity: Tensor | float = heat_capacity_dry_air,
) -> Tensor:
    """Bulk aerodynamic sensible heat flux, positive upward (surface to atmosphere).

    .. math:: H = \\rho\\, c_p\\, C_H\\, V\\, (T_s - T_a)

    (Garratt 1992, *The Atmospheric Boundary Layer*, ch. 4). Valid in the surface layer,
    for wind speed and temperature at one height within it (a few to tens of metres); ``C_H``
    carries the height, the roughness and (if corrected) the stability. For a gustiness floor pass
    :func:`effective_wind_speed`; for a stability correction multiply ``exchange_coefficient`` by
    :func:`stability_correction`.

    Regime of the wind: calm (exactly 0, no flux) to a few tens of m s-1, finite. ``H`` is exactly
    linear in ``V`` with no floor, so a wind far below any anemometer's resolution gives a flux
    that float arithmetic may round to 0 (for a subnormal ``V`` such as 5e-324 m s-1 it does):
    set calm winds to 0, or pass :func:`effective_wind_speed`.

    Args:
        surface_temperature: Skin (surface) temperature ``T_s`` in K.
        air_temperature: Air temperature ``T_a`` at the reference height (lowest level) in K.
        wind_speed: Wind speed ``V`` at the reference height in m s-1 (non-negative, finite).
        exchange_coefficient: Heat exchange (Stanton) coefficient ``C_H``, dimensionless,
            non-negative; about 1e-3 over the ocean at 10 m, several 1e-3 over land.
        air_density: Air density ``ρ`` in kg m-3 (positive).
        heat_capacity: Specific heat of air at constant pressure ``c_p`` in J kg-1 K-1.

    Returns:
        Sensible heat flux ``H`` in W m-2, the broadcast shape of the arguments (for instance
        ``(time,)`` or ``(column,)``), dtype and device of the tensor arguments.

    >>> import torch
    >>> sensible_heat_flux(torch.tensor(300.0), 299.0, 5.0, 1.0e-3, 1.2)
    tensor(6.0240)
    """
    # Checked before conversion: numbers are checked in Python, at no tensor cost.
    check_temperature("surface_temperature", surface_temperature)
    check_temperature("air_temperature", air_temperature)
    check_positive("wind_speed", wind_speed, "m s-1", _WIND_HINT, allow_zero=True, finite=True)
    check_positive(
        "exchange_coefficient", exchange_coefficient, "1", _COEFFICIENT_HINT, allow_zero=True
    )
    check_positive("air_density", air_density, "kg m-3", "Air density near the surface is ~1.2.")
    check_positive("heat_capacity", heat_capacity, "J kg-1 K-1", "Dry air has 1004 J kg-1 K-1.")
    ts, ta, wind, coefficient, density, cp = as_tensors(
        surface_temperature,
        air_temperature,
        wind_speed,
        exchange_coefficient,
        air_density,
        heat_capacity,
    )
    function = (
        _SensibleHeatFluxForTracing if torch.compiler.is_compiling() else _SensibleHeatFluxFunction
    )
    flux: Tensor = function.apply(ts, ta, wind, coefficient, density, cp)
    return flux


# --------------------------------------------------------------------------------------------------
# Latent heat flux
# --------------------------------------------------------------------------------------------------


def latent_heat_flux_kernel(
    surface_temperature: Tensor,
    specific_humidity: Tensor,
    wind_speed: Tensor,
    exchange_coefficient: Tensor,
    air_density: Tensor,
    surface_pressure: Tensor,
    latent_heat: Tensor,
    formula: str = "bolton",
) -> Tensor:
    """Reference kernel of :func:`latent_heat_flux` in plain torch (autograd differentiates it)."""
    surface_saturation = saturation_specific_humidity_kernel(
        surface_temperature, surface_pressure, formula
    )
    return (
        air_density
        * latent_heat
        * exchange_coefficient
        * wind_speed
        * (surface_saturation - specific_humidity)
    )


class _LatentHeatFluxFunction(torch.autograd.Function):
    """E = ρ L C_E V (q_s(T_s, p_s) - q_a) with the analytic derivatives of q_s.

    Saves the inputs only and recomputes q_s and its partial derivatives in the backward: less
    memory than autograd, which keeps the intermediates of q_s, at the price of recomputing the
    exponential (see ``docs/benchmarks.md`` for the measured memory and time). Written in
    differentiable torch, so double backward works.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        surface_temperature: Tensor,
        specific_humidity: Tensor,
        wind_speed: Tensor,
        exchange_coefficient: Tensor,
        air_density: Tensor,
        surface_pressure: Tensor,
        latent_heat: Tensor,
        formula: str,
    ) -> Tensor:
        return latent_heat_flux_kernel(
            surface_temperature,
            specific_humidity,
            wind_speed,
            exchange_coefficient,
            air_density,
            surface_pressure,
            latent_heat,
            formula,
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.formula = inputs[-1]
        ctx.save_for_backward(*inputs[:-1])
        ctx.save_for_forward(*inputs[:-1])

    @staticmethod
    def jvp(ctx: Any, *tangents: Tensor | None) -> Tensor:
        """Forward mode (``torch.autograd.forward_ad``): analytic derivatives of q_s.

        ``dE = ρ L C_E V (∂q_s/∂T_s dT_s + ∂q_s/∂p_s dp_s - dq_a) + (q_s - q_a) d(ρ L C_E V)``.
        """
        ts, qa, wind, coefficient, density, ps, latent = ctx.saved_tensors
        d_ts, d_qa, d_wind, d_coefficient, d_density, d_ps, d_latent, _ = tangents
        saturation, d_temperature, d_pressure = saturation_specific_humidity_derivatives(
            ts, ps, ctx.formula
        )
        deficit = saturation - qa
        factors = (wind, coefficient, density, latent)
        product = wind * coefficient * density * latent
        result = torch.zeros_like(deficit) * product
        if d_ts is not None:
            result = result + product * d_temperature * d_ts
        if d_ps is not None:
            result = result + product * d_pressure * d_ps
        if d_qa is not None:
            result = result - product * d_qa
        for k, tangent in enumerate((d_wind, d_coefficient, d_density, d_latent)):
            if tangent is not None:
                others = [f for j, f in enumerate(factors) if j != k]
                result = result + deficit * tangent * others[0] * others[1] * others[2]
        return result

    @staticmethod
    def backward(ctx: Any, grad_flux: Tensor) -> tuple[Tensor | None, ...]:
        ts, qa, wind, coefficient, density, ps, latent = ctx.saved_tensors
        needs = ctx.needs_input_grad
        saturation, d_temperature, d_pressure = saturation_specific_humidity_derivatives(
            ts, ps, ctx.formula
        )
        deficit = saturation - qa
        g_rho_l_c_v = grad_flux * density * latent * coefficient * wind
        g_v_dq = grad_flux * wind * deficit
        grads: list[Tensor | None] = [
            (g_rho_l_c_v * d_temperature).sum_to_size(ts.shape) if needs[0] else None,
            (-g_rho_l_c_v).sum_to_size(qa.shape) if needs[1] else None,
            (grad_flux * density * latent * coefficient * deficit).sum_to_size(wind.shape)
            if needs[2]
            else None,
            (g_v_dq * density * latent).sum_to_size(coefficient.shape) if needs[3] else None,
            (g_v_dq * latent * coefficient).sum_to_size(density.shape) if needs[4] else None,
            (g_rho_l_c_v * d_pressure).sum_to_size(ps.shape) if needs[5] else None,
            (g_v_dq * density * coefficient).sum_to_size(latent.shape) if needs[6] else None,
            None,
        ]
        return tuple(grads)


_LatentHeatFluxForTracing = without_jvp(_LatentHeatFluxFunction)


def latent_heat_flux(
    surface_temperature: Tensor | float,
    specific_humidity: Tensor | float,
    wind_speed: Tensor | float,
    exchange_coefficient: Tensor | float,
    air_density: Tensor | float,
    surface_pressure: Tensor | float,
    *,
    latent_heat: Tensor | float = latent_heat_vaporization,
    formula: SaturationFormula = "bolton",
) -> Tensor:
    """Bulk aerodynamic latent heat flux, positive upward (evaporation).

    .. math:: E = \\rho\\, L\\, C_E\\, V\\, (q_s(T_s, p_s) - q_a)

    (Garratt 1992, ch. 4), with ``q_s`` from
    :func:`climgrad.physics.thermo.saturation_specific_humidity` at the skin temperature and surface
    pressure. This is the flux from a saturated (wet) surface: sea, lakes, wet vegetation. Over
    drier land, ``C_E`` is an effective coefficient, the product of the aerodynamic coefficient and
    a surface wetness in [0, 1]. Negative values are dew.

    Args:
        surface_temperature: Skin (surface) temperature ``T_s`` in K.
        specific_humidity: Specific humidity ``q_a`` at the reference height in kg kg-1.
        wind_speed: Wind speed ``V`` at the reference height in m s-1 (non-negative, finite; see
            :func:`sensible_heat_flux` for the regime).
        exchange_coefficient: Moisture exchange (Dalton) coefficient ``C_E``, dimensionless.
        air_density: Air density ``ρ`` in kg m-3.
        surface_pressure: Surface pressure ``p_s`` in Pa.
        latent_heat: Latent heat of vaporisation ``L`` in J kg-1.
        formula: Saturation formula, ``"bolton"`` or ``"clausius_clapeyron"``.

    Returns:
        Latent heat flux in W m-2 (divide by ``L`` for the evaporation in kg m-2 s-1), the
        broadcast shape of the arguments.

    >>> import torch
    >>> flux = latent_heat_flux(torch.tensor(300.0), 0.015, 5.0, 1.2e-3, 1.15, 1.0e5)
    >>> round(float(flux), 1)
    125.7
    """
    check_choice("formula", formula, SATURATION_FORMULAS)
    check_temperature("surface_temperature", surface_temperature)
    check_positive(
        "specific_humidity", specific_humidity, "kg kg-1", HUMIDITY_HINT, allow_zero=True
    )
    check_positive("wind_speed", wind_speed, "m s-1", _WIND_HINT, allow_zero=True, finite=True)
    check_positive(
        "exchange_coefficient", exchange_coefficient, "1", _COEFFICIENT_HINT, allow_zero=True
    )
    check_positive("air_density", air_density, "kg m-3", "Air density near the surface is ~1.2.")
    check_positive("surface_pressure", surface_pressure, "Pa", PASCAL_HINT)
    check_positive("latent_heat", latent_heat, "J kg-1", "Water has 2.501e6 J kg-1 at 0 degC.")
    ts, qa, wind, coefficient, density, ps, latent = as_tensors(
        surface_temperature,
        specific_humidity,
        wind_speed,
        exchange_coefficient,
        air_density,
        surface_pressure,
        latent_heat,
    )
    check_saturation_defined(saturation_specific_humidity_kernel(ts.detach(), ps.detach(), formula))
    function = (
        _LatentHeatFluxForTracing if torch.compiler.is_compiling() else _LatentHeatFluxFunction
    )
    flux: Tensor = function.apply(ts, qa, wind, coefficient, density, ps, latent, formula)
    return flux


# --------------------------------------------------------------------------------------------------
# Wind speed floor and stability
# --------------------------------------------------------------------------------------------------


def effective_wind_speed(wind_speed: Tensor | float, gustiness: Tensor | float = 1.0) -> Tensor:
    """Wind speed with a gustiness floor, :math:`V_e = \\sqrt{V^2 + w_g^2}`, in m s-1.

    Mean wind alone underestimates the exchange in light winds, where convective eddies and
    mesoscale gusts still mix the surface layer; adding a gust velocity in quadrature keeps the
    bulk fluxes, and the bulk Richardson number, finite as ``V -> 0`` (Beljaars 1995, Q. J. R.
    Meteorol. Soc. 121, 255-270, uses a free-convection gust speed; here ``w_g`` is a constant,
    about 1 m s-1). Smooth in ``V`` for ``w_g > 0``.

    Args:
        wind_speed: Mean wind speed in m s-1 (non-negative, finite).
        gustiness: Gust velocity ``w_g`` in m s-1 (positive).

    Returns:
        Effective wind speed in m s-1, at least ``gustiness``, the broadcast shape.
    """
    wind, gust = as_tensors(wind_speed, gustiness)
    check_positive("wind_speed", wind, "m s-1", _WIND_HINT, allow_zero=True, finite=True)
    check_positive("gustiness", gust, "m s-1", "A gust velocity of about 1 m s-1 is typical.")
    return torch.sqrt(wind**2 + gust**2)


def bulk_richardson_number(
    surface_temperature: Tensor | float,
    air_temperature: Tensor | float,
    wind_speed: Tensor | float,
    reference_height: Tensor | float,
    *,
    heat_capacity: Tensor | float = heat_capacity_dry_air,
) -> Tensor:
    """Bulk Richardson number of the surface layer (dry; moisture buoyancy neglected).

    .. math:: Ri_B = \\frac{g\\, z\\, (θ_a - T_s)}{\\bar T\\, V^2}, \\qquad
              θ_a = T_a + g z / c_p, \\quad \\bar T = (T_a + T_s) / 2

    (e.g. Garratt 1992, ch. 3). Positive for stable (surface colder than the air's potential
    temperature), negative for unstable stratification. Pass a wind with a gustiness floor
    (:func:`effective_wind_speed`) so that ``Ri_B`` stays bounded in calm conditions.

    Args:
        surface_temperature: Skin temperature in K.
        air_temperature: Air temperature at the reference height in K.
        wind_speed: Wind speed at the reference height in m s-1 (positive, finite).
        reference_height: Height ``z`` of the air temperature and wind in m.
        heat_capacity: ``c_p`` in J kg-1 K-1, for the dry-adiabatic correction ``g z / c_p``.

    Returns:
        Bulk Richardson number (dimensionless), the broadcast shape.
    """
    ts, ta, wind, height, cp = as_tensors(
        surface_temperature, air_temperature, wind_speed, reference_height, heat_capacity
    )
    check_positive(
        "wind_speed", wind, "m s-1", "Use effective_wind_speed() for a gust floor.", finite=True
    )
    check_positive("reference_height", height, "m", "Flux towers measure at a few metres.")
    potential_difference = ta + gravity * height / cp - ts
    mean_temperature = 0.5 * (ta + ts)
    return gravity * height * potential_difference / (mean_temperature * wind**2)


def stability_correction(
    richardson_number: Tensor,
    *,
    louis_b: float = 9.4,
    maximum_enhancement: float = 3.0,
) -> Tensor:
    """Louis (1979)-type stability factor ``f(Ri_B)`` that multiplies the neutral ``C_H``, ``C_E``.

    .. math::

        f = \\begin{cases}
            (1 + \\tfrac{b}{2} Ri)^{-2}, & Ri \\ge 0 \\ \\text{(stable; Louis 1979)}\\\\
            1 + \\dfrac{b\\,|Ri|}{1 + b\\,|Ri| / (f_{max} - 1)}, & Ri < 0 \\ \\text{(unstable)}
        \\end{cases}

    Louis (1979, Boundary-Layer Meteorol. 17, 187-202) uses ``b = 9.4``; his stable branch is kept.
    His unstable branch, :math:`1 - b Ri / (1 + c\\sqrt{|Ri|})` with ``c`` depending on ``z/z_0``,
    grows without bound; here a rational function with the same slope ``-b`` at ``Ri = 0``
    saturates at ``f_max``. Both branches meet with equal value (1) and slope (``-b``), so ``f`` is
    continuously differentiable: no threshold surrogate is needed. Bounded: ``0 < f < f_max``, with
    ``f <= 1`` for stable and ``f >= 1`` for unstable stratification. The regime is the surface
    layer over homogeneous terrain; in very stable conditions (``Ri > ~0.25``) turbulence becomes
    intermittent and any such function is only a rough guide.

    Args:
        richardson_number: Bulk Richardson number, any shape.
        louis_b: Louis's coefficient ``b`` (dimensionless, positive).
        maximum_enhancement: ``f_max`` (> 1), the free-convection limit of the enhancement.

    Returns:
        Stability factor (dimensionless), the shape of ``richardson_number``.

    >>> import torch
    >>> stability_correction(torch.tensor([0.0, 0.1, -0.1]))
    tensor([1.0000, 0.4628, 1.6395])
    """
    check_positive("louis_b", louis_b, "1", "Louis (1979) uses 9.4.")
    check_positive("maximum_enhancement", maximum_enhancement, "1", "Try 3.0.", greater_than=1.0)
    # Each branch sees only its own half-line, so neither is evaluated where it would blow up
    # (the stable branch is singular at Ri = -2/b), and the branch at 0 equals 1: the product is f.
    # One mask for both halves: two clamps would both pass gradient at Ri = 0 and double it.
    is_stable = richardson_number > 0
    zero = torch.zeros_like(richardson_number)
    stable = torch.where(is_stable, richardson_number, zero)
    unstable = torch.where(is_stable, zero, -richardson_number)
    stable_factor = (1.0 + 0.5 * louis_b * stable) ** -2
    unstable_factor = 1.0 + louis_b * unstable / (
        1.0 + louis_b * unstable / (maximum_enhancement - 1.0)
    )
    return stable_factor * unstable_factor


# --------------------------------------------------------------------------------------------------
# Skin temperature from radiometers
# --------------------------------------------------------------------------------------------------


def skin_temperature(
    upwelling_longwave: Tensor, downwelling_longwave: Tensor, emissivity: float = 0.98
) -> Tensor:
    """Radiometric skin temperature from hemispheric longwave fluxes.

    ``T_s = ((L_up - (1 - ε) L_down) / (ε σ))^(1/4)``: the upwelling flux is the surface's
    emission plus the reflected part of the downwelling flux (a gray surface; e.g. Garratt 1992,
    ch. 5). Differentiable by autograd (a power of a linear combination).

    Args:
        upwelling_longwave: ``L_up`` in W m-2, any shape.
        downwelling_longwave: ``L_down`` in W m-2, broadcastable with ``L_up``.
        emissivity: Broadband longwave emissivity ε in (0, 1] (0.98 for grassland).

    Returns:
        Skin temperature in K, the broadcast shape.
    """
    check_range("emissivity", emissivity, 0.0, 1.0, hint="Grass: 0.98.", include_lower=False)
    emitted = upwelling_longwave - (1.0 - emissivity) * downwelling_longwave
    check_positive(
        "upwelling_longwave - (1 - emissivity) downwelling_longwave",
        emitted,
        "W m-2",
        "Check the radiometer units and fill values.",
    )
    result: Tensor = (emitted / (emissivity * float(stefan_boltzmann))) ** 0.25
    return result


# --------------------------------------------------------------------------------------------------
# Process
# --------------------------------------------------------------------------------------------------


class SurfaceFluxes(Process):
    """Bulk sensible and latent heat fluxes with their tendencies for the surface and lowest layer.

    Fluxes (W m-2, positive upward) from :func:`sensible_heat_flux` and :func:`latent_heat_flux`
    with the wind :func:`effective_wind_speed` (gustiness floor) and, if ``stability=True``, both
    coefficients multiplied by :func:`stability_correction` of :func:`bulk_richardson_number`.
    The energy they carry leaves a surface slab of heat capacity ``C_s`` (J m-2 K-1) and enters a
    lowest atmospheric layer of mass ``m = Δp / g`` (kg m-2):

    .. math::

        C_s \\frac{dT_s}{dt} = -(H + E), \\qquad
        m\\, c_p \\frac{dT_a}{dt} = H, \\qquad
        m \\frac{dq_a}{dt} = E / L,

    so ``C_s dT_s/dt + m (c_p dT_a/dt + L dq_a/dt) = 0``: the process conserves energy. Radiation
    and ground heat flux, which also change ``T_s``, belong to other processes.

    State (SI units):
        ``surface_temperature`` (K), ``air_temperature`` (K) and ``specific_humidity`` (kg kg-1)
        at the lowest level, ``wind_speed`` (m s-1) and ``surface_pressure`` (Pa), each of shape
        ``(column,)`` (or any common shape, e.g. ``(time,)`` for a flux tower). With
        ``lowest_level`` set, ``air_temperature`` and ``specific_humidity`` are ``(column, level)``
        and the lowest level is ``[..., lowest_level]``. Optional ``air_density`` (kg m-3), as flux
        towers report it; otherwise ``ρ = p_s / (R_d T_v)`` from the lowest-level values.

    Tendencies:
        ``surface_temperature`` (K s-1), ``air_temperature`` (K s-1), ``specific_humidity``
        (kg kg-1 s-1), shaped like the state variables (zero above the lowest level).

    Diagnostics:
        ``sensible_heat_flux`` and ``latent_heat_flux`` (W m-2), ``evaporation_flux``
        (kg m-2 s-1), ``effective_wind_speed`` (m s-1), and with ``stability=True`` the
        ``bulk_richardson_number`` and ``stability_factor``.

    Learnable parameters (``nn.Parameter``, SI units):
        ``heat_exchange_coefficient``: neutral ``C_H`` (dimensionless).
        ``moisture_exchange_coefficient``: neutral ``C_E`` (dimensionless).
        ``gustiness``: gust velocity of the wind floor (m s-1).

    Args:
        heat_exchange_coefficient: Initial ``C_H``; about 1.3e-3 over the ocean at 10 m. The ARM
            SGP E39 tower (grassland, a few metres) gives a median near 7.5e-3.
        moisture_exchange_coefficient: Initial ``C_E`` (effective over land, see
            :func:`latent_heat_flux`).
        gustiness: Initial gust velocity in m s-1.
        stability: Apply the Louis-type stability correction.
        reference_height: Height of the lowest level (air temperature, wind) in m, for ``Ri_B``.
        surface_heat_capacity: ``C_s`` in J m-2 K-1; 1e7 is about 2.4 m of water.
        lowest_layer_pressure_thickness: ``Δp`` of the lowest layer in Pa.
        lowest_level: Index of the lowest level along the last axis, or None if the state holds
            the lowest level only.
        formula: Saturation formula, ``"bolton"`` or ``"clausius_clapeyron"``.
        louis_b: Louis's ``b`` for :func:`stability_correction`.
        maximum_enhancement: ``f_max`` for :func:`stability_correction`.
        moisture: With ``False`` the process is dry: no latent heat flux, no
            ``specific_humidity`` in the state or the tendencies (``C_E`` is then unused and
            gets no gradient).
    """

    inputs: tuple[str, ...] = (
        "surface_temperature",
        "air_temperature",
        "specific_humidity",
        "wind_speed",
        "surface_pressure",
    )

    def __init__(
        self,
        heat_exchange_coefficient: float = 1.3e-3,
        moisture_exchange_coefficient: float = 1.3e-3,
        gustiness: float = 1.0,
        *,
        stability: bool = False,
        reference_height: float = 10.0,
        surface_heat_capacity: float = 1.0e7,
        lowest_layer_pressure_thickness: float = 5000.0,
        lowest_level: int | None = None,
        formula: SaturationFormula = "bolton",
        louis_b: float = 9.4,
        maximum_enhancement: float = 3.0,
        moisture: bool = True,
    ) -> None:
        super().__init__()
        self.moisture = moisture
        if not moisture:
            self.inputs = tuple(name for name in self.inputs if name != "specific_humidity")
        for name, value, units, hint in [
            ("heat_exchange_coefficient", heat_exchange_coefficient, "1", _COEFFICIENT_HINT),
            (
                "moisture_exchange_coefficient",
                moisture_exchange_coefficient,
                "1",
                _COEFFICIENT_HINT,
            ),
            ("gustiness", gustiness, "m s-1", "A gust velocity of about 1 m s-1 is typical."),
            ("reference_height", reference_height, "m", "Flux towers measure at a few metres."),
            ("surface_heat_capacity", surface_heat_capacity, "J m-2 K-1", "1e7 is 2.4 m of water."),
            ("lowest_layer_pressure_thickness", lowest_layer_pressure_thickness, "Pa", PASCAL_HINT),
        ]:
            check_positive(name, value, units, hint)
        check_choice("formula", formula, SATURATION_FORMULAS)
        # Parameters are kept in float64 and cast to the state's dtype where they are used.
        as64 = torch.float64
        self.heat_exchange_coefficient = nn.Parameter(
            torch.tensor(heat_exchange_coefficient, dtype=as64)
        )
        self.moisture_exchange_coefficient = nn.Parameter(
            torch.tensor(moisture_exchange_coefficient, dtype=as64)
        )
        self.gustiness = nn.Parameter(torch.tensor(gustiness, dtype=as64))
        self.stability = stability
        self.reference_height = reference_height
        self.surface_heat_capacity = surface_heat_capacity
        self.lowest_layer_mass = lowest_layer_pressure_thickness / gravity
        self.lowest_level = lowest_level
        self.formula = formula
        self.louis_b = louis_b
        self.maximum_enhancement = maximum_enhancement

    def _lowest(self, field: Tensor) -> Tensor:
        return field if self.lowest_level is None else field[..., self.lowest_level]

    def _spread(self, tendency: Tensor, like: Tensor) -> Tensor:
        if self.lowest_level is None:
            return tendency
        levels = like.shape[-1]
        index = torch.tensor(self.lowest_level % levels, device=like.device)
        one_hot = torch.nn.functional.one_hot(index, levels).to(like.dtype)
        return tendency.unsqueeze(-1) * one_hot

    def forward(self, state: State) -> tuple[Tendencies, Diagnostics]:
        """Fluxes and tendencies for ``state`` (see the class docstring for names and units)."""
        if self.moisture:
            surface_temperature, air_temperature_field, humidity_field, wind, surface_pressure = (
                self.require(state)
            )
        else:
            surface_temperature, air_temperature_field, wind, surface_pressure = self.require(state)
            humidity_field = torch.zeros_like(air_temperature_field)
        air_temperature = self._lowest(air_temperature_field)
        humidity = self._lowest(humidity_field)
        dtype = surface_temperature.dtype
        heat_coefficient = self.heat_exchange_coefficient.to(dtype)
        moisture_coefficient = self.moisture_exchange_coefficient.to(dtype)
        wind_effective = effective_wind_speed(wind, self.gustiness.to(dtype))
        density = (
            state["air_density"]
            if "air_density" in state
            else air_density(surface_pressure, air_temperature, humidity)
        )
        diagnostics: Diagnostics = {"effective_wind_speed": wind_effective}
        if self.stability:
            richardson = bulk_richardson_number(
                surface_temperature, air_temperature, wind_effective, self.reference_height
            )
            factor = stability_correction(
                richardson, louis_b=self.louis_b, maximum_enhancement=self.maximum_enhancement
            )
            heat_coefficient = heat_coefficient * factor
            moisture_coefficient = moisture_coefficient * factor
            diagnostics["bulk_richardson_number"] = richardson
            diagnostics["stability_factor"] = factor
        sensible = sensible_heat_flux(
            surface_temperature, air_temperature, wind_effective, heat_coefficient, density
        )
        latent = (
            latent_heat_flux(
                surface_temperature,
                humidity,
                wind_effective,
                moisture_coefficient,
                density,
                surface_pressure,
                formula=self.formula,
            )
            if self.moisture
            else torch.zeros_like(sensible)
        )
        evaporation = latent / latent_heat_vaporization
        layer_mass = self.lowest_layer_mass
        tendencies: Tendencies = {
            "surface_temperature": -(sensible + latent) / self.surface_heat_capacity,
            "air_temperature": self._spread(
                sensible / (heat_capacity_dry_air * layer_mass), air_temperature_field
            ),
            "specific_humidity": self._spread(evaporation / layer_mass, humidity_field),
        }
        diagnostics.update(
            sensible_heat_flux=sensible, latent_heat_flux=latent, evaporation_flux=evaporation
        )
        if not self.moisture:
            del tendencies["specific_humidity"]
        return tendencies, diagnostics
