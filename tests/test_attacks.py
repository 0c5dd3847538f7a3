"""Attacks: golden values against direct transcriptions of the published formulas, orientation
(higher = member), the scikit-learn estimator contract, and input validation."""

from __future__ import annotations

import logging
import string

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import mia_fast
from mia_fast.aggregate import aggregate
from mia_fast.attacks import (
    RMIA,
    LiRA,
    LossAttack,
    MinK,
    MinKPlusPlus,
    ReferenceAttack,
    ShadowClassifierAttack,
    ZlibAttack,
)
from mia_fast.metrics import roc_auc

IGNORE = -100


# --------------------------------------------------------------------------------------------
# synthetic data


def lm_batch(n=60, length=16, vocab=40, seed=0, member_boost=1.5):
    """Logits (n, L, V) of a "model" that gives members' tokens extra logit, with ragged masks.

    Returns logits, targets, TokenStats, labels (n,) and the per-sequence table (with ``id``).
    """
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(n, length, vocab, generator=g)
    targets = torch.randint(0, vocab, (n, length), generator=g)
    labels = torch.arange(n) % 2 == 0
    boost = torch.where(labels[:, None], member_boost, 0.0) + 0.5 * torch.randn(n, length, generator=g)
    logits.scatter_add_(-1, targets[..., None], boost[..., None])
    lengths = torch.randint(3, length + 1, (n,), generator=g)
    targets = torch.where(torch.arange(length)[None, :] < lengths[:, None], targets, IGNORE)
    stats = mia_fast.token_stats(logits, targets, ignore_index=IGNORE)
    rng = np.random.default_rng(seed)
    texts = ["".join(rng.choice(list(string.ascii_lowercase + " "), size=rng.integers(20, 80)))
             for _ in range(n)]
    table = aggregate(stats, texts=texts)
    table["id"] = np.array([f"doc{i}" for i in range(n)])
    return logits, targets, stats, labels.numpy().astype(int), table


@pytest.fixture(scope="module")
def lm():
    return lm_batch()


def reference_setup(n_models=16, n_samples=60, n_queries=1, seed=0, effect=1.5):
    """LiRA-style statistics: each sample has its own mean; IN models add ``effect``.

    Every sample is IN exactly half of the models. Returns reference (K, Q, N), keep (K, N),
    target (Q, N), labels (N,).
    """
    rng = np.random.default_rng(seed)
    keep = np.zeros((n_models, n_samples), bool)
    for j in range(n_samples):
        keep[rng.permutation(n_models)[: n_models // 2], j] = True
    mu = rng.normal(0, 2, size=(n_queries, n_samples))
    spread = rng.uniform(0.5, 1.5, size=(1, n_samples))
    reference = mu[None] + effect * keep[:, None, :] + spread * rng.normal(size=(n_models, n_queries, n_samples))
    labels = (rng.random(n_samples) < 0.5).astype(int)
    target = mu + effect * labels[None, :] + spread * rng.normal(size=(n_queries, n_samples))
    return reference, keep, target, labels


# --------------------------------------------------------------------------------------------
# threshold attacks


def test_threshold_attacks_orientation(lm):
    *_, labels, table = lm
    for attack in (LossAttack(), ZlibAttack(), MinK(0.2), MinK(0.5), MinKPlusPlus(0.2), MinKPlusPlus(0.05)):
        assert roc_auc(labels, attack.fit(table).score_samples(table)) > 0.7, attack


def test_threshold_attacks_read_the_columns(lm):
    *_, table = lm
    np.testing.assert_array_equal(LossAttack().score_samples(table), -table["loss"])
    np.testing.assert_array_equal(ZlibAttack().score_samples(table), -table["zlib"])
    np.testing.assert_array_equal(MinK(0.3).score_samples(table), table["min_k_0.3"])
    np.testing.assert_array_equal(MinKPlusPlus(0.1).score_samples(table), table["min_k_pp_0.1"])


def _lowest_k_mean_numpy(values, mask, k):
    out = []
    for row, m in zip(values, mask):
        v = np.sort(row[m])
        out.append(v[: max(1, int(np.floor(k * v.shape[0])))].mean())
    return np.array(out)


@pytest.mark.parametrize("k", [0.05, 0.2, 0.5, 1.0])
def test_min_k_and_min_k_pp_match_explicit_softmax(lm, k):
    logits, targets, stats, _, _ = lm
    z = logits.double().numpy()
    logp = z - scipy.special.logsumexp(z, axis=-1, keepdims=True)
    p = np.exp(logp)
    mask = targets.numpy() != IGNORE
    y = np.where(mask, targets.numpy(), 0)
    logp_y = np.take_along_axis(logp, y[..., None], -1)[..., 0]
    mu = (p * logp).sum(-1)
    sigma = np.sqrt((p * (logp - mu[..., None]) ** 2).sum(-1))
    np.testing.assert_allclose(MinK(k).score_samples(stats), _lowest_k_mean_numpy(logp_y, mask, k),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(MinKPlusPlus(k).score_samples(stats),
                               _lowest_k_mean_numpy((logp_y - mu) / sigma, mask, k), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(LossAttack().score_samples(stats),
                               [row[m].mean() for row, m in zip(logp_y, mask)], rtol=1e-5, atol=1e-5)


def test_token_stats_and_table_agree(lm):
    _, _, stats, _, table = lm
    for attack in (LossAttack(), MinK(0.2), MinKPlusPlus(0.2)):
        np.testing.assert_allclose(attack.score_samples(stats), attack.score_samples(table))


def test_dataframe_and_arrow_tables(lm, shadows):
    pd = pytest.importorskip("pandas")
    pa = pytest.importorskip("pyarrow")
    *_, table = lm
    frame, arrow = pd.DataFrame(table), pa.table(table)
    for attack in (LossAttack(), ZlibAttack(), MinK(0.1), MinKPlusPlus(0.5)):
        want = attack.score_samples(table)
        np.testing.assert_array_equal(attack.score_samples(frame), want)
        np.testing.assert_array_equal(attack.score_samples(arrow), want)
    with pytest.raises(ValueError, match=r"min_k_\* columns for k in \[0.05"):
        MinK(0.25).score_samples(frame)
    shuffled = frame.sample(frac=1.0, random_state=0).assign(loss=lambda d: d["loss"] + 0.5)
    np.testing.assert_allclose(ReferenceAttack().fit(shuffled).score_samples(frame), 0.5)
    tables, memberships = shadows
    attack = ShadowClassifierAttack(random_state=0).fit([pd.DataFrame(t) for t in tables], memberships)
    np.testing.assert_allclose(attack.score_samples(frame),
                               ShadowClassifierAttack(random_state=0).fit(tables, memberships).score_samples(table))


def test_threshold_attack_errors(lm):
    _, _, stats, _, table = lm
    with pytest.raises(ValueError, match=r"'min_k_0.25' \(k = 0.25\); the table has min_k_\* columns "
                                         r"for k in \[0.05, 0.1, 0.2, 0.3, 0.5\]"):
        MinK(0.25).score_samples(table)
    with pytest.raises(ValueError, match=r"min_k_pp_\* columns for k in \[0.05"):
        MinKPlusPlus(0.4).score_samples(table)
    with pytest.raises(TypeError, match=r"'zlib' cannot be computed from a TokenStats batch"):
        ZlibAttack().score_samples(stats)
    with pytest.raises(ValueError, match=r"k: expected a fraction in \(0, 1\], got 0"):
        MinK(0).score_samples(table)
    with pytest.raises(TypeError, match=r"X: expected a per-sequence table .* got ndarray"):
        LossAttack().score_samples(np.zeros(3))
    with pytest.raises(ValueError, match=r"X\['loss'\]: expected finite values, got 1 NaN"):
        LossAttack().score_samples({"loss": np.array([1.0, np.nan])})
    empty = stats._replace(mask=stats.mask.clone())
    empty.mask[3] = False
    with pytest.raises(ValueError, match=r"at least one scored token .* 1 sequences without one \(first: 3\)"):
        LossAttack().score_samples(empty)


# --------------------------------------------------------------------------------------------
# reference model


def test_reference_attack_values_and_alignment(lm):
    *_, labels, table = lm
    rng = np.random.default_rng(0)
    ref_loss = table["loss"] + 0.3 + 0.1 * rng.normal(size=labels.shape[0])
    reference = {"id": table["id"], "loss": ref_loss}
    diff = ReferenceAttack().fit(reference).score_samples(table)
    np.testing.assert_allclose(diff, -(table["loss"] - ref_loss))
    ratio = ReferenceAttack("logppl_ratio").fit(reference).score_samples(table)
    np.testing.assert_allclose(ratio, -(table["loss"] / ref_loss))
    perm = rng.permutation(labels.shape[0])
    shuffled = {"id": table["id"][perm], "loss": ref_loss[perm]}
    np.testing.assert_allclose(ReferenceAttack().fit(shuffled).score_samples(table), diff)
    positional = {"loss": ref_loss}  # no id: row order
    np.testing.assert_allclose(ReferenceAttack().fit(positional).score_samples(table), diff)


def test_reference_attack_orientation():
    # the reference model sees the same "difficulty" but not the membership signal
    rng = np.random.default_rng(1)
    n = 400
    labels = np.arange(n) % 2
    difficulty = rng.gamma(2.0, 1.0, size=n)
    target = {"loss": difficulty + 0.8 - 0.4 * labels + 0.1 * rng.normal(size=n)}
    reference = {"loss": difficulty + 1.0 + 0.1 * rng.normal(size=n)}
    assert roc_auc(labels, LossAttack().score_samples(target)) < 0.75
    for mode in ("loss_diff", "logppl_ratio"):
        assert roc_auc(labels, ReferenceAttack(mode).fit(reference).score_samples(target)) > 0.9


def test_reference_attack_errors(lm):
    *_, table = lm
    ref = {"id": table["id"], "loss": table["loss"]}
    other = {"id": np.array([f"x{i}" for i in range(len(table["id"]))]), "loss": table["loss"]}
    with pytest.raises(ValueError, match=r"target\['id'\]: expected the same ids as the reference table "
                                         r"\(60 ids\), got 60 rows of which 60 ids are not in the reference"):
        ReferenceAttack().fit(other).score_samples(table)
    with pytest.raises(ValueError, match=r"target: expected 3 rows"):
        ReferenceAttack().fit({"loss": [1.0, 2.0, 3.0]}).score_samples({"loss": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"reference\['id'\]: expected unique ids, got 1 repeated"):
        ReferenceAttack().fit({"id": ["a", "a"], "loss": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"divides by the reference loss, expected positive values"):
        ReferenceAttack("logppl_ratio").fit({"loss": [1.0, 0.0]})
    with pytest.raises(ValueError, match=r"mode: expected one of \('loss_diff', 'logppl_ratio'\), got 'ratio'"):
        ReferenceAttack("ratio").fit(ref)
    with pytest.raises(NotFittedError):
        ReferenceAttack().score_samples(table)


# --------------------------------------------------------------------------------------------
# shadow classifier


def _shadow_tables(n_shadow=3, seed=10):
    tables, memberships = [], []
    for i in range(n_shadow):
        *_, labels, table = lm_batch(n=80, seed=seed + i)
        tables.append(table)
        memberships.append(labels.astype(bool))
    return tables, memberships


@pytest.fixture(scope="module")
def shadows():
    return _shadow_tables()


@pytest.mark.parametrize("classifier", ["logistic", "random_forest", "mlp"])
def test_shadow_classifier_orientation(lm, shadows, classifier):
    *_, labels, table = lm
    attack = ShadowClassifierAttack(classifier, random_state=0,
                                    classifier_params={"n_estimators": 50} if classifier == "random_forest" else None)
    assert attack.fit(*shadows) is attack
    scores = attack.score_samples(table)
    assert scores.shape == labels.shape and ((scores >= 0) & (scores <= 1)).all()
    assert roc_auc(labels, scores) > 0.7
    assert attack.feature_names_ == tuple(attack.features)


def test_shadow_classifier_determinism_and_arrays(lm, shadows):
    *_, table = lm
    params = dict(classifier="random_forest", classifier_params={"n_estimators": 30}, random_state=3)
    a = ShadowClassifierAttack(**params).fit(*shadows).score_samples(table)
    b = ShadowClassifierAttack(**params).fit(*shadows).score_samples(table)
    np.testing.assert_array_equal(a, b)
    feats = ("loss", "min_k_0.2")
    x = [np.column_stack([t[f] for f in feats]) for t in shadows[0]]
    from_arrays = ShadowClassifierAttack(features=feats).fit(x, shadows[1])
    from_tables = ShadowClassifierAttack(features=feats).fit(*shadows)
    assert from_arrays.feature_names_ is None
    np.testing.assert_allclose(from_arrays.score_samples(np.column_stack([table[f] for f in feats])),
                               from_tables.score_samples(table))
    single = ShadowClassifierAttack(features=feats).fit(shadows[0][0], shadows[1][0])
    assert single.n_features_in_ == 2


def test_shadow_classifier_errors(lm, shadows):
    *_, table = lm
    tables, memberships = shadows
    with pytest.raises(ValueError, match=r"shadow_membership: expected one membership vector per shadow "
                                         r"table \(3\), got 2"):
        ShadowClassifierAttack().fit(tables, memberships[:2])
    with pytest.raises(ValueError, match=r"shadow_membership\[0\]: expected shape \(80,\), got \(79,\)"):
        ShadowClassifierAttack().fit(tables, [m[:-1] for m in memberships])
    with pytest.raises(ValueError, match=r"expected both members and non-members, got 0 members"):
        ShadowClassifierAttack().fit(tables[0], np.zeros(80, bool))
    with pytest.raises(ValueError, match=r"shadow_tables\[0\]: expected a column 'nope'"):
        ShadowClassifierAttack(features=("loss", "nope")).fit(tables, memberships)
    with pytest.raises(ValueError, match=r"classifier: expected one of \('logistic', 'mlp', 'random_forest'\)"):
        ShadowClassifierAttack("svm").fit(tables, memberships)
    fitted = ShadowClassifierAttack(features=("loss",)).fit(tables, memberships)
    with pytest.raises(ValueError, match=r"X: expected 1 features \(as in fit\), got 2"):
        fitted.score_samples(np.zeros((4, 2)))
    with pytest.raises(NotFittedError):
        ShadowClassifierAttack().score_samples(table)


# --------------------------------------------------------------------------------------------
# LiRA: golden values against the reference code (tensorflow/privacy research/mi_lira_2021/plot.py)


def _ref_generate_ours(keep, scores, check_scores, fix_variance=False):
    """``generate_ours`` of the reference code for one target model; scores (K, N, Q)."""
    dat_in, dat_out = [], []
    for j in range(scores.shape[1]):
        dat_in.append(scores[keep[:, j], j, :])
        dat_out.append(scores[~keep[:, j], j, :])
    in_size = min(map(len, dat_in))
    out_size = min(map(len, dat_out))
    dat_in = np.array([x[:in_size] for x in dat_in])
    dat_out = np.array([x[:out_size] for x in dat_out])
    mean_in = np.median(dat_in, 1)
    mean_out = np.median(dat_out, 1)
    if fix_variance:
        std_in = np.std(dat_in)
        std_out = np.std(dat_in)
    else:
        std_in = np.std(dat_in, 1)
        std_out = np.std(dat_out, 1)
    pr_in = -scipy.stats.norm.logpdf(check_scores, mean_in, std_in + 1e-30)
    pr_out = -scipy.stats.norm.logpdf(check_scores, mean_out, std_out + 1e-30)
    return (pr_in - pr_out).mean(1)  # lower = member


def _ref_generate_ours_offline(keep, scores, check_scores, fix_variance=False):
    """``generate_ours_offline`` of the reference code for one target model."""
    dat_out = [scores[~keep[:, j], j, :] for j in range(scores.shape[1])]
    out_size = min(map(len, dat_out))
    dat_out = np.array([x[:out_size] for x in dat_out])
    mean_out = np.median(dat_out, 1)
    std_out = np.std(dat_out) if fix_variance else np.std(dat_out, 1)
    return scipy.stats.norm.logpdf(check_scores, mean_out, std_out + 1e-30).mean(1)  # lower = member


@pytest.mark.parametrize("n_queries", [1, 3])
@pytest.mark.parametrize("variance, fix", [("per_example", False), ("fixed", True)])
def test_lira_matches_reference_code(n_queries, variance, fix):
    reference, keep, target, _ = reference_setup(n_queries=n_queries, seed=n_queries)
    ref_scores = reference.transpose(0, 2, 1)  # the reference code's (K, N, Q)
    check = target.T  # (N, Q)
    online = LiRA("online", variance=variance).fit(reference, keep).score_samples(target)
    np.testing.assert_allclose(online, -_ref_generate_ours(keep, ref_scores, check, fix), rtol=1e-12, atol=1e-12)
    offline = LiRA("offline_logpdf", variance=variance).fit(reference, keep).score_samples(target)
    np.testing.assert_allclose(offline, -_ref_generate_ours_offline(keep, ref_scores, check, fix),
                               rtol=1e-12, atol=1e-12)


def test_lira_offline_cdf_mean_and_global_variants():
    reference, keep, target, _ = reference_setup(n_queries=2, seed=4)
    k, q, n = reference.shape
    out_vals = [reference[~keep[:, j], :, j] for j in range(n)]  # (n_out, Q) per sample
    in_vals = [reference[keep[:, j], :, j] for j in range(n)]
    med_out = np.array([np.median(v, 0) for v in out_vals]).T  # (Q, N)
    std_out = np.array([np.std(v, 0) for v in out_vals]).T
    cdf = LiRA("offline_cdf", variance="per_example").fit(reference, keep).score_samples(target)
    want = scipy.stats.norm.logcdf(target, med_out, std_out + 1e-30).mean(0)
    np.testing.assert_allclose(cdf, want, rtol=1e-10, atol=1e-12)

    mean_in = np.array([v.mean(0) for v in in_vals]).T
    mean_out = np.array([v.mean(0) for v in out_vals]).T
    pooled_in = np.sqrt(sum(((v - v.mean(0)) ** 2).sum() for v in in_vals) / ((keep.sum() - n) * q))
    pooled_out = np.sqrt(sum(((v - v.mean(0)) ** 2).sum() for v in out_vals) / (((~keep).sum() - n) * q))
    got = LiRA("online", loc="mean", variance="global").fit(reference, keep).score_samples(target)
    want = (scipy.stats.norm.logpdf(target, mean_in, pooled_in + 1e-30)
            - scipy.stats.norm.logpdf(target, mean_out, pooled_out + 1e-30)).mean(0)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n_in, n_out", [(1, 3), (2, 2), (3, 5)])
def test_lira_global_std_is_unbiased(n_in, n_out):
    """The pooled std spends one degree of freedom per sample on its mean: with a true std of 1
    and few models it estimates 1 (dividing by the model count would give sqrt((n - 1) / n))."""
    rng = np.random.default_rng(n_in * 10 + n_out)
    k, n = n_in + n_out, 20000
    keep = np.zeros((k, n), bool)
    keep[:n_in] = True
    reference = rng.normal(size=(1, n)) + rng.normal(size=(k, n))  # every sample its own mean
    offline = LiRA("offline_cdf", variance="global").fit(reference, keep)
    assert offline.scale_out_[0, 0] == pytest.approx(1.0, rel=0.02)
    if n_in == 1:  # one IN model per sample: no within-sample spread to pool
        with pytest.raises(ValueError, match="variance='global' needs a sample with at least 2 IN"):
            LiRA("online", variance="global").fit(reference, keep)
        return
    online = LiRA("online", variance="global").fit(reference, keep)
    assert online.scale_in_[0, 0] == pytest.approx(1.0, rel=0.02)
    assert online.scale_out_[0, 0] == offline.scale_out_[0, 0]


def test_lira_auto_variance_without_spread_is_fixed():
    reference, keep, target, _ = reference_setup(n_models=2, seed=8)
    lira = LiRA("online", variance="auto").fit(reference, keep)
    assert lira.variance_used_ == "fixed" and np.isfinite(lira.score_samples(target)).all()


def test_lira_unequal_counts_and_shapes():
    """Per-sample counts may differ; (K, N) equals (K, 1, N); median of odd and even counts."""
    reference, keep, target, _ = reference_setup(n_models=9, seed=5)
    keep[:, 0] = [True] * 2 + [False] * 7
    keep[:, 1] = [True] * 6 + [False] * 3
    lira = LiRA("online", variance="per_example").fit(reference[:, 0, :], keep)
    for j in (0, 1, 2):
        v_in, v_out = reference[keep[:, j], 0, j], reference[~keep[:, j], 0, j]
        assert lira.loc_in_[0, j] == pytest.approx(np.median(v_in))
        assert lira.loc_out_[0, j] == pytest.approx(np.median(v_out))
        assert lira.scale_in_[0, j] == pytest.approx(np.std(v_in))
    np.testing.assert_array_equal(lira.n_in_[:2], [2, 6])
    np.testing.assert_allclose(lira.score_samples(target[0]),
                               LiRA("online", variance="per_example").fit(reference, keep).score_samples(target))


@pytest.mark.parametrize("mode", ["online", "offline_cdf", "offline_logpdf"])
@pytest.mark.parametrize("variance", ["per_example", "global", "fixed"])
@pytest.mark.parametrize("loc", ["mean", "median"])
def test_lira_orientation(mode, variance, loc):
    reference, keep, target, labels = reference_setup(n_models=16, n_samples=300, seed=6, effect=2.0)
    scores = LiRA(mode, loc=loc, variance=variance).fit(reference, keep).score_samples(target)
    assert scores.shape == (300,) and np.isfinite(scores).all()
    assert roc_auc(labels, scores) > 0.6


def test_lira_auto_variance(caplog):
    reference, keep, target, _ = reference_setup(n_models=8, seed=7)
    with caplog.at_level(logging.INFO, logger="mia_fast.attacks.lira"):
        lira = LiRA("online", variance="auto").fit(reference, keep)
    assert lira.variance_used_ == "global"
    assert "variance='auto': global" in caplog.text
    assert LiRA("online", variance="auto", fix_variance_below=8).fit(reference, keep).variance_used_ == "per_example"
    assert LiRA("online", variance="auto", fix_variance_below=9).fit(reference, keep).variance_used_ == "global"
    assert LiRA("offline_cdf", variance="auto", fix_variance_below=5).fit(reference, keep).variance_used_ == "global"


def test_lira_per_example_on_random_halves_of_16_models_falls_back_per_sample():
    """The LiRA paper's own setting: 16 reference models on random halves leave a few of 5,000
    samples with a single IN or OUT model; those take the pooled std, are counted and warned about."""
    rng = np.random.default_rng(2)
    keep = np.zeros((16, 5000), bool)
    for k in range(16):  # each model trains on a random half of the samples
        keep[k, rng.permutation(5000)[:2500]] = True
    mu, spread = rng.normal(0, 2, size=(1, 5000)), rng.uniform(0.5, 1.5, size=(1, 5000))
    reference = mu[None] + 2.0 * keep[:, None, :] + spread * rng.normal(size=(16, 1, 5000))
    labels = (rng.random(5000) < 0.5).astype(int)
    target = mu + 2.0 * labels[None, :] + spread * rng.normal(size=(1, 5000))
    n_in = keep.sum(axis=0)
    single = (n_in == 1) | (n_in == 15)
    assert 0 < single.sum() < 20 and ((n_in > 0) & (n_in < 16)).all()
    with pytest.warns(UserWarning, match=rf"{single.sum()} of 5000 samples have a single IN or OUT reference model"):
        lira = LiRA("online", variance="per_example").fit(reference, keep)
    assert lira.n_variance_fallback_ == single.sum()
    pooled = LiRA("online", variance="global").fit(reference, keep)
    ones_in = n_in == 1
    np.testing.assert_allclose(lira.scale_in_[:, ones_in], pooled.scale_in_[:, ones_in])
    assert not np.isclose(lira.scale_in_[:, ~single], pooled.scale_in_[:, ~single]).all()
    scores = lira.score_samples(target)
    assert np.isfinite(scores).all() and roc_auc(labels, scores) > 0.6


def test_lira_errors():
    reference, keep, target, _ = reference_setup(n_models=6, n_samples=20, seed=8)
    keep[:, 4] = True  # sample 4: no OUT model
    keep[:, 7] = [True] + [False] * 5  # sample 7: one IN model
    with pytest.raises(ValueError, match=r"online LiRA with variance='per_example' needs at least 1 IN and 1 OUT "
                                         r"reference models per sample; 1 of 20 samples lack them \(first: "
                                         r"4 \(6 IN, 0 OUT\)\)"):
        LiRA("online", variance="per_example").fit(reference, keep)
    LiRA("online", variance="global").fit(reference[:, :, [7, 8]], keep[:, [7, 8]])  # one IN is enough
    with pytest.raises(ValueError, match=r"offline_cdf LiRA with variance='global' needs at least 1 OUT"):
        LiRA("offline_cdf", variance="global").fit(reference, keep)
    with pytest.raises(ValueError, match=r"keep: expected shape \(6, 20\), got \(6, 19\)"):
        LiRA().fit(reference, keep[:, :19])
    with pytest.raises(ValueError, match=r"reference_stats: expected a 2-D or 3-D array, got shape \(6,\)"):
        LiRA().fit(reference[:, 0, 0], keep)
    with pytest.raises(ValueError, match=r"reference_stats: expected finite values, got 1 NaN/inf"):
        bad = reference.copy()
        bad[1, 0, 3] = np.nan
        LiRA().fit(bad, keep)
    with pytest.raises(ValueError, match=r"mode: expected one of \('online', 'offline_cdf', 'offline_logpdf'\)"):
        LiRA("offline").fit(reference, keep)
    fitted = LiRA("offline_logpdf").fit(reference[:, :, :3], np.zeros((6, 3), bool))
    with pytest.raises(ValueError, match=r"target_stats: expected shape \(3,\) or \(1, 3\) as the fitted"):
        fitted.score_samples(np.zeros(4))
    with pytest.raises(NotFittedError):
        LiRA().score_samples(target)


# --------------------------------------------------------------------------------------------
# RMIA


def _rmia_dense(target, reference, keep, z_target, z_reference, offline, a, gamma):
    """RMIA with the full N x Z ratio matrix, in probabilities (the paper's definition)."""
    if offline:
        out = ~keep
        p_x = 0.5 * ((1 + a) * (reference * out).sum(0) / out.sum(0) + (1 - a))
        p_z = 0.5 * ((1 + a) * z_reference.mean(0) + (1 - a))
    else:
        p_x, p_z = reference.mean(0), z_reference.mean(0)
    lr = (target / p_x)[:, None] / (z_target / p_z)[None, :]
    return (lr >= gamma).mean(1)


def rmia_setup(n_models=8, n_samples=200, n_population=150, seed=0):
    """Probabilities sigmoid(statistic) for samples (IN half the models) and population samples."""
    reference, keep, target, labels = reference_setup(n_models, n_samples, seed=seed)
    rng = np.random.default_rng(seed + 100)
    mu_z = rng.normal(0, 2, size=n_population)
    z_reference = mu_z + rng.normal(size=(n_models, n_population))
    z_target = mu_z + rng.normal(size=n_population)
    sig = scipy.special.expit
    return sig(reference[:, 0]), keep, sig(target[0]), labels, sig(z_reference), sig(z_target)


@pytest.mark.parametrize("offline, a, gamma", [(True, 0.3, 1.0), (True, 0.0, 2.0), (True, 1.0, 1.0),
                                               (False, 0.3, 1.0), (False, 0.3, 0.5)])
def test_rmia_matches_dense_definition(offline, a, gamma):
    ref, keep, target, labels, z_ref, z_target = rmia_setup()
    attack = RMIA(offline=offline, a=a, gamma=gamma).fit(ref, keep, population_reference=z_ref)
    scores = attack.score_samples(target, z_target)
    np.testing.assert_allclose(scores, _rmia_dense(target, ref, keep, z_target, z_ref, offline, a, gamma),
                               atol=1.5 / z_target.shape[0])  # a tie may flip by float rounding
    assert roc_auc(labels, scores) > 0.7
    logged = RMIA(offline=offline, a=a, gamma=gamma, log_input=True).fit(
        np.log(ref), keep, population_reference=np.log(z_ref)).score_samples(np.log(target), np.log(z_target))
    np.testing.assert_allclose(logged, scores)


def test_rmia_offline_without_keep_uses_all_models():
    ref, keep, target, _, z_ref, z_target = rmia_setup(seed=1)
    got = RMIA().fit(ref, population_reference=z_ref).score_samples(target, z_target)
    want = _rmia_dense(target, ref, np.zeros_like(keep), z_target, z_ref, True, 0.3, 1.0)
    np.testing.assert_allclose(got, want, atol=1.5 / z_target.shape[0])


def test_rmia_log_input_avoids_underflow():
    # log-probabilities around -2000 (a long sequence's total log-likelihood) underflow as probabilities
    ref, keep, target, labels, z_ref, z_target = rmia_setup(seed=2)
    shift = -2000.0
    scores = RMIA(offline=False, log_input=True).fit(np.log(ref) + shift, keep,
                                                     population_reference=np.log(z_ref) + shift)
    base = RMIA(offline=False).fit(ref, keep, population_reference=z_ref).score_samples(target, z_target)
    np.testing.assert_allclose(scores.score_samples(np.log(target) + shift, np.log(z_target) + shift), base)


def test_rmia_errors():
    ref, keep, target, _, z_ref, z_target = rmia_setup(n_models=4, n_samples=10, n_population=5, seed=3)
    keep[:, 2] = True
    with pytest.raises(ValueError, match=r"keep: offline RMIA needs at least 1 OUT reference model per sample; "
                                         r"1 of 10 samples have none \(first: 2\)"):
        RMIA().fit(ref, keep, population_reference=z_ref)
    RMIA(offline=False).fit(ref, keep, population_reference=z_ref)  # online: every model enters
    with pytest.raises(ValueError, match=r"reference: expected probabilities in \(0, 1\], got 1 values outside"):
        bad = ref.copy()
        bad[0, 0] = 1.5
        RMIA().fit(bad, population_reference=z_ref)
    with pytest.raises(ValueError, match=r"population_reference: expected 4 rows"):
        RMIA().fit(ref, population_reference=z_ref[:3])
    with pytest.raises(ValueError, match=r"expected log-probabilities <= 0"):
        RMIA(log_input=True).fit(-ref + 0.5, population_reference=np.log(z_ref))
    with pytest.raises(ValueError, match=r"a: expected a number in \[0, 1\], got 1.5"):
        RMIA(a=1.5).fit(ref, population_reference=z_ref)
    with pytest.raises(ValueError, match=r"gamma: expected a number > 0, got 0"):
        RMIA(gamma=0).fit(ref, population_reference=z_ref)
    fitted = RMIA().fit(ref, population_reference=z_ref)
    with pytest.raises(ValueError, match=r"population_target: expected 5 population samples \(as in fit\), got 4"):
        fitted.score_samples(target, z_target[:4])
    with pytest.raises(ValueError, match=r"target: expected 10 samples"):
        fitted.score_samples(target[:3], z_target)
    with pytest.raises(NotFittedError):
        RMIA().score_samples(target, z_target)


# --------------------------------------------------------------------------------------------
# the sklearn estimator contract

ALL_ATTACKS = [
    LossAttack(), ZlibAttack(), MinK(0.3), MinKPlusPlus(0.1), ReferenceAttack("logppl_ratio"),
    ShadowClassifierAttack("random_forest", features=("loss",), random_state=4),
    LiRA("offline_cdf", loc="mean", variance="fixed", fix_variance_below=16),
    RMIA(offline=False, a=0.5, gamma=2.0, log_input=True),
]


@pytest.mark.parametrize("attack", ALL_ATTACKS, ids=lambda a: type(a).__name__)
def test_get_set_params_and_clone(attack):
    params = attack.get_params()
    copy = clone(attack)
    assert type(copy) is type(attack) and copy.get_params() == params
    if params:
        name = sorted(params)[0]
        copy.set_params(**{name: params[name]})
        assert copy.get_params() == params
    assert not [k for k in vars(attack) if k.endswith("_")]  # __init__ learns nothing


def test_fit_returns_self_and_not_fitted_errors(lm, shadows):
    *_, table = lm
    for attack in (LossAttack(), MinK(), MinKPlusPlus(), ZlibAttack()):
        assert attack.fit(table) is attack
        assert attack.score_samples(table).shape == (len(table["loss"]),)  # nothing to fit
    ref = ReferenceAttack()
    assert ref.fit(table) is ref
    reference, keep, target, _ = reference_setup(n_models=4, n_samples=5)
    lira = LiRA(variance="global")
    assert lira.fit(reference, keep) is lira
    rmia = RMIA()
    assert rmia.fit(scipy.special.expit(reference[:, 0]), population_reference=np.full((4, 3), 0.5)) is rmia
    for unfitted, args in ((ReferenceAttack(), (table,)), (ShadowClassifierAttack(), (table,)),
                           (LiRA(), (target,)), (RMIA(), (target[0], target[0]))):
        with pytest.raises(NotFittedError):
            unfitted.score_samples(*args)


def test_set_params_changes_behaviour(lm):
    *_, table = lm
    attack = MinK(0.2)
    np.testing.assert_array_equal(attack.set_params(k=0.5).score_samples(table), table["min_k_0.5"])
