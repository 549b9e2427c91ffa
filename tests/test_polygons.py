"""Training data beyond points: GeoJSON / GeoPackage / Parquet readers, polygons sampled into pixels, and
splits that keep one polygon's pixels together."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords
from pyproj import Transformer

from lcstack.errors import InvalidInputError, SkippedPointsWarning
from lcstack.evaluate import location_split, spatial_folds
from lcstack.inputs import read_points
from lcstack.samples import cap_polygon_samples, extract_samples

DATA = Path(__file__).parent / "data" / "landcoverpy"
LC = {"crop": 1, "forest": 2}
GEOBOX = GeoBox.from_bbox((500_000, 4_000_000, 500_200, 4_000_160), crs="EPSG:32630", resolution=10)  # 20x16
TO_LONLAT = Transformer.from_crs("EPSG:32630", "EPSG:4326", always_xy=True)


def _cube():
    ny, nx = GEOBOX.shape.y, GEOBOX.shape.x
    data = np.arange(2 * ny * nx, dtype=np.float32).reshape(2, ny, nx)
    coords = {"feature": ["red", "nir"], **xr_coords(GEOBOX)}
    da = xr.DataArray(data, dims=("feature", "y", "x"), coords=coords)
    return da.chunk({"feature": -1, "y": 8, "x": 8}), data


def _utm_box(col0, row0, col1, row1):
    """A rectangle in EPSG:32630 over pixel columns col0..col1-1 and rows row0..row1-1 of GEOBOX."""
    a = GEOBOX.affine
    return shapely.box(a.c + col0 * 10, a.f - row1 * 10, a.c + col1 * 10, a.f - row0 * 10)


def _lonlat(geom):
    return shapely.transform(geom, lambda xy: np.column_stack(TO_LONLAT.transform(xy[:, 0], xy[:, 1])))


def test_landcoverpy_validated_data_geojson_loads():
    pts = read_points(DATA / "validated_data.geojson")
    assert list(pts["category"]) == ["forest", "builtUp", "shrubland"]
    assert list(pts["subcategory"]) == ["pinus", "airport", "brush"]
    assert pts["longitude"].iloc[0] == pytest.approx(-5.017506980442391)
    assert pts["latitude"].iloc[0] == pytest.approx(36.8009860669072)
    assert list(pts["line"]) == [1, 2, 3]
    assert "geometry" not in pts.columns  # points only


def _write_gpkg(path, geoms, props, crs="EPSG:32630"):
    import pyogrio

    pyogrio.raw.write(
        path,
        shapely.to_wkb(np.asarray(geoms, dtype=object)),
        geometry_type="Unknown",
        field_data=[np.asarray(v, dtype=object) for v in props.values()],
        fields=list(props),
        crs=crs,
        driver="GPKG",
    )


def test_geopackage_polygons_in_utm_read_as_wgs84(tmp_path):
    box = _utm_box(2, 3, 6, 7)
    point = shapely.Point(GEOBOX.affine.c + 155, GEOBOX.affine.f - 35)
    path = tmp_path / "train.gpkg"
    _write_gpkg(path, [box, point], {"category": ["crop", "forest"], "subcategory": ["wheat", None]})
    pts = read_points(path)
    assert list(pts["category"]) == ["crop", "forest"]
    assert pts["subcategory"].iloc[1] is None
    assert pts["geometry"].iloc[1] is None
    back = pts["geometry"].iloc[0]
    assert back.equals_exact(_lonlat(box), 1e-9)
    assert back.contains(shapely.Point(pts["longitude"].iloc[0], pts["latitude"].iloc[0]))
    lon, lat = TO_LONLAT.transform(point.x, point.y)
    assert (pts["longitude"].iloc[1], pts["latitude"].iloc[1]) == pytest.approx((lon, lat))


def test_geoparquet_and_plain_parquet(tmp_path):
    box = _lonlat(_utm_box(0, 0, 2, 2))
    table = pa.table({"category": ["crop"], "geometry": shapely.to_wkb([box])})
    geo = {"version": "1.0.0", "primary_column": "geometry", "columns": {"geometry": {"encoding": "WKB"}}}
    table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    pq.write_table(table, tmp_path / "train.parquet")
    pts = read_points(tmp_path / "train.parquet")
    assert pts["geometry"].iloc[0].equals_exact(box, 1e-12)
    plain = pd.DataFrame(
        {"Latitude": [36.5, 36.6], "Longitude": [-4.1, -4.2], "category": ["crop", "forest"]}
    )
    plain.to_parquet(tmp_path / "plain.parquet")
    pts = read_points(tmp_path / "plain.parquet")
    assert list(pts["latitude"]) == [36.5, 36.6] and list(pts["longitude"]) == [-4.1, -4.2]
    plain.drop(columns="Latitude").to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(InvalidInputError, match=r"bad\.parquet: missing column\(s\) latitude"):
        read_points(tmp_path / "bad.parquet")


def _geojson(path, features):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _feature(geometry, **props):
    return {"type": "Feature", "properties": props, "geometry": geometry}


def test_unsupported_geometry_or_property_names_file_and_feature(tmp_path):
    ok = _feature({"type": "Point", "coordinates": [-4.5, 36.7]}, category="crop", id="p1")
    line = _feature(
        {"type": "LineString", "coordinates": [[-4.5, 36.7], [-4.4, 36.7]]}, category="crop", id="road7"
    )
    path = _geojson(tmp_path / "lines.geojson", [ok, line])
    with pytest.raises(
        InvalidInputError, match=r"(?s)lines\.geojson.*feature 2 \(id 'road7'\): geometry LineString"
    ):
        read_points(path)
    numbers = [_feature({"type": "Point", "coordinates": [-4.5, 36.7]}, category=c) for c in (4, 5)]
    path = _geojson(tmp_path / "codes.geojson", numbers)
    with pytest.raises(
        InvalidInputError, match=r"(?s)codes\.geojson.*feature 2: property category is 5 \(int\)"
    ):
        read_points(path)
    path = _geojson(
        tmp_path / "nocat.geojson", [_feature({"type": "Point", "coordinates": [-4.5, 36.7]}, cls="x")]
    )
    with pytest.raises(InvalidInputError, match=r"nocat\.geojson: no 'category' property"):
        read_points(path)
    empty = _feature(None, category="crop")
    with pytest.raises(InvalidInputError, match=r"feature 2: geometry missing is not supported"):
        read_points(_geojson(tmp_path / "null.geojson", [ok, empty]))


def _polygon_points():
    polys = [_lonlat(_utm_box(1, 1, 5, 4)), _lonlat(_utm_box(10, 8, 13, 12)), None]
    lon, lat = TO_LONLAT.transform(GEOBOX.affine.c + 175, GEOBOX.affine.f - 25)  # pixel row 2, col 17
    anchors = [shapely.point_on_surface(p) if p is not None else shapely.Point(lon, lat) for p in polys]
    return pd.DataFrame(
        {
            "latitude": [a.y for a in anchors],
            "longitude": [a.x for a in anchors],
            "category": ["crop", "forest", "forest"],
            "subcategory": [None, None, None],
            "line": [1, 2, 3],
            "geometry": pd.Series(polys, dtype=object),
        }
    )


def test_polygons_are_sampled_into_their_pixels():
    cube, data = _cube()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedPointsWarning)
        out = extract_samples(cube, _polygon_points(), lc_labels=LC).table
    first = out[out["polygon"] == 1]
    second = out[out["polygon"] == 2]
    assert len(first) == 4 * 3 and len(second) == 3 * 4  # every pixel whose centre is inside, once
    rows, cols = np.meshgrid(np.arange(1, 4), np.arange(1, 5), indexing="ij")
    assert sorted(first["red"]) == sorted(data[0, rows.ravel(), cols.ravel()].tolist())
    assert set(first["category"]) == {1} and set(second["category"]) == {2}
    point = out[out["polygon"] == -1]
    assert list(point["line"]) == [3] and point["red"].iloc[0] == data[0, 2, 17]
    # latitude/longitude are the pixel centres, inside the polygon
    inside = shapely.contains_xy(_polygon_points()["geometry"].iloc[0], first["longitude"], first["latitude"])
    assert inside.all() and len(set(zip(first["longitude"], first["latitude"], strict=True))) == 12


def test_points_per_polygon_and_ownership():
    cube, _ = _cube()
    pts = _polygon_points()
    capped = extract_samples(cube, pts, lc_labels=LC, points_per_polygon=5).table
    assert capped.groupby("polygon").size().to_dict() == {-1: 1, 1: 5, 2: 5}
    again = extract_samples(cube, pts, lc_labels=LC, points_per_polygon=5).table
    pd.testing.assert_frame_equal(capped, again)  # seeded
    west = TO_LONLAT.transform(GEOBOX.affine.c + 30, GEOBOX.affine.f)[0]  # pixel columns 0..2 owned here
    with pytest.warns(SkippedPointsWarning, match="1 outside the feature cube"):  # polygon 2: not this tile's
        owned = extract_samples(cube, pts, lc_labels=LC, owns=lambda lon, lat: lon < west, check_empty=False)
    owned = owned.table
    assert owned.groupby("polygon").size().to_dict() == {-1: 1, 1: 2 * 3}
    merged = cap_polygon_samples(pd.concat([capped, capped], ignore_index=True), 7)
    assert merged.groupby("polygon").size().to_dict() == {-1: 2, 1: 7, 2: 7}


def test_a_polygon_smaller_than_a_pixel_takes_the_pixel_under_it():
    cube, data = _cube()
    tiny = _lonlat(shapely.box(*(np.array([GEOBOX.affine.c, GEOBOX.affine.f - 10] * 2) + [61, 2, 64, 5])))
    pts = pd.DataFrame(
        {"latitude": [tiny.centroid.y], "longitude": [tiny.centroid.x], "category": ["crop"],
         "line": [1], "geometry": pd.Series([tiny], dtype=object)}
    )  # fmt: skip
    out = extract_samples(cube, pts, lc_labels=LC).table
    assert list(out["red"]) == [data[0, 0, 6]]


def _polygon_table(n_polygons=12, pixels=9, seed=0):
    rng = np.random.default_rng(seed)
    lon0, lat0 = rng.uniform(-5, -4, n_polygons), rng.uniform(36, 37, n_polygons)
    rows = []
    for pid in range(n_polygons):
        for k in range(pixels):  # distinct pixel centres ~10 m apart
            rows.append((lon0[pid] + 1e-4 * (k % 3), lat0[pid] + 1e-4 * (k // 3), pid % 2 + 1, pid + 1))
    df = pd.DataFrame(rows, columns=["longitude", "latitude", "category", "polygon"])
    points = pd.DataFrame(
        {"longitude": [-4.5, -4.6], "latitude": [36.5, 36.6], "category": [1, 2], "polygon": -1}
    )
    return pd.concat([df, points], ignore_index=True)


def _sides(df, test):
    in_test = np.zeros(len(df), dtype=bool)
    in_test[test] = True
    return df[df["polygon"] >= 0].assign(t=in_test[df["polygon"] >= 0]).groupby("polygon")["t"].nunique()


def test_splits_keep_each_polygon_on_one_side():
    df = _polygon_table()
    for seed in range(5):
        train, test = location_split(df, test_size=0.3, random_state=seed, groups=df["polygon"])
        assert len(train) + len(test) == len(df) and (_sides(df, test) == 1).all()
    # without the polygon ids the pixels of a polygon land on both sides: what the groups prevent
    _, test = location_split(df, test_size=0.3, random_state=0)
    assert (_sides(df, test) > 1).any()


def test_spatial_folds_keep_each_polygon_in_one_fold():
    df = _polygon_table(n_polygons=20)
    # blocks of 15 m cut every polygon (~20 m wide) into several blocks
    folds = spatial_folds(df, folds=4, block_size=15.0, random_state=0, groups=df["polygon"])
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(len(df)))
    for _, test in folds:
        assert (_sides(df, test) == 1).all()
    folds = spatial_folds(df, folds=4, block_size=15.0, random_state=0)
    assert any((_sides(df, te) > 1).any() for _, te in folds)


def test_workflow_trains_on_polygons(demo_run, tmp_path):
    """Polygons around the demo points: sampled into pixels of the demo's tile, capped, trained on."""
    import dask
    from conftest import demo_skips

    from lcstack.config import load_config
    from lcstack.pipeline import Workflow

    area, cfg, _ = demo_run
    pts = read_points(cfg.points).head(120)
    to_utm = Transformer.from_crs("EPSG:4326", area.geobox.crs.to_wkt(), always_xy=True)
    x, y = to_utm.transform(pts["longitude"].to_numpy(), pts["latitude"].to_numpy())
    features = [
        _feature(
            json.loads(
                shapely.to_geojson(_lonlat_of(shapely.box(xi - 15, yi - 15, xi + 15, yi + 15), to_utm))
            ),
            category=row.category,
            subcategory=row.subcategory,
        )
        for xi, yi, row in zip(x, y, pts.itertuples(), strict=True)
    ]
    path = _geojson(tmp_path / "polygons.geojson", features)
    config = load_config(cfg.source, points=str(path), storage=cfg.storage, points_per_polygon=4)
    with dask.config.set(scheduler="threads"), Workflow(config, progress=False) as wf, demo_skips():
        table, _ = wf.samples()
        step = wf.train()
    sizes = table.groupby("polygon").size()
    assert (table["polygon"] >= 1).all() and sizes.max() == 4 and len(sizes) >= 100
    assert step.key != Workflow(cfg, progress=False).model_key()  # another dataset, another model
    train, test = location_split(table, test_size=0.25, groups=table["polygon"])
    assert not set(table["polygon"].iloc[train]) & set(table["polygon"].iloc[test])


def _lonlat_of(geom, to_utm):
    return shapely.transform(
        geom, lambda xy: np.column_stack(to_utm.transform(xy[:, 0], xy[:, 1], direction="INVERSE"))
    )
