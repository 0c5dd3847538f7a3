"""score --compare-dtype: a corpus sample scored with two dtypes, differences and AUC changes."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lm_fixtures as fx
from mia_fast.cli import main
from mia_fast.audit.dtype_fidelity import compare_dtypes, sample_records
from mia_fast.scoring.lm import load_model
from mia_fast.scoring.run import ScoreJob
from mia_fast.scoring.scorer import ScoreOptions, score_corpus

OPTIONS = ScoreOptions(max_length=64)


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    """The shared trained tiny GPT-2 saved as a checkpoint, and a labelled JSONL corpus with one bad line."""
    model, tok, texts, labels = fx.trained_target()
    root = tmp_path_factory.mktemp("dtype")
    model.save_pretrained(root / "model", safe_serialization=True)
    tok.save_pretrained(root / "model")
    corpus = root / "corpus.jsonl"
    lines = [json.dumps({"id": f"d{i}", "text": t, "label": int(y)}) for i, (t, y) in enumerate(zip(texts, labels))]
    lines.insert(5, json.dumps({"id": "empty", "text": "  ", "label": 0}))
    corpus.write_text("\n".join(lines) + "\n")
    return root, texts, labels


def _job(root, **kw):
    return ScoreJob(model=str(root / "model"), input=str(root / "corpus.jsonl"), id_field="id", options=OPTIONS, **kw)


def test_sample_is_uniform_seeded_in_input_order_and_skips_bad_records(audit):
    root, texts, _ = audit
    job = _job(root)
    a = sample_records(job, 10, seed=1)
    assert [r.index for r in a] == sorted(r.index for r in a) and len(a) == 10
    assert [r.id for r in a] == [r.id for r in sample_records(job, 10, seed=1)]
    assert [r.id for r in a] != [r.id for r in sample_records(job, 10, seed=2)]
    every = sample_records(job, 1000)
    assert len(every) == len(texts) and "empty" not in {r.id for r in every}
    # uniform: over many seeds every record is drawn about equally often (10 of 48 each time)
    counts = np.zeros(len(texts) + 1)
    for seed in range(300):
        for r in sample_records(job, 10, seed=seed):
            counts[r.index] += 1
    drawn = np.delete(counts, 5)  # the rejected line is never drawn
    assert counts[5] == 0 and abs(drawn.mean() - 300 * 10 / len(texts)) < 1e-9
    assert drawn.min() > 30 and drawn.max() < 100  # expected 62.5 each


def test_comparison_equals_scoring_the_sample_both_ways(audit):
    root, texts, labels = audit
    job = _job(root, label_field="label")
    report = compare_dtypes(job, "bf16", sample=20, seed=3)
    assert report.dtypes == ["fp32", "bf16"] and report.n_documents == 20
    picked = sample_records(job, 20, seed=3)
    sample = [r.text for r in picked]
    losses = {}
    for d in ("fp32", "bf16"):
        model, tok = load_model(root / "model", dtype=d)
        losses[d] = score_corpus(model, tok, sample, options=OPTIONS).sequences.loss.to_numpy()
    diff = np.abs(losses["bf16"] - losses["fp32"])
    assert report.differences["loss"]["median"] == pytest.approx(np.median(diff), rel=1e-6, abs=1e-9)
    assert report.differences["loss"]["max"] == pytest.approx(diff.max(), rel=1e-6, abs=1e-9)
    assert 0 < report.differences["loss"]["median"] < 0.1 and report.differences["loss"]["corr"] > 0.9
    assert report.n_tokens > 0 and set(report.tokens_per_s) == {"fp32", "bf16"}
    # AUC of each attack under both, from the sampled labels
    from mia_fast.metrics import roc_auc

    y = np.array([r.label for r in picked])
    assert report.auc["loss"]["fp32"] == pytest.approx(roc_auc(y, -losses["fp32"]))
    assert report.auc["loss"]["bf16"] == pytest.approx(roc_auc(y, -losses["bf16"]))
    for v in report.auc.values():
        assert v["change"] == pytest.approx(v["bf16"] - v["fp32"])
        assert -1 <= v["change_low"] <= v["change"] <= v["change_high"] <= 1
    assert {"loss", "zlib", "min_k_pp_0.2"} <= set(report.auc)
    text = report.to_markdown()
    assert "| loss |" in text and "Largest AUC change" in text


def test_auc_change_interval():
    from mia_fast.audit.dtype_fidelity import _auc_change
    from mia_fast.metrics import roc_auc

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    a = y + rng.normal(size=100)
    same = _auc_change(y, a, a.copy(), 200, 0)
    assert same["change"] == same["change_low"] == same["change_high"] == 0
    worse = _auc_change(y, a, a + rng.normal(scale=3, size=100), 400, 0)
    assert worse["a"] == roc_auc(y, a) and worse["change_low"] < worse["change"] < worse["change_high"] < 0
    flipped = _auc_change(y, a, -a, 200, 0)
    assert flipped["change"] == pytest.approx(1 - 2 * roc_auc(y, a))


def test_without_labels_only_the_differences(audit):
    root, *_ = audit
    report = compare_dtypes(_job(root), "bf16", sample=6)
    assert report.auc is None and "no AUC compared" in report.to_markdown() and "loss" in report.differences


def test_bad_arguments_are_named(audit):
    root, *_ = audit
    with pytest.raises(ValueError, match=r"compare_dtype: expected a dtype other than the job's own \('fp32'\)"):
        compare_dtypes(_job(root), "fp32")
    with pytest.raises(ValueError, match=r"dtype: expected one of .*got 'int4'"):
        compare_dtypes(_job(root), "int4")
    with pytest.raises(ValueError, match=r"sample: expected an integer >= 2, got 1"):
        compare_dtypes(_job(root), "bf16", sample=1)


def test_the_score_command_writes_the_report_and_no_scores(audit, tmp_path, capsys):
    root, *_ = audit
    out = tmp_path / "cmp"
    argv = ["score", "--model", str(root / "model"), "--input", str(root / "corpus.jsonl"), "--out", str(out),
            "--id-field", "id", "--label-field", "label", "--max-length", "64", "--compare-dtype", "bf16",
            "--compare-sample", "12"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Scoring with bf16 instead of fp32: 12 sampled documents" in printed and "95% interval" in printed
    saved = json.loads((out / "dtype-comparison.json").read_text())
    assert saved["dtypes"] == ["fp32", "bf16"] and saved["n_documents"] == 12 and "loss" in saved["auc"]
    assert (out / "dtype-comparison.md").read_text() in printed
    assert not (out / "sequences").exists() and not (out / "manifest.json").exists()
    # the directory can still become a score directory afterwards
    assert main([*argv[:13], "--on-bad-row", "skip"]) == 0 and (out / "sequences").is_dir()
    assert main([*argv[:-4], "--engine", "ray", "--compare-dtype", "bf16"]) == 2
    assert "--compare-dtype: runs on this machine" in capsys.readouterr().err
