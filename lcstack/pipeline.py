"""The workflow: discover → composite → train → classify, idempotent and resumable.

This is the only module that knows the order of the steps. Every output has an identity (a content hash
of what it was made from); the registry records it as ``pending`` before the work and ``complete`` after
the output is fully written, so a re-run reuses complete outputs and redoes only the rest, and a crash
never leaves an output that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr
from odc.geo.geobox import GeoBox

from ._version import __version__
from .config import RunConfig
from .errors import (
    AssetError,
    InvalidInputError,
    NoScenesFoundError,
    SkippedPointsWarning,
    SkippedScenesWarning,
    StorageError,
)
from .grid import aoi_geobox, aoi_geometry, points_bbox
from .inputs import Season
from .load import AssetProblem, asset_error, check_assets
from .plan import PROBA_FILES, PlannedOutput, Unit, points_of_units, s2_units, unit_owns, user_units
from .plan import digest as _digest
from .plan import grid_token as _grid_token
from .progress import progress_enabled, progress_iter
from .settings import Settings, get_settings
from .store import Storage, redact

if TYPE_CHECKING:
    from .registry import Claim

__all__ = ["Workflow", "StepResult", "STEPS"]

logger = logging.getLogger(__name__)

STEPS = ("discover", "composite", "train", "classify")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


#: The storage folder of each registry kind of output.
_FOLDER = {
    "composites": "composites",
    "datasets": "datasets",
    "models": "models",
    "maps": "classification-maps",
}


@dataclass
class StepResult:
    """What one step did for one output."""

    step: str
    key: str
    url: str
    reused: bool
    details: dict[str, Any] = field(default_factory=dict)


class Workflow:
    """A configured lcstack run.

    Parameters
    ----------
    config
        The validated run configuration (:func:`lcstack.config.load_config`).
    settings
        Environment settings (S3 endpoint, registry URL, ...); read from the environment by default.
    registry
        An open registry; by default the one named by the config / settings, or the embedded SQLite
        file ``<storage>/registry.sqlite`` for local storage.
    progress
        Show progress bars where :func:`lcstack.progress.progress_enabled` allows (``LCSTACK_PROGRESS``,
        a terminal).

    """

    def __init__(
        self,
        config: RunConfig,
        *,
        settings: Settings | None = None,
        registry: Any = None,
        progress: bool = True,
    ) -> None:
        from .registry import open_registry

        self._embedded = False  # a registry file inside the storage root: all its records are ours
        self.config = config
        self.settings = settings or get_settings()
        self.progress = progress_enabled(progress, self.settings)
        # Validate every input file before anything is created (registry file, storage folders).
        self._seasons: dict[str, Season] | None = config.read_seasons()
        self._points = config.read_points() if config.points is not None else None
        #: (key, url, metadata) of a model trained elsewhere (:meth:`use_model`), used instead of training
        self._external_model: tuple[str, str, dict[str, Any]] | None = None
        remote = next((u for u in (config.storage, *config.layout.values()) if "://" in u), config.storage)
        opts = {**self.settings.storage_options(remote), **config.storage_options}
        self.storage = Storage(config.storage, storage_options=opts, layout=config.layout)
        if registry is None:
            url = config.registry or (
                self.settings.registry.get_secret_value() if self.settings.registry else None
            )
            default = None
            if "://" not in config.storage:
                self.storage.create_root()
                default = f"{config.storage}/registry.sqlite"
            elif url is None:
                raise InvalidInputError(
                    f"storage {redact(config.storage)} is remote, so the embedded registry has no place to "
                    "live: set `registry:` in the config (mongodb://... or a local SQLite path) or MONGO_URI."
                )
            registry = open_registry(url, default_path=default, database=self.settings.mongo_database)
            self._embedded = not url
        self.registry = registry
        self._plan: list[PlannedOutput] | None = None
        # the storage's identity in records (a shared registry holds records of several storages)
        self._storage_id = redact(
            self.storage.root if "://" in self.storage.root else os.path.abspath(self.storage.root)
        )
        #: Sentinel-2 tile id -> season -> the chosen scenes
        self._scenes: dict[str, dict[str, list[Any]]] | None = None
        self._geobox: GeoBox | None = None
        self._units: dict[str, Unit] | None = None
        self._s2_footprints: dict[str, GeoBox] = {}  # every Sentinel-2 tile processed -> its grid
        self._fingerprints: dict[str, str] = {}

    def close(self) -> None:
        """Close the registry connection."""
        self.registry.close()

    def __enter__(self) -> Workflow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ inputs
    @property
    def seasons(self) -> dict[str, Season]:
        """The seasons of the run."""
        if self._seasons is None:
            self._seasons = self.config.read_seasons()
        return self._seasons

    @property
    def aoi(self) -> Any:
        """The configured AOI, or the bounding box of the points when none is configured."""
        if self.config.aoi is not None:
            return self.config.aoi
        if self.config.points is None:
            raise InvalidInputError(
                f"{self.config.source or 'the run configuration'}: neither `aoi` nor `points` is given, so "
                "the area to process is unknown; add `aoi: [lon_min, lat_min, lon_max, lat_max]`."
            )
        pts = self.config.read_points(validate=False)
        lon, lat = pts["longitude"].to_numpy(), pts["latitude"].to_numpy()
        if "geometry" in pts.columns:  # polygons: their corners too
            import shapely

            xy = shapely.get_coordinates(pts["geometry"].dropna().to_numpy())
            lon, lat = np.concatenate([lon, xy[:, 0]]), np.concatenate([lat, xy[:, 1]])
        return points_bbox(lon, lat)

    @property
    def user_grid(self) -> tuple[str, float] | None:
        """The explicit grid ``(crs, resolution)`` of the config; None: the Sentinel-2 tile grid."""
        cfg = self.config
        if cfg.grid is not None and cfg.crs is not None:
            raise InvalidInputError(
                f"{cfg.source or 'config'}: both `grid:` and `crs:` are given; keep one "
                "(`grid: {crs: EPSG:..., resolution: ...}`)."
            )
        if cfg.grid is not None:
            return cfg.grid.crs, cfg.grid.resolution
        if cfg.crs is not None:
            return cfg.crs, cfg.resolution
        if cfg.resolution != 10:
            raise InvalidInputError(
                f"{cfg.source or 'config'}: resolution {cfg.resolution:g} needs a user grid; the "
                "Sentinel-2 tile grid is 10 m. Give `grid: {crs: EPSG:..., resolution: ...}`."
            )
        return None

    @property
    def geobox(self) -> GeoBox:
        """The whole AOI on the user grid (or on the UTM zone of its centre, for the Sentinel-2 grid)."""
        if self._geobox is None:
            crs, res = self.user_grid or (None, 10.0)
            self._geobox = aoi_geobox(self.aoi, crs=crs, resolution=res)
        return self._geobox

    @property
    def bbox_lonlat(self) -> tuple[float, float, float, float]:
        """The AOI bounds in lon/lat, for STAC searches."""
        area = self.geobox.extent if self.user_grid else aoi_geometry(self.aoi)
        b = area.to_crs("EPSG:4326").boundingbox
        return (b.left, b.bottom, b.right, b.top)

    @property
    def units(self) -> Mapping[str, Unit]:
        """Processing units by id (see :mod:`lcstack.plan`); the Sentinel-2 grid needs discovery first."""
        if self._units is None:
            grid = self.user_grid
            if grid is None:
                self.discover()  # sets the units of the tiles found
            else:
                res, size = grid[1], self.config.tile_size
                self._units = user_units(self.aoi, grid[0], resolution=res, tile_size=size)
        return dict(self._units or {})

    @property
    def s2_footprints(self) -> Mapping[str, GeoBox]:
        """Every Sentinel-2 tile processed -> its native grid (empty on a user grid); needs discovery."""
        if self.user_grid is None:
            self.discover()
        return dict(self._s2_footprints)

    @property
    def tiles(self) -> Mapping[str, GeoBox]:
        """The grid of every processing unit, by unit id (``30SYJ``, ``30SYJ_r000c001``, ``E..N..``)."""
        return {uid: unit.geobox for uid, unit in self.units.items()}

    @property
    def chunks(self) -> dict[str, int]:
        """Spatial chunk size: the config's ``chunk_size``, or one chosen from the memory budget."""
        size = self.config.chunk_size or auto_chunk_size(
            self.settings.memory_budget,
            n_time=self.config.max_scenes_per_season,
            n_features=len(self.seasons) * _season_layers(self.config.features) + 3,
        )
        return {"x": size, "y": size}

    # ------------------------------------------------------------------------------------ steps
    def preflight(self, *, write: bool = True) -> None:
        """Check the registry and every storage location before any work starts."""
        self.registry.ping()
        self.storage.check(write=write)

    def discover(self) -> dict[str, dict[str, list[Any]]]:
        """Find the scenes of every tile and season and record them; tile -> season -> scenes.

        Each Sentinel-2 tile under the AOI gets its own best scenes
        (:func:`lcstack.discover.discover_tile_scenes`), on a user grid too: a user-grid unit reads the
        chosen scenes of every tile over it.
        """
        from .discover import discover_tile_scenes

        if self._scenes is not None:
            return self._scenes
        cfg = self.config
        source = self._open_stac()
        limits = {
            "max_cloud_cover": cfg.max_cloud_cover,
            "max_scenes": cfg.max_scenes_per_season,
            "min_valid_fraction": cfg.min_valid_fraction,
        }
        tiles, scenes = discover_tile_scenes(
            source, cfg.collection, self.aoi, self.seasons, tile_size=cfg.tile_size,
            on_missing=cfg.on_missing, **limits,
        )  # fmt: skip
        if self.user_grid is None:
            self._s2_footprints = {t: s2tile.geobox for t, s2tile in tiles.items()}
            self._units = s2_units(tiles, cfg.tile_size)
        self._record_scenes(scenes)
        self._scenes = scenes
        return scenes

    def _record_scenes(self, scenes: Mapping[str, Mapping[str, Sequence[Any]]]) -> None:
        for tile, seasons in scenes.items():
            for season, infos in seasons.items():
                for info in infos:
                    self.registry.put(
                        "scenes",
                        info.item.id,
                        {
                            "collection": self.config.collection,
                            "datetime": str(info.item.datetime),
                            "cloud_cover": info.cloud_cover,
                            "valid_fraction": info.valid_fraction,
                            "season": season,
                            "tile": tile,
                            "stac": redact(self.config.stac),
                            "status": "complete",
                        },
                    )

    def _dem_items(self) -> list[Any]:
        from .discover import discover_dem

        if not self.config.dem_collection:
            return []
        return discover_dem(self._open_stac(), self.config.dem_collection, self.bbox_lonlat)

    def _open_stac(self) -> Any:
        """Open the STAC source with the headers and URL signing of ``stac:``.

        A static catalog on object storage is read with the storage's options (endpoint, credentials).
        """
        from .discover import open_source
        from .signing import client_modifier

        src = self.config.stac_source
        opts = None
        if self.config.stac.startswith(("s3://", "gs://", "az://", "abfs://")):
            opts = {**self.settings.storage_options(self.config.stac), **self.config.storage_options}
        return open_source(
            self.config.stac,
            headers=src.headers if src is not None else None,
            storage_options=opts,
            modifier=client_modifier(src),
        )

    def _composite_params(self) -> dict[str, Any]:
        return {
            "bands": list(self.config.bands) if self.config.bands else None,
            "indices": list(self.config.indices) if self.config.indices is not None else None,
            "mask_classes": list(self.config.mask.classes),
            "dilation_m": self.config.mask.dilation_m,
            "loader": self.config.loader,
            "lcstack": __version__,
            # only a feature set other than the default changes the keys (default stores stay reusable)
            **(
                {} if self.config.features.is_landcoverpy else {"features": self.config.features.model_dump()}
            ),
        }

    def composite_plan(self) -> list[PlannedOutput]:
        """Every composite of the run (seasons and terrain of every unit), planned once per run."""
        if self._plan is None:
            self._plan = self._make_composite_plan()
            self._record_plan(self._plan)
        return list(self._plan)

    def _make_composite_plan(self) -> list[PlannedOutput]:
        from . import plan

        scenes = self.discover()
        dem = self._dem_items() if self.config.dem_collection else None
        selection = plan.composite_selection(self.units, scenes, dem)
        for _, season, items in selection:
            self._fingerprint(items, (lambda item: ["data"]) if season == "terrain" else self._scene_assets)
        return plan.plan_composites(
            selection,
            self.seasons,
            params=self._composite_params(),
            scene_assets=self._scene_assets,
            fingerprints=self._fingerprints,
            storage=self.storage,
            version=__version__,
        )

    def _scene_assets(self, item: Any) -> list[str]:
        """Asset keys of ``item`` a seasonal composite reads: its bands (the config's or all) and SCL."""
        from .composite import _read_assets

        return _read_assets(item, self.config.bands)

    def _fingerprint(self, items: Sequence[Any], assets_of: Any) -> None:
        """Fingerprint every asset of ``items`` that ``assets_of`` names (see ``asset_fingerprints``).

        The fingerprint (``file:checksum``, else size + modification time or ETag) changes when an
        asset's pixels are rewritten under an unchanged item, so a key resting on it never reuses a stale
        output. One stat per asset, remembered for the whole run; no pixel is read.
        """
        from .discover import asset_fingerprints
        from .plan import asset_hrefs

        new = [w for w in asset_hrefs(items, assets_of) if w[2] and w[2] not in self._fingerprints]
        if new:
            self._fingerprints.update(
                asset_fingerprints(
                    [w[2] for w in new],
                    checksums={w[2]: w[3].extra_fields.get("file:checksum") for w in new},
                    storage_options=self.settings.storage_options("s3://"),
                )
            )

    def _is_complete(self, kind: str, key: str, url: str) -> bool:
        rec = self.registry.get(kind, key)
        return bool(rec and rec.get("status") == "complete" and self.storage.exists(url))

    def _concurrency(self, n_jobs: int) -> int:
        """How many outputs to write at once: several on a distributed cluster, one otherwise."""
        from .progress import _client

        if n_jobs <= 1 or _client() is None:
            return 1
        return min(n_jobs, self.config.dask.concurrent_outputs or 8)

    def _run_jobs(
        self, jobs: Sequence[Any], fn: Any, *, desc: str, progress: bool | None = None
    ) -> list[Any]:
        """Run ``fn(job)`` for every job, several at once on a distributed cluster; results in job order.

        Each job writes its own output and records it complete on its own, so when one fails the others
        still finish (nothing already written is lost) and the first error is raised afterwards.
        """
        progress = self.progress if progress is None else progress
        workers = self._concurrency(len(jobs))
        if workers == 1:
            return [fn(job) for job in progress_iter(jobs, desc=desc, progress=progress)]
        from concurrent.futures import ThreadPoolExecutor, as_completed

        results: dict[int, Any] = {}
        errors: list[tuple[int, BaseException]] = []
        logger.info("%s: writing %d outputs, %d at a time", desc, len(jobs), workers)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="lcstack-output")
        try:
            futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
            done = as_completed(futures)
            for fut in progress_iter(done, desc=desc, progress=progress, total=len(futures)):
                i = futures[fut]
                try:
                    results[i] = fut.result()
                except Exception as exc:  # noqa: BLE001 - re-raised below, once all jobs ended
                    errors.append((i, exc))
        except BaseException:
            # Ctrl-C: outputs not started are dropped; those being written finish and are recorded
            # complete (or stay pending), so a re-run picks up from there.
            logger.warning("%s: interrupted; waiting for the outputs being written", desc)
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if errors:
            errors.sort(key=lambda e: e[0])
            if len(errors) > 1:
                logger.error("%s: %d outputs failed; raising the first", desc, len(errors))
            raise errors[0][1]
        return [results[i] for i in range(len(jobs))]

    def composite(self) -> list[StepResult]:
        """Compute and store every seasonal composite (and terrain) of every tile not already complete.

        On a distributed cluster the composites of all tiles and seasons are written concurrently (up to
        ``dask.concurrent_outputs`` at once), so the workers never wait for the tail of one output.
        """
        results: dict[str, StepResult] = {}
        todo = []
        for p in self.composite_plan():
            if self._is_complete("composites", p.key, p.url):
                logger.info("composite %s/%s is complete: reused", p.unit, p.season)
                results[p.key] = StepResult(
                    "composite", p.key, p.url, True, {"tile": p.unit, "season": p.season}
                )
            else:
                todo.append(p)
        inner_bars = self.progress and self._concurrency(len(todo)) == 1
        written = self._run_jobs(
            todo, lambda p: self._write_composite(p, progress=inner_bars), desc="composites"
        )
        results.update({r.key: r for r in written})
        return [results[p.key] for p in self.composite_plan()]

    def _write_composite(self, planned: PlannedOutput, *, progress: bool) -> StepResult:
        tile_id, season, key, url = planned.unit, str(planned.season), planned.key, planned.url
        gbox = self.tiles[tile_id]
        skipped: list[dict[str, str]] = []
        items = self._readable_items(season, list(planned.items), skipped)
        doc = {
            "items": list(planned.inputs),
            "s2_tile": planned.s2_tile,
            "tile": tile_id,
            "season": season,
            "params": self._composite_params(),
        }
        claim = self._acquire("composites", key, url, doc)
        if claim is None:
            logger.info("composite %s/%s was written meanwhile by another run: reused", tile_id, season)
            return StepResult("composite", key, url, True, {"tile": tile_id, "season": season})
        with claim:
            t0 = time.perf_counter()
            items = self._compute_composite(
                tile_id, season, key, url, items, gbox, skipped, progress=progress
            )
            if season != "terrain":
                self._check_clear(tile_id, season, key, url, items)
            seconds = round(time.perf_counter() - t0, 3)
            claim.complete({"seconds": seconds, **({"skipped": skipped} if skipped else {})})
        logger.info("composite %s/%s written to %s in %.1f s", tile_id, season, redact(url), seconds)
        return StepResult("composite", key, url, False, {"tile": tile_id, "season": season})

    def _compute_composite(
        self,
        tile_id: str,
        season: str,
        key: str,
        url: str,
        items: list[Any],
        gbox: GeoBox,
        skipped: list[dict[str, str]],
        *,
        progress: bool,
    ) -> list[Any]:
        """Write the composite; a scene whose read fails inside a task is skipped (or raised). Items used."""
        from .composite import seasonal_composite
        from .signing import sign_items, signer_for
        from .terrain import load_terrain

        # signed when each graph is built, so workers get fresh tokens and need no key
        signer = signer_for(self.config.stac_source)
        while True:
            if season == "terrain":
                # all terrain bands of a chunk in one Zarr chunk, as the seasonal composites have
                ds = load_terrain(sign_items(items, signer), gbox, chunks=self.chunks).chunk({"band": -1})
            else:
                ds = seasonal_composite(
                    sign_items(items, signer),
                    gbox,
                    season=season,
                    bands=self.config.bands,
                    mask_classes=self.config.mask.classes,
                    dilation_m=self.config.mask.dilation_m,
                    chunks=self.chunks,
                    loader=self.config.loader,
                    fuse_chunks=True,
                    features=self.config.features,
                    **({"indices": self.config.indices} if self.config.indices is not None else {}),
                )
            ds.attrs["lcstack_key"] = key
            try:
                self.storage.write_zarr(ds, url, progress=progress, desc=f"{tile_id} {season}")
                return items
            except AssetError as err:  # a read failed inside a task: skip that scene, or fail
                problem = AssetProblem(err.item or "", err.asset or "", err.href or "", err.why or str(err))
                items = self._skip_scenes(season, items, [problem], skipped, err)

    def _check_clear(self, tile_id: str, season: str, key: str, url: str, items: list[Any]) -> None:
        """Refuse (store and record removed) a seasonal composite without a single clear pixel."""
        from .composite import no_clear_pixel_error

        if int(self.storage.open_zarr(url)["valid_count"].max().compute()) > 0:
            return
        self.storage.remove(url)
        self.registry.delete("composites", key)
        raise no_clear_pixel_error(
            items,
            self.tiles[tile_id],
            season=season,
            where=f" on tile {tile_id}" if len(self.tiles) > 1 else "",
            mask_classes=self.config.mask.classes,
            max_cloud_cover=self.config.max_cloud_cover,
            min_valid_fraction=self.config.min_valid_fraction,
            chunks=self.chunks,
        )

    def _readable_items(self, season: str, items: list[Any], skipped: list[dict[str, str]]) -> list[Any]:
        """``items`` after checking the assets to be read (see ``check_assets``), before any graph."""
        assets_of = (lambda _: ["data"]) if season == "terrain" else self._scene_assets
        problems = check_assets(items, assets_of, self._fingerprints)
        if not problems:
            return items
        return self._skip_scenes(season, items, problems, skipped, None)

    def _skip_scenes(
        self,
        season: str,
        items: list[Any],
        problems: list[AssetProblem],
        skipped: list[dict[str, str]],
        err: BaseException | None,
    ) -> list[Any]:
        """Drop the scenes of ``problems`` with a warning (``on_error: skip-scene``), or raise."""
        bad = {p.item for p in problems}
        if self.config.on_error != "skip-scene" or season == "terrain" or not bad & {i.id for i in items}:
            if err is not None:
                raise err
            raise asset_error(problems[0], season=season, more=len(problems) - 1)
        for p in problems:
            warnings.warn(
                f"season {season!r}: scene {p.item!r} left out (on_error: skip-scene): asset {p.asset!r} "
                f"{p.href or '(no href)'}: {p.why}.",
                SkippedScenesWarning,
                stacklevel=3,
            )
            skipped.append({"item": p.item, "asset": p.asset, "href": p.href, "why": p.why})
        left = [i for i in items if i.id not in bad]
        if not left:
            raise NoScenesFoundError(
                f"season {season!r}: every scene has an unreadable asset ({', '.join(sorted(bad))}); "
                "fix or re-download the files, or widen the season so that other scenes are found."
            )
        return left

    def features(self, tile_id: str) -> xr.DataArray:
        """Return the feature cube of one tile, read lazily from the stored composites."""
        from .features import open_feature_cube

        plan = [p for p in self.composite_plan() if p.unit == tile_id]
        missing = [str(p.season) for p in plan if not self._is_complete("composites", p.key, p.url)]
        if missing:
            raise StorageError(
                f"tile {tile_id}: composites {', '.join(missing)} are not complete; "
                "run `lcstack composite` first."
            )
        seasonal = {p.season: p.url for p in plan if p.season != "terrain"}
        ordered = {s: seasonal[s] for s in self.seasons if s in seasonal}
        terrain = next((p.url for p in plan if p.season == "terrain"), None)
        return self.storage._call(
            lambda: open_feature_cube(ordered, terrain, storage_options=self.storage.storage_options),
            "open the composites",
            next(iter(ordered.values())),
        )

    def _composite_keys(self) -> list[str]:
        return sorted(p.key for p in self.composite_plan())

    # ------------------------------------------------------------------------------------ train
    def dataset_key(self) -> str:
        """Identity of the training table: points, labels and composites it was extracted from."""
        cfg = self.config
        if cfg.points is None:
            cfg.read_points()  # raises: says that `points:` is missing and what it is for
        files = [cfg.points, cfg.lc_labels] + ([cfg.sl_labels] if cfg.sl_labels else [])
        key: dict[str, Any] = {
            "files": [hashlib.sha256(p.read_bytes()).hexdigest() for p in files],
            "composites": self._composite_keys(),
        }
        if cfg.points_per_polygon is not None:  # left out when unset: the keys of existing datasets hold
            key["points_per_polygon"] = cfg.points_per_polygon
        return _digest(key)

    def samples(self) -> tuple[pd.DataFrame, StepResult]:
        """Extract (or reuse) the training table."""
        from .samples import read_samples, write_samples

        key = self.dataset_key()
        url = self.storage.url("datasets", f"dataset_{key}.parquet")
        claim = None if self._is_complete("datasets", key, url) else self._acquire("datasets", key, url, {})
        if claim is None:
            return read_samples(url, storage_options=self.storage.storage_options), StepResult(
                "dataset", key, url, True
            )
        with claim:
            table = self._extract_table()
            write_samples(table, url, storage_options=self.storage.storage_options)
            claim.complete({"n_samples": int(len(table)), "points": str(self.config.points.name)})
        return table, StepResult("dataset", key, url, False, {"n_samples": int(len(table))})

    def _extract_table(self) -> pd.DataFrame:
        """Extract the training table from every tile, checking the points left out and empty classes."""
        from .samples import cap_polygon_samples, extract_samples

        points = self.config.read_points()
        lc = self.config.read_lc_labels()
        sl = self.config.read_sl_labels()
        tables, placed = [], np.zeros(len(points), dtype=bool)
        skipped_nodata: list[int] = []
        lon, lat = points["longitude"].to_numpy(), points["latitude"].to_numpy()
        planned = {p.unit for p in self.composite_plan()}
        units = {u: unit for u, unit in self.units.items() if u in planned}
        geoms = points["geometry"].to_numpy() if "geometry" in points.columns else None
        per_polygon = self.config.points_per_polygon
        for tile_id, inside in points_of_units(lon, lat, units, self._s2_footprints, geoms).items():
            placed |= inside
            if not inside.any():
                continue
            cube = self.features(tile_id)
            kw = {"points_per_polygon": per_polygon, "owns": unit_owns(units[tile_id], self._s2_footprints)}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SkippedPointsWarning)
                try:
                    st = extract_samples(cube, points[inside], lc_labels=lc, sl_labels=sl, **kw)
                except InvalidInputError:
                    # a category emptied within this tile may have samples elsewhere; checked below
                    st = extract_samples(
                        cube, points[inside], lc_labels=lc, sl_labels=sl, check_empty=False, **kw
                    )
            tables.append(st.table)
            skipped_nodata += list(st.skipped_nodata)
        table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
        if per_polygon is not None and not table.empty:
            table = cap_polygon_samples(table, per_polygon)
        outside = points.loc[~placed, "line"].tolist()
        if outside or skipped_nodata:
            warnings.warn(
                f"{self.config.points}: left out {len(outside)} point(s) outside the area{_lines(outside)} "
                f"and {len(skipped_nodata)} on nodata pixels{_lines(skipped_nodata)}.",
                SkippedPointsWarning,
                stacklevel=2,
            )
        if table.empty:
            raise InvalidInputError(
                f"{self.config.points}: none of the {len(points)} points falls on valid pixels of the area "
                f"{self.bbox_lonlat}; check the `aoi` and that the points are in lon/lat (WGS 84)."
            )
        have = set(table["category_name"])
        empty = sorted(set(points["category"]) - have)
        if empty:
            raise InvalidInputError(
                f"{self.config.points}: category {', '.join(map(repr, empty))} has no usable sample after "
                "leaving out points outside the area or on nodata pixels; add points for it inside the area."
            )
        return table.sort_values("line", kind="stable").reset_index(drop=True)

    def model_key(self) -> str:
        """Identity of the model: training table + model options + lcstack version (or `use_model`'s)."""
        if self._external_model is not None:
            return self._external_model[0]
        # options added later are left out while at their default, so the keys of existing models stay
        opts = self.config.model
        later = ("cv", "class_weight", "rebalance", "search", "select", "importance_repeats", "trusted_types")
        model = opts.model_dump(
            exclude={k for k in later if getattr(opts, k) == type(opts).model_fields[k].default}
        )
        return _digest({"dataset": self.dataset_key(), "model": model, "v": __version__})

    def model_url(self) -> str:
        """Where the model artefact of this run lives."""
        if self._external_model is not None:
            return self._external_model[1]
        return self.storage.url("models", f"model_{self.model_key()}")

    def train(self) -> StepResult:
        """Train (or reuse) the hierarchical classifier and evaluate it on a location-based split."""
        from .training import train_model

        key = self.model_key()
        url = self.model_url()
        claim = None if self._is_complete("models", key, url) else self._acquire("models", key, url, {})
        if claim is None:
            logger.info("model %s is complete: reused", key)
            return StepResult("train", key, url, True)
        with claim:
            table, ds_result = self.samples()
            report = train_model(
                table,
                url,
                lc_labels=self.config.read_lc_labels(),
                sl_labels=self.config.read_sl_labels(),
                options=self.config.model,
                dataset_key=ds_result.key,
                storage_options=self.storage.storage_options,
            )
            level1 = report["metrics"]["level1"]
            claim.complete(
                {
                    "dataset": ds_result.key,
                    "features": report["features"],
                    "metrics": {"overall_accuracy": level1["overall_accuracy"], "kappa": level1["kappa"]},
                }
            )
        return StepResult("train", key, url, False, {"metrics": report["metrics"]})

    # ------------------------------------------------------------------------------------ models
    def use_model(self, ref: str) -> str:
        """Classify with a model trained elsewhere instead of this config's own (no training, no points).

        Parameters
        ----------
        ref : str
            A model artefact folder (local path or URL), or the key of a model in this config's registry
            (``lcstack models CONFIG`` lists them; ``model_<key>`` works too).

        Returns
        -------
        str
            The model's URL. Its maps go to ``classification-maps/model_<key>/``, ``key`` being the
            registry key, or the first 16 digits of the artefact's ``model_sha256`` for a folder.

        Raises
        ------
        InvalidInputError
            ``ref`` is neither a model folder nor a registry key, or the model's classes are not in this
            config's label files.

        """
        from .classify import _read_model_metadata

        key, url = self._resolve_model(ref)
        metadata, _ = _read_model_metadata(url, self.storage.storage_options)
        key = key or str(metadata.get("model_sha256", ""))[:16] or _digest(url)
        self._check_external_labels(metadata, url)
        self._external_model = (key, url, metadata)
        logger.info("classifying with the model %s (%s)", key, redact(url))
        return url

    def _resolve_model(self, ref: str) -> tuple[str | None, str]:
        """(registry key or None, URL) of a model reference: a registry key, a URL or a local folder."""
        key = ref.removeprefix("model_")
        rec = self.registry.get("models", key) if "/" not in ref and "://" not in ref else None
        if rec is not None and rec.get("status") == "complete":
            urls = self._record_urls("models", rec)
            if urls and self.storage.exists(urls[0]):
                return key, urls[0]
        if "://" in ref:
            return None, ref
        if Path(ref).expanduser().is_dir():
            return None, str(Path(ref).expanduser().resolve())
        raise InvalidInputError(
            f"--model {ref!r} is neither a model folder (path or URL) nor the key of a complete model in the "
            f"registry of {self.config.source or 'this config'}; `lcstack models CONFIG` lists the models."
        )

    def _check_external_labels(self, metadata: Mapping[str, Any], url: str) -> None:
        ours = self.config.read_lc_labels()
        theirs = {str(k): int(v) for k, v in (metadata.get("lc_labels") or {}).items()}
        differ = sorted(f"{k}={v}" for k, v in theirs.items() if ours.get(k) != v)
        if differ:
            raise InvalidInputError(
                f"the model {redact(url)} predicts level-1 classes that {self.config.lc_labels} does not "
                f"define with the same codes: {', '.join(differ)}. Use the label files the model was "
                "trained with."
            )

    def _check_external_features(self) -> None:
        """Check every unit's feature cube against the external model before any map is written."""
        from .errors import ModelMismatchError

        _, url, metadata = self._external_model
        expected = [str(f) for f in metadata.get("feature_names", metadata.get("features")) or []]
        for unit in dict.fromkeys(p.unit for p in self.composite_plan()):
            have = [str(f) for f in self.features(unit)["feature"].values]
            missing = [f for f in expected if f not in have]
            if missing:
                raise ModelMismatchError(
                    f"the model {redact(url)} needs {len(missing)} feature(s) that the composites of "
                    f"{unit} lack: {', '.join(missing)}. Build the composites with the seasons, bands, "
                    "indices and terrain the model was trained on (its metadata.json lists them)."
                )

    def models(self) -> list[dict[str, Any]]:
        """List the complete models of this config's registry under this storage, newest first.

        Returns
        -------
        list of dict
            ``key``, ``url``, ``created_at``, ``estimator``, ``features``, ``classes`` (level-1 and
            level-2 label maps), ``metrics`` (held-out level-1/level-2 overall accuracy, kappa and macro F1,
            and the cross-validation means when recorded) and ``n_samples``.

        """
        out = []
        for rec in self.registry.find("models", status="complete"):
            urls = [u for u in self._record_urls("models", rec) if self._owned(rec)]
            meta_url = self.storage.join(urls[0], "metadata.json") if urls else None
            if meta_url is None or not self.storage.exists(meta_url):
                continue
            meta = json.loads(self.storage.read_bytes(meta_url))
            out.append(_model_summary(rec["key"], urls[0], meta))
        return sorted(out, key=lambda m: str(m["created_at"]), reverse=True)

    def maps(self) -> list[dict[str, Any]]:
        """Return the complete ``maps`` records of this config's own plan, in plan order.

        Other runs sharing the storage (another area, other smoothing or layers) may have written maps
        with the same model; only those of this config's map jobs are returned. Pass a record to
        :meth:`map_urls` for its files.
        """
        out = []
        for p in self._map_jobs(self.model_key()):
            rec = self.registry.get("maps", p.key)
            if rec is not None and self._is_complete("maps", p.key, p.files["level2"]):
                out.append(rec)
        return out

    # ------------------------------------------------------------------------------------ classify
    def classify(self) -> list[StepResult]:
        """Classify every tile with the run's model; write level-1/level-2 maps as Zarr and COG.

        On a distributed cluster the tiles are classified concurrently (up to ``dask.concurrent_outputs``
        at once) and the two COGs of a tile are written at the same time.
        """
        model_key = self.model_key()
        model_url = self.model_url()
        if self._external_model is not None:
            self._check_external_features()
        elif not self._is_complete("models", model_key, model_url):
            raise StorageError("no complete model for this config; run `lcstack train` first.")
        results: dict[str, StepResult] = {}
        todo = []
        for p in self._map_jobs(model_key):
            if self._is_complete("maps", p.key, p.files["level2"]):
                results[p.unit] = StepResult("classify", p.key, p.url, True, {"tile": p.unit})
            else:
                todo.append(p)
        labels = (self.config.read_lc_labels(), {"unclassified": 1, **(self.config.read_sl_labels() or {})})
        inner_bars = self.progress and self._concurrency(len(todo)) == 1
        written = self._run_jobs(
            todo,
            lambda p: self._write_maps(
                p, model_key=model_key, model_url=model_url, labels=labels, progress=inner_bars
            ),
            desc="maps",
        )
        results.update({r.details["tile"]: r for r in written})
        return [results[t] for t in dict.fromkeys(p.unit for p in self.composite_plan()) if t in results]

    def _map_jobs(self, model_key: str) -> list[PlannedOutput]:
        """Plan the maps of every unit with composites (:func:`lcstack.plan.plan_maps`).

        The units come from the composite plan, so this works offline from a recorded plan too.
        """
        from .plan import plan_maps

        smoothing = self.config.smoothing.model_dump() if self.config.smoothing else None
        layers = self.config.classify.model_dump(exclude_defaults=True)
        return plan_maps(self.composite_plan(), model_key, self.storage, smoothing=smoothing, classify=layers)

    def _write_maps(
        self,
        planned: PlannedOutput,
        *,
        model_key: str,
        model_url: str,
        labels: tuple[dict[str, int], dict[str, int]],
        progress: bool,
    ) -> StepResult:
        tile_id, key, base, urls = planned.unit, planned.key, planned.url, dict(planned.files)
        doc = {
            "tile": tile_id,
            "s2_tile": self.units[tile_id].tile,
            "model": model_key,
            "paths": {k: self._where("maps", u) for k, u in urls.items()},
        }
        claim = self._acquire("maps", key, urls["level2"], doc)
        if claim is None:
            logger.info("maps of tile %s were written meanwhile by another run: reused", tile_id)
            return StepResult("classify", key, base, True, {"tile": tile_id})
        with claim:
            self._compute_maps(tile_id, urls, model_url=model_url, labels=labels, progress=progress)
            claim.complete()
        return StepResult("classify", key, base, False, {"tile": tile_id})

    def _compute_maps(
        self,
        tile_id: str,
        urls: dict[str, str],
        *,
        model_url: str,
        labels: tuple[dict[str, int], dict[str, int]],
        progress: bool,
    ) -> None:
        from .classify import classify as classify_cube
        from .classify import write_maps_zarr
        from .cog import write_cog

        cube = self.features(tile_id)
        if self.config.smoothing is None:
            maps = classify_cube(
                cube,
                model_url,
                storage_options=self.storage.storage_options,
                trusted_types=self.config.model.trusted_types,
                probabilities=self.config.classify.probabilities,
            )
        else:
            maps = self._smoothed_maps(tile_id, cube, model_url)
        maps = self._owned_only(tile_id, maps)
        write_maps_zarr(maps, urls["zarr"], storage=self.storage, progress=progress)
        stored = self.storage.open_zarr(urls["zarr"])
        cogs: list[tuple[xr.DataArray, str, Any]] = [(stored["level1"], urls["level1"], labels[0])]
        if "level2" in stored:
            cogs.append((stored["level2"], urls["level2"], labels[1]))
        if "valid_seasons" in stored:  # seasons with a valid observation: where a class rests on fewer
            cogs.append((stored["valid_seasons"], urls["valid_seasons"], None))
        layers = [(stored[k], u, "layer") for k, u in urls.items() if k in PROBA_FILES and k in stored]
        # On a cluster the COGs (block reads, overviews, deflate: GDAL releases the GIL) are built
        # side by side.
        self._run_jobs(
            cogs + layers,
            lambda c: (
                _write_layer(c[0], c[1], self.storage)
                if c[2] == "layer"
                else write_cog(c[0], c[1], labels=c[2], storage=self.storage)
            ),
            desc="COGs",
            progress=False,
        )

    def _smoothed_maps(self, unit_id: str, cube: xr.DataArray, model_url: str) -> xr.Dataset:
        """Classify a unit with a halo from its neighbouring units, smooth, and cut the halo off again.

        The windows then see across sub-tile borders as they do inside a unit, so the units' smoothed
        maps join without seams; smoothing comes before ``_owned_only``, so the windows also see the
        neighbouring Sentinel-2 tile's overlap.
        """
        from .classify import UNCERTAINTY_LAYERS
        from .classify import classify as classify_cube
        from .smooth import smooth_halo, smooth_maps

        res = abs(float(self.units[unit_id].geobox.resolution.x))
        halo = smooth_halo(self.config.smoothing, res)
        padded = self._with_halo(unit_id, cube, halo)
        # bayes and gaussian smooth the level-1 probabilities, from the same tasks as the maps
        wanted = self.config.classify.probabilities
        needed = wanted or self.config.smoothing.method != "majority"
        maps = classify_cube(
            padded,
            model_url,
            storage_options=self.storage.storage_options,
            trusted_types=self.config.model.trusted_types,
            probabilities=needed,
        )
        proba = maps["level1_proba"] if needed else None
        classes = proba["class"].values if proba is not None else None
        maps = smooth_maps(maps, self.config.smoothing, proba=proba, classes=classes, resolution=res)
        if needed and not wanted:
            maps = maps.drop_vars(["level1_proba", *UNCERTAINTY_LAYERS, "class", "class_name"])
        if padded is not cube:
            maps = maps.isel(y=slice(halo, -halo), x=slice(halo, -halo))
            maps = maps.chunk({"y": cube.chunks[1], "x": cube.chunks[2]}) if cube.chunks else maps
        return maps

    def _with_halo(self, unit_id: str, cube: xr.DataArray, halo: int) -> xr.DataArray:
        """Grow the unit's feature cube by ``halo`` pixels, filled from the neighbouring units of its grid."""
        unit = self.units[unit_id]
        grown = unit.geobox.pad(halo)
        near = [
            uid
            for uid, other in self.units.items()
            if uid != unit_id
            and other.tile == unit.tile
            and other.geobox.crs == unit.geobox.crs
            and other.geobox.extent.intersects(grown.extent)
        ]
        if not near:
            return cube
        res = abs(float(unit.geobox.resolution.x))
        coords = grown.coords
        sizes = {"feature": -1, **({"y": cube.chunks[1][0], "x": cube.chunks[2][0]} if cube.chunks else {})}
        out = cube.pad(y=(halo, halo), x=(halo, halo)).assign_coords(
            y=coords["y"].values, x=coords["x"].values
        )
        out = out.chunk(sizes)
        for uid in near:
            piece = self.features(uid)
            piece = piece.sel(
                y=slice(float(out.y[0]), float(out.y[-1])), x=slice(float(out.x[0]), float(out.x[-1]))
            )
            # the piece's place in the grown grid (both are windows of one grid), padded to its size
            r0 = round((float(out.y[0]) - float(piece.y[0])) / res)
            c0 = round((float(piece.x[0]) - float(out.x[0])) / res)
            piece = piece.pad(
                y=(r0, out.sizes["y"] - r0 - piece.sizes["y"]), x=(c0, out.sizes["x"] - c0 - piece.sizes["x"])
            ).assign_coords(y=out.y, x=out.x)
            out = out.fillna(piece.chunk(dict(out.chunksizes)))  # same chunks: one task per chunk
        return out

    def _owned_only(self, unit_id: str, maps: xr.Dataset) -> xr.Dataset:
        """Set the pixels of a unit that its Sentinel-2 tile does not own to 0 (nodata), lazily per chunk.

        Every AOI pixel then has a class in exactly one tile's maps (``lcstack.s2grid.ownership_mask``).
        """
        from .s2grid import ownership_mask

        unit = self.units[unit_id]
        if unit.tile is None:
            return maps
        first = maps["level1"]
        chunks = first.chunks if first.chunks is not None else None
        mask = ownership_mask(unit.tile, self._s2_footprints, unit.geobox, chunks=self.chunks["x"])
        if chunks is not None:
            mask = mask.rechunk(chunks)
        owned = xr.DataArray(mask if chunks is not None else mask.compute(), dims=first.dims)
        out = maps.copy()
        for name, var in maps.data_vars.items():
            # probability and uncertainty layers have their own nodata (255)
            out[name] = var.where(owned, var.attrs.get("nodata", 0)).astype(var.dtype)
            out[name].attrs = var.attrs
            out[name].encoding = var.encoding
        return out

    # ------------------------------------------------------------------------------------ run
    def run(self, steps: Iterable[str] = STEPS) -> list[StepResult]:
        """Run the given steps in order; complete outputs are reused."""
        steps = list(steps)
        bad = [s for s in steps if s not in STEPS]
        if bad:
            raise InvalidInputError(f"unknown step(s) {bad}; the steps are {', '.join(STEPS)}.")
        self.preflight()
        out: list[StepResult] = []
        if "discover" in steps:
            self.discover()
        if "composite" in steps:
            out += self.composite()
        if "train" in steps:
            out.append(self.train())
        if "classify" in steps:
            out += self.classify()
        return out

    # ------------------------------------------------------------------------------------ records
    def _acquire(self, kind: str, key: str, url: str, doc: dict[str, Any]) -> Claim | None:
        """Claim output ``key`` for writing, waiting while another run writes it; None: reuse it.

        The record locates the output relative to this storage's folder of ``kind``, never absolutely,
        so a copied or moved storage folder (with its embedded registry) still finds its own outputs.
        """
        where = {} if "paths" in doc else {"path": self._where(kind, url)}
        return self.registry.acquire(
            kind,
            key,
            {**doc, **where, "storage": self._storage_id},
            usable=lambda rec: self.storage.exists(url),
        )

    def _where(self, kind: str, url: str) -> str:
        """``url`` relative to the storage folder of ``kind``, with ``/`` separators."""
        root = self.storage.layout[_FOLDER[kind]]
        if "://" in root and not root.startswith("file://"):
            return posixpath.relpath(url.split("://", 1)[1], root.split("://", 1)[1])
        return Path(os.path.relpath(url.removeprefix("file://"), root.removeprefix("file://"))).as_posix()

    def _inside(self, kind: str, url: str) -> bool:
        """Whether ``url`` lies strictly inside this storage's folder of ``kind`` (symlinks resolved)."""
        root = self.storage.layout[_FOLDER[kind]]
        if "://" in root and not root.startswith("file://"):
            scheme, path = root.split("://", 1)
            if not url.startswith(f"{scheme}://"):
                return False
            return posixpath.normpath(url.split("://", 1)[1]).startswith(posixpath.normpath(path) + "/")
        if "://" in url and not url.startswith("file://"):
            return False
        real = os.path.realpath(url.removeprefix("file://"))
        bounds = [root.removeprefix("file://")]
        if not os.path.isabs(self.config.layout.get(_FOLDER[kind], "")):
            bounds.append(self.storage.root.removeprefix("file://"))  # the kind folder itself may be a link
        return all(real.startswith(os.path.realpath(b) + os.sep) for b in bounds)

    def _locate(self, kind: str, rel: Any) -> str | None:
        """URL of a record's relative location under this storage; None when it would lie outside."""
        if not isinstance(rel, str) or not rel or rel.startswith("/") or "://" in rel or "\\" in rel:
            return None
        parts = rel.split("/")
        if any(part in ("", ".", "..") for part in parts):
            return None
        url = self.storage.url(_FOLDER[kind], *parts)
        return url if self._inside(kind, url) else None

    def _record_urls(self, kind: str, rec: dict[str, Any]) -> list[str]:
        """Where the output of ``rec`` lies under this storage (legacy absolute URLs only if inside it)."""
        rels = rec.get("paths") if isinstance(rec.get("paths"), dict) else {"": rec.get("path")}
        located = [self._locate(kind, rel) for rel in rels.values() if rel is not None]
        legacy = rec.get("urls") if isinstance(rec.get("urls"), dict) else {"": rec.get("url")}
        located += [u for u in legacy.values() if isinstance(u, str) and self._inside(kind, u)]
        outside = [u for u in legacy.values() if isinstance(u, str) and not self._inside(kind, u)]
        if outside:
            logger.warning(
                "%s/%s: the record points outside this storage (%s; a copied or moved storage?): left alone",
                kind,
                rec.get("key"),
                ", ".join(map(redact, outside)),
            )
        return [u for u in located if u is not None]

    def _owned(self, rec: dict[str, Any]) -> bool:
        """Whether ``rec`` belongs to this storage (every record of an embedded registry does)."""
        return self._embedded or rec.get("storage") == self._storage_id

    def map_urls(self, rec: dict[str, Any]) -> dict[str, str]:
        """Return the URLs (``zarr``, ``level1``, ``level2``) of a ``maps`` record under this storage."""
        paths = rec.get("paths") or {}
        located = {name: self._locate("maps", rel) for name, rel in paths.items()}
        located |= {n: u for n, u in (rec.get("urls") or {}).items() if self._inside("maps", u)}
        return {name: url for name, url in located.items() if url is not None}

    def plan_key(self) -> str:
        """Identity of what discovery plans for this config, computable offline.

        It leaves out the STAC endpoint (a mirror finds the same items) and the storage location
        (a copied storage keeps its plan), and keeps what selects scenes and shapes the grid.
        """
        fields = ("collection", "dem_collection", "bands", "indices", "max_cloud_cover")
        fields += ("max_scenes_per_season", "min_valid_fraction", "tile_size", "loader", "mask", "on_missing")
        seasons = {
            n: [str(s.start), str(s.end), [str(d) for d in s.dates or ()]] for n, s in self.seasons.items()
        }
        return _digest(
            {
                "config": self.config.model_dump(mode="json", include=set(fields)),
                "seasons": seasons,
                "grid": _grid_token(self.geobox) if self.user_grid else "sentinel-2",
                "aoi": str(aoi_geometry(self.aoi).json) if self.user_grid is None else None,
                "lcstack": __version__,
            }
        )

    def _record_plan(self, plan: Sequence[PlannedOutput]) -> None:
        composites = [
            {
                "tile": p.unit,
                "season": p.season,
                "key": p.key,
                "path": self._where("composites", p.url),
                "items": list(p.inputs),
                "s2_tile": p.s2_tile,
            }
            for p in plan
        ]
        self.registry.put("plans", self.plan_key(), {"composites": composites, "discovered_at": _now()})

    def _offline_plan(self) -> bool:
        """Take the plan of the last discovery from the registry (no STAC); False when none is recorded."""
        if self._plan is not None:
            return True
        rec = self.registry.get("plans", self.plan_key())
        if rec is None:
            return False
        plan = []
        for c in rec.get("composites", []):
            url = self._locate("composites", c.get("path"))
            if url is not None:
                inputs = tuple(c.get("items", []))
                plan.append(
                    PlannedOutput(
                        "composites", c["key"], url, c["tile"], c["season"], inputs, c.get("s2_tile")
                    )
                )
        self._plan = plan
        return True

    def status(self) -> dict[str, list[dict[str, Any]]]:
        """Report what is complete and what is pending for this config, from the registry alone.

        The composites are those of the config's last recorded discovery; an empty dict means that
        nothing has been discovered for this config yet.
        """
        if not self._offline_plan():
            return {}
        out: dict[str, list[dict[str, Any]]] = {"composites": [], "datasets": [], "models": [], "maps": []}
        for p in self.composite_plan():
            done = self._is_complete("composites", p.key, p.url)
            out["composites"].append({"tile": p.unit, "season": p.season, "key": p.key, "done": done})
        dkey, mkey = self.dataset_key(), self.model_key()
        dataset_url = self.storage.url("datasets", f"dataset_{dkey}.parquet")
        out["datasets"].append({"key": dkey, "done": self._is_complete("datasets", dkey, dataset_url)})
        out["models"].append({"key": mkey, "done": self._is_complete("models", mkey, self.model_url())})
        for p in self._map_jobs(mkey):
            out["maps"].append(
                {"tile": p.unit, "key": p.key, "done": self._is_complete("maps", p.key, p.files["level2"])}
            )
        return out

    def clean(self, what: str) -> int:
        """Remove outputs and their records together, only ever under this storage; return how many.

        ``maps`` and ``composites`` are those of this config; ``all`` is every output recorded for this
        storage (older configs' too), leftovers of killed writes and the folders left empty. Works
        offline, from the registry. Outputs being written by a live run are left alone.
        """
        if what not in ("composites", "maps", "all"):
            raise InvalidInputError(f"--what {what!r}: use composites, maps or all.")
        planned = self._offline_plan()
        n = 0
        if what in ("maps", "all") and planned:
            for p in self._map_jobs(self.model_key()):
                n += self._clean_output("maps", p.key, list(p.files.values()))
        if what in ("composites", "all") and planned:
            for p in self.composite_plan():
                n += self._clean_output("composites", p.key, [p.url])
        if what == "all":
            if planned:
                dkey = self.dataset_key()
                n += self._clean_output(
                    "datasets", dkey, [self.storage.url("datasets", f"dataset_{dkey}.parquet")]
                )
                n += self._clean_output("models", self.model_key(), [self.model_url()])
            for kind in ("maps", "models", "datasets", "composites"):
                for rec in self.registry.find(kind):
                    if self._owned(rec):
                        n += self._clean_output(kind, rec["key"], self._record_urls(kind, rec))
            self._sweep()
        return n

    def _clean_output(self, kind: str, key: str, urls: Sequence[str]) -> int:
        from .registry._claim import abandoned, describe_owner

        rec = self.registry.get(kind, key)
        if rec is not None and rec.get("status") == "pending" and not abandoned(rec):
            logger.warning("%s/%s is being written by %s: left alone", kind, key, describe_owner(rec))
            return 0
        removed = [self._remove(kind, url) for url in urls]
        if rec is not None and self._owned(rec):
            self.registry.delete(kind, key)
        return int(any(removed) or (rec is not None and self._owned(rec)))

    def _remove(self, kind: str, url: str) -> bool:
        """Remove ``url`` if it lies inside this storage's folder of ``kind``; refuse anything else."""
        if not self._inside(kind, url):
            logger.warning(
                "not removing %s: it lies outside the storage %s", redact(url), redact(self.storage.root)
            )
            return False
        return self.storage.remove(url)

    def _sweep(self) -> None:
        """Remove leftovers of killed writes and empty folders under the local storage folders."""
        for kind, folder in _FOLDER.items():
            root = self.storage.layout[folder]
            if "://" in root and not root.startswith("file://"):
                continue  # object stores have no folders; leftovers are overwritten by the next write
            root = root.removeprefix("file://")
            for here, dirs, _ in os.walk(root, topdown=False):
                for name in dirs:
                    path = os.path.join(here, name)
                    if ".tmp-" in name and self._inside(kind, path):
                        self._remove(kind, path)
                    elif self._inside(kind, path) and not os.listdir(path):
                        os.rmdir(path)
            if os.path.isdir(root) and not os.listdir(root) and self._inside(kind, os.path.join(root, "x")):
                os.rmdir(root)


def _write_layer(layer: xr.DataArray, url: str, storage: Storage) -> str:
    """Write a probability or uncertainty layer of ``maps.zarr`` as a COG (``cog.write_layer_cog``).

    ``level1_proba`` gets a band per class: description = class name, band tag ``class_code``, dataset
    tag ``LCSTACK_CLASSES`` (JSON name -> code); every band has ``units = percent``.
    """
    from .cog import write_layer_cog

    tags = {"LCSTACK_LAYER": str(layer.name), "units": "percent"}
    if "class" not in layer.dims:
        return write_layer_cog(layer, url, band_tags=[{"units": "percent"}], tags=tags, storage=storage)
    codes = [int(c) for c in layer["class"].values]
    names = [str(n) for n in layer["class_name"].values] if "class_name" in layer.coords else None
    names = names or [f"class_{c}" for c in codes]
    return write_layer_cog(
        layer,
        url,
        descriptions=names,
        band_tags=[{"class_code": str(c), "units": "percent"} for c in codes],
        tags={**tags, "LCSTACK_CLASSES": json.dumps(dict(zip(names, codes, strict=True)))},
        storage=storage,
    )


def _season_layers(features: Any) -> int:
    """Upper bound on one season's composite layers (24 for the median of the bands and indices)."""
    ctx = features.context
    return (
        24 * features.layers_per_band()
        + int(features.count)
        + (len(ctx.bands) * len(ctx.stats) if ctx else 0)
    )


def _model_summary(key: str, url: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Summarise one model's ``metadata.json`` for ``lcstack models``."""
    metrics = meta.get("metrics") or {}
    scores: dict[str, Any] = {}
    for level in ("level1", "level2"):
        if level in metrics:
            scores[level] = {k: metrics[level].get(k) for k in ("overall_accuracy", "kappa", "macro_f1")}
        cv = (metrics.get("cv") or {}).get(level)
        if cv:
            scores[f"cv_{level}"] = {k: cv[k]["mean"] for k in ("overall_accuracy", "kappa", "macro_f1")}
    return {
        "key": key,
        "url": url,
        "created_at": meta.get("created_at"),
        "estimator": meta.get("estimator"),
        "features": list(meta.get("feature_names", meta.get("features")) or []),
        "classes": {"level1": meta.get("lc_labels") or {}, "level2": meta.get("sl_labels") or {}},
        "metrics": scores,
        "n_samples": meta.get("n_samples"),
    }


def auto_chunk_size(memory_budget: str | int, *, n_time: int, n_features: int, fraction: float = 0.25) -> int:
    """Spatial chunk size (pixels a side) whose working set fits ``fraction`` of a worker's memory.

    The largest per-task working sets are the median (``n_time`` float32 observations per pixel, with the
    mask and a sorted copy) and the classification block (``n_features`` float32 per pixel, plus the
    row-major copy handed to the model and its class probabilities). Each is counted three times over for
    temporaries; a worker runs one task per thread, and the rest of the budget is dask's own headroom.
    The result is a multiple of 256 between 256 and 2048.
    """
    from dask.utils import parse_bytes

    budget = parse_bytes(memory_budget) if isinstance(memory_budget, str) else int(memory_budget)
    per_pixel = 3 * 4 * max(n_time * 2, n_features)
    side = int((budget * fraction / per_pixel) ** 0.5)
    return int(min(2048, max(256, side // 256 * 256)))


def _lines(lines: Sequence[int], shown: int = 5) -> str:
    if not lines:
        return ""
    more = ", ..." if len(lines) > shown else ""
    return " (lines " + ", ".join(map(str, lines[:shown])) + more + ")"
