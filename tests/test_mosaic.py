"""Mosaics: a VRT per UTM zone that places tiles exactly, and one COG across zones from the owning tiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_zeros
from pyproj import Transformer

from lcstack.cog import default_colors, write_cog
from lcstack.errors import InvalidInputError
from lcstack.mosaic import MosaicSource, mosaic, zone_vrts
from lcstack.store import Storage

LABELS = {"water": 1, "forest": 2, "cropland": 3}
N = 128


def _cog(path: Path, crs: str, x0: float, y0: float, values: np.ndarray, **kw) -> str:
    gbox = GeoBox(values.shape, Affine(10, 0, x0, 0, -10, y0), crs)
    return write_cog(xr_zeros(gbox, dtype="uint8").copy(data=values), path, labels=LABELS, **kw)


def _values(seed: int, shape=(N, N)) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 4, shape, dtype=np.uint8)


def _two_zones(tmp_path: Path) -> tuple[list[str], list[np.ndarray]]:
    """Tile A in UTM 30N ending just east of 0°, tile B in UTM 31N starting west of A's east edge."""
    a_x0, top = 755_000.0, 4_430_000.0
    lon, lat = Transformer.from_crs("EPSG:32630", "EPSG:4326", always_xy=True).transform(
        a_x0 + 900, top - 300
    )
    bx, by = Transformer.from_crs("EPSG:4326", "EPSG:32631", always_xy=True).transform(lon, lat)
    values = [_values(1), _values(2)]
    urls = [
        _cog(tmp_path / "a.tif", "EPSG:32630", a_x0, top, values[0]),
        _cog(tmp_path / "b.tif", "EPSG:32631", round(bx, -1), round(by, -1), values[1]),
    ]
    return urls, values


def _expected(out: rasterio.DatasetReader, urls, values, owned=None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest source pixel of each output pixel centre, from the first owning tile, else first with data.

    Also where a centre lies within 0.01 px (10 cm) of a source pixel edge: there PROJ here and GDAL's
    warper may round to different sides.
    """
    rows, cols = np.mgrid[0 : out.height, 0 : out.width]
    x, y = out.transform * (cols + 0.5, rows + 0.5)
    expected = np.zeros(rows.shape, np.uint8)
    taken = np.zeros(rows.shape, bool)
    sampled = []
    edge = np.zeros(rows.shape, bool)
    for i, url in enumerate(urls):
        with rasterio.open(url) as src:
            sx, sy = Transformer.from_crs(out.crs, src.crs, always_xy=True).transform(x, y)
            c, r = ~src.transform * (sx, sy)
            edge |= (np.abs(c - np.round(c)) < 0.01) | (np.abs(r - np.round(r)) < 0.01)
            c, r = np.floor(c).astype(int), np.floor(r).astype(int)
            inside = (r >= 0) & (r < src.height) & (c >= 0) & (c < src.width)
            rc, cc = r.clip(0, src.height - 1), c.clip(0, src.width - 1)
        v = np.where(inside, values[i][rc, cc], 0)
        sampled.append(v)
        if owned is not None:
            mine = inside & owned[i][rc, cc] & ~taken
            expected[mine], taken = v[mine], taken | mine
    for v in sampled:
        free = ~taken & (v != 0)
        expected[free], taken = v[free], taken | free
    return expected, edge


def _assert_same(got: np.ndarray, expected: tuple[np.ndarray, np.ndarray]) -> None:
    values, edge = expected
    differ = got != values
    assert not (differ & ~edge).any(), f"{(differ & ~edge).sum()} pixels differ away from pixel edges"
    assert differ.mean() < 1e-3


def test_zone_vrt_places_tiles_exactly(tmp_path):
    a, b = _values(3, (N, N)), _values(4, (N // 2, N))
    top = 4_430_000.0
    urls = [  # b overlaps a's bottom 32 rows and sticks out 64 px to the right
        _cog(tmp_path / "a.tif", "EPSG:32630", 500_000, top, a),
        _cog(tmp_path / "b.tif", "EPSG:32630", 500_640, top - 960, b),
    ]
    vrts = zone_vrts(Storage(tmp_path), urls, str(tmp_path / "vrt"))
    assert list(vrts) == ["EPSG:32630"]
    with rasterio.open(vrts["EPSG:32630"]) as src:
        assert (src.height, src.width, src.crs.to_epsg()) == (128 + 32, 192, 32630)
        assert src.transform.c == 500_000 and src.transform.f == top
        got = src.read(1)
        assert src.colormap(1)[2] == default_colors(LABELS)[2]
    expected = np.zeros((160, 192), np.uint8)
    expected[96:160, 64:192] = b
    expected[:128, :128] = a  # the first source wins its overlap
    np.testing.assert_array_equal(got, expected)


def test_zone_vrt_rejects_tiles_off_the_lattice(tmp_path):
    urls = [
        _cog(tmp_path / "a.tif", "EPSG:32630", 500_000, 4_430_000, _values(1, (16, 16))),
        _cog(tmp_path / "b.tif", "EPSG:32630", 500_005, 4_430_000, _values(1, (16, 16))),
    ]
    with pytest.raises(InvalidInputError, match="b.tif: not on the pixel lattice"):
        zone_vrts(Storage(tmp_path), urls, str(tmp_path))


def test_mosaic_across_two_utm_zones_takes_each_pixel_from_one_tile(tmp_path):
    urls, values = _two_zones(tmp_path)
    assert len(zone_vrts(Storage(tmp_path), urls, str(tmp_path / "vrt"))) == 2
    out_url = mosaic(Storage(tmp_path), urls, str(tmp_path / "mosaic.tif"), block=96, max_blocks_in_flight=2)
    with rasterio.open(out_url) as out:
        assert out.crs.to_epsg() == 4326 and out.nodata == 0
        assert out.transform.a == pytest.approx(10 / 111_320)
        assert out.colormap(1)[1] == default_colors(LABELS)[1]
        got = out.read(1)
        expected = _expected(out, urls, values)
    assert (expected[0] != 0).mean() > 0.5
    _assert_same(got, expected)


def test_mosaic_follows_ownership_masks(tmp_path):
    urls, values = _two_zones(tmp_path)
    owned = [np.zeros((N, N), bool), np.ones((N, N), bool)]
    owned[0][:, :60] = True  # A owns its western 60 columns; B owns all of itself
    masks = []
    for i, (url, own) in enumerate(zip(urls, owned, strict=True)):
        with rasterio.open(url) as src:  # a mask shares its tile's grid
            crs, x0, y0 = str(src.crs), src.transform.c, src.transform.f
        masks.append(_cog(tmp_path / f"own{i}.tif", crs, x0, y0, own.astype(np.uint8)))
    sources = [MosaicSource(u, m) for u, m in zip(urls, masks, strict=True)]
    out_url = mosaic(Storage(tmp_path), sources, str(tmp_path / "owned.tif"), crs="EPSG:32631", block=80)
    with rasterio.open(out_url) as out:
        assert out.transform.a == 10 and out.crs.to_epsg() == 32631
        got = out.read(1)
        expected = _expected(out, urls, values, owned)
        without_masks, _ = _expected(out, urls, values)
    _assert_same(got, expected)
    assert (got != without_masks).sum() > 1000  # B wins where A does not own its pixels


def test_mosaic_refuses_maps_of_different_classes(tmp_path):
    a = _cog(tmp_path / "a.tif", "EPSG:32630", 500_000, 4_430_000, _values(1, (16, 16)))
    gbox = GeoBox.from_bbox((500_160, 4_429_840, 500_320, 4_430_000), "EPSG:32630", resolution=10)
    b = write_cog(xr_zeros(gbox, dtype="uint8"), tmp_path / "b.tif", labels={"other": 1})
    with pytest.raises(InvalidInputError, match="b.tif: its classes"):
        mosaic(Storage(tmp_path), [a, b], str(tmp_path / "m.tif"))
    with pytest.raises(InvalidInputError, match="no tile maps"):
        mosaic(Storage(tmp_path), [], str(tmp_path / "m.tif"))


def test_cli_mosaic_of_the_demo_run_equals_its_tile_map(demo_run, tmp_path):
    from typer.testing import CliRunner

    from lcstack.cli import app
    from lcstack.pipeline import Workflow

    area, cfg, _ = demo_run
    with Workflow(cfg, progress=False) as wf:  # this config's own map: the storage is shared with other areas
        (rec,) = wf.maps()
        tile_url = wf.map_urls(rec)["level1"]
    with rasterio.open(tile_url) as tile:
        crs, res, values = tile.crs, tile.transform.a, tile.read(1)
        bounds = tile.bounds
    result = CliRunner().invoke(
        app, ["mosaic", str(area.config), "--crs", str(crs), "--resolution", str(res), "--level", "1"]
    )
    assert result.exit_code == 0, result.output
    url = result.output.split()[-1]
    assert Path(url).name == f"mosaic_level1_EPSG_{crs.to_epsg()}.tif"
    with rasterio.open(url) as out:  # the same grid: the mosaic of one tile is that tile, pixel for pixel
        assert tuple(out.bounds) == pytest.approx(tuple(bounds))
        np.testing.assert_array_equal(out.read(1), values)
    result = CliRunner().invoke(app, ["mosaic", str(area.config), "--level", "3"])
    assert result.exit_code == 2 and "--level 3" in result.output


def test_outputs_on_s3_catalog_vrt_and_mosaic(tmp_path):
    """Tiles, VRTs, mosaic and catalog on an S3 endpoint (moto on 127.0.0.1), read with its credentials."""
    import sys

    import pystac

    sys.path.insert(0, str(Path(__file__).parent))
    from s3_server import s3_endpoint

    from lcstack._gdal import gdal_path, rasterio_env
    from lcstack.stac_out import TileOutputs, write_outputs_collection

    with s3_endpoint(process=True) as s3:  # GDAL reads the VRT's sources holding the GIL: moto in a process
        bucket = s3.create_bucket()
        storage = Storage(f"s3://{bucket}/run", storage_options=s3.storage_options())
        values = [_values(5, (32, 32)), _values(6, (32, 32))]
        urls = [
            _cog(
                f"s3://{bucket}/run/t{i}.tif", "EPSG:32630", 500_000 + 320 * i, 4_430_000, v, storage=storage
            )
            for i, v in enumerate(values)
        ]
        vrts = zone_vrts(storage, urls, f"s3://{bucket}/run/vrt")
        assert vrts == {"EPSG:32630": f"s3://{bucket}/run/vrt/EPSG_32630.vrt"}
        # The VRT names its sources by GDAL path; GDAL reads it back from S3 with the storage credentials
        xml = storage.read_bytes(vrts["EPSG:32630"]).decode()
        assert all(f'<SourceFilename relativeToVRT="0">{gdal_path(u)}<' in xml for u in urls)
        with rasterio_env(storage, vrts["EPSG:32630"]), rasterio.open(gdal_path(vrts["EPSG:32630"])) as src:
            assert src.crs == "EPSG:32630"
            np.testing.assert_array_equal(src.read(1), np.hstack(values))
        out = mosaic(storage, urls, f"s3://{bucket}/run/mosaic.tif", crs="EPSG:32630")
        local = tmp_path / "mosaic.tif"
        local.write_bytes(storage.read_bytes(out))
        with rasterio.open(local) as src:
            np.testing.assert_array_equal(src.read(1), np.hstack(values))
        coll = write_outputs_collection(
            storage, [TileOutputs(f"t{i}", {"level1": u}) for i, u in enumerate(urls)]
        )
        assert coll == f"s3://{bucket}/run/stac/collection.json"
        doc = json.loads(storage.read_bytes(coll))
        item = pystac.Item.from_dict(json.loads(storage.read_bytes(f"s3://{bucket}/run/stac/t1/t1.json")))
        assert doc["type"] == "Collection" and item.assets["level1"].href == urls[1]
        assert item.assets["level1"].extra_fields["file:size"] == len(storage.read_bytes(urls[1]))
