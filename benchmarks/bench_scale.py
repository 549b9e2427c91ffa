"""Scale benchmark: composite → train → classify on synthetic areas of growing size, in bounded memory.

For each size the offline demo area is generated once (not timed against the bound), then the workflow runs
on a LocalCluster of single-threaded worker processes with a 2 GB memory limit each. The peak resident memory
of every worker process is read from the kernel (``getrusage(RUSAGE_SELF).ru_maxrss``), not estimated.

Usage::

    python benchmarks/bench_scale.py --sizes 2048 4096 10980 --workers 2
    python benchmarks/bench_scale.py --sizes 2048 --speedup      # 1 vs 2 workers on the same inputs

Results are printed as markdown and written to ``benchmarks/RESULTS.md`` (section "Scale").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import cpu_model  # noqa: E402

DATA = HERE / ".data"
RESULTS = HERE / "RESULTS.md"
BOUND = 2 * 1024**3


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def area_for(size: int) -> Path:
    """The config of the demo area of ``size``² pixels, generated once and reused."""
    from lcstack.demo import make_demo_area

    root = DATA / f"area-{size}"
    if not (root / "config.yaml").exists():
        t0 = time.perf_counter()
        make_demo_area(root, size=size, seed=0, progress=True)
        print(f"demo area {size}²: generated in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return root / "config.yaml"


def run(size: int, workers: int, *, storage: Path, chunk_size: int | None = None) -> dict[str, Any]:
    from lcstack.cluster import open_cluster
    from lcstack.inputs import DaskConfig, load_config
    from lcstack.pipeline import Workflow

    config = area_for(size)
    shutil.rmtree(storage, ignore_errors=True)
    overrides: dict[str, Any] = {"storage": str(storage)}
    if chunk_size:
        overrides["chunk_size"] = chunk_size
    cfg = load_config(config, **overrides)
    out: dict[str, Any] = {"size": size, "workers": workers}
    dask_cfg = DaskConfig(n_workers=workers, threads_per_worker=1, memory_limit="2GB", processes=True)
    with open_cluster("local", config=dask_cfg) as client, Workflow(cfg, progress=False) as wf:
        out["chunk"] = wf.chunks["x"]
        t0 = time.perf_counter()
        wf.discover()
        wf.composite()
        out["composite_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        wf.train()
        out["train_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        wf.classify()
        out["classify_s"] = time.perf_counter() - t0
        peaks = client.run(_peak_rss)
        out["worker_peak_rss"] = max(peaks.values())
        out["n_features"] = len(wf.features(next(iter(wf.tiles)))["feature"])
        gbox = wf.geobox
        out["pixels"] = gbox.shape[0] * gbox.shape[1]
    out["client_peak_rss"] = _peak_rss()
    return out


def _gb(n: float) -> str:
    return f"{n / 1024**3:.2f} GB"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| area (px) | workers | chunk | features | composite | classify | Mpx/s/core (composite) | Mpx/s/core (classify) | peak RSS per worker | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mpx = r["pixels"] / 1e6
        lines.append(
            f"| {r['size']}² | {r['workers']} | {r['chunk']} | {r['n_features']} | {r['composite_s']:.1f} s | "
            f"{r['classify_s']:.1f} s | {mpx / r['composite_s'] / r['workers']:.2f} | "
            f"{mpx / r['classify_s'] / r['workers']:.2f} | {_gb(r['worker_peak_rss'])} | "
            f"≤ 2 GB: {'met' if r['worker_peak_rss'] <= BOUND else 'MISSED'} |"
        )
    return "\n".join(lines)


def write_section(body: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start, end = "<!-- scale:start -->", "<!-- scale:end -->"
    block = f"{start}\n{body}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--speedup", action="store_true", help="also run 1 worker on the first size")
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    rows = [
        run(s, args.workers, storage=DATA / f"out-{s}-{args.workers}", chunk_size=args.chunk_size)
        for s in args.sizes
    ]
    speed = None
    if args.speedup:
        one = run(args.sizes[0], 1, storage=DATA / f"out-{args.sizes[0]}-1", chunk_size=args.chunk_size)
        rows.insert(0, one)
        two = next(r for r in rows if r["workers"] == args.workers and r["size"] == args.sizes[0])
        t1 = one["composite_s"] + one["classify_s"]
        t2 = two["composite_s"] + two["classify_s"]
        speed = t1 / t2
    load = os.getloadavg()
    cmd = "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:])
    body = [
        "## Scale: bounded memory per worker",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {os.cpu_count()} cores ({cpu_model()}), {_gb(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))} RAM; "
        f"load average before the run {load[0]:.2f}. Workers: single-threaded processes, memory limit 2 GB each. "
        "Peak RSS is the kernel's `ru_maxrss` of each worker process (the largest is shown).",
        "",
        table(rows),
    ]
    if speed is not None:
        body += [
            "",
            f"Speed-up of composite + classify with {args.workers} workers vs 1 on {args.sizes[0]}²: "
            f"**{speed:.2f}×** (target ≥ 1.7×: {'met' if speed >= 1.7 else 'missed'}).",
        ]
    body += ["", "```json", json.dumps(rows, indent=1), "```"]
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
