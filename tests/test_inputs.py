"""Input readers: every malformed input gives one clear error naming the file, the line or key, and a fix."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from lcstack.config import AoiBox, load_config
from lcstack.errors import InputFileNotFoundError, InputWarning, InvalidInputError, SkippedPointsWarning
from lcstack.inputs import read_lc_labels, read_points, read_seasons, read_sl_labels, validate_points_labels


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# ------------------------------------------------------------------------ points
@pytest.mark.parametrize("sep", [";", ",", "\t"])
def test_points_separator_detected(tmp_path: Path, sep: str) -> None:
    p = write(
        tmp_path,
        "d.csv",
        sep.join(["latitude", "longitude", "category", "subcategory"])
        + "\n"
        + sep.join(["36.7", "-4.4", "forest", "conifers"])
        + "\n"
        + sep.join(["36.8", "-4.5", "water", ""])
        + "\n",
    )
    df = read_points(p)
    assert list(df["category"]) == ["forest", "water"]
    assert df["subcategory"].iloc[0] == "conifers" and df["subcategory"].iloc[1] is None
    assert list(df["line"]) == [2, 3]
    assert df["latitude"].dtype == float


def test_points_subcategory_optional_and_case_insensitive(tmp_path: Path) -> None:
    p = write(tmp_path, "d.csv", "Latitude,Longitude,Category\n36.7,-4.4,forest\n")
    df = read_points(p)
    assert df.loc[0, "subcategory"] is None and df.loc[0, "category"] == "forest"


def test_points_missing_column(tmp_path: Path) -> None:
    p = write(tmp_path, "d.csv", "latitude;lon;category\n36.7;-4.4;forest\n")
    with pytest.raises(InvalidInputError) as err:
        read_points(p)
    msg = str(err.value)
    assert (
        str(p) in msg and "line 1" in msg and "longitude" in msg and "found: latitude, lon, category" in msg
    )


def test_points_latitude_out_of_range_names_line(tmp_path: Path) -> None:
    p = write(
        tmp_path, "d.csv", "latitude;longitude;category\n36.7;-4.4;forest\n-4.4;136.7;forest\n95;-4.4;water\n"
    )
    with pytest.raises(InvalidInputError) as err:
        read_points(p)
    msg = str(err.value)
    assert "line 4, column latitude: 95 is outside ±90" in msg
    assert "swapped" in msg


def test_points_not_a_number(tmp_path: Path) -> None:
    p = write(tmp_path, "d.csv", "latitude;longitude;category\n36,7;-4.4;forest\n")
    with pytest.raises(InvalidInputError, match=r"line 2, column latitude: '36,7' is not a number"):
        read_points(p)


def test_points_empty_category(tmp_path: Path) -> None:
    p = write(tmp_path, "d.csv", "latitude;longitude;category\n36.7;-4.4;\n")
    with pytest.raises(InvalidInputError, match="line 2, column category: empty"):
        read_points(p)


def test_points_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputFileNotFoundError, match="nope.csv"):
        read_points(tmp_path / "nope.csv")


def test_points_category_absent_from_labels(tmp_path: Path) -> None:
    p = write(
        tmp_path, "d.csv", "latitude;longitude;category;subcategory\n36.7;-4.4;forest;x\n36.7;-4.4;forrest;\n"
    )
    df = read_points(p)
    with pytest.raises(InvalidInputError) as err:
        validate_points_labels(df, {"forest": 2}, {"x": 2}, source=p, lc_source="lc.json")
    msg = str(err.value)
    assert "category 'forrest' on line(s) 3 is not in lc.json" in msg and "did you mean 'forest'" in msg


def test_points_subcategory_absent_from_labels(tmp_path: Path) -> None:
    p = write(tmp_path, "d.csv", "latitude;longitude;category;subcategory\n36.7;-4.4;forest;pine\n")
    with pytest.raises(InvalidInputError, match="subcategory 'pine' on line.s. 2 is not in sl.json"):
        validate_points_labels(read_points(p), {"forest": 2}, {"conifers": 2}, source=p, sl_source="sl.json")


# ------------------------------------------------------------------------ seasons
def test_seasons_ranges_and_lists(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "s.json",
        json.dumps(
            {"spring": {"start": "2021-03-01", "end": "2021-04-30"}, "summer": ["2021-07-10", "2021-06-01"]}
        ),
    )
    s = read_seasons(p)
    assert s["spring"].start == dt.date(2021, 3, 1) and s["spring"].dates is None
    assert s["summer"].dates == (dt.date(2021, 6, 1), dt.date(2021, 7, 10))
    assert s["summer"].start == dt.date(2021, 6, 1) and s["summer"].end == dt.date(2021, 7, 10)
    assert s["spring"].datetime_range == "2021-03-01T00:00:00Z/2021-04-30T23:59:59Z"


def test_seasons_unparsable_date(tmp_path: Path) -> None:
    p = write(tmp_path, "s.json", json.dumps({"spring": {"start": "2021-13-01", "end": "2021-04-30"}}))
    with pytest.raises(InvalidInputError) as err:
        read_seasons(p)
    assert "season 'spring', key 'start'" in str(err.value) and "YYYY-MM-DD" in str(err.value)


def test_seasons_end_before_start(tmp_path: Path) -> None:
    p = write(tmp_path, "s.json", json.dumps({"autumn": {"start": "2021-11-30", "end": "2021-09-01"}}))
    with pytest.raises(InvalidInputError, match="season 'autumn': end 2021-09-01 is before start 2021-11-30"):
        read_seasons(p)


def test_seasons_bad_json_names_line(tmp_path: Path) -> None:
    p = write(tmp_path, "s.json", '{\n  "spring": {"start": "2021-03-01",\n  }\n}')
    with pytest.raises(InvalidInputError, match=r"line 3, column 3"):
        read_seasons(p)


# ------------------------------------------------------------------------ labels
def test_labels_ok(tmp_path: Path) -> None:
    assert read_lc_labels(write(tmp_path, "lc.json", '{"forest": 2, "water": 1}')) == {
        "forest": 2,
        "water": 1,
    }
    assert read_sl_labels(write(tmp_path, "sl.json", '{"conifers": 2}')) == {"conifers": 2}


def test_lc_label_code_zero(tmp_path: Path) -> None:
    p = write(tmp_path, "lc.json", '{"forest": 0}')
    with pytest.raises(
        InvalidInputError, match="key 'forest': code 0 is not allowed.*0 is reserved for nodata"
    ):
        read_lc_labels(p)


def test_sl_label_code_one_reserved(tmp_path: Path) -> None:
    p = write(tmp_path, "sl.json", '{"conifers": 1}')
    with pytest.raises(InvalidInputError, match="1 for unclassified"):
        read_sl_labels(p)


def test_label_code_duplicated(tmp_path: Path) -> None:
    p = write(tmp_path, "lc.json", '{"forest": 2, "water": 2}')
    with pytest.raises(InvalidInputError, match="key 'water': code 2 is already used by 'forest'"):
        read_lc_labels(p)


# ------------------------------------------------------------------------ config
@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    write(tmp_path, "dataset.csv", "latitude;longitude;category\n36.7;-4.4;forest\n")
    write(tmp_path, "seasons.json", json.dumps({"spring": {"start": "2021-03-01", "end": "2021-04-30"}}))
    write(tmp_path, "lc.json", '{"forest": 2}')
    (tmp_path / "catalog").mkdir()
    write(tmp_path, "catalog/catalog.json", "{}")
    return tmp_path


BASE = "stac: catalog/catalog.json\nseasons: seasons.json\npoints: dataset.csv\nlc_labels: lc.json\n"


def test_config_resolves_relative_paths(inputs: Path) -> None:
    cfg = load_config(
        write(
            inputs, "config.yaml", BASE + "aoi: {bbox: [360000, 4074880, 365120, 4080000], crs: EPSG:32630}\n"
        )
    )
    assert cfg.points == inputs / "dataset.csv"
    assert cfg.stac == str(inputs / "catalog" / "catalog.json")
    assert cfg.storage == str(inputs / "lcstack-data")
    assert isinstance(cfg.aoi, AoiBox) and cfg.aoi.crs == "EPSG:32630"
    assert cfg.resolution == 10 and cfg.mask.classes == (3, 8, 9, 10, 11)


def test_config_keeps_urls(inputs: Path) -> None:
    cfg = load_config(
        write(
            inputs,
            "c.yaml",
            BASE.replace("catalog/catalog.json", "https://earth-search.aws.element84.com/v1")
            + "storage: s3://bucket/lc\n",
        )
    )
    assert cfg.stac.startswith("https://") and cfg.storage == "s3://bucket/lc"


def test_config_unknown_key_names_line_and_suggestion(inputs: Path) -> None:
    p = write(inputs, "c.yaml", BASE + "max_cloud_covr: 20\n")
    with pytest.raises(InvalidInputError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg and "line 5" in msg and "unknown key 'max_cloud_covr'" in msg
    assert "Did you mean 'max_cloud_cover'" in msg


def test_config_wrong_value(inputs: Path) -> None:
    p = write(inputs, "c.yaml", BASE + "max_cloud_cover: 120\n")
    with pytest.raises(InvalidInputError, match=r"line 5, key 'max_cloud_cover'.*100"):
        load_config(p)


def test_config_missing_file(inputs: Path) -> None:
    p = write(inputs, "c.yaml", BASE.replace("dataset.csv", "missing.csv"))
    with pytest.raises(InputFileNotFoundError) as err:
        load_config(p)
    assert "line 3" in str(err.value) and "key 'points'" in str(err.value) and "missing.csv" in str(err.value)


def test_config_missing_required_key(inputs: Path) -> None:
    p = write(inputs, "c.yaml", "stac: catalog/catalog.json\npoints: dataset.csv\nlc_labels: lc.json\n")
    with pytest.raises(InvalidInputError, match="missing required key 'seasons': the seasons file"):
        load_config(p)


def test_config_bad_aoi(inputs: Path) -> None:
    p = write(inputs, "c.yaml", BASE + "aoi: [10, 50, 5, 40]\n")
    with pytest.raises(InvalidInputError, match="key 'aoi'"):
        load_config(p)


def test_config_not_yaml(inputs: Path) -> None:
    p = write(inputs, "c.yaml", BASE + "bands: [red, nir\n")
    with pytest.raises(InvalidInputError, match="not valid YAML"):
        load_config(p)


# ------------------------------------------------------------------------ encodings (issue 14, item 5)
def test_points_latin1_names_file_line_and_fix(tmp_path: Path) -> None:
    p = tmp_path / "dataset.csv"
    p.write_bytes("latitude;longitude;category\n36.7;-4.4;forest\n36.8;-4.5;pastizal_ñ\n".encode("latin-1"))
    with pytest.raises(InvalidInputError) as err:
        read_points(p)
    msg = str(err.value)
    assert str(p) in msg and "line 3" in msg and "byte 64" in msg and "UTF-8" in msg
    assert "iconv -f latin1 -t utf-8" in msg


def test_points_utf8_bom_accepted(tmp_path: Path) -> None:
    p = tmp_path / "dataset.csv"
    p.write_bytes("latitude;longitude;category\n36.7;-4.4;pastizal_ñ\n".encode("utf-8-sig"))
    assert list(read_points(p)["category"]) == ["pastizal_ñ"]


def test_labels_latin1_names_file(tmp_path: Path) -> None:
    p = tmp_path / "lc.json"
    p.write_bytes('{"forest": 2,\n "pastizal_ñ": 3}'.encode("latin-1"))
    with pytest.raises(InvalidInputError, match=r"lc.json, line 2.*not UTF-8"):
        read_lc_labels(p)


# ------------------------------------------------------------------------ suspicious inputs (item 10)
def test_points_duplicated_rows_warned_and_counted_once(tmp_path: Path) -> None:
    rows = ["36.7;-4.4;forest", "36.8;-4.5;water", "36.7;-4.4;forest", "36.7;-4.4;forest"]
    p = write(tmp_path, "d.csv", "latitude;longitude;category\n" + "\n".join(rows) + "\n")
    with pytest.warns(SkippedPointsWarning, match=r"d.csv: 2 duplicated row\(s\).*line 4 repeats line 2"):
        df = read_points(p)
    assert list(df["line"]) == [2, 3]


def test_subcategory_under_two_categories_refused(tmp_path: Path) -> None:
    rows = [
        "36.70;-4.40;forest;conifers",
        "36.71;-4.41;forest;conifers",
        "36.72;-4.42;shrubland;conifers",
        "36.73;-4.43;shrubland;conifers",
    ]
    p = write(tmp_path, "d.csv", "latitude;longitude;category;subcategory\n" + "\n".join(rows) + "\n")
    with pytest.raises(InvalidInputError) as err:
        validate_points_labels(read_points(p), {"forest": 2, "shrubland": 3}, {"conifers": 2}, source=p)
    msg = str(err.value)
    assert str(p) in msg and "subcategory 'conifers'" in msg
    assert "'forest' (lines 2, 3)" in msg and "'shrubland' (lines 4, 5)" in msg


def test_class_with_a_single_point_refused(tmp_path: Path) -> None:
    rows = ["36.70;-4.40;forest", "36.71;-4.41;forest", "36.72;-4.42;water"]
    p = write(tmp_path, "d.csv", "latitude;longitude;category\n" + "\n".join(rows) + "\n")
    with pytest.raises(InvalidInputError) as err:
        validate_points_labels(read_points(p), {"forest": 2, "water": 7}, None, source=p)
    msg = str(err.value)
    assert str(p) in msg and "category 'water' has 1 point (line 4)" in msg and "at least 2" in msg


def test_overlapping_seasons_warned(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "s.json",
        json.dumps(
            {
                "spring": {"start": "2021-03-01", "end": "2021-05-31"},
                "summer": {"start": "2021-05-15", "end": "2021-08-31"},
                "autumn": {"start": "2021-09-01", "end": "2021-11-30"},
            },
            indent=1,
        ),
    )
    with pytest.warns(
        InputWarning, match=r"s.json: seasons 'spring' \(line 2\) and 'summer' \(line 6\) overlap"
    ):
        read_seasons(p)


# ------------------------------------------------------------------------ vague messages (item 11)
def test_label_code_given_as_string(tmp_path: Path) -> None:
    p = write(tmp_path, "lc.json", '{\n  "forest": 2,\n  "water": "7"\n}')
    with pytest.raises(InvalidInputError) as err:
        read_lc_labels(p)
    msg = str(err.value)
    assert str(p) in msg and "line 3" in msg and "'7' is a string" in msg and '"water": 7' in msg


def test_config_without_points_says_what_they_are_for(inputs: Path) -> None:
    p = write(inputs, "c.yaml", "stac: catalog/catalog.json\nseasons: seasons.json\nlc_labels: lc.json\n")
    cfg = load_config(p)
    assert cfg.points is None
    with pytest.raises(InvalidInputError) as err:
        cfg.read_points()
    msg = str(err.value)
    assert str(p) in msg and "missing key 'points'" in msg and "labelled points" in msg
    assert "points: dataset.csv" in msg


def test_config_python_tag_refused_as_unsafe(inputs: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    p = write(inputs, "c.yaml", BASE + f"bands: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(InvalidInputError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg and "line 5" in msg and "!!python/object/apply:os.system" in msg and "unsafe" in msg
    assert not marker.exists()
