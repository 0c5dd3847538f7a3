"""Triton GPU kernels of mia_fast, installed as ``mia_fast.kernels``.

Importing this package never imports triton: the kernel modules are imported lazily by the
dispatcher, only for CUDA tensors, so that CPU-only installs (no ``gpu`` extra) work.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Optional

__all__ = ["triton_unavailable_reason", "interpreter_enabled"]


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET=1``: Triton kernels then run on CPU tensors (tests only)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def triton_unavailable_reason() -> Optional[str]:
    """None when triton and a CUDA device can run the kernels, else why not (cached)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'mia_fast[gpu]')"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device is available to torch"
    return None
