"""Models: processes composed with learnable physical parameters."""

from __future__ import annotations

from climgrad.models.base import Model, functional
from climgrad.models.column import SingleColumnModel
from climgrad.models.ebm1d import EBM1D
from climgrad.models.two_layer import TwoLayerEBM

__all__ = ["EBM1D", "Model", "SingleColumnModel", "TwoLayerEBM", "functional"]
