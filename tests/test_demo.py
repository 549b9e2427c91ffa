"""Tests of the synthetic demo area (lcstack.demo)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pystac
import pytest
import rasterio
import yaml
from odc.geo.geobox import GeoBox
from odc.geo.geom import BoundingBox
from pyproj import Transformer

from lcstack.demo import DemoArea, make_demo_area
from lcstack.errors import InvalidInputError

SIZE = 256
L2A_KEYS = {
    "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3",
    "nir", "nir08", "nir09", "swir16", "swir22", "scl",
}  # fmt: skip
RES = {
    "coastal": 60, "blue": 10, "green": 10, "red": 10, "rededge1": 20, "rededge2": 20, "rededge3": 20,
    "nir": 10, "nir08": 20, "nir09": 60, "swir16": 20, "swir22": 20, "scl": 20, "cirrus": 60,
}  # fmt: skip
CLOUD_SCL = [8, 9, 10]


@pytest.fixture(scope="module")
def area(tmp_path_factory: pytest.TempPathFactory) -> DemoArea:
    return make_demo_area(tmp_path_factory.mktemp("demo") / "area", size=SIZE, seed=0)


@pytest.fixture(scope="module")
def l1c(tmp_path_factory: pytest.TempPathFactory) -> DemoArea:
    return make_demo_area(
        tmp_path_factory.mktemp("demo") / "l1c", size=SIZE, seed=0, flavour="l1c", with_dem=False
    )


def s2_items(area: DemoArea) -> list[pystac.Item]:
    catalog = pystac.Catalog.from_file(area.catalog)
    return sorted(catalog.get_child(area.collection).get_items(), key=lambda i: i.id)  # type: ignore[union-attr]


def read(item: pystac.Item, key: str) -> np.ndarray:
    with rasterio.open(item.assets[key].get_absolute_href()) as src:
        return src.read(1)


def reflectance(item: pystac.Item, key: str) -> np.ndarray:
    band = item.assets[key].extra_fields["raster:bands"][0]
    dn = read(item, key)
    out = dn * band["scale"] + band["offset"]
    return np.where(dn == band["nodata"], np.nan, out)


def file_hashes(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.suffix in {".tif", ".csv", ".json", ".yaml"})
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def pixel_of(area: DemoArea, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:32630", always_xy=True).transform(lon, lat)
    t = area.geobox.affine
    return np.floor((y - t.f) / t.e).astype(int), np.floor((x - t.c) / t.a).astype(int)


# -- catalog structure -----------------------------------------------------------------------------


def test_catalog_structure(area: DemoArea) -> None:
    catalog = pystac.Catalog.from_file(area.catalog)
    assert {c.id for c in catalog.get_children()} == {"sentinel-2-l2a", "cop-dem-glo-30"}
    items = s2_items(area)
    assert len(items) == 15
    for item in items:
        assert item.id.startswith(("S2A_30SUF_2023", "S2B_30SUF_2023")) and item.id.endswith("_0_L2A")
        assert item.collection_id == "sentinel-2-l2a"
        p = item.properties
        assert p["proj:code"] == "EPSG:32630" and p["grid:code"] == "MGRS-30SUF"
        assert p["constellation"] == "sentinel-2" and p["platform"] in {"sentinel-2a", "sentinel-2b"}
        assert p["earthsearch:boa_offset_applied"] is False
        assert p["s2:processing_baseline"] in {"03.01", "05.09"}
        assert any("projection" in e for e in item.stac_extensions)
        assert any("raster" in e for e in item.stac_extensions)
        assert set(item.assets) == L2A_KEYS
        for key, asset in item.assets.items():
            assert asset.media_type == pystac.MediaType.COG
            assert asset.roles == ["data", "reflectance"]
            band = asset.extra_fields["raster:bands"][0]
            assert band["spatial_resolution"] == RES[key]
            n = math.ceil(SIZE * 10 / RES[key])
            assert asset.extra_fields["proj:shape"] == [n, n]
            assert asset.extra_fields["proj:transform"] == [RES[key], 0, 360000.0, 0, -RES[key], 4080000.0]
            with rasterio.open(asset.get_absolute_href()) as src:
                assert src.shape == (n, n)
                assert src.crs.to_epsg() == 32630
                assert src.transform.a == RES[key] and (src.transform.c, src.transform.f) == (360000, 4080000)
                assert src.dtypes[0] == band["data_type"]
                assert src.nodata == 0
                assert src.profile["compress"] == "deflate"
                assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            if key == "scl":
                assert band["data_type"] == "uint8" and "scale" not in band
            else:
                assert band["data_type"] == "uint16" and band["scale"] == 0.0001
                assert asset.extra_fields["eo:bands"][0]["name"] == key
    assert math.ceil(SIZE / 2) == SIZE // 2  # 20 m grid nests exactly


def test_hrefs_are_relative(area: DemoArea) -> None:
    for path in (area.root / "stac").rglob("*.json"):
        doc = json.loads(path.read_text())
        hrefs = [link["href"] for link in doc.get("links", [])]
        hrefs += [a["href"] for a in doc.get("assets", {}).values()]
        assert hrefs and all(not h.startswith("/") and "://" not in h for h in hrefs), path
        assert not any(link["rel"] == "self" for link in doc.get("links", []))


def test_seasons_and_cloud_filter(area: DemoArea) -> None:
    seasons = json.loads(area.seasons.read_text())
    assert seasons == {
        "spring": {"start": "2023-03-01", "end": "2023-05-31"},
        "summer": {"start": "2023-06-01", "end": "2023-08-31"},
        "autumn": {"start": "2023-09-01", "end": "2023-11-30"},
    }
    items = s2_items(area)
    for season in seasons.values():
        in_season = [i for i in items if season["start"] <= f"{i.datetime:%Y-%m-%d}" <= season["end"]]
        assert len(in_season) == 5
        assert sum(i.properties["eo:cloud_cover"] > 80 for i in in_season) == 1
        assert sum(i.properties["eo:cloud_cover"] <= 60 for i in in_season) == 4
    assert len({i.datetime for i in items}) == len(items)


def test_cloud_cover_matches_scl(area: DemoArea) -> None:
    seen = set()
    for item in s2_items(area):
        scl = read(item, "scl")
        valid = scl != 0
        expected = 100.0 * np.isin(scl, CLOUD_SCL).sum() / valid.sum()
        assert item.properties["eo:cloud_cover"] == pytest.approx(expected, abs=1e-4)
        assert item.properties["s2:cloud_shadow_percentage"] == pytest.approx(
            100.0 * (scl == 3).sum() / valid.sum(), abs=1e-4
        )
        seen.update(np.unique(scl).tolist())
    assert {3, 4, 5, 6, 8, 9, 10} <= seen


def test_clouds_are_bright_and_shadows_dark(area: DemoArea) -> None:
    item = max(s2_items(area), key=lambda i: i.properties["s2:cloud_shadow_percentage"])
    scl = read(item, "scl")
    blue = reflectance(item, "blue")[::2, ::2]  # one 10 m pixel per 20 m SCL pixel
    nir = reflectance(item, "nir")[::2, ::2]
    assert np.nanmedian(blue[scl == 9]) > 0.35
    land = np.isin(scl, [4, 5])
    assert np.nanmedian(nir[scl == 3]) < 0.5 * np.nanmedian(nir[land])


def test_nodata_swath(area: DemoArea) -> None:
    partial = [i for i in s2_items(area) if i.properties["s2:nodata_pixel_percentage"] > 0]
    assert len(partial) == 1
    item = partial[0]
    red, scl = read(item, "red"), read(item, "scl")
    assert 100.0 * (red == 0).mean() == pytest.approx(item.properties["s2:nodata_pixel_percentage"], abs=1e-4)
    assert 15 < item.properties["s2:nodata_pixel_percentage"] < 35
    # the swath edge is the same on every grid
    np.testing.assert_array_equal(np.repeat(np.repeat(scl == 0, 2, 0), 2, 1), red == 0)
    np.testing.assert_array_equal(
        np.repeat(np.repeat(read(item, "coastal") == 0, 6, 0), 6, 1)[:SIZE, :SIZE], red == 0
    )
    assert (red[:, 0] == 0).all() and (red[:, -1] != 0).all()


def test_reflectance_decodes_for_both_baselines(area: DemoArea) -> None:
    truth = rasterio.open(area.truth).read(1)
    labels = json.loads(area.lc_labels.read_text())
    water, bare = truth == labels["water"], truth == labels["bareSoil"]
    baselines, checked = set(), set()
    for item in s2_items(area):
        pb = item.properties["s2:processing_baseline"]
        baselines.add(pb)
        offset = item.assets["red"].extra_fields["raster:bands"][0]["offset"]
        assert offset == (0.0 if pb == "03.01" else -0.1)
        clear = np.isin(np.repeat(np.repeat(read(item, "scl"), 2, 0), 2, 1), [4, 5, 6])
        dn = read(item, "red")
        assert dn[clear].min() >= (1 if pb == "03.01" else 1000)
        for key in ("blue", "red", "nir", "swir16", "coastal"):
            refl = reflectance(item, key)
            assert np.nanmin(refl) >= 0.0 and np.nanmax(refl) <= 1.0
        # decoded values are physically right only if the offset was applied correctly
        nir = reflectance(item, "nir")
        swir = np.repeat(np.repeat(reflectance(item, "swir16"), 2, 0), 2, 1)
        if (clear & water).sum() > 50 and (clear & bare).sum() > 50:
            checked.add(pb)
            assert np.nanmedian(nir[clear & water]) < 0.05
            assert 0.35 < np.nanmedian(swir[clear & bare]) < 0.55
    assert baselines == checked == {"03.01", "05.09"}
    assert sum(i.properties["s2:processing_baseline"] == "03.01" for i in s2_items(area)) == 1


# -- land cover, labels and points -----------------------------------------------------------------


def test_truth_and_labels(area: DemoArea) -> None:
    lc = json.loads(area.lc_labels.read_text())
    sl = json.loads(area.sl_labels.read_text())
    assert len(lc) >= 8 and min(lc.values()) >= 1
    assert min(sl.values()) >= 2
    with rasterio.open(area.truth) as src:
        truth = src.read(1)
        assert src.crs.to_epsg() == 32630 and src.transform == area.geobox.affine and src.dtypes[0] == "uint8"
    truth_sl = rasterio.open(area.truth_sl).read(1)
    assert truth.shape == truth_sl.shape == (SIZE, SIZE)
    assert set(np.unique(truth)) == set(lc.values())
    assert set(np.unique(truth_sl)) == set(sl.values()) | {1}
    # subcategories only inside forest and cropland
    assert set(np.unique(truth[truth_sl > 1])) == {lc["forest"], lc["cropland"]}
    assert (truth_sl[np.isin(truth, [lc["forest"], lc["cropland"]])] > 1).all()


def test_points_fall_inside_their_class(area: DemoArea) -> None:
    text = area.points.read_text()
    assert text.splitlines()[0] == "latitude;longitude;category;subcategory"
    assert all(len(line.split(";")[0].split(".")[1]) == 7 for line in text.splitlines()[1:])
    points = pd.read_csv(area.points, sep=";", dtype={"subcategory": str})
    lc = json.loads(area.lc_labels.read_text())
    sl = json.loads(area.sl_labels.read_text())
    truth = rasterio.open(area.truth).read(1)
    truth_sl = rasterio.open(area.truth_sl).read(1)
    row, col = pixel_of(area, points.longitude.to_numpy(), points.latitude.to_numpy())
    assert ((row >= 2) & (row < SIZE - 2) & (col >= 2) & (col < SIZE - 2)).all()
    assert (truth[row, col] == points.category.map(lc).to_numpy()).all()
    expected_sl = points.subcategory.map(sl).fillna(1).astype(int).to_numpy()
    assert (truth_sl[row, col] == expected_sl).all()
    for r, c in zip(row, col, strict=True):  # at least 2 pixels from any class boundary
        assert (truth[r - 2 : r + 3, c - 2 : c + 3] == truth[r, c]).all()
        assert (truth_sl[r - 2 : r + 3, c - 2 : c + 3] == truth_sl[r, c]).all()
    counts = points.subcategory.fillna(points.category).value_counts()
    assert len(counts) == 11 and counts.min() == counts.max() == round(60 * math.sqrt(SIZE / 512))


def test_n_points(tmp_path: Path) -> None:
    area = make_demo_area(tmp_path, size=SIZE, seed=3, n_points=25, with_dem=False)
    assert len(pd.read_csv(area.points, sep=";")) == 25


def test_classes_are_separable_on_seasonal_medians(area: DemoArea) -> None:
    """A random forest on per-season medians of cloud-free observations classifies held-out points."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import cross_val_score

    seasons = json.loads(area.seasons.read_text())
    points = pd.read_csv(area.points, sep=";", dtype={"subcategory": str})
    row, col = pixel_of(area, points.longitude.to_numpy(), points.latitude.to_numpy())
    keys = ["blue", "green", "red", "rededge1", "nir", "nir08", "swir16", "swir22"]
    features = []
    for season in seasons.values():
        items = [
            i
            for i in s2_items(area)
            if season["start"] <= f"{i.datetime:%Y-%m-%d}" <= season["end"]
            and i.properties["eo:cloud_cover"] <= 60
        ]
        stack = []
        for item in items:
            clear = ~np.isin(read(item, "scl")[row // 2, col // 2], [0, 3, 8, 9, 10])
            f = [reflectance(item, k)[row // (RES[k] // 10), col // (RES[k] // 10)] for k in keys]
            stack.append(np.where(clear, np.stack(f), np.nan))
        assert (np.isfinite(np.stack(stack)[:, 0]).sum(axis=0) >= 1).mean() > 0.99
        features.append(np.nanmedian(np.stack(stack), axis=0))
    x = np.nan_to_num(np.concatenate(features).T, nan=-1.0)
    y = np.asarray(points.subcategory.fillna(points.category), dtype=str)
    score = cross_val_score(RandomForestClassifier(100, random_state=0, n_jobs=1), x, y, cv=4).mean()
    assert score >= 0.95


# -- determinism -----------------------------------------------------------------------------------


def test_same_seed_same_bytes(area: DemoArea, tmp_path: Path) -> None:
    again = make_demo_area(tmp_path / "again", size=SIZE, seed=0)
    first, second = file_hashes(area.root), file_hashes(again.root)
    assert len(first) > 200
    assert first == second


def test_different_seed_differs(area: DemoArea, tmp_path: Path) -> None:
    other = make_demo_area(tmp_path / "other", size=SIZE, seed=1, with_dem=False)
    assert area.truth.read_bytes() != other.truth.read_bytes()
    assert area.points.read_text() != other.points.read_text()
    assert [i.id for i in s2_items(area)] != [i.id for i in s2_items(other)]


def test_regenerating_into_same_folder(tmp_path: Path) -> None:
    make_demo_area(tmp_path, size=SIZE, seed=2)
    area = make_demo_area(tmp_path, size=SIZE, seed=2, flavour="l1c", with_dem=False)
    assert [p.name for p in (tmp_path / "stac").iterdir() if p.is_dir()] == ["sentinel-2-l1c"]
    assert area.dem_collection is None


# -- flavours, DEM, config -------------------------------------------------------------------------


def test_l1c_flavour(l1c: DemoArea) -> None:
    assert l1c.collection == "sentinel-2-l1c" and l1c.dem_collection is None
    catalog = pystac.Catalog.from_file(l1c.catalog)
    assert [c.id for c in catalog.get_children()] == ["sentinel-2-l1c"]
    items = s2_items(l1c)
    assert len(items) == 15
    for item in items:
        assert item.id.endswith("_L1C")
        assert set(item.assets) == (L2A_KEYS - {"scl"}) | {"cirrus"}
        assert "earthsearch:boa_offset_applied" not in item.properties
        assert item.properties["s2:processing_baseline"] == "05.09"
        assert item.properties["s2:product_type"] == "S2MSI1C"
        assert all(a.extra_fields["raster:bands"][0]["offset"] == 0 for a in item.assets.values())
        assert item.assets["cirrus"].extra_fields["raster:bands"][0]["spatial_resolution"] == 60
    overcast = max(items, key=lambda i: i.properties["eo:cloud_cover"])
    clearest = min(items, key=lambda i: i.properties["eo:cloud_cover"])
    assert overcast.properties["eo:cloud_cover"] > 80
    assert np.nanmean(reflectance(overcast, "cirrus")) > 5 * np.nanmean(reflectance(clearest, "cirrus"))
    assert "dem_collection" not in yaml.safe_load(l1c.config.read_text())


def test_dem(area: DemoArea) -> None:
    catalog = pystac.Catalog.from_file(area.catalog)
    (item,) = list(catalog.get_child("cop-dem-glo-30").get_items())  # type: ignore[union-attr]
    assert set(item.assets) == {"data"}
    assert item.properties["proj:code"] == "EPSG:4326"
    with rasterio.open(item.assets["data"].get_absolute_href()) as src:
        assert src.crs.to_epsg() == 4326 and src.dtypes[0] == "float32"
        assert src.res == pytest.approx((1 / 3600, 1 / 3600))
        assert list(src.shape) == item.properties["proj:shape"]
        dem = src.read(1)
        left, bottom, right, top = src.bounds
    area_bbox = area.geobox.extent.to_crs("EPSG:4326").boundingbox
    assert (
        left < area_bbox.left
        and right > area_bbox.right
        and bottom < area_bbox.bottom
        and top > area_bbox.top
    )
    assert 0.0 <= dem.min() and dem.max() <= 1200.0 and dem.max() - dem.min() > 50
    assert np.abs(np.diff(dem, axis=0)).max() < 20  # smooth: < 20 m per arc-second


def test_config(area: DemoArea) -> None:
    config = yaml.safe_load(area.config.read_text())
    assert config["collection"] == "sentinel-2-l2a" and config["dem_collection"] == "cop-dem-glo-30"
    assert config["crs"] == "EPSG:32630" and config["resolution"] == 10
    assert config["storage"] == "lcstack-data" and config["max_cloud_cover"] == 60
    for key in ("stac", "seasons", "points", "lc_labels", "sl_labels"):
        assert not Path(config[key]).is_absolute() and (area.root / config[key]).is_file()
    # the AOI, reprojected and snapped to 10 m, is a pixel-aligned superset of the demo grid
    bbox = BoundingBox(*config["aoi"], crs="EPSG:4326").to_crs("EPSG:32630")
    geobox = GeoBox.from_bbox(bbox, crs="EPSG:32630", resolution=10, tight=False)
    left, bottom, right, top = geobox.boundingbox
    g = area.geobox.boundingbox
    assert left <= g.left and bottom <= g.bottom and right >= g.right and top >= g.top
    assert (left - g.left) % 10 == 0 and (top - g.top) % 10 == 0
    assert geobox.shape[0] < SIZE * 1.05 and geobox.shape[1] < SIZE * 1.05


def test_odc_stac_loads_the_catalog(area: DemoArea) -> None:
    odc_stac = pytest.importorskip("odc.stac")
    items = [i for i in s2_items(area) if i.properties["s2:processing_baseline"] == "05.09"][:1]
    ds = odc_stac.load(items, bands=["red", "swir16", "scl"], geobox=area.geobox)
    assert ds.red.shape == (1, SIZE, SIZE)
    np.testing.assert_array_equal(ds.red.values[0], read(items[0], "red"))
    np.testing.assert_array_equal(ds.scl.values[0], np.repeat(np.repeat(read(items[0], "scl"), 2, 0), 2, 1))


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": 255},
        {"size": 10981},
        {"size": 300.0},
        {"size": True},
        {"seed": -1},
        {"flavour": "l2"},
        {"n_points": 0},
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(InvalidInputError):
        make_demo_area(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_refuses_foreign_stac_folder(tmp_path: Path) -> None:
    (tmp_path / "stac").mkdir()
    (tmp_path / "stac" / "mine.txt").write_text("keep me")
    with pytest.raises(InvalidInputError, match="not an lcstack demo catalog"):
        make_demo_area(tmp_path, size=SIZE)
    assert (tmp_path / "stac" / "mine.txt").exists()
