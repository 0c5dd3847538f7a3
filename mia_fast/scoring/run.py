"""The resumable corpus-scoring job behind ``mia-fast score``: corpus file -> score directory.

Layout of a score directory::

    manifest.json                 what was scored, how, with what (checked on resume)
    sequences/part-000000.parquet per-sequence table of input records [0, S), S = shard_size
    tokens/part-000000.parquet    per-token table of the same records (with --per-token)
    rejects/part-000000.jsonl     bad records of the same range (with --on-bad-row=skip)
    summary.json                  totals, written when the run completes
    .lock                         held by the run writing the directory (`mia_fast.scoring.lock`)

Shard ``i`` covers the input records ``[i*S, (i+1)*S)`` (good and bad ones alike). Every file is
written to a temporary name and renamed into place, and a shard's ``sequences`` file is written
last: its presence means the shard is complete. A rerun of the same command skips the completed
shards and continues with the next record, so no row is lost or written twice; a rerun with a
different model, input or parameters is refused, and so is a second run while one is writing.

A directory belongs to one job: every shard carries the job's tag (a hash of the manifest's
``identity``), checked on resume and on every read. Readers (`read_scores`) refuse a directory
whose run has not completed, a shard of another job, and per-token or reject shards beyond the
last complete sequences shard; `check_same_corpus` refuses a reference scored on other texts or
with another tokenizer or first-token policy than the target.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from .. import atomic
from .._version import __version__
from .corpus import MAX_RECORD_CHARS, Record, Rejected, fingerprint_input, iter_records
from .lock import DirectoryLock, check_unlocked
from .scorer import ScoreOptions, TextScorer

__all__ = [
    "FORMAT_VERSION", "ResumeMismatchError", "ScoreDirectoryError", "IncompleteScoresError", "CorpusMismatchError",
    "ScoreJob", "score_to_directory", "read_scores", "read_manifest", "read_texts", "check_same_corpus", "check_same_model", "run_tag",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUMMARY = "summary.json"
_MODEL_FILES = ("*.safetensors", "*.json", "*.model", "*.txt", "*.tiktoken")


class ResumeMismatchError(ValueError):
    """The score directory holds results of a different model, input or parameters."""


class ScoreDirectoryError(ValueError):
    """A score directory is damaged or holds files of another job."""


class IncompleteScoresError(ScoreDirectoryError):
    """The score directory's run has not completed (interrupted, failed or still running)."""


class EmptyRunError(ValueError):
    """The input holds no record that can be scored."""


class CorpusMismatchError(ValueError):
    """Two score directories were not scored on the same texts with the same tokenization."""


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
    max_record_chars: Optional[int] = MAX_RECORD_CHARS

    def __post_init__(self) -> None:
        path = Path(self.model)
        if path.suffix == ".gguf" and self.gguf_file is None:  # a GGUF file: its folder + its name
            self.model, self.gguf_file = str(path.parent), path.name
        if self.shard_size < 1:
            raise ValueError(f"shard_size: expected a positive number of records, got {self.shard_size}")

    def records(self, on_bad_row: str = "error", start: int = 0) -> Iterator[Union[Record, Rejected]]:
        """The input's records as this job reads them (`iter_records`)."""
        return iter_records(self.input, format=self.input_format, text_field=self.text_field, id_field=self.id_field,
                            label_field=self.label_field, text_unit=self.text_unit, on_bad_row=on_bad_row,
                            start=start, max_record_chars=self.max_record_chars)

    def identity(self) -> dict[str, Any]:
        """The manifest entries that must not change between a run and its resumption."""
        return {
            "format_version": FORMAT_VERSION,
            "model": {"path": str(Path(self.model).resolve()), "gguf_file": self.gguf_file,
                      **model_fingerprint(self.model, self.gguf_file)},
            "input": {"path": str(Path(self.input).resolve()), "format": self.input_format,
                      "text_field": self.text_field, "id_field": self.id_field, "label_field": self.label_field,
                      "text_unit": self.text_unit, "max_record_chars": self.max_record_chars,
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


def run_tag(identity: dict[str, Any]) -> str:
    """The tag that every shard of the job with this manifest ``identity`` carries."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def read_manifest(out_dir: Union[str, Path]) -> dict[str, Any]:
    """The manifest of a score directory (`ScoreDirectoryError` when it is damaged)."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"out_dir: {str(out_dir)!r} is not a score directory (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ScoreDirectoryError(f"{str(path)!r} is damaged ({err}); this directory cannot be trusted") from None
    if not isinstance(manifest, dict) or "identity" not in manifest or "run_tag" not in manifest:
        raise ScoreDirectoryError(f"{str(path)!r} is not a mia_fast manifest (no identity or run_tag)")
    return manifest


def _check_writable(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"out_dir: expected a directory, got {str(out_dir)!r}, which is a file")
    existing = out_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"out_dir: {str(out_dir)!r} cannot be created: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"out_dir: {str(existing)!r} is not writable by this user")


def check_directory(out_dir: Path, identity: dict[str, Any], *, probe_lock: bool = True) -> dict[str, Any]:
    """Check, without writing anything, that ``out_dir`` can hold this job: empty, or the same job.

    Returns the existing manifest (empty when there is none, or when it is another job's that
    wrote no shard: e.g. a run stopped by a bad option or a wrong field before its first shard,
    whose corrected rerun starts afresh). Raises `ResumeMismatchError` when the directory holds
    another job's scores or shards without a manifest, `ScoreDirectoryError` when a shard carries
    another job's tag, `DirectoryBusyError` while another run writes it (with ``probe_lock``; the
    holder of the lock passes False).
    """
    _check_writable(out_dir)
    if not out_dir.is_dir():
        return {}
    if probe_lock:
        check_unlocked(out_dir)
    old: dict[str, Any] = {}
    if (out_dir / MANIFEST).is_file():
        old = read_manifest(out_dir)
        diffs = _differences(old.get("identity", {}), identity)
        if diffs and not _holds_shards(out_dir):
            return {}
        if diffs:
            raise ResumeMismatchError(
                f"out_dir: {str(out_dir)!r} holds scores of a different job; refusing to mix results. "
                f"Differences: {'; '.join(diffs)}. Use another output directory (or delete this one)."
            )
    elif _holds_shards(out_dir):
        raise ResumeMismatchError(
            f"out_dir: {str(out_dir)!r} holds score shards but no {MANIFEST}, so nothing says which job wrote "
            "them; refusing to mix them with this job's. Use another output directory (or delete this one)."
        )
    _check_tags(out_dir, run_tag(identity), _all_shard_files(out_dir))
    return old


def prepare_directory(out_dir: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """`check_directory`, then make ``out_dir`` ready to (re)write shards; returns the old manifest.

    Call it holding the directory's `DirectoryLock`: the temporaries it removes are then those of
    dead runs only.
    """
    old = check_directory(out_dir, identity, probe_lock=False)
    for sub in ("sequences", "tokens", "rejects"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    _remove_temporaries(out_dir)
    (out_dir / SUMMARY).unlink(missing_ok=True)
    return old


_SUFFIX = {"sequences": "parquet", "tokens": "parquet", "rejects": "jsonl"}


def _shard_files(out_dir: Path, table: str) -> dict[int, Path]:
    """Shard index -> file, of one table."""
    files: dict[int, Path] = {}
    for path in sorted((out_dir / table).glob(f"part-*.{_SUFFIX[table]}")):
        index = path.name[len("part-"):-len(_SUFFIX[table]) - 1]
        if not index.isdigit():
            raise ScoreDirectoryError(f"{str(path)!r}: not a shard name (expected part-NNNNNN.{_SUFFIX[table]})")
        files[int(index)] = path
    return files


def _all_shard_files(out_dir: Path) -> list[Path]:
    return [path for table in _SUFFIX for path in _shard_files(out_dir, table).values()]


def _holds_shards(out_dir: Path) -> bool:
    return any(next((out_dir / sub).glob("part-*"), None) is not None for sub in _SUFFIX)


def _shard_tag(path: Path) -> Optional[str]:
    """The run tag a shard file carries (None for a rejects file of an older version, which has none)."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            metadata = pq.read_schema(path).metadata or {}
            return metadata.get(b"mia_fast.run", b"").decode()
        with open(path, encoding="utf-8") as f:
            first = json.loads(f.readline())
        return first.get("run")
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise ScoreDirectoryError(f"{str(path)!r} is damaged ({err})") from None


def _check_tags(out_dir: Path, tag: str, files: Iterable[Path]) -> None:
    for path in files:
        found = _shard_tag(path)
        if found == "":
            raise ScoreDirectoryError(
                f"{str(path)!r} carries no run tag: it was not written by mia-fast score (edited or copied by hand?); "
                "refusing to read it as part of the run. Score into a fresh directory."
            )
        if found is not None and found != tag:
            raise ScoreDirectoryError(
                f"{str(path)!r} belongs to another job (run tag {found!r}, this directory's job is {tag!r}); "
                f"refusing to mix results. Files were copied or written into {str(out_dir)!r} by hand: "
                "remove them, or score into another directory."
            )


def text_hash(text: str) -> str:
    """The ``text_hash`` column: 16 hex digits of the SHA-256 of the UTF-8 text (aligns corpora by content)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _shard_name(i: int, suffix: str) -> str:
    return f"part-{i:06d}.{suffix}"


def _completed_shards(out_dir: Path) -> int:
    i = 0
    while (out_dir / "sequences" / _shard_name(i, "parquet")).is_file():
        i += 1
    return i


def _remove_temporaries(out_dir: Path) -> None:
    for sub in ("", *_SUFFIX):
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
        lines = [json.dumps({"row": r.index, "source": r.source, "reason": r.reason, "raw": r.raw, "run": tag})
                 for r in bad]
        atomic.write_bytes(out_dir / "rejects" / _shard_name(i, "jsonl"), ("\n".join(lines) + "\n").encode())
    if per_token is not None:
        seq = per_token.pop("seq")
        rows = np.array([r.index for r in good], dtype=np.int64)
        ids = np.array([r.id for r in good], dtype=object)
        _atomic_write_parquet(
            out_dir / "tokens" / _shard_name(i, "parquet"), {"row": rows[seq], "id": ids[seq], **per_token}, meta
        )
    table: dict[str, Any] = {"row": np.array([r.index for r in good], dtype=np.int64), "id": [r.id for r in good],
                             "text_hash": [text_hash(r.text) for r in good]}
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
    from .lm import check_device, check_model_source, load_model

    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row: expected 'error' or 'skip', got {on_bad_row!r}")
    out_dir = Path(out_dir)
    identity = job.identity()
    # Everything that can be checked is checked before the model loads, and nothing is written
    # until it has loaded: a failed load leaves no empty directory behind.
    check_model_source(job.model, job.gguf_file)
    check_device(device)
    check_directory(out_dir, identity)
    _check_input(job, on_bad_row)
    t_load = time.perf_counter()
    model, tokenizer = load_model(
        job.model, gguf_file=job.gguf_file, dtype=job.dtype, device=device, trust_remote_code=trust_remote_code
    )
    with DirectoryLock(out_dir):
        prepare_directory(out_dir, identity)
        return _run(job, out_dir, identity, model, tokenizer, device, on_bad_row, progress, t_load)


def _check_input(job: ScoreJob, on_bad_row: str, peek: int = 1000) -> None:
    """Read the input's first records before the model loads: a wrong field or format costs no model load.

    Raises the first record's `BadRecordError` (under ``on_bad_row='error'``), or a ValueError when
    none of the first ``peek`` records is good (under ``'skip'``, every record would be rejected).
    """
    records = job.records(on_bad_row)
    first_bad: Optional[Rejected] = None
    n = 0
    with contextlib.closing(records):  # closes the input file when it returns early
        for n, item in enumerate(records, start=1):
            if isinstance(item, Record):
                return
            first_bad = first_bad or item
            if n == peek:
                break
    if first_bad is None:
        raise EmptyRunError(f"input: {job.input!r} holds no records; nothing to score")
    raise EmptyRunError(
        f"input: none of the first {n} records of {job.input!r} can be scored; the first was rejected at "
        f"{first_bad.source}: {first_bad.reason}"
    )


def _run(job: ScoreJob, out_dir: Path, identity: dict[str, Any], model: Any, tokenizer: Any, device: str,
         on_bad_row: str, progress: Optional[Callable[[int, int], None]], t_load: float) -> dict[str, Any]:
    """Score the shards not yet done into the prepared, locked ``out_dir``; returns the summary."""
    done = _completed_shards(out_dir)
    t_start = time.perf_counter()
    scorer = TextScorer(model, tokenizer, job.options, head=job.head)
    tag = run_tag(identity)
    manifest = {
        "identity": identity,
        "settings": scorer.settings,
        "versions": _versions(),
        "tokenizer": type(tokenizer).__name__,
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "model_class": type(model).__name__,
        "run_tag": tag,
        "status": "running",
        "resumed_from_shard": done,
        "device": str(device),
    }
    _atomic_write_json(out_dir / MANIFEST, manifest)
    records = job.records(on_bad_row, start=done * job.shard_size)
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
    complete(out_dir, manifest, summary)
    return summary


def complete(out_dir: Path, manifest: dict[str, Any], summary: dict[str, Any]) -> None:
    """Mark a run complete: the manifest records the shard and row counts that readers verify."""
    manifest.update(status="complete", shards=len(_shard_files(out_dir, "sequences")), rows=summary["rows"],
                    rejects=summary["rejects"])
    _atomic_write_json(out_dir / MANIFEST, manifest)
    _atomic_write_json(out_dir / SUMMARY, summary)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of a tokenizer's vocabulary, special tokens and class: equal for the same tokenization."""
    vocab = sorted(tokenizer.get_vocab().items())
    special = sorted((str(k), str(v)) for k, v in (getattr(tokenizer, "special_tokens_map", None) or {}).items())
    blob = json.dumps([type(tokenizer).__name__.removesuffix("Fast"), vocab, special], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


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


def read_texts(manifest: dict[str, Any], rows: set[int]) -> dict[int, str]:
    """Row -> text of ``rows``, read again from the corpus file named in a manifest.

    Empty, with a warning, when the input was not a file, is gone, or changed since it was scored.
    """
    source = manifest.get("identity", {}).get("input", {})
    path = source.get("path")
    if path is None:
        log.warning("the score directory's input is not a corpus file: its texts cannot be read again")
        return {}
    if not Path(path).exists():
        log.warning("the corpus %s is gone", path)
        return {}
    if fingerprint_input(path)["sha256"] != source.get("sha256"):
        log.warning("the corpus %s changed since it was scored", path)
        return {}
    records = iter_records(path, format=source.get("format", "auto"), text_field=source.get("text_field", "text"),
                           id_field=source.get("id_field"), label_field=source.get("label_field"),
                           text_unit=source.get("text_unit", "line"), on_bad_row="skip", max_record_chars=None)
    last = max(rows) if rows else -1
    texts = {}
    for item in records:
        if item.index > last:
            break
        if isinstance(item, Record) and item.index in rows:
            texts[item.index] = item.text
    return texts


def read_scores(out_dir: Union[str, Path], table: str = "sequences", *, allow_incomplete: bool = False):
    """Read a score directory's table into a pandas DataFrame, after checking that it can be trusted.

    Parameters
    ----------
    out_dir : str or Path
        A directory written by ``mia-fast score``.
    table : {'sequences', 'tokens', 'rejects'}
    allow_incomplete : bool
        Read the complete shards of a run that has not completed (interrupted, or still running)
        with a warning, instead of raising `IncompleteScoresError`.

    Returns
    -------
    pandas.DataFrame
        Rows in input order; ``df.attrs["manifest"]`` holds the manifest.

    Raises
    ------
    IncompleteScoresError
        The run has not completed (and ``allow_incomplete`` is False).
    ScoreDirectoryError
        A shard carries another job's tag, is damaged or missing, or the row count disagrees with
        the manifest.

    Notes
    -----
    Per-token and reject shards count only up to the complete sequences shards: a shard's
    sequences file is written last, so the others of a shard cut short are never read.
    """
    import pandas as pd
    import pyarrow.parquet as pq

    if table not in _SUFFIX:
        raise ValueError(f"table: expected 'sequences', 'tokens' or 'rejects', got {table!r}")
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    sequences = _shard_files(out_dir, "sequences")
    if manifest.get("status") != "complete":
        message = (f"{str(out_dir)!r}: its run has not completed (status {manifest.get('status')!r}, "
                   f"{len(sequences)} complete shards): it was interrupted, failed, or is still running. "
                   "Rerun the same `mia-fast score` command to finish it")
        if not allow_incomplete:
            raise IncompleteScoresError(message + ", or read the complete shards with allow_incomplete=True "
                                        "(--allow-incomplete).")
        warnings.warn(message + "; reading the complete shards only.", stacklevel=2)
    elif "shards" in manifest and sorted(sequences) != list(range(manifest["shards"])):
        missing = sorted(set(range(manifest["shards"])) - set(sequences))
        raise ScoreDirectoryError(
            f"{str(out_dir)!r}: the manifest says {manifest['shards']} sequences shards, found {len(sequences)}"
            + (f" (missing {', '.join(_shard_name(i, 'parquet') for i in missing[:5])})" if missing else "")
        )
    files = {i: p for i, p in _shard_files(out_dir, table).items() if i in sequences}
    _check_tags(out_dir, manifest["run_tag"], files.values())
    if table == "rejects":
        rows = []
        for path in files.values():
            rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        df = pd.DataFrame(rows, columns=["row", "source", "reason", "raw"])
    else:
        if not files:
            hint = " (score with --per-token)" if table == "tokens" else ""
            raise FileNotFoundError(f"table: {str(out_dir)!r} has no {table} shards{hint}")
        parts = []
        for path in files.values():
            try:
                parts.append(pq.read_table(path).to_pandas())
            except (OSError, ValueError) as err:
                raise ScoreDirectoryError(f"{str(path)!r} is damaged ({err})") from None
        df = pd.concat(parts, ignore_index=True)
    expected = {"sequences": "rows", "rejects": "rejects"}.get(table)
    if manifest.get("status") == "complete" and expected in manifest and len(df) != manifest[expected]:
        raise ScoreDirectoryError(f"{str(out_dir)!r}: {len(df)} {table} rows read, the manifest says "
                                  f"{manifest[expected]}; this directory was changed after its run completed")
    df.attrs["manifest"] = manifest
    return df


_SAME_INPUT = ("sha256", "format", "text_field", "id_field", "text_unit")
_SAME_PARAMS = {"first_token": "--first-token", "max_length": "--max-length", "stride": "--stride",
                "context_tokens": "--context-tokens", "context_sha256": "--context-file"}


def check_same_corpus(target: Any, reference: Any, *, names: tuple[str, str] = ("target", "reference")) -> None:
    """Raise `CorpusMismatchError` unless two score tables hold the same texts, tokenized alike.

    Parameters
    ----------
    target, reference : pandas.DataFrame
        Tables from `read_scores` (their ``attrs["manifest"]`` is compared); a table without a
        manifest (e.g. a plain Parquet file) is not checked.
    names : (str, str)
        How the two are named in the error (e.g. their directories).

    Notes
    -----
    The texts are the same when the input files have the same SHA-256 and were read with the same
    fields, or else when the two tables have the same ids and, for each id, the same ``text_hash``.
    The tokenization is the same when the tokenizers' vocabularies and special tokens
    (``tokenizer_sha256``) and the first-token policy, window and context settings agree.
    """
    a, b = target.attrs.get("manifest"), reference.attrs.get("manifest")
    if a is None or b is None:
        return
    problems = []
    input_a, input_b = a["identity"].get("input", {}), b["identity"].get("input", {})
    if any(input_a.get(k) != input_b.get(k) for k in _SAME_INPUT):
        if "text_hash" in target.columns and "text_hash" in reference.columns:
            ta = dict(zip(target["id"].astype(str), target["text_hash"]))
            tb = dict(zip(reference["id"].astype(str), reference["text_hash"]))
            if ta.keys() != tb.keys():
                only = sorted(ta.keys() ^ tb.keys())
                problems.append(f"their ids differ ({len(only)} ids in one only, e.g. {only[:3]})")
            else:
                changed = [k for k in ta if ta[k] != tb[k]]
                if changed:
                    problems.append(f"{len(changed)} documents have other texts under the same id, e.g. {changed[:3]}")
        else:
            problems.append(f"other input files (sha256 {input_a.get('sha256', '?')[:12]} vs "
                            f"{input_b.get('sha256', '?')[:12]}, {input_a.get('path')} vs {input_b.get('path')})")
    problems += _tokenization_problems(a, b)
    if problems:
        raise CorpusMismatchError(
            f"{names[1]} was not scored on the same texts with the same tokenization as {names[0]}: "
            + "; ".join(problems) + ". Score both from one input file with the same options."
        )


def _tokenization_problems(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """How two manifests' tokenizers and tokenization settings differ (empty when they agree)."""
    problems = []
    if a.get("tokenizer_sha256") != b.get("tokenizer_sha256") or a.get("tokenizer") != b.get("tokenizer"):
        problems.append(f"other tokenizers ({a.get('tokenizer')} {str(a.get('tokenizer_sha256'))[:12]} vs "
                        f"{b.get('tokenizer')} {str(b.get('tokenizer_sha256'))[:12]})")
    sa, sb = a.get("settings") or {}, b.get("settings") or {}
    for key, flag in _SAME_PARAMS.items():
        if sa.get(key) != sb.get(key):
            problems.append(f"{key} {sa.get(key)!r} vs {sb.get(key)!r} ({flag})")
    return problems


def check_same_model(first: Any, other: Any, *, names: tuple[str, str] = ("target", "non-members")) -> None:
    """Raise `CorpusMismatchError` unless two score tables of different texts were scored alike.

    Scores of one text set can calibrate those of another (quantile regression's known
    non-members) only when the same model weights, dtype, tokenizer and tokenization settings
    produced both.

    Parameters
    ----------
    first, other : pandas.DataFrame
        Tables from `read_scores`; a table without a manifest (a plain Parquet file) is not checked.
    names : (str, str)
        How the two are named in the error.
    """
    a, b = first.attrs.get("manifest"), other.attrs.get("manifest")
    if a is None or b is None:
        return
    problems = []
    model_a, model_b = a["identity"].get("model", {}), b["identity"].get("model", {})
    if model_a.get("sha256") != model_b.get("sha256"):
        problems.append(f"other model weights (sha256 {str(model_a.get('sha256'))[:12]} at {model_a.get('path')} vs "
                        f"{str(model_b.get('sha256'))[:12]} at {model_b.get('path')})")
    params_a, params_b = a["identity"].get("params", {}), b["identity"].get("params", {})
    for key, flag in (("dtype", "--dtype"), ("head", "--head")):
        if params_a.get(key) != params_b.get(key):
            problems.append(f"{key} {params_a.get(key)!r} vs {params_b.get(key)!r} ({flag})")
    problems += _tokenization_problems(a, b)
    if problems:
        raise CorpusMismatchError(
            f"{names[1]} was not scored by the same model with the same options as {names[0]}: "
            + "; ".join(problems) + ". Score both with one model and the same options."
        )
