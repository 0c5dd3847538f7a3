"""Distributed scoring on Ray Data: the same score directory as the single-process job, resume, retries."""

from __future__ import annotations

import builtins
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import lm_fixtures as fx
from mia_fast.scoring.run import ScoreJob, read_manifest, read_scores, score_to_directory
from mia_fast.scoring.scorer import ScoreOptions

ray = pytest.importorskip("ray")

from mia_fast.scoring.distributed import _ScoreActor, score_dataset  # noqa: E402

# Ray's own log handlers may be collected with their files open (a ResourceWarning raised inside
# Ray, reported by pytest as unraisable): not this package's files, so not an error here.
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:ray",
    "ignore::FutureWarning:ray",
    "ignore:unclosed file:ResourceWarning",
    "ignore::pytest.PytestUnraisableExceptionWarning",
)

N_RECORDS = 23
OPTIONS = ScoreOptions(batch_tokens=400)


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return fx.save_gpt2(tmp_path_factory.mktemp("model"))


def _texts(n=N_RECORDS):
    return fx.mixed_length_texts(n)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    lines = [json.dumps({"doc": f"d{i}", "text": t, "member": i % 2}) for i, t in enumerate(_texts())]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(model_dir, corpus, tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("single")
    job = ScoreJob(model=str(model_dir), input=str(corpus), id_field="doc", label_field="member", shard_size=5,
                   options=OPTIONS)
    score_to_directory(job, out)
    return read_scores(out)


def _same(df: pd.DataFrame, ref: pd.DataFrame) -> None:
    assert list(df.columns) == list(ref.columns)
    assert list(df.row) == list(ref.row) and list(df.id) == list(ref.id) and list(df.label) == list(ref.label)
    cols = [c for c in ref.columns if c not in ("id", "text_hash")]
    np.testing.assert_allclose(df[cols].to_numpy(float), ref[cols].to_numpy(float), rtol=1e-5, atol=1e-6)
    assert df.row.is_unique


def _score(corpus, model_dir, out, **kw):
    return score_dataset(str(corpus), model_dir, out, id_field="doc", label_field="member", options=OPTIONS,
                         block_records=5, **kw)


def test_ray_output_equals_single_process_and_rerun_writes_nothing(model_dir, corpus, reference, tmp_path):
    out = tmp_path / "ray"
    summary = _score(corpus, model_dir, out, num_workers=2)
    df = read_scores(out)
    _same(df, reference)
    assert (df.n_tokens > 47).any()  # sliding windows were used
    assert summary["rows"] == N_RECORDS == summary["rows_this_run"] and summary["tokens"] == df.n_tokens.sum()
    assert sorted(p.name for p in (out / "sequences").iterdir()) == [f"part-{i:06d}.parquet" for i in range(5)]
    manifest = read_manifest(out)
    assert manifest["status"] == "complete" and manifest["settings"]["max_length"] == 48
    assert manifest["identity"]["params"]["shard_size"] == 5
    # a rerun over a complete output writes nothing and keeps every row once
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "sequences").iterdir()}
    again = _score(corpus, model_dir, out, num_workers=1)
    assert again["rows_this_run"] == 0 and again["rows"] == N_RECORDS
    assert {p: p.stat().st_mtime_ns for p in (out / "sequences").iterdir()} == mtimes
    _same(read_scores(out), reference)


def test_rerun_after_driver_crash_fills_only_missing_shards(model_dir, corpus, reference, tmp_path):
    out = tmp_path / "ray"
    _score(corpus, model_dir, out)
    # as after a crash: shards 1 and 3 never written, a temporary left behind, status running
    for i in (1, 3):
        (out / "sequences" / f"part-{i:06d}.parquet").unlink()
    (out / "sequences" / ".part-000001.parquet.tmp-1").write_bytes(b"partial")
    kept = {p: p.stat().st_mtime_ns for p in (out / "sequences").glob("part-*")}
    summary = _score(corpus, model_dir, out)
    assert summary["rows_this_run"] == 10 and summary["rows"] == N_RECORDS
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert not list((out / "sequences").glob(".*"))
    _same(read_scores(out), reference)


def test_dataset_input_with_row_column(model_dir, reference, tmp_path):
    texts = _texts()
    items = [{"row": i, "doc": f"d{i}", "text": t, "member": i % 2} for i, t in enumerate(texts)]
    ds = ray.data.from_items(items[::-1], override_num_blocks=3)  # any order, any blocks
    out = tmp_path / "ray"
    score_dataset(ds, model_dir, out, id_field="doc", label_field="member", options=OPTIONS, block_records=5)
    _same(read_scores(out), reference)
    with pytest.raises(ValueError, match="global index"):
        score_dataset(ray.data.from_items([{"text": "a b"}]), model_dir, tmp_path / "x", block_records=5)


class _CrashOnce(_ScoreActor):
    """Dies (the whole worker process) on its first batch unless the marker file exists."""

    marker = ""

    def __call__(self, batch):
        marker = Path(self.marker)
        if not marker.exists():
            marker.write_text("crashed")
            os._exit(1)
        return super().__call__(batch)


def test_dead_actor_is_restarted_and_every_row_is_written_once(model_dir, corpus, reference, tmp_path, monkeypatch):
    marker = tmp_path / "crashed"
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(_CrashOnce, "marker", str(marker))
    try:
        out = tmp_path / "ray"
        summary = _score(corpus, model_dir, out, _actor_cls=_CrashOnce)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert marker.exists() and summary["rows_this_run"] == N_RECORDS
    _same(read_scores(out), reference)


def test_missing_ray_says_how_to_install(monkeypatch):
    import mia_fast.scoring.distributed as dist

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ImportError, match=r'pip install "mia_fast\[ray\]"'):
        dist.require_ray()
    with pytest.raises(ImportError, match=r'pip install "mia_fast\[ray\]"'):
        dist.score_dataset("corpus.jsonl", "model", "out")


def test_per_token_is_refused(model_dir, corpus, tmp_path):
    with pytest.raises(ValueError, match="per_token"):
        score_dataset(str(corpus), model_dir, tmp_path / "o", options=ScoreOptions(per_token=True))
