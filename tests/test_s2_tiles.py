"""The Sentinel-2 tile grid in the workflow: native lattices, scenes per tile and season, several UTM zones.

One three-tile demo area (30SYJ, 30SYH in zone 30, 31SBD in zone 31) is run once through the CLI
(``demo-data --tiles 3`` then ``run`` and ``mosaic``); the tests read its outputs and its registry.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from typer.testing import CliRunner

from lcstack.cli import app
from lcstack.config import load_config
from lcstack.errors import InvalidInputError, NoScenesFoundError, SkippedPointsWarning
from lcstack.load import load_scenes
from lcstack.pipeline import Workflow
from lcstack.s2grid import owner_of_points, tile_id

SIZE = 256
TILES = ["30SYH", "30SYJ", "31SBD"]


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def tiles3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`lcstack demo-data A --size 256 --tiles 3`, `lcstack run A/config.yaml`, `lcstack mosaic`, offline."""
    root = tmp_path_factory.mktemp("s2") / "A"
    _invoke("demo-data", str(root), "--size", str(SIZE), "--tiles", "3", "--quiet")
    config = str(root / "config.yaml")
    with warnings.catch_warnings():
        # the CLI logs lcstack's warnings (here: the few points on nodata pixels); the suite makes them errors
        warnings.simplefilter("ignore", SkippedPointsWarning)
        _invoke("run", config, "--scheduler", "threads", "--quiet")
    with dask.config.set(scheduler="threads"):
        _invoke("mosaic", config, "--crs", "EPSG:4326")
    return root


def _workflow(root: Path, **overrides: Any) -> Workflow:
    return Workflow(load_config(root / "config.yaml", **overrides), progress=False)


def _maps(root: Path) -> dict[str, list[Path]]:
    """level1.tif of every unit, by Sentinel-2 tile (unit folders are named after their tile)."""
    out: dict[str, list[Path]] = {}
    for path in sorted((root / "lcstack-data" / "classification-maps").rglob("level1.tif")):
        out.setdefault(path.parent.name.split("_")[0], []).append(path)
    return out


def _sample(path: Path, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values of a class map at lon/lat points (0 outside it), and which points lie within 5 % of a pixel
    of a pixel edge (GDAL's warper and PROJ differ by up to ~1 % of a pixel, so may round differently)."""
    with rasterio.open(path) as src:
        data = src.read(1)
        x, y = Transformer.from_crs("EPSG:4326", src.crs, always_xy=True).transform(lon, lat)
        fcol, frow = ~src.transform * (np.asarray(x), np.asarray(y))
    row, col = np.floor(frow).astype(int), np.floor(fcol).astype(int)
    ok = (row >= 0) & (row < data.shape[0]) & (col >= 0) & (col < data.shape[1])
    values = np.where(ok, data[np.clip(row, 0, data.shape[0] - 1), np.clip(col, 0, data.shape[1] - 1)], 0)
    edge = (np.abs(frow - np.round(frow)) < 0.05) | (np.abs(fcol - np.round(fcol)) < 0.05)
    near = (frow > -1) & (frow < data.shape[0] + 1) & (fcol > -1) & (fcol < data.shape[1] + 1)
    return values, edge & near


def _centres(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lon, lat and value of every pixel centre of a raster."""
    with rasterio.open(path) as src:
        data = src.read(1)
        rows, cols = np.mgrid[0 : src.height, 0 : src.width]
        xs, ys = rasterio.transform.xy(src.transform, rows.ravel(), cols.ravel())
        lon, lat = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    return np.asarray(lon), np.asarray(lat), data.ravel()


def test_maps_per_tile_in_two_zones_agree_with_their_truth(tiles3: Path) -> None:
    from lcstack.demo.scoring import score_tiles

    maps = _maps(tiles3)
    assert sorted(maps) == TILES
    crs = set()
    for paths in maps.values():
        for path in paths:
            with rasterio.open(path) as src:
                crs.add(src.crs.to_epsg())
    assert crs == {32630, 32631}
    truths = {t: (tiles3 / "truth" / f"{t}.tif", tiles3 / "truth" / f"{t}_sl.tif") for t in TILES}
    with _workflow(tiles3) as wf:
        scores = score_tiles(type("Area", (), {"truths": truths})(), wf)
    assert sorted(scores) == TILES
    for tile, s in scores.items():
        assert s["level1"] >= 0.95, (tile, s)


def test_each_tile_is_composited_from_its_own_scenes(tiles3: Path) -> None:
    with _workflow(tiles3) as wf:
        scenes = list(wf.registry.find("scenes"))
        composites = [c for c in wf.registry.find("composites") if c.get("season") != "terrain"]
        seasons = list(wf.seasons)
        catalog = {i.id: i for i in _items(tiles3)}
    # the registry lists the scenes per tile and season, each scene of the tile it belongs to
    per = {(s["tile"], s["season"]) for s in scenes}
    assert per == {(t, s) for t in TILES for s in seasons}
    assert all(tile_id(catalog[s["key"]]) == s["tile"] for s in scenes)
    assert len(composites) == len(TILES) * len(seasons)
    for rec in composites:
        assert rec["items"] and all(tile_id(catalog[i]) == rec["s2_tile"] for i in rec["items"])
        chosen = {s["key"] for s in scenes if s["tile"] == rec["s2_tile"] and s["season"] == rec["season"]}
        assert set(rec["items"]) == chosen


def _items(root: Path) -> list[Any]:
    import pystac

    cat = pystac.Catalog.from_file(str(root / "stac" / "catalog.json"))
    return [i for i in cat.get_items(recursive=True) if i.collection_id == "sentinel-2-l2a"]


def test_no_map_pixel_is_owned_twice_and_the_mosaic_covers_every_pixel(tiles3: Path) -> None:
    maps = _maps(tiles3)
    with _workflow(tiles3) as wf:
        footprints = wf.s2_footprints
    # every non-zero pixel of a tile's map is owned by that tile (each AOI pixel in one map only)
    for tile, paths in maps.items():
        for path in paths:
            lon, lat, value = _centres(path)
            data = value > 0
            assert data.mean() > 0.1  # the tile's owned part of its window
            assert (owner_of_points(lon[data], lat[data], footprints) == tile).all(), tile
    # the mosaic: each pixel from the tile owning it when that tile has data there, nothing left out
    (mosaic,) = (tiles3 / "lcstack-data" / "classification-maps").rglob("mosaic_level1_EPSG_4326.tif")
    lon, lat, got = _centres(mosaic)
    sampled = {t: [_sample(p, lon, lat) for p in paths] for t, paths in maps.items()}
    values = {t: np.max([v for v, _ in s], axis=0) for t, s in sampled.items()}
    sure = ~np.any([e for s in sampled.values() for _, e in s], axis=0)
    assert sure.mean() > 0.75
    owner = owner_of_points(lon, lat, footprints)
    own = np.zeros_like(got)
    for tile, v in values.items():
        own[owner == tile] = v[owner == tile]
    anywhere = np.max(list(values.values()), axis=0) > 0
    assert anywhere.mean() > 0.5
    assert (got[anywhere & sure] > 0).all(), "an AOI pixel with data is missing from the mosaic"
    mine = (own > 0) & sure
    assert (got[mine] == own[mine]).all(), "a pixel comes from a tile that does not own it"
    assert (got[~anywhere & sure] == 0).all()


def test_a_tile_without_scenes_fails_or_is_skipped(
    tiles3: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A season on 30SYJ's dates only: the other tiles have no scene; fail naming them, or skip them."""
    with _workflow(tiles3) as wf:
        dates = sorted(
            {s["datetime"][:10] for s in wf.registry.find("scenes", tile="30SYJ", season="spring")}
        )
    seasons = tmp_path / "seasons.json"
    # spring on 30SYJ's days only; the other seasons as in the demo, so every tile is found
    others = {k: v for k, v in json.loads((tiles3 / "seasons.json").read_text()).items() if k != "spring"}
    seasons.write_text(json.dumps({"spring": dates, **others}))
    storage = str(tmp_path / "out")
    with (
        _workflow(tiles3, seasons=str(seasons), storage=storage) as wf,
        pytest.raises(
            NoScenesFoundError, match=r"tile 30SYH, season 'spring'.*cloud limit 60%.*on_missing: skip"
        ),
    ):
        wf.discover()
    with _workflow(tiles3, seasons=str(seasons), storage=storage, on_missing="skip") as wf:
        scenes = wf.discover()
        assert (
            list(scenes) == ["30SYJ"] and list(wf.units) == ["30SYJ"] and set(wf.s2_footprints) == {"30SYJ"}
        )
        assert sorted(s.item.datetime.date().isoformat() for s in scenes["30SYJ"]["spring"]) == dates
    skipped = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("tile 30SYH" in m and "left out" in m for m in skipped)
    assert any("tile 31SBD" in m and "left out" in m for m in skipped)


# -- native lattice, one tile --------------------------------------------------------------------------------


def test_10m_bands_are_the_raw_cog_pixels_and_20m_bands_land_on_their_lattice(demo_area: Any) -> None:
    """Each unit of a native-aligned tile reads 10 m pixels unchanged and 20 m pixels as 2 x 2 blocks."""
    with Workflow(load_config(demo_area.config, tile_size=96), progress=False) as wf:
        units = wf.units
        item = wf.discover()["30SUF"]["spring"][0].item
    assert len(units) == 9 and all(u.startswith("30SUF_r") for u in units)
    with rasterio.open(item.assets["red"].get_absolute_href()) as src:
        red, transform = src.read(1), src.transform
    with rasterio.open(item.assets["rededge1"].get_absolute_href()) as src:
        rededge = src.read(1)
    rededge10 = np.repeat(np.repeat(rededge, 2, axis=0), 2, axis=1)
    for unit in units.values():
        gbox = unit.geobox
        assert gbox.crs.epsg == 32630 and gbox.resolution.x == 10
        col0, row0 = ~transform * (gbox.affine.c, gbox.affine.f)
        assert col0 == int(col0) and row0 == int(row0)  # on the COG's own lattice
        r, c = slice(int(row0), int(row0) + gbox.shape.y), slice(int(col0), int(col0) + gbox.shape.x)
        ds = load_scenes([item], gbox, bands=["red", "rededge1"]).compute(scheduler="sync")
        np.testing.assert_array_equal(ds["red"].values[0], red[r, c])
        np.testing.assert_array_equal(ds["rededge1"].values[0], rededge10[r, c])


def test_user_grid(demo_area: Any, tmp_path: Path) -> None:
    """`grid: {crs, resolution}` (and `crs:`) tile the AOI on that grid, ids from the cell corner."""
    storage = str(tmp_path / "out")
    grid = {"crs": "EPSG:3035", "resolution": 20}
    with Workflow(load_config(demo_area.config, grid=grid, storage=storage), progress=False) as wf:
        units = wf.units
        assert all(u.startswith("E") and "N" in u for u in units)
        assert {g.crs.epsg for g in wf.tiles.values()} == {3035}
        assert {g.resolution.x for g in wf.tiles.values()} == {20}
        scenes = wf.discover()
        assert list(scenes) == ["30SUF"], "the scenes are chosen per Sentinel-2 tile"
        plan = wf.composite_plan()
        assert {p.unit for p in plan} == set(units)
    with Workflow(load_config(demo_area.config, crs="EPSG:32630", storage=storage), progress=False) as wf:
        assert {g.crs.epsg for g in wf.tiles.values()} == {32630}
    for bad, match in (({"crs": "EPSG:32630", "grid": grid}, "both `grid:` and `crs:`"),
                       ({"resolution": 20}, "needs a user grid")):  # fmt: skip
        with (
            Workflow(load_config(demo_area.config, storage=storage, **bad), progress=False) as wf,
            pytest.raises(InvalidInputError, match=match),
        ):
            _ = wf.units


def test_user_grid_takes_the_best_scenes_of_every_sentinel2_tile(tiles3: Path, tmp_path: Path) -> None:
    """On a user grid too, each Sentinel-2 tile under the AOI gets its own best scenes of every season.

    With one scene a season, an AOI-wide choice would give the whole AOI the scenes of one tile and leave
    the other tiles' pixels without data.
    """
    grid = {"crs": "EPSG:3035", "resolution": 20}
    overrides = {"grid": grid, "max_scenes_per_season": 1, "storage": str(tmp_path / "out")}
    with _workflow(tiles3, **overrides) as wf:
        scenes = wf.discover()
        plan = wf.composite_plan()
        recorded = wf.registry.find("scenes")
    assert sorted(scenes) == TILES
    assert all(len(picked) == 1 for seasons in scenes.values() for picked in seasons.values())
    seasons = {p.season for p in plan} - {"terrain"}
    for season in seasons:
        read = {tile_id(i) for p in plan if p.season == season for i in p.items}
        assert read == set(TILES), f"{season}: the units read the scenes of {sorted(read)} only"
    picked = {s.item.id for seasons_of in scenes.values() for chosen in seasons_of.values() for s in chosen}
    assert all(i.id in picked for p in plan if p.season != "terrain" for i in p.items), "only chosen scenes"
    assert {r["tile"] for r in recorded} >= set(TILES), "the registry lists the scenes per tile"
