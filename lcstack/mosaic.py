"""Mosaics of per-tile class maps: a GDAL VRT per UTM zone, and one COG over the whole area.

Tiles of one CRS sit on one pixel lattice (Sentinel-2 tiles of a UTM zone do), so :func:`zone_vrts` puts
them side by side in a VRT without resampling: every source lands at an integer pixel offset. Where
tiles overlap, the VRT shows the first tile in ``sources`` order that has data there.

:func:`mosaic` writes one COG in any target CRS, by default ``EPSG:4326`` (lon/lat) so that tiles of
several UTM zones meet without favouring one zone. Each output block is filled from the tiles that
reach it, each warped with nearest-neighbour resampling (no new class codes), exact to the pixel
(warp error tolerance 0). Which tile a pixel comes from:

* with Sentinel-2 tile footprints (``footprints``, and each source's ``tile``): the tile that owns the
  output pixel's centre by :mod:`lcstack.s2grid`'s rule (the rule the maps and training points use), when
  that tile has data there; pixels whose owner has none (seams between zones) fall back to the last rule;
* with ownership masks (one raster per tile on the tile's grid, non-zero where the tile owns the pixel):
  the first tile in ``sources`` order that owns it; a pixel that no tile owns after warping (seams
  between zones) falls back to the rule below;
* otherwise: the first tile in ``sources`` order that has data there (a priority order).

Either way one tile gives each output pixel, so no pixel is assigned twice. Blocks are computed a bounded
number at a time and streamed into the COG by :func:`lcstack.cog.write_cog` (same colour table and
class names as the tiles, nodata 0), so memory does not grow with the area.
"""

from __future__ import annotations

import json
import logging
import posixpath
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from ._gdal import gdal_path, rasterio_env
from .errors import InvalidInputError
from .store import Storage

__all__ = ["MosaicSource", "zone_vrts", "mosaic", "mosaic_workflow", "DEGREES_PER_METRE"]

logger = logging.getLogger(__name__)

#: Default resolution of a lon/lat mosaic: the tiles' resolution in metres times this (one degree of
#: latitude is about 111.32 km), so a pixel is as tall as a tile pixel.
DEGREES_PER_METRE = 1 / 111_320


@dataclass(frozen=True)
class MosaicSource:
    """One tile map of a mosaic.

    Parameters
    ----------
    url
        The tile's class map COG.
    owner_mask
        Optional raster on the same grid as ``url``; non-zero where this tile owns the pixel.
    tile
        Optional Sentinel-2 tile id of the map, used with :func:`mosaic`'s ``footprints``.

    """

    url: str
    owner_mask: str | None = None
    tile: str | None = None


@dataclass(frozen=True)
class _Tile:
    source: MosaicSource
    crs: Any
    transform: Any
    shape: tuple[int, int]
    bounds: tuple[float, float, float, float]


def _sources(sources: Sequence[str | MosaicSource]) -> list[MosaicSource]:
    out = [s if isinstance(s, MosaicSource) else MosaicSource(str(s)) for s in sources]
    if not out:
        raise InvalidInputError("mosaic: no tile maps given; run `lcstack run` (classify) first.")
    urls = [s.url for s in out]
    if len(set(urls)) != len(urls):
        raise InvalidInputError(f"mosaic: a tile map is listed twice in {urls}.")
    return out


def _read_tiles(storage: Storage, sources: Sequence[MosaicSource]) -> tuple[list[_Tile], dict[str, Any]]:
    """Grid of every tile, and the colour table / labels they share (checked to be the same)."""
    import rasterio

    tiles, style = [], None
    for s in sources:
        with rasterio_env(storage, s.url), rasterio.open(gdal_path(s.url)) as src:
            if src.count != 1 or src.dtypes[0] != "uint8":
                raise InvalidInputError(
                    f"{s.url}: expected a 1-band uint8 class map, got {src.count} band(s)."
                )
            try:
                colormap = src.colormap(1)
            except ValueError:
                colormap = None
            this = {"colors": colormap, "labels": json.loads(src.tags().get("LCSTACK_LABELS") or "{}")}
            tiles.append(_Tile(s, src.crs, src.transform, (src.height, src.width), tuple(src.bounds)))
        if style is None:
            style = this
        elif this["labels"] != style["labels"]:
            raise InvalidInputError(
                f"{s.url}: its classes {this['labels']} differ from those of {sources[0].url} "
                f"({style['labels']}); mosaic maps of one level made by one model."
            )
    return tiles, style or {}


def _group_by_crs(tiles: Sequence[_Tile]) -> dict[str, list[_Tile]]:
    groups: dict[str, list[_Tile]] = {}
    for t in tiles:
        epsg = t.crs.to_epsg()
        groups.setdefault(f"EPSG_{epsg}" if epsg else t.crs.to_string(), []).append(t)
    return groups


def _vrt_xml(tiles: Sequence[_Tile], style: Mapping[str, Any]) -> str:
    """VRT of tiles on one lattice; the first tile in the list is drawn last, so it wins overlaps."""
    from affine import Affine

    res_x, res_y = tiles[0].transform.a, tiles[0].transform.e
    left = min(t.bounds[0] for t in tiles)
    top = max(t.bounds[3] for t in tiles)
    origin = Affine(res_x, 0, left, 0, res_y, top)
    width = round((max(t.bounds[2] for t in tiles) - left) / res_x)
    height = round((min(t.bounds[1] for t in tiles) - top) / res_y)
    sources = []
    for t in reversed(tiles):  # later sources overwrite earlier ones where they have data
        col, row = ~origin * (t.transform.c, t.transform.f)
        if (
            (t.transform.a, t.transform.e) != (res_x, res_y)
            or abs(col - round(col)) > 1e-6
            or abs(row - round(row)) > 1e-6
            or t.transform.b
            or t.transform.d
        ):
            raise InvalidInputError(
                f"{t.source.url}: not on the pixel lattice of {tiles[0].source.url} (resolution "
                f"{(t.transform.a, t.transform.e)} vs {(res_x, res_y)}, offset {col:.3f}, {row:.3f} px); "
                "a VRT can place only tiles of one lattice. Use mosaic() to resample instead."
            )
        h, w = t.shape
        sources.append(
            f'    <ComplexSource><SourceFilename relativeToVRT="0">{escape(gdal_path(t.source.url))}'
            "</SourceFilename><SourceBand>1</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
            f'<DstRect xOff="{round(col)}" yOff="{round(row)}" xSize="{w}" ySize="{h}"/>'
            "<NODATA>0</NODATA></ComplexSource>"
        )
    colors = style.get("colors") or {}
    entries = "".join(
        '<Entry c1="{}" c2="{}" c3="{}" c4="{}"/>'.format(*colors.get(i, (0, 0, 0, 0))) for i in range(256)
    )
    table = (
        f"    <ColorInterp>Palette</ColorInterp>\n    <ColorTable>{entries}</ColorTable>\n" if colors else ""
    )
    labels = escape(json.dumps(style.get("labels") or {}, sort_keys=True))
    return (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">\n'
        f"  <SRS>{escape(tiles[0].crs.to_wkt())}</SRS>\n"
        f"  <GeoTransform>{', '.join(repr(float(v)) for v in origin.to_gdal())}</GeoTransform>\n"
        f'  <Metadata><MDI key="LCSTACK_LABELS">{labels}</MDI></Metadata>\n'
        '  <VRTRasterBand dataType="Byte" band="1">\n    <NoDataValue>0</NoDataValue>\n'
        f"{table}" + "\n".join(sources) + "\n  </VRTRasterBand>\n</VRTDataset>\n"
    )


def zone_vrts(storage: Storage, sources: Sequence[str | MosaicSource], folder: str) -> dict[str, str]:
    """Write one GDAL VRT per CRS (UTM zone) of the tile maps under ``folder``; return CRS -> VRT URL.

    The VRT of ``EPSG:32630`` tiles is ``<folder>/EPSG_32630.vrt``. Tiles must share their zone's pixel
    lattice (they are placed, not resampled); where they overlap the first in ``sources`` order wins.
    Sources are referenced by absolute GDAL paths (``/vsis3/...`` for S3), so a VRT on S3 needs the
    same GDAL S3 settings as the tiles to be read.
    """
    tiles, style = _read_tiles(storage, _sources(sources))
    out = {}
    for name, group in sorted(_group_by_crs(tiles).items()):
        url = Storage._join(folder, f"{name}.vrt")
        storage.write_bytes(url, _vrt_xml(group, style).encode())
        out[name.replace("_", ":", 1)] = url
        logger.info("Wrote VRT %s (%d tiles)", url, len(group))
    return out


def _target_geobox(tiles: Sequence[_Tile], crs: str, resolution: float | None) -> Any:
    from odc.geo.geobox import GeoBox
    from odc.geo.geom import box, unary_union

    footprint = unary_union([box(*t.bounds, crs=str(t.crs)).to_crs(crs) for t in tiles])
    if resolution is None:
        metres = min(abs(t.transform.a) for t in tiles)
        resolution = metres * DEGREES_PER_METRE if footprint.crs.geographic else metres
    if not resolution or resolution <= 0:
        raise InvalidInputError(f"mosaic: resolution must be > 0, got {resolution}.")
    return GeoBox.from_bbox(footprint.boundingbox, crs, resolution=resolution)


def _warp(path: str, storage: Storage, url: str, window: Mapping[str, Any]) -> np.ndarray:
    """Band 1 of ``path`` on the block grid ``window`` (crs, transform, width, height), nearest, exact.

    GDAL's warper reads only the source windows that the block needs; tolerance 0 uses the exact
    transformer, so each output pixel centre takes the source pixel it falls in.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.warp import reproject

    out = np.zeros((window["height"], window["width"]), dtype=np.uint8)
    with rasterio_env(storage, url), rasterio.open(path) as src, warnings.catch_warnings():
        # rasterio warns while it sets up the in-memory destination, before dst_transform applies.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        reproject(
            rasterio.band(src, 1),
            out,
            dst_crs=window["crs"],
            dst_transform=window["transform"],
            resampling=Resampling.nearest,
            src_nodata=0,
            dst_nodata=0,
            tolerance=0,
        )
    return out


def _owner_of_pixels(sub: Any, footprints: Mapping[str, Any]) -> np.ndarray:
    """Sentinel-2 tile owning each pixel centre of grid ``sub`` (``lcstack.s2grid``'s rule)."""
    from pyproj import Transformer

    from .s2grid import owner_of_points

    ny, nx = sub.shape.yx
    t = sub.affine
    xx, yy = np.meshgrid(t.c + (np.arange(nx) + 0.5) * t.a, t.f + (np.arange(ny) + 0.5) * t.e)
    lon, lat = Transformer.from_crs(sub.crs.to_wkt(), "EPSG:4326", always_xy=True).transform(xx, yy)
    return owner_of_points(np.asarray(lon), np.asarray(lat), footprints)


def _fill_block(
    block: np.ndarray,
    tiles: Sequence[_Tile],
    gbox: Any,
    storage: Storage,
    footprints: Mapping[str, Any] | None = None,
    block_info: Any = None,
) -> np.ndarray:
    """One output block: each pixel from its owning tile, else from the first tile with data."""
    from odc.geo.geom import box

    (y0, y1), (x0, x1) = block_info[0]["array-location"]
    sub = gbox[y0:y1, x0:x1]
    window = {"crs": sub.crs.to_wkt(), "transform": sub.affine, "width": x1 - x0, "height": y1 - y0}
    out = np.zeros(block.shape, dtype=np.uint8)
    taken = np.zeros(block.shape, dtype=bool)
    data = []
    owner = _owner_of_pixels(sub, footprints) if footprints else None
    for t in tiles:
        if not box(*t.bounds, crs=str(t.crs)).to_crs(sub.crs).intersects(sub.extent):
            continue
        values = _warp(gdal_path(t.source.url), storage, t.source.url, window)
        data.append(values)
        if owner is not None and t.source.tile is not None:
            owned = (owner == t.source.tile) & (values != 0) & ~taken
            out[owned], taken = values[owned], taken | owned
        if t.source.owner_mask is not None:
            owned = (
                _warp(gdal_path(t.source.owner_mask), storage, t.source.owner_mask, window) != 0
            ) & ~taken
            out[owned], taken = values[owned], taken | owned
    for values in data:  # priority order for pixels nobody owns
        free = ~taken & (values != 0)
        out[free], taken = values[free], taken | free
    return out


def mosaic(
    storage: Storage,
    sources: Sequence[str | MosaicSource],
    url: str,
    *,
    crs: str = "EPSG:4326",
    resolution: float | None = None,
    block: int = 1024,
    max_blocks_in_flight: int | None = None,
    footprints: Mapping[str, Any] | None = None,
) -> str:
    """Write one COG over all tile maps, in ``crs``; return its URL.

    Parameters
    ----------
    storage
        Where the tiles are read from (credentials) and the COG is written.
    sources
        Tile map COG URLs, or :class:`MosaicSource` with ownership masks, in priority order.
    url
        Where the COG goes (e.g. ``storage.url("classification-maps", "mosaic_level1.tif")``).
    crs
        Target CRS; ``EPSG:4326`` by default.
    resolution
        Target pixel size in units of ``crs``; by default the tiles' resolution (converted with
        :data:`DEGREES_PER_METRE` for a geographic CRS).
    block
        Side of an output block in pixels; memory is about ``max_blocks_in_flight`` blocks times the
        number of tiles that overlap one block.
    max_blocks_in_flight
        Blocks computed at once (see :func:`lcstack.cog.write_cog`).
    footprints
        Every Sentinel-2 tile of the run -> its grid; with the sources' ``tile``, each output pixel comes
        from the tile that owns its centre (see the module docstring).

    """
    import dask.array as dsa
    from odc.geo.xr import xr_zeros

    from .cog import write_cog

    tiles, style = _read_tiles(storage, _sources(sources))
    gbox = _target_geobox(tiles, crs, resolution)
    template = xr_zeros(gbox, dtype="uint8", chunks=(block, block))
    data = dsa.map_blocks(
        _fill_block,
        template.data,
        tiles=tiles,
        gbox=gbox,
        storage=storage,
        footprints=footprints,
        dtype=np.uint8,
    )
    da = template.copy(data=data)
    da = da.rename(dict(zip(da.dims, ("y", "x"), strict=True)))  # lon/lat grids name them latitude/longitude
    da.name = posixpath.splitext(posixpath.basename(url))[0]
    logger.info("Mosaic of %d tiles on %s, %s pixels", len(tiles), crs, gbox.shape)
    return write_cog(
        da,
        url,
        labels=style.get("labels") or None,
        colors=style.get("colors") or None,
        storage=storage,
        max_blocks_in_flight=max_blocks_in_flight,
    )


def mosaic_workflow(
    wf: Any, *, level: int = 1, crs: str = "EPSG:4326", resolution: float | None = None
) -> dict[str, Any]:
    """VRTs per zone and one mosaic COG of a :class:`~lcstack.pipeline.Workflow`'s complete maps.

    On the Sentinel-2 grid each pixel comes from the tile that owns it (``lcstack.s2grid``; the maps hold
    owned pixels only), else tiles are taken in tile-id order as the priority order. Outputs go next
    to the maps, in a folder named by the maps they join (``<h>``: a hash of their URLs):
    ``classification-maps/model_<key>/mosaic_<h>/vrt/level<N>/EPSG_<code>.vrt`` and
    ``classification-maps/model_<key>/mosaic_<h>/mosaic_level<N>_<crs>.tif``.

    Returns
    -------
    dict
        ``{"vrts": {crs: url}, "mosaic": url, "tiles": n}``.

    """
    from .stac_out import outputs_from_workflow

    if level not in (1, 2):
        raise InvalidInputError(f"--level {level}: use 1 (category) or 2 (subcategory).")
    key = f"level{level}"
    outputs = [o for o in outputs_from_workflow(wf) if key in o.maps]
    if not outputs:
        raise InvalidInputError(
            f"no complete {key} maps for this config (model {wf.model_key()}); run `lcstack run` first."
        )
    from .plan import digest

    # a folder per set of maps: the same model's mosaic of another area never overwrites this one
    area = digest(sorted(o.maps[key] for o in outputs), 8)
    base = wf.storage.url("classification-maps", f"model_{wf.model_key()}", f"mosaic_{area}")
    units = wf.units
    sources = [MosaicSource(o.maps[key], tile=getattr(units.get(o.tile), "tile", None)) for o in outputs]
    vrts = zone_vrts(wf.storage, sources, Storage._join(base, "vrt", key))
    name = f"mosaic_{key}_{crs.replace(':', '_')}.tif"
    footprints = wf.s2_footprints or None
    url = mosaic(
        wf.storage, sources, Storage._join(base, name), crs=crs, resolution=resolution, footprints=footprints
    )
    return {"vrts": vrts, "mosaic": url, "tiles": len(sources)}
