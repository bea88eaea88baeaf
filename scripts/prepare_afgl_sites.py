"""Write the AFGL temperature profiles as observations of the multi-site column.

    python scripts/prepare_afgl_sites.py [--data DIR]

Reads the six AFGL reference atmospheres (Anderson et al. 1986, AFGL-TR-86-0110) shipped in
``data/single_column/afgl_standard_atmospheres/*.dat`` with :func:`climgrad.data.afgl.read_afgl`,
interpolates each temperature profile linearly in ln(p) onto the standard pressure levels of
``data/specs/single_column.yaml`` (1000 to 50 hPa) and writes
``data/single_column/afgl_sites_plev.nc``: one variable ``air_temperature_<site>`` (K) on
``plev`` (Pa) per atmosphere. The data config ``conf/data/afgl_sites.yaml`` reads them as inline
observations (``model=column_sites``, ``experiment=column_sites_afgl``).

Deterministic: NetCDF-3 (64-bit offset), no timestamps, so rerunning gives identical bytes.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from climgrad.data.afgl import read_afgl

ROOT = Path(__file__).resolve().parents[1]
#: Atmosphere -> (nominal latitude in degrees north, season) of Anderson et al. (1986).
SITES = {
    "tropical": (15.0, "annual"),
    "midlatitude_summer": (45.0, "July"),
    "midlatitude_winter": (45.0, "January"),
    "subarctic_summer": (60.0, "July"),
    "subarctic_winter": (60.0, "January"),
    "us_standard": (45.0, "annual (U.S. Standard Atmosphere 1976)"),
}
#: The standard levels of data/specs/single_column.yaml, hPa.
LEVELS_HPA = [1000, 925, 850, 700, 600, 500, 400, 300, 250, 200, 150, 100, 70, 50]


def build(data: Path) -> xr.Dataset:
    """The dataset: ``air_temperature_<site>(plev)`` in K for the six atmospheres."""
    plev = np.asarray(LEVELS_HPA, dtype=np.float64) * 100.0
    variables = {}
    for site, (latitude, season) in SITES.items():
        atmosphere = read_afgl(data / "single_column" / "afgl_standard_atmospheres" / f"{site}.dat")
        profile = atmosphere.on_pressure(torch.as_tensor(plev))["temperature"].numpy()
        variables[f"air_temperature_{site}"] = xr.DataArray(
            profile,
            dims=("plev",),
            attrs={
                "units": "K",
                "standard_name": "air_temperature",
                "long_name": f"AFGL {site.replace('_', ' ')} temperature",
                "latitude": latitude,
                "season": season,
                "source_file": f"afgl_standard_atmospheres/{site}.dat",
            },
        )
    coords = {
        "plev": (
            "plev",
            plev,
            {
                "standard_name": "air_pressure",
                "long_name": "pressure",
                "units": "Pa",
                "axis": "Z",
                "positive": "down",
            },
        )
    }
    return xr.Dataset(
        variables,
        coords=coords,
        attrs={
            "Conventions": "CF-1.10",
            "title": "AFGL reference atmospheres: temperature on standard pressure levels",
            "institution": "converted by the climgrad project",
            "source": "data/single_column/afgl_standard_atmospheres/*.dat",
            "history": "created by scripts/prepare_afgl_sites.py (climgrad): linear in ln(p)",
            "references": (
                "Anderson, G. P., Clough, S. A., Kneizys, F. X., Chetwynd, J. H. and Shettle, "
                "E. P. (1986), AFGL atmospheric constituent profiles (0-120 km), AFGL-TR-86-0110"
            ),
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="the data folder")
    args = parser.parse_args(argv)
    path = args.data / "single_column" / "afgl_sites_plev.nc"
    dataset = build(args.data)
    encoding = {name: {"_FillValue": None} for name in [*dataset.data_vars, *dataset.coords]}
    tmp = path.with_suffix(".nc.part")
    dataset.to_netcdf(tmp, format="NETCDF3_64BIT", encoding=encoding)
    tmp.replace(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"wrote {path} ({path.stat().st_size} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
