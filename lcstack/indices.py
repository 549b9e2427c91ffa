"""Spectral indices on canonical Sentinel-2 band names.

Every index is a pure NumPy formula on float reflectance (``[0, 1]``), applied
element-wise, so it works on NumPy- or dask-backed variables of any dims.
Division by zero (and any other non-finite result) gives NaN, never ``inf``.

Formulas (canonical band = Sentinel-2 band):

=========  =============================================  ==========================
name       formula                                        bands
=========  =============================================  ==========================
ndvi       (nir - red) / (nir + red)                      B08, B04
evi2       2.5 (nir - red) / (nir + 2.4 red + 1)          B08, B04
mndwi      (green - swir16) / (green + swir16)            B03, B11
ndre       (nir08 - rededge1) / (nir08 + rededge1)        B8A, B05
osavi      (nir - red) / (nir + red + 0.16)               B08, B04
cri1       1 / blue - 1 / green                           B02, B03
ri         (red - green) / (red + green)                  B04, B03
ndyi       (green - blue) / (green + blue)                B03, B02
moisture   (nir08 - swir16) / (nir08 + swir16)            B8A, B11
=========  =============================================  ==========================

Notes on the LandCoverPy heritage: ``ri`` (redness index) is LandCoverPy's
``(B04 - B03) / (B04 + B03)``, the normalised red/green difference, not the
soil redness index ``R^2 / (B G^3)``. ``ndyi`` follows Sulik & Long (2016),
``(green - blue) / (green + blue)``; LandCoverPy's documentation writes the
opposite sign ``(B02 - B03) / (B02 + B03)``. ``ndre`` uses B8A and B05 (both
20 m) rather than LandCoverPy's 60 m B09/B05 pair.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from lcstack.errors import InvalidInputError

__all__ = [
    "IndexSpec",
    "INDICES",
    "DEFAULT_INDICES",
    "compute_indices",
    "compute_indices_array",
    "index_arrays",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexSpec:
    """A spectral index: its canonical input bands and a NumPy formula.

    Attributes
    ----------
    name : str
        Index name (the ``band`` label in composites).
    bands : tuple of str
        Canonical band names, in the order ``func`` takes them.
    func : callable
        ``func(*arrays) -> array``; called with float arrays.
    formula : str
        Human-readable formula.

    """

    name: str
    bands: tuple[str, ...]
    func: Callable[..., np.ndarray]
    formula: str


def _nd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a - b) / (a + b)


INDICES: dict[str, IndexSpec] = {
    spec.name: spec
    for spec in (
        IndexSpec("ndvi", ("nir", "red"), _nd, "(nir - red) / (nir + red)"),
        IndexSpec(
            "evi2",
            ("nir", "red"),
            lambda nir, red: 2.5 * (nir - red) / (nir + 2.4 * red + 1.0),
            "2.5 * (nir - red) / (nir + 2.4 * red + 1)",
        ),
        IndexSpec("mndwi", ("green", "swir16"), _nd, "(green - swir16) / (green + swir16)"),
        IndexSpec("ndre", ("nir08", "rededge1"), _nd, "(nir08 - rededge1) / (nir08 + rededge1)"),
        IndexSpec(
            "osavi",
            ("nir", "red"),
            lambda nir, red: (nir - red) / (nir + red + 0.16),
            "(nir - red) / (nir + red + 0.16)",
        ),
        IndexSpec(
            "cri1", ("blue", "green"), lambda blue, green: 1.0 / blue - 1.0 / green, "1/blue - 1/green"
        ),
        IndexSpec("ri", ("red", "green"), _nd, "(red - green) / (red + green)"),
        IndexSpec("ndyi", ("green", "blue"), _nd, "(green - blue) / (green + blue)"),
        IndexSpec("moisture", ("nir08", "swir16"), _nd, "(nir08 - swir16) / (nir08 + swir16)"),
    )
}

DEFAULT_INDICES: tuple[str, ...] = (
    "ndvi",
    "evi2",
    "mndwi",
    "ndre",
    "osavi",
    "cri1",
    "ri",
    "ndyi",
    "moisture",
)


def _finite_float32(func: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def wrapped(*arrays: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            out = np.asarray(func(*arrays), dtype=np.float32)
        out[~np.isfinite(out)] = np.nan
        return out

    return wrapped


def _resolve_names(names: Sequence[str] | None) -> tuple[str, ...]:
    if names is None:
        return DEFAULT_INDICES
    if isinstance(names, str):
        names = (names,)
    unknown = [n for n in names if n not in INDICES]
    if unknown:
        raise InvalidInputError(
            f"unknown index name(s) {unknown}; choose from {sorted(INDICES)} (argument 'names')"
        )
    return tuple(names)


def compute_indices(ds: xr.Dataset, names: Sequence[str] | None = None) -> xr.Dataset:
    """Compute spectral indices from band variables.

    Parameters
    ----------
    ds : xarray.Dataset
        One variable per canonical band (float reflectance), any dims, NumPy or dask.
    names : sequence of str, optional
        Index names (keys of :data:`INDICES`); default :data:`DEFAULT_INDICES`.
        An index whose bands are absent from ``ds`` is skipped with a logged warning.

    Returns
    -------
    xarray.Dataset
        One float32 variable per computed index, same dims and coords as the bands;
        lazy when the input is.

    """
    out: dict[str, xr.DataArray] = {}
    for name in _resolve_names(names):
        spec = INDICES[name]
        missing = [b for b in spec.bands if b not in ds.data_vars]
        if missing:
            logger.warning("skipping index %r: band(s) %s not in the dataset", name, missing)
            continue
        args = xr.broadcast(*(ds[b] for b in spec.bands))
        da = xr.apply_ufunc(
            _finite_float32(spec.func),
            *args,
            dask="parallelized",
            output_dtypes=[np.float32],
            keep_attrs=False,
        )
        da.attrs = {"long_name": name, "formula": spec.formula}
        out[name] = da.rename(name)
    return xr.Dataset(out, attrs=dict(ds.attrs))


def index_arrays(bands: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Compute the indices ``names`` from NumPy band arrays: name -> float32 array.

    The formulas and the NaN-for-non-finite rule of :func:`compute_indices`, without xarray; every index
    must have its bands in ``bands``.
    """
    return {n: _finite_float32(INDICES[n].func)(*(bands[b] for b in INDICES[n].bands)) for n in names}


def compute_indices_array(
    da: xr.DataArray, names: Sequence[str] | None = None, *, dim: str = "band"
) -> xr.DataArray:
    """Compute indices from a DataArray whose ``dim`` coordinate holds band names.

    Parameters
    ----------
    da : xarray.DataArray
        Reflectance with a ``dim`` dimension labelled by canonical band names.
    names : sequence of str, optional
        Index names; default :data:`DEFAULT_INDICES` (those with missing bands skipped).
    dim : str
        Name of the band dimension.

    Returns
    -------
    xarray.DataArray
        float32, ``dim`` labelled by index names, other dims as in ``da``.

    """
    if dim not in da.dims:
        raise InvalidInputError(f"DataArray has no {dim!r} dimension (dims {da.dims}); pass dim=")
    ds = da.to_dataset(dim=dim)
    result = compute_indices(ds, names)
    if not result.data_vars:
        raise InvalidInputError(
            f"no index could be computed from bands {list(ds.data_vars)}; indices need {_needs(names)}"
        )
    return result.to_dataarray(dim=dim).astype(np.float32)


def _needs(names: Sequence[str] | None) -> dict[str, tuple[str, ...]]:
    return {n: INDICES[n].bands for n in _resolve_names(names)}
