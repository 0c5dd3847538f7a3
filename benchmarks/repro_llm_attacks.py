#!/usr/bin/env python
"""The Min-K%++ paper's comparison (Zhang et al. 2024) on tiny GPT-2 models, plus LiRA on LMs.

"Min-K%++: Improved Baseline for Detecting Pre-Training Data from Large Language Models" compares
LOSS, zlib, Min-K%, Min-K%++ and a reference-model attack by detection AUROC on WikiMIA. This
script runs the same attacks with `mia_fast` on the models of `mia-fast demo` (`mia_fast.audit.demo`):
a target GPT-2 and K reference GPT-2s trained on random halves of Python's documentation
paragraphs (``make_keep(K + 1, N)``; model 0 is the target, its half gives the labels), scored
through the fused kernels (`mia_fast.scoring.scorer.TextScorer`). It adds what no LLM toolkit offers:
LiRA online and offline over the reference models, with both per-sequence statistics of
`mia_fast.audit.report.LM_STATISTICS` (``neg_loss`` = -mean token loss, ``phi_mean`` = mean token
``log p - log(1 - p)``), plus the shadow classifier and RMIA that `mia_fast.audit.report.run_attacks`
runs. Two extra rows fit LiRA online on equal IN / OUT counts per sample (see
``repro_lira_mnist.equal_counts``): in this leave-one-out design a member of the target has one
IN reference fewer than a non-member.

Usage::

    python benchmarks/repro_llm_attacks.py                        # trains the demo's 1 + 8 models (resumable),
                                                                  # writes benchmarks/results/repro_llm_attacks.{md,json}
    mia-fast demo --out mia_fast_demo && \\
    python benchmarks/repro_llm_attacks.py --reuse mia_fast_demo  # seconds: the demo's saved tables
    python benchmarks/repro_llm_attacks.py --smoke                # tiny pool, 1 + 4 tiny models; writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402
from repro_lira_mnist import equal_counts  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RESULT_MD = RESULTS / "repro_llm_attacks.md"
FPRS = (0.001, 0.01, 0.05)
K_FRACTION = 0.2  # Min-K% and Min-K%++ fraction (the demo's tables hold 0.05 ... 0.5)

SMOKE = {"reference_models": 4, "pool": 120, "preset": "quick", "epochs": 2}

# Detection AUROC (%) on WikiMIA_length32, Min-K%++ project page (https://zjysteven.github.io/mink-plus-plus/,
# index.html of github.com/zjysteven/mink-plus-plus at commit 2ed8e09), the paper's WikiMIA table
# (arXiv:2404.02936). "Ref" there is ll(target) - ll(smaller pretrained model of the family).
PUBLISHED_PAGE = ("Min-K%++ project page (zjysteven.github.io/mink-plus-plus; index.html of "
                  "github.com/zjysteven/mink-plus-plus, commit 2ed8e09), WikiMIA_length32 AUROC table of the paper "
                  "(arXiv:2404.02936)")
PUBLISHED_AUROC: dict[str, dict[str, float]] = {
    "Pythia-6.9B": {"loss": 63.8, "reference_loss_diff": 63.6, "zlib": 64.3, "min_k": 66.3, "min_k_pp": 70.3},
    "LLaMA-13B": {"loss": 67.5, "reference_loss_diff": 57.9, "zlib": 67.8, "min_k": 68.0, "min_k_pp": 84.8},
}
# github.com/zjysteven/mink-plus-plus, results/WikiMIA_length32/pythia-2.8b.csv (commit 62281ab): the
# repository's sample output of run.py / run_ref.py, AUROC and TPR at FPR <= 5%, k = 20%.
PUBLISHED_CSV = ("github.com/zjysteven/mink-plus-plus results/WikiMIA_length32/pythia-2.8b.csv (commit 62281ab), "
                 "sample output of run.py and run_ref.py, k = 20%")
PUBLISHED_PYTHIA_2_8B: dict[str, tuple[float, float]] = {  # (AUROC %, TPR@5%FPR %)
    "loss": (61.4, 14.7), "zlib": (62.1, 15.8), "min_k": (61.7, 16.5), "min_k_pp": (64.0, 10.6),
    "reference_loss_diff": (61.3, 6.2),
}


# --------------------------------------------------------------------------------------------
# tables


def scores_dir(path: Path) -> Path:
    """The ``scores/`` folder of a demo output directory (or the folder itself)."""
    for candidate in (path / "scores", path):
        if (candidate / "target.parquet").is_file() and (candidate / "keep.npz").is_file():
            return candidate
    raise FileNotFoundError(f"--reuse: expected a `mia-fast demo` output directory (with scores/target.parquet and "
                            f"scores/keep.npz), got {path}")


def load_audit(directory: Path) -> Any:
    """`mia_fast.audit.report.AuditData` of the tables the demo saves (target, references, keep, population)."""
    import pandas as pd

    from mia_fast.audit.report import AuditData, load_keep

    target = pd.read_parquet(directory / "target.parquet")
    ref_paths = sorted(directory.glob("ref_*.parquet"))
    references = [pd.read_parquet(p) for p in ref_paths]
    keep = load_keep(directory / "keep.npz", target["id"].astype(str).tolist())
    pop = directory / "population"
    population_target, population_references = None, []
    if (pop / "target.parquet").is_file():
        population_target = pd.read_parquet(pop / "target.parquet")
        population_references = [pd.read_parquet(pop / p.name) for p in ref_paths]
    return AuditData(target=target, references=references, keep=keep, population_target=population_target,
                     population_references=population_references)


def build_smoke_tables(out: Path, n_reference: int, seed: int) -> dict[str, Any]:
    """The demo's pipeline on a tiny pool with tiny models; writes ``out/scores`` in the demo's layout."""
    from mia_fast.audit.report import save_keep
    from mia_fast.audit.data import pydoc_paragraphs
    from mia_fast.audit.demo import _score_tables, _split_pool
    from mia_fast.audit.shadow import make_keep
    from mia_fast.audit.shadow_lm import lm_preset, train_reference_lms

    pool, population = _split_pool(pydoc_paragraphs(), SMOKE["pool"], seed)
    tokenizer, config, train_kwargs = lm_preset(SMOKE["preset"], pool + population)
    train_kwargs["epochs"] = SMOKE["epochs"]
    keep = make_keep(n_reference + 1, len(pool), seed)
    dirs = train_reference_lms(pool, keep, out / "models", config=config, tokenizer=tokenizer,
                               train_kwargs=train_kwargs, seed=seed)
    ids = [f"pool-{i}" for i in range(len(pool))]
    scored = _score_tables(dirs, pool + population, ids + [f"population-{i}" for i in range(len(population))],
                           train_kwargs["max_length"])
    scores = out / "scores"
    (scores / "population").mkdir(parents=True, exist_ok=True)
    for k, table in enumerate(scored):
        name = "target" if k == 0 else dirs[k].name
        head = table.iloc[: len(pool)].reset_index(drop=True)
        if k == 0:
            head = head.assign(label=keep[0].astype(np.int8))
        head.to_parquet(scores / f"{name}.parquet", index=False)
        table.iloc[len(pool):].reset_index(drop=True).to_parquet(scores / "population" / f"{name}.parquet",
                                                                 index=False)
    save_keep(scores / "keep.npz", keep[1:], ids)
    return {"pool": len(pool), "population": len(population), "n_reference": n_reference, "seed": seed,
            "preset": SMOKE["preset"], "train": train_kwargs,
            "config": {"n_layer": config.n_layer, "n_embd": config.n_embd, "vocab_size": config.vocab_size}}


# --------------------------------------------------------------------------------------------
# attacks

# (key in our scores, name in the Min-K%++ paper or None, key of the published numbers or None)
ROWS: tuple[tuple[str, Optional[str], Optional[str]], ...] = (
    ("loss", "Loss", "loss"),
    ("zlib", "Zlib", "zlib"),
    (f"min_k_{K_FRACTION:g}", "Min-K%", "min_k"),
    (f"min_k_pp_{K_FRACTION:g}", "Min-K%++", "min_k_pp"),
    ("reference_loss_diff", "Ref", "reference_loss_diff"),
    ("reference_logppl_ratio", None, None),
    ("shadow_classifier", None, None),
    ("rmia", None, None),
)
LIRA_NAMES = ("lira_online", "lira_online_fixed_var", "lira_offline", "lira_offline_fixed_var")


def attack_all(data: Any, seed: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Scores of every row: `run_attacks` with ``neg_loss``, its LiRA rows again with ``phi_mean``,
    and LiRA online on equal IN / OUT counts with each statistic."""
    from mia_fast.attacks import LiRA
    from mia_fast.audit.report import LM_STATISTICS, run_attacks

    scores, notes = run_attacks(data, statistic="neg_loss", k=K_FRACTION, random_state=seed)
    phi_scores, phi_notes = run_attacks(data, statistic="phi_mean", k=K_FRACTION, random_state=seed)
    out = {k: v for k, v in scores.items() if k not in LIRA_NAMES}
    out_notes = {k: v for k, v in notes.items() if k not in LIRA_NAMES}
    for statistic, (s, n) in (("neg_loss", (scores, notes)), ("phi_mean", (phi_scores, phi_notes))):
        for name in LIRA_NAMES:
            key = f"{name} [{statistic}]"
            if name in s:
                out[key] = s[name]
            out_notes[key] = n.get(name, "")
        column, sign = LM_STATISTICS[statistic]
        ref_stats = np.stack([sign * np.asarray(r[column], dtype=np.float64) for r in data.references])
        target = sign * np.asarray(data.target[column], dtype=np.float64)
        key = f"lira_online_equal_counts [{statistic}]"
        try:
            lira = LiRA(mode="online", variance="global").fit(*equal_counts(ref_stats[:, None, :], data.keep))
        except ValueError as exc:
            out_notes[key] = f"not run: {exc}"
            continue
        out[key] = lira.score_samples(target[None, :])
        out_notes[key] = (f"online, variance=global, statistic={statistic}, each sample's IN / OUT values cut to the "
                          "smallest counts over samples (as LiRA's reference code)")
    return out, out_notes


# --------------------------------------------------------------------------------------------
# report


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def row_order(scores: dict[str, np.ndarray]) -> list[tuple[str, Optional[str], Optional[str]]]:
    rows = [r for r in ROWS if r[0] in scores]
    lira = [k for k in scores if k.startswith("lira_")]
    return rows + [(k, None, None) for k in lira]


def table(metrics: dict[str, dict], scores: dict[str, np.ndarray], notes: dict[str, str]) -> str:
    head = ["attack", "Min-K%++ paper name", "AUC [95% CI]", "TPR@5%FPR", "TPR@1%FPR", "TPR@0.1%FPR",
            "published AUROC Pythia-6.9B (analog)", "published AUROC LLaMA-13B (analog)",
            "published AUROC / TPR@5%FPR Pythia-2.8B (analog)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for key, paper, pub in row_order(scores):
        m = metrics[key]
        ci = m["auc_ci"]
        below = m.get("fprs_below_floor", [])
        cells = [f"`{key}`", paper or "-", f"{m['auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]",
                 _pct(m["tpr@5%fpr"]), _pct(m["tpr@1%fpr"]),
                 _pct(m["tpr@0.1%fpr"]) + (" †" if 0.001 in below else "")]
        if pub:
            cells += [f"{PUBLISHED_AUROC['Pythia-6.9B'][pub]:.1f}%", f"{PUBLISHED_AUROC['LLaMA-13B'][pub]:.1f}%",
                      "{:.1f}% / {:.1f}%".format(*PUBLISHED_PYTHIA_2_8B[pub])]
        else:
            cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def length_correlation(data: Any, scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Spearman correlation of each reference-free score with the text's token count, over non-members.

    WikiMIA_length32 holds snippets of one length; these paragraphs range from 60 to 800
    characters, and a score that divides by a length measure (zlib) ranks by length first.
    """
    from scipy.stats import spearmanr

    out = data.labels == 0
    n_tokens = np.asarray(data.target["n_tokens"], dtype=np.float64)[out]
    names = ("loss", "zlib", f"min_k_{K_FRACTION:g}", f"min_k_pp_{K_FRACTION:g}")
    return {k: float(spearmanr(scores[k][out], n_tokens).statistic) for k in names if k in scores}


def checks(metrics: dict[str, dict], rho: dict[str, float]) -> list[str]:
    """The paper's ordering (by AUC) and where LiRA stands, on these numbers."""
    auc = {k: m["auc"] for k, m in metrics.items()}
    k = f"{K_FRACTION:g}"
    out = []
    mk, mkpp, loss, zlib = auc.get(f"min_k_{k}"), auc.get(f"min_k_pp_{k}"), auc.get("loss"), auc.get("zlib")
    if None not in (mk, mkpp, loss, zlib):
        out.append(f"Min-K%++ > Min-K% (paper: yes on every WikiMIA model): {'yes' if mkpp > mk else 'no'} "
                   f"({mkpp:.3f} vs {mk:.3f})")
        out.append(f"Min-K% > LOSS: {'yes' if mk > loss else 'no'} ({mk:.3f} vs {loss:.3f}); "
                   f"zlib > LOSS: {'yes' if zlib > loss else 'no'} ({zlib:.3f} vs {loss:.3f})")
    free = {name: auc[name] for name in ("loss", "zlib", f"min_k_{k}", f"min_k_pp_{k}") if name in auc}
    lira = {name: v for name, v in auc.items() if name.startswith("lira_")}
    if free and lira:
        best_free = max(free, key=free.get)
        best_lira = max(lira, key=lira.get)
        out.append(f"best LiRA variant {best_lira} {lira[best_lira]:.3f} vs best reference-free attack "
                   f"{best_free} {free[best_free]:.3f}")
    if rho:
        out.append("Spearman correlation of the score with the number of tokens, non-members: "
                   + ", ".join(f"{k} {v:+.2f}" for k, v in rho.items()))
    for name in LIRA_NAMES:
        a, b = auc.get(f"{name} [neg_loss]"), auc.get(f"{name} [phi_mean]")
        if None not in (a, b):
            out.append(f"{name}: neg_loss {a:.3f}, phi_mean {b:.3f}")
    for statistic in ("neg_loss", "phi_mean"):
        a, b = auc.get(f"lira_offline [{statistic}]"), auc.get(f"lira_offline_fixed_var [{statistic}]")
        if a is not None and a == b:
            out.append(f"lira_offline and lira_offline_fixed_var [{statistic}] coincide: offline_cdf with one "
                       "scale for every sample (variance 'global', which 'auto' picks below 64 reference models, "
                       "or 'fixed') ranks by t - median OUT, whatever the scale")
    return out


def markdown(result: dict) -> str:
    meta, machine, sec = result["meta"], result["machine"], result["seconds"]
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in sec.items())
    cfg = meta.get("config", {})
    lines = [
        "# Min-K%++ paper's comparison on tiny GPT-2 models, with LiRA (analog of Zhang et al. 2024)",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {machine.get('cpu_model')}, {machine.get('affinity_cores')} usable cores, torch "
        f"{machine.get('torch')} ({result['threads']} thread(s)), SIMD {machine.get('simd_level')}  ",
        f"Time: {timing}{' (models and tables from ' + result['source'] + ')' if result['reused'] else ''}",
        "",
        f"Setup: `mia-fast demo` pipeline (`mia_fast.audit.demo`): {meta.get('pool')} paragraphs of Python's "
        f"`pydoc_data.topics`; 1 target + {meta.get('n_reference')} reference GPT-2 models "
        f"({cfg.get('n_layer')} layers, d = {cfg.get('n_embd')}, vocabulary {cfg.get('vocab_size')}; preset "
        f"`{meta.get('preset')}`, training {meta.get('train')}) on the halves of `make_keep(K + 1, N, "
        f"seed={meta.get('seed')})`, model 0 the target; {meta.get('population')} further paragraphs no model "
        f"trained on (RMIA's population). {result['n_samples']} samples, {result['n_members']} members; "
        f"resolution floor FPR = 1/{result['n_nonmembers']} = {100 / result['n_nonmembers']:.2f}%, a TPR at a lower "
        "bound (†) is the TPR at FPR = 0. Min-K% and Min-K%++ with k = 20%.",
        "",
        table(result["metrics"], result["scores_keys"], result["notes"]),
        "",
        f"Published numbers (analog: pretrained LLMs on WikiMIA_length32, 776 Wikipedia snippets of 32 words "
        f"whose membership is dated by the model's training cut-off, not random halves): AUROC of Pythia-6.9B and "
        f"LLaMA-13B from the {PUBLISHED_PAGE}; Pythia-2.8B from {PUBLISHED_CSV}. The paper's \"Ref\" calibrates "
        "with one smaller pretrained model of the same family; `reference_loss_diff` here uses the mean loss of "
        "the K reference models (each sample IN for about half of them).",
        "",
        "## Checks",
        "",
    ] + [f"- {c}" for c in result["checks"]] + ["", "## Variants", ""]
    lines += [f"- `{k}`: {v}" for k, v in result["notes"].items() if v] + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference-models", type=int, default=None,
                   help="K reference models (default 8, as the demo; --smoke 4); ignored with --reuse")
    p.add_argument("--reuse", default=None, help="a `mia-fast demo` output directory: attack its saved scores/ tables")
    p.add_argument("--smoke", action="store_true", help="tiny pool and models, seconds; writes nothing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine more threads contend)")
    p.add_argument("--work-dir", default=None,
                   help="demo output directory to train into (resumable; default in the system's temporary directory)")
    p.add_argument("--out", default=None,
                   help=f"markdown report; a .json beside it (default without --smoke: {os.path.relpath(RESULT_MD)})")
    args = p.parse_args(argv)
    if args.reference_models is None:
        args.reference_models = SMOKE["reference_models"] if args.smoke else 8
    if args.reference_models < 2:
        p.error(f"--reference-models: expected at least 2, got {args.reference_models}")
    if args.out is None and not args.smoke:
        args.out = str(RESULT_MD)
    return args


def prepare(args: argparse.Namespace, scratch: Path) -> tuple[Path, dict, dict[str, float], bool]:
    """The scores/ folder to attack, the run's description, seconds spent, and whether it was reused."""
    if args.reuse:
        directory = Path(args.reuse)
        scores = scores_dir(directory)
        meta_file = scores.parent / "metrics.json"
        meta = json.loads(meta_file.read_text()).get("meta", {}) if meta_file.is_file() else {}
        return scores, meta, {}, True
    t0 = time.perf_counter()
    if args.smoke:
        meta = build_smoke_tables(scratch, args.reference_models, args.seed)
        return scratch / "scores", meta, {"train + score": time.perf_counter() - t0}, False
    from mia_fast.audit.demo import run_demo

    out = Path(args.work_dir) if args.work_dir else (
        Path(tempfile.gettempdir()) / "mia_fast_repro" / f"llm_demo_K{args.reference_models}_seed{args.seed}")
    C.log(f"running the demo pipeline into {out} (models are kept; a rerun skips them)")
    demo = run_demo(out, n_reference=args.reference_models, seed=args.seed, on_step=C.log)
    meta = json.loads((out / "metrics.json").read_text()).get("meta", {})
    seconds = {f"demo {k}": v for k, v in demo["seconds"].items() if k != "total"}
    return out / "scores", meta, seconds, False


def main(argv: Optional[Sequence[str]] = None) -> int:
    from mia_fast.metrics import ResolutionWarning, evaluate

    args = parse_args(argv)
    threads = C.set_threads(args.threads)
    command = C.command_line(__file__, argv)
    with tempfile.TemporaryDirectory(prefix="mia_fast_repro_llm_") as scratch:
        scores_path, meta, seconds, reused = prepare(args, Path(scratch))
        t0 = time.perf_counter()
        data = load_audit(scores_path)
        scores, notes = attack_all(data, args.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResolutionWarning)  # the floor is stated in the report
            metrics = {k: evaluate(data.labels, s, fprs=FPRS) for k, s in scores.items()}
        rho = length_correlation(data, scores)
        seconds["attacks + metrics"] = time.perf_counter() - t0
    result = {
        "command": command,
        "machine": C.machine_info(),
        "threads": threads,
        "reused": reused,
        "source": str(scores_path) if reused else None,
        "meta": meta,
        "n_samples": int(data.labels.size),
        "n_members": int(data.labels.sum()),
        "n_nonmembers": int((data.labels == 0).sum()),
        "metrics": metrics,
        "notes": notes,
        "length_spearman_nonmembers": rho,
        "checks": checks(metrics, rho),
        "published": {"auroc_wikimia_length32": PUBLISHED_AUROC, "auroc_source": PUBLISHED_PAGE,
                      "pythia_2_8b_auroc_tpr5": PUBLISHED_PYTHIA_2_8B, "pythia_2_8b_source": PUBLISHED_CSV},
        "seconds": seconds,
    }
    report = markdown({**result, "scores_keys": scores})
    sys.stdout.write(report)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        C.log(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
