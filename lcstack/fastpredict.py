"""Compiled tree-ensemble inference: scikit-learn's predictions, bit for bit, from a numba kernel.

A fitted :class:`~sklearn.ensemble.RandomForestClassifier`, :class:`~sklearn.ensemble.ExtraTreesClassifier`,
:class:`~sklearn.tree.DecisionTreeClassifier` or :class:`~sklearn.tree.ExtraTreeClassifier` is flattened
once into NumPy arrays (:meth:`FastForest.from_estimator`) and predicted by a ``numba.njit(nogil=True)``
kernel (``parallel=True`` for the multi-threaded variant), cached on disk by :mod:`lcstack._kernel_cache`
(keyed on this module's, :mod:`lcstack._simd`'s and the cache module's sources).

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

How it walks (``_descend``, ``_predict_range``): pixels come in blocks of 8 192 to 65 536 rows (more for
deeper trees, :func:`_block_rows`), feature-major (``(n_features, n_pixels)``, the layout of a ``(feature,
y, x)`` raster block, so classification never transposes them). For each tree, the block's rows are
partitioned node by node, depth first: a split reads one contiguous feature column for the rows that reach
it and writes them, branch-free, to its left or right child's range; on CPUs with AVX-512 (AVX2) 16 (8)
rows at a time (one gather, one compare, two compressed stores: :mod:`lcstack._simd`), where that step
measures faster than the scalar loop on this CPU (:func:`calibrated_width`). A
node is visited once per block instead of once per row, and no chain of dependent loads runs through one
row's path. Nodes are stored in the order the walk visits them (depth-first pre-order, a subtree in one
run of memory), which on deep trees makes the walk a quarter faster than breadth-first storage. When every
leaf vector is one-hot (fully grown trees), scikit-learn's float64 sums are exact vote counts, so the
kernel counts votes in uint16 instead of adding vectors (``_predict_votes_range``).
For ``predict`` (not ``predict_proba``), a row is dropped from the walk once
its leading class leads the runner-up by more than the remaining trees could close (each tree can move a
class against another by at most the spread of its leaf vectors) plus a margin for float64 rounding, so
its argmax is settled and equals scikit-learn's; the others go on to the last tree. On clean data about
half the trees are walked per pixel (a unanimous vote must exceed the trees left).

A forest fitted with ``n_jobs > 1`` adds the trees in whatever order its joblib threads finish, so its own
probabilities can differ from run to run in the last bit; the kernel always gives the ``n_jobs=1`` result.

The compiled arrays are cached per estimator object (a :class:`weakref.WeakKeyDictionary`, rebuilt when
the estimator is refitted), so the model loaded once per worker process by :mod:`lcstack.classify` is
compiled once per process too. Everything here is thread-safe: compilation is under a lock and the kernels
release the GIL and share no mutable state.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lcstack import _simd
from lcstack.errors import InvalidInputError

__all__ = [
    "FastForest",
    "calibrated_width",
    "check_estimator",
    "check_tree",
    "compile_estimator",
    "fast_predict",
    "fast_predict_levels",
    "fast_predict_proba",
    "fast_predict_proba_levels",
    "numba_available",
    "valid_columns",
]

logger = logging.getLogger(__name__)

#: Level-2 code of a pixel whose category has no level-2 model (same as :data:`lcstack.model.UNCLASSIFIED`).
UNCLASSIFIED = 1

#: Rows per work item, at least (see :func:`_block_rows`). A block is walked one tree after the other;
#: blocks are what the parallel kernel spreads over threads.
_BLOCK = 8192
#: Rows per work item, at most.
_BLOCK_MAX = 65536
#: Segments of at most this many rows leave the partition and finish with a walk per row.
_SMALL = 4


def _block_rows(n_nodes: int, n_trees: int) -> int:
    """Rows per block for a forest: 8 per node of its mean tree, a power of two in ``[_BLOCK, _BLOCK_MAX]``.

    A block's rows split up as they go down a tree; with about 16 rows per leaf (a tree has about as
    many leaves as half its nodes) the partition steps stay long enough for the 16-row AVX-512 step and
    the cost per node (stack, branches) stays small beside the cost per row. Shallow trees keep the
    minimum, whose columns stay in the CPU's L2 cache. Measured on the benchmark cubes (RESULTS.md):
    with the vector step, trees on noisy pixels (3 400-8 600 nodes per tree) ran 1.05-1.3x faster with
    blocks of 32 768-65 536 rows than with 8 192; trees of 100 nodes ran 1.2x slower with them.
    """
    mean = n_nodes / max(n_trees, 1)
    block = _BLOCK
    while block < 8 * mean and block < _BLOCK_MAX:
        block *= 2
    return block


def numba_available() -> bool:
    """Return whether numba can be imported (the fast engine needs it)."""
    return numba is not None


def _require_numba() -> None:
    if numba is None:  # pragma: no cover - numba is installed in the test environment
        raise ImportError(
            "The numba inference engine needs numba: `pip install numba` (or use engine='sklearn')."
        )


# ----------------------------------------------------------------------------------------------------
# Kernels (compiled on first use, cached on disk: lcstack._kernel_cache)
# ----------------------------------------------------------------------------------------------------

# The workqueue threading layer aborts on concurrent parallel launches; tbb and omp do not.
_PARALLEL_LAUNCH_LOCK = threading.Lock()

try:
    import numba
except ImportError:  # pragma: no cover - numba is installed in the test environment
    numba = None

if numba is not None:
    # Module-level functions: numba's on-disk cache does not work for closures.

    # Hot loops index with unsigned integers: numba then skips the negative-index wrap-around it adds
    # to every signed index (a quarter faster here).

    @_simd.jit(nogil=True)
    def _descend(XT, base, root, nodes, nodes_f, bufs, n, leaf, stack, simd):  # pragma: no cover - compiled
        """Set ``leaf[r]``, for r in ``bufs[0, :n]``, to the leaf-vector row that row ``base + r`` reaches.

        The rows are partitioned node by node, depth first: a split reads its feature column for the
        rows that reach it and writes them, branch-free, to the left end or the right end of the same
        range of the other buffer (ping-pong between ``bufs[0]`` and ``bufs[1]``, one per depth parity;
        a subtree only ever writes inside its own range). A node is thus visited once per block, not
        once per row, and no dependent chain of loads runs through a row's path. Small segments (deep
        in the tree) finish with a walk per row instead.
        """
        one = np.uint64(1)
        stack[0, 0] = root
        stack[0, 1] = 0
        stack[0, 2] = n
        stack[0, 3] = 0
        sp = 1
        while sp > 0:
            sp -= 1
            node = np.uint64(stack[sp, 0])
            lo = np.uint64(stack[sp, 1])
            hi = np.uint64(stack[sp, 2])
            p = stack[sp, 3]
            src = bufs[p]
            code = nodes[node, 3]
            if code < 0:  # leaf
                value_row = np.uint32(-1 - code)
                for i in range(lo, hi):
                    leaf[src[i]] = value_row
                continue
            if hi - lo <= _SMALL:
                for i in range(lo, hi):
                    r = src[i]
                    nd = node
                    while nodes[nd, 3] >= 0:
                        x = XT[np.uint64(nodes[nd, 0]), base + r]
                        # NaN: x > t and x <= t are both False; nodes[nd, 3] is 1 if NaN goes left
                        right = (x > nodes_f[nd, 1]) if nodes[nd, 3] == 1 else not (x <= nodes_f[nd, 1])
                        nd = np.uint64(nodes[nd, 2]) if right else nd + one
                    leaf[r] = np.uint32(-1 - nodes[nd, 3])
                continue
            dst = bufs[1 - p]
            col = XT[np.uint64(nodes[node, 0]), base:]
            thr = nodes_f[node, 1]
            nl = lo
            nr = hi - one
            start = lo
            # vector steps (lcstack._simd), then the rest one by one
            if simd == 16:  # masked: the last step takes the last 1-16 rows
                width = np.uint64(16)
                while start < hi:
                    count = min(hi - start, width)
                    n_left = _simd.partition16(src, start, count, col, thr, code == 1, dst, nl, nr)
                    nl += n_left
                    nr -= count - n_left
                    start += count
            elif simd == 8:
                width = np.uint64(8)
                while start + np.uint64(16) <= hi:  # its full-width stores need a gap of 16 rows
                    n_left = _simd.partition8(src, start, col, thr, code == 1, dst, nl, nr)
                    nl += n_left
                    nr -= width - n_left
                    start += width
            if code == 1:  # NaN goes left, where `x > thr` sends it
                for i in range(start, hi):
                    r = src[i]
                    right = np.uint64(col[r] > thr)
                    dst[nl] = r
                    dst[nr] = r
                    nl += one - right
                    nr -= right
            else:  # NaN goes right, where `not x <= thr` sends it
                for i in range(start, hi):
                    r = src[i]
                    right = np.uint64(not (col[r] <= thr))
                    dst[nl] = r
                    dst[nr] = r
                    nl += one - right
                    nr -= right
            if hi > nl:  # right child: nodes[node, 2]
                stack[sp, 0] = nodes[node, 2]
                stack[sp, 1] = nl
                stack[sp, 2] = hi
                stack[sp, 3] = 1 - p
                sp += 1
            if nl > lo:  # left child: the next node (depth-first pre-order)
                stack[sp, 0] = node + one
                stack[sp, 1] = lo
                stack[sp, 2] = nl
                stack[sp, 3] = 1 - p
                sp += 1

    @_simd.jit(nogil=True)
    def _predict_range(  # pragma: no cover - compiled
        XT, start, stop, roots, max_depth, nodes, nodes_f, values, lead_before, gain_after, tol, divisor,
        early, out_idx, out_proba, simd,
    ):  # fmt: skip
        m = np.uint64(stop - start)
        base = np.uint64(start)
        n_classes = np.uint64(values.shape[1])
        bufs = np.empty((2, m), dtype=np.uint32)
        active = np.arange(stop - start).astype(np.uint32)
        leaf = np.empty(m, dtype=np.uint32)
        acc = np.zeros((m, n_classes), dtype=np.float64)
        stack = np.empty((max_depth + 2, 4), dtype=np.int64)
        n_active = m
        walks = 0
        for t in range(roots.shape[0]):
            walks += n_active
            bufs[0, :n_active] = active[:n_active]
            _descend(XT, base, roots[t], nodes, nodes_f, bufs, n_active, leaf, stack, simd)
            # Early exit (predict only): a row whose leading class leads the runner-up by more than the
            # remaining trees can close (each can add at most its max - min leaf-vector spread to any
            # other class) has its argmax settled; the float64 rounding of the sums is within tol. The
            # leader and the runner-up are found in the pass that adds the leaf vector, without branches.
            if not (early and lead_before[t] > gain_after[t] + tol):  # no row can be settled yet
                for i in range(n_active):
                    r = active[i]
                    v = leaf[r]
                    for c in range(n_classes):
                        acc[r, c] += values[v, c]
                continue
            bound = gain_after[t] + tol
            j = np.uint64(0)
            for i in range(n_active):
                r = active[i]
                v = leaf[r]
                first = -np.inf
                second = -np.inf
                for c in range(n_classes):
                    value = acc[r, c] + values[v, c]
                    acc[r, c] = value
                    low = value if value < first else first
                    second = low if low > second else second
                    first = value if value > first else first
                if first - second > bound:
                    best = np.uint64(0)
                    while acc[r, best] != first:  # the first maximum, as np.argmax
                        best += np.uint64(1)
                    out_idx[base + np.uint64(r)] = best
                else:
                    active[j] = r
                    j += np.uint64(1)
            n_active = j
            if n_active == 0:
                break
        want_proba = out_proba.shape[0] > 0
        for i in range(n_active):
            r = active[i]
            row = base + np.uint64(r)
            best = np.uint64(0)
            best_value = acc[r, 0] / divisor
            if want_proba:
                out_proba[row, 0] = best_value
            for c in range(np.uint64(1), n_classes):
                value = acc[r, c] / divisor
                if want_proba:
                    out_proba[row, c] = value
                if value > best_value:  # strict: the first maximum wins, as np.argmax
                    best = c
                    best_value = value
            out_idx[row] = best
        return walks

    @_simd.jit(nogil=True)
    def _predict_votes_range(  # pragma: no cover - compiled
        XT, start, stop, roots, max_depth, nodes, nodes_f, vote_class, divisor, early, out_idx, out_proba,
        simd,
    ):  # fmt: skip
        """:func:`_predict_range` for a forest whose leaf vectors are all one-hot (fully grown trees).

        scikit-learn's float64 sum of one-hot vectors is then an exact vote count, so the kernel counts
        votes in uint16 instead: one increment per row and tree instead of an add per class, with the
        leading and the runner-up count kept up to date as it goes, so the early exit (lead > trees left)
        costs one comparison. ``out_proba`` is ``count / divisor``, bit-identical to scikit-learn's.
        """
        m = np.uint64(stop - start)
        base = np.uint64(start)
        n_trees = np.uint64(roots.shape[0])
        n_classes = np.uint64(out_proba.shape[1])
        bufs = np.empty((2, m), dtype=np.uint32)
        active = np.arange(stop - start).astype(np.uint32)
        leaf = np.empty(m, dtype=np.uint32)
        counts = np.zeros((m, n_classes), dtype=np.uint16)
        first = np.zeros(m, dtype=np.uint16)  # leading count
        second = np.zeros(m, dtype=np.uint16)  # largest count of any other class (= first on a tie)
        leader = np.zeros(m, dtype=np.uint16)
        stack = np.empty((max_depth + 2, 4), dtype=np.int64)
        n_active = m
        walks = 0
        for t in range(n_trees):
            walks += n_active
            bufs[0, :n_active] = active[:n_active]
            _descend(XT, base, roots[t], nodes, nodes_f, bufs, n_active, leaf, stack, simd)
            for i in range(n_active):
                r = active[i]
                c = np.uint64(vote_class[leaf[r]])
                v = counts[r, c] + np.uint16(1)
                counts[r, c] = v
                if c == leader[r]:
                    first[r] = v
                elif v > first[r]:
                    second[r] = first[r]
                    first[r] = v
                    leader[r] = c
                elif v > second[r]:
                    second[r] = v
            left = n_trees - np.uint64(1) - np.uint64(t)
            if early and np.uint64(t) + np.uint64(1) > left:  # a lead needs more votes than trees left
                j = np.uint64(0)
                for i in range(n_active):
                    r = active[i]
                    if np.uint64(first[r] - second[r]) > left:  # first > second: the leader is unique
                        out_idx[base + np.uint64(r)] = leader[r]
                    else:
                        active[j] = r
                        j += np.uint64(1)
                n_active = j
                if n_active == 0:
                    break
        want_proba = out_proba.shape[0] > 0
        for i in range(n_active):
            r = active[i]
            row = base + np.uint64(r)
            best = np.uint64(0)
            for c in range(n_classes):
                if want_proba:
                    out_proba[row, c] = counts[r, c] / divisor
                if counts[r, c] > counts[r, best]:  # strict: the first maximum wins, as np.argmax
                    best = c
            out_idx[row] = best
        return walks

    @_simd.jit(nogil=True)
    def _valid_mask(buf, n_features, ny, nx, sf, sy):  # pragma: no cover - compiled
        """Per pixel, whether all features are finite; ``buf[f * sf + y * sy + x]`` is ``X[f, y, x]``.

        The block is read through a 1-D contiguous view of its memory with unit stride along x, so the
        loops vectorise for a window of a larger array too (numba cannot vectorise a strided 3-D array).
        """
        valid = np.ones((ny, nx), dtype=np.bool_)
        for f in range(np.uint64(n_features)):
            for y in range(np.uint64(ny)):
                row = np.uint64(f * sf + y * sy)
                for x in range(np.uint64(nx)):
                    v = buf[row + x]
                    valid[y, x] &= (v - v) == 0  # False for NaN and +-inf; vectorises, isfinite does not
        return valid

    @_simd.jit(nogil=True)
    def _gather_runs(buf, n_features, ny, nx, sf, sy, valid):  # pragma: no cover - compiled
        """Copy the valid pixels into float32 ``(n_features, n_valid)`` columns, run by run along x."""
        one = np.uint64(1)
        # runs of valid pixels along x: start offset within a feature plane, length, destination column
        run_src = np.empty(ny * ((nx + 1) // 2), dtype=np.uint64)
        run_len = np.empty_like(run_src)
        run_dst = np.empty_like(run_src)
        run_pix = np.empty_like(run_src)  # flat pixel index of the run's first pixel
        n_runs = np.uint64(0)
        k = np.uint64(0)
        for y in range(np.uint64(ny)):
            x = np.uint64(0)
            while x < nx:
                if not valid[y, x]:
                    x += one
                    continue
                x0 = x
                while x < nx and valid[y, x]:
                    x += one
                run_src[n_runs] = y * sy + x0
                run_pix[n_runs] = y * nx + x0
                run_len[n_runs] = x - x0
                run_dst[n_runs] = k
                k += x - x0
                n_runs += one
        index = np.empty(k, dtype=np.int64)
        for j in range(n_runs):
            start = run_pix[j]
            for i in range(run_len[j]):
                index[run_dst[j] + i] = start + i
        columns = np.empty((np.uint64(n_features), k), dtype=np.float32)
        for f in range(np.uint64(n_features)):
            plane = np.uint64(f * sf)
            for j in range(n_runs):
                src = plane + run_src[j]
                dst = run_dst[j]
                for i in range(run_len[j]):
                    columns[f, dst + i] = buf[src + i]
        return columns, index

    @_simd.jit(nogil=True)
    def _transpose(X, XT):  # pragma: no cover - compiled
        """``XT[:] = X.T`` in tiles of 16 rows (7x faster than element by element or NumPy's copy)."""
        n = np.uint64(X.shape[0])
        n_features = np.uint64(X.shape[1])
        tile = np.uint64(16)
        for r0 in range(np.uint64(0), n, tile):
            r1 = min(r0 + tile, n)
            for f in range(n_features):
                for r in range(r0, r1):
                    XT[f, r] = X[r, f]

    @_simd.jit(nogil=True)
    def _predict_block(  # pragma: no cover - compiled
        XT, start, stop, roots, max_depth, nodes, nodes_f, values, vote_class, lead_before, gain_after, tol,
        divisor, early, out_idx, out_proba, simd,
    ):  # fmt: skip
        """Rows ``start:stop`` by vote counting (one-hot leaves) or by adding leaf vectors."""
        if vote_class.shape[0]:
            return _predict_votes_range(
                XT, start, stop, roots, max_depth, nodes, nodes_f, vote_class, divisor, early, out_idx,
                out_proba, simd,
            )  # fmt: skip
        return _predict_range(
            XT, start, stop, roots, max_depth, nodes, nodes_f, values, lead_before, gain_after, tol, divisor,
            early, out_idx, out_proba, simd,
        )  # fmt: skip

    @_simd.jit(nogil=True)
    def _predict_serial(  # pragma: no cover - compiled
        XT, roots, max_depth, nodes, nodes_f, values, vote_class, lead_before, gain_after, tol, divisor,
        early, out_idx, out_proba, block, simd,
    ):  # fmt: skip
        n = XT.shape[1]
        walks = 0
        for b in range((n + block - 1) // block):
            start = b * block
            walks += _predict_block(
                XT, start, min(start + block, n), roots, max_depth, nodes, nodes_f, values, vote_class,
                lead_before, gain_after, tol, divisor, early, out_idx, out_proba, simd,
            )  # fmt: skip
        return walks

    @_simd.jit(parallel=True, nogil=True)
    def _predict_parallel(  # pragma: no cover - compiled
        XT, roots, max_depth, nodes, nodes_f, values, vote_class, lead_before, gain_after, tol, divisor,
        early, out_idx, out_proba, block, simd,
    ):  # fmt: skip
        n = XT.shape[1]
        walks = 0
        for b in numba.prange((n + block - 1) // block):
            start = b * block
            walks += _predict_block(
                XT, start, min(start + block, n), roots, max_depth, nodes, nodes_f, values, vote_class,
                lead_before, gain_after, tol, divisor, early, out_idx, out_proba, simd,
            )  # fmt: skip
        return walks


def _kernels() -> dict[str, Any]:
    _require_numba()
    return {
        "serial": _predict_serial,
        "parallel": _predict_parallel,
        "transpose": _transpose,
        "valid_mask": _valid_mask,
        "gather_runs": _gather_runs,
    }


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


def _preorder(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Node ids in depth-first pre-order, left subtree first: every left child follows its parent.

    scikit-learn's depth-first builder already numbers nodes so (the order is then returned as is); a
    tree grown best-first (``max_leaf_nodes``) is reordered.
    """
    inner = np.flatnonzero(left >= 0)
    if (left[inner] == inner + 1).all():
        return np.arange(left.size)
    order = np.empty(left.size, dtype=np.intp)
    stack, k = [0], 0
    while stack:
        node = stack.pop()
        order[k] = node
        k += 1
        if left[node] >= 0:
            stack.append(right[node])
            stack.append(left[node])
    return order


def _tree_depth(left: np.ndarray, right: np.ndarray, where: str) -> int:
    """Depth of a tree whose children are checked to be a tree (see :func:`check_tree`)."""
    depth = 0
    frontier = np.zeros(1, dtype=np.intp)
    seen = 1
    while True:
        inner = frontier[left[frontier] >= 0]
        if inner.size == 0:
            break
        frontier = np.concatenate([left[inner], right[inner]])
        seen += frontier.size
        depth += 1
        if seen > left.size:  # pragma: no cover - excluded by the parent checks of check_tree
            raise InvalidInputError(f"{where}: its nodes do not form a tree.")
    return depth


def check_tree(tree: Any, n_features: int, n_classes: int, where: str) -> int:
    """Check a fitted ``sklearn.tree._tree.Tree`` before any kernel (numba's or scikit-learn's) walks it.

    Neither kernel checks bounds, so a tampered tree could make them read anywhere (a crash, at best).
    Checked: every split feature is in ``[0, n_features)``; a node has two children or none; children
    lie in the tree and after their parent, and every node but the root has exactly one parent (so there
    is no cycle and every node is reached once); thresholds are finite, or ``+inf`` where missing values go
    right (scikit-learn's split of missing values from the rest); ``missing_go_to_left`` is 0 or 1; the
    leaf values have one output, at least ``n_classes`` columns, and are finite and non-negative.

    Parameters
    ----------
    tree : sklearn.tree._tree.Tree
        The ``tree_`` of a fitted single-output classifier.
    n_features, n_classes : int
        The estimator's ``n_features_in_`` and ``n_classes_``.
    where : str
        What the tree is (named in the error), e.g. ``"level-1 model, tree 3"``.

    Returns
    -------
    int
        The tree's depth, computed from its nodes (``tree.max_depth`` is not trusted).

    Raises
    ------
    InvalidInputError
        Naming the first problem found and the node.

    """
    left = np.asarray(tree.children_left, dtype=np.int64)
    right = np.asarray(tree.children_right, dtype=np.int64)
    n = left.size

    def fail(what: str, nodes: np.ndarray) -> None:
        if nodes.size:
            raise InvalidInputError(
                f"{where}: {what} (node {int(nodes[0])} of {n}, {nodes.size} node(s) in all). The model file "
                "is damaged or was tampered with; train and save the model again."
            )

    if n == 0 or right.size != n or int(getattr(tree, "n_features", n_features)) != n_features:
        raise InvalidInputError(
            f"{where}: the tree has {n} nodes or {tree.n_features} features, not "
            f"{n_features}; train and save the model again."
        )
    ids = np.arange(n)
    inner = left >= 0
    fail("a node has one child", np.flatnonzero(inner != (right >= 0)))
    fail("a child index is out of range", np.flatnonzero(inner & ((left >= n) | (right >= n))))
    fail("a child does not come after its parent", np.flatnonzero(inner & ((left <= ids) | (right <= ids))))
    parents = np.bincount(np.concatenate([left[inner], right[inner]]), minlength=n)
    fail("the root has a parent, or a node has not exactly one", np.flatnonzero(parents != (ids > 0)))
    feature = np.asarray(tree.feature, dtype=np.int64)
    fail(
        f"a split feature is outside 0..{n_features - 1}",
        np.flatnonzero(inner & ((feature < 0) | (feature >= n_features))),
    )
    threshold = np.asarray(tree.threshold, dtype=np.float64)
    nan_left = np.asarray(tree.missing_go_to_left)
    fail("missing_go_to_left is not 0 or 1", np.flatnonzero(inner & (nan_left != 0) & (nan_left != 1)))
    routed = (threshold == np.inf) & (nan_left == 0)  # missing values right, all others left
    fail("a threshold is not finite", np.flatnonzero(inner & ~np.isfinite(threshold) & ~routed))
    value = np.asarray(tree.value)
    if value.ndim != 3 or value.shape[0] != n or value.shape[1] != 1 or value.shape[2] < n_classes:
        raise InvalidInputError(
            f"{where}: leaf values of shape {value.shape}, not ({n}, 1, >= {n_classes}); "
            "train and save the model again."
        )
    fail(
        "a leaf value is negative or not finite",
        np.flatnonzero(
            ~inner & ~(np.isfinite(value[:, 0, :n_classes]) & (value[:, 0, :n_classes] >= 0)).all(axis=1)
        ),
    )
    return _tree_depth(left, right, where)


def check_estimator(est: Any, where: str = "model") -> list[int]:
    """Check a fitted forest or tree classifier's trees and class counts (see :func:`check_tree`).

    Parameters
    ----------
    est : RandomForestClassifier, ExtraTreesClassifier, DecisionTreeClassifier or ExtraTreeClassifier
        Fitted, single-output.
    where : str
        What the estimator is, for the error message.

    Returns
    -------
    list of int
        Per tree, its depth.

    Raises
    ------
    InvalidInputError
        For inconsistent attributes or any tree :func:`check_tree` refuses.

    """
    n_features = getattr(est, "n_features_in_", None)
    n_classes = getattr(est, "n_classes_", None)
    classes = np.asarray(getattr(est, "classes_", []))
    if not isinstance(n_features, int | np.integer) or n_features < 1:
        raise InvalidInputError(f"{where}: n_features_in_ = {n_features!r} is not a positive integer.")
    if not isinstance(n_classes, int | np.integer) or classes.ndim != 1 or classes.size != n_classes:
        raise InvalidInputError(
            f"{where}: n_classes_ = {n_classes!r} but classes_ has shape {classes.shape}."
        )
    trees = [e.tree_ for e in est.estimators_] if hasattr(est, "estimators_") else [est.tree_]
    depths = []
    for i, tree in enumerate(trees):
        label = f"{where}, tree {i}" if len(trees) > 1 else where
        if int(np.asarray(tree.n_classes).ravel()[0]) != n_classes:
            raise InvalidInputError(
                f"{label}: the tree has {tree.n_classes} classes, the estimator {n_classes}."
            )
        depths.append(check_tree(tree, int(n_features), int(n_classes), label))
    return depths


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
        object.__setattr__(self, "_block", _block_rows(self.nodes.shape[0], self.n_trees))

    @property
    def n_trees(self) -> int:
        """Number of trees."""
        return int(self.roots.shape[0])

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
        :func:`lcstack._simd.simd_width`.
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
            not want_proba, out_idx, out_proba, self._block, _simd.simd_width() if simd is None else simd,
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
_calibrated: dict[str, int] = {}
_CALIBRATION_LOCK = threading.Lock()


def _cpu_key() -> str:
    """CPU model (vendor, family, model, name), numba's target CPU, lcstack's and numba's versions."""
    import llvmlite.binding as llvm

    from lcstack import __version__

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
    from lcstack import _kernel_cache

    for folder in _kernel_cache.cache_dirs(__file__):
        if _kernel_cache._writable(folder):
            return os.path.join(folder, _CALIBRATION_FILE)
    return None  # pragma: no cover - no writable folder: measured in every process


def _synthetic_forest(seed: int = 20) -> tuple[FastForest, np.ndarray]:
    """Build a fixed forest (4 complete trees of depth 14 on 24 features) and 65 536 rows to time it on.

    Deep trees and the largest blocks: the memory-bound case, where the steps differ most (on the noisy
    cube of ``benchmarks/bench_inference.py`` the AVX2 step ran 1.25-1.35x faster than the scalar loop on
    an AMD Zen 3, which this forest reproduces, while on shallow trees the two were within 5-10 %).
    """
    rng = np.random.default_rng(seed)
    n_trees, depth, n_features, n_classes = 4, 14, 24, 6
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
    rows = rng.normal(size=(n_features, 65536)).astype(np.float32)
    return forest, rows


def _measure_steps(widths: tuple[int, ...], rounds: int = 7) -> dict[int, float]:
    """Best-of-``rounds`` seconds per partition step on :func:`_synthetic_forest`, steps interleaved."""
    import time

    forest, rows = _synthetic_forest()
    best = dict.fromkeys(widths, float("inf"))
    reference = forest._run(rows, 1, False, feature_major=True, simd=0)[0]  # also compiles the kernel
    for _ in range(rounds):
        for width in widths:
            start = time.perf_counter()
            idx = forest._run(rows, 1, False, feature_major=True, simd=width)[0]
            best[width] = min(best[width], time.perf_counter() - start)
            if not np.array_equal(idx, reference):  # pragma: no cover - a broken step is never chosen
                raise RuntimeError(f"the {width}-row partition step disagrees with the scalar loop")
    return best


_CALIBRATION_MARGIN = 0.10


def calibrated_width() -> int:
    """Rows per partition step measured fastest on this CPU (``LCSTACK_SIMD=auto``).

    Measured once per CPU model (vendor, family, model, numba's target CPU), lcstack version and numba
    version on a fixed synthetic forest (:func:`_synthetic_forest`, about a second), kept in
    ``lcstack-partition-step.json`` beside the kernel cache (:mod:`lcstack._kernel_cache`) and logged
    once per process. With only the scalar loop compiled in (no AVX2, or ``NUMBA_CPU_NAME=generic``) it is
    0 without measuring. The widest step whose time is within 10 % of the fastest is chosen, so noise on a
    busy machine does not trade a wide step for a marginally faster narrow one.

    Returns
    -------
    int
        One of :func:`lcstack._simd.available_widths`.

    """
    widths = _simd.available_widths()
    if len(widths) == 1:
        return widths[0]
    key = _cpu_key()
    if key in _calibrated:
        return _calibrated[key]
    with _CALIBRATION_LOCK:
        if key not in _calibrated:
            _calibrated[key] = _calibrate(key, widths)
    return _calibrated[key]


def _calibrate(key: str, widths: tuple[int, ...]) -> int:
    import json

    path = _calibration_path()
    table: dict[str, Any] = {}
    if path is not None and os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                table = json.load(f)
        except (OSError, ValueError):
            table = {}
    entry = table.get(key)
    if isinstance(entry, dict) and entry.get("width") in widths:
        logger.info("partition step: %d rows (measured fastest on this CPU; %s)", entry["width"], path)
        return int(entry["width"])
    seconds = _measure_steps(widths)
    # The widest step within _CALIBRATION_MARGIN of the fastest: a short measurement on a loaded machine can
    # favour a narrower step by a few per cent, while on deep forests the wider step wins by far more.
    fastest = min(seconds.values())
    width = max(w for w in widths if seconds[w] <= fastest * (1.0 + _CALIBRATION_MARGIN))
    table[key] = {"width": width, "seconds": {str(w): round(t, 5) for w, t in seconds.items()}}
    logger.info(
        "partition step: %d rows, the fastest on this CPU (seconds per width: %s; LCSTACK_SIMD forces one)",
        width,
        ", ".join(f"{w}: {t:.3f}" for w, t in seconds.items()),
    )
    if path is not None:
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(table, f, indent=1)
            os.replace(tmp, path)
        except OSError:  # pragma: no cover - measured again in the next process
            logger.debug("could not write %s", path)
    return width


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


def valid_columns(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gather the pixels of a ``(feature, y, x)`` block whose features are all finite.

    Parameters
    ----------
    X : ndarray of shape (n_features, ny, nx)
        Any real dtype and memory layout; a window of a larger array is read in place.

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
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float32)  # what scikit-learn's predict does to any other dtype
    if X.size == 0:
        return np.empty((n_features, 0), dtype=np.float32), np.empty(0, dtype=np.int64)
    item = X.itemsize
    sf, sy, sx = X.strides
    if sx != item or sf % item or sy % item or sf < 0 or sy < 0:
        X = np.ascontiguousarray(X)
        sf, sy, sx = X.strides
    # A 1-D contiguous view from the first element to the last: the kernels index it with unit stride
    # along x, whatever the window's row and plane strides.
    span = (n_features - 1) * (sf // item) + (ny - 1) * (sy // item) + nx
    buf = np.lib.stride_tricks.as_strided(X, shape=(span,), strides=(item,), writeable=False)
    kernels = _kernels()
    valid = kernels["valid_mask"](buf, n_features, ny, nx, sf // item, sy // item)
    if X.dtype == np.float32 and X.flags.c_contiguous and valid.all():
        return X.reshape(n_features, ny * nx), np.arange(ny * nx, dtype=np.int64)
    return kernels["gather_runs"](buf, n_features, ny, nx, sf // item, sy // item, valid)


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
    if not assume_finite and not np.isfinite(X).all():
        raise InvalidInputError(
            "X contains NaN or inf; predict only on valid pixels and mark the others as nodata "
            "(lcstack.classify does)."
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
        Features of valid (NaN-free) pixels, validated as ``predict_levels`` does; with
        ``feature_major=True`` an array of shape ``(n_features, n_samples)``.
    n_threads : int, optional
        See :meth:`FastForest.predict`.
    feature_major : bool, optional
        See :meth:`FastForest.predict`.
    assume_finite : bool, optional
        With ``feature_major=True``, skip the check for NaN and inf (a pass over all of ``X``): for
        callers that already hold only valid pixels, such as the columns of :func:`valid_columns`.

    Returns
    -------
    level1 : ndarray of shape (n_samples,)
        Category codes.
    level2 : ndarray of int64, shape (n_samples,)
        Subcategory codes; 1 (unclassified) where the predicted category has no level-2 model.

    """
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
    from lcstack.model import predict_proba_levels

    def predict_proba(est: Any, features: Any) -> np.ndarray:
        return fast_predict_proba(est, features, n_threads=n_threads, feature_major=feature_major)

    if not feature_major:
        return model.predict_proba_levels(X, predict_proba=predict_proba)
    return predict_proba_levels(model, *_feature_major_input(model, X, assume_finite), predict_proba)
