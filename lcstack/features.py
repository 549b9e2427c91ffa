"""The feature cube: seasonal composites and terrain stacked along one ``feature`` dimension."""

from __future__ import annotations

from collections.abc import Mapping

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
    for season, ds in composites.items():
        da = ds["composite"]
        if "season" in da.dims:
            da = da.isel(season=0, drop=True)
        elif "season" in da.coords:
            da = da.drop_vars("season")
        names = [f"{season}_{b}" for b in da["band"].values]
        arrays.append(da.assign_coords(band=names).rename(band="feature"))
    if terrain is not None:
        arrays.append(terrain["terrain"].rename(band="feature"))
    cube = xr.concat(arrays, dim="feature", coords="minimal", compat="override", join="exact")
    cube = cube.astype("float32")
    cube.name = "features"
    cube.attrs = {"long_name": "lcstack features"}
    if cube.chunks is not None:
        cube = cube.chunk({"feature": -1})
    return cube


def feature_names(cube: xr.DataArray) -> list[str]:
    """Return the feature names of a cube, in order."""
    return [str(v) for v in cube["feature"].values]
