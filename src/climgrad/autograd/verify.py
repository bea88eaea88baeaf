"""Verifying gradients: gradcheck, Taylor remainder, adjoint (dot-product) and liveness tests.

Gradients are climgrad's product, so every differentiable function is checked four ways:

``gradcheck``
    :func:`torch.autograd.gradcheck` in float64: the backward against central finite differences,
    entry by entry (or along random directions with ``fast_mode`` for larger inputs).
``taylor``
    The first-order Taylor remainder ``r(h) = |J(x + h dx) - J(x) - h <grad J(x), dx>|`` must
    fall like ``h**2`` as ``h`` is halved (Farrell et al. 2013, SIAM J. Sci. Comput. 35, C369, the
    test behind pyadjoint's ``taylor_test``). A wrong gradient leaves an ``O(h)`` remainder.
``adjoint``
    The dot-product test ``<w, J v> = <J^T w, v>`` for random ``v`` and ``w``: the
    vector-Jacobian product (backward) against the Jacobian-vector product, taken by forward-mode
    AD when the function supports it and by central differences otherwise (the report says which).
``liveness``
    Every input or parameter that requires grad gets a finite, non-zero gradient. Zero ("dead"),
    NaN and infinite gradients are named. Inputs listed in ``expect_dead`` must get a zero gradient
    (a freezing temperature in a sharp-threshold mode, say).

A function with vector output is reduced to the scalar ``J(x) = sum <w_k, f_k(x)>`` with fixed
random weights ``w_k`` (seeded), so one backward pass exercises every output.

Example:
    >>> import torch
    >>> from climgrad.autograd.verify import check_gradients
    >>> x = torch.linspace(1.0, 2.0, 4, dtype=torch.float64, requires_grad=True)
    >>> report = check_gradients(torch.sin, (x,), names=["x"])
    >>> report.passed
    True
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

__all__ = [
    "CheckResult",
    "GradientCheckError",
    "GradientReport",
    "TaylorResult",
    "check_gradients",
    "taylor_test",
]

CHECKS: tuple[str, ...] = ("gradcheck", "taylor", "adjoint", "liveness")


class GradientCheckError(AssertionError):
    """Raised by :meth:`GradientReport.raise_if_failed` and by ``check_gradients(strict=True)``."""


@dataclass(frozen=True)
class CheckResult:
    """One line of a :class:`GradientReport`."""

    check: str
    target: str
    passed: bool
    detail: str


@dataclass
class GradientReport:
    """Results of :func:`check_gradients`; ``print(report)`` shows a table."""

    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return all(result.passed for result in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        """The checks that failed."""
        return [result for result in self.results if not result.passed]

    def raise_if_failed(self) -> None:
        """Raise :class:`GradientCheckError` listing the failed checks, if any."""
        if not self.passed:
            lines = [f"{r.check} [{r.target}]: {r.detail}" for r in self.failures]
            raise GradientCheckError(
                "gradient checks failed:\n  " + "\n  ".join(lines) + f"\n\n{self}"
            )

    def __str__(self) -> str:
        header = ("check", "target", "result", "detail")
        rows = [(r.check, r.target, "ok" if r.passed else "FAIL", r.detail) for r in self.results]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
        lines = []
        for row in [header, *rows]:
            cells = [row[i].ljust(widths[i]) for i in range(3)]
            lines.append("  ".join([*cells, row[3]]).rstrip())
        lines.insert(1, "  ".join("-" * w for w in widths) + "  ------")
        return "\n".join(lines)


@dataclass(frozen=True)
class TaylorResult:
    """Outcome of :func:`taylor_test`.

    Attributes:
        steps: The step sizes ``h`` (halved each time).
        residuals: First-order remainders ``|J(x + h dx) - J(x) - h dJ|`` for each step.
        rates: Observed convergence rates ``log2(r(h) / r(h/2))`` between consecutive steps.
        noise_floor: Remainders below this are round-off, and rates between them are not judged.
        expected_rate: 2 for a correct gradient.
    """

    steps: list[float]
    residuals: list[float]
    rates: list[float]
    noise_floor: float
    expected_rate: float = 2.0
    tolerance: float = 0.2

    @property
    def judged_rates(self) -> list[float]:
        """Rates between remainders that are both above the round-off floor."""
        return [
            rate
            for rate, (r0, r1) in zip(self.rates, itertools.pairwise(self.residuals))
            if r0 > self.noise_floor and r1 > self.noise_floor
        ]

    @property
    def linear(self) -> bool:
        """True when every remainder is at round-off: the function is linear along ``dx``."""
        return all(r <= self.noise_floor for r in self.residuals)

    @property
    def passed(self) -> bool:
        """The asymptotic rates (the last two judged) reach ``expected_rate - tolerance``.

        The first steps may still be in the nonlinear regime (rates below 2 that rise as ``h``
        shrinks); a wrong gradient gives rates that fall towards 1 instead. A function that is
        linear along ``dx`` passes.
        """
        if self.linear:
            return True
        judged = self.judged_rates
        return bool(judged) and min(judged[-2:]) >= self.expected_rate - self.tolerance

    def __str__(self) -> str:
        if self.linear:
            return "linear along dx (remainder at round-off)"
        return "rates " + ", ".join(f"{rate:.2f}" for rate in self.rates)


# ----------------------------------------------------------------------------------------------
# Plumbing: flatten pytrees of inputs and outputs into tuples of tensors.


@dataclass
class _Problem:
    """A function of a flat tuple of float64 tensors, with names for each tensor."""

    function: Callable[..., tuple[Tensor, ...]]
    point: tuple[Tensor, ...]
    names: list[str]


def _leaf_names(inputs: Sequence[Any], names: Sequence[str] | None) -> list[str]:
    result = []
    for index, argument in enumerate(inputs):
        base = names[index] if names is not None and index < len(names) else f"input{index}"
        leaves, _ = pytree.tree_flatten(argument)
        if len(leaves) == 1 and isinstance(argument, Tensor):
            result.append(base)
            continue
        paths = pytree.tree_flatten_with_path(argument)[0]
        for path, _ in paths:
            result.append(base + "".join(_path_text(key) for key in path))
    return result


def _path_text(key: Any) -> str:
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return f".{getattr(key, attribute)}"
    return f".{key}"


def _float64(value: Any) -> Any:
    if isinstance(value, Tensor) and value.is_floating_point():
        return value.detach().to(torch.float64).requires_grad_(value.requires_grad)
    return value


def _output_tensors(output: Any) -> tuple[Tensor, ...]:
    leaves = pytree.tree_leaves(output)
    return tuple(leaf for leaf in leaves if isinstance(leaf, Tensor) and leaf.is_floating_point())


def _build_problem(
    fn: Callable[..., Any] | nn.Module,
    inputs: Sequence[Any],
    names: Sequence[str] | None,
) -> _Problem:
    inputs64 = [pytree.tree_map(_float64, argument) for argument in inputs]
    flat_inputs, spec = pytree.tree_flatten(list(inputs64))
    all_names = _leaf_names(inputs64, names)
    differentiable = [
        i for i, leaf in enumerate(flat_inputs) if isinstance(leaf, Tensor) and leaf.requires_grad
    ]
    point: list[Tensor] = [flat_inputs[i] for i in differentiable]
    point_names = [all_names[i] for i in differentiable]

    module: nn.Module | None = None
    parameter_names: list[str] = []
    if isinstance(fn, nn.Module):
        module = copy.deepcopy(fn).to(torch.float64)
        for name, parameter in module.named_parameters():
            if parameter.requires_grad:
                parameter_names.append(name)
                point.append(parameter.detach().clone().requires_grad_(True))
        point_names += parameter_names

    n_inputs = len(differentiable)

    def function(*tensors: Tensor) -> tuple[Tensor, ...]:
        leaves = list(flat_inputs)
        for i, tensor in zip(differentiable, tensors[:n_inputs]):
            leaves[i] = tensor
        arguments = pytree.tree_unflatten(leaves, spec)
        if module is None:
            return _output_tensors(fn(*arguments))
        parameters = dict(zip(parameter_names, tensors[n_inputs:]))
        return _output_tensors(torch.func.functional_call(module, parameters, tuple(arguments)))

    return _Problem(function=function, point=tuple(point), names=point_names)


def _random_like(tensor: Tensor, generator: torch.Generator) -> Tensor:
    noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
    return noise.to(tensor.device)


def _scaled_direction(point: Sequence[Tensor], generator: torch.Generator) -> tuple[Tensor, ...]:
    """Random directions scaled elementwise by the magnitude of the point (1 where it is 0)."""
    directions = []
    for tensor in point:
        magnitude = tensor.detach().abs()
        typical = float(magnitude.mean()) if magnitude.numel() else 1.0
        scale = torch.where(magnitude > 0, magnitude, torch.full_like(magnitude, typical or 1.0))
        directions.append(_random_like(tensor, generator) * scale)
    return tuple(directions)


def _contract(outputs: Sequence[Tensor], weights: Sequence[Tensor]) -> Tensor:
    total = torch.zeros((), dtype=torch.float64, device=outputs[0].device if outputs else "cpu")
    for output, weight in zip(outputs, weights):
        total = total + (output.to(torch.float64) * weight).sum()
    return total


def _dot(a: Sequence[Tensor | None], b: Sequence[Tensor]) -> float:
    return float(sum(float((x * y).sum()) for x, y in zip(a, b) if x is not None))


# ----------------------------------------------------------------------------------------------
# The four checks.


def taylor_test(
    f: Callable[..., Any],
    x: Tensor | Sequence[Tensor],
    dx: Tensor | Sequence[Tensor] | None = None,
    *,
    h0: float = 1e-3,
    halvings: int = 5,
    seed: int = 0,
) -> TaylorResult:
    """Taylor remainder test of the gradient of ``f`` at ``x`` along ``dx``.

    With ``J(x) = f(x)`` (or ``sum <w, f(x)>`` with fixed random ``w`` when ``f`` is not scalar),
    the remainder ``r(h) = |J(x + h dx) - J(x) - h <grad J(x), dx>|`` is ``O(h**2)`` exactly when
    the gradient (from ``f``'s backward) is right; an error in the gradient leaves an ``O(h)`` term.

    Args:
        f: Callable of one tensor, or of several positional tensors when ``x`` is a sequence.
        x: Point (tensor or sequence of tensors). Evaluated in its own dtype: use float64.
        dx: Direction(s), the shape of ``x``. Default: random normal, scaled elementwise by ``|x|``.
        h0: First step. The steps are ``h0 / 2**k`` for ``k = 0 .. halvings``.
        halvings: Number of halvings (rates reported: ``halvings``).
        seed: Seed for the default ``dx`` and the output weights.

    Returns:
        A :class:`TaylorResult` with the rates (about 2 for a correct gradient) and ``passed``.

    >>> import torch
    >>> x = torch.tensor([0.3, 1.2], dtype=torch.float64)
    >>> result = taylor_test(lambda t: torch.exp(t).sum(), x)
    >>> [round(rate) for rate in result.rates]
    [2, 2, 2, 2, 2]
    """
    generator = torch.Generator().manual_seed(seed)
    single = isinstance(x, Tensor)
    points = (x,) if isinstance(x, Tensor) else tuple(x)
    points = tuple(p.detach().clone().requires_grad_(True) for p in points)
    if dx is None:
        directions = _scaled_direction(points, generator)
    else:
        directions = (dx,) if isinstance(dx, Tensor) else tuple(dx)
    directions = tuple(d.detach().to(p.dtype) for d, p in zip(directions, points))

    def call(arguments: Sequence[Tensor]) -> tuple[Tensor, ...]:
        return _output_tensors(f(arguments[0]) if single else f(*arguments))

    outputs = call(points)
    weights = [_random_like(output, generator) for output in outputs]
    value = _contract(outputs, weights)
    gradients = torch.autograd.grad(value, points, allow_unused=True)
    slope = _dot(gradients, directions)
    base = float(value.detach())

    steps, residuals = [], []
    magnitude = abs(base)
    with torch.no_grad():
        for k in range(halvings + 1):
            h = h0 / 2**k
            moved = [p + h * d for p, d in zip(points, directions)]
            perturbed = float(_contract(call(moved), weights))
            magnitude = max(magnitude, abs(perturbed))
            steps.append(h)
            residuals.append(abs(perturbed - base - h * slope))
    eps = torch.finfo(points[0].dtype).eps
    noise_floor = 64 * eps * (magnitude + abs(h0 * slope))
    rates = [
        math.log2(r0 / r1) if r0 > 0 and r1 > 0 else math.nan
        for r0, r1 in itertools.pairwise(residuals)
    ]
    return TaylorResult(steps=steps, residuals=residuals, rates=rates, noise_floor=noise_floor)


def _gradcheck(
    problem: _Problem, fast_mode: bool, eps: float, atol: float, rtol: float
) -> CheckResult:
    try:
        ok = torch.autograd.gradcheck(
            problem.function,
            problem.point,
            eps=eps,
            atol=atol,
            rtol=rtol,
            fast_mode=fast_mode,
            raise_exception=True,
        )
        return CheckResult(
            "gradcheck", "all", bool(ok), "float64" + (", fast" if fast_mode else "")
        )
    except Exception as error:  # gradcheck signals failure by raising
        first = " ".join(str(error).strip().splitlines()[:3])
        return CheckResult("gradcheck", "all", False, first[:300])


def _jacobian_vector_product(
    problem: _Problem, tangents: tuple[Tensor, ...]
) -> tuple[tuple[Tensor, ...], str]:
    primals = tuple(p.detach() for p in problem.point)
    try:
        jvp = torch.func.jvp(problem.function, primals, tangents)[1]
        return tuple(jvp), "forward-mode AD"
    except Exception:
        # Custom Functions without a forward-mode rule: central differences along the tangent.
        h = 1e-6
        with torch.no_grad():
            plus = problem.function(*(p + h * t for p, t in zip(primals, tangents)))
            minus = problem.function(*(p - h * t for p, t in zip(primals, tangents)))
        return tuple((a - b) / (2 * h) for a, b in zip(plus, minus)), "central differences"


def _adjoint_test(problem: _Problem, generator: torch.Generator) -> CheckResult:
    tangents = _scaled_direction(problem.point, generator)
    outputs = problem.function(*problem.point)
    cotangents = [_random_like(output, generator) for output in outputs]
    vjp = torch.autograd.grad(
        _contract(outputs, cotangents), problem.point, allow_unused=True, retain_graph=False
    )
    jvp, method = _jacobian_vector_product(problem, tangents)
    left = _dot(cotangents, jvp)
    right = _dot(vjp, tangents)
    scale = max(abs(left), abs(right), 1e-300)
    mismatch = abs(left - right) / scale
    tolerance = 1e-10 if method == "forward-mode AD" else 1e-5
    detail = f"<w,Jv>={left:.10g} <J^T w,v>={right:.10g} rel.diff {mismatch:.1e} ({method})"
    return CheckResult("adjoint", "all", mismatch <= tolerance, detail)


def _liveness(
    problem: _Problem, generator: torch.Generator, expect_dead: set[str]
) -> list[CheckResult]:
    outputs = problem.function(*problem.point)
    weights = [_random_like(output, generator) for output in outputs]
    gradients = torch.autograd.grad(_contract(outputs, weights), problem.point, allow_unused=True)
    results = []
    for name, point, gradient in zip(problem.names, problem.point, gradients):
        if gradient is None:
            gradient = torch.zeros_like(point)
        finite = torch.isfinite(gradient)
        n_bad = int((~finite).sum())
        zero_fraction = float((gradient == 0).double().mean()) if gradient.numel() else 1.0
        if n_bad:
            first = tuple(int(i) for i in torch.nonzero(~finite)[0].tolist())
            where = f" first at index {first}" if gradient.ndim else ""
            detail = (
                f"non-finite gradient: {n_bad} of {gradient.numel()} entries are NaN/inf{where}"
            )
            results.append(CheckResult("liveness", name, False, detail))
        elif name in expect_dead:
            ok = zero_fraction == 1.0
            detail = "zero, as expected" if ok else "expected a zero gradient, got a non-zero one"
            results.append(CheckResult("liveness", name, ok, detail))
        elif zero_fraction == 1.0:
            results.append(CheckResult("liveness", name, False, "dead: gradient is exactly zero"))
        else:
            norm = float(gradient.norm())
            detail = f"|grad| = {norm:.3e}"
            if zero_fraction > 0:
                detail += f", {zero_fraction:.0%} of entries zero"
            results.append(CheckResult("liveness", name, True, detail))
    return results


def check_gradients(
    fn: Callable[..., Any] | nn.Module,
    inputs: Sequence[Any],
    *,
    names: Sequence[str] | None = None,
    checks: Sequence[str] = CHECKS,
    expect_dead: Sequence[str] = (),
    strict: bool = False,
    fast_mode: bool | None = None,
    eps: float = 1e-6,
    atol: float = 1e-7,
    rtol: float = 1e-5,
    seed: int = 0,
) -> GradientReport:
    """Check the gradients of ``fn`` at ``inputs`` four ways, in float64.

    Args:
        fn: A callable ``fn(*inputs)`` returning a tensor, or any pytree (tuple, dict) of tensors,
            or an ``nn.Module`` (its parameters that require grad are checked too, under their
            parameter names; the module is copied and cast to float64, the original is untouched).
        inputs: Positional arguments, each a tensor or a pytree (e.g. a state dict) of tensors.
            Floating tensors are cast to float64; those with ``requires_grad=True`` are checked.
        names: Names of the positional inputs, for the report (dict entries become ``name.key``).
        checks: Any of ``"gradcheck"``, ``"taylor"``, ``"adjoint"``, ``"liveness"``.
        expect_dead: Inputs or parameters whose gradient must be exactly zero.
        strict: Raise :class:`GradientCheckError` if anything fails.
        fast_mode: ``gradcheck``'s fast mode; default when more than 256 entries are checked.
        eps, atol, rtol: ``gradcheck``'s step and tolerances. Loosen ``atol`` for functions
            computed by an iterative solver, whose finite differences carry the solver's
            tolerance divided by ``eps``.
        seed: Seed of the random directions and output weights.

    Returns:
        A :class:`GradientReport`.
    """
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        raise ValueError(f"Unknown check(s) {unknown}; choose from {list(CHECKS)}.")
    problem = _build_problem(fn, inputs, names)
    if not problem.point:
        raise ValueError(
            "No input requires grad and fn has no trainable parameters: nothing to check. "
            "Call .requires_grad_() on the inputs to differentiate."
        )
    unknown_dead = sorted(set(expect_dead) - set(problem.names))
    if unknown_dead:
        raise ValueError(f"expect_dead names {unknown_dead} are not among {problem.names}.")
    generator = torch.Generator().manual_seed(seed)
    report = GradientReport()
    if "gradcheck" in checks:
        n_entries = sum(p.numel() for p in problem.point)
        report.results.append(
            _gradcheck(
                problem, n_entries > 256 if fast_mode is None else fast_mode, eps, atol, rtol
            )
        )
    if "taylor" in checks:
        try:
            result = taylor_test(problem.function, problem.point, seed=seed)
            report.results.append(CheckResult("taylor", "all", result.passed, str(result)))
        except Exception as error:
            report.results.append(CheckResult("taylor", "all", False, f"raised {error!r}"[:300]))
    if "adjoint" in checks:
        try:
            report.results.append(_adjoint_test(problem, generator))
        except Exception as error:
            report.results.append(CheckResult("adjoint", "all", False, f"raised {error!r}"[:300]))
    if "liveness" in checks:
        report.results.extend(_liveness(problem, generator, set(expect_dead)))
    if strict:
        report.raise_if_failed()
    return report
