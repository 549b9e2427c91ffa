"""The vector partition steps do exactly what the scalar loop does, and deep forests get larger blocks."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

numba = pytest.importorskip("numba")

from lcstack.errors import InvalidInputError  # noqa: E402
from lcstack.forest import FastForest, _simd, engine, kernels  # noqa: E402

# (step, its width, whether this CPU has it)
STEPS = [
    pytest.param(
        "partition16", 16, marks=pytest.mark.skipif(not _simd.AVX512, reason="no AVX-512 here"), id="avx512"
    ),
    pytest.param("partition8", 8, marks=pytest.mark.skipif(not _simd.AVX2, reason="no AVX2 here"), id="avx2"),
    pytest.param("partition16_scalar", 16, id="scalar16"),
    pytest.param("partition8_scalar", 8, id="scalar8"),
]

_runners: dict[str, Any] = {}


def _runner(name: str, width: int) -> Any:
    """A compiled loop that partitions ``src[lo:hi]`` into ``dst[lo:hi]`` with step ``name``, as ``_descend``.

    16-row steps take a row count (the last step takes the last 1-16 rows); 8-row steps run while at
    least 16 rows are left (their full-width stores need that gap), then the scalar loop does the rest.
    """
    if name not in _runners:
        step = getattr(_simd, name)

        if width == 16:

            @numba.njit
            def run(src, col, thr, nan_left, dst, lo, hi):  # pragma: no cover - compiled
                nl = np.uint64(lo)
                nr = np.uint64(hi - 1)
                i = np.uint64(lo)
                while i < hi:
                    count = min(np.uint64(hi) - i, np.uint64(16))
                    n_left = step(src, i, count, col, thr, nan_left, dst, nl, nr)
                    nl += n_left
                    nr -= count - n_left
                    i += count
                return nl

        else:

            @numba.njit
            def run(src, col, thr, nan_left, dst, lo, hi):  # pragma: no cover - compiled
                one = np.uint64(1)
                nl = np.uint64(lo)
                nr = np.uint64(hi - 1)
                i = np.uint64(lo)
                w = np.uint64(width)
                while i + np.uint64(16) <= hi:
                    n_left = step(src, i, col, thr, nan_left, dst, nl, nr)
                    nl += n_left
                    nr -= w - n_left
                    i += w
                for k in range(i, hi):
                    r = src[k]
                    right = np.uint64((col[r] > thr) if nan_left else not (col[r] <= thr))
                    dst[nl] = r
                    dst[nr] = r
                    nl += one - right
                    nr -= right
                return nl

        _runners[name] = run
    return _runners[name]


def _column(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    col = rng.integers(0, 5, n).astype(np.float32)  # many values equal to the threshold
    col[rng.random(n) < 0.15] = np.nan
    return col


@pytest.mark.parametrize(("name", "width"), STEPS)
@pytest.mark.parametrize("nan_left", [True, False])
@pytest.mark.parametrize("thr", [-1.0, 2.0, 4.0, 9.0])
@pytest.mark.parametrize("length", [16 * 37, 16 * 37 + 9, 17, 5])
def test_partition_step_splits_rows_like_sklearn_and_writes_only_its_segment(
    name: str, width: int, nan_left: bool, thr: float, length: int
) -> None:
    n_rows, lo = 5000, 48
    hi = lo + length  # a segment in the middle of the buffer
    src_end = n_rows if length > 5 else hi  # a short last segment ends the array: no read beyond it
    col = _column(int(thr * 10 + 20) + nan_left, n_rows)
    src = np.full(src_end, 4_000_000_000, dtype=np.uint32)
    src[lo:hi] = np.random.default_rng(length).permutation(n_rows)[:length]
    dst = np.full(n_rows, 3_999_999_999, dtype=np.uint32)  # sentinels: nothing outside lo:hi changes
    nl = int(_runner(name, width)(src, col, np.float32(thr), nan_left, dst, lo, hi))

    x = col[src[lo:hi]]
    # scikit-learn: left when x <= thr; NaN where missing_go_to_left says
    goes_left = np.where(np.isnan(x), nan_left, x <= thr)
    assert nl - lo == goes_left.sum()
    assert sorted(dst[lo:nl]) == sorted(src[lo:hi][goes_left])
    assert sorted(dst[nl:hi]) == sorted(src[lo:hi][~goes_left])
    assert (dst[:lo] == 3_999_999_999).all() and (dst[hi:] == 3_999_999_999).all()


VECTOR_STEPS = [
    pytest.param(
        "partition16", "partition16_scalar", 16,
        marks=pytest.mark.skipif(not _simd.AVX512, reason="no AVX-512 here"), id="avx512",
    ),
    pytest.param(
        "partition8", "partition8_scalar", 8,
        marks=pytest.mark.skipif(not _simd.AVX2, reason="no AVX2 here"), id="avx2",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("name", "reference", "width"), VECTOR_STEPS)
@pytest.mark.parametrize("nan_left", [True, False])
def test_vector_step_writes_what_its_scalar_reference_writes(
    name: str, reference: str, width: int, nan_left: bool
) -> None:
    rng = np.random.default_rng(7)
    col = _column(7, 20_000)
    src = rng.permutation(20_000).astype(np.uint32)
    out = []
    for step in (name, reference):
        dst = np.zeros_like(src)
        nl = int(_runner(step, width)(src, col, np.float32(2.0), nan_left, dst, 0, 20_000))
        out.append((nl, dst))
    assert out[0][0] == out[1][0]
    # same rows in the same order on both sides (each group keeps its input order within a step)
    np.testing.assert_array_equal(out[0][1], out[1][1])


def test_simd_width_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    best = 16 if _simd.AVX512 else 8 if _simd.AVX2 else 0
    for value, width in [
        ("0", 0),
        ("off", 0),
        ("scalar", 0),
        ("avx2", 8 if _simd.AVX2 else 0),
        ("auto", engine.calibrated_width()),
        ("1", best),
        (" AVX512 ", best),
    ]:
        monkeypatch.setenv("LCSTACK_SIMD", value)
        assert engine.simd_width() == width, value
    monkeypatch.delenv("LCSTACK_SIMD")
    assert engine.simd_width() == engine.calibrated_width() in _simd.available_widths()
    monkeypatch.setenv("LCSTACK_SIMD", "sse9")
    with pytest.raises(InvalidInputError, match=r"LCSTACK_SIMD = 'sse9' is not a partition step: use auto"):
        engine.simd_width()


def test_lane_orders_put_the_chosen_lanes_first_or_last_in_order() -> None:
    first, last = _simd._lane_orders(8, last=False), _simd._lane_orders(8, last=True)
    assert first.shape == last.shape == (256, 8)
    mask = 0b10110010  # lanes 1, 4, 5, 7
    assert list(first[mask, :4]) == [1, 4, 5, 7]
    assert list(last[mask, 4:]) == [1, 4, 5, 7]
    assert list(first[255]) == list(range(8)) == list(last[255])


def test_block_rows_grow_with_the_trees_and_fit_the_l2_cache() -> None:
    mib, kib = 1 << 20, 1 << 10
    # 66 features: an Intel Xeon's 2 MiB L2 holds 8 192 rows, an AMD Zen 3's 512 KiB 2 048
    assert kernels._block_range(66, 2 * mib) == (8192, 65536)
    assert kernels._block_range(66, 512 * kib) == (2048, 16384)
    assert kernels._block_range(4, 2 * mib) == (kernels._BLOCK, kernels._BLOCK_MAX)  # few features
    assert kernels._block_range(5000, 512 * kib) == (kernels._BLOCK_MIN, 8 * kernels._BLOCK_MIN)
    assert kernels._block_rows(100 * 50, 50, 66, 2 * mib) == 8192  # shallow trees: columns stay in L2
    assert kernels._block_rows(3443 * 50, 50, 66, 2 * mib) == 32768  # 8 rows per node, rounded up to 2**k
    assert kernels._block_rows(8600 * 100, 100, 66, 2 * mib) == 65536
    assert kernels._block_rows(8600 * 100, 100, 66, 512 * kib) == 16384
    assert kernels._block_rows(10**9, 1, 66, 512 * kib) == 16384
    assert kernels._block_rows(0, 0, 66, 512 * kib) == 2048
    assert kernels._l2_bytes() >= 64 * kib  # read from this machine (or the default)


@pytest.mark.parametrize("step", ["auto", "avx512", "avx2", "0"])
def test_deep_forest_on_noisy_rows_uses_large_blocks_and_equals_sklearn(
    step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LCSTACK_SIMD", step)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(6000, 5)).astype(np.float32)
    X[rng.random(X.shape) < 0.02] = np.nan  # missing values take their learnt side
    y = (np.nan_to_num(X[:, 0]) > 0).astype(int) + rng.integers(0, 3, 6000)  # noisy labels: deep trees
    est = RandomForestClassifier(n_estimators=6, random_state=0).fit(X, y)
    ff = FastForest.from_estimator(est)
    assert ff.shape == "deep" and ff._block > kernels._block_range(5)[0]  # thousands of nodes per tree
    probe = rng.normal(size=(2 * ff._block + 999, 5)).astype(np.float32)
    probe[rng.random(probe.shape) < 0.02] = np.nan
    expected = est.predict(probe)
    np.testing.assert_array_equal(ff.predict(probe), expected)
    np.testing.assert_array_equal(ff.predict(probe, n_threads=2), expected)
    assert np.array_equal(ff.predict_proba(probe), est.predict_proba(probe))


def test_calibration_picks_a_valid_step_per_forest_shape_measured_once_per_cpu(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "steps.json"
    monkeypatch.setattr(engine, "_calibration_path", lambda: str(path))
    monkeypatch.setattr(engine, "_calibrated", {})
    monkeypatch.delenv("LCSTACK_SIMD", raising=False)
    widths = {shape: engine.calibrated_width(shape) for shape in engine.SHAPES}
    for shape, width in widths.items():
        assert width in _simd.available_widths() and engine.simd_width(shape) == width
    with pytest.raises(InvalidInputError, match="forest shape 'wide' is not one of shallow, deep"):
        engine.calibrated_width("wide")
    if len(_simd.available_widths()) == 1:
        assert not path.exists()  # nothing to choose: no measurement
        return
    entry = json.loads(path.read_text())[engine._cpu_key()]
    assert entry["width"] == widths
    for shape, relative in entry["relative"].items():
        assert set(relative) == set(entry["seconds"][shape]) == {str(w) for w in _simd.available_widths()}
        # the chosen step is within the margin of the fastest
        margin = 1 + engine._CALIBRATION_MARGIN
        assert relative[str(widths[shape])] <= min(relative.values()) * margin + 1e-3
    # a new process (an empty in-process table) reads the file instead of measuring again
    monkeypatch.setattr(engine, "_calibrated", {})
    monkeypatch.setattr(engine, "_measure_steps", lambda *a: pytest.fail("measured again"))
    assert {shape: engine.calibrated_width(shape) for shape in engine.SHAPES} == widths
    # an entry of an older layout (one width for every shape) is measured again, not misread
    path.write_text(json.dumps({engine._cpu_key(): {"width": 8, "seconds": {}}}))
    monkeypatch.setattr(engine, "_calibrated", {})
    monkeypatch.setattr(engine, "_measure_steps", lambda w: {s: {x: [1.0] for x in w} for s in engine.SHAPES})
    assert engine.calibrated_width("shallow") == max(_simd.available_widths())


def test_calibration_compares_the_steps_within_each_round() -> None:
    # the scalar loop's best single run is the fastest, but the AVX2 step wins 4 of the 5 rounds
    seconds = {0: [0.9, 1.0, 1.0, 1.0, 1.0], 8: [1.2, 0.8, 0.8, 0.8, 0.8]}
    width, relative = engine._choose_width(seconds)
    assert width == 8 and relative == {0: 1.25, 8: 1.0}
    # within the margin the wider step is kept
    assert engine._choose_width({0: [1.0, 1.0], 8: [1.03, 1.03]})[0] == 8
    assert engine._choose_width({0: [1.0, 1.0], 8: [1.2, 1.2]})[0] == 0


def test_forests_run_with_the_step_calibrated_for_their_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LCSTACK_SIMD", raising=False)
    shallow, _ = engine._synthetic_forest(shape="shallow")
    deep, _ = engine._synthetic_forest(shape="deep")
    assert (shallow.shape, deep.shape) == ("shallow", "deep")
    assert shallow._block == kernels._block_range(64)[0] < deep._block
    key = engine._cpu_key()
    monkeypatch.setattr(engine, "_calibrated", {key: {"shallow": 0, "deep": max(_simd.available_widths())}})
    if len(_simd.available_widths()) > 1:
        assert engine.simd_width(shallow.shape) == 0
    assert engine.simd_width(deep.shape) == max(_simd.available_widths())


def test_calibration_uses_the_scalar_loop_where_numba_targets_a_generic_cpu() -> None:
    import os
    import subprocess
    import sys

    code = (
        "from lcstack.forest import _simd, engine; "
        "print(_simd.available_widths(), engine.simd_width(), engine.calibrated_width())"
    )
    env = {**os.environ, "NUMBA_CPU_NAME": "generic", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("LCSTACK_SIMD", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["(0,)", "0", "0"]


@pytest.mark.parametrize("shape", ["shallow", "deep"])
def test_forcing_each_step_gives_identical_predictions(shape: str) -> None:
    forest, rows = engine._synthetic_forest(shape=shape)
    rows = rows[:, :20000]
    rows[:, ::7] = np.nan  # NaN takes its side in every step
    results = [
        forest._run(rows, 1, want, feature_major=True, simd=w)
        for w in _simd.available_widths()
        for want in (False, True)
    ]
    scalar_idx, scalar_proba = results[0][0], results[1][1]
    for idx, proba, _ in results:
        np.testing.assert_array_equal(idx, scalar_idx)
        if proba.size:
            np.testing.assert_array_equal(proba, scalar_proba)
    assert np.array_equal(scalar_proba.argmax(axis=1), scalar_idx)
