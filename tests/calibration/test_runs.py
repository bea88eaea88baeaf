"""Runs of the app: every experiment a few steps, outputs, TensorBoard tags, non-finite steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import xarray as xr
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from climgrad.calibration.adapters import ADAPTERS, EBM1DAdapter, register_adapter
from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.loop import run_calibration
from climgrad.data import ObservationError
from climgrad.models.base import Model

from .conftest import FAST, RUNNABLE_EXPERIMENTS, compose_config

PARAMETERS = ("A", "B", "D", "a0", "a2")


def _run(tmp_path: Path, overrides: list[str], name: str = "run") -> tuple[Path, dict[str, Any]]:
    run_dir = tmp_path / name
    metrics = run_calibration(compose_config(overrides), run_dir, overrides=overrides)
    return run_dir, metrics


@pytest.mark.parametrize("experiment", RUNNABLE_EXPERIMENTS)
def test_every_experiment_runs_a_few_steps(tmp_path: Path, experiment: str) -> None:
    overrides = [f"experiment={experiment}", *FAST, "trainer.device=cpu"]
    run_dir, metrics = _run(tmp_path, overrides)
    assert metrics["steps"] == 3 and metrics["stop_reason"] == "max_steps"
    assert metrics["loss"]["total"] < float("inf")
    for name in (
        "params.nc",
        "fit.nc",
        "metrics.json",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (run_dir / name).is_file(), name
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["steps"] == 3 and on_disk["device"] == "cpu"
    assert set(on_disk["rmse"]) == set(on_disk["loss"]) - {"total", "prior"}


def test_outputs_are_self_describing(tmp_path: Path) -> None:
    overrides = ["experiment=twin_ebm1d", *FAST, "optimizer.lr=0.05"]
    run_dir, metrics = _run(tmp_path, overrides)
    with xr.open_dataset(run_dir / "params.nc") as params:
        assert params.attrs["Conventions"].startswith("CF-")
        assert params.attrs["source"].startswith("climgrad ")
        assert "optimizer.lr=0.05" in params.attrs["overrides"]
        assert "optimizer.lr=0.05" in params.attrs["history"]
        assert "name: twin_ebm1d" in params.attrs["config"]
        assert params["A"].attrs["units"] == "W m-2"
        assert params["a0"].attrs["valid_min"] == 0.0 and params["a0"].attrs["valid_max"] == 1.0
        assert params["A"].attrs["long_name"] == "OLR at 0 degC"
        assert params["A"].attrs["prior"] == "normal(210, 20)"  # conf/model/ebm1d.yaml
        assert params["A"].attrs["initial_value"] == pytest.approx(210.0)
        assert float(params["A"]) == pytest.approx(metrics["parameters"]["A"])
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["step"] == 3
    assert "optimizer:" in checkpoint["config"]
    assert set(PARAMETERS) <= set(checkpoint["parameters"])
    with xr.open_dataset(run_dir / "fit.nc") as fit:
        assert "model_surface_temperature" in fit and "surface_temperature_error" in fit


def test_tensorboard_holds_the_expected_tags(tmp_path: Path) -> None:
    overrides = ["experiment=twin_ebm1d", *FAST, "seed=7"]
    run_dir, _ = _run(tmp_path, overrides)
    events = list((run_dir / "tb").iterdir())
    assert len(events) == 1 and events[0].name.startswith("events.out.tfevents")
    accumulator = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    expected = {"loss/total", "loss/prior", "grad_norm/total", "optimizer/lr"}
    for variable in ("surface_temperature", "outgoing_longwave", "reflected_shortwave"):
        expected |= {f"loss/{variable}", f"final/rmse_{variable}", f"final/loss_{variable}"}
    expected |= {f"param/{name}" for name in (*PARAMETERS, "ai", "Tf", "S0")}
    expected |= {f"grad_norm/{name}" for name in PARAMETERS}
    assert expected <= tags, expected - tags
    assert "grad_norm/ai" not in tags  # fixed parameters have no gradient
    assert [e.step for e in accumulator.Scalars("loss/total")] == [0, 1, 2]
    a_values = [e.value for e in accumulator.Scalars("param/A")]
    assert a_values[0] == pytest.approx(210.0)
    # hparams live in the same run as the scalars (the HPARAMS tab compares sweeps)
    hparams = accumulator.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in hparams
    assert b"seed" in hparams["_hparams_/session_start_info"]


def test_float32_runs(tmp_path: Path) -> None:
    _, metrics = _run(tmp_path, ["experiment=twin_ebm1d", *FAST, "trainer.dtype=float32"])
    assert metrics["dtype"] == "float32" and metrics["steps"] == 3


TRUTHS = {
    "twin_ebm1d": {"A": 203.3, "B": 2.09, "D": 0.649, "a0": 0.31, "a2": 0.06},
    "twin_two_layer": {
        "feedback": 1.3,
        "heat_exchange": 0.6,
        "heat_capacity": 2.8e8,
        "aerosol_forcing_scale": 0.8,
    },
}


@pytest.mark.parametrize("experiment", sorted(TRUTHS))
def test_lbfgs_twins_recover_the_truth(tmp_path: Path, experiment: str) -> None:
    overrides = [f"experiment={experiment}", "optimizer=lbfgs", *FAST]
    _, metrics = _run(tmp_path, overrides)
    for name, value in TRUTHS[experiment].items():
        assert metrics["parameters"][name] == pytest.approx(value, rel=1e-4), name
    assert metrics["loss"]["total"] < 1e-8


def test_two_layer_reports_ecs_and_tcr(tmp_path: Path) -> None:
    overrides = ["experiment=two_layer_hadcrut", *FAST, "trainer.max_steps=1"]
    _, metrics = _run(tmp_path, overrides)
    derived = metrics["derived"]
    ecs = derived["equilibrium_climate_sensitivity_K"]
    assert ecs == pytest.approx(3.93 / metrics["parameters"]["feedback"], rel=1e-9)
    assert 0 < derived["transient_climate_response_K"] < ecs
    assert set(metrics["rmse"]) == {"surface_temperature_anomaly", "energy_inventory"}


def test_bad_data_dir_is_one_line_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ObservationError) as caught:
        _run(tmp_path, [*FAST, "paths.data_dir=/nonexistent"])
    assert "\n" not in str(caught.value) and "Fix:" in str(caught.value)
    assert "paths.data_dir" in str(caught.value)
    assert not (tmp_path / "run").exists()


def test_unknown_variable_and_parameter_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="surface_temperature, outgoing_longwave"):
        _run(tmp_path, [*FAST, "data.variables=[olr]"])
    with pytest.raises(CalibrationError, match=r"model\.params"):
        _run(tmp_path, ["experiment=twin_ebm1d", *FAST, "model.params.A.value=-3"])
    assert not (tmp_path / "run").exists()


@register_adapter
class _FlakyAdapter(EBM1DAdapter):
    """EBM1D whose outputs turn NaN from the 4th simulation on (a test double)."""

    name: ClassVar[str] = "flaky_ebm1d"
    calls: ClassVar[int] = 0

    def simulate(self, model: Model, options: Any) -> dict[str, torch.Tensor]:
        outputs = super().simulate(model, options)
        type(self).calls += 1
        if type(self).calls > 3:
            outputs["outgoing_longwave_radiation"] = outputs["outgoing_longwave_radiation"] * float(
                "nan"
            )
        return outputs


def test_nonfinite_steps_are_skipped_then_stop_naming_the_variable(tmp_path: Path) -> None:
    _FlakyAdapter.calls = 0
    overrides = [
        "experiment=twin_ebm1d",
        "model.name=flaky_ebm1d",
        "trainer.max_steps=20",
        "trainer.progress=false",
        "trainer.max_nonfinite=3",
        "trainer.checkpoint_every=1",
    ]
    # Simulations: the twin's truth, the output check, step 0 (good), then NaN from step 1 on.
    match = "started at step 1: non-finite loss in outgoing_longwave"
    with pytest.raises(CalibrationError, match=match) as caught:
        _run(tmp_path, overrides)
    assert "3 non-finite steps in a row" in str(caught.value)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 1  # the last good state, not overwritten at the stop
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stop_reason"] == "nonfinite" and metrics["skipped_steps"] == 3
    assert "flaky_ebm1d" in ADAPTERS


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("experiment", ["twin_ebm1d", "twin_two_layer"])
def test_cuda_run_matches_cpu(tmp_path: Path, experiment: str) -> None:
    common = [f"experiment={experiment}", *FAST]
    _, on_cpu = _run(tmp_path, [*common, "trainer.device=cpu"], "cpu")
    _, on_gpu = _run(tmp_path, [*common, "trainer.device=cuda"], "gpu")
    assert on_gpu["device"].startswith("cuda")
    for name, value in on_cpu["parameters"].items():
        assert on_gpu["parameters"][name] == pytest.approx(value, rel=1e-8), name


def test_trainer_threads_applies_to_the_run_and_is_restored(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    seen: list[int] = []
    original = EBM1DAdapter.simulate

    def spying(self: EBM1DAdapter, model: Model, options: Any) -> Any:
        seen.append(torch.get_num_threads())
        return original(self, model, options)

    EBM1DAdapter.simulate = spying  # type: ignore[method-assign]
    try:
        _, metrics = _run(tmp_path, ["experiment=twin_ebm1d", *FAST, "trainer.threads=1"])
    finally:
        EBM1DAdapter.simulate = original  # type: ignore[method-assign]
    assert seen and set(seen) == {1} and metrics["threads"] == 1
    assert torch.get_num_threads() == before
    with pytest.raises(CalibrationError, match=r"trainer.threads must be >= 1"):
        _run(tmp_path, ["experiment=twin_ebm1d", *FAST, "trainer.threads=0"], "bad")
    assert not (tmp_path / "bad").exists()
