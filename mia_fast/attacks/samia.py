"""SaMIA (Kaneko et al., 2024): how much of a text's second half the model reproduces from its first.

Reads the columns ``samia`` and ``samia_zlib`` that `mia_fast.scoring.samia.samia_columns`
computes. Like the other threshold attacks it learns nothing: ``fit`` returns the attack unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..stats import TokenStats
from ._validation import column, first_indices, is_table, table_columns
from .threshold import _ThresholdAttack

__all__ = ["SaMIAAttack"]


class SaMIAAttack(_ThresholdAttack):
    """SaMIA: sampling-based pseudo-likelihood (Kaneko et al., 2024, arXiv:2404.11262).

    A black-box attack on text alone; it needs no log-probabilities. The first half of each
    text's words is given to the target model as a prompt, several continuations are sampled,
    and the score is their mean ROUGE-1 recall against the text's true second half: a model that
    saw the text in training tends to reproduce more of its words. See
    `mia_fast.scoring.samia` for the exact definitions and the sampling settings.

    Parameters
    ----------
    zlib : bool
        False: score = ``samia``, the mean ROUGE-1 recall of the candidates. True: score =
        ``samia_zlib``, the mean of ROUGE-1 × the zlib-compressed size of each candidate
        (SaMIA*zlib, the paper's variant that discounts repetitive candidates).

    Notes
    -----
    Higher = more likely member for both columns. A text too short to split (or whose prompt
    filled the model's context) has NaN; `score_samples` refuses such tables.
    """

    def __init__(self, zlib: bool = False):
        self.zlib = zlib

    def _column(self) -> str:
        if not isinstance(self.zlib, (bool, np.bool_)):
            raise ValueError(f"zlib: expected True or False, got {self.zlib!r}")
        return "samia_zlib" if self.zlib else "samia"

    def score_samples(self, X: Any) -> np.ndarray:
        """Membership scores, higher = more likely member.

        Parameters
        ----------
        X : table
            Per-sequence table with the column ``samia`` (or ``samia_zlib`` when ``zlib``):
            DataFrame, pyarrow Table or mapping column -> 1-D array of length N.

        Returns
        -------
        ndarray, shape (N,), float64
        """
        col = self._column()
        if isinstance(X, TokenStats):
            raise TypeError(f"X: the column {col!r} needs text sampled from the model, which a TokenStats batch does "
                            "not carry; expected a per-sequence table (mia_fast.scoring.samia.samia_columns)")
        if not is_table(X):
            raise TypeError(f"X: expected a per-sequence table (pandas DataFrame, pyarrow Table or mapping column -> "
                            f"1-D array), got {type(X).__name__}")
        if col not in table_columns(X):
            raise ValueError(f"X: expected a column {col!r} (written by mia_fast.scoring.samia.samia_columns), "
                             f"got columns {table_columns(X)}")
        try:
            raw = np.asarray(X[col], dtype=np.float64)
        except (TypeError, ValueError):
            raw = None
        if raw is not None and raw.ndim == 1:
            empty = np.isnan(raw)
            if empty.any():
                raise ValueError(
                    f"X[{col!r}]: {int(empty.sum())} texts have no SaMIA score (NaN: too few words to split into "
                    f"prefix and suffix, or a prompt that fills the model's context; first rows: "
                    f"{first_indices(empty)}); drop those rows"
                )
        return column(X, col, "X")
