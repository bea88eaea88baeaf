"""Tests of top-of-atmosphere insolation: annual means, P2 fit, daily means, orbits, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad

from climgrad.autograd.verify import check_gradients
from climgrad.physics.insolation import (
    annual_mean_insolation,
    annual_mean_insolation_p2,
    daily_mean_insolation,
    legendre_p2,
    present_day_eccentricity,
    present_day_longitude_of_perihelion,
    present_day_obliquity,
    solar_longitude,
)

F64 = torch.float64
S0 = 1361.0


def _gauss_legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return torch.tensor(nodes, dtype=F64), torch.tensor(weights, dtype=F64)


def _area_mean(values_of_x: torch.Tensor, weights: torch.Tensor) -> float:
    """Mean over the sphere of a zonal field sampled at Gauss-Legendre nodes in x = sin(lat)."""
    return float(0.5 * (weights * values_of_x).sum())


def _reference_annual_mean(latitude: float, obliquity: float, eccentricity: float) -> float:
    """Ward (1974) integral by adaptive quadrature (scipy), with the kink located explicitly."""
    phi, eps = math.radians(latitude), math.radians(obliquity)

    def integrand(psi: float) -> float:
        z = math.sin(phi) * math.cos(eps) - math.cos(phi) * math.sin(eps) * math.cos(psi)
        return math.sqrt(max(0.0, 1.0 - z * z))

    integral = quad(integrand, 0.0, math.pi, limit=400, epsabs=1e-14, epsrel=1e-13)[0]
    return S0 * integral / (math.pi**2 * math.sqrt(1.0 - eccentricity**2))


# ----------------------------------------------------------------------------------------------
# Annual means


@pytest.mark.parametrize("eccentricity", [0.0, 0.0167086, 0.05])
def test_global_annual_mean_is_quarter_solar_constant(eccentricity: float) -> None:
    nodes, weights = _gauss_legendre(96)
    latitude = torch.rad2deg(torch.asin(nodes))
    insolation = annual_mean_insolation(latitude, S0, eccentricity=eccentricity)
    expected = S0 / (4.0 * math.sqrt(1.0 - eccentricity**2))
    # The polar-circle kink limits Gauss-Legendre to about 1e-7.
    assert _area_mean(insolation, weights) == pytest.approx(expected, rel=2e-7)


def test_p2_approximation_global_mean_is_exact() -> None:
    nodes, weights = _gauss_legendre(8)  # exact for the polynomial 1 + s2 P2(x)
    insolation = annual_mean_insolation_p2(nodes, 1360.0)
    assert _area_mean(insolation, weights) == pytest.approx(340.0, rel=1e-14)
    torch.testing.assert_close(
        annual_mean_insolation_p2(torch.tensor([1.0, 0.0], dtype=F64), 1360.0),
        torch.tensor([340.0 * (1 - 0.482), 340.0 * (1 + 0.241)], dtype=F64),
    )


def test_exact_annual_mean_has_p2_shape_of_north_1981() -> None:
    """The Legendre P2 coefficient of the exact annual mean is close to North's s2 = -0.482."""
    nodes, weights = _gauss_legendre(128)
    latitude = torch.rad2deg(torch.asin(nodes))
    shape = annual_mean_insolation(latitude, S0, eccentricity=0.0) / (S0 / 4)
    s0 = _area_mean(shape, weights)
    s2 = 5.0 * _area_mean(shape * legendre_p2(nodes), weights)
    assert s0 == pytest.approx(1.0, abs=1e-6)
    assert s2 == pytest.approx(-0.482, abs=0.01)
    fit = annual_mean_insolation_p2(nodes, S0)
    deviation = (annual_mean_insolation(latitude, S0, eccentricity=0.0) - fit).abs().max()
    assert float(deviation) < 0.035 * S0 / 4


@pytest.mark.parametrize(
    "latitude", [0.0, 23.0, 45.0, 66.5607089, 66.0, 67.0, 80.0, 89.5, 90.0, -66.5607089]
)
def test_annual_mean_matches_adaptive_quadrature(latitude: float) -> None:
    value = annual_mean_insolation(
        torch.tensor([latitude], dtype=F64),
        S0,
        obliquity=present_day_obliquity,
        eccentricity=present_day_eccentricity,
    )
    reference = _reference_annual_mean(latitude, present_day_obliquity, present_day_eccentricity)
    assert float(value) == pytest.approx(reference, rel=2e-7)


def test_zero_obliquity_annual_mean_is_cosine() -> None:
    latitude = torch.linspace(-90.0, 90.0, 37, dtype=F64)
    insolation = annual_mean_insolation(latitude, S0, obliquity=0.0, eccentricity=0.0)
    torch.testing.assert_close(
        insolation, S0 / math.pi * torch.cos(torch.deg2rad(latitude)), rtol=1e-12, atol=1e-12
    )


def test_annual_mean_is_symmetric_and_peaks_at_equator() -> None:
    latitude = torch.linspace(-90.0, 90.0, 91, dtype=F64)
    insolation = annual_mean_insolation(latitude, S0)
    torch.testing.assert_close(insolation, insolation.flip(0), rtol=1e-14, atol=0)
    assert int(insolation.argmax()) == 45
    assert 410.0 < float(insolation.max()) < 420.0
    assert 170.0 < float(insolation.min()) < 175.0


# ----------------------------------------------------------------------------------------------
# Orbit and daily means


def _berger_series_longitude(
    day: np.ndarray, eccentricity: float, perihelion_deg: float
) -> np.ndarray:
    """Solar longitude by Berger's (1978) series, as in Huybers & Eisenman's daily_insolation.m."""
    e, omega = eccentricity, math.radians(perihelion_deg)
    beta = math.sqrt(1 - e**2)
    mean_at_equinox = -2 * (
        (e / 2 + e**3 / 8) * (1 + beta) * math.sin(-omega)
        - e**2 / 4 * (0.5 + beta) * math.sin(-2 * omega)
        + e**3 / 8 * (1 / 3 + beta) * math.sin(-3 * omega)
    )
    mean = mean_at_equinox + (day - 80.0) * 2 * math.pi / 365.2422
    true = (
        mean
        + (2 * e - e**3 / 4) * np.sin(mean - omega)
        + 5 / 4 * e**2 * np.sin(2 * (mean - omega))
        + 13 / 12 * e**3 * np.sin(3 * (mean - omega))
    )
    return np.mod(true, 2 * math.pi)


@pytest.mark.parametrize("eccentricity,perihelion", [(0.0167086, 282.9373), (0.05, 100.0)])
def test_solar_longitude_agrees_with_berger_series(eccentricity: float, perihelion: float) -> None:
    day = torch.linspace(1.0, 365.0, 200, dtype=F64)
    exact = solar_longitude(day, eccentricity, perihelion).numpy()
    series = _berger_series_longitude(day.numpy(), eccentricity, perihelion)
    difference = np.angle(np.exp(1j * (exact - series)))
    # The series is truncated at e^3.
    assert np.abs(difference).max() < 3 * eccentricity**4 + 1e-12


def test_solar_longitude_landmarks() -> None:
    day = torch.tensor([80.0], dtype=F64)
    assert float(torch.sin(solar_longitude(day))) == pytest.approx(0.0, abs=1e-14)
    circular = solar_longitude(torch.tensor([80.0 + 365.2422 / 4], dtype=F64), 0.0, 0.0)
    assert float(circular) == pytest.approx(math.pi / 2, abs=1e-13)
    # Kepler's second law: the Sun moves fastest in longitude near perihelion (early January).
    days = torch.arange(1.0, 366.0, dtype=F64)
    longitudes = np.unwrap(solar_longitude(days).numpy())
    speed = np.diff(longitudes)
    assert int(np.argmax(speed)) in range(0, 8) or int(np.argmax(speed)) > 358


def test_pole_at_june_solstice_present_orbit() -> None:
    days = torch.arange(1.0, 366.0, 0.25, dtype=F64)
    north = daily_mean_insolation(torch.tensor(90.0, dtype=F64), days, S0)
    south = daily_mean_insolation(torch.tensor(-90.0, dtype=F64), days, S0)
    assert 520.0 < float(north.max()) < 530.0
    # The June solstice is near aphelion, December near perihelion: the south pole gets more.
    assert 555.0 < float(south.max()) < 565.0
    solstice = float(days[int(north.argmax())])
    assert 170.0 < solstice < 174.0
    # Polar day: Q = S0 sin(δ) (a/r)^2 = S0 sin(ε) sin(λ) (1 + e cos(λ - ϖ))^2 / (1 - e^2)^2.
    e, omega = float(present_day_eccentricity), math.radians(present_day_longitude_of_perihelion)
    longitude = np.linspace(math.radians(80.0), math.radians(100.0), 200001)
    analytic = (
        S0
        * math.sin(math.radians(present_day_obliquity))
        * np.sin(longitude)
        * (1 + e * np.cos(longitude - omega)) ** 2
        / (1 - e**2) ** 2
    )
    near_solstice = torch.arange(165.0, 180.0, 0.01, dtype=F64)
    fine = daily_mean_insolation(torch.tensor(90.0, dtype=F64), near_solstice, S0)
    assert float(fine.max()) == pytest.approx(float(analytic.max()), rel=1e-8)


def test_polar_night_and_equinox_equator() -> None:
    december = torch.tensor(355.0, dtype=F64)
    assert float(daily_mean_insolation(torch.tensor(85.0, dtype=F64), december)) == 0.0
    equinox = torch.tensor(80.0, dtype=F64)
    circular = daily_mean_insolation(torch.tensor(0.0, dtype=F64), equinox, S0, eccentricity=0.0)
    assert float(circular) == pytest.approx(S0 / math.pi, rel=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    latitude=st.floats(-90.0, 90.0),
    day=st.floats(1.0, 366.0),
    obliquity=st.floats(0.0, 40.0),
)
def test_circular_orbit_hemispheric_symmetry(latitude: float, day: float, obliquity: float) -> None:
    """With e = 0, latitude φ on day d sees what -φ sees half a year later."""
    half_year = 365.2422 / 2
    here = daily_mean_insolation(
        torch.tensor(latitude, dtype=F64), torch.tensor(day, dtype=F64), S0, 0.0, obliquity
    )
    there = daily_mean_insolation(
        torch.tensor(-latitude, dtype=F64),
        torch.tensor(day + half_year, dtype=F64),
        S0,
        0.0,
        obliquity,
    )
    assert float(here) == pytest.approx(float(there), rel=1e-9, abs=1e-9)
    assert 0.0 <= float(here) <= S0


def test_year_average_of_daily_means_is_annual_mean() -> None:
    latitude = torch.linspace(-90.0, 90.0, 19, dtype=F64)
    days = (torch.arange(3652, dtype=F64) + 0.5) * (365.2422 / 3652)
    daily = daily_mean_insolation(latitude[:, None], days[None, :], S0)
    annual = annual_mean_insolation(latitude, S0)
    torch.testing.assert_close(daily.mean(-1), annual, rtol=2e-5, atol=0)


# ----------------------------------------------------------------------------------------------
# Gradients and validation


def test_gradient_in_solar_constant_is_normalised_insolation() -> None:
    latitude = torch.linspace(-90.0, 90.0, 7, dtype=F64)
    solar = torch.tensor(S0, dtype=F64, requires_grad=True)
    for function in (
        lambda s: annual_mean_insolation(latitude, s, quadrature_points=64),
        lambda s: annual_mean_insolation_p2(torch.sin(torch.deg2rad(latitude)), s),
        lambda s: daily_mean_insolation(latitude, torch.tensor(150.0, dtype=F64), s),
    ):
        value = function(solar)
        (gradient,) = torch.autograd.grad(value.sum(), solar)
        assert float(gradient) == pytest.approx(float(value.detach().sum() / S0), rel=1e-13)
        report = check_gradients(function, (solar,), names=["solar_constant"])
        assert report.passed, str(report)


def test_orbital_gradients_are_finite_at_polar_edges() -> None:
    """No NaN where arccos and sqrt meet their edges (polar day/night, poles, polar circles)."""
    latitude = torch.tensor([-90.0, -66.56, 0.0, 66.56, 89.0, 90.0], dtype=F64)
    days = torch.linspace(1.0, 365.0, 24, dtype=F64)
    orbit = {
        "eccentricity": torch.tensor(0.0167, dtype=F64, requires_grad=True),
        "obliquity": torch.tensor(23.44, dtype=F64, requires_grad=True),
        "longitude_of_perihelion": torch.tensor(282.9, dtype=F64, requires_grad=True),
    }
    daily = daily_mean_insolation(latitude[:, None], days[None, :], S0, **orbit)
    gradients = torch.autograd.grad(daily.sum(), list(orbit.values()))
    assert all(bool(torch.isfinite(g)) and float(g) != 0.0 for g in gradients)
    annual = annual_mean_insolation(latitude, S0, orbit["obliquity"], orbit["eccentricity"])
    gradients = torch.autograd.grad(annual.sum(), [orbit["obliquity"], orbit["eccentricity"]])
    assert all(bool(torch.isfinite(g)) and float(g) != 0.0 for g in gradients)


def test_validation_messages() -> None:
    with pytest.raises(ValueError, match="degrees north"):
        annual_mean_insolation(torch.tensor([95.0]))
    with pytest.raises(ValueError, match="solar_constant"):
        annual_mean_insolation(torch.tensor([0.0]), -1.0)
    with pytest.raises(ValueError, match="sin\\(latitude\\)"):
        annual_mean_insolation_p2(torch.tensor([45.0]))
    with pytest.raises(ValueError, match="eccentricity"):
        daily_mean_insolation(torch.tensor([0.0]), torch.tensor([1.0]), eccentricity=1.2)


def test_dtype_follows_inputs() -> None:
    latitude = torch.tensor([10.0, 50.0], dtype=torch.float32)
    assert annual_mean_insolation(latitude).dtype == torch.float32
    assert daily_mean_insolation(latitude, torch.tensor([100.0])).dtype == torch.float32
    assert annual_mean_insolation_p2(torch.tensor([0.5], dtype=F64)).dtype == F64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    latitude = torch.linspace(-90.0, 90.0, 13, dtype=F64)
    days = torch.linspace(1.0, 365.0, 10, dtype=F64)
    solar = torch.tensor(S0, dtype=F64, device="cuda", requires_grad=True)
    daily = daily_mean_insolation(latitude.cuda()[:, None], days.cuda()[None, :], solar)
    annual = annual_mean_insolation(latitude.cuda(), solar)
    (daily.sum() + annual.sum()).backward()
    assert solar.grad is not None and solar.grad.device.type == "cuda"
    torch.testing.assert_close(
        daily.detach().cpu(), daily_mean_insolation(latitude[:, None], days[None, :], S0)
    )
    torch.testing.assert_close(annual.detach().cpu(), annual_mean_insolation(latitude, S0))


# ---------------------------------------------------------------------------------------------
# Insolation-weighted daily-mean cosine of the zenith angle


def _hourly_cosine(latitude: float, declination: float) -> tuple[float, float]:
    """∫μ dh and ∫μ² dh over daylight by a fine midpoint rule (independent of the closed form)."""
    phi, delta = np.deg2rad(latitude), declination
    hours = (np.arange(200_000) + 0.5) / 200_000 * 2 * np.pi - np.pi
    mu = np.sin(phi) * np.sin(delta) + np.cos(phi) * np.cos(delta) * np.cos(hours)
    mu = np.clip(mu, 0.0, None)
    step = 2 * np.pi / hours.size
    return float(mu.sum() * step), float((mu**2).sum() * step)


@pytest.mark.parametrize("latitude", [-12.4, 0.0, 45.0, 70.0, 85.0])
def test_daily_mean_cosine_zenith_matches_quadrature(latitude: float) -> None:
    from climgrad.physics.insolation import (
        daily_mean_cosine_zenith,
        present_day_obliquity,
        solar_longitude,
    )

    day = torch.tensor(22.0, dtype=torch.float64)
    lat = torch.tensor(latitude, dtype=torch.float64)
    longitude = solar_longitude(day)
    declination = float(
        torch.asin(np.sin(np.deg2rad(present_day_obliquity)) * torch.sin(longitude))
    )
    first, second = _hourly_cosine(latitude, declination)
    expected = second / first if first > 0 else 0.0
    assert float(daily_mean_cosine_zenith(lat, day)) == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_daily_mean_cosine_zenith_landmarks() -> None:
    from climgrad.physics.insolation import daily_mean_cosine_zenith

    # equator at equinox: ∫cos² / ∫cos over (-π/2, π/2) = (π/2) / 2 = π/4
    equator = daily_mean_cosine_zenith(
        torch.tensor(0.0, dtype=torch.float64),
        torch.tensor(0.0, dtype=torch.float64),
        obliquity=0.0,
    )
    assert float(equator) == pytest.approx(np.pi / 4, rel=1e-12)
    # polar night (north pole in January) gives 0, not NaN
    night = daily_mean_cosine_zenith(
        torch.tensor(90.0, dtype=torch.float64), torch.tensor(15.0, dtype=torch.float64)
    )
    assert float(night) == 0.0
