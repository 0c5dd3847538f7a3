"""Token frequencies of a reference corpus and the DC-PDD score (Zhang et al., EMNLP 2024).

DC-PDD ("Pretraining Data Detection for Large Language Models: A Divergence-based Calibration
Method", Zhang, Zhang, Guo, de Rijke, Fan and Cheng, EMNLP 2024, arXiv:2409.14781) calibrates the
target model's token probabilities by how common each token is in a large public reference
corpus, counted with the target's own tokenizer. For a text with scored tokens ``x_1 .. x_n``:

1. ``p_i = exp(logprob_i)``, the target model's probability of token ``x_i`` given its prefix;
2. ``f(v) = (count(v) + 1) / (total + V)``, the reference corpus frequency of token id ``v`` with
   Laplace (add-one) smoothing over the vocabulary of size ``V`` (`TokenFrequencies.relative`);
3. only the **first occurrence** of each token id in the text is kept;
4. ``alpha_i = -p_i * log f(x_i)`` (one term of the cross-entropy between the token probability
   distribution and the token frequency distribution), clipped above at ``a``:
   ``alpha_i = min(alpha_i, a)``;
5. ``beta = mean of alpha_i`` over the kept tokens.

Texts seen in training get higher token probabilities, above all for rare tokens (large
``-log f``), so **higher beta = more likely member** (the paper flags a text as training data when
``beta`` exceeds a threshold). The official code (``zhang-wei-chao/DC-PDD``, ``com_det_sco.py``)
stores ``-beta`` because its evaluation negates every score; MIMIR (``iamgroot42/mimir``,
``mimir/attacks/dc_pdd.py``) returns ``-beta`` under its lower-is-member convention. The paper's
and both implementations' default bound is ``a = 0.01`` (`DEFAULT_DC_PDD_A`).

The counting follows the official ``src/com_fre_dis.py`` (every token of every reference document,
counted once per occurrence) except that special tokens are not added (``add_special_tokens=False``)
and documents are not cut unless ``max_tokens`` is given (the official code keeps the first 1024
tokens of each document, special tokens included).

Counts of a corpus file are cached (`load_token_frequencies`) as ``.npz`` files keyed by the
tokenizer's fingerprint, the file's SHA-256 and the reading options.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import numpy as np
import torch

from .. import atomic
from ..columns import DC_PDD_COLUMN
from .corpus import FORMATS, Record, detect_format, fingerprint_input, iter_records
from .checks import as_1d, check_count, is_real
from .variants import Expansion, Pass, VariantFamily, VariantSpec

__all__ = [
    "DCPDD",
    "TokenFrequencies",
    "count_token_frequencies",
    "load_token_frequencies",
    "default_cache_dir",
    "dc_pdd_column",
    "DC_PDD_COLUMN",
    "DEFAULT_DC_PDD_A",
]

log = logging.getLogger(__name__)

#: Default upper bound ``a`` of each token's calibrated score (the paper's and the reference code's).
DEFAULT_DC_PDD_A = 0.01
#: Texts tokenized per tokenizer call by `count_token_frequencies`.
DEFAULT_BATCH_SIZE = 256
# Version of the cache file layout; part of the cache key.
_CACHE_VERSION = 1

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------
# token frequencies


@dataclasses.dataclass(frozen=True, eq=False)
class TokenFrequencies:
    """Token counts of a reference corpus under one tokenizer.

    Attributes
    ----------
    counts : ndarray, shape (V,), int64
        Occurrences of each token id in the corpus (V = vocabulary size).
    total : int
        ``counts.sum()``, the number of tokens counted.
    tokenizer_sha256 : str
        Fingerprint of the tokenizer (`mia_fast.scoring.run.tokenizer_fingerprint`).
    corpus_sha256 : str
        SHA-256 identifying the corpus: of the corpus file as `mia_fast.scoring.corpus.fingerprint_input`
        computes it (`load_token_frequencies`), or of the texts themselves (`count_token_frequencies`).
    n_documents : int
        Number of documents counted.
    """

    counts: np.ndarray
    total: int
    tokenizer_sha256: str
    corpus_sha256: str
    n_documents: int

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts)
        if counts.ndim != 1 or counts.dtype.kind not in "iu":
            raise ValueError(f"counts: expected a 1-D integer array, got dtype {counts.dtype} and shape {counts.shape}")
        if counts.shape[0] == 0:
            raise ValueError("counts: expected at least one vocabulary entry, got an empty array")
        if (counts < 0).any():
            raise ValueError(f"counts: expected non-negative counts, got {int((counts < 0).sum())} negative values")
        counts = np.array(counts, dtype=np.int64)  # a copy: the caller's array stays writable
        counts.setflags(write=False)
        object.__setattr__(self, "counts", counts)
        if isinstance(self.total, bool) or not isinstance(self.total, (int, np.integer)) \
                or int(self.total) != int(counts.sum()):
            raise ValueError(f"total: expected counts.sum() = {int(counts.sum())}, got {self.total!r}")
        object.__setattr__(self, "total", int(self.total))
        if isinstance(self.n_documents, bool) or not isinstance(self.n_documents, (int, np.integer)) \
                or self.n_documents < 0:
            raise ValueError(f"n_documents: expected a non-negative integer, got {self.n_documents!r}")
        object.__setattr__(self, "n_documents", int(self.n_documents))
        for name in ("tokenizer_sha256", "corpus_sha256"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name}: expected a str, got {type(getattr(self, name)).__name__}")

    @property
    def vocab_size(self) -> int:
        """V, the length of `counts`."""
        return int(self.counts.shape[0])

    def relative(self) -> np.ndarray:
        """Laplace-smoothed relative frequencies ``(counts + 1) / (total + V)``.

        Returns
        -------
        ndarray, shape (V,), float64
            Positive, summing to 1; a token never seen gets ``1 / (total + V)``.
        """
        return (self.counts.astype(np.float64) + 1.0) / float(self.total + self.vocab_size)

    def save(self, path: PathLike) -> None:
        """Write the counts and their metadata to an ``.npz`` file, atomically (`mia_fast.atomic`)."""
        _write_npz(Path(path), self, {})

    @classmethod
    def load(cls, path: PathLike) -> "TokenFrequencies":
        """Read a file written by `save`.

        Raises
        ------
        FileNotFoundError
            No such file.
        ValueError
            The file is not a valid token-frequency file.
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"path: expected a token-frequency .npz file, got {str(p)!r} (no such file)")
        freqs, _ = _read_npz(p)
        return freqs


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    from .run import tokenizer_fingerprint  # run imports the scorer, which may import this module

    try:
        return tokenizer_fingerprint(tokenizer)
    except AttributeError as exc:
        raise TypeError(f"tokenizer: expected a Hugging Face tokenizer (with get_vocab()), got "
                        f"{type(tokenizer).__name__} ({exc})") from None


def _vocab_size(tokenizer: Any, vocab_size: Optional[int]) -> int:
    if vocab_size is not None:
        return check_count("vocab_size", vocab_size)  # type: ignore[return-value]
    try:
        return int(len(tokenizer))
    except TypeError:
        raise TypeError(f"tokenizer: expected a tokenizer with len() (the vocabulary size), got "
                        f"{type(tokenizer).__name__}; pass vocab_size=") from None


def _batches(texts: Iterable[str], batch_size: int) -> Iterable[list[str]]:
    batch: list[str] = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts: expected str items, got {type(text).__name__} at index {i}")
        batch.append(text)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def count_token_frequencies(
    texts: Iterable[str],
    tokenizer: Any,
    vocab_size: Optional[int] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    max_tokens: Optional[int] = None,
    corpus_sha256: Optional[str] = None,
) -> TokenFrequencies:
    """Count the tokens of a reference corpus with the target model's tokenizer.

    Parameters
    ----------
    texts : iterable of str
        The reference documents, streamed (only one batch is held at a time).
    tokenizer : transformers tokenizer
        The target model's tokenizer; called on batches of texts with ``add_special_tokens=False``.
    vocab_size : int, optional
        V, the length of the counts (default ``len(tokenizer)``, which includes added tokens).
    batch_size : int
        Texts per tokenizer call.
    max_tokens : int, optional
        Count only the first ``max_tokens`` tokens of each document (the official DC-PDD code
        uses 1024); default: all of them.
    corpus_sha256 : str, optional
        Identity of the corpus to record; default: the SHA-256 of the texts (each one's UTF-8
        bytes preceded by its length).

    Returns
    -------
    TokenFrequencies

    Raises
    ------
    ValueError
        A token id outside ``[0, V)``; no token at all in the corpus.
    TypeError
        A text that is not a str.
    """
    V = _vocab_size(tokenizer, vocab_size)
    batch_size = check_count("batch_size", batch_size)  # type: ignore[assignment]
    max_tokens = check_count("max_tokens", max_tokens, optional=True)
    if corpus_sha256 is not None and not isinstance(corpus_sha256, str):
        raise TypeError(f"corpus_sha256: expected a str or None, got {type(corpus_sha256).__name__}")
    fingerprint = _tokenizer_fingerprint(tokenizer)
    counts = np.zeros(V, dtype=np.int64)
    digest = hashlib.sha256()
    n_documents = 0
    for batch in _batches(texts, batch_size):
        encoded = tokenizer(batch, add_special_tokens=False)["input_ids"]
        if len(encoded) != len(batch):
            raise ValueError(f"tokenizer: expected {len(batch)} token lists for a batch of texts, got {len(encoded)}")
        parts = []
        for text, ids in zip(batch, encoded):
            data = text.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
            parts.append(np.asarray(ids[:max_tokens] if max_tokens is not None else ids, dtype=np.int64).reshape(-1))
        n_documents += len(batch)
        flat = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        if flat.size:
            bad = (flat < 0) | (flat >= V)
            if bad.any():
                raise ValueError(
                    f"tokenizer: expected token ids in [0, {V}) (vocab_size), got id {int(flat[bad][0])} "
                    f"in the documents {n_documents - len(batch)}..{n_documents - 1}; pass a larger vocab_size"
                )
            counts += np.bincount(flat, minlength=V)
    total = int(counts.sum())
    if total == 0:
        raise ValueError(f"texts: expected a reference corpus with at least one token, got {n_documents} "
                         "documents and no token")
    return TokenFrequencies(
        counts=counts,
        total=total,
        tokenizer_sha256=fingerprint,
        corpus_sha256=corpus_sha256 if corpus_sha256 is not None else digest.hexdigest(),
        n_documents=n_documents,
    )


# --------------------------------------------------------------------------------------------
# the cache of a corpus file's counts


def default_cache_dir() -> Path:
    """Where `load_token_frequencies` caches counts: ``$MIA_FAST_CACHE/frequencies`` when the
    variable is set, else ``~/.cache/mia_fast/frequencies``."""
    root = os.environ.get("MIA_FAST_CACHE")
    base = Path(root).expanduser() if root else Path("~/.cache/mia_fast").expanduser()
    return base / "frequencies"


def _write_npz(path: Path, freqs: TokenFrequencies, key: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        counts=freqs.counts,
        meta=np.array(json.dumps({
            "version": _CACHE_VERSION,
            "total": freqs.total,
            "tokenizer_sha256": freqs.tokenizer_sha256,
            "corpus_sha256": freqs.corpus_sha256,
            "n_documents": freqs.n_documents,
            "key": key,
        })),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(path, buffer.getvalue())


def _read_npz(path: Path) -> tuple[TokenFrequencies, dict[str, Any]]:
    """The counts in ``path`` and the key they were stored under; ValueError when unreadable."""
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            counts = np.array(data["counts"])
            meta = json.loads(str(data["meta"][()]))
        freqs = TokenFrequencies(
            counts=counts,
            total=meta["total"],
            tokenizer_sha256=meta["tokenizer_sha256"],
            corpus_sha256=meta["corpus_sha256"],
            n_documents=meta["n_documents"],
        )
        if meta.get("version") != _CACHE_VERSION:
            raise ValueError(f"layout version {meta.get('version')!r}, expected {_CACHE_VERSION}")
        return freqs, meta.get("key", {})
    except Exception as exc:  # a damaged file can fail in many ways (zip, json, keys, values)
        raise ValueError(f"path: expected a token-frequency .npz file, got {str(path)!r} which cannot be read "
                         f"({type(exc).__name__}: {exc})") from None


def load_token_frequencies(
    path: PathLike,
    tokenizer: Any,
    *,
    cache_dir: Optional[PathLike] = None,
    text_field: str = "text",
    format: str = "auto",
    text_unit: str = "line",
    vocab_size: Optional[int] = None,
    max_tokens: Optional[int] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> TokenFrequencies:
    """Token counts of a reference corpus file, computed once and then read from a cache.

    The corpus is read with `mia_fast.scoring.corpus.iter_records` (JSON Lines, CSV/TSV, Parquet,
    plain text, saved datasets; a bad record raises `mia_fast.scoring.corpus.BadRecordError`) and
    counted with `count_token_frequencies`. The counts are stored in ``cache_dir`` as
    ``<key>.npz``, written atomically, where the key hashes the tokenizer's fingerprint
    (`mia_fast.scoring.run.tokenizer_fingerprint`), the corpus file's SHA-256 and the options
    that change the counts (format, text_field, text_unit, vocab_size, max_tokens). A later call
    with the same key reads the file instead of tokenizing; a cache file that cannot be read or
    does not match its key is counted again and replaced (with a warning).

    Parameters
    ----------
    path : str or os.PathLike
        The reference corpus (a file, or a saved dataset directory).
    tokenizer : transformers tokenizer
        The target model's tokenizer.
    cache_dir : str or os.PathLike, optional
        Default `default_cache_dir` (``$MIA_FAST_CACHE/frequencies`` or
        ``~/.cache/mia_fast/frequencies``).
    text_field : str
        Field or column holding each document (ignored for plain text).
    format : str
        ``"auto"`` (from the suffix) or one of `mia_fast.scoring.corpus.FORMATS`.
    text_unit : {"line", "paragraph"}
        Plain text only: a document per line or per paragraph.
    vocab_size, max_tokens, batch_size
        As for `count_token_frequencies`.

    Returns
    -------
    TokenFrequencies
        ``corpus_sha256`` is the file's SHA-256 (`mia_fast.scoring.corpus.fingerprint_input`).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Bad options, a bad record, token ids outside the vocabulary, an empty corpus.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"path: expected an existing reference corpus file or directory, got {str(p)!r} "
                                "(no such file or directory)")
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format: expected 'auto' or one of {list(FORMATS)}, got {format!r}")
    fmt = detect_format(p) if format == "auto" else format
    V = _vocab_size(tokenizer, vocab_size)
    check_count("max_tokens", max_tokens, optional=True)
    check_count("batch_size", batch_size)
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir: expected a str, os.PathLike or None, got {type(cache_dir).__name__}")
    # iter_records checks text_field, text_unit and the file's columns when it is called
    records = iter_records(p, format=fmt, text_field=text_field, text_unit=text_unit)
    key = {
        "version": _CACHE_VERSION,
        "tokenizer_sha256": _tokenizer_fingerprint(tokenizer),
        "corpus_sha256": fingerprint_input(p)["sha256"],
        "format": fmt,
        "text_field": None if fmt == "text" else text_field,
        "text_unit": text_unit if fmt == "text" else None,
        "vocab_size": V,
        "max_tokens": max_tokens,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()
    cache_path = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / f"{digest}.npz"
    if cache_path.is_file():
        try:
            freqs, stored_key = _read_npz(cache_path)
            if stored_key != key or freqs.vocab_size != V:
                raise ValueError(f"{str(cache_path)!r} holds counts for another key")
            log.debug("token frequencies read from the cache %s", cache_path)
            return freqs
        except ValueError as exc:
            log.warning("ignoring a damaged token-frequency cache file, counting again: %s", exc)
    texts = (item.text for item in records if isinstance(item, Record))
    freqs = count_token_frequencies(texts, tokenizer, V, batch_size, max_tokens=max_tokens,
                                    corpus_sha256=key["corpus_sha256"])
    try:
        _write_npz(cache_path, freqs, key)
    except OSError as exc:
        log.warning("could not write the token-frequency cache %s: %s", cache_path, exc)
    return freqs


# --------------------------------------------------------------------------------------------
# DC-PDD per sequence


def _check_a(a: Any) -> float:
    if not is_real(a) or math.isnan(float(a)) or float(a) <= 0:
        raise ValueError(f"a: expected a positive upper bound (math.inf for none), got {a!r}")
    return float(a)


def dc_pdd_column(
    logprob: torch.Tensor,
    token: torch.Tensor,
    seq: torch.Tensor,
    n_sequences: int,
    frequencies: Union[np.ndarray, TokenFrequencies],
    a: float = DEFAULT_DC_PDD_A,
) -> np.ndarray:
    """The per-sequence DC-PDD score from the per-token rows of scored tokens.

    ``beta = mean over first occurrences of min(-exp(logprob_i) * log f(token_i), a)``: see the
    module docstring for the derivation (Zhang et al., EMNLP 2024). Higher = more likely member.

    Parameters
    ----------
    logprob : Tensor, shape (n,), float
        Log-probability of each scored token under the target model (the per-token table's
        ``logprob``).
    token : Tensor, shape (n,), int
        Its token id, in ``[0, V)``.
    seq : Tensor, shape (n,), int
        Its sequence index, in ``[0, n_sequences)``. Rows are sorted by (sequence, position), as
        the scorer writes them: the first row of a (sequence, token id) pair is taken as the
        token's first occurrence in that text.
    n_sequences : int
        N, the number of sequences (rows of the result).
    frequencies : ndarray, shape (V,), or TokenFrequencies
        Positive reference-corpus frequencies of every token id (`TokenFrequencies.relative`,
        Laplace-smoothed), or a `TokenFrequencies` (its `TokenFrequencies.relative` is used).
    a : float
        Upper bound of each token's score (default `DEFAULT_DC_PDD_A` = 0.01, the paper's);
        ``math.inf`` for no bound.

    Returns
    -------
    ndarray, shape (N,), float64
        NaN for a sequence without a scored token.

    Raises
    ------
    ValueError
        Tensors of different lengths, ``seq`` not sorted or out of range, token ids outside
        ``[0, V)``, NaN log-probabilities, frequencies not positive and finite, ``a <= 0``.
    """
    a = _check_a(a)
    if isinstance(n_sequences, bool) or not isinstance(n_sequences, (int, np.integer)) or n_sequences < 0:
        raise ValueError(f"n_sequences: expected a non-negative integer, got {n_sequences!r}")
    n_sequences = int(n_sequences)
    if isinstance(frequencies, TokenFrequencies):
        freq = frequencies.relative()
    else:
        freq = np.asarray(frequencies)
        if freq.dtype.kind not in "iuf":
            raise TypeError(f"frequencies: expected real numbers, got dtype {freq.dtype}")
        if freq.ndim != 1 or freq.shape[0] == 0:
            raise ValueError(f"frequencies: expected a non-empty 1-D array of shape (V,), got shape {freq.shape}")
        freq = freq.astype(np.float64, copy=False)
        bad = ~(np.isfinite(freq) & (freq > 0))
        if bad.any():
            raise ValueError(
                f"frequencies: expected positive finite values (Laplace-smoothed frequencies), got "
                f"{int(bad.sum())} others (first at index {int(np.flatnonzero(bad)[0])})"
            )
    V = freq.shape[0]
    lp = as_1d(logprob, "logprob", "float")
    tok = as_1d(token, "token", "int")
    sq = as_1d(seq, "seq", "int")
    n = lp.shape[0]
    if tok.shape[0] != n or sq.shape[0] != n:
        raise ValueError(f"token, seq: expected {n} values each (one per row of logprob), got "
                         f"{tok.shape[0]} and {sq.shape[0]}")
    out = np.full(n_sequences, np.nan, dtype=np.float64)
    if n == 0:
        return out
    if np.isnan(lp).any() or (lp > 0).any():
        bad = np.isnan(lp) | (lp > 0)
        raise ValueError(f"logprob: expected log-probabilities (<= 0, not NaN), got {int(bad.sum())} other values "
                         f"(first at row {int(np.flatnonzero(bad)[0])})")
    bad = (tok < 0) | (tok >= V)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"token: expected ids in [0, {V}) (the length of frequencies), got {int(tok[i])} at row {i}")
    bad = (sq < 0) | (sq >= n_sequences)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"seq: expected sequence indices in [0, {n_sequences}) (n_sequences), got {int(sq[i])} at row {i}")
    if n > 1 and (np.diff(sq) < 0).any():
        i = int(np.flatnonzero(np.diff(sq) < 0)[0]) + 1
        raise ValueError(f"seq: expected rows sorted by (sequence, position), got sequence {int(sq[i])} after "
                         f"{int(sq[i - 1])} at row {i}")
    # first occurrence of each (sequence, token id): np.unique's index is the first row of each key
    _, first = np.unique(sq * V + tok, return_index=True)
    alpha = np.exp(lp[first]) * -np.log(freq[tok[first]])
    alpha = np.minimum(alpha, a)
    kept = sq[first]
    sums = np.bincount(kept, weights=alpha, minlength=n_sequences)
    counts = np.bincount(kept, minlength=n_sequences)
    has = counts > 0
    out[has] = sums[has] / counts[has]
    return out


@dataclasses.dataclass(frozen=True)
class DCPDD(VariantSpec):
    """DC-PDD (Zhang et al., EMNLP 2024) in corpus scoring: column ``dc_pdd`` (`dc_pdd_column`),
    read by `mia_fast.attacks.DCPDDAttack`. A reduction of the texts' own scored tokens (no
    extra forward pass); the token frequencies are counted once per tokenizer and corpus with
    the target's tokenizer and cached (`load_token_frequencies`).

    Attributes
    ----------
    corpus : str
        The reference corpus (any format the readers take: JSONL, CSV, Parquet, text, ...).
    a : float
        Upper bound of each token's calibrated score (the paper's 0.01).
    text_field, format : str
        How to read ``corpus`` (`mia_fast.scoring.corpus.iter_records`).
    """

    corpus: str
    a: float = DEFAULT_DC_PDD_A
    text_field: str = "text"
    format: str = "auto"
    name = "dc_pdd"

    def __post_init__(self) -> None:
        object.__setattr__(self, "a", _check_a(self.a))
        if not Path(self.corpus).exists():
            raise FileNotFoundError(f"corpus: expected a reference corpus file, got {str(self.corpus)!r} "
                                    "(no such file)")

    def as_dict(self) -> dict[str, Any]:
        info = {k: v for k, v in fingerprint_input(self.corpus).items() if k != "mtime_ns"}
        return {"name": self.name, "corpus": {"path": str(Path(self.corpus).resolve()), **info}, "a": self.a,
                "text_field": self.text_field, "format": self.format}

    def columns(self) -> tuple[str, ...]:
        return (DC_PDD_COLUMN,)

    def build(self, scorer: Any) -> VariantFamily:
        return _DCPDDFamily(self, load_token_frequencies(self.corpus, scorer.tokenizer, text_field=self.text_field,
                                                         format=self.format))


class _DCPDDFamily(VariantFamily):
    def __init__(self, spec: DCPDD, frequencies: "TokenFrequencies"):
        self.a = spec.a
        self.relative = frequencies.relative()

    def columns(self, documents: Pass, variants: Pass, expansion: Expansion) -> dict[str, np.ndarray]:
        return {DC_PDD_COLUMN: dc_pdd_column(documents.stats.logprob, documents.token, documents.seq,
                                             documents.n_sequences, self.relative, self.a)}
