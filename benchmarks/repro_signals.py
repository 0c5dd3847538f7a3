#!/usr/bin/env python
"""The query-access and white-box signals beyond the loss, on tiny GPT-2 models trained here.

One GPT-2 (2 layers, n_embd 32, context 128) is trained from scratch on N member paragraphs of
Python's documentation (`mia_fast.data.pydoc_paragraphs` order, as the tests do) for each number
of epochs asked; N other paragraphs are the non-members and four more the fixed ReCaLL context.
Every text is scored once through `mia_fast.score_corpus` with temperatures, own-prefix settings,
the context and per-text gradient norms, and each attack's AUC (with its bootstrap 95% interval)
and TPR at 5% FPR are reported: LOSS, Min-K%++, temperature consistency (slope, std),
continuation loss after the first k tokens, ReCaLL, and the gradient norm (all parameters, head).
Fewer epochs = a less memorised model, where the signals separate.

Usage::

    python benchmarks/repro_signals.py                 # writes benchmarks/results/repro_signals.{md,json}
    python benchmarks/repro_signals.py --smoke         # one short training, writes nothing unless --out
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TEMPERATURES = (0.25, 0.5, 2.0, 3.0)
PREFIXES = (16, 0.5)


def paragraphs(n: int) -> tuple[list[str], list[str], str]:
    """Members, non-members and a context, from the same real prose."""
    from pydoc_data.topics import topics

    out: list[str] = []
    for key in sorted(topics):
        for para in topics[key].split("\n\n"):
            para = " ".join(para.split())
            if 60 <= len(para) <= 600 and para not in out:
                out.append(para)
    if len(out) < 2 * n + 4:
        raise SystemExit(f"--members: at most {(len(out) - 4) // 2} paragraphs available, got {n}")
    return out[:n], out[n : 2 * n], "\n\n".join(out[2 * n : 2 * n + 4]) + "\n"


def attacks(seqs):
    from mia_fast.attacks import (GradNormAttack, LossAttack, MinKPlusPlus, PrefixAttack, ReCaLLAttack,
                                  TemperatureAttack)

    out = {
        "loss": LossAttack().score_samples(seqs),
        "min_k_pp_0.2": MinKPlusPlus(0.2).score_samples(seqs),
        "temperature (slope)": TemperatureAttack(spread="slope").score_samples(seqs),
        "temperature (std)": TemperatureAttack(spread="std").score_samples(seqs),
    }
    for k in PREFIXES:
        out[f"loss after prefix {k:g}"] = PrefixAttack(prefix=k).score_samples(seqs)
    out["recall"] = ReCaLLAttack().score_samples(seqs)
    out["grad_norm (all)"] = GradNormAttack().score_samples(seqs["grad_norm"].to_numpy())
    out["grad_norm (head)"] = GradNormAttack().score_samples(seqs["grad_norm_head"].to_numpy())
    return out


def run(args) -> list[dict]:
    import torch

    from mia_fast import score_corpus
    from mia_fast.metrics import bootstrap_auc_ci, roc_auc, tpr_at_fpr
    from mia_fast.audit.shadow_lm import tiny_lm_config, train_causal_lm, train_tokenizer

    members, non_members, context = paragraphs(args.members)
    texts, labels = members + non_members, np.array([1] * len(members) + [0] * len(non_members))
    tok = train_tokenizer(list(texts) + [context], 400)
    torch.set_num_threads(1)  # faster than two for a model this small
    rows = []
    for epochs in args.epochs:
        t0 = time.perf_counter()
        cfg = tiny_lm_config(len(tok), n_layer=2, n_embd=32, n_head=2, n_positions=128)
        model = train_causal_lm(members, tok, cfg, epochs=epochs, lr=1e-2, batch_size=8, max_length=128,
                                seed=args.seed)
        trained = time.perf_counter() - t0
        common = dict(labels=labels, temperatures=TEMPERATURES, prefix_tokens=PREFIXES, context_text=context,
                      context_tokens=48)
        seqs = score_corpus(model, tok, texts, gradient_params="all", **common).sequences
        seqs["grad_norm_head"] = score_corpus(model, tok, texts, labels=labels, gradient_params="head").sequences["grad_norm"]
        scored = time.perf_counter() - t0 - trained
        for name, scores in attacks(seqs).items():
            lo, hi = bootstrap_auc_ci(labels, scores, n=1000, random_state=0)
            tpr, fpr = tpr_at_fpr(labels, scores, 0.05)
            rows.append({"epochs": epochs, "attack": name, "auc": roc_auc(labels, scores), "auc_ci": [lo, hi],
                         "tpr@5%fpr": tpr, "achieved_fpr": fpr, "train_s": trained, "score_s": scored})
        C.log(f"epochs {epochs}: trained in {trained:.0f} s, scored in {scored:.0f} s")
    return rows


def markdown(rows, args, machine, command) -> str:
    lines = ["# Signals beyond the loss on tiny GPT-2 models", "",
             f"Command: `{command}`  ",
             f"Machine: {machine.get('cpu_model')}, {machine.get('cpu_count')} cores; torch {machine.get('torch')}  ",
             f"{args.members} member and {args.members} non-member paragraphs of Python's documentation; GPT-2 "
             f"(2 layers, n_embd 32, context 128) trained from scratch on the members (seed {args.seed}); "
             f"temperatures {', '.join(f'{t:g}' for t in TEMPERATURES)} (and 1); ReCaLL context: 4 other "
             "paragraphs, last 48 tokens. AUC with its stratified bootstrap 95% interval (1000 resamples); "
             f"TPR at FPR ≤ 5% (with {args.members} non-members the FPR resolution is {100 / args.members:.1f}%).", ""]
    lines += ["| epochs | attack | AUC | 95% CI | TPR @ 5% FPR |", "|---:|---|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['epochs']} | {r['attack']} | {r['auc']:.3f} | [{r['auc_ci'][0]:.3f}, {r['auc_ci'][1]:.3f}] "
                     f"| {100 * r['tpr@5%fpr']:.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--members", type=int, default=48, help="member (and non-member) paragraphs (default 48)")
    p.add_argument("--epochs", default="3,6,12", help="comma-separated training lengths (default 3,6,12)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="16 members, one 3-epoch model")
    p.add_argument("--out", default=None, help="markdown report (default: results/repro_signals.md; none with --smoke)")
    args = p.parse_args(argv)
    if args.smoke:
        args.members, args.epochs = 16, "3"
    try:
        args.epochs = [int(e) for e in args.epochs.split(",")]
    except ValueError:
        p.error(f"--epochs: expected comma-separated integers, got {args.epochs!r}")
    if args.members < 4 or min(args.epochs) < 1:
        p.error("--members must be >= 4 and every epoch count >= 1")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    machine, command = C.machine_info(), C.command_line(__file__, argv)
    rows = run(args)
    report = markdown(rows, args, machine, command)
    sys.stdout.write(report)
    out = args.out or (None if args.smoke else str(RESULTS / "repro_signals.md"))
    if out:
        C.write_text(out, report)
        C.write_text(str(Path(out).with_suffix(".json")), json.dumps({"command": command, "machine": machine, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
