"""Model adapters: each maps one model family's outputs onto observations.

``model.name`` in the config selects one: ``ebm1d``, ``ebm1d_seasonal`` (its seasonal cycle
with land and ocean heat capacities, monthly means), ``two_layer``, ``column``,
``column_sites`` (the column at several sites, parameters shared), ``surface_flux``.
The interface and the registry are in :mod:`climgrad.calibration.adapters.base`; importing this
package registers every family.
"""

from __future__ import annotations

from climgrad.calibration.adapters.base import (
    ADAPTERS,
    ModelAdapter,
    ObservationLayout,
    get_adapter,
    register_adapter,
)
from climgrad.calibration.adapters.column import ColumnAdapter
from climgrad.calibration.adapters.ebm1d import EBM1DAdapter
from climgrad.calibration.adapters.ebm1d_seasonal import EBM1DSeasonalAdapter
from climgrad.calibration.adapters.multisite import ColumnSitesAdapter
from climgrad.calibration.adapters.surface_flux import SurfaceFluxAdapter
from climgrad.calibration.adapters.two_layer import TwoLayerAdapter

__all__ = [
    "ADAPTERS",
    "ColumnAdapter",
    "ColumnSitesAdapter",
    "EBM1DAdapter",
    "EBM1DSeasonalAdapter",
    "ModelAdapter",
    "ObservationLayout",
    "SurfaceFluxAdapter",
    "TwoLayerAdapter",
    "get_adapter",
    "register_adapter",
]
