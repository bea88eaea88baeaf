"""Relative paths in a spec file start from the spec file's folder, not the working directory
(issue "Trustworthy under real files", A)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from climgrad.data import ModelGrid, ObservationSpec, load_observations, read_spec_file
from climgrad.data.__main__ import main
from climgrad.data.synthetic import write_synthetic

SPEC = """\
grid:
  latitude_bands: 18
observations:
  - name: t
    path: {path}
    variable: tas
    model_output: surface_temperature
    units: K
    operator: time_mean+zonal_mean
    error: 1.0
"""


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """``project/obs/tas.nc``, ``project/specs/`` and an unrelated working directory."""
    (tmp_path / "project" / "obs").mkdir(parents=True)
    (tmp_path / "project" / "specs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    data = write_synthetic(tmp_path / "project" / "obs" / "tas.nc")
    return {
        "project": tmp_path / "project",
        "specs": tmp_path / "project" / "specs",
        "data": data,
        "elsewhere": tmp_path / "elsewhere",
    }


def test_spec_paths_resolve_against_the_spec_folder_from_any_working_directory(
    layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_file = layout["specs"] / "spec.yaml"
    spec_file.write_text(SPEC.format(path="../obs/tas.nc"))
    monkeypatch.chdir(layout["elsewhere"])
    grid, specs = read_spec_file(spec_file)
    assert Path(specs[0].path) == layout["data"].resolve()
    obs = load_observations(specs, grid, dtype=torch.float64)
    assert obs["t"].shape == (18,) and bool(obs["t"].mask.all())
    # a root given by a caller (the launch directory) does not move a spec file's paths
    again = load_observations(specs, grid, dtype=torch.float64, root=layout["elsewhere"])
    torch.testing.assert_close(again["t"].values, obs["t"].values)


def test_spec_path_lists_resolve_too(
    layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_file = layout["specs"] / "spec.yaml"
    spec_file.write_text(SPEC.format(path="[../obs/tas.nc]"))
    monkeypatch.chdir(layout["elsewhere"])
    _, specs = read_spec_file(spec_file)
    assert [Path(p) for p in specs[0].path] == [layout["data"].resolve()]


def test_root_still_applies_to_specs_built_in_python(
    layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(layout["elsewhere"])
    spec = ObservationSpec(
        name="t",
        path="obs/tas.nc",
        variable="tas",
        model_output="surface_temperature",
        units="K",
        operator="time_mean+zonal_mean",
        error=1.0,
    )
    obs = load_observations([spec], ModelGrid.latitude_bands(18), root=layout["project"])
    assert bool(obs["t"].mask.all())


def test_cli_check_from_another_directory_and_root_override(
    layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(layout["elsewhere"])
    relative = layout["specs"] / "relative.yaml"
    relative.write_text(SPEC.format(path="../obs/tas.nc"))
    assert main(["check", str(relative)]) == 0, capsys.readouterr().err
    # a spec written against another base: --root names it
    rooted = layout["specs"] / "rooted.yaml"
    rooted.write_text(SPEC.format(path="obs/tas.nc"))
    assert main(["check", str(rooted)]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "spec file's folder" in err
    assert main(["check", str(rooted), "--root", str(layout["project"])]) == 0
