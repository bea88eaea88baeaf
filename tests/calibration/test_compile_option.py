"""``trainer.compile``: the model's step compiled with ``torch.compile`` for rollouts (issue 14).

The compiled step must give the eager values and parameter gradients (float64, CPU, to 1e-12
relative) through a short :func:`~climgrad.integrate.rollout`, and a calibration with
``trainer.compile=true`` the eager run's metrics (to 1e-10). Compilation uses the ``aot_eager``
backend, which traces forward and backward as Inductor does but skips its code generation. The
EBM1D cases are ``slow``: Dynamo takes 10-15 s on two cores to trace its step (the custom
Function of the implicit diffusion, forward and backward), the gray column 3-7 s.
"""

from __future__ import annotations

import copy
import logging
import math
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.loop import run_calibration
from climgrad.integrate import rollout
from climgrad.models import COMPILE_BACKENDS, EBM1D, CompiledStep, Model, SingleColumnModel

from .conftest import FAST, compose_config

F64 = torch.float64
TOLERANCE = 1e-12
BACKEND = "aot_eager"
EBM_TIME_STEP = 4 * 86400.0  # s


def _column() -> tuple[SingleColumnModel, dict[str, Tensor]]:
    """The gray column, 12 levels, three columns at different insolations."""
    model = SingleColumnModel(12)
    state = model.initial_state(
        torch.tensor([290.0, 300.0, 295.0], dtype=F64), torch.tensor([200.0, 250.0, 300.0])
    )
    return model, state


def _ebm(requires_grad: bool) -> tuple[EBM1D, dict[str, Tensor]]:
    """EBM1D at its initial state (optionally a leaf requiring grad: one compilation)."""
    model = EBM1D()
    start = model.initial_state()["surface_temperature"].detach().requires_grad_(requires_grad)
    return model, {"surface_temperature": start}


def _rollout_values_and_gradients(
    model: Model,
    state: Mapping[str, Tensor],
    step: Callable[[dict[str, Tensor]], dict[str, Tensor]],
    steps: int = 3,
    checkpoint_every: int | None = None,
) -> list[Tensor]:
    """Final state and the gradients of a weighted sum of it w.r.t. parameters and state."""
    final, _ = rollout(
        step, state, steps, checkpoint_every=checkpoint_every, parameters=model.parameters()
    )
    outputs = [v for k, v in final.items() if v.requires_grad]
    loss = sum(
        (o * torch.linspace(0.5, 1.5, o.numel(), dtype=F64).view(o.shape)).sum() for o in outputs
    )
    wanted = [*model.learnable_parameters(), *(v for v in state.values() if v.requires_grad)]
    gradients = torch.autograd.grad(loss, wanted, allow_unused=True, materialize_grads=True)
    return [v.detach() for v in final.values()] + list(gradients)


def _assert_compiled_matches_eager(
    model: Model,
    state: Mapping[str, Tensor],
    step: Callable[[dict[str, Tensor]], dict[str, Tensor]],
    **options: Any,
) -> list[CompiledStep]:
    torch._dynamo.reset()
    eager = _rollout_values_and_gradients(model, state, step, **options)
    with model.compiled_step(BACKEND) as compiled_steps:
        assert isinstance(model.step, CompiledStep)
        compiled = _rollout_values_and_gradients(model, state, step, **options)
    assert not isinstance(model.step, CompiledStep)  # restored
    assert len(eager) == len(compiled) > len(state)
    for reference, value in zip(eager, compiled, strict=True):
        torch.testing.assert_close(value, reference, rtol=TOLERANCE, atol=0.0)
    assert compiled_steps[0].calls > 0 and compiled_steps[0].compilations >= 1
    assert compiled_steps[0].fallback is None
    return compiled_steps


def test_column_step_compiled_equals_eager(caplog: pytest.LogCaptureFixture) -> None:
    model, state = _column()
    with caplog.at_level(logging.INFO, logger="climgrad.models.base"):
        _assert_compiled_matches_eager(model, state, lambda s: model.step(s))
    assert any("compiled SingleColumnModel.step in" in r.getMessage() for r in caplog.records)


@pytest.mark.slow  # 13-16 s: Dynamo traces EBM1D's implicit-diffusion Function slowly
def test_ebm1d_step_compiled_equals_eager() -> None:
    # A state requiring grad from the first step on: one compilation instead of two.
    model, state = _ebm(requires_grad=True)
    (compiled,) = _assert_compiled_matches_eager(
        model, state, lambda s: model.step(s, EBM_TIME_STEP)
    )
    assert compiled.compilations == 1


@pytest.mark.slow
def test_ebm1d_checkpointed_rollout_through_compiled_step() -> None:
    # Segments run the step without grad forward and with grad in the backward: two graphs.
    model, state = _ebm(requires_grad=False)
    _assert_compiled_matches_eager(
        model, state, lambda s: model.step(s, EBM_TIME_STEP), steps=4, checkpoint_every=2
    )


@pytest.mark.slow
def test_ebm1d_seasonal_cycle_with_inductor() -> None:
    """The default backend, through a model method that rolls out ``self.step``."""
    model = EBM1D()
    torch._dynamo.reset()
    eager = model.seasonal_cycle(years=1, steps_per_year=6)
    with model.compiled_step("inductor") as (compiled,):
        value = model.seasonal_cycle(years=1, steps_per_year=6)
    assert compiled.calls == 6 and compiled.fallback is None
    torch.testing.assert_close(value, eager, rtol=TOLERANCE, atol=0.0)


def test_compile_step_reaches_sub_models_and_restores() -> None:
    class Pair(Model):
        def __init__(self) -> None:
            super().__init__()
            self.inner = EBM1D()

    model = Pair()
    steps = model.compile_step(BACKEND)
    assert [step.name for step in steps] == ["Pair.step", "EBM1D.step"]
    assert model.inner.step is steps[1]
    model.restore_step()
    assert "step" not in vars(model) and "step" not in vars(model.inner)


def test_compiled_step_copies_and_pickles_without_compiling() -> None:
    # Parametrized models (EBM1D) deep-copy but do not pickle (torch's rule); a plain one does.
    ebm, plain = EBM1D(), Model()
    ebm.compile_step(BACKEND)
    plain.compile_step(BACKEND)
    for copied in (copy.deepcopy(ebm), pickle.loads(pickle.dumps(plain))):
        assert isinstance(copied.step, CompiledStep)
        assert copied.step.model is copied and copied.step.calls == 0


def test_a_step_that_does_not_compile_runs_eagerly(caplog: pytest.LogCaptureFixture) -> None:
    model, state = _ebm(requires_grad=False)
    (compiled,) = model.compile_step(BACKEND)

    def failing(*args: Any, **kwargs: Any) -> dict[str, Tensor]:
        raise torch._dynamo.exc.TorchDynamoException("backend failed\nmore detail")

    compiled._compiled = failing
    with caplog.at_level(logging.WARNING, logger="climgrad.models.base"):
        first = model.step(state, EBM_TIME_STEP)
        model.step(first, EBM_TIME_STEP)
    torch.testing.assert_close(
        first["surface_temperature"],
        EBM1D.step(model, state, EBM_TIME_STEP)["surface_temperature"],
        rtol=0.0,
        atol=0.0,
    )
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "torch.compile not applied to EBM1D.step (TorchDynamoException: backend failed); it "
        "runs eagerly."
    ]
    assert compiled.calls == 2 and compiled.fallback is not None


def test_unknown_backend_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="use one of inductor, aot_eager, eager") as error:
        EBM1D().compile_step("fast")
    assert "\n" not in str(error.value)
    assert COMPILE_BACKENDS == ("inductor", "aot_eager", "eager")


# --------------------------------------------------------------------------------------------------
# The calibration option.

#: The column twin, 12 levels and a short spin-up (compiled: the cold start's spin-up).
COLUMN_TWIN = [
    "experiment=twin_column",
    *FAST,
    "trainer.max_steps=2",
    "model.options.levels=12",
    "model.simulate.spin_up_steps=20",
    "trainer.device=cpu",
    "logger.figure_every=0",
]
COMPARED = ("loss", "rmse", "best_loss", "parameters", "derived", "steps", "stop_reason")


def _run(tmp_path: Path, overrides: list[str], name: str) -> dict[str, Any]:
    return run_calibration(compose_config(overrides), tmp_path / name, overrides=overrides)


def _assert_same_metrics(got: Any, expected: Any, where: str = "metrics") -> None:
    if isinstance(expected, dict):
        assert set(got) == set(expected), where
        for key, value in expected.items():
            _assert_same_metrics(got[key], value, f"{where}.{key}")
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(got), where
    elif isinstance(expected, float):
        assert math.isclose(got, expected, rel_tol=1e-10, abs_tol=1e-12), where
    else:
        assert got == expected, where


def test_trainer_compile_gives_the_eager_metrics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch._dynamo.reset()
    eager = _run(tmp_path, COLUMN_TWIN, "eager")
    compiled_overrides = [
        *COLUMN_TWIN,
        "trainer.compile=true",
        f"trainer.compile_backend={BACKEND}",
    ]
    with caplog.at_level(logging.INFO):
        compiled = _run(tmp_path, compiled_overrides, "compiled")
    for key in COMPARED:
        _assert_same_metrics(compiled[key], eager[key], key)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("compiled SiteColumnModel.step in ") for line in lines), lines


def test_trainer_compile_without_rollouts_says_it_had_no_effect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = ["experiment=twin_ebm1d", *FAST, "trainer.max_steps=2"]
    eager = _run(tmp_path, overrides, "eager")
    with caplog.at_level(logging.INFO):
        compiled = _run(tmp_path, [*overrides, "trainer.compile=true"], "compiled")
    for key in COMPARED:
        _assert_same_metrics(compiled[key], eager[key], key)
    assert any(
        r.getMessage().startswith("trainer.compile had no effect: EBM1D.step was never called")
        for r in caplog.records
    )


def test_bad_backend_is_a_one_line_error(tmp_path: Path) -> None:
    overrides = ["experiment=twin_ebm1d", *FAST, "trainer.compile_backend=fast"]
    with pytest.raises(CalibrationError) as error:
        _run(tmp_path, overrides, "bad")
    message = str(error.value)
    assert "\n" not in message
    assert "trainer.compile_backend='fast' is unknown; use one of inductor, aot_eager, eager" in (
        message
    )
    assert not (tmp_path / "bad").exists()
