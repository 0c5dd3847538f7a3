"""The neighbourhood attack (Mattern et al., Findings of ACL 2023, "Membership Inference Attacks
against Language Models via Neighbourhood Comparison")."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..stats import TokenStats
from ._validation import column, first_indices, is_table, table_columns
from .threshold import StatelessAttack

__all__ = ["NeighbourhoodAttack"]


def _variant_table(X: Any, cols: tuple[str, ...], what: str) -> Any:
    """``X`` when it is a per-sequence table holding ``cols``; clear errors otherwise."""
    if isinstance(X, TokenStats):
        raise TypeError(f"X: the columns {list(cols)} need the scores of {what}, which a TokenStats batch does "
                        f"not carry; expected a per-sequence table")
    if not is_table(X):
        raise TypeError(f"X: expected a per-sequence table (pandas DataFrame, pyarrow Table or mapping column -> "
                        f"1-D array), got {type(X).__name__}")
    missing = [c for c in cols if c not in table_columns(X)]
    if missing:
        raise ValueError(f"X: expected the columns {list(cols)} (scored with {what}), got columns "
                         f"{table_columns(X)}")
    return X


def _finite_column(table: Any, col: str, reason: str, n_rows: Any = None) -> np.ndarray:
    """Column ``col`` as float64; NaN rows raise a ValueError that says why they happen."""
    raw = np.asarray(table[col])
    if raw.dtype.kind == "f" and np.isnan(raw).any():
        bad = np.isnan(raw)
        raise ValueError(f"X[{col!r}]: expected finite values, got {int(bad.sum())} NaN rows (first: "
                         f"{first_indices(bad)}): {reason}; drop those rows before scoring")
    return column(table, col, "X", n_rows=n_rows)


class NeighbourhoodAttack(StatelessAttack):
    """score = loss_neighbours - loss: how much lower the text's loss is than its neighbours'.

    Neighbours are copies of the text with one word replaced by a masked LM's proposal
    (`mia_fast.scoring.neighbours.neighbour_texts`); ``loss_neighbours`` is the mean of their
    losses (mean token NLL) under the target model. A model that trained on the text fits it
    better than its near-identical neighbours, so a large gap is member-like (Mattern et al.,
    2023: member if ``L(x) - mean_i L(x_i) < threshold``; the sign makes higher = more likely
    member). Nothing is learned.
    """

    def score_samples(self, X: Any) -> np.ndarray:
        """Membership scores, higher = more likely member.

        Parameters
        ----------
        X : table
            Per-sequence table with the columns ``loss`` and ``loss_neighbours`` (DataFrame,
            pyarrow Table or mapping column -> 1-D array of length N).

        Returns
        -------
        ndarray, shape (N,), float64
        """
        table = _variant_table(X, ("loss", "loss_neighbours"), "neighbour texts")
        neighbours = _finite_column(table, "loss_neighbours",
                                    "a text too short for any substitution has no neighbours")
        loss = column(table, "loss", "X", n_rows=neighbours.shape[0])
        return neighbours - loss
