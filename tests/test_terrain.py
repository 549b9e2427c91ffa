"""Tests for lcstack.terrain: Horn slope/aspect on planes, chunked == NumPy reference, DEM loading."""

from __future__ import annotations

import datetime as dt

import dask.array as dsa
import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_zeros

from lcstack.errors import InvalidInputError
from lcstack.terrain import load_terrain, terrain_features

RES = 10.0


def _grid(ny=12, nx=15, res=RES) -> GeoBox:
    return GeoBox.from_bbox(
        (400_000, 4_000_000, 400_000 + nx * res, 4_000_000 + ny * res), "EPSG:32630", resolution=res
    )


def _plane(gbox: GeoBox, east: float, north: float) -> xr.DataArray:
    """z = 100 + east * x + north * y (gradients in m/m)."""
    dem = xr_zeros(gbox, dtype="float32")
    x, y = np.meshgrid(dem.x.values - dem.x.values[0], dem.y.values - dem.y.values[-1])
    return dem.copy(data=(100 + east * x + north * y).astype(np.float32))


@pytest.mark.parametrize(
    ("east", "north", "slope", "aspect"),
    [
        (0.1, 0.0, np.degrees(np.arctan(0.1)), 270.0),  # rises to the east: faces west
        (-0.1, 0.0, np.degrees(np.arctan(0.1)), 90.0),  # faces east
        (0.0, 1.0, 45.0, 180.0),  # rises to the north: faces south
        (0.0, -1.0, 45.0, 0.0),  # faces north
        (0.3, 0.4, np.degrees(np.arctan(0.5)), 180.0 + np.degrees(np.arctan2(0.3, 0.4))),  # faces SW
    ],
)
def test_tilted_plane(east, north, slope, aspect):
    ds = terrain_features(_plane(_grid(), east, north))
    t = ds["terrain"]
    assert t.dims == ("band", "y", "x") and t.dtype == np.float32
    assert list(t["band"].values) == ["elevation", "slope", "aspect"]
    # interior pixels (edge replication flattens the outer ring)
    inner = t[:, 1:-1, 1:-1]
    np.testing.assert_allclose(inner.sel(band="slope").values, slope, atol=1e-3)
    got = inner.sel(band="aspect").values
    diff = np.abs((got - aspect + 180) % 360 - 180)
    assert diff.max() < 1e-3
    assert ds.odc.geobox == _grid()


def test_flat_has_zero_slope_and_flat_aspect():
    t = terrain_features(_plane(_grid(), 0.0, 0.0))["terrain"]
    np.testing.assert_array_equal(t.sel(band="slope").values, 0)
    assert (t.sel(band="aspect").values == -1.0).all()


def test_pixel_size_comes_from_the_geobox():
    t20 = terrain_features(_plane(_grid(res=20), 0.0, 1.0))["terrain"]
    np.testing.assert_allclose(t20.sel(band="slope").values[1:-1, 1:-1], 45.0, atol=1e-3)


def _numpy_reference(z: np.ndarray, dx: float, dy: float):
    p = np.pad(z.astype(np.float64), 1, mode="edge")
    dzdx = ((p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])) / (
        8 * dx
    )
    dzdn = ((p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:]) - (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:])) / (
        8 * dy
    )
    slope = np.degrees(np.arctan(np.sqrt(dzdx**2 + dzdn**2)))
    aspect = np.degrees(np.arctan2(-dzdx, -dzdn)) % 360
    aspect[(dzdx == 0) & (dzdn == 0)] = -1.0
    return slope, aspect


@pytest.mark.parametrize("chunks", [{"y": 5, "x": 4}, {"y": 12, "x": 2}, {"y": 3, "x": 15}])
def test_chunked_matches_numpy_reference_on_whole_array(chunks):
    rng = np.random.default_rng(1)
    dem = _plane(_grid(), 0.05, -0.02)
    dem.values += rng.normal(0, 3, dem.shape).astype(np.float32)
    eager = terrain_features(dem)["terrain"]
    lazy = terrain_features(dem.chunk(chunks))["terrain"]
    assert isinstance(lazy.data, dsa.Array)
    lazy = lazy.compute()
    np.testing.assert_array_equal(lazy.values, eager.values)
    slope, aspect = _numpy_reference(dem.values, RES, RES)
    np.testing.assert_allclose(eager.sel(band="slope").values, slope, atol=1e-4)
    np.testing.assert_allclose(eager.sel(band="aspect").values % 360, aspect, atol=1e-3)
    np.testing.assert_array_equal(eager.sel(band="elevation").values, dem.values)


def test_rejects_geographic_and_non_2d():
    geo = xr_zeros(GeoBox.from_bbox((0, 0, 1, 1), "EPSG:4326", resolution=0.1), dtype="float32")
    with pytest.raises(InvalidInputError, match="geographic"):
        terrain_features(geo)
    with pytest.raises(InvalidInputError, match="2-D"):
        terrain_features(_plane(_grid(), 0, 0).expand_dims(time=2))


def _write_dem(path, west, south, size, step, fn):
    lon = west + (np.arange(size) + 0.5) * step
    lat = south + size * step - (np.arange(size) + 0.5) * step
    z = fn(*np.meshgrid(lon, lat)).astype(np.float32)
    transform = rasterio.transform.from_origin(west, south + size * step, step, step)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype="float32",
        crs="EPSG:4326",
        transform=transform,
    ) as dst:
        dst.write(z, 1)
    geom = {
        "type": "Polygon",
        "coordinates": [
            [
                [west, south],
                [west + size * step, south],
                [west + size * step, south + size * step],
                [west, south + size * step],
                [west, south],
            ]
        ],
    }
    item = pystac.Item(
        path.stem,
        geom,
        [west, south, west + size * step, south + size * step],
        dt.datetime(2021, 4, 22, tzinfo=dt.UTC),
        {"proj:epsg": 4326},
        stac_extensions=["https://stac-extensions.github.io/projection/v1.1.0/schema.json"],
    )
    item.add_asset(
        "data",
        pystac.Asset(
            str(path),
            media_type=pystac.MediaType.COG,
            roles=["data"],
            extra_fields={"proj:shape": [size, size], "proj:transform": list(transform)[:6]},
        ),
    )
    return item


def test_load_terrain_mosaics_and_reprojects(tmp_path):
    # two 0.01-degree DEM tiles side by side, one smooth surface: elevation linear in lon/lat
    def surface(lon, lat):
        return 500 + 20000 * (lon + 4.3) + 10000 * (lat - 36.7)

    step = 0.0005
    items = [
        _write_dem(tmp_path / "w.tif", -4.31, 36.69, 20, step, surface),
        _write_dem(tmp_path / "e.tif", -4.30, 36.69, 20, step, surface),
    ]
    gbox = _utm_box()  # straddles the seam at lon -4.30
    ds = load_terrain(items, gbox, chunks={"y": 16, "x": 16})
    t = ds["terrain"]
    assert t.dims == ("band", "y", "x") and ds.odc.geobox == gbox
    elev = t.sel(band="elevation").values
    assert not np.isnan(elev).any()  # the mosaic covers the seam between the two tiles
    # compare with the surface evaluated at the pixel centres (bilinear is exact on a linear surface)
    from pyproj import Transformer

    xx, yy = np.meshgrid(t.x.values, t.y.values)
    lon, lat = Transformer.from_crs(32630, 4326, always_xy=True).transform(xx, yy)
    np.testing.assert_allclose(elev, surface(lon, lat), atol=0.5)
    slope = t.sel(band="slope").values[1:-1, 1:-1]
    assert np.isfinite(slope).all() and slope.std() < 0.5


def _utm_box() -> GeoBox:
    from pyproj import Transformer

    x, y = Transformer.from_crs(4326, 32630, always_xy=True).transform(-4.3003, 36.695)
    x0, y0 = round(x / 10) * 10 - 200, round(y / 10) * 10 - 150
    return GeoBox.from_bbox((x0, y0, x0 + 400, y0 + 300), "EPSG:32630", resolution=10)


def test_load_terrain_warns_nothing_on_many_threads(tmp_path):
    """Reprojecting the DEM on several dask threads at once leaks no ``NotGeoreferencedWarning``.

    rasterio silences that warning inside its in-memory datasets with ``warnings.catch_warnings``, which
    is not thread-safe: reprojecting many chunks concurrently let it through (issue 14, item 16).
    """
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    def surface(lon, lat):
        return 500 + 20000 * (lon + 4.3) + 10000 * (lat - 36.7)

    items = [_write_dem(tmp_path / "d.tif", -4.31, 36.69, 40, 0.0005, surface)]
    ds = load_terrain(items, _utm_box(), chunks={"y": 4, "x": 4})
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotGeoreferencedWarning)
        ds["terrain"].compute(scheduler="threads", num_workers=8)
