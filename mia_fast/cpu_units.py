"""The CPU's reduced-precision matrix units (AMX, AVX512-BF16, AVX512-FP16) and whether torch runs
bf16 matrix products on them.

On such a CPU a bf16 model runs its matrix products through oneDNN on the matrix units, several
times faster than fp32; without them torch emulates bf16 and a bf16 model is *slower* than fp32.
`mia-fast info` reports what is here, and `mia-fast score` names the faster setting when it sees
one unused.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch

__all__ = ["MatrixUnits", "cpu_flags", "matrix_units"]

#: /proc/cpuinfo flag -> name shown to users.
UNIT_FLAGS: dict[str, str] = {
    "amx_tile": "AMX tiles",
    "amx_bf16": "AMX-BF16",
    "amx_fp16": "AMX-FP16",
    "avx512_bf16": "AVX512-BF16",
    "avx512_fp16": "AVX512-FP16",
}
_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: Optional[str] = None) -> frozenset[str]:
    """The feature flags of the first CPU in ``/proc/cpuinfo`` (empty where there is none).

    Parameters
    ----------
    cpuinfo : str, optional
        The text of a ``/proc/cpuinfo``; read from the system when None.
    """
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        if platform.system() != "Linux" or not path.is_file():
            return frozenset()
        try:
            cpuinfo = path.read_text(errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def _torch_bf16_on_units() -> bool:
    """oneDNN runs bf16 matmuls natively (not emulated) on this CPU."""
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


@dataclass(frozen=True)
class MatrixUnits:
    """What the CPU has for bf16/fp16 matrix products.

    Attributes
    ----------
    units : tuple of str
        `UNIT_FLAGS` keys the CPU reports, in that order.
    torch_bf16 : bool
        torch (oneDNN) runs bf16 matrix products natively on this CPU.
    torch_capability : str
        The vector ISA torch's kernels dispatch to (``torch.backends.cpu.get_cpu_capability()``).
    """

    units: tuple[str, ...]
    torch_bf16: bool
    torch_capability: str

    @property
    def bf16(self) -> bool:
        """The CPU has bf16 matrix units and torch uses them: bf16 scoring runs faster than fp32."""
        return self.torch_bf16 and any(u in _BF16_FLAGS for u in self.units)

    def summary(self) -> str:
        names = ", ".join(UNIT_FLAGS[u] for u in self.units) or "none"
        if self.bf16:
            use = "torch runs bf16 matrix products on them"
        elif any(u in _BF16_FLAGS for u in self.units):
            use = "torch does not use them (bf16 is emulated)"
        else:
            use = "bf16 is emulated here, slower than fp32"
        return f"{names} ({use}; torch dispatches to {self.torch_capability})"


def matrix_units(flags: Optional[Iterable[str]] = None, torch_bf16: Optional[bool] = None) -> MatrixUnits:
    """The matrix units of this CPU (or of the given ``flags``) and torch's use of them.

    Parameters
    ----------
    flags : iterable of str, optional
        CPU feature flags as in ``/proc/cpuinfo``; `cpu_flags` when None.
    torch_bf16 : bool, optional
        Whether torch runs bf16 matmuls natively; asked from torch when None.
    """
    have = frozenset(cpu_flags() if flags is None else flags)
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = "unknown"
    return MatrixUnits(
        units=tuple(u for u in UNIT_FLAGS if u in have),
        torch_bf16=_torch_bf16_on_units() if torch_bf16 is None else bool(torch_bf16),
        torch_capability=capability,
    )
