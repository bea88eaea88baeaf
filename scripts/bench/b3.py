"""Benchmark B3 (docs/benchmark_problems.md): the diffusive energy-balance model's equilibrium, Φ.

:class:`climgrad.models.EBM1D` (90 bands of 2°) solved by Newton's method from B3's T⁰; the twin
loss Φ(θ) of B3.4 at θ₀ = (190, 1.8, 0.45). Implementations of the gradient ∂Φ/∂θ:

``custom``
    ``EBM1D.equilibrium``: Newton without a graph, then implicit differentiation (one adjoint
    solve with the Jacobian at the solution, :func:`climgrad.integrate.equilibrium`).
``autograd``
    The same Newton iterations (same residual, same Jacobian by ``torch.func.jacrev``, same stopping
    rule) recorded by autograd and differentiated through ("unrolled"); it converges to the
    implicit gradient as Newton converges.
``finite_differences_forward`` / ``finite_differences_central`` (float64 only)
    ∂Φ/∂θ from P + 1 (forward, step 1e-8 in u = θ/θ₀, as B4.3 d) or 2P + 1 solves (central,
    step 1e-5 in u). Their "forward" column is the ``custom`` forward of the same rounds.

"forward" is the equilibrium solve from T⁰ plus Φ, with gradient recording off. The float32
variant builds the model in float32 with the float32 tolerance of B3.3 (2e-2 W m-2) and the float64
observations rounded to float32. The full calibration from θ₀ to 1 % (B3.5) is B4's P = 3 L-BFGS-B
with exact gradients (float64), run ``--calibration-runs`` times.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

import b4
import common
import numpy as np
import torch
from torch import Tensor

from climgrad.integrate import EquilibriumError, EquilibriumInfo
from climgrad.models import EBM1D
from climgrad.models.base import functional
from climgrad.params import physical_gradients

CELSIUS = 273.15
TOLERANCE = {"float64": 1e-9, "float32": 2e-2}
#: B3.6: iteration counts are quoted to this residual.
REFERENCE_ITERATION_TOLERANCE = 1e-10
FLOAT64_GATE = 1e-8
FLOAT32_GATE = {"loss": 1e-4, "gradient": 3e-3}
CENTRAL_DIFFERENCE_STEP = 1e-5

EQUILIBRIUM_REFERENCE = {
    "truth": {
        "T[-89]": -15.8491945563,
        "T[-1]": 27.7893998288,
        "T[+1]": 27.7893998288,
        "T[+61]": -4.09487466008,
        "T[+71]": -10.3692621857,
        "T[+89]": -15.8491945563,
        "global mean T": 13.8706184083,
        "global mean OLR": 237.741236817,
        "ice edge north": 70.3680967616,
        "Newton iterations": 6,
    },
    "guess": {
        "T[-89]": -1.87907431659,
        "T[-1]": 43.5917789508,
        "T[+1]": 43.5917789508,
        "T[+61]": 8.32253207769,
        "T[+71]": 2.67795271754,
        "T[+89]": -1.87907431659,
        "global mean T": 28.0831757221,
        "global mean OLR": 240.5497163,
        "ice edge north": math.nan,
        "Newton iterations": 4,
    },
}
PARAMETERS: dict[str, dict[str, Any]] = {
    "truth": {"A": 210.0, "B": 2.0, "D": 0.555},
    "guess": {"A": 190.0, "B": 1.8, "D": 0.45},
}
GRADIENT_REFERENCE = {
    "float64": {
        "Phi": 893957.153119,
        "dA": -69467.4700283,
        "dB": -1836558.88091,
        "dD": 1370821.77127,
    },
    "float32": {"Phi": 893957.25, "dA": -69467.453125, "dB": -1836555.25, "dD": 1370828.125},
}


def unrolled_equilibrium(model: EBM1D, tol: float, max_iter: int = 50) -> Tensor:
    """Newton from T⁰ recorded by autograd: the gradient differentiates through every iteration.

    Same residual, Jacobian (``torch.func.jacrev``) and stopping rule (max |F| <= ``tol``, W m-2)
    as :meth:`EBM1D.equilibrium`, so the iterates are the same; only the gradient path differs.
    Returns T* ``(band,)`` in K.
    """
    residual, tensors = functional(model, "heating")
    x = model.initial_state()["surface_temperature"]
    for _ in range(max_iter + 1):
        f = residual(x, *tensors)
        if float(f.detach().abs().max()) <= tol:
            return x
        jacobian = torch.func.jacrev(lambda y: residual(y, *tensors))(x)
        x = x - torch.linalg.solve(jacobian, f.unsqueeze(-1)).squeeze(-1)
    raise EquilibriumError(f"unrolled Newton did not reach {tol:.1e} in {max_iter} iterations")


class Problem:
    """B3 at θ₀ in one dtype: the model, observations and the timed callables (built once)."""

    def __init__(self, dtype_name: str) -> None:
        self.dtype_name = dtype_name
        self.tolerance = TOLERANCE[dtype_name]
        self.twin = b4.Twin(3, dtype=common.dtype_from_name(dtype_name), tolerance=self.tolerance)
        self.twin.paused = True  # B3 counts nothing; B4 does.
        self.twin.reset()
        self.model = self.twin.model

    def _state(self, implementation: str) -> dict[str, Tensor]:
        if implementation == "unrolled":
            return {"surface_temperature": unrolled_equilibrium(self.model, self.tolerance)}
        return self.model.equilibrium(tol=self.tolerance)

    def loss(self, implementation: str) -> Tensor:
        """Φ(θ₀) with or without a graph (the caller sets the grad mode)."""
        state = self._state(implementation)
        return self.twin.misfit(self.twin._observables(self.model, state))

    def forward(self, implementation: str) -> Callable[[], Tensor]:
        def run() -> Tensor:
            with torch.no_grad():
                return self.loss(implementation)

        return run

    def forward_backward(self, implementation: str) -> Callable[[], tuple[Tensor, Tensor]]:
        """Φ and ∂Φ/∂θ = (∂Φ/∂A, ∂Φ/∂B, ∂Φ/∂D) in physical units."""
        if implementation.startswith("finite_differences"):
            return self._finite_differences(implementation.endswith("central"))

        def run() -> tuple[Tensor, Tensor]:
            self.model.zero_grad(set_to_none=True)
            value = self.loss(implementation)
            value.backward()
            gradients = physical_gradients(self.model)
            return value.detach(), torch.stack([gradients[n] for n in ("A", "B", "D")])

        return run

    def _finite_differences(self, central: bool) -> Callable[[], tuple[Tensor, Tensor]]:
        twin = self.twin
        theta0 = twin.theta0

        def run() -> tuple[Tensor, Tensor]:
            ones = np.ones(3)
            loss = twin.loss(ones)
            gradient = np.zeros(3)
            for i in range(3):
                probe = ones.copy()
                if central:
                    probe[i] += CENTRAL_DIFFERENCE_STEP
                    plus = twin.loss(probe)
                    probe[i] -= 2 * CENTRAL_DIFFERENCE_STEP
                    gradient[i] = (plus - twin.loss(probe)) / (2 * CENTRAL_DIFFERENCE_STEP)
                else:
                    probe[i] += b4.FINITE_DIFFERENCE_STEP
                    gradient[i] = (twin.loss(probe) - loss) / b4.FINITE_DIFFERENCE_STEP
            twin.reset()
            # ∂Φ/∂θ = (∂Φ/∂u) / θ₀
            return torch.tensor(loss), torch.from_numpy(gradient) / theta0.double()

        return run

    def loss_with_graph(self, implementation: str) -> Callable[[], Tensor]:
        """The forward half of forward+backward (graph recorded), for saved-tensor bytes."""

        def run() -> Tensor:
            self.model.zero_grad(set_to_none=True)
            return self.loss(implementation)

        return run


def graph_saved_bytes(output: Tensor) -> int:
    """Bytes of distinct storages saved in the autograd graph of ``output`` (deterministic).

    Walks the graph and reads every node's saved tensors (``_saved_*`` of built-in nodes,
    ``saved_tensors`` of custom Functions). Used instead of ``common.saved_tensor_bytes``, whose
    saved-tensor hooks ``torch.func.jacrev`` (inside both Newton solvers) does not support.
    """
    storages: dict[int, int] = {}
    seen: set[int] = set()
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        values: list[Any] = []
        for attribute in dir(node):
            if attribute.startswith("_saved_"):
                try:
                    values.append(getattr(node, attribute))
                except RuntimeError:  # freed or not accessible
                    continue
        saved = getattr(node, "saved_tensors", None)
        if isinstance(saved, tuple):
            values.extend(saved)
        for value in values:
            for tensor in value if isinstance(value, tuple | list) else (value,):
                if isinstance(tensor, Tensor):
                    storage = tensor.untyped_storage()
                    storages[storage.data_ptr()] = storage.nbytes()
        stack.extend(next_node for next_node, _ in node.next_functions)
    return sum(storages.values())


def _equilibrium_entries(dtype_name: str) -> dict[str, Any]:
    """B3.6 equilibria at truth and guess (float64), to 1e-10 W m-2 from T⁰."""
    entries: dict[str, Any] = {}
    for point, parameters in PARAMETERS.items():
        model = EBM1D(**parameters, dtype=torch.float64)
        info = EquilibriumInfo()
        with torch.no_grad():
            state = model.equilibrium(tol=REFERENCE_ITERATION_TOLERANCE, info=info)
            diagnostics = model.diagnose(state)
        temperature = state["surface_temperature"] - CELSIUS
        values: dict[str, Any] = {
            f"T[{lat:+d}]": temperature[b4.band_index(model, lat)]
            for lat in (-89, -1, 1, 61, 71, 89)
        }
        values["global mean T"] = diagnostics["global_mean_temperature"] - CELSIUS
        values["global mean OLR"] = diagnostics["global_mean_outgoing_longwave"]
        for name, value in values.items():
            entries[f"{point} {name}"] = common.reference_entry(
                value, EQUILIBRIUM_REFERENCE[point][name], FLOAT64_GATE
            )
        edge = float(diagnostics["ice_edge_latitude"])
        reference_edge = EQUILIBRIUM_REFERENCE[point]["ice edge north"]
        if math.isnan(reference_edge):
            entries[f"{point} ice edge north"] = {
                "value": edge,
                "reference": "none (ice-free)",
                "passed": math.isnan(edge),
            }
        else:
            entries[f"{point} ice edge north"] = common.reference_entry(
                edge, reference_edge, FLOAT64_GATE
            )
        expected = EQUILIBRIUM_REFERENCE[point]["Newton iterations"]
        entries[f"{point} Newton iterations to 1e-10"] = {
            "value": info.iterations,
            "reference": expected,
            "passed": info.iterations == expected,
        }
    return entries


def reference_check(problem: Problem, implementations: list[str]) -> dict[str, Any]:
    """B3.6: equilibria (float64) and Φ, ∂Φ/∂θ at θ₀ for every exact implementation.

    float32: Φ within 1e-4 and each gradient entry within 3e-3 of the **float64** values (B3.6).
    """
    entries = _equilibrium_entries(problem.dtype_name)
    reference = GRADIENT_REFERENCE["float64"]
    for name in implementations:
        loss, gradient = problem.forward_backward(name)()
        values = {"Phi": loss, "dA": gradient[0], "dB": gradient[1], "dD": gradient[2]}
        for quantity, value in values.items():
            if problem.dtype_name == "float64":
                tolerance = FLOAT64_GATE
            else:
                tolerance = FLOAT32_GATE["loss" if quantity == "Phi" else "gradient"]
            entries[f"{name}: {quantity}"] = common.reference_entry(
                value, reference[quantity], tolerance
            )
    return {"passed": all(e["passed"] for e in entries.values()), "entries": entries}


def _entry(
    problem: Problem,
    name: str,
    forward: common.Timing,
    forward_backward: common.Timing,
    first_call_s: float,
) -> dict[str, Any]:
    exact = not name.startswith("finite_differences")
    implementation = "implicit" if name == "custom" else "unrolled" if name == "autograd" else name
    return {
        "forward_s": forward.median_s,
        "forward_backward_s": forward_backward.median_s,
        "forward_cpu_s": forward.cpu_median_s,
        "forward_backward_cpu_s": forward_backward.cpu_median_s,
        "forward": forward.as_dict(),
        "forward_backward": forward_backward.as_dict(),
        "grad_forward_ratio": common.paired_ratio(forward_backward, forward),
        "peak_memory_forward_bytes": common.peak_memory_bytes(
            problem.forward("implicit" if not exact else implementation)
        ),
        "peak_memory_bytes": common.peak_memory_bytes(problem.forward_backward(implementation)),
        "saved_tensor_bytes": (
            graph_saved_bytes(problem.loss_with_graph(implementation)()) if exact else 0
        ),
        "first_call_s": first_call_s,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """B3 options for ``scripts/bench.py``."""
    parser.add_argument(
        "--calibration-runs",
        type=int,
        default=3,
        help="full calibrations from θ₀ (B3.5; float64; 0 skips them)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run B3 for ``args.dtype`` and return the JSON-ready result."""
    if args.device != "cpu":
        raise SystemExit("B3 runs on the CPU (a 90-band model; docs/benchmark_problems.md 0.3).")
    problem = Problem(args.dtype)
    exact = {"custom": "implicit", "autograd": "unrolled"}
    fd_names = (
        ["finite_differences_forward", "finite_differences_central"]
        if args.dtype == "float64"
        else []
    )
    first_calls = {
        name: common.first_call_seconds(problem.forward_backward(impl))
        for name, impl in exact.items()
    }
    check = reference_check(problem, list(exact.values()))
    functions: dict[str, Callable[[], Any]] = {}
    for name, implementation in exact.items():
        functions[f"{name}/forward"] = problem.forward(implementation)
        functions[f"{name}/forward_backward"] = problem.forward_backward(implementation)
    for name in fd_names:
        functions[f"{name}/forward_backward"] = problem.forward_backward(name)
    timings = common.time_interleaved(functions, repeats=args.repeats, warmup=args.warmup)
    entries = {
        name: _entry(
            problem,
            name,
            timings[f"{name}/forward"],
            timings[f"{name}/forward_backward"],
            first_calls[name],
        )
        for name in exact
    }
    variants = {
        name: _entry(
            problem,
            name,
            timings["custom/forward"],
            timings[f"{name}/forward_backward"],
            math.nan,
        )
        for name in fd_names
    }
    implicit = problem.forward_backward("implicit")()
    comparisons: dict[str, Any] = {
        "speedup_forward_backward_implicit_vs_unrolled": common.paired_ratio(
            timings["autograd/forward_backward"], timings["custom/forward_backward"]
        ),
        "saved_tensor_ratio_unrolled_vs_implicit": entries["autograd"]["saved_tensor_bytes"]
        / max(entries["custom"]["saved_tensor_bytes"], 1),
        "gradient_relative_error_unrolled_vs_implicit": common.relative_error(
            problem.forward_backward("unrolled")()[1], implicit[1]
        ),
    }
    for name in fd_names:
        comparisons[f"gradient_relative_error_{name}_vs_implicit"] = common.relative_error(
            problem.forward_backward(name)()[1], implicit[1]
        )
        comparisons[f"speedup_{name}_vs_implicit"] = common.paired_ratio(
            timings[f"{name}/forward_backward"], timings["custom/forward_backward"]
        )
    calibration = None
    runs = getattr(args, "calibration_runs", 3)
    if args.dtype == "float64" and runs > 0:
        calibration = b4.run_method(b4.Twin(3), "lbfgs", repeats=runs, seeds=(), time_limit=None)
    return {
        "problem": "B3",
        "dtype": args.dtype,
        "device": "cpu",
        "size": {"bands": 90, "solve_tolerance": problem.tolerance, "name": "default"},
        "repeats": args.repeats,
        "machine": common.machine_info("cpu"),
        "reference_check": check,
        "custom": entries["custom"],
        "autograd": entries["autograd"],
        "variants": variants,
        "comparisons": comparisons,
        "calibration": calibration,
        "state_array_bytes": 90 * common.dtype_from_name(args.dtype).itemsize,
    }
