"""Scene and DEM discovery against a static catalog on disk and the same items behind `rustac serve`."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pystac
import pystac_client
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from stac_server import RustacServer, find_rustac, free_port  # noqa: E402

from lcstack.discover import (  # noqa: E402
    FsspecStacIO,
    SceneInfo,
    discover_dem,
    discover_scenes,
    open_source,
    search_items,
)
from lcstack.errors import InputFileNotFoundError, InvalidInputError, NoScenesFoundError  # noqa: E402

S2 = "sentinel-2-l2a"
L1C = "sentinel-2-l1c"
DEM = "cop-dem-glo-30"
AOI = (10.0, 45.0, 10.2, 45.2)
FULL = (9.9, 44.9, 10.3, 45.3)  # covers the AOI
EAST_HALF = (10.1, 44.9, 10.3, 45.3)  # covers the eastern half of the AOI
FAR = (20.0, 50.0, 20.5, 50.5)

# id: (collection, datetime, cloud cover or None, nodata %, footprint)
SCENES: dict[str, tuple[str, str, float | None, float, tuple[float, ...]]] = {
    "A_0402": (S2, "2024-04-02T10:20:00Z", 5.0, 0.0, FULL),  # valid 0.95
    "B_0410": (S2, "2024-04-10T10:20:00Z", 50.0, 0.0, FULL),  # 0.50
    "J_0412": (S2, "2024-04-12T10:20:00Z", None, 0.0, FULL),  # no eo:cloud_cover
    "F_0415": (S2, "2024-04-15T10:20:00Z", 1.0, 0.0, FAR),  # outside the AOI
    "C_0420": (S2, "2024-04-20T10:20:00Z", 10.0, 40.0, FULL),  # 0.54
    "D_0430": (S2, "2024-04-30T23:30:00Z", 2.0, 0.0, EAST_HALF),  # 0.49, last minutes of the season
    "E_0501": (S2, "2024-05-01T00:10:00Z", 0.0, 0.0, FULL),  # just after the season
    "G_0705": (S2, "2024-07-05T10:20:00Z", 20.0, 0.0, FULL),  # 0.80
    "H_0715": (S2, "2024-07-15T10:20:00Z", 80.0, 0.0, FULL),  # 0.20
    "I_0715": (S2, "2024-07-15T10:21:00Z", 0.0, 0.0, EAST_HALF),  # 0.50
    "L_0402": (L1C, "2024-04-02T10:20:00Z", 5.0, 0.0, FULL),  # other collection
}
DEMS = {"dem_N45_E010": (9.5, 44.5, 10.5, 45.5), "dem_N50_E020": (20.0, 50.0, 21.0, 51.0)}

SPRING = SimpleNamespace(start=dt.date(2024, 4, 1), end=dt.date(2024, 4, 30), dates=None)
SUMMER = {"start": dt.date(2024, 7, 1), "end": dt.date(2024, 7, 31)}


def _box(bounds: tuple[float, ...]) -> dict[str, Any]:
    w, s, e, n = bounds
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def _collection(cid: str) -> pystac.Collection:
    return pystac.Collection(
        id=cid,
        description=f"test {cid}",
        extent=pystac.Extent(
            pystac.SpatialExtent([[9.0, 44.0, 21.0, 51.0]]),
            pystac.TemporalExtent([[dt.datetime(2024, 1, 1, tzinfo=dt.UTC), None]]),
        ),
        license="proprietary",
    )


def build_catalog(root: Path) -> Path:
    catalog = pystac.Catalog(id="test", description="discovery test catalog")
    collections = {cid: _collection(cid) for cid in (S2, L1C, DEM)}
    for collection in collections.values():
        catalog.add_child(collection)
    for item_id, (cid, when, cloud, nodata, bounds) in SCENES.items():
        props: dict[str, Any] = {"s2:nodata_pixel_percentage": nodata, "platform": "sentinel-2a"}
        if cloud is not None:
            props["eo:cloud_cover"] = cloud
        item = pystac.Item(
            id=item_id,
            geometry=_box(bounds),
            bbox=list(bounds),
            datetime=dt.datetime.fromisoformat(when.replace("Z", "+00:00")),
            properties=props,
        )
        for key in ("red", "scl"):
            item.add_asset(key, pystac.Asset(href=f"./{key}.tif", media_type=pystac.MediaType.COG))
        collections[cid].add_item(item)
    for item_id, bounds in DEMS.items():
        item = pystac.Item(
            id=item_id,
            geometry=_box(bounds),
            bbox=list(bounds),
            datetime=dt.datetime(2021, 4, 22, tzinfo=dt.UTC),
            properties={},
        )
        item.add_asset("data", pystac.Asset(href="./data.tif", media_type=pystac.MediaType.COG))
        collections[DEM].add_item(item)
    catalog.normalize_hrefs(str(root))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    for item in catalog.get_items(recursive=True):
        for asset in item.assets.values():  # tiny dummy files: discovery never reads pixels
            Path(asset.get_absolute_href() or "").write_bytes(b"\0")
    return root / "catalog.json"


@pytest.fixture(scope="module")
def static_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_catalog(tmp_path_factory.mktemp("stac"))


@pytest.fixture(scope="module")
def api_url(static_catalog: Path) -> Any:
    try:
        find_rustac()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    catalog = pystac.Catalog.from_file(str(static_catalog))
    collections = list(catalog.get_children())
    items = list(catalog.get_items(recursive=True))
    with RustacServer(items, collections) as url:
        yield url


@pytest.fixture(params=["static", "api"])
def source(request: pytest.FixtureRequest, static_catalog: Path) -> str:
    return str(static_catalog) if request.param == "static" else request.getfixturevalue("api_url")


def ids(items: list[pystac.Item] | list[SceneInfo]) -> list[str]:
    return [i.id for i in items]


# ---------------------------------------------------------------------------------------------- sources


def test_open_source_kinds(static_catalog: Path, api_url: str) -> None:
    api = open_source(api_url)
    assert isinstance(api, pystac_client.Client)
    static = open_source(static_catalog)
    assert isinstance(static, pystac.Catalog) and not isinstance(static, pystac_client.Client)
    assert open_source(static_catalog.parent).id == "test"  # a folder holding catalog.json
    assert open_source(static_catalog.as_uri()).id == "test"  # file:// URL
    assert open_source(static) is static


def test_missing_path_says_what_was_tried(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "catalog.json"
    with pytest.raises(InputFileNotFoundError, match="does not exist") as info:
        open_source(missing)
    assert str(missing) in str(info.value) and "http" in str(info.value)
    with pytest.raises(InputFileNotFoundError, match="without catalog.json"):
        open_source(tmp_path)


def test_not_stac_json_is_invalid(tmp_path: Path) -> None:
    bad = tmp_path / "catalog.json"
    bad.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(InvalidInputError, match="static catalog"):
        open_source(bad)


def test_unreachable_api_is_invalid() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(InvalidInputError, match="STAC API landing page") as info:
        open_source(url)
    assert url in str(info.value)


def test_static_catalog_through_fsspec(static_catalog: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    root = static_catalog.parent
    for path in root.rglob("*.json"):
        fs.pipe(f"/cat/{path.relative_to(root).as_posix()}", path.read_bytes())
    try:
        catalog = open_source("memory://cat/catalog.json", storage_options={})
        assert isinstance(catalog.get_root()._stac_io, FsspecStacIO)  # noqa: SLF001
        found = search_items(catalog, S2, bbox=AOI, start="2024-04-01", end="2024-04-30")
        assert ids(found) == ["A_0402", "B_0410", "J_0412", "C_0420", "D_0430"]
        assert found[0].assets["red"].href == "memory://cat/sentinel-2-l2a/A_0402/red.tif"
    finally:
        fs.rm("/cat", recursive=True)


def test_static_catalog_on_s3(static_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "test", "secret": "test"}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("stac-bucket")
        root = static_catalog.parent
        for path in root.rglob("*.json"):
            fs.pipe(f"stac-bucket/cat/{path.relative_to(root).as_posix()}", path.read_bytes())
        catalog = open_source("s3://stac-bucket/cat/catalog.json", storage_options=options)
        found = search_items(catalog, S2, bbox=AOI, start="2024-07-01", end="2024-07-31")
        assert ids(found) == ["G_0705", "H_0715", "I_0715"]
        assert found[0].assets["red"].href == "s3://stac-bucket/cat/sentinel-2-l2a/G_0705/red.tif"
        with pytest.raises(InputFileNotFoundError, match="does not exist"):
            open_source("s3://stac-bucket/missing/catalog.json", storage_options=options)
    finally:
        server.stop()


# ----------------------------------------------------------------------------------------------- search


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"start": "2024-04-01", "end": "2024-04-30"}, ["A_0402", "B_0410", "J_0412", "C_0420", "D_0430"]),
        (
            {"start": dt.date(2024, 4, 1), "end": dt.date(2024, 4, 30), "max_cloud_cover": 30},
            ["A_0402", "C_0420", "D_0430"],
        ),
        ({"start": "2024-04-30", "end": "2024-05-01"}, ["D_0430", "E_0501"]),
        ({"start": "2024-07-01", "end": "2024-07-31", "max_cloud_cover": 50}, ["G_0705", "I_0715"]),
        (
            {"start": None, "end": None},
            ["A_0402", "B_0410", "J_0412", "C_0420", "D_0430", "E_0501", "G_0705", "H_0715", "I_0715"],
        ),
    ],
)
def test_api_and_static_find_the_same_scenes(
    static_catalog: Path, api_url: str, kwargs: dict[str, Any], expected: list[str]
) -> None:
    static = search_items(static_catalog, S2, bbox=AOI, **kwargs)
    api = search_items(api_url, S2, bbox=AOI, page_size=2, **kwargs)
    assert ids(static) == expected
    assert ids(api) == expected


def test_cloud_filter_is_applied_client_side(api_url: str) -> None:
    client = open_source(api_url)
    assert isinstance(client, pystac_client.Client)
    # rustac answers no item at all to a `query`; the filter must happen here, not on the server.
    raw = list(client.search(collections=[S2], bbox=list(AOI), datetime="2024-07-01/2024-07-31").items())
    assert {i.id for i in raw} == {"G_0705", "H_0715", "I_0715"}
    found = search_items(client, S2, bbox=AOI, start="2024-07-01", end="2024-07-31", max_cloud_cover=50)
    assert ids(found) == ["G_0705", "I_0715"]
    assert all(i.properties["eo:cloud_cover"] < 50 for i in found)


def test_query_is_sent_to_servers_that_support_it(api_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = open_source(api_url)
    sent: dict[str, Any] = {}

    class FakeSearch:
        def items(self) -> Any:
            return iter(())

        def items_as_dicts(self) -> Any:
            return iter(())

    def fake_search(**kwargs: Any) -> FakeSearch:
        sent.update(kwargs)
        return FakeSearch()

    monkeypatch.setattr(client, "conforms_to", lambda *_: True)
    monkeypatch.setattr(client, "search", fake_search)
    search_items(client, S2, bbox=AOI, start="2024-04-01", end="2024-04-30", max_cloud_cover=20)
    assert sent["query"] == {"eo:cloud_cover": {"lt": 20}}
    assert sent["collections"] == [S2] and sent["bbox"] == list(AOI)
    assert sent["datetime"] == "2024-04-01T00:00:00Z/2024-04-30T23:59:59.999999Z"


def test_paging_collects_every_page(api_url: str) -> None:
    client = open_source(api_url)
    assert isinstance(client, pystac_client.Client)
    pages = list(client.search(collections=[S2], bbox=list(AOI), limit=2).pages())
    assert len(pages) >= 5  # 9 matching items, 2 per page: the server really pages
    found = search_items(client, S2, bbox=AOI, start=None, end=None, page_size=2)
    assert len(found) == 9 and len(set(ids(found))) == 9


def test_limit_and_absolute_hrefs(source: str) -> None:
    found = search_items(source, S2, bbox=AOI, start="2024-04-01", end="2024-04-30", limit=2)
    assert len(found) == 2
    for item in found:
        href = item.assets["red"].href
        assert href.endswith(f"/{item.id}/red.tif")
        path = Path(href.removeprefix("file://"))
        assert path.is_absolute() and path.exists()


def test_bad_dates_and_bbox_are_invalid(static_catalog: Path) -> None:
    with pytest.raises(InvalidInputError, match="not a date"):
        search_items(static_catalog, S2, bbox=AOI, start="April", end="2024-04-30")
    with pytest.raises(InvalidInputError, match="west, south, east, north"):
        search_items(static_catalog, S2, bbox=(10.2, 45.0, 10.0, 45.2), start=None, end=None)


# ------------------------------------------------------------------------------------------------ scenes


def test_discover_scenes_ranges_and_valid_fraction(source: str) -> None:
    scenes = discover_scenes(source, S2, AOI, {"spring": SPRING, "summer": SUMMER}, max_cloud_cover=60)
    assert ids(scenes["spring"]) == ["A_0402", "B_0410", "C_0420", "D_0430"]
    assert ids(scenes["summer"]) == ["G_0705", "I_0715"]
    info = {s.id: s for s in scenes["spring"]}
    assert info["A_0402"].valid_fraction == pytest.approx(0.95)
    assert info["C_0420"].valid_fraction == pytest.approx(0.9 * 0.6)
    assert info["D_0430"].aoi_coverage == pytest.approx(0.5)
    assert info["D_0430"].valid_fraction == pytest.approx(0.98 * 0.5)
    assert info["B_0410"].cloud_cover == 50.0 and info["B_0410"].season == "spring"


def test_max_scenes_keeps_the_best_valid_fraction(source: str) -> None:
    scenes = discover_scenes(source, S2, AOI, {"spring": SPRING}, max_cloud_cover=60, max_scenes=2)
    assert ids(scenes["spring"]) == ["A_0402", "C_0420"]  # 0.95 and 0.54 beat 0.50 and 0.49
    scenes = discover_scenes(source, S2, AOI, {"spring": SPRING}, max_scenes=3, min_valid_fraction=0.5)
    assert ids(scenes["spring"]) == ["A_0402", "J_0412", "C_0420"]  # J: no cloud cover, counted clear


def test_season_with_a_list_of_dates(source: str) -> None:
    from lcstack.inputs import Season

    season = Season(
        name="picked",
        start=dt.date(2024, 4, 2),
        end=dt.date(2024, 7, 15),
        dates=(dt.date(2024, 4, 2), dt.date(2024, 7, 15)),
    )
    scenes = discover_scenes(source, S2, AOI, {"picked": season}, max_cloud_cover=90)
    assert ids(scenes["picked"]) == ["A_0402", "H_0715", "I_0715"]
    as_dict = {"dates": ["2024-04-30", "2024-07-05"]}
    scenes = discover_scenes(source, S2, AOI, {"picked": as_dict})
    assert ids(scenes["picked"]) == ["D_0430", "G_0705"]


def test_no_scene_error_names_the_filters(source: str) -> None:
    winter = SimpleNamespace(start=dt.date(2024, 1, 1), end=dt.date(2024, 2, 28), dates=None)
    with pytest.raises(NoScenesFoundError) as info:
        discover_scenes(source, S2, AOI, {"spring": SPRING, "winter": winter}, max_cloud_cover=20)
    message = str(info.value)
    for part in ("'winter'", "2024-01-01..2024-02-28", S2, str(AOI), "cloud limit 20%", "0 item(s)", "widen"):
        assert part in message, message

    with pytest.raises(NoScenesFoundError) as info:
        discover_scenes(source, S2, AOI, {"spring": SPRING}, max_cloud_cover=1)
    message = str(info.value)
    assert "5 item(s)" in message and "0 of them have eo:cloud_cover < 1" in message
    assert "raise max_cloud_cover" in message and "clearest scene has 2" in message

    with pytest.raises(
        NoScenesFoundError, match=r"lower min_valid_fraction \(now 0.99; the best scene has 0.950\)"
    ):
        discover_scenes(source, S2, AOI, {"spring": SPRING}, max_cloud_cover=60, min_valid_fraction=0.99)


def test_unknown_collection_lists_the_catalog_collections(static_catalog: Path) -> None:
    with pytest.raises(NoScenesFoundError, match="collections are: cop-dem-glo-30, sentinel-2-l1c"):
        discover_scenes(static_catalog, "sentinel-2-c1-l2a", AOI, {"spring": SPRING})


def test_season_without_dates_is_invalid(static_catalog: Path) -> None:
    with pytest.raises(InvalidInputError, match="'odd'"):
        discover_scenes(static_catalog, S2, AOI, {"odd": SimpleNamespace(start=None, end=None, dates=None)})


# --------------------------------------------------------------------------------------------------- DEM


def test_discover_dem(source: str) -> None:
    assert ids(discover_dem(source, DEM, AOI)) == ["dem_N45_E010"]
    assert ids(discover_dem(source, DEM, (9.0, 44.0, 25.0, 55.0))) == ["dem_N45_E010", "dem_N50_E020"]
    with pytest.raises(NoScenesFoundError, match="No DEM item of collection 'cop-dem-glo-30'"):
        discover_dem(source, DEM, (-60.0, -10.0, -59.0, -9.0))
