"""Tests for lcstack.indices: formulas against hand values, NaN instead of inf, laziness."""

from __future__ import annotations

import logging

import dask
import dask.array as dsa
import numpy as np
import pytest
import xarray as xr

from lcstack.errors import InvalidInputError
from lcstack.indices import DEFAULT_INDICES, INDICES, compute_indices, compute_indices_array

# one pixel with round reflectances, and the index values worked out by hand
PIXEL = {
    "blue": 0.05,
    "green": 0.08,
    "red": 0.04,
    "rededge1": 0.12,
    "nir": 0.40,
    "nir08": 0.42,
    "swir16": 0.20,
}
HAND = {
    "ndvi": (0.40 - 0.04) / (0.40 + 0.04),  # 0.818181...
    "evi2": 2.5 * 0.36 / (0.40 + 0.096 + 1.0),  # 0.601604...
    "mndwi": (0.08 - 0.20) / 0.28,  # -0.428571...
    "ndre": (0.42 - 0.12) / 0.54,  # 0.555555...
    "osavi": 0.36 / 0.60,  # 0.6
    "cri1": 1 / 0.05 - 1 / 0.08,  # 20 - 12.5 = 7.5
    "ri": (0.04 - 0.08) / 0.12,  # -0.333333...
    "ndyi": (0.08 - 0.05) / 0.13,  # 0.230769...
    "moisture": (0.42 - 0.20) / 0.62,  # 0.354838...
}


def _dataset(values: dict[str, float], shape=(3, 4)) -> xr.Dataset:
    return xr.Dataset({b: (("y", "x"), np.full(shape, v, np.float32)) for b, v in values.items()})


def test_default_indices_and_registry():
    assert DEFAULT_INDICES == ("ndvi", "evi2", "mndwi", "ndre", "osavi", "cri1", "ri", "ndyi", "moisture")
    assert set(DEFAULT_INDICES) <= set(INDICES)
    assert INDICES["ndre"].bands == ("nir08", "rededge1")
    assert INDICES["ndyi"].bands == ("green", "blue")


@pytest.mark.parametrize("name", list(HAND))
def test_index_against_hand_value(name):
    out = compute_indices(_dataset(PIXEL), [name])
    assert out[name].dtype == np.float32
    np.testing.assert_allclose(out[name].values, HAND[name], rtol=1e-5)
    assert HAND["osavi"] == pytest.approx(0.6) and HAND["cri1"] == pytest.approx(7.5)


def test_division_by_zero_gives_nan_not_inf():
    zero = dict.fromkeys(PIXEL, 0.0)
    out = compute_indices(_dataset(zero))
    for name in DEFAULT_INDICES:
        if name in ("evi2", "osavi"):  # denominators have a constant: defined (0) at zero reflectance
            np.testing.assert_array_equal(out[name].values, 0)
            continue
        assert np.isnan(out[name].values).all(), name
    nan_in = compute_indices(_dataset({**PIXEL, "red": np.nan}), ["ndvi"])
    assert np.isnan(nan_in["ndvi"].values).all()


def test_missing_bands_are_skipped_with_a_warning(caplog):
    ds = _dataset({"red": 0.1, "nir": 0.3})
    with caplog.at_level(logging.WARNING, logger="lcstack.indices"):
        out = compute_indices(ds)
    assert set(out.data_vars) == {"ndvi", "evi2", "osavi"}
    assert "mndwi" in caplog.text and "swir16" in caplog.text
    with pytest.raises(InvalidInputError, match="unknown index"):
        compute_indices(ds, ["ndwi"])


def test_lazy_and_chunked_equals_in_memory():
    rng = np.random.default_rng(0)
    ds = xr.Dataset({b: (("time", "y", "x"), rng.random((2, 9, 7), dtype=np.float32)) for b in PIXEL})
    ds["blue"][0, 0, 0] = 0.0
    eager = compute_indices(ds)

    def boom(*a, **k):
        raise AssertionError("computed early")

    with dask.config.set(scheduler=boom):
        lazy = compute_indices(ds.chunk({"time": 1, "y": 4, "x": 3}))
    assert all(isinstance(v.data, dsa.Array) for v in lazy.data_vars.values())
    lazy = lazy.compute(scheduler="sync")
    for name in DEFAULT_INDICES:
        np.testing.assert_array_equal(lazy[name].values, eager[name].values)
    assert np.isnan(eager["cri1"].values[0, 0, 0])


def test_band_dim_helper():
    da = _dataset(PIXEL).to_dataarray(dim="band")
    out = compute_indices_array(da, ["ndvi", "ri"])
    assert out.dims == ("band", "y", "x") and list(out["band"].values) == ["ndvi", "ri"]
    np.testing.assert_allclose(out.sel(band="ri").values, HAND["ri"], rtol=1e-5)
    with pytest.raises(InvalidInputError):
        compute_indices_array(da.sel(band=["blue"]), ["ndvi"])
