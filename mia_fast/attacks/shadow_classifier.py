"""Shadow-model classifier attack (Shokri et al., 2017), on per-sequence statistics."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from ._validation import bool_array, float_array, is_table, sequence_values

__all__ = ["ShadowClassifierAttack", "DEFAULT_SHADOW_FEATURES"]

DEFAULT_SHADOW_FEATURES: tuple[str, ...] = (
    "loss",
    "zlib",
    "min_k_0.2",
    "min_k_pp_0.2",
    "entropy_mean",
    "phi_mean",
    "top1_acc",
    "log_rank_mean",
)
_CLASSIFIERS = ("logistic", "mlp", "random_forest")


def _is_block(x: Any) -> bool:
    """One shadow model's data: a table or a 2-D array (not a list of them)."""
    return is_table(x) or (hasattr(x, "ndim") and getattr(x, "ndim") == 2)


class ShadowClassifierAttack(BaseEstimator):
    """Train a classifier to tell members from non-members on shadow models' statistics.

    Each shadow model (trained like the target, on data whose membership is known) contributes
    its per-sequence statistics on its own members and non-members. The features are
    standardised, a scikit-learn classifier learns membership from them, and the target's
    samples are scored by the predicted member probability. Shokri et al. train one attack model
    per output class; language models have no such classes, so there is a single classifier.

    Parameters
    ----------
    classifier : {"logistic", "mlp", "random_forest"} or sklearn classifier
        ``logistic``: LogisticRegression(max_iter=1000); ``mlp``: MLPClassifier with one hidden
        layer of 64 units, early stopping on a 10% validation split (n_iter_no_change=20,
        max_iter=500); ``random_forest``: RandomForestClassifier with 200 trees,
        min_samples_leaf=5. An estimator with ``predict_proba`` is cloned and used as it is.
    features : sequence of str
        Per-sequence table columns used as features (ignored for array input).
    classifier_params : dict, optional
        Parameters set on the classifier (``set_params``) over the defaults above.
    random_state : None, int or numpy.random.RandomState
        Seed of the classifier (scikit-learn convention); an int makes fits reproducible.

    Attributes
    ----------
    model_ : sklearn.pipeline.Pipeline
        StandardScaler followed by the fitted classifier.
    feature_names_ : tuple of str or None
        The feature columns when fitted on tables, None when fitted on arrays.
    n_features_in_ : int
        Number of features F.
    """

    def __init__(
        self,
        classifier: Union[str, ClassifierMixin] = "logistic",
        features: Sequence[str] = DEFAULT_SHADOW_FEATURES,
        classifier_params: Optional[dict] = None,
        random_state: Any = None,
    ):
        self.classifier = classifier
        self.features = features
        self.classifier_params = classifier_params
        self.random_state = random_state

    def _make_classifier(self) -> Any:
        rs = self.random_state
        if isinstance(self.classifier, str):
            if self.classifier == "logistic":
                clf = LogisticRegression(max_iter=1000, random_state=rs)
            elif self.classifier == "mlp":
                clf = MLPClassifier(hidden_layer_sizes=(64,), early_stopping=True, n_iter_no_change=20,
                                    max_iter=500, random_state=rs)
            elif self.classifier == "random_forest":
                clf = RandomForestClassifier(n_estimators=200, min_samples_leaf=5, random_state=rs)
            else:
                raise ValueError(f"classifier: expected one of {_CLASSIFIERS} or an sklearn classifier, "
                                 f"got {self.classifier!r}")
        elif hasattr(self.classifier, "fit") and hasattr(self.classifier, "predict_proba"):
            clf = clone(self.classifier)
        else:
            raise TypeError(f"classifier: expected one of {_CLASSIFIERS} or an estimator with "
                            f"predict_proba, got {type(self.classifier).__name__}")
        if self.classifier_params:
            clf.set_params(**self.classifier_params)
        return clf

    def _features(self, x: Any, name: str) -> np.ndarray:
        """(n, F) float64 features of one block (a table or an (n, F) array)."""
        if is_table(x):
            if isinstance(self.features, str) or len(self.features) == 0:
                raise ValueError(f"features: expected a non-empty sequence of column names, got {self.features!r}")
            return np.column_stack([sequence_values(x, str(c), name) for c in self.features])
        return float_array(x, name, ndims=(2,))

    def fit(self, shadow_tables: Any, shadow_membership: Any) -> "ShadowClassifierAttack":
        """Fit the classifier on the shadow models' statistics.

        Parameters
        ----------
        shadow_tables : table, (n, F) array, or sequence of them
            One block per shadow model: its per-sequence table (with the ``features`` columns)
            or an (n_k, F) feature array; a single block is one shadow model.
        shadow_membership : array-like of bool, shape (n,), or sequence of them
            Whether each row was in its shadow model's training set; one vector per block.

        Returns
        -------
        self
        """
        single = _is_block(shadow_tables)
        blocks = [shadow_tables] if single else list(shadow_tables)
        memberships = [shadow_membership] if single else list(shadow_membership)
        if not blocks:
            raise ValueError("shadow_tables: expected at least one shadow model's table, got none")
        if len(memberships) != len(blocks):
            raise ValueError(f"shadow_membership: expected one membership vector per shadow table "
                             f"({len(blocks)}), got {len(memberships)}")
        xs, ys = [], []
        for i, (block, member) in enumerate(zip(blocks, memberships)):
            name = "shadow_tables" if single else f"shadow_tables[{i}]"
            x = self._features(block, name)
            mname = "shadow_membership" if single else f"shadow_membership[{i}]"
            xs.append(x)
            ys.append(bool_array(member, mname, (x.shape[0],)))
        n_feat = {x.shape[1] for x in xs}
        if len(n_feat) != 1:
            raise ValueError(f"shadow_tables: expected the same number of features in every block, got {sorted(n_feat)}")
        X, y = np.concatenate(xs), np.concatenate(ys).astype(np.int64)
        n_members = int(y.sum())
        if n_members == 0 or n_members == y.shape[0]:
            raise ValueError(f"shadow_membership: expected both members and non-members, got "
                             f"{n_members} members and {y.shape[0] - n_members} non-members")
        model = Pipeline([("scale", StandardScaler()), ("classifier", self._make_classifier())])
        self.model_ = model.fit(X, y)
        self.feature_names_ = (tuple(str(c) for c in self.features)
                               if is_table(blocks[0]) else None)
        self.n_features_in_ = X.shape[1]
        return self

    def score_samples(self, X: Any) -> np.ndarray:
        """Predicted member probability, higher = more likely member.

        Parameters
        ----------
        X : table or (N, F) array
            The target model's per-sequence table (with the ``features`` columns) or features.

        Returns
        -------
        ndarray, shape (N,), float64
        """
        check_is_fitted(self)
        x = self._features(X, "X")
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"X: expected {self.n_features_in_} features (as in fit), got {x.shape[1]}")
        member_column = list(self.model_.classes_).index(1)
        return self.model_.predict_proba(x)[:, member_column].astype(np.float64)
