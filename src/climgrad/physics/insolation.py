"""Top-of-atmosphere insolation by latitude: annual means and daily means from orbital parameters.

Daily mean (Berger 1978, J. Atmos. Sci. 35, 2362, eq. 10): with latitude φ, solar declination δ,
hour angle of sunset h₀ and Earth–Sun distance r in units of the semi-major axis a,

    Q_day = (S₀ / π) (a / r)² (h₀ sin φ sin δ + cos φ cos δ sin h₀),
    sin δ = sin ε sin λ,      cos h₀ = −tan φ tan δ   (h₀ = π in polar day, 0 in polar night),

where ε is the obliquity and λ the Sun's true (solar) longitude, 0 at the March equinox. The
position on the orbit comes from Kepler's equation (solved exactly by Newton's method, rather than
Berger's series in the eccentricity, which agrees to O(e⁴)).

Annual mean (Ward 1974, J. Geophys. Res. 79, 3375; Berger et al. 2010, Quat. Sci. Rev. 29, 1968):
averaging Q_day over a Keplerian year (dt ∝ r² dλ cancels the (a/r)² factor) gives

    Q̄(φ) = S₀ / (2π² √(1 − e²)) ∫₀^{2π} √(1 − (sin φ cos ε − cos φ sin ε cos ψ)²) dψ,

independent of the longitude of perihelion; its global mean is S₀ / (4 √(1 − e²)). The integral is
an elliptic integral, evaluated by the midpoint rule (spectrally accurate except at the polar
circles, where the integrand has a kink: relative error below 2e-7 with the default 1024 points).

The P2 approximation of North et al. (1981, Rev. Geophys. 19, 91), ``Q̄ = (S₀/4)(1 + s₂ P₂(sin φ))``
with ``s₂ = −0.482``, is the annual-mean forcing of the Budyko–Sellers–North energy-balance models
(:mod:`climgrad.physics.ebm`). For the present obliquity the Legendre projection of the exact
annual mean gives s₂ ≈ −0.477, and the P₂ form is within 3 % of S₀/4 of the exact one.

Gradients: every insolation is linear in the solar constant, ``Q = S₀ q(φ, orbit)``, so the
gradient with respect to S₀ is ``q`` itself. Plain autograd of the product already computes exactly
that and saves exactly ``q``, so a custom ``autograd.Function`` could save nothing and run the same
backward: it would not earn its place here. The kernels are also written so that gradients with
respect to latitude and orbital parameters are finite everywhere (no NaN from ``arccos`` or
``sqrt`` at the edges of polar day and night, where the true derivative is infinite and is
replaced by zero, or by a large finite value).

Units: latitudes, obliquity and longitude of perihelion in degrees at this interface (the CF and
palaeoclimate conventions), radians inside; days of year in days; insolation in W m-2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from climgrad.constants import Constant, solar_constant
from climgrad.validation import check_count, check_positive, check_range

__all__ = [
    "annual_mean_insolation",
    "annual_mean_insolation_p2",
    "daily_mean_cosine_zenith",
    "daily_mean_insolation",
    "days_per_year",
    "legendre_p2",
    "march_equinox_day",
    "north_p2_coefficient",
    "present_day_eccentricity",
    "present_day_longitude_of_perihelion",
    "present_day_obliquity",
    "solar_longitude",
]

present_day_eccentricity = Constant(
    0.0167086,
    "1",
    "J2000.0 mean orbital elements, Simon et al. (1994), Astron. Astrophys. 282, 663",
    "eccentricity of the Earth's orbit",
)
present_day_obliquity = Constant(
    23.4392911,
    "degree",
    "J2000.0, IAU 1980; Simon et al. (1994), Astron. Astrophys. 282, 663",
    "obliquity of the ecliptic",
)
present_day_longitude_of_perihelion = Constant(
    282.9373,
    "degree",
    "J2000.0, Simon et al. (1994): Earth's heliocentric longitude of perihelion 102.9373 + 180",
    "the Sun's true longitude at perihelion, measured from the March equinox (Berger's ϖ + 180°)",
)
north_p2_coefficient = Constant(
    -0.482,
    "1",
    "North, Cahalan & Coakley (1981), Rev. Geophys. 19, 91",
    "coefficient s2 of the annual-mean insolation fit s(x) = 1 + s2 P2(x)",
)
days_per_year = Constant(365.2422, "day", "mean tropical year", "length of a year in days")
march_equinox_day = Constant(
    80.0,
    "day",
    "convention of Berger (1978) and of climlab (day 1 = 1 January; 21 March)",
    "day of year of the March (vernal) equinox",
)

_KEPLER_ITERATIONS = 8


def legendre_p2(x: Tensor) -> Tensor:
    """Second Legendre polynomial ``P₂(x) = (3x² − 1) / 2``.

    Args:
        x: Sine of latitude (dimensionless, in [−1, 1]), any shape.

    Returns:
        ``P₂(x)``, the shape of ``x``.

    >>> import torch
    >>> legendre_p2(torch.tensor([0.0, 1.0]))
    tensor([-0.5000,  1.0000])
    """
    return 0.5 * (3.0 * x * x - 1.0)


def _as_tensor(value: float | Tensor, like: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(device=like.device) if value.device != like.device else value
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def _float_dtype(*values: float | Tensor) -> torch.dtype:
    for value in values:
        if isinstance(value, Tensor) and value.is_floating_point():
            return value.dtype
    return torch.get_default_dtype()


def _check_solar_constant(solar_constant: float | Tensor) -> None:
    check_positive(
        "solar_constant",
        solar_constant,
        "W m-2",
        "Pass the total solar irradiance at 1 AU, about 1361 W m-2 for the Earth.",
    )


def _check_latitude(latitude: Tensor) -> None:
    check_range(
        "latitude", latitude, -90.0, 90.0, "degrees north", "Convert radians with torch.rad2deg."
    )


def _check_eccentricity(eccentricity: float | Tensor) -> None:
    check_range(
        "eccentricity",
        eccentricity,
        0.0,
        1.0,
        hint="The Earth's varies between about 0 and 0.06.",
        include_upper=False,
    )


def _safe_sqrt(x: Tensor) -> Tensor:
    # sqrt'(0) is infinite: route zero (or rounding-negative) arguments away from the derivative.
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), 0.0)


# ----------------------------------------------------------------------------------------------
# Kernels (plain torch, radians).


def annual_mean_insolation_p2_kernel(
    sin_latitude: Tensor, solar_constant: Tensor | float, p2_coefficient: Tensor | float
) -> Tensor:
    """``(S₀/4)(1 + s₂ P₂(x))`` in W m-2 (North et al. 1981); :func:`annual_mean_insolation_p2`."""
    return 0.25 * solar_constant * (1.0 + p2_coefficient * legendre_p2(sin_latitude))


def annual_mean_insolation_kernel(
    latitude_radians: Tensor,
    solar_constant: Tensor | float,
    obliquity_radians: Tensor | float,
    eccentricity: Tensor | float,
    quadrature_points: int,
) -> Tensor:
    """Exact annual mean (Ward 1974), midpoint rule in ψ ∈ [0, π]; W m-2, shape of latitude."""
    phi = latitude_radians.unsqueeze(-1)
    psi = (torch.arange(quadrature_points, dtype=phi.dtype, device=phi.device) + 0.5) * (
        math.pi / quadrature_points
    )
    obliquity = _as_tensor(obliquity_radians, phi)
    if obliquity.ndim:
        obliquity = obliquity.unsqueeze(-1)
    sine_of_elevation = torch.sin(phi) * torch.cos(obliquity) - torch.cos(phi) * torch.sin(
        obliquity
    ) * torch.cos(psi)
    mean_root = _safe_sqrt(1.0 - sine_of_elevation**2).mean(dim=-1)
    eccentricity_factor = 1.0 / torch.sqrt(1.0 - _as_tensor(eccentricity, phi) ** 2)
    return solar_constant * eccentricity_factor * mean_root / math.pi


def orbital_position_kernel(
    day_of_year: Tensor,
    eccentricity: Tensor | float,
    longitude_of_perihelion_radians: Tensor | float,
    year_length: float,
    equinox_day: float,
) -> tuple[Tensor, Tensor]:
    """Solar longitude λ (rad, in [0, 2π)) and distance r/a on ``day_of_year`` by Kepler's equation.

    The mean anomaly advances uniformly in time from its value at the March equinox (λ = 0); the
    eccentric anomaly E solves ``E − e sin E = M`` (Newton, 8 iterations: quadratic convergence
    from ``E = M + e sin M`` reaches rounding for e < 0.3); ``r/a = 1 − e cos E``.
    """
    e = _as_tensor(eccentricity, day_of_year)
    perihelion = _as_tensor(longitude_of_perihelion_radians, day_of_year)
    root = torch.sqrt(1.0 - e * e)
    anomaly_at_equinox = -perihelion
    eccentric_at_equinox = torch.atan2(
        root * torch.sin(anomaly_at_equinox), e + torch.cos(anomaly_at_equinox)
    )
    mean_at_equinox = eccentric_at_equinox - e * torch.sin(eccentric_at_equinox)
    mean_anomaly = mean_at_equinox + (2.0 * math.pi / year_length) * (day_of_year - equinox_day)
    eccentric = mean_anomaly + e * torch.sin(mean_anomaly)
    for _ in range(_KEPLER_ITERATIONS):
        eccentric = eccentric - (eccentric - e * torch.sin(eccentric) - mean_anomaly) / (
            1.0 - e * torch.cos(eccentric)
        )
    true_anomaly = torch.atan2(root * torch.sin(eccentric), torch.cos(eccentric) - e)
    longitude = torch.remainder(true_anomaly + perihelion, 2.0 * math.pi)
    distance = 1.0 - e * torch.cos(eccentric)
    return longitude, distance


def sunset_hour_angle_kernel(latitude_radians: Tensor, declination_radians: Tensor) -> Tensor:
    """Sunset hour angle h₀ (rad): ``cos h₀ = −tan φ tan δ``; π in polar day, 0 in polar night."""
    cosine = -(torch.sin(latitude_radians) * torch.sin(declination_radians)) / (
        torch.cos(latitude_radians) * torch.cos(declination_radians)
    )
    # arccos' is infinite at ±1 and the clamped branch would turn 0 * inf into NaN.
    inside = cosine.abs() < 1.0
    interior = torch.arccos(torch.where(inside, cosine, torch.zeros_like(cosine)))
    # Python scalars in torch.where would give float32, and π in float32 is off by 3e-8.
    polar = torch.where(cosine >= 1.0, torch.zeros_like(cosine), torch.full_like(cosine, math.pi))
    return torch.where(inside, interior, polar)


def daily_mean_insolation_kernel(
    latitude_radians: Tensor,
    solar_longitude_radians: Tensor,
    distance: Tensor,
    solar_constant: Tensor | float,
    obliquity_radians: Tensor | float,
) -> Tensor:
    """Berger (1978) eq. 10; inputs broadcast together; W m-2."""
    obliquity = _as_tensor(obliquity_radians, solar_longitude_radians)
    declination = torch.asin(torch.sin(obliquity) * torch.sin(solar_longitude_radians))
    hour_angle = sunset_hour_angle_kernel(latitude_radians, declination)
    geometry = hour_angle * torch.sin(latitude_radians) * torch.sin(declination) + torch.cos(
        latitude_radians
    ) * torch.cos(declination) * torch.sin(hour_angle)
    # Round-off can leave -1e-17 where the sun never rises.
    geometry = torch.clamp(geometry, min=0.0)
    return solar_constant / math.pi * geometry / distance**2


# ----------------------------------------------------------------------------------------------
# Public functions.


def annual_mean_insolation_p2(
    sin_latitude: Tensor,
    solar_constant: float | Tensor = solar_constant,
    p2_coefficient: float | Tensor = north_p2_coefficient,
) -> Tensor:
    """Annual-mean insolation in the P2 approximation of North et al. (1981).

    ``Q̄(x) = (S₀/4) (1 + s₂ P₂(x))``, ``x = sin(latitude)``, ``P₂(x) = (3x² − 1)/2``. The global
    mean (over x, i.e. area-weighted) is exactly ``S₀/4``. Valid for orbits close to the present
    one (s₂ = −0.482 fits obliquities near 23.4°); use :func:`annual_mean_insolation` otherwise.

    Args:
        sin_latitude: x = sin(latitude), dimensionless, in [−1, 1]; any shape, e.g. ``(band,)``.
        solar_constant: S₀ in W m-2 (positive); a tensor to differentiate with respect to it.
        p2_coefficient: s₂ (dimensionless), −0.482 by default.

    Returns:
        Insolation in W m-2, the shape of ``sin_latitude`` (broadcast with the other arguments).

    >>> import torch
    >>> annual_mean_insolation_p2(torch.tensor([0.0]), solar_constant=1360.0)
    tensor([421.9400])
    """
    check_range("sin_latitude", sin_latitude, -1.0, 1.0, hint="Pass sin(latitude), not latitude.")
    _check_solar_constant(solar_constant)
    return annual_mean_insolation_p2_kernel(sin_latitude, solar_constant, p2_coefficient)


def annual_mean_insolation(
    latitude: Tensor,
    solar_constant: float | Tensor = solar_constant,
    obliquity: float | Tensor = present_day_obliquity,
    eccentricity: float | Tensor = present_day_eccentricity,
    quadrature_points: int = 1024,
) -> Tensor:
    """Exact annual-mean top-of-atmosphere insolation by latitude (Ward 1974; Berger et al. 2010).

    ``Q̄(φ) = S₀ / (2π² √(1 − e²)) ∫₀^{2π} √(1 − (sin φ cos ε − cos φ sin ε cos ψ)²) dψ``; the
    global mean is ``S₀ / (4 √(1 − e²))``. Independent of the longitude of perihelion. Valid for
    any obliquity in [0°, 90°] and eccentricity in [0, 1).

    Args:
        latitude: Latitude φ in degrees north, in [−90, 90]; any shape, e.g. ``(band,)``. Its dtype
            and device are those of the result.
        solar_constant: S₀ in W m-2 (positive); a tensor to differentiate with respect to it.
        obliquity: ε in degrees (present day 23.44°).
        eccentricity: e (dimensionless, present day 0.0167).
        quadrature_points: Midpoints in ψ ∈ [0, π]; the error is largest at the polar circles
            (relative 1e-7 for 1024 points, falling as the square of the spacing).

    Returns:
        Annual-mean insolation in W m-2, the shape of ``latitude``.

    >>> import torch
    >>> q = annual_mean_insolation(torch.tensor([0.0, 90.0], dtype=torch.float64), 1361.0)
    >>> [round(v, 1) for v in q.tolist()]
    [415.6, 172.3]
    """
    _check_latitude(latitude)
    _check_solar_constant(solar_constant)
    _check_eccentricity(eccentricity)
    check_count("quadrature_points", quadrature_points, 8)
    return annual_mean_insolation_kernel(
        torch.deg2rad(latitude),
        solar_constant,
        torch.deg2rad(_as_tensor(obliquity, latitude)),
        eccentricity,
        quadrature_points,
    )


def solar_longitude(
    day_of_year: Tensor,
    eccentricity: float | Tensor = present_day_eccentricity,
    longitude_of_perihelion: float | Tensor = present_day_longitude_of_perihelion,
    year_length: float = days_per_year,
    equinox_day: float = march_equinox_day,
) -> Tensor:
    """The Sun's true longitude λ on a day of the year, from Kepler's equation.

    λ = 0 at the March equinox (``equinox_day``), 90° at the June solstice. The mean anomaly grows
    uniformly in time; ``E − e sin E = M`` is solved by Newton's method; λ = ν + ϖ with the true
    anomaly ``ν = atan2(√(1 − e²) sin E, cos E − e)``. Agrees with Berger's (1978) series to O(e⁴).

    Args:
        day_of_year: Day of the year in days (fractional; day 1 is 1 January), any shape.
        eccentricity: e (dimensionless), in [0, 1).
        longitude_of_perihelion: ϖ in degrees, the Sun's true longitude at perihelion measured from
            the March equinox (present day 282.94°; Berger's heliocentric value plus 180°).
        year_length: Length of the year in days.
        equinox_day: Day of year of the March equinox.

    Returns:
        λ in radians, in [0, 2π), the shape of ``day_of_year``.
    """
    _check_eccentricity(eccentricity)
    day = day_of_year if day_of_year.is_floating_point() else day_of_year.to(_float_dtype())
    perihelion = torch.deg2rad(_as_tensor(longitude_of_perihelion, day))
    longitude, _ = orbital_position_kernel(
        day, eccentricity, perihelion, float(year_length), float(equinox_day)
    )
    return longitude


def daily_mean_insolation(
    latitude: Tensor,
    day_of_year: Tensor,
    solar_constant: float | Tensor = solar_constant,
    eccentricity: float | Tensor = present_day_eccentricity,
    obliquity: float | Tensor = present_day_obliquity,
    longitude_of_perihelion: float | Tensor = present_day_longitude_of_perihelion,
    year_length: float = days_per_year,
    equinox_day: float = march_equinox_day,
) -> Tensor:
    """Daily-mean top-of-atmosphere insolation by latitude and day of year (Berger 1978).

    ``Q_day = (S₀/π)(a/r)² (h₀ sin φ sin δ + cos φ cos δ sin h₀)``, ``sin δ = sin ε sin λ``,
    ``cos h₀ = −tan φ tan δ`` (h₀ = π in polar day, 0 in polar night); the solar longitude λ and the
    distance r/a come from Kepler's equation (:func:`solar_longitude`).

    Args:
        latitude: Latitude in degrees north, in [−90, 90].
        day_of_year: Day of the year in days (day 1 = 1 January); broadcast with ``latitude``,
            e.g. ``latitude[:, None]`` and ``day_of_year[None, :]`` give ``(lat, day)``.
        solar_constant: S₀ in W m-2 (positive); a tensor to differentiate with respect to it.
        eccentricity: e (dimensionless), in [0, 1).
        obliquity: ε in degrees.
        longitude_of_perihelion: ϖ in degrees (see :func:`solar_longitude`).
        year_length: Length of the year in days.
        equinox_day: Day of year of the March equinox.

    Returns:
        Daily-mean insolation in W m-2, the broadcast shape of ``latitude`` and ``day_of_year``.

    >>> import torch
    >>> pole = torch.tensor(90.0, dtype=torch.float64)
    >>> june_solstice = torch.tensor(172.0, dtype=torch.float64)
    >>> round(float(daily_mean_insolation(pole, june_solstice)), 0)
    524.0
    """
    _check_solar_constant(solar_constant)
    phi, longitude, distance = _orbital_position(
        latitude, day_of_year, eccentricity, longitude_of_perihelion, year_length, equinox_day
    )
    return daily_mean_insolation_kernel(
        phi, longitude, distance, solar_constant, torch.deg2rad(_as_tensor(obliquity, longitude))
    )


def _orbital_position(
    latitude: Tensor,
    day_of_year: Tensor,
    eccentricity: float | Tensor,
    longitude_of_perihelion: float | Tensor,
    year_length: float,
    equinox_day: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Validated latitude (rad), solar longitude (rad) and distance r/a for the daily functions."""
    _check_latitude(latitude)
    _check_eccentricity(eccentricity)
    dtype = _float_dtype(latitude, day_of_year)
    phi = torch.deg2rad(latitude.to(dtype))
    day = day_of_year.to(dtype=dtype, device=phi.device)
    perihelion = torch.deg2rad(_as_tensor(longitude_of_perihelion, day))
    longitude, distance = orbital_position_kernel(
        day, eccentricity, perihelion, float(year_length), float(equinox_day)
    )
    return phi, longitude, distance


def daily_mean_cosine_zenith(
    latitude: Tensor,
    day_of_year: Tensor,
    eccentricity: float | Tensor = present_day_eccentricity,
    obliquity: float | Tensor = present_day_obliquity,
    longitude_of_perihelion: float | Tensor = present_day_longitude_of_perihelion,
    year_length: float = days_per_year,
    equinox_day: float = march_equinox_day,
) -> Tensor:
    """Insolation-weighted daily-mean cosine of the solar zenith angle, ``μ̄ = ∫μ² dh / ∫μ dh``.

    With ``μ = sin φ sin δ + cos φ cos δ cos h`` over the daylight hour angles ``|h| < h₀``
    (``a = sin φ sin δ``, ``b = cos φ cos δ``): ``∫μ dh = 2(a h₀ + b sin h₀)`` and
    ``∫μ² dh = 2(a² h₀ + 2ab sin h₀ + b² (h₀/2 + sin 2h₀ / 4))``. A radiation scheme called once a
    day at ``μ̄`` with its incoming flux scaled to the daily-mean insolation
    (:func:`daily_mean_insolation`, i.e. a daylight fraction ``Q_day / (S₀ μ̄ (a/r)²)``) absorbs
    about what the diurnal cycle would; the insolation weighting keeps the path length of the
    energy-carrying hours (Cronin 2014, J. Atmos. Sci. 71, 2994; Hartmann 1994, ch. 2).

    Args:
        latitude, day_of_year, eccentricity, obliquity, longitude_of_perihelion, year_length,
            equinox_day: As in :func:`daily_mean_insolation`.

    Returns:
        ``μ̄`` (dimensionless, in (0, 1]; 0 in polar night), the broadcast shape of the inputs.
    """
    phi, longitude, _ = _orbital_position(
        latitude, day_of_year, eccentricity, longitude_of_perihelion, year_length, equinox_day
    )
    obliquity_radians = torch.deg2rad(_as_tensor(obliquity, longitude))
    declination = torch.asin(torch.sin(obliquity_radians) * torch.sin(longitude))
    h0 = sunset_hour_angle_kernel(phi, declination)
    a = torch.sin(phi) * torch.sin(declination)
    b = torch.cos(phi) * torch.cos(declination)
    first = a * h0 + b * torch.sin(h0)
    second = a * a * h0 + 2.0 * a * b * torch.sin(h0) + b * b * (h0 / 2 + torch.sin(2 * h0) / 4)
    positive = first > 0
    return torch.where(positive, second / torch.where(positive, first, 1.0), 0.0)
