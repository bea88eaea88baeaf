"""Ensemble members off the main process: the same numbers, dead workers survived, the cache.

The Dask tests share one ``LocalCluster`` of two single-threaded worker processes (started once
for the module through the executor registry, as a run would start it); its scheduler gives up
on a chunk at the first worker it kills and keeps one chunk per worker, so that a killed worker
loses exactly the chunk that killed it.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import torch
from torch import Tensor

from climgrad.calibration import executors
from climgrad.calibration.config import CalibrateConfig
from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.executors import (
    _SHARED,
    ChunkTask,
    ExecutorSettings,
    MemberExecutor,
    SerialExecutor,
    chunk_bounds,
    ensemble_scope,
    shared_executor,
)
from climgrad.calibration.experiment import as_config, build_experiment
from climgrad.calibration.loop import run_calibration
from climgrad.calibration.methods import build_method
from climgrad.calibration.methods.ensemble import EKIMethod
from climgrad.calibration.posterior import Evaluator, PosteriorTarget

from .conftest import compose_config

TWIN = ["experiment=twin_ebm1d", "logger=none", "trainer.progress=false", "method.derived_draws=0"]
EKI = [*TWIN, "method=eki", "method.ensemble_size=20"]
DASK = [
    "method.executor=dask",
    "method.workers=2",
    "+method.dask.config.distributed.scheduler.allowed-failures=0",
    "+method.dask.config.distributed.scheduler.worker-saturation=1.0",
]


def _config(overrides: list[str]) -> CalibrateConfig:
    return as_config(compose_config(overrides))


def _eki(overrides: list[str]) -> EKIMethod:
    method = build_method(build_experiment(_config(overrides)))
    assert isinstance(method, EKIMethod)
    return method


def _members(method: EKIMethod) -> Tensor:
    """What an EKI step evaluates: the members and their mean."""
    return torch.cat([method.eki.ensemble, method.eki.mean().unsqueeze(0)])


def _same(a: Tensor, b: Tensor) -> bool:
    """Bit-identical, NaN rows included."""
    return bool(torch.equal(torch.isnan(a), torch.isnan(b))) and bool(
        torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
    )


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[MemberExecutor]:
    pytest.importorskip("distributed", reason="the distributed extra is not installed")
    settings = ExecutorSettings.from_config(_config([*EKI, *DASK]).method)
    with shared_executor(settings) as executor:
        yield executor


@pytest.fixture(scope="module")
def reference() -> tuple[Tensor, Tensor]:
    """Members of the first EKI step and their predictions in process (the batched path)."""
    method = _eki(EKI)
    U = _members(method)
    return U, method.target.evaluator(U)


@dataclasses.dataclass(frozen=True)
class DyingTask(ChunkTask):
    """Kills its worker process on the chunk holding the member whose first value is
    ``poison``."""

    poison: float = math.nan

    def __call__(self, U: Tensor, state: Mapping[str, Tensor] | None, batched: bool) -> Tensor:
        if bool((U[:, 0] == self.poison).any()):
            os._exit(13)
        return super().__call__(U, state, batched)


def test_chunks_cover_the_members() -> None:
    assert chunk_bounds(21, 2) == [slice(0, 11), slice(11, 21)]
    assert chunk_bounds(3, 8) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    assert chunk_bounds(10, 2, chunk_size=4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert chunk_bounds(0, 2) == []


def test_executor_settings_are_checked() -> None:
    with pytest.raises(CalibrationError, match=r"method\.executor='mpi' is unknown"):
        build_method(build_experiment(_config([*EKI, "method.executor=mpi"])))
    with pytest.raises(CalibrationError, match=r"method\.dask\.cluster=slurm needs method\.dask"):
        ExecutorSettings.from_config(
            _config([*EKI, "method.executor=dask", "method.dask.cluster=slurm"]).method
        )
    assert ExecutorSettings.from_config(
        _config([*EKI, "method.executor=processes"]).method
    ).member_cache
    assert not ExecutorSettings.from_config(_config(EKI).method).member_cache


def test_a_slurm_cluster_is_configured_from_the_method_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    distributed = pytest.importorskip("distributed")
    jobqueue = pytest.importorskip("dask_jobqueue")
    started: dict[str, object] = {}

    class FakeSLURMCluster:
        def __init__(self, **kwargs: object) -> None:
            started["kwargs"] = kwargs

        def scale(self, *, jobs: int) -> None:
            started["jobs"] = jobs

        def close(self) -> None:
            started["closed"] = True

    class FakeClient:
        def __init__(self, cluster: object) -> None:
            started["client"] = cluster

        def close(self) -> None:
            pass

    monkeypatch.setattr(jobqueue, "SLURMCluster", FakeSLURMCluster)
    monkeypatch.setattr(distributed, "Client", FakeClient)
    config = _config(
        [
            *EKI,
            "method.executor=dask",
            "method.dask.cluster=slurm",
            "method.dask.scale=3",
            "+method.dask.cluster_kwargs={queue: normal, cores: 4, processes: 4, memory: 8GB, "
            "walltime: '01:00:00'}",
        ]
    )
    settings = ExecutorSettings.from_config(config.method)
    with shared_executor(settings) as executor:
        assert executor.workers == 12  # chunks: 3 jobs of 4 worker processes
        assert started["jobs"] == 3
        assert started["kwargs"] == {
            "queue": "normal",
            "cores": 4,
            "processes": 4,
            "memory": "8GB",
            "walltime": "01:00:00",
        }
    assert started["closed"]


def test_dask_gives_the_in_process_predictions_and_eki_update(
    dask_cluster: MemberExecutor, reference: tuple[Tensor, Tensor]
) -> None:
    U, expected = reference
    in_process, on_dask = _eki(EKI), _eki([*EKI, *DASK])
    evaluator = on_dask.target.evaluator
    assert _same(evaluator(U), expected)
    assert evaluator.executor is dask_cluster  # the module's cluster, shared through settings
    submitted = dask_cluster.submitted
    a, b = in_process.step(), on_dask.step()
    assert dask_cluster.submitted == submitted + 2  # one chunk per worker
    assert torch.equal(in_process.eki.ensemble, on_dask.eki.ensemble)
    assert a.loss == b.loss and a.scalars == b.scalars
    evaluator.close()
    assert evaluator.executor is None and _SHARED  # the fixture still holds the cluster


def test_a_killed_worker_loses_its_chunk_and_the_run_goes_on(
    dask_cluster: MemberExecutor,
    reference: tuple[Tensor, Tensor],
    caplog: pytest.LogCaptureFixture,
) -> None:
    U, expected = reference
    method = _eki([*EKI, *DASK])
    evaluator = method.target.evaluator
    seen: list[Tensor] = []
    evaluator.hooks.append(lambda _, G: seen.append(G))
    normal = evaluator.task
    evaluator.task = DyingTask(normal.config_yaml, normal.dtype, poison=float(U[15, 0]))
    first, second = chunk_bounds(U.shape[0], 2)
    # The EKI step's members are U: the worker given the second chunk dies.
    with caplog.at_level(logging.WARNING, logger="climgrad.calibrate"):
        result = method.step()
    assert f"Members {second.start}-{second.stop - 1} failed" in caplog.text
    assert "its worker died: KilledWorker" in caplog.text
    (G,) = seen
    assert bool(torch.isnan(G[second]).all())  # the chunk that killed its worker
    assert _same(G[first], expected[first])
    # The step went on without those members (the mean, the last row, among them).
    assert result.scalars["eki/failed_members"] == second.stop - second.start - 1
    assert math.isinf(result.loss)
    # The cluster restarted the worker: everything comes back again.
    evaluator.task = normal
    assert _same(evaluator(U), expected)
    evaluator.close()


def test_processes_give_the_in_process_predictions_and_survive_a_dead_worker(
    reference: tuple[Tensor, Tensor],
) -> None:
    U, expected = reference
    problem = build_experiment(_config([*EKI, "method.executor=processes", "method.workers=2"]))
    first, second = PosteriorTarget(problem), PosteriorTarget(problem)
    assert _same(first.evaluator(U), expected)
    assert _same(second.evaluator(U[:5]), expected[:5])
    executor = first.evaluator.executor
    assert executor is not None and executor is second.evaluator.executor  # one pool
    assert executor.submitted == 4
    # A worker that dies loses the chunk it was running, and no other.
    normal = first.evaluator.task
    first.evaluator.task = DyingTask(normal.config_yaml, normal.dtype, poison=float(U[15, 0]))
    G = first.evaluator(U)
    head, tail = chunk_bounds(U.shape[0], 2)
    assert bool(torch.isnan(G[tail]).all()) and _same(G[head], expected[head])
    first.evaluator.close()
    assert executor in [entry[0] for entry in _SHARED.values()]  # still used by the second
    del second
    gc.collect()  # the last evaluator collected: its pool is shut down
    assert executor not in [entry[0] for entry in _SHARED.values()]


def test_finished_chunks_are_not_solved_again(
    tmp_path: Path, reference: tuple[Tensor, Tensor]
) -> None:
    U, expected = reference
    problem = build_experiment(_config(EKI))
    target = PosteriorTarget(problem)
    executor = SerialExecutor(workers=3)
    evaluator = Evaluator(problem, target.vector, executor=executor, cache_dir=tmp_path)
    assert _same(evaluator(U), expected)
    assert executor.submitted == 3 and len(list(tmp_path.glob("*.pt"))) == 3
    # The same members again (a resumed iteration): nothing goes to the workers.
    assert _same(evaluator(U), expected)
    assert executor.submitted == 3 and evaluator.cached == U.shape[0]
    # A chunk that did not finish before the interruption is the only one solved again.
    sorted(tmp_path.glob("*.pt"))[0].unlink()
    assert _same(evaluator(U), expected)
    assert executor.submitted == 4
    # Another problem (other observation errors) does not read this one's predictions.
    other = build_experiment(_config([*EKI, "data.observations.surface_temperature.error=2.0"]))
    again = Evaluator(other, target.vector, executor=executor, cache_dir=tmp_path)
    assert not _same(again(U), expected)
    assert executor.submitted == 7


def test_a_chunk_that_raises_is_failed_members_unless_all_do(
    reference: tuple[Tensor, Tensor],
) -> None:
    U, expected = reference
    problem = build_experiment(_config(EKI))
    evaluator = Evaluator(problem, PosteriorTarget(problem).vector, executor=SerialExecutor(3))
    task = evaluator.task

    def broken(rows: Tensor, state: Mapping[str, Tensor] | None, batched: bool) -> Tensor:
        if bool((rows == U[-1]).all(dim=1).any()):
            raise OSError("no such file on the compute node")
        return task.run(rows, state, batched)

    evaluator.task = broken  # type: ignore[assignment]
    G = evaluator(U)  # chunks of 7 members: the last one holds U[-1]
    assert _same(G[:14], expected[:14])
    assert bool(torch.isnan(G[14:]).all())
    with pytest.raises(CalibrationError, match="every chunk of 1 members raised"):
        evaluator(U[-1:])


def test_a_run_scope_sets_the_cache_and_closes_its_executors_even_on_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: tuple[Tensor, Tensor]
) -> None:
    U, expected = reference
    monkeypatch.setattr(executors, "build_executor", lambda s: SerialExecutor(s.workers))
    problem = build_experiment(_config([*EKI, "method.executor=processes", "method.workers=3"]))
    evaluator = PosteriorTarget(problem).evaluator
    with pytest.raises(RuntimeError, match="the run failed"):
        with ensemble_scope(tmp_path / "cache"):
            assert evaluator.cache_dir == tmp_path / "cache"
            assert _same(evaluator(U), expected)
            started = evaluator.executor
            assert started is not None and not started.closed
            raise RuntimeError("the run failed")
    assert started.closed and evaluator.cache_dir is None
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3
    assert _same(evaluator(U), expected)  # called again: another executor
    assert evaluator.executor is not started
    evaluator.close()


def test_a_run_on_dask_ends_where_the_batched_run_does(
    tmp_path: Path, dask_cluster: MemberExecutor
) -> None:
    short = [*EKI, "method.max_iterations=2"]
    batched = run_calibration(compose_config(short), tmp_path / "batched")
    submitted = dask_cluster.submitted
    with ensemble_scope(tmp_path / "cache"):
        on_dask = run_calibration(compose_config([*short, *DASK]), tmp_path / "dask")
    assert dask_cluster.submitted > submitted
    assert on_dask["parameters"] == batched["parameters"]  # bit-identical
    assert on_dask["model_solves"] == batched["model_solves"]
    assert not dask_cluster.closed  # started before the run: not the run's to close
    # The same iterations again (a resumed run replays those after its checkpoint): all cached.
    submitted = dask_cluster.submitted
    with ensemble_scope(tmp_path / "cache"):
        again = run_calibration(compose_config([*short, *DASK]), tmp_path / "again")
    assert dask_cluster.submitted == submitted
    assert again["parameters"] == batched["parameters"]
