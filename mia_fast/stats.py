"""The `TokenStats` record shared by every backend."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["TokenStats", "FLOAT_FIELDS", "INT_FIELDS", "FIELDS"]


class TokenStats(NamedTuple):
    """Per-token statistics of a softmax over the vocabulary.

    Every field has the shape of ``targets``. With ``z`` a row of logits, ``y`` its target
    and ``p = softmax(z)``:

    Attributes
    ----------
    logprob : Tensor, float32
        ``log p_y = z_y - lse``.
    lse : Tensor, float32
        ``log sum_v exp(z_v)``.
    entropy : Tensor, float32
        ``-sum_v p_v log p_v``.
    var_logp : Tensor, float32
        ``Var_{v ~ p}[log p_v]`` (the sigma^2 of Min-K%++).
    max_logprob : Tensor, float32
        ``log max_v p_v``.
    argmax : Tensor, int64
        First index of the largest logit.
    log1m_p : Tensor, float32
        ``log(1 - p_y)`` computed from the sum over ``v != y`` (exact as ``p_y -> 1``).
    margin : Tensor, float32
        ``z_y - max_{v != y} z_v``.
    rank : Tensor, int64
        ``#{v : z_v > z_y}``; 0 when the target is a top-1 token.
    mask : Tensor, bool
        ``targets != ignore_index``. Masked positions hold NaN (float) and -1 (int).
    """

    logprob: torch.Tensor
    lse: torch.Tensor
    entropy: torch.Tensor
    var_logp: torch.Tensor
    max_logprob: torch.Tensor
    argmax: torch.Tensor
    log1m_p: torch.Tensor
    margin: torch.Tensor
    rank: torch.Tensor
    mask: torch.Tensor

    @property
    def phi(self) -> torch.Tensor:
        """LiRA's logit-scaled confidence ``log p_y - log(1 - p_y)``."""
        return self.logprob - self.log1m_p


FIELDS: tuple[str, ...] = TokenStats._fields
INT_FIELDS: tuple[str, ...] = ("argmax", "rank")
FLOAT_FIELDS: tuple[str, ...] = tuple(f for f in FIELDS if f not in INT_FIELDS and f != "mask")
