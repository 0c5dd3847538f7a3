"""DC-PDD (Zhang et al., EMNLP 2024): token probabilities calibrated by reference-corpus frequencies."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..columns import DC_PDD_COLUMN
from ..stats import TokenStats
from ._validation import sequence_values
from .threshold import StatelessAttack

__all__ = ["DCPDDAttack"]


class DCPDDAttack(StatelessAttack):
    """DC-PDD, the divergence-based calibration of Zhang et al. (EMNLP 2024).

    Zhang, Zhang, Guo, de Rijke, Fan and Cheng, "Pretraining Data Detection for Large Language
    Models: A Divergence-based Calibration Method", EMNLP 2024 (arXiv:2409.14781).

    Reads the per-sequence column ``dc_pdd``, written when a corpus is scored with a reference
    corpus of token frequencies (`mia_fast.scoring.frequency.dc_pdd_column`):
    ``beta = mean over the first occurrence of each token id of min(-p_i * log f_i, a)``, with
    ``p_i`` the target model's probability of the token, ``f_i`` its Laplace-smoothed frequency in
    the reference corpus and ``a`` the upper bound (0.01 by default). Members get larger
    ``beta`` (the paper flags a text as training data when ``beta`` exceeds a threshold), so the
    score is ``beta`` itself: higher = more likely member. Nothing is learned.
    """

    def score_samples(self, X: Any) -> np.ndarray:
        """Membership scores, higher = more likely member.

        Parameters
        ----------
        X : table
            Per-sequence table with a ``dc_pdd`` column (DataFrame, pyarrow Table or mapping
            column -> 1-D array of length N).

        Returns
        -------
        ndarray, shape (N,), float64
        """
        if isinstance(X, TokenStats):
            raise TypeError(
                "X: the 'dc_pdd' column cannot be computed from a TokenStats batch (it needs the token ids "
                "and a reference corpus's frequencies); expected a per-sequence table scored with a "
                "frequency corpus"
            )
        return sequence_values(X, DC_PDD_COLUMN, "X")
