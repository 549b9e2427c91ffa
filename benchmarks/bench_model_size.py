"""Model size vs accuracy and throughput on the demo area: can a smaller forest reach the 5x target?

The offline demo area (``make_demo_area(size=512, seed=0)``) runs through discover + composite + train;
the 66-feature cube is read once and put on the truth grid. Candidate level-1 forests are then trained on
the SAME training rows:

* (a) LandCoverPy's classifier: ``RandomForestClassifier(n_jobs=...)`` with scikit-learn defaults (100
  fully grown trees), fitted as LandCoverPy does on a DataFrame with string labels;
* (b) lcstack's default (``lcstack.training._ESTIMATORS["random_forest"]``);
* size-limited variants (fewer trees, ``max_depth``, ``max_leaf_nodes``).

Two training sets: the demo's point table (``dataset.csv`` as the workflow extracts it, ~600 points) and a
larger one, ``--n-large`` pixels of the cube drawn stratified by truth class (equal share per class), so
that the trees grow as deep as on real data. Per model: level-1 agreement with the truth raster
(``lcstack.demo.scoring.agreement``; with the large set on the pixels NOT used for training), the skops artefact
size (``save_model``, deflate), and the time to classify every pixel of the cube with

* the LandCoverPy-style path (pandas DataFrame per window, ``predict`` of the string-label model, one
  ``np.where`` per class; the same code as ``bench_inference.py``), model (a) only — the baseline;
* lcstack ``predict_block(engine="sklearn")`` (numpy float32 rows, scikit-learn ``predict``);
* lcstack ``predict_block(engine="numba")`` (compiled kernel, 1 thread), asserted identical to sklearn's
  ``predict`` for every model (and to the LandCoverPy-style path for model (a)).

Run: ``nice -n 15 .venv/bin/python benchmarks/bench_model_size.py`` (``--no-write`` to only print).
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, cpu_model, landcoverpy_window, load1, windows_of  # noqa: E402


def timed(fn, repeat: int) -> tuple[float, float, object]:
    """Best wall and best CPU seconds (``time.process_time``) of ``repeat`` runs, and the last result.

    All paths here run in one thread, so CPU seconds are the per-core cost, little affected by other
    processes on a busy machine; wall seconds are reported too.
    """
    wall, cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        cpu = min(cpu, time.process_time() - c)
        wall = min(wall, time.perf_counter() - t)
    return wall, cpu, out


SUBSECTION = "### Model size vs accuracy and throughput"

# (label, parameters on top of RandomForestClassifier(random_state=0)); the first two are (a) and (b).
CANDIDATES: list[tuple[str, dict[str, Any]]] = [
    ("(a) LandCoverPy: sklearn defaults, fully grown", {"n_estimators": 100}),
    ("(b) lcstack default", {}),  # filled from lcstack.training._ESTIMATORS below
    ("100 trees, max_depth=16", {"n_estimators": 100, "max_depth": 16}),
    ("100 trees, max_depth=12", {"n_estimators": 100, "max_depth": 12}),
    ("100 trees, max_leaf_nodes=1024", {"n_estimators": 100, "max_leaf_nodes": 1024}),
    ("100 trees, max_leaf_nodes=256", {"n_estimators": 100, "max_leaf_nodes": 256}),
    ("50 trees, max_depth=12", {"n_estimators": 50, "max_depth": 12}),
    ("50 trees, max_leaf_nodes=256", {"n_estimators": 50, "max_leaf_nodes": 256}),
    ("30 trees, max_depth=12", {"n_estimators": 30, "max_depth": 12}),
    ("20 trees, max_depth=12", {"n_estimators": 20, "max_depth": 12}),
    ("20 trees, max_leaf_nodes=256", {"n_estimators": 20, "max_leaf_nodes": 256}),
]


def demo_cube(workdir: Path, size: int, seed: int):
    """Demo area -> workflow discover/composite/train -> (cube on the truth grid, truth, table, lc_labels)."""
    import dask
    import rioxarray

    from lcstack.config import load_config
    from lcstack.demo import make_demo_area
    from lcstack.pipeline import Workflow

    area = make_demo_area(workdir / "area", size=size, seed=seed)
    wf = Workflow(load_config(area.config, storage=str(workdir / "store")), progress=False)
    with dask.config.set(scheduler="threads"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wf.run(["discover", "composite", "train"])
        (tile,) = list(wf.tiles)
        cube = wf.features(tile).compute()
        table, _ = wf.samples()  # the registered dataset, read back with lcstack.samples.read_samples
    truth = rioxarray.open_rasterio(area.truth).squeeze("band", drop=True)
    # the workflow grid is a few pixels larger than the demo grid: take the truth grid's pixels
    cube = cube.sel(x=truth.x, y=truth.y, method="nearest", tolerance=1e-6)
    cube = cube.assign_coords(x=truth.x, y=truth.y)
    lc = wf.config.read_lc_labels()
    wf.close()
    return cube, truth, table, lc


def large_table(
    cube: xr.DataArray, truth: xr.DataArray, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` valid pixels drawn with an equal share per truth class (all of a class if it is smaller)."""
    rng = np.random.default_rng(seed)
    data = cube.to_numpy()
    t = truth.to_numpy().ravel()
    valid = np.isfinite(data).all(axis=0).ravel() & (t > 0)
    classes = np.unique(t[valid])
    per = n // len(classes)
    picked = []
    for c in classes:
        pool = np.flatnonzero(valid & (t == c))
        picked.append(rng.choice(pool, size=min(per, pool.size), replace=False))
    idx = np.sort(np.concatenate(picked))
    X = np.ascontiguousarray(data.reshape(data.shape[0], -1)[:, idx].T, dtype=np.float32)
    return X, t[idx].astype(np.int64), idx


def wrap(forest: Any, n_features: int):
    from lcstack.model import HierarchicalClassifier

    model = HierarchicalClassifier()
    model.estimator_level1_ = forest
    model.classes_ = forest.classes_
    model.n_features_in_ = n_features
    model.estimators_level2_, model.constant_level2_ = {}, {}
    return model


def depth_leaves(forest: Any) -> tuple[float, int, float, int]:
    depths = [e.tree_.max_depth for e in forest.estimators_]
    leaves = [e.tree_.n_leaves for e in forest.estimators_]
    return float(np.mean(depths)), int(max(depths)), float(np.mean(leaves)), int(max(leaves))


def evaluate(
    name: str,
    X: np.ndarray,
    y: np.ndarray,
    *,
    cube: np.ndarray,
    truth: xr.DataArray,
    score_truth: xr.DataArray,
    features: list[str],
    lc: dict[str, int],
    wins: list[tuple[slice, slice]],
    repeat: int,
    tmp: Path,
) -> tuple[list[dict[str, Any]], float, float, float]:
    """Train every candidate on (X, y); return rows, LandCoverPy-style seconds for (a), loads."""
    from sklearn.ensemble import RandomForestClassifier

    from lcstack.classify import predict_block
    from lcstack.demo.scoring import agreement
    from lcstack.model import save_model
    from lcstack.training import _ESTIMATORS

    code_to_name = {v: k for k, v in lc.items()}
    lc_mapping = {**lc, "nodata": 0}
    default = _ESTIMATORS["random_forest"](0, {})
    rows: list[dict[str, Any]] = []
    load_before = load1()

    def tile(fn) -> np.ndarray:
        out = np.zeros(cube.shape[1:], np.uint8)
        for ys, xs in wins:
            out[ys, xs] = fn(cube[:, ys, xs])
        return out

    t_lcp = w_lcp = float("nan")
    for label, params in CANDIDATES:
        if label.startswith("(b)"):
            clf = default
        else:
            clf = RandomForestClassifier(random_state=0, n_jobs=-1, **params)
        t0 = time.perf_counter()
        if label.startswith("(a)"):
            # as LandCoverPy: DataFrame with feature names, string labels; integer copy for lcstack
            clf.fit(pd.DataFrame(X, columns=features), np.array([code_to_name[c] for c in y]))
            lcp_clf = clf
            forest = copy.deepcopy(clf)
            forest.classes_ = np.array([lc[c] for c in clf.classes_])
            del forest.feature_names_in_
        else:
            forest = clf.fit(X, y)
        fit_s = time.perf_counter() - t0
        clf.set_params(n_jobs=1)
        forest.set_params(n_jobs=1)
        model = wrap(forest, len(features))
        art = tmp / f"m{len(rows)}"
        save_model(model, str(art), metadata={"feature_names": features, "lc_labels": lc})
        skops_mb = (art / "model.skops").stat().st_size / 1e6
        predict_block(cube[:, :8, :8], model, engine="numba")  # compile the FastForest, warm numba
        w_nb, t_nb, out_nb = timed(
            lambda m=model: tile(lambda b: predict_block(b, m, engine="numba")[0]), repeat
        )
        w_sk, t_sk, out_sk = timed(
            lambda m=model: tile(lambda b: predict_block(b, m, engine="sklearn")[0]), 1
        )
        assert np.array_equal(out_nb, out_sk), f"{label}: numba engine differs from sklearn predict"
        if label.startswith("(a)"):
            landcoverpy_window(cube[:, :8, :8], lcp_clf, lc_mapping, features)  # warm up pandas
            w_lcp, t_lcp, out_lcp = timed(
                lambda c=lcp_clf: tile(lambda b: landcoverpy_window(b, c, lc_mapping, features)), 1
            )
            assert np.array_equal(out_lcp, out_nb), "LandCoverPy-style path differs from lcstack numba"
        acc = agreement(xr.DataArray(out_nb, coords=truth.coords, dims=truth.dims), score_truth)
        mean_d, max_d, mean_l, max_l = depth_leaves(forest)
        rows.append(
            {
                "label": label,
                "trees": len(forest.estimators_),
                "mean_depth": mean_d,
                "max_depth": max_d,
                "mean_leaves": mean_l,
                "max_leaves": max_l,
                "skops_mb": skops_mb,
                "acc": acc,
                "fit_s": fit_s,
                "t_nb": t_nb,
                "w_nb": w_nb,
                "t_sk": t_sk,
            }
        )
        if label.startswith("(a)"):
            print(f"  {name}: LandCoverPy-style {t_lcp:.2f} s CPU ({w_lcp:.2f} wall)", file=sys.stderr)
        print(
            f"  {name}: {label}: acc {acc:.4f}, {skops_mb:.2f} MB, numba {t_nb:.2f} s CPU ({w_nb:.2f} wall), "
            f"sklearn {t_sk:.2f} s CPU, "
            f"fit {fit_s:.1f} s, load {load1():.2f}",
            file=sys.stderr,
        )
    return rows, t_lcp, w_lcp, load_before, load1()


def table_md(rows: list[dict[str, Any]], t_lcp: float, w_lcp: float, n_pix: int) -> list[str]:
    acc_a = rows[0]["acc"]
    out = [
        "| model | trees | depth mean / max | leaves per tree mean / max | skops MB | accuracy vs truth (L1) "
        "| Δ vs (a) (points) | numba Mpixel per CPU-s (1 thread) | numba Mpixel/s wall | sklearn Mpixel per CPU-s "
        "| speed-up vs LandCoverPy-style (a), CPU time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| *LandCoverPy-style path (pandas, string labels), model (a)* | 100 | | | | | | "
        f"*{n_pix / t_lcp / 1e6:.3f}* (this path) | *{n_pix / w_lcp / 1e6:.3f}* | | 1.0x |",
    ]
    for r in rows:
        out.append(
            f"| {r['label']} | {r['trees']} | {r['mean_depth']:.1f} / {r['max_depth']} | "
            f"{r['mean_leaves']:.0f} / {r['max_leaves']} | {r['skops_mb']:.2f} | {100 * r['acc']:.2f} % | "
            f"{100 * (r['acc'] - acc_a):+.2f} | {n_pix / r['t_nb'] / 1e6:.3f} | {n_pix / r['w_nb'] / 1e6:.3f} | "
            f"{n_pix / r['t_sk'] / 1e6:.3f} | **{t_lcp / r['t_nb']:.1f}x** |"
        )
    return out


def verdict(rows: list[dict[str, Any]], t_lcp: float) -> str:
    acc_a = rows[0]["acc"]
    ok = [r for r in rows if r["acc"] >= acc_a - 0.01 and r["skops_mb"] <= 50]
    fast = [r for r in ok if t_lcp / r["t_nb"] >= 5]
    best = max(ok, key=lambda r: t_lcp / r["t_nb"]) if ok else None
    s = f"within 1 point of (a) and <= 50 MB: {len(ok)} of {len(rows)}; of those >= 5x: {len(fast)}"
    if best:
        s += f"; fastest such: {best['label']} ({t_lcp / best['t_nb']:.1f}x, {100 * (best['acc'] - acc_a):+.2f} points)"
    return s


def write_subsection(body: str) -> None:
    """Replace (or append) the subsection inside ``## Inference``; nothing else in RESULTS.md changes."""
    text = RESULTS.read_text()  # re-read right before writing: other scripts rewrite other sections
    block = f"{SUBSECTION}\n\n{body.strip()}\n\n"
    own = re.compile(rf"^{re.escape(SUBSECTION)}\n.*?(?=^### |^## |^<!-- |\Z)", re.S | re.M)
    if own.search(text):
        text = own.sub(lambda _: block, text)
    else:
        sec = re.compile(r"^## Inference\n.*?(?=^## |^<!-- |\Z)", re.S | re.M)
        m = sec.search(text)
        if m is None:
            text = text.rstrip("\n") + "\n\n## Inference\n\n" + block
        else:
            end = m.end()
            text = text[:end].rstrip("\n") + "\n\n" + block + text[end:]
    RESULTS.write_text(text.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="demo area side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=256, help="window side of every prediction path")
    parser.add_argument("--n-large", type=int, default=20_000, help="pixels in the large training set")
    parser.add_argument("--noise", type=float, default=0.1, help="label noise of the third training set")
    parser.add_argument("--repeat", type=int, default=2, help="best of N for the numba engine")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()

    from lcstack.training import _ESTIMATORS, feature_columns

    CANDIDATES[1] = ("(b) lcstack default", _ESTIMATORS["random_forest"](0, {}).get_params())
    b = CANDIDATES[1][1]
    b_desc = (
        f"{b['n_estimators']} trees, max_depth={b['max_depth']}, min_samples_leaf={b['min_samples_leaf']}, "
        f"max_leaf_nodes={b['max_leaf_nodes']}"
    )
    CANDIDATES[1] = (f"(b) lcstack default: {b_desc}", b)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        cube_da, truth, table, lc = demo_cube(tmp, args.size, args.seed)
        prep_s = time.perf_counter() - t0
        features = [str(f) for f in cube_da["feature"].values]
        assert feature_columns(table) == features, "training table and cube features differ"
        cube = np.ascontiguousarray(cube_da.to_numpy(), dtype=np.float32)
        n_pix = cube.shape[1] * cube.shape[2]
        nodata_frac = float(1 - np.isfinite(cube).all(axis=0).mean())
        wins = windows_of(cube, args.window)
        common = dict(
            cube=cube, truth=truth, features=features, lc=lc, wins=wins, repeat=args.repeat, tmp=tmp
        )

        X_pts = table[features].to_numpy(np.float32)
        y_pts = table["category"].to_numpy(np.int64)
        print(f"demo area ready in {prep_s:.0f} s; {len(table)} training points", file=sys.stderr)
        X_l, y_l, idx = large_table(cube_da, truth, args.n_large, args.seed)
        held = truth.copy(data=truth.to_numpy().copy())
        held.values.ravel()[idx] = 0  # score on the pixels not used for training
        rng = np.random.default_rng(args.seed + 1)
        y_noisy = y_l.copy()
        flip = rng.random(y_l.size) < args.noise
        y_noisy[flip] = rng.choice(np.unique(y_l), int(flip.sum()))
        sets = [
            (
                f"**Demo training points** ({len(y_pts)} samples from `dataset.csv` as the workflow extracts "
                "them; accuracy on every pixel):",
                X_pts,
                y_pts,
                truth,
            ),
            (
                f"**Large training set** ({len(y_l)} cube pixels drawn with an equal share per truth class, "
                f"labels from `truth.tif`; accuracy on the {n_pix - len(y_l)} other pixels):",
                X_l,
                y_l,
                held,
            ),
            (
                f"**Large training set with {100 * args.noise:.0f} % label noise** (the same pixels, "
                f"{100 * args.noise:.0f} % of labels redrawn at random, as in `bench_inference.py`: trees grow to "
                "their limits as on real samples; accuracy against the clean truth on the other pixels):",
                X_l,
                y_noisy,
                held,
            ),
        ]
        parts, loads = [], []
        for i, (title, X, y, score_truth) in enumerate(sets):
            rows, t_lcp, w_lcp, lb, la = evaluate(f"set {i}", X, y, score_truth=score_truth, **common)
            loads.append(f"{lb:.2f} / {la:.2f}")
            parts += [title, "", *table_md(rows, t_lcp, w_lcp, n_pix), "", f"* {verdict(rows, t_lcp)}.", ""]

    cmd = "nice -n 15 .venv/bin/python benchmarks/bench_model_size.py" + (
        f" --size {args.size} --window {args.window} --n-large {args.n_large} --noise {args.noise} "
        f"--repeat {args.repeat}"
    )
    busy = "quiet" if max(float(x) for pair in loads for x in pair.split(" / ")) < 1.5 else "BUSY: shared"
    body = "\n".join(
        [
            f"Command: `{cmd}` (demo area + workflow discover/composite/train, then {len(CANDIDATES)} forests x "
            f"{len(sets)} training sets; {time.perf_counter() - t0:.0f} s in all).",
            "",
            f"Machine: {os.cpu_count()} cores, CPU {cpu_model()}, run under `nice -n 15`; 1-min load average "
            f"before / after each training set: {', '.join(loads)} ({busy}). Rates are per CPU-second of the "
            "single predicting thread (`time.process_time`), which other processes barely change; wall-clock "
            "rates are shown for reference.",
            "",
            f"Data: demo area {args.size}² (seed {args.seed}), {len(features)} features from the workflow's "
            f"composites, put on the truth grid ({n_pix} pixels, {100 * nodata_frac:.1f} % nodata); "
            f"{args.window}-pixel windows for every path. Level-1 forests only (random_state=0). Accuracy: "
            "`lcstack.demo.scoring.agreement` of the level-1 map with `truth.tif` (nodata left out). Numba: "
            f'`predict_block(engine="numba")`, 1 thread, best of {args.repeat}; asserted identical to '
            '`engine="sklearn"` (scikit-learn `predict`) for every model and to the LandCoverPy-style path '
            "for (a). Speed-up: CPU time of the LandCoverPy-style path with model (a) / CPU time of the numba "
            "engine with the row's model.",
            "",
            *parts,
        ]
    )
    print(body)
    if not args.no_write:
        write_subsection(body)


if __name__ == "__main__":
    main()
