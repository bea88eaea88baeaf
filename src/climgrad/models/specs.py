"""Parameter declarations shared by several model families (each declared once, here).

The bulk exchange coefficients of the surface fluxes (Garratt 1992, ch. 4) are parameters of the
single column (:class:`~climgrad.models.SingleColumnModel`) and of the flux-tower model
(:class:`~climgrad.models.FluxTowerModel`); both take their :class:`~climgrad.params.ParamSpec`
from this module, so units, bounds and descriptions cannot drift apart.
"""

from __future__ import annotations

from climgrad.params import ParamSpec

__all__ = ["GUSTINESS", "HEAT_EXCHANGE", "MOISTURE_EXCHANGE"]

#: C_H of ``H = ρ c_p C_H V_e (T_s - T_a)``; positive, log-transformed (scale-free steps).
HEAT_EXCHANGE = ParamSpec(
    "heat_exchange",
    "1",
    1.5e-3,
    (0.0, None),
    "bulk heat transfer coefficient C_H",
    transform="exp",
)
#: C_E of ``LE = ρ L C_E V_e (q_s(T_s) - q_a)``; over land an effective coefficient that absorbs
#: the surface (stomatal and soil) resistance.
MOISTURE_EXCHANGE = ParamSpec(
    "moisture_exchange",
    "1",
    1.5e-3,
    (0.0, None),
    "bulk moisture transfer coefficient C_E (effective over land)",
    transform="exp",
)
#: Gust velocity w_g of the wind floor ``V_e = sqrt(V² + w_g²)``.
GUSTINESS = ParamSpec(
    "gustiness", "m s-1", 0.5, (0.0, None), "gust velocity of the wind floor", transform="exp"
)
