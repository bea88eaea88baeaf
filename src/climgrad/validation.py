"""Input checks shared by the physics, the tridiagonal solver and the autograd helpers.

Every public physics function validates its inputs before it calls its custom Function (house
style: validate early, and let the error say the fix). The checks live here, once, so that one kind
of mistake gets one message wherever it is made. Each raises with a single line that names the
argument, says what was expected and what came, and how to fix it, as xarray does::

    `surface_pressure` must be positive (Pa); got a minimum of -1013. Pressure is in Pa; ...

Value checks (signs, ranges, NaN) look at the data: data-dependent control flow that
``torch.func`` transforms (``vmap``, ``grad``, ``jacrev``, ``jacfwd``) and ``torch.compile`` cannot
trace, and a host synchronisation on a GPU. They skip themselves on traced tensors
(:func:`is_traced`), whose values the un-transformed call has already checked, and on empty ones.
Type, shape and choice checks read only metadata and always run.

Numbers (Python floats and ints) are checked in Python, at no tensor cost, so a constant passed at
every time step costs nothing.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "HUMIDITY_HINT",
    "KELVIN_HINT",
    "MINIMUM_PLAUSIBLE_TEMPERATURE",
    "PASCAL_HINT",
    "as_tensors",
    "check_broadcastable",
    "check_choice",
    "check_count",
    "check_finite",
    "check_floating",
    "check_interface_pressure",
    "check_last_dimension",
    "check_not_scalar",
    "check_positive",
    "check_pressure_levels",
    "check_range",
    "check_same_device",
    "check_same_dtype",
    "check_same_last_dimension",
    "check_saturation_defined",
    "check_temperature",
    "check_temperature_tensor",
    "is_traced",
    "is_transformed",
]

#: How to fix a temperature given in degrees Celsius.
KELVIN_HINT = "Convert degC to K by adding 273.15."
#: How to fix a pressure given in hPa or kPa.
PASCAL_HINT = "Pressure is in Pa; multiply hPa (mbar) by 100 and kPa (as ARM reports) by 1000."
#: How to fix a specific humidity given in g kg-1.
HUMIDITY_HINT = "Specific humidity is in kg kg-1; convert g kg-1 by dividing by 1000."
#: Lowest temperature (K) taken for kelvin by :func:`check_temperature`: below any temperature in
#: Earth's atmosphere or at its surface, and above any of them in degC, so the bound catches
#: Celsius input (and keeps Bolton's saturation formula away from its singularity at 29.65 K).
MINIMUM_PLAUSIBLE_TEMPERATURE = 100.0

_NAN_HINT = (
    "Mask missing values before building tensors (a NaN in an unselected branch still poisons "
    "gradients)."
)


# --------------------------------------------------------------------------------------------------
# Tracing and conversion
# --------------------------------------------------------------------------------------------------


def is_transformed(*values: object) -> bool:
    """Whether any tensor among ``values`` is wrapped by a ``torch.func`` transform.

    ``vmap``, ``grad``, ``jvp``, ``jacrev``, ``jacfwd`` and ``functionalize`` wrap their tensors;
    a wrapped tensor has no storage to hand to NumPy or C (or aliases one behind the transform's
    back), and its values cannot steer Python control flow.

    Under ``torch.compile`` this is False: Dynamo cannot call the wrapper test (a C function it
    does not trace), and the tensors it traces are fakes of the plain tensors, never functorch
    wrappers of the caller's transform (Dynamo captures ``torch.func`` transforms itself).

    Args:
        values: Anything; only tensors are inspected.

    Returns:
        True when at least one tensor is wrapped.

    >>> import torch
    >>> seen = []
    >>> _ = torch.func.vmap(lambda row: seen.append(is_transformed(row)) or row)(torch.ones(2, 3))
    >>> is_transformed(torch.ones(3)), seen
    (False, [True])
    """
    if torch.compiler.is_compiling():
        return False
    return any(
        isinstance(value, Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(value)
        for value in values
    )


def is_traced(*values: object) -> bool:
    """Whether data-dependent Python control flow is impossible here.

    True under ``torch.compile`` and when any tensor among ``values`` is wrapped by a
    ``torch.func`` transform (:func:`is_transformed`). Value checks skip themselves then: the
    un-transformed call has already validated the same values.

    Args:
        values: Anything; only tensors are inspected.

    Returns:
        True when the values cannot (or need not) be checked.
    """
    return torch.compiler.is_compiling() or is_transformed(*values)


def _skip(tensor: Tensor) -> bool:
    return is_traced(tensor) or tensor.numel() == 0


def as_tensors(*values: Tensor | float) -> list[Tensor]:
    """Convert numbers and tensors to tensors of one floating dtype and device.

    The dtype and device are those of the first floating-point tensor among ``values`` (the
    default dtype on the CPU if there is none), so Python floats such as constants follow the data.

    Args:
        values: Tensors and numbers.

    Returns:
        One tensor per value, in order.

    >>> import torch
    >>> [t.dtype for t in as_tensors(1.0, torch.tensor(2.0, dtype=torch.float64))]
    [torch.float64, torch.float64]
    """
    reference = next(
        (v for v in values if isinstance(v, Tensor) and torch.is_floating_point(v)), None
    )
    dtype = reference.dtype if reference is not None else torch.get_default_dtype()
    device = reference.device if reference is not None else torch.device("cpu")
    return [
        torch.as_tensor(v, dtype=dtype, device=device)
        if isinstance(v, Tensor)
        else _constant_tensor(float(v), dtype, device)
        for v in values
    ]


def _constant_tensor(value: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    # Dynamo cannot honour the cache (it traces through it, with a warning); a constant in a
    # compiled graph costs nothing anyway.
    if torch.compiler.is_compiling():
        return torch.tensor(value, dtype=dtype, device=device)
    return _cached_constant_tensor(value, dtype, device)


@functools.lru_cache(maxsize=256)
def _cached_constant_tensor(value: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    # Numbers passed every time step (a wind speed, c_p) become tensors once per dtype and device.
    return torch.tensor(value, dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------------
# Choices, types and shapes (metadata only: always checked)
# --------------------------------------------------------------------------------------------------


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Raise a ValueError listing the valid choices unless ``value`` is one of them.

    Args:
        name: What is being chosen, quoted in the message (``"formula"``, ``"gradient mode"``).
        value: The choice made.
        choices: The valid choices.

    >>> check_choice("formula", "magnus", ("bolton", "clausius_clapeyron"))
    Traceback (most recent call last):
    ...
    ValueError: Unknown formula 'magnus'; use one of ['bolton', 'clausius_clapeyron'].
    """
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; use one of {list(choices)}.")


def check_count(name: str, value: object, minimum: int) -> None:
    """Raise a ValueError unless ``value`` is an integer of at least ``minimum``.

    For counts: levels, bands, steps, iterations, quadrature points.

    Args:
        name: Argument name, quoted in the message.
        value: The argument.
        minimum: The smallest valid count.

    >>> check_count("n_bands", 1, 2)
    Traceback (most recent call last):
    ...
    ValueError: `n_bands` must be an integer of at least 2; got 1.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer of at least {minimum}; got {value!r}.")


def check_floating(name: str, value: object, units: str = "") -> None:
    """Raise a TypeError unless ``value`` is a floating-point tensor.

    Args:
        name: Argument name, quoted in the message.
        value: The argument.
        units: Its units, quoted in the message (optional).
    """
    in_units = f" in {units}" if units else ""
    if not isinstance(value, Tensor):
        raise TypeError(
            f"`{name}` must be a floating-point torch.Tensor{in_units}; got "
            f"{type(value).__name__}. Wrap it with torch.as_tensor(...)."
        )
    if not value.is_floating_point():
        raise TypeError(
            f"`{name}` must be a floating-point tensor{in_units}; got {value.dtype}. Convert it "
            "with `.double()` or `.float()`."
        )


def check_not_scalar(name: str, value: Tensor, what: str, hint: str = "") -> None:
    """Raise a ValueError if ``value`` is a scalar where a last dimension (``what``) is needed.

    Args:
        name: Argument name, quoted in the message.
        value: The tensor.
        what: What the last dimension holds, e.g. ``"the levels"``.
        hint: How to fix the input, appended to the message.
    """
    if value.ndim == 0:
        raise ValueError(
            _join(f"`{name}` must have at least one dimension ({what}, last); got a scalar.", hint)
        )


def check_last_dimension(name: str, value: Tensor, size: int, what: str, hint: str = "") -> None:
    """Raise a ValueError unless the last dimension of ``value`` has ``size`` entries.

    Args:
        name: Argument name, quoted in the message.
        value: The tensor.
        size: The required length of the last dimension.
        what: What the entries are, e.g. ``"latitude bands of the grid"``.
        hint: How to fix the input, appended to the message.

    >>> import torch
    >>> check_last_dimension("insolation", torch.ones(4), 6, "latitude bands")
    Traceback (most recent call last):
    ...
    ValueError: `insolation` must have 6 latitude bands along its last dimension; got shape (4,).
    """
    if value.ndim == 0 or value.shape[-1] != size:
        raise ValueError(
            _join(
                f"`{name}` must have {size} {what} along its last dimension; got shape "
                f"{tuple(value.shape)}.",
                hint,
            )
        )


def check_same_dtype(tensors: Mapping[str, Tensor], hint: str) -> None:
    """Raise a TypeError unless all ``tensors`` (by argument name) share one dtype."""
    dtypes = {name: tensor.dtype for name, tensor in tensors.items()}
    if len(set(dtypes.values())) > 1:
        raise TypeError(_join(f"{_names(tensors)} must share one dtype; got {dtypes}.", hint))


def check_same_device(tensors: Mapping[str, Tensor], hint: str) -> None:
    """Raise a ValueError unless all ``tensors`` (by argument name) are on one device."""
    devices = {name: str(tensor.device) for name, tensor in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(_join(f"{_names(tensors)} must be on one device; got {devices}.", hint))


def check_same_last_dimension(tensors: Mapping[str, Tensor], what: str, hint: str) -> None:
    """Raise a ValueError unless the last dimensions (``what``) of all ``tensors`` agree."""
    sizes = {name: tensor.shape[-1] for name, tensor in tensors.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(
            _join(
                f"The last dimensions ({what}) of {_names(tensors)} must agree; got {sizes}.", hint
            )
        )


def check_broadcastable(tensors: Mapping[str, Tensor], hint: str) -> None:
    """Raise a ValueError unless the leading (batch) dimensions of ``tensors`` broadcast."""
    try:
        torch.broadcast_shapes(*(tensor.shape[:-1] for tensor in tensors.values()))
    except RuntimeError as error:
        shapes = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
        raise ValueError(
            _join(
                f"The leading (batch) dimensions of {_names(tensors)} must broadcast; got shapes "
                f"{shapes}.",
                hint,
            )
        ) from error


# --------------------------------------------------------------------------------------------------
# Values (skipped on traced and empty tensors)
# --------------------------------------------------------------------------------------------------


def check_positive(
    name: str,
    value: Tensor | float,
    units: str,
    hint: str = "",
    *,
    allow_zero: bool = False,
    greater_than: float = 0.0,
    finite: bool = False,
) -> None:
    """Raise a ValueError naming the fix if ``value`` has NaN or values not above a bound.

    Args:
        name: Argument name, quoted in the message.
        value: Values to check, a tensor or a number.
        units: Units of ``value``, quoted in the message (``"1"`` or ``""`` if dimensionless).
        hint: How to fix the input, appended to the message.
        allow_zero: Accept values equal to ``greater_than``.
        greater_than: The bound (in ``units``).
        finite: Reject infinite values too (in the same single reduction).

    >>> check_positive("air_density", -1.2, "kg m-3", "About 1.2.")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: `air_density` must be positive (kg m-3); got a minimum of -1.2. About ...
    """
    lowest = _lowest_failing(
        name, value, greater_than, allow_equal=allow_zero, finite=finite, hint=hint
    )
    if lowest is None:
        return
    dimensionless = units in ("", "1")
    if greater_than == 0.0:
        relation = "non-negative" if allow_zero else "positive"
        requirement = relation if dimensionless else f"{relation} ({units})"
    else:
        relation = "at least" if allow_zero else "greater than"
        bound = f"{greater_than:g}" if dimensionless else f"{greater_than:g} {units}"
        requirement = f"{relation} {bound}"
    raise ValueError(_join(f"`{name}` must be {requirement}; got a minimum of {lowest:.6g}.", hint))


def check_temperature(
    name: str, temperature: Tensor | float, *, minimum: float = MINIMUM_PLAUSIBLE_TEMPERATURE
) -> None:
    """Raise a ValueError naming the fix unless every temperature is in K above ``minimum``.

    The default, :data:`MINIMUM_PLAUSIBLE_TEMPERATURE` (100 K), catches Celsius input; a scheme
    valid for any kelvin temperature passes ``minimum=0.0``.

    Args:
        name: Argument name, quoted in the message.
        temperature: Temperatures, a tensor or a number.
        minimum: The lower bound in K (exclusive).

    >>> check_temperature("temperature", -47.0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: `temperature` must be in K, above 100 K; got a minimum of -47. Convert degC to K ...
    """
    lowest = _lowest_failing(name, temperature, minimum, allow_equal=False)
    if lowest is not None:
        raise ValueError(
            f"`{name}` must be in K, above {minimum:g} K; got a minimum of {lowest:.6g}. "
            f"{KELVIN_HINT}"
        )


def check_temperature_tensor(
    name: str, temperature: object, *, minimum: float = MINIMUM_PLAUSIBLE_TEMPERATURE
) -> None:
    """:func:`check_floating`, then :func:`check_temperature`: a floating tensor of kelvin values.

    Args:
        name: Argument name, quoted in the message.
        temperature: The argument; a TypeError unless it is a floating-point tensor.
        minimum: The lower bound in K (exclusive).
    """
    check_floating(name, temperature, "K")
    assert isinstance(temperature, Tensor)
    check_temperature(name, temperature, minimum=minimum)


def check_finite(
    name: str, value: Tensor | float, hint: str = "Mask missing values first."
) -> None:
    """Raise a ValueError naming the fix if ``value`` holds NaN or an infinity.

    Args:
        name: Argument name, quoted in the message.
        value: Values to check, a tensor or a number.
        hint: How to fix the input, appended to the message.
    """
    if not isinstance(value, Tensor):
        if math.isfinite(float(value)):
            return
        value = torch.tensor(float(value))
    if _skip(value) or bool(torch.isfinite(value.detach()).all()):
        return
    raise ValueError(_join(f"`{name}` must be finite; got NaN or inf.", hint))


def check_range(
    name: str,
    value: Tensor | float,
    lower: float,
    upper: float,
    units: str = "",
    hint: str = "",
    *,
    include_lower: bool = True,
    include_upper: bool = True,
) -> None:
    """Raise a ValueError naming the fix unless every value lies in an interval.

    Args:
        name: Argument name, quoted in the message.
        value: Values to check, a tensor or a number.
        lower: Lower end of the interval.
        upper: Upper end of the interval.
        units: Units, quoted in the message (``""`` if dimensionless).
        hint: How to fix the input, appended to the message.
        include_lower: The interval is closed at ``lower``.
        include_upper: The interval is closed at ``upper``.

    >>> check_range("eccentricity", 1.2, 0.0, 1.0, include_upper=False)
    Traceback (most recent call last):
    ...
    ValueError: `eccentricity` must lie in [0, 1); got 1.2.
    """
    tensor = _as_checked_tensor(value)
    if tensor is None:
        return
    above = tensor >= lower if include_lower else tensor > lower
    below = tensor <= upper if include_upper else tensor < upper
    if bool((above & below).all()):
        return
    if bool(torch.isnan(tensor).any()):
        raise ValueError(f"`{name}` contains NaN. {_NAN_HINT}")
    low, high = float(tensor.min()), float(tensor.max())
    got = f"{low:.6g}" if low == high else f"values from {low:.6g} to {high:.6g}"
    interval = f"{'[' if include_lower else '('}{lower:g}, {upper:g}{']' if include_upper else ')'}"
    in_units = f" {units}" if units else ""
    raise ValueError(_join(f"`{name}` must lie in {interval}{in_units}; got {got}.", hint))


def check_pressure_levels(name: str, pressure: Tensor, *, zero_at_top: bool = False) -> None:
    """Raise a ValueError unless pressures are positive and increase strictly from the top.

    Layers and interfaces run from the top of the atmosphere (index 0) to the surface.

    Args:
        name: Argument name, quoted in the message.
        pressure: Pressures in Pa, ``(..., level)``.
        zero_at_top: Accept 0 Pa (the top interface of the atmosphere).
    """
    if _skip(pressure):
        return
    detached = pressure.detach()
    positive = detached >= 0 if zero_at_top else detached > 0
    increasing = detached[..., 1:] > detached[..., :-1]
    if bool(positive.all()) and bool(increasing.all()):
        return
    if bool(torch.isnan(detached).any()):
        raise ValueError(f"`{name}` contains NaN. {_NAN_HINT}")
    sign = ">= 0" if zero_at_top else "positive"
    raise ValueError(
        f"`{name}` must be {sign} and strictly increase from the top of the atmosphere to the "
        "surface (Pa); reverse the level order if it runs from the surface up, and convert hPa to "
        "Pa by multiplying by 100."
    )


def check_interface_pressure(interface_pressure: Tensor) -> Tensor:
    """Validate interface pressures ``(level + 1,)`` in Pa, top first; return them as a tensor.

    A floating tensor keeps its dtype (float64 stays float64); anything else becomes float64.

    Args:
        interface_pressure: Interface pressures in Pa, from the top of the atmosphere (``>= 0``)
            to the surface.

    Returns:
        The pressures as a floating tensor.
    """
    pressure = torch.as_tensor(interface_pressure)
    if not pressure.is_floating_point():
        pressure = pressure.to(torch.float64)
    if pressure.dim() != 1 or pressure.numel() < 2:
        raise ValueError(
            "`interface_pressure` must be 1-D with at least 2 interfaces (Pa); got shape "
            f"{tuple(pressure.shape)}."
        )
    check_pressure_levels("interface_pressure", pressure, zero_at_top=True)
    return pressure


def check_saturation_defined(saturation: Tensor) -> None:
    """Raise if saturation specific humidity ``q_s`` is outside (0, 1), i.e. where ``p <= e_s(T)``.

    Args:
        saturation: ``q_s`` in kg kg-1, computed from the ``temperature`` and ``pressure`` given.
    """
    if _skip(saturation):
        return
    detached = saturation.detach()
    if bool(((detached <= 0) | (detached >= 1) | torch.isnan(detached)).any()):
        raise ValueError(
            "`pressure` must exceed the saturation vapour pressure e_s(temperature) (water would "
            f"boil). {PASCAL_HINT}"
        )


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _as_checked_tensor(value: Any) -> Tensor | None:
    """The detached tensor to check, or None when the check is to be skipped."""
    tensor = value if isinstance(value, Tensor) else torch.as_tensor(value, dtype=torch.float64)
    if _skip(tensor):
        return None
    return tensor.detach()


def _lowest_failing(
    name: str, value: Any, bound: float, *, allow_equal: bool, finite: bool = False, hint: str = ""
) -> float | None:
    """None if every value exceeds ``bound`` (or equals it, with ``allow_equal``), else the minimum.

    One comparison finds both NaN and out-of-range values (NaN compares false); the minimum is
    worked out only on failure, so a valid call costs a single synchronising reduction. NaN raises,
    and so does an infinity when ``finite`` is set.
    """
    if isinstance(value, (int, float)):
        number = float(value)
        above = (number >= bound) if allow_equal else (number > bound)
        if above and (math.isfinite(number) or not finite):
            return None
        value = torch.tensor(number, dtype=torch.float64)  # invalid: the message is built below
    tensor = _as_checked_tensor(value)
    if tensor is None:
        return None
    ok = tensor >= bound if allow_equal else tensor > bound
    if finite:
        ok = ok & torch.isfinite(tensor)
    if bool(ok.all()):
        return None
    if bool(torch.isnan(tensor).any()):
        raise ValueError(f"`{name}` contains NaN. {_NAN_HINT}")
    lowest = float(tensor.min())
    if finite and lowest > bound and bool(torch.isinf(tensor).any()):
        raise ValueError(_join(f"`{name}` must be finite; got inf.", hint))
    return lowest


def _names(tensors: Mapping[str, Tensor]) -> str:
    quoted = [f"`{name}`" for name in tensors]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"


def _join(message: str, hint: str) -> str:
    return f"{message} {hint}" if hint else message
