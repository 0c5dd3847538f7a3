"""Input checks shared by the attacks: arrays, membership masks and per-sequence tables.

Every check raises once, with a message naming the argument, what was expected and what came
(design.md §8).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Sequence

import numpy as np

from ..aggregate import aggregate
from ..stats import TokenStats

__all__ = [
    "float_array",
    "bool_array",
    "first_indices",
    "is_table",
    "table_columns",
    "column",
    "sequence_values",
    "TOKEN_STATS_COLUMNS",
]

# Per-sequence columns that `sequence_values` can compute from a TokenStats batch (besides
# min_k_* and min_k_pp_*); zlib needs the texts, which TokenStats does not carry.
TOKEN_STATS_COLUMNS = ("n_tokens", "loss", "entropy_mean", "phi_mean", "top1_acc", "log_rank_mean")


def first_indices(mask: np.ndarray, limit: int = 5) -> str:
    """The first ``limit`` indices where ``mask`` is true, as text (``"3, 8, 10, ..."``)."""
    idx = np.flatnonzero(mask)
    text = ", ".join(str(int(i)) for i in idx[:limit])
    return text + (", ..." if idx.shape[0] > limit else "")


def float_array(x: Any, name: str, ndims: Sequence[int] = (1,)) -> np.ndarray:
    """``x`` as a finite float64 array with one of the ranks ``ndims``."""
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected an array of real numbers, got {type(x).__name__} ({exc})") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    if arr.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name}: expected a {want} array, got shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name}: expected finite values, got {int(bad.sum())} NaN/inf values "
            f"(first at flat index {first_indices(bad.ravel(), 1)})"
        )
    return arr


def bool_array(x: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """``x`` as a bool array of ``shape`` (accepts bool, or numbers that are all 0 or 1)."""
    arr = np.asarray(x)
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind not in "iuf" or not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name}: expected bool values (or 0/1), got dtype {arr.dtype} with other values")
    return arr == 1


def is_table(x: Any) -> bool:
    """Whether ``x`` is a per-sequence table: a mapping, a pandas DataFrame or a pyarrow Table."""
    return isinstance(x, Mapping) or hasattr(x, "columns") or hasattr(x, "column_names")


def table_columns(table: Any) -> list[str]:
    """Column names of a mapping, DataFrame or pyarrow Table."""
    if hasattr(table, "column_names"):
        return list(table.column_names)
    if hasattr(table, "columns"):
        return [str(c) for c in table.columns]
    return [str(c) for c in table.keys()]


def column(table: Any, col: str, name: str, n_rows: Optional[int] = None) -> np.ndarray:
    """Column ``col`` of ``table`` as a finite float64 vector (optionally of length ``n_rows``)."""
    if col not in table_columns(table):
        raise ValueError(f"{name}: expected a column {col!r}, got columns {table_columns(table)}")
    values = float_array(table[col], f"{name}[{col!r}]")
    if n_rows is not None and values.shape[0] != n_rows:
        raise ValueError(f"{name}[{col!r}]: expected {n_rows} rows, got {values.shape[0]}")
    return values


def _missing_column_message(name: str, col: str, columns: list[str]) -> str:
    for prefix in ("min_k_pp_", "min_k_"):
        if col.startswith(prefix):
            ks = []
            for c in columns:
                if c.startswith(prefix) and not (prefix == "min_k_" and c.startswith("min_k_pp_")):
                    try:
                        ks.append(float(c[len(prefix):]))
                    except ValueError:
                        pass
            return (f"{name}: expected a column {col!r} (k = {col[len(prefix):]}); the table has "
                    f"{prefix}* columns for k in {sorted(ks)}")
    return f"{name}: expected a column {col!r}, got columns {columns}"


def sequence_values(x: Any, col: str, name: str, ks: Sequence[float] = (0.2,)) -> np.ndarray:
    """Per-sequence statistic ``col`` of a table, or computed from a TokenStats batch.

    Parameters
    ----------
    x : table or TokenStats
        A per-sequence table (pandas DataFrame, pyarrow Table or mapping column -> 1-D array),
        or a `TokenStats` batch with fields of shape (N, L), reduced with `mia_fast.aggregate`.
    col : str
        Column name (``loss``, ``min_k_0.2``, ...).
    name : str
        Argument name for error messages.
    ks : sequence of float
        Fractions passed to `mia_fast.aggregate` (must contain the k of a ``min_k`` column).

    Returns
    -------
    ndarray, shape (N,), float64, finite
    """
    if isinstance(x, TokenStats):
        computable = col in TOKEN_STATS_COLUMNS or col.startswith("min_k_")
        if not computable:
            raise TypeError(
                f"{name}: the column {col!r} cannot be computed from a TokenStats batch (it needs "
                f"the texts); expected a per-sequence table with that column"
            )
        if x.mask.dim() != 2:
            raise ValueError(f"{name}: expected TokenStats fields of shape (N, L), got {tuple(x.mask.shape)}")
        values = np.asarray(aggregate(x, ks=ks)[col], dtype=np.float64)
        empty = ~np.isfinite(values)
        if empty.any():
            raise ValueError(
                f"{name}: expected at least one scored token (mask) per sequence, got "
                f"{int(empty.sum())} sequences without one (first: {first_indices(empty)})"
            )
        return values
    if is_table(x):
        columns = table_columns(x)
        if col not in columns:
            raise ValueError(_missing_column_message(name, col, columns))
        return column(x, col, name)
    raise TypeError(
        f"{name}: expected a per-sequence table (pandas DataFrame, pyarrow Table or mapping column "
        f"-> 1-D array) or a TokenStats batch, got {type(x).__name__}"
    )
