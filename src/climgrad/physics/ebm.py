"""Terms of the zonal-mean diffusive energy-balance model (Budyko 1969; Sellers 1969; North 1975).

The one-dimensional energy-balance model (EBM) in x = sin(latitude) reads

    C ∂T/∂t = Q s(x) (1 − a(x, T)) − (A + B T_C) + D ∂/∂x ((1 − x²) ∂T/∂x),

with T the zonal-mean surface temperature, T_C = T − 273.15 K its value in degrees Celsius, and

* outgoing longwave radiation ``OLR = A + B T_C`` (Budyko 1969, Tellus 21, 611), the linear fit to
  observed OLR in which A is the OLR at 0 °C (W m-2) and B its sensitivity (W m-2 K-1). The
  literature writes T in °C; climgrad's state is in kelvin, so the conversion happens inside
  (:func:`outgoing_longwave`) and A keeps its usual meaning and value (about 210 W m-2);
* ice–albedo feedback ``a(x, T) = a_w(x) + (a_i − a_w(x)) h(T_f − T)`` with the ice-free albedo
  ``a_w(x) = a₀ + a₂ P₂(x)`` (North et al. 1981, Rev. Geophys. 19, 91) and ``h`` a step of width w
  from :mod:`climgrad.autograd.smooth`; absorbed shortwave ``Q s(x) (1 − a)``;
* meridional heat diffusion ``D ∂/∂x ((1 − x²) ∂T/∂x) = (D / cos φ) ∂/∂φ (cos φ ∂T/∂φ)``, no flux
  through the poles, in the finite-volume form of benchmark B3.2 (``docs/benchmark_problems.md``),
  as an explicit operator (:func:`meridional_diffusion`) and as a backward-Euler step solved as one
  tridiagonal system (:func:`implicit_meridional_diffusion_step`), whose backward is the adjoint.

The discretisation is that of benchmark B3 exactly (:class:`LatitudeGrid`), so a model assembled
from these terms reproduces the B3 reference equilibria.

Which parameters are learnable in which gradient mode (the ice-albedo switch, ``mode``):

================================  =========  ==========  ==================
parameter (module attribute)      "exact"    "smooth"    "straight_through"
================================  =========  ==========  ==================
olr_intercept A, olr_slope B      live       live        live
diffusivity D                     live       live        live
albedo.ice_free_albedo a₀         live       live        live
albedo.ice_free_albedo_p2 a₂      live       live        live
albedo.ice_covered_albedo a_i     live*      live        live*
albedo.freezing_temperature T_f   **dead**   live        live (biased)
transition_width w                fixed      fixed       fixed
================================  =========  ==========  ==================

``*`` a_i gets a gradient only from bands that are ice-covered (T < T_f) in "exact" and
"straight_through" modes, and a₀, a₂ only from ice-free bands; in "smooth" mode every band
contributes to all of them. In "exact" mode the albedo is piecewise constant in T, so T_f and the
ice-albedo feedback on ∂/∂T are invisible to gradients. "smooth" uses B3's
``h = ½ (1 − tanh((T − T_f)/w))`` in the model itself, which is differentiable everywhere (the
model changes by the width w); "straight_through" keeps the sharp step in the forward pass and uses
the tanh-step derivative in the backward pass (biased; not checked by gradcheck, by design).

Custom autograd Functions: only the implicit diffusion step has one (``_ImplicitDiffusionFunction``,
an adjoint backward plus a forward-mode rule; why it earns its place is in its docstring). OLR, the
diffusion operator and the absorbed shortwave are pointwise or linear maps whose autograd
backward is already exact and keeps no more than a few band-sized tensors, so a hand-written
backward would not earn its place; their gradient choices live in :mod:`climgrad.autograd.smooth`.

The model's equilibrium: :func:`net_heating_kernel` is the sum of the three processes as one
residual of five per-solve coefficients (:func:`net_heating_coefficients`), with B3.2's analytic
tridiagonal Jacobian (:class:`NetHeatingJacobian`) and the closed-form products of its parameter
derivatives (:func:`net_heating_parameter_vjp`), for Newton's method and the implicit gradient of
:func:`climgrad.integrate.equilibrium` (``structure="tridiagonal"``). Written per process, each
residual looked every parameter up through its module and bijection and the Jacobian came from
``torch.func``; that overhead, not arithmetic, was the cost (``docs/benchmarks_b3_b4.md``).

Units: temperatures in K (state), A in W m-2, B and D in W m-2 K-1, heat capacities in J m-2 K-1,
fluxes in W m-2, tendencies in K s-1.

Processes versus functions: the public functions validate their inputs (positive kelvin
temperatures, matching band counts); the :class:`Process` modules check only shapes on the state and
call the kernels directly, so that they run inside equilibrium solvers, on CUDA without host
synchronisation, and under ``torch.func`` transforms (``vmap``, ``jacfwd``). Their constructors
validate the parameters.

Heat capacity: the model owns it. Every process here returns its flux in W m-2 as a diagnostic and,
when built with a ``heat_capacity`` (J m-2 K-1, scalar or per band), the tendency
``{"surface_temperature": flux / heat_capacity}`` in K s-1; without one it returns no tendency (use
the diagnostic or :meth:`heating`, e.g. for an equilibrium residual in W m-2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from climgrad.autograd.smooth import GradientMode, check_mode, step
from climgrad.autograd.tracing import without_jvp
from climgrad.constants import freezing_point
from climgrad.integrate import Bands
from climgrad.physics.insolation import annual_mean_insolation_p2, legendre_p2
from climgrad.physics.process import Process
from climgrad.tridiagonal import solve_tridiagonal, thomas_solve_kernel, tridiagonal_matvec
from climgrad.typing import Diagnostics, State, Tendencies
from climgrad.validation import (
    check_count,
    check_last_dimension,
    check_positive,
    check_temperature,
    check_temperature_tensor,
)

__all__ = [
    "AbsorbedShortwave",
    "IceAlbedo",
    "LatitudeGrid",
    "MeridionalDiffusion",
    "NetHeatingJacobian",
    "OutgoingLongwave",
    "absorbed_shortwave",
    "ice_albedo",
    "ice_fraction_kernel",
    "implicit_meridional_diffusion_kernel",
    "implicit_meridional_diffusion_step",
    "meridional_diffusion",
    "net_heating_coefficients",
    "net_heating_kernel",
    "net_heating_parameter_vjp",
    "outgoing_longwave",
]

# ----------------------------------------------------------------------------------------------
# Grid.


@dataclass(frozen=True)
class LatitudeGrid:
    """Equal-angle latitude bands of the EBM, pole to pole (benchmark B3.2).

    Band j (j = 0 … n−1) has centre ``φ_j = −90° + (j + ½) Δφ`` and boundaries ``φ^b_j``,
    ``φ^b_{j+1}`` with ``Δφ = 180°/n``. Fields live at band centres. The interface weights
    ``c_j = cos φ^b_j`` carry the diffusive flux between bands j−1 and j; ``c_0 = c_n = 0`` exactly
    (no flux through the poles, whatever cos(±90°) rounds to).

    Attributes:
        band_centres: φ_j in radians, ``(band,)``.
        band_boundaries: φ^b_j in radians, ``(band + 1,)``.
        band_width: Δφ in radians.
        sin_latitude: x_j = sin φ_j, ``(band,)``.
        cos_latitude: cos φ_j, the area weights of the bands (as in B3's global means), ``(band,)``.
        interface_weights: c_j, ``(band + 1,)``, zero at both poles.
    """

    band_centres: Tensor
    band_boundaries: Tensor
    band_width: float
    sin_latitude: Tensor
    cos_latitude: Tensor
    interface_weights: Tensor

    @classmethod
    def uniform(
        cls,
        n_bands: int = 90,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> LatitudeGrid:
        """``n_bands`` equal bands (90 gives B3's 2° grid); built in float64, then cast once.

        >>> grid = LatitudeGrid.uniform(90)
        >>> round(float(grid.latitude_degrees[0]), 6), float(grid.interface_weights[0])
        (-89.0, 0.0)
        """
        check_count("n_bands", n_bands, 2)
        width = math.pi / n_bands
        index = torch.arange(n_bands + 1, dtype=torch.float64)
        boundaries = -0.5 * math.pi + width * index
        centres = boundaries[:-1] + 0.5 * width
        weights = torch.cos(boundaries)
        weights[0] = 0.0
        weights[-1] = 0.0
        return cls(
            band_centres=centres.to(dtype=dtype, device=device),
            band_boundaries=boundaries.to(dtype=dtype, device=device),
            band_width=width,
            sin_latitude=torch.sin(centres).to(dtype=dtype, device=device),
            cos_latitude=torch.cos(centres).to(dtype=dtype, device=device),
            interface_weights=weights.to(dtype=dtype, device=device),
        )

    @property
    def n_bands(self) -> int:
        """Number of bands."""
        return int(self.band_centres.shape[0])

    @property
    def latitude_degrees(self) -> Tensor:
        """Band centres in degrees north, ``(band,)``."""
        return torch.rad2deg(self.band_centres)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> LatitudeGrid:
        """A copy with every tensor moved to ``device`` and/or cast to ``dtype``."""

        def move(tensor: Tensor) -> Tensor:
            return tensor.to(device=device, dtype=dtype)

        return LatitudeGrid(
            band_centres=move(self.band_centres),
            band_boundaries=move(self.band_boundaries),
            band_width=self.band_width,
            sin_latitude=move(self.sin_latitude),
            cos_latitude=move(self.cos_latitude),
            interface_weights=move(self.interface_weights),
        )

    def global_mean(self, field: Tensor) -> Tensor:
        """Area-weighted (cos φ_j) mean over the last dimension ``(..., band) -> (...)``."""
        weights = self.cos_latitude.to(field.dtype)
        return (field * weights).sum(-1) / weights.sum()

    def diffusion_bands(self) -> tuple[Tensor, Tensor, Tensor]:
        """The diffusion operator 𝓛 (without D) as three diagonals, each ``(band,)``, in rad-2.

        ``(𝓛T)_j = lower_j T_{j−1} + diag_j T_j + upper_j T_{j+1}`` with
        ``lower_j = c_j / (cos φ_j Δφ²)``, ``upper_j = c_{j+1} / (cos φ_j Δφ²)``,
        ``diag_j = −(lower_j + upper_j)``; ``lower_0 = upper_{n−1} = 0``. This is the tridiagonal
        layout of :func:`climgrad.tridiagonal.solve_tridiagonal`, e.g. for a Newton step on
        ``D 𝓛 − diag(...)``.
        """
        scale = self.cos_latitude * self.band_width**2
        lower = self.interface_weights[:-1] / scale
        upper = self.interface_weights[1:] / scale
        return lower, -(lower + upper), upper


# ----------------------------------------------------------------------------------------------
# Input checks shared by the public functions and constructors below.


def _check_bands(field: Tensor, grid: LatitudeGrid, name: str) -> None:
    check_last_dimension(
        name,
        field,
        grid.n_bands,
        "latitude bands (those of the grid)",
        "Build the grid with LatitudeGrid.uniform(n_bands) to match, or put bands last with "
        "movedim.",
    )


# ----------------------------------------------------------------------------------------------
# Plumbing shared by the processes.


def _as_parameter(value: float | Tensor, dtype: torch.dtype) -> nn.Parameter:
    tensor = torch.as_tensor(value, dtype=dtype)
    return nn.Parameter(tensor.detach().clone())


class _EnergyBalanceProcess(Process):
    """Shared plumbing: the heat capacity and the flux -> tendency conversion."""

    inputs = ("surface_temperature",)
    heat_capacity: Tensor | None

    def __init__(self, heat_capacity: float | Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        if heat_capacity is None:
            self.register_buffer("heat_capacity", None)
        else:
            check_positive(
                "heat_capacity", heat_capacity, "J m-2 K-1", "A 50 m ocean mixed layer has 2.1e8."
            )
            self.register_buffer("heat_capacity", torch.as_tensor(heat_capacity, dtype=dtype))

    def heating(self, surface_temperature: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Net heating of the surface column by this process, W m-2."""
        raise NotImplementedError

    def _tendencies(self, heating: Tensor) -> Tendencies:
        if self.heat_capacity is None:
            return {}
        return {"surface_temperature": heating / self.heat_capacity}


# ----------------------------------------------------------------------------------------------
# Outgoing longwave radiation: kernel, public function, process.


def outgoing_longwave_kernel(
    surface_temperature: Tensor, olr_intercept: Tensor | float, olr_slope: Tensor | float
) -> Tensor:
    """``A + B (T − 273.15 K)`` in W m-2 (Budyko 1969); see :func:`outgoing_longwave`."""
    return olr_intercept + olr_slope * (surface_temperature - float(freezing_point))


def outgoing_longwave(
    surface_temperature: Tensor, olr_intercept: Tensor | float, olr_slope: Tensor | float
) -> Tensor:
    """Linear outgoing longwave radiation ``OLR = A + B (T − 273.15 K)`` (Budyko 1969).

    The literature's fit ``A + B T`` has T in °C, so A is the OLR at 0 °C (about 203–210 W m-2;
    Budyko 1969, Tellus 21, 611; North et al. 1981) and B the sensitivity (about 1.9–2.1
    W m-2 K-1). The state here is in kelvin and is converted inside; A and B keep their usual
    values. Valid for present-day-like surface temperatures (roughly −50 °C to +40 °C).

    No custom autograd Function: OLR is linear in A, B and T, and autograd's backward is already
    exact and saves nothing beyond the inputs.

    Args:
        surface_temperature: T in K (positive), any shape, e.g. ``(band,)`` or ``(batch, band)``.
        olr_intercept: A, the OLR at 0 °C, in W m-2 (scalar or broadcastable, e.g. per band).
        olr_slope: B in W m-2 K-1 (scalar or broadcastable).

    Returns:
        OLR in W m-2, positive upward, the broadcast shape.

    >>> import torch
    >>> outgoing_longwave(torch.tensor([273.15, 283.15], dtype=torch.float64), 210.0, 2.0)
    tensor([210., 230.], dtype=torch.float64)
    """
    check_temperature_tensor("surface_temperature", surface_temperature, minimum=0.0)
    return outgoing_longwave_kernel(surface_temperature, olr_intercept, olr_slope)


class OutgoingLongwave(_EnergyBalanceProcess):
    """Linear outgoing longwave radiation ``OLR = A + B (T − 273.15 K)`` (Budyko 1969).

    Learnable parameters (live in every mode; no threshold):

    * ``olr_intercept`` — A, OLR at 0 °C, W m-2 (B3 truth 210);
    * ``olr_slope`` — B, W m-2 K-1 (B3 truth 2.0).

    Either may be a field (one value per band) by passing a tensor. State: ``surface_temperature``
    (K, ``(..., band)``). Diagnostics: ``outgoing_longwave_radiation`` (W m-2, positive up).
    Tendency (with a ``heat_capacity``): ``−OLR / C`` in K s-1.
    """

    def __init__(
        self,
        olr_intercept: float | Tensor = 210.0,
        olr_slope: float | Tensor = 2.0,
        heat_capacity: float | Tensor | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__(heat_capacity, dtype)
        self.olr_intercept = _as_parameter(olr_intercept, dtype)
        self.olr_slope = _as_parameter(olr_slope, dtype)

    def heating(self, surface_temperature: Tensor) -> Tensor:
        """``−OLR`` in W m-2."""
        return -outgoing_longwave_kernel(surface_temperature, self.olr_intercept, self.olr_slope)

    def forward(self, state: State) -> tuple[Tendencies, Diagnostics]:
        (temperature,) = self.require(state)
        olr = outgoing_longwave_kernel(temperature, self.olr_intercept, self.olr_slope)
        return self._tendencies(-olr), {"outgoing_longwave_radiation": olr}


# ----------------------------------------------------------------------------------------------
# Ice-albedo feedback and absorbed shortwave: kernel, public functions, modules.


def ice_albedo_kernel(
    sin_latitude: Tensor,
    surface_temperature: Tensor,
    ice_free_albedo: Tensor | float,
    ice_free_albedo_p2: Tensor | float,
    ice_covered_albedo: Tensor | float,
    freezing_temperature: Tensor | float,
    transition_width: Tensor | float,
    mode: GradientMode,
) -> Tensor:
    """``a_w + (a_i − a_w) h(T_f − T)``, ``a_w = a₀ + a₂ P₂(x)``; see :func:`ice_albedo`."""
    warm = ice_free_albedo + ice_free_albedo_p2 * legendre_p2(sin_latitude)
    ice_fraction = step(freezing_temperature - surface_temperature, transition_width, mode)
    return warm + (ice_covered_albedo - warm) * ice_fraction


def ice_albedo(
    sin_latitude: Tensor,
    surface_temperature: Tensor,
    ice_free_albedo: Tensor | float = 0.30,
    ice_free_albedo_p2: Tensor | float = 0.078,
    ice_covered_albedo: Tensor | float = 0.62,
    freezing_temperature: Tensor | float = 263.15,
    transition_width: Tensor | float = 2.0,
    mode: GradientMode = "smooth",
) -> Tensor:
    """Albedo with the ice–albedo feedback: ``a = a_w(x) + (a_i − a_w(x)) h(T_f − T)``.

    ``a_w(x) = a₀ + a₂ P₂(x)`` is the ice-free albedo (North et al. 1981, Rev. Geophys. 19, 91),
    ``h`` the ice fraction, a step in ``T_f − T`` of width w from
    :func:`climgrad.autograd.smooth.step`:
    ``"smooth"`` gives B3's ``h = ½ (1 − tanh((T − T_f)/w))``, ``"exact"`` the sharp step
    (T_f gets no gradient), ``"straight_through"`` the sharp step with the tanh derivative backward.
    Defaults are B3's (a₀ = 0.30, a₂ = 0.078, a_i = 0.62, T_f = −10 °C, w = 2 K).

    Args:
        sin_latitude: x = sin φ, dimensionless, ``(band,)`` (broadcast with the temperature).
        surface_temperature: T in K, ``(..., band)``.
        ice_free_albedo: a₀, dimensionless.
        ice_free_albedo_p2: a₂, dimensionless (positive: brighter toward the poles).
        ice_covered_albedo: a_i, dimensionless.
        freezing_temperature: T_f in K (263.15 K = −10 °C in B3).
        transition_width: w in K (positive), width of the smooth transition.
        mode: ``"exact"``, ``"smooth"`` or ``"straight_through"``.

    Returns:
        Albedo (dimensionless), shape of ``surface_temperature`` broadcast with ``sin_latitude``.
    """
    check_mode(mode)
    check_temperature_tensor("surface_temperature", surface_temperature, minimum=0.0)
    check_temperature("freezing_temperature", freezing_temperature, minimum=0.0)
    check_positive("transition_width", transition_width, "K", "B3 uses 2 K.")
    return ice_albedo_kernel(
        sin_latitude,
        surface_temperature,
        ice_free_albedo,
        ice_free_albedo_p2,
        ice_covered_albedo,
        freezing_temperature,
        transition_width,
        mode,
    )


class IceAlbedo(nn.Module):
    """Temperature-dependent albedo ``a = a₀ + a₂ P₂(x) + (a_i − a₀ − a₂ P₂(x)) h(T_f − T)``.

    Learnable parameters (see the module docstring for liveness by ``mode``):

    * ``ice_free_albedo`` — a₀, dimensionless (B3: 0.30);
    * ``ice_free_albedo_p2`` — a₂, dimensionless (B3: 0.078);
    * ``ice_covered_albedo`` — a_i, dimensionless (B3: 0.62);
    * ``freezing_temperature`` — T_f in K (B3: 263.15 K = −10 °C); dead in ``"exact"`` mode.

    Fixed: ``transition_width`` w in K (buffer, B3: 2 K) and the band sines ``sin_latitude``.
    """

    transition_width: Tensor
    sin_latitude: Tensor

    def __init__(
        self,
        sin_latitude: Tensor,
        ice_free_albedo: float | Tensor = 0.30,
        ice_free_albedo_p2: float | Tensor = 0.078,
        ice_covered_albedo: float | Tensor = 0.62,
        freezing_temperature: float | Tensor = 263.15,
        transition_width: float = 2.0,
        mode: GradientMode = "smooth",
    ) -> None:
        super().__init__()
        check_mode(mode)
        check_positive("transition_width", transition_width, "K", "B3 uses 2 K.")
        check_temperature("freezing_temperature", freezing_temperature, minimum=0.0)
        dtype = sin_latitude.dtype
        self.mode: GradientMode = mode
        self.ice_free_albedo = _as_parameter(ice_free_albedo, dtype)
        self.ice_free_albedo_p2 = _as_parameter(ice_free_albedo_p2, dtype)
        self.ice_covered_albedo = _as_parameter(ice_covered_albedo, dtype)
        self.freezing_temperature = _as_parameter(freezing_temperature, dtype)
        self.register_buffer("transition_width", torch.as_tensor(transition_width, dtype=dtype))
        self.register_buffer("sin_latitude", sin_latitude.detach().clone())

    def forward(self, surface_temperature: Tensor) -> Tensor:
        """Albedo (dimensionless) for T in K, ``(..., band)``."""
        return ice_albedo_kernel(
            self.sin_latitude,
            surface_temperature,
            self.ice_free_albedo,
            self.ice_free_albedo_p2,
            self.ice_covered_albedo,
            self.freezing_temperature,
            self.transition_width,
            self.mode,
        )

    def ice_fraction(self, surface_temperature: Tensor) -> Tensor:
        """Ice fraction ``h(T_f − T)`` in [0, 1] (the sharp step in "exact"/"straight_through")."""
        return step(
            self.freezing_temperature - surface_temperature, self.transition_width, self.mode
        )

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, transition_width={float(self.transition_width)} K"


def absorbed_shortwave(insolation: Tensor, albedo: Tensor) -> Tensor:
    """Absorbed shortwave radiation ``Q s(x) (1 − a)`` in W m-2.

    Args:
        insolation: Annual-mean top-of-atmosphere insolation ``Q s(x)`` in W m-2, ``(band,)``
            (e.g. :func:`climgrad.physics.insolation.annual_mean_insolation_p2`).
        albedo: Albedo a (dimensionless, in [0, 1]), ``(..., band)``, e.g. from :func:`ice_albedo`.

    Returns:
        Absorbed shortwave in W m-2, the broadcast shape.
    """
    check_positive("insolation", insolation, "W m-2", allow_zero=True)
    return insolation * (1.0 - albedo)


class AbsorbedShortwave(_EnergyBalanceProcess):
    """Absorbed shortwave ``Q s(x) (1 − a(x, T))`` with the ice–albedo feedback.

    The albedo is the submodule ``albedo`` (:class:`IceAlbedo`); its parameters are this process's
    learnable parameters, named ``albedo.ice_free_albedo``, ``albedo.ice_free_albedo_p2``,
    ``albedo.ice_covered_albedo`` and ``albedo.freezing_temperature`` (the last is dead in
    ``"exact"`` mode; see the table in the module docstring). The insolation is
    ``S₀ × pattern``: the learnable ``solar_constant`` S₀ (W m-2, live in every mode) times a fixed
    per-band ``insolation_pattern`` (dimensionless), by default B3's ``340 (1 − 0.482 P₂(x))`` W m-2
    with S₀ = 1360 W m-2. A state that carries ``insolation`` (W m-2, ``(..., band)``; e.g. daily
    insolation in a seasonal run) overrides it, and S₀ then plays no part.

    State: ``surface_temperature`` (K, ``(..., band)``), optionally ``insolation``. Diagnostics:
    ``absorbed_shortwave_radiation`` (W m-2), ``albedo`` and ``ice_fraction`` (h, dimensionless;
    the sharp step in "exact" and "straight_through" modes). Tendency (with a
    ``heat_capacity``): ``ASR / C`` in K s-1.
    """

    insolation_pattern: Tensor

    def __init__(
        self,
        grid: LatitudeGrid,
        insolation: Tensor | None = None,
        solar_constant: float = 1360.0,
        ice_free_albedo: float | Tensor = 0.30,
        ice_free_albedo_p2: float | Tensor = 0.078,
        ice_covered_albedo: float | Tensor = 0.62,
        freezing_temperature: float | Tensor = 263.15,
        transition_width: float = 2.0,
        mode: GradientMode = "smooth",
        heat_capacity: float | Tensor | None = None,
    ) -> None:
        dtype = grid.sin_latitude.dtype
        super().__init__(heat_capacity, dtype)
        if insolation is None:
            insolation = annual_mean_insolation_p2(grid.sin_latitude, solar_constant=1360.0)
        _check_bands(insolation, grid, "insolation")
        check_positive("insolation", insolation, "W m-2", allow_zero=True)
        check_positive("solar_constant", solar_constant, "W m-2", "About 1361 W m-2 for the Earth.")
        self.solar_constant = _as_parameter(solar_constant, dtype)
        pattern = insolation.detach().to(dtype) / solar_constant
        self.register_buffer("insolation_pattern", pattern.clone())
        self.albedo = IceAlbedo(
            grid.sin_latitude,
            ice_free_albedo,
            ice_free_albedo_p2,
            ice_covered_albedo,
            freezing_temperature,
            transition_width,
            mode,
        )

    @property
    def insolation(self) -> Tensor:
        """Top-of-atmosphere insolation ``S₀ × pattern`` in W m-2, ``(band,)``."""
        return self.solar_constant * self.insolation_pattern

    def heating(self, surface_temperature: Tensor, insolation: Tensor | None = None) -> Tensor:
        """Absorbed shortwave in W m-2 (``insolation`` in W m-2 overrides the module's)."""
        incoming = self.insolation if insolation is None else insolation
        return incoming * (1.0 - self.albedo(surface_temperature))

    def forward(self, state: State) -> tuple[Tendencies, Diagnostics]:
        (temperature,) = self.require(state)
        albedo = self.albedo(temperature)
        incoming = state["insolation"] if "insolation" in state else self.insolation
        absorbed = incoming * (1.0 - albedo)
        diagnostics = {
            "absorbed_shortwave_radiation": absorbed,
            "albedo": albedo,
            "ice_fraction": self.albedo.ice_fraction(temperature),
        }
        return self._tendencies(absorbed), diagnostics


# ----------------------------------------------------------------------------------------------
# Meridional diffusion: kernels, the implicit step's custom Function (adjoint backward),
# public functions, process.


def meridional_diffusion_kernel(
    surface_temperature: Tensor,
    diffusivity: Tensor | float,
    interface_weights: Tensor,
    cos_latitude: Tensor,
    band_width: float,
) -> Tensor:
    """Flux form of B3.2: ``D [c_{j+1}(T_{j+1} − T_j) − c_j(T_j − T_{j−1})] / (cos φ_j Δφ²)``.

    The pole interfaces carry no flux (c_0 = c_n = 0), so ``Σ_j cos φ_j (𝓛T)_j`` telescopes to 0.
    """
    interior = interface_weights[1:-1] * torch.diff(surface_temperature, dim=-1)
    flux = torch.nn.functional.pad(interior, (1, 1))
    return diffusivity * torch.diff(flux, dim=-1) / (cos_latitude * band_width**2)


def _implicit_matrix(
    diffusion_number: Tensor, lower: Tensor, diag: Tensor, upper: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    # I − k 𝓛 with k = Δt D / C per row: an M-matrix, strictly diagonally dominant in the
    # interior, so Thomas elimination without pivoting is stable.
    return -diffusion_number * lower, 1.0 - diffusion_number * diag, -diffusion_number * upper


def implicit_diffusion_kernel(
    surface_temperature: Tensor,
    diffusivity: Tensor,
    heat_capacity: Tensor,
    lower: Tensor,
    diag: Tensor,
    upper: Tensor,
    time_step: float,
) -> Tensor:
    """Backward Euler ``(I − (Δt D / C) 𝓛) T¹ = T⁰`` through autograd's record of the Thomas solve.

    ``diffusivity`` broadcasts against ``surface_temperature`` (scalar or ``(..., 1)``),
    ``heat_capacity`` too (scalar, ``(band,)`` or ``(..., band)``).
    """
    diffusion_number = time_step * diffusivity / heat_capacity
    a, b, c = _implicit_matrix(diffusion_number, lower, diag, upper)
    return thomas_solve_kernel(a, b, c, surface_temperature)


class _ImplicitDiffusionFunction(torch.autograd.Function):
    """``T¹ = (I − k𝓛)⁻¹ T⁰``, ``k = Δt D / C``; backward by one transposed tridiagonal solve.

    With ``A = I − k𝓛``, ``A T¹ = T⁰`` and ``g = ∂ℓ/∂T¹``: ``λ = A⁻ᵀ g``, ``∂ℓ/∂T⁰ = λ``,
    ``∂ℓ/∂D = Σ_j λ_j (Δt / C_j) (𝓛T¹)_j`` and ``∂ℓ/∂C_j = −λ_j (Δt D / C_j²) (𝓛T¹)_j``
    (from ``∂ℓ/∂θ = −λᵀ (∂A/∂θ) T¹``). Forward mode (``jvp``) solves
    ``A Ṫ¹ = Ṫ⁰ + (Δt/C)(𝓛T¹) Ḋ − (Δt D/C²)(𝓛T¹) Ċ``, so ``torch.func.jvp``/``jacfwd`` work too.

    Why a custom Function: only T¹ and the inputs are saved, where autograd through the Thomas
    kernel records every elimination step, and the backward is one transposed solve instead of a
    replay of the elimination (see ``docs/benchmarks.md`` for the measured memory and time).
    Building the matrix with autograd and calling :func:`~climgrad.tridiagonal.solve_tridiagonal`
    (itself adjoint) would cost about the same, but has no forward mode and no closed-form ∂/∂D,
    ∂/∂C.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        surface_temperature: Tensor,
        diffusivity: Tensor,
        heat_capacity: Tensor,
        lower: Tensor,
        diag: Tensor,
        upper: Tensor,
        time_step: float,
    ) -> Tensor:
        diffusion_number = time_step * diffusivity / heat_capacity
        a, b, c = _implicit_matrix(diffusion_number, lower, diag, upper)
        return solve_tridiagonal(a, b, c, surface_temperature)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        surface_temperature, diffusivity, heat_capacity, lower, diag, upper, time_step = inputs
        ctx.save_for_backward(diffusivity, heat_capacity, lower, diag, upper, output)
        ctx.save_for_forward(diffusivity, heat_capacity, lower, diag, upper, output)
        ctx.time_step = time_step
        ctx.temperature_shape = surface_temperature.shape

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        diffusivity, heat_capacity, lower, diag, upper, solution = ctx.saved_tensors
        time_step = ctx.time_step
        diffusion_number = time_step * diffusivity / heat_capacity
        a, b, c = _implicit_matrix(diffusion_number, lower, diag, upper)
        # Aᵀ has sub-diagonal c_{j−1} and super-diagonal a_{j+1}.
        a, b, c = torch.broadcast_tensors(a, b, c)
        transposed_lower = torch.nn.functional.pad(c[..., :-1], (1, 0))
        transposed_upper = torch.nn.functional.pad(a[..., 1:], (0, 1))
        adjoint = solve_tridiagonal(transposed_lower, b, transposed_upper, grad_output)
        grad_temperature = grad_diffusivity = grad_heat_capacity = None
        if ctx.needs_input_grad[0]:
            grad_temperature = adjoint.sum_to_size(ctx.temperature_shape)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            weighted = adjoint * tridiagonal_matvec(lower, diag, upper, solution)
            if ctx.needs_input_grad[1]:
                grad_diffusivity = (weighted * (time_step / heat_capacity)).sum_to_size(
                    diffusivity.shape
                )
            if ctx.needs_input_grad[2]:
                grad_heat_capacity = (
                    weighted * (-time_step * diffusivity / heat_capacity**2)
                ).sum_to_size(heat_capacity.shape)
        return grad_temperature, grad_diffusivity, grad_heat_capacity, None, None, None, None

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> Tensor:
        diffusivity, heat_capacity, lower, diag, upper, solution = ctx.saved_tensors
        tangent_temperature, tangent_diffusivity, tangent_heat_capacity = tangents[:3]
        time_step = ctx.time_step
        rhs = torch.zeros_like(solution)
        if tangent_temperature is not None:
            rhs = rhs + tangent_temperature
        if tangent_diffusivity is not None or tangent_heat_capacity is not None:
            operator_solution = tridiagonal_matvec(lower, diag, upper, solution)
            if tangent_diffusivity is not None:
                rhs = rhs + (time_step / heat_capacity) * operator_solution * tangent_diffusivity
            if tangent_heat_capacity is not None:
                rhs = rhs - (
                    (time_step * diffusivity / heat_capacity**2)
                    * operator_solution
                    * tangent_heat_capacity
                )
        diffusion_number = time_step * diffusivity / heat_capacity
        a, b, c = _implicit_matrix(diffusion_number, lower, diag, upper)
        return solve_tridiagonal(a, b, c, rhs)


# torch.compile refuses Functions with a custom jvp; while compiling, a twin without it runs.
_ImplicitDiffusionForTracing = without_jvp(_ImplicitDiffusionFunction)


def meridional_diffusion(
    surface_temperature: Tensor, diffusivity: Tensor | float, grid: LatitudeGrid
) -> Tensor:
    """Meridional heat-flux convergence ``D ∂/∂x ((1 − x²) ∂T/∂x)`` in W m-2 (North 1975).

    Finite volume on the bands of ``grid`` (benchmark B3.2):
    ``(𝓛T)_j = [c_{j+1}(T_{j+1} − T_j) − c_j(T_j − T_{j−1})] / (cos φ_j Δφ²)`` with c_0 = c_n = 0:
    no flux through the poles, and ``Σ_j cos φ_j (𝓛T)_j = 0`` (energy is only moved). Second-order
    accurate in Δφ. Linear in T and D, so plain autograd gives the exact (transposed-operator)
    backward; no custom Function.

    Args:
        surface_temperature: T in K, ``(..., band)``.
        diffusivity: D in W m-2 K-1 (non-negative), scalar or broadcastable to ``(..., 1)``.
        grid: The latitude bands.

    Returns:
        Heating in W m-2, ``(..., band)``.
    """
    check_temperature_tensor("surface_temperature", surface_temperature, minimum=0.0)
    _check_bands(surface_temperature, grid, "surface_temperature")
    check_positive("diffusivity", diffusivity, "W m-2 K-1", "B3 uses 0.555.", allow_zero=True)
    grid = grid.to(device=surface_temperature.device, dtype=surface_temperature.dtype)
    return meridional_diffusion_kernel(
        surface_temperature,
        diffusivity,
        grid.interface_weights,
        grid.cos_latitude,
        grid.band_width,
    )


def implicit_meridional_diffusion_step(
    surface_temperature: Tensor,
    diffusivity: Tensor | float,
    heat_capacity: Tensor | float,
    time_step: float,
    grid: LatitudeGrid,
) -> Tensor:
    """One backward-Euler step of meridional diffusion: ``C (T¹ − T⁰)/Δt = D 𝓛 T¹``.

    Solves ``(I − (Δt D / C) 𝓛) T¹ = T⁰`` as one tridiagonal system per batch entry (𝓛 as in
    :func:`meridional_diffusion`). Unconditionally stable; conserves ``Σ_j cos φ_j C_j T_j``
    exactly (to rounding) because the pole interfaces carry no flux. For implicit diffusion with
    explicit sources S (W m-2), pass ``T⁰ + Δt S / C`` as ``surface_temperature`` (this is exactly
    ``C (T¹ − T⁰)/Δt = S(T⁰) + D 𝓛 T¹``). The backward is the adjoint (one transposed solve), and
    forward-mode AD is supported.

    Args:
        surface_temperature: T⁰ in K, ``(..., band)``.
        diffusivity: D in W m-2 K-1 (non-negative), scalar or with the batch shape ``(...)``.
        heat_capacity: C in J m-2 K-1 (positive), scalar, ``(band,)`` or ``(..., band)``.
        time_step: Δt in s (positive).
        grid: The latitude bands.

    Returns:
        T¹ in K, ``(..., band)``.
    """
    check_temperature_tensor("surface_temperature", surface_temperature, minimum=0.0)
    _check_bands(surface_temperature, grid, "surface_temperature")
    check_positive("diffusivity", diffusivity, "W m-2 K-1", "B3 uses 0.555.", allow_zero=True)
    check_positive(
        "heat_capacity", heat_capacity, "J m-2 K-1", "A 50 m ocean mixed layer has 2.1e8."
    )
    check_positive("time_step", time_step, "s")
    return implicit_meridional_diffusion_kernel(
        surface_temperature, diffusivity, heat_capacity, time_step, grid
    )


def implicit_meridional_diffusion_kernel(
    surface_temperature: Tensor,
    diffusivity: Tensor | float,
    heat_capacity: Tensor | float,
    time_step: float,
    grid: LatitudeGrid,
) -> Tensor:
    """:func:`implicit_meridional_diffusion_step` without value checks (same arguments).

    For paths that run under ``torch.func`` transforms, on CUDA without host syncs, or on
    tangents (perturbations of any sign, not temperatures), e.g. a tangent-linear model.
    """
    like = surface_temperature
    diffusivity_tensor = torch.as_tensor(diffusivity, dtype=like.dtype, device=like.device)
    if diffusivity_tensor.ndim:
        diffusivity_tensor = diffusivity_tensor.unsqueeze(-1)
    heat_capacity_tensor = torch.as_tensor(heat_capacity, dtype=like.dtype, device=like.device)
    lower, diag, upper = grid.to(device=like.device, dtype=like.dtype).diffusion_bands()
    function = (
        _ImplicitDiffusionForTracing
        if torch.compiler.is_compiling()
        else _ImplicitDiffusionFunction
    )
    result: Tensor = function.apply(
        surface_temperature,
        diffusivity_tensor,
        heat_capacity_tensor,
        lower,
        diag,
        upper,
        float(time_step),
    )
    return result


class MeridionalDiffusion(_EnergyBalanceProcess):
    """Meridional heat diffusion ``D ∂/∂x ((1 − x²) ∂T/∂x)`` with no flux through the poles.

    Learnable parameter (live in every mode): ``diffusivity`` — D in W m-2 K-1 (B3 truth 0.555).

    State: ``surface_temperature`` (K, ``(..., band)``). Diagnostics:
    ``meridional_heat_convergence`` (W m-2; its cos φ-weighted sum is zero). Tendency (with a
    ``heat_capacity``): ``D 𝓛T / C`` in K s-1. For stiff problems step it implicitly with
    :meth:`implicit_step`.
    """

    interface_weights: Tensor
    cos_latitude: Tensor
    sin_latitude: Tensor
    band_centres: Tensor
    band_boundaries: Tensor

    def __init__(
        self,
        grid: LatitudeGrid,
        diffusivity: float | Tensor = 0.555,
        heat_capacity: float | Tensor | None = None,
    ) -> None:
        dtype = grid.cos_latitude.dtype
        super().__init__(heat_capacity, dtype)
        check_positive("diffusivity", diffusivity, "W m-2 K-1", "B3 uses 0.555.", allow_zero=True)
        self.diffusivity = _as_parameter(diffusivity, dtype)
        self.band_width = grid.band_width
        # Buffers, so that .to(device) moves the grid with the module.
        self.register_buffer("band_centres", grid.band_centres.detach().clone())
        self.register_buffer("band_boundaries", grid.band_boundaries.detach().clone())
        self.register_buffer("sin_latitude", grid.sin_latitude.detach().clone())
        self.register_buffer("cos_latitude", grid.cos_latitude.detach().clone())
        self.register_buffer("interface_weights", grid.interface_weights.detach().clone())

    @property
    def grid(self) -> LatitudeGrid:
        """The latitude bands, on the module's device and dtype."""
        return LatitudeGrid(
            band_centres=self.band_centres,
            band_boundaries=self.band_boundaries,
            band_width=self.band_width,
            sin_latitude=self.sin_latitude,
            cos_latitude=self.cos_latitude,
            interface_weights=self.interface_weights,
        )

    def heating(self, surface_temperature: Tensor) -> Tensor:
        """``D 𝓛T`` in W m-2."""
        _check_bands(surface_temperature, self.grid, "surface_temperature")
        return meridional_diffusion_kernel(
            surface_temperature,
            self.diffusivity,
            self.interface_weights,
            self.cos_latitude,
            self.band_width,
        )

    def forward(self, state: State) -> tuple[Tendencies, Diagnostics]:
        (temperature,) = self.require(state)
        convergence = self.heating(temperature)
        return self._tendencies(convergence), {"meridional_heat_convergence": convergence}

    def implicit_step(
        self,
        surface_temperature: Tensor,
        time_step: float,
        heat_capacity: float | Tensor | None = None,
    ) -> Tensor:
        """Backward-Euler step ``(I − (Δt D / C) 𝓛) T¹ = T⁰`` (K); see
        :func:`implicit_meridional_diffusion_step`. ``heat_capacity`` defaults to the module's."""
        capacity = self.heat_capacity if heat_capacity is None else heat_capacity
        if capacity is None:
            raise ValueError(
                "An implicit step needs a heat capacity (J m-2 K-1): pass `heat_capacity=` here or "
                "build MeridionalDiffusion(grid, heat_capacity=...)."
            )
        _check_bands(surface_temperature, self.grid, "surface_temperature")
        return implicit_meridional_diffusion_kernel(
            surface_temperature, self.diffusivity, capacity, time_step, self.grid
        )


# ----------------------------------------------------------------------------------------------
# The whole model's net heating as one residual, and its tridiagonal Jacobian (B3.2).
#
# Newton's method on the equilibrium evaluates the residual a few times per iteration. Written
# per process, each evaluation looks up every parameter through its module and its bijection;
# here the parameters are folded once per solve into a few per-band coefficients, and the
# residual is a handful of vector operations. Its Jacobian is tridiagonal and analytic, so a
# Newton step and the adjoint solve are one Thomas sweep each (climgrad.integrate).


def ice_fraction_kernel(distance: Tensor, width: Tensor | float, mode: GradientMode) -> Tensor:
    """Ice fraction ``h = step(T_f − T)`` of :func:`ice_albedo`, without the value checks.

    ``distance`` is ``T_f − T`` in K and ``width`` w in K. ``"smooth"`` is B3's
    ``½ (1 + tanh((T_f − T)/w))`` (the formula of :func:`climgrad.autograd.smooth.step`);
    without gradient recording ``"exact"`` and ``"straight_through"`` are the sharp step, and with
    it they go through :func:`~climgrad.autograd.smooth.step` (their gradients are defined there).
    """
    if mode == "smooth":
        return 0.5 * (1.0 + torch.tanh(distance / width))
    if not torch.is_grad_enabled():
        return (distance > 0).to(distance.dtype)
    return step(distance, width, mode)


def net_heating_coefficients(
    insolation: Tensor,
    ice_free_albedo: Tensor | float,
    ice_free_albedo_p2: Tensor | float,
    ice_covered_albedo: Tensor | float,
    olr_intercept: Tensor | float,
    legendre_p2_of_latitude: Tensor,
) -> tuple[Tensor, Tensor]:
    """The temperature-independent parts of the net heating, per band (W m-2).

    With ``a = a_w + (a_i − a_w) h`` and ``a_w = a₀ + a₂ P₂(x)`` (North et al. 1981), the
    absorbed shortwave minus the OLR intercept is ``Q (1 − a) − A = offset + ice_contrast · h``
    with ``offset = Q (1 − a_w) − A`` and ``ice_contrast = Q (a_w − a_i)``.

    Args:
        insolation: Q s(x) in W m-2, ``(..., band)``.
        ice_free_albedo, ice_free_albedo_p2, ice_covered_albedo: a₀, a₂, a_i (dimensionless),
            scalars or broadcastable (``(..., 1)`` for a batch of parameter sets).
        olr_intercept: A in W m-2 (scalar, ``(..., 1)`` or per band ``(..., band)``).
        legendre_p2_of_latitude: P₂(x) at the band centres, ``(band,)``.

    Returns:
        ``(offset, ice_contrast)`` in W m-2, each of the broadcast shape ``(..., band)``.
    """
    warm = ice_free_albedo + ice_free_albedo_p2 * legendre_p2_of_latitude
    offset = insolation * (1.0 - warm) - olr_intercept
    ice_contrast = insolation * (warm - ice_covered_albedo)
    return offset, ice_contrast


def net_heating_kernel(
    surface_temperature: Tensor,
    offset: Tensor,
    ice_contrast: Tensor,
    olr_slope: Tensor,
    diffusion_scale: Tensor,
    freezing_temperature: Tensor,
    *,
    transition_width: Tensor | float,
    interface_weights: Tensor,
    mode: GradientMode,
) -> Tensor:
    """Net heating of B3.2's residual in W m-2, from per-solve coefficients.

    ``F_j = offset_j + ice_contrast_j h(T_f − T_j) − B (T_j − 273.15 K) + s_j (Δ(c ΔT))_j``
    with ``s_j = D / (cos φ_j Δφ²)`` (``diffusion_scale``), c the interface weights
    (:class:`LatitudeGrid`, zero at the poles) and Δ the differences between neighbours, i.e.
    ``ASR − OLR + D 𝓛T`` of :class:`AbsorbedShortwave`, :class:`OutgoingLongwave` and
    :class:`MeridionalDiffusion` (Budyko 1969; Sellers 1969; North 1975) with ``offset`` and
    ``ice_contrast`` from :func:`net_heating_coefficients`. The diffusion stays in flux form
    (differences first), which keeps the rounding of ``𝓛T`` small where T is large and smooth. No
    checks: it runs inside Newton's loop.

    Args:
        surface_temperature: T in K, ``(..., band)``.
        offset, ice_contrast: W m-2, ``(..., band)`` (:func:`net_heating_coefficients`).
        olr_slope: B in W m-2 K-1 (0-d, ``(..., 1)`` or ``(..., band)``).
        diffusion_scale: D / (cos φ Δφ²) in W m-2 K-1 rad-2, ``(..., band)``.
        freezing_temperature: T_f in K (0-d or ``(..., 1)``).
        transition_width: w in K.
        interface_weights: c_j, ``(band + 1,)``.
        mode: Gradient mode of the ice edge (``"exact"``, ``"smooth"``, ``"straight_through"``).

    Returns:
        F in W m-2, ``(..., band)`` (the broadcast shape).
    """
    ice = ice_fraction_kernel(freezing_temperature - surface_temperature, transition_width, mode)
    celsius = surface_temperature - float(freezing_point)
    flux = torch.nn.functional.pad(
        interface_weights[1:-1] * torch.diff(surface_temperature, dim=-1), (1, 1)
    )
    heating = torch.addcmul(offset, ice_contrast, ice)
    heating = torch.addcmul(heating, olr_slope, celsius, value=-1.0)
    return torch.addcmul(heating, diffusion_scale, torch.diff(flux))


def net_heating_parameter_vjp(
    surface_temperature: Tensor,
    cotangent: Tensor,
    offset: Tensor,
    ice_contrast: Tensor,
    olr_slope: Tensor,
    diffusion_scale: Tensor,
    freezing_temperature: Tensor,
    *,
    transition_width: Tensor | float,
    interface_weights: Tensor,
    mode: GradientMode,
    needs: tuple[bool, ...] = (True,) * 5,
) -> list[Tensor | None]:
    """``vᵀ ∂F/∂c`` for each coefficient c of :func:`net_heating_kernel` (same arguments).

    ``F`` is linear in every coefficient but T_f, so the products are closed-form:
    ``∂F/∂offset = 1``, ``∂F/∂ice_contrast = h``, ``∂F/∂B = −(T − 273.15 K)``,
    ``∂F/∂s = Δ(c ΔT)`` and ``∂F/∂T_f = ice_contrast ∂h/∂T_f`` with
    ``∂h/∂T_f = (1 − tanh²((T_f − T)/w)) / (2w)`` (``"smooth"``; the surrogate of
    ``"straight_through"``) or 0 (``"exact"``) — what autograd gives through the kernel, without
    recording it (one reverse pass of the implicit gradient).

    Args:
        surface_temperature: T in K, ``(..., band)``.
        cotangent: v, ``(..., band)`` (W-1 m2 times the loss units).
        needs: Which of the five products to form (``None`` for the others).

    Returns:
        One tensor per coefficient, summed to the coefficient's shape, or ``None``.
    """
    v = cotangent
    grads: list[Tensor | None] = [None] * 5
    if needs[0]:
        grads[0] = v.sum_to_size(offset.shape)
    if needs[1] or needs[4]:
        distance = freezing_temperature - surface_temperature
        if needs[1]:
            ice = ice_fraction_kernel(distance, transition_width, mode)
            grads[1] = (v * ice).sum_to_size(ice_contrast.shape)
        if needs[4]:
            if mode == "exact":
                grads[4] = torch.zeros_like(freezing_temperature)
            else:
                slope = torch.tanh(distance / transition_width)
                derivative = (1.0 - slope * slope) / (2.0 * transition_width)
                grads[4] = (v * ice_contrast * derivative).sum_to_size(freezing_temperature.shape)
    if needs[2]:
        celsius = surface_temperature - float(freezing_point)
        grads[2] = -(v * celsius).sum_to_size(olr_slope.shape)
    if needs[3]:
        flux = torch.nn.functional.pad(
            interface_weights[1:-1] * torch.diff(surface_temperature, dim=-1), (1, 1)
        )
        grads[3] = (v * torch.diff(flux)).sum_to_size(diffusion_scale.shape)
    return grads


class NetHeatingJacobian:
    """``∂F/∂T`` of :func:`net_heating_kernel` as three bands, for fixed coefficients (B3.2).

    ``∂F/∂T = D 𝓛 − diag(Q s ∂a/∂T + B)``: sub-diagonal ``s_j c_j``, super-diagonal
    ``s_j c_{j+1}``, diagonal ``−s_j (c_j + c_{j+1}) − B + ice_contrast_j ∂h/∂T`` with
    ``∂h/∂T = −(1 − tanh²((T_f − T)/w)) / (2w)`` (``"smooth"``, and the surrogate of
    ``"straight_through"``) or 0 (``"exact"``), as autograd gives it for each mode. The layout is
    that of :func:`climgrad.tridiagonal.solve_tridiagonal` (``lower[..., 0] = 0`` and
    ``upper[..., -1] = 0``, both ignored).

    Built once per solve from the coefficients of :func:`net_heating_kernel` (values only, no
    graph): the off-diagonals and the temperature-independent part of the diagonal are kept, so
    a call costs a tanh and two products. Calling it with coefficients other than those it was
    built from is an error it does not detect: build a new one.

    Args:
        offset, ice_contrast, olr_slope, diffusion_scale, freezing_temperature: As for
            :func:`net_heating_kernel` (``offset`` does not enter).
        transition_width, interface_weights, mode: As for :func:`net_heating_kernel`.
    """

    def __init__(
        self,
        offset: Tensor,
        ice_contrast: Tensor,
        olr_slope: Tensor,
        diffusion_scale: Tensor,
        freezing_temperature: Tensor,
        *,
        transition_width: Tensor | float,
        interface_weights: Tensor,
        mode: GradientMode,
    ) -> None:
        with torch.no_grad():
            self.lower = diffusion_scale * interface_weights[:-1]
            self.upper = diffusion_scale * interface_weights[1:]
            diagonal = -(self.lower + self.upper) - olr_slope
            self.smooth = mode != "exact"
            # diag = diagonal + k (tanh² − 1) = (diagonal − k) + k tanh², k = ice_contrast / (2w)
            self.slope_scale = ice_contrast / (2.0 * transition_width)
            self.diagonal = diagonal - self.slope_scale if self.smooth else diagonal
            self.freezing_temperature = freezing_temperature.detach()
            self.transition_width = transition_width

    def __call__(self, surface_temperature: Tensor, *coefficients: Tensor) -> Bands:
        """``(lower, diag, upper)`` in W m-2 K-1 at T (K, ``(..., band)``), each ``(..., band)``.

        ``coefficients`` (the residual's further arguments) are accepted and not read.
        """
        if not self.smooth:
            return self.lower, self.diagonal, self.upper
        slope = torch.tanh(
            (self.freezing_temperature - surface_temperature) / self.transition_width
        )
        diagonal = torch.addcmul(self.diagonal, self.slope_scale, slope * slope)
        return self.lower, diagonal, self.upper
