"""Text variants: derived inputs scored in the texts' batches and reduced per text (lowercase, member context)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import lm_fixtures as fx
from mia_fast.attacks import ConReCaLLAttack, LowercaseAttack, ReCaLLAttack
from mia_fast.cli import main
from mia_fast.metrics import roc_auc
from mia_fast.scoring.run import ResumeMismatchError, ScoreJob, read_manifest, read_scores, score_to_directory
from mia_fast.scoring.scorer import ScoreOptions, TextScorer, score_corpus
from mia_fast.scoring.variants import Lowercase, MemberContext, VariantSpec
from mia_fast.audit.shadow_lm import save_causal_lm

N = 20


def _split():
    paras = fx.prose()
    members, non_members = list(paras[:N]), list(paras[N : 2 * N])
    member_context = "\n\n".join(paras[2 * N : 2 * N + 3]) + "\n"  # trained on, not evaluated
    context = "\n\n".join(paras[100:103]) + "\n"  # never trained on
    return members, non_members, member_context, context


@pytest.fixture(scope="module")
def trained():
    """A 2-layer GPT-2 trained on the members and on the member-context paragraphs."""
    members, non_members, member_context, context = _split()
    tok = fx.tokenizer()
    model = fx.train_tiny_gpt2(members + list(fx.prose()[2 * N : 2 * N + 3]), tok)
    texts = members + non_members
    labels = np.array([1] * N + [0] * N)
    return model, tok, texts, labels, member_context, context


@pytest.fixture(scope="module")
def scored(trained):
    model, tok, texts, labels, member_context, context = trained
    return score_corpus(model, tok, texts, labels=labels, first_token="bos", context_text=context,
                        context_tokens=40, variants=(Lowercase(), MemberContext(member_context, tokens=40)))


def test_lowercase_column_is_the_loss_of_the_lowercased_text(trained, scored):
    model, tok, texts, *_ = trained
    direct = score_corpus(model, tok, [t.lower() for t in texts], first_token="bos")
    np.testing.assert_allclose(scored.sequences.loss_lowercase, direct.sequences.loss, rtol=1e-5)
    plain = score_corpus(model, tok, texts, first_token="bos")
    # the variants change nothing of the texts' own columns
    for col in ("loss", "zlib", "min_k_pp_0.2", "n_tokens"):
        np.testing.assert_allclose(scored.sequences[col], plain.sequences[col], rtol=1e-5)


def test_member_context_is_scored_like_the_non_member_one(trained, scored):
    model, tok, texts, labels, member_context, _ = trained
    as_context = score_corpus(model, tok, texts, first_token="bos", context_text=member_context, context_tokens=40)
    np.testing.assert_allclose(scored.sequences.loss_member_context, as_context.sequences.loss_context, rtol=1e-5)


def test_attacks_point_the_documented_way(scored):
    table, labels = scored.sequences, scored.sequences.label.to_numpy()
    auc = {name: roc_auc(labels, attack.fit().score_samples(table))
           for name, attack in [("lowercase", LowercaseAttack()), ("con_recall", ConReCaLLAttack()),
                                ("recall", ReCaLLAttack())]}
    assert auc["lowercase"] > 0.5 and auc["con_recall"] > 0.5, auc
    np.testing.assert_allclose(ConReCaLLAttack(gamma=0).score_samples(table), table.recall)
    member = (table.loss_context - table.loss_member_context) / table.loss
    np.testing.assert_allclose(ConReCaLLAttack().score_samples(table), member)
    np.testing.assert_allclose(LowercaseAttack().score_samples(table), -table.loss / table.loss_lowercase)


def test_variants_share_the_texts_batches(trained, monkeypatch):
    """One bucketed loop over texts and variants: a batch mixes them, nothing is scored twice."""
    model, tok, texts, *_ = trained
    scorer = TextScorer(model, tok, ScoreOptions(first_token="bos", batch_tokens=4096, variants=(Lowercase(),)))
    rows = []
    original = scorer.lm.__call__

    def spy(ids, am, targets, **kw):
        rows.append(ids.shape[0])
        return original(ids, am, targets, **kw)

    monkeypatch.setattr(scorer, "lm", spy)
    scorer.score(texts[:8])
    lengths = [len(t) for t in scorer.tokenize(texts[:8]) + scorer.tokenize([t.lower() for t in texts[:8]])]
    assert sum(rows) == sum(max(1, -(-(n - 128) // 64) + 1) if n > 128 else 1 for n in lengths)
    assert max(rows) > 8  # texts and lowercased texts in one batch


def test_manifest_records_the_variants_and_resume_refuses_others(trained, tmp_path):
    model, tok, texts, labels, member_context, context = trained
    model_dir = tmp_path / "model"
    save_causal_lm(model, tok, model_dir)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t, "label": int(y)}) + "\n" for t, y in zip(texts, labels)))
    options = ScoreOptions(first_token="bos", variants=(Lowercase(), MemberContext(member_context, 40)),
                           context_text=context, context_tokens=40)
    job = ScoreJob(model=str(model_dir), input=str(corpus), label_field="label", shard_size=6, options=options)
    out = tmp_path / "scores"
    calls = []

    def interrupt(records, tokens):
        calls.append(records)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_to_directory(job, out, progress=interrupt)
    other = ScoreJob(model=str(model_dir), input=str(corpus), label_field="label", shard_size=6,
                     options=ScoreOptions(first_token="bos", variants=(Lowercase(),), context_text=context,
                                          context_tokens=40))
    with pytest.raises(ResumeMismatchError, match="variants"):
        score_to_directory(other, out)
    score_to_directory(job, out)
    manifest = read_manifest(out)
    assert manifest["resumed_from_shard"] == 2
    params = manifest["identity"]["params"]
    assert params["variants"][0] == {"name": "lowercase"}
    assert params["variants"][1]["name"] == "member_context" and len(params["variants"][1]["sha256"]) == 64
    assert member_context not in json.dumps(manifest)  # texts by their hash only
    resumed = read_scores(out)
    fresh = score_corpus(model, tok, texts, first_token="bos", context_text=context, context_tokens=40,
                         variants=(Lowercase(), MemberContext(member_context, 40)))
    assert list(resumed.row) == list(range(2 * N))
    for col in ("loss", "loss_lowercase", "loss_member_context", "loss_context"):
        np.testing.assert_allclose(resumed[col], fresh.sequences[col], rtol=1e-5, err_msg=col)


def test_options_without_variants_keep_the_manifest_of_earlier_runs():
    assert "variants" not in ScoreOptions().as_dict()
    assert ScoreOptions(variants=[Lowercase()]).variants == (Lowercase(),)


def test_bad_variants_are_refused(trained, tmp_path, capsys):
    with pytest.raises(TypeError, match=r"variants: expected a sequence of VariantSpec"):
        ScoreOptions(variants="lowercase")
    with pytest.raises(TypeError, match=r"variants: expected VariantSpec instances"):
        ScoreOptions(variants=("lowercase",))
    with pytest.raises(ValueError, match=r"'lowercase' is given twice"):
        ScoreOptions(variants=(Lowercase(), Lowercase()))
    with pytest.raises(ValueError, match=r"member context: expected some text"):
        MemberContext("  \n")
    with pytest.raises(ValueError, match=r"member context tokens: expected a positive"):
        MemberContext("text", tokens=0)
    assert isinstance(Lowercase(), VariantSpec)
    model, tok, *_ = trained
    with pytest.raises(ValueError, match=r"member context tokens: the context has \d+ tokens.*--member-context-tokens"):
        TextScorer(model, tok, ScoreOptions(variants=(MemberContext(" ".join(fx.prose()[:30])),)))
    corpus = tmp_path / "c.txt"
    corpus.write_text("one line\n")
    ctx = tmp_path / "ctx.txt"
    ctx.write_text("a context\n")
    args = ["score", "--model", str(tmp_path), "--input", str(corpus), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(args + ["--member-context-file", str(ctx)]) == 2
    assert "give --context-file too" in capsys.readouterr().err
    assert main(args + ["--context-file", str(ctx), "--member-context-file", str(tmp_path / "missing.txt")]) == 2
    assert "--member-context-file: expected a text file" in capsys.readouterr().err
    assert main(args + ["--member-context-tokens", "5"]) == 2
    assert "--member-context-tokens: given without --member-context-file" in capsys.readouterr().err


def test_cli_scores_variants_and_the_report_runs_their_attacks(trained, tmp_path, capsys):
    model, tok, texts, labels, member_context, context = trained
    model_dir = tmp_path / "model"
    save_causal_lm(model, tok, model_dir)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t, "label": int(y)}) + "\n" for t, y in zip(texts, labels)))
    (tmp_path / "m.txt").write_text(member_context)
    (tmp_path / "n.txt").write_text(context)
    out = tmp_path / "scores"
    assert main(["score", "--model", str(model_dir), "--input", str(corpus), "--label-field", "label",
                 "--out", str(out), "--first-token", "bos", "--no-progress", "--lowercase",
                 "--context-file", str(tmp_path / "n.txt"), "--member-context-file", str(tmp_path / "m.txt"),
                 "--context-tokens", "40", "--member-context-tokens", "40"]) == 0, \
        capsys.readouterr().err
    table = read_scores(out)
    assert {"loss_lowercase", "loss_member_context", "loss_context", "recall"} <= set(table.columns)
    report = tmp_path / "report"
    assert main(["attack", "--target", str(out), "--out", str(report), "--no-shift-check"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    names = json.dumps(metrics)
    assert '"lowercase"' in names and '"con_recall"' in names


def test_generated_variants_in_a_score_directory_equal_the_standalone_functions(trained, tmp_path):
    """Neighbours, PAC copies, DC-PDD and SaMIA scored with the texts: the same values as the
    family's own functions, and shards of 3 give what one call gives (seeded per document)."""
    import mlm_fixtures as mf
    from mia_fast.scoring.augment import PAC, flatten_variants, pac_scores, pac_variants, polarized_distance
    from mia_fast.scoring.frequency import DCPDD, dc_pdd_column, load_token_frequencies
    from mia_fast.scoring.neighbours import Neighbours, load_masked_lm, neighbour_loss, neighbour_texts
    from mia_fast.scoring.samia import SaMIA, samia_columns

    model, tok, texts, labels, *_ = trained
    texts, labels = texts[:4] + texts[N : N + 4], np.r_[labels[:4], labels[N : N + 4]]
    mlm_dir = mf.save_mlm(tmp_path / "mlm")
    freq = tmp_path / "freq.txt"
    freq.write_text("\n".join(fx.prose()[60:90]) + "\n")
    specs = (Neighbours(masked_lm=str(mlm_dir), n_neighbours=3), PAC(n_augmentations=2), DCPDD(str(freq)),
             SaMIA(n_samples=2, max_new_tokens=8))
    one = score_corpus(model, tok, texts, labels=labels, first_token="bos", variants=specs, per_token=True)
    seq = one.sequences
    # neighbours
    mlm, mlm_tok = load_masked_lm(mlm_dir)
    neighbours = neighbour_texts(texts, mlm, mlm_tok, specs[0])
    flat, parent = flatten_variants(neighbours)
    direct = score_corpus(model, tok, flat, first_token="bos").sequences.loss.to_numpy()
    np.testing.assert_allclose(seq.loss_neighbours, neighbour_loss(direct, parent, len(texts)), rtol=1e-5)
    assert list(seq.n_neighbours) == [len(n) for n in neighbours]
    # PAC
    flat, parent = flatten_variants(pac_variants(texts, specs[1]))
    copies = score_corpus(model, tok, flat, first_token="bos", per_token=True).tokens
    pd_copies = polarized_distance(torch.tensor(copies.logprob.to_numpy()), torch.tensor(copies.id.astype(int).to_numpy()),
                                   len(flat), 0.05, 0.3)
    tokens = one.tokens
    pd_texts = polarized_distance(torch.tensor(tokens.logprob.to_numpy()), torch.tensor(tokens.id.astype(int).to_numpy()),
                                  len(texts), 0.05, 0.3)
    np.testing.assert_allclose(seq.pac, pac_scores(pd_texts, pd_copies, parent), rtol=1e-4, atol=1e-6)
    # DC-PDD
    relative = load_token_frequencies(freq, tok).relative()
    expected = dc_pdd_column(torch.tensor(tokens.logprob.to_numpy()), torch.tensor(tokens.token.to_numpy(), dtype=torch.int64),
                             torch.tensor(tokens.id.astype(int).to_numpy()), len(texts), relative, 0.01)
    np.testing.assert_allclose(seq.dc_pdd, expected, rtol=1e-6)
    # SaMIA
    sam = samia_columns(model, tok, texts, SaMIA(n_samples=2, max_new_tokens=8, first_token="bos"))
    np.testing.assert_allclose(seq.samia, sam["samia"], equal_nan=True)
    # a score directory in shards of 3 texts: the same values
    model_dir = tmp_path / "model"
    save_causal_lm(model, tok, model_dir)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    job = ScoreJob(model=str(model_dir), input=str(corpus), shard_size=3,
                   options=ScoreOptions(first_token="bos", variants=specs))
    score_to_directory(job, tmp_path / "scores")
    sharded = read_scores(tmp_path / "scores")
    for col in ("loss_neighbours", "pac", "dc_pdd", "samia", "samia_zlib"):
        np.testing.assert_allclose(sharded[col], seq[col], rtol=1e-4, atol=1e-6, equal_nan=True, err_msg=col)
    params = read_manifest(tmp_path / "scores")["identity"]["params"]["variants"]
    assert [v["name"] for v in params] == ["neighbours", "pac", "dc_pdd", "samia"]
    assert len(params[0]["masked_lm"]["sha256"]) == 64 and len(params[2]["corpus"]["sha256"]) == 64


def test_a_killed_run_with_variants_resumes_to_what_one_run_gives(tmp_path):
    """SIGKILL mid-run, then the same command: every text once, its variants' columns as in an uninterrupted run."""
    model_dir = fx.save_gpt2(tmp_path / "model")
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(fx.prose()[:60]) + "\n")
    cmd = [sys.executable, "-m", "mia_fast", "score", "--model", str(model_dir), "--input", str(corpus),
           "--shard-size", "2", "--batch-tokens", "64", "--no-progress", "--lowercase", "--pac", "2"]
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    third = out / "sequences" / "part-000002.parquet"
    deadline = time.time() + 120
    while not third.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "sequences").glob("part-*.parquet")))
    assert 3 <= done < 30, "the run was not killed mid-way"
    rerun = subprocess.run(cmd + ["--out", str(out)], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert main(cmd[3:] + ["--out", str(tmp_path / "whole")]) == 0
    resumed, whole = read_scores(out), read_scores(tmp_path / "whole")
    assert sorted(resumed.row) == list(range(60)) and resumed.row.is_unique
    assert read_manifest(out)["resumed_from_shard"] == done
    for col in ("loss", "loss_lowercase", "pac"):
        np.testing.assert_allclose(resumed[col], whole[col], rtol=1e-5, atol=1e-7, err_msg=col)
