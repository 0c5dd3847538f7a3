"""SaMIA: sampling-based pseudo-likelihood (Kaneko et al., 2024), a black-box, text-only attack.

Kaneko, Ma, Wata and Okazaki, "Sampling-based Pseudo-Likelihood for Membership Inference
Attacks", arXiv:2404.11262 (2024). The attack needs no log-probabilities: only samples of text.

Definitions (those of the authors' code, ``nlp-titech/samia``: ``src/sampling.py`` and
``src/eval_samia.py``; Fast-MIA's ``src/methods/samia.py`` ports the same functions):

Words
    A text's words are its maximal runs of non-whitespace characters (`words`, ``str.split()``):
    case is kept and punctuation stays attached to its word (``"Cat,"``, ``"cat,"`` and ``"cat"``
    are three different words). The reference splits on single spaces and drops the empty
    strings, which is the same for texts whose only whitespace is spaces; here newlines and tabs
    separate words too.
Prefix and reference suffix
    With ``n`` words and a prefix fraction ``f`` (default 0.5), the prefix is the first
    ``k = floor(n * f)`` words joined by single spaces and the reference suffix the remaining
    ``n - k`` words (`split_prefix`). The reference code takes ``int(n * f)`` words, the same
    number except where ``n * f`` lands just below an integer in floating point; its evaluation
    script cuts the reference at WikiMIA's nominal length instead (``round(text_length * 0.5)``).
    A text with ``k = 0`` or ``k = n`` cannot be split and gets NaN.
Candidates
    ``n_samples`` continuations (default 10) of the prefix are sampled from the target model
    with temperature 1 and top-k 50 (top-p 1), the reference's ``model.generate`` settings.
    A candidate is the decoded continuation, up to its first EOS, without special tokens; the
    reference decodes prompt + continuation and then drops the first ``round(text_length * 0.5)``
    words, which is the continuation's words when the prompt has that many.
ROUGE-1
    `rouge1` is the reference's ``rouge_n(n=1)``: unigram **recall**, the clipped count of
    shared words, ``sum_w min(c_cand(w), c_ref(w))``, over the reference's word count; 0 when
    either is empty.
Scores
    ``samia`` = mean over candidates of ROUGE-1(candidate, reference suffix), and
    ``samia_zlib`` = mean over candidates of ROUGE-1 × the zlib-compressed size in bytes of the
    candidate's words joined by single spaces (``len(zlib.compress(" ".join(words).encode()))``,
    default level), the reference's ``--zlib`` flag: it favours informative candidates over
    repetitive ones. Higher = more likely member for both.

Length of the candidates (``max_new_tokens``)
    The reference generates until EOS or 1024 tokens in total (prompt + continuation), so its
    candidates are usually much longer than the suffix, which raises ROUGE-1 recall for members
    and non-members alike. The default here is each text's own suffix length in tokens (the
    tokens of the whole text, its words joined by spaces, minus those of its prefix): the model
    is asked for as much text as the suffix it should reproduce, at a fraction of the cost. An
    integer sets the same budget for every text. The budget is capped so that prompt +
    continuation fits the model's context; a text whose prompt leaves no room gets NaN.

Cost
    Generation dominates: about ``n_samples * max_new_tokens`` decoding steps per text (the
    steps of ``batch_size`` rows run together, with the KV cache) plus one prefill of the
    prompt per row; comparing the candidates is negligible. The optional ``timings`` dict of
    `samia_columns` receives the seconds spent.

Reproducibility
    Sampling is exact top-k/temperature sampling by the Gumbel-max trick: ``model.generate`` runs
    its greedy loop with a logits processor that keeps the ``top_k`` highest logits, divides them
    by the temperature and adds Gumbel noise ``-log(-log(u))``; the argmax is then a sample from
    the softmax of the kept logits. ``u`` comes from a counter-based integer hash (exact and
    the same on every device) of the row's key, the decoding step and the token id, where the
    row's key is the sha256 of (``seed``, the text's sha256, the sample's index). So the samples
    of a text depend on its text, the seed, the options, the model and the tokenizer, and not on
    the other texts, their order, the batch size or the device's random state (which is left
    untouched). What can still differ between runs is the model's own arithmetic: padding and
    batch shapes change the logits by float rounding, which changes a sample only when two
    perturbed scores tie within rounding. The same corpus with the same options and batch size
    on the same machine gives identical columns. Two copies of a text get the same samples.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, replace
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .lm import context_length
from .checks import check_count, check_fraction, check_texts, is_int, is_real
from .variants import Expansion, Pass, VariantFamily, VariantSpec

__all__ = [
    "SAMIA_COLUMNS",
    "SaMIA",
    "samia_columns",
    "rouge1",
    "split_prefix",
    "words",
    "zlib_size",
]

log = logging.getLogger(__name__)

# Columns that `samia_columns` returns (float64, NaN where a text could not be split or generated from).
SAMIA_COLUMNS: tuple[str, ...] = ("samia", "samia_zlib")

# Version of the sampler (recorded by `SaMIA.as_dict`): changing the noise changes every sample.
SAMPLER = "gumbel-max/hash32-v1"

_FIRST_TOKEN = ("auto", "bos", "skip")
_M32 = 0xFFFFFFFF
_MUL = 0x045D9F3B  # < 2**27: a 32-bit value times it stays below 2**59, exact in int64
_V_SALT = 0x9E3779B9


# --------------------------------------------------------------------------------------------
# words, ROUGE-1, prefix


def words(text: str) -> list[str]:
    """The words of a text: its maximal runs of non-whitespace characters (``str.split()``).

    Case and punctuation are kept: ``words("The cat, the CAT.")`` is
    ``["The", "cat,", "the", "CAT."]``.
    """
    return text.split()


def _rouge1_words(candidate: Sequence[str], reference: Sequence[str]) -> float:
    if not candidate or not reference:
        return 0.0
    overlap = Counter(candidate) & Counter(reference)
    return sum(overlap.values()) / len(reference)


def rouge1(candidate: str, reference: str) -> float:
    """ROUGE-1 recall of a candidate against a reference, as in SaMIA (Kaneko et al., 2024).

    ``sum_w min(c_cand(w), c_ref(w)) / n_ref``: the reference's words that the candidate
    contains, each counted at most as often as the candidate has it, over the number of the
    reference's words. Words are `words` (whitespace-separated, case-sensitive, punctuation
    attached). 0.0 when either text has no word.

    Parameters
    ----------
    candidate, reference : str

    Returns
    -------
    float in [0, 1]

    Examples
    --------
    >>> rouge1("the cat sat", "the cat sat on the mat")
    0.5
    """
    for name, value in (("candidate", candidate), ("reference", reference)):
        if not isinstance(value, str):
            raise TypeError(f"{name}: expected a str, got {type(value).__name__}")
    return _rouge1_words(words(candidate), words(reference))


def zlib_size(text_words: Sequence[str]) -> int:
    """Bytes of ``zlib.compress`` (default level) of the words joined by single spaces, UTF-8."""
    return len(zlib.compress(" ".join(text_words).encode("utf-8")))


def _check_prefix_fraction(value: Any) -> float:
    return check_fraction("prefix_fraction", value, include_one=False, of="the text's words")


def _n_prefix_words(n_words: int, fraction: float) -> int:
    # floor, robust to n * f landing just below an integer (as mia_fast.scoring.prefix.prefix_lengths)
    return math.floor(n_words * fraction + 1e-9)


def split_prefix(text: str, prefix_fraction: float = 0.5) -> tuple[str, str]:
    """Split a text into its prefix (the first ``floor(n * f)`` of its ``n`` words) and the rest.

    Both parts are their words joined by single spaces (`words`).

    Parameters
    ----------
    text : str
    prefix_fraction : float in (0, 1)

    Returns
    -------
    prefix, suffix : str
        Either is ``""`` when the text has too few words (SaMIA then gives NaN).

    Examples
    --------
    >>> split_prefix("a b  c\\nd e", 0.5)
    ('a b', 'c d e')
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    fraction = _check_prefix_fraction(prefix_fraction)
    w = words(text)
    k = _n_prefix_words(len(w), fraction)
    return " ".join(w[:k]), " ".join(w[k:])


# --------------------------------------------------------------------------------------------
# options


@dataclass(frozen=True)
class SaMIA(VariantSpec):
    """SaMIA's sampling (Kaneko et al., 2024) as a variant family of corpus scoring
    (`mia_fast.scoring.variants`): columns ``samia`` and ``samia_zlib`` (`samia_columns`), read by
    `mia_fast.attacks.SaMIAAttack`. All settings are recorded by `as_dict`; in a
    `mia_fast.scoring.scorer.TextScorer` the prompts follow the scorer's resolved first-token
    policy (``first_token`` here is for `samia_columns` called on its own).

    Attributes
    ----------
    n_samples : int
        Candidates sampled per text (the paper's code: 10).
    prefix_fraction : float in (0, 1)
        Fraction of each text's words given as the prompt (the paper's code: 0.5).
    max_new_tokens : int, optional
        Tokens generated per candidate. None (default): each text's suffix length in tokens;
        the paper's code generates up to 1024 tokens in total (see the module docstring).
    temperature : float
        Sampling temperature (the paper's code: 1).
    top_k : int
        Sample among the ``top_k`` most likely tokens (the paper's code: 50); 0 = the whole
        vocabulary.
    seed : int
        Seed of the samples (any integer).
    batch_size : int
        Rows (prompt copies) per ``model.generate`` call; it changes speed and memory, not the
        samples.
    first_token : {'auto', 'bos', 'skip'}
        BOS before each prompt: ``auto`` where ``tokenizer(text)`` adds one (the scorer's
        convention, `mia_fast.scoring.scorer.ScoreOptions`), ``bos`` always, ``skip`` never.
    """

    n_samples: int = 10
    prefix_fraction: float = 0.5
    max_new_tokens: Optional[int] = None
    temperature: float = 1.0
    top_k: int = 50
    seed: int = 0
    batch_size: int = 64
    first_token: str = "auto"

    def __post_init__(self) -> None:
        for name in ("n_samples", "batch_size"):
            check_count(name, getattr(self, name))
        object.__setattr__(self, "prefix_fraction", _check_prefix_fraction(self.prefix_fraction))
        if self.max_new_tokens is not None and (not is_int(self.max_new_tokens) or self.max_new_tokens < 1):
            raise ValueError(f"max_new_tokens: expected a positive number of tokens or None (the suffix's length), "
                             f"got {self.max_new_tokens!r}")
        t = self.temperature
        if not is_real(t) or not 0.0 < float(t) < math.inf:
            raise ValueError(f"temperature: expected a positive finite number, got {t!r}")
        object.__setattr__(self, "temperature", float(t))
        if not is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k: expected an integer >= 0 (0 = no top-k), got {self.top_k!r}")
        if not is_int(self.seed):
            raise ValueError(f"seed: expected an integer, got {self.seed!r}")
        if self.first_token not in _FIRST_TOKEN:
            raise ValueError(f"first_token: expected one of {_FIRST_TOKEN}, got {self.first_token!r}")
        for name in ("n_samples", "batch_size", "top_k", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.max_new_tokens is not None:
            object.__setattr__(self, "max_new_tokens", int(self.max_new_tokens))

    name = "samia"

    def columns(self) -> tuple[str, ...]:
        return SAMIA_COLUMNS

    def build(self, scorer: Any) -> VariantFamily:
        return _SamiaFamily(scorer, replace(self, first_token=scorer.first_token))

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict, with the definitions they apply to (for a manifest)."""
        return {
            "name": self.name,
            **asdict(self),
            "method": "samia",
            "similarity": "rouge1_recall",
            "word_split": "whitespace",
            "sampler": SAMPLER,
        }


# --------------------------------------------------------------------------------------------
# sampling: Gumbel-max over a counter-based hash, inside model.generate


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash of each element (int64 holding values in [0, 2**32)); exact on any device."""
    x = x ^ (x >> 16)
    x = (x * _MUL) & _M32
    x = x ^ (x >> 16)
    x = (x * _MUL) & _M32
    return x ^ (x >> 16)


def _row_keys(seed: int, text: str, n_samples: int) -> list[tuple[int, int]]:
    """Two 32-bit words of sha256(seed, sha256(text), sample) for each sample of a text."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    out = []
    for j in range(n_samples):
        h = hashlib.sha256(f"samia\0{seed}\0{digest}\0{j}".encode("ascii")).digest()
        out.append((int.from_bytes(h[:4], "little"), int.from_bytes(h[4:8], "little")))
    return out


def _gumbel(keys: torch.Tensor, step: int, token_ids: torch.Tensor) -> torch.Tensor:
    """Gumbel noise of shape ``token_ids.shape`` for rows ``keys`` (B, 2) at a decoding step.

    ``token_ids`` is (B, k) or (V,) (the same ids for every row); the noise of (row, step, id)
    does not depend on anything else.
    """
    k0, k1 = keys[:, 0], keys[:, 1]
    state = _mix32(k0 ^ _mix32((k1 + step) & _M32))  # (B,)
    ids = token_ids if token_ids.dim() == 2 else token_ids.unsqueeze(0)
    h = _mix32(state.unsqueeze(1) ^ _mix32((ids + _V_SALT) & _M32))
    h = _mix32(h ^ k1.unsqueeze(1))
    u = ((h >> 8).to(torch.float64) + 0.5) * (1.0 / (1 << 24))  # in (0, 1)
    return -torch.log(-torch.log(u))


def _processor_classes() -> tuple[type, type]:
    from transformers import LogitsProcessor, StoppingCriteria

    class GumbelTopK(LogitsProcessor):
        """Top-k, temperature and per-row Gumbel noise: the argmax of the output is a sample."""

        def __init__(self, keys: torch.Tensor, width: int, temperature: float, top_k: int):
            self.keys, self.width, self.temperature, self.top_k = keys, width, temperature, top_k

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            step = input_ids.shape[1] - self.width
            scores = scores.float()
            if 0 < self.top_k < scores.shape[-1]:
                top, ids = torch.topk(scores, self.top_k, dim=-1)
                noisy = top / self.temperature + _gumbel(self.keys, step, ids).to(top.dtype)
                return torch.full_like(scores, -math.inf).scatter_(-1, ids, noisy)
            vocab = torch.arange(scores.shape[-1], device=scores.device)
            return scores / self.temperature + _gumbel(self.keys, step, vocab).to(scores.dtype)

    class RowBudget(StoppingCriteria):
        """Each row stops after its own number of new tokens."""

        def __init__(self, budgets: torch.Tensor, width: int):
            self.budgets, self.width = budgets, width

        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            return (input_ids.shape[1] - self.width) >= self.budgets

    return GumbelTopK, RowBudget


# --------------------------------------------------------------------------------------------
# the columns


def _adds_bos(tokenizer: Any, bos: int) -> bool:
    """Whether ``tokenizer(text)`` puts BOS first (its own convention), on a probe text."""
    probe = "The first token."
    with_special = list(tokenizer(probe)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    return bool(with_special) and with_special[0] == bos and plain[:1] != [bos]


def _bos_prefix(tokenizer: Any, policy: str) -> list[int]:
    bos = getattr(tokenizer, "bos_token_id", None)
    if policy == "bos":
        if bos is None:
            raise ValueError("options.first_token: 'bos' asked but the tokenizer has no BOS token; use 'skip' or 'auto'")
        return [int(bos)]
    if policy == "auto" and bos is not None and _adds_bos(tokenizer, bos):
        return [int(bos)]
    return []


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def _device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def _batches(order: list[int], lengths: list[int], budgets: list[int], batch_size: int,
             context: Optional[int]) -> list[list[int]]:
    """Consecutive rows of ``order`` (sorted by prompt length), at most ``batch_size`` per batch and,
    with a context, ``max(prompt length) + max(budget) <= context`` so that every row gets its budget."""
    out: list[list[int]] = []
    current: list[int] = []
    width = need = 0
    for r in order:
        w, b = max(width, lengths[r]), max(need, budgets[r])
        if current and (len(current) >= batch_size or (context is not None and w + b > context)):
            out.append(current)
            current, w, b = [], lengths[r], budgets[r]
        current.append(r)
        width, need = w, b
    if current:
        out.append(current)
    return out


def samia_columns(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    options: Optional[SaMIA] = None,
    *,
    timings: Optional[dict[str, float]] = None,
) -> dict[str, np.ndarray]:
    """SaMIA's per-text scores (Kaneko et al., 2024): ROUGE-1 of sampled continuations.

    Each text is split into a prefix and a reference suffix (`split_prefix`); ``n_samples``
    continuations of the prefix are sampled with ``model.generate`` (top-k, temperature; see
    the module docstring for the sampler and what is reproducible) and compared with the suffix
    by ROUGE-1 recall (`rouge1`). Prompts are BOS (per ``first_token``) + the prefix's tokens,
    left-padded, sorted by length and generated ``batch_size`` rows at a time under
    ``torch.no_grad()`` with the KV cache. Generation costs about ``n_samples * max_new_tokens``
    decoding steps per text; nothing is printed.

    Parameters
    ----------
    model : transformers causal LM (decoder-only), in eval mode
    tokenizer : its tokenizer
    texts : sequence of str, length N
    options : SaMIA, optional
        Default ``SaMIA()`` (10 samples, prefix 0.5, temperature 1, top-k 50, seed 0).
    timings : dict, optional
        When given, receives ``total_seconds``, ``tokenize_seconds``, ``generate_seconds``,
        ``compare_seconds``, ``generate_calls``, ``rows`` (candidates generated) and
        ``generated_tokens`` (decoding steps summed over rows, before the cut at EOS).

    Returns
    -------
    dict of str to ndarray, each of shape (N,), float64
        ``samia``: mean ROUGE-1 recall of the candidates; ``samia_zlib``: mean of ROUGE-1 ×
        zlib-compressed bytes of each candidate. NaN for a text with too few words to split
        (fewer than 2 at ``prefix_fraction=0.5``) or whose prompt fills the model's context.
        Higher = more likely member.
    """
    t_start = time.perf_counter()
    if options is None:
        options = SaMIA()
    if not isinstance(options, SaMIA):
        raise TypeError(f"options: expected a SaMIA, got {type(options).__name__}")
    texts = check_texts(texts)
    if not hasattr(model, "generate"):
        raise TypeError(f"model: expected a transformers causal LM with a generate method, got {type(model).__name__}")
    if getattr(model, "training", False):
        raise ValueError("model: expected a model in eval mode (call model.eval()), got one in training mode "
                         "(dropout would make the samples irreproducible)")
    n, n_samples = len(texts), options.n_samples
    samia = np.full(n, np.nan, dtype=np.float64)
    samia_zlib = np.full(n, np.nan, dtype=np.float64)
    stats = {"tokenize_seconds": 0.0, "generate_seconds": 0.0, "compare_seconds": 0.0,
             "generate_calls": 0.0, "rows": 0.0, "generated_tokens": 0.0}

    # prompts, reference suffixes and budgets
    t0 = time.perf_counter()
    lead = _bos_prefix(tokenizer, options.first_token)
    context = context_length(model)
    split = [split_prefix(t, options.prefix_fraction) for t in texts]
    usable = [i for i, (p, s) in enumerate(split) if p and s]
    prompts: dict[int, list[int]] = {}
    budgets: dict[int, int] = {}
    if usable:
        prefix_ids = tokenizer([split[i][0] for i in usable], add_special_tokens=False)["input_ids"]
        if options.max_new_tokens is None:
            whole = [split[i][0] + " " + split[i][1] for i in usable]
            whole_lengths = [len(x) for x in tokenizer(whole, add_special_tokens=False)["input_ids"]]
        for u, i in enumerate(usable):
            ids = lead + [int(x) for x in prefix_ids[u]]
            budget = (options.max_new_tokens if options.max_new_tokens is not None
                      else max(1, whole_lengths[u] - len(prefix_ids[u])))
            if context is not None:
                budget = min(budget, context - len(ids))
            if budget >= 1 and ids:
                prompts[i], budgets[i] = ids, budget
    stats["tokenize_seconds"] = time.perf_counter() - t0
    if len(prompts) < len(usable):
        log.info("samia: %d texts have a prompt that fills the model's context (NaN)", len(usable) - len(prompts))

    # rows: (text, sample), sorted by prompt length
    row_text = [i for i in prompts for _ in range(n_samples)]
    row_sample = [j for _ in prompts for j in range(n_samples)]
    row_keys: list[tuple[int, int]] = []
    for i in prompts:
        row_keys.extend(_row_keys(options.seed, texts[i], n_samples))
    lengths = [len(prompts[i]) for i in row_text]
    row_budget = [budgets[i] for i in row_text]
    order = sorted(range(len(row_text)), key=lambda r: (lengths[r], row_text[r], row_sample[r]))

    device = _device(model)
    eos = _eos_ids(model, tokenizer)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = int(pad if pad is not None else (eos[0] if eos else 0))
    GumbelTopK, RowBudget = _processor_classes()
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    rouge = np.zeros(len(row_text))
    rouge_zlib = np.zeros(len(row_text))
    suffix_words = {i: words(split[i][1]) for i in prompts}
    for batch in _batches(order, lengths, row_budget, options.batch_size, context):
        width = max(lengths[r] for r in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.int64)
        mask = torch.zeros((len(batch), width), dtype=torch.int64)
        for b, r in enumerate(batch):  # left padding
            ids[b, width - lengths[r]:] = torch.tensor(prompts[row_text[r]], dtype=torch.int64)
            mask[b, width - lengths[r]:] = 1
        keys = torch.tensor([row_keys[r] for r in batch], dtype=torch.int64, device=device)
        budget = torch.tensor([row_budget[r] for r in batch], dtype=torch.int64, device=device)
        config = GenerationConfig(
            do_sample=False, num_beams=1, max_new_tokens=int(budget.max()),
            pad_token_id=pad, eos_token_id=eos or None, use_cache=True,
        )
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                logits_processor=LogitsProcessorList([GumbelTopK(keys, width, options.temperature, options.top_k)]),
                stopping_criteria=StoppingCriteriaList([RowBudget(budget, width)]),
            )
        new = out[:, width:].cpu() if not hasattr(out, "sequences") else out.sequences[:, width:].cpu()
        stats["generate_seconds"] += time.perf_counter() - t0
        stats["generate_calls"] += 1
        stats["rows"] += len(batch)
        stats["generated_tokens"] += new.numel()

        t0 = time.perf_counter()
        rows_ids = []
        for b, r in enumerate(batch):
            row = new[b, : row_budget[r]].tolist()
            for e_pos, tok in enumerate(row):
                if tok in eos:
                    row = row[:e_pos]
                    break
            rows_ids.append(row)
        decoded = tokenizer.batch_decode(rows_ids, skip_special_tokens=True)
        for r, text in zip(batch, decoded):
            cand = words(text)
            score = _rouge1_words(cand, suffix_words[row_text[r]])
            rouge[r] = score
            rouge_zlib[r] = score * zlib_size(cand)
        stats["compare_seconds"] += time.perf_counter() - t0

    for u, i in enumerate(prompts):
        rows = slice(u * n_samples, (u + 1) * n_samples)
        samia[i] = float(np.mean(rouge[rows]))
        samia_zlib[i] = float(np.mean(rouge_zlib[rows]))
    if timings is not None:
        timings.update(stats)
        timings["total_seconds"] = time.perf_counter() - t_start
    return {"samia": samia, "samia_zlib": samia_zlib}


class _SamiaFamily(VariantFamily):
    """SaMIA inside corpus scoring: generation, no scored inputs; the columns come with the expansion."""

    def __init__(self, scorer: Any, options: SaMIA):
        self.scorer, self.options = scorer, options
        self.seconds = 0.0

    def expand(self, texts: Sequence[str], tokens: list[list[int]]) -> Expansion:
        timings: dict[str, float] = {}
        columns = samia_columns(self.scorer.model, self.scorer.tokenizer, texts, self.options, timings=timings)
        self.seconds += timings.get("total_seconds", 0.0)
        return Expansion(columns=columns)

    def columns(self, documents: Pass, variants: Pass, expansion: Expansion) -> dict[str, np.ndarray]:
        return expansion.columns
