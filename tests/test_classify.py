from __future__ import annotations

import os
import threading
import time

import cloudpickle
import dask
import dask.array as dsa
import numpy as np
import pytest
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_zeros
from sklearn.base import BaseEstimator
from sklearn.ensemble import RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier

from lcstack import classify as lcc
from lcstack.classify import classify, clear_model_cache, model_cache_info, predict_block, write_maps_zarr
from lcstack.errors import InputFileNotFoundError, InvalidInputError, ModelMismatchError
from lcstack.model import HierarchicalClassifier, save_model

FEATURES = ["spring_blue", "spring_red", "spring_nir", "summer_ndvi", "elevation", "ysignal"]
LC_LABELS = {"water": 1, "forest": 2, "cropland": 3}
SL_LABELS = {"lake": 2, "river": 3, "broadleaf forest": 4}
NY, NX, CHUNK = 96, 128, 32


def _geobox(ny: int, nx: int) -> GeoBox:
    return GeoBox.from_bbox(
        (500000, 4400000, 500000 + nx * 10, 4400000 + ny * 10), "EPSG:32630", resolution=10
    )


def _truth(ny: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
    xx = np.broadcast_to(np.arange(nx), (ny, nx))
    yy = np.broadcast_to(np.arange(ny)[:, None], (ny, nx))
    level1 = 1 + (xx * 3) // nx
    level2 = np.where(level1 == 1, np.where(yy < ny // 2, 2, 3), np.where(level1 == 2, 4, 0))
    return level1, level2


def _cube_values(ny: int = NY, nx: int = NX, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    level1, _ = _truth(ny, nx)
    yy = np.broadcast_to(np.arange(ny)[:, None], (ny, nx))
    values = np.empty((len(FEATURES), ny, nx), dtype=np.float32)
    for k in range(len(FEATURES) - 1):
        values[k] = 0.1 * level1 * (k + 1) + rng.normal(0, 0.05, (ny, nx))
    values[-1] = (yy >= ny // 2) + rng.normal(0, 0.05, (ny, nx))
    values[:, 5:9, 7:12] = np.nan  # a nodata patch in every feature
    values[3, 40, 60] = np.nan  # one feature missing in one pixel
    values[0, 41, 61] = np.inf
    return values


def _cube(values: np.ndarray | None = None, chunks: int | None = CHUNK, names=FEATURES) -> xr.DataArray:
    values = _cube_values() if values is None else values
    gbox = _geobox(*values.shape[1:])
    template = xr_zeros(gbox, dtype="float32")
    cube = xr.DataArray(
        values,
        dims=("feature", "y", "x"),
        coords={"feature": list(names), **{k: v for k, v in template.coords.items()}},
        name="features",
    )
    return cube.chunk({"feature": -1, "y": chunks, "x": chunks}) if chunks else cube


def _training(values: np.ndarray, n: int = 600, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    level1, level2 = _truth(*values.shape[1:])
    flat = values.reshape(values.shape[0], -1).T
    ok = np.flatnonzero(np.isfinite(flat).all(axis=1))
    idx = rng.choice(ok, n, replace=False)
    return flat[idx], level1.ravel()[idx], level2.ravel()[idx].astype(float)


@pytest.fixture(scope="module")
def fitted() -> HierarchicalClassifier:
    X, y1, y2 = _training(_cube_values())
    return HierarchicalClassifier(RandomForestClassifier(n_estimators=10, max_depth=6), random_state=0).fit(
        X, y1, y2
    )


@pytest.fixture(scope="module")
def model_dir(fitted, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("model") / "m1"
    meta = {"feature_names": FEATURES, "lc_labels": LC_LABELS, "sl_labels": SL_LABELS}
    save_model(fitted, folder, metadata=meta)
    return str(folder)


def _expected(model, values: np.ndarray) -> np.ndarray:
    """Pixel-by-pixel reference: predict_levels on the pixels with a valid feature (no inf), 0 elsewhere."""
    flat = values.reshape(values.shape[0], -1).T
    valid = ~np.isnan(flat).all(axis=1) & ~np.isinf(flat).any(axis=1)
    out = np.zeros((2, flat.shape[0]), dtype=np.uint8)
    l1, l2 = model.predict_levels(flat[valid])
    out[0, valid], out[1, valid] = l1, l2
    return out.reshape(2, *values.shape[1:])


class CountingModel:
    """Wraps a model and counts predict_levels calls (to prove nothing runs at build time)."""

    def __init__(self, model):
        self.model = model
        self.calls = 0
        self._lock = threading.Lock()
        self.n_features_in_ = model.n_features_in_
        self.classes_ = model.classes_

    def predict_levels(self, X):
        with self._lock:
            self.calls += 1
        return self.model.predict_levels(X)


_READS = {"n": 0}


def _count_reads(block):
    _READS["n"] += 1
    return block


# --- core


def test_predict_block_masks_nodata_and_matches_model(fitted):
    values = _cube_values()
    out = predict_block(values, fitted)
    assert out.dtype == np.uint8 and out.shape == (2, NY, NX)
    np.testing.assert_array_equal(out, _expected(fitted, values))
    assert (out[:, 5:9, 7:12] == 0).all()
    assert out[0, 40, 60] > 0 and out[1, 41, 61] == 0  # one NaN feature: classified; inf: nodata
    assert set(np.unique(out[0])) == {0, 1, 2, 3}
    assert set(np.unique(out[1])) <= {0, 1, 2, 3, 4}
    assert (out[1][out[0] == 3] == 1).all()  # cropland has no level-2 model


def test_predict_block_falls_back_to_predict():
    values = _cube_values()
    X, y1, _ = _training(values)
    rf = DecisionTreeClassifier(max_depth=4, random_state=0).fit(X, y1)
    out = predict_block(values, rf)
    flat = values.reshape(len(FEATURES), -1).T
    valid = (~np.isnan(flat).all(axis=1) & ~np.isinf(flat).any(axis=1)).reshape(NY, NX)
    np.testing.assert_array_equal(out[0][valid], rf.predict(flat[valid.ravel()]))
    assert (out[1][valid] == 1).all() and (out[:, ~valid] == 0).all()


def test_predict_block_all_nan_block_skips_model(fitted):
    model = CountingModel(fitted)
    out = predict_block(np.full((len(FEATURES), 4, 5), np.nan, dtype=np.float32), model)
    assert model.calls == 0 and out.shape == (2, 4, 5) and not out.any()


class _ConstantModel(BaseEstimator):
    def __init__(self, code=300):
        self.code = code

    def predict_levels(self, X):
        return np.full(len(X), self.code), np.ones(len(X), int)


def test_predict_block_rejects_codes_outside_uint8():
    with pytest.raises(ModelMismatchError, match="outside 0..255"):
        predict_block(np.zeros((2, 3, 3), np.float32), _ConstantModel(300))
    with pytest.raises(ModelMismatchError, match="integer class codes"):
        predict_block(np.zeros((2, 3, 3), np.float32), _ConstantModel("water"))


# --- classify


def test_classify_estimator_is_lazy_and_equals_in_memory(fitted):
    values = _cube_values()
    cube = _cube(values)
    cube = cube.copy(data=dsa.map_blocks(_count_reads, cube.data, dtype=cube.dtype))
    model = CountingModel(fitted)
    _READS["n"] = 0
    maps = classify(cube, model, feature_names=FEATURES, lc_labels=LC_LABELS, sl_labels=SL_LABELS)
    assert _READS["n"] == 0 and model.calls == 0  # building computed nothing
    for name in ("level1", "level2"):
        var = maps[name]
        assert var.dims == ("y", "x") and var.dtype == np.uint8
        assert isinstance(var.data, dsa.Array)
        assert var.chunks == cube.chunks[1:]
    assert maps.odc.geobox == cube.odc.geobox
    assert "spatial_ref" in maps.coords
    with dask.config.set(scheduler="threads", num_workers=2):
        level1, level2 = dask.compute(maps.level1, maps.level2)
    expected = _expected(fitted, values)
    np.testing.assert_array_equal(level1.values, expected[0])
    np.testing.assert_array_equal(level2.values, expected[1])
    n_blocks = (NY // CHUNK) * (NX // CHUNK)
    assert model.calls == n_blocks  # both levels come from one prediction per block


def test_classify_attrs_are_cf_flags(model_dir):
    maps = classify(_cube(), model_dir)
    l1, l2 = maps.level1.attrs, maps.level2.attrs
    np.testing.assert_array_equal(l1["flag_values"], np.array([0, 1, 2, 3], np.uint8))
    assert l1["flag_values"].dtype == np.uint8
    assert l1["flag_meanings"] == "nodata water forest cropland"
    np.testing.assert_array_equal(l2["flag_values"], [0, 1, 2, 3, 4])
    assert l2["flag_meanings"] == "nodata unclassified lake river broadleaf_forest"
    assert l1["_FillValue"] == 0 and l2["nodata"] == 0
    assert "level 1" in l1["long_name"] and "level 2" in l2["long_name"]


def test_classify_model_folder_loads_once_per_process(model_dir, fitted):
    clear_model_cache()
    values = _cube_values()
    maps = classify(_cube(values), model_dir)
    assert model_cache_info()["loads"] == 0  # the client only read metadata.json
    with dask.config.set(scheduler="threads", num_workers=4):
        first = maps.compute()
        second = maps.compute()
    info = model_cache_info()
    assert info["loads"] == 1 and len(info["cached"]) == 1  # 4 threads, 2 computes, one load
    expected = _expected(fitted, values)
    for ds in (first, second):
        np.testing.assert_array_equal(ds.level1.values, expected[0])
        np.testing.assert_array_equal(ds.level2.values, expected[1])


def test_classify_model_url_and_storage_options(fitted):
    clear_model_cache()
    url = "memory://lcstack-test/models/m1"
    meta = {"feature_names": FEATURES, "lc_labels": LC_LABELS, "sl_labels": SL_LABELS}
    save_model(fitted, url, metadata=meta)
    values = _cube_values()
    with dask.config.set(scheduler="threads", num_workers=2):
        maps = classify(_cube(values), url).compute()
    np.testing.assert_array_equal(maps.level2.values, _expected(fitted, values)[1])
    assert model_cache_info()["loads_by_model"] == {f"{url}@{lcc._read_model_metadata(url, None)[1]}": 1}


def test_classify_local_model_ignores_remote_storage_options(model_dir):
    s3_options = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}}
    maps = classify(_cube(), model_dir, storage_options=s3_options)
    assert maps.level1.compute().dtype == np.uint8


def test_classify_reorders_features(model_dir, fitted):
    values = _cube_values()
    order = [3, 0, 5, 1, 4, 2]
    shuffled = _cube(values[order], names=[FEATURES[i] for i in order])
    maps = classify(shuffled, model_dir).compute()
    expected = _expected(fitted, values)
    np.testing.assert_array_equal(maps.level1.values, expected[0])
    np.testing.assert_array_equal(maps.level2.values, expected[1])


def test_classify_feature_mismatch_names_missing_and_extra(model_dir):
    values = _cube_values()
    names = [*FEATURES[:-1], "autumn_ndvi"]
    with pytest.raises(ModelMismatchError) as err:
        classify(_cube(values, names=names), model_dir)
    msg = str(err.value)
    assert "missing from the cube: ysignal" in msg
    assert "not used by the model: autumn_ndvi" in msg
    assert "Retrain" in msg and model_dir in msg
    with pytest.raises(ModelMismatchError, match="missing from the cube: ysignal"):
        classify(_cube(values[:-1], names=FEATURES[:-1]), model_dir)


def test_classify_rejects_wrong_feature_count_for_bare_estimator(fitted):
    cube = _cube(_cube_values()[:-1], names=FEATURES[:-1])
    with pytest.raises(ModelMismatchError, match="trained on 6"):
        classify(cube, fitted)


def test_classify_rejects_bad_input(model_dir):
    with pytest.raises(InvalidInputError, match=r"dims \(feature, y, x\)"):
        classify(_cube().isel(feature=0), model_dir)
    with pytest.raises(InputFileNotFoundError, match="no metadata.json"):
        classify(_cube(), os.path.dirname(model_dir))


def test_classify_numpy_cube_gives_lazy_single_chunk(fitted):
    maps = classify(_cube(chunks=None), fitted, feature_names=FEATURES)
    assert isinstance(maps.level1.data, dsa.Array) and maps.level1.data.numblocks == (1, 1)


def test_write_maps_zarr_roundtrip(model_dir, fitted, tmp_path):
    values = _cube_values()
    maps = classify(_cube(values), model_dir)
    url = str(tmp_path / "maps.zarr")
    write_maps_zarr(maps, url)
    back = xr.open_zarr(url)  # consolidated metadata is read by default
    assert back.level1.dtype == np.uint8 and back.level2.dtype == np.uint8
    assert back.level1.encoding["chunks"] == (CHUNK, CHUNK)
    expected = _expected(fitted, values)
    np.testing.assert_array_equal(back.level1.values, expected[0])
    np.testing.assert_array_equal(back.level2.values, expected[1])
    assert back.level1.attrs["flag_meanings"] == "nodata water forest cropland"
    assert back.odc.geobox == maps.odc.geobox

    write_maps_zarr(maps, "memory://lcstack-test/maps.zarr")
    mem = xr.open_zarr("memory://lcstack-test/maps.zarr")
    np.testing.assert_array_equal(mem.level2.values, expected[1])


class _ThresholdModel(BaseEstimator):
    """Stand-in estimator: cheap enough to classify a 2048² × 20 cube in a test."""

    n_features_in_ = 20

    def predict_levels(self, X):
        level1 = np.where(X[:, 0] > 0.5, 2, 1)
        return level1, np.where(level1 == 2, 3, 1)


def test_large_cube_is_classified_chunk_by_chunk(tmp_path):
    psutil = pytest.importorskip("psutil")
    shape, chunk = (20, 2048, 2048), (20, 256, 256)  # 335 MB as a whole, 5 MB per chunk
    rng = dsa.random.default_rng(0)
    data = rng.random(shape, chunks=chunk, dtype=np.float32)
    data = dsa.where(data > 0.999, np.nan, data)
    template = xr_zeros(_geobox(*shape[1:]), dtype="float32")
    cube = xr.DataArray(
        data,
        dims=("feature", "y", "x"),
        coords={"feature": [f"f{i}" for i in range(20)], **dict(template.coords)},
    )
    maps = classify(cube, _ThresholdModel())
    assert maps.level1.data.numblocks == (8, 8) == data.numblocks[1:]

    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        with dask.config.set(scheduler="synchronous"):
            write_maps_zarr(maps, str(tmp_path / "big.zarr"))
    finally:
        stop.set()
        watcher.join()
    growth_mb = (peak[0] - base) / 2**20
    assert growth_mb < 150, f"RSS grew by {growth_mb:.0f} MB while classifying a 335 MB cube"

    back = xr.open_zarr(str(tmp_path / "big.zarr"))
    block = cube.isel(y=slice(0, 256), x=slice(256, 512)).values
    np.testing.assert_array_equal(
        back.level1[:256, 256:512].values, predict_block(block, _ThresholdModel())[0]
    )


# --- distributed


@pytest.fixture(scope="module")
def big_model_dir(tmp_path_factory):
    """A model of several MB: deep random forests on noisy labels."""
    values = _cube_values()
    X, y1, y2 = _training(values, n=3000, seed=3)
    rng = np.random.default_rng(4)
    noisy = np.where(rng.random(len(y1)) < 0.3, rng.integers(1, 4, len(y1)), y1)
    model = HierarchicalClassifier(
        RandomForestClassifier(n_estimators=40, min_samples_leaf=1), random_state=0
    ).fit(X, noisy, y2)
    folder = tmp_path_factory.mktemp("bigmodel") / "m"
    save_model(
        model, folder, metadata={"feature_names": FEATURES, "lc_labels": LC_LABELS, "sl_labels": SL_LABELS}
    )
    return str(folder), model


def test_distributed_loads_model_once_per_worker_and_keeps_it_out_of_graph(big_model_dir, tmp_path):
    distributed = pytest.importorskip("distributed")
    folder, model = big_model_dir
    model_bytes = len(cloudpickle.dumps(model))
    assert model_bytes > 3e6  # "several MB"

    values = _cube_values()
    zarr_path = str(tmp_path / "features.zarr")
    _cube(values).to_dataset().to_zarr(zarr_path, mode="w", zarr_format=2)
    cube = xr.open_zarr(zarr_path)["features"]

    maps = classify(cube, folder)
    graph_bytes = len(cloudpickle.dumps(dict(maps.__dask_graph__())))
    assert graph_bytes < 100_000, graph_bytes

    # The in-memory route embeds the estimator exactly once (one delayed key), not once per block.
    in_memory = classify(cube, model, feature_names=FEATURES)
    embedded = len(cloudpickle.dumps(dict(in_memory.__dask_graph__())))
    assert model_bytes < embedded < 1.5 * model_bytes

    expected = _expected(model, values)
    # Forked workers start in a second instead of re-importing the stack; they inherit this (emptied) cache,
    # so every load they count is their own.
    clear_model_cache()
    with (
        dask.config.set({"distributed.worker.multiprocessing-method": "fork"}),
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        workers = list(client.scheduler_info()["workers"])
        assert len(workers) == 2
        result = client.compute(maps).result()
        # Pin one more run to each worker so both have certainly classified blocks.
        for addr in workers:
            pinned = client.compute(maps, workers=[addr], allow_other_workers=False).result()
            np.testing.assert_array_equal(pinned.level1.values, expected[0])
        infos = client.run(model_cache_info)
    np.testing.assert_array_equal(result.level1.values, expected[0])
    np.testing.assert_array_equal(result.level2.values, expected[1])
    assert len({info["pid"] for info in infos.values()}) == 2
    assert [info["loads"] for info in infos.values()] == [1, 1], infos
    assert all(info["pid"] != os.getpid() for info in infos.values())


def test_model_ref_token_changes_when_model_is_resaved(fitted, tmp_path):
    folder = tmp_path / "m"
    meta = {"feature_names": FEATURES, "lc_labels": LC_LABELS, "sl_labels": SL_LABELS}
    save_model(fitted, folder, metadata=meta)
    _, token1 = lcc._read_model_metadata(str(folder), None)
    _, again = lcc._read_model_metadata(str(folder), None)
    time.sleep(1.1)  # created_at has a resolution of one second
    save_model(fitted, folder, metadata=meta)
    _, token2 = lcc._read_model_metadata(str(folder), None)
    assert token1 == again and token1 != token2


def test_model_token_rests_on_metadata_when_the_folder_cannot_be_listed():
    """Filesystems without a listing (e.g. plain HTTP) still get a token, from metadata.json alone."""
    import json

    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class NoListFileSystem(MemoryFileSystem):
        protocol = "lcstack-nolist"
        store: dict = {}  # its own files, apart from memory://
        pseudo_dirs = [""]

        @classmethod
        def _strip_protocol(cls, path):
            return MemoryFileSystem._strip_protocol(str(path).removeprefix("lcstack-nolist://"))

        def ls(self, path, detail=True, **kwargs):
            raise NotImplementedError("this filesystem cannot list folders")

    fsspec.register_implementation("lcstack-nolist", NoListFileSystem, clobber=True)
    fs = NoListFileSystem()
    url = "lcstack-nolist://models/m"
    fs.pipe_file("/models/m/metadata.json", json.dumps({"feature_names": FEATURES}).encode())
    fs.pipe_file("/models/m/model.skops", b"first")
    metadata, token1 = lcc._read_model_metadata(url, None)
    assert metadata["feature_names"] == FEATURES
    fs.pipe_file("/models/m/model.skops", b"second")  # not seen without a listing
    assert lcc._read_model_metadata(url, None)[1] == token1
    fs.pipe_file("/models/m/metadata.json", json.dumps({"feature_names": FEATURES[:2]}).encode())
    assert lcc._read_model_metadata(url, None)[1] != token1  # every save rewrites metadata.json


# --- no holes (issue 17.1)


def _cloudy_season_cube(seed: int = 3) -> np.ndarray:
    """The test cube with one season missing on a patch, the other on another, both on a third."""
    values = _cube_values(seed=seed)
    values[3, 40, 60] = values[0, 41, 61] = 0.5
    spring, summer = [0, 1, 2], [3]
    values[spring, 20:30, 10:40] = np.nan
    values[summer, 25:50, 30:60] = np.nan
    values[spring + summer, 50:55, 70:90] = np.nan  # no season: nodata although terrain is valid
    return values


def test_no_pixel_is_nodata_where_a_season_was_observed() -> None:
    """A pixel is 0 only where no season has a valid observation; the fast engine equals sklearn."""
    values = _cloudy_season_cube()
    flat = values.reshape(len(FEATURES), -1).T
    level1, level2 = (t.ravel() for t in _truth(NY, NX))
    rows = np.random.default_rng(2).choice(np.flatnonzero(~np.isnan(flat[:, :4]).all(axis=1)), 800)
    assert np.isnan(flat[rows]).any(axis=1).sum() > 20  # trained on samples with NaN too
    model = HierarchicalClassifier(RandomForestClassifier(n_estimators=15, random_state=0))
    model.fit(flat[rows], level1[rows], np.where(level2[rows] >= 2, level2[rows], np.nan))
    maps = {
        engine: classify(_cube(values), model, feature_names=FEATURES, engine=engine).compute()
        for engine in ("numba", "sklearn")
    }
    seen = (~np.isnan(values[[0, 1, 2]]).all(axis=0)).astype(int) + (~np.isnan(values[3])).astype(int)
    out = maps["numba"]
    np.testing.assert_array_equal(out["valid_seasons"].values, seen.astype(np.uint8))
    assert (out["level1"].values[seen > 0] > 0).all() and (out["level1"].values[seen == 0] == 0).all()
    assert (out["level1"].values[20:50, 10:60] > 0).mean() > 0.5  # the cloudy patches are classified
    for name in ("level1", "level2", "valid_seasons"):
        np.testing.assert_array_equal(out[name].values, maps["sklearn"][name].values)
    kept = flat[seen.ravel() > 0]
    np.testing.assert_array_equal(out["level1"].values[seen > 0], model.predict(kept))
