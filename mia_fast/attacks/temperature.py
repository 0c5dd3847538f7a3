"""Consistency across temperatures: members keep sharp, stable output distributions.

A model that memorised a text ranks its tokens first: sharpening the softmax (temperature
tau < 1) drives their log-probabilities to 0, and softening it (tau > 1) raises their loss only
slowly. On an unseen text the targets often sit below the top token by a gap Delta, and the loss
at temperature tau grows like Delta / tau as tau falls. The attack measures how much the
per-sequence statistic moves across temperatures (the ``loss_t{tau}`` columns that
``mia-fast score --temperatures`` writes, from `mia_fast.token_stats(..., temperatures=...)`):
the less it moves, the more likely the text is a member.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ..aggregate import tempered_column
from ..stats import TokenStats, check_temperatures
from ._validation import column, is_table, table_columns
from .threshold import StatelessAttack

__all__ = ["TemperatureAttack"]

_STATISTICS = ("loss", "entropy")
_SPREADS = ("std", "range", "slope")


class TemperatureAttack(StatelessAttack):
    """Score = minus the spread of a per-sequence statistic across temperatures.

    Parameters
    ----------
    temperatures : sequence of float, optional
        Temperatures whose columns ``{statistic}_t{tau}`` are used (default: every such column of
        the table). The plain column (``loss`` / ``entropy_mean``) joins as tau = 1 when the table
        has it and 1 is not listed.
    statistic : {'loss', 'entropy'}
        Mean token loss ``-log p_tau(y)`` or mean entropy of ``p_tau``.
    spread : {'slope', 'std', 'range'}
        ``slope``: least-squares slope of the statistic against ``log tau`` (score = the slope:
        an unseen text's loss falls steeply as tau grows, a member's hardly moves or rises);
        ``std`` / ``range``: standard deviation / max - min across temperatures (score = minus it).

    Attributes
    ----------
    temperatures_ : tuple of float
        The temperatures used by the last `score_samples`, ascending.
    """

    def __init__(self, temperatures: Optional[Sequence[float]] = None, statistic: str = "loss", spread: str = "slope"):
        self.temperatures = temperatures
        self.statistic = statistic
        self.spread = spread

    def _check(self) -> None:
        if self.statistic not in _STATISTICS:
            raise ValueError(f"statistic: expected one of {_STATISTICS}, got {self.statistic!r}")
        if self.spread not in _SPREADS:
            raise ValueError(f"spread: expected one of {_SPREADS}, got {self.spread!r}")
        if self.temperatures is not None:
            check_temperatures(self.temperatures)

    def _matrix(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """(N, T) statistic per sequence and temperature, and the T temperatures (ascending)."""
        if isinstance(X, TokenStats):
            from ..aggregate import aggregate

            if X.tempered is None:
                raise ValueError("X: expected TokenStats with tempered statistics (token_stats(..., temperatures=...))")
            X = aggregate(X, ks=(0.2,))
        if not is_table(X):
            raise TypeError(f"X: expected a per-sequence table or TokenStats, got {type(X).__name__}")
        names = table_columns(X)
        prefix = f"{self.statistic}_t"
        if self.temperatures is not None:
            temps = sorted(set(check_temperatures(self.temperatures)))
        else:
            temps = []
            for name in names:
                if name.startswith(prefix):
                    try:
                        temps.append(float(name[len(prefix):]))
                    except ValueError:
                        continue
            temps = sorted(set(temps))
        plain = "loss" if self.statistic == "loss" else "entropy_mean"
        cols = {t: tempered_column(self.statistic, t) for t in temps}
        if 1.0 not in cols and plain in names:
            cols[1.0] = plain
        if len(cols) < 2:
            raise ValueError(
                f"X: expected {prefix}<tau> columns for at least 2 temperatures (score with --temperatures), "
                f"got columns {names}"
            )
        order = sorted(cols)
        n = None
        values = []
        for t in order:
            v = column(X, cols[t], "X", n)
            n = v.shape[0]
            values.append(v)
        return np.stack(values, axis=1), np.asarray(order)

    def score_samples(self, X: Any) -> np.ndarray:
        """Membership scores, higher = more likely member.

        Parameters
        ----------
        X : table or TokenStats
            Per-sequence table with ``{statistic}_t{tau}`` columns (DataFrame, pyarrow Table or
            mapping column -> 1-D array of length N), or a `TokenStats` batch of shape (N, L) with
            tempered statistics.

        Returns
        -------
        ndarray, shape (N,), float64
        """
        self._check()
        values, temps = self._matrix(X)
        self.temperatures_ = tuple(float(t) for t in temps)
        if self.spread == "std":
            return -values.std(axis=1)
        if self.spread == "range":
            return -(values.max(axis=1) - values.min(axis=1))
        x = np.log(temps)
        x = x - x.mean()
        return (values - values.mean(axis=1, keepdims=True)) @ x / float(x @ x)
