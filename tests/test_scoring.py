"""Sequence-level scoring: windows, buckets, per-sequence reductions and `score_corpus` against HF."""

from __future__ import annotations

import math
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lm_fixtures as fx
from mia_fast.aggregate import aggregate, lowest_k_mean, min_k_column, min_k_pp_column
from mia_fast.scoring.batching import bucket_batches, windows
from mia_fast.scoring.lm import LMScorer, context_length, fused_head_problem
from mia_fast.reference import token_stats_reference
from mia_fast.scoring.scorer import ScoreOptions, TextScorer, score_corpus

# --------------------------------------------------------------------------------------------
# windows and buckets


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 300), st.integers(2, 40), st.data())
def test_windows_score_every_target_once(n_tokens, context, data):
    stride = data.draw(st.integers(1, context - 1))
    wins = windows(n_tokens, context, stride)
    scored = [j for w in wins for j in range(w.score_from, w.end)]
    assert scored == list(range(1, n_tokens))  # each target once, in order
    for k, w in enumerate(wins):
        assert 0 < w.length <= context and w.start < w.score_from <= w.end
        if k > 0:  # targets after the first window keep at least context - stride tokens of context
            assert w.score_from - w.start >= min(context - stride, w.score_from)


def test_windows_reject_bad_arguments():
    with pytest.raises(ValueError, match="stride"):
        windows(10, 8, 8)
    with pytest.raises(ValueError, match="context"):
        windows(10, 1, 1)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 100), max_size=60), st.integers(1, 400))
def test_bucket_batches_cover_inputs_under_budget(lengths, budget):
    batches = list(bucket_batches(lengths, budget, max_rows=7, max_padding=0.2))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        width = max(lengths[i] for i in b)
        padding = len(b) * width - sum(lengths[i] for i in b)
        assert len(b) <= 7 and (len(b) == 1 or (len(b) * width <= budget and padding <= 0.2 * len(b) * width))


# --------------------------------------------------------------------------------------------
# per-sequence reductions


def _random_stats(batch=5, length=30, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(batch, length, vocab, generator=g)
    targets = torch.randint(0, vocab, (batch, length), generator=g)
    targets[torch.rand(batch, length, generator=g) < 0.3] = -100
    targets[0, :] = -100  # a sequence with no scored token
    targets[1, :] = -100
    targets[1, 3] = 7  # one scored token
    return logits, targets, token_stats_reference(logits, targets, dtype=torch.float64)


def test_aggregate_matches_a_direct_computation():
    logits, targets, stats = _random_stats()
    texts = [f"text number {i} " * (i + 1) for i in range(5)]
    cols = aggregate(stats, ks=(0.1, 0.5, 1.0), texts=texts)
    logp = torch.log_softmax(logits.double(), -1)
    for b in range(5):
        rows = (targets[b] != -100).nonzero().flatten().tolist()
        assert cols["n_tokens"][b] == len(rows)
        if not rows:
            assert all(math.isnan(cols[c][b]) for c in ("loss", "min_k_0.1", "zlib", "phi_mean", "top1_acc"))
            continue
        lp = np.array([logp[b, r, targets[b, r]].item() for r in rows])
        p = logp[b, rows].exp().numpy()
        mu = (p * logp[b, rows].numpy()).sum(-1)
        sigma = np.sqrt((p * logp[b, rows].numpy() ** 2).sum(-1) - mu**2)
        pp = (lp - mu) / sigma
        np.testing.assert_allclose(cols["loss"][b], -lp.mean(), rtol=1e-10)
        for k in (0.1, 0.5, 1.0):
            n = max(1, int(k * len(rows)))
            np.testing.assert_allclose(cols[min_k_column(k)][b], np.sort(lp)[:n].mean(), rtol=1e-10)
            np.testing.assert_allclose(cols[min_k_pp_column(k)][b], np.sort(pp)[:n].mean(), rtol=1e-8)
        np.testing.assert_allclose(cols["zlib"][b], -lp.mean() / len(zlib.compress(texts[b].encode())), rtol=1e-10)
        np.testing.assert_allclose(cols["phi_mean"][b], np.mean(lp - np.log1p(-np.exp(lp))), rtol=1e-8)
        ranks = [(logits[b, r] > logits[b, r, targets[b, r]]).sum().item() for r in rows]
        np.testing.assert_allclose(cols["top1_acc"][b], np.mean([r == 0 for r in ranks]))
        np.testing.assert_allclose(cols["log_rank_mean"][b], np.mean(np.log1p(ranks)), rtol=1e-10)
        np.testing.assert_allclose(cols["entropy_mean"][b], -(p * logp[b, rows].numpy()).sum(-1).mean(), rtol=1e-8)


def test_min_k_pp_clips_sigma_and_counts_it():
    logits = torch.zeros(1, 4, 10)  # uniform softmax: var_logp = 0
    targets = torch.tensor([[1, 2, -100, 3]])
    cols = aggregate(token_stats_reference(logits, targets, dtype=torch.float64))
    assert cols["n_sigma_clipped"][0] == 3
    assert np.isfinite(cols["min_k_pp_0.5"][0])


def test_lowest_k_mean_rejects_bad_fractions():
    with pytest.raises(ValueError, match="ks"):
        lowest_k_mean(torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool), (0.0,))


# --------------------------------------------------------------------------------------------
# score_corpus against a plain HF forward


def _hf_losses(model, texts, bos=True):
    """Mean next-token cross-entropy of each text, one document at a time (fp32)."""
    tok = fx.tokenizer()
    out = []
    for text in texts:
        ids = ([tok.bos_token_id] if bos else []) + tok(text, add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids])
        with torch.no_grad():
            out.append(model(x, labels=x).loss.item())
    return np.array(out)


@pytest.mark.parametrize("make", [fx.gpt2, fx.llama], ids=["gpt2", "llama"])
def test_loss_equals_hf_cross_entropy(make):
    model, texts = make(), [t[:100] for t in fx.prose()[:12]]
    scores = score_corpus(model, fx.tokenizer(), texts, batch_tokens=256, first_token="bos")
    assert scores.sequences.columns[0] == "id" and list(scores.sequences.id) == [str(i) for i in range(12)]
    np.testing.assert_allclose(scores.sequences.loss, _hf_losses(model, texts), rtol=2e-5, atol=2e-5)
    n_expected = [len(fx.tokenizer()(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert list(scores.sequences.n_tokens) == n_expected  # BOS policy: every text token is scored


def _tokenizer_adding_bos():
    """A copy of the test tokenizer (the shared one stays as it is), made to add its BOS itself (as
    Llama's does): tokenizer(text) = [BOS] + text."""
    import copy

    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(fx.tokenizer())
    tok._tokenizer.post_processor = TemplateProcessing(single=f"{tok.bos_token} $A",
                                                       special_tokens=[(tok.bos_token, tok.bos_token_id)])
    return tok


def test_auto_first_token_follows_the_tokenizers_own_convention():
    """`auto` scores what tokenizer(text) gives, as the MIMIR and Min-K%++ reference code do: a BOS
    the tokenizer has but does not add (GPT-2, SmolLM2's <|im_start|>) is not prepended."""
    model, texts = fx.gpt2(), [t[:100] for t in fx.prose()[:6]]
    tok = fx.tokenizer()
    assert tok.bos_token_id is not None and tok("a b")["input_ids"][0] != tok.bos_token_id
    unused = score_corpus(model, tok, texts)
    reference = []  # the reference code's loss: model(ids, labels=ids) on ids = tokenizer(text)
    for text in texts:
        x = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            reference.append(model(x, labels=x).loss.item())
    np.testing.assert_allclose(unused.sequences.loss, reference, rtol=2e-5, atol=2e-5)
    adding = _tokenizer_adding_bos()
    assert adding("a b")["input_ids"][0] == adding.bos_token_id
    scorer = TextScorer(model, adding, ScoreOptions())
    assert scorer.settings["first_token"] == "bos"
    np.testing.assert_allclose(score_corpus(model, adding, texts).sequences.loss, _hf_losses(model, texts),
                               rtol=2e-5, atol=2e-5)


def test_first_token_skip_scores_one_token_less():
    model, texts = fx.gpt2(), [t[:100] for t in fx.prose()[:4]]
    scores = score_corpus(model, fx.tokenizer(), texts, first_token="skip")
    np.testing.assert_allclose(scores.sequences.loss, _hf_losses(model, texts, bos=False), rtol=2e-5, atol=2e-5)


def test_batching_and_bucketing_do_not_change_results():
    model, texts = fx.gpt2(), list(fx.prose()[:20])
    a = score_corpus(model, fx.tokenizer(), texts, batch_tokens=64).sequences
    b = score_corpus(model, fx.tokenizer(), texts, batch_tokens=100_000).sequences
    c = score_corpus(model, fx.tokenizer(), texts[::-1], batch_tokens=300).sequences.iloc[::-1].reset_index(drop=True)
    for other in (b, c):
        cols = [col for col in a.columns if col != "id"]
        np.testing.assert_allclose(a[cols].to_numpy(float), other[cols].to_numpy(float), rtol=1e-5, atol=1e-5)


def test_sliding_windows_equal_a_manual_window_forward():
    model, tok = fx.gpt2(n_positions=64), fx.tokenizer()
    text = " ".join(fx.prose()[:3])
    ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 3 * 24
    context, stride = 24, 10
    scores = score_corpus(model, tok, [text], max_length=context, stride=stride, per_token=True, first_token="bos")
    expected = {}
    for w in windows(len(ids), context, stride):
        x = torch.tensor([ids[w.start : w.end]])
        with torch.no_grad():
            logp = torch.log_softmax(model(x).logits[0].double(), -1)
        for j in range(w.score_from, w.end):
            assert j not in expected
            expected[j] = logp[j - w.start - 1, ids[j]].item()
    tokens = scores.tokens
    assert list(tokens.position) == sorted(expected) == list(range(1, len(ids)))
    assert list(tokens.token) == ids[1:]
    np.testing.assert_allclose(tokens.logprob, [expected[j] for j in tokens.position], rtol=1e-4, atol=1e-4)
    assert scores.sequences.n_tokens[0] == len(ids) - 1


def test_fused_and_logits_heads_agree():
    model, texts = fx.llama(), list(fx.prose()[:8])
    fused = TextScorer(model, fx.tokenizer(), ScoreOptions(per_token=True))
    logits = TextScorer(model, fx.tokenizer(), ScoreOptions(per_token=True), head="logits")
    assert fused.lm.head == "fused" and logits.lm.head == "logits"
    a, ta = fused.score(texts)
    b, tb = logits.score(texts)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-4, err_msg=name)
    np.testing.assert_array_equal(ta["rank"], tb["rank"])


def test_head_that_transforms_logits_falls_back(caplog):
    model = fx.gpt2()
    model.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping" in fused_head_problem(model)
    with caplog.at_level("WARNING"):
        scorer = LMScorer(model)
    assert scorer.head == "logits" and "final_logit_softcapping" in caplog.text


def test_probe_catches_a_head_that_differs_from_lm_head(caplog):
    model = fx.gpt2()
    original = model.forward

    def scaled(*args, **kwargs):
        out = original(*args, **kwargs)
        out.logits = out.logits * 3.0
        return out

    model.forward = scaled
    texts = list(fx.prose()[:3])
    with caplog.at_level("WARNING"):
        scorer = TextScorer(model, fx.tokenizer())
        cols, _ = scorer.score(texts)
    assert scorer.lm.head == "logits" and "differ" in scorer.lm.reason and "differ" in caplog.text


def test_score_corpus_validates_arguments():
    model, tok = fx.gpt2(), fx.tokenizer()
    with pytest.raises(ValueError, match="labels: expected 2"):
        score_corpus(model, tok, ["a b", "c d"], labels=[1])
    with pytest.raises(ValueError, match="first_token"):
        score_corpus(model, tok, ["a b"], first_token="maybe")
    with pytest.raises(ValueError, match="max_length: expected at most the model's context 64"):
        score_corpus(model, tok, ["a b"], max_length=65)
    with pytest.raises(ValueError, match="stride"):
        score_corpus(model, tok, ["a b"], max_length=16, stride=16)
    with pytest.raises(ValueError, match=r"ks: expected a non-empty list of fractions in \(0, 1\], got \[5, 10\]"):
        ScoreOptions(ks=(5, 10))
    for floor in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sigma_floor: expected a positive finite number"):
            ScoreOptions(sigma_floor=floor)


def test_a_config_without_context_length_takes_max_length(monkeypatch):
    """BLOOM-style configs name no context length: max_length supplies it, else a clear error."""
    assert context_length(SimpleNamespace(config=SimpleNamespace(n_layer=2))) is None
    assert context_length(SimpleNamespace(config=SimpleNamespace(max_seq_len=2048))) == 2048  # MPT
    model, tok, texts = fx.gpt2(), fx.tokenizer(), list(fx.prose()[:3])
    want = score_corpus(model, tok, texts, max_length=32).sequences.loss.to_numpy()
    monkeypatch.setattr("mia_fast.scoring.scorer.context_length", lambda model: None)
    with pytest.raises(ValueError, match="max_length: the model's config gives no context length"):
        score_corpus(model, tok, texts)
    np.testing.assert_array_equal(score_corpus(model, tok, texts, max_length=32).sequences.loss.to_numpy(), want)


@pytest.mark.parametrize("head", ["fused", "logits"])
def test_scoring_forwards_build_no_kv_cache(head):
    model, seen = fx.gpt2(), []
    for module in (model, model.base_model):
        module.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs.get("use_cache")),
                                     with_kwargs=True)
    TextScorer(model, fx.tokenizer(), head=head).score(list(fx.prose()[:2]))
    assert seen and all(flag is False for flag in seen), seen


def test_labels_and_ids_are_carried():
    model, tok = fx.gpt2(), fx.tokenizer()
    scores = score_corpus(model, tok, list(fx.prose()[:3]), ids=["a", "b", "c"], labels=[1, 0, 1], per_token=True)
    assert list(scores.sequences.id) == ["a", "b", "c"] and list(scores.sequences.label) == [1, 0, 1]
    assert set(scores.tokens.id) == {"a", "b", "c"}
    assert scores.tokens.groupby("id").size().loc[["a", "b", "c"]].tolist() == scores.sequences.n_tokens.tolist()


# --------------------------------------------------------------------------------------------
# memory of a long text


def test_token_stats_keeps_no_batch_result_alive():
    """Each forward batch's stats are copied out and dropped (kept alive, their small blocks pinned
    the heap between the forward passes' temporaries: ~1.4 KB of RSS per token of a long text),
    and the result is exactly the concatenation of the batches sorted by (sequence, position)."""
    import weakref

    from mia_fast.stats import FIELDS

    scorer = TextScorer(fx.gpt2(n_positions=64), fx.tokenizer(), ScoreOptions(batch_tokens=128, temperatures=(2.0,)))
    forward, alive, parts = scorer.lm, [], []

    def tracking(*args, **kwargs):
        assert sum(ref() is not None for ref in alive[:-1]) == 0  # only the latest may still be bound
        out = forward(*args, **kwargs)
        alive.append(weakref.ref(out.logprob))
        parts.append(out.map(torch.clone))
        return out

    scorer.lm = tracking
    tokens = scorer.tokenize([" ".join(fx.prose()[:8]), fx.prose()[9]])
    stats, seq, pos = scorer.token_stats(tokens)
    assert len(parts) > 10
    bwins = [w for i, t in enumerate(tokens) for w in windows(len(t), scorer.context, scorer.stride, seq=i)]
    order_seq = torch.cat([torch.full((w.end - w.score_from,), w.seq) for b in bucket_batches(
        [w.length for w in bwins], 128) for w in (bwins[i] for i in b)])
    order_pos = torch.cat([torch.arange(w.score_from, w.end) for b in bucket_batches(
        [w.length for w in bwins], 128) for w in (bwins[i] for i in b)])
    order = torch.from_numpy(np.lexsort((order_pos.numpy(), order_seq.numpy())))
    for f in FIELDS:
        assert torch.equal(getattr(stats, f), torch.cat([getattr(p, f) for p in parts])[order]), f
    assert torch.equal(stats.tempered.logprob, torch.cat([p.tempered.logprob for p in parts])[order])
    assert torch.equal(seq, order_seq[order]) and torch.equal(pos, order_pos[order])
    assert seq.tolist() == [0] * (len(tokens[0]) - 1) + [1] * (len(tokens[1]) - 1)


_RSS_CHILD = """
import sys
import lm_fixtures as fx
from mia_fast.scoring.scorer import ScoreOptions, TextScorer

paras, n_texts, chars = fx.prose(), int(sys.argv[1]), int(sys.argv[2])
def text(chars, first):
    out, i = [], first
    while sum(map(len, out)) + len(out) < chars:
        out.append(paras[i % len(paras)])
        i += 1
    return " ".join(out)[:chars]
TextScorer(fx.gpt2(n_positions=64), fx.tokenizer(), ScoreOptions()).score([text(chars, i) for i in range(n_texts)])
"""


def _peak_rss_mib(n_texts: int, chars: int) -> float:
    """Peak RSS of a fresh process scoring ``n_texts`` texts of ``chars`` characters (one shard)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _RSS_CHILD, str(n_texts), str(chars)], env=env,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
    proc.stderr.close()
    return usage.ru_maxrss / 1024


@pytest.mark.slow
def test_a_record_at_the_default_limit_peaks_below_a_shard_of_short_records():
    """The default max_record_chars: one text at the limit takes less memory to score than a shard
    of 1000 texts of 1000 characters (design of `mia_fast.scoring.corpus.MAX_RECORD_CHARS`)."""
    from mia_fast.scoring.corpus import MAX_RECORD_CHARS

    long_text = _peak_rss_mib(1, MAX_RECORD_CHARS)
    shard = _peak_rss_mib(1000, 1000)
    assert long_text < shard, (long_text, shard)
