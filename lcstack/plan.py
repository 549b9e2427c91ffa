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

On the units, the run's outputs are planned as :class:`PlannedOutput` records by pure functions (no I/O):
:func:`composite_selection` picks the scenes of every composite, :func:`plan_composites` gives each its
content key and URL (from asset fingerprints gathered beforehand), :func:`plan_maps` the maps of each
unit. :class:`lcstack.pipeline.Workflow` loops over them and claims each output in the registry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from odc.geo.geobox import GeoBox, GeoboxTiles

__all__ = [
    "Unit",
    "PlannedOutput",
    "s2_units",
    "user_units",
    "points_of_units",
    "unit_owns",
    "composite_selection",
    "plan_composites",
    "plan_maps",
    "MAP_FILES",
    "PROBA_FILES",
    "digest",
    "grid_token",
]

#: The files of a unit's maps under its folder.
MAP_FILES = {
    "zarr": "maps.zarr",
    "level1": "level1.tif",
    "level2": "level2.tif",
    "valid_seasons": "valid_seasons.tif",
}

#: The further files of a unit's maps with ``classify: {probabilities: true}`` (one COG per layer).
PROBA_FILES = {
    "level1_proba": "level1_proba.tif",
    "level1_confidence": "level1_confidence.tif",
    "level1_margin": "level1_margin.tif",
    "level1_entropy": "level1_entropy.tif",
    "level2_confidence": "level2_confidence.tif",
    "level2_margin": "level2_margin.tif",
    "level2_entropy": "level2_entropy.tif",
}


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


# ------------------------------------------------------------------------------------ planned outputs
@dataclass(frozen=True)
class PlannedOutput:
    """One output of the run, as planned before anything is computed.

    Attributes
    ----------
    kind
        Registry kind: ``"composites"`` (a season's composite or the terrain) or ``"maps"``.
    key
        Content key: changes whenever anything the output is computed from does.
    url
        Where it is stored (for maps: the unit's folder; the files are in ``files``).
    unit
        The processing unit (:class:`Unit` id).
    season
        The season name, ``"terrain"``, or None for maps.
    inputs
        What it is computed from: STAC item ids (composites) or composite keys (maps), sorted.
    s2_tile
        The unit's Sentinel-2 tile (None on a user grid).
    files
        Maps only: URL per file (``zarr``, ``level1``, ``level2``).
    items
        Composites only: the STAC items to read (in memory, never recorded; empty for a plan read back
        from the registry).

    """

    kind: str
    key: str
    url: str
    unit: str
    season: str | None = None
    inputs: tuple[str, ...] = ()
    s2_tile: str | None = None
    files: Mapping[str, str] = field(default_factory=dict)
    items: tuple[Any, ...] = field(default=(), compare=False, repr=False)


def digest(obj: Any, n: int = 16) -> str:
    """Return the first ``n`` hex digits of the SHA-256 of ``obj`` as canonical JSON."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def grid_token(gbox: GeoBox) -> dict[str, Any]:
    """Return what identifies a pixel grid: CRS, affine and shape."""
    return {"crs": str(gbox.crs), "affine": list(gbox.affine)[:6], "shape": list(gbox.shape.yx)}


def items_over(infos: Sequence[Any], gbox: GeoBox) -> list[Any]:
    """Return the items of ``infos`` (:class:`~lcstack.discover.SceneInfo`) whose footprint meets ``gbox``."""
    from odc.geo.geom import Geometry

    extent = gbox.extent.to_crs("EPSG:4326")
    return [i.item for i in infos if Geometry(i.item.geometry, crs="EPSG:4326").intersects(extent)]


def composite_selection(
    units: Mapping[str, Unit], scenes: Mapping[str, Mapping[str, Sequence[Any]]], dem: Sequence[Any] | None
) -> list[tuple[Unit, str, list[Any]]]:
    """Return ``(unit, season or "terrain", items)`` of every composite, in unit then season order.

    ``scenes`` holds the chosen scenes per Sentinel-2 tile and season. A Sentinel-2 unit reads its own
    tile's scenes only (``scenes[tile]``); a user-grid unit reads the chosen scenes of every tile that lie
    over it, so each part of it has its own tile's best scenes. A season without items has no composite.
    ``dem`` (None: no terrain) gives every unit a terrain composite.
    """
    from .discover import _sort_key

    seasons = list(dict.fromkeys(season for per_tile in scenes.values() for season in per_tile))
    out = []
    for unit in units.values():
        for season in seasons:
            if unit.tile:
                items = [i.item for i in scenes.get(unit.tile, {}).get(season, [])]
            else:
                over = [
                    i
                    for per_tile in scenes.values()
                    for i in items_over(per_tile.get(season, []), unit.geobox)
                ]
                items = sorted({i.id: i for i in over}.values(), key=_sort_key)
            if items:
                out.append((unit, season, items))
        if dem is not None:
            out.append((unit, "terrain", list(dem)))
    return out


def asset_hrefs(
    items: Sequence[Any], assets_of: Callable[[Any], Sequence[str]]
) -> list[tuple[str, str, str, Any]]:
    """Return ``(item id, asset key, absolute href or "", asset)`` of every asset a composite reads."""
    from .discover import MISSING_HREF

    out = []
    for item in items:
        for key in assets_of(item):
            asset = item.assets.get(key)
            href = None if asset is None or asset.extra_fields.get(MISSING_HREF) else asset.href
            href = asset.get_absolute_href() if href else None
            out.append((item.id, key, href or "", asset))
    return out


def content_of(
    items: Sequence[Any], assets_of: Callable[[Any], Sequence[str]], fingerprints: Mapping[str, str]
) -> list[list[str]]:
    """Return ``[item id, asset key, fingerprint]`` of every asset read, sorted."""
    return sorted([i, k, fingerprints.get(h, "missing:href")] for i, k, h, _ in asset_hrefs(items, assets_of))


def plan_composites(
    selection: Sequence[tuple[Unit, str, list[Any]]],
    seasons: Mapping[str, Any],
    *,
    params: Mapping[str, Any],
    scene_assets: Callable[[Any], Sequence[str]],
    fingerprints: Mapping[str, str],
    storage: Any,
    version: str,
) -> list[PlannedOutput]:
    """Key and place every composite of ``selection`` (:func:`composite_selection`).

    The key covers the grid, the season's dates, the items, the content of every asset read
    (``fingerprints``: href -> token, see :func:`lcstack.discover.asset_fingerprints`) and the
    parameters; a terrain composite's covers the grid, the DEM items and their content.
    """
    out = []
    for unit, season, items in selection:
        ids = sorted(i.id for i in items)
        if season == "terrain":
            ident = {
                "grid": grid_token(unit.geobox),
                "dem": ids,
                "content": content_of(items, lambda item: ["data"], fingerprints),
                "lcstack": version,
            }
        else:
            s = seasons[season]
            ident = {
                "grid": grid_token(unit.geobox),
                "season": [season, str(s.start), str(s.end), [str(d) for d in s.dates or ()]],
                "items": ids,
                "content": content_of(items, scene_assets, fingerprints),
                "params": dict(params),
            }
        key = digest(ident)
        url = storage.url("composites", unit.id, f"{season}_{key[:8]}.zarr")
        out.append(
            PlannedOutput("composites", key, url, unit.id, season, tuple(ids), unit.tile, items=tuple(items))
        )
    return out


def plan_maps(
    composites: Sequence[PlannedOutput],
    model_key: str,
    storage: Any,
    *,
    smoothing: Mapping[str, Any] | None = None,
    classify: Mapping[str, Any] | None = None,
) -> list[PlannedOutput]:
    """Plan the maps of every unit that has composites, in plan order.

    The key covers the model and the unit's composites; on the Sentinel-2 grid a map keeps only the
    pixels its tile owns, so its key also names the tiles of the run. Smoothed maps
    (``smoothing``: the :class:`lcstack.config.SmoothingConfig` as a dict) are other outputs than the
    classifier's own: their key covers the smoothing and they live in a ``smoothed_<hash>`` folder.
    So are maps with further layers (``classify``: the settings of
    :class:`lcstack.config.ClassifyConfig` that differ from its defaults, e.g. ``{"probabilities":
    True}``): their key covers them, they live in a ``classify_<hash>`` folder and list
    :data:`PROBA_FILES` too. Without either, keys and paths are those of the plain maps.
    A map's folder is ``<unit>_<first 8 digits of its key>``, as a composite's file is
    ``<season>_<key>.zarr``: the same model over another area never writes into these maps' folder.
    """
    s2_tiles = sorted({p.s2_tile for p in composites if p.s2_tile})
    extra = dict(classify or {})
    names = {**MAP_FILES, **(PROBA_FILES if extra.get("probabilities") else {})}
    out = []
    for unit_id in dict.fromkeys(p.unit for p in composites):
        mine = [p for p in composites if p.unit == unit_id]
        comp = sorted(p.key for p in mine)
        ident = {"model": model_key, "composites": comp} | ({"owned_among": s2_tiles} if s2_tiles else {})
        ident |= {"smoothing": dict(smoothing)} if smoothing else {}
        key = digest(ident | {"classify": extra}) if extra else digest(ident)
        sub = [f"smoothed_{digest(dict(smoothing), 8)}"] if smoothing else []
        sub += [f"classify_{digest(extra, 8)}"] if extra else []
        # the folder names the map's key too: one model over another area (or year) with a unit of the
        # same id makes other maps, which must never overwrite these
        base = storage.url("classification-maps", f"model_{model_key}", *sub, f"{unit_id}_{key[:8]}")
        files = {k: storage.join(base, v) for k, v in names.items()}
        out.append(PlannedOutput("maps", key, base, unit_id, None, tuple(comp), mine[0].s2_tile, files))
    return out
