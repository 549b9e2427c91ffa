from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords
from pyproj import Transformer

from lcstack.errors import InputFileNotFoundError, InvalidInputError, SkippedPointsWarning
from lcstack.samples import SampleTable, extract_samples, read_samples, write_samples

LC = {"crop": 1, "forest": 2, "water": 3}
SL = {"wheat": 2, "maize": 3, "conifer": 4}
GEOBOX = GeoBox.from_bbox((500_000, 4_000_000, 500_200, 4_000_160), crs="EPSG:32630", resolution=10)  # 20x16
TO_LONLAT = Transformer.from_crs("EPSG:32630", "EPSG:4326", always_xy=True)


def _cube(nan_pixel=None):
    ny, nx = GEOBOX.shape.y, GEOBOX.shape.x
    data = np.arange(3 * ny * nx, dtype=np.float32).reshape(3, ny, nx)
    if nan_pixel is not None:
        data[:2, nan_pixel[0], nan_pixel[1]] = np.nan  # no season observed this pixel
    coords = {"feature": ["spring_red", "spring_nir", "elevation"], **xr_coords(GEOBOX)}
    da = xr.DataArray(data, dims=("feature", "y", "x"), coords=coords, name="features")
    return da.chunk({"feature": -1, "y": 8, "x": 8}), data


def _point(row, col, dx=0.3, dy=0.7):
    """Lon/lat inside pixel (row, col), offset from its corner by a fraction of the pixel."""
    x = GEOBOX.affine.c + (col + dx) * 10
    y = GEOBOX.affine.f - (row + dy) * 10
    return TO_LONLAT.transform(x, y)


def _points(cells, cats, subs, lines=None):
    lonlat = [_point(r, c) for r, c in cells]
    df = pd.DataFrame(
        {
            "latitude": [p[1] for p in lonlat],
            "longitude": [p[0] for p in lonlat],
            "category": cats,
            "subcategory": subs,
        }
    )
    if lines is not None:
        df["line"] = lines
    return df


def test_hits_exact_pixel():
    cube, data = _cube()
    cells = [(0, 0), (15, 19), (3, 7), (8, 8), (7, 8)]  # corners and chunk borders
    pts = _points(cells, ["crop", "forest", "water", "crop", 2], ["wheat", None, np.nan, "maize", "conifer"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedPointsWarning)
        out = extract_samples(cube, pts, lc_labels=LC, sl_labels=SL)
    assert isinstance(out, SampleTable)
    t = out.table
    expected = np.stack([data[:, r, c] for r, c in cells])
    np.testing.assert_array_equal(t[["spring_red", "spring_nir", "elevation"]].to_numpy(), expected)
    assert t["spring_red"].dtype == np.float32
    assert t["category"].tolist() == [1, 2, 3, 1, 2]
    assert t["subcategory"].tolist() == [2, 1, 1, 3, 4]
    assert t["category_name"].tolist() == ["crop", "forest", "water", "crop", "forest"]
    assert t["subcategory_name"].isna().tolist() == [False, True, True, False, False]
    assert t["subcategory_name"].dropna().tolist() == ["wheat", "maize", "conifer"]
    assert t["line"].tolist() == [2, 3, 4, 5, 6]
    assert list(t.columns[:3]) == ["spring_red", "spring_nir", "elevation"]
    assert out.feature_names == ["spring_red", "spring_nir", "elevation"]
    assert out.skipped_outside == [] and out.skipped_nodata == []


def test_skips_outside_and_nodata_with_lines():
    cube, data = _cube(nan_pixel=(4, 5))
    cells = [(1, 1), (-1, 3), (4, 5), (2, 20), (10, 10), (16, 0)]
    pts = _points(
        cells,
        ["crop", "crop", "forest", "water", "water", "forest"],
        [None] * 6,
        lines=[10, 11, 12, 13, 14, 15],
    )
    pts.loc[5, "latitude"], pts.loc[5, "longitude"] = _point(2, 2)[1], _point(2, 2)[0]
    with pytest.warns(SkippedPointsWarning, match=r"3 of 6 points.*2 outside.*lines 11, 13.*1 on nodata.*12"):
        out = extract_samples(cube, pts, lc_labels=LC, sl_labels=SL)
    assert out.skipped_outside == [11, 13]
    assert out.skipped_nodata == [12]
    assert out.table["line"].tolist() == [10, 14, 15]
    np.testing.assert_array_equal(
        out.table["elevation"].to_numpy(), [data[2, 1, 1], data[2, 10, 10], data[2, 2, 2]]
    )


def test_a_pixel_some_season_observed_keeps_its_missing_features():
    cube, data = _cube()
    data = data.copy()
    data[1, 3, 3] = np.nan  # spring_nir missing, spring_red observed
    cube = cube.copy(data=data).chunk({"feature": -1, "y": 8, "x": 8})
    out = extract_samples(cube, _points([(3, 3)], ["crop"], [None], lines=[2]), lc_labels=LC, sl_labels=SL)
    assert out.skipped_nodata == []
    assert np.isnan(out.table["spring_nir"].iloc[0]) and out.table["spring_red"].iloc[0] == data[0, 3, 3]


def test_edge_points_just_outside_are_not_snapped():
    cube, _ = _cube()
    lon, lat = TO_LONLAT.transform(GEOBOX.affine.c - 0.5, GEOBOX.affine.f - 5)  # 0.5 m west of the cube
    pts = pd.DataFrame(
        {
            "latitude": [lat, _point(0, 0)[1]],
            "longitude": [lon, _point(0, 0)[0]],
            "category": ["crop", "crop"],
        }
    )
    with pytest.warns(SkippedPointsWarning):
        out = extract_samples(cube, pts, lc_labels=LC, sl_labels=None)
    assert out.skipped_outside == [2]
    assert out.table["subcategory"].tolist() == [1]


def test_emptied_category_raises():
    cube, _ = _cube(nan_pixel=(4, 5))
    pts = _points([(1, 1), (4, 5), (-3, 0)], ["crop", "forest", "forest"], [None] * 3)
    with (
        pytest.warns(SkippedPointsWarning),
        pytest.raises(
            InvalidInputError,
            match=r"'forest' \(code 2\): 1 point\(s\) outside the cube, 1 on nodata \(lines 3, 4\)",
        ),
    ):
        extract_samples(cube, pts, lc_labels=LC, sl_labels=SL)
    with pytest.warns(SkippedPointsWarning):
        out = extract_samples(cube, pts, lc_labels=LC, sl_labels=SL, check_empty=False)
    assert out.table["category_name"].tolist() == ["crop"]


def test_unknown_labels_name_the_line():
    cube, _ = _cube()
    pts = _points([(1, 1), (2, 2)], ["crop", "urban"], [None, None])
    with pytest.raises(InvalidInputError, match=r"line 3: 'urban'.*lc_labels.json"):
        extract_samples(cube, pts, lc_labels=LC, sl_labels=SL)
    pts = _points([(1, 1), (2, 2)], ["crop", "crop"], ["wheat", "rice"], lines=[7, 9])
    with pytest.raises(InvalidInputError, match=r"line 9: 'rice'.*sl_labels.json"):
        extract_samples(cube, pts, lc_labels=LC, sl_labels=SL)
    with pytest.raises(InvalidInputError, match="no sl_labels"):
        extract_samples(cube, pts, lc_labels=LC, sl_labels=None)


def test_only_needed_pixels_computed():
    import dask

    cube, data = _cube()
    calls = []

    def count(*args, **kwargs):
        calls.append(1)
        return dask.get(*args, **kwargs)

    pts = _points([(1, 1)], ["crop"], [None])
    with dask.config.set(scheduler=count):
        out = extract_samples(cube, pts, lc_labels=LC, sl_labels=SL)
    assert len(calls) == 1
    assert out.table["spring_red"].iloc[0] == data[0, 1, 1]


def test_parquet_roundtrip(tmp_path):
    cube, _ = _cube()
    out = extract_samples(
        cube, _points([(1, 1), (2, 3)], ["crop", "water"], ["wheat", None]), lc_labels=LC, sl_labels=SL
    )
    write_samples(out, tmp_path / "s" / "samples.parquet")
    back = read_samples(tmp_path / "s" / "samples.parquet")
    pd.testing.assert_frame_equal(back, out.table)
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["samples.parquet"]
    write_samples(out.table, "memory://samples/x.parquet")
    pd.testing.assert_frame_equal(read_samples("memory://samples/x.parquet"), out.table)
    with pytest.raises(InputFileNotFoundError):
        read_samples(tmp_path / "missing.parquet")
