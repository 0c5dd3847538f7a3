"""Robust Membership Inference Attack, RMIA (Zarifzadeh et al., 2024, "Low-Cost High-Power
Membership Inference Attacks").

With ``Pr(x | theta)`` the target model's probability of sample x and ``p(x)`` its average over
reference models, RMIA compares x with population samples z through the likelihood ratio

    LR(x, z) = (Pr(x | theta) / p(x)) / (Pr(z | theta) / p(z))

and scores x by the share of population samples with ``LR(x, z) >= gamma``. Everything runs in
log space (``r(x) = log Pr(x | theta) - log p(x)``, ``LR >= gamma  <=>  r(z) <= r(x) - log
gamma``), so the score is one sort of the Z population ratios and one ``searchsorted`` of the N
sample ratios: O((N + Z) log Z) time, no N x Z matrix.

``p(x)``: online, the mean of ``Pr(x | theta_k)`` over all K reference models (each sample is IN
about half of them). Offline, the mean over the models that did not train on x (OUT), corrected
by the paper's linear approximation ``p(x) = ((1 + a) p_OUT(x) + (1 - a)) / 2``; population
samples are OUT of every reference model, so ``p(z)`` is the mean over all models, with the same
correction offline.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ._validation import bool_array, first_indices, float_array

__all__ = ["RMIA"]


def _log_mean(log_p: np.ndarray, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """``log(mean(exp(log_p)))`` over axis 0, over the entries of ``mask`` (each column has one)."""
    x = log_p if mask is None else np.where(mask, log_p, -np.inf)
    top = x.max(axis=0)
    count = x.shape[0] if mask is None else mask.sum(axis=0)
    return top + np.log(np.exp(x - top).sum(axis=0) / count)


class RMIA(BaseEstimator):
    """RMIA: pairwise likelihood ratios against population samples.

    Inputs are per-model per-sample probabilities ``Pr(x | theta)`` (for a classifier, the
    softmax probability of the true label; for a language model, ``exp(-loss)``, the geometric
    mean token probability), or their natural logs with ``log_input=True`` (``-loss`` for a
    language model, which never underflows). Probabilities must lie in (0, 1], logs in
    (-inf, 0].

    Parameters
    ----------
    offline : bool
        Offline: ``p(x)`` from the OUT reference models with the ``a`` correction. Online: the
        plain mean over all reference models.
    a : float in [0, 1]
        Offline correction ``p(x) = ((1 + a) p_OUT(x) + (1 - a)) / 2`` (0.3 is the default of the
        authors' code; tune it on a reference model used as a target).
    gamma : float > 0
        Likelihood-ratio threshold of the pairwise test.
    log_input : bool
        Whether inputs are natural-log probabilities.

    Attributes
    ----------
    log_p_x_ : ndarray, shape (N,)
        ``log p(x)`` of each sample.
    log_p_z_ : ndarray, shape (Z,)
        ``log p(z)`` of each population sample.
    n_samples_, n_population_ : int
        N and Z.
    """

    def __init__(self, offline: bool = True, a: float = 0.3, gamma: float = 1.0, log_input: bool = False):
        self.offline = offline
        self.a = a
        self.gamma = gamma
        self.log_input = log_input

    def _check_params(self) -> None:
        if not isinstance(self.offline, (bool, np.bool_)):
            raise TypeError(f"offline: expected a bool, got {self.offline!r}")
        if not isinstance(self.log_input, (bool, np.bool_)):
            raise TypeError(f"log_input: expected a bool, got {self.log_input!r}")
        if not isinstance(self.a, (int, float, np.floating)) or not 0.0 <= float(self.a) <= 1.0:
            raise ValueError(f"a: expected a number in [0, 1], got {self.a!r}")
        if not isinstance(self.gamma, (int, float, np.floating)) or not float(self.gamma) > 0.0:
            raise ValueError(f"gamma: expected a number > 0, got {self.gamma!r}")

    def _log_probs(self, x: Any, name: str, ndims: tuple[int, ...]) -> np.ndarray:
        arr = float_array(x, name, ndims=ndims)
        if self.log_input:
            if (arr > 0).any():
                raise ValueError(f"{name}: expected log-probabilities <= 0 (log_input=True), got "
                                 f"{int((arr > 0).sum())} values > 0 (max {arr.max():.6g})")
            return arr
        bad = (arr <= 0) | (arr > 1)
        if bad.any():
            raise ValueError(
                f"{name}: expected probabilities in (0, 1], got {int(bad.sum())} values outside "
                f"(first at flat index {first_indices(bad.ravel(), 1)}); pass log-probabilities "
                f"with log_input=True to avoid underflow"
            )
        return np.log(arr)

    def _correct(self, log_mean: np.ndarray) -> np.ndarray:
        """``log(((1 + a) exp(log_mean) + (1 - a)) / 2)`` offline; unchanged online."""
        if not self.offline:
            return log_mean
        a = float(self.a)
        if a == 1.0:
            return log_mean
        return np.logaddexp(np.log1p(a) + log_mean, np.log1p(-a)) - np.log(2.0)

    def fit(self, reference: Any, keep: Optional[Any] = None, *, population_reference: Any) -> "RMIA":
        """Average the reference models' probabilities of the samples and of the population.

        Parameters
        ----------
        reference : array-like, shape (K, N)
            ``Pr(x_n | theta_k)`` of the N samples under K reference models.
        keep : array-like of bool, shape (K, N), optional
            ``keep[k, n]``: sample n was in reference model k's training set. Offline, only the
            OUT models (``~keep``) enter ``p(x)``; None means every model is OUT for every
            sample. Online, every model enters and ``keep`` is only checked for its shape.
        population_reference : array-like, shape (K, Z)
            ``Pr(z | theta_k)`` of the Z population samples (OUT of every reference model).

        Returns
        -------
        self
        """
        self._check_params()
        ref = self._log_probs(reference, "reference", (2,))
        n_models, n_samples = ref.shape
        pop = self._log_probs(population_reference, "population_reference", (2,))
        if pop.shape[0] != n_models:
            raise ValueError(f"population_reference: expected {n_models} rows (one per reference model, "
                             f"as reference), got shape {pop.shape}")
        out = None if keep is None else ~bool_array(keep, "keep", (n_models, n_samples))
        if self.offline and out is not None:
            n_out = out.sum(axis=0)
            if (n_out == 0).any():
                raise ValueError(
                    f"keep: offline RMIA needs at least 1 OUT reference model per sample; "
                    f"{int((n_out == 0).sum())} of {n_samples} samples have none "
                    f"(first: {first_indices(n_out == 0)})"
                )
            log_mean_x = _log_mean(ref, out)
        else:
            log_mean_x = _log_mean(ref)
        self.log_p_x_ = self._correct(log_mean_x)
        self.log_p_z_ = self._correct(_log_mean(pop))
        self.n_samples_, self.n_population_ = n_samples, pop.shape[1]
        return self

    def score_samples(self, target: Any, population_target: Any) -> np.ndarray:
        """Share of population samples each sample dominates, higher = more likely member.

        Parameters
        ----------
        target : array-like, shape (N,)
            ``Pr(x_n | theta)`` under the target model.
        population_target : array-like, shape (Z,)
            ``Pr(z | theta)`` of the population samples under the target model.

        Returns
        -------
        ndarray, shape (N,), float64 in [0, 1]
            ``#{z : LR(x, z) >= gamma} / Z``.
        """
        check_is_fitted(self)
        self._check_params()
        t = self._log_probs(target, "target", (1,))
        tz = self._log_probs(population_target, "population_target", (1,))
        if t.shape[0] != self.n_samples_:
            raise ValueError(f"target: expected {self.n_samples_} samples (as in fit), got {t.shape[0]}")
        if tz.shape[0] != self.n_population_:
            raise ValueError(f"population_target: expected {self.n_population_} population samples "
                             f"(as in fit), got {tz.shape[0]}")
        ratio_z = np.sort(tz - self.log_p_z_)
        ratio_x = t - self.log_p_x_
        dominated = np.searchsorted(ratio_z, ratio_x - np.log(float(self.gamma)), side="right")
        return dominated / float(self.n_population_)
