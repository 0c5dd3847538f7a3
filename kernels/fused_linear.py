"""Triton kernel of `mia_fast.token_stats_from_hidden`: the statistics of ``hidden @ weight.T + bias``
without ever holding the ``(N, V)`` logits.

Grid ``(cdiv(N, BLOCK_N), SPLIT)``: a program owns BLOCK_N tokens and a contiguous range of the
vocabulary. It walks that range in BLOCK_V tiles; each ``(BLOCK_N, BLOCK_V)`` logits tile is
produced by ``tl.dot`` over BLOCK_D chunks of ``d`` (operands in the input dtype, fp32
accumulation; fp32 operands use ``input_precision="ieee"`` so that no TF32 rounding happens, as
in an fp32 matmul), the bias is added, and the tile is folded into one running state per token,
exactly as in `kernels.token_stats` (see its module docstring for the shifted-moment merge):

* the target logit ``z_y`` is computed first, per token, by one extra tile of the same
  ``tl.dot`` whose columns are ``weight[y_n]`` (+ ``bias[y_n]``), so that it equals bit for bit
  the value the tiles produce for column ``y`` (when BLOCK_N > BLOCK_V: an fp32 dot product per
  token instead); the rank counts against it;
* column ``y_n`` is excluded from the *other* state by index (set to ``-inf``), so that
  ``log1m_p`` comes from the sum over ``v != y`` and stays exact as ``p_y -> 1``;
* per tile and token: the tile max; where it exceeds the running max, the moments are rescaled
  (``delta = c_old - c_new``; ``delta = 0``, i.e. an exact no-op, for the other tokens) and the
  first index of the tile max is taken; then one exp per logit feeds ``s0, s1, s2``.

Each program writes its partial states to an ``(N, SPLIT)`` buffer (and split 0 writes
``z_y``); `kernels.token_stats.merge_partials` merges them in a fixed order and finishes every
field. Deterministic (no atomics, fixed reduction trees). Peak extra memory: ``N * SPLIT * 24``
bytes of partials plus ``4 N`` bytes for ``z_y`` -- independent of V.

Temperatures (optional): the tempered sums ``T0_j = sum 2^{u_j}``, ``T1_j = sum 2^{u_j} u_j`` with
``u_j = max(b_j (z - c), -192)``, ``b_j = beta_j log2(e)`` (derivation and merge rule in
`kernels.token_stats`) share the shift ``c`` of the base moments, so the same rescale moves
them (``a_j = 2^{b_j delta}``). The logits tile lives in the ``tl.dot`` accumulator layout, where
a row is spread over a few threads; a ``(BLOCK_N, BLOCK_V, T_PAD)`` expansion would need a
layout conversion of the whole tile, so the temperatures are unrolled here (``N_TEMPS`` is a
constexpr): per temperature one ``exp2`` per logit and the same row sums as ``s0``/``s1``, added
to column ``j`` of the ``(BLOCK_N, T_PAD)`` accumulators. Partials: ``(2, N, SPLIT, T_PAD)``
fp32, ``N * SPLIT * T_PAD * 8`` more bytes.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from .token_stats import (
    _CLAMP,
    _CLAMP2,
    _NO_INDEX,
    _allocate_outputs,
    _allocate_tempered,
    _check_block,
    _exp,
    _exp2,
    _rescale,
    _rescale_tempered,
    _safe_shift,
    _shift_delta,
    fast_exp_available,
    launch_context,
    merge_partials,
    read_status,
    num_sms,
    temperature_table,
)

__all__ = ["token_stats_from_hidden_triton", "default_fused_config"]


@triton.jit
def _fused_linear_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    t_ptr,
    zy_ptr,
    part_f_ptr,
    part_i_ptr,
    N,
    V,
    D,
    split_size,
    n_split,
    ignore_index,
    temps_ptr,
    part_t_ptr,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    FAST_EXP: tl.constexpr,
    ZY_DOT: tl.constexpr,
    N_TEMPS: tl.constexpr,
    T_PAD: tl.constexpr,
):
    """One program per (block of BLOCK_N tokens, vocabulary split); writes partial states.

    ``part_f`` (4, N, SPLIT) fp32 = (m, s0, s1, s2), ``part_i`` (2, N, SPLIT) int32 =
    (cnt, amax), ``zy`` (N,) fp32 written by split 0. With ``N_TEMPS > 0``: ``temps``
    (2, T_PAD) fp32 (row 0: ``beta_j log2(e)``) and ``part_t`` (2, N, SPLIT, T_PAD) = (T0, T1).
    """
    pid_n = tl.program_id(0)
    sp = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    y = tl.load(t_ptr + rows, mask=row_ok, other=ignore_index)
    scored = row_ok & (y != ignore_index) & (y >= 0) & (y < V)  # the merge kernel reports the others
    y_safe = tl.where(scored, y, 0)
    y32 = y_safe.to(tl.int32)
    dk = tl.arange(0, BLOCK_D)
    h_rows = h_ptr + rows.to(tl.int64)[:, None] * D  # (BLOCK_N, 1); 64-bit: N * d may exceed 2^31
    vv = tl.arange(0, BLOCK_V)

    # z_y first (the rank counts against it during the pass).
    if ZY_DOT:
        # With the instructions of the main tiles: a (BLOCK_N, BLOCK_V) tl.dot whose column j <
        # BLOCK_N holds weight[y of row j], then the bias, then the diagonal. Each output element
        # of tl.dot depends only on its row and column operands and the k order, so z_y equals
        # the value the tiles compute for column y bit for bit: exact ties with z_y (duplicated
        # unembedding rows) resolve as on materialised logits.
        ycol = tl.load(t_ptr + pid_n * BLOCK_N + vv, mask=(vv < BLOCK_N) & (pid_n * BLOCK_N + vv < N), other=ignore_index)
        ycol_ok = (vv < BLOCK_N) & (pid_n * BLOCK_N + vv < N) & (ycol != ignore_index) & (ycol >= 0) & (ycol < V)
        ycol_safe = tl.where(ycol_ok, ycol, 0)
        w_ycols = w_ptr + ycol_safe[None, :] * D  # (1, BLOCK_V); int64 targets: 64-bit offsets
        acc = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
        for k in range(0, D, BLOCK_D):
            kk = k + dk
            k_ok = kk < D
            h = tl.load(h_rows + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_ycols + kk[:, None], mask=k_ok[:, None] & ycol_ok[None, :], other=0.0)
            acc = tl.dot(h, w, acc, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            acc += tl.load(b_ptr + ycol_safe, mask=ycol_ok, other=0.0).to(tl.float32)[None, :]
        diagonal = tl.arange(0, BLOCK_N)[:, None] == vv[None, :]
        zy = tl.sum(tl.where(diagonal, acc, 0.0), axis=1)  # x + 0 + ... + 0 = x exactly
    else:
        # BLOCK_N > BLOCK_V: an fp32 dot product per row (16-bit products are exact in fp32;
        # only the summation order may differ from tl.dot's in the last bits).
        w_target = w_ptr + y_safe[:, None] * D  # int64 targets: 64-bit offsets
        zy = tl.zeros((BLOCK_N,), tl.float32)
        for k in range(0, D, BLOCK_D):
            kk = k + dk
            k_ok = kk < D
            h = tl.load(h_rows + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            wy = tl.load(w_target + kk[None, :], mask=scored[:, None] & k_ok[None, :], other=0.0)
            zy += tl.sum(h.to(tl.float32) * wy.to(tl.float32), axis=1)
        if HAS_BIAS:
            zy += tl.load(b_ptr + y_safe, mask=scored, other=0.0).to(tl.float32)
    if sp == 0:
        tl.store(zy_ptr + rows, zy, mask=row_ok)

    lo = sp * split_size
    hi = tl.minimum(lo + split_size, V)

    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    c = tl.zeros((BLOCK_N,), tl.float32)
    s0 = tl.zeros((BLOCK_N,), tl.float32)
    s1 = tl.zeros((BLOCK_N,), tl.float32)
    s2 = tl.zeros((BLOCK_N,), tl.float32)
    cnt = tl.zeros((BLOCK_N,), tl.int32)
    amax = tl.full((BLOCK_N,), _NO_INDEX, tl.int32)
    if N_TEMPS > 0:
        tcol = tl.arange(0, T_PAD)
        b2 = tl.load(temps_ptr + tcol)  # beta_j log2(e)
        t0 = tl.zeros((BLOCK_N, T_PAD), tl.float32)
        t1 = tl.zeros((BLOCK_N, T_PAD), tl.float32)

    for v0 in range(lo, hi, BLOCK_V):
        cols = v0 + vv
        col_ok = cols < hi
        w_cols = w_ptr + cols.to(tl.int64)[None, :] * D  # (1, BLOCK_V)
        acc = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
        for k in range(0, D, BLOCK_D):
            kk = k + dk
            k_ok = kk < D
            h = tl.load(h_rows + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_cols + kk[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)  # (BLOCK_D, BLOCK_V)
            acc = tl.dot(h, w, acc, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        # out-of-range columns and each token's target column leave the "other" state
        z = tl.where(col_ok[None, :] & (cols[None, :] != y32[:, None]), acc, float("-inf"))

        tile_max = tl.max(z, axis=1)
        moved = tile_max > m
        c_new = tl.where(moved, _safe_shift(tile_max), c)
        s0, s1, s2 = _rescale(m, c, c_new, s0, s1, s2)  # delta = 0 (a = 1, exact) where not moved
        if N_TEMPS > 0:
            t0, t1 = _rescale_tempered(_shift_delta(m, c, c_new)[:, None] * b2[None, :], t0, t1)
        first = tl.min(tl.where(z == tile_max[:, None], vv[None, :], _NO_INDEX), axis=1)
        amax = tl.where(moved, v0 + first, amax)  # strict '>': earlier tiles win ties
        m = tl.where(moved, tile_max, m)
        c = c_new
        # NaN-propagating clamp: a NaN logit poisons s0 (the bad-row signal), -inf adds 0.
        d = tl.maximum(z - c[:, None], _CLAMP, propagate_nan=tl.PropagateNan.ALL)
        e = _exp(d, FAST_EXP)
        ed = e * d
        s0 += tl.sum(e, axis=1)
        s1 += tl.sum(ed, axis=1)
        s2 += tl.sum(ed * d, axis=1)
        cnt += tl.sum((z > zy[:, None]).to(tl.int32), axis=1)
        if N_TEMPS > 0:
            zc = z - c[:, None]
            for j in tl.static_range(N_TEMPS):
                # -inf (masked columns) -> u = -192 -> 2^u = 0 exactly
                u = tl.maximum(zc * tl.load(temps_ptr + j), _CLAMP2)
                e_j = _exp2(u, FAST_EXP)
                col_j = tcol[None, :] == j
                t0 += tl.where(col_j, tl.sum(e_j, axis=1)[:, None], 0.0)
                t1 += tl.where(col_j, tl.sum(e_j * u, axis=1)[:, None], 0.0)

    plane = tl.cast(N, tl.int64) * n_split
    idx = rows.to(tl.int64) * n_split + sp
    tl.store(part_f_ptr + idx, m, mask=row_ok)
    tl.store(part_f_ptr + plane + idx, s0, mask=row_ok)
    tl.store(part_f_ptr + 2 * plane + idx, s1, mask=row_ok)
    tl.store(part_f_ptr + 3 * plane + idx, s2, mask=row_ok)
    tl.store(part_i_ptr + idx, cnt, mask=row_ok)
    tl.store(part_i_ptr + plane + idx, amax, mask=row_ok)
    if N_TEMPS > 0:
        idx_t = idx[:, None] * T_PAD + tcol[None, :]
        ok_t = row_ok[:, None] & (tcol < T_PAD)[None, :]
        tl.store(part_t_ptr + idx_t, t0, mask=ok_t)
        tl.store(part_t_ptr + plane * T_PAD + idx_t, t1, mask=ok_t)


def device_capability(device: torch.device) -> tuple[int, int]:
    """CUDA compute capability of ``device``; (9, 0) for CPU tensors (the interpreter)."""
    if device.type != "cuda":
        return (9, 0)
    return torch.cuda.get_device_capability(device)


def default_fused_config(dtype: torch.dtype, capability: tuple[int, int] = (9, 0)) -> dict[str, int]:
    """Tile sizes: tensor-core tiles for 16-bit operands, smaller tiles for the fp32 (IEEE,
    CUDA-core) path.

    The 16-bit tiles (128 tokens x 128 vocabulary) are those measured on an H200 (capability
    9.0, wgmma). Before 9.0 the accumulator of ``mma.sync`` lives in registers next to the
    statistics, and those tiles spill (up to 500 bytes per thread with temperatures, sm_80 and
    sm_89, Triton 3.6 and 3.9); 64 x 128 tiles compile without spills there
    (``python -m mia_fast.kernels.cross_compile --arch 80``). Neither is timed on such a GPU.
    """
    if dtype == torch.float32:
        return dict(block_n=64, block_v=64, block_d=32, num_warps=8, num_stages=2)
    if capability < (9, 0):
        return dict(block_n=64, block_v=128, block_d=64, num_warps=8, num_stages=3)
    return dict(block_n=128, block_v=128, block_d=64, num_warps=8, num_stages=3)


def _default_split(n_blocks: int, n_tiles: int, sms: int) -> int:
    """Vocabulary splits: at least four programs per SM, and among up to twice that many, the
    count whose last wave is fullest (one program per SM at a time: the 16-bit config uses about
    all registers of an SM)."""
    lo = max(1, min(n_tiles, triton.cdiv(4 * sms, n_blocks)))
    best, best_eff = lo, -1.0
    for s in range(lo, min(n_tiles, 2 * lo) + 1):
        s = triton.cdiv(n_tiles, triton.cdiv(n_tiles, s))  # the count left after even division
        total = n_blocks * s
        eff = total / (triton.cdiv(total, sms) * sms)
        if eff > best_eff + 1e-9:
            best, best_eff = s, eff
    return best


def token_stats_from_hidden_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: Optional[torch.Tensor],
    ignore_index: int,
    temperatures: Sequence[float] = (),
    *,
    block_n: Optional[int] = None,
    block_v: Optional[int] = None,
    block_d: Optional[int] = None,
    split: Optional[int] = None,
    num_warps: Optional[int] = None,
    num_stages: Optional[int] = None,
) -> tuple:
    """`TokenStats` fields of ``hidden @ weight.T + bias`` without materialising the logits.

    Parameters
    ----------
    hidden : Tensor, shape (N, d)
        float32, float16 or bfloat16, contiguous, on a CUDA device (or CPU under
        ``TRITON_INTERPRET=1``, where bfloat16 is not supported by the interpreter).
    weight : Tensor, shape (V, d)
        Same dtype and device, contiguous.
    targets : Tensor, shape (N,)
        int64, contiguous, each in ``[0, V)`` or ``ignore_index`` (IndexError otherwise, for the
        first one outside, found by the kernels).
    bias : Tensor, shape (V,), optional
        Same dtype and device.
    ignore_index : int
        Target value of tokens that are not scored (NaN / -1 outputs).
    temperatures : sequence of float, length T <= 8
        Temperatures ``tau_j > 0`` of the tempered fields, computed in the same pass; none by
        default.
    block_n, block_v, block_d : int, optional
        Tile sizes (powers of two >= 16); defaults from `default_fused_config`.
    split : int, optional
        Vocabulary splits (programs per token block); by default at least four programs per SM,
        chosen to fill the last wave.
    num_warps, num_stages : int, optional
        Launch options; defaults from `default_fused_config`.

    Returns
    -------
    tuple
        ``(logprob, lse, entropy, var_logp, max_logprob, argmax, log1m_p, margin, rank,
        bad_row)`` as in `kernels.token_stats.token_stats_triton`; with temperatures
        ``(..., rank, logprob_t, entropy_t, max_logprob_t, bad_row)``, the three tempered fields
        float32 (N, T), row-major.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden, weight: expected shapes (N, d) and (V, d), got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    n, dim = hidden.shape
    vocab = weight.shape[0]
    if not hidden.is_contiguous() or not weight.is_contiguous():
        raise ValueError("hidden, weight: expected contiguous tensors")
    if weight.dtype != hidden.dtype or (bias is not None and bias.dtype != hidden.dtype):
        raise ValueError(f"weight, bias: expected dtype {hidden.dtype} (that of hidden)")
    if bias is not None and (bias.shape != (vocab,) or not bias.is_contiguous()):
        raise ValueError(f"bias: expected a contiguous tensor of shape ({vocab},), got {tuple(bias.shape)}")
    if targets.shape != (n,) or targets.dtype != torch.int64 or not targets.is_contiguous():
        raise ValueError(
            f"targets: expected a contiguous int64 tensor of shape ({n},), got {targets.dtype} {tuple(targets.shape)}"
        )
    temps = temperature_table(temperatures, hidden.device)
    outs = _allocate_outputs(n, hidden.device)
    outs_t = _allocate_tempered(n, temps.n_temps, hidden.device)
    if n == 0:
        return (*outs[:-1], *outs_t, -1)
    if vocab == 0 or dim == 0:
        raise ValueError(f"weight: expected a non-empty (V, d) matrix, got shape {tuple(weight.shape)}")

    cfg = default_fused_config(hidden.dtype, device_capability(hidden.device))
    block_n = block_n or min(cfg["block_n"], max(16, triton.next_power_of_2(n)))
    block_v = block_v or min(cfg["block_v"], max(16, triton.next_power_of_2(vocab)))
    block_d = block_d or min(cfg["block_d"], max(16, triton.next_power_of_2(dim)))
    for name, value in (("block_n", block_n), ("block_v", block_v), ("block_d", block_d)):
        _check_block(name, value, 16)

    n_blocks = triton.cdiv(n, block_n)
    n_tiles = triton.cdiv(vocab, block_v)
    if split is None:
        split = _default_split(n_blocks, n_tiles, num_sms(hidden.device))
    if split < 1:
        raise ValueError(f"split: expected a positive integer, got {split}")
    split = min(split, n_tiles, 1024)
    split_size = triton.cdiv(n_tiles, split) * block_v
    split = triton.cdiv(vocab, split_size)

    device = hidden.device
    part_f = torch.empty((4, n, split), dtype=torch.float32, device=device)
    part_i = torch.empty((2, n, split), dtype=torch.int32, device=device)
    zy = torch.empty(n, dtype=torch.float32, device=device)
    part_t = None
    if temps.n_temps:
        part_t = torch.empty((2, n, split, temps.t_pad), dtype=torch.float32, device=device)
    with launch_context(device):
        _fused_linear_kernel[(n_blocks, split)](
            hidden,
            weight,
            bias if bias is not None else hidden,  # unused when HAS_BIAS is False
            targets,
            zy,
            part_f,
            part_i,
            n,
            vocab,
            dim,
            split_size,
            split,
            ignore_index,
            temps.table if temps.n_temps else zy,  # unused without temperatures
            part_t if part_t is not None else zy,
            HAS_BIAS=bias is not None,
            BLOCK_N=block_n,
            BLOCK_V=block_v,
            BLOCK_D=block_d,
            DOT_PRECISION="ieee" if hidden.dtype == torch.float32 else "tf32",
            FAST_EXP=fast_exp_available(device),
            ZY_DOT=block_n <= block_v,
            N_TEMPS=temps.n_temps,
            T_PAD=temps.t_pad,
            num_warps=num_warps or cfg["num_warps"],
            num_stages=num_stages or cfg["num_stages"],
        )
        merge_partials(
            part_f, part_i, split, targets, ignore_index, vocab, zy, 1, False, outs, temps, part_t, outs_t
        )
    return (*outs[:-1], *outs_t, read_status(outs[-1], targets, vocab, ignore_index))
