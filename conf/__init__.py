"""Hydra configs of climgrad-calibrate (a package so that Hydra finds them when installed)."""
