"""Command line: check an observation spec, or show what a NetCDF file holds.

    python -m climgrad.data check SPEC.yaml [--root DIR] [--device cpu] [--dtype float32]
                                            [--output obs.nc] [--debug]
    python -m climgrad.data show FILE.nc [--debug]

Relative data paths in SPEC.yaml are taken from the spec file's own folder, whatever the working
directory; ``--root DIR`` takes them from DIR instead (for specs written against another base).
``show`` lists each dimension with the axis the loader recognises it as, including coordinates
stored as variables of their own (``lat(latitude)`` in ``degrees_north``).

On bad input it prints one line (file, variable, fix) to stderr and exits with status 1; with
``--debug`` it shows the traceback. ``--output`` is written to a temporary file first and moved
into place only on success, so an existing output is never overwritten by a failed run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from climgrad.data.errors import ObservationError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m climgrad.data", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="load the observations of a YAML spec and summarise them")
    check.add_argument("spec", type=Path, help="YAML file with 'grid' and 'observations'")
    check.add_argument(
        "--root",
        type=Path,
        default=None,
        help="folder that relative data paths in the spec start from (default: the spec's folder)",
    )
    check.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    check.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    check.add_argument("--output", type=Path, default=None, help="write the ObsSet as NetCDF")
    check.add_argument("--debug", action="store_true", help="show tracebacks")
    show = sub.add_parser("show", help="list the variables, units and coordinates of a file")
    show.add_argument("file", type=Path)
    show.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _check(args: argparse.Namespace) -> int:
    from climgrad.data.load import load_observations
    from climgrad.data.spec import read_spec_file

    grid, specs = read_spec_file(args.spec, root=args.root)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    obs = load_observations(specs, grid, device=args.device, dtype=dtype)
    print(f"{args.spec}: {len(obs)} observation(s) on {args.device} ({args.dtype})")
    print(obs.summary())
    if args.output is not None:
        _write_atomically(obs.to_xarray(), args.output)
        print(f"wrote {args.output}")
    return 0


def _write_atomically(dataset: object, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=output.parent, suffix=".nc.part")
    os.close(handle)
    try:
        dataset.to_netcdf(temporary)  # type: ignore[attr-defined]
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _show(args: argparse.Namespace) -> int:
    from climgrad.data.coords import axis_of, find_axes
    from climgrad.data.load import open_dataset

    data = open_dataset(args.file)
    with data:
        print(f"{args.file}: dimensions {dict(data.sizes)}")
        axes = find_axes(data, data.dims)
        print("axes (as the loader recognises them):")
        for dim in sorted(map(str, data.dims)):
            if dim in axes:
                axis, coordinate = axes[dim]
                via = f" (coordinate {coordinate!r})" if coordinate != dim else ""
                print(f"  {dim!s:<24} -> {axis}{via}")
            else:
                print(f"  {dim!s:<24} -> not an axis")
        print("coordinates:")
        for name in data.coords:
            coord = data[name]
            axis = axis_of(coord, str(name)) or "-"
            units = coord.attrs.get("units", coord.encoding.get("units", ""))
            print(f"  {name!s:<24} axis={axis:<5} dims={coord.dims} units={units!r}")
        print("variables:")
        for name in data.data_vars:
            var = data[name]
            print(
                f"  {name!s:<24} dims={var.dims} units={var.attrs.get('units', '<none>')!r} "
                f"long_name={var.attrs.get('long_name', '')!r}"
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        return _check(args) if args.command == "check" else _show(args)
    except ObservationError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # unexpected: still one line unless --debug
        if args.debug:
            raise
        print(
            f"error: {type(err).__name__}: {' '.join(str(err).split())} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
