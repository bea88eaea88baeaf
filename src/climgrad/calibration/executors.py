"""Where the members of an ensemble are evaluated: in this process, in worker processes, on Dask.

The :class:`~climgrad.calibration.posterior.Evaluator` cuts a batch of parameter vectors into
*chunks* of members and hands each chunk to a :class:`MemberExecutor` (``method.executor``):

* ``batched`` (default): no executor; the whole batch in this process, as one batched solve where
  the model family has one;
* ``processes`` (:class:`ProcessExecutor`): ``method.workers`` spawned processes on this machine
  (each a one-process :class:`concurrent.futures.ProcessPoolExecutor`);
* ``dask`` (:class:`DaskExecutor`): a :class:`distributed.Client` on a ``LocalCluster`` of
  ``method.workers`` single-threaded worker processes, on a ``dask_jobqueue.SLURMCluster``
  (``method.dask.cluster: slurm``), or on a running scheduler (``method.dask.address``).

A chunk runs :class:`ChunkTask` in a worker: the worker builds the run's problem from the resolved
config once (:func:`~climgrad.calibration.experiment.build_experiment`, on the CPU, one torch
thread: compiled radiation codes are not thread-safe), loads the model state the chunk was sent
with, and evaluates the chunk with the family's batched path (member by member where there is
none), exactly as the in-process evaluator would: on the CPU in float64 the predictions are
bit-identical to the ``batched`` path's wherever the members of a batch solve independently.

A chunk whose worker dies, or that raises, comes back as a :class:`ChunkFailure`; the evaluator
turns it into rows of NaN, the failed members the ensemble methods already handle.

Executors are shared in a process: the evaluators of one run (a hybrid's warm start and its
Laplace step) that ask for the same settings get the same pool or cluster
(:func:`acquire_executor`); it is shut down when the last of them closes, at the end of the
run's :func:`ensemble_scope` (which also gives the evaluators the run's member cache), or at exit.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import json
import logging
import math
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from climgrad.calibration.errors import CalibrationError

if TYPE_CHECKING:
    from climgrad.calibration.config import MethodConfig
    from climgrad.calibration.experiment import Problem
    from climgrad.calibration.posterior import Evaluator

__all__ = [
    "EXECUTORS",
    "ChunkFailure",
    "ChunkTask",
    "DaskExecutor",
    "ExecutorSettings",
    "MemberExecutor",
    "ProcessExecutor",
    "SerialExecutor",
    "acquire_executor",
    "build_executor",
    "chunk_bounds",
    "default_workers",
    "ensemble_scope",
    "scope_cache_dir",
    "shared_executor",
]

log = logging.getLogger("climgrad.calibrate")

#: ``method.executor`` values.
EXECUTORS = ("batched", "processes", "dask")
#: ``method.dask.cluster`` values.
DASK_CLUSTERS = ("local", "slurm")


def default_workers() -> int:
    """The CPUs this process may run on (``method.workers: null``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class ExecutorSettings:
    """``method.executor`` and its options, checked (see :class:`MethodConfig`).

    Attributes:
        kind: ``batched``, ``processes`` or ``dask``.
        workers: Worker processes (``processes``, a Dask ``LocalCluster``); the number of
            chunks a batch is cut into by default (a SLURM cluster without ``method.workers``:
            jobs x ``processes`` per job).
        chunk_size: Members per chunk (``None``: one chunk per worker).
        member_cache: Record finished chunks on disk where the evaluator has a cache folder.
        dask_cluster: ``local`` or ``slurm``.
        dask_address: A running scheduler to connect to (``None``: start a cluster).
        dask_cluster_kwargs: Keyword arguments of the cluster (JSON, sorted keys).
        dask_scale: SLURM jobs to start (``None``: ``workers``).
        dask_config: Dask settings while the cluster starts (JSON, sorted keys).
    """

    kind: str = "batched"
    workers: int = 1
    chunk_size: int | None = None
    member_cache: bool = False
    dask_cluster: str = "local"
    dask_address: str | None = None
    dask_cluster_kwargs: str = "{}"
    dask_scale: int | None = None
    dask_config: str = "{}"

    @classmethod
    def from_config(cls, config: MethodConfig) -> ExecutorSettings:
        """Check ``method.executor``, ``method.workers``, ... and gather them.

        Raises:
            CalibrationError: An unknown executor or cluster, or a count below one.
        """
        kind = str(config.executor)
        if kind not in EXECUTORS:
            raise CalibrationError(
                f"method.executor={kind!r} is unknown; use one of {', '.join(EXECUTORS)}."
            )
        dask = config.dask
        slurm = kind == "dask" and dask.cluster == "slurm" and dask.address in (None, "")
        if config.workers is not None:
            workers = int(config.workers)
        elif slurm:
            if dask.scale is None:
                raise CalibrationError(
                    "method.dask.cluster=slurm needs method.dask.scale (the SLURM jobs to "
                    "start) or method.workers."
                )
            processes = int(dict(dask.cluster_kwargs).get("processes") or 1)
            workers = int(dask.scale) * processes
        else:
            workers = default_workers()
        if workers < 1:
            raise CalibrationError(f"method.workers must be >= 1 (or null); got {workers}.")
        chunk_size = None if config.chunk_size is None else int(config.chunk_size)
        if chunk_size is not None and chunk_size < 1:
            raise CalibrationError(f"method.chunk_size must be >= 1 (or null); got {chunk_size}.")
        cache = config.member_cache
        if dask.cluster not in DASK_CLUSTERS:
            raise CalibrationError(
                f"method.dask.cluster={dask.cluster!r} is unknown; use one of "
                f"{', '.join(DASK_CLUSTERS)} (or method.dask.address=<scheduler>)."
            )
        if dask.scale is not None and int(dask.scale) < 1:
            raise CalibrationError(f"method.dask.scale must be >= 1 (or null); got {dask.scale}.")
        return cls(
            kind=kind,
            workers=workers,
            chunk_size=chunk_size,
            member_cache=(kind != "batched") if cache is None else bool(cache),
            dask_cluster=str(dask.cluster),
            dask_address=None if dask.address in (None, "") else str(dask.address),
            dask_cluster_kwargs=_json(dask.cluster_kwargs),
            dask_scale=None if dask.scale is None else int(dask.scale),
            dask_config=_json(dask.config),
        )


def _json(mapping: Any) -> str:
    return json.dumps(_plain(mapping), sort_keys=True, default=str)


def _plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


def _dotted(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping) and value:
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def chunk_bounds(members: int, chunks: int, chunk_size: int | None = None) -> list[slice]:
    """Row ranges of the chunks of ``members`` rows: ``chunk_size`` each (the last shorter), or
    ``chunks`` of nearly equal size (the first ones one longer)."""
    if members <= 0:
        return []
    size = chunk_size if chunk_size is not None else math.ceil(members / max(chunks, 1))
    count = math.ceil(members / size)
    if chunk_size is None:
        # Nearly equal sizes, like torch.tensor_split.
        base, extra = divmod(members, count)
        bounds, start = [], 0
        for index in range(count):
            stop = start + base + (1 if index < extra else 0)
            bounds.append(slice(start, stop))
            start = stop
        return bounds
    return [slice(start, min(start + size, members)) for start in range(0, members, size)]


# ---------------------------------------------------------------------------------------------
# What a worker runs


_WORKER_LOCK = threading.Lock()
_WORKER_PROBLEMS: dict[str, tuple[Problem, Evaluator]] = {}
_SINGLE_THREAD = False


def _single_thread() -> None:
    """One torch thread in this (worker) process; OpenMP codes started later inherit one."""
    global _SINGLE_THREAD
    if _SINGLE_THREAD:
        return
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"
    torch.set_num_threads(1)
    _SINGLE_THREAD = True


@dataclass(frozen=True)
class ChunkTask:
    """The function a worker runs on a chunk: ``task(U, state, batched) -> G``.

    Picklable: it carries the run's resolved config (YAML), not the model. Each worker process
    builds the problem once (on the CPU, in ``dtype``) and keeps it; a call loads the parent's
    model ``state`` (its non-learnt parameters and buffers: the worker then sees the same model),
    and evaluates ``U`` ``(n, p)`` with an in-process :class:`Evaluator` (``batched``: the
    family's batched path where it has one) into ``G`` ``(n, d)``, NaN rows for failed members.

    Attributes:
        config_yaml: The resolved config (:func:`~climgrad.calibration.experiment.config_yaml`).
        dtype: The parent problem's dtype.
    """

    config_yaml: str
    dtype: torch.dtype = torch.float64

    @property
    def key(self) -> str:
        """Identifies the problem a worker builds (config and dtype)."""
        text = f"{self.config_yaml}\n{self.dtype}"
        return hashlib.sha256(text.encode()).hexdigest()

    def __call__(self, U: Tensor, state: Mapping[str, Tensor] | None, batched: bool) -> Tensor:
        """Evaluate a chunk in a worker process (one torch thread)."""
        _single_thread()
        return self.run(U, state, batched)

    def run(self, U: Tensor, state: Mapping[str, Tensor] | None, batched: bool) -> Tensor:
        """Evaluate a chunk in this process (the problem built once and kept)."""
        with _WORKER_LOCK:  # one chunk at a time per process: the models are not thread-safe
            problem, evaluator = self._problem()
            if state is not None:
                problem.model.load_state_dict(dict(state))
            evaluator.batched = bool(batched) and problem.adapter.batched
            return evaluator(U).cpu()

    def _problem(self) -> tuple[Problem, Evaluator]:
        key = self.key
        if key not in _WORKER_PROBLEMS:
            from omegaconf import OmegaConf

            from climgrad.calibration.experiment import as_config, build_experiment
            from climgrad.calibration.posterior import Evaluator, ParameterVector

            config = as_config(OmegaConf.create(self.config_yaml))  # type: ignore[arg-type]
            problem = build_experiment(config, device=torch.device("cpu"), dtype=self.dtype)
            evaluator = Evaluator(problem, ParameterVector(problem.model), executor="batched")
            evaluator.settings = dataclasses.replace(evaluator.settings, member_cache=False)
            _WORKER_PROBLEMS.clear()  # one run's problem per worker at a time
            _WORKER_PROBLEMS[key] = (problem, evaluator)
        return _WORKER_PROBLEMS[key]


def _init_process_worker() -> None:
    _single_thread()


# ---------------------------------------------------------------------------------------------
# Executors


@dataclass(frozen=True)
class ChunkFailure:
    """A chunk that did not come back: its worker died (``lost``) or it raised."""

    error: BaseException
    lost: bool

    def describe(self) -> str:
        what = "its worker died" if self.lost else "it raised"
        return f"{what}: {type(self.error).__name__}: {self.error}"


Call = tuple[Callable[..., Any], tuple[Any, ...]]


class MemberExecutor:
    """Runs chunks of members somewhere; concurrent.futures-style (``submit``, ``close``, a
    context manager).

    Attributes:
        name: ``processes``, ``dask``, ``serial``.
        workers: How many chunks run at once (the default number of chunks).
        submitted: Chunks submitted so far.
    """

    name = "executor"

    def __init__(self, workers: int = 1) -> None:
        self.workers = int(workers)
        self.submitted = 0
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Any:
        """Schedule ``fn(*args)``; a future (``.result()`` returns or raises)."""
        raise NotImplementedError

    def is_lost(self, error: BaseException) -> bool:
        """Whether ``error`` means the worker running the chunk died (not that it raised)."""
        return False

    def run_all(self, calls: Sequence[Call]) -> list[Any]:
        """Run the calls at once; each one's result, or a :class:`ChunkFailure`."""
        futures = [self.submit(fn, *args) for fn, args in calls]
        return [self._outcome(future) for future in futures]

    def _outcome(self, future: Any) -> Any:
        try:
            return future.result()
        except Exception as err:
            return ChunkFailure(err, self.is_lost(err))

    def close(self) -> None:
        """Shut the workers down (idempotent)."""
        self._closed = True

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> MemberExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SerialExecutor(MemberExecutor):
    """Chunks one after the other in this process (tests, debugging): the chunk and cache path
    of the distributed executors without their processes."""

    name = "serial"

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> concurrent.futures.Future[Any]:
        self.submitted += 1
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            if isinstance(fn, ChunkTask):
                future.set_result(fn.run(*args))  # not __call__: keep this process's threads
            else:
                future.set_result(fn(*args))
        except Exception as err:
            future.set_exception(err)
        return future


class ProcessExecutor(MemberExecutor):
    """``workers`` spawned processes on this machine (``method.executor=processes``).

    Each worker is a single-process :class:`concurrent.futures.ProcessPoolExecutor` of its own,
    given one chunk at a time (the next as soon as it is free), so that a worker that dies takes
    exactly the chunk it was running with it: that chunk comes back as a failure, the worker is
    replaced, and the other chunks go on. The processes live until :meth:`close` (each keeps the
    problem it built).
    """

    name = "processes"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self._pools: list[concurrent.futures.ProcessPoolExecutor | None] = [None] * self.workers
        self._next = 0

    def _pool(self, index: int) -> concurrent.futures.ProcessPoolExecutor:
        if self._closed:
            raise CalibrationError("the worker processes of the ensemble members are closed.")
        pool = self._pools[index]
        if pool is None:
            pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_process_worker,
            )
            self._pools[index] = pool
        return pool

    def _replace(self, index: int) -> None:
        pool = self._pools[index]
        self._pools[index] = None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _submit_to(self, index: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        self.submitted += 1
        try:
            return self._pool(index).submit(fn, *args)
        except BrokenProcessPool:  # the worker died while idle: replace it, not blame the chunk
            self._replace(index)
            return self._pool(index).submit(fn, *args)

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> concurrent.futures.Future[Any]:
        index = self._next % self.workers
        self._next += 1
        future: concurrent.futures.Future[Any] = self._submit_to(index, fn, args)
        return future

    def is_lost(self, error: BaseException) -> bool:
        return isinstance(error, BrokenProcessPool)

    def run_all(self, calls: Sequence[Call]) -> list[Any]:
        outcomes: list[Any] = [None] * len(calls)
        waiting = list(range(len(calls)))
        idle = list(range(self.workers))
        running: dict[Any, tuple[int, int]] = {}  # future -> (call, worker)
        while waiting or running:
            while waiting and idle:
                call, worker = waiting.pop(0), idle.pop(0)
                fn, args = calls[call]
                running[self._submit_to(worker, fn, args)] = (call, worker)
            done, _ = concurrent.futures.wait(
                list(running), return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                call, worker = running.pop(future)
                outcomes[call] = self._outcome(future)
                if isinstance(outcomes[call], ChunkFailure) and outcomes[call].lost:
                    self._replace(worker)
                idle.append(worker)
        return outcomes

    def close(self) -> None:
        self._closed = True
        for index, pool in enumerate(self._pools):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            self._pools[index] = None


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise CalibrationError(
            "method.executor=dask needs Dask's distributed scheduler: pip install "
            "'climgrad[distributed]'."
        ) from None
    return distributed


class DaskExecutor(MemberExecutor):
    """A Dask client (``method.executor=dask``).

    Args:
        workers: Worker processes of a ``LocalCluster``; the default number of chunks.
        cluster: ``local`` (a ``LocalCluster`` of ``workers`` single-threaded processes) or
            ``slurm`` (a ``dask_jobqueue.SLURMCluster`` of ``scale`` jobs).
        cluster_kwargs: Keyword arguments of the cluster (they override the defaults above;
            SLURM: ``queue``, ``account``, ``cores``, ``processes``, ``memory``, ``walltime``,
            ``job_extra_directives``, ...).
        scale: SLURM jobs to start (``None``: enough jobs of ``processes`` workers each for
            ``workers``).
        address: Connect to this running scheduler instead of starting a cluster (not shut down
            at the end; only the client is closed).
        config: Dask settings (``dask.config.set``) while the cluster starts, e.g.
            ``{"distributed.scheduler.allowed-failures": 1}``.

    The scheduler runs a chunk whose worker died again on another worker, up to
    ``distributed.scheduler.allowed-failures`` times (Dask's default 3); after that the chunk
    comes back as a failure (``KilledWorker``). A local cluster's nanny restarts dead workers.
    """

    name = "dask"

    def __init__(
        self,
        workers: int = 1,
        *,
        cluster: str = "local",
        cluster_kwargs: Mapping[str, Any] | None = None,
        scale: int | None = None,
        address: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(workers)
        distributed = _import_distributed()
        import dask

        kwargs = dict(cluster_kwargs or {})
        _quiet_dask_logs()
        self.cluster: Any = None
        # Dotted keys: a nested mapping given to dask.config.set would replace whole sections.
        with dask.config.set(_dotted(config or {})):
            if address is not None:
                self.client = distributed.Client(address)
                where = f"the scheduler at {address}"
            elif cluster == "local":
                settings: dict[str, Any] = {
                    "n_workers": self.workers,
                    "threads_per_worker": 1,
                    "processes": True,
                    "dashboard_address": None,
                }
                settings.update(kwargs)
                self.cluster = distributed.LocalCluster(**settings)
                self.client = distributed.Client(self.cluster)
                where = f"a Dask LocalCluster of {settings['n_workers']} worker processes"
            elif cluster == "slurm":
                try:
                    from dask_jobqueue import SLURMCluster
                except ImportError:
                    raise CalibrationError(
                        "method.dask.cluster=slurm needs dask-jobqueue: pip install "
                        "'climgrad[distributed]'."
                    ) from None
                self.cluster = SLURMCluster(**kwargs)
                processes = int(kwargs.get("processes") or 1)
                jobs = math.ceil(self.workers / processes) if scale is None else int(scale)
                self.cluster.scale(jobs=jobs)
                self.client = distributed.Client(self.cluster)
                where = f"a Dask SLURMCluster of {jobs} job(s)"
            else:
                raise CalibrationError(
                    f"method.dask.cluster={cluster!r} is unknown; use one of "
                    f"{', '.join(DASK_CLUSTERS)}."
                )
        dashboard = cluster == "slurm" or kwargs.get("dashboard_address") is not None
        link = None
        if address is None and dashboard and importlib.util.find_spec("bokeh") is not None:
            link = getattr(self.client, "dashboard_link", None)
        log.info("Ensemble members on %s%s.", where, f" (dashboard {link})" if link else "")
        self._killed = distributed.KilledWorker
        self._cancelled: tuple[type[BaseException], ...] = (concurrent.futures.CancelledError,)
        try:
            from distributed.client import FutureCancelledError

            self._cancelled = (*self._cancelled, FutureCancelledError)
        except ImportError:
            pass
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Any:
        self.submitted += 1
        return self.client.submit(fn, *args, pure=False)

    def is_lost(self, error: BaseException) -> bool:
        return isinstance(error, (self._killed, *self._cancelled))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()


def _quiet_dask_logs() -> None:
    """Dask's INFO lines (workers starting, joining, leaving) stay out of the run's log: the
    level Dask gives its logger at import (INFO) is raised to WARNING; another level (e.g.
    ``hydra.job_logging.loggers.distributed.level=DEBUG``) is left alone."""
    logger = logging.getLogger("distributed")
    if logger.level in (logging.NOTSET, logging.INFO):
        logger.setLevel(logging.WARNING)


def build_executor(settings: ExecutorSettings) -> MemberExecutor:
    """The executor ``settings`` describe (not ``batched``, which has none)."""
    if settings.kind == "processes":
        return ProcessExecutor(settings.workers)
    if settings.kind == "dask":
        return DaskExecutor(
            settings.workers,
            cluster=settings.dask_cluster,
            cluster_kwargs=json.loads(settings.dask_cluster_kwargs),
            scale=settings.dask_scale,
            address=settings.dask_address,
            config=json.loads(settings.dask_config),
        )
    raise CalibrationError(f"method.executor={settings.kind!r} has no executor to build.")


# ---------------------------------------------------------------------------------------------
# Sharing: one pool or cluster per settings in a process


_SHARED: dict[ExecutorSettings, list[Any]] = {}  # settings -> [executor, users]
_SHARED_LOCK = threading.Lock()


@dataclass
class _Scope:
    cache_dir: Path | None
    started: list[MemberExecutor] = field(default_factory=list)


_SCOPES: list[_Scope] = []


@contextmanager
def ensemble_scope(cache_dir: str | Path | None = None) -> Iterator[None]:
    """A run's lifetime for its ensemble evaluators (the one hook a run needs).

    Within it, evaluators without a cache folder of their own use ``cache_dir`` (the member
    cache, ``<run>/ensemble_cache``), including those a method creates later (a hybrid's
    Laplace step); on leaving it, normally or on an error, every executor started within it is
    shut down (an evaluator that is called again afterwards starts a new one).
    """
    scope = _Scope(None if cache_dir is None else Path(cache_dir))
    _SCOPES.append(scope)
    try:
        yield
    finally:
        _SCOPES.remove(scope)
        with _SHARED_LOCK:
            for key, entry in list(_SHARED.items()):
                if entry[0] in scope.started:
                    del _SHARED[key]
        for executor in scope.started:
            _close_quietly(executor)


def scope_cache_dir() -> Path | None:
    """The cache folder of the outermost :func:`ensemble_scope` that names one (``None``
    outside one): a caller that opens a scope around several runs (a notebook, a test, a
    sweep in one process) shares one member cache across them; a run alone uses its own
    ``<run>/ensemble_cache``."""
    for scope in _SCOPES:
        if scope.cache_dir is not None:
            return scope.cache_dir
    return None


def acquire_executor(settings: ExecutorSettings) -> tuple[MemberExecutor, Callable[[], None]]:
    """The process's executor for ``settings`` (started on first use) and the function that
    gives it back; the last one given back shuts it down. Whatever is left at exit is shut down
    then."""
    key = _sharing_key(settings)
    with _SHARED_LOCK:
        entry = _SHARED.get(key)
        if entry is not None and entry[0].closed:
            entry = None
        if entry is None:
            entry = [build_executor(settings), 0]
            _SHARED[key] = entry
            if _SCOPES:
                _SCOPES[-1].started.append(entry[0])
        entry[1] += 1
        executor: MemberExecutor = entry[0]
    released = False

    def release() -> None:
        nonlocal released
        if released:
            return
        released = True
        with _SHARED_LOCK:
            current = _SHARED.get(key)
            if current is None or current[0] is not executor:
                return
            current[1] -= 1
            if current[1] > 0:
                return
            del _SHARED[key]
        _close_quietly(executor)

    return executor, release


def _sharing_key(settings: ExecutorSettings) -> ExecutorSettings:
    # Chunking and caching do not change the workers.
    return dataclasses.replace(settings, chunk_size=None, member_cache=False)


def _close_quietly(executor: MemberExecutor) -> None:
    try:
        executor.close()
    except Exception as err:  # shutting down: report, never raise
        log.warning("Closing the %s executor failed: %s", executor.name, err)


@atexit.register
def _close_all() -> None:
    with _SHARED_LOCK:
        entries = list(_SHARED.values())
        _SHARED.clear()
    for executor, _ in entries:
        _close_quietly(executor)


@contextmanager
def shared_executor(settings: ExecutorSettings) -> Iterator[MemberExecutor]:
    """:func:`acquire_executor` as a context manager."""
    executor, release = acquire_executor(settings)
    try:
        yield executor
    finally:
        release()
