"""Shared measurement protocol of the benchmarks (docs/benchmark_problems.md sections 0.3-0.5).

Problem modules (``scripts/bench/b1.py``, ``b2.py``, ...) import this module as ``common``
(``scripts/bench.py`` puts ``scripts/bench`` on ``sys.path``) and use:

- :func:`time_interleaved` -- warm-up, then rounds f1, f2, ..., f1, f2, ... of several callables;
  medians, [min, max] and per-round samples (:class:`Timing`).
- :func:`paired_ratio` -- the median over rounds of t(numerator) / t(denominator).
- :func:`peak_memory_bytes` -- peak-RSS growth during one call (section 0.4: ``gc``,
  ``malloc_trim(0)``, ``/proc/self/clear_refs``, VmHWM - VmRSS), or the CUDA allocator peak on GPU.
- :func:`saved_tensor_bytes` -- the deterministic figure: bytes of distinct tensors saved for
  backward.
- :func:`first_call_seconds` -- wall time of a first (compiling) call, reported separately.
- :func:`relative_error` and :func:`reference_entry` -- the correctness gate of section 0.2.
- :func:`machine_info`, :func:`dtype_from_name`, :func:`synchronize`, :func:`format_table`.

Every timed callable takes no arguments and must return after its work is done; :func:`synchronize`
is called before each clock read so asynchronous (CUDA) work is included.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

MIB = 1024 * 1024


# ------------------------------------------------------------------------------------------------
# Machine and dtype
# ------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model, logical cores, torch threads, torch/Python versions, load and GPU (if used)."""
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }
    try:
        info["load_average_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu_model"] = torch.cuda.get_device_name(torch.device(device))
    return info


def dtype_from_name(name: str) -> torch.dtype:
    """``"float32"`` or ``"float64"`` to the torch dtype (the two precision variants of 0.1)."""
    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if name not in dtypes:
        raise ValueError(f"Unknown dtype {name!r}; use one of {sorted(dtypes)}.")
    return dtypes[name]


def synchronize(device: str | torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Samples of one callable, in seconds (one per round): wall clock, and process CPU time.

    Wall clock is what the protocol reports. Process CPU time (user + system, all threads) is
    recorded beside it because on a shared machine it excludes the time spent waiting for a core;
    with one thread it is close to the wall time an idle machine would show.
    """

    samples: list[float] = field(default_factory=list)
    cpu_samples: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples)

    @property
    def min_s(self) -> float:
        return min(self.samples)

    @property
    def max_s(self) -> float:
        return max(self.samples)

    @property
    def cpu_median_s(self) -> float:
        return statistics.median(self.cpu_samples)

    def milliseconds(self) -> dict[str, float]:
        """Median, min, max and CPU median in ms (for reports)."""
        return {
            "median": 1e3 * self.median_s,
            "min": 1e3 * self.min_s,
            "max": 1e3 * self.max_s,
            "cpu_median": 1e3 * self.cpu_median_s,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "median_s": self.median_s,
            "min_s": self.min_s,
            "max_s": self.max_s,
            "samples_s": list(self.samples),
            "cpu_median_s": self.cpu_median_s if self.cpu_samples else None,
            "cpu_samples_s": list(self.cpu_samples),
        }


def time_interleaved(
    functions: Mapping[str, Callable[[], Any]],
    repeats: int = 5,
    warmup: int = 1,
    device: str | torch.device = "cpu",
) -> dict[str, Timing]:
    """Time several callables in interleaved rounds (section 0.3).

    Each callable is called ``warmup`` times untimed, then ``repeats`` rounds run every callable
    once, in the given order. Results are returned as :class:`Timing` per name.

    Args:
        functions: Name to zero-argument callable; the order is the order within a round.
        repeats: Timed rounds (the protocol asks for at least 5).
        warmup: Untimed calls of each callable before the first round (at least 1).
        device: Device to synchronise before each clock read.
    """
    if repeats < 1 or warmup < 1:
        raise ValueError(f"Need repeats >= 1 and warmup >= 1; got {repeats} and {warmup}.")
    for function in functions.values():
        for _ in range(warmup):
            function()
    synchronize(device)
    timings = {name: Timing() for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            synchronize(device)
            cpu_start = time.process_time()
            start = time.perf_counter()
            function()
            synchronize(device)
            timings[name].samples.append(time.perf_counter() - start)
            timings[name].cpu_samples.append(time.process_time() - cpu_start)
    return timings


def paired_ratio(numerator: Timing, denominator: Timing) -> dict[str, float]:
    """Median (and [min, max]) over rounds of the per-round ratio numerator / denominator.

    ``cpu_median`` is the same paired ratio of process CPU times.
    """
    if len(numerator.samples) != len(denominator.samples):
        raise ValueError("Paired ratios need timings from the same interleaved rounds.")
    ratios = [n / d for n, d in zip(numerator.samples, denominator.samples, strict=True)]
    result = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    if numerator.cpu_samples and len(numerator.cpu_samples) == len(denominator.cpu_samples):
        cpu_ratios = [
            n / d if d > 0 else math.nan
            for n, d in zip(numerator.cpu_samples, denominator.cpu_samples, strict=True)
        ]
        result["cpu_median"] = statistics.median(cpu_ratios)
    return result


def first_call_seconds(function: Callable[[], Any], device: str | torch.device = "cpu") -> float:
    """Wall time of one call, e.g. the first call of a compiled function (compile + run)."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------
# Memory
# ------------------------------------------------------------------------------------------------


def _malloc_trim() -> None:
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    try:
        ctypes.CDLL(libc_name).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except OSError:
        return None
    return None


def peak_rss_growth_bytes(function: Callable[[], Any]) -> int | None:
    """Growth of the peak resident set size during one call (Linux; ``None`` elsewhere).

    Section 0.4: collect garbage, ``malloc_trim(0)``, reset VmHWM through ``/proc/self/clear_refs``,
    read VmRSS, call, read VmHWM; the result is VmHWM - VmRSS(before). Call after a warm-up call.
    Growth below a few MiB is not meaningful (the allocator reuses memory it already holds).
    """
    gc.collect()
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return None
    before = _status_bytes("VmRSS")
    result = function()
    peak = _status_bytes("VmHWM")
    del result
    if before is None or peak is None:
        return None
    return max(peak - before, 0)


def cuda_peak_growth_bytes(function: Callable[[], Any], device: str | torch.device) -> int:
    """Peak CUDA allocator bytes above the starting allocation during one call."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = function()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del result
    return max(peak - before, 0)


def peak_memory_bytes(
    function: Callable[[], Any], device: str | torch.device = "cpu"
) -> int | None:
    """Peak memory growth of one call: CUDA allocator peak on GPU, peak-RSS growth on CPU."""
    if torch.device(device).type == "cuda":
        return cuda_peak_growth_bytes(function, device)
    return peak_rss_growth_bytes(function)


def saved_tensor_bytes(function: Callable[[], Any]) -> int:
    """Bytes of distinct tensor storages saved for backward while ``function`` runs its forward.

    Counts what autograd (and custom Functions through ``save_for_backward``) keeps alive for the
    backward pass; a storage saved twice counts once. Deterministic, unlike peak RSS.
    """
    storages: dict[tuple[int, str], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[(storage.data_ptr(), str(tensor.device))] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = function()
    del result
    return sum(storages.values())


# ------------------------------------------------------------------------------------------------
# Correctness gate
# ------------------------------------------------------------------------------------------------


def relative_error(value: torch.Tensor | float, reference: torch.Tensor | float) -> float:
    """Section 0.2: ``|v - r| / |r|`` for scalars, ``max|v - r| / max|r|`` for vectors."""
    value_t = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    reference_t = torch.as_tensor(reference, dtype=torch.float64).detach().cpu()
    scale = reference_t.abs().max()
    return float((value_t - reference_t).abs().max() / scale)


def reference_entry(
    value: torch.Tensor | float, reference: float, tolerance: float
) -> dict[str, Any]:
    """One row of ``reference_check``: value, reference, relative error and pass/fail."""
    error = relative_error(value, reference)
    value_float = float(torch.as_tensor(value).detach().cpu().double())
    return {
        "value": value_float,
        "reference": reference,
        "relative_error": error,
        "tolerance": tolerance,
        "passed": bool(math.isfinite(error) and error <= tolerance),
    }


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------

TABLE_COLUMNS: Sequence[str] = (
    "problem",
    "dtype",
    "implementation / variant",
    "threads",
    "forward ms (median [min-max])",
    "forward+backward ms",
    "grad/fwd (paired)",
    "peak MiB fwd / fwd+bwd",
    "first call s",
    "passes gate",
)


def milliseconds(timing: Mapping[str, Any]) -> str:
    """``median [min-max]`` in ms from a timing dict (``median_s``, ``min_s``, ``max_s``)."""
    return (
        f"{1e3 * timing['median_s']:.1f} [{1e3 * timing['min_s']:.1f}-{1e3 * timing['max_s']:.1f}]"
    )


def mebibytes(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MIB:.1f}"


def format_table(rows: Sequence[Sequence[str]], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """A Markdown table (the reporting template of section 0.5)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def as_jsonable(value: Any) -> Any:
    """Dataclasses, tensors and nested containers to plain JSON types."""
    if isinstance(value, Timing):
        return value.as_dict()
    if hasattr(value, "__dataclass_fields__"):
        return as_jsonable(asdict(value))
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, Mapping):
        return {str(key): as_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [as_jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


__all__ = [
    "MIB",
    "TABLE_COLUMNS",
    "Timing",
    "as_jsonable",
    "cuda_peak_growth_bytes",
    "dtype_from_name",
    "first_call_seconds",
    "format_table",
    "machine_info",
    "mebibytes",
    "milliseconds",
    "paired_ratio",
    "peak_memory_bytes",
    "peak_rss_growth_bytes",
    "reference_entry",
    "relative_error",
    "saved_tensor_bytes",
    "synchronize",
    "time_interleaved",
]
