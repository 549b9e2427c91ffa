"""Compiled tree-ensemble inference: scikit-learn's predictions, bit for bit, from a numba kernel.

A fitted :class:`~sklearn.ensemble.RandomForestClassifier`, :class:`~sklearn.ensemble.ExtraTreesClassifier`,
:class:`~sklearn.tree.DecisionTreeClassifier` or :class:`~sklearn.tree.ExtraTreeClassifier` is flattened
once into NumPy arrays (:meth:`FastForest.from_estimator`) and predicted by a ``numba.njit(nogil=True)``
kernel (``parallel=True`` for the multi-threaded variant), cached on disk by :mod:`lcstack.forest._cache`
(keyed on this module's, :mod:`lcstack.forest._simd`'s and the cache module's sources).

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

How it walks (``_descend``, ``_predict_range``): pixels come in blocks of 1 024 to 65 536 rows (sized to the
CPU's L2 cache, more for deeper trees, :func:`_block_rows`), feature-major (``(n_features, n_pixels)``, the
layout of a ``(feature, y, x)`` raster block, so classification never transposes them). For each tree, the
block's rows are partitioned node by node, depth first: a split reads one contiguous feature column for the
rows that reach it and writes them, branch-free, to its left or right child's range; on CPUs with AVX-512
(AVX2) 16 (8) rows at a time (one gather, one compare, two compressed stores: :mod:`lcstack.forest._simd`),
where that step measures faster than the scalar loop on this CPU for the forest's shape
(:func:`calibrated_width`). A node is visited once per block instead of once per row, and no chain of
dependent loads runs through one row's path. Nodes are stored in the order the walk visits them (depth-first
pre-order, a subtree in one run of memory), which on deep trees makes the walk a quarter faster than
breadth-first storage. When every leaf vector is one-hot (fully grown trees), scikit-learn's float64 sums
are exact vote counts, so the kernel counts votes in uint16 instead of adding vectors
(``_predict_votes_range``). For ``predict`` (not ``predict_proba``), a row is dropped from the walk once its
leading class leads the runner-up by more than the remaining trees could close (each tree can move a class
against another by at most the spread of its leaf vectors) plus a margin for float64 rounding, so its argmax
is settled and equals scikit-learn's; the others go on to the last tree. On clean data about half the trees
are walked per pixel (a unanimous vote must exceed the trees left).

A forest fitted with ``n_jobs > 1`` adds the trees in whatever order its joblib threads finish, so its own
probabilities can differ from run to run in the last bit; the kernel always gives the ``n_jobs=1`` result.

The compiled arrays are cached per estimator object (a :class:`weakref.WeakKeyDictionary`, rebuilt when
the estimator is refitted), so the model loaded once per worker process by :mod:`lcstack.classify` is
compiled once per process too. Everything here is thread-safe: compilation is under a lock and the kernels
release the GIL and share no mutable state.
"""

from lcstack.forest.checks import check_estimator, check_tree
from lcstack.forest.engine import FastForest, calibrated_width, simd_width
from lcstack.forest.kernels import numba_available
from lcstack.forest.predict import (
    compile_estimator,
    fast_predict,
    fast_predict_proba,
    kept_columns,
    kept_pixels,
    valid_columns,
)

__all__ = [
    "FastForest",
    "calibrated_width",
    "check_estimator",
    "check_tree",
    "compile_estimator",
    "fast_predict",
    "fast_predict_proba",
    "kept_columns",
    "kept_pixels",
    "numba_available",
    "simd_width",
    "valid_columns",
]
