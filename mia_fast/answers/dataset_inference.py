"""Dataset inference: was this *set* of documents trained on? (Maini et al. 2024, design.md §6c)

Single documents rarely give strong evidence; a set of them can. Following Maini, Jia, Papernot &
Dziedzic (2024, "LLM Dataset Inference: Did you train on my dataset?"), the owner of a suspect set
also holds a validation set: documents drawn from the same distribution that the model cannot have
seen (e.g. written after its cutoff, or held back). Under the null hypothesis "the model did not
train on the suspect set", the two sets are exchangeable to the model, so no statistic of the
model can tell them apart beyond chance.

Procedure (`dataset_inference`):

1. Features: every per-document statistic column both tables have (`STATISTICS`: ``loss``,
   ``min_k_*``, ``min_k_pp_*``, ``zlib``, ``entropy_mean``, ``phi_mean``, ``top1_acc``,
   ``log_rank_mean``, ``loss_t*``, ``entropy_t*``, ``loss_prefix*``, ``recall``, ``grad_norm``),
   each oriented so that higher = more member-like (``-loss``, ``-log grad_norm``, ...), plus,
   with reference models, the target-minus-reference differences of those statistics and the
   ``loss / reference loss`` ratio. Other columns are ignored (metadata such as a date would test
   the documents, not the model); columns with NaN or constant values are dropped with a note.
2. Each set is split at random into parts A and B. On A, a logistic regression (L2, standardised
   features, balanced classes) learns which combination separates suspect from validation; it
   scores the B documents, which it never saw.
3. One-sided test on B that the suspect scores exceed the validation scores: Welch's t-test (the
   paper's) or a Monte-Carlo permutation test of the Welch statistic, ``p = (1 + #{permuted >=
   observed}) / (1 + R)``, exact in level under exchangeability with no normality assumption
   (``test='auto'`` takes it when a set has fewer than `AUTO_PERMUTATION_BELOW` documents in B).
4. Steps 2-3 run over ``n_splits`` random splits. Their p-values are dependent (the same
   documents), so they are combined by ``min(1, 2 x median)`` (Meinshausen, Meier & Bühlmann
   2009, quantile aggregation at gamma = 1/2): valid under *any* dependence, at a cost of at
   most a factor 2, with no assumption to check. The Cauchy combination is sharper but valid only
   asymptotically (small alpha) and under conditions on the dependence; picking the best split
   would not be valid at all.
5. Control: the same procedure on the validation set alone, its two random halves posing as
   suspect and validation (``control_p_value``). The halves are exchangeable by construction, so
   a rejection at ``alpha`` says the test is not calibrated on these documents (too few, heavy
   tails, duplicates...) and the result is flagged (``control_valid`` False). It cannot check the
   assumption that the suspect and validation sets come from the same distribution: that is
   the user's to ensure (and ``mia-fast shift-check`` to probe).
6. Power: the p-value against the number of documents used (`DEFAULT_CURVE_SIZES` suspect
   documents, the same fraction of validation documents, ending at all of them).

`write_dataset_inference` writes ``result.json``, ``report.md`` and ``p_value_vs_documents.png``.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from .. import atomic
from ..metrics import roc_auc

__all__ = [
    "DatasetInferenceResult",
    "dataset_inference",
    "document_features",
    "combine_p_values",
    "permutation_test",
    "welch_test",
    "write_dataset_inference",
    "STATISTICS",
    "MIN_PER_PART",
    "AUTO_PERMUTATION_BELOW",
    "DEFAULT_CURVE_SIZES",
]

RandomState = Union[None, int, np.random.Generator, np.random.SeedSequence]

#: Each set must keep at least this many documents in each part (A and B) of a split.
MIN_PER_PART = 10
#: ``test='auto'`` uses the permutation test when a set has fewer documents than this in part B.
AUTO_PERMUTATION_BELOW = 200
#: Suspect-set sizes of the p-value curve (those below the suspect set's size; the last point is all).
DEFAULT_CURVE_SIZES = (25, 50, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200)
_TESTS = ("auto", "welch", "permutation")
_CONTROL_SPLITS = ("random", "ordered")
COMBINATION = "min(1, 2 x median) over splits (Meinshausen, Meier & Bühlmann 2009): valid under any dependence"

# Per-document statistics of a score table and how each is oriented (higher = more member-like):
# (pattern, sign, transform). Columns that are not statistics (id, row, label, n_tokens,
# n_sigma_clipped, text_hash, n_tokens_prefix*) match nothing here and are never features.
STATISTICS: tuple[tuple[str, float, str], ...] = (
    (r"loss", -1.0, ""),
    (r"zlib", -1.0, ""),
    (r"min_k_pp_[0-9.]+", 1.0, ""),
    (r"min_k_[0-9.]+", 1.0, ""),
    (r"entropy_mean", -1.0, ""),
    (r"phi_mean", 1.0, ""),
    (r"top1_acc", 1.0, ""),
    (r"log_rank_mean", -1.0, ""),
    (r"loss_t[0-9.eE+-]+", -1.0, ""),
    (r"entropy_t[0-9.eE+-]+", -1.0, ""),
    (r"loss_prefix[0-9.]+", -1.0, ""),
    (r"recall", 1.0, ""),
    (r"loss_context", -1.0, ""),
    (r"loss_member_context", -1.0, ""),
    (r"loss_lowercase", 1.0, ""),
    (r"loss_neighbours", 1.0, ""),
    (r"pac", -1.0, ""),
    (r"dc_pdd", 1.0, ""),
    (r"samia", 1.0, ""),
    (r"samia_zlib", 1.0, ""),
    (r"grad_norm", -1.0, "log"),
)
_NOT_FEATURES = re.compile(r"^(id|row|label|n_tokens|n_sigma_clipped|text_hash|n_tokens_prefix.*|n_neighbours)$")


def _orientation(col: str) -> Optional[tuple[float, str]]:
    for pattern, sign, transform in STATISTICS:
        if re.fullmatch(pattern, col):
            return sign, transform
    return None


def _oriented_name(col: str, sign: float, transform: str) -> str:
    inner = f"log {col}" if transform == "log" else col
    return inner if sign > 0 else f"-{inner}"


def _first(values: Sequence[Any], limit: int = 5) -> str:
    items = [str(v) for v in list(values)[:limit]]
    return ", ".join(items) + (", ..." if len(values) > limit else "")


def _columns(table: Any) -> list[str]:
    return [str(c) for c in table.columns]


# --------------------------------------------------------------------------------------------
# statistical building blocks


def welch_test(x: np.ndarray, y: np.ndarray) -> float:
    """One-sided Welch t-test p-value of ``mean(x) > mean(y)``.

    Parameters
    ----------
    x, y : ndarray, shapes (n1,), (n2,), n1, n2 >= 2

    Returns
    -------
    float
        The p-value (1.0 when both samples are constant and equal, where t is undefined).
    """
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant samples: handled below
        p = float(stats.ttest_ind(x, y, equal_var=False, alternative="greater").pvalue)
    if math.isnan(p):
        return 1.0 if x.mean() <= y.mean() else 0.0
    return p


def _welch_t(g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
    """Welch t statistic along the last axis (rows are permutations)."""
    n1, n2 = g1.shape[-1], g2.shape[-1]
    v = g1.var(axis=-1, ddof=1) / n1 + g2.var(axis=-1, ddof=1) / n2
    d = g1.mean(axis=-1) - g2.mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = d / np.sqrt(v)
    return np.where(v > 0, t, np.sign(d) * np.inf)


def permutation_test(x: np.ndarray, y: np.ndarray, *, n_permutations: int = 999,
                     rng: Optional[np.random.Generator] = None) -> float:
    """One-sided Monte-Carlo permutation test that ``x`` tends to exceed ``y``.

    The statistic is Welch's t (studentised: its permutation test is exact when the two samples are
    exchangeable and still asymptotically valid for equal means with unequal variances).

    Parameters
    ----------
    x, y : ndarray, shapes (n1,), (n2,), n1, n2 >= 2
    n_permutations : int
        R random relabellings.
    rng : numpy Generator, optional

    Returns
    -------
    float
        ``(1 + #{t_perm >= t_obs}) / (1 + R)``, never below ``1 / (1 + R)``.
    """
    rng = rng if rng is not None else np.random.default_rng()
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n1 = x.shape[0]
    pooled = np.concatenate([x, y])
    observed = float(_welch_t(x[None, :], y[None, :])[0])
    block = max(1, min(n_permutations, (1 << 20) // max(1, pooled.shape[0])))
    hits = 0
    done = 0
    while done < n_permutations:
        r = min(block, n_permutations - done)
        perm = rng.permuted(np.broadcast_to(pooled, (r, pooled.shape[0])), axis=1)
        t = _welch_t(perm[:, :n1], perm[:, n1:])
        hits += int((t >= observed - 1e-12 * max(1.0, abs(observed))).sum()) if math.isfinite(observed) else \
            int((t >= observed).sum())
        done += r
    return (1.0 + hits) / (1.0 + n_permutations)


def combine_p_values(p_values: Sequence[float]) -> float:
    """Combine dependent p-values of repeated splits: ``min(1, 2 x median)`` (one value: itself).

    Valid under arbitrary dependence (Meinshausen, Meier & Bühlmann 2009): if the median is <= t,
    at least half the p-values are <= t, and by Markov's inequality that happens with probability
    at most ``2 t`` under the null.

    Parameters
    ----------
    p_values : sequence of float, length >= 1

    Returns
    -------
    float
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or p.shape[0] == 0:
        raise ValueError(f"p_values: expected a non-empty 1-D sequence, got shape {p.shape}")
    if p.shape[0] == 1:
        return float(p[0])
    return float(min(1.0, 2.0 * np.median(p)))


# --------------------------------------------------------------------------------------------
# features


@dataclass
class _Features:
    names: list  # column names (or derived names) in the result
    oriented: list  # readable orientation ("-loss", ...)
    suspect: np.ndarray  # (n_s, F)
    validation: np.ndarray  # (n_v, F)
    dropped: dict  # name -> reason
    notes: list


def _table_ids(table: Any, name: str) -> Optional[np.ndarray]:
    if "id" not in _columns(table):
        return None
    ids = table["id"].astype(str).to_numpy()
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{name}['id']: expected unique ids, got {int((counts > 1).sum())} repeated ids (e.g. "
                         f"{_first(values[counts > 1], 3)})")
    return ids


def _numeric(table: Any, col: str) -> Optional[np.ndarray]:
    values = np.asarray(table[col])
    if values.dtype.kind not in "biuf":
        try:
            values = values.astype(np.float64)
        except (TypeError, ValueError):
            return None
    return values.astype(np.float64)


def _transform(values: np.ndarray, sign: float, transform: str) -> np.ndarray:
    if transform == "log":
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.log(np.maximum(values, np.finfo(np.float64).tiny))
    return sign * values


def _reference_rows(references: Sequence[Any], ids: np.ndarray, which: str) -> list:
    """Each reference table's rows for ``ids`` (a pair (suspect, validation) is concatenated)."""
    import pandas as pd

    out = []
    for k, ref in enumerate(references):
        name = f"references[{k}]"
        if isinstance(ref, (tuple, list)):
            if len(ref) != 2 or not all(hasattr(t, "columns") for t in ref):
                raise ValueError(f"{name}: expected a DataFrame or a pair (suspect table, validation table), got "
                                 f"a {type(ref).__name__} of {len(ref)} items")
            ref = pd.concat(list(ref), ignore_index=True)
        elif not hasattr(ref, "columns"):
            raise TypeError(f"{name}: expected a DataFrame or a pair of DataFrames, got {type(ref).__name__}")
        rids = _table_ids(ref, name)
        if rids is None:
            raise ValueError(f"{name}: expected an 'id' column (rows are matched by id), got columns "
                             f"{_columns(ref)}")
        index = {v: i for i, v in enumerate(rids)}
        missing = [i for i in ids if i not in index]
        if missing:
            raise ValueError(f"{name}: expected a row for every {which} id, got {len(missing)} missing (ids: "
                             f"{_first(missing)})")
        out.append(ref.iloc[[index[i] for i in ids]].reset_index(drop=True))
    return out


def document_features(
    suspect: Any,
    validation: Any,
    *,
    references: Optional[Sequence[Any]] = None,
    features: Optional[Sequence[str]] = None,
) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, str], list[str]]:
    """The oriented feature matrices `dataset_inference` learns from.

    Parameters
    ----------
    suspect, validation : DataFrame
        Per-document score tables of the target model (n_s and n_v rows).
    references : sequence, optional
        Reference models' tables (each a DataFrame holding every suspect and validation id, or a pair
        (suspect table, validation table)); adds ``{stat}-ref`` (difference with the mean over the
        reference models) and ``loss/ref`` features.
    features : sequence of str, optional
        Use these columns only (any numeric column; a column not in `STATISTICS` is used as is).

    Returns
    -------
    names : list of str, length F
        Readable oriented names (``-loss``, ``min_k_0.2``, ``-(loss-ref)``, ...).
    X_suspect : ndarray, shape (n_s, F)
    X_validation : ndarray, shape (n_v, F)
    dropped : dict of str to str
        Column -> why it was not used.
    notes : list of str
    """
    f = _features(suspect, validation, references=references, features=features)
    return f.oriented, f.suspect, f.validation, f.dropped, f.notes


def _features(suspect: Any, validation: Any, *, references: Optional[Sequence[Any]],
              features: Optional[Sequence[str]]) -> _Features:
    s_cols, v_cols = _columns(suspect), _columns(validation)
    dropped: dict[str, str] = {}
    notes: list[str] = []
    if features is not None:
        if isinstance(features, str):
            raise TypeError("features: expected a sequence of column names, got a str")
        features = [str(c) for c in features]
        if not features:
            raise ValueError("features: expected at least one column name, got an empty sequence")
        for c in features:
            for tname, cols in (("suspect", s_cols), ("validation", v_cols)):
                if c not in cols:
                    raise ValueError(f"features: expected columns of both tables, got {c!r}, which {tname} lacks "
                                     f"(columns: {cols})")
        candidates = features
    else:
        candidates = [c for c in s_cols if c in v_cols and not _NOT_FEATURES.match(c)]
        for c in sorted(set(s_cols) ^ set(v_cols)):
            if _NOT_FEATURES.match(c) or _orientation(c) is None:
                continue
            dropped[c] = f"only in the {'suspect' if c in s_cols else 'validation'} table"
        ignored = [c for c in candidates if _orientation(c) is None]
        if ignored:
            notes.append(f"ignored columns that are not model statistics: {', '.join(ignored)} (pass features= to "
                         "use them)")
        candidates = [c for c in candidates if _orientation(c) is not None]
    names, oriented, xs, xv = [], [], [], []
    for c in candidates:
        vs, vv = _numeric(suspect, c), _numeric(validation, c)
        if vs is None or vv is None:
            dropped[c] = "not numeric"
            continue
        sign, transform = _orientation(c) or (1.0, "")
        names.append(c)
        oriented.append(_oriented_name(c, sign, transform))
        xs.append(_transform(vs, sign, transform))
        xv.append(_transform(vv, sign, transform))
    if references:
        s_ids, v_ids = _table_ids(suspect, "suspect"), _table_ids(validation, "validation")
        if s_ids is None or v_ids is None:
            raise ValueError("references: reference tables are matched by id, expected an 'id' column in suspect and "
                             "validation")
        rs = _reference_rows(references, s_ids, "suspect")
        rv = _reference_rows(references, v_ids, "validation")
        for c in list(names):
            if not all(c in _columns(r) for r in rs):
                continue
            sign, transform = _orientation(c) or (1.0, "")
            ref_s = np.mean([_transform(_numeric(r, c), sign, transform) for r in rs], axis=0)
            ref_v = np.mean([_transform(_numeric(r, c), sign, transform) for r in rv], axis=0)
            i = names.index(c)
            names.append(f"{c}-ref")
            inner = f"log {c}" if transform == "log" else c
            oriented.append(f"{inner}-ref" if sign > 0 else f"-({inner}-ref)")
            xs.append(xs[i] - ref_s)
            xv.append(xv[i] - ref_v)
        if "loss" in names and all("loss" in _columns(r) for r in rs):
            ls = np.mean([_numeric(r, "loss") for r in rs], axis=0)
            lv = np.mean([_numeric(r, "loss") for r in rv], axis=0)
            if (np.concatenate([ls, lv]) > 0).all():
                i = names.index("loss")
                names.append("loss/ref")
                oriented.append("-(loss/ref)")
                with np.errstate(invalid="ignore"):
                    xs.append(xs[i] / ls)  # xs[i] = -loss
                    xv.append(xv[i] / lv)
            else:
                dropped["loss/ref"] = "some reference losses are <= 0"
        notes.append(f"{len(references)} reference model(s): differences with their mean statistic")
    keep_names, keep_oriented, keep_s, keep_v = [], [], [], []
    for c, o, a, b in zip(names, oriented, xs, xv):
        bad_s, bad_v = ~np.isfinite(a), ~np.isfinite(b)
        if bad_s.any() or bad_v.any():
            dropped[c] = (f"NaN/inf in {int(bad_s.sum())} suspect and {int(bad_v.sum())} validation documents")
            continue
        both = np.concatenate([a, b])
        if np.ptp(both) <= 1e-12 * max(1.0, float(np.abs(both).max())):
            dropped[c] = f"constant ({both[0]:g})"
            continue
        keep_names.append(c)
        keep_oriented.append(o)
        keep_s.append(a)
        keep_v.append(b)
    if not keep_names:
        raise ValueError(
            "suspect, validation: expected at least one usable per-document statistic (e.g. 'loss') in both tables, "
            f"got none (suspect columns: {s_cols}; validation columns: {v_cols}; dropped: "
            f"{dropped or 'nothing'})")
    for c, why in dropped.items():
        notes.append(f"dropped {c}: {why}")
    return _Features(keep_names, keep_oriented, np.stack(keep_s, axis=1), np.stack(keep_v, axis=1), dropped, notes)


# --------------------------------------------------------------------------------------------
# the procedure


@dataclass
class _Run:
    p_value: float
    test: str
    split_p_values: list
    coefs: np.ndarray  # (n_splits, F)
    effect_sizes: list  # standardised mean difference of the B scores, per split
    aucs: list  # AUC of the B scores, per split


def _part_sizes(n: int, train_fraction: float) -> tuple[int, int]:
    n_a = int(round(train_fraction * n))
    return n_a, n - n_a


def _min_documents(train_fraction: float) -> int:
    n = 2 * MIN_PER_PART
    while min(_part_sizes(n, train_fraction)) < MIN_PER_PART:
        n += 1
    return n


def _resolve_test(test: str, nb_s: int, nb_v: int) -> str:
    if test != "auto":
        return test
    return "permutation" if min(nb_s, nb_v) < AUTO_PERMUTATION_BELOW else "welch"


def _run(Xs: np.ndarray, Xv: np.ndarray, *, n_splits: int, train_fraction: float, test: str, C: float,
         n_permutations: int, rng: np.random.Generator) -> _Run:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    ns, nv = Xs.shape[0], Xv.shape[0]
    as_, bs = _part_sizes(ns, train_fraction)
    av, bv = _part_sizes(nv, train_fraction)
    resolved = _resolve_test(test, bs, bv)
    ps, coefs, effects, aucs = [], [], [], []
    y = np.concatenate([np.ones(as_), np.zeros(av)])
    labels_b = np.concatenate([np.ones(bs, dtype=np.int64), np.zeros(bv, dtype=np.int64)])
    for _ in range(n_splits):
        perm_s, perm_v = rng.permutation(ns), rng.permutation(nv)
        A = np.concatenate([Xs[perm_s[:as_]], Xv[perm_v[:av]]])
        Bs, Bv = Xs[perm_s[as_:]], Xv[perm_v[av:]]
        mu = A.mean(axis=0)
        sd = A.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        model = LogisticRegression(C=C, class_weight="balanced", solver="newton-cholesky", max_iter=200)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit((A - mu) / sd, y)
        w = model.coef_[0]
        s_b, v_b = ((Bs - mu) / sd) @ w, ((Bv - mu) / sd) @ w
        if resolved == "welch":
            p = welch_test(s_b, v_b)
        else:
            p = permutation_test(s_b, v_b, n_permutations=n_permutations, rng=rng)
        pooled_sd = math.sqrt((s_b.var(ddof=1) + v_b.var(ddof=1)) / 2)
        effects.append(float((s_b.mean() - v_b.mean()) / pooled_sd) if pooled_sd > 0 else 0.0)
        b = np.concatenate([s_b, v_b])
        aucs.append(roc_auc(labels_b, b) if np.ptp(b) > 0 else 0.5)
        ps.append(float(p))
        coefs.append(w)
    return _Run(combine_p_values(ps), resolved, ps, np.asarray(coefs), effects, aucs)


def _rngs(random_state: RandomState) -> list[np.random.Generator]:
    if isinstance(random_state, np.random.Generator):
        seq = np.random.SeedSequence(random_state.integers(0, 2**63 - 1))
    elif isinstance(random_state, np.random.SeedSequence):
        seq = random_state
    elif random_state is None or (isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool)):
        seq = np.random.SeedSequence(random_state)
    else:
        raise TypeError(f"random_state: expected None, an int, a numpy Generator or SeedSequence, got "
                        f"{type(random_state).__name__}")
    return [np.random.default_rng(s) for s in seq.spawn(3)]


@dataclass
class DatasetInferenceResult:
    """Result of `dataset_inference` (JSON-ready through `to_dict`).

    Attributes
    ----------
    p_value : float
        Combined one-sided p-value (``min(1, 2 x median)`` of the splits' p-values).
    test : {'welch', 'permutation'}
        The test used (``'auto'`` resolved).
    alpha : float
    member : bool
        ``p_value <= alpha``: the model's statistics tell the suspect set from the validation set
        (the verdict "trained on the suspect set"); its false-positive rate is at most ``alpha``
        when the two sets are drawn from the same distribution.
    n_suspect, n_validation : int
    features : list of dict
        One per feature: ``name`` (column), ``oriented`` (readable orientation, higher = more
        member-like), ``weight`` (mean over splits of the standardised logistic coefficient:
        positive = pushes towards "suspect"), ``weight_sd`` and ``auc`` (the oriented feature alone,
        suspect vs validation, all documents: descriptive, not a test).
    control_p_value : float or None
        The same procedure between two random halves of the validation set (None when too small).
    control_valid : bool or None
        False when the control rejects at ``alpha``.
    control_message : str
    curve : list of dict
        ``n_suspect``, ``n_validation``, ``p_value``, ``test``: the p-value against the number of
        documents used (the last point is the full result).
    split_p_values : list of float
    n_splits, train_fraction, n_permutations, C
    effect_size : float
        Mean over splits of the standardised difference of the held-out scores (Cohen's d).
    held_out_auc : float
        Mean over splits of the AUC of the held-out scores, suspect vs validation.
    combination : str
    dropped_features : dict of str to str
    notes : list of str
    """

    p_value: float
    test: str
    alpha: float
    member: bool
    n_suspect: int
    n_validation: int
    features: list
    control_p_value: Optional[float]
    control_valid: Optional[bool]
    control_message: str
    curve: list
    split_p_values: list
    n_splits: int
    train_fraction: float
    n_permutations: int
    C: float
    effect_size: float
    held_out_auc: float
    combination: str = COMBINATION
    n_references: int = 0
    control_split: str = "random"
    dropped_features: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-ready values."""
        return {
            "p_value": self.p_value,
            "test": self.test,
            "alpha": self.alpha,
            "member": bool(self.member),
            "n_suspect": self.n_suspect,
            "n_validation": self.n_validation,
            "features": [dict(f) for f in self.features],
            "control_p_value": self.control_p_value,
            "control_valid": self.control_valid,
            "control_message": self.control_message,
            "control_split": self.control_split,
            "curve": [dict(c) for c in self.curve],
            "split_p_values": list(self.split_p_values),
            "combination": self.combination,
            "n_splits": self.n_splits,
            "train_fraction": self.train_fraction,
            "n_permutations": self.n_permutations,
            "C": self.C,
            "effect_size": self.effect_size,
            "held_out_auc": self.held_out_auc,
            "n_references": self.n_references,
            "dropped_features": dict(self.dropped_features),
            "notes": list(self.notes),
        }


def _check_table(x: Any, name: str) -> None:
    if not hasattr(x, "columns") or not hasattr(x, "iloc"):
        raise TypeError(f"{name}: expected a pandas DataFrame (a per-document score table), got {type(x).__name__}")


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    return int(value)


def _check_fraction(name: str, value: Any, low: float = 0.0, high: float = 1.0) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not low < float(value) < high:
        raise ValueError(f"{name}: expected a number in ({low:g}, {high:g}), got {value!r}")
    return float(value)


def dataset_inference(
    suspect: Any,
    validation: Any,
    *,
    references: Optional[Sequence[Any]] = None,
    test: str = "auto",
    n_splits: int = 10,
    alpha: float = 0.05,
    random_state: RandomState = None,
    train_fraction: float = 0.5,
    n_permutations: int = 999,
    C: float = 1.0,
    features: Optional[Sequence[str]] = None,
    control: bool = True,
    control_split: str = "random",
    curve_sizes: Optional[Sequence[int]] = None,
) -> DatasetInferenceResult:
    """Test whether a model was trained on a suspect set, against a validation set it never saw.

    See the module docstring for the procedure and its guarantees.

    Parameters
    ----------
    suspect : DataFrame, n_s rows
        The target model's per-document score table of the suspect documents.
    validation : DataFrame, n_v rows
        The same model's table of documents from the same distribution that it did not train on.
        No id may be in both tables.
    references : sequence, optional
        Reference models' tables: each a DataFrame holding every suspect and validation id (matched
        by id), or a pair (suspect table, validation table). Adds reference-calibrated features.
    test : {'auto', 'welch', 'permutation'}
        ``auto``: permutation when a set has fewer than `AUTO_PERMUTATION_BELOW` documents in part
        B, else Welch.
    n_splits : int >= 1
        Random A/B splits, combined by ``min(1, 2 x median)``.
    alpha : float in (0, 1)
        Level of the verdict and of the control.
    random_state : None, int, Generator or SeedSequence
    train_fraction : float in (0, 1)
        Share of each set in part A (learning); the rest (B) is tested.
    n_permutations : int >= 19
        R of the permutation test (p-values >= 1/(R+1)).
    C : float > 0
        Inverse L2 regularisation strength of the logistic regression.
    features : sequence of str, optional
        Restrict to these columns (default: every known statistic both tables have).
    control : bool
        Run the validation-vs-validation control.
    control_split : {'random', 'ordered'}
        How the validation set is halved for the control: at random (checks the test's calibration)
        or first half vs second half in row order (also flags drift along the table's order).
    curve_sizes : sequence of int, optional
        Suspect-set sizes of the p-value curve (default `DEFAULT_CURVE_SIZES`; ``()`` for none);
        sizes at or above n_s or too small for a split are skipped; the full result is the last point.

    Returns
    -------
    DatasetInferenceResult

    Raises
    ------
    ValueError
        Overlapping ids, fewer documents than a split needs, no usable feature, bad options.
    """
    _check_table(suspect, "suspect")
    _check_table(validation, "validation")
    if test not in _TESTS:
        raise ValueError(f"test: expected one of {_TESTS}, got {test!r}")
    if control_split not in _CONTROL_SPLITS:
        raise ValueError(f"control_split: expected one of {_CONTROL_SPLITS}, got {control_split!r}")
    n_splits = _check_int("n_splits", n_splits, 1)
    n_permutations = _check_int("n_permutations", n_permutations, 19)
    alpha = _check_fraction("alpha", alpha)
    train_fraction = _check_fraction("train_fraction", train_fraction)
    if isinstance(C, (bool, np.bool_)) or not isinstance(C, (int, float, np.integer, np.floating)) \
            or not (math.isfinite(float(C)) and float(C) > 0):
        raise ValueError(f"C: expected a positive number, got {C!r}")
    C = float(C)
    if curve_sizes is None:
        sizes = list(DEFAULT_CURVE_SIZES)
    else:
        if isinstance(curve_sizes, (str, bytes)):
            raise TypeError("curve_sizes: expected a sequence of integers, got a str")
        sizes = [_check_int("curve_sizes", v, 1) for v in curve_sizes]
    n_min = _min_documents(train_fraction)
    for name, table in (("suspect", suspect), ("validation", validation)):
        if len(table) < n_min:
            raise ValueError(f"{name}: expected at least {n_min} documents ({MIN_PER_PART} in each part of an A/B "
                             f"split at train_fraction={train_fraction:g}), got {len(table)}")
    notes: list[str] = []
    s_ids, v_ids = _table_ids(suspect, "suspect"), _table_ids(validation, "validation")
    if "text_hash" in _columns(suspect) and "text_hash" in _columns(validation):
        # tables of two corpus files both number their default ids 0..N-1: the texts say what is shared
        same = np.intersect1d(suspect["text_hash"].astype(str), validation["text_hash"].astype(str))
        if same.size:
            raise ValueError(f"suspect, validation: expected disjoint sets of documents, got {same.size} texts in "
                             f"both (same text_hash: {_first(same)})")
    else:
        if s_ids is not None and v_ids is not None:
            shared = np.intersect1d(s_ids, v_ids)
            if shared.size:
                raise ValueError(f"suspect, validation: expected disjoint sets of documents, got {shared.size} ids "
                                 f"in both (ids: {_first(shared)})")
        else:
            notes.append("no 'id' column in both tables: overlap between the sets was not checked")
    feats = _features(suspect, validation, references=references, features=features)
    notes += feats.notes
    Xs, Xv = feats.suspect, feats.validation
    ns, nv = Xs.shape[0], Xv.shape[0]
    rng_main, rng_control, rng_curve = _rngs(random_state)
    opts = dict(n_splits=n_splits, train_fraction=train_fraction, test=test, C=C, n_permutations=n_permutations)
    main = _run(Xs, Xv, rng=rng_main, **opts)

    control_p: Optional[float] = None
    control_valid: Optional[bool] = None
    half = nv // 2
    if not control:
        message = "control not run (control=False)"
    elif half < n_min:
        message = (f"control not run: the validation set's halves ({half} documents) are below the {n_min} documents "
                   "a split needs")
    else:
        order = rng_control.permutation(nv) if control_split == "random" else np.arange(nv)
        ctrl = _run(Xv[order[:half]], Xv[order[half:]], rng=rng_control, **opts)
        control_p = ctrl.p_value
        control_valid = bool(control_p > alpha)
        halves = "two random halves" if control_split == "random" else "first vs second half (row order)"
        if control_valid:
            message = (f"the validation set's {halves} are not told apart (p = {control_p:.3g} > alpha = {alpha:g}): "
                       "the test behaves as calibrated on these documents")
        else:
            message = (f"the validation set is not a valid control: its {halves} are told apart (p = "
                       f"{control_p:.3g} <= alpha = {alpha:g}), which documents from one distribution should not be; "
                       "the suspect-vs-validation p-value cannot be trusted (check for duplicates, mixed sources or "
                       "ordering, too few documents)")

    curve = []
    perm_s, perm_v = rng_curve.permutation(ns), rng_curve.permutation(nv)
    for m in sorted(set(sizes)):
        if m >= ns:
            continue
        mv = int(round(m * nv / ns))
        if m < n_min or mv < n_min:
            continue
        run = _run(Xs[perm_s[:m]], Xv[perm_v[:mv]], rng=rng_curve, **opts)  # nested subsets
        curve.append({"n_suspect": m, "n_validation": mv, "p_value": run.p_value, "test": run.test})
    curve.append({"n_suspect": ns, "n_validation": nv, "p_value": main.p_value, "test": main.test})

    auc_each = []
    labels = np.concatenate([np.ones(ns, dtype=np.int64), np.zeros(nv, dtype=np.int64)])
    for j in range(Xs.shape[1]):
        auc_each.append(roc_auc(labels, np.concatenate([Xs[:, j], Xv[:, j]])))
    weights = main.coefs.mean(axis=0)
    weight_sd = main.coefs.std(axis=0, ddof=1) if n_splits > 1 else np.zeros_like(weights)
    feature_rows = [{"name": c, "oriented": o, "weight": float(w), "weight_sd": float(sd), "auc": float(a)}
                    for c, o, w, sd, a in zip(feats.names, feats.oriented, weights, weight_sd, auc_each)]
    return DatasetInferenceResult(
        p_value=main.p_value, test=main.test, alpha=alpha, member=bool(main.p_value <= alpha), n_suspect=ns,
        n_validation=nv, features=feature_rows, control_p_value=control_p, control_valid=control_valid,
        control_message=message, curve=curve, split_p_values=main.split_p_values, n_splits=n_splits,
        train_fraction=train_fraction, n_permutations=n_permutations, C=C,
        effect_size=float(np.mean(main.effect_sizes)), held_out_auc=float(np.mean(main.aucs)),
        n_references=len(references) if references else 0, control_split=control_split,
        dropped_features=feats.dropped, notes=notes,
    )


# --------------------------------------------------------------------------------------------
# output


def _report(r: DatasetInferenceResult) -> str:
    verdict = ("**member**: the model tells the suspect documents from the validation documents"
               if r.member else "**not shown**: the model does not tell the suspect documents from the validation "
               "documents at this level")
    test = ("Welch's one-sided t-test" if r.test == "welch"
            else f"a one-sided permutation test of Welch's t ({r.n_permutations} permutations)")
    lines = [
        "# Dataset inference",
        "",
        "## What was tested",
        "",
        f"- Suspect set: {r.n_suspect} documents; validation set: {r.n_validation} documents the model is known not "
        "to have trained on, drawn from the same distribution as the suspect set.",
        "- Null hypothesis: the model did not train on the suspect set, so its statistics treat both sets alike. "
        "Alternative: the suspect documents look more member-like to the model.",
        f"- Method (Maini et al. 2024): on a random {r.train_fraction:.0%} of each set, a logistic regression learns "
        f"a combination of {len(r.features)} per-document statistics; on the other documents, {test} checks "
        f"whether the suspect documents score higher. Repeated over {r.n_splits} random splits, combined by "
        f"{r.combination}.",
        "",
        "## Verdict",
        "",
        f"- p-value: {r.p_value:.3g} (alpha = {r.alpha:g}); verdict: {verdict}.",
        f"- Error rate: if the model did not train on the suspect set and both sets come from the same distribution, "
        f"this procedure says \"member\" with probability at most {r.alpha:g}.",
        f"- Held-out separation: AUC {r.held_out_auc:.3f}, effect size (Cohen's d) {r.effect_size:.3f} "
        "(mean over splits).",
        f"- Control (validation vs validation): {r.control_message}.",
        "",
        "## Features (weights: mean standardised coefficient over splits; positive = towards suspect)",
        "",
        "| feature | weight | sd | AUC alone |",
        "|---|---|---|---|",
    ]
    for f in sorted(r.features, key=lambda f: -abs(f["weight"])):
        lines.append(f"| {f['oriented']} | {f['weight']:+.3f} | {f['weight_sd']:.3f} | {f['auc']:.3f} |")
    lines += ["", "## p-value against the number of documents", "", "| suspect docs | validation docs | p-value | test |",
              "|---|---|---|---|"]
    for c in r.curve:
        lines.append(f"| {c['n_suspect']} | {c['n_validation']} | {c['p_value']:.3g} | {c['test']} |")
    if any(c["test"] == "permutation" for c in r.curve) and r.n_splits > 1:
        lines += ["", f"Permutation p-values cannot fall below 2 / (R + 1) = {2 / (r.n_permutations + 1):.3g} "
                      f"(R = {r.n_permutations} permutations, combined over splits)."]
    lines += [
        "",
        "See `p_value_vs_documents.png`.",
        "",
        "## What this does not prove",
        "",
        "- It is about the set, not any single document: it does not say which suspect documents were trained on "
        "(use `mia-fast decide` for per-document tests).",
        "- A p-value above alpha is not evidence of absence: with few documents or a weak signal the test has little "
        "power (see the curve).",
        "- The guarantee holds only if the suspect and validation sets come from the same distribution (source, "
        "period, length, preprocessing). A shift between them is detected as \"member\" without any training "
        "(probe it with `mia-fast shift-check`). The control checks the test on the validation set alone; it cannot "
        "check this assumption.",
        "- \"Member\" means the model treats the suspect documents as more familiar; training on near-duplicates or "
        "on the same texts from another source has the same effect.",
    ]
    if r.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r.notes]
    return "\n".join(lines) + "\n"


def plot_p_value_curve(result: DatasetInferenceResult, path: Union[str, Path]) -> None:
    """Draw the p-value against the number of suspect documents (log-log), with alpha, as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(5.5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = [c["n_suspect"] for c in result.curve]
    ys = [max(c["p_value"], 1e-300) for c in result.curve]
    ax.plot(xs, ys, color="tab:blue", label="p-value (suspect vs validation)")
    for test, marker in (("welch", "o"), ("permutation", "s")):
        pts = [(x, y) for x, y, c in zip(xs, ys, result.curve) if c["test"] == test]
        if pts:
            floor = f", floor {2 / (result.n_permutations + 1):.2g}" if test == "permutation" and \
                result.n_splits > 1 else ""
            ax.plot(*zip(*pts), ls="none", marker=marker, color="tab:blue", mfc="white" if test == "permutation"
                    else "tab:blue", label=f"{test} test{floor}")
    ax.axhline(result.alpha, color="tab:red", ls="--", label=f"alpha = {result.alpha:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs], fontsize=7)
    ax.set_xlabel("suspect documents used (validation: same fraction)")
    ax.set_ylabel("combined p-value")
    ax.set_title(f"Dataset inference: p = {result.p_value:.3g} with all {result.n_suspect} documents", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = atomic.temporary_path(path)
    fig.savefig(tmp, format="png", dpi=120)
    atomic.commit(tmp, path)


def write_dataset_inference(result: DatasetInferenceResult, out_dir: Union[str, Path],
                            meta: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Write ``result.json``, ``report.md`` and ``p_value_vs_documents.png`` into ``out_dir``.

    Parameters
    ----------
    result : DatasetInferenceResult
    out_dir : str or Path
        Created if needed; files are written atomically.
    meta : dict, optional
        Added under ``"meta"`` in ``result.json`` (e.g. the input directories).

    Returns
    -------
    dict
        What ``result.json`` holds.
    """
    if not isinstance(result, DatasetInferenceResult):
        raise TypeError(f"result: expected a DatasetInferenceResult, got {type(result).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = result.to_dict()
    if meta:
        payload["meta"] = meta
    atomic.write_bytes(out / "result.json", (json.dumps(payload, indent=2) + "\n").encode("utf-8"))
    atomic.write_bytes(out / "report.md", _report(result).encode("utf-8"))
    plot_p_value_curve(result, out / "p_value_vs_documents.png")
    return payload
