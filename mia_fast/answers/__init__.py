"""Answers with stated error rates, from score tables (design.md §6c).

* `decide` / `decide_table`: per-document conformal p-values against known non-members,
  Benjamini-Hochberg q-values, a verdict at ``alpha`` or ``fdr``; `write_decisions` writes
  ``decisions.parquet`` and ``decision.json``.
* `dataset_inference`: was a suspect *set* trained on, against a validation set from the same
  distribution (Maini et al. 2024), with a validation-vs-validation control and a p-value curve;
  `write_dataset_inference` writes ``result.json``, ``report.md`` and ``p_value_vs_documents.png``.
"""

from .dataset_inference import DatasetInferenceResult, dataset_inference, write_dataset_inference
from .decide import (
    Decisions,
    attack_scores,
    available_attacks,
    bh_q_values,
    conformal_p_values,
    decide,
    decide_table,
    write_decisions,
)

__all__ = [
    "Decisions",
    "decide",
    "decide_table",
    "conformal_p_values",
    "bh_q_values",
    "attack_scores",
    "available_attacks",
    "write_decisions",
    "DatasetInferenceResult",
    "dataset_inference",
    "write_dataset_inference",
]
