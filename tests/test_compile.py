"""Every public function that calls a pure-torch custom Function compiles without graph breaks.

Each case runs ``torch.compile(fn, fullgraph=True, backend="aot_eager")`` on tiny float64 inputs
and checks that the compiled forward values and the gradients (``torch.autograd.grad``) equal
the eager ones to 1e-12. ``fullgraph=True`` turns any graph break into an error, so a value check
that reads tensor data, a ``.item()``, a custom ``jvp`` Dynamo cannot trace, or a pointer handed
to C shows up here. ``aot_eager`` traces forward and backward through AOT autograd (the part of
the stack that needs the custom backward to be traceable) without paying for Inductor's code
generation; compiling one function takes 1 to 3 s on two CPU cores (docs/autograd.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor

from climgrad import tridiagonal
from climgrad.autograd import GradientMode, positive_part, step
from climgrad.constants import reference_surface_pressure
from climgrad.physics import convection, diffusion, ebm, radiation, surface, thermo
from climgrad.physics.thermo import CondensationMethod

F64 = torch.float64
TOLERANCE = 1e-12


@dataclass(frozen=True)
class Case:
    """A function and a builder of its arguments (tensors that require grad are differentiated)."""

    function: Callable[..., Any]
    arguments: Callable[[], Sequence[Any]]


def leaf(values: Tensor) -> Tensor:
    """A float64 leaf tensor that requires grad."""
    return values.to(F64).detach().requires_grad_()


def uniform(low: float, high: float, *shape: int, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return leaf(low + (high - low) * torch.rand(*shape, generator=generator, dtype=F64))


def _layer_pressure(levels: int) -> tuple[Tensor, Tensor]:
    middle = reference_surface_pressure * (torch.arange(levels, dtype=F64) + 0.5) / levels
    return middle, torch.full((levels,), reference_surface_pressure / levels, dtype=F64)


def _unstable_profile(columns: int, levels: int) -> Tensor:
    """Temperature falling steeply with height (convectively unstable) plus noise, in K."""
    pressure, _ = _layer_pressure(levels)
    base = 180.0 + 120.0 * pressure / reference_surface_pressure
    return leaf(base + uniform(-3.0, 3.0, columns, levels, seed=1).detach())


def _tridiagonal() -> Sequence[Any]:
    lower, upper = uniform(-1.0, 0.0, 2, 4, seed=1), uniform(-1.0, 0.0, 2, 4, seed=2)
    return lower, uniform(3.0, 4.0, 2, 4, seed=3), upper, uniform(-1.0, 1.0, 2, 4, seed=4)


def _condensation(method: CondensationMethod, mode: GradientMode) -> Case:
    return Case(
        lambda t, q, p, rh: thermo.condensation_rate(
            t,
            q,
            p,
            critical_relative_humidity=rh,
            method=method,
            mode=mode,
        ),
        lambda: (
            uniform(285.0, 295.0, 3),
            uniform(0.008, 0.016, 3, seed=1),
            uniform(8.0e4, 1.0e5, 3, seed=2),
            leaf(torch.tensor(0.8)),
        ),
    )


def _dry_adjustment(mode: GradientMode) -> Case:
    pressure, thickness = _layer_pressure(4)
    return Case(
        lambda t, lapse: convection.dry_convective_adjustment(
            t,
            pressure,
            thickness,
            lapse,
            mode=mode,
        ),
        lambda: (_unstable_profile(2, 4), leaf(torch.tensor(6.5e-3))),
    )


def _gray_fluxes() -> Sequence[Any]:
    optical_depth = leaf(torch.tensor([0.0, 0.3, 0.8, 1.5]))
    return uniform(220.0, 280.0, 2, 3), uniform(285.0, 295.0, 2, seed=1), optical_depth


def _emission_operator() -> Sequence[Any]:
    _, up, surface_vector = radiation.transmission_matrices(
        torch.tensor([0.0, 0.3, 0.8, 1.5], dtype=F64)
    )
    return (
        uniform(220.0, 280.0, 2, 3),
        uniform(285.0, 295.0, 2, seed=1),
        leaf(up),
        leaf(surface_vector),
    )


def _vertical_diffusion(steps: int) -> Case:
    grid = diffusion.VerticalGrid.uniform(4)
    return Case(
        lambda t, k: diffusion.implicit_vertical_diffusion_steps(t, k, 0.05, steps, grid),
        lambda: (uniform(280.0, 300.0, 2, 4), uniform(0.5, 1.5, 4, seed=1)),
    )


def _ebm_step() -> Case:
    grid = ebm.LatitudeGrid.uniform(6)
    return Case(
        lambda t, d, c: ebm.implicit_meridional_diffusion_step(t, d, c, 86400.0, grid),
        lambda: (
            uniform(250.0, 300.0, 6),
            leaf(torch.tensor(0.55)),
            leaf(torch.full((6,), 2.0e8)),
        ),
    )


CASES: dict[str, Case] = {
    "solve_tridiagonal": Case(tridiagonal.solve_tridiagonal, _tridiagonal),
    "step(straight_through)": Case(
        lambda x, w: step(x, w, mode="straight_through"),
        lambda: (uniform(-1.0, 1.0, 5), leaf(torch.tensor(0.3))),
    ),
    "positive_part(straight_through)": Case(
        lambda x: positive_part(x, 0.3, mode="straight_through"),
        lambda: (uniform(-1.0, 1.0, 5),),
    ),
    "saturation_vapour_pressure": Case(
        thermo.saturation_vapour_pressure, lambda: (uniform(250.0, 300.0, 3),)
    ),
    "saturation_specific_humidity": Case(
        thermo.saturation_specific_humidity,
        lambda: (uniform(250.0, 300.0, 3), uniform(5.0e4, 1.0e5, 3, seed=1)),
    ),
    "relative_humidity": Case(
        thermo.relative_humidity,
        lambda: (
            uniform(0.002, 0.01, 3, seed=1),
            uniform(270.0, 300.0, 3),
            uniform(8.0e4, 1.0e5, 3, seed=2),
        ),
    ),
    "specific_humidity_from_relative_humidity": Case(
        thermo.specific_humidity_from_relative_humidity,
        lambda: (
            uniform(0.2, 0.9, 3, seed=1),
            uniform(270.0, 300.0, 3),
            uniform(8.0e4, 1.0e5, 3, seed=2),
        ),
    ),
    "saturation_adjustment": Case(
        lambda t, q, p: thermo.saturation_adjustment(t, q, p, critical_relative_humidity=0.9),
        lambda: (
            uniform(285.0, 295.0, 3),
            uniform(0.008, 0.016, 3, seed=1),
            uniform(8.0e4, 1.0e5, 3, seed=2),
        ),
    ),
    "condensation_rate(relaxation, straight_through)": _condensation(
        "relaxation", "straight_through"
    ),
    "condensation_rate(adjustment, exact)": _condensation("adjustment", "exact"),
    "sensible_heat_flux": Case(
        lambda ts, ta, v, c: surface.sensible_heat_flux(ts, ta, v, c, 1.2),
        lambda: (
            uniform(290.0, 300.0, 3),
            uniform(285.0, 295.0, 3, seed=1),
            uniform(1.0, 8.0, 3, seed=2),
            leaf(torch.tensor(1.2e-3)),
        ),
    ),
    "latent_heat_flux": Case(
        lambda ts, q, v, c, ps: surface.latent_heat_flux(ts, q, v, c, 1.15, ps),
        lambda: (
            uniform(290.0, 300.0, 3),
            uniform(0.005, 0.012, 3, seed=1),
            uniform(1.0, 8.0, 3, seed=2),
            leaf(torch.tensor(1.2e-3)),
            uniform(9.5e4, 1.02e5, 3, seed=3),
        ),
    ),
    "dry_convective_adjustment(exact)": _dry_adjustment("exact"),
    "dry_convective_adjustment(straight_through)": _dry_adjustment("straight_through"),
    "betts_miller_tendency": Case(
        lambda t, lapse, tau: convection.betts_miller_tendency(
            t, _layer_pressure(4)[0], lapse, tau
        ),
        lambda: (
            _unstable_profile(2, 4),
            leaf(torch.tensor(6.5e-3)),
            leaf(torch.tensor(7200.0)),
        ),
    ),
    "emission_operator": Case(radiation.emission_operator, _emission_operator),
    "gray_longwave_fluxes": Case(radiation.gray_longwave_fluxes, _gray_fluxes),
    "implicit_vertical_diffusion": _vertical_diffusion(1),
    "implicit_vertical_diffusion_steps": _vertical_diffusion(3),
    "implicit_meridional_diffusion_step": _ebm_step(),
}


def _differentiable(arguments: Sequence[Any]) -> list[Tensor]:
    return [a for a in arguments if isinstance(a, Tensor) and a.requires_grad]


def _outputs(result: Any) -> list[Tensor]:
    return list(result) if isinstance(result, tuple) else [result]


#: Cases that cannot capture in one graph, with the reason (strict: an unexpected pass fails, so
#: the mark goes when the cause is fixed).
KNOWN_BREAKS: dict[str, str] = {}


def _params() -> list[Any]:
    return [
        pytest.param(
            name,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BREAKS[name])]
            if name in KNOWN_BREAKS
            else [],
        )
        for name in CASES
    ]


@pytest.mark.parametrize("name", _params())
def test_compiles_fullgraph_and_matches_eager(name: str) -> None:
    case = CASES[name]
    torch._dynamo.reset()
    compiled = torch.compile(case.function, fullgraph=True, backend="aot_eager")
    results = []
    for function in (case.function, compiled):
        arguments = case.arguments()
        outputs = _outputs(function(*arguments))
        # A fixed, non-uniform cotangent so every output element matters.
        loss = torch.stack(
            [
                (o * torch.linspace(0.5, 1.5, o.numel(), dtype=F64).view(o.shape)).sum()
                for o in outputs
            ]
        ).sum()
        gradients = torch.autograd.grad(loss, _differentiable(arguments))
        results.append(([o.detach() for o in outputs], gradients))
    (eager_outputs, eager_gradients), (compiled_outputs, compiled_gradients) = results
    for eager, compiled_value in zip(eager_outputs, compiled_outputs, strict=True):
        torch.testing.assert_close(compiled_value, eager, rtol=TOLERANCE, atol=TOLERANCE)
    for eager, compiled_value in zip(eager_gradients, compiled_gradients, strict=True):
        torch.testing.assert_close(compiled_value, eager, rtol=TOLERANCE, atol=TOLERANCE)


# --------------------------------------------------------------------------------------------------
# Processes: a model compiles its processes whole, parameters (nn.Parameter) included.


def _processes() -> dict[
    str, tuple[Callable[[], torch.nn.Module], Callable[[], dict[str, Tensor]]]
]:
    pressure, thickness = _layer_pressure(4)

    def column_temperature() -> dict[str, Tensor]:
        return {"air_temperature": _unstable_profile(2, 4)}

    def radiation_state() -> dict[str, Tensor]:
        return {
            "air_temperature": uniform(200.0, 280.0, 2, 4),
            "surface_temperature": uniform(280.0, 300.0, 2, seed=1),
            "insolation": torch.tensor([300.0, 100.0], dtype=F64),
        }

    def surface_state() -> dict[str, Tensor]:
        return {
            "surface_temperature": uniform(290.0, 300.0, 3),
            "air_temperature": uniform(285.0, 295.0, 3, seed=1),
            "specific_humidity": uniform(0.005, 0.012, 3, seed=2),
            "wind_speed": uniform(0.5, 8.0, 3, seed=3),
            "surface_pressure": uniform(9.0e4, 1.0e5, 3, seed=4),
        }

    def moist_state() -> dict[str, Tensor]:
        temperature = torch.linspace(300.0, 270.0, 4, dtype=F64)
        pressure = torch.linspace(1.0e5, 6.0e4, 4, dtype=F64)
        saturation = thermo.saturation_specific_humidity_kernel(temperature, pressure)
        humidity = torch.tensor([1.1, 0.95, 0.5, 1.3], dtype=F64) * saturation
        return {
            "air_temperature": leaf(temperature[None]),
            "specific_humidity": leaf(humidity[None]),
            "air_pressure": pressure[None],
        }

    diffusion_grid = diffusion.VerticalGrid.from_interfaces(torch.linspace(0.0, 1500.0, 5))
    return {
        "DryConvectiveAdjustment": (
            lambda: convection.DryConvectiveAdjustment(pressure, thickness, 1800.0).double(),
            column_temperature,
        ),
        "BettsMillerConvection": (
            lambda: convection.BettsMillerConvection(pressure, 5.5e-3, 10800.0).double(),
            column_temperature,
        ),
        "VerticalDiffusion": (
            lambda: diffusion.VerticalDiffusion(
                diffusion_grid.to(F64), torch.linspace(5.0, 20.0, 4, dtype=F64), 900.0
            ),
            column_temperature,
        ),
        "GrayRadiation": (
            lambda: radiation.GrayRadiation(
                reference_surface_pressure * torch.linspace(0, 1, 5)
            ).double(),
            radiation_state,
        ),
        "SurfaceFluxes": (lambda: surface.SurfaceFluxes(stability=True).double(), surface_state),
        "LargeScaleCondensation": (
            lambda: thermo.LargeScaleCondensation(
                method="adjustment", mode="straight_through"
            ).double(),
            moist_state,
        ),
    }


PROCESSES = _processes()


@pytest.mark.parametrize("name", list(PROCESSES))
def test_process_compiles_fullgraph_and_matches_eager(name: str) -> None:
    make_process, make_state = PROCESSES[name]
    process = make_process()
    torch._dynamo.reset()
    compiled = torch.compile(process, fullgraph=True, backend="aot_eager")
    results = []
    for function in (process, compiled):
        state = make_state()
        tendencies, diagnostics = function(state)
        outputs = [*tendencies.values(), *diagnostics.values()]
        loss = torch.stack([(o * o.detach().abs().add(1.0).log()).sum() for o in outputs]).sum()
        wanted = [*process.parameters(), *_differentiable(list(state.values()))]
        gradients = torch.autograd.grad(loss, wanted, allow_unused=True, materialize_grads=True)
        results.append(([o.detach() for o in outputs], gradients))
    (eager_outputs, eager_gradients), (compiled_outputs, compiled_gradients) = results
    for eager, got in zip(
        [*eager_outputs, *eager_gradients], [*compiled_outputs, *compiled_gradients], strict=True
    ):
        torch.testing.assert_close(got, eager, rtol=TOLERANCE, atol=TOLERANCE)
