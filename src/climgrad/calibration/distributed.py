"""Data-parallel calibration with ``torch.distributed``: sites shared out over ranks.

``trainer.distributed=true`` under ``torchrun --nproc_per_node=N`` (or ``srun`` exporting the
same variables) runs N processes, the *ranks*, each holding the whole problem (model,
observations, optimizer) but simulating only its share of the sites of a multi-site model
(an adapter with ``sites(model)``, ``simulate(model, options, sites=...)`` and
``site_state(model, site)``, e.g. ``column_sites``). The loss is a sum over sites,

    L(θ) = Σ_s J_s(θ) + λ_prior (−log p(θ)),   ∇L = Σ_r ∇(Σ_{s ∈ S_r} J_s) + λ_prior ∇(−log p),

so each rank r computes the misfits of its sites S_r and their gradient (rank 0 adds the prior),
and one all-reduce (sum) per evaluation of a buffer ``[J_1..J_V, ∂/∂θ_1..∂/∂θ_P, flags]`` gives
every rank the same misfits, total and gradient, bit for bit. Every rank then takes the same
optimizer step: Adam trivially, L-BFGS because its closure returns the reduced loss and leaves
the reduced gradient in ``.grad``, so its line search makes the same decisions on every rank
(lockstep). A site whose equilibrium fails on one rank sets a flag that every rank sees, so all
skip the step together. After each step the warm state of each site (its last equilibrium) is
copied from the rank that solved it to all others (a second all-reduce, the owner contributing
the values and the others zeros), so the model state, and with it checkpoints, ``best.pt`` and
a resumed run, are those of a one-process run. Rank 0 alone writes; every rank resumes from the
same checkpoint.

Sites are dealt out round-robin (site i to rank i mod N); a rank without sites contributes
zeros. The misfit of each observation is computed on exactly one rank and the others add 0, so
the reduced misfits and the total equal a one-process run's exactly; the gradient differs only
by the order of the additions (a few ulps). :func:`setup` reads ``torchrun``'s environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); without
``WORLD_SIZE`` the run is one process. Backend ``auto``: NCCL for CUDA tensors, gloo on the CPU.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import Tensor

from climgrad.calibration.config import TrainerConfig
from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.experiment import Problem, resolve_device
from climgrad.calibration.loss import CalibrationLoss, LossTerms
from climgrad.data import ObsSet
from climgrad.integrate import EquilibriumError
from climgrad.models import Model
from climgrad.params import prior_penalty

__all__ = [
    "BACKENDS",
    "DataParallel",
    "ProcessGroup",
    "SiteAdapter",
    "all_reduce_sum",
    "assign_sites",
    "is_main_process",
    "loopback_environment",
    "rank",
    "resolve_backend",
    "setup",
    "shard",
    "teardown",
    "world_size",
]

log = logging.getLogger("climgrad.calibrate")

#: ``trainer.backend`` values.
BACKENDS = ("auto", "gloo", "nccl")
_LAUNCH = (
    "launch with torchrun --nproc_per_node=N (it sets RANK, WORLD_SIZE, MASTER_ADDR and "
    "MASTER_PORT), or export them in srun (docs/scaling.md)"
)


@runtime_checkable
class SiteAdapter(Protocol):
    """What a model family offers to be sharded over ranks (e.g. ``column_sites``)."""

    def sites(self, model: Model) -> list[str]:
        """The model's sites, in a fixed order (the same on every rank)."""
        ...

    def simulate(
        self, model: Model, options: Mapping[str, Any], sites: Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        """Outputs of ``sites`` only (all with ``None``), differentiable in the parameters."""
        ...

    def site_state(self, model: Model, site: str) -> list[Tensor]:
        """Tensors a solve of ``site`` updates in place (e.g. its warm equilibrium)."""
        ...


# ---------------------------------------------------------------------------------------------
# Rank helpers (usable whether or not a process group exists)


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Whether this process is rank 0 (the one that writes)."""
    return rank() == 0


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over the ranks in place (a no-op in one process); returns it."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def resolve_backend(name: str, device: torch.device) -> str:
    """``trainer.backend``: ``auto`` -> ``nccl`` for CUDA tensors (when built with NCCL), else
    ``gloo``.

    Raises:
        CalibrationError: An unknown backend, or NCCL with CPU tensors.
    """
    if name not in BACKENDS:
        raise CalibrationError(
            f"trainer.backend={name!r} is unknown; use one of {', '.join(BACKENDS)}."
        )
    if name == "auto":
        return "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
    if name == "nccl" and device.type != "cuda":
        raise CalibrationError(
            "trainer.backend=nccl needs CUDA tensors but trainer.device is the CPU; use "
            "trainer.backend=gloo (or auto)."
        )
    return name


def assign_sites(sites: Sequence[str], ranks: int) -> list[list[str]]:
    """Sites of each rank, dealt round-robin: site i goes to rank i mod ``ranks``."""
    return [list(sites[r::ranks]) for r in range(ranks)]


# ---------------------------------------------------------------------------------------------
# Process group


@dataclass
class ProcessGroup:
    """The default process group of a data-parallel run.

    Attributes:
        rank, world_size, local_rank: As torchrun numbers them.
        backend: ``gloo`` or ``nccl``.
        created: Whether :func:`setup` initialised it (and :func:`teardown` destroys it).
        quieted: Logger levels changed on ranks other than 0 (restored by :func:`teardown`).
    """

    rank: int
    world_size: int
    local_rank: int = 0
    backend: str = "gloo"
    created: bool = False
    quieted: dict[str, int] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        """Rank 0: writes checkpoints, TensorBoard, outputs and the progress bar."""
        return self.rank == 0

    def shared_path(self, path: str | Path) -> Path:
        """Rank 0's ``path`` on every rank (its run directory: every rank resumes from it)."""
        value = [str(path)]
        dist.broadcast_object_list(value, src=0)
        return Path(value[0])


def loopback_environment(process_rank: int, world: int, port: int) -> None:
    """Set what torchrun would for rank ``process_rank`` of ``world`` on this machine.

    For ranks started without torchrun (e.g. ``torch.multiprocessing.spawn`` in benchmarks and
    tests): ``MASTER_ADDR=127.0.0.1``, ``MASTER_PORT=port`` (a free TCP port), ``RANK`` and
    ``LOCAL_RANK`` = ``process_rank``, ``WORLD_SIZE`` = ``world``; then :func:`setup` joins.
    """
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(process_rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(process_rank),
    )


def setup(trainer: TrainerConfig, *, timeout: timedelta | None = None) -> ProcessGroup | None:
    """Join the process group of a ``torchrun`` launch, or ``None`` for one process.

    ``trainer.distributed=false``: ``None``. ``true`` without ``WORLD_SIZE`` (not launched by
    torchrun) or with ``WORLD_SIZE=1``: ``None`` and a log line. Otherwise the default group is
    initialised from the environment (``env://``) with :func:`resolve_backend`'s backend; with
    CUDA each rank takes GPU ``LOCAL_RANK``; ranks other than 0 log errors only. A group that
    exists already (initialised by the caller) is used as it is. ``timeout``: of collectives
    (default torch's, 30 minutes).

    Raises:
        CalibrationError: ``RANK``, ``MASTER_ADDR`` or ``MASTER_PORT`` missing, or a bad backend.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if not trainer.distributed:
        if launched > 1 and int(os.environ.get("RANK", "0") or 0) == 0:
            log.warning(
                "Launched with WORLD_SIZE=%d but trainer.distributed=false: every process runs "
                "the whole calibration; add trainer.distributed=true to share out the sites.",
                launched,
            )
        return None
    if dist.is_available() and dist.is_initialized():
        group = ProcessGroup(dist.get_rank(), dist.get_world_size(), backend=dist.get_backend())
        return _quiet(group) if group.world_size > 1 else None
    if "WORLD_SIZE" not in os.environ or launched == 1:
        log.info(
            "trainer.distributed=true but %s: running as one process (world size 1).",
            "WORLD_SIZE is unset (not launched by torchrun)"
            if "WORLD_SIZE" not in os.environ
            else "WORLD_SIZE=1",
        )
        return None
    if not dist.is_available():
        raise CalibrationError(
            "trainer.distributed=true but this torch has no torch.distributed; install a torch "
            "build with distributed support or set trainer.distributed=false."
        )
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise CalibrationError(
            f"trainer.distributed=true with WORLD_SIZE={launched} but {', '.join(missing)} "
            f"unset; {_LAUNCH}."
        )
    process_rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    device = resolve_device(trainer.device)
    backend = resolve_backend(trainer.backend, device)
    if device.type == "cuda" and device.index is None:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(backend=backend, rank=process_rank, world_size=launched, **extra)
    group = ProcessGroup(process_rank, launched, local_rank, backend, created=True)
    if group.is_main:
        log.info("Data-parallel calibration: %d ranks, backend %s.", launched, backend)
    return _quiet(group)


def _quiet(group: ProcessGroup) -> ProcessGroup:
    if not group.is_main:
        logger = logging.getLogger("climgrad")
        group.quieted["climgrad"] = logger.level
        logger.setLevel(logging.ERROR)
    return group


def teardown(group: ProcessGroup | None) -> None:
    """Leave the process group :func:`setup` created (no-op for ``None`` or a borrowed one)."""
    if group is None:
        return
    for name, level in group.quieted.items():
        logging.getLogger(name).setLevel(level)
    if group.created and dist.is_initialized():
        # Every rank reaches the barrier before any closes its connections: a rank that leaves
        # first would otherwise close gloo pairs its peer still reads, and the peer's transport
        # thread can abort the process (SIGABRT) after its outputs are written.
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# The sharded problem


class DataParallel:
    """One rank's share of a problem: its sites, and the all-reduces that join the shares.

    Args:
        problem: The whole problem (built the same on every rank).
        group: The process group.

    Attributes:
        sites: Every site, in order; ``owned``: this rank's.
        observations: Names of the observations this rank computes the misfit of.
        communication_s, reductions: Time in and number of all-reduces (for benchmarks).

    Raises:
        CalibrationError: The model family has no sites (its adapter is not a
            :class:`SiteAdapter`).
    """

    def __init__(self, problem: Problem, group: ProcessGroup) -> None:
        adapter = problem.adapter
        if not isinstance(adapter, SiteAdapter):
            raise CalibrationError(
                f"trainer.distributed=true shares out the sites of a multi-site model, and "
                f"model {adapter.name!r} has none; use model=column_sites (e.g. "
                "experiment=column_sites_twin) or set trainer.distributed=false."
            )
        self.problem = problem
        self.group = group
        self.adapter: SiteAdapter = adapter
        self.sites = list(adapter.sites(problem.model))
        self.owned = assign_sites(self.sites, group.world_size)[group.rank]
        if group.is_main and len(self.sites) < group.world_size:
            log.warning(
                "%d ranks for %d sites: ranks %d to %d have no site and only add zeros.",
                group.world_size,
                len(self.sites),
                len(self.sites),
                group.world_size - 1,
            )
        self.observations: list[str] = []
        self._local_loss: CalibrationLoss | None = None
        self._checked = False
        self.communication_s = 0.0
        self.reductions = 0

    # -- collectives ------------------------------------------------------------------------

    def _all_reduce(self, buffer: Tensor) -> Tensor:
        start = time.perf_counter()
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        self.communication_s += time.perf_counter() - start
        self.reductions += 1
        return buffer

    def _buffer(self, size: int) -> Tensor:
        return torch.zeros(size, dtype=self.problem.dtype, device=self.problem.device)

    # -- start ------------------------------------------------------------------------------

    def check(self) -> None:
        """Solve this rank's sites at the initial parameters; check that every observation is
        computed by exactly one rank, in its shape (:meth:`Problem.check` for a shard).

        Raises:
            CalibrationError: On every rank, if a site does not solve or an output is missing,
                misshapen or computed by several ranks.
        """
        problem = self.problem
        names = list(problem.observations)
        flags = self._buffer(len(names) + 1)
        message = ""
        outputs: dict[str, Tensor] = {}
        try:
            with torch.no_grad():
                outputs = self.adapter.simulate(
                    problem.model, problem.simulate_options, sites=self.owned
                )
            for index, (name, observed) in enumerate(problem.observations.items()):
                if observed.model_output not in outputs:
                    continue
                flags[index] = 1.0
                shape = tuple(outputs[observed.model_output].shape)
                if shape != observed.shape and not message:
                    message = (
                        f"model output {observed.model_output!r} has shape {shape} but "
                        f"observation {name!r} has shape {observed.shape}; put the observations "
                        "on the model grid."
                    )
        except EquilibriumError as err:
            message = (
                f"the model does not solve at its initial parameters on rank {self.group.rank} "
                f"({err}); change model.params or model.simulate."
            )
        flags[-1] = 1.0 if message else 0.0
        self._all_reduce(flags)
        if float(flags[-1]) > 0:
            raise CalibrationError(
                message
                or f"{int(flags[-1])} other rank(s) failed to check their sites; see their error."
            )
        counts = [round(float(c)) for c in flags[:-1]]
        for name, count in zip(names, counts):
            if count == 0:
                raise CalibrationError(
                    f"observation {name!r} wants the model output "
                    f"{problem.observations[name].model_output!r}, which no site of the model "
                    "produces; fix model_output in the data spec."
                )
            if count > 1:
                raise CalibrationError(
                    f"observation {name!r} is computed by {count} ranks: with "
                    "trainer.distributed=true every observation must belong to one site."
                )
        self.observations = [
            name
            for name, observed in problem.observations.items()
            if observed.model_output in outputs
        ]
        self._checked = True
        if self.observations:
            loss = problem.loss
            self._local_loss = CalibrationLoss(
                ObsSet({name: problem.observations[name] for name in self.observations}),
                # The prior is added once, on rank 0.
                loss.prior_weight if self.group.is_main else 0.0,
                {name: loss.weights[name] for name in self.observations},
            )

    def attach(self, method: Any) -> None:
        """Make ``method`` reduce its loss and gradient over the ranks.

        Raises:
            CalibrationError: A method other than ``gradient`` (Adam or L-BFGS).
        """
        from climgrad.calibration.methods.gradient import GradientMethod

        if not isinstance(method, GradientMethod):
            raise CalibrationError(
                f"trainer.distributed=true works with method=gradient (Adam, L-BFGS), not "
                f"method={method.name}; run it as one process (trainer.distributed=false)."
            )
        method.parallel = self

    # -- each evaluation --------------------------------------------------------------------

    def evaluate(self, leaves: Sequence[Tensor]) -> LossTerms:
        """The loss terms of the whole problem, with the gradient of the total in ``.grad``.

        This rank solves its sites and backpropagates their misfit (rank 0: plus the prior);
        one all-reduce sums the misfits, the gradients (``None`` where no rank has one) and the
        failure flag.

        Args:
            leaves: The raw tensors the optimizer updates (their ``.grad`` is replaced).

        Raises:
            EquilibriumError: On every rank, when a site of any rank did not converge.
        """
        if not self._checked:
            raise RuntimeError("call DataParallel.check() first: it finds the rank's observations.")
        problem = self.problem
        names = list(problem.observations)
        local: dict[str, Tensor] = {}
        message = ""
        for leaf in leaves:
            leaf.grad = None
        try:
            objective: Tensor | None = None
            if self._local_loss is not None:
                outputs = self.adapter.simulate(
                    problem.model, problem.simulate_options, sites=self.owned
                )
                terms = self._local_loss(problem.model, outputs)
                local, objective = terms.misfit, terms.total
            elif self.group.is_main:
                objective = problem.loss.prior_weight * prior_penalty(problem.model)
            if objective is not None and objective.requires_grad:
                objective.backward()
        except EquilibriumError as err:
            message = str(err)
        sizes = [leaf.numel() for leaf in leaves]
        buffer = self._buffer(len(names) + sum(sizes) + len(leaves) + 1)
        with torch.no_grad():
            for index, name in enumerate(names):
                if name in local:
                    buffer[index] = local[name].detach()
            offset = len(names)
            for position, leaf in enumerate(leaves):
                if leaf.grad is not None:
                    buffer[offset : offset + sizes[position]] = leaf.grad.reshape(-1)
                    buffer[len(names) + sum(sizes) + position] = 1.0
                offset += sizes[position]
            buffer[-1] = 1.0 if message else 0.0
        self._all_reduce(buffer)
        if float(buffer[-1]) > 0:
            raise EquilibriumError(message or "a site of another rank did not converge")
        offset = len(names)
        for position, leaf in enumerate(leaves):
            has_gradient = float(buffer[len(names) + sum(sizes) + position]) > 0
            piece = buffer[offset : offset + sizes[position]]
            leaf.grad = piece.reshape(leaf.shape).clone() if has_gradient else None
            offset += sizes[position]
        misfit = {name: buffer[index].clone() for index, name in enumerate(names)}
        # The total as CalibrationLoss forms it, so that it equals a one-process run's exactly.
        with torch.no_grad():
            prior = problem.loss.prior_weight * prior_penalty(problem.model)
        first = next(iter(misfit.values()))
        total = torch.stack(list(misfit.values())).sum() + prior.to(first)
        return LossTerms(total, misfit, prior)

    def synchronize(self) -> None:
        """Copy each site's state (:meth:`SiteAdapter.site_state`) from its rank to all."""
        model = self.problem.model
        pieces = [
            (tensor, site in self.owned)
            for site in self.sites
            for tensor in self.adapter.site_state(model, site)
        ]
        if not pieces:
            return
        with torch.no_grad():
            buffer = torch.cat(
                [
                    (tensor if owned else torch.zeros_like(tensor))
                    .reshape(-1)
                    .to(self.problem.dtype)
                    for tensor, owned in pieces
                ]
            )
            self._all_reduce(buffer)
            offset = 0
            for tensor, _ in pieces:
                size = tensor.numel()
                tensor.copy_(buffer[offset : offset + size].reshape(tensor.shape))
                offset += size


def shard(problem: Problem, group: ProcessGroup | None) -> DataParallel | None:
    """This rank's :class:`DataParallel` share of ``problem`` (``None`` for one process)."""
    return None if group is None else DataParallel(problem, group)
