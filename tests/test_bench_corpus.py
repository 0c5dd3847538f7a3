"""Smoke test of `benchmarks/bench_corpus.py`: its ``--smoke`` mode runs end to end on a tiny random model.

No timing is asserted (the machines are shared); only that the benchmark runs, checks that its
providers compute the same losses, measures memory in a worker subprocess and prints its table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_corpus.py"


def test_smoke_run_prints_its_table(tmp_path):
    out_md, out_json = tmp_path / "corpus.md", tmp_path / "corpus.json"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out_md), "--json", str(out_json)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| threads | provider | tokens/s | × recipe | outside body |" in proc.stdout
    for row in ("mia_fast (fused head)", "mia_fast --head logits", "usual recipe"):
        assert f"| 1 | {row}" in proc.stdout
    assert out_md.read_text() == proc.stdout
    result = json.loads(out_json.read_text())["result"]
    assert result["agreement_ok"] is True
    assert result["head"] == "fused"
    memory = result["providers"]["mia_fast"]["memory"]
    assert "failed" not in memory and memory["extra_bytes"] >= 0
