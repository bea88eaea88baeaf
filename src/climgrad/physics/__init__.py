"""Atmospheric and energy-balance processes, each ``state -> (tendencies, diagnostics)``.

The process families live in their own modules (``radiation``, ``convection``, ``surface``, ...);
the input checks they share live in :mod:`climgrad.validation`.
"""

from __future__ import annotations

from climgrad.physics.process import Process

__all__ = ["Process"]
