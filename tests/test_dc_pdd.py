"""DC-PDD: reference-corpus token frequencies, their cache, the per-sequence score and the attack."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import lm_fixtures as fx
from mia_fast.attacks.dc_pdd import DC_PDD_COLUMN as ATTACK_COLUMN
from mia_fast.attacks.dc_pdd import DCPDDAttack
from mia_fast.metrics import roc_auc
from mia_fast.scoring.frequency import (
    DC_PDD_COLUMN,
    DEFAULT_DC_PDD_A,
    TokenFrequencies,
    count_token_frequencies,
    dc_pdd_column,
    default_cache_dir,
    load_token_frequencies,
)


class WordTokenizer:
    """A whitespace tokenizer over a fixed word list, counting its calls."""

    def __init__(self, words=("a", "b", "c", "d", "e")):
        self.vocab = {w: i for i, w in enumerate(words)}
        self.special_tokens_map: dict[str, str] = {}
        self.calls = 0

    def __len__(self):
        return len(self.vocab)

    def get_vocab(self):
        return dict(self.vocab)

    def __call__(self, texts, add_special_tokens=True):
        if add_special_tokens:
            raise AssertionError("reference-corpus counting must not add special tokens")
        self.calls += 1
        return {"input_ids": [[self.vocab[w] for w in t.split()] for t in texts]}


TEXTS = ["a b a", "c a", "b"]  # a: 3, b: 2, c: 1, d: 0, e: 0 -> 6 tokens, V = 5


def _write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


# --------------------------------------------------------------------------------------------
# counting and smoothing


@pytest.mark.parametrize("batch_size", [1, 2, 256])
def test_counts_by_hand(batch_size):
    tok = WordTokenizer()
    freqs = count_token_frequencies(iter(TEXTS), tok, batch_size=batch_size)
    assert freqs.counts.dtype == np.int64
    np.testing.assert_array_equal(freqs.counts, [3, 2, 1, 0, 0])
    assert freqs.total == 6 and freqs.n_documents == 3 and freqs.vocab_size == 5
    assert tok.calls == math.ceil(3 / batch_size)
    # Laplace: (count + 1) / (total + V)
    np.testing.assert_allclose(freqs.relative(), np.array([4, 3, 2, 1, 1]) / 11, rtol=0, atol=1e-15)
    assert freqs.relative().dtype == np.float64 and math.isclose(freqs.relative().sum(), 1.0)


def test_counts_vocab_size_and_max_tokens():
    tok = WordTokenizer()
    freqs = count_token_frequencies(TEXTS, tok, vocab_size=8, max_tokens=2)
    np.testing.assert_array_equal(freqs.counts, [2, 2, 1, 0, 0, 0, 0, 0])  # "a b a" -> "a b"
    np.testing.assert_allclose(freqs.relative(), (freqs.counts + 1) / (5 + 8))


def test_counts_with_a_real_tokenizer():
    tok = fx.tokenizer()
    texts = fx.prose()[:20]
    freqs = count_token_frequencies(texts, tok, batch_size=7)
    expected = np.zeros(len(tok), dtype=np.int64)
    for t in texts:
        np.add.at(expected, tok(t, add_special_tokens=False)["input_ids"], 1)
    np.testing.assert_array_equal(freqs.counts, expected)
    assert freqs.counts[tok.convert_tokens_to_ids("<|endoftext|>")] == 0  # no special tokens added


def test_corpus_identity_follows_the_texts():
    tok = WordTokenizer()
    same = count_token_frequencies(list(TEXTS), tok)
    assert count_token_frequencies(TEXTS, tok).corpus_sha256 == same.corpus_sha256
    # same counts, other texts (split differently): another identity
    assert count_token_frequencies(["a b", "a c a", "b"], tok).corpus_sha256 != same.corpus_sha256


def test_counting_errors():
    tok = WordTokenizer()
    with pytest.raises(ValueError, match=r"tokenizer: expected token ids in \[0, 2\).*got id 2"):
        count_token_frequencies(TEXTS, tok, vocab_size=2)
    with pytest.raises(TypeError, match="texts: expected str items, got int at index 1"):
        count_token_frequencies(["a", 3], tok)
    with pytest.raises(ValueError, match="at least one token"):
        count_token_frequencies([], tok)
    for name, kwargs in (("batch_size", {"batch_size": 0}), ("max_tokens", {"max_tokens": -1}),
                         ("vocab_size", {"vocab_size": 0})):
        with pytest.raises(ValueError, match=name):
            count_token_frequencies(TEXTS, tok, **kwargs)
    with pytest.raises(ValueError, match="total"):
        TokenFrequencies(np.array([1, 2]), 4, "t", "c", 1)
    with pytest.raises(ValueError, match="counts"):
        TokenFrequencies(np.array([1.0, 2.0]), 3, "t", "c", 1)


def test_save_and_load(tmp_path):
    freqs = count_token_frequencies(TEXTS, WordTokenizer())
    freqs.save(tmp_path / "f.npz")
    back = TokenFrequencies.load(tmp_path / "f.npz")
    np.testing.assert_array_equal(back.counts, freqs.counts)
    assert (back.total, back.tokenizer_sha256, back.corpus_sha256, back.n_documents) == \
        (freqs.total, freqs.tokenizer_sha256, freqs.corpus_sha256, freqs.n_documents)
    with pytest.raises(FileNotFoundError, match="path"):
        TokenFrequencies.load(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot be read"):
        TokenFrequencies.load(tmp_path / "bad.npz")


# --------------------------------------------------------------------------------------------
# the cache


def test_cache_second_call_does_not_tokenize(tmp_path):
    corpus = _write_jsonl(tmp_path / "ref.jsonl", TEXTS)
    cache = tmp_path / "cache"
    tok = WordTokenizer()
    first = load_token_frequencies(corpus, tok, cache_dir=cache)
    assert tok.calls == 1
    np.testing.assert_array_equal(first.counts, [3, 2, 1, 0, 0])
    assert len(list(cache.glob("*.npz"))) == 1
    assert not list(cache.glob(".*tmp-*"))  # atomic write left no temporary
    second = load_token_frequencies(corpus, tok, cache_dir=cache)
    assert tok.calls == 1
    np.testing.assert_array_equal(second.counts, first.counts)
    assert second.corpus_sha256 == first.corpus_sha256 == __import__("hashlib").sha256(corpus.read_bytes()).hexdigest()
    assert second.tokenizer_sha256 == first.tokenizer_sha256 and second.n_documents == 3


def test_cache_key_tokenizer_corpus_and_options(tmp_path):
    corpus = _write_jsonl(tmp_path / "ref.jsonl", TEXTS)
    cache = tmp_path / "cache"
    load_token_frequencies(corpus, WordTokenizer(), cache_dir=cache)
    other_tok = WordTokenizer(("e", "d", "c", "b", "a"))
    freqs = load_token_frequencies(corpus, other_tok, cache_dir=cache)
    assert other_tok.calls == 1
    np.testing.assert_array_equal(freqs.counts, [0, 0, 1, 2, 3])
    assert len(list(cache.glob("*.npz"))) == 2
    # another corpus (same name, other contents)
    _write_jsonl(corpus, ["d d e"])
    tok = WordTokenizer()
    freqs = load_token_frequencies(corpus, tok, cache_dir=cache)
    assert tok.calls == 1
    np.testing.assert_array_equal(freqs.counts, [0, 0, 0, 2, 1])
    # another text field or token limit
    corpus2 = tmp_path / "two.jsonl"
    corpus2.write_text(json.dumps({"text": "a a", "body": "b b b"}) + "\n")
    tok = WordTokenizer()
    assert load_token_frequencies(corpus2, tok, cache_dir=cache).counts[0] == 2
    assert load_token_frequencies(corpus2, tok, cache_dir=cache, text_field="body").counts[1] == 3
    assert load_token_frequencies(corpus2, tok, cache_dir=cache, text_field="body", max_tokens=1).counts[1] == 1
    assert tok.calls == 3


def test_other_formats(tmp_path):
    csv = tmp_path / "ref.csv"
    csv.write_text("id,body\n" + "".join(f"{i},{t}\n" for i, t in enumerate(TEXTS)))
    txt = tmp_path / "ref.txt"
    txt.write_text("\n".join(TEXTS) + "\n")
    tok = WordTokenizer()
    for path, kwargs in ((csv, {"text_field": "body"}), (txt, {})):
        freqs = load_token_frequencies(path, tok, cache_dir=tmp_path / "cache", **kwargs)
        np.testing.assert_array_equal(freqs.counts, [3, 2, 1, 0, 0])
        assert freqs.n_documents == 3


def test_corrupt_cache_is_recounted(tmp_path, caplog):
    corpus = _write_jsonl(tmp_path / "ref.jsonl", TEXTS)
    cache = tmp_path / "cache"
    load_token_frequencies(corpus, WordTokenizer(), cache_dir=cache)
    (cached,) = cache.glob("*.npz")
    for damage in (b"garbage", cached.read_bytes()[:40]):
        cached.write_bytes(damage)
        tok = WordTokenizer()
        with caplog.at_level("WARNING"):
            freqs = load_token_frequencies(corpus, tok, cache_dir=cache)
        assert tok.calls == 1 and "damaged" in caplog.text
        np.testing.assert_array_equal(freqs.counts, [3, 2, 1, 0, 0])
        assert TokenFrequencies.load(cached).total == 6  # repaired
    # a readable file whose counts were altered no longer matches its total: recounted too
    import io
    with np.load(cached) as data:
        parts = {k: data[k] for k in data.files}
    parts["counts"] = parts["counts"] + 1
    buf = io.BytesIO()
    np.savez(buf, **parts)
    cached.write_bytes(buf.getvalue())
    tok = WordTokenizer()
    np.testing.assert_array_equal(load_token_frequencies(corpus, tok, cache_dir=cache).counts, [3, 2, 1, 0, 0])
    assert tok.calls == 1


def test_default_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MIA_FAST_CACHE", str(tmp_path / "root"))
    assert default_cache_dir() == tmp_path / "root" / "frequencies"
    corpus = _write_jsonl(tmp_path / "ref.jsonl", TEXTS)
    load_token_frequencies(corpus, WordTokenizer())
    assert len(list((tmp_path / "root" / "frequencies").glob("*.npz"))) == 1


def test_load_errors(tmp_path):
    tok = WordTokenizer()
    with pytest.raises(FileNotFoundError, match="path: expected an existing reference corpus"):
        load_token_frequencies(tmp_path / "nope.jsonl", tok, cache_dir=tmp_path)
    corpus = _write_jsonl(tmp_path / "ref.jsonl", TEXTS)
    with pytest.raises(ValueError, match="format"):
        load_token_frequencies(corpus, tok, cache_dir=tmp_path, format="xml")
    csv = tmp_path / "ref.csv"
    csv.write_text("body\na b\n")
    with pytest.raises(ValueError, match="text"):
        load_token_frequencies(csv, tok, cache_dir=tmp_path)
    assert tok.calls == 0


# --------------------------------------------------------------------------------------------
# the per-sequence score


def _loop_reference(logprob, token, seq, n, freq, a):
    """The official algorithm (zhang-wei-chao/DC-PDD, com_det_sco.py), one text at a time."""
    out = np.full(n, np.nan)
    for s in range(n):
        rows = np.flatnonzero(seq == s)
        if not len(rows):
            continue
        ids, probs = token[rows], np.exp(logprob[rows])
        indexes, current = [], []
        for i, input_id in enumerate(ids):
            if input_id not in current:
                indexes.append(i)
                current.append(input_id)
        ce = probs[indexes] * np.log(1 / freq[ids[indexes]])
        ce[ce > a] = a
        out[s] = np.mean(ce)
    return out


def test_dc_pdd_by_hand():
    freq = np.array([4, 3, 2, 1, 1]) / 11  # TEXTS, smoothed
    # text 0: a b a c (the second a is not its first occurrence); text 1: none; text 2: d d
    token = torch.tensor([0, 1, 0, 2, 3, 3])
    seq = torch.tensor([0, 0, 0, 0, 2, 2])
    logprob = torch.log(torch.tensor([0.5, 0.2, 0.9, 0.1, 0.4, 0.99], dtype=torch.float64))
    alpha0 = [0.5 * math.log(11 / 4), 0.2 * math.log(11 / 3), 0.1 * math.log(11 / 2)]
    alpha2 = 0.4 * math.log(11)
    out = dc_pdd_column(logprob, token, seq, 3, freq, a=math.inf)
    assert out.dtype == np.float64 and out.shape == (3,)
    np.testing.assert_allclose(out[[0, 2]], [np.mean(alpha0), alpha2], rtol=1e-12)
    assert np.isnan(out[1])
    # upper bound a = 0.3 clips the first token of text 0 and the d of text 2
    out = dc_pdd_column(logprob, token, seq, 3, freq, a=0.3)
    np.testing.assert_allclose(out[[0, 2]], [(0.3 + alpha0[1] + alpha0[2]) / 3, 0.3], rtol=1e-12)
    # default bound (0.01, the paper's): everything here is clipped
    assert DEFAULT_DC_PDD_A == 0.01
    np.testing.assert_allclose(dc_pdd_column(logprob, token, seq, 3, freq)[[0, 2]], [0.01, 0.01])
    # a TokenFrequencies stands for its smoothed frequencies; numpy inputs work too
    freqs = count_token_frequencies(TEXTS, WordTokenizer())
    np.testing.assert_allclose(dc_pdd_column(logprob.numpy(), token.numpy(), seq.numpy(), 3, freqs, a=0.3), out,
                               equal_nan=True)


def test_dc_pdd_matches_the_official_loop():
    rng = np.random.default_rng(0)
    n_seq, V = 7, 13
    lengths = rng.integers(0, 30, n_seq)
    seq = np.repeat(np.arange(n_seq), lengths)
    token = rng.integers(0, V, seq.shape[0])
    logprob = np.log(rng.uniform(1e-4, 1, seq.shape[0]))
    freq = (rng.integers(0, 50, V) + 1.0) / 700
    for a in (0.05, 0.5, math.inf):
        got = dc_pdd_column(torch.from_numpy(logprob).float(), torch.from_numpy(token), torch.from_numpy(seq), n_seq,
                            freq, a)
        np.testing.assert_allclose(got, _loop_reference(logprob, token, seq, n_seq, freq, a), rtol=1e-6,
                                   equal_nan=True)


def test_dc_pdd_errors():
    freq = np.full(4, 0.25)
    lp, tok, seq = torch.tensor([-1.0, -2.0]), torch.tensor([0, 1]), torch.tensor([0, 1])
    for a in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="a: expected a positive upper bound"):
            dc_pdd_column(lp, tok, seq, 2, freq, a)
    with pytest.raises(ValueError, match=r"token: expected ids in \[0, 1\) \(the length of frequencies\), got 1"):
        dc_pdd_column(lp, tok, seq, 2, np.array([0.5]))
    with pytest.raises(ValueError, match=r"token: expected ids in \[0, 4\)"):
        dc_pdd_column(lp, torch.tensor([0, 4]), seq, 2, freq)
    with pytest.raises(ValueError, match="frequencies: expected positive finite"):
        dc_pdd_column(lp, tok, seq, 2, np.array([0.5, 0.0, 0.25, 0.25]))
    with pytest.raises(ValueError, match=r"frequencies: expected a non-empty 1-D array of shape \(V,\)"):
        dc_pdd_column(lp, tok, seq, 2, np.ones((2, 2)))
    with pytest.raises(ValueError, match="seq: expected sequence indices in"):
        dc_pdd_column(lp, tok, seq, 1, freq)
    with pytest.raises(ValueError, match="seq: expected rows sorted"):
        dc_pdd_column(lp, tok, torch.tensor([1, 0]), 2, freq)
    with pytest.raises(ValueError, match="token, seq: expected 2 values"):
        dc_pdd_column(lp, tok[:1], seq, 2, freq)
    with pytest.raises(TypeError, match="token: expected integers"):
        dc_pdd_column(lp, tok.float(), seq, 2, freq)
    with pytest.raises(ValueError, match="logprob: expected log-probabilities"):
        dc_pdd_column(torch.tensor([-1.0, float("nan")]), tok, seq, 2, freq)
    with pytest.raises(ValueError, match="n_sequences"):
        dc_pdd_column(lp, tok, seq, -1, freq)
    empty = dc_pdd_column(torch.empty(0), torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64), 2,
                          freq)
    assert empty.shape == (2,) and np.isnan(empty).all()


# --------------------------------------------------------------------------------------------
# the attack


def test_attack_reads_the_column_higher_is_member():
    assert ATTACK_COLUMN == DC_PDD_COLUMN == "dc_pdd"
    attack = DCPDDAttack().fit(None)
    values = np.array([0.003, 0.01, 0.0])
    np.testing.assert_array_equal(attack.score_samples({"dc_pdd": values}), values)
    np.testing.assert_array_equal(attack.score_samples(pd.DataFrame({"dc_pdd": values, "loss": 1.0})), values)
    with pytest.raises(ValueError, match="expected a column 'dc_pdd'"):
        attack.score_samples({"loss": values})
    with pytest.raises(ValueError, match="finite"):
        attack.score_samples({"dc_pdd": np.array([0.1, np.nan])})
    with pytest.raises(TypeError, match="per-sequence table"):
        attack.score_samples(values)


@pytest.fixture(scope="module")
def trained():
    """A 2-layer GPT-2 trained for a few seconds on 24 member paragraphs."""
    return fx.trained_target()


def test_end_to_end_members_score_higher(trained, tmp_path):
    from mia_fast.scoring.scorer import score_corpus

    model, tok, texts, labels = trained
    scores = score_corpus(model, tok, texts, labels=labels, per_token=True, first_token="bos")
    tokens = scores.tokens
    reference = _write_jsonl(tmp_path / "reference.jsonl", fx.prose()[60:120])  # paragraphs no model saw
    freqs = load_token_frequencies(reference, tok, cache_dir=tmp_path / "cache")
    seq = tokens.id.astype(np.int64).to_numpy()
    column = dc_pdd_column(
        torch.tensor(tokens.logprob.to_numpy()),
        torch.tensor(tokens.token.to_numpy().astype(np.int64)),
        torch.tensor(seq),
        len(texts),
        freqs.relative(),
    )
    assert np.isfinite(column).all()
    table = scores.sequences.assign(dc_pdd=column)
    attack_scores = DCPDDAttack().fit(table).score_samples(table)
    auc = roc_auc(labels, attack_scores)
    assert auc > 0.5, auc
    # the official loop on the same tokens gives the same column
    expected = _loop_reference(tokens.logprob.to_numpy().astype(np.float64), tokens.token.to_numpy(), seq, len(texts),
                               freqs.relative(), DEFAULT_DC_PDD_A)
    np.testing.assert_allclose(column, expected, rtol=1e-12)
