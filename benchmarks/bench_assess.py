"""Coverage of `lcstack assess`'s 95 % intervals on a demo area whose truth is known (issue 17, item 4).

Runs the demo workflow once, then for several sample sizes and seeds: a stratified sample
(:func:`lcstack.assess.design_sample`, as ``lcstack sample-design``), its ``category`` filled from
``truth.tif``, and :func:`lcstack.assess.assess`. Counts how often the true overall accuracy (every pixel
against the truth) and each class's true area (pixels counted on ``truth.tif``) lie inside the estimated
95 % intervals, and how many intervals have zero width.

    python benchmarks/bench_assess.py --size 256 --seed 0 --reps 10 --n 0 500 1500 3000

``--n 0`` is the size from Olofsson et al. (2014) Eq. 13 (target standard error 0.01).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import rasterio
from pyproj import Transformer
from rasterio.windows import from_bounds

RESULTS = Path(__file__).resolve().parent / "results"


def _demo(folder: Path, size: int, seed: int) -> tuple[Any, Any, str]:
    from lcstack.assess import workflow_maps
    from lcstack.config import load_config
    from lcstack.demo import make_demo_area
    from lcstack.pipeline import Workflow

    area = make_demo_area(folder / "area", size=size, seed=seed)
    cfg = load_config(area.config)
    with dask.config.set(scheduler="threads"), Workflow(cfg, progress=False) as wf:
        wf.run()
        (url,) = workflow_maps(wf, level=1)
    return area, cfg, url


def _clip(map_url: str, truth: Path, out: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """The map over truth.tif's extent (the map covers the AOI grid, a few pixels wider)."""
    with rasterio.open(map_url) as src, rasterio.open(truth) as ref:
        win = from_bounds(*ref.bounds, transform=src.transform).round_offsets().round_lengths()
        data, t = src.read(1, window=win), ref.read(1)
        profile = {**src.profile, "width": t.shape[1], "height": t.shape[0], "transform": ref.transform}
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data, 1)
    return str(out), data, t


def _truth_at(truth: Path, lon: Any, lat: Any) -> np.ndarray:
    with rasterio.open(truth) as src:
        tr = Transformer.from_crs("EPSG:4326", src.crs.to_wkt(), always_xy=True)
        xy = zip(*tr.transform(np.asarray(lon), np.asarray(lat)), strict=True)
        return np.array([v[0] for v in src.sample(xy, indexes=1)])


def _one(clipped: str, truth: Path, labels: dict[str, int], n: int | None, seed: int) -> dict[str, Any]:
    from lcstack.assess import assess, design_sample

    sample, _ = design_sample([clipped], labels, n=n, seed=seed)
    ref = _truth_at(truth, sample["longitude"], sample["latitude"])
    keep = ref > 0
    reference = pd.DataFrame(
        {
            "latitude": sample["latitude"][keep],
            "longitude": sample["longitude"][keep],
            "reference": ref[keep].astype(np.int64),
            "line": np.arange(2, 2 + keep.sum()),
        }
    )
    return assess([clipped], reference, labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0, help="demo area seed")
    ap.add_argument("--reps", type=int, default=10, help="sample seeds per size")
    ap.add_argument("--n", type=int, nargs="+", default=[0, 500, 1500, 3000])
    ap.add_argument("--out", type=Path, default=RESULTS / "assess_coverage.json")
    args = ap.parse_args()
    from lcstack.inputs import read_lc_labels

    with tempfile.TemporaryDirectory() as tmp:
        area, cfg, url = _demo(Path(tmp), args.size, args.seed)
        labels = read_lc_labels(cfg.lc_labels)
        clipped, m, t = _clip(url, area.truth, Path(tmp) / "level1.tif")
        valid = (m > 0) & (t > 0)
        true_oa = float(np.mean(m[valid] == t[valid]))
        true_ha = {name: float(((t == c) & valid).sum()) * 0.01 for name, c in labels.items()}
        rows = []
        for n in args.n:
            for rep in range(args.reps):
                r = _one(clipped, area.truth, labels, n or None, rep)
                oa = r["overall_accuracy"]
                classes = r["classes"]
                inside = {
                    k: abs(c["area_ha"]["estimate"] - true_ha[k]) <= c["area_ha"]["ci95"]
                    for k, c in classes.items()
                }
                rows.append(
                    {
                        "n": r["n_samples"],
                        "seed": rep,
                        "oa": oa["estimate"],
                        "oa_ci95": oa["ci95"],
                        "oa_inside": abs(oa["estimate"] - true_oa) <= oa["ci95"],
                        "classes": len(classes),
                        "area_inside": int(sum(inside.values())),
                        "area_zero_width": int(sum(c["area_ha"]["ci95"] == 0 for c in classes.values())),
                        "outside": sorted(k for k, v in inside.items() if not v),
                    }
                )
                print(json.dumps(rows[-1]))
    summary = (
        pd.DataFrame(rows).groupby("n")[["oa_inside", "area_inside", "classes", "area_zero_width"]].mean()
    )
    print(f"true overall accuracy {true_oa:.4f} (demo {args.size}², seed {args.seed})")
    print(summary.to_string())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"true_oa": true_oa, "true_ha": true_ha, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
