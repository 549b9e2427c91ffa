"""Train/test splits that respect sample locations and accuracy reports (figures: :mod:`lcstack.plot`)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import cohen_kappa_score, confusion_matrix, precision_recall_fscore_support
from sklearn.model_selection import GroupKFold, GroupShuffleSplit

from lcstack.errors import InvalidInputError, LcstackWarning
from lcstack.plot import plot_confusion  # the one implementation, re-exported here

__all__ = ["join_groups", "location_split", "spatial_blocks", "spatial_folds", "evaluate", "plot_confusion"]

logger = logging.getLogger(__name__)

_COORD_DECIMALS = 7
_SPLIT_ATTEMPTS = 10


def _location_groups(df: pd.DataFrame, x: str, y: str, block_size: float | None) -> np.ndarray:
    for col in (x, y):
        if col not in df.columns:
            raise InvalidInputError(
                f"location_split: column {col!r} is missing; pass x=/y= to name the columns."
            )
    xs = pd.to_numeric(df[x], errors="coerce").to_numpy(dtype=np.float64)
    ys = pd.to_numeric(df[y], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(xs) & np.isfinite(ys))
    if bad.any():
        raise InvalidInputError(
            f"location_split: {int(bad.sum())} rows have missing or non-numeric {x}/{y} "
            f"(first rows: {df.index[bad][:5].tolist()}); drop them first."
        )
    if block_size is None:
        keys = np.column_stack([np.round(xs, _COORD_DECIMALS), np.round(ys, _COORD_DECIMALS)])
        return np.unique(keys, axis=0, return_inverse=True)[1].ravel()
    if not block_size > 0:
        raise InvalidInputError(f"location_split: block_size must be > 0, got {block_size!r}.")
    return _block_ids(xs, ys, block_size)


def _block_ids(xs: np.ndarray, ys: np.ndarray, block_size: float) -> np.ndarray:
    keys = np.column_stack([np.floor(xs / block_size), np.floor(ys / block_size)])
    _, groups = np.unique(keys, axis=0, return_inverse=True)
    return groups.ravel()


def join_groups(groups: np.ndarray, together: Any) -> np.ndarray:
    """Merge the groups that share a ``together`` id (e.g. the pixels of one polygon); ``-1`` joins nothing.

    Two samples end up in one group when they share a group or a ``together`` id, directly or through
    other samples (connected components), so a polygon spanning two spatial blocks joins both.

    Returns
    -------
    ndarray of int
        Group ids ``0 .. n - 1``, one per sample.

    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ids = np.asarray(together, dtype=np.int64).ravel()
    if ids.shape != groups.shape:
        raise InvalidInputError(f"groups: {ids.size} group ids for {groups.size} samples.")
    if not (ids >= 0).any():
        return groups
    n = int(groups.max()) + 1
    linked = ids >= 0
    other, m = np.unique(ids[linked], return_inverse=True)[1].ravel() + n, np.unique(ids[linked]).size
    graph = coo_matrix((np.ones(other.size), (groups[linked], other)), shape=(n + m, n + m))
    return connected_components(graph, directed=False)[1][groups]


def location_split(
    df: pd.DataFrame,
    *,
    test_size: float = 0.25,
    random_state: int = 0,
    block_size: float | None = None,
    x: str = "longitude",
    y: str = "latitude",
    label: str | None = "category",
    groups: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split samples into train and test sets so that one location never lands in both.

    Samples at the same coordinates (rounded to 1e-7) form one group; with ``block_size`` every square block
    of that size forms one group, which keeps spatially autocorrelated neighbours apart. Groups are drawn with
    :class:`~sklearn.model_selection.GroupShuffleSplit`. When ``label`` names a column, the split is redrawn
    (with seeds ``random_state``, ``random_state + 1``, ...) until every class has training samples; a
    :class:`~lcstack.errors.LcstackWarning` says so if no attempt manages it.

    Parameters
    ----------
    df : DataFrame
        Samples with coordinate columns (a sample table from :func:`lcstack.samples.extract_samples`).
    test_size : float, default 0.25
        Fraction of groups (not samples) in the test set.
    random_state : int, default 0
        Seed of the first attempt.
    block_size : float, optional
        Side of the spatial blocks, in the units of the ``x``/``y`` columns: degrees for longitude/latitude
        (0.01° ≈ 1 km), metres if the columns hold projected coordinates.
    x, y : str
        Coordinate column names.
    label : str or None, default "category"
        Class column that must be fully represented in the training set; ``None`` or a missing column
        skips the check.
    groups : array-like of int, optional
        One id per sample; samples sharing an id >= 0 (the pixels of one polygon, the ``polygon`` column
        of a sample table) are kept on the same side (:func:`join_groups`).

    Returns
    -------
    train_idx, test_idx : ndarray of int
        Positional indices (for ``df.iloc``).

    Raises
    ------
    InvalidInputError
        Coordinates are missing, or there are too few locations to split.

    """
    if not 0 < test_size < 1:
        raise InvalidInputError(f"location_split: test_size must be between 0 and 1, got {test_size!r}.")
    together = groups
    groups = _location_groups(df, x, y, block_size)
    if together is not None:
        groups = join_groups(groups, together)
    n_groups = int(groups.max()) + 1 if groups.size else 0
    if n_groups < 2:
        raise InvalidInputError(
            f"location_split: the {len(df)} samples lie at {n_groups} distinct location(s)"
            + (f" / block(s) of size {block_size}" if block_size is not None else "")
            + "; at least 2 are needed. Add points or use a smaller block_size."
        )
    classes = None
    if label is not None and label in df.columns:
        classes = df[label].to_numpy()
    all_classes = set(pd.unique(classes)) if classes is not None else set()
    dummy = np.zeros((len(df), 1))
    split = None
    for attempt in range(_SPLIT_ATTEMPTS):
        splitter = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=random_state + attempt)
        try:
            train, test = next(splitter.split(dummy, groups=groups))
        except ValueError as err:
            raise InvalidInputError(f"location_split: cannot split {n_groups} locations: {err}") from err
        split = (train, test)
        if classes is None or set(pd.unique(classes[train])) == all_classes:
            break
    else:
        missing = sorted(all_classes - set(pd.unique(classes[split[0]])), key=str)
        warnings.warn(
            f"location_split: after {_SPLIT_ATTEMPTS} attempts the training set still lacks classes "
            f"{missing} (their samples sit at too few locations); add points for them.",
            LcstackWarning,
            stacklevel=2,
        )
    assert split is not None
    train, test = split
    return np.sort(train), np.sort(test)


def spatial_blocks(
    df: pd.DataFrame, block_size: float, *, x: str = "longitude", y: str = "latitude"
) -> np.ndarray:
    """Block id of every sample: square blocks of ``block_size`` metres on the points' UTM zone.

    Lon/lat are projected to the WGS 84 / UTM zone of the points' centre (:func:`lcstack.grid.utm_crs`),
    so the blocks are squares in metres wherever the points are.

    Returns
    -------
    ndarray of int
        One id per row, ``0 .. n_blocks - 1``.

    """
    from pyproj import Transformer

    from lcstack.grid import utm_crs

    if not block_size > 0:
        raise InvalidInputError(f"spatial_blocks: block_size must be > 0 metres, got {block_size!r}.")
    _location_groups(df, x, y, None)  # validates the coordinate columns
    lon = df[x].to_numpy(dtype=np.float64)
    lat = df[y].to_numpy(dtype=np.float64)
    crs = utm_crs(float(np.median(lon)), float(np.median(lat)))
    ex, ny = Transformer.from_crs("EPSG:4326", crs.to_wkt(), always_xy=True).transform(lon, lat)
    return _block_ids(np.asarray(ex), np.asarray(ny), block_size)


def spatial_folds(
    df: pd.DataFrame,
    *,
    folds: int = 5,
    block_size: float = 2000.0,
    random_state: int = 0,
    x: str = "longitude",
    y: str = "latitude",
    groups: Any = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold splits by spatial blocks: all samples of one block are in the same test fold.

    Blocks (:func:`spatial_blocks`) are dealt to ``folds`` folds of similar sample counts by
    :class:`~sklearn.model_selection.GroupKFold` with a seeded shuffle, so one seed gives one split.

    Parameters
    ----------
    df : DataFrame
        Samples with lon/lat columns.
    folds : int, default 5
        Number of folds (>= 2).
    block_size : float, default 2000
        Side of the square blocks, in metres.
    random_state : int, default 0
        Seed of the shuffle of blocks over folds.
    x, y : str
        Longitude and latitude column names.
    groups : array-like of int, optional
        Samples sharing an id >= 0 (one polygon's pixels) are in the same fold (:func:`join_groups`).

    Returns
    -------
    list of (train_idx, test_idx)
        Positional indices, one pair per fold.

    Raises
    ------
    InvalidInputError
        Fewer blocks than folds, or bad coordinates.

    """
    if folds < 2:
        raise InvalidInputError(f"spatial_folds: folds must be >= 2, got {folds!r}.")
    together = groups
    groups = spatial_blocks(df, block_size, x=x, y=y)
    if together is not None:
        groups = join_groups(groups, together)
    n_blocks = int(groups.max()) + 1 if groups.size else 0
    if n_blocks < folds:
        raise InvalidInputError(
            f"model.cv: the {len(df)} samples fall in {n_blocks} block(s) of {block_size:g} m, fewer than "
            f"the {folds} folds; use a smaller model.cv.block_size or fewer folds."
        )
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=random_state)
    dummy = np.zeros((len(df), 1))
    return [(np.sort(tr), np.sort(te)) for tr, te in splitter.split(dummy, groups=groups)]


def _codes(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values).ravel()
    if arr.dtype.kind not in "iuf":
        raise InvalidInputError(f"evaluate: {name} must hold integer class codes, got dtype {arr.dtype}.")
    return arr


def evaluate(y_true: Any, y_pred: Any, *, labels: Mapping[str, int]) -> dict[str, Any]:
    """Accuracy report of predicted against reference class codes.

    Parameters
    ----------
    y_true, y_pred : array-like of int
        Reference and predicted class codes, same length.
    labels : dict[str, int]
        Class name to code (``lc_labels.json`` or ``sl_labels.json``); rows and columns follow code order.

    Returns
    -------
    dict
        JSON-serialisable: ``labels`` (names in code order), ``codes``, ``confusion_matrix``
        (rows = reference, columns = prediction), ``n_samples``, ``overall_accuracy``, ``kappa``
        (Cohen's; ``None`` when undefined), ``macro_f1`` (over classes with support) and ``per_class``
        (name -> ``code``, ``precision``, ``recall``, ``f1``, ``support``).

    Raises
    ------
    InvalidInputError
        Lengths differ, there are no samples, or a code is not in ``labels``.

    """
    t = _codes(y_true, "y_true")
    p = _codes(y_pred, "y_pred")
    if t.shape != p.shape:
        raise InvalidInputError(f"evaluate: y_true has {t.size} values but y_pred has {p.size}.")
    if t.size == 0:
        raise InvalidInputError("evaluate: no samples to evaluate.")
    ordered = sorted(labels.items(), key=lambda kv: kv[1])
    names = [str(n) for n, _ in ordered]
    codes = [int(c) for _, c in ordered]
    unknown = sorted(set(np.unique(np.concatenate([t, p])).tolist()) - set(codes))
    if unknown:
        raise InvalidInputError(
            f"evaluate: codes {unknown} are not in the label map {dict(labels)}; pass the label map the "
            "model was trained with."
        )
    cm = confusion_matrix(t, p, labels=codes)
    precision, recall, f1, support = precision_recall_fscore_support(t, p, labels=codes, zero_division=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # reported as kappa = None
        kappa = float(cohen_kappa_score(t, p, labels=codes))
    per_class = {
        name: {
            "code": code,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, (name, code) in enumerate(zip(names, codes, strict=True))
    }
    present = support > 0
    return {
        "labels": names,
        "codes": codes,
        "confusion_matrix": cm.astype(int).tolist(),
        "n_samples": int(t.size),
        "overall_accuracy": float(np.trace(cm) / cm.sum()),
        "kappa": kappa if np.isfinite(kappa) else None,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": per_class,
    }
