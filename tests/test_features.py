"""The feature cube stacks seasonal composites and terrain in a fixed, named order."""

from __future__ import annotations

import dask.array as dsa
import numpy as np
import pytest
import xarray as xr

from lcstack.features import feature_names, stack_features


def _season(name: str, bands: list[str], seed: int, chunks: dict[str, int] | None) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    data = rng.random((1, len(bands), 23, 17), dtype=np.float32)
    data[0, 0, :3, :4] = np.nan
    comp = xr.DataArray(
        data,
        dims=("season", "band", "y", "x"),
        coords={"season": [name], "band": bands, "y": np.arange(23.0), "x": np.arange(17.0)},
    )
    ds = xr.Dataset({"composite": comp})
    return ds.chunk(chunks) if chunks else ds


def _terrain(chunks: dict[str, int] | None) -> xr.Dataset:
    data = np.arange(3 * 23 * 17, dtype=np.float64).reshape(3, 23, 17)
    t = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={"band": ["elevation", "slope", "aspect"], "y": np.arange(23.0), "x": np.arange(17.0)},
    )
    ds = xr.Dataset({"terrain": t})
    return ds.chunk(chunks) if chunks else ds


@pytest.mark.parametrize(
    ("season_chunks", "terrain_chunks"),
    [
        ({"band": -1, "y": 8, "x": 5}, {"band": -1, "y": 8, "x": 5}),  # the workflow's layout
        ({"band": 1, "y": 8, "x": 5}, {"band": 1, "y": 11, "x": 17}),  # per-band chunks, other y/x chunks
    ],
)
def test_dask_cube_equals_the_in_memory_cube(season_chunks, terrain_chunks):
    bands = ["red", "nir", "ndvi"]
    eager = stack_features(
        {"spring": _season("spring", bands, 0, None), "summer": _season("summer", bands, 1, None)},
        _terrain(None),
    )
    lazy = stack_features(
        {
            "spring": _season("spring", bands, 0, season_chunks),
            "summer": _season("summer", bands, 1, season_chunks),
        },
        _terrain(terrain_chunks),
    )
    assert feature_names(lazy) == [
        *(f"spring_{b}" for b in bands),
        *(f"summer_{b}" for b in bands),
        "elevation",
        "slope",
        "aspect",
    ]
    assert isinstance(lazy.data, dsa.Array) and lazy.dtype == np.float32
    # feature axis in one chunk; y/x chunks those of the first season
    assert lazy.data.chunks == ((9,), (8, 8, 7), (5, 5, 5, 2))
    xr.testing.assert_identical(lazy.compute(), eager)
