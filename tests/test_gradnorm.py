"""Per-sample gradient norms (`mia_fast.scoring.gradients`), the gradient-norm attack and ``mia-fast score --gradients``."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

import lm_fixtures as fx
from mia_fast.attacks import GradNormAttack, LossAttack
from mia_fast.cli import main
from mia_fast.scoring.gradients import classifier_gradient_norms, lm_gradient_norms, select_parameters
from mia_fast.metrics import roc_auc
from mia_fast.scoring.run import read_manifest, read_scores
from mia_fast.scoring.scorer import ScoreOptions, TextScorer, score_corpus
from mia_fast.audit.shadow_lm import encode_texts, tiny_lm_config, train_causal_lm

N_MEMBERS = 20


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train and differentiate much faster on one thread of a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros((len(rows), max(map(len, rows))), dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


@pytest.fixture(scope="module")
def trained_lm():
    """A 2-layer GPT-2 (n_embd 32) trained on 20 paragraphs; ids of 20 members then 20 non-members."""
    torch.set_num_threads(1)
    tok = fx.tokenizer()
    paras = fx.prose()
    members, others = list(paras[:N_MEMBERS]), list(paras[N_MEMBERS : 2 * N_MEMBERS])
    config = tiny_lm_config(len(tok), n_layer=2, n_embd=32, n_head=2, n_positions=64)
    model = train_causal_lm(members, tok, config, epochs=20, lr=1e-2, batch_size=4, max_length=64)
    ids, mask = _pad(encode_texts(tok, members + others, 64))
    return model, ids, mask


def _labels(n_members: int, n_others: int) -> np.ndarray:
    return np.r_[np.ones(n_members, dtype=int), np.zeros(n_others, dtype=int)]


def test_lm_members_have_smaller_gradients(trained_lm, caplog):
    model, ids, mask = trained_lm
    with caplog.at_level(logging.WARNING, logger="mia_fast.scoring.gradients"):
        norms = lm_gradient_norms(model, ids, mask, params="all")
    assert "vmap failed" not in caplog.text  # right padding: the batched path runs
    assert norms.shape == (2 * N_MEMBERS,) and np.isfinite(norms).all() and (norms > 0).all()
    attack = GradNormAttack().fit()
    scores = attack.score_samples(norms)
    np.testing.assert_allclose(scores, -np.log(norms))
    auc = roc_auc(_labels(N_MEMBERS, N_MEMBERS), scores)
    assert auc > 0.8, auc
    head = lm_gradient_norms(model, ids, mask, params="head")
    assert roc_auc(_labels(N_MEMBERS, N_MEMBERS), attack.score_samples(head)) > 0.8


@pytest.fixture(scope="module")
def digits_mlp():
    """An MLP trained on 100 digits (members) until it fits them; 100 unseen digits (non-members)."""
    from sklearn.datasets import load_digits

    torch.set_num_threads(1)
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))[:200]
    x = torch.tensor(x[order] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[order], dtype=torch.int64)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:100]), y[:100]).backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), x, y


def test_classifier_members_have_smaller_gradients(digits_mlp):
    model, x, y = digits_mlp
    norms = classifier_gradient_norms(model, x, y, params="all")
    assert norms.shape == (200,) and np.isfinite(norms).all()
    auc = roc_auc(_labels(100, 100), GradNormAttack().score_samples(norms))
    assert auc > 0.55, auc  # the train/test gap of digits is small: about 0.65
    # numpy inputs, float64, give the same norms
    same = classifier_gradient_norms(model, x.numpy().astype(np.float64), y.numpy(), params="all")
    np.testing.assert_allclose(same, norms, rtol=1e-5)


@pytest.mark.parametrize("params", ["all", "head", "last"])
def test_vmap_and_loop_agree_on_lm(trained_lm, params):
    model, ids, mask = trained_lm
    rows = slice(N_MEMBERS - 4, N_MEMBERS + 4)  # members and non-members of different lengths
    vm = lm_gradient_norms(model, ids[rows], mask[rows], params=params, method="vmap", batch_size=3)
    loop = lm_gradient_norms(model, ids[rows], mask[rows], params=params, method="loop")
    np.testing.assert_allclose(vm, loop, rtol=1e-4)


def test_vmap_and_loop_agree_on_llama():
    """A SmolLM2-shaped model: grouped-query attention, RMSNorm, tied embeddings."""
    model = fx.llama()
    ids, mask = _pad([fx.tokenizer()(t)["input_ids"][:24] for t in fx.prose()[8:13]])
    assert list(select_parameters(model, "head")) == ["model.embed_tokens.weight"]
    assert "model.norm.weight" in select_parameters(model, "last")
    for params in ("all", "last"):
        vm = lm_gradient_norms(model, ids, mask, params=params, method="vmap", batch_size=2)
        loop = lm_gradient_norms(model, ids, mask, params=params, method="loop")
        np.testing.assert_allclose(vm, loop, rtol=1e-4)


def test_vmap_and_loop_agree_on_classifier(digits_mlp):
    model, x, y = digits_mlp
    for params in ("all", "head", "0.*"):
        vm = classifier_gradient_norms(model, x[90:115], y[90:115], params=params, method="vmap", batch_size=7)
        loop = classifier_gradient_norms(model, x[90:115], y[90:115], params=params, method="loop")
        np.testing.assert_allclose(vm, loop, rtol=1e-4)


def test_norm_matches_the_model_own_loss_and_backward():
    """An independent reference: HF's own ``labels=`` loss, ``backward()`` and every ``.grad``."""
    model = fx.gpt2()
    rows = [fx.tokenizer()(t)["input_ids"][:30] for t in fx.prose()[:3]]
    ids, mask = _pad(rows)
    norms = lm_gradient_norms(model, ids, mask)
    # the value of padding ids does not matter (here -100, which is no token)
    np.testing.assert_allclose(lm_gradient_norms(model, ids.masked_fill(mask == 0, -100), mask), norms, rtol=1e-6)
    for i, r in enumerate(rows):
        model.zero_grad()
        x = torch.tensor([r])
        model(input_ids=x, labels=x).loss.backward()
        expected = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())).item()
        assert norms[i] == pytest.approx(expected, rel=1e-5)
    model.zero_grad(set_to_none=True)


def test_parameter_subsets(trained_lm):
    model, ids, mask = trained_lm
    ids, mask = ids[:6], mask[:6]
    head, last = select_parameters(model, "head"), select_parameters(model, "last")
    assert list(head) == ["transformer.wte.weight"]  # lm_head.weight is tied to it
    assert "transformer.h.1.attn.c_attn.weight" in last and "transformer.ln_f.weight" in last
    assert "transformer.h.0.attn.c_attn.weight" not in last and "transformer.wte.weight" in last
    assert list(select_parameters(model, "lm_head.*")) == ["transformer.wte.weight"]
    full = lm_gradient_norms(model, ids, mask, params="all")
    subsets = {spec: lm_gradient_norms(model, ids, mask, params=spec)
               for spec in ("head", "last", "transformer.h.1.*", "transformer.h.1.*,transformer.ln_f.*")}
    values = list(subsets.values())
    for i, a in enumerate(values):
        assert (a <= full * (1 + 1e-6)).all()
        for b in values[i + 1 :]:
            assert not np.allclose(a, b)
    # squared norms of a partition add up to the full squared norm
    parts = ["transformer.wte.weight", "transformer.wpe.*", "transformer.h.0.*", "transformer.h.1.*", "transformer.ln_f.*"]
    squares = sum(lm_gradient_norms(model, ids, mask, params=p) ** 2 for p in parts)
    np.testing.assert_allclose(np.sqrt(squares), full, rtol=1e-5)


def test_tied_head_gradient_sums_both_uses():
    """A tied unembedding's gradient = its gradient as the output layer + as the input embedding."""
    tied = fx.gpt2()
    untied = fx.gpt2(tie_word_embeddings=False)
    untied.load_state_dict(tied.state_dict(), strict=False)
    untied.lm_head.weight.data.copy_(tied.transformer.wte.weight.data)
    ids, mask = _pad([fx.tokenizer()(t)["input_ids"][:25] for t in fx.prose()[3:7]])
    np.testing.assert_allclose(  # the untied copy computes the same function
        lm_gradient_norms(untied, ids, mask, params="transformer.h.*"),
        lm_gradient_norms(tied, ids, mask, params="transformer.h.*"), rtol=1e-5)
    got = lm_gradient_norms(tied, ids, mask, params="head")
    head_only = lm_gradient_norms(untied, ids, mask, params="lm_head.*")
    for i in range(ids.shape[0]):
        r = ids[i, : int(mask[i].sum())].unsqueeze(0)
        loss = untied(input_ids=r, labels=r).loss
        g_out, g_in = torch.autograd.grad(loss, [untied.lm_head.weight, untied.transformer.wte.weight])
        assert got[i] == pytest.approx(torch.linalg.vector_norm(g_out + g_in).item(), rel=1e-5)
        assert got[i] != pytest.approx(head_only[i], rel=1e-3)
    # counted once: the tied tensor's square is in "all" once
    assert len(select_parameters(tied, "all")) == len(list(tied.parameters()))


def test_model_state_is_left_unchanged(digits_mlp):
    model, x, y = digits_mlp
    model.train()  # dropout on: the norms must still be deterministic (computed in eval mode)
    frozen = model[0].bias
    frozen.requires_grad_(False)
    before = [p.detach().clone() for p in model.parameters()]
    try:
        a = classifier_gradient_norms(model, x[:20], y[:20], method="loop")
        b = classifier_gradient_norms(model, x[:20], y[:20], method="vmap")
        np.testing.assert_allclose(a, b, rtol=1e-4)
        assert model.training and model[2].training
        assert not frozen.requires_grad and model[0].weight.requires_grad
        assert all(p.grad is None for p in model.parameters())
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    finally:
        frozen.requires_grad_(True)
        model.eval()


def test_auto_falls_back_to_the_loop_with_a_log_message(caplog):
    model = fx.gpt2()
    ids, mask = _pad([fx.tokenizer()(t)["input_ids"][:20] for t in fx.prose()[:3]])
    mask[1, :3] = 0  # left padding: HF's mask code cannot be vmapped
    with pytest.raises(RuntimeError):
        lm_gradient_norms(model, ids, mask, method="vmap")
    with caplog.at_level(logging.WARNING, logger="mia_fast.scoring.gradients"):
        auto = lm_gradient_norms(model, ids, mask, params="head", method="auto")
    loop = lm_gradient_norms(model, ids, mask, params="head", method="loop")
    np.testing.assert_allclose(auto, loop, rtol=1e-6)
    assert "vmap failed" in caplog.text and "one backward pass per sample" in caplog.text


def test_bad_inputs_raise():
    model = fx.gpt2()
    ids = torch.randint(1, 300, (2, 8))
    with pytest.raises(ValueError, match=r"params: 'decoder\.\*' matches no parameter.*transformer\.wte\.weight"):
        lm_gradient_norms(model, ids, params="decoder.*")
    with pytest.raises(TypeError, match="params"):
        lm_gradient_norms(model, ids, params=3)
    with pytest.raises(ValueError, match="params: expected at least one"):
        lm_gradient_norms(model, ids, params=" , ")
    with pytest.raises(ValueError, match="method"):
        lm_gradient_norms(model, ids, method="fast")
    with pytest.raises(ValueError, match="batch_size"):
        lm_gradient_norms(model, ids, batch_size=0)
    with pytest.raises(TypeError, match="input_ids: expected integer"):
        lm_gradient_norms(model, ids.float())
    with pytest.raises(ValueError, match=r"input_ids: expected shape \(N, T\)"):
        lm_gradient_norms(model, ids[0])
    with pytest.raises(ValueError, match="attention_mask: expected the shape"):
        lm_gradient_norms(model, ids, torch.ones(2, 7))
    with pytest.raises(ValueError, match="attention_mask: expected 0/1"):
        lm_gradient_norms(model, ids, torch.full((2, 8), 2))
    short = torch.ones(2, 8, dtype=torch.int64)
    short[1, 1:] = 0
    with pytest.raises(ValueError, match=r"without a scored token \(rows 1\)"):
        lm_gradient_norms(model, ids, short)
    with pytest.raises(ValueError, match=r"input_ids: expected token ids in \[0, 400\)"):
        lm_gradient_norms(model, ids + 1000)
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        lm_gradient_norms("gpt2", ids)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(TypeError, match="labels: expected integer"):
        classifier_gradient_norms(mlp, torch.randn(5, 4), torch.zeros(5))
    with pytest.raises(ValueError, match=r"labels: expected shape \(5,\)"):
        classifier_gradient_norms(mlp, torch.randn(5, 4), torch.zeros(4, dtype=torch.int64))
    flat = torch.nn.Linear(4, 3)
    with pytest.raises(ValueError, match="'last' needs parameters in a numbered module list"):
        select_parameters(flat, "last")
    assert len(lm_gradient_norms(model, ids[:0])) == 0


def test_attack_input_checks_and_table():
    attack = GradNormAttack()
    table = {"grad_norm": np.array([0.5, 2.0, 0.0]), "loss": np.array([1.0, 2.0, 3.0])}
    scores = attack.fit(table).score_samples(table)
    assert scores[0] > scores[1] and np.isfinite(scores).all() and scores[2] == scores.max()
    with pytest.raises(ValueError, match="X: expected gradient norms >= 0"):
        attack.score_samples([1.0, -0.5])
    with pytest.raises(ValueError, match="X: expected finite values"):
        attack.score_samples([1.0, np.nan])
    with pytest.raises(ValueError, match="expected a column 'grad_norm'"):
        attack.score_samples({"loss": np.array([1.0])})
    with pytest.raises(ValueError, match="X: expected a 1-D array"):
        attack.score_samples(np.ones((2, 2)))
    import mia_fast

    assert mia_fast.GradNormAttack is GradNormAttack and mia_fast.lm_gradient_norms is lm_gradient_norms


def test_score_corpus_gradient_column():
    model, tok = fx.gpt2(n_positions=48), fx.tokenizer()
    texts = [fx.prose()[0], " ".join(fx.prose()[1:4]), "", fx.prose()[5]]  # the second one is windowed
    table = score_corpus(model, tok, texts, gradient_params="head", batch_tokens=200).sequences
    assert "grad_norm" not in score_corpus(model, tok, texts[:1]).sequences.columns
    norms = table["grad_norm"].to_numpy()
    assert np.isnan(norms[2]) and np.isfinite(np.delete(norms, 2)).all()
    scorer = TextScorer(model, tok, ScoreOptions(gradient_params="head"))
    first = [t[:48] for t in scorer.tokenize([texts[i] for i in (0, 1, 3)])]
    assert len(scorer.tokenize([texts[1]])[0]) > 48
    ids, mask = _pad(first)
    np.testing.assert_allclose(norms[[0, 1, 3]], lm_gradient_norms(model, ids, mask, params="head"), rtol=1e-5)
    assert scorer.settings["gradient_parameters"] == model.transformer.wte.weight.numel()
    with pytest.raises(ValueError, match="params: 'nope' matches no parameter"):
        TextScorer(model, tok, ScoreOptions(gradient_params="nope"))
    with pytest.raises(ValueError, match="gradient_params: expected at least one"):
        ScoreOptions(gradient_params="")
    assert ScoreOptions(gradient_params=["head", " transformer.h.1.*"]).gradient_params == "head,transformer.h.1.*"


def test_cli_score_gradients(tmp_path, capsys):
    model_dir = tmp_path / "model"
    fx.gpt2(n_positions=48).save_pretrained(model_dir, safe_serialization=True)
    fx.tokenizer().save_pretrained(model_dir)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t, "member": i % 2}) for i, t in enumerate(fx.prose()[:6])) + "\n")
    out = tmp_path / "scores"
    common = ["score", "--model", str(model_dir), "--input", str(corpus), "--label-field", "member", "--no-progress"]
    status = main([*common, "--out", str(out), "--gradients", "--gradient-params", "last"])
    assert status == 0, capsys.readouterr().err
    df = read_scores(out)
    assert len(df) == 6 and np.isfinite(df["grad_norm"]).all() and (df["grad_norm"] > 0).all()
    assert read_manifest(out)["identity"]["params"]["gradient_params"] == "last"
    status = main([*common, "--out", str(tmp_path / "plain")])
    assert status == 0 and "grad_norm" not in read_scores(tmp_path / "plain").columns
    assert read_manifest(tmp_path / "plain")["identity"]["params"]["gradient_params"] is None
    status = main([*common, "--out", str(tmp_path / "x"), "--gradient-params", "head"])
    assert status == 2 and "given without --gradients" in capsys.readouterr().err
    status = main([*common, "--out", str(tmp_path / "y"), "--gradients", "--gradient-params", "decoder.*"])
    assert status == 2 and "matches no parameter" in capsys.readouterr().err
    scores = GradNormAttack().score_samples(df)
    assert scores.shape == (6,) and LossAttack().score_samples(df).shape == (6,)
    # the Ray engine's actor builds its TextScorer from the same options (called here without Ray)
    pytest.importorskip("ray")
    from mia_fast.scoring.distributed import _ScoreActor

    actor = _ScoreActor(str(model_dir), None, "fp32", "auto", "cpu", ScoreOptions(gradient_params="last"), False)
    batch = {"row": np.arange(6), "id": np.array([str(i) for i in range(6)]), "text": np.array(fx.prose()[:6])}
    np.testing.assert_allclose(actor(batch)["grad_norm"], df["grad_norm"], rtol=1e-5)
