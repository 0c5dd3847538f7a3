"""Scores of one corpus sample under two dtypes: how much the cheaper one changes the results.

bf16 is 2-3x faster than fp32 on CPUs with bf16 matrix units, but rounding the weights to 8
significant bits also rounds away part of what a fine-tune changed: on a full fine-tune of
SmolLM2-135M (2 epochs at lr 5e-5) it got 69% of the weight change wrong and cut the AUC of
LOSS, zlib, Min-K% and Min-K%++ by 0.010-0.014 (``benchmarks/results/cpu_bench_dtype.md``).
Whether that matters depends on the model and the corpus, so `compare_dtypes` measures it on the
user's own: a random sample of the corpus is scored with the job's dtype and with the other one,
and the report gives the per-document differences of every score column and, where the corpus
is labelled, each attack's AUC under both with a paired bootstrap interval of the change.
"""

from __future__ import annotations

import contextlib
import gc
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..scoring.corpus import Record
from ..scoring.run import ScoreJob, text_hash
from ..scoring.scorer import TextScorer

__all__ = ["DtypeComparison", "compare_dtypes", "sample_records"]

DEFAULT_SAMPLE = 200
BOOTSTRAP = 1000  # resamples of the AUC change's interval


@dataclass
class DtypeComparison:
    """What scoring the same documents with another dtype changed.

    Attributes
    ----------
    dtypes : list of str
        [the job's dtype, the compared dtype].
    n_documents, n_tokens : int
        Documents in the sample and tokens scored in each pass.
    tokens_per_s : dict of str to float
        Scoring throughput of each dtype on the sample (one pass each, model load excluded).
    differences : dict of str to dict
        Score column -> ``median``, ``p95``, ``max`` of |compared - job's| over the documents,
        and ``corr``, the Spearman rank correlation of the two columns.
    auc : dict of str to dict, or None
        Attack -> AUC under each dtype, ``change`` (compared - job's) and ``change_low``,
        ``change_high``: its 95% paired bootstrap interval over the sampled documents; None when
        the sample has no labels of both classes.
    """

    dtypes: list[str]
    n_documents: int
    n_tokens: int
    tokens_per_s: dict[str, float]
    differences: dict[str, dict[str, float]]
    auc: Optional[dict[str, dict[str, float]]]

    def to_markdown(self) -> str:
        a, b = self.dtypes
        lines = [
            f"# Scoring with {b} instead of {a}: {self.n_documents} sampled documents, {self.n_tokens} tokens",
            "",
            f"Throughput on this sample: {a} {self.tokens_per_s[a]:,.0f} tokens/s, {b} {self.tokens_per_s[b]:,.0f} "
            f"tokens/s ({self.tokens_per_s[b] / self.tokens_per_s[a]:.2f}x).",
            "",
            "| column | median abs diff | p95 | max | rank correlation |",
            "|---|---|---|---|---|",
            *[f"| {c} | {d['median']:.4g} | {d['p95']:.4g} | {d['max']:.4g} | {d['corr']:.4f} |"
              for c, d in self.differences.items()],
        ]
        if self.auc is None:
            lines += ["", "No labels of both classes in the sample: no AUC compared (give --label-field)."]
        else:
            lines += ["", f"| attack | AUC {a} | AUC {b} | change | 95% interval |", "|---|---|---|---|---|",
                      *[f"| {k} | {v[a]:.4f} | {v[b]:.4f} | {v['change']:+.4f} | "
                        f"[{v['change_low']:+.4f}, {v['change_high']:+.4f}] |" for k, v in self.auc.items()]]
            worst = max(abs(v["change"]) for v in self.auc.values())
            lines += ["", f"Largest AUC change: {worst:.4f}. The intervals resample the documents (paired): one "
                      "that excludes 0 is a change this sample shows beyond its own noise."]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        """Write ``dtype-comparison.md`` and ``.json`` into ``out_dir`` (created); returns both paths."""
        from .. import atomic

        out_dir.mkdir(parents=True, exist_ok=True)
        md, js = out_dir / "dtype-comparison.md", out_dir / "dtype-comparison.json"
        atomic.write_bytes(md, self.to_markdown().encode())
        atomic.write_bytes(js, (json.dumps(asdict(self), indent=2) + "\n").encode())
        return md, js


def sample_records(job: ScoreJob, n: int, seed: int = 0, on_bad_row: str = "skip") -> list[Record]:
    """A uniform random sample of ``n`` good records of the job's input, in input order.

    Reservoir sampling over one pass: the whole corpus is read, never held. Every record is kept
    when there are at most ``n``.
    """
    rng = np.random.default_rng(seed)
    kept: list[Record] = []
    seen = 0
    records = job.records(on_bad_row)
    with contextlib.closing(records):
        for item in records:
            if not isinstance(item, Record):
                continue
            seen += 1
            if len(kept) < n:
                kept.append(item)
            else:
                j = int(rng.integers(seen))
                if j < n:
                    kept[j] = item
    return sorted(kept, key=lambda r: r.index)


def _score_sample(job: ScoreJob, dtype: str, records: list[Record], device: str, trust_remote_code: bool):
    from ..scoring.lm import load_model

    model, tokenizer = load_model(job.model, gguf_file=job.gguf_file, dtype=dtype, device=device,
                                  trust_remote_code=trust_remote_code)
    scorer = TextScorer(model, tokenizer, job.options, head=job.head)
    texts = [r.text for r in records]
    scorer.score(texts[:2])  # warm-up: the head probe, lazy initialisation
    start = time.perf_counter()
    columns, _ = scorer.score(texts)
    seconds = time.perf_counter() - start
    del model, scorer
    gc.collect()
    return columns, seconds


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(spearmanr(x[ok], y[ok]).statistic)


def _attack_scores(table: dict[str, Any], labels: np.ndarray) -> dict[str, np.ndarray]:
    """Every attack a lone score table allows (`run_attacks`), scores higher = member."""
    import pandas as pd

    from ..metrics import ResolutionWarning
    from .report import AuditData, run_attacks

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResolutionWarning)
        scores, _ = run_attacks(AuditData(target=pd.DataFrame(table).assign(label=labels)))
    return scores


def _auc_change(labels: np.ndarray, a: np.ndarray, b: np.ndarray, n_bootstrap: int, seed: int) -> dict[str, float]:
    """AUC of two scorings of the same documents, their difference and its 95% paired percentile
    bootstrap interval (documents resampled with both classes present)."""
    from ..metrics import roc_auc

    auc_a, auc_b = roc_auc(labels, a), roc_auc(labels, b)
    rng = np.random.default_rng(seed)
    diffs = []
    while len(diffs) < n_bootstrap:
        i = rng.integers(len(labels), size=len(labels))
        if labels[i].min() != labels[i].max():
            diffs.append(roc_auc(labels[i], b[i]) - roc_auc(labels[i], a[i]))
    low, high = np.quantile(diffs, [0.025, 0.975])
    return {"a": auc_a, "b": auc_b, "change": auc_b - auc_a, "change_low": float(low), "change_high": float(high)}


def compare_dtypes(
    job: ScoreJob,
    other: str,
    *,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> DtypeComparison:
    """Score a random sample of ``job``'s corpus with ``job.dtype`` and with ``other``; compare.

    Parameters
    ----------
    job : ScoreJob
        Model, input and scoring options (as for `score_to_directory`); its dtype is the baseline.
    other : str
        The dtype to compare (a `--dtype` choice), different from ``job.dtype``.
    sample : int
        Documents drawn uniformly from the corpus (all of them when it holds fewer).
    seed : int
        Seed of the sample.
    device : str
    trust_remote_code : bool

    Returns
    -------
    DtypeComparison
    """
    from ..scoring.checks import check_count, check_seed
    from ..scoring.lm import check_device, check_model_source, torch_dtype

    torch_dtype(other)
    if other == job.dtype:
        raise ValueError(f"compare_dtype: expected a dtype other than the job's own ({job.dtype!r}), got {other!r}")
    check_count("sample", sample, minimum=2)
    check_seed(seed)
    check_model_source(job.model, job.gguf_file)
    check_device(device)
    records = sample_records(job, sample, seed)
    if len(records) < 2:
        raise ValueError(f"input: expected at least 2 good records to compare dtypes, got {len(records)}")
    tables, seconds = {}, {}
    for d in (job.dtype, other):
        tables[d], seconds[d] = _score_sample(job, d, records, device, trust_remote_code)
    a, b = tables[job.dtype], tables[other]
    n_tokens = int(a["n_tokens"].sum())
    differences = {}
    for c, x in a.items():
        x = np.asarray(x)
        if c == "n_tokens" or c not in b or x.dtype.kind != "f":
            continue
        y = np.asarray(b[c], dtype=np.float64)
        diff = np.abs(y - x)
        diff = diff[np.isfinite(diff)]
        if diff.size == 0:
            continue
        differences[c] = {"median": float(np.median(diff)), "p95": float(np.quantile(diff, 0.95)),
                          "max": float(diff.max()), "corr": _spearman(x.astype(np.float64), y)}
    auc = None
    labels = np.array([r.label for r in records], dtype=object)
    if job.label_field is not None and set(labels.tolist()) == {0, 1}:
        labels = labels.astype(np.int8)
        base = {"id": [r.id for r in records], "text_hash": [text_hash(r.text) for r in records]}
        per = {d: _attack_scores({**base, **tables[d]}, labels) for d in (job.dtype, other)}
        auc = {}
        for k, a_scores in per[job.dtype].items():
            if k in per[other]:
                c = _auc_change(labels, np.asarray(a_scores), np.asarray(per[other][k]), BOOTSTRAP, seed)
                auc[k] = {job.dtype: c["a"], other: c["b"], "change": c["change"],
                          "change_low": c["change_low"], "change_high": c["change_high"]}
    return DtypeComparison(
        dtypes=[job.dtype, other], n_documents=len(records), n_tokens=n_tokens,
        tokens_per_s={d: n_tokens / s if s > 0 else float("nan") for d, s in seconds.items()},
        differences=differences, auc=auc,
    )
