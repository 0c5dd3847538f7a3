"""PAC, polarized augment calibration (Ye et al., Findings of ACL 2024, "Data Contamination
Calibration for Black-box LLMs")."""

from __future__ import annotations

from typing import Any

import numpy as np

from .neighbourhood import _finite_column, _variant_table
from .threshold import StatelessAttack

__all__ = ["PACAttack"]


class PACAttack(StatelessAttack):
    """score = -pac, with pac = PD(text) - mean PD(word-swapped copies of the text).

    The polarized distance PD of a text is the mean of its highest token log-probabilities minus
    the mean of its lowest ones (`mia_fast.scoring.augment.polarized_distance`); the column
    ``pac`` calibrates it by the same quantity over augmented copies with random pairs of words
    swapped (`mia_fast.scoring.augment.pac_variants`, `pac_scores`). Training on a text raises
    its unlikely tokens, so a member's PD is small next to that of its swapped copies: low
    ``pac`` is member-like, as in the authors' evaluation (``roc_auc_score(labels, -PAC)``,
    github.com/yyy01/PAC). Nothing is learned.
    """

    def score_samples(self, X: Any) -> np.ndarray:
        """Membership scores, higher = more likely member.

        Parameters
        ----------
        X : table
            Per-sequence table with the column ``pac`` (DataFrame, pyarrow Table or mapping
            column -> 1-D array of length N).

        Returns
        -------
        ndarray, shape (N,), float64
        """
        table = _variant_table(X, ("pac",), "PAC's augmented texts")
        return -_finite_column(table, "pac", "a text without scored tokens (or whose copies have none) has no PAC value")
