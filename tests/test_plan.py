"""The run's plan (lcstack.plan): pure functions from units, scenes and fingerprints to planned outputs."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from types import SimpleNamespace

import pystac
import pytest
from odc.geo.geobox import GeoBox

from lcstack.inputs import Season
from lcstack.plan import PlannedOutput, Unit, composite_selection, plan_composites, plan_maps
from lcstack.store import Storage

GBOX = GeoBox.from_bbox((500_000, 4_000_000, 501_280, 4_001_280), "EPSG:32630", resolution=10)
SEASONS = {"spring": Season("spring", dt.date(2024, 3, 1), dt.date(2024, 5, 31))}


def _item(item_id: str, lon: float = -3.0, lat: float = 36.1) -> pystac.Item:
    item = pystac.Item(
        item_id,
        geometry={"type": "Point", "coordinates": [lon, lat]},
        bbox=[lon, lat, lon, lat],
        datetime=dt.datetime(2024, 4, 1, tzinfo=dt.UTC),
        properties={},
    )
    item.add_asset("B04", pystac.Asset(f"/data/{item_id}/B04.tif"))
    return item


def _info(item: pystac.Item) -> SimpleNamespace:
    return SimpleNamespace(item=item)


def _plan(storage: Storage, fingerprints: dict[str, str], scenes=None, dem=None) -> list[PlannedOutput]:
    units = {"30SVF": Unit("30SVF", GBOX, "30SVF")}
    scenes = scenes or {"30SVF": {"spring": [_info(_item("a")), _info(_item("b"))]}}
    return plan_composites(
        composite_selection(units, scenes, dem),
        SEASONS,
        params={"bands": ["B04"]},
        scene_assets=lambda item: ["B04"],
        fingerprints=fingerprints,
        storage=storage,
        version="0",
    )


def test_composites_are_keyed_by_content_and_planned_without_io(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "store")
    prints = {"/data/a/B04.tif": "stat:1:1", "/data/b/B04.tif": "stat:1:1"}
    [spring] = _plan(storage, prints)
    assert (spring.kind, spring.unit, spring.season, spring.s2_tile) == (
        "composites",
        "30SVF",
        "spring",
        "30SVF",
    )
    assert spring.inputs == ("a", "b") and [i.id for i in spring.items] == ["a", "b"]
    assert spring.url == storage.url("composites", "30SVF", f"spring_{spring.key[:8]}.zarr")
    assert not (tmp_path / "store").exists(), "planning writes nothing"
    assert _plan(storage, prints)[0].key == spring.key, "the same inputs give the same key"
    rewritten = _plan(storage, {**prints, "/data/b/B04.tif": "stat:1:2"})[0]
    assert rewritten.key != spring.key, "a rewritten asset changes the key"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spring.key = "x"  # type: ignore[misc]


def test_seasons_without_items_are_left_out_and_terrain_is_planned_per_unit(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    scenes = {"30SVF": {"spring": [_info(_item("a"))], "summer": []}}
    plan = _plan(storage, {}, scenes=scenes, dem=[_item("dem1")])
    assert [(p.season, p.inputs) for p in plan] == [("spring", ("a",)), ("terrain", ("dem1",))]
    assert plan[1].url.endswith(f"terrain_{plan[1].key[:8]}.zarr")
    assert [p.season for p in _plan(storage, {}, scenes=scenes)] == ["spring"], "no DEM: no terrain"


def test_user_grid_units_take_the_scenes_over_them(tmp_path: Path) -> None:
    units = {"E1N1": Unit("E1N1", GBOX)}
    lon, lat = GBOX.extent.to_crs("EPSG:4326").centroid.coords[0]
    # the chosen scenes of every Sentinel-2 tile that lie over the unit, each item once
    scenes = {
        "30SVF": {"spring": [_info(_item("over", lon, lat)), _info(_item("far", lon + 5, lat))]},
        "30SWF": {"spring": [_info(_item("next", lon, lat))]},
    }
    [(unit, season, items)] = composite_selection(units, scenes, None)
    assert (unit.id, season, sorted(i.id for i in items)) == ("E1N1", "spring", ["next", "over"])


def test_maps_are_keyed_by_model_composites_and_tiles(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    comp = [
        PlannedOutput("composites", "k1", "u1", "30SVF", "spring", s2_tile="30SVF"),
        PlannedOutput("composites", "k2", "u2", "30SVF", "terrain", s2_tile="30SVF"),
        PlannedOutput("composites", "k3", "u3", "30SWF", "spring", s2_tile="30SWF"),
    ]
    maps = plan_maps(comp, "m1", storage)
    assert [(m.kind, m.unit, m.inputs) for m in maps] == [
        ("maps", "30SVF", ("k1", "k2")),
        ("maps", "30SWF", ("k3",)),
    ]
    base = storage.url("classification-maps", "model_m1", f"30SVF_{maps[0].key[:8]}")
    assert maps[0].url == base and maps[0].files["level2"] == storage.join(base, "level2.tif")
    assert plan_maps(comp, "m2", storage)[0].key != maps[0].key, "another model, another key"
    alone = plan_maps(comp[:2], "m1", storage)[0]
    assert alone.key != maps[0].key, "on the Sentinel-2 grid the key names the tiles sharing the area"
    # the same model over another area (or year) with a tile of the same id: other maps, another folder,
    # so classifying it never overwrites the maps already stored
    other = [PlannedOutput("composites", "k9", "u9", "30SVF", "spring", s2_tile="30SVF")]
    elsewhere = plan_maps(other, "m1", storage)[0]
    assert elsewhere.unit == maps[0].unit and elsewhere.url != maps[0].url
