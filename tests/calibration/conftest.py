"""Helpers for the calibration-app tests: compose configs, run the app in- and out-of-process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from climgrad.calibration.config import CONFIG_MODULE, config_dir, register_configs

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
#: Experiments whose model needs an optional extra, with the module that provides it.
NEEDS = {
    "column_rrtmg_twpice": ("climt", "pip install 'climgrad[rrtmg]'"),
    "column_sites_afgl": ("climt", "pip install 'climgrad[rrtmg]'"),
    "twin_column_rrtmg": ("climt", "pip install 'climgrad[rrtmg]'"),
}


def _available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


#: Experiments whose few-step run is slow (two cold RRTMG equilibria, about 35 s): their model is
#: run in the default suite by another experiment (column_rrtmg_twpice), so they are `slow`.
SLOW_EXPERIMENTS = {"twin_column_rrtmg"}

#: EXPERIMENTS for tests that run them: skipped, with the install command, where an extra is
#: missing (composing them needs nothing).
RUNNABLE_EXPERIMENTS = [
    pytest.param(
        name,
        marks=[
            pytest.mark.skipif(
                name in NEEDS and not _available(NEEDS[name][0]),
                reason=f"{name} needs an optional extra: {NEEDS.get(name, ('', ''))[1]}",
            ),
            *([pytest.mark.slow] if name in SLOW_EXPERIMENTS else []),
        ],
    )
    for name in EXPERIMENTS
]
#: Overrides that keep an in-process run short and silent.
#: The multi-site column twin at three sites, 12 layers, a short spin-up (quick to solve).
COLUMN_SITES_SMALL = [
    "experiment=column_sites_twin",
    "~model.options.sites.us_standard",
    "~data.observations.air_temperature_us_standard",
    "model.options.levels=12",
    "model.simulate.spin_up_steps=50",
    "trainer.device=cpu",
    "trainer.progress=false",
    "logger.figure_every=0",
]

FAST = [
    "trainer.max_steps=3",
    "method.max_iterations=3",  # the posterior methods' step budget
    "trainer.progress=false",
    "trainer.checkpoint_every=2",
]


@contextmanager
def hydra_context() -> Iterator[None]:
    register_configs()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        yield


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The composed ``calibrate`` config (without the ``hydra`` node)."""
    with hydra_context():
        return compose(config_name="calibrate", overrides=list(overrides))


def run_app(
    arguments: Sequence[str], *, timeout: float = 300, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """``python -m climgrad.calibrate <arguments>`` in a real process."""
    return subprocess.run(
        [sys.executable, "-m", "climgrad.calibrate", *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        check=False,
    )


@pytest.fixture
def repo() -> Path:
    return REPO
