"""Prefix sensitivity: the loss of a text's continuation after its own prefix, and under a fixed context.

Two per-sequence signals of membership that condition the model on more text than the scored
tokens (both are options of `mia_fast.scoring.scorer.ScoreOptions` and of ``mia-fast score``):

Own prefix (``prefix_tokens``)
    A member's continuation becomes much more predictable once the model has read the start of
    the text. For a setting ``k`` the *prefix* is the text's first ``k`` tokens (an integer
    ``k >= 1``; ``0`` means no prefix) or its first ``floor(f * T)`` tokens for a fraction
    ``0 < f < 1`` of the text's ``T`` tokens. Tokens are counted in the text's own token list:
    the BOS that the ``first_token='bos'`` policy prepends is not part of the text, so the
    continuation is the per-token table's positions ``>= k + 1`` with a BOS and ``>= k``
    without one (with a BOS every text token is scored, so a fraction of the text's tokens is
    the same fraction of its scored tokens). In a causal LM these positions are already
    conditioned on everything before them in the ordinary forward pass: the columns cost a
    reduction, no forward. Columns, for each setting (`loss_prefix_column`,
    `n_tokens_prefix_column`): ``n_tokens_prefix{k}`` (int64, the scored continuation tokens)
    and ``loss_prefix{k}`` (their mean NLL, NaN when no token is left after the prefix), with
    ``{k}`` the count (``loss_prefix16``) or the fraction (``loss_prefix0.25``).

Fixed context (``context_text``; ReCaLL, Xie et al., 2024)
    Each text is scored a second time after a fixed context, e.g. a few paragraphs known to be
    non-members: the model reads ``[BOS] + context + text`` and only the text's tokens are
    scored, the same tokens as in the ordinary pass (with ``first_token='skip'`` the text's
    first token stays unscored, although the context now precedes it). Columns:
    ``loss_context`` (mean NLL of the text's tokens given the context) and
    ``recall = loss_context / loss``, ReCaLL's ratio of the two log-likelihoods (the minus
    signs cancel). A context hurts what the model has memorised: on the tiny GPT-2 of
    ``tests/test_prefix.py`` (trained on its members, context = other paragraphs) the ratio is
    above 1 for members and close to 1 for non-members, so larger = more member-like; see
    `mia_fast.attacks.ReCaLLAttack`.

    The context is capped by ``context_tokens`` (its last tokens are kept, so that its end stays
    adjacent to the text) and must leave at least 2 tokens of the model's window for the text.
    A text longer than what is left, ``W = max_length - len(BOS + context)`` tokens, goes
    through sliding windows of ``W`` text tokens (`mia_fast.scoring.batching.windows`, stride
    ``min(stride, W // 2)``) and every window starts with the whole context: each text token is
    scored once, after the context and at least ``W - stride`` tokens of its own text (as in the
    ordinary pass), never after a truncated context.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from ..columns import PrefixSetting, check_prefix_tokens, loss_prefix_column, n_tokens_prefix_column
from .batching import Window, windows

__all__ = [
    "prefix_lengths",
    "continuation_columns",
    "read_context_file",
    "context_sha256",
    "context_token_ids",
    "conditioned_inputs",
    "context_columns",
]


def prefix_lengths(setting: PrefixSetting, n_text_tokens: torch.Tensor) -> torch.Tensor:
    """Number of each text's tokens that form its prefix.

    Parameters
    ----------
    setting : int or float
        A count (int >= 0) or a fraction in (0, 1), as returned by `check_prefix_tokens`.
    n_text_tokens : Tensor, shape (N,), int64
        Each text's number of tokens (BOS not counted).

    Returns
    -------
    Tensor, shape (N,), int64
        ``setting`` for a count, ``floor(f * T)`` for a fraction (robust to ``f * T`` landing
        just below an integer in floating point).
    """
    if isinstance(setting, int):
        return torch.full_like(n_text_tokens, setting)
    return torch.floor(setting * n_text_tokens.double() + 1e-9).long()


def continuation_columns(
    logprob: torch.Tensor,
    seq: torch.Tensor,
    text_position: torch.Tensor,
    n_text_tokens: torch.Tensor,
    settings: Sequence[PrefixSetting],
) -> dict[str, np.ndarray]:
    """Per-sequence loss of the tokens after each prefix (see the module docstring).

    Parameters
    ----------
    logprob : Tensor, shape (n,)
        Log-probability of each scored token.
    seq : Tensor, shape (n,), int64
        The sequence (text) of each scored token, in ``[0, N)``.
    text_position : Tensor, shape (n,), int64
        Index of each scored token in its text's own token list (BOS not counted).
    n_text_tokens : Tensor, shape (N,), int64
        Each text's number of tokens.
    settings : sequence of int or float
        Prefix settings (`check_prefix_tokens`).

    Returns
    -------
    dict of str to ndarray, each of shape (N,)
        ``n_tokens_prefix{k}`` (int64) and ``loss_prefix{k}`` (float64, NaN without tokens).
    """
    n = n_text_tokens.numel()
    values = -logprob.double()
    out: dict[str, np.ndarray] = {}
    for setting in check_prefix_tokens(settings):
        keep = text_position >= prefix_lengths(setting, n_text_tokens)[seq]
        count = torch.bincount(seq[keep], minlength=n)
        total = torch.bincount(seq[keep], weights=values[keep], minlength=n)
        out[n_tokens_prefix_column(setting)] = count.numpy().astype(np.int64)
        out[loss_prefix_column(setting)] = torch.where(count > 0, total / count.clamp(min=1), torch.nan).numpy()
    return out


def read_context_file(path: Union[str, Path], name: str = "context_file") -> str:
    """The text of a context file, verbatim (UTF-8; a final newline separates it from each text);
    errors name the argument ``name``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{name}: expected a text file, got {str(path)!r} (no such file)")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{name}: expected UTF-8 text, got {str(path)!r} ({err})") from None
    if not text.strip():
        raise ValueError(f"{name}: expected some text, got {str(path)!r} with none")
    return text


def context_sha256(text: str) -> str:
    """sha256 of the context's UTF-8 bytes (that of the file `read_context_file` read it from)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def context_token_ids(tokenizer: Any, text: str, cap: Optional[int], room: int,
                      names: tuple[str, str] = ("context_tokens", "--context-tokens")) -> list[int]:
    """The context's token ids, its last ``cap`` ones when capped.

    Parameters
    ----------
    tokenizer : the scorer's tokenizer (no special tokens are added)
    text : str
        The context.
    cap : int, optional
        Keep at most this many tokens, dropping the start of the context.
    room : int
        The most tokens the context may take in the model's window (``max_length`` minus the
        BOS, if any, minus 2 tokens of text).
    names : (str, str)
        The cap's option and command-line flag, named by the error of a context too long.

    Returns
    -------
    list of int
    """
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if cap is not None:
        ids = ids[-cap:]
    if not ids:
        raise ValueError(f"{names[0]}: expected a context with at least one token, got none")
    if len(ids) > room:
        raise ValueError(
            f"{names[0]}: the context has {len(ids)} tokens but the model's window leaves room for at most "
            f"{room} (max_length minus the BOS and 2 tokens of text); cap it with {names[0]} "
            f"({names[1]}), e.g. {max(1, room // 2)}"
        )
    return ids


def _text_windows(n_text: int, width: int, stride: int, first_scored: int) -> list[tuple[int, int, int]]:
    """``(start, end, score_from)`` of the windows over a text's own tokens, in text coordinates."""
    if n_text <= first_scored:
        return []
    if n_text == 1:  # first_scored == 0: the lone token is predicted from the context
        return [(0, 1, 0)]
    out = [(w.start, w.end, w.score_from) for w in windows(n_text, width, stride)]
    out[0] = (out[0][0], out[0][1], first_scored)
    return out


def conditioned_inputs(
    texts: Sequence[Sequence[int]], lead: Sequence[int], max_length: int, stride: int, first_scored: int
) -> tuple[list[list[int]], list[Window], torch.Tensor]:
    """Model inputs ``lead + window of the text`` that score every text token once after ``lead``.

    Parameters
    ----------
    texts : sequence of sequences of int, length N
        Each text's own token ids (no BOS).
    lead : sequence of int
        What every input starts with: the BOS (if any) and the context, ``m`` tokens.
    max_length : int
        The model's window; ``max_length - m >= 2``.
    stride : int
        Upper bound of the stride between text windows (it is also at most half a text window).
    first_scored : int
        0 to score the text's first token (after a BOS policy), 1 to leave it unscored.

    Returns
    -------
    inputs : list of list of int
        One input per text window.
    wins : list of Window
        ``wins[v]`` covers all of ``inputs[v]`` and scores its text tokens not scored elsewhere.
    owner : Tensor, shape (len(inputs),), int64
        The text of each input.
    """
    m = len(lead)
    width = max_length - m
    if width < 2:
        raise ValueError(f"lead: expected at most max_length - 2 = {max_length - 2} tokens, got {m}")
    text_stride = max(1, min(stride, width // 2))
    inputs: list[list[int]] = []
    wins: list[Window] = []
    owner: list[int] = []
    for i, ids in enumerate(texts):
        for start, end, score_from in _text_windows(len(ids), width, text_stride, first_scored):
            v = len(inputs)
            inputs.append([*lead, *ids[start:end]])
            wins.append(Window(v, 0, m + end - start, m + score_from - start))
            owner.append(i)
    return inputs, wins, torch.tensor(owner, dtype=torch.int64)


def context_columns(loss_context: np.ndarray, loss: np.ndarray) -> dict[str, np.ndarray]:
    """``loss_context`` and ReCaLL's ``recall = loss_context / loss`` (NaN where undefined).

    Parameters
    ----------
    loss_context, loss : ndarray, shape (N,)
        Mean NLL of each text's tokens with and without the context.

    Returns
    -------
    dict of str to ndarray, each of shape (N,), float64
    """
    loss_context = np.asarray(loss_context, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(loss > 0, loss_context / np.where(loss > 0, loss, 1.0), np.nan)
    return {"loss_context": loss_context, "recall": ratio}
