"""Hierarchical land cover classifier and its on-disk artefact.

:class:`HierarchicalClassifier` is a scikit-learn meta-estimator: a level-1 classifier predicts the land cover
category and, for every category whose training samples carry at least two subcategories, a level-2 classifier
predicts the subcategory. It follows the scikit-learn estimator contract, so ``clone``, ``GridSearchCV``,
``cross_val_score``, joblib and skops work with it; ``predict`` returns level-1 codes and
:meth:`HierarchicalClassifier.predict_levels` returns both levels.

A trained model is stored as an artefact folder (:func:`save_model`, :func:`load_model`)::

    <folder>/model.skops     the estimator, serialised with skops (never pickle)
    <folder>/metadata.json   feature names in order, label maps, parameters, metrics, hashes; written last

The presence of ``metadata.json`` marks the artefact complete.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import os
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import skops.io as sio
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.utils import _safe_indexing, get_tags
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    has_fit_parameter,
    validate_data,
)

from lcstack.errors import InputFileNotFoundError, InvalidInputError, ModelMismatchError
from lcstack.store import Storage

__all__ = [
    "HierarchicalClassifier",
    "LabelEncodedClassifier",
    "LevelProbabilities",
    "predict_levels",
    "predict_proba_levels",
    "normalised_entropy",
    "save_model",
    "load_model",
    "check_features",
    "MODEL_FILE",
    "METADATA_FILE",
]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.skops"
METADATA_FILE = "metadata.json"
ARTEFACT_FORMAT = 1

#: Level-2 code of a pixel whose category has no level-2 model (see ``sl_labels.json``).
UNCLASSIFIED = 1


#: Size limits of the default forest. Depth 12 bounds a tree to 4096 leaves, so the skops artefact stays
#: small whatever the number of samples (fully grown trees on 1e5 noisy samples reach hundreds of MB), and
#: 50 such trees classify faster than LandCoverPy's fully grown forest at nearly its accuracy (figures:
#: benchmarks/RESULTS.md, "Model size").
DEFAULT_FOREST_PARAMS: dict[str, Any] = {"n_estimators": 50, "max_depth": 12, "min_samples_leaf": 2}


def default_estimator() -> RandomForestClassifier:
    """Return the base classifier used when ``estimator=None`` (see :data:`DEFAULT_FOREST_PARAMS`)."""
    return RandomForestClassifier(**DEFAULT_FOREST_PARAMS)


def _estimator_has(attr: str):
    """Check, for ``available_if``, that the (fitted or unfitted) level-1 estimator has ``attr``."""

    def check(self: HierarchicalClassifier) -> bool:
        if hasattr(self, "estimator_level1_"):
            return hasattr(self.estimator_level1_, attr)
        base = self.estimator if self.estimator is not None else default_estimator()
        return hasattr(base, attr)

    return check


def _subcategory_codes(y_sub: Any, n_samples: int) -> np.ndarray:
    """Normalise subcategory labels to float codes with NaN where a sample has no subcategory."""
    values = np.asarray(y_sub, dtype=object).ravel()
    if values.shape[0] != n_samples:
        raise InvalidInputError(
            f"y_sub has {values.shape[0]} values but X has {n_samples} samples; pass one subcategory code "
            "per sample (NaN, None, 0 or 1 where a sample has no subcategory)."
        )
    codes = np.full(n_samples, np.nan)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, str) and not v.strip()):
            continue
        try:
            codes[i] = float(v)
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"y_sub[{i}] = {v!r} is not a subcategory code; y_sub must hold integer codes from "
                "sl_labels.json (>= 2), or NaN/None/0/1 where a sample has no subcategory."
            ) from None
    valid = np.isfinite(codes) & (codes >= 2)
    if np.any(valid & (codes != np.round(codes))):
        raise InvalidInputError("y_sub holds non-integer codes; subcategory codes must be integers >= 2.")
    codes[~valid] = np.nan
    return codes


class HierarchicalClassifier(ClassifierMixin, BaseEstimator):
    """Two-level classifier: land cover category, then subcategory within the predicted category.

    Parameters
    ----------
    estimator : classifier, optional
        Level-1 base classifier (cloned before fitting). Any scikit-learn classifier works. ``None`` uses a
        :class:`~sklearn.ensemble.RandomForestClassifier` with ``n_estimators=50, max_depth=12,
        min_samples_leaf=2`` (see :func:`default_estimator`).
    subcategory_estimator : classifier, optional
        Base classifier for the level-2 models (cloned once per category). ``None`` uses ``estimator``.
    min_samples_level2 : int, default 2
        A category gets a level-2 model (or a constant subcategory) only when at least this many of its
        training samples carry a subcategory; otherwise its pixels get level 2 = 1 (unclassified).
    n_jobs : int, optional
        Set as ``n_jobs`` on every base classifier that has that parameter, when not ``None``.
    random_state : int, RandomState or None
        Set as ``random_state`` on every base classifier that has that parameter, when not ``None``.

    Attributes
    ----------
    classes_ : ndarray
        Level-1 class labels (category codes).
    estimator_level1_ : classifier
        The fitted level-1 classifier.
    estimators_level2_ : dict[int, classifier]
        Fitted level-2 classifier per category code that has two or more subcategories.
    constant_level2_ : dict[int, int]
        Subcategory code per category code whose samples all carry the same subcategory.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of str
        Feature names seen during fit, only when ``X`` was a DataFrame with string column names.

    Notes
    -----
    NaN marks a missing feature (a season without a clear observation), in training and at prediction:
    the base classifier must accept NaN (scikit-learn >= 1.4 forests and trees, HistGradientBoosting),
    which routes it as it learnt to. Inf, or a training sample without any valid feature, raises
    :class:`~lcstack.errors.InvalidInputError`; ``lcstack.classify`` writes nodata (0) where no season has
    a valid observation and predicts every other pixel.

    """

    def __init__(
        self,
        estimator: BaseEstimator | None = None,
        *,
        subcategory_estimator: BaseEstimator | None = None,
        min_samples_level2: int = 2,
        n_jobs: int | None = None,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.estimator = estimator
        self.subcategory_estimator = subcategory_estimator
        self.min_samples_level2 = min_samples_level2
        self.n_jobs = n_jobs
        self.random_state = random_state

    # -- fitting -------------------------------------------------------------------------------------------

    def _make(self, base: BaseEstimator | None) -> BaseEstimator:
        est = clone(base) if base is not None else default_estimator()
        params = est.get_params(deep=False)
        overrides = {}
        if self.n_jobs is not None and "n_jobs" in params:
            overrides["n_jobs"] = self.n_jobs
        if self.random_state is not None and "random_state" in params:
            overrides["random_state"] = self.random_state
        return est.set_params(**overrides) if overrides else est

    def _validate_X(self, X: Any) -> np.ndarray:
        X = validate_data(
            self, X, reset=False, dtype=[np.float64, np.float32], ensure_all_finite=False, accept_sparse=False
        )
        if np.isinf(X).any():
            raise InvalidInputError(
                "X contains inf; missing features must be NaN (routed by the trees as scikit-learn does), "
                "and a pixel without any valid feature is nodata (lcstack.classify leaves it out)."
            )
        return X

    def fit(
        self,
        X: Any,
        y: Any,
        y_sub: Any = None,
        sample_weight: Any = None,
    ) -> HierarchicalClassifier:
        """Fit the level-1 classifier on ``(X, y)`` and a level-2 classifier per category.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
            Training features; NaN where missing, every sample with one valid feature.
        y : array-like of shape (n_samples,)
            Category codes.
        y_sub : array-like of shape (n_samples,), optional
            Subcategory codes (>= 2); NaN, None, 0 or 1 where a sample has no subcategory.
        sample_weight : array-like of shape (n_samples,), optional
            Passed to the base classifiers' ``fit`` (they must accept ``sample_weight``).

        Returns
        -------
        HierarchicalClassifier
            The fitted classifier.

        """
        if not isinstance(self.min_samples_level2, int | np.integer) or self.min_samples_level2 < 1:
            raise InvalidInputError(
                f"min_samples_level2 must be an integer >= 1, got {self.min_samples_level2!r}."
            )
        X, y = validate_data(
            self, X, y, dtype=[np.float64, np.float32], ensure_all_finite=False, accept_sparse=False
        )
        self._check_finite_fit(X)
        if np.isnan(X).any() and not self.__sklearn_tags__().input_tags.allow_nan:
            names = sorted({type(b).__name__ for b in self._bases() if not get_tags(b).input_tags.allow_nan})
            raise InvalidInputError(
                f"X has missing features (NaN: a season without a clear observation) but {', '.join(names)} "
                "cannot take NaN; choose an estimator that routes missing values (random forest, extra "
                "trees, HistGradientBoosting, LightGBM, XGBoost) or fill the missing features before fitting."
            )
        check_classification_targets(y)
        n = X.shape[0]
        fit_kw: dict[str, Any] = {}
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X)

        level1 = self._make(self.estimator)
        if sample_weight is not None:
            self._require_sample_weight(level1, "estimator")
            fit_kw["sample_weight"] = sample_weight
        level1.fit(X, y, **fit_kw)
        self.estimator_level1_ = level1
        self.classes_ = level1.classes_

        self.estimators_level2_: dict[Any, BaseEstimator] = {}
        self.constant_level2_: dict[Any, int] = {}
        if y_sub is None:
            return self
        sub = _subcategory_codes(y_sub, n)
        base2 = self.subcategory_estimator if self.subcategory_estimator is not None else self.estimator
        for category in self.classes_:
            rows = np.flatnonzero((y == category) & np.isfinite(sub))
            if rows.size == 0:
                continue
            key = category.item() if isinstance(category, np.generic) else category
            if rows.size < self.min_samples_level2:
                logger.info(
                    "category %r: %d samples with a subcategory < min_samples_level2=%d; no level-2 model",
                    key,
                    rows.size,
                    self.min_samples_level2,
                )
                continue
            values = sub[rows].astype(np.int64)
            distinct = np.unique(values)
            if distinct.size == 1:
                self.constant_level2_[key] = int(distinct[0])
                continue
            model = self._make(base2)
            kw = {}
            if sample_weight is not None:
                self._require_sample_weight(model, "subcategory_estimator")
                kw["sample_weight"] = sample_weight[rows]
            model.fit(X[rows], values, **kw)
            self.estimators_level2_[key] = model
        return self

    @staticmethod
    def _check_finite_fit(X: np.ndarray) -> None:
        # NaN is a missing feature (forests learn where it goes); inf, or a sample with nothing, is an error
        bad = np.flatnonzero(np.isinf(X).any(axis=1) | np.isnan(X).all(axis=1))
        if bad.size:
            raise InvalidInputError(
                f"X contains inf, or no valid feature at all, in {bad.size} of {X.shape[0]} samples (first "
                f"rows: {bad[:5].tolist()}). Missing features must be NaN, and a sample needs at least "
                "one valid feature: leave out nodata pixels before fitting "
                "(lcstack.samples.extract_samples does)."
            )

    @staticmethod
    def _require_sample_weight(est: BaseEstimator, param: str) -> None:
        if not has_fit_parameter(est, "sample_weight"):
            raise InvalidInputError(
                f"sample_weight was given but the {param} {type(est).__name__} does not accept it; "
                "drop sample_weight or choose a classifier whose fit() takes sample_weight."
            )

    # -- prediction ----------------------------------------------------------------------------------------

    def predict(self, X: Any) -> np.ndarray:
        """Predict level-1 category codes.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
            Features (NaN where missing), in the training order.

        Returns
        -------
        ndarray of shape (n_samples,)
            Category codes.

        """
        check_is_fitted(self)
        X = self._validate_X(X)
        return self.estimator_level1_.predict(X)

    def predict_levels(
        self, X: Any, *, predict: Callable[[Any, Any], np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Predict category and subcategory codes.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
            Features (NaN where missing), in the training order.
        predict : callable, optional
            ``predict(estimator, X)`` for each level's estimator, e.g. the compiled engine's
            :func:`lcstack.forest.fast_predict`; ``None`` calls the estimator's ``predict``.

        Returns
        -------
        level1 : ndarray of shape (n_samples,)
            Category codes.
        level2 : ndarray of int64, shape (n_samples,)
            Subcategory codes; 1 (unclassified) where the predicted category has no level-2 model.

        """
        check_is_fitted(self)
        X = self._validate_X(X)
        return predict_levels(
            self, X.shape[0], lambda rows: X if rows is None else _safe_indexing(X, rows), predict or _predict
        )

    def predict_proba_levels(
        self, X: Any, *, predict_proba: Callable[[Any, Any], np.ndarray] | None = None
    ) -> LevelProbabilities:
        """Level-1 probabilities, codes and margins, and the level-2 code and its conditional probability.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
            Features (NaN where missing), in the training order.
        predict_proba : callable, optional
            ``predict_proba(estimator, X)`` for each level's estimator; ``None`` calls the estimator's.

        Returns
        -------
        LevelProbabilities
            ``level1`` and ``level2`` equal :meth:`predict_levels`; ``proba`` equals :meth:`predict_proba`.

        """
        check_is_fitted(self)
        X = self._validate_X(X)
        return predict_proba_levels(
            self,
            X.shape[0],
            lambda rows: X if rows is None else _safe_indexing(X, rows),
            predict_proba or _predict_proba,
        )

    @available_if(_estimator_has("predict_proba"))
    def predict_proba(self, X: Any) -> np.ndarray:
        """Level-1 class probabilities, columns in the order of ``classes_``.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
            Features (NaN where missing).

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Probabilities from the level-1 classifier.

        """
        check_is_fitted(self)
        return self.estimator_level1_.predict_proba(self._validate_X(X))

    @available_if(_estimator_has("predict_log_proba"))
    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Level-1 class log-probabilities, columns in the order of ``classes_``.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
            Features (NaN where missing).

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Log-probabilities from the level-1 classifier.

        """
        check_is_fitted(self)
        return self.estimator_level1_.predict_log_proba(self._validate_X(X))

    @available_if(_estimator_has("decision_function"))
    def decision_function(self, X: Any) -> np.ndarray:
        """Level-1 decision function, for base classifiers that have one.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
            Features (NaN where missing).

        Returns
        -------
        ndarray
            Decision values from the level-1 classifier.

        """
        check_is_fitted(self)
        return self.estimator_level1_.decision_function(self._validate_X(X))

    def _bases(self) -> list[BaseEstimator]:
        return [
            b
            for b in (
                default_estimator() if self.estimator is None else self.estimator,
                self.subcategory_estimator,
            )
            if b is not None
        ]

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        # NaN is a missing feature when the base classifier routes it (forests, HistGradientBoosting)
        tags.input_tags.allow_nan = all(get_tags(b).input_tags.allow_nan for b in self._bases())
        tags.input_tags.sparse = False
        return tags


# -- the hierarchy, for any per-level predictor -----------------------------------------------------------


def _predict(est: Any, X: Any) -> np.ndarray:
    return est.predict(X)


def _predict_proba(est: Any, X: Any) -> np.ndarray:
    return est.predict_proba(X)


def predict_levels(
    model: HierarchicalClassifier,
    n_samples: int,
    subset: Callable[[np.ndarray | None], Any],
    predict: Callable[[Any, Any], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Level-1 and level-2 codes of ``model``, each level predicted by ``predict(estimator, X)``.

    The one walk of the hierarchy, shared by :meth:`HierarchicalClassifier.predict_levels` (``predict``
    calls the estimator's own) and the compiled engine (:mod:`lcstack.forest`).

    Parameters
    ----------
    model : HierarchicalClassifier
        Fitted.
    n_samples : int
        Number of samples.
    subset : callable
        ``subset(rows)``: the features of the samples selected by boolean mask ``rows`` (all with ``None``),
        in whatever layout ``predict`` takes.
    predict : callable
        ``predict(estimator, features)``: labels, as ``estimator.predict``.

    Returns
    -------
    level1, level2 : ndarray
        As :meth:`HierarchicalClassifier.predict_levels`.

    """
    level1 = predict(model.estimator_level1_, subset(None))
    level2 = np.full(n_samples, UNCLASSIFIED, dtype=np.int64)
    for category, code in model.constant_level2_.items():
        level2[level1 == category] = code
    for category, sub in model.estimators_level2_.items():
        rows = level1 == category
        if rows.any():
            level2[rows] = predict(sub, subset(rows))
    return level1, level2


@dataclass(frozen=True)
class LevelProbabilities:
    """Per-sample probabilities of a hierarchical model (:func:`predict_proba_levels`).

    Attributes
    ----------
    classes : ndarray
        Level-1 classes, the columns of ``proba``.
    proba : ndarray of float64, shape (n_samples, n_classes)
        Level-1 probabilities (the level-1 estimator's ``predict_proba``).
    level1 : ndarray of shape (n_samples,)
        Level-1 codes, ``classes.take(argmax(proba))``.
    margin : ndarray of float64, shape (n_samples,)
        Best minus second-best level-1 probability (the best one with a single class).
    level2 : ndarray of int64, shape (n_samples,)
        Level-2 codes, as :meth:`HierarchicalClassifier.predict_levels`.
    level2_proba : ndarray of float64, shape (n_samples,)
        Probability of ``level2`` given ``level1`` (the level-2 estimator's best ``predict_proba``); 1 for
        a category with a single subcategory, NaN for a category without level 2 (``level2`` = 1).
    level2_margin : ndarray of float64, shape (n_samples,)
        Best minus second-best level-2 probability given ``level1`` (1 for a single subcategory, NaN
        without level 2); ``None`` when not computed.
    level2_entropy : ndarray of float64, shape (n_samples,)
        :func:`normalised_entropy` of the level-2 probabilities given ``level1`` (0 for a single
        subcategory, NaN without level 2); ``None`` when not computed.

    """

    classes: np.ndarray
    proba: np.ndarray
    level1: np.ndarray
    margin: np.ndarray
    level2: np.ndarray
    level2_proba: np.ndarray
    level2_margin: np.ndarray | None = None
    level2_entropy: np.ndarray | None = None


def normalised_entropy(proba: np.ndarray) -> np.ndarray:
    """Shannon entropy of each row of ``proba`` over the log of its number of columns, in [0, 1].

    0 where one class has all the probability, 1 where every class is equally likely; 0 for a single
    column. Zero probabilities add nothing (``0 log 0 = 0``).
    """
    proba = np.asarray(proba, dtype=np.float64)
    n = proba.shape[-1]
    if n < 2:
        return np.zeros(proba.shape[:-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(proba > 0, proba * np.log(proba), 0.0)
    return np.clip(-terms.sum(axis=-1) / np.log(n), 0.0, 1.0)


def _best(classes: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (first maximum, as ``predict``), best probability and best minus second-best."""
    best = np.argmax(proba, axis=1)
    top = np.take_along_axis(proba, best[:, None], axis=1)[:, 0]
    if proba.shape[1] < 2:
        return classes.take(best, axis=0), top, top.copy()
    second = np.partition(proba, proba.shape[1] - 2, axis=1)[:, -2]
    return classes.take(best, axis=0), top, top - second


def predict_proba_levels(
    model: HierarchicalClassifier,
    n_samples: int,
    subset: Callable[[np.ndarray | None], Any],
    predict_proba: Callable[[Any, Any], np.ndarray],
) -> LevelProbabilities:
    """:class:`LevelProbabilities` of ``model``, each level by ``predict_proba(estimator, X)``.

    As :func:`predict_levels`, with ``predict_proba`` in place of ``predict``: the labels are the first
    maximum of each estimator's probabilities, which is what a scikit-learn forest's ``predict`` returns.
    """
    est = model.estimator_level1_
    proba = np.asarray(predict_proba(est, subset(None)), dtype=np.float64)
    level1, _, margin = _best(np.asarray(est.classes_), proba)
    level2 = np.full(n_samples, UNCLASSIFIED, dtype=np.int64)
    level2_proba, level2_margin = np.full(n_samples, np.nan), np.full(n_samples, np.nan)
    level2_entropy = np.full(n_samples, np.nan)
    for category, code in model.constant_level2_.items():
        rows = level1 == category
        level2[rows] = code
        level2_proba[rows] = level2_margin[rows] = 1.0
        level2_entropy[rows] = 0.0
    for category, sub in model.estimators_level2_.items():
        rows = level1 == category
        if rows.any():
            sub_proba = np.asarray(predict_proba(sub, subset(rows)), dtype=np.float64)
            codes, top, gap = _best(np.asarray(sub.classes_), sub_proba)
            level2[rows] = codes
            level2_proba[rows], level2_margin[rows] = top, gap
            level2_entropy[rows] = normalised_entropy(sub_proba)
    return LevelProbabilities(
        np.asarray(est.classes_), proba, level1, margin, level2, level2_proba, level2_margin, level2_entropy
    )


# -- estimators that need help ------------------------------------------------------------------------------


class LabelEncodedClassifier(ClassifierMixin, BaseEstimator):
    """Fit a classifier that wants labels ``0..n-1`` (XGBoost) on any labels, with optional class weights.

    Parameters
    ----------
    estimator : classifier
        Cloned and fitted on the labels' positions in ``classes_``.
    class_weight : {"balanced", "balanced_subsample"} or None
        Weigh samples inversely to their class frequency (``balanced_subsample`` acts as ``balanced``:
        the wrapped estimator draws no bootstrap samples of its own), times any ``sample_weight``.

    Attributes
    ----------
    classes_ : ndarray
        The labels, sorted.
    estimator_ : classifier
        The fitted estimator.

    """

    def __init__(self, estimator: BaseEstimator | None = None, *, class_weight: str | None = None) -> None:
        self.estimator = estimator
        self.class_weight = class_weight

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> LabelEncodedClassifier:
        """Fit the estimator on the positions of ``y`` in ``classes_``."""
        from sklearn.utils.class_weight import compute_sample_weight

        if self.estimator is None:
            raise InvalidInputError("LabelEncodedClassifier needs an estimator.")
        self.classes_, codes = np.unique(np.asarray(y), return_inverse=True)
        if self.class_weight is not None:
            weights = compute_sample_weight("balanced", codes)
            sample_weight = weights if sample_weight is None else weights * np.asarray(sample_weight)
        kw = {} if sample_weight is None else {"sample_weight": sample_weight}
        self.estimator_ = clone(self.estimator).fit(X, codes, **kw)
        self.n_features_in_ = int(np.shape(X)[1])
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Labels of ``X``."""
        check_is_fitted(self)
        return self.classes_.take(np.asarray(self.estimator_.predict(X)).astype(np.intp))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities of ``X``, columns in the order of ``classes_``."""
        check_is_fitted(self)
        return self.estimator_.predict_proba(X)


# -- artefact ------------------------------------------------------------------------------------------------


def _names(*types: type) -> frozenset[str]:
    return frozenset(f"{t.__module__}.{t.__qualname__}" for t in types)


def _numpy_types() -> frozenset[str]:
    """NumPy's array, dtype, scalar and random-generator classes (data, never code)."""
    scalars = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
    scalars += [np.float16, np.float32, np.float64, np.longdouble, np.complex64, np.complex128, np.str_]
    dtypes = [type(np.dtype(t)) for t in scalars]
    names = {f"numpy.{t.__name__}" for t in scalars}  # skops names scalars by their public path
    return names | _names(np.ndarray, np.dtype, *dtypes, np.random.Generator, np.random.RandomState)


#: Every type a saved model may name in ``model.skops``, per family; :func:`load_model` refuses any other
#: (whole modules are never trusted: ``sklearn`` re-exports classes such as ``gzip.GzipFile``). Adding an
#: estimator family means adding its set here, with every class its fitted state holds (list them with
#: :func:`model_types`).
MODEL_TYPES: dict[str, frozenset[str]] = {
    # the artefact's own containers and values
    "base": frozenset(
        {"lcstack.model.HierarchicalClassifier"}
        | {f"builtins.{t}" for t in ("dict", "list", "tuple", "set", "str", "int", "float", "bool")}
        | {f"builtins.{t}" for t in ("bytes", "bytearray", "slice", "complex")}
    )
    | _numpy_types(),
    # RandomForestClassifier, ExtraTreesClassifier and their trees
    "forest": frozenset(
        {
            "sklearn.ensemble._forest.RandomForestClassifier",
            "sklearn.ensemble._forest.ExtraTreesClassifier",
            "sklearn.tree._classes.DecisionTreeClassifier",
            "sklearn.tree._classes.ExtraTreeClassifier",
            "sklearn.tree._tree.Tree",
        }
    ),
    # HistGradientBoostingClassifier: predictors, binning, losses; categorical_features adds the
    # ColumnTransformer that ordinal-encodes them (FunctionTransformer of functools.partial(check_array))
    "hist_gradient_boosting": frozenset(
        {
            "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
            "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
            "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
            "sklearn.preprocessing._label.LabelEncoder",
            "sklearn._loss.loss.HalfBinomialLoss",
            "sklearn._loss.loss.HalfMultinomialLoss",
            "sklearn._loss._loss.CyHalfBinomialLoss",
            "sklearn._loss._loss.CyHalfMultinomialLoss",
            "sklearn._loss.link.Interval",
            "sklearn._loss.link.LogitLink",
            "sklearn._loss.link.MultinomialLogit",
            "sklearn.compose._column_transformer.ColumnTransformer",
            "sklearn.preprocessing._encoders.OrdinalEncoder",
            "sklearn.preprocessing._function_transformer.FunctionTransformer",
            "functools.partial",
            "sklearn.utils.validation.check_array",
        }
    ),
    # lightgbm.LGBMClassifier: its Booster is rebuilt from the LightGBM model text it stores
    "lightgbm": frozenset(
        {
            "lightgbm.sklearn.LGBMClassifier",
            "lightgbm.basic.Booster",
            "sklearn.preprocessing._label.LabelEncoder",
            "collections.OrderedDict",
            "collections.defaultdict",
        }
    ),
    # xgboost.XGBClassifier inside LabelEncodedClassifier (XGBoost wants labels 0..n-1); its Booster is
    # rebuilt from the XGBoost model bytes it stores
    "xgboost": frozenset(
        {
            "lcstack.model.LabelEncodedClassifier",
            "xgboost.sklearn.XGBClassifier",
            "xgboost.core.Booster",
        }
    ),
}

_ALLOWED_TYPES = frozenset().union(*MODEL_TYPES.values())


def _is_allowed_type(name: str) -> bool:
    """Whether ``name`` (``module.qualname``) is in one of the :data:`MODEL_TYPES` sets."""
    return name in _ALLOWED_TYPES


def model_types(blob: bytes) -> set[str]:
    """Every type a skops file names (each node's ``module.class``, functions and types included).

    Parameters
    ----------
    blob : bytes
        The content of a ``.skops`` file.

    Returns
    -------
    set of str
        Fully qualified names, from the schema alone (nothing is imported or built).

    Raises
    ------
    InvalidInputError
        The file is not a skops zip with a JSON schema.

    """
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            schema = json.loads(zf.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as err:
        raise InvalidInputError(f"not a skops file ({err}).") from None
    names: set[str] = set()
    todo = [schema]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            if "__module__" in item or "__class__" in item:
                names.add(f"{item.get('__module__')}.{item.get('__class__')}")
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return names


def _storage(url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None) -> tuple[Storage, str]:
    """Return the storage door for the artefact at ``url`` and its URL without a trailing ``/``."""
    root = os.fspath(url).rstrip("/")
    return Storage.for_url(root, storage_options), root


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return repr(value)  # e.g. XGBoost's missing=nan: JSON has no NaN
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def _estimator_params(model: HierarchicalClassifier) -> dict[str, Any]:
    params = model.get_params(deep=True)
    out: dict[str, Any] = {"class": f"{type(model).__module__}.{type(model).__qualname__}"}
    for key, value in sorted(params.items()):
        out[key] = _jsonable(value)
    out["estimator"] = repr(model.estimator_level1_)
    return out


def save_model(
    model: HierarchicalClassifier,
    folder: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None = None,
    compress: bool = True,
    trusted: Sequence[str] = (),
) -> None:
    """Write a fitted model as an artefact folder (``model.skops`` + ``metadata.json``).

    Parameters
    ----------
    model : HierarchicalClassifier
        A fitted classifier.
    folder : str or PathLike
        Local folder or fsspec URL (``s3://bucket/models/m1``); created if needed. An existing artefact
        there is replaced: its ``metadata.json`` is removed first, so an interrupted save never leaves an
        artefact that looks complete.
    metadata : dict
        JSON-serialisable facts about the training run: ``feature_names`` (list, in order; ``features`` is
        accepted too; taken from ``model.feature_names_in_`` when absent), ``lc_labels``, ``sl_labels``,
        ``metrics``, ``training_sha256``, ... Kept as given; lcstack adds ``lcstack_version``, ``created_at``
        (ISO 8601, UTC, unless given), ``estimator_params`` (JSON-able repr of the parameters), ``classes``,
        ``level2`` (categories with a level-2 model or a constant subcategory), ``model_file``,
        ``model_sha256`` and ``format``.
    storage_options : dict, optional
        fsspec options for ``folder`` (credentials, endpoint).
    compress : bool, default True
        Deflate-compress the skops zip (roughly halves a random forest).
    trusted : sequence of str, optional
        Fully qualified types outside :data:`MODEL_TYPES` the model may hold (a classifier of your own);
        :func:`load_model` must be given them too.

    Raises
    ------
    InvalidInputError
        The model is not fitted, the metadata is not JSON-serialisable or its feature names do not match,
        or the model holds a type outside :data:`MODEL_TYPES` and ``trusted`` (it could not be loaded
        back safely; nothing is written).

    """
    from lcstack._version import __version__

    if not isinstance(model, HierarchicalClassifier):
        raise InvalidInputError(f"save_model expects a HierarchicalClassifier, got {type(model).__name__}.")
    check_is_fitted(model)
    meta = dict(metadata)
    names = meta.get("feature_names", meta.get("features"))
    if names is None:
        if not hasattr(model, "feature_names_in_"):
            raise InvalidInputError(
                "metadata has no 'feature_names' and the model was fitted without feature names; pass "
                "metadata={'feature_names': [...], ...} in the feature order used for training."
            )
        names = model.feature_names_in_
    names = [str(n) for n in names]
    if len(names) != model.n_features_in_:
        raise InvalidInputError(
            f"metadata['feature_names'] lists {len(names)} features but the model was fitted on "
            f"{model.n_features_in_}; pass the feature names in training order."
        )
    if hasattr(model, "feature_names_in_") and list(model.feature_names_in_) != names:
        raise InvalidInputError(
            "metadata['feature_names'] differ from the feature names the model was fitted with; "
            "leave 'feature_names' out to use the model's own."
        )
    meta["feature_names"] = names

    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    blob = sio.dumps(model, compression=compression)
    refused = _refused_types(blob, trusted)
    if refused:
        raise InvalidInputError(
            f"the model holds types outside lcstack's allow-list (lcstack.model.MODEL_TYPES): {refused}, so "
            "it could not be loaded back safely; nothing was saved. If you checked these types, list them "
            "in the config under `model: {trusted_types: [...]}` (they are then trusted when saving and "
            "loading), or choose an estimator of the families random_forest, extra_trees, "
            "hist_gradient_boosting, lightgbm, xgboost."
        )
    meta.update(
        {
            "format": ARTEFACT_FORMAT,
            "model_file": MODEL_FILE,
            "model_sha256": hashlib.sha256(blob).hexdigest(),
            "lcstack_version": __version__,
            "estimator_params": _estimator_params(model),
            "classes": _jsonable(model.classes_),
            "level2": {
                "models": sorted(_jsonable(list(model.estimators_level2_))),
                "constant": {str(k): v for k, v in model.constant_level2_.items()},
            },
        }
    )
    meta.setdefault("created_at", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    try:
        text = json.dumps(meta, indent=2, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(
            f"metadata is not JSON-serialisable: {err}. Pass plain lists/dicts/numbers."
        ) from err

    store, root = _storage(folder, storage_options)
    meta_path = store.join(root, METADATA_FILE)
    store.remove(meta_path)  # the artefact is incomplete until the new metadata.json lands
    store.write_bytes(store.join(root, MODEL_FILE), blob)
    store.write_bytes(meta_path, text.encode("utf-8"))
    logger.info("saved model to %s (%.1f MB)", folder, len(blob) / 1e6)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON-serialisable")


def load_model(
    folder: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    trusted: Sequence[str] = (),
) -> tuple[HierarchicalClassifier, dict[str, Any]]:
    """Load a model artefact written by :func:`save_model`.

    The skops file is checked against the ``model_sha256`` recorded in the metadata, then every type it
    names (each node of its schema, including the types skops trusts by default) must be one that a saved
    model holds (:data:`MODEL_TYPES`: the classifier, the estimators of the supported families and their
    trees, builtin containers, NumPy arrays and scalars) or be listed in ``trusted``.

    Parameters
    ----------
    folder : str or PathLike
        Local folder or fsspec URL of the artefact.
    storage_options : dict, optional
        fsspec options for ``folder``.
    trusted : sequence of str, optional
        Further fully qualified type names to trust (e.g. a custom base classifier), after you checked them.

    Returns
    -------
    model : HierarchicalClassifier
        The fitted classifier.
    metadata : dict
        The content of ``metadata.json``.

    Raises
    ------
    InputFileNotFoundError
        The folder holds no complete artefact.
    InvalidInputError
        The model file does not match its metadata, or it names a type that is not allowed (the message
        names the types and the file).

    """
    store, root = _storage(folder, storage_options)
    meta_path = store.join(root, METADATA_FILE)
    if not store.exists(meta_path):
        raise InputFileNotFoundError(
            f"{folder} holds no complete model artefact ({METADATA_FILE} is missing; it is written last, so "
            "the save was interrupted or this is not a model folder). Train and save the model again."
        )
    meta = json.loads(store.read_bytes(meta_path).decode("utf-8"))
    model_path = store.join(root, meta.get("model_file", MODEL_FILE))
    if not store.exists(model_path):
        raise InputFileNotFoundError(f"{model_path} is missing from the model artefact {folder}.")
    blob = store.read_bytes(model_path)
    digest = hashlib.sha256(blob).hexdigest()
    if meta.get("model_sha256") not in (None, digest):
        raise InvalidInputError(
            f"{model_path} does not match the model_sha256 in {METADATA_FILE}: the file was changed or "
            "partly written. Save the model again."
        )
    untrusted = _checked_types(blob, model_path, trusted)
    model = sio.loads(blob, trusted=list(untrusted))
    if not isinstance(model, HierarchicalClassifier):
        raise InvalidInputError(f"{model_path} holds a {type(model).__name__}, not a HierarchicalClassifier.")
    _check_trees(model, model_path)
    return model, meta


def _check_trees(model: HierarchicalClassifier, model_path: str) -> None:
    """Check every tree of the loaded model (a tampered one would crash any predict, not just raise)."""
    from sklearn.ensemble import ExtraTreesClassifier
    from sklearn.tree import DecisionTreeClassifier

    from lcstack.forest import check_estimator

    models = {"level-1 model": getattr(model, "estimator_level1_", None)}
    models.update(
        {f"level-2 model of category {k}": v for k, v in model.__dict__.get("estimators_level2_", {}).items()}
    )
    for where, est in models.items():
        if isinstance(est, RandomForestClassifier | ExtraTreesClassifier | DecisionTreeClassifier):
            try:
                check_estimator(est, where)
            except InvalidInputError as err:
                raise InvalidInputError(f"{model_path}: {err}") from None


def _refused_types(blob: bytes, trusted: Sequence[str]) -> list[str]:
    """List the types a skops file names (schema nodes, skops' untrusted list) outside the allow-list."""
    extra = set(trusted)
    named = model_types(blob) | set(sio.get_untrusted_types(data=blob))
    return sorted(t for t in named if t not in extra and not _is_allowed_type(t))


def _checked_types(blob: bytes, model_path: str, trusted: Sequence[str]) -> list[str]:
    """Check that every type the file names is allowed; return the types skops asks to trust."""
    extra = set(trusted)
    try:
        named = model_types(blob)
        untrusted = set(sio.get_untrusted_types(data=blob))
    except InvalidInputError as err:
        raise InvalidInputError(f"{model_path}: {err} Save the model again.") from None
    except Exception as err:  # skops cannot read the schema
        raise InvalidInputError(
            f"{model_path} is not a readable skops file ({err}). Save the model again."
        ) from None
    refused = sorted(t for t in named | untrusted if t not in extra and not _is_allowed_type(t))
    if refused:
        raise InvalidInputError(
            f"{model_path} holds types no lcstack model holds: {refused}. Refusing to load it (it may have "
            "been tampered with). If you produced this file and checked these types, list them in the "
            "config under `model: {trusted_types: [...]}`, or pass load_model(..., trusted=[...])."
        )
    return sorted(untrusted)


def check_features(metadata: Mapping[str, Any], feature_names: Iterable[str]) -> None:
    """Check that features match, by name and order, those the model was trained on.

    Parameters
    ----------
    metadata : dict
        Model metadata (from :func:`load_model`), with ``feature_names`` (or ``features``).
    feature_names : iterable of str
        Features about to be classified, in order (the ``feature`` coordinate of the cube).

    Raises
    ------
    ModelMismatchError
        Listing missing, extra and misordered features.

    """
    recorded = metadata.get("feature_names", metadata.get("features"))
    if recorded is None:
        raise ModelMismatchError("the model metadata records no feature names; re-save the model with them.")
    expected = [str(f) for f in recorded]
    given = [str(f) for f in feature_names]
    if given == expected:
        return
    missing = [f for f in expected if f not in given]
    extra = [f for f in given if f not in expected]
    parts = [f"the model was trained on {len(expected)} features but {len(given)} were given"]
    if missing:
        parts.append(f"missing: {missing}")
    if extra:
        parts.append(f"extra: {extra}")
    if not missing and not extra:
        moved = [
            f"{f} (expected position {i}, got {given.index(f)})"
            for i, f in enumerate(expected)
            if given[i] != f
        ]
        parts.append(f"misordered: {moved[:10]}" + (" ..." if len(moved) > 10 else ""))
    raise ModelMismatchError(
        "Features do not match the model: " + "; ".join(parts) + ". Retrain the model on these composites, "
        "or classify composites built with the seasons, bands and indices the model was trained on."
    )
