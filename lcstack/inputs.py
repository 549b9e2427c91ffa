"""Readers and validators for the input files users of LandCoverPy already have.

* ``dataset.csv``: labelled points (``latitude``, ``longitude``, ``category``, optional ``subcategory``),
  ``;`` or ``,`` separated;
* ``seasons.json``: ``{"spring": {"start": "2021-03-01", "end": "2021-04-30"}, ...}`` or a list of dates
  per season;
* ``lc_labels.json``: level-1 class codes (``>= 1``; 0 is nodata);
* ``sl_labels.json``: level-2 class codes (``>= 2``; 0 is nodata, 1 is "unclassified");

The run configuration (YAML) that names them is :mod:`lcstack.config`.

Every reader validates once at the boundary and raises :class:`~lcstack.errors.InvalidInputError` (or
:class:`~lcstack.errors.InputFileNotFoundError`) with the file, the line or key, and what to do.
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import io
import json
import logging
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputFileNotFoundError, InputWarning, InvalidInputError, SkippedPointsWarning

__all__ = [
    "Season",
    "read_points",
    "read_vector_points",
    "read_seasons",
    "read_label_colors",
    "read_lc_labels",
    "read_sl_labels",
    "validate_points_labels",
]

logger = logging.getLogger(__name__)

_MAX_REPORTED = 10
#: Fewest labelled locations a category or subcategory needs: one to learn from, one to validate on.
MIN_POINTS_PER_CLASS = 2


def _problems(path: os.PathLike | str, problems: Sequence[str], hint: str) -> InvalidInputError:
    shown = list(problems[:_MAX_REPORTED])
    more = len(problems) - len(shown)
    text = "\n  - ".join(shown)
    tail = f"\n  ... and {more} more" if more > 0 else ""
    return InvalidInputError(f"{path}: {len(problems)} problem(s):\n  - {text}{tail}\n{hint}")


def _require_file(path: os.PathLike | str, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise InputFileNotFoundError(
            f"{what} file not found: {p}. Check the path (relative paths in a config file are resolved "
            "against the config file's folder)."
        )
    return p


def _read_text(path: Path) -> str:
    """Read a text input as UTF-8 (a byte-order mark is fine); name the first bad byte otherwise."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise InvalidInputError(
            f"{path}, line {line} (byte {err.start}, 0x{data[err.start]:02x}): not UTF-8 text. lcstack reads "
            "its input files as UTF-8; this one is probably latin-1 / Windows-1252. Convert it, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name}` and point the config at the "
            "new file, or save it from your editor or spreadsheet as 'UTF-8' ('CSV UTF-8')."
        ) from None


def _read_json(path: Path) -> tuple[Any, str]:
    """Parse a JSON input; return the data and the text (to quote line numbers)."""
    text = _read_text(path)
    try:
        return json.loads(text), text
    except json.JSONDecodeError as err:
        raise InvalidInputError(
            f"{path}, line {err.lineno}, column {err.colno}: not valid JSON ({err.msg}). "
            "Fix the syntax there."
        ) from None


def _json_key_line(text: str, key: str) -> int | None:
    """Line (1-based) where the object key ``key`` first appears in a JSON text, if found."""
    m = re.search(re.escape(json.dumps(key)) + r"\s*:", text)
    return text.count("\n", 0, m.start()) + 1 if m else None


def _at_line(text: str, key: str) -> str:
    line = _json_key_line(text, key)
    return f", line {line}" if line else ""


# --------------------------------------------------------------------------------------------- points
_POINT_COLUMNS = ("latitude", "longitude", "category")


def _sniff_separator(path: Path, header: str) -> str:
    counts = {sep: header.count(sep) for sep in (";", ",", "\t")}
    sep, n = max(counts.items(), key=lambda kv: kv[1])
    if n == 0:
        raise InvalidInputError(
            f"{path}, line 1: cannot find a column separator in the header {header.strip()!r}. "
            "Separate the columns latitude, longitude, category[, subcategory] with ';' or ','."
        )
    return sep


def read_points(path: os.PathLike | str) -> pd.DataFrame:
    """Read labelled points: a ``dataset.csv``, or a GeoJSON / GeoPackage / (Geo)Parquet file.

    A vector file (``.geojson``, ``.json``, ``.gpkg``, ``.shp``, ``.fgb``, ``.parquet``) is read by
    :func:`read_vector_points`: Point, Polygon and MultiPolygon features with the same properties.

    Parameters
    ----------
    path
        CSV file with the columns ``latitude``, ``longitude``, ``category`` and optionally
        ``subcategory`` (names are case-insensitive). The separator (``;``, ``,`` or tab) is detected.

    Returns
    -------
    pandas.DataFrame
        Columns ``latitude``, ``longitude`` (float64), ``category``, ``subcategory`` (str or ``None``) and
        ``line`` (the 1-based line number in the file, header = line 1), plus any extra columns as read.

    Raises
    ------
    InvalidInputError
        A column is missing, a coordinate is not a number or out of range, or a category is empty.

    """
    p = _require_file(path, "Points")
    if p.suffix.lower() in _VECTOR_SUFFIXES:
        return read_vector_points(p)
    text = _read_text(p)
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise InvalidInputError(
            f"{p}: the file is empty. It needs a header line 'latitude;longitude;category;subcategory' "
            "and one line per labelled point."
        )
    sep = _sniff_separator(p, lines[0])
    reader = csv.reader(io.StringIO(text), delimiter=sep)
    header = [h.strip() for h in next(reader)]
    lower = [h.lower() for h in header]
    missing = [c for c in _POINT_COLUMNS if c not in lower]
    if missing:
        raise InvalidInputError(
            f"{p}, line 1: missing column(s) {', '.join(missing)} (found: {', '.join(header)}; "
            f"separator {sep!r}). The header must name latitude, longitude, category and optionally "
            "subcategory."
        )
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for lineno, raw in enumerate(reader, start=2):
        if not raw or all(not c.strip() for c in raw):
            continue
        if len(raw) != len(header):
            problems.append(f"line {lineno}: {len(raw)} fields, the header has {len(header)}")
            continue
        rec = {lower[i]: raw[i].strip() for i in range(len(header))}
        row: dict[str, Any] = {"line": lineno}
        for name, lim in (("latitude", 90.0), ("longitude", 180.0)):
            try:
                value = float(rec[name])
            except ValueError:
                problems.append(f"line {lineno}, column {name}: {rec[name]!r} is not a number")
                continue
            if not math.isfinite(value) or abs(value) > lim:
                problems.append(
                    f"line {lineno}, column {name}: {rec[name]} is outside ±{lim:g} "
                    "(are latitude and longitude swapped, or is the point in projected coordinates?)"
                )
            row[name] = value
        if not rec["category"]:
            problems.append(f"line {lineno}, column category: empty")
        row["category"] = rec["category"]
        sub = rec.get("subcategory", "")
        row["subcategory"] = sub if sub and sub.lower() not in ("nan", "none", "null") else None
        for k, v in rec.items():
            if k not in row and k not in _POINT_COLUMNS and k != "subcategory":
                row[k] = v
        rows.append(row)
    if problems:
        raise _problems(p, problems, "Fix these lines and run again.")
    if not rows:
        raise InvalidInputError(f"{p}: no labelled points after the header. Add one point per line.")
    df = pd.DataFrame(rows)
    cols = ["latitude", "longitude", "category", "subcategory", "line"]
    df = df[cols + [c for c in df.columns if c not in cols]]
    sub = df["subcategory"].astype(object)
    df["subcategory"] = sub.where(sub.notna(), None)
    df = _drop_duplicates(df, p)
    logger.debug("read %d points from %s (separator %r)", len(df), p, sep)
    return df


_VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".fgb", ".parquet", ".geoparquet")
_POINTLIKE = ("Point",)
_AREAL = ("Polygon", "MultiPolygon")


def _vector_table(p: Path) -> tuple[pd.DataFrame, np.ndarray | None, Any]:
    """Attribute table, geometries (shapely, or None for a plain Parquet table) and CRS of a vector file."""
    import shapely

    if p.suffix.lower() in (".parquet", ".geoparquet"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise InvalidInputError(f"{p}: cannot read it as Parquet ({err}).") from None
        geo = json.loads((table.schema.metadata or {}).get(b"geo", b"null"))
        df = table.to_pandas()
        if not geo:
            return df, None, None
        column = geo.get("primary_column", "geometry")
        crs = geo.get("columns", {}).get(column, {}).get("crs", "OGC:CRS84")
        wkb = df.pop(column).to_numpy()
        return df, shapely.from_wkb(wkb), crs or "OGC:CRS84"
    import pyogrio

    try:
        meta, _, wkb, fields = pyogrio.raw.read(p)
    except Exception as err:  # noqa: BLE001 - GDAL errors come in several types
        raise InvalidInputError(f"{p}: cannot read it as a vector file ({err}).") from None
    df = pd.DataFrame({name: values for name, values in zip(meta["fields"], fields, strict=True)})
    return df, shapely.from_wkb(wkb), meta.get("crs") or "EPSG:4326"


def _feature(i: int, df: pd.DataFrame) -> str:
    ident = next((df[c].iloc[i] for c in ("id", "fid", "name") if c in df.columns), None)
    return f"feature {i + 1}" + (f" (id {ident!r})" if ident is not None and not _empty(ident) else "")


def _empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "none", "null")


def _label_values(p: Path, df: pd.DataFrame, column: str | None, problems: list[str]) -> list[Any]:
    values: list[Any] = []
    for i, value in enumerate(df[column].tolist() if column else [None] * len(df)):
        if _empty(value):
            values.append(None)
        elif isinstance(value, str):
            values.append(value.strip())
        else:
            problems.append(
                f"{_feature(i, df)}: property {column} is {value!r} ({type(value).__name__}); write the "
                "class name as in the label file"
            )
            values.append(None)
    return values


def read_vector_points(path: os.PathLike | str) -> pd.DataFrame:
    """Read labelled points and polygons from a GeoJSON, GeoPackage, Shapefile, FlatGeobuf or Parquet file.

    The properties follow the rules of ``dataset.csv``: ``category``, optionally ``subcategory`` (names
    case-insensitive). Point features give one sample each; Polygon and MultiPolygon features are sampled
    into their pixels when the samples are extracted (:func:`lcstack.samples.extract_samples`). A GeoParquet
    file carries its geometry; a plain Parquet table needs ``latitude`` and ``longitude`` columns. Geometries
    in another CRS are transformed to WGS 84.

    Returns
    -------
    pandas.DataFrame
        As :func:`read_points`; ``line`` is the feature's 1-based position in the file, ``latitude`` and
        ``longitude`` a point (inside the polygon for polygons), and a ``geometry`` column (shapely, WGS 84)
        holds the polygons (``None`` for points) when there are any.

    Raises
    ------
    InvalidInputError
        Naming the file and the feature: an unsupported or empty geometry, a missing or non-text
        ``category``, a non-text ``subcategory``.

    """
    import shapely
    from shapely.geometry.base import GEOMETRY_TYPES

    p = _require_file(path, "Points")
    df, geoms, crs = _vector_table(p)
    lower = {str(c).lower(): c for c in df.columns}
    if geoms is None:  # a plain Parquet table: the CSV rules on its columns
        missing = [c for c in _POINT_COLUMNS if c not in lower]
        if missing:
            raise InvalidInputError(
                f"{p}: missing column(s) {', '.join(missing)} (found: {', '.join(map(str, df.columns))}). "
                "A Parquet points table needs latitude, longitude, category (and optionally subcategory) "
                "columns, or a GeoParquet geometry column."
            )
        geoms = shapely.points(
            pd.to_numeric(df[lower["longitude"]], errors="coerce"),
            pd.to_numeric(df[lower["latitude"]], errors="coerce"),
        )
        crs = "EPSG:4326"
    if "category" not in lower:
        raise InvalidInputError(
            f"{p}: no 'category' property (found: {', '.join(map(str, df.columns)) or 'none'}). Every "
            "feature needs a category (and optionally a subcategory) as in dataset.csv."
        )
    problems: list[str] = []
    types = shapely.get_type_id(geoms)
    names = [GEOMETRY_TYPES[t] if t >= 0 else None for t in types]
    for i, (g, kind) in enumerate(zip(geoms, names, strict=True)):
        if kind not in _POINTLIKE + _AREAL:
            problems.append(
                f"{_feature(i, df)}: geometry {kind or 'missing'} is not supported; use Point, Polygon "
                "or MultiPolygon features"
            )
        elif shapely.is_empty(g) or (
            kind in _POINTLIKE and not np.isfinite(shapely.get_coordinates(g)).all()
        ):
            problems.append(f"{_feature(i, df)}: the {kind} geometry is empty or has no valid coordinates")
    categories = _label_values(p, df, lower["category"], problems)
    problems += [
        f"{_feature(i, df)}: property category is empty" for i, c in enumerate(categories) if c is None
    ]
    subs = _label_values(p, df, lower.get("subcategory"), problems)
    if problems:
        raise _problems(p, problems, "Fix these features and run again.")
    geoms = _to_wgs84(geoms, crs)
    areal = np.isin(np.asarray(names, dtype=object), _AREAL)
    anchor = np.where(areal, shapely.point_on_surface(geoms), geoms)
    out = pd.DataFrame(
        {
            "latitude": shapely.get_y(anchor).astype(np.float64),
            "longitude": shapely.get_x(anchor).astype(np.float64),
            "category": categories,
            "subcategory": pd.Series(subs, dtype=object),
            "line": np.arange(1, len(df) + 1),
        }
    )
    bad = ~((out["latitude"].abs() <= 90) & (out["longitude"].abs() <= 180))
    if bad.any():
        raise _problems(
            p, [f"{_feature(i, df)}: lies outside ±90°/±180° once in WGS 84" for i in np.flatnonzero(bad)],
            "Check the file's CRS.",
        )  # fmt: skip
    if areal.any():
        out["geometry"] = pd.Series(np.where(areal, geoms, None), dtype=object)
    else:
        out = _drop_duplicates(out, p)
    logger.debug("read %d features (%d polygons) from %s", len(out), int(areal.sum()), p)
    return out


def _to_wgs84(geoms: np.ndarray, crs: Any) -> np.ndarray:
    import shapely
    from pyproj import CRS, Transformer

    source = CRS.from_user_input(crs)
    target = CRS.from_epsg(4326)
    if source.equals(target, ignore_axis_order=True):
        return geoms
    tr = Transformer.from_crs(source, target, always_xy=True)
    return shapely.transform(geoms, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def _drop_duplicates(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Keep the first of rows repeating the same point and labels; warn naming the repeats."""
    key = ["latitude", "longitude", "category", "subcategory"]
    dup = df.duplicated(subset=key, keep="first")
    if not dup.any():
        return df
    first = df.drop_duplicates(subset=key, keep="first").set_index(key)["line"]
    pairs = [
        f"line {r.line} repeats line {first.loc[(r.latitude, r.longitude, r.category, r.subcategory)]}"
        for r in df[dup].head(_MAX_REPORTED).itertuples()
    ]
    more = ", ..." if int(dup.sum()) > _MAX_REPORTED else ""
    warnings.warn(
        f"{path}: {int(dup.sum())} duplicated row(s) (same coordinates and labels) counted once: "
        f"{', '.join(pairs)}{more}. Remove the repeats to silence this warning.",
        SkippedPointsWarning,
        stacklevel=3,
    )
    return df[~dup].reset_index(drop=True)


def _line_list(lines: pd.Series, shown: int = 5) -> str:
    values = [str(v) for v in lines.head(shown)]
    return ", ".join(values) + (", ..." if len(lines) > shown else "")


def _class_problems(points: pd.DataFrame, *, training: bool = True) -> list[str]:
    """Hierarchy and size problems: a subcategory under two categories, a class with too few locations."""
    problems: list[str] = []
    subs = points.dropna(subset=["subcategory"])
    for name, group in subs.groupby("subcategory", sort=True):
        parents = list(group.groupby("category", sort=True))
        if len(parents) > 1:
            where = ", ".join(f"{cat!r} (lines {_line_list(g['line'])})" for cat, g in parents)
            problems.append(
                f"subcategory {name!r} is under {len(parents)} categories: {where}; a subcategory belongs "
                "to exactly one category (the level-2 classes refine the level-1 ones), so rename one of "
                "them or correct the category"
            )
    for column, frame in (("category", points), ("subcategory", subs)) if training else ():
        for name, group in frame.groupby(column, sort=True):
            n = len(group[["latitude", "longitude"]].drop_duplicates())
            if n < MIN_POINTS_PER_CLASS:
                problems.append(
                    f"{column} {name!r} has {n} point{'s' if n != 1 else ''} (line "
                    f"{_line_list(group['line'])}); a class needs at least {MIN_POINTS_PER_CLASS} points "
                    "at different locations (one to learn from, one to validate on): add points or drop "
                    "the class"
                )
    return problems


def validate_points_labels(
    points: pd.DataFrame,
    lc_labels: Mapping[str, int],
    sl_labels: Mapping[str, int] | None,
    *,
    source: os.PathLike | str = "points",
    lc_source: os.PathLike | str = "lc_labels.json",
    sl_source: os.PathLike | str = "sl_labels.json",
    training: bool = True,
) -> None:
    """Check the points for training: names in the label files, one category per subcategory, enough points.

    With ``training=False`` (a reference sample for accuracy assessment) a class may have a single point.

    Raises
    ------
    InvalidInputError
        Naming the lines whose category or subcategory is unknown (and the label file to extend), a
        subcategory found under two categories, or a class with fewer than :data:`MIN_POINTS_PER_CLASS`
        points at different locations.

    """
    problems: list[str] = []
    for name, group in points.groupby("category", sort=True):
        if name not in lc_labels:
            lines = ", ".join(str(v) for v in group["line"].head(5))
            close = difflib.get_close_matches(str(name), list(lc_labels), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"category {name!r} on line(s) {lines} is not in {lc_source}{hint}")
    subs = points.dropna(subset=["subcategory"])
    if len(subs) and sl_labels is None:
        problems.append(
            f"{len(subs)} point(s) have a subcategory (first on line {subs['line'].iloc[0]}) but no "
            "sl_labels file is configured; add `sl_labels:` to the config"
        )
    elif len(subs):
        assert sl_labels is not None
        for name, group in subs.groupby("subcategory", sort=True):
            if name not in sl_labels:
                lines = ", ".join(str(v) for v in group["line"].head(5))
                close = difflib.get_close_matches(str(name), list(sl_labels), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"subcategory {name!r} on line(s) {lines} is not in {sl_source}{hint}")
    problems += _class_problems(points, training=training)
    if problems:
        raise _problems(source, problems, "Correct the points file (or add missing names to the label file).")


# -------------------------------------------------------------------------------------------- seasons
@dataclass(frozen=True)
class Season:
    """A named season: a date range (``start``..``end`` inclusive) or an explicit list of dates."""

    name: str
    start: dt.date
    end: dt.date
    dates: tuple[dt.date, ...] | None = None

    @property
    def datetime_range(self) -> str:
        """The season as a STAC ``datetime`` interval covering whole days."""
        return f"{self.start.isoformat()}T00:00:00Z/{self.end.isoformat()}T23:59:59Z"


def _parse_date(value: Any, path: Path, where: str) -> dt.date:
    if not isinstance(value, str):
        raise InvalidInputError(
            f'{path}, {where}: {value!r} is not a date string. Write dates as "YYYY-MM-DD".'
        )
    text = value.strip()
    if len(text) > 10 and text[10] in "T ":
        text = text[:10]
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(
            f'{path}, {where}: cannot parse {value!r} as a date. Write dates as "YYYY-MM-DD".'
        ) from None


def read_seasons(path: os.PathLike | str) -> dict[str, Season]:
    """Read a ``seasons.json`` file.

    Each season is either ``{"start": "YYYY-MM-DD", "end": "YYYY-MM-DD"}`` or a list of dates
    ``["YYYY-MM-DD", ...]`` (the scenes of exactly those days).
    """
    p = _require_file(path, "Seasons")
    data, text = _read_json(p)
    if not isinstance(data, dict) or not data:
        raise InvalidInputError(
            f"{p}: expected a JSON object of seasons, e.g. "
            '{"spring": {"start": "2021-03-01", "end": "2021-05-31"}}.'
        )
    seasons: dict[str, Season] = {}
    for name, spec in data.items():
        if (
            not isinstance(name, str)
            or not name.strip()
            or not name.replace("-", "").replace("_", "").isalnum()
        ):
            raise InvalidInputError(
                f"{p}, season {name!r}: season names must be non-empty and use letters, digits, '-' or '_' "
                "(they become feature and folder names)."
            )
        if isinstance(spec, dict):
            unknown = set(spec) - {"start", "end"}
            if unknown or not {"start", "end"} <= set(spec):
                raise InvalidInputError(
                    f"{p}, season {name!r}: expected keys 'start' and 'end', got {sorted(spec)}."
                )
            start = _parse_date(spec["start"], p, f"season {name!r}, key 'start'")
            end = _parse_date(spec["end"], p, f"season {name!r}, key 'end'")
            if end < start:
                raise InvalidInputError(
                    f"{p}, season {name!r}: end {end} is before start {start}. Swap them or fix the dates."
                )
            seasons[name] = Season(name, start, end)
        elif isinstance(spec, list):
            if not spec:
                raise InvalidInputError(f"{p}, season {name!r}: the list of dates is empty.")
            dates = tuple(
                sorted({_parse_date(v, p, f"season {name!r}, item {i}") for i, v in enumerate(spec)})
            )
            seasons[name] = Season(name, dates[0], dates[-1], dates)
        else:
            raise InvalidInputError(
                f"{p}, season {name!r}: expected {{'start': ..., 'end': ...}} or a list of dates, "
                f"got {type(spec).__name__}."
            )
    _warn_overlaps(p, text, seasons)
    return seasons


def _shared_days(a: Season, b: Season) -> str | None:
    """Return the days two seasons share (``"start..end"`` or a list of dates), or None."""
    if a.dates is None and b.dates is None:
        start, end = max(a.start, b.start), min(a.end, b.end)
        return f"{start}..{end}" if start <= end else None
    listed, other = (a, b) if a.dates is not None else (b, a)
    shared = [
        d
        for d in listed.dates or ()
        if other.start <= d <= other.end and (other.dates is None or d in other.dates)
    ]
    return ", ".join(map(str, shared[:5])) + (", ..." if len(shared) > 5 else "") if shared else None


def _warn_overlaps(path: Path, text: str, seasons: Mapping[str, Season]) -> None:
    """Warn once per pair of seasons whose days overlap (their scenes would go into both composites)."""
    names = list(seasons)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            days = _shared_days(seasons[a], seasons[b])
            if days:
                where_a, where_b = _json_key_line(text, a), _json_key_line(text, b)
                warnings.warn(
                    f"{path}: seasons {a!r} (line {where_a}) and {b!r} (line {where_b}) overlap ({days}): "
                    "scenes of those days go into both composites. Make the date ranges disjoint unless "
                    "this is intended.",
                    InputWarning,
                    stacklevel=3,
                )


# --------------------------------------------------------------------------------------------- labels
def _read_labels(path: os.PathLike | str, *, minimum: int, what: str, reserved: str) -> dict[str, int]:
    p = _require_file(path, what)
    data, text = _read_json(p)
    if not isinstance(data, dict) or not data:
        raise InvalidInputError(f'{p}: expected a JSON object of label names to codes, e.g. {{"forest": 2}}.')
    seen: dict[int, str] = {}
    out: dict[str, int] = {}
    for name, code in data.items():
        at = f"{p}{_at_line(text, name)}, key {name!r}"
        code = _label_entry(code, at)[0]
        if isinstance(code, str) and code.strip().isdigit():
            raise InvalidInputError(
                f"{at}: code {code!r} is a string; codes are JSON numbers, so write it without quotes: "
                f"{json.dumps(name)}: {int(code)}."
            )
        if isinstance(code, bool) or not isinstance(code, int):
            raise InvalidInputError(
                f"{at}: code {code!r} is not an integer; give a whole number {minimum}..255, e.g. "
                f"{json.dumps(name)}: {max(minimum, 2)}."
            )
        if code < minimum or code > 255:
            raise InvalidInputError(
                f"{at}: code {code} is not allowed; codes must be {minimum}..255 "
                f"({reserved}). Renumber this label."
            )
        if code in seen:
            raise InvalidInputError(
                f"{at}: code {code} is already used by {seen[code]!r}. Give each label its own code."
            )
        seen[code] = name
        out[name] = code
    return out


_HEX_COLOR = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})")


def _label_entry(entry: Any, at: str) -> tuple[Any, str | None]:
    """Split a label entry, ``2`` or ``{"code": 2, "color": "#1b7837"}``, into its code and colour."""
    if not isinstance(entry, dict):
        return entry, None
    unknown = sorted(set(entry) - {"code", "color"})
    if "code" not in entry or unknown:
        what = f"unknown member(s) {unknown}" if unknown else "no `code`"
        raise InvalidInputError(
            f'{at}: {what}; a label is a code or {{"code": 2, "color": "#1b7837"}} (color optional).'
        )
    color = entry.get("color")
    if color is not None and not (isinstance(color, str) and _HEX_COLOR.fullmatch(color)):
        raise InvalidInputError(
            f'{at}: color {color!r} is not a hex colour; write it as "#rrggbb" (e.g. "#1b7837").'
        )
    return entry["code"], color


def read_label_colors(path: os.PathLike | str) -> dict[str, str]:
    """Read the optional colours of a labels file (``{"forest": {"code": 2, "color": "#1b7837"}}``).

    Parameters
    ----------
    path : str or PathLike
        ``lc_labels.json`` or ``sl_labels.json``; entries that are plain codes have no colour.

    Returns
    -------
    dict
        Label name -> ``"#rrggbb"`` for the labels that give a colour (validated like the codes).

    """
    p = _require_file(path, "Labels")
    data, text = _read_json(p)
    if not isinstance(data, dict):
        raise InvalidInputError(f'{p}: expected a JSON object of label names to codes, e.g. {{"forest": 2}}.')
    out = {}
    for name, entry in data.items():
        color = _label_entry(entry, f"{p}{_at_line(text, name)}, key {name!r}")[1]
        if color is not None:
            out[name] = color
    return out


def read_lc_labels(path: os.PathLike | str) -> dict[str, int]:
    """Read ``lc_labels.json`` (level-1 codes ``>= 1``; 0 is reserved for nodata)."""
    return _read_labels(path, minimum=1, what="Level-1 labels", reserved="0 is reserved for nodata")


def read_sl_labels(path: os.PathLike | str) -> dict[str, int]:
    """Read ``sl_labels.json`` (level-2 codes ``>= 2``; 0 is nodata and 1 is unclassified)."""
    return _read_labels(
        path, minimum=2, what="Level-2 labels", reserved="0 is reserved for nodata and 1 for unclassified"
    )
