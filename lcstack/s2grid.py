"""The Sentinel-2 tile grid: MGRS tile ids, each tile's native grid from its STAC items, and tile ownership.

Sentinel-2 L2A products are cut into MGRS tiles: a tile is the 100 km MGRS grid square plus a margin, 109.8 km
(10 980 px at 10 m) on a side, on the UTM grid of its zone, with its upper-left corner on the 60 m lattice
just outside the square (``floor(e0 / 60) * 60``, ``ceil(n1 / 60) * 60``). Adjacent tiles of one zone overlap
by about 9.8 km; across a zone boundary they overlap by tens of kilometres.

Ownership rule (each location belongs to exactly one tile):

1. A location belongs to the tile whose MGRS 100 km grid square contains it, when that tile is one of the
   tiles being processed (the squares partition the plane between 80° S and 84° N, so this is exact and
   needs no neighbour).
2. A location whose square is not among the tiles being processed (a catalog without that tile) belongs to
   the first processed tile, in order of tile id, whose footprint (its grid) contains it.

The rule is evaluated point by point with exact MGRS arithmetic (pyproj), the same way for pixel centres
(:func:`ownership_mask`) and for training points (:func:`owner_of_points`), so both always agree.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from affine import Affine
from odc.geo import CRS
from odc.geo.geobox import GeoBox
from odc.geo.geom import BoundingBox, Geometry
from pyproj import Transformer

from .errors import InvalidInputError
from .grid import aoi_geometry, crop_geobox, tile_geoboxes

__all__ = [
    "S2Tile",
    "normalise_tile",
    "tile_id",
    "item_geobox",
    "tile_geobox",
    "s2_tile_geobox",
    "mgrs_square",
    "square_polygon",
    "owner_of_points",
    "ownership_mask",
    "tiles_for_aoi",
]

logger = logging.getLogger(__name__)

S2_TILE_PIXELS = 10_980
S2_RESOLUTION = 10.0
_COLS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
_ROWS = "ABCDEFGHJKLMNPQRSTUV"
_BANDS = "CDEFGHJKLMNPQRSTUVWX"
_TILE_RE = re.compile(r"^(\d{1,2})([C-HJ-NP-X])([A-HJ-NP-Z])([A-HJ-NP-V])$")
_SQUARE = 100_000.0
#: GZD longitude exceptions (Norway, Svalbard): (band, zone) -> (lon_min, lon_max)
_GZD_EXCEPTIONS = {
    ("V", 31): (0.0, 3.0),
    ("V", 32): (3.0, 12.0),
    ("X", 31): (0.0, 9.0),
    ("X", 33): (9.0, 21.0),
    ("X", 35): (21.0, 33.0),
    ("X", 37): (33.0, 42.0),
}


# ---------------------------------------------------------------------------------------------------------
# tile ids


def normalise_tile(tile: str, where: str = "tile") -> str:
    """Return an MGRS tile id as Sentinel-2 writes it (``32TPS``, ``06VVN``).

    Accepts ``MGRS-32TPS``, ``T32TPS``, lower case and one-digit zones; raises ``InvalidInputError`` naming
    ``where`` otherwise.
    """
    text = str(tile).strip().upper()
    text = text.removeprefix("MGRS-")
    if len(text) == 6 and text[0] == "T" and text[1].isdigit():
        text = text[1:]
    m = _TILE_RE.match(text)
    if not m or not 1 <= int(m[1]) <= 60:
        raise InvalidInputError(
            f"{where}: {tile!r} is not an MGRS tile id; expected zone, latitude band and 100 km square, "
            "e.g. '32TPS'."
        )
    zone, band, col, row = int(m[1]), m[2], m[3], m[4]
    if col not in _COLS[(zone - 1) % 3]:
        raise InvalidInputError(
            f"{where}: {tile!r}: column letter {col!r} does not occur in UTM zone {zone}."
        )
    return f"{zone:02d}{band}{col}{row}"


def _fields(item: Any) -> tuple[str, dict[str, Any], dict[str, dict[str, Any]]]:
    """Item id, properties and assets (as plain dicts) of a pystac Item or a STAC item mapping."""
    doc = item.to_dict(include_self_link=False, transform_hrefs=False) if hasattr(item, "to_dict") else item
    if not isinstance(doc, Mapping):
        raise InvalidInputError(f"{item!r} is not a STAC item.")
    return str(doc.get("id", "<no id>")), dict(doc.get("properties") or {}), dict(doc.get("assets") or {})


def tile_id(item: Any) -> str:
    """Return the MGRS tile id of a Sentinel-2 STAC item.

    Read from ``grid:code`` (``MGRS-32TPS``), ``s2:mgrs_tile`` (``06VVN``) or the ``mgrs:utm_zone``,
    ``mgrs:latitude_band`` and ``mgrs:grid_square`` properties, in that order.

    Raises
    ------
    InvalidInputError
        Naming the item when none of these is present or the value is not an MGRS tile id.

    """
    item_id, props, _ = _fields(item)
    code = props.get("grid:code")
    if isinstance(code, str) and code.upper().startswith("MGRS-"):
        return normalise_tile(code, f"item {item_id}: grid:code")
    if props.get("s2:mgrs_tile"):
        return normalise_tile(props["s2:mgrs_tile"], f"item {item_id}: s2:mgrs_tile")
    parts = [props.get(k) for k in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square")]
    if all(p not in (None, "") for p in parts):
        return normalise_tile(f"{parts[0]}{parts[1]}{parts[2]}", f"item {item_id}: mgrs:*")
    raise InvalidInputError(
        f"item {item_id}: no Sentinel-2 tile id; the item needs 'grid:code' (MGRS-<tile>), 's2:mgrs_tile' "
        "or 'mgrs:utm_zone' + 'mgrs:latitude_band' + 'mgrs:grid_square'."
    )


# ---------------------------------------------------------------------------------------------------------
# native grids from items


def _crs_of(fields: Mapping[str, Any]) -> CRS | None:
    if fields.get("proj:code"):
        return CRS(fields["proj:code"])
    if fields.get("proj:epsg"):
        return CRS(f"EPSG:{int(fields['proj:epsg'])}")
    if fields.get("proj:wkt2"):
        return CRS(fields["proj:wkt2"])
    return None


def _affine_of(fields: Mapping[str, Any]) -> tuple[Affine, tuple[int, int]] | None:
    shape = fields.get("proj:shape")
    if not shape or len(shape) != 2:
        return None
    shape = (int(shape[0]), int(shape[1]))
    if fields.get("proj:transform"):
        t = [float(v) for v in fields["proj:transform"]]
        return Affine(*t[:6]), shape
    if fields.get("proj:bbox"):
        x0, y0, x1, y1 = (float(v) for v in fields["proj:bbox"][:4])
        return Affine((x1 - x0) / shape[1], 0.0, x0, 0.0, -(y1 - y0) / shape[0], y1), shape
    return None


def item_geobox(item: Any) -> GeoBox:
    """Return the finest pixel grid of a STAC item (Sentinel-2: its 10 m bands), from ``proj:*``.

    Each asset's ``proj:transform`` + ``proj:shape`` (or ``proj:bbox`` + ``proj:shape``) with the asset's or
    the item's ``proj:code`` / ``proj:epsg`` / ``proj:wkt2``; item-level ``proj:*`` when no asset has them.
    """
    item_id, props, assets = _fields(item)
    grids: list[tuple[str, GeoBox]] = []
    for key, asset in assets.items():
        found = _affine_of(asset)
        if found is None:
            continue
        crs = _crs_of(asset) or _crs_of(props)
        if crs is None:
            raise InvalidInputError(
                f"item {item_id}, asset {key}: proj:transform without a CRS; "
                "the asset or item needs proj:code, proj:epsg or proj:wkt2."
            )
        grids.append((key, GeoBox(found[1], found[0], crs)))
    if not grids and _affine_of(props) is not None and _crs_of(props) is not None:
        found = _affine_of(props)
        grids.append(("<item>", GeoBox(found[1], found[0], _crs_of(props))))  # type: ignore[index]
    if not grids:
        raise InvalidInputError(
            f"item {item_id}: no pixel grid; its assets need 'proj:shape' with 'proj:transform' or "
            "'proj:bbox', and a CRS ('proj:code', 'proj:epsg' or 'proj:wkt2')."
        )
    finest = min(abs(g.resolution.x) for _, g in grids)
    fine = [(k, g) for k, g in grids if abs(g.resolution.x) == finest]
    key0, gbox = fine[0]
    for key, other in fine[1:]:
        if other != gbox:
            raise InvalidInputError(
                f"item {item_id}: assets {key0} and {key} are both at {finest:g} m but on different grids "
                f"({gbox.affine[:6]}, {gbox.shape} vs {other.affine[:6]}, {other.shape})."
            )
    return gbox


def tile_geobox(items: Iterable[Any]) -> GeoBox:
    """Return the native grid of one Sentinel-2 tile, from the items of that tile (all must agree).

    Raises
    ------
    InvalidInputError
        When there is no item, the items belong to different tiles, or one item's grid differs from the
        first item's (the message names both items and both grids).

    """
    items = list(items)
    if not items:
        raise InvalidInputError("tile_geobox: no items; pass the STAC items of one Sentinel-2 tile.")
    first_id, tile = _fields(items[0])[0], tile_id(items[0])
    gbox = item_geobox(items[0])
    for item in items[1:]:
        other_id, other_tile = _fields(item)[0], tile_id(item)
        if other_tile != tile:
            raise InvalidInputError(
                f"item {other_id} is in tile {other_tile}, not {tile} like item {first_id}; "
                "pass the items of one tile (group them with tile_id)."
            )
        other = item_geobox(item)
        if other != gbox:
            raise InvalidInputError(
                f"item {other_id} of tile {tile} is on grid {other.crs} {tuple(other.affine)[:6]} "
                f"{other.shape.yx}, but item {first_id} is on {gbox.crs} {tuple(gbox.affine)[:6]} "
                f"{gbox.shape.yx}; the items of one tile must share one grid (check the catalog)."
            )
    return gbox


# ---------------------------------------------------------------------------------------------------------
# MGRS arithmetic


def _parse(tile: str) -> tuple[int, str, str, str]:
    t = normalise_tile(tile)
    return int(t[:2]), t[2], t[3], t[4]


def _utm_epsg(zone: int, north: bool) -> int:
    return (32600 if north else 32700) + zone


@lru_cache(maxsize=512)
def _cached_transformer(src: str, dst: str, thread: int) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


def _transformer(src: str, dst: str) -> Transformer:
    """Return a cached transformer, one per thread (Dask runs blocks in threads)."""
    return _cached_transformer(src, dst, threading.get_ident())


def _to_utm(epsg: int) -> Transformer:
    return _transformer("EPSG:4326", f"EPSG:{epsg}")


def _gzd_bounds(zone: int, band: str) -> tuple[float, float, float, float]:
    """Lon/lat bounds of a grid zone designation (zone + latitude band)."""
    lon0, lon1 = _GZD_EXCEPTIONS.get((band, zone), (zone * 6.0 - 186.0, zone * 6.0 - 180.0))
    lat0 = -80.0 + 8.0 * _BANDS.index(band)
    return lon0, lat0, lon1, 84.0 if band == "X" else lat0 + 8.0


@lru_cache(maxsize=4096)
def _square_origin(tile: str) -> tuple[int, float, float]:
    """UTM EPSG code and lower-left corner ``(e0, n0)`` of the 100 km square of a tile."""
    zone, band, col, row = _parse(tile)
    e0 = (_COLS[(zone - 1) % 3].index(col) + 1) * _SQUARE
    base = ((_ROWS.index(row) - (5 if zone % 2 == 0 else 0)) % 20) * _SQUARE
    lon0, lat0, lon1, lat1 = _gzd_bounds(zone, band)
    epsg = _utm_epsg(zone, band >= "N")
    _, n_centre = _to_utm(epsg).transform(zone * 6.0 - 183.0, (lat0 + lat1) / 2)
    k = round((n_centre - base - _SQUARE / 2) / 2_000_000.0)
    return epsg, e0, base + k * 2_000_000.0


def s2_tile_geobox(tile: str) -> GeoBox:
    """Return the nominal 10 m grid of a real Sentinel-2 tile (10 980 px, UL on the 60 m lattice)."""
    epsg, e0, n0 = _square_origin(normalise_tile(tile))
    x0 = math.floor(e0 / 60.0) * 60.0
    y0 = math.ceil((n0 + _SQUARE) / 60.0) * 60.0
    res = S2_RESOLUTION
    return GeoBox((S2_TILE_PIXELS, S2_TILE_PIXELS), Affine(res, 0.0, x0, 0.0, -res, y0), f"EPSG:{epsg}")


def square_polygon(tile: str) -> Geometry:
    """Return the MGRS 100 km grid square of ``tile`` (clipped to its grid zone), as a lon/lat polygon."""
    tile = normalise_tile(tile)
    epsg, e0, n0 = _square_origin(tile)
    zone, band = int(tile[:2]), tile[2]
    square = BoundingBox(e0, n0, e0 + _SQUARE, n0 + _SQUARE, crs=f"EPSG:{epsg}").polygon
    lonlat = square.to_crs("EPSG:4326", resolution=500.0)
    return lonlat & BoundingBox(*_gzd_bounds(zone, band), crs="EPSG:4326").polygon


def _zones(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    zone = (np.floor((lon + 180.0) / 6.0).astype(np.int64) % 60) + 1
    zone[(lat >= 56) & (lat < 64) & (lon >= 3) & (lon < 12)] = 32
    band_x = lat >= 72
    for z, (a, b) in ((31, (0, 9)), (33, (9, 21)), (35, (21, 33)), (37, (33, 42))):
        zone[band_x & (lon >= a) & (lon < b)] = z
    return zone


def _square_codes(lon: np.ndarray, lat: np.ndarray, xy: tuple[np.ndarray, np.ndarray, int] | None = None
                  ) -> np.ndarray:  # fmt: skip
    """Integer code of the MGRS square of every location (``-1`` outside 80° S – 84° N).

    ``xy`` = ``(x, y, epsg)``: the same locations in a UTM CRS, used as they are where that is their own zone.
    """
    lon, lat = np.asarray(lon, dtype=np.float64).ravel(), np.asarray(lat, dtype=np.float64).ravel()
    band = np.clip(np.floor((lat + 80.0) / 8.0).astype(np.int64), 0, 19)
    zone = _zones(lon, lat)
    epsg = np.where(lat >= 0, 32600, 32700) + zone
    east, north = np.empty_like(lon), np.empty_like(lat)
    for code in np.unique(epsg):
        sel = epsg == code
        if xy is not None and xy[2] == code:
            east[sel], north[sel] = xy[0].ravel()[sel], xy[1].ravel()[sel]
        else:
            east[sel], north[sel] = _to_utm(int(code)).transform(lon[sel], lat[sel])
    col = np.clip(np.floor(east / _SQUARE).astype(np.int64) - 1, 0, 7)
    row = (np.floor(north / _SQUARE).astype(np.int64) + np.where(zone % 2 == 0, 5, 0)) % 20
    codes = ((zone * 20 + band) * 8 + col) * 20 + row
    codes[~((lat >= -80.0) & (lat <= 84.0)) | ~np.isfinite(lon)] = -1
    return codes


def _code_of(tile: str) -> int:
    zone, band, col, row = _parse(tile)
    return ((zone * 20 + _BANDS.index(band)) * 8 + _COLS[(zone - 1) % 3].index(col)) * 20 + _ROWS.index(row)


def _tile_of(code: int) -> str:
    if code < 0:
        return ""
    rest, row = divmod(int(code), 20)
    rest, col = divmod(rest, 8)
    zone, band = divmod(rest, 20)
    return f"{zone:02d}{_BANDS[band]}{_COLS[(zone - 1) % 3][col]}{_ROWS[row]}"


def mgrs_square(lon: Any, lat: Any) -> np.ndarray:
    """MGRS 100 km square (``30SYJ``) of every lon/lat location; ``""`` outside 80° S – 84° N."""
    lon_a = np.asarray(lon, dtype=np.float64)
    codes = _square_codes(lon_a, np.asarray(lat, dtype=np.float64))
    uniq, inverse = np.unique(codes, return_inverse=True)
    names = np.array([_tile_of(c) for c in uniq], dtype="<U5")
    return names[inverse].reshape(lon_a.shape)


# ---------------------------------------------------------------------------------------------------------
# ownership


def _footprints(tiles: Mapping[str, GeoBox] | Iterable[str]) -> dict[str, GeoBox]:
    if isinstance(tiles, Mapping):
        return dict(sorted(((normalise_tile(t), g) for t, g in tiles.items()), key=lambda kv: kv[0]))
    return {t: s2_tile_geobox(t) for t in sorted({normalise_tile(t) for t in tiles})}


def _inside(gbox: GeoBox, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    x, y = _transformer("EPSG:4326", str(gbox.crs)).transform(lon, lat)
    left, bottom, right, top = gbox.boundingbox
    return (x >= left) & (x < right) & (y > bottom) & (y <= top)


def _owners(lon: np.ndarray, lat: np.ndarray, footprints: Mapping[str, GeoBox],
            xy: tuple[np.ndarray, np.ndarray, int] | None = None) -> np.ndarray:  # fmt: skip
    """Index into ``list(footprints)`` of the owner of every location, ``-1`` where no tile owns it."""
    names = list(footprints)
    codes = _square_codes(lon, lat, xy)
    if not names:
        return np.full(codes.shape, -1, dtype=np.int64)
    present = np.array([_code_of(t) for t in names], dtype=np.int64)
    order = np.argsort(present)
    pos = np.clip(np.searchsorted(present[order], codes), 0, len(names) - 1)
    hit = present[order][pos] == codes
    owner = np.where(hit, order[pos], -1)
    rest = np.flatnonzero(~hit & (codes >= 0))
    for i, name in enumerate(names):  # rule 2, in tile id order
        if rest.size == 0:
            break
        inside = _inside(footprints[name], lon.ravel()[rest], lat.ravel()[rest])
        owner[rest[inside]] = i
        rest = rest[~inside]
    return owner


def owner_of_points(lon: Any, lat: Any, tiles: Mapping[str, GeoBox] | Iterable[str]) -> np.ndarray:
    """Return the tile that owns each lon/lat point, ``""`` where none of ``tiles`` does.

    Parameters
    ----------
    lon, lat
        Point coordinates in degrees (any matching shapes).
    tiles
        The tiles being processed: a mapping tile id -> the tile's grid (its footprint, e.g. from
        :func:`tile_geobox`), or tile ids alone (footprints are then the nominal Sentinel-2 tiles).

    Returns
    -------
    numpy.ndarray
        Tile ids (``<U5``), the shape of ``lon``.

    """
    footprints = _footprints(tiles)
    lon_a, lat_a = np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
    owner = _owners(lon_a.ravel(), lat_a.ravel(), footprints)
    names = np.array([*footprints, ""], dtype="<U5")
    return names[owner].reshape(lon_a.shape)


def _mask_block(tile: str, footprints: Mapping[str, GeoBox], gbox: GeoBox) -> np.ndarray:
    """Ownership of the pixel centres of one grid block (see the module docstring for the rule)."""
    ny, nx = gbox.shape.yx
    t = gbox.affine
    if ny == 0 or nx == 0:
        return np.zeros((ny, nx), dtype=bool)
    # fast path: the block lies well inside the tile's own square
    square = square_polygon(tile).to_crs(gbox.crs, resolution=0.005)
    if gbox.extent.buffer(2 * abs(t.a)).geom.within(square.geom):
        return np.ones((ny, nx), dtype=bool)
    x = t.c + (np.arange(nx) + 0.5) * t.a
    y = t.f + (np.arange(ny) + 0.5) * t.e
    xx, yy = np.meshgrid(x, y)
    lon, lat = _transformer(str(gbox.crs), "EPSG:4326").transform(xx.ravel(), yy.ravel())
    epsg = gbox.crs.epsg or 0
    owner = _owners(np.asarray(lon), np.asarray(lat), footprints, (xx.ravel(), yy.ravel(), epsg))
    return (owner == list(footprints).index(tile)).reshape(ny, nx)


def ownership_mask(tile: str, tiles: Mapping[str, GeoBox], geobox: GeoBox | None = None, *,
                   chunks: int | None = None) -> Any:  # fmt: skip
    """Boolean mask of the pixels of ``geobox`` owned by ``tile`` (pixel centres, exact rule).

    Parameters
    ----------
    tile
        The tile whose pixels are tested.
    tiles
        Every tile being processed, tile id -> its grid (footprint); ``tile`` must be one of them.
    geobox
        The grid to test (the tile's grid, a sub-tile or an AOI crop of it); default ``tiles[tile]``.
    chunks
        If given, return a lazy dask array in square chunks of this many pixels, one block at a time.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        ``bool``, shape ``geobox.shape``.

    """
    footprints = _footprints(tiles)
    tile = normalise_tile(tile)
    if tile not in footprints:
        raise InvalidInputError(f"ownership_mask: tile {tile} is not among the tiles {sorted(footprints)}.")
    gbox = geobox if geobox is not None else footprints[tile]
    if chunks is None:
        return _mask_block(tile, footprints, gbox)
    import dask.array as da

    def block(block_info: dict | None = None) -> np.ndarray:
        (r0, r1), (c0, c1) = block_info[None]["array-location"]  # type: ignore[index]
        return _mask_block(tile, footprints, gbox[r0:r1, c0:c1])

    return da.map_blocks(block, chunks=da.core.normalize_chunks(chunks, gbox.shape.yx), dtype=bool,
                         meta=np.empty((0, 0), dtype=bool))  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# tiles of an AOI


@dataclass(frozen=True)
class S2Tile:
    """One Sentinel-2 tile of an AOI: its grid, its items and the part of the AOI it owns."""

    #: MGRS tile id (``30SYJ``)
    tile: str
    #: the tile's full native 10 m grid (its footprint)
    geobox: GeoBox
    #: the tile's grid cropped (pixel-aligned) to the bounding box of the part of the AOI it owns
    aoi_geobox: GeoBox
    #: the owned part of the AOI in the tile's CRS (densified polygons; :func:`ownership_mask` is exact)
    owned: Geometry
    #: ``tile_size`` sub-tiles of ``aoi_geobox``, ids ``r<row>c<col>`` counted on the full tile grid
    subtiles: Mapping[str, GeoBox] = field(default_factory=dict)
    #: the STAC items of this tile
    items: Sequence[Any] = ()


def _owned_region(tile: str, footprints: Mapping[str, GeoBox]) -> Geometry:
    """Lon/lat polygon of the locations ``tile`` owns among ``footprints`` (rule 1, then rule 2)."""
    outline = {t: g.extent.to_crs("EPSG:4326", resolution=500.0) for t, g in footprints.items()}
    own = square_polygon(tile) & outline[tile]
    fallback = outline[tile]
    for other in footprints:
        fallback = fallback - square_polygon(other)
        if other < tile:
            fallback = fallback - outline[other]
    return own | fallback


def tiles_for_aoi(items: Iterable[Any], aoi: object, *, tile_size: int | None = None) -> dict[str, S2Tile]:
    """Return the Sentinel-2 tiles of ``items`` that own part of ``aoi``, with their grids and owned parts.

    Items are grouped by :func:`tile_id`; each group gives the tile's grid (:func:`tile_geobox`). Tiles whose
    footprint misses the AOI are dropped, and so are tiles whose owned part misses it (the AOI only touches
    their margin, which neighbours own); dropping them changes no AOI location's owner.

    Parameters
    ----------
    items
        STAC items (pystac or mappings) of any number of tiles.
    aoi
        Anything :func:`lcstack.grid.aoi_geometry` accepts.
    tile_size
        Cut each tile's AOI part into sub-tiles of at most this many pixels (ids stable per tile).

    Returns
    -------
    dict
        Tile id -> :class:`S2Tile`, in tile id order.

    """
    groups: dict[str, list[Any]] = {}
    for item in items:
        groups.setdefault(tile_id(item), []).append(item)
    geom = aoi_geometry(aoi)
    geom = geom.to_crs("EPSG:4326", resolution=0.0005 if geom.crs.geographic else 100.0)
    grids = {t: tile_geobox(group) for t, group in sorted(groups.items())}
    touching = {
        t: g for t, g in grids.items() if g.extent.to_crs("EPSG:4326", resolution=500.0).intersects(geom)
    }
    out: dict[str, S2Tile] = {}
    for tile, gbox in touching.items():
        owned = (_owned_region(tile, touching) & geom).to_crs(gbox.crs, resolution=0.0005)
        if owned.is_empty or owned.area == 0:
            logger.debug("tile %s: footprint touches the AOI but owns none of it; skipped", tile)
            continue
        crop = crop_geobox(gbox, owned.boundingbox)
        subtiles = tile_geoboxes(gbox, tile_size, within=owned.boundingbox) if tile_size else {}
        out[tile] = S2Tile(tile, gbox, crop, owned, subtiles, tuple(groups[tile]))
    logger.info("AOI covered by %d Sentinel-2 tile(s): %s", len(out), ", ".join(out))
    return out
