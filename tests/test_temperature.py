"""Temperature consistency: tempered columns in scoring, `TemperatureAttack`, `--temperatures`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lm_fixtures as fx
from mia_fast.aggregate import aggregate, tempered_column
from mia_fast.attacks import TemperatureAttack
from mia_fast.cli import main
from mia_fast.metrics import roc_auc
from mia_fast.scoring.run import read_manifest, read_scores
from mia_fast.scoring.scorer import score_corpus
from mia_fast.audit.shadow_lm import save_causal_lm

N_MEMBERS = 24
TEMPERATURES = (0.25, 0.5, 2.0, 3.0)


@pytest.fixture(scope="module")
def trained():
    """A 2-layer GPT-2 trained for a few seconds on the member paragraphs."""
    return fx.trained_target()


@pytest.fixture(scope="module")
def scores(trained):
    model, tok, texts, labels = trained
    # the model is trained with BOS first (the test tokenizer adds none itself, so auto would skip it)
    return score_corpus(model, tok, texts, labels=labels, per_token=True, temperatures=TEMPERATURES,
                        first_token="bos")


def test_tempered_columns_match_a_direct_computation(trained, scores):
    """loss_t<tau> is the mean of -log softmax(z / tau)[y] over the text's tokens, computed here from
    the model's logits in float64."""
    model, tok, texts, _ = trained
    seqs = scores.sequences
    for i in (0, N_MEMBERS + 1):
        ids = [tok.bos_token_id] + tok(texts[i], add_special_tokens=False)["input_ids"][:127]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].double()
        y = torch.tensor(ids[1:])
        for tau in TEMPERATURES:
            logp = torch.log_softmax(logits / tau, -1)
            want_loss = -logp[torch.arange(len(y)), y].mean().item()
            want_ent = -(logp.exp() * logp).sum(-1).mean().item()
            assert seqs[tempered_column("loss", tau)][i] == pytest.approx(want_loss, rel=1e-4, abs=1e-5)
            assert seqs[tempered_column("entropy", tau)][i] == pytest.approx(want_ent, rel=1e-4, abs=1e-5)
    tokens = scores.tokens
    for tau in TEMPERATURES:
        assert tempered_column("logprob", tau) in tokens.columns
        per_seq = -tokens.groupby("id")[tempered_column("logprob", tau)].mean()
        np.testing.assert_allclose(per_seq.loc[seqs["id"]].to_numpy(), seqs[tempered_column("loss", tau)], rtol=1e-5)


def test_temperature_attack_separates_members(scores):
    seqs, labels = scores.sequences, scores.sequences["label"].to_numpy()
    aucs = {spread: roc_auc(labels, TemperatureAttack(spread=spread).fit().score_samples(seqs))
            for spread in ("slope", "std", "range")}
    assert all(auc > 0.5 for auc in aucs.values()), aucs
    assert aucs["slope"] > 0.8, aucs


def test_temperature_attack_reads_token_stats_and_tables_alike():
    g = torch.Generator().manual_seed(0)
    from mia_fast import token_stats

    logits = torch.randn(6, 20, 50, generator=g) * 3
    targets = torch.randint(0, 50, (6, 20), generator=g)
    targets[:, :3] = -100
    stats = token_stats(logits, targets, temperatures=(0.5, 2.0))
    table = aggregate(stats, ks=(0.2,))
    attack = TemperatureAttack()
    np.testing.assert_allclose(attack.score_samples(stats), attack.score_samples(table))
    assert attack.temperatures_ == (0.5, 1.0, 2.0)  # tau = 1 from the plain loss column


def test_temperature_attack_spreads_by_hand():
    table = {"loss_t0.5": np.array([1.0, 6.0]), "loss": np.array([1.0, 4.0]), "loss_t2": np.array([1.5, 3.0])}
    x = np.log([0.5, 1.0, 2.0])
    x -= x.mean()
    rows = np.array([[1.0, 1.0, 1.5], [6.0, 4.0, 3.0]])
    slope = (rows - rows.mean(1, keepdims=True)) @ x / (x @ x)
    np.testing.assert_allclose(TemperatureAttack().score_samples(table), slope)
    np.testing.assert_allclose(TemperatureAttack(spread="std").score_samples(table), -rows.std(1))
    np.testing.assert_allclose(TemperatureAttack(spread="range").score_samples(table), [-0.5, -3.0])
    only = TemperatureAttack(temperatures=(2.0,), spread="range").score_samples(table)  # + tau = 1
    np.testing.assert_allclose(only, [-0.5, -1.0])


@pytest.mark.parametrize("kwargs,error,match", [
    ({"statistic": "ppl"}, ValueError, "statistic"),
    ({"spread": "var"}, ValueError, "spread"),
    ({"temperatures": (0.0,)}, ValueError, "temperatures"),
])
def test_temperature_attack_rejects_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        TemperatureAttack(**kwargs).fit()


def test_temperature_attack_needs_two_temperatures():
    with pytest.raises(ValueError, match="at least 2 temperatures"):
        TemperatureAttack().score_samples({"loss": np.zeros(3)})
    with pytest.raises(ValueError, match="tempered statistics"):
        from mia_fast import token_stats

        TemperatureAttack().score_samples(token_stats(torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long)))


def test_cli_score_temperatures(tmp_path, trained):
    model, tok, texts, labels = trained
    save_causal_lm(model, tok, tmp_path / "model")
    corpus = tmp_path / "corpus.jsonl"
    import json

    corpus.write_text("".join(json.dumps({"text": t, "label": int(l)}) + "\n" for t, l in zip(texts[:6], labels[:6])))
    out = tmp_path / "scores"
    assert main(["score", "--model", str(tmp_path / "model"), "--input", str(corpus), "--out", str(out), "--label-field", "label",
                 "--temperatures", "0.5,2", "--no-progress"]) == 0
    seqs = read_scores(out)
    for col in ("loss_t0.5", "loss_t2", "entropy_t0.5", "entropy_t2"):
        assert col in seqs.columns and np.isfinite(seqs[col]).all()
    assert read_manifest(out)["identity"]["params"]["temperatures"] == [0.5, 2.0]
    # a resumed run with other temperatures is another job
    assert main(["score", "--model", str(tmp_path / "model"), "--input", str(corpus), "--out", str(out), "--label-field", "label",
                 "--temperatures", "0.5", "--no-progress"]) == 2
