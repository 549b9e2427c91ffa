"""Composite time against decode time, per season, on one core, on the scenes' native grid (issue 16.7).

For every season of a demo area: (a) decode every asset the composite reads (its bands and SCL) with
rasterio, whole files, one after another; (b) the composite the workflow writes (``seasonal_composite``
with ``fuse_chunks=True``) computed with dask's synchronous scheduler (one core), with and without
writing its Zarr store as the workflow does (``Storage.write_zarr``), by the fast path (``fast=True``, the default: native windowed reads and one
numba pass) and the general path (``fast=False``: odc-stac and xarray in every chunk). The same items,
the same process, interleaved round by round, so the shared machine's load weighs on all alike; the two
paths' composites are checked to be bit-identical first. Every composite starts with no dataset open
(:func:`lcstack.load.clear_dataset_cache`), as the decode does. ``--profile fast|general`` prints the
top of a cProfile of one composite.

Run: ``python benchmarks/bench_composite_decode.py AREA`` where ``AREA`` is ``lcstack demo-data AREA
--size 1024`` (``--repeat``, ``--chunk``, ``--profile``, ``--write`` to append the table to RESULTS.md).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load1, machine_line, write_section  # noqa: E402

from lcstack.composite import _read_assets, seasonal_composite  # noqa: E402
from lcstack.config import load_config  # noqa: E402
from lcstack.load import clear_dataset_cache  # noqa: E402
from lcstack.pipeline import Workflow  # noqa: E402
from lcstack.store import Storage  # noqa: E402

PATHS = ("fast", "general")


def decode(items: list) -> float:
    """Seconds to decode every asset a composite reads, whole files, with rasterio."""
    t = time.perf_counter()
    for item in items:
        for key in _read_assets(item, None):
            with rasterio.open(item.assets[key].get_absolute_href()) as src:
                src.read()
    return time.perf_counter() - t


def composite(items: list, gbox, season: str, chunks: dict, out: Path | None, path: str = "fast") -> float:
    """Seconds to compute (and, with ``out``, write) the workflow's composite on one core."""
    clear_dataset_cache()
    t = time.perf_counter()
    ds = seasonal_composite(items, gbox, season=season, chunks=chunks, fuse_chunks=True, fast=path == "fast")
    with dask.config.set(scheduler="synchronous"):
        if out is None:
            ds.compute()
        else:  # as the workflow writes it (Zarr v2, default codec, through the storage door)
            Storage(str(out.parent)).write_zarr(ds, str(out), progress=False)
    return time.perf_counter() - t


def check_identical(items: list, gbox, season: str, chunks: dict) -> None:
    """Assert that the fast and the general path give the same composite, bit for bit."""
    with dask.config.set(scheduler="synchronous"):
        a, b = (
            seasonal_composite(items, gbox, season=season, chunks=chunks, fuse_chunks=True, fast=f).compute()
            for f in (True, False)
        )
    assert a.attrs == b.attrs and a["composite"].dims == b["composite"].dims
    assert np.array_equal(a["composite"].values.view(np.uint32), b["composite"].values.view(np.uint32))
    assert np.array_equal(a["valid_count"].values, b["valid_count"].values)


def profile(job: tuple, chunks: dict, path: str) -> None:
    season, items, gbox = job
    prof = cProfile.Profile()
    prof.runcall(composite, items, gbox, season, chunks, None, path)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
    pstats.Stats(prof).sort_stats("tottime").print_stats(20)


def table(best: dict, jobs: list, args: argparse.Namespace, shape, chunks: dict) -> list[str]:
    lines = [
        f"{args.label}: {shape.y}×{shape.x} px, chunk {chunks['x']}, best of {args.repeat}, one core "
        "(dask synchronous), seconds; ratio = composite / decode (with Zarr in brackets)",
        "",
        "| season | scenes | decode (rasterio) | general | general + Zarr | fast | fast + Zarr "
        "| ratio general | ratio fast | fast vs general |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for season, items, _ in jobs:
        r = best[season]
        d = r["decode"]
        lines.append(
            f"| {season} | {len(items)} | {d:.2f} | {r['general']:.2f} | {r['general_zarr']:.2f} | "
            f"{r['fast']:.2f} | {r['fast_zarr']:.2f} | {r['general'] / d:.1f}× ({r['general_zarr'] / d:.1f}×) | "
            f"{r['fast'] / d:.1f}× ({r['fast_zarr'] / d:.1f}×) | {r['general'] / r['fast']:.1f}× faster |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("area", type=Path, help="a demo area (lcstack demo-data AREA --size 1024)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", choices=PATHS, help="print a cProfile of one composite by this path")
    parser.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    parser.add_argument("--label", default="this code")
    parser.add_argument(
        "--chunk", type=int, help="spatial chunk (default: the workflow's, from the memory budget)"
    )
    args = parser.parse_args()

    cfg = load_config(args.area / "config.yaml", storage=tempfile.mkdtemp())
    with Workflow(cfg, progress=False) as wf:
        plan = [p for p in wf.composite_plan() if p.season != "terrain"]
        chunks, tiles = wf.chunks, wf.tiles
    if args.chunk:
        chunks = {"x": args.chunk, "y": args.chunk}
    jobs = [(p.season, list(p.items), tiles[p.unit]) for p in plan]
    for season, items, gbox in jobs:  # warm caches (page cache, GDAL, numba) outside the timing
        decode(items)
        check_identical(items, gbox, season, chunks)
    if args.profile:
        profile(jobs[0], chunks, args.profile)
    load_before = load1()
    best: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for season, items, gbox in jobs:
                row = best.setdefault(season, {})
                times = {"decode": decode(items)}
                for path in PATHS:
                    times[path] = composite(items, gbox, season, chunks, None, path)
                    times[f"{path}_zarr"] = composite(items, gbox, season, chunks, Path(tmp) / "c.zarr", path)
                for k, v in times.items():
                    row[k] = min(row.get(k, 1e9), v)
    load_after = load1()
    lines = table(best, jobs, args, jobs[0][2].shape, chunks)
    lines += ["", machine_line(load_before, load_after)]
    print("\n".join(lines))
    if args.write:
        write_section("## Composite against decode, per season, one core (issue 16.7)", "\n".join(lines))


if __name__ == "__main__":
    main()
