"""`lcstack demo-data A --size 512 && lcstack composite A/config.yaml` against an independent NumPy median.

The reference reads every COG with rasterio at its native resolution, repeats 20 m and 60 m pixels onto the
10 m grid, applies each asset's declared scale and offset, masks SCL classes 3, 8, 9, 10, 11 (and nodata),
and takes ``np.nanmedian`` over the season's scenes: the composites must match on every pixel and band.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import odc.geo.xr  # noqa: F401  (registers .odc)
import pystac
import pytest
import rasterio
import xarray as xr

LCSTACK = str(Path(sys.executable).with_name("lcstack"))
MASK = (0, 3, 8, 9, 10, 11)


@pytest.fixture(scope="module")
def composited(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli512") / "a"
    env = {**os.environ, "LCSTACK_PROGRESS": "0"}
    for args in (
        ["demo-data", str(root), "--size", "512"],
        ["composite", str(root / "config.yaml"), "--quiet"],
    ):
        proc = subprocess.run([LCSTACK, *args], capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def _native(href: str, factor: int) -> tuple[np.ndarray, rasterio.Affine]:
    with rasterio.open(href) as src:
        data = src.read(1)
        transform = src.transform
    return np.repeat(np.repeat(data, factor, axis=0), factor, axis=1), transform


def _reference(items: list[pystac.Item], band: str, shape: tuple[int, int]) -> np.ndarray:
    stack = []
    for item in items:
        asset = item.assets[band]
        res = asset.extra_fields["raster:bands"][0]["spatial_resolution"]
        dn, _ = _native(asset.get_absolute_href(), int(res // 10))
        rb = asset.extra_fields["raster:bands"][0]
        refl = dn[: shape[0], : shape[1]].astype(np.float64) * rb.get("scale", 1) + rb.get("offset", 0)
        refl[dn[: shape[0], : shape[1]] == 0] = np.nan
        scl, _ = _native(item.assets["scl"].get_absolute_href(), 2)
        refl[np.isin(scl[: shape[0], : shape[1]], MASK)] = np.nan
        stack.append(refl.astype(np.float32))
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmedian(np.stack(stack), axis=0)


def test_composites_match_independent_numpy(composited: Path) -> None:
    catalog = pystac.Catalog.from_file(str(composited / "stac" / "catalog.json"))
    items = {it.id: it for it in catalog.get_items(recursive=True)}
    with rasterio.open(composited / "truth.tif") as truth:
        demo_transform, shape = truth.transform, truth.shape
    stores = sorted((composited / "lcstack-data" / "composites").glob("*/*.zarr"))
    seasons = json.loads((composited / "seasons.json").read_text())
    assert {p.name.split("_")[0] for p in stores} == {*seasons, "terrain"}
    checked = 0
    for store in stores:
        if store.name.startswith("terrain"):
            continue
        ds = xr.open_zarr(store)
        assert ds["composite"].dims == ("season", "band", "y", "x")
        assert ds.odc.crs == "EPSG:32630"
        used = [items[i] for i in json.loads(ds.attrs["items"])]
        assert 1 <= len(used) <= 4
        # the composite grid covers the demo grid: locate the demo grid's pixels in it
        col0 = int(round((demo_transform.c - float(ds.x[0]) + 5) / 10))
        row0 = int(round((float(ds.y[0]) + 5 - demo_transform.f) / 10))
        window = {"y": slice(row0, row0 + shape[0]), "x": slice(col0, col0 + shape[1])}
        comp = ds["composite"].isel(season=0).isel(window).load()
        for band in [b for b in comp["band"].values if b in used[0].assets]:
            ref = _reference(used, str(band), shape)
            got = comp.sel(band=band).values
            np.testing.assert_array_equal(np.isnan(got), np.isnan(ref), err_msg=f"{store.name} {band} NaN")
            np.testing.assert_allclose(got, ref, atol=1e-4, equal_nan=True, err_msg=f"{store.name} {band}")
            checked += 1
    assert checked == 3 * 12
