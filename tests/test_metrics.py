"""Metrics: hand-worked ROC cases, agreement with scikit-learn, the threshold rule at ties, the
resolution floor, the bootstrap interval, and input validation."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from mia_fast import metrics as M
from mia_fast.metrics import ResolutionWarning

# A worked case with ties (members: scores 3, 2, 1; non-members: 3, 1, 0). Thresholds admit
# score >= t: t=inf (0, 0); t=3 tp=1 fp=1; t=2 tp=2 fp=1; t=1 tp=3 fp=2; t=0 tp=3 fp=3.
LABELS = np.array([1, 0, 1, 1, 0, 0])
SCORES = np.array([3.0, 3.0, 2.0, 1.0, 1.0, 0.0])


def test_roc_curve_worked_case():
    fpr, tpr, thr = M.roc_curve(LABELS, SCORES)
    np.testing.assert_allclose(fpr, [0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_array_equal(thr, [np.inf, 3, 2, 1, 0])


def test_auc_worked_case():
    # pairs: 3 vs (3, 1, 0) = 0.5 + 1 + 1; 2 vs ... = 0 + 1 + 1; 1 vs ... = 0 + 0.5 + 1 -> 6 / 9
    assert M.roc_auc(LABELS, SCORES) == pytest.approx(6 / 9)


@pytest.mark.parametrize("bound, tpr, achieved", [
    (0.0, 0.0, 0.0),        # the tie at 3 admits a non-member together with the best member
    (1 / 3, 2 / 3, 1 / 3),
    (0.5, 2 / 3, 1 / 3),    # never the first point above the bound (t=1 has FPR 2/3)
    (2 / 3, 1.0, 2 / 3),
    (1.0, 1.0, 2 / 3),      # TPR 1 is reached first at FPR 2/3: that FPR is reported
])
def test_tpr_at_fpr_worked_case(bound, tpr, achieved):
    got_tpr, got_fpr = M.tpr_at_fpr(LABELS, SCORES, bound)
    assert got_tpr == pytest.approx(tpr)
    assert got_fpr == pytest.approx(achieved)


def test_tpr_at_fpr_counts_decimal_bounds_exactly():
    # 0.3 * 10 = 3.0000000000000004 in floating point: 3 false positives of 10 meet FPR <= 0.3
    labels = np.array([0] * 10 + [1] * 4)
    scores = np.concatenate([np.arange(10.0), [9.5, 8.5, 7.5, 6.5]])
    assert M.tpr_at_fpr(labels, scores, 0.3) == (1.0, 0.3)
    assert M.tpr_at_fpr(labels, scores, 0.29) == (0.75, 0.2)


def test_tpr_at_zero_fpr():
    labels = np.array([1, 1, 0, 1, 0])
    scores = np.array([5.0, 4.0, 3.0, 3.0, 1.0])
    assert M.tpr_at_zero_fpr(labels, scores) == pytest.approx(2 / 3)
    assert M.tpr_at_zero_fpr(LABELS, SCORES) == 0.0


def test_precision_and_balanced_accuracy_worked_case():
    assert M.precision_at_recall(LABELS, SCORES, 0.5) == pytest.approx(2 / 3)  # needs tp >= 2
    assert M.precision_at_recall(LABELS, SCORES, 1 / 3) == pytest.approx(0.5)  # t=3: 1 tp, 1 fp
    assert M.precision_at_recall(LABELS, SCORES, 1.0) == pytest.approx(0.6)  # t=1: 3 tp, 2 fp
    assert M.balanced_accuracy(LABELS, SCORES) == pytest.approx(2 / 3)


def test_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = rng.integers(0, 40, 500) + 3 * labels  # many ties
    fpr, tpr, thr = M.roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_array_equal(thr, sk_thr)
    assert M.roc_auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    best = np.max((sk_tpr + 1 - sk_fpr) / 2)
    assert M.balanced_accuracy(labels, scores) == pytest.approx(best)


def test_accepts_bool_labels_and_lists():
    assert M.roc_auc([True, False, True], [0.9, 0.1, 0.5]) == 1.0
    assert M.roc_auc([1.0, 0.0, 1.0], [0.9, 0.1, 0.5]) == 1.0


def test_resolution_floor_warning():
    labels = np.array([1] * 5 + [0] * 10)
    scores = np.arange(15.0)[::-1]
    with pytest.warns(ResolutionWarning, match=r"below the resolution floor 1/n_nonmembers = 0\.1"):
        tpr, achieved = M.tpr_at_fpr(labels, scores, 0.05)
    assert (tpr, achieved) == (1.0, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.tpr_at_fpr(labels, scores, 0.1) == (1.0, 0.0)  # at the floor: no warning
        assert M.tpr_at_fpr(labels, scores, 0.0) == (1.0, 0.0)  # exact 0: no warning
    assert issubclass(ResolutionWarning, UserWarning)


def test_bootstrap_ci_contains_auc_and_is_oriented():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    scores = rng.normal(size=400) + 1.0 * labels
    auc = M.roc_auc(labels, scores)
    low, high = M.bootstrap_auc_ci(labels, scores, n=500, random_state=0)
    assert 0.5 < low < auc < high
    nlow, nhigh = M.bootstrap_auc_ci(labels, -scores, n=500, random_state=0)
    assert nlow < 1 - auc < nhigh < 0.5
    assert (low, high) == M.bootstrap_auc_ci(labels, scores, n=500, random_state=0)
    wide = M.bootstrap_auc_ci(labels, scores, n=500, level=0.99, random_state=0)
    assert wide[0] <= low and wide[1] >= high


@pytest.mark.parametrize("n_members, n_nonmembers, n", [(7, 9, 40), (300, 200, 3)])
def test_bootstrap_resamples_are_stratified_auc(n_members, n_nonmembers, n):
    """Each vectorised resample AUC equals sklearn's AUC on the same stratified resample."""
    rng = np.random.default_rng(2)
    labels = np.array([1] * n_members + [0] * n_nonmembers)
    scores = rng.integers(0, 12, labels.shape[0]).astype(float) + labels  # ties
    got = M._bootstrap_aucs(labels == 1, scores, n, np.random.default_rng(5))
    replay = np.random.default_rng(5)
    pos, neg = scores[labels == 1], scores[labels == 0]
    block = max(1, M._BOOTSTRAP_BLOCK_ELEMENTS // max(n_members, n_nonmembers, len(np.unique(neg)) + 1))
    want = []
    for start in range(0, n, block):
        b = min(block, n - start)
        neg_idx = replay.integers(0, n_nonmembers, size=(b, n_nonmembers))
        pos_idx = replay.integers(0, n_members, size=(b, n_members))
        for i in range(b):
            s = np.concatenate([pos[pos_idx[i]], neg[neg_idx[i]]])
            want.append(skm.roc_auc_score(np.r_[np.ones(n_members), np.zeros(n_nonmembers)], s))
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_evaluate_keys_and_values():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 3000)
    scores = rng.normal(size=3000) + labels
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0.1% is above the floor of ~1500 non-members
        out = M.evaluate(labels, scores, n_bootstrap=200)
    json.dumps(out)
    assert out["n_members"] + out["n_nonmembers"] == 3000
    assert out["fpr_floor"] == pytest.approx(1 / out["n_nonmembers"])
    assert out["auc"] == pytest.approx(M.roc_auc(labels, scores))
    assert out["auc_ci"][0] < out["auc"] < out["auc_ci"][1]
    for key, f in (("0.1%", 0.001), ("1%", 0.01), ("10%", 0.1)):
        tpr, achieved = M.tpr_at_fpr(labels, scores, f)
        assert out[f"tpr@{key}fpr"] == tpr and out[f"achieved_fpr@{key}fpr"] == achieved
        assert achieved <= f
    assert out["tpr@0fpr"] == M.tpr_at_zero_fpr(labels, scores)
    assert out["precision@50%recall"] == M.precision_at_recall(labels, scores, 0.5)
    assert out["balanced_accuracy"] == M.balanced_accuracy(labels, scores)
    assert out["fprs_below_floor"] == []
    assert M.evaluate(labels, scores, n_bootstrap=0)["auc_ci"] is None


def test_evaluate_warns_once_below_floor():
    labels = np.array([1, 0] * 50)
    scores = np.arange(100.0)
    with pytest.warns(ResolutionWarning) as record:
        out = M.evaluate(labels, scores, fprs=(0.001, 0.01, 0.1), n_bootstrap=10)
    assert len(record) == 1 and "0.001, 0.01" in str(record[0].message)
    assert out["fprs_below_floor"] == [0.001, 0.01]


def test_plot_roc():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 200)
    ax = M.plot_roc(labels, rng.normal(size=200) + labels, label="loss")
    assert ax.get_xscale() == "log" and ax.get_xlim()[0] == pytest.approx(1 / (labels == 0).sum())
    plt.close(ax.figure)


# --------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("labels, scores, exc, match", [
    ([1, 0, 1], [0.1, 0.2], ValueError, r"same length, got 3 labels and 2 scores"),
    ([1, 1, 1], [0.1, 0.2, 0.3], ValueError, r"both members \(1\) and non-members \(0\), got 3 members"),
    ([0, 0], [0.1, 0.2], ValueError, r"got 0 members and 2 non-members"),
    ([1, 0, 1], [0.1, np.nan, 0.3], ValueError, r"scores: expected finite values, got 1 NaN/inf.*index 1"),
    ([1, 0, 1], [0.1, np.inf, 0.3], ValueError, r"scores: expected finite"),
    ([1, 0, 2], [0.1, 0.2, 0.3], ValueError, r"labels: expected values in \{0, 1\}.*got 2 at index 2"),
    (["a", "b"], [0.1, 0.2], TypeError, r"labels: expected 0/1 or bool values, got dtype <U1"),
    ([1, 0], ["x", "y"], TypeError, r"scores: expected real numbers"),
    ([[1, 0]], [[0.1, 0.2]], ValueError, r"labels: expected a 1-D array, got shape \(1, 2\)"),
])
def test_bad_input(labels, scores, exc, match):
    with pytest.raises(exc, match=match):
        M.roc_auc(labels, scores)


@pytest.mark.parametrize("fpr", [-0.1, 1.5, float("nan")])
def test_fpr_outside_unit_interval(fpr):
    with pytest.raises(ValueError, match=r"fpr: expected a value in \[0, 1\]"):
        M.tpr_at_fpr(LABELS, SCORES, fpr)


def test_other_bad_parameters():
    with pytest.raises(ValueError, match=r"recall: expected a value in \(0, 1\], got 0.0"):
        M.precision_at_recall(LABELS, SCORES, 0.0)
    with pytest.raises(ValueError, match=r"level: expected a confidence level in \(0, 1\)"):
        M.bootstrap_auc_ci(LABELS, SCORES, level=1.0)
    with pytest.raises(ValueError, match=r"n: expected a positive integer"):
        M.bootstrap_auc_ci(LABELS, SCORES, n=0)
    with pytest.raises(ValueError, match=r"fprs: expected a value in \[0, 1\], got 2.0"):
        M.evaluate(LABELS, SCORES, fprs=(2.0,))
    with pytest.raises(TypeError, match=r"fpr: expected a number, got str"):
        M.tpr_at_fpr(LABELS, SCORES, "0.1")


# --------------------------------------------------------------------------------------------
# properties

_labels_scores = st.integers(2, 40).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 1), min_size=n, max_size=n).filter(lambda y: 0 < sum(y) < len(y)),
    st.lists(st.integers(-6, 6), min_size=n, max_size=n),
))


@settings(max_examples=60, deadline=None)
@given(_labels_scores, st.floats(0.0, 1.0))
@example(([0] * 30 + [1], [0] * 31), 1.0 - 2.0**-53)  # all tied, a bound one ulp below 1
def test_tpr_at_fpr_is_the_best_admissible_threshold(data, bound):
    labels, scores = np.array(data[0]), np.array(data[1], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResolutionWarning)
        tpr, achieved = M.tpr_at_fpr(labels, scores, bound)
    # a bound within 1e-12 (relative) of k / n_nonmembers admits k false positives: 0.3 * 10 must
    # admit 3, and 1 - 2^-53 admits every non-member
    assert achieved <= bound + 1e-12
    points = [(0.0, 0.0)]  # brute force: (fpr, tpr) of every threshold (+inf, each distinct score)
    for t in np.unique(scores):
        admitted = scores >= t
        points.append((admitted[labels == 0].mean(), admitted[labels == 1].mean()))
    best = max(t for f, t in points if f <= bound + 1e-12)
    assert tpr == pytest.approx(best)
    assert achieved == pytest.approx(min(f for f, t in points if t == best))


@settings(max_examples=60, deadline=None)
@given(_labels_scores)
def test_auc_equals_sklearn_and_is_rank_invariant(data):
    labels, scores = np.array(data[0]), np.array(data[1], dtype=float)
    auc = M.roc_auc(labels, scores)
    assert auc == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert M.roc_auc(labels, 2 * scores + 7) == auc
    assert M.roc_auc(labels, scores ** 3) == auc
    assert M.roc_auc(labels, -scores) == pytest.approx(1 - auc, abs=1e-12)
