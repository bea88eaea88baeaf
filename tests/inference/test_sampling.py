"""NUTS (through Pyro) on a linear-Gaussian posterior known in closed form, and its diagnostics."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
import torch

from climgrad.inference.sampling import NutsProgress, NutsResult, nuts

from .linear import linear_gaussian

DTYPE = torch.float64


def potential_of(problem: dict[str, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    a, y, m0, c0_inv = problem["A"], problem["y"], problem["m0"], problem["C0inv"]

    def potential(u: torch.Tensor) -> torch.Tensor:
        r = y - a @ u
        d = u - m0
        return 0.5 * r @ r + 0.5 * d @ c0_inv @ d

    return potential


def check_posterior(result: NutsResult, problem: dict[str, torch.Tensor], r_hat: float) -> None:
    """Mean and covariance within Monte Carlo error (ESS-based standard errors)."""
    mean, cov = problem["mean"], problem["cov"]
    flat = result.samples.reshape(-1, 3)
    sd = cov.diagonal().sqrt()
    ess = result.ess
    assert bool((ess > 50).all()), ess
    assert bool((result.r_hat < r_hat).all()), result.r_hat
    assert bool(((flat.mean(0) - mean).abs() < 4 * sd / ess.sqrt()).all()), (flat.mean(0), mean)
    # Var of a sample covariance entry: (C_ii C_jj + C_ij^2) / n, here with n = min ESS.
    se = ((torch.outer(sd, sd) ** 2 + cov**2) / ess.min()).sqrt()
    assert bool(((torch.cov(flat.T) - cov).abs() < 5 * se).all()), (torch.cov(flat.T), cov)


def test_nuts_reproduces_the_linear_gaussian_posterior() -> None:
    problem = linear_gaussian()
    result = nuts(
        potential_of(problem), problem["m0"], num_samples=500, warmup=300, chains=2, seed=1
    )
    assert result.samples.shape == (2, 500, 3) and result.samples.dtype == DTYPE
    assert result.acceptance.shape == (2, 500)
    assert result.step_size.shape == (2,) and bool((result.step_size > 0).all())
    assert result.divergences.tolist() == [0, 0]
    assert result.ess.shape == (3,) and result.r_hat.shape == (3,)
    assert 0.6 < float(result.acceptance.mean()) <= 1.0
    check_posterior(result, problem, r_hat=1.05)
    # The recorded potential is that of the recorded draw.
    potential = potential_of(problem)
    torch.testing.assert_close(result.potential[1, -1], potential(result.samples[1, -1]))


@pytest.mark.slow
def test_nuts_long_run_meets_the_usual_thresholds() -> None:
    problem = linear_gaussian(seed=5)
    result = nuts(
        potential_of(problem),
        problem["m0"],
        num_samples=2000,
        warmup=1000,
        chains=4,
        seed=2,
        dense_mass=True,
    )
    assert bool((result.ess > 400).all()), result.ess
    check_posterior(result, problem, r_hat=1.01)
    assert int(result.divergences.sum()) == 0


def test_same_seed_gives_identical_samples_and_leaves_global_rng_alone() -> None:
    problem = linear_gaussian()
    potential = potential_of(problem)
    state = torch.get_rng_state()
    first = nuts(potential, problem["m0"], num_samples=15, warmup=15, chains=2, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    second = nuts(potential, problem["m0"], num_samples=15, warmup=15, chains=2, seed=7)
    assert torch.equal(first.samples, second.samples)
    assert torch.equal(first.acceptance, second.acceptance)
    other = nuts(potential, problem["m0"], num_samples=15, warmup=15, chains=2, seed=8)
    assert not torch.equal(first.samples, other.samples)
    # Chains are independent of each other: chain 0 is the same with one chain.
    single = nuts(potential, problem["m0"], num_samples=15, warmup=15, chains=1, seed=7)
    assert torch.equal(single.samples[0], first.samples[0])
    assert not torch.equal(first.samples[0], first.samples[1])


def test_per_draw_acceptance_and_callback() -> None:
    problem = linear_gaussian()
    seen: list[NutsProgress] = []
    result = nuts(
        potential_of(problem),
        problem["m0"],
        num_samples=12,
        warmup=8,
        chains=2,
        seed=3,
        callback=seen.append,
    )
    assert len(seen) == 2 * (8 + 12)
    assert [s.chain for s in seen] == [0] * 20 + [1] * 20
    assert [s.warmup for s in seen[:20]] == [True] * 8 + [False] * 12
    assert [s.iteration for s in seen[8:20]] == list(range(12))
    for chain in range(2):
        last = seen[20 * chain + 19]
        assert torch.equal(last.u, result.samples[chain, -1])
        assert last.step_size == float(result.step_size[chain])
        # The per-draw probabilities average to Pyro's running mean.
        assert math.isclose(
            float(result.acceptance[chain].mean()), last.mean_accept_prob, abs_tol=1e-12
        )
    assert bool(((result.acceptance >= 0) & (result.acceptance <= 1)).all())


def test_starts_per_chain_and_inference_data() -> None:
    problem = linear_gaussian()
    starts = problem["mean"] + torch.tensor([[0.1, 0.0, 0.0], [0.0, -0.1, 0.0]], dtype=DTYPE)
    result = nuts(potential_of(problem), starts, num_samples=10, warmup=5, chains=2, seed=0)
    data = result.to_inference_data(names=["a", "b", "c"])
    assert data.posterior["u"].shape == (2, 10, 3)
    assert list(data.posterior["u"].coords["parameter"].values) == ["a", "b", "c"]
    assert data.sample_stats["diverging"].shape == (2, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    torch.testing.assert_close(
        torch.as_tensor(arviz.ess(data, method="bulk")["u"].values), result.ess
    )
    torch.testing.assert_close(
        torch.as_tensor(arviz.rhat(data, method="rank")["u"].values), result.r_hat
    )


def test_divergences_at_a_hard_wall_are_counted_per_draw() -> None:
    # A standard normal cut at u0 = 0.3 (potential +inf beyond): trajectories that cross the wall
    # have an infinite energy error, i.e. diverge.
    def walled(u: torch.Tensor) -> torch.Tensor:
        return 0.5 * (u**2).sum() + torch.where(u[0] > 0.3, math.inf, 0.0)

    result = nuts(walled, torch.zeros(2, dtype=DTYPE), num_samples=60, warmup=20, chains=2)
    assert int(result.divergences.sum()) > 0
    assert result.divergences.dtype == torch.int64 and result.divergent.shape == (2, 60)
    assert bool((result.samples[..., 0] <= 0.3).all())
    assert bool(torch.isfinite(result.potential).all())


def test_short_runs_give_nan_diagnostics_instead_of_failing() -> None:
    problem = linear_gaussian()
    one = nuts(potential_of(problem), problem["m0"], num_samples=1, warmup=0, chains=1)
    assert one.samples.shape == (1, 1, 3)
    assert bool(one.ess.isnan().all()) and bool(one.r_hat.isnan().all())
    single = nuts(potential_of(problem), problem["m0"], num_samples=8, warmup=4, chains=1)
    assert bool((single.ess > 0).all()) and bool(single.r_hat.isnan().all())


def test_bad_inputs_get_one_line_errors() -> None:
    problem = linear_gaussian()
    potential = potential_of(problem)
    m0 = problem["m0"]
    with pytest.raises(ValueError, match="`num_samples` must be an integer >= 1"):
        nuts(potential, m0, num_samples=0, warmup=5)
    with pytest.raises(ValueError, match="`chains` must be an integer >= 1"):
        nuts(potential, m0, num_samples=5, warmup=5, chains=0)
    with pytest.raises(ValueError, match="`target_accept` must be in"):
        nuts(potential, m0, num_samples=5, warmup=5, target_accept=1.0)
    with pytest.raises(ValueError, match=r"shape \(p,\) or \(chains, p\) = \(4, p\)"):
        nuts(potential, torch.zeros(3, 3, dtype=DTYPE), num_samples=5, warmup=5)

    def outside_support(u: torch.Tensor) -> torch.Tensor:
        return potential(u) + torch.where(u[0] < 100.0, math.inf, 0.0)

    message = (
        "the log posterior is not finite at the starting point; start from a point inside the "
        "prior's support"
    )
    with pytest.raises(ValueError, match=message) as caught:
        nuts(outside_support, m0, num_samples=5, warmup=5)
    assert "\n" not in str(caught.value)
    starts = torch.stack([m0, m0.new_tensor([math.inf, 0.0, 0.0])])
    with pytest.raises(ValueError, match="non-finite entries"):
        nuts(potential, starts, num_samples=5, warmup=5, chains=2)

    def inside_ball(u: torch.Tensor) -> torch.Tensor:
        return potential(u) + torch.where((u - m0).norm() > 0.05, math.inf, 0.0)

    with pytest.raises(ValueError, match="jittered start of chain 0; pass a smaller jitter"):
        nuts(inside_ball, m0, num_samples=5, warmup=5)
    with pytest.raises(ValueError, match="starting point of chain 1; start from a point inside"):
        nuts(inside_ball, torch.stack([m0, m0 + 1]), num_samples=5, warmup=5, chains=2)
    with pytest.raises(ValueError, match="scalar tensor"):
        nuts(lambda u: u * 2, m0, num_samples=5, warmup=5)
    with pytest.raises(ValueError, match="gradient of the log posterior is not finite"):
        nuts(lambda u: (u**2).sum() + u[0].abs().sqrt() * 0, m0 * 0, num_samples=5, warmup=5)
