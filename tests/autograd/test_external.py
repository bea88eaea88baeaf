"""Tests of climgrad.autograd.external: accuracy, call counts, structures, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from climgrad.autograd import ExternalFunctionError, check_gradients, external

LEVELS, BANDS = 6, 4
WEIGHTS = np.random.default_rng(0).normal(size=(BANDS, LEVELS))


def column_scheme(temperature: np.ndarray, co2: np.ndarray, surface: np.ndarray) -> np.ndarray:
    """A smooth stand-in for a radiation code: (n, L), (), (n,) -> (n, M), columns independent."""
    return (
        np.tanh((temperature / 300.0) ** 2 @ WEIGHTS.T) * np.log(co2)
        + np.sin(surface / 100.0)[..., None]
    )


def column_reference(temperature, co2, surface):
    weights = torch.as_tensor(WEIGHTS, dtype=temperature.dtype)
    return (
        torch.tanh((temperature / 300.0) ** 2 @ weights.T) * torch.log(co2)
        + torch.sin(surface / 100.0)[..., None]
    )


def column_inputs(n, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    temperature = 250 + 50 * torch.rand(n, LEVELS, generator=g, dtype=dtype)
    co2 = torch.tensor(400e-6, dtype=dtype)
    surface = 280 + 10 * torch.rand(n, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (temperature, co2, surface)]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def gradients_against_reference(f, inputs, reference):
    outputs = f(*inputs)
    cotangent = torch.randn(outputs.shape, generator=torch.Generator().manual_seed(1)).to(
        outputs.dtype
    )
    grads = torch.autograd.grad(outputs, inputs, cotangent)
    exact_inputs = [x.detach().double().requires_grad_() for x in inputs]
    exact = torch.autograd.grad(reference(*exact_inputs), exact_inputs, cotangent.double())
    return [relative_error(g, e) for g, e in zip(grads, exact)]


@pytest.mark.parametrize("columns", [1, 100, 10_000])
def test_column_structure_costs_2L_plus_2_per_scalar_for_any_batch(columns):
    f = external(column_scheme, structure="column")
    errors = gradients_against_reference(f, column_inputs(columns), column_reference)
    assert f.calls.forward == 1
    # 2 L for the profile, 2 for the scalar CO2, 2 for the per-column surface temperature.
    assert f.calls.backward == 2 * LEVELS + 2 + 2
    assert max(errors) < 1e-7


def test_central_differences_match_analytic_derivative_to_1e_7_float64():
    f = external(np.sin, structure="elementwise")
    x = torch.linspace(-3, 3, 101, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(f(x).sum(), x)
    assert relative_error(grad, torch.cos(x.detach())) < 1e-7
    assert f.calls.backward == 2


def test_float32_accuracy_is_documented_and_fd_dtype_restores_it():
    inputs = column_inputs(50, dtype=torch.float32)
    plain = external(column_scheme, structure="column")
    promoted = external(column_scheme, structure="column", fd_dtype=torch.float64)
    assert plain(*inputs).dtype == torch.float32
    # float32 central differences: about eps**(2/3) ~ 1e-5 .. 1e-3 relative (docs/autograd.md).
    assert 1e-7 < max(gradients_against_reference(plain, inputs, column_reference)) < 1e-3
    assert max(gradients_against_reference(promoted, inputs, column_reference)) < 1e-6


def test_shared_profile_given_as_1_by_L_broadcasts_over_columns():
    f = external(column_scheme, structure="column")
    temperature, co2, surface = column_inputs(5)
    shared = temperature[:1].detach().requires_grad_()
    errors = gradients_against_reference(f, [shared, co2, surface], column_reference)
    assert max(errors) < 1e-7
    assert f.calls.backward == 2 * LEVELS + 2 + 2


@pytest.mark.parametrize(
    ("method", "calls", "tolerance"), [("forward", 8, 1e-6), ("complex", 8, 1e-13)]
)
def test_forward_differences_and_complex_step(method, calls, tolerance):
    f = external(column_scheme, structure="column", method=method)
    errors = gradients_against_reference(f, column_inputs(3), column_reference)
    assert f.calls.backward == calls  # one call per probe: L + 1 + 1
    assert max(errors) < tolerance


def test_dense_structure_perturbs_every_element():
    def mix(x):
        return np.array([np.sum(x**2), np.prod(x)])

    f = external(mix, structure="dense")
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    y = f(x)
    (grad,) = torch.autograd.grad(y, x, torch.tensor([1.0, 1.0], dtype=torch.float64))
    expected = 2 * x.detach() + torch.tensor([6.0, 3.0, 2.0], dtype=torch.float64)
    assert relative_error(grad, expected) < 1e-8
    assert f.calls.backward == 2 * 3


def test_tuple_outputs_share_the_perturbed_calls():
    def fluxes(t):
        return 5.67e-8 * t**4, 2.0 * t

    f = external(fluxes, structure="elementwise")
    t = torch.tensor([250.0, 300.0], dtype=torch.float64, requires_grad=True)
    up, linear = f(t)
    (grad,) = torch.autograd.grad(up.sum() + 3 * linear.sum(), t)
    assert relative_error(grad, 4 * 5.67e-8 * t.detach() ** 3 + 6.0) < 1e-8
    assert f.calls.backward == 2


def test_inputs_without_grad_cost_no_calls_and_no_grad_mode_costs_none():
    f = external(column_scheme, structure="column")
    temperature, co2, surface = column_inputs(4)
    co2 = co2.detach()
    surface = surface.detach()
    f(temperature, co2, surface).sum().backward()
    assert f.calls.backward == 2 * LEVELS
    f.calls.reset()
    with torch.no_grad():
        f(temperature, co2, surface)
    assert (f.calls.forward, f.calls.backward) == (1, 0)


def test_user_supplied_jvp_vjp_and_jacobian_are_exact():
    def power(x):
        return x**3

    x = torch.linspace(0.5, 2.0, 7, dtype=torch.float64, requires_grad=True)
    exact = 3 * x.detach() ** 2
    variants = {
        "jvp": external(power, structure="elementwise", jvp=lambda p, t: 3 * p[0] ** 2 * t[0]),
        "vjp": external(power, structure="elementwise", vjp=lambda p, v: (3 * p[0] ** 2 * v[0],)),
        "jacobian": external(power, structure="elementwise", jacobian=lambda p: 3 * p**2),
    }
    for name, f in variants.items():
        (grad,) = torch.autograd.grad(f(x).sum(), x)
        assert relative_error(grad, exact) < 1e-15, name
        assert f.calls.backward == 0 and f.calls.derivative == 1, name


def test_column_jacobian_blocks():
    def scheme(temperature, scale):
        return scale * temperature[..., ::-1] ** 2

    def jacobian(temperature, scale):
        levels = temperature.shape[-1]
        flip = np.eye(levels)[::-1]
        d_temperature = scale * 2 * temperature[..., ::-1][..., :, None] * flip
        d_scale = temperature[..., ::-1] ** 2
        return ((d_temperature, d_scale),)

    f = external(scheme, structure="column", jacobian=jacobian)
    temperature = torch.rand(3, 5, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    assert check_gradients(f, (temperature, scale), names=["T", "scale"]).passed


def test_runs_inside_a_module_and_passes_check_gradients():
    class ColumnRadiation(nn.Module):
        def __init__(self):
            super().__init__()
            self.co2 = nn.Parameter(torch.tensor(400e-6, dtype=torch.float64))
            self.scheme = external(column_scheme, structure="column")

        def forward(self, temperature, surface):
            return self.scheme(temperature, self.co2, surface)

    temperature, _, surface = column_inputs(3)
    report = check_gradients(ColumnRadiation(), (temperature, surface), names=["T", "Ts"])
    assert report.passed, str(report)
    assert {r.target for r in report.results if r.check == "liveness"} == {"T", "Ts", "co2"}


def test_device_and_dtype_are_kept():
    f = external(np.exp, structure="elementwise")
    for dtype in (torch.float32, torch.float64):
        x = torch.ones(3, dtype=dtype, requires_grad=True)
        y = f(x)
        assert y.dtype == dtype and y.device == x.device
        y.sum().backward()
        assert x.grad is not None and x.grad.dtype == dtype


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_round_trip():
    f = external(np.sin, structure="elementwise")
    x = torch.linspace(0, 1, 5, device="cuda", dtype=torch.float64, requires_grad=True)
    y = f(x)
    assert y.device.type == "cuda"
    y.sum().backward()
    assert relative_error(x.grad.cpu(), torch.cos(x.detach().cpu())) < 1e-7


def test_output_that_contradicts_the_structure_is_an_error():
    f = external(lambda x: x.sum(axis=0), structure="elementwise", name="reducer")
    with pytest.raises(ExternalFunctionError, match="reducer: structure='elementwise'"):
        f(torch.ones(3, 2))
    g = external(lambda t: (t, t[:2]), structure="column", name="mixed")
    with pytest.raises(ExternalFunctionError, match="share the column"):
        g(torch.ones(3, 2))
    h = external(lambda t, per_column: 2.0 * t, structure="column")
    with pytest.raises(ExternalFunctionError, match=r"does not fit structure='column'"):
        h(torch.ones(3, LEVELS), torch.ones(7))


def test_non_finite_outputs_say_where():
    f = external(np.log, structure="elementwise", name="log")
    with pytest.raises(ExternalFunctionError, match=r"output 0 during the forward pass: 1 of 3"):
        f(torch.tensor([1.0, -1.0, 2.0]))
    # A perturbation that leaves the domain is reported from the backward pass.
    g = external(np.sqrt, structure="elementwise", name="sqrt", abs_step=1e-3)
    x = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    with pytest.raises(ExternalFunctionError, match="backward pass"):
        g(x).sum().backward()


def test_unsupported_dtype_and_bad_options():
    f = external(np.sin, structure="elementwise")
    with pytest.raises(ExternalFunctionError, match=r"float16.*\.double\(\)"):
        f(torch.ones(2, dtype=torch.float16))
    with pytest.raises(ValueError, match="Unknown structure"):
        external(np.sin, structure="columns")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most one"):
        external(np.sin, jvp=lambda p, t: t, vjp=lambda p, v: v)
