"""Smoke tests of the paper-shaped reproductions in `benchmarks/`: each ``--smoke`` run ends with exit 0
and prints its table; the leave-one-out LiRA fit matches the reference code's.

Attack quality is not asserted (tiny models, few samples): only that the numbers are sane.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run_smoke(script: str, out_md: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--smoke", "--out", str(out_md)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out_md.read_text() == proc.stdout
    return proc


def _sane(metrics: dict) -> None:
    assert 0.0 <= metrics["auc"] <= 1.0
    assert metrics["auc_ci"] is None or metrics["auc_ci"][0] <= metrics["auc"] <= metrics["auc_ci"][1]
    assert 0.5 <= metrics["balanced_accuracy"] <= 1.0
    assert 0.0 <= metrics["tpr@0.1%fpr"] <= metrics["tpr@1%fpr"] <= 1.0


def test_lira_mnist_smoke(tmp_path):
    proc = _run_smoke("repro_lira_mnist.py", tmp_path / "lira.md")
    out = proc.stdout
    assert "| attack (reference-code name) | mia_fast | AUC [95% CI] |" in out
    for name in ("Ours (online)", "Ours (online, fixed variance)", "Ours (offline)",
                 "Ours (offline, fixed variance)", "Global threshold"):
        assert f"| {name} |" in out
    assert "Resolution floor" in out and "tensorflow/privacy" in out
    (result,) = json.loads((tmp_path / "lira.json").read_text())["runs"]
    assert result["config"]["data"].startswith("sklearn digits")
    assert result["skipped"] == {}
    for m in result["metrics"].values():
        _sane(m)
        assert len(m["per_target"]["auc"]) == len(result["config"]["targets"])


def test_llm_attacks_smoke(tmp_path):
    proc = _run_smoke("repro_llm_attacks.py", tmp_path / "llm.md")
    out = proc.stdout
    assert "| attack | Min-K%++ paper name | AUC [95% CI] |" in out
    for row in ("| `loss` | Loss |", "| `min_k_pp_0.2` | Min-K%++ |", "| `lira_online [neg_loss]` |",
                "| `lira_online [phi_mean]` |", "| `lira_offline [phi_mean]` |"):
        assert row in out
    result = json.loads((tmp_path / "llm.json").read_text())
    assert result["meta"]["n_reference"] == 4
    for m in result["metrics"].values():
        _sane(m)


def test_llm_attacks_reuses_saved_tables(tmp_path):
    # --reuse reads a directory laid out as `mia-fast demo` saves it; planted tables, no training
    import pandas as pd

    from mia_fast.audit.report import save_keep
    from mia_fast.audit.shadow import make_keep

    rng = np.random.default_rng(0)
    n, k = 60, 4
    keep = make_keep(k + 1, n, 0)
    ids = [f"pool-{i}" for i in range(n)]
    scores = tmp_path / "demo" / "scores"
    scores.mkdir(parents=True)
    for m in range(k + 1):
        loss = 3.0 - 0.5 * keep[m] + 0.3 * rng.normal(size=n)
        table = pd.DataFrame({"id": ids, "n_tokens": 20, "loss": loss, "zlib": loss / 80.0,
                              "min_k_0.2": -loss - 1.0, "min_k_pp_0.2": -loss / 2.0, "entropy_mean": 2.0,
                              "phi_mean": -loss, "top1_acc": 0.3, "log_rank_mean": 1.0})
        if m == 0:
            table["label"] = keep[0].astype(np.int8)
        table.to_parquet(scores / ("target.parquet" if m == 0 else f"ref_{m:03d}.parquet"), index=False)
    save_keep(scores / "keep.npz", keep[1:], ids)
    out_md = tmp_path / "reuse.md"
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "repro_llm_attacks.py"), "--reuse", str(tmp_path / "demo"),
                           "--out", str(out_md)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out_md.with_suffix(".json").read_text())
    assert result["reused"] and result["n_samples"] == n
    assert "lira_online [phi_mean]" in result["metrics"] and "rmia" not in result["metrics"]  # no population
    for m in result["metrics"].values():
        _sane(m)
    assert result["metrics"]["loss"]["auc"] > 0.8  # the planted signal


def test_equal_counts_matches_the_reference_code():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from bench_attacks import reference_generate_ours
        from repro_lira_mnist import equal_counts
    finally:
        sys.path.remove(str(BENCHMARKS))
    from mia_fast.attacks import LiRA
    from mia_fast.audit.shadow import make_keep

    rng = np.random.default_rng(1)
    n, q = 300, 2
    keep = make_keep(9, n, 3)
    stats = rng.normal(size=(9, q, n)) + 0.5 * keep[:, None, :]
    refs = np.arange(1, 9)  # leave-one-out: model 0 is the target, members have one IN reference fewer
    ref_stats, ref_keep = equal_counts(stats[refs], keep[refs])
    assert ref_stats.shape == (7, q, n) and (ref_keep.sum(0) == 3).all()
    for offline in (False, True):
        mode = "offline_logpdf" if offline else "online"
        ours = LiRA(mode=mode, variance="per_example").fit(ref_stats, ref_keep).score_samples(stats[0])
        theirs = reference_generate_ours(keep[refs], stats[refs].transpose(0, 2, 1), stats[0].T, offline)
        np.testing.assert_allclose(ours, -theirs, rtol=1e-12, atol=1e-12)



def test_signals_smoke(tmp_path):
    proc = _run_smoke("repro_signals.py", tmp_path / "signals.md")
    for attack in ("loss", "temperature (slope)", "loss after prefix 16", "recall", "grad_norm (all)"):
        assert f"| 3 | {attack} |" in proc.stdout
    rows = json.loads((tmp_path / "signals.json").read_text())["rows"]
    assert len(rows) == 9
    for r in rows:
        assert 0.0 <= r["auc"] <= 1.0 and r["auc_ci"][0] <= r["auc"] <= r["auc_ci"][1]
