"""Writing a `SpanReport`: ``spans.json`` (every document) and the ``spans.html`` page."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .html import render_html
from .locate import _check_positive_int
from .model import PathLike, SpanReport

__all__ = ["write_spans"]


def write_spans(report: SpanReport, out_dir: PathLike, *, html_max_documents: int = 200) -> dict[str, Path]:
    """Write ``spans.json`` (spans per document + the calibration) and ``spans.html`` into ``out_dir``.

    Parameters
    ----------
    report : SpanReport
    out_dir : str or Path
        Created if needed.
    html_max_documents : int
        Documents shown on the page (those with the highest-scoring spans first); ``spans.json``
        always holds every document.

    Returns
    -------
    dict
        ``{"json": path, "html": path}``.
    """
    _check_positive_int("html_max_documents", html_max_documents)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "spans.json", "html": out / "spans.html"}
    paths["json"].write_text(json.dumps(_json_safe(report.as_dict()), indent=2, allow_nan=False) + "\n",
                             encoding="utf-8")
    paths["html"].write_text(render_html(report, max_documents=html_max_documents), encoding="utf-8")
    return paths


def _json_safe(obj: Any) -> Any:
    """Plain JSON values: numpy scalars as Python numbers, non-finite floats as None."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    return obj
