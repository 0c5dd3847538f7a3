"""`mia-fast spans`: memorised-span localisation from per-token scores.

The end-to-end tests plant a known memorised half: a tiny GPT-2 is trained on the first halves of
some paragraphs (plus general text), a reference model on the general text alone; the full
paragraphs are scored with both, next to paragraphs neither model saw. The spans found must cover
most of the planted halves and flag few tokens of the unseen halves and of held-out non-members.
"""

from __future__ import annotations

import html
import json
import logging
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import lm_fixtures as fx
from mia_fast.cli import main
from mia_fast.spans import (
    calibrate_threshold,
    find_spans,
    locate_spans,
    running_mean,
    spans_from_tables,
    token_signal,
    write_spans,
)
from mia_fast.spans.html import render_html

CHROMIUM = Path("/usr/bin/chromium")
N_MEMBERS, N_CALIBRATION, N_HELD_OUT, N_GENERAL = 12, 12, 12, 12
EPOCHS = 30


# --------------------------------------------------------------------------------------------
# the span logic on synthetic signals


@pytest.mark.parametrize(
    "flags, merge_gap, min_length, expected",
    [
        ("0110111000010", 0, 1, [(1, 3), (4, 7), (11, 12)]),
        ("0110111000010", 2, 1, [(1, 7), (11, 12)]),  # the 1-token gap merged, the 4-token one not
        ("0110111000010", 5, 1, [(1, 12)]),
        ("0110111000010", 2, 3, [(1, 7)]),  # the merged span is 6 long (gap included), the last one too short
        ("0110111000010", 0, 3, [(4, 7)]),
        ("1111", 0, 1, [(0, 4)]),
        ("0000", 3, 1, []),
        ("", 3, 1, []),
    ],
)
def test_find_spans_exact(flags, merge_gap, min_length, expected):
    flagged = np.array([c == "1" for c in flags], dtype=bool)
    assert find_spans(flagged, merge_gap=merge_gap, min_length=min_length) == expected


def test_running_mean_is_a_centred_mean_truncated_at_the_ends():
    rng = np.random.default_rng(0)
    x = rng.normal(size=23)
    for w in (1, 2, 3, 4, 16, 40):
        expected = [x[max(0, i - (w - 1) // 2) : i + w // 2 + 1].mean() for i in range(len(x))]
        np.testing.assert_allclose(running_mean(x, w), expected, rtol=1e-12, atol=1e-12)
    assert running_mean(np.zeros(0), 5).shape == (0,)


def test_calibrated_threshold_flags_at_most_alpha_of_the_null():
    null = np.random.default_rng(1).normal(size=1000)
    for alpha in (0.01, 0.05, 0.2):
        thr = calibrate_threshold(null, alpha)
        assert np.mean(null > thr) <= alpha
        assert np.mean(null >= thr) > alpha - 1e-9  # the threshold is an order statistic, not beyond the data
    with pytest.raises(ValueError, match=r"alpha: .*at least 100 non-member tokens.*got 99"):
        calibrate_threshold(null[:99], 0.01)
    with pytest.raises(ValueError, match=r"alpha: expected a float in \(0, 1\), got 1.5"):
        calibrate_threshold(null, 1.5)


def _tables(signals: dict[str, np.ndarray], labels: dict[str, int] | None = None, first_position: int = 1):
    """Per-token and sequences tables whose ``logprob`` is the given signal of each document."""
    rows = []
    for row, (doc_id, values) in enumerate(signals.items()):
        for j, v in enumerate(values):
            rows.append({"row": row, "id": doc_id, "position": first_position + j, "token": (7 * j + row) % 50,
                         "logprob": float(v), "entropy": 1.0, "var_logp": 1.0})
    tokens = pd.DataFrame(rows)
    seqs = pd.DataFrame({"row": range(len(signals)), "id": list(signals)})
    if labels is not None:
        seqs["label"] = [labels[k] for k in signals]
    return tokens, seqs


def test_spans_from_tables_exact_on_a_planted_step():
    step = np.zeros(40)
    step[10:26] = 1.0
    tokens, seqs = _tables({"a": step, "b": np.zeros(30)})
    seqs.loc[2] = [2, "c"]  # a document without a scored token is listed too
    # window 3: smoothed = 2/3 at the step's first and last token, 1/3 just outside it
    report = spans_from_tables(tokens, seqs, threshold=0.5, window=3, merge_gap=0, min_length=1)
    a, b, c = report.documents
    assert c.id == "c" and c.n_tokens == 0 and c.spans == []
    assert [(s.token_start, s.token_end, s.n_tokens) for s in a.spans] == [(11, 27, 16)]  # positions start at 1
    assert a.spans[0].mean_signal == pytest.approx(1.0)
    assert a.spans[0].score == pytest.approx(14 * 0.5 + 2 * (2 / 3 - 0.5))
    assert b.spans == [] and report.calibration.source == "user" and report.calibration.alpha is None
    np.testing.assert_array_equal(a.flagged(), (np.arange(40) >= 10) & (np.arange(40) < 26))
    page = render_html(report)  # without texts or a tokenizer, tokens show as their ids
    assert page.count('class="tok"') == 70 and page.count('class="span"') == 1 and "⟨" in page


def test_calibration_on_nonmembers_sets_the_threshold():
    rng = np.random.default_rng(2)
    nulls = {f"n{i}": rng.normal(-5.0, 1.0, size=60) for i in range(10)}
    member = rng.normal(-5.0, 1.0, size=80)
    member[20:50] = rng.normal(-0.2, 0.1, size=30)
    tokens, seqs = _tables({"m": member, **nulls}, labels={"m": 1, **{k: 0 for k in nulls}})
    report = spans_from_tables(tokens, seqs, nonmember_label=0, window=8, alpha=0.01)
    cal = report.calibration
    smoothed_null = np.concatenate([running_mean(v, 8) for v in nulls.values()])
    assert cal.threshold == pytest.approx(np.quantile(smoothed_null, 0.99, method="higher"))
    assert cal.source == "nonmember_label" and cal.n_null_documents == 10 and cal.n_null_tokens == 600
    assert cal.null_fpr <= 0.01 and cal.signal == "logprob"
    (span,) = report.documents[0].spans
    assert 17 <= span.token_start - 1 <= 23 and 47 <= span.token_end - 1 <= 53  # around the planted [20, 50)
    same = spans_from_tables(tokens, seqs, nonmember_ids=list(nulls), window=8, alpha=0.01)
    assert same.calibration.threshold == cal.threshold and same.calibration.source == "nonmember_ids"
    # an explicit threshold wins; its false positive rate on the non-members is still reported
    given = spans_from_tables(tokens, seqs, nonmember_label=0, threshold=-5.0, window=8).calibration
    assert given.source == "user" and given.threshold == -5.0 and given.alpha is None
    assert given.null_fpr == pytest.approx(np.mean(smoothed_null > -5.0)) and 0.2 < given.null_fpr < 0.8


def test_without_calibration_the_threshold_is_refused():
    tokens, seqs = _tables({"a": np.zeros(30), "b": np.ones(30)})
    with pytest.raises(ValueError, match="uncalibrated threshold is meaningless"):
        spans_from_tables(tokens, seqs)
    with pytest.raises(ValueError, match=r"nonmember_label: the sequences table has no label column"):
        spans_from_tables(tokens, seqs, nonmember_label=0)
    with pytest.raises(ValueError, match=r"nonmember_ids: 1 ids are not in the score directory, e\.g\. \['zz'\]"):
        spans_from_tables(tokens, seqs, nonmember_ids=["a", "zz"])
    with pytest.raises(ValueError, match="either nonmember_label or nonmember_ids"):
        spans_from_tables(tokens, seqs.assign(label=[0, 1]), nonmember_label=0, nonmember_ids=["a"])
    with pytest.raises(TypeError, match="nonmember_ids: expected a collection of ids, got a single string"):
        spans_from_tables(tokens, seqs, nonmember_ids="a")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"window": 0}, ValueError, r"window: expected a positive int, got 0"),
        ({"window": 2.5}, TypeError, r"window: expected a positive int, got float"),
        ({"alpha": 0.0}, ValueError, r"alpha: expected a float in \(0, 1\), got 0.0"),
        ({"merge_gap": -1}, ValueError, r"merge_gap: expected a non-negative int, got -1"),
        ({"min_length": 0}, ValueError, r"min_length: expected a positive int, got 0"),
        ({"threshold": float("nan")}, ValueError, r"threshold: expected a finite float, got nan"),
        ({"threshold": "1"}, TypeError, r"threshold: expected a finite float, got str"),
        ({"signal": "loss"}, ValueError, r"signal: expected one of .*got 'loss'"),
        ({"signal": "reference_diff"}, ValueError, r"signal: 'reference_diff' needs a reference"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, message):
    tokens, seqs = _tables({"a": np.zeros(30)})
    with pytest.raises(error, match=message):
        spans_from_tables(tokens, seqs, **{"threshold": 0.5, **kwargs})


def test_min_k_pp_signal_is_the_per_token_z_score():
    tokens, _ = _tables({"a": np.array([-1.0, -2.0, -0.5])})
    tokens["entropy"] = [0.5, 1.0, 2.0]
    tokens["var_logp"] = [4.0, 1.0, 0.0]
    values, used = token_signal(tokens, signal="min_k_pp")
    assert used == "min_k_pp"
    np.testing.assert_allclose(values, [(-1.0 + 0.5) / 2.0, (-2.0 + 1.0) / 1.0, (-0.5 + 2.0) / 1e-4])


def test_mismatched_reference_tables_are_refused():
    tokens, seqs = _tables({"a": np.zeros(30), "b": np.zeros(20)})
    other = tokens.copy()
    other.loc[(other["row"] == 1) & (other["position"] == 5), "token"] += 1
    with pytest.raises(ValueError, match=r"reference: expected the same tokens as the target, got different ones "
                                         r"for row 1 \(id 'b'"):
        spans_from_tables(tokens, seqs, reference_tokens=other, threshold=0.0)
    with pytest.raises(ValueError, match=r"reference: expected the target's documents, got different rows"):
        spans_from_tables(tokens, seqs, reference_tokens=tokens[tokens["row"] == 0], threshold=0.0)
    shifted, _ = _tables({"a": np.zeros(30), "b": np.zeros(20)}, first_position=2)
    with pytest.raises(ValueError, match=r"--first-token"):
        spans_from_tables(tokens, seqs, reference_tokens=shifted, threshold=0.0)


# --------------------------------------------------------------------------------------------
# a planted memorised half, end to end through the command line


def _split(text: str) -> int:
    """Character index where the second half starts (a word boundary near the middle)."""
    return text.find(" ", len(text) // 2)


def _train(texts, seed):
    from mia_fast.audit.shadow_lm import train_causal_lm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than two for these tiny models
    try:
        return train_causal_lm(texts, fx.tokenizer(), fx.gpt2(n_positions=128).config, epochs=EPOCHS, lr=1e-2,
                               batch_size=8, max_length=128, seed=seed)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Target and reference score directories of members (first half trained on) and non-members."""
    from mia_fast.audit.shadow_lm import save_causal_lm

    base = tmp_path_factory.mktemp("planted")
    tok = fx.tokenizer()
    pool = fx.prose(400)
    lengths = [len(ids) for ids in tok(list(pool), add_special_tokens=False)["input_ids"]]
    docs = [t for t, n in zip(pool, lengths) if 80 <= n <= 126]  # whole paragraphs fit the 128-token context
    general = [t for t, n in zip(pool, lengths) if n < 80][:N_GENERAL]
    members = docs[:N_MEMBERS]
    nonmembers = docs[N_MEMBERS : N_MEMBERS + N_CALIBRATION + N_HELD_OUT]
    assert len(nonmembers) == N_CALIBRATION + N_HELD_OUT
    halves = [t[: _split(t)] for t in members]
    for name, texts, seed in (("target", halves + general, 0), ("reference", general, 1)):
        save_causal_lm(_train(texts, seed), tok, base / f"{name}_model")
    corpus = base / "corpus.jsonl"
    records = [{"doc": f"m{i}", "text": t, "member": 1} for i, t in enumerate(members)]
    records += [{"doc": f"n{i}", "text": t, "member": 0} for i, t in enumerate(nonmembers)]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    for name in ("target", "reference"):
        assert main(["score", "--model", str(base / f"{name}_model"), "--input", str(corpus), "--out",
                     str(base / name), "--id-field", "doc", "--label-field", "member", "--per-token",
                     "--first-token", "bos", "--no-progress"]) == 0  # the models are trained with BOS first
    calibration = base / "calibration_ids.txt"
    calibration.write_text("".join(f"n{i}\n" for i in range(N_CALIBRATION)))
    return {"base": base, "corpus": corpus, "records": records, "target": base / "target",
            "reference": base / "reference", "calibration": calibration}


def _coverage(report, records):
    """Fractions of flagged tokens: planted halves, unseen halves of members, held-out non-members."""
    by_id = {r["doc"]: r["text"] for r in records}
    flagged = {"planted": [], "unseen": [], "held_out": []}
    for doc in report.documents:
        assert doc.char_offsets is not None and doc.text == by_id[doc.id]
        f = doc.flagged()
        if doc.id.startswith("m"):
            planted = doc.char_offsets[:, 0] < _split(doc.text)
            flagged["planted"].append(f[planted])
            flagged["unseen"].append(f[~planted])
        elif int(doc.id[1:]) >= N_CALIBRATION:
            flagged["held_out"].append(f)
    return {k: float(np.concatenate(v).mean()) for k, v in flagged.items()}


def test_planted_halves_are_found_with_a_reference(planted, tmp_path, capsys):
    out = tmp_path / "spans"
    assert main(["spans", str(planted["target"]), "--reference", str(planted["reference"]), "--nonmember-ids",
                 str(planted["calibration"]), "--out", str(out)]) == 0
    assert "spans in" in capsys.readouterr().out
    report = locate_spans(planted["target"], reference=planted["reference"],
                          nonmember_ids=[f"n{i}" for i in range(N_CALIBRATION)])
    cov = _coverage(report, planted["records"])
    logging.getLogger(__name__).info("reference_diff coverage %s", cov)
    # measured: planted 0.82, unseen halves 0.03 (the window reaches past the boundary), held out 0.0
    assert cov["planted"] >= 0.6, cov
    assert cov["unseen"] <= 0.25, cov
    assert cov["held_out"] <= 0.05, cov
    for doc in report.documents:  # the spans' characters are the text of their tokens
        for s in doc.spans:
            assert s.text == doc.text[s.char_start : s.char_end] and s.text
    saved = json.loads((out / "spans.json").read_text())
    assert saved["calibration"]["signal"] == "reference_diff"
    assert saved["calibration"]["source"] == "nonmember_ids"
    assert saved["calibration"]["n_null_documents"] == N_CALIBRATION
    assert saved["calibration"]["threshold"] == pytest.approx(report.calibration.threshold)
    assert [d["id"] for d in saved["documents"]] == [r["doc"] for r in planted["records"]]
    assert saved["n_spans"] == sum(len(d.spans) for d in report.documents) > 0


def test_planted_halves_are_found_by_the_target_alone(planted):
    report = locate_spans(planted["target"], nonmember_ids=[f"n{i}" for i in range(N_CALIBRATION)])
    assert report.calibration.signal == "logprob"
    cov = _coverage(report, planted["records"])
    logging.getLogger(__name__).info("logprob coverage %s", cov)
    # measured: planted 0.95, unseen halves 0.002, held out 0.0
    assert cov["planted"] >= 0.6, cov
    assert cov["unseen"] <= 0.25, cov
    assert cov["held_out"] <= 0.05, cov


def test_the_label_column_calibrates_by_default(planted):
    report = locate_spans(planted["target"], reference=planted["reference"])
    cal = report.calibration
    assert cal.source == "nonmember_label" and cal.nonmember_label == 0
    assert cal.n_null_documents == N_CALIBRATION + N_HELD_OUT and cal.null_fpr <= 0.01


def test_cli_refuses_an_uncalibrated_threshold(planted, tmp_path, capsys):
    bare = tmp_path / "unlabelled"
    shutil.copytree(planted["target"], bare)
    seq = bare / "sequences" / "part-000000.parquet"
    pq.write_table(pq.read_table(seq).drop_columns(["label"]), seq)  # keeps the run tag in the schema metadata
    assert main(["spans", str(bare), "--out", str(tmp_path / "o")]) == 2
    assert "uncalibrated threshold is meaningless" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["spans", str(bare), "--threshold", "-1.5"]) == 0  # written into the score directory by default
    saved = json.loads((bare / "spans" / "spans.json").read_text())
    assert saved["calibration"]["source"] == "user" and saved["calibration"]["threshold"] == -1.5
    assert saved["calibration"]["signal"] == "logprob" and saved["n_spans"] > 0


def test_cli_refuses_a_reference_with_other_tokens(planted, tmp_path, capsys):
    other = tmp_path / "skip_first"  # the same model and corpus, but the first token not scored: positions shift
    assert main(["score", "--model", str(planted["base"] / "reference_model"), "--input", str(planted["corpus"]),
                 "--out", str(other), "--id-field", "doc", "--label-field", "member", "--per-token",
                 "--first-token", "skip", "--no-progress"]) == 0
    assert main(["spans", str(planted["target"]), "--reference", str(other), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "was not scored on the same texts with the same tokenization" in err and "(--first-token)" in err


def test_a_changed_corpus_gives_no_character_offsets(planted, tmp_path, caplog):
    moved = tmp_path / "scores"
    shutil.copytree(planted["target"], moved)
    edited = tmp_path / "corpus.jsonl"
    edited.write_text(planted["corpus"].read_text().replace("the", "THE"))
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["identity"]["input"]["path"] = str(edited)
    (moved / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="mia_fast.spans.text"):
        report = locate_spans(moved)
    assert "changed since it was scored" in caplog.text
    assert all(d.text is None and d.char_offsets is None for d in report.documents)
    assert all(d.token_text is not None and len(d.token_text) == d.n_tokens for d in report.documents)
    # given directly, the texts are checked against the stored tokens: the edited ones no longer match
    texts = {r["doc"]: r["text"].replace("the", "THE") for r in planted["records"]}
    with caplog.at_level(logging.WARNING, logger="mia_fast.spans.text"):
        report = locate_spans(moved, texts=texts)
    assert "re-tokenize to other ids" in caplog.text
    changed = {r["doc"] for r in planted["records"] if "the" in r["text"]}
    assert {d.id for d in report.documents if d.char_offsets is None} == changed


# --------------------------------------------------------------------------------------------
# the HTML page


class _PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tokens = self.spans = self.scripts = self.external = 0
        self.shades = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class", "")
        if tag == "span" and cls == "tok":
            self.tokens += 1
            self.shades.append(float(re.search(r"rgba\(\d+,\d+,\d+,([0-9.]+)\)", a["style"]).group(1)))
        if tag == "span" and cls == "span":
            self.spans += 1
        self.scripts += tag == "script"
        self.external += any(k in ("src", "href") and v and not v.startswith("#") for k, v in attrs)


def test_html_page_escapes_text_and_shades_tokens(planted, tmp_path):
    report = locate_spans(planted["target"], reference=planted["reference"])
    doc = report.documents[0]
    doc.id = '<script>alert("x")</script>'  # an id (or a text) with markup is shown, never run
    paths = write_spans(report, tmp_path)
    page = paths["html"].read_text()
    assert "<script>" not in page and html.escape(doc.id) in page
    parser = _PageParser()
    parser.feed(page)
    assert parser.scripts == 0 and parser.external == 0
    assert parser.tokens == sum(d.n_tokens for d in report.documents)
    assert parser.spans == sum(len(d.spans) for d in report.documents) > 0
    flagged = np.concatenate([d.flagged() for d in sorted(report.documents, key=_page_order)])
    shades = np.array(parser.shades)
    assert shades[flagged].mean() > 2 * shades[~flagged].mean()  # spans are visibly darker
    # every character of every text is on the page, in order
    text_only = html.unescape(re.sub(r"<[^>]+>", "", page))
    for d in report.documents:
        assert d.text in text_only


def _page_order(d):
    return (-max((s.score for s in d.spans), default=-np.inf), -float(d.smoothed.max()), d.row)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                    "(apt-get install -y chromium)")
def test_html_page_renders_in_headless_chromium(planted, tmp_path):
    out = tmp_path / "spans"
    assert main(["spans", str(planted["target"]), "--reference", str(planted["reference"]), "--out", str(out),
                 "--html-max-documents", "6"]) == 0
    page = (out / "spans.html").read_text()
    parser = _PageParser()
    parser.feed(page)
    assert parser.tokens > 100 and parser.spans > 0
    png = tmp_path / "spans.png"
    proc = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}",
         "--window-size=1200,900", "--hide-scrollbars", (out / "spans.html").resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert png.is_file() and png.stat().st_size > 20_000
    from PIL import Image

    with Image.open(png) as img:
        assert img.size == (1200, 900)
        pixels = np.asarray(img.convert("RGB"), dtype=np.int16)
    red = (pixels[..., 0] - pixels[..., 2] > 40) & (pixels[..., 0] > 150)  # the token shading
    blue = (pixels[..., 2] - pixels[..., 0] > 80)  # the span outlines (and links)
    assert red.mean() > 0.01 and blue.mean() > 0.001, (red.mean(), blue.mean())
