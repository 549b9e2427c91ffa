"""The feature cube: seasonal composites and terrain stacked along one ``feature`` dimension."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dask.array as dsa
import numpy as np
import xarray as xr
from dask.base import tokenize

from .errors import InvalidInputError
from .store import Storage, _is_local

__all__ = ["stack_features", "feature_names", "open_feature_cube"]


def stack_features(composites: Mapping[str, xr.Dataset], terrain: xr.Dataset | None = None) -> xr.DataArray:
    """Stack per-season composites (and terrain) into one ``(feature, y, x)`` float32 cube.

    Seasonal features are named ``<season>_<band>`` (``spring_ndvi``); terrain features keep their band
    names (``elevation``, ``slope``, ``aspect``). The feature axis is one chunk, so every block holds
    all the features of its pixels. Nothing is computed.
    """
    if not composites:
        raise InvalidInputError("no composites to stack; run the composite step first.")
    arrays = []
    raw = []  # (leading..., y, x) dask arrays as stored, for the blockwise stack
    for season, ds in composites.items():
        da = ds["composite"]
        raw.append(da.transpose(..., "y", "x").data)
        if "season" in da.dims:
            da = da.isel(season=0, drop=True)
        elif "season" in da.coords:
            da = da.drop_vars("season")
        names = [f"{season}_{b}" for b in da["band"].values]
        arrays.append(da.assign_coords(band=names).rename(band="feature"))
    if terrain is not None:
        arrays.append(terrain["terrain"].rename(band="feature"))
        raw.append(terrain["terrain"].transpose(..., "y", "x").data)
    cube = xr.concat(arrays, dim="feature", coords="minimal", compat="override", join="exact")
    cube = cube.astype("float32")
    if all(isinstance(a, dsa.Array) for a in raw):
        # The same values as the concatenation, built as one blockwise layer straight from the stored
        # arrays: dask fuses it with the Zarr reads and the classification that follows, so a chunk of
        # the map is one task reading its own pixels (nothing moves between workers).
        cube = cube.copy(data=_stack_blockwise(raw))
    cube.name = "features"
    cube.attrs = {"long_name": "lcstack features"}
    if cube.chunks is not None:
        cube = cube.chunk({"feature": -1})
    return cube


def _stack_blocks(*blocks: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [b.reshape(-1, *b.shape[-2:]).astype(np.float32, copy=False) for b in blocks], axis=0
    )


def _stack_blockwise(arrays: list[dsa.Array]) -> dsa.Array:
    """Stack ``(..., y, x)`` dask arrays into ``(feature, y, x)`` with one blockwise layer."""
    ref = arrays[0].chunks[-2:]
    letters = iter("abcdefghijklmnopqrstuvw")
    args: list[object] = []
    n = 0
    for a in arrays:
        lead = a.ndim - 2
        if any(len(c) > 1 for c in a.chunks[:lead]) or a.chunks[-2:] != ref:
            a = a.rechunk({**{i: -1 for i in range(lead)}, lead: ref[0], lead + 1: ref[1]})
        args += [a, "".join(next(letters) for _ in range(lead)) + "yx"]
        n += int(np.prod(a.shape[:lead]))
    return dsa.blockwise(
        _stack_blocks,
        "fyx",
        *args,
        new_axes={"f": n},
        concatenate=True,  # leading axes are one chunk: each block arrives whole, not in a list
        dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32),
    )


def feature_names(cube: xr.DataArray) -> list[str]:
    """Return the feature names of a cube, in order."""
    return [str(v) for v in cube["feature"].values]


# ----------------------------------------------------------------------------------------------------
# A feature cube over stored composites whose tasks read their own pixels
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """One stored Zarr variable as it travels in a task graph: where it is, never its data."""

    url: str
    variable: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def __dask_tokenize__(self) -> tuple[str, str, str]:
        return ("lcstack.features._Source", self.url, self.variable)


_OPEN: OrderedDict[tuple[str, str], xr.DataArray] = OrderedDict()
_OPEN_LOCK = threading.Lock()
_OPEN_MAX = 64


def _open(src: _Source) -> xr.DataArray:
    """Open a stored variable lazily (metadata only), once per process; stores never change in place."""
    key = (src.url, src.variable)
    with _OPEN_LOCK:
        if key in _OPEN:
            _OPEN.move_to_end(key)
            return _OPEN[key]
    ds = Storage.for_url(src.url, src.storage_options).open_zarr(src.url, dask=False)
    var = ds[src.variable].transpose(..., "y", "x")
    with _OPEN_LOCK:
        _OPEN[key] = var
        while len(_OPEN) > _OPEN_MAX:
            _OPEN.popitem(last=False)
    return var


def _read_block(sources: tuple[_Source, ...], block_info: dict[Any, Any] | None = None) -> np.ndarray:
    """Read the ``(feature, y, x)`` window of this block from every source, in this task."""
    assert block_info is not None
    (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    parts = []
    for src in sources:
        window = np.asarray(_open(src)[..., y0:y1, x0:x1].values)
        parts.append(window.reshape(-1, y1 - y0, x1 - x0))
    return _stack_blocks(*parts)


def open_feature_cube(
    composites: Mapping[str, str],
    terrain: str | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.DataArray:
    """Lazy ``(feature, y, x)`` cube over stored composites, one task per chunk reading its own pixels.

    The same cube as :func:`stack_features` of the opened stores (names, order, coordinates, values),
    but its graph has no read tasks: each block reads its window of every store where it runs (stores
    opened once per process), so a worker never fetches features from another worker, and dask fuses the
    reads with the classification that follows. Chunks are those of the first store.

    Parameters
    ----------
    composites : mapping
        Season name -> URL of its composite Zarr store (variable ``composite``), in feature order.
    terrain : str, optional
        URL of the terrain Zarr store (variable ``terrain``).
    storage_options : mapping, optional
        fsspec options for remote URLs.

    """
    opts = dict(storage_options or {})

    def lazy(url: str) -> xr.Dataset:
        return Storage.for_url(url, _opts(url, opts)).open_zarr(url)

    opened = {season: lazy(url) for season, url in composites.items()}
    terrain_ds = lazy(terrain) if terrain else None
    template = stack_features(opened, terrain_ds)
    sources = tuple(_Source(url, "composite", _opts(url, opts) or {}) for url in composites.values())
    if terrain:
        sources += (_Source(terrain, "terrain", _opts(terrain, opts) or {}),)
    data = dsa.map_blocks(
        _read_block,
        sources,
        chunks=template.data.chunks,
        dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32),
        name=f"lcstack-features-{tokenize(sources)}",
    )
    return template.copy(data=data)


def _opts(url: str, opts: Mapping[str, Any]) -> dict[str, Any] | None:
    """Return fsspec options for a remote URL, none for a local path (S3 options must not reach it)."""
    return None if _is_local(url) else dict(opts)
