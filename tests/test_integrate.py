"""Rollouts with checkpointing and equilibria with implicit differentiation."""

from __future__ import annotations

import math

import pytest
import torch

from climgrad.autograd import check_gradients
from climgrad.integrate import EquilibriumError, EquilibriumInfo, equilibrium, rollout

DTYPE = torch.float64


# A self-contained copy of benchmark B3 (shared/benchmarks.md): the diffusive EBM residual. It
# tests the solver and its implicit gradient against the published reference values.
def b3_problem():
    bands = torch.arange(90, dtype=DTYPE)
    latitude = torch.deg2rad(-89.0 + 2.0 * bands)
    boundary = torch.deg2rad(-90.0 + 2.0 * torch.arange(91, dtype=DTYPE))
    x = torch.sin(latitude)
    p2 = (3 * x**2 - 1) / 2
    insolation = 340.0 * (1 - 0.482 * p2)
    conductance = torch.cos(boundary)
    conductance[0] = conductance[-1] = 0.0
    metric = torch.cos(latitude) * (math.pi / 90) ** 2
    warm_albedo = 0.30 + 0.078 * p2

    def residual(temperature, a, b, d):
        up = torch.cat([temperature[..., 1:], temperature[..., -1:]], -1)
        down = torch.cat([temperature[..., :1], temperature[..., :-1]], -1)
        laplacian = (
            conductance[1:] * (up - temperature) - conductance[:-1] * (temperature - down)
        ) / metric
        ice = 0.5 * (1 - torch.tanh((temperature + 10) / 2))
        albedo = warm_albedo + (0.62 - warm_albedo) * ice
        return insolation * (1 - albedo) - (a + b * temperature) + d * laplacian

    return residual, 12 - 40 * p2


def b3_loss(theta, residual, start, observations, info=None):
    temperature = equilibrium(residual, start, list(theta), tol=1e-10, info=info)
    olr = theta[0] + theta[1] * temperature
    return (
        0.5 * (((temperature - observations[:90]) / 0.1) ** 2).sum()
        + 0.5 * (((olr - observations[90:]) / 0.2) ** 2).sum()
    )


@pytest.fixture(scope="module")
def b3():
    residual, start = b3_problem()
    truth = [torch.tensor(v, dtype=DTYPE) for v in (210.0, 2.0, 0.555)]
    info = EquilibriumInfo()
    t_true = equilibrium(residual, start, truth, tol=1e-10, info=info)
    observations = torch.cat([t_true, truth[0] + truth[1] * t_true])
    return residual, start, observations, info


def test_b3_reference_values_and_newton_iterations(b3):
    residual, start, observations, truth_info = b3
    assert truth_info.iterations == 6  # benchmarks.md B3.6
    assert abs(float(observations[0]) - (-15.8491945563)) < 1e-8
    theta = [torch.tensor(v, dtype=DTYPE, requires_grad=True) for v in (190.0, 1.8, 0.45)]
    info = EquilibriumInfo()
    loss = b3_loss(theta, residual, start, observations, info)
    grads = torch.autograd.grad(loss, theta)
    assert info.iterations == 4
    reference = [893957.153119, -69467.4700283, -1836558.88091, 1370821.77127]
    values = [float(loss), *(float(g) for g in grads)]
    for got, want in zip(values, reference):
        assert abs(got - want) / abs(want) < 1e-8


def test_implicit_gradient_matches_unrolled_newton_and_finite_differences(b3):
    residual, start, observations, _ = b3
    theta = [torch.tensor(v, dtype=DTYPE, requires_grad=True) for v in (200.0, 1.9, 0.5)]
    implicit = torch.autograd.grad(b3_loss(theta, residual, start, observations), theta)

    # Unrolled: differentiate through every Newton iteration (jacrev composes with autograd).
    temperature = start.clone()
    for _ in range(12):
        jac = torch.func.jacrev(lambda t: residual(t, *theta))(temperature)
        temperature = temperature - torch.linalg.solve(jac, residual(temperature, *theta))
    olr = theta[0] + theta[1] * temperature
    unrolled_loss = (
        0.5 * (((temperature - observations[:90]) / 0.1) ** 2).sum()
        + 0.5 * (((olr - observations[90:]) / 0.2) ** 2).sum()
    )
    unrolled = torch.autograd.grad(unrolled_loss, theta)
    for a, b in zip(implicit, unrolled):
        assert abs(float(a) - float(b)) <= 1e-8 * abs(float(b))

    for i, h in enumerate((1e-4, 1e-6, 1e-6)):
        plus = [t.detach().clone() for t in theta]
        minus = [t.detach().clone() for t in theta]
        plus[i] += h
        minus[i] -= h
        fd = (
            float(b3_loss(plus, residual, start, observations))
            - float(b3_loss(minus, residual, start, observations))
        ) / (2 * h)
        assert abs(fd - float(implicit[i])) <= 1e-5 * abs(float(implicit[i]))


def test_equilibrium_passes_check_gradients():
    def residual(x, a, b):
        return a * torch.tanh(x) + x**3 - b

    a = torch.tensor([1.0, 2.0, 0.5], dtype=DTYPE, requires_grad=True)
    b = torch.tensor([0.3, -1.0, 2.0], dtype=DTYPE, requires_grad=True)

    def solve(a, b):
        return equilibrium(
            lambda x, a_, b_: residual(x, a_, b_), torch.zeros(3, dtype=DTYPE), [a, b]
        )

    report = check_gradients(solve, (a, b), names=["a", "b"])
    assert report.passed, str(report)


def test_batched_rows_are_solved_independently():
    def residual(x, rate):
        return rate * x + torch.sin(x) - 1.0

    rate = torch.tensor(2.0, dtype=DTYPE, requires_grad=True)
    x0 = torch.zeros(4, 3, dtype=DTYPE)
    solution = equilibrium(residual, x0, [rate])
    assert float(residual(solution, rate).abs().max()) < 1e-9
    (grad,) = torch.autograd.grad(solution.sum(), rate)
    # dx/drate = -x / (rate + cos x) for every entry
    expected = (-solution / (rate + torch.cos(solution))).sum()
    assert abs(float(grad) - float(expected)) < 1e-10


def test_no_convergence_is_a_clear_error():
    with pytest.raises(EquilibriumError, match="did not converge in 2 iterations"):
        equilibrium(
            lambda x, c: torch.exp(x) - c,
            torch.zeros(1, dtype=DTYPE),
            [torch.tensor(1e6, dtype=DTYPE)],
            max_iter=2,
        )


def _damped_step(rate, forcing, dt=0.1):
    def step(state):
        return {"x": state["x"] + dt * (forcing - rate * state["x"] ** 3 / 1e4 - rate * state["x"])}

    return step


def saved_bytes(function):
    """Bytes of tensors autograd saves for backward while ``function`` runs (deterministic)."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = function()
    return result, total


def test_checkpointed_rollout_equals_plain_rollout_and_saves_memory():
    rate = torch.tensor(0.5, dtype=DTYPE, requires_grad=True)
    forcing = torch.linspace(0.5, 2.0, 5000, dtype=DTYPE)
    state = {"x": torch.zeros(5000, dtype=DTYPE)}
    steps = 400

    def run(every):
        final, series = rollout(
            _damped_step(rate, forcing),
            state,
            steps,
            checkpoint_every=every,
            observe=lambda s: s["x"].mean(),
        )
        return final["x"].sum() + series.sum()

    plain, plain_bytes = saved_bytes(lambda: run(None))
    checkpointed, checkpoint_bytes = saved_bytes(lambda: run(20))
    explicit_final, explicit_series = rollout(
        _damped_step(rate, forcing),
        state,
        steps,
        checkpoint_every=20,
        parameters=[rate],
        observe=lambda s: s["x"].mean(),
    )
    explicit = explicit_final["x"].sum() + explicit_series.sum()
    (grad_explicit,) = torch.autograd.grad(explicit, rate)
    assert torch.equal(plain.detach(), explicit.detach())
    (grad_plain,) = torch.autograd.grad(plain, rate)
    (grad_checkpointed,) = torch.autograd.grad(checkpointed, rate)
    assert torch.equal(plain.detach(), checkpointed.detach())
    assert abs(float(grad_plain) - float(grad_checkpointed)) <= 1e-12 * abs(float(grad_plain))
    assert abs(float(grad_plain) - float(grad_explicit)) <= 1e-12 * abs(float(grad_plain))
    # T = 400, k = 20: the forward keeps T/k = 20 boundaries instead of ~T steps of intermediates.
    assert checkpoint_bytes * 10 < plain_bytes


def test_rollout_without_grad_and_bad_arguments():
    rate = torch.tensor(0.5, dtype=DTYPE)
    with torch.no_grad():
        final, series = rollout(
            _damped_step(rate, torch.ones(3, dtype=DTYPE)),
            {"x": torch.zeros(3, dtype=DTYPE)},
            7,
            checkpoint_every=3,
        )
    assert series is None and final["x"].shape == (3,)
    with pytest.raises(ValueError, match="checkpoint_every"):
        rollout(lambda s: s, {"x": torch.zeros(1)}, 3, checkpoint_every=0)


def test_explicit_parameter_segments_keep_no_graph_and_support_backward():
    rate = torch.tensor(0.5, dtype=DTYPE, requires_grad=True)
    x0 = torch.linspace(0.0, 1.0, 100, dtype=DTYPE, requires_grad=True)
    forcing = torch.linspace(0.5, 2.0, 100, dtype=DTYPE)

    def run(every, parameters):
        final, _ = rollout(
            _damped_step(rate, forcing),
            {"x": x0},
            300,
            checkpoint_every=every,
            parameters=parameters,
        )
        return (final["x"] ** 2).sum()

    _, explicit_bytes = saved_bytes(lambda: run(30, [rate]))
    _, plain_bytes = saved_bytes(lambda: run(None, None))
    assert explicit_bytes * 50 < plain_bytes  # only the 10 segment boundaries are kept
    reference = torch.autograd.grad(run(None, None), (rate, x0))
    run(30, [rate]).backward()  # .backward() works too, accumulating into .grad
    torch.testing.assert_close(rate.grad, reference[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(x0.grad, reference[1], rtol=1e-12, atol=0)


def test_newton_backtracks_out_of_a_residual_domain() -> None:
    """A trial whose residual raises ValueError (out of its domain) is halved, not fatal."""

    def residual(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if bool((x <= 0).any()):
            raise ValueError("x must be positive")
        return torch.log(x) - torch.log(target)

    target = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    x0 = torch.tensor([10.0], dtype=torch.float64)  # plain Newton jumps to 10 - 10 ln 5 < 0
    solution = equilibrium(residual, x0, [target], tol=1e-12)
    torch.testing.assert_close(solution, torch.tensor([2.0], dtype=torch.float64))
    solution.sum().backward()
    torch.testing.assert_close(target.grad, torch.tensor([1.0], dtype=torch.float64))
    with pytest.raises(EquilibriumError, match="domain"):
        equilibrium(residual, x0, [target], tol=1e-12, line_search=False)


# ---------------------------------------------------------------------------------------------
# The tridiagonal structure: B3.2's analytic Jacobian, Thomas sweeps in Newton and the adjoint.


def b3_bands():
    """B3.2's Jacobian of ``b3_problem``'s residual as three bands (the same grid, in °C)."""
    bands = torch.arange(90, dtype=DTYPE)
    latitude = torch.deg2rad(-89.0 + 2.0 * bands)
    boundary = torch.deg2rad(-90.0 + 2.0 * torch.arange(91, dtype=DTYPE))
    p2 = (3 * torch.sin(latitude) ** 2 - 1) / 2
    insolation = 340.0 * (1 - 0.482 * p2)
    conductance = torch.cos(boundary)
    conductance[0] = conductance[-1] = 0.0
    metric = torch.cos(latitude) * (math.pi / 90) ** 2
    warm_albedo = 0.30 + 0.078 * p2

    def jacobian(temperature, a, b, d):
        lower = d * conductance[:-1] / metric
        upper = d * conductance[1:] / metric
        slope = torch.tanh((temperature + 10) / 2)
        albedo_slope = -(0.62 - warm_albedo) * (1 - slope**2) / 4
        return lower, -(lower + upper) - insolation * albedo_slope - b, upper

    return jacobian


def test_tridiagonal_structure_matches_the_dense_path(b3):
    residual, start, _, _ = b3
    jacobian = b3_bands()
    theta = [torch.tensor(v, dtype=DTYPE, requires_grad=True) for v in (190.0, 1.8, 0.45)]
    dense_info, banded_info = EquilibriumInfo(), EquilibriumInfo()
    dense = equilibrium(residual, start, theta, tol=1e-10, info=dense_info)
    banded = equilibrium(
        residual,
        start,
        theta,
        jacobian=jacobian,
        structure="tridiagonal",
        tol=1e-10,
        info=banded_info,
    )
    assert float((banded - dense).abs().max()) < 1e-10
    assert banded_info.iterations == dense_info.iterations == 4  # B3.6
    weights = torch.randn(90, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    dense_grads = torch.autograd.grad((dense * weights).sum(), theta)
    banded_grads = torch.autograd.grad((banded * weights).sum(), theta)
    for a, b in zip(banded_grads, dense_grads):
        assert abs(float(a) - float(b)) <= 1e-10 * abs(float(b))


def _tridiagonal_problem():
    """A small nonlinear problem with a tridiagonal Jacobian: ``F = K x − c tanh x − b``."""

    def residual(x, k, c, b):
        laplacian = torch.nn.functional.pad(torch.diff(x, dim=-1), (1, 1))
        return k * torch.diff(laplacian, dim=-1) - 3.0 * x - c * torch.tanh(x) - b

    def jacobian(x, k, c, b):
        n = x.shape[-1]
        lower = k * torch.ones(n, dtype=x.dtype)
        lower = torch.cat([torch.zeros(1, dtype=x.dtype), lower[1:]])
        upper = torch.cat([k * torch.ones(n - 1, dtype=x.dtype), torch.zeros(1, dtype=x.dtype)])
        degree = torch.full((n,), 2.0, dtype=x.dtype)
        degree[0] = degree[-1] = 1.0
        diag = -k * degree - 3.0 - c * (1 - torch.tanh(x) ** 2)
        return lower.expand_as(diag), diag, upper.expand_as(diag)

    return residual, jacobian


def test_tridiagonal_implicit_gradient_passes_gradcheck():
    residual, jacobian = _tridiagonal_problem()
    k = torch.tensor(2.0, dtype=DTYPE, requires_grad=True)
    c = torch.tensor([0.5, 1.0, 1.5, 0.7, 0.2], dtype=DTYPE, requires_grad=True)
    b = torch.tensor([0.3, -1.0, 2.0, 0.1, -0.4], dtype=DTYPE, requires_grad=True)

    def solve(k, c, b):
        return equilibrium(
            residual,
            torch.zeros(5, dtype=DTYPE),
            [k, c, b],
            jacobian=jacobian,
            structure="tridiagonal",
            tol=1e-13,
        )

    assert torch.autograd.gradcheck(solve, (k, c, b))
    # Forward mode (the Function's jvp) agrees with the reverse-mode Jacobian.
    tangent = torch.randn(5, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    _, forward = torch.func.jvp(
        lambda b_: solve(k.detach(), c.detach(), b_), (b.detach(),), (tangent,)
    )
    reverse = torch.autograd.functional.jacobian(lambda b_: solve(k, c, b_), b.detach())
    torch.testing.assert_close(forward, reverse @ tangent, rtol=1e-10, atol=1e-12)


def test_tridiagonal_batched_rows_equal_separate_solves():
    residual, jacobian = _tridiagonal_problem()
    k = torch.tensor(2.0, dtype=DTYPE)
    c = torch.tensor([0.5, 1.0, 1.5, 0.7, 0.2], dtype=DTYPE)
    # Rows of very different difficulty: each converges in its own number of iterations.
    b = torch.tensor(
        [[0.3, -1.0, 2.0, 0.1, -0.4], [0.0] * 5, [30.0, -20.0, 5.0, 1.0, 8.0]],
        dtype=DTYPE,
        requires_grad=True,
    )
    batched = equilibrium(
        residual, torch.zeros(5, dtype=DTYPE), [k, c, b], jacobian=jacobian, structure="tridiagonal"
    )
    assert batched.shape == (3, 5)
    (grad_batched,) = torch.autograd.grad(batched.square().sum(), b)
    counts = []
    for row in range(3):
        info = EquilibriumInfo()
        b_row = b[row].detach().requires_grad_(True)
        single = equilibrium(
            residual,
            torch.zeros(5, dtype=DTYPE),
            [k, c, b_row],
            jacobian=jacobian,
            structure="tridiagonal",
            info=info,
        )
        counts.append(info.iterations)
        assert float((single - batched[row]).abs().max()) <= 1e-12
        (grad_single,) = torch.autograd.grad(single.square().sum(), b_row)
        torch.testing.assert_close(grad_single, grad_batched[row], rtol=1e-12, atol=1e-14)
    assert len(set(counts)) > 1  # the rows did need different numbers of iterations


def test_tridiagonal_parameter_vjp_replaces_the_recorded_residual():
    residual, jacobian = _tridiagonal_problem()
    calls = []

    def parameter_vjp(x, v, k, c, b, needs):
        calls.append(needs)
        laplacian = torch.diff(torch.nn.functional.pad(torch.diff(x), (1, 1)))
        grads = [(v * laplacian).sum(), -(v * torch.tanh(x)), -v]
        return [g if need else None for g, need in zip(grads, needs)]

    theta = [
        torch.tensor(2.0, dtype=DTYPE, requires_grad=True),
        torch.full((5,), 0.5, dtype=DTYPE, requires_grad=True),
        torch.linspace(-1, 1, 5, dtype=DTYPE, requires_grad=True),
    ]
    x0 = torch.zeros(5, dtype=DTYPE)
    plain = equilibrium(residual, x0, theta, jacobian=jacobian, structure="tridiagonal")
    closed = equilibrium(
        residual, x0, theta, jacobian=jacobian, structure="tridiagonal", parameter_vjp=parameter_vjp
    )
    expected = torch.autograd.grad(plain.sum(), theta)
    got = torch.autograd.grad(closed.sum(), theta)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert calls == [(True, True, True)]


def test_a_zero_pivot_falls_back_to_pivoting_lu():
    # J = [[0, 1], [1, 0]]: Thomas elimination divides by the zero pivot, LU pivots.
    def residual(x, b):
        return x.flip(-1) + 0.1 * x**3 - b

    def jacobian(x, b):
        zero = torch.zeros(2, dtype=DTYPE)
        return (
            torch.tensor([0.0, 1.0], dtype=DTYPE),
            0.3 * x**2 + zero,
            torch.tensor([1.0, 0.0], dtype=DTYPE),
        )

    b = torch.tensor([1.0, 2.0], dtype=DTYPE, requires_grad=True)
    x = equilibrium(
        residual,
        torch.zeros(2, dtype=DTYPE),
        [b],
        jacobian=jacobian,
        structure="tridiagonal",
        tol=1e-12,
    )
    assert float(residual(x, b).abs().max()) <= 1e-12
    (grad,) = torch.autograd.grad(x.sum(), b)  # the adjoint meets the zero pivot too
    assert bool(torch.isfinite(grad).all())


def test_structure_arguments_are_checked():
    residual, _ = _tridiagonal_problem()
    args = (residual, torch.zeros(3, dtype=DTYPE), [torch.tensor(1.0, dtype=DTYPE)] * 3)
    with pytest.raises(ValueError, match="Unknown Jacobian structure"):
        equilibrium(*args, structure="banded")
    with pytest.raises(ValueError, match="needs `jacobian=`"):
        equilibrium(*args, structure="tridiagonal")
