"""Backend discovery and selection.

Three backends compute `TokenStats`:

* ``cpp``    -- the one-pass SIMD kernel in ``csrc/`` (CPU tensors), built as ``mia_fast._C``;
* ``triton`` -- the Triton kernels in ``kernels/`` (CUDA tensors), needs the ``gpu`` extra;
* ``torch``  -- `mia_fast.reference` in float32, runs anywhere; the last resort of ``auto``.

``backend="auto"`` (or the ``MIA_FAST_BACKEND`` environment variable) picks the first backend in
that order that can run on the given tensors. An explicit backend that cannot run raises
`NotImplementedError` listing the reason of every backend.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

__all__ = ["BACKENDS", "ENV_VAR", "backend_reasons", "resolve_backend", "cpp_extension", "cpp_import_error"]

BACKENDS: tuple[str, ...] = ("cpp", "triton", "torch")
ENV_VAR = "MIA_FAST_BACKEND"
_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

try:  # the compiled extension is optional at import time so that `info` can say why it is missing
    from . import _C as _cpp_ext  # type: ignore[attr-defined]

    _CPP_IMPORT_ERROR: Optional[str] = None
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _cpp_ext = None
    _CPP_IMPORT_ERROR = f"the C++ extension mia_fast._C is not built ({exc})"


def cpp_extension():
    """The compiled ``mia_fast._C`` module, or None when it was not built."""
    return _cpp_ext


def cpp_import_error() -> Optional[str]:
    """Why ``mia_fast._C`` could not be imported, or None."""
    return _CPP_IMPORT_ERROR


def backend_reasons(device: torch.device, dtype: torch.dtype) -> dict[str, Optional[str]]:
    """For each backend, None if it can run on tensors of ``device``/``dtype``, else why not."""
    from mia_fast.kernels import triton_unavailable_reason

    reasons: dict[str, Optional[str]] = {}
    if _cpp_ext is None:
        reasons["cpp"] = _CPP_IMPORT_ERROR
    elif device.type != "cpu":
        reasons["cpp"] = f"cpp runs on CPU tensors, got a {device.type} tensor"
    elif dtype not in _FUSED_DTYPES:
        reasons["cpp"] = f"cpp takes float32/float16/bfloat16 logits, got {dtype}"
    else:
        reasons["cpp"] = None

    if device.type != "cuda":
        reasons["triton"] = f"triton runs on CUDA tensors, got a {device.type} tensor"
    elif dtype not in _FUSED_DTYPES:
        reasons["triton"] = f"triton takes float32/float16/bfloat16 logits, got {dtype}"
    else:
        reasons["triton"] = triton_unavailable_reason()

    reasons["torch"] = None
    return reasons


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """Turn ``backend`` ('auto' or a name) into the name of a backend that can run.

    Raises
    ------
    ValueError
        ``backend`` (or ``MIA_FAST_BACKEND``) is not a known name.
    NotImplementedError
        An explicitly requested backend cannot run here; the message lists every reason.
    """
    source = "backend"
    if backend == "auto" and os.environ.get(ENV_VAR):
        backend, source = os.environ[ENV_VAR].strip().lower(), ENV_VAR
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(
            f"{source}: expected one of 'auto', {', '.join(repr(b) for b in BACKENDS)}; got {backend!r}"
        )
    reasons = backend_reasons(device, dtype)
    if backend == "auto":
        return next(name for name in BACKENDS if reasons[name] is None)
    if reasons[backend] is not None:
        listing = "; ".join(f"{name}: {why or 'available'}" for name, why in reasons.items())
        raise NotImplementedError(
            f"{source}={backend!r} cannot run on {device.type} {dtype} tensors ({listing})"
        )
    return backend
