"""Data-parallel scaling: time per optimizer step with 1, 2, ... ranks (``trainer.distributed``).

    python scripts/bench.py SCALE                     # gray 4-site twin, 1 and 2 processes
    python scripts/bench.py SCALE --json              # one JSON object
    python scripts/bench.py SCALE --ranks 1,2,4 --radiation rrtmg --steps 10
    python scripts/bench.py SCALE --size small        # 3 sites, 12 layers, 3 steps (a smoke test)

Problem: the multi-site column (``model=column_sites``): ``--radiation gray`` is the twin
``experiment=column_sites_twin`` (4 sites, 40 layers; a step costs about 0.1 s of CPU per site),
``rrtmg`` the AFGL experiment ``experiment=column_sites_afgl`` (4 sites, 40 layers, RRTMG; about
0.6 s per site). For each world size N the ranks are spawned (``torch.multiprocessing``, gloo on
the loopback, one torch thread per rank unless ``--threads``); each builds the problem, solves its
sites once (cold start, untimed), takes ``--warmup`` untimed Adam steps and then ``--steps`` timed
ones (Adam: one evaluation of the loss and gradient per step, so a step is one solve of each
site from its warm state, one backward, one all-reduce of the misfits and gradient and one of
the sites' warm states). N = 1 is a plain one-process run (no process group).

Reported per N: medians over the steps of rank 0's wall time per step, of the CPU time per step
(``time.process_time`` of each rank: on a shared machine it leaves out the time spent waiting for
a core) averaged over the ranks and summed over them, and of the time rank 0 spends inside
all-reduces (waiting for the slowest rank included); speed-up ``wall(1) / wall(N)`` and
efficiency ``speed-up / N``; the floats each all-reduce carries. Reference check: the
parameters after the steps equal the one-process run's to 1e-10 (relative).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import torch
import torch.multiprocessing as mp

EXPERIMENTS = {"gray": "column_sites_twin", "rrtmg": "column_sites_afgl"}
#: ``--size small``: three sites (the last one dropped), 12 layers, a short spin-up.
SMALL = {
    "gray": [
        "~model.options.sites.us_standard",
        "~data.observations.air_temperature_us_standard",
        "model.options.levels=12",
        "model.simulate.spin_up_steps=50",
    ],
    "rrtmg": [
        "~model.options.sites.us_standard",
        "data.variables=[air_temperature_tropical,air_temperature_midlatitude_summer,"
        "air_temperature_subarctic_summer]",
        "model.options.levels=12",
    ],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ranks", default="1,2", help="world sizes to time, e.g. 1,2,4")
    parser.add_argument("--steps", type=int, default=10, help="timed Adam steps per world size")
    parser.add_argument("--radiation", choices=sorted(EXPERIMENTS), default="gray")


def _overrides(radiation: str, size: str, dtype: str) -> list[str]:
    overrides = [
        f"experiment={EXPERIMENTS[radiation]}",
        "optimizer=adam",
        "optimizer.lr=0.01",
        "trainer.device=cpu",
        f"trainer.dtype={dtype}",
    ]
    return overrides + (SMALL[radiation] if size == "small" else [])


def _compose(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_module

    from climgrad.calibration.config import CONFIG_MODULE, register_configs
    from climgrad.calibration.experiment import as_config

    register_configs()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return as_config(compose(config_name="calibrate", overrides=overrides))


def _worker(
    process_rank: int, world: int, port: int, folder: str, settings: dict[str, Any]
) -> None:
    """One rank: build, solve once, warm up, time ``steps`` Adam steps; write its samples."""
    torch.set_num_threads(settings["threads"])
    from climgrad.calibration import distributed

    distributed.loopback_environment(process_rank, world, port)
    from climgrad.calibration.experiment import build_experiment
    from climgrad.calibration.methods import GradientMethod
    from climgrad.params import display_names

    config = _compose([*settings["overrides"], f"trainer.distributed={world > 1}"])
    group = distributed.setup(config.trainer)
    try:
        problem = build_experiment(config)
        adapter = problem.adapter
        assert isinstance(adapter, distributed.SiteAdapter)
        parallel = distributed.shard(problem, group)
        if parallel is None:
            problem.check()
        else:
            parallel.check()
        total_steps = settings["warmup"] + settings["steps"]
        method = GradientMethod(problem, config.optimizer, total_steps)
        if parallel is not None:
            parallel.attach(method)
        wall, cpu, communication = [], [], []
        for step in range(total_steps):
            before = parallel.communication_s if parallel is not None else 0.0
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            method.step(details=False)
            if step >= settings["warmup"]:
                wall.append(time.perf_counter() - start_wall)
                cpu.append(time.process_time() - start_cpu)
                after = parallel.communication_s if parallel is not None else 0.0
                communication.append(after - before)
        leaves = [info.raw for info in display_names(problem.model).values() if info.learnable]
        result = {
            "rank": process_rank,
            "sites": parallel.owned if parallel is not None else adapter.sites(problem.model),
            "wall_s": wall,
            "cpu_s": cpu,
            "communication_s": communication,
            "reductions": parallel.reductions if parallel is not None else 0,
            "parameters": torch.cat([leaf.detach().reshape(-1) for leaf in leaves]).tolist(),
            # misfits, gradient, one has-gradient flag per tensor, the failure flag
            "floats_per_evaluation": len(problem.observations)
            + sum(leaf.numel() for leaf in leaves)
            + len(leaves)
            + 1,
            "floats_per_state_sync": sum(
                t.numel()
                for site in adapter.sites(problem.model)
                for t in adapter.site_state(problem.model, site)
            ),
            "learnable_elements": sum(leaf.numel() for leaf in leaves),
            "observations": len(problem.observations),
        }
    finally:
        distributed.teardown(group)
    Path(folder, f"world{world}_rank{process_rank}.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _median(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    ranks = [int(n) for n in str(args.ranks).split(",") if n.strip()]
    if 1 not in ranks:
        ranks = [1, *ranks]
    steps = 3 if args.size == "small" else args.steps
    settings = {
        "overrides": _overrides(args.radiation, args.size, args.dtype),
        "steps": steps,
        "warmup": args.warmup,
        "threads": args.threads or 1,
    }
    entries: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="climgrad-scale-") as folder:
        for world in ranks:
            start = time.perf_counter()
            mp.spawn(_worker, args=(world, _free_port(), folder, settings), nprocs=world)
            elapsed = time.perf_counter() - start
            results = [
                json.loads(Path(folder, f"world{world}_rank{r}.json").read_text())
                for r in range(world)
            ]
            main = results[0]
            per_step_cpu = [
                [result["cpu_s"][i] for result in results] for i in range(len(main["cpu_s"]))
            ]
            entries[str(world)] = {
                "ranks": world,
                "sites_per_rank": [result["sites"] for result in results],
                "wall_per_step_s": {
                    "median": _median(main["wall_s"]),
                    "min": min(main["wall_s"]),
                    "max": max(main["wall_s"]),
                    "samples": main["wall_s"],
                },
                "cpu_per_step_per_rank_s": _median([statistics.mean(s) for s in per_step_cpu]),
                "cpu_per_step_all_ranks_s": _median([sum(s) for s in per_step_cpu]),
                "communication_per_step_rank0_s": _median(main["communication_s"]),
                "all_reduces": main["reductions"],
                "floats_per_evaluation_all_reduce": main["floats_per_evaluation"],
                "floats_per_state_sync": main["floats_per_state_sync"],
                "process_wall_s": elapsed,
                "parameters": main["parameters"],
            }
    reference = torch.tensor(entries["1"]["parameters"], dtype=torch.float64)
    one = entries["1"]["wall_per_step_s"]["median"]
    checks: dict[str, Any] = {}
    for key, entry in entries.items():
        entry["speedup"] = one / entry["wall_per_step_s"]["median"]
        entry["efficiency"] = entry["speedup"] / entry["ranks"]
        if key != "1":
            parameters = torch.tensor(entry.pop("parameters"), dtype=torch.float64)
            error = common.relative_error(parameters, reference)
            checks[f"{key} ranks = 1 process, parameters"] = {
                "relative_error": error,
                "tolerance": 1e-10,
                "passed": error <= 1e-10,
            }
    entries["1"].pop("parameters")
    return {
        "problem": "SCALE",
        "dtype": args.dtype,
        "size": args.size,
        "radiation": args.radiation,
        "experiment": EXPERIMENTS[args.radiation],
        "steps": steps,
        "warmup": args.warmup,
        "threads_per_rank": settings["threads"],
        "machine": common.machine_info("cpu"),
        "worlds": entries,
        "reference_check": {"passed": all(c["passed"] for c in checks.values()), "entries": checks},
    }


def format_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        for entry in result["worlds"].values():
            wall = entry["wall_per_step_s"]
            rows.append(
                [
                    str(entry["ranks"]),
                    " / ".join(str(len(s)) for s in entry["sites_per_rank"]),
                    f"{1e3 * wall['median']:.0f} [{1e3 * wall['min']:.0f}-{1e3 * wall['max']:.0f}]",
                    f"{1e3 * entry['cpu_per_step_per_rank_s']:.0f}",
                    f"{1e3 * entry['cpu_per_step_all_ranks_s']:.0f}",
                    f"{1e3 * entry['communication_per_step_rank0_s']:.1f}",
                    f"{entry['speedup']:.2f}",
                    f"{entry['efficiency']:.2f}",
                ]
            )
    columns = [
        "ranks",
        "sites per rank",
        "wall ms / step (median [min-max])",
        "CPU ms / step / rank",
        "CPU ms / step, all ranks",
        "all-reduce ms / step (rank 0)",
        "speed-up",
        "efficiency",
    ]
    lines = [common.format_table(rows, columns)]
    for result in results:
        machine, worlds = result["machine"], result["worlds"]
        entry = worlds[max(worlds, key=int)]
        lines.append(
            f"\nSCALE {result['dtype']}: {result['experiment']} ({result['radiation']}, "
            f"size {result['size']}), {result['steps']} timed Adam steps after "
            f"{result['warmup']} untimed, {result['threads_per_rank']} thread(s) per rank, on "
            f"{machine['cpu_model']} ({machine['logical_cores']} logical cores, load "
            f"{machine.get('load_average_1min', float('nan')):.2f}, torch "
            f"{machine['torch_version']}); all-reduce per evaluation: "
            f"{entry['floats_per_evaluation_all_reduce']} floats, warm-state sync per step: "
            f"{entry['floats_per_state_sync']} floats"
        )
        for name, check in result["reference_check"]["entries"].items():
            lines.append(f"  {name}: relative error {check['relative_error']:.1e}")
    return "\n".join(lines)
