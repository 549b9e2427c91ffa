"""Output grids: the AOI GeoBox and its processing tiles (odc-geo)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from odc.geo import CRS
from odc.geo.geobox import GeoBox, GeoboxTiles
from odc.geo.geom import BoundingBox, Geometry

from .errors import InvalidInputError

__all__ = [
    "utm_crs",
    "aoi_geometry",
    "aoi_geobox",
    "crop_geobox",
    "tile_geoboxes",
    "user_grid_tiles",
    "points_bbox",
]

logger = logging.getLogger(__name__)


def utm_crs(lon: float, lat: float) -> CRS:
    """Return the WGS 84 / UTM zone CRS containing ``(lon, lat)``."""
    zone = int(math.floor((lon + 180.0) / 6.0)) % 60 + 1
    return CRS(f"EPSG:{(32600 if lat >= 0 else 32700) + zone}")


def points_bbox(lon: Sequence[float], lat: Sequence[float], *, margin: float = 0.05) -> tuple[float, ...]:
    """Lon/lat bounds of points, grown by ``margin`` of their extent (at least ~500 m) on each side."""
    lon_a, lat_a = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    x0, x1, y0, y1 = lon_a.min(), lon_a.max(), lat_a.min(), lat_a.max()
    dx = max((x1 - x0) * margin, 0.005)
    dy = max((y1 - y0) * margin, 0.005)
    return (max(x0 - dx, -180.0), max(y0 - dy, -90.0), min(x1 + dx, 180.0), min(y1 + dy, 90.0))


def aoi_geometry(aoi: object) -> Geometry:
    """Normalise an AOI to an odc-geo ``Geometry``.

    ``aoi`` is a lon/lat bbox ``(lon_min, lat_min, lon_max, lat_max)``, an object with ``bbox`` and ``crs``
    attributes (a bbox in another CRS), a GeoJSON file path, or a ``Geometry``.
    """
    if isinstance(aoi, Geometry):
        return aoi
    if hasattr(aoi, "bbox") and hasattr(aoi, "crs"):
        return BoundingBox(*aoi.bbox, crs=aoi.crs).polygon  # type: ignore[attr-defined]
    if isinstance(aoi, str | Path):
        path = Path(aoi)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InvalidInputError(f"{path}: cannot read the AOI as GeoJSON ({err}).") from None
        feats = data.get("features") if data.get("type") == "FeatureCollection" else [data]
        geoms = [f.get("geometry", f) if f.get("type") == "Feature" else f for f in feats or []]
        if not geoms:
            raise InvalidInputError(f"{path}: the GeoJSON holds no geometry; give a Polygon or a Feature.")
        out = Geometry(geoms[0], crs="EPSG:4326")
        for g in geoms[1:]:
            out = out | Geometry(g, crs="EPSG:4326")
        return out
    if isinstance(aoi, Sequence) and len(aoi) == 4:
        return BoundingBox(*map(float, aoi), crs="EPSG:4326").polygon  # type: ignore[arg-type]
    raise InvalidInputError(
        f"aoi {aoi!r} is not understood: give [lon_min, lat_min, lon_max, lat_max], "
        "{bbox: [...], crs: EPSG:...} or a GeoJSON file."
    )


def aoi_geobox(aoi: object, *, crs: str | CRS | None = None, resolution: float = 10.0) -> GeoBox:
    """Return the output grid covering ``aoi``, snapped to whole multiples of ``resolution``.

    The CRS defaults to the UTM zone of the AOI centre (or the AOI's own CRS when it is projected).
    """
    geom = aoi_geometry(aoi)
    if crs is None:
        if geom.crs is not None and geom.crs.projected:
            crs = geom.crs
        else:
            c = geom.to_crs("EPSG:4326").centroid.coords[0]
            crs = utm_crs(c[0], c[1])
    crs = CRS(crs)
    gbox = GeoBox.from_geopolygon(geom.to_crs(crs), resolution=resolution, crs=crs, tight=False)
    if gbox.shape[0] == 0 or gbox.shape[1] == 0:
        raise InvalidInputError(f"aoi {aoi!r} is empty at resolution {resolution}.")
    logger.debug("AOI grid %s", gbox)
    return gbox


def crop_geobox(geobox: GeoBox, bbox: BoundingBox) -> GeoBox:
    """Return the pixels of ``geobox`` touching ``bbox`` (in the geobox's CRS), same lattice; may be empty."""
    t = geobox.affine
    ny, nx = geobox.shape.yx
    c0 = max(0, math.floor(round((bbox.left - t.c) / t.a, 6)))
    c1 = min(nx, math.ceil(round((bbox.right - t.c) / t.a, 6)))
    r0 = max(0, math.floor(round((bbox.top - t.f) / t.e, 6)))
    r1 = min(ny, math.ceil(round((bbox.bottom - t.f) / t.e, 6)))
    return geobox[r0 : max(r0, r1), c0 : max(c0, c1)]


def tile_geoboxes(
    geobox: GeoBox, tile_size: int, *, within: BoundingBox | None = None
) -> Mapping[str, GeoBox]:
    """Cut ``geobox`` into processing tiles of at most ``tile_size`` × ``tile_size`` pixels.

    Tile ids are ``r<row>c<col>`` (zero-padded), stable for a given grid and tile size. With ``within`` (a
    bounding box in the geobox's CRS) only the tiles that touch it are kept, each cropped to it; the ids still
    count on the whole of ``geobox``, so the same part of a Sentinel-2 tile has the same id for any AOI.
    """
    tiles = GeoboxTiles(geobox, (tile_size, tile_size))
    ny, nx = tiles.shape.yx
    out = {f"r{iy:03d}c{ix:03d}": tiles[iy, ix] for iy in range(ny) for ix in range(nx)}
    if within is None:
        return out
    cropped = {key: crop_geobox(g, within) for key, g in out.items()}
    return {key: g for key, g in cropped.items() if g.shape[0] > 0 and g.shape[1] > 0}


def user_grid_tiles(
    aoi: object, crs: str | CRS, *, resolution: float = 10.0, tile_size: int
) -> Mapping[str, GeoBox]:
    """Return the processing tiles of ``aoi`` on a user grid (``grid: {crs: EPSG:3035, resolution: 10}``).

    The grid is the AOI's :func:`aoi_geobox` in ``crs`` (pixel edges on whole multiples of ``resolution``),
    cut into cells of a lattice anchored at the CRS origin, ``tile_size`` pixels on a side, each cropped to
    the AOI grid. Ids ``E<x>N<y>`` are the cell's lower-left corner in metres: a cell keeps its id for any
    AOI.

    Raises
    ------
    InvalidInputError
        If ``crs`` is not a projected CRS or ``resolution``/``tile_size`` is not positive.

    """
    try:
        crs = CRS(crs)
    except Exception as err:  # noqa: BLE001 - pyproj raises several types
        raise InvalidInputError(f"grid crs {crs!r} is not understood ({err}); give e.g. EPSG:3035.") from None
    if not crs.projected:
        raise InvalidInputError(
            f"grid crs {crs} is not projected; give a projected CRS in metres (e.g. EPSG:3035)."
        )
    if not resolution > 0 or not tile_size > 0:
        raise InvalidInputError(
            f"grid: resolution {resolution!r} and tile_size {tile_size!r} must be positive."
        )
    gbox = aoi_geobox(aoi, crs=crs, resolution=resolution)
    step = tile_size * resolution
    left, bottom, right, top = gbox.boundingbox
    out: dict[str, GeoBox] = {}
    for iy in range(math.floor(top / step + 1e-9), math.floor(bottom / step + 1e-9) - 1, -1):
        for ix in range(math.floor(left / step + 1e-9), math.ceil(right / step - 1e-9)):
            cell = BoundingBox(ix * step, iy * step, (ix + 1) * step, (iy + 1) * step, crs=crs)
            sub = crop_geobox(gbox, cell)
            if sub.shape[0] > 0 and sub.shape[1] > 0:
                out[f"E{ix * step:.0f}N{iy * step:.0f}"] = sub
    return out
