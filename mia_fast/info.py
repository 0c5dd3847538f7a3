"""What this installation can run: versions, backends and why not, the SIMD level in use."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

import torch

from .backends import BACKENDS, backend_reasons, cpp_extension, cpp_import_error
from .cpu_units import matrix_units

__all__ = ["collect_info", "format_info"]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def collect_info() -> dict[str, Any]:
    """A JSON-serialisable description of the installation.

    Returns
    -------
    dict
        ``versions`` (python, mia_fast, torch, triton, numpy), ``cpu`` (threads, SIMD level chosen
        at run time and levels available, bf16/fp16 matrix units and whether torch uses them:
        `mia_fast.cpu_units`, ``amx_head``: whether the fused head computes bf16 logits on AMX
        tiles), ``cuda`` (device name or None) and ``backends``:
        for CPU and, when present, CUDA float32 tensors, each backend's status ("available" or
        the reason it cannot run).
    """
    from ._version import __version__
    from .api import default_num_threads

    ext = cpp_extension()
    units = matrix_units()
    info: dict[str, Any] = {
        "versions": {
            "python": platform.python_version(),
            "mia_fast": __version__,
            "torch": torch.__version__,
            "triton": _version("triton"),
            "numpy": _version("numpy"),
        },
        "cpu": {
            "machine": platform.machine(),
            "threads": default_num_threads(),
            "thread_pool": ext.thread_pool() if ext else None,
            "simd_level": ext.simd_level() if ext else None,
            "simd_levels_available": ext.simd_levels_available().split(",") if ext else [],
            "cpp_extension": "built" if ext else cpp_import_error(),
            "matrix_units": list(units.units),
            "torch_bf16_matmul": units.torch_bf16,
            "matrix_units_summary": units.summary(),
            "amx_head": bool(ext and ext.amx_bf16_available()),
        },
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "backends": {},
    }
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        reasons = backend_reasons(device, torch.float32)
        info["backends"][device.type] = {name: reasons[name] or "available" for name in BACKENDS}
    return info


_POOLS = {"openmp": "on torch's OpenMP team", "own": "on the kernel's own threads"}


def format_info(info: dict[str, Any]) -> str:
    """Human-readable rendering of `collect_info`."""
    lines = ["mia_fast " + info["versions"]["mia_fast"]]
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if k != "mia_fast"))
    cpu = info["cpu"]
    lines.append(
        f"cpu: {cpu['machine']}, {cpu['threads']} threads ({_POOLS.get(cpu['thread_pool'], 'no C++ extension')}), "
        f"SIMD level {cpu['simd_level']} "
        f"(available: {', '.join(cpu['simd_levels_available']) or 'none'}; MIA_FAST_SIMD may lower it)"
    )
    lines.append(f"matrix units: {cpu['matrix_units_summary']}")
    lines.append("fused head, bf16: " + ("fp32 logits on the AMX tiles (MIA_FAST_AMX=0 turns them off)"
                                         if cpu["amx_head"] else "fp32 GEMM tiles (no AMX tiles here)"))
    lines.append(f"C++ extension: {cpu['cpp_extension']}")
    lines.append(f"cuda: {info['cuda'] or 'no CUDA device'}")
    for device, statuses in info["backends"].items():
        lines.append(f"backends for {device} tensors (auto picks the first available):")
        for name, status in statuses.items():
            lines.append(f"  {name:7s} {status}")
    return "\n".join(lines)
