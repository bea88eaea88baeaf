"""Figures of a loaded run: model against observations, and parameter trajectories."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from climgrad.results.run import Run

__all__ = ["plot_fit", "plot_parameters"]


def plot_fit(run: Run, simulation: xr.Dataset | None = None) -> Figure:
    """One panel per observed variable: observations ± 1 sigma, model, optional what-if.

    One-dimensional variables are drawn along their coordinate; others as model against
    observation with the 1:1 line.
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
