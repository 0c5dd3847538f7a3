"""Per-document membership decisions with stated error rates (design.md §6c).

An attack's score says "more or less member-like"; a decision needs a reference point. Here it is
a calibration set of documents known not to be members (scored by the same model): each tested
document gets the conformal p-value

    p(s) = (1 + #{calibration scores >= s}) / (n + 1)

(higher score = more member-like). When the tested non-members and the calibration documents are
exchangeable (drawn alike, e.g. from the same source and period), ``P(p <= t) <= t`` for every
``t``: calling ``member`` when ``p <= alpha`` wrongly calls each non-member with probability at
most ``alpha``. Across many documents, Benjamini-Hochberg q-values bound instead the expected share
of non-members among the documents called members (the false discovery rate): conformal p-values
sharing one calibration set are positively dependent (PRDS), under which BH is valid (Bates,
Candès, Lei, Romano & Sesia 2023, "Testing for outliers with conformal p-values").

Resolution: the smallest p-value is ``1 / (n + 1)``. No document can be called at ``alpha <
1 / (n + 1)``; with m documents tested, BH can call r of them only when ``1 / (n + 1) <= r * fdr /
m``, so a lone member needs ``n + 1 >= m / fdr``. Both limits warn (`ResolutionWarning`, as
`mia_fast.metrics` does for FPR bounds below ``1 / n_nonmembers``).

`decide` works on score vectors; `decide_table` runs an attack (`attack_scores`) on a score table
first, with the calibration given as a label value, a list of ids or a separate table.
`write_decisions` writes ``decisions.parquet`` and ``decision.json``.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
from numpy.typing import ArrayLike

from .. import atomic
from ..attacks import (
    GradNormAttack,
    LossAttack,
    MinK,
    MinKPlusPlus,
    PrefixAttack,
    ReCaLLAttack,
    ReferenceAttack,
    TemperatureAttack,
    ZlibAttack,
)
from ..metrics import ResolutionWarning

__all__ = [
    "Decisions",
    "conformal_p_values",
    "bh_q_values",
    "decide",
    "decide_table",
    "attack_scores",
    "available_attacks",
    "write_decisions",
]

# Relative slack when a decimal level meets a count-based p-value (0.05 * 20 = 1.0000000000000002).
_SLACK = 1e-12

_MIN_K = re.compile(r"^min_k_(0?\.\d+|1)$")
_MIN_K_PP = re.compile(r"^min_k_pp_(0?\.\d+|1)$")
_LOSS_PREFIX = re.compile(r"^loss_prefix(\d+|0\.\d+)$")
_LOSS_T = re.compile(r"^loss_t[0-9.eE+-]+$")

Calibration = Union[int, bool, Sequence[Any], np.ndarray, Any]


def _first(values: Sequence[Any], limit: int = 5) -> str:
    items = [str(v) for v in list(values)[:limit]]
    return ", ".join(items) + (", ..." if len(values) > limit else "")


def _vector(x: Any, name: str) -> np.ndarray:
    """``x`` as a non-empty 1-D float64 vector (NaN allowed here; callers check it)."""
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected a 1-D array of real numbers, got {type(x).__name__} ({exc})") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one score, got an empty array")
    return arr.astype(np.float64, copy=False)


def _check_level(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number in (0, 1), got {type(value).__name__}")
    v = float(value)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name}: expected a value in (0, 1), got {value!r}")
    return v


# --------------------------------------------------------------------------------------------
# p-values and q-values


def conformal_p_values(scores: ArrayLike, calibration: ArrayLike) -> np.ndarray:
    """Conformal p-values of ``scores`` against known non-members' ``calibration`` scores.

    Parameters
    ----------
    scores : array-like, shape (m,)
        Scores of the documents tested, higher = more member-like (no NaN).
    calibration : array-like, shape (n,)
        Scores of known non-members under the same attack (no NaN).

    Returns
    -------
    ndarray, shape (m,), float64
        ``(1 + #{calibration >= s}) / (n + 1)`` for each score ``s``: values in
        ``{1/(n+1), ..., 1}``. Ties count against the document (conservative).
    """
    s = _vector(scores, "scores")
    c = _vector(calibration, "calibration")
    for name, v in (("scores", s), ("calibration", c)):
        if np.isnan(v).any():
            raise ValueError(f"{name}: expected no NaN, got {int(np.isnan(v).sum())} (first at index "
                             f"{_first(np.flatnonzero(np.isnan(v)))})")
    c = np.sort(c)
    n = c.shape[0]
    n_ge = n - np.searchsorted(c, s, side="left")
    return (1.0 + n_ge) / (n + 1.0)


def bh_q_values(p_values: ArrayLike) -> np.ndarray:
    """Benjamini-Hochberg q-values (adjusted p-values).

    Parameters
    ----------
    p_values : array-like, shape (m,)
        Values in [0, 1].

    Returns
    -------
    ndarray, shape (m,), float64
        ``q_i = min(1, min_{j : p_j >= p_i} p_j * m / rank_j)``: monotone in ``p``, equal for tied
        p-values, capped at 1. Calling the documents with ``q <= fdr`` is the BH step-up procedure
        at level ``fdr``.
    """
    p = _vector(p_values, "p_values")
    if not ((p >= 0.0) & (p <= 1.0)).all():  # also catches NaN
        bad = np.flatnonzero(~((p >= 0.0) & (p <= 1.0)))
        raise ValueError(f"p_values: expected values in [0, 1], got {p[bad[0]]!r} at index {bad[0]} "
                         f"({bad.size} invalid values)")
    m = p.shape[0]
    order = np.argsort(p, kind="mergesort")
    ranked = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    q = np.empty(m)
    q[order] = q_sorted
    return q


# --------------------------------------------------------------------------------------------
# decisions


@dataclass
class Decisions:
    """Per-document decisions of `decide` (JSON summary through `to_dict`, table through `to_frame`).

    Attributes
    ----------
    ids : ndarray of str, shape (m,)
        The documents tested.
    scores : ndarray, shape (m,)
        Their attack scores (higher = more member-like).
    p_values : ndarray, shape (m,)
        Conformal p-values against the calibration set.
    q_values : ndarray, shape (m,)
        Benjamini-Hochberg q-values over the m documents.
    member : ndarray of bool, shape (m,)
        The verdict: ``p <= alpha``, or ``q <= fdr``.
    alpha, fdr : float or None
        The level used (exactly one is set).
    n_calibration : int
        Number n of calibration scores.
    threshold : float
        A document is called member iff its score is strictly above it; ``+inf`` when none can be,
        ``-inf`` when every score would be.
    attack : str or None
        The attack that produced the scores (for the record).
    calibration_source : str or None
        How the calibration set was chosen (for the record).
    """

    ids: np.ndarray
    scores: np.ndarray
    p_values: np.ndarray
    q_values: np.ndarray
    member: np.ndarray
    alpha: Optional[float]
    fdr: Optional[float]
    n_calibration: int
    threshold: float
    attack: Optional[str] = None
    calibration_source: Optional[str] = None

    @property
    def p_value_floor(self) -> float:
        """The smallest p-value the calibration size allows, ``1 / (n + 1)``."""
        return 1.0 / (self.n_calibration + 1)

    @property
    def n_tested(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n_member(self) -> int:
        return int(self.member.sum())

    @property
    def min_callable(self) -> Optional[int]:
        """FDR mode: the fewest documents BH can call at once, ``ceil(m / (fdr (n + 1)))`` (None at alpha)."""
        if self.fdr is None:
            return None
        return _min_callable(self.n_tested, self.n_calibration, self.fdr)

    def to_frame(self) -> Any:
        """The per-document table: ``id``, ``score``, ``p_value``, ``q_value``, ``member`` (pandas)."""
        import pandas as pd

        return pd.DataFrame({"id": self.ids.astype(str), "score": self.scores, "p_value": self.p_values,
                             "q_value": self.q_values, "member": self.member.astype(bool)})

    def to_dict(self) -> dict[str, Any]:
        """The summary written to ``decision.json`` (JSON-ready; infinite thresholds become None)."""
        finite = math.isfinite(self.threshold)
        if self.fdr is not None:
            rate = (f"Benjamini-Hochberg at FDR {self.fdr:g}: the expected share of non-members among the documents "
                    f"called member is at most {self.fdr:g}")
        else:
            rate = (f"per-document test at alpha {self.alpha:g}: each non-member is called member with "
                    f"probability at most {self.alpha:g}")
        out: dict[str, Any] = {
            "attack": self.attack,
            "calibration": self.calibration_source,
            "n_calibration": self.n_calibration,
            "n_tested": self.n_tested,
            "n_member": self.n_member,
            "n_not_member": self.n_tested - self.n_member,
            "alpha": self.alpha,
            "fdr": self.fdr,
            "threshold": float(self.threshold) if finite else None,
            "threshold_rule": "member iff score > threshold" if finite else (
                "no document can be called member at this level and calibration size" if self.threshold > 0
                else "every document is called member"),
            "p_value_floor": self.p_value_floor,
            "min_callable": self.min_callable,
            "error_rate": rate,
            "p_value": "conformal: (1 + #{calibration scores >= score}) / (n_calibration + 1)",
            "assumption": ("the calibration documents are known non-members exchangeable with the tested "
                           "non-members (same source, period and preprocessing, scored by the same model)"),
        }
        return out


def _min_callable(m: int, n: int, fdr: float) -> int:
    """Smallest r with ``1 / (n + 1) <= r * fdr / m`` (BH cannot call fewer documents than this)."""
    x = m / (fdr * (n + 1))
    return max(1, math.ceil(x - _SLACK * max(1.0, x)))


def _threshold(calibration: np.ndarray, k: int) -> float:
    """The score above which at most ``k`` calibration scores are >= it: member iff ``score > threshold``."""
    n = calibration.shape[0]
    if k < 0:
        return math.inf
    if k >= n:
        return -math.inf
    return float(np.sort(calibration)[::-1][k])


def decide(
    scores: ArrayLike,
    calibration: ArrayLike,
    *,
    alpha: Optional[float] = None,
    fdr: Optional[float] = None,
    ids: Optional[Sequence[Any]] = None,
    attack: Optional[str] = None,
    calibration_source: Optional[str] = None,
) -> Decisions:
    """Test each document against a calibration set of known non-members.

    Parameters
    ----------
    scores : array-like, shape (m,)
        Attack scores of the documents tested, higher = more member-like (``+-inf`` allowed,
        NaN not).
    calibration : array-like, shape (n,)
        The same attack's scores of known non-members, not among the documents tested.
    alpha : float in (0, 1), optional
        Call ``member`` when ``p <= alpha`` (per-document type I error ``alpha``).
    fdr : float in (0, 1), optional
        Call ``member`` when the BH q-value ``<= fdr`` (false discovery rate ``fdr``). Give exactly
        one of ``alpha`` and ``fdr``.
    ids : sequence, length m, optional
        Document ids (default ``"0"``, ``"1"``, ...), named in errors and written out.
    attack, calibration_source : str, optional
        Recorded in the result.

    Returns
    -------
    Decisions

    Warns
    -----
    ResolutionWarning
        When ``1 / (n + 1) > alpha`` (no document can be called); in FDR mode when ``1 / (n + 1) >
        fdr`` (none can be called) or when BH can only call documents by groups of at least
        ``ceil(m / (fdr (n + 1))) > 1`` (a lone member cannot be called).
    """
    if (alpha is None) == (fdr is None):
        raise ValueError(f"alpha, fdr: expected exactly one of them, got alpha={alpha!r} and fdr={fdr!r}")
    alpha = None if alpha is None else _check_level("alpha", alpha)
    fdr = None if fdr is None else _check_level("fdr", fdr)
    s = _vector(scores, "scores")
    m = s.shape[0]
    if ids is None:
        id_arr = np.arange(m).astype(str)
    else:
        id_arr = np.asarray([str(i) for i in ids], dtype=object).astype(str)
        if id_arr.shape != (m,):
            raise ValueError(f"ids: expected one id per score ({m}), got {id_arr.shape[0]}")
    nan = np.isnan(s)
    if nan.any():
        raise ValueError(f"scores: expected no NaN, got {int(nan.sum())} documents with a NaN score (ids: "
                         f"{_first(id_arr[nan])})")
    c = _vector(calibration, "calibration")
    if np.isnan(c).any():
        raise ValueError(f"calibration: expected no NaN, got {int(np.isnan(c).sum())} (first at index "
                         f"{_first(np.flatnonzero(np.isnan(c)))})")
    n = c.shape[0]
    p = conformal_p_values(s, c)
    q = bh_q_values(p)
    floor = 1.0 / (n + 1)
    if alpha is not None:
        # p <= alpha  <=>  #{c >= s} <= floor(alpha (n + 1)) - 1, decided on counts (no rounding surprise)
        k = math.floor(alpha * (n + 1) * (1 + _SLACK)) - 1
        n_ge = np.rint(p * (n + 1)).astype(np.int64) - 1
        member = n_ge <= k
        if floor > alpha:
            warnings.warn(
                f"alpha {alpha:g} is below the smallest p-value 1/(n+1) = {floor:.3g} that {n} calibration "
                f"documents allow: no document can be called member (use at least {math.ceil(1 / alpha) - 1} "
                "calibration documents)", ResolutionWarning, stacklevel=2)
    else:
        member = q <= fdr * (1 + _SLACK)
        if member.any():
            k = int(np.rint(p[member].max() * (n + 1))) - 1
        else:
            k = -1
        r = _min_callable(m, n, fdr)
        if floor > fdr:
            warnings.warn(
                f"fdr {fdr:g} is below the smallest p-value 1/(n+1) = {floor:.3g} that {n} calibration documents "
                f"allow: no document can be called member (use at least {math.ceil(1 / fdr) - 1} calibration "
                "documents)", ResolutionWarning, stacklevel=2)
        elif r > 1:
            warnings.warn(
                f"with {n} calibration documents and {m} documents tested, Benjamini-Hochberg at fdr {fdr:g} can "
                f"only call groups of at least {r} documents (each needs p <= r * fdr / m and p >= 1/(n+1)); a "
                f"lone member cannot be called (use at least {math.ceil(m / fdr) - 1} calibration documents "
                "for that)", ResolutionWarning, stacklevel=2)
    return Decisions(ids=id_arr, scores=s, p_values=p, q_values=q, member=np.asarray(member, dtype=bool),
                     alpha=alpha, fdr=fdr, n_calibration=n, threshold=_threshold(c, k), attack=attack,
                     calibration_source=calibration_source)


# --------------------------------------------------------------------------------------------
# attacks on score tables


def _columns(table: Any) -> list[str]:
    return [str(c) for c in table.columns]


def _table_ids(table: Any, name: str) -> np.ndarray:
    """The table's ``id`` column as str (row numbers without one), checked unique."""
    if "id" not in _columns(table):
        return np.arange(len(table)).astype(str)
    ids = table["id"].astype(str).to_numpy()
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{name}['id']: expected unique ids, got {int((counts > 1).sum())} repeated ids (e.g. "
                         f"{_first(values[counts > 1], 3)})")
    return ids


def available_attacks(table: Any, references: Optional[Sequence[Any]] = None) -> list[str]:
    """The attack names `attack_scores` can run on ``table`` (and ``references``).

    Parameters
    ----------
    table : DataFrame
        A per-sequence score table.
    references : sequence of DataFrame, optional
        Reference models' tables (enable ``reference_loss_diff`` and ``reference_logppl_ratio``).

    Returns
    -------
    list of str
    """
    cols = _columns(table)
    out = [c for c in ("loss", "zlib") if c in cols]
    out += [c for c in cols if _MIN_K.match(c) or _MIN_K_PP.match(c)]
    out += [c for c in cols if _LOSS_PREFIX.match(c) and c != "loss_prefix0"]
    out += [c for c in ("recall", "grad_norm") if c in cols]
    if any(_LOSS_T.match(c) for c in cols):
        out.append("temperature")
    if references and "loss" in cols:
        out += ["reference_loss_diff", "reference_logppl_ratio"]
    return out


def _attack(name: str) -> tuple[Any, list[str]]:
    """The attack object for ``name`` and the columns it reads (beyond references)."""
    if name == "loss":
        return LossAttack(), ["loss"]
    if name == "zlib":
        return ZlibAttack(), ["zlib"]
    if _MIN_K_PP.match(name):
        return MinKPlusPlus(float(name[len("min_k_pp_"):])), [name]
    if _MIN_K.match(name):
        return MinK(float(name[len("min_k_"):])), [name]
    if _LOSS_PREFIX.match(name):
        tag = name[len("loss_prefix"):]
        return PrefixAttack(float(tag) if "." in tag else int(tag)), [name]
    if name == "recall":
        return ReCaLLAttack(), ["recall"]
    if name == "grad_norm":
        return GradNormAttack(), ["grad_norm"]
    if name == "temperature":
        return TemperatureAttack(), []
    if name in ("reference_loss_diff", "reference_logppl_ratio"):
        return ReferenceAttack(name[len("reference_"):]), ["loss"]
    raise KeyError(name)


def _check_no_nan(table: Any, cols: Sequence[str], ids: np.ndarray, name: str) -> None:
    for col in cols:
        if col not in _columns(table):
            continue  # the attack names the missing column
        values = np.asarray(table[col], dtype=np.float64)
        bad = np.isnan(values)
        if bad.any():
            raise ValueError(f"{name}[{col!r}]: expected no NaN, got {int(bad.sum())} documents with NaN (ids: "
                             f"{_first(ids[bad])}); drop them or choose another attack")


def _mean_reference_loss(references: Sequence[Any], ids: np.ndarray, name: str) -> np.ndarray:
    losses = []
    for k, ref in enumerate(references):
        rname = f"references[{k}]"
        if "loss" not in _columns(ref):
            raise ValueError(f"{rname}: expected a 'loss' column, got columns {_columns(ref)}")
        rids = _table_ids(ref, rname)
        index = {v: i for i, v in enumerate(rids)}
        missing = [i for i in ids if i not in index]
        if missing:
            raise ValueError(f"{rname}: expected a row for every id of {name}, got {len(missing)} missing (ids: "
                             f"{_first(missing)})")
        loss = np.asarray(ref["loss"], dtype=np.float64)[[index[i] for i in ids]]
        bad = np.isnan(loss)
        if bad.any():
            raise ValueError(f"{rname}['loss']: expected no NaN, got {int(bad.sum())} (ids: {_first(ids[bad])})")
        losses.append(loss)
    return np.mean(losses, axis=0)


def attack_scores(table: Any, attack: str, references: Optional[Sequence[Any]] = None, *,
                  name: str = "table") -> np.ndarray:
    """Run a named attack on a score table: higher = more member-like.

    Parameters
    ----------
    table : DataFrame, N rows
        A per-sequence score table (``mia_fast.scoring.run.read_scores``).
    attack : str
        One of `available_attacks`: ``loss``, ``zlib``, ``min_k_{k}``, ``min_k_pp_{k}``,
        ``loss_prefix{k}``, ``recall``, ``grad_norm``, ``temperature``, ``reference_loss_diff``,
        ``reference_logppl_ratio`` (the last two need ``references``; their loss is the mean over
        the reference models, as in ``mia-fast attack``).
    references : sequence of DataFrame, optional
        Reference models' tables holding (at least) every id of ``table``, in any order.
    name : str
        How ``table`` is named in errors.

    Returns
    -------
    ndarray, shape (N,), float64
        In the table's row order.
    """
    if not hasattr(table, "columns"):
        raise TypeError(f"{name}: expected a pandas DataFrame, got {type(table).__name__}")
    if not isinstance(attack, str):
        raise TypeError(f"attack: expected an attack name (str), got {type(attack).__name__}")
    try:
        est, cols = _attack(attack)
    except KeyError:
        raise ValueError(f"attack: expected one of {available_attacks(table, references)} for {name}, got "
                         f"{attack!r}") from None
    if attack.startswith("reference_") and not references:
        raise ValueError(f"attack: {attack!r} needs reference models' tables (references), got none")
    ids = _table_ids(table, name)
    if attack == "temperature":
        cols = [c for c in _columns(table) if _LOSS_T.match(c)] + ["loss"]
    _check_no_nan(table, cols, ids, name)
    if attack.startswith("reference_"):
        import pandas as pd

        ref = pd.DataFrame({"id": ids, "loss": _mean_reference_loss(references or [], ids, name)})
        target = pd.DataFrame({"id": ids, "loss": np.asarray(table["loss"], dtype=np.float64)})
        return np.asarray(est.fit(ref).score_samples(target), dtype=np.float64)
    return np.asarray(est.fit().score_samples(table), dtype=np.float64)


def _describe_calibration(calibration: Any) -> str:
    if isinstance(calibration, (bool, np.bool_, int, np.integer)):
        return f"label == {int(calibration)}"
    if hasattr(calibration, "columns"):
        return "separate table"
    return "ids"


def decide_table(
    target: Any,
    attack: str,
    calibration: Calibration,
    *,
    references: Optional[Sequence[Any]] = None,
    alpha: Optional[float] = None,
    fdr: Optional[float] = None,
    label_column: str = "label",
) -> Decisions:
    """Run ``attack`` on a score table and test its documents against known non-members.

    Parameters
    ----------
    target : DataFrame, N rows
        The target model's per-sequence score table (column ``id``; ``label`` when the calibration
        is a label value).
    attack : str
        An attack name (`available_attacks`).
    calibration : int, sequence of ids, or DataFrame
        The known non-members: a label value (``0``: the rows whose ``label_column`` equals it), a
        list of ids of ``target``, or a separate table scored by the same model. From the same
        table, the calibration rows are not tested; from a separate table, every target row is
        tested (the two tables must share no id).
    references : sequence of DataFrame, optional
        Reference models' tables for the ``reference_*`` attacks, holding every id scored (the
        target's and, with a separate calibration table, its ids too).
    alpha, fdr : float, optional
        Exactly one: see `decide`.
    label_column : str
        The label column for a label-value calibration.

    Returns
    -------
    Decisions
        Over the documents tested, in the target's row order.
    """
    if (alpha is None) == (fdr is None):
        raise ValueError(f"alpha, fdr: expected exactly one of them, got alpha={alpha!r} and fdr={fdr!r}")
    if not hasattr(target, "columns"):
        raise TypeError(f"target: expected a pandas DataFrame, got {type(target).__name__}")
    ids = _table_ids(target, "target")
    source = _describe_calibration(calibration)
    if hasattr(calibration, "columns"):
        cal_ids = _table_ids(calibration, "calibration")
        shared = np.intersect1d(ids, cal_ids)
        if shared.size:
            raise ValueError(f"calibration: expected no id shared with target, got {shared.size} shared (ids: "
                             f"{_first(shared)})")
        cal_scores = attack_scores(calibration, attack, references, name="calibration")
        test_scores = attack_scores(target, attack, references, name="target")
        test_ids = ids
    else:
        if isinstance(calibration, (bool, np.bool_, int, np.integer)):
            if label_column not in _columns(target):
                raise ValueError(f"calibration: a label value ({calibration!r}) needs a {label_column!r} column in "
                                 f"target, got columns {_columns(target)}")
            labels = np.asarray(target[label_column])
            is_cal = labels == calibration
        elif isinstance(calibration, (str, bytes, Mapping)) or not hasattr(calibration, "__iter__"):
            raise TypeError(f"calibration: expected a label value (int), a sequence of ids or a DataFrame, got "
                            f"{type(calibration).__name__}")
        else:
            wanted = np.asarray([str(i) for i in calibration], dtype=object).astype(str)
            missing = np.setdiff1d(wanted, ids)
            if missing.size:
                raise ValueError(f"calibration: expected ids of target, got {missing.size} ids not in it (ids: "
                                 f"{_first(missing)})")
            is_cal = np.isin(ids, wanted)
        if not is_cal.any():
            raise ValueError(f"calibration: expected at least one calibration document, got none ({source})")
        if is_cal.all():
            raise ValueError(f"calibration: expected documents left to test, got every row of target as "
                             f"calibration ({source})")
        scores = attack_scores(target, attack, references, name="target")
        cal_scores, test_scores, test_ids = scores[is_cal], scores[~is_cal], ids[~is_cal]
    return decide(test_scores, cal_scores, alpha=alpha, fdr=fdr, ids=test_ids, attack=attack,
                  calibration_source=source)


# --------------------------------------------------------------------------------------------
# output


def write_decisions(decisions: Decisions, out_dir: Union[str, Path]) -> dict[str, Any]:
    """Write ``decisions.parquet`` (id, score, p_value, q_value, member) and ``decision.json``.

    Parameters
    ----------
    decisions : Decisions
    out_dir : str or Path
        Created if needed; files are written atomically.

    Returns
    -------
    dict
        What ``decision.json`` holds.
    """
    if not isinstance(decisions, Decisions):
        raise TypeError(f"decisions: expected a Decisions (from decide), got {type(decisions).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = atomic.temporary_path(out / "decisions.parquet")
    decisions.to_frame().to_parquet(tmp, index=False)
    atomic.commit(tmp, out / "decisions.parquet")
    payload = decisions.to_dict()
    atomic.write_bytes(out / "decision.json", (json.dumps(payload, indent=2) + "\n").encode("utf-8"))
    return payload
