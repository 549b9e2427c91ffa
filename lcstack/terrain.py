"""Terrain features (elevation, slope, aspect) from a DEM on the tile GeoBox.

Slope and aspect use Horn's (1981) 3x3 finite differences, evaluated chunk-wise
with ``dask.array.map_overlap`` (overlap 1 pixel, edges replicated: ``boundary="nearest"``),
so a dask-backed DEM gives exactly what the NumPy reference gives on the whole array.

Conventions: slope in degrees from horizontal; aspect in degrees clockwise from
north of the direction the slope faces (downhill), in ``[0, 360)``, -1 on flat
ground (zero gradient), where no direction exists.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as dsa
import numpy as np
import pystac
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.warp import rio_reproject
from odc.geo.xr import wrap_xr

from lcstack._kernels import horn_slope_aspect
from lcstack.errors import InvalidInputError

__all__ = ["TERRAIN_BANDS", "terrain_features", "load_terrain"]

logger = logging.getLogger(__name__)

TERRAIN_BANDS: tuple[str, ...] = ("elevation", "slope", "aspect")

# rasterio silences a NotGeoreferencedWarning of its in-memory datasets with ``warnings.catch_warnings``,
# which is not thread-safe: concurrent reprojections on dask threads let the warning through. A DEM is
# small, so each tile's DEM is reprojected in one call, one call at a time per process.
_WARP_LOCK = threading.Lock()


def _horn_block(block: np.ndarray, dx: float, dy: float, which: int) -> np.ndarray:
    """``block`` already carries a 1-pixel halo; return the same shape (halo is trimmed by dask)."""
    result = horn_slope_aspect(block, dx, dy)[which]
    return np.pad(result, 1, mode="constant", constant_values=np.nan)


def _pixel_size(dem: xr.DataArray) -> tuple[float, float]:
    gbox = dem.odc.geobox
    if gbox is None:
        raise InvalidInputError(
            "terrain_features() needs a georeferenced DEM (a spatial_ref coordinate and x/y coords); "
            "load it with load_terrain() or odc.stac.load(..., geobox=...)"
        )
    if gbox.crs is not None and gbox.crs.geographic:
        raise InvalidInputError(
            f"DEM is on a geographic grid ({gbox.crs}); slope needs metres: reproject it onto the tile "
            "GeoBox first (load_terrain does)"
        )
    return abs(float(gbox.resolution.x)), abs(float(gbox.resolution.y))


def terrain_features(dem: xr.DataArray) -> xr.Dataset:
    """Elevation, slope and aspect of a DEM.

    Parameters
    ----------
    dem : xarray.DataArray
        Elevation in metres, dims ``(y, x)`` (extra length-1 dims are squeezed), on a projected
        grid with metre units; NumPy or dask. NaN = nodata (propagates to its neighbours' slope).

    Returns
    -------
    xarray.Dataset
        ``terrain``: float32, dims ``(band, y, x)``, band = ``elevation slope aspect``; same
        coords (incl. ``spatial_ref``) and chunks as ``dem``. Lazy when ``dem`` is.

    """
    _pixel_size(dem)  # georeferenced and projected, before anything else
    extra = [d for d in dem.dims if d not in ("y", "x")]
    if any(dem.sizes[d] != 1 for d in extra) or set(dem.dims) - set(extra) != {"y", "x"}:
        raise InvalidInputError(f"DEM must be 2-D (y, x), got dims {dict(dem.sizes)}")
    dem = dem.squeeze(extra, drop=True).transpose("y", "x").astype(np.float32)
    dx, dy = _pixel_size(dem)
    data = dem.data
    if isinstance(data, dsa.Array):
        if min(min(c) for c in data.chunks) < 2:
            data = data.rechunk({0: max(2, min(data.shape[0], 256)), 1: max(2, min(data.shape[1], 256))})
        slope, aspect = (
            data.map_overlap(
                _horn_block, depth=1, boundary="nearest", dtype=np.float32, dx=dx, dy=dy, which=which
            )
            for which in (0, 1)
        )
        stacked = dsa.stack([data, slope, aspect])
    else:
        padded = np.pad(np.asarray(data), 1, mode="edge")
        slope, aspect = horn_slope_aspect(padded, dx, dy)
        stacked = np.stack([np.asarray(data), slope, aspect])
    terrain = xr.DataArray(
        stacked,
        dims=("band", "y", "x"),
        coords={**{k: v for k, v in dem.coords.items()}, "band": np.array(TERRAIN_BANDS, dtype=str)},
        attrs={
            "units": "elevation: m; slope: degrees; aspect: degrees clockwise from north (downhill)",
            "aspect_flat": -1.0,
            "method": "Horn 3x3, edges replicated",
        },
    )
    return xr.Dataset({"terrain": terrain.astype(np.float32)})


def _native_grid(item: pystac.Item, asset: str, geobox: GeoBox, margin: int = 3) -> GeoBox:
    """Return the DEM's own pixel lattice cut to cover ``geobox`` plus ``margin`` pixels."""
    import odc.stac

    src = getattr(odc.stac.parse_item(item)[asset], "geobox", None)
    if not isinstance(src, GeoBox) or src.crs is None:
        raise InvalidInputError(f"DEM item {item.id!r} asset {asset!r} has no projection metadata (proj:*)")
    bbox = geobox.extent.to_crs(src.crs).boundingbox
    inv = ~src.affine
    cols, rows = zip(*(inv @ xy for xy in bbox.points), strict=True)
    col0, row0 = math.floor(min(cols)) - margin, math.floor(min(rows)) - margin
    col1, row1 = math.ceil(max(cols)) + margin, math.ceil(max(rows)) + margin
    affine = src.affine @ Affine.translation(col0, row0)
    return GeoBox((row1 - row0, col1 - col0), affine, src.crs)


def _warp_block(block: np.ndarray, src_gbox: GeoBox, dst_gbox: GeoBox) -> np.ndarray:
    """Reproject a whole DEM mosaic onto ``dst_gbox`` (bilinear, NaN = nodata) in one rasterio call."""
    dst = np.full(dst_gbox.shape.yx, np.nan, dtype=np.float32)
    with _WARP_LOCK:
        return rio_reproject(
            np.asarray(block, dtype=np.float32), dst, src_gbox, dst_gbox, "bilinear", np.nan, np.nan
        )


def _reproject_dem(native: xr.DataArray, src_gbox: GeoBox, geobox: GeoBox, ch: Mapping[str, int]) -> Any:
    """Return the DEM on ``geobox``: one task per tile for a dask mosaic (chunked as ``ch``), else NumPy."""
    if not isinstance(native.data, dsa.Array):
        return _warp_block(np.asarray(native.data), src_gbox, geobox)
    warped = dsa.map_blocks(
        _warp_block,
        native.data.rechunk(-1),
        src_gbox=src_gbox,
        dst_gbox=geobox,
        chunks=tuple((n,) for n in geobox.shape.yx),
        dtype=np.float32,
        meta=np.empty((0, 0), np.float32),
    )
    return warped.rechunk((ch["y"], ch["x"]))


def load_terrain(
    dem_items: Sequence[pystac.Item],
    geobox: GeoBox,
    *,
    chunks: Mapping[str, int] | None = None,
    asset: str = "data",
) -> xr.Dataset:
    """Load DEM items (e.g. ``cop-dem-glo-30``) onto ``geobox`` and derive terrain features.

    The items are first mosaicked on the pixel lattice of the first item (EPSG:4326 for the
    Copernicus DEM; first valid value wins where they overlap), then the mosaic is reprojected
    once onto ``geobox`` with bilinear resampling, so tile seams leave no trace.

    Parameters
    ----------
    dem_items : sequence of pystac.Item
        DEM items covering the tile.
    geobox : odc.geo.geobox.GeoBox
        Tile grid (projected, metres).
    chunks : mapping, optional
        ``y``/``x`` chunk sizes, default 1024.
    asset : str
        Asset key holding the elevation (float32).

    Returns
    -------
    xarray.Dataset
        See :func:`terrain_features`; lazy.

    """
    import odc.stac

    items = list(dem_items)
    if not items:
        raise InvalidInputError("load_terrain() got no DEM items; discover_dem() found none for this area")
    lacking = [it.id for it in items if asset not in it.assets]
    if lacking:
        raise InvalidInputError(f"DEM items {lacking} have no asset {asset!r}; pass asset=")
    ch: dict[str, Any] = {
        "y": 1024,
        "x": 1024,
        **{k: int(v) for k, v in (chunks or {}).items() if k in ("y", "x")},
    }
    # Mosaic first on the DEM's own pixel lattice (exact copy, nearest), then resample once onto the
    # tile: resampling every DEM tile separately would leave biased values along the tile seams.
    native = _native_grid(items[0], asset, geobox)
    ds = odc.stac.load(
        items,
        bands=[asset],
        geobox=native,
        chunks=ch,
        resampling="nearest",
        dtype="float32",
        groupby=lambda item, parsed, idx: 0,  # all items in one mosaic layer
        stac_cfg={"*": {"assets": {asset: {"data_type": "float32", "nodata": float("nan")}}}},
    )
    data = _reproject_dem(ds[asset].isel(time=0, drop=True), native, geobox, ch)
    dem = wrap_xr(data, geobox)
    dem.attrs = {"units": "m"}
    return terrain_features(dem)
