"""Training: fit the hierarchical classifier on a sample table, evaluate it, store the artefact."""

from __future__ import annotations

import hashlib
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
from .config import CVConfig, ModelConfig
from .errors import InvalidInputError
from .model import DEFAULT_FOREST_PARAMS
from .samples import SAMPLE_COLUMNS

__all__ = [
    "META_COLUMNS",
    "feature_columns",
    "make_estimator",
    "split_metrics",
    "cross_validate",
    "train_model",
]

logger = logging.getLogger(__name__)

META_COLUMNS = SAMPLE_COLUMNS

_ESTIMATORS: dict[str, Any] = {
    # Size-limited forests (lcstack.model.DEFAULT_FOREST_PARAMS): small artefacts and fast inference.
    "random_forest": lambda rs, p: RandomForestClassifier(
        **{**DEFAULT_FOREST_PARAMS, "n_jobs": -1, "random_state": rs, **p}
    ),
    "extra_trees": lambda rs, p: ExtraTreesClassifier(
        **{**DEFAULT_FOREST_PARAMS, "n_jobs": -1, "random_state": rs, **p}
    ),
    "hist_gradient_boosting": lambda rs, p: HistGradientBoostingClassifier(**{"random_state": rs, **p}),
}


def make_estimator(options: ModelConfig) -> Any:
    """Return the base estimator named by the model options."""
    try:
        return _ESTIMATORS[options.estimator](options.random_state, dict(options.params))
    except TypeError as err:
        raise InvalidInputError(
            f"model.params: {err}; check the parameter names of {options.estimator}."
        ) from None


def feature_columns(table: pd.DataFrame) -> list[str]:
    """Return the feature columns of a sample table, in order."""
    return [c for c in table.columns if c not in META_COLUMNS]


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
) -> dict[str, Any]:
    """Fit a clone of ``model`` on the training rows; :func:`~lcstack.evaluate.evaluate` it on the test rows.

    Returns
    -------
    dict
        ``level1`` and, where ``sl_labels`` are given and test points have a subcategory, ``level2``
        (over those points, with ``unclassified`` = 1).

    """
    from .evaluate import evaluate

    held = clone(model).fit(X[train_idx], y[train_idx], y_sub[train_idx])
    l1, l2 = held.predict_levels(X[test_idx])
    metrics: dict[str, Any] = {"level1": evaluate(y[test_idx], l1, labels=dict(lc_labels))}
    sub_true = y_sub[test_idx]
    has_sub = sub_true >= 2
    if sl_labels and has_sub.any():
        labels2 = {"unclassified": 1, **sl_labels}
        metrics["level2"] = evaluate(sub_true[has_sub], l2[has_sub], labels=labels2)
    return metrics


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


def cross_validate(
    table: pd.DataFrame,
    model: Any,
    *,
    cv: CVConfig,
    random_state: int,
    lc_labels: Mapping[str, int],
    sl_labels: Mapping[str, int] | None,
) -> dict[str, Any]:
    """Spatial k-fold cross-validation (:func:`~lcstack.evaluate.spatial_folds`) of ``model``.

    Returns
    -------
    dict
        ``folds``, ``block_size_m``, ``n_blocks``, and per level (``level1``, ``level2``) the ``mean``
        and ``std`` (sample standard deviation over folds) of ``overall_accuracy``, ``kappa`` and
        ``macro_f1`` (a fold where kappa is undefined is left out of its figure; ``n_folds`` says how many
        counted), with the figures of every fold in ``per_fold``.

    """
    from .evaluate import spatial_blocks, spatial_folds

    X = table[feature_columns(table)].to_numpy(np.float32)
    y = table["category"].to_numpy(np.int64)
    y_sub = table["subcategory"].to_numpy(np.int64)
    splits = spatial_folds(
        table,
        folds=cv.folds,
        block_size=cv.block_size,
        random_state=random_state,
        groups=table.get("polygon"),
    )
    runs = [
        split_metrics(model, X, y, y_sub, tr, te, lc_labels=lc_labels, sl_labels=sl_labels)
        for tr, te in splits
    ]
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
    with ``options.block_size``); metrics come from the held-out part. With ``options.cv`` the model is
    also cross-validated by spatial blocks (:func:`cross_validate`; ``metrics["cv"]``). The stored model
    is then refitted on all samples. The artefact folder at ``url`` holds ``model.skops``, ``metadata.json``,
    ``metrics.json`` and ``confusion_level1.png`` (and ``confusion_level2.png``).

    Returns
    -------
    dict
        The metadata written to ``metadata.json``.

    """
    from .evaluate import location_split, plot_confusion
    from .model import HierarchicalClassifier, save_model
    from .store import Storage

    options = options or ModelConfig()
    features = feature_columns(table)
    X = table[features].to_numpy(np.float32)
    y = table["category"].to_numpy(np.int64)
    y_sub = table["subcategory"].to_numpy(np.int64)
    model = HierarchicalClassifier(make_estimator(options), random_state=options.random_state)

    train_idx, test_idx = location_split(
        table,
        test_size=options.test_size,
        random_state=options.random_state,
        block_size=options.block_size,
        groups=table.get("polygon"),
    )
    metrics = split_metrics(model, X, y, y_sub, train_idx, test_idx, lc_labels=lc_labels, sl_labels=sl_labels)
    metrics["n_train"], metrics["n_test"] = int(len(train_idx)), int(len(test_idx))
    if options.cv is not None:
        metrics["cv"] = cross_validate(
            table,
            model,
            cv=options.cv,
            random_state=options.random_state,
            lc_labels=lc_labels,
            sl_labels=sl_labels,
        )

    model.fit(X, y, y_sub)
    table_hash = hashlib.sha256(
        pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes()
    ).hexdigest()
    metadata = {
        "features": features,
        "lc_labels": dict(lc_labels),
        "sl_labels": dict(sl_labels or {}),
        "estimator": options.estimator,
        "params": {k: repr(v) for k, v in model.estimator_level1_.get_params().items()},
        "metrics": metrics,
        "dataset": dataset_key,
        "training_table_sha256": table_hash,
        "n_samples": int(len(table)),
        "lcstack_version": __version__,
    }
    storage = Storage(url, storage_options=storage_options)
    storage.write_bytes(storage._join(url, "metrics.json"), json.dumps(metrics, indent=2).encode())
    for level in ("level1", "level2"):
        if level in metrics:
            buf = io.BytesIO()
            plot_confusion(metrics[level], buf)
            storage.write_bytes(storage._join(url, f"confusion_{level}.png"), buf.getvalue())
    save_model(model, url, metadata=metadata, storage_options=storage_options)
    oa = metrics["level1"]["overall_accuracy"]
    logger.info(
        "model trained on %d samples; held-out level-1 accuracy %.3f; saved to %s", len(table), oa, url
    )
    return metadata
