"""Every bad input ends in one line naming file, variable and fix; the CLI exits non-zero and
leaves earlier outputs untouched (issue 5, Bad input)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from climgrad.data import ModelGrid, ObservationError, ObservationSpec
from climgrad.data.__main__ import main
from climgrad.data.synthetic import write_synthetic

from .helpers import one_line_error, tas_spec

GRID = ModelGrid.latitude_bands(18)


def _spec(path: Path | str, **changes: Any) -> ObservationSpec:
    return tas_spec(path, **changes)


def _error(spec: ObservationSpec, grid: ModelGrid = GRID) -> str:
    message = str(one_line_error(spec, grid))
    return message


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    return write_synthetic(tmp_path / "clean.nc")


def _rewrite(path: Path, edit: Any) -> Path:
    with xr.open_dataset(path, decode_times=False) as data:
        loaded = data.load()
    edited = edit(loaded)
    out = path.with_name("edited.nc")
    edited.to_netcdf(out)
    return out


def test_missing_file(tmp_path: Path) -> None:
    message = _error(_spec(tmp_path / "nowhere.nc"))
    assert "nowhere.nc" in message and "does not exist" in message and "'tas'" in message


def test_not_netcdf(tmp_path: Path) -> None:
    path = tmp_path / "notes.nc"
    path.write_text("year,value\n2000,1.0\n")
    message = _error(_spec(path))
    assert "not readable NetCDF" in message and "ncdump" in message


@pytest.mark.parametrize("file_format", ["NETCDF4", "NETCDF3_CLASSIC"])
def test_truncated_file(tmp_path: Path, file_format: str) -> None:
    full = write_synthetic(tmp_path / "full.nc", file_format=file_format)
    cut = tmp_path / "cut.nc"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    message = _error(_spec(cut))
    assert "cut.nc" in message and "truncated" in message


def test_missing_variable_lists_what_is_there(clean: Path) -> None:
    message = _error(_spec(clean, variable="ts"))
    assert "variable 'ts'" in message and "no such variable" in message and "tas" in message


def test_missing_units(clean: Path) -> None:
    def drop(data: xr.Dataset) -> xr.Dataset:
        del data["tas"].attrs["units"]
        return data

    message = _error(_spec(_rewrite(clean, drop)))
    assert "no units attribute" in message and "file_units" in message


def test_unreadable_units(clean: Path) -> None:
    def garble(data: xr.Dataset) -> xr.Dataset:
        data["tas"].attrs["units"] = "degrees of heat"
        return data

    message = _error(_spec(_rewrite(clean, garble)))
    assert "'degrees of heat'" in message and "not a unit" in message


def test_unconvertible_units(clean: Path) -> None:
    message = _error(_spec(clean, units="W m-2"))
    assert "do not convert" in message and "'K'" in message and "'W m-2'" in message


def test_no_time_overlap_shows_both_ranges(clean: Path) -> None:
    message = _error(_spec(clean, time=[1950, 1960]))
    assert "1950 to 1960" in message and "2000.0" in message and "2001.9" in message


def test_no_latitude_overlap_shows_both_ranges(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "band.nc")
    with xr.open_dataset(path, decode_times=False) as data:
        tropics = data.sel(lat=slice(-20, 20)).load()
    tropics.to_netcdf(tmp_path / "tropics.nc")
    message = _error(_spec(tmp_path / "tropics.nc", lat=[40, 60]))
    assert "40.0 to 60.0" in message and "-17.500 to 17.500" in message


def test_all_nan_selection(clean: Path) -> None:
    def blank(data: xr.Dataset) -> xr.Dataset:
        data["tas"][:] = np.nan
        return data

    message = _error(_spec(_rewrite(clean, blank)))
    assert "no valid values" in message and "all are NaN" in message


def test_all_nan_within_the_window_only(clean: Path) -> None:
    def blank_2001(data: xr.Dataset) -> xr.Dataset:
        data["tas"][12:] = np.nan
        return data

    message = _error(_spec(_rewrite(clean, blank_2001), time=[2001, 2001]))
    assert "in the selection (time 2001 to 2001)" in message


def test_mismatched_dimensions_of_the_error_variable(clean: Path) -> None:
    def add_error(data: xr.Dataset) -> xr.Dataset:
        data["tas_error"] = data["tas"].isel(time=0, drop=True)
        return data

    message = _error(_spec(_rewrite(clean, add_error), error=None, error_variable="tas_error"))
    assert "variable 'tas_error'" in message and "do not match" in message


def test_leftover_longitude_says_which_operator_to_add(clean: Path) -> None:
    message = _error(_spec(clean, operator="time_mean"))
    assert "'lon'" in message and "zonal_mean" in message


def test_unknown_operator(clean: Path) -> None:
    message = _error(_spec(clean, operator="time_mean+zonal_median"))
    assert "zonal_median" in message and "zonal_mean" in message


def test_no_error_given(clean: Path) -> None:
    message = _error(_spec(clean, error=None))
    assert "no observation error" in message and "error_variable" in message


# ---- command line ---------------------------------------------------------------------------


def _write_spec(path: Path, data_file: Path, variable: str = "tas") -> Path:
    path.write_text(
        "grid:\n  latitude_bands: 18\nobservations:\n"
        f"  - name: t\n    path: {data_file}\n    variable: {variable}\n"
        "    model_output: surface_temperature\n    units: K\n"
        "    operator: time_mean+zonal_mean\n    error: 1.0\n"
    )
    return path


def test_cli_check_prints_a_summary_and_writes_output(
    tmp_path: Path, clean: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _write_spec(tmp_path / "spec.yaml", clean)
    output = tmp_path / "obs.nc"
    assert main(["check", str(spec), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "surface_temperature" in printed and "time_mean+zonal_mean" in printed
    with xr.open_dataset(output) as written:
        assert written["t"].attrs["model_output"] == "surface_temperature"


def test_cli_error_is_one_line_and_keeps_earlier_output(
    tmp_path: Path, clean: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "obs.nc"
    output.write_bytes(b"earlier result")
    spec = _write_spec(tmp_path / "spec.yaml", clean, variable="nope")
    assert main(["check", str(spec), "--output", str(output)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "clean.nc" in err and "'nope'" in err and "Fix:" in err
    assert output.read_bytes() == b"earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.nc", "obs.nc", "spec.yaml"]


def test_cli_debug_shows_the_traceback(tmp_path: Path, clean: Path) -> None:
    spec = _write_spec(tmp_path / "spec.yaml", clean, variable="nope")
    with pytest.raises(ObservationError):
        main(["check", str(spec), "--debug"])


def test_cli_bad_spec_keys_list_the_valid_ones(
    tmp_path: Path, clean: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _write_spec(tmp_path / "spec.yaml", clean)
    spec.write_text(spec.read_text().replace("error: 1.0", "eror: 1.0"))
    assert main(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "unknown key 'eror'" in err and "error_variable" in err


def test_cli_show(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(clean)]) == 0
    out = capsys.readouterr().out
    assert "tas" in out and "axis=lat" in out and "'K'" in out


def test_cli_subprocess_exit_status(tmp_path: Path) -> None:
    """The real entry point: non-zero status, one line on stderr, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "climgrad.data", "show", str(tmp_path / "missing.nc")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "missing.nc" in result.stderr and "Fix:" in result.stderr
