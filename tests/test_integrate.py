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
