"""Map accuracy assessment and area estimation from a stratified random sample (Olofsson et al. 2014).

The strata are the map classes. :func:`draw_sample` draws a stratified random sample of pixels from one
or more class-map GeoTIFFs (windowed: a 10980² map is never read whole); the user labels each sample with
its reference class; :func:`assess` estimates, with the stratified estimators of Olofsson et al. (2014,
Remote Sensing of Environment 148: 42-57, Eqs. 1-10), the error matrix in area proportions, overall,
user's and producer's accuracies, and the area of every class, each with a 95 % confidence interval.

Equation numbers in comments refer to that paper. Notation: ``n[i, j]`` sample counts (rows = map
class / stratum ``i``, columns = reference class ``j``), ``W[i]`` the mapped area share of stratum ``i``,
``A`` the total mapped area.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
import pandas as pd

from .errors import InvalidInputError
from .store import Storage

__all__ = [
    "Z95",
    "sample_size",
    "allocate_sample",
    "stratified_estimates",
    "map_strata",
    "draw_sample",
    "sample_csv",
    "map_values",
    "read_reference",
    "assess",
    "assessment_markdown",
    "write_assessment",
]

logger = logging.getLogger(__name__)

#: Two-sided 95 % normal quantile: a confidence interval is ``estimate ± Z95 * standard error``.
Z95 = 1.96
_STRIP_PIXELS = 1 << 22  # pixels per read window: 4 Mi uint8 = 4 MiB


# --------------------------------------------------------------------------------------- design
def sample_size(
    weights: Sequence[float],
    users_accuracy: Sequence[float],
    *,
    target_se: float = 0.01,
    population: int | None = None,
) -> int:
    """Sample size for a target standard error of overall accuracy (Olofsson et al. 2014, Eq. 13).

    ``n = (Σ W_i S_i)² / (S(Ô)² + Σ W_i S_i² / N)`` with ``S_i = sqrt(U_i (1 - U_i))`` (Cochran 1977,
    Eq. 5.25), where ``U_i`` is the expected user's accuracy of class ``i``.

    Parameters
    ----------
    weights : sequence of float
        Mapped area share of every class (summing to 1).
    users_accuracy : sequence of float
        Expected user's accuracy of every class, in (0, 1].
    target_se : float, default 0.01
        Target standard error ``S(Ô)`` of the overall accuracy.
    population : int, optional
        Number of pixels ``N`` (finite population correction); ``None`` for an infinite population.

    Returns
    -------
    int
        The sample size, rounded up.

    """
    w = np.asarray(weights, dtype=float)
    u = np.asarray(users_accuracy, dtype=float)
    if w.shape != u.shape or w.size == 0:
        raise InvalidInputError("sample_size: weights and users_accuracy need one value per class.")
    if not (0 < target_se < 1) or np.any((u <= 0) | (u > 1)):
        raise InvalidInputError(
            f"sample_size: target_se must be in (0, 1) (got {target_se}) and expected user's accuracies "
            f"in (0, 1] (got {u.tolist()})."
        )
    s = np.sqrt(u * (1 - u))
    fpc = float((w * s**2).sum()) / population if population else 0.0
    return max(1, math.ceil(float((w * s).sum()) ** 2 / (target_se**2 + fpc)))


def allocate_sample(n: int, counts: Sequence[int], *, min_per_class: int = 50) -> np.ndarray:
    """Split ``n`` sample units over strata: a minimum per stratum, the rest in proportion to area.

    Every stratum first gets ``m = min(min_per_class, n // (2 K))`` units (``K`` strata), so that at most
    half of the sample goes to the minimum and rare classes still get enough units for their user's
    accuracy (Olofsson et al. 2014, section 5.1.1); the remaining ``n - K m`` units are allocated in
    proportion to the strata's pixel counts (largest remainders). No stratum gets more units than it
    has pixels; what that leaves over goes to the other strata in the same way.

    Parameters
    ----------
    n : int
        Total sample size.
    counts : sequence of int
        Pixels per stratum.
    min_per_class : int, default 50
        Minimum units per stratum (lowered to ``n // (2 K)`` for small samples).

    Returns
    -------
    ndarray of int
        Units per stratum, summing to ``min(n, sum(counts))``.

    """
    N = np.asarray(counts, dtype=np.int64)
    if n < 1 or min_per_class < 0 or N.size == 0 or np.any(N < 0):
        raise InvalidInputError(
            f"allocate_sample: need n >= 1 (got {n}), min_per_class >= 0 and pixel counts >= 0."
        )
    n = int(min(n, N.sum()))
    m = min(min_per_class, n // (2 * N.size))
    alloc = np.minimum(N, m)
    while alloc.sum() < n:
        room = N - alloc
        left = n - int(alloc.sum())
        share = left * room / room.sum()
        add = np.floor(share).astype(np.int64)
        order = np.argsort(-(share - add), kind="stable")
        add[order[: left - int(add.sum())]] += 1
        alloc = np.minimum(N, alloc + add)
    return alloc


# ------------------------------------------------------------------------------------ estimates
def _interval(estimate: float | None, variance: float | None) -> dict[str, float | None]:
    if estimate is None or variance is None or not np.isfinite(estimate):
        return {"estimate": None, "se": None, "ci95": None}
    se = math.sqrt(max(variance, 0.0))
    return {"estimate": float(estimate), "se": se, "ci95": Z95 * se}


def _producers(A: np.ndarray, r: np.ndarray, d: np.ndarray, j: int) -> tuple[float | None, float | None]:
    """Return the producer's accuracy of class ``j`` and its variance (Eqs. 3, 7; ``N_i`` = ``A``)."""
    N_j = float((A * r[:, j]).sum())  # estimated reference area of class j
    if N_j == 0:
        return None, None
    P = A[j] * r[j, j] / N_j
    U = r[j, j]
    others = sum(A[i] ** 2 * r[i, j] * (1 - r[i, j]) * d[i] for i in range(len(A)) if i != j)
    var = (A[j] ** 2 * (1 - P) ** 2 * U * (1 - U) * d[j] + P**2 * others) / N_j**2
    return float(P), float(var)


def stratified_estimates(counts: Any, areas: Sequence[float], *, names: Sequence[str]) -> dict[str, Any]:
    """Accuracy and area estimates from a stratified random sample (Olofsson et al. 2014, Eqs. 1-10).

    Parameters
    ----------
    counts : array-like of int, shape (K, K)
        Error matrix of sample counts: rows = map class (stratum), columns = reference class, both in the
        order of ``names``.
    areas : sequence of float, length K
        Mapped area of every stratum (any unit; the area estimates come out in that unit).
    names : sequence of str
        Class names.

    Returns
    -------
    dict
        ``overall_accuracy``, and per class in ``classes``: ``users_accuracy``, ``producers_accuracy``,
        ``area_proportion`` and ``area`` (each ``{"estimate", "se", "ci95"}``, ci95 = half-width of the
        95 % interval, ``None`` where undefined), ``map_area``, ``map_weight``, ``n_samples``; and
        ``error_matrix`` (``counts`` and ``area_proportions``, rows = map, columns = reference).

    Raises
    ------
    InvalidInputError
        Shapes disagree, or a stratum with mapped area has no sample unit.

    """
    n = np.asarray(counts, dtype=float)
    A = np.asarray(areas, dtype=float)
    K = len(names)
    if n.shape != (K, K) or A.shape != (K,) or np.any(n < 0) or np.any(A < 0) or A.sum() <= 0:
        raise InvalidInputError(
            f"stratified_estimates: need a {K}x{K} matrix of counts >= 0 and {K} areas >= 0 (not all 0)."
        )
    n_i = n.sum(axis=1)
    unsampled = [names[i] for i in range(K) if A[i] > 0 and n_i[i] == 0]
    if unsampled:
        raise InvalidInputError(
            f"classes {unsampled} are mapped but have no reference sample; every map class (stratum) "
            "needs sample units (`lcstack sample-design` gives each at least a minimum)."
        )
    W = A / A.sum()
    r = np.divide(n, n_i[:, None], out=np.zeros_like(n), where=n_i[:, None] > 0)
    # 1 / (n_i - 1); a stratum of one unit adds nothing to the variances (undefined there).
    d = np.divide(1.0, n_i - 1, out=np.zeros_like(n_i), where=n_i > 1)
    if np.any((n_i == 1) & (A > 0)):
        logger.warning("a stratum has a single sample unit: its variance contributions are left out")
    p = W[:, None] * r  # Eq. 4: estimated area proportions
    U = np.diag(r)
    oa = _interval(float(np.trace(p)), float((W**2 * U * (1 - U) * d).sum()))  # Eqs. 1, 5
    prop = p.sum(axis=0)  # Eq. 9
    prop_var = (W[:, None] ** 2 * r * (1 - r) * d[:, None]).sum(axis=0)  # Eq. 10
    classes = {}
    for k, name in enumerate(names):
        sampled = n_i[k] > 0
        classes[name] = {
            "map_area": float(A[k]),
            "map_weight": float(W[k]),
            "n_samples": int(n_i[k]),
            "users_accuracy": _interval(U[k] if sampled else None, U[k] * (1 - U[k]) * d[k]),  # Eq. 6
            "producers_accuracy": _interval(*_producers(A, r, d, k)),  # Eqs. 3, 7
            "area_proportion": _interval(prop[k], prop_var[k]),
            "area": _interval(prop[k] * A.sum(), prop_var[k] * A.sum() ** 2),  # Eq. 11
        }
    return {
        "labels": list(names),
        "notes": _zero_width_notes(n, A, names, prop_var),
        "n_samples": int(n.sum()),
        "map_area": float(A.sum()),
        "error_matrix": {
            "rows": "map",
            "columns": "reference",
            "counts": n.astype(int).tolist(),
            "area_proportions": p.tolist(),
        },
        "overall_accuracy": oa,
        "classes": classes,
    }


def _zero_width_notes(n: np.ndarray, A: np.ndarray, names: Sequence[str], prop_var: np.ndarray) -> list[str]:
    """Say where a 95 % interval has zero width because the sample shows no error (Wald variance 0).

    Measured on the demo (benchmarks/bench_assess.py): a 98 %-accurate map with 500 sample units gave
    zero-width area intervals for about 3 of 8 classes, whose true areas then lay outside them.
    """
    notes = []
    n_i = n.sum(axis=1)
    for k, name in enumerate(names):
        if n_i[k] > 1 and n[k, k] == n_i[k]:
            notes.append(
                f"{name}: all {int(n_i[k])} sample units of this map class agree with the reference, so "
                "its user's accuracy interval has zero width; the true accuracy may still be below 1."
            )
        if (A[k] > 0 or n[:, k].sum() > 0) and prop_var[k] == 0:
            notes.append(
                f"{name}: no sample unit shows an error into or out of this class, so its area interval "
                "has zero width although the true area may differ from the estimate; a larger sample "
                "(`lcstack sample-design --n`, `--min-per-class`) gives it a real interval."
            )
    for note in notes:
        logger.warning("assessment: %s", note)
    return notes


# ------------------------------------------------------------------------------------ raster I/O
@contextmanager
def _open_maps(maps: Sequence[str], storage: Storage | None) -> Iterator[list[Any]]:
    """Open class-map GeoTIFFs (local paths or fsspec URLs through ``storage``) with rasterio."""
    import rasterio

    if not maps:
        raise InvalidInputError("no class map to assess: give at least one map (GeoTIFF).")
    with ExitStack() as stack:
        out = []
        for url in maps:
            try:
                if "://" in str(url) and not str(url).startswith("file://"):
                    fs, path = (storage or Storage.for_url(str(url))).fs(str(url))
                    src = rasterio.open(path, opener=fs)
                else:
                    src = rasterio.open(str(url).removeprefix("file://"))
            except rasterio.errors.RasterioIOError as err:
                raise InvalidInputError(f"cannot open the class map {url}: {err}. Check the path.") from None
            stack.enter_context(src)
            if src.count != 1 or src.dtypes[0] != "uint8" or src.crs is None or not src.crs.is_projected:
                raise InvalidInputError(
                    f"{url}: expected a single-band uint8 class map in a projected CRS (metres), got "
                    f"{src.count} band(s) of {src.dtypes[0]} in {src.crs}."
                )
            out.append(src)
        yield out


def _strips(src: Any) -> list[Any]:
    from rasterio.windows import Window

    block_h = src.block_shapes[0][0]
    rows = max(block_h, _STRIP_PIXELS // max(src.width, 1) // block_h * block_h)
    return [Window(0, r, src.width, min(rows, src.height - r)) for r in range(0, src.height, rows)]


def _pixel_area_ha(src: Any) -> float:
    t = src.transform
    return abs(t.a * t.e - t.b * t.d) * src.crs.linear_units_factor[1] ** 2 / 1e4


def map_strata(
    maps: Sequence[str], *, storage: Storage | None = None, progress: bool = False
) -> tuple[dict[int, int], dict[int, float]]:
    """Count the pixels of every class code (0 = nodata left out) over one or more class maps.

    Returns
    -------
    pixels, area_ha : dict[int, int], dict[int, float]
        Pixels and hectares per class code, summed over the maps (read window by window).

    """
    pixels, area = _strata_counts(maps, storage, progress)[:2]
    return pixels, area


def _strata_counts(
    maps: Sequence[str], storage: Storage | None, progress: bool
) -> tuple[dict[int, int], dict[int, float], list[tuple[int, Any]], np.ndarray]:
    from .progress import progress_iter

    windows, rows = [], []
    area = np.zeros(256)
    with _open_maps(maps, storage) as sources:
        sizes = {round(_pixel_area_ha(src), 9) for src in sources}
        if len(sizes) > 1:
            # one pixel = one sample unit of equal inclusion probability within a stratum
            raise InvalidInputError(
                f"the maps have different pixel sizes ({sorted(sizes)} ha); assess maps of one resolution."
            )
        for m, src in enumerate(sources):
            for win in _strips(src):
                windows.append((m, win))
        for m, win in progress_iter(windows, desc="map strata", progress=progress):
            counts = np.bincount(sources[m].read(1, window=win).ravel(), minlength=256)
            rows.append(counts)
            area += counts * _pixel_area_ha(sources[m])
    per_window = np.array(rows, dtype=np.int64).reshape(-1, 256)
    per_window[:, 0] = 0
    total = per_window.sum(axis=0)
    codes = np.flatnonzero(total)
    return (
        {int(c): int(total[c]) for c in codes},
        {int(c): float(area[c]) for c in codes},
        windows,
        per_window,
    )


def _lonlat(src: Any, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from pyproj import Transformer

    x, y = src.transform * (cols + 0.5, rows + 0.5)
    tr = Transformer.from_crs(src.crs.to_wkt(), "EPSG:4326", always_xy=True)
    lon, lat = tr.transform(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return np.asarray(lon), np.asarray(lat)


def draw_sample(
    maps: Sequence[str],
    allocation: Mapping[int, int],
    *,
    seed: int = 0,
    storage: Storage | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Draw a stratified random sample of pixels (without replacement) from class maps.

    Pixels of each class code are ranked in map, then row-major order; ``allocation[code]`` distinct
    ranks are drawn at random, then only the windows holding a drawn pixel are read again. The same maps,
    allocation and seed give the same sample. Rows come out in random order (the interpreter should not
    see the map class).

    Parameters
    ----------
    maps : sequence of str
        Class-map GeoTIFFs (one per tile; uint8, 0 = nodata).
    allocation : dict[int, int]
        Sample units per class code (e.g. from :func:`allocate_sample`).
    seed : int, default 0
        Seed of the random draw.
    storage : Storage, optional
        Storage (with its credentials) for maps given as fsspec URLs.
    progress : bool, default False
        Show a progress bar over the read windows.

    Returns
    -------
    DataFrame
        ``latitude``, ``longitude`` (pixel centres, WGS 84) and ``map_class`` (code).

    """
    rng = np.random.default_rng(seed)
    pixels, _, windows, per_window = _strata_counts(maps, storage, progress)
    cum = np.cumsum(per_window, axis=0)
    picks: dict[int, list[tuple[int, np.ndarray]]] = {}
    for code in sorted(allocation):
        k = int(allocation[code])
        if k > pixels.get(code, 0):
            raise InvalidInputError(
                f"draw_sample: {k} units asked for class code {code}, which has {pixels.get(code, 0)} pixels."
            )
        ranks = np.sort(rng.choice(pixels[code], size=k, replace=False)) if k else np.empty(0, int)
        where = np.searchsorted(cum[:, code], ranks, side="right")
        for w in np.unique(where):
            local = ranks[where == w] - (cum[w, code] - per_window[w, code])
            picks.setdefault(int(w), []).append((code, local))
    frames = []
    with _open_maps(maps, storage) as sources:
        for w in sorted(picks):
            m, win = windows[w]
            values = sources[m].read(1, window=win).ravel()
            for code, local in picks[w]:
                flat = np.flatnonzero(values == code)[local]
                rows, cols = np.divmod(flat, int(win.width))
                lon, lat = _lonlat(sources[m], rows + int(win.row_off), cols + int(win.col_off))
                frames.append(pd.DataFrame({"latitude": lat, "longitude": lon, "map_class": code}))
    out = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["latitude", "longitude", "map_class"])
    )
    return out.iloc[rng.permutation(len(out))].reset_index(drop=True)


def sample_csv(sample: pd.DataFrame) -> str:
    """Format the sample as a points file (``latitude;longitude;category``) with an empty ``category``."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=";", lineterminator="\n")
    writer.writerow(["latitude", "longitude", "category"])
    for lat, lon in zip(sample["latitude"], sample["longitude"], strict=True):
        writer.writerow([f"{lat:.8f}", f"{lon:.8f}", ""])
    return buf.getvalue()


def map_values(
    maps: Sequence[str], longitude: Any, latitude: Any, *, storage: Storage | None = None
) -> np.ndarray:
    """Class code of the map pixel under every lon/lat point; -1 where no map covers the point."""
    from pyproj import Transformer

    lon = np.asarray(longitude, dtype=float)
    lat = np.asarray(latitude, dtype=float)
    out = np.full(lon.shape, -1, dtype=np.int64)
    with _open_maps(maps, storage) as sources:
        for src in sources:
            tr = Transformer.from_crs("EPSG:4326", src.crs.to_wkt(), always_xy=True)
            x, y = tr.transform(lon, lat)
            col, row = ~src.transform * (np.asarray(x), np.asarray(y))
            col, row = np.floor(col).astype(np.int64), np.floor(row).astype(np.int64)
            inside = (out < 0) & (col >= 0) & (col < src.width) & (row >= 0) & (row < src.height)
            if inside.any():
                xy = zip(np.asarray(x)[inside], np.asarray(y)[inside], strict=True)
                out[inside] = [int(v[0]) for v in src.sample(xy, indexes=1)]
    return out


# ------------------------------------------------------------------------------------ assessment
def read_reference(
    path: os.PathLike[str] | str, labels: Mapping[str, int], *, labels_file: str
) -> pd.DataFrame:
    """Read a filled-in sample file (points format) and check its ``category`` names against ``labels``.

    Raises
    ------
    InvalidInputError
        A line is malformed, a category is empty, or a category is not in ``labels`` (naming the file,
        the lines and the label file).

    """
    from .inputs import read_points, validate_points_labels

    # a reference file names one level's classes in `category`; a subcategory column is not used
    points = read_points(path).assign(subcategory=None)
    validate_points_labels(points, labels, None, source=path, lc_source=labels_file, training=False)
    return points.assign(reference=points["category"].map(labels).astype(np.int64))


def assess(
    maps: Sequence[str],
    reference: pd.DataFrame,
    labels: Mapping[str, int],
    *,
    source: str = "reference",
    storage: Storage | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy and area estimates of class maps from reference points (stratified by map class).

    Parameters
    ----------
    maps : sequence of str
        Class-map GeoTIFFs (one per tile); strata areas are summed over them.
    reference : DataFrame
        ``latitude``, ``longitude``, ``reference`` (class code) and ``line`` (from :func:`read_reference`).
    labels : dict[str, int]
        Class names to codes of the maps.
    source : str
        Name of the reference file, for messages.
    storage : Storage, optional
        Storage (with its credentials) for maps given as fsspec URLs.
    progress : bool, default False
        Show a progress bar over the read windows.

    Returns
    -------
    dict
        :func:`stratified_estimates` over the classes that are mapped or in the reference, with areas
        in hectares (``area_ha``, ``map_area_ha``), and ``codes``, ``maps``.

    Raises
    ------
    InvalidInputError
        A point lies outside every map or on a nodata pixel, or a map holds a code not in ``labels``.

    """
    pixels, area_ha = map_strata(maps, storage=storage, progress=progress)
    names_of = {int(c): str(n) for n, c in labels.items()}
    unknown = sorted(set(pixels) - set(names_of))
    if unknown:
        raise InvalidInputError(f"the maps hold class codes {unknown} that the label file does not name.")
    mapped = map_values(maps, reference["longitude"], reference["latitude"], storage=storage)
    for bad, what in ((mapped < 0, "outside every map"), (mapped == 0, "on nodata pixels of the map")):
        if bad.any():
            lines = ", ".join(str(v) for v in reference["line"].to_numpy()[bad][:5])
            raise InvalidInputError(
                f"{source}: {int(bad.sum())} point(s) lie {what} (line(s) {lines}); a reference sample "
                "must be drawn from the mapped area (`lcstack sample-design`)."
            )
    codes = sorted(set(pixels) | set(reference["reference"].tolist()))
    index = {c: k for k, c in enumerate(codes)}
    counts = np.zeros((len(codes), len(codes)), dtype=np.int64)
    np.add.at(counts, ([index[c] for c in mapped], [index[c] for c in reference["reference"]]), 1)
    names = [names_of[c] for c in codes]
    result = stratified_estimates(counts, [area_ha.get(c, 0.0) for c in codes], names=names)
    result["codes"] = codes
    result["maps"] = [str(m) for m in maps]
    result["map_area_ha"] = result.pop("map_area")
    for entry in result["classes"].values():
        entry["area_ha"] = entry.pop("area")
        entry["map_area_ha"] = entry.pop("map_area")
    return result


def _fmt(value: Mapping[str, Any], digits: int = 3) -> str:
    if value["estimate"] is None:
        return "–"
    return f"{value['estimate']:.{digits}f} ± {value['ci95']:.{digits}f}"


def assessment_markdown(result: Mapping[str, Any], *, figure: str | None = None) -> str:
    """Write a Markdown report of an :func:`assess` result (accuracies, areas, error matrices)."""
    names = result["labels"]
    lines = [
        "# Map accuracy assessment",
        "",
        f"Stratified estimators of Olofsson et al. (2014); {result['n_samples']} reference samples; "
        f"mapped area {result['map_area_ha']:,.1f} ha. Intervals are 95 % (± 1.96 standard errors).",
        "",
        f"**Overall accuracy: {_fmt(result['overall_accuracy'])}**",
        "",
        "| class | samples | map area (ha) | estimated area (ha) | user's accuracy | producer's accuracy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        c = result["classes"][name]
        area = _fmt(c["area_ha"], 1)
        lines.append(
            f"| {name} | {c['n_samples']} | {c['map_area_ha']:,.1f} | {area} | "
            f"{_fmt(c['users_accuracy'])} | {_fmt(c['producers_accuracy'])} |"
        )
    for title, key, fmt in (
        ("Error matrix, sample counts", "counts", "{:d}"),
        ("Error matrix, estimated area proportions", "area_proportions", "{:.4f}"),
    ):
        lines += [
            "",
            f"## {title} (rows = map, columns = reference)",
            "",
            "| map \\ reference | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|",
        ]
        for name, row in zip(names, result["error_matrix"][key], strict=True):
            lines.append(f"| {name} | " + " | ".join(fmt.format(v) for v in row) + " |")
    if result.get("notes"):
        lines += ["", "## Notes", "", *(f"* {note}" for note in result["notes"])]
    if figure:
        lines += ["", f"![Error matrix]({figure})"]
    return "\n".join(lines) + "\n"


def write_assessment(result: Mapping[str, Any], url: str, *, storage: Storage) -> dict[str, str]:
    """Write ``assessment.json``, ``report.md`` and ``confusion.png`` under ``url``; returns their URLs."""
    from .evaluate import plot_confusion

    urls = {
        k: storage.join(url, f)
        for k, f in (("json", "assessment.json"), ("report", "report.md"), ("figure", "confusion.png"))
    }
    counts = np.asarray(result["error_matrix"]["counts"]).T  # rows = reference, as plot_confusion draws
    props = np.asarray(result["error_matrix"]["area_proportions"]).T
    totals = props.sum(axis=1, keepdims=True)
    share = np.divide(props, totals, out=np.zeros_like(props), where=totals > 0)
    buf = io.BytesIO()
    plot_confusion(
        {"confusion_matrix": counts.tolist(), "labels": result["labels"]},
        buf,
        share=share,
        share_label="share of estimated reference area",
        title=f"OA {_fmt(result['overall_accuracy'])} (95 %); cells: sample counts",
        xlabel="Map",
    )
    storage.write_bytes(urls["figure"], buf.getvalue())
    storage.write_bytes(urls["report"], assessment_markdown(result, figure="confusion.png").encode())
    storage.write_bytes(urls["json"], json.dumps(result, indent=2, allow_nan=False).encode())
    return urls


# ------------------------------------------------------------------------------------ run config
def level_labels(config: Any, level: int) -> tuple[dict[str, int], str]:
    """Class names to codes of a run's level-1 or level-2 maps, and the label file they come from."""
    if level == 1:
        return config.read_lc_labels(), str(config.lc_labels)
    if level == 2:
        if config.sl_labels is None:
            raise InvalidInputError(
                f"{config.source or 'config'}: level 2 needs `sl_labels:` in the config (no level-2 maps)."
            )
        return {"unclassified": 1, **config.read_sl_labels()}, str(config.sl_labels)
    raise InvalidInputError(f"--level {level}: use 1 (categories) or 2 (subcategories).")


def workflow_maps(workflow: Any, *, level: int) -> list[str]:
    """List the complete level-1 or level-2 COGs the registry holds for a workflow's model (one per tile)."""
    model_key = workflow.model_key()
    # this config's maps only: the same model can have maps with and without smoothing
    keys = {p.key for p in workflow._map_jobs(model_key)}
    records = workflow.registry.find("maps", model=model_key)
    urls = [
        workflow.map_urls(r)[f"level{level}"]
        for r in records
        if r.get("status") == "complete" and r.get("key") in keys
    ]
    if not urls:
        raise InvalidInputError(
            "no complete classified map for this config: run `lcstack classify` first, or pass the "
            "map(s) with --map."
        )
    return sorted(urls)


def _expected_ua(specs: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """Parse the expected user's accuracy per class from ``["0.85", "water=0.7"]`` (bare value: all)."""
    out = np.full(len(names), 0.8)
    for spec in specs:
        name, _, value = spec.rpartition("=")
        try:
            u = float(value)
        except ValueError:
            raise InvalidInputError(f"--expected-ua {spec!r}: give a number or NAME=NUMBER.") from None
        if name and name not in names:
            raise InvalidInputError(
                f"--expected-ua {spec!r}: {name!r} is not a map class ({', '.join(names)})."
            )
        out[[i for i, n in enumerate(names) if not name or n == name]] = u
    return out


def design_sample(
    maps: Sequence[str],
    labels: Mapping[str, int],
    *,
    n: int | None = None,
    target_se: float = 0.01,
    expected_ua: Sequence[str] = (),
    min_per_class: int = 50,
    seed: int = 0,
    storage: Storage | None = None,
    progress: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Stratified random validation sample of class maps: size, allocation and points.

    With ``n=None`` the size comes from :func:`sample_size` for ``target_se`` and the expected user's
    accuracies (``expected_ua``: ``"0.85"`` for every class, ``"NAME=0.7"`` for one; default 0.8); the
    allocation is :func:`allocate_sample`.

    Returns
    -------
    sample, design : DataFrame, dict
        The points (:func:`draw_sample`) and the design: ``n``, ``seed``, ``min_per_class`` and per class
        ``pixels``, ``weight``, ``n``.

    """
    pixels, _ = map_strata(maps, storage=storage, progress=progress)
    names_of = {int(c): str(k) for k, c in labels.items()}
    unknown = sorted(set(pixels) - set(names_of))
    if unknown or not pixels:
        raise InvalidInputError(
            f"the maps hold class codes {unknown} that the label file does not name."
            if unknown
            else "the maps hold no classified pixel (all nodata)."
        )
    codes = sorted(pixels)
    names = [names_of[c] for c in codes]
    counts = np.array([pixels[c] for c in codes])
    weights = counts / counts.sum()
    if n is None:
        n = sample_size(
            weights, _expected_ua(expected_ua, names), target_se=target_se, population=counts.sum()
        )
    alloc = allocate_sample(n, counts, min_per_class=min_per_class)
    sample = draw_sample(maps, dict(zip(codes, alloc.tolist(), strict=True)), seed=seed, storage=storage)
    design = {
        "n": int(alloc.sum()),
        "seed": seed,
        "min_per_class": min_per_class,
        "classes": {
            name: {"code": c, "pixels": int(N), "weight": float(w), "n": int(k)}
            for name, c, N, w, k in zip(names, codes, counts, weights, alloc, strict=True)
        },
    }
    logger.info("sample design: %d units over %d strata", design["n"], len(codes))
    return sample, design
