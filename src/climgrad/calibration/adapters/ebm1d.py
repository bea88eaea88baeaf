"""Adapter of :class:`~climgrad.models.EBM1D`: the equilibrium on the model's latitude bands."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from climgrad.calibration.adapters.base import (
    ModelAdapter,
    ObservationLayout,
    register_adapter,
    typed_model,
)
from climgrad.data import ModelGrid
from climgrad.integrate import EquilibriumError, solve_with_restarts
from climgrad.models import EBM1D, Model
from climgrad.models.ebm1d import SPECS

__all__ = ["EBM1DAdapter"]


@register_adapter
class EBM1DAdapter(ModelAdapter):
    """:class:`~climgrad.models.ebm1d.EBM1D` at equilibrium, diagnostics on its latitude bands.

    ``model.simulate`` options: ``tol`` (Newton tolerance on max |net heating|, W m-2; default
    1e-9 in float64 and 0.1 in float32, where rounding the diffusive fluxes, ~1e3 W m-2 K-1 times
    300 K, leaves residuals of a few 0.01 W m-2), ``max_iter``, and ``spin_up`` /
    ``ensemble_spin_up``: 30-day pseudo-time steps before Newton for one solve (default 0: the
    gradient path moves the parameters little between solves) and for the members of an ensemble
    (default 24: a member far from the initial parameters then reaches the branch its climate
    drifts to, not the snowball or ice-free one Newton may jump to; ``EBM1D.equilibrium``; a
    batch whose Newton solve fails after it is spun up ten times longer and solved again).
    Outputs: ``surface_temperature`` (K) and every diagnostic of ``EBM1D.forward``
    (W m-2, albedo 1), shape ``(band,)``.
    """

    name: ClassVar[str] = "ebm1d"
    batched: ClassVar[bool] = True
    simulate_defaults: ClassVar[dict[str, Any]] = {
        "tol": None,
        "max_iter": 50,
        "spin_up": 0,
        "ensemble_spin_up": 24,
    }

    def model_class(self) -> type[Model]:
        return EBM1D

    def parameter_names(self) -> list[str]:
        return list(SPECS)

    def observation_grid(self, model: Model, spec_grid: ModelGrid) -> ModelGrid:
        # The model's own bands, whatever the spec says, so that model.options.bands just works.
        bounds = (
            torch.rad2deg(typed_model(model, EBM1D, self.name).grid.band_boundaries).double().cpu()
        )
        edges = [float(b) for b in bounds]
        edges[0], edges[-1] = -90.0, 90.0
        return ModelGrid(latitude_bounds=edges, sites=dict(spec_grid.sites))

    def simulate(self, model: Model, options: Mapping[str, Any]) -> dict[str, Tensor]:
        return self._solve(typed_model(model, EBM1D, self.name), options, None)

    def simulate_batch(
        self, model: Model, parameters: Mapping[str, Tensor], options: Mapping[str, Any]
    ) -> dict[str, Tensor]:
        """J equilibria in one Newton solve (parameters ``(J,)``; outputs ``(J, band)``)."""
        ebm = typed_model(model, EBM1D, self.name)
        batch = dict(parameters)
        return self._solve(ebm, options, batch)

    def _solve(
        self, ebm: EBM1D, options: Mapping[str, Any], parameters: Mapping[str, Tensor] | None
    ) -> dict[str, Tensor]:
        settings = {**self.simulate_defaults, **dict(options)}
        tol = settings["tol"]
        if tol is None:
            dtype = next(ebm.parameters()).dtype
            tol = 1e-9 if dtype == torch.float64 else 0.1
        spin_up = int(settings["spin_up"] if parameters is None else settings["ensemble_spin_up"])

        def solve(steps: int) -> dict[str, Tensor]:
            return ebm.equilibrium(
                tol=float(tol),
                max_iter=int(settings["max_iter"]),
                parameters=parameters,
                spin_up=steps,
            )

        # Members near the ice-edge bifurcation drift slowly (to the snowball, often): when
        # Newton fails after the spin-up, spin up ten times longer and try again.
        starts = [spin_up] if parameters is None or spin_up == 0 else [spin_up, 10 * spin_up]
        state = solve_with_restarts(solve, starts, recoverable=(EquilibriumError,))
        _, diagnostics = ebm(state, parameters) if parameters is not None else ebm(state)
        outputs = {"surface_temperature": state["surface_temperature"], **diagnostics}
        if parameters is not None:
            shape = state["surface_temperature"].shape
            outputs = {k: v.expand(shape) if v.shape != shape else v for k, v in outputs.items()}
        return outputs

    def layout(self, model: Model) -> ObservationLayout:
        grid = typed_model(model, EBM1D, self.name).grid
        latitude = torch.rad2deg(grid.band_centres).double()
        edges = torch.rad2deg(grid.band_boundaries).double()
        area = torch.sin(grid.band_boundaries[1:]) - torch.sin(grid.band_boundaries[:-1])
        return ObservationLayout(
            ("lat",),
            {"lat": latitude, "lat_bounds": torch.stack([edges[:-1], edges[1:]], dim=-1)},
            area / area.sum(),
        )

    def derived(self, model: Model, outputs: Mapping[str, Tensor]) -> dict[str, float]:
        temperature = outputs["surface_temperature"]
        grid = typed_model(model, EBM1D, self.name).grid
        return {
            "global_mean_surface_temperature_K": float(grid.global_mean(temperature)),
            "ice_edge_latitude_deg": float(
                typed_model(model, EBM1D, self.name).ice_edge(temperature)
            ),
        }
