"""The `TokenStats` record shared by every backend."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

__all__ = ["TokenStats", "TemperedStats", "FLOAT_FIELDS", "INT_FIELDS", "FIELDS", "TEMPERED_FIELDS",
           "MAX_TEMPERATURES", "check_temperatures"]


class TemperedStats(NamedTuple):
    """Statistics of the tempered distributions ``p_tau = softmax(z / tau)``.

    They come from the same pass over the vocabulary as `TokenStats` (one extra exponential per
    element and temperature at most). Each tensor field has shape ``targets.shape + (T,)``, with
    column ``j`` for ``temperatures[j]``; masked positions hold NaN.

    Attributes
    ----------
    temperatures : tuple of float
        The temperatures ``tau_j > 0`` (the inverse temperatures are ``beta_j = 1 / tau_j``).
    logprob : Tensor, float32
        ``log p_tau(y) = z_y / tau - logsumexp(z / tau)``.
    entropy : Tensor, float32
        ``-sum_v p_tau(v) log p_tau(v)``.
    max_logprob : Tensor, float32
        ``log max_v p_tau(v) = max_v z_v / tau - logsumexp(z / tau)``.
    """

    temperatures: tuple[float, ...]
    logprob: torch.Tensor
    entropy: torch.Tensor
    max_logprob: torch.Tensor

    def map(self, fn) -> "TemperedStats":
        """The same record with ``fn`` applied to each tensor field."""
        return TemperedStats(self.temperatures, fn(self.logprob), fn(self.entropy), fn(self.max_logprob))


TEMPERED_FIELDS: tuple[str, ...] = ("logprob", "entropy", "max_logprob")
# Temperatures one call can compute (the kernels keep two running moments per temperature).
MAX_TEMPERATURES = 8


def check_temperatures(temperatures) -> tuple[float, ...]:
    """Validate ``temperatures``: a sequence of at most `MAX_TEMPERATURES` finite floats > 0."""
    import math

    if isinstance(temperatures, (int, float)) or not hasattr(temperatures, "__iter__"):
        raise TypeError(f"temperatures: expected a sequence of floats, got {type(temperatures).__name__}")
    out = []
    for t in temperatures:
        try:
            value = float(t)
        except (TypeError, ValueError):
            raise TypeError(f"temperatures: expected floats, got {t!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"temperatures: expected finite values > 0, got {t!r}")
        out.append(value)
    if len(out) > MAX_TEMPERATURES:
        raise ValueError(f"temperatures: expected at most {MAX_TEMPERATURES} values, got {len(out)}")
    return tuple(out)


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
    tempered : TemperedStats or None
        The statistics at the requested temperatures (``temperatures=`` of `mia_fast.token_stats`),
        None when none were requested.
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
    tempered: Optional[TemperedStats] = None

    @property
    def phi(self) -> torch.Tensor:
        """LiRA's logit-scaled confidence ``log p_y - log(1 - p_y)``."""
        return self.logprob - self.log1m_p

    def map(self, fn) -> "TokenStats":
        """The same record with ``fn`` applied to every tensor (a tempered field is ``(..., T)``)."""
        fields = [fn(getattr(self, f)) for f in FIELDS]
        return TokenStats(*fields, tempered=None if self.tempered is None else self.tempered.map(fn))


# The per-token tensor fields, each of shape targets.shape (the tempered record excluded).
FIELDS: tuple[str, ...] = tuple(f for f in TokenStats._fields if f != "tempered")
INT_FIELDS: tuple[str, ...] = ("argmax", "rank")
FLOAT_FIELDS: tuple[str, ...] = tuple(f for f in FIELDS if f not in INT_FIELDS and f != "mask")
