"""No holes (issue 17.1): level-1 agreement with truth and nodata pixels on demo areas, per seed.

Usage: ``python benchmarks/bench_holes.py --size 512 --seeds 1 2 3 4 5 6 --out tmp/holes``.
Runs ``lcstack demo-data`` and ``lcstack run --scheduler threads`` per seed, then scores level1.tif against
truth.tif: agreement over pixels both classify (``lcstack.demo.scoring.agreement``), agreement counting a
nodata map pixel as wrong, and the number of pixels with a true class but 0 in the map.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys

import numpy as np
import rioxarray


def main() -> None:  # noqa: D103
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    ap.add_argument("--out", default="tmp/holes")
    args = ap.parse_args()
    cli = os.path.join(os.path.dirname(sys.executable), "lcstack")
    print("| seed | agreement (classified) | agreement (0 = wrong) | holes | valid_seasons = 0 |")
    print("|---:|---:|---:|---:|---:|")
    for seed in args.seeds:
        area = os.path.join(args.out, f"seed{seed}")
        if not os.path.exists(os.path.join(area, "config.yaml")):
            subprocess.run(
                [cli, "demo-data", area, "--size", str(args.size), "--seed", str(seed), "-q"], check=True
            )
        subprocess.run(
            [cli, "run", os.path.join(area, "config.yaml"), "--scheduler", "threads", "-q"], check=True
        )
        maps = sorted(glob.glob(os.path.join(area, "lcstack-data/classification-maps/*/*/level1.tif")))
        m = rioxarray.open_rasterio(maps[-1]).squeeze().to_numpy()
        t = rioxarray.open_rasterio(os.path.join(area, "truth.tif")).squeeze().to_numpy()
        both = (m > 0) & (t > 0)
        vs_path = maps[-1].replace("level1.tif", "valid_seasons.tif")
        unseen = "-"
        if os.path.exists(vs_path):
            unseen = int((rioxarray.open_rasterio(vs_path).squeeze().to_numpy() == 0).sum())
        print(
            f"| {seed} | {np.mean(m[both] == t[both]):.4f} | {np.mean(m[t > 0] == t[t > 0]):.4f} "
            f"| {int(((m == 0) & (t > 0)).sum())} | {unseen} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
