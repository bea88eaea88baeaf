"""Adapter of the seasonal :class:`~climgrad.models.EBM1D`: monthly means of its periodic cycle.

The model is the diffusive energy-balance model on latitude bands with a heat capacity that
follows each band's land fraction, ``C = f C_land + (1 − f) C_ocean`` (North & Coakley 1979,
J. Atmos. Sci. 36, 1189), driven by daily-mean insolation. Its outputs are monthly means of the
periodic seasonal cycle, ``(month, band)``, the layout of the ``monthly_climatology+zonal_mean``
observations (e.g. NCEP R1 1991-2020, ``data/specs/ebm_1d_seasonal.yaml``).

Gradient through the cycle: shooting with implicit differentiation
(:meth:`~climgrad.models.EBM1D.periodic_cycle`). Newton's method solves T₀ = Φ(T₀; θ) for the
1 January state, Φ being one year of time steps, with the exact tangent-linear Jacobian; the
gradient of the periodic state is one adjoint solve with ``(I − ∂Φ/∂T₀)ᵀ`` plus one
vector-Jacobian product through a single recorded year, and the year that gives the monthly means
is rolled out once more from T₀ with autograd. Memory is one year of steps; the cost of a
calibration step is a few years of steps (Newton from the previous step's periodic state converges
in one or two iterations). Valid where the periodic cycle is an isolated stable solution (away
from the ice-albedo bifurcations, where ``I − ∂Φ/∂T₀`` becomes singular and so do the gradients).
"""

from __future__ import annotations

import inspect
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
from climgrad.calibration.adapters.ebm1d import EBM1DAdapter
from climgrad.calibration.errors import CalibrationError
from climgrad.constants import density_water, heat_capacity_water
from climgrad.data import ModelGrid, ObservationSpec, load_observation
from climgrad.models import EBM1D, Model
from climgrad.models.ebm1d import SPECS, latitude_band_edges, monthly_means

__all__ = ["EBM1DSeasonalAdapter", "read_land_fraction"]

#: ρ_w c_w in J m-3 K-1: the heat capacity of one metre of water per square metre.
WATER_HEAT_CAPACITY_PER_METRE = float(density_water) * float(heat_capacity_water)
MONTHS = 12


def read_land_fraction(
    path: str,
    bands: int,
    *,
    variable: str = "land_area_fraction",
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """The land fraction of a file, averaged onto ``bands`` equal latitude bands.

    Area-conservative averaging by :mod:`climgrad.data` (the file's cells need ``lat`` with CF
    bounds or centres, units ``1``), e.g. ``data/ebm_1d/land_fraction_zonal.nc`` (0.5-degree
    cells from the GLOBE 1-km mask, ``scripts/prepare_land_fraction.py``).

    Args:
        path: NetCDF file with a zonal land fraction (dimensionless, in [0, 1]).
        bands: Number of equal latitude bands of the model.
        variable: Name of the variable in the file.
        dtype: Of the result.

    Returns:
        ``(band,)``, dimensionless, south to north.

    Raises:
        ObservationError, CalibrationError: One line naming the file and the fix.
    """
    bounds = latitude_band_edges(bands)
    spec = ObservationSpec(
        name="land_fraction",
        path=str(path),
        variable=variable,
        model_output="land_fraction",
        units="1",
        operator="identity",
        error=1.0,  # unused: a driver, not a target
        valid_range=[0.0, 1.0],
    )
    field = load_observation(spec, ModelGrid(latitude_bounds=bounds), dtype=dtype)
    if not bool(field.mask.all()):
        raise CalibrationError(
            f"the land fraction in {path} does not cover every one of the {bands} bands; give a "
            "file that spans 90 S to 90 N (scripts/prepare_land_fraction.py writes one)."
        )
    return field.values.to(dtype)


@register_adapter
class EBM1DSeasonalAdapter(EBM1DAdapter):
    """:class:`~climgrad.models.ebm1d.EBM1D` with land and ocean heat capacities, monthly means.

    ``model.options``: the options of ``EBM1D`` (``bands``, ``albedo_mode``, ...) except
    ``land_fraction``, which comes from ``land_fraction_file`` (a NetCDF of zonal land fraction,
    averaged onto the bands by :func:`read_land_fraction`) and ``land_fraction_variable``.
    ``model.simulate``: ``steps_per_year`` (a multiple of 12: whole steps per model month;
    default 48), ``tol`` (Newton tolerance on max |Φ(T₀) − T₀| in K; default 1e-9 in float64,
    1e-3 in float32), ``max_iter`` and ``spin_up_years`` (years stepped before Newton on a cold
    start). Newton starts from the previous call's periodic state (kept in the model's state
    dict, so a resumed run and ``load_run`` continue on the same branch) and falls back to a cold
    start.

    Outputs, ``(month, band)``, monthly means of :meth:`EBM1D.periodic_cycle`:
    ``surface_temperature`` (K), ``outgoing_longwave_radiation``, ``insolation``,
    ``absorbed_shortwave_radiation``, ``reflected_shortwave_radiation`` (W m-2), ``albedo`` (1).
    """

    name: ClassVar[str] = "ebm1d_seasonal"
    batched: ClassVar[bool] = False
    path_options: ClassVar[tuple[str, ...]] = ("land_fraction_file",)
    simulate_defaults: ClassVar[dict[str, Any]] = {
        "steps_per_year": 48,
        "tol": None,
        "max_iter": 20,
        "spin_up_years": 2,
    }
    _FILE_OPTIONS: ClassVar[dict[str, Any]] = {
        "land_fraction_file": None,
        "land_fraction_variable": "land_area_fraction",
    }

    def parameter_names(self) -> list[str]:
        return [name for name in SPECS if name != "heat_capacity"]

    def option_names(self) -> list[str]:
        signature = inspect.signature(EBM1D.__init__)
        excluded = {*self.reserved_arguments, *SPECS, "land_fraction"}
        return [*(n for n in signature.parameters if n not in excluded), *self._FILE_OPTIONS]

    def build(
        self, options: Mapping[str, Any], *, dtype: torch.dtype, device: torch.device
    ) -> Model:
        settings = dict(options)
        path = settings.pop("land_fraction_file", None)
        variable = settings.pop(
            "land_fraction_variable", self._FILE_OPTIONS["land_fraction_variable"]
        )
        if path is None:
            raise CalibrationError(
                "model.options.land_fraction_file is not set; give the zonal land fraction, e.g. "
                "${paths.data_dir}/ebm_1d/land_fraction_zonal.nc."
            )
        bands = int(
            settings.get("bands", inspect.signature(EBM1D.__init__).parameters["bands"].default)
        )
        fraction = read_land_fraction(str(path), bands, variable=str(variable))
        try:
            return EBM1D(**settings, land_fraction=fraction, dtype=dtype, device=device)
        except (TypeError, ValueError) as err:
            raise CalibrationError(f"cannot build {self.name} from model.options: {err}") from err

    def simulate(self, model: Model, options: Mapping[str, Any]) -> dict[str, Tensor]:
        ebm = typed_model(model, EBM1D, self.name)
        settings = {**self.simulate_defaults, **dict(options)}
        steps = int(settings["steps_per_year"])
        if steps < MONTHS or steps % MONTHS:
            raise CalibrationError(
                f"model.simulate.steps_per_year={steps} does not give whole steps per month; use "
                f"a multiple of {MONTHS}, e.g. 48 (4 per month) or 72."
            )
        cycle = ebm.periodic_cycle(
            steps,
            tol=None if settings["tol"] is None else float(settings["tol"]),
            max_iter=int(settings["max_iter"]),
            spin_up_years=int(settings["spin_up_years"]),
        )
        cycle.pop("periodic_state")
        return {name: monthly_means(series, MONTHS) for name, series in cycle.items()}

    def simulate_batch(
        self, model: Model, parameters: Mapping[str, Tensor], options: Mapping[str, Any]
    ) -> dict[str, Tensor]:
        # Member by member (the periodic solve takes one parameter set).
        return ModelAdapter.simulate_batch(self, model, parameters, options)

    def layout(self, model: Model) -> ObservationLayout:
        """``(month, lat)``: months 1-12, band centres and edges; area weights, months equal."""
        by_band = super().layout(model)
        months = torch.arange(1, MONTHS + 1, dtype=torch.float64)
        weights = by_band.weights.unsqueeze(0).expand(MONTHS, -1) / MONTHS
        return ObservationLayout(("month", "lat"), {"month": months, **by_band.coords}, weights)

    def derived(self, model: Model, outputs: Mapping[str, Tensor]) -> dict[str, float]:
        """Global annual-mean temperature, the heat capacities as depths of water (m)."""
        ebm = typed_model(model, EBM1D, self.name)
        values = ebm.parameter_values(names=ebm.capacity_names)
        temperature = outputs["surface_temperature"]
        amplitude = temperature.amax(dim=0) - temperature.amin(dim=0)
        return {
            "global_mean_surface_temperature_K": float(ebm.grid.global_mean(temperature.mean(0))),
            "global_mean_seasonal_amplitude_K": float(ebm.grid.global_mean(amplitude)),
            "ocean_mixed_layer_depth_m": float(values["ocean_heat_capacity"])
            / WATER_HEAT_CAPACITY_PER_METRE,
            "land_heat_capacity_water_equivalent_m": float(values["land_heat_capacity"])
            / WATER_HEAT_CAPACITY_PER_METRE,
        }
