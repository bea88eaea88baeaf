"""Driving data of models: forcing series and observed boundary states, read into SI arrays.

Models take tensors and never open files; what drives them is read here, through the same
NetCDF opening and units handling as the observations (:func:`~climgrad.data.open_dataset`,
:mod:`climgrad.data.units`), so a bad file fails with the same one-line
:class:`~climgrad.data.ObservationError`.

``read_forcing_by_agent``
    Effective radiative forcing by agent (``erf_<agent>`` variables, W m-2, annual), e.g. the
    IPCC AR6 WG1 Chapter 7 table shipped as ``data/global_ebm/ar6_erf_1750-2019.nc``; drives
    :class:`~climgrad.models.TwoLayerEBM`.
``forcing_series``
    The same from whatever a user has at hand for a scenario: a NetCDF file, an xarray Dataset
    (``erf_<agent>`` variables) or DataArray (a total), a pandas DataFrame (one column per agent,
    indexed by year) or Series (a total).
``read_flux_tower``
    The observed surface-layer state of an eddy-covariance tower and the radiometers' longwave
    fluxes (ARM SGP E39 files shipped under ``data/surface_flux/``); drives
    :class:`~climgrad.models.FluxTowerModel`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from climgrad.data.errors import ObservationError
from climgrad.data.load import open_dataset
from climgrad.data.units import convert

__all__ = [
    "FLUX_TOWER_VARIABLES",
    "FluxTowerDrivers",
    "ForcingSeries",
    "read_flux_tower",
    "read_forcing_by_agent",
]


@dataclass(frozen=True)
class ForcingSeries:
    """Annual forcing by agent.

    Attributes:
        values: ERF in W m-2, ``(year, agent)`` float64.
        agents: Agent names (without the ``erf_`` prefix), one per column.
        start_year: Calendar year of the first row; rows are consecutive years.
        source: The file read.
    """

    values: np.ndarray[Any, Any]
    agents: tuple[str, ...]
    start_year: int
    source: str

    @property
    def years(self) -> np.ndarray[Any, Any]:
        """Calendar years of the rows."""
        return self.start_year + np.arange(self.values.shape[0])


def read_forcing_by_agent(
    path: str | Path, agents: Sequence[str], *, start_year: int, end_year: int
) -> ForcingSeries:
    """Read ``erf_<agent>`` series for the years ``start_year..end_year`` (inclusive).

    Args:
        path: CF NetCDF with annual ``erf_<agent>`` variables in W m-2 along ``time``.
        agents: Agent names without the prefix, e.g. ``("co2", "ch4")``.
        start_year, end_year: First and last calendar year.

    Returns:
        The series, converted to W m-2 from each variable's ``units``.

    Raises:
        ObservationError: Missing file, agent, or years; units that do not convert to W m-2.
    """
    if end_year < start_year:
        raise ObservationError(
            path,
            None,
            f"end_year ({end_year}) precedes start_year ({start_year})",
            "give the years in order",
        )
    with open_dataset(path) as dataset:
        missing = [agent for agent in agents if f"erf_{agent}" not in dataset]
        if missing:
            available = sorted(
                str(name)[4:]
                for name in dataset.data_vars
                if str(name).startswith("erf_") and not str(name).endswith(("_p05", "_p95"))
            )
            raise ObservationError(
                path,
                f"erf_{missing[0]}",
                f"the file has no agent(s) {missing}",
                f"choose agents from {available}",
            )
        years = np.asarray([t.year for t in dataset["time"].values])
        selected = (years >= start_year) & (years <= end_year)
        if int(selected.sum()) != end_year - start_year + 1:
            raise ObservationError(
                path,
                "time",
                f"the file covers the years {int(years.min())}-{int(years.max())}, not "
                f"{start_year}-{end_year}",
                "choose start_year and end_year inside that range",
            )
        columns = []
        for agent in agents:
            variable = dataset[f"erf_{agent}"]
            units = str(variable.attrs.get("units", "W m-2"))
            columns.append(convert(variable.values[selected], units, "W m-2", path, f"erf_{agent}"))
    values = np.stack(columns, axis=-1)
    if not np.isfinite(values).all():
        raise ObservationError(
            path, None, "the forcing has missing values in the years chosen", "choose other years"
        )
    return ForcingSeries(values, tuple(agents), int(start_year), str(path))


def _years(values: Any) -> np.ndarray[Any, Any]:
    array = np.asarray(values)
    if np.issubdtype(array.dtype, np.number):
        return np.floor(array.astype(np.float64)).astype(np.int64)
    return np.asarray([t.year for t in (v.item() if hasattr(v, "item") else v for v in array)])


def _consecutive(years: np.ndarray[Any, Any], where: str) -> int:
    if years.size == 0 or not np.array_equal(years, years[0] + np.arange(years.size)):
        raise ObservationError(
            where, "time", "the forcing is not one row per consecutive year", "give annual rows"
        )
    return int(years[0])


def forcing_series(
    source: Any,
    agents: Sequence[str] | None = None,
    *,
    start_year: int | None = None,
    end_year: int | None = None,
) -> ForcingSeries:
    """Annual forcing in W m-2 from a file, an xarray object or a pandas table.

    Args:
        source: A NetCDF path (``erf_<agent>`` variables along ``time``); an ``xarray.Dataset``
            with such variables; an ``xarray.DataArray`` along ``time`` or ``year`` (a total, W
            m-2); a ``pandas.DataFrame`` indexed by year with one column per agent; or a
            ``pandas.Series`` indexed by year (a total).
        agents: Agents to take (files and Datasets; default: every ``erf_<agent>`` that is not
            an aggregate, uncertainty bound or total, else ``total``).
        start_year, end_year: Years to keep (default: all).

    Returns:
        The :class:`ForcingSeries` (a total is the single agent ``"total"``).

    Raises:
        ObservationError: A file or table that does not give annual forcing.
    """
    import pandas as pd
    import xarray as xr

    if isinstance(source, (str, Path)):
        with open_dataset(source) as dataset:
            years = _years(dataset["time"].values)
            names = list(agents) if agents is not None else _default_agents(dataset)
        first = int(years.min()) if start_year is None else start_year
        last = int(years.max()) if end_year is None else end_year
        return read_forcing_by_agent(source, names, start_year=first, end_year=last)
    where = f"<{type(source).__name__}>"
    if isinstance(source, pd.Series):
        source = source.to_frame("total")
    if isinstance(source, xr.DataArray):
        dim = source.dims[0]
        source = pd.DataFrame({"total": source.values}, index=_years(source[dim].values))
    if isinstance(source, xr.Dataset):
        names = list(agents) if agents is not None else _default_agents(source)
        missing = [a for a in names if f"erf_{a}" not in source]
        if missing:
            raise ObservationError(where, None, f"no erf_ variables for {missing}", "name agents")
        source = pd.DataFrame(
            {a: source[f"erf_{a}"].values for a in names}, index=_years(source["time"].values)
        )
    if not isinstance(source, pd.DataFrame):
        raise ObservationError(
            where, None, "not a forcing table", "pass a path, xarray object or pandas table"
        )
    table = source if agents is None else source[list(agents)]
    years = _years(table.index.values)
    keep = np.ones(years.size, dtype=bool)
    if start_year is not None:
        keep &= years >= start_year
    if end_year is not None:
        keep &= years <= end_year
    values = np.asarray(table.to_numpy(dtype=np.float64))[keep]
    if not np.isfinite(values).all():
        raise ObservationError(where, None, "the forcing has missing values", "fill or trim them")
    first = _consecutive(years[keep], where)
    return ForcingSeries(values, tuple(str(c) for c in table.columns), first, where)


def _default_agents(dataset: Any) -> list[str]:
    aggregates = ("total", "nonco2_wmghg", "aerosol", "chapter2_other_anthro")
    names = [
        str(name)[4:]
        for name in dataset.data_vars
        if str(name).startswith("erf_") and not str(name).endswith(("_p05", "_p95"))
    ]
    individual = [n for n in names if n not in aggregates and not n.startswith("total_")]
    if individual:
        return individual
    return ["total"] if "total" in names else names


#: Variables of a flux tower's driving state: name in :class:`FluxTowerDrivers` ->
#: (file, variable in that file, SI units).
FLUX_TOWER_VARIABLES: dict[str, tuple[str, str, str]] = {
    "wind_speed": ("flux", "mean_wind", "m s-1"),
    "air_temperature": ("flux", "air_temperature", "K"),
    "specific_humidity": ("flux", "specific_humidity", "kg kg-1"),
    "air_density": ("flux", "air_density", "kg m-3"),
    "surface_pressure": ("flux", "air_pressure", "Pa"),
    "upwelling_longwave": ("radiation", "up_long", "W m-2"),
    "downwelling_longwave": ("radiation", "down_long", "W m-2"),
}


@dataclass(frozen=True)
class FluxTowerDrivers:
    """A tower's half-hourly surface-layer state and longwave fluxes, SI, ``(time,)`` float64.

    Attributes:
        wind_speed: Mean wind, m s-1.
        air_temperature: K.
        specific_humidity: kg kg-1.
        air_density: kg m-3.
        surface_pressure: Pa.
        upwelling_longwave, downwelling_longwave: Hemispheric longwave fluxes, W m-2.
        hours: Hours since the first sample.
    """

    wind_speed: np.ndarray[Any, Any]
    air_temperature: np.ndarray[Any, Any]
    specific_humidity: np.ndarray[Any, Any]
    air_density: np.ndarray[Any, Any]
    surface_pressure: np.ndarray[Any, Any]
    upwelling_longwave: np.ndarray[Any, Any]
    downwelling_longwave: np.ndarray[Any, Any]
    hours: np.ndarray[Any, Any]


def read_flux_tower(
    flux_file: str | Path, radiation_file: str | Path, *, sample_hours: float = 0.5
) -> FluxTowerDrivers:
    """Read a tower's driving state (see :data:`FLUX_TOWER_VARIABLES`), converted to SI.

    Args:
        flux_file: Eddy-covariance NetCDF (ARM ``ecor``: ``mean_wind``, ``air_temperature``,
            ``specific_humidity``, ``air_density``, ``air_pressure``) along ``time``.
        radiation_file: Surface energy balance NetCDF (ARM ``sebs``: ``up_long``,
            ``down_long``) on the same time axis.
        sample_hours: Sampling interval in hours (half-hourly averages: 0.5).

    Raises:
        ObservationError: Missing file or variable, units that do not convert, missing values
            (the bulk model needs a complete driving state), or files of different lengths.
    """
    files = {"flux": Path(flux_file), "radiation": Path(radiation_file)}
    values: dict[str, np.ndarray[Any, Any]] = {}
    for name, (which, variable, si_units) in FLUX_TOWER_VARIABLES.items():
        path = files[which]
        with open_dataset(path, variable) as dataset:
            if variable not in dataset:
                raise ObservationError(
                    path,
                    variable,
                    "the file has no such variable",
                    f"give a {which} file with {variable!r}",
                )
            data = dataset[variable]
            units = str(data.attrs.get("units", ""))
            array = convert(np.asarray(data.values), units, si_units, path, variable)
        if not np.isfinite(array).all():
            raise ObservationError(
                path,
                variable,
                "it has missing values",
                "the bulk model needs a complete driving state; choose a day without gaps",
            )
        values[name] = array
    lengths = {name: array.shape[0] for name, array in values.items()}
    if len(set(lengths.values())) != 1:
        raise ObservationError(
            files["radiation"],
            None,
            f"{lengths['upwelling_longwave']} samples against "
            f"{lengths['wind_speed']} in {files['flux']}",
            "give flux and radiation files of the same day and time axis",
        )
    hours = sample_hours * np.arange(lengths["wind_speed"], dtype=np.float64)
    return FluxTowerDrivers(**values, hours=hours)
