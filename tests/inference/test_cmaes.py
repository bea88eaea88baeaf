"""CMA-ES (through ``cma``) on a quadratic with a known minimum, failed members, and resuming."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from climgrad.inference.cmaes import CMAES

from .linear import linear_gaussian

DTYPE = torch.float64


def batch_objective(problem: dict[str, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The negative log posterior of a (n, p) batch: ½||y - A u||² + ½(u - m0)ᵀ C0⁻¹ (u - m0)."""
    a, y, m0, c0_inv = problem["A"], problem["y"], problem["m0"], problem["C0inv"]

    def objective(U: torch.Tensor) -> torch.Tensor:
        r = y - U @ a.T
        d = U - m0
        return 0.5 * (r**2).sum(-1) + 0.5 * ((d @ c0_inv) * d).sum(-1)

    return objective


def run(es: CMAES, objective: Callable[[torch.Tensor], torch.Tensor], limit: int = 2000) -> None:
    while not es.finished and es.iteration < limit:
        U = es.ask()
        es.tell(U, objective(U))


def test_cmaes_finds_the_analytic_map() -> None:
    problem = linear_gaussian()
    es = CMAES(problem["m0"], 1.0, seed=1)
    assert es.popsize == 7  # cma's default 4 + floor(3 ln 3)
    run(es, batch_objective(problem))
    assert es.finished and es.stop_reason is not None
    u, value = es.best()
    assert u.dtype == DTYPE and u.shape == (3,)
    torch.testing.assert_close(u, problem["mean"], rtol=0, atol=1e-4)
    torch.testing.assert_close(es.mean(), problem["mean"], rtol=0, atol=1e-4)
    assert value == pytest.approx(float(batch_objective(problem)(u[None])[0]), rel=1e-12)


def test_cmaes_converges_with_a_fifth_of_the_members_failing() -> None:
    problem = linear_gaussian()
    objective = batch_objective(problem)
    es = CMAES(problem["m0"], 1.0, seed=2, popsize=10)
    fails = torch.Generator().manual_seed(0)
    failed_total = 0
    while not es.finished and es.iteration < 2000:
        U = es.ask()
        values = objective(U)
        failed = torch.randperm(10, generator=fails)[:2]  # 20 % of the members
        values[failed[0]] = float("nan")
        values[failed[1]] = float("inf")
        es.tell(U, values)
        assert es.failed == 2
        failed_total += es.failed
    assert failed_total == 2 * es.iteration
    u, value = es.best()
    assert np.isfinite(value)
    torch.testing.assert_close(u, problem["mean"], rtol=0, atol=1e-4)


def test_failed_members_rank_last() -> None:
    es = CMAES(torch.zeros(2, dtype=DTYPE), 1.0, seed=0, popsize=4)
    U = es.ask()
    seen: dict[str, list[float]] = {}
    original_tell = es._es.tell

    def spy(solutions: list[np.ndarray], values: list[float]) -> None:
        seen["values"] = values
        original_tell(solutions, values)

    es._es.tell = spy
    es.tell(U, torch.tensor([1.0, float("nan"), 3.0, -2.0], dtype=DTYPE))
    assert seen["values"][0] == 1.0 and seen["values"][2] == 3.0 and seen["values"][3] == -2.0
    assert seen["values"][1] == 3.0 + 5.0  # worst + (worst - best)
    assert es.best()[1] == -2.0 and torch.equal(es.best()[0], U[3])


def test_all_members_failing_is_an_error() -> None:
    es = CMAES(torch.zeros(3, dtype=DTYPE), 0.5, seed=0)
    U = es.ask()
    with pytest.raises(ValueError, match=r"all 7 members failed .* smaller sigma"):
        es.tell(U, torch.full((7,), float("nan"), dtype=DTYPE))
    with pytest.raises(RuntimeError, match="no values told yet"):
        es.best()


def test_resumed_run_is_bit_identical(tmp_path: Path) -> None:
    problem = linear_gaussian()
    objective = batch_objective(problem)

    def fresh(seed: int = 3) -> CMAES:
        return CMAES(problem["m0"], 1.0, seed=seed, max_iterations=40)

    reference = fresh()
    populations = []
    while not reference.finished:
        U = reference.ask()
        populations.append(U)
        reference.tell(U, objective(U))
    assert reference.iteration == 40 and "maxiter" in str(reference.stop_reason)

    first = fresh()
    for k in range(15):
        U = first.ask()
        assert torch.equal(U, populations[k])
        first.tell(U, objective(U))
    torch.save(first.state_dict(), tmp_path / "cmaes.pt")
    first.ask()  # advances the generator after the save: the load must undo this
    state = torch.load(tmp_path / "cmaes.pt", weights_only=True)
    for resumed in (first, fresh(seed=99)):
        resumed.load_state_dict(state)
        assert resumed.iteration == 15
        k = 15
        while not resumed.finished:
            U = resumed.ask()
            assert torch.equal(U, populations[k]), k
            resumed.tell(U, objective(U))
            k += 1
        assert k == 40
        assert torch.equal(resumed.mean(), reference.mean())
        assert torch.equal(resumed.best()[0], reference.best()[0])
        assert resumed.best()[1] == reference.best()[1]


def test_seeds_and_numpy_global_state() -> None:
    state = np.random.get_state()  # noqa: NPY002 - the global generator is what is checked
    try:
        a = CMAES(torch.zeros(3, dtype=DTYPE), 1.0, seed=5).ask()
        after = np.random.get_state()  # noqa: NPY002
        assert (
            np.array_equal(after[1], state[1]) and after[2] == state[2]
        )  # neither used nor seeded
        np.random.seed(123)  # noqa: NPY002 - other code drawing from the global generator ...
        np.random.rand(10)  # noqa: NPY002
        b = CMAES(torch.zeros(3, dtype=DTYPE), 1.0, seed=5).ask()  # ... changes nothing
        c = CMAES(torch.zeros(3, dtype=DTYPE), 1.0, seed=6).ask()
        assert torch.equal(a, b) and not torch.equal(a, c)
    finally:
        np.random.set_state(state)  # noqa: NPY002


def test_scaling_sets_the_initial_spread_per_coordinate() -> None:
    scaling = torch.tensor([1.0, 10.0], dtype=DTYPE)
    es = CMAES(torch.zeros(2, dtype=DTYPE), 0.5, seed=0, popsize=4000, scaling=scaling)
    spread = es.ask().std(dim=0)
    torch.testing.assert_close(spread, 0.5 * scaling, rtol=0.05, atol=0)


def test_bad_arguments() -> None:
    zeros = torch.zeros(3, dtype=DTYPE)
    with pytest.raises(ValueError, match="`sigma` must be positive"):
        CMAES(zeros, 0.0)
    with pytest.raises(ValueError, match=r"flat \(p,\) tensor"):
        CMAES(zeros[None], 1.0)
    with pytest.raises(ValueError, match="`popsize` must be an integer >= 2"):
        CMAES(zeros, 1.0, popsize=1)
    with pytest.raises(ValueError, match=r"`scaling` must be a \(3,\) tensor"):
        CMAES(zeros, 1.0, scaling=torch.ones(2))
    es = CMAES(zeros, 1.0)
    U = es.ask()
    with pytest.raises(ValueError, match="one value per member"):
        es.tell(U, torch.zeros(3))
    with pytest.raises(ValueError, match=r"`U` must be the \(7, 3\) population"):
        es.tell(U[:3], torch.zeros(7))
    with pytest.raises(ValueError, match="for 3 parameters, this optimiser has 2"):
        CMAES(torch.zeros(2, dtype=DTYPE), 1.0).load_state_dict(es.state_dict())
