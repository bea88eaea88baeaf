"""climgrad: differentiable climate-physics parameterizations, calibrated with gradients.

The notebook entry points are loaded on first use, so ``import climgrad`` stays cheap::

    import climgrad
    run = climgrad.load_run("outputs/2026-11-25/23-38-00")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_run", "load_runs"]

if TYPE_CHECKING:
    from climgrad.results import load_run, load_runs


def __getattr__(name: str) -> Any:
    # Lazy: results pulls in the calibration app, Hydra and every model family.
    if name in ("load_run", "load_runs"):
        from climgrad import results

        return getattr(results, name)
    raise AttributeError(f"module 'climgrad' has no attribute {name!r}")
