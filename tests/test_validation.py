"""Tests of climgrad.validation: each check accepts good input and names the fix."""

from __future__ import annotations

import math

import pytest
import torch

from climgrad.validation import (
    HUMIDITY_HINT,
    KELVIN_HINT,
    PASCAL_HINT,
    as_tensors,
    check_broadcastable,
    check_choice,
    check_count,
    check_finite,
    check_floating,
    check_interface_pressure,
    check_last_dimension,
    check_not_scalar,
    check_positive,
    check_pressure_levels,
    check_range,
    check_same_device,
    check_same_dtype,
    check_same_last_dimension,
    check_saturation_defined,
    check_temperature,
    check_temperature_tensor,
    is_traced,
    is_transformed,
)

F64 = torch.float64


def tensor(values: object) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------
# Tracing and conversion


def test_is_transformed_and_is_traced_see_torch_func_wrappers() -> None:
    plain = torch.ones(3)
    assert not is_transformed(plain, 1.0, None)
    assert not is_traced(plain)
    seen: list[tuple[bool, bool]] = []

    def record(row: torch.Tensor) -> torch.Tensor:
        seen.append((is_transformed(row), is_traced(plain, row)))
        return row.sum()

    torch.func.vmap(record)(torch.ones(2, 3))
    torch.func.grad(record)(torch.ones(3))
    assert seen == [(True, True), (True, True)]


def test_value_checks_skip_themselves_under_vmap() -> None:
    # Under vmap the values cannot steer Python; the un-transformed call checks them instead.
    def checked(row: torch.Tensor) -> torch.Tensor:
        check_positive("row", row, "1")
        check_temperature("row", row)
        check_range("row", row, 0.0, 1.0)
        check_finite("row", row)
        return row

    batch = tensor([[-5.0, 2.0], [3.0, float("nan")]])
    torch.testing.assert_close(torch.func.vmap(checked)(batch), batch, equal_nan=True)
    with pytest.raises(ValueError):
        checked(batch)


def test_as_tensors_follow_the_first_floating_tensor() -> None:
    number, data, integer = as_tensors(2.0, tensor([1.0, 2.0]), torch.tensor([3]))
    assert number.dtype == data.dtype == integer.dtype == F64
    assert float(number) == 2.0
    (alone,) = as_tensors(1.5)
    assert alone.dtype == torch.get_default_dtype()


# ---------------------------------------------------------------------------------------------
# Choices, types and shapes


def test_check_choice() -> None:
    check_choice("formula", "bolton", ("bolton", "clausius_clapeyron"))
    with pytest.raises(ValueError, match=r"Unknown formula 'magnus'; use one of \['bolton'") as e:
        check_choice("formula", "magnus", ("bolton", "clausius_clapeyron"))
    one_line(e)


def test_check_count() -> None:
    check_count("steps", 0, 0)
    check_count("n_bands", 90, 2)
    with pytest.raises(ValueError, match=r"`n_bands` must be an integer of at least 2; got 1\."):
        check_count("n_bands", 1, 2)
    with pytest.raises(ValueError, match="integer"):
        check_count("steps", 2.5, 0)
    with pytest.raises(ValueError, match="integer"):
        check_count("steps", True, 0)


def test_check_floating() -> None:
    check_floating("temperature", tensor([280.0]), "K")
    with pytest.raises(TypeError, match=r"`temperature` must be a floating-point tensor in K; got"):
        check_floating("temperature", torch.tensor([280]), "K")
    with pytest.raises(TypeError, match=r"`rhs` must be a floating-point torch.Tensor; got list"):
        check_floating("rhs", [1.0, 2.0])


def test_check_not_scalar() -> None:
    check_not_scalar("rhs", tensor([1.0]), "the n unknowns")
    with pytest.raises(ValueError, match=r"`rhs` must have at least one dimension .* Expand it\."):
        check_not_scalar("rhs", tensor(1.0), "the n unknowns", "Expand it.")


def test_check_last_dimension() -> None:
    check_last_dimension("insolation", torch.ones(2, 6), 6, "latitude bands")
    with pytest.raises(ValueError, match=r"`insolation` must have 6 latitude bands .*\(2, 4\)"):
        check_last_dimension("insolation", torch.ones(2, 4), 6, "latitude bands")
    with pytest.raises(ValueError, match="got shape \\(\\)"):
        check_last_dimension("insolation", tensor(1.0), 6, "latitude bands")


def test_checks_across_tensors() -> None:
    good = {"lower": torch.ones(2, 4), "rhs": torch.ones(4)}
    check_same_dtype(good, "")
    check_same_device(good, "")
    check_same_last_dimension(good, "levels", "")
    check_broadcastable(good, "")
    with pytest.raises(TypeError, match=r"`lower` and `rhs` must share one dtype; .* Convert"):
        check_same_dtype({"lower": torch.ones(4), "rhs": torch.ones(4, dtype=F64)}, "Convert.")
    with pytest.raises(ValueError, match=r"The last dimensions \(levels\) of `a`, `b` and `c`"):
        check_same_last_dimension(
            {"a": torch.ones(4), "b": torch.ones(4), "c": torch.ones(5)}, "levels", ""
        )
    with pytest.raises(ValueError, match=r"leading \(batch\) dimensions .* must broadcast"):
        check_broadcastable({"a": torch.ones(2, 4), "b": torch.ones(3, 4)}, "")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_check_same_device() -> None:
    with pytest.raises(ValueError, match="must be on one device"):
        check_same_device({"a": torch.ones(2), "b": torch.ones(2, device="cuda")}, "")


# ---------------------------------------------------------------------------------------------
# Values


def test_check_positive_numbers_and_tensors() -> None:
    check_positive("air_density", 1.2, "kg m-3")
    check_positive("air_density", tensor([1.2, 1.0]), "kg m-3")
    check_positive("wind_speed", tensor([0.0, 3.0]), "m s-1", allow_zero=True)
    check_positive("maximum_enhancement", 3.0, "1", greater_than=1.0)
    check_positive("empty", torch.empty(0), "1")
    with pytest.raises(ValueError, match=r"`air_density` must be positive \(kg m-3\); got a") as e:
        check_positive("air_density", tensor([1.2, -0.5]), "kg m-3", "About 1.2.")
    assert one_line(e).endswith("got a minimum of -0.5. About 1.2.")
    with pytest.raises(ValueError, match=r"`wind_speed` must be non-negative \(m s-1\)"):
        check_positive("wind_speed", -3.0, "m s-1", allow_zero=True)
    with pytest.raises(ValueError, match=r"`maximum_enhancement` must be greater than 1; got"):
        check_positive("maximum_enhancement", 0.5, "1", greater_than=1.0)
    with pytest.raises(ValueError, match="at least 100 K"):
        check_positive("t", 50.0, "K", allow_zero=True, greater_than=100.0)


def test_check_positive_names_nan_and_infinity() -> None:
    with pytest.raises(ValueError, match=r"`q` contains NaN\. Mask missing values"):
        check_positive("q", tensor([0.01, math.nan]), "kg kg-1", allow_zero=True)
    with pytest.raises(ValueError, match="`q` contains NaN"):
        check_positive("q", math.nan, "kg kg-1")
    check_positive("width", math.inf, "K")  # infinite but positive: fine unless finite=True
    with pytest.raises(ValueError, match=r"`width` must be finite; got inf\. B2 uses 1 K\."):
        check_positive("width", math.inf, "K", "B2 uses 1 K.", finite=True)
    with pytest.raises(ValueError, match="`wind_speed` must be finite"):
        check_positive("wind_speed", tensor([1.0, math.inf]), "m s-1", allow_zero=True, finite=True)
    with pytest.raises(ValueError, match="must be non-negative"):
        check_positive("wind_speed", tensor([-math.inf]), "m s-1", allow_zero=True, finite=True)


def test_check_temperature_catches_celsius() -> None:
    check_temperature("temperature", tensor([200.0, 310.0]))
    check_temperature("temperature", 288.15)
    check_temperature("temperature", tensor([50.0]), minimum=0.0)
    with pytest.raises(ValueError, match=r"adding 273\.15") as e:
        check_temperature("temperature", tensor([15.0, -47.0]))
    assert one_line(e) == (
        f"`temperature` must be in K, above 100 K; got a minimum of -47. {KELVIN_HINT}"
    )
    with pytest.raises(ValueError, match=r"above 0 K; got a minimum of -1"):
        check_temperature("layer_temperature", -1.0, minimum=0.0)
    with pytest.raises(ValueError, match="contains NaN"):
        check_temperature("temperature", tensor([math.nan]))


def test_check_temperature_tensor() -> None:
    check_temperature_tensor("surface_temperature", tensor([280.0]), minimum=0.0)
    with pytest.raises(TypeError, match="floating-point tensor in K"):
        check_temperature_tensor("surface_temperature", torch.tensor([280]), minimum=0.0)
    with pytest.raises(ValueError, match=r"adding 273\.15"):
        check_temperature_tensor("surface_temperature", tensor([-5.0]), minimum=0.0)


def test_check_finite() -> None:
    check_finite("insolation", tensor([0.0, 340.0]))
    check_finite("insolation", 340.0)
    with pytest.raises(ValueError, match=r"`insolation` must be finite; got NaN or inf\. Mask"):
        check_finite("insolation", tensor([1.0, math.inf]))
    with pytest.raises(ValueError, match="must be finite"):
        check_finite("insolation", math.nan)


def test_check_range() -> None:
    check_range("latitude", tensor([-90.0, 0.0, 90.0]), -90.0, 90.0, "degrees north")
    check_range("eccentricity", 0.0, 0.0, 1.0, include_upper=False)
    with pytest.raises(
        ValueError, match=r"`latitude` must lie in \[-90, 90\] degrees north; got"
    ) as e:
        check_range(
            "latitude", tensor([-100.0, 95.0]), -90.0, 90.0, "degrees north", "Use degrees."
        )
    assert "values from -100 to 95. Use degrees." in one_line(e)
    with pytest.raises(ValueError, match=r"`eccentricity` must lie in \[0, 1\); got 1\."):
        check_range("eccentricity", 1.0, 0.0, 1.0, include_upper=False)
    with pytest.raises(ValueError, match=r"\(0, 1\]; got 0\."):
        check_range("emissivity", 0.0, 0.0, 1.0, include_lower=False)
    with pytest.raises(ValueError, match="contains NaN"):
        check_range("latitude", tensor([math.nan]), -90.0, 90.0)


def test_check_pressure_levels_and_interface_pressure() -> None:
    check_pressure_levels("layer_pressure", tensor([2.5e4, 7.5e4]))
    check_pressure_levels("interface_pressure", tensor([0.0, 5e4, 1e5]), zero_at_top=True)
    with pytest.raises(ValueError, match="`layer_pressure` must be positive and strictly"):
        check_pressure_levels("layer_pressure", tensor([0.0, 5e4]))
    with pytest.raises(ValueError, match="reverse the level order"):
        check_pressure_levels("layer_pressure", tensor([7.5e4, 2.5e4]))
    pressure = check_interface_pressure(torch.tensor([0, 50000, 100000]))
    assert pressure.dtype == F64
    assert check_interface_pressure(torch.tensor([0.0, 1.0])).dtype == torch.float32
    with pytest.raises(ValueError, match="1-D with at least 2 interfaces"):
        check_interface_pressure(tensor([1e5]))
    with pytest.raises(ValueError, match="`interface_pressure` must be >= 0 and strictly"):
        check_interface_pressure(tensor([1e5, 5e4, 0.0]))


def test_check_saturation_defined() -> None:
    check_saturation_defined(tensor([0.01, 0.02]))
    with pytest.raises(ValueError, match="water would boil") as e:
        check_saturation_defined(tensor([0.01, 1.5]))
    assert PASCAL_HINT in one_line(e)
    with pytest.raises(ValueError, match="must exceed the saturation vapour pressure"):
        check_saturation_defined(tensor([math.nan]))


def test_hints_name_the_conversion() -> None:
    assert "273.15" in KELVIN_HINT
    assert "hPa" in PASCAL_HINT and "kPa" in PASCAL_HINT
    assert "g kg-1" in HUMIDITY_HINT
