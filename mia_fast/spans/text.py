"""Texts and character offsets of the scored tokens, for `mia_fast.spans`.

A score directory stores token ids, not text. The texts are read again from the corpus file named
in the manifest, only while its SHA-256 still matches the one recorded at scoring time, and
re-tokenized with the tokenizer of the model directory named in the manifest; a fast tokenizer's
offset mapping gives each token's character range. The re-tokenized ids are checked against the
stored ones: a document whose ids differ gets no character offsets (a warning says so), never
wrong ones. Texts and a tokenizer can also be passed directly.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .model import DocumentSpans, Span, SpanReport

__all__ = ["attach_texts", "tokenizer_from_manifest"]

log = logging.getLogger(__name__)


def attach_texts(report: SpanReport, texts: Mapping[int, str], tokenizer: Any = None,
                 bos_token_id: Optional[int] = None) -> None:
    """Give the report's documents their text, character offsets and span texts (in place).

    Parameters
    ----------
    report : SpanReport
    texts : mapping of row -> str
        Documents missing from the mapping keep no text.
    tokenizer : transformers tokenizer, optional
        The model's tokenizer. A fast tokenizer gives the character offsets (checked against the
        stored token ids); any tokenizer gives ``token_text`` for display.
    bos_token_id : int, optional
        The BOS id prepended at scoring time (manifest ``settings.bos_token_id``): position ``p``
        is the text's token ``p - 1`` with a BOS, ``p`` without. Unknown (None): whichever of
        the two matches the stored ids.
    """
    for doc in report.documents:
        doc.text = texts.get(doc.row)
    if tokenizer is None:
        return
    with_text = [d for d in report.documents if d.text is not None]
    encoded = _offsets(tokenizer, [d.text for d in with_text])
    mismatched = []
    for i, doc in enumerate(with_text):
        if encoded is None:
            break
        ids, offsets = encoded[0][i], encoded[1][i]
        doc.char_offsets = _align(doc.positions, doc.tokens, ids, offsets, bos_token_id)
        if doc.char_offsets is None:
            mismatched.append(doc.id)
    if mismatched:
        log.warning("%d documents re-tokenize to other ids than the stored ones (e.g. id %r): no character "
                    "offsets for them (was the corpus or the tokenizer changed?)", len(mismatched), mismatched[0])
    for doc in report.documents:
        if doc.char_offsets is None:
            doc.token_text = tokenizer.batch_decode([[int(t)] for t in doc.tokens])
        else:
            doc.spans = [_with_chars(doc, s) for s in doc.spans]


def _offsets(tokenizer: Any, texts: list[str]) -> Optional[tuple[list[list[int]], list[list[tuple[int, int]]]]]:
    if not texts:
        return [], []
    if not getattr(tokenizer, "is_fast", False):
        log.warning("the tokenizer %s gives no character offsets (not a fast tokenizer): spans without "
                    "character ranges", type(tokenizer).__name__)
        return None
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], enc["offset_mapping"]


def _align(positions: np.ndarray, stored: np.ndarray, ids: Sequence[int], offsets: Sequence[tuple[int, int]],
           bos_token_id: Optional[int]) -> Optional[np.ndarray]:
    """Offsets ``(n, 2)`` of the stored tokens, or None when the re-tokenized ids differ."""
    ids_arr = np.asarray(ids, dtype=np.int64)
    shifts = (1,) if bos_token_id is not None else (1, 0)
    for shift in shifts:
        index = positions - shift
        if len(index) and (index.min() < 0 or index.max() >= len(ids_arr)):
            continue
        if np.array_equal(ids_arr[index], stored):
            return np.asarray(offsets, dtype=np.int64).reshape(-1, 2)[index]
    return None


def _with_chars(doc: DocumentSpans, span: Span) -> Span:
    index = np.searchsorted(doc.positions, [span.token_start, span.token_end - 1])
    start = int(doc.char_offsets[index[0], 0])
    end = int(doc.char_offsets[index[1], 1])
    return dataclasses.replace(span, char_start=start, char_end=end, text=doc.text[start:end])


def tokenizer_from_manifest(manifest: Mapping[str, Any]) -> Any:
    """The model's tokenizer from the directory named in the manifest, or None when unavailable."""
    model = manifest.get("identity", {}).get("model", {})
    path = model.get("path")
    if path is None or not Path(path).exists():
        log.warning("the model directory %s is gone: no tokenizer, spans without character ranges", path)
        return None
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": model["gguf_file"]} if model.get("gguf_file") else {}
    try:
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        log.warning("cannot load the tokenizer of %s (%s): spans without character ranges", path, err)
        return None
