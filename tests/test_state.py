"""Run state through the CLI: clean in a copied storage, status and clean offline, clean --what all.

One small run (a 128² window of the 256² demo area) is made once; every test works on a copy of
its storage folder (``cp -r``), so the original must stay byte-identical whatever the copy does.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from mongo_server import free_port  # noqa: E402

LCSTACK = str(Path(sys.executable).with_name("lcstack"))
#: A 128 x 128 px window of the 256² demo area that holds points of every category but one.
WINDOW = (360640, 4078080, 361920, 4079360)


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the lcstack CLI in a subprocess, as a user would."""
    env = {**os.environ, "LCSTACK_PROGRESS": "0"}
    return subprocess.run([LCSTACK, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def small_points(area: Any, out: Path, *, drop: int = 0) -> Path:
    """The demo points inside :data:`WINDOW`, categories with 5 or more points; ``drop`` rows fewer."""
    import pandas as pd
    from pyproj import Transformer

    df = pd.read_csv(area.points, sep=";")
    x, y = Transformer.from_crs(4326, 32630, always_xy=True).transform(
        df.longitude.values, df.latitude.values
    )
    inside = df[(x >= WINDOW[0]) & (x < WINDOW[2]) & (y > WINDOW[1]) & (y <= WINDOW[3])]
    counts = inside["category"].value_counts()
    inside = inside[inside["category"].isin(counts[counts >= 5].index)]
    inside.iloc[drop:].to_csv(out, sep=";", index=False)
    return out


def small_config(
    area: Any, name: str, *, storage: str, points: Path, stac: str | None = None, trees: int = 20
) -> Path:
    """A config of the window writing to ``storage`` (relative to the area folder)."""
    lines = []
    for line in Path(area.config).read_text().splitlines():
        if line.startswith("aoi:"):
            line = f'aoi: {{bbox: [{", ".join(map(str, WINDOW))}], crs: "EPSG:32630"}}'
        elif line.startswith("storage:"):
            line = f"storage: {storage}"
        elif line.startswith("points:"):
            line = f"points: {points}"
        elif line.startswith("stac:") and stac is not None:
            line = f"stac: {stac}"
        lines.append(line)
    lines.append(f"model: {{estimator: random_forest, params: {{n_estimators: {trees}}}}}")
    path = Path(area.root) / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def tree_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` by relative path, and every folder."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.fixture(scope="module")
def small_run(demo_area: Any) -> tuple[Any, Path]:
    """One complete run of the window into ``<area>/state-a``; returns (area, its storage folder)."""
    points = small_points(demo_area, Path(demo_area.root) / "state_points.csv")
    config = small_config(demo_area, "state_a", storage="state-a", points=points)
    proc = cli("run", config, "--scheduler", "threads", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return demo_area, Path(demo_area.root) / "state-a"


def _outputs(storage: Path) -> list[str]:
    names = ("*.zarr", "*.tif", "*.parquet", "model.skops", "metadata.json")
    return sorted(str(p.relative_to(storage)) for n in names for p in storage.rglob(n))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_clean_in_a_copied_storage_never_touches_the_original(small_run: tuple[Any, Path]) -> None:
    area, original = small_run
    before = tree_hashes(original)
    assert _outputs(original)
    copy = Path(area.root) / "state-copy"
    shutil.copytree(original, copy)
    config = small_config(
        area, "state_copy", storage="state-copy", points=Path(area.root) / "state_points.csv"
    )
    proc = cli("clean", config, "--what", "maps")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert tree_hashes(original) == before, "clean in the copy changed the original"
    assert not any(copy.rglob("*.tif")) and not any(copy.rglob("maps.zarr"))
    proc = cli("clean", config, "--what", "all")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert tree_hashes(original) == before, "clean --what all in the copy changed the original"
    assert _outputs(copy) == [], "the copy is cleaned"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_status_and_clean_are_offline_and_clean_all_leaves_nothing(small_run: tuple[Any, Path]) -> None:
    area, original = small_run
    copy = Path(area.root) / "state-offline"
    shutil.copytree(original, copy)
    points = Path(area.root) / "state_points.csv"
    refused = f"http://127.0.0.1:{free_port()}/"  # nothing listens: every STAC request is refused
    offline = small_config(area, "state_offline", storage="state-offline", points=points, stac=refused)
    proc = cli("status", offline)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "composites: 4/4 done" in proc.stdout and "models: 1/1 done" in proc.stdout, proc.stdout
    assert "maps: 1/1 done" in proc.stdout, proc.stdout

    proc = cli("clean", offline, "--what", "maps")
    assert proc.returncode == 0 and "removed 1 output" in proc.stdout, proc.stderr[-3000:]
    proc = cli("status", offline)
    assert "maps: 0/1 done" in proc.stdout and "pending" in proc.stdout, proc.stdout
    assert "composites: 4/4 done" in proc.stdout

    # other model options: a new model and maps beside the older ones (composites, dataset reused)
    online = small_config(area, "state_edited", storage="state-offline", points=points, trees=21)
    proc = cli("run", online, "--scheduler", "threads", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(copy.glob("models/*/model.skops"))) == 2
    edited = small_config(
        area, "state_edited_off", storage="state-offline", points=points, stac=refused, trees=21
    )
    proc = cli("clean", edited, "--what", "all")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _outputs(copy) == [], "older outputs are cleaned too"
    left = sorted(str(p.relative_to(copy)) for p in copy.rglob("*"))
    assert all(p.startswith("registry.sqlite") for p in left), left
    proc = cli("status", offline)
    assert proc.returncode == 0 and "composites: 0/4 done" in proc.stdout, proc.stdout


def test_clean_refuses_records_pointing_outside_the_storage(demo_area: Any, tmp_path: Path) -> None:
    from lcstack.config import load_config
    from lcstack.pipeline import Workflow

    victim = tmp_path / "victim"
    (victim / "maps.zarr").mkdir(parents=True)
    (victim / "level1.tif").write_bytes(b"keep me")
    storage = tmp_path / "storage"
    with Workflow(load_config(demo_area.config, storage=str(storage)), progress=False) as wf:
        escape = "../" * 6 + str(victim).lstrip("/")
        wf.registry.put("maps", "rel", {"status": "complete", "paths": {"zarr": escape + "/maps.zarr"}})
        wf.registry.put("maps", "abs", {"status": "complete", "urls": {"level1": str(victim / "level1.tif")}})
        wf.registry.put("models", "abs", {"status": "complete", "url": str(victim)})
        (storage / "models").symlink_to(victim)  # a link inside the storage to a folder outside it
        wf.registry.put("models", "link", {"status": "complete", "path": "level1.tif"})
        assert wf.map_urls(wf.registry.get("maps", "rel")) == {}
        wf.clean("all")
        assert wf.registry.find("maps") == [] and wf.registry.find("models") == []
    assert (victim / "level1.tif").read_bytes() == b"keep me" and (victim / "maps.zarr").is_dir()


def test_object_store_records_stay_inside_the_prefix(demo_area: Any, tmp_path: Path) -> None:
    from lcstack.config import load_config
    from lcstack.pipeline import Workflow

    cfg = load_config(demo_area.config, storage="s3://bucket/run", registry=str(tmp_path / "r.sqlite"))
    with Workflow(cfg, progress=False) as wf:
        assert (
            wf._locate("maps", "model_x/t/level1.tif")
            == "s3://bucket/run/classification-maps/model_x/t/level1.tif"
        )
        for rel in ("../x", "a/../../x", "/abs", "s3://bucket/other/x", ""):
            assert wf._locate("maps", rel) is None, rel
        assert wf._where("composites", "s3://bucket/run/composites/t/s.zarr") == "t/s.zarr"
        for url in (
            "s3://bucket/run2/composites/x",
            "s3://bucket/run/composites/../../x",
            "s3://other/run/x",
        ):
            assert not wf._inside("composites", url), url
            assert wf._remove("composites", url) is False  # refused before any request is made
