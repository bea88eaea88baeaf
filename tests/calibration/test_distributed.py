"""Data-parallel calibration (``trainer.distributed``): two gloo ranks on the loopback.

Two ranks spawned with ``torch.multiprocessing`` share out the sites of the multi-site twin
(three gray columns, a small grid): they give the loss and gradient of one process, end an
L-BFGS run where one process ends it, in lockstep with each other, with rank 0 alone writing,
and a resumed two-rank run ends where the uninterrupted one did. ``trainer.distributed=true``
without torchrun is one process. The end-to-end ``torchrun ... climgrad.calibrate`` run is slow.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from climgrad.calibration import distributed
from climgrad.calibration.config import TrainerConfig
from climgrad.calibration.errors import CalibrationError
from climgrad.calibration.experiment import as_config, build_experiment
from climgrad.calibration.loop import run_calibration
from climgrad.params import display_names

from .conftest import COLUMN_SITES_SMALL, REPO, compose_config

#: The twin at three sites (rank 0 solves two, rank 1 one), 12 layers, short spin-up.
TWIN = [
    *COLUMN_SITES_SMALL,
    "trainer.checkpoint_every=1",
    "optimizer=lbfgs",
    "optimizer.max_iter=5",
]
STEPS = 3
OUTPUTS = {
    "params.nc",
    "fit.nc",
    "metrics.json",
    "checkpoints/last.pt",
    "checkpoints/best.pt",
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _raw(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: i.raw.detach().clone() for n, i in display_names(model).items() if i.learnable}


def _files(run_dir: Path) -> set[str]:
    return {
        str(p.relative_to(run_dir))
        for p in run_dir.rglob("*")
        if p.is_file() and p.parent.name != "tb"
    }


def _rank(process_rank: int, world: int, port: int, folder: str) -> None:
    """One rank: loss and gradient at the start, a run, and a run stopped and resumed."""
    torch.set_num_threads(1)
    distributed.loopback_environment(process_rank, world, port)
    overrides = [*TWIN, "trainer.distributed=true"]
    config = as_config(compose_config(overrides))
    group = distributed.setup(config.trainer, timeout=timedelta(seconds=180))
    assert group is not None and group.created and group.world_size == world
    out: dict[str, Any] = {}
    try:
        problem = build_experiment(config)
        parallel = distributed.shard(problem, group)
        assert parallel is not None
        parallel.check()
        leaves = [info.raw for info in display_names(problem.model).values() if info.learnable]
        terms = parallel.evaluate(leaves)
        out["owned"] = parallel.owned
        out["misfit"] = {k: float(v) for k, v in terms.misfit.items()}
        out["total"] = float(terms.total)
        out["gradient"] = [None if leaf.grad is None else leaf.grad.clone() for leaf in leaves]
        root = Path(folder)
        # run_calibration borrows the group (it exists already) and leaves it open.
        full = [*overrides, f"trainer.max_steps={STEPS}"]
        out["metrics"] = run_calibration(compose_config(full), root / "run", overrides=full)
        stopped = as_config(compose_config([*overrides, f"trainer.max_steps={STEPS - 1}"]))
        run_calibration(stopped, root / "resumed")
        resumed = as_config(
            compose_config([*overrides, f"trainer.max_steps={STEPS}", "trainer.resume=true"])
        )
        out["resumed"] = run_calibration(resumed, root / "resumed")
    finally:
        distributed.teardown(group)
    torch.save(out, Path(folder) / f"rank{process_rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    folder = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank, args=(2, _free_port(), str(folder)), nprocs=2, join=True)
    return folder, [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("one")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks
    try:
        problem = build_experiment(compose_config(TWIN))
        terms = problem.evaluate()
        terms.total.backward()
        leaves = [info.raw for info in display_names(problem.model).values() if info.learnable]
        overrides = [*TWIN, f"trainer.max_steps={STEPS}"]
        metrics = run_calibration(compose_config(overrides), folder / "run", overrides=overrides)
    finally:
        torch.set_num_threads(threads)
    return folder, {
        "misfit": {k: float(v.detach()) for k, v in terms.misfit.items()},
        "total": float(terms.total.detach()),
        "gradient": [leaf.grad.clone() if leaf.grad is not None else None for leaf in leaves],
        "metrics": metrics,
    }


def test_two_ranks_give_the_loss_and_gradient_of_one_process(
    two_ranks: tuple[Path, list[dict[str, Any]]], one_process: tuple[Path, dict[str, Any]]
) -> None:
    _, ranks = two_ranks
    _, one = one_process
    assert ranks[0]["owned"] == ["tropical", "subarctic_summer"]
    assert ranks[1]["owned"] == ["midlatitude_summer"]
    for result in ranks:
        # Each misfit is computed on one rank (the other adds 0), so they and the total are exact.
        assert result["misfit"] == one["misfit"]
        assert result["total"] == one["total"]
        for mine, reference in zip(result["gradient"], one["gradient"]):
            assert mine is not None and reference is not None
            assert torch.allclose(mine, reference, rtol=1e-12, atol=0.0), (mine, reference)
    # The reduced gradient is the same bits on both ranks.
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["gradient"], ranks[1]["gradient"]))


def test_two_rank_lbfgs_ends_where_one_process_does(
    two_ranks: tuple[Path, list[dict[str, Any]]], one_process: tuple[Path, dict[str, Any]]
) -> None:
    _, ranks = two_ranks
    _, one = one_process
    metrics = ranks[0]["metrics"]
    assert metrics["world_size"] == 2 and metrics["steps"] == STEPS
    assert one["metrics"]["world_size"] == 1
    for name, value in one["metrics"]["parameters"].items():
        assert metrics["parameters"][name] == pytest.approx(value, rel=1e-10, abs=0.0), name
    assert metrics["loss"]["total"] == pytest.approx(one["metrics"]["loss"]["total"], rel=1e-8)
    # Lockstep: rank 1 took the same steps and saw the same best loss, bit for bit.
    assert ranks[1]["metrics"]["best_loss"] == metrics["best_loss"]
    assert ranks[1]["metrics"]["best_step"] == metrics["best_step"]


def test_only_rank_zero_writes(
    two_ranks: tuple[Path, list[dict[str, Any]]], one_process: tuple[Path, dict[str, Any]]
) -> None:
    folder, ranks = two_ranks
    one_folder, _ = one_process
    run_dir = folder / "run"
    assert _files(run_dir) == OUTPUTS == _files(one_folder / "run")
    events = list((run_dir / "tb").iterdir())
    assert len(events) == 1 and events[0].name.startswith("events.out.tfevents")
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["world_size"] == 2 and written["status"] == "completed"
    assert ranks[1]["metrics"] == {
        "status": "completed",
        "rank": 1,
        "world_size": 2,
        "steps": STEPS,
        "stop_reason": "max_steps",
        "loss": {"total": written["best_loss"]},
        "best_loss": written["best_loss"],
        "best_step": written["best_step"],
    }
    assert sorted(p.name for p in folder.iterdir()) == ["rank0.pt", "rank1.pt", "resumed", "run"]


def test_a_resumed_two_rank_run_ends_where_the_uninterrupted_one_did(
    two_ranks: tuple[Path, list[dict[str, Any]]],
) -> None:
    folder, ranks = two_ranks
    resumed, straight = ranks[0]["resumed"], ranks[0]["metrics"]
    assert resumed["resumed_from"] == str(folder / "resumed" / "checkpoints" / "last.pt")
    assert resumed["steps"] == STEPS
    # Every site's warm state was in rank 0's checkpoint: the resumed run is bit-identical.
    assert resumed["parameters"] == straight["parameters"]
    assert resumed["loss"] == straight["loss"]
    assert _files(folder / "resumed") == OUTPUTS


def test_distributed_without_torchrun_is_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    overrides = [*TWIN, "optimizer=adam", "trainer.distributed=true", "trainer.max_steps=1"]
    with caplog.at_level(logging.INFO, logger="climgrad.calibrate"):
        metrics = run_calibration(compose_config(overrides), tmp_path / "run", overrides=overrides)
    assert metrics["world_size"] == 1 and metrics["steps"] == 1
    assert "running as one process (world size 1)" in caplog.text
    assert _files(tmp_path / "run") == OUTPUTS


# ---------------------------------------------------------------------------------------------
# Helpers and errors


def test_sites_are_dealt_round_robin() -> None:
    sites = ["a", "b", "c", "d", "e"]
    assert distributed.assign_sites(sites, 2) == [["a", "c", "e"], ["b", "d"]]
    assert distributed.assign_sites(sites, 1) == [sites]
    assert distributed.assign_sites(["a"], 3) == [["a"], [], []]


def test_backend_auto_is_gloo_on_the_cpu() -> None:
    cpu = torch.device("cpu")
    assert distributed.resolve_backend("auto", cpu) == "gloo"
    assert distributed.resolve_backend("gloo", cpu) == "gloo"
    with pytest.raises(CalibrationError, match=r"trainer\.backend=gloo"):
        distributed.resolve_backend("nccl", cpu)
    with pytest.raises(CalibrationError, match="use one of auto, gloo, nccl"):
        distributed.resolve_backend("mpi4", cpu)


def test_setup_without_a_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert distributed.setup(TrainerConfig()) is None  # distributed=false
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.setup(TrainerConfig(distributed=True)) is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(CalibrationError, match="MASTER_ADDR, MASTER_PORT unset; launch with"):
        distributed.setup(TrainerConfig(distributed=True))
    assert distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.is_main_process()
    ones = torch.ones(3)
    assert torch.equal(distributed.all_reduce_sum(ones), torch.ones(3))


def test_a_model_without_sites_is_refused() -> None:
    problem = build_experiment(compose_config(["experiment=twin_ebm1d", "trainer.device=cpu"]))
    group = distributed.ProcessGroup(rank=0, world_size=2)
    with pytest.raises(CalibrationError, match="model 'ebm1d' has none; use model=column_sites"):
        distributed.DataParallel(problem, group)


# ---------------------------------------------------------------------------------------------
# torchrun end to end


@pytest.mark.slow
def test_torchrun_runs_the_app_with_two_ranks(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun),
        "--nproc_per_node=2",
        "--master_port",
        str(_free_port()),
        "-m",
        "climgrad.calibrate",
        *TWIN,
        "trainer.max_steps=2",
        "trainer.distributed=true",
        f"hydra.run.dir={run_dir}",
    ]
    result = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**env, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"},
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 2
    assert OUTPUTS <= _files(run_dir)
    assert not (run_dir / ".hydra" / "attempt-2").exists(), "rank 1 wrote a record of its own"
    assert result.stdout.count("Outputs in") == 1
