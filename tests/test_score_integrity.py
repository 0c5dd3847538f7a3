"""A score directory belongs to one job: the lock, run tags, readers that refuse what they cannot trust,
target/reference manifests compared, and runs that score nothing fail."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lm_fixtures as fx
from mia_fast.cli import main
from mia_fast.scoring.lock import DirectoryBusyError, DirectoryLock
from mia_fast.scoring.run import (
    CorpusMismatchError,
    EmptyRunError,
    IncompleteScoresError,
    ResumeMismatchError,
    ScoreDirectoryError,
    ScoreJob,
    check_same_corpus,
    read_manifest,
    read_scores,
    score_to_directory,
    text_hash,
)
from mia_fast.scoring.scorer import ScoreOptions


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return fx.save_gpt2(tmp_path_factory.mktemp("model"))


def _jsonl(path: Path, texts) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def _job(model_dir, corpus, **kw) -> ScoreJob:
    return ScoreJob(model=str(model_dir), input=str(corpus), shard_size=kw.pop("shard_size", 4), **kw)


@pytest.fixture()
def two_corpora(tmp_path):
    texts = fx.prose()
    return _jsonl(tmp_path / "a.jsonl", texts[:12]), _jsonl(tmp_path / "b.jsonl", texts[12:24])


def _score_cmd(model_dir, corpus, out, *extra):
    return [sys.executable, "-m", "mia_fast", "score", "--model", str(model_dir), "--input", str(corpus),
            "--out", str(out), "--no-progress", *extra]


def test_a_second_run_into_a_directory_being_written_is_refused(model_dir, tmp_path):
    """Two real processes: the second exits non-zero naming the first's pid; the first completes unharmed."""
    texts = fx.prose()
    first = _jsonl(tmp_path / "first.jsonl", texts[:60] * 5)  # long enough to outlast two process starts
    other = _jsonl(tmp_path / "other.jsonl", texts[60:120])
    out = tmp_path / "scores"
    slow = ("--shard-size", "1", "--batch-tokens", "64")
    proc = subprocess.Popen(_score_cmd(model_dir, first, out, *slow), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "sequences" / "part-000000.parquet").exists() and proc.poll() is None:
            assert time.time() < deadline, "the first run wrote no shard in time"
            time.sleep(0.05)
        assert proc.poll() is None, "the first run ended before the second started: make its corpus longer"
        for corpus in (other, first):  # another job, and the same job twice at once
            second = subprocess.run(_score_cmd(model_dir, corpus, out, *slow), capture_output=True, text=True,
                                    timeout=300)
            assert second.returncode == 2, second.stderr
            assert f"being written by another run (pid {proc.pid}" in second.stderr
        assert proc.poll() is None, "the first run ended before the second ones: make its corpus longer"
    finally:
        stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    df = read_scores(out)
    assert list(df.row) == list(range(300)) and list(df.text_hash) == [text_hash(t) for t in texts[:60] * 5]
    assert not list(out.rglob(".*.tmp-*"))


def test_the_lock_is_released_when_its_holder_dies(tmp_path):
    out = tmp_path / "scores"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from mia_fast.scoring.lock import DirectoryLock; "
                               f"lock = DirectoryLock(Path({str(out)!r})).__enter__(); print('held', flush=True); "
                               "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DirectoryBusyError, match=rf"pid {holder.pid} on .*started"):
            DirectoryLock(out).__enter__()
    finally:
        holder.kill()
        holder.communicate()
    with DirectoryLock(out):  # kill -9 left the file, not the lock
        assert (out / ".lock").is_file()


def test_shards_without_a_manifest_are_never_resumed(model_dir, two_corpora, tmp_path):
    a, b = two_corpora
    out = tmp_path / "scores"
    score_to_directory(_job(model_dir, a), out)
    (out / "manifest.json").unlink()
    for corpus in (b, a):  # nothing says which job wrote them: not even the same job may resume
        with pytest.raises(ResumeMismatchError, match="no manifest.json"):
            score_to_directory(_job(model_dir, corpus), out)
    assert len(list((out / "sequences").iterdir())) == 3


def _foreign_shard(model_dir, two_corpora, tmp_path) -> tuple[Path, Path]:
    """A complete directory of corpus a, and a shard of corpus b's job (same shard size)."""
    a, b = two_corpora
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    score_to_directory(_job(model_dir, a), out_a)
    score_to_directory(_job(model_dir, b), out_b)
    return out_a, out_b / "sequences" / "part-000001.parquet"


def test_a_shard_of_another_job_is_refused_on_read_and_on_resume(model_dir, two_corpora, tmp_path):
    out, foreign = _foreign_shard(model_dir, two_corpora, tmp_path)
    shutil.copy(foreign, out / "sequences" / "part-000001.parquet")
    with pytest.raises(ScoreDirectoryError, match=r"part-000001\.parquet' belongs to another job"):
        read_scores(out)
    (out / "sequences" / "part-000002.parquet").unlink()  # as if the run had stopped there
    with pytest.raises(ScoreDirectoryError, match="belongs to another job"):
        score_to_directory(_job(model_dir, two_corpora[0]), out)


def test_incomplete_directories_are_refused_unless_asked(model_dir, two_corpora, tmp_path):
    out = tmp_path / "scores"
    score_to_directory(_job(model_dir, two_corpora[0], options=ScoreOptions(per_token=True)), out)
    manifest = read_manifest(out)
    manifest["status"] = "running"
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "sequences" / "part-000002.parquet").unlink()  # shard 2 cut short: its tokens file stays
    with pytest.raises(IncompleteScoresError, match="has not completed.*--allow-incomplete"):
        read_scores(out)
    with pytest.warns(UserWarning, match="complete shards only"):
        df = read_scores(out, allow_incomplete=True)
    with pytest.warns(UserWarning):
        tokens = read_scores(out, "tokens", allow_incomplete=True)
    assert list(df.row) == list(range(8)) and set(tokens.row) == set(range(8))
    assert main(["attack", "--target", str(out), "--out", str(tmp_path / "report")]) == 2


def test_a_complete_directory_changed_afterwards_is_refused(model_dir, two_corpora, tmp_path):
    out = tmp_path / "scores"
    score_to_directory(_job(model_dir, two_corpora[0]), out)
    shard = out / "sequences" / "part-000001.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ScoreDirectoryError, match=r"part-000001\.parquet' is damaged"):
        read_scores(out)
    shard.unlink()
    with pytest.raises(ScoreDirectoryError, match=r"manifest says 3 sequences shards, found 2 \(missing part-000001"):
        read_scores(out)
    (out / "manifest.json").write_text('{"identity": {"model"')
    with pytest.raises(ScoreDirectoryError, match=r"manifest\.json' is damaged"):
        read_scores(out)


def _scored(job: ScoreJob, out: Path):
    score_to_directory(job, out)
    return read_scores(out)


def test_a_reference_of_other_texts_or_tokenization_is_refused(model_dir, two_corpora, tmp_path):
    a, b = two_corpora
    target = _scored(_job(model_dir, a), tmp_path / "t")
    target_policy = target.attrs["manifest"]["settings"]["first_token"]
    # default ids 0..11 align any two corpora of one size: the texts tell them apart
    other = _scored(_job(model_dir, b), tmp_path / "o")
    with pytest.raises(CorpusMismatchError, match="12 documents have other texts under the same id"):
        check_same_corpus(target, other)
    # the same texts in another file format: the same corpus
    csv = tmp_path / "a.csv"
    csv.write_text("text\n" + "".join('"' + t.replace('"', '""') + '"\n' for t in fx.prose()[:12]))
    same = _scored(_job(model_dir, csv), tmp_path / "c")
    check_same_corpus(target, same)
    no_bos = _job(model_dir, a, options=ScoreOptions(first_token="bos" if target_policy == "skip" else "skip"))
    shifted = _scored(no_bos, tmp_path / "s")
    with pytest.raises(CorpusMismatchError, match="first_token"):
        check_same_corpus(target, shifted)
    assert main(["attack", "--target", str(tmp_path / "t"), "--reference", str(tmp_path / "o"),
                 "--out", str(tmp_path / "report")]) == 2


def test_runs_that_score_nothing_fail_before_the_model_loads(model_dir, tmp_path, capsys, monkeypatch):
    import mia_fast.scoring.lm as lm

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(lm, "load_model", no_load)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"body": t}) + "\n" for t in fx.prose()[:5]))
    with pytest.raises(EmptyRunError, match="holds no records"):
        score_to_directory(_job(model_dir, empty), tmp_path / "e")
    with pytest.raises(EmptyRunError, match=r"none of the first 5 records .*bad\.jsonl:1: "):
        score_to_directory(_job(model_dir, bad), tmp_path / "b", on_bad_row="skip")
    assert main(["score", "--model", str(model_dir), "--input", str(bad), "--out", str(tmp_path / "c"),
                 "--on-bad-row", "skip", "--no-progress"]) == 2
    assert "none of the first 5 records" in capsys.readouterr().err
    assert not (tmp_path / "e").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_out_that_is_a_file_is_a_clear_error(model_dir, two_corpora, tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("not a directory")
    assert main(["score", "--model", str(model_dir), "--input", str(two_corpora[0]), "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "out_dir: expected a directory" in err and "Traceback" not in err
    assert out.read_text() == "not a directory"


def _broken_models(model_dir: Path, base: Path) -> dict[str, tuple[Path, str]]:
    """Model sources that exist but cannot be loaded -> (path, what the message must say)."""
    corrupt = base / "corrupt"
    shutil.copytree(model_dir, corrupt)
    weights = next(corrupt.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    pickled = base / "pickled"
    shutil.copytree(model_dir, pickled)
    next(pickled.glob("*.safetensors")).rename(pickled / "pytorch_model.bin")
    no_config = base / "no_config"
    no_config.mkdir()
    truncated = base / "t.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(100))
    return {"corrupt": (corrupt, "could not load"), "pickled": (pickled, "only pickled weights (pytorch_model.bin)"),
            "no_config": (no_config, "has no config.json"), "truncated_gguf": (truncated, "t.gguf")}


@pytest.mark.parametrize("case", ["corrupt", "pickled", "no_config", "truncated_gguf"])
def test_a_model_that_cannot_load_is_one_clear_message(model_dir, two_corpora, tmp_path, capsys, case):
    if case == "truncated_gguf":
        pytest.importorskip("gguf")
    path, expected = _broken_models(model_dir, tmp_path)[case]
    assert main(["score", "--model", str(path), "--input", str(two_corpora[0]), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mia-fast score: error: ") and expected in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_a_device_this_machine_lacks_is_refused_before_loading(model_dir, two_corpora, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["score", "--model", str(model_dir), "--input", str(two_corpora[0]), "--out", str(tmp_path / "o"),
                 "--device", "cuda", "--no-progress"]) == 2
    assert "device: 'cuda' was asked for, but" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_a_full_disk_keeps_completed_shards_and_says_so(model_dir, two_corpora, tmp_path, capsys, monkeypatch):
    import errno

    import mia_fast.scoring.run as run

    real, calls = run._atomic_write_parquet, []

    def fill_up(path, columns, metadata):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, columns, metadata)

    monkeypatch.setattr(run, "_atomic_write_parquet", fill_up)
    out = tmp_path / "o"
    assert main(["score", "--model", str(model_dir), "--input", str(two_corpora[0]), "--out", str(out),
                 "--shard-size", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "part-000001.parquet: No space left on device; completed shards are kept" in err
    monkeypatch.setattr(run, "_atomic_write_parquet", real)
    assert main(["score", "--model", str(model_dir), "--input", str(two_corpora[0]), "--out", str(out),
                 "--shard-size", "4", "--no-progress"]) == 0
    assert list(read_scores(out).row) == list(range(12)) and read_manifest(out)["resumed_from_shard"] == 1


@pytest.mark.parametrize("content, expected", [
    (None, "was not found"),
    (b"garbage", "cannot be read"),
    ({"keep": [[1, 0, 1]]}, "holds ['keep']"),
    ({"keep": [[1, 0, 2]], "ids": ["0", "1", "2"]}, "values other than 0 and 1"),
    ({"keep": [[1, 0, 1]], "ids": ["0", "0", "2"]}, "repeats ids"),
    ({"keep": [1, 0, 1], "ids": ["0", "1", "2"]}, "has keep (3,) and ids (3,)"),
])
def test_bad_keep_files_are_named(tmp_path, content, expected):
    import numpy as np

    from mia_fast.audit import load_keep

    path = tmp_path / "keep.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.savez(path, **{k: np.asarray(v) for k, v in content.items()})
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(expected)) as info:
        load_keep(path, ["0", "1", "2"])
    assert "keep.npz" in str(info.value)


def test_a_record_past_the_size_limit_is_a_bad_row(model_dir, tmp_path, capsys):
    """Memory to score a record grows with its length: past --max-record-chars it is refused, before
    any of it is tokenized (or rejected under skip, and the rest scored)."""
    corpus = _jsonl(tmp_path / "long.jsonl", [fx.prose()[0], "word " * 120_001, fx.prose()[1]])
    argv = ["score", "--model", str(model_dir), "--input", str(corpus), "--no-progress"]
    assert main(argv + ["--out", str(tmp_path / "o"), "--max-record-chars", "600000"]) == 2
    err = capsys.readouterr().err
    assert "long.jsonl:2: text of 600,005 characters is longer than the limit of 600,000" in err
    assert "--max-record-chars" in err
    assert main(argv + ["--out", str(tmp_path / "s"), "--max-record-chars", "600000", "--on-bad-row", "skip"]) == 0
    assert list(read_scores(tmp_path / "s").row) == [0, 2]
    assert list(read_scores(tmp_path / "s", "rejects").row) == [1]


def test_duplicate_ids_stop_the_run_naming_both_lines(model_dir, tmp_path, capsys):
    corpus = tmp_path / "dup.jsonl"
    corpus.write_text("".join(json.dumps({"doc": d, "text": t}) + "\n"
                              for d, t in zip([1, 2, "1"], fx.prose()[:3])))
    assert main(["score", "--model", str(model_dir), "--input", str(corpus), "--id-field", "doc",
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "dup.jsonl:3" in err and "dup.jsonl:1" in err


def test_a_truncated_parquet_input_is_named(model_dir, tmp_path, capsys):
    import pandas as pd

    whole = tmp_path / "c.parquet"
    pd.DataFrame({"text": list(fx.prose()[:50])}).to_parquet(whole)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert main(["score", "--model", str(model_dir), "--input", str(cut), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cut.parquet' is not a readable Parquet file" in err and not (tmp_path / "o").exists()


_PEAK_RSS = """
import resource, sys
from mia_fast.cli import main
status = main(sys.argv[1:])
print(status, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_kib(argv: list[str]) -> tuple[int, int]:
    """(exit status, peak RSS in KiB) of `mia-fast ARGV` in a fresh process."""
    run = subprocess.run([sys.executable, "-c", _PEAK_RSS, *argv], capture_output=True, text=True, timeout=600)
    status, rss = run.stdout.split()[-2:]
    return int(status), int(rss)


def test_a_20mb_record_is_refused_in_no_more_memory_than_a_normal_shard(model_dir, tmp_path):
    """The issue's case: one 20 MB single-line text once took gigabytes. With the default
    --max-record-chars it is refused cleanly, peaking no higher than the scoring of a normal shard."""
    huge = tmp_path / "huge.jsonl"
    huge.write_text(json.dumps({"text": "lorem ipsum " * 1_750_000}) + "\n")  # 21 MB
    assert huge.stat().st_size > 20e6
    normal = _jsonl(tmp_path / "normal.jsonl", [fx.prose()[i % 120] for i in range(1000)])
    common = ["score", "--model", str(model_dir), "--no-progress"]
    status, refused = _peak_rss_kib(common + ["--input", str(huge), "--out", str(tmp_path / "h")])
    assert status == 2 and not (tmp_path / "h").exists()
    status, shard = _peak_rss_kib(common + ["--input", str(normal), "--out", str(tmp_path / "n")])
    assert status == 0
    assert refused <= shard, f"refusing the 20 MB record peaked at {refused} KiB, a shard of 1000 texts at {shard}"
