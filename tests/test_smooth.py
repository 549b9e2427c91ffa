"""Post-classification smoothing (lcstack.smooth): chunked == whole array, nodata, behaviour, the run hook."""

from __future__ import annotations

import shutil
from typing import Any

import dask
import numpy as np
import pytest
import rasterio
import xarray as xr
from conftest import demo_skips
from rasterio.features import sieve as rio_sieve
from scipy import ndimage

from lcstack.config import SmoothingConfig
from lcstack.errors import InvalidInputError
from lcstack.smooth import (
    bayes_smooth,
    gaussian_smooth,
    majority_filter,
    proba_classes,
    sieve,
    smooth_classes,
    smooth_maps,
    window_pixels,
)

CODES = [2, 3, 5, 7]


def _grid(h: int, w: int) -> dict[str, Any]:
    return {"y": 4_500_000.0 - 10.0 * np.arange(h), "x": 500_000.0 + 10.0 * np.arange(w)}


@pytest.fixture(scope="module")
def proba() -> xr.DataArray:
    """Noisy probabilities of 4 classes over smooth regions, with NaN and all-zero nodata patches."""
    rng = np.random.default_rng(0)
    k, h, w = len(CODES), 150, 170
    logits = ndimage.gaussian_filter(rng.normal(size=(k, h, w)), (0, 8, 8)) * 40
    logits += rng.normal(size=(k, h, w)) * 1.5
    p = np.exp(logits - logits.max(axis=0))
    p /= p.sum(axis=0)
    p[:, 40:60, 50:70] = np.nan
    p[:, 100:103, 0:10] = 0.0
    return xr.DataArray(
        p.astype(np.float32), dims=("class", "y", "x"), coords={"class": CODES, **_grid(h, w)}
    )


def _nodata(p: np.ndarray) -> np.ndarray:
    return ~np.isfinite(p).all(axis=0) | (np.nan_to_num(p).sum(axis=0) == 0)


@pytest.mark.parametrize("smoother", [bayes_smooth, gaussian_smooth])
def test_probability_smoothers_chunked_equal_whole(proba, smoother):
    with dask.config.set(scheduler="sync"):
        whole = smoother(proba).values  # numpy-backed: one chunk
        chunked = smoother(proba.chunk({"y": 37, "x": 41})).values
        percent = smoother((proba.fillna(0) * 100).round().astype(np.uint8).chunk({"y": 64, "x": 50}))
    assert np.array_equal(whole, chunked, equal_nan=True)  # bit for bit, no seams
    nodata = _nodata(proba.values)
    assert np.isnan(whole[:, nodata]).all() and np.isfinite(whole[:, ~nodata]).all()
    np.testing.assert_allclose(whole[:, ~nodata].sum(axis=0), 1.0, atol=1e-5)
    # uint8 percent is read the same way (each pixel normalised), nodata = all zero
    assert np.isnan(percent.values[:, nodata]).all()
    assert (np.argmax(percent.values[:, ~nodata], 0) == np.argmax(whole[:, ~nodata], 0)).mean() > 0.99


def _bayes_reference(p: np.ndarray, i: int, j: int, half: int, smoothness: float) -> np.ndarray:
    """sits' estimator at one pixel, written out: prior mean and sample variance of the valid neighbours."""
    valid = ~_nodata(p)
    q = np.clip(np.nan_to_num(p) / np.where(valid, np.nan_to_num(p).sum(0), 1), 1e-6, 1 - 1e-6)
    logit = np.log(q / (1 - q))
    win = (slice(max(i - half, 0), i + half + 1), slice(max(j - half, 0), j + half + 1))
    neigh = logit[:, win[0], win[1]][:, valid[win]]
    m, s2 = neigh.mean(axis=1), neigh.var(axis=1, ddof=1)
    w = s2 / (s2 + smoothness)
    post = 1 / (1 + np.exp(-(w * logit[:, i, j] + (1 - w) * m)))
    return post / post.sum()


def test_bayes_is_sits_estimator_and_nodata_does_not_bleed(proba):
    out = bayes_smooth(proba, window_m=70, smoothness=20).values
    p = proba.values.astype(np.float64)
    # pixels inside, at the array edge, and next to both nodata patches
    for i, j in [(75, 85), (0, 0), (149, 169), (39, 60), (60, 49), (103, 5), (99, 9)]:
        np.testing.assert_allclose(out[:, i, j], _bayes_reference(p, i, j, 3, 20.0), rtol=1e-5)
    # what a nodata pixel holds does not matter: NaN, zeros, or garbage under a NaN
    other = proba.copy(data=proba.values.copy())
    other.values[:, 40:60, 50:70] = 0.0
    other.values[0, 100:103, 0:10] = np.nan
    other.values[1:, 100:103, 0:10] = 0.9
    assert np.array_equal(bayes_smooth(other).values, out, equal_nan=True)


def test_bayes_removes_outliers_and_keeps_boundaries():
    h, w = 60, 60
    left = np.arange(w) < 30
    p = np.where(left, 0.8, 0.1)[None, None, :].repeat(h, 1)
    p = np.concatenate([p, 0.9 - p]).astype(np.float64)  # class 2 on the left, 3 on the right
    noisy = p.copy()
    rng = np.random.default_rng(1)
    ys, xs = np.divmod(rng.choice(h * w, 60, replace=False), w)
    # isolated outliers (no two within 3 pixels), away from the boundary and the edges
    keep = (np.abs(xs - 29.5) > 4) & (ys > 2) & (ys < h - 3) & (xs > 2) & (xs < w - 3)
    ys, xs = ys[keep], xs[keep]
    far = [
        all(max(abs(a - c), abs(b - d)) > 3 for c, d in zip(ys[:k], xs[:k], strict=True))
        for k, (a, b) in enumerate(zip(ys, xs, strict=True))
    ]
    ys, xs = ys[far], xs[far]
    noisy[:, ys, xs] = noisy[::-1, ys, xs]  # flip the two classes' probabilities
    arr = xr.DataArray(noisy, dims=("class", "y", "x"), coords={"class": [2, 3], **_grid(h, w)})
    truth = np.where(left, 2, 3)[None, :].repeat(h, 0)
    raw = proba_classes(arr).values
    assert (raw != truth).sum() == xs.size
    smoothed = proba_classes(bayes_smooth(arr, window_m=50, smoothness=20)).values
    assert np.array_equal(smoothed, truth)  # every outlier gone, the boundary where it was
    # a tiny smoothness keeps each pixel's own value
    kept = proba_classes(bayes_smooth(arr, window_m=50, smoothness=1e-9)).values
    assert np.array_equal(kept, raw)


def test_majority_filter_chunked_nodata_and_ties():
    rng = np.random.default_rng(2)
    base = np.repeat(np.repeat(rng.choice([2, 3, 5], size=(12, 14)), 9, 0), 9, 1)
    noisy = np.where(rng.random(base.shape) < 0.1, rng.choice([2, 3, 5], base.shape), base).astype(np.uint8)
    noisy[20:30, 40:52] = 0
    classes = xr.DataArray(noisy, dims=("y", "x"), coords=_grid(*noisy.shape))
    with dask.config.set(scheduler="sync"):
        for window in (70, 30):
            whole = majority_filter(classes, window_m=window).values
            chunked = majority_filter(classes.chunk({"y": 23, "x": 29}), window_m=window).values
            assert np.array_equal(whole, chunked)
    # 3 x 3 (30 m): most of the noise goes, the 9-pixel blocks stay
    assert (whole[20:30, 40:52] == 0).all() and (whole[noisy != 0] != 0).all()
    assert (whole != base)[noisy != 0].mean() < (noisy != base)[noisy != 0].mean() / 3
    # nodata does not vote: a pixel with five nodata neighbours keeps the class of the other three;
    # a tie (two against two) keeps the pixel's own class
    small = np.array([[0, 0, 0], [0, 3, 3], [2, 2, 3]], np.uint8)
    out = majority_filter(xr.DataArray(small, dims=("y", "x"), coords=_grid(3, 3))).values
    assert out[1, 1] == 3 and out[0, 0] == 0
    tie = np.array([[2, 2, 0], [0, 3, 0], [3, 0, 0]], np.uint8)
    assert majority_filter(xr.DataArray(tie, dims=("y", "x"), coords=_grid(3, 3))).values[1, 1] == 3


def _speckled(rng: np.random.Generator, shape: tuple[int, int], sizes: int) -> np.ndarray:
    """Large blocks of one class with small blobs of another class inside (each touching one class)."""
    base = np.repeat(np.repeat(rng.choice([2, 3, 5], size=(shape[0] // 30, shape[1] // 30)), 30, 0), 30, 1)
    out = base.copy()
    for _ in range(150):
        i, j = rng.integers(2, 28 - sizes, 2) + 30 * rng.integers(0, [shape[0] // 30, shape[1] // 30])
        blob = rng.random((sizes, sizes)) < 0.6
        other = 7 if base[i, j] != 7 else 2
        out[i : i + sizes, j : j + sizes][blob] = other
    return out.astype(np.uint8)


def test_sieve_whole_exact_chunked_exact_on_speckle():
    rng = np.random.default_rng(3)
    data = _speckled(rng, (150, 180), 4)
    data[0:30, 0:20] = 0  # nodata: neither sieved nor filled
    data[5, 25] = 7  # a one-pixel patch next to nodata and class code data[5, 26]
    classes = xr.DataArray(data, dims=("y", "x"), coords=_grid(*data.shape))
    expected = rio_sieve(data, 10, mask=data != 0, connectivity=8)
    expected[data == 0] = 0
    with dask.config.set(scheduler="sync"):
        whole = sieve(classes.chunk({"y": 40, "x": 45}), min_pixels=10)
        assert whole.chunks == classes.chunk({"y": 40, "x": 45}).chunks
        assert np.array_equal(whole.values, expected)
        assert np.array_equal(sieve(classes, min_area_m2=901).values, expected)  # 9.01 px -> 10
        chunked = sieve(classes.chunk({"y": 31, "x": 33}), min_pixels=10, depth=9).values
    assert (expected != data).sum() > 100 and np.array_equal(chunked, expected)
    assert (whole.values[0:30, 0:20] == 0).all() and whole.values[5, 25] == data[5, 26]
    with pytest.raises(InvalidInputError, match="at least min_pixels - 1 = 9"):
        sieve(classes, min_pixels=10, depth=5)
    with pytest.raises(InvalidInputError, match="one of"):
        sieve(classes)


def test_errors_name_the_argument(proba):
    with pytest.raises(InvalidInputError, match=r"dims \(class, y, x\)"):
        bayes_smooth(proba.isel({"class": 0}))
    with pytest.raises(InvalidInputError, match="one class code"):
        proba_classes(proba, classes=[1, 2])
    with pytest.raises(InvalidInputError, match="smoothness"):
        bayes_smooth(proba, smoothness=0)
    with pytest.raises(InvalidInputError, match="window_m"):
        window_pixels(-5, 10)
    assert [window_pixels(m, 10) for m in (10, 50, 60, 70, 71)] == [3, 5, 5, 7, 7]
    with pytest.raises(InvalidInputError, match="probabilities"):
        smooth_maps(xr.Dataset({"level1": proba_classes(proba)}), SmoothingConfig(method="bayes"))


def test_smooth_classes_and_maps(proba):
    cfg = SmoothingConfig(method="bayes", window_m=50, min_mapping_unit_m2=600)
    with dask.config.set(scheduler="sync"):
        out = smooth_classes(proba.chunk({"y": 50, "x": 60}), config=cfg).values
        level1 = proba_classes(proba)
        expected = sieve(proba_classes(bayes_smooth(proba, window_m=50)), min_pixels=6).values
    assert np.array_equal(out, expected) and set(np.unique(out)) <= {0, *CODES}
    level2 = xr.DataArray(np.where(level1.values > 0, 10, 0).astype(np.uint8), dims=("y", "x"))
    maps = xr.Dataset({"level1": level1, "level2": level2})
    smoothed = smooth_maps(maps, cfg, proba=proba).compute()
    changed = smoothed["level1"].values != level1.values
    assert np.array_equal(smoothed["level1"].values, out) and changed.any()
    assert np.array_equal(smoothed["level1_raw"].values, level1.values)
    assert (smoothed["level2"].values[changed] == 1).all()  # a subcategory of another class
    assert (smoothed["level2"].values[~changed] == level2.values[~changed]).all()


def test_run_with_smoothing_on_the_demo(demo_run, tmp_path):
    """The classify step with `smoothing:` on a copy of the demo run: smoothed level-1 maps, own records."""
    from lcstack.assess import workflow_maps
    from lcstack.config import load_config
    from lcstack.pipeline import Workflow

    area, cfg, _ = demo_run
    store = tmp_path / "store"
    shutil.copytree(cfg.storage, store)
    smoothing = {"method": "majority", "window_m": 30, "min_mapping_unit_m2": 500}
    raw_cfg = load_config(area.config, storage=str(store))
    smooth_cfg = load_config(area.config, storage=str(store), smoothing=smoothing)
    with dask.config.set(scheduler="threads"), Workflow(smooth_cfg, progress=False) as wf:
        results = wf.classify()
        assert results and not any(r.reused for r in results)
        (url,) = workflow_maps(wf, level=1)
        stored = wf.storage.open_zarr(wf.map_urls(wf.registry.find("maps", key=results[0].key)[0])["zarr"])
        stored = stored.compute()
    with Workflow(raw_cfg, progress=False) as wf:
        (raw_url,) = workflow_maps(wf, level=1)  # the classifier's own maps are still found, apart
    assert url != raw_url and "smoothed_" in url
    with rasterio.open(url) as src, rasterio.open(raw_url) as rsrc:
        smoothed, raw = src.read(1), rsrc.read(1)
    with rasterio.open(url) as src, rasterio.open(raw_url) as rsrc, rasterio.open(area.truth) as tsrc:
        # the maps cover the AOI grid, a few pixels wider than truth.tif: compare over truth's extent
        win = src.window(*tsrc.bounds).round_offsets().round_lengths()
        truth, on_truth = tsrc.read(1), {"raw": rsrc.read(1, window=win), "smooth": src.read(1, window=win)}
    raw_z = stored["level1_raw"].values
    assert np.array_equal(raw_z, raw) and np.array_equal(stored["level1"].values, smoothed)
    # a class map from the existing classify: the chain, chunked, equals the whole-array chain
    raw_da = stored["level1_raw"].chunk({"y": 64, "x": 48})
    chunked = sieve(majority_filter(raw_da, window_m=30), min_pixels=5).values
    assert np.array_equal(chunked, smoothed)
    assert np.array_equal(
        majority_filter(raw_da, window_m=50).values, majority_filter(stored["level1_raw"], window_m=50).values
    )
    assert ((smoothed == 0) == (raw == 0)).all() and (smoothed != raw).sum() > 0
    changed = smoothed != raw
    assert (stored["level2"].values[changed] == 1).all()
    valid = truth > 0
    agree = {k: float((m == truth)[valid].mean()) for k, m in on_truth.items()}
    assert agree["smooth"] >= agree["raw"] - 0.002, agree


@pytest.mark.slow
def test_sub_tile_units_join_without_seams(demo_run, tmp_path):
    """Four 128² units of the demo, smoothed with halos from their neighbours, equal the one-unit map."""
    from lcstack.config import load_config
    from lcstack.pipeline import Workflow

    area, cfg, _ = demo_run
    store = tmp_path / "store"
    shutil.copytree(cfg.storage, store)
    smoothing = {"method": "majority", "window_m": 50, "min_mapping_unit_m2": 500}
    with dask.config.set(scheduler="threads"):
        with Workflow(
            load_config(area.config, storage=str(store), smoothing=smoothing), progress=False
        ) as wf1:
            model_url = wf1.model_url()
            (unit,) = wf1.units
            one = wf1._smoothed_maps(unit, wf1.features(unit), model_url)["level1"].compute()
        four_cfg = load_config(area.config, storage=str(store), smoothing=smoothing, tile_size=128)
        with Workflow(four_cfg, progress=False) as wf4, demo_skips():
            assert len(wf4.units) == 4
            wf4.run(["discover", "composite"])
            parts = {u: wf4._smoothed_maps(u, wf4.features(u), model_url) for u in wf4.units}
            parts = {u: m["level1"].compute() for u, m in parts.items()}
            wf4._with_halo = lambda uid, cube, halo: cube  # the same without neighbours' context
            cut = {
                u: wf4._smoothed_maps(u, wf4.features(u), model_url)["level1"].compute() for u in wf4.units
            }
    joined = xr.combine_by_coords([p.to_dataset(name="l") for p in parts.values()])["l"]
    assert all(p.shape == (128, 128) for p in parts.values())
    assert np.array_equal(joined.values, one.sel(y=joined.y, x=joined.x).values)
    cut_joined = xr.combine_by_coords([p.to_dataset(name="l") for p in cut.values()])["l"]
    assert (cut_joined.values != one.sel(y=joined.y, x=joined.x).values).sum() > 0  # seams without halo
