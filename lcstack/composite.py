"""Cloud masking and per-pixel median compositing of Sentinel-2 scenes.

Everything here builds dask graphs and computes nothing: the seasonal composite is
evaluated chunk by chunk when it is written, never a whole scene in memory. With
``fuse_chunks=True`` (what the workflow uses) each spatial chunk is one task that reads
and composites every band of its window; otherwise the graph has a task per band and step.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import dask.array as dsa
import numpy as np
import pystac
import xarray as xr
from dask.base import tokenize
from odc.geo.geobox import GeoBox
from scipy import ndimage

from lcstack._kernels import masked_median_dn, nanmedian_time
from lcstack._version import __version__
from lcstack.errors import InvalidInputError, LcstackError, NoCloudMaskWarning, NoScenesFoundError
from lcstack.features import add_context, feature_spec
from lcstack.features import float_bands as _float_bands
from lcstack.features import time_features as _time_features
from lcstack.harmonize import SCL_CLOUD_CLASSES, band_assets
from lcstack.indices import DEFAULT_INDICES, INDICES, _resolve_names, compute_indices, index_arrays
from lcstack.load import (
    DEFAULT_CHUNK,
    asset_error,
    common_bands,
    find_unreadable_asset,
    load_scenes,
    to_reflectance,
)

__all__ = [
    "DEFAULT_MASK_CLASSES",
    "cloud_mask",
    "composite_season",
    "median_composite",
    "no_clear_pixel_error",
    "seasonal_composite",
]

logger = logging.getLogger(__name__)

#: SCL classes masked by default (:data:`lcstack.harmonize.SCL_CLOUD_CLASSES`).
DEFAULT_MASK_CLASSES = SCL_CLOUD_CLASSES


def _disk(radius: float) -> np.ndarray:
    r = int(math.floor(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy**2 + xx**2) <= radius**2


def _dilate_block(block: np.ndarray, structure: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation(block, structure=structure)


def cloud_mask(
    scl: xr.DataArray,
    *,
    classes: Sequence[int] = DEFAULT_MASK_CLASSES,
    dilation_m: float = 0.0,
    resolution: float | None = None,
) -> xr.DataArray:
    """Boolean mask of invalid pixels from the scene classification layer.

    Parameters
    ----------
    scl : xarray.DataArray
        SCL class codes, dims ending in ``("y", "x")`` (usually ``(time, y, x)``), NumPy or dask.
    classes : sequence of int
        SCL classes to mask. SCL 0 (nodata) is always masked.
    dilation_m : float
        Grow the masked area by a disk of this radius in metres (``dilation_m / resolution`` pixels),
        per time step, chunk-wise with ``dask.array.map_overlap`` (overlap = the radius).
    resolution : float, optional
        Pixel size in metres; default from ``scl``'s GeoBox, else 10.

    Returns
    -------
    xarray.DataArray
        bool, True = invalid; same dims, coords and chunks as ``scl``. Lazy when ``scl`` is.

    """
    if dilation_m < 0:
        raise InvalidInputError(f"dilation_m must be >= 0, got {dilation_m}")
    codes = [int(c) for c in classes]
    if isinstance(scl.data, np.ndarray) and scl.dtype == np.uint8:
        lut = np.zeros(256, dtype=bool)  # a lookup: what isin gives, faster
        lut[[0, *[c for c in codes if 0 <= c < 256]]] = True
        invalid = scl.copy(data=lut[scl.data])
    else:
        invalid = scl.isin(codes) | (scl == 0)
    invalid.name = "invalid"
    invalid.attrs = {"long_name": "invalid observation", "mask_classes": codes}
    if dilation_m == 0:
        return invalid
    if resolution is None:
        gbox = getattr(scl.odc, "geobox", None)
        resolution = abs(gbox.resolution.x) if gbox is not None else 10.0
    radius = dilation_m / resolution
    depth = int(math.floor(radius))
    if depth == 0:
        return invalid
    if scl.dims[-2:] != ("y", "x"):
        raise InvalidInputError(f"scl must have dims (..., 'y', 'x'), got {scl.dims}")
    structure = _disk(radius).reshape((1,) * (scl.ndim - 2) + (2 * depth + 1,) * 2)
    data = invalid.data
    if isinstance(data, dsa.Array):
        # map_overlap needs every chunk at least as large as the overlap
        small = {ax: max(depth, 1) for ax in (scl.ndim - 2, scl.ndim - 1) if min(data.chunks[ax]) < depth}
        if small:
            data = data.rechunk({ax: max(depth, DEFAULT_CHUNK // 4) for ax in small})
        out = data.map_overlap(
            _dilate_block,
            depth={scl.ndim - 2: depth, scl.ndim - 1: depth},
            boundary="none",
            dtype=bool,
            structure=structure,
        )
    else:
        out = _dilate_block(np.asarray(data), structure)
    result = invalid.copy(data=out)
    result.attrs["dilation_m"] = float(dilation_m)
    return result


def _median_over_time(da: xr.DataArray) -> xr.DataArray:
    """Median over ``time`` of a float DataArray, NaN-aware, through :func:`nanmedian_time`."""
    da = da.transpose("time", ...)
    data = da.data
    if isinstance(data, dsa.Array):
        data = data.rechunk({0: -1})
        out = data.map_blocks(
            nanmedian_time, drop_axis=0, dtype=da.dtype, meta=np.empty((0,) * (da.ndim - 1), da.dtype)
        )
    else:
        out = nanmedian_time(np.asarray(data))
    coords = {k: v for k, v in da.coords.items() if "time" not in v.dims}
    return xr.DataArray(out, dims=da.dims[1:], coords=coords, name=da.name, attrs=dict(da.attrs))


def _valid_observations(refl: xr.Dataset, bands: Sequence[str], invalid: xr.DataArray | None) -> xr.DataArray:
    """Return True where an observation is valid: not masked by ``invalid`` and non-NaN in every band."""
    valid = refl[bands[0]].notnull()
    for name in bands[1:]:
        valid = valid & refl[name].notnull()
    if invalid is not None:
        valid = valid & ~invalid.astype(bool)
    return valid


def median_composite(refl: xr.Dataset, invalid: xr.DataArray | None = None) -> xr.Dataset:
    """Per-pixel median over time of the valid observations.

    An observation (time step at a pixel) is valid when ``invalid`` is False there and
    every band is non-NaN, so all bands of a pixel are composited from the same scenes.

    Parameters
    ----------
    refl : xarray.Dataset
        float reflectance variables with a ``time`` dim (``scl`` and non-time variables are ignored).
    invalid : xarray.DataArray, optional
        bool mask (True = drop), broadcastable to the bands, e.g. from :func:`cloud_mask`.

    Returns
    -------
    xarray.Dataset
        One float32 variable per band (time dropped), NaN where no observation is valid, and
        ``valid_count`` (uint8, saturating at 255). Lazy when the input is.

    """
    bands = _float_bands(refl)
    if not bands:
        raise InvalidInputError(
            f"median_composite() found no float band with a 'time' dim among {list(refl.data_vars)}; "
            "pass the output of to_reflectance()"
        )
    valid = _valid_observations(refl, bands, invalid)
    out = {}
    for name in bands:
        band = refl[name].astype(np.float32).where(valid)
        out[name] = _median_over_time(band)
    count = valid.sum("time", dtype=np.int32).clip(max=255).astype(np.uint8)
    count.attrs = {"long_name": "number of valid observations in the median"}
    out["valid_count"] = count.drop_vars([c for c in count.coords if "time" in count[c].dims])
    result = xr.Dataset(out, attrs=dict(refl.attrs))
    return result.drop_vars([c for c in result.coords if "time" in result[c].dims], errors="ignore")


def composite_season(
    refl: xr.Dataset,
    invalid: xr.DataArray | None,
    *,
    season: str,
    indices: Sequence[str] | None = DEFAULT_INDICES,
    features: Mapping[str, Any] | Any | None = None,
) -> xr.Dataset:
    """Composite one season from its reflectance time series: median, indices and extra features.

    The one code path behind :func:`seasonal_composite` (after loading) and the ``.landcover`` accessor.

    Parameters
    ----------
    refl : xarray.Dataset
        float reflectance bands with a ``time`` dim (the output of :func:`lcstack.load.to_reflectance`
        without ``scl``), NumPy or dask (``time`` one chunk).
    invalid : xarray.DataArray, optional
        bool mask of the observations to drop (:func:`cloud_mask`).
    season : str
        Season name (the ``season`` coordinate).
    indices : sequence of str, optional
        Index names computed from the median bands (default :data:`~lcstack.indices.DEFAULT_INDICES`).
    features : FeaturesConfig or mapping, optional
        Features besides the median (:class:`lcstack.config.FeaturesConfig`); ``None`` or the
        ``landcoverpy`` preset: the median of the bands and the indices only.

    Returns
    -------
    xarray.Dataset
        ``composite`` float32 ``(season, band, y, x)`` (median bands, median indices, then the extra
        features named ``<band>_p10``, ``<band>_std``, ``count``, ``<band>_scene1``, ``<band>_ctx5_mean``)
        and ``valid_count`` uint8 ``(season, y, x)``. Lazy when the input is.

    """
    spec = feature_spec(features)
    med = median_composite(refl, invalid)
    bands = _float_bands(refl)
    idx = compute_indices(med[bands], indices)
    names = bands + list(idx.data_vars)
    layers = [med[b] for b in bands] + [idx[n] for n in idx.data_vars]
    if spec is not None:
        extra = _time_features(refl, _valid_observations(refl, bands, invalid), list(idx.data_vars), spec)
        names += list(extra)
        layers += list(extra.values())
    for i, da in enumerate(layers):
        layers[i] = da.copy(deep=False)
        layers[i].attrs = {}  # band attrs differ (formula, units); coords keep theirs (spatial_ref's CRS)
    composite = xr.concat(
        layers,
        dim="band",
        coords="minimal",
        compat="override",
        join="override",
    ).astype(np.float32)
    # plain NumPy unicode labels: pandas' string dtype does not round-trip through Zarr
    composite = composite.assign_coords(band=np.array(names, dtype=str))
    composite = composite.expand_dims("season").assign_coords(season=np.array([season], dtype=str))
    if spec is not None and spec["context"]:
        composite = add_context(composite, spec["context"])
    composite.attrs = {"long_name": "median composite", "units": "1"}
    valid_count = med["valid_count"].expand_dims("season").assign_coords(season=np.array([season], dtype=str))
    return xr.Dataset({"composite": composite, "valid_count": valid_count})


def seasonal_composite(
    items: Sequence[pystac.Item],
    geobox: GeoBox,
    *,
    season: str,
    bands: Sequence[str] | None = None,
    mask_classes: Sequence[int] = DEFAULT_MASK_CLASSES,
    dilation_m: float = 0.0,
    chunks: Mapping[str, int] | None = None,
    indices: Sequence[str] = DEFAULT_INDICES,
    loader: Literal["odc", "stackstac"] = "odc",
    resampling: str = "nearest",
    fuse_chunks: bool = False,
    eager: bool = False,
    features: Any = None,
    fast: bool = True,
) -> xr.Dataset:
    """Lazy cloud-masked median composite of one season on one tile, with spectral indices.

    Parameters
    ----------
    items : sequence of pystac.Item
        The season's Sentinel-2 scenes.
    geobox : odc.geo.geobox.GeoBox
        Tile grid.
    season : str
        Season name (the ``season`` coordinate).
    bands : sequence of str, optional
        Reflectance bands (canonical names); default every reflectance band all items have.
    mask_classes : sequence of int
        SCL classes masked (plus SCL 0). Ignored, with a :class:`~lcstack.errors.NoCloudMaskWarning`,
        when the items have no ``scl`` asset.
    dilation_m : float
        Mask dilation radius in metres.
    chunks : mapping, optional
        ``y``/``x`` chunk sizes (default 1024); ``time`` is always one chunk for the median.
    indices : sequence of str
        Index names appended after the bands (those whose bands are missing are skipped).
    loader : {"odc", "stackstac"}
        See :func:`lcstack.load.load_scenes`.
    resampling : str
        Resampling of 20/60 m reflectance onto the grid (``scl`` is always nearest).
    fuse_chunks : bool, default False
        Build one task per spatial chunk instead of a fine-grained graph (a load task per band, a
        median task per band, ...). Each task loads every band and scene of its chunk (plus a halo of the
        mask dilation radius), masks them, takes the median and the indices, all in the worker that runs
        it: nothing travels between workers and the scheduler handles ~100× fewer tasks. The values are
        the same as the fine-grained graph's; ``band`` is then one chunk. The workflow uses this.
    eager : bool, default False
        Compute now, in this thread, with NumPy (``chunks`` ignored): what each fused task does.
    features : FeaturesConfig, optional
        Features besides the median (see :func:`composite_season`); default the ``landcoverpy`` set.
    fast : bool, default True
        With ``fuse_chunks`` or ``eager``: read assets that lie on ``geobox``'s lattice with plain
        windowed rasterio reads (``load_scenes(native=True)``; others through odc-stac), and, for the
        ``landcoverpy`` features, mask, scale and take the median of every band in one pass over the
        integers (:func:`lcstack._kernels.masked_median_dn`) and the indices with NumPy. The same values,
        bit for bit, as ``fast=False`` (odc-stac and xarray throughout), which is what it is tested against.

    Returns
    -------
    xarray.Dataset
        ``composite`` float32 ``(season, band, y, x)`` (bands then indices) and ``valid_count`` uint8
        ``(season, y, x)``; coordinates ``spatial_ref``, ``x``, ``y``, ``season``, ``band``; attrs
        ``items`` (JSON list of ids), ``lcstack_version``, ``mask_classes``, ``dilation_m``. Nothing
        is computed until the result is.

    """
    if fuse_chunks:
        return _fused_composite(
            items,
            geobox,
            season=season,
            bands=bands,
            mask_classes=mask_classes,
            dilation_m=dilation_m,
            chunks=chunks,
            indices=indices,
            loader=loader,
            resampling=resampling,
            features=feature_spec(features),
            fast=fast,
        )
    items = list(items)
    if not items:
        raise InvalidInputError(f"season {season!r}: no items to composite; discover scenes first")
    refl_bands, has_scl = _bands_of(items, bands, season)
    load_chunks = {"time": -1, **{k: v for k, v in (chunks or {}).items() if k in ("y", "x")}}
    ds = load_scenes(
        items,
        geobox,
        bands=refl_bands + (["scl"] if has_scl else []),
        chunks=load_chunks,
        loader=loader,
        resampling=resampling,
        eager=eager,
        native=fast,
    )
    refl = to_reflectance(ds)
    invalid = None
    if has_scl:
        invalid = cloud_mask(
            ds["scl"], classes=mask_classes, dilation_m=dilation_m, resolution=abs(geobox.resolution.x)
        )
        refl = refl.drop_vars("scl")
    part = composite_season(refl, invalid, season=season, indices=indices, features=features)
    composite, valid_count = part["composite"], part["valid_count"]
    names = [str(b) for b in composite["band"].values]
    attrs = _composite_attrs(items, season, mask_classes, has_scl, dilation_m, resampling)
    out = xr.Dataset({"composite": composite, "valid_count": valid_count}, attrs=attrs)
    logger.debug("season %s: composite of %d items, bands %s", season, len(items), names)
    return out


def _composite_attrs(
    items: Sequence[pystac.Item],
    season: str,
    mask_classes: Sequence[int],
    has_scl: bool,
    dilation_m: float,
    resampling: str,
) -> dict[str, Any]:
    return {
        "season": season,
        "items": json.dumps(sorted(it.id for it in items)),
        "lcstack_version": __version__,
        "mask_classes": [int(c) for c in mask_classes] if has_scl else [],
        "dilation_m": float(dilation_m),
        "resampling": resampling,
        "cloud_mask": "scl" if has_scl else "none",
    }


def _index_names(indices: Sequence[str] | None, bands: Sequence[str], *, log: bool = True) -> list[str]:
    """Return the indices ``composite_season`` computes from ``bands`` (those lacking a band: skipped)."""
    names = []
    for name in _resolve_names(indices):
        missing = [b for b in INDICES[name].bands if b not in bands]
        if missing and log:
            logger.warning("skipping index %r: band(s) %s not in the dataset", name, missing)
        if not missing:
            names.append(name)
    return names


def _median_template(
    items: list[pystac.Item],
    geobox: GeoBox,
    *,
    season: str,
    bands: Sequence[str] | None = None,
    mask_classes: Sequence[int] = DEFAULT_MASK_CLASSES,
    dilation_m: float = 0.0,
    indices: Sequence[str] = DEFAULT_INDICES,
    resampling: str = "nearest",
    **_: object,
) -> xr.Dataset:
    """Return ``seasonal_composite``'s result for the ``landcoverpy`` features, empty, built directly."""
    from odc.geo.xr import xr_coords

    if not items:
        raise InvalidInputError(f"season {season!r}: no items to composite; discover scenes first")
    refl_bands, has_scl = _bands_of(items, bands, season)
    names = refl_bands + _index_names(indices, refl_bands)
    coords = xr_coords(geobox, dims=("y", "x"))
    seasons = np.array([season], dtype=str)
    ny, nx = geobox.shape.yx
    composite = xr.DataArray(
        dsa.empty((1, len(names), ny, nx), dtype=np.float32, chunks=-1),
        dims=("season", "band", "y", "x"),
        coords={"season": seasons, "band": np.array(names, dtype=str), **coords},
        attrs={"long_name": "median composite", "units": "1"},
    )
    valid_count = xr.DataArray(
        dsa.empty((1, ny, nx), dtype=np.uint8, chunks=-1),
        dims=("season", "y", "x"),
        coords={"season": seasons, **coords},
        attrs={"long_name": "number of valid observations in the median"},
    )
    attrs = _composite_attrs(items, season, mask_classes, has_scl, dilation_m, resampling)
    return xr.Dataset({"composite": composite, "valid_count": valid_count}, attrs=attrs)


def _bands_of(items: list[pystac.Item], bands: Sequence[str] | None, season: str) -> tuple[list[str], bool]:
    """Return the reflectance bands to composite and whether every item has an SCL (warns if not)."""
    available = common_bands(items)
    has_scl = "scl" in available
    if bands is None:
        refl_bands = [b for b in available if b != "scl"]
    else:
        refl_bands = [b for b in dict.fromkeys(bands) if b != "scl"]
    if not refl_bands:
        raise InvalidInputError(f"season {season!r}: no reflectance band to composite (bands={bands})")
    if not has_scl:
        lacking = [it.id for it in items if "scl" not in band_assets(it)]
        collections = sorted({str(it.collection_id) for it in items if it.id in lacking})
        warnings.warn(
            f"season {season!r}: items {lacking} (collection {', '.join(collections)}) have no 'scl' asset, "
            "so no cloud mask is applied; clouds will leak into the median",
            NoCloudMaskWarning,
            stacklevel=3,
        )
    return refl_bands, has_scl


def _fused_composite(
    items: Sequence[pystac.Item], geobox: GeoBox, *, chunks: Mapping[str, int] | None, **kw: object
) -> xr.Dataset:
    """``seasonal_composite`` with one task per spatial chunk (see its ``fuse_chunks``)."""
    items = list(items)
    ych = dsa.core.normalize_chunks((chunks or {}).get("y", DEFAULT_CHUNK), (geobox.shape[0],))[0]
    xch = dsa.core.normalize_chunks((chunks or {}).get("x", DEFAULT_CHUNK), (geobox.shape[1],))[0]
    spec = kw.get("features")
    if spec is None and kw.get("fast"):
        # coordinates, band names and attributes (and the warnings, raised once here, not once per chunk)
        template = _median_template(items, geobox, **kw)  # type: ignore[arg-type]
    else:
        # the fine-grained lazy composite of the whole tile is the template
        template = seasonal_composite(items, geobox, chunks={"y": ych[0], "x": xch[0]}, **kw)  # type: ignore[arg-type]
    context = spec["context"] if spec else None  # type: ignore[index]
    if context:
        # the window statistics need the neighbours' medians: added over the fused chunks, not in them
        kw = {**kw, "features": {**spec, "context": None}}  # type: ignore[dict-item]
    n_ctx = len(context["bands"]) * len(context["stats"]) if context else 0
    n_bands = template.sizes["band"] - n_ctx
    dilation_m = float(kw.get("dilation_m", 0.0) or 0.0)  # type: ignore[arg-type]
    halo = int(math.floor(dilation_m / abs(geobox.resolution.x))) if dilation_m else 0
    stacked = dsa.map_blocks(
        _composite_chunk,
        dtype=np.float32,
        chunks=((1,), (n_bands + 1,), ych, xch),
        meta=np.empty((0, 0, 0, 0), np.float32),
        name=f"lcstack-composite-{tokenize(items, geobox, ych, xch, kw)}",
        items=items,
        geobox=geobox,
        offsets=(np.cumsum((0, *ych)).tolist(), np.cumsum((0, *xch)).tolist()),
        halo=halo,
        kw=kw,
    )
    base = template["composite"].isel(band=slice(0, n_bands)).copy(data=stacked[:, :n_bands])
    composite = add_context(base, context) if context else base
    composite.attrs = dict(template["composite"].attrs)
    valid_count = template["valid_count"].copy(data=stacked[:, n_bands].astype(np.uint8))
    return xr.Dataset({"composite": composite, "valid_count": valid_count}, attrs=template.attrs)


def _read_assets(item: pystac.Item, bands: Sequence[str] | None) -> list[str]:
    """Asset keys of ``item`` a composite of ``bands`` (default: all) reads, SCL included."""
    mapping = band_assets(item)
    wanted = list(bands) if bands else list(mapping)
    return [mapping[b] for b in dict.fromkeys([*wanted, "scl"]) if b in mapping]


def _composite_chunk(
    *,
    items: list[pystac.Item],
    geobox: GeoBox,
    offsets: tuple[list[int], list[int]],
    halo: int,
    kw: dict[str, object],
    block_id: tuple[int, ...],
) -> np.ndarray:
    """Compute one spatial chunk of a composite in this task: ``(1, band + valid_count, y, x)``."""
    (ys, xs), (iy, ix) = offsets, block_id[2:]
    y0, y1, x0, x1 = ys[iy], ys[iy + 1], xs[ix], xs[ix + 1]
    # the mask dilation needs the neighbours' pixels, as map_overlap gives them in the tiled graph
    py0, py1 = max(0, y0 - halo), min(geobox.shape[0], y1 + halo)
    px0, px1 = max(0, x0 - halo), min(geobox.shape[1], x1 + halo)
    sub = geobox[py0:py1, px0:px1]
    problem = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoCloudMaskWarning)
            if kw.get("fast") and kw.get("features") is None:
                out = _median_chunk(items, sub, **kw)  # type: ignore[arg-type]
                return out[None, :, y0 - py0 : y1 - py0, x0 - px0 : x1 - px0]
            ds = seasonal_composite(items, sub, eager=True, **kw)  # type: ignore[arg-type]
    except LcstackError:
        raise
    except Exception:
        # a read failed deep in odc-stac / rasterio: name the item, asset and file it came from
        bands = kw.get("bands")
        problem = find_unreadable_asset(items, lambda it: _read_assets(it, bands), sub)  # type: ignore[arg-type]
        if problem is None:
            raise
    if problem is not None:
        # raised outside the `except`: no rasterio exception as its context, which would not unpickle
        # on the way back from a Dask worker
        raise asset_error(problem, season=str(kw.get("season")))
    comp, count = np.asarray(ds["composite"].data), np.asarray(ds["valid_count"].data)
    out = np.concatenate([comp, count[:, None].astype(np.float32)], axis=1)
    return out[:, :, y0 - py0 : y1 - py0, x0 - px0 : x1 - px0]


def _median_chunk(
    items: list[pystac.Item],
    geobox: GeoBox,
    *,
    season: str,
    bands: Sequence[str] | None = None,
    mask_classes: Sequence[int] = DEFAULT_MASK_CLASSES,
    dilation_m: float = 0.0,
    indices: Sequence[str] = DEFAULT_INDICES,
    loader: Literal["odc", "stackstac"] = "odc",
    resampling: str = "nearest",
    **_: object,
) -> np.ndarray:
    """Return the ``landcoverpy`` composite of ``geobox``, ``(band + valid_count, y, x)``, with NumPy.

    ``seasonal_composite(eager=True)``'s values, bit for bit: native reads where they apply
    (``load_scenes(native=True)``), the mask of :func:`cloud_mask`, then one pass over the integers for
    the reflectance and the median of every band (:func:`masked_median_dn`) and the indices.
    """
    refl_bands, has_scl = _bands_of(items, bands, season)
    ds = load_scenes(
        items,
        geobox,
        bands=refl_bands + (["scl"] if has_scl else []),
        loader=loader,
        resampling=resampling,
        eager=True,
        native=True,
    )
    invalid = None
    if has_scl:
        mask = cloud_mask(
            ds["scl"], classes=mask_classes, dilation_m=dilation_m, resolution=abs(geobox.resolution.x)
        )
        invalid = np.asarray(mask.data)
    scale = np.stack([ds[f"scale_{b}"].values for b in refl_bands])
    offset = np.stack([ds[f"offset_{b}"].values for b in refl_bands])
    names = _index_names(indices, refl_bands, log=False)
    n = len(refl_bands)
    out = np.empty((n + len(names) + 1, *geobox.shape.yx), dtype=np.float32)  # bands, indices, count
    masked_median_dn([np.asarray(ds[b].data) for b in refl_bands], invalid, scale, offset, out=out)
    for i, layer in enumerate(index_arrays(dict(zip(refl_bands, out, strict=False)), names).values()):
        out[n + i] = layer
    return out


def no_clear_pixel_error(
    items: Sequence[pystac.Item],
    geobox: GeoBox,
    *,
    season: str,
    where: str,
    mask_classes: Sequence[int] = DEFAULT_MASK_CLASSES,
    max_cloud_cover: float | None = None,
    min_valid_fraction: float = 0.0,
    chunks: Mapping[str, int] | None = None,
) -> NoScenesFoundError:
    """Return the error for a season whose composite has no clear pixel, with each scene's valid fraction.

    Only called once a composite came out empty: it reads the scenes' SCL again (lazily, chunk by chunk)
    to measure the fraction of ``geobox`` that the mask leaves, and says what to change.
    """
    has_scl = "scl" in common_bands(items)
    if has_scl:
        scl = load_scenes(items, geobox, bands=["scl"], chunks=chunks)["scl"]
        clear = (~cloud_mask(scl, classes=mask_classes)).mean(("y", "x")).compute().values
        measured = {i: float(f) for i, f in zip(scl["id"].values, clear, strict=True)}
    else:
        measured = {}
    scenes = []
    for item in sorted(items, key=lambda it: it.id):
        cloud = item.properties.get("eo:cloud_cover")
        said = f"eo:cloud_cover {cloud:.3g}%" if isinstance(cloud, int | float) else "no eo:cloud_cover"
        valid = f"valid {measured[item.id]:.2f}" if item.id in measured else "no SCL"
        scenes.append(f"{item.id} ({valid}, metadata {said})")
    why = (
        f"the SCL of every scene masks every pixel (mask.classes {[int(c) for c in mask_classes]} and 0)"
        if has_scl
        else "every scene is nodata there"
    )
    limit = "none" if max_cloud_cover is None else f"{max_cloud_cover:g}"
    return NoScenesFoundError(
        f"season {season!r}{where}: the composite has no clear pixel: {why}. Scenes: {'; '.join(scenes)}. "
        f"To fix: widen or move the season's dates (start/end or dates) or raise max_cloud_cover (now "
        f"{limit}) so that other scenes are found, raise min_valid_fraction (now {min_valid_fraction:g}) or "
        "max_scenes_per_season so that clearer scenes are preferred, or mask fewer SCL classes "
        "(mask.classes)."
    )
