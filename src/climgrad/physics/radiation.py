"""Gray two-stream radiation: longwave Schwarzschild equations on pressure levels; shortwave.

A gray atmosphere absorbs and emits longwave radiation with one absorption coefficient at all
wavelengths. In the two-stream (hemispheric-mean) approximation the upward and downward fluxes obey
the Schwarzschild equations in optical depth τ (increasing downward, τ = 0 at the top)

.. math::

    \\frac{dU}{d\\tau} = U - \\sigma T^4, \\qquad -\\frac{dD}{d\\tau} = D - \\sigma T^4,

with ``D = 0`` at the top and ``U = σ T_s⁴`` at the surface (a black surface); the diffusivity
factor of the hemispheric integral (about 1.66) is absorbed into ``τ``. The optical depth
follows the power law of Frierson, Held & Zurita-Gotor (2006, J. Atmos. Sci. 63, 2548), without
its linear term:

.. math:: \\tau(p) = \\tau_0 \\, (p / p_s)^n .

Layers are isothermal: across layer ``k`` (between interfaces ``k`` and ``k+1``) the transmissivity
is ``t_k = exp(-(τ_{k+1} - τ_k))`` and the layer emits ``(1 - t_k) σ T_k⁴`` each way, so

.. math::

    D_{k+1} = t_k D_k + (1 - t_k) B_k, \\qquad U_k = t_k U_{k+1} + (1 - t_k) B_k,
    \\qquad B_k = \\sigma T_k^4,

exactly the discretisation of benchmark B2.4, steps 1 to 6 and 9, of ``docs/benchmark_problems.md``.
Heating rates follow from the divergence of the net upward flux ``F = U - D``:
``dT_k/dt = g (F_{k+1} - F_k) / (c_p Δp_k)``. Shortwave radiation is absorbed at the surface only:
``(1 - α) Q`` with surface albedo ``α`` and insolation ``Q``.

Regime of validity: a gray, non-scattering, hemispherically isotropic atmosphere in local
thermodynamic equilibrium (Pierrehumbert 2010, *Principles of Planetary Climate*, ch. 4). It is a
conceptual model: real gases are not gray, so τ₀ and n are effective parameters to calibrate.

Layers are ordered from the top of the atmosphere (index 0) to the surface (index ``L-1``);
interfaces from the top (index 0, pressure 0 allowed) to the surface (index ``L``).

Three layers, per the climgrad contract: :func:`gray_longwave_fluxes_kernel` (the literal
recurrences, the reference for autograd); :class:`_EmissionOperatorFunction`, the exact
transmission-matrix form ``y = σT⁴ @ M + σT_s⁴ s`` with a hand-written backward that saves only its
inputs (``M`` and ``s`` depend on the optical depth alone and are built once by
:func:`transmission_matrices`, differentiated by autograd); :func:`gray_longwave_fluxes`
(validation, then ``.apply``). :class:`GrayRadiation` is the process. In a time loop with fixed
parameters, build the operator once (:func:`heating_rate_operator` gives heating rates and the
surface net flux directly) and call :func:`emission_operator` each step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from climgrad.constants import gravity, heat_capacity_dry_air, stefan_boltzmann
from climgrad.physics.process import Process
from climgrad.typing import Diagnostics, State, Tendencies
from climgrad.validation import (
    check_interface_pressure,
    check_last_dimension,
    check_positive,
    check_temperature_tensor,
)

__all__ = [
    "GrayRadiation",
    "absorbed_shortwave",
    "emission_operator",
    "emission_operator_kernel",
    "gray_longwave_fluxes",
    "gray_longwave_fluxes_kernel",
    "gray_longwave_fluxes_matrix_kernel",
    "heating_rate_operator",
    "interface_optical_depth",
    "layer_transmissivity",
    "radiative_heating_rate",
    "transmission_matrices",
]


# --------------------------------------------------------------------------------------------------
# Optical depth
# --------------------------------------------------------------------------------------------------


def interface_optical_depth(
    interface_pressure: Tensor,
    surface_optical_depth: Tensor | float,
    pressure_exponent: Tensor | float,
    surface_pressure: Tensor | float,
) -> Tensor:
    """Longwave optical depth at the interfaces, ``τ(p) = τ₀ (p / p_s)^n``.

    Written as ``τ₀ exp(n ln(p/p_s))`` where ``p > 0`` and exactly 0 where ``p = 0`` (the top of the
    atmosphere), so that the derivative in ``n`` is 0 there instead of ``0 · ln 0 = NaN``
    (benchmark B2.4 step 1).

    Args:
        interface_pressure: Interface pressures in Pa, ``(level + 1,)`` from the top (``p >= 0``).
        surface_optical_depth: ``τ₀``, the optical depth at ``p = p_s`` (dimensionless, >= 0).
        pressure_exponent: ``n``, dimensionless (> 0); about 4 for water vapour (scale height a
            quarter of the pressure scale height), 1 for a well-mixed absorber.
        surface_pressure: ``p_s`` in Pa.

    Returns:
        Optical depth ``(level + 1,)`` (or the broadcast shape), dimensionless.

    >>> import torch
    >>> p = torch.tensor([0.0, 5.0e4, 1.0e5], dtype=torch.float64)
    >>> interface_optical_depth(p, 4.0, 2.0, 1.0e5)
    tensor([0., 1., 4.], dtype=torch.float64)
    """
    positive = interface_pressure > 0
    safe_ratio = torch.where(positive, interface_pressure / surface_pressure, 1.0)
    powered = torch.exp(pressure_exponent * torch.log(safe_ratio))
    return torch.where(positive, surface_optical_depth * powered, 0.0)


def layer_transmissivity(optical_depth: Tensor) -> Tensor:
    """Layer transmissivity ``t_k = exp(-(τ_{k+1} - τ_k))`` from interface optical depths.

    Args:
        optical_depth: ``(..., level + 1)``, dimensionless, non-decreasing downward.

    Returns:
        ``(..., level)``, in (0, 1].
    """
    return torch.exp(-(optical_depth[..., 1:] - optical_depth[..., :-1]))


# --------------------------------------------------------------------------------------------------
# Kernels (plain torch, differentiable by autograd)
# --------------------------------------------------------------------------------------------------


def gray_longwave_fluxes_kernel(
    layer_temperature: Tensor, surface_temperature: Tensor, optical_depth: Tensor
) -> tuple[Tensor, Tensor]:
    """Upward and downward gray longwave fluxes by the two-stream recurrences (the reference).

    ``D_0 = 0``, ``D_{k+1} = t_k D_k + (1 - t_k) σT_k⁴``; ``U_L = σT_s⁴``,
    ``U_k = t_k U_{k+1} + (1 - t_k) σT_k⁴`` (benchmark B2.4 steps 2 to 4). One Python step per
    level and direction: clear, exact, slow under autograd (it records every level).

    Args:
        layer_temperature: ``(..., level)`` in K, top layer first.
        surface_temperature: ``(...)`` in K.
        optical_depth: Interface optical depth, ``(level + 1,)`` or ``(..., level + 1)``,
            dimensionless, ``τ_0`` at the top.

    Returns:
        ``(upward, downward)``, each ``(..., level + 1)`` in W m-2, interfaces from the top.
    """
    transmissivity = layer_transmissivity(optical_depth)
    emission = stefan_boltzmann * layer_temperature**4
    levels = layer_temperature.shape[-1]
    downward = [torch.zeros_like(surface_temperature)]
    for k in range(levels):
        t_k = transmissivity[..., k]
        downward.append(t_k * downward[-1] + (1.0 - t_k) * emission[..., k])
    upward = [stefan_boltzmann * surface_temperature**4]
    for k in range(levels - 1, -1, -1):
        t_k = transmissivity[..., k]
        upward.append(t_k * upward[-1] + (1.0 - t_k) * emission[..., k])
    return torch.stack(upward[::-1], dim=-1), torch.stack(downward, dim=-1)


def transmission_matrices(optical_depth: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Exact transmission matrices of the two-stream recurrences (the solution in closed form).

    ``D_j = Σ_{k<j} (1 - t_k) e^{-(τ_j - τ_{k+1})} B_k`` and
    ``U_j = e^{-(τ_L - τ_j)} σT_s⁴ + Σ_{k≥j} (1 - t_k) e^{-(τ_k - τ_j)} B_k`` (benchmark B2.4), so
    ``D = B @ down``, ``U = B @ up + σT_s⁴ · surface``. ``1 - t_k`` is formed with ``expm1`` so that
    optically thin layers near the top keep full relative precision.

    Args:
        optical_depth: ``(..., level + 1)``, dimensionless, non-decreasing downward.

    Returns:
        ``(down, up, surface)``: ``down`` and ``up`` of shape ``(..., level, level + 1)`` (layer,
        interface) and ``surface`` of shape ``(..., level + 1)``, all dimensionless.
    """
    levels = optical_depth.shape[-1] - 1
    tau_interface = optical_depth[..., None, :]  # τ_j, (..., 1, level + 1)
    tau_top = optical_depth[..., :-1, None]  # τ_k, (..., level, 1)
    tau_bottom = optical_depth[..., 1:, None]  # τ_{k+1}
    layer = torch.arange(levels, device=optical_depth.device)[:, None]
    interface = torch.arange(levels + 1, device=optical_depth.device)[None, :]
    below = layer < interface  # interface j lies below layer k: layer k feeds D_j
    # The exponents are <= 0 where used; zeroing them elsewhere keeps exp() finite for any τ.
    down_exp = torch.exp(torch.where(below, tau_bottom - tau_interface, 0.0)) * below
    up_exp = torch.exp(torch.where(below, 0.0, tau_interface - tau_top)) * ~below
    surface = torch.exp(optical_depth - optical_depth[..., -1:])
    one_minus_t = -torch.expm1(-(optical_depth[..., 1:] - optical_depth[..., :-1]))[..., None]
    return one_minus_t * down_exp, one_minus_t * up_exp, surface


def gray_longwave_fluxes_matrix_kernel(
    layer_temperature: Tensor, surface_temperature: Tensor, optical_depth: Tensor
) -> tuple[Tensor, Tensor]:
    """Upward and downward gray longwave fluxes by transmission matrices (exact, plain torch).

    The same fluxes as :func:`gray_longwave_fluxes_kernel` in closed form (see
    :func:`transmission_matrices`): two matrix products instead of ``2 L`` recurrence steps.

    Args:
        layer_temperature: ``(..., level)`` in K.
        surface_temperature: ``(...)`` in K.
        optical_depth: ``(level + 1,)`` or ``(..., level + 1)``, dimensionless.

    Returns:
        ``(upward, downward)``, each ``(..., level + 1)`` in W m-2.
    """
    down, up, surface = transmission_matrices(optical_depth)
    upward = emission_operator_kernel(layer_temperature, surface_temperature, up, surface)
    downward = emission_operator_kernel(
        layer_temperature, surface_temperature, down, torch.zeros_like(surface)
    )
    return upward, downward


def emission_operator_kernel(
    layer_temperature: Tensor, surface_temperature: Tensor, matrix: Tensor, surface_vector: Tensor
) -> Tensor:
    """``y = σT⁴ @ matrix + σT_s⁴ surface_vector``: any quantity linear in the emissions.

    Fluxes, net fluxes and heating rates of a gray atmosphere are all of this form (see
    :func:`transmission_matrices` and :func:`heating_rate_operator`). Plain torch (reference).

    Args:
        layer_temperature: ``(..., level)`` in K.
        surface_temperature: ``(...)`` in K.
        matrix: ``(level, output)`` shared by all columns, or ``(..., level, output)``; the units
            of the output per W m-2 of emission.
        surface_vector: ``(output,)`` or ``(..., output)``, likewise.

    Returns:
        ``(..., output)``.
    """
    emission = stefan_boltzmann * torch.square(torch.square(layer_temperature))
    surface_emission = stefan_boltzmann * torch.square(torch.square(surface_temperature))
    return torch.addcmul(
        _apply_matrix(emission, matrix), surface_emission[..., None], surface_vector
    )


def _apply_matrix(emission: Tensor, matrix: Tensor) -> Tensor:
    """``emission @ matrix`` with one matrix for all columns, or one per column."""
    if matrix.dim() == 2:
        return emission @ matrix
    return (emission[..., None, :] @ matrix).squeeze(-2)


def heating_rate_operator(
    matrices: tuple[Tensor, Tensor, Tensor], pressure_thickness: Tensor
) -> tuple[Tensor, Tensor]:
    """Operator mapping emissions to ``[heating rates (level), surface net upward flux]``.

    Heating ``g (F_{k+1} - F_k) / (c_p Δp_k)`` and ``F_L = σT_s⁴ - D_L`` are linear in the
    emissions, so with ``F = B @ (up - down) + E surface`` they are one matrix product per call of
    :func:`emission_operator` (built once per parameter value; the gradient to the optical depth
    flows back through this construction by autograd).

    Args:
        matrices: ``(down, up, surface)`` from :func:`transmission_matrices`.
        pressure_thickness: ``Δp_k``, ``(level,)`` in Pa.

    Returns:
        ``(matrix, surface_vector)`` of shapes ``(..., level, level + 1)`` and
        ``(..., level + 1)``: output columns ``0 .. L-1`` are heating rates in K s-1, column ``L``
        the net upward longwave flux at the surface in W m-2.
    """
    down, up, surface = matrices
    net = up - down
    scale = (gravity / heat_capacity_dry_air) / pressure_thickness
    heating = (net[..., 1:] - net[..., :-1]) * scale
    heating_surface = (surface[..., 1:] - surface[..., :-1]) * scale
    matrix = torch.cat([heating, net[..., -1:]], dim=-1)
    surface_vector = torch.cat([heating_surface, surface[..., -1:]], dim=-1)
    return matrix, surface_vector


# --------------------------------------------------------------------------------------------------
# Custom Function
# --------------------------------------------------------------------------------------------------


class _EmissionOperatorFunction(torch.autograd.Function):
    """``y = σT⁴ @ M + σT_s⁴ s`` with a fused backward that saves only the inputs.

    The longwave fluxes of a gray atmosphere are this linear operator of the emissions, with ``M``
    and ``s`` built from the optical depth once (:func:`transmission_matrices`), so a time loop
    calls this Function every step. With ``G = ∂ℓ/∂y``, ``B = σT⁴`` and ``E = σT_s⁴`` the backward
    is ``∂ℓ/∂T = 4σT³ (G Mᵀ)``, ``∂ℓ/∂T_s = 4σT_s³ (G s)``, ``∂ℓ/∂M = Bᵀ G``, ``∂ℓ/∂s = Eᵀ G``:
    three matrix products, with ``B`` recomputed rather than stored. Autograd through the
    recurrences (:func:`gray_longwave_fluxes_kernel`) instead records about ``6 L`` operations per
    call and keeps a column vector for each.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        layer_temperature: Tensor,
        surface_temperature: Tensor,
        matrix: Tensor,
        surface_vector: Tensor,
    ) -> Tensor:
        # σ is folded into the small operator rather than applied to every column.
        fourth_power = torch.square(torch.square(layer_temperature))
        surface_fourth_power = torch.square(torch.square(surface_temperature))
        return torch.addcmul(
            _apply_matrix(fourth_power, matrix * stefan_boltzmann),
            surface_fourth_power[..., None],
            surface_vector * stefan_boltzmann,
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        temperature, surface_temperature, matrix, surface_vector = ctx.saved_tensors
        needs = ctx.needs_input_grad
        shared = matrix.dim() == 2
        grads: list[Tensor | None] = [None] * 4
        if needs[0] or needs[2]:
            cube = torch.square(temperature) * temperature
            if needs[0]:
                scaled_matrix = matrix * (4.0 * stefan_boltzmann)
                if shared:
                    grad_fourth = grad @ scaled_matrix.mT
                else:
                    grad_fourth = (scaled_matrix @ grad[..., None]).squeeze(-1)
                grads[0] = (grad_fourth * cube).sum_to_size(temperature.shape)
            if needs[2]:
                fourth_power = cube * temperature
                if shared:
                    flat = fourth_power.reshape(-1, fourth_power.shape[-1])
                    grads[2] = (flat.mT @ grad.reshape(-1, grad.shape[-1])) * stefan_boltzmann
                else:
                    outer = fourth_power[..., :, None] * grad[..., None, :]
                    grads[2] = (outer * stefan_boltzmann).sum_to_size(matrix.shape)
        if needs[1] or needs[3]:
            surface_cube = torch.square(surface_temperature) * surface_temperature
            if needs[1]:
                grad_surface = (
                    (grad * surface_vector).sum(-1) if not shared else grad @ surface_vector
                )
                grads[1] = (grad_surface * surface_cube * (4.0 * stefan_boltzmann)).sum_to_size(
                    surface_temperature.shape
                )
            if needs[3]:
                surface_fourth = surface_cube * surface_temperature * stefan_boltzmann
                if shared:
                    flat_grad = grad.reshape(-1, grad.shape[-1])
                    grads[3] = surface_fourth.reshape(-1) @ flat_grad
                else:
                    grads[3] = (surface_fourth[..., None] * grad).sum_to_size(surface_vector.shape)
        return tuple(grads)


# --------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------


def emission_operator(
    layer_temperature: Tensor, surface_temperature: Tensor, matrix: Tensor, surface_vector: Tensor
) -> Tensor:
    """``σT⁴ @ matrix + σT_s⁴ surface_vector`` through the custom Function (no value checks).

    The per-step call of a time loop: build ``(matrix, surface_vector)`` once with
    :func:`transmission_matrices` (fluxes) or :func:`heating_rate_operator` (heating rates and the
    surface net flux), validate the state once with :func:`gray_longwave_fluxes`, then call this.

    Args:
        layer_temperature: ``(..., level)`` in K.
        surface_temperature: ``(...)`` in K.
        matrix: ``(level, output)`` or ``(..., level, output)``.
        surface_vector: ``(output,)`` or ``(..., output)``.

    Returns:
        ``(..., output)`` in the units of the operator per W m-2 of emission.
    """
    result: Tensor = _EmissionOperatorFunction.apply(
        layer_temperature, surface_temperature, matrix, surface_vector
    )
    return result


def gray_longwave_fluxes(
    layer_temperature: Tensor, surface_temperature: Tensor, optical_depth: Tensor
) -> tuple[Tensor, Tensor]:
    """Upward and downward gray longwave fluxes at the interfaces (two-stream, Schwarzschild).

    Solves ``D_{k+1} = t_k D_k + (1 - t_k) σT_k⁴`` (``D_0 = 0``) and
    ``U_k = t_k U_{k+1} + (1 - t_k) σT_k⁴`` (``U_L = σT_s⁴``), ``t_k = e^{-(τ_{k+1} - τ_k)}``, in
    the exact transmission-matrix form (:func:`transmission_matrices`, differentiated by autograd)
    with a hand-written backward for the fluxes (see the module docstring for the physics and its
    regime of validity). The outgoing longwave radiation is ``upward[..., 0]`` (with
    ``downward[..., 0] = 0``).

    Args:
        layer_temperature: Layer temperatures ``(..., level)`` in K, top layer first.
        surface_temperature: Surface (skin) temperature ``(...)`` in K; the surface is black.
        optical_depth: Interface optical depth, dimensionless, non-decreasing downward, ``τ = 0`` at
            the top; ``(level + 1,)`` shared by all columns (fast path) or ``(..., level + 1)``.
            See :func:`interface_optical_depth`.

    Returns:
        ``(upward, downward)``, each ``(..., level + 1)`` in W m-2, interfaces from the top.

    >>> import torch
    >>> t = torch.full((1, 3), 250.0, dtype=torch.float64)
    >>> ts = torch.full((1,), 250.0, dtype=torch.float64)
    >>> up, down = gray_longwave_fluxes(t, ts, torch.tensor([0.0, 0.5, 1.0, 2.0]).double())
    >>> bool(torch.allclose(up, torch.full_like(up, 5.670374419e-8 * 250.0**4)))
    True
    """
    for name, temperature in (
        ("layer_temperature", layer_temperature),
        ("surface_temperature", surface_temperature),
    ):
        check_temperature_tensor(name, temperature, minimum=0.0)
    levels = layer_temperature.shape[-1]
    if layer_temperature.shape[:-1] != surface_temperature.shape:
        raise ValueError(
            "`surface_temperature` must have the leading (column) shape of `layer_temperature`; "
            f"got {tuple(surface_temperature.shape)} and {tuple(layer_temperature.shape)}."
        )
    check_last_dimension(
        "optical_depth",
        optical_depth,
        levels + 1,
        f"interfaces (around the {levels} layers)",
        "Build it with `interface_optical_depth`.",
    )
    if optical_depth.dim() > 1 and optical_depth.shape[:-1] != layer_temperature.shape[:-1]:
        raise ValueError(
            "`optical_depth` must be (level + 1,) or have the column shape of `layer_temperature` "
            f"{tuple(layer_temperature.shape[:-1])}; got {tuple(optical_depth.shape)}."
        )
    check_positive(
        "layer optical thickness (optical_depth[..., 1:] - optical_depth[..., :-1])",
        optical_depth[..., 1:] - optical_depth[..., :-1],
        "1",
        "`optical_depth` must not decrease downward: check that the surface optical depth is "
        ">= 0 and that pressure increases from the top.",
        allow_zero=True,
    )
    down, up, surface = transmission_matrices(optical_depth)
    # One product for both directions: [up | down], with no surface term in D.
    both = emission_operator(
        layer_temperature,
        surface_temperature,
        torch.cat([up, down], dim=-1),
        torch.cat([surface, torch.zeros_like(surface)], dim=-1),
    )
    return both[..., : levels + 1], both[..., levels + 1 :]


def radiative_heating_rate(net_upward_flux: Tensor, pressure_thickness: Tensor) -> Tensor:
    """Heating rate from the divergence of the net upward flux on pressure levels.

    ``dT_k/dt = g (F_{k+1} - F_k) / (c_p Δp_k)``: a layer warms when more net upward flux enters at
    its base than leaves at its top (hydrostatic mass ``Δp/g`` per unit area).

    Args:
        net_upward_flux: ``F = U - D`` at the interfaces, ``(..., level + 1)`` in W m-2.
        pressure_thickness: ``Δp_k`` of each layer, ``(level,)`` or ``(..., level)`` in Pa.

    Returns:
        Heating rate ``(..., level)`` in K s-1.
    """
    flux_convergence = net_upward_flux[..., 1:] - net_upward_flux[..., :-1]
    return flux_convergence * (gravity / heat_capacity_dry_air) / pressure_thickness


def absorbed_shortwave(insolation: Tensor, surface_albedo: Tensor | float) -> Tensor:
    """Shortwave absorbed at the surface, ``(1 - α) Q`` (a transparent atmosphere).

    Args:
        insolation: Incoming shortwave at the top of the atmosphere ``Q``, ``(...)`` in W m-2.
        surface_albedo: ``α``, dimensionless in [0, 1].

    Returns:
        ``(...)`` in W m-2.
    """
    return (1.0 - surface_albedo) * insolation


# --------------------------------------------------------------------------------------------------
# Process
# --------------------------------------------------------------------------------------------------


class GrayRadiation(Process):
    """Gray radiation of a column: longwave heating of the layers and the surface energy budget.

    Tendencies: ``air_temperature`` ``g (F_{k+1} - F_k) / (c_p Δp_k)`` and ``surface_temperature``
    ``((1 - α) Q - F_L) / C_s`` (K s-1), where ``F_L = σT_s⁴ - D_L`` is the net upward longwave flux
    at the surface (benchmark B2.4 steps 1 to 6 and 9; the sensible heat flux belongs to the surface
    process). Diagnostics (W m-2): ``upward_longwave_flux`` and ``downward_longwave_flux``
    ``(..., level + 1)``, ``net_upward_longwave_flux``, ``outgoing_longwave_radiation`` ``(...)``,
    ``absorbed_shortwave`` ``(...)``; ``optical_depth`` ``(level + 1,)``.

    State: ``air_temperature`` ``(..., level)`` K, ``surface_temperature`` ``(...)`` K and
    ``insolation`` ``(...)`` W m-2 (absorbed at the surface after reflection by the albedo).

    Learnable parameters (SI, dimensionless here): ``surface_optical_depth`` τ₀,
    ``pressure_exponent`` n, ``surface_albedo`` α.

    Args:
        interface_pressure: ``(level + 1,)`` in Pa, increasing from the top (``p_0 >= 0``) to the
            surface (``p_L``, which is also ``p_s`` in ``τ = τ₀ (p/p_s)^n``).
        surface_heat_capacity: ``C_s`` of the surface slab in J m-2 K-1 (1e7: a 2.4 m water layer).
        surface_optical_depth: Initial τ₀.
        pressure_exponent: Initial n.
        surface_albedo: Initial α.
    """

    inputs = ("air_temperature", "surface_temperature", "insolation")
    interface_pressure: Tensor

    def __init__(
        self,
        interface_pressure: Tensor,
        surface_heat_capacity: float = 1.0e7,
        surface_optical_depth: float = 4.0,
        pressure_exponent: float = 4.0,
        surface_albedo: float = 0.3,
    ) -> None:
        super().__init__()
        pressure = check_interface_pressure(interface_pressure)
        check_positive(
            "surface_heat_capacity", surface_heat_capacity, "J m-2 K-1", "1e7 is 2.4 m of water."
        )
        self.register_buffer("interface_pressure", pressure)
        self.surface_heat_capacity = float(surface_heat_capacity)
        #: τ₀, longwave optical depth at the surface pressure (dimensionless).
        self.surface_optical_depth = nn.Parameter(torch.tensor(float(surface_optical_depth)))
        #: n, exponent of the pressure dependence of the optical depth (dimensionless).
        self.pressure_exponent = nn.Parameter(torch.tensor(float(pressure_exponent)))
        #: α, surface albedo for shortwave radiation (dimensionless, 0 to 1).
        self.surface_albedo = nn.Parameter(torch.tensor(float(surface_albedo)))

    def optical_depth(self, dtype: torch.dtype | None = None) -> Tensor:
        """Interface optical depth ``(level + 1,)`` from the current parameters, in ``dtype``."""
        dtype = dtype or self.surface_optical_depth.dtype
        pressure = self.interface_pressure.to(dtype)
        return interface_optical_depth(
            pressure,
            self.surface_optical_depth.to(dtype),
            self.pressure_exponent.to(dtype),
            pressure[-1],
        )

    def forward(self, state: State) -> tuple[Tendencies, Diagnostics]:
        temperature, surface_temperature, insolation = self.require(state)
        dtype = temperature.dtype  # the state's precision rules, whatever the parameters' dtype
        tau = self.optical_depth(dtype)
        upward, downward = gray_longwave_fluxes(temperature, surface_temperature, tau)
        net = upward - downward
        pressure = self.interface_pressure.to(dtype)
        heating = radiative_heating_rate(net, pressure[1:] - pressure[:-1])
        shortwave = absorbed_shortwave(insolation, self.surface_albedo.to(dtype))
        surface_tendency = (shortwave - net[..., -1]) / self.surface_heat_capacity
        tendencies = {"air_temperature": heating, "surface_temperature": surface_tendency}
        diagnostics = {
            "upward_longwave_flux": upward,
            "downward_longwave_flux": downward,
            "net_upward_longwave_flux": net,
            "outgoing_longwave_radiation": upward[..., 0],
            "absorbed_shortwave": shortwave,
            "optical_depth": tau,
        }
        return tendencies, diagnostics
