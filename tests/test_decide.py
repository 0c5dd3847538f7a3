"""Per-document decisions (`mia_fast.answers.decide`): conformal p-values, BH q-values, verdicts, files."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mia_fast.answers.decide import (
    Decisions,
    attack_scores,
    available_attacks,
    bh_q_values,
    conformal_p_values,
    decide,
    decide_table,
    write_decisions,
)
from mia_fast.metrics import ResolutionWarning


def _binomial_99(n: int, p: float) -> tuple[float, float]:
    lo, hi = stats.binom.interval(0.99, n, p)
    return lo, hi


# --------------------------------------------------------------------------------------------
# conformal p-values


def test_conformal_p_values_hand_computed_with_ties():
    cal = [1.0, 2.0, 3.0, 4.0]
    # #{cal >= s}: 5 -> 0, 3 -> 2 (3 and 4: a tie counts against the document), 2.5 -> 2, 0 -> 4
    p = conformal_p_values([5.0, 3.0, 2.5, 0.0], cal)
    np.testing.assert_allclose(p, [1 / 5, 3 / 5, 3 / 5, 5 / 5])


def test_conformal_p_values_of_exchangeable_non_members_are_uniform():
    """P(p <= k/(n+1)) = k/(n+1) exactly for a non-member exchangeable with the calibration set."""
    rng = np.random.default_rng(0)
    n, reps = 19, 4000
    cal = rng.standard_t(3, size=(reps, n))  # heavy tails: nothing Gaussian is assumed
    test = rng.standard_t(3, size=reps)
    p = np.array([conformal_p_values([t], c)[0] for t, c in zip(test, cal)])
    counts = np.bincount(np.rint(p * (n + 1)).astype(int) - 1, minlength=n + 1)
    assert counts.shape == (n + 1,)
    assert stats.chisquare(counts).pvalue > 1e-3  # uniform on {1/20, ..., 20/20}
    lo, hi = _binomial_99(reps, 1 / (n + 1))
    assert lo <= int((p <= 0.05).sum()) <= hi


def test_decide_at_alpha_rejects_non_members_at_rate_alpha():
    rng = np.random.default_rng(1)
    reps, n, alpha = 3000, 99, 0.05
    called = 0
    for _ in range(reps):
        d = decide(rng.normal(size=1), rng.normal(size=n), alpha=alpha)
        called += int(d.member[0])
    lo, hi = _binomial_99(reps, alpha)  # exactly 5/100 = 0.05 here
    assert lo <= called <= hi


# --------------------------------------------------------------------------------------------
# Benjamini-Hochberg


def test_bh_q_values_hand_computed():
    # sorted 0.01, 0.03, 0.04, 0.5 -> p*m/rank 0.04, 0.06, 0.0533, 0.5 -> running min from the right
    q = bh_q_values([0.01, 0.04, 0.03, 0.5])
    np.testing.assert_allclose(q, [0.04, 0.16 / 3, 0.16 / 3, 0.5])
    np.testing.assert_allclose(bh_q_values([0.9, 0.95]), [0.95, 0.95])  # monotone, not 1.8 and 0.95
    np.testing.assert_allclose(bh_q_values([0.7, 0.7, 0.7]), [0.7, 0.7, 0.7])  # ties share one q
    assert bh_q_values([0.6, 0.9, 0.9, 0.9]).max() <= 1.0


def _bh_step_up(p: np.ndarray, level: float) -> np.ndarray:
    """Reference: the BH step-up rule written out (reject the k* smallest, k* = max{i: p_(i) <= i level / m})."""
    m = p.shape[0]
    order = np.argsort(p)
    ok = np.flatnonzero(p[order] <= np.arange(1, m + 1) * level / m)
    out = np.zeros(m, dtype=bool)
    if ok.size:
        out[p <= p[order][ok[-1]]] = True
    return out


def test_bh_q_values_match_the_step_up_rule():
    try:  # statsmodels when installed, else the rule written out
        from statsmodels.stats.multitest import multipletests
    except ImportError:
        multipletests = None
    rng = np.random.default_rng(2)
    for _ in range(50):
        m = int(rng.integers(1, 60))
        p = np.concatenate([rng.uniform(size=m), rng.uniform(0, 0.01, size=m // 3)])
        p[rng.integers(0, p.size, size=3)] = p[0]  # ties
        q = bh_q_values(p)
        if multipletests is not None:
            np.testing.assert_allclose(q, multipletests(p, method="fdr_bh")[1], rtol=1e-12)
        for level in (0.01, 0.05, 0.1, 0.2, 0.5):
            np.testing.assert_array_equal(q <= level, _bh_step_up(p, level))
        order = np.argsort(p, kind="mergesort")
        assert (np.diff(q[order]) >= -1e-15).all()  # monotone in p


def test_bh_controls_the_fdr_in_simulation():
    rng = np.random.default_rng(3)
    reps, m, m1, n_cal, level = 300, 200, 40, 400, 0.1
    fdps, powers = [], []
    for _ in range(reps):
        non = rng.normal(size=m - m1)
        mem = rng.normal(2.5, 1.0, size=m1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResolutionWarning)  # lone members cannot be called here: stated
            d = decide(np.concatenate([mem, non]), rng.normal(size=n_cal), fdr=level)
        called = d.member
        false = int(called[m1:].sum())
        fdps.append(false / max(1, int(called.sum())))
        powers.append(called[:m1].mean())
    se = np.std(fdps) / math.sqrt(reps)
    assert np.mean(fdps) <= level * (m - m1) / m + 3 * se
    assert np.mean(powers) > 0.2  # the simulation is not vacuous: documents do get called


# --------------------------------------------------------------------------------------------
# decide


def test_threshold_matches_the_verdict():
    rng = np.random.default_rng(4)
    for kwargs in ({"alpha": 0.05}, {"alpha": 0.3}, {"fdr": 0.1}, {"fdr": 0.5}):
        for _ in range(20):
            cal = rng.normal(size=int(rng.integers(20, 80)))
            s = np.concatenate([rng.normal(size=30), rng.normal(3, 1, size=10)])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResolutionWarning)
                d = decide(s, cal, **kwargs)
            np.testing.assert_array_equal(d.member, s > d.threshold)
            if "alpha" in kwargs:
                np.testing.assert_array_equal(d.member, d.p_values <= kwargs["alpha"])
            else:
                np.testing.assert_array_equal(d.member, d.q_values <= kwargs["fdr"])


def test_decide_alpha_exact_level_and_summary():
    cal = np.arange(19.0)  # n = 19: p = 1/20 = 0.05 for a score above every calibration score
    d = decide([100.0, 18.0, 17.5], cal, alpha=0.05, ids=["a", "b", "c"])
    np.testing.assert_allclose(d.p_values, [1 / 20, 2 / 20, 2 / 20])
    assert d.member.tolist() == [True, False, False]
    assert d.threshold == 18.0
    s = d.to_dict()
    assert s["p_value_floor"] == pytest.approx(1 / 20)
    assert (s["n_calibration"], s["n_tested"], s["n_member"], s["alpha"], s["fdr"]) == (19, 3, 1, 0.05, None)
    json.dumps(s)


def test_decide_needs_exactly_one_level():
    with pytest.raises(ValueError, match="alpha, fdr: expected exactly one"):
        decide([1.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="alpha, fdr: expected exactly one"):
        decide([1.0], [0.0, 1.0], alpha=0.1, fdr=0.1)
    with pytest.raises(ValueError, match=r"alpha: expected a value in \(0, 1\), got 1.5"):
        decide([1.0], [0.0, 1.0], alpha=1.5)
    with pytest.raises(ValueError, match="fdr: expected a value in"):
        decide([1.0], [0.0, 1.0], fdr=0.0)


def test_decide_names_the_ids_with_nan_scores():
    with pytest.raises(ValueError, match=r"scores: expected no NaN, got 2 .*ids: doc-b, doc-d"):
        decide([1.0, np.nan, 2.0, np.nan], [0.0, 1.0], alpha=0.1, ids=["doc-a", "doc-b", "doc-c", "doc-d"])
    with pytest.raises(ValueError, match="calibration: expected no NaN"):
        decide([1.0], [0.0, np.nan], alpha=0.1)
    with pytest.raises(ValueError, match="ids: expected one id per score"):
        decide([1.0, 2.0], [0.0], alpha=0.5, ids=["a"])


def test_resolution_warnings():
    with pytest.warns(ResolutionWarning, match=r"alpha 0.01 is below the smallest p-value 1/\(n\+1\)"):
        d = decide([100.0], np.arange(10.0), alpha=0.01)
    assert not d.member.any() and math.isinf(d.threshold) and d.to_dict()["threshold"] is None
    with pytest.warns(ResolutionWarning, match="no document can be called"):
        decide([100.0], np.arange(10.0), fdr=0.05)
    with pytest.warns(ResolutionWarning, match="groups of at least 5 documents"):  # 100 / (0.1 * 200) = 5
        d = decide(np.r_[np.full(4, 1e9), np.zeros(96)], np.arange(199.0), fdr=0.1)
    assert d.min_callable == 5
    assert not d.member.any()  # four documents beating every calibration score are too few for BH here
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResolutionWarning)
        decide([1.0], np.arange(100.0), alpha=0.05)  # no warning when the floor is below alpha


# --------------------------------------------------------------------------------------------
# score tables


def _table(n: int, seed: int, prefix: str = "d") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = (np.arange(n) % 2).astype(np.int8)
    loss = rng.normal(3.0, 0.5, n) - 1.5 * label
    return pd.DataFrame({"row": np.arange(n), "id": [f"{prefix}{i}" for i in range(n)], "label": label,
                         "n_tokens": rng.integers(10, 100, n), "loss": loss, "zlib": loss / 40,
                         "min_k_0.2": -loss - 1, "min_k_pp_0.2": -loss / 2})


def test_attack_scores_orientation_and_names():
    t = _table(40, 0)
    np.testing.assert_allclose(attack_scores(t, "loss"), -t["loss"])
    np.testing.assert_allclose(attack_scores(t, "min_k_0.2"), t["min_k_0.2"])
    np.testing.assert_allclose(attack_scores(t, "min_k_pp_0.2"), t["min_k_pp_0.2"])
    ref = t[["id"]].assign(loss=2.0).iloc[::-1]  # any order, matched by id
    np.testing.assert_allclose(attack_scores(t, "reference_loss_diff", [ref]), -(t["loss"] - 2.0))
    assert available_attacks(t) == ["loss", "zlib", "min_k_0.2", "min_k_pp_0.2"]
    with pytest.raises(ValueError, match=r"attack: expected one of \['loss', 'zlib'"):
        attack_scores(t, "lira")
    with pytest.raises(ValueError, match="needs reference models"):
        attack_scores(t, "reference_loss_diff")
    bad = t.copy()
    bad.loc[[3, 7], "loss"] = np.nan
    with pytest.raises(ValueError, match=r"table\['loss'\]: expected no NaN, got 2 documents .*ids: d3, d7"):
        attack_scores(bad, "loss")


def test_decide_table_calibration_by_label_ids_and_table():
    t = _table(200, 1)
    by_label = decide_table(t, "loss", 0, alpha=0.05)
    assert by_label.n_calibration == 100 and by_label.n_tested == 100
    assert set(by_label.ids) == set(t["id"][t["label"] == 1])  # calibration rows are not tested
    assert by_label.member.mean() > 0.5  # members sit 3 sd below in loss
    cal_ids = list(t["id"][t["label"] == 0])
    by_ids = decide_table(t, "loss", cal_ids, alpha=0.05)
    np.testing.assert_array_equal(by_ids.p_values, by_label.p_values)
    cal_table = _table(200, 2, prefix="c")
    cal_table = cal_table[cal_table["label"] == 0]
    with pytest.warns(ResolutionWarning, match="groups of at least 20 documents"):  # 200 / (0.1 * 101)
        separate = decide_table(t, "loss", cal_table, fdr=0.1)
    assert separate.n_tested == 200 and separate.n_calibration == 100 and separate.calibration_source == "separate table"
    assert separate.to_dict()["calibration"] == "separate table"


def test_decide_table_bad_inputs():
    t = _table(20, 3)
    with pytest.raises(ValueError, match="a label value .* needs a 'label' column"):
        decide_table(t.drop(columns="label"), "loss", 0, alpha=0.1)
    with pytest.raises(ValueError, match=r"calibration: expected ids of target, got 1 ids not in it \(ids: nope\)"):
        decide_table(t, "loss", ["d0", "nope"], alpha=0.1)
    with pytest.raises(ValueError, match="calibration: expected no id shared with target, got 20 shared"):
        decide_table(t, "loss", t, alpha=0.1)
    with pytest.raises(ValueError, match="expected documents left to test"):
        decide_table(t, "loss", list(t["id"]), alpha=0.1)
    with pytest.raises(ValueError, match="at least one calibration document"):
        decide_table(t, "loss", 5, alpha=0.1)
    with pytest.raises(TypeError, match="calibration: expected a label value"):
        decide_table(t, "loss", "d0", alpha=0.1)
    with pytest.raises(ValueError, match="alpha, fdr"):
        decide_table(t, "loss", 0)


def test_write_decisions(tmp_path):
    t = _table(60, 4)
    with pytest.warns(ResolutionWarning, match="groups of at least 5 documents"):  # 30 / (0.2 * 31)
        d = decide_table(t, "loss", 0, fdr=0.2)
    payload = write_decisions(d, tmp_path / "out")
    table = pd.read_parquet(tmp_path / "out" / "decisions.parquet")
    assert list(table.columns) == ["id", "score", "p_value", "q_value", "member"]
    assert len(table) == 30 and table["member"].dtype == bool
    on_disk = json.loads((tmp_path / "out" / "decision.json").read_text())
    assert on_disk == json.loads(json.dumps(payload))
    for key in ("attack", "n_calibration", "threshold", "alpha", "fdr", "p_value_floor", "n_member", "n_tested"):
        assert key in on_disk
    assert on_disk["attack"] == "loss" and on_disk["fdr"] == 0.2 and on_disk["p_value_floor"] == pytest.approx(1 / 31)
    assert on_disk["n_member"] == int(table["member"].sum())
    with pytest.raises(TypeError, match="decisions: expected a Decisions"):
        write_decisions({}, tmp_path)
    assert isinstance(d, Decisions)
