"""Prefix sensitivity: continuation loss after the text's own prefix, ReCaLL's fixed context, CLI and attacks."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch

import lm_fixtures as fx
from mia_fast.attacks import PrefixAttack, ReCaLLAttack
from mia_fast.cli import main
from mia_fast.metrics import roc_auc
from mia_fast.columns import check_prefix_tokens, loss_prefix_column, n_tokens_prefix_column, prefix_settings
from mia_fast.scoring.prefix import conditioned_inputs, read_context_file
from mia_fast.scoring.run import read_manifest, read_scores
from mia_fast.scoring.scorer import ScoreOptions, TextScorer, score_corpus
from mia_fast.audit.shadow_lm import save_causal_lm

N_MEMBERS = 24
CONTEXT_TOKENS = 48
SETTINGS = (0, 8, 32, 0.25, 0.5, 1000)


def _paragraphs():
    paras = fx.prose()
    members, non_members = list(paras[:N_MEMBERS]), list(paras[N_MEMBERS : 2 * N_MEMBERS])
    context = "\n\n".join(paras[100:104]) + "\n"  # paragraphs that no model here trains on
    return members, non_members, context


@pytest.fixture(scope="module")
def trained():
    """A 2-layer GPT-2 (n_embd 32, context 128) trained for a few seconds on the member paragraphs."""
    members, non_members, context = _paragraphs()
    tok = fx.tokenizer()
    model = fx.train_tiny_gpt2(members, tok)
    texts = members + non_members
    labels = np.array([1] * len(members) + [0] * len(non_members))
    return model, tok, texts, labels, context


@pytest.fixture(scope="module")
def scores(trained):
    model, tok, texts, labels, context = trained
    # the model is trained with BOS first (GPT-2's tokenizer adds none itself, so auto would skip it)
    return score_corpus(model, tok, texts, labels=labels, first_token="bos", per_token=True, prefix_tokens=SETTINGS,
                        context_text=context, context_tokens=CONTEXT_TOKENS)


# --------------------------------------------------------------------------------------------
# (a) own prefix: the same forward pass, reduced over the continuation


def _expected_from_tokens(tokens, n_text, setting, bos):
    """n_tokens and loss of each text's scored tokens at text positions >= its prefix, from the token table."""
    counts, losses = [], []
    for i, n in enumerate(n_text):
        k = setting if isinstance(setting, int) else math.floor(setting * n)
        rows = tokens[(tokens.id == str(i)) & (tokens.position - bos >= k)]
        counts.append(len(rows))
        losses.append(-rows.logprob.to_numpy(np.float64).mean() if len(rows) else np.nan)
    return np.array(counts), np.array(losses)


def test_continuation_columns_equal_the_per_token_table(scores):
    seq, tokens = scores.sequences, scores.tokens
    n_text = seq.n_tokens.to_numpy()  # BOS policy: every text token is scored
    assert (n_text > 128).any()  # some texts go through sliding windows
    for setting in SETTINGS:
        counts, losses = _expected_from_tokens(tokens, n_text, setting, bos=1)
        np.testing.assert_array_equal(seq[n_tokens_prefix_column(setting)], counts, err_msg=str(setting))
        np.testing.assert_allclose(seq[loss_prefix_column(setting)], losses, rtol=1e-12, atol=0, err_msg=str(setting))
    np.testing.assert_allclose(seq.loss_prefix0, seq.loss, rtol=1e-12)
    assert (seq.n_tokens_prefix1000 == 0).all() and seq.loss_prefix1000.isna().all()
    assert seq["loss_prefix32"].isna().any() and not seq["loss_prefix0.5"].isna().any()
    assert prefix_settings(list(seq.columns)) == list(SETTINGS)


def test_without_bos_prefix_and_context_count_from_the_first_text_token(trained):
    model, tok, texts, _, context = trained
    texts = [t for t in texts if len(tok(t, add_special_tokens=False)["input_ids"]) <= 100][:6]
    out = score_corpus(model, tok, texts, first_token="skip", per_token=True, prefix_tokens=(3, 0.5),
                       context_text=context, context_tokens=16)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    for setting in (3, 0.5):
        counts, losses = _expected_from_tokens(out.tokens, [len(x) for x in ids], setting, bos=0)
        np.testing.assert_array_equal(out.sequences[n_tokens_prefix_column(setting)], counts)
        np.testing.assert_allclose(out.sequences[loss_prefix_column(setting)], losses, rtol=1e-12)
    # after the context, the text's first token stays unscored: the same tokens as without it
    lead = tok(context, add_special_tokens=False)["input_ids"][-16:]
    expected = [np.mean(_nll(model, lead + x, len(lead) + 1)) for x in ids]
    np.testing.assert_allclose(out.sequences.loss_context, expected, rtol=2e-5)


# --------------------------------------------------------------------------------------------
# (b) and (c): the signals separate members from non-members


def test_continuation_loss_separates_members(scores):
    table = scores.sequences
    labels = table.label.to_numpy()
    for setting in (8, 0.25, 0.5):
        auc = roc_auc(labels, PrefixAttack(setting).fit().score_samples(table))
        assert auc > 0.75, (setting, auc)
    drop = PrefixAttack(8, mode="drop").fit().score_samples(table)
    np.testing.assert_allclose(drop, table.loss - table.loss_prefix8)
    with pytest.raises(ValueError, match=r"no token after their prefix"):
        PrefixAttack(32).score_samples(table)


def test_recall_separates_members_in_the_documented_direction(scores):
    table = scores.sequences
    labels = table.label.to_numpy()
    recall = table.recall.to_numpy()
    np.testing.assert_allclose(recall, table.loss_context / table.loss, rtol=1e-12)
    # a non-member context raises members' loss more: larger ratios = members
    assert np.median(recall[labels == 1]) > np.median(recall[labels == 0]) > 0.9
    auc = roc_auc(labels, ReCaLLAttack().fit().score_samples(table))
    assert auc > 0.75, auc


# --------------------------------------------------------------------------------------------
# the context pass against a plain forward of [BOS] + context + text


def _nll(model, ids, first):
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return [-logp[j - 1, ids[j]].item() for j in range(first, len(ids))]


def test_context_loss_equals_a_direct_forward(trained, scores):
    model, tok, texts, _, context = trained
    bos = tok.bos_token_id
    lead = [bos] + tok(context, add_special_tokens=False)["input_ids"][-CONTEXT_TOKENS:]
    m, width = len(lead), 128 - len(lead)
    checked_long = 0
    for i, text in enumerate(texts[:16]):  # six of them are longer than a text window
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= width:
            nll = _nll(model, lead + ids, m)
        else:  # windows of `width` text tokens, each after the whole context, half a window apart
            nll, start, done = [], 0, 0
            while done < len(ids):
                part = ids[start : start + width]
                nll += _nll(model, lead + part, m + done - start)
                done = start + len(part)
                start += width // 2
            checked_long += 1
        assert len(nll) == len(ids)
        np.testing.assert_allclose(scores.sequences.loss_context[i], np.mean(nll), rtol=2e-5, err_msg=str(i))
    assert checked_long > 0


def test_conditioned_inputs_score_each_text_token_once():
    texts = [list(range(100, 100 + n)) for n in (0, 1, 2, 7, 40)]
    lead = [1, 2, 3, 4, 5]
    for first in (0, 1):
        inputs, wins, owner = conditioned_inputs(texts, lead, max_length=16, stride=8, first_scored=first)
        scored = {i: [] for i in range(len(texts))}
        for inp, w, o in zip(inputs, wins, owner.tolist()):
            assert inp[:5] == lead and len(inp) <= 16 and w.end == len(inp) and w.score_from >= 5
            scored[o] += inp[w.score_from : w.end]
        for i, t in enumerate(texts):
            assert scored[i] == t[first:], (first, i)
    with pytest.raises(ValueError, match="lead"):
        conditioned_inputs(texts, list(range(15)), max_length=16, stride=8, first_scored=0)


# --------------------------------------------------------------------------------------------
# options and attacks: bad input


def test_options_are_validated():
    assert check_prefix_tokens([0, 16.0, 0.25]) == (0, 16, 0.25)
    assert isinstance(check_prefix_tokens([16.0])[0], int)
    for bad, match in (((-1,), "negative"), ((1.5,), "fraction above 1"), ((8, 8.0), "distinct"),
                       ((float("nan"),), "prefix_tokens"), (("8",), "prefix_tokens")):
        with pytest.raises(ValueError, match=match):
            ScoreOptions(prefix_tokens=bad)
    with pytest.raises(TypeError, match="prefix_tokens"):
        ScoreOptions(prefix_tokens=8)
    with pytest.raises(ValueError, match="context_tokens: given without a context"):
        ScoreOptions(context_tokens=8)
    with pytest.raises(ValueError, match="context_tokens: expected a positive"):
        ScoreOptions(context_text="abc", context_tokens=0)
    with pytest.raises(TypeError, match="context_text"):
        ScoreOptions(context_text=b"abc")
    # the manifest records the context's sha256, never its text
    record = ScoreOptions(context_text="known text\n", prefix_tokens=(16,)).as_dict()
    assert "context_text" not in record and record["context_sha256"] == hashlib.sha256(b"known text\n").hexdigest()
    with pytest.raises(ValueError, match="context_tokens: the context has"):  # leaves < 2 tokens for the text
        TextScorer(fx.gpt2(n_positions=64), fx.tokenizer(), ScoreOptions(context_text=" ".join(fx.prose()[:3])))


def test_empty_input_has_the_columns():
    scorer = TextScorer(fx.gpt2(), fx.tokenizer(), ScoreOptions(prefix_tokens=(4,), context_text="Some context.\n"))
    columns, _ = scorer.score([])
    assert {"loss_prefix4", "n_tokens_prefix4", "loss_context", "recall"} <= set(columns)
    assert all(len(v) == 0 for v in columns.values())


def test_attacks_follow_the_estimator_contract():
    from sklearn.base import clone

    for attack in (PrefixAttack(0.25, mode="drop"), ReCaLLAttack()):
        copy = clone(attack)
        assert type(copy) is type(attack) and copy.get_params() == attack.get_params()
        assert attack.fit() is attack and not [k for k in vars(attack) if k.endswith("_")]
    assert PrefixAttack().set_params(prefix=32).fit()._column() == "loss_prefix32"


def test_attacks_reject_bad_input():
    table = {"loss": np.array([2.0, 3.0]), "loss_prefix8": np.array([1.0, 3.5]), "recall": np.array([1.5, 1.0])}
    np.testing.assert_allclose(ReCaLLAttack().fit().score_samples(table), [1.5, 1.0])
    np.testing.assert_allclose(PrefixAttack(8).fit().score_samples(table), [-1.0, -3.5])
    np.testing.assert_allclose(PrefixAttack(8, mode="drop").fit().score_samples(table), [1.0, -0.5])
    with pytest.raises(ValueError, match="prefix: expected"):
        PrefixAttack(-2).fit()
    with pytest.raises(ValueError, match="mode: expected"):
        PrefixAttack(8, mode="ratio").fit()
    with pytest.raises(ValueError, match="'loss_prefix16'"):
        PrefixAttack(16).score_samples(table)
    with pytest.raises(ValueError, match="'recall'"):
        ReCaLLAttack().score_samples({"loss": np.array([1.0])})
    with pytest.raises(TypeError, match="per-sequence table"):
        ReCaLLAttack().score_samples([1.0, 2.0])


# --------------------------------------------------------------------------------------------
# (d) the command line: columns, manifest, resume, attack report, errors


@pytest.fixture(scope="module")
def cli_inputs(trained, tmp_path_factory):
    model, tok, texts, labels, context = trained
    root = tmp_path_factory.mktemp("prefix_cli")
    save_causal_lm(model, tok, root / "model")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t, "member": int(y)}) + "\n" for t, y in zip(texts, labels)))
    ctx = root / "context.txt"
    ctx.write_text(context)
    return root, corpus, ctx


def _score_args(root, corpus, out, *extra):
    return ["score", "--model", str(root / "model"), "--input", str(corpus), "--out", str(out),
            "--label-field", "member", "--no-progress", "--shard-size", "20", *extra]


def test_cli_writes_the_columns_and_refuses_a_changed_context(cli_inputs, scores, capsys, tmp_path):
    root, corpus, ctx = cli_inputs
    out = tmp_path / "scores"
    extra = ["--first-token", "bos", "--prefix-tokens", "0,8,0.5", "--context-file", str(ctx), "--context-tokens", str(CONTEXT_TOKENS)]
    assert main(_score_args(root, corpus, out, *extra)) == 0, capsys.readouterr().err
    table = read_scores(out)
    for col in ("loss_prefix0", "n_tokens_prefix8", "loss_prefix8", "loss_prefix0.5", "loss_context", "recall"):
        assert col in table.columns, col
    for col in ("loss_prefix8", "loss_prefix0.5", "recall"):  # what the Python API computes
        np.testing.assert_allclose(table[col], scores.sequences[col], rtol=1e-5, err_msg=col)
    manifest = read_manifest(out)
    params = manifest["identity"]["params"]
    assert params["prefix_tokens"] == [0, 8, 0.5] and params["context_tokens"] == CONTEXT_TOKENS
    assert params["context_sha256"] == hashlib.sha256(ctx.read_bytes()).hexdigest()
    assert manifest["settings"]["context_tokens_used"] == CONTEXT_TOKENS
    capsys.readouterr()

    report = tmp_path / "report"
    assert main(["attack", "--target", str(out), "--out", str(report)]) == 0
    payload = json.loads((report / "metrics.json").read_text())
    metrics = payload["attacks"]
    assert {"recall", "loss_prefix8", "loss_prefix0.5"} <= set(metrics) and "loss_prefix0" not in metrics
    assert metrics["recall"]["auc"] > 0.75
    # the blind baseline, on the texts read again from the corpus file: a random split, not flagged
    assert {"auc", "auc_ci", "method", "confounded"} <= set(payload["shift_check"])
    assert payload["shift_check"]["confounded"] is False and metrics["recall"]["beats_blind_baseline"] is True
    assert (report / "report.md").read_text().splitlines()[2].startswith("**Shift check**")
    capsys.readouterr()

    changed = tmp_path / "other_context.txt"
    changed.write_text(ctx.read_text().replace("the", "a"))
    assert main(_score_args(root, corpus, out, "--prefix-tokens", "0,8,0.5", "--context-file", str(changed),
                            "--context-tokens", str(CONTEXT_TOKENS))) == 2
    err = capsys.readouterr().err
    assert "different job" in err and "context_sha256" in err


@pytest.mark.parametrize("extra, message", [
    (["--prefix-tokens", "-1"], "prefix_tokens: expected token counts"),
    (["--prefix-tokens", "1.5"], "a fraction above 1"),
    (["--context-file", "no_such_context.txt"], "context_file: expected a text file"),
    (["--context-tokens", "8"], "context_tokens: given without a context"),
])
def test_cli_rejects_bad_values(cli_inputs, tmp_path, capsys, extra, message):
    root, corpus, _ = cli_inputs
    out = tmp_path / "scores"
    assert main(_score_args(root, corpus, out, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (out / "sequences").exists()  # nothing was scored


def test_read_context_file_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n")
    with pytest.raises(ValueError, match="context_file: expected some text"):
        read_context_file(empty)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="context_file: expected UTF-8"):
        read_context_file(binary)
