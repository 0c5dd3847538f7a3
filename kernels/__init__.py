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


def _hand_over_to_installed_kernels() -> None:
    """Replace this module, imported as top-level ``kernels``, by another ``kernels`` on sys.path.

    This directory is meant to be imported as ``mia_fast.kernels``. It is importable as top-level
    ``kernels`` only when the checkout's root is on sys.path (``python -m pytest`` or
    ``python -m mia_fast`` run from the checkout, a notebook started there), and it would then
    shadow the ``kernels`` distribution that transformers imports (Hugging Face kernels: a
    dependency of transformers 5), breaking every model import. The import system returns
    whatever ``sys.modules["kernels"]`` holds once this module has run, so putting the installed
    package there hands the name over to it.
    """
    import importlib.machinery
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    search = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != root]
    spec = importlib.machinery.PathFinder.find_spec("kernels", search)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module
    spec.loader.exec_module(module)


if __name__ == "kernels":
    _hand_over_to_installed_kernels()
