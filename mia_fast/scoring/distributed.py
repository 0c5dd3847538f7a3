"""Corpus scoring on Ray Data: the score directory of `mia_fast.scoring.run`, written by a pool of actors.

`score_dataset` scores a corpus file (or a ``ray.data.Dataset`` with a global record index) with
``num_workers`` Ray actors, each holding one model and one `TextScorer`, and writes the same score
directory as `score_to_directory`: ``sequences/part-NNNNNN.parquet`` covers the input records
``[N*S, (N+1)*S)`` with ``S = block_records``, and ``manifest.json`` is read by `read_scores`.

Records get their global index on the driver: a corpus file is enumerated by `iter_records` (the
same numbering, ids, labels and checks as the single-process job); a Dataset must carry the index
in a ``row`` column. The driver streams the actors' output and writes each shard, atomically,
once all of its records are scored, so shards appear out of order. A rerun of the same job skips
every shard whose file exists and scores the others: no record is lost or written twice. Actors
that die are restarted and their tasks retried by Ray (``max_restarts`` / ``max_task_retries``).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

from .corpus import MAX_RECORD_CHARS, Record, Rejected
from .run import (
    FORMAT_VERSION,
    MANIFEST,
    ScoreJob,
    _atomic_write_json,
    _atomic_write_parquet,
    _shard_name,
    _summary,
    _versions,
    check_directory,
    complete,
    model_fingerprint,
    prepare_directory,
    run_tag,
    text_hash,
    tokenizer_fingerprint,
)
from .lock import DirectoryLock
from .scorer import ScoreOptions, TextScorer

__all__ = ["score_dataset", "require_ray"]

_INSTALL_HINT = 'Distributed scoring needs Ray Data: pip install "mia_fast[ray]"'


def require_ray():
    """Import and return ``ray`` (with ``ray.data``), or raise an ImportError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{_INSTALL_HINT} (import failed: {e})") from e
    return ray


class _ScoreActor:
    """One model + `TextScorer` per actor; a batch of records -> its per-sequence columns."""

    def __init__(self, model_path: str, gguf_file: Optional[str], dtype: str, head: str, device: str,
                 options: ScoreOptions, has_label: bool, trust_remote_code: bool = False) -> None:
        from .lm import load_model

        model, tokenizer = load_model(model_path, gguf_file=gguf_file, dtype=dtype, device=device,
                                      trust_remote_code=trust_remote_code)
        self.scorer = TextScorer(model, tokenizer, options, head=head)
        self.has_label = has_label

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        columns, _ = self.scorer.score(texts)
        out: dict[str, Any] = {"row": np.asarray(batch["row"], dtype=np.int64),
                               "id": np.asarray([str(i) for i in batch["id"]], dtype=str),
                               "text_hash": np.asarray([text_hash(t) for t in texts], dtype=str)}
        if self.has_label:
            out["label"] = np.asarray(batch["label"], dtype=np.int8)
        out.update(columns)
        return out


def _describe(model_path: str, gguf_file: Optional[str], dtype: str, head: str, options: ScoreOptions,
              trust_remote_code: bool) -> dict[str, Any]:
    """Manifest entries that need the model: resolved settings, tokenizer and model classes."""
    from .lm import load_model

    model, tokenizer = load_model(model_path, gguf_file=gguf_file, dtype=dtype, trust_remote_code=trust_remote_code)
    scorer = TextScorer(model, tokenizer, options, head=head)
    return {"settings": scorer.settings, "tokenizer": type(tokenizer).__name__,
            "tokenizer_sha256": tokenizer_fingerprint(tokenizer), "model_class": type(model).__name__,
            "head": scorer.lm.head, "head_reason": scorer.lm.reason}


def _done_shards(out_dir: Path) -> set[int]:
    return {int(p.stem.split("-")[1]) for p in (out_dir / "sequences").glob("part-*.parquet")}


def _file_records(job: ScoreJob, done: set[int]) -> Iterator[dict[str, Any]]:
    """Records of the shards not yet written, numbered by a single-process pass over the file."""
    size = job.shard_size
    start = 0
    while start // size in done:
        start += size
    for item in job.records("error", start=start):
        assert isinstance(item, Record) and not isinstance(item, Rejected)
        if item.index // size in done:
            continue
        rec = {"row": item.index, "id": item.id, "text": item.text}
        if job.label_field is not None:
            rec["label"] = item.label
        yield rec


def _file_dataset(ray, job: ScoreJob, done: set[int]):
    """The pending records of a file as a Dataset of one block per shard; and records per shard."""
    import pandas as pd

    frames, counts, current, shard = [], {}, [], None
    for rec in _file_records(job, done):
        s = rec["row"] // job.shard_size
        if shard is not None and s != shard and current:
            frames.append(pd.DataFrame(current))
            current = []
        shard = s
        current.append(rec)
        counts[s] = counts.get(s, 0) + 1
    if current:
        frames.append(pd.DataFrame(current))
    if not frames:
        return None, counts
    return ray.data.from_pandas(frames), counts


def _prepare_dataset(dataset, size: int, text_field: str, id_field: Optional[str], label_field: Optional[str],
                     row_field: str, done: set[int]):
    """A user Dataset -> columns row, id, text[, label] of the pending shards; and records per shard."""
    names = dataset.columns()
    for name in (row_field, text_field, id_field, label_field):
        if name is not None and name not in names:
            hint = (" (distributed scoring needs each record's global index: add it, or pass the corpus file)"
                    if name == row_field else "")
            raise ValueError(f"dataset: no column {name!r} among {names}{hint}")
    rows = np.asarray(dataset.select_columns([row_field]).to_pandas()[row_field], dtype=np.int64)
    if len(np.unique(rows)) != len(rows) or (len(rows) and rows.min() < 0):
        raise ValueError(f"dataset: column {row_field!r} must hold distinct non-negative record indices")
    shards, n = np.unique(rows // size, return_counts=True)
    counts = {int(s): int(c) for s, c in zip(shards, n) if int(s) not in done}
    if not counts:
        return None, counts
    done_arr = np.array(sorted(done), dtype=np.int64)

    def columns(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        row = np.asarray(batch[row_field], dtype=np.int64)
        keep = ~np.isin(row // size, done_arr)
        out = {"row": row[keep], "text": np.asarray([str(t) for t in batch[text_field]], dtype=str)[keep],
               "id": (np.asarray([str(x) for x in batch[id_field]], dtype=str)[keep] if id_field is not None
                      else np.asarray([str(r) for r in row[keep]], dtype=str))}
        if label_field is not None:
            out["label"] = np.asarray(batch[label_field]).astype(np.int8)[keep]
        return out

    return dataset.map_batches(columns, batch_format="numpy", zero_copy_batch=False), counts


def score_dataset(
    dataset,
    model_path: Union[str, Path],
    out_dir: Union[str, Path],
    *,
    text_field: str = "text",
    id_field: Optional[str] = None,
    label_field: Optional[str] = None,
    row_field: str = "row",
    options: ScoreOptions = ScoreOptions(),
    num_workers: int = 1,
    num_cpus_per_worker: float = 0.5,
    num_gpus_per_worker: float = 0,
    block_records: int = 1000,
    batch_records: Optional[int] = None,
    dtype: str = "fp32",
    head: str = "auto",
    input_format: str = "auto",
    text_unit: str = "line",
    gguf_file: Optional[str] = None,
    trust_remote_code: bool = False,
    max_restarts: int = 3,
    max_task_retries: int = 3,
    max_record_chars: Optional[int] = MAX_RECORD_CHARS,
    _actor_cls: type = _ScoreActor,
) -> dict[str, Any]:
    """Score a corpus with a pool of Ray actors into a score directory (resuming a previous run).

    Parameters
    ----------
    dataset : str, Path or ray.data.Dataset
        A corpus file (or saved dataset directory) as read by `mia_fast.scoring.corpus.iter_records`, or a
        Dataset with the columns ``row_field`` (global record index), ``text_field`` and optionally
        ``id_field`` and ``label_field``.
    model_path : str or Path
        Model directory or ``.gguf`` file; every worker must see it at this path.
    out_dir : str or Path
        The score directory (on the driver's file system).
    options : ScoreOptions
        ``per_token`` is not supported here.
    num_workers : int
        Actors in the pool, each with its own model.
    num_cpus_per_worker, num_gpus_per_worker : float
        Ray resources of one actor (fractions allowed). With GPUs the model runs on ``cuda``.
    block_records : int
        Records per shard file (the ``shard_size`` of the job); also the unit of work of an actor.
    batch_records : int, optional
        Records per actor call (default: ``block_records``).
    max_restarts, max_task_retries : int
        Ray's restarts of a dead actor and retries of its lost tasks.
    max_record_chars : int, optional
        Longest record text of a corpus file (a longer one is an error naming its line); None: no limit.

    Returns
    -------
    dict
        The summary (also in ``summary.json``): rows, records, tokens, seconds_this_run, ...
    """
    ray = require_ray()
    if options.per_token:
        raise ValueError("options.per_token: the per-token table is not written by distributed scoring; "
                         "use score_to_directory")
    if num_workers < 1:
        raise ValueError(f"num_workers: expected at least 1, got {num_workers}")
    out_dir = Path(out_dir)
    from_file = isinstance(dataset, (str, Path))
    model_path = Path(model_path)
    if model_path.suffix == ".gguf" and gguf_file is None:
        model_path, gguf_file = model_path.parent, model_path.name
    if from_file:
        job = ScoreJob(model=str(model_path), input=str(dataset), gguf_file=gguf_file, dtype=dtype, head=head,
                       input_format=input_format, text_field=text_field, id_field=id_field, label_field=label_field,
                       text_unit=text_unit, shard_size=block_records, options=options,
                       max_record_chars=max_record_chars)
        identity = job.identity()
    else:
        if block_records < 1:
            raise ValueError(f"block_records: expected a positive number of records, got {block_records}")
        identity = {
            "format_version": FORMAT_VERSION,
            "model": {"path": str(model_path.resolve()), "gguf_file": gguf_file,
                      **model_fingerprint(model_path, gguf_file)},
            "input": {"ray_dataset": True, "row_field": row_field, "text_field": text_field,
                      "id_field": id_field, "label_field": label_field},
            "params": {"dtype": dtype, "head": head, "shard_size": block_records,
                       **{k: v for k, v in options.as_dict().items() if k != "batch_tokens"}},
        }
    check_directory(out_dir, identity)  # before anything is locked or written
    with DirectoryLock(out_dir):
        old = prepare_directory(out_dir, identity)
        done = _done_shards(out_dir)
        t_start = time.perf_counter()
        if from_file:
            pending, counts = _file_dataset(ray, job, done)
        else:
            pending, counts = _prepare_dataset(dataset, block_records, text_field, id_field, label_field, row_field,
                                               done)

        device = "cuda" if num_gpus_per_worker else "cpu"
        if pending is None and old.get("settings") is not None:  # nothing to score: keep what the last run found
            described = {k: old.get(k) for k in ("settings", "tokenizer", "tokenizer_sha256", "model_class")}
            described.update(head=old["settings"]["head"], head_reason=old["settings"]["head_reason"])
            describe = None
        else:
            describe = ray.remote(num_cpus=num_cpus_per_worker, num_gpus=num_gpus_per_worker)(_describe).remote(
                str(model_path), gguf_file, dtype, head, options, trust_remote_code)
        tag = run_tag(identity)
        manifest: dict[str, Any] = {
            "identity": identity, "settings": None, "versions": _versions(), "tokenizer": None, "model_class": None,
            "run_tag": tag, "status": "running", "resumed_from_shard": min(counts) if counts else None,
            "device": device, "engine": "ray", "num_workers": num_workers,
        }
        _atomic_write_json(out_dir / MANIFEST, manifest)

        rows_this_run = tokens_this_run = 0
        if pending is not None:
            with warnings.catch_warnings():  # Ray >= 2.60 deprecates ray_remote_args; no named form exists yet
                warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
                scored = pending.map_batches(
                    _actor_cls,
                    batch_size=batch_records or block_records,
                    batch_format="numpy",
                    zero_copy_batch=False,
                    fn_constructor_args=(str(model_path), gguf_file, dtype, head, device, options, label_field is not None,
                                         trust_remote_code),
                    compute=ray.data.ActorPoolStrategy(size=num_workers),
                    num_cpus=num_cpus_per_worker,
                    num_gpus=num_gpus_per_worker or None,
                    max_restarts=max_restarts,
                    max_task_retries=max_task_retries,
                )
            buffers: dict[int, list] = {}
            filled: dict[int, int] = {}
            for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
                shard_of = batch.column("row").to_numpy() // block_records
                for s in np.unique(shard_of):
                    s = int(s)
                    part = batch.filter(_pa_mask(shard_of == s))
                    buffers.setdefault(s, []).append(part)
                    filled[s] = filled.get(s, 0) + part.num_rows
                    if filled[s] > counts.get(s, 0):
                        raise RuntimeError(f"shard {s}: got {filled[s]} scored rows for {counts.get(s, 0)} records")
                    if filled[s] == counts[s]:
                        rows, tokens = _write(out_dir, s, buffers.pop(s), tag)
                        rows_this_run += rows
                        tokens_this_run += tokens
            if buffers:
                raise RuntimeError(f"shards {sorted(buffers)}: incomplete after the run (a lost batch?)")
        seconds = time.perf_counter() - t_start
        if describe is not None:
            described = ray.get(describe)
        summary = _summary(out_dir)
        summary.update(
            seconds_this_run=round(seconds, 3),
            rows_this_run=rows_this_run,
            tokens_this_run=tokens_this_run,
            tokens_per_s_this_run=round(tokens_this_run / seconds, 1) if seconds > 0 else None,
            head=described.pop("head"),
            head_reason=described.pop("head_reason"),
            engine="ray",
            num_workers=num_workers,
        )
        manifest.update(described)
        complete(out_dir, manifest, summary)
        return summary


def _pa_mask(mask: np.ndarray):
    import pyarrow as pa

    return pa.array(mask)


def _write(out_dir: Path, shard: int, parts: list, tag: str) -> tuple[int, int]:
    """Write one shard's rows, in record order, to its sequences file. Returns (rows, tokens)."""
    import pyarrow as pa

    table = pa.concat_tables(parts)
    table = table.take(pa.array(np.argsort(table.column("row").to_numpy(), kind="stable")))
    columns = {name: table.column(name) for name in table.column_names}
    if "id" in columns:
        columns["id"] = columns["id"].cast(pa.string())
    _atomic_write_parquet(out_dir / "sequences" / _shard_name(shard, "parquet"), columns,
                          {"mia_fast.run": tag, "mia_fast.shard": str(shard)})
    return table.num_rows, int(np.asarray(table.column("n_tokens")).sum())
