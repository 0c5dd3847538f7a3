"""The results of span localisation: `Span`, `DocumentSpans`, `SpanReport` and the `Calibration` of
the threshold, with the defaults of `mia_fast.spans.locate_spans` (plain data, no computation)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

__all__ = [
    "DEFAULT_WINDOW",
    "DEFAULT_ALPHA",
    "DEFAULT_MERGE_GAP",
    "DEFAULT_MIN_LENGTH",
    "SIGNALS",
    "Calibration",
    "Span",
    "DocumentSpans",
    "SpanReport",
]

DEFAULT_WINDOW = 16
DEFAULT_ALPHA = 0.01
DEFAULT_MERGE_GAP = 4
DEFAULT_MIN_LENGTH = 8
SIGNALS: tuple[str, ...] = ("auto", "reference_diff", "logprob", "min_k_pp")
# Infinite per-token signals (log p_y = -inf under a masked vocabulary) are clipped to +- this.
_SIGNAL_BOUND = 1e4

PathLike = Union[str, Path]


@dataclass(frozen=True)
class Calibration:
    """How the threshold was set (written to ``spans.json``).

    Attributes
    ----------
    signal : str
        ``reference_diff``, ``logprob`` or ``min_k_pp``.
    threshold : float
        Tokens whose smoothed signal is strictly above it are flagged.
    source : str
        ``nonmember_label``, ``nonmember_ids`` or ``user`` (an explicit threshold; given
        non-members too, their false positive rate under it is still reported).
    window, merge_gap, min_length : int
    alpha : float or None
        The target per-token false positive rate on non-members (None for a user threshold).
    n_null_documents, n_null_tokens : int
        Non-member documents and tokens behind the null distribution (0 without non-members).
    null_fpr : float or None
        Fraction of non-member tokens above the threshold (in-sample; None without non-members).
    null_quantiles : dict
        Quantiles 0.5, 0.9, 0.99 of the non-member smoothed signal (empty without non-members).
    nonmember_label : int or None
        The label of the non-members, when they were chosen by label.
    reference : str or None
        The reference score directory, for ``reference_diff``.
    """

    signal: str
    threshold: float
    source: str
    window: int
    merge_gap: int
    min_length: int
    alpha: Optional[float] = None
    n_null_documents: int = 0
    n_null_tokens: int = 0
    null_fpr: Optional[float] = None
    null_quantiles: dict[str, float] = field(default_factory=dict)
    nonmember_label: Optional[int] = None
    reference: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Span:
    """One memorised span of a document.

    Attributes
    ----------
    token_start, token_end : int
        Positions (the per-token table's ``position``: index in the document's token list, BOS
        included when the run prepended one) of the first token and one past the last.
    n_tokens : int
    char_start, char_end : int or None
        Character range ``text[char_start:char_end]`` covered by the span's tokens, when the text
        is known.
    mean_signal : float
        Mean of the raw (unsmoothed) signal over the span.
    max_smoothed : float
        Peak of the smoothed signal.
    score : float
        Area of the smoothed signal above the threshold, ``sum(smoothed - threshold)`` over the
        span's tokens: grows with both the length and the strength of the span (ranks spans).
    text : str or None
        ``text[char_start:char_end]``.
    """

    token_start: int
    token_end: int
    n_tokens: int
    mean_signal: float
    max_smoothed: float
    score: float
    char_start: Optional[int] = None
    char_end: Optional[int] = None
    text: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class DocumentSpans:
    """A document's per-token signal and its spans.

    Attributes
    ----------
    row : int
        The input record's index (``row`` of the score directory).
    id : str
    label : int or None
        Membership label of the sequences table, when it has one.
    positions : ndarray, shape (n,), int
        Positions of the scored tokens.
    tokens : ndarray, shape (n,), int
        Token ids.
    signal, smoothed : ndarray, shape (n,), float64
        Raw and smoothed membership signal.
    spans : list of Span
    text : str or None
        The document, when known.
    char_offsets : ndarray, shape (n, 2), int, or None
        ``[start, end)`` character range of each scored token in ``text``.
    token_text : list of str or None
        Each token decoded on its own (for display when the text is unknown).
    """

    row: int
    id: str
    label: Optional[int]
    positions: np.ndarray
    tokens: np.ndarray
    signal: np.ndarray
    smoothed: np.ndarray
    spans: list[Span] = field(default_factory=list)
    text: Optional[str] = None
    char_offsets: Optional[np.ndarray] = None
    token_text: Optional[list[str]] = None

    @property
    def n_tokens(self) -> int:
        return int(len(self.positions))

    @property
    def n_span_tokens(self) -> int:
        return int(sum(s.n_tokens for s in self.spans))

    def flagged(self) -> np.ndarray:
        """Bool mask ``(n,)`` of the tokens inside a span."""
        out = np.zeros(self.n_tokens, dtype=bool)
        index = {int(p): i for i, p in enumerate(self.positions)}
        for s in self.spans:
            out[index[s.token_start] : index[s.token_end - 1] + 1] = True
        return out

    def summary(self) -> dict[str, Any]:
        """Per-document figures of ``spans.json`` (without the per-token arrays)."""
        n = self.n_tokens
        return {
            "row": self.row,
            "id": self.id,
            "label": self.label,
            "n_tokens": n,
            "n_spans": len(self.spans),
            "n_span_tokens": self.n_span_tokens,
            "span_fraction": self.n_span_tokens / n if n else 0.0,
            "mean_signal": _finite_or_none(float(np.mean(self.signal))) if n else None,
            "max_smoothed": _finite_or_none(float(np.max(self.smoothed))) if n else None,
            "has_char_offsets": self.char_offsets is not None,
            "spans": [s.as_dict() for s in self.spans],
        }


@dataclass
class SpanReport:
    """Everything `locate_spans` found: the calibration and one `DocumentSpans` per document."""

    calibration: Calibration
    documents: list[DocumentSpans]
    score_dir: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        """The content of ``spans.json``."""
        docs = [d.summary() for d in self.documents]
        return {
            "score_dir": self.score_dir,
            "calibration": self.calibration.as_dict(),
            "n_documents": len(docs),
            "n_documents_with_spans": sum(1 for d in docs if d["n_spans"]),
            "n_spans": sum(d["n_spans"] for d in docs),
            "documents": docs,
        }


def _finite_or_none(x: float) -> Optional[float]:
    return x if math.isfinite(x) else None
