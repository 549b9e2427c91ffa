"""Inference side by side: LandCoverPy-style windows vs lcstack with the sklearn and the numba engine.

All paths run in one process on the same pixels and the same fitted forest (lcstack's default forest:
100 trees, ``min_samples_leaf=2``, ``max_leaf_nodes=4096``, trained on 20 000 samples x 66 features x 8
classes), and must give the same class codes on every pixel.

* LandCoverPy style (after ``workflow_predict._process_tile_predict``): per window a dict of per-feature
  1-D arrays -> ``pd.DataFrame`` with feature-name columns, NaN rows found, every column popped and
  ``replace([inf, -inf, nan], 0)``-ed back, ``model.predict(df)`` of a model trained on STRING labels,
  nodata rows set to ``"nodata"``, then one ``np.where(predictions == name, code, encoded)`` per class.
* lcstack sklearn: :func:`lcstack.classify.predict_block` with ``engine="sklearn"`` (float32 rows of the
  valid pixels, ``HierarchicalClassifier.predict_levels``).
* lcstack numba: the same with ``engine="numba"``; one thread, and :func:`lcstack.classify.classify` over
  dask with 1 and 2 worker threads.

Run: ``.venv/bin/python benchmarks/bench_inference.py`` (``--size``, ``--window``, ``--no-write``).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import landcoverpy_window as _landcoverpy_window  # noqa: E402
from _common import load1, machine_line, wait_for_quiet, write_section  # noqa: E402

from lcstack._demo_spectra import LC_LABELS  # noqa: E402
from lcstack.classify import classify, predict_block  # noqa: E402
from lcstack.fastpredict import compile_estimator  # noqa: E402
from lcstack.model import HierarchicalClassifier, default_estimator, save_model  # noqa: E402

SEASONS = ("spring", "summer", "autumn")
BANDS = (
    "coastal blue green red rededge1 rededge2 rededge3 nir nir08 swir16 swir22 nir09 "
    "ndvi evi2 mndwi ndre osavi cri1 ri ndyi moisture"
).split()
FEATURES = [f"{s}_{b}" for s in SEASONS for b in BANDS] + ["elevation", "slope", "aspect"]


def make_data(seed: int, n_train: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training samples and a (feature, y, x) cube drawn from the same noisy class distributions."""
    rng = np.random.default_rng(seed)
    n_classes, n_features = len(LC_LABELS), len(FEATURES)
    centres = rng.uniform(0.05, 0.6, (n_classes, n_features)).astype(np.float32)

    def draw(y: np.ndarray) -> np.ndarray:
        x = centres[y] + rng.normal(0.0, 0.35, (y.size, n_features)).astype(np.float32)
        return x.astype(np.float32)

    y = rng.integers(0, n_classes, n_train)
    X = draw(y)
    flip = rng.random(n_train) < 0.1  # label noise: trees grow to their leaf limit, as on real samples
    y[flip] = rng.integers(0, n_classes, int(flip.sum()))
    # patches of 16x16 pixels per class, ~5 % nodata pixels
    coarse = rng.integers(0, n_classes, (size // 16 + 1, size // 16 + 1))
    cls = np.kron(coarse, np.ones((16, 16), dtype=int))[:size, :size]
    cube = draw(cls.ravel()).T.reshape(n_features, size, size)
    cube[:, rng.random((size, size)) < 0.05] = np.nan
    return X, y, np.ascontiguousarray(cube)


def landcoverpy_window(window: np.ndarray, clf: object, lc_mapping: dict[str, int]) -> np.ndarray:
    """LandCoverPy's per-window prediction with this benchmark's feature names."""
    return _landcoverpy_window(window, clf, lc_mapping, FEATURES)


def windows_of(cube: np.ndarray, step: int) -> list[tuple[slice, slice]]:
    ny, nx = cube.shape[1:]
    return [(slice(y, y + step), slice(x, x + step)) for y in range(0, ny, step) for x in range(0, nx, step)]


def timed(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=768, help="image side in pixels")
    parser.add_argument("--window", type=int, default=384, help="window / dask chunk side in pixels")
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=2, help="best of N for the lcstack paths")
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for load < --max-load")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()

    X, y, cube = make_data(0, args.n_train, args.size)
    names = np.array(sorted(LC_LABELS))
    # the LandCoverPy model: string labels, fitted on a DataFrame with feature names
    t = time.perf_counter()
    clf = default_estimator().set_params(random_state=0, n_jobs=-1)
    clf.fit(pd.DataFrame(X, columns=FEATURES), names[y % len(names)])
    fit_s = time.perf_counter() - t
    clf.set_params(n_jobs=1)  # per-core comparison
    # the same trees with integer codes: classes_ is only the argmax -> label lookup table
    forest = copy.deepcopy(clf)
    forest.classes_ = np.array([LC_LABELS[c] for c in clf.classes_])
    del forest.feature_names_in_
    model = HierarchicalClassifier()
    model.estimator_level1_ = forest
    model.classes_ = forest.classes_
    model.n_features_in_ = len(FEATURES)
    model.estimators_level2_, model.constant_level2_ = {}, {}
    tmp = tempfile.TemporaryDirectory()
    model_dir = str(Path(tmp.name) / "model")
    save_model(model, model_dir, metadata={"feature_names": FEATURES, "lc_labels": LC_LABELS})
    skops_mb = (Path(model_dir) / "model.skops").stat().st_size / 1e6
    n_nodes = sum(e.tree_.node_count for e in forest.estimators_)
    compiled = compile_estimator(forest)
    lc_mapping = {**LC_LABELS, "nodata": 0}
    wins = windows_of(cube, args.window)
    # warm up: numba kernels (on-disk cache), pandas, sklearn
    small = cube[:, :32, :32]
    predict_block(small, model, engine="numba")
    landcoverpy_window(small, clf, lc_mapping)

    load_before = wait_for_quiet(args.max_load, args.wait)
    n_pix = args.size * args.size

    def run_lcp() -> np.ndarray:
        out = np.zeros(cube.shape[1:], np.uint8)
        for ys, xs in wins:
            out[ys, xs] = landcoverpy_window(cube[:, ys, xs], clf, lc_mapping)
        return out

    def run_block(engine: str) -> np.ndarray:
        out = np.zeros(cube.shape[1:], np.uint8)
        for ys, xs in wins:
            out[ys, xs] = predict_block(cube[:, ys, xs], model, engine=engine)[0]
        return out

    da = xr.DataArray(cube, dims=("feature", "y", "x"), coords={"feature": FEATURES}).chunk(
        {"feature": -1, "y": args.window, "x": args.window}
    )

    def run_dask(workers: int) -> np.ndarray:
        with dask.config.set(scheduler="threads", num_workers=workers):
            # the artefact-folder route: each process loads (and compiles) the model once
            return classify(da, model_dir, engine="numba")["level1"].values

    t_lcp, ref = timed(run_lcp, 1)
    t_sk, out_sk = timed(lambda: run_block("sklearn"), 1)
    t_nb1, out_nb = timed(lambda: run_block("numba"), args.repeat)
    t_d1, out_d1 = timed(lambda: run_dask(1), args.repeat)
    t_d2, out_d2 = timed(lambda: run_dask(2), args.repeat)
    load_after = load1()
    for name, out in (("sklearn", out_sk), ("numba", out_nb), ("dask 1", out_d1), ("dask 2", out_d2)):
        assert np.array_equal(out, ref), f"lcstack {name} differs from the LandCoverPy-style path"

    def rate(seconds: float, cores: int) -> float:
        return n_pix / seconds / 1e6 / cores

    rows = [
        ("LandCoverPy style (pandas, string labels)", 1, t_lcp),
        ("lcstack `predict_block`, engine=sklearn", 1, t_sk),
        ("lcstack `predict_block`, engine=numba", 1, t_nb1),
        ("lcstack `classify` (dask, 1 thread), numba", 1, t_d1),
        ("lcstack `classify` (dask, 2 threads), numba", 2, t_d2),
    ]
    table = [
        "| path | threads | time (s) | Mpixel/s | Mpixel/s per core | per-core speed-up vs LandCoverPy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, cores, secs in rows:
        table.append(
            f"| {label} | {cores} | {secs:.2f} | {rate(secs, 1):.3f} | {rate(secs, cores):.3f} | "
            f"{rate(secs, cores) / rate(t_lcp, 1):.1f}x |"
        )
    speed_nb = t_lcp / t_nb1
    body = "\n".join(
        [
            f"Command: `.venv/bin/python benchmarks/bench_inference.py --size {args.size} "
            f"--window {args.window} --repeat {args.repeat}`",
            "",
            machine_line(load_before, load_after),
            "",
            f"Data: {args.size}x{args.size} pixels (5 % nodata) x {len(FEATURES)} float32 features, "
            f"{args.window}-pixel windows / dask chunks. Model: lcstack default forest (100 trees, "
            f"min_samples_leaf=2, max_leaf_nodes=4096) fitted in {fit_s:.0f} s on {args.n_train} samples x "
            f"{len(FEATURES)} features x {len(LC_LABELS)} classes (noisy synthetic classes); "
            f"{n_nodes} nodes. Every path gives the same code on every pixel (asserted). "
            "LandCoverPy and engine=sklearn: one run; "
            f"numba paths: best of {args.repeat} (`classify` reads the model artefact folder, "
            "loaded and compiled once per process).",
            "",
            *table,
            "",
            f"* numba engine vs LandCoverPy style, per core: **{speed_nb:.1f}x** (target >= 5x: "
            f"{'met' if speed_nb >= 5 else 'NOT met'}); vs lcstack engine=sklearn: {t_sk / t_nb1:.1f}x.",
            f"* dask 1 -> 2 threads (numba): {t_d1 / t_d2:.2f}x.",
            f"* Default model artefact (`model.skops`, deflate): **{skops_mb:.1f} MB**; compiled FastForest "
            f"in memory: {compiled.nbytes / 1e6:.1f} MB.",
        ]
    )
    print(body)
    if not args.no_write:
        write_section("## Inference", body)
    tmp.cleanup()


if __name__ == "__main__":
    main()
