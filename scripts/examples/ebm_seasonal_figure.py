"""Figure and numbers of a finished ``ebm_ncep_seasonal`` run: the seasonal EBM against NCEP R1.

    climgrad-calibrate experiment=ebm_ncep_seasonal hydra.run.dir=outputs/ebm_ncep_seasonal
    python scripts/examples/ebm_seasonal_figure.py outputs/ebm_ncep_seasonal \
        [--output docs/figures/ebm_ncep_seasonal.png]

Loads the run with :func:`climgrad.load_run` (model at its calibrated parameters, observations on
its bands) and writes a three-panel PNG: surface temperature by month and latitude (Hovmöller) of
the model and of NCEP side by side, and the seasonal amplitude (warmest minus coldest monthly
mean) by latitude. It prints the tables of ``docs/calibration.md``: parameters, RMSE by month,
amplitude at 60 S, 30 S, the equator, 30 N and 60 N, the equator-to-60 N difference in January
and July, and the heat capacities as depths of water, C / (ρ_w c_w).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from climgrad import load_run
from climgrad.calibration.adapters.ebm1d_seasonal import WATER_HEAT_CAPACITY_PER_METRE

ROOT = Path(__file__).resolve().parents[2]
FIGURE = ROOT / "docs" / "figures" / "ebm_ncep_seasonal.png"
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
LATITUDES = (-60.0, -30.0, 0.0, 30.0, 60.0)


def at_latitude(field: np.ndarray[Any, Any], lat: np.ndarray[Any, Any], where: float) -> Any:
    """``field[..., lat]`` interpolated linearly to ``where`` degrees north."""
    return np.apply_along_axis(lambda column: np.interp(where, lat, column), -1, field)


def summary(run: Any) -> dict[str, Any]:
    """Model and NCEP surface temperature ``(month, lat)`` in degC and the derived numbers."""
    comparison = run.compare()
    model = comparison["surface_temperature_model"].values - 273.15
    observed = comparison["surface_temperature_observation"].values - 273.15
    lat = comparison["lat"].values
    weights = run.observations["surface_temperature_weights"].values
    bias = model - observed
    rmse_by_month = np.sqrt((weights * bias**2).sum(axis=1) / weights.sum(axis=1))
    parameters = {k: float(v) for k, v in run.model.physical_parameters().items()}
    return {
        "lat": lat,
        "model": model,
        "observed": observed,
        "rmse_by_month": rmse_by_month,
        "rmse": float(comparison.attrs["rmse_surface_temperature"]),
        "rmse_olr": float(comparison.attrs.get("rmse_outgoing_longwave", np.nan)),
        "amplitude_model": model.max(axis=0) - model.min(axis=0),
        "amplitude_observed": observed.max(axis=0) - observed.min(axis=0),
        "parameters": parameters,
    }


def print_tables(numbers: dict[str, Any]) -> None:
    """The Markdown tables of docs/calibration.md."""
    p = numbers["parameters"]
    print("| parameter | calibrated | units |\n|---|---|---|")
    for name, units in (
        ("A", "W m-2"),
        ("B", "W m-2 K-1"),
        ("D", "W m-2 K-1"),
        ("a0", "1"),
        ("a2", "1"),
        ("land_heat_capacity", "J m-2 K-1"),
        ("ocean_heat_capacity", "J m-2 K-1"),
    ):
        print(f"| `{name}` | {p[name]:.4g} | {units} |")
    print("\nRMSE of monthly zonal-mean Ts (K), by month:\n")
    print("| " + " | ".join(MONTHS) + " | all |")
    print("|" + "---|" * 13)
    print(
        "| "
        + " | ".join(f"{r:.2f}" for r in numbers["rmse_by_month"])
        + f" | {numbers['rmse']:.2f} |"
    )
    lat = numbers["lat"]
    print("\n| latitude | amplitude model (K) | amplitude NCEP (K) |\n|---|---|---|")
    for where in LATITUDES:
        model = float(at_latitude(numbers["amplitude_model"], lat, where))
        observed = float(at_latitude(numbers["amplitude_observed"], lat, where))
        label = "EQ" if where == 0 else f"{abs(where):.0f}{'N' if where > 0 else 'S'}"
        print(f"| {label} | {model:.1f} | {observed:.1f} |")
    print("\n| Ts(EQ) − Ts(60N) | model (K) | NCEP (K) |\n|---|---|---|")
    for month, name in ((0, "January"), (6, "July")):
        gradients = [
            float(at_latitude(field[month], lat, 0.0) - at_latitude(field[month], lat, 60.0))
            for field in (numbers["model"], numbers["observed"])
        ]
        print(f"| {name} | {gradients[0]:.1f} | {gradients[1]:.1f} |")
    print("\n| heat capacity | J m-2 K-1 | metres of water |\n|---|---|---|")
    for name in ("land_heat_capacity", "ocean_heat_capacity"):
        depth = p[name] / WATER_HEAT_CAPACITY_PER_METRE
        print(f"| `{name}` | {p[name]:.3g} | {depth:.2f} |")


def figure(numbers: dict[str, Any], path: Path, title: str) -> None:
    """Hovmöller of model and NCEP Ts, and the amplitude by latitude; a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat, months = numbers["lat"], np.arange(1, 13)
    levels = np.arange(-60.0, 36.0, 5.0)
    fig, axes = plt.subplots(1, 3, figsize=(12.0, 4.0), layout="constrained")
    for ax, field, name in (
        (axes[0], numbers["model"], "model"),
        (axes[1], numbers["observed"], "NCEP R1 1991-2020"),
    ):
        filled = ax.contourf(months, lat, field.T, levels=levels, cmap="RdBu_r", extend="both")
        ax.contour(months, lat, field.T, levels=[0.0], colors="k", linewidths=0.8)
        ax.set_title(f"Ts (°C), {name}")
        ax.set_xticks(months[::2], [m[0] for m in MONTHS][::2])
        ax.set_xlabel("month")
        ax.set_ylabel("latitude (°N)")
        ax.set_yticks(range(-90, 91, 30))
    fig.colorbar(filled, ax=axes[:2], shrink=0.9, label="°C")
    ax = axes[2]
    ax.plot(numbers["amplitude_observed"], lat, "k.-", label="NCEP")
    ax.plot(numbers["amplitude_model"], lat, "C3-", label="model")
    ax.set_xlabel("seasonal amplitude of Ts (K)")
    ax.set_ylabel("latitude (°N)")
    ax.set_yticks(range(-90, 91, 30))
    ax.set_title(f"RMSE {numbers['rmse']:.2f} K (all months)")
    ax.legend(loc="lower right", fontsize="small")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="directory of a finished ebm_ncep_seasonal run")
    parser.add_argument("--output", type=Path, default=FIGURE, help="PNG to write")
    arguments = parser.parse_args(argv)
    run = load_run(arguments.run)
    numbers = summary(run)
    print_tables(numbers)
    figure(numbers, arguments.output, f"{run.config.name}: seasonal EBM1D against NCEP")
    print(f"\nwrote {arguments.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
