"""Gauss-Newton/Laplace covariance and Jacobians against a linear-Gaussian analytic posterior."""

from __future__ import annotations

import pytest
import torch

from climgrad.inference.laplace import (
    gauss_newton_covariance,
    jacobian_fd,
    jacobian_forward,
    jacobian_reverse,
    laplace_samples,
)

from .linear import linear_gaussian

DTYPE = torch.float64


def test_jacobian_reverse_of_a_linear_map_is_its_matrix() -> None:
    problem = linear_gaussian()
    a = problem["A"]
    jac = jacobian_reverse(lambda u: a @ u, problem["mean"])
    assert jac.shape == (10, 3) and jac.dtype == DTYPE
    assert torch.equal(jac, a)


def test_jacobian_forward_of_a_linear_map_is_its_matrix() -> None:
    problem = linear_gaussian()
    a = problem["A"]
    jac = jacobian_forward(lambda u: a @ u, problem["mean"])
    assert jac.shape == (10, 3)
    torch.testing.assert_close(jac, a, rtol=0, atol=1e-15)


def test_laplace_covariance_from_reverse_mode_is_the_analytic_posterior() -> None:
    problem = linear_gaussian()
    a = problem["A"]
    jac = jacobian_reverse(lambda u: a @ u, problem["mean"])
    cov = gauss_newton_covariance(jac, problem["C0"])
    torch.testing.assert_close(cov, problem["cov"], rtol=0, atol=1e-10)
    assert torch.equal(cov, cov.T)
    assert bool((torch.linalg.eigvalsh(cov) > 0).all())


def test_laplace_covariance_from_batched_finite_differences() -> None:
    problem = linear_gaussian()
    a = problem["A"]
    calls: list[tuple[int, ...]] = []

    def evaluate_batch(points: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(points.shape))
        return points @ a.T

    jac = jacobian_fd(evaluate_batch, problem["mean"])
    assert calls == [(6, 3)]  # one batched call of 2p points
    torch.testing.assert_close(jac, a, rtol=0, atol=1e-8)
    cov = gauss_newton_covariance(jac, problem["C0"])
    torch.testing.assert_close(cov, problem["cov"], rtol=0, atol=1e-6)


def test_fd_is_second_order_accurate_on_a_nonlinear_map() -> None:
    u = torch.tensor([0.3, -0.7], dtype=DTYPE)

    def g(v: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.sin(v[..., 0]) * v[..., 1], torch.exp(v[..., 1])], dim=-1)

    exact = jacobian_reverse(g, u)
    coarse = (jacobian_fd(g, u, step=1e-2) - exact).abs().max()
    fine = (jacobian_fd(g, u, step=torch.tensor([5e-3, 5e-3], dtype=DTYPE)) - exact).abs().max()
    assert 3.0 < float(coarse / fine) < 5.0  # halving h divides the error by ~4


def test_noise_covariance_matrix_vector_and_whitening_agree() -> None:
    problem = linear_gaussian()
    a, c0 = problem["A"], problem["C0"]
    g = torch.Generator().manual_seed(3)
    root = torch.randn(10, 10, generator=g, dtype=DTYPE)
    noise = root @ root.T + torch.eye(10, dtype=DTYPE)
    expected = torch.linalg.inv(a.T @ torch.linalg.inv(noise) @ a + torch.linalg.inv(c0))
    torch.testing.assert_close(gauss_newton_covariance(a, c0, noise), expected, rtol=1e-10, atol=0)
    variances = torch.linspace(0.5, 3.0, 10, dtype=DTYPE)
    expected_diag = torch.linalg.inv(a.T @ (a / variances[:, None]) + torch.linalg.inv(c0))
    torch.testing.assert_close(
        gauss_newton_covariance(a, c0, variances), expected_diag, rtol=1e-10, atol=0
    )
    prior_var = torch.tensor([1.0, 2.0, 4.0], dtype=DTYPE)
    torch.testing.assert_close(
        gauss_newton_covariance(a, prior_var),
        gauss_newton_covariance(a, torch.diag(prior_var)),
        rtol=1e-12,
        atol=0,
    )


def test_gauss_newton_is_the_exact_hessian_only_at_zero_residual() -> None:
    u0 = torch.tensor([0.4, -0.2, 0.9], dtype=DTYPE)
    c0 = torch.diag(torch.tensor([1.0, 0.5, 2.0], dtype=DTYPE))

    def g(u: torch.Tensor) -> torch.Tensor:
        return torch.stack([u[0] * u[1], torch.sin(u[2]), u[0] ** 2 + u[2], torch.exp(u[1])])

    def laplace_exact(y: torch.Tensor) -> torch.Tensor:
        def phi(u: torch.Tensor) -> torch.Tensor:
            r = y - g(u)
            return 0.5 * r @ r + 0.5 * u @ torch.linalg.solve(c0, u)

        return torch.linalg.inv(torch.autograd.functional.hessian(phi, u0))

    gn = gauss_newton_covariance(jacobian_reverse(g, u0), c0)
    torch.testing.assert_close(gn, laplace_exact(g(u0)), rtol=0, atol=1e-12)
    assert (gn - laplace_exact(g(u0) + 1.0)).abs().max() > 1e-2


class _ExpNoVmap(torch.autograd.Function):
    """exp(x) with a hand-written backward and no vmap rule (like the package's solvers)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        y = x.exp()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        (y,) = ctx.saved_tensors
        return grad * y


def test_jacobian_reverse_works_through_a_custom_function_without_vmap() -> None:
    u = torch.tensor([0.1, -0.5, 1.2], dtype=DTYPE)
    weights = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]], dtype=DTYPE)

    def f(v: torch.Tensor) -> torch.Tensor:
        return weights @ _ExpNoVmap.apply(v)

    with pytest.raises(RuntimeError):  # the vmap path cannot take this function
        torch.func.jacrev(f)(u)
    jac = jacobian_reverse(f, u)
    torch.testing.assert_close(jac, weights * u.exp()[None, :], rtol=1e-15, atol=0)
    with pytest.raises(RuntimeError, match="jvp"):  # forward mode needs a jvp rule
        jacobian_forward(f, u)


def test_jacobian_reverse_of_outputs_independent_of_u_is_zero() -> None:
    u = torch.tensor([1.0, 2.0], dtype=DTYPE)
    jac = jacobian_reverse(lambda v: torch.stack([v[0] * 2, torch.tensor(5.0, dtype=DTYPE)]), u)
    assert torch.equal(jac, torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=DTYPE))


def test_fd_with_failed_members_names_the_parameters() -> None:
    u = torch.tensor([0.0, 1.0, 2.0], dtype=DTYPE)

    def evaluate_batch(points: torch.Tensor) -> torch.Tensor:
        out = points.clone()
        out[points[:, 2] > 2.0] = float("nan")  # only u + h e_2 fails
        return out

    with pytest.raises(ValueError, match=r"parameters j = \[2\]; reduce the step"):
        jacobian_fd(evaluate_batch, u)
    with pytest.raises(ValueError, match="one row per point"):
        jacobian_fd(lambda points: points[:3], u)
    with pytest.raises(ValueError, match="positive"):
        jacobian_fd(lambda points: points, u, step=0.0)


def test_non_finite_outputs_raise_in_autodiff_jacobians() -> None:
    u = torch.tensor([-1.0, 1.0], dtype=DTYPE)
    with pytest.raises(ValueError, match="non-finite"):
        jacobian_reverse(torch.log, u)
    with pytest.raises(ValueError, match="non-finite"):
        jacobian_forward(torch.log, u)
    with pytest.raises(ValueError, match=r"flat \(p,\) vector"):
        jacobian_reverse(torch.exp, u[None, :])


def test_covariances_that_are_not_positive_definite_are_refused() -> None:
    problem = linear_gaussian()
    a = problem["A"]
    bad = torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=DTYPE))
    with pytest.raises(ValueError, match="`prior_cov` is not positive definite"):
        gauss_newton_covariance(a, bad)
    with pytest.raises(ValueError, match="`noise_cov` must hold positive finite variances"):
        gauss_newton_covariance(a, problem["C0"], torch.zeros(10, dtype=DTYPE))
    with pytest.raises(ValueError, match=r"\(3, 3\) covariance"):
        gauss_newton_covariance(a, torch.eye(4, dtype=DTYPE))
    nan_jac = a.clone()
    nan_jac[0, 0] = float("nan")
    with pytest.raises(ValueError, match="`jacobian` has non-finite entries"):
        gauss_newton_covariance(nan_jac, problem["C0"])


def test_laplace_samples_have_the_requested_moments_and_are_seeded() -> None:
    problem = linear_gaussian()
    mean, cov = problem["mean"], problem["cov"]
    draws = laplace_samples(mean, cov, 40000, torch.Generator().manual_seed(1))
    assert draws.shape == (40000, 3) and draws.dtype == DTYPE
    sd = cov.diagonal().sqrt()
    assert bool(((draws.mean(0) - mean).abs() < 4 * sd / 200).all())
    scale = torch.outer(sd, sd)
    assert bool(((torch.cov(draws.T) - cov).abs() < 4 * 1.5 * scale / 200).all())
    again = laplace_samples(mean, cov, 40000, torch.Generator().manual_seed(1))
    assert torch.equal(again, draws)
    other = laplace_samples(mean, cov, 40000, torch.Generator().manual_seed(2))
    assert not torch.equal(other, draws)
    with pytest.raises(ValueError, match="`num` must be a positive integer"):
        laplace_samples(mean, cov, 0, torch.Generator())
