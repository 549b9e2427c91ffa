"""Feature importances of a trained model and feature selection before training.

:func:`permutation_importances` scores a fitted :class:`~lcstack.model.HierarchicalClassifier` on held-out
samples with each feature shuffled in turn (:func:`sklearn.inspection.permutation_importance`), per level;
:func:`plot_importances` draws them as a bar chart. :func:`select_features` chooses the features a model
is trained on (``model: {select: {method: rfecv|importance}}``), from the training samples alone.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import IO, Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.inspection import permutation_importance

from .config import SelectConfig
from .errors import InvalidInputError

__all__ = ["permutation_importances", "plot_importances", "importance_pngs", "select_features"]

logger = logging.getLogger(__name__)


def _levels(model: Any, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both levels' codes through the compiled engine (a forest) or the estimators' own ``predict``."""
    from .classify import fast_predict_levels

    return fast_predict_levels(model, X)


def _level_scorer(level: int) -> Any:
    def score(est: Any, X: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(_levels(est, X)[level - 1] == y))

    return score


def _ranked(result: Any, features: Sequence[str]) -> dict[str, Any]:
    order = np.argsort(-result.importances_mean, kind="stable")
    return {
        "features": [str(features[i]) for i in order],
        "mean": [float(result.importances_mean[i]) for i in order],
        "std": [float(result.importances_std[i]) for i in order],
    }


def permutation_importances(
    model: Any,
    X: np.ndarray,
    y: np.ndarray,
    y_sub: np.ndarray,
    features: Sequence[str],
    *,
    repeats: int = 5,
    random_state: int = 0,
) -> dict[str, Any]:
    """Drop in accuracy per shuffled feature on held-out samples, per level.

    Parameters
    ----------
    model : HierarchicalClassifier
        Fitted on other samples than ``X``.
    X : ndarray of shape (n_samples, n_features)
        Held-out features.
    y, y_sub : ndarray
        Their category and subcategory codes (subcategory < 2: none; such samples are left out of level 2).
    features : sequence of str
        Feature names, the columns of ``X``.
    repeats : int
        Shuffles per feature.
    random_state : int
        Seed of the shuffles.

    Returns
    -------
    dict
        ``level1`` and, with held-out subcategories, ``level2``: ``features`` (most important first),
        ``mean`` and ``std`` (over the shuffles) of the drop in overall accuracy; with ``n_repeats``
        and ``n_samples``.

    """
    from threadpoolctl import threadpool_limits

    out: dict[str, Any] = {}
    has_sub = y_sub >= 2
    for level, rows, target in ((1, slice(None), y), (2, has_sub, y_sub)):
        Xl, yl = X[rows], target[rows]
        if len(yl) == 0:
            continue
        # many small predictions: one OpenMP thread each (HistGradientBoosting, LightGBM) spares the
        # thread start-up and spin-waiting that dominate on a few hundred rows
        with threadpool_limits(limits=1):
            result = permutation_importance(
                model, Xl, yl, scoring=_level_scorer(level), n_repeats=repeats, random_state=random_state
            )
        out[f"level{level}"] = {**_ranked(result, features), "n_repeats": repeats, "n_samples": len(yl)}
    return out


def plot_importances(report: dict[str, Any], path_or_file: IO[bytes], *, title: str, top: int = 25) -> None:
    """Draw one level of :func:`permutation_importances` as a horizontal bar chart (PNG).

    Parameters
    ----------
    report : dict
        ``features``, ``mean`` and ``std``, most important first.
    path_or_file : binary file
        Where the PNG goes.
    title : str
        Figure title.
    top : int
        How many features to show.

    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = report["features"][:top][::-1]
    mean = report["mean"][:top][::-1]
    std = report["std"][:top][::-1]
    fig = Figure(figsize=(7.0, max(3.0, 0.28 * len(names) + 1.2)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.barh(range(len(names)), mean, xerr=std, color="tab:blue", ecolor="0.3", capsize=2)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.axvline(0.0, color="0.5", linewidth=0.8)
    ax.set_xlabel(f"drop in overall accuracy when shuffled (mean ± std of {report.get('n_repeats', '?')})")
    ax.set_title(title)
    fig.savefig(path_or_file, format="png", dpi=120)


def importance_pngs(importances: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes per file name (``importance_level1.png``, ...) for :func:`permutation_importances`."""
    out = {}
    for level, report in importances.items():
        buf = io.BytesIO()
        plot_importances(report, buf, title=f"Permutation importance, {level} (held-out samples)")
        out[f"importance_{level}.png"] = buf.getvalue()
    return out


# -- selection ----------------------------------------------------------------------------------------------


def _importances_of(est: Any) -> np.ndarray | None:
    for owner in (est, getattr(est, "estimator_", None)):
        values = getattr(owner, "feature_importances_", None)
        if values is not None:
            return np.asarray(values, dtype=float)
    return None


def _by_importance(base: Any, X: np.ndarray, y: np.ndarray, cfg: SelectConfig, random_state: int) -> Any:
    est = clone(base).fit(X, y)
    scores = _importances_of(est)
    if scores is None:  # e.g. HistGradientBoosting: permutations on the training samples
        scores = permutation_importance(est, X, y, n_repeats=3, random_state=random_state).importances_mean
    if cfg.n_features is not None:
        keep = np.argsort(-scores, kind="stable")[: cfg.n_features]
    else:
        keep = np.flatnonzero(scores >= scores.mean())
    return np.sort(keep), scores


def _by_rfecv(
    base: Any, X: np.ndarray, y: np.ndarray, table: pd.DataFrame, cfg: SelectConfig, random_state: int
) -> Any:
    from sklearn.feature_selection import RFECV

    from .evaluate import spatial_folds
    from .model import LabelEncodedClassifier

    folds = spatial_folds(
        table,
        folds=cfg.folds,
        block_size=cfg.block_size,
        random_state=random_state,
        groups=table.get("polygon"),
    )
    wrapped = isinstance(base, LabelEncodedClassifier)
    rfe = RFECV(
        base,
        step=cfg.step,
        min_features_to_select=min(cfg.min_features, X.shape[1]),
        cv=folds,
        scoring="f1_macro",
        importance_getter="estimator_.feature_importances_" if wrapped else "auto",
    )
    try:
        rfe.fit(X, y)
    except (ValueError, AttributeError) as err:
        if "coef_" not in str(err) and "feature_importances_" not in str(err):
            raise
        raise InvalidInputError(
            f"model.select: method rfecv needs an estimator with feature_importances_ or coef_, and "
            f"{type(base).__name__} has neither. Use `select: {{method: importance}}`, or an estimator "
            "such as random_forest, extra_trees, lightgbm or xgboost."
        ) from None
    return np.flatnonzero(rfe.support_), rfe.ranking_.astype(float)


def select_features(
    base: Any,
    table: pd.DataFrame,
    features: Sequence[str],
    *,
    options: SelectConfig,
    random_state: int = 0,
) -> tuple[list[str], dict[str, Any]]:
    """Choose the features a model is trained on, from training samples alone (level-1 categories).

    Parameters
    ----------
    base : classifier
        The level-1 base estimator (cloned).
    table : DataFrame
        Training samples (features, ``category``, ``latitude``, ``longitude``); never the held-out rows.
    features : sequence of str
        The candidate features, columns of ``table``.
    options : SelectConfig
        ``importance``: keep the ``n_features`` most important (the estimator's ``feature_importances_``,
        else permutation importances), or those above the mean; ``rfecv``: recursive feature elimination
        scored by macro F1 on spatial folds (:func:`lcstack.evaluate.spatial_folds`).
    random_state : int
        Seed of the folds and permutations.

    Returns
    -------
    chosen : list of str
        The kept features, in their original order.
    info : dict
        ``method``, ``from`` (all candidates), ``chosen`` and ``scores`` (importance, or RFE rank: 1 = kept).

    """
    X = table[list(features)].to_numpy(np.float32)
    y = table["category"].to_numpy(np.int64)
    if options.method == "rfecv":
        keep, scores = _by_rfecv(base, X, y, table, options, random_state)
    else:
        keep, scores = _by_importance(base, X, y, options, random_state)
    chosen = [str(features[i]) for i in keep]
    logger.info("feature selection (%s): kept %d of %d features", options.method, len(chosen), len(features))
    info = {
        "method": options.method,
        "from": [str(f) for f in features],
        "chosen": chosen,
        "scores": {str(f): float(s) for f, s in zip(features, scores, strict=True)},
    }
    return chosen, info
