"""Predicting with a fitted scikit-learn estimator through its compiled forest (cached per estimator)."""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np

from lcstack.errors import InvalidInputError
from lcstack.forest.checks import _is_supported
from lcstack.forest.engine import FastForest
from lcstack.forest.kernels import _kernels

# ----------------------------------------------------------------------------------------------------
# Per-estimator cache and model-level entry points
# ----------------------------------------------------------------------------------------------------

# estimator -> (fitted-state marker, compiled forest or None for "not compilable, use sklearn")
_COMPILED: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], FastForest | None]] = (
    weakref.WeakKeyDictionary()
)

_COMPILED_LOCK = threading.Lock()


def _fitted_marker(est: Any) -> tuple[Any, ...]:
    # Refitting replaces estimators_ / tree_; warm_start grows estimators_ in place, hence the length.
    trees = getattr(est, "estimators_", None)
    if isinstance(trees, list):
        return (trees, len(trees))
    return (getattr(est, "tree_", None),)


def _same_marker(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return len(a) == len(b) and all(
        x is y or (isinstance(x, int) and x == y) for x, y in zip(a, b, strict=True)
    )


def valid_columns(X: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gather the pixels of a ``(feature, y, x)`` block whose features are all finite (or ``mask``).

    Parameters
    ----------
    X : ndarray of shape (n_features, ny, nx)
        Any real dtype and memory layout; a window of a larger array is read in place.
    mask : ndarray of bool, shape (ny, nx), optional
        The pixels to gather instead, NaN features included (the kernel routes NaN as scikit-learn).

    Returns
    -------
    columns : ndarray of float32, shape (n_features, n_valid)
        The valid pixels, feature-major: the layout :meth:`FastForest.predict` takes with
        ``feature_major=True``. When every pixel of a C-contiguous float32 block is valid this is the
        block itself, reshaped (no copy): do not write to it.
    index : ndarray of int64, shape (n_valid,)
        Their flat indices into ``ny * nx``, in raster order.

    """
    X = np.asarray(X)
    if X.ndim != 3:
        raise InvalidInputError(f"valid_columns expects a (feature, y, x) block, got shape {X.shape}.")
    n_features, ny, nx = X.shape
    if X.size == 0:
        return np.empty((n_features, 0), dtype=np.float32), np.empty(0, dtype=np.int64)
    X, buf, sf, sy = _flat_view(X)
    kernels = _kernels()
    if mask is None:
        valid = kernels["valid_mask"](buf, n_features, ny, nx, sf, sy)
    else:
        valid = np.ascontiguousarray(mask, dtype=np.bool_).reshape(ny, nx)
    if X.dtype == np.float32 and X.flags.c_contiguous and valid.all():
        return X.reshape(n_features, ny * nx), np.arange(ny * nx, dtype=np.int64)
    return kernels["gather_runs"](buf, n_features, ny, nx, sf, sy, valid)


def _flat_view(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``(X, buf, sf, sy)``: ``X`` as float32/64 with unit stride along x, and a 1-D view of its memory.

    ``buf[f * sf + y * sy + x]`` is ``X[f, y, x]``: the kernels index it with unit stride along x, whatever
    the window's row and plane strides, so their loops vectorise for a window of a larger array too.
    """
    n_features, ny, nx = X.shape
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float32)  # what scikit-learn's predict does to any other dtype
    item = X.itemsize
    sf, sy, sx = X.strides
    if sx != item or sf % item or sy % item or sf < 0 or sy < 0:
        X = np.ascontiguousarray(X)
        sf, sy, sx = X.strides
    span = (n_features - 1) * (sf // item) + (ny - 1) * (sy // item) + nx
    buf = np.lib.stride_tricks.as_strided(X, shape=(span,), strides=(item,), writeable=False)
    return X, buf, sf // item, sy // item


def kept_columns(
    X: np.ndarray, seasonal: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gather the :func:`kept_pixels` of a block as :func:`valid_columns` gathers pixels.

    Returns ``(columns, index, keep)``. A C-contiguous float32 block is read once for the mask and
    not copied when every pixel is kept; any other layout (a window of a larger array) is copied to
    columns while the mask is computed, in one pass, and compacted only when some pixel is dropped.
    """
    X = np.asarray(X)

    if X.ndim == 3 and X.size and not (X.dtype == np.float32 and X.flags.c_contiguous):
        n_features, ny, nx = X.shape
        counts = _season_flags(seasonal, n_features)
        X, buf, sf, sy = _flat_view(X)
        columns, flat_keep = _kernels()["copy_kept"](buf, n_features, ny, nx, sf, sy, counts)
        keep = flat_keep.reshape(ny, nx)
        if flat_keep.all():
            return columns, np.arange(ny * nx, dtype=np.int64), keep
        index = np.flatnonzero(flat_keep)
        return np.ascontiguousarray(columns[:, index]), index, keep
    keep = kept_pixels(X, seasonal)
    return (*valid_columns(X, keep), keep)


def _season_flags(seasonal: np.ndarray | None, n_features: int) -> np.ndarray:
    counts = np.ones(n_features, np.uint8) if seasonal is None else np.asarray(seasonal, dtype=np.uint8)
    if counts.shape != (n_features,):
        raise InvalidInputError(f"kept_pixels: {counts.size} season flags for {n_features} features.")
    return counts


def kept_pixels(X: np.ndarray, seasonal: np.ndarray | None = None) -> np.ndarray:
    """Pixels of a ``(feature, y, x)`` block to classify: observed in some season, no feature infinite.

    One compiled pass over the block, the same as ``(~np.isnan(X[seasonal])).any(axis=0) &
    ~np.isinf(X).any(axis=0)`` (NaN features of a kept pixel are routed as scikit-learn routes them).

    Parameters
    ----------
    X : ndarray of shape (n_features, ny, nx)
        Any real dtype and memory layout.
    seasonal : ndarray of bool, shape (n_features,), optional
        The features that count as an observation (all when omitted).

    Returns
    -------
    ndarray of bool, shape (ny, nx)

    """
    X = np.asarray(X)
    if X.ndim != 3:
        raise InvalidInputError(f"kept_pixels expects a (feature, y, x) block, got shape {X.shape}.")
    n_features, ny, nx = X.shape
    counts = _season_flags(seasonal, n_features)
    if X.size == 0:
        return np.zeros((ny, nx), dtype=np.bool_)
    X, buf, sf, sy = _flat_view(X)
    return _kernels()["kept_mask"](buf, n_features, ny, nx, sf, sy, counts)


def compile_estimator(est: Any) -> FastForest | None:
    """Return the cached :class:`FastForest` of ``est``, compiling it on first use; ``None`` if unsupported.

    Parameters
    ----------
    est : estimator
        Any fitted estimator.

    Returns
    -------
    FastForest or None
        ``None`` for estimators the kernel does not handle (predict those with their own ``predict``).

    """
    if not _is_supported(est):
        return None
    marker = _fitted_marker(est)
    try:
        hit = _COMPILED.get(est)
    except TypeError:  # pragma: no cover - unhashable or not weak-referenceable estimator
        return FastForest.from_estimator(est)
    if hit is not None and _same_marker(hit[0], marker):
        return hit[1]
    with _COMPILED_LOCK:
        hit = _COMPILED.get(est)
        if hit is not None and _same_marker(hit[0], marker):
            return hit[1]
        compiled = FastForest.from_estimator(est)
        _COMPILED[est] = (marker, compiled)
        return compiled


def fast_predict(est: Any, X: Any, *, n_threads: int | None = 1, feature_major: bool = False) -> np.ndarray:
    """``est.predict(X)`` through the compiled kernel when ``est`` is supported, else ``est.predict``.

    Parameters
    ----------
    est : estimator
        Fitted classifier.
    X : array-like of shape (n_samples, n_features)
        Features; ``(n_features, n_samples)`` with ``feature_major=True``.
    n_threads : int, optional
        See :meth:`FastForest.predict`.
    feature_major : bool, optional
        See :meth:`FastForest.predict`.

    Returns
    -------
    ndarray of shape (n_samples,)
        Predicted labels.

    """
    compiled = compile_estimator(est)
    if compiled is None:
        return est.predict(np.asarray(X).T if feature_major else X)
    return compiled.predict(X, n_threads=n_threads, feature_major=feature_major)


def fast_predict_proba(
    est: Any, X: Any, *, n_threads: int | None = 1, feature_major: bool = False
) -> np.ndarray:
    """``est.predict_proba(X)`` through the compiled kernel when ``est`` is supported (bit-identical).

    Parameters
    ----------
    est : estimator
        Fitted classifier with ``predict_proba``.
    X : array-like of shape (n_samples, n_features)
        Features; ``(n_features, n_samples)`` with ``feature_major=True``.
    n_threads, feature_major
        See :meth:`FastForest.predict`.

    Returns
    -------
    ndarray of float64, shape (n_samples, n_classes)
        Class probabilities, columns in the order of ``est.classes_``.

    """
    compiled = compile_estimator(est)
    if compiled is None:
        return est.predict_proba(np.asarray(X).T if feature_major else X)
    return compiled.predict_proba(X, n_threads=n_threads, feature_major=feature_major)
