"""Class probabilities and uncertainty (issue 17.2): classify's layers, a run's COGs, accessor, smoothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr
from rio_cogeo.cogeo import cog_validate
from test_classify import LC_LABELS, _cube, _cube_values, _training
from test_stac_out import _OfflineValidator

from lcstack.classify import (
    PROBA_NODATA,
    UNCERTAINTY_LAYERS,
    classify,
    fast_predict_proba_levels,
    percent,
    proba_uncertainty,
)
from lcstack.errors import InvalidInputError, ModelMismatchError
from lcstack.model import HierarchicalClassifier, normalised_entropy, save_model
from lcstack.plan import MAP_FILES, PROBA_FILES

LAYERS = ["level1_proba", *UNCERTAINTY_LAYERS]


@pytest.fixture(scope="module")
def fitted() -> HierarchicalClassifier:
    from sklearn.ensemble import RandomForestClassifier

    X, y1, y2 = _training(_cube_values())
    clf = HierarchicalClassifier(RandomForestClassifier(n_estimators=12, max_depth=6), random_state=0)
    return clf.fit(X, y1, y2)


def _nan_cube() -> xr.DataArray:
    """The test cube with many pixels missing some (not all) features: NaN routed by the trees."""
    values = _cube_values()
    rng = np.random.default_rng(3)
    holes = rng.random(values.shape) < 0.15
    holes[:, :, :4] = False
    values[holes] = np.nan
    return _cube(values)


# --- the layers of classify -----------------------------------------------------------------------


def test_percent_sums_to_exactly_100_within_one_of_the_probability() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(7) * 0.3, size=5000)
    p[0] = [1 / 3, 1 / 3, 1 / 3, 0, 0, 0, 0]
    p[1] = 0.0  # nodata
    out = percent(p)
    assert out.dtype == np.uint8
    assert (out[2:].sum(axis=1, dtype=int) == 100).all() and (out[1] == PROBA_NODATA).all()
    assert np.abs(out[2:].astype(float) - 100 * p[2:]).max() < 1.0
    assert out[0].tolist() == [34, 33, 33, 0, 0, 0, 0]  # ties: the first column


def test_compiled_layers_equal_the_numpy_layers(fitted) -> None:
    from lcstack.classify import _proba_layers

    cube = _nan_cube()
    flat = cube.values.reshape(cube.sizes["feature"], -1)
    keep = np.flatnonzero(~np.isnan(flat).all(axis=0) & ~np.isinf(flat).any(axis=0))
    levels = fitted.predict_proba_levels(flat[:, keep].T)
    classes = np.array([3, 1, 2])  # any order of the layers
    out = {}
    for compiled in (True, False):
        out[compiled] = np.full((3 + 6, flat.shape[1]), PROBA_NODATA, np.uint8)
        _proba_layers(levels, classes, out[compiled], keep, compiled=compiled)
    np.testing.assert_array_equal(out[True], out[False])
    np.testing.assert_array_equal(out[True][:3, keep].T, percent(levels.proba[:, [2, 0, 1]]))


@pytest.mark.parametrize("engine", ["numba", "sklearn"])
def test_layers_are_sklearn_predict_proba_on_nan_pixels(fitted, engine) -> None:
    cube = _nan_cube()
    with dask.config.set(scheduler="sync"):
        maps = classify(cube, fitted, probabilities=True, engine=engine, lc_labels=LC_LABELS).compute()
        plain = classify(cube, fitted, engine=engine).compute()
    level1 = maps["level1"].values
    valid = level1 > 0
    # the codes are the class-only maps', from the same (single) prediction
    assert np.array_equal(level1, plain["level1"].values)
    assert np.array_equal(maps["level2"].values, plain["level2"].values)
    flat = cube.values.reshape(cube.sizes["feature"], -1).T[valid.ravel()]
    assert np.isnan(flat).any(axis=1).mean() > 0.5  # most classified pixels miss a feature
    want = fitted.predict_proba_levels(flat)  # scikit-learn's own predict_proba, level by level
    stack = maps["level1_proba"].values.reshape(len(fitted.classes_), -1)[:, valid.ravel()]
    assert list(maps["class"].values) == list(fitted.classes_)
    assert list(maps["class_name"].values) == ["water", "forest", "cropland"]
    np.testing.assert_array_equal(stack.T, percent(want.proba))
    assert (stack.sum(axis=0, dtype=int) == 100).all()  # every classified pixel
    got = {name: maps[name].values[valid] for name in UNCERTAINTY_LAYERS}
    idx = np.searchsorted(fitted.classes_, level1[valid])
    np.testing.assert_array_equal(got["level1_confidence"], stack[idx, np.arange(idx.size)])
    np.testing.assert_array_equal(got["level1_margin"], np.rint(want.margin * 100))
    np.testing.assert_array_equal(got["level1_entropy"], np.rint(normalised_entropy(want.proba) * 100))
    has2 = np.isfinite(want.level2_proba)
    assert has2.any() and (~has2).any()  # cropland has no level 2
    np.testing.assert_array_equal(got["level2_confidence"][has2], np.rint(want.level2_proba[has2] * 100))
    np.testing.assert_array_equal(got["level2_margin"][has2], np.rint(want.level2_margin[has2] * 100))
    assert all((got[n][~has2] == PROBA_NODATA).all() for n in UNCERTAINTY_LAYERS if n.startswith("level2"))
    for name in LAYERS:  # nodata (no season observed, inf) is nodata in every layer
        assert (maps[name].values[..., ~valid] == PROBA_NODATA).all(), name
        assert maps[name].dtype == np.uint8 and maps[name].attrs["nodata"] == PROBA_NODATA


def test_numba_probabilities_equal_sklearn_within_rounding_on_nan_rows(fitted) -> None:
    cube = _nan_cube()
    flat = cube.values.reshape(cube.sizes["feature"], -1)
    keep = ~np.isnan(flat).all(axis=0) & ~np.isinf(flat).any(axis=0)
    columns = np.ascontiguousarray(flat[:, keep])
    got = fast_predict_proba_levels(fitted, columns, feature_major=True, assume_finite=True)
    want = fitted.predict_proba_levels(columns.T)
    np.testing.assert_allclose(got.proba, fitted.predict_proba(columns.T), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got.level1, want.level1)
    np.testing.assert_array_equal(got.level2, want.level2)
    for name in ("level2_proba", "level2_margin", "level2_entropy"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), atol=1e-12)


def test_numba_and_sklearn_engines_give_the_same_layers(fitted) -> None:
    cube = _nan_cube()
    with dask.config.set(scheduler="sync"):
        a = classify(cube, fitted, probabilities=True, engine="numba").compute()
        b = classify(cube, fitted, probabilities=True, engine="sklearn").compute()
    for name in ("level1", "level2", *LAYERS):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_one_prediction_task_per_chunk_and_lazy(fitted, tmp_path) -> None:
    folder = tmp_path / "model"
    save_model(
        fitted, folder, metadata={"feature_names": list(_cube().feature.values), "lc_labels": LC_LABELS}
    )
    maps = classify(_cube(), str(folder), probabilities=True)
    graph = dict(maps.__dask_graph__())
    predict = [k for k in graph if isinstance(k, tuple) and str(k[0]).startswith("lcstack-classify-")]
    assert len(predict) == len(maps.chunks["y"]) * len(maps.chunks["x"])  # one pass, every layer from it
    assert not any(isinstance(v, HierarchicalClassifier) for v in graph.values())  # ModelRef, not the model
    plain = classify(_cube(), str(folder))
    assert plain["level1"].data.name != maps["level1"].data.name  # other outputs, other keys
    assert set(plain.data_vars) == {"level1", "level2", "valid_seasons"}


def test_probabilities_need_predict_proba() -> None:
    class CodesOnly:
        n_features_in_ = 6
        classes_ = np.array([1, 2, 3])

        def predict(self, X):
            return np.ones(len(X), dtype=np.int64)

    with pytest.raises(ModelMismatchError, match="predict_proba"):
        classify(_cube(), CodesOnly(), probabilities=True).compute(scheduler="sync")
    del CodesOnly.classes_
    with pytest.raises(InvalidInputError, match="classes"):
        classify(_cube(), CodesOnly(), probabilities=True)


def test_plain_estimator_gives_level1_layers_and_level2_nodata() -> None:
    from sklearn.ensemble import ExtraTreesClassifier

    X, y1, _ = _training(_cube_values())
    est = ExtraTreesClassifier(n_estimators=5, random_state=0).fit(X, y1)
    with dask.config.set(scheduler="sync"):
        a = classify(_cube(), est, probabilities=True, engine="numba").compute()
        b = classify(_cube(), est, probabilities=True, engine="sklearn").compute()
    valid = a["level1"].values > 0
    assert (a["level1_proba"].values[:, valid].sum(axis=0, dtype=int) == 100).all()
    assert (a["level2_confidence"].values == PROBA_NODATA).all()
    for name in ("level1", *LAYERS):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


# --- the accessor -----------------------------------------------------------------------------------


def test_accessor_predict_proba_and_uncertainty(fitted) -> None:
    cube = _nan_cube()
    with dask.config.set(scheduler="sync"):
        maps = classify(cube, fitted, probabilities=True).compute()
        proba = cube.landcover.predict_proba(fitted)
        assert isinstance(proba.data, dask.array.Array)  # lazy
        np.testing.assert_array_equal(proba.values, maps["level1_proba"].values)
        unc = xr.Dataset({"features": cube}).landcover.uncertainty(fitted)
        assert list(unc.data_vars) == list(UNCERTAINTY_LAYERS)
        for name in UNCERTAINTY_LAYERS:
            np.testing.assert_array_equal(unc[name].values, maps[name].values)
        from_stack = maps["level1_proba"].chunk({"y": 32, "x": 32}).landcover.uncertainty()
        assert isinstance(from_stack["level1_entropy"].data, dask.array.Array)
        from_stack = from_stack.compute()
    valid = maps["level1"].values > 0
    for name in ("level1_confidence", "level1_margin", "level1_entropy"):
        a, b = from_stack[name].values, maps[name].values
        assert (a[~valid] == PROBA_NODATA).all()
        assert np.abs(a[valid].astype(int) - b[valid]).max() <= 2, name  # from rounded percents
    fractions = xr.DataArray(np.array([[[0.7]], [[0.2]], [[0.1]]]), dims=("class", "y", "x"))
    out = proba_uncertainty(fractions).compute()
    want = [70, 50, round(100 * float(normalised_entropy(np.array([0.7, 0.2, 0.1]))))]
    assert [int(out[n].values.item()) for n in out.data_vars] == want


# --- a run --------------------------------------------------------------------------------------------


def _copy_run(demo_run: Any, tmp_path: Path, **overrides: Any) -> Any:
    from lcstack.config import load_config

    area, cfg, _ = demo_run
    store = tmp_path / "store"
    if not store.exists():
        shutil.copytree(cfg.storage, store)
    return load_config(area.config, storage=str(store), **overrides)


@pytest.fixture(scope="module")
def proba_run(demo_run, tmp_path_factory) -> dict[str, Any]:
    """The demo run's classify step again with ``classify: {probabilities: true}``."""
    from lcstack.pipeline import Workflow

    cfg = _copy_run(demo_run, tmp_path_factory.mktemp("proba"), classify={"probabilities": True})
    with dask.config.set(scheduler="threads"), Workflow(cfg, progress=False) as wf:
        results = wf.classify()
        (rec,) = [r for r in wf.registry.find("maps", key=results[0].key)]
        urls = wf.map_urls(rec)
        unit = results[0].details["tile"]
        accessor = wf.features(unit).landcover
        model_url = wf.model_url()
        expected = {"proba": accessor.predict_proba(model_url), "unc": accessor.uncertainty(model_url)}
        expected = {k: v.compute() for k, v in expected.items()}
        from lcstack.stac_out import outputs_from_workflow

        outputs = outputs_from_workflow(wf)
        storage = wf.storage
    return {
        "cfg": cfg,
        "results": results,
        "urls": urls,
        "expected": expected,
        "outputs": outputs,
        "storage": storage,
    }


def test_run_writes_probability_layers_as_cogs_and_zarr(proba_run, demo_run) -> None:
    urls, results = proba_run["urls"], proba_run["results"]
    assert results and not any(r.reused for r in results)
    assert set(urls) == set(MAP_FILES) | set(PROBA_FILES)
    assert "/classify_" in urls["level1"]  # its own folder: the plain maps are not overwritten
    stored = xr.open_zarr(urls["zarr"]).compute()
    assert set(LAYERS) <= set(stored.data_vars)
    labels = json.loads(Path(demo_run[1].lc_labels).read_text())
    names = {v: k for k, v in labels.items()}
    for key in PROBA_FILES:
        assert cog_validate(urls[key], quiet=True)[0], key
        with rasterio.open(urls[key]) as src:
            data = src.read()
            assert src.nodata == PROBA_NODATA and src.dtypes[0] == "uint8"
            np.testing.assert_array_equal(data, np.atleast_3d(stored[key].values).reshape(data.shape))
            if key == "level1_proba":
                codes = [int(c) for c in stored["class"].values]
                assert list(src.descriptions) == [names[c] for c in codes]
                assert json.loads(src.tags()["LCSTACK_CLASSES"]) == {names[c]: c for c in codes}
    valid = stored["level1"].values > 0
    total = stored["level1_proba"].values.sum(axis=0, dtype=int)
    assert (
        valid.mean() > 0.9
        and (total[valid] == 100).all()
        and (stored["level1_proba"].values[:, ~valid] == 255).all()
    )
    with rasterio.open(urls["level1"]) as src:  # the class maps are those of a run without the option
        np.testing.assert_array_equal(src.read(1), stored["level1"].values)
    # the accessor gives the run's layers (on the pixels the tile owns: all of them on the demo)
    np.testing.assert_array_equal(proba_run["expected"]["proba"].values, stored["level1_proba"].values)
    for name in UNCERTAINTY_LAYERS:
        np.testing.assert_array_equal(proba_run["expected"]["unc"][name].values, stored[name].values)


def test_keys_stay_without_the_option_and_change_with_it(proba_run, demo_run) -> None:
    from lcstack.pipeline import Workflow

    _, cfg, demo_results = demo_run
    classify_results = [r for r in demo_results if r.step == "classify"]
    with Workflow(cfg, progress=False) as wf:
        plain = wf._map_jobs(wf.model_key())
    assert [p.key for p in plain] == [r.key for r in classify_results]  # off: today's keys
    assert set(plain[0].files) == set(MAP_FILES)
    assert proba_run["results"][0].key != plain[0].key
    with rasterio.open(plain[0].files["level1"]) as a, rasterio.open(proba_run["urls"]["level1"]) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))


def test_stac_items_list_the_probability_assets(proba_run, tmp_path) -> None:
    from pystac.validation import JsonSchemaSTACValidator, set_validator

    from lcstack.stac_out import write_outputs_collection

    set_validator(_OfflineValidator())
    try:
        url = write_outputs_collection(
            proba_run["storage"], proba_run["outputs"], url=str(tmp_path / "stac" / "collection.json")
        )
        collection = pystac.read_file(url)
        assert collection.validate_all() > 0
    finally:
        set_validator(JsonSchemaSTACValidator())
    (item,) = collection.get_items(recursive=True)
    assert set(PROBA_FILES) <= set(item.assets)
    proba = item.assets["level1_proba"]
    assert "data" in proba.roles and "classification:classes" not in proba.extra_fields
    bands = proba.extra_fields["bands"]
    stored = xr.open_zarr(proba_run["urls"]["zarr"])
    assert [b["lcstack:class"] for b in bands] == [int(c) for c in stored["class"].values]
    assert all(b["nodata"] == 255 and b["data_type"] == "uint8" and b["unit"] == "percent" for b in bands)
    (band,) = item.assets["level1_entropy"].extra_fields["bands"]
    assert "entropy" in band["description"]
    assert item.assets["level1"].ext.classification.classes  # class maps as before


def test_run_with_default_bayes_smoothing(demo_run, tmp_path) -> None:
    """`smoothing: {}` (bayes) smooths the probabilities of the halo-padded cube in a run."""
    from lcstack.pipeline import Workflow
    from lcstack.smooth import bayes_smooth, proba_classes

    cfg = _copy_run(demo_run, tmp_path, smoothing={})
    with dask.config.set(scheduler="threads"), Workflow(cfg, progress=False) as wf:
        results = wf.classify()
        (rec,) = wf.registry.find("maps", key=results[0].key)
        urls = wf.map_urls(rec)
        unit = results[0].details["tile"]
        proba = wf.features(unit).landcover.predict_proba(wf.model_url()).compute()
    assert "smoothed_" in urls["level1"] and "classify_" not in urls["level1"]
    stored = xr.open_zarr(urls["zarr"]).compute()
    assert "level1_proba" not in stored and "level1_raw" in stored  # the option is off: no layers
    smoothed, raw = stored["level1"].values, stored["level1_raw"].values
    assert ((smoothed == 0) == (raw == 0)).all() and 0 < (smoothed != raw).sum() < 0.2 * raw.size
    # one unit (no neighbours): the run's map is bayes_smooth of the stored-form probabilities
    expected = proba_classes(bayes_smooth(proba, window_m=70, resolution=10)).values
    np.testing.assert_array_equal(smoothed, np.where(raw > 0, expected, 0))
    with rasterio.open(urls["level1"]) as src:
        np.testing.assert_array_equal(src.read(1), smoothed)
    assert (stored["level2"].values[smoothed != raw] == 1).all()


def test_run_with_gaussian_smoothing_and_probabilities(demo_run, tmp_path) -> None:
    from lcstack.pipeline import Workflow

    cfg = _copy_run(demo_run, tmp_path, smoothing={"method": "gaussian"}, classify={"probabilities": True})
    with dask.config.set(scheduler="threads"), Workflow(cfg, progress=False) as wf:
        results = wf.classify()
        (rec,) = wf.registry.find("maps", key=results[0].key)
        urls = wf.map_urls(rec)
    assert "smoothed_" in urls["level1"] and "classify_" in urls["level1"]
    stored = xr.open_zarr(urls["zarr"]).compute()
    assert set(LAYERS) <= set(stored.data_vars)  # the classifier's own probabilities, kept
    assert (stored["level1"].values != stored["level1_raw"].values).any()
    for key in PROBA_FILES:
        assert cog_validate(urls[key], quiet=True)[0], key
