"""The blind classifier of the distribution-shift check: members vs non-members from the texts alone.

An MIA benchmark is only valid when its members and non-members come from one distribution. When
they do not (e.g. Wikipedia before and after a cutoff date), a classifier that reads the texts
alone separates them, and any attack's AUC measures the shift as much as the membership (Das,
Zhang & Tramèr 2024, "Blind Baselines Beat Membership Inference Attacks for Foundation Models").

`blind_scores` fits such a classifier out of fold: logistic regression on word 1-2-gram and
character 3-5-gram TF-IDF and on simple features (length, digits, 4-digit years, punctuation,
capitals, lines), and fits the word model on every text to name the n-grams that weigh most on
each side. `mia_fast.metrics.shift_check` turns its scores into the AUC, the interval and the
``confounded`` rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["METHOD", "BlindScores", "blind_scores"]

METHOD = ("out-of-fold logistic regression on word 1-2-gram and char 3-5-gram TF-IDF and simple text "
          "features (length, digits, 4-digit years, punctuation, capitals, lines)")
_YEAR = re.compile(r"\b(1[5-9]\d\d|20\d\d)\b")
_SIMPLE = ("log_chars", "log_words", "digit_share", "years_per_100_words", "punctuation_share", "upper_share",
           "mean_word_length", "lines_per_100_words")


def _simple_features(texts: Any) -> np.ndarray:
    """(n,) or (n, 1) texts -> (n, 8) features (`_SIMPLE`)."""
    rows = []
    for t in np.asarray(texts, dtype=object).ravel():
        words = t.split()
        n_words, n_chars = max(len(words), 1), max(len(t), 1)
        rows.append([
            np.log1p(len(t)), np.log1p(len(words)),
            sum(c.isdigit() for c in t) / n_chars,
            100 * len(_YEAR.findall(t)) / n_words,
            sum(not c.isalnum() and not c.isspace() for c in t) / n_chars,
            sum(c.isupper() for c in t) / n_chars,
            sum(len(w) for w in words) / n_words,
            100 * t.count("\n") / n_words,
        ])
    return np.asarray(rows, dtype=np.float64)


def _pipelines(random_state: int) -> dict[str, Any]:
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    def word() -> TfidfVectorizer:
        return TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=50_000)

    def char() -> TfidfVectorizer:
        return TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=2, sublinear_tf=True,
                               max_features=50_000)

    def simple() -> Pipeline:
        return make_pipeline(FunctionTransformer(_simple_features), StandardScaler())

    def classifier() -> LogisticRegression:
        return LogisticRegression(C=1.0, max_iter=2000, random_state=random_state)

    # every transformer reads column 0 of a (n, 1) object array of texts
    def on_texts(transformer: Any) -> ColumnTransformer:
        return ColumnTransformer([("t", transformer, 0)])

    return {
        "all": Pipeline([("features", ColumnTransformer([("word", word(), 0), ("char", char(), 0),
                                                         ("simple", simple(), [0])])),
                         ("clf", classifier())]),
        "word": Pipeline([("features", on_texts(word())), ("clf", classifier())]),
        "char": Pipeline([("features", on_texts(char())), ("clf", classifier())]),
        "simple": Pipeline([("features", ColumnTransformer([("t", simple(), [0])])), ("clf", classifier())]),
    }


def _check(texts: Sequence[str], labels: Any) -> tuple[np.ndarray, np.ndarray]:
    texts = list(texts)
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(texts):
        raise ValueError(f"labels: expected one label per text ({len(texts)}), got shape {y.shape}")
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts: expected strings, got {type(bad[0]).__name__}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels: expected 0 (non-member) and 1 (member), got values {sorted(set(y.tolist()))[:5]}")
    y = y.astype(int)
    counts = np.bincount(y, minlength=2)
    if counts.min() < 5:
        raise ValueError(f"labels: the shift check needs at least 5 members and 5 non-members, got "
                         f"{counts[1]} and {counts[0]}")
    return np.asarray(texts, dtype=object).reshape(-1, 1), y


@dataclass
class BlindScores:
    """Out-of-fold member probabilities of the blind classifier, and what gives the shift away.

    Attributes
    ----------
    oof : dict of str to ndarray, shape (n,)
        ``all`` (every feature family together) and, with ``components``, ``word``, ``char``, ``simple``.
    member_ngrams, nonmember_ngrams : list of [str, float]
        The word n-grams with the largest weights towards each side, fitted on every text.
    n_folds : int
    """

    oof: dict
    member_ngrams: list
    nonmember_ngrams: list
    n_folds: int


def blind_scores(texts: Sequence[str], labels: Any, *, n_folds: int = 5, top_ngrams: int = 15,
                 components: bool = True, random_state: int = 0) -> BlindScores:
    """Fit the blind classifier out of fold (see the module's docstring).

    Parameters
    ----------
    texts : sequence of str, length n
    labels : array-like of {0, 1}, shape (n,)
        1 = member, 0 = non-member; at least 5 of each.
    n_folds : int
        Stratified folds (fewer when a class is smaller).
    top_ngrams : int
        Word n-grams reported for each side.
    components : bool
        Also each feature family alone (doubles the cost).
    random_state : int

    Returns
    -------
    BlindScores
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    X, y = _check(texts, labels)
    folds = StratifiedKFold(n_splits=max(2, min(n_folds, int(np.bincount(y).min()))), shuffle=True,
                            random_state=random_state)
    pipelines = _pipelines(random_state)
    oof = {name: cross_val_predict(p, X, y, cv=folds, method="predict_proba")[:, 1]
           for name, p in pipelines.items() if components or name == "all"}
    member, nonmember = _telling_ngrams(pipelines["word"].fit(X, y), top_ngrams)
    return BlindScores(oof=oof, member_ngrams=member, nonmember_ngrams=nonmember, n_folds=folds.get_n_splits())


def _telling_ngrams(word_pipeline: Any, top: int) -> tuple[list, list]:
    vocabulary = word_pipeline.named_steps["features"].named_transformers_["t"].get_feature_names_out()
    weights = word_pipeline.named_steps["clf"].coef_[0]
    order = np.argsort(weights)
    member = [[str(vocabulary[i]), round(float(weights[i]), 4)] for i in order[::-1][:top] if weights[i] > 0]
    nonmember = [[str(vocabulary[i]), round(float(weights[i]), 4)] for i in order[:top] if weights[i] < 0]
    return member, nonmember
