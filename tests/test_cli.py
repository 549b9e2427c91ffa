"""The command line: --help everywhere, clear errors without tracebacks, exit status 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lcstack.cli import app

runner = CliRunner()

COMMANDS = ["demo-data", "discover", "composite", "train", "classify", "run", "demo", "status", "clean"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def _inputs(
    tmp_path: Path,
    *,
    config_extra: str = "",
    points: str | None = None,
    seasons: dict | None = None,
    lc: str = '{"forest": 2, "water": 7}',
) -> Path:
    (tmp_path / "dataset.csv").write_text(
        points or "latitude;longitude;category\n36.7;-4.4;forest\n36.71;-4.41;water\n"
    )
    (tmp_path / "seasons.json").write_text(
        json.dumps(seasons or {"spring": {"start": "2023-03-01", "end": "2023-05-31"}})
    )
    (tmp_path / "lc.json").write_text(lc)
    (tmp_path / "catalog.json").write_text(
        json.dumps(
            {"type": "Catalog", "id": "empty", "stac_version": "1.0.0", "description": "x", "links": []}
        )
    )
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "stac: catalog.json\nseasons: seasons.json\npoints: dataset.csv\nlc_labels: lc.json\n"
        "storage: out\n" + config_extra
    )
    return cfg


BAD_INPUTS = {
    "unknown key": ({"config_extra": "colection: x\n"}, "unknown key 'colection'"),
    "missing column": (
        {"points": "lat;longitude;category\n36.7;-4.4;forest\n"},
        "missing column(s) latitude",
    ),
    "latitude out of range": (
        {"points": "latitude;longitude;category\n136.7;-4.4;forest\n"},
        "line 2, column latitude",
    ),
    "unparsable date": (
        {"seasons": {"spring": {"start": "2023-02-30", "end": "2023-05-31"}}},
        "cannot parse '2023-02-30'",
    ),
    "end before start": (
        {"seasons": {"spring": {"start": "2023-05-01", "end": "2023-03-01"}}},
        "is before start",
    ),
    "label code 0": ({"lc": '{"forest": 0, "water": 7}'}, "code 0 is not allowed"),
    "duplicated code": ({"lc": '{"forest": 7, "water": 7}'}, "code 7 is already used by 'forest'"),
    "category absent": ({"lc": '{"forest": 2}'}, "category 'water' on line(s) 3 is not in"),
    "missing file": ({"config_extra": "sl_labels: nowhere.json\n"}, "nowhere.json, which does not exist"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("command", ["composite", "run"])
def test_bad_input_exits_2_with_message_and_writes_nothing(tmp_path: Path, case: str, command: str) -> None:
    kwargs, expected = BAD_INPUTS[case]
    cfg = _inputs(tmp_path, **kwargs)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = runner.invoke(app, [command, str(cfg), "--quiet", "--scheduler", "threads"])
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert result.output.startswith("error: ")
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "nothing may be written"


def test_missing_config_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "Config file not found" in result.output


def test_demo_data_rejects_bad_size(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo-data", str(tmp_path / "a"), "--size", "100"])
    assert result.exit_code == 2 and "256" in result.output
    assert not (tmp_path / "a").exists()


def test_demo_data_hard_is_one_tile(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo-data", str(tmp_path / "a"), "--difficulty", "hard", "--tiles", "2"])
    assert result.exit_code != 0 and "difficulty='hard'" in result.output and "one tile" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
