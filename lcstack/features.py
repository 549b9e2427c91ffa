"""The feature cube: seasonal composites and terrain stacked along one ``feature`` dimension."""

from __future__ import annotations

from collections.abc import Mapping

import dask.array as dsa
import numpy as np
import xarray as xr

from .errors import InvalidInputError

__all__ = ["stack_features", "feature_names"]


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
