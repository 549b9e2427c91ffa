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


def float_bands(refl: xr.Dataset) -> list[str]:
    """Return the float reflectance bands with a ``time`` dim of ``refl`` (``scl`` left out)."""
    return [
        name
        for name, da in refl.data_vars.items()
        if name != "scl" and "time" in da.dims and np.issubdtype(da.dtype, np.floating)
    ]


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


# ----------------------------------------------------------------------------------------------------
# Feature sets: what a seasonal composite holds besides the median (lcstack.config.FeaturesConfig)
# ----------------------------------------------------------------------------------------------------


def feature_spec(features: Any) -> dict[str, Any] | None:
    """Return a feature set as a plain dict (percentiles, std, ...); ``None`` for the median only.

    ``features`` is a :class:`lcstack.config.FeaturesConfig`, its ``model_dump()``, the preset name
    ``"landcoverpy"`` or ``None``. The dict tokenizes and pickles the same everywhere (Dask workers).
    """
    if features is None or features == "landcoverpy":
        return None
    raw = features.model_dump() if hasattr(features, "model_dump") else dict(features)
    spec = {
        "percentiles": tuple(float(q) for q in raw.get("percentiles") or ()),
        "std": bool(raw.get("std", False)),
        "count": bool(raw.get("count", False)),
        "scenes": int(raw.get("scenes") or 0),
        "context": dict(raw["context"]) if raw.get("context") else None,
    }
    if spec["context"] is not None:
        ctx = spec["context"]
        spec["context"] = {
            "window": int(ctx["window"]),
            "bands": tuple(ctx["bands"]),
            "stats": tuple(ctx["stats"]),
        }
    if not (spec["percentiles"] or spec["std"] or spec["count"] or spec["scenes"] or spec["context"]):
        return None
    return spec


def _percentile_label(q: float) -> str:
    return f"p{q:g}"


def nanpercentile_time(a: np.ndarray, q: float) -> np.ndarray:
    """Return the ``q``-th percentile over axis 0, ignoring NaN (NumPy's ``linear`` method), float32.

    Vectorised (one sort of the time axis) where ``np.nanpercentile`` loops over pixels; NaN where a
    pixel has no valid observation.
    """
    a = np.asarray(a, dtype=np.float32)
    ordered = np.sort(a, axis=0)  # NaN sort last
    n = (~np.isnan(a)).sum(axis=0)
    pos = np.maximum(n - 1, 0) * (q / 100.0)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    v_lo = np.take_along_axis(ordered, lo[None], axis=0)[0].astype(np.float64)
    v_hi = np.take_along_axis(ordered, hi[None], axis=0)[0].astype(np.float64)
    out = (v_lo + (v_hi - v_lo) * (pos - lo)).astype(np.float32)
    out[n == 0] = np.nan
    return out


def nanstd_time(a: np.ndarray) -> np.ndarray:
    """Return the standard deviation (ddof 0) over axis 0 ignoring NaN, float32 (NaN: no observation)."""
    a = np.asarray(a, dtype=np.float64)
    n = (~np.isnan(a)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(a, axis=0) / n
        out = np.sqrt(np.nansum((a - mean) ** 2, axis=0) / n)
    return out.astype(np.float32)


def _over_time(da: xr.DataArray, func: Any, **kw: Any) -> xr.DataArray:
    """``func`` reducing axis 0 (``time``) of ``da``, block by block when ``da`` is dask-backed."""
    da = da.transpose("time", ...)
    data = da.data
    meta = np.empty((0,) * (da.ndim - 1), np.float32)
    if isinstance(data, dsa.Array):
        out = data.rechunk({0: -1}).map_blocks(func, drop_axis=0, dtype=np.float32, meta=meta, **kw)
    else:
        out = func(np.asarray(data), **kw)
    coords = {k: v for k, v in da.coords.items() if "time" not in v.dims}
    return xr.DataArray(out, dims=da.dims[1:], coords=coords)


def _scene(da: xr.DataArray, i: int) -> xr.DataArray:
    """Return the ``i``-th observation of ``da`` in time order (NaN when the season has fewer)."""
    da = da.sortby("time") if "time" in da.coords else da
    if i < da.sizes["time"]:
        return da.isel(time=i, drop=True)
    return xr.full_like(da.isel(time=0, drop=True), np.nan)


def time_features(
    refl: xr.Dataset, valid: xr.DataArray, indices: list[str], spec: dict[str, Any]
) -> dict[str, xr.DataArray]:
    """Compute the features over a season's valid observations of its bands and indices: name -> (y, x).

    Percentiles (``<name>_p10``), standard deviation (``<name>_std``), the number of valid observations
    (``count``) and the individual scenes (``<name>_scene1``, ... in time order), per band of ``refl``
    and per index of ``indices`` computed observation by observation.
    """
    from .indices import compute_indices

    bands = float_bands(refl)
    masked = xr.Dataset({b: refl[b].astype(np.float32).where(valid) for b in bands})
    if indices and (spec["percentiles"] or spec["std"] or spec["scenes"]):
        masked = masked.merge(compute_indices(masked, indices), compat="override", join="exact")
    names = bands + [n for n in indices if n in masked]
    out: dict[str, xr.DataArray] = {}
    for q in spec["percentiles"]:
        for name in names:
            out[f"{name}_{_percentile_label(q)}"] = _over_time(masked[name], nanpercentile_time, q=q)
    if spec["std"]:
        for name in names:
            out[f"{name}_std"] = _over_time(masked[name], nanstd_time)
    if spec["count"]:
        count = valid.sum("time", dtype=np.int32).astype(np.float32)
        out["count"] = count.drop_vars([c for c in valid.coords if "time" in valid[c].dims], errors="ignore")
    for i in range(spec["scenes"]):
        for name in names:
            out[f"{name}_scene{i + 1}"] = _scene(masked[name], i)
    return out


def _box_sum(a: np.ndarray, r: int) -> np.ndarray:
    """Sum over the ``(2r+1)²`` window of the last two axes of ``a`` (shrinks them by ``2r``).

    Plain shifted adds in a fixed order, so a pixel's sum does not depend on where its block starts: a
    chunked result is bit-identical to the whole-array one (a running sum would not be).
    """
    ny, nx = a.shape[-2] - 2 * r, a.shape[-1] - 2 * r
    rows = sum(a[..., i : i + ny, :] for i in range(2 * r + 1))
    return sum(rows[..., :, j : j + nx] for j in range(2 * r + 1))  # type: ignore[index]


def _window_block(block: np.ndarray, *, r: int, stats: tuple[str, ...]) -> np.ndarray:
    """Window statistics of a ``(season, band, y+2r, x+2r)`` block padded with NaN: ``(s, b*stats, y, x)``."""
    ok = np.isfinite(block)
    x = np.where(ok, block, 0).astype(np.float64)
    n = _box_sum(ok.astype(np.float64), r)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = _box_sum(x, r) / n
        parts = []
        for stat in stats:
            if stat == "mean":
                parts.append(mean)
            else:
                parts.append(np.sqrt(np.maximum(_box_sum(x * x, r) / n - mean**2, 0.0)))
    out = np.stack(parts, axis=2)  # (s, b, stat, y, x): names are band-major
    return out.reshape(out.shape[0], -1, *out.shape[-2:]).astype(np.float32)


def add_context(composite: xr.DataArray, context: Mapping[str, Any]) -> xr.DataArray:
    """Append spatial context features to a ``(season, band, y, x)`` composite.

    For each band (or index) in ``context["bands"]`` and each statistic in ``context["stats"]``
    (``mean``, ``std``), the statistic of its median over the ``window``×``window`` neighbourhood
    (NaN ignored, the area outside the grid counts as NaN), named ``<band>_ctx<window>_<stat>``. On dask
    arrays through :func:`dask.array.overlap.overlap` (halo of ``window // 2``): no seams.
    """
    window, stats = int(context["window"]), tuple(context["stats"])
    have = [str(b) for b in composite["band"].values]
    missing = [b for b in context["bands"] if b not in have]
    if missing:
        raise InvalidInputError(
            f"features.context.bands: {missing} are not bands or indices of the composite ({have}); "
            "name bands or indices that the composite computes."
        )
    r = window // 2
    pos = [have.index(b) for b in context["bands"]]
    data = composite.transpose("season", "band", "y", "x").data
    sel = data[:, pos]
    if isinstance(sel, dsa.Array):
        sel = sel.rechunk({0: -1, 1: -1})
        padded = dsa.overlap.overlap(sel, depth={2: r, 3: r}, boundary={2: np.nan, 3: np.nan})
        ctx = padded.map_blocks(
            _window_block,
            r=r,
            stats=stats,
            chunks=(sel.chunks[0], (len(pos) * len(stats),), sel.chunks[2], sel.chunks[3]),
            dtype=np.float32,
            meta=np.empty((0, 0, 0, 0), np.float32),
        )
        stacked = dsa.concatenate([data, ctx], axis=1).rechunk({1: -1})
    else:
        padded = np.pad(np.asarray(sel), ((0, 0), (0, 0), (r, r), (r, r)), constant_values=np.nan)
        stacked = np.concatenate([np.asarray(data), _window_block(padded, r=r, stats=stats)], axis=1)
    names = have + [f"{b}_ctx{window}_{s}" for b in context["bands"] for s in stats]
    coords = {k: v for k, v in composite.coords.items() if "band" not in v.dims}
    out = xr.DataArray(stacked, dims=("season", "band", "y", "x"), coords=coords, attrs=dict(composite.attrs))
    out.name = composite.name  # not the dask array's name
    return out.assign_coords(band=np.array(names, dtype=str))
