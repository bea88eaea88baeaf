"""Declarative descriptions of observations and of the model grid they are put on.

Both are plain dataclasses of ``str``/``float``/``list``/``dict`` fields so that they can serve as
Hydra structured-config schemas; a YAML file holding a ``grid`` and a list of ``observations`` is
read by :func:`read_spec_file`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from climgrad.data.errors import ObservationError

#: Reductions an observation spec may chain with ``+`` (applied left to right).
OPERATORS: dict[str, str] = {
    "identity": "keep every remaining dimension; put it on the model grid",
    "time_mean": "mean over the selected time window, or over a month-index axis (drops it)",
    "annual_mean": "calendar-year means (time becomes mid-year decimal years)",
    "monthly_climatology": "mean of each calendar month over the window (time becomes month 1-12)",
    "seasonal_climatology": "mean of DJF, MAM, JJA, SON (time becomes season 0-3)",
    "zonal_mean": "mean over longitude (drops lon)",
    "global_mean": "area-weighted mean over latitude and longitude (drops lat and lon)",
    "site": "the grid cell nearest the model grid's site named by `site` (drops lat and lon)",
}


@dataclass
class ObservationSpec:
    """One observed variable and how it maps onto a model output.

    Attributes:
        name: name of the observation in the ObsSet (and in the loss), e.g. ``"olr"``.
        path: NetCDF file, or a list of files concatenated along time. In a spec file, relative
            paths are taken from the spec file's own folder (:func:`read_spec_file` stores them
            resolved); in a spec built in Python, from the ``root`` given to
            :func:`~climgrad.data.load_observations` (default: the working directory).
        variable: the variable name in the file, e.g. ``"ulwrf"``.
        model_output: the model diagnostic it is compared with, e.g. ``"outgoing_longwave"``.
        units: the SI units the model diagnostic has, e.g. ``"W m-2"``; the file's ``units``
            attribute is converted to these.
        operator: reductions joined by ``+``, e.g. ``"time_mean+zonal_mean"`` (see
            :data:`OPERATORS`).
        time: optional window ``[start, end]``, inclusive, as decimal years (``1991``) or ISO
            dates (``"1991-01-01"``).
        lat: optional window ``[south, north]`` in degrees north.
        site: name of a site of the model grid, for the ``site`` operator.
        error: constant observation error (1 sigma) in ``units``.
        error_variable: name of a variable in the file holding the 1-sigma error field.
        error_bounds: names of two variables ``[lower, upper]`` holding a confidence interval;
            the error is ``(upper - lower) / (2 z)`` with ``z`` the normal quantile of
            ``error_bounds_coverage``.
        error_bounds_coverage: probability covered by ``error_bounds`` (0.95 for 2.5-97.5 %).
        weight: weight of this variable in the loss (dimensionless).
        difference: the values are differences or anomalies: offset units (degC) scale only.
        file_units: units to assume when the file's attribute is missing or wrong (use with care).
        quality_variable: name of a quality-flag variable; samples whose flag exceeds
            ``quality_max`` are masked.
        quality_max: largest acceptable flag value.
        regrid: latitude regridding: ``"auto"`` (conservative when the model bands are at least as
            wide as the data's cells, linear interpolation otherwise), ``"conservative"`` or
            ``"linear"``.
        min_coverage: fraction of a cell that must hold valid data for a mean to count;
            otherwise the cell is masked.
        valid_range: plausibility check of the values after unit conversion:
            ``"auto"`` (default) takes the range of the quantity from
            :data:`~climgrad.data.plausibility.PLAUSIBLE_RANGES`; ``[min, max]`` in ``units``
            (either may be ``None`` for an open end) replaces it; ``None`` switches the check off.
    """

    name: str
    path: Any  # str or list of str; Any keeps it a valid Hydra schema field
    variable: str
    model_output: str
    units: str
    operator: str = "identity"
    time: list[Any] | None = None
    lat: list[float] | None = None
    site: str | None = None
    error: float | None = None
    error_variable: str | None = None
    error_bounds: list[str] | None = None
    error_bounds_coverage: float = 0.95
    weight: float = 1.0
    difference: bool = False
    file_units: str | None = None
    quality_variable: str | None = None
    quality_max: float = 0.0
    regrid: str = "auto"
    min_coverage: float = 0.5
    valid_range: Any = "auto"  # "auto", None or [min, max]; Any keeps it a valid Hydra field

    def paths(self, root: str | Path | None = None) -> list[Path]:
        """Return the file paths, relative ones resolved against ``root`` (default: cwd).

        Paths read from a spec file are already absolute (see :func:`read_spec_file`), so
        ``root`` only affects specs built in Python or given inline.
        """
        raw = [self.path] if isinstance(self.path, (str, Path)) else list(self.path)
        base = Path.cwd() if root is None else Path(root)
        paths = [Path(p).expanduser() for p in raw]
        return [p if p.is_absolute() else base / p for p in paths]

    def plausible_range(
        self, source: str | Path | None = None
    ) -> tuple[float | None, float | None] | str | None:
        """Return the validated ``valid_range``: ``"auto"``, ``None`` or ``(min, max)``.

        Raises:
            ObservationError: ``valid_range`` is not ``"auto"``, ``null`` or ``[min, max]``
                with ``min < max``.
        """
        value = self.valid_range
        if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            return None if value is None else "auto"
        where = f"observations[{self.name}].valid_range"
        fix = (
            f"write valid_range: [min, max] in the spec's units ({self.units}), e.g. "
            "[150, 350] for a temperature in K (null for an open end), valid_range: null to "
            "switch the plausibility check off, or leave it out for the automatic range"
        )
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ObservationError(
                source or _first_path(self.path), where, f"expected [min, max]; got {value!r}", fix
            )
        items = list(value)
        bounds = [_number_or_none(item) for item in items]
        low, high = bounds if len(bounds) == 2 else (None, None)
        if (
            len(items) != 2
            or any(b is not None and not np.isfinite(b) for b in bounds)
            or (low is None and high is None)
            or (low is not None and high is not None and not low < high)
        ):
            raise ObservationError(
                source or _first_path(self.path),
                where,
                f"expected [min, max] with min < max; got {items}",
                fix,
            )
        return low, high

    def operators(self) -> list[str]:
        """Return the chain of operators, validated against :data:`OPERATORS`."""
        steps = [step.strip() for step in self.operator.split("+") if step.strip()]
        for step in steps:
            if step not in OPERATORS:
                raise ObservationError(
                    _first_path(self.path),
                    self.variable,
                    f"observation {self.name!r} has unknown operator {step!r}",
                    f"use one of {sorted(OPERATORS)} joined by '+', e.g. 'time_mean+zonal_mean'",
                )
        return steps or ["identity"]


@dataclass
class ModelGrid:
    """The grid a model produces its outputs on, which observations are put onto.

    Attributes:
        latitude_bounds: band edges in degrees north, ascending, ``n + 1`` values for ``n`` bands.
        pressure_levels: pressure levels in Pa (any order; stored ascending).
        years: time-axis centres in decimal years; cells reach halfway to the neighbours.
        sites: named points ``{name: [latitude, longitude]}`` in degrees.
    """

    latitude_bounds: list[float] | None = None
    pressure_levels: list[float] | None = None
    years: list[float] | None = None
    sites: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def latitude_bands(cls, number: int, **kwargs: Any) -> ModelGrid:
        """``number`` equal bands from pole to pole, e.g. 90 bands of 2 degrees."""
        bounds = np.linspace(-90.0, 90.0, int(number) + 1)
        return cls(latitude_bounds=[float(b) for b in bounds], **kwargs)

    def latitude_edges(self) -> np.ndarray[Any, Any] | None:
        """Band edges (degrees north) as an ascending float64 array, validated."""
        if self.latitude_bounds is None:
            return None
        edges = np.asarray(self.latitude_bounds, dtype=np.float64)
        if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
            raise ObservationError(
                None,
                "grid.latitude_bounds",
                "latitude band edges must be one ascending list of at least two values",
                "give edges from south to north, e.g. ModelGrid.latitude_bands(90)",
            )
        if edges[0] < -90.0 or edges[-1] > 90.0:
            raise ObservationError(
                None,
                "grid.latitude_bounds",
                f"band edges run from {edges[0]} to {edges[-1]}, outside [-90, 90]",
                "clip the edges to [-90, 90] degrees north",
            )
        return edges

    def latitude_centres(self) -> np.ndarray[Any, Any] | None:
        """Band centres (degrees north): the midpoints of the edges."""
        edges = self.latitude_edges()
        return None if edges is None else 0.5 * (edges[:-1] + edges[1:])

    def pressure(self) -> np.ndarray[Any, Any] | None:
        """Pressure levels (Pa), ascending float64."""
        if self.pressure_levels is None:
            return None
        levels = np.sort(np.asarray(self.pressure_levels, dtype=np.float64))
        if np.any(levels <= 0):
            raise ObservationError(
                None,
                "grid.pressure_levels",
                "pressure levels must be positive (Pa)",
                "give levels in Pa, e.g. 85000.0 for 850 hPa",
            )
        return levels

    def year_edges(self) -> np.ndarray[Any, Any] | None:
        """Edges of the time cells (decimal years): midpoints between centres, extended at ends."""
        if self.years is None:
            return None
        centres = np.asarray(self.years, dtype=np.float64)
        if centres.ndim != 1 or centres.size < 1 or np.any(np.diff(centres) <= 0):
            raise ObservationError(
                None, "grid.years", "years must be one ascending list", "sort the time axis"
            )
        if centres.size == 1:
            return np.array([centres[0] - 0.5, centres[0] + 0.5])
        mid = 0.5 * (centres[:-1] + centres[1:])
        return np.concatenate(
            [[centres[0] - (mid[0] - centres[0])], mid, [centres[-1] + (centres[-1] - mid[-1])]]
        )


def _number_or_none(item: Any) -> float | None:
    """``None`` stays (an open end); numbers become floats; anything else becomes NaN."""
    if item is None:
        return None
    if isinstance(item, bool):
        return float("nan")
    try:
        return float(item)
    except (TypeError, ValueError):
        return float("nan")


def _first_path(path: Any) -> str:
    if isinstance(path, (str, Path)):
        return str(path)
    items = list(path) if path is not None else []
    return str(items[0]) if items else "<no path>"


def spec_from_dict(raw: dict[str, Any], source: str | Path | None = None) -> ObservationSpec:
    """Build an :class:`ObservationSpec` from a mapping, naming unknown, missing or bad keys."""
    spec: ObservationSpec = _dataclass_from_dict(ObservationSpec, raw, source, "observations")
    path = spec.path
    if not isinstance(path, (str, Path)) and hasattr(path, "__iter__"):
        path = list(path)  # a tuple or an OmegaConf ListConfig becomes a plain list
    if not _is_path_list(path):
        raise ObservationError(
            source,
            f"observations[{spec.name}].path",
            f"expected a file name or a list of file names; got {path!r}",
            "write path: some/file.nc (relative to the spec file's folder) or a list of them",
        )
    spec.path = path
    if hasattr(spec.valid_range, "__iter__") and not isinstance(spec.valid_range, str):
        spec.valid_range = list(spec.valid_range)
    spec.plausible_range(source)
    return spec


def _is_path_list(path: Any) -> bool:
    if isinstance(path, (str, Path)):
        return bool(str(path).strip())
    return (
        isinstance(path, list)
        and bool(path)
        and all(isinstance(p, (str, Path)) and str(p).strip() for p in path)
    )


def grid_from_dict(raw: dict[str, Any] | None, source: str | Path | None = None) -> ModelGrid:
    """Build a :class:`ModelGrid`; ``latitude_bands: N`` is shorthand for N equal bands."""
    raw = dict(raw or {})
    bands = raw.pop("latitude_bands", None)
    grid = _dataclass_from_dict(ModelGrid, raw, source, "grid")
    if bands is not None:
        grid.latitude_bounds = ModelGrid.latitude_bands(int(bands)).latitude_bounds
    return grid


def _dataclass_from_dict(cls: Any, raw: Any, source: str | Path | None, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ObservationError(
            source, where, f"expected a mapping, got {type(raw).__name__}", "write key: value pairs"
        )
    names = {f.name for f in dataclasses.fields(cls)}
    extra = ["latitude_bands"] if cls is ModelGrid else []
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ObservationError(
            source,
            f"{where}.{unknown[0]}",
            f"unknown key {unknown[0]!r}",
            f"use one of {sorted(names | set(extra))}",
        )
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in raw]
    if missing:
        label = raw.get("name", "?")
        raise ObservationError(
            source,
            f"{where}[{label}]",
            f"missing required key(s) {missing}",
            f"add {missing[0]}: ... to this entry",
        )
    return cls(**raw)


def read_spec_file(
    path: str | Path, root: str | Path | None = None
) -> tuple[ModelGrid, list[ObservationSpec]]:
    """Read a YAML file with a ``grid`` mapping and an ``observations`` list.

    Relative ``path`` entries are taken from the spec file's own folder, whatever the working
    directory, and stored as absolute paths, so the specs load from anywhere (and a ``root``
    later given to :func:`~climgrad.data.load_observations` does not change them).

    Args:
        path: the YAML file.
        root: folder that relative ``path`` entries are taken from instead of the spec file's
            folder (for specs written against another base, e.g. ``--root`` of the command line).

    Example file (``data/specs/olr.yaml``; the path is relative to ``data/specs/``)::

        grid:
          latitude_bands: 90
        observations:
          - name: olr
            path: ../ebm_1d/ncep_r1_ltm_1991-2020/ulwrf.ntat.mon.ltm.1991-2020.nc
            variable: ulwrf
            model_output: outgoing_longwave_radiation
            units: W m-2
            operator: time_mean+zonal_mean
            error: 5.0
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ObservationError(
            path, None, "the spec file does not exist", "check the path of the YAML spec"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ObservationError(
            path, None, f"not valid YAML ({str(err).splitlines()[0]})", "fix the YAML syntax"
        ) from None
    if not isinstance(raw, dict) or "observations" not in raw:
        raise ObservationError(
            path,
            None,
            "the spec has no 'observations' list",
            "write a mapping with keys 'grid' and 'observations'",
        )
    unknown = sorted(set(raw) - {"grid", "observations"})
    if unknown:
        raise ObservationError(
            path,
            unknown[0],
            f"unknown top-level key {unknown[0]!r}",
            "use 'grid' and 'observations'",
        )
    entries = raw["observations"]
    if not isinstance(entries, list) or not entries:
        raise ObservationError(
            path, "observations", "must be a non-empty list", "list one mapping per observation"
        )
    grid = grid_from_dict(raw.get("grid"), path)
    base = path.parent if root is None else Path(root)
    specs = [spec_from_dict(entry, path) for entry in entries]
    for spec in specs:
        spec.path = _resolve_paths(spec.path, base)
    return grid, specs


def _resolve_paths(path: Any, base: Path) -> Any:
    """Absolute form of a path entry (or list of them): relative ones start from ``base``."""
    if isinstance(path, (str, Path)):
        candidate = Path(path).expanduser()
        return str(candidate if candidate.is_absolute() else (base / candidate).resolve())
    return [_resolve_paths(p, base) for p in path]
