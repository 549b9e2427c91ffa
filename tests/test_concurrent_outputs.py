"""On a distributed cluster the workflow writes the outputs of several tiles and seasons at once.

Each output is its own graph, so without this the workers idle at the tail of every output. The tests run
a real 2-worker LocalCluster on the demo area cut into 4 tiles and compare with the sequential run of the
threaded scheduler: same bytes in every composite and map, whatever the order the outputs finish in.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import rasterio
import xarray as xr
from conftest import demo_skips
from distributed import Client, LocalCluster

from lcstack.config import load_config
from lcstack.pipeline import Workflow
from lcstack.store import Storage

TILE = 160  # the 256² demo grid in 2 x 2 tiles


@pytest.fixture(scope="module")
def client() -> Any:
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as c,
    ):
        yield c


def _config(area: Any, storage: Path, **extra: Any) -> Any:
    return load_config(area.config, storage=str(storage), tile_size=TILE, **extra)


@pytest.fixture(scope="module")
def sequential(demo_area: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    storage = tmp_path_factory.mktemp("sequential") / "out"
    with dask.config.set(scheduler="threads"), Workflow(_config(demo_area, storage), progress=False) as wf:
        assert len(wf.tiles) == 4
        with demo_skips():
            wf.run()
    return storage


def _record_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float, float]]:
    """Record (url, start, end) of every Zarr write of the storage layer."""
    spans: list[tuple[str, float, float]] = []
    lock = threading.Lock()
    original = Storage.write_zarr

    def timed(self: Storage, ds: Any, url: str, **kw: Any) -> None:
        t0 = time.monotonic()
        original(self, ds, url, **kw)
        with lock:
            spans.append((url, t0, time.monotonic()))

    monkeypatch.setattr(Storage, "write_zarr", timed)
    return spans


def _max_overlap(spans: list[tuple[str, float, float]]) -> int:
    events = sorted([(t0, 1) for _, t0, _ in spans] + [(t1, -1) for _, _, t1 in spans])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def _zarr_stores(storage: Path) -> list[Path]:
    return sorted(p.relative_to(storage) for p in storage.glob("**/*.zarr"))


def test_outputs_are_written_concurrently_and_equal_the_sequential_run(
    demo_area: Any, sequential: Path, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spans = _record_writes(monkeypatch)
    storage = tmp_path / "out"
    with Workflow(_config(demo_area, storage), progress=False) as wf, demo_skips():
        results = wf.run()
    composites = [s for s in spans if "/composites/" in s[0]]
    maps = [s for s in spans if "/classification-maps/" in s[0]]
    assert len(composites) == 4 * 4  # 4 tiles x (3 seasons + terrain)
    assert len(maps) == 4
    assert _max_overlap(composites) > 1, "composites were written one after another"
    assert _max_overlap(maps) > 1, "the tiles' maps were written one after another"
    # results come back in plan order, whatever order the writes finished in
    assert [r.details["tile"] for r in results if r.step == "classify"] == list(wf.tiles)

    assert _zarr_stores(storage) == _zarr_stores(sequential)
    for rel in _zarr_stores(sequential):
        xr.testing.assert_identical(xr.open_zarr(storage / rel).load(), xr.open_zarr(sequential / rel).load())
    cogs = sorted(p.relative_to(sequential) for p in sequential.glob("classification-maps/**/*.tif"))
    assert len(cogs) == 4 * 3  # level1, level2, valid_seasons per tile
    for rel in cogs:
        with rasterio.open(storage / rel) as a, rasterio.open(sequential / rel) as b:
            np.testing.assert_array_equal(a.read(), b.read())
            assert a.profile == b.profile and a.tags() == b.tags() and a.colormap(1) == b.colormap(1)


def test_one_failing_output_keeps_the_others_and_the_rerun_finishes(
    demo_area: Any, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lcstack.composite as composite_mod

    original = composite_mod.seasonal_composite
    calls = {"n": 0}

    def failing(items: Any, gbox: Any, *, season: str, **kw: Any) -> Any:
        if season == "summer":
            calls["n"] += 1
            if calls["n"] == 1:
                raise OSError("simulated read failure of a summer scene")
        return original(items, gbox, season=season, **kw)

    monkeypatch.setattr(composite_mod, "seasonal_composite", failing)
    storage = tmp_path / "out"
    cfg = _config(demo_area, storage)
    with Workflow(cfg, progress=False) as wf, pytest.raises(OSError, match="simulated read failure"):
        wf.composite()
    with Workflow(cfg, progress=False) as wf:
        found = wf.registry.find("composites")
        records = {(r["tile"], r["season"]): r["status"] for r in found}
    # every other composite finished and was recorded complete; the failed one is released as failed,
    # with its error, so the next run takes it at once
    assert sorted(records.values()).count("failed") == 1
    assert [r["error"] for r in found if r["status"] == "failed"] == [
        "OSError: simulated read failure of a summer scene"
    ]
    assert sorted(records.values()).count("complete") == 15
    stored = _zarr_stores(storage)
    assert len(stored) == 15 and not any(storage.rglob("*.tmp-*"))

    mtimes = {p: (storage / p).stat().st_mtime_ns for p in stored}
    with Workflow(cfg, progress=False) as wf:
        results = wf.composite()
    assert sum(not r.reused for r in results) == 1 and len(results) == 16
    assert all((storage / p).stat().st_mtime_ns == t for p, t in mtimes.items())


def test_threaded_scheduler_writes_one_output_at_a_time(
    demo_area: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spans = _record_writes(monkeypatch)
    with (
        dask.config.set(scheduler="threads"),
        Workflow(_config(demo_area, tmp_path / "out"), progress=False) as wf,
    ):
        wf.composite()
    assert len(spans) == 16 and _max_overlap(spans) == 1


def test_concurrency_is_bounded_by_the_config(
    demo_area: Any, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spans = _record_writes(monkeypatch)
    cfg = _config(demo_area, tmp_path / "out", dask={"concurrent_outputs": 2})
    with Workflow(cfg, progress=False) as wf:
        wf.composite()
    assert len(spans) == 16 and _max_overlap(spans) == 2
