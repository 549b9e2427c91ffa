"""Post-classification smoothing of class probabilities and class maps, and a minimum mapping unit.

Every function takes and returns lazy xarray objects and works chunk by chunk with
:func:`dask.array.map_overlap`: each chunk is processed with a halo as wide as the window, and every
output pixel is computed from its own window in a fixed order of operations, so a chunked result equals
the whole-array result bit for bit (no seams at chunk or tile borders). Nodata pixels (0 in a class map,
NaN or all-zero probabilities) stay nodata and are left out of their neighbours' windows; the edges of
the array are treated like nodata.

* :func:`bayes_smooth`: Bayesian smoothing of probabilities in logit space, after sits' ``sits_smooth``
  (Camara et al.).
* :func:`gaussian_smooth`: a normalised Gaussian filter of the probabilities.
* :func:`majority_filter`: the most frequent class in a window of a class map.
* :func:`sieve`: a minimum mapping unit with :func:`rasterio.features.sieve`.
* :func:`proba_classes`, :func:`smooth_classes`, :func:`smooth_maps`: class = argmax, and the whole
  post-processing chain of a run (``smoothing:`` in the run config, :class:`lcstack.config.SmoothingConfig`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage

from .errors import InvalidInputError

if TYPE_CHECKING:
    from .config import SmoothingConfig

__all__ = [
    "window_pixels",
    "bayes_smooth",
    "gaussian_smooth",
    "proba_classes",
    "majority_filter",
    "sieve",
    "smooth_classes",
    "smooth_halo",
    "smooth_maps",
]

logger = logging.getLogger(__name__)

#: Probabilities are clipped to ``[_EPS, 1 - _EPS]`` before their logit is taken.
_EPS = 1e-6
NODATA = 0
UNCLASSIFIED = 1


# ----------------------------------------------------------------------------------------- helpers
def window_pixels(window_m: float, resolution: float) -> int:
    """Side of a square window, in pixels, for a window given in metres: odd, at least 3.

    The window is the largest odd number of pixels that fits in ``window_m`` (at 10 m: 70 m gives 7
    pixels, 60 m gives 5), and at least 3.

    Raises
    ------
    InvalidInputError
        ``window_m`` or ``resolution`` is not a positive number.

    """
    if not (window_m > 0 and resolution > 0 and math.isfinite(window_m) and math.isfinite(resolution)):
        raise InvalidInputError(
            f"smoothing: window_m ({window_m}) and the resolution ({resolution}) must be positive numbers "
            "of metres."
        )
    n = int(window_m / resolution + 1e-9)
    return max(3, n if n % 2 else n - 1)


def _resolution(obj: xr.DataArray, resolution: float | None) -> float:
    if resolution is not None:
        return float(resolution)
    x = obj.coords.get("x")
    if x is None or x.size < 2:
        raise InvalidInputError(
            "smoothing: cannot tell the pixel size from the `x` coordinate; pass `resolution=` (metres)."
        )
    return float(abs(x.values[1] - x.values[0]))


def _box(values: np.ndarray, half: int) -> np.ndarray:
    """Sum over a ``(2 half + 1)²`` window of the last two axes, zeros beyond the edges.

    Two passes of :func:`scipy.ndimage.correlate1d`: every output is summed from its own window in a
    fixed order, so the result of a pixel does not depend on where the array starts.
    """
    ones = np.ones(2 * half + 1, dtype=values.dtype)
    out = ndimage.correlate1d(values, ones, axis=-2, mode="constant", cval=0.0)
    return ndimage.correlate1d(out, ones, axis=-1, mode="constant", cval=0.0)


def _separable(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    out = ndimage.correlate1d(values, weights, axis=-2, mode="constant", cval=0.0)
    return ndimage.correlate1d(out, weights, axis=-1, mode="constant", cval=0.0)


def _normalised(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities summing to 1 (float64, 0 at nodata) and the valid-pixel mask of a (class, y, x) block.

    Percent (uint8) and fractions both work; a pixel is nodata where a class is NaN or all are 0. An
    integer 0 stands for "below half a unit": it becomes 0.5 units, not a probability of 0, whose logit
    would swamp the window's variance.
    """
    p = block.astype(np.float64)
    finite = np.isfinite(p).all(axis=0)
    p[:, ~finite] = 0.0
    total = p.sum(axis=0)
    valid = finite & (total > 0)
    if np.issubdtype(block.dtype, np.integer):
        p = np.where(valid, np.maximum(p, 0.5), 0.0)
        total = p.sum(axis=0)
    p /= np.where(valid, total, 1.0)
    return p, valid


def _proba_array(proba: xr.DataArray) -> xr.DataArray:
    if not isinstance(proba, xr.DataArray) or set(proba.dims) != {"class", "y", "x"}:
        dims = getattr(proba, "dims", type(proba).__name__)
        raise InvalidInputError(
            f"smoothing: `proba` must be a DataArray with dims (class, y, x), got {dims}."
        )
    proba = proba.transpose("class", "y", "x")
    nodata = proba.attrs.get("nodata")
    if np.issubdtype(proba.dtype, np.integer) and nodata is not None and int(nodata) != 0:
        # a stored layer (lcstack.classify, uint8 percent, 255 = nodata): nodata becomes all-zero
        proba = proba.where(proba != int(nodata), 0).astype(proba.dtype)
    if proba.chunks is None:
        return proba.chunk({"class": -1, "y": -1, "x": -1})
    return proba.chunk({"class": -1})


def _overlap(
    obj: xr.DataArray, func: Callable[..., np.ndarray], halo: int, dtype: Any, **kwargs: Any
) -> xr.DataArray:
    """Apply ``func`` to every chunk of ``obj`` with a halo of ``halo`` pixels in y and x (lazy)."""
    data = obj.data if obj.chunks is not None else da.from_array(obj.values, chunks=-1)
    spatial = {obj.ndim - 2: halo, obj.ndim - 1: halo}
    depth = {i: spatial.get(i, 0) for i in range(obj.ndim)}
    out = da.map_overlap(
        func,
        data,
        depth=depth,
        boundary="none",
        dtype=dtype,
        meta=np.empty((0,) * obj.ndim, dtype=dtype),
        **kwargs,
    )
    return xr.DataArray(out, dims=obj.dims, coords=obj.coords, attrs=dict(obj.attrs), name=obj.name)


# ----------------------------------------------------------------------------- probability smoothers
def _bayes_block(block: np.ndarray, *, half: int, smoothness: np.ndarray) -> np.ndarray:
    p, valid = _normalised(block)
    p = np.clip(p, _EPS, 1.0 - _EPS)
    logit = np.log(p) - np.log1p(-p)
    logit[:, ~valid] = 0.0
    n = _box(valid.astype(np.float64), half)
    s1 = _box(logit, half)
    s2 = _box(logit * logit, half)
    mean = s1 / np.maximum(n, 1.0)
    var = np.maximum(s2 - s1 * mean, 0.0) / np.maximum(n - 1.0, 1.0)  # sample variance, as R's var()
    # A pixel with no valid neighbour keeps its own value (its window has no variance estimate).
    weight = np.where(n > 1, var / (var + smoothness[:, None, None]), 1.0)
    post = weight * logit + (1.0 - weight) * mean
    out = 1.0 / (1.0 + np.exp(-post))
    out /= out.sum(axis=0)
    out[:, ~valid] = np.nan
    return out.astype(np.float32)


def bayes_smooth(
    proba: xr.DataArray,
    *,
    window_m: float = 70.0,
    resolution: float | None = None,
    smoothness: float | Sequence[float] = 20.0,
) -> xr.DataArray:
    """Bayesian neighbourhood smoothing of class probabilities, after sits' ``sits_smooth``.

    For every class and pixel, the logit ``x = log(p / (1 - p))`` of the pixel's probability is combined
    with the mean ``m`` and sample variance ``s²`` of the logits of the valid pixels in the window around
    it (the pixel itself included), read as a normal prior: the posterior logit is
    ``w x + (1 - w) m`` with ``w = s² / (s² + smoothness)``, where ``smoothness`` is the expected variance
    of a class's logit (sits' ``smoothness``). Where the neighbourhood agrees (small ``s²``) an outlying
    pixel is pulled towards its neighbours; at a real boundary (large ``s²``) the pixel keeps its own
    value. The posterior logits are mapped back to probabilities and normalised to sum to 1; the class is
    their argmax (:func:`proba_classes`).

    This follows the Bayesian smoother of the sits R package (``sits_smooth``; Camara et al., *Satellite
    Image Time Series Analysis on Earth Observation Data Cubes*, https://e-sensing.github.io/sitsbook/,
    chapter "Bayesian smoothing for post-processing"; C++ kernel ``bayes_smoother_fraction`` in
    e-sensing/sits) with ``neigh_fraction = 1``: every valid neighbour enters the prior (sits can keep
    only the highest fraction of them). Unlike sits, nodata pixels stay nodata instead of being filled
    with the prior mean, and pixels beyond the array edges count as nodata (sits mirrors the edges).

    Parameters
    ----------
    proba : xarray.DataArray
        Class probabilities, dims ``(class, y, x)``, as fractions or percent (each pixel is normalised to
        sum to 1); a pixel with a NaN or with all probabilities 0 is nodata, and so is, in an integer
        array, the value of its ``nodata`` attribute (255 in ``level1_proba`` of
        :func:`lcstack.classify.classify`). Dask-backed arrays keep their
        y/x chunks; the class axis becomes one chunk.
    window_m : float, default 70
        Side of the square window in metres (:func:`window_pixels`: 7 pixels at 10 m).
    resolution : float, optional
        Pixel size in metres; read from the ``x`` coordinate when not given.
    smoothness : float or sequence of float, default 20
        Prior variance of the logits, one value or one per class (sits' default 20, range 1-200); a
        larger value smooths more.

    Returns
    -------
    xarray.DataArray
        Smoothed probabilities (float32, summing to 1, NaN at nodata), lazy, with ``proba``'s chunks.

    """
    proba = _proba_array(proba)
    half = window_pixels(window_m, _resolution(proba, resolution)) // 2
    s = np.broadcast_to(np.asarray(smoothness, dtype=np.float64), (proba.sizes["class"],)).copy()
    if not np.all(s > 0):
        raise InvalidInputError(
            f"bayes_smooth: `smoothness` must be > 0 (one value or one per class), got {smoothness}."
        )
    out = _overlap(proba, _bayes_block, half, np.float32, half=half, smoothness=s)
    out.attrs.update(smoothing="bayes", window_pixels=2 * half + 1, smoothness=s.tolist())
    return out


def _gaussian_block(block: np.ndarray, *, weights: np.ndarray) -> np.ndarray:
    p, valid = _normalised(block)
    norm = _separable(valid.astype(np.float64), weights)
    out = _separable(p, weights) / np.where(norm > 0, norm, 1.0)
    out[:, ~valid] = np.nan
    return out.astype(np.float32)


def gaussian_smooth(
    proba: xr.DataArray,
    *,
    window_m: float = 70.0,
    resolution: float | None = None,
    sigma_m: float | None = None,
) -> xr.DataArray:
    """Smooth class probabilities with a normalised Gaussian filter (a window in metres).

    Each smoothed probability is the Gaussian-weighted mean of the valid pixels' probabilities in the
    window (weights renormalised over the valid pixels, so nodata neither bleeds in nor darkens the
    edges).

    Parameters
    ----------
    proba : xarray.DataArray
        Class probabilities, dims ``(class, y, x)`` (see :func:`bayes_smooth`).
    window_m : float, default 70
        Side of the window in metres (:func:`window_pixels`); the filter is cut off at its edge.
    resolution : float, optional
        Pixel size in metres; read from the ``x`` coordinate when not given.
    sigma_m : float, optional
        Standard deviation of the Gaussian in metres; default a sixth of the window, so the window spans
        ± 3 sigma.

    Returns
    -------
    xarray.DataArray
        Smoothed probabilities (float32, NaN at nodata), lazy, with ``proba``'s chunks.

    """
    proba = _proba_array(proba)
    res = _resolution(proba, resolution)
    n = window_pixels(window_m, res)
    half = n // 2
    sigma = (sigma_m / res) if sigma_m is not None else n / 6.0
    if not sigma > 0:
        raise InvalidInputError(f"gaussian_smooth: `sigma_m` must be > 0, got {sigma_m}.")
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    out = _overlap(proba, _gaussian_block, half, np.float32, weights=weights / weights.sum())
    out.attrs.update(smoothing="gaussian", window_pixels=n, sigma_pixels=sigma)
    return out


def _argmax_block(block: np.ndarray, *, codes: np.ndarray) -> np.ndarray:
    p = block.astype(np.float64)
    valid = np.isfinite(p).all(axis=0) & (np.nan_to_num(p).sum(axis=0) > 0)
    best = codes[np.argmax(np.nan_to_num(p, nan=-1.0), axis=0)]
    return np.where(valid, best, NODATA).astype(np.uint8)


def proba_classes(proba: xr.DataArray, classes: Sequence[int] | None = None) -> xr.DataArray:
    """Class map of the most probable class (uint8 codes, 0 where the probabilities are nodata).

    ``classes`` gives the class code of every layer along ``class`` (default: the ``class`` coordinate,
    which must then hold integer codes). Ties go to the first layer.
    """
    proba = _proba_array(proba)
    codes = _class_codes(proba, classes)
    data = proba.data.map_blocks(
        _argmax_block, codes=codes, drop_axis=0, dtype=np.uint8, meta=np.empty((0, 0), np.uint8)
    )
    coords = {k: v for k, v in proba.coords.items() if "class" not in v.dims}
    return xr.DataArray(data, dims=("y", "x"), coords=coords, name="level1")


def _class_codes(proba: xr.DataArray, classes: Sequence[int] | None) -> np.ndarray:
    raw = classes if classes is not None else proba.coords.get("class", xr.DataArray([])).values
    try:
        codes = np.asarray(raw).astype(np.int64)
    except (TypeError, ValueError):
        codes = np.empty(0, np.int64)
    if codes.shape != (proba.sizes["class"],) or np.any((codes < 1) | (codes > 255)):
        raise InvalidInputError(
            f"smoothing: need one class code in 1..255 for each of the {proba.sizes['class']} probability "
            f"layers (`classes=`, or an integer `class` coordinate), got {list(np.asarray(raw).tolist())}."
        )
    return codes.astype(np.uint8)


# ------------------------------------------------------------------------------------ class maps
def _class_map(classes: xr.DataArray) -> xr.DataArray:
    if not isinstance(classes, xr.DataArray) or classes.dims != ("y", "x"):
        dims = getattr(classes, "dims", type(classes).__name__)
        raise InvalidInputError(f"smoothing: a class map must be a DataArray with dims (y, x), got {dims}.")
    if classes.dtype != np.uint8:
        raise InvalidInputError(f"smoothing: a class map holds uint8 codes, got {classes.dtype}.")
    return classes


def _majority_block(block: np.ndarray, *, half: int) -> np.ndarray:
    codes = np.unique(block)
    codes = codes[codes != NODATA]
    if codes.size == 0:
        return block.copy()
    counts = _box(np.stack([block == c for c in codes]).astype(np.float32), half)
    best = codes[np.argmax(counts, axis=0)]  # ties: the lowest code...
    own = np.take_along_axis(counts, np.searchsorted(codes, block)[None].clip(0, codes.size - 1), 0)[0]
    keep = own >= counts.max(axis=0)  # ...unless the pixel's own class is among the most frequent
    out = np.where(keep, block, best)
    return np.where(block == NODATA, NODATA, out).astype(np.uint8)


def majority_filter(
    classes: xr.DataArray, *, window_m: float = 30.0, resolution: float | None = None
) -> xr.DataArray:
    """Replace every pixel's class by the most frequent class of the valid pixels in its window.

    Ties keep the pixel's own class when it is among the most frequent, else the lowest code. Nodata
    (0) stays 0 and does not count.

    Parameters
    ----------
    classes : xarray.DataArray
        Class map, uint8 codes, dims ``(y, x)``, 0 = nodata.
    window_m : float, default 30
        Side of the window in metres (:func:`window_pixels`: 3 pixels at 10 m).
    resolution : float, optional
        Pixel size in metres; read from the ``x`` coordinate when not given.

    Returns
    -------
    xarray.DataArray
        The filtered map (uint8), lazy, with the chunks of ``classes``.

    """
    classes = _class_map(classes)
    half = window_pixels(window_m, _resolution(classes, resolution)) // 2
    return _overlap(classes, _majority_block, half, np.uint8, half=half)


def _sieve_block(block: np.ndarray, *, size: int, connectivity: int) -> np.ndarray:
    from rasterio.features import sieve as rio_sieve

    if not (block != NODATA).any():
        return block.copy()
    out = rio_sieve(np.ascontiguousarray(block), size, mask=block != NODATA, connectivity=connectivity)
    return np.where(block == NODATA, NODATA, out).astype(np.uint8)


def sieve(
    classes: xr.DataArray,
    *,
    min_pixels: int | None = None,
    min_area_m2: float | None = None,
    resolution: float | None = None,
    connectivity: int = 8,
    depth: int | None = None,
) -> xr.DataArray:
    """Apply a minimum mapping unit: patches smaller than it take the class of their largest neighbour.

    :func:`rasterio.features.sieve` (GDAL's sieve filter) on every chunk with a halo of ``depth``
    pixels. Nodata (0) is masked: it is never sieved and never grows into a patch; a small patch
    surrounded only by nodata stays.

    Parameters
    ----------
    classes : xarray.DataArray
        Class map, uint8 codes, dims ``(y, x)``, 0 = nodata.
    min_pixels : int, optional
        The smallest patch kept, in pixels.
    min_area_m2 : float, optional
        The same in square metres (rounded up to whole pixels); give one of the two.
    resolution : float, optional
        Pixel size in metres for ``min_area_m2``; read from the ``x`` coordinate when not given.
    connectivity : {4, 8}, default 8
        Which neighbours make a patch.
    depth : int, optional
        Sieve chunk by chunk with a halo of this many pixels (at least ``min_pixels - 1``; see Notes).
        By default the map is sieved as one block, which is exact: a class map is one byte per pixel
        (16 MiB for a 4096² tile), and GDAL's filter is fast.

    Returns
    -------
    xarray.DataArray
        The sieved map (uint8), lazy, with the chunks of ``classes``.

    Notes
    -----
    GDAL's filter gives a patch smaller than ``min_pixels`` the class of its largest neighbouring patch,
    and where that neighbour is small too, follows the chain of such remappings to a large patch; a
    small patch with no chain to a large one stays. Neither the chain nor the neighbours' sizes are
    bounded in extent, so no finite halo makes a chunked sieve equal to the whole-array sieve in
    general, and the default sieves the whole map at once. With ``depth >= min_pixels - 1`` the chunked
    sieve is exact where every small patch touches a single class of large patches (isolated
    speckle in homogeneous areas, the common case): such a patch spans fewer than ``min_pixels`` rows and
    columns, so it lies, with the border it touches, inside the halo of any chunk it reaches, and a patch
    cut by the halo's edge reaches at least ``depth + 1`` pixels from the chunk, so it is seen as large,
    as it is in the whole array. Elsewhere a removed patch may take another neighbour's class.

    """
    classes = _class_map(classes)
    if (min_pixels is None) == (min_area_m2 is None):
        raise InvalidInputError("sieve: give one of `min_pixels` or `min_area_m2`.")
    if min_pixels is None:
        res = _resolution(classes, resolution)
        if not (min_area_m2 is not None and min_area_m2 > 0):
            raise InvalidInputError(f"sieve: `min_area_m2` must be > 0, got {min_area_m2}.")
        min_pixels = math.ceil(min_area_m2 / res**2 - 1e-9)
    if min_pixels < 1 or connectivity not in (4, 8):
        raise InvalidInputError(
            f"sieve: `min_pixels` must be >= 1 (got {min_pixels}) and `connectivity` 4 or 8 "
            f"(got {connectivity})."
        )
    if min_pixels == 1:
        return classes
    kwargs = {"size": int(min_pixels), "connectivity": connectivity}
    if depth is None:
        chunks = classes.chunks
        whole = classes.chunk({"y": -1, "x": -1}) if chunks is not None else classes
        out = _overlap(whole, _sieve_block, 0, np.uint8, **kwargs)
        return out.chunk(dict(zip(classes.dims, chunks, strict=True))) if chunks is not None else out
    if depth < min_pixels - 1:
        raise InvalidInputError(
            f"sieve: `depth` must be at least min_pixels - 1 = {min_pixels - 1}, got {depth}."
        )
    return _overlap(classes, _sieve_block, int(depth), np.uint8, **kwargs)


# ------------------------------------------------------------------------------------ a run's chain
#: The window of every method when ``window_m`` is not given (metres).
DEFAULT_WINDOW_M = {"bayes": 70.0, "gaussian": 70.0, "majority": 30.0}


def smooth_classes(
    proba: xr.DataArray,
    classes: Sequence[int] | None = None,
    *,
    config: SmoothingConfig,
    resolution: float | None = None,
) -> xr.DataArray:
    """Smoothed class map from class probabilities, as ``smoothing:`` in the run config asks.

    ``bayes`` (:func:`bayes_smooth`) and ``gaussian`` (:func:`gaussian_smooth`) smooth the probabilities,
    then class = argmax (:func:`proba_classes`); ``majority`` takes the argmax first and filters the
    class map (:func:`majority_filter`). With ``min_mapping_unit_m2``, :func:`sieve` follows.

    Parameters
    ----------
    proba : xarray.DataArray
        Class probabilities, dims ``(class, y, x)``.
    classes : sequence of int, optional
        The class code of every probability layer (default: the ``class`` coordinate).
    config : lcstack.config.SmoothingConfig
        Method, window (metres), smoothness and minimum mapping unit.
    resolution : float, optional
        Pixel size in metres; read from the ``x`` coordinate when not given.

    Returns
    -------
    xarray.DataArray
        uint8 class codes, dims ``(y, x)``, 0 = nodata, lazy.

    """
    window = config.window_m or DEFAULT_WINDOW_M[config.method]
    if config.method == "majority":
        out = majority_filter(proba_classes(proba, classes), window_m=window, resolution=resolution)
    else:
        if config.method == "bayes":
            smoothed = bayes_smooth(
                proba, window_m=window, resolution=resolution, smoothness=config.smoothness
            )
        else:
            smoothed = gaussian_smooth(proba, window_m=window, resolution=resolution)
        out = proba_classes(smoothed, classes)
    return _mmu(out, config, resolution)


def _mmu(classes: xr.DataArray, config: SmoothingConfig, resolution: float | None) -> xr.DataArray:
    if config.min_mapping_unit_m2 is None:
        return classes
    return sieve(classes, min_area_m2=config.min_mapping_unit_m2, resolution=resolution)


def smooth_halo(config: SmoothingConfig, resolution: float) -> int:
    """Pixels of context a map needs on every side for :func:`smooth_maps` to be exact at its edges."""
    half = window_pixels(config.window_m or DEFAULT_WINDOW_M[config.method], resolution) // 2
    if config.min_mapping_unit_m2 is None:
        return half
    return half + math.ceil(config.min_mapping_unit_m2 / resolution**2 - 1e-9)


def smooth_maps(
    maps: xr.Dataset,
    config: SmoothingConfig,
    *,
    proba: xr.DataArray | None = None,
    classes: Sequence[int] | None = None,
    resolution: float | None = None,
) -> xr.Dataset:
    """Post-process a run's maps (:func:`lcstack.classify.classify`): ``level1`` becomes the smoothed map.

    What a user who turns smoothing on gets as *the* map (``level1.tif``, the mosaic, the STAC items,
    ``lcstack assess``) is the smoothed one; the classifier's own level-1 map is kept beside it as
    ``level1_raw`` (Zarr only). Level 2 is a subcategory of the level-1 class it was predicted under, so
    where smoothing changed the level-1 class, ``level2`` becomes 1 (unclassified).

    Parameters
    ----------
    maps : xarray.Dataset
        ``level1`` and optionally ``level2`` (uint8, dims ``(y, x)``).
    config : lcstack.config.SmoothingConfig
        The run's ``smoothing:``.
    proba : xarray.DataArray, optional
        Level-1 class probabilities ``(class, y, x)``; needed by ``bayes`` and ``gaussian``
        (``maps["level1_proba"]`` by default, the layer of ``classify(probabilities=True)``).
        ``majority`` filters ``level1`` itself.
    classes : sequence of int, optional
        Class code of every probability layer (default: the ``class`` coordinate of ``proba``).
    resolution : float, optional
        Pixel size in metres; read from the ``x`` coordinate when not given.

    Returns
    -------
    xarray.Dataset
        ``maps`` with ``level1`` smoothed, ``level1_raw`` added and ``level2`` adjusted, lazy.

    Raises
    ------
    InvalidInputError
        ``bayes`` or ``gaussian`` without probabilities.

    """
    raw = maps["level1"]
    res = resolution if resolution is not None else _resolution(raw, None)
    if proba is None and "level1_proba" in maps:  # lcstack.classify.classify(probabilities=True)
        proba = maps["level1_proba"]
    if config.method == "majority":
        window = config.window_m or DEFAULT_WINDOW_M["majority"]
        new = _mmu(majority_filter(raw, window_m=window, resolution=res), config, res)
    elif proba is None:
        raise InvalidInputError(
            f"smoothing: method {config.method!r} works on class probabilities, and `maps` has no "
            "`level1_proba`: classify with `probabilities=True`, pass `proba=`, or use "
            "`smoothing: {method: majority}`."
        )
    else:
        new = smooth_classes(proba, classes, config=config, resolution=res)
    new = new.where(raw != NODATA, NODATA).astype(np.uint8)  # nodata stays nodata
    new.attrs = {**raw.attrs, "smoothing": config.method, "smoothing_window_m": config.window_m or 0.0}
    new.encoding = raw.encoding
    out = maps.copy()
    out["level1"] = new.rename("level1")
    out["level1_raw"] = raw.rename("level1_raw")
    out["level1_raw"].attrs["long_name"] = f"{raw.attrs.get('long_name', 'level 1')}, before smoothing"
    if "level2" in maps:
        level2 = maps["level2"]
        out["level2"] = level2.where(new == raw, UNCLASSIFIED).astype(np.uint8)
        out["level2"].attrs = level2.attrs
        out["level2"].encoding = level2.encoding
    return out
