"""mia_fast: a fast, correct scoring engine for membership inference attacks."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ._version import __version__
from .aggregate import aggregate
from .api import default_num_threads, token_stats, token_stats_from_hidden
from .stats import TemperedStats, TokenStats

# Imported on first use: they pull in transformers, scikit-learn, scipy or pyarrow.
_LAZY = {
    "evaluate": "mia_fast.metrics",
    "score_corpus": "mia_fast.scoring.scorer",
    "ScoreOptions": "mia_fast.scoring.scorer",
    "Lowercase": "mia_fast.scoring.variants",
    "MemberContext": "mia_fast.scoring.variants",
    "SaMIA": "mia_fast.scoring.samia",
    "Neighbours": "mia_fast.scoring.neighbours",
    "PAC": "mia_fast.scoring.augment",
    "DCPDD": "mia_fast.scoring.frequency",
    "read_scores": "mia_fast.scoring.run",
    "locate_spans": "mia_fast.spans",
    "load_model": "mia_fast.scoring.lm",
    "LossAttack": "mia_fast.attacks",
    "ZlibAttack": "mia_fast.attacks",
    "MinK": "mia_fast.attacks",
    "MinKPlusPlus": "mia_fast.attacks",
    "ReferenceAttack": "mia_fast.attacks",
    "ShadowClassifierAttack": "mia_fast.attacks",
    "LiRA": "mia_fast.attacks",
    "RMIA": "mia_fast.attacks",
    "PrefixAttack": "mia_fast.attacks",
    "ReCaLLAttack": "mia_fast.attacks",
    "ConReCaLLAttack": "mia_fast.attacks",
    "LowercaseAttack": "mia_fast.attacks",
    "SaMIAAttack": "mia_fast.attacks",
    "NeighbourhoodAttack": "mia_fast.attacks",
    "PACAttack": "mia_fast.attacks",
    "DCPDDAttack": "mia_fast.attacks",
    "QuantileRegressionAttack": "mia_fast.attacks",
    "GradNormAttack": "mia_fast.attacks",
    "TemperatureAttack": "mia_fast.attacks",
    "lm_gradient_norms": "mia_fast.scoring.gradients",
    "classifier_gradient_norms": "mia_fast.scoring.gradients",
    "make_keep": "mia_fast.audit.shadow",
    "pydoc_paragraphs": "mia_fast.audit.data",
    "shift_check": "mia_fast.metrics",
    "decide": "mia_fast.answers",
    "decide_table": "mia_fast.answers",
    "Decisions": "mia_fast.answers",
    "write_decisions": "mia_fast.answers",
    "dataset_inference": "mia_fast.answers",
    "DatasetInferenceResult": "mia_fast.answers",
    "write_dataset_inference": "mia_fast.answers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mia_fast' has no attribute {name!r}")


__all__ = [
    "TokenStats",
    "TemperedStats",
    "token_stats",
    "token_stats_from_hidden",
    "aggregate",
    "default_num_threads",
    "__version__",
    *_LAZY,
]
