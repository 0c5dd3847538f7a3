"""Gradient-norm attack (white-box): members sit near an optimum of the loss, so their gradient is small.

The per-sample gradient norms come from `mia_fast.scoring.gradients` (`lm_gradient_norms`,
`classifier_gradient_norms`) or from the ``grad_norm`` column of a score table written by
``mia-fast score --gradients``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validation import column, first_indices, float_array, is_table
from .threshold import StatelessAttack

__all__ = ["GradNormAttack"]

#: Column of a per-sequence score table that holds the gradient norms.
GRAD_NORM_COLUMN = "grad_norm"
# Norms below this are scored as this (a zero norm would score +inf).
_NORM_FLOOR = np.finfo(np.float64).tiny


def _norms(x: Any, name: str) -> np.ndarray:
    """Gradient norms from a 1-D array or a table's ``grad_norm`` column, checked >= 0 and finite."""
    if is_table(x):
        norms = column(x, GRAD_NORM_COLUMN, name)
    else:
        norms = float_array(x, name)
    negative = norms < 0
    if negative.any():
        raise ValueError(
            f"{name}: expected gradient norms >= 0, got {int(negative.sum())} negative values "
            f"(first at index {first_indices(negative, 1)})"
        )
    return norms


class GradNormAttack(StatelessAttack):
    """Gradient-norm attack: score = -log(||d loss(sample) / d theta||_2).

    A smaller gradient of the sample's own loss means the model sits closer to an optimum for it,
    which is what training on it does; ``-log`` orients the norm so that higher = more likely
    member and spreads the small norms of members. Norms of exactly 0 are scored as the smallest
    positive float64 (a large finite score).

    Nothing is learned: ``fit`` returns the attack unchanged (present for the sklearn contract)
    and ``score_samples`` works without it; the decision threshold is left to `mia_fast.metrics`.
    """

    def score_samples(self, X: Any) -> np.ndarray:
        """Membership scores, higher = more likely member.

        Parameters
        ----------
        X : array or table
            Gradient norms, shape (N,), finite and >= 0 (from `mia_fast.scoring.gradients`), or a
            per-sequence table (DataFrame, pyarrow Table or mapping) with a ``grad_norm`` column.

        Returns
        -------
        ndarray, shape (N,), float64
            ``-log(max(norm, tiny))``.
        """
        return -np.log(np.maximum(_norms(X, "X"), _NORM_FLOOR))
