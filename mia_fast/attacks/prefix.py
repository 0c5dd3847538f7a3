"""Prefix-sensitivity attacks: the loss of a text's continuation after its own prefix, and ReCaLL.

Both read columns that ``mia-fast score`` writes with ``--prefix-tokens`` and ``--context-file``
(`mia_fast.scoring.prefix`): ``loss_prefix{k}`` (mean NLL of the text's tokens after its first k) and
``recall = loss_context / loss`` (the loss after a fixed non-member context over the plain loss).
Like the other threshold attacks they learn nothing: ``fit`` returns the attack unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..columns import PrefixSetting, check_prefix_tokens, loss_prefix_column
from ..stats import TokenStats
from ._validation import column, first_indices, is_table, table_columns
from .threshold import _ThresholdAttack

__all__ = ["PrefixAttack", "ReCaLLAttack", "ConReCaLLAttack"]

_MODES = ("loss", "drop")


def _check_prefix(value: Any) -> PrefixSetting:
    try:
        return check_prefix_tokens([value])[0]
    except ValueError:
        raise ValueError(f"prefix: expected a token count (integer >= 0) or a fraction in (0, 1), got {value!r}") \
            from None


def _table(X: Any, col: str, flag: str = "--prefix-tokens / --context-file") -> Any:
    """``X`` when it is a per-sequence table with the column ``col`` (written by ``mia-fast score {flag}``)."""
    if isinstance(X, TokenStats):
        raise TypeError(f"X: the column {col!r} needs more than a TokenStats batch carries; expected a per-sequence "
                        f"table (score with {flag})")
    if not is_table(X):
        raise TypeError(f"X: expected a per-sequence table (pandas DataFrame, pyarrow Table or mapping column -> "
                        f"1-D array), got {type(X).__name__}")
    if col not in table_columns(X):
        raise ValueError(f"X: expected a column {col!r} (written by mia-fast score {flag}), "
                         f"got columns {table_columns(X)}")
    return X


class PrefixAttack(_ThresholdAttack):
    """The loss of a text's continuation once the model has read the text's own first tokens.

    A member's continuation becomes very predictable after the start of the text. The scores read
    the column ``loss_prefix{k}`` of a score table (`mia_fast.scoring.prefix`).

    Parameters
    ----------
    prefix : int or float
        The prefix setting the table was scored with: a token count (``16``; ``0`` is the whole
        text, i.e. the LOSS attack) or a fraction in (0, 1) of each text's tokens (``0.25``).
    mode : {"loss", "drop"}
        ``loss``: score = -loss_prefix{k}, the LOSS attack on the continuation. ``drop``: score =
        loss - loss_prefix{k}, how much easier the continuation is than the whole text. On the
        tiny GPT-2 of ``tests/test_prefix.py`` (48 texts, half members, 12 training epochs)
        ``loss`` reaches an AUC near that of LOSS (0.95-0.97 for k = 8, 16, 0.25, 0.5; LOSS 0.98)
        while ``drop`` stays near or below chance (0.31-0.57): a model that memorised a text also
        predicts its first tokens well.

    Notes
    -----
    A text with no token after its prefix has NaN in ``loss_prefix{k}``; `score_samples`
    refuses such tables (choose a shorter prefix or drop those rows).
    """

    def __init__(self, prefix: PrefixSetting = 16, mode: str = "loss"):
        self.prefix = prefix
        self.mode = mode

    def _column(self) -> str:
        if self.mode not in _MODES:
            raise ValueError(f"mode: expected one of {_MODES}, got {self.mode!r}")
        return loss_prefix_column(_check_prefix(self.prefix))

    def score_samples(self, X: Any) -> np.ndarray:
        """Membership scores, higher = more likely member.

        Parameters
        ----------
        X : table
            Per-sequence table with the column ``loss_prefix{k}`` (and ``loss`` for mode
            ``drop``): DataFrame, pyarrow Table or mapping column -> 1-D array of length N.

        Returns
        -------
        ndarray, shape (N,), float64
        """
        col = self._column()
        table = _table(X, col)
        raw = np.asarray(table[col], dtype=np.float64)
        empty = np.isnan(raw)
        if empty.any():
            raise ValueError(
                f"X[{col!r}]: {int(empty.sum())} texts have no token after their prefix (NaN; first rows: "
                f"{first_indices(empty)}); choose a shorter prefix or drop those rows"
            )
        suffix = column(table, col, "X")
        if self.mode == "loss":
            return -suffix
        return column(table, "loss", "X", n_rows=suffix.shape[0]) - suffix


class ReCaLLAttack(_ThresholdAttack):
    """ReCaLL (Xie et al., 2024): how much a fixed non-member context raises the text's loss.

    score = recall = loss_context / loss, read from the column ``recall`` (``mia-fast score
    --context-file``): the ratio of the text's log-likelihood after the context to its plain
    log-likelihood. Conditioning on unrelated text disturbs what the model memorised: members'
    loss rises more than non-members', so **larger ratios are more member-like** (as in the
    paper, where members' log-likelihood drops more). Measured on the tiny GPT-2 of
    ``tests/test_prefix.py`` (24 members, 24 non-members, 48 context tokens from other
    paragraphs): median ratio 1.25 for members and 1.03 for non-members, AUC 0.98, after 12
    training epochs; 2.05 and 1.05, AUC 0.99, after 20 epochs.
    """

    def _column(self) -> str:
        return "recall"

    def score_samples(self, X: Any) -> np.ndarray:
        """Membership scores ``recall``, higher = more likely member.

        Parameters
        ----------
        X : table
            Per-sequence table with the column ``recall`` (DataFrame, pyarrow Table or mapping).

        Returns
        -------
        ndarray, shape (N,), float64
        """
        return column(_table(X, "recall"), "recall", "X")


class ConReCaLLAttack(_ThresholdAttack):
    """Con-ReCaLL (Wang et al. 2024, "Con-ReCaLL: Detecting Pre-training Data in LLMs via Contrastive
    Decoding"): ReCaLL with a member context as well as a non-member one.

    score = (loss_context - gamma * loss_member_context) / loss, the paper's
    ``(LL(x | P_nonmember) - gamma * LL(x | P_member)) / LL(x)`` with ``LL = -loss`` (the minus
    signs cancel). A non-member context disturbs a member more than a non-member (ReCaLL), and a
    member context helps it more, so the contrast widens the gap: **larger = more member-like**.
    Reads ``loss_context`` (``mia-fast score --context-file``, known non-members),
    ``loss_member_context`` (``--member-context-file``, known members; `mia_fast.scoring.variants.MemberContext`)
    and ``loss``.

    Parameters
    ----------
    gamma : float >= 0
        Weight of the member context (``gamma = 0`` is ReCaLL's ratio; the paper's default is 1).
    """

    def __init__(self, gamma: float = 1.0):
        self.gamma = gamma

    def _column(self) -> str:
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float, np.integer, np.floating)) \
                or not 0.0 <= float(self.gamma) < np.inf:
            raise ValueError(f"gamma: expected a finite number >= 0, got {self.gamma!r}")
        return "loss_member_context"

    def score_samples(self, X: Any) -> np.ndarray:
        """Membership scores, higher = more likely member.

        Parameters
        ----------
        X : table
            Per-sequence table with ``loss``, ``loss_context`` and ``loss_member_context``.

        Returns
        -------
        ndarray, shape (N,), float64
        """
        self._column()
        flag = "--context-file and --member-context-file"
        table = _table(_table(X, "loss_member_context", flag), "loss_context", flag)
        member = column(table, "loss_member_context", "X")
        nonmember = column(table, "loss_context", "X", n_rows=member.shape[0])
        loss = column(table, "loss", "X", n_rows=member.shape[0])
        if (loss <= 0).any():
            raise ValueError(f"X['loss']: expected positive losses (mean NLL), got {int((loss <= 0).sum())} values <= 0")
        return (nonmember - float(self.gamma) * member) / loss
