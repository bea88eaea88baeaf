"""Plausibility of observed values: one table of physical ranges per quantity.

A file whose ``units`` attribute is wrong converts without complaint (degC labelled ``K`` is still
a temperature to pint) and a calibration against it ends, confidently, with wrong parameters. So
after unit conversion the values are checked against the range their quantity can physically
take, and values outside it stop the load with a one-line message naming the likely mislabelling.

Which quantity a spec observes (:func:`plausible_range_for`): the first row of
:data:`PLAUSIBLE_RANGES` whose pattern matches the spec's ``model_output``; failing that, the first
that matches the file variable's CF ``standard_name``; failing that, the first row marked
``by_units`` whose units have the dimensions of the spec's ``units`` (K: temperature, Pa: pressure,
W m-2: energy flux). A row applies only when the spec's ``units`` convert to the row's units.
Anomalies (``difference: true``, or a name saying ``anomaly``) and heat contents have no range. A
spec entry's ``valid_range: [min, max]`` (in the spec's units) replaces the table, and
``valid_range: null`` switches the check off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from climgrad.data.errors import ObservationError
from climgrad.data.spec import ObservationSpec
from climgrad.data.units import conversion, convert

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class PlausibleRange:
    """The values a physical quantity can take, in ``units``.

    Attributes:
        quantity: the quantity in words, for messages (``"a temperature"``).
        pattern: regular expression searched in ``model_output`` and ``standard_name``
            (lower case).
        units: units of ``low`` and ``high``; ``None`` for quantities without a range.
        low: smallest plausible value (``None``: no lower limit).
        high: largest plausible value (``None``: no upper limit).
        by_units: the row also applies when only the spec's units identify the quantity.
        alternatives: units that a mislabelled file of this quantity is often really in; the
            error names the first under which the values would be plausible.
    """

    quantity: str
    pattern: str
    units: str | None
    low: float | None
    high: float | None
    by_units: bool = False
    alternatives: tuple[str, ...] = ()


#: Physical ranges per quantity, in the order they are tried (the first match wins).
PLAUSIBLE_RANGES: tuple[PlausibleRange, ...] = (
    PlausibleRange(
        "an anomaly or difference",
        r"anomal|difference|deviation|departure|change|trend|tendency|increment",
        None,
        None,
        None,
    ),
    PlausibleRange(
        "a heat content or energy inventory",
        r"heat_content|energy|enthalpy|heat_uptake",
        None,
        None,
        None,
    ),
    PlausibleRange("a radiative forcing", r"forcing", "W m-2", -100.0, 100.0),
    PlausibleRange("a net energy flux", r"(^|_)net(_|$)|imbalance", "W m-2", -1500.0, 1500.0),
    # Magnitudes; -10 W m-2 tolerates the night-time offsets of shortwave radiometers.
    PlausibleRange(
        "a radiative flux (a magnitude)",
        r"outgoing|reflected|upwelling|downwelling|incoming|incident|insolation|irradiance"
        r"|longwave|shortwave",
        "W m-2",
        -10.0,
        1500.0,
        alternatives=("W m-2", "mW m-2"),
    ),
    PlausibleRange(
        "an energy flux", r"flux|heat|radiation", "W m-2", -1500.0, 1500.0, by_units=True
    ),
    PlausibleRange(
        "a relative humidity as a fraction",
        r"relative_humidity",
        "1",
        0.0,
        1.5,
        alternatives=("%", "1"),
    ),
    PlausibleRange(
        "a fraction (albedo, cloud cover)",
        r"albedo|cloud_area_fraction|cloud_fraction|cloud_cover",
        "1",
        0.0,
        1.5,
        alternatives=("%", "1"),
    ),
    PlausibleRange(
        "a specific humidity or mixing ratio",
        r"specific_humidity|mixing_ratio",
        "kg kg-1",
        0.0,
        0.05,
        alternatives=("g kg-1", "kg kg-1"),
    ),
    PlausibleRange("a pressure", r"pressure", "Pa", 0.0, 110000.0, True, ("Pa", "hPa", "kPa")),
    PlausibleRange(
        "a temperature",
        r"temperature|(^|_)(tas|ts|ta|skt|sst|tos)(_|$)",
        "K",
        150.0,
        350.0,
        True,
        ("K", "degC", "degF"),
    ),
    PlausibleRange("a wind speed", r"wind_speed|friction_velocity", "m s-1", 0.0, 150.0),
)


def _converts(source: str, target: str) -> bool:
    try:
        conversion(source, target, None, "")
    except ObservationError:
        return False
    return True


def _same_unit(first: str, second: str) -> bool:
    try:
        scale, offset = conversion(first, second, None, "")
    except ObservationError:
        return False
    return bool(np.isclose(scale, 1.0) and np.isclose(offset, 0.0))


def plausible_range_for(
    model_output: str, standard_name: str | None, units: str
) -> PlausibleRange | None:
    """The row of :data:`PLAUSIBLE_RANGES` for a quantity, or ``None`` when none applies.

    Args:
        model_output: the spec's ``model_output``, e.g. ``"surface_temperature"``.
        standard_name: the file variable's CF ``standard_name`` (may be empty).
        units: the spec's units (those of the model output), e.g. ``"K"``.

    Example:
        >>> plausible_range_for("surface_temperature", None, "K").quantity
        'a temperature'
        >>> plausible_range_for("olr", "toa_outgoing_longwave_flux", "W m-2").low
        -10.0
        >>> plausible_range_for("upper_ocean_heat_content", None, "J").low is None
        True
    """
    for text in (model_output, standard_name):
        if not text:
            continue
        for row in PLAUSIBLE_RANGES:
            if re.search(row.pattern, text.lower()) and (
                row.units is None or _converts(units, row.units)
            ):
                return row
    for row in PLAUSIBLE_RANGES:
        if row.by_units and row.units is not None and _converts(units, row.units):
            return row
    return None


def _outside(values: Array, low: float | None, high: float | None) -> bool:
    return bool(
        (low is not None and values.min() < low) or (high is not None and values.max() > high)
    )


def _explains(values: Array, row: PlausibleRange) -> bool:
    """Whether re-read values are plausible, and not merely squeezed towards zero.

    Reading -240 W m-2 as mW m-2 gives -0.24 W m-2, inside [-10, 1500] but no explanation;
    an explanation must reach at least 1 % of the range's largest magnitude.
    """
    scale = max(abs(b) for b in (row.low, row.high) if b is not None)
    return not _outside(values, row.low, row.high) and float(np.abs(values).max()) >= 0.01 * scale


def _describe(values: Array, low: float | None, high: float | None, units: str) -> tuple[str, str]:
    """``("go down to -47 K", "below the plausible 150 K")`` and the like."""
    vmin, vmax = float(values.min()), float(values.max())
    below = low is not None and vmin < low
    above = high is not None and vmax > high
    unit = "" if units in ("", "1") else f" {units}"  # "up to 97", not "up to 97 1"
    if below and not above:
        return f"go down to {vmin:.4g}{unit}", f"below the plausible {low:g}{unit}"
    if above and not below:
        return f"go up to {vmax:.4g}{unit}", f"above the plausible {high:g}{unit}"
    span = f"{'-inf' if low is None else f'{low:g}'} to {'inf' if high is None else f'{high:g}'}"
    return f"span {vmin:.4g} to {vmax:.4g}{unit}", f"outside the plausible {span}{unit}"


def check_plausible(
    values: Array,
    raw: Array,
    spec: ObservationSpec,
    file_units: str,
    attrs: dict[str, Any],
    file: str | Path,
) -> None:
    """Refuse values outside the plausible range of their quantity.

    Args:
        values: the values in the spec's ``units`` (after conversion); NaN are ignored.
        raw: the same values in the file's units (before conversion), for the diagnosis.
        spec: the observation spec (``model_output``, ``units``, ``difference``,
            ``valid_range``).
        file_units: the units the file's values were converted from.
        attrs: the file variable's attributes (``standard_name``, ``long_name``).
        file: for the message.

    Raises:
        ObservationError: one line naming the variable, the offending extreme, the plausible
            range and the likely mislabelling.
    """
    chosen = spec.plausible_range(file)
    finite = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(finite)
    if chosen is None or not keep.any():
        return
    finite = finite[keep]
    raw_finite = np.asarray(raw, dtype=np.float64)[keep]
    off_switch = f"or set `valid_range: [min, max]` (in {spec.units}) if the values are right"
    if isinstance(chosen, tuple):
        low, high = chosen
        if not _outside(finite, low, high):
            return
        extent, _ = _describe(finite, low, high, spec.units)
        shown = (
            f"[{'null' if low is None else f'{low:g}'}, {'null' if high is None else f'{high:g}'}]"
        )
        raise ObservationError(
            file,
            spec.variable,
            f"its values, read as {file_units!r}, {extent}, outside the spec's "
            f"valid_range {shown} {spec.units}",
            "correct the file's units attribute (or set `file_units` in the spec), or widen "
            "`valid_range` if the values are right",
        )
    if spec.difference:
        return  # anomalies and differences can take any value
    standard_name = str(attrs.get("standard_name", ""))
    row = plausible_range_for(spec.model_output, standard_name, spec.units)
    if row is None or row.units is None or (row.low is None and row.high is None):
        return
    in_row_units = convert(finite, spec.units, row.units, file, spec.variable)
    if not _outside(in_row_units, row.low, row.high):
        return
    extent, relation = _describe(in_row_units, row.low, row.high, row.units)
    problem = f"its values, read as {file_units!r}, {extent}, {relation} for {row.quantity}"
    described = f"{standard_name} {attrs.get('long_name', '')}".lower()
    if "anomal" in described:
        raise ObservationError(
            file,
            spec.variable,
            f"{problem}: the file's attributes say the values are anomalies",
            f"set `difference: true` in the spec (anomalies have no plausible range), {off_switch}",
        )
    for alternative in row.alternatives:
        if _same_unit(alternative, file_units):
            continue
        reread = convert(raw_finite, alternative, row.units, file, spec.variable)
        if _explains(reread, row):
            raise ObservationError(
                file,
                spec.variable,
                f"{problem}: the data look like {alternative} labelled as {file_units!r}",
                f"correct the file's units attribute to {alternative!r} (or set "
                f"`file_units: {alternative}` in the spec), {off_switch}",
            )
    if _explains(-in_row_units, row):
        raise ObservationError(
            file,
            spec.variable,
            f"{problem}: the data look like the opposite sign convention (e.g. an upward flux "
            "stored as negative)",
            "flip the sign (e.g. `ncap2 -s 'v=-v' FILE OUT`) or map the variable to a model output "
            f"with its sign convention, {off_switch}",
        )
    raise ObservationError(
        file,
        spec.variable,
        problem,
        "check the file's units attribute and its scale_factor/add_offset (set `file_units` in "
        f"the spec if the attribute is wrong), or map this variable to another model output, "
        f"{off_switch}",
    )
