"""Benchmark B3 (docs/benchmark_problems.md): the diffusive energy-balance model's equilibrium, Φ.

:class:`climgrad.models.EBM1D` (90 bands of 2°) solved by Newton's method from B3's T⁰; the twin
loss Φ(θ) of B3.4 at θ₀ = (190, 1.8, 0.45). Implementations of Φ and ∂Φ/∂θ:

``custom``
    ``EBM1D.equilibrium(parameters=θ)``: θ = (A, B, D) a leaf tensor in physical units; Newton
    without a graph on B3.2's analytic tridiagonal Jacobian (one Thomas sweep per step), then
    implicit differentiation (one transposed tridiagonal solve and a closed-form
    vector-Jacobian product, :func:`climgrad.integrate.equilibrium`).
``autograd``
    The reference of the issue "Speed where calibration spends its time": B3 in **plain
    PyTorch** (no climgrad), Newton from T⁰ unrolled for a fixed 12 iterations with B3.2's
    analytic *dense* Jacobian and ``torch.linalg.solve``, differentiated by autograd through
    every iteration (:class:`PlainTorchB3`).
``custom_raw_parameters`` (variant)
    ``EBM1D.equilibrium()`` on the model's own (log-)parameters, as a calibration uses it;
    ∂Φ/∂θ from the raw gradients by the chain rule (``physical_gradients``).
``custom_dense`` (variant)
    The same residual through the general dense path (``jacobian="dense"``: ``torch.func``
    Jacobian and LU in Newton and in the adjoint).
``unrolled_modules`` (variant)
    The earlier "autograd" implementation: Newton through the model's modules
    (``functional(model, "heating")``, Jacobian by ``torch.func.jacrev``), recorded by autograd.
``jax`` (variant; only when ``jax`` is installed: the extra ``bench-jax``)
    B3 in **JAX** (``scripts/bench/b3_jax.py``; no climgrad): Newton on B3.2's tridiagonal
    Jacobian inside ``jax.jit``, the gradient by implicit differentiation (``jax.custom_vjp``, one
    transposed tridiagonal solve). The issue's target is climgrad's forward+backward within 2× of
    it (``comparisons["ratio_forward_backward_custom_over_jax"]``, paired). Its JIT compile time is
    its ``first_call_s`` (and ``compile_s``), outside the timed rounds. Without ``jax`` the row is
    skipped with one line on stderr.
``finite_differences_forward`` / ``finite_differences_central`` (float64 only)
    ∂Φ/∂θ from P + 1 (forward, step 1e-8 in u = θ/θ₀, as B4.3 d) or 2P + 1 solves (central,
    step 1e-5 in u). Their "forward" column is the ``custom`` forward of the same rounds.

"forward" is the equilibrium solve from T⁰ plus Φ, with gradient recording off. The float32
variant builds the model in float32 with the float32 tolerance of B3.3 (2e-2 W m-2) and the float64
observations rounded to float32. The full calibration from θ₀ to 1 % (B3.5) is B4's P = 3 L-BFGS-B
with exact gradients (float64), run ``--calibration-runs`` times.

``adam_step``: one Adam step of an ``ebm_ncep``-like calibration (the model as
``conf/model/ebm1d.yaml`` builds it, A, B, D, a0, a2 learnt; the equilibrium's temperature, OLR,
insolation and reflected shortwave against targets with the errors of ``data/specs/ebm_1d.yaml``;
``torch.optim.Adam`` at lr 0.02), timed per step (forward, gradient, update).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from collections.abc import Callable
from typing import Any, Literal

import b4
import common
import numpy as np
import torch
from torch import Tensor

from climgrad.integrate import EquilibriumError, EquilibriumInfo
from climgrad.models import EBM1D
from climgrad.models.base import functional
from climgrad.params import physical_gradients

#: The JAX reference runs only where ``jax`` is installed (``pip install -e '.[bench-jax]'``).
JAX_AVAILABLE = importlib.util.find_spec("jax") is not None
if JAX_AVAILABLE:
    import b3_jax
JAX_SKIPPED_MESSAGE = (
    "B3: JAX row skipped: jax is not installed "
    "(pip install -e '.[bench-jax]' to measure the issue's JAX target)"
)
#: Issue target: climgrad's B3 forward+backward within this factor of JAX jit (implicit gradient).
JAX_TARGET_RATIO = 2.0

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


#: Implementation names in the result -> keys of :class:`Problem`.
IMPLEMENTATIONS = {
    "custom": "implicit",
    "autograd": "plain_torch",
    "custom_raw_parameters": "implicit_raw",
    "custom_dense": "implicit_dense",
    "unrolled_modules": "unrolled",
}
#: Newton iterations of the plain-PyTorch reference (fixed, no convergence test).
PLAIN_NEWTON_ITERATIONS = 12


def unrolled_equilibrium(model: EBM1D, tol: float, max_iter: int = 50) -> Tensor:
    """Newton from T⁰ through the model's modules, recorded by autograd (the iterations unrolled).

    Residual ``model.heating`` as a function of the module's parameters (``functional``),
    Jacobian by ``torch.func.jacrev``, dense solves, stopping rule max |F| <= ``tol`` (W m-2):
    the same iterates as :meth:`EBM1D.equilibrium`; only the gradient path differs.
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


class PlainTorchB3:
    """B3 in plain PyTorch, unrolled: the reference the issue compares climgrad against.

    Written from B3.1–B3.4 alone (no climgrad code): the residual
    ``F = Q s (1 − a(T)) − (A + B T) + D 𝓛T`` in °C with 𝓛 as a dense ``(90, 90)`` matrix, its
    analytic Jacobian ``D 𝓛 − diag(Q s ∂a/∂T + B)`` (B3.2), Newton from T⁰ for a fixed
    :data:`PLAIN_NEWTON_ITERATIONS` iterations with ``torch.linalg.solve`` (no convergence test,
    so no host synchronisation, as a traced loop would run), the loss Φ of B3.4, and autograd
    through every iteration for ∂Φ/∂θ, θ = (A, B, D) a leaf tensor.

    Args:
        dtype: Of every array (B3 float64 or float32).
        observations: y of B3.4, ``(180,)``: temperatures in K, then OLR in W m-2.
    """

    def __init__(self, dtype: torch.dtype, observations: Tensor) -> None:
        bands = 90
        index = torch.arange(bands, dtype=torch.float64)
        latitude = torch.deg2rad(-89.0 + 2.0 * index)
        boundary = torch.deg2rad(-90.0 + 2.0 * torch.arange(bands + 1, dtype=torch.float64))
        p2 = (3.0 * torch.sin(latitude) ** 2 - 1.0) / 2.0
        conductance = torch.cos(boundary)
        conductance[0] = conductance[-1] = 0.0
        metric = torch.cos(latitude) * (math.pi / bands) ** 2
        operator = (
            torch.diag(-(conductance[:-1] + conductance[1:]))
            + torch.diag(conductance[1:-1], 1)
            + torch.diag(conductance[1:-1], -1)
        ) / metric.unsqueeze(-1)
        self.insolation = (340.0 * (1.0 - 0.482 * p2)).to(dtype)
        self.warm_albedo = (0.30 + 0.078 * p2).to(dtype)
        self.operator = operator.to(dtype)
        self.start = (12.0 - 40.0 * p2).to(dtype)
        self.target_temperature = (observations[:bands] - CELSIUS).to(dtype)
        self.target_olr = observations[bands:].to(dtype)

    def _residual_and_jacobian(
        self, t: Tensor, a: Tensor, b: Tensor, d: Tensor
    ) -> tuple[Tensor, Tensor]:
        slope = torch.tanh((t + 10.0) / 2.0)
        ice = 0.5 * (1.0 - slope)
        albedo = self.warm_albedo + (0.62 - self.warm_albedo) * ice
        residual = self.insolation * (1.0 - albedo) - (a + b * t) + d * (self.operator @ t)
        albedo_slope = -(0.62 - self.warm_albedo) * (1.0 - slope**2) / 4.0
        jacobian = d * self.operator - torch.diag(self.insolation * albedo_slope + b)
        return residual, jacobian

    def loss(self, theta: Tensor) -> Tensor:
        """Φ(θ) after 12 Newton iterations from T⁰ (recorded when gradients are enabled)."""
        a, b, d = theta.unbind()
        t = self.start
        for _ in range(PLAIN_NEWTON_ITERATIONS):
            residual, jacobian = self._residual_and_jacobian(t, a, b, d)
            t = t - torch.linalg.solve(jacobian, residual)
        temperature = ((t - self.target_temperature) / b4.SIGMA_TEMPERATURE) ** 2
        olr = ((a + b * t - self.target_olr) / b4.SIGMA_OLR) ** 2
        return 0.5 * (temperature.sum() + olr.sum())


class Problem:
    """B3 at θ₀ in one dtype: the model, observations and the timed callables (built once)."""

    def __init__(self, dtype_name: str) -> None:
        self.dtype_name = dtype_name
        self.tolerance = TOLERANCE[dtype_name]
        self.twin = b4.Twin(3, dtype=common.dtype_from_name(dtype_name), tolerance=self.tolerance)
        self.twin.paused = True  # B3 counts nothing; B4 does.
        self.twin.reset()
        self.model = self.twin.model
        self.theta0 = self.twin.theta0.clone()
        self.plain = PlainTorchB3(self.theta0.dtype, self.twin.observations)
        self.raw_parameters = list(self.model.parameters())
        self._jax: Any = None

    @property
    def jax(self) -> Any:
        """The JAX implementation (:class:`b3_jax.JaxB3`), built on first use (needs ``jax``)."""
        if self._jax is None:
            if not JAX_AVAILABLE:
                raise RuntimeError(JAX_SKIPPED_MESSAGE)
            b3_jax.configure_threads(torch.get_num_threads())
            self._jax = b3_jax.JaxB3(
                self.dtype_name,
                self.twin.observations.double().cpu().numpy(),
                self.tolerance,
                b4.SIGMA_TEMPERATURE,
                b4.SIGMA_OLR,
            )
        return self._jax

    def _loss(self, implementation: str, theta: Tensor) -> Tensor:
        if implementation == "plain_torch":
            return self.plain.loss(theta)
        if implementation == "unrolled":
            state = {"surface_temperature": unrolled_equilibrium(self.model, self.tolerance)}
            return self.twin.misfit(self.twin._observables(self.model, state))
        # θ in physical units, or the model's own raw parameters (written to θ₀ by reset()).
        overrides = None if implementation == "implicit_raw" else self.twin.overrides(theta)
        state = self.model.equilibrium(
            tol=self.tolerance,
            parameters=overrides,
            jacobian="dense" if implementation == "implicit_dense" else "tridiagonal",
        )
        return self.twin.misfit(self.twin._observables(self.model, state, overrides))

    def _takes_theta(self, implementation: str) -> bool:
        return implementation in ("implicit", "implicit_dense", "plain_torch")

    def loss(self, implementation: str) -> Tensor:
        """Φ(θ₀) with or without a graph (the caller sets the grad mode)."""
        theta = self.theta0.clone()
        if torch.is_grad_enabled() and self._takes_theta(implementation):
            theta.requires_grad_(True)
        return self._loss(implementation, theta)

    def forward(self, implementation: str) -> Callable[[], Tensor]:
        def run() -> Tensor:
            with torch.no_grad():
                return self.loss(implementation)

        return run

    def forward_backward(self, implementation: str) -> Callable[[], tuple[Tensor, Tensor]]:
        """Φ and ∂Φ/∂θ = (∂Φ/∂A, ∂Φ/∂B, ∂Φ/∂D) in physical units.

        ``"jax"`` gives the JAX result as torch tensors (for the gate; the timed JAX callables are
        ``problem.jax.forward`` and ``problem.jax.forward_backward``).
        """
        if implementation == "jax":

            def run_jax() -> tuple[Tensor, Tensor]:
                value, gradient = self.jax.result()
                return torch.tensor(value), torch.tensor(gradient)

            return run_jax
        if implementation.startswith("finite_differences"):
            return self._finite_differences(implementation.endswith("central"))
        if self._takes_theta(implementation):

            def run_theta() -> tuple[Tensor, Tensor]:
                theta = self.theta0.clone().requires_grad_(True)
                value = self._loss(implementation, theta)
                (gradient,) = torch.autograd.grad(value, theta)
                return value.detach(), gradient

            return run_theta

        def run_raw() -> tuple[Tensor, Tensor]:
            for parameter in self.raw_parameters:
                parameter.grad = None
            value = self._loss(implementation, self.theta0)
            value.backward()
            gradients = physical_gradients(self.model)
            return value.detach(), torch.stack([gradients[n] for n in ("A", "B", "D")])

        return run_raw

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
            # ∂Φ/∂θ = (∂Φ/∂u) / θ₀
            return torch.tensor(loss), torch.from_numpy(gradient) / theta0.double()

        return run

    def loss_with_graph(self, implementation: str) -> Callable[[], Tensor]:
        """The forward half of forward+backward (graph recorded), for saved-tensor bytes."""

        def run() -> Tensor:
            for parameter in self.raw_parameters:
                parameter.grad = None
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
    ``"jax"`` is gated in addition against climgrad's own result (``implicit``, same dtype: 1e-8
    in float64, the float32 gates in float32) and on its Newton solve reaching the tolerance.
    """
    entries = _equilibrium_entries(problem.dtype_name)
    reference = GRADIENT_REFERENCE["float64"]
    if "jax" in implementations:
        entries.update(_jax_entries(problem))
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


def _jax_entries(problem: Problem) -> dict[str, Any]:
    """The JAX result against climgrad's B3 result, and its Newton solve at θ₀."""
    entries: dict[str, Any] = {}
    climgrad_loss, climgrad_gradient = problem.forward_backward("implicit")()
    loss, gradient = problem.forward_backward("jax")()
    float64 = problem.dtype_name == "float64"
    for quantity, value, reference_value in (
        ("Phi", loss, climgrad_loss),
        ("gradient", gradient, climgrad_gradient),
    ):
        error = common.relative_error(value, reference_value)
        tolerance = (
            FLOAT64_GATE if float64 else FLOAT32_GATE["loss" if quantity == "Phi" else "gradient"]
        )
        entries[f"jax vs custom: {quantity}"] = {
            "value": value.double().tolist(),
            "reference": reference_value.double().tolist(),
            "relative_error": error,
            "tolerance": tolerance,
            "passed": bool(math.isfinite(error) and error <= tolerance),
        }
    info = problem.jax.solve_info()
    entries["jax: Newton reaches the tolerance"] = {
        "value": info,
        "reference": f"max |F| <= {problem.tolerance:g} W m-2, "
        f"< {b3_jax.MAX_ITERATIONS} iterations",
        "passed": info["max_residual"] <= problem.tolerance
        and info["iterations"] < b3_jax.MAX_ITERATIONS,
    }
    return entries


def _jax_entry(
    problem: Problem,
    forward: common.Timing,
    forward_backward: common.Timing,
    compile_s: dict[str, float],
) -> dict[str, Any]:
    """The ``jax`` row: the fields of :func:`_entry` (no saved-tensor figure: not a torch graph)."""
    return {
        "implementation": "jax",
        **_timing_fields(forward, forward_backward),
        "peak_memory_forward_bytes": common.peak_memory_bytes(problem.jax.forward),
        "peak_memory_bytes": common.peak_memory_bytes(problem.jax.forward_backward),
        "saved_tensor_bytes": None,
        # First call of forward+backward: trace, XLA compile and one run (section 0.3).
        "first_call_s": compile_s["forward_backward"],
        "compile_s": compile_s,
    }


def jax_results(
    problem: Problem, timings: dict[str, common.Timing], compile_s: dict[str, float]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The ``jax`` row, its comparisons and a summary, from interleaved rounds.

    ``timings`` holds ``custom/forward``, ``custom/forward_backward``, ``autograd/...`` and
    ``jax/...`` of the same rounds; the ratios are paired (section 0.3).
    """
    entry = _jax_entry(problem, timings["jax/forward"], timings["jax/forward_backward"], compile_s)
    # t(custom) / t(jax) per round: the target is <= 2 (forward+backward).
    ratio = common.paired_ratio(timings["custom/forward_backward"], timings["jax/forward_backward"])
    comparisons: dict[str, Any] = {
        "ratio_forward_backward_custom_over_jax": {
            **ratio,
            "target": JAX_TARGET_RATIO,
            "meets_target": ratio["median"] <= JAX_TARGET_RATIO,
        },
        "ratio_forward_custom_over_jax": common.paired_ratio(
            timings["custom/forward"], timings["jax/forward"]
        ),
        "ratio_forward_backward_autograd_over_jax": common.paired_ratio(
            timings["autograd/forward_backward"], timings["jax/forward_backward"]
        ),
        "gradient_relative_error_jax_vs_custom": common.relative_error(
            problem.forward_backward("jax")()[1], problem.forward_backward("implicit")()[1]
        ),
        "jax_compile_s": compile_s,
    }
    summary = {
        "available": True,
        **b3_jax.versions(),
        "newton": problem.jax.solve_info(),
        "gradient": "implicit: jax.custom_vjp, one transposed tridiagonal solve (gtsv)",
    }
    return entry, comparisons, summary


def _timing_fields(forward: common.Timing, forward_backward: common.Timing) -> dict[str, Any]:
    """Medians (wall and CPU), the timings and the paired ratio of a timing-table row."""
    return {
        "forward_s": forward.median_s,
        "forward_backward_s": forward_backward.median_s,
        "forward_cpu_s": forward.cpu_median_s,
        "forward_backward_cpu_s": forward_backward.cpu_median_s,
        "forward": forward.as_dict(),
        "forward_backward": forward_backward.as_dict(),
        "grad_forward_ratio": common.paired_ratio(forward_backward, forward),
    }


def _entry(
    problem: Problem,
    implementation: str,
    forward: common.Timing,
    forward_backward: common.Timing,
    first_call_s: float,
) -> dict[str, Any]:
    exact = not implementation.startswith("finite_differences")
    return {
        "implementation": implementation,
        **_timing_fields(forward, forward_backward),
        "peak_memory_forward_bytes": common.peak_memory_bytes(
            problem.forward(implementation if exact else "implicit")
        ),
        "peak_memory_bytes": common.peak_memory_bytes(problem.forward_backward(implementation)),
        "saved_tensor_bytes": (
            graph_saved_bytes(problem.loss_with_graph(implementation)()) if exact else 0
        ),
        "first_call_s": first_call_s,
    }


# ------------------------------------------------------------------------------------------------
# One Adam step of an ebm_ncep-like calibration
# ------------------------------------------------------------------------------------------------

#: conf/model/ebm1d.yaml: values, and which parameters are learnt.
EBM_NCEP_MODEL: dict[str, Any] = {
    "bands": 90,
    "insolation": "p2",
    "albedo_mode": "smooth",
    "transition_width": 2.0,
    "A": 210.0,
    "B": 2.0,
    "D": 0.555,
    "a0": 0.30,
    "a2": 0.078,
    "ai": 0.62,
    "Tf": 263.15,
    "S0": 1360.0,
    "heat_capacity": 4.2e7,
    "learn": ("A", "B", "D", "a0", "a2"),
}
#: data/specs/ebm_1d.yaml: observed variable -> (model output, error in its units).
EBM_NCEP_OBSERVATIONS = {
    "surface_temperature": ("surface_temperature", 1.0),
    "outgoing_longwave": ("outgoing_longwave_radiation", 5.0),
    "insolation": ("insolation", 1.0),
    "reflected_shortwave": ("reflected_shortwave_radiation", 5.0),
}
#: Targets: the equilibrium of North et al. (1981)'s values (the twin_ebm1d truth).
EBM_NCEP_TARGET = {"A": 203.3, "B": 2.09, "D": 0.649, "a0": 0.31, "a2": 0.06}
ADAM_LEARNING_RATE = 0.02  # conf/optimizer/adam.yaml


def ebm_ncep_step(
    jacobian: Literal["tridiagonal", "dense"] = "tridiagonal",
) -> Callable[[], Tensor]:
    """One Adam step (forward, gradient, update) of an ``ebm_ncep``-like calibration.

    The model as ``conf/model/ebm1d.yaml`` builds it; as the ``ebm1d`` adapter simulates it
    (``EBM1D.equilibrium`` at 1e-9 W m-2, then ``model(state)`` for the diagnostics); the misfit
    of the calibration loss, ``Σ_v Σ_i a_i ((y_i − o_i)/σ_v)²`` with area weights ``a_i``
    (summing to one) and the errors of ``data/specs/ebm_1d.yaml``, against targets made by the
    model at North et al. (1981)'s values (the data are not read: the step's cost does not depend
    on them); ``torch.optim.Adam`` on the raw parameters at lr 0.02.
    """
    model = EBM1D(**EBM_NCEP_MODEL)
    truth = EBM1D(**{**EBM_NCEP_MODEL, **EBM_NCEP_TARGET})
    with torch.no_grad():
        truth_state = truth.equilibrium()
        truth_outputs = {**truth_state, **truth(truth_state)[1]}
    targets = {name: truth_outputs[output] for name, (output, _) in EBM_NCEP_OBSERVATIONS.items()}
    grid = model.grid
    area = torch.sin(grid.band_boundaries[1:]) - torch.sin(grid.band_boundaries[:-1])
    weights = area / area.sum()
    optimizer = torch.optim.Adam(model.learnable_parameters(), lr=ADAM_LEARNING_RATE)

    def step() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        state = model.equilibrium(tol=b4.SOLVE_TOLERANCE, jacobian=jacobian)
        outputs = {**state, **model(state)[1]}
        loss = torch.zeros((), dtype=weights.dtype)
        for name, (output, error) in EBM_NCEP_OBSERVATIONS.items():
            loss = loss + (weights * ((outputs[output] - targets[name]) / error) ** 2).sum()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def adam_step_benchmark(steps: int) -> dict[str, Any]:
    """ms per Adam step: the default (tridiagonal) path on its own, as a calibration runs it, and
    then interleaved with the dense path for the paired ratio (section 0.3)."""
    alone = common.time_interleaved({"tridiagonal": ebm_ncep_step()}, repeats=steps, warmup=3)
    paired_steps = max(5, min(steps, 20))
    functions = {"tridiagonal": ebm_ncep_step(), "dense": ebm_ncep_step("dense")}
    paired = common.time_interleaved(functions, repeats=paired_steps, warmup=3)
    return {
        "steps": steps,
        "step_ms": alone["tridiagonal"].milliseconds(),
        "paired_steps": paired_steps,
        "paired_step_ms": {name: timing.milliseconds() for name, timing in paired.items()},
        "speedup_tridiagonal_vs_dense": common.paired_ratio(paired["dense"], paired["tridiagonal"]),
    }


_jax_skip_reported = False


def _report_jax_skipped() -> None:
    """One line on stderr (stdout stays JSON with ``--json``), once per process."""
    global _jax_skip_reported
    if not _jax_skip_reported:
        print(JAX_SKIPPED_MESSAGE, file=sys.stderr)
        _jax_skip_reported = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """B3 options for ``scripts/bench.py``."""
    parser.add_argument(
        "--calibration-runs",
        type=int,
        default=3,
        help="full calibrations from θ₀ (B3.5; float64; 0 skips them)",
    )
    parser.add_argument(
        "--adam-steps",
        type=int,
        default=30,
        help="timed Adam steps of the ebm_ncep-like calibration (float64; 0 skips them)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run B3 for ``args.dtype`` and return the JSON-ready result."""
    if args.device != "cpu":
        raise SystemExit("B3 runs on the CPU (a 90-band model; docs/benchmark_problems.md 0.3).")
    problem = Problem(args.dtype)
    fd_names = (
        ["finite_differences_forward", "finite_differences_central"]
        if args.dtype == "float64"
        else []
    )
    first_calls = {
        name: common.first_call_seconds(problem.forward_backward(implementation))
        for name, implementation in IMPLEMENTATIONS.items()
    }
    jax_compile_s: dict[str, float] = {}
    if JAX_AVAILABLE:
        # JIT compile time, reported on its own; the timed rounds below start after it.
        jax_compile_s = problem.jax.compile_seconds(common.first_call_seconds)
    else:
        _report_jax_skipped()
    gated = list(IMPLEMENTATIONS.values()) + (["jax"] if JAX_AVAILABLE else [])
    check = reference_check(problem, gated)
    functions: dict[str, Callable[[], Any]] = {}
    for name, implementation in IMPLEMENTATIONS.items():
        functions[f"{name}/forward"] = problem.forward(implementation)
        functions[f"{name}/forward_backward"] = problem.forward_backward(implementation)
    for name in fd_names:
        functions[f"{name}/forward_backward"] = problem.forward_backward(name)
    if JAX_AVAILABLE:
        functions["jax/forward"] = problem.jax.forward
        functions["jax/forward_backward"] = problem.jax.forward_backward
    timings = common.time_interleaved(functions, repeats=args.repeats, warmup=args.warmup)
    entries = {
        name: _entry(
            problem,
            implementation,
            timings[f"{name}/forward"],
            timings[f"{name}/forward_backward"],
            first_calls[name],
        )
        for name, implementation in IMPLEMENTATIONS.items()
    }
    variants = {
        name: entries[name] for name in IMPLEMENTATIONS if name not in ("custom", "autograd")
    }
    for name in fd_names:
        variants[name] = _entry(
            problem, name, timings["custom/forward"], timings[f"{name}/forward_backward"], math.nan
        )
    implicit = problem.forward_backward("implicit")()
    comparisons: dict[str, Any] = {}
    for name in IMPLEMENTATIONS:
        if name == "custom":
            continue
        # How many times faster `custom` is than `name` (paired rounds).
        comparisons[f"speedup_forward_backward_custom_vs_{name}"] = common.paired_ratio(
            timings[f"{name}/forward_backward"], timings["custom/forward_backward"]
        )
        comparisons[f"speedup_forward_custom_vs_{name}"] = common.paired_ratio(
            timings[f"{name}/forward"], timings["custom/forward"]
        )
        comparisons[f"gradient_relative_error_{name}_vs_custom"] = common.relative_error(
            problem.forward_backward(IMPLEMENTATIONS[name])()[1], implicit[1]
        )
    comparisons["speedup_forward_backward_custom_raw_parameters_vs_autograd"] = common.paired_ratio(
        timings["autograd/forward_backward"],
        timings["custom_raw_parameters/forward_backward"],
    )
    jax_summary: dict[str, Any] = {"available": JAX_AVAILABLE}
    if JAX_AVAILABLE:
        variants["jax"], jax_comparisons, jax_summary = jax_results(problem, timings, jax_compile_s)
        comparisons.update(jax_comparisons)
    else:
        jax_summary["skipped"] = JAX_SKIPPED_MESSAGE
    comparisons["saved_tensor_ratio_unrolled_modules_vs_custom"] = entries["unrolled_modules"][
        "saved_tensor_bytes"
    ] / max(entries["custom"]["saved_tensor_bytes"], 1)
    for name in fd_names:
        comparisons[f"gradient_relative_error_{name}_vs_custom"] = common.relative_error(
            problem.forward_backward(name)()[1], implicit[1]
        )
        comparisons[f"speedup_{name}_vs_custom"] = common.paired_ratio(
            timings[f"{name}/forward_backward"], timings["custom/forward_backward"]
        )
    calibration = None
    runs = getattr(args, "calibration_runs", 3)
    if args.dtype == "float64" and runs > 0:
        calibration = b4.run_method(b4.Twin(3), "lbfgs", repeats=runs, seeds=(), time_limit=None)
    adam = None
    adam_steps = getattr(args, "adam_steps", 30)
    if args.dtype == "float64" and adam_steps > 0:
        adam = adam_step_benchmark(adam_steps)
        comparisons["adam_step_ms"] = adam["step_ms"]
        comparisons["adam_step_speedup_tridiagonal_vs_dense"] = adam["speedup_tridiagonal_vs_dense"]
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
        "adam_step": adam,
        "jax": jax_summary,
        "state_array_bytes": 90 * common.dtype_from_name(args.dtype).itemsize,
    }
