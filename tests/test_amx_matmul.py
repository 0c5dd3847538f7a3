"""The AMX head (csrc/amx_matmul.cpp): bf16 x bf16 -> fp32 products on the tiles, and the fused
CPU head that folds them without storing the logits, against float64 on the same operands.

The kernel runs only where the CPU has AMX-BF16 and the OS grants the tile state; elsewhere these
tests check that it is never chosen and say why they skip."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mia_fast import api, reference
from mia_fast.backends import cpp_extension

EXT = cpp_extension()
HAS_AMX = EXT is not None and EXT.amx_bf16_available()
needs_amx = pytest.mark.skipif(not HAS_AMX, reason="this CPU or OS runs no AMX-BF16 tiles")


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.int16).numpy()


def _check_product(hidden: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> None:
    """out equals hidden @ weight.T in float64 up to fp32 accumulation: |err| <= K u sum|h||w|."""
    exact = hidden.double() @ weight.double().T
    bound = hidden.shape[1] * 2.0**-24 * (hidden.double().abs() @ weight.double().abs().T) + 1e-30
    err = (out.double() - exact).abs()
    assert torch.all(err <= bound), f"max error {err.max():.3g}, bound there {bound.flatten()[err.argmax()]:.3g}"


@needs_amx
@pytest.mark.parametrize("rows", [1, 5, 31, 32, 33, 70])
@pytest.mark.parametrize("cols", [1, 16, 17, 33, 300])
@pytest.mark.parametrize("k", [32, 96, 576])
def test_product_equals_float64(rows, cols, k):
    g = torch.Generator().manual_seed(rows * 1000 + cols + k)
    hidden = torch.randn(rows, k, generator=g).bfloat16()
    weight = (torch.randn(cols, k, generator=g) * 0.1).bfloat16()
    out = torch.full((rows, cols), float("nan"))
    EXT.amx_bf16_matmul_nt(_bits(hidden), _bits(weight), out.numpy(), 2)
    _check_product(hidden, weight, out)


@needs_amx
def test_strided_operands_and_output():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(40, 100, generator=g).bfloat16()[3:37, 4:68]  # row stride 100, K = 64
    weight = (torch.randn(600, 64, generator=g)).bfloat16()[::2]  # row stride 128
    wide = torch.full((34, 400), 7.0)
    out = wide[:, 50:350]  # row stride 400
    EXT.amx_bf16_matmul_nt(_bits(hidden), _bits(weight), out.numpy(), 1)
    _check_product(hidden, weight, out)
    assert torch.all(wide[:, :50] == 7.0) and torch.all(wide[:, 350:] == 7.0)  # nothing written outside


@needs_amx
@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 80), cols=st.integers(1, 700), kb=st.integers(1, 6), scale=st.sampled_from([1e-3, 1.0, 30.0]))
def test_product_property(rows, cols, kb, scale):
    g = torch.Generator().manual_seed(rows + 7 * cols + kb)
    hidden = (torch.randn(rows, 32 * kb, generator=g) * scale).bfloat16()
    weight = torch.randn(cols, 32 * kb, generator=g).bfloat16()
    out = torch.empty(rows, cols)
    EXT.amx_bf16_matmul_nt(_bits(hidden), _bits(weight), out.numpy(), 2)
    _check_product(hidden, weight, out)


@pytest.mark.skipif(EXT is None, reason="no C++ extension")
def test_bad_shapes_are_named():
    h, w = torch.zeros(4, 48).bfloat16(), torch.zeros(8, 48).bfloat16()
    if not HAS_AMX:
        with pytest.raises((RuntimeError, ValueError)):
            EXT.amx_bf16_matmul_nt(_bits(h), _bits(w), torch.empty(4, 8).numpy(), 1)
        return
    with pytest.raises(ValueError, match="K: expected a positive multiple of 32, got 48"):
        EXT.amx_bf16_matmul_nt(_bits(h), _bits(w), torch.empty(4, 8).numpy(), 1)
    h, w = torch.zeros(4, 64).bfloat16(), torch.zeros(8, 32).bfloat16()
    with pytest.raises(ValueError, match=r"weight: expected 64 columns \(the hidden size\), got 32"):
        EXT.amx_bf16_matmul_nt(_bits(h), _bits(w), torch.empty(4, 8).numpy(), 1)
    with pytest.raises(ValueError, match=r"out: expected shape \(4, 32\), got \(4, 8\)"):
        EXT.amx_bf16_matmul_nt(_bits(h), _bits(torch.zeros(32, 64).bfloat16()), torch.empty(4, 8).numpy(), 1)
    with pytest.raises(ValueError, match="out: expected a 2-d buffer of 4-byte items"):
        EXT.amx_bf16_matmul_nt(_bits(h), _bits(torch.zeros(8, 64).bfloat16()), torch.empty(4, 8).double().numpy(), 1)


FIELDS = ("logprob", "lse", "entropy", "var_logp", "max_logprob", "log1m_p", "margin")


@needs_amx
@pytest.mark.parametrize("case", ["plain", "bias", "huge", "peaked", "ignored", "temperatures"])
def test_fused_head_on_the_tiles_equals_float64(case):
    """token_stats_from_hidden (cpp backend) takes the AMX path for bf16 operands and agrees with
    the float64 reference on the same bf16 values as closely as the fp32 path does."""
    g = torch.Generator().manual_seed(len(case))
    n, d, v = 67, 96, 1000
    hidden = torch.randn(n, d, generator=g)
    weight = torch.randn(v, d, generator=g) * 0.3
    bias = torch.randn(v, generator=g).bfloat16() if case == "bias" else None
    if case == "huge":
        hidden *= 300  # logits in the thousands
    if case == "peaked":
        weight[7] = hidden.mean(0) * 5  # one column far above the rest for most rows
    hidden, weight = hidden.bfloat16(), weight.bfloat16()
    targets = torch.randint(0, v, (n,), generator=g)
    if case == "ignored":
        targets[::3] = -100
    temps = (0.5, 2.0) if case == "temperatures" else ()
    assert api._amx_head(EXT, hidden, weight)
    got = api.token_stats_from_hidden(hidden, weight, targets, bias=bias, backend="cpp", temperatures=temps)
    want = reference.token_stats_from_hidden_reference(
        hidden.double(), weight.double(), targets, None if bias is None else bias.double(), -100, torch.float64, temps)
    scored = targets != -100
    scale = 1.0 + want.lse[scored].abs().max().item()
    for name in FIELDS:
        a, b = getattr(got, name)[scored].double(), getattr(want, name)[scored]
        finite = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), finite), name
        np.testing.assert_allclose(a[finite], b[finite], rtol=2e-5, atol=2e-5 * scale, err_msg=name)
    assert torch.equal(got.argmax[scored], want.argmax[scored])
    assert torch.equal(got.rank[scored], want.rank[scored].to(got.rank.dtype))
    if temps:
        np.testing.assert_allclose(got.tempered.logprob[scored].double(), want.tempered.logprob[scored],
                                   rtol=2e-5, atol=2e-5 * scale)


@needs_amx
def test_tiles_and_fp32_gemm_agree(monkeypatch):
    g = torch.Generator().manual_seed(3)
    hidden, weight = torch.randn(90, 64, generator=g).bfloat16(), torch.randn(3000, 64, generator=g).bfloat16()
    targets = torch.randint(0, 3000, (90,), generator=g)
    tiles = api.token_stats_from_hidden(hidden, weight, targets, backend="cpp")
    monkeypatch.setattr(api, "_amx_head", lambda *a: False)
    gemm = api.token_stats_from_hidden(hidden, weight, targets, backend="cpp")
    for name in FIELDS:
        np.testing.assert_allclose(getattr(tiles, name), getattr(gemm, name), rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.skipif(EXT is None, reason="no C++ extension")
def test_the_tiles_are_taken_only_where_they_apply():
    bf = torch.zeros(4, 64).bfloat16()
    assert not api._amx_head(EXT, bf.float(), torch.zeros(8, 64))  # fp32
    assert not api._amx_head(EXT, torch.zeros(4, 48).bfloat16(), torch.zeros(8, 48).bfloat16())  # K % 32
    assert api._amx_head(EXT, bf, torch.zeros(8, 64).bfloat16()) == HAS_AMX
    off = subprocess.run([sys.executable, "-c", "from mia_fast.backends import cpp_extension as c; "
                          "print(c().amx_bf16_available())"], env={**os.environ, "MIA_FAST_AMX": "0"},
                         capture_output=True, text=True, check=True)
    assert off.stdout.strip() == "False"
