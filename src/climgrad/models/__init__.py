"""Models: processes composed with learnable physical parameters.

Models take tensors and profile objects, never paths: driving data and background atmospheres are
read by :mod:`climgrad.data` and handed in.
"""

from __future__ import annotations

from climgrad.models.base import COMPILE_BACKENDS, CompiledStep, Model, functional
from climgrad.models.column import SingleColumnModel
from climgrad.models.ebm1d import EBM1D
from climgrad.models.flux_tower import FluxTowerModel
from climgrad.models.multisite import MultiSiteColumnModel
from climgrad.models.site_column import SiteColumnModel
from climgrad.models.two_layer import TwoLayerEBM

__all__ = [
    "COMPILE_BACKENDS",
    "EBM1D",
    "CompiledStep",
    "FluxTowerModel",
    "Model",
    "MultiSiteColumnModel",
    "SingleColumnModel",
    "SiteColumnModel",
    "TwoLayerEBM",
    "functional",
]
