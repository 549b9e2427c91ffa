"""Tests of the Sentinel-2 tile grid (lcstack.s2grid) and the processing grids (lcstack.grid)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from odc.geo.geobox import GeoBox
from odc.geo.geom import BoundingBox, Geometry
from pyproj import Transformer

from lcstack import s2grid
from lcstack.errors import InvalidInputError
from lcstack.grid import aoi_geobox, tile_geoboxes, user_grid_tiles

mgrs = pytest.importorskip("mgrs")
FIXTURES = Path(__file__).parent / "data" / "stac-fixtures"
ES_ITEM = FIXTURES / "earth-search-v1" / "S2A_32TPS_20230602_0_L2A.json"
PC_ITEM = FIXTURES / "planetary-computer" / "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json"
CDSE_ITEM = FIXTURES / "cdse" / "S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914.json"
SAME_ZONE = ("30SXJ", "30SYJ")  # east-west neighbours in UTM zone 30, ~9.8 km overlap
CROSS_ZONE = ("30SYJ", "31SBD")  # either side of 0° longitude, zones 30 and 31


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def mgrs_ref(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    m = mgrs.MGRS()
    return np.array([m.toMGRS(float(a), float(o), MGRSPrecision=0) for a, o in zip(lat, lon, strict=True)])


def fake_item(tile: str, n: int = 0) -> dict:
    """A minimal Earth Search-like item on the nominal grid of ``tile``."""
    gbox = s2grid.s2_tile_geobox(tile)
    assets = {}
    for key, res in (("red", 10), ("swir16", 20), ("coastal", 60)):
        f = res // 10
        assets[key] = {
            "href": f"{key}.tif",
            "proj:shape": [gbox.shape[0] // f, gbox.shape[1] // f],
            "proj:transform": [res, 0, gbox.affine.c, 0, -res, gbox.affine.f],
        }
    return {
        "type": "Feature",
        "id": f"S2A_{tile}_2023060{n}_0_L2A",
        "properties": {"grid:code": f"MGRS-{tile}", "proj:code": str(gbox.crs)},
        "assets": assets,
    }


def footprint_lonlat(gbox: GeoBox, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    left, bottom, right, top = gbox.boundingbox
    x, y = rng.uniform(left, right, n), rng.uniform(bottom, top, n)
    return Transformer.from_crs(gbox.crs, "EPSG:4326", always_xy=True).transform(x, y)


# -- tile ids and native grids from real items -------------------------------------------------------


def test_tile_id_from_each_provider() -> None:
    es, pc, cdse = load(ES_ITEM), load(PC_ITEM), load(CDSE_ITEM)
    assert s2grid.tile_id(es) == "32TPS"  # grid:code
    assert s2grid.tile_id(pc) == "06VVN"  # s2:mgrs_tile only
    assert s2grid.tile_id(cdse) == "33UWP"  # grid:code, STAC 1.1
    del es["properties"]["grid:code"]
    assert s2grid.tile_id(es) == "32TPS"  # mgrs:* only
    for key in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square"):
        del es["properties"][key]
    with pytest.raises(InvalidInputError, match="S2A_32TPS_20230602_0_L2A.*grid:code"):
        s2grid.tile_id(es)
    pc["properties"]["s2:mgrs_tile"] = "06VIN"
    with pytest.raises(InvalidInputError, match="S2B_MSIL2A.*s2:mgrs_tile.*'06VIN'"):
        s2grid.tile_id(pc)


def test_tile_geobox_of_real_items() -> None:
    import pystac

    cases = [
        (ES_ITEM, 32632, 600000, 5200020),
        (PC_ITEM, 32606, 399960, 6800040),
        (CDSE_ITEM, 32633, 499980, 5400000),
    ]
    for path, epsg, x0, y0 in cases:
        item = pystac.Item.from_dict(load(path))
        gbox = s2grid.tile_geobox([item])
        assert gbox.crs.epsg == epsg and gbox.shape.yx == (10980, 10980)
        assert tuple(gbox.affine)[:6] == (10, 0, x0, 0, -10, y0)
        assert gbox == s2grid.s2_tile_geobox(s2grid.tile_id(item))  # MGRS arithmetic gives the same grid
    # proj:bbox + proj:shape alone (no proj:transform) give the same grid
    pc = load(PC_ITEM)
    for asset in pc["assets"].values():
        asset.pop("proj:transform", None)
    assert s2grid.tile_geobox([pc]) == s2grid.s2_tile_geobox("06VVN")


def test_tile_geobox_checks_that_items_agree() -> None:
    a, b = load(ES_ITEM), load(ES_ITEM)
    b["id"] = "S2B_32TPS_20230607_0_L2A"
    assert s2grid.tile_geobox([a, b]) == s2grid.s2_tile_geobox("32TPS")
    shifted = copy.deepcopy(b)
    for key in (
        "blue",
        "green",
        "red",
        "nir",
        "visual",
        "blue-jp2",
        "green-jp2",
        "red-jp2",
        "nir-jp2",
        "visual-jp2",
    ):
        shifted["assets"][key]["proj:transform"][2] += 10
    with pytest.raises(InvalidInputError, match="item S2B_32TPS_20230607_0_L2A of tile 32TPS is on grid"):
        s2grid.tile_geobox([a, shifted])
    with pytest.raises(InvalidInputError, match="is in tile 06VVN, not 32TPS"):
        s2grid.tile_geobox([a, load(PC_ITEM)])
    bare = copy.deepcopy(a)
    for asset in bare["assets"].values():
        asset.pop("proj:transform", None)
    with pytest.raises(InvalidInputError, match="S2A_32TPS_20230602_0_L2A: no pixel grid"):
        s2grid.tile_geobox([bare])


# -- MGRS arithmetic against the mgrs package ------------------------------------------------------------


def test_mgrs_square_matches_the_mgrs_package() -> None:
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(-180, 180, 3000), rng.uniform(-80, 84, 3000)
    # plus the exceptions (Norway, Svalbard) and a zone boundary
    lon = np.concatenate(
        [lon, rng.uniform(0, 12, 300), rng.uniform(0, 42, 300), rng.uniform(-0.01, 0.01, 300)]
    )
    lat = np.concatenate([lat, rng.uniform(56, 64, 300), rng.uniform(72, 84, 300), rng.uniform(32, 40, 300)])
    np.testing.assert_array_equal(s2grid.mgrs_square(lon, lat), mgrs_ref(lon, lat))


def test_square_polygon_and_nominal_tile() -> None:
    for tile in ("30SYJ", "31SBD", "32VKN", "06VVN", "34HBH"):
        square = s2grid.square_polygon(tile)
        rng = np.random.default_rng(1)
        left, bottom, right, top = square.boundingbox
        lon, lat = rng.uniform(left, right, 400), rng.uniform(bottom, top, 400)
        inside = np.array([square.contains(Geometry({"type": "Point", "coordinates": [o, a]}, "EPSG:4326"))
                           for o, a in zip(lon, lat, strict=True)])  # fmt: skip
        assert inside.sum() > 50
        assert (mgrs_ref(lon[inside], lat[inside]) == tile).all()
        # the nominal tile contains its square
        tile_outline = s2grid.s2_tile_geobox(tile).extent.to_crs("EPSG:4326", resolution=100.0)
        assert (square - tile_outline).area < 1e-6 * square.area  # up to densification


# -- ownership ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pair", [SAME_ZONE, CROSS_ZONE], ids=["same-zone", "cross-zone"])
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_every_location_has_exactly_one_owner(pair: tuple[str, str], seed: int) -> None:
    tiles = {t: s2grid.s2_tile_geobox(t) for t in pair}
    rng = np.random.default_rng(seed)
    lon, lat = np.concatenate([footprint_lonlat(g, 200, rng) for g in tiles.values()], axis=1)
    owner = s2grid.owner_of_points(lon, lat, tiles)
    assert np.isin(owner, pair).all()  # covered by either -> owned by one of them
    square = mgrs_ref(lon, lat)
    in_pair = np.isin(square, pair)
    np.testing.assert_array_equal(owner[in_pair], square[in_pair])  # rule 1: the MGRS square
    # rule 2: a location in neither square goes to the first tile (by id) whose footprint holds it
    first = s2grid.owner_of_points(lon[~in_pair], lat[~in_pair], {pair[0]: tiles[pair[0]]})
    np.testing.assert_array_equal(owner[~in_pair], np.where(first == pair[0], pair[0], pair[1]))
    # the answer does not depend on whether footprints are given or taken from the tile ids
    np.testing.assert_array_equal(owner, s2grid.owner_of_points(lon, lat, list(pair)))


@pytest.mark.parametrize("pair", [SAME_ZONE, CROSS_ZONE], ids=["same-zone", "cross-zone"])
def test_ownership_masks_agree_with_points(pair: tuple[str, str]) -> None:
    tiles = {t: s2grid.s2_tile_geobox(t) for t in pair}
    # a point on the shared boundary: 0° longitude, or the square edge x = 700 000 m in zone 30
    on_x = Transformer.from_crs("EPSG:32630", "EPSG:4326", always_xy=True).transform(700000, 4350000)
    lon0, lat0 = (0.0, 39.3) if pair == CROSS_ZONE else on_x
    for tile, gbox in tiles.items():
        x, y = Transformer.from_crs("EPSG:4326", gbox.crs, always_xy=True).transform(lon0, lat0)
        r, c = int((y - gbox.affine.f) / -10), int((x - gbox.affine.c) / 10)
        c0 = min(max(0, c - 200), gbox.shape[1] - 400)
        block = gbox[r - 150 : r + 150, c0 : c0 + 400]
        mask = s2grid.ownership_mask(tile, tiles, block)
        lazy = s2grid.ownership_mask(tile, tiles, block, chunks=128).compute()
        np.testing.assert_array_equal(mask, lazy)
        xs = block.affine.c + (np.arange(400) + 0.5) * 10
        ys = block.affine.f - (np.arange(300) + 0.5) * 10
        xx, yy = np.meshgrid(xs, ys)
        lon, lat = Transformer.from_crs(gbox.crs, "EPSG:4326", always_xy=True).transform(xx, yy)
        np.testing.assert_array_equal(mask, s2grid.owner_of_points(lon, lat, tiles) == tile)
        assert 0 < mask.mean() < 1  # the block straddles the boundary


def test_fallback_to_the_tiles_present() -> None:
    """Points in the square of a tile not processed go to a present tile whose footprint holds them."""
    windows = {t: s2grid.s2_tile_geobox(t)[4000:4500, 5000:5500] for t in ("30SYJ",)}
    gbox = windows["30SYJ"]
    lon, lat = footprint_lonlat(gbox, 500, np.random.default_rng(3))
    assert (s2grid.owner_of_points(lon, lat, windows) == "30SYJ").all()
    assert s2grid.ownership_mask("30SYJ", windows).all()
    outside = s2grid.owner_of_points([10.0], [45.0], windows)
    assert outside.tolist() == [""]
    assert s2grid.owner_of_points([0.0], [39.0], {}).tolist() == [""]
    with pytest.raises(InvalidInputError, match="31SBD is not among"):
        s2grid.ownership_mask("31SBD", windows)


# -- tiles of an AOI ---------------------------------------------------------------------------------------


def test_tiles_for_aoi_across_a_zone_boundary() -> None:
    items = [fake_item(t, n) for t in ("30SXJ", "30SYJ", "31SBD", "31SCD") for n in (1, 2)]
    aoi = [-0.3, 39.2, 0.2, 39.5]
    tiles = s2grid.tiles_for_aoi(items, aoi, tile_size=2048)
    assert list(tiles) == ["30SYJ", "31SBD"]  # 30SXJ and 31SCD do not reach the AOI
    for tile, info in tiles.items():
        assert info.geobox == s2grid.s2_tile_geobox(tile) and len(info.items) == 2
        assert info.aoi_geobox.crs == info.geobox.crs
        assert info.subtiles and all(
            g.shape[0] <= 2048 and g.shape[1] <= 2048 for g in info.subtiles.values()
        )
        # sub-tiles keep their ids (counted on the whole tile grid) when the AOI changes
        other = s2grid.tiles_for_aoi(items, [-0.31, 39.19, 0.21, 39.51], tile_size=2048)[tile]
        assert set(info.subtiles) <= set(other.subtiles)
    a, b = (t.owned.to_crs("EPSG:4326", resolution=100.0) for t in tiles.values())
    aoi_poly = BoundingBox(*aoi, crs="EPSG:4326").polygon
    assert (a & b).area < 1e-7 * aoi_poly.area  # owned parts do not overlap
    assert abs((a | b).area - aoi_poly.area) < 1e-4 * aoi_poly.area  # and cover the AOI
    rng = np.random.default_rng(4)
    lon, lat = rng.uniform(-0.3, 0.2, 300), rng.uniform(39.2, 39.5, 300)
    owner = s2grid.owner_of_points(lon, lat, {t: i.geobox for t, i in tiles.items()})
    np.testing.assert_array_equal(owner, np.where(lon < 0, "30SYJ", "31SBD"))


# -- processing grids -----------------------------------------------------------------------------------


def test_tile_geoboxes_within_keeps_ids() -> None:
    gbox = GeoBox((1000, 1000), Affine(10, 0, 600000, 0, -10, 5200000), "EPSG:32632")
    full = tile_geoboxes(gbox, 256)
    part = tile_geoboxes(gbox, 256, within=BoundingBox(604000, 5194000, 606000, 5196000))
    assert set(part) == {"r001c001", "r001c002", "r002c001", "r002c002"}
    for key, sub in part.items():
        assert sub.crs == gbox.crs and (sub.affine.c - 600000) % 10 == 0
        assert (
            full[key].boundingbox.left <= sub.boundingbox.left
            and sub.boundingbox.right <= full[key].boundingbox.right
        )


def test_user_grid_tiles_equal_area() -> None:
    aoi = [-4.5, 36.6, -4.3, 36.8]
    tiles = user_grid_tiles(aoi, "EPSG:3035", resolution=10, tile_size=512)
    whole = aoi_geobox(aoi, crs="EPSG:3035", resolution=10)
    assert sum(g.shape[0] * g.shape[1] for g in tiles.values()) == whole.shape[0] * whole.shape[1]
    for key, g in tiles.items():
        x0, y0 = (float(v) for v in key[1:].split("N"))
        assert x0 % 5120 == 0 and y0 % 5120 == 0
        assert x0 <= g.boundingbox.left and g.boundingbox.right <= x0 + 5120
        assert y0 <= g.boundingbox.bottom and g.boundingbox.top <= y0 + 5120
        assert g.shape[0] <= 512 and g.shape[1] <= 512
    assert user_grid_tiles([-4.49, 36.61, -4.3, 36.8], "EPSG:3035", tile_size=512).keys() <= tiles.keys()
    with pytest.raises(InvalidInputError, match="not projected"):
        user_grid_tiles(aoi, "EPSG:4326", tile_size=512)
