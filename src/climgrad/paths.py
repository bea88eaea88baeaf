"""Where climgrad finds its data and writes its runs: the project root, resolved once.

The Hydra config group ``paths`` (``conf/paths/default.yaml``, in the manner of
lightning-hydra-template) names three folders::

    paths.root_dir    ${climgrad_root:}           the project root (below)
    paths.data_dir    ${paths.root_dir}/data      observations, forcing files, specs
    paths.output_dir  ${paths.root_dir}/outputs   run directories (outputs/DATE/TIME)

The project root is, in this order: the environment variable ``CLIMGRAD_ROOT``; the climgrad
checkout this package runs from (an editable install: the folder holding ``pyproject.toml``,
``conf/`` and ``data/``); else the working directory at the first call. It is computed once per
process, so a run started from any directory reads the shipped data and writes under the same
``outputs/``. Every file a config names goes through these paths; nothing else looks relative to
the working directory or to a source file.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

__all__ = ["ROOT_ENVIRONMENT_VARIABLE", "checkout_root", "project_root", "resolve_path"]

#: Environment variable that sets ``paths.root_dir``.
ROOT_ENVIRONMENT_VARIABLE = "CLIMGRAD_ROOT"


def _is_checkout(folder: Path) -> bool:
    pyproject = folder / "pyproject.toml"
    if not (pyproject.is_file() and (folder / "conf" / "calibrate.yaml").is_file()):
        return False
    try:
        text = pyproject.read_text()
    except OSError:
        return False
    # tomllib is Python 3.11+; the project's name line is all that is needed.
    return re.search(r'^name\s*=\s*"climgrad"\s*$', text, flags=re.MULTILINE) is not None


@functools.lru_cache(maxsize=1)
def checkout_root() -> Path | None:
    """The climgrad checkout this package is imported from, or ``None`` (an installed wheel).

    Found by walking up from the package to the first folder whose ``pyproject.toml`` names the
    project ``climgrad`` and that holds ``conf/calibrate.yaml``.
    """
    package = Path(__file__).resolve().parent
    for folder in package.parents:
        if _is_checkout(folder):
            return folder
    return None


@functools.lru_cache(maxsize=1)
def project_root() -> Path:
    """``$CLIMGRAD_ROOT``, else :func:`checkout_root`, else the working directory (cached)."""
    configured = os.environ.get(ROOT_ENVIRONMENT_VARIABLE, "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    checkout = checkout_root()
    return checkout if checkout is not None else Path.cwd().resolve()


def resolve_path(path: str | Path, base: str | Path) -> Path:
    """``path`` with ``~`` expanded; a relative one is taken relative to ``base``."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else Path(base) / candidate
