"""Streaming corpus readers: every record numbered, every bad record reported exactly.

`iter_records` reads JSON Lines, CSV/TSV, Parquet, plain text and datasets saved with
``datasets.Dataset.save_to_disk`` as a stream with bounded memory (one line, CSV record or
batch of rows at a time). Every item of the stream, good (`Record`) or bad (`Rejected`), gets the
next ``index``, so a run interrupted after ``R`` items resumes with ``start=R`` and sees exactly
the items it had not seen; the items before ``start`` are only counted, never validated.

A record's location (``source``) is ``"path:line"`` (1-based number of the record's first line)
for line-based formats and ``"path:row N"`` (0-based row number) for Parquet and saved datasets.
With ``on_bad_row="error"`` the first bad record raises `BadRecordError` naming that location;
with ``on_bad_row="skip"`` a `Rejected` item takes its place in the stream.

Validation shared by every format (`_make_record`):

- text: present, a string (Parquet binary values are decoded as UTF-8), not empty or whitespace,
  encodable as UTF-8 (a JSON ``"\\ud800"`` escape is a bad record);
- id (when ``id_field`` is given): present, a non-empty string or an integer (not a bool);
- label (when ``label_field`` is given): present and one of 0, 1, True, False, "0", "1"
  (floats such as 1.0 are bad records);
- length: a text longer than ``max_record_chars`` characters (default `MAX_RECORD_CHARS`) is a
  bad record, so that one huge record cannot take unbounded memory while it is scored;
- unique ids: a record whose id (as a string: ``1`` and ``"1"`` are the same id) was the id of an
  earlier good record is a bad record naming that record. Resuming with ``start`` reads (without
  yielding) the records before ``start`` for their ids, so this holds across resumed runs.

A field missing from a JSON Lines record is reported with the fields the record has; when no good
record came before it, the error asks whether the field name (``--text-field`` etc.) is right
rather than suggesting to skip the row. CSV headers, Parquet schemas and datasets are checked when
`iter_records` is called: a missing column, or a used column that appears twice, is a ValueError
listing the columns. A JSON object that repeats a used field is a bad record.

Compressed input (``.gz``) is decoded as it is read, so damage past the records already read is
only found at the end of the stream: `verify_input` (and `fingerprint_input`, in the same read
that hashes the file) decompress the whole stream once and raise ValueError for a CRC mismatch, a
truncated stream or corrupt data, before anything is scored.

Format notes: bytes are decoded strictly as UTF-8 per record, so a bad byte makes one bad record
and its offset (from the start of the record) is reported; a leading UTF-8 BOM is ignored; a
``.gz`` suffix means gzip whatever the format; blank (whitespace-only) lines are never records
but keep their line numbers. CSV/TSV need a header line, are parsed in strict mode (a stray quote
or an unterminated quoted field is a bad record) and raise the process-wide
``csv.field_size_limit`` to 128 Mi characters. A saved ``DatasetDict`` is read one split at a
time (``split=`` or the split's own directory).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import itertools
import json
import logging
import os
import zlib
from collections import Counter
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence, Union

__all__ = [
    "Record",
    "Rejected",
    "BadRecordError",
    "Item",
    "FORMATS",
    "TEXT_UNITS",
    "ON_BAD_ROW",
    "detect_format",
    "iter_records",
    "fingerprint_input",
    "verify_input",
    "MAX_RECORD_CHARS",
]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

FORMATS: tuple[str, ...] = ("jsonl", "csv", "tsv", "parquet", "text", "hf_dataset")
TEXT_UNITS: tuple[str, ...] = ("line", "paragraph")
ON_BAD_ROW: tuple[str, ...] = ("error", "skip")

# Default of `iter_records`'s max_record_chars. Scoring a text takes memory in proportion to its
# length (the tokenizer's encoding, ~400 bytes per token, and the per-token statistics); a text of
# 500,000 characters peaks below a shard of 1,000 texts of 1,000 characters each (measured with
# the tiny models of tests/lm_fixtures.py: 683 MiB against 759 MiB).
MAX_RECORD_CHARS = 500_000

_SKIP_HINT = "(use --on-bad-row=skip to write such rows to a rejects file and continue)"
# The command-line option that sets each field.
_OPTIONS = {"text_field": "--text-field", "id_field": "--id-field", "label_field": "--label-field"}
# Characters of a bad record kept in `Rejected.raw`.
_RAW_CHARS = 500
# Rows per batch read from Parquet files and saved datasets.
_BATCH_ROWS = 1024
# Largest CSV field, in characters (the csv module's default limit is 128 Ki).
_CSV_FIELD_LIMIT = 1 << 27
_HASH_CHUNK = 1 << 20
_BOM = b"\xef\xbb\xbf"

_SUFFIXES: dict[str, str] = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".jsonlines": "jsonl", ".json": "jsonl",
    ".csv": "csv", ".tsv": "tsv",
    ".parquet": "parquet", ".pq": "parquet",
    ".txt": "text", ".text": "text", ".md": "text",
}
_GZIP_FORMATS = ("jsonl", "csv", "tsv", "text")
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


# --------------------------------------------------------------------------------------------
# public types


@dataclasses.dataclass(frozen=True)
class Record:
    """One good document of the input.

    Attributes
    ----------
    index : int
        0-based position in the input stream; bad records take positions too.
    id : str
        The ``id_field`` value as a string, or ``str(index)`` without an ``id_field``.
    text : str
        The document, unchanged (never empty or whitespace-only).
    label : int or None
        0 or 1 from ``label_field``; None without a ``label_field``.
    source : str
        ``"path:line"`` (1-based first line) or ``"path:row N"`` (0-based row).
    """

    index: int
    id: str
    text: str
    label: Optional[int]
    source: str


@dataclasses.dataclass(frozen=True)
class Rejected:
    """A bad record, in the stream in place of a `Record` when ``on_bad_row="skip"``.

    Attributes
    ----------
    index : int
        0-based position in the input stream.
    source : str
        ``"path:line"`` or ``"path:row N"``, as for `Record`.
    reason : str
        What is wrong, e.g. ``"missing field 'text'"`` or ``"not UTF-8 (byte 0xff at offset 12)"``.
    raw : str
        The raw line(s) or row, decoded with ``errors="replace"`` and cut to 500 characters.
    """

    index: int
    source: str
    reason: str
    raw: str


Item = Union[Record, Rejected]


class BadRecordError(ValueError):
    """A bad record met with ``on_bad_row="error"``.

    Parameters
    ----------
    path : str
        The input file or directory.
    reason : str
        What is wrong with the record.
    line : int, optional
        1-based first line of the record (line-based formats).
    row : int, optional
        0-based row (Parquet, saved datasets).
    hint : str, optional
        What to do about it, in parentheses after the reason (default: skipping such rows with
        ``--on-bad-row=skip``).
    """

    def __init__(self, path: str, reason: str, line: Optional[int] = None,
                 row: Optional[int] = None, hint: Optional[str] = None) -> None:
        self.path = path
        self.reason = reason
        self.line = line
        self.row = row
        self.hint = _SKIP_HINT if hint is None else hint
        self.source = _Loc(path, line, row).source
        super().__init__(f"{self.source}: {reason} {self.hint}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason, self.line, self.row, self.hint))


# --------------------------------------------------------------------------------------------
# internal plumbing


class _Bad(Exception):
    """A record-level problem; becomes a `Rejected` or a `BadRecordError`."""

    def __init__(self, reason: str, missing: Optional[str] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.missing = missing  # the argument (e.g. "text_field") of a missing field


class _Loc(NamedTuple):
    path: str
    line: Optional[int] = None
    row: Optional[int] = None

    @property
    def source(self) -> str:
        if self.row is not None:
            return f"{self.path}:row {self.row}"
        return f"{self.path}:{self.line}"


@dataclasses.dataclass(frozen=True)
class _Fields:
    text: str
    id: Optional[str]
    label: Optional[str]

    def columns(self) -> list[str]:
        return list(dict.fromkeys(c for c in (self.text, self.id, self.label) if c is not None))

    def argument(self, column: str) -> str:
        """The argument(s) naming ``column``, e.g. ``"text_field"``."""
        names = [("text_field", self.text), ("id_field", self.id), ("label_field", self.label)]
        return ", ".join(arg for arg, c in names if c == column)


class _Unit(NamedTuple):
    """One record as read, before validation: its location and a format-specific payload."""

    loc: _Loc
    payload: Any


class _Reader:
    """A format: `units` yields the records from ``start`` on; `fields` and `raw` read a payload.

    Constructors check what can be checked once (columns, splits); `units` opens the input and
    closes it when the generator finishes or is closed.
    """

    def units(self, start: int) -> Iterator[_Unit]:
        raise NotImplementedError

    def fields(self, payload: Any) -> Mapping[str, Any]:
        """The record's fields; raises `_Bad` when the payload cannot be read."""
        raise NotImplementedError

    def raw(self, payload: Any) -> str:
        raise NotImplementedError


def _truncate(text: str) -> str:
    return text if len(text) <= _RAW_CHARS else text[:_RAW_CHARS] + "..."


def _raw_bytes(data: bytes) -> str:
    return _truncate(data[: 4 * _RAW_CHARS + 4].decode("utf-8", errors="replace"))


def _decode_utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Bad(f"not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line


def _is_gzip(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def _open_binary(path: Path) -> IO[bytes]:
    if _is_gzip(path):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _numbered_lines(f: IO[bytes], path: Path) -> Iterator[tuple[int, bytes]]:
    """``(1-based line number, line)`` with the terminator kept and a leading UTF-8 BOM removed.

    A file that cannot be read to its end (a truncated or damaged ``.gz``, a read error) raises
    ValueError naming the file and the last line read: no record after it can be trusted.
    """
    number = 0
    lines = iter(f)
    while True:
        try:
            line = next(lines)
        except StopIteration:
            return
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(f"{path}: cannot read beyond line {number} ({type(e).__name__}: {e}); "
                             "is the file truncated or damaged?") from None
        number += 1
        if number == 1 and line.startswith(_BOM):
            line = line[len(_BOM):]
        yield number, line


def _is_blank(line: bytes) -> bool:
    """Whitespace only, Unicode whitespace (NBSP, U+3000, ...) included; undecodable = not blank."""
    if not line.strip():
        return True
    if line.isascii():
        return False
    try:
        return not line.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


def _line_units(path: Path, numbered: Iterable[tuple[int, Any]], start: int) -> Iterator[_Unit]:
    """Units of ``(first line number, payload)`` pairs, the first ``start`` pairs dropped unseen."""
    name = str(path)
    for number, payload in itertools.islice(numbered, start, None):
        yield _Unit(_Loc(name, number, None), payload)


# --------------------------------------------------------------------------------------------
# validation shared by every format


def _field_list(fields: Mapping[str, Any]) -> str:
    names = list(itertools.islice(fields, 20))
    return repr(names)[:-1] + ", ...]" if len(fields) > len(names) else repr(names)


def _get(fields: Mapping[str, Any], name: str, argument: str) -> Any:
    if name not in fields:
        raise _Bad(f"missing field {name!r} ({argument}); the record has the fields "
                   f"{_field_list(fields)}", missing=argument)
    value = fields[name]
    if value is None:
        raise _Bad(f"field {name!r} is null")
    return value


def _check_encodable(value: str, name: str) -> str:
    """``value``, unless it has a lone surrogate (JSON ``"\\ud800"``) that UTF-8 cannot encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _Bad(f"field {name!r} has a lone surrogate (U+{ord(value[e.start]):04X} at "
                   f"character {e.start})") from None
    return value


def _check_text(fields: Mapping[str, Any], name: str, max_chars: Optional[int]) -> str:
    value = _get(fields, name, "text_field")
    if isinstance(value, (bytes, bytearray)):
        value = _decode_utf8(bytes(value))
    if not isinstance(value, str):
        raise _Bad(f"field {name!r} is {type(value).__name__}, expected a string")
    if not value.strip():
        raise _Bad("empty text")
    if max_chars is not None and len(value) > max_chars:
        raise _Bad(f"text of {len(value):,} characters is longer than the limit of {max_chars:,} "
                   "(max_record_chars; raise it with --max-record-chars, memory grows with a "
                   "record's length)")
    nul = value.find("\x00")
    if nul >= 0:
        raise _Bad(f"field {name!r} has a NUL character (at character {nul}); "
                   "UTF-16 or binary input? mia_fast reads UTF-8")
    return _check_encodable(value, name)


def _check_id(fields: Mapping[str, Any], name: str) -> str:
    value = _get(fields, name, "id_field")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise _Bad(f"id {value!r} is {type(value).__name__}, expected a string or an integer")
    if not value:
        raise _Bad("empty id")
    return _check_encodable(value, name)


def _check_label(fields: Mapping[str, Any], name: str) -> int:
    value = _get(fields, name, "label_field")
    if type(value) in (int, bool) and value in (0, 1):
        return int(value)
    if value in ("0", "1"):
        return int(value)
    raise _Bad(f"label {value!r} is not 0/1")


def _make_record(index: int, loc: _Loc, fields: Mapping[str, Any], spec: _Fields,
                 max_chars: Optional[int]) -> Record:
    text = _check_text(fields, spec.text, max_chars)
    rid = str(index) if spec.id is None else _check_id(fields, spec.id)
    label = None if spec.label is None else _check_label(fields, spec.label)
    return Record(index=index, id=rid, text=text, label=label, source=loc.source)


def _options(argument: str) -> str:
    return ", ".join(_OPTIONS[a] for a in argument.split(", "))


def _check_columns(path: Path, kind: str, spec: _Fields, available: Sequence[str]) -> None:
    """Every used column present once in ``available``; a repeated unused column is a warning."""
    missing = [c for c in spec.columns() if c not in available]
    if missing:
        wanted = " and ".join(f"{c!r} ({spec.argument(c)}, {_options(spec.argument(c))})"
                              for c in missing)
        options = _options(", ".join(spec.argument(c) for c in missing))
        raise ValueError(f"{path}: expected {'a column' if len(missing) == 1 else 'columns'} "
                         f"{wanted} in {kind}, which has the columns {list(available)}: pass "
                         f"{'one of them' if len(missing) == 1 else 'the right names'} with "
                         f"{options}")
    counts = Counter(available)
    for column in [c for c, n in counts.items() if n > 1]:
        positions = [i + 1 for i, c in enumerate(available) if c == column]
        where = ", ".join(map(str, positions[:-1])) + f" and {positions[-1]}"
        if column in spec.columns():
            raise ValueError(f"{path}: {kind} has the column {column!r} ({spec.argument(column)}) "
                             f"{len(positions)} times, at columns {where} (1-based); expected it "
                             "once: rename the other columns so that the one to use is unique")
        log.warning("%s: %s has the column %r %d times, at columns %s (1-based); it is not used",
                    path, kind, column, len(positions), where)


# --------------------------------------------------------------------------------------------
# JSON Lines


class _RepeatedKeys(dict):  # type: ignore[type-arg]
    """A JSON object with repeated keys (json keeps the last value); ``repeated`` counts them."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.repeated = {k: n for k, n in Counter(k for k, _ in pairs).items() if n > 1}


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    return obj if len(obj) == len(pairs) else _RepeatedKeys(pairs)


class _JsonlReader(_Reader):
    """One JSON object per line; blank lines are not records."""

    def __init__(self, path: Path, spec: _Fields) -> None:
        self.path = path
        self.columns = spec.columns()

    def units(self, start: int) -> Iterator[_Unit]:
        with _open_binary(self.path) as f:
            lines = ((n, line) for n, line in _numbered_lines(f, self.path) if not _is_blank(line))
            yield from _line_units(self.path, lines, start)

    def fields(self, payload: bytes) -> Mapping[str, Any]:
        text = _decode_utf8(payload)
        try:
            value = json.loads(text, object_pairs_hook=_json_object)
        except json.JSONDecodeError as e:
            raise _Bad(f"malformed JSON: {e.msg} (col {e.colno})") from None
        except RecursionError:
            raise _Bad("malformed JSON: nested too deeply") from None
        except ValueError as e:  # e.g. an integer with too many digits
            raise _Bad(f"malformed JSON: {e}") from None
        if not isinstance(value, dict):
            raise _Bad(f"not a JSON object (got {type(value).__name__}); "
                       "JSON Lines needs one object per line")
        if isinstance(value, _RepeatedKeys):
            for name in self.columns:
                if name in value.repeated:
                    raise _Bad(f"field {name!r} appears {value.repeated[name]} times in the "
                               "object; expected it once (JSON keeps only the last value)")
        return value

    def raw(self, payload: bytes) -> str:
        return _raw_bytes(_strip_eol(payload))


# --------------------------------------------------------------------------------------------
# CSV / TSV


class _LineTap:
    """Lines for `csv.reader`, decoded with ``surrogateescape``; keeps the raw bytes read.

    `take` returns the bytes read since the previous call: after ``next(reader)``, exactly the
    lines of that record (the reader never reads ahead). They are decoded strictly again when
    the record is validated, so a non-UTF-8 byte is reported with its offset.
    """

    def __init__(self, f: IO[bytes], path: Path) -> None:
        self._lines = _numbered_lines(f, path)
        self._taken: list[bytes] = []

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        _, line = next(self._lines)
        self._taken.append(line)
        return line.decode("utf-8", errors="surrogateescape")

    def take(self) -> bytes:
        data = b"".join(self._taken)
        self._taken.clear()
        return data


class _CsvRow(NamedTuple):
    row: Optional[list[str]]  # None when the csv module could not parse the record
    data: bytes
    error: Optional[str]


class _CsvReader(_Reader):
    """Comma- or tab-separated values with a header line; blank lines are not records."""

    def __init__(self, path: Path, delimiter: str, spec: _Fields) -> None:
        self.path = path
        self.delimiter = delimiter
        csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
        with _open_binary(path) as f:
            tap = _LineTap(f, self.path)
            self.header = self._read_header(csv.reader(tap, **self._dialect()), tap)
        _check_columns(path, "the CSV header", spec, self.header)

    def _dialect(self) -> dict[str, Any]:
        return {"delimiter": self.delimiter, "strict": True}

    def _read_header(self, reader: Any, tap: _LineTap) -> list[str]:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise ValueError(
                    f"{self.path}:{reader.line_num}: malformed CSV header: {e}") from None
            data = tap.take()
            if not row:
                continue
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{self.path}:{reader.line_num}: the header line is not UTF-8 "
                                 f"(byte 0x{data[e.start]:02x} at offset {e.start})") from None
            return row
        raise ValueError(f"{self.path}: expected a header line with the column names, "
                         "got an empty file")

    def units(self, start: int) -> Iterator[_Unit]:
        with _open_binary(self.path) as f:
            tap = _LineTap(f, self.path)
            reader = csv.reader(tap, **self._dialect())
            self._read_header(reader, tap)
            yield from _line_units(self.path, self._rows(reader, tap), start)

    def _rows(self, reader: Any, tap: _LineTap) -> Iterator[tuple[int, _CsvRow]]:
        while True:
            first = reader.line_num + 1
            try:
                row: Optional[list[str]] = next(reader)
                error = None
            except StopIteration:
                return
            except csv.Error as e:
                row, error = None, str(e)
            data = tap.take()
            if row == []:
                continue
            yield first, _CsvRow(row, data, error)

    def fields(self, payload: _CsvRow) -> Mapping[str, Any]:
        if payload.error is not None:
            raise _Bad(f"malformed CSV: {payload.error}")
        _decode_utf8(payload.data)
        row = payload.row or []
        if len(row) != len(self.header):
            raise _Bad(f"expected {len(self.header)} fields (the header's columns), got {len(row)}")
        return dict(zip(self.header, row))

    def raw(self, payload: _CsvRow) -> str:
        return _raw_bytes(_strip_eol(payload.data))


# --------------------------------------------------------------------------------------------
# plain text


class _TextReader(_Reader):
    """One document per non-blank line, or per paragraph (runs of non-blank lines)."""

    def __init__(self, path: Path, text_unit: str, text_field: str) -> None:
        self.path = path
        self.text_unit = text_unit
        self.text_field = text_field

    def units(self, start: int) -> Iterator[_Unit]:
        with _open_binary(self.path) as f:
            lines = ((n, _strip_eol(line)) for n, line in _numbered_lines(f, self.path))
            blocks = _lines(lines) if self.text_unit == "line" else _paragraphs(lines)
            yield from _line_units(self.path, blocks, start)

    def fields(self, payload: bytes) -> Mapping[str, Any]:
        return {self.text_field: _decode_utf8(payload)}

    def raw(self, payload: bytes) -> str:
        return _raw_bytes(payload)


def _lines(lines: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    return ((n, line) for n, line in lines if not _is_blank(line))


def _paragraphs(lines: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    """``(first line number, lines joined with b"\\n")`` for each run of non-blank lines."""
    first, block = 0, []
    for n, line in lines:
        if not _is_blank(line):
            first = first if block else n
            block.append(line)
        elif block:
            yield first, b"\n".join(block)
            block = []
    if block:
        yield first, b"\n".join(block)


# --------------------------------------------------------------------------------------------
# row-based formats: Parquet and saved datasets


def _rows_of(columns: Mapping[str, list[Any]], names: Sequence[str]) -> Iterator[dict[str, Any]]:
    return (dict(zip(names, values)) for values in zip(*(columns[c] for c in names)))


def _raw_row(payload: Mapping[str, Any]) -> str:
    return _truncate(json.dumps(payload, ensure_ascii=False, default=repr))


class _ParquetReader(_Reader):
    """A Parquet file, read in batches of the needed columns only."""

    def __init__(self, path: Path, spec: _Fields) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self.columns = spec.columns()
        try:
            pf = pq.ParquetFile(path)
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise ValueError(f"input: {str(path)!r} is not a readable Parquet file ({err}); it is damaged, "
                             "truncated or of another format (--format)") from None
        with pf:
            _check_columns(path, "the Parquet file", spec, pf.schema_arrow.names)

    def units(self, start: int) -> Iterator[_Unit]:
        import pyarrow.parquet as pq

        with pq.ParquetFile(self.path) as pf:
            sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
            group, row = 0, 0
            while group < len(sizes) and row + sizes[group] <= start:
                row += sizes[group]
                group += 1
            if group == len(sizes):
                return
            batches = pf.iter_batches(batch_size=_BATCH_ROWS, row_groups=range(group, len(sizes)),
                                      columns=self.columns)
            for batch in batches:
                if row + batch.num_rows > start:
                    skip = max(start - row, 0)
                    data = batch.slice(skip).to_pydict()
                    for n, values in enumerate(_rows_of(data, self.columns), row + skip):
                        yield _Unit(_Loc(str(self.path), row=n), values)
                row += batch.num_rows

    def fields(self, payload: Mapping[str, Any]) -> Mapping[str, Any]:
        return payload

    def raw(self, payload: Mapping[str, Any]) -> str:
        return _raw_row(payload)


class _HFDatasetReader(_Reader):
    """A dataset saved with ``save_to_disk``: memory-mapped, read in row ranges."""

    def __init__(self, path: Path, spec: _Fields, split: Optional[str]) -> None:
        try:
            import datasets
        except ImportError:
            raise ImportError(f"{path}: reading a saved Hugging Face dataset needs the `datasets` "
                              "package: pip install datasets") from None
        loaded = datasets.load_from_disk(str(path))
        self.path = path
        if isinstance(loaded, datasets.DatasetDict):
            if split is None:
                raise ValueError(f"split: {path} holds a DatasetDict with splits {list(loaded)}; "
                                 f"pass one of them as split (or the path {path / '<split>'})")
            if split not in loaded:
                raise ValueError(f"split: expected one of {list(loaded)}, got {split!r}")
            loaded, self.path = loaded[split], path / split
        elif split is not None:
            raise ValueError(f"split: {path} holds a single Dataset, not a DatasetDict; "
                             f"expected split=None, got {split!r}")
        _check_columns(path, "the dataset", spec, loaded.column_names)
        self.columns = spec.columns()
        self.dataset = loaded.select_columns(self.columns).with_format(None)

    def units(self, start: int) -> Iterator[_Unit]:
        n = len(self.dataset)
        for begin in range(start, n, _BATCH_ROWS):
            data = self.dataset[begin:min(begin + _BATCH_ROWS, n)]
            for row, values in enumerate(_rows_of(data, self.columns), begin):
                yield _Unit(_Loc(str(self.path), row=row), values)

    def fields(self, payload: Mapping[str, Any]) -> Mapping[str, Any]:
        return payload

    def raw(self, payload: Mapping[str, Any]) -> str:
        return _raw_row(payload)


# --------------------------------------------------------------------------------------------
# public functions


def _check_path(path: PathLike) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"path: expected an existing file or directory, got {str(p)!r} "
                                "(no such file or directory)")
    return p


def detect_format(path: PathLike) -> str:
    """The format of ``path`` from its suffix (or, for a directory, its contents).

    Parameters
    ----------
    path : str or os.PathLike
        ``.jsonl``/``.ndjson``/``.jsonlines``/``.json`` (JSON Lines), ``.csv``, ``.tsv``,
        ``.parquet``/``.pq``, ``.txt``/``.text``/``.md`` (plain text), any of the JSON Lines,
        CSV, TSV or text suffixes followed by ``.gz``, or a directory written by
        ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.

    Returns
    -------
    str
        One of `FORMATS`.
    """
    p = _check_path(path)
    if p.is_dir():
        if any((p / marker).is_file() for marker in _HF_MARKERS):
            return "hf_dataset"
        raise ValueError(f"path: expected a directory written by datasets' save_to_disk "
                         f"(with one of {list(_HF_MARKERS)}), got {str(p)!r}")
    suffixes = [s.lower() for s in p.suffixes]
    gzipped = suffixes[-1:] == [".gz"]
    if gzipped:
        suffixes = suffixes[:-1]
    fmt = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if fmt is None or (gzipped and fmt not in _GZIP_FORMATS):
        known = sorted(_SUFFIXES) + [s + ".gz" for s in sorted(_SUFFIXES)
                                     if _SUFFIXES[s] in _GZIP_FORMATS]
        raise ValueError(f"path: cannot tell the format of {str(p)!r} from its suffix; expected "
                         f"one of {known} or a saved dataset directory, or pass format= "
                         f"one of {list(FORMATS)}")
    return fmt


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")


def _check_field_name(name: str, value: object, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        expected = "a non-empty column name" + (" or None" if optional else "")
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


def _check_arguments(fmt: str, path: Path, text_unit: str, id_field: Optional[str],
                     label_field: Optional[str], split: Optional[str], on_bad_row: str,
                     start: int) -> None:
    _check_choice("text_unit", text_unit, TEXT_UNITS)
    _check_choice("on_bad_row", on_bad_row, ON_BAD_ROW)
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise ValueError(f"start: expected a non-negative integer, got {start!r}")
    if fmt != "text" and text_unit != "line":
        raise ValueError(f"text_unit: applies to plain-text input only; expected 'line' for "
                         f"{fmt} input, got {text_unit!r}")
    if fmt == "text" and (id_field is not None or label_field is not None):
        raise ValueError(f"id_field, label_field: plain-text input has no fields; expected None, "
                         f"got {id_field!r}, {label_field!r}")
    if fmt != "hf_dataset" and split is not None:
        raise ValueError(f"split: applies to saved datasets only; expected None for {fmt} "
                         f"input, got {split!r}")
    if fmt == "hf_dataset" and not path.is_dir():
        raise ValueError(f"format: 'hf_dataset' needs a directory written by save_to_disk, "
                         f"got the file {str(path)!r}")
    if fmt != "hf_dataset" and path.is_dir():
        raise ValueError(f"format: {fmt!r} needs a file, got the directory {str(path)!r}")


def _open_reader(fmt: str, path: Path, spec: _Fields, text_unit: str,
                 split: Optional[str]) -> _Reader:
    if fmt == "jsonl":
        return _JsonlReader(path, spec)
    if fmt in ("csv", "tsv"):
        return _CsvReader(path, "," if fmt == "csv" else "\t", spec)
    if fmt == "text":
        return _TextReader(path, text_unit, spec.text)
    if fmt == "parquet":
        return _ParquetReader(path, spec)
    return _HFDatasetReader(path, spec, split)


def _claim_id(ids: dict[str, int], rid: str, loc: _Loc) -> None:
    """Record ``rid`` as the id of the record at ``loc``; `_Bad` naming the record that had it."""
    first = ids.get(rid)
    if first is not None:
        earlier = loc._replace(line=first) if loc.row is None else loc._replace(row=first)
        raise _Bad(f"duplicate id {rid!r}: the record at {earlier.source} has it already")
    ids[rid] = loc.line if loc.row is None else loc.row  # type: ignore[assignment]


def _missing_field_hint(argument: str) -> str:
    what = {"text_field": "text", "id_field": "id", "label_field": "label"}[argument]
    return (f"(is {argument} right? no good record came before this one: pass the name of the "
            f"field that holds the {what} with {_OPTIONS[argument]})")


def _items(reader: _Reader, spec: _Fields, start: int, on_bad_row: str,
           max_chars: Optional[int]) -> Iterator[Item]:
    # With ids, the records before start are read too (validated, never yielded) for their ids.
    ids: Optional[dict[str, int]] = None if spec.id is None else {}
    first = start if ids is None else 0
    good_before = False
    for index, unit in enumerate(reader.units(first), first):
        try:
            record = _make_record(index, unit.loc, reader.fields(unit.payload), spec, max_chars)
            if ids is not None:
                _claim_id(ids, record.id, unit.loc)
        except _Bad as bad:
            if index < start:
                continue
            if on_bad_row == "error":
                loc = unit.loc
                hint = None
                if bad.missing is not None and not good_before:
                    hint = _missing_field_hint(bad.missing)
                raise BadRecordError(loc.path, bad.reason, loc.line, loc.row, hint) from None
            yield Rejected(index=index, source=unit.loc.source, reason=bad.reason,
                           raw=reader.raw(unit.payload))
            continue
        good_before = True
        if index >= start:
            yield record


def iter_records(
    path: PathLike,
    *,
    format: str = "auto",
    text_field: str = "text",
    id_field: Optional[str] = None,
    label_field: Optional[str] = None,
    text_unit: str = "line",
    on_bad_row: str = "error",
    start: int = 0,
    split: Optional[str] = None,
    max_record_chars: Optional[int] = MAX_RECORD_CHARS,
) -> Iterator[Item]:
    """Stream the records of a corpus, numbered, with bad records reported exactly.

    The arguments, the CSV header, the Parquet schema and the dataset's columns are checked
    when this function is called; the records are read lazily, one line, CSV record or batch
    of rows at a time.

    Parameters
    ----------
    path : str or os.PathLike
        A file (``.gz`` for compressed JSON Lines, CSV, TSV or text) or a saved dataset directory.
    format : str
        ``"auto"`` (see `detect_format`) or one of `FORMATS`.
    text_field : str
        Field or column holding the document (ignored for plain text).
    id_field : str, optional
        Field or column holding the record's id (a string or an integer). Default: the index.
    label_field : str, optional
        Field or column holding a 0/1 membership label (0, 1, true, false, "0" or "1").
    text_unit : {"line", "paragraph"}
        Plain text only: a document per non-blank line, or per paragraph (lines separated by one
        or more blank lines, joined with ``"\\n"``).
    on_bad_row : {"error", "skip"}
        ``"error"``: raise `BadRecordError` at the first bad record. ``"skip"``: yield a
        `Rejected` in its place and go on.
    start : int
        Number of leading items (good or bad) to skip; the first item yielded has
        ``index == start``. They are skipped without validating them, except with an
        ``id_field``: then they are read and validated (nothing is reported) for their ids, so
        that a later record repeating one of them is still a duplicate.
    split : str, optional
        For a saved ``DatasetDict``: the split to read (the same as passing ``path/split``).
    max_record_chars : int, optional
        Longest text, in characters: a longer one is a bad record (the memory to score a text
        grows with its length). Default `MAX_RECORD_CHARS`; None: no limit.

    Yields
    ------
    Record or Rejected
        With consecutive ``index`` values from ``start``.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        An invalid argument, a missing or repeated column, an unreadable CSV header, or (while
        iterating) `BadRecordError` with ``on_bad_row="error"``.
    ImportError
        A saved dataset without the ``datasets`` package installed.
    """
    p = _check_path(path)
    _check_choice("format", format, ("auto",) + FORMATS)
    fmt = detect_format(p) if format == "auto" else format
    _check_field_name("text_field", text_field, optional=False)
    _check_field_name("id_field", id_field, optional=True)
    _check_field_name("label_field", label_field, optional=True)
    _check_arguments(fmt, p, text_unit, id_field, label_field, split, on_bad_row, start)
    if max_record_chars is not None and (not isinstance(max_record_chars, int)
                                         or isinstance(max_record_chars, bool)
                                         or max_record_chars < 1):
        raise ValueError(f"max_record_chars: expected a positive integer or None, "
                         f"got {max_record_chars!r}")
    spec = _Fields(text_field, id_field, label_field)
    reader = _open_reader(fmt, p, spec, text_unit, split)
    log.debug("reading %s as %s from item %d", p, fmt, start)
    return _items(reader, spec, start, on_bad_row, max_record_chars)


class _Tee(io.RawIOBase):
    """A readable binary stream over ``f`` that feeds every byte read to ``digest``."""

    def __init__(self, f: IO[bytes], digest: Any) -> None:
        self._f = f
        self._digest = digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._f.read(len(buffer))
        buffer[: len(data)] = data
        self._digest.update(data)
        return len(data)


def _check_gzip(path: Path, raw: IO[bytes]) -> None:
    """Decompress the gzip stream ``raw`` to its end, in chunks (bounded memory).

    Raises ValueError naming ``path`` and what is wrong: a CRC or length mismatch (data that
    decoded but is not what was compressed), a truncated stream, corrupt compressed data, or
    bytes that are not gzip.
    """
    done = 0
    try:
        with gzip.GzipFile(fileobj=raw, mode="rb") as f:
            while True:
                chunk = f.read(_HASH_CHUNK)
                if not chunk:
                    return
                done += len(chunk)
    except EOFError as e:
        what, error = "truncated stream: it ends before the gzip end-of-stream marker", e
    except gzip.BadGzipFile as e:
        if "CRC" in str(e):
            what = "CRC mismatch: the data decompresses but is not the data that was compressed"
        elif "length" in str(e):
            what = "length mismatch: the data decompresses to another length than was compressed"
        else:
            what = "not gzip data (or garbage after the last gzip member)"
        error = e
    except zlib.error as e:
        what, error = "corrupt compressed data", e
    name = "zlib.error" if isinstance(error, zlib.error) else type(error).__name__
    raise ValueError(f"{path}: damaged gzip input, {what} ({name}: {error}; after "
                     f"{done:,} decompressed bytes); nothing is scored from it: restore or "
                     "recompress the file") from None


def _hash_file(path: Path, digest: Any) -> None:
    """Feed the bytes of ``path`` to ``digest``; a ``.gz`` file is also decompressed to its end."""
    with open(path, "rb") as f:
        stream: IO[bytes] = f
        if _is_gzip(path):
            stream = _Tee(f, digest)  # type: ignore[assignment]
            _check_gzip(path, stream)  # reads to the end; the rest below is normally empty
        for chunk in iter(lambda: stream.read(_HASH_CHUNK), b""):
            digest.update(chunk)


def _files_of(path: Path) -> list[tuple[str, Path]]:
    if not path.is_dir():
        return [(path.name, path)]
    found = [(p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file()]
    return sorted(found)


def fingerprint_input(path: PathLike) -> dict[str, Any]:
    """Size, modification time and SHA-256 of an input file or directory.

    Used to refuse resuming a run onto an input that changed. For a directory, the digest covers
    every file (sorted by relative path) with its relative path and size, so renames count. A
    ``.gz`` file is also checked as `verify_input` does, in the same read.

    Parameters
    ----------
    path : str or os.PathLike
        The input file or directory.

    Returns
    -------
    dict
        ``{"size": total bytes, "mtime_ns": latest modification time, "sha256": hex digest,
        "files": number of files}``.

    Raises
    ------
    ValueError
        A damaged ``.gz`` file (see `verify_input`).
    """
    p = _check_path(path)
    files = _files_of(p)
    digest = hashlib.sha256()
    size, mtime_ns = 0, 0
    for name, file in files:
        stat = file.stat()
        size += stat.st_size
        mtime_ns = max(mtime_ns, stat.st_mtime_ns)
        if p.is_dir():
            digest.update(f"{name}\0{stat.st_size}\0".encode("utf-8", errors="surrogateescape"))
        _hash_file(file, digest)
    return {"size": size, "mtime_ns": mtime_ns, "sha256": digest.hexdigest(), "files": len(files)}


def verify_input(path: PathLike) -> None:
    """Check that a compressed input decompresses completely and intact, before it is scored.

    Records are decoded as they are read, so damage in a ``.gz`` file shows only where it is
    reached (a CRC mismatch only at the end of the stream), after earlier records may have been
    scored. This decompresses each ``.gz`` file once, streaming (bounded memory), and discards
    the output. Other files are not read. `fingerprint_input` makes the same check in its read.

    Parameters
    ----------
    path : str or os.PathLike
        The input file or directory.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        A ``.gz`` file whose stream is truncated, whose compressed data is corrupt, or whose
        data decompresses but fails the CRC or length check; the message names the file.
    """
    for _, file in _files_of(_check_path(path)):
        if _is_gzip(file):
            with open(file, "rb") as f:
                _check_gzip(file, f)
