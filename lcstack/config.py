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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
    "ClassifyConfig",
    "ContextConfig",
    "DaskConfig",
    "FeaturesConfig",
    "EstimatorClass",
    "GridConfig",
    "MaskConfig",
    "ModelConfig",
    "RebalanceConfig",
    "RunConfig",
    "SmoothingConfig",
    "SearchConfig",
    "SelectConfig",
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


class SmoothingConfig(_Strict):
    """Post-classification smoothing of the level-1 map (:func:`lcstack.smooth.smooth_maps`).

    ``method``: ``bayes`` (Bayesian smoothing of the class probabilities, after sits), ``gaussian``
    (Gaussian filter of the probabilities) or ``majority`` (majority filter of the class map);
    ``window_m``: side of the window in metres (default 70 m, 30 m for ``majority``); ``smoothness``: the
    prior variance of the logits (``bayes``); ``min_mapping_unit_m2``: patches smaller than this take the
    class of their largest neighbour (a sieve), none by default.
    """

    method: Literal["bayes", "gaussian", "majority"] = "bayes"
    window_m: float | None = Field(None, gt=0)
    smoothness: float = Field(20.0, gt=0)
    min_mapping_unit_m2: float | None = Field(None, gt=0)


class ClassifyConfig(_Strict):
    """What the classify step writes besides the class maps (``classify:``).

    ``probabilities: true`` adds the level-1 class probabilities (``level1_proba``, one band per class)
    and the uncertainty layers (``level1_confidence``, ``level1_margin``, ``level1_entropy`` and their
    level-2 equivalents within the chosen category) to each unit's ``maps.zarr`` and as COGs, in whole
    percent (uint8, 255 = nodata); see :func:`lcstack.classify.classify`. Off by default.
    """

    probabilities: bool = False


class EstimatorClass(_Strict):
    """A scikit-learn-compatible classifier by import path: ``{class: "pkg.module.Class", params: {...}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    class_: str = Field(alias="class", pattern=r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")
    params: dict[str, Any] = Field(default_factory=dict)


class RebalanceConfig(_Strict):
    """Re-balance the training samples per category: cap common classes, oversample rare ones.

    Applied to the training rows only (the held-out split, and every cross-validation fold's own training
    part), never to the rows a model is scored on.
    """

    max_per_class: int | None = Field(None, ge=1)
    min_per_class: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _order(self) -> RebalanceConfig:
        if self.max_per_class is None and self.min_per_class is None:
            raise ValueError("give max_per_class, min_per_class or both")
        if None not in (self.max_per_class, self.min_per_class) and self.min_per_class > self.max_per_class:
            raise ValueError(f"min_per_class {self.min_per_class} > max_per_class {self.max_per_class}")
        return self


class SearchConfig(_Strict):
    """Grid search of the estimator's parameters, scored on spatial folds of the training split."""

    param_grid: dict[str, list[Any]] | list[dict[str, list[Any]]]
    cv: Literal["spatial"] = "spatial"
    folds: int = Field(3, ge=2)
    block_size: float = Field(2000.0, gt=0)
    scoring: Literal["macro_f1", "overall_accuracy", "kappa"] = "macro_f1"


class SelectConfig(_Strict):
    """Feature selection on the training split: recursive elimination (``rfecv``) or top importances."""

    method: Literal["rfecv", "importance"]
    #: ``importance``: keep this many features (default: those above the mean importance)
    n_features: int | None = Field(None, ge=1)
    #: ``rfecv``: the fewest features to keep, and how many to drop per step
    min_features: int = Field(1, ge=1)
    step: int = Field(1, ge=1)
    folds: int = Field(3, ge=2)
    block_size: float = Field(2000.0, gt=0)


class ModelConfig(_Strict):
    """Training options (``cv``: spatial cross-validation besides the held-out split).

    ``estimator`` names a family (``random_forest``, ``extra_trees``, ``hist_gradient_boosting``,
    ``lightgbm``, ``xgboost``) or a class (:class:`EstimatorClass`). ``trusted_types`` lists further
    fully qualified types a model of a class outside the families may hold (checked when saving and
    loading; see :data:`lcstack.model.MODEL_TYPES`). ``class_weight``, ``rebalance``: class imbalance;
    ``search``: grid search on spatial folds; ``select``: feature selection; ``importance_repeats``: the
    permutations per feature of the held-out importances (0: none).
    """

    estimator: (
        Literal["random_forest", "extra_trees", "hist_gradient_boosting", "lightgbm", "xgboost"]
        | EstimatorClass
    ) = "random_forest"
    params: dict[str, Any] = Field(default_factory=dict)
    test_size: float = Field(0.25, gt=0, lt=1)
    block_size: float | None = Field(None, gt=0)
    random_state: int = 0
    cv: CVConfig | None = None
    class_weight: Literal["balanced", "balanced_subsample"] | None = None
    rebalance: RebalanceConfig | None = None
    search: SearchConfig | None = None
    select: SelectConfig | None = None
    importance_repeats: int = Field(5, ge=0)
    trusted_types: tuple[str, ...] = ()

    @property
    def estimator_name(self) -> str:
        """The family name, or the class path of an :class:`EstimatorClass`."""
        return self.estimator if isinstance(self.estimator, str) else self.estimator.class_


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


class ContextConfig(_Strict):
    """Spatial context: statistics of chosen bands' (indices') medians in a ``window`` x ``window`` area."""

    window: int = Field(5, ge=3, le=31)
    bands: tuple[str, ...] = ("ndvi",)
    stats: tuple[Literal["mean", "std"], ...] = ("mean", "std")

    @field_validator("window")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(
                f"window must be odd (a pixel and the same number of neighbours each side), got {v}"
            )
        return v


class FeaturesConfig(_Strict):
    """The features of each season besides the median of its bands and indices (``features:``).

    ``features: landcoverpy`` (the default) is LandCoverPy's set: the median of the bands and the indices,
    and terrain. ``percentiles`` of every band and index over the season's valid observations
    (``<season>_<band>_p10``), ``std`` their standard deviation, ``count`` the number of valid
    observations, ``scenes`` the values of the first N scenes (NaN where a season has fewer), ``context``
    window statistics (:class:`ContextConfig`).
    """

    percentiles: tuple[float, ...] = ()
    std: bool = False
    count: bool = False
    scenes: int = Field(0, ge=0, le=20)
    context: ContextConfig | None = None

    @field_validator("percentiles")
    @classmethod
    def _percentiles(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        bad = [q for q in v if not 0 <= q <= 100]
        if bad:
            raise ValueError(f"percentiles must lie in [0, 100], got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"percentiles are repeated: {list(v)}")
        return v

    @property
    def is_landcoverpy(self) -> bool:
        """True when the set is LandCoverPy's: the median of the bands and indices only."""
        return self == FeaturesConfig()

    def layers_per_band(self) -> int:
        """How many layers each band or index adds to a season's composite (the median included)."""
        return 1 + len(self.percentiles) + int(self.std) + self.scenes


#: ``features:`` presets by name
FEATURE_PRESETS: dict[str, FeaturesConfig] = {"landcoverpy": FeaturesConfig()}


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
    #: the features of each season: a preset name (``landcoverpy``) or a :class:`FeaturesConfig` mapping
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    dask: DaskConfig = Field(default_factory=DaskConfig)
    #: optional smoothing of the level-1 map after classification (``level1`` becomes the smoothed map)
    smoothing: SmoothingConfig | None = None
    #: optional layers of the classify step (``classify: {probabilities: true}``)
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)
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

    @field_validator("features", mode="before")
    @classmethod
    def _features(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v not in FEATURE_PRESETS:
                raise ValueError(
                    f"unknown feature preset {v!r}; use one of {sorted(FEATURE_PRESETS)} or a mapping"
                )
            return FEATURE_PRESETS[v]
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
