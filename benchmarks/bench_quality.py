"""Map quality of configurations side by side, on the normal and the hard demo area.

Each configuration is a dict of overrides of the demo's ``config.yaml`` (nested keys merged), e.g.
``{"model": {"estimator": "hist_gradient_boosting"}}``. Per demo area (``make_demo_area(size, seed=0,
difficulty=...)``) and configuration the whole workflow runs (composites are shared between configurations
with the same feature options); the level-1 map is scored against the truth raster over all pixels
(:func:`lcstack.demo.scoring.quality`: overall accuracy and macro F1). A configuration whose keys this
checkout does not accept (the config validation refuses them) is skipped with the reason printed.

Run: ``nice -n 15 .venv/bin/python benchmarks/bench_quality.py [--size 256] [--only default,hgb]``
(``--no-write`` to only print; the table goes to the ``## Map quality`` section of ``RESULTS.md``).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load1, machine_line, write_section  # noqa: E402

#: name -> overrides of the demo config; the issue's candidates for new defaults
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "percentiles": {"features": {"percentiles": [10, 90], "std": True, "count": True}},
    "context": {"features": {"context": {"window": 5, "bands": ["nir", "ndvi"]}}},
    "percentiles+context": {
        "features": {"percentiles": [10, 90], "std": True, "count": True, "context": {"window": 5}}
    },
    "class_weight": {"model": {"class_weight": "balanced"}},
    "percentiles+class_weight": {
        "features": {"percentiles": [10, 90], "std": True, "count": True},
        "model": {"class_weight": "balanced"},
    },
    "extra_trees": {"model": {"estimator": "extra_trees"}},
    "hist_gradient_boosting": {"model": {"estimator": "hist_gradient_boosting"}},
    "lightgbm": {"model": {"estimator": "lightgbm"}},
    "extra_trees+class_weight": {"model": {"estimator": "extra_trees", "class_weight": "balanced"}},
    "extra_trees+context": {
        "features": {"context": {"window": 5, "bands": ["nir", "ndvi"]}},
        "model": {"estimator": "extra_trees"},
    },
    "extra_trees+context+class_weight": {
        "features": {"context": {"window": 5, "bands": ["nir", "ndvi"]}},
        "model": {"estimator": "extra_trees", "class_weight": "balanced"},
    },
}


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in (nested dicts key by key)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _reason(err: Exception) -> str:
    """The first problem of a config error, without the file name and the hints after it."""
    lines = str(err).splitlines()
    problem = next((line.strip()[2:] for line in lines if line.strip().startswith("- ")), lines[0])
    problem = problem.split(": ", 1)[1] if problem.startswith("/") and ": " in problem else problem
    return problem.split(". ")[0].rstrip(".")


def run_one(area: Any, name: str, overrides: dict[str, Any]) -> dict[str, Any] | str:
    """Run the workflow with ``overrides``; the scores, or the reason it was skipped."""
    import dask
    import rioxarray
    import xarray as xr

    from lcstack.config import load_config
    from lcstack.demo.scoring import quality
    from lcstack.errors import InvalidInputError, SkippedPointsWarning
    from lcstack.pipeline import Workflow

    text = yaml.safe_load(Path(area.config).read_text())
    path = Path(area.config).with_name(f"config_{name}.yaml")
    path.write_text(yaml.safe_dump(merged(text, overrides), sort_keys=False))
    try:
        cfg = load_config(path)
    except InvalidInputError as err:
        return f"not accepted by this checkout yet ({_reason(err)})"
    t0 = time.perf_counter()
    with warnings.catch_warnings(), dask.config.set(scheduler="threads"):
        warnings.simplefilter("ignore", SkippedPointsWarning)
        try:
            with Workflow(cfg, progress=False) as wf:
                wf.run()
                recs = list(wf.registry.find("maps", model=wf.model_key()))
                maps = [wf.storage.open_zarr(wf.map_urls(r)["zarr"])["level1"] for r in recs]
        except (InvalidInputError, ImportError) as err:
            return f"failed in this checkout: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
    level1 = xr.combine_by_coords([m.to_dataset() for m in maps])["level1"] if len(maps) > 1 else maps[0]
    truth = rioxarray.open_rasterio(area.truth).squeeze("band", drop=True)
    return {**quality(level1, truth), "seconds": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="demo area side in pixels (256..512)")
    parser.add_argument("--only", default="", help="comma-separated configuration names (default: all)")
    parser.add_argument("--difficulty", default="normal,hard", help="demo areas to run on")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parent / ".data" / "quality")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    os.environ.setdefault("LCSTACK_PROGRESS", "0")
    from lcstack.demo import make_demo_area

    names = [n for n in args.only.split(",") if n] or list(CONFIGS)
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; known: {list(CONFIGS)}")
    load_before = load1()
    rows: list[tuple[str, str, dict[str, Any]]] = []
    skipped: dict[str, list[str]] = {}
    for difficulty in args.difficulty.split(","):
        area = make_demo_area(args.data / f"{difficulty}_{args.size}", size=args.size, difficulty=difficulty)
        for name in names:
            result = run_one(area, name, CONFIGS[name])
            if isinstance(result, str):
                print(f"skip {name} on the {difficulty} demo: {result}", flush=True)
                same = skipped.setdefault(result, [])
                if name not in same:
                    same.append(name)
                continue
            print(f"{difficulty:6s} {name:24s} OA {result['overall_accuracy']:.3f} "
                  f"macro F1 {result['macro_f1']:.3f} ({result['seconds']:.0f} s)", flush=True)  # fmt: skip
            rows.append((difficulty, name, result))
    table = ["| demo | configuration | overrides | OA (level 1) | macro F1 (level 1) | run (s) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for difficulty, name, r in rows:
        table.append(
            f"| {difficulty} {args.size}² | {name} | `{CONFIGS[name] or '{}'}` | {r['overall_accuracy']:.3f} "
            f"| {r['macro_f1']:.3f} | {r['seconds']:.0f} |"
        )
    body = "\n".join(
        [
            f"`benchmarks/bench_quality.py --size {args.size}`: the whole workflow per configuration on the "
            "normal and the hard demo (`make_demo_area(difficulty=...)`: confusable classes, 10 % wrong "
            "labels, rare classes, a cloudy autumn); level-1 map against the truth raster, all pixels.",
            "",
            *table,
            "",
            *[f"Skipped: {', '.join(f'`{n}`' for n in names)}: {why}." for why, names in skipped.items()],
            "",
            machine_line(load_before, load1()),
        ]
    )
    print(body)
    if not args.no_write:
        write_section("## Map quality", body)


if __name__ == "__main__":
    main()
