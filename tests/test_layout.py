"""The project's layout holds: configs ship in the wheel, runs start anywhere, imports go one way.

* ``conf/`` at the top level is the package ``climgrad.conf`` (setuptools ``package-dir``): the
  wheel carries every YAML, and an installed wheel runs ``climgrad-calibrate --cfg job``.
* ``paths.*`` resolve once, so the default experiment runs from any working directory, writes
  under ``paths.output_dir`` and reads from ``paths.data_dir``.
* Import rules (an AST check): autograd and the shared checks know nothing of physics; physics
  knows nothing of models, data or calibration; models
  take tensors (no runtime import of ``climgrad.data``, nothing of calibration); the calibration
  layer never reaches into ``climgrad.physics``; no private name is imported across packages.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from climgrad.paths import checkout_root, project_root

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "src" / "climgrad"
PYTHON = sys.executable
FAST = ["trainer.max_steps=2", "trainer.progress=false", "logger.figure_every=0"]


# ---------------------------------------------------------------------------------------------
# Packaging


def _listed_packages() -> list[str]:
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"^packages = \[(.*?)\]", text, flags=re.MULTILINE | re.DOTALL)
    assert block is not None, "pyproject.toml lists no packages"
    return re.findall(r'"([^"]+)"', block.group(1))


def test_every_source_package_is_listed_for_the_wheel() -> None:
    found = {
        ".".join(("climgrad", *path.parent.relative_to(SOURCE).parts))
        for path in SOURCE.rglob("__init__.py")
    }
    assert sorted({*found, "climgrad.conf"}) == sorted(_listed_packages())
    assert (REPO / "conf" / "__init__.py").is_file()
    assert not (SOURCE / "conf").exists(), "configs belong in the top-level conf/"


def test_the_checkout_is_found_and_is_the_default_root() -> None:
    assert checkout_root() == REPO
    if not os.environ.get("CLIMGRAD_ROOT"):
        assert project_root() == REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [PYTHON, "-m", "pip", "wheel", str(REPO), "--no-deps", "--quiet", "-w", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = target.glob("climgrad-*.whl")
    return path


def test_the_wheel_ships_every_config(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    configs = sorted(p.relative_to(REPO / "conf") for p in (REPO / "conf").rglob("*.yaml"))
    assert configs
    missing = [str(c) for c in configs if f"climgrad/conf/{c.as_posix()}" not in names]
    assert not missing, f"configs missing from the wheel: {missing}"
    assert "climgrad/conf/__init__.py" in names
    assert not any(name.startswith(("conf/", "data/", "tests/")) for name in names)


@pytest.mark.slow
def test_an_installed_wheel_composes_the_config(wheel: Path, tmp_path: Path) -> None:
    """A fresh venv with only the wheel (dependencies borrowed from this environment)."""
    venv = tmp_path / "venv"
    subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    borrowed = [p for p in sys.path if p.endswith("site-packages")]
    (site / "borrowed.pth").write_text("\n".join(borrowed) + "\n")
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
        check=True,
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CLIMGRAD_ROOT")}
    result = subprocess.run(
        [str(venv / "bin" / "climgrad-calibrate"), "--cfg", "job", "--resolve"],
        cwd=outside,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "name: ebm_ncep" in result.stdout
    # Installed from a wheel, the root is the working directory.
    assert f"root_dir: {outside}" in result.stdout
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import climgrad; print(climgrad.__file__)"],
        cwd=outside,
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert str(venv) in where.stdout


# ---------------------------------------------------------------------------------------------
# Runs from any working directory


def _app(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CLIMGRAD_ROOT"}
    return subprocess.run(
        [PYTHON, "-m", "climgrad.calibrate", *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**env, "HYDRA_FULL_ERROR": "0"},
        timeout=600,
        check=False,
    )


def test_default_experiment_runs_from_outside_the_checkout(tmp_path: Path) -> None:
    outside = tmp_path / "somewhere"
    outside.mkdir()
    outputs = tmp_path / "runs"
    result = _app([*FAST, f"paths.output_dir={outputs}"], outside)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [p.parent for p in outputs.glob("*/*/metrics.json")]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["experiment"] == "ebm_ncep" and metrics["steps"] == 2
    assert (run_dir / "params.nc").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    assert list(outside.iterdir()) == [], "nothing is written to the working directory"


def test_data_dir_points_every_path_at_the_users_data(tmp_path: Path) -> None:
    mine = tmp_path / "my_data"
    for folder in ("specs", "ebm_1d"):
        shutil.copytree(REPO / "data" / folder, mine / folder)
    arguments = [*FAST, f"paths.data_dir={mine}", f"paths.output_dir={tmp_path / 'runs'}"]
    result = _app([*arguments, "--cfg", "job", "--resolve"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"spec: {mine}/specs/ebm_1d.yaml" in result.stdout
    result = _app(arguments, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    empty = tmp_path / "empty"
    empty.mkdir()
    result = _app([*FAST, f"paths.data_dir={empty}", f"paths.output_dir={tmp_path / 'x'}"], empty)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "paths.data_dir" in lines[0], result.stderr
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").rglob("params.nc"))


# ---------------------------------------------------------------------------------------------
# Import rules


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str], bool]]:
    """``(module, names, runtime)`` of every ``climgrad`` import in ``path``."""
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(child) for child in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            module, names = node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            module, names = node.names[0].name, []
        else:
            continue
        if module == "climgrad" or module.startswith("climgrad."):
            found.append((module, names, id(node) not in typing_only))
    return found


def _family(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


#: package -> packages it must not import at run time.
FORBIDDEN = {
    "climgrad.validation": ("climgrad.physics", "climgrad.autograd", "climgrad.models"),
    "climgrad.autograd": ("climgrad.physics", "climgrad.models", "climgrad.calibration"),
    "climgrad.physics": ("climgrad.models", "climgrad.data", "climgrad.calibration"),
    "climgrad.models": ("climgrad.data", "climgrad.calibration", "climgrad.results"),
    "climgrad.data": ("climgrad.models", "climgrad.physics", "climgrad.calibration"),
    "climgrad.calibration": ("climgrad.physics", "climgrad.results"),
    "climgrad.inference": (
        "climgrad.physics",
        "climgrad.models",
        "climgrad.data",
        "climgrad.calibration",
        "climgrad.results",
    ),
}


def test_imports_go_one_way() -> None:
    violations = []
    for path in sorted(SOURCE.rglob("*.py")):
        importer = _module_name(path)
        for module, names, runtime in _imports(path):
            for package, forbidden in FORBIDDEN.items():
                if importer.startswith(package) and runtime and module.startswith(forbidden):
                    violations.append(f"{importer} imports {module}")
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private and _family(module) != _family(importer):
                violations.append(f"{importer} imports private {private} from {module}")
    assert not violations, "\n".join(violations)


def test_no_model_class_or_file_reading_under_calibration() -> None:
    calibration = SOURCE / "calibration"
    for path in calibration.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(base) for base in node.bases}
                assert not bases & {"Model", "nn.Module", "SingleColumnModel"}, (path, node.name)
        text = path.read_text()
        assert "open_dataset(" not in text and "xr.open" not in text, path


def test_nothing_looks_up_files_relative_to_source_files() -> None:
    offenders = []
    for path in SOURCE.rglob("*.py"):
        text = path.read_text()
        if re.search(r"__file__\)\.resolve\(\)\.parents\[", text) or "os.chdir(" in text:
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders, offenders
