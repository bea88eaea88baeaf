"""Benchmark B3 in JAX: the reference the issue states its target against (benchmark-only).

Imported by ``scripts/bench/b3.py`` only when ``jax`` is importable (the optional extra
``bench-jax``: ``pip install -e '.[bench-jax]'``). Written from B3.1–B3.4 of
docs/benchmark_problems.md alone (no climgrad, no torch), in float64 (``jax_enable_x64``) or
float32:

- residual ``F = Q s (1 − a(T)) − (A + B T) + D 𝓛T`` in °C, with 𝓛 held as its three bands;
- Newton's method from T⁰ inside ``jax.jit``: a ``lax.while_loop`` that stops at
  ``max |F| <= tol`` (B3.3's tolerance: 1e-9 W m-2 in float64, 2e-2 in float32) or after
  :data:`MAX_ITERATIONS`; each step solves B3.2's analytic **tridiagonal** Jacobian
  ``D 𝓛 − diag(Q s ∂a/∂T + B)`` with ``jax.lax.linalg.tridiagonal_solve`` (LAPACK ``gtsv`` on
  the CPU; no dense matrix is formed);
- the gradient by **implicit differentiation**: the solve is a ``jax.custom_vjp`` whose backward
  pass makes one adjoint solve ``Jᵀ λ = T̄`` with the transposed tridiagonal Jacobian at T*, then
  ``θ̄ = −(∂F/∂θ)ᵀ λ`` from ``jax.vjp`` of the residual in θ (no Newton iteration is
  differentiated or stored);
- Φ of B3.4; ``jax.value_and_grad`` gives Φ and ∂Φ/∂θ (the OLR term's direct θ dependence by
  ordinary autodiff, the equilibrium's by the custom rule).

The solve has no restart with backtracking (climgrad's has one): Newton from T⁰ at θ₀ converges
without it, and :meth:`JaxB3.solve_info` reports the iterations and the final residual for the
correctness gate.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402  (after enabling float64)
from jax.lax.linalg import tridiagonal_solve  # noqa: E402

#: Newton iterations at most (as climgrad's ``integrate.equilibrium`` default).
MAX_ITERATIONS = 50
BANDS = 90
#: Single-threaded XLA CPU (Eigen) when the benchmark runs with one thread.
SINGLE_THREAD_XLA_FLAG = "--xla_cpu_multi_thread_eigen=false"


def configure_threads(threads: int) -> str:
    """With ``threads == 1``: one XLA compute thread, and no asynchronous CPU dispatch.

    Without async dispatch a jitted call runs on the calling thread, as torch's eager ops do; with
    it, each call hands its work to a JAX worker thread, which on a loaded 2-core machine waits for
    a core (B3 measured 0.25 ms instead of 0.15 ms per forward+backward that way). Must run before
    JAX's CPU backend starts (the first array); later calls change nothing. Returns the
    ``XLA_FLAGS`` in force.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if threads == 1:
        if SINGLE_THREAD_XLA_FLAG not in flags:
            flags = f"{flags} {SINGLE_THREAD_XLA_FLAG}".strip()
            os.environ["XLA_FLAGS"] = flags
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    return flags


def _shift_down(x: jax.Array) -> jax.Array:
    """``y[j] = x[j - 1]``, ``y[0] = 0``."""
    return jnp.concatenate([jnp.zeros_like(x[:1]), x[:-1]])


def _shift_up(x: jax.Array) -> jax.Array:
    """``y[j] = x[j + 1]``, ``y[-1] = 0``."""
    return jnp.concatenate([x[1:], jnp.zeros_like(x[:1])])


class JaxB3:
    """Φ(θ) and ∂Φ/∂θ of B3 in JAX, jitted (θ = (A, B, D) in physical units).

    Args:
        dtype_name: ``"float64"`` or ``"float32"`` (every array).
        observations: y of B3.4, ``(180,)`` float64: temperatures in K, then OLR in W m-2.
        tolerance: Newton's stopping residual, W m-2.
        sigma_temperature, sigma_olr: B3.4's error scales.
    """

    def __init__(
        self,
        dtype_name: str,
        observations: np.ndarray,
        tolerance: float,
        sigma_temperature: float,
        sigma_olr: float,
    ) -> None:
        dtype = {"float64": jnp.float64, "float32": jnp.float32}[dtype_name]
        self.dtype_name = dtype_name
        self.tolerance = tolerance
        # Constants in float64 (numpy), rounded to the dtype once (section 0.1).
        index = np.arange(BANDS, dtype=np.float64)
        latitude = np.deg2rad(-89.0 + 2.0 * index)
        boundary = np.deg2rad(-90.0 + 2.0 * np.arange(BANDS + 1, dtype=np.float64))
        p2 = (3.0 * np.sin(latitude) ** 2 - 1.0) / 2.0
        conductance = np.cos(boundary)
        conductance[0] = conductance[-1] = 0.0  # no flux through the poles, exactly
        metric = np.cos(latitude) * (math.pi / BANDS) ** 2

        def constant(values: np.ndarray) -> jax.Array:
            return jnp.asarray(values, dtype=dtype)

        # 𝓛 by bands: (𝓛T)_j = lower_j T_(j-1) + diagonal_j T_j + upper_j T_(j+1).
        lower = constant(conductance[:-1] / metric)
        upper = constant(conductance[1:] / metric)
        diagonal = constant(-(conductance[:-1] + conductance[1:]) / metric)
        insolation = constant(340.0 * (1.0 - 0.482 * p2))
        warm_albedo = constant(0.30 + 0.078 * p2)
        start = constant(12.0 - 40.0 * p2)
        observations = np.asarray(observations, dtype=np.float64)
        target_temperature = constant(observations[:BANDS] - 273.15)
        target_olr = constant(observations[BANDS:])
        self.theta0 = constant(np.array([190.0, 1.8, 0.45]))

        def diffusion(t: jax.Array) -> jax.Array:
            return diagonal * t + lower * _shift_down(t) + upper * _shift_up(t)

        def residual(t: jax.Array, theta: jax.Array) -> jax.Array:
            a, b, d = theta[0], theta[1], theta[2]
            ice = 0.5 * (1.0 - jnp.tanh((t + 10.0) / 2.0))
            albedo = warm_albedo + (0.62 - warm_albedo) * ice
            return insolation * (1.0 - albedo) - (a + b * t) + d * diffusion(t)

        def jacobian_bands(
            t: jax.Array, theta: jax.Array
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
            """B3.2's dF/dT as (sub, main, super) diagonals, in LAPACK gtsv's layout."""
            b, d = theta[1], theta[2]
            slope = jnp.tanh((t + 10.0) / 2.0)
            albedo_slope = -(0.62 - warm_albedo) * (1.0 - slope**2) / 4.0
            return d * lower, d * diagonal - (insolation * albedo_slope + b), d * upper

        def newton(theta: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
            """(T*, iterations, max |F(T*)|): Newton from T⁰ to the tolerance."""

            def carry_on(state: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
                _, f, iteration = state
                return (jnp.max(jnp.abs(f)) > tolerance) & (iteration < MAX_ITERATIONS)

            def step(
                state: tuple[jax.Array, jax.Array, jax.Array],
            ) -> tuple[jax.Array, jax.Array, jax.Array]:
                t, f, iteration = state
                sub, main, sup = jacobian_bands(t, theta)
                t = t - tridiagonal_solve(sub, main, sup, f[:, None])[:, 0]
                return t, residual(t, theta), iteration + 1

            state = (start, residual(start, theta), jnp.asarray(0, dtype=jnp.int32))
            t, f, iterations = jax.lax.while_loop(carry_on, step, state)
            return t, iterations, jnp.max(jnp.abs(f))

        @jax.custom_vjp
        def equilibrium(theta: jax.Array) -> jax.Array:
            return newton(theta)[0]

        def equilibrium_forward(theta: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
            t = newton(theta)[0]
            return t, (t, theta)

        def equilibrium_backward(
            saved: tuple[jax.Array, ...], t_bar: jax.Array
        ) -> tuple[jax.Array]:
            # F(T*(θ), θ) = 0  =>  θ̄ = −(∂F/∂θ)ᵀ J⁻ᵀ T̄, J = ∂F/∂T at T* (tridiagonal).
            t, theta = saved
            sub, main, sup = jacobian_bands(t, theta)
            # Jᵀ: its sub-diagonal is J's super-diagonal moved down one row, and vice versa.
            adjoint = tridiagonal_solve(_shift_down(sup), main, _shift_up(sub), t_bar[:, None])
            _, residual_vjp = jax.vjp(lambda th: residual(t, th), theta)
            (theta_bar,) = residual_vjp(-adjoint[:, 0])
            return (theta_bar,)

        equilibrium.defvjp(equilibrium_forward, equilibrium_backward)

        def loss(theta: jax.Array) -> jax.Array:
            t = equilibrium(theta)
            olr = theta[0] + theta[1] * t
            misfit_t = ((t - target_temperature) / sigma_temperature) ** 2
            misfit_olr = ((olr - target_olr) / sigma_olr) ** 2
            return 0.5 * (misfit_t.sum() + misfit_olr.sum())

        self._loss = jax.jit(loss)
        self._value_and_grad = jax.jit(jax.value_and_grad(loss))
        self._newton = jax.jit(newton)

    # -- timed callables (results blocked on, nothing converted) ---------------------------------

    def forward(self) -> jax.Array:
        """Φ(θ₀), jitted (no gradient)."""
        return self._loss(self.theta0).block_until_ready()

    def forward_backward(self) -> tuple[jax.Array, jax.Array]:
        """Φ(θ₀) and ∂Φ/∂θ, jitted."""
        return jax.block_until_ready(self._value_and_grad(self.theta0))

    # -- untimed ---------------------------------------------------------------------------------

    def compile_seconds(self, clock: Callable[[Callable[[], Any]], float]) -> dict[str, float]:
        """First calls (trace + XLA compile + one run) of forward and forward+backward.

        Call once, before anything else of this instance runs; ``clock`` times one call.
        """
        return {"forward": clock(self.forward), "forward_backward": clock(self.forward_backward)}

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(Φ, ∂Φ/∂θ) as float64 numpy arrays (for the correctness gate)."""
        value, gradient = self.forward_backward()
        return np.asarray(value, dtype=np.float64), np.asarray(gradient, dtype=np.float64)

    def solve_info(self) -> dict[str, float]:
        """Newton iterations from T⁰ at θ₀ and the final max |F| (W m-2)."""
        _, iterations, residual = self._newton(self.theta0)
        return {"iterations": int(iterations), "max_residual": float(residual)}


def versions() -> dict[str, str]:
    """jax and jaxlib versions, the XLA flags and whether CPU dispatch is asynchronous."""
    import jaxlib

    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cpu_async_dispatch": str(jax.config.read("jax_cpu_enable_async_dispatch")),
    }
