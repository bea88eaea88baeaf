"""``EBM1D``: the Budyko–Sellers–North diffusive energy-balance model on latitude bands.

    C ∂T/∂t = S₀ s(x) (1 − a(x, T)) − (A + B (T − 273.15)) + D ∂/∂x ((1 − x²) ∂T/∂x),

with x = sin(latitude), the ice–albedo feedback a = a₀ + a₂P₂(x) + (a_i − a₀ − a₂P₂(x)) h(T_f − T)
and no heat flux through the poles (Budyko 1969; Sellers 1969; North 1975, J. Atmos. Sci. 32,
2033; North, Cahalan & Coakley 1981, Rev. Geophys. 19, 91). The terms are the processes of
:mod:`climgrad.physics.ebm`; the discretisation is that of benchmark B3
(``docs/benchmark_problems.md``), whose reference equilibria
the model reproduces. Regime: zonal- and annual-mean climate (or its seasonal cycle with daily
insolation), a surface heat capacity of a mixed layer, linearised OLR: valid for present-day-like
climates and moderate perturbations, not for snowball transitions in detail.

Seasonal cycle with land and ocean (North & Coakley 1979, J. Atmos. Sci. 36, 1189). Given the land
fraction f of each band (``land_fraction=``, a tensor), the heat capacity is that of the band's
land and ocean in proportion to their areas,

    C(x) = f(x) C_land + (1 − f(x)) C_ocean,

with two learnable parameters in place of ``heat_capacity``. The equilibrium does not depend on
C; the seasonal cycle does: land bands, with C_land ≪ C_ocean, follow the sun with a larger
amplitude and a shorter lag. Typical values (not fitted): an ocean mixed layer of 50-75 m,
C_ocean = ρ_w c_w h ≈ 2.1-3.1e8 J m-2 K-1 (ρ_w c_w = 4.18e6 J m-3 K-1); land with the air
above it a few 1e6 to 1e7 J m-2 K-1 (the atmospheric column alone holds c_p p_s/g ≈ 1.0e7). One
effective capacity per band is the model's simplification: land and ocean in a band share one
temperature (perfect zonal mixing), so the land amplitude is underestimated where land and sea
meet. :meth:`EBM1D.periodic_cycle` finds the periodic seasonal
state by Newton's method on the one-year map and differentiates it implicitly.

Parameters (names as in the literature and in climlab), all in physical units:

=================  ===========  =======================================  =====================
name               units        meaning                                  default / bounds
=================  ===========  =======================================  =====================
``A``              W m-2        OLR at 0 °C                              210, (0, ∞), log
``B``              W m-2 K-1    OLR sensitivity                          2.0, (0, ∞), log
``D``              W m-2 K-1    meridional diffusivity                   0.555, (0, ∞), log
``a0``             1            ice-free albedo, global                  0.30, (0, 1)
``a2``             1            ice-free albedo, P₂ coefficient          0.078, (-0.5, 0.5)
``ai``             1            ice albedo                               0.62, (0, 1)
``Tf``             K            freezing temperature of the ice edge     263.15, (223.15, 293.15)
``S0``             W m-2        solar constant (learn: false)            1360, (0, ∞), log
``heat_capacity``  J m-2 K-1    surface heat capacity (learn: false)     4.2e7 (10 m of water)
=================  ===========  =======================================  =====================

With ``land_fraction=`` the last row is replaced by two (``heat_capacity`` is then absent):

=======================  ===========  =================================  =====================
name                     units        meaning                            default / bounds
=======================  ===========  =================================  =====================
``land_heat_capacity``   J m-2 K-1    heat capacity of land (and air)    5e6, (0, ∞), log
``ocean_heat_capacity``  J m-2 K-1    heat capacity of the mixed layer   2.1e8 (50 m), (0, ∞), log
=======================  ===========  =================================  =====================

Positive parameters are stored as logarithms, so an optimizer step changes each by a similar
*relative* amount whatever its magnitude. ``Tf`` is dead in ``albedo_mode="exact"`` (see
:mod:`climgrad.physics.ebm`). The equilibrium does not depend on ``heat_capacity``.

Speed. :meth:`EBM1D.equilibrium` resolves every parameter once per solve (each bijection
evaluated once) into the coefficients of :func:`~climgrad.physics.ebm.net_heating_kernel`, and
Newton's method and the adjoint use B3.2's analytic tridiagonal Jacobian (one Thomas sweep each).
:meth:`EBM1D.forward` evaluates the processes' kernels with the parameters resolved once too;
the processes still run, and are tested, on their own. ``parameters=`` evaluates J parameter sets
in one call (rows of one batched solve); see ``docs/benchmarks_b3_b4.md`` for the measurements.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from climgrad.autograd.smooth import GradientMode
from climgrad.constants import freezing_point, seconds_per_year
from climgrad.integrate import (
    EquilibriumError,
    EquilibriumInfo,
    equilibrium,
    rollout,
    solve_with_restarts,
)
from climgrad.models.base import Model
from climgrad.params import ParamSpec, TransformName, constrain
from climgrad.physics.ebm import (
    AbsorbedShortwave,
    LatitudeGrid,
    MeridionalDiffusion,
    NetHeatingJacobian,
    OutgoingLongwave,
    ice_fraction_kernel,
    implicit_meridional_diffusion_kernel,
    meridional_diffusion_kernel,
    net_heating_coefficients,
    net_heating_kernel,
    net_heating_parameter_vjp,
)
from climgrad.physics.insolation import (
    annual_mean_insolation,
    annual_mean_insolation_p2,
    daily_mean_insolation,
    legendre_p2,
)
from climgrad.tridiagonal import solve_tridiagonal
from climgrad.typing import Diagnostics, State, Tendencies

__all__ = ["EBM1D", "EquilibriumResidual", "latitude_band_edges", "monthly_means"]

_LOG: TransformName = "exp"
SPECS: dict[str, ParamSpec] = {
    "A": ParamSpec("A", "W m-2", 210.0, (0.0, None), "OLR at 0 degC", transform=_LOG),
    "B": ParamSpec("B", "W m-2 K-1", 2.0, (0.0, None), "OLR sensitivity", transform=_LOG),
    "D": ParamSpec("D", "W m-2 K-1", 0.555, (0.0, None), "meridional diffusivity", transform=_LOG),
    "a0": ParamSpec("a0", "1", 0.30, (0.0, 1.0), "ice-free albedo (global)"),
    "a2": ParamSpec("a2", "1", 0.078, (-0.5, 0.5), "ice-free albedo (P2 coefficient)"),
    "ai": ParamSpec("ai", "1", 0.62, (0.0, 1.0), "ice albedo"),
    "Tf": ParamSpec("Tf", "K", 263.15, (223.15, 293.15), "freezing temperature of the ice edge"),
    "S0": ParamSpec("S0", "W m-2", 1360.0, (0.0, None), "solar constant", transform=_LOG),
    "heat_capacity": ParamSpec(
        "heat_capacity", "J m-2 K-1", 4.2e7, (0.0, None), "surface heat capacity", transform=_LOG
    ),
    # With land_fraction= (North & Coakley 1979): C = f C_land + (1 - f) C_ocean per band.
    "land_heat_capacity": ParamSpec(
        "land_heat_capacity",
        "J m-2 K-1",
        5.0e6,
        (0.0, None),
        "heat capacity of land (surface and air)",
        transform=_LOG,
    ),
    "ocean_heat_capacity": ParamSpec(
        "ocean_heat_capacity",
        "J m-2 K-1",
        2.1e8,
        (0.0, None),
        "heat capacity of the ocean mixed layer",
        transform=_LOG,
    ),
}
#: The heat-capacity parameters of a model without and with a land fraction.
_SINGLE_CAPACITY = ("heat_capacity",)
_LAND_OCEAN_CAPACITY = ("land_heat_capacity", "ocean_heat_capacity")
#: Where each parameter lives: (process, attribute path inside the process).
_LOCATION = {
    "A": ("olr", "olr_intercept"),
    "B": ("olr", "olr_slope"),
    "D": ("diffusion", "diffusivity"),
    "a0": ("shortwave", "albedo.ice_free_albedo"),
    "a2": ("shortwave", "albedo.ice_free_albedo_p2"),
    "ai": ("shortwave", "albedo.ice_covered_albedo"),
    "Tf": ("shortwave", "albedo.freezing_temperature"),
    "S0": ("shortwave", "solar_constant"),
}
#: The same as (process, parent modules, attribute), split once.
_PATHS = {
    name: (process, tuple(path.split(".")[:-1]), path.split(".")[-1])
    for name, (process, path) in _LOCATION.items()
}
#: Parameters that ``parameters=`` may replace, without a land fraction (with one, the
#: land and ocean heat capacities replace ``heat_capacity``).
_OVERRIDABLE = (*_LOCATION, "heat_capacity")
#: Parameters of the equilibrium (the heat capacity does not enter it).
_EQUILIBRIUM_PARAMETERS = tuple(_LOCATION)


class EquilibriumResidual(NamedTuple):
    """The equilibrium problem of :class:`EBM1D` for one set of parameter values.

    Attributes:
        residual: ``residual(T, *coefficients)``, the net heating in W m-2
            (:func:`~climgrad.physics.ebm.net_heating_kernel`).
        jacobian: ``jacobian(T)``, its tridiagonal Jacobian at these coefficients (B3.2).
        parameter_vjp: ``parameter_vjp(T, v, *coefficients, needs=...)``, the closed-form
            ``vᵀ ∂F/∂c`` (:func:`~climgrad.physics.ebm.net_heating_parameter_vjp`).
        coefficients: ``(offset, ice_contrast, B, D / (cos φ Δφ²), T_f)``, computed once from the
            parameters with their autograd graph, ``(..., band)`` or broadcastable.
    """

    residual: functools.partial[Tensor]
    jacobian: NetHeatingJacobian
    parameter_vjp: functools.partial[list[Tensor | None]]
    coefficients: list[Tensor]


def _physical_value(owner: torch.nn.Module, attribute: str) -> Tensor:
    """``owner.<attribute>`` for a parameter constrained by :func:`climgrad.params.constrain`.

    The same value as the attribute itself (raw tensor through its bijections), without the
    two module calls of :mod:`torch.nn.utils.parametrize` per access: this runs once per solve and
    per parameter, where those calls cost more than the arithmetic.
    """
    chain: Any = owner.parametrizations[attribute]  # type: ignore[index]
    value: Tensor = chain.original
    for bijection in chain:
        value = bijection.forward(value)
    return value


class EBM1D(Model):
    """Diffusive zonal-mean energy-balance model (see the module docstring).

    Args:
        bands: Number of equal latitude bands (90 gives B3's 2° bands).
        A, B, D, a0, a2, ai, Tf, S0, heat_capacity: Initial parameter values (units above).
        insolation: ``"p2"`` (North et al. 1981: ``S₀/4 (1 − 0.482 P₂(x))``) or ``"annual"`` (the
            exact annual mean for present-day orbit).
        albedo_mode: Gradient through the ice edge: ``"smooth"`` (default; B3's tanh step of
            width ``transition_width``), ``"exact"`` or ``"straight_through"``.
        transition_width: Width w of the ice-edge transition in K.
        learn: Which parameters are learnable (default: all but ``S0`` and the heat capacities).
        land_fraction: Optional fraction of each band's area that is land, ``(band,)`` in [0, 1]
            (e.g. ``data/ebm_1d/land_fraction_zonal.nc`` averaged onto the bands). With it the
            heat capacity is ``f C_land + (1 − f) C_ocean`` per band (North & Coakley 1979), the
            parameters ``land_heat_capacity`` and ``ocean_heat_capacity`` replace
            ``heat_capacity``, and the model keeps the last periodic state it found
            (:meth:`periodic_cycle`) in its state dict. Without it nothing changes.
        land_heat_capacity, ocean_heat_capacity: Initial values in J m-2 K-1 (used only with
            ``land_fraction``).
        dtype, device: Of the parameters and the grid.

    State: ``{"surface_temperature": (..., band) K}``.

    Parameter sets in one call: :meth:`equilibrium`, :meth:`forward` and :meth:`heating` take
    ``parameters={"A": tensor, ...}`` (physical units) in place of the model's own values. A
    parameter that is a scalar in the model takes a ``(J,)`` tensor (one value per set); a field
    (``A`` built per band) takes ``(J, band)``. The J sets are independent rows ``(J, band)`` of
    one batched solve, and gradients flow to the tensors passed.
    """

    legendre_p2_of_latitude: Tensor
    inverse_metric: Tensor

    def __init__(
        self,
        bands: int = 90,
        *,
        A: float = 210.0,
        B: float = 2.0,
        D: float = 0.555,
        a0: float = 0.30,
        a2: float = 0.078,
        ai: float = 0.62,
        Tf: float = 263.15,
        S0: float = 1360.0,
        heat_capacity: float = 4.2e7,
        insolation: Literal["p2", "annual"] = "p2",
        albedo_mode: GradientMode = "smooth",
        transition_width: float = 2.0,
        learn: tuple[str, ...] = ("A", "B", "D", "a0", "a2", "ai", "Tf"),
        land_fraction: Tensor | Sequence[float] | None = None,
        land_heat_capacity: float = 5.0e6,
        ocean_heat_capacity: float = 2.1e8,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        if bands < 2:
            raise ValueError(f"EBM1D needs at least 2 latitude bands, got {bands}.")
        capacities = _SINGLE_CAPACITY if land_fraction is None else _LAND_OCEAN_CAPACITY
        valid = [*_LOCATION, *capacities]
        unknown = sorted(set(learn) - set(valid))
        if unknown:
            raise ValueError(
                f"Unknown parameter(s) {unknown} in learn=; valid: {valid} (the land and ocean "
                "heat capacities replace heat_capacity when land_fraction is given)."
            )
        fraction = None if land_fraction is None else _checked_land_fraction(land_fraction, bands)
        grid = LatitudeGrid.uniform(bands, dtype=dtype)
        if insolation == "p2":
            pattern = annual_mean_insolation_p2(grid.sin_latitude, solar_constant=S0)
        elif insolation == "annual":
            pattern = annual_mean_insolation(grid.latitude_degrees, solar_constant=S0).to(dtype)
        else:
            raise ValueError(f"Unknown insolation {insolation!r}; use 'p2' or 'annual'.")
        super().__init__(
            {
                "shortwave": AbsorbedShortwave(
                    grid,
                    insolation=pattern,
                    solar_constant=S0,
                    ice_free_albedo=a0,
                    ice_free_albedo_p2=a2,
                    ice_covered_albedo=ai,
                    freezing_temperature=Tf,
                    transition_width=transition_width,
                    mode=albedo_mode,
                ),
                "olr": OutgoingLongwave(A, B, dtype=dtype),
                "diffusion": MeridionalDiffusion(grid, D),
            }
        )
        capacity_values = {
            "heat_capacity": heat_capacity,
            "land_heat_capacity": land_heat_capacity,
            "ocean_heat_capacity": ocean_heat_capacity,
        }
        for name in capacities:
            setattr(
                self, name, torch.nn.Parameter(torch.tensor(capacity_values[name], dtype=dtype))
            )
        values = {"A": A, "B": B, "D": D, "a0": a0, "a2": a2, "ai": ai, "Tf": Tf, "S0": S0}
        for name, (process, path) in _LOCATION.items():
            *parents, attribute = path.split(".")
            owner = self.processes[process]
            for parent in parents:
                owner = getattr(owner, parent)
            constrain(owner, attribute, SPECS[name], value=values[name], learn=name in learn)
        for name in capacities:
            constrain(self, name, SPECS[name], learn=name in learn)
        #: Names of this model's parameters (``parameters=`` may replace any of them).
        self.parameter_names: tuple[str, ...] = (*_LOCATION, *capacities)
        self.capacity_names: tuple[str, ...] = capacities
        # Grid factors every solve needs (not in the state dict: they follow from `bands`).
        self.n_bands = bands
        self.register_buffer(
            "legendre_p2_of_latitude", legendre_p2(grid.sin_latitude), persistent=False
        )
        self.register_buffer(
            "inverse_metric", 1.0 / (grid.cos_latitude * grid.band_width**2), persistent=False
        )
        self.land_fraction: Tensor | None
        self.warm_periodic_state: Tensor | None
        if fraction is None:
            self.land_fraction = None
            self.warm_periodic_state = None
        else:
            # In the state dict (as the column model's warm state is): a resumed run restarts
            # Newton from where it was, and load_run finds the branch the run was on.
            self.register_buffer("land_fraction", fraction.to(dtype))
            self.register_buffer(
                "warm_periodic_state", torch.full((bands,), float("nan"), dtype=dtype)
            )
        if device is not None:
            self.to(device)

    # Grid and state --------------------------------------------------------------------------

    @property
    def grid(self) -> LatitudeGrid:
        """Latitude bands (centres, boundaries, sines, area weights) on the model's device."""
        diffusion = self.processes["diffusion"]
        assert isinstance(diffusion, MeridionalDiffusion)
        return diffusion.grid

    def initial_state(self) -> dict[str, Tensor]:
        """B3's starting state ``T = 12 − 40 P₂(x)`` °C, in K: the warm (present-day) branch."""
        return {"surface_temperature": freezing_point + 12.0 - 40.0 * self.legendre_p2_of_latitude}

    # Parameters ------------------------------------------------------------------------------

    def parameter_values(
        self,
        parameters: Mapping[str, Tensor | float] | None = None,
        *,
        names: tuple[str, ...] | None = None,
    ) -> dict[str, Tensor]:
        """Parameters in physical units, each bijection evaluated once.

        Args:
            parameters: Optional replacements in physical units (see the class docstring):
                ``(J,)`` for a scalar parameter, ``(J, band)`` for a field, any leading batch
                shape. Checked against the parameter's bounds.
            names: Which parameters to return (default all: ``A, B, D, a0, a2, ai, Tf, S0``
                and ``heat_capacity``, or ``land_heat_capacity, ocean_heat_capacity`` with a
                land fraction).

        Returns:
            ``name -> value``; values with a batch dimension are shaped to broadcast against
            ``(..., band)`` (a batch of scalars as ``(J, 1)``). Gradients reach the model's raw
            parameters, or the tensors passed.

        Raises:
            KeyError: An unknown name in ``parameters``.
            ValueError: A replacement of the wrong shape, or outside the parameter's bounds.
        """
        overrides = parameters or {}
        unknown = [name for name in overrides if name not in self.parameter_names]
        if unknown:
            raise KeyError(
                f"Unknown parameter(s) {sorted(unknown)} in parameters=; valid: "
                f"{list(self.parameter_names)}."
            )
        values: dict[str, Tensor] = {}
        for name in self.parameter_names if names is None else names:
            if name in self.capacity_names:
                owner: torch.nn.Module = self
                attribute = name
            else:
                process, parents, attribute = _PATHS[name]
                owner = self.processes[process]
                for parent in parents:
                    owner = getattr(owner, parent)
            own = _physical_value(owner, attribute)
            values[name] = own if name not in overrides else self._override(name, overrides, own)
        return values

    @staticmethod
    def _override(name: str, overrides: Mapping[str, Tensor | float], own: Tensor) -> Tensor:
        value = torch.as_tensor(overrides[name], dtype=own.dtype, device=own.device)
        if value.ndim < own.ndim or tuple(value.shape[value.ndim - own.ndim :]) != tuple(own.shape):
            raise ValueError(
                f"parameters[{name!r}] has shape {tuple(value.shape)}; the model's {name} has "
                f"shape {tuple(own.shape)}, so give ({'J, ' if own.ndim else 'J'}"
                f"{', '.join(str(n) for n in own.shape)}) for J parameter sets."
            )
        SPECS[name].check(value.detach())
        # A batch of scalars broadcasts against the bands as (..., 1).
        return value.unsqueeze(-1) if own.ndim == 0 and value.ndim > 0 else value

    # Physics ---------------------------------------------------------------------------------

    def _fluxes(
        self, temperature: Tensor, values: Mapping[str, Tensor], insolation: Tensor | None
    ) -> dict[str, Tensor]:
        """The processes' diagnostics, from parameters resolved once (:meth:`parameter_values`).

        The same kernels as :class:`AbsorbedShortwave`, :class:`OutgoingLongwave` and
        :class:`MeridionalDiffusion` (each of which also runs on its own), without looking every
        parameter up through its module and bijection at each call.
        """
        shortwave = self.processes["shortwave"]
        assert isinstance(shortwave, AbsorbedShortwave)
        albedo_module = shortwave.albedo
        incoming = values["S0"] * shortwave.insolation_pattern if insolation is None else insolation
        warm = values["a0"] + values["a2"] * self.legendre_p2_of_latitude
        ice = ice_fraction_kernel(
            values["Tf"] - temperature, albedo_module.transition_width, albedo_module.mode
        )
        albedo = warm + (values["ai"] - warm) * ice
        diffusion = self.processes["diffusion"]
        assert isinstance(diffusion, MeridionalDiffusion)
        return {
            "absorbed_shortwave_radiation": incoming * (1.0 - albedo),
            "albedo": albedo,
            "ice_fraction": ice,
            "outgoing_longwave_radiation": values["A"]
            + values["B"] * (temperature - float(freezing_point)),
            "meridional_heat_convergence": meridional_diffusion_kernel(
                temperature,
                values["D"],
                diffusion.interface_weights,
                diffusion.cos_latitude,
                diffusion.band_width,
            ),
            "insolation": incoming,
        }

    def _temperature(self, state: State) -> Tensor:
        if "surface_temperature" not in state:
            raise KeyError(
                f"EBM1D needs state variable(s) ['surface_temperature'], but the state has "
                f"{sorted(state)}. Add them to the state (SI units) before calling the model."
            )
        temperature = state["surface_temperature"]
        if temperature.ndim == 0 or temperature.shape[-1] != self.n_bands:
            raise ValueError(
                f"`surface_temperature` must have the model's {self.n_bands} latitude bands "
                f"last; got shape {tuple(temperature.shape)}. Put bands last with movedim."
            )
        return temperature

    def heating(
        self, surface_temperature: Tensor, parameters: Mapping[str, Tensor | float] | None = None
    ) -> Tensor:
        """Net column heating ``ASR − OLR + D𝓛T`` in W m-2, ``(..., band)``."""
        temperature = self._temperature({"surface_temperature": surface_temperature})
        fluxes = self._fluxes(temperature, self.parameter_values(parameters), None)
        return (
            fluxes["absorbed_shortwave_radiation"]
            - fluxes["outgoing_longwave_radiation"]
            + fluxes["meridional_heat_convergence"]
        )

    def forward(
        self, state: State, parameters: Mapping[str, Tensor | float] | None = None
    ) -> tuple[Tendencies, Diagnostics]:
        """Tendency ``dT/dt`` (K s-1) and diagnostics by band.

        Diagnostics: ``absorbed_shortwave_radiation``, ``outgoing_longwave_radiation``,
        ``meridional_heat_convergence``, ``net_heating``, ``insolation`` and
        ``reflected_shortwave_radiation`` in W m-2; ``albedo`` and ``ice_fraction``. The same
        values as the processes' own diagnostics (summed as :class:`~climgrad.models.Model`
        does), with each parameter resolved once. ``parameters``: see :meth:`parameter_values`.
        """
        temperature = self._temperature(state)
        values = self.parameter_values(parameters)
        fluxes = self._fluxes(temperature, values, state.get("insolation"))
        insolation = fluxes.pop("insolation")
        heating = (
            fluxes["absorbed_shortwave_radiation"]
            - fluxes["outgoing_longwave_radiation"]
            + fluxes["meridional_heat_convergence"]
        )
        diagnostics: Diagnostics = {
            **fluxes,
            "net_heating": heating,
            "insolation": insolation.expand_as(heating),
            "reflected_shortwave_radiation": insolation * fluxes["albedo"],
        }
        return {"surface_temperature": heating / self._heat_capacity(values)}, diagnostics

    def step(self, state: State, time_step: float) -> dict[str, Tensor]:
        """Semi-implicit step: explicit radiation, backward-Euler diffusion (stable for any Δt)."""
        temperature = state["surface_temperature"]
        sources = self.processes["shortwave"](state)[1]["absorbed_shortwave_radiation"]
        # OutgoingLongwave.heating is -OLR.
        sources = sources + self.processes["olr"].heating(temperature)  # type: ignore[operator]
        if self.land_fraction is not None:
            capacity: Tensor = self.heat_capacity_by_band()
        else:  # the one parameter itself, as before (the values of the B3 benchmarks)
            capacity = self.heat_capacity  # type: ignore[assignment]
        explicit = temperature + time_step * sources / capacity
        diffusion = self.processes["diffusion"]
        assert isinstance(diffusion, MeridionalDiffusion)
        updated = diffusion.implicit_step(explicit, time_step, capacity)
        return {**state, "surface_temperature": updated}

    def residual(
        self, parameters: Mapping[str, Tensor | float] | None = None
    ) -> EquilibriumResidual:
        """The equilibrium residual as pure functions of per-solve coefficients.

        Every parameter is resolved once (:meth:`parameter_values`) and folded into five
        coefficient tensors; Newton's iterations then evaluate a few vector operations per
        residual (:class:`EquilibriumResidual`).
        """
        values = self.parameter_values(parameters, names=_EQUILIBRIUM_PARAMETERS)
        shortwave = self.processes["shortwave"]
        assert isinstance(shortwave, AbsorbedShortwave)
        albedo = shortwave.albedo
        offset, ice_contrast = net_heating_coefficients(
            values["S0"] * shortwave.insolation_pattern,
            values["a0"],
            values["a2"],
            values["ai"],
            values["A"],
            self.legendre_p2_of_latitude,
        )
        diffusion_scale = values["D"] * self.inverse_metric
        coefficients = [offset, ice_contrast, values["B"], diffusion_scale, values["Tf"]]
        diffusion = self.processes["diffusion"]
        assert isinstance(diffusion, MeridionalDiffusion)
        width, weights, mode = albedo.transition_width, diffusion.interface_weights, albedo.mode
        return EquilibriumResidual(
            functools.partial(
                net_heating_kernel, transition_width=width, interface_weights=weights, mode=mode
            ),
            NetHeatingJacobian(
                *coefficients, transition_width=width, interface_weights=weights, mode=mode
            ),
            functools.partial(
                net_heating_parameter_vjp,
                transition_width=width,
                interface_weights=weights,
                mode=mode,
            ),
            coefficients,
        )

    def outgoing_longwave(
        self, surface_temperature: Tensor, parameters: Mapping[str, Tensor | float] | None = None
    ) -> Tensor:
        """OLR ``A + B (T − 273.15 K)`` in W m-2 (Budyko 1969), resolving only A and B.

        The ``outgoing_longwave_radiation`` diagnostic of :meth:`forward`, for an observation
        operator that needs nothing else (benchmark B3.4).
        """
        values = self.parameter_values(parameters, names=("A", "B"))
        return values["A"] + values["B"] * (surface_temperature - float(freezing_point))

    def equilibrium(
        self,
        initial: State | None = None,
        *,
        tol: float = 1e-9,
        max_iter: int = 50,
        info: EquilibriumInfo | None = None,
        parameters: Mapping[str, Tensor | float] | None = None,
        jacobian: Literal["tridiagonal", "dense"] = "tridiagonal",
        line_search: bool | Literal["auto"] = "auto",
        spin_up: int = 0,
    ) -> dict[str, Tensor]:
        """Steady state by Newton's method, differentiable by implicit differentiation.

        The model has several equilibria (ice-free, present-day, snowball), and Newton's method
        from ``initial`` can land on another branch than the one the climate drifts to from
        there when the parameters are far from those of ``initial`` (an ensemble member with a
        low albedo jumping to the snowball). ``spin_up`` pseudo-time steps first follow the
        model's own evolution: each is a linearised backward-Euler step of 30 days with the heat
        capacity of ``heat_capacity`` (one tridiagonal solve, ``(C/Δt − J) δ = F``; pseudo-
        transient continuation, Kelley & Keyes 1998), so that Newton starts on the right branch.

        The parameters are resolved once per call (:meth:`residual`); Newton's method and the
        adjoint solve use B3.2's analytic tridiagonal Jacobian (one Thomas sweep each,
        :func:`~climgrad.integrate.equilibrium` with ``structure="tridiagonal"``).

        Args:
            initial: Starting state (default :meth:`initial_state`, the present-day branch; the
                model has several equilibria and the start selects one).
            tol: Tolerance on max |net heating| in W m-2 (per parameter set).
            max_iter: Newton iterations before :class:`~climgrad.integrate.EquilibriumError`.
            info: Receives the iteration count and final residual (the largest over a batch).
            parameters: J parameter sets in physical units (see :meth:`parameter_values`),
                solved together as independent rows; each row converges on its own.
            jacobian: ``"tridiagonal"`` (default) or ``"dense"`` (the general path of
                :func:`~climgrad.integrate.equilibrium`: ``torch.func`` Jacobian and LU; the same
                equilibrium, slower, kept as a reference).
            line_search: As for :func:`~climgrad.integrate.equilibrium`: ``"auto"`` restarts a
                failed plain Newton solve with backtracking (for a batch, every row restarts).
            spin_up: Pseudo-time steps before Newton (see above; ~10 per e-folding time
                C/B ≈ 8 months; 0: none). They carry no gradient: the result is the same
                equilibrium, differentiated implicitly.

        Returns:
            The state ``{"surface_temperature": T* (band,) K}``, ``(J, band)`` for J parameter
            sets; gradients flow to every learnable parameter (and to the tensors in
            ``parameters``) through one adjoint solve.
        """
        if jacobian not in ("tridiagonal", "dense"):
            raise ValueError(f"Unknown jacobian {jacobian!r}; use 'tridiagonal' or 'dense'.")
        start = (initial or self.initial_state())["surface_temperature"]
        problem = self.residual(parameters)
        if spin_up > 0:
            start = self._pseudo_transient(problem, start, parameters, spin_up)
        structured = jacobian == "tridiagonal"
        solution = equilibrium(
            problem.residual,
            start,
            problem.coefficients,
            jacobian=problem.jacobian if structured else None,
            structure="tridiagonal" if structured else "dense",
            parameter_vjp=problem.parameter_vjp if structured else None,
            tol=tol,
            max_iter=max_iter,
            line_search=line_search,
            info=info,
        )
        return {"surface_temperature": solution}

    def _pseudo_transient(
        self,
        problem: EquilibriumResidual,
        start: Tensor,
        parameters: Mapping[str, Tensor | float] | None,
        steps: int,
    ) -> Tensor:
        """``steps`` linearised backward-Euler steps of 30 days from ``start`` (no gradient)."""
        with torch.no_grad():
            capacity = self._heat_capacity(
                self.parameter_values(parameters, names=self.capacity_names)
            )
            inverse_step = capacity.detach() / (30.0 * 86400.0)  # W m-2 K-1
            coefficients = [c.detach() for c in problem.coefficients]
            temperature = start.detach().clone()
            for _ in range(steps):
                heating = problem.residual(temperature, *coefficients)
                lower, diagonal, upper = problem.jacobian(temperature)
                temperature = temperature + solve_tridiagonal(
                    -lower, inverse_step - diagonal, -upper, heating
                )
        return temperature

    def seasonal_cycle(
        self,
        years: int = 10,
        steps_per_year: int = 90,
        *,
        initial: State | None = None,
        checkpoint_every: int | None = None,
    ) -> Tensor:
        """Integrate with daily-mean insolation (present-day orbit) and return the last year.

        Returns:
            Surface temperature ``(steps_per_year, band)`` in K over the final year; the first
            ``years - 1`` years spin the mixed layer up. Differentiable in every parameter,
            including ``S0`` (the insolation is ``S0`` times a daily pattern).
        """
        state = dict(initial or self.initial_state())
        grid = self.grid
        time_step = float(seconds_per_year) / steps_per_year
        days = (torch.arange(steps_per_year, dtype=grid.sin_latitude.dtype) + 0.5) * (
            365.2422 / steps_per_year
        )
        pattern = daily_mean_insolation(
            grid.latitude_degrees.unsqueeze(0), days.unsqueeze(-1), solar_constant=1.0
        ).to(grid.sin_latitude.device)
        shortwave = self.processes["shortwave"]
        assert isinstance(shortwave, AbsorbedShortwave)

        def one_step(current: dict[str, Tensor]) -> dict[str, Tensor]:
            # The step index travels in the state, so that checkpoint recomputation replays
            # the same days (a Python counter would run on during the backward pass).
            index = current["step_index"]
            insolation = shortwave.solar_constant * pattern[index % steps_per_year]
            stepped = self.step(
                {"surface_temperature": current["surface_temperature"], "insolation": insolation},
                time_step,
            )
            return {"surface_temperature": stepped["surface_temperature"], "step_index": index + 1}

        state["step_index"] = torch.zeros((), dtype=torch.int64, device=pattern.device)
        parameters = list(self.parameters())
        state, _ = rollout(
            one_step,
            state,
            (years - 1) * steps_per_year,
            checkpoint_every=checkpoint_every,
            parameters=parameters,
        )
        _, series = rollout(
            one_step,
            state,
            steps_per_year,
            checkpoint_every=checkpoint_every,
            parameters=parameters,
            observe=lambda s: s["surface_temperature"],
        )
        assert series is not None
        return series

    def heat_capacity_by_band(
        self, parameters: Mapping[str, Tensor | float] | None = None
    ) -> Tensor:
        """Heat capacity C of each band in J m-2 K-1, ``(band,)`` (``(J, band)`` for J sets).

        ``f C_land + (1 − f) C_ocean`` with a land fraction f (North & Coakley 1979), else the
        one ``heat_capacity`` for every band. ``parameters``: see :meth:`parameter_values`.
        """
        values = self.parameter_values(parameters, names=self.capacity_names)
        capacity = self._heat_capacity(values)
        # A scalar, (J, 1) for J scalars, or already (..., band) with a land fraction.
        return capacity.expand(*capacity.shape[:-1], self.n_bands)

    def _heat_capacity(self, values: Mapping[str, Tensor]) -> Tensor:
        """C from resolved parameter values: a scalar, or ``(..., band)`` with a land fraction."""
        if self.land_fraction is None:
            return values["heat_capacity"]
        land = self.land_fraction
        return land * values["land_heat_capacity"] + (1.0 - land) * values["ocean_heat_capacity"]

    def periodic_cycle(
        self,
        steps_per_year: int = 48,
        *,
        initial: Tensor | None = None,
        spin_up_years: int = 2,
        tol: float | None = None,
        max_iter: int = 20,
        info: EquilibriumInfo | None = None,
    ) -> dict[str, Tensor]:
        """The periodic seasonal cycle, found by shooting and differentiated implicitly.

        Time stepping (``N = steps_per_year`` steps of Δt = year/N, step n centred on day
        ``1 + (n + ½) 365.2422/N``, day 1 = 1 January): insolation Q_n is the daily mean of
        that day (Berger 1978, present-day orbit) and the albedo is taken at the old
        temperature; OLR and diffusion are backward Euler (OLR is linear in T, so its implicit
        part is exact):

            (C + B Δt) T_{n+1} − Δt D 𝓛 T_{n+1} = C T_n + Δt (Q_n (1 − α(T_n)) − A + B·273.15 K),

        one tridiagonal solve per step, stable for any C > 0 and Δt as far as OLR and diffusion
        go. The explicit albedo is a positive feedback (no oscillating instability); it is
        resolved to first order when Δt |∂(Qα)/∂T| ≲ C, i.e. with the smooth ice edge (w = 2 K,
        |∂(Qα)/∂T| ≤ Q (a_i − a₀)/2w ≈ 44 W m-2 K-1 at most) and N = 48 for C ≳ 3e7 J m-2 K-1
        (a sixth of the band ocean). Land-dominated bands with the ice edge inside them in
        summer step it coarsely; Antarctica stays far below T_f, where the edge has no slope.

        Shooting: the periodic state T₀ = Φ(T₀; θ) (Φ: one year of steps) is the root of
        F(T₀) = Φ(T₀) − T₀, solved by Newton's method with the dense Jacobian ∂Φ/∂T₀ − I
        (the tangent-linear year: N steps of ``band`` tangents, exact) in
        :func:`~climgrad.integrate.equilibrium`. Its gradient comes from the implicit function
        theorem, not from the iterations: one adjoint solve (I − ∂Φ/∂T₀)ᵀ λ = ḡ and one
        vector-Jacobian product through a single recorded year, so memory is one year of steps
        whatever the spin-up. The returned year is then rolled out once from T₀ with autograd,
        so ``d(output)/dθ = ∂output/∂θ + ∂output/∂T₀ · dT₀/dθ``. Valid where the periodic
        cycle is an isolated, stable solution (every eigenvalue of ∂Φ/∂T₀ inside the unit
        circle; true away from the ice-edge bifurcations: the damping rate B/C of a year is
        e^{−B·year/C} ≈ 0.7 for a 50 m ocean, far smaller over land); near a bifurcation
        ``I − ∂Φ/∂T₀`` is near-singular and so are the gradients. The same periodic state as a
        long rollout (tested), at the cost of a few years instead of decades.

        Start: ``initial`` if given; else, with a land fraction, the periodic state this model
        found last (kept in its state dict; parameters move little between optimizer steps);
        else :meth:`initial_state` run forward ``spin_up_years`` years (no gradient) so that
        Newton starts on the branch the climate drifts to. A failed warm start falls back to
        the cold one.

        Args:
            steps_per_year: N (≥ 4); 12 k gives k steps per model month.
            initial: Starting guess of T₀ (1 January) in K, ``(band,)``.
            spin_up_years: Years of plain stepping before Newton on a cold start.
            tol: Newton tolerance on max |Φ(T₀) − T₀| in K (default 1e-9 in float64, 1e-3 in
                float32).
            max_iter: Newton iterations before :class:`~climgrad.integrate.EquilibriumError`.
            info: Receives Newton's iteration count and final residual.

        Returns:
            Per step, ``(steps_per_year, band)``: ``surface_temperature`` (K, the step's mean,
            ½(T_n + T_{n+1})), ``insolation``, ``absorbed_shortwave_radiation``,
            ``reflected_shortwave_radiation`` (W m-2, with the albedo the step uses),
            ``outgoing_longwave_radiation`` (W m-2, A + B(T_{n+1} − 273.15 K), as the step
            uses it, so C ΔT/Δt = ASR − OLR + D𝓛T closes per step) and ``albedo`` (1); and
            ``periodic_state``, T₀ ``(band,)`` K. Differentiable in every parameter.

        Raises:
            ValueError: ``steps_per_year`` < 4 or a bad ``initial``.
            EquilibriumError: Newton did not converge from either start.
        """
        if steps_per_year < 4:
            raise ValueError(
                f"steps_per_year={steps_per_year} is too few for a seasonal cycle; use at least 4 "
                "(48 gives 4 steps per month)."
            )
        values = self.parameter_values()
        shortwave = self.processes["shortwave"]
        assert isinstance(shortwave, AbsorbedShortwave)
        ice_edge = shortwave.albedo
        warm = values["a0"] + values["a2"] * self.legendre_p2_of_latitude
        capacity = self._heat_capacity(values).expand(self.n_bands)
        coefficients = [
            values["S0"],
            warm,
            values["ai"],
            values["Tf"],
            values["A"],
            values["B"],
            values["D"],
            capacity,
        ]
        cycle = _SeasonalCycle(
            self._daily_insolation_pattern(steps_per_year),
            float(seconds_per_year) / steps_per_year,
            ice_edge.transition_width,
            ice_edge.mode,
            self.grid,
        )
        if tol is None:
            tol = 1e-9 if warm.dtype == torch.float64 else 1e-3

        def solve(start: Tensor) -> Tensor:
            return equilibrium(
                cycle.residual,
                start,
                coefficients,
                jacobian=cycle.jacobian,
                structure="dense",
                tol=float(tol),
                max_iter=max_iter,
                info=info,
            )

        starts = self._periodic_starts(initial, cycle, coefficients, spin_up_years)
        periodic_state = solve_with_restarts(solve, starts, recoverable=(EquilibriumError,))
        if self.warm_periodic_state is not None:
            with torch.no_grad():
                self.warm_periodic_state.copy_(periodic_state.detach())
        outputs = cycle.year_series(periodic_state, *coefficients)
        outputs["periodic_state"] = periodic_state
        return outputs

    def _periodic_starts(
        self,
        initial: Tensor | None,
        cycle: _SeasonalCycle,
        coefficients: Sequence[Tensor],
        spin_up_years: int,
    ) -> Iterator[Tensor]:
        """Starting guesses of T₀, best first; the cold one is spun up only when it is reached."""
        if initial is not None:
            start = torch.as_tensor(initial, dtype=self.legendre_p2_of_latitude.dtype)
            if start.shape != (self.n_bands,) or not bool(torch.isfinite(start).all()):
                raise ValueError(
                    f"initial must be a finite temperature (K) per band, shape ({self.n_bands},); "
                    f"got shape {tuple(start.shape)}. Pass e.g. a previous periodic_state."
                )
            yield start.to(self.legendre_p2_of_latitude.device)
            return
        warm = self.warm_periodic_state
        if warm is not None and bool(torch.isfinite(warm).all()):
            yield warm.detach().clone()
        with torch.no_grad():
            temperature = self.initial_state()["surface_temperature"]
            fixed = [c.detach() for c in coefficients]
            for _ in range(max(spin_up_years, 0)):
                temperature = cycle.year(temperature, *fixed)
        yield temperature

    def _daily_insolation_pattern(self, steps_per_year: int) -> Tensor:
        """Daily-mean insolation per unit S₀ at each step's central day, ``(step, band)``."""
        grid = self.grid
        like = self.legendre_p2_of_latitude
        days = 1.0 + (torch.arange(steps_per_year, dtype=torch.float64) + 0.5) * (
            365.2422 / steps_per_year
        )
        pattern = daily_mean_insolation(
            grid.latitude_degrees.double().cpu().unsqueeze(0),
            days.unsqueeze(-1),
            solar_constant=1.0,
        )
        return pattern.to(device=like.device, dtype=like.dtype)

    # Diagnostics -----------------------------------------------------------------------------

    def diagnose(self, state: State) -> dict[str, Tensor]:
        """Fluxes by band plus global means and the northern ice edge (degrees, NaN if none)."""
        _, diagnostics = self(state)
        grid = self.grid
        temperature = state["surface_temperature"]
        diagnostics["global_mean_temperature"] = grid.global_mean(temperature)
        diagnostics["global_mean_outgoing_longwave"] = grid.global_mean(
            diagnostics["outgoing_longwave_radiation"]
        )
        diagnostics["ice_edge_latitude"] = self.ice_edge(temperature)
        return diagnostics

    def ice_edge(self, surface_temperature: Tensor) -> Tensor:
        """Northern latitude (degrees) where T crosses ``Tf``, linear between band centres."""
        shortwave = self.processes["shortwave"]
        assert isinstance(shortwave, AbsorbedShortwave)
        freezing: Tensor = shortwave.albedo.freezing_temperature
        latitude = self.grid.latitude_degrees
        north = latitude > 0
        t = surface_temperature[..., north] - freezing
        lat = latitude[north]
        crossing = (t[..., :-1] > 0) & (t[..., 1:] <= 0)
        if not bool(crossing.any()):
            return torch.full(t.shape[:-1], float("nan"), dtype=t.dtype, device=t.device)
        k = int(torch.nonzero(crossing)[0, -1])
        fraction = t[..., k] / (t[..., k] - t[..., k + 1])
        return lat[k] + fraction * (lat[k + 1] - lat[k])


class _SeasonalCycle:
    """One year of :meth:`EBM1D.periodic_cycle`'s time steps, as pure functions of tensors.

    Every function takes the temperature and the coefficients ``(S₀ W m-2, warm albedo (band,),
    a_i, T_f K, A W m-2, B W m-2 K-1, D W m-2 K-1, C (band,) J m-2 K-1)`` explicitly, so that
    :func:`~climgrad.integrate.equilibrium` can solve for the periodic state and differentiate it
    in the coefficients.

    Args:
        pattern: Daily-mean insolation per unit S₀ at each step, ``(step, band)``.
        time_step: Δt in s.
        transition_width, mode: Of the ice edge (:func:`~climgrad.physics.ebm.ice_fraction_kernel`).
        grid: The latitude bands.
    """

    def __init__(
        self,
        pattern: Tensor,
        time_step: float,
        transition_width: Tensor | float,
        mode: GradientMode,
        grid: LatitudeGrid,
    ) -> None:
        self.pattern = pattern
        self.time_step = time_step
        self.transition_width = transition_width
        self.mode = mode
        self.grid = grid

    def step(
        self, temperature: Tensor, index: int, *coefficients: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(T_{n+1}, Q_n, α_n)``: one step of the scheme of :meth:`EBM1D.periodic_cycle`."""
        solar_constant, warm, ice_albedo, freezing, intercept, slope, diffusivity, capacity = (
            coefficients
        )
        insolation = solar_constant * self.pattern[index]
        ice = ice_fraction_kernel(freezing - temperature, self.transition_width, self.mode)
        albedo = warm + (ice_albedo - warm) * ice
        # OLR's B T part implicit: (C + B Δt) T¹ − Δt D 𝓛 T¹ = C T⁰ + Δt (Q(1 − α) − A + B T_0°C).
        damped = capacity + slope * self.time_step
        sources = insolation * (1.0 - albedo) - intercept + slope * float(freezing_point)
        explicit = (capacity * temperature + self.time_step * sources) / damped
        # The kernel without value checks: the Jacobian below steps tangents (any sign) too.
        updated = implicit_meridional_diffusion_kernel(
            explicit, diffusivity, damped, self.time_step, self.grid
        )
        return updated, insolation, albedo

    def year(self, temperature: Tensor, *coefficients: Tensor) -> Tensor:
        """Φ(T₀): the temperature after one year of steps, K."""
        for index in range(self.pattern.shape[0]):
            temperature = self.step(temperature, index, *coefficients)[0]
        return temperature

    def residual(self, temperature: Tensor, *coefficients: Tensor) -> Tensor:
        """F(T₀) = Φ(T₀) − T₀ in K: zero on the periodic cycle."""
        return self.year(temperature, *coefficients) - temperature

    def jacobian(self, temperature: Tensor, *coefficients: Tensor) -> Tensor:
        """∂F/∂T₀ = ∂Φ/∂T₀ − I, ``(band, band)``, by the tangent-linear year (exact).

        Each step maps a tangent δT to ``𝓘⁻¹((C + Δt ∂S/∂T) δT / (C + B Δt))`` with 𝓘 the
        implicit diffusion and ``∂S/∂T = −Q (a_i − warm) ∂h/∂T`` the ice-albedo slope of the
        explicit sources (local, so diagonal); all ``band`` unit tangents go through together.
        """
        solar_constant, warm, ice_albedo, freezing, _, slope, diffusivity, capacity = coefficients
        count = temperature.shape[-1]
        identity = torch.eye(count, dtype=temperature.dtype, device=temperature.device)
        tangents = identity
        damped = capacity + slope * self.time_step
        for index in range(self.pattern.shape[0]):
            with torch.enable_grad():
                probe = temperature.detach().requires_grad_(True)
                ice = ice_fraction_kernel(
                    freezing.detach() - probe, self.transition_width, self.mode
                )
                (ice_slope,) = torch.autograd.grad(ice.sum(), probe)
            insolation = solar_constant * self.pattern[index]
            source_slope = -insolation * (ice_albedo - warm) * ice_slope
            gain = (capacity + self.time_step * source_slope) / damped
            tangents = implicit_meridional_diffusion_kernel(
                gain * tangents, diffusivity, damped, self.time_step, self.grid
            )
            temperature = self.step(temperature, index, *coefficients)[0]
        # Row k of `tangents` is the response to a unit change of T₀ in band k: a column of ∂Φ/∂T₀.
        return tangents.transpose(-1, -2) - identity

    def year_series(self, start: Tensor, *coefficients: Tensor) -> dict[str, Tensor]:
        """One year from ``start`` with every step's outputs (see :meth:`EBM1D.periodic_cycle`)."""
        intercept, slope = coefficients[4], coefficients[5]
        series: dict[str, list[Tensor]] = {
            name: []
            for name in (
                "surface_temperature",
                "insolation",
                "absorbed_shortwave_radiation",
                "reflected_shortwave_radiation",
                "outgoing_longwave_radiation",
                "albedo",
            )
        }
        temperature = start
        for index in range(self.pattern.shape[0]):
            updated, insolation, albedo = self.step(temperature, index, *coefficients)
            series["surface_temperature"].append(0.5 * (temperature + updated))
            series["insolation"].append(insolation.expand_as(updated))
            series["absorbed_shortwave_radiation"].append(insolation * (1.0 - albedo))
            series["reflected_shortwave_radiation"].append(insolation * albedo)
            series["outgoing_longwave_radiation"].append(
                intercept + slope * (updated - float(freezing_point))
            )
            series["albedo"].append(albedo.expand_as(updated))
            temperature = updated
        return {name: torch.stack(values) for name, values in series.items()}


def latitude_band_edges(bands: int) -> list[float]:
    """Boundaries in degrees north of ``bands`` equal latitude bands, -90 to 90 (``bands + 1``).

    The bands of :class:`EBM1D` (:class:`~climgrad.physics.ebm.LatitudeGrid`), with the poles
    exact, for averaging data onto them before a model exists (e.g. a land fraction).
    """
    edges = [float(b) for b in torch.rad2deg(LatitudeGrid.uniform(bands).band_boundaries)]
    edges[0], edges[-1] = -90.0, 90.0
    return edges


def monthly_means(series: Tensor, months: int = 12) -> Tensor:
    """Means over equal months of a periodic year of steps: ``(step, ...)`` to ``(month, ...)``.

    The model's months are 12 equal parts of the tropical year (30.44 days) from 1 January; a
    calendar month differs from its model month by at most two days at either end, small against
    the one-to-two-month lag of the seasonal cycle.

    Args:
        series: One value per step, steps first; the number of steps a multiple of ``months``.
        months: Number of months (12).

    Returns:
        ``(months, ...)``, in the units of ``series``.

    Raises:
        ValueError: The steps do not divide into ``months`` equal months.

    >>> import torch
    >>> monthly_means(torch.arange(24.0), months=12)[:3]
    tensor([0.5000, 2.5000, 4.5000])
    """
    steps = series.shape[0]
    if months < 1 or steps % months:
        raise ValueError(
            f"{steps} steps per year do not divide into {months} equal months; use a multiple "
            f"of {months} steps per year (e.g. {months * max(1, round(steps / months))})."
        )
    return series.reshape(months, steps // months, *series.shape[1:]).mean(dim=1)


def _checked_land_fraction(land_fraction: Tensor | Sequence[float], bands: int) -> Tensor:
    """``land_fraction`` as a float64 ``(band,)`` tensor; a one-line ValueError names the fix."""
    fraction = torch.as_tensor(land_fraction, dtype=torch.float64).detach().cpu()
    if fraction.shape != (bands,):
        raise ValueError(
            f"land_fraction has shape {tuple(fraction.shape)} but the model has {bands} latitude "
            f"bands; give one value per band, shape ({bands},), e.g. the shipped file averaged "
            "onto the bands (the ebm1d_seasonal adapter does this from model.options)."
        )
    if not bool(torch.isfinite(fraction).all()):
        raise ValueError(
            "land_fraction contains NaN or infinite values; fill missing bands (e.g. with 0 for "
            "open ocean) before building the model."
        )
    low, high = float(fraction.min()), float(fraction.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"land_fraction must lie in [0, 1] (a fraction of each band's area); got values "
            f"from {low:g} to {high:g}. Divide a percentage by 100, or clip with "
            "land_fraction.clamp(0, 1)."
        )
    return fraction
