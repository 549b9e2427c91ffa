"""A season whose scenes are all cloud in SCL (though their metadata says clear) is named, with its
scenes, their measured valid fraction and what to change, instead of a vague error at training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import dask
import pytest
import rasterio

from lcstack.config import load_config
from lcstack.errors import NoScenesFoundError
from lcstack.pipeline import Workflow


def test_all_cloud_season_names_season_scenes_and_fixes(demo_area: Any, tmp_path: Path) -> None:
    root = tmp_path / "area"
    shutil.copytree(demo_area.root, root, ignore=shutil.ignore_patterns("lcstack-data"))
    seasons = json.loads((root / "seasons.json").read_text())
    (root / "seasons.json").write_text(json.dumps({"autumn": seasons["autumn"]}))
    text = (root / "config.yaml").read_text().replace("dem_collection:", "# dem_collection:")
    (root / "config.yaml").write_text(text)
    cfg = load_config(root / "config.yaml")
    with Workflow(cfg, progress=False) as wf:
        picked = [s.id for s in wf.discover()["30SUF"]["autumn"]]
    for item in picked:  # every picked autumn scene: SCL 9 (cloud, high probability) everywhere
        with rasterio.open(
            root / "stac" / "sentinel-2-l2a" / item / "SCL.tif", "r+", IGNORE_COG_LAYOUT_BREAK="YES"
        ) as ds:
            ds.write(ds.read() * 0 + 9)
    with dask.config.set(scheduler="threads"), Workflow(cfg, progress=False) as wf:
        with pytest.raises(NoScenesFoundError) as err:
            wf.run(["discover", "composite"])
        p = wf.composite_plan()[0]
        assert not wf._is_complete("composites", p.key, p.url), "an empty composite is not recorded complete"
    msg = str(err.value)
    assert "'autumn'" in msg
    for item in picked:
        assert f"{item} (valid 0.00" in msg, msg
    for fix in ("max_cloud_cover", "min_valid_fraction", "dates", "mask.classes"):
        assert fix in msg, (fix, msg)
