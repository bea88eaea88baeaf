"""Every config composes, every group instantiates, and typos fail listing the valid keys."""

from __future__ import annotations

import re

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from climgrad.calibration.adapters import get_adapter
from climgrad.calibration.config import (
    GROUPS,
    CalibrateConfig,
    check_overrides,
    config_dir,
)
from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.loss import CalibrationLoss
from climgrad.calibration.optim import build_optimizer, build_schedule
from climgrad.paths import project_root

from .conftest import EXPERIMENTS, compose_config

PLUGINS = {
    "joblib": "hydra_plugins.hydra_joblib_launcher",
    "slurm": "hydra_plugins.hydra_submitit_launcher",
    "submitit_local": "hydra_plugins.hydra_submitit_launcher",
}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def _to_object(overrides: list[str]) -> CalibrateConfig:
    config = OmegaConf.to_object(compose_config(overrides))
    assert isinstance(config, CalibrateConfig)
    return config


def test_default_is_ebm_ncep() -> None:
    config = _to_object([])
    assert config.name == "ebm_ncep"
    assert config.model.name == "ebm1d"
    # ${paths.data_dir} resolves once to the checkout's data/ (or $CLIMGRAD_ROOT/data).
    assert config.data.spec == str(project_root() / "data" / "specs" / "ebm_1d.yaml")
    assert config.paths.output_dir == str(project_root() / "outputs")


@pytest.mark.parametrize("group", [g for g in GROUPS if g not in ("experiment", "launcher")])
def test_every_group_option_composes(group: str) -> None:
    options = _options(group)
    assert options, f"no configs in group {group}"
    for option in options:
        assert isinstance(_to_object([f"{group}={option}"]), CalibrateConfig)


@pytest.mark.parametrize("option", _options("launcher"))
def test_launchers_compose(option: str) -> None:
    module = PLUGINS.get(option)
    if module is not None:
        pytest.importorskip(module, reason=f"the {option} launcher is an optional extra")
    assert isinstance(_to_object([f"launcher={option}"]), CalibrateConfig)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_files_compose_and_start_with_their_command(experiment: str) -> None:
    lines = (config_dir() / "experiment" / f"{experiment}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_"
    assert lines[1] == f"# climgrad-calibrate experiment={experiment}"
    assert _to_object([f"experiment={experiment}"]).name == experiment


def test_model_and_data_configs_have_no_hydra_interpolation() -> None:
    for group in ("model", "data"):
        for path in (config_dir() / group).glob("*.yaml"):
            assert "${hydra:" not in path.read_text(), path


@pytest.mark.parametrize("option", _options("optimizer"))
def test_optimizers_and_schedules_instantiate(option: str) -> None:
    config = _to_object([f"optimizer={option}"])
    parameter = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = build_optimizer([parameter], config.optimizer)
    for schedule in ("constant", "cosine", "exponential", "step", "plateau"):
        config.optimizer.schedule.name = schedule
        build_schedule(optimizer, config.optimizer.schedule, 10)


def test_model_group_instantiates_with_every_parameter_configurable() -> None:
    config = _to_object([])
    adapter = get_adapter(config.model.name)
    adapter.check_options(config.model.options, config.model.simulate)
    model = adapter.build(config.model.options, dtype=torch.float64, device=torch.device("cpu"))
    settings = {
        name: {"value": p.value, "learn": p.learn} for name, p in config.model.params.items()
    }
    model.configure_parameters(settings)
    learnable = {name for name, p in config.model.params.items() if p.learn}
    assert learnable == {"A", "B", "D", "a0", "a2"}
    assert len(model.learnable_parameters()) == len(learnable)


def test_loss_group_rejects_unknown_variable() -> None:
    from climgrad.data import ObservedVariable, ObsSet

    one = torch.ones(2, dtype=torch.float64)
    variable = ObservedVariable(
        "t", "surface_temperature", "identity", "K", 1.0, ("lat",), one, one > 0, one / 2, one
    )
    with pytest.raises(CalibrationError, match="names no observation"):
        CalibrationLoss(ObsSet({"t": variable}), weights={"olr": 1.0})


# --- typos ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "listed"),
    [
        ("optimizer.lrr=0.1", "lr"),
        ("trainer.max_step=3", "max_steps"),
        ("model.params.D.lern=false", "learn"),
        ("seeed=3", "seed"),
        ("optimizer.schedule.nam=cosine", "name"),
    ],
)
def test_misspelt_key_lists_valid_keys(argument: str, listed: str) -> None:
    with pytest.raises(CalibrationError) as caught:
        check_overrides([argument])
    message = str(caught.value)
    assert "\n" not in message
    assert argument.split("=")[0] in message
    assert re.search(rf"\b{listed}\b", message)


def test_misspelt_group_option_lists_options() -> None:
    with pytest.raises(CalibrationError, match=r"the options are .*\bebm_ncep\b.*\btwin_ebm1d\b"):
        check_overrides(["experiment=ebm_ncepp"])
    with pytest.raises(CalibrationError, match="adam, lbfgs"):
        check_overrides(["-m", "optimizer=adam,lbgfs"])


def test_valid_overrides_pass() -> None:
    check_overrides(
        [
            "-m",
            "--cfg",
            "job",
            "experiment=twin_ebm1d",
            "optimizer.lr=3e-2,1e-2",
            "model.params.D.learn=false",
            "model.options.bands=45",
            "trainer.device=cuda",
            "hydra.run.dir=x",
            "+trainer.max_steps=3",
            "seed=0,1,2",
        ]
    )


def test_schema_rejects_typos_in_composed_yaml() -> None:
    with pytest.raises(ConfigCompositionException):
        compose_config(["optimizer.lrr=0.1"])
