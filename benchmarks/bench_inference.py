"""Inference side by side, same fitted model: LandCoverPy-style windows vs lcstack (sklearn and numba engines).

Every path runs in one process on the same pixels with the same fitted forest and must give the same
class codes on every pixel (asserted). Four cases: two data sets x two forests.

* Data: (1) the offline demo area (``make_demo_area(512)`` through discover/composite, 66 features of
  Sentinel-2-like spectra, trained on 20 000 of its pixels drawn per truth class); (2) a noisy synthetic
  cube (768², 8 overlapping classes, 10 % label noise: the hard case, where trees grow deep and votes
  stay split).
* Forests: LandCoverPy's own classifier (scikit-learn defaults: 100 fully grown trees) and lcstack's
  default (:data:`lcstack.model.DEFAULT_FOREST_PARAMS`).

Paths:

* LandCoverPy style (after ``workflow_predict._process_tile_predict``): per window a ``pd.DataFrame`` with
  feature-name columns, NaN rows found, every column ``replace``-d, ``model.predict(df)`` of the model
  trained on STRING labels, nodata set to ``"nodata"``, then one ``np.where`` per class.
* lcstack ``predict_block`` with ``engine="sklearn"`` (float32 rows of the valid pixels, scikit-learn
  ``predict``) and ``engine="numba"`` (the default; :mod:`lcstack.forest`), one thread;
  :func:`lcstack.classify.classify` over dask with 1 and 2 threads for the first case.

Run: ``.venv/bin/python benchmarks/bench_inference.py`` (``--no-write`` to print only).

``--proba`` measures only probabilities on vs off (issue 17.2), side by side on the same data and forests:
per chunk ``predict_block`` (class codes) against ``proba_block`` (codes, level-1 probabilities and the six
uncertainty layers: what ``classify(probabilities=True)`` runs per chunk), and ``classify`` over dask from
an artefact folder computing every variable, with ``probabilities`` off and on (one thread); section
``## Probabilities on vs off``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    cpu_family,
    load1,
    machine_line,
    wait_for_quiet,
    windows_of,  # noqa: E402
    write_section,
)
from _common import landcoverpy_window as _landcoverpy_window  # noqa: E402

from lcstack.classify import (  # noqa: E402
    classify,
    fast_predict_levels,
    fast_predict_proba_levels,
    predict_block,
    proba_block,
)
from lcstack.demo.spectra import LC_LABELS  # noqa: E402
from lcstack.forest import _simd, compile_estimator, engine, kernels  # noqa: E402
from lcstack.forest import predict as fpredict  # noqa: E402
from lcstack.model import HierarchicalClassifier, save_model  # noqa: E402

SEASONS = ("spring", "summer", "autumn")
#: Rows per partition step -> (column name, LCSTACK_SIMD value)
STEP_NAMES = {16: ("avx512", "avx512"), 8: ("avx2", "avx2"), 0: ("scalar", "0")}
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


def timed(fn, repeat: int) -> tuple[float, float, object]:
    """Best wall and CPU seconds of ``repeat`` runs (one thread: CPU seconds are the per-core cost)."""
    wall, cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        cpu = min(cpu, time.process_time() - c)
        wall = min(wall, time.perf_counter() - t)
    return wall, cpu, out


def demo_data(size: int, n_train: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Demo area -> workflow composites -> (training rows, labels, (feature, y, x) cube, feature names)."""
    from bench_model_size import demo_cube, large_table

    with tempfile.TemporaryDirectory() as td:
        cube_da, truth, _, _ = demo_cube(Path(td), size, seed)
    X, y, _ = large_table(cube_da, truth, n_train, seed)
    names = [str(f) for f in cube_da["feature"].values]
    return X, y - 1, np.ascontiguousarray(cube_da.to_numpy(), dtype=np.float32), names


def both_datasets(demo_size: int, size: int, n_train: int) -> list[tuple]:
    """(label, training rows, labels, cube, feature names) of the demo area and of the noisy synthetic cube."""
    Xd, yd, cube_d, names_d = demo_data(demo_size, n_train, 0)
    Xs, ys, cube_s = make_data(0, n_train, size)
    return [
        (f"demo area {demo_size}²", Xd, yd, cube_d, names_d),
        (f"noisy synthetic {size}²", Xs, ys, cube_s, FEATURES),
    ]


def fit_pair(params: dict, X: np.ndarray, y: np.ndarray, features: list[str]):
    """The LandCoverPy model (string labels, DataFrame) and the same trees as an lcstack model."""
    from sklearn.ensemble import RandomForestClassifier

    names = np.array(sorted(LC_LABELS))
    clf = RandomForestClassifier(**{**params, "random_state": 0, "n_jobs": -1})
    clf.fit(pd.DataFrame(X, columns=features), names[y % len(names)])
    clf.set_params(n_jobs=1)  # per-core comparison
    # the same trees with integer codes: classes_ is only the argmax -> label lookup table
    forest = copy.deepcopy(clf)
    forest.classes_ = np.array([LC_LABELS[c] for c in clf.classes_])
    del forest.feature_names_in_
    model = HierarchicalClassifier()
    model.estimator_level1_ = forest
    model.classes_ = forest.classes_
    model.n_features_in_ = len(features)
    model.estimators_level2_, model.constant_level2_ = {}, {}
    return clf, model


def run_case(cube, clf, model, features, window, repeat):
    """Time every path on ``cube``; return the row of figures."""
    lc_mapping = {**LC_LABELS, "nodata": 0}
    wins = windows_of(cube, window)
    small = cube[:, :32, :32]
    predict_block(small, model, engine="numba")  # compile the FastForest, warm numba
    _landcoverpy_window(small, clf, lc_mapping, features)

    def run_lcp() -> np.ndarray:
        out = np.zeros(cube.shape[1:], np.uint8)
        for ys, xs in wins:
            out[ys, xs] = _landcoverpy_window(cube[:, ys, xs], clf, lc_mapping, features)
        return out

    def run_block(engine: str) -> np.ndarray:
        out = np.zeros(cube.shape[1:], np.uint8)
        for ys, xs in wins:
            out[ys, xs] = predict_block(cube[:, ys, xs], model, engine=engine)[0]
        return out

    def run_proba() -> np.ndarray:
        """The numba engine's probabilities (level-1 over all classes, margin, level 2), per window."""
        out = np.zeros(cube.shape[1:], np.uint8)
        for ys, xs in wins:
            columns, index = fpredict.valid_columns(cube[:, ys, xs])
            levels = fast_predict_proba_levels(model, columns, feature_major=True, assume_finite=True)
            window = np.zeros(out[ys, xs].size, np.uint8)
            window[index] = levels.level1
            out[ys, xs] = window.reshape(out[ys, xs].shape)
        return out

    def run_step(step: str) -> np.ndarray:
        """The numba engine with another partition step (``LCSTACK_SIMD``: ``avx2`` or ``0``, scalar)."""
        previous = os.environ.get("LCSTACK_SIMD")
        os.environ["LCSTACK_SIMD"] = step
        try:
            return run_block("numba")
        finally:
            if previous is None:
                del os.environ["LCSTACK_SIMD"]
            else:
                os.environ["LCSTACK_SIMD"] = previous

    # the other steps this CPU has, besides the default (the one calibrated fastest here for this shape)
    compiled = compile_estimator(model.estimator_level1_)
    default_step = engine.simd_width(compiled.shape)
    steps = dict(STEP_NAMES[w] for w in _simd.available_widths() if w != default_step)
    # every path best of `repeat`, interleaved so that no path always runs on a warmer machine
    w_lcp = c_lcp = w_sk = c_sk = w_nb = c_nb = c_proba = float("inf")
    other = {name: float("inf") for name in steps}  # CPU seconds
    rounds = []  # per round, LandCoverPy-style CPU seconds / numba CPU seconds, run back to back
    loads = []
    for _ in range(repeat):
        loads.append(load1())
        w, c, ref = timed(run_lcp, 1)
        w_lcp, c_lcp, c_round = min(w_lcp, w), min(c_lcp, c), c
        w, c, out_nb = timed(lambda: run_block("numba"), 1)
        w_nb, c_nb = min(w_nb, w), min(c_nb, c)
        rounds.append(c_round / c)
        w, c, out_sk = timed(lambda: run_block("sklearn"), 1)
        w_sk, c_sk = min(w_sk, w), min(c_sk, c)
        _, c, out_proba = timed(run_proba, 1)
        c_proba = min(c_proba, c)
        assert np.array_equal(out_proba, ref), "lcstack numba probabilities' argmax differs"
        for name, value in steps.items():
            _, c, out = timed(lambda value=value: run_step(value), 1)
            other[name] = min(other[name], c)
            assert np.array_equal(out, ref), (
                f"lcstack numba ({name} step) differs from the LandCoverPy-style path"
            )
    for name, out in (("sklearn", out_sk), ("numba", out_nb)):
        assert np.array_equal(out, ref), f"lcstack {name} differs from the LandCoverPy-style path"
    forest = model.estimator_level1_
    flat = cube.reshape(cube.shape[0], -1)
    columns = np.ascontiguousarray(flat[:, np.isfinite(flat).all(axis=0)])
    _, _, walks = compile_estimator(forest)._run(columns, 1, want_proba=False, feature_major=True)
    n_trees = len(forest.estimators_)
    return {
        "n_nodes": sum(e.tree_.node_count for e in forest.estimators_),
        "depth": np.mean([e.tree_.max_depth for e in forest.estimators_]),
        "trees_walked": walks / columns.shape[1] / n_trees,
        "n_trees": n_trees,
        "lcp": (w_lcp, c_lcp),
        "sklearn": (w_sk, c_sk),
        "numba": (w_nb, c_nb),
        "steps": other,
        "proba": c_proba,
        "rounds": rounds,
        "loads": loads,
        "shape": compiled.shape,
        "block": compiled._block,
        "step": default_step,
        "ref": ref,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=768, help="side of the noisy synthetic cube")
    parser.add_argument("--demo-size", type=int, default=512, help="side of the demo area")
    parser.add_argument("--window", type=int, default=256, help="window / dask chunk side in pixels")
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5, help="best of N interleaved rounds (>= 3)")
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for load < --max-load")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    parser.add_argument("--proba", action="store_true", help="only probabilities on vs off (issue 17.2)")
    args = parser.parse_args()
    if args.repeat < 3:
        parser.error("--repeat must be at least 3: every row is the best of >= 3 interleaved rounds")
    if args.proba:
        return main_proba(args)

    from lcstack.model import DEFAULT_FOREST_PARAMS

    forests = [
        ("LandCoverPy's forest (sklearn defaults: 100 fully grown trees)", {}),
        (
            "lcstack default (" + ", ".join(f"{k}={v}" for k, v in DEFAULT_FOREST_PARAMS.items()) + ")",
            dict(DEFAULT_FOREST_PARAMS),
        ),
    ]
    datasets = both_datasets(args.demo_size, args.size, args.n_train)
    load_before = wait_for_quiet(args.max_load, args.wait)
    results, dask_row = [], None
    for data_label, X, y, cube, features in datasets:
        for forest_label, params in forests:
            clf, model = fit_pair(params, X, y, features)
            res = run_case(cube, clf, model, features, args.window, args.repeat)
            res.update(data=data_label, forest=forest_label, n_pix=cube.shape[1] * cube.shape[2])
            print(
                data_label,
                forest_label,
                {k: v for k, v in res.items() if k != "ref"},
                file=sys.stderr,
                flush=True,
            )
            if dask_row is None:
                dask_row = run_dask(cube, model, features, args.window, args.repeat, res["ref"])
            results.append(res)
    load_after = load1()

    table = [
        "| data | forest | mean depth | trees walked per pixel | LandCoverPy style Mpixel/s | lcstack sklearn "
        "Mpixel/s | lcstack numba Mpixel/s | numba vs LandCoverPy (CPU time) | per round (min-max) | "
        "numba vs sklearn | numba, AVX-512 step, vs LandCoverPy | numba, AVX2 step, vs LandCoverPy | numba, "
        "scalar loop, vs LandCoverPy | probabilities / class-only (numba CPU time) | block rows, step | "
        "1-min load per round |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    speedups = []
    for r in results:
        n = r["n_pix"] / 1e6
        speed = r["lcp"][1] / r["numba"][1]
        speedups.append(speed)
        by_step = {name: f"{r['lcp'][1] / c:.1f}x" for name, c in r["steps"].items()}
        by_step[STEP_NAMES[r["step"]][0]] = "(the default here)"
        avx512, avx2 = by_step.get("avx512", "(no AVX-512)"), by_step.get("avx2", "(no AVX2)")
        scalar = by_step["scalar"]
        table.append(
            f"| {r['data']} | {r['forest']} | {r['depth']:.1f} | {r['trees_walked'] * r['n_trees']:.0f} of "
            f"{r['n_trees']} | {n / r['lcp'][0]:.3f} | {n / r['sklearn'][0]:.3f} | {n / r['numba'][0]:.3f} | "
            f"**{speed:.1f}x** | {min(r['rounds']):.1f}-{max(r['rounds']):.1f}x | "
            f"{r['sklearn'][1] / r['numba'][1]:.1f}x | {avx512} | {avx2} | {scalar} | "
            f"{r['proba'] / r['numba'][1]:.2f}x | {r['block']}, {STEP_NAMES[r['step']][0]} ({r['shape']}) | "
            f"{'/'.join(f'{x:.1f}' for x in r['loads'])} |"
        )
    t_d1, t_d2 = dask_row
    body = "\n".join(
        [
            f"Command: `.venv/bin/python benchmarks/bench_inference.py --size {args.size} --demo-size "
            f"{args.demo_size} --window {args.window} --repeat {args.repeat}`",
            "",
            machine_line(load_before, load_after),
            "",
            f"CPU family: {cpu_family()}. Partition step calibrated per forest shape here: "
            + ", ".join(f"{s} trees {STEP_NAMES[engine.simd_width(s)][0]}" for s in engine.SHAPES)
            + f"; blocks from the L2 cache: {kernels._block_range(len(FEATURES))[0]}-"
            f"{kernels._block_range(len(FEATURES))[1]} rows for 66 features.",
            "",
            f"Same fitted model on both sides of every row: the LandCoverPy-style path predicts with the forest "
            f"fitted on string labels, lcstack with the very same trees (integer class codes). Training: "
            f"{args.n_train} samples x 66 features x 8 classes per data set (demo: pixels drawn per truth class; "
            "synthetic: 10 % label noise). Every path gives the same code on every pixel (asserted). One "
            f"thread; {args.window}-pixel windows; every path best of {args.repeat} runs, interleaved. "
            "Speed-up = CPU seconds of the LandCoverPy-style path / CPU seconds of lcstack's "
            "numba engine (`predict_block`, the code `classify` runs per chunk), each path's best run; *per "
            "round*: the same ratio within each round, the two paths run back to back (this shared VM's "
            "speed drifts between rounds, the memory-bound numba kernel more than the baseline). *Trees "
            "walked*: the numba engine stops walking a pixel's trees once its vote is settled (see "
            "`lcstack/forest/`). The numba engine uses the partition step calibrated fastest on "
            "this CPU for the forest's shape (*block rows, step*: shallow trees keep the smallest block, "
            "deep ones grow it); the other step "
            "columns: the same engine with `LCSTACK_SIMD=avx512`, `avx2` or `0` (CPU time, best of the "
            "same rounds). *1-min load per round*: the load average at the start of each round (2 cores; "
            "above 2 other processes shared the cores and the caches, so the figures are pessimistic). *Probabilities / class-only*: `fast_predict_proba_levels` (level-1 "
            "probabilities, margin, level 2 and its probability, every tree walked) over the class-only "
            "engine, CPU time.",
            "",
            *table,
            "",
            f"* Same-model inference vs the LandCoverPy-style path, target >= 5x, on this CPU ({cpu_family()}): met on "
            f"{sum(s >= 5 for s in speedups)} of {len(speedups)} cases ("
            + ", ".join(f"{s:.1f}x" for s in speedups)
            + ").",
            f"* `classify` over dask (artefact folder, numba), first case: 1 thread {t_d1:.2f} s, 2 threads "
            f"{t_d2:.2f} s ({t_d1 / t_d2:.2f}x).",
        ]
    )
    print(body)
    if not args.no_write:
        write_section("## Inference", body)


def run_proba_case(cube, model, features, window, repeat) -> dict:
    """Probabilities off vs on, per chunk (CPU s, 1 thread) and through ``classify`` over dask (wall s)."""
    wins = windows_of(cube, window)
    classes = [int(c) for c in model.classes_]
    predict_block(cube[:, :32, :32], model, engine="numba")  # compile, warm numba
    proba_block(cube[:, :32, :32], model, classes, engine="numba")

    def codes_only() -> np.ndarray:
        out = np.zeros((2, *cube.shape[1:]), np.uint8)
        for ys, xs in wins:
            out[:, ys, xs] = predict_block(cube[:, ys, xs], model, engine="numba")
        return out

    def with_proba() -> np.ndarray:
        out = np.zeros((2 + len(classes) + 6, *cube.shape[1:]), np.uint8)
        for ys, xs in wins:
            out[:, ys, xs] = proba_block(cube[:, ys, xs], model, classes, engine="numba")
        return out

    with tempfile.TemporaryDirectory() as td:
        model_dir = str(Path(td) / "model")
        save_model(model, model_dir, metadata={"feature_names": features, "lc_labels": LC_LABELS})
        da = xr.DataArray(cube, dims=("feature", "y", "x"), coords={"feature": features}).chunk(
            {"feature": -1, "y": window, "x": window}
        )

        def run_classify(on: bool) -> xr.Dataset:
            return classify(da, model_dir, probabilities=on).compute()

        flat = cube.reshape(cube.shape[0], -1)
        columns = np.ascontiguousarray(flat[:, ~np.isnan(flat).all(axis=0)])

        def kernel(proba: bool) -> object:
            fn = fast_predict_proba_levels if proba else fast_predict_levels
            return fn(model, columns, feature_major=True, assume_finite=True)

        best = {
            k: np.inf for k in ("kernel_off", "kernel_on", "block_off", "block_on", "dask_off", "dask_on")
        }
        loads = []
        with dask.config.set(scheduler="threads", num_workers=1):
            for _ in range(repeat):
                loads.append(load1())
                best["kernel_off"] = min(best["kernel_off"], timed(lambda: kernel(False), 1)[1])
                best["kernel_on"] = min(best["kernel_on"], timed(lambda: kernel(True), 1)[1])
                _, c, off = timed(codes_only, 1)
                best["block_off"] = min(best["block_off"], c)
                _, c, on = timed(with_proba, 1)
                best["block_on"] = min(best["block_on"], c)
                assert np.array_equal(on[:2], off), "proba_block's codes differ from predict_block's"
                w, _, m_off = timed(lambda: run_classify(False), 1)
                best["dask_off"] = min(best["dask_off"], w)
                w, _, m_on = timed(lambda: run_classify(True), 1)
                best["dask_on"] = min(best["dask_on"], w)
                assert np.array_equal(m_on["level1"].values, m_off["level1"].values)
    return {**best, "loads": loads, "n_pix": cube.shape[1] * cube.shape[2], "n_classes": len(classes)}


def main_proba(args) -> None:
    """Probabilities on vs off on both data sets and both forests; section ``## Probabilities on vs off``."""
    from lcstack.model import DEFAULT_FOREST_PARAMS

    forests = [
        ("LandCoverPy's forest (100 fully grown trees)", {}),
        (
            "lcstack default (" + ", ".join(f"{k}={v}" for k, v in DEFAULT_FOREST_PARAMS.items()) + ")",
            dict(DEFAULT_FOREST_PARAMS),
        ),
    ]
    datasets = both_datasets(args.demo_size, args.size, args.n_train)
    load_before = wait_for_quiet(args.max_load, args.wait)
    rows = [
        "| data | forest | kernel on / off | per chunk, codes only (CPU s) | per chunk, + probabilities and uncertainty "
        "(CPU s) | on / off | classify over dask, off (wall s) | on (wall s) | on / off | 1-min load per round |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for data_label, X, y, cube, features in datasets:
        for forest_label, params in forests:
            _, model = fit_pair(params, X, y, features)
            r = run_proba_case(cube, model, features, args.window, args.repeat)
            print(data_label, forest_label, r, file=sys.stderr, flush=True)
            rows.append(
                f"| {data_label} | {forest_label} | {r['kernel_on'] / r['kernel_off']:.2f}x | {r['block_off']:.2f} | {r['block_on']:.2f} | "
                f"**{r['block_on'] / r['block_off']:.2f}x** | {r['dask_off']:.2f} | {r['dask_on']:.2f} | "
                f"**{r['dask_on'] / r['dask_off']:.2f}x** | {'/'.join(f'{x:.1f}' for x in r['loads'])} |"
            )
    body = "\n".join(
        [
            f"Command: `.venv/bin/python benchmarks/bench_inference.py --proba --size {args.size} "
            f"--demo-size {args.demo_size} --window {args.window} --repeat {args.repeat}`",
            "",
            machine_line(load_before, load1()),
            "",
            f"CPU family: {cpu_family()}.",
            "",
            "Same forests and pixels as `## Inference`, numba engine, one thread, every path best of "
            f"{args.repeat} interleaved rounds. *Kernel*: `fast_predict_proba_levels` over "
            "`fast_predict_levels` on all the valid pixels at once (the trees alone). *Per chunk*: `predict_block` (level-1 / level-2 codes; the "
            "class-only engine stops walking a pixel's trees once its vote is settled) against "
            "`proba_block` (the same codes with the level-1 probabilities of every class in percent and "
            "the six uncertainty layers, every tree walked: what `classify(probabilities=True)` runs per "
            f"chunk) over {args.window}-pixel windows. *classify over dask*: from a model artefact folder, "
            "every variable computed, `probabilities` off and on. Target: on within 1.5x of off.",
            "",
            *rows,
        ]
    )
    print(body)
    if not args.no_write:
        write_section("## Probabilities on vs off", body)


def run_dask(cube, model, features, window, repeat, ref) -> tuple[float, float]:
    """``classify`` over dask from a model artefact folder with 1 and 2 threads; checked against ``ref``."""
    with tempfile.TemporaryDirectory() as td:
        model_dir = str(Path(td) / "model")
        save_model(model, model_dir, metadata={"feature_names": features, "lc_labels": LC_LABELS})
        da = xr.DataArray(cube, dims=("feature", "y", "x"), coords={"feature": features}).chunk(
            {"feature": -1, "y": window, "x": window}
        )
        times = []
        for workers in (1, 2):
            with dask.config.set(scheduler="threads", num_workers=workers):
                wall, _, out = timed(lambda: classify(da, model_dir)["level1"].values, repeat)
            assert np.array_equal(out, ref), "classify differs from the LandCoverPy-style path"
            times.append(wall)
    return times[0], times[1]


if __name__ == "__main__":
    main()
