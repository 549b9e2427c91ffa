"""Composite time against decode time, per season, on one core, on the scenes' native grid (issue 16.7).

For every season of a demo area: (a) decode every asset the composite reads (its bands and SCL) with
rasterio, whole files, one after another; (b) the composite the workflow writes (``seasonal_composite``
with ``fuse_chunks=True``) computed with dask's synchronous scheduler (one core), with and without
writing its Zarr store. The same items, the same process, interleaved round by round, so the shared
machine's load weighs on both alike. ``--profile`` prints the top of a cProfile of one composite.

Run: ``python benchmarks/bench_composite_decode.py AREA`` where ``AREA`` is ``lcstack demo-data AREA
--size 1024`` (``--repeat``, ``--profile``, ``--write`` to append the table to RESULTS.md).
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
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load1, machine_line, write_section  # noqa: E402

from lcstack.composite import _read_assets, seasonal_composite  # noqa: E402
from lcstack.config import load_config  # noqa: E402
from lcstack.pipeline import Workflow  # noqa: E402


def decode(items: list) -> float:
    """Seconds to decode every asset a composite reads, whole files, with rasterio."""
    t = time.perf_counter()
    for item in items:
        for key in _read_assets(item, None):
            with rasterio.open(item.assets[key].get_absolute_href()) as src:
                src.read()
    return time.perf_counter() - t


def composite(items: list, gbox, season: str, chunks: dict, out: Path | None) -> float:
    """Seconds to compute (and, with ``out``, write) the workflow's composite on one core."""
    t = time.perf_counter()
    ds = seasonal_composite(items, gbox, season=season, chunks=chunks, fuse_chunks=True)
    with dask.config.set(scheduler="synchronous"):
        if out is None:
            ds.compute()
        else:
            ds.to_zarr(out, mode="w", consolidated=True)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("area", type=Path, help="a demo area (lcstack demo-data AREA --size 1024)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    parser.add_argument("--label", default="this code")
    parser.add_argument(
        "--chunk", type=int, help="spatial chunk (default: the workflow's, from the memory budget)"
    )
    args = parser.parse_args()

    cfg = load_config(args.area / "config.yaml", storage=tempfile.mkdtemp())
    with Workflow(cfg, progress=False) as wf:
        plan = [p for p in wf.composite_plan() if p[1] != "terrain"]
        chunks, tiles = wf.chunks, wf.tiles
    if args.chunk:
        chunks = {"x": args.chunk, "y": args.chunk}
    jobs = [(season, rec["_items"], tiles[tile]) for tile, season, _, _, rec in plan]
    for season, items, gbox in jobs:  # warm caches (page cache, GDAL, numba) outside the timing
        decode(items)
        composite(items, gbox, season, chunks, None)
    if args.profile:
        season, items, gbox = jobs[0]
        prof = cProfile.Profile()
        prof.runcall(composite, items, gbox, season, chunks, None)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    load_before = load1()
    best: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for season, items, gbox in jobs:
                row = best.setdefault(season, {"decode": 1e9, "compute": 1e9, "write": 1e9})
                row["decode"] = min(row["decode"], decode(items))
                row["compute"] = min(row["compute"], composite(items, gbox, season, chunks, None))
                row["write"] = min(row["write"], composite(items, gbox, season, chunks, Path(tmp) / "c.zarr"))
    load_after = load1()
    shape = jobs[0][2].shape
    lines = [
        f"{args.label}: {shape.y}×{shape.x} px, chunk {chunks['x']}, best of {args.repeat}, one core "
        "(dask synchronous), seconds",
        "",
        "| season | scenes | decode (rasterio) | composite | composite + Zarr | ratio (with Zarr) |",
        "|---|---|---|---|---|---|",
    ]
    for season, items, _ in jobs:
        r = best[season]
        lines.append(
            f"| {season} | {len(items)} | {r['decode']:.2f} | {r['compute']:.2f} | {r['write']:.2f} | "
            f"{r['compute'] / r['decode']:.1f}× ({r['write'] / r['decode']:.1f}×) |"
        )
    lines += ["", machine_line(load_before, load_after)]
    print("\n".join(lines))
    if args.write:
        write_section("## Composite against decode, per season, one core (issue 16.7)", "\n".join(lines))


if __name__ == "__main__":
    main()
