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


def test_cube_over_stored_composites_reads_in_its_own_tasks(tmp_path):
    from lcstack.features import open_feature_cube

    bands = ["red", "nir", "ndvi"]
    urls = {}
    for i, season in enumerate(["spring", "summer"]):
        urls[season] = str(tmp_path / f"{season}.zarr")
        _season(season, bands, i, {"band": -1, "y": 8, "x": 5}).to_zarr(
            urls[season], consolidated=True, zarr_format=2
        )
    terrain = str(tmp_path / "terrain.zarr")
    _terrain({"band": 1, "y": 8, "x": 5}).to_zarr(terrain, consolidated=True, zarr_format=2)
    expected = stack_features(
        {s: xr.open_zarr(u, chunks={}) for s, u in urls.items()}, xr.open_zarr(terrain, chunks={})
    )
    cube = open_feature_cube(urls, "file://" + terrain)
    # one task per chunk and nothing else: no read task whose output would travel between workers
    graph = dict(cube.data.__dask_graph__())
    assert len(graph) == cube.data.npartitions == 3 * 4
    assert cube.data.chunks == ((9,), (8, 8, 7), (5, 5, 5, 2))
    assert feature_names(cube) == feature_names(expected)
    xr.testing.assert_identical(cube.compute(scheduler="sync"), expected.compute())
    # a window anywhere in the cube (blocks straddled) reads the same pixels
    xr.testing.assert_identical(
        cube.isel(y=slice(5, 20), x=slice(3, 11)).compute(),
        expected.isel(y=slice(5, 20), x=slice(3, 11)).compute(),
    )
