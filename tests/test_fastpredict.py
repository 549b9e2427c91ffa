"""The numba tree kernel gives scikit-learn's predictions on every row, and classify() uses it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask
import numpy as np
import pytest
import xarray as xr
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

from lcstack import forest
from lcstack.classify import classify, fast_predict_levels, fast_predict_proba_levels, predict_block
from lcstack.errors import InvalidInputError
from lcstack.forest import FastForest, checks, compile_estimator, engine, fast_predict, fast_predict_proba  # noqa: E402
from lcstack.forest import predict as fpredict
from lcstack.model import HierarchicalClassifier

pytest.importorskip("numba")

from lcstack.forest import _simd  # noqa: E402


@pytest.fixture(params=["avx512", "avx2", "scalar"])
def partition_step(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with each partition step of the kernels (``LCSTACK_SIMD``) this CPU has."""
    if request.param == "avx512" and not _simd.AVX512:
        pytest.skip("this CPU (or numba's target) has no AVX-512")
    if request.param == "avx2" and not _simd.AVX2:
        pytest.skip("this CPU (or numba's target) has no AVX2")
    monkeypatch.setenv("LCSTACK_SIMD", {"avx512": "avx512", "avx2": "avx2", "scalar": "0"}[request.param])
    assert engine.simd_width() == {"avx512": 16, "avx2": 8, "scalar": 0}[request.param]
    return request.param


def _data(
    seed: int, n: int, n_features: int, n_classes: int, *, discrete: bool
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if discrete:
        # few distinct values: many equal thresholds, duplicated rows and tied votes
        X = rng.integers(0, 4, size=(n, n_features)).astype(np.float32)
    else:
        X = rng.normal(size=(n, n_features)).astype(np.float32)
    y = (rng.integers(0, n_classes, size=n) + (X[:, 0] > 0.5)) % n_classes
    return X, y


def _probe(X: np.ndarray, seed: int) -> np.ndarray:
    """Rows on, just below and just above training values (where float32/float64 rounding bites)."""
    rng = np.random.default_rng(seed)
    base = X[rng.integers(0, X.shape[0], size=3000)]
    mids = (base + X[rng.integers(0, X.shape[0], size=3000)]) / np.float32(2)
    return np.concatenate(
        [base, np.nextafter(base, np.float32(np.inf)), np.nextafter(base, np.float32(-np.inf)), mids]
    )


ESTIMATORS = [
    pytest.param(lambda: RandomForestClassifier(n_estimators=7, random_state=0), id="rf"),
    pytest.param(
        lambda: RandomForestClassifier(n_estimators=5, max_leaf_nodes=16, random_state=1), id="rf-mln"
    ),
    pytest.param(lambda: ExtraTreesClassifier(n_estimators=6, random_state=2), id="et"),
    pytest.param(lambda: DecisionTreeClassifier(max_leaf_nodes=40, random_state=3), id="dt-mln"),
    pytest.param(lambda: DecisionTreeClassifier(random_state=3), id="dt"),
    pytest.param(lambda: ExtraTreeClassifier(random_state=4), id="extratree"),
    pytest.param(
        lambda: RandomForestClassifier(n_estimators=4, class_weight="balanced_subsample", random_state=5),
        id="rf-weighted",
    ),
]


@pytest.mark.parametrize("make", ESTIMATORS)
@pytest.mark.parametrize(("n_classes", "discrete"), [(2, True), (8, False), (37, True)])
def test_predictions_identical_to_sklearn(
    make: Any, n_classes: int, discrete: bool, partition_step: str
) -> None:
    X, y = _data(n_classes, 600, 6, n_classes, discrete=discrete)
    est = make().fit(X, y)
    ff = FastForest.from_estimator(est)
    probe = _probe(X, n_classes)
    np.testing.assert_array_equal(ff.predict(probe), est.predict(probe))
    # bit-identical probabilities: same float64 sums in the same order
    assert np.array_equal(ff.predict_proba(probe), est.predict_proba(probe))
    assert np.array_equal(ff.predict(probe, n_threads=2), est.predict(probe))


@pytest.mark.parametrize("min_samples_leaf", [1, 8], ids=["one-hot-leaves-vote-counts", "mixed-leaves"])
def test_early_exit_skips_settled_rows_and_keeps_every_prediction(
    min_samples_leaf: int, partition_step: str
) -> None:
    # Separable classes plus a band of ambiguous rows: most rows settle after about half of the trees,
    # the ambiguous ones need them all; predictions must match sklearn on both, over several blocks.
    # Fully grown trees have one-hot leaves (the kernel counts votes); larger leaves mix classes (it adds
    # float64 leaf vectors).
    rng = np.random.default_rng(0)
    n_classes = 5
    centres = rng.normal(scale=4.0, size=(n_classes, 6))
    y = rng.integers(0, n_classes, 4000)
    X = (centres[y] + rng.normal(size=(4000, 6))).astype(np.float32)
    est = RandomForestClassifier(n_estimators=40, min_samples_leaf=min_samples_leaf, random_state=0)
    est.fit(X, y)
    clear = (centres[rng.integers(0, n_classes, 9000)] + rng.normal(size=(9000, 6))).astype(np.float32)
    a, b = rng.integers(0, n_classes, 9000), rng.integers(0, n_classes, 9000)
    mixed = ((centres[a] + centres[b]) / 2 + rng.normal(scale=0.3, size=(9000, 6))).astype(np.float32)
    probe = np.concatenate([clear, mixed, _probe(X, 0)])
    ff = FastForest.from_estimator(est)
    assert probe.shape[0] > 2 * ff._block
    assert (ff._vote_class.size > 0) == (min_samples_leaf == 1)
    idx, _, walks = ff._run(probe, 1, want_proba=False)
    np.testing.assert_array_equal(ff.classes_[idx], est.predict(probe))
    np.testing.assert_array_equal(ff.predict(probe, n_threads=2), est.predict(probe))
    full = probe.shape[0] * ff.n_trees
    assert walks < 0.8 * full, "the early exit should skip the trees of settled rows"
    if min_samples_leaf == 1:  # a unanimous lead of one vote per tree must exceed the trees left
        assert walks > 0.5 * full
    _, proba, walks_proba = ff._run(probe, 1, want_proba=True)
    assert walks_proba == full  # probabilities need every tree
    assert np.array_equal(proba, est.predict_proba(probe))


def test_vote_counting_only_for_one_hot_leaves() -> None:
    X, y = _data(5, 800, 5, 4, discrete=False)
    grown = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    ff = FastForest.from_estimator(grown)
    np.testing.assert_array_equal(ff._vote_class, ff.values.argmax(axis=1))
    weighted = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(X, y)
    assert FastForest.from_estimator(weighted)._vote_class.size == 0
    probe = _probe(X, 5)
    for est in (grown, weighted):
        assert np.array_equal(FastForest.from_estimator(est).predict_proba(probe), est.predict_proba(probe))


@pytest.mark.parametrize("max_leaf_nodes", [None, 25], ids=["depth-first", "best-first"])
def test_nodes_are_stored_in_preorder(max_leaf_nodes: int | None) -> None:
    X, y = _data(6, 500, 4, 3, discrete=False)
    tree = DecisionTreeClassifier(max_leaf_nodes=max_leaf_nodes, random_state=0).fit(X, y).tree_
    left, right = tree.children_left, tree.children_right
    order = checks._preorder(left, right)
    np.testing.assert_array_equal(np.sort(order), np.arange(tree.node_count))
    position = np.empty_like(order)
    position[order] = np.arange(order.size)
    inner = np.flatnonzero(left >= 0)
    np.testing.assert_array_equal(position[left[inner]], position[inner] + 1)  # left child follows
    # a subtree is contiguous: the right child comes right after the whole left subtree
    size = np.ones(tree.node_count, dtype=int)
    for node in order[::-1]:
        if left[node] >= 0:
            size[node] += size[left[node]] + size[right[node]]
    np.testing.assert_array_equal(position[right[inner]], position[inner] + 1 + size[left[inner]])
    if max_leaf_nodes is None:  # scikit-learn's depth-first builder numbers nodes in pre-order already
        np.testing.assert_array_equal(order, np.arange(tree.node_count))


def test_early_exit_bound_uses_the_leaf_spread() -> None:
    X, y = _data(4, 500, 4, 3, discrete=False)
    pure = RandomForestClassifier(n_estimators=6, random_state=0).fit(X, y)
    np.testing.assert_array_equal(FastForest.from_estimator(pure).spread, np.ones(6))  # one-hot leaves
    shallow = RandomForestClassifier(n_estimators=6, max_depth=1, random_state=0).fit(X, y)
    ff = FastForest.from_estimator(shallow)
    assert ((ff.spread > 0) & (ff.spread < 1)).all()  # mixed leaves move the vote by less than 1
    probe = _probe(X, 4)
    np.testing.assert_array_equal(ff.predict(probe), shallow.predict(probe))
    one_class = RandomForestClassifier(n_estimators=3, random_state=0).fit(X, np.zeros(len(X), int))
    assert (FastForest.from_estimator(one_class).spread == 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_valid_columns_gathers_finite_pixels_of_any_layout(dtype: Any) -> None:
    rng = np.random.default_rng(0)
    big = (rng.normal(size=(5, 40, 50)) * 100).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        big[1, 3, 4] = np.nan
        big[4, 10, :7] = np.inf
        big[0, 20, 20] = -np.inf
    window = big[:, 5:35:2, 3:47]  # a strided view, read in place
    columns, index = fpredict.valid_columns(window)
    flat = window.reshape(5, -1)
    keep = np.isfinite(flat.astype(np.float64)).all(axis=0)
    np.testing.assert_array_equal(index, np.flatnonzero(keep))
    assert columns.dtype == np.float32 and columns.flags.c_contiguous
    np.testing.assert_array_equal(columns, flat[:, keep].astype(np.float32))
    with pytest.raises(InvalidInputError, match="feature, y, x"):
        fpredict.valid_columns(flat)


@pytest.mark.parametrize(
    "view",
    [
        lambda a: a[:, ::-1, :],  # negative row stride
        lambda a: a[:, :, ::-1],  # negative x stride
        lambda a: a.transpose(0, 2, 1),  # x is not the fastest axis
        lambda a: a[::2, 1:, 2:-1],  # every stride and offset off the origin
        lambda a: np.broadcast_to(a[:, 6:7, :], a.shape),  # row stride 0: every line the same
    ],
)
def test_valid_columns_reads_any_strides(view: Any) -> None:
    rng = np.random.default_rng(1)
    big = rng.normal(size=(6, 30, 20)).astype(np.float32)
    big[2, 7, :] = np.nan  # a whole line invalid
    big[3, :, 5] = np.nan
    big[0, 11, 12] = np.inf
    window = view(big)
    columns, index = fpredict.valid_columns(window)
    flat = np.ascontiguousarray(window).reshape(window.shape[0], -1)
    keep = np.isfinite(flat).all(axis=0)
    np.testing.assert_array_equal(index, np.flatnonzero(keep))
    np.testing.assert_array_equal(columns, flat[:, keep])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
@pytest.mark.parametrize(
    "view",
    [lambda a: a, lambda a: a[:, ::-1, 2:-1], lambda a: a.transpose(0, 2, 1), lambda a: a[::2, 1:, :]],
)
def test_kept_pixels_is_numpys_observed_and_not_infinite(dtype: Any, view: Any) -> None:
    from lcstack.classify import feature_seasons, predict_block

    rng = np.random.default_rng(3)
    big = (rng.normal(size=(6, 30, 20)) * 100).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        big[:4, 2, :] = np.nan  # every seasonal feature missing: not observed
        big[:2, 5, 3:9] = np.nan  # one season missing: still observed
        big[4:, 6, :] = np.nan  # terrain missing only: observed
        big[:4, 8, 4] = np.nan
        big[5, 8, 4] = 7.0  # observed by terrain alone does not count
        big[1, 12, 6] = np.inf
        big[5, 13, 7] = -np.inf  # an infinite terrain feature drops the pixel
        big[2, 14, :] = np.nan
        big[3, 14, :] = np.inf
    window = view(big)
    seasonal = np.array([True, True, True, True, False, False])[: window.shape[0]]
    X = window.astype(np.float64)
    expected = (~np.isnan(X[seasonal])).any(axis=0) & ~np.isinf(X).any(axis=0)
    np.testing.assert_array_equal(fpredict.kept_pixels(window, seasonal), expected)
    np.testing.assert_array_equal(
        fpredict.kept_pixels(window), (~np.isnan(X)).any(axis=0) & ~np.isinf(X).any(axis=0)
    )
    names = ["spring_red", "spring_nir", "summer_red", "summer_nir", "elevation", "slope"][: window.shape[0]]
    seasons = feature_seasons(names)
    np.testing.assert_array_equal(seasons >= 0, seasonal)
    # gathered in one pass (a window) or masked in place (a C-contiguous float32 block): as valid_columns
    for block in (window, np.ascontiguousarray(window, dtype=np.float32)):
        columns, index, keep = fpredict.kept_columns(block, seasonal)
        want_columns, want_index = fpredict.valid_columns(block, expected)
        np.testing.assert_array_equal(keep, expected)
        np.testing.assert_array_equal(index, want_index)
        np.testing.assert_array_equal(columns, want_columns)
        assert columns.dtype == np.float32 and columns.flags.c_contiguous
    # predict_block keeps the same pixels on both engines
    Xtr = rng.normal(size=(200, window.shape[0])) * 100
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(Xtr, rng.integers(1, 4, 200))
    codes = {e: predict_block(window, forest, engine=e, seasons=seasons) for e in ("numba", "sklearn")}
    np.testing.assert_array_equal(codes["numba"], codes["sklearn"])
    with pytest.raises(InvalidInputError, match="season flags"):
        fpredict.kept_pixels(window, seasonal[:-1])


def test_valid_columns_of_a_valid_contiguous_float32_block_is_the_block_itself() -> None:
    block = np.random.default_rng(2).normal(size=(4, 8, 9)).astype(np.float32)
    columns, index = fpredict.valid_columns(block)
    assert np.shares_memory(columns, block) and columns.shape == (4, 72)
    np.testing.assert_array_equal(index, np.arange(72))
    block[1, 2, 3] = np.nan  # one invalid pixel: a gathered copy without it
    columns, index = fpredict.valid_columns(block)
    assert not np.shares_memory(columns, block) and columns.shape == (4, 71)
    assert 2 * 9 + 3 not in index
    empty_columns, empty_index = fpredict.valid_columns(np.empty((4, 0, 3), np.float32))
    assert empty_columns.shape == (4, 0) and empty_index.size == 0


def test_feature_major_input_gives_the_same_predictions() -> None:
    model, X = _hierarchical()
    ff = compile_estimator(model.estimator_level1_)
    columns = np.ascontiguousarray(X.T)
    np.testing.assert_array_equal(ff.predict(columns, feature_major=True), ff.predict(X))
    np.testing.assert_array_equal(
        ff.predict_proba(columns, feature_major=True), model.estimator_level1_.predict_proba(X)
    )
    l1, l2 = fast_predict_levels(model, columns, feature_major=True)
    e1, e2 = model.predict_levels(X)
    np.testing.assert_array_equal(l1, e1)
    np.testing.assert_array_equal(l2, e2)
    with pytest.raises(InvalidInputError, match="feature_major=True"):
        ff.predict(X, feature_major=True)
    with pytest.raises(InvalidInputError, match="feature_major=True"):
        fast_predict_levels(model, X, feature_major=True)
    missing = columns.copy()
    missing[0, 5] = np.nan  # a missing feature is routed as scikit-learn routes it
    m1, m2 = fast_predict_levels(model, missing, feature_major=True)
    e1, e2 = model.predict_levels(np.ascontiguousarray(missing.T))
    np.testing.assert_array_equal(m1, e1)
    np.testing.assert_array_equal(m2, e2)
    bad = columns.copy()
    bad[0, 5] = np.inf
    with pytest.raises(InvalidInputError, match="inf"):
        fast_predict_levels(model, bad, feature_major=True)


@pytest.mark.parametrize("n_estimators", [1, 2, 5])
def test_tied_votes_pick_the_first_class(n_estimators: int) -> None:
    # every cell of a 3x3 grid holds two classes in equal numbers: leaves of exactly 0.5 / 0.5
    cells = np.array([(a, b) for a in range(3) for b in range(3)], dtype=np.float32)
    X = np.repeat(cells, 10, axis=0)
    y = np.array([[c % 4, (c + 2) % 4] * 5 for c in range(9)]).ravel()
    for est in (
        RandomForestClassifier(n_estimators=n_estimators, bootstrap=False, max_features=None, random_state=0),
        ExtraTreesClassifier(n_estimators=n_estimators, random_state=0),
    ):
        est.fit(X, y)
        proba = est.predict_proba(cells)
        top = np.sort(proba, axis=1)[:, -2:]
        assert (top[:, 0] == top[:, 1]).any(), "the grid should give tied votes"
        np.testing.assert_array_equal(fast_predict(est, cells), est.predict(cells))
        assert np.array_equal(compile_estimator(est).predict_proba(cells), proba)


def test_float64_input_string_labels_and_many_trees() -> None:
    X, y = _data(11, 800, 5, 6, discrete=False)
    labels = np.array(["water", "forest", "crop", "urban", "bare", "grass"])[y]
    est = RandomForestClassifier(n_estimators=40, max_leaf_nodes=64, random_state=0).fit(X, labels)
    # float64 values that do not round-trip through float32: both sides cast to float32 first
    X64 = _probe(X, 1).astype(np.float64) + 1e-9
    pred = fast_predict(est, X64)
    assert pred.dtype == est.classes_.dtype
    np.testing.assert_array_equal(pred, est.predict(X64))


def test_missing_values_follow_missing_go_to_left(partition_step: str) -> None:
    X, y = _data(3, 500, 4, 3, discrete=False)
    X[::7, 1] = np.nan
    X[::11, 2] = np.nan
    for est in (
        DecisionTreeClassifier(random_state=0),
        RandomForestClassifier(n_estimators=5, random_state=0),
    ):
        est.fit(X, y)
        probe = _probe(np.nan_to_num(X), 2)
        probe[::3, 1] = np.nan
        probe[::5, 2] = np.nan
        np.testing.assert_array_equal(fast_predict(est, probe), est.predict(probe))


def test_single_class_and_empty_input() -> None:
    X = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    est = RandomForestClassifier(n_estimators=3, random_state=0).fit(X, np.full(20, 7))
    np.testing.assert_array_equal(fast_predict(est, X), est.predict(X))
    assert fast_predict(est, X[:0]).shape == (0,)
    with pytest.raises(InvalidInputError, match="expects"):
        fast_predict(est, X[:, :2])


def test_threshold_floor_gives_float64_decision() -> None:
    t = np.array([0.1, -0.1, 1e-45, 3.5e38, -3.5e38, 2.0, 1 / 3], dtype=np.float64)
    t32 = checks._float32_floor(t)
    with np.errstate(over="ignore"):
        near = t.astype(np.float32)
    down, up = np.nextafter(near, np.float32(-np.inf)), np.nextafter(near, np.float32(np.inf))
    candidates = np.concatenate([down, near, up])
    for x in candidates:
        np.testing.assert_array_equal(x <= t32, np.float64(x) <= t)


def test_compiled_once_per_estimator_and_refreshed_on_refit() -> None:
    X, y = _data(5, 300, 4, 3, discrete=False)
    est = RandomForestClassifier(n_estimators=3, random_state=0, warm_start=True).fit(X, y)
    first = compile_estimator(est)
    assert first is compile_estimator(est)
    est.set_params(n_estimators=6).fit(X, y)  # warm start grows estimators_ in place
    grown = compile_estimator(est)
    assert grown is not first and grown.n_trees == 6
    np.testing.assert_array_equal(grown.predict(X), est.predict(X))
    est.set_params(warm_start=False, n_estimators=2).fit(X, (y + 1) % 3)
    refit = compile_estimator(est)
    assert refit.n_trees == 2
    np.testing.assert_array_equal(refit.predict(X), est.predict(X))


def test_other_estimators_fall_back_to_their_predict() -> None:
    X, y = _data(6, 200, 4, 3, discrete=False)

    class MyForest(RandomForestClassifier):
        def predict(self, X: Any) -> np.ndarray:
            return np.zeros(len(X), dtype=int)

    for est in (LogisticRegression().fit(X, y), MyForest(n_estimators=2, random_state=0).fit(X, y)):
        assert compile_estimator(est) is None
        np.testing.assert_array_equal(fast_predict(est, X), est.predict(X))
    with pytest.raises(InvalidInputError, match="supports"):
        FastForest.from_estimator(LogisticRegression().fit(X, y))


def test_concurrent_calls_from_threads() -> None:
    X, y = _data(7, 400, 5, 4, discrete=False)
    est = RandomForestClassifier(n_estimators=10, random_state=0).fit(X, y)
    expected = est.predict(X)
    fpredict._COMPILED.pop(est, None)
    with ThreadPoolExecutor(4) as pool:  # compile races and parallel launches from several threads
        results = list(pool.map(lambda i: fast_predict(est, X, n_threads=1 + i % 2), range(8)))
    for r in results:
        np.testing.assert_array_equal(r, expected)


def _hierarchical(subcategory_estimator: Any = None) -> tuple[HierarchicalClassifier, np.ndarray]:
    X, y = _data(8, 900, 6, 4, discrete=False)
    y = y + 1
    rng = np.random.default_rng(0)
    y_sub = np.where(y == 1, 10 + rng.integers(0, 3, y.size), np.nan)  # level-2 model
    y_sub = np.where(y == 2, 20, y_sub)  # constant subcategory; 3 and 4: none
    y_sub = np.where(y == 3, 30 + (X[:, 1] > 0), y_sub)
    model = HierarchicalClassifier(
        RandomForestClassifier(n_estimators=8, max_leaf_nodes=32),
        subcategory_estimator=subcategory_estimator,
        random_state=0,
    ).fit(X, y, y_sub)
    return model, _probe(X, 3)


@pytest.mark.parametrize("sub", [None, LogisticRegression(max_iter=200)], ids=["forest", "fallback"])
def test_fast_predict_levels_equals_predict_levels(sub: Any) -> None:
    model, X = _hierarchical(sub)
    assert model.estimators_level2_ and model.constant_level2_
    l1, l2 = fast_predict_levels(model, X)
    e1, e2 = model.predict_levels(X)
    np.testing.assert_array_equal(l1, e1)
    np.testing.assert_array_equal(l2, e2)
    assert l2.dtype == e2.dtype


def test_predict_block_engines_agree_and_numba_skips_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    model, X = _hierarchical()
    cube = X[:2400].T.reshape(X.shape[1], 40, 60).copy()
    cube[2, :3, :] = np.nan  # one feature missing: predicted from the others
    cube[:, 5, :] = np.nan  # every feature missing: nodata
    expected = predict_block(cube, model, engine="sklearn")

    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("sklearn predict called on the numba path")

    for est in [model.estimator_level1_, *model.estimators_level2_.values()]:
        monkeypatch.setattr(est, "predict", boom)
    np.testing.assert_array_equal(predict_block(cube, model, engine="numba"), expected)
    np.testing.assert_array_equal(predict_block(cube, model), expected)  # "auto" is numba when installed
    assert (expected[:, 5, :] == 0).all() and (np.delete(expected[0], 5, axis=0) > 0).all()
    with pytest.raises(InvalidInputError, match="engine"):
        predict_block(cube, model, engine="cuda")  # type: ignore[arg-type]
    # without numba, "auto" is scikit-learn
    monkeypatch.setattr(forest, "numba_available", lambda: False)
    with pytest.raises(AssertionError, match="sklearn predict called"):
        predict_block(cube, model)


def test_classify_over_dask_with_fast_path_equals_sklearn_on_every_demo_pixel(demo_run: Any) -> None:
    """classify() over dask (fast path, model folder route) == sklearn predict_levels on every demo pixel."""
    from lcstack.classify import clear_model_cache
    from lcstack.model import load_model
    from lcstack.pipeline import Workflow

    _, cfg, _ = demo_run
    with Workflow(cfg, progress=False) as wf:
        tile = next(iter(wf.tiles))
        cube = wf.features(tile).chunk({"y": 100, "x": 100})  # several dask blocks, ragged edges
        url = wf.model_url()
    model, meta = load_model(url)
    values = cube.transpose("feature", "y", "x").values
    flat = values.reshape(values.shape[0], -1)
    from lcstack.classify import feature_seasons, valid_seasons_block

    seasons = feature_seasons([str(f) for f in cube["feature"].values])
    valid = valid_seasons_block(flat[:, :, None], seasons)[:, 0] > 0  # nodata: no season observed
    assert valid.mean() > 0.5 and not np.isfinite(flat[:, valid]).all(), "some pixels miss a season"
    e1, e2 = model.predict_levels(np.ascontiguousarray(flat[:, valid].T))

    clear_model_cache()
    with dask.config.set(scheduler="threads", num_workers=2):
        maps = classify(cube, url, engine="numba")
        assert isinstance(maps["level1"].data, dask.array.Array)
        maps = maps.compute()
    level1 = maps["level1"].values.ravel()
    level2 = maps["level2"].values.ravel()
    np.testing.assert_array_equal(level1[valid], e1)
    np.testing.assert_array_equal(level2[valid], e2)
    assert (level1[~valid] == 0).all() and (level2[~valid] == 0).all()
    assert level1.size == values.shape[1] * values.shape[2]
    # the same maps through the sklearn engine
    sk = classify(cube, url, engine="sklearn").compute()
    xr.testing.assert_identical(sk["level1"], maps["level1"])
    xr.testing.assert_identical(sk["level2"], maps["level2"])


_TAMPER = r"""
import copy, sys
import numpy as np
from sklearn.ensemble import RandomForestClassifier
from lcstack.errors import InvalidInputError
from lcstack.forest import compile_estimator, fast_predict

X = np.random.default_rng(0).normal(size=(3000, 4)).astype(np.float32)
fitted = RandomForestClassifier(n_estimators=3, max_depth=6, random_state=0).fit(X, X[:, 0] > X[:, 1])

def tamper(kind):
    est = copy.deepcopy(fitted)
    tree = est.estimators_[1].tree_
    state = tree.__getstate__()
    nodes, values = state["nodes"].copy(), state["values"].copy()
    inner = np.flatnonzero(nodes["left_child"] >= 0)
    deep = inner[-1]  # an inner node below the root
    if kind == "feature":
        nodes["feature"][0] = 10**9
    elif kind == "negative-feature":
        nodes["feature"][deep] = -3
    elif kind == "child-out-of-range":
        nodes["right_child"][deep] = 10**6
    elif kind == "cycle":
        nodes["left_child"][deep] = 0
    elif kind == "shared-child":
        nodes["right_child"][0] = nodes["left_child"][0]
    elif kind == "one-child":
        nodes["right_child"][deep] = -1
    elif kind == "nan-threshold":
        nodes["threshold"][0] = np.nan
    elif kind == "nan-value":
        values[nodes["left_child"] < 0][:1] = np.nan
        values[np.flatnonzero(nodes["left_child"] < 0)[0]] = np.nan
    state["nodes"], state["values"] = nodes, values
    tree.__setstate__(state)
    return est

for kind in sys.argv[1:]:
    est = tamper(kind)
    try:
        compile_estimator(est)
        fast_predict(est, X)
    except InvalidInputError as err:
        print(kind, "refused:", err, flush=True)
    else:
        print(kind, "accepted", flush=True)
"""

_TAMPERINGS = {
    "feature": "split feature is outside 0..3",
    "negative-feature": "split feature is outside 0..3",
    "child-out-of-range": "child index is out of range",
    "cycle": "child does not come after its parent",
    "shared-child": "not exactly one",
    "one-child": "one child",
    "nan-threshold": "threshold is not finite",
    "nan-value": "leaf value is negative or not finite",
}


def test_tampered_trees_are_refused_before_any_kernel_runs() -> None:
    """Each tampering is refused with InvalidInputError; run in a subprocess, so a crash fails this test."""
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _TAMPER, *_TAMPERINGS],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, f"the process died (rc {done.returncode}): {done.stderr[-2000:]}"
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    for kind, message in _TAMPERINGS.items():
        assert lines.get(kind, "").startswith("refused:"), (kind, lines.get(kind), done.stderr[-2000:])
        assert message in lines[kind] and "RandomForestClassifier, tree 1" in lines[kind], lines[kind]


def test_forest_with_missing_value_splits_passes_the_checks() -> None:
    X, y = _data(5, 800, 4, 3, discrete=False)
    X[::3, 1] = np.nan  # splits on missing values get threshold +inf
    est = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    assert any(np.isinf(t.tree_.threshold).any() for t in est.estimators_)
    depths = checks.check_estimator(est)
    assert depths == [t.tree_.max_depth for t in est.estimators_]


def _demo_pixels(demo_run: Any) -> tuple[Any, np.ndarray]:
    from lcstack.model import load_model
    from lcstack.pipeline import Workflow

    _, cfg, _ = demo_run
    with Workflow(cfg, progress=False) as wf:
        values = wf.features(next(iter(wf.tiles))).transpose("feature", "y", "x").values
        model, _ = load_model(wf.model_url())
    flat = values.reshape(values.shape[0], -1)
    return model, np.ascontiguousarray(flat[:, np.isfinite(flat).all(axis=0)], dtype=np.float32)


def _serial(model: Any) -> Any:
    """A copy whose forests predict with n_jobs=1: sklearn then adds the trees in order, as the kernel does.

    (With n_jobs > 1 its threads add them in the order they finish, which moves the last bit.)
    """
    import copy

    model = copy.deepcopy(model)
    for est in (model.estimator_level1_, *model.estimators_level2_.values()):
        est.n_jobs = 1
    return model


def test_probabilities_equal_sklearn_on_every_demo_pixel(demo_run: Any, partition_step: str) -> None:
    model, columns = _demo_pixels(demo_run)
    got = fast_predict_proba_levels(model, columns, feature_major=True, assume_finite=True)
    np.testing.assert_allclose(got.proba, model.predict_proba(columns.T), rtol=1e-6, atol=1e-7)
    model = _serial(model)
    want = model.predict_proba_levels(columns.T)
    np.testing.assert_array_equal(got.proba, want.proba)  # in fact bit for bit
    np.testing.assert_array_equal(got.level2_proba, want.level2_proba)
    np.testing.assert_array_equal(got.margin, want.margin)
    level1, level2 = model.predict_levels(columns.T)
    np.testing.assert_array_equal(got.level1, level1)
    np.testing.assert_array_equal(got.level2, level2)
    # the margin is best minus second best; level 2 is conditional on the level-1 category
    ordered = np.sort(want.proba, axis=1)
    np.testing.assert_allclose(got.margin, ordered[:, -1] - ordered[:, -2])
    for category, sub in model.estimators_level2_.items():
        rows = level1 == category
        if rows.any():
            np.testing.assert_array_equal(
                got.level2_proba[rows], sub.predict_proba(columns.T[rows]).max(axis=1)
            )
    assert np.isnan(
        got.level2_proba[~np.isin(level1, list(model.estimators_level2_) + list(model.constant_level2_))]
    ).all()


def test_rows_with_some_nan_features_follow_sklearn_bit_for_bit(demo_run: Any, partition_step: str) -> None:
    """A forest fitted without NaN routes NaN where missing_go_to_left says (the larger child), as sklearn."""
    model, columns = _demo_pixels(demo_run)
    model = _serial(model)
    rows = np.array(columns.T[:4000])
    rng = np.random.default_rng(0)
    rows[rng.random(rows.shape) < 0.2] = np.nan  # a fifth of the features of most rows
    assert np.isnan(rows).any(axis=1).mean() > 0.9
    for est in (model.estimator_level1_, *model.estimators_level2_.values()):
        np.testing.assert_array_equal(fast_predict(est, rows), est.predict(rows))
        np.testing.assert_array_equal(fast_predict_proba(est, rows), est.predict_proba(rows))
