"""PAC: polarized augment calibration (Ye et al., Findings of ACL 2024, "Data Contamination
Calibration for Black-box LLMs").

A text's *polarized distance* contrasts its most and least likely tokens under the target model:
the mean of its ``k_max`` fraction of highest token log-probabilities minus the mean of its
``k_min`` fraction of lowest ones. PAC calibrates it by the same quantity over augmented copies
of the text made by swapping random pairs of words (the swap operation of EDA, Wei and Zou,
EMNLP 2019):

    pac(x) = PD(x) - mean_j PD(aug_j(x))

A model that has seen ``x`` raises its unlikely tokens (the low tail moves up), so ``PD(x)`` is
small, and the swaps break that memorised path (``PD(aug_j(x))`` stays large): members have a
*lower* ``pac``. The attack (`mia_fast.attacks.PACAttack`) scores ``-pac`` so that higher = more
likely member, as the authors' evaluation does (``roc_auc_score(labels, -PAC)`` in
github.com/yyy01/PAC, ``attack.py``).

Defaults follow the authors' code: ``N = 5`` augmentations, ``alpha = 0.3`` (the number of swaps
is ``max(1, floor(alpha * n_words))``), ``ratio_far = 0.05`` (``k_max``) and ``ratio_local =
0.3`` (``k_min``), with region sizes ``max(1, floor(ratio * L))`` over the ``L`` scored
log-probabilities of a text.

The augmentations of a document depend only on (its text, the options, the seed): every
document draws from its own generator, seeded by ``sha256(seed, text)`` (`document_seed`), so
resharding a corpus or scoring a document alone reproduces them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from typing import Any, Sequence, Union

import numpy as np
import torch

from .checks import as_1d, check_count, check_fraction, check_seed, check_texts
from .variants import Expansion, Pass, VariantFamily, VariantSpec, text_variant_inputs

__all__ = [
    "PAC",
    "document_seed",
    "document_rng",
    "swap_augment",
    "pac_variants",
    "polarized_distance",
    "pac_scores",
    "mean_by_parent",
    "flatten_variants",
]

_WORD = re.compile(r"\S+")
# floor(k * L) robust to k * L landing just below an integer in floating point (as in
# mia_fast.aggregate's Min-K%)
_FLOOR_EPS = 1e-9


def document_seed(seed: int, text: str, family: str = "") -> int:
    """A 64-bit seed that depends only on ``(seed, text, family)``.

    Parameters
    ----------
    seed : int
        The run's seed (non-negative).
    text : str
        The document.
    family : str
        Name of the variant family, so that two families do not share a stream.

    Returns
    -------
    int in [0, 2**64)
    """
    digest = hashlib.sha256(f"{family}\x1f{int(seed)}\x1f".encode() + text.encode("utf-8", "surrogatepass"))
    return int.from_bytes(digest.digest()[:8], "little")


def document_rng(seed: int, text: str, family: str = "") -> np.random.Generator:
    """A NumPy generator seeded by `document_seed`."""
    return np.random.Generator(np.random.PCG64(document_seed(seed, text, family)))


@dataclass(frozen=True)
class PAC(VariantSpec):
    """PAC (Ye et al., 2024) as a variant family of corpus scoring (`mia_fast.scoring.variants`):
    ``n_augmentations`` word-swapped copies of each text are scored in the texts' batches, and the
    column ``pac`` is the text's polarized distance minus the mean of its copies' (`pac_scores`),
    read by `mia_fast.attacks.PACAttack`. The options are recorded in the manifest.

    Attributes
    ----------
    n_augmentations : int
        Augmented copies per text (the paper's and code's ``N``; default 5).
    swap_fraction : float in (0, 1]
        The code's ``alpha``: each copy makes ``max(1, floor(swap_fraction * n_words))`` random
        swaps of two words (default 0.3).
    k_max : float in (0, 1]
        Fraction of the highest token log-probabilities (the code's ``ratio_far``; default 0.05).
    k_min : float in (0, 1]
        Fraction of the lowest token log-probabilities (the code's ``ratio_local``; default 0.3).
    seed : int
        Seed of the augmentations (each document draws from ``sha256(seed, text)``).
    """

    n_augmentations: int = 5
    swap_fraction: float = 0.3
    k_max: float = 0.05
    k_min: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_augmentations", check_count("n_augmentations", self.n_augmentations))
        object.__setattr__(self, "swap_fraction", check_fraction("swap_fraction", self.swap_fraction))
        object.__setattr__(self, "k_max", check_fraction("k_max", self.k_max))
        object.__setattr__(self, "k_min", check_fraction("k_min", self.k_min))
        object.__setattr__(self, "seed", check_seed(self.seed))

    name = "pac"

    def as_dict(self) -> dict[str, Any]:
        """The options as a JSON-ready dict."""
        return {"name": self.name, **asdict(self)}

    def columns(self) -> tuple[str, ...]:
        return ("pac",)

    def build(self, scorer: Any) -> VariantFamily:
        return _PACFamily(scorer, self)


def swap_augment(text: str, n: int, swap_fraction: float, rng: np.random.Generator) -> list[str]:
    """``n`` copies of ``text``, each with random pairs of words swapped (EDA's random swap).

    The words are the maximal runs of non-whitespace characters; they trade places while every
    whitespace run between them stays where it was (a newline stays a newline). Each copy
    starts from ``text`` and makes ``max(1, floor(swap_fraction * n_words))`` swaps, each of two
    distinct positions drawn uniformly (a word may move several times, and equal words may
    swap); a text with fewer than two words is returned unchanged. The authors' code splits on
    single spaces and, after three draws of the same index, gives a swap up; here the two
    positions are always distinct.

    Parameters
    ----------
    text : str
    n : int
        Number of copies (>= 1).
    swap_fraction : float in (0, 1]
    rng : numpy.random.Generator
        The source of randomness (e.g. `document_rng`).

    Returns
    -------
    list of ``n`` str, each a permutation of the words of ``text``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    n = check_count("n", n)
    swap_fraction = check_fraction("swap_fraction", swap_fraction)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    spans = [m.span() for m in _WORD.finditer(text)]
    n_words = len(spans)
    if n_words < 2:
        return [text] * n
    words = [text[a:b] for a, b in spans]
    gaps = [text[: spans[0][0]]] + [text[spans[i][1] : spans[i + 1][0]] for i in range(n_words - 1)]
    tail = text[spans[-1][1] :]
    n_swaps = max(1, int(np.floor(swap_fraction * n_words + _FLOOR_EPS)))
    out = []
    for _ in range(n):
        order = np.arange(n_words)
        for _ in range(n_swaps):
            i, j = rng.choice(n_words, size=2, replace=False)
            order[i], order[j] = order[j], order[i]
        out.append("".join(g + words[k] for g, k in zip(gaps, order.tolist())) + tail)
    return out


def pac_variants(texts: Sequence[str], options: PAC = PAC()) -> list[list[str]]:
    """Each text's ``options.n_augmentations`` word-swapped copies (`swap_augment`).

    A document's copies depend only on its text and ``options`` (its generator is seeded by
    ``sha256(options.seed, text)``), not on the other texts of the call.

    Parameters
    ----------
    texts : sequence of str, length N
    options : PAC

    Returns
    -------
    list (N) of lists of ``options.n_augmentations`` str
    """
    texts = check_texts(texts)
    if not isinstance(options, PAC):
        raise TypeError(f"options: expected a PAC, got {type(options).__name__}")
    return [
        swap_augment(t, options.n_augmentations, options.swap_fraction, document_rng(options.seed, t, "pac"))
        for t in texts
    ]


def _check_owner(owner: np.ndarray, n: int, name: str, n_name: str) -> None:
    if owner.size and (owner.min() < 0 or owner.max() >= n):
        raise ValueError(f"{name}: expected indices in [0, {n_name}={n}), got values in "
                         f"[{int(owner.min())}, {int(owner.max())}]")


def polarized_distance(
    logprob: Union[torch.Tensor, np.ndarray],
    seq: Union[torch.Tensor, np.ndarray],
    n_sequences: int,
    k_max: float = 0.05,
    k_min: float = 0.3,
) -> np.ndarray:
    """PAC's polarized distance of each sequence from its scored token log-probabilities.

    For a sequence with ``L`` scored tokens, ``PD = mean(top a) - mean(bottom b)`` with
    ``a = max(1, floor(k_max * L))`` highest and ``b = max(1, floor(k_min * L))`` lowest
    log-probabilities (Ye et al., 2024; ``calculate_Polarized_Distance`` of the authors' code).
    The two regions may overlap when ``k_max + k_min > 1`` or ``L`` is small (with one token,
    PD = 0). Ties do not matter: equal values contribute equally whatever their order.
    One vectorised pass: a stable sort of the tokens by (sequence, log-prob) and cumulative sums.

    Parameters
    ----------
    logprob : Tensor or ndarray (n,), float
        Scored tokens' log-probabilities (finite, or -inf for a masked vocabulary entry).
    seq : Tensor or ndarray (n,), integer
        The sequence of each token, in ``[0, n_sequences)``; need not be sorted.
    n_sequences : int
    k_max, k_min : float in (0, 1]

    Returns
    -------
    ndarray (n_sequences,), float64; NaN for a sequence without a scored token. A -inf
    log-prob in the bottom region gives +inf (NaN when it is in both regions).
    """
    lp = as_1d(logprob, "logprob", "float")
    sq = as_1d(seq, "seq", "int")
    n_sequences = check_count("n_sequences", n_sequences, minimum=0)
    k_max = check_fraction("k_max", k_max)
    k_min = check_fraction("k_min", k_min)
    if lp.shape != sq.shape:
        raise ValueError(f"seq: expected the shape of logprob {lp.shape}, got {sq.shape}")
    if np.isnan(lp).any() or np.isposinf(lp).any():
        bad = np.flatnonzero(np.isnan(lp) | np.isposinf(lp))
        raise ValueError(f"logprob: expected log-probabilities (finite or -inf), got {bad.size} NaN/+inf "
                         f"values (first at index {int(bad[0])})")
    _check_owner(sq, n_sequences, "seq", "n_sequences")
    out = np.full(n_sequences, np.nan)
    if lp.size == 0:
        return out
    order = np.lexsort((lp, sq))  # by sequence, then ascending log-prob
    values = lp[order]
    count = np.bincount(sq, minlength=n_sequences)
    end = np.cumsum(count)
    start = end - count
    has = count > 0
    length = count[has].astype(np.float64)
    n_top = np.maximum(1, np.floor(k_max * length + _FLOOR_EPS)).astype(np.int64)
    n_bot = np.maximum(1, np.floor(k_min * length + _FLOOR_EPS)).astype(np.int64)
    s, e = start[has], end[has]
    # A -inf log-prob makes cumulative differences NaN; take them from the sums of finite values
    # and count the infinities apart.
    finite = np.where(np.isfinite(values), values, 0.0)
    c = np.concatenate(([0.0], np.cumsum(finite)))
    ninf = np.concatenate(([0], np.cumsum(np.isneginf(values))))
    top = (c[e] - c[e - n_top]) / n_top
    bottom = (c[s + n_bot] - c[s]) / n_bot
    top = np.where(ninf[e] - ninf[e - n_top] > 0, -np.inf, top)
    bottom = np.where(ninf[s + n_bot] - ninf[s] > 0, -np.inf, bottom)
    with np.errstate(invalid="ignore"):
        out[has] = top - bottom
    return out


def mean_by_parent(values: Union[np.ndarray, Sequence[float]], parent: Union[np.ndarray, Sequence[int]],
                   n_parents: int) -> np.ndarray:
    """Mean of the finite ``values`` of each parent (e.g. the losses of a document's variants).

    Parameters
    ----------
    values : ndarray (M,), float
        One value per variant; NaN entries (a variant without a scored token) are left out.
    parent : ndarray (M,), integer
        The parent of each variant, in ``[0, n_parents)``.
    n_parents : int

    Returns
    -------
    ndarray (n_parents,), float64; NaN for a parent without a finite value.
    """
    v = as_1d(values, "values", "float")
    p = as_1d(parent, "parent", "int")
    n_parents = check_count("n_parents", n_parents, minimum=0)
    if v.shape != p.shape:
        raise ValueError(f"parent: expected the shape of values {v.shape}, got {p.shape}")
    _check_owner(p, n_parents, "parent", "n_parents")
    ok = np.isfinite(v)
    count = np.bincount(p[ok], minlength=n_parents)
    total = np.bincount(p[ok], weights=v[ok], minlength=n_parents)
    out = np.full(n_parents, np.nan)
    np.divide(total, count, out=out, where=count > 0)
    return out


def pac_scores(pd_text: Union[np.ndarray, Sequence[float]], pd_variants: Union[np.ndarray, Sequence[float]],
               parent: Union[np.ndarray, Sequence[int]]) -> np.ndarray:
    """PAC's calibrated polarized distance: ``PD(text) - mean PD(its augmentations)``.

    This is the paper's PAC value, lower for members; `mia_fast.attacks.PACAttack` negates it.

    Parameters
    ----------
    pd_text : ndarray (N,), float
        `polarized_distance` of the texts.
    pd_variants : ndarray (M,), float
        `polarized_distance` of the augmented copies (NaN ones are left out of the mean).
    parent : ndarray (M,), integer
        The text of each copy, in ``[0, N)``.

    Returns
    -------
    ndarray (N,), float64; NaN where the text's PD is NaN or it has no copy with a finite PD.
    """
    pd = as_1d(pd_text, "pd_text", "float")
    return pd - mean_by_parent(pd_variants, parent, pd.shape[0])


def flatten_variants(variants: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray]:
    """The variants of N documents as one list, with the document of each.

    Parameters
    ----------
    variants : sequence (N) of sequences of str

    Returns
    -------
    texts : list of str, length M
    parent : ndarray (M,), int64, in ``[0, N)``, non-decreasing
    """
    if isinstance(variants, str) or not isinstance(variants, Sequence):
        raise TypeError(f"variants: expected a sequence of sequences of str, got {type(variants).__name__}")
    flat: list[str] = []
    counts = []
    for i, group in enumerate(variants):
        flat.extend(check_texts(group, f"variants[{i}]"))
        counts.append(len(group))
    return flat, np.repeat(np.arange(len(counts), dtype=np.int64), counts)


class _PACFamily(VariantFamily):
    """PAC inside corpus scoring: the augmented copies are scored like texts, then `pac_scores`."""

    def __init__(self, scorer: Any, options: PAC):
        self.scorer, self.options = scorer, options

    def expand(self, texts: Sequence[str], tokens: list[list[int]]) -> Expansion:
        return text_variant_inputs(self.scorer, pac_variants(texts, self.options))

    def columns(self, documents: Pass, variants: Pass, expansion: Expansion) -> dict[str, np.ndarray]:
        o = self.options
        pd_text = polarized_distance(documents.stats.logprob, documents.seq, documents.n_sequences, o.k_max, o.k_min)
        variant_of_token = torch.from_numpy(expansion.variant)[variants.seq] if variants.seq.numel() else variants.seq
        pd_variants = polarized_distance(variants.stats.logprob, variant_of_token, expansion.n_variants, o.k_max, o.k_min)
        return {"pac": pac_scores(pd_text, pd_variants, expansion.parent)}
