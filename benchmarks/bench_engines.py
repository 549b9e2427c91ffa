"""Other inference engines on the same fitted forests: compiled trees (treelite + tl2cgen) and ONNX Runtime.

The issue behind the inference target names them as options worth measuring. Each engine predicts the
valid pixels of the same cubes as ``bench_inference.py`` (the demo area and the noisy synthetic cube) with
the same fitted forests (LandCoverPy's fully grown one and lcstack's default), on one thread, beside
scikit-learn's ``predict`` and lcstack's numba engine. Reported per engine: the time to build it from the
fitted forest, its artefact size, Mpixel per CPU-second, the speed-up over scikit-learn, and the share of
pixels whose class equals scikit-learn's (lcstack's engines must give 100 %; the others are not built to).

Needs the ``bench`` extra (``pip install -e '.[bench]'``: onnxruntime, skl2onnx, treelite, tl2cgen) and a C
compiler for tl2cgen. Compiling a forest to C takes long for large forests, so forests with more nodes
than ``--max-compile-nodes`` are not compiled (the row says so, with the node count).

Run: ``.venv/bin/python benchmarks/bench_engines.py`` (``--no-write`` to print only).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load1, machine_line, wait_for_quiet, write_section  # noqa: E402
from bench_inference import both_datasets, fit_pair, timed  # noqa: E402

from lcstack.forest import compile_estimator, valid_columns  # noqa: E402

HEADER = "### Other inference engines (same fitted forests)"


def build_tl2cgen(forest, workdir: Path, max_nodes: int):
    """(predict function, build seconds, artefact bytes), or a reason string when not built."""
    try:
        import tl2cgen
        import treelite
    except ImportError:
        return "not installed (`pip install -e '.[bench]'`)"
    n_nodes = sum(e.tree_.node_count for e in forest.estimators_)
    if n_nodes > max_nodes:
        return f"not compiled: {n_nodes} nodes > --max-compile-nodes {max_nodes}"
    t = time.perf_counter()
    model = treelite.sklearn.import_model(forest)
    lib = workdir / f"forest_{id(forest)}.so"
    tl2cgen.export_lib(model, toolchain="gcc", libpath=str(lib), params={"parallel_comp": os.cpu_count()})
    predictor = tl2cgen.Predictor(str(lib), nthread=1)
    seconds = time.perf_counter() - t

    def predict(X: np.ndarray) -> np.ndarray:
        proba = np.asarray(predictor.predict(tl2cgen.DMatrix(X, dtype="float32")))
        return forest.classes_.take(proba.reshape(X.shape[0], -1).argmax(axis=1))

    return predict, seconds, lib.stat().st_size


def build_onnx(forest, n_features: int):
    try:
        import onnxruntime as ort
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType
    except ImportError:
        return "not installed (`pip install -e '.[bench]'`)"
    t = time.perf_counter()
    onx = convert_sklearn(
        forest,
        initial_types=[("X", FloatTensorType([None, n_features]))],
        options={id(forest): {"zipmap": False}},
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    blob = onx.SerializeToString()
    session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    seconds = time.perf_counter() - t

    def predict(X: np.ndarray) -> np.ndarray:
        return session.run(None, {"X": X})[0]

    return predict, seconds, len(blob)


def run_case(forest, cube: np.ndarray, repeat: int, max_nodes: int, workdir: Path) -> list[dict]:
    columns, _ = valid_columns(cube)
    columns = np.ascontiguousarray(columns)
    X = np.ascontiguousarray(columns.T)
    n = X.shape[0]
    t = time.perf_counter()
    compiled = compile_estimator(forest)
    numba_build = time.perf_counter() - t
    # every engine predicts rows[sl]: row-major X for the others, lcstack its feature-major columns
    engines: dict[str, object] = {
        "scikit-learn `predict`": (lambda X: forest.predict(X), None, None),
        "lcstack numba (default)": (None, numba_build, compiled.nbytes),
        "tl2cgen (treelite, gcc)": build_tl2cgen(forest, workdir, max_nodes),
        "ONNX Runtime (skl2onnx)": build_onnx(forest, X.shape[1]),
    }
    ref = forest.predict(X)
    rows = []
    for name, engine in engines.items():
        if isinstance(engine, str):
            rows.append({"engine": name, "skipped": engine})
            continue
        on_rows, build_s, size = engine
        if on_rows is None:

            def predict(sl: slice) -> np.ndarray:
                return compiled.predict(columns[:, sl], feature_major=True)

        else:

            def predict(sl: slice, on_rows=on_rows) -> np.ndarray:
                return on_rows(X[sl])

        predict(slice(0, 64))  # warm (numba's compile, ONNX Runtime's first run)
        rows.append(
            {"engine": name, "build_s": build_s, "bytes": size, "cpu": float("inf"), "predict": predict}
        )
    for _ in range(repeat):  # interleaved, best of `repeat` each
        for row in rows:
            if "predict" in row:
                _, cpu, out = timed(lambda row=row: row["predict"](slice(None)), 1)
                row["cpu"] = min(row["cpu"], cpu)
                row["agree"] = float((np.asarray(out) == ref).mean())
    numba_row = next(r for r in rows if r["engine"].startswith("lcstack"))
    assert numba_row["agree"] == 1.0, "lcstack's engine differs from scikit-learn's predict"
    sk = rows[0]["cpu"]
    for row in rows:
        row["n"] = n
        row["vs_sklearn"] = sk / row["cpu"] if "cpu" in row else None
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=768, help="side of the noisy synthetic cube")
    parser.add_argument("--demo-size", type=int, default=512, help="side of the demo area")
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-compile-nodes", type=int, default=50_000)
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--wait", type=float, default=120)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    from lcstack.model import DEFAULT_FOREST_PARAMS

    forests = [
        ("LandCoverPy's (100 fully grown trees)", {}),
        ("lcstack default", dict(DEFAULT_FOREST_PARAMS)),
    ]
    datasets = both_datasets(args.demo_size, args.size, args.n_train)
    load_before = wait_for_quiet(args.max_load, args.wait)
    table = [
        "| data | forest (nodes) | engine | build s | artefact MB | Mpixel per CPU-s | vs scikit-learn | "
        "same class as scikit-learn |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as td:
        for data_label, X, y, cube, features in datasets:
            for forest_label, params in forests:
                _, model = fit_pair(params, X, y, features)
                forest = model.estimator_level1_
                n_nodes = sum(e.tree_.node_count for e in forest.estimators_)
                for row in run_case(forest, cube, args.repeat, args.max_compile_nodes, Path(td)):
                    print(
                        data_label,
                        forest_label,
                        {k: v for k, v in row.items() if k != "predict"},
                        file=sys.stderr,
                        flush=True,
                    )
                    head = f"| {data_label} | {forest_label} ({n_nodes}) | {row['engine']} |"
                    if "skipped" in row:
                        table.append(f"{head} {row['skipped']} | | | | |")
                        continue
                    size = "" if row["bytes"] is None else f"{row['bytes'] / 1e6:.2f}"
                    build = "" if row["build_s"] is None else f"{row['build_s']:.1f}"
                    table.append(
                        f"{head} {build} | {size} | {row['n'] / row['cpu'] / 1e6:.3f} | "
                        f"{row['vs_sklearn']:.2f}x | {row['agree'] * 100:.3f} % |"
                    )
    body = "\n".join(
        [
            f"Command: `.venv/bin/python benchmarks/bench_engines.py --size {args.size} --demo-size "
            f"{args.demo_size} --repeat {args.repeat} --max-compile-nodes {args.max_compile_nodes}` (needs "
            "`pip install -e '.[bench]'`)",
            "",
            machine_line(load_before, load1()),
            "",
            "The valid pixels of the same cubes and the same fitted forests as above, one thread, every engine "
            f"best of {args.repeat} runs, interleaved. *Build*: seconds from the fitted forest to a ready "
            "predictor (lcstack: flattening into arrays; its kernels are compiled once and cached on disk by "
            "numba). *Artefact*: the compiled library, the ONNX model, or lcstack's node arrays. *Same "
            "class*: pixels whose class equals scikit-learn's `predict`.",
            "",
            *table,
        ]
    )
    print(body)
    if not args.no_write:
        write_section(HEADER, body)


if __name__ == "__main__":
    main()
