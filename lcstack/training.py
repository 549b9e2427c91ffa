"""Training: fit the hierarchical classifier on a sample table, evaluate it, store the artefact."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier

from ._version import __version__
from .config import CVConfig, ModelConfig, RebalanceConfig
from .errors import InvalidInputError, MissingDependencyError
from .model import DEFAULT_FOREST_PARAMS
from .samples import SAMPLE_COLUMNS

__all__ = [
    "META_COLUMNS",
    "feature_columns",
    "make_estimator",
    "build_model",
    "rebalance_rows",
    "split_metrics",
    "search_params",
    "cross_validate",
    "train_model",
]

logger = logging.getLogger(__name__)

META_COLUMNS = SAMPLE_COLUMNS


def _forest(cls: type) -> Any:
    # Size-limited forests (lcstack.model.DEFAULT_FOREST_PARAMS): small artefacts and fast inference.
    return lambda rs, p: cls(**{**DEFAULT_FOREST_PARAMS, "n_jobs": -1, "random_state": rs, **p})


def _optional(module: str, name: str, extra: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        raise MissingDependencyError(module, extra, f"model.estimator: {extra}") from None


def _lightgbm(rs: int, p: dict[str, Any]) -> Any:
    cls = _optional("lightgbm", "LGBMClassifier", "lightgbm")
    return cls(**{"n_jobs": -1, "random_state": rs, "verbose": -1, **p})


def _xgboost(rs: int, p: dict[str, Any]) -> Any:
    from .model import LabelEncodedClassifier

    cls = _optional("xgboost", "XGBClassifier", "xgboost")
    # XGBoost wants labels 0..n-1: the wrapper maps the category codes onto them and back
    return LabelEncodedClassifier(cls(**{"n_jobs": -1, "random_state": rs, **p}))


_ESTIMATORS: dict[str, Any] = {
    "random_forest": _forest(RandomForestClassifier),
    "extra_trees": _forest(ExtraTreesClassifier),
    "hist_gradient_boosting": lambda rs, p: HistGradientBoostingClassifier(**{"random_state": rs, **p}),
    "lightgbm": _lightgbm,
    "xgboost": _xgboost,
}


def _import_class(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise InvalidInputError(
            f"model.estimator.class: cannot import {path!r} ({err}); give the full path of a "
            "scikit-learn-compatible classifier, e.g. sklearn.ensemble.RandomForestClassifier."
        ) from None
    if not isinstance(cls, type) or not all(hasattr(cls, m) for m in ("fit", "predict", "get_params")):
        raise InvalidInputError(
            f"model.estimator.class: {path!r} is not a scikit-learn-compatible classifier class "
            "(it needs fit, predict and get_params)."
        )
    return cls


def _set_class_weight(est: Any, options: ModelConfig) -> Any:
    from .model import LabelEncodedClassifier

    weight = options.class_weight
    if weight is None:
        return est
    if weight == "balanced_subsample" and not isinstance(est, RandomForestClassifier | ExtraTreesClassifier):
        raise InvalidInputError(
            f"model.class_weight: balanced_subsample is for forests (random_forest, extra_trees), not "
            f"{options.estimator_name}; use class_weight: balanced."
        )
    if isinstance(est, LabelEncodedClassifier) or "class_weight" in est.get_params(deep=False):
        return est.set_params(class_weight=weight)
    raise InvalidInputError(
        f"model.class_weight: {options.estimator_name} takes no class_weight; leave it out and re-balance "
        "the samples instead (`model: {rebalance: {max_per_class: N, min_per_class: M}}`)."
    )


def make_estimator(options: ModelConfig) -> Any:
    """Return the base estimator named by the model options (family or class path), with class weights.

    Raises
    ------
    InvalidInputError
        Unknown parameters, a class that cannot be imported, or class weights it cannot take.
    MissingDependencyError
        ``lightgbm`` or ``xgboost`` without the package.

    """
    spec = options.estimator
    try:
        if isinstance(spec, str):
            est = _ESTIMATORS[spec](options.random_state, dict(options.params))
        else:
            est = _import_class(spec.class_)(**{**spec.params, **options.params})
    except TypeError as err:
        raise InvalidInputError(
            f"model.params: {err}; check the parameter names of {options.estimator_name}."
        ) from None
    return _set_class_weight(est, options)


def build_model(options: ModelConfig) -> Any:
    """Return the (unfitted) :class:`~lcstack.model.HierarchicalClassifier` the options describe."""
    from .model import HierarchicalClassifier

    return HierarchicalClassifier(make_estimator(options), random_state=options.random_state)


def rebalance_rows(
    y: np.ndarray, rows: np.ndarray, options: RebalanceConfig | None, *, random_state: int = 0
) -> np.ndarray:
    """Training rows re-balanced per category: at most ``max_per_class``, at least ``min_per_class``.

    A category with more rows keeps a random subset; one with fewer gets random repeats of its own rows.
    Only ever applied to training rows.

    Returns
    -------
    ndarray
        Row indices, sorted (repeats included); ``rows`` itself without ``options``.

    """
    rows = np.asarray(rows)
    if options is None:
        return rows
    rng = np.random.default_rng(random_state)
    out = []
    for c in np.unique(y[rows]):
        idx = rows[y[rows] == c]
        if options.max_per_class is not None and idx.size > options.max_per_class:
            idx = rng.choice(idx, options.max_per_class, replace=False)
        elif options.min_per_class is not None and idx.size < options.min_per_class:
            idx = np.concatenate([idx, rng.choice(idx, options.min_per_class - idx.size, replace=True)])
        out.append(idx)
    return np.sort(np.concatenate(out))


def feature_columns(table: pd.DataFrame) -> list[str]:
    """Return the feature columns of a sample table, in order."""
    return [c for c in table.columns if c not in META_COLUMNS]


def _held_out(
    model: Any,
    X: np.ndarray,
    y: np.ndarray,
    y_sub: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    *,
    lc_labels: Mapping[str, int],
    sl_labels: Mapping[str, int] | None,
    rebalance: RebalanceConfig | None = None,
    random_state: int = 0,
) -> tuple[Any, dict[str, Any]]:
    from .evaluate import evaluate

    fit_rows = rebalance_rows(y, train_idx, rebalance, random_state=random_state)
    held = clone(model).fit(X[fit_rows], y[fit_rows], y_sub[fit_rows])
    l1, l2 = held.predict_levels(X[test_idx])
    metrics: dict[str, Any] = {"level1": evaluate(y[test_idx], l1, labels=dict(lc_labels))}
    sub_true = y_sub[test_idx]
    has_sub = sub_true >= 2
    if sl_labels and has_sub.any():
        labels2 = {"unclassified": 1, **sl_labels}
        metrics["level2"] = evaluate(sub_true[has_sub], l2[has_sub], labels=labels2)
    return held, metrics


def split_metrics(
    model: Any,
    X: np.ndarray,
    y: np.ndarray,
    y_sub: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    *,
    lc_labels: Mapping[str, int],
    sl_labels: Mapping[str, int] | None,
    rebalance: RebalanceConfig | None = None,
    random_state: int = 0,
) -> dict[str, Any]:
    """Fit a clone of ``model`` on the training rows; :func:`~lcstack.evaluate.evaluate` it on the test rows.

    With ``rebalance`` the training rows (only they) are re-balanced first (:func:`rebalance_rows`).

    Returns
    -------
    dict
        ``level1`` and, where ``sl_labels`` are given and test points have a subcategory, ``level2``
        (over those points, with ``unclassified`` = 1).

    """
    return _held_out(
        model,
        X,
        y,
        y_sub,
        train_idx,
        test_idx,
        lc_labels=lc_labels,
        sl_labels=sl_labels,
        rebalance=rebalance,
        random_state=random_state,
    )[1]


_CV_SCORES = ("overall_accuracy", "kappa", "macro_f1")


def _summary(values: list[float | None]) -> dict[str, Any]:
    kept = np.array([v for v in values if v is not None], dtype=float)
    if kept.size == 0:
        return {"mean": None, "std": None, "n_folds": 0}
    return {
        "mean": float(kept.mean()),
        "std": float(kept.std(ddof=1)) if kept.size > 1 else 0.0,
        "n_folds": int(kept.size),
    }


def _arrays(table: pd.DataFrame, features: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        table[features].to_numpy(np.float32),
        table["category"].to_numpy(np.int64),
        table["subcategory"].to_numpy(np.int64),
    )


def cross_validate(
    table: pd.DataFrame,
    model: Any,
    *,
    cv: CVConfig,
    random_state: int,
    lc_labels: Mapping[str, int],
    sl_labels: Mapping[str, int] | None,
    rebalance: RebalanceConfig | None = None,
    features: list[str] | None = None,
) -> dict[str, Any]:
    """Spatial k-fold cross-validation (:func:`~lcstack.evaluate.spatial_folds`) of ``model``.

    ``rebalance`` re-balances each fold's training rows (never its test rows); ``features`` (default: all
    feature columns) are the columns the model is fitted on.

    Returns
    -------
    dict
        ``folds``, ``block_size_m``, ``n_blocks``, and per level (``level1``, ``level2``) the ``mean``
        and ``std`` (sample standard deviation over folds) of ``overall_accuracy``, ``kappa`` and
        ``macro_f1`` (a fold where kappa is undefined is left out of its figure; ``n_folds`` says how many
        counted), with the figures of every fold in ``per_fold``.

    """
    from .evaluate import spatial_blocks, spatial_folds

    X, y, y_sub = _arrays(table, features or feature_columns(table))
    splits = spatial_folds(
        table,
        folds=cv.folds,
        block_size=cv.block_size,
        random_state=random_state,
        groups=table.get("polygon"),
    )
    kw = {
        "lc_labels": lc_labels,
        "sl_labels": sl_labels,
        "rebalance": rebalance,
        "random_state": random_state,
    }
    runs = [split_metrics(model, X, y, y_sub, tr, te, **kw) for tr, te in splits]
    out: dict[str, Any] = {
        "folds": cv.folds,
        "block_size_m": cv.block_size,
        "n_blocks": int(spatial_blocks(table, cv.block_size).max()) + 1,
        "n_test": [int(len(te)) for _, te in splits],
    }
    for level in ("level1", "level2"):
        per_fold = [{k: r[level][k] for k in _CV_SCORES} for r in runs if level in r]
        if per_fold:
            out[level] = {k: _summary([f[k] for f in per_fold]) for k in _CV_SCORES}
            out[level]["per_fold"] = per_fold
    logger.info(
        "spatial %d-fold CV (%g m blocks): level-1 OA %.3f ± %.3f",
        cv.folds,
        cv.block_size,
        out["level1"]["overall_accuracy"]["mean"],
        out["level1"]["overall_accuracy"]["std"],
    )
    return out


def search_params(
    table: pd.DataFrame,
    features: list[str],
    options: ModelConfig,
    *,
    lc_labels: Mapping[str, int],
    sl_labels: Mapping[str, int] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Grid search of ``options.search.param_grid`` on spatial folds of ``table`` (the training split).

    Each candidate's parameters are merged into ``options.params`` and scored (level-1
    ``options.search.scoring``, mean over the folds; training rows of each fold re-balanced as the model
    will be).

    Returns
    -------
    best : dict
        The best candidate's parameters (the first of equals, in grid order).
    report : dict
        ``scoring``, ``folds``, ``block_size_m``, ``best_params``, ``best_score`` and ``candidates``
        (``params``, ``mean``, ``std`` of each).

    """
    from sklearn.model_selection import ParameterGrid

    from .evaluate import spatial_folds

    cfg = options.search
    table = table.reset_index(drop=True)
    X, y, y_sub = _arrays(table, features)
    folds = spatial_folds(
        table,
        folds=cfg.folds,
        block_size=cfg.block_size,
        random_state=options.random_state,
        groups=table.get("polygon"),
    )
    candidates = []
    for params in ParameterGrid(cfg.param_grid):
        model = build_model(options.model_copy(update={"params": {**options.params, **params}}))
        scores = [
            split_metrics(
                model,
                X,
                y,
                y_sub,
                tr,
                te,
                lc_labels=lc_labels,
                sl_labels=None,
                rebalance=options.rebalance,
                random_state=options.random_state,
            )["level1"][cfg.scoring]
            for tr, te in folds
        ]
        candidates.append({"params": dict(params), **_summary(scores)})
    ranked = [c for c in candidates if c["mean"] is not None] or candidates
    best = max(ranked, key=lambda c: -np.inf if c["mean"] is None else c["mean"])
    logger.info("grid search: best %s = %s with %s", cfg.scoring, best["mean"], best["params"])
    report = {
        "scoring": cfg.scoring,
        "folds": cfg.folds,
        "block_size_m": cfg.block_size,
        "best_params": best["params"],
        "best_score": best["mean"],
        "candidates": candidates,
    }
    return best["params"], report


def _class_counts(y: np.ndarray, lc_labels: Mapping[str, int]) -> dict[str, int]:
    names = {int(v): k for k, v in lc_labels.items()}
    codes, counts = np.unique(y, return_counts=True)
    return {names.get(int(c), str(c)): int(n) for c, n in zip(codes, counts, strict=True)}


def _balance_report(
    y: np.ndarray, train_idx: np.ndarray, options: ModelConfig, lc_labels: Mapping[str, int]
) -> dict[str, Any]:
    """Report class balance for ``metrics.json``: the options and the training split's class counts."""
    fit_rows = rebalance_rows(y, train_idx, options.rebalance, random_state=options.random_state)
    return {
        "class_weight": options.class_weight,
        "rebalance": options.rebalance.model_dump() if options.rebalance else None,
        "train_counts": _class_counts(y[train_idx], lc_labels),
        "train_counts_rebalanced": _class_counts(y[fit_rows], lc_labels),
    }


def _tune(
    table: pd.DataFrame,
    train_idx: np.ndarray,
    options: ModelConfig,
    *,
    lc_labels: Mapping[str, int],
    sl_labels: Mapping[str, int] | None,
) -> tuple[list[str], ModelConfig, dict[str, Any]]:
    """Feature selection and grid search, on the training split alone: (features, options, report)."""
    from .importance import select_features

    features = feature_columns(table)
    report: dict[str, Any] = {}
    train = table.iloc[train_idx].reset_index(drop=True)
    if options.select is not None:
        base = make_estimator(options)
        features, report["selection"] = select_features(
            base, train, features, options=options.select, random_state=options.random_state
        )
    if options.search is not None:
        best, report["search"] = search_params(
            train, features, options, lc_labels=lc_labels, sl_labels=sl_labels
        )
        options = options.model_copy(update={"params": {**options.params, **best}})
    return features, options, report


def _evaluate_split(
    table: pd.DataFrame,
    features: list[str],
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    options: ModelConfig,
    *,
    lc_labels: Mapping[str, int],
    sl_labels: Mapping[str, int] | None,
) -> dict[str, Any]:
    """Held-out metrics (and permutation importances, class balance, cross-validation) of the options."""
    from .importance import permutation_importances

    X, y, y_sub = _arrays(table, features)
    model = build_model(options)
    kw = {"lc_labels": lc_labels, "sl_labels": sl_labels}
    held, metrics = _held_out(
        model,
        X,
        y,
        y_sub,
        train_idx,
        test_idx,
        rebalance=options.rebalance,
        random_state=options.random_state,
        **kw,
    )
    metrics["n_train"], metrics["n_test"] = int(len(train_idx)), int(len(test_idx))
    metrics["class_balance"] = _balance_report(y, train_idx, options, lc_labels)
    if options.importance_repeats:
        metrics["importances"] = permutation_importances(
            held,
            X[test_idx],
            y[test_idx],
            y_sub[test_idx] if sl_labels else np.zeros(len(test_idx), np.int64),
            features,
            repeats=options.importance_repeats,
            random_state=options.random_state,
        )
    if options.cv is not None:
        metrics["cv"] = cross_validate(
            table,
            model,
            cv=options.cv,
            random_state=options.random_state,
            rebalance=options.rebalance,
            features=features,
            **kw,
        )
    return metrics


def _write_figures(storage: Any, url: str, metrics: Mapping[str, Any]) -> None:
    from .evaluate import plot_confusion
    from .importance import importance_pngs

    for level in ("level1", "level2"):
        if level in metrics:
            buf = io.BytesIO()
            plot_confusion(metrics[level], buf)
            storage.write_bytes(storage.join(url, f"confusion_{level}.png"), buf.getvalue())
    for name, png in importance_pngs(metrics.get("importances", {})).items():
        storage.write_bytes(storage.join(url, name), png)


def train_model(
    table: pd.DataFrame,
    url: str,
    *,
    lc_labels: Mapping[str, int],
    sl_labels: Mapping[str, int] | None,
    options: ModelConfig | None = None,
    dataset_key: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit, evaluate and save a :class:`~lcstack.model.HierarchicalClassifier`.

    The table is split by location (points at the same coordinates never on both sides; spatial blocks
    with ``options.block_size``); metrics come from the held-out part. Feature selection
    (``options.select``) and the grid search (``options.search``) see the training part only; so does
    re-balancing (``options.rebalance``). With ``options.cv`` the model is also cross-validated by spatial
    blocks (:func:`cross_validate`; ``metrics["cv"]``). The stored model is then refitted on all samples
    (re-balanced). The artefact folder at ``url`` holds ``model.skops``, ``metadata.json``,
    ``metrics.json`` (with ``class_balance``, ``importances``, ``selection``, ``search``),
    ``confusion_level1.png`` and ``importance_level1.png`` (and the ``level2`` ones).

    Returns
    -------
    dict
        The metadata written to ``metadata.json``.

    """
    from .evaluate import location_split
    from .model import save_model
    from .store import Storage

    options = options or ModelConfig()
    make_estimator(options)  # bad options fail before any fitting
    train_idx, test_idx = location_split(
        table,
        test_size=options.test_size,
        random_state=options.random_state,
        block_size=options.block_size,
        groups=table.get("polygon"),
    )
    kw = {"lc_labels": lc_labels, "sl_labels": sl_labels}
    features, options, tuned = _tune(table, train_idx, options, **kw)
    metrics = _evaluate_split(table, features, train_idx, test_idx, options, **kw)
    metrics.update(tuned)

    X, y, y_sub = _arrays(table, features)
    rows = rebalance_rows(y, np.arange(len(table)), options.rebalance, random_state=options.random_state)
    model = build_model(options).fit(X[rows], y[rows], y_sub[rows])
    table_hash = hashlib.sha256(
        pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes()
    ).hexdigest()
    metadata = {
        "features": features,
        "lc_labels": dict(lc_labels),
        "sl_labels": dict(sl_labels or {}),
        "estimator": options.estimator_name,
        "class_weight": options.class_weight,
        "params": {k: repr(v) for k, v in model.estimator_level1_.get_params().items()},
        "metrics": metrics,
        "dataset": dataset_key,
        "training_table_sha256": table_hash,
        "n_samples": int(len(table)),
        "lcstack_version": __version__,
    }
    if "selection" in tuned:
        metadata["selected_from"] = tuned["selection"]["from"]
    storage = Storage(url, storage_options=storage_options)
    storage.write_bytes(storage.join(url, "metrics.json"), json.dumps(metrics, indent=2).encode())
    _write_figures(storage, url, metrics)
    save_model(model, url, metadata=metadata, storage_options=storage_options, trusted=options.trusted_types)
    oa = metrics["level1"]["overall_accuracy"]
    logger.info(
        "model trained on %d samples; held-out level-1 accuracy %.3f; saved to %s", len(table), oa, url
    )
    return metadata
