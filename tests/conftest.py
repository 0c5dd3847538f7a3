"""Shared helpers of the token-statistics tests: named logits "cases" and the reference check.

The check follows design.md §8: for every float field, a backend's max abs error against the
float64 reference (over scored positions) may not exceed torch's own float32 error in the same
setting (``token_stats_reference(..., dtype=torch.float32)``) plus ``atol + rtol * scale``, where
``scale`` is the largest |value| of that field. ``argmax`` and ``rank`` must match exactly, and
infinities must sit at the same places with the same sign.

This module is importable on its own (the SIMD-level subprocess tests import it by path).
"""

from __future__ import annotations

import functools
import os
import zlib

import pytest
import torch

from mia_fast.reference import token_stats_reference
from mia_fast.stats import FLOAT_FIELDS, INT_FIELDS, TokenStats

try:  # property tests: HYPOTHESIS_PROFILE=ci (set by .ci/run) draws the same examples every run
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
except ImportError:  # pragma: no cover - hypothesis is a test extra
    pass

IGNORE = -100
ATOL = 1e-5
RTOL = 2e-6
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CASES = ("randn", "strided", "3d", "neginf", "equal", "huge", "peaked")


def pytest_collection_modifyitems(config, items):
    """`slow` tests run only when selected (``-m slow``) or with MIA_FAST_RUN_SLOW=1."""
    expr = config.getoption("markexpr") or ""
    if os.environ.get("MIA_FAST_RUN_SLOW") == "1" or ("slow" in expr and "not slow" not in expr):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow or MIA_FAST_RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _generator(*key) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def _lead_3d(rows: int) -> tuple[int, int]:
    b = max(d for d in range(1, int(rows**0.5) + 1) if rows % d == 0)
    return b, rows // b


def make_case(case: str, rows: int, vocab: int, dtype: torch.dtype, ignore_frac: float = 0.2):
    """Logits ``(rows, V)`` (or ``(B, T, V)`` for "3d") of ``dtype`` and int64 targets for a named case.

    About ``ignore_frac`` of the targets are ``IGNORE`` (row 0 is always scored).
    """
    g = _generator(case, rows, vocab, str(dtype))
    targets = torch.randint(0, vocab, (rows,), generator=g)
    z = 3.0 * torch.randn(rows, vocab, generator=g)
    if case == "neginf":
        # 30% of the vocabulary masked; row 1: only the target finite; row 2: the target is -inf.
        z[torch.rand(rows, vocab, generator=g) < 0.3] = float("-inf")
        z[torch.arange(rows), targets] = 3.0 * torch.randn(rows, generator=g)
        if rows > 1:
            z[1] = float("-inf")
            z[1, targets[1]] = 2.5
        if rows > 2 and vocab > 1:
            z[2, (targets[2] + 1) % vocab] = 1.0
            z[2, targets[2]] = float("-inf")
    elif case == "equal":
        z = (3.0 * torch.randn(rows, 1, generator=g)).expand(rows, vocab).clone()
    elif case == "huge":
        # rows around +1e4 with 10% of entries near -1e4, and rows around -1e4 with 10% near +1e4
        offset = torch.where(torch.arange(rows) % 2 == 0, 1e4, -1e4).unsqueeze(-1)
        far = torch.rand(rows, vocab, generator=g) < 0.1
        z = torch.where(far, z - offset, z + offset)
    elif case == "peaked":
        z[torch.arange(rows), targets] = z.amax(-1) + 40.0
    keep = torch.rand(rows, generator=g) >= ignore_frac
    keep[0] = True
    targets = torch.where(keep, targets, IGNORE)
    if case == "strided":
        wide = torch.full((rows, vocab + 13), float("nan"))  # the columns outside the slice are NaN
        wide[:, 5 : 5 + vocab] = z
        logits = wide.to(dtype)[:, 5 : 5 + vocab]
        assert logits.stride(0) == vocab + 13
        return logits, targets
    if case == "3d":
        b, t = _lead_3d(rows)
        logits = z.to(dtype).reshape(b, t, vocab).transpose(0, 1).contiguous().transpose(0, 1)
        return logits, targets.reshape(b, t)
    return z.to(dtype), targets


@functools.lru_cache(maxsize=2)
def case_with_reference(case: str, rows: int, vocab: int, dtype_name: str):
    """``(logits, targets, ref64, ref32)`` for a case, cached so that backends share one reference.

    Callers must not modify the returned tensors.
    """
    logits, targets = make_case(case, rows, vocab, DTYPES[dtype_name])
    ref64 = token_stats_reference(logits, targets, IGNORE, dtype=torch.float64)
    ref32 = token_stats_reference(logits, targets, IGNORE, dtype=torch.float32)
    return logits, targets, ref64, ref32


def value_errors(label: str, got: torch.Tensor, ref64: torch.Tensor, ref32: torch.Tensor,
                 atol: float = ATOL, rtol: float = RTOL) -> list[str]:
    """The tolerance rule on one field's scored values: infinities where the float64 reference has
    them, and elsewhere a max abs error <= torch's own fp32 error + atol + rtol * max |reference|."""
    problems: list[str] = []
    r, b, t = ref64.double(), got.double(), ref32.double()
    finite = torch.isfinite(r)
    if not torch.equal(b[~finite], r[~finite]):
        problems.append(f"{label}: non-finite reference values {r[~finite].tolist()[:5]} got {b[~finite].tolist()[:5]}")
    if not bool(torch.isfinite(b[finite]).all()):
        return problems + [f"{label}: non-finite where the reference is finite"]
    if not bool(finite.any()):
        return problems
    r, b, t = r[finite], b[finite], t[finite]
    err = (b - r).abs().max().item()
    err_torch = (t - r).abs().nan_to_num(nan=float("inf")).max().item()
    scale = r.abs().max().item()
    if not err <= err_torch + atol + rtol * scale:
        i = int((b - r).abs().argmax())
        problems.append(f"{label}: max abs error {err:.3g} > torch fp32 error {err_torch:.3g} + {atol:g} + "
                        f"{rtol:g}*{scale:.3g} (at scored #{i}: got {b[i].item()!r}, reference {r[i].item()!r})")
    return problems


def reference_errors(stats: TokenStats, ref64: TokenStats, ref32: TokenStats, targets: torch.Tensor,
                     ignore_index: int = IGNORE, atol: float = ATOL, rtol: float = RTOL,
                     skip_fields: tuple[str, ...] = ()) -> list[str]:
    """Every way ``stats`` violates the tolerance rule (empty list: it passes).

    ``skip_fields``: float fields whose accuracy the caller checks itself (masking is still checked).
    """
    problems: list[str] = []
    mask = targets != ignore_index
    if stats.mask.dtype != torch.bool or not torch.equal(stats.mask, mask):
        problems.append("mask != (targets != ignore_index)")
    for name in FLOAT_FIELDS + INT_FIELDS:
        got = getattr(stats, name)
        if tuple(got.shape) != tuple(targets.shape):
            problems.append(f"{name}: shape {tuple(got.shape)}, expected {tuple(targets.shape)}")
            return problems
    for name in FLOAT_FIELDS:
        got = getattr(stats, name)
        if got.dtype != torch.float32:
            problems.append(f"{name}: dtype {got.dtype}, expected float32")
        if not bool(torch.isnan(got[~mask]).all()):
            problems.append(f"{name}: masked positions are not all NaN")
        if name in skip_fields:
            continue
        problems += value_errors(name, got[mask], getattr(ref64, name)[mask], getattr(ref32, name)[mask], atol, rtol)
    for name in INT_FIELDS:
        got = getattr(stats, name)
        if got.dtype != torch.int64:
            problems.append(f"{name}: dtype {got.dtype}, expected int64")
        if not bool((got[~mask] == -1).all()):
            problems.append(f"{name}: masked positions are not all -1")
        if not torch.equal(got[mask], getattr(ref64, name)[mask]):
            bad = (got[mask] != getattr(ref64, name)[mask]).nonzero()[:5].flatten().tolist()
            problems.append(f"{name}: differs from the reference at scored positions {bad}")
    return problems


def assert_matches_reference(stats, ref64, ref32, targets, ignore_index=IGNORE, atol=ATOL, rtol=RTOL):
    problems = reference_errors(stats, ref64, ref32, targets, ignore_index, atol, rtol)
    assert not problems, "\n".join(problems)


def tempered_errors(stats: TokenStats, ref64: TokenStats, ref32: TokenStats, targets: torch.Tensor,
                    ignore_index: int = IGNORE, atol: float = ATOL, rtol: float = RTOL) -> list[str]:
    """The tolerance rule of `reference_errors` applied to each column of the tempered fields."""
    from mia_fast.stats import TEMPERED_FIELDS

    if stats.tempered is None:
        return ["tempered: None, expected the tempered statistics"]
    temps = ref64.tempered.temperatures
    if tuple(stats.tempered.temperatures) != tuple(temps):
        return [f"tempered.temperatures {stats.tempered.temperatures}, expected {temps}"]
    problems: list[str] = []
    mask = targets != ignore_index
    for name in TEMPERED_FIELDS:
        got = getattr(stats.tempered, name)
        if tuple(got.shape) != (*targets.shape, len(temps)) or got.dtype != torch.float32:
            problems.append(f"tempered.{name}: {got.dtype} {tuple(got.shape)}, expected float32 "
                            f"{(*targets.shape, len(temps))}")
            continue
        if not bool(torch.isnan(got[~mask]).all()):
            problems.append(f"tempered.{name}: masked positions are not all NaN")
        for j, tau in enumerate(temps):
            problems += value_errors(f"tempered.{name}[tau={tau}]", got[mask][:, j],
                                     getattr(ref64.tempered, name)[mask][:, j],
                                     getattr(ref32.tempered, name)[mask][:, j], atol, rtol)
    return problems
