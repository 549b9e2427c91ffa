from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from lcstack.errors import InputFileNotFoundError, InvalidInputError, ModelMismatchError
from lcstack.model import HierarchicalClassifier, check_features, load_model, save_model


def _expected_failed(estimator):
    if isinstance(estimator.estimator, RandomForestClassifier):  # bootstrapped, as the default
        return {
            "check_sample_weight_equivalence_on_dense_data": (
                "RandomForestClassifier bootstraps: weighting a sample by 2 is not the same as repeating it "
                "(sklearn marks the same check xfail for RandomForestClassifier itself)."
            ),
        }
    return {}


@parametrize_with_checks(
    [
        HierarchicalClassifier(RandomForestClassifier(n_estimators=5, max_depth=4)),
        HierarchicalClassifier(LogisticRegression(max_iter=500)),
    ],
    expected_failed_checks=_expected_failed,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def _small(**kw):
    return HierarchicalClassifier(RandomForestClassifier(n_estimators=15), random_state=0, **kw)


def _hierarchy_data(n=600, seed=0, dtype=np.float32):
    """Categories 1, 2, 3; category 1 has subcategories 10/11, category 2 only 20, category 3 none."""
    rng = np.random.default_rng(seed)
    y = rng.integers(1, 4, n)
    y_sub = np.full(n, np.nan)
    sub_bit = rng.integers(0, 2, n)
    y_sub[y == 1] = 10 + sub_bit[y == 1]
    y_sub[y == 2] = 20
    X = rng.normal(size=(n, 5)) * 0.3
    X[:, 0] += y * 3.0  # category signal
    X[:, 1] += sub_bit * 3.0  # subcategory signal
    return X.astype(dtype), y, y_sub


def test_levels_follow_hierarchy():
    X, y, y_sub = _hierarchy_data()
    clf = HierarchicalClassifier(random_state=0)
    clf.fit(X, y, y_sub)
    assert list(clf.classes_) == [1, 2, 3]
    assert set(clf.estimators_level2_) == {1}
    assert clf.constant_level2_ == {2: 20}
    level1, level2 = clf.predict_levels(X)
    np.testing.assert_array_equal(level1, clf.predict(X))
    assert (level1 == y).mean() > 0.95
    assert set(np.unique(level2[level1 == 1])) <= {10, 11}
    assert (level2[level1 == 1] == y_sub[level1 == 1]).mean() > 0.9
    assert np.all(level2[level1 == 2] == 20)
    assert np.all(level2[level1 == 3] == 1)
    assert clf.predict_proba(X).shape == (len(X), 3)


def test_subcategory_markers_and_min_samples():
    X, y, y_sub = _hierarchy_data()
    marked = y_sub.astype(object)
    marked[(y == 1) & (np.arange(len(y)) % 3 == 0)] = None  # some category-1 samples lack a subcategory
    marked[y == 3] = 1  # 1 = unclassified, not a subcategory
    clf = _small().fit(X, y, marked)
    assert set(clf.estimators_level2_) == {1}
    assert set(clf.estimators_level2_[1].classes_) == {10, 11}
    assert 3 not in clf.constant_level2_
    few = _small(min_samples_level2=10_000).fit(X, y, y_sub)
    assert few.estimators_level2_ == {} and few.constant_level2_ == {}
    assert np.all(few.predict_levels(X)[1] == 1)


@pytest.mark.parametrize(
    "base", [LogisticRegression(max_iter=1000), ExtraTreesClassifier(n_estimators=20, random_state=0)]
)
def test_any_base_classifier(base):
    X, y, y_sub = _hierarchy_data()
    clf = HierarchicalClassifier(base, subcategory_estimator=LogisticRegression(max_iter=1000)).fit(
        X, y, y_sub
    )
    assert isinstance(clf.estimator_level1_, type(base))
    assert isinstance(clf.estimators_level2_[1], LogisticRegression)
    assert (clf.predict(X) == y).mean() > 0.9


def test_params_propagate_and_clone():
    clf = HierarchicalClassifier(ExtraTreesClassifier(n_estimators=5), n_jobs=2, random_state=7)
    X, y, y_sub = _hierarchy_data(200)
    clf.fit(X, y, y_sub)
    assert clf.estimator_level1_.random_state == 7 and clf.estimator_level1_.n_jobs == 2
    assert clf.estimators_level2_[1].random_state == 7
    assert clf.estimator.random_state is None  # the given estimator is never modified
    twin = clone(clf)
    assert twin.get_params()["estimator__n_estimators"] == 5
    assert not hasattr(twin, "classes_")


def test_grid_search_and_cross_val_with_subcategories():
    X, y, y_sub = _hierarchy_data(300)
    grid = GridSearchCV(
        HierarchicalClassifier(RandomForestClassifier(n_estimators=5), random_state=0),
        {"estimator__max_depth": [2, 6]},
        cv=3,
    )
    grid.fit(X, y, y_sub=y_sub)
    assert grid.best_params_["estimator__max_depth"] in (2, 6)
    assert set(grid.best_estimator_.estimators_level2_) == {1}
    scores = cross_val_score(_small(), X, y, cv=3, params={"y_sub": y_sub})
    assert scores.min() > 0.9


def test_dataframe_feature_names_and_float32():
    X, y, y_sub = _hierarchy_data(200)
    df = pd.DataFrame(X, columns=[f"spring_b{i}" for i in range(X.shape[1])])
    clf = _small().fit(df, y, y_sub)
    assert list(clf.feature_names_in_) == list(df.columns)
    with pytest.warns(UserWarning, match="feature names"):
        from_array = clf.predict_levels(X)[1]
    np.testing.assert_array_equal(clf.predict_levels(df)[1], from_array)


def test_fit_takes_missing_features_only_where_the_estimator_routes_them():
    X, y, y_sub = _hierarchy_data(80)
    X[7, 2] = np.nan
    clf = _small().fit(X, y, y_sub)  # a forest learns where NaN goes
    assert clf.predict_levels(X)[0].shape == (80,)
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(InvalidInputError, match="LogisticRegression cannot take NaN"):
        HierarchicalClassifier(LogisticRegression()).fit(X, y, y_sub)
    X[9] = np.nan  # a sample without any valid feature is an error for every estimator
    with pytest.raises(InvalidInputError, match="no valid feature"):
        _small().fit(X, y, y_sub)


def _fitted(df=True):
    X, y, y_sub = _hierarchy_data(300)
    cols = [f"f{i}" for i in range(X.shape[1])]
    clf = HierarchicalClassifier(RandomForestClassifier(n_estimators=10), random_state=0)
    clf.fit(pd.DataFrame(X, columns=cols) if df else X, y, y_sub)
    return clf, X, cols


def test_save_load_roundtrip(tmp_path):
    clf, X, cols = _fitted()
    meta = {
        "lc_labels": {"crop": 1, "forest": 2, "water": 3},
        "metrics": {"overall_accuracy": 0.9},
        "training_sha256": "abc",
    }
    save_model(clf, tmp_path / "m", metadata=meta)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["metadata.json", "model.skops"]
    loaded, meta2 = load_model(tmp_path / "m")
    df = pd.DataFrame(X, columns=cols)
    l1, l2 = clf.predict_levels(df)
    m1, m2 = loaded.predict_levels(df)
    np.testing.assert_array_equal(l1, m1)
    np.testing.assert_array_equal(l2, m2)
    assert meta2["feature_names"] == cols
    assert meta2["lc_labels"] == meta["lc_labels"]
    assert meta2["estimator_params"]["random_state"] == 0
    assert meta2["level2"] == {"models": [1], "constant": {"2": 20}}
    assert "T" in meta2["created_at"] and meta2["lcstack_version"]
    json.dumps(meta2)


def test_save_load_fsspec_memory():
    clf, X, _ = _fitted(df=False)
    save_model(clf, "memory://models/m1", metadata={"feature_names": ["a", "b", "c", "d", "e"]})
    loaded, meta = load_model("memory://models/m1")
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    assert meta["feature_names"] == ["a", "b", "c", "d", "e"]


def test_save_requires_feature_names(tmp_path):
    clf, _, _ = _fitted(df=False)
    with pytest.raises(InvalidInputError, match="feature_names"):
        save_model(clf, tmp_path / "m", metadata={})
    with pytest.raises(InvalidInputError, match="5"):
        save_model(clf, tmp_path / "m", metadata={"feature_names": ["a"]})


def test_load_incomplete_artefact(tmp_path):
    clf, _, _ = _fitted()
    save_model(clf, tmp_path / "m", metadata={})
    (tmp_path / "m" / "metadata.json").unlink()
    with pytest.raises(InputFileNotFoundError, match="metadata.json"):
        load_model(tmp_path / "m")


def _tamper(path):
    """Replace HierarchicalClassifier's type in the skops schema with a builtin callable."""
    with zipfile.ZipFile(path) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    schema = json.loads(files["schema.json"])
    schema["__module__"], schema["__class__"] = "os", "system"
    files["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in files.items():
            zf.writestr(n, data)


def test_load_rejects_changed_and_untrusted_file(tmp_path):
    import hashlib

    clf, _, _ = _fitted()
    folder = tmp_path / "m"
    save_model(clf, folder, metadata={})
    _tamper(folder / "model.skops")
    with pytest.raises(InvalidInputError, match="model_sha256"):
        load_model(folder)
    # an attacker who also rewrites the hash is stopped by the type allow-list
    meta = json.loads((folder / "metadata.json").read_text())
    meta["model_sha256"] = hashlib.sha256((folder / "model.skops").read_bytes()).hexdigest()
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(InvalidInputError, match=r"os\.system"):
        load_model(folder)


def test_check_features_message():
    meta = {"feature_names": ["spring_red", "spring_nir", "elevation"]}
    check_features(meta, ["spring_red", "spring_nir", "elevation"])
    with pytest.raises(ModelMismatchError) as err:
        check_features(meta, ["spring_red", "summer_nir", "elevation"])
    msg = str(err.value)
    assert "missing: ['spring_nir']" in msg and "extra: ['summer_nir']" in msg and "Retrain" in msg
    with pytest.raises(ModelMismatchError, match="misordered: .*spring_nir"):
        check_features(meta, ["spring_nir", "spring_red", "elevation"])


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("lcstack.model.HierarchicalClassifier", True),
        ("sklearn.tree._tree.Tree", True),
        ("numpy.float32", True),
        ("numpy.load", False),  # a function, not a class
        ("sklearn.utils.estimator_checks.check_estimator", False),
        ("builtins.eval", False),
        ("sklearn.no_such_module.Thing", False),
        ("sklearn.datasets._covtype.GzipFile", False),  # a class, but not one a model holds
        ("sklearn.ensemble._forest.RandomForestClassifier", True),
        ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor", True),
    ],
)
def test_skops_allow_list(name, allowed):
    from lcstack.model import _is_allowed_type

    assert _is_allowed_type(name) is allowed


def _add_node(path, key, module, cls):
    """Add an attribute ``key`` to the saved HierarchicalClassifier: an object of type ``module.cls``.

    The node is a copy of the level-1 estimator's node (an ObjectNode with a dict of attributes) with its
    type replaced, as an attacker who rewrites ``schema.json`` would do.
    """
    with zipfile.ZipFile(path) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    schema = json.loads(files["schema.json"])
    attrs = schema["content"]["content"]
    node = json.loads(json.dumps(attrs["estimator_level1_"]))
    node["__module__"], node["__class__"] = module, cls
    node["content"]["content"] = {}
    node["content"]["key_types"]["content"] = []
    node.pop("__id__", None)
    node["content"].pop("__id__", None)
    attrs[key] = node
    schema["content"]["key_types"]["content"].append(schema["content"]["key_types"]["content"][0])
    files["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in files.items():
            zf.writestr(n, data)


def _rehash(folder):
    import hashlib

    meta = json.loads((folder / "metadata.json").read_text())
    meta["model_sha256"] = hashlib.sha256((folder / "model.skops").read_bytes()).hexdigest()
    (folder / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("module", "cls"),
    [
        ("sklearn.datasets._covtype", "GzipFile"),  # a class re-exported by a scikit-learn module
        ("sklearn.linear_model._logistic", "LogisticRegression"),  # an estimator no saved model holds
        ("numpy", "memmap"),  # a NumPy class that opens files
    ],
)
def test_load_refuses_any_type_a_saved_model_does_not_hold(tmp_path, module, cls):
    clf, _, _ = _fitted()
    folder = tmp_path / "m"
    save_model(clf, folder, metadata={})
    _add_node(folder / "model.skops", "payload", module, cls)
    _rehash(folder)
    with pytest.raises(InvalidInputError) as err:
        load_model(folder)
    assert f"{module}.{cls}" in str(err.value)
    assert str(folder / "model.skops") in str(err.value)


@pytest.mark.parametrize(
    "base",
    [
        None,
        ExtraTreesClassifier(n_estimators=3),
        HistGradientBoostingClassifier(max_iter=3),
        HistGradientBoostingClassifier(max_iter=3, categorical_features=[4]),
    ],
    ids=["rf", "et", "hgb", "hgb-categorical"],
)
def test_every_type_a_saved_model_holds_is_allowed(tmp_path, base):
    from lcstack.model import MODEL_TYPES, model_types

    X, y, y_sub = _hierarchy_data(200)
    X[:, 4] = np.arange(200) % 3
    clf = HierarchicalClassifier(base, random_state=0).fit(X, y, y_sub)
    save_model(clf, tmp_path / "m", metadata={"feature_names": list("abcde")})
    named = model_types((tmp_path / "m" / "model.skops").read_bytes())
    assert named <= frozenset().union(*MODEL_TYPES.values())
    loaded, _ = load_model(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict_levels(X)[1], clf.predict_levels(X)[1])


def test_load_refuses_a_tampered_tree(tmp_path):
    """A split feature index of 10**9 in a tree's nodes (hash rewritten) is refused at load, naming it."""
    import io

    clf, _, _ = _fitted()
    folder = tmp_path / "m"
    save_model(clf, folder, metadata={})
    with zipfile.ZipFile(folder / "model.skops") as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    for name, data in files.items():
        if name.endswith(".npy"):
            array = np.load(io.BytesIO(data), allow_pickle=False)
            if array.dtype.names and "feature" in array.dtype.names:
                array["feature"][0] = 10**9
                out = io.BytesIO()
                np.save(out, array, allow_pickle=False)
                files[name] = out.getvalue()
                break
    with zipfile.ZipFile(folder / "model.skops", "w") as zf:
        for n, data in files.items():
            zf.writestr(n, data)
    _rehash(folder)
    with pytest.raises(InvalidInputError, match=r"model\.skops: level-1 model, tree 0: a split feature"):
        load_model(folder)


def test_predict_hooks_walk_the_hierarchy_with_the_given_predictor():
    X, y, y_sub = _hierarchy_data()
    clf = _small().fit(X, y, y_sub)
    seen = []

    def predict(est, rows):
        seen.append((est, len(rows)))
        return est.predict(rows)

    level1, level2 = clf.predict_levels(X, predict=predict)
    np.testing.assert_array_equal(level1, clf.predict(X))
    np.testing.assert_array_equal(level2, clf.predict_levels(X)[1])
    assert seen[0] == (clf.estimator_level1_, len(X))
    assert [est for est, _ in seen[1:]] == list(clf.estimators_level2_.values())
    levels = clf.predict_proba_levels(X, predict_proba=lambda est, rows: est.predict_proba(rows))
    np.testing.assert_array_equal(levels.proba, clf.predict_proba(X))
    np.testing.assert_array_equal(levels.level1, level1)
    np.testing.assert_array_equal(levels.level2, level2)
    assert (levels.level2_proba[level1 == 2] == 1).all()  # a single subcategory
    assert np.isnan(levels.level2_proba[level1 == 3]).all()  # no level 2
    assert ((levels.margin >= 0) & (levels.margin <= 1)).all()
