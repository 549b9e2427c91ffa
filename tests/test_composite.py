"""Tests for lcstack.composite and the median kernel: exactness, chunked == in-memory, laziness, layout."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import dask
import dask.array as dsa
import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_zeros

from lcstack._kernels import nanmedian_time
from lcstack.composite import cloud_mask, median_composite, seasonal_composite
from lcstack.errors import NoCloudMaskWarning
from lcstack.indices import DEFAULT_INDICES

# the COG/STAC builder lives in test_load.py; load it by path so any pytest import mode works
_spec = importlib.util.spec_from_file_location("_lcstack_test_load", Path(__file__).with_name("test_load.py"))
_builders = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_builders)
make_s2_items, demo_geobox = _builders.make_s2_items, _builders.demo_geobox


def _raising_scheduler(*args, **kwargs):
    raise AssertionError("dask computed while the graph was being built")


# ---------------------------------------------------------------------------------------------- kernel


@pytest.mark.parametrize("method", ["bottleneck", "numba"])
def test_nanmedian_equals_numpy_bit_for_bit(method):
    rng = np.random.default_rng(42)
    a = rng.random((12, 64, 96), dtype=np.float32) * rng.choice([1e-3, 1.0, 1e4], size=(12, 64, 96)).astype(
        np.float32
    )
    a[rng.random(a.shape) < 0.35] = np.nan
    a[:, :5, :7] = np.nan  # all-NaN pixels
    a[:11, 5, 0] = np.nan  # exactly one valid value
    a[:10, 5, 1] = np.nan  # two valid values: the mean of the middle pair
    a[:, 6, :4] = np.float32(0.25)  # ties
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expect = np.nanmedian(a, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no all-NaN warning from our kernel
        got = nanmedian_time(a, method=method)
    assert got.dtype == np.float32 and got.shape == expect.shape
    # bit-for-bit, NaN in the same places
    np.testing.assert_array_equal(got.view(np.uint32), expect.view(np.uint32))
    assert np.isnan(got[:5, :7]).all()


def test_nanmedian_even_count_uses_float32_mean():
    # (a + b) / 2 in float32 differs from a float64 mean rounded once only through overflow;
    # check values where the float32 sum overflows like NumPy's does
    a = np.array([[3.0e38], [3.2e38]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expect = np.nanmedian(a, axis=0)
        for method in ("bottleneck", "numba"):
            np.testing.assert_array_equal(nanmedian_time(a, method=method), expect)


# ---------------------------------------------------------------------------------------------- mask


def _scl_grid(shape=(2, 21, 21), resolution=10) -> xr.DataArray:
    gbox = GeoBox.from_bbox(
        (0, 0, shape[2] * resolution, shape[1] * resolution), "EPSG:32630", resolution=resolution
    )
    scl = xr_zeros(gbox, dtype="uint8") + np.uint8(4)
    return scl.expand_dims(time=shape[0]).copy()


def test_cloud_mask_classes_and_nodata():
    scl = _scl_grid()
    scl[0, 0, 0] = 0
    scl[0, 1, 1] = 9
    scl[1, 2, 2] = 5
    mask = cloud_mask(scl, classes=(9,))
    assert mask.dtype == bool and mask.dims == scl.dims
    assert mask[0, 0, 0] and mask[0, 1, 1] and not mask[1, 2, 2]
    assert int(mask.sum()) == 2


@pytest.mark.parametrize(
    ("dilation_m", "resolution", "expected"), [(25, 10, 2.5), (20, 20, 1.0), (45, 20, 2.25)]
)
def test_cloud_mask_dilation_is_a_disk(dilation_m, resolution, expected):
    scl = _scl_grid(resolution=resolution)
    scl[0, 10, 10] = 8
    mask = cloud_mask(scl, dilation_m=dilation_m).values  # resolution from the grid
    yy, xx = np.mgrid[-10:11, -10:11]
    disk = yy**2 + xx**2 <= expected**2
    np.testing.assert_array_equal(mask[0], disk)
    assert not mask[1].any()  # dilation never crosses time steps
    # explicit resolution overrides the grid
    np.testing.assert_array_equal(
        cloud_mask(scl, dilation_m=dilation_m * 2, resolution=2 * resolution).values, mask
    )


@pytest.mark.parametrize("chunks", [(1, 7, 5), (2, 21, 4), (1, 3, 21)])
def test_cloud_mask_chunked_equals_in_memory(chunks):
    rng = np.random.default_rng(0)
    scl = _scl_grid(shape=(2, 21, 21))
    scl.values[:] = rng.choice(
        np.array([0, 4, 5, 8, 9, 3], np.uint8), size=scl.shape, p=[0.05, 0.5, 0.3, 0.05, 0.05, 0.05]
    )
    eager = cloud_mask(scl, dilation_m=30)
    lazy = cloud_mask(scl.chunk(dict(zip(scl.dims, chunks, strict=True))), dilation_m=30)
    assert isinstance(lazy.data, dsa.Array)
    np.testing.assert_array_equal(lazy.compute().values, eager.values)


# ---------------------------------------------------------------------------------------------- median


def _refl_cube(seed=0, shape=(7, 13, 11)):
    rng = np.random.default_rng(seed)
    gbox = GeoBox.from_bbox((0, 0, shape[2] * 10, shape[1] * 10), "EPSG:32630", resolution=10)
    base = xr_zeros(gbox, dtype="float32").expand_dims(time=shape[0])
    bands = {}
    for name in ("red", "nir"):
        v = rng.random(shape, dtype=np.float32)
        v[rng.random(shape) < 0.1] = np.nan
        bands[name] = base.copy(data=v)
    invalid = base.copy(data=rng.random(shape) < 0.3).astype(bool)
    invalid[:, 0, 0] = True  # a pixel without any valid observation
    return xr.Dataset(bands), invalid


@pytest.mark.parametrize(
    "chunks", [{"time": 1, "y": 5, "x": 4}, {"time": 3, "y": 13, "x": 2}, {"time": 7, "y": 6, "x": 11}]
)
def test_median_composite_chunked_equals_in_memory(chunks):
    refl, invalid = _refl_cube()
    eager = median_composite(refl, invalid)
    lazy = median_composite(refl.chunk(chunks), invalid.chunk(chunks))
    assert isinstance(lazy["red"].data, dsa.Array)
    lazy = lazy.compute()
    for name in ("red", "nir", "valid_count"):
        np.testing.assert_array_equal(lazy[name].values, eager[name].values)
    assert lazy["valid_count"].dtype == np.uint8 and eager["red"].dtype == np.float32


def test_median_composite_matches_numpy_reference():
    refl, invalid = _refl_cube(seed=3)
    out = median_composite(refl, invalid)
    valid = ~invalid.values & ~np.isnan(refl["red"].values) & ~np.isnan(refl["nir"].values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name in ("red", "nir"):
            expect = np.nanmedian(np.where(valid, refl[name].values, np.nan), axis=0)
            np.testing.assert_array_equal(out[name].values, expect)
    np.testing.assert_array_equal(out["valid_count"].values, valid.sum(0))
    assert np.isnan(out["red"].values[0, 0]) and out["valid_count"].values[0, 0] == 0
    assert out["red"].odc.geobox == refl["red"].odc.geobox


# ---------------------------------------------------------------------------------------------- seasonal


def test_seasonal_composite_layout_and_laziness(tmp_path):
    items, _ = make_s2_items(tmp_path)
    gbox = demo_geobox(32)
    with dask.config.set(scheduler=_raising_scheduler):
        ds = seasonal_composite(items, gbox, season="spring", chunks={"y": 16, "x": 16}, dilation_m=20)
    assert set(ds.data_vars) == {"composite", "valid_count"}
    comp = ds["composite"]
    assert comp.dims == ("season", "band", "y", "x") and comp.dtype == np.float32
    assert isinstance(comp.data, dsa.Array) and comp.data.chunksize[-2:] == (16, 16)
    bands = ["blue", "green", "red", "rededge1", "nir", "nir08", "swir16"]
    assert list(comp["band"].values) == bands + list(DEFAULT_INDICES)
    assert list(ds["season"].values) == ["spring"]
    assert ds["valid_count"].dims == ("season", "y", "x") and ds["valid_count"].dtype == np.uint8
    assert "spatial_ref" in ds.coords and ds.odc.geobox == gbox
    assert json.loads(ds.attrs["items"]) == sorted(it.id for it in items)
    assert ds.attrs["mask_classes"] == [3, 8, 9, 10, 11] and ds.attrs["dilation_m"] == 20.0
    assert "lcstack_version" in ds.attrs
    out = ds.compute(scheduler="sync")
    ndvi = out["composite"].sel(band="ndvi").values
    red, nir = (out["composite"].sel(band=b).values for b in ("red", "nir"))
    np.testing.assert_allclose(ndvi, (nir - red) / (nir + red), rtol=1e-5)
    assert out["valid_count"].values.max() <= 3


def test_seasonal_composite_without_scl_warns(tmp_path):
    items, _ = make_s2_items(tmp_path, with_scl=False)
    with pytest.warns(NoCloudMaskWarning, match="no 'scl' asset"):
        ds = seasonal_composite(
            items, demo_geobox(32), season="summer", bands=["red", "nir"], indices=["ndvi"]
        )
    assert list(ds["band"].values) == ["red", "nir", "ndvi"]
    assert ds.attrs["cloud_mask"] == "none"
    counts = ds["valid_count"].values
    assert counts.max() == 3 and counts[0, -1, -1] == 0  # only DN 0 (nodata) drops an observation


# ---------------------------------------------------------------------------------------------- demo area


@pytest.fixture(scope="module")
def demo_area(tmp_path_factory):
    demo = pytest.importorskip("lcstack.demo")
    return demo.make_demo_area(tmp_path_factory.mktemp("demo"), size=256, seed=0, with_dem=False)


def _independent_composite(items, gbox, bands, classes):
    """rasterio read of every COG, 20 m upsampled by pixel repetition, SCL mask, np.nanmedian."""
    stacks = {b: [] for b in bands}
    valid_all = []
    for item in items:
        boa_applied = item.properties.get("earthsearch:boa_offset_applied") is True
        scl = _read(item, "scl", gbox)
        valid = ~np.isin(scl, classes) & (scl != 0)
        for band in bands:
            dn = _read(item, band, gbox)
            rb = item.assets[band].extra_fields.get("raster:bands", [{}])[0]
            scale = rb.get("scale", 1e-4)
            offset = 0.0 if boa_applied else rb.get("offset", 0.0)
            valid &= dn != 0
            stacks[band].append(dn.astype(np.float64) * scale + offset)
        valid_all.append(valid)
    valid = np.stack(valid_all)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = {b: np.nanmedian(np.where(valid, np.stack(v), np.nan), axis=0) for b, v in stacks.items()}
    return med, valid.sum(0)


def _read(item, band, gbox):
    with rasterio.open(item.assets[band].get_absolute_href()) as src:
        factor = int(round(src.res[0] / abs(gbox.resolution.x)))
        # window of the native grid covering the tile (the demo tile starts on a 60 m multiple)
        col0 = int(round((gbox.affine.c - src.transform.c) / src.res[0]))
        row0 = int(round((src.transform.f - gbox.affine.f) / src.res[1]))
        ny, nx = -(-gbox.shape.y // factor), -(-gbox.shape.x // factor)
        data = src.read(1, window=((row0, row0 + ny), (col0, col0 + nx)))
    data = np.repeat(np.repeat(data, factor, axis=0), factor, axis=1)
    return data[: gbox.shape.y, : gbox.shape.x]


def _check_against_independent(items, gbox, bands, season="spring", dilation_m=0.0):
    classes = (3, 8, 9, 10, 11)
    ds = seasonal_composite(items, gbox, season=season, bands=bands, chunks={"y": 128, "x": 128})
    out = ds.compute()
    ref, count = _independent_composite(items, gbox, bands, classes)
    assert count.max() > 0
    np.testing.assert_array_equal(out["valid_count"].values[0], count)
    for band in bands:
        got = out["composite"].sel(season=season, band=band).values
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref[band]))
        np.testing.assert_allclose(got, ref[band], atol=1e-4, equal_nan=True)
    red, nir = ref["red"], ref["nir"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ndvi = (nir - red) / (nir + red)
    np.testing.assert_allclose(out["composite"].sel(season=season, band="ndvi").values, ndvi, atol=1e-4)


def test_synthetic_composite_matches_independent_numpy(tmp_path):
    specs = [{"flavour": "es", "baseline": b} for b in ("05.09", "03.01", "05.10", "04.00", "05.11")]
    items, _ = make_s2_items(tmp_path, specs=specs, size=48, seed=7)
    _check_against_independent(items, demo_geobox(48), ["blue", "red", "nir", "rededge1", "swir16"])


@pytest.mark.slow
def test_demo_composite_matches_independent_numpy(demo_area):
    catalog = pystac.Catalog.from_file(str(demo_area.catalog))
    items = [it for it in catalog.get_items(recursive=True) if it.collection_id == demo_area.collection]
    seasons = json.loads(Path(demo_area.seasons).read_text())
    name, window = next(iter(seasons.items()))
    chosen = [it for it in items if window["start"] <= it.datetime.strftime("%Y-%m-%d") <= window["end"]]
    assert chosen, f"no demo item in season {name} {window}"
    _check_against_independent(chosen, demo_area.geobox, ["blue", "red", "nir", "rededge1", "swir16"], name)


@pytest.mark.parametrize(
    ("chunks", "dilation_m", "with_scl"),
    [({"y": 16, "x": 16}, 0.0, True), ({"y": 13, "x": 21}, 30.0, True), ({"y": 11, "x": 7}, 0.0, False)],
)
def test_fused_composite_equals_the_fine_grained_graph(tmp_path, chunks, dilation_m, with_scl):
    items, _ = make_s2_items(tmp_path, with_scl=with_scl)
    gbox = demo_geobox(32)
    kw = {"season": "spring", "chunks": chunks, "dilation_m": dilation_m}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoCloudMaskWarning)
        fine = seasonal_composite(items, gbox, **kw)
        with dask.config.set(scheduler=_raising_scheduler):
            fused = seasonal_composite(items, gbox, fuse_chunks=True, **kw)
    # one task per spatial chunk, band in one chunk, the same layout otherwise
    n_chunks = len(fused["composite"].data.chunks[2]) * len(fused["composite"].data.chunks[3])
    roots = [k for k in dict(fused.__dask_graph__()) if str(k[0]).startswith("lcstack-composite-")]
    assert len(roots) == n_chunks
    assert fused["composite"].data.chunks[1] == (fine.sizes["band"],)
    assert fused["composite"].data.chunks[2:] == fine["composite"].data.chunks[2:]
    assert fused.attrs == fine.attrs and fused.odc.geobox == gbox
    fused_c, fine_c = fused.compute(scheduler="sync"), fine.compute(scheduler="sync")
    # bit for bit, NaN where NaN: the dilation halo makes chunk edges see their neighbours' pixels
    xr.testing.assert_identical(fused_c, fine_c)
    if dilation_m:
        no_halo = seasonal_composite(items, gbox, **{**kw, "dilation_m": 0.0}).compute(scheduler="sync")
        assert (no_halo["valid_count"] != fused_c["valid_count"]).any(), "dilation must change the mask"
