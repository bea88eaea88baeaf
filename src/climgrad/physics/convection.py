"""Dry convection: convective adjustment to a critical lapse rate, and Betts–Miller relaxation.

Both schemes work on pressure levels, layers ordered from the top (index 0) to the surface
(index ``L-1``). A profile with constant lapse rate ``Γ = -dT/dz`` in hydrostatic balance is
``T ∝ p^κ_c`` with ``κ_c = R_d Γ / g`` (for ``Γ = g/c_p``, the dry adiabat, ``κ_c = R_d/c_p``).
So ``θ_k = T_k (p_ref/p_k)^κ_c`` (a potential temperature for the lapse rate ``Γ``) is constant in
a column at the critical lapse rate, increases upward in a column that is more stable, and a
column is steeper than critical (unstable) wherever ``θ`` decreases upward.

**Dry convective adjustment** (Manabe & Strickler 1964, J. Atmos. Sci. 21, 361; the scheme of
climlab's ``ConvectiveAdjustment``): mix unstable layers until no layer pair is steeper than ``Γ``,
conserving the column enthalpy ``Σ_k c_p T_k Δp_k / g``. Mixing layers to a common ``θ`` while
conserving enthalpy and repeating until stable is the weighted isotonic regression of ``θ``
(non-increasing with ``k``, weights ``m_k π_k`` with ``m_k = Δp_k / g`` and
``π_k = (p_k/p_ref)^κ_c``); it has the closed form (Barlow et al. 1972, *Statistical Inference
under Order Restrictions*, thm. 1.4)

.. math:: θ'_k = \\min_{i \\le k} \\max_{j \\ge k} \\frac{\\sum_{l=i}^{j} m_l T_l}
                                                     {\\sum_{l=i}^{j} m_l π_l},

and the adjusted profile is constant in ``θ`` on blocks of adjacent layers:
``T'_k = π_k Σ_b m T / Σ_b m π`` for the block ``b`` holding ``k``. The adjusted state is
piecewise smooth in ``T`` and ``Γ``; its exact derivative is that of the block average for the
blocks found in the forward pass (the active set; equivalently the implicit-function theorem on
the active constraints ``θ'_k = θ'_{k+1}``), which is what the backward computes, instead of
differentiating an iteration.

**Betts–Miller relaxation** (Betts 1986, Q. J. R. Meteorol. Soc. 112, 677; Betts & Miller 1986,
dry part; exactly benchmark B2.4 step 8): relax the column toward the reference profile
``T^ref_k = T_{L-1} (p_k / p_{L-1})^κ_c`` with timescale ``τ_c``, switched on smoothly with
logistic weights ``w_k = logistic((T^ref_k - T_k)/δ)`` (``w_{L-1} = 1``) and shifted so that the
column enthalpy is conserved:

.. math::

    C_k = w_k (T^{ref}_k + ΔT - T_k) / τ_c, \\qquad
    ΔT = -\\frac{\\sum_k w_k (T^{ref}_k - T_k)}{\\sum_k w_k},

so ``Σ_k C_k = 0`` for layers of equal mass (B2 has equal ``Δp``).

Regime of validity: dry (or effectively dry) convection in a hydrostatic column; the lapse rate is
a parameter, not a moist adiabat, so moist convection is represented only through an effective
``Γ_c`` (about 6.5 K km-1 in the tropics, between the moist and dry adiabats).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from climgrad.autograd.smooth import GradientMode, check_mode
from climgrad.autograd.tracing import without_jvp
from climgrad.constants import Constant, gas_constant_dry_air, gravity, reference_surface_pressure
from climgrad.physics.process import Process
from climgrad.typing import Diagnostics, State, Tendencies
from climgrad.validation import (
    check_last_dimension,
    check_positive,
    check_pressure_levels,
    check_temperature_tensor,
)

__all__ = [
    "BettsMillerConvection",
    "DryConvectiveAdjustment",
    "betts_miller_kernel",
    "betts_miller_relaxation",
    "betts_miller_tendency",
    "dry_adjustment_kernel",
    "dry_adjustment_smooth_kernel",
    "dry_convective_adjustment",
    "lapse_rate_exponent",
    "standard_lapse_rate",
]

standard_lapse_rate = Constant(
    6.5e-3,
    "K m-1",
    "ICAO standard atmosphere (ISO 2533:1975), troposphere",
    "critical lapse rate of the standard tropical-mean troposphere",
)


def lapse_rate_exponent(lapse_rate: Tensor | float) -> Tensor | float:
    """``κ_c = R_d Γ / g``: the exponent of ``T ∝ p^κ_c`` for a hydrostatic constant-lapse profile.

    Args:
        lapse_rate: ``Γ = -dT/dz`` in K m-1 (6.5e-3 for the standard atmosphere).

    Returns:
        ``κ_c``, dimensionless (0.19 for 6.5 K km-1; ``R_d/c_p = 0.286`` for the dry adiabat).
    """
    return lapse_rate * (gas_constant_dry_air / gravity)


def _check_profile(name: str, temperature: Tensor, pressure: Tensor) -> None:
    """The column checks both schemes share: a kelvin profile on increasing layer pressures."""
    check_temperature_tensor(name, temperature, minimum=0.0)
    check_last_dimension(
        "layer_pressure", pressure, temperature.shape[-1], f"layers (those of `{name}`)"
    )
    check_pressure_levels("layer_pressure", pressure)


# ==================================================================================================
# (a) Dry convective adjustment
# ==================================================================================================


def _block_averages(weighted_temperature: Tensor, weight: Tensor) -> Tensor:
    """``A[..., i, j] = Σ_{l=i..j} m T / Σ_{l=i..j} m π`` for ``i <= j``; finite junk below."""
    zero = torch.zeros_like(weighted_temperature[..., :1])
    numerator_prefix = torch.cat([zero, weighted_temperature.cumsum(-1)], dim=-1)
    weight_prefix = torch.cat([zero, weight.cumsum(-1)], dim=-1)
    levels = weight.shape[-1]
    valid = torch.ones(levels, levels, dtype=torch.bool, device=weight.device).triu()
    numerator = numerator_prefix[..., None, 1:] - numerator_prefix[..., :-1, None]
    denominator = weight_prefix[..., None, 1:] - weight_prefix[..., :-1, None]
    return numerator / torch.where(valid, denominator, 1.0)


def dry_adjustment_kernel(temperature: Tensor, exner: Tensor, layer_mass: Tensor) -> Tensor:
    """Enthalpy-conserving dry convective adjustment by the min–max formula (reference kernel).

    ``θ'_k = min_{i<=k} max_{j>=k} Σ_{i..j} m T / Σ_{i..j} m π`` and ``T' = π θ'`` (see the module
    docstring). Plain torch: autograd differentiates through the selected block averages, which
    is the exact (active-set) derivative, but it materialises and keeps ``(..., level, level)``
    tensors.

    Args:
        temperature: ``(..., level)`` in K, top first.
        exner: ``π_k = (p_k/p_ref)^κ_c``, ``(level,)`` or ``(..., level)``, dimensionless.
        layer_mass: ``m_k = Δp_k/g`` (or ``Δp_k``: only ratios matter), ``(level,)`` or
            ``(..., level)``, positive.

    Returns:
        Adjusted temperature ``(..., level)`` in K.
    """
    mass = torch.broadcast_to(layer_mass, temperature.shape)
    averages = _block_averages(mass * temperature, mass * exner)
    levels = temperature.shape[-1]
    upper = torch.ones(levels, levels, dtype=torch.bool, device=temperature.device).triu()
    lowest = torch.finfo(temperature.dtype).min
    averages = torch.where(upper, averages, lowest)
    # max over j >= k for each start i: a reversed running maximum along j.
    suffix_max = torch.cummax(averages.flip(-1), dim=-1).values.flip(-1)
    suffix_max = torch.where(upper, suffix_max, torch.finfo(temperature.dtype).max)
    adjusted_theta = suffix_max.amin(dim=-2)
    return exner * adjusted_theta


def dry_adjustment_smooth_kernel(
    temperature: Tensor, exner: Tensor, layer_mass: Tensor, width: float
) -> Tensor:
    """Smooth surrogate of :func:`dry_adjustment_kernel`: soft min and soft max of width ``width``.

    ``max`` and ``min`` of the min–max formula become ``w log Σ exp(·/w)`` and
    ``-w log Σ exp(-·/w)`` (``w = width`` in K of ``θ``), then a uniform shift of ``θ'`` restores
    the column enthalpy exactly. For two arguments the soft maximum is
    ``b + w softplus((a - b)/w)``, the ``"smooth"`` surrogate of
    :func:`climgrad.autograd.smooth.positive_part`; this is its n-ary form. Smooth (C∞) in the
    temperature and the critical lapse rate, so a column a little more stable than critical
    still passes a (small) gradient to ``Γ_c``; the profile differs from the exact adjustment by
    ``O(width · log L)`` before the shift.

    Args:
        temperature: ``(..., level)`` in K.
        exner: ``(level,)`` or ``(..., level)``, dimensionless.
        layer_mass: ``(level,)`` or ``(..., level)``, positive.
        width: Smoothing width in K (positive).

    Returns:
        ``(..., level)`` in K.
    """
    mass = torch.broadcast_to(layer_mass, temperature.shape)
    weight = mass * exner
    averages = _block_averages(mass * temperature, weight)
    levels = temperature.shape[-1]
    upper = torch.ones(levels, levels, dtype=torch.bool, device=temperature.device).triu()
    # A large finite stand-in for -inf: logcumsumexp's gradient at -inf is not always NaN-free.
    excluded = -torch.finfo(temperature.dtype).max / 8
    scaled = torch.where(upper, averages / width, excluded)
    soft_suffix_max = torch.logcumsumexp(scaled.flip(-1), dim=-1).flip(-1)
    soft_min = -torch.logsumexp(torch.where(upper, -soft_suffix_max, excluded), dim=-2)
    theta = width * soft_min
    # Uniform θ shift: keeps the shape, restores Σ m π θ' = Σ m T.
    shift = ((mass * temperature).sum(-1) - (weight * theta).sum(-1)) / weight.sum(-1)
    return exner * (theta + shift[..., None])


def _adjustment_blocks(temperature: Tensor, exner: Tensor, mass: Tensor) -> Tensor:
    """Block label of every layer, 0 at the top, from the min–max formula evaluated in float64.

    Adjacent layers share a block when their adjusted ``θ'`` agree to a few rounding errors of
    the prefix sums (``64 L ε |θ|``); a block boundary is where ``θ'`` strictly drops.
    """
    with torch.no_grad():
        t64, pi64, m64 = temperature.double(), exner.double(), mass.double()
        theta = dry_adjustment_kernel(t64, pi64, m64) / pi64
        levels = temperature.shape[-1]
        tolerance = 64.0 * levels * torch.finfo(torch.float64).eps * theta.abs().amax(-1, True)
        boundary = (theta[..., :-1] - theta[..., 1:]) > tolerance
        start = torch.zeros_like(boundary[..., :1], dtype=torch.long)
        return torch.cat([start, boundary.long().cumsum(-1)], dim=-1)


def _segment_sum(values: Tensor, labels: Tensor) -> Tensor:
    """Sum of ``values`` over each block, returned per block slot ``(..., level)``."""
    return torch.zeros_like(values).scatter_add(-1, labels, values)


class _DryAdjustmentFunction(torch.autograd.Function):
    """Dry adjustment with the active-set (implicit-function) derivative.

    The forward finds the blocks (in float64, without gradient) and forms the block averages
    ``θ'_b = Σ_b m T / Σ_b m π`` by segment sums. The backward differentiates that closed form
    with the blocks held fixed: with ``G = ∂ℓ/∂T'`` and ``A_b = Σ_b G π / Σ_b m π``,
    ``∂ℓ/∂T_k = m_k A_b``, ``∂ℓ/∂π_k = θ'_b (G_k - m_k A_b)``,
    ``∂ℓ/∂m_k = A_b (T_k - π_k θ'_b)`` (the last two exactly 0 for a layer alone in its block).
    It saves the inputs and the integer labels, ``O(level)`` per column, where autograd through
    the kernel keeps ``O(level²)``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(temperature: Tensor, exner: Tensor, layer_mass: Tensor) -> tuple[Tensor, Tensor]:
        exner_full = torch.broadcast_to(exner, temperature.shape)
        mass = torch.broadcast_to(layer_mass, temperature.shape)
        labels = _adjustment_blocks(temperature, exner_full, mass)
        block_enthalpy = _segment_sum(mass * temperature, labels)
        block_weight = _segment_sum(mass * exner_full, labels)
        theta = torch.gather(
            block_enthalpy / torch.where(block_weight > 0, block_weight, 1.0), -1, labels
        )
        return exner_full * theta, labels

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        temperature, exner, layer_mass = inputs
        _, labels = output
        ctx.mark_non_differentiable(labels)
        ctx.save_for_backward(temperature, exner, layer_mass, labels)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: Any, grad_adjusted: Tensor, _grad_labels: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        temperature, exner, layer_mass, labels = ctx.saved_tensors
        needs = ctx.needs_input_grad
        exner_full = torch.broadcast_to(exner, temperature.shape)
        mass = torch.broadcast_to(layer_mass, temperature.shape)
        block_weight = _segment_sum(mass * exner_full, labels)
        safe_weight = torch.where(block_weight > 0, block_weight, 1.0)
        per_block = _segment_sum(grad_adjusted * exner_full, labels) / safe_weight
        per_layer = torch.gather(per_block, -1, labels)  # A_b at each layer
        grad_temperature = grad_exner = grad_mass = None
        if needs[0]:
            grad_temperature = mass * per_layer
        if needs[1] or needs[2]:
            theta = torch.gather(_segment_sum(mass * temperature, labels) / safe_weight, -1, labels)
            # A layer alone in its block is untouched (T' = T): its π and m gradients are exactly
            # zero, which the general formula only reaches up to rounding.
            block_size = torch.gather(_segment_sum(torch.ones_like(mass), labels), -1, labels)
            mixed = block_size > 1
            if needs[1]:
                grad_exner = torch.where(mixed, theta * (grad_adjusted - mass * per_layer), 0.0)
                grad_exner = grad_exner.sum_to_size(exner.shape)
            if needs[2]:
                grad_mass = torch.where(mixed, per_layer * (temperature - exner_full * theta), 0.0)
                grad_mass = grad_mass.sum_to_size(layer_mass.shape)
        return grad_temperature, grad_exner, grad_mass


def dry_convective_adjustment(
    temperature: Tensor,
    layer_pressure: Tensor,
    pressure_thickness: Tensor,
    critical_lapse_rate: Tensor | float,
    mode: GradientMode = "exact",
    width: float = 0.5,
) -> Tensor:
    """Adjust a column to be nowhere steeper than the critical lapse rate, conserving enthalpy.

    Returns ``T'`` with ``θ' = T' (p_ref/p)^κ_c`` non-increasing downward, ``κ_c = R_d Γ_c / g``,
    ``Σ_k Δp_k T'_k = Σ_k Δp_k T_k``, and ``T' = T`` in every stable stretch of the column (the
    weighted isotonic regression of ``θ``; Manabe & Strickler 1964; see the module docstring).

    Gradient modes (the switch is "does this layer pair convect"):

    ``"exact"``
        True derivative of the adjusted state with the mixed blocks held fixed (active set /
        implicit function). Live: ``temperature`` always; ``critical_lapse_rate`` only through
        columns that actually mix (a fully stable column gives it exactly zero gradient).
    ``"smooth"``
        The forward is :func:`dry_adjustment_smooth_kernel` (soft min/max of ``width`` K, then an
        exact enthalpy fix) and the gradient is its exact gradient. Live: ``temperature`` and
        ``critical_lapse_rate`` in every column (small where a column is far from critical).
    ``"straight_through"``
        The forward is the exact adjustment; the backward is the gradient of the smooth surrogate.
        Live as in ``"smooth"``; biased, so ``gradcheck`` does not apply.

    Args:
        temperature: ``(..., level)`` in K, top layer first.
        layer_pressure: Mid-layer pressure ``(level,)`` in Pa, increasing downward.
        pressure_thickness: ``Δp_k`` ``(level,)`` in Pa (the layer masses up to ``1/g``).
        critical_lapse_rate: ``Γ_c`` in K m-1 (6.5e-3 standard; 9.77e-3 = g/c_p dry adiabat).
        mode: ``"exact"``, ``"smooth"`` or ``"straight_through"``.
        width: Soft min/max width in K for ``"smooth"`` and ``"straight_through"``.

    Returns:
        Adjusted temperature ``(..., level)`` in K.

    >>> import torch
    >>> p = torch.tensor([2.5e4, 7.5e4], dtype=torch.float64)
    >>> t = torch.tensor([200.0, 290.0], dtype=torch.float64)  # far steeper than 6.5 K/km
    >>> adjusted = dry_convective_adjustment(t, p, torch.full((2,), 5.0e4).double(), 6.5e-3)
    >>> abs(float((adjusted - t).sum())) < 1e-10  # equal layer masses: the mean is kept
    True
    """
    check_mode(mode)
    _check_profile("temperature", temperature, layer_pressure)
    check_positive("pressure_thickness", pressure_thickness, "Pa", "Give the layer thicknesses Δp.")
    check_positive("width", width, "K", "Half a kelvin is typical.")
    lapse = torch.as_tensor(critical_lapse_rate, dtype=temperature.dtype, device=temperature.device)
    check_positive("critical_lapse_rate", lapse, "K m-1", "Use K m-1: 6.5 K/km is 6.5e-3.")
    pressure = layer_pressure.to(temperature.dtype)
    exner = (pressure / reference_surface_pressure) ** lapse_rate_exponent(lapse)
    mass = (pressure_thickness / gravity).to(temperature.dtype)
    if mode == "smooth":
        return dry_adjustment_smooth_kernel(temperature, exner, mass, width)
    adjusted, _ = _DryAdjustmentFunction.apply(temperature, exner, mass)
    if mode == "exact":
        return adjusted
    surrogate = dry_adjustment_smooth_kernel(temperature, exner, mass, width)
    return adjusted.detach() + (surrogate - surrogate.detach())


class DryConvectiveAdjustment(Process):
    """Dry convective adjustment as a process: tendency ``(T' - T) / adjustment_time``.

    Like climlab's ``ConvectiveAdjustment``, the adjustment acts within one time step: with
    ``adjustment_time`` equal to the model time step, a forward-Euler step lands on the adjusted
    profile. Tendency ``air_temperature`` in K s-1; diagnostic ``adjusted_temperature`` in K.

    Learnable parameter: ``critical_lapse_rate`` ``Γ_c`` in K m-1. Which gradients are live in
    which ``mode`` is listed in :func:`dry_convective_adjustment`.

    Args:
        layer_pressure: Mid-layer pressures ``(level,)`` in Pa, increasing downward.
        pressure_thickness: ``(level,)`` in Pa.
        adjustment_time: Time over which the adjustment is applied, in s (the model step).
        critical_lapse_rate: Initial ``Γ_c`` in K m-1.
        mode: Gradient mode of the convective switch.
        width: Surrogate width in K (``"smooth"``, ``"straight_through"``).
    """

    inputs = ("air_temperature",)
    layer_pressure: Tensor
    pressure_thickness: Tensor

    def __init__(
        self,
        layer_pressure: Tensor,
        pressure_thickness: Tensor,
        adjustment_time: float,
        critical_lapse_rate: float = standard_lapse_rate,
        mode: GradientMode = "exact",
        width: float = 0.5,
    ) -> None:
        super().__init__()
        check_mode(mode)
        check_positive("adjustment_time", adjustment_time, "s", "Use the model time step.")
        self.register_buffer("layer_pressure", torch.as_tensor(layer_pressure))
        self.register_buffer("pressure_thickness", torch.as_tensor(pressure_thickness))
        self.adjustment_time = float(adjustment_time)
        self.mode: GradientMode = mode
        self.width = float(width)
        #: Γ_c, critical lapse rate in K m-1.
        self.critical_lapse_rate = nn.Parameter(torch.tensor(float(critical_lapse_rate)))

    def forward(self, state: State) -> tuple[Tendencies, Diagnostics]:
        (temperature,) = self.require(state)
        adjusted = dry_convective_adjustment(
            temperature,
            self.layer_pressure,
            self.pressure_thickness,
            self.critical_lapse_rate.to(temperature.dtype),
            mode=self.mode,
            width=self.width,
        )
        tendency = (adjusted - temperature) / self.adjustment_time
        return {"air_temperature": tendency}, {"adjusted_temperature": adjusted}


# ==================================================================================================
# (b) Betts–Miller relaxation
# ==================================================================================================


def betts_miller_kernel(
    temperature: Tensor, reference_ratio: Tensor, relaxation_time: Tensor, width: float
) -> Tensor:
    """Betts–Miller dry relaxation tendency in plain torch (reference kernel, B2.4 step 8).

    Args:
        temperature: ``(..., level)`` in K, top first; the last layer anchors the reference.
        reference_ratio: ``(p_k / p_{L-1})^κ_c``, ``(level,)``, dimensionless (1 at the last layer).
        relaxation_time: ``τ_c`` in s (scalar tensor).
        width: ``δ`` in K, width of the logistic switch.

    Returns:
        Tendency ``(..., level)`` in K s-1.
    """
    reference = temperature[..., -1:] * reference_ratio
    departure = reference - temperature
    weight = torch.sigmoid(departure / width)
    weight = torch.cat([weight[..., :-1], torch.ones_like(weight[..., -1:])], dim=-1)
    shift = -(weight * departure).sum(-1, keepdim=True) / weight.sum(-1, keepdim=True)
    return weight * (departure + shift) / relaxation_time


class _BettsMillerFunction(torch.autograd.Function):
    """Betts–Miller tendency with a fused backward.

    With ``d = T^ref - T``, ``e = d + ΔT`` and ``G = ∂ℓ/∂C``:
    ``∂ℓ/∂d = (G - Σ G w / Σ w) q / τ_c`` with ``q = w (1 + e (1 - w)/δ)`` (``1 - w = 0`` at the
    anchor layer, whose weight is fixed at 1), and ``∂ℓ/∂τ_c = -Σ G C / τ_c``; the reference
    ``T_{L-1} r_k`` routes ``∂ℓ/∂d`` to ``T_{L-1}`` and ``r``. The forward forms ``q / τ_c`` (three
    elementwise operations) so that the backward is about seven full-size operations; it saves
    ``w``, ``q / τ_c``, the output and the ``(..., 1)`` anchor temperature and weight sum (autograd
    through the kernel keeps about eight ``(..., level)`` tensors and runs about twice as many
    operations).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        temperature: Tensor, reference_ratio: Tensor, relaxation_time: Tensor, width: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        anchor = temperature[..., -1:]
        departure = anchor * reference_ratio - temperature
        weight = torch.sigmoid(departure / width)
        weight[..., -1] = 1.0
        total_weight = weight.sum(-1, keepdim=True)
        shift = torch.linalg.vecdot(weight, departure)[..., None] / total_weight
        shifted = departure - shift
        rate = weight / relaxation_time  # w / τ_c
        tendency = rate * shifted
        # q / τ_c with q = w (1 + e (1 - w) / δ): all the backward needs besides w.
        sensitivity = rate * torch.addcmul(
            torch.ones_like(weight), shifted, 1.0 - weight, value=1.0 / width
        )
        return tendency, weight, sensitivity, total_weight

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        temperature, reference_ratio, relaxation_time, _ = inputs
        tendency, weight, sensitivity, total_weight = output
        ctx.mark_non_differentiable(weight, sensitivity, total_weight)
        anchor = temperature[..., -1:]
        ctx.save_for_backward(
            anchor, reference_ratio, relaxation_time, tendency, weight, sensitivity, total_weight
        )
        ctx.save_for_forward(
            anchor, reference_ratio, relaxation_time, tendency, weight, sensitivity, total_weight
        )

    @staticmethod
    def jvp(
        ctx: Any,
        tangent_temperature: Tensor | None,
        tangent_ratio: Tensor | None,
        tangent_time: Tensor | None,
        _width: Any,
    ) -> tuple[Tensor, None, None, None]:
        """Forward mode: ``dC = s ⊙ dd - w Σ(s ⊙ dd) / Σw - C dτ_c / τ_c`` (``s = q / τ_c``).

        The transpose of the backward's ``∂ℓ/∂d``; ``dd = dT_{L-1} r + T_{L-1} dr - dT``.
        """
        (anchor, reference_ratio, relaxation_time, tendency, weight, sensitivity, total_weight) = (
            ctx.saved_tensors
        )
        departure = torch.zeros_like(tendency)
        if tangent_temperature is not None:
            departure = tangent_temperature[..., -1:] * reference_ratio - tangent_temperature
        if tangent_ratio is not None:
            departure = departure + anchor * tangent_ratio
        scaled = sensitivity * departure
        result = scaled - weight * scaled.sum(-1, keepdim=True) / total_weight
        if tangent_time is not None:
            result = result - tendency * (tangent_time / relaxation_time)
        return result, None, None, None

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: Any, grad_tendency: Tensor, *_unused: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        (anchor, reference_ratio, relaxation_time, tendency, weight, sensitivity, total_weight) = (
            ctx.saved_tensors
        )
        needs = ctx.needs_input_grad
        mean = torch.linalg.vecdot(grad_tendency, weight)[..., None] / total_weight
        grad_departure = (grad_tendency - mean) * sensitivity
        grad_temperature = grad_ratio = grad_time = None
        shared = reference_ratio.dim() == 1  # matrix-vector products beat strided reductions
        levels = grad_departure.shape[-1]
        if needs[0]:
            grad_temperature = -grad_departure
            if shared:
                grad_temperature[..., -1] += grad_departure @ reference_ratio
            else:
                grad_temperature[..., -1] += (grad_departure * reference_ratio).sum(-1)
        if needs[1]:
            if shared:
                grad_ratio = anchor.reshape(-1) @ grad_departure.reshape(-1, levels)
            else:
                grad_ratio = (grad_departure * anchor).sum_to_size(reference_ratio.shape)
        if needs[2]:
            flat_grad, flat_tendency = grad_tendency.reshape(-1), tendency.reshape(-1)
            grad_time = (-(flat_grad @ flat_tendency) / relaxation_time).reshape(
                relaxation_time.shape
            )
        return grad_temperature, grad_ratio, grad_time, None


# torch.compile cannot trace a custom jvp; the twin serves compiled graphs (see autograd.tracing).
_BettsMillerForTracing = without_jvp(_BettsMillerFunction)


def betts_miller_relaxation(
    temperature: Tensor, reference_ratio: Tensor, relaxation_time: Tensor, width: float
) -> Tensor:
    """Betts–Miller tendency through the custom Function, without value checks.

    The per-step call of a time loop: form ``reference_ratio = (p_k/p_{L-1})^κ_c`` once per
    parameter value, validate once with :func:`betts_miller_tendency`, then call this.

    Args:
        temperature: ``(..., level)`` in K.
        reference_ratio: ``(level,)``, dimensionless, 1 at the last layer.
        relaxation_time: ``τ_c`` in s (scalar tensor).
        width: ``δ`` in K.

    Returns:
        Tendency ``(..., level)`` in K s-1.
    """
    function = _BettsMillerForTracing if torch.compiler.is_compiling() else _BettsMillerFunction
    tendency: Tensor = function.apply(temperature, reference_ratio, relaxation_time, width)[0]
    return tendency


def betts_miller_tendency(
    temperature: Tensor,
    layer_pressure: Tensor,
    critical_lapse_rate: Tensor | float,
    relaxation_time: Tensor | float,
    width: float = 1.0,
) -> Tensor:
    """Betts–Miller-style dry convective relaxation toward a constant-lapse-rate profile.

    ``C_k = w_k (T^ref_k + ΔT - T_k) / τ_c`` with ``T^ref_k = T_{L-1} (p_k/p_{L-1})^κ_c``,
    ``κ_c = R_d Γ_c / g``, ``w_k = logistic((T^ref_k - T_k)/δ)``, ``w_{L-1} = 1`` and the enthalpy
    shift ``ΔT = -Σ w (T^ref - T) / Σ w`` (Betts 1986; benchmark B2.4 step 8; see the module
    docstring). Smooth by construction: ``logistic(x/δ)`` equals the ``"smooth"``
    :func:`climgrad.autograd.smooth.step` of width ``2δ`` (B2 prescribes the logistic form); every
    parameter is live in every column, so it has no gradient mode. ``Σ_k C_k = 0`` (enthalpy
    conserved for layers of equal mass).

    Args:
        temperature: ``(..., level)`` in K, top first; the lowest layer is the parcel source.
        layer_pressure: Mid-layer pressures ``(level,)`` in Pa, increasing downward.
        critical_lapse_rate: ``Γ_c`` in K m-1 (scalar; learnable).
        relaxation_time: ``τ_c`` in s (scalar, positive; learnable).
        width: ``δ`` in K, width of the logistic switch (positive).

    Returns:
        Tendency ``(..., level)`` in K s-1.

    >>> import torch
    >>> p = torch.tensor([2.5e4, 7.5e4], dtype=torch.float64)
    >>> c = betts_miller_tendency(torch.tensor([200.0, 290.0]).double(), p, 6.5e-3, 14400.0)
    >>> abs(float(c.sum())) < 1e-15
    True
    """
    _check_profile("temperature", temperature, layer_pressure)
    check_positive("width", width, "K", "B2 uses 1 K.")
    dtype, device = temperature.dtype, temperature.device
    lapse = torch.as_tensor(critical_lapse_rate, dtype=dtype, device=device)
    time = torch.as_tensor(relaxation_time, dtype=dtype, device=device)
    if lapse.dim() or time.dim():
        raise ValueError("`critical_lapse_rate` and `relaxation_time` must be scalars.")
    check_positive("relaxation_time", time, "s", "Give it in seconds: 4 h is 14400 s.")
    pressure = layer_pressure.to(temperature.dtype)
    ratio = (pressure / pressure[-1]) ** lapse_rate_exponent(lapse)
    return betts_miller_relaxation(temperature, ratio, time, float(width))


class BettsMillerConvection(Process):
    """Betts–Miller dry convective relaxation as a process (tendency ``air_temperature``, K s-1).

    Learnable parameters: ``critical_lapse_rate`` ``Γ_c`` (K m-1) and ``relaxation_time`` ``τ_c``
    (s); both are live in every column (the switch is a logistic of width ``δ``).

    Args:
        layer_pressure: Mid-layer pressures ``(level,)`` in Pa, increasing downward.
        critical_lapse_rate: Initial ``Γ_c`` in K m-1.
        relaxation_time: Initial ``τ_c`` in s.
        width: ``δ`` in K (fixed).
    """

    inputs = ("air_temperature",)
    layer_pressure: Tensor

    def __init__(
        self,
        layer_pressure: Tensor,
        critical_lapse_rate: float = standard_lapse_rate,
        relaxation_time: float = 4.0 * 3600.0,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        check_positive("width", width, "K", "B2 uses 1 K.", finite=True)
        self.register_buffer("layer_pressure", torch.as_tensor(layer_pressure))
        self.width = float(width)
        #: Γ_c, critical lapse rate of the reference profile in K m-1.
        self.critical_lapse_rate = nn.Parameter(torch.tensor(float(critical_lapse_rate)))
        #: τ_c, relaxation time toward the reference profile in s.
        self.relaxation_time = nn.Parameter(torch.tensor(float(relaxation_time)))

    def forward(self, state: State) -> tuple[Tendencies, Diagnostics]:
        (temperature,) = self.require(state)
        tendency = betts_miller_tendency(
            temperature,
            self.layer_pressure,
            self.critical_lapse_rate.to(temperature.dtype),
            self.relaxation_time.to(temperature.dtype),
            self.width,
        )
        return {"air_temperature": tendency}, {"convective_heating_rate": tendency}
