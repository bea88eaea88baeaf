"""Forward-mode (jvp) rules of the custom Functions a Newton Jacobian runs through."""

from __future__ import annotations

import torch

from climgrad.physics.convection import _BettsMillerFunction
from climgrad.physics.surface import _LatentHeatFluxFunction, _SensibleHeatFluxFunction

F64 = torch.float64


def test_betts_miller_forward_mode_gradcheck():
    generator = torch.Generator().manual_seed(0)
    temperature = (250 + 40 * torch.rand(2, 8, generator=generator, dtype=F64)).requires_grad_()
    ratio = torch.linspace(0.7, 1.0, 8, dtype=F64).requires_grad_()
    time = torch.tensor(7200.0, dtype=F64, requires_grad=True)

    def tendency(t, r, tau):
        return _BettsMillerFunction.apply(t, r, tau, 2.0)[0]

    assert torch.autograd.gradcheck(
        tendency, (temperature, ratio, time), check_forward_ad=True, check_backward_ad=True
    )


def test_sensible_heat_flux_forward_mode_gradcheck():
    generator = torch.Generator().manual_seed(1)
    values = [300.0, 298.0, 5.0, 1.5e-3, 1.2, 1004.0]
    inputs = tuple(
        (v * (1 + 0.01 * torch.rand(3, generator=generator, dtype=F64))).requires_grad_()
        for v in values
    )
    assert torch.autograd.gradcheck(
        _SensibleHeatFluxFunction.apply, inputs, check_forward_ad=True, check_backward_ad=True
    )


def test_latent_heat_flux_forward_mode_gradcheck():
    generator = torch.Generator().manual_seed(2)
    values = [300.0, 0.015, 5.0, 1.5e-3, 1.2, 1.0e5, 2.5e6]
    inputs = tuple(
        (v * (1 + 0.01 * torch.rand(3, generator=generator, dtype=F64))).requires_grad_()
        for v in values
    )
    assert torch.autograd.gradcheck(
        lambda *a: _LatentHeatFluxFunction.apply(*a, "bolton"),
        inputs,
        check_forward_ad=True,
        check_backward_ad=True,
    )


def test_forward_mode_with_some_tangents_missing():
    """Inputs without a tangent (parameters held fixed) contribute nothing."""
    from torch.autograd import forward_ad

    ts = torch.tensor([300.0, 301.0], dtype=F64)
    ta = torch.tensor([298.0, 297.0], dtype=F64)
    wind, coefficient = torch.tensor(5.0, dtype=F64), torch.tensor(1e-3, dtype=F64)
    density, cp = torch.tensor(1.2, dtype=F64), torch.tensor(1004.0, dtype=F64)
    with forward_ad.dual_level():
        flux = _SensibleHeatFluxFunction.apply(
            forward_ad.make_dual(ts, torch.ones_like(ts)), ta, wind, coefficient, density, cp
        )
        tangent = forward_ad.unpack_dual(flux).tangent
    torch.testing.assert_close(tangent, torch.full_like(ts, 1.2 * 1004.0 * 1e-3 * 5.0))
