"""Tests of climgrad.physics.diffusion: implicit vertical diffusion and its adjoint backward."""

from __future__ import annotations

import doctest
import math
from collections.abc import Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import climgrad.physics.diffusion as diffusion_module
from climgrad import tridiagonal
from climgrad.autograd.verify import check_gradients, taylor_test
from climgrad.physics.diffusion import (
    VerticalDiffusion,
    VerticalGrid,
    implicit_diffusion_kernel,
    implicit_vertical_diffusion,
    implicit_vertical_diffusion_steps,
    pressure_coordinate_diffusivity,
)

DOUBLE = torch.float64


@pytest.fixture(params=["native", "eager"])
def solver_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a test with the compiled C sweeps (when they build) and with the eager torch sweeps."""
    if request.param == "native" and not tridiagonal.native_available():
        pytest.skip(
            "the C extension climgrad._tridiagonal was not built (no C compiler at install)"
        )
    tridiagonal.set_native_enabled(request.param == "native")
    yield request.param
    tridiagonal.set_native_enabled(True)


def _random_grid(levels: int, seed: int) -> VerticalGrid:
    generator = torch.Generator().manual_seed(seed)
    widths = 0.2 + torch.rand(levels, generator=generator, dtype=DOUBLE)
    interfaces = torch.cat([torch.zeros(1, dtype=DOUBLE), torch.cumsum(widths, 0)])
    return VerticalGrid.from_interfaces(interfaces, coordinate="height")


def _random_inputs(
    columns: int, levels: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, VerticalGrid]:
    generator = torch.Generator().manual_seed(seed)
    temperature = torch.randn(columns, levels, generator=generator, dtype=DOUBLE)
    diffusivity = 0.1 + torch.rand(levels, generator=generator, dtype=DOUBLE)
    return temperature, diffusivity, _random_grid(levels, seed + 1)


def test_docstring_examples_run() -> None:
    failures, _ = doctest.testmod(diffusion_module, verbose=False)
    assert failures == 0


@pytest.mark.parametrize("reuse_factorization", [True, False])
def test_check_gradients_all_four_ways(solver_path: str, reuse_factorization: bool) -> None:
    temperature, diffusivity, grid = _random_inputs(3, 5, seed=0)

    def run(temperature: torch.Tensor, diffusivity: torch.Tensor) -> torch.Tensor:
        return implicit_vertical_diffusion_steps(
            temperature, diffusivity, 0.7, 4, grid, reuse_factorization=reuse_factorization
        )

    report = check_gradients(
        run,
        (temperature.requires_grad_(True), diffusivity.requires_grad_(True)),
        names=["temperature", "diffusivity"],
    )
    assert report.passed, str(report)


@pytest.mark.parametrize("reuse_factorization", [True, False])
@pytest.mark.parametrize("per_column_diffusivity", [False, True])
def test_custom_backward_matches_autograd_through_kernel(
    solver_path: str, reuse_factorization: bool, per_column_diffusivity: bool
) -> None:
    temperature, diffusivity, grid = _random_inputs(4, 7, seed=1)
    if per_column_diffusivity:
        diffusivity = diffusivity * torch.linspace(0.5, 2.0, 4, dtype=DOUBLE)[:, None]
    temperature.requires_grad_(True)
    diffusivity.requires_grad_(True)
    cotangent = torch.randn(4, 7, dtype=DOUBLE)
    custom = implicit_vertical_diffusion_steps(
        temperature, diffusivity, 0.3, 6, grid, reuse_factorization=reuse_factorization
    )
    reference = implicit_diffusion_kernel(
        temperature, diffusivity, 0.3, grid.cell_width, grid.center_distance, steps=6
    )
    torch.testing.assert_close(custom, reference, rtol=1e-13, atol=1e-13)
    custom_grads = torch.autograd.grad(custom, (temperature, diffusivity), cotangent)
    reference_grads = torch.autograd.grad(reference, (temperature, diffusivity), cotangent)
    for got, expected in zip(custom_grads, reference_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-11, atol=1e-13)


def test_taylor_remainder_in_diffusivity(solver_path: str) -> None:
    temperature, diffusivity, grid = _random_inputs(2, 6, seed=2)
    result = taylor_test(
        lambda k: implicit_vertical_diffusion_steps(temperature, k, 0.5, 5, grid), diffusivity
    )
    assert result.passed, str(result)


def test_cosine_mode_decays_at_the_analytic_rate(solver_path: str) -> None:
    """On a uniform grid with constant K, cos(pi m z) is an eigenvector of the discrete operator.

    Its eigenvalue is (4 K / dz^2) sin^2(pi m / (2 L)), so each backward-Euler step divides the
    amplitude by 1 + dt * eigenvalue.
    """
    levels, steps, time_step, diffusivity_value = 16, 7, 0.01, 0.8
    grid = VerticalGrid.uniform(levels)
    z = (torch.arange(levels, dtype=DOUBLE) + 0.5) / levels
    modes = torch.stack([torch.cos(math.pi * m * z) for m in (1, 2, 5)])
    diffusivity = torch.full((levels,), diffusivity_value, dtype=DOUBLE)
    result = implicit_vertical_diffusion_steps(modes, diffusivity, time_step, steps, grid)
    for row, m in enumerate((1, 2, 5)):
        eigenvalue = 4 * diffusivity_value * levels**2 * math.sin(math.pi * m / (2 * levels)) ** 2
        factor = (1 + time_step * eigenvalue) ** -steps
        torch.testing.assert_close(result[row], factor * modes[row], rtol=1e-12, atol=1e-14)


def test_b1_matrix_is_the_uniform_special_case() -> None:
    """benchmarks.md B1.2: r = dt f_i K_{k+1/2} / dz^2 on the interfaces of a uniform grid."""
    columns, levels, time_step = 3, 6, 1e-3
    dz = 1.0 / levels
    generator = torch.Generator().manual_seed(3)
    diffusivity = 0.5 + torch.rand(levels, generator=generator, dtype=DOUBLE)
    column_factor = 0.5 + (torch.arange(columns, dtype=DOUBLE) + 0.5) / columns
    previous = torch.randn(columns, levels, generator=generator, dtype=DOUBLE)
    r = time_step * column_factor[:, None] * 0.5 * (diffusivity[1:] + diffusivity[:-1]) / dz**2
    r_below = torch.nn.functional.pad(r, (1, 0))
    r_above = torch.nn.functional.pad(r, (0, 1))
    matrix = (
        torch.diag_embed(1 + r_below + r_above)
        - torch.diag_embed(r, offset=-1)
        - torch.diag_embed(r, offset=1)
    )
    expected = torch.linalg.solve(matrix, previous)
    result = implicit_vertical_diffusion(
        previous, column_factor[:, None] * diffusivity, time_step, VerticalGrid.uniform(levels)
    )
    torch.testing.assert_close(result, expected, rtol=1e-13, atol=1e-14)


@settings(max_examples=25, deadline=None)
@given(
    levels=st.integers(min_value=1, max_value=8),
    steps=st.integers(min_value=1, max_value=4),
    log_time_step=st.floats(min_value=-3.0, max_value=3.0),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_conserves_column_integral_and_obeys_maximum_principle(
    levels: int, steps: int, log_time_step: float, seed: int
) -> None:
    temperature, diffusivity, grid = _random_inputs(3, levels, seed)
    result = implicit_vertical_diffusion_steps(
        temperature, diffusivity, 10.0**log_time_step, steps, grid
    )
    before = (temperature * grid.cell_width).sum(-1)
    after = (result * grid.cell_width).sum(-1)
    torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-12)
    tolerance = 1e-12
    assert torch.all(result.max(-1).values <= temperature.max(-1).values + tolerance)
    assert torch.all(result.min(-1).values >= temperature.min(-1).values - tolerance)


def test_pressure_coordinates_match_height_coordinates_at_constant_density() -> None:
    """With constant density, p = p0 - rho g z maps the height scheme onto the pressure scheme."""
    levels, density = 8, 1.1
    heights = torch.linspace(0.0, 2000.0, levels + 1, dtype=DOUBLE) ** 1.1
    pressures = 1.0e5 - density * 9.80665 * heights
    height_grid = VerticalGrid.from_interfaces(heights, coordinate="height")
    pressure_grid = VerticalGrid.from_interfaces(pressures, coordinate="pressure")
    height_diffusivity = torch.linspace(5.0, 50.0, levels, dtype=DOUBLE)
    pressure_diffusivity = pressure_coordinate_diffusivity(
        height_diffusivity, torch.tensor(density, dtype=DOUBLE)
    )
    temperature = torch.linspace(300.0, 280.0, levels, dtype=DOUBLE)[None, :]
    in_height = implicit_vertical_diffusion(temperature, height_diffusivity, 1800.0, height_grid)
    in_pressure = implicit_vertical_diffusion(
        temperature, pressure_diffusivity, 1800.0, pressure_grid
    )
    torch.testing.assert_close(in_pressure, in_height, rtol=1e-12, atol=1e-10)
    mass_weighted = (in_pressure * pressure_grid.cell_width).sum()
    torch.testing.assert_close(mass_weighted, (temperature * pressure_grid.cell_width).sum())


def test_backward_saves_only_the_states() -> None:
    """Memory: the custom Function keeps S states (plus K and the grid), not every elimination."""
    columns, levels, steps = 64, 16, 10
    temperature, diffusivity, grid = _random_inputs(columns, levels, seed=4)
    temperature.requires_grad_(True)
    diffusivity.requires_grad_(True)
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        implicit_vertical_diffusion_steps(temperature, diffusivity, 0.1, steps, grid)
    state_bytes = columns * levels * 8
    assert sum(saved.values()) <= steps * state_bytes + 4 * levels * 8
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        implicit_diffusion_kernel(
            temperature, diffusivity, 0.1, grid.cell_width, grid.center_distance, steps
        )
    assert sum(saved.values()) > 3 * steps * state_bytes  # what the custom backward saves us


def test_inference_matches_and_zero_steps_is_identity(solver_path: str) -> None:
    temperature, diffusivity, grid = _random_inputs(3, 5, seed=5)
    with torch.no_grad():
        fast = implicit_vertical_diffusion_steps(temperature, diffusivity, 0.2, 3, grid)
    reference = implicit_diffusion_kernel(
        temperature, diffusivity, 0.2, grid.cell_width, grid.center_distance, steps=3
    )
    torch.testing.assert_close(fast, reference, rtol=1e-13, atol=1e-14)
    unchanged = implicit_vertical_diffusion_steps(temperature, diffusivity, 0.2, 0, grid)
    torch.testing.assert_close(unchanged, temperature)


def test_single_level_column_is_unchanged_and_diffusivity_gets_zero_gradient() -> None:
    temperature = torch.tensor([[3.0], [4.0]], dtype=DOUBLE, requires_grad=True)
    diffusivity = torch.tensor([2.0], dtype=DOUBLE, requires_grad=True)
    result = implicit_vertical_diffusion_steps(
        temperature, diffusivity, 1.0, 3, VerticalGrid.uniform(1)
    )
    torch.testing.assert_close(result, temperature)
    grad_temperature, grad_diffusivity = torch.autograd.grad(
        result.sum(), (temperature, diffusivity)
    )
    torch.testing.assert_close(grad_temperature, torch.ones_like(temperature))
    assert grad_diffusivity.item() == 0.0


def test_functional_grad() -> None:
    temperature, diffusivity, grid = _random_inputs(2, 5, seed=6)

    def loss(k: torch.Tensor) -> torch.Tensor:
        return implicit_vertical_diffusion_steps(temperature, k, 0.4, 3, grid).pow(2).sum()

    functional = torch.func.grad(loss)(diffusivity)
    k = diffusivity.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(loss(k), (k,))
    torch.testing.assert_close(functional, expected)


def test_vmap_over_columns_and_diffusivities() -> None:
    temperature, diffusivity, grid = _random_inputs(6, 5, seed=10)
    batched = torch.func.vmap(
        lambda t: implicit_vertical_diffusion_steps(t, diffusivity, 0.4, 3, grid)
    )(temperature.reshape(2, 3, 5))
    expected = implicit_vertical_diffusion_steps(temperature, diffusivity, 0.4, 3, grid)
    torch.testing.assert_close(batched.reshape(6, 5), expected)
    profiles = torch.stack([diffusivity, 2 * diffusivity])
    per_profile = torch.func.vmap(
        lambda k: implicit_vertical_diffusion_steps(temperature, k, 0.4, 3, grid)
    )(profiles)
    torch.testing.assert_close(
        per_profile[1],
        implicit_vertical_diffusion_steps(temperature, 2 * diffusivity, 0.4, 3, grid),
    )


def test_float32_follows_inputs(solver_path: str) -> None:
    temperature, diffusivity, grid = _random_inputs(3, 6, seed=7)
    temperature32 = temperature.float().requires_grad_(True)
    result = implicit_vertical_diffusion_steps(
        temperature32, diffusivity.float(), 0.3, 4, grid.to(dtype=torch.float32)
    )
    assert result.dtype == torch.float32
    expected = implicit_vertical_diffusion_steps(temperature, diffusivity, 0.3, 4, grid)
    torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(result.sum(), (temperature32,))
    assert grad.dtype == torch.float32


def test_process_tendency_is_the_implicit_step_and_parameter_is_live() -> None:
    grid = VerticalGrid.from_interfaces(torch.linspace(0.0, 1500.0, 7, dtype=DOUBLE))
    process = VerticalDiffusion(grid, torch.linspace(5.0, 20.0, 6, dtype=DOUBLE), time_step=900.0)
    temperature = torch.linspace(300.0, 285.0, 6, dtype=DOUBLE).expand(2, 6).clone()
    temperature[1] += torch.linspace(0.0, 3.0, 6, dtype=DOUBLE) ** 2
    state = {"air_temperature": temperature}
    tendencies, diagnostics = process(state)
    new_temperature = implicit_vertical_diffusion(
        temperature, process.diffusivity.detach(), 900.0, grid
    )
    torch.testing.assert_close(
        tendencies["air_temperature"], (new_temperature - temperature) / 900.0
    )
    assert diagnostics["air_temperature_diffusive_flux"].shape == (2, 5)
    column_heat_change = (tendencies["air_temperature"] * grid.cell_width).sum(-1)
    torch.testing.assert_close(column_heat_change, torch.zeros(2, dtype=DOUBLE), atol=1e-9, rtol=0)
    assert [name for name, _ in process.named_parameters()] == ["diffusivity"]
    report = check_gradients(
        process, ({"air_temperature": temperature.clone().requires_grad_(True)},)
    )
    assert report.passed, str(report)


def test_process_errors_say_the_fix() -> None:
    grid = VerticalGrid.uniform(4, depth=100.0, coordinate="height")
    with pytest.raises(ValueError, match="positive"):
        VerticalDiffusion(grid, torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=DOUBLE), 60.0)
    process = VerticalDiffusion(grid, torch.ones(4, dtype=DOUBLE), 60.0)
    with pytest.raises(KeyError, match="air_temperature"):
        process({"specific_humidity": torch.zeros(1, 4, dtype=DOUBLE)})


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ("levels", ValueError, r"last dimensions \(levels\) .* must agree"),
        ("negative", ValueError, "non-negative"),
        ("dtype", TypeError, "must share one dtype"),
        ("time_step", ValueError, "time_step"),
    ],
)
def test_validation_errors(change: str, error: type[Exception], match: str) -> None:
    temperature, diffusivity, grid = _random_inputs(2, 4, seed=8)
    time_step = 1.0
    if change == "levels":
        diffusivity = torch.ones(5, dtype=DOUBLE)
    elif change == "negative":
        diffusivity = -diffusivity
    elif change == "dtype":
        diffusivity = diffusivity.float()
    elif change == "time_step":
        time_step = -1.0
    with pytest.raises(error, match=match):
        implicit_vertical_diffusion(temperature, diffusivity, time_step, grid)


def test_grid_validation() -> None:
    with pytest.raises(ValueError, match="positive"):
        VerticalGrid.from_interfaces(torch.tensor([0.0, 1.0, 1.0, 2.0], dtype=DOUBLE))
    with pytest.raises(ValueError, match="one entry fewer"):
        VerticalGrid(torch.ones(3, dtype=DOUBLE), torch.ones(3, dtype=DOUBLE))
    with pytest.raises(ValueError, match="coordinate"):
        VerticalGrid.uniform(3, coordinate="sigma")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    temperature, diffusivity, grid = _random_inputs(5, 6, seed=9)
    inputs = (temperature.requires_grad_(True), diffusivity.requires_grad_(True))
    cuda_inputs = tuple(t.detach().cuda().requires_grad_(True) for t in inputs)
    result = implicit_vertical_diffusion_steps(*inputs, 0.3, 4, grid)
    cuda_result = implicit_vertical_diffusion_steps(*cuda_inputs, 0.3, 4, grid.to(device="cuda"))
    torch.testing.assert_close(cuda_result.cpu(), result)
    grads = torch.autograd.grad(result.sum(), inputs)
    cuda_grads = torch.autograd.grad(cuda_result.sum(), cuda_inputs)
    for got, expected in zip(cuda_grads, grads, strict=True):
        torch.testing.assert_close(got.cpu(), expected)
