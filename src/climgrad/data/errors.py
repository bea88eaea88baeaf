"""The one exception of :mod:`climgrad.data`: a one-line message naming file, variable and fix."""

from __future__ import annotations

from pathlib import Path


class ObservationError(ValueError):
    """Bad observational input: the message is one line naming the file, the variable and the fix.

    Args:
        file: the file (or spec file) at fault, as the user wrote it.
        variable: the variable (or configuration key) at fault; ``None`` when the whole file is.
        problem: what is wrong, in one sentence.
        fix: what to do about it, in one sentence.

    Example:
        >>> str(ObservationError("obs.nc", "tas", "it has no units attribute", "add one"))
        "obs.nc: variable 'tas': it has no units attribute. Fix: add one."
    """

    def __init__(
        self, file: str | Path | None, variable: str | None, problem: str, fix: str
    ) -> None:
        self.file = None if file is None else str(file)
        self.variable = variable
        self.problem = _one_line(problem)
        self.fix = _one_line(fix)
        where = self.file if self.file is not None else "<no file>"
        if variable is not None:
            where += f": variable '{variable}'"
        super().__init__(f"{where}: {self.problem.rstrip('.')}. Fix: {self.fix.rstrip('.')}.")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class NoOverlapError(ObservationError):
    """The requested window and the data do not overlap (skipped per file when joining files)."""
