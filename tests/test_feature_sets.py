"""Feature sets (``features:``): percentiles, std, count, scenes and context beside the median."""

from __future__ import annotations

import datetime as dt
import importlib.util
import warnings
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
from sklearn.ensemble import RandomForestClassifier

import lcstack  # noqa: F401  (registers the accessor)
from lcstack.classify import classify
from lcstack.composite import cloud_mask, composite_season, seasonal_composite
from lcstack.config import FeaturesConfig, load_config
from lcstack.errors import InvalidInputError, ModelMismatchError
from lcstack.features import add_context, feature_spec, nanpercentile_time, nanstd_time, stack_features
from lcstack.inputs import Season
from lcstack.load import load_scenes, to_reflectance
from lcstack.model import HierarchicalClassifier, save_model
from lcstack.pipeline import Workflow

_spec = importlib.util.spec_from_file_location("_lcstack_test_load", Path(__file__).with_name("test_load.py"))
_builders = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_builders)
make_s2_items, demo_geobox = _builders.make_s2_items, _builders.demo_geobox

RICH = FeaturesConfig(
    percentiles=(10, 90), std=True, count=True, scenes=2, context={"window": 5, "bands": ["ndvi", "nir"]}
)


def test_percentile_and_std_kernels_equal_numpy() -> None:
    rng = np.random.default_rng(3)
    a = rng.random((7, 9, 11), dtype=np.float32)
    a[rng.random(a.shape) < 0.4] = np.nan
    a[:, 0, 0] = np.nan  # no valid observation
    a[1:, 0, 1] = np.nan  # one
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for q in (0, 10, 50, 62.5, 90, 100):
            np.testing.assert_allclose(nanpercentile_time(a, q), np.nanpercentile(a, q, axis=0), rtol=1e-6)
        np.testing.assert_allclose(nanstd_time(a), np.nanstd(a.astype(np.float64), axis=0), rtol=1e-6)
    assert np.isnan(nanpercentile_time(a, 10)[0, 0]) and np.isnan(nanstd_time(a)[0, 0])


def test_context_chunked_equals_whole_array_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    values = rng.random((1, 3, 37, 29), dtype=np.float32)
    values[0, 1, 5:9, 3:6] = np.nan
    comp = xr.DataArray(values, dims=("season", "band", "y", "x"), coords={"band": ["red", "nir", "ndvi"]})
    ctx = {"window": 5, "bands": ("ndvi", "nir"), "stats": ("mean", "std")}
    whole = add_context(comp, ctx)
    chunked = add_context(comp.chunk({"y": 8, "x": 11}), ctx).compute(scheduler="sync")
    xr.testing.assert_identical(whole, chunked)
    names = list(whole["band"].values)
    assert names[3:] == ["ndvi_ctx5_mean", "ndvi_ctx5_std", "nir_ctx5_mean", "nir_ctx5_std"]
    # a reference: the NaN-aware mean / std of the 5 x 5 window, clipped at the grid's edges
    nir = values[0, 1]
    for y, x in ((0, 0), (7, 4), (20, 28), (36, 15)):
        win = nir[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3]
        got = whole.sel(band=["nir_ctx5_mean", "nir_ctx5_std"]).values[0, :, y, x]
        np.testing.assert_allclose(got, [np.nanmean(win), np.nanstd(win)], rtol=1e-5, atol=1e-7)
    with pytest.raises(InvalidInputError, match=r"features.context.bands: \['swir16'\]"):
        add_context(comp, {**ctx, "bands": ("swir16",)})


@pytest.mark.parametrize("chunks", [{"y": 13, "x": 21}, {"y": 32, "x": 32}])
def test_fused_feature_set_equals_the_fine_grained_and_eager_composite(tmp_path, chunks) -> None:
    items, _ = make_s2_items(tmp_path)
    gbox = demo_geobox(32)
    kw = {"season": "spring", "chunks": chunks, "indices": ["ndvi", "mndwi"], "features": RICH}
    fine = seasonal_composite(items, gbox, **kw).compute(scheduler="sync")
    fused = seasonal_composite(items, gbox, fuse_chunks=True, **kw)
    assert fused["composite"].data.chunks[1] == (fine.sizes["band"],)
    xr.testing.assert_identical(fused.compute(scheduler="sync"), fine)
    eager = seasonal_composite(items, gbox, eager=True, **kw)
    xr.testing.assert_identical(eager, fine)
    names = list(fine["band"].values)
    assert names[:3] == ["blue", "green", "red"] and "ndvi" in names
    for name in ("red_p10", "ndvi_p90", "mndwi_std", "count", "nir_scene1", "ndvi_scene2", "ndvi_ctx5_std"):
        assert name in names, name
    comp = fine["composite"].isel(season=0)
    count = comp.sel(band="count").values
    np.testing.assert_array_equal(count, fine["valid_count"].values[0].astype(np.float32))
    lo, med, hi = (comp.sel(band=b).values for b in ("red_p10", "red", "red_p90"))
    ok = count > 0
    assert (lo[ok] <= med[ok] + 1e-7).all() and (med[ok] <= hi[ok] + 1e-7).all()
    # the default (landcoverpy) set is the median of the bands and indices: the first layers, unchanged
    default = seasonal_composite(items, gbox, **{**kw, "features": None}).compute(scheduler="sync")
    n = default.sizes["band"]
    xr.testing.assert_identical(fine["composite"].isel(band=slice(0, n)), default["composite"])


def test_accessor_composite_is_the_composite_function(tmp_path) -> None:
    """`.landcover.composite()` runs composite_season: the same layers as seasonal_composite."""
    items, _ = make_s2_items(tmp_path)
    gbox = demo_geobox(32)
    ds = load_scenes(items, gbox, chunks={"time": -1, "y": 16, "x": 16})
    days = sorted({np.datetime64(t, "D") for t in ds.time.values})
    season = Season("spring", dt.date.fromisoformat(str(days[0])), dt.date.fromisoformat(str(days[-1])))
    with dask.config.set(scheduler="sync"):
        got = to_reflectance(ds).landcover.composite({"spring": season}, features=RICH).compute()
        want = seasonal_composite(items, gbox, season="spring", features=RICH).compute()
    xr.testing.assert_identical(got["composite"].drop_attrs(), want["composite"].drop_attrs())
    xr.testing.assert_identical(got["valid_count"], want["valid_count"])
    refl = to_reflectance(ds)
    invalid = cloud_mask(refl["scl"])
    direct = composite_season(refl.drop_vars("scl"), invalid, season="spring", features=RICH).compute()
    xr.testing.assert_identical(got, direct)


def test_features_config_presets_and_errors(demo_area, tmp_path) -> None:
    assert load_config(demo_area.config).features == FeaturesConfig()
    assert load_config(demo_area.config, features="landcoverpy").features.is_landcoverpy
    cfg = load_config(demo_area.config, features={"percentiles": [10, 90], "context": {"window": 3}})
    assert cfg.features.percentiles == (10.0, 90.0) and cfg.features.context.bands == ("ndvi",)
    assert feature_spec(cfg.features)["context"] == {
        "window": 3,
        "bands": ("ndvi",),
        "stats": ("mean", "std"),
    }
    assert feature_spec(FeaturesConfig()) is None and feature_spec("landcoverpy") is None
    for bad, match in (
        ("sits", "unknown feature preset 'sits'"),
        ({"percentiles": [10, 120]}, r"percentiles must lie in \[0, 100\]"),
        ({"context": {"window": 4}}, "window must be odd"),
        ({"median": False}, "features.median"),
    ):
        with pytest.raises(InvalidInputError, match=match):
            load_config(demo_area.config, features=bad)


def test_composite_keys_change_with_the_feature_set_only(demo_area, tmp_path) -> None:
    storage = str(tmp_path / "out")
    keys = {}
    for name, features in (("none", None), ("preset", "landcoverpy"), ("p", {"percentiles": [10]})):
        with Workflow(
            load_config(demo_area.config, storage=storage, features=features), progress=False
        ) as wf:
            keys[name] = [p.key for p in wf.composite_plan() if p.season != "terrain"]
            if name == "p":
                n_p = wf.chunks
            else:
                n_default = wf.chunks
    assert keys["none"] == keys["preset"]  # the default keeps today's keys: stores stay reusable
    assert not set(keys["p"]) & set(keys["none"])
    assert n_p["x"] <= n_default["x"]  # the memory budget counts the extra layers


def test_classify_with_a_model_of_another_feature_set_names_the_missing(tmp_path) -> None:
    items, _ = make_s2_items(tmp_path)
    gbox = demo_geobox(32)
    feats = FeaturesConfig(percentiles=(10,))
    rich = stack_features({"spring": seasonal_composite(items, gbox, season="spring", features=feats)})
    plain = stack_features({"spring": seasonal_composite(items, gbox, season="spring")})
    X = rich.values.reshape(rich.sizes["feature"], -1).T
    ok = np.isfinite(X).all(axis=1)
    y1 = (X[:, list(rich["feature"].values).index("spring_ndvi")] > 0.3).astype(int) + 1
    model = HierarchicalClassifier(RandomForestClassifier(n_estimators=3), random_state=0)
    model.fit(X[ok], y1[ok], np.zeros(ok.sum()))
    names = [str(f) for f in rich["feature"].values]
    save_model(model, tmp_path / "m", metadata={"feature_names": names, "lc_labels": {"a": 1, "b": 2}})
    with pytest.raises(ModelMismatchError, match="missing from the cube: spring_blue_p10, spring_green_p10"):
        classify(plain, str(tmp_path / "m"))
    assert classify(rich, str(tmp_path / "m")).level1.compute().dtype == np.uint8
