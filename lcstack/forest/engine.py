"""The compiled forest (:class:`FastForest`) and the per-CPU choice of the partition step."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from lcstack.errors import InvalidInputError
from lcstack.forest import _simd
from lcstack.forest.checks import _SUPPORTED, _float32_floor, _is_supported, _preorder, check_estimator
from lcstack.forest.kernels import (
    _BLOCK,
    _PARALLEL_LAUNCH_LOCK,
    _block_range,
    _block_rows,
    _kernels,
    _threading_layer_is_safe,
    numba,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class FastForest:
    """A fitted tree classifier flattened into arrays for the numba kernel.

    Build it with :meth:`from_estimator`. Nodes of all trees share one set of arrays, each tree in
    depth-first pre-order, left subtree first: a node's left child is the next node and a subtree is one
    contiguous run of nodes, which is the order the kernel visits them in (identical leaf vectors are
    stored once in ``values``, in order of first appearance).

    Attributes
    ----------
    classes_ : ndarray
        The estimator's ``classes_``.
    n_features_in_ : int
        Number of features.
    roots, depth : ndarray of int32
        Per tree, in tree order: index of the root node, ``max_depth`` (sizes the walk's stack).
    nodes : ndarray of int32, shape (n_nodes, 4)
        One 16-byte record per node: split feature (leaf:
        0); the bits of the float32 threshold, the largest float32 not above scikit-learn's float64 one
        (leaf: +inf); right child (leaf: itself); 1 if NaN goes left (``missing_go_to_left``) else 0, or for
        a leaf -1 minus its row in ``values``.
    values : ndarray of float64, shape (n_distinct_leaves, n_classes)
        Leaf vectors as the estimator adds them.
    divisor : float
        ``n_estimators`` for a forest, 1 for a single tree.
    spread : ndarray of float64
        Per tree, the largest ``max - min`` of its leaf vectors: how far one tree can move any class
        against any other (bounds the early exit of :meth:`predict`).

    """

    classes_: np.ndarray
    n_features_in_: int
    roots: np.ndarray
    depth: np.ndarray
    nodes: np.ndarray
    values: np.ndarray
    divisor: float
    spread: np.ndarray

    def __post_init__(self) -> None:
        # Early exit of predict: after tree t, the runner-up class can still gain at most gain_after[t]
        # on the leader (each later tree adds at most its spread), and the leader is at most
        # lead_before[t] ahead. The float64 sums of the kernel and of scikit-learn each round by at most
        # n_trees * ulp(sum of |values|) / 2; tol covers both and the final division by ``divisor``.
        total = np.cumsum(self.spread[::-1])[::-1]
        gain_after = np.append(total[1:], 0.0)
        magnitude = float(np.abs(self.values).max(initial=0.0)) * self.n_trees
        tol = 64 * np.finfo(np.float64).eps * max(self.n_trees, 1) * max(magnitude, 1.0)
        object.__setattr__(self, "_gain_after", gain_after)
        object.__setattr__(self, "_lead_before", np.cumsum(self.spread))
        object.__setattr__(self, "_tol", float(tol))
        # One-hot leaf vectors (fully grown trees): the kernel counts votes (see _predict_votes_range).
        values = self.values
        one_hot = (
            values.ndim == 2
            and values.shape[1] > 1
            and max(self.n_trees, values.shape[1]) < np.iinfo(np.uint16).max  # uint16 counts and leader
            and bool(np.isin(values, (0.0, 1.0)).all())
            and bool((values.sum(axis=1) == 1.0).all())
        )
        vote_class = values.argmax(axis=1).astype(np.int32) if one_hot else np.empty(0, dtype=np.int32)
        object.__setattr__(self, "_vote_class", vote_class)
        block = _block_rows(self.nodes.shape[0], self.n_trees, self.n_features_in_)
        object.__setattr__(self, "_block", block)

    @property
    def n_trees(self) -> int:
        """Number of trees."""
        return int(self.roots.shape[0])

    @property
    def shape(self) -> str:
        """``"shallow"`` or ``"deep"``: the calibrated partition step it runs with (:func:`forest_shape`)."""
        return forest_shape(self._block, self.n_features_in_)

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays, in bytes."""
        return sum(a.nbytes for a in (self.roots, self.depth, self.nodes, self.values, self.spread))

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
        depths = check_estimator(est, type(est).__name__)
        is_forest = hasattr(est, "estimators_")
        trees = [e.tree_ for e in est.estimators_] if is_forest else [est.tree_]
        n_classes = int(est.n_classes_)
        roots, depth, feature, threshold, child, nan_left, leaf, leaf_values = [], [], [], [], [], [], [], []
        spread: list[float] = []
        offset = 0
        n_leaves = 0
        for tree, tree_depth in zip(trees, depths, strict=True):
            left = tree.children_left.astype(np.intp)
            right = tree.children_right.astype(np.intp)
            order = _preorder(left, right)
            position = np.empty(tree.node_count, dtype=np.intp)
            position[order] = np.arange(order.size)
            is_leaf = left[order] < 0
            new_index = np.arange(offset, offset + order.size, dtype=np.int64)
            new_child = new_index.copy()  # a leaf is its own child
            new_child[~is_leaf] = position[right[order][~is_leaf]] + offset
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
            spread.append(float(np.ptp(leaf_values[-1], axis=1).max()) if n_classes > 1 else 0.0)
            roots.append(offset)
            depth.append(tree_depth)  # sizes the kernel's stack: computed, never read from the file
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
        # Keep the distinct vectors in order of first appearance, so the leaves of one tree (walked
        # together) stay together in memory rather than spread over the whole table by the sort.
        inverse = inverse.ravel()
        first_seen = np.full(distinct.shape[0], inverse.size, dtype=np.int64)
        np.minimum.at(first_seen, inverse, np.arange(inverse.size))
        order = np.argsort(first_seen, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        distinct, inverse = distinct[order], rank[inverse]
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
            spread=np.asarray(spread, dtype=np.float64),
        )

    def _feature_major(self, X: Any, feature_major: bool) -> np.ndarray:
        """``X`` as a C-contiguous float32 ``(n_features, n_samples)`` array, the kernel's layout."""
        X = np.asarray(X)
        n_features = self.n_features_in_
        if feature_major:
            if X.ndim != 2 or X.shape[0] != n_features:
                raise InvalidInputError(
                    f"X has shape {X.shape}; with feature_major=True the model expects ({n_features}, "
                    "n_samples) features."
                )
            return np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != n_features:
            raise InvalidInputError(
                f"X has shape {X.shape}; the model expects (n_samples, {n_features}) features."
            )
        X = np.ascontiguousarray(X, dtype=np.float32)
        XT = np.empty((n_features, X.shape[0]), dtype=np.float32)
        if X.size:
            _kernels()["transpose"](X, XT)
        return XT

    def _run(
        self,
        X: Any,
        n_threads: int | None,
        want_proba: bool,
        feature_major: bool = False,
        simd: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Class indices, probabilities (when asked) and the number of (row, tree) walks done.

        ``simd``: rows per partition step (one of :func:`lcstack._simd.available_widths`); ``None`` for
        :func:`simd_width` of this forest's shape.
        """
        XT = self._feature_major(X, feature_major)
        n = XT.shape[1]
        out_idx = np.empty(n, dtype=np.intp)
        out_proba = np.empty((n if want_proba else 0, self.values.shape[1]), dtype=np.float64)
        if n == 0:
            return out_idx, out_proba, 0
        args = (
            XT, self.roots, int(self.depth.max(initial=0)), self.nodes, self.nodes.view(np.float32),
            self.values, self._vote_class, self._lead_before, self._gain_after, self._tol, self.divisor,
            not want_proba, out_idx, out_proba, self._block, simd_width(self.shape) if simd is None else simd,
        )  # fmt: skip
        kernels = _kernels()
        if n_threads == 1 or n <= _BLOCK:
            return out_idx, out_proba, int(kernels["serial"](*args))
        threads = numba.config.NUMBA_NUM_THREADS if n_threads is None else max(1, int(n_threads))
        threads = min(threads, numba.config.NUMBA_NUM_THREADS)
        # no fewer blocks than threads while the blocks stay at least _BLOCK rows
        block = min(self._block, max(_BLOCK, -(-n // threads)))
        args = (*args[:-2], block, args[-1])
        safe = _threading_layer_is_safe()
        if not safe:
            _PARALLEL_LAUNCH_LOCK.acquire()
        try:
            previous = numba.get_num_threads()
            numba.set_num_threads(threads)  # thread-local in numba
            try:
                walks = int(kernels["parallel"](*args))
            finally:
                numba.set_num_threads(previous)
        finally:
            if not safe:
                _PARALLEL_LAUNCH_LOCK.release()
        return out_idx, out_proba, walks

    def predict(self, X: Any, *, n_threads: int | None = 1, feature_major: bool = False) -> np.ndarray:
        """Predict class labels, identical to the estimator's ``predict``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features; cast to float32 as scikit-learn does.
        n_threads : int, optional
            1 (default) runs the serial kernel in the calling thread (for dask workers, which already run
            one block per thread); ``None`` or more uses numba's parallel kernel with that many threads
            (``None``: all of numba's).
        feature_major : bool, optional
            ``X`` is ``(n_features, n_samples)`` instead: the kernel's own layout, which a ``(feature, y,
            x)`` raster block gives without a transpose.

        Returns
        -------
        ndarray of shape (n_samples,)
            ``classes_.take(argmax(proba))``.

        """
        idx, _, _ = self._run(X, n_threads, want_proba=False, feature_major=feature_major)
        return self.classes_.take(idx, axis=0)

    def predict_proba(self, X: Any, *, n_threads: int | None = 1, feature_major: bool = False) -> np.ndarray:
        """Class probabilities, bit-identical to the estimator's ``predict_proba`` (see :meth:`predict`).

        Every tree is walked for every row here: the early exit of :meth:`predict` settles the argmax,
        not the sums.
        """
        _, proba, _ = self._run(X, n_threads, want_proba=True, feature_major=feature_major)
        return proba


# ----------------------------------------------------------------------------------------------------
# Partition step: the fastest on this CPU, measured once
# ----------------------------------------------------------------------------------------------------

_CALIBRATION_FILE = "lcstack-partition-step.json"
_calibrated: dict[str, dict[str, int]] = {}
_CALIBRATION_LOCK = threading.Lock()


def _cpu_key() -> str:
    """CPU model (vendor, family, model, name), numba's target CPU, lcstack's and numba's versions."""
    import llvmlite.binding as llvm

    from lcstack._version import __version__

    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("vendor_id", "cpu family", "model", "model name") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip() and fields:
                    break
    except OSError:  # pragma: no cover - not Linux
        import platform

        fields["model name"] = platform.processor()
    cpu = " ".join(fields.get(k, "?") for k in ("vendor_id", "cpu family", "model", "model name"))
    return f"{cpu} | {llvm.get_host_cpu_name()} | lcstack {__version__} | numba {numba.__version__}"


def _calibration_path() -> str | None:
    from lcstack.forest import _cache

    for folder in _cache.cache_dirs(__file__):
        if _cache._writable(folder):
            return os.path.join(folder, _CALIBRATION_FILE)
    return None  # pragma: no cover - no writable folder: measured in every process


#: Forest shapes the partition step is chosen for, by the rows per block they get (:func:`_block_rows`):
#: ``shallow`` (size-limited or clean-data trees of about a hundred nodes, the smallest blocks) and
#: ``deep`` (fully grown trees on noisy pixels, thousands of nodes, larger blocks). The fastest step differs
#: between them (the steps chosen per CPU and shape are in benchmarks/RESULTS.md, "Inference").
SHAPES = ("shallow", "deep")

# shape -> (trees, depth of each complete tree, rows timed): about as many rows per leaf as the
# benchmark's forests get in their blocks (shallow: ~100 rows per leaf; deep: ~16).
_SYNTHETIC = {"shallow": (16, 6, 32768), "deep": (4, 12, 65536)}


def forest_shape(block: int, n_features: int) -> str:
    """Return the shape (:data:`SHAPES`) of a forest on ``n_features`` walked in ``block``-row blocks."""
    return "shallow" if block <= _block_range(n_features)[0] else "deep"


def _synthetic_forest(seed: int = 20, shape: str = "deep") -> tuple[FastForest, np.ndarray]:
    """Build a fixed forest of complete trees on 64 features of the given shape, and rows to time it on.

    ``shallow``: 16 trees of depth 6 (127 nodes), 32 768 rows in the smallest blocks; ``deep``: 4 trees
    of depth 12 (8 191 nodes), 65 536 rows in the largest (:func:`_block_range`). Random thresholds on
    Gaussian rows, so the rows split unevenly, as on real pixels.
    """
    rng = np.random.default_rng(seed)
    n_trees, depth, n_rows = _SYNTHETIC[shape]
    n_features, n_classes = 64, 6  # blocks as large as for 66 features
    per_tree = 2 ** (depth + 1) - 1
    nodes = np.empty((n_trees * per_tree, 4), dtype=np.int32)
    values = rng.dirichlet(np.ones(n_classes) * 0.3, size=n_trees * 2**depth)
    k = 0
    leaf = 0
    for _ in range(n_trees):
        stack = [depth]
        while stack:  # depth-first pre-order: a node's left child is the next node
            d = stack.pop()
            if d == 0:
                nodes[k] = (0, np.float32(np.inf).view(np.int32), k, -1 - leaf)
                leaf += 1
            else:
                right = k + 2**d  # after the left subtree's 2**d - 1 nodes
                thr = np.float32(rng.normal(0.0, 0.7)).view(np.int32)
                nodes[k] = (rng.integers(n_features), thr, right, 0)
                stack += [d - 1, d - 1]
            k += 1
    spread = np.ptp(values, axis=1).reshape(n_trees, -1).max(axis=1)
    forest = FastForest(
        classes_=np.arange(n_classes),
        n_features_in_=n_features,
        roots=np.arange(n_trees, dtype=np.int32) * per_tree,
        depth=np.full(n_trees, depth, dtype=np.int32),
        nodes=nodes,
        values=values,
        divisor=float(n_trees),
        spread=spread,
    )
    assert forest.shape == shape
    rows = rng.normal(size=(n_features, n_rows)).astype(np.float32)
    return forest, rows


def _measure_steps(widths: tuple[int, ...], rounds: int = 9) -> dict[str, dict[int, list[float]]]:
    """Per shape and partition step, the seconds of each of ``rounds`` interleaved runs."""
    import time

    cases = {shape: _synthetic_forest(shape=shape) for shape in SHAPES}
    seconds: dict[str, dict[int, list[float]]] = {shape: {w: [] for w in widths} for shape in SHAPES}
    # the scalar loop's classes are the reference (this also compiles the kernel)
    reference = {s: f._run(rows, 1, False, feature_major=True, simd=0)[0] for s, (f, rows) in cases.items()}
    for _ in range(rounds):
        for shape, (forest, rows) in cases.items():
            for width in widths:
                start = time.perf_counter()
                idx = forest._run(rows, 1, False, feature_major=True, simd=width)[0]
                seconds[shape][width].append(time.perf_counter() - start)
                if not np.array_equal(idx, reference[shape]):  # pragma: no cover - never chosen
                    raise RuntimeError(f"the {width}-row partition step disagrees with the scalar loop")
    return seconds


def _choose_width(seconds: dict[int, list[float]]) -> tuple[int, dict[int, float]]:
    """Return the widest step whose median time, relative to each round's fastest, is near the best.

    Per round, not best of each: on a shared machine a run can be slowed by a neighbour at any time, and
    comparing the steps run back to back within a round cancels the slow stretches that min-of-each
    leaves to chance (under a load of 8 on 2 cores that picked the scalar loop for deep trees, where the
    AVX2 step is 1.2-1.4x faster).
    """
    widths = list(seconds)
    n_rounds = min(len(t) for t in seconds.values())
    fastest = [min(seconds[w][r] for w in widths) for r in range(n_rounds)]
    relative = {w: float(np.median([seconds[w][r] / fastest[r] for r in range(n_rounds)])) for w in widths}
    best = min(relative.values())
    return max(w for w in widths if relative[w] <= best * (1.0 + _CALIBRATION_MARGIN)), relative


_CALIBRATION_MARGIN = 0.05


def calibrated_width(shape: str = "deep") -> int:
    """Rows per partition step measured fastest on this CPU for forests of ``shape`` (``LCSTACK_SIMD=auto``).

    Measured once per CPU model (vendor, family, model, numba's target CPU), lcstack version and numba
    version on fixed synthetic forests of each shape (:data:`SHAPES`, :func:`_synthetic_forest`, about a
    second in all), kept in ``lcstack-partition-step.json`` beside the kernel cache
    (:mod:`lcstack.forest._cache`) and logged once per process. With only the scalar loop compiled in (no
    AVX2, or ``NUMBA_CPU_NAME=generic``) it is 0 without measuring. The widest step whose time is within
    5 % of the fastest is chosen, so noise on a busy machine does not trade a wide step for a marginally
    faster narrow one; the times are compared within each round of runs (:func:`_choose_width`).

    Parameters
    ----------
    shape : {"shallow", "deep"}
        The forest's shape (:func:`forest_shape` of its block size).

    Returns
    -------
    int
        One of :func:`lcstack._simd.available_widths`.

    """
    if shape not in SHAPES:
        raise InvalidInputError(f"forest shape {shape!r} is not one of {', '.join(SHAPES)}.")
    widths = _simd.available_widths()
    if len(widths) == 1:
        return widths[0]
    key = _cpu_key()
    if key not in _calibrated:
        with _CALIBRATION_LOCK:
            if key not in _calibrated:
                _calibrated[key] = _calibrate(key, widths)
    return _calibrated[key][shape]


def _read_table(path: str | None) -> dict[str, Any]:
    import json

    if path is None or not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def _calibrate(key: str, widths: tuple[int, ...]) -> dict[str, int]:
    import json

    path = _calibration_path()
    table = _read_table(path)
    entry = table.get(key)
    chosen = entry.get("width") if isinstance(entry, dict) else None
    if isinstance(chosen, dict) and all(chosen.get(s) in widths for s in SHAPES):
        logger.info("partition step per forest shape: %s (measured on this CPU; %s)", chosen, path)
        return {s: int(chosen[s]) for s in SHAPES}
    seconds = _measure_steps(widths)
    chosen, relative = {}, {}
    for shape, times in seconds.items():
        chosen[shape], relative[shape] = _choose_width(times)
    table[key] = {
        "width": chosen,
        "relative": {s: {str(w): round(r, 3) for w, r in rel.items()} for s, rel in relative.items()},
        "seconds": {s: {str(w): round(min(t), 5) for w, t in ts.items()} for s, ts in seconds.items()},
    }
    logger.info(
        "partition step per forest shape: %s rows, the fastest on this CPU (median time per width relative "
        "to each round's fastest: %s; LCSTACK_SIMD forces one)",
        chosen,
        "; ".join(f"{s}: " + ", ".join(f"{w}: {r:.2f}" for w, r in rl.items()) for s, rl in relative.items()),
    )
    if path is not None:
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(table, f, indent=1)
            os.replace(tmp, path)
        except OSError:  # pragma: no cover - measured again in the next process
            logger.debug("could not write %s", path)
    return chosen


def simd_width(shape: str = "deep") -> int:
    """Rows per vector step the kernels use for forests of ``shape``: 16 (AVX-512), 8 (AVX2) or 0 (scalar).

    ``LCSTACK_SIMD`` forces a step (:func:`lcstack.forest._simd.requested_width`); unset or ``auto``, the
    step measured fastest on this CPU for that shape (:func:`calibrated_width`: the widest step is not
    always the fastest, e.g. on AMD Zen 4, nor the same for shallow and deep trees, e.g. on AMD Zen 3).
    """
    width = _simd.requested_width()
    return calibrated_width(shape) if width is None else width
