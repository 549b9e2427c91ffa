"""Band names and reflectance scale/offset against real catalog JSON (tests/data/stac-fixtures)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pystac
import pytest

from lcstack.errors import InvalidInputError
from lcstack.harmonize import (
    CANONICAL_BANDS,
    NATIVE_RESOLUTION,
    asset_for_band,
    band_assets,
    canonical_band,
    explain_scale_offset,
    processing_baseline,
    reflectance_scale_offset,
)

FIXTURES = Path(os.environ.get("LCSTACK_STAC_FIXTURES", Path(__file__).parent / "data" / "stac-fixtures"))
pytestmark = [
    pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"STAC fixtures not found at {FIXTURES}"),
    # pystac's storage-extension migration complains about Earth Search c1 hrefs; irrelevant here.
    pytest.mark.filterwarnings("ignore:Could not parse bucket/account from href"),
]

ES = "earth-search-v1"
PC = "planetary-computer"
REFLECTANCE = [b for b in CANONICAL_BANDS if b not in ("scl", "cirrus")]
L2A_BANDS = [*REFLECTANCE, "scl"]


def load_items(relative: str) -> list[pystac.Item]:
    data = json.loads((FIXTURES / relative).read_text())
    if data.get("type") == "FeatureCollection":
        return [pystac.Item.from_dict(feature) for feature in data["features"]]
    return [pystac.Item.from_dict(data)]


def one(relative: str, item_id: str | None = None) -> pystac.Item:
    items = load_items(relative)
    if item_id is None:
        assert len(items) == 1
        return items[0]
    return next(i for i in items if i.id == item_id)


def by_collection(relative: str, collection: str) -> list[pystac.Item]:
    items = [i for i in load_items(relative) if i.collection_id == collection]
    assert items, f"no {collection} item in {relative}"
    return items


# ------------------------------------------------------------------------------------------ band names


@pytest.mark.parametrize(
    ("key", "band"),
    [
        ("red", "red"),
        ("red-jp2", "red"),
        ("nir08", "nir08"),
        ("cirrus", "cirrus"),
        ("scl", "scl"),
        ("scl-jp2", "scl"),
        ("B01", "coastal"),
        ("B8A", "nir08"),
        ("B08", "nir"),
        ("B09", "nir09"),
        ("B10", "cirrus"),
        ("B11", "swir16"),
        ("B12", "swir22"),
        ("SCL", "scl"),
        ("B02_10m", "blue"),
        ("B02_60m", "blue"),
        ("B8A_20m", "nir08"),
        ("SCL_20m", "scl"),
        ("visual", None),
        ("visual-jp2", None),
        ("thumbnail", None),
        ("aot", None),
        ("AOT", None),
        ("AOT_10m", None),
        ("wvp-jp2", None),
        ("WVP_20m", None),
        ("TCI_10m", None),
        ("granule_metadata", None),
        ("safe-manifest", None),
        ("cloud", None),
        ("snow", None),
        ("Product", None),
        ("data", None),
    ],
)
def test_canonical_band(key: str, band: str | None) -> None:
    assert canonical_band(key) == band


def test_native_resolution_covers_every_band() -> None:
    assert set(NATIVE_RESOLUTION) == set(CANONICAL_BANDS)
    assert NATIVE_RESOLUTION["blue"] == 10 and NATIVE_RESOLUTION["rededge1"] == 20
    assert NATIVE_RESOLUTION["coastal"] == 60 and NATIVE_RESOLUTION["scl"] == 20


def test_landsat_assets_are_not_sentinel2_bands() -> None:
    landsat = by_collection(f"{ES}/search_s2-l2a+landsat_20231008_page1.json", "landsat-c2-l2")[0]
    assert "red" in landsat.assets
    assert canonical_band("red", landsat) is None
    assert band_assets(landsat) == {}


def test_band_assets_earth_search_prefers_cog_over_jp2() -> None:
    item = one(f"{ES}/S2A_32TPS_20230602_0_L2A.json")
    assets = band_assets(item)
    assert list(assets) == L2A_BANDS
    assert assets == {band: band for band in L2A_BANDS}
    assert asset_for_band(item, "nir08") == "nir08"
    assert asset_for_band(item, "cirrus") is None


def test_band_assets_planetary_computer() -> None:
    item = one(f"{PC}/S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json")
    assets = band_assets(item)
    assert list(assets) == L2A_BANDS
    assert assets["nir08"] == "B8A" and assets["coastal"] == "B01" and assets["scl"] == "SCL"
    assert assets["swir22"] == "B12"


def test_band_assets_cdse_picks_native_resolution() -> None:
    item = one("cdse/S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914.json")
    assets = band_assets(item)
    assert list(assets) == L2A_BANDS
    assert assets["blue"] == "B02_10m"  # 10, 20 and 60 m exist
    assert assets["coastal"] == "B01_60m"  # 20 and 60 m exist
    assert assets["rededge1"] == "B05_20m"
    assert assets["nir"] == "B08_10m"
    assert assets["nir08"] == "B8A_20m"
    assert assets["nir09"] == "B09_60m"
    assert assets["scl"] == "SCL_20m"
    for band, key in assets.items():
        assert key.endswith(f"_{NATIVE_RESOLUTION[band]}m")


def test_band_assets_l1c_has_cirrus_and_no_scl() -> None:
    item = one(f"{ES}/items_sentinel-2-l1c_limit1.json")
    assets = band_assets(item)
    assert assets["cirrus"] == "cirrus"
    assert "scl" not in assets
    assert set(assets) == set(REFLECTANCE) | {"cirrus"}


def test_asset_for_band_rejects_unknown_band() -> None:
    item = one(f"{ES}/S2A_32TPS_20230602_0_L2A.json")
    with pytest.raises(InvalidInputError, match="B04"):
        asset_for_band(item, "B04")


# ------------------------------------------------------------------------------------ processing baseline


@pytest.mark.parametrize(
    ("relative", "baseline"),
    [
        (f"{ES}/S2A_32TPS_20230602_0_L2A.json", "05.09"),
        (f"{PC}/S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json", "02.12"),
        ("cdse/S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914.json", "05.11"),
        (f"{ES}/items_sentinel-2-l1c_limit1.json", "05.10"),
    ],
)
def test_processing_baseline(relative: str, baseline: str) -> None:
    assert processing_baseline(one(relative)) == baseline


def test_processing_baseline_from_id_only() -> None:
    item = one("cdse/S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914.json")
    del item.properties["processing:version"]
    assert processing_baseline(item) == "05.11"


# --------------------------------------------------------------------------------------- scale / offset


def assert_scale_offset(item: pystac.Item, key: str, expected: tuple[float, float]) -> None:
    scale, offset = reflectance_scale_offset(item, key)
    assert (scale, offset) == pytest.approx(expected), explain_scale_offset(item, key)
    assert isinstance(scale, float) and isinstance(offset, float)


def test_earth_search_flag_true_cog_has_no_offset_despite_raster_bands() -> None:
    item = one(f"{ES}/S2A_32TPS_20230602_0_L2A.json")
    assert item.properties["earthsearch:boa_offset_applied"] is True
    assert item.assets["red"].extra_fields["raster:bands"][0]["offset"] == -0.1  # the misleading declaration
    for band in REFLECTANCE:
        assert_scale_offset(item, band, (1e-4, 0.0))
    assert "boa_offset_applied" in explain_scale_offset(item, "red")


def test_earth_search_flag_true_jp2_keeps_esa_offset() -> None:
    item = one(f"{ES}/S2A_32TPS_20230602_0_L2A.json")
    for band in REFLECTANCE:
        assert_scale_offset(item, f"{band}-jp2", (1e-4, -0.1))


def test_scl_is_never_scaled() -> None:
    for relative, key in [
        (f"{ES}/S2A_32TPS_20230602_0_L2A.json", "scl"),
        (f"{ES}/S2A_32TPS_20230602_0_L2A.json", "scl-jp2"),
        (f"{PC}/S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json", "SCL"),
        ("cdse/S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914.json", "SCL_20m"),
    ]:
        assert_scale_offset(one(relative), key, (1.0, 0.0))


def test_earth_search_2020_baseline_0214_has_no_offset() -> None:
    items = load_items(f"{ES}/itemcollection_s2-l2a_2020-04_baseline-02.14.json")
    assert len(items) == 24
    for item in items:
        assert item.properties["s2:processing_baseline"] == "02.14"
        assert item.properties["earthsearch:boa_offset_applied"] is False
        for band in REFLECTANCE:
            assert_scale_offset(item, band, (1e-4, 0.0))
            assert_scale_offset(item, f"{band}-jp2", (1e-4, 0.0))


def test_earth_search_search_pages() -> None:
    l2a = by_collection(f"{ES}/search_s2-l2a+landsat_20231008_page1.json", "sentinel-2-l2a")
    assert [i.id for i in l2a] == ["S2A_13TDE_20231008_0_L2A"]
    assert_scale_offset(l2a[0], "nir", (1e-4, 0.0))
    assert_scale_offset(l2a[0], "nir-jp2", (1e-4, -0.1))

    mixed = f"{ES}/search_cql2-filter_mixed-collections_page1.json"
    l2a = by_collection(mixed, "sentinel-2-l2a")
    assert len(l2a) == 2
    for item in l2a:  # PB 05.11, flag true
        assert_scale_offset(item, "red", (1e-4, 0.0))
        assert_scale_offset(item, "red-jp2", (1e-4, -0.1))
    l1c = by_collection(mixed, "sentinel-2-l1c")
    assert len(l1c) == 2
    for item in l1c:  # ESA JP2s
        assert_scale_offset(item, "red", (1e-4, -0.1))
        assert_scale_offset(item, "cirrus", (1e-4, -0.1))
    c1 = by_collection(mixed, "sentinel-2-c1-l2a")
    assert len(c1) == 3
    for item in c1:  # collection 1: ESA DNs in the COGs, declared -0.1 applies
        assert_scale_offset(item, "red", (1e-4, -0.1))
        assert_scale_offset(item, "scl", (1.0, 0.0))
    s1 = by_collection(mixed, "sentinel-1-grd")
    assert all(band_assets(item) == {} for item in s1)


def test_earth_search_l1c_jp2_applies_declared_offset() -> None:
    item = one(f"{ES}/items_sentinel-2-l1c_limit1.json")
    for band in [*REFLECTANCE, "cirrus"]:
        assert_scale_offset(item, band, (1e-4, -0.1))


def test_planetary_computer_old_baseline_has_no_offset() -> None:
    item = one(f"{PC}/S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json")
    for key in ["B01", "B02", "B8A", "B12"]:
        assert_scale_offset(item, key, (1e-4, 0.0))
    assert "02.12" in explain_scale_offset(item, "B02")


def test_planetary_computer_baseline_0511_subtracts_offset() -> None:
    items = load_items(f"{PC}/itemcollection_two-items_2024-08_baseline-05.11.json")
    assert len(items) == 2
    for item in items:
        for key in ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]:
            assert_scale_offset(item, key, (1e-4, -0.1))
        assert_scale_offset(item, "SCL", (1.0, 0.0))
        assert "05.11 >= 04.00" in explain_scale_offset(item, "B04")


def test_cdse_flat_raster_scale_offset() -> None:
    item = one("cdse/S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914.json")
    assert item.assets["B04_10m"].extra_fields["raster:offset"] == -0.1
    for key in band_assets(item).values():
        if key != "SCL_20m":
            assert_scale_offset(item, key, (1e-4, -0.1))
    assert_scale_offset(item, "B02_60m", (1e-4, -0.1))


def test_dem_asset_is_unscaled() -> None:
    item = one(f"{ES}/search_cop-dem-glo-30_limit1.json")
    assert band_assets(item) == {}
    assert_scale_offset(item, "data", (1.0, 0.0))


def test_no_baseline_falls_back_to_acquisition_date() -> None:
    item = load_items(f"{PC}/itemcollection_two-items_2024-08_baseline-05.11.json")[0]
    del item.properties["s2:processing_baseline"]
    assert processing_baseline(item) is None
    assert_scale_offset(item, "B04", (1e-4, -0.1))
    assert "guessed" in explain_scale_offset(item, "B04")

    old = one(f"{PC}/S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json")
    del old.properties["s2:processing_baseline"]
    assert_scale_offset(old, "B04", (1e-4, 0.0))


def test_flag_false_on_new_baseline_uses_declared_and_says_it_is_doubtful() -> None:
    item = one(f"{ES}/S2A_32TPS_20230602_0_L2A.json")
    item.properties["earthsearch:boa_offset_applied"] = False
    assert_scale_offset(item, "red", (1e-4, -0.1))
    assert "got wrong before" in explain_scale_offset(item, "red")


def test_unknown_asset_key_is_an_error() -> None:
    item = one(f"{ES}/S2A_32TPS_20230602_0_L2A.json")
    with pytest.raises(InvalidInputError, match="no asset 'B04'"):
        reflectance_scale_offset(item, "B04")


def test_every_fixture_item_has_a_decision() -> None:
    """Every Sentinel-2 band asset of every fixture gets a float pair and a reason without raising."""
    count = 0
    for path in sorted(FIXTURES.rglob("*.json")):
        data = json.loads(path.read_text())
        if data.get("type") not in ("Feature", "FeatureCollection"):
            continue
        for item in load_items(str(path.relative_to(FIXTURES))):
            for key in band_assets(item).values():
                scale, offset = reflectance_scale_offset(item, key)
                assert scale in (1e-4, 1.0) and offset in (0.0, -0.1)
                assert item.id in explain_scale_offset(item, key)
                count += 1
    assert count > 400
