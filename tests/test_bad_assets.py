"""Broken scene assets (truncated COG, missing file, no href): a clear error naming item, asset and file,
or, with ``on_error: skip-scene``, the scene left out of its season with a warning and a registry note."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import dask
import pytest
from typer.testing import CliRunner

from lcstack.cli import app
from lcstack.errors import LcstackWarning

ITEM = "S2A_30SUF_20230302_0_L2A"  # picked for spring in the demo area
OTHER = "S2B_30SUF_20230317_0_L2A"
THIRD = "S2A_30SUF_20230421_0_L2A"


def _area(demo_area: Any, tmp_path: Path, on_error: str = "fail") -> Path:
    """A copy of the demo area with one season (spring) and no DEM, so a composite run is short."""
    root = tmp_path / "area"
    shutil.copytree(demo_area.root, root, ignore=shutil.ignore_patterns("lcstack-data"))
    seasons = json.loads((root / "seasons.json").read_text())
    (root / "seasons.json").write_text(json.dumps({"spring": seasons["spring"]}))
    text = (root / "config.yaml").read_text().replace("dem_collection:", "# dem_collection:")
    (root / "config.yaml").write_text(text + f"on_error: {on_error}\n")
    return root


def _scene(root: Path, item: str) -> Path:
    return root / "stac" / "sentinel-2-l2a" / item


def _truncate(root: Path, item: str, name: str = "B04.tif") -> Path:
    path = _scene(root, item) / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # the header survives, the last tiles do not
    return path


def _remove(root: Path, item: str, name: str = "B08.tif") -> Path:
    path = _scene(root, item) / name
    path.unlink()
    return path


def _drop_href(root: Path, item: str, asset: str = "red") -> Path:
    path = _scene(root, item) / f"{item}.json"
    doc = json.loads(path.read_text())
    del doc["assets"][asset]["href"]
    path.write_text(json.dumps(doc))
    return path


CASES = {
    "truncated": (_truncate, "red", "B04.tif"),
    "missing file": (_remove, "nir", "B08.tif"),
    "no href": (_drop_href, "red", "has no href"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_asset_fails_naming_item_asset_and_file(demo_area: Any, tmp_path: Path, case: str) -> None:
    damage, asset, where = CASES[case]
    root = _area(demo_area, tmp_path)
    damage(root, ITEM)
    result = CliRunner().invoke(
        app, ["composite", str(root / "config.yaml"), "--quiet", "--scheduler", "threads"]
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("error: ")]
    for text in (ITEM, repr(asset), where, "on_error: skip-scene"):
        assert text in error, (text, error)
    assert not list((root / "lcstack-data" / "composites").rglob("*.zarr")), "nothing half-written"


def test_skip_scene_drops_broken_scenes_with_warning_and_record(demo_area: Any, tmp_path: Path) -> None:
    from lcstack.config import load_config
    from lcstack.pipeline import Workflow

    root = _area(demo_area, tmp_path, on_error="skip-scene")
    _truncate(root, ITEM)
    _remove(root, OTHER)
    _drop_href(root, THIRD)
    cfg = load_config(root / "config.yaml")
    with warnings.catch_warnings(record=True) as caught, dask.config.set(scheduler="threads"):
        warnings.simplefilter("always")
        with Workflow(cfg, progress=False) as wf:
            (result,) = wf.run(["discover", "composite"])
            record = wf.registry.get("composites", result.key)
    ours = [str(w.message) for w in caught if issubclass(w.category, LcstackWarning)]
    for item, asset in ((ITEM, "red"), (OTHER, "nir"), (THIRD, "red")):
        assert any(item in m and repr(asset) in m and "spring" in m for m in ours), (item, ours)
    assert record["status"] == "complete"
    assert {s["item"] for s in record["skipped"]} == {ITEM, OTHER, THIRD}
    assert all(s["asset"] and s["why"] for s in record["skipped"])
    import xarray as xr

    stored = xr.open_zarr(result.url)
    assert json.loads(stored.attrs["items"]) == ["S2B_30SUF_20230426_0_L2A"], "only the intact scene"


def test_read_error_in_a_worker_process_comes_back_as_asset_error(demo_area: Any, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    from lcstack.config import load_config
    from lcstack.errors import AssetError
    from lcstack.pipeline import Workflow

    root = _area(demo_area, tmp_path)
    path = _truncate(root, ITEM)
    cfg = load_config(root / "config.yaml")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster), Workflow(cfg, progress=False) as wf, pytest.raises(AssetError) as err:
            wf.run(["discover", "composite"])
    assert (err.value.item, err.value.asset, err.value.href) == (ITEM, "red", str(path))


@pytest.fixture
def http_root(tmp_path: Path) -> Any:
    """A real HTTP server on 127.0.0.1 serving ``tmp_path / "www"``; yields (folder, base URL)."""
    import functools
    import http.server
    import threading

    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _to_http(root: Path, item: str, www: Path, base: str, asset: str = "nir", present: bool = False) -> str:
    """Point ``asset`` of ``item`` at ``base``; the file is served there only when ``present``."""
    path = _scene(root, item) / f"{item}.json"
    doc = json.loads(path.read_text())
    name = Path(doc["assets"][asset]["href"]).name
    if present:
        (www / item).mkdir()
        shutil.copy(_scene(root, item) / name, www / item / name)
    doc["assets"][asset]["href"] = f"{base}/{item}/{name}"
    path.write_text(json.dumps(doc))
    return f"{base}/{item}/{name}"


def test_missing_remote_asset_fails_before_the_graph_naming_item_asset_and_url(
    demo_area: Any, tmp_path: Path, http_root: Any
) -> None:
    www, base = http_root
    root = _area(demo_area, tmp_path)
    served = _to_http(root, OTHER, www, base, present=True)  # a remote asset that is there reads fine
    url = _to_http(root, ITEM, www, base)  # one that is not: the fingerprint's HEAD says 404
    result = CliRunner().invoke(
        app, ["composite", str(root / "config.yaml"), "--quiet", "--scheduler", "threads"]
    )
    assert result.exit_code == 2, result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("error: ")]
    for text in (ITEM, "'nir'", url, "does not exist", "on_error: skip-scene"):
        assert text in error, (text, error)
    assert served not in error
    assert not list((root / "lcstack-data" / "composites").rglob("*.zarr")), "nothing half-written"
    # with skip-scene the missing remote scene is left out before any read, and recorded
    text = (root / "config.yaml").read_text().replace("on_error: fail", "on_error: skip-scene")
    (root / "config.yaml").write_text(text)
    from lcstack.config import load_config
    from lcstack.pipeline import Workflow

    with warnings.catch_warnings(), dask.config.set(scheduler="threads"):
        warnings.simplefilter("ignore", LcstackWarning)
        with Workflow(load_config(root / "config.yaml"), progress=False) as wf:
            (result,) = wf.run(["discover", "composite"])
            record = wf.registry.get("composites", result.key)
    assert [(s["item"], s["href"]) for s in record["skipped"]] == [(ITEM, url)]
    assert "does not exist" in record["skipped"][0]["why"]
