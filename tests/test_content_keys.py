"""Output keys rest on the content of every asset read, not only on the catalog's metadata."""

from __future__ import annotations

import shutil
import threading
import warnings
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import rasterio
import xarray as xr

from lcstack.config import load_config
from lcstack.discover import asset_fingerprints
from lcstack.errors import SkippedPointsWarning
from lcstack.pipeline import Workflow


def test_fingerprints_local_checksum_and_missing(tmp_path: Path) -> None:
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    a.write_bytes(b"1234")
    b.write_bytes(b"5678")
    first = asset_fingerprints(
        [str(a), f"file://{b}", str(tmp_path / "gone.tif")], checksums={str(a): "1220ab"}
    )
    assert first[str(a)] == "checksum:1220ab", "the catalog's file:checksum wins"
    assert first[f"file://{b}"].startswith("stat:4:")
    assert first[str(tmp_path / "gone.tif")].startswith("missing:")
    b.write_bytes(b"8765")  # same size, new pixels
    assert asset_fingerprints([f"file://{b}"])[f"file://{b}"] != first[f"file://{b}"]


def test_fingerprints_http_and_s3(tmp_path: Path) -> None:
    from s3_server import s3_endpoint

    (tmp_path / "x.tif").write_bytes(b"abc")

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/x.tif"
        token = asset_fingerprints([url])[url]
        assert token.startswith("size:3:") and "GMT" in token, "size + Last-Modified over HTTP"
        missing = f"http://127.0.0.1:{server.server_port}/nope.tif"
        assert asset_fingerprints([missing])[missing].startswith("missing:")
    finally:
        server.shutdown()
    with s3_endpoint() as s3:
        bucket = s3.create_bucket()
        fs = s3.fs()
        fs.pipe_file(f"{bucket}/x.tif", b"abc")
        href = f"s3://{bucket}/x.tif"
        before = asset_fingerprints([href], storage_options=s3.storage_options())[href]
        fs.pipe_file(f"{bucket}/x.tif", b"abd")
        after = asset_fingerprints([href], storage_options=s3.storage_options())[href]
        assert before.startswith("etag:") and before != after
        s3.cleanup()


def _run(config: Path) -> dict[tuple[str, str], bool]:
    cfg = load_config(config)
    with dask.config.set(scheduler="threads"), Workflow(cfg, progress=False) as wf, warnings.catch_warnings():
        # the demo's few points on nodata pixels are left out with a warning whenever samples are extracted
        warnings.simplefilter("ignore", SkippedPointsWarning)
        results = wf.run()
    return {(r.step, str(r.details.get("season", r.details.get("tile", "")))): r.reused for r in results}


def test_regenerated_dem_pixels_recompute_terrain_and_maps(demo_run: Any, tmp_path: Path) -> None:
    area, _, _ = demo_run
    root = tmp_path / "area"
    shutil.copytree(area.root, root)  # copy2: sizes and modification times kept
    config = root / area.config.name
    untouched = _run(config)
    assert all(untouched.values()), f"an untouched re-run reuses everything: {untouched}"

    (dem,) = (root / "stac" / area.dem_collection).rglob("*.tif")
    with rasterio.open(dem, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as ds:
        ds.write(ds.read() + np.float32(300))  # new pixels, the item JSON unchanged
    after = _run(config)
    assert after[("composite", "terrain")] is False, "the terrain is recomputed from the new DEM"
    assert all(after[k] for k in after if k[0] == "composite" and k[1] != "terrain"), after
    assert not any(after[k] for k in after if k[0] in ("train", "classify")), after
    stores = sorted(
        (root / "lcstack-data" / "composites").rglob("terrain_*.zarr"), key=lambda p: p.stat().st_mtime
    )
    old, new = (xr.open_zarr(p)["terrain"].sel(band="elevation") for p in stores[-2:])
    assert float((new - old).mean()) == pytest.approx(300, abs=1)
    assert all(_run(config).values()), "and a third run reuses everything again"


def test_rewritten_scene_asset_changes_only_its_seasons_key(demo_area: Any, tmp_path: Path) -> None:
    import os

    root = tmp_path / "area"
    shutil.copytree(demo_area.root, root, ignore=shutil.ignore_patterns("lcstack-data"))
    cfg = load_config(root / demo_area.config.name)

    def keys() -> dict[str, str]:
        with Workflow(cfg, progress=False) as wf:
            return {p.season: p.key for p in wf.composite_plan()}

    before = keys()
    assert keys() == before, "stable while nothing changes"
    with Workflow(cfg, progress=False) as wf:
        item = wf.discover()["30SUF"]["spring"][0].item
    band = Path(item.assets["red"].get_absolute_href())
    st = band.stat()
    os.utime(band, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # rewritten: same size, new time
    after = keys()
    assert after["spring"] != before["spring"]
    assert {s: k for s, k in after.items() if s != "spring"} == {
        s: k for s, k in before.items() if s != "spring"
    }
