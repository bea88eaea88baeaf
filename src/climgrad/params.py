"""Learnable physical parameters: declared once, stored unconstrained, read in physical units.

A parameter is declared by a :class:`ParamSpec` (name, units, default, bounds, description, prior).
:func:`constrain` turns an ``nn.Parameter`` attribute of a module into a constrained one with
:mod:`torch.nn.utils.parametrize`: the optimizer sees an unconstrained tensor (stored as
``module.parametrizations.<name>.original``), while the module reads ``module.<name>`` in physical
units through a bijection, exactly as before. Nothing is clamped after an optimizer step; the value
stays inside its bounds by construction (the design of gpytorch's ``raw_lengthscale`` with an
``Interval`` constraint, and of pyro's ``PyroParam``).

Bijections (``ParamSpec.transform="auto"`` picks from the bounds):

========================  =========================================  ==========================
bounds                    value = f(raw)                             initialised by
========================  =========================================  ==========================
(None, None)              raw                                        value
(lo, None)                lo + softplus(raw) (or exp with "exp")     softplus⁻¹(value - lo)
(None, hi)                hi - softplus(raw)                         softplus⁻¹(hi - value)
(lo, hi)                  lo + (hi - lo) sigmoid(raw)                logit((value - lo)/(hi - lo))
========================  =========================================  ==========================

Softplus is the default for one-sided bounds because it is linear far from the bound, so a
learning rate means the same thing at 1 W m-2 K-1 and at 10; ``"exp"`` gives log-uniform steps.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from climgrad.params import ParamSpec, constrain, parameter_table
    >>> class Olr(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.B = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    >>> olr = Olr()
    >>> constrain(olr, "B", ParamSpec("B", "W m-2 K-1", 2.0, bounds=(0.0, None)))
    >>> round(float(olr.B.detach()), 12), olr.parametrizations.B.original.requires_grad
    (2.0, True)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = [
    "ParamSpec",
    "ParameterInfo",
    "Prior",
    "configure_parameters",
    "constrain",
    "display_names",
    "iter_parameters",
    "parameter_table",
    "physical_gradients",
    "physical_parameters",
    "prior_from_setting",
    "prior_penalty",
    "raw_gaussian_prior",
]

TransformName = Literal["auto", "identity", "softplus", "exp", "sigmoid"]


@dataclass(frozen=True)
class Prior:
    """A prior density for MAP calibration; :meth:`penalty` is its negative log (up to a constant).

    Attributes:
        kind: ``"normal"`` (``loc``, ``scale`` in the parameter's units), ``"lognormal"``
            (``loc``, ``scale`` of ``log(value)``), or ``"uniform"`` (flat between the bounds of
            the parameter: the bijection already enforces it, so the penalty is zero).
        loc: Mean (normal) or mean of the logarithm (lognormal).
        scale: Standard deviation (normal) or of the logarithm (lognormal); positive.
    """

    kind: Literal["normal", "lognormal", "uniform"]
    loc: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("normal", "lognormal", "uniform"):
            raise ValueError(
                f"Unknown prior kind {self.kind!r}; use 'normal', 'lognormal' or 'uniform'."
            )
        if self.kind != "uniform" and not self.scale > 0:
            raise ValueError(f"Prior scale must be positive, got {self.scale}.")

    def penalty(self, value: Tensor) -> Tensor:
        """Negative log density of ``value`` (summed over a field), dropping constants."""
        if self.kind == "normal":
            return (0.5 * ((value - self.loc) / self.scale) ** 2).sum()
        if self.kind == "lognormal":
            log_value = torch.log(value)
            return (0.5 * ((log_value - self.loc) / self.scale) ** 2 + log_value).sum()
        return value.sum() * 0.0

    def quantiles(
        self, levels: Tensor, bounds: tuple[float | None, float | None] = (None, None)
    ) -> Tensor:
        """Values at probability ``levels`` (in (0, 1)) of the prior truncated to ``bounds``.

        Raises:
            ValueError: A uniform prior on a parameter without two finite bounds (improper).
        """
        lower, upper = bounds
        if self.kind == "uniform":
            if lower is None or upper is None:
                raise ValueError(
                    "a uniform prior needs both bounds of the parameter; give a normal or "
                    "lognormal prior instead."
                )
            return lower + (upper - lower) * levels

        def to_standard(value: float | None, default: float) -> float:
            if value is None:
                return default
            if self.kind == "lognormal":
                return (math.log(value) - self.loc) / self.scale if value > 0 else -math.inf
            return (value - self.loc) / self.scale

        normal_cdf = torch.special.ndtr
        low = normal_cdf(torch.tensor(to_standard(lower, -math.inf), dtype=levels.dtype))
        high = normal_cdf(torch.tensor(to_standard(upper, math.inf), dtype=levels.dtype))
        if not float(high - low) > 1e-12:
            raise ValueError(
                f"the prior {self.describe()} puts no mass inside the bounds {bounds}; move its "
                "loc inside them."
            )
        standard = torch.special.ndtri(low + (high - low) * levels)
        value = self.loc + self.scale * standard
        return torch.exp(value) if self.kind == "lognormal" else value

    def describe(self) -> str:
        """Short text for tables and NetCDF attributes, e.g. ``normal(2, 0.5)``."""
        if self.kind == "uniform":
            return "uniform"
        return f"{self.kind}({self.loc:g}, {self.scale:g})"


@dataclass(frozen=True)
class ParamSpec:
    """Declaration of one physical parameter.

    Attributes:
        name: Attribute name on the module (``"A"``, ``"critical_lapse_rate"``).
        units: Units of the physical value (UDUNITS style, e.g. ``"W m-2 K-1"``).
        default: Default value (a float, or a sequence for a field).
        bounds: ``(lower, upper)``; ``None`` for unbounded on that side. Open interval.
        description: One line for tables and ``long_name`` attributes.
        prior: Optional :class:`Prior` for MAP calibration.
        transform: ``"auto"`` (from the bounds), ``"identity"``, ``"softplus"``, ``"exp"`` or
            ``"sigmoid"``.
    """

    name: str
    units: str
    default: float | Sequence[float]
    bounds: tuple[float | None, float | None] = (None, None)
    description: str = ""
    prior: Prior | None = None
    transform: TransformName = "auto"

    def __post_init__(self) -> None:
        lower, upper = self.bounds
        if lower is not None and upper is not None and not lower < upper:
            raise ValueError(f"{self.name}: bounds must satisfy lower < upper, got {self.bounds}.")
        if self.transform not in ("auto", "identity", "softplus", "exp", "sigmoid"):
            raise ValueError(
                f"{self.name}: unknown transform {self.transform!r}; use 'auto', 'identity', "
                "'softplus', 'exp' or 'sigmoid'."
            )
        self.check(torch.as_tensor(self.default, dtype=torch.float64))

    @property
    def resolved_transform(self) -> str:
        """The bijection actually used."""
        lower, upper = self.bounds
        if self.transform != "auto":
            return self.transform
        if lower is None and upper is None:
            return "identity"
        if lower is not None and upper is not None:
            return "sigmoid"
        return "softplus"

    def check(self, value: Tensor) -> None:
        """Raise a ValueError naming the parameter if ``value`` is outside the open bounds."""
        lower, upper = self.bounds
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{self.name}: value must be finite, got {value.tolist()}.")
        outside = (lower is not None and bool((value <= lower).any())) or (
            upper is not None and bool((value >= upper).any())
        )
        if outside:
            raise ValueError(
                f"{self.name} = {value.tolist()} [{self.units}] is outside its bounds "
                f"{self.bounds} (open interval); choose a value strictly inside them."
            )

    def bijection(self) -> Bijection:
        """The parametrization module mapping raw values to physical values."""
        return Bijection(self.resolved_transform, self.bounds)


def _inverse_softplus(y: Tensor) -> Tensor:
    # log(expm1(y)) loses precision for large y; y + log(-expm1(-y)) does not.
    return y + torch.log(-torch.expm1(-y))


class Bijection(nn.Module):
    """``torch.nn.utils.parametrize`` module: physical = f(raw) + c, with ``right_inverse``.

    ``c`` (buffer ``correction``) is, for a fixed (not learnable) parameter, the rounding left by
    ``f(f⁻¹(value))`` when its value is set (:func:`constrain`, :func:`configure_parameters`), a
    few ulps at most: with it a fixed parameter reads back exactly the value configured
    (``S0 = 1360`` stays 1360, not 1360.0000000000002). It is zero for learnable parameters, so
    the bounds hold whatever the optimizer does; gradients are those of ``f``.
    """

    correction: Tensor

    def __init__(self, kind: str, bounds: tuple[float | None, float | None]) -> None:
        super().__init__()
        self.kind = kind
        self.lower, self.upper = bounds
        self.register_buffer("correction", torch.zeros((), dtype=torch.float64))
        if kind in ("softplus", "exp") and self.lower is None and self.upper is None:
            raise ValueError(f"transform {kind!r} needs a lower or an upper bound.")
        if kind == "sigmoid" and (self.lower is None or self.upper is None):
            raise ValueError("transform 'sigmoid' needs both bounds.")

    def _positive(self, raw: Tensor) -> Tensor:
        if self.kind == "exp":
            return torch.exp(raw)
        # logaddexp, not F.softplus: the latter switches to `raw` above 20 and breaks the inverse.
        return torch.logaddexp(raw, torch.zeros_like(raw))

    def _positive_inverse(self, value: Tensor) -> Tensor:
        return _inverse_softplus(value) if self.kind == "softplus" else torch.log(value)

    def forward(self, raw: Tensor) -> Tensor:
        return self.transform(raw) + self.correction

    def set_exact(self, raw: Tensor, value: Tensor | None) -> None:
        """Make ``forward(raw)`` return ``value`` exactly (``raw`` from :meth:`right_inverse`);
        ``None`` clears the correction (learnable parameters)."""
        with torch.no_grad():
            if value is None:
                self.correction = torch.zeros_like(self.correction.reshape(-1)[:1]).reshape(())
                return
            # value and f(raw) agree to a few ulps, so the difference and the sum are exact.
            self.correction = (value - self.transform(raw)).detach().clone()

    def _load_from_state_dict(
        self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Checkpoints written before the correction existed read as f(raw), as they were.
        key = f"{prefix}correction"
        if key not in state_dict:
            state_dict[key] = torch.zeros_like(self.correction)
        elif state_dict[key].shape != self.correction.shape:
            self.correction = torch.zeros_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def transform(self, raw: Tensor) -> Tensor:
        """``f(raw)``, without the correction."""
        if self.kind == "identity":
            return raw
        if self.kind == "sigmoid":
            assert self.lower is not None and self.upper is not None
            return self.lower + (self.upper - self.lower) * torch.sigmoid(raw)
        if self.lower is not None:
            return self.lower + self._positive(raw)
        assert self.upper is not None
        return self.upper - self._positive(raw)

    def right_inverse(self, value: Tensor) -> Tensor:
        if self.kind == "identity":
            return value
        if self.kind == "sigmoid":
            assert self.lower is not None and self.upper is not None
            fraction = (value - self.lower) / (self.upper - self.lower)
            return torch.log(fraction) - torch.log1p(-fraction)
        if self.lower is not None:
            return self._positive_inverse(value - self.lower)
        assert self.upper is not None
        return self._positive_inverse(self.upper - value)


# ------------------------------------------------------------------------------------------
# Attaching specs to modules and reading them back.


def constrain(
    module: nn.Module,
    attribute: str,
    spec: ParamSpec,
    *,
    value: float | Sequence[float] | Tensor | None = None,
    learn: bool = True,
) -> None:
    """Make ``module.<attribute>`` a constrained parameter described by ``spec``.

    The attribute must be an ``nn.Parameter`` (scalar or field) or a plain tensor attribute; its
    dtype, device and shape are kept. After the call, ``module.<attribute>`` still reads the value
    in physical units; the optimizer updates the unconstrained original.

    Args:
        module: The module owning the parameter.
        attribute: Attribute name (usually ``spec.name``).
        spec: The declaration.
        value: Initial physical value (default: the current value of the attribute).
        learn: Whether the parameter is optimised (``requires_grad`` of the original).

    Raises:
        ValueError: The value is outside the bounds, or the attribute does not exist.
    """
    if not hasattr(module, attribute):
        raise ValueError(
            f"{type(module).__name__} has no attribute {attribute!r} to constrain; "
            f"its parameters are {[n for n, _ in module.named_parameters(recurse=False)]}."
        )
    current = getattr(module, attribute)
    if parametrize.is_parametrized(module, attribute):
        parametrize.remove_parametrizations(module, attribute, leave_parametrized=True)
        current = getattr(module, attribute)
    reference = torch.as_tensor(current)
    if value is None:
        initial = reference.detach().clone()
    else:
        initial = torch.as_tensor(value, dtype=reference.dtype, device=reference.device)
    initial = initial.expand_as(reference)
    spec.check(initial)
    if not isinstance(current, nn.Parameter):
        delattr(module, attribute)
    setattr(module, attribute, nn.Parameter(initial.clone()))
    bijection = spec.bijection().to(device=initial.device, dtype=initial.dtype)
    parametrize.register_parametrization(module, attribute, bijection)
    original = getattr(module.parametrizations, attribute).original
    bijection.set_exact(original.detach(), None if learn else initial)
    original.requires_grad_(learn)
    specs = dict(getattr(module, "_climgrad_param_specs", {}))
    specs[attribute] = spec
    object.__setattr__(module, "_climgrad_param_specs", specs)


@dataclass(frozen=True)
class ParameterInfo:
    """One constrained parameter found in a model by :func:`iter_parameters`."""

    qualified_name: str
    spec: ParamSpec
    module: nn.Module = field(repr=False)
    attribute: str

    @property
    def value(self) -> Tensor:
        """Physical value (a tensor in the graph)."""
        result: Tensor = getattr(self.module, self.attribute)
        return result

    @property
    def raw(self) -> nn.Parameter:
        """The unconstrained tensor the optimizer updates."""
        original: nn.Parameter = getattr(self.module.parametrizations, self.attribute).original
        return original

    @property
    def learnable(self) -> bool:
        """Whether the optimizer updates it."""
        return self.raw.requires_grad


def iter_parameters(model: nn.Module) -> Iterator[ParameterInfo]:
    """Every parameter declared with :func:`constrain` in ``model`` and its submodules."""
    for prefix, module in model.named_modules():
        for attribute, spec in getattr(module, "_climgrad_param_specs", {}).items():
            name = f"{prefix}.{attribute}" if prefix else attribute
            yield ParameterInfo(name, spec, module, attribute)


def _lookup(model: nn.Module, name: str) -> ParameterInfo:
    matches = [
        info
        for info in iter_parameters(model)
        if name in (info.qualified_name, info.spec.name) or info.qualified_name.endswith("." + name)
    ]
    if len(matches) != 1:
        known = [info.qualified_name for info in iter_parameters(model)]
        problem = "is ambiguous" if matches else "is not a parameter of the model"
        raise KeyError(f"{name!r} {problem}; parameters are {known}.")
    return matches[0]


def display_names(model: nn.Module) -> dict[str, ParameterInfo]:
    """Parameters keyed by their spec names (``"A"``, ``"D"``) when those are unique in the
    model, else by qualified module paths."""
    infos = list(iter_parameters(model))
    spec_names = [info.spec.name for info in infos]
    if len(set(spec_names)) == len(spec_names):
        return dict(zip(spec_names, infos))
    return {info.qualified_name: info for info in infos}


def physical_parameters(model: nn.Module) -> dict[str, Tensor]:
    """A plain dict ``name -> physical value`` (detached tensors), keyed as
    :func:`display_names`."""
    return {name: info.value.detach() for name, info in display_names(model).items()}


def physical_gradients(model: nn.Module) -> dict[str, Tensor]:
    """Gradients with respect to the physical values, from the raw gradients (chain rule).

    After ``loss.backward()``, ``raw.grad`` is ``dℓ/draw``; since every bijection is elementwise
    and monotone, ``dℓ/dvalue = (dℓ/draw) / (dvalue/draw)``. Parameters without a gradient are
    left out. Keyed as :func:`display_names`.
    """
    result = {}
    for name, info in display_names(model).items():
        raw = info.raw
        if raw.grad is None:
            continue
        bijection = getattr(info.module.parametrizations, info.attribute)[0]
        point = raw.detach().requires_grad_(True)
        with torch.enable_grad():
            (slope,) = torch.autograd.grad(bijection(point).sum(), point)
        result[name] = raw.grad / slope
    return result


def prior_penalty(model: nn.Module) -> Tensor:
    """Sum of the negative log priors of every parameter that has a prior (0 without priors)."""
    total: Tensor | None = None
    for info in iter_parameters(model):
        if info.spec.prior is not None and info.learnable:
            term = info.spec.prior.penalty(info.value)
            total = term if total is None else total + term
    if total is None:
        first = next(iter(model.parameters()), None)
        return torch.zeros((), dtype=first.dtype if first is not None else torch.float64)
    return total


def prior_from_setting(name: str, setting: Mapping[str, Any] | Prior | None) -> Prior | None:
    """A :class:`Prior` from a config mapping ``{kind, loc, scale}`` (``None`` passes through).

    Raises:
        ValueError: Unknown keys or kind, or a non-positive scale (the message names ``name``).
    """
    if setting is None or isinstance(setting, Prior):
        return setting
    options = dict(setting)
    unknown = sorted(set(options) - {"kind", "loc", "scale"})
    if unknown:
        raise ValueError(f"{name}.prior: unknown key(s) {unknown}; use kind, loc and scale.")
    if "kind" not in options:
        raise ValueError(f"{name}.prior needs a kind: normal, lognormal or uniform.")
    try:
        return Prior(
            str(options["kind"]),  # type: ignore[arg-type]
            float(options.get("loc", 0.0)),
            float(options.get("scale", 1.0)),
        )
    except ValueError as err:
        raise ValueError(f"{name}.prior: {err}") from None


def raw_gaussian_prior(info: ParameterInfo, points: int = 4001) -> tuple[Tensor, Tensor]:
    """Mean and variance, per element, of the parameter's prior seen in unconstrained coordinates.

    The posterior methods (ensemble Kalman, Laplace, NUTS) work on the raw (unconstrained)
    values, where they assume a Gaussian prior. This is that Gaussian: the mean and variance of
    ``raw = f⁻¹(value)`` for ``value`` drawn from the declared prior truncated to the bounds,
    computed on ``points`` equally spaced quantiles (deterministic). For an unbounded parameter
    with a normal prior it is the prior itself; for a sigmoid-bounded one with a uniform prior it
    is the moment match of a logistic distribution (variance π²/3).

    Raises:
        ValueError: The parameter has no prior (the message names the config key to set).
    """
    prior = info.spec.prior
    if prior is None:
        raise ValueError(
            f"{info.spec.name} has no prior; set model.params.{info.spec.name}.prior="
            "{kind: normal, loc: ..., scale: ...} (units of the parameter) or fix it with "
            f"model.params.{info.spec.name}.learn=false."
        )
    raw = info.raw.detach()
    levels = (torch.arange(points, dtype=torch.float64) + 0.5) / points
    values = prior.quantiles(levels, info.spec.bounds)
    bijection = info.spec.bijection()
    samples = bijection.right_inverse(values)
    finite = samples[torch.isfinite(samples)]
    mean = finite.mean().to(raw.dtype)
    variance = finite.var().to(raw.dtype)
    return mean.expand_as(raw).clone().to(raw.device), variance.expand_as(raw).clone().to(
        raw.device
    )


def configure_parameters(model: nn.Module, settings: Mapping[str, Any]) -> None:
    """Set values, learnability and priors from config:
    ``{"D": {"value": 0.6, "learn": False}}``, ``{"B": {"prior": {"kind": "normal", "loc": 2,
    "scale": 0.5}}}``.

    A bare number is a value. Names may be qualified (``"diffusion.D"``) or, when unique, bare.
    Unknown names and keys fail with the valid ones listed.
    """
    for name, setting in settings.items():
        info = _lookup(model, name)
        options = dict(setting) if isinstance(setting, Mapping) else {"value": setting}
        unknown = sorted(set(options) - {"value", "learn", "prior"})
        if unknown:
            raise KeyError(
                f"{name}: unknown setting(s) {unknown}; use 'value', 'learn' and/or 'prior'."
            )
        if options.get("prior") is not None:
            prior = prior_from_setting(name, options["prior"])
            specs = dict(getattr(info.module, "_climgrad_param_specs", {}))
            specs[info.attribute] = dataclasses.replace(info.spec, prior=prior)
            object.__setattr__(info.module, "_climgrad_param_specs", specs)
            info = _lookup(model, name)
        value = options.get("value")
        if "learn" in options:
            learn = options["learn"]
            if not isinstance(learn, bool):
                raise ValueError(f"{name}: learn={learn!r} must be true or false.")
            info.raw.requires_grad_(learn)
        bijection = getattr(info.module.parametrizations, info.attribute)[0]
        if value is None:
            if info.raw.requires_grad:
                bijection.set_exact(info.raw.detach(), None)
        else:
            try:
                target = torch.as_tensor(value, dtype=info.raw.dtype, device=info.raw.device)
            except (TypeError, ValueError, RuntimeError):
                default = info.spec.default
                example = default if isinstance(default, (int, float)) else next(iter(default))
                raise ValueError(
                    f"{name}: value {value!r} is not a number; give one in {info.spec.units}, "
                    f"e.g. {name}.value={example}."
                ) from None
            if target.numel() not in (1, info.raw.numel()):
                raise ValueError(
                    f"{name}: value has {target.numel()} elements; give one number or "
                    f"{info.raw.numel()} (one per element of the field)."
                )
            info.spec.check(target)
            with torch.no_grad():
                raw = bijection.right_inverse(target.expand_as(info.raw))
                info.raw.copy_(raw)
            fixed = not info.raw.requires_grad
            bijection.set_exact(info.raw.detach(), target.expand_as(info.raw) if fixed else None)


def _format_value(value: Tensor) -> str:
    if value.numel() == 1:
        return f"{float(value):.6g}"
    return f"field{tuple(value.shape)} [{float(value.min()):.4g}, {float(value.max()):.4g}]"


def _format_bound(bound: float | None) -> str:
    return "-inf" if bound is None else f"{bound:g}"


def parameter_table(model: nn.Module) -> str:
    """A text table: name, value, units, bounds, learnable, prior."""
    header = ("name", "value", "units", "bounds", "learn", "prior")
    rows = []
    for name, info in display_names(model).items():
        lower, upper = info.spec.bounds
        bounds = f"({_format_bound(lower)}, {'inf' if upper is None else f'{upper:g}'})"
        rows.append(
            (
                name,
                _format_value(info.value.detach()),
                info.spec.units,
                bounds,
                "yes" if info.learnable else "no",
                info.spec.prior.describe() if info.spec.prior else "-",
            )
        )
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    rule = "  ".join("-" * w for w in widths)
    title = "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()
    return "\n".join([title, rule, *lines])
