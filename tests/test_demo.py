"""Tests of the synthetic demo area (lcstack.demo)."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
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
        with warnings.catch_warnings():  # a point no scene saw clearly in a season is NaN there
            warnings.simplefilter("ignore", RuntimeWarning)
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
    assert "crs" not in config and config["resolution"] == 10  # the Sentinel-2 tile grid
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


# -- one tile: unchanged -----------------------------------------------------------------------------------

#: sha256 (first 16 hex digits) of text files and of decoded pixels of the 256², seed 0 area, as written by
#: the generator before multi-tile areas existed (pixels, not COG bytes, which depend on the zlib build);
#: config.yaml since it leaves out `crs:` (the Sentinel-2 tile grid is the default grid).
ONE_TILE_DIGESTS = {
    "dataset.csv": "9cd8041a546dc8bf",
    "config.yaml": "cde4094cd7629c78",
    "stac/sentinel-2-l2a/S2A_30SUF_20230302_0_L2A/S2A_30SUF_20230302_0_L2A.json": "f99a8e2ff7c53eb1",
    "truth.tif": "4d5cb9275f45255c",
    "stac/sentinel-2-l2a/S2A_30SUF_20230302_0_L2A/B04.tif": "c380c5f478bf31a0",
    "stac/sentinel-2-l2a/S2A_30SUF_20230302_0_L2A/SCL.tif": "81c87b8a0e428125",
    "stac/sentinel-2-l2a/S2A_30SUF_20230302_0_L2A/B11.tif": "2b8e9912f9ca6d7a",
}


def test_one_tile_output_is_unchanged(area: DemoArea) -> None:
    for name, digest in ONE_TILE_DIGESTS.items():
        path = area.root / name
        if path.suffix == ".tif":
            with rasterio.open(path) as src:
                data = src.read(1).tobytes()
        else:
            data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest()[:16] == digest, name
    assert not (area.root / "truth").exists()
    assert list(area.tiles) == ["30SUF"] and area.truths["30SUF"] == (area.truth, area.truth_sl)


# -- several tiles -----------------------------------------------------------------------------------------

TILES3 = ["30SYJ", "31SBD", "30SYH"]


@pytest.fixture(scope="module")
def tiles3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A three-tile area written through the CLI."""
    from typer.testing import CliRunner

    from lcstack.cli import app

    out = tmp_path_factory.mktemp("demo") / "tiles3"
    result = CliRunner().invoke(app, ["demo-data", str(out), "--size", str(SIZE), "--tiles", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "30SYJ, 31SBD, 30SYH" in result.output
    return out


def items_by_tile(root: Path) -> dict[str, list[pystac.Item]]:
    from lcstack.s2grid import tile_id

    catalog = pystac.Catalog.from_file(root / "stac" / "catalog.json")
    out: dict[str, list[pystac.Item]] = {}
    for item in catalog.get_child("sentinel-2-l2a").get_items():  # type: ignore[union-attr]
        out.setdefault(tile_id(item), []).append(item)
    return out


def test_tiles_are_real_mgrs_tiles_in_two_zones(tiles3: Path) -> None:
    from lcstack.s2grid import s2_tile_geobox, tile_geobox

    mgrs = pytest.importorskip("mgrs").MGRS()
    by_tile = items_by_tile(tiles3)
    assert sorted(by_tile) == sorted(TILES3)
    grids = {tile: tile_geobox(items) for tile, items in by_tile.items()}
    assert {g.crs.epsg for g in grids.values()} == {32630, 32631}
    for tile, gbox in grids.items():
        real = s2_tile_geobox(tile)
        assert gbox.crs == real.crs and gbox.shape.yx == (SIZE, SIZE) and gbox.resolution.x == 10
        # a window of the real tile, on its 60 m lattice
        dx, dy = gbox.affine.c - real.affine.c, real.affine.f - gbox.affine.f
        assert dx % 60 == 0 and dy % 60 == 0 and 0 <= dx and 0 <= dy and dy + SIZE * 10 <= 109_800
        # the mgrs package puts the window's own pixels in this tile, beside pixels of its neighbours
        to_ll = Transformer.from_crs(gbox.crs, "EPSG:4326", always_xy=True)
        xs = gbox.affine.c + (np.arange(0, SIZE, 8) + 0.5) * 10
        ys = gbox.affine.f - (np.arange(0, SIZE, 8) + 0.5) * 10
        lon, lat = to_ll.transform(*np.meshgrid(xs, ys))
        names = {mgrs.toMGRS(a, o, MGRSPrecision=0) for a, o in zip(lat.ravel(), lon.ravel(), strict=True)}
        assert tile in names and len(names) >= 2
        for item in by_tile[tile]:
            p = item.properties
            assert p["grid:code"] == f"MGRS-{tile}" and p["proj:code"] == str(gbox.crs)
            for key, res in (("red", 10), ("swir16", 20), ("coastal", 60)):
                asset = item.assets[key].extra_fields
                assert asset["proj:transform"] == [res, 0, gbox.affine.c, 0, -res, gbox.affine.f]
                assert asset["proj:shape"] == [math.ceil(SIZE * 10 / res)] * 2
            with rasterio.open(item.assets["red"].get_absolute_href()) as src:
                assert src.crs.to_epsg() == gbox.crs.epsg and src.transform == gbox.affine


def test_tiles_have_their_own_dates_and_orbits(tiles3: Path) -> None:
    by_tile = items_by_tile(tiles3)
    dates = {t: {f"{i.datetime:%Y-%m-%d}" for i in items} for t, items in by_tile.items()}
    assert all(len(d) == 15 for d in dates.values())
    assert not (dates["30SYJ"] & dates["31SBD"]) and not (dates["30SYJ"] & dates["30SYH"])
    assert not (dates["31SBD"] & dates["30SYH"])
    orbits = {
        t: {i.properties["s2:product_uri"].split("_")[4] for i in items} for t, items in by_tile.items()
    }
    assert all(len(o) == 1 for o in orbits.values()) and len(set.union(*orbits.values())) == 3


def truth_at(path: Path, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    with rasterio.open(path) as src:
        x, y = Transformer.from_crs("EPSG:4326", src.crs, always_xy=True).transform(lon, lat)
        row, col = rasterio.transform.rowcol(src.transform, x, y)
        data = src.read(1)
    row, col = np.asarray(row), np.asarray(col)
    ok = (row >= 0) & (row < data.shape[0]) & (col >= 0) & (col < data.shape[1])
    return np.where(ok, data[np.clip(row, 0, data.shape[0] - 1), np.clip(col, 0, data.shape[1] - 1)], 0)


def test_truth_agrees_on_overlaps(tiles3: Path) -> None:
    truth = {t: tiles3 / "truth" / f"{t}.tif" for t in TILES3}
    assert all(p.is_file() and p.with_name(f"{p.stem}_sl.tif").is_file() for p in truth.values())
    assert not (tiles3 / "truth.tif").exists()
    # same zone: the two windows share one pixel lattice and agree on every shared pixel
    with rasterio.open(truth["30SYJ"]) as a, rasterio.open(truth["30SYH"]) as b:
        shift = round((a.transform.f - b.transform.f) / 10)
        assert a.transform.c == b.transform.c and 0 < shift < SIZE
        np.testing.assert_array_equal(a.read(1)[shift:], b.read(1)[: SIZE - shift])
    # across zones: the rotated grids sample the same ground (up to 10 m resampling)
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(-0.016, 0.016, 4000), rng.uniform(38.787, 38.823, 4000)
    a, b = truth_at(truth["30SYJ"], lon, lat), truth_at(truth["31SBD"], lon, lat)
    both = (a > 0) & (b > 0)
    assert both.sum() > 1000 and (a[both] == b[both]).mean() > 0.9


def test_points_are_owned_once_and_match_their_tile(tiles3: Path) -> None:
    from lcstack.s2grid import owner_of_points, tile_geobox

    grids = {t: tile_geobox(items) for t, items in items_by_tile(tiles3).items()}
    points = pd.read_csv(tiles3 / "dataset.csv", sep=";", dtype={"subcategory": str})
    assert len(points) > 500 and not points.duplicated(["latitude", "longitude"]).any()
    owner = owner_of_points(points.longitude.to_numpy(), points.latitude.to_numpy(), grids)
    assert set(owner) == set(TILES3)  # every point is owned, every tile has points
    lc = json.loads((tiles3 / "lc_labels.json").read_text())
    for tile in TILES3:
        sel = owner == tile
        values = truth_at(tiles3 / "truth" / f"{tile}.tif", points.longitude[sel], points.latitude[sel])
        assert (values == points.category[sel].map(lc).to_numpy()).all()


def test_tiles_config_covers_every_tile(tiles3: Path) -> None:
    from lcstack.s2grid import tile_geobox

    config = yaml.safe_load((tiles3 / "config.yaml").read_text())
    assert "crs" not in config and config["resolution"] == 10 and config["points"] == "dataset.csv"
    aoi = BoundingBox(*config["aoi"], crs="EPSG:4326")
    for items in items_by_tile(tiles3).values():
        bbox = tile_geobox(items).extent.to_crs("EPSG:4326", resolution=10.0).boundingbox
        assert (
            aoi.left <= bbox.left
            and aoi.bottom <= bbox.bottom
            and aoi.right >= bbox.right
            and aoi.top >= bbox.top
        )
    dem = pystac.Catalog.from_file(tiles3 / "stac" / "catalog.json").get_child("cop-dem-glo-30")
    (item,) = list(dem.get_items())  # type: ignore[union-attr]
    left, bottom, right, top = item.bbox
    assert left < aoi.left and right > aoi.right and bottom < aoi.bottom and top > aoi.top


def test_tiles_partition_the_configured_aoi(tiles3: Path) -> None:
    """The workflow's view: tiles of the config's AOI from the catalog alone, each location owned once."""
    from lcstack.s2grid import owner_of_points, ownership_mask, tiles_for_aoi

    config = yaml.safe_load((tiles3 / "config.yaml").read_text())
    items = [i for group in items_by_tile(tiles3).values() for i in group]
    tiles = tiles_for_aoi(items, config["aoi"], tile_size=128)
    assert sorted(tiles) == sorted(TILES3) and all(len(t.items) == 15 for t in tiles.values())
    footprints = {name: t.geobox for name, t in tiles.items()}
    rng = np.random.default_rng(1)
    lon, lat = [], []
    for gbox in footprints.values():  # random locations on the demo tiles
        x = gbox.affine.c + rng.uniform(0, SIZE * 10, 500)
        y = gbox.affine.f - rng.uniform(0, SIZE * 10, 500)
        lo, la = Transformer.from_crs(gbox.crs, "EPSG:4326", always_xy=True).transform(x, y)
        lon.append(lo)
        lat.append(la)
    owner = owner_of_points(np.concatenate(lon), np.concatenate(lat), footprints)
    assert (owner != "").all() and set(owner) == set(TILES3)
    for name, t in tiles.items():
        mask = ownership_mask(name, footprints, t.aoi_geobox)
        assert 0.1 < mask.mean() <= 1.0 and all(g.shape[0] <= 128 for g in t.subtiles.values())


@pytest.mark.parametrize("tiles", [0, 5, True, 2.0])
def test_invalid_tiles(tmp_path: Path, tiles: object) -> None:
    with pytest.raises(InvalidInputError, match="tiles="):
        make_demo_area(tmp_path / "x", size=SIZE, tiles=tiles)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


# -- the hard demo ---------------------------------------------------------------------------------------


def _iqr(values: np.ndarray) -> float:
    q1, q3 = np.percentile(values, [25, 75])
    return float(q3 - q1)


def test_hard_demo(area: DemoArea, tmp_path: Path) -> None:
    """Same landscape and truth; noisy labels, rare classes, a cloudier autumn, less separable spectra."""
    hard = make_demo_area(tmp_path / "hard", size=SIZE, seed=0, difficulty="hard")
    truth = rasterio.open(hard.truth).read(1)
    np.testing.assert_array_equal(truth, rasterio.open(area.truth).read(1))  # truth stays clean
    points = pd.read_csv(hard.points, sep=";", dtype={"subcategory": str})
    leaf = points.subcategory.fillna(points.category)
    counts = leaf.value_counts()
    assert len(counts) == 11 and counts[["water", "wetland"]].max() <= 0.01 * len(points)
    lc = json.loads(hard.lc_labels.read_text())
    sl = json.loads(hard.sl_labels.read_text())
    row, col = pixel_of(hard, points.longitude.to_numpy(), points.latitude.to_numpy())
    truth_sl = rasterio.open(hard.truth_sl).read(1)
    wrong = (truth[row, col] != points.category.map(lc).to_numpy()) | (
        truth_sl[row, col] != points.subcategory.map(sl).fillna(1).astype(int).to_numpy()
    )
    assert 0.08 <= wrong.mean() <= 0.11  # 10 % wrong labels (flips among common classes)

    def autumn_cloud(a: DemoArea) -> float:
        items = [i for i in s2_items(a) if i.datetime.month >= 9]
        return float(np.median([i.properties["eo:cloud_cover"] for i in items]))

    assert autumn_cloud(hard) > autumn_cloud(area) + 20
    # confusable pairs: shrubland and grassland harder to tell apart (gap between class medians over the
    # spread within the class, all bands of a summer scene)
    summer = [i for i in s2_items(area) if i.datetime.month in (6, 7, 8)]
    item = min(summer, key=lambda i: i.properties["eo:cloud_cover"])
    hard_item = next(i for i in s2_items(hard) if i.datetime == item.datetime)
    separation = []
    for it in (item, hard_item):
        bands = [reflectance(it, b)[truth > 0] for b in ("green", "red", "nir")]
        of = truth[truth > 0]
        shrub, grass = of == lc["shrubland"], of == lc["grassland"]
        separation.append(
            np.mean([abs(np.median(v[shrub]) - np.median(v[grass])) / _iqr(v[shrub]) for v in bands])
        )
    assert separation[1] < 0.6 * separation[0]
    with pytest.raises(InvalidInputError, match="difficulty='harder'"):
        make_demo_area(tmp_path / "x", size=SIZE, difficulty="harder")  # type: ignore[arg-type]
