"""Threshold attacks on one per-sequence statistic: LOSS, zlib, Min-K% and Min-K%++.

Each attack reads one column of a per-sequence score table (the output of ``mia-fast score``, a
pandas DataFrame or any mapping column -> 1-D array) and orients it so that higher = more likely
member. LOSS, Min-K% and Min-K%++ also accept a `mia_fast.TokenStats` batch of shape (N, L) and
reduce it with `mia_fast.aggregate` (the same reductions that produce the tables).

These attacks learn nothing: ``fit`` returns the attack unchanged and ``score_samples`` works
without it. The decision threshold is left to `mia_fast.metrics`.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from sklearn.base import BaseEstimator

from ..aggregate import min_k_column, min_k_pp_column
from ._validation import sequence_values

__all__ = ["LossAttack", "ZlibAttack", "MinK", "MinKPlusPlus"]


def _check_k(k: Any) -> float:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, float, np.integer, np.floating)) \
            or not 0.0 < float(k) <= 1.0:
        raise ValueError(f"k: expected a fraction in (0, 1], got {k!r}")
    return float(k)


class StatelessAttack(BaseEstimator):
    """An attack that learns nothing: ``fit`` validates the parameters (`_check`) and returns
    ``self`` (present for the sklearn contract), and ``score_samples`` works without it."""

    def _check(self) -> None:
        """Raise for invalid parameters (nothing to check by default)."""

    def fit(self, X: Any = None, y: Optional[Any] = None) -> "StatelessAttack":
        """Nothing to learn; validates the parameters and returns ``self``."""
        self._check()
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return True


class _ThresholdAttack(StatelessAttack):
    """One column of the table, times ``_sign`` (so that higher = more likely member)."""

    _sign = 1.0

    def _column(self) -> str:
        raise NotImplementedError

    def _ks(self) -> tuple[float, ...]:
        return (0.2,)

    def _check(self) -> None:
        self._column()  # validates the parameters

    def score_samples(self, X: Any) -> np.ndarray:
        """Membership scores, higher = more likely member.

        Parameters
        ----------
        X : table or TokenStats
            Per-sequence table with the attack's column (DataFrame, pyarrow Table or mapping
            column -> 1-D array of length N), or a `TokenStats` batch with fields of shape (N, L).

        Returns
        -------
        ndarray, shape (N,), float64
        """
        return self._sign * sequence_values(X, self._column(), "X", ks=self._ks())


class LossAttack(_ThresholdAttack):
    """LOSS attack (Yeom et al., 2018): score = -loss, the mean log-likelihood of the sequence."""

    _sign = -1.0

    def _column(self) -> str:
        return "loss"


class ZlibAttack(_ThresholdAttack):
    """zlib attack (Carlini et al., 2021): score = -(loss / zlib-compressed byte length).

    Needs the ``zlib`` column of a score table (a TokenStats batch lacks the texts).
    """

    _sign = -1.0

    def _column(self) -> str:
        return "zlib"


class MinK(_ThresholdAttack):
    """Min-K% Prob (Shi et al., 2024): mean of the lowest ``max(1, floor(k * L))`` token log-probs.

    Parameters
    ----------
    k : float in (0, 1]
        Fraction of tokens; reads the column ``min_k_{k:g}`` (e.g. ``min_k_0.2``).
    """

    def __init__(self, k: float = 0.2):
        self.k = k

    def _column(self) -> str:
        return min_k_column(_check_k(self.k))

    def _ks(self) -> tuple[float, ...]:
        return (_check_k(self.k),)


class MinKPlusPlus(MinK):
    """Min-K%++ (Zhang et al., 2024): Min-K% over the normalised token scores ``(log p_y - mu) / sigma``.

    ``mu = -entropy`` and ``sigma = sqrt(var_logp)`` are the mean and standard deviation of
    ``log p_v`` under the model's own next-token distribution; sigma is clipped below at
    `mia_fast.aggregate.SIGMA_FLOOR`.

    Parameters
    ----------
    k : float in (0, 1]
        Fraction of tokens; reads the column ``min_k_pp_{k:g}`` (e.g. ``min_k_pp_0.2``).
    """

    def _column(self) -> str:
        return min_k_pp_column(_check_k(self.k))
