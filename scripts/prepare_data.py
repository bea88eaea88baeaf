"""Convert the shipped raw observations into CF NetCDF in ``data/``.

    python scripts/prepare_data.py [--data DIR]

Reads the raw copies in ``data/`` (see data/README.md for provenance) and writes:

- ``global_ebm/ar6_erf_1750-2019.nc``: IPCC AR6 effective radiative forcing by agent, best
  estimate and 5th/95th percentiles (Smith et al. 2021).
- ``global_ebm/hadcrut5_gmst_1850-2022.nc``: HadCRUT5 global annual temperature anomaly with its
  2.5 % and 97.5 % confidence limits (Morice et al. 2021).
- ``global_ebm/energy_inventory_1971-2023.nc``: Earth energy inventory (von Schuckmann et al.),
  ocean layers with their 1-sigma errors.
- ``single_column/twpice_darwin_soundings_plev.nc``: the usable ARM TWP-ICE radiosondes
  interpolated in log-pressure onto fixed pressure levels, with the mean profile and its
  standard deviation across soundings.

The output is deterministic: NetCDF-3 (64-bit offset) files carry no creation timestamps, and the
``history`` attribute names the script, not the time, so rerunning gives identical bytes.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import warnings
from pathlib import Path
from typing import Any, Final

import numpy as np
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
NC_FORMAT: Final = "NETCDF3_64BIT"
HISTORY = "created by scripts/prepare_data.py (climgrad) from {sources}"

#: Fixed pressure levels (hPa) of the sounding file: every 25 hPa to 100 hPa, then stratosphere.
SOUNDING_LEVELS_HPA = [*range(1000, 99, -25), 70, 50, 30, 20, 10]
#: Soundings used, and those dropped with the reason (shared/data/README.md lists them).
USABLE_SOUNDINGS = [
    "0119.1120", "0119.2316", "0120.1119", "0120.2315", "0121.0515", "0121.1116", "0121.1716",
    "0121.2316", "0122.0526", "0122.1115", "0122.1718", "0122.2326", "0123.0525", "0123.1117",
    "0124.0515", "0124.1118", "0124.2315",
]  # fmt: skip
DROPPED_UNUSABLE = {
    "0119.0503": "temperature and humidity have a single valid sample",
    "0119.1633": "temperature and humidity have a single valid sample",
    "0120.1708": "temperature and humidity have a single valid sample",
    "0120.0438": "no dew point or humidity",
}
DROPPED_SHORT = {
    "0123.1716": "balloon burst at 672 hPa",
    "0123.2315": "balloon burst at 549 hPa",
    "0124.1717": "balloon burst at 424 hPa",
}
#: Largest gap in ln(p) between valid samples that interpolation may bridge (about 5 % in p).
MAX_LOG_PRESSURE_GAP = 0.05
#: The sondes clip temperature at this value near the tropopause (a valid_min, not a reading).
TEMPERATURE_FLOOR_DEGC = -90.0

CC_BY = "CC-BY-4.0"
OGL = "Open Government Licence v3.0"
ARM_LICENCE = (
    "ARM data are free to use with acknowledgement: 'Data were obtained from the Atmospheric "
    "Radiation Measurement (ARM) User Facility, a U.S. Department of Energy Office of Science "
    "user facility.'"
)


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], [row for row in rows[1:] if row]


def _column(rows: list[list[str]], index: int) -> np.ndarray[Any, Any]:
    return np.array([float(r[index]) if r[index].strip() else np.nan for r in rows])


def _annual_time(years: np.ndarray[Any, Any], reference: int) -> dict[str, Any]:
    """Mid-year times with calendar-year bounds, in days since ``reference``-01-01 (standard)."""
    import cftime

    units = f"days since {reference}-01-01 00:00:00"
    starts = [cftime.DatetimeGregorian(int(y), 1, 1) for y in years]
    ends = [cftime.DatetimeGregorian(int(y) + 1, 1, 1) for y in years]
    start_num = np.asarray(cftime.date2num(starts, units, calendar="standard"), dtype=np.float64)
    end_num = np.asarray(cftime.date2num(ends, units, calendar="standard"), dtype=np.float64)
    return {
        "time": 0.5 * (start_num + end_num),
        "time_bnds": np.stack([start_num, end_num], axis=-1),
        "units": units,
    }


def _time_coords(years: np.ndarray[Any, Any], reference: int) -> dict[str, Any]:
    t = _annual_time(years, reference)
    time = xr.Variable(
        ("time",),
        t["time"],
        {
            "standard_name": "time",
            "long_name": "time (middle of the calendar year)",
            "axis": "T",
            "bounds": "time_bnds",
            "units": t["units"],
            "calendar": "standard",
        },
    )
    return {"time": time, "time_bnds": xr.Variable(("time", "bnds"), t["time_bnds"])}


def _global_attrs(
    title: str, source: str, references: str, licence: str, sources: str
) -> dict[str, str]:
    return {
        "Conventions": "CF-1.10",
        "title": title,
        "institution": "converted by the climgrad project",
        "source": source,
        "history": HISTORY.format(sources=sources),
        "references": references,
        "licence": licence,
        "license": licence,
    }


def _write(dataset: xr.Dataset, path: Path) -> None:
    encoding: dict[Any, dict[str, Any]] = {name: {"_FillValue": None} for name in dataset.coords}
    encoding.update(
        {
            name: {"_FillValue": np.nan}
            for name in dataset.data_vars
            if dataset[name].dtype.kind == "f"
        }
    )
    for name in ("time", "time_bnds"):
        if name in dataset.variables:
            encoding[name] = {"_FillValue": None, "dtype": "float64"}
    # Written to a side file and moved into place: a failed run leaves the old file intact.
    tmp = path.with_suffix(".nc.part")
    dataset.to_netcdf(tmp, format=NC_FORMAT, encoding=encoding)
    tmp.replace(path)
    print(
        f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
        f"({path.stat().st_size} bytes, sha256 {_digest(path)})"
    )


def prepare_forcing(data: Path) -> Path:
    """AR6 effective radiative forcing by agent, with 5th and 95th percentiles."""
    folder = data / "global_ebm" / "forcing"
    header, best = _read_csv(folder / "AR6_ERF_1750-2019.csv")
    header05, p05 = _read_csv(folder / "AR6_ERF_1750-2019_pc05.csv")
    header95, p95 = _read_csv(folder / "AR6_ERF_1750-2019_pc95.csv")
    if not header == header05 == header95:
        raise ValueError("AR6 ERF files disagree on their columns")
    years = _column(best, 0).astype(int)
    if not (np.array_equal(years, _column(p05, 0)) and np.array_equal(years, _column(p95, 0))):
        raise ValueError("AR6 ERF files disagree on their years")
    variables: dict[str, xr.Variable] = {}
    for index, agent in enumerate(header[1:], start=1):
        name = "erf_" + agent.replace("-", "_")
        label = agent.replace("_", " ")
        for suffix, rows, what in (
            ("", best, "best estimate"),
            ("_p05", p05, "5th percentile"),
            ("_p95", p95, "95th percentile"),
        ):
            variables[name + suffix] = xr.Variable(
                ("time",),
                _column(rows, index),
                {
                    "units": "W m-2",
                    "long_name": f"effective radiative forcing, {label} ({what})",
                    "cell_methods": "time: mean",
                    **({"ancillary_variables": f"{name}_p05 {name}_p95"} if not suffix else {}),
                },
            )
    dataset = xr.Dataset(
        variables,
        coords=_time_coords(years, 1750),
        attrs=_global_attrs(
            "IPCC AR6 WG1 effective radiative forcing by agent, 1750-2019",
            "IPCC AR6 WG1 Chapter 7 supplementary data (AR6_ERF_1750-2019.csv, _pc05, _pc95)",
            "Smith, C. et al. (2021), IPCC AR6 WG1 Chapter 7 supplementary data, "
            "doi:10.5281/zenodo.5211357; Forster, P. et al. (2021), IPCC AR6 WG1 Chapter 7",
            CC_BY,
            "AR6_ERF_1750-2019.csv, AR6_ERF_1750-2019_pc05.csv, AR6_ERF_1750-2019_pc95.csv",
        ),
    )
    dataset.attrs["comment"] = (
        "erf_<agent> is the best estimate; erf_<agent>_p05 and _p95 bound the 5-95 % range "
        "(use error_bounds_coverage 0.90). Agents with '-' in the source use '_'."
    )
    out = data / "global_ebm" / "ar6_erf_1750-2019.nc"
    _write(dataset, out)
    return out


def prepare_gmst(data: Path) -> Path:
    """HadCRUT5 global annual mean temperature anomaly with its 95 % confidence limits."""
    header, rows = _read_csv(
        data / "global_ebm" / "gmst" / "HadCRUT.5.0.1.0.analysis.summary_series.global.annual.csv"
    )
    years = _column(rows, 0).astype(int)
    common = {"units": "K", "cell_methods": "time: mean area: mean"}
    dataset = xr.Dataset(
        {
            "tas_anomaly": xr.Variable(
                ("time",),
                _column(rows, 1),
                {
                    **common,
                    "standard_name": "surface_temperature_anomaly",
                    "long_name": "global mean near-surface temperature anomaly, vs 1961-1990",
                    "ancillary_variables": "tas_anomaly_lower tas_anomaly_upper",
                },
            ),
            "tas_anomaly_lower": xr.Variable(
                ("time",),
                _column(rows, 2),
                {**common, "long_name": "lower confidence limit (2.5 %)"},
            ),
            "tas_anomaly_upper": xr.Variable(
                ("time",),
                _column(rows, 3),
                {**common, "long_name": "upper confidence limit (97.5 %)"},
            ),
        },
        coords=_time_coords(years, 1850),
        attrs=_global_attrs(
            "HadCRUT5 global annual mean surface temperature anomaly, 1850-2022",
            "HadCRUT.5.0.1.0 analysis summary series, global, annual "
            "(Met Office Hadley Centre / CRU)",
            "Morice, C. P. et al. (2021), J. Geophys. Res. Atmos. 126, e2019JD032361, "
            "doi:10.1029/2019JD032361",
            OGL,
            "HadCRUT.5.0.1.0.analysis.summary_series.global.annual.csv",
        ),
    )
    dataset.attrs["comment"] = (
        f"CSV columns: {', '.join(header)}. Anomalies are temperature differences, so degC "
        "become K unchanged (load with difference: true or units K)."
    )
    out = data / "global_ebm" / "hadcrut5_gmst_1850-2022.nc"
    _write(dataset, out)
    return out


def prepare_energy_inventory(data: Path) -> Path:
    """Earth energy inventory by component, ocean layers with 1-sigma errors (ZJ since 1971)."""
    header, rows = _read_csv(
        data / "global_ebm" / "ohc" / "IGCC_AR6_update_energy_timeseries_1971to2023_2024-04-13.csv"
    )
    if header[-1] != "Units" or {r[-1] for r in rows} != {"ZJ"}:
        raise ValueError("the energy inventory is expected in ZJ")
    years = _column(rows, 0)
    if not np.allclose(years - np.floor(years), 0.5):
        raise ValueError("the energy inventory is expected at mid-year")
    names = {
        "atmosphere": ("energy_atmosphere", "energy gained by the atmosphere"),
        "cryosphere": ("energy_cryosphere", "energy gained by the cryosphere (ice melt)"),
        "land": ("energy_land", "energy gained by the land"),
        "ocean_0-700m": ("ocean_heat_content_0_700m", "ocean heat content, 0-700 m"),
        "ocean_700-2000m": ("ocean_heat_content_700_2000m", "ocean heat content, 700-2000 m"),
        "ocean_2000-6000m": ("ocean_heat_content_2000_6000m", "ocean heat content, 2000-6000 m"),
        "ocean_full-depth": ("ocean_heat_content_full_depth", "ocean heat content, full depth"),
        "Total": ("energy_inventory_total", "total Earth energy inventory"),
    }
    variables: dict[str, xr.Variable] = {}
    for column, (name, long_name) in names.items():
        index = header.index(column)
        attrs = {
            "units": "ZJ",
            "long_name": f"{long_name}, change since 1971",
            "cell_methods": "time: mean area: sum",
        }
        error_column = f"{column}_error"
        if error_column in header:
            attrs["ancillary_variables"] = f"{name}_error"
            variables[f"{name}_error"] = xr.Variable(
                ("time",),
                _column(rows, header.index(error_column)),
                {"units": "ZJ", "long_name": f"1-sigma uncertainty of {long_name}"},
            )
        variables[name] = xr.Variable(("time",), _column(rows, index), attrs)
    dataset = xr.Dataset(
        dict(sorted(variables.items())),
        coords=_time_coords(np.floor(years).astype(int), 1971),
        attrs=_global_attrs(
            "Earth energy inventory 1971-2023 (IGCC update of the AR6 assessment)",
            "Indicators of Global Climate Change, IGCC_AR6_update_energy_timeseries_1971to2023 "
            "(2024-04-13)",
            "von Schuckmann, K. et al. (2023), Earth Syst. Sci. Data 15, 1675-1709; Forster, P. M. "
            "et al. (2024), Earth Syst. Sci. Data 16, 2625-2658",
            "MIT / CC-BY-4.0",
            "IGCC_AR6_update_energy_timeseries_1971to2023_2024-04-13.csv",
        ),
    )
    dataset.attrs["comment"] = (
        "Missing CSV entries (the last years of some components) are NaN fill values."
    )
    out = data / "global_ebm" / "energy_inventory_1971-2023.nc"
    _write(dataset, out)
    return out


def _interpolate_profile(
    pressure_hpa: np.ndarray[Any, Any],
    values: np.ndarray[Any, Any],
    levels_hpa: np.ndarray[Any, Any],
) -> np.ndarray[Any, Any]:
    """Interpolate a sounding variable in ln(p) onto ``levels_hpa``; NaN outside or across gaps."""
    valid = np.isfinite(pressure_hpa) & np.isfinite(values)
    log_p = np.log(pressure_hpa[valid])[::-1]  # ascending in ln p
    data = values[valid][::-1]
    out = np.full(levels_hpa.shape, np.nan)
    if log_p.size < 2:
        return out
    target = np.log(levels_hpa)
    index = np.searchsorted(log_p, target)
    inside = (index > 0) & (index < log_p.size)
    lo = np.clip(index - 1, 0, log_p.size - 1)
    hi = np.clip(index, 0, log_p.size - 1)
    close = (log_p[hi] - log_p[lo]) <= MAX_LOG_PRESSURE_GAP
    exact = np.isin(target, log_p)
    interpolated = np.interp(target, log_p, data)
    out[(inside & close) | exact] = interpolated[(inside & close) | exact]
    return out


def _monotonic_ascent(pressure: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Samples where pressure reaches a new minimum: the ascent, without pendulum and descent."""
    keep = np.zeros(pressure.shape, dtype=bool)
    lowest = np.inf
    for i, p in enumerate(pressure):
        if np.isfinite(p) and p < lowest:
            keep[i] = True
            lowest = p
    return keep


def prepare_soundings(data: Path) -> Path:
    """ARM TWP-ICE Darwin radiosondes on fixed pressure levels, with mean and standard deviation."""

    folder = data / "single_column" / "arm_soundings"
    levels = np.asarray(SOUNDING_LEVELS_HPA, dtype=np.float64)
    fields = {
        "air_temperature": ("tdry", "K", 273.15, "air temperature"),
        "dew_point_temperature": ("dp", "K", 273.15, "dew point temperature"),
        "relative_humidity": ("rh", "%", 0.0, "relative humidity (with respect to water)"),
        "eastward_wind": ("u_wind", "m s-1", 0.0, "eastward wind"),
        "northward_wind": ("v_wind", "m s-1", 0.0, "northward wind"),
        "altitude": ("alt", "m", 0.0, "altitude above mean sea level"),
    }
    profiles = {name: [] for name in fields}  # type: dict[str, list[np.ndarray[Any, Any]]]
    launch_times = []
    files = []
    floor_counts = []
    for tag in USABLE_SOUNDINGS:
        day, hhmm = tag.split(".")
        matches = sorted(folder.glob(f"twpsondewnpnC3.b1.2006{day}.{hhmm}*.custom.cdf"))
        if len(matches) != 1:
            raise FileNotFoundError(f"expected one sounding file for {tag} in {folder}")
        with xr.open_dataset(matches[0], decode_times=False) as raw:
            pressure = np.asarray(raw["pres"].values, dtype=np.float64)
            temperature = np.asarray(raw["tdry"].values, dtype=np.float64)
            floor = temperature == TEMPERATURE_FLOOR_DEGC
            floor_counts.append(int(floor.sum()))
            ascent = _monotonic_ascent(pressure)
            for name, (source, _, offset, _) in fields.items():
                values = np.asarray(raw[source].values, dtype=np.float64)
                low = raw[source].attrs.get("valid_min")
                high = raw[source].attrs.get("valid_max")
                bad = ~np.isfinite(values)
                if low is not None:
                    bad |= values < float(low)
                if high is not None:
                    bad |= values > float(high)
                if source in ("tdry", "dp"):
                    bad |= floor  # the clip hides the true value of every variable that uses T
                values = np.where(bad | ~ascent, np.nan, values + offset)
                profiles[name].append(_interpolate_profile(pressure, values, levels))
            base = int(raw["base_time"].values)
            launch_times.append(base + float(raw["time_offset"].values[0]))
        files.append(matches[0].name)
    time_units = "seconds since 1970-01-01 00:00:00"
    variables: dict[str, xr.Variable] = {}
    standard = {
        "air_temperature": "air_temperature",
        "dew_point_temperature": "dew_point_temperature",
        "relative_humidity": "relative_humidity",
        "eastward_wind": "eastward_wind",
        "northward_wind": "northward_wind",
        "altitude": "altitude",
    }
    for name, (source, units, _, long_name) in fields.items():
        stack = np.stack(profiles[name])
        count = np.isfinite(stack).sum(axis=0)
        # NumPy warns on all-NaN levels; count >= 3 already guards the result there.
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.where(count >= 3, np.nanmean(stack, axis=0), np.nan)
            std = np.where(count >= 3, np.nanstd(stack, axis=0, ddof=1), np.nan)
        attrs = {"units": units, "standard_name": standard[name], "long_name": long_name}
        variables[name] = xr.Variable(("time", "plev"), stack, {**attrs, "source_variable": source})
        variables[f"{name}_mean"] = xr.Variable(
            ("plev",),
            mean,
            {
                **attrs,
                "long_name": f"mean {long_name} over the soundings",
                "cell_methods": "time: mean",
                "ancillary_variables": f"{name}_std {name}_count",
            },
        )
        variables[f"{name}_std"] = xr.Variable(
            ("plev",),
            std,
            {
                "units": units,
                "long_name": f"standard deviation of {long_name} across soundings",
                "cell_methods": "time: standard_deviation",
            },
        )
        variables[f"{name}_count"] = xr.Variable(
            ("plev",),
            count.astype(np.int32),
            {"units": "1", "long_name": f"soundings with valid {long_name}"},
        )
    variables["lat"] = xr.Variable(
        (), np.float64(-12.42), {"units": "degrees_north", "standard_name": "latitude"}
    )
    variables["lon"] = xr.Variable(
        (), np.float64(130.89), {"units": "degrees_east", "standard_name": "longitude"}
    )
    coords = {
        "time": xr.Variable(
            ("time",),
            np.asarray(launch_times, dtype=np.float64),
            {
                "standard_name": "time",
                "long_name": "launch time",
                "axis": "T",
                "units": time_units,
                "calendar": "standard",
            },
        ),
        "plev": xr.Variable(
            ("plev",),
            levels * 100.0,
            {
                "standard_name": "air_pressure",
                "long_name": "pressure",
                "units": "Pa",
                "axis": "Z",
                "positive": "down",
            },
        ),
    }
    dropped = [f"{t} ({why})" for t, why in {**DROPPED_UNUSABLE, **DROPPED_SHORT}.items()]
    dataset = xr.Dataset(
        variables,
        coords=coords,
        attrs=_global_attrs(
            "ARM TWP-ICE radiosondes at Darwin (12.4 S, 130.9 E), 19-24 January 2006, "
            "on pressure levels",
            "ARM twpsondewnpnC3.b1 radiosonde files (Vaisala RS92), TWP C3 Darwin",
            "May, P. T. et al. (2008), The Tropical Warm Pool International Cloud Experiment, "
            "Bull. Amer. Meteor. Soc. 89, 629-645; ARM data doi:10.5439/1021460",
            ARM_LICENCE,
            ", ".join(files),
        ),
    )
    dataset.attrs.update(
        {
            "soundings_included": ", ".join(USABLE_SOUNDINGS),
            "soundings_dropped": "; ".join(dropped),
            "processing": (
                "per sounding: samples of the ascent only (pressure reaching a new minimum); "
                "missing and out-of-valid-range values masked; temperature and dew point masked "
                f"where the sonde clipped temperature at exactly {TEMPERATURE_FLOOR_DEGC} degC; "
                "linear interpolation in ln(p) onto the fixed levels between valid samples at most "
                f"{MAX_LOG_PRESSURE_GAP} apart in ln(p), NaN elsewhere. Mean and standard "
                "deviation (ddof=1) across soundings where at least 3 are valid."
            ),
            "temperature_floor_samples_masked": ", ".join(
                f"{t}: {n}" for t, n in zip(USABLE_SOUNDINGS, floor_counts, strict=True) if n
            ),
        }
    )
    out = data / "single_column" / "twpice_darwin_soundings_plev.nc"
    _write(dataset, out)
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="the data/ folder")
    args = parser.parse_args(argv)
    prepare_forcing(args.data)
    prepare_gmst(args.data)
    prepare_energy_inventory(args.data)
    prepare_soundings(args.data)


if __name__ == "__main__":
    main()
