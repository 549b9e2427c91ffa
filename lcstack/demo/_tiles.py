"""Multi-tile demo areas: windows of real Sentinel-2 tiles either side of 0° E (UTM zones 30 and 31).

A real Sentinel-2 tile is 10 980 px at 10 m; a demo tile of ``size`` × ``size`` px cannot have both 10 m
pixels and the real footprint. This generator keeps the real tile ids, the real tile grids and the real
overlap geometry, and makes each demo tile a *window* of its real tile:

* The tiles are the four MGRS squares that meet at 0° E on the 4 300 km northing line (about 38.83° N, band S,
  near Dénia): ``30SYJ`` (north-west), ``31SBD`` (north-east), ``30SYH`` (south-west), ``31SBC`` (south-east),
  taken in that order, so two tiles already lie in two UTM zones and three add a same-zone neighbour.
* Each tile's grid is its real Sentinel-2 grid (UL on the 60 m lattice outside the square, from
  :func:`lcstack.s2grid.s2_tile_geobox`); the demo keeps the ``size`` × ``size`` window of it centred on the
  shared corner, moved by whole 60 m steps so that the 10, 20 and 60 m bands of the window nest exactly, and
  clamped inside the real tile (the southern tiles start at their real top edge, 20–40 m above the corner).
  ``proj:transform`` of every asset is the window's, on the real tile lattice, so two tiles of one zone share
  one pixel lattice, and tiles of two zones overlap the way real ones do (rotated grids, the zone boundary
  through the middle of the area).
* Land cover is one landscape on a 10 m grid of zone 30 that covers all windows; every tile samples it at its
  pixel centres (nearest), so overlapping tiles agree on their shared ground: exactly on the shared lattice of
  a zone, up to the 10 m resampling across zones. Terrain and the DEM are functions of location too.
* Every tile has its own acquisition dates (``tile_index`` days later in the 5-day revisit, another relative
  orbit in ``s2:product_uri``) and its own clouds.
* Points are drawn per tile and kept only where the tile owns them (:func:`lcstack.s2grid.owner_of_points`
  with the windows as footprints), so ``dataset.csv`` lists each location once.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from tqdm.auto import tqdm

from lcstack.demo import _area as demo
from lcstack.demo import spectra
from lcstack.s2grid import owner_of_points, s2_tile_geobox

__all__ = ["TILES", "make_tiles_area"]

logger = logging.getLogger(__name__)

TILES = ("30SYJ", "31SBD", "30SYH", "31SBC")
ORBITS = (51, 8, 94, 137)
CORNER_NORTHING = 4_300_000.0
REFERENCE_CRS = "EPSG:32630"
_STEP = 6  # window offsets in 10 m pixels: whole 60 m pixels


def corner() -> tuple[float, float]:
    """Return the shared corner: 0° E on the northing line ``CORNER_NORTHING`` (the same in both zones)."""
    to_utm = Transformer.from_crs("EPSG:4326", REFERENCE_CRS, always_xy=True)
    lat = 38.8
    for _ in range(6):
        _, north = to_utm.transform(0.0, lat)
        lat += (CORNER_NORTHING - north) / 111_000.0
    return 0.0, lat


def window(tile: str, size: int, index: int) -> tuple[demo._Tile, GeoBox]:
    """Return the ``size`` × ``size`` window of a real tile around the shared corner (module docstring)."""
    real = s2_tile_geobox(tile)
    t = real.affine
    x, y = Transformer.from_crs("EPSG:4326", str(real.crs), always_xy=True).transform(*corner())
    padded = int(math.ceil(size / _STEP) * _STEP)
    limit = real.shape[0] - padded

    def offset(pixel: float) -> int:
        return min(max(0, round((pixel - size / 2) / _STEP) * _STEP), limit)

    c0, r0 = offset((x - t.c) / t.a), offset((y - t.f) / t.e)
    spec = demo._Tile(tile, int(real.crs.epsg), t.c + c0 * t.a, t.f + r0 * t.e, ORBITS[index])
    return spec, GeoBox((size, size), Affine(t.a, 0.0, spec.x0, 0.0, t.e, spec.y0), real.crs)


def _reference(boxes: list[GeoBox]) -> GeoBox:
    """Return a square 10 m grid of zone 30 (60 m-aligned) covering every window and its 60 m padding."""
    bounds = []
    for g in boxes:
        n = int(math.ceil(g.shape[0] / _STEP) * _STEP)
        padded = GeoBox((n, n), g.affine, g.crs)
        bounds.append(padded.extent.to_crs(REFERENCE_CRS, resolution=10.0).boundingbox)
    left = math.floor(min(b.left for b in bounds) / 60.0) * 60.0 - 60.0
    top = math.ceil(max(b.top for b in bounds) / 60.0) * 60.0 + 60.0
    right, bottom = max(b.right for b in bounds) + 60.0, min(b.bottom for b in bounds) - 60.0
    n = int(math.ceil(max(right - left, top - bottom) / 60.0) * _STEP)
    return GeoBox((n, n), Affine(10.0, 0.0, left, 0.0, -10.0, top), REFERENCE_CRS)


class _TileLand:
    """One tile's view of the shared landscape: what :class:`lcstack.demo._area._SceneRenderer` needs."""

    def __init__(self, ref: demo._Landscape, ref_box: GeoBox, gbox: GeoBox) -> None:
        self.size = gbox.shape[0]
        self.n = int(math.ceil(self.size / _STEP) * _STEP)
        self.unit_leaf, self.unit_scl = ref.unit_leaf, ref.unit_scl
        self.unit_reflectance = ref.unit_reflectance
        self.hard = ref.hard  # the hard demo has one tile: always False here
        n, t, rt = self.n, gbox.affine, ref_box.affine
        same = gbox.crs == ref_box.crs
        to_ref = Transformer.from_crs(str(gbox.crs), str(ref_box.crs), always_xy=True)
        self.unit_map = np.empty((n, n), dtype=np.int32)
        self.texture = np.empty((n, n), dtype=np.float16)
        cols = t.c + (np.arange(n) + 0.5) * t.a
        for r0, r1 in demo._blocks(n):
            xx, yy = np.meshgrid(cols, t.f + (np.arange(r0, r1) + 0.5) * t.e)
            x, y = (xx, yy) if same else to_ref.transform(xx, yy)
            ci = np.clip(np.floor((x - rt.c) / rt.a).astype(np.int64), 0, ref.n - 1)
            ri = np.clip(np.floor((y - rt.f) / rt.e).astype(np.int64), 0, ref.n - 1)
            self.unit_map[r0:r1] = ref.unit_map[ri, ci]
            self.texture[r0:r1] = ref.texture[ri, ci]

    def leaf_map(self) -> np.ndarray:
        return self.unit_leaf[self.unit_map[: self.size, : self.size]]


def _points(lands: dict[str, tuple[_TileLand, GeoBox]], seed: int, n_points: int | None) -> list[str]:
    """Points of every tile, each kept only by the tile that owns it; one header line."""
    footprints = {tile: gbox for tile, (_, gbox) in lands.items()}
    lines = ["latitude;longitude;category;subcategory"]
    k = len(lands)
    for i, (tile, (land, gbox)) in enumerate(lands.items()):
        quota = None if n_points is None else n_points // k + (1 if i < n_points % k else 0)

        def keep(lon: np.ndarray, lat: np.ndarray, tile: str = tile) -> np.ndarray:
            return owner_of_points(lon, lat, footprints) == tile

        if quota != 0:
            lines += demo._sample_points(land, gbox, seed, quota, tile_index=i + 1, keep=keep)[1:]
    found = {line.split(";")[3] or line.split(";")[2] for line in lines[1:]}
    missing = sorted({leaf.subcategory or leaf.category for leaf in spectra.LEAVES} - found)
    if missing and n_points is None:
        logger.warning(
            "demo area: no interior pixels of class(es) %s in any tile; no points for them", missing
        )
    return lines


def _lonlat_bbox(boxes: list[GeoBox]) -> list[float]:
    bbs = [g.extent.to_crs("EPSG:4326", resolution=100.0).boundingbox for g in boxes]
    return [
        min(b.left for b in bbs),
        min(b.bottom for b in bbs),
        max(b.right for b in bbs),
        max(b.top for b in bbs),
    ]


def make_tiles_area(out_dir: str | Path, *, size: int, seed: int, flavour: str, with_dem: bool,
                    n_points: int | None, progress: bool, tiles: int) -> demo.DemoArea:  # fmt: skip
    """Write a demo area of ``tiles`` (2–4) Sentinel-2 tile windows (:func:`lcstack.demo.make_demo_area`)."""
    root = Path(out_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    stac_dir = demo._prepare_folder(root)
    collection = "sentinel-2-l1c" if flavour == "l1c" else "sentinel-2-l2a"
    specs = [window(tile, size, i) for i, tile in enumerate(TILES[:tiles])]
    boxes = [g for _, g in specs]
    ref_box = _reference(boxes)
    schedules = [demo._schedule(seed, flavour, spec, i) for i, (spec, _) in enumerate(specs)]
    times = [s.time for sched in schedules for s in sched]
    logger.info("demo area: tiles %s, %d x %d px each, seed %d -> %s", TILES[:tiles], size, size, seed, root)
    total = sum(len(s) for s in schedules) + 3
    with tqdm(total=total, desc="demo area", unit="step", disable=not progress) as bar:
        terrain = demo._Terrain(seed, origin=(ref_box.affine.c, ref_box.affine.f))
        ref = demo._Landscape(ref_box.shape[0], seed, terrain, origin=(ref_box.affine.c, ref_box.affine.f))
        lands = {spec.tile: (_TileLand(ref, ref_box, gbox), gbox) for spec, gbox in specs}
        del ref
        bar.update()
        truths = _write_truths(root, lands)
        points = root / "dataset.csv"
        demo._write_text(points, "\n".join(_points(lands, seed, n_points)) + "\n")
        bar.update()
        level = "1C" if flavour == "l1c" else "2A"
        s2 = demo._collection(
            collection,
            f"Sentinel-2 Level-{level} (lcstack synthetic demo)",
            "Synthetic Sentinel-2 scenes shaped like Earth Search v1, generated by lcstack.demo.",
            _lonlat_bbox(boxes),
            (min(times), max(times)),
        )
        for (spec, gbox), scenes in zip(specs, schedules, strict=True):
            demo._write_scenes(stac_dir, s2, scenes, lands[spec.tile][0], gbox, seed, flavour, bar)
        description = (
            f"lcstack synthetic Sentinel-2 area at 0 deg E ({tiles} tiles of {size} x {size} px, seed {seed})"
        )
        demo._save_catalog(stac_dir, s2, description, ref_box, terrain, with_dem, REFERENCE_CRS)
        bar.update()
    demo._write_side_files(root)
    config = root / "config.yaml"
    demo._write_text(
        config, demo._config_text(collection, with_dem, demo._aoi(*boxes), size, seed, list(lands))
    )
    return demo._demo_area(root, collection, with_dem, {t: g for t, (_, g) in lands.items()}, truths)


def _write_truths(root: Path, lands: dict[str, tuple[_TileLand, GeoBox]]) -> dict[str, tuple[Path, Path]]:
    level1, level2 = spectra.leaf_codes()
    out: dict[str, tuple[Path, Path]] = {}
    for tile, (land, gbox) in lands.items():
        leaf = land.leaf_map()
        paths = (root / "truth" / f"{tile}.tif", root / "truth" / f"{tile}_sl.tif")
        for path, codes in zip(paths, (level1, level2), strict=True):
            demo._write_cog(path, codes[leaf], gbox.affine, str(gbox.crs), nodata=0, resampling="mode")
        out[tile] = paths
    return out
