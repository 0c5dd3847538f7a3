"""Triton kernel of `mia_fast.token_stats`: every softmax statistic in one pass over the vocabulary.

One program reads one row of logits (or a contiguous slice of it, see *split* below) exactly
once, tile by tile, upcasts to fp32 and folds each tile into a small running state. Only one
``exp`` is evaluated per logit.

Running state over the *other* entries ``v != y`` (``y`` the target)
---------------------------------------------------------------------
``m``         running maximum of the other logits (``-inf`` while none has been seen)
``c``         the shift of the moments: ``c = m`` when ``m`` is finite, else ``0`` (a "safe"
              max, so that a tile or a row of ``-inf`` never computes ``-inf - (-inf)``)
``s0``        ``sum_v e^{z_v - c}``
``s1``        ``sum_v e^{z_v - c} (z_v - c)``
``s2``        ``sum_v e^{z_v - c} (z_v - c)^2``
``cnt``       ``#{v != y : z_v > z_y}`` (the rank; ``z_y`` is loaded first, one scalar load)
``amax``      first index of ``m`` among the other entries

Moving the shift (the merge rule)
---------------------------------
When the maximum moves from ``c_old`` to ``c_new`` write ``delta = c_old - c_new`` (<= 0) and
``a = e^delta``. Since ``z - c_new = (z - c_old) + delta`` and ``e^{z - c_new} = a e^{z - c_old}``::

    s0' = sum a e^{z-c_old}                          = a s0
    s1' = sum a e^{z-c_old} ((z-c_old) + delta)      = a (s1 + delta s0)
    s2' = sum a e^{z-c_old} ((z-c_old) + delta)^2    = a (s2 + 2 delta s1 + delta^2 s0)

Two states shifted to the same ``c`` simply add, so the same rule merges vocabulary tiles,
vocabulary splits (the second kernel) and, at the end, the target element itself. A state that
has seen nothing (``m = -inf``, all sums 0) is rescaled with ``delta = 0``: ``e^{0 - c_new}``
could overflow (``c_new = -1e4``) and ``inf * 0`` would be NaN.

Finishing (target merged in, ``M = max(m, z_y)``, ``C`` its safe shift, sums ``S_k`` over all v)
-----------------------------------------------------------------------------------------------
``lse = C + log S0``; ``E_p[z] - C = S1 / S0``; ``entropy = lse - E_p[z] = log S0 - S1/S0``;
``var_logp = Var_p[z] = S2/S0 - (S1/S0)^2`` (log p = z - lse, a constant shift of z);
``max_logprob = M - lse``; ``log1m_p = (c + log s0) - lse`` from the sum over ``v != y`` only,
so it stays exact (about ``-40 + log(V-1)``) when the target is ahead by 40;
``margin = z_y - m``; ``rank = cnt``; ``argmax = y`` if ``z_y > m``, ``min(y, amax)`` on a tie.

Large logits (every finite input)
---------------------------------
Logits of any finite size (1e9, +-3e38) must give the statistics of the float64 reference.
Three places would not, and are written so that they do:

* the rescale: for ``delta = c_old - c_new`` below about -1.8e19 (or ``-inf``, when the
  difference of two fp32 logits overflows: ``-3e38 - 3e38``), ``delta^2 s0`` overflows and
  ``a = e^delta = 0`` makes ``0 * inf = NaN`` of the moments. Since ``e^delta`` (and ``delta^k
  e^delta``) is 0 in fp32 for every ``delta <= -128``, ``delta`` is clamped at -128 first, with
  NaN kept: ``a = 0`` times finite sums gives exactly the 0 the exact rule gives in fp32. The
  tempered rescale clamps ``b_j delta`` at -192 likewise (``2^-192 = 0``); it cannot clamp
  ``delta`` itself, since a small ``beta_j`` would bring ``b_j (-128)`` back into range;
* the element term: ``z - c`` overflows to ``-inf`` only where ``e^{z - c}`` is 0; the clamp at
  -128 below turns it into an exact 0 term;
* the finish: ``log p = (z - C) - ln S0``, never ``z - lse``: ``lse = C + ln S0`` rounds to ``C``
  once ``|C|`` is large against ``ln S0`` (from about 1e8 in fp32), which would give ``log p = 0``
  to each of k equal maxima; likewise ``max_logprob`` and ``log1m_p``.

The bounded fields stay in range (``entropy <= ln V``, ``max_logprob >= -ln V``); ``logprob``,
``log1m_p`` and ``margin``, differences of logits, return the fp32 rounding of the exact value:
``-inf`` below -3.4e38, as the torch backend does.

Bad rows
--------
No extra pass: the shifted difference is clamped with a NaN-propagating ``max(z - c, -128)``
(``e^{-128}`` is 0 in fp32, so the clamp changes no finite result and keeps ``0 * -inf`` out of
``s1``/``s2``), hence a NaN logit turns ``s0`` into NaN; a ``+inf`` logit makes the maximum
``+inf``; a row of ``-inf`` leaves ``M = -inf``. A target outside ``[0, V)`` (not
``ignore_index``) is found where the kernel reads it; its row is not read. Each row with a
problem folds it into one int64 status word per call with ``atomic_max`` (`_report`): the
host reads that word once (the call's only device sync) and raises for the first bad target,
else for the first bad row, as the CPU backends do. No torch reduction, no extra launch.

Temperatures (optional, same pass)
---------------------------------
For a few temperatures ``tau_j`` (inverse temperatures ``beta_j = 1 / tau_j``, at most 8) the
statistics of ``p_tau = softmax(beta_j z)`` come from two more running sums per temperature,
shifted by the *same* ``c`` (``beta_j > 0``, so ``beta_j z`` has its maximum where ``z`` has)::

    T0_j = sum_v 2^{u_jv},   T1_j = sum_v 2^{u_jv} u_jv,   u_jv = b_j (z_v - c),  b_j = beta_j log2(e)

i.e. ``T0_j = sum_v e^{beta_j (z_v - c)}`` and ``T1_j = beta_j sum_v e^{beta_j (z_v - c)} (z_v - c) /
ln 2``, kept in base-2 units so that each element costs one multiply and one ``exp2`` per
temperature (``b_j`` is computed once, on the host). Moving the shift by ``delta = c_old - c_new``
multiplies every term by ``a_j = 2^{b_j delta}`` and adds ``b_j delta`` to every ``u``::

    T0_j' = a_j T0_j,      T1_j' = a_j (T1_j + b_j delta T0_j)

(the merge of the base moments with ``b_j delta`` in place of ``delta``), so tiles, splits and
the target merge exactly as above. Finishing with ``M = max(m, z_y)`` and its safe shift ``C``::

    log p_tau(v)     = beta_j (z_v - C) - ln T0_j
    logprob_t[j]     = beta_j (z_y - C) - ln T0_j
    max_logprob_t[j] = beta_j (M - C) - ln T0_j                 (clamped <= 0)
    entropy_t[j]     = -sum_v p_tau(v) log p_tau(v) = ln T0_j - ln 2 * T1_j / T0_j   (clamped >= 0)

The clamp is applied to ``u`` itself, ``max(u, -192)``: ``2^-192`` is 0 in fp32 (the smallest
denormal is ``2^-149``), so a ``-inf`` logit adds exactly 0 to both sums and ``0 * -inf`` never
happens, whatever ``beta_j`` (a clamp of ``z - c`` at -128 would not vanish once multiplied by a
small ``beta_j``). The temperatures are one vectorised axis of ``T_PAD`` (the next power of two)
columns: a tile is expanded to ``(slots, ALIGN, T_PAD)`` and reduced over ``ALIGN`` inside each
thread into per-slot ``(slots, T_PAD)`` sums, just as the base moments. Without temperatures the
constexpr ``HAS_TEMPS`` removes all of it at compile time.

Split
-----
With few rows (fewer than two per SM) the vocabulary is split over ``SPLIT`` programs per row
(grid ``(N, SPLIT)``). Each writes its partial state; a second kernel merges the partials of a
row in a fixed order (a fixed-shape tree reduction), so results are bitwise reproducible. No
atomics anywhere.

Loop layout (performance)
-------------------------
A tile is loaded as a ``(BLOCK_V / ALIGN, ALIGN)`` block whose rows are 16-byte vectors, one per
thread ("slots"). The moments and the count are accumulated per slot inside each thread, so the
only cross-thread reduction per tile is the tile maximum; the slot sums are reduced once, at the
end. The moments of every slot share the row's scalar shift ``c``, so when the maximum moves the
slot vectors are rescaled with the same rule (a uniform, rare branch); the first index of the
new maximum is taken only then. The loads of the next two tiles are issued before the current
tile is reduced (software pipelining by hand). On CUDA the exponential is one
``ex2.approx.ftz`` instruction (see `_exp`); the rank is only counted in tiles whose maximum
exceeds ``z_y``.

Loop variant ``SLOT_SHIFT`` (``slot_shift=True``, ``MIA_FAST_TRITON_SLOT_SHIFT=1``): each slot
keeps its own maximum ``m_s`` and shift ``c_s``, so the loop has no cross-thread reduction and no
barrier at all. Every tile rescales every slot by the merge rule, branch-free (one exp per slot
and tile; ``delta = 0`` when the slot's maximum did not move) and records the tile where the
slot's maximum was first reached. After the loop the slots merge at the row's maximum, and the
first index of that maximum comes from reading again, from L2, the vectors of the slots that
hold it. Compiled for sm_90 (``python -m mia_fast.kernels.cross_compile``,
``benchmarks/results/cross_compile.md``) the 16-bit tile loop is about a fifth shorter
(228 instead of 292 SASS instructions per 8 logits with Triton 3.6, 209 instead of 261 with 3.9)
and needs 47 registers instead of 64 (56), and 16 logits per thread fit in 78 registers instead
of 128. Which variant is faster is for a GPU to measure
(``benchmarks/triton_probe.py --slot-shift 0,1``); the default stays the variant measured there.

Alignment
---------
Tiles are aligned to 16 bytes in *memory* (not to column 0 of the row): with an odd vocabulary
(GPT-2's 50257) rows start at unaligned addresses, and aligned tiles keep the loads vectorised.
The first and last tile of a row (and the one holding the target) take the masked path, which
also loads whole 16-byte vectors when the base pointer is 16-byte aligned (the columns outside
the row are then set to ``-inf`` after the load).

Tuning
------
``default_config`` gives ``(BLOCK_V, num_warps)`` per dtype; the environment variable
``MIA_FAST_TRITON_TOKEN_STATS="BLOCK_V,NUM_WARPS"`` overrides it (for measurements).
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import os
import warnings
from typing import NamedTuple, Optional, Sequence

import torch
import triton
import triton.language as tl

from mia_fast.reference import target_range_error
from mia_fast.stats import MAX_TEMPERATURES

__all__ = [
    "token_stats_triton",
    "default_config",
    "CONFIG_ENV",
    "SLOT_SHIFT_ENV",
    "num_sms",
    "fast_exp_available",
    "launch_context",
    "merge_partials",
    "read_status",
    "MAX_TEMPERATURES",
    "TemperatureTable",
    "temperature_table",
]

# Largest int32: "no index yet" for the argmax (min-reductions over indices ignore it).
_NO_INDEX = tl.constexpr(2147483647)
# e^{-128} underflows to 0 in fp32: clamping z - c at -128 changes no finite contribution.
_CLAMP = tl.constexpr(-128.0)
# The same clamp for the base-2 exponents of the tempered sums: 2^{-192} is 0 in fp32.
_CLAMP2 = tl.constexpr(-192.0)
_LN2 = tl.constexpr(0.6931471805599453)
_LOG2E = 1.4426950408889634


# ------------------------------------------------------------------------------------------------
# shared device helpers (also used by kernels/fused_linear.py)


@triton.jit
def _rescale(m_old, c_old, c_new, s0, s1, s2):
    """Shift moments from ``c_old`` to ``c_new`` (see the module docstring for the derivation).

    ``delta`` is forced to 0 for an empty state (``m_old = -inf``): its sums are 0 and must stay
    0, whereas ``e^{0 - c_new}`` may overflow. It is clamped (NaN kept) at -128 (see "Large
    logits" in the module docstring): ``a = e^delta`` is then 0 and so is every moment, where
    an unclamped ``delta`` of -1e20 or ``-inf`` would make ``0 * inf = NaN`` of ``delta^2 s0``.
    """
    delta = tl.where(m_old == float("-inf"), 0.0, c_old - c_new)
    delta = tl.maximum(delta, _CLAMP, propagate_nan=tl.PropagateNan.ALL)
    a = tl.exp(delta)
    n0 = a * s0
    n1 = a * (s1 + delta * s0)
    n2 = a * (s2 + delta * (2.0 * s1 + delta * s0))
    return n0, n1, n2


@triton.jit
def _exp(x, FAST_EXP: tl.constexpr):
    """``e^x``. With ``FAST_EXP`` (CUDA only): one ``ex2.approx.ftz`` instruction.

    ``tl.exp`` lowers to ``ex2.approx.f32`` which ptxas wraps in denormal handling (five
    instructions); the flush-to-zero form is one MUFU op, and only results below 2^-126
    (``x < -87.3``) differ: they become 0, far below fp32 resolution of the sums. The
    interpreter cannot run inline PTX, hence the flag.
    """
    if FAST_EXP:
        return tl.inline_asm_elementwise(
            "ex2.approx.ftz.f32 $0, $1;",
            "=f,f",
            [x * 1.4426950408889634],
            dtype=tl.float32,
            is_pure=True,
            pack=1,
        )
    else:
        return tl.exp(x)


@triton.jit
def _safe_shift(m):
    """The moments' shift: ``m`` when finite, 0 when ``m = -inf`` (nothing seen yet)."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _exp2(x, FAST_EXP: tl.constexpr):
    """``2^x``; with ``FAST_EXP`` one ``ex2.approx.ftz`` instruction (see `_exp`)."""
    if FAST_EXP:
        return tl.inline_asm_elementwise(
            "ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return tl.exp2(x)


@triton.jit
def _shift_delta(m_old, c_old, c_new):
    """``delta = c_old - c_new`` of a shift move; 0 for an empty state (``m_old = -inf``)."""
    return tl.where(m_old == float("-inf"), 0.0, c_old - c_new)


@triton.jit
def _rescale_tempered(du, t0, t1):
    """Shift the tempered sums by ``du = b_j delta`` (base-2 units; see the module docstring).

    ``du`` is clamped (NaN kept) at -192, where ``2^du`` is 0 in fp32 (see "Large logits").
    """
    du = tl.maximum(du, _CLAMP2, propagate_nan=tl.PropagateNan.ALL)
    a = tl.exp2(du)
    return a * t0, a * (t1 + du * t0)


@triton.jit
def _finalize_tempered(m, c, t0, t1, zy, b2, beta, scored):
    """Merge the target into the tempered sums of the other entries; return the three fields.

    Broadcasts elementwise: ``m, c, zy, scored`` of the row(s) with a trailing axis of size 1
    and ``t0, t1`` (rows..., T_PAD) with ``b2 = beta log2(e)`` and ``beta`` (1..., T_PAD).
    Returns ``(logprob_t, entropy_t, max_logprob_t)``, NaN where ``scored`` is false.
    """
    big_m = tl.maximum(m, zy)
    big_c = _safe_shift(big_m)
    t0, t1 = _rescale_tempered(_shift_delta(m, c, big_c) * b2, t0, t1)
    uy = tl.maximum((zy - big_c) * b2, _CLAMP2)
    ey = tl.exp2(uy)
    t0 = t0 + ey
    t1 = t1 + ey * uy
    log_t0 = tl.log(t0)
    # beta (z_y - C): for beta < 1 the difference may overflow where the result does not
    # (-6e38 / 2), so the terms are scaled first; for beta >= 1 the difference is scaled.
    logprob = tl.where(beta < 1.0, zy * beta - big_c * beta, (zy - big_c) * beta) - log_t0
    entropy = tl.maximum(log_t0 - _LN2 * (t1 / t0), 0.0)
    max_logprob = tl.minimum((big_m - big_c) * beta - log_t0, 0.0)
    nan = float("nan")
    return tl.where(scored, logprob, nan), tl.where(scored, entropy, nan), tl.where(scored, max_logprob, nan)


@triton.jit
def _finalize(m, c, s0, s1, s2, cnt, amax, zy, y, scored):
    """Merge the target element into the state of the other entries; return every field.

    Works elementwise on scalars or vectors of rows. Returns ``(logprob, lse, entropy,
    var_logp, max_logprob, argmax, log1m_p, margin, rank, flag)`` with NaN / -1 where
    ``scored`` is false and ``flag`` = 1 for a scored row with NaN/+inf or only -inf.
    """
    big_m = tl.maximum(m, zy)
    big_c = _safe_shift(big_m)
    t0, t1, t2 = _rescale(m, c, big_c, s0, s1, s2)
    dy = tl.maximum(zy - big_c, _CLAMP, propagate_nan=tl.PropagateNan.ALL)
    ey = tl.exp(dy)
    t0 = t0 + ey
    t1 = t1 + ey * dy
    t2 = t2 + ey * dy * dy
    log_t0 = tl.log(t0)
    lse = big_c + log_t0
    mean = t1 / t0  # E_p[z] - C
    entropy = log_t0 - mean
    var = tl.maximum(t2 / t0 - mean * mean, 0.0)
    # log p from differences to C, never z - lse (lse rounds to C for large C: "Large logits")
    logprob = (zy - big_c) - log_t0
    max_logprob = (big_m - big_c) - log_t0
    log1m_p = ((c - big_c) + tl.log(s0)) - log_t0  # log sum_{v != y} p_v: exact as p_y -> 1
    margin = zy - m
    amax64 = amax.to(tl.int64)
    argmax = tl.where(zy > m, y, tl.where(zy == m, tl.minimum(y, amax64), amax64))
    bad = (t0 != t0) | (big_m == float("inf")) | (big_m == float("-inf")) | (zy != zy)
    nan = float("nan")
    return (
        tl.where(scored, logprob, nan),
        tl.where(scored, lse, nan),
        tl.where(scored, entropy, nan),
        tl.where(scored, var, nan),
        tl.where(scored, max_logprob, nan),
        tl.where(scored, argmax, -1),
        tl.where(scored, log1m_p, nan),
        tl.where(scored, margin, nan),
        tl.where(scored, cnt.to(tl.int64), -1),
        (scored & bad).to(tl.int32),
    )


@triton.jit
def _store_outputs(
    idx,
    mask,
    out_logprob,
    out_lse,
    out_entropy,
    out_var,
    out_max_logprob,
    out_argmax,
    out_log1m_p,
    out_margin,
    out_rank,
    status_ptr,
    bad_target,
    logprob,
    lse,
    entropy,
    var,
    max_logprob,
    argmax,
    log1m_p,
    margin,
    rank,
    flag,
):
    """Store the nine fields of `_finalize` at rows ``idx`` and report the rows' problems."""
    tl.store(out_logprob + idx, logprob, mask=mask)
    tl.store(out_lse + idx, lse, mask=mask)
    tl.store(out_entropy + idx, entropy, mask=mask)
    tl.store(out_var + idx, var, mask=mask)
    tl.store(out_max_logprob + idx, max_logprob, mask=mask)
    tl.store(out_argmax + idx, argmax, mask=mask)
    tl.store(out_log1m_p + idx, log1m_p, mask=mask)
    tl.store(out_margin + idx, margin, mask=mask)
    tl.store(out_rank + idx, rank, mask=mask)
    _report(status_ptr, idx, flag != 0, bad_target)


@triton.jit
def _report(status_ptr, rows, bad_row, bad_target):
    """Fold the problems of ``rows`` (a scalar or a vector) into the call's status word (int64,
    zero-initialised): a problem is ``kind * 2^32 + (2^32 - 1 - row)``, kind 2 for a target
    outside ``[0, V)``, 1 for a bad row (NaN/+inf or only -inf). ``atomic_max`` keeps the first
    row of the most serious kind whatever order the programs run in, so the result is
    deterministic (`read_status` decodes it); rows without a problem issue no atomic."""
    low = 4294967295 - rows.to(tl.int64)
    key = tl.where(bad_target, 8589934592 + low, tl.where(bad_row, 4294967296 + low, 0))
    tl.atomic_max(status_ptr + 0 * rows, key, mask=key > 0)


@triton.jit
def _load_tile(tile_ptr0, k, col0, lo, hi, edge, BLOCK_V: tl.constexpr, ALIGN: tl.constexpr, VEC_MASK: tl.constexpr):
    """Load one tile as a (BLOCK_V // ALIGN, ALIGN) block in the input dtype.

    Each row of the block is one 16-byte vector, held whole by one thread: reductions along
    axis 1 stay inside a thread. Interior tiles take an unmasked load (vectorised thanks to the
    aligned tile start). An edge tile loads every vector that overlaps ``[lo, hi)``; with
    ``VEC_MASK`` (16-byte aligned base pointer) whole vectors, so the load stays vectorised and
    reads at most the rest of a 16-byte chunk that holds valid data (never another page), the
    caller masks the extra columns; otherwise element by element. Not loaded: ``-inf``. The
    logits are streamed once: evict them first from the cache.
    """
    offs = tl.arange(0, BLOCK_V // ALIGN)[:, None] * ALIGN + tl.arange(0, ALIGN)[None, :]
    ptrs = tile_ptr0 + k + offs
    if edge:
        if VEC_MASK:
            vec0 = col0 + tl.arange(0, BLOCK_V // ALIGN) * ALIGN  # first column of each vector
            vec_ok = (vec0 + ALIGN > lo) & (vec0 < hi)
            raw = tl.load(ptrs, mask=vec_ok[:, None], other=float("-inf"), eviction_policy="evict_first")
        else:
            cols = col0 + offs
            raw = tl.load(ptrs, mask=(cols >= lo) & (cols < hi), other=float("-inf"), eviction_policy="evict_first")
    else:
        raw = tl.load(ptrs, eviction_policy="evict_first")
    return raw


# ------------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _token_stats_kernel(
    logits_ptr,
    targets_ptr,
    stride_row,
    V,
    split_size,
    n_rows,
    n_split,
    ignore_index,
    out_logprob,
    out_lse,
    out_entropy,
    out_var,
    out_max_logprob,
    out_argmax,
    out_log1m_p,
    out_margin,
    out_rank,
    status_ptr,
    part_f_ptr,
    part_i_ptr,
    temps_ptr,
    n_temps,
    out_logprob_t,
    out_entropy_t,
    out_max_logprob_t,
    part_t_ptr,
    BLOCK_V: tl.constexpr,
    ALIGN: tl.constexpr,
    FINALIZE: tl.constexpr,
    FAST_EXP: tl.constexpr,
    VEC_MASK: tl.constexpr,
    HAS_TEMPS: tl.constexpr,
    T_PAD: tl.constexpr,
    SLOT_SHIFT: tl.constexpr,
):
    """One program per (row, vocabulary split).

    ``FINALIZE`` (single split): merge the target and write the outputs. Otherwise write the
    partial state to ``part_f`` (4, N, SPLIT) fp32 = (m, s0, s1, s2) and ``part_i`` (2, N, SPLIT)
    int32 = (cnt, amax), merged by `_merge_kernel`.

    ``HAS_TEMPS``: ``temps`` (2, T_PAD) fp32 holds ``beta log2(e)`` and ``beta`` (padded with
    beta = 1); the tempered fields go to ``out_*_t`` (N, n_temps), or the tempered sums to
    ``part_t`` (2, N, SPLIT, T_PAD) fp32 = (T0, T1).
    """
    row = tl.program_id(0)
    sp = tl.program_id(1)
    y = tl.load(targets_ptr + row)
    in_range = (y >= 0) & (y < V)
    bad_target = (y != ignore_index) & ~in_range  # reported below; its row is not read
    scored = (y != ignore_index) & in_range
    y_safe = tl.where(scored, y, 0)
    row_start = row.to(tl.int64) * stride_row  # 64-bit: N * V may exceed 2^31
    row_ptr = logits_ptr + row_start
    # The target logit first (one scalar load): the rank counts against it during the pass.
    zy = tl.load(row_ptr + y_safe, mask=scored, other=0.0).to(tl.float32)

    lo = sp * split_size
    hi = tl.minimum(lo + split_size, V)
    hi = tl.where(scored, hi, lo)  # a masked row reads nothing
    y32 = y_safe.to(tl.int32)

    # Tiles aligned to ALIGN elements (16 bytes) in memory: the first tile starts `shift`
    # elements before column `lo`.
    shift = ((row_start + lo) % ALIGN).to(tl.int32)
    base = tl.multiple_of(row_start + lo - shift, ALIGN)
    tile_ptr0 = logits_ptr + base
    span = hi - lo + shift
    offs = tl.arange(0, BLOCK_V // ALIGN)[:, None] * ALIGN + tl.arange(0, ALIGN)[None, :]

    # Scalars: the running max and its safe shift, the argmax. Per-slot vectors (one slot per
    # 16-byte row of the tile, i.e. per thread-held vector): the moments and the count, summed
    # inside each thread tile after tile and reduced across threads only once, at the end.
    m = tl.full((), float("-inf"), tl.float32)
    c = tl.full((), 0.0, tl.float32)
    amax = tl.full((), _NO_INDEX, tl.int32)
    if SLOT_SHIFT:  # per-slot maxima and shifts, and the first column of the tile that set each
        m_s = tl.full((BLOCK_V // ALIGN,), float("-inf"), tl.float32)
        c_s = tl.zeros((BLOCK_V // ALIGN,), tl.float32)
        at_s = tl.full((BLOCK_V // ALIGN,), _NO_INDEX, tl.int32)
    acc0 = tl.zeros((BLOCK_V // ALIGN,), tl.float32)
    acc1 = tl.zeros((BLOCK_V // ALIGN,), tl.float32)
    acc2 = tl.zeros((BLOCK_V // ALIGN,), tl.float32)
    acc_cnt = tl.zeros((BLOCK_V // ALIGN,), tl.float32)
    if HAS_TEMPS:  # per-slot tempered sums, one column per temperature
        tcol = tl.arange(0, T_PAD)
        b2 = tl.load(temps_ptr + tcol)  # beta_j log2(e)
        acc_t0 = tl.zeros((BLOCK_V // ALIGN, T_PAD), tl.float32)
        acc_t1 = tl.zeros((BLOCK_V // ALIGN, T_PAD), tl.float32)

    # Software pipelining by hand: the loads of tiles k + 1 and k + 2 are in flight while tile k
    # is reduced, so that memory latency overlaps the arithmetic (raw values are carried).
    # A tile takes the masked path ("edge") when it holds an end of [lo, hi) or the target
    # column; only the first tile can start before `lo` (when shift > 0).
    edge_1 = (shift > 0) | (BLOCK_V > span) | ((y32 >= lo - shift) & (y32 < lo - shift + BLOCK_V))
    raw_1 = _load_tile(tile_ptr0, 0, lo - shift, lo, hi, edge_1, BLOCK_V, ALIGN, VEC_MASK)
    edge_2 = (2 * BLOCK_V > span) | ((y32 >= lo - shift + BLOCK_V) & (y32 < lo - shift + 2 * BLOCK_V))
    raw_2 = _load_tile(tile_ptr0, BLOCK_V, lo - shift + BLOCK_V, lo, hi, edge_2, BLOCK_V, ALIGN, VEC_MASK)
    for k in range(0, span, BLOCK_V):
        raw = raw_1
        edge = edge_1
        raw_1 = raw_2
        edge_1 = edge_2
        col0 = lo - shift + k  # column of the tile's first element
        # past the end a tile is an edge tile whose mask is all false: no memory access
        edge_2 = (k + 3 * BLOCK_V > span) | ((y32 >= col0 + 2 * BLOCK_V) & (y32 < col0 + 3 * BLOCK_V))
        raw_2 = _load_tile(tile_ptr0, k + 2 * BLOCK_V, col0 + 2 * BLOCK_V, lo, hi, edge_2, BLOCK_V, ALIGN, VEC_MASK)
        z = raw.to(tl.float32)
        if edge:  # range ends (whole-vector loads read a little outside) and the target column
            cols = col0 + offs
            z = tl.where((cols >= lo) & (cols < hi) & (cols != y32), z, float("-inf"))
        if SLOT_SHIFT:
            # Each slot (one thread's 16-byte vector) keeps its own maximum and shift: no
            # cross-thread reduction in the loop. The rescale is branch-free and costs one exp
            # per slot and tile (delta = 0, a = 1 when the slot's maximum did not move).
            zmax = tl.max(z, axis=1)
            grew = zmax > m_s  # strict: the earlier tile keeps a tie
            m_new = tl.where(grew, zmax, m_s)
            c_new = _safe_shift(m_new)
            delta = _shift_delta(m_s, c_s, c_new)
            # clamped as in _rescale (the tempered sums below take the unclamped delta)
            delta_c = tl.maximum(delta, _CLAMP, propagate_nan=tl.PropagateNan.ALL)
            if FAST_EXP:
                a = tl.inline_asm_elementwise(
                    "ex2.approx.ftz.f32 $0, $1;", "=f,f", [delta_c * 1.4426950408889634], dtype=tl.float32,
                    is_pure=True, pack=1,
                )
            else:
                a = tl.exp(delta_c)
            d0 = delta_c * acc0
            acc2 = a * (acc2 + delta_c * (2.0 * acc1 + d0))
            acc1 = a * (acc1 + d0)
            acc0 = a * acc0
            if HAS_TEMPS:
                acc_t0, acc_t1 = _rescale_tempered(delta[:, None] * b2[None, :], acc_t0, acc_t1)
            at_s = tl.where(grew, col0, at_s)
            m_s = m_new
            c_s = c_new
            zc = z - c_s[:, None]
        else:
            tile_max = tl.max(tl.max(z, axis=1), axis=0)
            if tile_max > m:
                # The running max moves (rare after the first tiles): rescale, and take the first
                # index of the tile max; strict '>' keeps the earlier tile on ties.
                c_new = _safe_shift(tile_max)
                acc0, acc1, acc2 = _rescale(m, c, c_new, acc0, acc1, acc2)
                if HAS_TEMPS:
                    du = _shift_delta(m, c, c_new) * b2  # (T_PAD,)
                    acc_t0, acc_t1 = _rescale_tempered(du[None, :], acc_t0, acc_t1)
                amax = col0 + tl.min(tl.min(tl.where(z == tile_max, offs, _NO_INDEX), axis=1), axis=0)
                m = tile_max
                c = c_new
            zc = z - c
        # The clamp propagates NaN so that a NaN logit poisons s0 (the bad-row signal).
        d = tl.maximum(zc, _CLAMP, propagate_nan=tl.PropagateNan.ALL)
        if FAST_EXP:  # _exp inlined: the interpreter pays for every nested jit call
            e = tl.inline_asm_elementwise(
                "ex2.approx.ftz.f32 $0, $1;", "=f,f", [d * 1.4426950408889634], dtype=tl.float32, is_pure=True, pack=1
            )
        else:
            e = tl.exp(d)
        ed = e * d
        acc0 += tl.sum(e, axis=1)
        acc1 += tl.sum(ed, axis=1)
        acc2 += tl.sum(ed * d, axis=1)
        if HAS_TEMPS:
            # (slots, ALIGN, T_PAD): u = b_j (z - c) clamped so that -inf adds exactly 0; the
            # reduction over ALIGN stays inside each thread, as for the base moments. tl.reshape
            # (not zc[:, :, None]) lets the compiler extend the tile's register layout by the
            # temperature axis (each thread: its 16-byte vector times T_PAD), with no shuffles.
            u = tl.maximum(tl.reshape(zc, (BLOCK_V // ALIGN, ALIGN, 1)) * b2[None, None, :], _CLAMP2)
            if FAST_EXP:
                et = tl.inline_asm_elementwise(
                    "ex2.approx.ftz.f32 $0, $1;", "=f,f", [u], dtype=tl.float32, is_pure=True, pack=1
                )
            else:
                et = tl.exp2(u)
            acc_t0 += tl.sum(et, axis=1)
            acc_t1 += tl.sum(et * u, axis=1)
        # counted in fp32 (set + add, no predicated integer ops); exact below 2^24 per slot
        if SLOT_SHIFT:
            acc_cnt += tl.sum(tl.where(z > zy, 1.0, 0.0), axis=1)
        elif tile_max > zy:  # only a tile with a larger logit can add to the rank
            acc_cnt += tl.sum(tl.where(z > zy, 1.0, 0.0), axis=1)

    if SLOT_SHIFT:
        # The slots' states merge at the row's maximum; its first index is found by reading
        # again the vector of each slot that holds it, in the tile where that slot reached it.
        m = tl.max(m_s, axis=0)
        c = _safe_shift(m)
        acc0, acc1, acc2 = _rescale(m_s, c_s, c, acc0, acc1, acc2)
        if HAS_TEMPS:
            acc_t0, acc_t1 = _rescale_tempered(_shift_delta(m_s, c_s, c)[:, None] * b2[None, :], acc_t0, acc_t1)
        cols = at_s[:, None] + offs
        hit = (m_s == m)[:, None] & (at_s != _NO_INDEX)[:, None] & (cols >= lo) & (cols < hi) & (cols != y32)
        z_hit = tl.load(tile_ptr0 + (cols - (lo - shift)), mask=hit, other=float("-inf")).to(tl.float32)
        amax = tl.min(tl.min(tl.where(hit & (z_hit == m), cols, _NO_INDEX), axis=1), axis=0)
    s0 = tl.sum(acc0, axis=0)
    s1 = tl.sum(acc1, axis=0)
    s2 = tl.sum(acc2, axis=0)
    cnt = tl.sum(acc_cnt.to(tl.int32), axis=0)
    if HAS_TEMPS:
        t0 = tl.sum(acc_t0, axis=0)  # (T_PAD,)
        t1 = tl.sum(acc_t1, axis=0)

    if FINALIZE:
        if HAS_TEMPS:
            beta = tl.load(temps_ptr + T_PAD + tcol)
            lp_t, ent_t, mlp_t = _finalize_tempered(m, c, t0, t1, zy, b2, beta, scored)
            off_t = row.to(tl.int64) * n_temps + tcol
            tl.store(out_logprob_t + off_t, lp_t, mask=tcol < n_temps)
            tl.store(out_entropy_t + off_t, ent_t, mask=tcol < n_temps)
            tl.store(out_max_logprob_t + off_t, mlp_t, mask=tcol < n_temps)
        res = _finalize(m, c, s0, s1, s2, cnt, amax, zy, y_safe, scored)
        _store_outputs(
            row,
            None,
            out_logprob,
            out_lse,
            out_entropy,
            out_var,
            out_max_logprob,
            out_argmax,
            out_log1m_p,
            out_margin,
            out_rank,
            status_ptr,
            bad_target,
            *res,
        )
    else:  # the merge kernel finishes the row and reports its problems
        plane = tl.cast(n_rows, tl.int64) * n_split
        idx = row.to(tl.int64) * n_split + sp
        tl.store(part_f_ptr + idx, m)
        tl.store(part_f_ptr + plane + idx, s0)
        tl.store(part_f_ptr + 2 * plane + idx, s1)
        tl.store(part_f_ptr + 3 * plane + idx, s2)
        tl.store(part_i_ptr + idx, cnt)
        tl.store(part_i_ptr + plane + idx, amax)
        if HAS_TEMPS:
            idx_t = idx * T_PAD + tcol
            tl.store(part_t_ptr + idx_t, t0)
            tl.store(part_t_ptr + plane * T_PAD + idx_t, t1)


@triton.jit
def _merge_kernel(
    part_f_ptr,
    part_i_ptr,
    n_rows,
    n_split,
    targets_ptr,
    ignore_index,
    V,
    zy_ptr,
    zy_stride,
    out_logprob,
    out_lse,
    out_entropy,
    out_var,
    out_max_logprob,
    out_argmax,
    out_log1m_p,
    out_margin,
    out_rank,
    status_ptr,
    temps_ptr,
    n_temps,
    part_t_ptr,
    out_logprob_t,
    out_entropy_t,
    out_max_logprob_t,
    BLOCK_R: tl.constexpr,
    SPLIT_P2: tl.constexpr,
    ZY_INDEXED: tl.constexpr,
    HAS_TEMPS: tl.constexpr,
    T_PAD: tl.constexpr,
):
    """Merge the SPLIT partial states of BLOCK_R rows in a fixed order, then finalize.

    ``z_y`` is read at ``zy_ptr + row * zy_stride (+ y when ZY_INDEXED)``: from the logits for
    `token_stats_triton`, from a per-row buffer for the fused kernel. ``HAS_TEMPS``: the
    tempered sums ``part_t`` (2, N, SPLIT, T_PAD) are merged with the same shifts and the
    tempered fields written to ``out_*_t`` (N, n_temps).
    """
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    y = tl.load(targets_ptr + rows, mask=row_ok, other=ignore_index)
    in_range = (y >= 0) & (y < V)
    bad_target = row_ok & (y != ignore_index) & ~in_range
    scored = row_ok & (y != ignore_index) & in_range
    y_safe = tl.where(scored, y, 0)
    zy_off = rows.to(tl.int64) * zy_stride
    if ZY_INDEXED:
        zy_off += y_safe
    zy = tl.load(zy_ptr + zy_off, mask=scored, other=0.0).to(tl.float32)

    ks = tl.arange(0, SPLIT_P2)
    plane = tl.cast(n_rows, tl.int64) * n_split
    idx = rows.to(tl.int64)[:, None] * n_split + ks[None, :]
    ok = scored[:, None] & (ks[None, :] < n_split)
    m_k = tl.load(part_f_ptr + idx, mask=ok, other=float("-inf"))
    s0_k = tl.load(part_f_ptr + plane + idx, mask=ok, other=0.0)
    s1_k = tl.load(part_f_ptr + 2 * plane + idx, mask=ok, other=0.0)
    s2_k = tl.load(part_f_ptr + 3 * plane + idx, mask=ok, other=0.0)
    cnt_k = tl.load(part_i_ptr + idx, mask=ok, other=0)
    amax_k = tl.load(part_i_ptr + plane + idx, mask=ok, other=_NO_INDEX)

    m = tl.max(m_k, axis=1)
    c = _safe_shift(m)
    r0, r1, r2 = _rescale(m_k, _safe_shift(m_k), c[:, None], s0_k, s1_k, s2_k)
    s0 = tl.sum(r0, axis=1)
    s1 = tl.sum(r1, axis=1)
    s2 = tl.sum(r2, axis=1)
    cnt = tl.sum(cnt_k, axis=1)
    # splits hold increasing columns: the first index of the max is the smallest index
    amax = tl.min(tl.where(m_k == m[:, None], amax_k, _NO_INDEX), axis=1)

    if HAS_TEMPS:
        tcol = tl.arange(0, T_PAD)
        b2 = tl.load(temps_ptr + tcol)
        beta = tl.load(temps_ptr + T_PAD + tcol)
        # One split at a time, in order (registers stay (BLOCK_R, T_PAD) whatever SPLIT): each
        # partial is moved from its own shift to the row's final shift c and added.
        ok_t = scored[:, None] & (tcol < T_PAD)[None, :]
        t0 = tl.zeros((BLOCK_R, T_PAD), tl.float32)
        t1 = tl.zeros((BLOCK_R, T_PAD), tl.float32)
        for k in range(0, n_split):
            idx_k = rows.to(tl.int64) * n_split + k
            m_r = tl.load(part_f_ptr + idx_k, mask=scored, other=float("-inf"))
            du = _shift_delta(m_r, _safe_shift(m_r), c)[:, None] * b2[None, :]
            idx_t = idx_k[:, None] * T_PAD + tcol[None, :]
            p0 = tl.load(part_t_ptr + idx_t, mask=ok_t, other=0.0)
            p1 = tl.load(part_t_ptr + plane * T_PAD + idx_t, mask=ok_t, other=0.0)
            r0_t, r1_t = _rescale_tempered(du, p0, p1)
            t0 += r0_t
            t1 += r1_t
        lp_t, ent_t, mlp_t = _finalize_tempered(
            m[:, None], c[:, None], t0, t1, zy[:, None], b2[None, :], beta[None, :], scored[:, None]
        )
        off_t = rows.to(tl.int64)[:, None] * n_temps + tcol[None, :]
        ok_out = row_ok[:, None] & (tcol < n_temps)[None, :]
        tl.store(out_logprob_t + off_t, lp_t, mask=ok_out)
        tl.store(out_entropy_t + off_t, ent_t, mask=ok_out)
        tl.store(out_max_logprob_t + off_t, mlp_t, mask=ok_out)

    res = _finalize(m, c, s0, s1, s2, cnt, amax, zy, y_safe, scored)
    _store_outputs(
        rows,
        row_ok,
        out_logprob,
        out_lse,
        out_entropy,
        out_var,
        out_max_logprob,
        out_argmax,
        out_log1m_p,
        out_margin,
        out_rank,
        status_ptr,
        bad_target,
        *res,
    )


# ------------------------------------------------------------------------------------------------
# host side


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return int(torch.cuda.get_device_properties(device_index).multi_processor_count)


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (a nominal 8 for CPU tensors in the interpreter)."""
    if device.type != "cuda":
        return 8
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _sm_count(index)


def fast_exp_available(device: torch.device) -> bool:
    """Whether the inline-PTX exponential can be used: compiled CUDA (not ROCm, not the interpreter)."""
    return device.type == "cuda" and torch.version.hip is None


CONFIG_ENV = "MIA_FAST_TRITON_TOKEN_STATS"


def default_config(dtype: torch.dtype) -> tuple[int, int]:
    """``(BLOCK_V, num_warps)`` for an H100/H200-class GPU, or ``$MIA_FAST_TRITON_TOKEN_STATS``.

    8 elements per thread per tile (one 16-byte vector of 16-bit logits, two of fp32), with two
    more tiles in flight: 55-69 registers without temperatures, 72-117 with them (sm_90, Triton
    3.6 and 3.9: ``python -m mia_fast.kernels.cross_compile``). Set from the H200 tile probe
    (``benchmarks/results/h200_triton_probe.md``); larger tiles took more registers and lost
    occupancy there.
    """
    env = os.environ.get(CONFIG_ENV)
    if env:
        try:
            block_v, num_warps = (int(x) for x in env.split(","))
        except ValueError:
            raise ValueError(f"{CONFIG_ENV}: expected 'BLOCK_V,NUM_WARPS' (two integers), got {env!r}") from None
        if num_warps < 1 or num_warps & (num_warps - 1):
            raise ValueError(f"{CONFIG_ENV}: expected a power-of-two NUM_WARPS, got {env!r}")
        return block_v, num_warps
    if dtype == torch.float32:
        return 512, 2
    return 1024, 4


SLOT_SHIFT_ENV = "MIA_FAST_TRITON_SLOT_SHIFT"


def slot_shift_default() -> bool:
    """The loop variant of `token_stats_triton`: ``$MIA_FAST_TRITON_SLOT_SHIFT`` = 1 or 0 (default 0)."""
    env = os.environ.get(SLOT_SHIFT_ENV, "0")
    if env not in ("0", "1"):
        raise ValueError(f"{SLOT_SHIFT_ENV}: expected 0 or 1, got {env!r}")
    return env == "1"


def _check_block(name: str, value: int, minimum: int) -> None:
    if value < minimum or value & (value - 1):
        raise ValueError(f"{name}: expected a power of two >= {minimum}, got {value}")


def _allocate_outputs(n: int, device: torch.device) -> list[torch.Tensor]:
    """The nine output fields (N,) in `FIELDS` order, then the call's status word (1,) int64 = 0.

    Two allocations instead of ten (a CUDA allocation costs microseconds of host time per call):
    the seven float32 fields are rows of one (7, N) buffer, argmax, rank and the status word
    slices of one zeroed int64 buffer. Rows start at multiples of 4 elements, so every view is
    16-byte aligned whatever N (Triton compiles one kernel per pointer-alignment pattern).
    """
    n4 = -(-n // 4) * 4
    f32 = torch.empty((7, n4), dtype=torch.float32, device=device)[:, :n]
    i64 = torch.zeros(2 * n4 + 4, dtype=torch.int64, device=device)
    logprob, lse, entropy, var_logp, max_logprob, log1m_p, margin = f32.unbind(0)
    argmax, rank, status = i64[:n], i64[n4 : n4 + n], i64[2 * n4 : 2 * n4 + 1]
    return [logprob, lse, entropy, var_logp, max_logprob, argmax, log1m_p, margin, rank, status]


class TemperatureTable(NamedTuple):
    """The temperatures as the kernels read them.

    Attributes
    ----------
    table : Tensor, shape (2, t_pad), float32, or None
        Row 0: ``beta_j log2(e)``; row 1: ``beta_j = 1 / tau_j``; columns ``>= n_temps`` pad
        with ``beta = 1`` (computed, never stored). None without temperatures.
    n_temps : int
        Number of temperatures T (0: none; the kernels then compile without the tempered sums).
    t_pad : int
        ``T`` rounded up to a power of two (at least 1).
    """

    table: Optional[torch.Tensor]
    n_temps: int
    t_pad: int


def temperature_table(temperatures: Sequence[float], device: torch.device) -> TemperatureTable:
    """Validate ``temperatures`` (each ``tau > 0`` with ``1 / tau`` a normal fp32 number, at most
    `MAX_TEMPERATURES`) and build the kernels' `TemperatureTable` on ``device``."""
    if isinstance(temperatures, (str, bytes)) or not isinstance(temperatures, Sequence):
        raise TypeError(f"temperatures: expected a tuple of floats, got {type(temperatures).__name__}")
    if len(temperatures) > MAX_TEMPERATURES:
        raise ValueError(f"temperatures: expected at most {MAX_TEMPERATURES} values, got {len(temperatures)}")
    if not temperatures:
        return TemperatureTable(None, 0, 1)
    fp32 = torch.finfo(torch.float32)
    betas = []
    for tau in temperatures:
        if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
            raise TypeError(f"temperatures: expected floats, got {tau!r} ({type(tau).__name__})")
        tau = float(tau)
        beta = 1.0 / tau if tau > 0 and math.isfinite(tau) else math.nan
        if not (fp32.tiny <= beta * _LOG2E <= fp32.max):
            raise ValueError(
                f"temperatures: expected finite values > 0 whose inverse is a normal float32 number, got {tau!r}"
            )
        betas.append(beta)
    n_temps = len(betas)
    t_pad = triton.next_power_of_2(n_temps)
    padded = betas + [1.0] * (t_pad - n_temps)
    table = torch.tensor([[b * _LOG2E for b in padded], padded], dtype=torch.float64).to(torch.float32)
    return TemperatureTable(table.to(device), n_temps, t_pad)


def _allocate_tempered(n: int, n_temps: int, device: torch.device) -> list[torch.Tensor]:
    """``logprob_t, entropy_t, max_logprob_t``: float32 (N, T), row-major (none when T = 0)."""
    return [torch.empty((n, n_temps), dtype=torch.float32, device=device) for _ in range(3 if n_temps else 0)]


def read_status(status: torch.Tensor, targets: torch.Tensor, vocab: int, ignore_index: int) -> int:
    """Decode a call's status word (one device sync): raise IndexError for the first target
    outside ``[0, V)`` that is not ``ignore_index``; else return the first bad row, or -1."""
    key = int(status.item())
    if key == 0:
        return -1
    kind, row = key >> 32, 4294967295 - (key & 4294967295)
    if kind == 2:
        raise target_range_error(int(targets[row]), row, vocab, ignore_index)
    return row


def merge_partials(
    part_f: torch.Tensor,
    part_i: torch.Tensor,
    n_split: int,
    targets: torch.Tensor,
    ignore_index: int,
    vocab: int,
    zy_src: torch.Tensor,
    zy_stride: int,
    zy_indexed: bool,
    outs: list[torch.Tensor],
    temps: Optional[TemperatureTable] = None,
    part_t: Optional[torch.Tensor] = None,
    outs_t: Sequence[torch.Tensor] = (),
) -> None:
    """Launch `_merge_kernel` over the rows: fixed-order merge of (N, n_split) partial states.

    ``outs`` are the nine output fields then the status word (`_allocate_outputs`), where the
    merge reports targets outside ``[0, vocab)`` and bad rows. With ``temps`` (T > 0): also the tempered sums ``part_t`` (2, N, n_split, T_PAD) into
    ``outs_t`` = (logprob_t, entropy_t, max_logprob_t), each (N, T).
    """
    n = targets.shape[0]
    split_p2 = max(2, triton.next_power_of_2(n_split))
    block_r = 64 if n_split <= 16 else 16
    has_temps = temps is not None and temps.n_temps > 0
    t_pad = temps.t_pad if has_temps else 1
    if has_temps and split_p2 > 8:  # the tempered sums share the registers of the (R, SPLIT) loads
        block_r = min(block_r, 32)
    if not has_temps:
        temps_args = [outs[-1], 0, outs[-1], outs[-1], outs[-1], outs[-1]]  # unused
    else:
        if part_t is None or len(outs_t) != 3:
            raise ValueError("merge_partials: temperatures need part_t and three tempered outputs")
        temps_args = [temps.table, temps.n_temps, part_t, *outs_t]
    grid = (triton.cdiv(n, block_r),)
    _merge_kernel[grid](
        part_f,
        part_i,
        n,
        n_split,
        targets,
        ignore_index,
        vocab,
        zy_src,
        zy_stride,
        *outs,
        *temps_args,
        BLOCK_R=block_r,
        SPLIT_P2=split_p2,
        ZY_INDEXED=zy_indexed,
        HAS_TEMPS=has_temps,
        T_PAD=t_pad,
        num_warps=4,
    )


def token_stats_triton(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int,
    temperatures: Sequence[float] = (),
    *,
    block_v: Optional[int] = None,
    num_warps: Optional[int] = None,
    split: Optional[int] = None,
    slot_shift: Optional[bool] = None,
) -> tuple:
    """Every `TokenStats` field of each row of ``logits`` in one pass (Triton).

    Parameters
    ----------
    logits : Tensor, shape (N, V)
        float32, float16 or bfloat16 on a CUDA device (or CPU under ``TRITON_INTERPRET=1``);
        ``stride(1) == 1``, any row stride.
    targets : Tensor, shape (N,)
        int64, contiguous: each in ``[0, V)`` or ``ignore_index`` (IndexError otherwise, for the
        first one outside, found by the kernel).
    ignore_index : int
        Target value of rows that are not scored (never read; NaN / -1 outputs).
    temperatures : sequence of float, length T <= 8
        Temperatures ``tau_j > 0`` of the tempered fields (statistics of ``softmax(z / tau_j)``,
        computed in the same pass); none by default.
    block_v : int, optional
        Vocabulary tile (power of two); default from `default_config`, capped near V.
    num_warps : int, optional
        Warps per program; default from `default_config`.
    split : int, optional
        Programs per row (>= 1). Default: 1 when there are at least two rows per SM, else enough
        to fill the GPU. Values above the number of tiles are reduced to it.
    slot_shift : bool, optional
        Loop variant: per-thread maxima and shifts, merged once at the end (True), or one
        running maximum per program, agreed by all threads at every tile (False, the default;
        `SLOT_SHIFT_ENV` overrides it). Same results to rounding; they differ in speed.

    Returns
    -------
    tuple
        ``(logprob, lse, entropy, var_logp, max_logprob, argmax, log1m_p, margin, rank,
        bad_row)``: nine tensors of shape (N,) (float32; argmax and rank int64) and ``bad_row``,
        the first scored row holding NaN/+inf or only -inf, or -1. With temperatures:
        ``(logprob, ..., rank, logprob_t, entropy_t, max_logprob_t, bad_row)`` where the three
        tempered fields are float32 (N, T), row-major, column ``j`` for ``temperatures[j]``
        (``beta_j z_y - lse(beta_j z)``, the entropy of ``softmax(beta_j z)``, and
        ``beta_j max z - lse(beta_j z)``; NaN in unscored rows).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits: expected shape (N, V), got {tuple(logits.shape)}")
    n, vocab = logits.shape
    if vocab > 1 and logits.stride(1) != 1:
        raise ValueError(f"logits: expected stride 1 along the vocabulary, got strides {logits.stride()}")
    if targets.shape != (n,) or targets.dtype != torch.int64 or not targets.is_contiguous():
        raise ValueError(
            f"targets: expected a contiguous int64 tensor of shape ({n},), got {targets.dtype} {tuple(targets.shape)}"
        )
    temps = temperature_table(temperatures, logits.device)
    outs = _allocate_outputs(n, logits.device)
    outs_t = _allocate_tempered(n, temps.n_temps, logits.device)
    if n == 0:
        return (*outs[:-1], *outs_t, -1)

    align = max(1, 16 // logits.element_size())
    default_block, default_warps = default_config(logits.dtype)
    if block_v is None:
        block_v = min(default_block, max(128, triton.next_power_of_2(vocab + align - 1)))
    _check_block("block_v", block_v, max(16, align))
    if num_warps is None:  # keep the default's elements per thread when the tile is smaller
        per_thread = max(1, default_block // (32 * default_warps))
        num_warps = max(1, min(default_warps, block_v // (32 * per_thread)))

    n_tiles = triton.cdiv(vocab, block_v)
    sms = num_sms(logits.device)
    if split is None:
        split = 1 if n >= 2 * sms else triton.cdiv(4 * sms, n)
    if split < 1:
        raise ValueError(f"split: expected a positive integer, got {split}")
    split = min(split, n_tiles, 1024)
    split_size = triton.cdiv(n_tiles, split) * block_v
    split = triton.cdiv(vocab, split_size)

    stride_row = logits.stride(0) if n > 1 else vocab
    finalize = split == 1
    if finalize:
        part_f = part_i = outs[-1]  # unused
    else:
        part_f = torch.empty((4, n, split), dtype=torch.float32, device=logits.device)
        part_i = torch.empty((2, n, split), dtype=torch.int32, device=logits.device)
    has_temps = temps.n_temps > 0
    part_t = None
    if has_temps and not finalize:
        part_t = torch.empty((2, n, split, temps.t_pad), dtype=torch.float32, device=logits.device)
    unused = outs[-1]
    temps_args = [
        temps.table if has_temps else unused,
        temps.n_temps,
        *(outs_t if finalize and has_temps else [unused] * 3),
        part_t if part_t is not None else unused,
    ]

    with launch_context(logits.device):
        _token_stats_kernel[(n, split)](
            logits,
            targets,
            stride_row,
            vocab,
            split_size,
            n,
            split,
            ignore_index,
            *outs,
            part_f,
            part_i,
            *temps_args,
            BLOCK_V=block_v,
            ALIGN=align,
            FINALIZE=finalize,
            FAST_EXP=fast_exp_available(logits.device),
            VEC_MASK=logits.data_ptr() % 16 == 0,
            HAS_TEMPS=has_temps,
            T_PAD=temps.t_pad,
            SLOT_SHIFT=slot_shift_default() if slot_shift is None else bool(slot_shift),
            num_warps=num_warps,
        )
        if not finalize:
            merge_partials(
                part_f, part_i, split, targets, ignore_index, vocab, logits, stride_row, True, outs, temps, part_t,
                outs_t,
            )
    return (*outs[:-1], *outs_t, read_status(outs[-1], targets, vocab, ignore_index))


def launch_context(device: torch.device) -> contextlib.AbstractContextManager:
    """Context for a kernel launch on ``device``.

    CUDA: make ``device`` current (Triton launches on the current device). CPU tensors (the
    interpreter, ``TRITON_INTERPRET=1``): silence numpy's floating-point errors and warnings,
    since the kernels compute ``log(0) = -inf``, ``inf - inf = NaN`` and maxima of NaN on purpose
    (masked rows, bad rows).
    """
    if device.type == "cuda":
        return torch.cuda.device(device)
    import numpy as np

    stack = contextlib.ExitStack()
    stack.enter_context(np.errstate(all="ignore"))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore", RuntimeWarning)
    return stack
