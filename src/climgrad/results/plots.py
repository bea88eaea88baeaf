"""Figures of a loaded run: model against observations, parameter trajectories, posterior."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from climgrad.results.run import Run

__all__ = ["has_band", "plot_fit", "plot_parameters", "plot_posterior"]

#: The ``gid`` of the artists that draw a predictive band (tests and styles find them by it).
BAND_GID = "posterior_band"


def has_band(simulation: xr.Dataset) -> bool:
    """Whether ``simulation`` holds predictive bands (``<name>_q05``/``_q95``, from
    ``Run.simulate(samples=N)``)."""
    return any(
        f"{name}_q05" in simulation and f"{name}_q95" in simulation for name in simulation.data_vars
    )


def _band_label(band: xr.Dataset) -> str:
    count = band.attrs.get("posterior_samples", "?")
    return f"model 5-95 % ({count} posterior draws; parameters only)"


def plot_fit(
    run: Run, simulation: xr.Dataset | None = None, *, band: xr.Dataset | None = None
) -> Figure:
    """One panel per observed variable: observations ± 1 sigma, model, optional what-if.

    One-dimensional variables are drawn along their coordinate; others as model against
    observation with the 1:1 line.

    Args:
        run: The run.
        simulation: A what-if (``Run.simulate(...)``), drawn as a dashed line.
        band: A ``Run.simulate(samples=N)`` result: its 5-95 % band (the model's spread over
            posterior draws: parameter uncertainty only, no observation noise) is shaded
            behind the model line (error bars for variables drawn against the observations).
    """
    from matplotlib.figure import Figure

    calibrated = run.compare()
    names = list(run.observation_set)
    figure = Figure(figsize=(6.0, 2.8 * len(names)), layout="constrained")
    axes = figure.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names):
        observed = run.observation_set[name]
        obs = calibrated[f"{name}_observation"]
        error = calibrated[f"{name}_error"]
        model = calibrated[f"{name}_model"]
        label = f"{name} [{observed.units}]"
        if obs.ndim == 1:
            dim = obs.dims[0]
            x = obs[dim].values if dim in obs.coords else np.arange(obs.size)
            ax.fill_between(x, obs - error, obs + error, alpha=0.3, color="0.6", label="obs ± 1σ")
            if band is not None and f"{name}_q05" in band:
                ax.fill_between(
                    x,
                    np.asarray(band[f"{name}_q05"].values),
                    np.asarray(band[f"{name}_q95"].values),
                    alpha=0.25,
                    color="C3",
                    linewidth=0,
                    label=_band_label(band),
                    gid=BAND_GID,
                )
            ax.plot(x, obs.values, "k.", markersize=3, label="observed")
            ax.plot(
                x,
                model.values,
                "C3-",
                label=f"model (rmse {calibrated.attrs[f'rmse_{name}']:.3g})",
            )
            if simulation is not None:
                ax.plot(
                    x,
                    np.asarray(simulation[name].values),
                    "C0--",
                    label=f"what-if ({simulation.attrs.get('parameter_overrides', '')})",
                )
            ax.set_xlabel(str(dim))
            ax.set_ylabel(label)
        else:
            flat_obs = np.ravel(obs.values)
            if band is not None and f"{name}_q05" in band:
                ax.vlines(
                    flat_obs,
                    np.ravel(band[f"{name}_q05"].values),
                    np.ravel(band[f"{name}_q95"].values),
                    colors="C3",
                    alpha=0.35,
                    label=_band_label(band),
                    gid=BAND_GID,
                )
            ax.plot(flat_obs, np.ravel(model.values), "C3.", label="model")
            if simulation is not None:
                ax.plot(flat_obs, np.ravel(simulation[name].values), "C0.", label="what-if")
            finite = flat_obs[np.isfinite(flat_obs)]
            if finite.size:
                ax.plot([finite.min(), finite.max()], [finite.min(), finite.max()], "k-", lw=0.8)
            ax.set_xlabel(f"observed {label}")
            ax.set_ylabel(f"model {label}")
        ax.legend(loc="best", fontsize="small")
    figure.suptitle(f"{run.config.name}: {run.checkpoint.name} at step {run.step}")
    return figure


def plot_parameters(run: Run) -> Figure:
    """The loss and each learnt parameter against optimisation step (from :attr:`history`)."""
    from matplotlib.figure import Figure

    history = run.history
    learnt = [
        str(name)
        for name, variable in run.params.data_vars.items()
        if variable.attrs.get("learnable", 0)
    ]
    panels = ["loss/total", *[f"param/{name}" for name in learnt]]
    figure = Figure(figsize=(6.0, 1.9 * len(panels)), layout="constrained")
    axes = figure.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
    for ax, tag in zip(axes, panels):
        rows = history[(history.tag == tag) | history.tag.str.startswith(tag + "/")]
        for element, group in rows.groupby("tag", sort=True):
            ax.plot(group.step, group.value, "-", lw=1.2, label=str(element))
        if tag == "loss/total":
            ax.set_yscale("log")
            ax.set_ylabel("loss")
        else:
            name = tag.split("/", 1)[1]
            ax.set_ylabel(f"{name} [{run.params[name].attrs.get('units', '')}]")
        if rows.empty:
            ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center")
        ax.axvline(run.step, color="0.5", lw=0.8, ls=":")
    axes[-1].set_xlabel("step")
    figure.suptitle(f"{run.config.name}: parameter trajectories")
    return figure


def _interval_title(name: str, values: np.ndarray, units: str) -> str:
    low, median, high = np.quantile(values, [0.05, 0.5, 0.95])
    unit = f" {units}" if units and units != "1" else ""
    return f"{name} = {median:.4g}{unit}\n5-95 %: [{low:.4g}, {high:.4g}]"


def plot_posterior(
    run: Run,
    names: Sequence[str],
    *,
    point: Mapping[str, float],
    truth: Mapping[str, float] | None = None,
) -> Figure:
    """Corner plot of the posterior draws of scalar parameters (physical units).

    The diagonal holds each parameter's histogram (5-95 % interval dashed, titled with the
    median and interval); below it, each pair's draws (points, or a 2-D histogram above 2000
    draws); the upper triangle is left empty (``len(names) * (len(names) + 1) / 2`` axes in
    all). The point estimate (``point``: the run's calibrated values) is drawn in red, the
    truth of a twin experiment (``truth``, where it names the parameter) in green.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    posterior = run.posterior
    truth = dict(truth or {})
    draws = {
        name: np.asarray(posterior[name].values, dtype=np.float64).reshape(-1) for name in names
    }
    count = len(names)
    size = max(2.6, min(2.2 * count, 12.0))
    figure = Figure(figsize=(size, size), layout="constrained")
    units = {name: str(posterior[name].attrs.get("units", "")) for name in names}
    axes: dict[tuple[int, int], Axes] = {}
    for row in range(count):
        for column in range(row + 1):
            ax = figure.add_subplot(
                count,
                count,
                row * count + column + 1,
                sharex=axes.get((column, column)),
                sharey=axes.get((row, 0)) if 0 < column < row else None,
            )
            axes[(row, column)] = ax
            x_name = names[column]
            x = draws[x_name][np.isfinite(draws[x_name])]
            if row == column:
                ax.hist(x, bins=_bins(x.size), color="C0", alpha=0.7, density=True)
                for level in np.quantile(x, [0.05, 0.95]):
                    ax.axvline(level, color="C0", ls="--", lw=0.8)
                ax.set_title(_interval_title(x_name, x, units[x_name]), fontsize="small")
                ax.set_yticks([])
            else:
                y_name = names[row]
                both = np.isfinite(draws[x_name]) & np.isfinite(draws[y_name])
                x, y = draws[x_name][both], draws[y_name][both]
                if x.size > 2000:
                    ax.hist2d(x, y, bins=40, cmap="Blues")
                else:
                    ax.plot(x, y, ".", color="C0", alpha=0.35, markersize=3)
                ax.plot(point[x_name], point[y_name], "s", color="C3", markersize=5)
                if x_name in truth and y_name in truth:
                    ax.plot(truth[x_name], truth[y_name], "*", color="C2", markersize=9)
                if y_name in truth:
                    ax.axhline(truth[y_name], color="C2", lw=1.0)
                ax.axhline(point[y_name], color="C3", lw=0.8, ls=":")
            if x_name in truth:
                ax.axvline(truth[x_name], color="C2", lw=1.0)
            ax.axvline(point[x_name], color="C3", lw=0.8, ls=":" if row != column else "-")
            if row == count - 1:
                unit = f" [{units[x_name]}]" if units[x_name] not in ("", "1") else ""
                ax.set_xlabel(f"{x_name}{unit}")
            else:
                ax.tick_params(labelbottom=False)
            if column == 0 and row > 0:
                unit = f" [{units[names[row]]}]" if units[names[row]] not in ("", "1") else ""
                ax.set_ylabel(f"{names[row]}{unit}")
            elif row != column:
                ax.tick_params(labelleft=False)
    handles = [
        Line2D([], [], color="C0", marker=".", ls="", label="posterior draws"),
        Line2D([], [], color="C3", marker="s", ls=":", label="point estimate"),
    ]
    if any(name in truth for name in names):
        handles.append(Line2D([], [], color="C2", marker="*", ls="-", label="truth (twin)"))
    figure.legend(handles=handles, loc="outside upper right", fontsize="small")
    kind = posterior.attrs.get("posterior_kind", "")
    figure.suptitle(
        f"{run.config.name}: posterior ({run.method}{', ' + str(kind) if kind else ''}, "
        f"{posterior.sizes['chain'] * posterior.sizes['draw']} draws)"
    )
    return figure


def _bins(count: int) -> int:
    return int(np.clip(np.sqrt(count), 10, 50))
