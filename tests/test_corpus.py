"""Streaming corpus readers: round trips, exact bad-record reports, resuming, laziness."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import pickle
import re
import tempfile
import threading
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mia_fast.scoring import corpus
from mia_fast.scoring.corpus import (BadRecordError, Record, Rejected, detect_format, fingerprint_input,
                             iter_records)

HINT = "--on-bad-row=skip"

ROWS = [
    {"id": "a1", "text": "Hello, world", "label": 1},
    {"id": 7, "text": "Ünïcödé — 日本語 🙂", "label": 0},
    {"id": "c,3", "text": 'quote " and comma, here', "label": 1},
    {"id": "d4", "text": "  leading and trailing spaces  ", "label": 0},
]


def _write(path: Path, data: bytes) -> Path:
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def _jsonl(rows) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)


def _csv(rows, delimiter=",", fields=("id", "text", "label")) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fields), delimiter=delimiter, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def _expected(path: Path, rows, lines=None, rows_based=False):
    return [
        Record(index=i, id=str(r["id"]), text=r["text"], label=r["label"],
               source=f"{path}:row {i}" if rows_based else f"{path}:{lines[i]}")
        for i, r in enumerate(rows)
    ]


def _all(path, **kw):
    return list(iter_records(path, on_bad_row="skip", **kw))


# --------------------------------------------------------------------------------------------
# detect_format and argument checks


@pytest.mark.parametrize("name, fmt", [
    ("a.jsonl", "jsonl"), ("a.NDJSON", "jsonl"), ("a.json", "jsonl"), ("a.jsonlines", "jsonl"),
    ("a.jsonl.gz", "jsonl"), ("a.csv", "csv"), ("a.csv.gz", "csv"), ("a.tsv", "tsv"),
    ("a.tsv.gz", "tsv"), ("a.parquet", "parquet"), ("a.pq", "parquet"), ("a.txt", "text"),
    ("a.text", "text"), ("a.md", "text"), ("a.v2.txt.gz", "text"),
])
def test_detect_format_files(tmp_path, name, fmt):
    (tmp_path / name).write_bytes(b"")
    assert detect_format(tmp_path / name) == fmt


@pytest.mark.parametrize("marker", ["dataset_info.json", "state.json", "dataset_dict.json"])
def test_detect_format_dataset_directory(tmp_path, marker):
    (tmp_path / marker).write_text("{}")
    assert detect_format(str(tmp_path)) == "hf_dataset"


@pytest.mark.parametrize("name", ["a.xlsx", "a", "a.parquet.gz", "a.gz"])
def test_detect_format_unknown(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match=rf"path: cannot tell the format of '.*/{re.escape(name)}' "
                                         r"from its suffix; expected one of \[.*format="):
        detect_format(tmp_path / name)


def test_detect_format_plain_directory(tmp_path):
    with pytest.raises(ValueError, match="save_to_disk"):
        detect_format(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="path: expected an existing file.*nope.jsonl"):
        iter_records(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="nope"):
        fingerprint_input(tmp_path / "nope")


@pytest.mark.parametrize("kwargs, match", [
    ({"format": "xml"}, r"format: expected one of \['auto', 'jsonl'.*got 'xml'"),
    ({"text_unit": "word"}, r"text_unit: expected one of \['line', 'paragraph'\], got 'word'"),
    ({"text_unit": "paragraph"}, r"text_unit: applies to plain-text input only"),
    ({"on_bad_row": "ignore"}, r"on_bad_row: expected one of \['error', 'skip'\], got 'ignore'"),
    ({"start": -1}, r"start: expected a non-negative integer, got -1"),
    ({"start": 1.5}, r"start: expected a non-negative integer, got 1.5"),
    ({"start": True}, r"start: expected a non-negative integer, got True"),
    ({"text_field": ""}, r"text_field: expected a non-empty column name, got ''"),
    ({"id_field": 3}, r"id_field: expected a non-empty column name or None, got 3"),
    ({"split": "train"}, r"split: applies to saved datasets only"),
    ({"format": "hf_dataset"}, r"format: 'hf_dataset' needs a directory"),
])
def test_invalid_arguments(tmp_path, kwargs, match):
    path = _write(tmp_path / "a.jsonl", _jsonl(ROWS))
    with pytest.raises(ValueError, match=match):
        iter_records(path, **kwargs)


def test_text_input_has_no_fields(tmp_path):
    path = _write(tmp_path / "a.txt", b"x\n")
    with pytest.raises(ValueError, match="id_field, label_field: plain-text input has no fields"):
        iter_records(path, id_field="id")


def test_explicit_format_overrides_the_suffix(tmp_path):
    path = _write(tmp_path / "notes.log", b"a\tb\nx\ty\n")
    assert _all(path, format="tsv", text_field="b") == [Record(0, "0", "y", None, f"{path}:2")]
    assert [r.text for r in _all(path, format="text")] == ["a\tb", "x\ty"]


def test_directory_with_file_format(tmp_path):
    with pytest.raises(ValueError, match="format: 'jsonl' needs a file"):
        iter_records(tmp_path, format="jsonl")


# --------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz", "c.ndjson"])
def test_jsonl_round_trip(tmp_path, name):
    data = _jsonl(ROWS[:2]) + b"\n   \n" + _jsonl(ROWS[2:])  # blank lines keep their numbers
    path = _write(tmp_path / name, data)
    got = _all(path, id_field="id", label_field="label")
    assert got == _expected(path, ROWS, lines=[1, 2, 5, 6])


@pytest.mark.parametrize("name, delimiter", [("c.csv", ","), ("c.csv.gz", ","), ("c.tsv", "\t"),
                                             ("c.tsv.gz", "\t")])
def test_csv_round_trip(tmp_path, name, delimiter):
    path = _write(tmp_path / name, _csv(ROWS, delimiter))
    got = _all(path, id_field="id", label_field="label")
    assert got == _expected(path, ROWS, lines=[2, 3, 4, 5])


def test_csv_multiline_fields_and_blank_lines(tmp_path):
    rows = [{"id": "x", "text": "first\nsecond\n\nfourth", "label": 1},
            {"id": "y", "text": "one line", "label": 0},
            {"id": "z", "text": "a\r\nb", "label": 1}]
    data = _csv(rows[:1]) + b"\n\n" + _csv(rows[1:]).split(b"\n", 1)[1]
    path = _write(tmp_path / "m.csv", data)
    got = _all(path, id_field="id", label_field="label")
    assert got == _expected(path, rows, lines=[2, 8, 9])


def test_csv_extra_columns_and_bom(tmp_path):
    path = _write(tmp_path / "b.csv", b"\xef\xbb\xbftext,other\nhello,1\n")
    assert _all(path) == [Record(0, "0", "hello", None, f"{path}:2")]


def test_jsonl_bom(tmp_path):
    path = _write(tmp_path / "b.jsonl", b'\xef\xbb\xbf{"text": "hi"}\n')
    assert _all(path) == [Record(0, "0", "hi", None, f"{path}:1")]


def test_parquet_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "_BATCH_ROWS", 3)
    rows = [dict(r, id=f"{r['id']}/{i}") for i, r in enumerate(ROWS * 3)]  # ids are unique
    table = pa.table({"id": [str(r["id"]) for r in rows], "text": [r["text"] for r in rows],
                      "label": [r["label"] for r in rows], "extra": list(range(len(rows)))})
    path = tmp_path / "c.parquet"
    pq.write_table(table, path, row_group_size=5)
    want = _expected(path, rows, rows_based=True)
    assert _all(path, id_field="id", label_field="label") == want
    for start in (0, 1, 3, 4, 5, 7, 11, 12, 13):
        assert _all(path, id_field="id", label_field="label", start=start) == want[start:]


def test_parquet_binary_and_integer_columns(tmp_path):
    path = tmp_path / "b.parquet"
    pq.write_table(pa.table({"body": pa.array([b"caf\xc3\xa9", b"\xff"], pa.binary()),
                             "key": [10, 11], "y": [True, False]}), path)
    got = _all(path, text_field="body", id_field="key", label_field="y")
    assert got[0] == Record(0, "10", "café", 1, f"{path}:row 0")
    assert got[1] == Rejected(1, f"{path}:row 1", "not UTF-8 (byte 0xff at offset 0)",
                              '{"body": "b\'\\\\xff\'", "key": 11, "y": false}')


def test_text_lines(tmp_path):
    path = _write(tmp_path / "t.txt", "one\r\n\n  \ntwo  words\n   indented\nlast".encode())
    assert _all(path) == [Record(0, "0", "one", None, f"{path}:1"),
                          Record(1, "1", "two  words", None, f"{path}:4"),
                          Record(2, "2", "   indented", None, f"{path}:5"),
                          Record(3, "3", "last", None, f"{path}:6")]


def test_unicode_whitespace_lines_are_blank(tmp_path):
    """NBSP, ideographic space and the like make a line blank, as ASCII whitespace does."""
    blank = "\u00a0 \u3000\u2009".encode()
    path = _write(tmp_path / "u.txt", b"one\n" + blank + b"\ntwo\n")
    assert [r.text for r in _all(path)] == ["one", "two"]
    assert [r.text for r in _all(path, text_unit="paragraph")] == ["one", "two"]
    path = _write(tmp_path / "u.jsonl", b'{"text": "a"}\n' + blank + b'\n{"text": "b"}\n')
    assert [r.source for r in _all(path)] == [f"{path}:1", f"{path}:3"]


@pytest.mark.parametrize("name", ["t.txt.gz", "t.jsonl.gz", "t.csv.gz"])
def test_truncated_gzip_names_the_file_and_line(tmp_path, name):
    lines = [json.dumps({"text": f"document {i} " * 20}) for i in range(400)]
    if name.endswith(".csv.gz"):
        lines = ["text"] + [f"document {i} " * 20 for i in range(400)]
    data = gzip.compress(("\n".join(lines) + "\n").encode())
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: cannot read beyond line \d+ "
                                         r"\(EOFError: .*\); is the file truncated or damaged\?"):
        list(iter_records(path))


@pytest.mark.parametrize("name", ["p.txt", "p.md.gz"])
def test_text_paragraphs(tmp_path, name):
    data = b"\n\nfirst para\n  line two\n\n\n \t \n\nsecond\n\n\nthird\nx\n"
    path = _write(tmp_path / name, data)
    assert _all(path, text_unit="paragraph") == [
        Record(0, "0", "first para\n  line two", None, f"{path}:3"),
        Record(1, "1", "second", None, f"{path}:9"),
        Record(2, "2", "third\nx", None, f"{path}:12"),
    ]


@pytest.mark.parametrize("value, label", [(0, 0), (1, 1), (True, 1), (False, 0), ("0", 0),
                                          ("1", 1)])
def test_labels_accepted(tmp_path, value, label):
    path = _write(tmp_path / "l.jsonl", _jsonl([{"text": "t", "y": value}]))
    assert _all(path, label_field="y")[0].label == label


@pytest.mark.parametrize("value, reason", [
    (2, "label 2 is not 0/1"), (1.0, "label 1.0 is not 0/1"), ("true", "label 'true' is not 0/1"),
    (None, "field 'y' is null"), ([1], "label [1] is not 0/1"),
])
def test_labels_rejected(tmp_path, value, reason):
    path = _write(tmp_path / "l.jsonl", _jsonl([{"text": "t", "y": value}]))
    assert _all(path, label_field="y")[0].reason == reason


@pytest.mark.parametrize("value, reason", [
    (True, "id True is bool, expected a string or an integer"),
    (1.5, "id 1.5 is float, expected a string or an integer"),
    ("", "empty id"), (None, "field 'k' is null"),
    ("\ud800", "field 'k' has a lone surrogate (U+D800 at character 0)"),
])
def test_ids_rejected(tmp_path, value, reason):
    path = _write(tmp_path / "i.jsonl", json.dumps({"text": "t", "k": value}).encode())
    assert _all(path, id_field="k")[0].reason == reason


# --------------------------------------------------------------------------------------------
# bad records: exact location and reason; skip continues with the next record

GOOD_JSON = b'{"text": "after", "label": 1}\n'
BAD_CASES = {
    # name: (file name, bytes, 1-based line of the bad record, reason, raw, text_unit)
    "json-malformed": ("a.jsonl", b'{"text": "ok", "label": 0}\n\n{"text": "x" "label": 1}\n',
                       3, "malformed JSON: Expecting ',' delimiter (col 14)",
                       '{"text": "x" "label": 1}', "line"),
    "json-not-object": ("a.jsonl", b'["text", "x"]\n', 1,
                        "not a JSON object (got list); JSON Lines needs one object per line",
                        '["text", "x"]', "line"),
    "json-missing": ("a.jsonl", b'{"text": "ok", "label": 0}\n{"label": 1}\n', 2,
                     "missing field 'text' (text_field); the record has the fields ['label']",
                     '{"label": 1}', "line"),
    "json-not-utf8": ("a.jsonl", b'{"text": "ok", "label": 1}\n{"text": "caf\xe9"}\n', 2,
                      "not UTF-8 (byte 0xe9 at offset 13)", '{"text": "caf\ufffd"}', "line"),
    "json-empty": ("a.jsonl", b'\n{"text": " \\n\\t", "label": 0}\n', 2, "empty text",
                   '{"text": " \\n\\t", "label": 0}', "line"),
    "json-text-type": ("a.jsonl", b'{"text": 5, "label": 0}\n', 1,
                       "field 'text' is int, expected a string", '{"text": 5, "label": 0}', "line"),
    "json-surrogate": ("a.jsonl", b'{"text": "ab\\udc80", "label": 0}\n', 1,
                       "field 'text' has a lone surrogate (U+DC80 at character 2)",
                       '{"text": "ab\\udc80", "label": 0}', "line"),
    "json-bad-label": ("a.jsonl", b'{"text": "t", "label": "maybe"}\n', 1,
                       "label 'maybe' is not 0/1", '{"text": "t", "label": "maybe"}', "line"),
    "csv-not-utf8": ("a.csv", b'text,label\n"multi\nline",1\nbad \xff,0\n', 4,
                     "not UTF-8 (byte 0xff at offset 4)", "bad \ufffd,0", "line"),
    "csv-not-utf8-multiline": ("a.csv", b'text,label\n"multi\nli\xffne",1\n', 2,
                               "not UTF-8 (byte 0xff at offset 9)", '"multi\nli\ufffdne",1',
                               "line"),
    "csv-field-count": ("a.csv", b"text,label\nonly\n", 2,
                        "expected 2 fields (the header's columns), got 1", "only", "line"),
    "csv-quote": ("a.csv", b'text,label\n"x"y,1\n', 2,
                  "malformed CSV: ',' expected after '\"'", '"x"y,1', "line"),
    "csv-empty": ("a.csv", b'text,label\nok,1\n"",1\n', 3, "empty text", '"",1', "line"),
    "csv-bad-label": ("a.csv", b"text,label\nt,yes\n", 2, "label 'yes' is not 0/1", "t,yes",
                      "line"),
    "text-not-utf8": ("a.txt", b"fine\n\nbad \x80 byte\n", 3, "not UTF-8 (byte 0x80 at offset 4)",
                      "bad \ufffd byte", "line"),
    "paragraph-not-utf8": ("a.txt", b"fine\n\n\nline\nbad \x80\n", 4,
                           "not UTF-8 (byte 0x80 at offset 9)", "line\nbad \ufffd", "paragraph"),
    "text-nul": ("a.txt", "fine\n".encode() + "utf16".encode("utf-16-le") + b"\n", 2,
                 "field 'text' has a NUL character (at character 1); UTF-16 or binary input? "
                 "mia_fast reads UTF-8", "u\x00t\x00f\x001\x006\x00", "line"),
    "json-nul": ("a.jsonl", b'{"text": "a\\u0000b", "label": 0}\n', 1,
                 "field 'text' has a NUL character (at character 1); UTF-16 or binary input? "
                 "mia_fast reads UTF-8", '{"text": "a\\u0000b", "label": 0}', "line"),
}
GOOD_AFTER = {"jsonl": GOOD_JSON, "csv": b"after,1\n", "text": b"\nafter\n"}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_record(tmp_path, case):
    name, data, line, reason, raw, unit = BAD_CASES[case]
    path = _write(tmp_path / name, b"")
    fmt = detect_format(path)
    _write(path, data + GOOD_AFTER[fmt])
    kw = {"text_unit": unit} if fmt == "text" else {"label_field": "label"}
    with pytest.raises(BadRecordError) as info:
        list(iter_records(path, **kw))
    err = info.value
    assert str(err) == (f"{path}:{line}: {reason} (use {HINT} to write such rows to a rejects "
                        "file and continue)")
    assert (err.path, err.line, err.row, err.reason, err.source) == (str(path), line, None, reason,
                                                                     f"{path}:{line}")
    items = _all(path, **kw)
    bad = [i for i in items if isinstance(i, Rejected)]
    assert len(bad) == 1
    assert bad[0] == Rejected(bad[0].index, f"{path}:{line}", reason, raw)
    assert [i.index for i in items] == list(range(len(items)))
    assert items[-1].text == "after" and items[-1].index == bad[0].index + 1


def test_parquet_null_and_empty_text(tmp_path):
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": ["ok", None, "", "after"]}), path)
    with pytest.raises(BadRecordError, match=rf"^{path}:row 1: field 'text' is null \(use {HINT}"):
        list(iter_records(path))
    items = _all(path)
    assert items[1] == Rejected(1, f"{path}:row 1", "field 'text' is null", '{"text": null}')
    assert items[2] == Rejected(2, f"{path}:row 2", "empty text", '{"text": ""}')
    assert items[3] == Record(3, "3", "after", None, f"{path}:row 3")


def test_bad_record_error_pickles():
    err = BadRecordError("x.jsonl", "empty text", line=4)
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.line, back.row, back.source) == (str(err), 4, None, "x.jsonl:4")
    assert isinstance(back, ValueError)


def test_raw_is_truncated(tmp_path):
    path = _write(tmp_path / "long.jsonl", b'{"text": "' + b"x" * 5000 + b'", }\n')
    raw = _all(path)[0].raw
    assert raw.startswith('{"text": "xxx') and raw.endswith("...") and len(raw) == 503


# --------------------------------------------------------------------------------------------
# CSV / Parquet open-time errors


def test_csv_missing_column_is_an_open_time_error(tmp_path):
    path = _write(tmp_path / "c.csv", _csv(ROWS))
    with pytest.raises(ValueError) as info:
        iter_records(path, text_field="body", label_field="y")
    assert str(info.value) == (
        f"{path}: expected columns 'body' (text_field, --text-field) and 'y' (label_field, "
        "--label-field) in the CSV header, which has the columns ['id', 'text', 'label']: pass "
        "the right names with --text-field, --label-field")


def test_csv_header_errors(tmp_path):
    with pytest.raises(ValueError, match="expected a header line.*empty file"):
        iter_records(_write(tmp_path / "e.csv", b"\n\n"))
    with pytest.raises(ValueError, match=r"h\.csv:1: the header line is not UTF-8 \(byte 0xff"):
        iter_records(_write(tmp_path / "h.csv", b"te\xffxt\nx\n"))
    with pytest.raises(ValueError, match=r"q\.csv:2: malformed CSV header: ',' expected after"):
        iter_records(_write(tmp_path / "q.csv", b'\n"te"xt\nx\n'))


def test_csv_unterminated_quote_at_end(tmp_path):
    path = _write(tmp_path / "u.csv", b'text\nok\n"never closed\nmore\n')
    items = _all(path)
    assert items[0].text == "ok"
    assert items[1] == Rejected(1, f"{path}:3", "malformed CSV: unexpected end of data",
                                '"never closed\nmore')


def test_parquet_missing_column(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"content": ["a"], "n": [1]}), path)
    with pytest.raises(ValueError, match=r"expected a column 'text' \(text_field, --text-field\) "
                                         r"in the Parquet file, which has the columns \['content', "
                                         r"'n'\]: pass one of them with --text-field"):
        iter_records(path)


# --------------------------------------------------------------------------------------------
# resuming with start


def _mixed_files(tmp_path: Path) -> dict[str, tuple[Path, dict]]:
    jsonl = (b'{"text": "a", "id": 1}\n\n{"text": ""}\n{"text": "b", "id": 2}\n[]\n'
             b'{"text": "c\xff", "id": 3}\n\n\n{"text": "d", "id": 4}\n{"text": "e", "id": "2"}\n')
    csv_data = b'text,id\na,1\n"b\nb",2\n,3\nbad\xfe,4\n\n"x"y,5\nc,6\nd,3\ne,2\n'
    text = b"a\n\nb\nb2\n\n\n\xff\n  \nc\nd\n"
    pqt = tmp_path / "m.parquet"
    pq.write_table(pa.table({"text": ["a", None, "b", "", "c", "d", "e"],
                             "id": [1, 2, 3, 4, 5, 1, 7]}), pqt, row_group_size=3)
    return {
        "jsonl": (_write(tmp_path / "m.jsonl", jsonl), {"id_field": "id"}),
        "jsonl.gz": (_write(tmp_path / "m.jsonl.gz", jsonl), {"id_field": "id"}),
        "csv": (_write(tmp_path / "m.csv", csv_data), {"id_field": "id"}),
        "line": (_write(tmp_path / "m.txt", text), {}),
        "paragraph": (_write(tmp_path / "p.txt", text), {"text_unit": "paragraph"}),
        "parquet": (pqt, {"id_field": "id"}),
    }


def test_start_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "_BATCH_ROWS", 2)
    for name, (path, kw) in _mixed_files(tmp_path).items():
        full = _all(path, **kw)
        assert any(isinstance(i, Rejected) for i in full), name
        assert [i.index for i in full] == list(range(len(full))), name
        for r in range(len(full) + 2):
            assert full[:r] + _all(path, start=r, **kw) == full, (name, r)


def test_start_skips_bad_records_without_validating(tmp_path):
    path = _write(tmp_path / "s.jsonl", b'{"text": \n\xff\n[]\n{"text": "ok"}\n')
    assert list(iter_records(path, start=3)) == [Record(3, "3", "ok", None, f"{path}:4")]


_LINE = st.one_of(
    st.sampled_from([b"", b"  ", b"\t", b"\xff\xfe", b"caf\xc3\xa9", b"\xe2\x82"]),
    st.text(alphabet="ab \t", max_size=4).map(str.encode),
)


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(_LINE, max_size=12), unit=st.sampled_from(["line", "paragraph"]),
       r=st.integers(0, 14))
def test_start_property_text(lines, unit, r):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "h.txt"
        path.write_bytes(b"\n".join(lines))
        full = _all(path, text_unit=unit)
        assert full[:r] + _all(path, text_unit=unit, start=r) == full
        nonblank = [bool(line.strip()) for line in lines]
        if unit == "line":
            assert len(full) == sum(nonblank)
        else:
            assert len(full) == sum(b and not a for a, b in zip([False] + nonblank, nonblank))


_DOC = st.one_of(
    st.fixed_dictionaries({"text": st.text(min_size=0, max_size=5), "id": st.integers(0, 9)}),
    st.sampled_from([b"", b"[1]", b'{"text": 1}', b"{bad", b'{"text": "\xff"}']),
)


@settings(max_examples=60, deadline=None)
@given(docs=st.lists(_DOC, max_size=10), r=st.integers(0, 12))
def test_start_property_jsonl(docs, r):
    lines = [d if isinstance(d, bytes) else json.dumps(d).encode() for d in docs]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "h.jsonl"
        path.write_bytes(b"\n".join(lines))
        full = _all(path, id_field="id")
        assert full[:r] + _all(path, id_field="id", start=r) == full
        assert len(full) == sum(bool(line.strip()) for line in lines)


# --------------------------------------------------------------------------------------------
# laziness


@pytest.mark.parametrize("name, head, tail", [
    ("z.jsonl", b'{"text": "first"}\n', b"{broken\n"),
    ("z.csv", b"text\nfirst\n", b'"x"y\n'),
    ("z.txt", b"first\n", b"\xff\n"),
])
def test_next_does_not_reach_a_bad_tail(tmp_path, name, head, tail):
    filler = {"z.jsonl": b'{"text": "filler"}\n', "z.csv": b"filler\n", "z.txt": b"filler\n"}[name]
    path = _write(tmp_path / name, head + filler * 100_000 + tail)  # ~1-2 MB, bigger than buffers
    it = iter_records(path)
    assert next(it).text == "first"
    assert next(it).text == "filler"
    it.close()


def test_parquet_next_does_not_reach_a_bad_tail(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "_BATCH_ROWS", 10)
    path = tmp_path / "z.parquet"
    pq.write_table(pa.table({"text": ["first"] * 99 + [None]}), path, row_group_size=50)
    it = iter_records(path)
    assert [next(it).index for _ in range(3)] == [0, 1, 2]
    it.close()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_reads_a_stream_incrementally(tmp_path):
    """Through a named pipe, the first record arrives before the writer sends the rest."""
    path = tmp_path / "pipe.jsonl"
    os.mkfifo(path)
    got_first = threading.Event()
    waited = []

    def writer() -> None:
        with open(path, "wb") as f:
            f.write(b'{"text": "one"}\n')
            f.flush()
            waited.append(got_first.wait(timeout=10))
            f.write(b'{"text": "two"}\n')

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        it = iter_records(path)
        first = next(it)
        got_first.set()
        rest = list(it)
    finally:
        got_first.set()
        if thread.is_alive():  # the reader failed before opening the pipe: let the writer finish
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        thread.join(timeout=20)
    assert waited == [True]
    assert [first.text] + [r.text for r in rest] == ["one", "two"]


# --------------------------------------------------------------------------------------------
# saved Hugging Face datasets


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    datasets = pytest.importorskip("datasets")
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    root = tmp_path_factory.mktemp("hf")
    ds = datasets.Dataset.from_dict({"text": ["a", "b", None, "d", "  ", "f", "g"],
                                     "id": ["x0", "x1", "x2", "x3", "x4", "x5", "x6"],
                                     "label": [1, 0, 1, 0, 1, 0, 1],
                                     "junk": [[1]] * 7})
    ds.save_to_disk(str(root / "single"))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(2))}).save_to_disk(str(root / "dd"))
    return root


def test_hf_dataset_round_trip_and_start(hf_dirs, monkeypatch):
    monkeypatch.setattr(corpus, "_BATCH_ROWS", 3)
    path = hf_dirs / "single"
    full = _all(path, id_field="id", label_field="label")
    assert full[0] == Record(0, "x0", "a", 1, f"{path}:row 0")
    assert full[2] == Rejected(2, f"{path}:row 2", "field 'text' is null",
                               '{"text": null, "id": "x2", "label": 1}')
    assert full[4].reason == "empty text"
    assert full[6] == Record(6, "x6", "g", 1, f"{path}:row 6")
    for r in range(9):
        assert full[:r] + _all(path, id_field="id", label_field="label", start=r) == full
    with pytest.raises(BadRecordError, match=rf"^{path}:row 2: field 'text' is null"):
        list(iter_records(path))


def test_hf_dataset_dict_needs_a_split(hf_dirs):
    path = hf_dirs / "dd"
    with pytest.raises(ValueError, match=r"split: .* DatasetDict with splits \['train', 'test'\]"):
        iter_records(path)
    with pytest.raises(ValueError, match=r"split: expected one of \['train', 'test'\], got 'dev'"):
        iter_records(path, split="dev")
    got = _all(path, split="test", id_field="id")
    assert got == [Record(0, "x0", "a", None, f"{path / 'test'}:row 0"),
                   Record(1, "x1", "b", None, f"{path / 'test'}:row 1")]
    assert _all(path / "test", id_field="id")[1].source == f"{path / 'test'}:row 1"
    with pytest.raises(ValueError, match="split: .* holds a single Dataset"):
        iter_records(path / "test", split="test")
    with pytest.raises(ValueError, match=r"expected a column 'content' \(text_field, --text-field\) "
                                         r"in the dataset, which has the columns \['text'"):
        iter_records(path / "test", text_field="content")


def test_hf_dataset_without_datasets(tmp_path, monkeypatch):
    (tmp_path / "state.json").write_text("{}")
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        iter_records(tmp_path)


# --------------------------------------------------------------------------------------------
# fingerprints


def test_fingerprint_file_changes(tmp_path):
    path = _write(tmp_path / "f.jsonl", b'{"text": "abc"}\n')
    first = fingerprint_input(path)
    assert first["size"] == 16 and first["files"] == 1 and len(first["sha256"]) == 64
    assert fingerprint_input(str(path)) == first
    path.write_bytes(b'{"text": "abd"}\n')  # same size, new content
    os.utime(path, ns=(first["mtime_ns"], first["mtime_ns"]))
    second = fingerprint_input(path)
    assert second["size"] == first["size"] and second["mtime_ns"] == first["mtime_ns"]
    assert second["sha256"] != first["sha256"]


def test_fingerprint_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "_HASH_CHUNK", 7)
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.arrow").write_bytes(b"x" * 50)
    (tmp_path / "sub" / "b.json").write_bytes(b"{}")
    first = fingerprint_input(tmp_path)
    assert (first["size"], first["files"]) == (52, 2)
    (tmp_path / "a.arrow").rename(tmp_path / "c.arrow")
    assert fingerprint_input(tmp_path)["sha256"] != first["sha256"]


# --------------------------------------------------------------------------------------------
# record size limit


def test_default_limit_rejects_a_longer_record(tmp_path):
    limit = corpus.MAX_RECORD_CHARS
    path = _write(tmp_path / "big.jsonl", _jsonl([{"text": "ok"}, {"text": "x" * limit},
                                                 {"text": "y" * (limit + 1)}, {"text": "after"}]))
    with pytest.raises(BadRecordError) as info:
        list(iter_records(path))
    err = info.value
    assert (err.path, err.line) == (str(path), 3)
    assert str(err).startswith(f"{path}:3: text of {limit + 1:,} characters is longer than the "
                               f"limit of {limit:,} (max_record_chars; raise it with "
                               "--max-record-chars")
    items = _all(path)
    assert [type(i).__name__ for i in items] == ["Record", "Record", "Rejected", "Record"]
    assert items[2].reason == err.reason and len(items[2].raw) == 503
    assert len(_all(path, max_record_chars=None)[2].text) == limit + 1


@pytest.mark.parametrize("name", ["s.jsonl", "s.csv.gz", "s.tsv", "s.txt", "s.parquet"])
def test_limit_applies_to_every_format(tmp_path, name):
    texts = ["short", "a" * 11, "b" * 10]
    path = tmp_path / name
    if name.endswith(".parquet"):
        pq.write_table(pa.table({"text": texts}), path)
    elif name.endswith(".txt"):
        _write(path, "\n".join(texts).encode())
    else:
        _write(path, _csv([{"text": t} for t in texts], "\t" if ".tsv" in name else ",", ["text"])
               if ".csv" in name or ".tsv" in name else _jsonl([{"text": t} for t in texts]))
    items = _all(path, max_record_chars=10)
    assert [type(i).__name__ for i in items] == ["Record", "Rejected", "Record"]
    assert items[1].reason.startswith("text of 11 characters is longer than the limit of 10 ")


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "100"])
def test_limit_must_be_a_positive_integer(tmp_path, value):
    path = _write(tmp_path / "a.jsonl", _jsonl([{"text": "a"}]))
    with pytest.raises(ValueError, match=rf"max_record_chars: expected a positive integer or None, "
                                         rf"got {re.escape(repr(value))}"):
        iter_records(path, max_record_chars=value)


# --------------------------------------------------------------------------------------------
# duplicate ids


def test_duplicate_ids_are_bad_records(tmp_path):
    rows = [{"id": 1, "text": "a"}, {"id": "2", "text": "b"}, {"id": "1", "text": "c"},
            {"id": 2, "text": "d"}, {"id": 3, "text": "e"}]
    path = _write(tmp_path / "d.jsonl", _jsonl(rows))
    with pytest.raises(BadRecordError) as info:
        list(iter_records(path, id_field="id"))
    assert str(info.value).startswith(f"{path}:3: duplicate id '1': the record at {path}:1 has it "
                                      f"already (use {HINT}")
    items = _all(path, id_field="id")
    assert [i.id if isinstance(i, Record) else None for i in items] == ["1", "2", None, None, "3"]
    assert items[3] == Rejected(3, f"{path}:4", f"duplicate id '2': the record at {path}:2 has it "
                                "already", '{"id": 2, "text": "d"}')
    assert [i.id for i in _all(path)] == ["0", "1", "2", "3", "4"]  # default ids never collide


def test_a_rejected_record_does_not_claim_its_id(tmp_path):
    path = _write(tmp_path / "d.jsonl", _jsonl([{"id": 1, "text": " "}, {"id": 1, "text": "a"}]))
    items = _all(path, id_field="id")
    assert items[0].reason == "empty text" and items[1] == Record(1, "1", "a", None, f"{path}:2")


@pytest.mark.parametrize("name", ["d.csv", "d.parquet"])
def test_duplicate_ids_in_table_formats(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".parquet"):
        pq.write_table(pa.table({"text": ["a", "b", "c"], "id": ["x", "y", "x"]}), path)
        first, dup = f"{path}:row 0", f"{path}:row 2"
    else:
        _write(path, b'text,id\na,x\n"b\nb",y\nc,x\n')
        first, dup = f"{path}:2", f"{path}:5"
    with pytest.raises(BadRecordError, match=re.escape(f"{dup}: duplicate id 'x': the record at "
                                                       f"{first} has it already")):
        list(iter_records(path, id_field="id"))


def test_duplicate_ids_are_found_across_a_resume(tmp_path):
    path = _write(tmp_path / "r.jsonl",
                  b'{"id": 1, "text": "a"}\n{"id": 2, "text": ""}\n{bad\n{"id": 3, "text": "c"}\n'
                  b'{"id": 2, "text": "ok: the first 2 was rejected"}\n{"id": "1", "text": "dup"}\n')
    full = _all(path, id_field="id")
    assert [type(i).__name__ for i in full] == ["Record", "Rejected", "Rejected", "Record",
                                                "Record", "Rejected"]
    for start in range(len(full) + 1):
        assert _all(path, id_field="id", start=start) == full[start:]
    with pytest.raises(BadRecordError, match=re.escape(f"{path}:6: duplicate id '1': the record at "
                                                       f"{path}:1 has it already")):
        list(iter_records(path, id_field="id", start=4))
    # the bad records before start are read for their ids but never reported
    assert next(iter_records(path, id_field="id", start=3)).id == "3"


def test_resume_reads_earlier_ids_without_tokenizing(tmp_path, monkeypatch):
    """The records before start are only parsed: no text leaves the reader."""
    path = _write(tmp_path / "r.jsonl", _jsonl([{"id": i, "text": f"t{i}"} for i in range(5)]))
    made = []
    real = corpus._make_record
    monkeypatch.setattr(corpus, "_make_record", lambda *a: made.append(a[0]) or real(*a))
    assert [r.index for r in _all(path, id_field="id", start=3)] == [3, 4]
    assert made == [0, 1, 2, 3, 4]
    made.clear()
    assert [r.index for r in _all(path, start=3)] == [3, 4] and made == [3, 4]  # no ids: skipped


# --------------------------------------------------------------------------------------------
# repeated columns and keys


def test_csv_repeated_used_column_is_an_error(tmp_path):
    path = _write(tmp_path / "r.csv", b"text,id,text,label\na,1,b,0\n")
    with pytest.raises(ValueError) as info:
        iter_records(path)
    assert str(info.value) == (f"{path}: the CSV header has the column 'text' (text_field) 2 times, "
                               "at columns 1 and 3 (1-based); expected it once: rename the other "
                               "columns so that the one to use is unique")
    with pytest.raises(ValueError, match=r"'id' \(id_field\) 3 times, at columns 1, 2 and 4"):
        iter_records(_write(tmp_path / "i.tsv", b"id\tid\ttext\tid\n1\t2\tt\t3\n"), id_field="id")


def test_csv_repeated_unused_column_is_a_warning(tmp_path, caplog):
    path = _write(tmp_path / "r.csv", b"note,text,note\nx,a,y\n")
    with caplog.at_level("WARNING", logger="mia_fast.scoring.corpus"):
        assert [r.text for r in _all(path)] == ["a"]
    assert "the CSV header has the column 'note' 2 times, at columns 1 and 3 (1-based); it is not " \
           "used" in caplog.text


def test_parquet_repeated_used_column_is_an_error(tmp_path):
    path = tmp_path / "r.parquet"
    table = pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["text", "text"])
    pq.write_table(table, path)
    with pytest.raises(ValueError, match=r"the Parquet file has the column 'text' \(text_field\) 2 "
                                         r"times, at columns 1 and 2"):
        iter_records(path)


def test_json_repeated_used_key_is_a_bad_record(tmp_path):
    path = _write(tmp_path / "k.jsonl", b'{"text": "a", "text": "b"}\n{"text": "c", "x": 1, "x": 2}\n'
                                        b'{"text": "d", "nested": {"id": 1, "id": 2}}\n')
    items = _all(path)
    assert items[0] == Rejected(0, f"{path}:1", "field 'text' appears 2 times in the object; "
                                "expected it once (JSON keeps only the last value)",
                                '{"text": "a", "text": "b"}')
    assert [i.text for i in items[1:]] == ["c", "d"]


# --------------------------------------------------------------------------------------------
# wrong field names


def test_wrong_jsonl_text_field_names_the_field_and_the_keys(tmp_path):
    path = _write(tmp_path / "w.jsonl", _jsonl([{"body": f"b{i}", "doc_id": i} for i in range(50)]))
    with pytest.raises(BadRecordError) as info:
        list(iter_records(path))
    message = str(info.value)
    assert message == (f"{path}:1: missing field 'text' (text_field); the record has the fields "
                       "['body', 'doc_id'] (is text_field right? no good record came before this "
                       "one: pass the name of the field that holds the text with --text-field)")
    assert "--on-bad-row" not in message
    with pytest.raises(BadRecordError, match=r"missing field 'id' \(id_field\); the record has the "
                                             r"fields \['body', 'doc_id'\] \(is id_field right\? .* "
                                             r"holds the id with --id-field\)$"):
        list(iter_records(path, text_field="body", id_field="id"))
    with pytest.raises(BadRecordError, match=r"holds the label with --label-field\)$"):
        list(iter_records(path, text_field="body", label_field="y"))


def test_missing_field_after_good_records_is_a_bad_row(tmp_path):
    path = _write(tmp_path / "m.jsonl", _jsonl([{"text": "a"}, {"body": "b"}]))
    with pytest.raises(BadRecordError, match=re.escape(
            f"{path}:2: missing field 'text' (text_field); the record has the fields ['body'] "
            f"(use {HINT}")):
        list(iter_records(path))


def test_missing_field_lists_at_most_20_keys(tmp_path):
    path = _write(tmp_path / "k.jsonl", _jsonl([{f"k{i}": i for i in range(30)}]))
    reason = _all(path)[0].reason
    assert reason.endswith("['k0', 'k1', 'k2', 'k3', 'k4', 'k5', 'k6', 'k7', 'k8', 'k9', 'k10', "
                           "'k11', 'k12', 'k13', 'k14', 'k15', 'k16', 'k17', 'k18', 'k19', ...]")


# --------------------------------------------------------------------------------------------
# damaged compressed input


def _corpus_gz(n: int = 400) -> tuple[bytes, bytes]:
    data = _jsonl([{"id": i, "text": f"document {i} " * 20} for i in range(n)])
    return data, gzip.compress(data, mtime=0)


def _crc_damaged(gz: bytes) -> bytes:
    """``gz`` with one bit flipped near its middle such that it still decompresses to the end and
    only the CRC check fails."""
    for pos in range(len(gz) // 2, len(gz) - 8):
        for bit in range(8):
            damaged = bytearray(gz)
            damaged[pos] ^= 1 << bit
            try:
                gzip.decompress(bytes(damaged))
            except gzip.BadGzipFile as e:
                if "CRC" in str(e):
                    return bytes(damaged)
            except (EOFError, zlib.error):
                pass
    raise AssertionError("no single-bit damage that only fails the CRC")


def test_damaged_gzip_yields_records_before_failing(tmp_path):
    """The reason to verify first: records past the damage come out before the error."""
    data, gz = _corpus_gz()
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(_crc_damaged(gz))
    items, it = [], iter_records(path, on_bad_row="skip")
    with pytest.raises(ValueError, match="CRC check failed"):
        for item in it:
            items.append(item)
    assert len(items) > 300 and items != _all(_write(tmp_path / "ok.jsonl", data))[: len(items)]


@pytest.mark.parametrize("damage, what", [
    ("crc", r"CRC mismatch: the data decompresses but is not the data that was compressed "
            r"\(BadGzipFile: CRC check failed"),
    ("truncated", r"truncated stream: it ends before the gzip end-of-stream marker \(EOFError: "),
    ("corrupt", r"corrupt compressed data \(zlib\.error: Error -3 while decompressing data"),
    ("trailing", r"not gzip data \(or garbage after the last gzip member\) \(BadGzipFile: "),
], ids=["crc", "truncated", "corrupt", "trailing"])
def test_verify_input_refuses_a_damaged_gzip(tmp_path, monkeypatch, damage, what):
    monkeypatch.setattr(corpus, "_HASH_CHUNK", 4096)  # several chunks: the check streams
    _, gz = _corpus_gz()
    bad = {"crc": _crc_damaged(gz), "truncated": gz[: len(gz) * 2 // 3],
           "corrupt": gz[:20] + b"\xff" * 8 + gz[28:], "trailing": gz + b"junk"}[damage]
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(bad)
    message = rf"^{re.escape(str(path))}: damaged gzip input, {what}.*; nothing is scored from it"
    with pytest.raises(ValueError, match=message):
        corpus.verify_input(path)
    with pytest.raises(ValueError, match=message):
        fingerprint_input(path)


def test_verify_input_accepts_intact_input(tmp_path):
    _, gz = _corpus_gz()
    path = tmp_path / "ok.jsonl.gz"
    path.write_bytes(gz + gzip.compress(b'{"text": "second member"}\n'))
    corpus.verify_input(path)
    plain = _write(tmp_path / "ok.jsonl", b"\xff not even JSON")  # not compressed: not read
    corpus.verify_input(plain)
    assert fingerprint_input(path)["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(FileNotFoundError):
        corpus.verify_input(tmp_path / "missing.gz")
