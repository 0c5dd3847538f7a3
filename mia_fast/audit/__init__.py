"""Audits: train reference ("shadow") models, score them, run every attack and write the report.

This is the top of the library: it may import the attacks, the metrics and the scoring layer, and
nothing below imports it.

- `shadow`: membership splits (the keep matrix) and the resumable loop that trains K models;
- `shadow_lm`, `shadow_classifier`: the tiny LMs and image classifiers trained as targets and
  reference models (a new kind of audit target goes beside them);
- `data`: the data sets that ship with Python or an installed package (no download);
- `report`: every attack on score tables, `metrics.json`, ``report.md`` and the ROC plot (a new
  report section goes here);
- `demo`: ``mia-fast demo``, the whole audit on the embedded default.
"""

from .data import pydoc_paragraphs
from .demo import run_demo
from .report import AuditData, format_table, load_keep, run_attacks, save_keep, write_report
from .shadow import make_keep, make_target_membership, train_reference_models

__all__ = [
    "pydoc_paragraphs",
    "run_demo",
    "AuditData",
    "format_table",
    "load_keep",
    "run_attacks",
    "save_keep",
    "write_report",
    "make_keep",
    "make_target_membership",
    "train_reference_models",
]
