"""`mia-fast score`: score directories, manifest, resume after a crash, bad input, the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import lm_fixtures as fx
from mia_fast.cli import main
from mia_fast.scoring.corpus import BadRecordError
from mia_fast.scoring.run import ResumeMismatchError, ScoreJob, read_manifest, read_scores, score_to_directory
from mia_fast.scoring.scorer import ScoreOptions, score_corpus

N_RECORDS = 23


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return fx.save_gpt2(tmp_path_factory.mktemp("model"))


def _texts(n=N_RECORDS):
    return fx.mixed_length_texts(n)


@pytest.fixture()
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"doc": f"d{i}", "text": t, "member": i % 2}) for i, t in enumerate(_texts())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _job(model_dir, corpus, **kw) -> ScoreJob:
    options = kw.pop("options", ScoreOptions(per_token=True, batch_tokens=400))
    return ScoreJob(model=str(model_dir), input=str(corpus), id_field="doc", label_field="member",
                    shard_size=kw.pop("shard_size", 5), options=options, **kw)


def test_directory_holds_what_score_corpus_computes(model_dir, corpus, tmp_path):
    out = tmp_path / "scores"
    summary = score_to_directory(_job(model_dir, corpus), out)
    df = read_scores(out)
    assert list(df.row) == list(range(N_RECORDS)) and list(df.id) == [f"d{i}" for i in range(N_RECORDS)]
    assert list(df.label) == [i % 2 for i in range(N_RECORDS)]
    from mia_fast.scoring.lm import load_model

    model, tok = load_model(model_dir)
    direct = score_corpus(model, tok, _texts(), per_token=True)
    cols = [c for c in direct.sequences.columns if c != "id"]
    np.testing.assert_allclose(df[cols].to_numpy(float), direct.sequences[cols].to_numpy(float), rtol=1e-5, atol=1e-6)
    tokens = read_scores(out, "tokens")
    assert len(tokens) == df.n_tokens.sum() == summary["tokens"]
    np.testing.assert_allclose(tokens.logprob, direct.tokens.logprob, rtol=1e-5, atol=1e-6)
    assert summary["rows"] == N_RECORDS and summary["rejects"] == 0 and summary["head"] == "fused"
    # files, schema, manifest
    assert sorted(p.name for p in (out / "sequences").iterdir()) == [f"part-{i:06d}.parquet" for i in range(5)]
    schema = pq.read_schema(out / "sequences" / "part-000000.parquet")
    assert str(schema.field("row").type) == "int64" and str(schema.field("label").type) == "int8"
    assert str(schema.field("loss").type) == "double" and str(schema.field("id").type) == "string"
    assert schema.metadata[b"mia_fast.shard"] == b"0"
    manifest = read_manifest(out)
    assert manifest["status"] == "complete" and df.attrs["manifest"] == manifest
    ident = manifest["identity"]
    assert len(ident["model"]["sha256"]) == 64 and len(ident["input"]["sha256"]) == 64
    assert ident["params"]["ks"] == [0.05, 0.1, 0.2, 0.3, 0.5] and ident["params"]["dtype"] == "fp32"
    # auto follows tokenizer(text): GPT-2's tokenizer puts no BOS first, so neither does the scorer
    assert manifest["settings"]["first_token"] == "skip" and manifest["settings"]["max_length"] == 48
    assert {"torch", "transformers", "mia_fast"} <= set(manifest["versions"])
    assert not list(out.rglob(".*.tmp-*"))


def test_interrupted_run_resumes_without_loss_or_duplicates(model_dir, corpus, tmp_path):
    out = tmp_path / "scores"
    calls = []

    def interrupt_after_two_shards(records, tokens):
        calls.append(records)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_to_directory(_job(model_dir, corpus), out, progress=interrupt_after_two_shards)
    assert read_manifest(out)["status"] == "running" and len(list((out / "sequences").iterdir())) == 2
    summary = score_to_directory(_job(model_dir, corpus), out)
    assert read_manifest(out)["resumed_from_shard"] == 2
    df = read_scores(out)
    assert list(df.row) == list(range(N_RECORDS))
    full = read_scores(_complete_run(model_dir, corpus, tmp_path / "full"))
    np.testing.assert_allclose(df.loss, full.loss, rtol=1e-6)
    assert summary["rows"] == N_RECORDS
    tokens = read_scores(out, "tokens")
    assert len(tokens) == df.n_tokens.sum() and tokens.groupby("row").position.is_monotonic_increasing.all()


def _complete_run(model_dir, corpus, out):
    score_to_directory(_job(model_dir, corpus), out)
    return out


def test_killed_process_resumes_exactly(model_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(fx.prose()[:60]) + "\n")
    out = tmp_path / "scores"
    cmd = [sys.executable, "-m", "mia_fast", "score", "--model", str(model_dir), "--input", str(corpus),
           "--out", str(out), "--shard-size", "2", "--batch-tokens", "64", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    third = out / "sequences" / "part-000002.parquet"
    deadline = time.time() + 120
    while not third.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "sequences").glob("part-*.parquet")))
    assert 3 <= done < 30, "the run was not killed mid-way"
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    df = read_scores(out)
    assert sorted(df.row) == list(range(60)) and df.row.is_unique
    assert read_manifest(out)["resumed_from_shard"] == done


def test_changed_job_is_refused(model_dir, corpus, tmp_path):
    out = _complete_run(model_dir, corpus, tmp_path / "scores")
    before = sorted(p.stat().st_mtime_ns for p in (out / "sequences").iterdir())
    with pytest.raises(ResumeMismatchError, match=r"params\.ks"):
        score_to_directory(_job(model_dir, corpus, options=ScoreOptions(per_token=True, ks=(0.1,))), out)
    corpus.write_text(corpus.read_text() + json.dumps({"doc": "new", "text": "more text", "member": 1}) + "\n")
    with pytest.raises(ResumeMismatchError, match=r"input\.sha256"):
        score_to_directory(_job(model_dir, corpus), out)
    assert sorted(p.stat().st_mtime_ns for p in (out / "sequences").iterdir()) == before
    # a smaller batch budget changes no result: it may resume (e.g. after running out of memory)
    score_to_directory(_job(model_dir, tmp_path / "corpus.jsonl", options=ScoreOptions(per_token=True, batch_tokens=50)),
                       tmp_path / "other")


def test_bad_row_stops_with_file_and_line_then_skip_resumes(model_dir, tmp_path):
    corpus = tmp_path / "bad.jsonl"
    lines = [json.dumps({"text": t}) for t in fx.prose()[:12]]
    lines[7] = '{"text": "unterminated'
    corpus.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores"
    job = ScoreJob(model=str(model_dir), input=str(corpus), shard_size=3)
    with pytest.raises(BadRecordError, match=r"bad\.jsonl:8"):
        score_to_directory(job, out)
    assert len(list((out / "sequences").glob("part-*"))) == 2  # records 0-5 are kept
    summary = score_to_directory(job, out, on_bad_row="skip")
    assert summary["rows"] == 11 and summary["rejects"] == 1 and summary["records"] == 12
    rejects = read_scores(out, "rejects")
    assert list(rejects.row) == [7] and "bad.jsonl:8" in rejects.source[0] and "JSON" in rejects.reason[0]
    assert list(read_scores(out).row) == [r for r in range(12) if r != 7]


def test_a_run_stopped_before_its_first_shard_does_not_block_the_corrected_rerun(model_dir, tmp_path):
    corpus = tmp_path / "first.jsonl"
    lines = [json.dumps({"text": t}) for t in fx.prose()[:6]]
    corpus.write_text("\n".join(lines[:1] + ['{"text": "unterminated'] + lines[2:]) + "\n")
    out = tmp_path / "scores"
    with pytest.raises(BadRecordError, match=r"first\.jsonl:2"):
        score_to_directory(ScoreJob(model=str(model_dir), input=str(corpus), shard_size=3), out)
    assert read_manifest(out)["status"] == "running" and not list((out / "sequences").iterdir())
    corpus.write_text("\n".join(lines) + "\n")  # another input: its sha256 differs
    summary = score_to_directory(ScoreJob(model=str(model_dir), input=str(corpus), shard_size=3), out)
    assert summary["rows"] == 6 and read_manifest(out)["status"] == "complete"


def test_progress_of_a_resumed_run_starts_at_the_done_records(model_dir, corpus, tmp_path, capsys):
    argv = ["score", "--model", str(model_dir), "--input", str(corpus), "--out", str(tmp_path / "p"),
            "--shard-size", "5"]
    assert main(argv + ["--no-progress"]) == 0
    capsys.readouterr()
    assert main(argv + ["--progress"]) == 0  # every shard is done: nothing left to score
    assert f"{N_RECORDS}/{N_RECORDS}" in capsys.readouterr().err


def test_cli_score_and_errors(model_dir, corpus, tmp_path, capsys):
    out = tmp_path / "cli"
    status = main(["score", "--model", str(model_dir), "--input", str(corpus), "--out", str(out), "--id-field", "doc",
                   "--label-field", "member", "--ks", "0.1,0.2", "--no-progress"])
    captured = capsys.readouterr()
    assert status == 0 and f"scored {N_RECORDS} rows" in captured.out
    assert {"min_k_0.1", "min_k_pp_0.2", "label"} <= set(read_scores(out).columns)
    status = main(["score", "--model", str(tmp_path / "nope"), "--input", str(corpus), "--out", str(tmp_path / "x")])
    assert status == 2 and "nope" in capsys.readouterr().err
    status = main(["score", "--model", str(model_dir), "--input", str(corpus), "--out", str(out), "--id-field", "doc",
                   "--label-field", "member", "--no-progress"])
    assert status == 2 and "different job" in capsys.readouterr().err


def test_read_scores_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a score directory"):
        read_scores(tmp_path)
    os.makedirs(tmp_path / "sequences")
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="table"):
        read_scores(tmp_path, "nope")


def test_sigma_floor_from_the_command_line(model_dir, corpus, tmp_path):
    out = tmp_path / "floor"
    assert main(["score", "--model", str(model_dir), "--input", str(corpus), "--out", str(out),
                 "--sigma-floor", "50", "--no-progress"]) == 0
    assert read_manifest(out)["identity"]["params"]["sigma_floor"] == 50
    df = read_scores(out)
    assert (df.n_sigma_clipped == df.n_tokens).all()  # every sigma of a tiny model is below 50
