"""Models: processes composed with learnable physical parameters."""

from __future__ import annotations

from climgrad.models.base import Model, functional
from climgrad.models.column import SingleColumnModel
from climgrad.models.ebm1d import EBM1D

__all__ = ["EBM1D", "Model", "SingleColumnModel", "functional"]
