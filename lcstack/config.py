"""The run configuration (YAML): its pydantic schema (:class:`RunConfig`) and :func:`load_config`.

Relative paths (input files, a local catalog, a local storage folder, an AOI GeoJSON) are resolved
against the config file's folder; every problem is an :class:`~lcstack.errors.InvalidInputError` (or
:class:`~lcstack.errors.InputFileNotFoundError`) with the file, the line and the key. The input files the
config names are read by :mod:`lcstack.inputs`.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InputFileNotFoundError, InvalidInputError
from .harmonize import SCL_CLOUD_CLASSES
from .inputs import (
    Season,
    _problems,
    _read_text,
    _require_file,
    read_lc_labels,
    read_points,
    read_seasons,
    read_sl_labels,
    validate_points_labels,
)
from .signing import StacSource, stac_source

__all__ = [
    "AoiBox",
    "CVConfig",
    "DaskConfig",
    "GridConfig",
    "MaskConfig",
    "ModelConfig",
    "RunConfig",
    "load_config",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MaskConfig(_Strict):
    """Cloud masking from the scene classification layer (SCL)."""

    classes: tuple[int, ...] = SCL_CLOUD_CLASSES
    dilation_m: float = Field(0.0, ge=0)


class CVConfig(_Strict):
    """Spatial k-fold cross-validation: the points of one square block (side in metres) share a fold."""

    folds: int = Field(5, ge=2)
    block_size: float = Field(2000.0, gt=0)


class ModelConfig(_Strict):
    """Training options (``cv``: spatial cross-validation besides the held-out split)."""

    estimator: Literal["random_forest", "extra_trees", "hist_gradient_boosting"] = "random_forest"
    params: dict[str, Any] = Field(default_factory=dict)
    test_size: float = Field(0.25, gt=0, lt=1)
    block_size: float | None = Field(None, gt=0)
    random_state: int = 0
    cv: CVConfig | None = None


class DaskConfig(_Strict):
    """Where computations run (a LocalCluster when no address is given)."""

    scheduler: str | None = None
    n_workers: int | None = Field(None, ge=1)
    threads_per_worker: int | None = Field(None, ge=1)
    memory_limit: str | None = None
    processes: bool = True
    #: How many outputs (composites of every tile and season, maps of every tile) are written at once on a
    #: distributed cluster; each is its own graph, so the cluster stays busy between outputs. ``None``:
    #: all of a run's tiles and seasons, up to 8. The local threaded scheduler always writes one at a time.
    concurrent_outputs: int | None = Field(None, ge=1)


class AoiBox(_Strict):
    """A bounding box in a given CRS."""

    bbox: tuple[float, float, float, float]
    crs: str = "EPSG:4326"


class GridConfig(_Strict):
    """An explicit processing grid (``grid: {crs: EPSG:3035, resolution: 10}``), not the Sentinel-2 tiles."""

    crs: str
    resolution: float = Field(10.0, gt=0)


class RunConfig(_Strict):
    """A validated run configuration; relative paths are already resolved against the config's folder."""

    stac: str
    collection: str = "sentinel-2-l2a"
    dem_collection: str | None = None
    seasons: Path
    #: The labelled points; needed to train (:meth:`read_points` says so when it is missing).
    points: Path | None = None
    #: at most this many pixels per training polygon (``points`` as GeoJSON/GeoPackage/Parquet); all if unset
    points_per_polygon: int | None = Field(None, ge=1)
    lc_labels: Path
    sl_labels: Path | None = None
    aoi: tuple[float, float, float, float] | AoiBox | Path | None = None
    #: the processing grid: the Sentinel-2 tiles of the AOI when neither ``grid`` nor ``crs`` is given
    grid: GridConfig | None = None
    #: ``crs: EPSG:...`` alone is the user grid ``grid: {crs: ..., resolution: <resolution>}``
    crs: str | None = None
    resolution: float = Field(10.0, gt=0)
    bands: tuple[str, ...] | None = None
    indices: tuple[str, ...] | None = None
    storage: str = "lcstack-data"
    storage_options: dict[str, Any] = Field(default_factory=dict)
    layout: dict[str, str] = Field(default_factory=dict)
    registry: str | None = None
    max_cloud_cover: float = Field(60.0, ge=0, le=100)
    max_scenes_per_season: int = Field(5, ge=1)
    min_valid_fraction: float = Field(0.0, ge=0, le=1)
    #: a Sentinel-2 tile without a usable scene in a season: ``fail`` the run, or ``skip`` the tile
    on_missing: Literal["fail", "skip"] = "fail"
    tile_size: int = Field(4096, ge=64)
    chunk_size: int | None = Field(None, ge=64)
    loader: Literal["odc", "stackstac"] = "odc"
    on_error: Literal["fail", "skip-scene"] = "fail"
    mask: MaskConfig = Field(default_factory=MaskConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    dask: DaskConfig = Field(default_factory=DaskConfig)
    source: Path | None = None
    #: ``stac:`` given as a mapping {url, headers, modifier} (lcstack.signing); ``stac`` holds its URL.
    stac_source: StacSource | None = None

    @field_validator("aoi", mode="before")
    @classmethod
    def _aoi(cls, v: Any) -> Any:
        if isinstance(v, list | tuple):
            if len(v) != 4:
                raise ValueError("a bbox needs 4 numbers [lon_min, lat_min, lon_max, lat_max]")
            lon0, lat0, lon1, lat1 = (float(x) for x in v)
            if not (
                lon0 < lon1 and lat0 < lat1 and -180 <= lon0 and lon1 <= 180 and -90 <= lat0 and lat1 <= 90
            ):
                raise ValueError(
                    f"bbox {list(v)} is not [lon_min, lat_min, lon_max, lat_max] in degrees with min < max"
                )
        return v

    @property
    def folder(self) -> Path:
        """The folder relative paths were resolved against."""
        return self.source.parent if self.source else Path.cwd()

    def read_seasons(self) -> dict[str, Season]:
        """Read the seasons file."""
        return read_seasons(self.seasons)

    def read_lc_labels(self) -> dict[str, int]:
        """Read the level-1 label file."""
        return read_lc_labels(self.lc_labels)

    def read_sl_labels(self) -> dict[str, int] | None:
        """Read the level-2 label file, if configured."""
        return read_sl_labels(self.sl_labels) if self.sl_labels else None

    def read_points(self, *, validate: bool = True) -> pd.DataFrame:
        """Read the points, checking their names against the label files.

        Raises
        ------
        InvalidInputError
            The config has no ``points`` key (training needs them), or the points are invalid.

        """
        if self.points is None:
            raise InvalidInputError(
                f"{self.source or 'the run configuration'}: missing key 'points': the labelled points the "
                "model is trained on (a CSV with latitude, longitude, category[, subcategory] columns). Add "
                "e.g. `points: dataset.csv` (relative to the config file's folder)."
            )
        pts = read_points(self.points)
        if validate:
            validate_points_labels(
                pts,
                self.read_lc_labels(),
                self.read_sl_labels(),
                source=self.points,
                lc_source=self.lc_labels,
                sl_source=self.sl_labels or "sl_labels.json",
            )
        return pts


_PATH_KEYS = ("seasons", "points", "lc_labels", "sl_labels")
_REQUIRED = {
    "stac": "where the scenes come from, a STAC API URL (https://...) or the path of a static catalog.json",
    "seasons": "the seasons file (e.g. `seasons: seasons.json`) that defines one composite per season",
    "lc_labels": "the level-1 label file mapping class names to codes (e.g. `lc_labels: lc_labels.json`)",
}


def _is_url(value: str) -> bool:
    return "://" in value


def _key_lines(text: str) -> dict[str, int]:
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def _safe_yaml(path: Path, text: str) -> Any:
    """``yaml.safe_load`` with its errors (syntax, tags that would build Python objects) named by line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = str(getattr(err, "problem", err))
        tag = re.search(r"constructor for the tag '([^']+)'", problem)
        if isinstance(err, yaml.constructor.ConstructorError) and tag:
            name = tag.group(1).replace("tag:yaml.org,2002:", "!!")
            raise InvalidInputError(
                f"{path}{where}: refused the YAML tag {name!r}: tags that build Python objects are unsafe "
                "(they can run code) and a config holds only plain values (mappings, lists, strings, "
                "numbers). Remove the tag and write the value itself."
            ) from None
        raise InvalidInputError(f"{path}{where}: not valid YAML ({problem}).") from None


def load_config(path: os.PathLike | str, **overrides: Any) -> RunConfig:
    """Read and validate a run configuration (YAML).

    Relative paths (input files, a local ``stac`` catalog, a local ``storage`` folder, an AOI GeoJSON)
    are resolved against the config file's folder. ``overrides`` replace keys of the file.

    Raises
    ------
    InvalidInputError
        Unknown key, wrong type or value, with the file, line and key.
    InputFileNotFoundError
        The config file or an input file it names does not exist.

    """
    p = _require_file(path, "Config")
    text = _read_text(p)
    raw = _safe_yaml(p, text)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{p}: expected a mapping of keys (stac, collection, seasons, ...).")
    raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    lines = _key_lines(text)
    known = set(RunConfig.model_fields) - {"source", "stac_source"}
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            where = f", line {lines[key]}" if key in lines else ""
            raise InvalidInputError(
                f"{p}{where}: unknown key {key!r}.{hint} Valid keys: {', '.join(sorted(known))}."
            )
    base = p.resolve().parent
    for key, purpose in _REQUIRED.items():
        if key not in raw:
            raise InvalidInputError(f"{p}: missing required key {key!r}: {purpose}.")
    resolved = dict(raw)
    for key in _PATH_KEYS:
        if resolved.get(key) is not None:
            resolved[key] = (base / os.path.expanduser(str(resolved[key]))).resolve()
    # --- stac: a URL / path, or a mapping {url, headers, modifier} (lcstack.signing.StacSource) ---
    stac_src = None
    if isinstance(resolved["stac"], dict):
        where = f"{p}, line {lines['stac']}" if "stac" in lines else str(p)
        stac_src = stac_source(resolved["stac"], where=f"{where}, key 'stac'")
        resolved["stac"] = stac_src.url
    # --- end stac mapping ---
    stac = str(resolved["stac"])
    if not _is_url(stac):
        resolved["stac"] = str((base / os.path.expanduser(stac)).resolve())
    if stac_src is not None:
        resolved["stac_source"] = stac_src.model_copy(update={"url": resolved["stac"]})
    storage = str(resolved.get("storage", "lcstack-data"))
    if not _is_url(storage):
        resolved["storage"] = str((base / os.path.expanduser(storage)).resolve())
    reg = resolved.get("registry")
    if reg and not _is_url(str(reg)):
        resolved["registry"] = str((base / os.path.expanduser(str(reg))).resolve())
    if isinstance(resolved.get("aoi"), str):
        resolved["aoi"] = (base / resolved["aoi"]).resolve()
    resolved["source"] = p.resolve()
    try:
        cfg = RunConfig.model_validate(resolved)
    except ValidationError as err:
        msgs = []
        for e in err.errors():
            key = str(e["loc"][0]) if e["loc"] else "?"
            loc = ".".join(str(x) for x in e["loc"])
            where = f"line {lines[key]}, " if key in lines else ""
            msgs.append(f"{where}key {loc!r}: {e['msg']}")
        raise _problems(p, msgs, "Fix these keys and run again.") from None
    for key in _PATH_KEYS:
        value = getattr(cfg, key)
        if value is not None and not Path(value).is_file():
            where = f", line {lines[key]}" if key in lines else ""
            raise InputFileNotFoundError(
                f"{p}{where}: key {key!r} names {value}, which does not exist. Fix the path "
                "(relative paths are resolved against the config file's folder)."
            )
    if isinstance(cfg.aoi, Path) and not cfg.aoi.is_file():
        raise InputFileNotFoundError(f"{p}: key 'aoi' names {cfg.aoi}, which does not exist.")
    if not _is_url(cfg.stac) and not Path(cfg.stac).exists():
        where = f", line {lines['stac']}" if "stac" in lines else ""
        raise InputFileNotFoundError(
            f"{p}{where}: key 'stac' names {cfg.stac}, which does not exist. Give a STAC API URL "
            "(https://...) or the path of a static catalog.json."
        )
    return cfg
