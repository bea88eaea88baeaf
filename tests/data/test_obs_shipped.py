"""The shipped observations open through the one API and give the sanity values of
shared/data/README.md (issue 5, Tests and Done when)."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from climgrad.data import ModelGrid, ObsSet, load_observations, read_spec_file

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
SPECS = DATA / "specs"


def _load(family: str, grid: ModelGrid | None = None) -> ObsSet:
    # Paths in the shipped specs are relative to data/specs/, whatever the working directory.
    spec_grid, specs = read_spec_file(SPECS / f"{family}.yaml")
    return load_observations(specs, grid or spec_grid, dtype=torch.float64)


def _global_mean(obs: ObsSet, name: str) -> float:
    variable = obs[name]
    return float((variable.weights * variable.values).sum())


@pytest.fixture(scope="module")
def ncep() -> ObsSet:
    return _load("ebm_1d")


def test_ncep_global_means(ncep: ObsSet) -> None:
    assert _global_mean(ncep, "surface_temperature") - 273.15 == pytest.approx(14.80, abs=0.01)
    assert _global_mean(ncep, "outgoing_longwave") == pytest.approx(237.7, abs=0.05)
    insolation = _global_mean(ncep, "insolation")
    reflected = _global_mean(ncep, "reflected_shortwave")
    assert insolation == pytest.approx(341.9, abs=0.05)
    assert reflected == pytest.approx(117.0, abs=0.05)
    assert insolation - reflected == pytest.approx(224.9, abs=0.05)
    assert reflected / insolation == pytest.approx(0.342, abs=0.0005)


def test_ncep_bands_are_ascending_2_degree_and_complete(ncep: ObsSet) -> None:
    ts = ncep["surface_temperature"]
    assert ts.dims == ("lat",) and ts.shape == (90,) and bool(ts.mask.all())
    assert float(ts.coords["lat"][0]) == -89.0 and float(ts.coords["lat"][-1]) == 89.0
    assert ncep.mapping["outgoing_longwave"]["model_output"] == "outgoing_longwave_radiation"


def test_ncep_olr_regression(ncep: ObsSet) -> None:
    """Least-squares OLR = A + B Ts over zonal-mean annual values, Ts in degC."""
    ts = ncep["surface_temperature"].values.numpy() - 273.15
    olr = ncep["outgoing_longwave"].values.numpy()
    slope, intercept = np.polyfit(ts, olr, 1)
    assert intercept == pytest.approx(214.0, abs=1.0)
    assert slope == pytest.approx(1.6, abs=0.05)


def test_arm_bulk_heat_transfer_coefficient() -> None:
    """C_H = H / (rho c_p U (Ts - Ta)) with flag <= 1, U > 1 m/s, |Ts - Ta| > 1 K: median 0.0075,
    Ts from longwave with emissivity 0.98."""
    obs = _load("surface_flux")
    emissivity, sigma, heat_capacity = 0.98, 5.670374419e-8, 1004.0
    up, down = obs["upwelling_longwave"].values, obs["downwelling_longwave"].values
    skin = ((up - (1 - emissivity) * down) / (emissivity * sigma)) ** 0.25
    air = obs["air_temperature"].values
    wind = obs["wind_speed"].values
    flux = obs["sensible_heat_flux"]
    for name in ("upwelling_longwave", "downwelling_longwave", "air_temperature", "wind_speed"):
        torch.testing.assert_close(obs[name].coords["time"], flux.coords["time"])
    keep = flux.mask & (wind > 1.0) & ((skin - air).abs() > 1.0)
    coefficient = flux.values / (obs["air_density"].values * heat_capacity * wind * (skin - air))
    assert int(keep.sum()) == 15
    assert float(coefficient[keep].median()) == pytest.approx(0.0075, abs=0.0003)


def test_global_ebm_series() -> None:
    obs = _load("global_ebm")
    gmst = obs["surface_temperature_anomaly"]
    assert gmst.dims == ("time",) and gmst.shape == (170,) and bool(gmst.mask.all())
    assert float(gmst.coords["time"][0]) == 1850.5
    # 1961-1990 is the reference period of the anomaly
    years = gmst.coords["time"]
    reference = (years > 1961) & (years < 1991)
    assert abs(float(gmst.values[reference].mean())) < 0.01
    # 2.5-97.5 % limits: sigma = width / (2 * 1.96); 2019 limits are about +-0.04 K
    assert 0.01 < float(gmst.error[-1]) < 0.03
    forcing = obs["effective_radiative_forcing"]
    assert float(forcing.values[-1]) == pytest.approx(2.838, abs=0.001)
    ocean = obs["ocean_heat_uptake_0_700m"]
    assert ocean.units == "J" and int(ocean.mask.sum()) == 49  # 1971-2019 inside 1850-2019
    assert float(ocean.values[ocean.mask].max()) > 1e23  # ZJ converted to J


def test_single_column_profile() -> None:
    obs = _load("single_column")
    temperature = obs["air_temperature"]
    assert temperature.dims == ("plev",) and bool(temperature.mask.all())
    plev = temperature.coords["plev"]
    assert bool((plev.diff() > 0).all()) and float(plev[-1]) == 100000.0
    # tropical sounding: cold point near 100 hPa around 188 K, surface near 299 K
    assert float(temperature.values[plev == 10000.0]) == pytest.approx(188.1, abs=1.0)
    assert float(temperature.values[-1]) == pytest.approx(299.4, abs=1.0)
    torch.testing.assert_close(
        obs["air_temperature_soundings"].values, temperature.values, atol=1e-9, rtol=0
    )


def test_sounding_file_documents_its_quality_control() -> None:
    with xr.open_dataset(DATA / "single_column" / "twpice_darwin_soundings_plev.nc") as data:
        assert data.sizes["time"] == 17
        for tag in ("0119.0503", "0120.0438", "0123.1716", "0124.1717"):
            assert tag in data.attrs["soundings_dropped"]
        assert "-90.0 degC" in data.attrs["processing"]
        assert data.attrs["temperature_floor_samples_masked"]
        assert float(data["air_temperature"].min()) > 273.15 - 90.0
        for key in ("Conventions", "title", "source", "history", "references", "licence"):
            assert data.attrs[key]


def test_every_shipped_spec_checks_from_the_command_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from climgrad.data.__main__ import main

    monkeypatch.chdir(tmp_path)  # the spec's paths do not depend on the working directory
    specs = sorted(SPECS.glob("*.yaml"))
    assert [p.stem for p in specs] == [
        "ebm_1d",
        "ebm_1d_seasonal",
        "global_ebm",
        "single_column",
        "surface_flux",
    ]
    for spec in specs:
        assert main(["check", str(spec)]) == 0, capsys.readouterr().err
        assert "observation(s)" in capsys.readouterr().out


def test_shipped_spec_paths_are_relative_to_the_spec_folder() -> None:
    for spec_file in sorted(SPECS.glob("*.yaml")):
        raw = yaml.safe_load(spec_file.read_text())
        for entry in raw["observations"]:
            for path in [entry["path"]] if isinstance(entry["path"], str) else entry["path"]:
                assert path.startswith("../"), (spec_file.name, path)
                assert (SPECS / path).is_file(), (spec_file.name, path)


def test_prepare_data_reproduces_the_shipped_files(tmp_path: Path) -> None:
    copy = tmp_path / "data"
    for folder in ("global_ebm/forcing", "global_ebm/gmst", "global_ebm/ohc"):
        shutil.copytree(DATA / folder, copy / folder)
    shutil.copytree(DATA / "single_column/arm_soundings", copy / "single_column/arm_soundings")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "prepare_data.py"), "--data", str(copy)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    for name in (
        "global_ebm/ar6_erf_1750-2019.nc",
        "global_ebm/hadcrut5_gmst_1850-2022.nc",
        "global_ebm/energy_inventory_1971-2023.nc",
        "single_column/twpice_darwin_soundings_plev.nc",
    ):
        assert filecmp.cmp(copy / name, DATA / name, shallow=False), name
