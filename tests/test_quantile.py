"""Quantile-regression MIA (Bertran et al., 2023): FPR control on held-out non-members, power, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import QuantileRegressor

import lm_fixtures as fx
from mia_fast.aggregate import zlib_length
from mia_fast.attacks.quantile import DEFAULT_QUANTILE_FEATURES, QuantileRegressionAttack
from mia_fast.attacks.threshold import LossAttack
from mia_fast.metrics import roc_auc


@pytest.fixture(autouse=True)
def _one_thread():
    """One OpenMP thread for the gradient boosting: on a shared 2-core machine more are far slower."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def _table(n, shift, seed):
    """Non-members' score -loss ~ N(2 * difficulty, 1); members' is shifted up by ``shift``."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 3.0, n)
    score = 2.0 * x + rng.normal(0.0, 1.0, n) + shift
    return pd.DataFrame({"difficulty": x, "loss": -score, "n_tokens": rng.integers(20, 200, n)})


def _tolerance(alpha, n_fit, n_test):
    # binomial spread of the held-out FPR plus that of the fitted quantile, at 4 sigma
    return 4 * math.sqrt(alpha * (1 - alpha) * (1 / n_fit + 1 / n_test))


@pytest.mark.parametrize("regressor, alpha", [("linear", 0.05), ("gbm", 0.05), ("gbm", 0.2)])
def test_fpr_is_alpha_on_held_out_non_members(regressor, alpha):
    n_fit, n_test = 2000, 5000
    fit = _table(n_fit, 0.0, seed=1)
    held_out = _table(n_test, 0.0, seed=2)
    attack = QuantileRegressionAttack(base="loss", alpha=alpha, features=["difficulty"], regressor=regressor)
    assert attack.fit(fit) is attack
    fpr = attack.predict(held_out).mean()
    assert abs(fpr - alpha) <= _tolerance(alpha, n_fit, n_test) + (0.01 if regressor == "gbm" else 0.0), fpr
    assert attack.quantile_ == pytest.approx(1 - alpha)
    assert attack.features_ == ("difficulty",) and attack.n_nonmembers_ == n_fit and attack.offset_ == 0.0
    assert abs(attack.train_fpr_ - alpha) < 0.03
    if regressor == "linear":  # the true conditional quantile is 2x + z_{1-alpha}
        from scipy.stats import norm

        q = attack.predicted_quantile(pd.DataFrame({"difficulty": [0.0, 3.0]}))
        np.testing.assert_allclose(q, [norm.ppf(1 - alpha), 6 + norm.ppf(1 - alpha)], atol=0.25)


def test_beats_a_global_threshold_at_the_same_fpr():
    alpha = 0.05
    fit = _table(2000, 0.0, seed=3)
    held_out = _table(4000, 0.0, seed=4)
    members = _table(2000, 2.0, seed=5)
    attack = QuantileRegressionAttack(alpha=alpha, features=["difficulty"], regressor="gbm").fit(fit)
    tpr = attack.predict(members).mean()
    # the plain LOSS attack thresholded at the same FPR on the same non-members
    threshold = np.quantile(-fit["loss"], 1 - alpha)
    tpr_global = (-members["loss"] > threshold).mean()
    fpr_global = (-held_out["loss"] > threshold).mean()
    assert abs(fpr_global - alpha) < 0.02 and abs(attack.predict(held_out).mean() - alpha) < 0.025
    assert tpr > tpr_global + 0.15, (tpr, tpr_global)  # ~0.64 against ~0.3
    labels = np.r_[np.ones(len(members)), np.zeros(len(held_out))]
    both = pd.concat([members, held_out], ignore_index=True)
    assert roc_auc(labels, attack.score_samples(both)) > roc_auc(labels, LossAttack().score_samples(both)) + 0.05


def test_fit_with_labels_uses_non_members_only():
    non, members = _table(600, 0.0, seed=6), _table(300, 5.0, seed=7)
    both = pd.concat([non, members], ignore_index=True)
    y = np.r_[np.zeros(len(non), dtype=int), np.ones(len(members), dtype=int)]
    with_y = QuantileRegressionAttack(features=["difficulty"], regressor="linear").fit(both, y)
    plain = QuantileRegressionAttack(features=["difficulty"], regressor="linear").fit(non)
    assert with_y.n_nonmembers_ == 600
    test = _table(50, 0.0, seed=8)
    np.testing.assert_allclose(with_y.score_samples(test), plain.score_samples(test))
    # base as an attack instance, the same as the column name
    inst = QuantileRegressionAttack(base=LossAttack(), features=["difficulty"], regressor="linear").fit(non)
    np.testing.assert_allclose(inst.score_samples(test), plain.score_samples(test))
    # a mapping of columns works as a table; score_samples = base score - predicted quantile
    mapping = {c: test[c].to_numpy() for c in test.columns}
    np.testing.assert_allclose(plain.score_samples(mapping), -test["loss"] - plain.predicted_quantile(mapping))
    assert plain.predict(mapping).dtype == bool


def test_conformal_calibration_bounds_the_fpr():
    alpha = 0.1
    fit, held_out = _table(1000, 0.0, seed=9), _table(5000, 0.0, seed=10)
    attack = QuantileRegressionAttack(alpha=alpha, features=["difficulty"], calibration_fraction=0.5,
                                      regressor_params={"max_iter": 300, "min_samples_leaf": 5}).fit(fit)
    assert np.isfinite(attack.offset_)
    fpr = attack.predict(held_out).mean()
    assert fpr <= alpha + _tolerance(alpha, 500, 5000), fpr
    # deterministic under the same random_state
    again = clone(attack).fit(fit)
    np.testing.assert_array_equal(again.score_samples(held_out), attack.score_samples(held_out))


def test_errors():
    non = _table(200, 0.0, seed=11)
    feats = {"features": ["difficulty"]}
    for alpha in (0, 1, -0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match=r"alpha: expected a false-positive rate in \(0, 1\)"):
            QuantileRegressionAttack(alpha=alpha, **feats).fit(non)
    with pytest.raises(ValueError, match="X: expected a feature column 'length'"):
        QuantileRegressionAttack(features=["length"]).fit(non)
    with pytest.raises(ValueError, match="expected a feature column 'zlib_length'.*derived"):
        QuantileRegressionAttack().fit(non)  # default features: no zlib column here
    with pytest.raises(ValueError, match="X: expected the base column 'min_k_0.2'"):
        QuantileRegressionAttack(base="min_k_0.2", **feats).fit(non)
    with pytest.raises(ValueError, match="base: expected an attack with score_samples or one of the columns"):
        QuantileRegressionAttack(base="difficulty", features=["n_tokens"]).fit(non)
    with pytest.raises(TypeError, match="base: expected a column name or an attack"):
        QuantileRegressionAttack(base=3, **feats).fit(non)
    with pytest.raises(ValueError, match="features: expected columns that describe the example, not the base"):
        QuantileRegressionAttack(features=["difficulty", "loss"]).fit(non)
    with pytest.raises(ValueError, match="features: expected distinct"):
        QuantileRegressionAttack(features=["difficulty", "difficulty"]).fit(non)
    with pytest.raises(TypeError, match="features: expected a sequence"):
        QuantileRegressionAttack(features="difficulty").fit(non)
    bad = non.copy()
    bad.loc[3, "difficulty"] = np.nan
    with pytest.raises(ValueError, match=r"X\['difficulty'\]: expected finite feature values, got 1 NaN/inf values \(first at row 3\)"):
        QuantileRegressionAttack(**feats).fit(bad)
    bad = non.copy()
    bad.loc[5, "loss"] = np.inf
    with pytest.raises(ValueError, match=r"X\['loss'\]: expected finite base scores"):
        QuantileRegressionAttack(**feats).fit(bad)
    with pytest.raises(ValueError, match=r"expected at least 100 non-member rows .*got 60"):
        QuantileRegressionAttack(alpha=0.01, **feats).fit(non.iloc[:60])
    with pytest.raises(ValueError, match=r"expected at least 10 non-member rows \(y == 0\).*got 5"):
        QuantileRegressionAttack(alpha=0.5, **feats).fit(non.iloc[:20], np.r_[np.zeros(5), np.ones(15)])
    with pytest.raises(ValueError, match=r"expected at least 40 non-member rows.*calibration"):
        QuantileRegressionAttack(alpha=0.05, calibration_fraction=0.5, **feats).fit(non.iloc[:30])
    with pytest.raises(ValueError, match="calibration_fraction"):
        QuantileRegressionAttack(calibration_fraction=1.0, **feats).fit(non)
    with pytest.raises(ValueError, match="y: expected shape"):
        QuantileRegressionAttack(**feats).fit(non, np.zeros(3))
    with pytest.raises(ValueError, match="regressor: expected one of"):
        QuantileRegressionAttack(regressor="forest", **feats).fit(non)
    with pytest.raises(TypeError, match="regressor_params: expected a dict"):
        QuantileRegressionAttack(regressor_params=[1], **feats).fit(non)
    with pytest.raises(TypeError, match="X: expected a per-sequence table"):
        QuantileRegressionAttack(**feats).fit(np.zeros((10, 2)))
    with pytest.raises(NotFittedError):
        QuantileRegressionAttack(**feats).score_samples(non)
    fitted = QuantileRegressionAttack(regressor=QuantileRegressor(quantile=0.95, alpha=0.0), **feats).fit(non)
    with pytest.raises(ValueError, match="X: expected a feature column 'difficulty'"):
        fitted.score_samples(non.drop(columns="difficulty"))


# --------------------------------------------------------------------------------------------
# a tiny trained GPT-2


@pytest.fixture(scope="module")
def scored():
    """Score tables of a 2-layer GPT-2 trained on 24 member paragraphs: (members + 24 unseen
    paragraphs, their labels) and 60 other unseen paragraphs, the known non-members.

    The paragraphs are shuffled first: neighbouring paragraphs of the Python docs share a topic, so
    known non-members taken from other topics than the evaluated ones would be another distribution.
    """
    from mia_fast.scoring.scorer import score_corpus

    paras = [fx.prose()[i] for i in np.random.default_rng(0).permutation(108)]
    members, non_members, known = paras[:24], paras[24:48], paras[48:108]
    tok = fx.tokenizer()
    model = fx.train_tiny_gpt2(members, tok)
    texts = members + non_members + known
    table = score_corpus(model, tok, texts, first_token="bos").sequences
    table["text"] = texts
    n_eval = len(members) + len(non_members)
    labels = np.array([1] * len(members) + [0] * len(non_members))
    return table.iloc[:n_eval].reset_index(drop=True), labels, table.iloc[n_eval:].reset_index(drop=True)


@pytest.mark.parametrize("regressor", ["gbm", "linear"])
def test_trained_gpt2_members_score_higher(scored, regressor):
    evaluation, labels, known_non_members = scored
    attack = QuantileRegressionAttack(base="loss", alpha=0.1, regressor=regressor).fit(known_non_members)
    assert attack.features_ == DEFAULT_QUANTILE_FEATURES
    scores = attack.score_samples(evaluation)
    assert scores.shape == (len(evaluation),) and scores.dtype == np.float64
    auc = roc_auc(labels, scores)
    assert auc > 0.5, auc
    flagged = attack.predict(evaluation)
    assert flagged[labels == 1].mean() > flagged[labels == 0].mean()


def test_zlib_length_is_derived_from_the_table(scored):
    from mia_fast.attacks.quantile import _feature

    evaluation, _, _ = scored
    derived = _feature(evaluation, "zlib_length", "X", list(evaluation.columns))
    np.testing.assert_array_equal(derived, [zlib_length(t) for t in evaluation["text"]])


# --------------------------------------------------------------------------------------------
# mia-fast attack --quantile-nonmembers


def _write_tables(scored, tmp_path):
    evaluation, labels, known = scored
    target = evaluation.drop(columns="text").assign(label=labels)
    target_path, known_path = tmp_path / "target.parquet", tmp_path / "known.parquet"
    target.to_parquet(target_path)
    known.drop(columns="text").to_parquet(known_path)
    return target, known, target_path, known_path


def test_attack_command_runs_quantile_regression(scored, tmp_path, capsys):
    from mia_fast.cli import main

    target, known, target_path, known_path = _write_tables(scored, tmp_path)
    out = tmp_path / "report"
    assert main(["attack", "--target", str(target_path), "--quantile-nonmembers", str(known_path),
                 "--quantile-alpha", "0.1", "--out", str(out), "--no-shift-check"]) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    expected = QuantileRegressionAttack("loss", alpha=0.1).fit(known.drop(columns="text")).score_samples(target)
    assert metrics["attacks"]["quantile_loss"]["auc"] == pytest.approx(roc_auc(target["label"].to_numpy(), expected))
    assert metrics["attacks"]["quantile_loss"]["auc"] > 0.5
    note = (out / "report.md").read_text()
    assert "fitted on 60 known non-members" in note and "(alpha 0.1)" in note
    assert pd.read_parquet(out / "scores.parquet")["quantile_loss"].to_numpy() == pytest.approx(expected)


def test_attack_command_refuses_bad_quantile_inputs(scored, tmp_path, capsys):
    from mia_fast.cli import main

    target, known, target_path, known_path = _write_tables(scored, tmp_path)
    base = ["attack", "--target", str(target_path), "--out", str(tmp_path / "r"), "--no-shift-check"]
    cases = [
        (["--quantile-alpha", "0.1"], "--quantile-base / --quantile-alpha: given without --quantile-nonmembers"),
        (["--quantile-nonmembers", str(known_path), "--quantile-alpha", "1.5"],
         "--quantile-alpha: expected a false-positive rate in (0, 1), got 1.5"),
        (["--quantile-nonmembers", str(known_path), "--quantile-base", "entropy"],
         "--quantile-base: expected an attack with score_samples or one of the columns"),
        (["--quantile-nonmembers", str(tmp_path / "missing.parquet")], "missing.parquet: no such score directory or .parquet table"),
    ]
    overlap = tmp_path / "overlap.parquet"
    pd.concat([known, target.iloc[:2].drop(columns="label")]).drop(columns="text").to_parquet(overlap)
    cases.append((["--quantile-nonmembers", str(overlap)], "nonmembers: 2 ids are also among the target's samples"))
    labelled = tmp_path / "labelled.parquet"
    known.drop(columns="text").assign(label=[1] + [0] * (len(known) - 1)).to_parquet(labelled)
    cases.append((["--quantile-nonmembers", str(labelled)], "nonmembers: expected known non-members only, got 1 rows"))
    tiny = tmp_path / "tiny.parquet"
    known.drop(columns="text").iloc[:3].to_parquet(tiny)
    cases.append((["--quantile-nonmembers", str(tiny)], "X: expected at least"))
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not (tmp_path / "r").exists()


def test_nonmembers_scored_by_another_model_are_refused():
    from mia_fast.scoring.run import CorpusMismatchError, check_same_model

    def table(model_sha, dtype="fp32", max_length=512):
        t = pd.DataFrame({"id": ["a"], "loss": [1.0]})
        t.attrs["manifest"] = {"identity": {"model": {"sha256": model_sha, "path": "/m"},
                                            "params": {"dtype": dtype, "head": "auto"}},
                               "tokenizer": "T", "tokenizer_sha256": "t" * 64,
                               "settings": {"first_token": "bos", "max_length": max_length}}
        return t

    check_same_model(table("a" * 64), table("a" * 64))
    check_same_model(table("a" * 64), pd.DataFrame({"id": ["b"]}))  # a plain table is not checked
    with pytest.raises(CorpusMismatchError, match=r"not scored by the same model.*other model weights"):
        check_same_model(table("a" * 64), table("b" * 64))
    with pytest.raises(CorpusMismatchError, match=r"dtype 'fp32' vs 'bf16' \(--dtype\)"):
        check_same_model(table("a" * 64), table("a" * 64, dtype="bf16"))
    with pytest.raises(CorpusMismatchError, match=r"max_length 512 vs 128 \(--max-length\)"):
        check_same_model(table("a" * 64), table("a" * 64, max_length=128))
