"""Adapter of :class:`~climgrad.models.multisite.MultiSiteColumnModel`: one column, many sites.

``model.name=column_sites`` builds one :class:`~climgrad.models.SiteColumnModel` per entry of
``model.options.sites`` (its latitude and day of the daily-mean insolation and, with RRTMG, its
own AFGL background atmosphere) with every physical parameter shared, runs each to
radiative-convective equilibrium and reports each temperature profile as its own output,
``air_temperature_<site>`` (K, observation levels inside the pressure window, ascending
pressure). The loss is then the sum of the sites' misfits, ``L = Σ_s J_s + prior``.

The adapter declares its sites (:meth:`ColumnSitesAdapter.sites`) and simulates any subset of
them (``simulate(model, options, sites=[...])``), which is what a data-parallel run needs
(:mod:`climgrad.calibration.distributed`): rank r solves only its sites, and after every step
the warm state of each site (:meth:`ColumnSitesAdapter.site_state`) is copied from the rank
that solved it to the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from climgrad.calibration.adapters.base import (
    ModelAdapter,
    ObservationLayout,
    register_adapter,
    typed_model,
)
from climgrad.calibration.adapters.column import ColumnAdapter
from climgrad.calibration.errors import CalibrationError
from climgrad.data import ModelGrid
from climgrad.data.afgl import read_afgl
from climgrad.models import Model, SiteColumnModel
from climgrad.models.multisite import MultiSiteColumnModel
from climgrad.models.site_column import interpolate_log_pressure

__all__ = ["OUTPUT_PREFIX", "ColumnSitesAdapter", "site_output"]

#: Outputs are ``air_temperature_<site>``.
OUTPUT_PREFIX = "air_temperature_"


def site_output(site: str) -> str:
    """The output name of ``site``'s temperature profile."""
    return f"{OUTPUT_PREFIX}{site}"


@register_adapter
class ColumnSitesAdapter(ModelAdapter):
    """Single columns at several sites with shared parameters (``model.name=column_sites``).

    ``model.options``: every option of the ``column`` model shared by all sites (``levels``,
    ``surface_pressure``, ``radiation``, ``humidity``, ``mole_fractions``, ``top_pressure``,
    ``bottom_pressure``, ``surface_temperature_guess``, ...), plus

    * ``sites``: ``{name: {latitude, day_of_year[, surface_temperature_guess][, background]}}``,
      latitude in degrees north, day of year with 1 = 1 January, guess in K;
    * ``background_dir``: with ``radiation: rrtmg``, the folder of the AFGL tables; a site's
      table is its ``background`` (relative to this folder) or ``<name>.dat``.

    ``model.simulate``: as for ``column`` (``tol``, ``max_iter``, ``spin_up_steps``,
    ``warm_start``), for every site.

    Outputs: ``air_temperature_<site>`` (K), shape ``(plev,)`` each.
    """

    name: ClassVar[str] = "column_sites"
    path_options: ClassVar[tuple[str, ...]] = ("background_dir",)
    simulate_defaults: ClassVar[dict[str, Any]] = dict(ColumnAdapter.simulate_defaults)
    #: Keys of one entry of ``model.options.sites``.
    SITE_KEYS: ClassVar[tuple[str, ...]] = (
        "latitude",
        "day_of_year",
        "surface_temperature_guess",
        "background",
    )

    def __init__(self) -> None:
        self._column = ColumnAdapter()

    def model_class(self) -> type[Model]:
        return MultiSiteColumnModel

    def option_names(self) -> list[str]:
        per_site = {"latitude", "day_of_year", "background"}
        shared = [name for name in self._column.option_names() if name not in per_site]
        return [*shared, "sites", "background_dir"]

    def parameter_names(self) -> list[str]:
        return self._column.parameter_names()

    def build(
        self, options: Mapping[str, Any], *, dtype: torch.dtype, device: torch.device
    ) -> Model:
        settings = dict(options)
        sites = settings.pop("sites", None)
        background_dir = settings.pop("background_dir", None)
        if not isinstance(sites, Mapping) or not sites:
            raise CalibrationError(
                "model.options.sites is empty; give {name: {latitude: ..., day_of_year: ...}} "
                "for each site (see conf/model/column_sites.yaml)."
            )
        rrtmg = settings.get("radiation", "gray") == "rrtmg"
        columns: dict[str, SiteColumnModel] = {}
        for name, entry in sites.items():
            site = dict(entry or {})
            unknown = sorted(set(site) - set(self.SITE_KEYS))
            if unknown:
                raise CalibrationError(
                    f"model.options.sites.{name}.{unknown[0]} is not a site option; valid: "
                    f"{', '.join(self.SITE_KEYS)}."
                )
            missing = [key for key in ("latitude", "day_of_year") if key not in site]
            if missing:
                raise CalibrationError(
                    f"model.options.sites.{name} needs {' and '.join(missing)} (degrees north; "
                    "day of year, 1 = 1 January)."
                )
            background = site.pop("background", None)
            if rrtmg:
                path = self._background_path(name, background, background_dir)
                site["background"] = read_afgl(path)
            columns[str(name)] = typed_model(
                self._column.build({**settings, **site}, dtype=dtype, device=device),
                SiteColumnModel,
                self.name,
            )
        try:
            return MultiSiteColumnModel(columns)
        except ValueError as err:
            raise CalibrationError(f"cannot build column_sites from model.options: {err}") from None

    @staticmethod
    def _background_path(site: str, background: Any, folder: Any) -> Path:
        path = Path(str(background)) if background else Path(f"{site}.dat")
        if path.is_absolute():
            return path
        if folder is None:
            raise CalibrationError(
                f"model.options.sites.{site} needs an AFGL table with radiation: rrtmg; set "
                "model.options.background_dir (e.g. ${paths.data_dir}/single_column/"
                "afgl_standard_atmospheres) or the site's background."
            )
        return Path(str(folder)) / path

    def observation_grid(self, model: Model, spec_grid: ModelGrid) -> ModelGrid:
        columns = typed_model(model, MultiSiteColumnModel, self.name)
        grid = spec_grid
        for name in columns.site_names:
            grid = self._column.observation_grid(columns.site(name), spec_grid)
        return grid

    # -- the sites, for data-parallel runs (climgrad.calibration.distributed) --------------

    def sites(self, model: Model) -> list[str]:
        """The model's sites, in order."""
        return typed_model(model, MultiSiteColumnModel, self.name).site_names

    def site_state(self, model: Model, site: str) -> list[Tensor]:
        """The tensors a solve of ``site`` updates in place: its warm equilibrium (buffers)."""
        column = typed_model(model, MultiSiteColumnModel, self.name).site(site)
        buffers = column.named_buffers(recurse=False)
        return [buffer for name, buffer in buffers if name.startswith("warm_")]

    def simulate(
        self, model: Model, options: Mapping[str, Any], sites: Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        """``air_temperature_<site>`` of every site, or of ``sites`` only (in model order).

        Raises:
            CalibrationError: ``sites`` names a site the model does not have.
            EquilibriumError: A site's equilibrium did not converge.
        """
        columns = typed_model(model, MultiSiteColumnModel, self.name)
        wanted = columns.site_names if sites is None else list(sites)
        unknown = [site for site in wanted if site not in columns.sites]
        if unknown:
            raise CalibrationError(
                f"no site {unknown[0]!r} in the model; sites: {', '.join(columns.site_names)}."
            )
        outputs = {}
        for name in columns.site_names:
            if name not in wanted:
                continue
            column = columns.site(name)
            state = self._column.equilibrium(column, options)
            outputs[site_output(name)] = interpolate_log_pressure(
                state["air_temperature"][0], column.layer_pressure, column.observation_pressure
            )
        return outputs

    def layout(self, model: Model) -> ObservationLayout:
        columns = typed_model(model, MultiSiteColumnModel, self.name)
        return self._column.layout(columns.site(columns.site_names[0]))

    def derived(self, model: Model, outputs: Mapping[str, Tensor]) -> dict[str, float]:
        """Per site: insolation (W m-2) and equilibrium surface temperature (K)."""
        columns = typed_model(model, MultiSiteColumnModel, self.name)
        result = {}
        for name in columns.site_names:
            column = columns.site(name)
            result[f"insolation_W_m-2_{name}"] = float(column.insolation[0])
            warm = column.warm_state
            if warm is not None:
                result[f"surface_temperature_K_{name}"] = float(warm["surface_temperature"][0])
        return result
