"""Compiled tree-ensemble inference: scikit-learn's predictions, bit for bit, from a numba kernel.

A fitted :class:`~sklearn.ensemble.RandomForestClassifier`, :class:`~sklearn.ensemble.ExtraTreesClassifier`,
:class:`~sklearn.tree.DecisionTreeClassifier` or :class:`~sklearn.tree.ExtraTreeClassifier` is flattened
once into NumPy arrays (:meth:`FastForest.from_estimator`) and predicted by a ``@numba.njit(nogil=True,
cache=True)`` kernel (``parallel=True`` for the multi-threaded variant).

The kernel reproduces scikit-learn (>= 1.4, where ``tree_.value`` of a classifier holds class fractions)
exactly, so ``FastForest.predict`` equals ``estimator.predict`` on every row:

* ``X`` is cast to float32 as :meth:`ForestClassifier._validate_X_predict` does;
* a split goes left when ``float64(x) <= threshold`` and, for NaN, where ``missing_go_to_left`` says. The
  float64 threshold is stored as the largest float32 not above it, which gives the same decision for every
  float32 ``x`` at half the memory;
* a forest adds the trees' leaf vectors (``DecisionTreeClassifier.predict_proba``, the raw fractions in
  ``tree_.value``) in float64, in tree order, starting from zero, then divides by ``n_estimators``
  (``_accumulate_prediction`` then ``proba /= len(self.estimators_)``); a single tree takes the raw leaf
  vector. ``predict`` is ``classes_.take(argmax)``, the first maximum winning.

A forest fitted with ``n_jobs > 1`` adds the trees in whatever order its joblib threads finish, so its own
probabilities can differ from run to run in the last bit; the kernel always gives the ``n_jobs=1`` result.

The compiled arrays are cached per estimator object (a :class:`weakref.WeakKeyDictionary`, rebuilt when
the estimator is refitted), so the model loaded once per worker process by :mod:`lcstack.classify` is
compiled once per process too. Everything here is thread-safe: compilation is under a lock and the kernels
release the GIL and share no mutable state.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from lcstack.errors import InvalidInputError

__all__ = ["FastForest", "compile_estimator", "fast_predict", "fast_predict_levels", "numba_available"]

#: Level-2 code of a pixel whose category has no level-2 model (same as :data:`lcstack.model.UNCLASSIFIED`).
UNCLASSIFIED = 1

#: Rows per work item. A block walks one tree after the other, so that the tree (13 bytes a node: 106 KB
#: for 8191 nodes) stays in the L2 cache while the block's rows stream past it; blocks are what the
#: parallel kernel spreads over threads.
_BLOCK = 4096
#: Rows walked through a tree together (independent memory loads in flight).
_LANES = 16


def numba_available() -> bool:
    """Return whether numba can be imported (the fast engine needs it)."""
    return numba is not None


def _require_numba() -> None:
    if numba is None:  # pragma: no cover - numba is installed in the test environment
        raise ImportError(
            "The numba inference engine needs numba: `pip install numba` (or use engine='sklearn')."
        )


# ----------------------------------------------------------------------------------------------------
# Kernels (compiled on first use, cached on disk by numba)
# ----------------------------------------------------------------------------------------------------

# The workqueue threading layer aborts on concurrent parallel launches; tbb and omp do not.
_PARALLEL_LAUNCH_LOCK = threading.Lock()

try:
    import numba
except ImportError:  # pragma: no cover - numba is installed in the test environment
    numba = None

if numba is not None:
    # Module-level functions: numba's on-disk cache (cache=True) does not work for closures.

    @numba.njit(nogil=True, cache=True)
    def _predict_range(  # pragma: no cover - compiled
        X, start, stop, roots, depth, nodes, nodes_f, values, divisor, out_idx, out_proba
    ):
        n_classes = values.shape[1]
        acc = np.zeros((stop - start, n_classes), dtype=np.float64)
        walk = np.empty(_LANES, dtype=np.int64)
        for t in range(roots.shape[0]):
            root = roots[t]
            for g in range(start, stop, _LANES):
                m = min(_LANES, stop - g)
                for lane in range(m):
                    walk[lane] = root
                # Lanes walk the tree in lock step, branch-free, for exactly the tree's depth: leaves loop
                # onto themselves, so the independent loads of several rows overlap in the CPU.
                for _ in range(depth[t]):
                    for lane in range(m):
                        node = walk[lane]
                        x = X[g + lane, nodes[node, 0]]
                        go_right = (x > nodes_f[node, 1]) | ((x != x) & (nodes[node, 3] == 0))
                        walk[lane] = nodes[node, 2] + go_right
                for lane in range(m):
                    row = g - start + lane
                    v = -1 - nodes[walk[lane], 3]
                    for c in range(n_classes):
                        acc[row, c] += values[v, c]
        want_proba = out_proba.shape[0] > 0
        for r in range(stop - start):
            best = 0
            best_value = acc[r, 0] / divisor
            if want_proba:
                out_proba[start + r, 0] = best_value
            for c in range(1, n_classes):
                value = acc[r, c] / divisor
                if want_proba:
                    out_proba[start + r, c] = value
                if value > best_value:  # strict: the first maximum wins, as np.argmax
                    best = c
                    best_value = value
            out_idx[start + r] = best

    @numba.njit(nogil=True, cache=True)
    def _predict_serial(  # pragma: no cover - compiled
        X, roots, depth, nodes, nodes_f, values, divisor, out_idx, out_proba, block
    ):
        n = X.shape[0]
        for b in range((n + block - 1) // block):
            start = b * block
            _predict_range(
                X, start, min(start + block, n), roots, depth, nodes, nodes_f, values, divisor, out_idx,
                out_proba,
            )  # fmt: skip

    @numba.njit(parallel=True, nogil=True, cache=True)
    def _predict_parallel(  # pragma: no cover - compiled
        X, roots, depth, nodes, nodes_f, values, divisor, out_idx, out_proba, block
    ):
        n = X.shape[0]
        for b in numba.prange((n + block - 1) // block):
            start = b * block
            _predict_range(
                X, start, min(start + block, n), roots, depth, nodes, nodes_f, values, divisor, out_idx,
                out_proba,
            )  # fmt: skip


def _kernels() -> dict[str, Any]:
    _require_numba()
    return {"serial": _predict_serial, "parallel": _predict_parallel}


def _threading_layer_is_safe() -> bool:
    try:
        return numba.threading_layer() != "workqueue"
    except ValueError:  # no parallel kernel has run yet: the layer is not chosen
        return False


# ----------------------------------------------------------------------------------------------------
# Compiled forest
# ----------------------------------------------------------------------------------------------------

_SUPPORTED = (
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.ensemble._forest.ExtraTreesClassifier",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._classes.ExtraTreeClassifier",
)


def _qualname(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_supported(est: Any) -> bool:
    # Exact types only: a subclass may override predict / predict_proba.
    return _qualname(est) in _SUPPORTED and getattr(est, "n_outputs_", None) == 1


def _float32_floor(threshold: np.ndarray) -> np.ndarray:
    """Largest float32 <= each float64 threshold, so ``x32 <= t32`` iff ``float64(x32) <= t``."""
    with np.errstate(over="ignore"):
        t32 = threshold.astype(np.float32)
    above = t32.astype(np.float64) > threshold
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


def _bfs_order(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Node ids in breadth-first order with the two children of every node next to each other."""
    order = [np.zeros(1, dtype=np.intp)]
    frontier = order[0]
    while frontier.size:
        inner = frontier[left[frontier] >= 0]
        frontier = np.column_stack((left[inner], right[inner])).ravel()
        order.append(frontier)
    return np.concatenate(order)


@dataclass(frozen=True, eq=False)
class FastForest:
    """A fitted tree classifier flattened into arrays for the numba kernel.

    Build it with :meth:`from_estimator`. Nodes of all trees share one set of arrays, each tree in
    breadth-first order with the two children of a node adjacent (``child`` is the left one, ``child + 1``
    the right one). A leaf is its own child with threshold +inf, so a walk of exactly ``depth`` steps ends
    on the leaf from any shorter path (identical leaf vectors are stored once in ``values``).

    Attributes
    ----------
    classes_ : ndarray
        The estimator's ``classes_``.
    n_features_in_ : int
        Number of features.
    roots, depth : ndarray of int32
        Per tree, in tree order: index of the root node, ``max_depth``.
    nodes : ndarray of int32, shape (n_nodes, 4)
        One 16-byte record per node, so that a step of the walk reads one cache line: split feature (leaf:
        0); the bits of the float32 threshold, the largest float32 not above scikit-learn's float64 one
        (leaf: +inf); left child (leaf: itself); 1 if NaN goes left (``missing_go_to_left``) else 0, or for
        a leaf -1 minus its row in ``values``.
    values : ndarray of float64, shape (n_distinct_leaves, n_classes)
        Leaf vectors as the estimator adds them.
    divisor : float
        ``n_estimators`` for a forest, 1 for a single tree.

    """

    classes_: np.ndarray
    n_features_in_: int
    roots: np.ndarray
    depth: np.ndarray
    nodes: np.ndarray
    values: np.ndarray
    divisor: float

    @property
    def n_trees(self) -> int:
        """Number of trees."""
        return int(self.roots.shape[0])

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays, in bytes."""
        return sum(a.nbytes for a in (self.roots, self.depth, self.nodes, self.values))

    @classmethod
    def from_estimator(cls, est: Any) -> FastForest:
        """Flatten a fitted single-output tree classifier or forest of them.

        Parameters
        ----------
        est : RandomForestClassifier, ExtraTreesClassifier, DecisionTreeClassifier or ExtraTreeClassifier
            Fitted, single-output.

        Returns
        -------
        FastForest

        Raises
        ------
        InvalidInputError
            For any other estimator, a multi-output one or an unfitted one.

        """
        if not _is_supported(est):
            raise InvalidInputError(
                "FastForest supports fitted single-output "
                f"{', '.join(s.rsplit('.', 1)[1] for s in _SUPPORTED)}, not {type(est).__name__}; "
                "predict it with its own predict()."
            )
        is_forest = hasattr(est, "estimators_")
        trees = [e.tree_ for e in est.estimators_] if is_forest else [est.tree_]
        n_classes = int(est.n_classes_)
        roots, depth, feature, threshold, child, nan_left, leaf, leaf_values = [], [], [], [], [], [], [], []
        offset = 0
        n_leaves = 0
        for tree in trees:
            left = tree.children_left.astype(np.intp)
            right = tree.children_right.astype(np.intp)
            order = _bfs_order(left, right)
            position = np.empty(tree.node_count, dtype=np.intp)
            position[order] = np.arange(order.size)
            is_leaf = left[order] < 0
            new_index = np.arange(offset, offset + order.size, dtype=np.int64)
            new_child = new_index.copy()  # a leaf is its own child: extra steps stay on it
            new_child[~is_leaf] = position[left[order][~is_leaf]] + offset
            new_feature = tree.feature[order].astype(np.int64)
            new_feature[is_leaf] = 0
            new_threshold = np.asarray(tree.threshold, dtype=np.float64)[order]
            new_threshold[is_leaf] = np.inf  # x > inf is False: stay
            new_nan_left = np.asarray(tree.missing_go_to_left, dtype=bool)[order]
            new_leaf = np.zeros(order.size, dtype=np.int64)
            leaves = order[is_leaf]
            new_leaf[is_leaf] = np.arange(n_leaves, n_leaves + leaves.size)
            # tree_.value: (node_count, n_outputs, max_n_classes); predict_proba keeps [:, 0, :n_classes]
            leaf_values.append(np.asarray(tree.value, dtype=np.float64)[leaves, 0, :n_classes])
            roots.append(offset)
            depth.append(int(tree.max_depth))
            feature.append(new_feature)
            threshold.append(new_threshold)
            child.append(new_child)
            nan_left.append(new_nan_left)
            leaf.append(new_leaf)
            offset += order.size
            n_leaves += leaves.size
        if offset >= np.iinfo(np.int32).max:  # pragma: no cover - billions of nodes
            raise InvalidInputError(f"The forest has {offset} nodes, more than FastForest can index (2**31).")
        distinct, inverse = np.unique(np.concatenate(leaf_values), axis=0, return_inverse=True)
        child_all = np.concatenate(child)
        leaf_all = np.concatenate(leaf)
        is_leaf_all = child_all == np.arange(offset)
        nodes = np.empty((offset, 4), dtype=np.int32)
        nodes[:, 0] = np.concatenate(feature)
        nodes[:, 1] = _float32_floor(np.concatenate(threshold)).view(np.int32)
        nodes[:, 2] = child_all
        # column 3: internal node: 1 if NaN goes left else 0; leaf: -1 - its row in values
        nodes[:, 3] = np.concatenate(nan_left)
        nodes[is_leaf_all, 3] = -1 - inverse.ravel()[leaf_all[is_leaf_all]]
        return cls(
            classes_=np.asarray(est.classes_),
            n_features_in_=int(est.n_features_in_),
            roots=np.asarray(roots, dtype=np.int32),
            depth=np.asarray(depth, dtype=np.int32),
            nodes=nodes,
            values=np.ascontiguousarray(distinct, dtype=np.float64),
            divisor=float(len(trees)) if is_forest else 1.0,
        )

    def _run(self, X: Any, n_threads: int | None, want_proba: bool) -> tuple[np.ndarray, np.ndarray]:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise InvalidInputError(
                f"X has shape {X.shape}; the model expects (n_samples, {self.n_features_in_}) features."
            )
        X = np.ascontiguousarray(X, dtype=np.float32)
        n = X.shape[0]
        out_idx = np.empty(n, dtype=np.intp)
        out_proba = np.empty((n if want_proba else 0, self.values.shape[1]), dtype=np.float64)
        if n == 0:
            return out_idx, out_proba
        args = (
            X, self.roots, self.depth, self.nodes, self.nodes.view(np.float32), self.values, self.divisor,
            out_idx, out_proba, _BLOCK,
        )  # fmt: skip
        kernels = _kernels()
        if n_threads == 1 or n <= _BLOCK:
            kernels["serial"](*args)
            return out_idx, out_proba
        threads = numba.config.NUMBA_NUM_THREADS if n_threads is None else max(1, int(n_threads))
        threads = min(threads, numba.config.NUMBA_NUM_THREADS)
        safe = _threading_layer_is_safe()
        if not safe:
            _PARALLEL_LAUNCH_LOCK.acquire()
        try:
            previous = numba.get_num_threads()
            numba.set_num_threads(threads)  # thread-local in numba
            try:
                kernels["parallel"](*args)
            finally:
                numba.set_num_threads(previous)
        finally:
            if not safe:
                _PARALLEL_LAUNCH_LOCK.release()
        return out_idx, out_proba

    def predict(self, X: Any, *, n_threads: int | None = 1) -> np.ndarray:
        """Predict class labels, identical to the estimator's ``predict``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features; cast to float32 as scikit-learn does.
        n_threads : int, optional
            1 (default) runs the serial kernel in the calling thread (for dask workers, which already run
            one block per thread); ``None`` or more uses numba's parallel kernel with that many threads
            (``None``: all of numba's).

        Returns
        -------
        ndarray of shape (n_samples,)
            ``classes_.take(argmax(proba))``.

        """
        idx, _ = self._run(X, n_threads, want_proba=False)
        return self.classes_.take(idx, axis=0)

    def predict_proba(self, X: Any, *, n_threads: int | None = 1) -> np.ndarray:
        """Class probabilities, bit-identical to the estimator's ``predict_proba`` (see :meth:`predict`)."""
        _, proba = self._run(X, n_threads, want_proba=True)
        return proba


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


def fast_predict(est: Any, X: Any, *, n_threads: int | None = 1) -> np.ndarray:
    """``est.predict(X)`` through the compiled kernel when ``est`` is supported, else ``est.predict``.

    Parameters
    ----------
    est : estimator
        Fitted classifier.
    X : array-like of shape (n_samples, n_features)
        Features.
    n_threads : int, optional
        See :meth:`FastForest.predict`.

    Returns
    -------
    ndarray of shape (n_samples,)
        Predicted labels.

    """
    compiled = compile_estimator(est)
    if compiled is None:
        return est.predict(X)
    return compiled.predict(X, n_threads=n_threads)


def fast_predict_levels(model: Any, X: Any, *, n_threads: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`lcstack.model.HierarchicalClassifier.predict_levels` through the compiled kernels.

    Level 1 and every level-2 model that is a supported tree ensemble run on the numba kernel; any other
    estimator falls back to its own ``predict``. The result equals ``model.predict_levels(X)``.

    Parameters
    ----------
    model : HierarchicalClassifier
        Fitted.
    X : array-like or DataFrame of shape (n_samples, n_features)
        Features of valid (NaN-free) pixels, validated as ``predict_levels`` does.
    n_threads : int, optional
        See :meth:`FastForest.predict`.

    Returns
    -------
    level1 : ndarray of shape (n_samples,)
        Category codes.
    level2 : ndarray of int64, shape (n_samples,)
        Subcategory codes; 1 (unclassified) where the predicted category has no level-2 model.

    """
    from sklearn.utils._indexing import _safe_indexing
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model)
    X = model._validate_X(X)
    level1 = fast_predict(model.estimator_level1_, X, n_threads=n_threads)
    level2 = np.full(X.shape[0], UNCLASSIFIED, dtype=np.int64)
    for category, code in model.constant_level2_.items():
        level2[level1 == category] = code
    for category, sub in model.estimators_level2_.items():
        rows = level1 == category
        if rows.any():
            level2[rows] = fast_predict(sub, _safe_indexing(X, rows), n_threads=n_threads)
    return level1, level2
