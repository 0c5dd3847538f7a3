"""Locating memorised spans: the per-token signal, its running mean, the threshold calibrated on
non-members and the runs above it (`spans_from_tables` on tables, `locate_spans` on score
directories). The method is described in `mia_fast.spans`."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from ..aggregate import SIGMA_FLOOR
from ..scoring.run import check_same_corpus, read_scores, read_texts
from .model import (
    _SIGNAL_BOUND,
    DEFAULT_ALPHA,
    DEFAULT_MERGE_GAP,
    DEFAULT_MIN_LENGTH,
    DEFAULT_WINDOW,
    SIGNALS,
    Calibration,
    DocumentSpans,
    PathLike,
    Span,
    SpanReport,
)
from .text import attach_texts, tokenizer_from_manifest

__all__ = ["token_signal", "running_mean", "calibrate_threshold", "find_spans", "spans_from_tables", "locate_spans"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# the span logic on arrays


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Centred running mean, truncated at both ends (each output averages the values present).

    Output ``i`` is the mean of ``values[max(0, i - (window - 1) // 2) : i + window // 2 + 1]``.

    Parameters
    ----------
    values : array_like, shape (n,)
    window : int
        Tokens per window, >= 1 (1 returns the values unchanged).

    Returns
    -------
    ndarray, shape (n,), float64
    """
    _check_positive_int("window", window)
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"values: expected a 1-D array, got shape {x.shape}")
    n = len(x)
    if n == 0:
        return x.copy()
    csum = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(n)
    lo = np.maximum(0, i - (window - 1) // 2)
    hi = np.minimum(n, i + window // 2 + 1)
    return (csum[hi] - csum[lo]) / (hi - lo)


def calibrate_threshold(null_values: np.ndarray, alpha: float) -> float:
    """The ``1 - alpha`` quantile of the null (non-member) smoothed signal.

    The quantile is the order statistic at or above it (``method="higher"``), so that at most a
    fraction ``alpha`` of the null values lies strictly above the threshold.

    Parameters
    ----------
    null_values : array_like, shape (m,)
        Smoothed signal of every non-member token; m must be at least ``1 / alpha`` (fewer
        tokens cannot resolve a false positive rate of ``alpha``).
    alpha : float
        Per-token false positive rate, in (0, 1).

    Returns
    -------
    float
    """
    _check_alpha(alpha)
    x = np.asarray(null_values, dtype=np.float64)
    x = x[np.isfinite(x)]
    needed = math.ceil(1.0 / alpha)
    if len(x) < needed:
        raise ValueError(
            f"alpha: a per-token false positive rate of {alpha:g} needs at least {needed} non-member tokens "
            f"to calibrate on, got {len(x)}; give more non-member documents or a larger alpha"
        )
    return float(np.quantile(x, 1.0 - alpha, method="higher"))


def find_spans(
    flagged: np.ndarray, *, merge_gap: int = DEFAULT_MERGE_GAP, min_length: int = DEFAULT_MIN_LENGTH
) -> list[tuple[int, int]]:
    """Spans of a document from its flagged tokens.

    Maximal runs of ``True``, merged when fewer than ``merge_gap`` unflagged tokens separate
    them, then kept when at least ``min_length`` tokens long (gaps included).

    Parameters
    ----------
    flagged : array_like of bool, shape (n,)
    merge_gap : int
        >= 0; 0 or 1 merges nothing (runs are separated by at least one token).
    min_length : int
        >= 1.

    Returns
    -------
    list of (start, end)
        Token indices into ``flagged``, ``end`` exclusive, in order.
    """
    _check_nonnegative_int("merge_gap", merge_gap)
    _check_positive_int("min_length", min_length)
    f = np.asarray(flagged)
    if f.ndim != 1:
        raise ValueError(f"flagged: expected a 1-D array, got shape {f.shape}")
    f = f.astype(bool)
    edges = np.diff(np.concatenate([[0], f.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    merged: list[list[int]] = []
    for s, e in zip(starts.tolist(), ends.tolist()):
        if merged and s - merged[-1][1] < merge_gap:
            merged[-1][1] = e
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged if e - s >= min_length]


def token_signal(target: Any, reference: Any = None, *, signal: str = "auto") -> tuple[np.ndarray, str]:
    """The per-token membership signal of a per-token table (higher = more likely memorised).

    Parameters
    ----------
    target : pandas.DataFrame
        Per-token table with ``logprob`` (and ``entropy``, ``var_logp`` for ``min_k_pp``).
    reference : pandas.DataFrame, optional
        The reference model's per-token table of the same tokens, row for row (see
        `spans_from_tables`, which checks the alignment).
    signal : {'auto', 'reference_diff', 'logprob', 'min_k_pp'}
        ``auto``: ``reference_diff`` with a reference, ``logprob`` without.

    Returns
    -------
    values : ndarray, shape (n,), float64
    signal : str
        The signal used.
    """
    if signal not in SIGNALS:
        raise ValueError(f"signal: expected one of {list(SIGNALS)}, got {signal!r}")
    if signal == "auto":
        signal = "reference_diff" if reference is not None else "logprob"
    if signal == "reference_diff":
        if reference is None:
            raise ValueError("signal: 'reference_diff' needs a reference model's per-token table, got none")
        if len(reference) != len(target):
            raise ValueError(f"reference: expected {len(target)} tokens (one per target token), got {len(reference)}")
        return target["logprob"].to_numpy(np.float64) - reference["logprob"].to_numpy(np.float64), signal
    if reference is not None:
        raise ValueError(f"signal: {signal!r} uses the target alone; drop the reference or use 'reference_diff'")
    logprob = target["logprob"].to_numpy(np.float64)
    if signal == "logprob":
        return logprob, signal
    missing = [c for c in ("entropy", "var_logp") if c not in target.columns]
    if missing:
        raise ValueError(f"signal: 'min_k_pp' needs the per-token columns entropy and var_logp, missing {missing}")
    mu = -target["entropy"].to_numpy(np.float64)
    sigma = np.sqrt(np.clip(target["var_logp"].to_numpy(np.float64), 0.0, None))
    return (logprob - mu) / np.maximum(sigma, SIGMA_FLOOR), signal


# --------------------------------------------------------------------------------------------
# argument checks


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected a positive int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value}")


def _check_nonnegative_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected a non-negative int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {value}")


def _check_alpha(alpha: object) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)):
        raise TypeError(f"alpha: expected a float in (0, 1), got {type(alpha).__name__}")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha: expected a float in (0, 1), got {alpha}")


def _check_threshold(threshold: object) -> Optional[float]:
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)):
        raise TypeError(f"threshold: expected a finite float, got {type(threshold).__name__}")
    if not math.isfinite(float(threshold)):
        raise ValueError(f"threshold: expected a finite float, got {threshold}")
    return float(threshold)


# --------------------------------------------------------------------------------------------
# tables -> documents


def _sorted_tokens(tokens: Any, name: str) -> Any:
    missing = [c for c in ("row", "id", "position", "token", "logprob") if c not in tokens.columns]
    if missing:
        raise ValueError(f"{name}: expected a per-token table with columns row, id, position, token, logprob; "
                         f"missing {missing}")
    return tokens.sort_values(["row", "position"], kind="stable").reset_index(drop=True)


def _check_same_tokens(target: Any, reference: Any) -> None:
    """Refuse a reference table that does not hold exactly the target's tokens."""
    hint = "score the same corpus with the same tokenizer and --first-token policy"
    t_rows, r_rows = np.unique(target["row"].to_numpy()), np.unique(reference["row"].to_numpy())
    if not np.array_equal(t_rows, r_rows):
        only_t = np.setdiff1d(t_rows, r_rows)[:5].tolist()
        only_r = np.setdiff1d(r_rows, t_rows)[:5].tolist()
        raise ValueError(f"reference: expected the target's documents, got different rows (target only: {only_t}, "
                         f"reference only: {only_r}); {hint}")
    t_ids, r_ids = target["id"].astype(str).to_numpy(), reference["id"].astype(str).to_numpy()
    same_len = len(target) == len(reference)
    if same_len:
        equal = ((target["row"].to_numpy() == reference["row"].to_numpy())
                 & (target["position"].to_numpy() == reference["position"].to_numpy())
                 & (target["token"].to_numpy() == reference["token"].to_numpy()) & (t_ids == r_ids))
        if equal.all():
            return
    t_groups = target.groupby("row", sort=True)
    r_groups = dict(list(reference.groupby("row", sort=True)))
    for row, t in t_groups:
        r = r_groups[row]
        if (len(t) != len(r) or not np.array_equal(t["token"].to_numpy(), r["token"].to_numpy())
                or not np.array_equal(t["position"].to_numpy(), r["position"].to_numpy())):
            raise ValueError(
                f"reference: expected the same tokens as the target, got different ones for row {row} "
                f"(id {t['id'].iloc[0]!r}: {len(t)} target tokens starting {t['token'].to_numpy()[:6].tolist()}, "
                f"{len(r)} reference tokens starting {r['token'].to_numpy()[:6].tolist()}); {hint}"
            )
        if str(t["id"].iloc[0]) != str(r["id"].iloc[0]):
            raise ValueError(f"reference: row {row} has id {str(r['id'].iloc[0])!r} in the reference and "
                             f"{str(t['id'].iloc[0])!r} in the target; {hint}")
    raise ValueError(f"reference: the per-token tables do not line up; {hint}")  # pragma: no cover


def _null_rows(sequences: Any, nonmember_label: Optional[int], nonmember_ids: Optional[Iterable[Any]]) -> tuple[
        Optional[np.ndarray], str]:
    """Rows of the known non-members, and where they come from (None, '' without any)."""
    if nonmember_label is not None and nonmember_ids is not None:
        raise ValueError("nonmember_ids: pass either nonmember_label or nonmember_ids, not both")
    if nonmember_ids is not None:
        if isinstance(nonmember_ids, (str, bytes)):
            raise TypeError("nonmember_ids: expected a collection of ids, got a single string")
        wanted = {str(i) for i in nonmember_ids}
        if not wanted:
            raise ValueError("nonmember_ids: expected at least one id, got none")
        ids = sequences["id"].astype(str)
        unknown = sorted(wanted - set(ids))
        if unknown:
            raise ValueError(f"nonmember_ids: {len(unknown)} ids are not in the score directory, e.g. {unknown[:5]}")
        return sequences.loc[ids.isin(wanted), "row"].to_numpy(), "nonmember_ids"
    if nonmember_label is not None:
        if isinstance(nonmember_label, bool) or not isinstance(nonmember_label, (int, np.integer)):
            raise TypeError(f"nonmember_label: expected an int label, got {type(nonmember_label).__name__}")
        if "label" not in sequences.columns:
            raise ValueError("nonmember_label: the sequences table has no label column (score with --label-field), "
                             "pass non-member ids instead")
        rows = sequences.loc[sequences["label"] == nonmember_label, "row"].to_numpy()
        if len(rows) == 0:
            raise ValueError(f"nonmember_label: no document has label {nonmember_label} "
                             f"(labels present: {sorted(sequences['label'].unique().tolist())})")
        return rows, "nonmember_label"
    return None, ""


def spans_from_tables(
    tokens: Any,
    sequences: Any,
    *,
    reference_tokens: Any = None,
    nonmember_label: Optional[int] = None,
    nonmember_ids: Optional[Iterable[Any]] = None,
    threshold: Optional[float] = None,
    window: int = DEFAULT_WINDOW,
    alpha: float = DEFAULT_ALPHA,
    merge_gap: int = DEFAULT_MERGE_GAP,
    min_length: int = DEFAULT_MIN_LENGTH,
    signal: str = "auto",
    reference_name: Optional[str] = None,
) -> SpanReport:
    """Memorised spans from per-token tables (without texts; see `mia_fast.spans.text.attach_texts`).

    Parameters
    ----------
    tokens : pandas.DataFrame
        The target's per-token table (``row``, ``id``, ``position``, ``token``, ``logprob``, ...).
    sequences : pandas.DataFrame
        The target's sequences table (``row``, ``id``, optionally ``label``).
    reference_tokens : pandas.DataFrame, optional
        A reference model's per-token table of the same corpus: same documents, positions and
        token ids (refused otherwise).
    nonmember_label : int, optional
        Documents with this ``label`` are the known non-members the threshold is calibrated on.
    nonmember_ids : iterable, optional
        Or the ids of the known non-members.
    threshold : float, optional
        An explicit threshold on the smoothed signal; without one, non-members are required.
        With both, the threshold is used and its false positive rate on the non-members reported.
    window : int
        Tokens of the running mean.
    alpha : float
        Per-token false positive rate on non-members, in (0, 1).
    merge_gap, min_length : int
        See `find_spans`.
    signal : {'auto', 'reference_diff', 'logprob', 'min_k_pp'}
        See `token_signal`.
    reference_name : str, optional
        Recorded in the calibration.

    Returns
    -------
    SpanReport
        Documents in ``row`` order.
    """
    _check_positive_int("window", window)
    _check_alpha(alpha)
    _check_nonnegative_int("merge_gap", merge_gap)
    _check_positive_int("min_length", min_length)
    threshold = _check_threshold(threshold)
    if "row" not in sequences.columns or "id" not in sequences.columns:
        raise ValueError("sequences: expected a sequences table with columns row and id")
    target = _sorted_tokens(tokens, "tokens")
    reference = None
    if reference_tokens is not None:
        reference = _sorted_tokens(reference_tokens, "reference_tokens")
        _check_same_tokens(target, reference)
    values, used = token_signal(target, reference, signal=signal)
    values = _finite_signal(values)
    null_rows, source = _null_rows(sequences, nonmember_label, nonmember_ids)
    if threshold is None and null_rows is None:
        raise ValueError(
            "threshold: no known non-members to calibrate on and no explicit threshold; an uncalibrated threshold "
            "is meaningless. Pass nonmember_label (a label column, e.g. 0) or nonmember_ids, or an explicit threshold"
        )

    rows = target["row"].to_numpy()
    bounds = np.flatnonzero(np.diff(rows)) + 1
    starts = np.concatenate([[0], bounds]).astype(np.int64) if len(rows) else np.zeros(0, dtype=np.int64)
    ends = np.concatenate([bounds, [len(rows)]]).astype(np.int64) if len(rows) else np.zeros(0, dtype=np.int64)
    smoothed = np.empty_like(values)
    for s, e in zip(starts.tolist(), ends.tolist()):
        smoothed[s:e] = running_mean(values[s:e], window)
    null = None if null_rows is None else smoothed[np.isin(rows, null_rows)]
    n_null_docs = 0 if null_rows is None else int(len(np.unique(rows[np.isin(rows, null_rows)])))
    source = "user" if threshold is not None else source  # an explicit threshold wins (its FPR is reported)
    calibration = _calibrate(
        null, threshold, Calibration(signal=used, threshold=float("nan"), source=source, window=window,
                                     merge_gap=merge_gap, min_length=min_length,
                                     alpha=None if source == "user" else alpha,
                                     n_null_documents=n_null_docs,
                                     nonmember_label=nonmember_label if nonmember_ids is None else None,
                                     reference=reference_name),
    )
    return SpanReport(calibration=calibration,
                      documents=_documents(target, sequences, values, smoothed, starts, ends, calibration))


def _calibrate(null: Optional[np.ndarray], threshold: Optional[float], settings: Calibration) -> Calibration:
    """``settings`` with the threshold (given, or from the null sample) and the null's figures."""
    if null is None:
        return dataclasses.replace(settings, threshold=float(threshold))
    if threshold is None:
        threshold = calibrate_threshold(null, settings.alpha)
    quantiles = {f"{q:g}": float(np.quantile(null, q)) for q in (0.5, 0.9, 0.99)} if len(null) else {}
    return dataclasses.replace(
        settings, threshold=float(threshold), n_null_tokens=int(len(null)), null_quantiles=quantiles,
        null_fpr=float(np.mean(null > threshold)) if len(null) else None,
    )


def _documents(target: Any, sequences: Any, values: np.ndarray, smoothed: np.ndarray, starts: np.ndarray,
               ends: np.ndarray, calibration: Calibration) -> list[DocumentSpans]:
    """One `DocumentSpans` per row of ``sequences`` (empty for a document without a scored token)."""
    labels: dict[int, Optional[int]] = {}
    if "label" in sequences.columns:
        labels = {int(r): int(v) for r, v in zip(sequences["row"], sequences["label"])}
    seq_ids = {int(r): str(i) for r, i in zip(sequences["row"], sequences["id"])}
    rows = target["row"].to_numpy()
    positions = target["position"].to_numpy().astype(np.int64)
    token_ids = target["token"].to_numpy().astype(np.int64)
    documents = []
    for s, e in zip(starts.tolist(), ends.tolist()):
        row = int(rows[s])
        doc = DocumentSpans(row=row, id=seq_ids.get(row, str(target["id"].iloc[s])), label=labels.get(row),
                            positions=positions[s:e], tokens=token_ids[s:e], signal=values[s:e],
                            smoothed=smoothed[s:e])
        doc.spans = _spans_of(doc, calibration)
        documents.append(doc)
    scored = {d.row for d in documents}
    for row, doc_id in seq_ids.items():  # e.g. a one-token text scored without a BOS
        if row not in scored:
            empty = np.zeros(0, dtype=np.int64)
            documents.append(DocumentSpans(row=row, id=doc_id, label=labels.get(row), positions=empty, tokens=empty,
                                           signal=np.zeros(0), smoothed=np.zeros(0)))
    documents.sort(key=lambda d: d.row)
    return documents


def _finite_signal(values: np.ndarray) -> np.ndarray:
    """The signal with infinities (a zero-probability token: log p = -inf) clipped to +-`_SIGNAL_BOUND`."""
    if np.isnan(values).any():
        raise ValueError("tokens: the per-token table holds NaN log-probabilities at scored positions")
    bad = ~np.isfinite(values)
    if bad.any():
        log.warning("%d tokens have an infinite signal (zero probability); clipped to +-%g", int(bad.sum()),
                    _SIGNAL_BOUND)
        values = np.clip(values, -_SIGNAL_BOUND, _SIGNAL_BOUND)
    return values


def _spans_of(doc: DocumentSpans, calibration: Calibration) -> list[Span]:
    thr = calibration.threshold
    out = []
    for s, e in find_spans(doc.smoothed > thr, merge_gap=calibration.merge_gap, min_length=calibration.min_length):
        out.append(Span(
            token_start=int(doc.positions[s]), token_end=int(doc.positions[e - 1]) + 1, n_tokens=e - s,
            mean_signal=float(np.mean(doc.signal[s:e])), max_smoothed=float(np.max(doc.smoothed[s:e])),
            score=float(np.sum(doc.smoothed[s:e] - thr)),
        ))
    return out


# --------------------------------------------------------------------------------------------
# score directories


def locate_spans(
    score_dir: PathLike,
    *,
    reference: Optional[PathLike] = None,
    nonmember_label: Optional[int] = None,
    nonmember_ids: Optional[Iterable[Any]] = None,
    threshold: Optional[float] = None,
    window: int = DEFAULT_WINDOW,
    alpha: float = DEFAULT_ALPHA,
    merge_gap: int = DEFAULT_MERGE_GAP,
    min_length: int = DEFAULT_MIN_LENGTH,
    signal: str = "auto",
    texts: Optional[Mapping[str, str]] = None,
    tokenizer: Any = None,
    allow_incomplete: bool = False,
) -> SpanReport:
    """Memorised spans of the documents of a score directory written with ``--per-token``.

    Parameters
    ----------
    score_dir : str or Path
        The target model's score directory.
    reference : str or Path, optional
        A reference model's score directory of the same corpus (same tokenizer and tokens).
    nonmember_label : int, optional
        Calibrate on the documents with this label. When neither this nor ``nonmember_ids``
        nor ``threshold`` is given and the sequences table has a label column, label 0 (the
        non-members, design.md §6) is used.
    nonmember_ids : iterable, optional
        Calibrate on the documents with these ids.
    threshold : float, optional
        Explicit threshold on the smoothed signal (no calibration needed).
    window, alpha, merge_gap, min_length, signal
        See `spans_from_tables`.
    texts : mapping of id -> str, optional
        The documents' texts (default: read again from the corpus file named in the manifest).
    tokenizer : transformers tokenizer, optional
        Default: the tokenizer of the model directory named in the manifest.
    allow_incomplete : bool
        Read the complete shards of directories whose run has not completed (see `read_scores`).

    Returns
    -------
    SpanReport
    """

    score_dir = Path(score_dir)
    tokens = read_scores(score_dir, "tokens", allow_incomplete=allow_incomplete)
    sequences = read_scores(score_dir, "sequences", allow_incomplete=allow_incomplete)
    manifest = tokens.attrs["manifest"]
    reference_tokens = None
    if reference is not None:
        reference_sequences = read_scores(reference, "sequences", allow_incomplete=allow_incomplete)
        check_same_corpus(sequences, reference_sequences, names=(str(score_dir), str(reference)))
        reference_tokens = read_scores(reference, "tokens", allow_incomplete=allow_incomplete)
    if (nonmember_label is None and nonmember_ids is None and threshold is None and "label" in sequences.columns):
        nonmember_label = 0
        log.info("calibrating on the documents labelled 0 (non-members)")
    report = spans_from_tables(
        tokens, sequences, reference_tokens=reference_tokens, nonmember_label=nonmember_label,
        nonmember_ids=nonmember_ids, threshold=threshold, window=window, alpha=alpha, merge_gap=merge_gap,
        min_length=min_length, signal=signal, reference_name=None if reference is None else str(reference),
    )
    report.score_dir = str(score_dir)
    rows = {d.row for d in report.documents}
    if texts is not None:
        by_id = {str(k): v for k, v in texts.items()}
        row_texts = {d.row: by_id[d.id] for d in report.documents if d.id in by_id}
    else:
        row_texts = read_texts(manifest, rows)
        if rows and not row_texts:
            log.warning("spans without character ranges (pass the texts directly)")
    if tokenizer is None:
        tokenizer = tokenizer_from_manifest(manifest)
    settings = manifest.get("settings") or {}
    attach_texts(report, row_texts, tokenizer, settings.get("bos_token_id"))
    return report
