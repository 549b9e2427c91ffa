"""The AVX-512 partition step does exactly what the scalar loop does, and deep forests get larger blocks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

numba = pytest.importorskip("numba")

from lcstack import _simd, fastpredict  # noqa: E402
from lcstack.fastpredict import FastForest  # noqa: E402

STEPS = [
    pytest.param(
        "partition16",
        marks=pytest.mark.skipif(not _simd.AVX512, reason="no AVX-512 here: partition16 is the scalar one"),
        id="avx512",
    ),
    pytest.param("partition16_scalar", id="scalar"),
]

_runners: dict[str, Any] = {}


def _runner(name: str) -> Any:
    """A compiled loop that partitions ``src[lo:hi]`` into ``dst[lo:hi]`` with ``name``, 16 rows a step."""
    if name not in _runners:
        step = getattr(_simd, name)

        @numba.njit
        def run(src, col, thr, nan_left, dst, lo, hi):  # pragma: no cover - compiled
            nl = np.uint64(lo)
            nr = np.uint64(hi - 1)
            i = np.uint64(lo)
            width = np.uint64(16)
            while i + width <= hi:
                n_left = step(src, i, col, thr, nan_left, dst, nl, nr)
                nl += n_left
                nr -= width - n_left
                i += width
            return nl

        _runners[name] = run
    return _runners[name]


def _column(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    col = rng.integers(0, 5, n).astype(np.float32)  # many values equal to the threshold
    col[rng.random(n) < 0.15] = np.nan
    return col


@pytest.mark.parametrize("name", STEPS)
@pytest.mark.parametrize("nan_left", [True, False])
@pytest.mark.parametrize("thr", [-1.0, 2.0, 4.0, 9.0])
def test_partition_step_splits_rows_like_sklearn_and_writes_only_its_segment(
    name: str, nan_left: bool, thr: float
) -> None:
    n_rows, lo, hi = 5000, 48, 48 + 16 * 37  # a segment in the middle of the buffer
    col = _column(int(thr * 10 + 20) + nan_left, n_rows)
    src = np.full(n_rows, 4_000_000_000, dtype=np.uint32)
    src[lo:hi] = np.random.default_rng(1).permutation(n_rows)[: hi - lo]
    dst = np.full(n_rows, 3_999_999_999, dtype=np.uint32)  # sentinels: nothing outside lo:hi changes
    nl = int(_runner(name)(src, col, np.float32(thr), nan_left, dst, lo, hi))

    x = col[src[lo:hi]]
    # scikit-learn: left when x <= thr; NaN where missing_go_to_left says
    goes_left = np.where(np.isnan(x), nan_left, x <= thr)
    assert nl - lo == goes_left.sum()
    assert sorted(dst[lo:nl]) == sorted(src[lo:hi][goes_left])
    assert sorted(dst[nl:hi]) == sorted(src[lo:hi][~goes_left])
    assert (dst[:lo] == 3_999_999_999).all() and (dst[hi:] == 3_999_999_999).all()


@pytest.mark.skipif(not _simd.AVX512, reason="no AVX-512 here: nothing to compare the scalar step with")
@pytest.mark.parametrize("nan_left", [True, False])
def test_avx512_step_writes_what_the_scalar_step_writes(nan_left: bool) -> None:
    rng = np.random.default_rng(7)
    col = _column(7, 20_000)
    src = rng.permutation(20_000).astype(np.uint32)
    out = []
    for name in ("partition16", "partition16_scalar"):
        dst = np.zeros_like(src)
        nl = _runner(name)(src, col, np.float32(2.0), nan_left, dst, 0, 16 * 1250)
        out.append((int(nl), dst))
    assert out[0][0] == out[1][0]
    np.testing.assert_array_equal(out[0][1], out[1][1])


def test_simd_switch_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LCSTACK_SIMD", "0")
    assert not _simd.simd_enabled()
    monkeypatch.setenv("LCSTACK_SIMD", "1")
    assert _simd.simd_enabled() == _simd.AVX512


def test_block_rows_grow_with_the_trees() -> None:
    minimum, maximum = fastpredict._BLOCK, fastpredict._BLOCK_MAX
    assert fastpredict._block_rows(100 * 50, 50) == minimum  # shallow trees: columns stay in L2
    assert fastpredict._block_rows(3443 * 50, 50) == 32768  # 8 rows per node, rounded up to 2**k
    assert fastpredict._block_rows(8600 * 100, 100) == maximum
    assert fastpredict._block_rows(10**9, 1) == maximum
    assert fastpredict._block_rows(0, 0) == minimum


@pytest.mark.parametrize("step", ["avx512", "scalar"])
def test_deep_forest_on_noisy_rows_uses_large_blocks_and_equals_sklearn(
    step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if step == "avx512" and not _simd.AVX512:
        pytest.skip("no AVX-512 here")
    monkeypatch.setenv("LCSTACK_SIMD", "1" if step == "avx512" else "0")
    rng = np.random.default_rng(3)
    X = rng.normal(size=(6000, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int) + rng.integers(0, 3, 6000)  # noisy labels: fully grown, deep trees
    est = RandomForestClassifier(n_estimators=6, random_state=0).fit(X, y)
    ff = FastForest.from_estimator(est)
    assert ff._block > fastpredict._BLOCK  # thousands of nodes per tree
    probe = rng.normal(size=(2 * ff._block + 999, 5)).astype(np.float32)
    expected = est.predict(probe)
    np.testing.assert_array_equal(ff.predict(probe), expected)
    np.testing.assert_array_equal(ff.predict(probe, n_threads=2), expected)
    assert np.array_equal(ff.predict_proba(probe), est.predict_proba(probe))
