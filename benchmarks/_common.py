"""Shared helpers of the benchmarks: timing, robust summaries, machine information, memory probes.

The machines these benchmarks run on are shared and noisy, so every benchmark reports medians with
their spread, and ratios of providers measured in the same run (interleaved round-robin), never
absolute times alone (design.md section 8).
"""

from __future__ import annotations

import os
import platform
import re
import resource
import statistics
import sys
import time
from typing import Callable, Optional, Sequence

__all__ = [
    "summarize",
    "Timer",
    "cpu_model",
    "machine_info",
    "reset_peak_rss",
    "peak_rss_bytes",
    "release_free_memory",
    "fmt_ms",
    "fmt_rate",
    "fmt_ratio",
    "log",
    "write_text",
]


def summarize(samples: Sequence[float]) -> dict:
    """Median, min, max, quartiles and count of ``samples`` (seconds)."""
    xs = sorted(samples)
    n = len(xs)
    if n == 0:
        return {"n": 0}
    if n >= 4:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1, q3 = xs[0], xs[-1]
    return {
        "n": n,
        "median": statistics.median(xs),
        "min": xs[0],
        "max": xs[-1],
        "q1": q1,
        "q3": q3,
        "mean": statistics.fmean(xs),
    }


class Timer:
    """Times one call of a function: ``time.perf_counter`` on CPU, CUDA events on a GPU.

    On CUDA, ``inner`` calls are timed together (and divided) so that a sample is long enough to
    be measured well; on CPU every sample is one call.
    """

    def __init__(self, device: str):
        self.device = device
        if device == "cuda":
            import torch

            self._torch = torch

    def __call__(self, fn: Callable[[], object], inner: int = 1) -> float:
        if self.device == "cuda":
            torch = self._torch
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / inner
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) / inner


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    """CPU, cores, torch version, SIMD level of mia_fast._C, GPU name if any."""
    import torch

    info: dict = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
    }
    try:
        from mia_fast import _C  # type: ignore[attr-defined]

        info["simd_level"] = _C.simd_level()
        info["simd_levels_available"] = _C.simd_levels_available()
    except Exception as exc:  # noqa: BLE001 - report, never crash on info
        info["simd_level"] = f"unavailable ({exc})"
    try:
        import mia_fast

        info["mia_fast"] = getattr(mia_fast, "__version__", "?")
    except Exception:  # noqa: BLE001
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        try:
            import triton

            info["triton"] = triton.__version__
        except Exception:  # noqa: BLE001
            info["triton"] = None
    else:
        info["gpu"] = None
    try:
        with open("/proc/meminfo") as f:
            m = re.search(r"MemTotal:\s+(\d+)", f.read())
        if m:
            info["mem_total_gib"] = round(int(m.group(1)) / 2**20, 1)
    except OSError:
        pass
    return info


def reset_peak_rss() -> bool:
    """Reset the process's peak resident set (Linux: ``echo 5 > /proc/self/clear_refs``).

    ``getrusage(RUSAGE_SELF).ru_maxrss`` then restarts from the current RSS. Returns False where
    this is not supported (the peak then includes everything since the process started).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_free_memory() -> bool:
    """Return the allocator's free heap pages to the OS (glibc ``malloc_trim(0)``).

    Without it, memory that a warm-up call freed can stay resident (glibc keeps blocks below its
    mmap threshold in the heap), which would hide it from a later peak-minus-baseline reading.
    """
    import gc

    gc.collect()
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def peak_rss_bytes() -> int:
    """Peak resident memory of this process in bytes.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark that ``reset_peak_rss`` resets.
    ``getrusage(RUSAGE_SELF).ru_maxrss`` reports the same mark, but also the maximum of it taken
    whenever a thread exited, which the reset does not clear (a pool thread that exits after a
    warm-up makes ru_maxrss keep the warm-up's peak). Elsewhere: ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024


def fmt_ms(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_rate(value: Optional[float], unit: str = "") -> str:
    """3 significant digits with k/M/G prefixes."""
    if value is None:
        return "-"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}".strip()
    return f"{value:.3g} {unit}".strip()


def fmt_ratio(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}×" if value < 100 else f"{value:.0f}×"


def set_threads(threads: Optional[int]) -> int:
    """Give torch and the C++ kernel the same thread count (default: torch's); returns it."""
    import torch

    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    os.environ["MIA_FAST_NUM_THREADS"] = str(threads)
    return threads


def command_line(script: str, argv: Optional[Sequence[str]]) -> str:
    """The command that reproduces this run, as it is printed beside the results."""
    args = list(argv) if argv is not None else sys.argv[1:]
    return "python " + " ".join([os.path.relpath(os.path.abspath(script))] + args)


def log(msg: str) -> None:
    """Progress on stderr (stdout carries the report)."""
    print(msg, file=sys.stderr, flush=True)


def write_text(path: str, text: str) -> None:
    """Write a report (or its JSON) to ``path``, creating its folder, and say so on stderr."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    log(f"wrote {path}")


def short_reason(exc: BaseException) -> str:
    """One line naming an exception, for a provider marked as failed."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {(text[0] if text else '')[:240]}"


def measure_cuda_memory(fn: Callable[[], object]) -> dict:
    """Peak device memory allocated by one call of ``fn`` above what was allocated before."""
    import gc

    import torch

    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return {"extra_bytes": int(peak), "method": "torch.cuda.max_memory_allocated delta"}
