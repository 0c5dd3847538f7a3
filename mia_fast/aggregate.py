"""Per-sequence reductions of per-token statistics (design.md §4).

Every reduction runs over the scored positions (``stats.mask``) of each sequence, in float64.
The column names produced here are the per-sequence schema shared by the score directories and
the attacks: ``n_tokens``, ``loss``, ``min_k_{k:g}``, ``min_k_pp_{k:g}``, ``n_sigma_clipped``,
``zlib``, ``entropy_mean``, ``phi_mean``, ``top1_acc``, ``log_rank_mean``.
"""

from __future__ import annotations

import zlib
from typing import Optional, Sequence

import numpy as np
import torch

from .stats import TokenStats

__all__ = [
    "DEFAULT_KS",
    "SIGMA_FLOOR",
    "aggregate",
    "min_k_column",
    "min_k_pp_column",
    "lowest_k_mean",
    "min_k_pp_scores",
    "zlib_length",
    "tempered_column",
]

DEFAULT_KS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
# Min-K%++ divides by sigma = sqrt(var_logp); a (nearly) one-hot or uniform softmax has sigma -> 0.
SIGMA_FLOOR = 1e-4


def min_k_column(k: float) -> str:
    """Column name of Min-K% at fraction ``k`` (``min_k_0.2``)."""
    return f"min_k_{k:g}"


def min_k_pp_column(k: float) -> str:
    """Column name of Min-K%++ at fraction ``k`` (``min_k_pp_0.2``)."""
    return f"min_k_pp_{k:g}"


def tempered_column(statistic: str, temperature: float) -> str:
    """Column of a per-sequence statistic at a temperature: ``loss_t0.5``, ``entropy_t2``."""
    return f"{statistic}_t{float(temperature):g}"


def zlib_length(text: str) -> int:
    """Length in bytes of the zlib-compressed UTF-8 text (the zlib attack's denominator)."""
    return len(zlib.compress(text.encode("utf-8")))


def check_ks(ks: Sequence[float]) -> tuple[float, ...]:
    """The Min-K% fractions as floats; ValueError unless a non-empty list of fractions in (0, 1]."""
    out = tuple(float(k) for k in ks)
    bad = [k for k in out if not 0.0 < k <= 1.0]
    if not out or bad:
        raise ValueError(f"ks: expected a non-empty list of fractions in (0, 1], got {list(ks)}")
    return out


def lowest_k_mean(values: torch.Tensor, mask: torch.Tensor, ks: Sequence[float]) -> torch.Tensor:
    """Mean of the lowest ``max(1, floor(k * L))`` scored values of each row, for each k.

    Parameters
    ----------
    values : Tensor, shape (B, L)
        Per-token values (float64 recommended); unscored positions are ignored.
    mask : Tensor, shape (B, L), bool
        Scored positions; ``L_b = mask[b].sum()``.
    ks : sequence of float
        Fractions in (0, 1].

    Returns
    -------
    Tensor, shape (len(ks), B), float64
        NaN for rows with no scored position.
    """
    ks = check_ks(ks)
    v = torch.where(mask, values.double(), torch.inf)
    ordered, _ = torch.sort(v, dim=-1)
    csum = torch.cumsum(torch.where(torch.isinf(ordered) & (ordered > 0), 0.0, ordered), dim=-1)
    n = mask.sum(-1)
    out = torch.full((len(ks), v.shape[0]), torch.nan, dtype=torch.float64)
    has = n > 0
    for i, k in enumerate(ks):
        # floor(k * L), robust to k * L landing just below an integer in floating point (0.7 * 90)
        count = torch.clamp(torch.floor(k * n.double() + 1e-9).long(), min=1)
        idx = (torch.minimum(count, n.clamp(min=1)) - 1).unsqueeze(-1)
        if v.shape[-1] == 0:
            continue
        picked = torch.gather(csum, -1, idx).squeeze(-1) / count.double()
        out[i] = torch.where(has, picked, torch.nan)
    return out


def min_k_pp_scores(stats: TokenStats, sigma_floor: float = SIGMA_FLOOR) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-K%++ per-token scores ``(log p_y - mu) / sigma`` with ``mu = -entropy``, ``sigma = sqrt(var_logp)``.

    ``mu`` and ``sigma^2`` are the mean and variance of ``log p_v`` under ``v ~ p`` (Zhang et al.,
    2024); sigma is clipped below at ``sigma_floor``.

    Returns
    -------
    scores : Tensor, float64, shape of the stats
    clipped : Tensor, bool, where sigma was clipped (scored positions only)
    """
    sigma = torch.sqrt(torch.clamp(stats.var_logp.double(), min=0.0))
    clipped = stats.mask & (sigma < sigma_floor)
    mu = -stats.entropy.double()
    return (stats.logprob.double() - mu) / torch.clamp(sigma, min=sigma_floor), clipped


def _masked_mean(x: torch.Tensor, mask: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    total = torch.where(mask, x.double(), 0.0).sum(-1)
    return torch.where(n > 0, total / n.clamp(min=1), torch.nan)


def aggregate(
    stats: TokenStats,
    *,
    ks: Sequence[float] = DEFAULT_KS,
    texts: Optional[Sequence[str]] = None,
    sigma_floor: float = SIGMA_FLOOR,
) -> dict[str, np.ndarray]:
    """Reduce per-token statistics to the per-sequence columns of the score tables.

    Parameters
    ----------
    stats : TokenStats, fields of shape (B, L) (or (L,) for one sequence)
        Per-token statistics; ``stats.mask`` marks the scored positions of each sequence.
    ks : sequence of float
        Fractions for ``min_k`` and ``min_k_pp``.
    texts : sequence of str, optional, length B
        The texts; gives the ``zlib`` column (loss / zlib-compressed byte length).
    sigma_floor : float
        Lower clip of Min-K%++'s sigma; the number of clipped tokens is ``n_sigma_clipped``.

    Returns
    -------
    dict of str to ndarray, each of shape (B,)
        ``n_tokens`` (int64), ``loss`` (mean -log p), ``min_k_{k}``, ``min_k_pp_{k}``,
        ``n_sigma_clipped`` (int64), ``zlib`` (when ``texts``), ``entropy_mean``, ``phi_mean``,
        ``top1_acc`` (share of tokens whose target has rank 0, i.e. is a top-1 token),
        ``log_rank_mean`` (mean of log(1 + rank)). With tempered statistics, for each temperature
        tau: ``loss_t{tau}`` (mean -log p_tau(y)) and ``entropy_t{tau}`` (mean entropy of p_tau).
        Float columns are float64; NaN when a sequence has no scored token.
    """
    ks = check_ks(ks)
    if stats.mask.dim() == 1:
        stats = stats.map(lambda f: f.unsqueeze(0))
    if stats.mask.dim() != 2:
        raise ValueError(f"stats: expected fields of shape (B, L) or (L,), got {tuple(stats.mask.shape)}")
    batch = stats.mask.shape[0]
    if texts is not None and len(texts) != batch:
        raise ValueError(f"texts: expected {batch} texts (one per sequence), got {len(texts)}")
    mask = stats.mask
    n = mask.sum(-1)
    logprob = stats.logprob.double()
    cols: dict[str, torch.Tensor] = {"n_tokens": n, "loss": -_masked_mean(logprob, mask, n)}
    for k, col in zip(ks, lowest_k_mean(logprob, mask, ks)):
        cols[min_k_column(k)] = col
    pp, clipped = min_k_pp_scores(stats, sigma_floor)
    for k, col in zip(ks, lowest_k_mean(pp, mask, ks)):
        cols[min_k_pp_column(k)] = col
    cols["n_sigma_clipped"] = clipped.sum(-1)
    if texts is not None:
        lengths = torch.tensor([zlib_length(t) for t in texts], dtype=torch.float64)
        cols["zlib"] = cols["loss"] / lengths
    cols["entropy_mean"] = _masked_mean(stats.entropy, mask, n)
    cols["phi_mean"] = _masked_mean(stats.phi, mask, n)
    cols["top1_acc"] = _masked_mean((stats.rank == 0).double(), mask, n)
    cols["log_rank_mean"] = _masked_mean(torch.log1p(stats.rank.clamp(min=0).double()), mask, n)
    if stats.tempered is not None:
        for j, tau in enumerate(stats.tempered.temperatures):
            cols[tempered_column("loss", tau)] = -_masked_mean(stats.tempered.logprob[..., j].double(), mask, n)
            cols[tempered_column("entropy", tau)] = _masked_mean(stats.tempered.entropy[..., j].double(), mask, n)
    return {name: col.numpy() for name, col in cols.items()}
