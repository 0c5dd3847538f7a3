"""Cost and AUC of every text-variant family on the demo's target model.

The target of ``mia-fast demo --quick`` (a small GPT-2 trained on half of a pool of Python
documentation paragraphs; ``--demo-dir`` reuses a finished demo, otherwise one is run) scores a
balanced sample of its pool. First plain scoring, then each family alone (the same texts, the
same batching), then all of them in one run: seconds, the ratio to plain scoring, and the AUC of
each family's attack (with bootstrap 95% intervals). Contexts: ReCaLL's non-member context is
paragraphs of the demo's held-out population, Con-ReCaLL's member context paragraphs of the
target's training half that are not evaluated; DC-PDD counts token frequencies in the
population; the neighbours' masked LM is a 2-layer BERT trained here on the same documentation
(no pretrained masked LM is available offline), so the neighbourhood figures are a lower bound.

    python benchmarks/bench_variants.py [--demo-dir DIR] [--texts 200] [--neighbours 25]

Writes ``benchmarks/results/variants_demo.md`` (and ``.json``).
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

RESULTS = Path(__file__).resolve().parent / "results"


def _demo_dir(given: str | None) -> Path:
    if given:
        return Path(given)
    from mia_fast.audit.demo import run_demo

    out = Path(tempfile.mkdtemp()) / "demo"
    log(f"running mia-fast demo --quick into {out}")
    run_demo(out, quick=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", help="a finished `mia-fast demo --quick` output directory")
    parser.add_argument("--texts", type=int, default=200, help="evaluated texts (half members)")
    parser.add_argument("--neighbours", type=int, default=25)
    parser.add_argument("--pac", type=int, default=5)
    parser.add_argument("--samia-samples", type=int, default=5)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)

    import pandas as pd

    from mia_fast.attacks import (ConReCaLLAttack, DCPDDAttack, LossAttack, LowercaseAttack, NeighbourhoodAttack,
                                  PACAttack, ReCaLLAttack, SaMIAAttack)
    from mia_fast.audit.data import pydoc_paragraphs
    from mia_fast.audit.demo import DEMO_SETTINGS, _split_pool
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

    demo = _demo_dir(args.demo_dir)
    pool, population = _split_pool(pydoc_paragraphs(), DEMO_SETTINGS["quick"]["n_pool"], 0)
    target = pd.read_parquet(demo / "scores" / "target.parquet")
    labels_all = target.label.to_numpy()
    rng = np.random.default_rng(0)
    members, non_members = np.flatnonzero(labels_all == 1), np.flatnonzero(labels_all == 0)
    half = args.texts // 2
    pick_m, pick_n = rng.permutation(members)[:half], rng.permutation(non_members)[:half]
    rest_m = [i for i in members if i not in set(pick_m)]
    texts = [pool[i] for i in np.r_[pick_m, pick_n]]
    labels = np.r_[np.ones(half), np.zeros(half)].astype(int)
    work = Path(tempfile.mkdtemp())
    member_context = "\n\n".join(pool[i] for i in rest_m[:3]) + "\n"
    context = "\n\n".join(population[:3]) + "\n"
    freq = work / "population.txt"
    freq.write_text("\n".join(population) + "\n")
    mlm_dir = mlm_fixtures.save_mlm(work / "mlm")
    model, tok = load_model(demo / "models" / "target")
    base = dict(first_token="bos", batch_tokens=8192)
    CTX = max(2, (model.config.n_positions - 3) // 2)  # context tokens: half of the model's window

    families = {
        "plain": ({}, []),
        "lowercase": ({"variants": (Lowercase(),)}, [("lowercase", LowercaseAttack())]),
        "context (ReCaLL)": ({"context_text": context, "context_tokens": CTX}, [("recall", ReCaLLAttack())]),
        "member + non-member context (Con-ReCaLL)": (
            {"context_text": context, "context_tokens": CTX, "variants": (MemberContext(member_context, CTX),)},
            [("con_recall", ConReCaLLAttack())]),
        f"neighbours (n={args.neighbours})": (
            {"variants": (Neighbours(masked_lm=str(mlm_dir), n_neighbours=args.neighbours),)},
            [("neighbourhood", NeighbourhoodAttack())]),
        f"PAC (N={args.pac})": ({"variants": (PAC(n_augmentations=args.pac),)}, [("pac", PACAttack())]),
        "DC-PDD": ({"variants": (DCPDD(str(freq)),)}, [("dc_pdd", DCPDDAttack())]),
        f"SaMIA (n={args.samia_samples})": ({"variants": (SaMIA(n_samples=args.samia_samples),)},
                                            [("samia", SaMIAAttack()), ("samia_zlib", SaMIAAttack(zlib=True))]),
    }
    every = {"context_text": context, "context_tokens": CTX,
             "variants": tuple(v for kw, _ in families.values() for v in kw.get("variants", ()))}
    families["all of the above in one run"] = (every, [])

    TextScorer(model, tok, ScoreOptions(**base)).score(texts)  # warm-up: the first call is not timed
    rows, tables = [], {}
    for name, (kw, attacks) in families.items():
        scorer = TextScorer(model, tok, ScoreOptions(**base, **kw))
        t0 = time.perf_counter()
        columns, _ = scorer.score(texts)
        seconds = time.perf_counter() - t0
        table = pd.DataFrame(columns)
        tables[name] = table
        aucs = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResolutionWarning)
            for attack_name, attack in [("loss", LossAttack())] * (name == "plain") + attacks:
                # SaMIA has no score where the text is too short to split or its prompt fills the
                # model's window: evaluated on the other texts, and the count is given
                col = attack._column() if isinstance(attack, SaMIAAttack) else None
                keep = ~np.isnan(table[col].to_numpy(float)) if col in table else np.ones(len(table), bool)
                m = evaluate(labels[keep], attack.fit().score_samples(table[keep]), n_bootstrap=500, fprs=(0.1,))
                label = attack_name if keep.all() else f"{attack_name} (on {int(keep.sum())} texts)"
                aucs[label] = (m["auc"], m["auc_ci"])
        rows.append({"family": name, "seconds": seconds, "aucs": aucs})
        log(f"{name}: {seconds:.1f} s, " + ", ".join(f"{k} AUC {v[0]:.3f}" for k, v in aucs.items()))
    plain = rows[0]["seconds"]
    separate = sum(r["seconds"] for r in rows[1:-1])

    lines = [
        "# Text variants on the demo's target: cost and AUC",
        "",
        f"Command: `{command_line(__file__, argv)}`",
        "",
        f"Machine: {machine_info()['cpu_model']}, torch {torch.__version__}, {torch.get_num_threads()} threads. "
        f"{len(texts)} pool paragraphs ({half} members, {half} non-members) of `mia-fast demo --quick`'s target "
        "(GPT-2, trained on BOS + text). One run each, not repeated: the seconds are indicative.",
        "",
        "| family | seconds | × plain | attack: AUC [95% CI] |",
        "|---|---|---|---|",
        *[f"| {r['family']} | {r['seconds']:.1f} | {r['seconds'] / plain:.2f} | "
          + "; ".join(f"{k}: {a:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" for k, (a, ci) in r["aucs"].items()) + " |"
          for r in rows],
        "",
        f"Each family alone includes the texts' own pass: the families one by one took {separate:.1f} s in all, "
        f"one run with every family {rows[-1]['seconds']:.1f} s (the texts' pass once, every input in shared "
        "length-bucketed batches). The machine was also running other jobs: ratios are indicative, one run each.",
        "The neighbours come from a 2-layer BERT trained for seconds on the documentation (tests/mlm_fixtures.py): "
        "a weak proposer, so the neighbourhood AUC understates what a pretrained masked LM gives. The SmolLM2 "
        "fine-tune comparison the benchmark of dataset inference runs (bench_dataset_inference.py) is not "
        "repeated here.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_save:
        (RESULTS / "variants_demo.md").write_text(text)
        (RESULTS / "variants_demo.json").write_text(json.dumps(
            {"texts": len(texts), "rows": [{**r, "aucs": {k: {"auc": a, "auc_ci": list(ci)} for k, (a, ci) in
                                                          r["aucs"].items()}} for r in rows]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
