"""SaMIA (Kaneko et al., 2024): ROUGE-1, prefix splitting, the sampler, reproducibility, the attack."""

from __future__ import annotations

import dataclasses
import json
import math
import zlib

import numpy as np
import pytest
import torch

import lm_fixtures as fx
from mia_fast.attacks.samia import SaMIAAttack
from mia_fast.metrics import roc_auc
from mia_fast.scoring.samia import (
    SAMIA_COLUMNS,
    SaMIA,
    _bos_prefix,
    _gumbel,
    _processor_classes,
    rouge1,
    samia_columns,
    split_prefix,
    words,
    zlib_size,
)

N_MEMBERS = 16
N_SAMPLES = 6


# --------------------------------------------------------------------------------------------
# ROUGE-1 and the prefix


@pytest.mark.parametrize("candidate, reference, expected", [
    ("the cat sat", "the cat sat", 1.0),  # identical
    ("a dog ran", "the cat sat", 0.0),  # disjoint
    ("the cat sat on the mat", "the cat", 1.0),  # recall: extra candidate words cost nothing
    ("the cat", "the cat sat on the mat", 2 / 6),
    ("the the the", "the cat the", 2 / 3),  # repeated words: clipped at the reference's count
    ("the", "the the", 1 / 2),  # ... and at the candidate's
    ("", "the cat", 0.0),  # empty candidate
    ("   \n", "the cat", 0.0),
    ("the cat", "", 0.0),  # empty reference
    ("The Cat", "the cat", 0.0),  # case-sensitive
    ("cat, dog.", "cat dog", 0.0),  # punctuation stays attached to its word
    ("cat, dog.", "cat, dog", 1 / 2),
    ("the\ncat\tsat", "the cat  sat", 1.0),  # any whitespace separates words
])
def test_rouge1_hand_computed(candidate, reference, expected):
    assert rouge1(candidate, reference) == pytest.approx(expected, abs=1e-15)


def test_rouge1_rejects_non_text():
    with pytest.raises(TypeError, match=r"candidate: expected a str, got list"):
        rouge1(["the"], "the")
    with pytest.raises(TypeError, match=r"reference: expected a str, got NoneType"):
        rouge1("the", None)


def test_words_and_zlib_size():
    assert words("The cat, the\nCAT.") == ["The", "cat,", "the", "CAT."]
    assert zlib_size(["a", "b"]) == len(zlib.compress(b"a b"))


@pytest.mark.parametrize("text, fraction, expected", [
    ("a b c d", 0.5, ("a b", "c d")),
    ("a b c d e", 0.5, ("a b", "c d e")),  # floor
    ("a  b\nc\td e", 0.5, ("a b", "c d e")),  # words rejoined by single spaces
    ("1 2 3 4 5 6 7 8 9 10", 0.3, ("1 2 3", "4 5 6 7 8 9 10")),  # 10 * 0.3 = 3.0000000000000004
    ("1 2 3 4 5 6 7 8 9 10", 0.7, ("1 2 3 4 5 6 7", "8 9 10")),
    ("one", 0.5, ("", "one")),  # too short: no prefix
    ("", 0.5, ("", "")),
])
def test_split_prefix(text, fraction, expected):
    assert split_prefix(text, fraction) == expected


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, "0.5", None, True])
def test_split_prefix_rejects_bad_fractions(fraction):
    with pytest.raises(ValueError, match=r"prefix_fraction: expected a fraction in \(0, 1\)"):
        split_prefix("a b c", fraction)


# --------------------------------------------------------------------------------------------
# options


@pytest.mark.parametrize("kwargs, message", [
    ({"n_samples": 0}, r"n_samples: expected an integer >= 1, got 0"),
    ({"n_samples": 2.0}, r"n_samples: expected an integer >= 1, got 2.0"),
    ({"n_samples": True}, r"n_samples: expected an integer >= 1, got True"),
    ({"batch_size": 0}, r"batch_size: expected an integer >= 1, got 0"),
    ({"prefix_fraction": 1.0}, r"prefix_fraction: expected a fraction in \(0, 1\)"),
    ({"max_new_tokens": 0}, r"max_new_tokens: expected a positive number of tokens or None"),
    ({"max_new_tokens": 8.5}, r"max_new_tokens: expected a positive number of tokens or None"),
    ({"temperature": 0}, r"temperature: expected a positive finite number, got 0"),
    ({"temperature": math.inf}, r"temperature: expected a positive finite number, got inf"),
    ({"temperature": math.nan}, r"temperature: expected a positive finite number, got nan"),
    ({"top_k": -1}, r"top_k: expected an integer >= 0 \(0 = no top-k\), got -1"),
    ({"seed": 1.5}, r"seed: expected an integer, got 1.5"),
    ({"first_token": "always"}, r"first_token: expected one of \('auto', 'bos', 'skip'\), got 'always'"),
])
def test_options_reject_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SaMIA(**kwargs)


def test_options_defaults_follow_the_paper_and_serialise():
    opts = SaMIA()
    assert (opts.n_samples, opts.prefix_fraction, opts.temperature, opts.top_k) == (10, 0.5, 1.0, 50)
    record = json.loads(json.dumps(opts.as_dict()))
    assert record["method"] == "samia" and record["similarity"] == "rouge1_recall"
    assert record["n_samples"] == 10 and record["max_new_tokens"] is None and "sampler" in record
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.n_samples = 3  # type: ignore[misc]


def test_bos_convention_follows_the_tokenizer():
    tok = fx.tokenizer()  # byte-level BPE: tokenizer(text) adds no BOS
    assert _bos_prefix(tok, "auto") == [] and _bos_prefix(tok, "skip") == []
    assert _bos_prefix(tok, "bos") == [tok.bos_token_id]


# --------------------------------------------------------------------------------------------
# the sampler


def test_gumbel_sampler_samples_the_tempered_top_k_distribution():
    GumbelTopK, _ = _processor_classes()
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 3.0, -2.0, 0.2])
    rows, top_k, temperature = 40000, 4, 1.5
    g = torch.Generator().manual_seed(0)
    keys = torch.randint(0, 2**32, (rows, 2), generator=g, dtype=torch.int64)
    proc = GumbelTopK(keys, width=3, temperature=temperature, top_k=top_k)
    picks = proc(torch.zeros(rows, 5, dtype=torch.int64), logits.expand(rows, -1).clone()).argmax(-1)
    freq = torch.bincount(picks, minlength=8).double() / rows
    expected = torch.zeros(8, dtype=torch.float64)
    kept = torch.topk(logits, top_k).indices
    expected[kept] = torch.softmax(logits[kept].double() / temperature, 0)
    assert (freq[expected == 0] == 0).all()  # never outside the top-k
    np.testing.assert_allclose(freq.numpy(), expected.numpy(), atol=0.01)
    # without top-k, the whole vocabulary
    proc = GumbelTopK(keys[:20000], width=3, temperature=1.0, top_k=0)
    picks = proc(torch.zeros(20000, 5, dtype=torch.int64), logits.expand(20000, -1).clone()).argmax(-1)
    freq = torch.bincount(picks, minlength=8).double() / 20000
    np.testing.assert_allclose(freq.numpy(), torch.softmax(logits.double(), 0).numpy(), atol=0.012)


def test_gumbel_noise_is_a_function_of_key_step_and_token_only():
    keys = torch.tensor([[1, 2], [3, 4], [1, 2]], dtype=torch.int64)
    ids = torch.arange(50)
    noise = _gumbel(keys, 7, ids)
    assert torch.equal(noise[0], noise[2]) and not torch.equal(noise[0], noise[1])
    assert torch.equal(_gumbel(keys[1:2], 7, ids)[0], noise[1])  # alone or with other rows
    assert not torch.equal(_gumbel(keys, 8, ids)[0], noise[0])  # another step
    picked = _gumbel(keys, 7, torch.tensor([[5, 9], [5, 9], [5, 9]]))
    assert torch.equal(picked[:, 0], noise[:, 5]) and torch.equal(picked[:, 1], noise[:, 9])
    assert torch.isfinite(noise).all()


# --------------------------------------------------------------------------------------------
# a tiny GPT-2 that memorised its members


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than two for a model this small
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained():
    """A 2-layer GPT-2 (n_embd 32, context 128) trained hard (30 epochs) on 16 short member paragraphs."""
    tok = fx.tokenizer()
    paras = [p for p in fx.prose() if len(tok(p)["input_ids"]) <= 90]
    members, non_members = paras[:N_MEMBERS], paras[N_MEMBERS : 2 * N_MEMBERS]
    model = fx.train_tiny_gpt2(members, tok, epochs=30)
    labels = np.array([1] * N_MEMBERS + [0] * N_MEMBERS)
    return model, tok, members + non_members, labels


def _options(**kwargs):
    # the model is trained with BOS first (the GPT-2 tokenizer adds none itself, so auto would skip it)
    return SaMIA(**{"n_samples": N_SAMPLES, "first_token": "bos", **kwargs})


@pytest.fixture(scope="module")
def columns(trained):
    model, tok, texts, _ = trained
    timings: dict = {}
    out = samia_columns(model, tok, texts, _options(), timings=timings)
    return out, timings


def test_samia_separates_members(trained, columns):
    _, _, texts, labels = trained
    out, timings = columns
    assert set(out) == set(SAMIA_COLUMNS)
    for name in SAMIA_COLUMNS:
        assert out[name].dtype == np.float64 and out[name].shape == (len(texts),)
        assert np.isfinite(out[name]).all()
    assert ((0 <= out["samia"]) & (out["samia"] <= 1)).all()
    # measured: AUC 0.97 (samia) and 0.99 (samia_zlib) with 6 samples
    assert roc_auc(labels, out["samia"]) > 0.85
    assert roc_auc(labels, out["samia_zlib"]) > 0.85
    assert np.median(out["samia"][labels == 1]) > np.median(out["samia"][labels == 0])
    table = {"samia": out["samia"], "samia_zlib": out["samia_zlib"]}
    np.testing.assert_array_equal(SaMIAAttack().fit().score_samples(table), out["samia"])
    np.testing.assert_array_equal(SaMIAAttack(zlib=True).fit(table).score_samples(table), out["samia_zlib"])
    assert set(timings) >= {"total_seconds", "generate_seconds", "compare_seconds", "tokenize_seconds",
                            "generated_tokens", "rows", "generate_calls"}
    assert timings["rows"] == N_SAMPLES * len(texts)
    assert 0 < timings["generate_seconds"] <= timings["total_seconds"]


def test_columns_are_the_mean_rouge1_of_the_decoded_candidates(trained, monkeypatch):
    model, tok, texts, _ = trained
    decoded: list[str] = []
    original = type(tok).batch_decode

    def recording(self, rows, **kwargs):
        out = original(self, rows, **kwargs)
        decoded.extend(out)
        return out

    monkeypatch.setattr(type(tok), "batch_decode", recording)
    text = texts[0]
    out = samia_columns(model, tok, [text], _options(n_samples=3, max_new_tokens=12))
    assert len(decoded) == 3
    suffix = split_prefix(text, 0.5)[1]
    assert out["samia"][0] == pytest.approx(np.mean([rouge1(c, suffix) for c in decoded]), rel=1e-12)
    zl = [rouge1(c, suffix) * len(zlib.compress(" ".join(c.split()).encode())) for c in decoded]
    assert out["samia_zlib"][0] == pytest.approx(np.mean(zl), rel=1e-12)
    assert all(len(tok(c, add_special_tokens=False)["input_ids"]) <= 12 + 1 for c in decoded)


def test_same_seed_same_columns_whatever_the_batch(trained, columns):
    model, tok, texts, _ = trained
    out, _ = columns
    again = samia_columns(model, tok, texts, _options())
    for name in SAMIA_COLUMNS:
        np.testing.assert_array_equal(again[name], out[name])
    # another order, another batch size, a subset: the same samples per text
    pick = [20, 3, 17, 0, 9]
    sub = samia_columns(model, tok, [texts[i] for i in pick], _options(batch_size=4))
    for name in SAMIA_COLUMNS:
        np.testing.assert_array_equal(sub[name], out[name][pick])
    alone = samia_columns(model, tok, [texts[5]], _options(batch_size=1))
    assert alone["samia"][0] == out["samia"][5]


def test_another_seed_draws_other_samples(trained, columns):
    model, tok, texts, _ = trained
    out, _ = columns
    other = samia_columns(model, tok, texts, _options(seed=1))
    assert not np.array_equal(other["samia_zlib"], out["samia_zlib"])
    assert (other["samia"] != out["samia"]).sum() >= len(texts) // 4


def test_short_texts_and_full_prompts_get_nan(trained):
    model, tok, texts, _ = trained
    too_long = " ".join(fx.prose())  # its prefix alone overflows the 128-token context
    out = samia_columns(model, tok, ["one", "", texts[0], too_long], _options(n_samples=2, max_new_tokens=4))
    assert np.isnan(out["samia"][[0, 1, 3]]).all() and np.isnan(out["samia_zlib"][[0, 1, 3]]).all()
    assert np.isfinite(out["samia"][2])
    with pytest.raises(ValueError, match=r"X\['samia'\]: 3 texts have no SaMIA score \(NaN.*first rows: 0, 1, 3"):
        SaMIAAttack().score_samples(out)
    empty = samia_columns(model, tok, [], _options())
    assert empty["samia"].shape == (0,) and empty["samia_zlib"].dtype == np.float64


def test_samia_columns_check_their_inputs(trained):
    model, tok, texts, _ = trained
    with pytest.raises(TypeError, match=r"options: expected a SaMIA, got dict"):
        samia_columns(model, tok, texts, {"n_samples": 2})
    with pytest.raises(TypeError, match=r"texts: expected a sequence of str, got str"):
        samia_columns(model, tok, "a text", _options())
    with pytest.raises(TypeError, match=r"texts\[1\]: expected a str, got int"):
        samia_columns(model, tok, ["a b", 3], _options())
    with pytest.raises(TypeError, match=r"model: expected a transformers causal LM"):
        samia_columns(object(), tok, texts, _options())
    model.train()
    try:
        with pytest.raises(ValueError, match=r"model: expected a model in eval mode"):
            samia_columns(model, tok, texts, _options())
    finally:
        model.eval()


def test_attack_checks_its_input():
    table = {"samia": np.array([0.1, 0.3]), "samia_zlib": np.array([2.0, 1.0])}
    np.testing.assert_array_equal(SaMIAAttack().score_samples(table), [0.1, 0.3])
    with pytest.raises(ValueError, match=r"zlib: expected True or False, got 'yes'"):
        SaMIAAttack(zlib="yes").fit()
    with pytest.raises(ValueError, match=r"X: expected a column 'samia_zlib'"):
        SaMIAAttack(zlib=True).score_samples({"samia": [0.1]})
    with pytest.raises(TypeError, match=r"X: expected a per-sequence table"):
        SaMIAAttack().score_samples(np.array([0.1, 0.2]))
    assert SaMIAAttack(zlib=True).get_params() == {"zlib": True}
