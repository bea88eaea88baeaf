"""EKI, TEKI and UKI (climgrad.inference.kalman) against the analytic linear-Gaussian posterior.

The reference problem is G(u) = A u with p = 3 parameters, d = 10 data, a Gaussian prior
N(m0, C0) and a correlated Gaussian noise covariance Γ, whose posterior is N(m, C) with

    C = (Aᵀ Γ⁻¹ A + C0⁻¹)⁻¹,    m = C (Aᵀ Γ⁻¹ y + C0⁻¹ m0).

Monte Carlo tolerances are stated where they are used, in units of the i.i.d. standard errors of
J posterior draws: sqrt(C_ii / J) for a mean and sqrt((C_ii C_jj + C_ij²) / J) for a covariance
entry (the Wishart variance of a sample covariance).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor

from climgrad.inference.kalman import EKI, UKI, EnsembleFailure, data_misfit

F64 = torch.float64
#: Standard normal 95 % quantile: mean ± Z90 sd is a central 90 % interval.
Z90 = 1.6448536269514722


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These are tiny LAPACK calls; on a shared 2-core machine extra threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Linear:
    """A linear-Gaussian inverse problem and its analytic posterior."""

    A: Tensor
    m0: Tensor
    C0: Tensor
    noise: Tensor
    y: Tensor
    post_mean: Tensor
    post_cov: Tensor

    def forward(self, u: Tensor) -> Tensor:
        return u @ self.A.mT

    @property
    def post_sd(self) -> Tensor:
        return self.post_cov.diagonal().sqrt()


def posterior(A: Tensor, m0: Tensor, C0: Tensor, noise: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Analytic posterior mean and covariance of the linear-Gaussian problem."""
    precision = A.mT @ torch.linalg.solve(noise, A) + torch.linalg.inv(C0)
    cov = torch.linalg.inv(precision)
    mean = cov @ (A.mT @ torch.linalg.solve(noise, y) + torch.linalg.solve(C0, m0))
    return mean, 0.5 * (cov + cov.mT)


def linear_problem(seed: int = 0, p: int = 3, d: int = 10) -> Linear:
    """Random A, a correlated prior and a correlated (AR(1), ρ = 0.5) noise covariance."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(d, p, generator=gen, dtype=F64)
    m0 = torch.linspace(-1.0, 2.0, p, dtype=F64)
    L = 0.3 * torch.randn(p, p, generator=gen, dtype=F64) + torch.eye(p, dtype=F64)
    C0 = L @ L.mT
    sd = 0.5 + torch.rand(d, generator=gen, dtype=F64)
    lag = (torch.arange(d)[:, None] - torch.arange(d)[None, :]).abs().to(F64)
    noise = sd[:, None] * sd[None, :] * 0.5**lag
    u_true = m0 + torch.linalg.cholesky(C0) @ torch.randn(p, generator=gen, dtype=F64)
    y = A @ u_true + torch.linalg.cholesky(noise) @ torch.randn(d, generator=gen, dtype=F64)
    mean, cov = posterior(A, m0, C0, noise, y)
    return Linear(A, m0, C0, noise, y, mean, cov)


def misfits(G: Tensor, y: Tensor, noise: Tensor) -> Tensor:
    """½ (y - g_j)ᵀ Γ⁻¹ (y - g_j) per row, computed directly (no whitening)."""
    r = y - G
    return 0.5 * (r * torch.linalg.solve(noise, r.mT).mT).sum(dim=1)


def run_eki(
    eki: EKI, problem: Linear, fail: Callable[[int, int], Tensor] | None = None
) -> list[dict[str, Any]]:
    """Iterate until finished (at most 500 steps); ``fail(iteration, J)`` marks NaN rows."""
    history = []
    for _ in range(500):
        if eki.finished:
            break
        G = problem.forward(eki.ensemble)
        if fail is not None:
            G[fail(eki.iteration, G.shape[0])] = float("nan")
        history.append(eki.update(G))
    assert eki.finished
    return history


def every_fifth(iteration: int, J: int) -> Tensor:
    """Deterministic 20 % failures, a different fifth of the members at each iteration."""
    return torch.arange(J) % 5 == iteration % 5


# --------------------------------------------------------------------------------------------------
# Data misfit
# --------------------------------------------------------------------------------------------------


def test_data_misfit_is_the_noise_weighted_quadratic_form() -> None:
    problem = linear_problem()
    G = problem.forward(torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=F64))
    expected = misfits(G, problem.y, problem.noise)
    torch.testing.assert_close(data_misfit(G, problem.y, problem.noise), expected)
    diag = problem.noise.diagonal()
    torch.testing.assert_close(
        data_misfit(G, problem.y, diag), misfits(G, problem.y, torch.diag(diag))
    )
    torch.testing.assert_close(data_misfit(G, problem.y), 0.5 * (problem.y - G).square().sum(1))


# --------------------------------------------------------------------------------------------------
# EKI: update equation, step control, finite-time posterior
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["finite_time", "tikhonov"])
@pytest.mark.parametrize("J", [6, 40])  # J < d (ensemble-space solve) and J > d
def test_eki_step_is_the_perturbed_observation_kalman_update(variant: str, J: int) -> None:
    """One step equals u_j + C^ug (C^gg + Γ/Δt)⁻¹ (y + ξ_j - g_j) with dense sample covariances.

    The update's first random draws are its perturbations, N(0, I) Δt^(-1/2) in the noise-whitened
    coordinates, so a clone of the generator reproduces ξ_j = Γ̃^(1/2) z_j Δt^(-1/2).
    """
    problem = linear_problem()
    gen = torch.Generator().manual_seed(3)
    eki = EKI(
        problem.m0, problem.C0, problem.y, J, noise_cov=problem.noise, variant=variant,
        generator=gen, step=0.25,
    )  # fmt: skip
    U = eki.ensemble
    G = problem.forward(U)
    clone = torch.Generator().manual_seed(0)
    clone.set_state(gen.get_state())
    info = eki.update(G)
    dt = info["dt"]
    assert dt == 0.25
    noise, target, Gt = problem.noise, problem.y, G
    if variant == "tikhonov":
        noise = torch.block_diag(problem.noise, problem.C0)
        target = torch.cat([problem.y, problem.m0])
        Gt = torch.cat([G, U], dim=1)
    z = torch.randn((J, target.shape[0]), generator=clone, dtype=F64)
    xi = z @ torch.linalg.cholesky(noise).mT / math.sqrt(dt)
    dU, dG = U - U.mean(0), Gt - Gt.mean(0)
    c_ug, c_gg = dU.mT @ dG / (J - 1), dG.mT @ dG / (J - 1)
    expected = U + torch.linalg.solve(c_gg + noise / dt, (target + xi - Gt).mT).mT @ c_ug.mT
    torch.testing.assert_close(eki.ensemble, expected, rtol=1e-9, atol=1e-10)


def test_eki_dmc_steps_follow_iglesias_yang_and_land_on_t1() -> None:
    problem = linear_problem()
    eki = EKI(
        problem.m0, problem.C0, problem.y, 50, noise_cov=problem.noise,
        generator=torch.Generator().manual_seed(5),
    )  # fmt: skip
    d, time = problem.y.shape[0], 0.0
    while not eki.finished:
        G = problem.forward(eki.ensemble)
        phi = misfits(G, problem.y, problem.noise)
        info = eki.update(G)
        torch.testing.assert_close(info["misfit_per_member"], phi)
        assert info["misfit"] == pytest.approx(float(phi.mean()), rel=1e-12)
        controller = max(d / (2 * float(phi.mean())), math.sqrt(d / (2 * float(phi.var()))))
        assert info["dt"] == pytest.approx(min(controller, 1.0 - time), rel=1e-12)
        time += info["dt"]
        assert eki.time == pytest.approx(time, rel=1e-12)
    assert eki.time == 1.0 and eki.iteration >= 3
    assert info["dt"] < controller  # the last step was clipped to land on t = 1


def test_eki_fixed_step_is_clipped_at_max_time_and_stops() -> None:
    problem = linear_problem()
    eki = EKI(
        problem.m0, problem.C0, problem.y, 10, step=0.3, generator=torch.Generator().manual_seed(0)
    )
    times = [h["time"] for h in run_eki(eki, problem)]
    assert times[:3] == pytest.approx([0.3, 0.6, 0.9]) and times[3] == 1.0 and len(times) == 4
    with pytest.raises(RuntimeError, match="max_time"):
        eki.update(problem.forward(eki.ensemble))


def test_eki_finite_time_reproduces_the_linear_gaussian_posterior() -> None:
    """J = 2000, DMC steps, stopped at t = 1: the ensemble samples N(m, C) up to Monte Carlo error.

    Tolerances: covariance entries within 5 i.i.d. standard errors (offline, over 150 seeds, the
    errors had an rms of 0.9-1.1 such errors, as for i.i.d. draws). The ensemble mean's error is
    larger than the i.i.d. sqrt(C_ii/J), because the Kalman gain is itself estimated from the
    ensemble: offline its rms was 1.2-2.0 i.i.d. errors per component, so the mean must lie within
    8 i.i.d. standard errors (about 4 of its own).
    """
    problem = linear_problem()
    J = 2000
    eki = EKI(
        problem.m0, problem.C0, problem.y, J, noise_cov=problem.noise,
        generator=torch.Generator().manual_seed(11),
    )  # fmt: skip
    history = run_eki(eki, problem)
    assert eki.time == 1.0 and eki.finished
    assert len(history) >= 3 and all(h["dt"] < 1.0 for h in history)
    assert history[0]["dt"] < history[1]["dt"]  # DMC: small steps while the misfit is large
    C = problem.post_cov
    mean_se = (C.diagonal() / J).sqrt()
    assert ((eki.mean() - problem.post_mean).abs() <= 8 * mean_se).all(), (
        eki.mean() - problem.post_mean
    ) / mean_se
    cov_se = ((C.diagonal()[:, None] * C.diagonal()[None, :] + C**2) / J).sqrt()
    assert ((eki.covariance() - C).abs() <= 5 * cov_se).all(), (eki.covariance() - C) / cov_se
    # Not the prior any more: the spread shrank to the posterior's.
    assert (eki.covariance().diagonal() < 0.2 * problem.C0.diagonal()).all()


def test_teki_converges_to_the_map_point() -> None:
    """TEKI (augmented system) with DMC steps to T = 1000 collapses onto the MAP (= m here).

    Mean field: the ensemble at time T is N(m_T, C_T) with C_T⁻¹ = C0⁻¹ + T C⁻¹ (each step adds
    Δt times the augmented precision C⁻¹), so the spread is ≈ sd/√T = 0.03 posterior sd and the
    mean's Monte Carlo error ≈ sd/√(T J) = 0.003 sd (bias |m_T - m| < 1e-3 sd). The mean must be
    within 0.02 posterior sd of the MAP point (offline, 30 seeds: at most 0.008), and each
    ensemble variance within a factor 2 of C_T's (offline: 0.65-1.33).
    """
    problem = linear_problem()
    T, J = 1000.0, 100
    eki = EKI(
        problem.m0, problem.C0, problem.y, J, noise_cov=problem.noise, variant="tikhonov",
        max_time=T, generator=torch.Generator().manual_seed(2),
    )  # fmt: skip
    history = run_eki(eki, problem)
    assert eki.time == T and len(history) > 5
    error = (eki.mean() - problem.post_mean) / problem.post_sd
    assert error.abs().max() < 0.02, error
    C_T = torch.linalg.inv(torch.linalg.inv(problem.C0) + T * torch.linalg.inv(problem.post_cov))
    ratio = eki.covariance().diagonal() / C_T.diagonal()
    assert ((ratio > 0.5) & (ratio < 2.0)).all(), ratio


# --------------------------------------------------------------------------------------------------
# UKI
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [3, 6])  # a = min(sqrt(4/p), 1) is 1 for p = 3 and < 1 for p = 6
@pytest.mark.parametrize("alpha_reg", [1.0, 0.5])
def test_uki_sigma_points_are_the_modified_unscented_stencil(p: int, alpha_reg: float) -> None:
    """At the start Ĉ = α²C0 + (2 - α²)C0 = 2 C0 and m̂ = m0; weights W = 1/(2a²p)."""
    problem = linear_problem(p=p)
    uki = UKI(problem.m0, problem.C0, problem.y, alpha_reg=alpha_reg)
    points = uki.sigma_points()
    assert points.shape == (2 * p + 1, p)
    torch.testing.assert_close(points[0], problem.m0)
    torch.testing.assert_close(points[1 : p + 1] - points[0], points[0] - points[p + 1 :])
    a = min(math.sqrt(4 / p), 1.0)
    dev = points[1:] - points[0]
    torch.testing.assert_close(dev.mT @ dev / (2 * a * a * p), 2 * problem.C0)


def test_uki_update_is_the_augmented_unscented_kalman_analysis() -> None:
    """One update with a nonlinear G against the analysis written out with dense matrices:
    z = [G(u); u], ỹ = [y; m0], Σ_ν = blockdiag(2Γ, 2C0), output mean at the centre point."""
    problem = linear_problem()
    p, d = 3, problem.y.shape[0]

    def forward(u: Tensor) -> Tensor:
        return torch.sin(u @ problem.A.mT) + 0.1 * (u**2).sum(1, keepdim=True)

    uki = UKI(problem.m0, problem.C0, problem.y, noise_cov=problem.noise)
    points = uki.sigma_points()
    G = forward(points)
    info = uki.update(G)
    Z = torch.cat([G, points], dim=1)
    W = 1 / (2 * p)  # a = 1 for p = 3
    dU, dZ = points[1:] - points[0], Z[1:] - Z[0]
    c_uz = W * dU.mT @ dZ
    c_zz = W * dZ.mT @ dZ + 2 * torch.block_diag(problem.noise, problem.C0)
    gain = torch.linalg.solve(c_zz, c_uz.mT).mT
    target = torch.cat([problem.y, problem.m0])
    torch.testing.assert_close(uki.mean(), points[0] + gain @ (target - Z[0]))
    torch.testing.assert_close(uki.covariance(), W * dU.mT @ dU - gain @ c_uz.mT)
    assert info["misfit"] == pytest.approx(float(misfits(G[:1], problem.y, problem.noise)[0]))
    assert info["iteration"] == 1 and uki.iteration == 1 and d == G.shape[1]


@pytest.mark.parametrize("noise_form", ["dense", "diagonal"])
def test_uki_converges_to_the_linear_gaussian_posterior(noise_form: str) -> None:
    """Errors halve per iteration: within 1e-6 (posterior-sd units) in at most 40 iterations."""
    problem = linear_problem()
    noise = problem.noise if noise_form == "dense" else problem.noise.diagonal()
    if noise_form == "diagonal":
        mean, cov = posterior(problem.A, problem.m0, problem.C0, torch.diag(noise), problem.y)
    else:
        mean, cov = problem.post_mean, problem.post_cov
    sd = cov.diagonal().sqrt()
    uki = UKI(problem.m0, problem.C0, problem.y, noise_cov=noise)
    assert not uki.converged(1e-6)
    uki.update(problem.forward(uki.sigma_points()))
    assert ((uki.mean() - mean) / sd).abs().max() > 1e-2  # not there after one step
    while not uki.converged(1e-7) and uki.iteration < 40:
        uki.update(problem.forward(uki.sigma_points()))
    assert uki.converged(1e-7) and uki.iteration < 40
    assert ((uki.mean() - mean) / sd).abs().max() < 1e-6
    assert ((uki.covariance() - cov) / (sd[:, None] * sd[None, :])).abs().max() < 1e-6


# --------------------------------------------------------------------------------------------------
# Coverage on linear twins
# --------------------------------------------------------------------------------------------------


def twins(seed: int, N: int) -> Iterator[tuple[Linear, Tensor, Tensor]]:
    """N twin experiments: u_true from the prior and y = A u_true + noise, diagonal Γ."""
    base = linear_problem()
    noise_var = base.noise.diagonal()
    gen = torch.Generator().manual_seed(seed)
    L0 = torch.linalg.cholesky(base.C0)
    for _ in range(N):
        u_true = base.m0 + L0 @ torch.randn(3, generator=gen, dtype=F64)
        y = base.A @ u_true + noise_var.sqrt() * torch.randn(10, generator=gen, dtype=F64)
        yield base, u_true, y


def assert_coverage(hits: Tensor, N: int) -> None:
    """Each component's 90 % interval covers u_true in 0.9 ± 3 binomial standard errors."""
    band = 3 * math.sqrt(0.9 * 0.1 / N)
    coverage = hits / N
    assert ((coverage - 0.9).abs() <= band).all(), (coverage, band)


def test_uki_90_percent_intervals_cover_the_truth_in_90_percent_of_twins() -> None:
    N = 200
    hits = torch.zeros(3, dtype=F64)
    for base, u_true, y in twins(seed=7, N=N):
        uki = UKI(base.m0, base.C0, y, noise_cov=base.noise.diagonal())
        while not uki.converged(1e-6) and uki.iteration < 40:
            uki.update(base.forward(uki.sigma_points()))
        half = Z90 * uki.covariance().diagonal().sqrt()
        hits += ((u_true - uki.mean()).abs() <= half).to(F64)
    assert_coverage(hits, N)


def test_eki_90_percent_intervals_cover_the_truth_in_90_percent_of_twins() -> None:
    """J = 200 finite-time EKI; intervals mean ± 1.645 ensemble sd (offline, seeds 0-2 gave
    0.87-0.92: finite ensembles under-spread slightly, well inside the band)."""
    N, J = 200, 200
    gen = torch.Generator().manual_seed(8)
    hits = torch.zeros(3, dtype=F64)
    for base, u_true, y in twins(seed=9, N=N):
        eki = EKI(base.m0, base.C0, y, J, noise_cov=base.noise.diagonal(), generator=gen)
        run_eki(eki, base)
        half = Z90 * eki.covariance().diagonal().sqrt()
        hits += ((u_true - eki.mean()).abs() <= half).to(F64)
    assert_coverage(hits, N)


# --------------------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------------------


def test_eki_with_20_percent_failed_members_still_reaches_the_posterior() -> None:
    """A different fifth of the 2000 members fails at every step; they are resampled.

    Tolerances (offline, 40 seeds, in i.i.d. standard errors as above): the mean's error had an rms
    of 1.9-2.5 and a maximum of 6.5, covariance entries rms 1.2-1.3 and maximum 3.9; required: mean
    within 12 and covariance within 6.
    """
    problem = linear_problem()
    J = 2000
    eki = EKI(
        problem.m0, problem.C0, problem.y, J, noise_cov=problem.noise,
        generator=torch.Generator().manual_seed(11),
    )  # fmt: skip
    history = run_eki(eki, problem, fail=every_fifth)
    assert eki.time == 1.0 and all(h["n_failed"] == J // 5 for h in history)
    assert torch.isfinite(eki.ensemble).all()
    failed = every_fifth(0, J)
    assert not torch.isfinite(history[0]["misfit_per_member"][failed]).any()
    assert torch.isfinite(history[0]["misfit_per_member"][~failed]).all()
    C = problem.post_cov
    mean_se = (C.diagonal() / J).sqrt()
    error = (eki.mean() - problem.post_mean) / mean_se
    assert (error.abs() <= 12).all(), error
    cov_se = ((C.diagonal()[:, None] * C.diagonal()[None, :] + C**2) / J).sqrt()
    assert ((eki.covariance() - C).abs() <= 6 * cov_se).all(), (eki.covariance() - C) / cov_se


def test_eki_raises_ensemble_failure_with_fewer_than_two_successes() -> None:
    problem = linear_problem()
    gen = torch.Generator().manual_seed(0)
    eki = EKI(problem.m0, problem.C0, problem.y, 5, generator=gen)
    before, rng = eki.ensemble, gen.get_state()
    G = problem.forward(eki.ensemble)
    G[:3, 0] = float("nan")
    G[3, 4] = float("inf")  # inf counts as a failure too
    with pytest.raises(EnsembleFailure, match=r"4 of 5 ensemble members.*prior") as caught:
        eki.update(G)
    assert isinstance(caught.value, ValueError)
    assert torch.equal(eki.ensemble, before) and torch.equal(gen.get_state(), rng)
    assert eki.time == 0.0 and eki.iteration == 0
    G[3, 4] = 0.0  # two successes suffice
    assert eki.update(G)["n_failed"] == 3


def test_uki_raises_ensemble_failure_naming_the_failed_sigma_points() -> None:
    problem = linear_problem()
    uki = UKI(problem.m0, problem.C0, problem.y)
    G = problem.forward(uki.sigma_points())
    G[0, 1] = float("nan")
    G[3, 0] = float("inf")
    with pytest.raises(EnsembleFailure, match=r"sigma points \[0, 3\].*narrow the prior"):
        uki.update(G)
    assert uki.iteration == 0 and torch.equal(uki.mean(), problem.m0)


# --------------------------------------------------------------------------------------------------
# Checkpoint and resume
# --------------------------------------------------------------------------------------------------


def round_trip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, weights_only=True)
    return loaded


@pytest.mark.parametrize(
    ("variant", "max_time"), [("finite_time", 1.0), ("tikhonov", 50.0)], ids=["eki", "teki"]
)
def test_eki_resumed_from_a_state_dict_is_bit_identical(variant: str, max_time: float) -> None:
    problem = linear_problem()

    def build(seed: int) -> EKI:
        return EKI(
            problem.m0, problem.C0, problem.y, 30, noise_cov=problem.noise, variant=variant,
            max_time=max_time, generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip

    straight = build(4)
    full = run_eki(straight, problem, fail=every_fifth)  # failures exercise the resampling draws
    first = build(4)
    for _ in range(2):
        G = problem.forward(first.ensemble)
        G[every_fifth(first.iteration, 30)] = float("nan")
        first.update(G)
    resumed = build(99)  # a different seed: everything must come from the state dict
    resumed.load_state_dict(round_trip(first.state_dict()))
    assert resumed.iteration == 2 and resumed.time == first.time
    rest = run_eki(resumed, problem, fail=every_fifth)
    assert torch.equal(resumed.ensemble, straight.ensemble)
    assert resumed.time == straight.time and resumed.iteration == straight.iteration
    assert [h["dt"] for h in rest] == [h["dt"] for h in full[2:]]


def test_uki_resumed_from_a_state_dict_is_bit_identical() -> None:
    problem = linear_problem()

    def forward(u: Tensor) -> Tensor:
        return torch.tanh(problem.forward(u))

    straight = UKI(problem.m0, problem.C0, problem.y, noise_cov=problem.noise)
    for _ in range(8):
        straight.update(forward(straight.sigma_points()))
    first = UKI(problem.m0, problem.C0, problem.y, noise_cov=problem.noise)
    for _ in range(3):
        first.update(forward(first.sigma_points()))
    resumed = UKI(problem.m0, problem.C0, problem.y, noise_cov=problem.noise)
    for _ in range(3):  # elsewhere, also at iteration 3: its prediction must not survive the load
        resumed.update(2 * forward(resumed.sigma_points()))
    resumed.sigma_points()
    resumed.load_state_dict(round_trip(first.state_dict()))
    for _ in range(5):
        resumed.update(forward(resumed.sigma_points()))
    assert torch.equal(resumed.mean(), straight.mean())
    assert torch.equal(resumed.covariance(), straight.covariance())
    assert resumed.iteration == 8 and resumed.converged(1.0) == straight.converged(1.0)


def test_load_state_dict_refuses_a_different_problem() -> None:
    problem = linear_problem()
    eki = EKI(problem.m0, problem.C0, problem.y, 10, generator=torch.Generator().manual_seed(0))
    other = EKI(
        problem.m0, problem.C0, problem.y + 1, 10, generator=torch.Generator().manual_seed(0)
    )
    with pytest.raises(ValueError, match="`data` differs"):
        other.load_state_dict(eki.state_dict())
    uki = UKI(problem.m0, problem.C0, problem.y)
    with pytest.raises(ValueError, match="`alpha_reg`"):
        UKI(problem.m0, problem.C0, problem.y, alpha_reg=0.5).load_state_dict(uki.state_dict())
    with pytest.raises(ValueError, match=r"from EKI, not UKI"):
        uki.load_state_dict(eki.state_dict())


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------

_P = linear_problem()
_GEN = torch.Generator().manual_seed(0)
_NOT_PD = torch.tensor([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: EKI(_P.m0, _P.C0, _P.y, 1, generator=_GEN), r"ensemble_size.*>= 2"),
        (lambda: EKI(_P.m0, _P.C0[:2, :2], _P.y, 10, generator=_GEN), r"prior_cov.*\(3, 3\)"),
        (lambda: EKI(_P.m0, _NOT_PD, _P.y, 10, generator=_GEN), "not positive definite"),
        (lambda: EKI(_P.m0, _P.C0, _P.y[None], 10, generator=_GEN), r"data.*1-D"),
        (lambda: EKI(_P.m0[None], _P.C0, _P.y, 10, generator=_GEN), r"prior_mean.*1-D"),
        (lambda: EKI(_P.m0.tolist(), _P.C0, _P.y, 10, generator=_GEN), "torch.Tensor"),
        (
            lambda: EKI(_P.m0, _P.C0, _P.y, 10, noise_cov=torch.ones(9), generator=_GEN),
            r"noise_cov.*length 10",
        ),
        (
            lambda: EKI(_P.m0, _P.C0, _P.y, 10, noise_cov=-torch.ones(10), generator=_GEN),
            r"noise_cov.*positive",
        ),
        (lambda: EKI(_P.m0, _P.C0, _P.y, 10, variant="map", generator=_GEN), "variant"),
        (lambda: EKI(_P.m0, _P.C0, _P.y, 10, step=-0.1, generator=_GEN), "step"),
        (lambda: EKI(_P.m0, _P.C0, _P.y, 10, max_time=0.0, generator=_GEN), "max_time"),
        (lambda: EKI(_P.m0, _P.C0, _P.y, 10, generator=0), r"torch\.Generator"),
        (lambda: UKI(_P.m0, _P.C0, _P.y, alpha_reg=0.0), r"alpha_reg.*\(0, 1\]"),
        (lambda: UKI(_P.m0, _P.C0, _P.y, update_freq=-1), "update_freq"),
        (lambda: UKI(_P.m0, _NOT_PD, _P.y), "not positive definite"),
        (lambda: UKI(_P.m0, _P.C0, _P.y, noise_cov=torch.ones(10, 9)), r"noise_cov.*\(10, 10\)"),
    ],
)
def test_bad_input_raises_a_value_error_that_names_the_fix(
    build: Callable[[], object], match: str
) -> None:
    with pytest.raises(ValueError, match=match) as caught:
        build()
    assert "\n" not in str(caught.value)


def test_update_with_misshaped_forward_values_raises() -> None:
    eki = EKI(_P.m0, _P.C0, _P.y, 10, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"G.*\(10, 10\).*one row per ensemble member"):
        eki.update(_P.forward(eki.ensemble)[:, :9])
    uki = UKI(_P.m0, _P.C0, _P.y)
    with pytest.raises(ValueError, match=r"G.*\(7, 10\).*one row per sigma point"):
        uki.update(_P.forward(uki.sigma_points())[:6])
    assert eki.iteration == 0 and uki.iteration == 0
