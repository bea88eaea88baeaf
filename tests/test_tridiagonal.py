"""Tests of climgrad.tridiagonal: the Thomas solve and its adjoint backward."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import climgrad.tridiagonal as tridiagonal_module
from climgrad.autograd.verify import check_gradients, taylor_test
from climgrad.tridiagonal import (
    _accumulate_conductance_gradient,
    factor_levels_first,
    solve_factored_levels_first,
    solve_factored_transposed_levels_first,
    solve_tridiagonal,
    thomas_solve_kernel,
    tridiagonal_matvec,
)

DOUBLE = torch.float64
SOURCE = Path(__file__).resolve().parents[1] / "src" / "climgrad" / "_tridiagonal.c"
NO_EXTENSION = (
    "the C extension climgrad._tridiagonal is not installed (no C compiler when climgrad was "
    "installed, or an install older than the extension: rerun `pip install -e .`); the eager "
    "torch sweeps serve"
)


def _dominant_system(
    batch: tuple[int, ...], n: int, seed: int, dtype: torch.dtype = DOUBLE
) -> tuple[torch.Tensor, ...]:
    """A strictly diagonally dominant system with random signs (not just diffusion matrices)."""
    generator = torch.Generator().manual_seed(seed)
    lower = torch.randn(*batch, n, generator=generator, dtype=dtype)
    upper = torch.randn(*batch, n, generator=generator, dtype=dtype)
    sign = torch.where(torch.rand(*batch, n, generator=generator) < 0.5, -1.0, 1.0).to(dtype)
    diag = sign * (lower.abs() + upper.abs() + 0.5 + torch.rand(*batch, n, generator=generator))
    rhs = torch.randn(*batch, n, generator=generator, dtype=dtype)
    return lower, diag, upper, rhs


def _dense(lower: torch.Tensor, diag: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    return (
        torch.diag_embed(diag)
        + torch.diag_embed(lower[..., 1:], offset=-1)
        + torch.diag_embed(upper[..., :-1], offset=1)
    )


def test_docstring_examples_run() -> None:
    failures, _ = doctest.testmod(tridiagonal_module, verbose=False)
    assert failures == 0


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=9),
    batch=st.lists(st.integers(min_value=1, max_value=3), max_size=2).map(tuple),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_matches_dense_solve(n: int, batch: tuple[int, ...], seed: int) -> None:
    lower, diag, upper, rhs = _dominant_system(batch, n, seed)
    solution = solve_tridiagonal(lower, diag, upper, rhs)
    expected = torch.linalg.solve(_dense(lower, diag, upper), rhs)
    torch.testing.assert_close(solution, expected, rtol=1e-12, atol=1e-12)
    residual = tridiagonal_matvec(lower, diag, upper, solution) - rhs
    assert residual.abs().max() < 1e-12


def test_ignored_entries_do_not_matter_and_get_zero_gradient() -> None:
    lower, diag, upper, rhs = _dominant_system((2,), 5, seed=1)
    lower.requires_grad_(True)
    upper.requires_grad_(True)
    other_lower = lower.detach().clone()
    other_lower[..., 0] = 123.0
    other_upper = upper.detach().clone()
    other_upper[..., -1] = -77.0
    solution = solve_tridiagonal(lower, diag, upper, rhs)
    torch.testing.assert_close(solution, solve_tridiagonal(other_lower, diag, other_upper, rhs))
    grad_lower, grad_upper = torch.autograd.grad(solution.sum(), (lower, upper))
    assert torch.all(grad_lower[..., 0] == 0)
    assert torch.all(grad_upper[..., -1] == 0)


def test_broadcasting_one_matrix_many_right_hand_sides() -> None:
    lower, diag, upper, _ = _dominant_system((), 6, seed=2)
    rhs = torch.randn(4, 3, 6, dtype=DOUBLE)
    solution = solve_tridiagonal(lower, diag, upper, rhs)
    assert solution.shape == (4, 3, 6)
    torch.testing.assert_close(solution[2, 1], solve_tridiagonal(lower, diag, upper, rhs[2, 1]))


def test_gradcheck_with_broadcasting() -> None:
    lower, diag, upper, _ = _dominant_system((), 5, seed=3)
    inputs = (
        lower.expand(3, 5).clone().requires_grad_(True),
        diag.requires_grad_(True),
        upper.unsqueeze(0).requires_grad_(True),
        torch.randn(2, 3, 5, dtype=DOUBLE, requires_grad=True),
    )
    assert torch.autograd.gradcheck(solve_tridiagonal, inputs)


def test_custom_backward_matches_autograd_through_kernel() -> None:
    lower, diag, upper, rhs = (t.requires_grad_(True) for t in _dominant_system((3,), 7, seed=4))
    cotangent = torch.randn(3, 7, dtype=DOUBLE)
    custom = torch.autograd.grad(
        solve_tridiagonal(lower, diag, upper, rhs), (lower, diag, upper, rhs), cotangent
    )
    reference = torch.autograd.grad(
        thomas_solve_kernel(lower, diag, upper, rhs), (lower, diag, upper, rhs), cotangent
    )
    for got, expected in zip(custom, reference, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_adjoint_matches_analytic_inverse_transpose() -> None:
    """grad_rhs = A^{-T} g and grad_A = -A^{-T} g x^T on the diagonals, from dense algebra."""
    lower, diag, upper, rhs = _dominant_system((), 6, seed=5)
    inputs = tuple(t.clone().requires_grad_(True) for t in (lower, diag, upper, rhs))
    cotangent = torch.randn(6, dtype=DOUBLE)
    solution = solve_tridiagonal(*inputs)
    grads = torch.autograd.grad(solution, inputs, cotangent)
    dense = _dense(lower, diag, upper)
    adjoint = torch.linalg.solve(dense.T, cotangent)
    outer = -torch.outer(adjoint, solution.detach())
    torch.testing.assert_close(grads[3], adjoint)
    torch.testing.assert_close(grads[1], torch.diagonal(outer))
    torch.testing.assert_close(grads[0][1:], torch.diagonal(outer, offset=-1))
    torch.testing.assert_close(grads[2][:-1], torch.diagonal(outer, offset=1))


def test_taylor_remainder_is_second_order() -> None:
    lower, diag, upper, rhs = _dominant_system((2,), 6, seed=6)
    result = taylor_test(solve_tridiagonal, (lower, diag, upper, rhs))
    assert result.passed, str(result)


def test_check_gradients_report_passes() -> None:
    inputs = tuple(t.requires_grad_(True) for t in _dominant_system((2,), 5, seed=11))
    report = check_gradients(solve_tridiagonal, inputs, names=["lower", "diag", "upper", "rhs"])
    assert report.passed, str(report)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_sweeps_match_eager_sweeps(dtype: torch.dtype) -> None:
    """The compiled C sweeps (used on the non-differentiable out= paths) equal the torch ones."""
    if not tridiagonal_module.native_available():
        pytest.skip(NO_EXTENSION)
    lower, diag, upper, rhs = (
        t.movedim(-1, 0).contiguous() for t in _dominant_system((37,), 9, seed=12, dtype=dtype)
    )
    solution = torch.randn_like(rhs)
    weight = torch.rand_like(rhs) + 0.5
    results = {}
    for native in (True, False):
        tridiagonal_module.set_native_enabled(native)
        try:
            factors = (torch.empty_like(diag), torch.empty_like(diag))
            factor_levels_first(lower, diag, upper, out=factors)
            forward = solve_factored_levels_first(lower, *factors, rhs, out=torch.empty_like(rhs))
            in_place = rhs.clone()
            solve_factored_transposed_levels_first(lower, *factors, in_place, out=in_place)
            accumulated = torch.ones_like(rhs[1:])
            _accumulate_conductance_gradient(rhs, solution, weight, accumulated)
            results[native] = (*factors, forward, in_place, accumulated)
        finally:
            tridiagonal_module.set_native_enabled(True)
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {}
    for native_value, eager_value in zip(results[True], results[False], strict=True):
        torch.testing.assert_close(native_value, eager_value, **tolerance)
    reference = factor_levels_first(lower, diag, upper)
    torch.testing.assert_close(results[True][0], reference[0], **tolerance)


def test_extension_module_is_importable_when_built() -> None:
    """The install builds climgrad._tridiagonal (optional: skipped where it did not)."""
    if importlib.util.find_spec("climgrad._tridiagonal") is None:
        pytest.skip(NO_EXTENSION)
    extension = importlib.import_module("climgrad._tridiagonal")

    for name in ("factor", "solve", "solve_transposed", "accumulate"):
        for suffix in ("f64", "f32"):
            assert callable(getattr(extension, f"{name}_{suffix}"))
    assert tridiagonal_module.native_library_path() == Path(extension.__file__)
    if os.environ.get("CLIMGRAD_NATIVE", "1") != "0":
        assert tridiagonal_module.native_available()
    with pytest.raises(TypeError, match="takes 7 arguments"):
        extension.factor_f64(1, 1)
    # An editable install builds the module into the source tree: it must not predate its source.
    path = Path(extension.__file__)
    if path.parent == SOURCE.parent:
        assert path.stat().st_mtime >= SOURCE.stat().st_mtime, (
            f"{path.name} is older than {SOURCE.name}: rebuild it with `pip install -e .`"
        )


def test_disabled_native_sweeps_run_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """``set_native_enabled(False)`` never calls the compiled sweeps; results stay the same."""

    def refuse(*args: object) -> None:
        raise AssertionError("the compiled sweeps were called while disabled")

    lower, diag, upper, rhs = _dominant_system((5,), 7, seed=13)
    expected = solve_tridiagonal(lower, diag, upper, rhs)
    monkeypatch.setattr(
        tridiagonal_module,
        "_NATIVE_FUNCTIONS",
        dict.fromkeys(tridiagonal_module._NATIVE_FUNCTIONS, refuse),
    )
    tridiagonal_module.set_native_enabled(False)
    try:
        assert not tridiagonal_module.native_available()
        torch.testing.assert_close(solve_tridiagonal(lower, diag, upper, rhs), expected)
    finally:
        tridiagonal_module.set_native_enabled(True)


def test_environment_variable_forces_eager() -> None:
    """``CLIMGRAD_NATIVE=0`` at import disables the compiled sweeps for the whole process."""
    script = (
        "import torch\n"
        "import climgrad.tridiagonal as t\n"
        "assert not t.native_available()\n"
        "a = torch.ones(4, 3, dtype=torch.float64)\n"
        "out = (torch.empty_like(a), torch.empty_like(a))\n"
        "assert not t._native_call('factor', (a, 4 * a, a), out)\n"
        "t.factor_levels_first(a, 4 * a, a, out=out)\n"
        "print(float(out[1][0, 0]))\n"
    )
    environment = {**os.environ, "CLIMGRAD_NATIVE": "0"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout) == 0.25


def test_single_unknown() -> None:
    diag = torch.tensor([[2.0], [4.0]], dtype=DOUBLE, requires_grad=True)
    rhs = torch.tensor([[1.0], [2.0]], dtype=DOUBLE, requires_grad=True)
    zeros = torch.zeros(2, 1, dtype=DOUBLE)
    solution = solve_tridiagonal(zeros, diag, zeros, rhs)
    torch.testing.assert_close(solution, torch.tensor([[0.5], [0.5]], dtype=DOUBLE))
    assert torch.autograd.gradcheck(lambda d, r: solve_tridiagonal(zeros, d, zeros, r), (diag, rhs))


def test_float32_follows_inputs() -> None:
    lower, diag, upper, rhs = _dominant_system((3,), 8, seed=8, dtype=torch.float32)
    solution = solve_tridiagonal(lower, diag, upper, rhs)
    assert solution.dtype == torch.float32
    expected = torch.linalg.solve(_dense(lower, diag, upper).double(), rhs.double())
    torch.testing.assert_close(solution.double(), expected, rtol=1e-5, atol=1e-5)


def test_vmap_and_functional_grad() -> None:
    lower, diag, upper, rhs = _dominant_system((4,), 5, seed=9)
    batched = torch.func.vmap(solve_tridiagonal)(lower, diag, upper, rhs)
    torch.testing.assert_close(batched, solve_tridiagonal(lower, diag, upper, rhs))
    grad_rhs = torch.func.grad(lambda d: solve_tridiagonal(lower[0], diag[0], upper[0], d).sum())(
        rhs[0]
    )
    expected = torch.linalg.solve(
        _dense(lower[0], diag[0], upper[0]).T, torch.ones(5, dtype=DOUBLE)
    )
    torch.testing.assert_close(grad_rhs, expected)


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        (((3,), (4,), (4,), (4,)), "last dimension"),
        (((2, 4), (3, 4), (4,), (4,)), "broadcast"),
        (((0,), (0,), (0,), (0,)), "empty"),
    ],
)
def test_shape_errors_say_the_fix(shapes: tuple[tuple[int, ...], ...], match: str) -> None:
    tensors = [torch.ones(shape, dtype=DOUBLE) for shape in shapes]
    with pytest.raises(ValueError, match=match):
        solve_tridiagonal(*tensors)


def test_dtype_errors_say_the_fix() -> None:
    ones = torch.ones(4, dtype=DOUBLE)
    with pytest.raises(TypeError, match="one dtype"):
        solve_tridiagonal(ones, ones, ones, ones.float())
    with pytest.raises(TypeError, match="floating-point"):
        solve_tridiagonal(ones, ones, ones, torch.ones(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="at least one dimension"):
        solve_tridiagonal(ones, ones, ones, torch.tensor(1.0, dtype=DOUBLE))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    inputs = [t.requires_grad_(True) for t in _dominant_system((3,), 6, seed=10)]
    cuda_inputs = [t.detach().cuda().requires_grad_(True) for t in inputs]
    solution = solve_tridiagonal(*inputs)
    cuda_solution = solve_tridiagonal(*cuda_inputs)
    assert cuda_solution.device.type == "cuda"
    torch.testing.assert_close(cuda_solution.cpu(), solution)
    grads = torch.autograd.grad(solution.sum(), inputs)
    cuda_grads = torch.autograd.grad(cuda_solution.sum(), cuda_inputs)
    for got, expected in zip(cuda_grads, grads, strict=True):
        torch.testing.assert_close(got.cpu(), expected)
