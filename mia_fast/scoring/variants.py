"""Text variants: every document's derived inputs, scored in the same batches as the documents.

Several attacks compare a document's likelihood with that of inputs derived from it: the text
after a fixed context (ReCaLL, Con-ReCaLL), the lowercased text (Carlini et al. 2021), texts
with one word replaced (neighbourhood comparison), texts with words swapped (PAC). Others only
reduce the document's own scored tokens differently (the continuation after its own prefix;
DC-PDD's frequency calibration). All of them are a *variant family* here, one mechanism:

1. ``expand`` turns a shard's documents into the family's model inputs: a list of token lists
   with their `Window` (what is scored) and, per input, the variant it belongs to and the
   document that variant derives from (``parent``). A family that needs no forward pass
   expands to nothing.
2. `mia_fast.scoring.scorer.TextScorer` puts the documents' windows and every family's windows
   into **one** list and scores them with one call of its bucketed, token-budgeted loop: one
   model load, the same batches, and, in a score directory, the same shards, so variants are
   scored exactly once across a kill and resume, like the documents they belong to.
3. ``columns`` reduces the family's scored tokens per parent into named columns of the
   per-sequence table (``loss_lowercase``, ``loss_context``, ...).

Generated variants (neighbours, augmentations) depend only on the document's text, the
family's options and its seed, never on which other documents share the shard or the batch,
so a resumed or re-sharded run reproduces them; each family's options (seed included) are in
the manifest (`VariantSpec.as_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..columns import PrefixSetting, check_prefix_tokens
from ..stats import TokenStats
from .batching import Window, windows
from .prefix import (
    conditioned_inputs,
    context_columns,
    context_sha256,
    context_token_ids,
    continuation_columns,
)

__all__ = [
    "Pass",
    "Expansion",
    "VariantFamily",
    "VariantSpec",
    "Lowercase",
    "MemberContext",
    "mean_loss",
    "text_variant_inputs",
]


@dataclass
class Pass:
    """Scored tokens of a group of model sequences, sorted by (sequence, position).

    Attributes
    ----------
    stats : TokenStats, fields of shape (n,)
    seq : Tensor (n,), int64
        The sequence of each token, in ``[0, n_sequences)``.
    pos : Tensor (n,), int64
        Its position in the sequence's token list.
    token : Tensor (n,), int64
        Its token id.
    lengths : Tensor (n_sequences,), int64
        Each sequence's number of tokens (scored or not, a BOS included).
    """

    stats: TokenStats
    seq: torch.Tensor
    pos: torch.Tensor
    token: torch.Tensor
    lengths: torch.Tensor

    @property
    def n_sequences(self) -> int:
        return int(self.lengths.numel())


@dataclass
class Expansion:
    """A family's model inputs for one group of documents.

    Attributes
    ----------
    inputs : list of list of int
        Token ids of each model sequence.
    wins : list of Window
        The windows over ``inputs`` (``Window.seq`` indexes ``inputs``).
    variant : ndarray (len(inputs),), int64
        The variant each input belongs to (a long variant spans several inputs).
    parent : ndarray (n_variants,), int64
        The document each variant derives from.
    columns : dict of str to ndarray (N,)
        Columns a family computes without scoring inputs (SaMIA's generation).
    """

    inputs: list[list[int]] = field(default_factory=list)
    wins: list[Window] = field(default_factory=list)
    variant: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    parent: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_variants(self) -> int:
        return int(self.parent.shape[0])


class VariantFamily:
    """A family at scoring time: built once per scorer, it expands documents and reduces columns."""

    def expand(self, texts: Sequence[str], tokens: list[list[int]]) -> Expansion:
        """The family's model inputs for ``texts`` (token lists ``tokens``, BOS first under that policy)."""
        return Expansion()

    def columns(self, documents: Pass, variants: Pass, expansion: Expansion) -> dict[str, np.ndarray]:
        """Per-document columns from the documents' own scored tokens and the family's inputs'
        (``variants.seq`` indexes ``expansion.inputs``; ``expansion.variant`` and ``expansion.parent``
        map them to variants and documents)."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """Resolved settings for the manifest (e.g. the tokens a context kept); none by default."""
        return {}


class VariantSpec:
    """What a variant family is, as options: recorded in the manifest (`as_dict`), built per scorer."""

    name: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The options as JSON-ready values (texts by their sha256)."""
        raise NotImplementedError

    def build(self, scorer: Any) -> VariantFamily:
        """The family for one `mia_fast.scoring.scorer.TextScorer` (loads what it needs once)."""
        raise NotImplementedError

    def columns(self) -> tuple[str, ...]:
        """Names of the per-sequence columns the family writes."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# helpers shared by the families


def mean_loss(group: Pass, owner: torch.Tensor, n: int) -> np.ndarray:
    """Mean NLL of the scored tokens of each of ``n`` groups.

    Parameters
    ----------
    group : Pass
        Scored tokens.
    owner : Tensor (group.n_sequences,), int64
        The group (in ``[0, n)``) of each sequence of ``group``.
    n : int

    Returns
    -------
    ndarray (n,), float64, NaN for a group without a scored token.
    """
    target = owner[group.seq] if group.seq.numel() else group.seq
    count = torch.bincount(target, minlength=n)
    total = torch.bincount(target, weights=-group.stats.logprob.double(), minlength=n)
    return torch.where(count > 0, total / count.clamp(min=1), torch.nan).numpy()


def _document_loss(documents: Pass) -> np.ndarray:
    """The documents' own ``loss`` column (mean NLL of their scored tokens)."""
    return mean_loss(documents, torch.arange(documents.n_sequences), documents.n_sequences)


def text_variant_inputs(scorer: Any, variant_texts: Sequence[Sequence[str]]) -> Expansion:
    """Inputs for derived texts, scored exactly like documents (first-token policy, windows).

    Parameters
    ----------
    scorer : TextScorer
    variant_texts : sequence (N documents) of sequences of str
        Each document's derived texts (any number, possibly none).

    Returns
    -------
    Expansion whose variants are the derived texts in order, one input sequence each.
    """
    flat = [t for texts in variant_texts for t in texts]
    parent = np.repeat(np.arange(len(variant_texts), dtype=np.int64), [len(t) for t in variant_texts])
    tokens = scorer.tokenize(flat) if flat else []
    wins = [w for i, t in enumerate(tokens) for w in windows(len(t), scorer.context, scorer.stride, seq=i)]
    return Expansion(tokens, wins, np.arange(len(flat), dtype=np.int64), parent)


def _context_inputs(scorer: Any, tokens: list[list[int]], context_ids: list[int]) -> Expansion:
    """Each document's own tokens after ``BOS + context`` (`mia_fast.scoring.prefix.conditioned_inputs`)."""
    bos = int(scorer.bos_id is not None)
    lead = [scorer.bos_id] * bos + context_ids
    inputs, wins, owner = conditioned_inputs([t[bos:] for t in tokens], lead, scorer.context, scorer.stride,
                                             first_scored=1 - bos)
    return Expansion(inputs, wins, owner.numpy(), np.arange(len(tokens), dtype=np.int64))


def _context_ids(scorer: Any, text: str, cap: Optional[int], names: tuple[str, str]) -> list[int]:
    return context_token_ids(scorer.tokenizer, text, cap, room=scorer.context - 2 - (scorer.bos_id is not None),
                             names=names)


# --------------------------------------------------------------------------------------------
# families of the scoring options that existed before variants: own prefix and ReCaLL's context


class _PrefixFamily(VariantFamily):
    """Own-prefix continuation columns (`mia_fast.scoring.prefix`): a reduction, no forward pass."""

    def __init__(self, scorer: Any, settings: tuple[PrefixSetting, ...]):
        self.bos = int(scorer.bos_id is not None)
        self.prefixes = check_prefix_tokens(settings)

    def columns(self, documents: Pass, variants: Pass, expansion: Expansion) -> dict[str, np.ndarray]:
        return continuation_columns(documents.stats.logprob, documents.seq, documents.pos - self.bos,
                                    documents.lengths - self.bos, self.prefixes)


class _ContextFamily(VariantFamily):
    """The text after a fixed context: ``loss_context`` (non-member context, with ReCaLL's ``recall``)
    or ``loss_member_context`` (Con-ReCaLL's member context)."""

    def __init__(self, scorer: Any, text: str, cap: Optional[int], column: str):
        self.ids = _context_ids(scorer, text, cap, ("context_tokens", "--context-tokens") if column == "loss_context"
                                else ("member context tokens", "--member-context-tokens"))
        self.column = column
        self.scorer = scorer

    def expand(self, texts: Sequence[str], tokens: list[list[int]]) -> Expansion:
        return _context_inputs(self.scorer, tokens, self.ids)

    def settings(self) -> dict[str, Any]:
        key = "context_tokens_used" if self.column == "loss_context" else "member_context_tokens_used"
        return {key: len(self.ids)}

    def columns(self, documents: Pass, variants: Pass, expansion: Expansion) -> dict[str, np.ndarray]:
        loss_context = mean_loss(variants, torch.from_numpy(expansion.variant), expansion.n_variants)
        if self.column != "loss_context":
            return {self.column: loss_context}
        return context_columns(loss_context, _document_loss(documents))


def builtin_families(scorer: Any) -> list[VariantFamily]:
    """The families of the scorer's own options (``prefix_tokens``, ``context_text``), in that order."""
    options = scorer.options
    out: list[VariantFamily] = []
    if options.prefix_tokens:
        out.append(_PrefixFamily(scorer, options.prefix_tokens))
    if options.context_text is not None:
        out.append(_ContextFamily(scorer, options.context_text, options.context_tokens, "loss_context"))
    return out


# --------------------------------------------------------------------------------------------
# variant specs


@dataclass(frozen=True)
class Lowercase(VariantSpec):
    """The lowercased text (Carlini et al., USENIX Security 2021, "Extracting Training Data from
    Large Language Models"): column ``loss_lowercase``, the mean NLL of ``text.lower()``, read by
    `mia_fast.attacks.LowercaseAttack`. One extra forward pass over the corpus."""

    name = "lowercase"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name}

    def columns(self) -> tuple[str, ...]:
        return ("loss_lowercase",)

    def build(self, scorer: Any) -> VariantFamily:
        return _LowercaseFamily(scorer)


class _LowercaseFamily(VariantFamily):
    def __init__(self, scorer: Any):
        self.scorer = scorer

    def expand(self, texts: Sequence[str], tokens: list[list[int]]) -> Expansion:
        return text_variant_inputs(self.scorer, [[t.lower()] for t in texts])

    def columns(self, documents: Pass, variants: Pass, expansion: Expansion) -> dict[str, np.ndarray]:
        per_variant = mean_loss(variants, torch.from_numpy(expansion.variant), expansion.n_variants)
        out = np.full(documents.n_sequences, np.nan)
        out[expansion.parent] = per_variant
        return {"loss_lowercase": out}


@dataclass(frozen=True)
class MemberContext(VariantSpec):
    """The text after a context of known **members** (Con-ReCaLL, Wang et al. 2024, "Con-ReCaLL:
    Detecting Pre-training Data in LLMs via Contrastive Decoding"): column ``loss_member_context``.

    With the non-member context of ``ScoreOptions.context_text`` (column ``loss_context``), it
    gives `mia_fast.attacks.ConReCaLLAttack`. The context is placed, capped and windowed exactly
    like the non-member one (`mia_fast.scoring.prefix`).

    Parameters
    ----------
    text : str
        The member context (e.g. a few paragraphs known to be in the training data).
    tokens : int, optional
        Keep only its last ``tokens`` tokens.
    """

    text: str
    tokens: Optional[int] = None
    name = "member_context"

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"member context: expected some text, got {self.text!r:.60}")
        if self.tokens is not None and (isinstance(self.tokens, bool) or not isinstance(self.tokens, int)
                                        or self.tokens < 1):
            raise ValueError(f"member context tokens: expected a positive number of tokens, got {self.tokens!r}")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": context_sha256(self.text), "tokens": self.tokens}

    def columns(self) -> tuple[str, ...]:
        return ("loss_member_context",)

    def build(self, scorer: Any) -> VariantFamily:
        return _ContextFamily(scorer, self.text, self.tokens, "loss_member_context")
