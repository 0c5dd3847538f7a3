"""Likelihood Ratio Attack, LiRA (Carlini et al., 2022, "Membership Inference Attacks From First
Principles"), vectorised over samples and queries.

For each sample n (and query q, e.g. an augmentation), the reference models give the statistic
of the models that trained on it (IN) and of those that did not (OUT). LiRA fits a Gaussian to
each group and scores the target model's statistic by a likelihood ratio. The formulas follow the
reference code (tensorflow/privacy, research/mi_lira_2021/plot.py, ``generate_ours`` and
``generate_ours_offline``), whose predictions are "lower = member"; here every score is negated
where needed so that higher = more likely member:

* online:          ``logpdf(t; mu_in, s_in) - logpdf(t; mu_out, s_out)``
* offline_logpdf:  ``-logpdf(t; mu_out, s_out)`` (two-sided: far from OUT on either side)
* offline_cdf:     ``log Phi((t - mu_out) / s_out)`` (one-sided test of the paper: how far the
  statistic lies to the right of the OUT distribution)

each averaged over the Q queries, with ``s = std + 1e-30`` as in the reference code.

The statistic is whatever the caller passes, as long as it is larger for members: LiRA's
``phi = log p - log(1 - p)`` of the true label for classifiers (``TokenStats.phi``), and for a
language model a per-sequence statistic such as ``phi_mean`` or ``-loss``.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
from scipy.special import log_ndtr
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ._validation import bool_array, float_array

__all__ = ["LiRA"]

log = logging.getLogger(__name__)

_MODES = ("online", "offline_cdf", "offline_logpdf")
_LOCS = ("mean", "median")
_VARIANCES = ("per_example", "global", "fixed", "auto")
_STD_EPS = 1e-30  # added to every std, as in the reference code
_HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)


def _logpdf(x: np.ndarray, loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z = (x - loc) / scale
    return -0.5 * z * z - np.log(scale) - _HALF_LOG_2PI


class _Group:
    """Masked statistics along the last axis of ``values (Q, N, K)`` with ``mask (N, K)``."""

    def __init__(self, values: np.ndarray, mask: np.ndarray):
        self.values, self.mask = values, mask
        self.count = mask.sum(axis=-1)  # (N,)
        self.mean = np.where(mask, values, 0.0).sum(axis=-1) / np.maximum(self.count, 1)  # (Q, N)

    def median(self) -> np.ndarray:
        """Median over the masked models (mean of the two middle values for an even count)."""
        ordered = np.sort(np.where(self.mask, self.values, np.nan), axis=-1)  # NaN sort last
        lo = np.broadcast_to(np.maximum(self.count - 1, 0) // 2, ordered.shape[:-1])[..., None]
        hi = np.broadcast_to(np.maximum(self.count, 1) // 2, ordered.shape[:-1])[..., None]
        take = np.take_along_axis
        return 0.5 * (take(ordered, lo, axis=-1) + take(ordered, hi, axis=-1))[..., 0]

    def squared_deviations(self) -> np.ndarray:
        """``(x - mean)^2`` summed over the masked models, shape (Q, N)."""
        dev = np.where(self.mask, self.values - self.mean[..., None], 0.0)
        return np.einsum("qnk,qnk->qn", dev, dev)

    def per_example_std(self) -> np.ndarray:
        return np.sqrt(self.squared_deviations() / np.maximum(self.count, 1))

    def pooled_std(self) -> float | None:
        """Within-sample std pooled over every sample and query (``None`` if it cannot be estimated).

        The pooled estimate of a variance shared by every sample: the squared deviations from
        each sample's own mean, over their degrees of freedom ``Q * sum_n (count_n - 1)``. Each
        sample spends one degree of freedom on its mean, so a sample with a single model adds
        none; dividing by ``Q * sum_n count_n`` instead would shrink the std by up to
        ``sqrt((n - 1) / n)``, the more so the fewer models, which is when ``global`` is used.
        """
        dof = np.maximum(self.count - 1, 0).sum() * self.values.shape[0]
        if dof == 0:
            return None
        return float(np.sqrt(self.squared_deviations().sum() / dof))

    def overall_std(self) -> float:
        """Std of all masked values around their grand mean (``np.std`` of every value)."""
        total = self.count.sum() * self.values.shape[0]
        grand = float(np.where(self.mask, self.values, 0.0).sum() / total)
        dev = np.where(self.mask, self.values - grand, 0.0)
        return float(np.sqrt(np.einsum("qnk,qnk->", dev, dev) / total))


class LiRA(BaseEstimator):
    """Likelihood Ratio Attack with per-sample Gaussians fitted on reference models.

    Parameters
    ----------
    mode : {"online", "offline_cdf", "offline_logpdf"}
        ``online`` compares the IN and OUT Gaussians; ``offline_cdf`` (one-sided) and
        ``offline_logpdf`` (two-sided, as the reference code) use the OUT models only.
    loc : {"mean", "median"}
        Centre of each Gaussian over the reference models (the reference code uses the median).
    variance : {"per_example", "global", "fixed", "auto"}
        ``per_example``: the std of each sample's (and query's) IN resp. OUT values; a sample
        with a single model in a group (random halves of 16 models leave a few such samples in
        thousands) takes that group's pooled std (as ``global``), counted in
        ``n_variance_fallback_`` and warned about once.
        ``global``: one std for IN and one for OUT, pooled within samples over every sample and
        query: squared deviations from each sample's mean over their degrees of freedom
        ``Q * sum_n (n_n - 1)``, so some sample needs 2 models in each group. ``fixed``: one std
        shared by both Gaussians, the std of all reference values around their grand mean (the
        IN values online, the OUT values offline), as the reference code's
        ``fix_variance=True``. ``auto``: ``per_example`` when every sample's Gaussians
        rest on at least ``fix_variance_below`` reference models (IN + OUT online, OUT offline),
        else ``global`` (``fixed`` where no sample has 2 models in a group), following the
        paper's advice for fewer than 64 reference models; the choice is in ``variance_used_``
        and logged.
    fix_variance_below : int
        Threshold of ``variance="auto"``.

    Attributes
    ----------
    mode_ : str
        The mode fitted (``score_samples`` uses it).
    variance_used_ : str
        The variance estimate used (``auto`` resolved).
    loc_in_, scale_in_ : ndarray, shape (Q, N), or None
        Centre and std of the IN Gaussians (None offline).
    loc_out_, scale_out_ : ndarray, shape (Q, N)
        Centre and std of the OUT Gaussians.
    n_in_, n_out_ : ndarray of int, shape (N,)
        IN and OUT reference models per sample.
    n_variance_fallback_ : int
        Samples whose per-example std fell back to the pooled one (0 unless ``per_example``).
    n_queries_, n_samples_ : int
        Q and N of the fitted statistics.
    """

    def __init__(self, mode: str = "online", loc: str = "median", variance: str = "auto",
                 fix_variance_below: int = 64):
        self.mode = mode
        self.loc = loc
        self.variance = variance
        self.fix_variance_below = fix_variance_below

    def _check_params(self) -> None:
        for name, value, allowed in (("mode", self.mode, _MODES), ("loc", self.loc, _LOCS),
                                     ("variance", self.variance, _VARIANCES)):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
        f = self.fix_variance_below
        if isinstance(f, (bool, np.bool_)) or not isinstance(f, (int, np.integer)) or f < 2:
            raise ValueError(f"fix_variance_below: expected an integer >= 2, got {f!r}")

    def _resolve_variance(self, n_in: np.ndarray, n_out: np.ndarray) -> str:
        if self.variance != "auto":
            return self.variance
        counts = n_out if self.mode != "online" else n_in + n_out  # models behind each sample's fit
        fewest = int(counts.min())
        chosen = "per_example" if fewest >= self.fix_variance_below else "global"
        groups = (n_in, n_out) if self.mode == "online" else (n_out,)
        if chosen == "global" and any(int(n.max()) < 2 for n in groups):
            chosen = "fixed"  # no sample has 2 models in a group: no within-sample spread to pool
        log.info("LiRA variance='auto': %s (fewest reference models per sample and Gaussian: %d, "
                 "threshold fix_variance_below=%d)", chosen, fewest, self.fix_variance_below)
        return chosen

    def _check_counts(self, n_in: np.ndarray, n_out: np.ndarray, variance: str) -> None:
        need = 1  # a centre; a per-example std with one model falls back to the pooled std
        online = self.mode == "online"
        lacking = ((n_in < need) | (n_out < need)) if online else (n_out < need)
        if lacking.any():
            which = f"{need} IN and {need} OUT" if online else f"{need} OUT"
            first = np.flatnonzero(lacking)[:5]
            detail = ", ".join(f"{i} ({n_in[i]} IN, {n_out[i]} OUT)" for i in first)
            raise ValueError(
                f"keep: {self.mode} LiRA with variance={variance!r} needs at least {which} "
                f"reference models per sample; {int(lacking.sum())} of {lacking.shape[0]} samples "
                f"lack them (first: {detail}{', ...' if lacking.sum() > 5 else ''})"
            )

    def fit(self, reference_stats: Any, keep: Any) -> "LiRA":
        """Fit the per-sample IN/OUT Gaussians on the reference models' statistics.

        Parameters
        ----------
        reference_stats : array-like, shape (K, N) or (K, Q, N)
            The statistic (larger for members) of each of K reference models on each of N samples
            (and Q queries).
        keep : array-like of bool, shape (K, N)
            ``keep[k, n]``: sample n was in reference model k's training set (IN).

        Returns
        -------
        self
        """
        self._check_params()
        stats = float_array(reference_stats, "reference_stats", ndims=(2, 3))
        if stats.ndim == 2:
            stats = stats[:, None, :]
        n_models, n_queries, n_samples = stats.shape
        member = bool_array(keep, "keep", (n_models, n_samples))
        n_in = member.sum(axis=0)
        n_out = n_models - n_in
        variance = self._resolve_variance(n_in, n_out)
        self._check_counts(n_in, n_out, variance)

        values = np.ascontiguousarray(stats.transpose(1, 2, 0))  # (Q, N, K): models contiguous
        groups = {"out": _Group(values, ~member.T)}
        if self.mode == "online":
            groups["in"] = _Group(values, member.T)
        fitted = {}
        fallback = np.zeros(n_samples, dtype=bool)
        for key, g in groups.items():
            centre = g.mean if self.loc == "mean" else g.median()
            if variance == "per_example":
                scale = g.per_example_std()
                single = g.count < 2
                if single.any():
                    pooled = g.pooled_std()
                    if pooled is None:
                        raise ValueError(
                            f"keep: {self.mode} LiRA with variance='per_example' needs samples with at least 2 "
                            f"{key.upper()} reference models; every sample has at most 1 (use variance='fixed')")
                    scale = np.where(single, pooled, scale)
                    fallback |= single
            elif variance == "global":
                pooled = g.pooled_std()
                if pooled is None:
                    raise ValueError(
                        f"keep: {self.mode} LiRA with variance='global' needs a sample with at "
                        f"least 2 {key.upper()} reference models to estimate the {key.upper()} "
                        f"std; every sample has at most 1 (use variance='fixed')")
                scale = np.full(centre.shape, pooled)
            else:  # fixed: one std for both Gaussians, from the IN values online (reference code)
                source = groups["in"] if self.mode == "online" else g
                scale = np.full(centre.shape, source.overall_std())
            fitted[key] = (centre, scale)
        self.loc_out_, self.scale_out_ = fitted["out"]
        self.loc_in_, self.scale_in_ = fitted.get("in", (None, None))
        self.mode_ = self.mode
        self.variance_used_ = variance
        self.n_in_, self.n_out_ = n_in, n_out
        self.n_variance_fallback_ = int(fallback.sum())
        self.n_queries_, self.n_samples_ = n_queries, n_samples
        if self.n_variance_fallback_:
            which = "IN or OUT" if self.mode == "online" else "OUT"
            warnings.warn(
                f"LiRA variance='per_example': {self.n_variance_fallback_} of {n_samples} samples have a single "
                f"{which} reference model; they use the pooled std of their group (n_variance_fallback_)",
                stacklevel=2)
        return self

    def score_samples(self, target_stats: Any) -> np.ndarray:
        """LiRA scores of the target model's statistics, higher = more likely member.

        Parameters
        ----------
        target_stats : array-like, shape (N,) or (Q, N)
            The target model's statistic on the N fitted samples (and Q queries).

        Returns
        -------
        ndarray, shape (N,), float64
            The per-query scores averaged over queries.
        """
        check_is_fitted(self)
        t = float_array(target_stats, "target_stats", ndims=(1, 2))
        if t.ndim == 1:
            t = t[None, :]
        if t.shape != (self.n_queries_, self.n_samples_):
            want = f"({self.n_samples_},) or " if self.n_queries_ == 1 else ""
            raise ValueError(f"target_stats: expected shape {want}({self.n_queries_}, "
                             f"{self.n_samples_}) as the fitted reference statistics, got {t.shape}")
        scale_out = self.scale_out_ + _STD_EPS
        if self.mode_ == "online":
            score = (_logpdf(t, self.loc_in_, self.scale_in_ + _STD_EPS)
                     - _logpdf(t, self.loc_out_, scale_out))
        elif self.mode_ == "offline_logpdf":
            score = -_logpdf(t, self.loc_out_, scale_out)
        else:
            score = log_ndtr((t - self.loc_out_) / scale_out)
        return score.mean(axis=0)
