"""The `.landcover` accessor: thin shims over the public functions, no state, lazy in and lazy out."""

from __future__ import annotations

import datetime as dt

import dask
import dask.array as dsa
import numpy as np
import pytest
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords

import lcstack  # noqa: F401  (registers the accessor)
from lcstack.composite import cloud_mask, median_composite
from lcstack.errors import InvalidInputError
from lcstack.indices import compute_indices
from lcstack.inputs import Season

BANDS = ("blue", "green", "red", "rededge1", "nir", "nir08", "swir16")


def _series(n_time: int = 6, size: int = 32, chunks: int = 16) -> xr.Dataset:
    gbox = GeoBox.from_bbox(
        (360000, 4079680, 360000 + 10 * size, 4079680 + 10 * size), "EPSG:32630", resolution=10
    )
    rng = np.random.default_rng(0)
    times = [np.datetime64("2023-03-05") + np.timedelta64(20 * i, "D") for i in range(n_time)]
    coords = {"time": times, **xr_coords(gbox)}
    data = {
        b: (
            ("time", "y", "x"),
            dsa.from_array(
                rng.uniform(0.01, 0.6, (n_time, size, size)).astype("float32"),
                chunks=(n_time, chunks, chunks),
            ),
        )
        for b in BANDS
    }
    scl = rng.choice([4, 4, 4, 5, 8, 9, 3], size=(n_time, size, size)).astype("uint8")
    data["scl"] = (("time", "y", "x"), dsa.from_array(scl, chunks=(n_time, chunks, chunks)))
    return xr.Dataset(data, coords=coords)


def test_indices_shim_equals_function() -> None:
    ds = _series().isel(time=0).drop_vars("scl")
    got = ds.landcover.indices(["ndvi", "mndwi"])
    want = compute_indices(ds, ["ndvi", "mndwi"])
    xr.testing.assert_identical(got, want)
    red, nir = ds["red"].values, ds["nir"].values
    np.testing.assert_allclose(got["ndvi"].values, (nir - red) / (nir + red), rtol=1e-6)


def test_composite_per_season_is_lazy_and_matches_functions() -> None:
    ds = _series()
    seasons = {
        "spring": Season("spring", dt.date(2023, 3, 1), dt.date(2023, 5, 31)),
        "summer": Season("summer", dt.date(2023, 6, 1), dt.date(2023, 8, 31)),
    }
    with dask.config.set(scheduler="sync"):
        out = ds.landcover.composite(seasons, indices=["ndvi"])
    assert dask.is_dask_collection(out["composite"]), "nothing computed until asked"
    assert list(out["season"].values) == ["spring", "summer"]
    assert list(out["band"].values) == [*BANDS, "ndvi"]
    spring = ds.sel(time=slice("2023-03-01", "2023-05-31"))
    invalid = cloud_mask(spring["scl"], classes=(3, 8, 9, 10, 11))
    want = median_composite(spring.drop_vars("scl"), invalid)
    np.testing.assert_allclose(out["composite"].sel(season="spring", band="red").values, want["red"].values)
    np.testing.assert_array_equal(out["valid_count"].sel(season="spring").values, want["valid_count"].values)


def test_composite_needs_time_and_scenes() -> None:
    ds = _series()
    with pytest.raises(InvalidInputError, match="`time` dimension"):
        ds.isel(time=0).landcover.composite({})
    winter = {"winter": Season("winter", dt.date(2022, 12, 1), dt.date(2023, 1, 31))}
    with pytest.raises(InvalidInputError, match="season 'winter': no scene"):
        ds.landcover.composite(winter)


def test_classify_needs_features() -> None:
    with pytest.raises(InvalidInputError, match="neither a `features` nor a `composite`"):
        _series().landcover.classify("somewhere")
    with pytest.raises(InvalidInputError, match="`feature` dimension"):
        _series()["red"].landcover.classify("somewhere")
