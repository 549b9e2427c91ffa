"""Validation of a fitted tree ensemble before any kernel runs on it (untrusted model files)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lcstack.errors import InvalidInputError

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
