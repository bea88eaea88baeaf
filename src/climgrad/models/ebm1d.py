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

Positive parameters are stored as logarithms, so an optimizer step changes each by a similar
*relative* amount whatever its magnitude. ``Tf`` is dead in ``albedo_mode="exact"`` (see
:mod:`climgrad.physics.ebm`). The equilibrium does not depend on ``heat_capacity``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from climgrad.autograd.smooth import GradientMode
from climgrad.constants import freezing_point, seconds_per_year
from climgrad.integrate import EquilibriumInfo, equilibrium, rollout
from climgrad.models.base import Model, functional
from climgrad.params import ParamSpec, TransformName, constrain
from climgrad.physics.ebm import (
    AbsorbedShortwave,
    LatitudeGrid,
    MeridionalDiffusion,
    OutgoingLongwave,
)
from climgrad.physics.insolation import (
    annual_mean_insolation,
    annual_mean_insolation_p2,
    daily_mean_insolation,
    legendre_p2,
)
from climgrad.typing import Diagnostics, State, Tendencies

__all__ = ["EBM1D"]

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
}
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
        learn: Which parameters are learnable (default: all but ``S0`` and ``heat_capacity``).
        dtype, device: Of the parameters and the grid.

    State: ``{"surface_temperature": (..., band) K}``.
    """

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
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        if bands < 2:
            raise ValueError(f"EBM1D needs at least 2 latitude bands, got {bands}.")
        unknown = sorted(set(learn) - set(SPECS))
        if unknown:
            raise ValueError(f"Unknown parameter(s) {unknown} in learn=; valid: {list(SPECS)}.")
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
        self.heat_capacity = torch.nn.Parameter(torch.tensor(heat_capacity, dtype=dtype))
        values = {"A": A, "B": B, "D": D, "a0": a0, "a2": a2, "ai": ai, "Tf": Tf, "S0": S0}
        for name, (process, path) in _LOCATION.items():
            *parents, attribute = path.split(".")
            owner = self.processes[process]
            for parent in parents:
                owner = getattr(owner, parent)
            constrain(owner, attribute, SPECS[name], value=values[name], learn=name in learn)
        constrain(self, "heat_capacity", SPECS["heat_capacity"], learn="heat_capacity" in learn)
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
        x = self.grid.sin_latitude
        return {"surface_temperature": freezing_point + 12.0 - 40.0 * legendre_p2(x)}

    # Physics ---------------------------------------------------------------------------------

    def heating(self, surface_temperature: Tensor) -> Tensor:
        """Net column heating ``ASR − OLR + D𝓛T`` in W m-2, ``(..., band)``."""
        total = surface_temperature.new_zeros(())
        for process in self.processes.values():
            total = total + process.heating(surface_temperature)  # type: ignore[operator]
        return total

    def forward(self, state: State) -> tuple[Tendencies, Diagnostics]:
        """Tendency ``dT/dt`` (K s-1) and diagnostics by band.

        Diagnostics: ``absorbed_shortwave_radiation``, ``outgoing_longwave_radiation``,
        ``meridional_heat_convergence``, ``net_heating``, ``insolation`` and
        ``reflected_shortwave_radiation`` in W m-2; ``albedo`` and ``ice_fraction``.
        """
        _, diagnostics = super().forward(state)
        heating = (
            diagnostics["absorbed_shortwave_radiation"]
            - diagnostics["outgoing_longwave_radiation"]
            + diagnostics["meridional_heat_convergence"]
        )
        diagnostics["net_heating"] = heating
        shortwave = self.processes["shortwave"]
        assert isinstance(shortwave, AbsorbedShortwave)
        insolation = state["insolation"] if "insolation" in state else shortwave.insolation
        diagnostics["insolation"] = insolation.expand_as(heating)
        diagnostics["reflected_shortwave_radiation"] = insolation * diagnostics["albedo"]
        return {"surface_temperature": heating / self.heat_capacity}, diagnostics

    def step(self, state: State, time_step: float) -> dict[str, Tensor]:
        """Semi-implicit step: explicit radiation, backward-Euler diffusion (stable for any Δt)."""
        temperature = state["surface_temperature"]
        sources = self.processes["shortwave"](state)[1]["absorbed_shortwave_radiation"]
        # OutgoingLongwave.heating is -OLR.
        sources = sources + self.processes["olr"].heating(temperature)  # type: ignore[operator]
        explicit = temperature + time_step * sources / self.heat_capacity
        diffusion = self.processes["diffusion"]
        assert isinstance(diffusion, MeridionalDiffusion)
        updated = diffusion.implicit_step(explicit, time_step, self.heat_capacity)
        return {**state, "surface_temperature": updated}

    def equilibrium(
        self,
        initial: State | None = None,
        *,
        tol: float = 1e-9,
        max_iter: int = 50,
        info: EquilibriumInfo | None = None,
    ) -> dict[str, Tensor]:
        """Steady state by Newton's method, differentiable by implicit differentiation.

        Args:
            initial: Starting state (default :meth:`initial_state`, the present-day branch; the
                model has several equilibria and the start selects one).
            tol: Tolerance on max |net heating| in W m-2.
            max_iter: Newton iterations before :class:`~climgrad.integrate.EquilibriumError`.
            info: Receives the iteration count and final residual.

        Returns:
            The state ``{"surface_temperature": T* (band,) K}``; gradients flow to every learnable
            parameter through one adjoint solve.
        """
        start = (initial or self.initial_state())["surface_temperature"]
        residual, tensors = functional(self, "heating")
        solution = equilibrium(residual, start, tensors, tol=tol, max_iter=max_iter, info=info)
        return {"surface_temperature": solution}

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
