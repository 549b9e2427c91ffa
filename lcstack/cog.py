"""Write uint8 class maps as Cloud-Optimized GeoTIFFs with a colour table, class names and overviews.

:func:`write_layer_cog` writes continuous uint8 layers (probabilities and uncertainty in whole percent,
one band or one band per class) the same way, without a colour table and with averaged overviews.

The map is written block by block (one dask chunk at a time, a bounded number in flight) into a temporary
tiled GeoTIFF, turned into a COG by :func:`rio_cogeo.cogeo.cog_translate`, and only then stored by
:meth:`lcstack.store.Storage.open_output` (a rename within the target folder for a local path, a single
upload for an object store).
A reader therefore never sees a half-written file at the final name.
"""

from __future__ import annotations

import colorsys
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import numpy as np
import xarray as xr

from lcstack.errors import InvalidInputError

__all__ = ["write_cog", "write_layer_cog", "default_colors", "RGBA"]

logger = logging.getLogger(__name__)

RGBA = tuple[int, int, int, int]

_NODATA_COLOR: RGBA = (0, 0, 0, 0)
_UNCLASSIFIED_COLOR: RGBA = (160, 160, 160, 255)

# First matching keyword wins, so specific names come before generic ones.
_KEYWORD_COLORS: tuple[tuple[tuple[str, ...], tuple[int, int, int]], ...] = (
    (("nodata", "nodatavalue"), (0, 0, 0)),
    (("unclassified", "unknown", "other"), (160, 160, 160)),
    (("wetland", "marsh", "swamp", "bog", "mangrove", "peat"), (0, 150, 150)),
    (("water", "river", "lake", "sea", "ocean", "reservoir"), (30, 110, 200)),
    (("snow", "ice", "glacier"), (235, 245, 255)),
    (("cloud",), (220, 220, 220)),
    (("shadow",), (70, 70, 70)),
    (("forest", "tree", "wood", "broadleaf", "conifer", "needleleaf"), (0, 100, 0)),
    (("shrub", "scrub", "bush", "heath", "maquis"), (128, 128, 0)),
    (("grass", "pasture", "meadow", "herbaceous", "rangeland", "prairie"), (150, 230, 120)),
    (("orchard", "vineyard", "olive", "plantation", "permanentcrop"), (190, 120, 200)),
    (("crop", "agri", "cultivat", "farm", "arable", "cereal", "field", "rice"), (240, 210, 40)),
    (("built", "urban", "artificial", "settlement", "impervious", "road", "building", "city"), (220, 30, 40)),
    (("bare", "soil", "sand", "rock", "barren", "desert", "dune", "quarry", "mine"), (210, 180, 140)),
    (("moss", "lichen", "tundra"), (250, 230, 160)),
)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _palette_color(code: int) -> tuple[int, int, int]:
    """Return a deterministic, well-spread colour for ``code`` (golden-ratio hue steps)."""
    hue = (code * 0.618033988749895) % 1.0
    sat = 0.55 + 0.25 * ((code * 7) % 3) / 2
    val = 0.80 + 0.15 * ((code * 5) % 2)
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return round(r * 255), round(g * 255), round(b * 255)


def _shade(rgb: tuple[int, int, int], step: int) -> tuple[int, int, int]:
    """Lighter (odd steps) or darker (even steps) variants of one colour for repeated themes."""
    amount = 0.3 * ((step + 1) // 2)
    if step % 2:
        return tuple(round(c + (255 - c) * min(amount, 0.8)) for c in rgb)  # type: ignore[return-value]
    return tuple(round(c * max(1 - amount, 0.2)) for c in rgb)  # type: ignore[return-value]


def default_colors(labels: Mapping[str, int]) -> dict[int, RGBA]:
    """Colour table for land cover classes: familiar colours for common names, a fixed palette otherwise.

    Parameters
    ----------
    labels : mapping
        Class name -> code (e.g. the content of ``lc_labels.json``).

    Returns
    -------
    dict
        code -> ``(r, g, b, a)``. Code 0 is transparent (nodata). Names are matched case- and
        punctuation-insensitively on keywords (``water`` blue, ``forest`` dark green, ``cropland`` yellow,
        ``builtUp`` red, ``bareSoil`` tan, ``grassland`` light green, ``shrubland`` olive, ``wetland`` teal,
        ...); two classes hitting the same theme get lighter/darker shades of it. Unknown names get a
        deterministic colour from their code, so the same labels always give the same table.

    """
    colors: dict[int, RGBA] = {0: _NODATA_COLOR}
    uses: dict[int, int] = {}
    for name, code in sorted(labels.items(), key=lambda kv: int(kv[1])):
        code = int(code)
        if not 0 <= code <= 255:
            raise InvalidInputError(f"Label {name!r} has code {code}, outside 0..255; use codes 1..255.")
        if code == 0:
            continue
        key = _key(name)
        for theme, (keywords, rgb) in enumerate(_KEYWORD_COLORS):
            if any(k in key for k in keywords):
                n = uses.get(theme, 0)
                uses[theme] = n + 1
                colors[code] = (*(_shade(rgb, n) if n else rgb), 255)
                break
        else:
            colors[code] = (*_palette_color(code), 255)
    return colors


def _labels_from_attrs(da: xr.DataArray) -> dict[str, int] | None:
    values = da.attrs.get("flag_values")
    meanings = da.attrs.get("flag_meanings")
    if values is None or meanings is None:
        return None
    values = np.atleast_1d(np.asarray(values)).tolist()
    names = str(meanings).split()
    if len(names) != len(values):
        return None
    return {n: int(v) for n, v in zip(names, values, strict=True)}


def _check_colors(colors: Mapping[int, Any]) -> dict[int, RGBA]:
    table: dict[int, RGBA] = {}
    for code, color in colors.items():
        c = tuple(int(v) for v in color)
        if not 0 <= int(code) <= 255 or len(c) not in (3, 4) or not all(0 <= v <= 255 for v in c):
            raise InvalidInputError(
                f"colors[{code!r}] = {color!r} is not a valid colour table entry: use codes 0..255 and "
                "(r, g, b) or (r, g, b, a) tuples of integers 0..255 (argument `colors`)."
            )
        table[int(code)] = c if len(c) == 4 else (*c, 255)  # type: ignore[assignment]
    return table


def _block_windows(
    chunks: tuple[tuple[int, ...], tuple[int, ...]],
) -> Iterator[tuple[int, int, int, int, int, int]]:
    y0 = 0
    for i, h in enumerate(chunks[0]):
        x0 = 0
        for j, w in enumerate(chunks[1]):
            yield i, j, y0, x0, h, w
            x0 += w
        y0 += h


def _write_blocks(dst: Any, data: Any, *, max_blocks_in_flight: int) -> None:
    """Write a (y, x) NumPy or dask array into band 1 of ``dst``, a bounded number of blocks at a time."""
    from rasterio.windows import Window

    if not hasattr(data, "dask"):
        arr = np.asarray(data)
        step = 2048
        for y0 in range(0, arr.shape[0], step):
            dst.write(
                arr[y0 : y0 + step], 1, window=Window(0, y0, arr.shape[1], min(step, arr.shape[0] - y0))
            )
        return

    import dask

    blocks = data.to_delayed(optimize_graph=True)
    windows = list(_block_windows(data.chunks))
    for start in range(0, len(windows), max_blocks_in_flight):
        batch = windows[start : start + max_blocks_in_flight]
        results = dask.compute(*[blocks[i, j] for i, j, *_ in batch])
        for (_, _, y0, x0, h, w), block in zip(batch, results, strict=True):
            block = np.asarray(block)
            if block.shape != (h, w):
                raise InvalidInputError(f"A dask block has shape {block.shape}, expected {(h, w)}.")
            dst.write(block.astype(np.uint8, copy=False), 1, window=Window(x0, y0, w, h))


def _write_band_blocks(dst: Any, data: Any, *, max_blocks_in_flight: int) -> None:
    """Write a ``(band, y, x)`` NumPy or dask array into bands 1..n of ``dst``, chunk by chunk."""
    from rasterio.windows import Window

    n = data.shape[0]
    indexes = list(range(1, n + 1))
    if not hasattr(data, "dask"):
        arr = np.asarray(data)
        step = 2048
        for y0 in range(0, arr.shape[1], step):
            h = min(step, arr.shape[1] - y0)
            dst.write(arr[:, y0 : y0 + step], indexes, window=Window(0, y0, arr.shape[2], h))
        return

    import dask

    data = data.rechunk({0: -1})  # one task per spatial chunk gives every band of it
    blocks = data.to_delayed(optimize_graph=True)
    windows = list(_block_windows(data.chunks[1:]))
    for start in range(0, len(windows), max_blocks_in_flight):
        batch = windows[start : start + max_blocks_in_flight]
        results = dask.compute(*[blocks[0, i, j] for i, j, *_ in batch])
        for (_, _, y0, x0, h, w), block in zip(batch, results, strict=True):
            block = np.asarray(block)
            if block.shape != (n, h, w):
                raise InvalidInputError(f"A dask block has shape {block.shape}, expected {(n, h, w)}.")
            dst.write(block.astype(np.uint8, copy=False), indexes, window=Window(x0, y0, w, h))


def write_layer_cog(
    da: xr.DataArray,
    url_or_path: str | os.PathLike,
    *,
    nodata: int = 255,
    descriptions: list[str] | None = None,
    tags: Mapping[str, str] | None = None,
    band_tags: list[Mapping[str, str]] | None = None,
    overview_resampling: Literal["nearest", "average"] = "average",
    blocksize: int = 512,
    storage_options: Mapping[str, Any] | None = None,
    storage: Any = None,
    max_blocks_in_flight: int | None = None,
) -> str:
    """Write continuous uint8 layers as a Cloud-Optimized GeoTIFF: one band, or one per ``band`` entry.

    Probabilities and uncertainty (:func:`lcstack.classify.classify` with ``probabilities=True``) in
    whole percent: no colour table, nodata ``nodata`` (255), overviews averaged over the valid pixels.

    Parameters
    ----------
    da : xarray.DataArray
        uint8, dims ``(y, x)`` or ``(band, y, x)`` with any name for the leading dim (``class`` for
        class probabilities), on a grid described by its ``spatial_ref`` coordinate; NumPy- or
        dask-backed (computed chunk by chunk, every band of a chunk at once).
    url_or_path : str or os.PathLike
        Local path or fsspec URL.
    nodata : int, default 255
        Nodata value of every band.
    descriptions : list of str, optional
        Band descriptions (class names for probabilities); ``da.attrs["long_name"]`` or ``da.name`` for
        a single band by default.
    tags : mapping, optional
        Dataset tags (GDAL metadata); ``LCSTACK_LABELS`` is refused (it marks class maps).
    band_tags : list of mapping, optional
        Tags of every band.
    overview_resampling : {"average", "nearest"}, default "average"
        Resampling of the internal overviews.
    blocksize, storage_options, storage, max_blocks_in_flight
        As :func:`write_cog`.

    Returns
    -------
    str
        The written path or URL.

    """
    from lcstack.store import Storage

    arr, gbox = _check_layers(da, nodata)
    n = arr.shape[0]
    if descriptions is None:
        descriptions = [str(da.attrs.get("long_name") or da.name or "layer")] if n == 1 else None
    if any(v is not None and len(v) != n for v in (descriptions, band_tags)):
        raise InvalidInputError(
            f"write_layer_cog: give one description and one set of band tags per band ({n})."
        )
    if tags and "LCSTACK_LABELS" in tags:
        raise InvalidInputError(
            "write_layer_cog: the LCSTACK_LABELS tag marks class maps; write those with write_cog."
        )
    target = os.fspath(url_or_path)
    store = (
        storage
        if storage_options is None and storage is not None
        else Storage.for_url(target, storage_options)
    )
    in_flight = max_blocks_in_flight or max(4, 2 * (os.cpu_count() or 2))
    meta = {"descriptions": descriptions, "band_tags": band_tags, "tags": tags}
    with store.open_output(target, suffix=".tif") as cog_path:
        tmp_tif = os.path.join(os.path.dirname(cog_path), "blocks.tif")
        _write_tiled(
            arr,
            gbox,
            tmp_tif,
            nodata=nodata,
            blocksize=blocksize,
            max_blocks_in_flight=in_flight,
            layers=meta,
        )
        _translate(
            tmp_tif,
            cog_path,
            table=None,
            nodata=nodata,
            blocksize=blocksize,
            overview_levels=None,
            overview_resampling=overview_resampling,
        )
    logger.info("Wrote COG %s (%d x %d, %d band%s)", target, gbox.shape.x, gbox.shape.y, n, "s" * (n > 1))
    return target


def _check_layers(da: Any, nodata: int) -> tuple[xr.DataArray, Any]:
    """``da`` as ``(band, y, x)`` and its GeoBox, after checking it is a georeferenced uint8 array."""
    if not isinstance(da, xr.DataArray) or da.ndim not in (2, 3) or not {"y", "x"} <= set(da.dims):
        raise InvalidInputError(
            "write_layer_cog expects an xarray.DataArray with dims (y, x) or (band, y, x), got "
            f"{getattr(da, 'dims', type(da).__name__)} (argument `da`)."
        )
    if da.ndim == 2:
        da = da.expand_dims("band")
    band = next(d for d in da.dims if d not in ("y", "x"))
    _, gbox = _check_class_map(da.isel({band: 0}, drop=True), nodata)  # dtype, nodata and grid checks
    return da.transpose(band, "y", "x"), gbox


def _tiled_profile(gbox: Any, nodata: int, blocksize: int, *, count: int = 1) -> dict[str, Any]:
    ny, nx = gbox.shape
    return {
        "driver": "GTiff",
        "width": nx,
        "height": ny,
        "count": count,
        "dtype": "uint8",
        "crs": _rasterio_crs(gbox.crs),
        "transform": gbox.affine,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": blocksize,
        "blockysize": blocksize,
        # Uncompressed: window writes that straddle tiles are updated in place instead of re-appended.
        "compress": None,
        "BIGTIFF": "IF_SAFER",
    }


def _rasterio_crs(crs: Any) -> Any:
    from rasterio.crs import CRS

    epsg = getattr(crs, "epsg", None)
    return CRS.from_epsg(epsg) if epsg is not None else CRS.from_wkt(crs.to_wkt())


def write_cog(
    da: xr.DataArray,
    url_or_path: str | os.PathLike,
    *,
    labels: Mapping[str, int] | None = None,
    colors: Mapping[int, tuple[int, ...]] | None = None,
    nodata: int = 0,
    overview_resampling: Literal["nearest", "mode"] = "nearest",
    overview_levels: int | None = None,
    blocksize: int = 512,
    description: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    storage: Any = None,
    max_blocks_in_flight: int | None = None,
) -> str:
    """Write a uint8 class map as a Cloud-Optimized GeoTIFF with a colour table and class names.

    Parameters
    ----------
    da : xarray.DataArray
        Class codes, uint8, dims ``(y, x)``, on a grid described by its ``spatial_ref`` coordinate (odc-geo
        GeoBox). NumPy- or dask-backed; a dask array is computed chunk by chunk, never as a whole.
    url_or_path : str or os.PathLike
        Local path or fsspec URL (``s3://bucket/maps/tile.tif``, ``memory://...``).
    labels : mapping, optional
        Class name -> code. Defaults to the ``flag_values``/``flag_meanings`` attributes of ``da``. Stored as
        GDAL metadata (dataset tag ``LCSTACK_LABELS`` as JSON, band tags ``flag_values``, ``flag_meanings``
        and ``CLASS_<code>``) and used for the default colours.
    colors : mapping, optional
        code -> ``(r, g, b[, a])``; :func:`default_colors` of ``labels`` when not given. Written as the
        GeoTIFF colour table (palette colour interpretation).
    nodata : int, default 0
        Nodata value of the band.
    overview_resampling : {"nearest", "mode"}, default "nearest"
        Resampling for the internal overviews; class maps must not be averaged.
    overview_levels : int, optional
        Number of overview levels; by default halve until the image fits in one ``blocksize`` tile.
    blocksize : int, default 512
        COG tile size.
    description : str, optional
        Band description; ``da.attrs["long_name"]`` or ``da.name`` by default.
    storage_options : mapping, optional
        fsspec options for ``url_or_path``.
    storage : lcstack.store.Storage, optional
        Where ``storage_options`` come from when not given (used for remote URLs only).
    max_blocks_in_flight : int, optional
        How many dask chunks are computed at once (default: twice the CPU count, at least 4). Memory is
        bounded by this many chunks, whatever the size of the map.

    Returns
    -------
    str
        The written path or URL.

    """
    from lcstack.store import Storage

    da, gbox = _check_class_map(da, nodata)
    if labels is None:
        labels = _labels_from_attrs(da) or {}
    labels = {str(k): int(v) for k, v in labels.items()}
    table = _check_colors(colors) if colors is not None else default_colors(labels)
    table.setdefault(int(nodata), _NODATA_COLOR)
    band_description = description or str(da.attrs.get("long_name") or da.name or "class")
    in_flight = max_blocks_in_flight or max(4, 2 * (os.cpu_count() or 2))

    target = os.fspath(url_or_path)
    store = (
        storage
        if storage_options is None and storage is not None
        else Storage.for_url(target, storage_options)
    )
    with store.open_output(target, suffix=".tif") as cog_path:
        # the blocks file lies in the same private scratch folder; the store removes both
        tmp_tif = os.path.join(os.path.dirname(cog_path), "blocks.tif")
        _write_tiled(
            da,
            gbox,
            tmp_tif,
            nodata=nodata,
            blocksize=blocksize,
            max_blocks_in_flight=in_flight,
            table=table,
            labels=labels,
            description=band_description,
        )
        _translate(
            tmp_tif,
            cog_path,
            table=table,
            nodata=nodata,
            blocksize=blocksize,
            overview_levels=overview_levels,
            overview_resampling=overview_resampling,
        )
    ny, nx = gbox.shape
    logger.info("Wrote COG %s (%d x %d)", target, nx, ny)
    return target


def _check_class_map(da: Any, nodata: int) -> tuple[xr.DataArray, Any]:
    """``da`` as ``(y, x)`` and its GeoBox, after checking it is a georeferenced uint8 class map."""
    import odc.geo.xr  # noqa: F401  (registers the .odc accessor)

    if not isinstance(da, xr.DataArray):
        raise InvalidInputError(
            f"write_cog expects an xarray.DataArray, got {type(da).__name__} (argument `da`)."
        )
    if set(da.dims) != {"y", "x"}:
        raise InvalidInputError(
            f"write_cog expects a 2-D class map with dims (y, x), got {da.dims}; "
            "select one level or band first."
        )
    if da.dtype != np.uint8:
        raise InvalidInputError(
            f"write_cog expects uint8 class codes, got {da.dtype}; cast with "
            ".astype('uint8') after checking the codes fit 0..255."
        )
    if not 0 <= int(nodata) <= 255:
        raise InvalidInputError(f"nodata must be within 0..255 for a uint8 map, got {nodata}.")
    da = da.transpose("y", "x")
    gbox = da.odc.geobox
    if gbox is None or gbox.crs is None:
        raise InvalidInputError(
            "The class map has no CRS/transform: it needs a `spatial_ref` coordinate (odc-geo / "
            "rioxarray) and regular x/y coordinates. Keep the coordinates of the feature cube it was "
            "classified from."
        )
    return da, gbox


def _write_tiled(
    da: xr.DataArray,
    gbox: Any,
    path: str,
    *,
    nodata: int,
    blocksize: int,
    max_blocks_in_flight: int,
    table: Mapping[int, RGBA] | None = None,
    labels: Mapping[str, int] | None = None,
    description: str | None = None,
    layers: Mapping[str, Any] | None = None,
) -> None:
    """Write ``da`` block by block into an uncompressed tiled GeoTIFF at the scratch ``path``.

    A class map (``(y, x)``, with ``table``, ``labels`` and ``description``), or with ``layers``
    (``descriptions``, ``band_tags``, ``tags``) a ``(band, y, x)`` array of continuous layers.
    """
    import rasterio

    if layers is not None:
        profile = _tiled_profile(gbox, nodata, blocksize, count=da.shape[0])
        with rasterio.open(path, "w", **profile) as dst:
            _write_band_blocks(dst, da.data, max_blocks_in_flight=max_blocks_in_flight)
            for i in range(da.shape[0]):
                if layers.get("descriptions") is not None:
                    dst.set_band_description(i + 1, layers["descriptions"][i])
                if layers.get("band_tags") is not None:
                    dst.update_tags(i + 1, **dict(layers["band_tags"][i]))
            if layers.get("tags"):
                dst.update_tags(**dict(layers["tags"]))
        return
    profile = _tiled_profile(gbox, nodata, blocksize)
    labels = labels or {}
    names_by_code = {v: k for k, v in labels.items()}
    band_tags = {
        "flag_values": " ".join(str(c) for c in sorted(names_by_code)),
        "flag_meanings": " ".join("_".join(names_by_code[c].split()) for c in sorted(names_by_code)),
        **{f"CLASS_{c}": n for c, n in sorted(names_by_code.items())},
    }
    with rasterio.open(path, "w", **profile) as dst:
        _write_blocks(dst, da.data, max_blocks_in_flight=max_blocks_in_flight)
        dst.write_colormap(1, table)
        dst.set_band_description(1, description)
        dst.update_tags(LCSTACK_LABELS=json.dumps(dict(labels), sort_keys=True))
        dst.update_tags(1, **band_tags)


def _translate(
    src: str,
    dst: str,
    *,
    table: Mapping[int, RGBA] | None,
    nodata: int,
    blocksize: int,
    overview_levels: int | None,
    overview_resampling: str,
) -> None:
    """Turn the tiled GeoTIFF ``src`` into the deflated COG ``dst`` with internal overviews."""
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    cog_profile = cog_profiles.get("deflate")
    cog_profile.update(blockxsize=blocksize, blockysize=blocksize, predictor=1)
    cog_translate(
        src,
        dst,
        cog_profile,
        nodata=nodata,
        overview_level=overview_levels,
        overview_resampling=overview_resampling,
        colormap=dict(table) if table is not None else None,
        forward_band_tags=True,
        in_memory=False,
        quiet=True,
        config={"GDAL_NUM_THREADS": "ALL_CPUS", "GDAL_TIFF_OVR_BLOCKSIZE": str(blocksize)},
    )
