"""Evaluation metrics of membership inference attacks: the only place a threshold rule lives.

Conventions (design.md §6)
--------------------------
* ``labels``: 1 (or True) = member, 0 (or False) = non-member; ``scores``: higher = more likely
  member. Both are 1-D with the same length, both classes present, scores finite.
* A threshold ``t`` predicts "member" for every sample with ``score >= t``. The ROC curve has one
  point per distinct score (plus the point (0, 0) at ``t = +inf``), so tied samples are always
  admitted together: no metric ever splits a tie.
* FPR bounds are compared on counts (``false positives <= fpr * n_nonmembers``, with a 1e-12
  relative slack for decimal bounds such as 0.3 * 10), never by taking the first ROC point above
  a bound.
* The resolution floor is ``1 / n_nonmembers``: a bound ``0 < fpr < 1 / n_nonmembers`` can only
  be met by zero false positives, so such a bound warns (`ResolutionWarning`). ``fpr = 0`` is
  allowed and means "TPR at FPR = 0" (members scored above every non-member), without a warning.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "ResolutionWarning",
    "roc_curve",
    "roc_auc",
    "tpr_at_fpr",
    "tpr_at_zero_fpr",
    "precision_at_recall",
    "balanced_accuracy",
    "bootstrap_auc_ci",
    "evaluate",
    "plot_roc",
    "DEFAULT_SHIFT_MARGIN",
    "ShiftCheck",
    "shift_check",
    "beats_blind_baseline",
]

RandomState = Union[None, int, np.random.Generator, np.random.SeedSequence]

# `shift_check` flags a set when the blind AUC's interval lies above 0.5 + this margin.
DEFAULT_SHIFT_MARGIN = 0.05

# Relative slack when a decimal bound meets integer counts: 0.3 * 10 = 3.0000000000000004 must
# admit 3 (a product's rounding error is about 1e-16 relative).
_COUNT_SLACK = 1e-12


def _count_floor(x: float) -> int:
    """``floor(x)`` forgiving the rounding error of ``x = fraction * count``."""
    return math.floor(x + _COUNT_SLACK * max(1.0, abs(x)))


def _count_ceil(x: float) -> int:
    """``ceil(x)`` forgiving the rounding error of ``x = fraction * count``."""
    return math.ceil(x - _COUNT_SLACK * max(1.0, abs(x)))


def _below_floor(fprs: Sequence[float], n_nonmembers: int) -> list[float]:
    """The bounds strictly between 0 and the resolution floor ``1 / n_nonmembers``."""
    return [f for f in fprs if f > 0.0 and _count_floor(f * n_nonmembers) == 0]
# Elements per array of one vectorised block of bootstrap resamples: cache-sized (512 KiB in
# float64), which ran about twice as fast as 32 MiB blocks on a 2-core machine; small sets still
# draw hundreds of resamples per block, large ones (65536 or more per class) one per block.
_BOOTSTRAP_BLOCK_ELEMENTS = 1 << 16


class ResolutionWarning(UserWarning):
    """An FPR bound below the resolution floor ``1 / n_nonmembers`` of the evaluation set."""


# --------------------------------------------------------------------------------------------
# validation


def _validate(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``(is_member bool (n,), scores float64 (n,))`` after checking every input rule."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels: expected a 1-D array, got shape {y.shape}")
    if y.dtype != np.bool_:
        if y.dtype.kind not in "iuf":
            raise TypeError(f"labels: expected 0/1 or bool values, got dtype {y.dtype}")
        bad = ~((y == 0) | (y == 1))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"labels: expected values in {{0, 1}} (1 = member), got {y[i].item()!r} at index {i} "
                f"({int(bad.sum())} invalid values)"
            )
        y = y == 1
    s = np.asarray(scores)
    if s.dtype.kind not in "biuf":
        raise TypeError(f"scores: expected real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if s.ndim != 1:
        raise ValueError(f"scores: expected a 1-D array, got shape {s.shape}")
    if s.shape[0] != y.shape[0]:
        raise ValueError(
            f"labels and scores: expected the same length, got {y.shape[0]} labels and "
            f"{s.shape[0]} scores"
        )
    finite = np.isfinite(s)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"scores: expected finite values, got {int((~finite).sum())} NaN/inf values "
            f"(first at index {i}: {s[i].item()!r})"
        )
    n_members = int(y.sum())
    if n_members == 0 or n_members == y.shape[0]:
        raise ValueError(
            f"labels: expected both members (1) and non-members (0), got {n_members} members "
            f"and {y.shape[0] - n_members} non-members"
        )
    return y, s


def _check_fraction(name: str, value: float, *, allow_zero: bool) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    value = float(value)
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not (low_ok and value <= 1.0):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name}: expected a value in {interval}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# the ROC counts every threshold metric reads


class _Roc:
    """Cumulative counts at every distinct threshold, highest first, with (0, 0) at ``+inf``.

    ``tp[i]`` and ``fp[i]`` count the members and non-members with ``score >= thresholds[i]``.
    """

    def __init__(self, y: np.ndarray, s: np.ndarray):
        order = np.argsort(-s, kind="mergesort")
        s_sorted = s[order]
        ends = np.append(np.flatnonzero(np.diff(s_sorted)), s_sorted.shape[0] - 1)
        tp = np.cumsum(y[order], dtype=np.int64)[ends]
        self.n_members = int(y.sum())
        self.n_nonmembers = int(y.shape[0] - self.n_members)
        self.tp = np.concatenate(([0], tp))
        self.fp = np.concatenate(([0], ends + 1 - tp))
        self.thresholds = np.concatenate(([np.inf], s_sorted[ends]))

    def tpr_at(self, fpr: float) -> tuple[float, float]:
        """Largest TPR whose FP count is within ``fpr``, and the smallest FPR reaching that TPR."""
        allowed = _count_floor(fpr * self.n_nonmembers)
        i = int(np.searchsorted(self.fp, allowed, side="right")) - 1  # fp is non-decreasing
        first = int(np.searchsorted(self.tp, self.tp[i], side="left"))  # so is tp
        return self.tp[i] / self.n_members, self.fp[first] / self.n_nonmembers


def _warn_below_floor(fprs: Sequence[float], n_nonmembers: int, stacklevel: int) -> None:
    below = _below_floor(fprs, n_nonmembers)
    if below:
        warnings.warn(
            f"fpr {', '.join(f'{f:g}' for f in below)} below the resolution floor "
            f"1/n_nonmembers = {1.0 / n_nonmembers:.3g} ({n_nonmembers} non-members): only "
            f"zero false positives meet such a bound, so the TPR reported is the TPR at FPR = 0",
            ResolutionWarning,
            stacklevel=stacklevel,
        )


# --------------------------------------------------------------------------------------------
# public metrics


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve with one point per distinct score (for plotting).

    Parameters
    ----------
    labels : array-like, shape (n,)
        1 = member, 0 = non-member.
    scores : array-like, shape (n,)
        Attack scores, higher = more likely member.

    Returns
    -------
    fpr, tpr : ndarray, shape (m + 1,), float64
        Rates at each threshold, starting at (0, 0); m is the number of distinct scores.
    thresholds : ndarray, shape (m + 1,), float64
        Decreasing; ``thresholds[0] = inf``. A threshold admits every sample with
        ``score >= threshold`` (the same points as ``sklearn.metrics.roc_curve(...,
        drop_intermediate=False)``).
    """
    roc = _Roc(*_validate(labels, scores))
    return roc.fp / roc.n_nonmembers, roc.tp / roc.n_members, roc.thresholds


def _mann_whitney_auc(y: np.ndarray, s: np.ndarray) -> float:
    """P(member score > non-member score) + ½ P(tie), with searchsorted counts."""
    neg = np.sort(s[~y])
    pos = s[y]
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (pos.shape[0] * neg.shape[0]))


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (Mann–Whitney U statistic, ties count one half).

    Parameters
    ----------
    labels : array-like, shape (n,)
        1 = member, 0 = non-member.
    scores : array-like, shape (n,)
        Higher = more likely member.

    Returns
    -------
    float
        In [0, 1]; 0.5 is chance, above 0.5 the scores rank members higher.
    """
    return _mann_whitney_auc(*_validate(labels, scores))


def tpr_at_fpr(labels: ArrayLike, scores: ArrayLike, fpr: float) -> tuple[float, float]:
    """Largest TPR over all thresholds whose empirical FPR is at most ``fpr``.

    Parameters
    ----------
    labels : array-like, shape (n,)
        1 = member, 0 = non-member.
    scores : array-like, shape (n,)
        Higher = more likely member.
    fpr : float in [0, 1]
        The bound. ``0`` gives the TPR at FPR = 0 (members scored above every non-member).

    Returns
    -------
    tpr : float
        The largest TPR among thresholds with FPR <= ``fpr`` (ties are admitted together).
    achieved_fpr : float
        The FPR of the highest threshold reaching that TPR (<= ``fpr``): the smallest FPR at
        which the TPR is attained. A bound within a relative 1e-12 of ``k / n_nonmembers``
        admits ``k`` false positives (``0.3 * 10`` rounds to 3.0000000000000004 and admits 3).

    Warns
    -----
    ResolutionWarning
        When ``0 < fpr < 1 / n_nonmembers``: below the resolution floor the only admissible
        threshold has no false positive, so the result is the TPR at FPR = 0.
    """
    fpr = _check_fraction("fpr", fpr, allow_zero=True)
    roc = _Roc(*_validate(labels, scores))
    _warn_below_floor([fpr], roc.n_nonmembers, stacklevel=2)
    tpr, achieved = roc.tpr_at(fpr)
    return float(tpr), float(achieved)


def tpr_at_zero_fpr(labels: ArrayLike, scores: ArrayLike) -> float:
    """TPR at FPR = 0: the share of members scored strictly above every non-member.

    Parameters
    ----------
    labels, scores : array-like, shape (n,)
        As in `tpr_at_fpr`.

    Returns
    -------
    float
    """
    return tpr_at_fpr(labels, scores, 0.0)[0]


def precision_at_recall(labels: ArrayLike, scores: ArrayLike, recall: float) -> float:
    """Precision at the first (highest) threshold whose recall (TPR) reaches ``recall``.

    Parameters
    ----------
    labels, scores : array-like, shape (n,)
        1 = member, 0 = non-member; higher score = more likely member.
    recall : float in (0, 1]
        The recall to reach.

    Returns
    -------
    float
        ``TP / (TP + FP)`` at that threshold.
    """
    recall = _check_fraction("recall", recall, allow_zero=False)
    roc = _Roc(*_validate(labels, scores))
    return _precision_at(roc, recall)


def _precision_at(roc: _Roc, recall: float) -> float:
    needed = _count_ceil(recall * roc.n_members)
    i = int(np.searchsorted(roc.tp, needed, side="left"))  # tp is non-decreasing, tp[-1] = n_members
    return float(roc.tp[i] / (roc.tp[i] + roc.fp[i]))


def balanced_accuracy(labels: ArrayLike, scores: ArrayLike) -> float:
    """Best balanced accuracy ``(TPR + TNR) / 2`` over all thresholds.

    The threshold is chosen on the same samples it is evaluated on, so this is an optimistic
    (in-sample) figure; it is at least 0.5 (the all-member or all-non-member threshold).

    Parameters
    ----------
    labels, scores : array-like, shape (n,)
        1 = member, 0 = non-member; higher score = more likely member.

    Returns
    -------
    float
    """
    return _balanced_accuracy(_Roc(*_validate(labels, scores)))


def _balanced_accuracy(roc: _Roc) -> float:
    return float(np.max(roc.tp / roc.n_members + 1.0 - roc.fp / roc.n_nonmembers) / 2.0)


def bootstrap_auc_ci(
    labels: ArrayLike,
    scores: ArrayLike,
    n: int = 1000,
    level: float = 0.95,
    random_state: RandomState = None,
) -> tuple[float, float]:
    """Percentile confidence interval of the ROC AUC from a stratified bootstrap.

    Each resample draws ``n_members`` members and ``n_nonmembers`` non-members with replacement,
    separately, so both class sizes stay fixed. The AUC of every resample is the Mann–Whitney
    statistic (ties count one half), computed for blocks of resamples at once: non-member draws
    become per-value counts whose cumulative sums give, for every member draw, the number of
    non-members below it and tied with it.

    Parameters
    ----------
    labels, scores : array-like, shape (n_samples,)
        1 = member, 0 = non-member; higher score = more likely member.
    n : int
        Number of bootstrap resamples (>= 1).
    level : float in (0, 1)
        Confidence level.
    random_state : None, int, numpy.random.Generator or SeedSequence
        Seed of ``numpy.random.default_rng``; an int gives reproducible intervals.

    Returns
    -------
    (low, high) : tuple of float
        The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled AUCs.
    """
    y, s = _validate(labels, scores)
    return _bootstrap_auc_ci(y, s, n, level, random_state)


def _bootstrap_auc_ci(y: np.ndarray, s: np.ndarray, n: int, level: float,
                      random_state: RandomState) -> tuple[float, float]:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: expected a positive integer number of resamples, got {n!r}")
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, (int, float, np.floating)) \
            or not 0.0 < float(level) < 1.0:
        raise ValueError(f"level: expected a confidence level in (0, 1), got {level!r}")
    aucs = _bootstrap_aucs(y, s, int(n), np.random.default_rng(random_state))
    tail = (1.0 - float(level)) / 2.0
    low, high = np.quantile(aucs, [tail, 1.0 - tail])
    return float(low), float(high)


def _bootstrap_aucs(y: np.ndarray, s: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """AUC of ``n`` stratified resamples, shape (n,).

    Per block of ``b`` resamples, ``rng`` draws the non-member indices ``(b, n_nonmembers)``
    and then the member indices ``(b, n_members)``.
    """
    unique_neg, neg_code = np.unique(s[~y], return_inverse=True)
    pos = s[y]
    n_pos, n_neg, n_unique = pos.shape[0], neg_code.shape[0], unique_neg.shape[0]
    lo = np.searchsorted(unique_neg, pos, side="left")  # index into cum: non-members below
    hi = np.searchsorted(unique_neg, pos, side="right")  # ... below or tied
    block = max(1, _BOOTSTRAP_BLOCK_ELEMENTS // max(n_pos, n_neg, n_unique + 1))
    aucs = np.empty(n)
    for start in range(0, n, block):
        b = min(block, n - start)
        codes = neg_code[rng.integers(0, n_neg, size=(b, n_neg))]
        codes += (np.arange(b) * n_unique)[:, None]
        counts = np.bincount(codes.ravel(), minlength=b * n_unique).reshape(b, n_unique)
        cum = np.zeros((b, n_unique + 1))
        np.cumsum(counts, axis=1, out=cum[:, 1:])
        # twice the Mann-Whitney count of each member against this resample's non-members
        twice = np.take(cum, lo, axis=1) + np.take(cum, hi, axis=1)  # (b, n_pos)
        draws = rng.integers(0, n_pos, size=(b, n_pos))
        draws += (np.arange(b) * n_pos)[:, None]
        aucs[start:start + b] = np.take(twice.ravel(), draws).sum(axis=1) / (2.0 * n_pos * n_neg)
    return aucs


def _percent(x: float) -> str:
    return f"{x * 100:.6g}%"


def evaluate(
    labels: ArrayLike,
    scores: ArrayLike,
    *,
    fprs: Sequence[float] = (0.001, 0.01, 0.1),
    recall: float = 0.5,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    random_state: RandomState = 0,
    texts: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
    """Every metric of an attack's scores in one JSON-ready dict.

    Parameters
    ----------
    labels : array-like, shape (n,)
        1 = member, 0 = non-member.
    scores : array-like, shape (n,)
        Higher = more likely member.
    fprs : sequence of float in [0, 1]
        FPR bounds for the TPR-at-FPR entries.
    recall : float in (0, 1]
        Recall for the precision entry.
    n_bootstrap : int
        Bootstrap resamples of the AUC interval; 0 skips it (``auc_ci`` is None).
    level : float in (0, 1)
        Confidence level of the AUC interval.
    random_state : None, int, numpy.random.Generator or SeedSequence
        Seed of the bootstrap (default 0: reproducible).
    texts : sequence of str, optional
        The samples' texts: adds ``shift_check`` (`shift_check`, the blind baseline that never
        sees the model) and ``beats_blind_baseline``.

    Returns
    -------
    dict
        ``n_members``, ``n_nonmembers``, ``fpr_floor`` (= 1 / n_nonmembers), ``auc``,
        ``auc_ci`` ([low, high] or None), ``auc_ci_level``, ``n_bootstrap``; for each bound ``f``
        of ``fprs``, written as a percentage (0.001 -> ``0.1%``): ``tpr@0.1%fpr`` and
        ``achieved_fpr@0.1%fpr``; ``fprs_below_floor`` (the bounds below ``fpr_floor``, whose
        TPR is the TPR at FPR = 0); ``tpr@0fpr``; ``precision@50%recall`` (for ``recall`` 0.5);
        ``balanced_accuracy`` (best over thresholds). Values are Python floats, ints and lists.

    Warns
    -----
    ResolutionWarning
        Once, listing the bounds of ``fprs`` below the resolution floor.
    """
    fprs = [_check_fraction("fprs", f, allow_zero=True) for f in fprs]
    recall = _check_fraction("recall", recall, allow_zero=False)
    if isinstance(n_bootstrap, (bool, np.bool_)) or not isinstance(n_bootstrap, (int, np.integer)) \
            or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap: expected a non-negative integer, got {n_bootstrap!r}")
    y, s = _validate(labels, scores)
    roc = _Roc(y, s)
    _warn_below_floor(fprs, roc.n_nonmembers, stacklevel=2)
    floor = 1.0 / roc.n_nonmembers
    out: dict[str, Any] = {
        "n_members": roc.n_members,
        "n_nonmembers": roc.n_nonmembers,
        "fpr_floor": floor,
        "auc": _mann_whitney_auc(y, s),
        "auc_ci": (list(_bootstrap_auc_ci(y, s, n_bootstrap, level, random_state))
                   if n_bootstrap > 0 else None),
        "auc_ci_level": float(level),
        "n_bootstrap": int(n_bootstrap),
    }
    for f in fprs:
        tpr, achieved = roc.tpr_at(f)
        out[f"tpr@{_percent(f)}fpr"] = float(tpr)
        out[f"achieved_fpr@{_percent(f)}fpr"] = float(achieved)
    out["fprs_below_floor"] = _below_floor(fprs, roc.n_nonmembers)
    out["tpr@0fpr"] = float(roc.tpr_at(0.0)[0])
    out[f"precision@{_percent(recall)}recall"] = _precision_at(roc, recall)
    out["balanced_accuracy"] = _balanced_accuracy(roc)
    if texts is not None:
        check = shift_check(texts, y, n_bootstrap=n_bootstrap or 1000, level=level, random_state=random_state)
        out["shift_check"] = check.to_dict()
        out["beats_blind_baseline"] = beats_blind_baseline(out["auc"], check)
    return out


@dataclass
class ShiftCheck:
    """Result of `shift_check` (JSON-ready through `to_dict`).

    Attributes
    ----------
    auc : float
        Out-of-fold AUC of the blind classifier (labels: 1 member, 0 non-member).
    auc_ci : list of float
        Its bootstrap interval [low, high] at ``level``.
    confounded : bool
        ``auc_ci[0] > 0.5 + margin``.
    method, margin, level, n_members, n_nonmembers, n_folds
    component_auc : dict of str to float
        Out-of-fold AUC of each feature family alone (word, char, simple): where the shift lies.
    member_ngrams, nonmember_ngrams : list of [str, float]
        The word n-grams with the largest weights towards each side, fitted on every text.
    """

    auc: float
    auc_ci: list
    confounded: bool
    method: str
    margin: float
    level: float
    n_members: int
    n_nonmembers: int
    n_folds: int
    component_auc: dict = field(default_factory=dict)
    member_ngrams: list = field(default_factory=list)
    nonmember_ngrams: list = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for reports and the command line."""
        verdict = ("CONFOUNDED: members and non-members differ in distribution; attack AUCs on this set "
                   "measure the shift too" if self.confounded else "not flagged")
        return (f"blind baseline (no model) AUC {self.auc:.3f} [{self.auc_ci[0]:.3f}, {self.auc_ci[1]:.3f}]: "
                f"{verdict}")


def shift_check(
    texts: Sequence[str],
    labels: ArrayLike,
    *,
    n_folds: int = 5,
    margin: float = DEFAULT_SHIFT_MARGIN,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    top_ngrams: int = 15,
    components: bool = True,
    random_state: RandomState = 0,
) -> ShiftCheck:
    """The distribution-shift check: can members be told from non-members without the model?

    A blind classifier (`mia_fast.shift.blind_scores`: TF-IDF n-grams and simple text features,
    logistic regression, out of fold) scores each text; its AUC comes with a bootstrap interval,
    and the set is ``confounded`` when the interval's lower end exceeds ``0.5 + margin``. On
    random splits of one pool (Python's documentation paragraphs, 60 + 60 texts) 0 of 40 seeds
    were flagged (blind AUC 0.39 to 0.59, 5th to 95th percentile); paragraphs against library
    docstrings give 0.95 [0.90, 0.97].

    Parameters
    ----------
    texts : sequence of str, length n
    labels : array-like of {0, 1}, shape (n,)
        1 = member, 0 = non-member; at least 5 of each.
    n_folds : int
        Stratified cross-validation folds.
    margin : float in [0, 0.5)
        How far above chance the interval must lie to flag the set (`DEFAULT_SHIFT_MARGIN`).
    n_bootstrap, level
        The AUC interval (`bootstrap_auc_ci`).
    top_ngrams : int
        Word n-grams reported for each side (what gives the shift away).
    components : bool
        Also the AUC of each feature family alone (``component_auc``; doubles the cost).
    random_state : None, int, numpy.random.Generator or SeedSequence

    Returns
    -------
    ShiftCheck
    """
    from .shift import METHOD, blind_scores

    if not 0 <= margin < 0.5:
        raise ValueError(f"margin: expected a number in [0, 0.5), got {margin!r}")
    seed = int(np.random.default_rng(random_state).integers(2**31 - 1))
    blind = blind_scores(texts, labels, n_folds=n_folds, top_ngrams=top_ngrams, components=components,
                         random_state=seed)
    y, s = _validate(labels, blind.oof["all"])
    low, high = _bootstrap_auc_ci(y, s, n_bootstrap, level, seed)
    return ShiftCheck(
        auc=_mann_whitney_auc(y, s), auc_ci=[float(low), float(high)], confounded=bool(low > 0.5 + margin),
        method=METHOD, margin=float(margin), level=float(level), n_members=int(y.sum()),
        n_nonmembers=int(len(y) - y.sum()), n_folds=blind.n_folds,
        component_auc={k: _mann_whitney_auc(y, v) for k, v in blind.oof.items() if k != "all"},
        member_ngrams=blind.member_ngrams, nonmember_ngrams=blind.nonmember_ngrams,
    )


def beats_blind_baseline(attack_auc: float, check: Optional[ShiftCheck]) -> Optional[bool]:
    """Whether an attack's AUC clearly exceeds the blind baseline's: above its interval's upper end."""
    if check is None:
        return None
    return bool(attack_auc > check.auc_ci[1])


def plot_roc(labels: ArrayLike, scores: ArrayLike, *, ax: Optional[Any] = None,
             label: Optional[str] = None, **plot_kwargs: Any) -> Any:
    """Log-log ROC curve down to the resolution floor (needs matplotlib).

    Points with FPR = 0 or TPR = 0 cannot sit on log axes and are left out; the x axis starts at
    the resolution floor ``1 / n_nonmembers``, below which no FPR can be measured. The chance
    diagonal is drawn dashed.

    Parameters
    ----------
    labels, scores : array-like, shape (n,)
        1 = member, 0 = non-member; higher score = more likely member.
    ax : matplotlib Axes, optional
        Where to draw (default: a new figure's axes).
    label : str, optional
        Legend label (the AUC is appended).
    **plot_kwargs
        Passed to ``ax.plot``.

    Returns
    -------
    matplotlib Axes
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plot_roc: needs matplotlib (pip install matplotlib)") from exc
    y, s = _validate(labels, scores)
    roc = _Roc(y, s)
    fpr, tpr = roc.fp / roc.n_nonmembers, roc.tp / roc.n_members
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3.5))
    keep = (fpr > 0) & (tpr > 0)
    text = f"AUC {_mann_whitney_auc(y, s):.3f}"
    ax.plot(fpr[keep], tpr[keep], label=f"{label} ({text})" if label else text, **plot_kwargs)
    floor = 1.0 / roc.n_nonmembers
    if not getattr(ax, "_mia_fast_chance", False):  # one chance diagonal per axes
        ax.plot([floor, 1.0], [floor, 1.0], ls="--", color="gray", lw=0.8)
        ax._mia_fast_chance = True
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(min(floor, 1.0 / roc.n_members), 1.0)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.legend(fontsize=8)
    return ax
