"""Calibrated results in notebooks: :func:`load_run` for one run, :func:`load_runs` for a sweep.

``run.py`` holds the run loader (:class:`Run`), ``plots.py`` its figures and ``sweeps.py`` the
sweep loader; ``common.py`` what they share.
"""

from __future__ import annotations

from climgrad.results.common import RunError
from climgrad.results.run import Run, load_run
from climgrad.results.sweeps import load_runs

__all__ = ["Run", "RunError", "load_run", "load_runs"]
