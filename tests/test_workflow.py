"""End to end: the demo through the CLI, maps against truth, reuse on re-run, and bad inputs of each step."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import rasterio
import xarray as xr
from rio_cogeo.cogeo import cog_validate

from lcstack.classify import classify
from lcstack.config import load_config
from lcstack.errors import InvalidInputError, ModelMismatchError, NoCloudMaskWarning, SkippedPointsWarning
from lcstack.model import load_model
from lcstack.pipeline import Workflow

LCSTACK = str(Path(sys.executable).with_name("lcstack"))


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LCSTACK_PROGRESS": "0"}
    return subprocess.run([LCSTACK, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=900)


def _read(path: str | Path) -> tuple[np.ndarray, Any, Any]:
    with rasterio.open(path) as src:
        return src.read(1), src.transform, src


def _on_truth_grid(map_path: str | Path, truth_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The map's pixels at the truth raster's pixel centres (both on 10 m grids in the same CRS)."""
    with rasterio.open(truth_path) as t, rasterio.open(map_path) as m:
        truth = t.read(1)
        assert t.crs == m.crs
        rows, cols = np.mgrid[0 : t.height, 0 : t.width]
        xs, ys = rasterio.transform.xy(t.transform, rows.ravel(), cols.ravel())
        mr, mc = rasterio.transform.rowcol(m.transform, xs, ys)
        data = m.read(1)
        return data[np.asarray(mr), np.asarray(mc)].reshape(truth.shape), truth


@pytest.fixture(scope="module")
def demo512(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`lcstack demo --size 512`, the README's main job, run as a user would (LocalCluster)."""
    root = tmp_path_factory.mktemp("demo512")
    proc = _cli("demo", "--size", "512", "--storage", str(root / "demo"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "demo", proc


def test_demo_maps_agree_with_truth(demo512: tuple[Path, Any]) -> None:
    root, proc = demo512
    reported = float(re.search(r"level-1 overall accuracy vs truth: ([0-9.]+)", proc.stdout).group(1))
    maps = sorted((root / "lcstack-data" / "classification-maps").rglob("level1.tif"))
    assert len(maps) == 1
    got, truth = _on_truth_grid(maps[0], root / "truth.tif")
    valid = got > 0
    assert valid.mean() > 0.99, "nodata only where the composites have no valid observation"
    accuracy = float(np.mean(got[valid] == truth[valid]))
    assert accuracy >= 0.95
    assert abs(accuracy - reported) < 0.01
    got2, truth2 = _on_truth_grid(maps[0].with_name("level2.tif"), root / "truth_sl.tif")
    valid2 = got2 > 0
    assert float(np.mean(got2[valid2] == truth2[valid2])) >= 0.9
    # level 2 is "unclassified" (1) exactly where the category has no subcategories
    no_sub = truth2 == 1
    assert np.mean(got2[no_sub & valid2] == 1) > 0.95


def test_demo_outputs_are_valid_cogs_with_colour_tables(demo512: tuple[Path, Any]) -> None:
    root, _ = demo512
    lc = json.loads((root / "lc_labels.json").read_text())
    for tif in sorted((root / "lcstack-data" / "classification-maps").rglob("level*.tif")):
        valid, errors, _ = cog_validate(str(tif))
        assert valid and not errors, (tif, errors)
        with rasterio.open(tif) as src:
            assert src.dtypes[0] == "uint8" and src.nodata == 0
            cmap = src.colormap(1)
            # halved until the image fits in one block: a map of one block needs none
            block = src.block_shapes[0][0]
            assert bool(src.overviews(1)) == (max(src.shape) > block), ("overviews", src.shape, block)
            if tif.name == "level1.tif":
                assert set(lc.values()) <= set(cmap)
    zarr = next((root / "lcstack-data" / "classification-maps").rglob("maps.zarr"))
    maps = xr.open_zarr(zarr)
    assert maps["level1"].dtype == np.uint8
    assert list(maps["level1"].attrs["flag_values"]) == [0, *sorted(lc.values())]
    assert maps["level1"].attrs["flag_meanings"].split()[1:] == [
        k for k, _ in sorted(lc.items(), key=lambda kv: kv[1])
    ]


def test_demo_rerun_reuses_everything(demo512: tuple[Path, Any]) -> None:
    root, _ = demo512
    data = root / "lcstack-data"
    before = {
        p: p.stat().st_mtime_ns
        for p in data.rglob("*")
        if p.is_file() and p.name != "registry.sqlite" and "registry.sqlite" not in p.name
    }
    proc = _cli("run", str(root / "config.yaml"), "--scheduler", "threads", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines and all("reused" in ln for ln in lines), proc.stdout
    after = {
        p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file() and "registry.sqlite" not in p.name
    }
    assert after == before, "a re-run of an unchanged config rewrites nothing"


# ---------------------------------------------------------------------------------------- in process
def test_map_equals_in_memory_predict(demo_run: Any) -> None:
    area, cfg, _ = demo_run
    with Workflow(cfg, progress=False) as wf:
        tile = next(iter(wf.tiles))
        cube = wf.features(tile).compute()
        model, meta = load_model(wf.model_url())
        rec = wf.maps()[0]
        stored = xr.open_zarr(wf.map_urls(rec)["zarr"]).compute()
    X = cube.transpose("y", "x", "feature").values.reshape(-1, cube.sizes["feature"])
    from lcstack.classify import feature_seasons, valid_seasons_block

    # nodata only where no season was observed; a pixel missing a season is classified from the others
    seasons = feature_seasons([str(f) for f in cube["feature"].values])
    ok = valid_seasons_block(X.T[:, :, None], seasons)[:, 0] > 0
    l1 = np.zeros(len(X), np.uint8)
    l2 = np.zeros(len(X), np.uint8)
    p1, p2 = model.predict_levels(X[ok])
    l1[ok], l2[ok] = p1, p2
    shape = (cube.sizes["y"], cube.sizes["x"])
    np.testing.assert_array_equal(stored["level1"].values, l1.reshape(shape))
    np.testing.assert_array_equal(stored["level2"].values, l2.reshape(shape))
    np.testing.assert_array_equal(model.predict(X[ok]), p1)
    with rasterio.open(wf.map_urls(rec)["level1"]) as src:
        np.testing.assert_array_equal(src.read(1), l1.reshape(shape))


def test_accessor_classify_is_lazy_and_matches(demo_run: Any) -> None:
    area, cfg, _ = demo_run
    with Workflow(cfg, progress=False) as wf:
        cube = wf.features(next(iter(wf.tiles)))
        maps = cube.landcover.classify(wf.model_url())
        rec = wf.maps()[0]
    assert dask.is_dask_collection(maps["level1"])
    stored = xr.open_zarr(wf.map_urls(rec)["zarr"])
    window = {"x": slice(20, 90), "y": slice(40, 120)}
    np.testing.assert_array_equal(maps["level1"].isel(window).values, stored["level1"].isel(window).values)


def test_points_with_class_absent_from_labels(demo_run: Any, tmp_path: Path) -> None:
    area, cfg, _ = demo_run
    bad = tmp_path / "dataset.csv"
    text = Path(cfg.points).read_text().splitlines()
    text.append(text[1].replace(text[1].split(";")[2], "vineyard", 1))
    bad.write_text("\n".join(text) + "\n")
    with pytest.raises(
        InvalidInputError, match=rf"category 'vineyard' on line\(s\) {len(text)} is not in .*lc_labels.json"
    ):
        Workflow(load_config(cfg.source, points=str(bad), storage=str(tmp_path / "out")), progress=False)
    assert not (tmp_path / "out").exists()


def test_all_points_outside_the_aoi(demo_run: Any, tmp_path: Path) -> None:
    area, cfg, _ = demo_run
    far = tmp_path / "dataset.csv"
    far.write_text(
        "latitude;longitude;category;subcategory\n40.4;-3.7;forest;conifers\n40.41;-3.71;forest;conifers\n"
        "40.5;-3.6;water;\n40.51;-3.61;water;\n"
    )
    with Workflow(load_config(cfg.source, points=str(far), storage=cfg.storage), progress=False) as wf:
        with (
            dask.config.set(scheduler="threads"),
            pytest.raises(InvalidInputError) as err,
            pytest.warns(SkippedPointsWarning, match="left out 4 point"),
        ):
            wf.samples()
    msg = str(err.value)
    assert "none of the 4 points" in msg and "aoi" in msg


def test_model_from_another_feature_set(demo_run: Any, tmp_path: Path) -> None:
    area, cfg, _ = demo_run
    with Workflow(cfg, progress=False) as wf:
        cube = wf.features(next(iter(wf.tiles)))
        model_url = wf.model_url()
    other = cube.drop_sel(feature=["spring_ndvi", "elevation"])
    with pytest.raises(ModelMismatchError) as err:
        classify(other, model_url)
    assert "spring_ndvi" in str(err.value) and "elevation" in str(err.value)


def test_l1c_catalog_without_dem_or_scl(tmp_path: Path) -> None:
    """Another collection (no SCL, extra cirrus band, no offset) and no DEM: the run adapts and warns."""
    from lcstack.demo import make_demo_area

    area = make_demo_area(tmp_path / "l1c", size=256, seed=3, flavour="l1c", with_dem=False)
    cfg = load_config(area.config)
    assert cfg.collection == "sentinel-2-l1c" and cfg.dem_collection is None
    with warnings.catch_warnings(record=True) as caught, dask.config.set(scheduler="threads"):
        warnings.simplefilter("always")
        with Workflow(cfg, progress=False) as wf:
            wf.run()
            _, meta = load_model(wf.model_url())
            rec = wf.maps()[0]
    assert any(issubclass(w.category, NoCloudMaskWarning) for w in caught)
    assert "spring_cirrus" in meta["features"] and "elevation" not in meta["features"]
    got, truth = _on_truth_grid(wf.map_urls(rec)["level1"], area.truth)
    valid = got > 0
    assert np.mean(got[valid] == truth[valid]) > 0.8


def test_status_and_clean_commands(tmp_path: Path) -> None:
    from lcstack.demo import make_demo_area

    area = make_demo_area(tmp_path / "area", size=256, seed=5, with_dem=False)
    config = str(area.config)
    proc = _cli("status", config)
    assert proc.returncode == 0, proc.stderr
    assert "nothing recorded" in proc.stdout, proc.stdout  # status reads the registry alone
    assert _cli("discover", config, "--quiet").returncode == 0
    proc = _cli("status", config)
    assert "composites: 0/3 done" in proc.stdout and "models: 0/1 done" in proc.stdout, proc.stdout
    assert _cli("run", config, "--scheduler", "threads", "--quiet").returncode == 0
    proc = _cli("status", config)
    assert "composites: 3/3 done" in proc.stdout and "maps: 1/1 done" in proc.stdout, proc.stdout
    maps_dir = Path(area.root) / "lcstack-data" / "classification-maps"
    assert any(maps_dir.rglob("level1.tif"))

    proc = _cli("clean", config, "--what", "maps")
    assert proc.returncode == 0 and "removed 1 output" in proc.stdout
    assert not any(maps_dir.rglob("level1.tif"))
    proc = _cli("status", config)
    assert "composites: 3/3 done" in proc.stdout and "maps: 0/1 done" in proc.stdout, proc.stdout

    proc = _cli("clean", config, "--what", "all")
    assert proc.returncode == 0
    data = Path(area.root) / "lcstack-data"
    assert not any(data.rglob("*.zarr")) and not any(data.rglob("model.skops"))
    assert "composites: 0/3 done" in _cli("status", config).stdout
    assert _cli("clean", config, "--what", "everything").returncode == 2


def test_discover_command_lists_best_scenes(demo_area: Any) -> None:
    proc = _cli("discover", str(demo_area.config), "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    (found,) = json.loads(proc.stdout).values()  # the demo's one Sentinel-2 tile
    seasons = json.loads(Path(demo_area.seasons).read_text())
    assert list(found) == list(seasons)
    for season, scenes in found.items():
        assert len(scenes) == 4, season  # max_scenes_per_season; the cloudy scene is filtered out
        assert all(s["cloud_cover"] < 60 for s in scenes)
        start, end = seasons[season]["start"], seasons[season]["end"]
        assert all(start <= s["datetime"][:10] <= end for s in scenes)
