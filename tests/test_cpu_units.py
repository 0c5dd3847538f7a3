"""bf16 on CPUs with matrix units: detection, the head's GEMM on the units, what the score command says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mia_fast import api
from mia_fast.cli import dtype_note
from mia_fast.cpu_units import cpu_flags, matrix_units

SAPPHIRE_RAPIDS = ("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 "
                   "avx512_fp16 amx_bf16 amx_tile amx_int8\n\nprocessor\t: 1\nflags\t\t: fpu\n")
ZEN3 = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\n"


def test_flags_and_units_are_read_from_cpuinfo():
    assert "amx_tile" in cpu_flags(SAPPHIRE_RAPIDS) and "amx_int8" in cpu_flags(SAPPHIRE_RAPIDS)
    assert cpu_flags("no flags line\n") == frozenset()
    spr = matrix_units(cpu_flags(SAPPHIRE_RAPIDS), torch_bf16=True)
    assert spr.units == ("amx_tile", "amx_bf16", "avx512_bf16", "avx512_fp16") and spr.bf16
    assert spr.summary().startswith("AMX tiles, AMX-BF16, AVX512-BF16, AVX512-FP16 (torch runs bf16 matrix products")
    unused = matrix_units(cpu_flags(SAPPHIRE_RAPIDS), torch_bf16=False)
    assert not unused.bf16 and "torch does not use them" in unused.summary()
    zen3 = matrix_units(cpu_flags(ZEN3), torch_bf16=False)
    assert zen3.units == () and not zen3.bf16 and zen3.summary().startswith("none (bf16 is emulated here")
    here = matrix_units()  # this machine, whatever it is
    assert isinstance(here.torch_capability, str) and set(here.units) <= set(cpu_flags())


def test_info_reports_the_matrix_units():
    from mia_fast.info import collect_info, format_info

    info = collect_info()
    assert set(info["cpu"]["matrix_units"]) <= set(cpu_flags())
    assert "matrix units: " in format_info(info)
    from mia_fast.backends import cpp_extension

    ext = cpp_extension()
    assert info["cpu"]["amx_head"] == bool(ext and ext.amx_bf16_available())
    assert ("on the AMX tiles" in format_info(info)) == info["cpu"]["amx_head"]
    if info["cpu"]["amx_head"]:  # the tiles need AMX-BF16 in the CPU flags
        assert {"amx_tile", "amx_bf16"} <= set(cpu_flags())


def test_the_score_command_names_the_faster_setting(monkeypatch):
    import mia_fast.cpu_units as cu

    monkeypatch.setattr(cu, "cpu_flags", lambda: cpu_flags(SAPPHIRE_RAPIDS))
    monkeypatch.setattr(cu, "_torch_bf16_on_units", lambda: True)
    faster = dtype_note("fp32", "cpu")
    assert "--dtype bf16" in faster and "fp32 stays the default" in faster and "--compare-dtype bf16" in faster
    assert "AUC" in faster  # the cost is named with the speed
    assert "--compare-dtype fp32" in dtype_note("bf16", "cpu")
    assert dtype_note("fp32", "cuda") is None and dtype_note("fp16", "cpu") is None
    monkeypatch.setattr(cu, "cpu_flags", lambda: cpu_flags(ZEN3))
    monkeypatch.setattr(cu, "_torch_bf16_on_units", lambda: False)
    assert dtype_note("fp32", "cpu") is None
    assert "emulated and slower than fp32" in dtype_note("bf16", "cpu")


def test_the_note_follows_a_successful_run_only(monkeypatch, tmp_path, capsys):
    import lm_fixtures as fx
    import mia_fast.cpu_units as cu
    from mia_fast.cli import main

    monkeypatch.setattr(cu, "cpu_flags", lambda: cpu_flags(SAPPHIRE_RAPIDS))
    monkeypatch.setattr(cu, "_torch_bf16_on_units", lambda: True)
    fx.save_gpt2(tmp_path / "m")
    corpus = tmp_path / "c.txt"
    corpus.write_text("one line of text\nanother line\n")
    capsys.readouterr()  # what saving the model printed
    assert main(["score", "--model", str(tmp_path / "m"), "--input", str(corpus), "--out", str(tmp_path / "o")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("scored 2 rows") and err.startswith("note: this CPU has bf16 matrix units")
    assert main(["score", "--model", str(tmp_path / "absent"), "--input", str(corpus), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mia-fast score: error: ") and "note:" not in err


@pytest.mark.parametrize("units", [False, True])
def test_bf16_head_on_the_matrix_units_equals_fp32_on_the_same_operands(monkeypatch, units):
    """bf16 operands are exact in fp32, so the GEMM on the units (fp32 accumulation, fp32 tiles)
    gives what the fp32 path gives on the upcast operands, up to the order of the sums."""
    monkeypatch.setattr(api, "bf16_matrix_units", lambda: units)
    g = torch.Generator().manual_seed(0)
    n, d, v = 70, 48, 3000
    hidden = (torch.randn(n, d, generator=g) * 2).bfloat16()
    weight = (torch.randn(v, d, generator=g) * 0.5).bfloat16()
    targets = torch.randint(0, v, (n,), generator=g)
    targets[3] = -100
    before = torch.backends.mkldnn.matmul.fp32_precision
    got = api.token_stats_from_hidden(hidden, weight, targets, backend="cpp")
    assert torch.backends.mkldnn.matmul.fp32_precision == before  # restored
    want = api.token_stats_from_hidden(hidden.float(), weight.float(), targets, backend="cpp")
    for name in ("logprob", "lse", "entropy", "var_logp"):
        a, b = getattr(got, name), getattr(want, name)
        np.testing.assert_allclose(a[targets != -100], b[targets != -100], rtol=1e-5, atol=1e-5, err_msg=name)
    assert torch.equal(got.rank, want.rank)


def test_bad_dtype_names_the_choices():
    from mia_fast.scoring.lm import torch_dtype

    with pytest.raises(ValueError, match=r"dtype: expected one of \[.*'bf16'.*\], got 'int8'"):
        torch_dtype("int8")
