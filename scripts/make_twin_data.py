"""Write synthetic observations of a model with known parameters (plus noise) as CF NetCDF.

    python scripts/make_twin_data.py experiment=twin_ebm1d data.noise=true --output twin.nc
    python scripts/make_twin_data.py experiment=twin_two_layer data.truth.feedback=1.3 \\
        --output data/twin/two_layer.nc

The arguments are the calibration app's Hydra overrides: the experiment's ``model`` config says
which model and grid, ``data.truth`` the known parameter values, ``data.observations`` which model
outputs are observed (with units and 1-sigma error), ``data.noise`` / ``data.noise_seed`` whether
Gaussian noise of that error is added. The file holds one variable per observation with its
``units``, the error as ``<name>_error``, the coordinates of the model grid, and global attributes
(Conventions, source with the truth, history with the command line), so
``climgrad.data.load_observations`` and ``python -m climgrad.data show`` read it back. It is written
to a temporary file and moved into place, so a failed run leaves an earlier file untouched.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

import climgrad
from climgrad.calibration import build_experiment, register_configs
from climgrad.calibration.config import CONFIG_MODULE
from climgrad.calibration.experiment import as_config


def make_twin_dataset(overrides: list[str]) -> tuple[object, str]:
    """The synthetic observations of the composed config, as an xarray Dataset."""
    register_configs()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        composed = compose(config_name="calibrate", overrides=overrides)
    config = as_config(composed)
    if config.data.kind != "twin":
        raise SystemExit(
            f"make_twin_data: data.kind is {config.data.kind!r}; choose a twin data config, "
            "e.g. experiment=twin_ebm1d or data=twin_two_layer."
        )
    torch.manual_seed(config.seed)
    problem = build_experiment(config, device=torch.device("cpu"))
    dataset = problem.observations.to_xarray()
    truth = ", ".join(f"{k}={v}" for k, v in dict(config.data.truth).items())
    dataset.attrs.update(
        Conventions="CF-1.8",
        title=f"Synthetic observations of {config.model.name} (twin experiment)",
        source=f"climgrad {climgrad.__version__}: {config.model.name} at {truth}",
        history="python scripts/make_twin_data.py " + " ".join(overrides),
        noise=(
            f"Gaussian, 1-sigma = each variable's error, seed {config.data.noise_seed}"
            if config.data.noise
            else "none"
        ),
    )
    return dataset, config.model.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=twin_ebm1d")
    parser.add_argument("--output", required=True, type=Path, help="NetCDF file to write")
    args = parser.parse_args(argv)
    dataset, _ = make_twin_dataset(list(args.overrides))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".nc", dir=args.output.parent)
    os.close(handle)
    try:
        dataset.to_netcdf(temporary)  # type: ignore[attr-defined]
        os.replace(temporary, args.output)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
