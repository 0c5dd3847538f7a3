"""Neighbour texts for the neighbourhood attack (Mattern et al., Findings of ACL 2023,
"Membership Inference Attacks against Language Models via Neighbourhood Comparison").

A neighbour of a text differs from it in one token, replaced by a masked LM (the paper: BERT):
for each token position, the masked LM reads the text with the input embedding of that token
dropped out (dropout with ``p = 0.7`` on that one embedding, instead of a ``[MASK]``, so that the
model still sees a trace of the original word and proposes a plausible substitute), and its most
probable other tokens at that position are candidates. A candidate ``(position, token)`` is
ranked by ``p(token) / (1 - p(original token))`` (the probability of the replacement among the
alternatives to the original), and the ``n`` best candidates over all positions give the ``n``
neighbours. The attack (`mia_fast.attacks.NeighbourhoodAttack`) compares the target model's loss
on the text with its mean loss on the neighbours: a member's loss is lower than its neighbours'.

Following the authors' code (``generate_neighbours_alt``) and its ports (MIMIR
``mimir/attacks/neighborhood.py`` and Fast-MIA ``src/methods/neighbour.py``): every position
after ``[CLS]`` within the masked LM's window is a candidate position; at each the ``top_k``
most probable replacements are kept (the authors take the top 6 and drop the original, MIMIR
likewise, Fast-MIA the top 10); special tokens (and BERT's ``[unused*]``) are never proposed;
when the original token has probability 1 the ranking divides by 0.1 instead of 0.
Differences, on purpose:

* Dropout is applied to the *word* embedding of the target token, which the masked LM then
  embeds with its position (the paper's description); the authors' code drops out the output of
  the whole embedding layer (word + position + LayerNorm) and feeds that back as word
  embeddings, embedding it twice.
* A neighbour is made in the original string: the substituted token's character span (the
  tokenizer's offsets, as MIMIR's ``original_tokenization_swap``) gets the candidate's text, and
  every other byte of the document is kept, including the part beyond the masked LM's window
  and the casing and accents an uncased tokenizer drops (the authors' code decodes the whole
  token list instead, which normalises the text).
* A word-initial token is only replaced by a word-initial token and a continuation piece
  (``##ing``) by a continuation piece, a token with letters or digits by one with letters or
  digits and a punctuation token by a punctuation token, so that a neighbour changes exactly
  one word (a run of non-whitespace characters) of the text, never merges or splits words and
  never glues a word onto punctuation (``program:`` does not become ``programthe``).
* Randomness (the dropout masks, the sampled positions) comes from a generator per document
  seeded by ``sha256(seed, text)``, and a forward batch holds positions of one document only
  (no padding), so a document's neighbours do not depend on the other documents of the call,
  shard or batch (on the same device and software).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from .variants import Expansion, Pass, VariantFamily, VariantSpec, mean_loss, text_variant_inputs
from .augment import document_seed, flatten_variants, mean_by_parent
from .checks import check_count, check_seed, check_texts, is_real

__all__ = [
    "Neighbours",
    "load_masked_lm",
    "neighbour_texts",
    "neighbour_loss",
    "flatten_variants",
]

RULES = ("dropout", "mask")
# Position embeddings of these model types start after the padding index (RoBERTa's offset of 2).
_OFFSET_POSITION_TYPES = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2}
# Model types whose masked-LM head is applied position-wise to the body's last hidden state, so the
# vocabulary logits are computed at the target positions only.
_HEADS = {"bert": "cls", "roberta": "lm_head", "xlm-roberta": "lm_head", "camembert": "lm_head"}
# Logit elements per forward when the full (batch, length, vocabulary) logits must be formed.
_LOGIT_BUDGET = 1 << 26
_UNUSED = re.compile(r"^\[unused\d+\]$")
_SPACE = re.compile(r"\s")


@dataclass(frozen=True)
class Neighbours(VariantSpec):
    """The neighbourhood comparison (Mattern et al., 2023) as a variant family of corpus scoring
    (`mia_fast.scoring.variants`): each text's neighbours (`neighbour_texts`) are scored in the
    texts' batches; columns ``loss_neighbours`` (the mean of their losses, `neighbour_loss`) and
    ``n_neighbours``, read by `mia_fast.attacks.NeighbourhoodAttack`. The options, and the masked
    LM's path and sha256, are recorded in the manifest.

    Attributes
    ----------
    masked_lm : str, optional
        Local directory of the masked LM that proposes the replacements (`load_masked_lm`);
        needed in corpus scoring, not by `neighbour_texts`, which takes the model itself.
    n_neighbours : int
        Neighbours per text (the paper's experiments use up to 100, the default; fewer come back
        for a text with fewer candidate substitutions).
    rule : {'dropout', 'mask'}
        ``dropout`` (the paper): the target token's input embedding goes through dropout with
        probability ``dropout``; ``mask``: the target token is replaced by the mask token (the
        usual masked-LM query, deterministic).
    dropout : float in [0, 1)
        Dropout probability of the ``dropout`` rule (paper: 0.7).
    top_k : int
        Candidate replacements kept per position: the most probable tokens that may replace the
        one there (the original excluded, and only tokens of its kind: word-initial or
        continuation piece, word or punctuation); the authors' code takes the top 6 and drops
        the original, i.e. 5.
    max_positions : int, optional
        Query at most this many positions per text, a random subset drawn from the document's
        generator (default: every position in the masked LM's window, as the paper).
    max_length : int, optional
        Window of the masked LM in tokens, special tokens included (default: its own context,
        512 for BERT); tokens beyond it are never substituted.
    seed : int
        Seed of the dropout masks and position subsets (each document draws from
        ``sha256(seed, text)``).
    batch_size : int
        Positions (copies of one document) per masked-LM forward.
    """

    masked_lm: Optional[str] = None
    n_neighbours: int = 100
    rule: str = "dropout"
    dropout: float = 0.7
    top_k: int = 5
    max_positions: Optional[int] = None
    max_length: Optional[int] = None
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_neighbours", check_count("n_neighbours", self.n_neighbours))
        if self.rule not in RULES:
            raise ValueError(f"rule: expected one of {RULES}, got {self.rule!r}")
        if not is_real(self.dropout) or not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "top_k", check_count("top_k", self.top_k))
        if self.max_positions is not None:
            object.__setattr__(self, "max_positions", check_count("max_positions", self.max_positions))
        if self.max_length is not None:
            object.__setattr__(self, "max_length", check_count("max_length", self.max_length, minimum=3))
        object.__setattr__(self, "seed", check_seed(self.seed))
        object.__setattr__(self, "batch_size", check_count("batch_size", self.batch_size))

    name = "neighbours"

    def as_dict(self) -> dict[str, Any]:
        """The options as a JSON-ready dict, with the masked LM's sha256 (`mia_fast.scoring.run.model_fingerprint`)."""
        out = {"name": self.name, **asdict(self)}
        if self.masked_lm is not None:
            from .run import model_fingerprint

            path = Path(self.masked_lm)
            out["masked_lm"] = {"path": str(path.resolve()), **(model_fingerprint(path) if path.is_dir() else {})}
        return out

    def columns(self) -> tuple[str, ...]:
        return ("loss_neighbours", "n_neighbours")

    def build(self, scorer: Any) -> VariantFamily:
        if self.masked_lm is None:
            raise ValueError("masked_lm: expected the local directory of a masked LM (--neighbour-model), got None")
        return _NeighbourFamily(scorer, self)


def load_masked_lm(path_or_name: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
                   dtype: Optional[torch.dtype] = None) -> tuple[Any, Any]:
    """Load a masked LM and its fast tokenizer from a local Hugging Face directory (or the local cache).

    Nothing is downloaded (``local_files_only=True``).

    Parameters
    ----------
    path_or_name : str or path
        A directory written by ``save_pretrained`` (config, weights, tokenizer), or the name of a
        model already in the local Hugging Face cache.
    device : str or torch.device
    dtype : torch.dtype, optional
        Weights' dtype (default: as saved).

    Returns
    -------
    model : transformers.PreTrainedModel
        An ``AutoModelForMaskedLM`` in eval mode on ``device``.
    tokenizer : transformers.PreTrainedTokenizerFast

    Raises
    ------
    FileNotFoundError
        Nothing loadable at ``path_or_name``.
    ValueError
        The model there is not a masked LM (e.g. a causal LM).
    TypeError
        Its tokenizer is not a fast tokenizer (character offsets are needed).
    """
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    if not isinstance(path_or_name, (str, os.PathLike)):
        raise TypeError(f"path_or_name: expected a directory or model name, got {type(path_or_name).__name__}")
    source = os.fspath(path_or_name)
    if os.path.exists(source) and not os.path.isdir(source):
        raise FileNotFoundError(f"path_or_name: expected a Hugging Face model directory, got the file {source!r}")
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"path_or_name: expected a local Hugging Face masked LM (a directory with config.json, or a "
            f"model in the local cache), found none at {source!r} ({str(exc).splitlines()[0]})"
        ) from None
    if type(config) not in AutoModelForMaskedLM._model_mapping:
        raise ValueError(
            f"path_or_name: expected a masked LM (BERT, RoBERTa, DistilBERT, ...), got a "
            f"{config.model_type!r} model (architectures {getattr(config, 'architectures', None)}) at {source!r}"
        )
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        model = AutoModelForMaskedLM.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except OSError as exc:
        raise FileNotFoundError(f"path_or_name: could not load the masked LM or its tokenizer from {source!r} "
                                f"({str(exc).splitlines()[0]})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"path_or_name: expected a fast tokenizer (character offsets), got "
                        f"{type(tokenizer).__name__} at {source!r}")
    return model.to(device).eval(), tokenizer


# --------------------------------------------------------------------------------------------
# vocabulary: what each token would write into the text


def _continuation_prefix(tokenizer: Any) -> Optional[str]:
    """The WordPiece continuation prefix (``##``), or None for other subword models."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = getattr(backend, "model", None)
    if model is not None and type(model).__name__ == "WordPiece":
        return str(getattr(model, "continuing_subword_prefix", "##"))
    return None


def _group(is_continuation: bool, piece: str) -> int:
    """Which tokens may replace which: word-initial or continuation, with letters/digits or not."""
    return 2 * int(is_continuation) + int(any(c.isalnum() for c in piece))


def _vocabulary(tokenizer: Any, size: int) -> tuple[list[str], np.ndarray]:
    """Per token id below ``size``: its text in a word and its `_group` (-1: never proposed, for
    special, unused, empty or whitespace-bearing tokens)."""
    n = min(size, len(tokenizer))
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = {int(i) for i in tokenizer.all_special_ids}
    special.update(int(i) for i in getattr(tokenizer, "added_tokens_decoder", {}) or {})
    prefix = _continuation_prefix(tokenizer)
    fills = [""] * size
    group = np.full(size, -1, dtype=np.int64)
    for i, tok in enumerate(tokens):
        if tok is None or i in special or _UNUSED.match(tok):
            continue
        if prefix is not None:
            is_cont = bool(prefix) and tok.startswith(prefix) and len(tok) > len(prefix)
            fill = tok[len(prefix):] if is_cont else tok
        else:
            text = tokenizer.convert_tokens_to_string([tok])
            is_cont = not (text[:1].isspace() or tok[:1] in ("\u0120", "\u2581"))
            fill = text.strip()
        if not fill or _SPACE.search(fill) or "\ufffd" in fill:
            continue
        fills[i] = fill
        group[i] = _group(is_cont, fill)
    return fills, group


# --------------------------------------------------------------------------------------------
# the masked LM


def _context(model: Any, tokenizer: Any, max_length: Optional[int]) -> int:
    limits = [] if max_length is None else [max_length]
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        limits.append(tok_max)
    mpe = getattr(model.config, "max_position_embeddings", None)
    if isinstance(mpe, int) and mpe > 0:
        limits.append(mpe - _OFFSET_POSITION_TYPES.get(model.config.model_type, 0))
    return min(limits) if limits else 512


class _MaskedLM:
    """Vocabulary logits of a masked LM at one position of each sequence of a batch."""

    def __init__(self, model: Any):
        self.model = model
        self.embed = model.get_input_embeddings()
        self.device = self.embed.weight.device
        name = _HEADS.get(model.config.model_type)
        self.head = getattr(model, name, None) if name else None
        self.vocab = int(self.embed.weight.shape[0])

    def logits(self, embeds: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``embeds`` (B, L, d) word embeddings; returns float32 logits (B, V) at ``pos`` (B,)."""
        rows = torch.arange(embeds.shape[0], device=embeds.device)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        if self.head is not None:
            hidden = self.model.base_model(inputs_embeds=embeds, attention_mask=mask)[0]
            return self.head(hidden[rows, pos]).float()
        return self.model(inputs_embeds=embeds, attention_mask=mask).logits[rows, pos].float()

    def batch_limit(self, length: int) -> int:
        if self.head is not None:
            return 1 << 30
        return max(1, _LOGIT_BUDGET // max(1, length * self.vocab))


def _document_neighbours(
    text: str,
    lm: _MaskedLM,
    tokenizer: Any,
    vocab: tuple[list[str], torch.Tensor],
    options: Neighbours,
    window: int,
) -> list[str]:
    fills, vocab_group = vocab
    enc = tokenizer(text, truncation=True, max_length=window, return_offsets_mapping=True,
                    return_special_tokens_mask=True, add_special_tokens=True)
    ids = list(enc["input_ids"])
    offsets = enc["offset_mapping"]
    special = enc["special_tokens_mask"]
    words = enc.word_ids()
    positions, groups = [], []
    previous_word = None
    for i, (tid, (a, b), sp, w) in enumerate(zip(ids, offsets, special, words)):
        if sp or w is None:
            previous_word = None
            continue
        is_start = w != previous_word
        previous_word = w
        if b > a and not _SPACE.search(text[a:b]):
            positions.append(i)
            groups.append(_group(not is_start, text[a:b]))
    if not positions:
        return []
    gen = torch.Generator().manual_seed(document_seed(options.seed, text, "neighbours") & ((1 << 63) - 1))
    if options.max_positions is not None and len(positions) > options.max_positions:
        keep = torch.randperm(len(positions), generator=gen)[: options.max_positions].sort().values.tolist()
        positions = [positions[k] for k in keep]
        groups = [groups[k] for k in keep]
    n_pos = len(positions)
    d = lm.embed.weight.shape[1]
    if options.rule == "dropout" and options.dropout > 0:
        keep_p = 1.0 - options.dropout
        drop = torch.bernoulli(torch.full((n_pos, d), keep_p), generator=gen) / keep_p
    else:
        drop = None
    ids_t = torch.tensor(ids, dtype=torch.long, device=lm.device)
    pos_all = torch.tensor(positions, dtype=torch.long)
    orig_all = ids_t[pos_all.to(lm.device)]
    valid = vocab_group[None, :] == torch.tensor(groups, device=lm.device)[:, None]  # (n_pos, V)
    step = max(1, min(options.batch_size, lm.batch_limit(len(ids))))
    scores, cands = [], []
    base = lm.embed(ids_t[None])  # (1, L, d)
    for lo in range(0, n_pos, step):
        pos = pos_all[lo : lo + step].to(lm.device)
        rows = torch.arange(pos.shape[0], device=lm.device)
        if options.rule == "mask":
            batch_ids = ids_t[None].repeat(pos.shape[0], 1)
            batch_ids[rows, pos] = tokenizer.mask_token_id
            embeds = lm.embed(batch_ids)
        else:
            embeds = base.repeat(pos.shape[0], 1, 1)
            if drop is not None:
                embeds[rows, pos] = embeds[rows, pos] * drop[lo : lo + step].to(embeds)
        probs = torch.softmax(lm.logits(embeds, pos), dim=-1)[:, : valid.shape[1]]
        orig = orig_all[lo : lo + step]
        p_orig = probs.gather(1, orig[:, None])[:, 0].double()
        allowed = valid[lo : lo + step].clone()
        allowed[rows, orig] = False
        masked = torch.where(allowed, probs, torch.full_like(probs, -1.0))
        k = min(options.top_k, masked.shape[1])
        top_p, top_id = torch.topk(masked, k, dim=1)
        denom = 1.0 - p_orig
        denom = torch.where(denom > 0, denom, torch.full_like(denom, 0.1))
        score = top_p.double() / denom[:, None]
        score = torch.where(top_p > 0, score, torch.full_like(score, -1.0))  # disallowed entries
        scores.append(score.cpu())
        cands.append(top_id.cpu())
    score = torch.cat(scores)  # (n_pos, k)
    cand = torch.cat(cands)
    slot = torch.arange(n_pos)[:, None].expand_as(cand)
    score, cand, slot = score.flatten().numpy(), cand.flatten().numpy(), slot.flatten().numpy()
    ok = score >= 0
    score, cand, slot = score[ok], cand[ok], slot[ok]
    # best score first; ties by text order, then token id (deterministic)
    order = np.lexsort((cand, slot, -score))
    out: list[str] = []
    seen: set[str] = set()
    for j in order:
        a, b = offsets[positions[slot[j]]]
        fill = fills[int(cand[j])]
        if fill == text[a:b]:
            continue
        neighbour = text[:a] + fill + text[b:]
        if neighbour in seen:
            continue
        seen.add(neighbour)
        out.append(neighbour)
        if len(out) == options.n_neighbours:
            break
    return out


def neighbour_texts(
    texts: Sequence[str],
    model: Any,
    tokenizer: Any,
    options: Neighbours = Neighbours(),
) -> list[list[str]]:
    """Each text's neighbours: copies with one token replaced by a masked LM's proposal.

    See the module's description for the method (Mattern et al., 2023). A neighbour differs from
    its text in one word (one run of non-whitespace characters), and only inside the span of the
    replaced token; every other character is kept. Neighbours come best-ranked first and are
    distinct. A text has fewer than ``options.n_neighbours`` of them when it has fewer candidate
    substitutions (``top_k`` per position in the window; an empty or whitespace-only text has
    none).

    A document's neighbours depend only on its text, ``options`` and the masked LM (dropout masks
    from ``sha256(options.seed, text)``; a forward batch holds one document's positions only):
    ``neighbour_texts([a, b], ...)[0] == neighbour_texts([a], ...)[0]``.

    Parameters
    ----------
    texts : sequence of str, length N
    model : transformers masked LM
        E.g. from `load_masked_lm`; run in eval mode and without gradients (its mode is restored).
    tokenizer : transformers fast tokenizer of ``model``
    options : Neighbours

    Returns
    -------
    list (N) of lists of at most ``options.n_neighbours`` str
    """
    texts = check_texts(texts)
    if not isinstance(options, Neighbours):
        raise TypeError(f"options: expected a Neighbours, got {type(options).__name__}")
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"tokenizer: expected a fast tokenizer (character offsets), got {type(tokenizer).__name__}")
    if not hasattr(model, "get_input_embeddings") or not hasattr(model, "config"):
        raise TypeError(f"model: expected a transformers masked LM, got {type(model).__name__}")
    if options.rule == "mask" and tokenizer.mask_token_id is None:
        raise ValueError("options.rule: 'mask' needs a tokenizer with a mask token; this one has none "
                         "(use rule='dropout')")
    lm = _MaskedLM(model)
    fills, group = _vocabulary(tokenizer, lm.vocab)
    vocab = (fills, torch.from_numpy(group).to(lm.device))
    window = _context(model, tokenizer, options.max_length)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [_document_neighbours(t, lm, tokenizer, vocab, options, window) for t in texts]
    finally:
        model.train(was_training)


def neighbour_loss(loss_variants: Union[np.ndarray, Sequence[float]], parent: Union[np.ndarray, Sequence[int]],
                   n_texts: int) -> np.ndarray:
    """The column ``loss_neighbours``: the mean of each text's neighbours' losses.

    Parameters
    ----------
    loss_variants : ndarray (M,), float
        Loss (mean NLL) of each neighbour under the target model (NaN ones are left out).
    parent : ndarray (M,), integer
        The text of each neighbour, in ``[0, n_texts)``.
    n_texts : int

    Returns
    -------
    ndarray (n_texts,), float64; NaN for a text without a scored neighbour.
    """
    return mean_by_parent(loss_variants, parent, n_texts)


class _NeighbourFamily(VariantFamily):
    """Neighbours inside corpus scoring: the masked LM is loaded once per scorer."""

    def __init__(self, scorer: Any, options: Neighbours):
        self.scorer, self.options = scorer, options
        device = next(scorer.model.parameters()).device
        self.mlm, self.mlm_tokenizer = load_masked_lm(options.masked_lm, device=device)

    def expand(self, texts: Sequence[str], tokens: list[list[int]]) -> Expansion:
        return text_variant_inputs(self.scorer, neighbour_texts(texts, self.mlm, self.mlm_tokenizer, self.options))

    def columns(self, documents: Pass, variants: Pass, expansion: Expansion) -> dict[str, np.ndarray]:
        per_neighbour = mean_loss(variants, torch.from_numpy(expansion.variant), expansion.n_variants)
        n = documents.n_sequences
        return {"loss_neighbours": neighbour_loss(per_neighbour, expansion.parent, n),
                "n_neighbours": np.bincount(expansion.parent, minlength=n).astype(np.int64)}
