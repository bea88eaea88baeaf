"""Run the benchmark problems of docs/benchmark_problems.md (B1, B2, ...) and report them.

Usage::

    python scripts/bench.py B1               # readable table (section 0.5 template)
    python scripts/bench.py B1 --json        # one JSON object on stdout
    python scripts/bench.py B1 --dtype both --repeats 7 --device cpu --threads 2
    python scripts/bench.py B1 --size small  # a quick check (the reference gate still runs)

Adding a problem: write ``scripts/bench/b<N>.py`` with

``run(args: argparse.Namespace) -> dict``
    Runs the problem for ``args.dtype`` (``"float32"`` or ``"float64"``; this script loops over
    dtypes) with ``args.repeats``, ``args.warmup``, ``args.device`` and ``args.size``
    (``"default"`` or ``"small"``), and returns a JSON-ready dict holding at least ``problem``,
    ``dtype``, ``machine``, ``reference_check`` (``{"passed": bool, "entries": {...}}``) and the
    entries ``custom`` and ``autograd``, each with ``forward_s``, ``forward_backward_s`` (medians),
    ``forward``/``forward_backward`` timing dicts, ``grad_forward_ratio`` (paired),
    ``peak_memory_bytes`` (forward+backward), ``peak_memory_forward_bytes`` and ``first_call_s``;
    optional ``variants`` (name -> entry of the same form) and ``comparisons``.
``add_arguments(parser)`` (optional)
    Extra command-line options.
``format_table(results: list[dict]) -> str`` (optional)
    The readable output, for results that do not have the ``custom``/``autograd`` layout.

then add one line to ``PROBLEMS`` below. Problem modules import the shared measurement helpers
as ``import common`` (``scripts/bench/common.py``; this script puts ``scripts/bench`` on the path).

Output: with one dtype, the JSON object is the problem's result; with ``--dtype both`` it is
``{"problem": ..., "runs": [float64 result, float32 result]}``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent / "bench"

#: Problem name -> module in scripts/bench/.
PROBLEMS = {
    "B1": "b1",
    "B2": "b2",
    "B3": "b3",
    "B4": "b4",
    "COMPILE": "compile",
    "ENSEMBLE": "ensemble",
    "ROLLOUT": "rollout",
    "RRTMG": "rrtmg_column",
    "SCALE": "scale",
}


def _add_bench_dir_to_path() -> None:
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))


def _load(problem: str) -> Any:
    module_name = PROBLEMS[problem]
    if not (BENCH_DIR / f"{module_name}.py").exists():
        raise SystemExit(f"{problem} is registered but scripts/bench/{module_name}.py is missing.")
    _add_bench_dir_to_path()
    module = importlib.import_module(module_name)
    if not callable(getattr(module, "run", None)):
        raise SystemExit(f"scripts/bench/{module_name}.py has no run(args) function yet.")
    return module


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("problem", choices=sorted(PROBLEMS), help="benchmark problem")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--dtype", choices=["float64", "float32", "both"], default="float64")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (>= 5 for reports)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", choices=["default", "small"], default="default")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads, and the BLAS threads of numpy/scipy (OMP/OPENBLAS/MKL)",
    )
    return parser


def _table(results: list[dict[str, Any]]) -> str:
    _add_bench_dir_to_path()
    import common

    rows = []
    for result in results:
        entries = {"custom": result["custom"], "autograd": result["autograd"]}
        entries.update(result.get("variants", {}))
        for name, entry in entries.items():
            rows.append(
                [
                    result["problem"],
                    result["dtype"],
                    name,
                    str(result["machine"]["torch_threads"]),
                    common.milliseconds(entry["forward"]),
                    common.milliseconds(entry["forward_backward"]),
                    f"{entry['grad_forward_ratio']['median']:.2f}",
                    f"{common.mebibytes(entry.get('peak_memory_forward_bytes'))} / "
                    f"{common.mebibytes(entry.get('peak_memory_bytes'))}",
                    f"{entry.get('first_call_s', float('nan')):.2f}",
                    "yes" if result["reference_check"]["passed"] else "NO",
                ]
            )
    lines = [common.format_table(rows)]
    for result in results:
        machine = result["machine"]
        lines.append(
            f"\n{result['problem']} {result['dtype']} on {machine['cpu_model']} "
            f"({machine['logical_cores']} logical cores, {machine['torch_threads']} torch threads, "
            f"torch {machine['torch_version']}, device {machine['device']}), "
            f"size {result.get('size')}"
        )
        for name, value in result.get("comparisons", {}).items():
            lines.append(f"  {name}: {json.dumps(value)}")
        failed = [k for k, v in result["reference_check"]["entries"].items() if not v["passed"]]
        lines.append(f"  reference check: {'passed' if not failed else 'FAILED ' + str(failed)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    # The problem's own options are known only once its module is loaded.
    known, _ = build_parser().parse_known_args(argv)
    if known.threads is not None:
        # The thread count holds for numpy/scipy's BLAS too (read when numpy is first imported,
        # which loading the problem does): an idle OpenBLAS pool spinning on the other core slows
        # scipy's L-BFGS-B (B4) several-fold on a 2-core machine.
        for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(variable, str(known.threads))
    module = _load(known.problem)
    parser = build_parser()
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda was requested but torch.cuda.is_available() is False.")
    dtypes = ["float64", "float32"] if args.dtype == "both" else [args.dtype]
    results = []
    for dtype in dtypes:
        run_args = argparse.Namespace(**{**vars(args), "dtype": dtype})
        results.append(module.run(run_args))
    if args.json:
        import common

        output = results[0] if len(results) == 1 else {"problem": args.problem, "runs": results}
        print(json.dumps(common.as_jsonable(output), indent=2))
    elif hasattr(module, "format_table"):
        print(module.format_table(results))
    else:
        print(_table(results))
    passed = all(result["reference_check"]["passed"] for result in results)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
