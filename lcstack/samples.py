"""Training samples: feature values at labelled points, and their Parquet storage."""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import odc.geo.xr  # noqa: F401  (registers the .odc accessor extract_samples reads the grid from)
import pandas as pd
import xarray as xr
from pyproj import Transformer

from lcstack.errors import InputFileNotFoundError, InvalidInputError, SkippedPointsWarning

__all__ = [
    "SampleTable",
    "cap_polygon_samples",
    "extract_samples",
    "write_samples",
    "read_samples",
    "SAMPLE_COLUMNS",
]

logger = logging.getLogger(__name__)

#: Columns a sample table carries after the feature columns.
SAMPLE_COLUMNS = (
    "category",
    "subcategory",
    "category_name",
    "subcategory_name",
    "latitude",
    "longitude",
    "line",
    "polygon",
)
_FIRST = 5  # line numbers quoted in messages


@dataclass
class SampleTable:
    """Samples extracted from a feature cube.

    Attributes
    ----------
    table : DataFrame
        One row per kept point: one float32 column per feature (cube order), then ``category`` and
        ``subcategory`` codes (int; subcategory 1 where a point has none), ``category_name``,
        ``subcategory_name`` (missing where none), ``latitude``, ``longitude``, ``line`` (line in the
        points file, or feature number) and ``polygon`` (the feature number of the polygon a pixel was
        sampled from, -1 for a point; splits keep one polygon's pixels together).
    skipped_outside : list of int
        Line numbers of points outside the cube.
    skipped_nodata : list of int
        Line numbers of points on a pixel that no season observed (every seasonal feature NaN).

    """

    table: pd.DataFrame
    skipped_outside: list[int] = field(default_factory=list)
    skipped_nodata: list[int] = field(default_factory=list)

    @property
    def feature_names(self) -> list[str]:
        """Feature columns, in cube order."""
        return [c for c in self.table.columns if c not in SAMPLE_COLUMNS]


def _first(lines: Any) -> str:
    lines = list(lines)
    return ", ".join(str(v) for v in lines[:_FIRST]) + (", ..." if len(lines) > _FIRST else "")


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _lookup(
    values: pd.Series, lines: np.ndarray, labels: Mapping[str, int], what: str, hint: str, *, optional: bool
) -> tuple[np.ndarray, list[Any]]:
    """Map label names (or codes already in ``labels``) to codes; missing -> 1 when ``optional``."""
    by_name = {str(k).strip(): int(v) for k, v in labels.items()}
    by_code = {v: k for k, v in by_name.items()}
    codes = np.empty(len(values), dtype=np.int64)
    names: list[Any] = []
    unknown: list[tuple[int, Any]] = []
    for i, value in enumerate(values.tolist()):
        if _is_missing(value):
            if not optional:
                unknown.append((int(lines[i]), value))
                names.append(None)
                codes[i] = 0
                continue
            codes[i], _ = 1, names.append(None)
            continue
        key = str(value).strip()
        if key in by_name:
            codes[i] = by_name[key]
            names.append(key)
            continue
        number = None
        if isinstance(value, int | float | np.integer | np.floating) and float(value).is_integer():
            number = int(value)
        if number is not None and number in by_code:
            codes[i] = number
            names.append(by_code[number])
            continue
        unknown.append((int(lines[i]), value))
        names.append(None)
        codes[i] = 0
    if unknown:
        detail = "; ".join(f"line {line}: {value!r}" for line, value in unknown[:_FIRST])
        more = f" and {len(unknown) - _FIRST} more" if len(unknown) > _FIRST else ""
        raise InvalidInputError(
            f"{len(unknown)} point(s) have a {what} that is not in the label map ({detail}{more}). "
            f"Add the {what} to {hint} or fix the points file. Known: {sorted(by_name)}."
        )
    return codes, names


def _names(values: list[Any]) -> pd.Series:
    # the string dtype a Parquet round trip gives back (pandas >= 3: "str", missing = NaN)
    series = pd.Series(values, dtype=object)
    return series.astype("str") if int(pd.__version__.split(".")[0]) >= 3 else series


def _line_numbers(points: pd.DataFrame) -> np.ndarray:
    if "line" in points.columns:
        return pd.to_numeric(points["line"], errors="raise").to_numpy(dtype=np.int64)
    if pd.api.types.is_integer_dtype(points.index):
        return points.index.to_numpy(dtype=np.int64) + 2  # header is line 1
    return np.arange(len(points), dtype=np.int64) + 2


def extract_samples(
    features: xr.DataArray,
    points: pd.DataFrame,
    *,
    lc_labels: Mapping[str, int],
    sl_labels: Mapping[str, int] | None = None,
    check_empty: bool = True,
    points_per_polygon: int | None = None,
    owns: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> SampleTable:
    """Read the feature values under labelled points and inside labelled polygons.

    Each point takes the pixel that contains it (the nearest pixel centre). A polygon (a row with a shapely
    ``geometry``, :func:`lcstack.inputs.read_vector_points`) takes every pixel of the cube whose centre it
    contains (the pixel under its inner point if none), or a seeded random subset of
    ``points_per_polygon`` of them. Only the pixels sampled are computed; a dask-backed cube is gathered
    chunk by chunk.

    Parameters
    ----------
    features : DataArray
        Feature cube, dims ``("feature", "y", "x")`` on a GeoBox (``spatial_ref`` coordinate with a CRS).
    points : DataFrame
        Columns ``latitude``, ``longitude`` (WGS84 degrees), ``category`` and optionally ``subcategory``
        (names from the label files, or codes; NaN/None/empty where a point has none) and ``line`` (1-based
        line in the source CSV; ``index + 2`` when absent).
    lc_labels : dict[str, int]
        Category name to code (``lc_labels.json``).
    sl_labels : dict[str, int], optional
        Subcategory name to code (``sl_labels.json``); needed when points carry subcategories.
    check_empty : bool, default True
        Raise when a category of the points keeps no sample. Pass ``False`` when extracting tile by tile and
        checking the merged table instead.
    points_per_polygon : int, optional
        At most this many pixels per polygon (drawn with a seed of the polygon's feature number, so the
        same pixels for the same cube); all when ``None``.
    owns : callable, optional
        ``owns(lon, lat) -> bool array``: which polygon pixels this cube samples (the tile that owns them
        where tiles overlap), applied before ``points_per_polygon``.

    Returns
    -------
    SampleTable
        The samples, and the line numbers of points left out.

    Warns
    -----
    SkippedPointsWarning
        When points or polygons fall outside the cube or on nodata (no season with a valid observation).

    Raises
    ------
    InvalidInputError
        A column or label is missing or unknown, a coordinate is invalid, the cube has no CRS, or a category
        loses all its points.

    """
    geobox, feature_names = _check_cube_and_points(features, points)
    lines = _line_numbers(points)
    cat_codes, cat_names = _lookup(
        points["category"], lines, lc_labels, "category", "lc_labels.json", optional=False
    )
    sub_codes, sub_names = _subcategories(points, lines, sl_labels)

    lat = pd.to_numeric(points["latitude"], errors="coerce").to_numpy(dtype=np.float64)
    lon = pd.to_numeric(points["longitude"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180))
    if bad.any():
        raise InvalidInputError(
            f"extract_samples: invalid latitude/longitude on line(s) {_first(lines[bad])}; coordinates "
            "must be WGS84 degrees (latitude within ±90, longitude within ±180)."
        )

    inside, src, rows, cols, plat, plon, group = _sampled_pixels(
        features, points, lines, lon, lat, points_per_polygon, owns
    )

    values = np.empty((0, len(feature_names)), dtype=np.float32)
    if src.size:
        y_dim, x_dim = geobox.dimensions
        picked = features.isel(
            {y_dim: xr.DataArray(rows, dims="point"), x_dim: xr.DataArray(cols, dims="point")}
        )
        values = np.asarray(picked.transpose("point", "feature").compute().values, dtype=np.float32)
    # a pixel that some season observed keeps its NaN features (the trees learn where they go)
    from lcstack.classify import feature_seasons, valid_seasons_block

    seen = valid_seasons_block(values.T[:, :, None], feature_seasons(feature_names))[:, 0] > 0
    valid = seen & ~np.isinf(values).any(axis=1)
    keep = src[valid]
    outside_lines = lines[~inside].tolist()
    nodata_lines = sorted(set(lines[src[~valid]].tolist()) - set(lines[keep].tolist()))

    table = pd.DataFrame(values[valid], columns=feature_names)
    table["category"] = cat_codes[keep].astype(np.int32)
    table["subcategory"] = sub_codes[keep].astype(np.int32)
    table["category_name"] = _names([cat_names[i] for i in keep])
    table["subcategory_name"] = _names([sub_names[i] for i in keep])
    table["latitude"] = plat[valid]
    table["longitude"] = plon[valid]
    table["line"] = lines[keep]
    table["polygon"] = group[valid]

    _warn_skipped(outside_lines, nodata_lines, len(points))
    kept_codes = set(cat_codes[keep].tolist())
    lost = [c for c in dict.fromkeys(cat_codes.tolist()) if c not in kept_codes] if check_empty else []
    if lost:
        _raise_lost(lost, cat_codes, inside, lines, lc_labels)
    logger.info("extracted %d samples, %d features", len(table), len(feature_names))
    return SampleTable(table=table, skipped_outside=outside_lines, skipped_nodata=nodata_lines)


def _subcategories(
    points: pd.DataFrame, lines: np.ndarray, sl_labels: Mapping[str, int] | None
) -> tuple[np.ndarray, list[Any]]:
    """Return the subcategory code (1 where none) and name of every point."""
    if "subcategory" not in points.columns:
        return np.ones(len(points), dtype=np.int64), [None] * len(points)
    sub_values = points["subcategory"]
    has_sub = ~sub_values.map(_is_missing).to_numpy(dtype=bool)
    if sl_labels is None and has_sub.any():
        raise InvalidInputError(
            f"extract_samples: points have subcategories (e.g. line {lines[has_sub][0]}) but no "
            "sl_labels were given; pass sl_labels (sl_labels.json) or drop the subcategory column."
        )
    return _lookup(sub_values, lines, sl_labels or {}, "subcategory", "sl_labels.json", optional=True)


def _sampled_pixels(
    features: xr.DataArray,
    points: pd.DataFrame,
    lines: np.ndarray,
    lon: np.ndarray,
    lat: np.ndarray,
    points_per_polygon: int | None,
    owns: Callable[[np.ndarray, np.ndarray], np.ndarray] | None,
) -> tuple[np.ndarray, ...]:
    """Return which rows are inside, and per sampled pixel: source row, row/col, lat, lon, polygon id."""
    geoms = _polygons(points)
    row, col, inside = _point_pixels(features, lon, lat)
    inside &= geoms == None  # noqa: E711 - object array of shapely geometries
    src = np.flatnonzero(inside)
    rows, cols = row[src].astype(np.int64), col[src].astype(np.int64)
    plat, plon, group = lat[src], lon[src], np.full(src.size, -1, dtype=np.int64)
    if (geoms != None).any():  # noqa: E711
        extra = _polygon_samples(features, geoms, lines, lon, lat, points_per_polygon, owns)
        src, rows, cols = (np.concatenate([a, b]) for a, b in zip((src, rows, cols), extra[:3], strict=True))
        plat, plon, group = (
            np.concatenate([a, b]) for a, b in zip((plat, plon, group), extra[3:], strict=True)
        )
        inside[extra[0]] = True
    return inside, src, rows, cols, plat, plon, group


def _check_cube_and_points(features: Any, points: pd.DataFrame) -> tuple[Any, list[str]]:
    """Return the cube's GeoBox and feature names, after checking the cube and the points' columns."""
    if not isinstance(features, xr.DataArray) or not {"feature", "y", "x"} <= set(features.dims):
        raise InvalidInputError(
            "extract_samples: features must be a DataArray with dims ('feature', 'y', 'x') "
            "(lcstack.features.stack_features builds one)."
        )
    geobox = features.odc.geobox
    if geobox is None or features.odc.crs is None:
        raise InvalidInputError(
            "extract_samples: the feature cube has no CRS/regular grid (spatial_ref coordinate); build it "
            "with lcstack.features.stack_features or assign one with odc.geo."
        )
    missing_cols = [c for c in ("latitude", "longitude", "category") if c not in points.columns]
    if missing_cols:
        raise InvalidInputError(
            f"extract_samples: points lack column(s) {missing_cols}; the points file needs latitude, "
            "longitude, category and optionally subcategory."
        )
    feature_names = [str(f) for f in features["feature"].values]
    clash = sorted(set(feature_names) & set(SAMPLE_COLUMNS))
    if clash:
        raise InvalidInputError(f"extract_samples: feature names {clash} clash with sample table columns.")
    return geobox, feature_names


def _warn_skipped(outside_lines: list[int], nodata_lines: list[int], n_points: int) -> None:
    """Warn (for the caller of :func:`extract_samples`) about points left out."""
    if not (outside_lines or nodata_lines):
        return
    parts = []
    if outside_lines:
        parts.append(f"{len(outside_lines)} outside the feature cube (lines {_first(outside_lines)})")
    if nodata_lines:
        parts.append(f"{len(nodata_lines)} on nodata pixels (lines {_first(nodata_lines)})")
    warnings.warn(
        f"{len(outside_lines) + len(nodata_lines)} of {n_points} points/polygons left out: "
        + "; ".join(parts),
        SkippedPointsWarning,
        stacklevel=3,
    )


def _raise_lost(
    lost: list[int],
    cat_codes: np.ndarray,
    inside: np.ndarray,
    lines: np.ndarray,
    lc_labels: Mapping[str, int],
) -> None:
    """Raise for the categories that kept no sample, with how many points fell outside or on nodata."""
    name_of = {int(v): str(k) for k, v in lc_labels.items()}
    details = []
    for code in lost:
        of_cat = cat_codes == code
        n_out = int((of_cat & ~inside).sum())
        n_nodata = int(of_cat.sum()) - n_out
        details.append(
            f"{name_of.get(code, code)!r} (code {code}): {n_out} point(s) outside the cube, "
            f"{n_nodata} on nodata (lines {_first(lines[of_cat])})"
        )
    raise InvalidInputError(
        "extract_samples: no samples left for categor"
        + ("y " if len(lost) == 1 else "ies ")
        + "; ".join(details)
        + ". Add points inside the area with valid data, or drop the category "
        "from the points file."
    )


def _polygons(points: pd.DataFrame) -> np.ndarray:
    """Return the shapely polygon of every row (``None`` for a point) from an optional ``geometry`` column."""
    if "geometry" not in points.columns:
        return np.full(len(points), None, dtype=object)
    geoms = np.array(points["geometry"].to_numpy(), dtype=object)
    geoms[pd.isna(points["geometry"]).to_numpy()] = None
    return geoms


def _point_pixels(features: xr.DataArray, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, ...]:
    """Row, column (float) of the pixel containing each point, and whether it is inside the cube."""
    geobox = features.odc.geobox
    to_cube = Transformer.from_crs("EPSG:4326", features.odc.crs.proj, always_xy=True)
    xs, ys = (np.asarray(a) for a in to_cube.transform(lon, lat))
    inv = ~geobox.affine
    col = np.floor(inv.a * xs + inv.b * ys + inv.c)
    row = np.floor(inv.d * xs + inv.e * ys + inv.f)
    ny, nx = geobox.shape.y, geobox.shape.x
    inside = np.isfinite(col) & np.isfinite(row) & (col >= 0) & (col < nx) & (row >= 0) & (row < ny)
    return row, col, inside


def _pixels_in(geom: Any, geobox: Any) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the pixels of ``geobox`` whose centre lies in ``geom`` (in the cube's CRS)."""
    from affine import Affine
    from rasterio.features import geometry_mask

    x0, y0, x1, y1 = geom.bounds
    inv = ~geobox.affine
    cs, rs = inv * (np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1]))
    ny, nx = geobox.shape.y, geobox.shape.x
    c0, c1 = max(int(np.floor(cs.min())), 0), min(int(np.ceil(cs.max())), nx)
    r0, r1 = max(int(np.floor(rs.min())), 0), min(int(np.ceil(rs.max())), ny)
    if c1 <= c0 or r1 <= r0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    window = geobox.affine * Affine.translation(c0, r0)
    mask = geometry_mask([geom], out_shape=(r1 - r0, c1 - c0), transform=window, invert=True)
    rr, cc = np.nonzero(mask)
    return rr.astype(np.int64) + r0, cc.astype(np.int64) + c0


def _polygon_samples(
    features: xr.DataArray,
    geoms: np.ndarray,
    lines: np.ndarray,
    lon: np.ndarray,
    lat: np.ndarray,
    per_polygon: int | None,
    owns: Callable[[np.ndarray, np.ndarray], np.ndarray] | None,
) -> tuple[np.ndarray, ...]:
    """Source row, pixel row/column, pixel-centre lat/lon and polygon id of every polygon pixel sampled."""
    import shapely

    geobox = features.odc.geobox
    crs = features.odc.crs.proj
    to_cube = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    to_wgs = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    anchor_row, anchor_col, anchor_in = _point_pixels(features, lon, lat)
    parts: list[tuple[np.ndarray, ...]] = []
    for i in np.flatnonzero(geoms != None):  # noqa: E711
        geom = shapely.transform(geoms[i], lambda xy: np.column_stack(to_cube.transform(xy[:, 0], xy[:, 1])))
        rr, cc = _pixels_in(geom, geobox)
        if rr.size == 0 and anchor_in[i]:  # smaller than a pixel: the pixel under its inner point
            rr, cc = anchor_row[i : i + 1].astype(np.int64), anchor_col[i : i + 1].astype(np.int64)
        x, y = geobox.affine * (cc + 0.5, rr + 0.5)
        plon, plat = (np.asarray(a, dtype=np.float64) for a in to_wgs.transform(x, y))
        if owns is not None and rr.size:
            mine = np.asarray(owns(plon, plat), dtype=bool)
            rr, cc, plon, plat = rr[mine], cc[mine], plon[mine], plat[mine]
        if per_polygon is not None and rr.size > per_polygon:
            pick = np.sort(np.random.default_rng([int(lines[i])]).choice(rr.size, per_polygon, replace=False))
            rr, cc, plon, plat = rr[pick], cc[pick], plon[pick], plat[pick]
        parts.append(
            (np.full(rr.size, i, np.int64), rr, cc, plat, plon, np.full(rr.size, lines[i], np.int64))
        )
    if not parts:
        return tuple(np.empty(0, t) for t in (np.int64,) * 3 + (np.float64,) * 2 + (np.int64,))
    return tuple(np.concatenate(c) for c in zip(*parts, strict=True))


def cap_polygon_samples(table: pd.DataFrame, per_polygon: int) -> pd.DataFrame:
    """Keep at most ``per_polygon`` rows of each polygon in a merged table (seeded by the polygon id).

    A polygon over several tiles is capped per tile by :func:`extract_samples`; this caps its whole.
    """
    polygon = table["polygon"].to_numpy()
    keep = polygon < 0
    for pid in np.unique(polygon[~keep]):
        rows = np.flatnonzero(polygon == pid)
        if rows.size > per_polygon:
            rows = np.random.default_rng([int(pid)]).choice(rows, per_polygon, replace=False)
        keep[rows] = True
    return table[keep].reset_index(drop=True)


def write_samples(
    table: SampleTable | pd.DataFrame,
    url: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write a sample table as Parquet (atomically for local paths).

    Parameters
    ----------
    table : SampleTable or DataFrame
        Samples from :func:`extract_samples`.
    url : str or PathLike
        Local path or fsspec URL of the ``.parquet`` file.
    storage_options : dict, optional
        fsspec options for ``url``.

    """
    from lcstack.store import Storage

    df = table.table if isinstance(table, SampleTable) else table
    buffer = io.BytesIO()
    df.to_parquet(buffer, engine="pyarrow", index=False)
    Storage.for_url(url, storage_options).write_bytes(os.fspath(url), buffer.getvalue())


def read_samples(
    url: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """Read a sample table written by :func:`write_samples`.

    Parameters
    ----------
    url : str or PathLike
        Local path or fsspec URL.
    storage_options : dict, optional
        fsspec options for ``url``.

    Returns
    -------
    DataFrame
        The sample table.

    Raises
    ------
    InputFileNotFoundError
        No file at ``url``.

    """
    from lcstack.store import Storage

    store = Storage.for_url(url, storage_options)
    if not store.exists(os.fspath(url)):
        raise InputFileNotFoundError(
            f"no sample table at {url}; run the sample extraction (train step) first."
        )
    return pd.read_parquet(io.BytesIO(store.read_bytes(os.fspath(url))), engine="pyarrow")
