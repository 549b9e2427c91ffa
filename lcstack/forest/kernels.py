"""The numba kernels of the forest engine: the partitioned walk, vote counting, layout helpers."""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from typing import Any

import numpy as np

from lcstack.forest import _simd

logger = logging.getLogger(__name__)

#: Level-2 code of a pixel whose category has no level-2 model (same as :data:`lcstack.model.UNCLASSIFIED`).
UNCLASSIFIED = 1

#: Rows per work item, at most (see :func:`_block_rows`). A block is walked one tree after the other;
#: blocks are what the parallel kernel spreads over threads.
_BLOCK = 8192
#: Rows per work item of deep trees, at most.
_BLOCK_MAX = 65536
#: Rows per work item, at least.
_BLOCK_MIN = 1024
#: Level-2 cache assumed where the CPU's cannot be read (2 MiB: the Intel Xeon of RESULTS.md).
_L2_DEFAULT = 2 << 20
#: Segments of at most this many rows leave the partition and finish with a walk per row.
_SMALL = 4


@functools.cache
def _l2_bytes() -> int:
    """Return CPU 0's level-2 (data or unified) cache in bytes, from sysfs (else :data:`_L2_DEFAULT`)."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for index in sorted(os.listdir(root)):
            folder = os.path.join(root, index)
            with open(os.path.join(folder, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(folder, "type")) as f:
                kind = f.read().strip()
            if level == "2" and kind in ("Unified", "Data"):
                with open(os.path.join(folder, "size")) as f:
                    size = f.read().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return _L2_DEFAULT


def _block_range(n_features: int, l2: int | None = None) -> tuple[int, int]:
    """Rows per block for the shallowest and the deepest trees, from the L2 cache and the feature count.

    The smallest block is the power of two nearest to the rows whose features fill the L2 cache
    (``l2 / (4 * n_features)``, within ``[_BLOCK_MIN, _BLOCK]``), the largest 8 times that (at most
    :data:`_BLOCK_MAX`). The block sizes measured per CPU family are in benchmarks/RESULTS.md ("Inference").
    """
    rows = (_l2_bytes() if l2 is None else l2) / (4 * max(n_features, 1))
    low = 1 << max(0, round(math.log2(max(rows, 1.0))))
    low = min(max(low, _BLOCK_MIN), _BLOCK)
    return low, min(8 * low, _BLOCK_MAX)


def _block_rows(n_nodes: int, n_trees: int, n_features: int = 66, l2: int | None = None) -> int:
    """Rows per block for a forest: 8 per node of its mean tree, a power of two in :func:`_block_range`.

    A block's rows split up as they go down a tree; with about 16 rows per leaf (a tree has about as
    many leaves as half its nodes) the partition steps stay long enough for the vector steps and the
    cost per node (stack, branches) stays small beside the cost per row. Shallow trees keep the
    minimum, whose columns stay in the CPU's L2 cache (figures: benchmarks/RESULTS.md, "Inference").
    """
    mean = n_nodes / max(n_trees, 1)
    block, largest = _block_range(n_features, l2)
    while block < 8 * mean and block < largest:
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
# Kernels (compiled on first use, cached on disk: lcstack.forest._cache)
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

        Long because it is one compiled kernel whose explicit stack and loop state stay in registers.
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
    def _kept_mask(buf, n_features, ny, nx, sf, sy, seasonal):  # pragma: no cover - compiled
        """Per pixel: some ``seasonal`` feature is not NaN, and no feature is infinite (one pass).

        The block is read as in :func:`_valid_mask`; ``seasonal[f]`` is 1 where feature ``f`` counts as an
        observation (a feature of a season), 0 elsewhere (terrain).
        """
        seen = np.zeros((ny, nx), dtype=np.bool_)
        bad = np.zeros((ny, nx), dtype=np.bool_)
        for f in range(np.uint64(n_features)):
            counts = seasonal[f] != 0
            for y in range(np.uint64(ny)):
                row = np.uint64(f * sf + y * sy)
                for x in range(np.uint64(nx)):
                    v = buf[row + x]
                    number = v == v
                    seen[y, x] |= counts & number
                    bad[y, x] |= number & ((v - v) != 0)  # inf - inf is NaN; vectorises, isinf does not
        return seen & ~bad

    @_simd.jit(nogil=True)
    def _copy_kept(buf, n_features, ny, nx, sf, sy, seasonal):  # pragma: no cover - compiled
        """Every pixel as float32 ``(n_features, ny * nx)`` columns and :func:`_kept_mask`, in one pass."""
        columns = np.empty((np.uint64(n_features), np.uint64(ny * nx)), dtype=np.float32)
        seen = np.zeros(ny * nx, dtype=np.bool_)
        bad = np.zeros(ny * nx, dtype=np.bool_)
        for f in range(np.uint64(n_features)):
            counts = seasonal[f] != 0
            for y in range(np.uint64(ny)):
                row = np.uint64(f * sf + y * sy)
                out = np.uint64(y * nx)
                for x in range(np.uint64(nx)):
                    v = buf[row + x]
                    columns[f, out + x] = v
                    number = v == v
                    seen[out + x] |= counts & number
                    bad[out + x] |= number & ((v - v) != 0)
        return columns, seen & ~bad

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
        """``XT[:] = X.T`` in tiles of 16 rows (faster than element by element or NumPy's copy)."""
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
        "kept_mask": _kept_mask,
        "copy_kept": _copy_kept,
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
