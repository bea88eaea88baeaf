"""Observations: NetCDF files to weighted, masked tensors on the model grid (:class:`ObsSet`)."""

from __future__ import annotations

from climgrad.data.errors import ObservationError
from climgrad.data.load import load_observation, load_observations, open_dataset
from climgrad.data.obsset import ObservedVariable, ObsSet
from climgrad.data.spec import OPERATORS, ModelGrid, ObservationSpec, read_spec_file

__all__ = [
    "OPERATORS",
    "ModelGrid",
    "ObsSet",
    "ObservationError",
    "ObservationSpec",
    "ObservedVariable",
    "load_observation",
    "load_observations",
    "open_dataset",
    "read_spec_file",
]
