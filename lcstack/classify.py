"""Classify a feature cube into level-1 / level-2 land cover maps, block by block.

The core is :func:`predict_block`, a NumPy function over one ``(feature, y, x)`` block. :func:`classify`
wraps it in :func:`dask.array.map_blocks` with an explicit ``meta``, so building the result computes nothing.

The model never travels inside the task graph on the scalable route: when ``model`` is an artefact folder
(local path or fsspec URL written by :func:`lcstack.model.save_model`), the graph carries only a small
:class:`ModelRef` (URL + content token). Each worker process loads the model the first time a block needs
it and keeps it in a module-level cache guarded by a :class:`threading.Lock`, so the threads of a process
share one loaded model and every process loads it exactly once (see :func:`model_cache_info`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr

from lcstack.errors import InputFileNotFoundError, InvalidInputError, ModelMismatchError

__all__ = [
    "ModelRef",
    "predict_block",
    "proba_block",
    "proba_uncertainty",
    "percent",
    "UNCERTAINTY_LAYERS",
    "PROBA_NODATA",
    "feature_seasons",
    "valid_seasons_block",
    "classify",
    "write_maps_zarr",
    "model_cache_info",
    "clear_model_cache",
    "flag_attrs",
]

logger = logging.getLogger(__name__)

NODATA = 0
UNCLASSIFIED = 1
METADATA_FILE = "metadata.json"
_MAX_CACHED_MODELS = 4
#: Nodata of the probability and uncertainty layers (uint8 percent, 0..100).
PROBA_NODATA = 255
#: The uncertainty layers of ``classify(probabilities=True)``, in their band order after the probabilities.
UNCERTAINTY_LAYERS = (
    "level1_confidence",
    "level1_margin",
    "level1_entropy",
    "level2_confidence",
    "level2_margin",
    "level2_entropy",
)


# ----------------------------------------------------------------------------------------------------
# NumPy core
# ----------------------------------------------------------------------------------------------------


def _as_codes(pred: Any, what: str) -> np.ndarray:
    arr = np.asarray(pred)
    if arr.dtype.kind not in "iub":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        elif arr.size == 0:
            return arr.astype(np.uint8)
        else:
            raise ModelMismatchError(
                f"The model predicts {what} labels of dtype {arr.dtype}, not integer class codes. "
                "Train it on the integer codes of lc_labels.json / sl_labels.json."
            )
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
        raise ModelMismatchError(
            f"The model predicts {what} codes in [{int(arr.min())}, {int(arr.max())}], outside 0..255, "
            "so they do not fit a uint8 class map. Use label codes between 1 and 255."
        )
    return arr.astype(np.uint8, copy=False)


Engine = Literal["auto", "sklearn", "numba"]


def _use_numba(engine: Engine) -> bool:
    if engine not in ("auto", "sklearn", "numba"):
        raise InvalidInputError(f"`engine` must be 'auto', 'sklearn' or 'numba', not {engine!r}.")
    if engine == "auto":
        from lcstack.forest import numba_available

        return numba_available()
    return engine == "numba"


def _feature_major_input(model: Any, X: Any, assume_finite: bool) -> tuple[int, Callable[..., Any]]:
    """Check ``(n_features, n_samples)`` features for a hierarchical model: sample count, sample selector."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model)
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] != model.n_features_in_:
        raise InvalidInputError(
            f"X has shape {X.shape}; with feature_major=True the model expects ({model.n_features_in_}, "
            "n_samples) features."
        )
    if not assume_finite and np.isinf(X).any():
        raise InvalidInputError(
            "X contains inf; missing features must be NaN, and pixels without any valid feature are "
            "nodata (lcstack.classify leaves them out)."
        )
    return X.shape[1], lambda rows: X if rows is None else X[:, rows]


def fast_predict_levels(
    model: Any, X: Any, *, n_threads: int | None = 1, feature_major: bool = False, assume_finite: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`lcstack.model.HierarchicalClassifier.predict_levels` through the compiled kernels.

    Level 1 and every level-2 model that is a supported tree ensemble run on the numba kernel; any other
    estimator falls back to its own ``predict``. The result equals ``model.predict_levels(X)``.

    Parameters
    ----------
    model : HierarchicalClassifier
        Fitted.
    X : array-like or DataFrame of shape (n_samples, n_features)
        Features (NaN where missing), validated as ``predict_levels`` does; with
        ``feature_major=True`` an array of shape ``(n_features, n_samples)``.
    n_threads : int, optional
        See :meth:`lcstack.forest.FastForest.predict`.
    feature_major : bool, optional
        See :meth:`lcstack.forest.FastForest.predict`.
    assume_finite : bool, optional
        With ``feature_major=True``, skip the check for inf (a pass over all of ``X``): for callers
        that already left out such pixels, such as :func:`predict_block`.

    Returns
    -------
    level1 : ndarray of shape (n_samples,)
        Category codes.
    level2 : ndarray of int64, shape (n_samples,)
        Subcategory codes; 1 (unclassified) where the predicted category has no level-2 model.

    """
    from lcstack.forest import fast_predict
    from lcstack.model import predict_levels

    def predict(est: Any, features: Any) -> np.ndarray:
        return fast_predict(est, features, n_threads=n_threads, feature_major=feature_major)

    if not feature_major:  # validated by the model, as its own predict_levels
        return model.predict_levels(X, predict=predict)
    return predict_levels(model, *_feature_major_input(model, X, assume_finite), predict)


def fast_predict_proba_levels(
    model: Any, X: Any, *, n_threads: int | None = 1, feature_major: bool = False, assume_finite: bool = False
) -> Any:
    """:meth:`lcstack.model.HierarchicalClassifier.predict_proba_levels` through the compiled kernels.

    Level-1 probabilities over all classes (bit-identical to ``predict_proba``), the level-1 code and the
    margin between the best and second-best probability, and the level-2 code with its probability
    conditional on level 1. Parameters as :func:`fast_predict_levels`.

    Returns
    -------
    lcstack.model.LevelProbabilities
        Equal to ``model.predict_proba_levels(X)``; its codes equal :func:`fast_predict_levels`'s.

    """
    from lcstack.forest import fast_predict_proba
    from lcstack.model import predict_proba_levels

    def predict_proba(est: Any, features: Any) -> np.ndarray:
        return fast_predict_proba(est, features, n_threads=n_threads, feature_major=feature_major)

    if not feature_major:
        return model.predict_proba_levels(X, predict_proba=predict_proba)
    return predict_proba_levels(model, *_feature_major_input(model, X, assume_finite), predict_proba)


def _predict_columns(model: Any, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes of the valid pixels with the numba engine, from ``(n_features, n_pixels)`` columns."""
    from lcstack import forest
    from lcstack.model import HierarchicalClassifier

    # n_threads=1: dask already runs one block per thread. The kernel reads feature-major columns, the
    # layout of a (feature, y, x) block, so the pixels are never transposed.
    if isinstance(model, HierarchicalClassifier):
        level1, level2 = fast_predict_levels(
            model, columns, n_threads=1, feature_major=True, assume_finite=True
        )
        return _as_codes(level1, "level-1"), _as_codes(level2, "level-2")
    if not hasattr(model, "predict_levels"):
        level1 = forest.fast_predict(model, columns, n_threads=1, feature_major=True)
        level1 = _as_codes(level1, "level-1")
        return level1, np.full(level1.shape, UNCLASSIFIED, dtype=np.uint8)
    return _predict_rows(model, np.ascontiguousarray(columns.T))


def _predict_rows(model: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(model, "predict_levels"):
        level1, level2 = model.predict_levels(rows)
        return _as_codes(level1, "level-1"), _as_codes(level2, "level-2")
    level1 = _as_codes(model.predict(rows), "level-1")
    return level1, np.full(level1.shape, UNCLASSIFIED, dtype=np.uint8)


def feature_seasons(names: Sequence[str]) -> np.ndarray:
    """Season index of every feature (``<season>_<band>``), -1 for the others (terrain).

    Parameters
    ----------
    names : sequence of str
        Feature names in cube order (:func:`lcstack.features.feature_names`).

    Returns
    -------
    ndarray of int64, shape (n_features,)
        Features of one season share an index (in order of first appearance).

    """
    index: dict[str, int] = {}
    out = np.full(len(names), -1, dtype=np.int64)
    for i, name in enumerate(names):
        if "_" in str(name):
            out[i] = index.setdefault(str(name).split("_", 1)[0], len(index))
    return out


def valid_seasons_block(X: np.ndarray, seasons: np.ndarray | None = None) -> np.ndarray:
    """Count the seasons with a valid observation per pixel of a ``(feature, y, x)`` block.

    A season is observed at a pixel when one of its features is not NaN. Without ``seasons`` (or without
    any seasonal feature) the whole feature vector counts as one season.

    Returns
    -------
    ndarray of uint8, shape (ny, nx)

    """
    X = np.asarray(X)
    groups = np.zeros(X.shape[0], dtype=np.int64) if seasons is None else np.asarray(seasons)
    if not (groups >= 0).any():
        groups = np.zeros(X.shape[0], dtype=np.int64)
    count = np.zeros(X.shape[1:], dtype=np.uint8)
    for g in np.unique(groups[groups >= 0]):
        count += (~np.isnan(X[groups == g])).any(axis=0)
    return count


def _kept(
    X: np.ndarray, seasons: np.ndarray | None, engine: Engine
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """Return the pixels to classify (seen in a season, none infinite) and, on numba, their columns.

    The numba engine finds and gathers them in one compiled pass (:func:`lcstack.forest.kept_columns`)
    instead of NumPy's three passes and a gather; the mask is :func:`valid_seasons_block` > 0 either way.
    """
    if _use_numba(engine):
        from lcstack.forest import kept_columns

        groups = None if seasons is None else np.asarray(seasons)
        seasonal = None if groups is None or not (groups >= 0).any() else groups >= 0
        columns, index, keep = kept_columns(X, seasonal)
        return keep, (columns, index)
    return (valid_seasons_block(X, seasons) > 0) & ~np.isinf(X).any(axis=0), None


def _check_block(X: np.ndarray, model: Any) -> None:
    if X.ndim != 3:
        raise InvalidInputError(f"predict_block expects a (feature, y, x) block, got shape {X.shape}.")
    n_expected = getattr(model, "n_features_in_", None)
    if n_expected is not None and int(n_expected) != X.shape[0]:
        raise ModelMismatchError(
            f"The block has {X.shape[0]} features but the model was trained on {n_expected}. "
            "Classify the feature cube the model was trained on."
        )


def predict_block(
    X: np.ndarray, model: Any, *, engine: Engine = "auto", seasons: np.ndarray | None = None
) -> np.ndarray:
    """Predict level-1 and level-2 class codes for one ``(feature, y, x)`` block.

    Parameters
    ----------
    X : numpy.ndarray
        Features, shape ``(n_features, ny, nx)``, in the order the model was trained on.
    model : estimator
        Fitted estimator with ``predict_levels(X) -> (level1, level2)``; an estimator with only ``predict``
        gives level 2 = 1 (unclassified) everywhere.
    engine : {"auto", "sklearn", "numba"}
        ``"numba"`` predicts random forests, extra trees and decision trees (level 1 and level 2 of a
        :class:`~lcstack.model.HierarchicalClassifier`) with the compiled kernel of
        :mod:`lcstack.forest` (identical predictions, NaN routed as scikit-learn does, faster than
        scikit-learn: benchmarks/RESULTS.md) and any other estimator with its own ``predict``;
        ``"sklearn"`` always calls the model's
        ``predict_levels``/``predict``; ``"auto"`` (default) is ``"numba"`` when numba can be imported,
        else ``"sklearn"``.
    seasons : ndarray of int, optional
        Season index per feature (:func:`feature_seasons`), -1 for features of no season.

    Returns
    -------
    numpy.ndarray
        uint8, shape ``(2, ny, nx)``: level-1 codes then level-2 codes. A pixel is 0 (nodata) in both levels
        where no season has a valid observation (:func:`valid_seasons_block`) or a feature is infinite;
        every other pixel is predicted from the features it has (NaN for the missing ones).

    """
    X = np.asarray(X)
    _check_block(X, model)
    keep, gathered = _kept(X, seasons, engine)
    return _predict_kept(X, model, engine, keep, gathered)


def _predict_kept(
    X: np.ndarray,
    model: Any,
    engine: Engine,
    keep: np.ndarray,
    gathered: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Codes ``(2, ny, nx)`` of the pixels in ``keep`` (NaN features included), 0 elsewhere.

    ``gathered``: those pixels' feature-major columns and flat indices, when already gathered.
    """
    n_features, ny, nx = X.shape
    out = np.zeros((2, ny * nx), dtype=np.uint8)
    if _use_numba(engine):
        from lcstack.forest import valid_columns

        # One fused pass: the kept pixels as feature-major float32 columns, the kernel's layout.
        columns, valid = gathered if gathered is not None else valid_columns(X, keep)
        n_valid = valid.size
        if n_valid:
            level1, level2 = _predict_columns(model, columns)
    else:
        flat = X.reshape(n_features, ny * nx)
        valid = keep.reshape(-1)
        n_valid = int(valid.sum())
        if n_valid:
            # One gather straight into C-contiguous (n_pixels, n_features) float32 rows.
            level1, level2 = _predict_rows(model, np.ascontiguousarray(flat[:, valid].T, dtype=np.float32))
    if n_valid:
        if level1.shape != (n_valid,) or level2.shape != (n_valid,):
            raise ModelMismatchError(
                f"The model returned predictions of shapes {level1.shape} and {level2.shape} for {n_valid} "
                "pixels; predict_levels must return two 1-D arrays, one code per pixel."
            )
        out[0, valid] = level1
        out[1, valid] = level2
    return out.reshape(2, ny, nx)


def percent(proba: np.ndarray) -> np.ndarray:
    """Whole percents of probabilities ``(n, k)`` that sum to exactly 100 on every row (uint8).

    Largest-remainder rounding: every row is first normalised to sum to 1, each value is rounded down
    to a whole percent, and the percents still missing go to the largest remainders (ties: the first
    column). Each value is then within 1 of ``100 p``. A row of zeros or with a non-finite value is
    :data:`PROBA_NODATA` throughout.
    """
    p = np.asarray(proba, dtype=np.float64)
    total = np.zeros((p.shape[0], 1))
    for c in range(p.shape[1]):  # in column order, as the compiled kernel sums (same float64 total)
        total[:, 0] += p[:, c]
    ok = np.isfinite(total[:, 0]) & (total[:, 0] > 0)
    scaled = np.where(ok[:, None], p / np.where(ok[:, None], total, 1.0), 0.0) * 100.0
    base = np.floor(scaled)
    short = np.rint(100.0 - base.sum(axis=1)).astype(np.int64)
    order = np.argsort(base - scaled, axis=1, kind="stable")  # largest remainder first
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(p.shape[1])[None, :], axis=1)
    out = (base + (rank < short[:, None])).astype(np.uint8)
    out[~ok] = PROBA_NODATA
    return out


def _whole_percent(values: np.ndarray) -> np.ndarray:
    """Nearest whole percent of fractions in [0, 1] (uint8), :data:`PROBA_NODATA` where NaN."""
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, PROBA_NODATA, dtype=np.uint8)
    ok = np.isfinite(v)
    out[ok] = np.rint(np.clip(v[ok], 0.0, 1.0) * 100.0).astype(np.uint8)
    return out


def _estimator_proba(model: Any, data: np.ndarray, feature_major: bool, use_numba: bool) -> Any:
    """:class:`lcstack.model.LevelProbabilities` of ``data`` (pixel rows, or columns if feature-major)."""
    from lcstack import forest
    from lcstack.model import HierarchicalClassifier, LevelProbabilities

    if isinstance(model, HierarchicalClassifier) and feature_major:
        return fast_predict_proba_levels(model, data, n_threads=1, feature_major=True, assume_finite=True)
    rows = np.ascontiguousarray(data.T) if feature_major else data
    if hasattr(model, "predict_proba_levels"):
        return model.predict_proba_levels(rows)
    if not hasattr(model, "predict_proba"):
        raise ModelMismatchError(
            f"{type(model).__name__} has no predict_proba, so classify cannot give class probabilities; "
            "classify without `probabilities`, or use a classifier with predict_proba."
        )
    if use_numba:
        proba = forest.fast_predict_proba(model, data, n_threads=1, feature_major=feature_major)
    else:
        proba = model.predict_proba(rows)
    proba = np.asarray(proba, dtype=np.float64)
    classes = np.asarray(model.classes_)
    best = np.argmax(proba, axis=1)
    top = np.sort(proba, axis=1)
    margin = top[:, -1] - top[:, -2] if proba.shape[1] > 1 else top[:, -1]
    none = np.full(best.shape, np.nan)
    level2 = np.full(best.shape, UNCLASSIFIED, dtype=np.int64)
    return LevelProbabilities(classes, proba, classes.take(best), margin, level2, none, none, none)


_layers_kernel: Any = None


def _get_layers_kernel() -> Any:
    """Return the compiled layer kernel: :func:`percent` and :func:`_whole_percent` in one pass per pixel."""
    global _layers_kernel
    if _layers_kernel is None:
        import numba

        @numba.njit(nogil=True, cache=True)
        def _kernel(proba, order, best, margin, level2, index, out):  # pragma: no cover - compiled
            n, k = proba.shape[0], order.shape[0]
            base = np.empty(k, np.int64)
            rem = np.empty(k)
            log_k = np.log(k) if k > 1 else 1.0
            for i in range(n):
                j = index[i]
                total = 0.0
                for c in range(k):
                    total += proba[i, order[c]]
                if not (np.isfinite(total) and total > 0):
                    continue  # stays PROBA_NODATA
                used = 0
                h = 0.0
                for c in range(k):
                    p = proba[i, order[c]]
                    v = p / total * 100.0
                    f = np.floor(v)
                    base[c] = np.int64(f)
                    rem[c] = v - f
                    used += base[c]
                    if p > 0:
                        h += p * np.log(p)
                for _ in range(100 - used):  # largest remainders first, ties to the first class
                    top, at = -1.0, 0
                    for c in range(k):
                        if rem[c] > top:
                            top, at = rem[c], c
                    base[at] += 1
                    rem[at] = -2.0
                for c in range(k):
                    out[c, j] = base[c]
                out[k, j] = base[best[i]]
                entropy = min(max(-h / log_k, 0.0), 1.0) if k > 1 else 0.0
                for t, v in enumerate((margin[i], entropy, level2[0, i], level2[1, i], level2[2, i])):
                    if np.isfinite(v):
                        out[k + 1 + t, j] = np.uint8(np.rint(min(max(v, 0.0), 1.0) * 100.0))

        _layers_kernel = _kernel
    return _layers_kernel


def _proba_layers(
    levels: Any, classes: np.ndarray, out: np.ndarray, index: np.ndarray, compiled: bool | None = None
) -> np.ndarray:
    """Write the percents and uncertainty of ``levels`` into ``out[:, index]``; return the codes ``(2, n)``.

    ``out`` is ``(k + 6, n_pixels)``, :data:`PROBA_NODATA` where not written; the level-1 percents go in
    the order of ``classes``. Compiled (one pass per pixel) when numba is there, else NumPy
    (:func:`percent`); the same figures.
    """
    have = [int(c) for c in np.asarray(levels.classes)]
    if sorted(have) != sorted(int(c) for c in classes):
        raise ModelMismatchError(
            f"The model's level-1 classes {have} differ from the classes recorded with it "
            f"{[int(c) for c in classes]}; re-save the model (lcstack.model.save_model)."
        )
    order = np.array([have.index(int(c)) for c in classes], dtype=np.int64)
    codes = np.stack([_as_codes(levels.level1, "level-1"), _as_codes(levels.level2, "level-2")])
    lookup = np.zeros(256, dtype=np.int64)
    lookup[np.asarray(classes, dtype=np.int64)] = np.arange(len(classes))
    best = lookup[codes[0]]
    n = codes.shape[1]
    l2 = [getattr(levels, name, None) for name in ("level2_proba", "level2_margin", "level2_entropy")]
    level2 = np.stack([np.full(n, np.nan) if v is None else np.asarray(v, np.float64) for v in l2])
    proba = np.ascontiguousarray(levels.proba, dtype=np.float64)
    margin = np.asarray(levels.margin, dtype=np.float64)
    if compiled is None:
        from lcstack.forest import numba_available

        compiled = numba_available()
    if compiled:
        _get_layers_kernel()(proba, order, best, margin, level2, np.asarray(index, np.int64), out)
        return codes
    from lcstack.model import normalised_entropy

    stack = percent(proba[:, order])
    k = len(classes)
    out[:k, index] = stack.T
    out[k, index] = stack[np.arange(n), best]
    out[k + 1, index] = _whole_percent(margin)
    out[k + 2, index] = _whole_percent(normalised_entropy(proba))
    out[k + 3 :, index] = _whole_percent(level2)
    return codes


def proba_block(
    X: np.ndarray,
    model: Any,
    classes: Sequence[int],
    *,
    engine: Engine = "auto",
    seasons: np.ndarray | None = None,
) -> np.ndarray:
    """Codes, level-1 probabilities and uncertainty of one ``(feature, y, x)`` block, in one prediction.

    Parameters
    ----------
    X, model, engine, seasons
        As :func:`predict_block`. The model needs ``predict_proba_levels`` (a
        :class:`~lcstack.model.HierarchicalClassifier`) or ``predict_proba``; with the numba engine the
        probabilities come from :func:`fast_predict_proba_levels` (equal to scikit-learn's
        ``predict_proba``), else from the model's own ``predict_proba``.
    classes : sequence of int
        The level-1 class codes, in the order of the probability layers.

    Returns
    -------
    numpy.ndarray
        uint8, shape ``(2 + k + 6, ny, nx)`` for ``k`` classes: level-1 and level-2 codes (0 = nodata),
        the level-1 probability of every class in whole percent (they sum to exactly 100:
        :func:`percent`), then :data:`UNCERTAINTY_LAYERS` in whole percent: the probability of the chosen
        class (the layer of ``level1`` among the probabilities), the margin between the best and the
        second-best class, the normalised entropy (0 = certain, 100 = every class equally likely), and
        the same for level 2 within the chosen category (subcategory probabilities conditional on
        ``level1``). :data:`PROBA_NODATA` (255) where the codes are nodata, and in the level-2 layers of a
        category without a level-2 model. The codes equal :func:`predict_block`'s.

    """
    X = np.asarray(X)
    _check_block(X, model)
    keep, gathered = _kept(X, seasons, engine)
    return _proba_kept(X, model, engine, keep, np.asarray(classes, dtype=np.int64), gathered)


def _proba_kept(
    X: np.ndarray,
    model: Any,
    engine: Engine,
    keep: np.ndarray,
    classes: np.ndarray,
    gathered: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """:func:`proba_block` of the pixels in ``keep``; nodata elsewhere.

    ``gathered``: those pixels' feature-major columns and flat indices, when already gathered.
    """
    n_features, ny, nx = X.shape
    k = len(classes)
    out = np.zeros((2, ny * nx), dtype=np.uint8)
    layers = np.full((k + len(UNCERTAINTY_LAYERS), ny * nx), PROBA_NODATA, dtype=np.uint8)
    numba = _use_numba(engine)
    if numba:
        from lcstack.forest import valid_columns

        data, valid = gathered if gathered is not None else valid_columns(X, keep)
        n_valid = valid.size
    else:
        valid = keep.reshape(-1)
        n_valid = int(valid.sum())
        data = np.ascontiguousarray(X.reshape(n_features, ny * nx)[:, valid].T, dtype=np.float32)
    if n_valid:
        levels = _estimator_proba(model, data, numba, numba)
        if np.shape(levels.level1) != (n_valid,) or np.shape(levels.proba) != (n_valid, k):
            raise ModelMismatchError(
                f"The model returned probabilities of shape {np.shape(levels.proba)} for {n_valid} pixels "
                f"and {k} classes; predict_proba must give one row per pixel and one column per class."
            )
        index = valid if numba else np.flatnonzero(valid)
        out[:, index] = _proba_layers(levels, classes, layers, index)
    return np.concatenate([out, layers]).reshape(-1, ny, nx)


# ----------------------------------------------------------------------------------------------------
# Per-process model cache
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    """A model artefact folder as it travels in a task graph: a URL and a content token, never the model.

    ``token`` changes when the artefact changes (hash of ``metadata.json`` and of the folder listing), so a
    retrained model in the same folder is reloaded and gets new dask keys.
    """

    url: str
    token: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    #: types beyond lcstack.model.MODEL_TYPES to trust when loading (``model.trusted_types``)
    trusted: tuple[str, ...] = ()

    def __dask_tokenize__(self) -> tuple[str, str, str, tuple[str, ...]]:
        return ("lcstack.ModelRef", self.url, self.token, self.trusted)


_CACHE: OrderedDict[tuple[str, str], tuple[Any, dict[str, Any]]] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_LOADS: dict[tuple[str, str], int] = {}


def model_cache_info() -> dict[str, Any]:
    """Return what this process's model cache holds and how often it loaded a model.

    Returns
    -------
    dict
        ``pid``, ``loads`` (total number of model loads in this process), ``loads_by_model``
        (``"url@token" -> count``) and ``cached`` (list of ``"url@token"`` keys currently held).
        Call it on every worker with ``client.run(model_cache_info)``.

    """
    with _CACHE_LOCK:
        return {
            "pid": os.getpid(),
            "loads": sum(_LOADS.values()),
            "loads_by_model": {f"{u}@{t}": n for (u, t), n in _LOADS.items()},
            "cached": [f"{u}@{t}" for u, t in _CACHE],
        }


def clear_model_cache() -> None:
    """Drop every cached model and reset the load counters of this process."""
    with _CACHE_LOCK:
        _CACHE.clear()
        _LOADS.clear()


def _is_remote_url(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def _options_for(url: str, storage_options: Mapping[str, Any] | None, storage: Any = None) -> dict[str, Any]:
    """Return the fsspec options for ``url``: none for a local path (S3 options must not reach it)."""
    if not _is_remote_url(url):
        return {}
    if storage_options is None and storage is not None:
        storage_options = getattr(storage, "storage_options", None)
    return dict(storage_options or {})


def _read_model_metadata(url: str, storage_options: Mapping[str, Any] | None) -> tuple[dict[str, Any], str]:
    """Read ``metadata.json`` of an artefact folder and compute the folder's content token."""
    from lcstack.store import Storage

    store = Storage.for_url(url, _options_for(url, storage_options))
    root = url.rstrip("/")
    meta_path = store.join(root, METADATA_FILE)
    try:
        raw = store.read_bytes(meta_path)
    except FileNotFoundError as exc:
        raise InputFileNotFoundError(
            f"Model folder {url!r} has no {METADATA_FILE}: it is not a model artefact, or its save was "
            "interrupted. Pass the folder written by lcstack.model.save_model (argument `model`)."
        ) from exc
    h = hashlib.sha256(raw)
    try:
        listing = store.listing(root)
    except (FileNotFoundError, NotImplementedError):  # filesystems that cannot list a folder
        # The token then rests on metadata.json alone, which save_model rewrites with every save.
        logger.debug("cannot list %s: the model token covers metadata.json only", url)
        listing = []
    for entry in sorted(listing, key=lambda e: str(e.get("name"))):
        stamp = entry.get("mtime") or entry.get("LastModified") or entry.get("ETag") or entry.get("created")
        h.update(f"{posixpath.basename(str(entry.get('name')))}|{entry.get('size')}|{stamp}".encode())
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{meta_path} is not valid JSON ({exc}). Re-save the model.") from exc
    return metadata, h.hexdigest()[:20]


def _load_artefact(ref: ModelRef) -> tuple[Any, dict[str, Any]]:
    from lcstack.model import load_model

    return load_model(ref.url, storage_options=dict(ref.storage_options) or None, trusted=ref.trusted)


def _single_threaded(model: Any) -> None:
    """Predict with one thread per dask task: dask already runs one task per worker thread."""
    level2 = getattr(model, "estimators_level2_", {}).values()
    estimators = [model, getattr(model, "estimator_level1_", None), *level2]
    for est in estimators:
        if est is not None and "n_jobs" in getattr(est, "get_params", dict)():
            est.set_params(n_jobs=1)


def get_model(ref: ModelRef) -> tuple[Any, dict[str, Any]]:
    """Return ``(model, metadata)`` for ``ref``, loading it at most once per process.

    Threads of one process block on the lock while the first one loads, then share the same object;
    scikit-learn estimators are safe to ``predict`` from several threads.
    """
    key = (ref.url, ref.token)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
        logger.info("Loading model %s (token %s) in process %d", ref.url, ref.token, os.getpid())
        loaded = _load_artefact(ref)
        _single_threaded(loaded[0])
        _CACHE[key] = loaded
        _LOADS[key] = _LOADS.get(key, 0) + 1
        while len(_CACHE) > _MAX_CACHED_MODELS:
            _CACHE.popitem(last=False)
        return loaded


def _predict_chunk(
    block: np.ndarray,
    model: Any,
    engine: Engine = "auto",
    seasons: np.ndarray | None = None,
    classes: np.ndarray | None = None,
) -> np.ndarray:
    """Level 1, level 2 and the number of valid seasons, ``(3, ny, nx)`` uint8.

    With ``classes``, the level-1 probabilities and the uncertainty layers follow
    (:func:`proba_block`, ``(3 + k + 6, ny, nx)``), from the same prediction.
    """
    if isinstance(model, ModelRef):
        model = get_model(model)[0]
    block = np.asarray(block)
    _check_block(block, model)
    count = valid_seasons_block(block, seasons)
    keep = (count > 0) & ~np.isinf(block).any(axis=0)
    if classes is None:
        codes = _predict_kept(block, model, engine, keep)
        return np.concatenate([codes, count[None]], axis=0)
    layers = _proba_kept(block, model, engine, keep, classes)
    return np.concatenate([layers[:2], count[None], layers[2:]], axis=0)


# ----------------------------------------------------------------------------------------------------
# xarray / dask layer
# ----------------------------------------------------------------------------------------------------


def _flag_name(name: str) -> str:
    return "_".join(str(name).split())


def flag_attrs(labels: Mapping[str, int], *, long_name: str, extra: Mapping[int, str] | None = None) -> dict:
    """CF flag attributes for a uint8 class map.

    Parameters
    ----------
    labels : mapping
        Class name -> code.
    long_name : str
        Value of the ``long_name`` attribute.
    extra : mapping, optional
        Reserved codes -> names (e.g. ``{0: "nodata", 1: "unclassified"}``); ``{0: "nodata"}`` by default.

    Returns
    -------
    dict
        ``long_name``, ``flag_values`` (uint8 array), ``flag_meanings`` (space separated, spaces in names
        replaced by underscores), ``_FillValue`` and ``nodata`` (0).

    """
    codes: dict[int, str] = dict(extra if extra is not None else {NODATA: "nodata"})
    for name, code in labels.items():
        code = int(code)
        if not 0 <= code <= 255:
            raise InvalidInputError(f"Label {name!r} has code {code}, outside 0..255; use codes 1..255.")
        if code in codes:
            raise InvalidInputError(
                f"Label {name!r} uses code {code}, which is already taken by {codes[code]!r}. "
                "Give every class its own code (0 is nodata, 1 is unclassified at level 2)."
            )
        codes[code] = str(name)
    values = sorted(codes)
    return {
        "long_name": long_name,
        "flag_values": np.array(values, dtype=np.uint8),
        "flag_meanings": " ".join(_flag_name(codes[v]) for v in values),
        "_FillValue": np.uint8(NODATA),
        "nodata": NODATA,
    }


def _check_features(
    features: xr.DataArray, expected: Sequence[str] | None, n_expected: int | None, source: str
) -> xr.DataArray:
    """Return ``features`` in the model's feature order, or raise :class:`ModelMismatchError`."""
    have = [str(f) for f in features["feature"].values] if "feature" in features.coords else None
    if expected is None:
        if n_expected is not None and n_expected != features.sizes["feature"]:
            raise ModelMismatchError(
                f"The feature cube has {features.sizes['feature']} features but the model ({source}) was "
                f"trained on {n_expected}. Classify the cube built from the composites it was trained on."
            )
        return features
    expected = [str(f) for f in expected]
    if have is None:
        raise InvalidInputError(
            "The feature cube has no `feature` coordinate, so its bands cannot be matched to the model's "
            "features. Build it with lcstack.features.stack_features."
        )
    if have == expected:
        return features
    dupes = sorted({f for f in have if have.count(f) > 1})
    missing = [f for f in expected if f not in have]
    extra = [f for f in have if f not in expected]
    if missing or extra or dupes:
        parts = []
        if missing:
            parts.append(f"missing from the cube: {', '.join(missing)}")
        if extra:
            parts.append(f"not used by the model: {', '.join(extra)}")
        if dupes:
            parts.append(f"repeated in the cube: {', '.join(dupes)}")
        raise ModelMismatchError(
            f"The feature cube does not match the features of the model ({source}): {'; '.join(parts)}. "
            f"The model expects, in order: {', '.join(expected)}. Retrain the model on this cube's features, "
            "or classify a cube built from the same seasons, bands and terrain the model was trained on."
        )
    logger.info("Reordering feature cube to the model's feature order")
    return features.sel(feature=expected)


def _selected_features(features: xr.DataArray, expected: Sequence[str]) -> xr.DataArray:
    """Pick the features of a model with feature selection from a cube that has them all (else as is)."""
    have = {str(f) for f in features["feature"].values} if "feature" in features.coords else set()
    wanted = [str(f) for f in expected]
    return features.sel(feature=wanted) if set(wanted) <= have else features


def _normalise_cube(features: xr.DataArray) -> xr.DataArray:
    if not isinstance(features, xr.DataArray):
        raise InvalidInputError(
            f"`features` must be an xarray.DataArray with dims (feature, y, x), "
            f"got {type(features).__name__}."
        )
    if set(features.dims) != {"feature", "y", "x"}:
        raise InvalidInputError(
            f"`features` must have dims (feature, y, x), got {features.dims}. "
            "Build it with lcstack.features.stack_features."
        )
    return features.transpose("feature", "y", "x")


def _resolve_model(
    features: xr.DataArray,
    model: Any,
    feature_names: Sequence[str] | None,
    storage_options: Mapping[str, Any] | None,
    trusted_types: Sequence[str],
) -> tuple[xr.DataArray, Any, dict[str, Any], Any]:
    """Return the cube in the model's feature order, the model as it goes in the graph, metadata, classes."""
    metadata: dict[str, Any] = {}
    if isinstance(model, str | os.PathLike):
        url = os.fspath(model)
        metadata, token = _read_model_metadata(url, storage_options)
        meta_features = metadata.get("feature_names", metadata.get("features"))
        if (
            feature_names is not None
            and meta_features is not None
            and list(feature_names) != list(meta_features)
        ):
            raise InvalidInputError(
                f"`feature_names` disagrees with the features recorded in {url}/{METADATA_FILE}; "
                "leave `feature_names` out when classifying with a model folder."
            )
        expected = feature_names if feature_names is not None else meta_features
        model_arg: Any = ModelRef(url, token, _options_for(url, storage_options), tuple(trusted_types))
        n_expected = len(expected) if expected is not None else None
        source = url
        if metadata.get("selected_from") and expected is not None:
            features = _selected_features(features, expected)
        classes = metadata.get("classes")
    else:
        if not (hasattr(model, "predict_levels") or hasattr(model, "predict")):
            raise InvalidInputError(
                f"`model` must be a model folder path/URL or a fitted estimator, got {type(model).__name__}."
            )
        expected = feature_names
        if expected is None and getattr(model, "feature_names_in_", None) is not None:
            expected = [str(f) for f in model.feature_names_in_]
        n_expected = getattr(model, "n_features_in_", None)
        # One graph key holding the estimator; every block depends on it instead of embedding a copy.
        model_arg = dask.delayed(model, pure=True)
        source = type(model).__name__
        classes = getattr(model, "classes_", None)
    features = _check_features(features, expected, n_expected, source)
    return features, model_arg, metadata, classes


def _proba_arrays(
    out: da.Array, coords: Mapping[str, Any], classes: np.ndarray, lc_labels: Mapping[str, int]
) -> dict[str, xr.DataArray]:
    """Return the probability and uncertainty variables of :func:`classify` from its chunk output."""
    names = {int(v): str(k) for k, v in lc_labels.items()}
    k = len(classes)
    common = {"units": "percent", "nodata": PROBA_NODATA, "_FillValue": np.uint8(PROBA_NODATA)}
    if "spatial_ref" in coords:
        common["grid_mapping"] = "spatial_ref"
    proba_coords = {
        **coords,
        "class": ("class", np.asarray(classes, dtype=np.int64)),
        "class_name": ("class", [names.get(int(c), f"class_{int(c)}") for c in classes]),
    }
    proba = xr.DataArray(out[3 : 3 + k], dims=("class", "y", "x"), coords=proba_coords, name="level1_proba")
    proba.attrs.update(long_name="level-1 class probability", **common)
    result = {"level1_proba": proba}
    meaning = {
        "confidence": "probability of the chosen {what}",
        "margin": "best minus second-best {what} probability",
        "entropy": "normalised entropy of the {what} probabilities (0 certain, 100 uniform)",
    }
    for i, name in enumerate(UNCERTAINTY_LAYERS):
        level, kind = name.split("_")
        what = "category (level 1)" if level == "level1" else "subcategory (level 2) within its category"
        layer = xr.DataArray(out[3 + k + i], dims=("y", "x"), coords=coords, name=name)
        layer.attrs.update(long_name=meaning[kind].format(what=what), **common)
        result[name] = layer
    return result


def classify(
    features: xr.DataArray,
    model: Any,
    *,
    feature_names: Sequence[str] | None = None,
    lc_labels: Mapping[str, int] | None = None,
    sl_labels: Mapping[str, int] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    engine: Engine = "auto",
    trusted_types: Sequence[str] = (),
    probabilities: bool = False,
) -> xr.Dataset:
    """Classify a feature cube into lazy level-1 and level-2 class maps.

    Parameters
    ----------
    features : xarray.DataArray
        Feature cube, dims ``(feature, y, x)`` with a ``feature`` coordinate (see
        :func:`lcstack.features.stack_features`). Dask-backed cubes keep their y/x chunks; a NumPy-backed cube
        becomes a single chunk. The feature axis is rechunked into one chunk.
    model : str, os.PathLike or estimator
        The model artefact folder (local path or fsspec URL, written by :func:`lcstack.model.save_model`) --
        the scalable route: the task graph carries only the URL and a content token, and each worker process
        loads the model once. Or a fitted in-memory estimator (``predict_levels`` or ``predict``), which is
        put in the graph once as a :func:`dask.delayed` object (one key, shipped once to each worker that
        needs it).
    feature_names : sequence of str, optional
        The model's features in training order. Read from ``metadata.json`` for an artefact folder; for an
        estimator, defaults to its ``feature_names_in_`` if it has one, else only the number of features is
        checked. If the cube has the same features in another order, it is reordered to match.
    lc_labels, sl_labels : mapping, optional
        Class name -> code for levels 1 and 2, used for the CF ``flag_values``/``flag_meanings`` attributes.
        Read from the artefact's metadata when not given.
    storage_options : mapping, optional
        fsspec options for a model URL.
    engine : {"auto", "sklearn", "numba"}
        Inference engine, see :func:`predict_block`. Every engine gives the same maps.
    trusted_types : sequence of str, optional
        Types beyond :data:`lcstack.model.MODEL_TYPES` to trust when loading a model folder (a classifier
        of your own, ``model: {trusted_types: [...]}``).
    probabilities : bool, default False
        Also give the level-1 class probabilities and the uncertainty layers (:func:`proba_block`), from
        the same prediction tasks as the maps: each pixel is predicted once, by ``predict_proba``
        (the numba engine's equals scikit-learn's), and its codes are the argmax, which equal the
        class-only prediction.

    Returns
    -------
    xarray.Dataset
        ``level1``, ``level2`` (uint8, dims ``(y, x)``, same y/x chunks as ``features``, 0 = nodata,
        level 2 1 = unclassified) and ``valid_seasons`` (uint8, seasons with a valid observation), with
        the cube's ``x``, ``y`` and ``spatial_ref`` coordinates. With ``probabilities``, also
        ``level1_proba`` (uint8 whole percent summing to 100 over dim ``class``, whose coordinate holds the
        class codes and ``class_name`` their names) and the uint8 percent layers
        :data:`UNCERTAINTY_LAYERS` (``level1_confidence``, ``level1_margin``, ``level1_entropy`` and
        their level-2 equivalents conditional on the chosen category), all 255 (:data:`PROBA_NODATA`)
        where the maps are nodata. Nothing is computed. All variables come from the same prediction
        tasks, so compute or write them together.

    Raises
    ------
    ModelMismatchError
        If the cube lacks features the model needs, or has features the model was not trained on; with
        ``probabilities``, if the model has no ``predict_proba``.

    """
    features = _normalise_cube(features)
    if engine not in ("auto", "sklearn", "numba"):
        raise InvalidInputError(f"`engine` must be 'auto', 'sklearn' or 'numba', not {engine!r}.")
    features, model_arg, metadata, classes = _resolve_model(
        features, model, feature_names, storage_options, trusted_types
    )
    lc_labels = lc_labels if lc_labels is not None else metadata.get("lc_labels")
    sl_labels = sl_labels if sl_labels is not None else metadata.get("sl_labels")
    if lc_labels is None:
        lc_labels = {f"class_{int(c)}": int(c) for c in classes} if classes is not None else {}
    if probabilities and classes is None:
        raise InvalidInputError(
            "classify(probabilities=True) needs the model's level-1 classes: the estimator has no "
            "`classes_` (or the model folder's metadata.json no `classes`)."
        )
    proba_classes = np.asarray(classes, dtype=np.int64) if probabilities else None

    if features.chunks is None:
        features = features.chunk({"feature": -1, "y": -1, "x": -1})
    else:
        features = features.chunk({"feature": -1})
    data = features.data
    names = [str(f) for f in features["feature"].values] if "feature" in features.coords else None
    seasons = feature_seasons(names) if names is not None else None
    n_out = 3 if proba_classes is None else 3 + len(proba_classes) + len(UNCERTAINTY_LAYERS)
    token = dask.base.tokenize(data, model_arg, *(() if proba_classes is None else ("proba", proba_classes)))
    out = da.map_blocks(
        _predict_chunk,
        data,
        model_arg,
        engine,
        seasons,
        *(() if proba_classes is None else (proba_classes,)),
        chunks=((n_out,), *data.chunks[1:]),
        dtype=np.uint8,
        meta=np.empty((0, 0, 0), dtype=np.uint8),
        name=f"lcstack-classify-{token}",
    )

    coords = {k: v for k, v in features.coords.items() if "feature" not in v.dims}
    level1 = xr.DataArray(out[0], dims=("y", "x"), coords=coords, name="level1")
    level2 = xr.DataArray(out[1], dims=("y", "x"), coords=coords, name="level2")
    valid_seasons = xr.DataArray(out[2], dims=("y", "x"), coords=coords, name="valid_seasons")
    valid_seasons.attrs.update(long_name="number of seasons with a valid observation", units="1")
    level1.attrs.update(flag_attrs(lc_labels, long_name="land cover category (level 1)"))
    level2.attrs.update(
        flag_attrs(
            sl_labels or {},
            long_name="land cover subcategory (level 2)",
            extra={NODATA: "nodata", UNCLASSIFIED: "unclassified"},
        )
    )
    if "spatial_ref" in coords:
        level1.attrs["grid_mapping"] = level2.attrs["grid_mapping"] = "spatial_ref"
        valid_seasons.attrs["grid_mapping"] = "spatial_ref"
    layers = {"level1": level1, "level2": level2, "valid_seasons": valid_seasons}
    if proba_classes is not None:
        layers.update(_proba_arrays(out, coords, proba_classes, lc_labels))
    return xr.Dataset(layers)


def _uncertainty_block(block: np.ndarray, *, nodata: int | None) -> np.ndarray:
    from lcstack.model import normalised_entropy

    p = block.astype(np.float64)
    bad = ~np.isfinite(p).all(axis=0)
    if nodata is not None and np.issubdtype(block.dtype, np.integer):
        bad |= (block == nodata).any(axis=0)
    p[:, bad] = 0.0
    total = p.sum(axis=0)
    bad |= total <= 0
    p /= np.where(bad, 1.0, total)
    rows = np.moveaxis(p, 0, -1)
    ordered = np.sort(rows, axis=-1)
    top = ordered[..., -1]
    margin = top - ordered[..., -2] if rows.shape[-1] > 1 else top
    layers = np.stack([top, margin, normalised_entropy(rows)])
    layers[:, bad] = np.nan
    return _whole_percent(layers)


def proba_uncertainty(proba: xr.DataArray) -> xr.Dataset:
    """Level-1 uncertainty layers from class probabilities ``(class, y, x)``, lazily, chunk by chunk.

    ``level1_confidence`` (the best probability), ``level1_margin`` (best minus second best) and
    ``level1_entropy`` (normalised entropy), uint8 whole percent, :data:`PROBA_NODATA` (255) at nodata.
    ``proba`` is fractions (NaN = nodata) or whole percent, such as ``level1_proba`` of
    :func:`classify` (its ``nodata`` attribute, 255, marks nodata); each pixel is normalised to sum to 1.
    From a stored ``level1_proba`` the layers can differ by a percent or so from those :func:`classify`
    gives, which come from the unrounded probabilities (the confidence there is the stored percent of
    ``level1``, equal to the best one unless two round to the same).
    """
    if not isinstance(proba, xr.DataArray) or set(proba.dims) != {"class", "y", "x"}:
        raise InvalidInputError(
            f"proba_uncertainty: `proba` must be a DataArray with dims (class, y, x), got "
            f"{getattr(proba, 'dims', type(proba).__name__)}."
        )
    proba = proba.transpose("class", "y", "x")
    data = proba.data if proba.chunks is not None else da.from_array(proba.values, chunks=-1)
    data = data.rechunk({0: -1})
    nodata = proba.attrs.get("nodata")
    out = data.map_blocks(
        _uncertainty_block,
        nodata=None if nodata is None else int(nodata),
        chunks=((3,), *data.chunks[1:]),
        dtype=np.uint8,
        meta=np.empty((0, 0, 0), dtype=np.uint8),
    )
    coords = {k: v for k, v in proba.coords.items() if "class" not in v.dims}
    common = {"units": "percent", "nodata": PROBA_NODATA, "_FillValue": np.uint8(PROBA_NODATA)}
    names = {
        "level1_confidence": "probability of the most probable category (level 1)",
        "level1_margin": "best minus second-best category (level 1) probability",
        "level1_entropy": (
            "normalised entropy of the category (level 1) probabilities (0 certain, 100 uniform)"
        ),
    }
    layers = {}
    for i, (name, long_name) in enumerate(names.items()):
        layers[name] = xr.DataArray(out[i], dims=("y", "x"), coords=coords, name=name)
        layers[name].attrs.update(long_name=long_name, **common)
    return xr.Dataset(layers)


def write_maps_zarr(
    maps: xr.Dataset,
    url: str | os.PathLike,
    *,
    storage_options: Mapping[str, Any] | None = None,
    zarr_format: int | None = None,
    storage: Any = None,
    progress: bool = False,
) -> None:
    """Write class maps to a Zarr store chunk by chunk, with consolidated metadata.

    Parameters
    ----------
    maps : xarray.Dataset
        Output of :func:`classify` (lazy or in memory). Dask chunks become Zarr chunks, and each task writes
        its own chunk, so memory depends on the chunk size, not on the area.
    url : str or os.PathLike
        Local path or fsspec URL of the store (overwritten).
    storage_options : mapping, optional
        fsspec options for ``url``.
    zarr_format : int, optional
        2 or 3; when not given, 2 with a ``storage`` (as every store of a run), else zarr's default.
    storage : lcstack.store.Storage, optional
        Where ``storage_options`` come from when not given (used for remote URLs only).
    progress : bool, default False
        Show a progress bar while the chunks are written.

    Notes
    -----
    The CF ``_FillValue`` attribute is not written: xarray would decode it into float maps with NaN. The
    stored variables keep ``nodata = 0`` and the ``flag_values``/``flag_meanings`` that name code 0
    "nodata", so ``xr.open_zarr(url)`` gives the uint8 codes back unchanged.

    """
    from lcstack.store import Storage

    maps = maps.copy()
    for var in maps.variables.values():
        var.attrs.pop("_FillValue", None)
        # Stale chunk encodings (from an opened store) would clash with the dask chunks.
        var.encoding = {"_FillValue": None} if var.dtype == np.uint8 else {}
    target = os.fspath(url)
    if storage is None:
        storage = Storage.for_url(target, _options_for(target, storage_options))
    elif zarr_format is None:
        zarr_format = 2  # a run's storage holds Zarr v2 stores, as its composites
    # atomic locally (temporary name, then rename), stale chunks removed on object stores
    storage.write_zarr(maps, target, progress=progress, desc="writing maps", zarr_format=zarr_format)
