"""TensorBoard logging of a calibration run into ``<run>/tb``.

Tags:

===========================  ===============================================================
``loss/total``               the loss; ``loss/prior`` and ``loss/<variable>`` its terms
``rmse/<variable>``          root-mean-square error in the variable's units
``param/<name>``             every parameter in physical units (fields: a histogram, and
                             per-element scalars ``param/<name>/<index>``)
``grad_norm/<name>``         norm of dL/d(parameter) in physical units, learnable ones only
``grad_norm/total``          norm of the gradient of the unconstrained tensors (what is clipped)
``optimizer/lr``             learning rate
``nonfinite/skipped``        number of skipped non-finite steps so far
``fit/<variable>``           figure: model against observations with the error shaded
``final/...``                final metrics, also in the HPARAMS tab with the overrides
===========================  ===============================================================

Every scalar tag carries its units in its TensorBoard description (shown beside the chart), from
the parameter declarations and the observations' units; the HPARAMS tab names the experiment and
the model, so runs are told apart by more than their directory names.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from climgrad.data import ObsSet

__all__ = ["TensorBoardLogger", "flatten_overrides"]

log = logging.getLogger(__name__)

#: Fields with at most this many elements also get one scalar per element.
MAX_ELEMENT_SCALARS = 64


def _parse_value(text: str) -> float | int | bool | str:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def flatten_overrides(overrides: list[str]) -> dict[str, float | int | bool | str]:
    """``["optimizer.lr=0.01", "experiment=ebm_ncep"]`` -> ``{"optimizer.lr": 0.01, ...}``."""
    result: dict[str, float | int | bool | str] = {}
    for override in overrides:
        if "=" not in override:
            continue
        key, value = override.split("=", 1)
        key = key.lstrip("+~")
        if key.startswith("hydra."):
            continue
        result[key] = _parse_value(value)
    return result


class TensorBoardLogger:
    """Writes scalars, histograms, figures and hparams of one run.

    Args:
        directory: Event directory (``<run>/tb``).
        purge_step: On resume, the first step to be rewritten (later events are dropped).
        histograms: Histograms of field parameters.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        purge_step: int | None = None,
        histograms: bool = True,
        descriptions: Mapping[str, str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.writer = SummaryWriter(str(self.directory), purge_step=purge_step)
        self.histograms = histograms
        #: Description (units) by tag, or by tag prefix ending in "/" for families of tags.
        self.descriptions = dict(descriptions or {})
        self._described: set[str] = set()
        self._warned_figures = False

    def _description(self, tag: str) -> str | None:
        if tag in self.descriptions:
            return self.descriptions[tag]
        prefixes = [p for p in self.descriptions if p.endswith("/") and tag.startswith(p)]
        return self.descriptions[max(prefixes, key=len)] if prefixes else None

    def scalar(self, tag: str, value: float, step: int) -> None:
        """One scalar; its first event in this file carries the tag's description (units)."""
        description = self._description(tag)
        if description is None or tag in self._described:
            self.writer.add_scalar(tag, value, step)
            return
        metadata = SummaryMetadata(
            summary_description=description,
            plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"),
        )
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value, metadata=metadata)])
        self.writer._get_file_writer().add_summary(summary, step)
        self._described.add(tag)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Each ``tag -> value`` as a scalar at ``step``."""
        for tag, value in values.items():
            self.scalar(tag, float(value), step)

    def parameters(self, values: Mapping[str, Tensor], step: int) -> None:
        """Physical parameter values: ``param/<name>`` (and histograms of fields)."""
        for name, value in values.items():
            flat = value.detach().double().cpu().reshape(-1)
            if flat.numel() == 1:
                self.scalar(f"param/{name}", float(flat[0]), step)
                continue
            if self.histograms:
                self.writer.add_histogram(f"param/{name}", flat, step)
            if flat.numel() <= MAX_ELEMENT_SCALARS:
                for index, element in enumerate(flat.tolist()):
                    self.scalar(f"param/{name}/{index}", element, step)

    def figures(self, observations: ObsSet, predictions: Mapping[str, Tensor], step: int) -> None:
        """``fit/<variable>``: model against observations, error shaded (needs matplotlib)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            if not self._warned_figures:
                log.info("matplotlib is not installed: no model-vs-observation figures.")
                self._warned_figures = True
            return
        for name, observed in observations.items():
            if len(observed.dims) != 1:
                continue  # profiles and maps need their own layout; 1-D covers EBMs and series
            dim = observed.dims[0]
            axis = observed.coords.get(dim)
            mask = observed.mask.cpu().numpy()
            x = (axis.cpu().numpy() if axis is not None else range(len(mask)))[mask]
            values = observed.values.detach().double().cpu().numpy()[mask]
            error = observed.error.detach().double().cpu().numpy()[mask]
            model = predictions[name].detach().double().cpu().numpy()[mask]
            figure, ax = plt.subplots(figsize=(6, 3.5))
            ax.fill_between(x, values - error, values + error, alpha=0.3, label="obs ± 1σ")
            ax.plot(x, values, "k.", markersize=3, label="observed")
            ax.plot(x, model, "C3-", label="model")
            ax.set_xlabel(dim)
            ax.set_ylabel(f"{name} [{observed.units}]")
            ax.legend(loc="best", fontsize="small")
            figure.tight_layout()
            self.writer.add_figure(f"fit/{name}", figure, step, close=True)

    def hparams(
        self, parameters: Mapping[str, Any], metrics: Mapping[str, float], step: int
    ) -> None:
        """Hyperparameters and final metrics in this run (not a sub-run), for the HPARAMS tab.

        ``SummaryWriter.add_hparams`` writes into a new sub-directory, which splits a run in two;
        writing the summaries through the run's own file writer keeps one run per job.
        """
        clean = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in parameters.items()
        }
        experiment, start, end = hparams(clean, dict(metrics))
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, start, end):
            file_writer.add_summary(summary)
        self.scalars(metrics, step)

    def flush(self) -> None:
        """Write pending events to disk."""
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
