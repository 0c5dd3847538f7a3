#!/usr/bin/env python
"""Time of the reference-model attacks (LiRA, RMIA) at scale, against straightforward baselines
measured in the same run on the same inputs.

Cases (N samples, K reference models, Z population samples; every sample IN exactly K/2 models):

* ``lira online``          ``LiRA("online", variance="per_example")``: fit + score_samples;
  baseline: the reference code's ``generate_ours`` (tensorflow/privacy research/mi_lira_2021,
  a Python loop over samples to gather IN/OUT values, then numpy and ``scipy.stats.norm``);
* ``lira offline_logpdf``  the offline two-sided attack; baseline ``generate_ours_offline``;
* ``lira offline_cdf``     the offline one-sided attack (same baseline as above, for scale);
* ``rmia offline``         ``RMIA(offline=True)``: fit + score_samples (sort + searchsorted);
  baseline: the N x Z likelihood-ratio matrix, in row blocks of 1000 (the published definition).

Providers of a case are timed interleaved (rotating the order every round) so that ratios
compare samples taken under the same machine load; times are medians with min-max and IQR.
"max |Δ|" checks that the attack and its baseline give the same scores (baselines are "lower =
member" where the reference code is, and are negated for the comparison).

Usage::

    python benchmarks/bench_attacks.py            # N=100000, K=64, Z=10000; writes
                                                  # benchmarks/results/cpu_bench_attacks.md
    python benchmarks/bench_attacks.py --quick    # N=5000, K=16, Z=1000, < 30 s, writes nothing
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

FULL = {"samples": 100_000, "models": 64, "population": 10_000, "repeats": 5}
QUICK = {"samples": 5_000, "models": 16, "population": 1_000, "repeats": 3}
RESULT_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "cpu_bench_attacks.md")
TARGET_LIRA_S = 3.0  # printed beside the results, never adjusted to pass


def make_inputs(n: int, k: int, z: int, seed: int = 0) -> dict:
    """LiRA statistics (K, N), keep (K, N), target (N,), and RMIA probabilities with a population."""
    rng = np.random.default_rng(seed)
    keep = rng.random((k, n)).argsort(axis=0) < k // 2
    mu = rng.normal(0.0, 2.0, size=n)
    spread = rng.uniform(0.5, 1.5, size=n)
    reference = mu + 1.0 * keep + spread * rng.normal(size=(k, n))
    labels = rng.random(n) < 0.5
    target = mu + 1.0 * labels + spread * rng.normal(size=n)
    mu_z = rng.normal(0.0, 2.0, size=z)
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    return {
        "reference": reference, "keep": keep, "target": target, "labels": labels,
        "p_reference": sig(reference), "p_target": sig(target),
        "p_z_reference": sig(mu_z + rng.normal(size=(k, z))), "p_z_target": sig(mu_z + rng.normal(size=z)),
    }


# ---------------------------------------------------------------------------------------------
# baselines


def reference_generate_ours(keep, scores, check_scores, offline: bool):
    """The reference code's generate_ours / generate_ours_offline; scores (K, N, Q), check (N, Q)."""
    from scipy.stats import norm

    dat_in, dat_out = [], []
    for j in range(scores.shape[1]):
        dat_in.append(scores[keep[:, j], j, :])
        dat_out.append(scores[~keep[:, j], j, :])
    out_size = min(map(len, dat_out))
    dat_out = np.array([x[:out_size] for x in dat_out])
    mean_out, std_out = np.median(dat_out, 1), np.std(dat_out, 1)
    if offline:
        return norm.logpdf(check_scores, mean_out, std_out + 1e-30).mean(1)
    in_size = min(map(len, dat_in))
    dat_in = np.array([x[:in_size] for x in dat_in])
    mean_in, std_in = np.median(dat_in, 1), np.std(dat_in, 1)
    pr_in = -norm.logpdf(check_scores, mean_in, std_in + 1e-30)
    pr_out = -norm.logpdf(check_scores, mean_out, std_out + 1e-30)
    return (pr_in - pr_out).mean(1)


def dense_rmia(x: dict, a: float = 0.3, gamma: float = 1.0, block: int = 1000) -> np.ndarray:
    """Offline RMIA with the N x Z ratio matrix, in row blocks."""
    out = ~x["keep"]
    p_x = 0.5 * ((1 + a) * (x["p_reference"] * out).sum(0) / out.sum(0) + (1 - a))
    p_z = 0.5 * ((1 + a) * x["p_z_reference"].mean(0) + (1 - a))
    ratio_x, ratio_z = x["p_target"] / p_x, x["p_z_target"] / p_z
    scores = np.empty(ratio_x.shape[0])
    for start in range(0, ratio_x.shape[0], block):
        scores[start:start + block] = ((ratio_x[start:start + block, None] / ratio_z[None, :]) >= gamma).mean(1)
    return scores


def cases(x: dict) -> list[tuple[str, dict[str, Callable[[], np.ndarray]]]]:
    from mia_fast.attacks import RMIA, LiRA

    ref3 = x["reference"][:, :, None]  # the reference code's (K, N, Q)
    check = x["target"][:, None]

    def lira(mode):
        return lambda: LiRA(mode, variance="per_example").fit(x["reference"], x["keep"]).score_samples(x["target"])

    def rmia():
        attack = RMIA(offline=True, a=0.3).fit(x["p_reference"], x["keep"], population_reference=x["p_z_reference"])
        return attack.score_samples(x["p_target"], x["p_z_target"])

    return [
        ("lira online", {"mia_fast": lira("online"),
                         "reference code": lambda: -reference_generate_ours(x["keep"], ref3, check, False)}),
        ("lira offline_logpdf", {"mia_fast": lira("offline_logpdf"),
                                 "reference code": lambda: -reference_generate_ours(x["keep"], ref3, check, True)}),
        ("lira offline_cdf", {"mia_fast": lira("offline_cdf")}),
        ("rmia offline", {"mia_fast": rmia, "dense N×Z": lambda: dense_rmia(x)}),
    ]


# ---------------------------------------------------------------------------------------------
# run and report


def run(args) -> list[dict]:
    C.log(f"inputs N={args.samples} K={args.models} Z={args.population} ...")
    x = make_inputs(args.samples, args.models, args.population, args.seed)
    rows = []
    for case, providers in cases(x):
        firsts = {}
        for name, fn in providers.items():  # warm-up, and the scores compared below
            firsts[name] = fn()
        samples: dict[str, list[float]] = {name: [] for name in providers}
        names = list(providers)
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:
                t0 = time.perf_counter()
                providers[name]()
                samples[name].append(time.perf_counter() - t0)
        C.log(f"  {case}: " + ", ".join(f"{n} {C.fmt_ms(C.summarize(s)['median'])} ms" for n, s in samples.items()))
        base_name = next((n for n in providers if n != "mia_fast"), None)
        base = C.summarize(samples[base_name])["median"] if base_name else None
        for name, xs in samples.items():
            s = C.summarize(xs)
            diff = None
            if base_name and name != base_name:
                diff = float(np.max(np.abs(firsts[name] - firsts[base_name])))
            rows.append({"case": case, "provider": name, "summary": s,
                         "speedup": base / s["median"] if base else None, "max_abs_diff": diff})
    return rows


def markdown(rows: list[dict], args, machine: dict, command: str) -> str:
    lines = ["# Reference-model attacks: LiRA and RMIA at scale", ""]
    lines.append(f"Command: `{command}`  ")
    lines.append(f"Machine: {machine.get('cpu_model')}, {machine.get('cpu_count')} cores "
                 f"({machine.get('affinity_cores')} usable); numpy {np.__version__}; torch {machine.get('torch')}  ")
    lines.append(
        f"N = {args.samples:,} samples, K = {args.models} reference models (each sample IN {args.models // 2}), "
        f"Q = 1 query, population Z = {args.population:,} (RMIA). A time is one fit + score_samples on "
        f"every sample: median [min–max] (IQR) of n rounds, providers interleaved; speed-up = "
        f"baseline median ÷ median. Target: LiRA under "
        f"{TARGET_LIRA_S:g} s at N = 100,000, K = 64."
    )
    lines += ["", "| case | provider | median ms | min–max ms | IQR ms | n | samples/s | speed-up vs baseline | max abs diff vs baseline |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s = r["summary"]
        cells = [r["case"], r["provider"], C.fmt_ms(s["median"]), f"{C.fmt_ms(s['min'])}–{C.fmt_ms(s['max'])}",
                 f"{C.fmt_ms(s['q1'])}–{C.fmt_ms(s['q3'])}", str(s["n"]), C.fmt_rate(args.samples / s["median"]),
                 C.fmt_ratio(r["speedup"]) if r["speedup"] is not None else "-",
                 f"{r['max_abs_diff']:.2g}" if r["max_abs_diff"] is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lira = [r["summary"]["median"] for r in rows if r["case"].startswith("lira") and r["provider"] == "mia_fast"]
    if lira and args.samples == FULL["samples"] and args.models == FULL["models"]:
        verdict = "PASS" if max(lira) < TARGET_LIRA_S else "FAIL"
        lines += ["", f"LiRA target (< {TARGET_LIRA_S:g} s per mode): {verdict}, slowest mode {max(lira):.2f} s."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small smoke run (N=5000, K=16, Z=1000); writes no file")
    p.add_argument("--samples", type=int, default=None, help="N (default 100000; --quick 5000)")
    p.add_argument("--models", type=int, default=None, help="K reference models (default 64; --quick 16)")
    p.add_argument("--population", type=int, default=None, help="Z population samples of RMIA (default 10000)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; --quick 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help=f"markdown report (default without --quick: {os.path.relpath(RESULT_FILE)})")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for key in ("samples", "models", "population", "repeats"):
        if getattr(args, key) is None:
            setattr(args, key, sizes[key])
    if min(args.samples, args.population, args.repeats) < 1 or args.models < 4:
        p.error("--samples, --population and --repeats must be positive, --models at least 4")
    if args.out is None and not args.quick:
        args.out = RESULT_FILE
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    machine = C.machine_info()
    command = C.command_line(__file__, argv)
    t0 = time.perf_counter()
    rows = run(args)
    report = markdown(rows, args, machine, command)
    sys.stdout.write(report)
    if args.out:
        C.write_text(args.out, report)
    C.log(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
