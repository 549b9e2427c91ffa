"""Processing units: the pieces of the area that each composite and each map covers.

Two grids:

* **The Sentinel-2 tile grid** (the default). The units are the Sentinel-2 (MGRS) tiles that own part of the
  AOI (:func:`lcstack.s2grid.tiles_for_aoi`), each on its own native UTM grid taken from its items, cropped
  to the part of the AOI it owns and cut into ``tile_size`` sub-tiles on the full tile's lattice. A unit id
  is the MGRS id (``30SYJ``) when ``tile_size`` covers the whole tile, else the MGRS id and the sub-tile
  (``30SYJ_r000c001``), so the same pixels keep their id for any AOI. Each unit is composited from the
  scenes of its own tile only, and its maps keep only the pixels its tile owns.
* **A user grid** (``grid: {crs: EPSG:3035, resolution: 10}``, or the older top-level ``crs:``). The AOI
  on that grid (:func:`lcstack.grid.user_grid_tiles`), cut into ``tile_size`` cells of a lattice anchored
  at the CRS origin; ids ``E<x>N<y>`` (the cell's lower-left corner in metres). Scenes are chosen over the
  whole AOI and warped onto the grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from odc.geo.geobox import GeoBox, GeoboxTiles

__all__ = ["Unit", "s2_units", "user_units", "points_of_units", "unit_owns"]


@dataclass(frozen=True)
class Unit:
    """One processing unit: its id (used in storage paths), its pixel grid and its Sentinel-2 tile."""

    id: str
    geobox: GeoBox
    #: the MGRS tile the unit lies in (Sentinel-2 grid); None on a user grid
    tile: str | None = None


def s2_units(tiles: Mapping[str, Any], tile_size: int) -> dict[str, Unit]:
    """Return the units of Sentinel-2 tiles (:class:`~lcstack.s2grid.S2Tile` by tile id), in id order."""
    out: dict[str, Unit] = {}
    for tile, s2tile in tiles.items():
        whole = GeoboxTiles(s2tile.geobox, (tile_size, tile_size)).shape.yx == (1, 1)
        for sub, gbox in s2tile.subtiles.items():
            uid = tile if whole else f"{tile}_{sub}"
            out[uid] = Unit(uid, gbox, tile)
    return out


def user_units(aoi: object, crs: str, *, resolution: float, tile_size: int) -> dict[str, Unit]:
    """Return the units of a user grid over ``aoi`` (see :func:`lcstack.grid.user_grid_tiles`)."""
    from .grid import user_grid_tiles

    tiles = user_grid_tiles(aoi, crs, resolution=resolution, tile_size=tile_size)
    return {uid: Unit(uid, gbox) for uid, gbox in tiles.items()}


def points_of_units(
    lon: np.ndarray,
    lat: np.ndarray,
    units: Mapping[str, Unit],
    footprints: Mapping[str, GeoBox] | None,
    geometries: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Which points each unit samples: the unit's pixels, and (Sentinel-2 grid) only points its tile owns.

    With ``footprints`` (every tile being processed -> its grid) a point is sampled from the one tile that
    owns it (:func:`lcstack.s2grid.owner_of_points`, the rule the maps' ownership masks use), so no point is
    sampled twice where tiles overlap. A row with a polygon in ``geometries`` (shapely, WGS 84; ``None``
    for a point) goes to every unit it overlaps; :func:`unit_owns` then keeps each of its pixels in one.
    """
    from pyproj import Transformer

    owner = None
    if footprints:
        from .s2grid import owner_of_points

        owner = owner_of_points(lon, lat, footprints)
    out = {}
    for uid, unit in units.items():
        tr = Transformer.from_crs("EPSG:4326", unit.geobox.crs.to_wkt(), always_xy=True)
        x, y = tr.transform(lon, lat)
        col, row = ~unit.geobox.affine * (np.asarray(x), np.asarray(y))
        ny, nx = unit.geobox.shape.yx
        inside = (col >= 0) & (col < nx) & (row >= 0) & (row < ny)
        if owner is not None and unit.tile is not None:
            inside &= owner == unit.tile
        if geometries is not None:
            areal = geometries != None  # noqa: E711 - object array of shapely geometries
            inside = np.where(areal, _overlaps(geometries, areal, unit.geobox), inside)
        out[uid] = inside
    return out


def _overlaps(geometries: np.ndarray, areal: np.ndarray, geobox: GeoBox) -> np.ndarray:
    import shapely

    extent = geobox.extent.to_crs("EPSG:4326").geom
    hit = np.zeros(len(geometries), dtype=bool)
    hit[areal] = shapely.intersects(np.asarray(geometries[areal], dtype=object), extent)
    return hit


def unit_owns(unit: Unit, footprints: Mapping[str, GeoBox] | None) -> Any:
    """``owns(lon, lat)`` for :func:`lcstack.samples.extract_samples`: the pixels ``unit``'s tile owns."""
    if not footprints or unit.tile is None:
        return None
    from .s2grid import owner_of_points

    return lambda lon, lat: owner_of_points(lon, lat, footprints) == unit.tile
