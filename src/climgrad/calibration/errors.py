"""The one exception a calibration run reports to its user as a single line."""

from __future__ import annotations

__all__ = ["CalibrationError"]


class CalibrationError(ValueError):
    """Bad input to a calibration run (config, data, model): the message is one line with the fix.

    Example:
        >>> str(CalibrationError("model.name 'ebm' is unknown; use one of ['ebm1d']."))
        "model.name 'ebm' is unknown; use one of ['ebm1d']."
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
