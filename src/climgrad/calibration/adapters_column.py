"""Calibration adapter of the single-column model: radiative-convective equilibrium at a site.

:class:`ColumnAdapter` (``model.name=column``) runs
:class:`~climgrad.models.column.SingleColumnModel` to radiative-convective equilibrium under the
daily-mean top-of-atmosphere insolation of one latitude and day (Berger 1978,
:func:`~climgrad.physics.insolation.daily_mean_insolation`) and interpolates the equilibrium
temperature profile, linearly in ln(p), onto the observation levels inside a pressure window. The
default site and day are Darwin during TWP-ICE (12.4 S, day 22.0 of 2006: the middle of the 19-24
January soundings).

Regime: a gray dry column has no tropopause, and its upper, optically thin layers can have
several equilibria (differing by up to ~20 K at 150 hPa and 6 K at 200 hPa, under 0.1 K from
250 hPa down), which Newton reaches depending on where it starts. So the observations are
compared from ``bottom_pressure`` up to ``top_pressure`` (default 1000-250 hPa) only, where the
equilibrium does not depend on the branch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from climgrad.calibration.adapters import ModelAdapter, ObservationLayout, register_adapter
from climgrad.calibration.errors import CalibrationError
from climgrad.data import ModelGrid
from climgrad.integrate import EquilibriumError, _jacobian
from climgrad.models.base import Model
from climgrad.models.column import OPTIONAL_SPECS, RRTMG_SPECS, SPECS, SingleColumnModel
from climgrad.physics.insolation import daily_mean_cosine_zenith, daily_mean_insolation

__all__ = [
    "ColumnAdapter",
    "SiteColumnModel",
    "interpolate_log_pressure",
    "largest_growth_rate",
]

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
            raise CalibrationError(
                f"no observation level lies between model.options.top_pressure="
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
    prognostic = ("air_temperature", "surface_temperature", "specific_humidity")
    forcing = {k: v for k, v in column.cold_state().items() if k not in prognostic}
    packed = column._pack(dict(state)).detach()[0]

    def residual(x: Tensor) -> Tensor:
        result: Tensor = column._residual(x.unsqueeze(0), forcing)[0]
        return result

    with torch.no_grad():
        # torch.func where it can; forward mode for RRTMG (external Functions have no vmap rule).
        jacobian = _jacobian(lambda x: residual(x), packed, [])
    return float(torch.linalg.eigvals(jacobian).real.max())


def _column(model: Model) -> SiteColumnModel:
    if not isinstance(model, SiteColumnModel):
        raise CalibrationError(f"the column adapter needs a SiteColumnModel, got {type(model)}.")
    return model


@register_adapter
class ColumnAdapter(ModelAdapter):
    """:class:`SingleColumnModel` in radiative-convective equilibrium at a site.

    ``model.options``: the constructor's options (``levels``, ``surface_pressure``,
    ``diffusivity``, ...) plus ``latitude`` (degrees north) and ``day_of_year`` (day 1 = 1
    January) of the daily-mean insolation, ``top_pressure`` / ``bottom_pressure`` (Pa, the
    window of observation levels compared) and ``surface_temperature_guess`` (K, cold start).

    With ``model.options.radiation: rrtmg`` (config ``model=column_rrtmg``) the column runs RRTMG
    in place of the gray radiation (``background``: an AFGL table for ozone and gases,
    ``humidity``, ``mole_fractions``; see :class:`~climgrad.models.column.SingleColumnModel`); the
    shortwave takes the site's daily-mean insolation along the insolation-weighted zenith angle.

    ``model.simulate``: ``tol`` (Newton tolerance in K day-1; default 1e-9 in float64 with gray
    radiation, 1e-3 with RRTMG, 1e-2 in float32), ``max_iter``, ``spin_up_steps`` (explicit
    hourly steps before Newton on a cold start) and ``warm_start`` (start Newton from the
    previous call's equilibrium, without spin-up). Newton can cycle on the steep convective
    switch, or step out of the physical range, when it starts far from the solution; a failed
    solve falls back to the warm state after
    ``spin_up_steps`` and then 10 x ``spin_up_steps`` explicit steps, then to cold starts with as
    many, and raises :class:`~climgrad.integrate.EquilibriumError` (the loop skips the step) if
    all fail. A warm solve returns the cold-start equilibrium (tested after moving a parameter
    away and back), about 20 times faster (0.3 s against 6 s for 40 levels, with the adjoint).
    It makes a step depend on the previous one's solution at the Newton tolerance; the warm
    state is part of the model's state dict (buffers ``warm_*``), so a resumed run continues from
    it (bit-identical on the CPU in float64) and :func:`climgrad.load_run` reproduces the run's
    fit on the branch the run was on.

    Outputs: ``air_temperature`` (K) on the observation levels in the window, ascending pressure,
    shape ``(plev,)``.
    """

    name: ClassVar[str] = "column"
    simulate_defaults: ClassVar[dict[str, Any]] = {
        "tol": None,
        "max_iter": 30,
        "spin_up_steps": 200,
        "warm_start": True,
    }
    _SITE_OPTIONS: ClassVar[dict[str, Any]] = {
        "latitude": -12.4,
        "day_of_year": 22.0,
        "top_pressure": 25000.0,
        "bottom_pressure": 100000.0,
        "surface_temperature_guess": 300.0,
    }

    def model_class(self) -> type[Model]:
        return SingleColumnModel

    def option_names(self) -> list[str]:
        return [*super().option_names(), *self._SITE_OPTIONS]

    def parameter_names(self) -> list[str]:
        return [*SPECS, *OPTIONAL_SPECS, *RRTMG_SPECS]

    def build(
        self, options: Mapping[str, Any], *, dtype: torch.dtype, device: torch.device
    ) -> Model:
        settings = {**self._SITE_OPTIONS, **dict(options)}
        try:
            return SiteColumnModel(**settings, dtype=dtype, device=device)
        except (TypeError, ValueError, ImportError) as err:
            # ImportError: radiation=rrtmg without the optional extra (the message says how).
            raise CalibrationError(f"cannot build column from model.options: {err}") from err

    def observation_grid(self, model: Model, spec_grid: ModelGrid) -> ModelGrid:
        column = _column(model)
        if not spec_grid.pressure_levels:
            raise CalibrationError(
                "the column adapter needs pressure_levels in the observation grid (data.spec)."
            )
        column.observation_pressure = column.window(spec_grid.pressure_levels)
        levels = [float(p) for p in column.observation_pressure.cpu()]
        return ModelGrid(pressure_levels=levels, sites=dict(spec_grid.sites))

    def equilibrium(self, model: Model, options: Mapping[str, Any]) -> dict[str, Tensor]:
        """The equilibrium state (warm-started as ``options`` say)."""
        settings = {**self.simulate_defaults, **dict(options)}
        column = _column(model)
        tol = settings["tol"]
        if tol is None and column.layer_pressure.dtype != torch.float64:
            tol = 1e-2
        tolerance = None if tol is None else float(tol)  # None: the model's (gray or RRTMG)
        max_iter = int(settings["max_iter"])
        spin_up = int(settings["spin_up_steps"])
        warm = column.warm_state if settings["warm_start"] else None
        # Newton can cycle on the steep convective switch when it starts far from the solution;
        # each fallback starts it closer (explicit steps first) at a higher cost.
        attempts: list[tuple[dict[str, Tensor], int]] = []
        if warm is not None:
            attempts += [(warm, 0), (warm, spin_up), (warm, 10 * spin_up)]
        attempts += [({}, spin_up), ({}, 10 * spin_up)]
        failure = ""
        for start, steps in attempts:
            try:
                state = column.equilibrium(
                    {**column.cold_state(), **start},
                    spin_up_steps=steps,
                    tol=tolerance,
                    max_iter=max_iter,
                )
                break
            except (EquilibriumError, ValueError) as err:
                # ValueError: the explicit steps or Newton's backtracking left the physical range.
                failure = str(err)
        else:
            raise EquilibriumError(f"no start converged; the last said: {failure}")
        prognostic = ("air_temperature", "surface_temperature", "specific_humidity")
        column.warm_state = {k: state[k].detach() for k in prognostic if k in state}
        return state

    def simulate(self, model: Model, options: Mapping[str, Any]) -> dict[str, Tensor]:
        column = _column(model)
        state = self.equilibrium(column, options)
        profile = interpolate_log_pressure(
            state["air_temperature"][0], column.layer_pressure, column.observation_pressure
        )
        return {"air_temperature": profile}

    def layout(self, model: Model) -> ObservationLayout:
        pressure = _column(model).observation_pressure.detach().double()
        weights = torch.full_like(pressure, 1.0 / pressure.shape[0])
        return ObservationLayout(("plev",), {"plev": pressure}, weights)

    def derived(self, model: Model, outputs: Mapping[str, Tensor]) -> dict[str, float]:
        column = _column(model)
        result = {"insolation_W_m-2": float(column.insolation[0])}
        if column.warm_state is not None:
            result["surface_temperature_K"] = float(column.warm_state["surface_temperature"][0])
            result["lowest_layer_temperature_K"] = float(
                column.warm_state["air_temperature"][0, -1]
            )
            result["largest_growth_rate_per_day"] = largest_growth_rate(column, column.warm_state)
        return result
