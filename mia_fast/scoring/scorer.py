"""Scoring texts with a causal LM: tokens -> windows -> bucketed batches -> token stats -> tables.

`TextScorer` turns a list of texts into the per-sequence table (design.md §4) and, when asked,
the per-token table. `score_corpus` is the same as one call, for embedding in other tools; the
command line's resumable directory job (`mia_fast.scoring.run`) calls `TextScorer` shard by shard.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..aggregate import DEFAULT_KS, SIGMA_FLOOR, aggregate, check_ks, tempered_column
from ..columns import PrefixSetting, check_prefix_tokens
from ..stats import FIELDS, INT_FIELDS, TEMPERED_FIELDS, TemperedStats, TokenStats, check_temperatures
from .batching import Window, bucket_batches, windows
from .gradients import lm_gradient_norms, parse_param_spec, select_parameters
from .lm import CONTEXT_KEYS, LMScorer, context_length
from .prefix import context_sha256
from .variants import Pass, VariantFamily, VariantSpec, builtin_families

__all__ = ["ScoreOptions", "Scores", "TextScorer", "score_corpus", "TOKEN_FIELDS"]

IGNORE = -100
# Token fields of the per-token table (mask is implied: only scored tokens are stored).
TOKEN_FIELDS: tuple[str, ...] = tuple(f for f in FIELDS if f != "mask")
# Bound on the (sequences x tokens) padded block used to reduce per-token stats per sequence.
_REDUCE_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class ScoreOptions:
    """How texts become scored tokens. Every field is recorded in a score directory's manifest.

    Attributes
    ----------
    max_length : int, optional
        Context of one model input (default: the model's own context length).
    stride : int, optional
        Shift between sliding windows of texts longer than ``max_length`` (default: half of it).
    batch_tokens : int
        Budget of padded tokens per forward batch.
    first_token : {'auto', 'bos', 'skip'}
        ``bos`` prepends the tokenizer's BOS so that every token of the text is scored; ``skip``
        leaves the text's first token unscored (nothing predicts it); ``auto`` follows the
        tokenizer's own convention, what ``tokenizer(text)`` does: ``bos`` where it adds a BOS
        (Llama, Mistral), ``skip`` where it adds none even if it has one (GPT-2, SmolLM2). That is
        what the MIMIR and Min-K%++ reference code score, and ``auto`` reproduces them.
    ks : tuple of float
        Fractions of Min-K% and Min-K%++.
    per_token : bool
        Also return the per-token table.
    sigma_floor : float
        Lower clip of Min-K%++'s sigma.
    prefix_tokens : tuple of int or float
        Own-prefix settings: token counts (``16``; ``0`` = no prefix) or fractions in (0, 1) of
        each text's tokens; each adds the columns ``n_tokens_prefix{k}`` and ``loss_prefix{k}``
        of the text's tokens after its first k (see `mia_fast.scoring.prefix`).
    context_text : str, optional
        A fixed context (e.g. known non-member paragraphs) before which each text is scored a
        second time: adds ``loss_context`` and ``recall = loss_context / loss`` (ReCaLL). The
        manifest records its sha256 (``context_sha256``), not the text.
    context_tokens : int, optional
        Keep only the context's last ``context_tokens`` tokens (default: all of them).
    temperatures : tuple of float
        Temperatures tau at which the kernel also computes the tempered statistics (same pass over
        the vocabulary): adds the columns ``loss_t{tau}`` and ``entropy_t{tau}`` (and per token
        ``logprob_t{tau}``, ``entropy_t{tau}``), read by `mia_fast.attacks.TemperatureAttack`.
    variants : tuple of VariantSpec
        Derived inputs scored in the same batches as the texts and reduced into columns per text
        (`mia_fast.scoring.variants`): ``Lowercase()`` adds ``loss_lowercase``,
        ``MemberContext(text)`` adds ``loss_member_context``, ... (see each spec).
    gradient_params : str, optional
        Adds the column ``grad_norm``: the L2 norm of the gradient of each text's mean token
        loss (its first window) over these parameters (`mia_fast.scoring.gradients.select_parameters`:
        ``all``, ``head``, ``last`` or comma-separated globs). None (the default): no gradients,
        which cost a backward pass per text.
    """

    max_length: Optional[int] = None
    stride: Optional[int] = None
    batch_tokens: int = 8192
    first_token: str = "auto"
    ks: tuple[float, ...] = DEFAULT_KS
    per_token: bool = False
    sigma_floor: float = SIGMA_FLOOR
    prefix_tokens: tuple[PrefixSetting, ...] = ()
    context_text: Optional[str] = None
    context_tokens: Optional[int] = None
    gradient_params: Optional[str] = None
    temperatures: tuple[float, ...] = ()
    variants: tuple[VariantSpec, ...] = ()

    def __post_init__(self) -> None:
        if self.first_token not in ("auto", "bos", "skip"):
            raise ValueError(f"first_token: expected 'auto', 'bos' or 'skip', got {self.first_token!r}")
        if self.batch_tokens < 1:
            raise ValueError(f"batch_tokens: expected a positive number of tokens, got {self.batch_tokens}")
        for name in ("max_length", "stride"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}: expected a positive number of tokens, got {value}")
        object.__setattr__(self, "ks", check_ks(self.ks))
        if not (isinstance(self.sigma_floor, (int, float)) and 0.0 < self.sigma_floor < math.inf):
            raise ValueError(f"sigma_floor: expected a positive finite number, got {self.sigma_floor!r}")
        object.__setattr__(self, "temperatures", check_temperatures(self.temperatures))
        object.__setattr__(self, "prefix_tokens", check_prefix_tokens(self.prefix_tokens))
        if self.context_text is not None and not isinstance(self.context_text, str):
            raise TypeError(f"context_text: expected a str or None, got {type(self.context_text).__name__}")
        if self.context_tokens is not None:
            if self.context_text is None:
                raise ValueError("context_tokens: given without a context (context_text / --context-file)")
            if isinstance(self.context_tokens, bool) or not isinstance(self.context_tokens, int) \
                    or self.context_tokens < 1:
                raise ValueError(f"context_tokens: expected a positive number of tokens, got {self.context_tokens!r}")
        if self.gradient_params is not None:
            object.__setattr__(self, "gradient_params",
                               ",".join(parse_param_spec(self.gradient_params, "gradient_params")))
        object.__setattr__(self, "variants", _check_variants(self.variants, self.context_text is not None))

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict; the context is given by ``context_sha256``, not its text."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        text = out.pop("context_text")
        out["context_sha256"] = None if text is None else context_sha256(text)
        variants = out.pop("variants")
        if variants:  # absent without variants: the manifests of runs made before them stay the same
            out["variants"] = [v.as_dict() for v in variants]
        return out


def _check_variants(variants: Any, has_context: bool) -> tuple[VariantSpec, ...]:
    """The variant specs as a tuple; each a `VariantSpec`, no family twice, no column written twice."""
    if isinstance(variants, VariantSpec):
        variants = (variants,)
    if isinstance(variants, (str, bytes)) or not isinstance(variants, (tuple, list)):
        raise TypeError(f"variants: expected a sequence of VariantSpec (e.g. (Lowercase(),)), got {variants!r:.80}")
    seen: dict[str, str] = {}
    for v in variants:
        if not isinstance(v, VariantSpec):
            raise TypeError(f"variants: expected VariantSpec instances (Lowercase(), MemberContext(text), ...), "
                            f"got {v!r:.80}")
        if v.name in seen:
            raise ValueError(f"variants: the family {v.name!r} is given twice; give it once")
        seen[v.name] = v.name
    return tuple(variants)


def _adds_bos(tokenizer: Any, bos: int) -> bool:
    """Whether ``tokenizer(text)`` puts BOS first (its own convention), on a probe text."""
    probe = "The first token."
    with_special = list(tokenizer(probe)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    return bool(with_special) and with_special[0] == bos and plain[:1] != [bos]


@dataclass
class Scores:
    """Result of `score_corpus`: the per-sequence table and, when asked, the per-token table."""

    sequences: Any  # pandas.DataFrame
    tokens: Any = None  # pandas.DataFrame or None


@dataclass
class TextScorer:
    """Scores lists of texts with one model; the resolved settings are in `settings`.

    Parameters
    ----------
    model : transformers causal LM, in eval mode.
    tokenizer : its tokenizer.
    options : ScoreOptions
    head : {'auto', 'fused', 'logits'}
        See `mia_fast.scoring.lm.LMScorer`.
    """

    model: Any
    tokenizer: Any
    options: ScoreOptions = field(default_factory=ScoreOptions)
    head: str = "auto"

    def __post_init__(self) -> None:
        self.lm = LMScorer(self.model, head=self.head)
        model_context = context_length(self.model)
        if model_context is None and self.options.max_length is None:
            raise ValueError(f"max_length: the model's config gives no context length (none of "
                             f"{', '.join(CONTEXT_KEYS)}); pass max_length")
        ctx = self.options.max_length or model_context
        if model_context is not None and ctx > model_context:
            raise ValueError(f"max_length: expected at most the model's context {model_context}, got {ctx}")
        if ctx < 2:
            raise ValueError(f"max_length: expected at least 2 tokens, got {ctx}")
        stride = self.options.stride or max(1, ctx // 2)
        if stride > ctx - 1:
            raise ValueError(f"stride: expected at most max_length - 1 = {ctx - 1}, got {stride}")
        policy = self.options.first_token
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if policy == "bos" and bos is None:
            raise ValueError("first_token: 'bos' asked but the tokenizer has no BOS token; use 'skip'")
        if policy == "auto":
            policy = "bos" if bos is not None and _adds_bos(self.tokenizer, bos) else "skip"
        self.context, self.stride, self.first_token = ctx, stride, policy
        self.bos_id = bos if policy == "bos" else None
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else 0
        self.forward_seconds = 0.0
        self.n_tokens = 0
        # parameters of the grad_norm column, resolved now so that a bad selection fails before scoring
        self.gradient_parameters = (None if self.options.gradient_params is None
                                    else select_parameters(self.model, self.options.gradient_params))
        self.gradient_seconds = 0.0
        # derived inputs (own prefix, contexts, variant specs), built once: a bad context or a missing
        # resource (a masked LM, a frequency corpus) fails here, before anything is scored
        self.families: list[VariantFamily] = builtin_families(self) + [v.build(self) for v in self.options.variants]

    @property
    def settings(self) -> dict[str, Any]:
        """The resolved scoring settings (recorded in manifests)."""
        return {
            **self.options.as_dict(),
            "max_length": self.context,
            "stride": self.stride,
            "first_token": self.first_token,
            "bos_token_id": self.bos_id,
            "head": self.lm.head,
            "head_reason": self.lm.reason,
            "gradient_parameters": (None if self.gradient_parameters is None
                                    else sum(p.numel() for p in self.gradient_parameters.values())),
            "context_tokens_used": None,
            **{k: v for f in self.families for k, v in f.settings().items()},
        }

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, BOS first when the policy says so."""
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        prefix = [] if self.bos_id is None else [self.bos_id]
        return [prefix + list(t) for t in ids]

    def _batch(self, tokens: list[list[int]], wins: list[Window]):
        width = max(w.length for w in wins)
        ids = torch.full((len(wins), width), self.pad_id, dtype=torch.int64)
        am = torch.zeros((len(wins), width), dtype=torch.int64)
        targets = torch.full((len(wins), width), IGNORE, dtype=torch.int64)
        seqs, positions = [], []
        for r, w in enumerate(wins):
            row = torch.tensor(tokens[w.seq][w.start : w.end], dtype=torch.int64)
            ids[r, : w.length] = row
            am[r, : w.length] = 1
            # input position p predicts token start + p + 1; scored when that is >= score_from
            first = w.score_from - w.start - 1
            targets[r, first : w.length - 1] = row[first + 1 :]
            seqs.append(torch.full((w.length - 1 - first,), w.seq, dtype=torch.int64))
            positions.append(torch.arange(w.score_from, w.end, dtype=torch.int64))
        return ids, am, targets, torch.cat(seqs), torch.cat(positions)

    def token_stats(
        self, tokens: list[list[int]], wins: Optional[list[Window]] = None
    ) -> tuple[TokenStats, torch.Tensor, torch.Tensor]:
        """Per-token statistics of every scored position, sorted by (sequence, position).

        Parameters
        ----------
        tokens : list of list of int
            Token ids of each sequence.
        wins : list of Window, optional
            The model inputs and their scored targets (default: the sliding windows of each
            sequence, `mia_fast.scoring.batching.windows`); each must fit in the model's window.

        Returns
        -------
        stats : TokenStats, fields of shape (n,)
        seq : Tensor (n,), int64, the sequence of each token
        pos : Tensor (n,), int64, its position in the sequence's token list
        """
        if wins is None:
            wins = [w for i, t in enumerate(tokens) for w in windows(len(t), self.context, self.stride, seq=i)]
        # Every batch's stats are copied into buffers allocated once for all the scored tokens and
        # then freed: keeping each batch's small result alive between the forward passes' large
        # temporaries fragments the heap (RSS grew by ~1.4 KB per token of a long text, ~30x the
        # stats themselves), so memory now follows the tokens' stats, not the number of batches.
        total = sum(w.end - w.score_from for w in wins)
        seq = torch.empty(total, dtype=torch.int64)
        pos = torch.empty(total, dtype=torch.int64)
        out: Optional[TokenStats] = None
        filled = 0
        for batch in bucket_batches([w.length for w in wins], self.options.batch_tokens):
            ids, am, targets, batch_seq, batch_pos = self._batch(tokens, [wins[i] for i in batch])
            t0 = time.perf_counter()
            part = self.lm(ids, am, targets, temperatures=self.options.temperatures)
            self.forward_seconds += time.perf_counter() - t0
            if out is None:
                out = part.map(lambda x: x.new_empty((total, *x.shape[1:])))
            stop = filled + batch_seq.numel()
            for buffer, values in zip(_tensors(out), _tensors(part)):
                buffer[filled:stop] = values
            seq[filled:stop], pos[filled:stop] = batch_seq, batch_pos
            filled = stop
        if out is None:
            empty = torch.empty(0, dtype=torch.int64)
            return _empty_stats((0,), self.options.temperatures), empty, empty
        order = torch.from_numpy(np.lexsort((pos.numpy(), seq.numpy())))
        stats = out.map(lambda x: x[order])
        self.n_tokens += total
        return stats, seq[order], pos[order]

    def gradient_norms(self, tokens: list[list[int]]) -> np.ndarray:
        """The ``grad_norm`` column: per text, the gradient norm of the mean loss of its first window.

        A text longer than the context contributes its first window only, its first ``max_length``
        tokens (one forward and backward pass per text, whatever its length), so for long texts
        ``grad_norm`` and ``loss`` cover different tokens. Texts with fewer than two tokens (no
        scored target) get NaN.

        Parameters
        ----------
        tokens : list of N lists of int
            Token ids of each text, as `tokenize` returns them.

        Returns
        -------
        ndarray, shape (N,), float64
        """
        if self.options.gradient_params is None:
            raise ValueError("options.gradient_params: expected a parameter selection for grad_norm, got None")
        norms = np.full(len(tokens), np.nan, dtype=np.float64)
        rows = [i for i, t in enumerate(tokens) if len(t) >= 2]
        if not rows:
            return norms
        first = [tokens[i][: self.context] for i in rows]
        ids = torch.full((len(first), max(len(t) for t in first)), self.pad_id, dtype=torch.int64)
        am = torch.zeros_like(ids)
        for r, t in enumerate(first):
            ids[r, : len(t)] = torch.tensor(t, dtype=torch.int64)
            am[r, : len(t)] = 1
        t0 = time.perf_counter()
        norms[rows] = lm_gradient_norms(self.model, ids, am, params=self.options.gradient_params)
        self.gradient_seconds += time.perf_counter() - t0
        return norms

    def score(self, texts: Sequence[str]) -> tuple[dict[str, np.ndarray], Optional[dict[str, np.ndarray]]]:
        """Per-sequence columns (one row per text, in order) and, if ``per_token``, per-token columns.

        The texts and every variant family's inputs (`mia_fast.scoring.variants`) are scored in
        one bucketed pass. The per-token columns are the texts' own: ``seq`` (index of the text),
        ``position`` (index of the target in the text's token list, BOS included), ``token`` and
        the TokenStats fields.
        """
        tokens = self.tokenize(texts) if len(texts) else []
        expansions = [f.expand(texts, tokens) for f in self.families]
        inputs = list(tokens)
        wins = [w for i, t in enumerate(tokens) for w in windows(len(t), self.context, self.stride, seq=i)]
        starts = []
        for e in expansions:
            starts.append(len(inputs))
            wins += [Window(w.seq + len(inputs), w.start, w.end, w.score_from) for w in e.wins]
            inputs += e.inputs
        stats, seq, pos = self.token_stats(inputs, wins)
        documents, *variant_passes = _split(stats, seq, pos, inputs, [0, *starts, len(inputs)])
        counts = torch.bincount(documents.seq, minlength=len(tokens))
        columns = _reduce_per_sequence(documents.stats, documents.seq, counts, texts, self.options)
        for family, expansion, part in zip(self.families, expansions, variant_passes):
            columns.update(family.columns(documents, part, expansion))
        if self.options.gradient_params is not None:
            columns["grad_norm"] = self.gradient_norms(tokens)
        per_token = None
        if self.options.per_token:
            stats = documents.stats
            per_token = {"seq": documents.seq.numpy(), "position": documents.pos.numpy().astype(np.int32),
                         "token": documents.token.numpy().astype(np.int32)}
            for f in TOKEN_FIELDS:
                x = getattr(stats, f).numpy()
                per_token[f] = x.astype(np.int32) if f in INT_FIELDS else x
            if stats.tempered is not None:
                for f in ("logprob", "entropy"):
                    for j, tau in enumerate(stats.tempered.temperatures):
                        per_token[tempered_column(f, tau)] = getattr(stats.tempered, f)[:, j].numpy()
        return columns, per_token


def _split(stats: TokenStats, seq: torch.Tensor, pos: torch.Tensor, inputs: list[list[int]],
           bounds: list[int]) -> list[Pass]:
    """The scored tokens of the sequences ``[bounds[k], bounds[k + 1])``, as one `Pass` each (``seq``
    counted from ``bounds[k]``); ``seq`` is sorted, so each group is one slice."""
    lengths = torch.tensor([len(t) for t in inputs], dtype=torch.int64)
    flat = torch.from_numpy(np.fromiter(itertools.chain.from_iterable(inputs), dtype=np.int64, count=int(lengths.sum())))
    token = flat[(torch.cumsum(lengths, 0) - lengths)[seq] + pos] if seq.numel() else seq
    cuts = torch.searchsorted(seq, torch.tensor(bounds, dtype=torch.int64)).tolist()
    out = []
    for k in range(len(bounds) - 1):
        part = slice(cuts[k], cuts[k + 1])
        out.append(Pass(stats.map(lambda x: x[part]), seq[part] - bounds[k], pos[part], token[part],
                        lengths[bounds[k] : bounds[k + 1]]))
    return out


def _tensors(stats: TokenStats) -> list[torch.Tensor]:
    """Every tensor of ``stats``: the `FIELDS`, then the tempered fields when present."""
    out = [getattr(stats, f) for f in FIELDS]
    if stats.tempered is not None:
        out += [getattr(stats.tempered, f) for f in TEMPERED_FIELDS]
    return out


def _empty_field(name: str) -> torch.Tensor:
    if name == "mask":
        return torch.empty(0, dtype=torch.bool)
    return torch.empty(0, dtype=torch.int64 if name in INT_FIELDS else torch.float32)


def _empty_stats(shape: tuple[int, ...], temperatures: tuple[float, ...]) -> TokenStats:
    """TokenStats with no token, of ``shape`` (tempered fields ``shape + (T,)``)."""
    stats = TokenStats(*(_empty_field(f).reshape(shape) for f in FIELDS))
    if not temperatures:
        return stats
    empty = torch.empty(*shape, len(temperatures), dtype=torch.float32)
    return stats._replace(tempered=TemperedStats(temperatures, empty, empty, empty))


def _reduce_per_sequence(
    stats: TokenStats, seq: torch.Tensor, counts: torch.Tensor, texts: Sequence[str], options: ScoreOptions
) -> dict[str, np.ndarray]:
    """`aggregate` over sequences, in groups of similar length padded into bounded blocks."""
    n = counts.numel()
    if n == 0:  # the columns, empty, with their dtypes
        empty = _empty_stats((0, 0), options.temperatures)
        return aggregate(empty, ks=options.ks, texts=[], sigma_floor=options.sigma_floor)
    starts = torch.cumsum(counts, 0) - counts
    by_length = torch.argsort(counts, descending=True, stable=True).tolist()
    columns: dict[str, np.ndarray] = {}
    i = 0
    while i < n:
        width = max(1, int(counts[by_length[i]]))
        rows = by_length[i : i + max(1, _REDUCE_ELEMENTS // width)]
        i += len(rows)
        rows_t = torch.tensor(rows, dtype=torch.int64)
        col = torch.arange(width).unsqueeze(0)
        mask = col < counts[rows_t].unsqueeze(1)
        src = (starts[rows_t].unsqueeze(1) + col).clamp(max=max(0, seq.numel() - 1))
        fields = []
        for f in FIELDS:
            x = getattr(stats, f)
            if f == "mask":
                fields.append(mask)
            elif x.numel() == 0:
                fields.append(torch.full(mask.shape, -1 if f in INT_FIELDS else torch.nan, dtype=_empty_field(f).dtype))
            else:
                fill = torch.tensor(-1 if f in INT_FIELDS else torch.nan, dtype=x.dtype)
                fields.append(torch.where(mask, x[src], fill))
        block_stats = TokenStats(*fields)
        if stats.tempered is not None:
            t = stats.tempered
            block_stats = block_stats._replace(tempered=TemperedStats(t.temperatures, *(
                torch.where(mask.unsqueeze(-1), getattr(t, f)[src], torch.nan) if seq.numel()
                else torch.full((*mask.shape, len(t.temperatures)), torch.nan)
                for f in TEMPERED_FIELDS
            )))
        block = aggregate(block_stats, ks=options.ks, texts=[texts[r] for r in rows], sigma_floor=options.sigma_floor)
        for name, values in block.items():
            if name not in columns:
                columns[name] = np.empty(n, dtype=values.dtype)
            columns[name][rows] = values
    return columns


def score_corpus(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    ids: Optional[Sequence[Any]] = None,
    labels: Optional[Sequence[int]] = None,
    options: Optional[ScoreOptions] = None,
    head: str = "auto",
    **option_kwargs: Any,
) -> Scores:
    """Score texts with a causal LM: the per-sequence table, and optionally the per-token one.

    Parameters
    ----------
    model : transformers causal LM (e.g. from `mia_fast.scoring.lm.load_model`)
    tokenizer : its tokenizer
    texts : sequence of str, length N
    ids : sequence, optional, length N
        Identifiers (default ``"0" .. "N-1"``).
    labels : sequence of int, optional, length N
        Membership ground truth (1 = member), carried into the table.
    options : ScoreOptions, optional
        Or the same fields as keyword arguments (``batch_tokens=...``, ``per_token=True``, ...).
    head : {'auto', 'fused', 'logits'}

    Returns
    -------
    Scores
        ``sequences``: DataFrame with ``id``, ``label`` (when given) and the columns of
        `mia_fast.aggregate.aggregate`; ``tokens``: DataFrame with ``id`` and the per-token
        columns when ``per_token``, else None.
    """
    import pandas as pd

    if options is None:
        options = ScoreOptions(**option_kwargs)
    elif option_kwargs:
        raise TypeError(f"score_corpus: pass either options or keyword options, not both ({sorted(option_kwargs)})")
    texts = list(texts)
    for name, values in (("ids", ids), ("labels", labels)):
        if values is not None and len(values) != len(texts):
            raise ValueError(f"{name}: expected {len(texts)} values (one per text), got {len(values)}")
    ids = [str(i) for i in (ids if ids is not None else range(len(texts)))]
    columns, per_token = TextScorer(model, tokenizer, options, head=head).score(texts)
    table = pd.DataFrame({"id": ids, **({"label": np.asarray(labels, dtype=np.int8)} if labels is not None else {}), **columns})
    tokens = None
    if per_token is not None:
        seq = per_token.pop("seq")
        tokens = pd.DataFrame({"id": np.asarray(ids, dtype=object)[seq], **per_token})
    return Scores(table, tokens)
