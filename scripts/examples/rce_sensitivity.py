"""Climate sensitivity and feedbacks of the clear-sky RRTMG column (``docs/sensitivity.md``).

    .venv/bin/python scripts/examples/rce_sensitivity.py --reference-surface-temperature 288
    .venv/bin/python scripts/examples/rce_sensitivity.py      # konrad's 342 W m-2, a 298 K surface
    .venv/bin/python scripts/examples/rce_sensitivity.py --levels 80 --time-step 1800 \
        --reference-surface-temperature 288 --json out.json

About 15 s at 40 levels and 2.5 minutes at 80 (2-core VM); prints every number as JSON.

Manabe & Wetherald's (1967) experiment with :class:`~climgrad.models.SingleColumnModel`
(``radiation="rrtmg"``, ``humidity="relative"``), set up as close to Kluft et al. (2019, J.
Climate 32, 8111) as the model's options allow (:class:`Setup`; the comparison is in the doc):

1. radiative-convective equilibrium at CO2 x1 and x2 (the model's Newton solver), hence the
   equilibrium warming of the surface for doubled CO2;
2. the forcing of the doubling at the x1 equilibrium: instantaneous (temperature and humidity
   fixed) at the top of the atmosphere and at the tropopause, and stratosphere-adjusted (the
   layers above the convective region relaxed back to radiative equilibrium, troposphere and
   surface fixed);
3. the Planck feedback (all temperatures shifted uniformly, specific humidity fixed) and the
   Planck + water-vapour feedback (the same shift at fixed relative humidity) as derivatives of the
   net downward flux at the top of the atmosphere, by autograd through the RRTMG bridge and by
   central differences of the same quantity;
4. ``dT_s*/d ln CO2`` of the equilibrium by implicit differentiation, against central differences
   of two more equilibria (a gradient estimate of the sensitivity, ``ln 2`` times it).

Needs the optional extra ``climgrad[rrtmg]`` (climt). Units SI; fluxes positive downward
(into the column), so feedbacks are negative for a stable climate.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from climgrad.data.afgl import read_afgl
from climgrad.integrate import equilibrium
from climgrad.models.column import SingleColumnModel
from climgrad.physics.convection import lapse_rate_exponent

ROOT = Path(__file__).resolve().parents[2]
AFGL = ROOT / "data" / "single_column" / "afgl_standard_atmospheres"
F64 = torch.float64
BANDS = ("longwave", "shortwave")
#: Layers from the top whose radiative heating is below this (K day-1) at the x1 equilibrium are
#: the stratosphere of the adjusted forcing (the convective region cools by about 1 K day-1).
STRATOSPHERE_HEATING = 0.05


@dataclass(frozen=True)
class Setup:
    """The experiment's configuration (SI units; see the set-up table in docs/sensitivity.md).

    Defaults: global-mean insolation 342 W m-2 through a fixed zenith angle of 47.88 degrees
    (konrad's default: 510 W m-2 x cos 47.88), surface albedo 0.2 (konrad's default), Manabe &
    Wetherald's relative humidity ``0.77 (p/p_s - 0.02)/0.98`` (floor 3e-6 kg kg-1), a 6.5 K km-1
    convective lapse rate (Manabe & Wetherald), CO2 348 ppm (x1) and 696 ppm (x2), other gases
    and ozone from the AFGL tropical atmosphere, 40 equal-pressure layers from 0 to 1000 hPa, and
    a surface-air bulk coefficient ten times the model's default, so that the surface follows the
    lowest layer (the column has no latent heat flux; see the doc). With
    ``reference_surface_temperature`` (K) the insolation is tuned (secant iterations on
    equilibria) until the x1 surface has that temperature, as the solar constant of an RCE model
    is often tuned to a 288 K surface.
    """

    levels: int = 40
    carbon_dioxide: float = 348e-6
    insolation: float = 342.0
    zenith_angle: float = 47.88
    surface_albedo: float = 0.2
    surface_relative_humidity: float = 0.77
    critical_lapse_rate: float = 6.5e-3
    heat_exchange: float = 1.5e-2
    background: str = "tropical"
    surface_temperature_guess: float = 290.0
    time_step: float = 3600.0
    reference_surface_temperature: float | None = None


def build(setup: Setup) -> tuple[SingleColumnModel, dict[str, Tensor]]:
    """The fixed-relative-humidity RRTMG column of ``setup`` and a first-guess state.

    The first guess is the convective profile of the guessed surface temperature down to a 200 K
    floor (a cold start the spin-up of :meth:`SingleColumnModel.equilibrium` takes from there).
    """
    model = SingleColumnModel(
        setup.levels,
        radiation="rrtmg",
        background=read_afgl(AFGL / f"{setup.background}.dat"),
        humidity="relative",
        mole_fractions={"carbon_dioxide": setup.carbon_dioxide},
        surface_albedo=setup.surface_albedo,
        surface_relative_humidity=setup.surface_relative_humidity,
        critical_lapse_rate=setup.critical_lapse_rate,
        heat_exchange=setup.heat_exchange,
        time_step=setup.time_step,
        learn=(),
    )
    surface = torch.tensor([setup.surface_temperature_guess], dtype=F64)
    exponent = lapse_rate_exponent(setup.critical_lapse_rate)
    profile = surface * (model.layer_pressure / model.surface_pressure) ** exponent
    state = model.initial_state(
        surface,
        torch.tensor([setup.insolation], dtype=F64),
        air_temperature=torch.clamp(profile, min=200.0).unsqueeze(0),
        cosine_solar_zenith_angle=torch.tensor(
            [math.cos(math.radians(setup.zenith_angle))], dtype=F64
        ),
    )
    return model, state


def carbon_dioxide_parameters(model: SingleColumnModel) -> list[Tensor]:
    """The CO2 mole fractions (mol mol-1) of the longwave and the shortwave, to be kept equal."""
    return [model.processes[band].carbon_dioxide_mole_fraction for band in BANDS]


def set_carbon_dioxide(model: SingleColumnModel, mole_fraction: float) -> None:
    """Set the CO2 mole fraction seen by both RRTMG bands (mol mol-1)."""
    with torch.no_grad():
        for parameter in carbon_dioxide_parameters(model):
            parameter.fill_(mole_fraction)


def solve(
    model: SingleColumnModel, state: dict[str, Tensor], *, spin_up_steps: int = 500
) -> dict[str, Tensor]:
    """Radiative-convective equilibrium (detached) by the model's spin-up and Newton solver."""
    with torch.no_grad():
        result = model.equilibrium(state, spin_up_steps=spin_up_steps)
    return {name: value.detach() for name, value in result.items()}


def tune_insolation(
    model: SingleColumnModel, solved: dict[str, Tensor], target: float, tol: float = 0.05
) -> dict[str, Tensor]:
    """The equilibrium whose surface is at ``target`` K, by secant iterations on the insolation.

    Starts from the equilibrium ``solved``; each trial is a Newton solve warm-started from the
    previous one. A first step of 2.5 W m-2 per kelvin (absorbed sunlight over a clear-sky
    feedback of about 2 W m-2 K-1) brackets the answer in practice.
    """
    insolation = solved["insolation"]
    previous = (float(insolation[0]), float(solved["surface_temperature"][0]))
    current_state = solved
    trial = previous[0] + 2.5 * (target - previous[1])
    for _ in range(12):
        current_state = solve(
            model,
            {**current_state, "insolation": torch.full_like(insolation, trial)},
            spin_up_steps=0,
        )
        surface = float(current_state["surface_temperature"][0])
        if abs(surface - target) < tol:
            return current_state
        slope = (surface - previous[1]) / (trial - previous[0])
        previous, trial = (trial, surface), trial + (target - surface) / slope
    raise RuntimeError(f"insolation not tuned to {target} K in 12 secant steps (at {surface} K).")


def diagnostics(
    model: SingleColumnModel, state: dict[str, Tensor], specific_humidity: Tensor | None = None
) -> dict[str, Tensor]:
    """The RRTMG diagnostics of ``state``.

    With ``specific_humidity=None`` the model diagnoses the vapour from its fixed relative
    humidity (``model(state)``); otherwise the two radiation processes see the vapour given
    (kg kg-1), held fixed whatever the temperature.
    """
    if specific_humidity is None:
        return model(state)[1]
    radiative_state = {**state, "specific_humidity": specific_humidity}
    result: dict[str, Tensor] = {}
    for band in BANDS:
        result.update(model.processes[band](radiative_state)[1])
    return result


def toa_net_flux(
    model: SingleColumnModel, state: dict[str, Tensor], specific_humidity: Tensor | None = None
) -> Tensor:
    """Net downward flux at the top of the atmosphere (W m-2), ``(column,)``.

    Absorbed sunlight minus outgoing longwave: ``incoming_shortwave - reflected_shortwave -
    outgoing_longwave_radiation`` of the RRTMG processes' diagnostics. Humidity as in
    :func:`diagnostics`.
    """
    values = diagnostics(model, state, specific_humidity)
    return (
        values["incoming_shortwave"]
        - values["reflected_shortwave"]
        - values["outgoing_longwave_radiation"]
    )


def net_downward_flux(
    model: SingleColumnModel, state: dict[str, Tensor], specific_humidity: Tensor | None = None
) -> Tensor:
    """Net downward (shortwave + longwave) flux on every interface (W m-2), top first."""
    values = diagnostics(model, state, specific_humidity)
    return values["net_downward_shortwave_flux"] - values["net_upward_longwave_flux"]


def radiative_heating(model: SingleColumnModel, state: dict[str, Tensor]) -> Tensor:
    """Longwave plus shortwave heating rate (K day-1) of every layer, fixed relative humidity."""
    values = diagnostics(model, state)
    return 86400.0 * (values["longwave_heating_rate"] + values["shortwave_heating_rate"])


def stratosphere_layers(model: SingleColumnModel, state: dict[str, Tensor]) -> int:
    """Number of layers from the top in radiative equilibrium (``|Q_rad| < 0.05 K day-1``)."""
    with torch.no_grad():
        heating = radiative_heating(model, state)[0].abs()
    count = 0
    while count < heating.numel() and float(heating[count]) < STRATOSPHERE_HEATING:
        count += 1
    return count


def adjust_stratosphere(
    model: SingleColumnModel, state: dict[str, Tensor], layers: int
) -> dict[str, Tensor]:
    """``state`` with its top ``layers`` layers relaxed to radiative equilibrium (Newton).

    The troposphere, the surface and the relative humidity stay fixed; the top layers solve
    ``Q_lw + Q_sw = 0`` (K day-1, tolerance 1e-3) with :func:`climgrad.integrate.equilibrium`.
    """
    troposphere = state["air_temperature"][..., layers:]
    surface = state["surface_temperature"]

    def residual(top: Tensor) -> Tensor:
        batch = top.shape[:-1]
        lower = troposphere.expand(*batch, troposphere.shape[-1])
        trial = {
            **state,
            "air_temperature": torch.cat([top, lower], dim=-1),
            "surface_temperature": surface.expand(batch),
        }
        return radiative_heating(model, trial)[..., :layers]

    with torch.no_grad():
        top = equilibrium(residual, state["air_temperature"][..., :layers], [], tol=1e-3)
    return {**state, "air_temperature": torch.cat([top, troposphere], dim=-1)}


def forcing(model: SingleColumnModel, state: dict[str, Tensor], factor: float = 2.0) -> dict:
    """Forcing (W m-2) of multiplying CO2 by ``factor`` at the equilibrium ``state``.

    Returns ``instantaneous_toa`` (net downward flux change at the top, temperature and humidity
    fixed), ``instantaneous_tropopause`` (the same on the interface below the stratosphere),
    ``adjusted`` (top-of-atmosphere change after the stratosphere has relaxed to radiative
    equilibrium), and ``stratosphere_layers``/``tropopause_pressure`` (Pa) used. CO2 is restored.
    """
    base = float(carbon_dioxide_parameters(model)[0])
    layers = stratosphere_layers(model, state)
    if layers == 0:
        raise ValueError(
            "No layer at the top is in radiative equilibrium (|Q_rad| < 0.05 K day-1): pass an "
            "equilibrium state (solve(model, state)) to forcing()."
        )
    with torch.no_grad():
        toa_before = float(toa_net_flux(model, state)[0])
        profile_before = net_downward_flux(model, state)[0, layers]
        set_carbon_dioxide(model, factor * base)
        try:
            toa_after = float(toa_net_flux(model, state)[0])
            profile_after = net_downward_flux(model, state)[0, layers]
            adjusted = adjust_stratosphere(model, state, layers)
            toa_adjusted = float(toa_net_flux(model, adjusted)[0])
        finally:
            set_carbon_dioxide(model, base)
    return {
        "instantaneous_toa": toa_after - toa_before,
        "instantaneous_tropopause": float(profile_after - profile_before),
        "adjusted": toa_adjusted - toa_before,
        "stratosphere_layers": layers,
        "tropopause_pressure": float(model.interface_pressure[layers]),
        "stratosphere_cooling_top": float(
            adjusted["air_temperature"][0, 0] - state["air_temperature"][0, 0]
        ),
    }


def feedback(
    model: SingleColumnModel,
    state: dict[str, Tensor],
    *,
    relative_humidity: bool,
    step: float = 0.5,
    unwarmed_layers: int = 0,
) -> dict[str, float]:
    """``dN/dδ`` (W m-2 K-1): the top-of-atmosphere net flux under a uniform warming δ.

    Every layer and the surface warm by δ (all but the top ``unwarmed_layers`` layers, for the
    kernel convention that leaves the stratosphere out of the Planck response); the vapour is
    held at its specific humidity (``relative_humidity=False``: the Planck feedback) or follows
    the model's fixed relative humidity (``True``: Planck plus water vapour).

    Returns ``autograd``, the derivative at δ = 0 by reverse mode through the RRTMG bridge (its
    finite-difference backward), and ``finite_difference``, ``(N(+step) - N(-step)) / (2 step)``
    of the same function (``step`` in K; RRTMG's flux staircase of 1e-5 to 1e-4 W m-2 needs
    steps well above 1e-3 K).
    """
    temperature = state["air_temperature"].detach()
    surface = state["surface_temperature"].detach()
    fixed = None
    if not relative_humidity:
        with torch.no_grad():
            fixed = diagnostics(model, state)["specific_humidity"].detach()

    shape = torch.ones_like(temperature)
    shape[..., :unwarmed_layers] = 0.0

    def net(delta: Tensor) -> Tensor:
        warmed = {
            **state,
            "air_temperature": temperature + delta * shape,
            "surface_temperature": surface + delta,
        }
        return toa_net_flux(model, warmed, fixed).sum()

    delta = torch.zeros((), dtype=F64, requires_grad=True)
    (gradient,) = torch.autograd.grad(net(delta), delta)
    with torch.no_grad():
        plus = float(net(torch.tensor(step, dtype=F64)))
        minus = float(net(torch.tensor(-step, dtype=F64)))
    return {"autograd": float(gradient), "finite_difference": (plus - minus) / (2 * step)}


def pattern_feedback(
    model: SingleColumnModel,
    single: dict[str, Tensor],
    double: dict[str, Tensor],
    unwarmed_layers: int = 0,
    step: float = 0.5,
) -> float:
    """``dN/dT_s`` (W m-2 K-1) along the column's own equilibrium warming, relative humidity fixed.

    The warming profile is that of the x1 to x2 equilibria per kelvin of surface warming (the top
    ``unwarmed_layers`` layers left out), applied at the x1 state and CO2 by central differences
    (``step`` K of surface warming). Against :func:`feedback` with ``relative_humidity=True`` it
    measures the lapse-rate feedback at fixed relative humidity.
    """
    surface = double["surface_temperature"] - single["surface_temperature"]
    pattern = (double["air_temperature"] - single["air_temperature"]) / surface.unsqueeze(-1)
    pattern = pattern.clone()
    pattern[..., :unwarmed_layers] = 0.0
    values = []
    with torch.no_grad():
        for delta in (step, -step):
            warmed = {
                **single,
                "air_temperature": single["air_temperature"] + delta * pattern,
                "surface_temperature": single["surface_temperature"] + delta,
            }
            values.append(float(toa_net_flux(model, warmed)[0]))
    return (values[0] - values[1]) / (2 * step)


def implicit_sensitivity(
    model: SingleColumnModel, state: dict[str, Tensor], relative_step: float = 0.05
) -> dict[str, float]:
    """``dT_s*/d ln CO2`` (K) of the equilibrium: implicit gradient and central differences.

    The gradient is one adjoint solve of the Newton equilibrium (``model.equilibrium`` from the
    solved ``state``) and the bridge's derivative of the fluxes with respect to the two CO2 mole
    fractions; the difference quotient re-solves at CO2 x (1 ± ``relative_step``).
    """
    parameters = carbon_dioxide_parameters(model)
    base = float(parameters[0])
    for parameter in parameters:
        parameter.requires_grad_(True)
        parameter.grad = None
    try:
        solved = model.equilibrium(state, spin_up_steps=0)
        solved["surface_temperature"].sum().backward()
        gradient = sum(base * float(parameter.grad) for parameter in parameters)
    finally:
        for parameter in parameters:
            parameter.requires_grad_(False)
            parameter.grad = None
    surfaces = []
    for sign in (1.0, -1.0):
        set_carbon_dioxide(model, base * (1.0 + sign * relative_step))
        try:
            surfaces.append(float(solve(model, state, spin_up_steps=0)["surface_temperature"][0]))
        finally:
            set_carbon_dioxide(model, base)
    scale = math.log((1.0 + relative_step) / (1.0 - relative_step))
    return {"autograd": gradient, "finite_difference": (surfaces[0] - surfaces[1]) / scale}


def run(setup: Setup, *, gradients: bool = True) -> dict:
    """The whole experiment for ``setup``; returns the numbers of docs/sensitivity.md."""
    started = time.perf_counter()
    model, first_guess = build(setup)
    single = solve(model, first_guess)
    if setup.reference_surface_temperature is not None:
        single = tune_insolation(model, single, setup.reference_surface_temperature)
    solved_single = time.perf_counter()
    residual = {}
    with torch.no_grad():
        residual["x1"] = float(toa_net_flux(model, single)[0])
    set_carbon_dioxide(model, 2.0 * setup.carbon_dioxide)
    try:
        double = solve(model, single, spin_up_steps=0)
        with torch.no_grad():
            residual["x2"] = float(toa_net_flux(model, double)[0])
    finally:
        set_carbon_dioxide(model, setup.carbon_dioxide)
    solved_double = time.perf_counter()
    result: dict = {
        "setup": asdict(setup),
        "insolation": float(single["insolation"][0]),
        "surface_temperature_x1": float(single["surface_temperature"][0]),
        "surface_temperature_x2": float(double["surface_temperature"][0]),
        "lowest_layer_temperature_x1": float(single["air_temperature"][0, -1]),
        "warming_surface": float(
            double["surface_temperature"][0] - single["surface_temperature"][0]
        ),
        "warming_lowest_layer": float(
            double["air_temperature"][0, -1] - single["air_temperature"][0, -1]
        ),
        "toa_imbalance": residual,
        "seconds_equilibrium_x1": solved_single - started,
        "seconds_equilibrium_x2": solved_double - solved_single,
    }
    with torch.no_grad():
        values = diagnostics(model, single)
    result["outgoing_longwave_x1"] = float(values["outgoing_longwave_radiation"][0])
    result["planetary_albedo_x1"] = float(
        values["reflected_shortwave"][0] / values["incoming_shortwave"][0]
    )
    result["cold_point_temperature_x1"] = float(single["air_temperature"][0].min())
    result["forcing"] = forcing(model, single)
    result["effective_feedback"] = -result["forcing"]["adjusted"] / result["warming_surface"]
    if gradients:
        mark = time.perf_counter()
        result["feedback"] = {}
        for label, unwarmed in (
            ("", 0),
            ("_troposphere", result["forcing"]["stratosphere_layers"]),
        ):
            planck = feedback(model, single, relative_humidity=False, unwarmed_layers=unwarmed)
            moist = feedback(model, single, relative_humidity=True, unwarmed_layers=unwarmed)
            result["feedback"][f"planck{label}"] = planck
            result["feedback"][f"planck_plus_water_vapour{label}"] = moist
            result["feedback"][f"water_vapour{label}"] = {k: moist[k] - planck[k] for k in planck}
        result["feedback"]["pattern_troposphere"] = pattern_feedback(
            model, single, double, result["forcing"]["stratosphere_layers"]
        )
        result["feedback"]["seconds"] = time.perf_counter() - mark
        mark = time.perf_counter()
        result["implicit_sensitivity"] = implicit_sensitivity(model, single)
        result["implicit_sensitivity"]["seconds"] = time.perf_counter() - mark
    result["seconds_total"] = time.perf_counter() - started
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=int, default=Setup.levels)
    parser.add_argument("--heat-exchange", type=float, default=Setup.heat_exchange)
    parser.add_argument("--surface-albedo", type=float, default=Setup.surface_albedo)
    parser.add_argument("--insolation", type=float, default=Setup.insolation)
    parser.add_argument("--background", default=Setup.background)
    parser.add_argument("--time-step", type=float, default=Setup.time_step)
    parser.add_argument(
        "--reference-surface-temperature",
        type=float,
        help="tune the insolation until the x1 surface has this temperature (K)",
    )
    parser.add_argument("--no-gradients", action="store_true", help="skip items 3 and 4")
    parser.add_argument("--json", type=Path, help="also write the results here")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(1)
    setup = Setup(
        levels=arguments.levels,
        heat_exchange=arguments.heat_exchange,
        surface_albedo=arguments.surface_albedo,
        insolation=arguments.insolation,
        background=arguments.background,
        time_step=arguments.time_step,
        reference_surface_temperature=arguments.reference_surface_temperature,
    )
    result = run(setup, gradients=not arguments.no_gradients)
    print(json.dumps(result, indent=2))
    if arguments.json:
        arguments.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
