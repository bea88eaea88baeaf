"""Units to SI through pint with cf-xarray's registry (UDUNITS spellings such as ``W m-2``).

cf-xarray's registry already reads CF/UDUNITS strings (``degC``, ``hPa``, ``W m-2``,
``degrees_north``, ``ZJ``). A few spellings that real files use and that no registry reads are
mapped first (``w/m^2`` in ARM SEBS files, ``fraction``, ``unitless``, ``meters above Mean Sea
Level``); anything else that does not parse is an :class:`ObservationError` naming the variable and
its ``units`` attribute.
"""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pint

from climgrad.data.errors import ObservationError

#: Spellings seen in real files that no units library reads, mapped to what they mean.
UNIT_ALIASES: dict[str, str] = {
    "fraction": "1",
    "unitless": "1",
    "none": "1",
    "": "",
    "meters above mean sea level": "m",
    "degc": "degC",
    "deg c": "degC",
    "celsius": "degC",
    "w/m^2": "W m-2",
    "w/m2": "W m-2",
    "w m-2": "W m-2",
}


@functools.lru_cache(maxsize=1)
def unit_registry() -> pint.UnitRegistry:
    """Return cf-xarray's pint registry (UDUNITS-compatible), imported once.

    cf-xarray's import warns when matplotlib is absent; that support is irrelevant here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cf_xarray.units import units

    return units


def normalize_unit_string(units: str) -> str:
    """Return ``units`` with known non-standard spellings replaced (``w/m^2`` -> ``W m-2``)."""
    key = re.sub(r"\s+", " ", units.strip()).lower()
    return UNIT_ALIASES.get(key, units.strip())


def parse_units(units: str, file: str | Path | None, variable: str) -> pint.Unit:
    """Parse a ``units`` attribute, or fail naming the file, the variable and the attribute."""
    registry = unit_registry()
    text = normalize_unit_string(units)
    if text == "":
        raise ObservationError(
            file,
            variable,
            "its units attribute is empty",
            f"set the attribute, e.g. `ncatted -a units,{variable},o,c,'K' FILE`, "
            "or give `file_units` in the observation spec",
        )
    try:
        return registry.Unit(text)
    except Exception as err:  # pint raises several unrelated types on bad strings
        raise ObservationError(
            file,
            variable,
            f"its units attribute {units!r} is not a unit pint can read ({type(err).__name__})",
            "correct the attribute to a UDUNITS spelling such as 'K', 'W m-2' or 'hPa', "
            "or give `file_units` in the observation spec",
        ) from None


def conversion(
    from_units: str,
    to_units: str,
    file: str | Path | None,
    variable: str,
    difference: bool = False,
) -> tuple[float, float]:
    """Return ``(scale, offset)`` such that ``value_in_to_units = scale * value + offset``.

    Args:
        from_units: the file's ``units`` attribute.
        to_units: the units the model expects (SI, e.g. ``"K"``).
        file: file name for error messages.
        variable: variable name for error messages.
        difference: the values are differences (anomalies), so offset units such as degC
            convert by scale only (1 degC of anomaly is 1 K, not 274.15 K).

    Raises:
        ObservationError: when either unit does not parse or the two do not convert.
    """
    source = parse_units(from_units, file, variable)
    target = parse_units(to_units, file, f"{variable} (expected units)")
    registry = unit_registry()
    try:
        if difference:
            scale = _delta_factor(registry, source, target)
            return scale, 0.0
        zero = registry.Quantity(0.0, source).to(target).magnitude
        one = registry.Quantity(1.0, source).to(target).magnitude
    except pint.errors.DimensionalityError:
        raise ObservationError(
            file,
            variable,
            f"its units {from_units!r} do not convert to the expected {to_units!r} "
            f"(dimensions {source.dimensionality} versus {target.dimensionality})",
            f"map a variable measured in {to_units!r} to this model output, or correct the "
            "file's units attribute",
        ) from None
    return float(one - zero), float(zero)


def _delta_factor(registry: pint.UnitRegistry, source: pint.Unit, target: pint.Unit) -> float:
    # Offset units (degC, degF) become their delta units so that anomalies scale only.
    def as_delta(unit: pint.Unit) -> pint.Unit:
        name = str(unit)
        if name in ("degree_Celsius", "degree_Fahrenheit"):
            return registry.Unit("delta_" + name)
        return unit

    return float(registry.Quantity(1.0, as_delta(source)).to(as_delta(target)).magnitude)


def convert(
    values: np.ndarray[Any, Any],
    from_units: str,
    to_units: str,
    file: str | Path | None,
    variable: str,
    difference: bool = False,
) -> np.ndarray[Any, Any]:
    """Convert an array from ``from_units`` to ``to_units`` (float64); see :func:`conversion`."""
    scale, offset = conversion(from_units, to_units, file, variable, difference)
    return np.asarray(values, dtype=np.float64) * scale + offset


def canonical_units(units: str) -> str:
    """Return a UDUNITS-style spelling of ``units`` for output attributes (``W m-2`` stays)."""
    return normalize_unit_string(units)
