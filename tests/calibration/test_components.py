"""Loss, checkpoints, resume paths and outputs, without running the loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from climgrad.calibration.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.loss import CalibrationLoss
from climgrad.calibration.outputs import summary_table
from climgrad.data import ObservedVariable, ObsSet
from climgrad.models.ebm1d import EBM1D


def _variable(name: str, output: str, values: torch.Tensor, error: float) -> ObservedVariable:
    n = values.shape[0]
    return ObservedVariable(
        name=name,
        model_output=output,
        operator="identity",
        units="K",
        weight=1.0,
        dims=("lat",),
        values=values,
        mask=torch.ones(n, dtype=torch.bool),
        weights=torch.full((n,), 1.0 / n, dtype=values.dtype),
        error=torch.full((n,), error, dtype=values.dtype),
    )


def _observations() -> ObsSet:
    temperature = torch.tensor([250.0, 280.0, 300.0], dtype=torch.float64)
    olr = torch.tensor([180.0, 230.0, 260.0], dtype=torch.float64)
    return ObsSet(
        {
            "t": _variable("t", "surface_temperature", temperature, 2.0),
            "olr": _variable("olr", "outgoing_longwave_radiation", olr, 5.0),
        }
    )


def test_loss_is_the_weighted_chi_square_and_differentiable() -> None:
    observations = _observations()
    loss = CalibrationLoss(observations, prior_weight=1.0, weights={"olr": 3.0})
    model = EBM1D(bands=3)
    prediction = {
        "surface_temperature": observations["t"].values + 2.0,
        "outgoing_longwave_radiation": (observations["olr"].values - 5.0).requires_grad_(True),
    }
    terms = loss(model, prediction)
    assert float(terms.misfit["t"]) == pytest.approx(1.0)  # residual one sigma everywhere
    assert float(terms.misfit["olr"].detach()) == pytest.approx(3.0)
    assert float(terms.total.detach()) == pytest.approx(4.0)
    assert loss.rmse(prediction) == pytest.approx({"t": 2.0, "olr": 5.0})
    (gradient,) = torch.autograd.grad(terms.total, prediction["outgoing_longwave_radiation"])
    # d/dy of 3 * mean(((y - o)/5)^2) = 3 * 2 (y - o) / (25 n)
    expected = torch.full((3,), -3.0 * 2.0 * 5.0 / (25.0 * 3.0), dtype=torch.float64)
    assert torch.allclose(gradient, expected)


def test_loss_names_missing_outputs_and_shape_mismatches() -> None:
    loss = CalibrationLoss(_observations())
    with pytest.raises(CalibrationError, match=r"outgoing_longwave_radiation.*surface_temperature"):
        loss.check_outputs({"surface_temperature": torch.zeros(3)})
    with pytest.raises(CalibrationError, match="shape"):
        loss.check_outputs(
            {"surface_temperature": torch.zeros(4), "outgoing_longwave_radiation": torch.zeros(3)}
        )


@settings(max_examples=25, deadline=None)
@given(st.floats(-50.0, 50.0), st.floats(0.1, 10.0))
def test_misfit_is_squared_offset_over_error(offset: float, error: float) -> None:
    values = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    observations = ObsSet({"t": _variable("t", "surface_temperature", values, error)})
    terms = CalibrationLoss(observations, prior_weight=0.0)(
        EBM1D(bands=3), {"surface_temperature": values + offset}
    )
    assert float(terms.total) == pytest.approx((offset / error) ** 2, rel=1e-12, abs=1e-12)


def test_checkpoint_round_trip_is_weights_only_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    payload = {"step": 3, "model": {"x": torch.arange(3.0)}, "config": "a: 1\n", "flag": True}
    save_checkpoint(path, payload)
    save_checkpoint(path, {**payload, "step": 4})
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary left
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 4 and torch.equal(loaded["model"]["x"], torch.arange(3.0))
    assert load_checkpoint(path)["config"] == "a: 1\n"


def test_foreign_or_missing_checkpoints_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(CalibrationError, match="not a climgrad checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CalibrationError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")


def test_resume_paths(tmp_path: Path) -> None:
    run, old = tmp_path / "new", tmp_path / "old"
    assert resolve_resume(False, run, tmp_path) is None
    with pytest.raises(CalibrationError, match=r"hydra\.run\.dir"):
        resolve_resume(True, run, tmp_path)
    checkpoint = save_checkpoint(old / "checkpoints" / "last.pt", {"step": 1})
    assert resolve_resume("old", run, tmp_path) == checkpoint  # a run dir, relative to launch
    assert resolve_resume(str(checkpoint), run, tmp_path) == checkpoint
    assert resolve_resume(True, old, tmp_path) == checkpoint
    with pytest.raises(CalibrationError, match="no checkpoint"):
        resolve_resume("elsewhere", run, tmp_path)


def test_summary_table_lists_initial_and_calibrated_values() -> None:
    model = EBM1D(bands=4)
    initial = model.physical_parameters()
    model.configure_parameters({"A": 203.3})
    table = summary_table(model, initial).splitlines()
    assert table[0].split() == ["parameter", "initial", "calibrated", "units", "bounds", "learned"]
    row = next(line.split() for line in table if line.startswith("A "))
    assert row[:4] == ["A", "210", "203.3", "W"]
