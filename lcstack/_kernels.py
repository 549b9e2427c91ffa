"""NumPy kernels behind the dask/xarray layer (compositing and terrain).

The median kernel must give exactly what :func:`numpy.nanmedian` gives, bit for
bit on float32: for an even number of valid values NumPy averages the two middle
values in the input precision, ``(a + b) / 2`` in float32. Both kernels here do
the same (bottleneck keeps the input dtype; the numba kernel uses float32
arithmetic), and the tests check equality including all-NaN pixels.

Bottleneck was as fast as the numba insertion-sort kernel or faster, both far
faster than ``np.nanmedian`` (figures: benchmarks/RESULTS.md), and it needs no
JIT compilation, so it is the default; the numba kernel is kept as
``method="numba"`` for comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

__all__ = ["nanmedian_time", "horn_slope_aspect", "masked_median_dn"]

_numba_kernel: Any = None
_dn_kernel: Any = None


def _get_numba_kernel() -> Any:
    global _numba_kernel
    if _numba_kernel is None:
        import numba

        @numba.njit(nogil=True, cache=True)
        def _kernel(a: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
            t, n = a.shape
            out = np.empty(n, a.dtype)
            buf = np.empty(t, a.dtype)
            two = a.dtype.type(2)
            for j in range(n):
                k = 0
                for i in range(t):
                    v = a[i, j]
                    if v == v:
                        # insertion sort: the time axis is short (tens of scenes)
                        p = k
                        while p > 0 and buf[p - 1] > v:
                            buf[p] = buf[p - 1]
                            p -= 1
                        buf[p] = v
                        k += 1
                if k == 0:
                    out[j] = np.nan
                elif k % 2 == 1:
                    out[j] = buf[k // 2]
                else:
                    out[j] = (buf[k // 2 - 1] + buf[k // 2]) / two
            return out

        _numba_kernel = _kernel
    return _numba_kernel


def nanmedian_time(
    a: np.ndarray, *, method: Literal["bottleneck", "numba", "numpy"] = "bottleneck"
) -> np.ndarray:
    """Median over axis 0 ignoring NaN; NaN where every value is NaN (no warning).

    Parameters
    ----------
    a : numpy.ndarray
        Floating array, time first (``(time, ...)``).
    method : {"bottleneck", "numba", "numpy"}
        Implementation; all three return identical values.

    Returns
    -------
    numpy.ndarray
        ``a.shape[1:]``, same dtype as ``a``.

    """
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    if a.shape[0] == 0:
        return np.full(a.shape[1:], np.nan, dtype=a.dtype)
    if method == "bottleneck":
        import bottleneck as bn

        return np.asarray(bn.nanmedian(a, axis=0), dtype=a.dtype)
    if method == "numba":
        flat = np.ascontiguousarray(a.reshape(a.shape[0], -1))
        return _get_numba_kernel()(flat).reshape(a.shape[1:])
    if method == "numpy":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.asarray(np.nanmedian(a, axis=0), dtype=a.dtype)
    raise ValueError(f"method must be 'bottleneck', 'numba' or 'numpy', not {method!r}")


def _get_dn_kernel() -> Any:
    global _dn_kernel
    if _dn_kernel is None:
        import numba

        @numba.njit(nogil=True, cache=True)
        def _kernel(dn, invalid, scale, offset, out):  # type: ignore[no-untyped-def]  # pragma: no cover
            # row by row, every loop over x: the valid mask, the reflectance (+inf where not valid), an
            # odd-even transposition sort of the time axis (min/max, vectorised) and the middle values
            nb = len(dn)
            t, ny, nx = dn[0].shape
            last = out.shape[0] - 1
            ok = np.empty((t, nx), np.bool_)
            count = np.empty(nx, np.int64)
            buf = np.empty((t, nx), np.float32)
            inf = np.float32(np.inf)
            two = np.float32(2)
            for y in range(ny):
                count[:] = 0
                for i in range(t):
                    for x in range(nx):
                        ok[i, x] = not invalid[i, y, x]
                    for b in range(nb):
                        row = dn[b][i, y]
                        for x in range(nx):
                            ok[i, x] = ok[i, x] and row[x] != 0
                    for x in range(nx):
                        count[x] += ok[i, x]
                for x in range(nx):
                    out[last, y, x] = min(count[x], 255)
                for b in range(nb):
                    for i in range(t):
                        s, o = scale[b, i], offset[b, i]
                        row = dn[b][i, y]
                        for x in range(nx):
                            # float32 multiply, then float32 add: what NumPy does (no fused multiply-add)
                            v = np.float32(row[x]) * s + o
                            buf[i, x] = v if ok[i, x] else inf
                    for r in range(t):
                        for i in range(r % 2, t - 1, 2):
                            for x in range(nx):
                                lo, hi = buf[i, x], buf[i + 1, x]
                                buf[i, x] = lo if lo < hi else hi
                                buf[i + 1, x] = hi if lo < hi else lo
                    for x in range(nx):
                        k = count[x]
                        if k == 0:
                            out[b, y, x] = np.nan
                        else:
                            # odd k: (m + m) / 2 == m exactly; even k: NumPy's mean of the middle two
                            out[b, y, x] = (buf[(k - 1) // 2, x] + buf[k // 2, x]) / two

        _dn_kernel = _kernel
    return _dn_kernel


def masked_median_dn(
    dn: Sequence[np.ndarray],
    invalid: np.ndarray | None,
    scale: np.ndarray,
    offset: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Median reflectance of every band over the valid observations, from the on-disk integers, in one pass.

    The values of ``median_composite(to_reflectance(...), invalid)``, bit for bit: an observation is valid
    where ``invalid`` is False and no band is 0 (nodata); reflectance is ``float32(DN) * scale + offset``
    in float32; the median of an even count averages the two middle values in float32.

    Parameters
    ----------
    dn : sequence of numpy.ndarray
        One ``(time, y, x)`` array per band, all of one integer type and shape, 0 = nodata.
    invalid : numpy.ndarray, optional
        ``(time, y, x)`` bool, True = masked (cloud mask); None: nothing masked.
    scale, offset : numpy.ndarray
        ``(band, time)`` float32.
    out : numpy.ndarray, optional
        float32 ``(layers, y, x)`` with ``layers > band`` to write into (C-contiguous): the medians go to
        its first layers, the count to its last; the layers between are left as they are.

    Returns
    -------
    numpy.ndarray
        ``(band + 1, y, x)`` float32 (or ``out``): the median of each band (NaN without a valid
        observation), then the number of valid observations (saturating at 255).

    """
    arrays = tuple(np.ascontiguousarray(a) for a in dn)
    t, ny, nx = arrays[0].shape
    if any(a.shape != arrays[0].shape or a.dtype != arrays[0].dtype for a in arrays):
        raise ValueError("masked_median_dn: the bands differ in shape or type")
    if invalid is None:
        invalid = np.zeros((t, ny, nx), dtype=bool)
    if out is None:
        out = np.empty((len(arrays) + 1, ny, nx), dtype=np.float32)
    if out.shape[1:] != (ny, nx) or out.shape[0] < len(arrays) + 1 or out.dtype != np.float32:
        raise ValueError(f"masked_median_dn: out must be float32 (>= {len(arrays) + 1}, {ny}, {nx})")
    _get_dn_kernel()(
        arrays,
        invalid.astype(bool, copy=False),
        np.ascontiguousarray(scale, dtype=np.float32),
        np.ascontiguousarray(offset, dtype=np.float32),
        out,
    )
    return out


#: Aspect of flat ground (no downhill direction).
FLAT_ASPECT = -1.0


def horn_slope_aspect(padded: np.ndarray, dx: float, dy: float) -> tuple[np.ndarray, np.ndarray]:
    """Slope and aspect (degrees) with Horn's 3x3 method on an array padded by one pixel.

    Parameters
    ----------
    padded : numpy.ndarray
        ``(..., ny + 2, nx + 2)`` elevation, row 0 to the north (``y`` descending).
    dx, dy : float
        Pixel width and height in the units of the elevation (metres), positive.

    Returns
    -------
    slope, aspect : numpy.ndarray
        ``(..., ny, nx)`` float32. Slope in degrees from horizontal. Aspect is the
        compass direction the slope faces (downhill), degrees clockwise from north
        in ``[0, 360)``; -1 where the surface is flat (a defined value, so that flat
        pixels keep their features for classification, unlike gdaldem's nodata).

    """
    z = np.asarray(padded, dtype=np.float64)
    a = z[..., :-2, :-2]
    b = z[..., :-2, 1:-1]
    c = z[..., :-2, 2:]
    d = z[..., 1:-1, :-2]
    f = z[..., 1:-1, 2:]
    g = z[..., 2:, :-2]
    h = z[..., 2:, 1:-1]
    i = z[..., 2:, 2:]
    dz_east = ((c + 2 * f + i) - (a + 2 * d + g)) / (8.0 * dx)
    dz_north = ((a + 2 * b + c) - (g + 2 * h + i)) / (8.0 * dy)
    slope = np.degrees(np.arctan(np.hypot(dz_east, dz_north)))
    # downhill direction is (-dz_east, -dz_north); bearing = atan2(east, north)
    aspect = np.degrees(np.arctan2(-dz_east, -dz_north)) % 360.0
    aspect32 = aspect.astype(np.float32)
    # values a hair below 360 round up to 360.0 in float32
    aspect32[aspect32 >= 360.0] = 0.0
    aspect32[(dz_east == 0) & (dz_north == 0)] = FLAT_ASPECT
    return slope.astype(np.float32), aspect32
