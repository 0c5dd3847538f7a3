"""Dataset inference (`mia_fast.answers.dataset_inference`) on synthetic score tables.

The tables mimic an LM's per-document statistics: each document has a difficulty ``d`` that moves
every statistic; members have a slightly lower loss (weak per-document separation: the loss alone
has an AUC near 0.58). ``entropy_mean`` follows the difficulty without membership signal, so the
learned combination (loss against entropy) separates the sets better than any single column, as
the aggregation of Maini et al. (2024) intends.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mia_fast.answers.dataset_inference import (
    DEFAULT_CURVE_SIZES,
    DatasetInferenceResult,
    combine_p_values,
    dataset_inference,
    document_features,
    permutation_test,
    write_dataset_inference,
)
from mia_fast.metrics import roc_auc


def _table(n: int, member: bool, rng: np.random.Generator, prefix: str, shift: float = 0.3) -> pd.DataFrame:
    d = rng.normal(size=n)
    m = float(member)
    loss = 3.0 + d - shift * m + 0.5 * rng.normal(size=n)
    return pd.DataFrame({
        "row": np.arange(n), "id": [f"{prefix}{i}" for i in range(n)], "label": np.full(n, int(member)),
        "text_hash": [f"{prefix}h{i}" for i in range(n)], "n_tokens": rng.integers(20, 200, n),
        "n_sigma_clipped": np.zeros(n, dtype=np.int64), "n_tokens_prefix16": rng.integers(4, 180, n),
        "loss": loss, "entropy_mean": 2.0 + d + 0.5 * rng.normal(size=n),
        "min_k_0.2": -(6.0 + 1.5 * d) + shift * m + 1.5 * rng.normal(size=n), "zlib": loss / rng.uniform(30, 60, n),
    })


def _binomial_99(n: int, p: float) -> tuple[float, float]:
    return stats.binom.interval(0.99, n, p)


# --------------------------------------------------------------------------------------------
# the statistical pieces


def test_combine_p_values_is_twice_the_median():
    assert combine_p_values([0.2]) == 0.2  # one split: itself
    assert combine_p_values([0.01] * 5) == pytest.approx(0.02)  # identical splits still pay the factor 2
    assert combine_p_values([0.001, 0.5, 0.9]) == 1.0  # a single lucky split does not count
    assert combine_p_values([0.01, 0.02, 0.03, 0.9]) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="p_values: expected a non-empty"):
        combine_p_values([])


def test_permutation_test_is_calibrated_and_has_power():
    rng = np.random.default_rng(0)
    reps, alpha = 400, 0.05
    p_null = np.array([permutation_test(rng.exponential(size=15), rng.exponential(size=25), n_permutations=99, rng=rng)
                       for _ in range(reps)])
    lo, hi = _binomial_99(reps, alpha)
    assert lo <= int((p_null <= alpha).sum()) <= hi
    assert p_null.min() >= 1 / 100
    assert permutation_test(rng.normal(1.0, 1, 40), rng.normal(0, 1, 40), n_permutations=199, rng=rng) < 0.01


# --------------------------------------------------------------------------------------------
# power and calibration of the whole procedure


def test_members_against_non_members_are_detected():
    rng = np.random.default_rng(1)
    suspect, validation = _table(300, True, rng, "s"), _table(300, False, rng, "v")
    labels = np.r_[np.ones(300), np.zeros(300)]
    for col, sign in (("loss", -1), ("min_k_0.2", 1), ("zlib", -1), ("entropy_mean", -1)):
        assert roc_auc(labels, sign * np.r_[suspect[col], validation[col]]) < 0.65  # weak per document
    r = dataset_inference(suspect, validation, random_state=0)
    assert r.p_value < 0.01 and r.member
    assert r.test == "permutation"  # 150 per set in part B < 200
    assert r.p_value == combine_p_values(r.split_p_values) and len(r.split_p_values) == 10
    assert (r.n_suspect, r.n_validation) == (300, 300)
    assert r.control_p_value is not None and r.control_valid is True and "not told apart" in r.control_message
    names = [f["name"] for f in r.features]
    assert set(names) == {"loss", "entropy_mean", "min_k_0.2", "zlib"}  # metadata columns never are features
    w = {f["oriented"]: f["weight"] for f in r.features}
    assert w["-loss"] > 0.2 and w["-entropy_mean"] < -0.2  # readable: lower loss is member-like
    # the curve: the documented sizes below n, then all documents (the result itself)
    assert [c["n_suspect"] for c in r.curve] == [m for m in DEFAULT_CURVE_SIZES if m < 300] + [300]
    assert [c["n_validation"] for c in r.curve] == [25, 50, 100, 200, 300]
    assert r.curve[-1]["p_value"] == r.p_value
    ps = [c["p_value"] for c in r.curve]
    assert ps[-1] <= min(ps[:2]) and stats.spearmanr([c["n_suspect"] for c in r.curve], ps)[0] < 0
    assert r.held_out_auc > 0.55 and r.effect_size > 0


def test_welch_path_and_larger_sets():
    rng = np.random.default_rng(2)
    r = dataset_inference(_table(500, True, rng, "s"), _table(450, False, rng, "v"), random_state=1, n_splits=4,
                          curve_sizes=(), control=False)
    assert r.test == "welch" and r.n_permutations == 999  # 250 and 225 in part B
    assert r.p_value < 1e-4
    assert r.control_p_value is None and r.control_valid is None and "control=False" in r.control_message
    assert [c["n_suspect"] for c in r.curve] == [500]


@pytest.mark.parametrize("test,n_splits,reps", [("welch", 1, 200), ("permutation", 3, 60)])
def test_two_non_member_sets_reject_at_most_at_alpha(test, n_splits, reps):
    """The false-positive rate at 0.05 over independent seeds stays in its binomial 99% interval."""
    rejected = 0
    for seed in range(reps):
        rng = np.random.default_rng(1000 + seed)
        r = dataset_inference(_table(60, False, rng, "a"), _table(60, False, rng, "b"), test=test, n_splits=n_splits,
                              n_permutations=99, random_state=seed, control=False, curve_sizes=())
        rejected += int(r.member)
    lo, hi = _binomial_99(reps, 0.05)
    assert rejected <= hi
    if n_splits == 1:  # one split is exact in level (no conservative combination): not too few either
        assert rejected >= lo


def test_the_best_split_would_not_be_valid():
    """Why the splits are combined: their minimum rejects far too often under the null."""
    rejected_min, rejected_combined, reps = 0, 0, 60
    for seed in range(reps):
        rng = np.random.default_rng(5000 + seed)
        r = dataset_inference(_table(60, False, rng, "a"), _table(60, False, rng, "b"), test="welch", n_splits=10,
                              random_state=seed, control=False, curve_sizes=())
        rejected_min += int(min(r.split_p_values) <= 0.05)
        rejected_combined += int(r.member)
    assert rejected_combined <= _binomial_99(reps, 0.05)[1]
    assert rejected_min > _binomial_99(reps, 0.05)[1]


def test_control_flags_a_validation_set_that_is_not_homogeneous():
    rng = np.random.default_rng(3)
    first, second = _table(150, False, rng, "v"), _table(150, True, rng, "w", shift=1.0)  # drift along the rows
    validation = pd.concat([first, second], ignore_index=True)
    r = dataset_inference(_table(200, False, rng, "s"), validation, control_split="ordered", random_state=0,
                          curve_sizes=(), n_splits=5)
    assert r.control_valid is False and r.control_p_value <= 0.05
    assert "not a valid control" in r.control_message
    ok = dataset_inference(_table(200, False, rng, "s"), validation, control_split="random", random_state=0,
                           curve_sizes=(), n_splits=5)
    assert ok.control_valid is True  # random halves of any set are exchangeable


# --------------------------------------------------------------------------------------------
# features


def test_features_orientation_nan_constant_and_differing_columns():
    rng = np.random.default_rng(4)
    s, v = _table(40, True, rng, "s"), _table(40, False, rng, "v")
    s["year"], v["year"] = 2024, 2020  # metadata: never a feature unless asked for
    s["top1_acc"], v["top1_acc"] = 0.5, 0.5  # constant
    s["phi_mean"], v["phi_mean"] = rng.normal(size=40), rng.normal(size=40)
    s.loc[3, "phi_mean"] = np.nan  # NaN in one document
    s["log_rank_mean"] = rng.normal(size=40)  # only in the suspect table
    names, xs, xv, dropped, notes = document_features(s, v)
    assert names == ["-loss", "-entropy_mean", "min_k_0.2", "-zlib"]
    assert xs.shape == (40, 4) and xv.shape == (40, 4)
    np.testing.assert_allclose(xs[:, 0], -s["loss"])
    assert dropped["top1_acc"].startswith("constant")
    assert dropped["phi_mean"] == "NaN/inf in 1 suspect and 0 validation documents"
    assert dropped["log_rank_mean"] == "only in the suspect table"
    assert any("year" in n and "not model statistics" in n for n in notes)
    names, *_ = document_features(s, v, features=["loss", "year"])
    assert names == ["-loss", "year"]
    r = dataset_inference(s, v, n_splits=2, curve_sizes=(), random_state=0)
    assert "top1_acc" in r.dropped_features and any("dropped phi_mean" in n for n in r.notes)


def test_reference_features_remove_the_difficulty():
    rng = np.random.default_rng(5)
    n = 200
    d_s, d_v = rng.normal(size=n), rng.normal(size=n)
    s = pd.DataFrame({"id": [f"s{i}" for i in range(n)], "loss": 3 + d_s - 0.2 + 0.3 * rng.normal(size=n)})
    v = pd.DataFrame({"id": [f"v{i}" for i in range(n)], "loss": 3 + d_v + 0.3 * rng.normal(size=n)})
    ref_s = pd.DataFrame({"id": s["id"], "loss": 3.5 + d_s + 0.3 * rng.normal(size=n)})
    ref_v = pd.DataFrame({"id": v["id"], "loss": 3.5 + d_v + 0.3 * rng.normal(size=n)})
    names, xs, _, _, _ = document_features(s, v, references=[(ref_s, ref_v)])
    assert names == ["-loss", "-(loss-ref)", "-(loss/ref)"]
    np.testing.assert_allclose(xs[:, 1], -(s["loss"] - ref_s["loss"]))
    both = pd.concat([ref_v, ref_s]).sample(frac=1, random_state=0)  # one table, any order
    kw = dict(n_splits=5, curve_sizes=(), control=False, random_state=0)
    with_ref = dataset_inference(s, v, references=[both], **kw)
    without = dataset_inference(s, v, **kw)
    assert with_ref.n_references == 1 and without.p_value > 0.01 and with_ref.p_value < 0.01
    with pytest.raises(ValueError, match=r"references\[0\]: expected a row for every validation id, got 200 missing"):
        dataset_inference(s, v, references=[ref_s], **kw)


# --------------------------------------------------------------------------------------------
# bad input


def test_bad_inputs_are_named():
    rng = np.random.default_rng(6)
    s, v = _table(40, True, rng, "s"), _table(40, False, rng, "v")
    with pytest.raises(ValueError, match=r"suspect, validation: expected disjoint .* got 2 texts in both \(same "
                                         r"text_hash: sh0, sh1\)"):
        dataset_inference(s, pd.concat([v, s.iloc[:2]]))
    no_hash_s, no_hash_v = s.drop(columns="text_hash"), v.drop(columns="text_hash")
    with pytest.raises(ValueError, match=r"suspect, validation: expected disjoint .* got 2 ids in both \(ids: s0, s1\)"):
        dataset_inference(no_hash_s, pd.concat([no_hash_v, no_hash_s.iloc[:2]]))
    # two corpus files number their default ids alike: disjoint texts under the same ids are fine
    dataset_inference(s, v.assign(id=s["id"].to_numpy()), n_splits=2, n_permutations=99, control=False,
                      curve_sizes=[])
    with pytest.raises(ValueError, match=r"suspect: expected at least 20 documents .* got 12"):
        dataset_inference(s.iloc[:12], v)
    with pytest.raises(ValueError, match=r"validation: expected at least 38 documents .*train_fraction=0.25\), got 37"):
        dataset_inference(_table(60, True, rng, "t"), v.iloc[:37], train_fraction=0.25)
    const_s, const_v = s[["id"]].assign(loss=1.0), v[["id"]].assign(loss=1.0)
    with pytest.raises(ValueError, match=r"expected at least one usable .* dropped: \{'loss': 'constant \(-1\)'\}"):
        dataset_inference(const_s, const_v)
    nan_s = s[["id"]].assign(loss=np.nan)
    with pytest.raises(ValueError, match="expected at least one usable per-document statistic"):
        dataset_inference(nan_s, v[["id", "loss"]])
    with pytest.raises(ValueError, match="expected at least one usable per-document statistic"):
        dataset_inference(s[["id", "row", "label", "n_tokens"]], v[["id", "row", "label", "n_tokens"]])
    with pytest.raises(ValueError, match=r"features: expected columns of both tables, got 'phi_mean'"):
        dataset_inference(s, v, features=["phi_mean"])
    with pytest.raises(ValueError, match=r"test: expected one of \('auto', 'welch', 'permutation'\), got 'z'"):
        dataset_inference(s, v, test="z")
    with pytest.raises(ValueError, match="n_splits: expected an integer >= 1, got 0"):
        dataset_inference(s, v, n_splits=0)
    with pytest.raises(ValueError, match=r"alpha: expected a number in \(0, 1\), got 1.2"):
        dataset_inference(s, v, alpha=1.2)
    with pytest.raises(ValueError, match="control_split: expected one of"):
        dataset_inference(s, v, control_split="sorted")
    with pytest.raises(TypeError, match="suspect: expected a pandas DataFrame"):
        dataset_inference({"loss": [1.0]}, v)
    with pytest.raises(ValueError, match=r"validation\['id'\]: expected unique ids"):
        dataset_inference(s, pd.concat([v, v.iloc[:1]]))


def test_small_validation_set_skips_the_control_with_a_reason():
    rng = np.random.default_rng(7)
    r = dataset_inference(_table(30, True, rng, "s"), _table(30, False, rng, "v"), n_splits=2, random_state=0)
    assert r.control_p_value is None and r.control_valid is None
    assert "control not run" in r.control_message and "15 documents" in r.control_message


# --------------------------------------------------------------------------------------------
# output


def test_writer_produces_the_files_with_the_required_keys(tmp_path):
    rng = np.random.default_rng(8)
    r = dataset_inference(_table(120, True, rng, "s"), _table(100, False, rng, "v"), n_splits=3, random_state=0,
                          n_permutations=199)
    assert isinstance(r, DatasetInferenceResult)
    payload = write_dataset_inference(r, tmp_path / "di", meta={"suspect": "dir/s"})
    data = json.loads((tmp_path / "di" / "result.json").read_text())
    assert data == json.loads(json.dumps(payload))
    for key in ("p_value", "test", "alpha", "member", "n_suspect", "n_validation", "features", "control_p_value",
                "control_valid", "curve"):
        assert key in data
    assert data["meta"] == {"suspect": "dir/s"} and data["n_suspect"] == 120 and data["n_validation"] == 100
    assert all({"name", "oriented", "weight", "auc"} <= set(f) for f in data["features"])
    assert [c["n_suspect"] for c in data["curve"]] == [25, 50, 100, 120]
    assert [c["n_validation"] for c in data["curve"]] == [21, 42, 83, 100]
    report = (tmp_path / "di" / "report.md").read_text()
    for heading in ("## What was tested", "## Verdict", "## What this does not prove"):
        assert heading in report
    assert f"{r.p_value:.3g}" in report
    png = (tmp_path / "di" / "p_value_vs_documents.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not list((tmp_path / "di").glob(".*.tmp-*"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        json.dumps(r.to_dict())


# ------------------------------------------------------------------------------------------------
# a model trained in the test


def test_a_weakly_trained_model_is_caught_by_dataset_inference_where_every_attack_is_weak():
    """A tiny GPT-2 trained one short epoch (lr 1.6e-4) on 300 of 600 documentation paragraphs: no
    per-document attack reaches AUC 0.65, yet the collection of members is told from the
    non-members with p < 0.01, while the validation-vs-validation control does not reject."""
    from mia_fast.answers.decide import attack_scores, available_attacks
    from mia_fast.audit.data import pydoc_paragraphs
    from mia_fast.audit.shadow import make_target_membership
    from mia_fast.audit.shadow_lm import lm_preset, train_causal_lm
    from mia_fast.scoring.scorer import score_corpus

    texts = pydoc_paragraphs()[:600]
    member = make_target_membership(len(texts), 0)
    tokenizer, config, _ = lm_preset("quick", texts)
    model = train_causal_lm([t for t, m in zip(texts, member) if m], tokenizer, config, epochs=1, lr=1.6e-4,
                            batch_size=8, max_length=32, seed=0)
    table = score_corpus(model, tokenizer, texts, first_token="bos", max_length=32).sequences
    aucs = {name: roc_auc(member, attack_scores(table, name)) for name in available_attacks(table)}
    assert max(aucs.values()) < 0.65, aucs
    result = dataset_inference(table[member == 1], table[member == 0], random_state=0, curve_sizes=[])
    assert result.p_value < 0.01 and result.member
    assert result.control_p_value > 0.05 and result.control_valid
