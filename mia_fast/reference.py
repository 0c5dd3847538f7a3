"""Readable torch implementation of every `TokenStats` field: the specification.

This module is the ground truth the fused kernels are tested against (run in float64), and the
``torch`` backend (run in float32) for devices and dtypes no fused kernel covers. It favours
clarity over speed: it materialises several ``(..., V)`` temporaries.

Conventions shared with every backend
-------------------------------------
* Only rows whose target is not ``ignore_index`` are read; masked rows hold NaN in float
  fields and -1 in integer fields.
* A scored row that contains NaN or +inf raises ``ValueError`` naming the first bad row
  (flat row index over the leading dimensions). ``-inf`` logits are valid (masked vocabulary);
  a row whose logits are all ``-inf`` is not a distribution and raises too.
"""

from __future__ import annotations

from typing import Optional

import torch

from .stats import TemperedStats, TokenStats, check_temperatures

__all__ = ["token_stats_reference", "token_stats_from_hidden_reference", "bad_row_error"]


def bad_row_error(row: int, shape: tuple[int, ...]) -> ValueError:
    """The error every backend raises for a scored row with NaN/+inf or all -inf logits."""
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(row), shape)) if shape else ()
    return ValueError(
        f"logits: row {row} (index {index} of the leading shape {tuple(shape)}) contains NaN or "
        f"+inf, or has every entry -inf; expected finite logits (-inf allowed) in every scored row"
    )


def target_range_error(value: int, position: int, vocab: int, ignore_index: int) -> IndexError:
    """The error every backend raises for the first target outside [0, V) that is not ignore_index."""
    return IndexError(
        f"targets: expected values in [0, {vocab}) or ignore_index={ignore_index}, "
        f"got {value} at flat position {position}"
    )


def token_stats_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    dtype: torch.dtype = torch.float64,
    temperatures: tuple[float, ...] = (),
) -> TokenStats:
    """Compute `TokenStats` with plain torch operations in ``dtype``.

    Parameters
    ----------
    logits : Tensor, shape (..., V)
        Unnormalised scores; any float dtype, any device.
    targets : Tensor, shape (...)
        Integer targets in ``[0, V)`` or equal to ``ignore_index``.
    ignore_index : int
        Target value marking positions that are not scored.
    dtype : torch.dtype
        Compute dtype (float64 for the ground truth). Float outputs are returned in float32
        unless ``dtype`` is float64, in which case they stay float64.
    temperatures : tuple of float
        Temperatures tau of the `TemperedStats` (statistics of ``softmax(z / tau)``); none by default.

    Returns
    -------
    TokenStats
        Each field of shape ``targets.shape``; ``tempered`` fields of shape ``targets.shape + (T,)``.
    """
    temperatures = check_temperatures(temperatures)
    lead = tuple(targets.shape)
    V = logits.shape[-1]
    z = logits.reshape(-1, V).to(dtype)
    t = targets.reshape(-1).long()
    mask = t != ignore_index
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    rows = mask.nonzero().squeeze(-1)
    zr = z[rows]
    bad = torch.isnan(zr).any(-1) | (zr == float("inf")).any(-1) | (zr == float("-inf")).all(-1)
    if bool(bad.any()):
        raise bad_row_error(int(rows[bad.nonzero()[0, 0]]), lead)
    y = t[rows].unsqueeze(-1)

    # Every log-probability is formed from differences to the row's max, log p_v = (z_v - zmax) -
    # log sum_u e^{z_u - zmax}, never as z_v - lse: for |z| large against log V (1e9 in float32,
    # 1e17 in float64) lse = zmax + log S rounds to zmax and log S would be lost (k equal maxima
    # would get p = 1 each). z - zmax overflows (to -inf) only where e^{z - zmax} is 0 anyway.
    zmax = zr.amax(-1)
    zs = zr - zmax.unsqueeze(-1)  # <= 0; the max entries are exactly 0
    log_s = torch.logsumexp(zs, dim=-1)  # in [0, log V]
    lse = zmax + log_s
    logp = zs - log_s.unsqueeze(-1)
    p = logp.exp()
    zsy = zs.gather(-1, y).squeeze(-1)
    zy = zr.gather(-1, y).squeeze(-1)
    logprob = zsy - log_s
    # 0 * log 0 = 0: masked-vocabulary entries (z = -inf) contribute nothing.
    plogp = torch.where(p > 0, p * logp, torch.zeros_like(p))
    entropy = -plogp.sum(-1)
    centred = torch.where(p > 0, p * (logp + entropy.unsqueeze(-1)) ** 2, torch.zeros_like(p))
    var_logp = centred.sum(-1)
    max_logprob = -log_s
    argmax = zr.argmax(-1)  # first index of the maximum
    z_other = zr.scatter(-1, y, float("-inf"))
    log1m_p = torch.logsumexp(zs.scatter(-1, y, float("-inf")), dim=-1) - log_s
    margin = zy - z_other.amax(-1)
    rank = (zr > zy.unsqueeze(-1)).sum(-1)

    def tempered(tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        zt = zs / tau  # (z - zmax) / tau: max(z / tau) is zmax / tau, and no z / tau can overflow
        lse_t = torch.logsumexp(zt, dim=-1)
        logp_t = zt - lse_t.unsqueeze(-1)
        p_t = logp_t.exp()
        ent_t = -torch.where(p_t > 0, p_t * logp_t, torch.zeros_like(p_t)).sum(-1)
        # (z_y - zmax) / tau overflows for tau > 1 where the result does not (-6e38 / 2): scale first
        dy = zy / tau - zmax / tau if tau > 1 else zsy / tau
        return dy - lse_t, ent_t, -lse_t

    def scatter_float(values: torch.Tensor) -> torch.Tensor:  # (n,) or (n, T) -> lead (+ (T,))
        full = torch.full((t.numel(), *values.shape[1:]), float("nan"), dtype=out_dtype, device=z.device)
        full[rows] = values.to(out_dtype)
        return full.reshape(*lead, *values.shape[1:])

    tempered_stats = None
    if temperatures:
        cols = [tempered(tau) for tau in temperatures]
        tempered_stats = TemperedStats(
            temperatures, *(scatter_float(torch.stack([c[k] for c in cols], dim=-1)) for k in range(3))
        )

    def scatter_int(values: torch.Tensor) -> torch.Tensor:
        full = torch.full((t.numel(),), -1, dtype=torch.int64, device=z.device)
        full[rows] = values.to(torch.int64)
        return full.reshape(lead)

    return TokenStats(
        logprob=scatter_float(logprob),
        lse=scatter_float(lse),
        entropy=scatter_float(entropy),
        var_logp=scatter_float(var_logp),
        max_logprob=scatter_float(max_logprob),
        argmax=scatter_int(argmax),
        log1m_p=scatter_float(log1m_p),
        margin=scatter_float(margin),
        rank=scatter_int(rank),
        mask=mask.reshape(lead),
        tempered=tempered_stats,
    )


def token_stats_from_hidden_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    dtype: torch.dtype = torch.float64,
    temperatures: tuple[float, ...] = (),
) -> TokenStats:
    """`token_stats_reference` of ``hidden @ weight.T + bias`` computed in ``dtype``.

    Parameters
    ----------
    hidden : Tensor, shape (..., d)
    weight : Tensor, shape (V, d)
    targets : Tensor, shape (...)
    bias : Tensor, shape (V,), optional
    """
    logits = hidden.to(dtype) @ weight.to(dtype).T
    if bias is not None:
        logits = logits + bias.to(dtype)
    return token_stats_reference(logits, targets, ignore_index=ignore_index, dtype=dtype, temperatures=temperatures)
