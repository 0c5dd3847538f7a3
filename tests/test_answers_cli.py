"""`mia-fast decide` and `mia-fast dataset-inference` on score directories: files, keys, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import lm_fixtures as fx
from mia_fast.cli import main


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> dict[str, Path]:
    """A labelled corpus, a suspect and a validation corpus (disjoint texts, default ids), scored by one model."""
    base = tmp_path_factory.mktemp("answers")
    model = fx.save_gpt2(base / "model")
    texts = fx.prose()
    corpora = {
        "labelled": [{"text": t, "member": i % 2} for i, t in enumerate(texts[:40])],
        "suspect": [{"text": t} for t in texts[40:80]],
        "validation": [{"text": t} for t in texts[80:120]],
    }
    out = {"model": model}
    for name, rows in corpora.items():
        path = base / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        extra = ["--label-field", "member"] if name == "labelled" else []
        assert main(["score", "--model", str(model), "--input", str(path), "--out", str(base / name),
                     "--no-progress", *extra]) == 0
        out[name] = base / name
    return out


def test_decide_writes_p_values_q_values_and_verdicts(scored, tmp_path, capsys):
    out = tmp_path / "decisions"
    assert main(["decide", "--target", str(scored["labelled"]), "--calibration-label", "0", "--fdr", "0.1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "of 20 documents called members at FDR 0.1" in printed.out
    assert "mia-fast decide: warning: with 20 calibration documents and 20 documents tested, Benjamini-Hochberg at " \
        "fdr 0.1 can only call groups of at least 10 documents" in printed.err
    table = pd.read_parquet(out / "decisions.parquet")
    assert list(table.columns) == ["id", "score", "p_value", "q_value", "member"] and len(table) == 20
    assert ((table.p_value >= 1 / 21) & (table.p_value <= 1) & (table.q_value >= table.p_value)).all()
    saved = json.loads((out / "decision.json").read_text())
    assert saved["attack"] == "loss" and saved["n_calibration"] == 20 and saved["fdr"] == 0.1
    assert saved["p_value_floor"] == pytest.approx(1 / 21)


def test_decide_refuses_an_unknown_attack_and_a_missing_level(scored, tmp_path, capsys):
    assert main(["decide", "--target", str(scored["labelled"]), "--attack", "nope", "--alpha", "0.05",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "loss" in err
    with pytest.raises(SystemExit):  # one of --alpha / --fdr is required
        main(["decide", "--target", str(scored["labelled"]), "--out", str(tmp_path / "o")])


def test_dataset_inference_writes_the_answer_and_its_control(scored, tmp_path, capsys):
    out = tmp_path / "di"
    assert main(["dataset-inference", "--suspect", str(scored["suspect"]), "--validation", str(scored["validation"]),
                 "--n-splits", "3", "--permutations", "199", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "p = " in printed and "control (validation vs validation)" in printed
    result = json.loads((out / "result.json").read_text())
    for key in ("p_value", "test", "alpha", "member", "n_suspect", "n_validation", "features", "control_p_value"):
        assert key in result, key
    assert result["n_suspect"] == result["n_validation"] == 40 and result["test"] == "permutation"
    assert (out / "report.md").is_file() and (out / "p_value_vs_documents.png").stat().st_size > 5_000


def test_dataset_inference_refuses_overlapping_sets_and_other_models(scored, tmp_path, capsys):
    assert main(["dataset-inference", "--suspect", str(scored["suspect"]), "--validation", str(scored["suspect"]),
                 "--out", str(tmp_path / "o")]) == 2
    assert "expected disjoint sets of documents, got 40 texts in both" in capsys.readouterr().err
    other = fx.save_gpt2(tmp_path / "other_model", n_positions=32)
    corpus = tmp_path / "v.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in fx.prose()[80:120]))
    assert main(["score", "--model", str(other), "--input", str(corpus), "--out", str(tmp_path / "v"),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["dataset-inference", "--suspect", str(scored["suspect"]), "--validation", str(tmp_path / "v"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "--validation: expected scores of the same model as the target" in capsys.readouterr().err
