"""ObsSet: observations as tensors on a device, with masks, weights and errors.

Each :class:`ObservedVariable` holds, on one device and dtype, the observed ``values``, a boolean
``mask`` of valid entries, per-element ``weights`` (area fractions for latitude, uniform
otherwise, zero where masked, summing to one), the 1-sigma ``error`` and the coordinates (float64,
so decimal years resolve half-hours). Masked entries hold finite placeholders (value 0, error 1):
a NaN anywhere in the loss graph would poison gradients even where a ``torch.where`` discards it.

The misfit of a model prediction is the weighted mean squared normalised residual

    J = weight * sum_i w_i m_i ((y_i - o_i) / sigma_i)^2,

with ``w_i`` the element weights, ``m_i`` the mask, ``o_i`` the observations and ``sigma_i`` the
errors (a chi-square per variable when the weights are uniform).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from climgrad.data.errors import ObservationError

_COORD_ATTRS: dict[str, dict[str, str]] = {
    "lat": {"units": "degrees_north", "standard_name": "latitude", "axis": "Y"},
    "lon": {"units": "degrees_east", "standard_name": "longitude", "axis": "X"},
    "plev": {"units": "Pa", "standard_name": "air_pressure", "axis": "Z", "positive": "down"},
    "time": {
        "units": "year",
        "long_name": "time as decimal year",
        "comment": "calendar year plus the elapsed fraction of it in the data's calendar",
    },
    "month": {"units": "1", "long_name": "calendar month (1-12)"},
    "season": {"units": "1", "long_name": "season: 0 DJF, 1 MAM, 2 JJA, 3 SON"},
}


@dataclass
class ObservedVariable:
    """One observed variable on the model grid, as tensors.

    Attributes:
        name: observation name (loss term), e.g. ``"olr"``.
        model_output: the model diagnostic it is compared with.
        operator: the reductions applied to the data (``"time_mean+zonal_mean"``); the model
            output must be reduced the same way before comparison.
        units: SI units of ``values`` and ``error``.
        weight: weight of this variable in the loss (dimensionless).
        dims: dimension names, e.g. ``("lat",)`` or ``("time", "plev")``.
        values: observations, shape ``dims``; 0 where masked.
        mask: ``True`` where the observation is valid.
        weights: element weights, non-negative, 0 where masked, summing to 1.
        error: 1-sigma observation error (``units``), positive; 1 where masked.
        coords: coordinate per dimension (float64), plus ``"<dim>_bounds"`` of shape
            ``(n, 2)`` where cell edges are known (latitude).
        attrs: provenance: source file and variable, operator, regridding.
    """

    name: str
    model_output: str
    operator: str
    units: str
    weight: float
    dims: tuple[str, ...]
    values: Tensor
    mask: Tensor
    weights: Tensor
    error: Tensor
    coords: dict[str, Tensor] = field(default_factory=dict)
    attrs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = tuple(self.values.shape)
        for label in ("mask", "weights", "error"):
            if tuple(getattr(self, label).shape) != shape:
                raise ObservationError(
                    self.attrs.get("source_file"),
                    self.name,
                    f"{label} has shape {tuple(getattr(self, label).shape)} but values {shape}",
                    "build every field of an observed variable on the same dimensions",
                )
        if len(self.dims) != len(shape):
            raise ObservationError(
                self.attrs.get("source_file"),
                self.name,
                f"dims {self.dims} do not match values of shape {shape}",
                "give one dimension name per axis",
            )

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> ObservedVariable:
        """Copy onto ``device`` with floating fields in ``dtype`` (coordinates stay float64)."""
        return dataclasses.replace(
            self,
            values=self.values.to(device=device, dtype=dtype),
            mask=self.mask.to(device=device),
            weights=self.weights.to(device=device, dtype=dtype),
            error=self.error.to(device=device, dtype=dtype),
            coords={k: v.to(device=device) for k, v in self.coords.items()},
        )

    def normalized_residual(self, prediction: Tensor) -> Tensor:
        """``(prediction - values) / error`` where valid, exactly 0 where masked.

        Args:
            prediction: model output in ``units``, broadcastable to ``values``.

        Returns:
            Dimensionless residual, same shape as ``values``; its gradient is 0 (never NaN) at
            masked entries, whatever the prediction is there.
        """
        safe_prediction = torch.where(self.mask, prediction, self.values.to(prediction.dtype))
        residual = (safe_prediction - self.values) / self.error
        return torch.where(self.mask, residual, torch.zeros_like(residual))

    def misfit(self, prediction: Tensor) -> Tensor:
        """Weighted mean squared normalised residual times ``weight`` (a scalar)."""
        residual = self.normalized_residual(prediction)
        return self.weight * (self.weights * residual.square()).sum()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)


class ObsSet(Mapping[str, ObservedVariable]):
    """A named collection of :class:`ObservedVariable` on one device and dtype.

    Behaves as a read-only mapping ``name -> ObservedVariable``. :meth:`to_xarray` gives a CF-style
    Dataset for plots and outputs, and :meth:`from_xarray` reads it back.

    Example:
        >>> import torch
        >>> values = torch.tensor([250.0, 260.0])
        >>> variable = ObservedVariable(
        ...     name="olr", model_output="outgoing_longwave_radiation", operator="time_mean",
        ...     units="W m-2", weight=1.0, dims=("lat",), values=values,
        ...     mask=torch.tensor([True, True]), weights=torch.tensor([0.5, 0.5]),
        ...     error=torch.tensor([5.0, 5.0]), coords={"lat": torch.tensor([-45.0, 45.0])})
        >>> obs = ObsSet({"olr": variable})
        >>> float(obs["olr"].misfit(values + 5.0))
        1.0
    """

    def __init__(self, variables: Mapping[str, ObservedVariable]) -> None:
        self._variables = dict(variables)

    def __getitem__(self, name: str) -> ObservedVariable:
        try:
            return self._variables[name]
        except KeyError:
            raise KeyError(
                f"No observation named {name!r}; the ObsSet holds {sorted(self._variables)}."
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._variables)

    def __len__(self) -> int:
        return len(self._variables)

    def __repr__(self) -> str:
        return f"ObsSet({', '.join(f'{k}{list(v.shape)}' for k, v in self.items())})"

    @property
    def mapping(self) -> dict[str, dict[str, Any]]:
        """``{name: {model_output, operator, weight, units}}``: what the loss needs to pair up."""
        return {
            name: {
                "model_output": v.model_output,
                "operator": v.operator,
                "weight": v.weight,
                "units": v.units,
            }
            for name, v in self.items()
        }

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> ObsSet:
        """Copy every variable onto ``device`` / ``dtype``."""
        return ObsSet({name: v.to(device, dtype) for name, v in self.items()})

    def misfit(self, predictions: Mapping[str, Tensor]) -> Tensor:
        """Sum of :meth:`ObservedVariable.misfit` over variables, predictions keyed by obs name."""
        missing = [name for name in self if name not in predictions]
        if missing:
            raise KeyError(
                f"predictions lack {missing}; give one tensor per observation name "
                f"({sorted(self)}), in the observation's units and shape."
            )
        terms = [self[name].misfit(predictions[name]) for name in self]
        return torch.stack(terms).sum()

    def summary(self) -> str:
        """A table: name, model output, operator, shape, valid count, range, units, error."""
        lines = [
            f"{'name':<22} {'model output':<30} {'operator':<28} {'shape':<12} {'valid':>7} "
            f"{'min':>11} {'max':>11} {'wmean':>11} {'median err':>11} units"
        ]
        for name, v in self.items():
            valid = v.values[v.mask].double()
            lo = f"{float(valid.min()):.5g}" if valid.numel() else "-"
            hi = f"{float(valid.max()):.5g}" if valid.numel() else "-"
            mean = float((v.weights.double() * v.values.double()).sum())
            err = v.error[v.mask].double()
            med = f"{float(err.median()):.4g}" if err.numel() else "-"
            shape = "x".join(map(str, v.shape)) or "scalar"
            lines.append(
                f"{name:<22} {v.model_output:<30} {v.operator:<28} {shape:<12} "
                f"{int(v.mask.sum()):>7} {lo:>11} {hi:>11} {mean:>11.5g} {med:>11} {v.units}"
            )
        return "\n".join(lines)

    def to_xarray(self) -> xr.Dataset:
        """A Dataset with ``<name>`` (NaN where masked), ``<name>_error`` and ``<name>_weights``.

        Mapping metadata (``model_output``, ``operator``, ``weight``, ``units``) are attributes of
        ``<name>``. A dimension whose coordinate differs between variables is renamed
        ``<dim>_<name>``; the attribute ``climgrad_dims`` keeps the original names.
        """
        data_vars: dict[str, xr.DataArray] = {}
        coords: dict[str, xr.DataArray] = {}
        for name, v in self.items():
            dim_names = []
            for dim in v.dims:
                coord = v.coords.get(dim)
                values = None if coord is None else coord.detach().cpu().double().numpy()
                out_dim = dim
                if values is not None:
                    existing = coords.get(dim)
                    if existing is not None and not (
                        existing.shape == values.shape and np.array_equal(existing.values, values)
                    ):
                        out_dim = f"{dim}_{name}"
                    coords[out_dim] = xr.DataArray(
                        values, dims=(out_dim,), attrs=dict(_COORD_ATTRS.get(dim, {}))
                    )
                    bounds = v.coords.get(f"{dim}_bounds")
                    if bounds is not None:
                        bounds_name = f"{out_dim}_bnds"
                        coords[out_dim].attrs["bounds"] = bounds_name
                        coords[bounds_name] = xr.DataArray(
                            bounds.detach().cpu().double().numpy(), dims=(out_dim, "bnds")
                        )
                dim_names.append(out_dim)
            mask = v.mask.detach().cpu().numpy()
            values_np = np.where(mask, v.values.detach().cpu().double().numpy(), np.nan)
            error_np = np.where(mask, v.error.detach().cpu().double().numpy(), np.nan)
            attrs = {
                **v.attrs,
                "units": v.units,
                "model_output": v.model_output,
                "operator": v.operator,
                "weight": float(v.weight),
                "climgrad_dims": " ".join(v.dims),
                "climgrad_role": "observation",
                "ancillary_variables": f"{name}_error {name}_weights",
            }
            data_vars[name] = xr.DataArray(values_np, dims=dim_names, attrs=attrs)
            data_vars[f"{name}_error"] = xr.DataArray(
                error_np,
                dims=dim_names,
                attrs={"units": v.units, "long_name": f"1-sigma observation error of {name}"},
            )
            data_vars[f"{name}_weights"] = xr.DataArray(
                v.weights.detach().cpu().double().numpy(),
                dims=dim_names,
                attrs={"units": "1", "long_name": f"element weights of {name} (sum 1)"},
            )
        # bounds variables are plain data variables in CF; keep them as such
        bounds_vars = {k: c for k, c in coords.items() if k.endswith("_bnds")}
        coords = {k: c for k, c in coords.items() if not k.endswith("_bnds")}
        return xr.Dataset(
            {**data_vars, **bounds_vars},
            coords=coords,
            attrs={"Conventions": "CF-1.10", "title": "climgrad observations (ObsSet)"},
        )

    @classmethod
    def from_xarray(
        cls,
        dataset: xr.Dataset,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> ObsSet:
        """Read back a Dataset written by :meth:`to_xarray`."""
        variables: dict[str, ObservedVariable] = {}
        for name in dataset.data_vars:
            data = dataset[name]
            if data.attrs.get("climgrad_role") != "observation":
                continue
            name = str(name)
            dims = tuple(str(data.attrs["climgrad_dims"]).split()) if data.ndim else ()
            values = np.asarray(data.values, dtype=np.float64)
            error = np.asarray(dataset[f"{name}_error"].values, dtype=np.float64)
            mask = np.isfinite(values)
            coords: dict[str, Tensor] = {}
            for dim, stored in zip(dims, data.dims, strict=True):
                if stored in dataset.coords:
                    coords[dim] = torch.as_tensor(
                        np.array(dataset[stored].values, dtype=np.float64), device=device
                    )
                    bounds_name = dataset[stored].attrs.get("bounds")
                    if bounds_name and bounds_name in dataset:
                        coords[f"{dim}_bounds"] = torch.as_tensor(
                            np.array(dataset[bounds_name].values, dtype=np.float64),
                            device=device,
                        )
            reserved = {
                "units",
                "model_output",
                "operator",
                "weight",
                "climgrad_dims",
                "climgrad_role",
                "ancillary_variables",
            }
            variables[name] = ObservedVariable(
                name=name,
                model_output=str(data.attrs["model_output"]),
                operator=str(data.attrs["operator"]),
                units=str(data.attrs["units"]),
                weight=float(data.attrs["weight"]),
                dims=dims,
                values=torch.as_tensor(np.where(mask, values, 0.0), dtype=dtype, device=device),
                mask=torch.as_tensor(mask, device=device),
                weights=torch.as_tensor(
                    np.array(dataset[f"{name}_weights"].values), dtype=dtype, device=device
                ),
                error=torch.as_tensor(np.where(mask, error, 1.0), dtype=dtype, device=device),
                coords=coords,
                attrs={k: str(v) for k, v in data.attrs.items() if k not in reserved},
            )
        return cls(variables)
