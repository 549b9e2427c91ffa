"""The fast composite path (native windowed reads, one numba pass) against the general one, bit for bit.

``seasonal_composite(fuse_chunks=True)`` reads assets on the grid's own lattice with plain rasterio reads
and composites the ``landcoverpy`` features with :func:`lcstack._kernels.masked_median_dn`; ``fast=False``
is odc-stac and xarray in every chunk. Both must give the same bytes, on the demo area's native tile grid
and on grids the fast read does not apply to.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox

from lcstack._kernels import masked_median_dn, nanmedian_time
from lcstack.composite import seasonal_composite
from lcstack.load import NotNativeError, _native_offsets, clear_dataset_cache, load_scenes


def _season_items(demo_area: Any) -> dict[str, list[pystac.Item]]:
    catalog = pystac.Catalog.from_file(str(demo_area.catalog))
    items = [it for it in catalog.get_items(recursive=True) if it.collection_id == demo_area.collection]
    seasons = json.loads(Path(demo_area.seasons).read_text())
    out = {}
    for name, window in seasons.items():
        day = lambda it: it.datetime.strftime("%Y-%m-%d")  # noqa: E731
        out[name] = sorted(
            (it for it in items if window["start"] <= day(it) <= window["end"]), key=lambda it: it.id
        )[:4]
    return out


def _same_bytes(a: xr.Dataset, b: xr.Dataset) -> None:
    xr.testing.assert_identical(a, b)
    for name in a.data_vars:
        va, vb = a[name].values, b[name].values
        assert va.dtype == vb.dtype
        assert va.tobytes() == vb.tobytes(), name  # NaN payloads and signed zeros too


# ---------------------------------------------------------------------------------------------- kernel


@pytest.mark.parametrize("t", [1, 2, 3, 4, 5, 8])
def test_masked_median_dn_is_the_median_of_the_reflectance_bit_for_bit(t: int) -> None:
    rng = np.random.default_rng(t)
    nb, ny, nx = 3, 19, 37
    dn = rng.integers(0, 60, (nb, t, ny, nx)).astype(np.uint16)  # many ties
    dn[rng.random(dn.shape) < 0.05] = 0  # nodata
    invalid = rng.random((t, ny, nx)) < 0.3
    invalid[:, 0, 0] = True  # a pixel without any valid observation
    scale = rng.uniform(0.9e-4, 1.1e-4, (nb, t)).astype(np.float32)
    offset = rng.choice([0.0, -0.1], (nb, t)).astype(np.float32)  # PB >= 04.00 offsets: no fused multiply-add
    got = masked_median_dn(list(dn), invalid, scale, offset)
    valid = ~invalid & (dn != 0).all(axis=0)
    for b in range(nb):
        refl = dn[b].astype(np.float32) * scale[b][:, None, None] + offset[b][:, None, None]
        want = nanmedian_time(np.where(valid, refl, np.float32(np.nan)).astype(np.float32), method="numpy")
        assert got[b].tobytes() == want.tobytes()
    np.testing.assert_array_equal(got[nb], valid.sum(axis=0))
    assert np.isnan(got[:nb, 0, 0]).all() and got[nb, 0, 0] == 0
    wide = np.full((nb + 3, ny, nx), 5.0, dtype=np.float32)  # room for two more layers (the indices)
    assert masked_median_dn(list(dn), invalid, scale, offset, out=wide) is wide
    assert wide[:nb].tobytes() == got[:nb].tobytes() and (wide[nb : nb + 2] == 5).all()
    np.testing.assert_array_equal(wide[-1], got[nb])
    no_mask = masked_median_dn(list(dn), None, scale, offset)
    np.testing.assert_array_equal(no_mask[nb], (dn != 0).all(axis=0).sum(axis=0))


# ---------------------------------------------------------------------------------------------- native reads


def test_native_reads_equal_odc_stac_on_and_off_the_tile(demo_area: Any) -> None:
    items = _season_items(demo_area)["spring"]
    gbox = demo_area.geobox
    x0, y0 = gbox.affine.c, gbox.affine.f
    pieces = [
        gbox,
        gbox[1:100, 3:77],  # odd offsets: halfway into 20 m pixels, inside 60 m ones
        gbox[250:256, 5:256],
        GeoBox((40, 50), Affine(10, 0, x0 - 130, 0, -10, y0 + 70), gbox.crs),  # partly off the assets
        GeoBox((8, 8), Affine(10, 0, x0 - 5000, 0, -10, y0), gbox.crs),  # wholly off
    ]
    for piece in pieces:
        odc = load_scenes(items, piece, eager=True)
        native = load_scenes(items, piece, eager=True, native=True)
        _same_bytes(native, odc)
    # the 10 m bands are the COG's own pixels, the 20 m ones its pixels repeated 2 x 2
    with rasterio.open(items[0].assets["red"].get_absolute_href()) as src:
        red = src.read(1)
    with rasterio.open(items[0].assets["rededge1"].get_absolute_href()) as src:
        rededge = np.repeat(np.repeat(src.read(1), 2, axis=0), 2, axis=1)
    ds = load_scenes(items[:1], gbox[7:90, 3:60], bands=["red", "rededge1"], eager=True, native=True)
    np.testing.assert_array_equal(ds["red"].values[0], red[7:90, 3:60])
    np.testing.assert_array_equal(ds["rededge1"].values[0], rededge[7:90, 3:60])


def test_grids_off_the_lattice_are_read_by_odc_stac(demo_area: Any, caplog: pytest.LogCaptureFixture) -> None:
    items = _season_items(demo_area)["summer"]
    gbox = demo_area.geobox
    shifted = GeoBox((60, 70), gbox.affine * Affine.translation(0.5, 0), gbox.crs)  # half a pixel east
    coarse = GeoBox.from_bbox(gbox.boundingbox, crs=gbox.crs, resolution=20)  # 10 m bands would shrink
    other = GeoBox.from_bbox(gbox.boundingbox.to_crs("EPSG:3035"), crs="EPSG:3035", resolution=10)[:50, :50]
    with rasterio.open(items[0].assets["red"].get_absolute_href()) as src:
        for grid in (shifted, coarse, other):
            with pytest.raises(NotNativeError):
                _native_offsets(src, grid, "uint16", "nearest")
        with pytest.raises(NotNativeError):
            _native_offsets(src, gbox, "uint8", "nearest")  # not the declared type
    with rasterio.open(items[0].assets["rededge1"].get_absolute_href()) as src:
        assert _native_offsets(src, gbox[3:, 5:], "uint16", "nearest") == (2, 3, 5)
        with pytest.raises(NotNativeError):
            _native_offsets(src, gbox, "uint16", "bilinear")  # upsampling by anything but nearest
    for grid in (shifted, other):
        with caplog.at_level(logging.DEBUG, logger="lcstack.load"):
            caplog.clear()
            native = load_scenes(items, grid, eager=True, native=True)
        assert "not a native read" in caplog.text
        _same_bytes(native, load_scenes(items, grid, eager=True))
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="lcstack.load"):
        load_scenes(items, gbox[:30, :30], eager=True, native=True)
    assert "not a native read" not in caplog.text


def test_a_rewritten_file_is_read_afresh(demo_area: Any, tmp_path: Path) -> None:
    item = _season_items(demo_area)["spring"][0].clone()
    path = tmp_path / "B04.tif"
    shutil.copy(item.assets["red"].get_absolute_href(), path)
    item.assets["red"].href = str(path)
    piece = demo_area.geobox[:40, :40]
    before = load_scenes([item], piece, bands=["red"], eager=True, native=True)["red"].values
    with rasterio.open(path) as src:
        profile = {**src.profile, "driver": "GTiff"}
    with rasterio.open(tmp_path / "new.tif", "w", **profile) as dst:  # re-downloaded: new pixels
        dst.write(np.full((dst.height, dst.width), 7, dtype=np.uint16), 1)
    (tmp_path / "new.tif").replace(path)
    after = load_scenes([item], piece, bands=["red"], eager=True, native=True)["red"].values
    assert (after == 7).all() and (before != 7).any()
    clear_dataset_cache()
    again = load_scenes([item], piece, bands=["red"], eager=True, native=True)["red"].values
    np.testing.assert_array_equal(again, after)


# ---------------------------------------------------------------------------------------------- composites


@pytest.mark.parametrize(
    ("kw", "seasons"),
    [
        ({"chunks": {"y": 128, "x": 128}}, None),
        ({"chunks": {"y": 128, "x": 100}, "dilation_m": 30.0}, ["spring"]),
        (
            {"chunks": {"y": 256, "x": 256}, "bands": ["red", "nir", "green"], "indices": ["ndvi", "ndre"]},
            ["autumn"],
        ),
        ({"chunks": {"y": 128, "x": 256}, "features": {"percentiles": [10, 90], "std": True}}, ["summer"]),
    ],
    ids=["default", "dilation", "some-bands", "features"],
)
def test_fast_composite_equals_the_general_path_on_the_demo_tile(
    demo_area: Any, kw: dict, seasons: list[str] | None
) -> None:
    for season, items in _season_items(demo_area).items():
        if seasons and season not in seasons:
            continue
        gbox = demo_area.geobox
        fast = seasonal_composite(items, gbox, season=season, fuse_chunks=True, **kw)
        general = seasonal_composite(items, gbox, season=season, fuse_chunks=True, fast=False, **kw)
        assert fast["composite"].data.chunks == general["composite"].data.chunks
        _same_bytes(fast.compute(scheduler="sync"), general.compute(scheduler="sync"))


def test_fast_composite_equals_the_general_path_off_the_lattice(demo_area: Any) -> None:
    items = _season_items(demo_area)["autumn"]
    gbox = demo_area.geobox
    shifted = GeoBox((96, 80), gbox.affine * Affine.translation(20.5, 10.25), gbox.crs)
    kw = {"season": "autumn", "chunks": {"y": 50, "x": 50}, "fuse_chunks": True}
    fast = seasonal_composite(items, shifted, **kw).compute(scheduler="sync")
    _same_bytes(fast, seasonal_composite(items, shifted, fast=False, **kw).compute(scheduler="sync"))
