"""Ensembles in one call: J parameter sets of EBM1D and of TwoLayerEBM, batched against one.

    python scripts/bench.py ENSEMBLE --threads 1            # J = 100; table
    python scripts/bench.py ENSEMBLE --json                 # one JSON object
    python scripts/bench.py ENSEMBLE --size small           # J = 5: a check, not a measurement
    python scripts/bench.py ENSEMBLE --members 200

Ensemble methods (EKI, CMA-ES, sampling) evaluate many parameter sets at a time. Both models take
the parameters in physical units with a leading batch dimension (``parameters={"A": (J,), ...}``)
and evaluate all J sets in one call, with gradients for every set:

``ebm1d``
    :meth:`climgrad.models.EBM1D.equilibrium` for J sets of (A, B, D, a0) around B3's truth
    (uniform in ±5 % of A, B, a0 and ±10 % of D): one Newton solve of J independent rows
    (each converging on its own, one batched Thomas sweep per iteration) and one batched adjoint
    solve; loss ``Σ_j Φ_j`` with Φ of B3.4 against B3's twin observations, gradient with respect
    to every member's parameters.
``two_layer``
    :meth:`climgrad.models.TwoLayerEBM.simulate` over 1850–2019 (AR6 ERF by agent, 170 annual
    steps) for J sets of (λ, γ, C, C_d, ε, aerosol scale) around Geoffroy et al. (2013b)'s CMIP5
    mean: J propagators from one batched matrix exponential, one rollout advancing all J states;
    loss the sum of squared anomalies, gradient with respect to every member's parameters.

Timed, interleaved in rounds (section 0.3 of docs/benchmark_problems.md): ``single`` (one set,
forward + backward), ``batched`` (J sets in one call, forward + backward) and ``looped`` (the J
sets one call each). Reported: ``batched / single`` (paired; the issue's target is at most 10 for
J = 100) and ``looped / batched``. The reference check is that the batched values and gradients
equal the J separate calls to 1e-10 (relative, max-normalised as in section 0.2).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from typing import Any

import b4
import common
import torch
from torch import Tensor

from climgrad.data.drivers import read_forcing_by_agent
from climgrad.models import EBM1D, TwoLayerEBM
from climgrad.models.two_layer import AR6_AGENTS, GEOFFROY_2013_CMIP5_MEAN
from climgrad.paths import project_root

SIZES = {"default": 100, "small": 5}
#: Batched values and gradients must equal the separate calls to this (relative).
GATE = 1e-10
EBM_CENTRE = {"A": 210.0, "B": 2.0, "D": 0.555, "a0": 0.30}
EBM_SPREAD = {"A": 0.05, "B": 0.05, "D": 0.10, "a0": 0.05}
TWO_LAYER_CENTRE = {**GEOFFROY_2013_CMIP5_MEAN, "aerosol_forcing_scale": 1.0}
TWO_LAYER_SPREAD = {
    "feedback": 0.3,
    "heat_exchange": 0.3,
    "heat_capacity": 0.3,
    "deep_heat_capacity": 0.3,
    "efficacy": 0.2,
    "aerosol_forcing_scale": 0.4,
}
AR6_FILE = "data/global_ebm/ar6_erf_1750-2019.nc"


def draw(
    centre: Mapping[str, float], spread: Mapping[str, float], members: int, seed: int = 0
) -> dict[str, Tensor]:
    """``{name: (J,) float64}`` uniform in ``centre (1 ± spread)``."""
    generator = torch.Generator().manual_seed(seed)
    sets = {}
    for name, value in centre.items():
        uniform = torch.rand(members, generator=generator, dtype=torch.float64)
        sets[name] = value * (1.0 + spread[name] * (2.0 * uniform - 1.0))
    return sets


class Case:
    """One model: ``loss(sets) -> (J,)`` and the three timed callables."""

    def __init__(self, loss: Callable[[dict[str, Tensor]], Tensor], sets: dict[str, Tensor]):
        self.loss = loss
        self.sets = sets
        self.members = int(next(iter(sets.values())).shape[0])

    def evaluate(self, member: int | None) -> tuple[Tensor, list[Tensor]]:
        """Losses and gradients of every member (``member=None``) or of one, detached."""
        leaves = {
            name: (value if member is None else value[member]).clone().requires_grad_(True)
            for name, value in self.sets.items()
        }
        values = self.loss(leaves)
        gradients = torch.autograd.grad(values.sum(), list(leaves.values()))
        return values.detach(), [g.detach() for g in gradients]

    def looped(self) -> tuple[Tensor, list[Tensor]]:
        """Every member in its own call, stacked like :meth:`evaluate` (``member=None``)."""
        results = [self.evaluate(j) for j in range(self.members)]
        values = torch.stack([r[0] for r in results])
        gradients = [torch.stack([r[1][k] for r in results]) for k in range(len(self.sets))]
        return values, gradients

    def functions(self) -> dict[str, Callable[[], Any]]:
        """The timed callables: one member, all members in one call, all one by one."""
        return {
            "single": lambda: self.evaluate(0),
            "batched": lambda: self.evaluate(None),
            "looped": self.looped,
        }

    def check(self, extra: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
        batched, batched_gradients = self.evaluate(None)
        looped, looped_gradients = self.looped()
        entries = {
            "values": _entry(batched, looped),
            "gradients": _entry(torch.cat(batched_gradients), torch.cat(looped_gradients)),
        }
        if extra is not None:
            entries.update(extra())
        return entries


def _entry(value: Tensor, reference: Tensor) -> dict[str, Any]:
    error = common.relative_error(value, reference)
    return {"relative_error": error, "tolerance": GATE, "passed": bool(error <= GATE)}


def ebm1d_case(members: int) -> tuple[Case, Callable[[], dict[str, Any]]]:
    """EBM1D: Φ of B3.4 for J sets of (A, B, D, a0), solved to 1e-9 W m-2 from T⁰."""
    twin = b4.Twin(3)
    model = EBM1D()
    sets = draw(EBM_CENTRE, EBM_SPREAD, members)

    def loss(parameters: dict[str, Tensor]) -> Tensor:
        state = model.equilibrium(tol=b4.SOLVE_TOLERANCE, parameters=parameters)
        return twin.misfit(twin._observables(model, state, parameters))

    def rows_converge_alone() -> dict[str, Any]:
        # The batch stops when its slowest row converges; every row stops on its own.
        with torch.no_grad():
            parameters = dict(sets)
            temperature = model.equilibrium(tol=b4.SOLVE_TOLERANCE, parameters=parameters)[
                "surface_temperature"
            ]
            worst = float(model.heating(temperature, parameters).abs().max())
        return {
            "batched residual within tol": {
                "value": worst,
                "tolerance": b4.SOLVE_TOLERANCE,
                "passed": worst <= b4.SOLVE_TOLERANCE,
            }
        }

    return Case(loss, sets), rows_converge_alone


def two_layer_case(members: int) -> Case:
    """TwoLayerEBM over 1850–2019: the sum of squared temperature anomalies for J sets."""
    series = read_forcing_by_agent(
        project_root() / AR6_FILE, AR6_AGENTS, start_year=1850, end_year=2019
    )
    model = TwoLayerEBM.from_forcing(series)
    sets = draw(TWO_LAYER_CENTRE, TWO_LAYER_SPREAD, members, seed=1)

    def loss(parameters: dict[str, Tensor]) -> Tensor:
        out = model.simulate(parameters=parameters)
        return out["surface_temperature_anomaly"].square().sum(0)

    return Case(loss, sets)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """ENSEMBLE options for ``scripts/bench.py``."""
    parser.add_argument(
        "--members", type=int, default=None, help="J parameter sets (default 100; small: 5)"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both models: reference check, then interleaved timings; JSON-ready."""
    if args.dtype != "float64" or args.device != "cpu":
        raise SystemExit("ENSEMBLE runs in float64 on the CPU (as B3 and B4).")
    members = getattr(args, "members", None) or SIZES[args.size]
    ebm, ebm_extra = ebm1d_case(members)
    cases = {"ebm1d": ebm, "two_layer": two_layer_case(members)}
    entries: dict[str, Any] = {}
    for name, case in cases.items():
        checked = case.check(ebm_extra if name == "ebm1d" else None)
        entries.update({f"{name}: batched = looped, {key}": v for key, v in checked.items()})
    functions = {
        f"{name}/{kind}": function
        for name, case in cases.items()
        for kind, function in case.functions().items()
    }
    timings = common.time_interleaved(functions, repeats=args.repeats, warmup=args.warmup)
    results: dict[str, Any] = {}
    for name in cases:
        results[name] = {
            "members": members,
            "forward_backward_ms": {
                kind: timings[f"{name}/{kind}"].milliseconds()
                for kind in ("single", "batched", "looped")
            },
            "batched_over_single": common.paired_ratio(
                timings[f"{name}/batched"], timings[f"{name}/single"]
            ),
            "looped_over_batched": common.paired_ratio(
                timings[f"{name}/looped"], timings[f"{name}/batched"]
            ),
        }
    return {
        "problem": "ENSEMBLE",
        "dtype": "float64",
        "device": "cpu",
        "size": args.size,
        "members": members,
        "repeats": args.repeats,
        "machine": common.machine_info("cpu"),
        "reference_check": {
            "passed": all(entry["passed"] for entry in entries.values()),
            "entries": entries,
        },
        **results,
    }


def format_table(results: list[dict[str, Any]]) -> str:
    """One row per model: single, batched, looped (ms), and the two paired ratios."""
    columns = (
        "model",
        "J",
        "single ms",
        "batched ms",
        "looped ms",
        "batched / single (paired)",
        "looped / batched (paired)",
        "batched = looped",
    )
    rows = []
    lines = []
    for result in results:
        checks = result["reference_check"]["entries"]
        for name in ("ebm1d", "two_layer"):
            entry = result[name]
            times = entry["forward_backward_ms"]
            errors = [v.get("relative_error", math.nan) for k, v in checks.items() if name in k]
            rows.append(
                [
                    name,
                    str(entry["members"]),
                    *(
                        f"{times[k]['median']:.1f} [{times[k]['min']:.1f}-{times[k]['max']:.1f}]"
                        for k in ("single", "batched", "looped")
                    ),
                    f"{entry['batched_over_single']['median']:.2f}",
                    f"{entry['looped_over_batched']['median']:.1f}",
                    f"max rel. error {max(errors):.1e}",
                ]
            )
        machine = result["machine"]
        failed = [k for k, v in checks.items() if not v["passed"]]
        lines.append(
            f"\nENSEMBLE on {machine['cpu_model']} ({machine['logical_cores']} logical cores, "
            f"{machine['torch_threads']} torch threads, torch {machine['torch_version']}), "
            f"{result['repeats']} rounds"
        )
        lines.append(f"  reference check: {'passed' if not failed else 'FAILED ' + str(failed)}")
    return "\n".join([common.format_table(rows, columns), *lines])
