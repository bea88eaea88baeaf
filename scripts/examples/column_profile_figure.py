"""Figure and numbers of a finished column run (e.g. ``column_rrtmg_twpice``) against TWP-ICE.

    climgrad-calibrate experiment=column_rrtmg_twpice hydra.run.dir=outputs/column_rrtmg_twpice
    python scripts/examples/column_profile_figure.py outputs/column_rrtmg_twpice \
        [--output docs/figures/column_rrtmg_twpice.png]

Loads the run with :func:`climgrad.load_run` (the calibrated model with the equilibrium it ended
on) and the TWP-ICE mean sounding (``data/single_column/twpice_darwin_soundings_plev.nc``, all
levels up to 10 hPa), prints the targets of issue 16 (RMSE over 925-150 hPa, surface temperature
against the observed sea surface near Darwin, cold-point pressure and temperature) and writes a
two-panel PNG: the model's equilibrium profile on its layers and the sounding (mean ± spread of
the 17 soundings) against log pressure, and the residual on the calibrated levels.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from climgrad import load_run

ROOT = Path(__file__).resolve().parents[2]
SOUNDINGS = ROOT / "data" / "single_column" / "twpice_darwin_soundings_plev.nc"
#: Sea surface temperature near Darwin during TWP-ICE (about 302 K; the value the targets use).
OBSERVED_SURFACE_TEMPERATURE = 302.0


def summary(run: Any) -> dict[str, Any]:
    """Model and observed profiles and the target numbers of a column run."""
    model = run.model
    state = model.warm_state
    if state is None:
        raise SystemExit(f"{run.path}: the run holds no equilibrium (warm state); rerun it.")
    pressure = model.layer_pressure.double().cpu().numpy()
    temperature = state["air_temperature"][0].double().cpu().numpy()
    with xr.open_dataset(SOUNDINGS) as soundings:
        observed = soundings[["air_temperature_mean", "air_temperature_std"]].load()
    window = (observed.plev >= 15000.0) & (observed.plev <= 92500.0)
    levels = observed.plev.values[window.values]
    on_levels = np.interp(np.log(levels), np.log(pressure), temperature)
    residual = on_levels - observed.air_temperature_mean.values[window.values]
    upper = pressure < 4.0e4
    cold = int(np.argmin(np.where(upper, temperature, np.inf)))
    obs_t = observed.air_temperature_mean.values
    obs_upper = observed.plev.values < 4.0e4
    obs_cold = int(np.argmin(np.where(obs_upper, obs_t, np.inf)))
    return {
        "pressure": pressure,
        "temperature": temperature,
        "observed": observed,
        "levels": levels,
        "residual": residual,
        "rmse": float(np.sqrt(np.mean(residual**2))),
        "rmse_below_200hPa": float(np.sqrt(np.mean(residual[levels >= 20000.0] ** 2))),
        "surface_temperature": float(state["surface_temperature"][0]),
        "cold_point": (float(pressure[cold]), float(temperature[cold])),
        "observed_cold_point": (float(observed.plev.values[obs_cold]), float(obs_t[obs_cold])),
        "parameters": {k: float(v) for k, v in model.physical_parameters().items()},
    }


def print_tables(numbers: dict[str, Any]) -> None:
    print("parameter | calibrated")
    for name, value in numbers["parameters"].items():
        print(f"{name} | {value:.6g}")
    print(f"RMSE 925-150 hPa (every TWP-ICE level, 25 hPa apart): {numbers['rmse']:.2f} K")
    print(f"RMSE 925-200 hPa: {numbers['rmse_below_200hPa']:.2f} K")
    ts = numbers["surface_temperature"]
    print(f"surface temperature {ts:.2f} K (observed about {OBSERVED_SURFACE_TEMPERATURE} K)")
    (p, t), (po, to) = numbers["cold_point"], numbers["observed_cold_point"]
    print(f"cold point: model {p / 100:.1f} hPa {t:.1f} K; sounding {po / 100:.0f} hPa {to:.1f} K")
    print("residual (model - observed) by level:")
    for level, value in zip(numbers["levels"], numbers["residual"], strict=True):
        print(f"  {level / 100:6.1f} hPa  {value:+.2f} K")


def figure(numbers: dict[str, Any], output: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    observed = numbers["observed"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 5), sharey=True)
    mean, spread = observed.air_temperature_mean.values, observed.air_temperature_std.values
    hpa = observed.plev.values / 100
    left.fill_betweenx(hpa, mean - spread, mean + spread, color="0.8", label="TWP-ICE ± spread")
    left.plot(mean, hpa, "k.-", label="TWP-ICE mean (17 soundings)")
    left.plot(numbers["temperature"], numbers["pressure"] / 100, "C3-", label="model")
    left.plot([numbers["surface_temperature"]], [1000.0], "C3s", label="model surface")
    left.plot([OBSERVED_SURFACE_TEMPERATURE], [1000.0], "ks", mfc="none", label="observed SST")
    for bound in (150.0, 925.0):
        left.axhline(bound, color="0.5", lw=0.5, ls=":")
    left.set_yscale("log")
    left.set_ylim(1010, 30)
    left.set_yticks([1000, 700, 500, 300, 200, 150, 100, 70, 50])
    left.set_yticklabels(["1000", "700", "500", "300", "200", "150", "100", "70", "50"])
    left.set_xlabel("temperature (K)")
    left.set_ylabel("pressure (hPa)")
    left.legend(fontsize=8, loc="lower left")
    left.set_title(title)
    right.axvline(0.0, color="0.5", lw=0.5)
    right.plot(numbers["residual"], numbers["levels"] / 100, "C3o-")
    right.set_xlabel("model − observed (K)")
    right.set_title(f"RMSE 925-150 hPa, every 25 hPa: {numbers['rmse']:.2f} K")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    print(f"wrote {output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run directory of a column experiment")
    parser.add_argument("--output", type=Path, default=None, help="PNG (default: docs/figures)")
    args = parser.parse_args()
    run = load_run(args.run)
    numbers = summary(run)
    print_tables(numbers)
    name = str(run.config.get("name", args.run.name))
    figure(numbers, args.output or ROOT / "docs" / "figures" / f"{name}.png", name)


if __name__ == "__main__":
    main()
