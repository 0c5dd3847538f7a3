"""Quantile-regression membership inference (Bertran et al., NeurIPS 2023): no shadow models.

Bertran, Tang, Roth, Kearns, Morgenstern and Wu, "Scalable Membership Inference Attacks via
Quantile Regression", NeurIPS 2023 (arXiv:2307.03694). A regressor fitted on **known non-members
only** predicts, from features of an example, the ``1 - alpha`` quantile ``q(x)`` of a base
attack's score ``s(x)`` over non-members like it (pinball loss at level ``1 - alpha``). An example
is flagged a member when ``s(x) > q(x)``: a non-member exceeds its own conditional quantile with
probability ``alpha``, so the false-positive rate is ``alpha`` by construction, whatever the
features, while examples whose score is high *for their kind* stand out. The paper's code
(``amazon-science/quantile-mia``) and MIMIR (``iamgroot42/mimir``, ``mimir/attacks/quantile.py``:
pinball loss ``max(alpha (q - s), (1 - alpha) (s - q))``, score ``s - q`` up to its sign
convention) fit a neural network on the raw example; here the regressor is a scikit-learn model
on columns of the per-sequence score table.
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional, Sequence, Union

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted

from ._validation import bool_array, first_indices, is_table, table_columns

__all__ = ["QuantileRegressionAttack", "DEFAULT_QUANTILE_FEATURES", "BASE_COLUMN_SIGNS"]

#: Default features: the text's length in tokens and its zlib-compressed length in bytes. Both
#: describe the text, not the target model, so they carry no membership signal of their own.
DEFAULT_QUANTILE_FEATURES: tuple[str, ...] = ("n_tokens", "zlib_length")

#: Per-sequence columns usable by name as ``base``, with the sign that orients them so that
#: higher = more likely member (``min_k_{k}`` and ``min_k_pp_{k}`` for any k are +1 too).
BASE_COLUMN_SIGNS: dict[str, float] = {
    "loss": -1.0,
    "zlib": -1.0,
    "dc_pdd": 1.0,
    "top1_acc": 1.0,
    "phi_mean": 1.0,
    "log_rank_mean": -1.0,
    "entropy_mean": -1.0,
}
_MIN_K = re.compile(r"^min_k_(pp_)?[0-9.]+$")
_REGRESSORS = ("gbm", "linear")
# Fewest non-members a fit takes, whatever alpha.
_MIN_NONMEMBERS = 10
# Smaller trees and steps than scikit-learn's defaults (31 leaves, rate 0.1): fitted in-sample, a
# boosted quantile overfits, and new non-members exceed it more often than alpha (0.082 instead of
# 0.05 with the defaults, 0.059 with these, on 2000 rows of one feature).
_GBM_DEFAULTS: dict[str, Any] = {"max_leaf_nodes": 8, "learning_rate": 0.05, "max_iter": 100}


def _finite_column(table: Any, col: str, name: str) -> np.ndarray:
    """Column ``col`` as float64 (NaN allowed here; the callers say what NaN means)."""
    try:
        values = np.asarray(table[col])
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}[{col!r}]: expected a 1-D array of numbers ({exc})") from None
    if values.dtype.kind not in "biuf":
        raise TypeError(f"{name}[{col!r}]: expected real numbers, got dtype {values.dtype}")
    if values.ndim != 1:
        raise ValueError(f"{name}[{col!r}]: expected a 1-D column, got shape {values.shape}")
    return values.astype(np.float64, copy=False)


def _feature(table: Any, col: str, name: str, columns: list[str]) -> np.ndarray:
    if col in columns:
        return _finite_column(table, col, name)
    if col == "zlib_length" and "loss" in columns and "zlib" in columns:
        # zlib = loss / zlib_length (mia_fast.aggregate), so the byte length is loss / zlib
        loss, ratio = _finite_column(table, "loss", name), _finite_column(table, "zlib", name)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.round(loss / ratio)
    derived = " (or 'loss' and 'zlib', from which 'zlib_length' is derived)" if col == "zlib_length" else ""
    raise ValueError(f"{name}: expected a feature column {col!r}{derived}, got columns {columns}")


class QuantileRegressionAttack(BaseEstimator):
    """Per-example thresholds from quantile regression on known non-members (Bertran et al., 2023).

    Bertran et al., "Scalable Membership Inference Attacks via Quantile Regression", NeurIPS
    2023. ``fit`` takes a per-sequence score table of **known non-members** (texts certainly not
    in the target's training data, scored by the same model) and fits a regressor of the base
    score on the features at quantile level ``1 - alpha``. ``score_samples`` returns the base
    score minus its predicted quantile: higher = more likely member, and ``> 0`` (`predict`)
    flags a member with a false-positive rate of ``alpha`` on non-members drawn like the fitting
    ones. No shadow or reference model is trained.

    Parameters
    ----------
    base : str or attack
        The base score, higher = more likely member: an attack with ``score_samples(table)``
        (e.g. ``LossAttack()``, ``MinKPlusPlus(0.2)``; used as given, so fit it first if it
        learns anything), or the name of a column of `BASE_COLUMN_SIGNS` (``"loss"`` means
        ``-loss``, ``"min_k_0.2"`` is taken as is, ...).
    alpha : float in (0, 1)
        Target false-positive rate; the regressor estimates the ``1 - alpha`` quantile.
    features : sequence of str, optional
        Columns of the table describing each example (default `DEFAULT_QUANTILE_FEATURES`:
        ``n_tokens`` and ``zlib_length``, the zlib-compressed byte length, derived as
        ``loss / zlib`` when the table has no such column). Use features of the text, not of the
        target model's fit to it: the false-positive rate holds for any features, but a feature
        that moves with membership (the base score itself, the target's entropy) raises members'
        predicted quantiles too and takes away the attack's power. A reference model's loss on
        the same texts, joined into the table, is a good feature.
    regressor : {"gbm", "linear"} or scikit-learn regressor
        ``"gbm"``: ``HistGradientBoostingRegressor(loss="quantile", quantile=1 - alpha,
        max_leaf_nodes=8, learning_rate=0.05, max_iter=100)`` (smaller steps than
        scikit-learn's defaults, which overfit the quantile);
        ``"linear"``: ``QuantileRegressor(quantile=1 - alpha, alpha=0, solver="highs")``, a
        linear model under the pinball loss (a linear program: for up to ~10^4 rows). A regressor
        instance is cloned and must estimate the ``1 - alpha`` quantile itself.
    random_state : int, optional
        Seed of the regressor (where it has one) and of the calibration split.
    regressor_params : dict, optional
        Extra keyword arguments of the named regressor (e.g. ``{"max_iter": 200}``).
    calibration_fraction : float in [0, 1)
        0 (default): the plain quantile regression of the paper; its false-positive rate on new
        non-members is ``alpha`` up to the regressor's error (a boosted quantile fitted in-sample
        tends to be exceeded slightly more often than ``alpha``). Otherwise this fraction of the
        non-members is held out, and the predicted quantiles are shifted by the
        ``ceil((n_cal + 1)(1 - alpha))``-th smallest residual ``s - q`` on it (split conformal
        quantile regression, Romano et al., 2019), which bounds the false-positive rate by
        ``alpha`` in finite samples even when the regressor over- or under-fits.

    Attributes
    ----------
    quantile_ : float
        The quantile level fitted, ``1 - alpha``.
    features_ : tuple of str
        The feature columns used.
    regressor_ : scikit-learn regressor
        The fitted quantile model of the base score given the features.
    offset_ : float
        Shift added to the regressor's predictions (0 without calibration).
    n_nonmembers_ : int
        Non-members used (fitting and calibration together).
    train_fpr_ : float
        Share of the fitting non-members flagged (in-sample; near ``alpha`` unless overfitted).
    """

    def __init__(
        self,
        base: Union[str, Any] = "loss",
        alpha: float = 0.05,
        features: Optional[Sequence[str]] = None,
        regressor: Union[str, Any] = "gbm",
        random_state: Optional[int] = 0,
        regressor_params: Optional[dict[str, Any]] = None,
        calibration_fraction: float = 0.0,
    ):
        self.base = base
        self.alpha = alpha
        self.features = features
        self.regressor = regressor
        self.random_state = random_state
        self.regressor_params = regressor_params
        self.calibration_fraction = calibration_fraction

    # ---------------------------------------------------------------- parameters

    def _check_alpha(self) -> float:
        a = self.alpha
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, float, np.integer, np.floating)) \
                or not 0.0 < float(a) < 1.0:
            raise ValueError(f"alpha: expected a false-positive rate in (0, 1), got {a!r}")
        return float(a)

    def _check_features(self) -> tuple[str, ...]:
        feats = DEFAULT_QUANTILE_FEATURES if self.features is None else self.features
        if isinstance(feats, (str, bytes)) or not isinstance(feats, (Sequence, np.ndarray)):
            raise TypeError(f"features: expected a sequence of column names, got {type(feats).__name__}")
        feats = tuple(feats)
        if not feats or not all(isinstance(f, str) and f for f in feats):
            raise ValueError(f"features: expected a non-empty list of column names, got {list(feats)}")
        if len(set(feats)) != len(feats):
            raise ValueError(f"features: expected distinct column names, got {list(feats)}")
        if isinstance(self.base, str) and self.base in feats:
            raise ValueError(
                f"features: expected columns that describe the example, not the base score; got the base "
                f"column {self.base!r} among {list(feats)} (its predicted quantile would follow the score itself)"
            )
        return feats

    def _check_base(self) -> None:
        base = self.base
        if isinstance(base, str):
            if base not in BASE_COLUMN_SIGNS and not _MIN_K.match(base):
                raise ValueError(
                    f"base: expected an attack with score_samples or one of the columns "
                    f"{sorted(BASE_COLUMN_SIGNS)} / 'min_k_{{k}}' / 'min_k_pp_{{k}}', got {base!r}; for "
                    f"another column pass an attack that orients it (higher = member)"
                )
        elif not callable(getattr(base, "score_samples", None)):
            raise TypeError(f"base: expected a column name or an attack with score_samples, got {type(base).__name__}")

    def _check_calibration(self) -> float:
        c = self.calibration_fraction
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, float, np.integer, np.floating)) \
                or not 0.0 <= float(c) < 1.0:
            raise ValueError(f"calibration_fraction: expected a fraction in [0, 1), got {c!r}")
        return float(c)

    def _make_regressor(self, quantile: float) -> Any:
        if self.regressor_params is not None and not isinstance(self.regressor_params, dict):
            raise TypeError(f"regressor_params: expected a dict or None, got {type(self.regressor_params).__name__}")
        params = dict(self.regressor_params or {})
        if isinstance(self.regressor, str):
            if self.regressor == "gbm":
                from sklearn.ensemble import HistGradientBoostingRegressor

                params = {**_GBM_DEFAULTS, "random_state": self.random_state, **params}
                return HistGradientBoostingRegressor(loss="quantile", quantile=quantile, **params)
            if self.regressor == "linear":
                from sklearn.linear_model import QuantileRegressor

                params.setdefault("alpha", 0.0)
                params.setdefault("solver", "highs")
                return QuantileRegressor(quantile=quantile, **params)
            raise ValueError(f"regressor: expected one of {list(_REGRESSORS)} or a scikit-learn regressor, "
                             f"got {self.regressor!r}")
        if not (callable(getattr(self.regressor, "fit", None)) and callable(getattr(self.regressor, "predict", None))):
            raise TypeError(f"regressor: expected one of {list(_REGRESSORS)} or an estimator with fit and predict, "
                            f"got {type(self.regressor).__name__}")
        if params:
            raise ValueError("regressor_params: only for a named regressor ('gbm', 'linear'); configure an "
                             "estimator instance directly")
        return clone(self.regressor)

    # ---------------------------------------------------------------- inputs

    def _table(self, X: Any, name: str) -> list[str]:
        if not is_table(X):
            raise TypeError(f"{name}: expected a per-sequence table (pandas DataFrame, pyarrow Table or mapping "
                            f"column -> 1-D array), got {type(X).__name__}")
        return table_columns(X)

    def _base_scores(self, X: Any, name: str, columns: list[str]) -> np.ndarray:
        base = self.base
        if isinstance(base, str):
            if base not in columns:
                raise ValueError(f"{name}: expected the base column {base!r}, got columns {columns}")
            scores = BASE_COLUMN_SIGNS.get(base, 1.0) * _finite_column(X, base, name)
            what = f"{name}[{base!r}]"
        else:
            scores = np.asarray(base.score_samples(X), dtype=np.float64)
            what = f"base.score_samples({name})"
        bad = ~np.isfinite(scores)
        if bad.any():
            raise ValueError(f"{what}: expected finite base scores, got {int(bad.sum())} NaN/inf values "
                             f"(first at row {first_indices(bad, 1)})")
        return scores

    def _feature_matrix(self, X: Any, name: str, columns: list[str], feats: tuple[str, ...], n: int) -> np.ndarray:
        matrix = np.empty((n, len(feats)), dtype=np.float64)
        for j, col in enumerate(feats):
            values = _feature(X, col, name, columns)
            if values.shape[0] != n:
                raise ValueError(f"{name}[{col!r}]: expected {n} rows, got {values.shape[0]}")
            bad = ~np.isfinite(values)
            if bad.any():
                raise ValueError(f"{name}[{col!r}]: expected finite feature values, got {int(bad.sum())} NaN/inf "
                                 f"values (first at row {first_indices(bad, 1)})")
            matrix[:, j] = values
        return matrix

    # ---------------------------------------------------------------- estimator

    def fit(self, X: Any, y: Optional[Any] = None) -> "QuantileRegressionAttack":
        """Fit the ``1 - alpha`` quantile of the base score given the features, on non-members.

        Parameters
        ----------
        X : table
            Per-sequence score table of known non-members (DataFrame, pyarrow Table or mapping
            column -> 1-D array of length N) with the base score's and the features' columns.
        y : array-like, shape (N,), optional
            Membership labels (1 = member). When given, only the rows with ``y == 0`` are used:
            members must never enter the fit, as they would raise the quantile.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            ``alpha`` outside (0, 1), a missing column, NaN/inf features or scores, fewer than
            ``max(10, ceil(1 / alpha))`` non-members (and as many again for the calibration).
        """
        alpha = self._check_alpha()
        feats = self._check_features()
        self._check_base()
        cal = self._check_calibration()
        quantile = 1.0 - alpha
        model = self._make_regressor(quantile)
        columns = self._table(X, "X")
        scores = self._base_scores(X, "X", columns)
        n = scores.shape[0]
        matrix = self._feature_matrix(X, "X", columns, feats, n)
        if y is not None:
            keep = ~bool_array(y, "y", (n,))
            scores, matrix = scores[keep], matrix[keep]
        need = max(_MIN_NONMEMBERS, math.ceil(1.0 / alpha - 1e-9))
        n_non = scores.shape[0]
        n_cal = int(math.floor(cal * n_non))
        n_fit = n_non - n_cal
        if n_fit < need or (cal > 0 and n_cal < need):
            where = " (y == 0)" if y is not None else ""
            split = f", {need} for fitting and {need} for calibration (calibration_fraction={cal:g})" if cal > 0 else ""
            raise ValueError(
                f"X: expected at least {need * (2 if cal > 0 else 1)} non-member rows{where} to estimate the "
                f"{quantile:g} quantile (max({_MIN_NONMEMBERS}, ceil(1 / alpha)){split}), got {n_non}"
            )
        fit_rows = np.arange(n_non)
        offset = 0.0
        if n_cal:
            order = np.random.default_rng(self.random_state).permutation(n_non)
            fit_rows, cal_rows = order[n_cal:], order[:n_cal]
        model.fit(matrix[fit_rows], scores[fit_rows])
        if n_cal:
            residuals = np.sort(scores[cal_rows] - model.predict(matrix[cal_rows]))
            rank = math.ceil((n_cal + 1) * quantile)
            # rank > n_cal: no finite shift gives the guarantee; flag nothing
            offset = float(residuals[rank - 1]) if rank <= n_cal else math.inf
        self.quantile_ = quantile
        self.features_ = feats
        self.regressor_ = model
        self.offset_ = offset
        self.n_nonmembers_ = int(n_non)
        self.train_fpr_ = float(np.mean(scores[fit_rows] > model.predict(matrix[fit_rows]) + offset))
        return self

    def predicted_quantile(self, X: Any) -> np.ndarray:
        """The fitted ``1 - alpha`` quantile of a non-member's base score, per example.

        Parameters
        ----------
        X : table
            Per-sequence table with the feature columns (length N).

        Returns
        -------
        ndarray, shape (N,), float64
        """
        check_is_fitted(self)
        columns = self._table(X, "X")
        n = _n_rows(X, columns)
        matrix = self._feature_matrix(X, "X", columns, self.features_, n)
        return np.asarray(self.regressor_.predict(matrix), dtype=np.float64) + self.offset_

    def score_samples(self, X: Any) -> np.ndarray:
        """Base score minus its predicted non-member quantile: higher = more likely member.

        Parameters
        ----------
        X : table
            Per-sequence table with the base score's and the feature columns (length N).

        Returns
        -------
        ndarray, shape (N,), float64
            Positive where the example is flagged at false-positive rate ``alpha``.
        """
        check_is_fitted(self)
        columns = self._table(X, "X")
        scores = self._base_scores(X, "X", columns)
        matrix = self._feature_matrix(X, "X", columns, self.features_, scores.shape[0])
        return scores - (np.asarray(self.regressor_.predict(matrix), dtype=np.float64) + self.offset_)

    def predict(self, X: Any) -> np.ndarray:
        """Membership decisions at false-positive rate ``alpha``: ``score_samples(X) > 0``.

        Returns
        -------
        ndarray, shape (N,), bool
        """
        return self.score_samples(X) > 0


def _n_rows(X: Any, columns: list[str]) -> int:
    if not columns:
        raise ValueError("X: expected a table with columns, got none")
    return int(np.asarray(X[columns[0]]).shape[0])
