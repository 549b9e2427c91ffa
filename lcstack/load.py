"""Load Sentinel-2 scenes from STAC items onto one GeoBox as a lazy, dask-backed Dataset.

Catalogs name the same band differently (Earth Search ``red``, Planetary Computer
``B04``, CDSE ``B04_10m``) and declare scale/offset differently (see
:mod:`lcstack.harmonize`). This module normalises both once, at the boundary:

* each item is copied with its assets renamed to canonical band names and its
  raster metadata replaced by ``uint16`` (``uint8`` for ``scl``) with nodata 0,
  so the loader keeps the on-disk integers and applies no scale/offset itself;
* the harmonised per-item ``(scale, offset)`` travel as coordinates
  ``scale_<band>`` / ``offset_<band>`` on ``time``, applied by :func:`to_reflectance`.

Layout of :func:`load_scenes`: one variable per canonical band, dims
``(time, y, x)`` on exactly the requested GeoBox, one time step per item (sorted by
datetime, then id), coordinate ``id`` (item id) on ``time``.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pystac
import xarray as xr
from odc.geo.geobox import GeoBox

from lcstack.errors import AssetError, InvalidInputError, LcstackError, MissingDependencyError
from lcstack.harmonize import CANONICAL_BANDS, band_assets, reflectance_scale_offset

__all__ = [
    "AssetProblem",
    "DEFAULT_CHUNK",
    "asset_error",
    "check_assets",
    "clear_dataset_cache",
    "common_bands",
    "find_unreadable_asset",
    "load_scenes",
    "to_reflectance",
]

logger = logging.getLogger(__name__)

DEFAULT_CHUNK = 1024
_CLASS_BANDS = frozenset({"scl"})
_RESAMPLINGS = ("nearest", "bilinear", "average", "cubic", "mode", "min", "max", "med")
# asset fields that would make a loader guess dtype, nodata or scaling on its own
_RASTER_FIELDS = (
    "raster:bands",
    "bands",
    "raster:scale",
    "raster:offset",
    "raster:nodata",
    "nodata",
    "data_type",
)


@dataclass(frozen=True)
class AssetProblem:
    """Why the asset ``asset`` of item ``item`` cannot be read."""

    item: str
    asset: str
    href: str
    why: str


def _href(asset: pystac.Asset) -> str:
    if asset.extra_fields.get("lcstack:missing_href") or not asset.href:
        return ""
    return asset.get_absolute_href() or asset.href


def _local_path(href: str) -> str | None:
    if href.startswith("file://"):
        return href[len("file://") :]
    return None if "://" in href else href


def check_assets(
    items: Sequence[pystac.Item], assets_of: Any, fingerprints: Mapping[str, str] | None = None
) -> list[AssetProblem]:
    """Check, before any graph is built, the assets that will be read; return what is wrong.

    Cheap checks only: an href is present; a local file exists, is not empty and its header opens with
    rasterio (no pixel is read); a remote object the store or server answered "not found" for when it
    was fingerprinted (``fingerprints``: :func:`lcstack.discover.asset_fingerprints`, one HEAD/stat each,
    already made for the content keys) is missing. Other remote failures (a truncated object, a refused
    request) are reported by :func:`find_unreadable_asset` from inside the task.

    Parameters
    ----------
    items
        STAC items.
    assets_of
        ``assets_of(item)`` gives the asset keys of ``item`` that will be read.
    fingerprints
        ``{href: token}`` of the assets; a remote href whose token is ``missing:FileNotFoundError`` is
        reported as missing.

    Returns
    -------
    list of AssetProblem
        Empty when every asset passed.

    """
    import rasterio

    problems = []
    for item in items:
        for key in assets_of(item):
            asset = item.assets.get(key)
            href = _href(asset) if asset is not None else ""
            if asset is None or not href:
                problems.append(AssetProblem(item.id, key, "", "the asset has no href in the catalog"))
                continue
            path = _local_path(href)
            if path is None:
                if (fingerprints or {}).get(href) == "missing:FileNotFoundError":
                    why = "the object does not exist (the server answered not found)"
                    problems.append(AssetProblem(item.id, key, href, why))
                continue
            why = None
            if not os.path.isfile(path):
                why = "the file does not exist"
            elif os.path.getsize(path) == 0:
                why = "the file is empty"
            else:
                try:
                    with rasterio.open(path):
                        pass
                except Exception as exc:  # noqa: BLE001 - GDAL's many ways of refusing a file
                    why = f"rasterio cannot open it ({type(exc).__name__}: {exc})"
            if why:
                problems.append(AssetProblem(item.id, key, href, why))
    return problems


def asset_error(problem: AssetProblem, *, season: str | None = None, more: int = 0) -> AssetError:
    """Return the :class:`~lcstack.errors.AssetError` for ``problem``, saying what to do."""
    where = f" (season {season!r})" if season else ""
    also = f" ({more} more asset(s) have problems too)" if more else ""
    href = f" {problem.href}" if problem.href else ""
    return AssetError(
        f"item {problem.item!r}{where}, asset {problem.asset!r}{href}: {problem.why}{also}. Fix or "
        "re-download the file (or the catalog entry), or set `on_error: skip-scene` in the config to leave "
        "such scenes out of their season.",
        item=problem.item,
        asset=problem.asset,
        href=problem.href,
        why=problem.why,
    )


def find_unreadable_asset(
    items: Sequence[pystac.Item], assets_of: Any, geobox: GeoBox
) -> AssetProblem | None:
    """After a read failed: the first asset whose pixels over ``geobox`` cannot be read, or None.

    Each asset is opened and the window covering ``geobox`` is read at full resolution, so a truncated
    or corrupt tile shows up; only called on the error path.
    """
    import rasterio
    from rasterio.warp import transform_bounds
    from rasterio.windows import from_bounds

    for item in items:
        for key in assets_of(item):
            asset = item.assets.get(key)
            href = _href(asset) if asset is not None else ""
            if not href:
                return AssetProblem(item.id, key, "", "the asset has no href in the catalog")
            try:
                with rasterio.open(href) as src:
                    bounds = transform_bounds(geobox.crs.to_wkt(), src.crs, *geobox.boundingbox)
                    window = from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths()
                    window = window.intersection(rasterio.windows.Window(0, 0, src.width, src.height))
                    src.read(1, window=window)
            except Exception as exc:  # noqa: BLE001 - GDAL's many ways of failing a read
                return AssetProblem(
                    item.id, key, href, f"reading its pixels failed ({type(exc).__name__}: {exc})"
                )
    return None


def _dtype(band: str) -> str:
    return "uint8" if band in _CLASS_BANDS else "uint16"


def common_bands(items: Sequence[pystac.Item]) -> tuple[str, ...]:
    """Return the canonical bands every item has, in canonical order.

    Parameters
    ----------
    items : sequence of pystac.Item
        Sentinel-2 items of any supported catalog.

    Returns
    -------
    tuple of str
        Canonical band names (``scl`` included when every item has it).

    """
    present = [set(band_assets(item)) for item in items]
    if not present:
        return ()
    shared = set.intersection(*present)
    return tuple(b for b in CANONICAL_BANDS if b in shared)


def _resolve_bands(
    items: Sequence[pystac.Item], bands: Sequence[str] | None
) -> tuple[tuple[str, ...], list[dict[str, str]]]:
    mappings = [band_assets(item) for item in items]
    if bands is None:
        shared = set.intersection(*(set(m) for m in mappings))
        chosen = tuple(b for b in CANONICAL_BANDS if b in shared)
        if not chosen:
            raise InvalidInputError(
                f"items {[i.id for i in items]} share no Sentinel-2 band; check that they come from "
                "Sentinel-2 collections or pass bands= explicitly"
            )
        return chosen, mappings
    if isinstance(bands, str):
        bands = (bands,)
    unknown = [b for b in bands if b not in CANONICAL_BANDS]
    if unknown:
        raise InvalidInputError(
            f"unknown band name(s) {unknown} in bands=; use canonical names: {', '.join(CANONICAL_BANDS)}"
        )
    missing = {item.id: [b for b in bands if b not in m] for item, m in zip(items, mappings, strict=True)}
    missing = {k: v for k, v in missing.items() if v}
    if missing:
        detail = "; ".join(f"item {k!r} lacks {v}" for k, v in missing.items())
        raise InvalidInputError(
            f"requested bands are missing from some items: {detail}. Drop those bands from bands= "
            "or those items from the scene list"
        )
    return tuple(dict.fromkeys(bands)), mappings


def _canonical_copy(item: pystac.Item, mapping: Mapping[str, str], bands: Sequence[str]) -> pystac.Item:
    """Copy of ``item`` holding only ``bands``, keyed by canonical name, with integer metadata."""
    copy = item.clone()
    copy.assets = {}
    for band in bands:
        src = item.assets[mapping[band]]
        asset = src.clone()
        asset.href = src.get_absolute_href() or src.href
        for field in _RASTER_FIELDS:
            asset.extra_fields.pop(field, None)
        asset.extra_fields["raster:bands"] = [{"data_type": _dtype(band), "nodata": 0}]
        copy.add_asset(band, asset)
    props = copy.properties
    # stackstac reads only proj:epsg; STAC projection v2 items carry proj:code instead
    code = props.get("proj:code")
    if props.get("proj:epsg") is None and isinstance(code, str) and code.upper().startswith("EPSG:"):
        props["proj:epsg"] = int(code.split(":", 1)[1])
    for asset in copy.assets.values():
        acode = asset.extra_fields.get("proj:code")
        if (
            asset.extra_fields.get("proj:epsg") is None
            and isinstance(acode, str)
            and acode.upper().startswith("EPSG:")
        ):
            asset.extra_fields["proj:epsg"] = int(acode.split(":", 1)[1])
    return copy


def _normalise_chunks(chunks: Mapping[str, int] | None) -> dict[str, int]:
    out = {"time": 1, "y": DEFAULT_CHUNK, "x": DEFAULT_CHUNK}
    if chunks:
        unknown = set(chunks) - set(out)
        if unknown:
            raise InvalidInputError(f"chunks= keys must be among time, y, x; got {sorted(unknown)}")
        out.update({k: int(v) for k, v in chunks.items()})
    return out


def load_scenes(
    items: Sequence[pystac.Item],
    geobox: GeoBox,
    *,
    bands: Sequence[str] | None = None,
    chunks: Mapping[str, int] | None = None,
    loader: Literal["odc", "stackstac"] = "odc",
    resampling: str = "nearest",
    eager: bool = False,
    native: bool = False,
) -> xr.Dataset:
    """Load scenes lazily onto ``geobox``, keeping the on-disk integers.

    Parameters
    ----------
    items : sequence of pystac.Item
        Sentinel-2 L2A (or L1C) items from Earth Search, Planetary Computer or CDSE.
    geobox : odc.geo.geobox.GeoBox
        Output grid; the result has exactly this shape, CRS and transform.
    bands : sequence of str, optional
        Canonical band names. Default: the bands every item has.
    chunks : mapping, optional
        Dask chunks for ``time``, ``y``, ``x``; default ``{"time": 1, "y": 1024, "x": 1024}``.
    loader : {"odc", "stackstac"}
        ``"odc"`` uses :func:`odc.stac.load`; ``"stackstac"`` needs the optional stackstac package.
    resampling : str
        Resampling of reflectance bands when their native grid differs from ``geobox``
        (``"nearest"``, ``"bilinear"``, ``"average"``, ...). ``scl`` is always nearest.
    eager : bool, default False
        Read into NumPy arrays now, in this thread, instead of building a dask graph (``chunks`` is then
        ignored). For one chunk inside a dask task, as ``seasonal_composite(fuse_chunks=True)`` does.
    native : bool, default False
        With ``eager`` and ``loader="odc"``: when every asset lies on ``geobox``'s lattice (same CRS and
        axes, a pixel size an integer multiple of ``geobox``'s, pixel edges on ``geobox``'s edges, the
        declared integer type, nodata 0 or none) read it with a plain windowed rasterio read, coarser
        assets repeated onto the grid (what nearest resampling gives there), datasets kept open per thread
        (:func:`clear_dataset_cache`); the same values as odc-stac's. Otherwise odc-stac reads as usual.

    Returns
    -------
    xarray.Dataset
        dask-backed (NumPy-backed with ``eager``); one variable per band (``uint16``, ``uint8`` for
        ``scl``, nodata 0) with dims ``(time, y, x)``; coordinates ``id`` (item id), ``scale_<band>``
        and ``offset_<band>`` (float32, on ``time``) for every reflectance band.

    Raises
    ------
    lcstack.errors.InvalidInputError
        No items, unknown or missing bands, bad options.
    lcstack.errors.MissingDependencyError
        ``loader="stackstac"`` without stackstac installed.

    """
    items = sorted(items, key=lambda it: (it.datetime or it.common_metadata.start_datetime, it.id))
    if not items:
        raise InvalidInputError("load_scenes() got no items; discover scenes first")
    if resampling not in _RESAMPLINGS:
        raise InvalidInputError(f"resampling={resampling!r} is not one of {_RESAMPLINGS}")
    if loader not in ("odc", "stackstac"):
        raise InvalidInputError(f"loader={loader!r}; use 'odc' or 'stackstac'")
    bands, mappings = _resolve_bands(items, bands)
    ch = _normalise_chunks(chunks)

    ds = None
    if native and eager and loader == "odc":
        ds = _load_native(items, mappings, geobox, bands, resampling)
    if ds is None:
        copies = [_canonical_copy(it, m, bands) for it, m in zip(items, mappings, strict=True)]
        if loader == "odc":
            ds = _load_odc(copies, geobox, bands, None if eager else ch, resampling)
        else:
            ds = _load_stackstac(copies, geobox, bands, ch, resampling)
            if eager:
                ds = ds.compute(scheduler="sync")

    coords: dict[str, Any] = {"id": ("time", [it.id for it in items])}
    for band in bands:
        if band in _CLASS_BANDS:
            continue
        pairs = [reflectance_scale_offset(it, m[band]) for it, m in zip(items, mappings, strict=True)]
        coords[f"scale_{band}"] = ("time", np.array([p[0] for p in pairs], dtype=np.float32))
        coords[f"offset_{band}"] = ("time", np.array([p[1] for p in pairs], dtype=np.float32))
    ds = ds.assign_coords(coords)
    for band in bands:
        ds[band].attrs.update(nodata=0)
    logger.debug("loaded %d items, bands %s, onto %s", len(items), bands, geobox)
    return ds


def _load_odc(
    items: list[pystac.Item],
    geobox: GeoBox,
    bands: Sequence[str],
    chunks: dict[str, int] | None,
    resampling: str,
) -> xr.Dataset:
    import odc.stac

    stac_cfg = {"*": {"assets": {b: {"data_type": _dtype(b), "nodata": 0} for b in bands}}}
    ds = odc.stac.load(
        items,
        bands=list(bands),
        geobox=geobox,
        chunks=None if chunks is None else dict(chunks),
        groupby="id",  # one time step per item; per-item scale/offset need it
        resampling={"scl": "nearest", "*": resampling},
        stac_cfg=stac_cfg,
        fail_on_error=True,
    )
    ds = ds[list(bands)]
    for band in bands:
        if ds[band].dtype != np.dtype(_dtype(band)):
            ds[band] = ds[band].astype(_dtype(band))
    return ds


# -- native-aligned reads: a windowed rasterio read per asset, no warping ------------------------------------

#: open datasets kept per thread (a season's every asset, a few times over), fewer under a low file limit
_CACHE_SIZE = 256
#: GDAL's block cache per process once native reads keep datasets open (unless GDAL_CACHEMAX is set):
#: their decoded blocks stay cached, so GDAL's default (5 % of the machine's memory per process) would
#: add up over the workers of a machine
GDAL_CACHE_BYTES = 256 * 2**20
_limits: dict[int, int] = {}  # pid -> datasets per thread
_caches_lock = threading.Lock()
_local = threading.local()


class _Cache(OrderedDict):  # type: ignore[type-arg]
    """One thread's open datasets, oldest first (a class of its own: weakly referenced)."""


#: every live thread's cache, for clear_dataset_cache (a cache goes with its thread)
_caches: weakref.WeakValueDictionary[int, _Cache] = weakref.WeakValueDictionary()


class NotNativeError(Exception):
    """An asset is not on the requested grid's lattice (or not plain integers with nodata 0)."""


def clear_dataset_cache() -> None:
    """Close the datasets that native reads keep open (every thread's)."""
    with _caches_lock:
        for cache in list(_caches.values()):
            while cache:
                _, src = cache.popitem(last=False)
                src.close()


def _cache_limit() -> int:
    """Datasets kept open per thread; bounds GDAL's block cache, once per process (see GDAL_CACHE_BYTES)."""
    pid = os.getpid()
    if pid not in _limits:
        import resource

        from rasterio.env import set_gdal_config

        if "GDAL_CACHEMAX" not in os.environ:
            set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_BYTES)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        _limits[pid] = _CACHE_SIZE if soft == resource.RLIM_INFINITY else max(8, min(_CACHE_SIZE, soft // 16))
    return _limits[pid]


def _thread_cache() -> _Cache:
    cache = getattr(_local, "cache", None)
    if cache is None or getattr(_local, "pid", None) != os.getpid():  # a forked child opens its own
        cache = _local.cache = _Cache()
        _local.pid = os.getpid()
        with _caches_lock:
            _caches[id(cache)] = cache
    return cache


def _open_dataset(href: str) -> Any:
    """``rasterio.open(href)``, kept open in this thread (a local file: while its size and mtime hold)."""
    import rasterio

    path = _local_path(href)
    key: tuple[Any, ...] = (href,)
    if path is not None:
        st = os.stat(path)
        key = (href, st.st_size, st.st_mtime_ns)
    cache = _thread_cache()
    with _caches_lock:
        src = cache.get(key)
        if src is not None:
            cache.move_to_end(key)
            return src
    src = rasterio.open(href)
    with _caches_lock:
        cache[key] = src
        while len(cache) > _cache_limit():
            _, old = cache.popitem(last=False)
            old.close()
    return src


def _drop_dataset(href: str) -> None:
    cache = _thread_cache()
    with _caches_lock:
        for key in [k for k in cache if k[0] == href]:
            cache.pop(key).close()


_SAME_CRS: dict[tuple[str, str], bool] = {}


def _same_crs(src: Any, geobox: GeoBox) -> bool:
    """``geobox.crs == src.crs``, remembered by their WKT (a pyproj comparison per read adds up)."""
    key = (src.crs.to_wkt(), geobox.crs.wkt)
    same = _SAME_CRS.get(key)
    if same is None:
        same = _SAME_CRS[key] = bool(geobox.crs == src.crs)
    return same


def _native_offsets(src: Any, geobox: GeoBox, dtype: str, resampling: str) -> tuple[int, int, int]:
    """Return ``(factor, row0, col0)`` placing ``geobox`` on ``src``'s lattice, or raise NotNativeError.

    ``src``'s pixel is ``factor`` times ``geobox``'s, and ``geobox``'s origin is pixel ``(row0, col0)``
    of ``src``'s lattice refined ``factor`` times.
    """
    a, g = src.transform, geobox.affine
    if src.crs is None or a.b or a.d or g.b or g.d or not _same_crs(src, geobox):
        raise NotNativeError(f"{src.name}: another CRS or rotated axes")
    kx, ky = a.a / g.a, a.e / g.e
    k = round(kx)
    if k < 1 or abs(kx - k) > 1e-9 * k or abs(ky - k) > 1e-9 * k:
        raise NotNativeError(f"{src.name}: pixel size {a.a, a.e} is not a multiple of {g.a, g.e}")
    if k > 1 and resampling != "nearest":
        raise NotNativeError(f"{src.name}: {resampling} resampling")
    col, row = (g.c - a.c) / g.a, (g.f - a.f) / g.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        raise NotNativeError(f"{src.name}: pixel edges off the grid's")
    if src.dtypes[0] != dtype or src.nodata not in (None, 0):
        raise NotNativeError(f"{src.name}: {src.dtypes[0]}, nodata {src.nodata}")
    return k, round(row), round(col)


def _read_native(href: str, geobox: GeoBox, dtype: str, resampling: str, out: np.ndarray) -> None:
    """Read the asset at ``href`` onto ``geobox`` into ``out`` (``geobox.shape``), 0 outside the asset."""
    from rasterio.windows import Window

    src = _open_dataset(href)
    k, row0, col0 = _native_offsets(src, geobox, dtype, resampling)
    ny, nx = geobox.shape.yx
    r0, r1 = row0 // k, (row0 + ny - 1) // k + 1  # the asset's rows and columns under the grid
    c0, c1 = col0 // k, (col0 + nx - 1) // k + 1
    rr0, rr1, cc0, cc1 = max(r0, 0), min(r1, src.height), max(c0, 0), min(c1, src.width)
    try:
        if rr0 >= rr1 or cc0 >= cc1:
            coarse = np.zeros((r1 - r0, c1 - c0), dtype)
        else:
            part = src.read(1, window=Window(cc0, rr0, cc1 - cc0, rr1 - rr0))
            if (rr0, rr1, cc0, cc1) == (r0, r1, c0, c1):
                coarse = part
            else:
                coarse = np.zeros((r1 - r0, c1 - c0), dtype)
                coarse[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = part
    except Exception:
        _drop_dataset(href)  # opened afresh by whoever looks into the failure
        raise
    if k == 1:
        out[...] = coarse
        return
    full = np.repeat(np.repeat(coarse, k, axis=0), k, axis=1)
    dy, dx = row0 - r0 * k, col0 - c0 * k
    out[...] = full[dy : dy + ny, dx : dx + nx]


def _read_native_bands(
    hrefs: Mapping[str, Sequence[str]], geobox: GeoBox, resampling: str
) -> dict[str, np.ndarray]:
    """Read every band's assets (``hrefs``: band -> one href per time step) onto ``geobox``.

    Returns band -> ``(time, y, x)``; raises NotNativeError when an asset is not on ``geobox``'s lattice
    (see ``load_scenes(native=)``).
    """
    out = {}
    for band, paths in hrefs.items():
        dtype = _dtype(band)
        arr = np.empty((len(paths), *geobox.shape.yx), dtype=dtype)
        for i, href in enumerate(paths):
            _read_native(href, geobox, dtype, resampling, arr[i])
        out[band] = arr
    return out


def _load_native(
    items: list[pystac.Item],
    mappings: list[dict[str, str]],
    geobox: GeoBox,
    bands: Sequence[str],
    resampling: str,
) -> xr.Dataset | None:
    """Return what ``_load_odc(..., chunks=None)`` does, through native reads; None if they do not apply."""
    from odc.geo.xr import xr_coords
    from odc.loader import RioDriver

    hrefs = {b: [_href(it.assets[m[b]]) for it, m in zip(items, mappings, strict=True)] for b in bands}
    driver = RioDriver()  # the GDAL settings and session odc-stac would read with (odc.stac.configure_rio)
    try:
        with driver.restore_env(driver.capture_env(), driver.new_load(geobox)):
            arrays = _read_native_bands(hrefs, geobox, resampling)
    except NotNativeError as why:
        logger.debug("not a native read (%s): odc-stac reads instead", why)
        return None
    times = np.array([np.datetime64(_utc_naive(it), "us") for it in items])
    coords = {"time": times, **xr_coords(geobox, dims=("y", "x"))}
    return xr.Dataset({b: (("time", "y", "x"), a) for b, a in arrays.items()}, coords=coords)


def _utc_naive(item: pystac.Item) -> Any:
    import datetime as dt

    when = item.datetime or item.common_metadata.start_datetime
    if when is not None and when.tzinfo is not None:
        when = when.astimezone(dt.UTC).replace(tzinfo=None)
    return when


def _load_stackstac(
    items: list[pystac.Item], geobox: GeoBox, bands: Sequence[str], chunks: dict[str, int], resampling: str
) -> xr.Dataset:
    try:
        import stackstac
    except ImportError as err:
        raise MissingDependencyError("stackstac", "stackstac", "loader='stackstac'") from err
    from odc.geo.xr import xr_coords
    from rasterio.enums import Resampling

    epsg = geobox.crs.epsg if geobox.crs is not None else None
    if epsg is None:
        raise InvalidInputError(f"loader='stackstac' needs a GeoBox with an EPSG CRS, got {geobox.crs}")
    res = geobox.resolution
    bbox = geobox.boundingbox
    common: dict[str, Any] = dict(
        epsg=epsg,
        resolution=(abs(res.x), abs(res.y)),
        bounds=(bbox.left, bbox.bottom, bbox.right, bbox.top),
        snap_bounds=False,
        chunksize=(chunks["time"], 1, chunks["y"], chunks["x"]),
        dtype=np.dtype("uint16"),
        fill_value=np.uint16(0),
        rescale=False,  # scale/offset come from lcstack.harmonize, not the declared metadata
        sortby_date=False,
        xy_coords="center",
        properties=False,
        band_coords=False,
    )
    groups = [
        ([b for b in bands if b not in _CLASS_BANDS], getattr(Resampling, resampling)),
        ([b for b in bands if b in _CLASS_BANDS], Resampling.nearest),
    ]
    parts = []
    for group, method in groups:
        if not group:
            continue
        try:
            stacked = stackstac.stack(items, assets=group, resampling=method, **common)
        except TypeError as err:
            if "infer_datetime_format" not in str(err):
                raise
            import pandas as pd

            raise LcstackError(
                f"stackstac {getattr(stackstac, '__version__', '?')} does not work with pandas "
                f"{pd.__version__} "
                "(it passes the removed infer_datetime_format argument). Install 'lcstack[stackstac]', which "
                "pins pandas<3, or use loader='odc'"
            ) from err
        if stacked.shape[-2:] != geobox.shape.yx:
            raise InvalidInputError(
                f"stackstac produced a {stacked.shape[-2:]} grid for a {geobox.shape.yx} GeoBox; "
                "use loader='odc'"
            )
        parts.append(stacked.to_dataset("band"))
    ds = xr.merge(parts, compat="override", join="override")
    keep = [c for c in ds.coords if c not in ("time", "x", "y")]
    ds = ds.drop_vars(keep).assign_coords(xr_coords(geobox, dims=("y", "x")))
    for band in bands:
        ds[band] = ds[band].astype(_dtype(band))
    return ds[list(bands)]


def to_reflectance(ds: xr.Dataset) -> xr.Dataset:
    """Turn loaded integers into float32 reflectance, lazily.

    ``reflectance = DN * scale_<band> + offset_<band>`` for every band that has
    ``scale_<band>``/``offset_<band>`` coordinates (see :func:`load_scenes`); DN 0
    (nodata) becomes NaN. Other variables (``scl``) are passed through untouched.
    The scale/offset coordinates are dropped so they cannot be applied twice.

    Parameters
    ----------
    ds : xarray.Dataset
        Output of :func:`load_scenes`.

    Returns
    -------
    xarray.Dataset
        Same variables and dims; reflectance bands are float32.

    """
    out = {}
    used = []
    for name, da in ds.data_vars.items():
        scale_name, offset_name = f"scale_{name}", f"offset_{name}"
        if scale_name not in ds.coords:
            out[name] = da
            continue
        scale = ds[scale_name].astype(np.float32)
        offset = ds[offset_name].astype(np.float32) if offset_name in ds.coords else np.float32(0)
        refl = (da.astype(np.float32) * scale + offset).where(da != 0)
        refl.attrs = {k: v for k, v in da.attrs.items() if k != "nodata"}
        refl.attrs["units"] = "1"
        out[name] = refl.astype(np.float32)
        used += [scale_name, offset_name]
    result = xr.Dataset(out, attrs=dict(ds.attrs))
    return result.drop_vars([c for c in used if c in result.coords])
