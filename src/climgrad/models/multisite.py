"""``MultiSiteColumnModel``: one column physics at several sites, its parameters declared once.

Each site is a :class:`~climgrad.models.site_column.SiteColumnModel` with its own forcing: the
daily-mean insolation of its latitude and day (Berger 1978), with RRTMG its own background
atmosphere (ozone, well-mixed gases and the humidity profile of, e.g., an AFGL table; Anderson
et al. 1986), and its own equilibrium (warm state). The physical parameters (optical depth,
surface albedo, critical lapse rate, relaxation time, heat exchange, humidity factor; see
:mod:`climgrad.models.column` for their units and bounds) are **shared**: every site reads the
same unconstrained tensor through the same bijection, so that

* each parameter is declared once (the first site's :class:`~climgrad.params.ParamSpec`), is
  listed once by :func:`~climgrad.params.display_names` and ``named_parameters()``, and appears
  once in ``params.nc`` and in a posterior's parameter vector;
* ``d loss / d θ = Σ_s ∂ loss_s / ∂ θ``: the gradient of a loss summed over the sites is the sum
  of the sites' gradients, which is what a data-parallel calibration adds up across ranks
  (:mod:`climgrad.calibration.distributed`).

Tying works on the parametrization: the ``parametrizations.<name>`` list of the first site's
module (the raw ``original`` and its :class:`~climgrad.params.Bijection`) is put in place of the
same list of every other site, and the other sites forget the declaration. A value or ``learn``
flag set on the model therefore reaches every site, including the exact-value correction of a
fixed parameter.

Regime: that of the site columns (local radiative-convective equilibrium, no heat transport
between them): a column is a fair model of the annual-mean tropics and of summer columns; a
winter column at 45 N or 60 N has too little sunlight for a local equilibrium near its observed
temperatures (100 K too cold at 60 N in January), so such sites do not belong in a calibration
of these parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from torch import nn

from climgrad.models.base import Model
from climgrad.models.site_column import SiteColumnModel
from climgrad.params import iter_parameters

__all__ = ["MultiSiteColumnModel"]


class MultiSiteColumnModel(Model):
    """Site columns with shared parameters (see the module docstring).

    Args:
        sites: Site name -> its column, all built with the same options and parameters (same
            radiation, levels, parameter names); the first site's parameter values are kept.
            Names must be valid attribute names (no dots), e.g. ``"tropical"``.

    Attributes:
        sites: The columns, an ``nn.ModuleDict`` in the order given.

    Raises:
        ValueError: No site, a name with a dot, or sites that declare different parameters.
    """

    def __init__(self, sites: Mapping[str, SiteColumnModel]) -> None:
        super().__init__()
        if not sites:
            raise ValueError(
                "MultiSiteColumnModel needs at least one site, e.g. {'tropical': SiteColumnModel("
                "latitude=15.0, day_of_year=80.0, ...)}."
            )
        bad = [name for name in sites if not name or "." in name]
        if bad:
            raise ValueError(f"site names must be non-empty and have no dots; got {bad}.")
        self.sites = nn.ModuleDict(dict(sites))
        reference_name, *others = list(sites)
        reference = sites[reference_name]
        declared = {
            info.qualified_name: info for info in iter_parameters(reference)
        }  # "processes.convection.critical_lapse_rate" -> its ParameterInfo
        for name in others:
            site = sites[name]
            found = {info.qualified_name for info in iter_parameters(site)}
            if found != set(declared):
                raise ValueError(
                    f"site {name!r} declares the parameters {sorted(found)} but site "
                    f"{reference_name!r} declares {sorted(declared)}; build every site with the "
                    "same radiation, humidity and options."
                )
            for qualified, info in declared.items():
                prefix = qualified.rpartition(".")[0]
                module = site.get_submodule(prefix) if prefix else site
                # The same ParametrizationList object: one raw tensor, one bijection.
                shared = cast(nn.ModuleDict, info.module.parametrizations)
                tied = cast(nn.ModuleDict, module.parametrizations)
                tied[info.attribute] = shared[info.attribute]
                specs = dict(getattr(module, "_climgrad_param_specs", {}))
                specs.pop(info.attribute, None)
                object.__setattr__(module, "_climgrad_param_specs", specs)

    @property
    def site_names(self) -> list[str]:
        """The sites, in order."""
        return list(self.sites)

    def site(self, name: str) -> SiteColumnModel:
        """The column of site ``name``.

        Raises:
            KeyError: No such site (the message lists them).
        """
        if name not in self.sites:
            raise KeyError(f"no site {name!r}; sites: {', '.join(self.sites)}.")
        column = self.sites[name]
        assert isinstance(column, SiteColumnModel)
        return column
