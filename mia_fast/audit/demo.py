"""``mia-fast demo``: the whole audit on an embedded default, no download, no GPU.

1. A pool of real English paragraphs (Python's own ``pydoc_data.topics``); a held-out tenth of
   it is a population no model trains on (RMIA's z samples).
2. K + 1 small GPT-2 models are trained on random halves of the pool: model 0, the audited
   target, on one half; models 1..K, its reference models, on halves drawn so that each
   paragraph is IN for exactly K/2 of them (LiRA-style); the ``keep`` matrix records who trained
   on what.
3. Every model scores the pool and the population through the fused kernels
   (`mia_fast.scoring.scorer.TextScorer`: hidden states + unembedding, the logits never exist), with
   the tempered statistics at tau = 0.5 and 2 from the same pass.
   The tables are saved under ``scores/`` (``target.parquet`` with the membership labels,
   ``ref_XXX.parquet``, ``keep.npz``, ``population/``), so ``mia-fast attack`` can rerun the
   attacks on them.
4. Every attack runs (`mia_fast.audit.report.run_attacks`) and the report is written
   (`mia_fast.audit.report.write_report`): ``metrics.json`` keyed by attack, ``report.md``,
   ``roc.png``, ``scores.parquet``.

Models are saved as they are trained, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

__all__ = ["DEMO_SETTINGS", "run_demo"]

log = logging.getLogger(__name__)

# preset of `mia_fast.audit.shadow_lm.LM_PRESETS`, number of reference models, pool size (None = all)
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "full": {"preset": "demo", "n_reference": 8, "n_pool": None},
    "quick": {"preset": "quick", "n_reference": 4, "n_pool": 400},
}
POPULATION_SHARE = 0.1


def _split_pool(texts: list[str], n_pool: Optional[int], seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    n_population = max(20, int(round(POPULATION_SHARE * len(texts))))
    population = [texts[i] for i in order[:n_population]]
    pool = [texts[i] for i in order[n_population:]]
    return pool[:n_pool] if n_pool else pool, population


# Tempered statistics from the same pass (their inverses are powers of two: no extra exponential),
# for the temperature-consistency attack.
DEMO_TEMPERATURES = (0.5, 2.0)


def _score_tables(model_dirs: list[Path], texts: list[str], ids: list[str], max_length: int) -> list[Any]:
    import pandas as pd

    from ..scoring.lm import load_model
    from ..scoring.scorer import ScoreOptions, TextScorer

    tables = []
    for d in model_dirs:
        model, tokenizer = load_model(d)
        # the models were trained on BOS + text (shadow_lm.encode): score them the same way
        options = ScoreOptions(max_length=max_length, batch_tokens=8192, temperatures=DEMO_TEMPERATURES,
                               first_token="bos")
        columns, _ = TextScorer(model, tokenizer, options).score(texts)
        tables.append(pd.DataFrame({"id": ids, **columns}))
    return tables


def run_demo(
    out_dir: Union[str, Path] = "mia_fast_demo",
    *,
    quick: bool = False,
    n_reference: Optional[int] = None,
    seed: int = 0,
    progress: bool = False,
    on_step: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Train, score, attack and report on the embedded default.

    Parameters
    ----------
    out_dir : str or Path
        Receives ``models/`` (``target/``, ``ref_000/`` ... and the keep matrix), ``scores/``
        (per-sequence tables of the same names), and the report files.
    quick : bool
        Smaller models, pool and K (about a minute on 2 CPU cores).
    n_reference : int, optional
        K, the number of reference models (default 8, quick 4).
    seed : int
        Seed of the split, the training and the attacks.
    progress : bool
        tqdm bar over the models being trained.
    on_step : callable(str), optional
        Called with a short message after each stage, and after each model trained when there
        is no progress bar (a log file, CI).

    Returns
    -------
    dict
        ``metrics`` (attack -> metrics), ``notes``, ``seconds`` per stage, ``out_dir``.
    """
    from ..metrics import shift_check
    from .data import pydoc_paragraphs
    from .report import AuditData, run_attacks, save_keep, write_report
    from .shadow import make_keep, make_target_membership
    from .shadow_lm import lm_preset, train_reference_lms

    settings = DEMO_SETTINGS["quick" if quick else "full"]
    k_ref = settings["n_reference"] if n_reference is None else int(n_reference)
    if k_ref < 2:
        raise ValueError(f"n_reference: expected at least 2 reference models, got {k_ref}")
    say = on_step or (lambda msg: None)
    out = Path(out_dir)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    pool, population = _split_pool(pydoc_paragraphs(), settings["n_pool"], seed)
    tokenizer, config, train_kwargs = lm_preset(settings["preset"], pool + population)
    # Row 0 is the target's membership, drawn apart from the reference models' split: each sample
    # is IN for exactly K/2 reference models whether or not it is a member of the target (taking
    # the target out of one K+1 split would give its members one IN reference fewer).
    keep = np.vstack([make_target_membership(len(pool), seed), make_keep(k_ref, len(pool), seed + 1)])
    say(f"pool: {len(pool)} paragraphs of pydoc_data.topics, population: {len(population)}; "
        f"training 1 target + {k_ref} reference GPT-2 models ({config.n_layer} layers, d={config.n_embd}, "
        f"vocab {config.vocab_size}) on random halves")
    # models/target and models/ref_000 ... ref_{K-1}: the names of their score tables in scores/
    names = ["target"] + [f"ref_{k:03d}" for k in range(k_ref)]
    dirs = train_reference_lms(pool, keep, out / "models", config=config, tokenizer=tokenizer,
                               train_kwargs=train_kwargs, seed=seed, progress=progress, names=names,
                               on_model=None if progress else say)
    seconds["train"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    ids = [f"pool-{i}" for i in range(len(pool))]
    pop_ids = [f"population-{i}" for i in range(len(population))]
    scored = _score_tables(dirs, pool + population, ids + pop_ids, train_kwargs["max_length"])
    tables = [t.iloc[: len(pool)].reset_index(drop=True) for t in scored]
    pop_tables = [t.iloc[len(pool):].reset_index(drop=True) for t in scored]
    tables[0] = tables[0].assign(label=keep[0].astype(np.int8))
    (out / "scores" / "population").mkdir(parents=True, exist_ok=True)
    for name, t, p in zip(names, tables, pop_tables):
        t.to_parquet(out / "scores" / f"{name}.parquet", index=False)
        p.to_parquet(out / "scores" / "population" / f"{name}.parquet", index=False)
    save_keep(out / "scores" / "keep.npz", keep[1:], ids)
    seconds["score"] = time.perf_counter() - t1
    n_tokens = int(sum(t["n_tokens"].sum() for t in scored))
    say(f"scored {len(scored)} models x {len(pool) + len(population)} texts ({n_tokens} tokens) "
        f"through the fused kernels in {seconds['score']:.1f} s")

    t2 = time.perf_counter()
    data = AuditData(target=tables[0], references=tables[1:], keep=keep[1:],
                     population_target=pop_tables[0], population_references=pop_tables[1:])
    scores, notes = run_attacks(data, random_state=seed)
    meta = {"pool": len(pool), "population": len(population), "n_reference": k_ref, "seed": seed,
            "preset": settings["preset"], "config": {"n_layer": config.n_layer, "n_embd": config.n_embd,
                                                     "vocab_size": config.vocab_size},
            "train": train_kwargs, "tokens_scored": n_tokens}
    shift = shift_check(pool, data.labels, random_state=seed)
    say(f"shift check: {shift.summary()}")
    metrics = write_report(out, data.labels, scores, ids=ids, notes=notes, meta=meta,
                           title="mia-fast demo: GPT-2 models on pydoc_data.topics", shift=shift)
    seconds["attack"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0
    return {"metrics": metrics, "notes": notes, "seconds": seconds, "out_dir": str(out)}
