"""Physical constants in SI units, each with its units and source.

Every constant is a :class:`Constant`, a ``float`` that also carries ``units`` and ``source``, so it
can be used directly in arithmetic and still documents itself::

    >>> from climgrad.constants import stefan_boltzmann
    >>> float(stefan_boltzmann)
    5.670374419e-08
    >>> stefan_boltzmann.units
    'W m-2 K-4'
"""

from __future__ import annotations


class Constant(float):
    """A float carrying ``units``, ``source`` and a one-line ``description``."""

    units: str
    source: str
    description: str

    def __new__(cls, value: float, units: str, source: str, description: str) -> Constant:
        obj = super().__new__(cls, value)
        obj.units = units
        obj.source = source
        obj.description = description
        return obj

    def __repr__(self) -> str:
        return f"Constant({float(self)!r}, units={self.units!r}, source={self.source!r})"


_CODATA = "CODATA 2018 (exact SI definition where stated)"
_WMO = "WMO/ICAO standard atmosphere; Wallace & Hobbs (2006), Atmospheric Science, 2nd ed., App. A"

stefan_boltzmann = Constant(5.670374419e-8, "W m-2 K-4", _CODATA, "Stefan-Boltzmann constant")
gravity = Constant(9.80665, "m s-2", "CGPM 1901 standard gravity (exact)", "standard gravity")
gas_constant_dry_air = Constant(287.04, "J kg-1 K-1", _WMO, "specific gas constant of dry air")
gas_constant_water_vapour = Constant(
    461.5, "J kg-1 K-1", _WMO, "specific gas constant of water vapour"
)
heat_capacity_dry_air = Constant(
    1004.0, "J kg-1 K-1", _WMO, "specific heat of dry air at constant pressure"
)
latent_heat_vaporization = Constant(
    2.501e6,
    "J kg-1",
    "Bolton (1980), Mon. Wea. Rev. 108, 1046, at 0 degC",
    "latent heat of vaporization",
)
density_water = Constant(1000.0, "kg m-3", _WMO, "density of liquid water")
heat_capacity_water = Constant(4181.3, "J kg-1 K-1", _WMO, "specific heat of liquid water")
freezing_point = Constant(273.15, "K", "SI definition of the Celsius scale (exact)", "0 degC in K")
reference_surface_pressure = Constant(1.0e5, "Pa", "convention (1000 hPa)", "reference pressure")
solar_constant = Constant(
    1361.0, "W m-2", "Kopp & Lean (2011), GRL 38, L01706", "total solar irradiance at 1 AU"
)
earth_radius = Constant(6.371e6, "m", "IUGG mean radius", "mean radius of the Earth")
seconds_per_day = Constant(86400.0, "s", "definition", "length of a day")
seconds_per_year = Constant(365.2422 * 86400.0, "s", "mean tropical year", "length of a year")
epsilon_water_vapour = Constant(
    0.622, "1", "R_d / R_v (Wallace & Hobbs 2006)", "ratio of gas constants of dry air and vapour"
)
