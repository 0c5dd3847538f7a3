"""The lowercase attack (Carlini et al., USENIX Security 2021, "Extracting Training Data from Large
Language Models"): how much more likely the model finds the text as written than lowercased."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validation import column
from .prefix import _table
from .threshold import _ThresholdAttack

__all__ = ["LowercaseAttack"]


class LowercaseAttack(_ThresholdAttack):
    """score = -loss / loss_lowercase: the ratio of the text's log-likelihood to that of its lowercased form.

    A model that memorised a text predicts its exact casing; lowercasing takes the text off the
    memorised path, so a member's loss rises relatively more than a non-member's: a small
    ``loss / loss_lowercase`` (a large score) is member-like. Reads the columns ``loss`` and
    ``loss_lowercase`` (``mia-fast score --lowercase``; `mia_fast.scoring.variants.Lowercase`).
    The ratio of the two mean NLLs is Carlini et al.'s ratio of log-perplexities; the sign makes
    higher = more likely member, as in the MIA benchmarks that run it.
    """

    def _column(self) -> str:
        return "loss_lowercase"

    def score_samples(self, X: Any) -> np.ndarray:
        """Membership scores, higher = more likely member.

        Parameters
        ----------
        X : table
            Per-sequence table with the columns ``loss`` and ``loss_lowercase`` (DataFrame,
            pyarrow Table or mapping column -> 1-D array of length N).

        Returns
        -------
        ndarray, shape (N,), float64
        """
        table = _table(X, "loss_lowercase", "--lowercase")
        lower = column(table, "loss_lowercase", "X")
        loss = column(table, "loss", "X", n_rows=lower.shape[0])
        if (lower <= 0).any():
            raise ValueError("X['loss_lowercase']: expected positive losses (mean NLL), got "
                             f"{int((lower <= 0).sum())} values <= 0")
        return -loss / lower
