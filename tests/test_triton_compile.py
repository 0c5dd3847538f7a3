"""The Triton kernels build for a real GPU, checked on a machine without one.

The interpreter tests (`test_triton_kernels.py`, `test_fused_linear.py`) check what the kernels
compute, but the interpreter accepts code that the compiler rejects. Here every launch variant the
host code produces (dtypes, one program per row or split rows with the merge kernel,
temperatures, bias, both loop variants) is compiled by the installed triton down to cubins for
sm_90 (H100/H200) and sm_80 (A100, no wgmma: other fused tiles)
(`mia_fast.kernels.cross_compile`), in a subprocess, since this suite's other Triton tests set
``TRITON_INTERPRET=1`` for the whole process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (the gpu extra)")


def _bundled_cuobjdump() -> bool:
    spec = importlib.util.find_spec("triton")
    return (Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists()


@pytest.mark.skipif(importlib.util.find_spec("triton") is None or not _bundled_cuobjdump(),
                    reason="needs triton's NVIDIA backend tools (x86-64 or aarch64 Linux wheels)")
def test_every_launch_variant_compiles_for_sm90_and_sm80():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the default of triton <= 3.9, said aloud
    done = subprocess.run(
        [sys.executable, "-m", "mia_fast.kernels.cross_compile", "--arch", "90", "--arch", "80"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    labels = {line.split(" | ")[0].removeprefix("| ") for line in rows}
    for dtype in ("float32", "bfloat16", "float16"):  # the host calls of `default_cases`
        for kind in ("row", "split"):
            assert {f"token_stats {dtype} {kind}", f"token_stats {dtype} {kind} temps"} <= labels
        assert {f"token_stats {dtype} row slot", f"token_stats {dtype} split slot temps"} <= labels
        assert {f"fused {dtype}", f"fused {dtype} bias", f"fused {dtype} temps", f"fused {dtype} bias temps"} <= labels
    # per arch and dtype: 2 + 1 one-program launches, 2 x 2 + 2 split launches (with the merge
    # kernel), 4 x 2 fused
    assert len(rows) == 2 * 3 * (3 + 6 + 8), done.stdout
    assert {line.split(" | ")[2] for line in rows} == {"90", "80"}
    for line in rows:
        registers = int(line.split(" | ")[5])
        assert 0 < registers <= 255, line
