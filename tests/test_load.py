"""Tests for lcstack.load: canonical band mapping, harmonised scale/offset, exact grid, laziness."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dask
import numpy as np
import pystac
import pytest
import rasterio
from odc.geo.geobox import GeoBox
from rasterio.transform import Affine

from lcstack.errors import InvalidInputError
from lcstack.load import common_bands, load_scenes, to_reflectance

EPSG = 32633
X0, Y0 = 500_000.0, 4_000_020.0
TEN_M = ("blue", "green", "red", "nir")
TWENTY_M = ("rededge1", "nir08", "swir16")
PC_KEYS = {
    "blue": "B02",
    "green": "B03",
    "red": "B04",
    "nir": "B08",
    "rededge1": "B05",
    "nir08": "B8A",
    "swir16": "B11",
    "scl": "SCL",
}


def demo_geobox(size: int) -> GeoBox:
    return GeoBox.from_bbox((X0, Y0 - size * 10, X0 + size * 10, Y0), crs=f"EPSG:{EPSG}", resolution=10)


def _write_tif(path: Path, data: np.ndarray, res: float) -> tuple[list[int], list[float]]:
    transform = Affine(res, 0, X0, 0, -res, Y0)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[1],
        height=data.shape[0],
        count=1,
        dtype=data.dtype,
        crs=f"EPSG:{EPSG}",
        transform=transform,
        nodata=0,
        tiled=True,
        blockxsize=16,
        blockysize=16,
    ) as dst:
        dst.write(data, 1)
    return list(data.shape), list(transform)[:6]


def make_s2_items(
    folder: Path,
    *,
    size: int = 32,
    specs: list[dict] | None = None,
    seed: int = 0,
    with_scl: bool = True,
    identical: bool = False,
) -> tuple[list[pystac.Item], dict[str, dict[str, np.ndarray]]]:
    """Write tiny single-granule Sentinel-2-like items (10 m and 20 m COGs + SCL) and their STAC items.

    ``specs``: one dict per item with ``flavour`` ("es" keys like Earth Search, "pc" like Planetary
    Computer), ``baseline`` and optional ``dn_add`` (added to every reflectance DN, for PB >= 04.00 ESA
    DNs). ``identical=True`` gives every item the same pixels (before ``dn_add``). Returns the items and
    the native-resolution DN arrays per item id.
    """
    rng = np.random.default_rng(seed)
    specs = specs or [{"flavour": "es", "baseline": "05.09"} for _ in range(3)]
    gbox = demo_geobox(size)
    geom = gbox.extent.to_crs("EPSG:4326")
    items, truth = [], {}
    for n, spec in enumerate(specs):
        item_id = f"S2A_33TXX_2023060{n + 1}_0_L2A_{spec['flavour']}"
        props = {
            "platform": "sentinel-2a",
            "s2:processing_baseline": spec["baseline"],
            "proj:code": f"EPSG:{EPSG}",
        }
        if spec["flavour"] == "es":
            props["earthsearch:boa_offset_applied"] = spec["baseline"] >= "04.00"
        item = pystac.Item(
            item_id,
            geom.json,
            list(geom.boundingbox),
            dt.datetime(2023, 6, n + 1, 10, tzinfo=dt.UTC),
            props,
            stac_extensions=["https://stac-extensions.github.io/projection/v2.0.0/schema.json"],
        )
        arrays = {}
        if identical:
            rng = np.random.default_rng(seed)
        base = rng.integers(1, 9000, size=(size, size)).astype(np.uint16)
        for band in TEN_M + TWENTY_M + (("scl",) if with_scl else ()):
            res = 10 if band in TEN_M else 20
            shape = (size * 10 // res,) * 2
            if band == "scl":
                data = rng.choice(
                    np.array([4, 5, 6, 8, 9, 3], np.uint8), size=shape, p=[0.4, 0.2, 0.1, 0.1, 0.1, 0.1]
                )
                data = data.astype(np.uint8)
                data[0, 0] = 0  # one nodata pixel
            else:
                data = (base[: shape[0], : shape[1]] + rng.integers(0, 500, size=shape)).astype(np.uint16)
                data += np.uint16(spec.get("dn_add", 0))
                data[-1, -1] = 0  # nodata
            arrays[band] = data
            key = band if spec["flavour"] == "es" else PC_KEYS[band]
            path = folder / f"{item_id}_{key}.tif"
            shape_, transform = _write_tif(path, data, res)
            extra: dict = {"proj:shape": shape_, "proj:transform": transform, "gsd": res}
            if spec["flavour"] == "es":
                extra["raster:bands"] = [
                    {
                        "data_type": str(data.dtype),
                        "nodata": 0,
                        "scale": 1.0 if band == "scl" else 1e-4,
                        "offset": 0 if band == "scl" else -0.1,
                    }
                ]
            item.add_asset(
                key,
                pystac.Asset(str(path), media_type=pystac.MediaType.COG, roles=["data"], extra_fields=extra),
            )
        items.append(item)
        truth[item_id] = arrays
    return items, truth


def upsample(a: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)


@pytest.fixture()
def s2(tmp_path):
    return make_s2_items(tmp_path)


def test_load_layout_dtype_and_exact_grid(s2):
    items, truth = s2
    gbox = demo_geobox(32)
    ds = load_scenes(items, gbox, chunks={"x": 16, "y": 16})
    assert list(ds.data_vars) == ["blue", "green", "red", "rededge1", "nir", "nir08", "swir16", "scl"]
    assert ds.odc.geobox == gbox
    assert ds["red"].dims == ("time", "y", "x") and ds["red"].dtype == np.uint16
    assert ds["scl"].dtype == np.uint8
    assert ds["red"].chunks == ((1, 1, 1), (16, 16), (16, 16))
    assert list(ds["id"].values) == [it.id for it in items]
    assert ds["scale_red"].dtype == np.float32 and "scale_scl" not in ds.coords
    # Earth Search items with boa_offset_applied: offset already in the pixels
    np.testing.assert_array_equal(ds["offset_red"].values, 0)
    np.testing.assert_allclose(ds["scale_red"].values, 1e-4)
    first = truth[items[0].id]
    np.testing.assert_array_equal(ds["red"].isel(time=0).values, first["red"])
    # 20 m onto 10 m with nearest = pixel repetition
    np.testing.assert_array_equal(ds["swir16"].isel(time=0).values, upsample(first["swir16"], 2))
    np.testing.assert_array_equal(ds["scl"].isel(time=0).values, upsample(first["scl"], 2))


def test_to_reflectance_scale_offset_and_nodata(s2):
    items, truth = s2
    ds = to_reflectance(load_scenes(items, demo_geobox(32), bands=["red", "scl"]))
    assert ds["red"].dtype == np.float32 and ds["scl"].dtype == np.uint8
    assert "scale_red" not in ds.coords
    dn = truth[items[1].id]["red"].astype(np.float32)
    expect = np.where(dn == 0, np.nan, dn * np.float32(1e-4))
    np.testing.assert_allclose(ds["red"].isel(time=1).values, expect, rtol=1e-6)
    assert np.isnan(ds["red"].values[:, -1, -1]).all()


def test_harmonisation_across_baselines_and_catalogs(tmp_path):
    # the same surface: PB 03.01 on Planetary Computer (no offset), PB 05.09 on Planetary Computer (ESA DN =
    # DN + 1000, offset -0.1 applied by us) and PB 05.09 on Earth Search (offset already removed in the COG)
    specs = [
        {"flavour": "pc", "baseline": "03.01"},
        {"flavour": "pc", "baseline": "05.09", "dn_add": 1000},
        {"flavour": "es", "baseline": "05.09"},
    ]
    items, truth = make_s2_items(tmp_path, specs=specs, identical=True)
    ds = load_scenes(items, demo_geobox(32), bands=["red", "nir08", "scl"])
    np.testing.assert_allclose(ds["offset_red"].values, [0.0, -0.1, 0.0], atol=1e-7)
    assert ds["red"].values[1].astype(int).min() >= 1000 or ds["red"].values[1].min() == 0
    refl = to_reflectance(ds).compute()
    for band in ("red", "nir08"):
        v = refl[band].values
        dn = truth[items[0].id][band].astype(np.float64)
        assert np.nanmax(v) < 1.0
        np.testing.assert_allclose(v[0], v[1], atol=1e-6)
        np.testing.assert_allclose(v[0], v[2], atol=1e-6)
        # and the value is DN * 1e-4 of the baseline-03.01 pixels, at native resolution
        native = v[0][::2, ::2] if band == "nir08" else v[0]
        np.testing.assert_allclose(native, np.where(dn == 0, np.nan, dn * 1e-4), atol=1e-6)


def test_bands_none_uses_intersection_and_missing_bands_raise(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, _ = make_s2_items(tmp_path / "a", specs=[{"flavour": "es", "baseline": "05.09"}])
    b, _ = make_s2_items(tmp_path / "b", specs=[{"flavour": "pc", "baseline": "05.09"}], with_scl=False)
    b[0].id = "no-scl-item"
    assert "scl" not in common_bands(a + b)
    ds = load_scenes(a + b, demo_geobox(32))
    assert "scl" not in ds.data_vars and "red" in ds.data_vars
    with pytest.raises(InvalidInputError, match="no-scl-item.*scl"):
        load_scenes(a + b, demo_geobox(32), bands=["red", "scl"])
    with pytest.raises(InvalidInputError, match="unknown band"):
        load_scenes(a, demo_geobox(32), bands=["B04"])
    with pytest.raises(InvalidInputError, match="no items"):
        load_scenes([], demo_geobox(32))


def test_load_is_lazy(s2):
    items, _ = s2

    def boom(*args, **kwargs):
        raise AssertionError("something computed while building the graph")

    with dask.config.set(scheduler=boom):
        ds = to_reflectance(load_scenes(items, demo_geobox(32), chunks={"x": 16, "y": 16}))
    assert ds["red"].chunks is not None
    ds["red"].compute(scheduler="sync")


def test_subgrid_geobox_is_exact(s2):
    items, truth = s2
    sub = demo_geobox(32)[4:20, 8:30]
    ds = load_scenes(items, sub, bands=["red", "swir16"], chunks={"x": 8, "y": 8})
    assert ds.odc.geobox == sub
    np.testing.assert_array_equal(ds["red"].isel(time=2).values, truth[items[2].id]["red"][4:20, 8:30])
    np.testing.assert_array_equal(
        ds["swir16"].isel(time=2).values, upsample(truth[items[2].id]["swir16"], 2)[4:20, 8:30]
    )


def test_stackstac_matches_odc(s2, monkeypatch):
    pytest.importorskip("stackstac")
    import pandas as pd

    if int(pd.__version__.split(".")[0]) >= 3:
        # stackstac 0.5.0 passes infer_datetime_format, which pandas 3 removed; shim it for this test only
        original = pd.to_datetime

        def to_datetime(*args, infer_datetime_format=None, **kwargs):
            return original(*args, **kwargs)

        monkeypatch.setattr(pd, "to_datetime", to_datetime)
    items, _ = s2
    gbox = demo_geobox(32)
    a = load_scenes(items, gbox, chunks={"x": 16, "y": 16})
    b = load_scenes(items, gbox, chunks={"x": 16, "y": 16}, loader="stackstac")
    assert list(b.data_vars) == list(a.data_vars)
    assert b.odc.geobox == gbox
    for band in a.data_vars:
        assert b[band].dtype == a[band].dtype
        np.testing.assert_array_equal(b[band].values, a[band].values)
    np.testing.assert_array_equal(b["scale_red"].values, a["scale_red"].values)
