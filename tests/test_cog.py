from __future__ import annotations

import os

import dask.array as dsa
import fsspec
import numpy as np
import pytest
import rasterio
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_zeros
from rasterio.enums import ColorInterp
from rio_cogeo.cogeo import cog_validate

from lcstack.classify import flag_attrs
from lcstack.cog import default_colors, write_cog
from lcstack.errors import InvalidInputError

LABELS = {"water": 1, "forest": 2, "cropland": 3, "builtUp": 4, "bare soil": 5}
COLORS = {
    0: (0, 0, 0, 0),
    1: (0, 0, 255, 255),
    2: (0, 128, 0, 255),
    3: (255, 255, 0, 255),
    4: (255, 0, 0, 255),
    5: (200, 160, 120, 255),
}
NY, NX = 1100, 1300  # two overview levels with 512 tiles; chunks deliberately not aligned to tiles


def _geobox() -> GeoBox:
    return GeoBox.from_bbox(
        (400000, 4500000, 400000 + NX * 10, 4500000 + NY * 10), "EPSG:32630", resolution=10
    )


def _values(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 6, (NY, NX), dtype=np.uint8)
    values[:100, :100] = 0
    return values


def _map(values: np.ndarray, chunks=(300, 400)) -> xr.DataArray:
    template = xr_zeros(_geobox(), dtype="uint8")
    data = dsa.from_array(values, chunks=chunks) if chunks else values
    return xr.DataArray(data, dims=("y", "x"), coords=dict(template.coords), name="level1")


_CALLS: list[tuple[int, int]] = []


def _record(block):
    _CALLS.append(block.shape)
    return block


def test_write_cog_is_valid_cog_with_palette_overviews_and_grid(tmp_path):
    values = _values()
    da = _map(values)
    counted = da.copy(data=dsa.map_blocks(_record, da.data, dtype=np.uint8))
    _CALLS.clear()
    path = write_cog(
        counted, tmp_path / "out" / "map.tif", labels=LABELS, colors=COLORS, max_blocks_in_flight=3
    )
    assert path == str(tmp_path / "out" / "map.tif")
    # Computed chunk by chunk: each dask block exactly once, never the whole array.
    assert sorted(_CALLS) == sorted((h, w) for h in da.chunks[0] for w in da.chunks[1])

    valid, errors, warnings = cog_validate(path)
    assert valid and errors == [], (errors, warnings)
    gbox = _geobox()
    with rasterio.open(path) as src:
        assert src.count == 1 and src.dtypes[0] == "uint8"
        assert src.crs.to_epsg() == 32630
        assert src.transform.almost_equals(gbox.affine)
        assert (src.height, src.width) == gbox.shape
        assert src.nodata == 0
        assert src.block_shapes[0] == (512, 512)
        assert src.compression.name.lower() == "deflate"
        assert src.overviews(1) == [2, 4]
        assert src.tags()["OVERVIEW_RESAMPLING"] == "NEAREST"
        assert src.colorinterp[0] == ColorInterp.palette
        cmap = src.colormap(1)
        for code, rgba in COLORS.items():
            assert cmap[code] == rgba
        np.testing.assert_array_equal(src.read(1), values)
        # Nearest overviews hold only existing class codes.
        assert set(np.unique(src.read(1, out_shape=(NY // 4, NX // 4)))) <= set(range(6))
        assert src.tags(1)["CLASS_5"] == "bare soil"
        assert src.tags(1)["flag_meanings"] == "water forest cropland builtUp bare_soil"
        assert '"builtUp": 4' in src.tags()["LCSTACK_LABELS"]
        assert src.descriptions[0] == "level1"
    assert os.listdir(tmp_path / "out") == ["map.tif"]  # no temporary files left behind


def test_write_cog_default_colors_and_labels_from_cf_attrs(tmp_path):
    da = _map(_values(), chunks=None)
    da.attrs.update(flag_attrs(LABELS, long_name="land cover category (level 1)"))
    path = write_cog(da, str(tmp_path / "map.tif"))
    expected = default_colors(LABELS)
    with rasterio.open(path) as src:
        cmap = src.colormap(1)
        assert all(cmap[c] == rgba for c, rgba in expected.items())
        assert src.tags(1)["CLASS_0"] == "nodata" and src.tags(1)["CLASS_2"] == "forest"
        assert src.descriptions[0] == "land cover category (level 1)"
        np.testing.assert_array_equal(src.read(1), da.values)


def test_write_cog_overwrites_atomically(tmp_path):
    target = tmp_path / "map.tif"
    target.write_bytes(b"old")
    write_cog(_map(_values(1)), target, labels=LABELS)
    with rasterio.open(target) as src:
        np.testing.assert_array_equal(src.read(1), _values(1))
    assert sorted(os.listdir(tmp_path)) == ["map.tif"]


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_write_cog_to_fsspec_url(tmp_path, scheme):
    values = _values(2)
    url = "memory://lcstack-cog/maps/t1.tif" if scheme == "memory" else f"file://{tmp_path}/maps/t1.tif"
    assert write_cog(_map(values), url, labels=LABELS, colors=COLORS) == url
    with fsspec.open(url, "rb") as f:
        blob = f.read()
    local = tmp_path / "copy.tif"
    local.write_bytes(blob)
    valid, errors, _ = cog_validate(str(local))
    assert valid and errors == []
    with rasterio.open(local) as src:
        np.testing.assert_array_equal(src.read(1), values)
        assert src.colormap(1)[1] == COLORS[1]


def test_default_colors():
    labels = {
        "water": 1,
        "Forest": 2,
        "cropland": 3,
        "builtUp": 4,
        "bareSoil": 5,
        "grassland": 6,
        "shrubland": 7,
        "wetland": 8,
        "mystery": 9,
        "coniferous forest": 10,
    }
    colors = default_colors(labels)
    assert colors[0] == (0, 0, 0, 0)
    r, g, b, a = colors[1]
    assert b > r and b > g and a == 255  # water blue
    assert colors[2] == (0, 100, 0, 255)  # forest dark green
    r, g, b, _ = colors[3]
    assert r > 200 and g > 180 and b < 100  # cropland yellow
    r, g, b, _ = colors[4]
    assert r > 180 and g < 80 and b < 80  # built-up red
    assert colors[5] == (210, 180, 140, 255)  # bare soil tan
    r, g, b, _ = colors[6]
    assert g > r and g > b and g > 200  # grassland light green
    assert colors[7] == (128, 128, 0, 255)  # shrubland olive
    r, g, b, _ = colors[8]
    assert g == b and r < 50  # wetland teal
    assert colors[10] != colors[2]  # a second forest class gets another shade
    assert colors == default_colors(dict(reversed(labels.items())))  # deterministic
    assert len({colors[c] for c in range(1, 11)}) == 10


def test_write_cog_rejects_bad_input(tmp_path):
    da = _map(_values())
    with pytest.raises(InvalidInputError, match="uint8"):
        write_cog(da.astype("float32"), tmp_path / "a.tif")
    with pytest.raises(InvalidInputError, match="spatial_ref"):
        write_cog(xr.DataArray(np.zeros((4, 4), np.uint8), dims=("y", "x")), tmp_path / "b.tif")
    with pytest.raises(InvalidInputError, match="colors"):
        write_cog(da, tmp_path / "c.tif", colors={1: (300, 0, 0)})
    assert not list(tmp_path.iterdir())
