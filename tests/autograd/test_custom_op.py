"""Tests of climgrad.autograd.custom_op: NumPy schemes as torch.library custom operators.

``torch.library.opcheck`` checks the registration (schema, autograd, fake implementation, AOT
dispatch with dynamic shapes); the gradients must equal those of :func:`external` (same
machinery, same calls), and ``torch.compile(fullgraph=True)`` must capture the torch code around
the scheme in one graph.
"""

from __future__ import annotations

import doctest
import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

from climgrad.autograd import ExternalFunctionError, ExternalOp, external, external_op
from climgrad.autograd import custom_op as custom_op_module
from climgrad.autograd import tracing as tracing_module

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "examples"))
from _schemes import SIGMA, outgoing_longwave, sample_columns

F64 = torch.float64
OPCHECKS = (
    "test_schema",
    "test_autograd_registration",
    "test_faketensor",
    "test_aot_dispatch_dynamic",
)


def planck(temperature: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two outputs: emission ``σT⁴`` and its slope ``4σT³`` (example c of scripts/examples)."""
    return SIGMA * temperature**4, 4 * SIGMA * temperature**3


def planck_vjp(primals: tuple[np.ndarray], cotangents: tuple[np.ndarray, np.ndarray]) -> tuple:
    (temperature,) = primals
    emission_bar, slope_bar = cotangents
    return (emission_bar * 4 * SIGMA * temperature**3 + slope_bar * 12 * SIGMA * temperature**2,)


def moments(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A dense scheme: two weighted moments of all the values, shape ``(2,)``."""
    return np.array([(values * weights).sum(), (values**2 * weights).sum()])


def column_inputs(columns: int = 3) -> tuple[Tensor, Tensor]:
    temperature = torch.tensor(sample_columns(columns), dtype=F64, requires_grad=True)
    return temperature, torch.tensor(1.5, dtype=F64, requires_grad=True)


@functools.cache
def olr_op() -> ExternalOp:
    temperature, optical_depth = column_inputs()
    return external_op(
        outgoing_longwave,
        "climgrad_test::olr",
        structure="column",
        example_inputs=(temperature.detach(), optical_depth.detach()),
    )


@functools.cache
def planck_op() -> ExternalOp:
    return external_op(
        planck,
        "climgrad_test::planck",
        structure="elementwise",
        vjp=planck_vjp,
        outputs=lambda temperature: [temperature.shape, temperature.shape],
    )


@functools.cache
def moments_op(method: str) -> ExternalOp:
    values, weights = torch.ones(4, dtype=F64), torch.ones(4, dtype=F64)
    return external_op(
        moments,
        f"climgrad_test::moments_{method}",
        method=method,  # type: ignore[arg-type]
        example_inputs=(values, weights),
    )


def _leaves(*tensors: Tensor) -> list[Tensor]:
    return [t.detach().clone().requires_grad_() for t in tensors]


def _gradients(
    function: Callable[..., Any], inputs: Sequence[Tensor]
) -> tuple[list[Tensor], tuple[Tensor, ...]]:
    result = function(*inputs)
    outputs = list(result) if isinstance(result, tuple) else [result]
    loss = torch.stack([(o * o.detach().abs().add(1).log()).sum() for o in outputs]).sum()
    return [o.detach() for o in outputs], torch.autograd.grad(loss, list(inputs))


CASES: dict[str, tuple[Callable[[], ExternalOp], Callable[[], list[Tensor]], dict[str, Any]]] = {
    "column (probe)": (olr_op, lambda: _leaves(*column_inputs()), {"structure": "column"}),
    "elementwise, two outputs, vjp (declared)": (
        planck_op,
        lambda: _leaves(torch.linspace(200.0, 320.0, 5, dtype=F64)),
        {"structure": "elementwise", "vjp": planck_vjp},
    ),
    "dense, forward differences (probe)": (
        lambda: moments_op("forward"),
        lambda: _leaves(
            torch.linspace(1.0, 2.0, 4, dtype=F64), torch.linspace(0.1, 0.4, 4, dtype=F64)
        ),
        {"method": "forward"},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_opcheck_passes(case: str) -> None:
    make_op, make_inputs, _ = CASES[case]
    result = torch.library.opcheck(make_op().custom_op, (make_inputs(),), test_utils=OPCHECKS)
    assert result == dict.fromkeys(OPCHECKS, "SUCCESS")


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_and_calls_equal_the_external_path(case: str) -> None:
    make_op, make_inputs, options = CASES[case]
    op = make_op()
    reference = external(op.fn, **options)
    op.calls.reset()
    op_outputs, op_gradients = _gradients(op, make_inputs())
    reference_outputs, reference_gradients = _gradients(reference, make_inputs())
    for got, expected in zip(
        [*op_outputs, *op_gradients], [*reference_outputs, *reference_gradients]
    ):
        torch.testing.assert_close(got, expected, rtol=0.0, atol=0.0)
    assert op.calls == reference.calls


@pytest.mark.parametrize("case", list(CASES))
def test_compiles_fullgraph_with_the_same_values_and_gradients(case: str) -> None:
    make_op, make_inputs, options = CASES[case]
    op = make_op()
    reference = external(op.fn, **options)

    def model(scheme: Callable[..., Any]) -> Callable[..., Any]:
        # Torch code on both sides of the scheme, so the graph has something to capture.
        def run(first: Tensor, *rest: Tensor) -> Any:
            return scheme(first * 1.0001 - 0.01, *rest)

        return run

    torch._dynamo.reset()
    compiled = torch.compile(model(op), fullgraph=True, backend="aot_eager")
    got_outputs, got_gradients = _gradients(compiled, make_inputs())
    expected_outputs, expected_gradients = _gradients(model(reference), make_inputs())
    for got, expected in zip(
        [*got_outputs, *got_gradients], [*expected_outputs, *expected_gradients]
    ):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_column_rule_generalises_the_probe_to_other_batches() -> None:
    op = olr_op()
    temperature = torch.tensor(sample_columns(7), dtype=F64)
    assert op.output_shapes([temperature, torch.tensor(1.0, dtype=F64)]) == [(7, 1)]
    assert op(temperature, torch.tensor(1.0, dtype=F64)).shape == (7, 1)


def test_only_a_gradient_that_is_needed_costs_calls() -> None:
    op = olr_op()
    temperature, optical_depth = column_inputs()
    (gradient,) = torch.autograd.grad(op(temperature.detach(), optical_depth).sum(), optical_depth)
    assert op.calls.last_backward == 2  # the scalar only: one central difference
    assert gradient.shape == ()


def test_declared_outputs_that_disagree_with_the_scheme_raise() -> None:
    op = external_op(
        outgoing_longwave,
        "climgrad_test::olr_wrong_rule",
        structure="column",
        outputs=lambda temperature, optical_depth: (*temperature.shape[:-1], 2),
    )
    with pytest.raises(ExternalFunctionError, match=r"shapes \[\(3, 1\)\].*gives \[\(3, 2\)\]"):
        op(*column_inputs())


def test_dense_rule_rejects_inputs_of_other_shapes() -> None:
    op = moments_op("forward")
    with pytest.raises(ExternalFunctionError, match="Declare how output shapes follow"):
        op(torch.rand(5, dtype=F64), torch.rand(5, dtype=F64))


def test_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="namespace::name"):
        external_op(planck, "no_namespace", outputs=lambda t: [t.shape, t.shape])
    with pytest.raises(ValueError, match=r"exactly one of outputs= \(.*\) and example_inputs="):
        external_op(planck, "climgrad_test::neither")
    op = planck_op()
    with pytest.raises(ExternalFunctionError, match=r"tensors only.*functools\.partial"):
        op(300.0)
    with pytest.raises(ExternalFunctionError, match=r"float16.*\.float\(\) or \.double\(\)"):
        op(torch.ones(2, dtype=torch.float16))


def test_forward_mode_is_refused_with_the_alternative() -> None:
    op = planck_op()
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(torch.ones(2, dtype=F64), torch.ones(2, dtype=F64))
        with pytest.raises(NotImplementedError, match="external\\(\\) for forward-mode"):
            op(dual)


def log(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.log(x)


def test_non_finite_outputs_raise_as_in_external() -> None:
    op = external_op(log, "climgrad_test::log", structure="elementwise", outputs=lambda x: x.shape)
    with pytest.raises(ExternalFunctionError, match="log returned non-finite values in output 0"):
        op(torch.tensor([1.0, -1.0], dtype=F64))


def test_outputs_never_alias_inputs() -> None:
    op = external_op(
        lambda x: x, "climgrad_test::identity", structure="elementwise", outputs=lambda x: x.shape
    )
    x = torch.rand(3, dtype=F64)
    y = op(x)
    assert y.data_ptr() != x.data_ptr()
    torch.testing.assert_close(y, x)


def test_repr_names_the_operator() -> None:
    assert repr(planck_op()).startswith("ExternalOp('climgrad_test::planck', planck,")


@pytest.mark.parametrize("module", [custom_op_module, tracing_module])
def test_doctests(module: Any) -> None:
    failures, _ = doctest.testmod(module, verbose=False)
    assert failures == 0
