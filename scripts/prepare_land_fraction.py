"""Derive the zonal land fraction shipped in ``data/ebm_1d/land_fraction_zonal.nc``.

    pip install global-land-mask==1.0.0      # developers only; not a climgrad dependency
    python scripts/prepare_land_fraction.py [--output PATH] [--cell 0.5]

The land fraction of a latitude circle is the fraction of its points that are land in the GLOBE
1-km land mask (GLOBE Task Team 1999, NOAA NGDC), as packaged by ``global-land-mask`` 1.0.0
(T. Karin, https://github.com/toddkarin/global-land-mask, MIT licence): a boolean array of
21600 x 43200 points every 1/120 degree, ``True`` over ocean. Each row of the mask gives the land
fraction of one latitude (every longitude weighs the same along a circle); rows are averaged into
cells of ``--cell`` degrees (0.5 by default, 360 cells), equal weights (cos(latitude) varies by
less than 1 % of itself within a 0.5-degree cell outside the last cell at each pole). The cells
carry CF ``lat_bnds``, so :mod:`climgrad.data` averages them conservatively onto any model bands
(the seasonal ``EBM1D`` adapter does, at build time; the runtime reads only this NetCDF file).

Sanity value: the area-weighted global land fraction is 0.289 (Earth's land covers 29 % of the
surface, 148.9e6 of 510.1e6 km2). Antarctica's grounded ice sheet is land (every cell south of
86 S is all land); at 80 S the fraction is 0.76, so the large floating ice shelves (Ross,
Filchner-Ronne) appear as ocean.

The output is deterministic (NetCDF-3, no timestamps): rerunning gives identical bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Final

import numpy as np
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "data" / "ebm_1d" / "land_fraction_zonal.nc"
NC_FORMAT: Final = "NETCDF3_64BIT"
#: Rows of the mask reduced at a time (bounds the temporary float copy to ~60 MB).
CHUNK_ROWS: Final = 600


def zonal_land_fraction(cell_degrees: float) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Land fraction per latitude cell, from south to north, and the cell edges (degrees north).

    Args:
        cell_degrees: Cell width in degrees; 180 must be a whole multiple of the mask's row
            spacing times the cells' row count (any divisor of 180 that is a multiple of 1/120).

    Returns:
        ``(fraction (cell,), edges (cell + 1,))``, fraction dimensionless in [0, 1].
    """
    from global_land_mask import globe

    mask = globe._mask  # (21600, 43200) bool, True over ocean, rows from 90 N southwards
    latitude = np.asarray(globe._lat, dtype=np.float64)
    rows = mask.shape[0]
    spacing = 180.0 / rows
    per_cell = round(cell_degrees / spacing)
    if per_cell < 1 or rows % per_cell or abs(per_cell * spacing - cell_degrees) > 1e-9:
        raise SystemExit(
            f"--cell {cell_degrees} is not a whole number of the mask's {spacing:.6g}-degree rows "
            "dividing 180 degrees; use e.g. 0.5, 1 or 2."
        )
    ocean_by_row = np.empty(rows, dtype=np.float64)
    for start in range(0, rows, CHUNK_ROWS):
        ocean_by_row[start : start + CHUNK_ROWS] = mask[start : start + CHUNK_ROWS].mean(axis=1)
    land_by_row = 1.0 - ocean_by_row
    # Row k lies at 90 - k/120 degrees: rows k*per_cell .. (k+1)*per_cell-1 fill the k-th cell
    # from the north (the row at the cell's north edge belongs to it; 1/120 degree of offset).
    fraction_north_first = land_by_row.reshape(-1, per_cell).mean(axis=1)
    assert abs(latitude[0] - 90.0) < 1e-9, "the mask's first row must be 90 N"
    cells = rows // per_cell
    edges = np.linspace(-90.0, 90.0, cells + 1)
    return fraction_north_first[::-1].copy(), edges


def global_mean(fraction: np.ndarray[Any, Any], edges: np.ndarray[Any, Any]) -> float:
    """Area-weighted mean over the sphere (cell areas ∝ difference of sin(latitude))."""
    area = np.diff(np.sin(np.deg2rad(edges)))
    return float((fraction * area).sum() / area.sum())


def dataset(fraction: np.ndarray[Any, Any], edges: np.ndarray[Any, Any]) -> xr.Dataset:
    """The CF dataset: ``land_area_fraction (lat)``, ``lat`` with ``lat_bnds``."""
    centres = 0.5 * (edges[:-1] + edges[1:])
    bounds = np.stack([edges[:-1], edges[1:]], axis=-1)
    lat_attrs = {
        "units": "degrees_north",
        "standard_name": "latitude",
        "long_name": "latitude",
        "axis": "Y",
        "bounds": "lat_bnds",
    }
    return xr.Dataset(
        {
            "land_area_fraction": (
                ("lat",),
                fraction.astype(np.float64),
                {
                    "units": "1",
                    "standard_name": "land_area_fraction",
                    "long_name": "fraction of the latitude cell's area that is land",
                    "valid_min": 0.0,
                    "valid_max": 1.0,
                    "cell_methods": "lon: mean lat: mean (equal weights of 1/120-degree rows)",
                },
            ),
            "lat_bnds": (("lat", "nv"), bounds),
        },
        coords={"lat": ("lat", centres, lat_attrs)},
        attrs={
            "Conventions": "CF-1.8",
            "title": "Zonal land fraction from the GLOBE 1-km land mask",
            "source": (
                "GLOBE 1-km land mask (GLOBE Task Team 1999, NOAA NGDC), via the Python package "
                "global-land-mask 1.0.0 (T. Karin, MIT licence)"
            ),
            "history": "created by scripts/prepare_land_fraction.py (climgrad)",
            "references": (
                "GLOBE Task Team et al. (1999), The Global Land One-kilometer Base Elevation "
                "(GLOBE) Digital Elevation Model, Version 1.0, NOAA NGDC; "
                "https://github.com/toddkarin/global-land-mask"
            ),
            "licence": "MIT (global-land-mask); GLOBE data are public domain (NOAA)",
            "comment": (
                f"area-weighted global land fraction {global_mean(fraction, edges):.4f}; "
                "Antarctica (ice sheet) is land"
            ),
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT, help="NetCDF file to write")
    parser.add_argument("--cell", type=float, default=0.5, help="cell width in degrees")
    arguments = parser.parse_args(argv)
    fraction, edges = zonal_land_fraction(arguments.cell)
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    dataset(fraction, edges).to_netcdf(arguments.output, format=NC_FORMAT)
    print(
        f"{arguments.output}: {fraction.size} cells, global land fraction "
        f"{global_mean(fraction, edges):.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
