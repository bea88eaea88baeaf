"""Atmospheric and energy-balance processes, each ``state -> (tendencies, diagnostics)``."""

from __future__ import annotations

from climgrad.physics.process import Process

__all__ = ["Process"]
