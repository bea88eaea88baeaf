"""A single column at a site: daily-mean insolation, observation levels, a warm equilibrium.

:class:`SiteColumnModel` is a :class:`~climgrad.models.column.SingleColumnModel` under the
daily-mean top-of-atmosphere insolation of one latitude and day (Berger 1978,
:func:`~climgrad.physics.insolation.daily_mean_insolation`), reporting its equilibrium
temperature profile, interpolated linearly in ln(p) (:func:`interpolate_log_pressure`), on
observation levels inside a pressure window. The default site and day are Darwin during TWP-ICE
(12.4 S, day 22.0 of 2006: the middle of the 19-24 January soundings).

Regime: a gray dry column has no tropopause, and its upper, optically thin layers can have
several equilibria (differing by up to ~20 K at 150 hPa and 6 K at 200 hPa, under 0.1 K from
250 hPa down), which Newton reaches depending on where it starts. So observations are compared
from ``bottom_pressure`` up to ``top_pressure`` only, where the equilibrium does not depend on the
branch; the last equilibrium is kept (:attr:`SiteColumnModel.warm_state`, in buffers) so that a
run stays on its branch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from climgrad.integrate import jacobian, solve_with_restarts
from climgrad.models.column import SingleColumnModel
from climgrad.physics.insolation import daily_mean_cosine_zenith, daily_mean_insolation

__all__ = [
    "TWPICE_PRESSURE_LEVELS",
    "SiteColumnModel",
    "cold_point",
    "interpolate_log_pressure",
    "largest_growth_rate",
]

_PROGNOSTIC = ("air_temperature", "surface_temperature", "specific_humidity")

#: Standard pressure levels (Pa) of the TWP-ICE spec (data/specs/single_column.yaml).
TWPICE_PRESSURE_LEVELS = (
    100000.0,
    92500.0,
    85000.0,
    70000.0,
    60000.0,
    50000.0,
    40000.0,
    30000.0,
    25000.0,
    20000.0,
    15000.0,
    10000.0,
    7000.0,
    5000.0,
)


def interpolate_log_pressure(values: Tensor, pressure: Tensor, target_pressure: Tensor) -> Tensor:
    """Linear interpolation in ln(p) of a profile onto other pressure levels.

    ``y(p*) = y_k + (y_{k+1} - y_k) (ln p* - ln p_k) / (ln p_{k+1} - ln p_k)`` with ``k`` the
    bracketing layer; targets outside ``pressure`` are extrapolated linearly from the two nearest
    levels (used for the 1000 hPa level, which lies between the lowest layer centre and the
    surface). Differentiable in ``values`` (the weights depend only on the fixed pressures).

    Args:
        values: Profile ``(..., level)`` in any units.
        pressure: Pressure of the levels ``(level,)`` in Pa, strictly increasing.
        target_pressure: Target pressures ``(target,)`` in Pa (any order).

    Returns:
        The profile on ``target_pressure``, shape ``(..., target)``.
    """
    if pressure.ndim != 1 or pressure.shape[0] < 2:
        raise ValueError("`pressure` must be 1-D with at least 2 levels (Pa).")
    log_pressure = torch.log(pressure.detach())
    log_target = torch.log(target_pressure.detach().to(log_pressure))
    if not bool((log_pressure[1:] > log_pressure[:-1]).all()):
        raise ValueError("`pressure` must increase strictly (top first); sort the levels.")
    upper = torch.searchsorted(log_pressure, log_target).clamp(1, pressure.shape[0] - 1)
    lower = upper - 1
    weight = (log_target - log_pressure[lower]) / (log_pressure[upper] - log_pressure[lower])
    weight = weight.to(values.dtype)
    return values[..., lower] * (1.0 - weight) + values[..., upper] * weight


def cold_point(column: SingleColumnModel, air_temperature: Tensor) -> dict[str, float]:
    """The coldest layer above 400 hPa: ``cold_point_pressure_Pa`` and ``cold_point_temperature_K``.

    The cold-point tropopause of one equilibrium profile ``(level,)`` (K, top first) on the
    column's layers (a layer, not interpolated: 25 hPa resolution with 40 layers).
    """
    upper = column.layer_pressure < 4.0e4
    temperature = air_temperature.detach().masked_fill(~upper, float("inf"))
    index = int(torch.argmin(temperature))
    return {
        "cold_point_pressure_Pa": float(column.layer_pressure[index]),
        "cold_point_temperature_K": float(air_temperature[index]),
    }


class SiteColumnModel(SingleColumnModel):
    """A :class:`SingleColumnModel` with its site's forcing and observation levels.

    Attributes:
        insolation: Daily-mean top-of-atmosphere insolation ``(1,)`` in W m-2.
        surface_temperature_guess: First guess of T_s in K for the cold-start spin-up.
        observation_pressure: Ascending pressures (Pa) the profile is reported on.
        warm_state: The last equilibrium (detached), the next solve's first guess; held in
            buffers, so that checkpoints and :func:`climgrad.load_run` keep it.
    """

    warm_air_temperature: Tensor
    warm_surface_temperature: Tensor

    def __init__(
        self,
        *,
        latitude: float,
        day_of_year: float,
        top_pressure: float,
        bottom_pressure: float,
        surface_temperature_guess: float,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        like = self.layer_pressure
        site = torch.tensor([latitude], dtype=like.dtype, device=like.device)
        day = torch.tensor([day_of_year], dtype=like.dtype, device=like.device)
        self.insolation = daily_mean_insolation(site, day)
        #: Insolation-weighted daily-mean cos(zenith), the path of the RRTMG shortwave.
        self.cosine_zenith = daily_mean_cosine_zenith(site, day)
        self.surface_temperature_guess = float(surface_temperature_guess)
        self.top_pressure = float(top_pressure)
        self.bottom_pressure = float(bottom_pressure)
        self.observation_pressure = self.window(TWPICE_PRESSURE_LEVELS)
        # The warm state lives in buffers (NaN: none yet), so checkpoints carry it: a resumed run
        # and load_run continue from the equilibrium branch the run was on.
        shapes = {"air_temperature": (1, self.levels), "surface_temperature": (1,)}
        if self.moisture:
            shapes["specific_humidity"] = (1, self.levels)
        for name, shape in shapes.items():
            self.register_buffer(f"warm_{name}", torch.full(shape, float("nan"), dtype=like.dtype))
        self._warm_names = tuple(shapes)

    @property
    def warm_state(self) -> dict[str, Tensor] | None:
        """The last equilibrium (detached, one column), or None before the first solve."""
        if bool(torch.isnan(self.warm_surface_temperature).any()):
            return None
        return {name: getattr(self, f"warm_{name}") for name in self._warm_names}

    @warm_state.setter
    def warm_state(self, state: Mapping[str, Tensor] | None) -> None:
        for name in self._warm_names:
            buffer = getattr(self, f"warm_{name}")
            if state is None:
                buffer.fill_(float("nan"))
            else:
                buffer.copy_(state[name].detach().reshape(buffer.shape))

    def _load_from_state_dict(
        self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Checkpoints written before the warm state was saved have no warm_* entries: start cold.
        for name in self._warm_names:
            key = f"{prefix}warm_{name}"
            if key not in state_dict:
                state_dict[key] = torch.full_like(getattr(self, f"warm_{name}"), float("nan"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def window(self, levels: list[float] | tuple[float, ...]) -> Tensor:
        """The levels (Pa) inside ``[top_pressure, bottom_pressure]``, ascending."""
        inside = sorted(p for p in levels if self.top_pressure <= p <= self.bottom_pressure)
        if not inside:
            raise ValueError(
                f"no observation level lies between top_pressure="
                f"{self.top_pressure:g} Pa and bottom_pressure={self.bottom_pressure:g} Pa; "
                f"levels: {sorted(levels)}."
            )
        return torch.tensor(
            inside, dtype=self.layer_pressure.dtype, device=self.layer_pressure.device
        )

    def cold_state(self) -> dict[str, Tensor]:
        """B2's initial profile at the guessed surface temperature and the site's insolation."""
        guess = torch.full_like(self.insolation, self.surface_temperature_guess)
        if self.radiation == "rrtmg":
            return self.initial_state(
                guess, self.insolation, cosine_solar_zenith_angle=self.cosine_zenith
            )
        return self.initial_state(guess, self.insolation)

    def solve(
        self,
        *,
        tol: float | None = None,
        max_iter: int = 30,
        spin_up_steps: int = 200,
        warm_start: bool = True,
    ) -> dict[str, Tensor]:
        """The site's equilibrium, differentiable in the parameters (implicit differentiation).

        Newton can cycle on the steep convective switch, or step out of the physical range, when
        it starts far from the solution, so the starts are tried in turn
        (:func:`~climgrad.integrate.solve_with_restarts`): the warm state with no, ``spin_up_steps``
        and ``10 × spin_up_steps`` explicit hourly steps first, then cold starts after
        ``spin_up_steps`` and ``10 × spin_up_steps``. The solution becomes the next warm state.

        Args:
            tol: Newton tolerance in K day-1 (default: 1e-9 gray, 1e-3 RRTMG, in float64;
                1e-2 in float32).
            max_iter: Newton iterations per start.
            spin_up_steps: Explicit steps before Newton on a cold start.
            warm_start: Start from :attr:`warm_state` when there is one.

        Raises:
            EquilibriumError: No start converged.
        """
        if tol is None and self.layer_pressure.dtype != torch.float64:
            tol = 1e-2
        warm = self.warm_state if warm_start else None
        starts: list[tuple[dict[str, Tensor], int]] = []
        if warm is not None:
            starts += [(warm, 0), (warm, spin_up_steps), (warm, 10 * spin_up_steps)]
        starts += [({}, spin_up_steps), ({}, 10 * spin_up_steps)]

        def from_start(start: tuple[dict[str, Tensor], int]) -> dict[str, Tensor]:
            state, steps = start
            return self.equilibrium(
                {**self.cold_state(), **state}, spin_up_steps=steps, tol=tol, max_iter=max_iter
            )

        state = solve_with_restarts(from_start, starts)
        self.warm_state = {k: state[k].detach() for k in _PROGNOSTIC if k in state}
        return state


def largest_growth_rate(column: SiteColumnModel, state: Mapping[str, Tensor]) -> float:
    """Largest real part of the eigenvalues of the Jacobian of the tendencies at ``state``.

    Negative: the equilibrium is linearly stable (a time integration returns to it); positive:
    unstable, a perturbation grows by e in ``1 / rate`` days. The gray column can have several
    equilibria that differ in the upper layers (where the optical depth and so the radiative
    coupling is small), and Newton's method may converge to an unstable one; this diagnostic says
    which kind a run has found.

    Args:
        column: The model.
        state: An equilibrium, ``air_temperature`` ``(1, level)`` and ``surface_temperature``
            ``(1,)`` in K.

    Returns:
        The growth rate in day-1.
    """
    forcing = {k: v for k, v in column.cold_state().items() if k not in _PROGNOSTIC}
    packed = column._pack(dict(state)).detach()[0]

    def residual(x: Tensor) -> Tensor:
        result: Tensor = column._residual(x.unsqueeze(0), forcing)[0]
        return result

    with torch.no_grad():
        # torch.func where it can; forward mode for RRTMG (external Functions have no vmap rule).
        matrix = jacobian(residual, packed)
    return float(torch.linalg.eigvals(matrix).real.max())
