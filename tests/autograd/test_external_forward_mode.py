"""Forward mode of external(): Jacobian-vector products by one directional difference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import forward_ad

from climgrad.autograd import external
from climgrad.integrate import _jacobian, _jacobian_forward_mode

F64 = torch.float64


def column_numpy(temperature: np.ndarray, humidity: np.ndarray, scale: np.ndarray):
    """A column scheme: cumulative sums mix levels, columns stay independent."""
    first = np.cumsum(temperature**2 * humidity, axis=-1) + scale * temperature
    second = (temperature * humidity).sum(-1, keepdims=True) * np.ones_like(temperature) * scale
    return first, second


def column_torch(temperature: torch.Tensor, humidity: torch.Tensor, scale: torch.Tensor):
    first = torch.cumsum(temperature**2 * humidity, dim=-1) + scale * temperature
    second = (temperature * humidity).sum(-1, keepdim=True) * torch.ones_like(temperature) * scale
    return first, second


def _inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    temperature = 1.0 + torch.rand(3, 5, generator=generator, dtype=F64)
    humidity = torch.rand(3, 5, generator=generator, dtype=F64)
    return temperature, humidity, torch.tensor(2.0, dtype=F64)


def _jvp(operator, primals, tangents):
    with forward_ad.dual_level():
        duals = [forward_ad.make_dual(p, t) for p, t in zip(primals, tangents)]
        outputs = operator(*duals)
        return [forward_ad.unpack_dual(o).tangent for o in outputs]


@pytest.mark.parametrize(
    ("method", "calls", "tolerance"),
    [("central", 2, 1e-7), ("forward", 1, 1e-5), ("complex", 1, 1e-13)],
)
def test_jvp_matches_autograd_with_one_directional_difference(method, calls, tolerance):
    operator = external(column_numpy, structure="column", method=method)
    primals = _inputs()
    generator = torch.Generator().manual_seed(1)
    tangents = [torch.randn(p.shape, generator=generator, dtype=F64) for p in primals]
    result = _jvp(operator, primals, tangents)
    _, reference = torch.func.jvp(column_torch, primals, tuple(tangents))
    for got, want in zip(result, reference):
        torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)
    # all three inputs and both outputs at once, whatever the structure
    assert operator.calls.tangent == calls
    assert operator.calls.forward == 1 and operator.calls.backward == 0


def test_gradcheck_forward_mode_float64():
    operator = external(column_numpy, structure="column")
    assert torch.autograd.gradcheck(
        lambda t, q: operator(t, q, torch.tensor(2.0, dtype=F64)),
        tuple(p.requires_grad_() for p in _inputs()[:2]),
        check_forward_ad=True,
        check_backward_ad=True,
    )


def test_zero_tangents_cost_no_calls():
    operator = external(column_numpy, structure="column")
    primals = _inputs()
    result = _jvp(operator, primals, [torch.zeros_like(p) for p in primals])
    assert all(bool((r == 0).all()) for r in result)
    assert operator.calls.tangent == 0


def test_user_jvp_and_jacobian_give_forward_mode():
    def jvp(primals, tangents):
        (x,), (v,) = primals, tangents
        return 3 * x**2 * v

    def jacobian(x):
        return 3 * x**2

    x = torch.linspace(1.0, 2.0, 4, dtype=F64)
    v = torch.linspace(-1.0, 1.0, 4, dtype=F64)
    for derivative in ({"jvp": jvp}, {"jacobian": jacobian}):
        operator = external(lambda a: a**3, structure="elementwise", **derivative)
        (tangent,) = _jvp(lambda a, op=operator: (op(a),), [x], [v])
        torch.testing.assert_close(tangent, 3 * x**2 * v)
        assert operator.calls.tangent == 0 and operator.calls.derivative == 1


def test_vjp_only_has_no_forward_mode_and_torch_func_is_refused_clearly():
    operator = external(
        lambda a: a**3, structure="elementwise", vjp=lambda p, c: (3 * p[0] ** 2 * c[0],)
    )
    x = torch.ones(3, dtype=F64)
    with pytest.raises(NotImplementedError, match="forward mode"):
        _jvp(lambda a: (operator(a),), [x], [x])
    plain = external(lambda a: a**3, structure="elementwise")
    with pytest.raises(RuntimeError, match="forward_ad"):
        torch.func.jvp(plain, (x,), (x,))


def test_step_is_relative_to_the_largest_perturbed_element():
    """A tangent along one element perturbs it by rel_step |x|, as the backward's probe does."""
    seen = []

    def record(a):
        seen.append(np.array(a))
        return a**2

    x = torch.tensor([100.0, 1e-3], dtype=F64)
    operator = external(record, structure="elementwise", rel_step=1e-2)
    _jvp(lambda a: (operator(a),), [x], [torch.tensor([1.0, 0.0], dtype=F64)])
    np.testing.assert_allclose(seen[1] - seen[0], [1.0, 0.0])  # x + 1 (= 1e-2 * 100)
    np.testing.assert_allclose(seen[2] - seen[0], [-1.0, 0.0])


# ---------------------------------------------------------------------------------------------
# Jacobians of residuals through external Functions (integrate._jacobian)


def _residual_with_external():
    operator = external(column_numpy, structure="column")

    def residual(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        humidity = 0.1 + 0.05 * torch.arange(x.shape[-1], dtype=x.dtype)
        first, second = operator(x, humidity.expand_as(x).contiguous(), scale)
        return first - 3.0 * second + x.sin()

    def reference(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        humidity = 0.1 + 0.05 * torch.arange(x.shape[-1], dtype=x.dtype)
        first, second = column_torch(x, humidity.expand_as(x), scale)
        return first - 3.0 * second + x.sin()

    return operator, residual, reference


def test_jacobian_of_external_residual_uses_batched_forward_mode():
    operator, residual, reference = _residual_with_external()
    x = _inputs()[0]
    scale = torch.tensor(2.0, dtype=F64)
    jacobian = _jacobian(residual, x, [scale])
    expected = torch.func.vmap(torch.func.jacrev(lambda row: reference(row, scale)))(x)
    torch.testing.assert_close(jacobian, expected, rtol=1e-7, atol=1e-7)
    # one batched evaluation (1 forward, 2 tangent calls for all 5 unknowns of 3 rows) and one
    # plain evaluation that checks the replicas did not mix
    assert operator.calls.forward == 2 and operator.calls.tangent == 2
    assert operator.calls.backward == 0


def test_batched_and_per_unknown_forward_mode_agree():
    _, residual, _ = _residual_with_external()
    x = _inputs(3)[0]
    scale = torch.tensor(1.5, dtype=F64)

    def rows_only(value: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        if value.ndim > 2:  # refuses the replica dimension: the per-unknown loop must take over
            raise RuntimeError("two-dimensional input only")
        return residual(value, s)

    torch.testing.assert_close(
        _jacobian_forward_mode(rows_only, x, [scale]),
        _jacobian_forward_mode(residual, x, [scale]),
        rtol=1e-6,
        atol=1e-6,
    )


def test_forward_mode_jacobian_refuses_a_residual_that_mixes_the_replica_dimension():
    """A matrix product over a 1-D state would mix the replicas: the per-unknown loop is used."""
    operator = external(lambda a: a**3, structure="elementwise")
    matrix = torch.tensor([[2.0, 1.0, 0.0], [0.5, 3.0, 1.0], [0.0, 1.0, 4.0]], dtype=F64)

    def residual(x: torch.Tensor) -> torch.Tensor:
        return matrix @ operator(x)  # (n, n) @ (n, n) for replicas: not row-wise

    x = torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    expected = matrix * (3 * x**2)  # ∂(A x³)/∂x = A diag(3x²)
    torch.testing.assert_close(_jacobian(residual, x, []), expected, rtol=1e-7, atol=1e-7)
