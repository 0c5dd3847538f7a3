"""Reference-model calibration (Carlini et al., 2021): the target's loss against a reference LM's."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ._validation import first_indices, is_table, sequence_values, table_columns

__all__ = ["ReferenceAttack"]

_MODES = ("loss_diff", "logppl_ratio")


def _ids(x: Any, name: str) -> Optional[np.ndarray]:
    """The table's ``id`` column (None without one), checked for repeats."""
    if not (is_table(x) and "id" in table_columns(x)):
        return None
    ids = np.asarray(x["id"])
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"{name}['id']: expected unique ids, got {int((counts > 1).sum())} repeated ids "
            f"(e.g. {list(values[counts > 1][:3])})"
        )
    return ids


class ReferenceAttack(BaseEstimator):
    """Calibrate the target model's loss by a reference model's loss on the same samples.

    ``fit`` takes the reference model's per-sequence table (it stores the reference losses and
    ids); ``score_samples`` takes the target model's table and aligns it to the reference by the
    ``id`` column when both tables have one (the two tables must then hold the same ids, in any
    order), otherwise by row order.

    Parameters
    ----------
    mode : {"loss_diff", "logppl_ratio"}
        ``loss_diff``: score = -(loss_target - loss_ref), i.e. minus the log of the perplexity
        ratio ppl_target / ppl_ref. ``logppl_ratio``: score = -(loss_target / loss_ref), minus
        the ratio of log-perplexities (Carlini et al., 2021, used with a smaller model or zlib as
        the reference); needs positive reference losses.

    Attributes
    ----------
    reference_loss_ : ndarray, shape (N,)
        The reference model's loss per sample.
    reference_ids_ : ndarray, shape (N,), or None
        The reference table's ``id`` column, when it has one.
    """

    def __init__(self, mode: str = "loss_diff"):
        self.mode = mode

    def _check_mode(self) -> str:
        if self.mode not in _MODES:
            raise ValueError(f"mode: expected one of {_MODES}, got {self.mode!r}")
        return self.mode

    def fit(self, reference: Any, y: Optional[Any] = None) -> "ReferenceAttack":
        """Store the reference model's losses.

        Parameters
        ----------
        reference : table or TokenStats
            The reference model's per-sequence table (column ``loss``, optional ``id``) or its
            `TokenStats` batch of shape (N, L), on the samples that will be scored.
        y : ignored

        Returns
        -------
        self
        """
        mode = self._check_mode()
        loss = sequence_values(reference, "loss", "reference")
        if mode == "logppl_ratio" and (loss <= 0).any():
            raise ValueError(
                f"reference['loss']: mode 'logppl_ratio' divides by the reference loss, expected "
                f"positive values, got {int((loss <= 0).sum())} values <= 0 (first at "
                f"{first_indices(loss <= 0)})"
            )
        ids = _ids(reference, "reference")
        self.reference_loss_ = loss
        self.reference_ids_ = ids
        return self

    def _aligned_reference(self, target: Any, n_target: int) -> np.ndarray:
        ids = _ids(target, "target")
        n_ref = self.reference_loss_.shape[0]
        if ids is None or self.reference_ids_ is None:
            if n_target != n_ref:
                raise ValueError(
                    f"target: expected {n_ref} rows (the reference's, aligned by row order since "
                    f"the tables do not both have an 'id' column), got {n_target}"
                )
            return self.reference_loss_
        order = np.argsort(self.reference_ids_, kind="stable")
        sorted_ids = self.reference_ids_[order]
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, n_ref - 1)
        missing = sorted_ids[pos] != ids
        if missing.any() or n_target != n_ref:
            raise ValueError(
                f"target['id']: expected the same ids as the reference table ({n_ref} ids), got "
                f"{n_target} rows of which {int(missing.sum())} ids are not in the reference "
                f"(e.g. {list(ids[missing][:3])})"
            )
        return self.reference_loss_[order[pos]]

    def score_samples(self, target: Any) -> np.ndarray:
        """Calibrated membership scores, higher = more likely member.

        Parameters
        ----------
        target : table or TokenStats
            The target model's per-sequence table (column ``loss``, optional ``id``) or its
            `TokenStats` batch of shape (N, L).

        Returns
        -------
        ndarray, shape (N,), float64
            In the target's row order.
        """
        check_is_fitted(self)
        mode = self._check_mode()
        loss = sequence_values(target, "loss", "target")
        ref = self._aligned_reference(target, loss.shape[0])
        return -(loss - ref) if mode == "loss_diff" else -(loss / ref)
