"""The distribution-shift check (a blind baseline that never sees the model): both directions."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from mia_fast.cli import main
from mia_fast.metrics import evaluate, shift_check


def _paragraphs() -> list[str]:
    from pydoc_data.topics import topics

    return [p.strip() for t in topics.values() for p in t.split("\n\n") if len(p.strip()) > 200]


def _docstrings() -> list[str]:
    """Another kind of text that ships with Python: the standard library's docstrings."""
    import argparse
    import collections
    import email
    import http.server
    import logging
    import unittest

    out = []
    for module in (collections, json, email, argparse, logging, unittest, inspect, http.server):
        for name, obj in vars(module).items():
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 200 and not name.startswith("_"):
                out.append(doc)
    return sorted(set(out))


def test_a_pool_split_at_random_is_not_flagged():
    """Measured over 40 seeds (60 + 60 paragraphs): 0 flagged. Here 12 seeds; at most one may be."""
    pool = _paragraphs()
    flagged, aucs = 0, []
    for seed in range(12):
        texts = list(np.random.default_rng(seed).choice(pool, 120, replace=False))
        check = shift_check(texts, [1] * 60 + [0] * 60, n_bootstrap=200, components=False, random_state=seed)
        flagged += check.confounded
        aucs.append(check.auc)
    assert flagged <= 1, aucs
    assert 0.4 < float(np.median(aucs)) < 0.6


def test_two_sources_are_flagged_with_the_ngrams_that_give_them_away():
    rng = np.random.default_rng(0)
    members = list(rng.choice(_paragraphs(), 80, replace=False))
    nonmembers = list(rng.choice(_docstrings(), 80, replace=False))
    check = shift_check(members + nonmembers, [1] * 80 + [0] * 80, n_bootstrap=300)
    assert check.confounded and check.auc > 0.85 and check.auc_ci[0] > 0.55
    assert set(check.component_auc) == {"word", "char", "simple"}
    assert len(check.member_ngrams) == len(check.nonmember_ngrams) == 15
    assert all(w > 0 for _, w in check.member_ngrams) and all(w < 0 for _, w in check.nonmember_ngrams)
    # docstrings speak of arguments and return values; the reference manual does not
    assert {"default", "str", "return", "returns", "args", "argument"} & {g for g, _ in check.nonmember_ngrams}
    assert "CONFOUNDED" in check.summary()


def test_evaluate_with_texts_reports_the_blind_baseline():
    rng = np.random.default_rng(1)
    texts = list(rng.choice(_paragraphs(), 30, replace=False)) + list(rng.choice(_docstrings(), 30, replace=False))
    labels = np.array([1] * 30 + [0] * 30)
    weak = labels * 0.3 + rng.normal(size=60)  # an attack no better than the shift
    out = evaluate(labels, weak, texts=texts, n_bootstrap=200, fprs=(0.1,))
    shift = out["shift_check"]
    assert {"auc", "auc_ci", "method", "confounded"} <= set(shift) and shift["confounded"]
    assert out["beats_blind_baseline"] is False
    assert "shift_check" not in evaluate(labels, weak, n_bootstrap=0, fprs=(0.1,))


@pytest.mark.parametrize("texts, labels, kwargs, match", [
    (["a"] * 10, [1] * 5 + [0] * 4, {}, r"labels: expected one label per text \(10\)"),
    (["a"] * 10, [1] * 8 + [0] * 2, {}, r"at least 5 members and 5 non-members, got 8 and 2"),
    (["a"] * 10, [2] * 5 + [0] * 5, {}, r"labels: expected 0 \(non-member\) and 1 \(member\)"),
    (["a"] * 10, [1] * 5 + [0] * 5, {"margin": 0.5}, r"margin: expected a number in \[0, 0.5\)"),
])
def test_bad_input_is_named(texts, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        shift_check(texts, labels, **kwargs)
    with pytest.raises(TypeError, match="texts: expected strings, got int"):
        shift_check([1] * 10, [1] * 5 + [0] * 5)


def test_shift_check_command(tmp_path, capsys):
    rng = np.random.default_rng(2)
    rows = [{"text": t, "member": 1} for t in rng.choice(_paragraphs(), 40, replace=False)]
    rows += [{"text": t, "member": 0} for t in rng.choice(_docstrings(), 40, replace=False)]
    corpus = tmp_path / "set.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "shift"
    assert main(["shift-check", "--input", str(corpus), "--label-field", "member", "--out", str(out)]) == 0
    saved = json.loads((out / "shift.json").read_text())
    assert saved["confounded"] and {"auc", "auc_ci", "method", "member_ngrams", "nonmember_ngrams"} <= set(saved)
    assert "CONFOUNDED" in capsys.readouterr().out
    assert main(["shift-check", "--input", str(corpus), "--label-field", "nope", "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err
