"""Inputs far beyond any model's, for the kernel tests of every backend: logits of 1e9 to 3.4e38
(with -inf and ties), and hidden states whose fp32 logits reach 1.7e38 exactly."""

from __future__ import annotations

import torch

IGNORE = -100

F32_MAX = torch.finfo(torch.float32).max  # 3.4028235e38
LARGE_KINDS = ("1e9", "1e9_ties", "pm3e38", "one_huge", "finfo_min", "neginf_1e30")
LARGE_VOCABS = (41, 5000)  # one partial block; three blocks of the cpp kernel (rising maxima)
LARGE_TEMPS = (0.5, 2.0, 0.7)  # on the ladder of squarings, and off it


def large_logits(kind: str, rows: int, vocab: int, dtype: torch.dtype = torch.float32):
    """(logits, int64 targets) of a named case with entries far beyond any model's: 1e9 .. 3.4e38
    (clamped to the largest finite value of ``dtype``), -inf mixed in. The last row is masked."""
    import zlib

    g = torch.Generator().manual_seed(zlib.crc32(f"{kind}-{rows}-{vocab}".encode()))
    z = torch.randn(rows, vocab, generator=g)
    targets = torch.randint(0, vocab, (rows,), generator=g)
    ar = torch.arange(rows)
    if kind == "1e9":  # the example (entropy 175.75 > log V, max_logprob -62.4)
        z = z * 1e9
    elif kind == "1e9_ties":  # 1 to 4 equal maxima at 1e9: entropy log k, logprob -log k on one
        z = z * 1e9
        top = z.amax(-1)
        for r in range(rows):
            cols = torch.randperm(vocab, generator=g)[: 1 + r % 4]
            z[r, cols] = top[r]
            if r % 2 == 0:
                targets[r] = cols[0]
    elif kind == "pm3e38":  # +-3e38: z - max overflows fp32; rows entirely +3e38, -3e38, mixed
        z = torch.where(torch.rand(rows, vocab, generator=g) < 0.5, -3e38, 3e38)
        z[0] = 3e38
        z[1] = -3e38
        z[2, : vocab // 2] = -3e38  # a row rising from -3e38 to +3e38 half way
        z[2, vocab // 2 :] = 3e38
    elif kind == "one_huge":  # ordinary rows with one entry of +3e38 (or -3e38), target on it or not
        cols = torch.randint(0, vocab, (rows,), generator=g)
        z[ar, cols] = torch.where(ar % 3 == 2, -3e38, 3e38)
        targets[0] = cols[0]
    elif kind == "finfo_min":  # vocabulary masked with finfo(float32).min (a common idiom)
        z[torch.rand(rows, vocab, generator=g) < 0.6] = -F32_MAX
        z[0, : 2 * vocab // 3] = -F32_MAX  # a masked first part: ordinary logits come later
        targets[0] = 0  # ... and the target is masked too
        z[1, vocab // 2] = F32_MAX
    elif kind == "neginf_1e30":  # -inf mixed with +-1e30
        z = z * 1e30
        z[torch.rand(rows, vocab, generator=g) < 0.3] = float("-inf")
        z[0, targets[0]] = 1e30
        z[1] = float("-inf")  # only the target finite
        z[1, targets[1]] = -1e30
        z[2, targets[2]] = float("-inf")  # the target itself -inf
        z[2, (targets[2] + 1) % vocab] = 5e29
    else:
        raise ValueError(kind)
    big = torch.finfo(dtype).max
    z = torch.where(torch.isinf(z), z, z.clamp(-big, big)).to(dtype)
    targets[-1] = IGNORE
    return z, targets


def rounded(stats):
    """The float64 reference rounded to float32: a value beyond fp32 range (logprob = -6e38)
    becomes -inf, as every backend's float32 output."""
    def r(x):
        return x.float() if x.is_floating_point() else x
    return stats.map(r)


HUGE_ROW_EXPONENTS = (0, 30, 100, 117, 117, 100, 30, 0)  # row r scaled by 2**e: up to +-1.7e38 logits


def huge_hidden_problem(n: int, d: int, vocab: int, seed: int = 0):
    """hidden (n, d), weight (V, d), int64 targets whose fp32 logits are exact whatever the
    summation order: integer entries in [-8, 8) with d <= 16 (|sum| <= 1024), row r of hidden
    scaled by 2**HUGE_ROW_EXPONENTS[r % 8] (1, ~1e9, ~1e30, ~1.7e38). Distinct logits of a row then
    differ by at least its scale, so only ties share the probability: entropy log k. Differences
    reach 2**128 (they overflow fp32) in the 2**117 rows. Row 0 targets its argmax, the last is masked."""
    assert d <= 16 and n >= 5
    g = torch.Generator().manual_seed(seed * 7919 + n * 31 + vocab)
    scale = torch.tensor([2.0 ** HUGE_ROW_EXPONENTS[r % len(HUGE_ROW_EXPONENTS)] for r in range(n)])
    hidden = torch.randint(-8, 8, (n, d), generator=g).float() * scale[:, None]
    weight = torch.randint(-8, 8, (vocab, d), generator=g).float()
    # a duplicated unembedding row, the largest logit of row 3 (scale 2**117): k = 2 equal maxima
    # near 1.7e38 (entropy log 2), where lse = max + log 2 rounds to max in any precision
    weight[vocab // 3] = torch.where(hidden[3] < 0, -8.0, 7.0)
    weight[vocab // 2] = weight[vocab // 3]
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[0] = (hidden[0] @ weight.T).argmax()
    targets[2] = vocab // 2
    targets[3] = vocab // 2
    targets[-1] = IGNORE
    return hidden, weight, targets
