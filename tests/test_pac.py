"""PAC (Ye et al., 2024): word-swap augmentations, the polarized distance, the calibration and
the attack's direction."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import lm_fixtures as fx
from mia_fast.attacks.pac import PACAttack
from mia_fast.metrics import roc_auc
from mia_fast.scoring.augment import (
    PAC,
    document_rng,
    flatten_variants,
    pac_scores,
    pac_variants,
    polarized_distance,
    swap_augment,
)
from mia_fast.scoring.scorer import score_corpus


def _words(text):
    return re.findall(r"\S+", text)


def _gaps(text):
    return re.findall(r"\s+", text)


# --------------------------------------------------------------------------------------------
# options


@pytest.mark.parametrize("kwargs, match", [
    ({"n_augmentations": 0}, "n_augmentations: expected an integer >= 1, got 0"),
    ({"n_augmentations": True}, "n_augmentations"),
    ({"swap_fraction": 0.0}, r"swap_fraction: expected a fraction in \(0, 1\], got 0.0"),
    ({"swap_fraction": 1.5}, "swap_fraction"),
    ({"k_max": 0}, "k_max"),
    ({"k_min": "0.3"}, r"k_min: expected a fraction in \(0, 1\], got '0.3'"),
    ({"seed": -2}, "seed: expected a non-negative integer"),
])
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PAC(**kwargs)


def test_defaults_follow_the_authors_code():
    assert PAC().as_dict() == {"name": "pac", "n_augmentations": 5, "swap_fraction": 0.3, "k_max": 0.05, "k_min": 0.3,
                                      "seed": 0}


# --------------------------------------------------------------------------------------------
# augmentations


def test_swap_augment_permutes_words_and_keeps_whitespace():
    text = "  One two\tthree\n\nfour five six seven eight nine ten  "
    out = swap_augment(text, 6, 0.3, np.random.default_rng(0))
    assert len(out) == 6
    for aug in out:
        assert sorted(_words(aug)) == sorted(_words(text))
        assert _gaps(aug) == _gaps(text)
        assert re.sub(r"\S+", "W", aug) == re.sub(r"\S+", "W", text)  # same whitespace skeleton
        # floor(0.3 * 10) = 3 swaps move at most 6 words
        assert 0 < sum(a != b for a, b in zip(_words(aug), _words(text))) <= 6
    assert swap_augment(text, 6, 0.3, np.random.default_rng(0)) == out
    assert swap_augment(text, 6, 0.3, np.random.default_rng(1)) != out
    # one swap at least, and a text with under two words is unchanged
    two = swap_augment("alpha beta", 2, 0.01, np.random.default_rng(0))
    assert two == ["beta alpha", "beta alpha"]
    assert swap_augment("single", 3, 0.5, np.random.default_rng(0)) == ["single"] * 3
    assert swap_augment("", 1, 0.5, np.random.default_rng(0)) == [""]


def test_swap_augment_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(TypeError, match="text: expected a str, got bytes"):
        swap_augment(b"a b", 1, 0.3, rng)
    with pytest.raises(ValueError, match="n: expected an integer >= 1"):
        swap_augment("a b", 0, 0.3, rng)
    with pytest.raises(ValueError, match="swap_fraction"):
        swap_augment("a b", 1, 0.0, rng)
    with pytest.raises(TypeError, match="rng: expected a numpy.random.Generator, got int"):
        swap_augment("a b", 1, 0.3, 0)


def test_pac_variants_are_seeded_per_document():
    texts = list(fx.prose()[:5])
    opts = PAC(n_augmentations=4, seed=7)
    out = pac_variants(texts, opts)
    assert [len(v) for v in out] == [4] * 5
    assert pac_variants([texts[3]], opts)[0] == out[3]
    assert pac_variants(texts[::-1], opts)[::-1] == out
    assert pac_variants(texts, PAC(n_augmentations=4, seed=8)) != out
    assert out[0][0] == swap_augment(texts[0], 4, 0.3, document_rng(7, texts[0], "pac"))[0]
    for text, augs in zip(texts, out):
        for aug in augs:
            assert sorted(_words(aug)) == sorted(_words(text)) and aug != text
    with pytest.raises(TypeError, match="texts: expected a sequence of str, got str"):
        pac_variants("one text")
    with pytest.raises(TypeError, match="options: expected a PAC"):
        pac_variants(["a b"], {"seed": 1})


# --------------------------------------------------------------------------------------------
# polarized distance and calibration


def _pd_by_hand(values, k_max, k_min):
    """The authors' calculate_Polarized_Distance, literally."""
    far = max(int(len(values) * k_max), 1)
    local = max(int(len(values) * k_min), 1)
    return np.mean(np.sort(values)[::-1][:far]) - np.mean(np.sort(values)[:local])


def test_polarized_distance_by_hand():
    lp = torch.tensor([-1.0, -3.0, -0.5, -2.0, -8.0, -0.1, -4.0, -4.0, -0.2, -6.0,   # seq 0: 10 tokens
                       -2.0,                                                         # seq 2: 1 token
                       -1.0, -1.0, -1.0, -5.0])                                      # seq 3: ties
    seq = torch.tensor([0] * 10 + [2] + [3] * 4)
    got = polarized_distance(lp, seq, 5, k_max=0.2, k_min=0.3)
    # seq 0: top 2 = (-0.1, -0.2), bottom 3 = (-8, -6, -4)
    np.testing.assert_allclose(got[0], -0.15 - (-6.0))
    assert np.isnan(got[1]) and np.isnan(got[4])  # no tokens
    assert got[2] == 0.0  # fewer tokens than k: one token is both top and bottom
    np.testing.assert_allclose(got[3], -1.0 - (-5.0))  # ties among the top: any -1.0
    for s, k_max, k_min in [(0, 0.2, 0.3), (0, 0.05, 0.3), (0, 0.9, 0.9), (3, 0.05, 0.3), (3, 1.0, 1.0)]:
        values = lp[seq == s].numpy().astype(np.float64)
        np.testing.assert_allclose(polarized_distance(lp, seq, 5, k_max, k_min)[s], _pd_by_hand(values, k_max, k_min))


def test_polarized_distance_matches_the_reference_on_random_segments():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 60, size=40)
    values = [np.round(rng.normal(-3, 2, size=n), 1) for n in lengths]  # rounding makes ties
    lp = np.concatenate(values)
    seq = np.repeat(np.arange(40), lengths)
    perm = rng.permutation(lp.size)  # order does not matter
    got = polarized_distance(torch.from_numpy(lp[perm]), torch.from_numpy(seq[perm]), 40)
    want = np.array([_pd_by_hand(v, 0.05, 0.3) if len(v) else np.nan for v in values])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_polarized_distance_errors():
    with pytest.raises(ValueError, match=r"seq: expected indices in \[0, n_sequences=2\)"):
        polarized_distance(torch.zeros(3), torch.tensor([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="seq: expected the shape of logprob"):
        polarized_distance(torch.zeros(3), torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match="logprob: expected log-probabilities .* 1 NaN"):
        polarized_distance(torch.tensor([0.0, float("nan")]), torch.tensor([0, 1]), 2)
    with pytest.raises(TypeError, match="seq: expected integers"):
        polarized_distance(torch.zeros(2), torch.zeros(2), 2)
    with pytest.raises(ValueError, match="logprob: expected a 1-D array"):
        polarized_distance(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="k_max"):
        polarized_distance(torch.zeros(2), torch.tensor([0, 1]), 2, k_max=0.0)
    assert np.isnan(polarized_distance(torch.zeros(0), torch.zeros(0, dtype=torch.long), 3)).all()


def test_pac_scores_by_hand():
    pd_text = np.array([1.0, 2.0, 3.0, np.nan])
    pd_var = np.array([0.5, 1.5, 4.0, np.nan, 2.0, 7.0])
    parent = np.array([0, 0, 1, 2, 1, 3])
    np.testing.assert_allclose(pac_scores(pd_text, pd_var, parent), [0.0, -1.0, np.nan, np.nan])
    with pytest.raises(ValueError, match=r"parent: expected indices in \[0, n_parents=4\)"):
        pac_scores(pd_text, pd_var, parent + 1)


def test_attack_negates_pac():
    np.testing.assert_allclose(PACAttack().fit().score_samples({"pac": [0.5, -1.0]}), [-0.5, 1.0])
    with pytest.raises(ValueError, match=r"X: expected the columns \['pac'\]"):
        PACAttack().score_samples({"loss": [1.0]})
    with pytest.raises(ValueError, match="X\\['pac'\\]: expected finite values, got 1 NaN rows"):
        PACAttack().score_samples({"pac": [np.nan, 1.0]})


def test_direction_on_a_trained_model():
    """Members of a tiny GPT-2's training set have a smaller polarized distance than their
    word-swapped copies: -pac separates them."""
    target, tok, texts, labels = fx.trained_target()
    opts = PAC()
    flat, parent = flatten_variants(pac_variants(texts, opts))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scores = score_corpus(target, tok, texts + flat, first_token="bos", per_token=True)
    finally:
        torch.set_num_threads(threads)
    tokens = scores.tokens
    seq = torch.tensor(tokens.id.astype(np.int64).to_numpy())
    pd = polarized_distance(torch.tensor(tokens.logprob.to_numpy()), seq, len(texts) + len(flat), opts.k_max, opts.k_min)
    pac = pac_scores(pd[: len(texts)], pd[len(texts):], parent)
    auc = roc_auc(labels, PACAttack().score_samples({"pac": pac}))
    print(f"PAC AUC {auc:.3f}, LOSS AUC {roc_auc(labels, -scores.sequences.loss.to_numpy()[: len(texts)]):.3f}")
    assert auc > 0.5, auc
