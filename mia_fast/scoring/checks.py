"""Argument checks shared by the text-variant families (`augment`, `neighbours`, `frequency`,
`samia`): each names the argument, what was expected and what came."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch


def is_int(x: Any) -> bool:
    """An integer, not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def is_real(x: Any) -> bool:
    """A real number (int or float), not a bool."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def check_count(name: str, value: Any, minimum: int = 1, *, optional: bool = False) -> Optional[int]:
    """``value`` as an int ``>= minimum`` (or None when ``optional``)."""
    if value is None and optional:
        return None
    if not is_int(value) or int(value) < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}{' or None' if optional else ''}, got {value!r}")
    return int(value)


def check_seed(value: Any) -> int:
    """A non-negative integer seed."""
    if not is_int(value) or int(value) < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {value!r}")
    return int(value)


def check_fraction(name: str, value: Any, *, include_one: bool = True, of: str = "") -> float:
    """``value`` as a float in (0, 1], or in (0, 1) when not ``include_one``."""
    if not is_real(value) or not (0.0 < float(value) <= 1.0 if include_one else 0.0 < float(value) < 1.0):
        raise ValueError(f"{name}: expected a fraction in (0, 1{']' if include_one else ')'}"
                         f"{' of ' + of if of else ''}, got {value!r}")
    return float(value)


def check_texts(texts: Any, name: str = "texts") -> list[str]:
    """A sequence of str (not a str itself) as a list."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(f"{name}: expected a sequence of str, got {type(texts).__name__}")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}]: expected a str, got {type(t).__name__}")
    return out


def as_1d(x: Any, name: str, kind: str) -> np.ndarray:
    """A 1-D tensor or array-like as numpy: int64 for ``kind="int"``, else float64."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected a 1-D array, got {type(x).__name__} ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if kind == "int":
        if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f"):
            raise TypeError(f"{name}: expected integers, got dtype {arr.dtype}")
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)
