"""The STAC collection of a run's outputs: valid offline against the STAC schemas, and usable on its own."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_zeros
from pystac.validation import JsonSchemaSTACValidator, set_validator

from lcstack.cog import write_cog
from lcstack.errors import InvalidInputError
from lcstack.stac_out import TileOutputs, outputs_from_workflow, write_outputs_collection
from lcstack.store import Storage

SCHEMAS = Path(__file__).parent / "data" / "schemas"
EXT = "https://stac-extensions.github.io/"
VENDORED = {
    EXT + "projection/v2.0.0/schema.json": "projection-v2.0.0.json",
    EXT + "classification/v2.0.0/schema.json": "classification-v2.0.0.json",
    EXT + "file/v2.1.0/schema.json": "file-v2.1.0.json",
}


class _OfflineValidator(JsonSchemaSTACValidator):
    """pystac's validator with the core schemas it ships and the vendored extension schemas; nothing else."""

    def __init__(self) -> None:
        super().__init__()
        for uri, name in VENDORED.items():
            self.schema_cache[uri] = json.loads((SCHEMAS / name).read_text())

    def _get_schema(self, schema_uri: str) -> dict:
        if schema_uri not in self.schema_cache:
            raise AssertionError(f"validation needs {schema_uri}, which is not vendored (no network here)")
        return self.schema_cache[schema_uri]


@pytest.fixture
def offline_validator():
    validator = _OfflineValidator()
    set_validator(validator)
    yield validator
    set_validator(JsonSchemaSTACValidator())


def _validate_all(collection_url: str) -> pystac.Collection:
    collection = pystac.read_file(collection_url)
    assert isinstance(collection, pystac.Collection)
    assert collection.validate_all() > 0
    return collection


def test_run_outputs_collection_validates_and_opens_from_items_alone(demo_run, offline_validator, tmp_path):
    from lcstack.pipeline import Workflow

    area, cfg, _ = demo_run
    with Workflow(cfg, progress=False) as wf:
        outputs = outputs_from_workflow(wf)
        storage = wf.storage
    assert outputs and all({"level1", "level2"} <= set(o.maps) for o in outputs)
    url = write_outputs_collection(storage, outputs, url=str(tmp_path / "stac" / "collection.json"))
    collection = _validate_all(url)
    items = list(collection.get_items(recursive=True))
    assert sorted(i.id for i in items) == sorted(o.tile for o in outputs)
    labels = json.loads(Path(cfg.lc_labels).read_text())
    for item in items:
        assert item.properties["proj:code"].startswith("EPSG:326")
        assert item.ext.has("proj") and item.ext.has("classification") and item.ext.has("file")
        assert any(k.startswith("composite_") for k in item.assets)
        assert item.assets["maps_zarr"].media_type == pystac.MediaType.ZARR
        xr.open_zarr(item.assets["maps_zarr"].get_absolute_href())  # the Zarr asset opens as listed
        for key in ("level1", "level2"):
            asset = item.assets[key]
            href = asset.get_absolute_href()
            body = Path(href).read_bytes()
            assert asset.extra_fields["file:size"] == len(body)
            assert asset.extra_fields["file:checksum"] == "1220" + hashlib.sha256(body).hexdigest()
            classes = asset.ext.classification.classes
            with rasterio.open(href) as src:
                cmap = src.colormap(1)
                assert [src.height, src.width] == asset.extra_fields["proj:shape"]
                assert list(src.transform)[:6] == pytest.approx(asset.extra_fields["proj:transform"])
                assert set(np.unique(src.read(1))) - {0} <= {c.value for c in classes}
            for c in classes:
                assert c.color_hint == "{:02X}{:02X}{:02X}".format(*cmap[c.value][:3])
        level1 = {c.description: c.value for c in item.assets["level1"].ext.classification.classes}
        assert level1 == labels


def _tile_cog(tmp_path: Path, name: str, values: np.ndarray) -> str:
    gbox = GeoBox.from_bbox((500000, 4400000, 500000 + 640, 4400000 + 320), "EPSG:32631", resolution=10)
    da = xr_zeros(gbox, dtype="uint8").copy(data=values)
    return write_cog(da, tmp_path / f"{name}.tif", labels={"water": 1, "forest": 2})


def test_collection_pixels_equal_the_written_maps(tmp_path, offline_validator):
    values = np.random.default_rng(1).integers(0, 3, (32, 64), dtype=np.uint8)
    cog = _tile_cog(tmp_path, "level1", values)
    storage = Storage(tmp_path / "store")
    url = write_outputs_collection(storage, [TileOutputs("T31TCF", {"level1": cog})])
    assert url == str(tmp_path / "store" / "stac" / "collection.json")
    item = next(_validate_all(url).get_items(recursive=True))
    with rasterio.open(item.assets["level1"].get_absolute_href()) as src:
        np.testing.assert_array_equal(src.read(1), values)
    lon0, lat0, lon1, lat1 = item.bbox
    assert 2.9 < lon0 < lon1 < 3.1 and 39.7 < lat0 < lat1 < 39.8  # EPSG:32631 x=500 km is 3°E


def test_a_broken_item_fails_validation(tmp_path, offline_validator):
    cog = _tile_cog(tmp_path, "level1", np.ones((32, 64), dtype=np.uint8))
    url = write_outputs_collection(Storage(tmp_path), [TileOutputs("t", {"level1": cog})])
    item_path = Path(url).parent / "t" / "t.json"
    doc = json.loads(item_path.read_text())
    doc["assets"]["level1"]["classification:classes"][0]["color_hint"] = "#00ff00"
    item_path.write_text(json.dumps(doc))
    with pytest.raises(pystac.errors.STACValidationError, match="classification"):
        pystac.Item.from_file(str(item_path)).validate()


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(InvalidInputError, match="no tile outputs"):
        write_outputs_collection(Storage(tmp_path), [])
    with pytest.raises(InvalidInputError, match="no map COG"):
        write_outputs_collection(Storage(tmp_path), [TileOutputs("t", {})])


def test_cli_stac_writes_the_collection_under_the_storage(demo_run, offline_validator):
    from typer.testing import CliRunner

    from lcstack.cli import app

    area, cfg, _ = demo_run
    result = CliRunner().invoke(app, ["stac", str(area.config)])
    assert result.exit_code == 0, result.output
    url = result.output.strip().splitlines()[-1]
    assert url == str(Path(cfg.storage) / "stac" / "collection.json")
    assert len(list(_validate_all(url).get_items(recursive=True))) >= 1
