"""The resumable corpus-scoring job behind ``mia-fast score``: corpus file -> score directory.

Layout of a score directory::

    manifest.json                 what was scored, how, with what (checked on resume)
    sequences/part-000000.parquet per-sequence table of input records [0, S), S = shard_size
    tokens/part-000000.parquet    per-token table of the same records (with --per-token)
    rejects/part-000000.jsonl     bad records of the same range (with --on-bad-row=skip)
    summary.json                  totals, written when the run completes

Shard ``i`` covers the input records ``[i*S, (i+1)*S)`` (good and bad ones alike). Every file is
written to a temporary name and renamed into place, and a shard's ``sequences`` file is written
last: its presence means the shard is complete. A rerun of the same command skips the completed
shards and continues with the next record, so no row is lost or written twice; a rerun with a
different model, input or parameters is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np

from .. import atomic
from .._version import __version__
from .corpus import Record, Rejected, fingerprint_input, iter_records
from .scorer import ScoreOptions, TextScorer

__all__ = ["FORMAT_VERSION", "ResumeMismatchError", "ScoreJob", "score_to_directory", "read_scores", "read_manifest"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUMMARY = "summary.json"
_MODEL_FILES = ("*.safetensors", "*.json", "*.model", "*.txt", "*.tiktoken")


class ResumeMismatchError(ValueError):
    """The score directory holds results of a different model, input or parameters."""


def _atomic_write_json(path: Path, obj: Any) -> None:
    atomic.write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _atomic_write_parquet(path: Path, columns: dict[str, Any], metadata: dict[str, str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    tmp = atomic.temporary_path(path)
    pq.write_table(table, tmp, compression="zstd")
    atomic.commit(tmp, path)


def model_fingerprint(path: Union[str, Path], gguf_file: Optional[str] = None) -> dict[str, Any]:
    """sha256 and sizes of the files that define a model and its tokenizer (weights, configs, vocab)."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif gguf_file is not None:
        files = [path / gguf_file]
    else:
        files = sorted({f for pattern in _MODEL_FILES for f in path.glob(pattern) if f.is_file()})
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0")
        digest.update(bytes.fromhex(fingerprint_input(f)["sha256"]))
    return {"sha256": digest.hexdigest(), "files": {f.name: f.stat().st_size for f in files}}


def _versions() -> dict[str, str]:
    import pyarrow
    import torch
    import transformers

    return {
        "mia_fast": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pyarrow": pyarrow.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


@dataclass
class ScoreJob:
    """Everything that defines the contents of a score directory (compared on resume)."""

    model: str
    input: str
    gguf_file: Optional[str] = None
    dtype: str = "fp32"
    head: str = "auto"
    input_format: str = "auto"
    text_field: str = "text"
    id_field: Optional[str] = None
    label_field: Optional[str] = None
    text_unit: str = "line"
    shard_size: int = 1000
    options: ScoreOptions = ScoreOptions()

    def __post_init__(self) -> None:
        path = Path(self.model)
        if path.suffix == ".gguf" and self.gguf_file is None:  # a GGUF file: its folder + its name
            self.model, self.gguf_file = str(path.parent), path.name
        if self.shard_size < 1:
            raise ValueError(f"shard_size: expected a positive number of records, got {self.shard_size}")

    def identity(self) -> dict[str, Any]:
        """The manifest entries that must not change between a run and its resumption."""
        return {
            "format_version": FORMAT_VERSION,
            "model": {"path": str(Path(self.model).resolve()), "gguf_file": self.gguf_file,
                      **model_fingerprint(self.model, self.gguf_file)},
            "input": {"path": str(Path(self.input).resolve()), "format": self.input_format,
                      "text_field": self.text_field, "id_field": self.id_field, "label_field": self.label_field,
                      "text_unit": self.text_unit,
                      **{k: v for k, v in fingerprint_input(self.input).items() if k != "mtime_ns"}},
            # batch_tokens changes no result (a run that ran out of memory may resume with less)
            "params": {"dtype": self.dtype, "head": self.head, "shard_size": self.shard_size,
                       **{k: v for k, v in self.options.as_dict().items() if k != "batch_tokens"}},
        }


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    old = list(old) if isinstance(old, tuple) else old
    new = list(new) if isinstance(new, tuple) else new
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def read_manifest(out_dir: Union[str, Path]) -> dict[str, Any]:
    """The manifest of a score directory."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"out_dir: {str(out_dir)!r} is not a score directory (no {MANIFEST})")
    return json.loads(path.read_text())


def check_directory(out_dir: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """Check, without writing anything, that ``out_dir`` holds nothing or the same job.

    Returns the existing manifest (empty when there is none, or when it is another job's that
    wrote no shard: e.g. a run stopped by a bad option or a wrong field before its first shard,
    whose corrected rerun starts afresh). Raises `ResumeMismatchError` when the directory holds
    another job's scores.
    """
    old: dict[str, Any] = {}
    if (out_dir / MANIFEST).is_file():
        old = read_manifest(out_dir)
        diffs = _differences(old.get("identity", {}), identity)
        if diffs and not _holds_shards(out_dir):
            old = {}
        elif diffs:
            raise ResumeMismatchError(
                f"out_dir: {str(out_dir)!r} holds scores of a different job; refusing to mix results. "
                f"Differences: {'; '.join(diffs)}. Use another output directory (or delete this one)."
            )
    return old


def prepare_directory(out_dir: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """`check_directory`, then make ``out_dir`` ready to (re)write shards; returns the old manifest."""
    old = check_directory(out_dir, identity)
    for sub in ("sequences", "tokens", "rejects"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    _remove_temporaries(out_dir)
    (out_dir / SUMMARY).unlink(missing_ok=True)
    return old


def _holds_shards(out_dir: Path) -> bool:
    return any(next((out_dir / sub).glob("part-*"), None) is not None for sub in ("sequences", "tokens", "rejects"))


def _shard_name(i: int, suffix: str) -> str:
    return f"part-{i:06d}.{suffix}"


def _completed_shards(out_dir: Path) -> int:
    i = 0
    while (out_dir / "sequences" / _shard_name(i, "parquet")).is_file():
        i += 1
    return i


def _remove_temporaries(out_dir: Path) -> None:
    for sub in ("", "sequences", "tokens", "rejects"):
        for tmp in (out_dir / sub).glob(".*.tmp-*"):
            tmp.unlink()


def _shards(items: Iterator[Union[Record, Rejected]], size: int) -> Iterator[list[Union[Record, Rejected]]]:
    shard: list[Union[Record, Rejected]] = []
    for item in items:
        shard.append(item)
        if len(shard) == size:
            yield shard
            shard = []
    if shard:
        yield shard


def _write_shard(
    out_dir: Path, i: int, shard: Sequence[Union[Record, Rejected]], scorer: TextScorer, job: ScoreJob, tag: str
) -> tuple[int, int, int]:
    """Score one shard and write its files, the sequences file last. Returns (rows, rejects, tokens)."""
    good = [r for r in shard if isinstance(r, Record)]
    bad = [r for r in shard if isinstance(r, Rejected)]
    meta = {"mia_fast.run": tag, "mia_fast.shard": str(i)}
    columns, per_token = scorer.score([r.text for r in good])
    if bad:
        lines = [json.dumps({"row": r.index, "source": r.source, "reason": r.reason, "raw": r.raw}) for r in bad]
        atomic.write_bytes(out_dir / "rejects" / _shard_name(i, "jsonl"), ("\n".join(lines) + "\n").encode())
    if per_token is not None:
        seq = per_token.pop("seq")
        rows = np.array([r.index for r in good], dtype=np.int64)
        ids = np.array([r.id for r in good], dtype=object)
        _atomic_write_parquet(
            out_dir / "tokens" / _shard_name(i, "parquet"), {"row": rows[seq], "id": ids[seq], **per_token}, meta
        )
    table: dict[str, Any] = {"row": np.array([r.index for r in good], dtype=np.int64), "id": [r.id for r in good]}
    if job.label_field is not None:
        table["label"] = np.array([r.label for r in good], dtype=np.int8)
    table.update(columns)
    _atomic_write_parquet(out_dir / "sequences" / _shard_name(i, "parquet"), table, meta)
    return len(good), len(bad), int(columns["n_tokens"].sum())


def score_to_directory(
    job: ScoreJob,
    out_dir: Union[str, Path],
    *,
    device: str = "cpu",
    trust_remote_code: bool = False,
    on_bad_row: str = "error",
    progress: Optional[Callable[[int, int], None]] = None,
) -> dict[str, Any]:
    """Score a corpus file into a score directory, resuming a previous run of the same job.

    Parameters
    ----------
    job : ScoreJob
        Model, input and parameters; compared with the manifest of an existing ``out_dir``.
    out_dir : str or Path
        Created if needed.
    device : str
        Where the model runs (not part of the job's identity: a run may resume elsewhere).
    trust_remote_code : bool
    on_bad_row : {'error', 'skip'}
        ``skip`` writes bad records to ``rejects/`` and counts them; ``error`` stops at the first
        one with its file and line (completed shards stay).
    progress : callable(records, tokens), optional
        Called after each shard with the records and tokens it added.

    Returns
    -------
    dict
        The summary (also written to ``summary.json``): records, rows, rejects, tokens, seconds,
        tokens_per_s, forward_share.
    """
    from .lm import check_model_source, load_model

    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row: expected 'error' or 'skip', got {on_bad_row!r}")
    out_dir = Path(out_dir)
    identity = job.identity()
    # Everything that can be checked is checked before the model loads, and nothing is written
    # until it has loaded: a failed load leaves no empty directory behind.
    check_model_source(job.model, job.gguf_file)
    check_directory(out_dir, identity)
    t_load = time.perf_counter()
    model, tokenizer = load_model(
        job.model, gguf_file=job.gguf_file, dtype=job.dtype, device=device, trust_remote_code=trust_remote_code
    )
    prepare_directory(out_dir, identity)
    done = _completed_shards(out_dir)
    t_start = time.perf_counter()
    scorer = TextScorer(model, tokenizer, job.options, head=job.head)
    tag = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    manifest = {
        "identity": identity,
        "settings": scorer.settings,
        "versions": _versions(),
        "tokenizer": type(tokenizer).__name__,
        "model_class": type(model).__name__,
        "run_tag": tag,
        "status": "running",
        "resumed_from_shard": done,
        "device": str(device),
    }
    _atomic_write_json(out_dir / MANIFEST, manifest)
    records = iter_records(
        job.input, format=job.input_format, text_field=job.text_field, id_field=job.id_field,
        label_field=job.label_field, text_unit=job.text_unit, on_bad_row=on_bad_row, start=done * job.shard_size,
    )
    i = done
    for i, shard in enumerate(_shards(records, job.shard_size), start=done):
        rows, _, tokens = _write_shard(out_dir, i, shard, scorer, job, tag)
        if progress is not None:
            progress(len(shard), tokens)
    seconds = time.perf_counter() - t_start
    summary = _summary(out_dir)
    summary.update(
        load_seconds=round(t_start - t_load, 3),
        seconds_this_run=round(seconds, 3),
        tokens_this_run=scorer.n_tokens,
        tokens_per_s_this_run=round(scorer.n_tokens / seconds, 1) if seconds > 0 else None,
        forward_seconds_this_run=round(scorer.forward_seconds, 3),
        head=scorer.lm.head,
        head_reason=scorer.lm.reason,
    )
    manifest["status"] = "complete"
    _atomic_write_json(out_dir / MANIFEST, manifest)
    _atomic_write_json(out_dir / SUMMARY, summary)
    return summary


def _summary(out_dir: Path) -> dict[str, Any]:
    """Totals over every shard of a score directory."""
    import pyarrow.parquet as pq

    rows = tokens = unscored = 0
    for path in sorted((out_dir / "sequences").glob("part-*.parquet")):
        n = pq.read_table(path, columns=["n_tokens"]).column("n_tokens").to_numpy()
        rows += len(n)
        tokens += int(n.sum())
        unscored += int((n == 0).sum())
    rejects = sum(len(p.read_text().splitlines()) for p in sorted((out_dir / "rejects").glob("part-*.jsonl")))
    return {"rows": rows, "rejects": rejects, "records": rows + rejects, "tokens": tokens, "rows_without_tokens": unscored}


def read_scores(out_dir: Union[str, Path], table: str = "sequences"):
    """Read a score directory's table into a pandas DataFrame.

    Parameters
    ----------
    out_dir : str or Path
        A directory written by ``mia-fast score``.
    table : {'sequences', 'tokens', 'rejects'}

    Returns
    -------
    pandas.DataFrame
        Rows in input order; ``df.attrs["manifest"]`` holds the manifest.
    """
    import pandas as pd
    import pyarrow.parquet as pq

    manifest = read_manifest(out_dir)
    base = Path(out_dir) / table
    if table == "rejects":
        rows = [json.loads(line) for p in sorted(base.glob("part-*.jsonl")) for line in p.read_text().splitlines()]
        df = pd.DataFrame(rows, columns=["row", "source", "reason", "raw"])
    elif table in ("sequences", "tokens"):
        parts = sorted(base.glob("part-*.parquet"))
        if not parts:
            hint = " (score with --per-token)" if table == "tokens" else ""
            raise FileNotFoundError(f"table: {str(out_dir)!r} has no {table} shards{hint}")
        df = pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)
    else:
        raise ValueError(f"table: expected 'sequences', 'tokens' or 'rejects', got {table!r}")
    df.attrs["manifest"] = manifest
    return df
