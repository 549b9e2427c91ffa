"""Find Sentinel-2 scenes and DEM tiles in a STAC API or a static STAC catalog.

Both kinds of source give the same answer for the same filters: every filter (collection, bbox, date range,
cloud cover) is applied client-side after the search, because some servers ignore or reject parts of a
search (``rustac serve`` answers no items at all to a ``query``; it is sent only to servers that declare the
query extension). Results are sorted by (datetime, id) and asset hrefs are made absolute.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pystac
import pystac_client
import shapely.geometry
from pystac.stac_io import DefaultStacIO, StacIO
from pystac_client import ConformanceClasses

from lcstack.errors import InputFileNotFoundError, InvalidInputError, NoScenesFoundError

__all__ = [
    "FsspecStacIO",
    "SceneInfo",
    "asset_fingerprints",
    "discover_dem",
    "discover_scenes",
    "discover_tile_scenes",
    "open_source",
    "search_items",
]

logger = logging.getLogger(__name__)

Source = str | Path | pystac.Catalog
BBox = Sequence[float]
DateLike = dt.date | dt.datetime | str

_DEFAULT_PAGE_SIZE = 100


#: Extra field lcstack puts on an asset that came without ``href`` (its href is then ""): reading the item
#: must not fail for the whole catalog, and the asset check before loading names the item and asset.
MISSING_HREF = "lcstack:missing_href"


def _mark_missing_hrefs(d: dict[str, Any]) -> dict[str, Any]:
    """Item dict ``d`` with every asset lacking a string ``href`` marked (see :data:`MISSING_HREF`)."""
    assets = d.get("assets") if d.get("type") == "Feature" else None
    for asset in (assets or {}).values():
        if isinstance(asset, dict) and not isinstance(asset.get("href"), str):
            asset["href"] = ""
            asset[MISSING_HREF] = True
    return d


class LenientStacIO(DefaultStacIO):
    """pystac's ``DefaultStacIO`` that reads an item with an asset lacking ``href`` instead of failing.

    Such an asset gets ``href=""`` and the extra field :data:`MISSING_HREF`; lcstack checks the assets
    it reads before loading and reports (or skips, with ``on_error: skip-scene``) that item.
    """

    def stac_object_from_dict(
        self, d: dict[str, Any], href: Any = None, root: Any = None, preserve_dict: bool = True
    ) -> Any:
        """Deserialize ``d`` after marking its assets without href."""
        return super().stac_object_from_dict(_mark_missing_hrefs(d), href, root, preserve_dict)


class FsspecStacIO(LenientStacIO):
    """A pystac ``StacIO`` reading and writing any fsspec URL (``s3://``, ``gs://``, ``memory://``, ...).

    The bytes go through :class:`lcstack.store.Storage` (its retries and its error messages).

    Parameters
    ----------
    storage_options
        fsspec options for the catalog's filesystem, e.g.
        ``{"endpoint_url": "http://127.0.0.1:9000", "anon": True}``.

    """

    def __init__(self, storage_options: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.storage_options = dict(storage_options or {})

    def read_text_from_href(self, href: str) -> str:
        """Read a text file from any fsspec URL."""
        from lcstack.store import Storage

        return Storage.for_url(href, self.storage_options).read_bytes(href).decode("utf-8")

    def write_text_to_href(self, href: str, txt: str) -> None:
        """Write a text file to any fsspec URL (atomically)."""
        from lcstack.store import Storage

        Storage.for_url(href, self.storage_options).write_bytes(href, txt.encode("utf-8"))


@dataclass(frozen=True)
class SceneInfo:
    """A scene picked for a season, with the metadata-based estimate that ranked it.

    Attributes
    ----------
    item
        The STAC item (asset hrefs absolute).
    season
        Name of the season it was picked for.
    valid_fraction
        Estimated fraction of the AOI with clear data: ``(1 - cloud/100) * (1 - nodata/100) * aoi_coverage``.
    cloud_cover
        ``eo:cloud_cover`` in percent, None when the item does not say.
    aoi_coverage
        Fraction of the AOI covered by the item geometry (computed in lon/lat degrees).

    """

    item: pystac.Item
    season: str
    valid_fraction: float
    cloud_cover: float | None
    aoi_coverage: float

    @property
    def id(self) -> str:
        """The item id."""
        return self.item.id

    @property
    def datetime(self) -> dt.datetime | None:
        """The item acquisition time."""
        return _item_datetime(self.item)


# ------------------------------------------------------------------------------------------------ sources


def open_source(
    stac: str | Path | pystac.Catalog,
    *,
    headers: Mapping[str, str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    modifier: Any = None,
) -> pystac_client.Client | pystac.Catalog:
    """Open a STAC API or a static STAC catalog.

    Parameters
    ----------
    stac
        ``http(s)://`` URL of a STAC API (landing page that conforms to item-search), or the path / URL of a
        static catalog (``catalog.json``, a folder holding one, ``https://…/catalog.json``,
        ``s3://bucket/prefix/catalog.json``). An already opened client or catalog is returned unchanged.
    headers
        HTTP headers (e.g. an authorization token) for an API or an ``http(s)`` static catalog.
    storage_options
        fsspec options for a static catalog on object storage (``endpoint_url``, ``key``, ``anon``, ...).
    modifier
        A pystac-client ``modifier`` applied to every item an API returns (e.g. URL signing:
        :func:`lcstack.signing.client_modifier`).

    Returns
    -------
    pystac_client.Client or pystac.Catalog
        A client when the source is a searchable API, else the static catalog.

    Raises
    ------
    lcstack.errors.InputFileNotFoundError
        A local path that does not exist.
    lcstack.errors.InvalidInputError
        A source that is neither a searchable STAC API nor a readable static catalog.

    """
    if isinstance(stac, pystac.Catalog):
        return stac
    text = str(stac)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in ("http", "https"):
        if text.rstrip("/").endswith(".json"):
            return _open_static(text, stac_io=LenientStacIO(headers=dict(headers or {})), tried=[])
        return _open_http(text, headers, modifier)
    if scheme and scheme != "file":
        return _open_static(text, stac_io=FsspecStacIO(storage_options), tried=[])
    path = Path(text[len("file://") :] if scheme == "file" else text).expanduser()
    if path.is_dir():
        for name in ("catalog.json", "collection.json"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise InputFileNotFoundError(
                f"STAC source {text!r} is a folder without catalog.json or collection.json. "
                "Pass the path of the static catalog's root JSON or a STAC API URL (https://…)."
            )
    if not path.exists():
        raise InputFileNotFoundError(
            f"STAC source {text!r} was read as a local static catalog, but {path.resolve()} does not exist. "
            "Pass an existing catalog.json, or a STAC API URL starting with http:// or https://."
        )
    return _open_static(str(path.resolve()), stac_io=LenientStacIO(), tried=[])


def _open_http(
    url: str, headers: Mapping[str, str] | None, modifier: Any = None
) -> pystac_client.Client | pystac.Catalog:
    tried = [f"STAC API landing page {url}"]
    try:
        client = pystac_client.Client.open(url, headers=dict(headers or {}), modifier=modifier)
    except Exception as exc:  # connection refused, HTTP error, not JSON
        raise InvalidInputError(
            f"Could not open STAC source {url!r}: tried {tried[0]} and got {type(exc).__name__}: {exc}. "
            "Check the URL and the network, or pass the path of a static catalog.json."
        ) from exc
    if client.conforms_to(ConformanceClasses.ITEM_SEARCH):
        return client
    # A landing page without item search: a static catalog served over HTTP.
    logger.info("%s does not conform to STAC item search; walking it as a static catalog", url)
    tried.append("(no item-search conformance) static catalog at the same URL")
    return _open_static(url, stac_io=LenientStacIO(headers=dict(headers or {})), tried=tried)


def _open_static(href: str, *, stac_io: StacIO | None, tried: list[str]) -> pystac.Catalog:
    tried = [*tried, f"static catalog {href}"]
    try:
        obj = pystac.read_file(href, stac_io=stac_io)
    except FileNotFoundError as exc:
        raise InputFileNotFoundError(
            f"STAC source {href!r} does not exist (tried: {'; '.join(tried)}). "
            "Pass an existing catalog.json or a STAC API URL."
        ) from exc
    except Exception as exc:
        raise InvalidInputError(
            f"Could not read STAC source {href!r} (tried: {'; '.join(tried)}): {type(exc).__name__}: {exc}. "
            "Pass a static catalog.json / collection.json, or the landing page URL of a STAC API."
        ) from exc
    if not isinstance(obj, pystac.Catalog):
        raise InvalidInputError(
            f"STAC source {href!r} is a {type(obj).__name__}, not a catalog or collection. "
            "Pass the root catalog.json of the static catalog, or a STAC API URL."
        )
    return obj


# ------------------------------------------------------------------------------------------------- search


def search_items(
    source: Source,
    collection: str,
    *,
    bbox: BBox,
    start: DateLike | None,
    end: DateLike | None,
    max_cloud_cover: float | None = None,
    limit: int | None = None,
    page_size: int = _DEFAULT_PAGE_SIZE,
) -> list[pystac.Item]:
    """Return the items of ``collection`` that intersect ``bbox`` between ``start`` and ``end``.

    Parameters
    ----------
    source
        STAC API URL, static catalog path/URL, or an object returned by :func:`open_source`.
    collection
        Collection id, e.g. ``"sentinel-2-l2a"``.
    bbox
        ``(west, south, east, north)`` in degrees (EPSG:4326).
    start, end
        First and last day (inclusive, whole UTC days); None leaves that side open.
    max_cloud_cover
        Keep items with ``eo:cloud_cover`` strictly below this (percent); items without the property are
        dropped when a limit is given.
    limit
        Stop after this many matching items (in server / catalog order), before sorting.
    page_size
        Items per page asked of an API.

    Returns
    -------
    list of pystac.Item
        Sorted by (datetime, id), asset hrefs absolute.

    """
    catalog = open_source(source) if not isinstance(source, pystac.Catalog) else source
    first, last = _to_date(start, "start"), _to_date(end, "end")
    aoi = _bbox_geometry(bbox)
    if isinstance(catalog, pystac_client.Client):
        candidates = _api_items(catalog, collection, bbox, first, last, max_cloud_cover, page_size)
    else:
        candidates = _static_items(catalog, collection)
    found: list[pystac.Item] = []
    for item in candidates:
        if not _matches(item, collection, aoi, first, last, max_cloud_cover):
            continue
        _absolute_hrefs(item)
        found.append(item)
        if limit is not None and len(found) >= limit:
            break
    return sorted(found, key=_sort_key)


def _api_items(
    client: pystac_client.Client,
    collection: str,
    bbox: BBox,
    first: dt.date | None,
    last: dt.date | None,
    max_cloud_cover: float | None,
    page_size: int,
) -> Iterator[pystac.Item]:
    kwargs: dict[str, Any] = {"collections": [collection], "bbox": list(bbox), "limit": page_size}
    if first is not None or last is not None:
        lower = f"{first.isoformat()}T00:00:00Z" if first is not None else ".."
        upper = f"{last.isoformat()}T23:59:59.999999Z" if last is not None else ".."
        kwargs["datetime"] = f"{lower}/{upper}"
    if max_cloud_cover is not None and client.conforms_to(ConformanceClasses.QUERY):
        kwargs["query"] = {"eo:cloud_cover": {"lt": max_cloud_cover}}
    logger.debug("STAC API search %s", kwargs)
    try:
        for d in client.search(**kwargs).items_as_dicts():
            yield pystac.Item.from_dict(_mark_missing_hrefs(d), root=client, preserve_dict=False)
    except Exception as exc:
        raise InvalidInputError(
            f"STAC API search at {client.get_self_href()} failed for collection {collection!r} "
            f"({type(exc).__name__}: {exc}). Check the collection id and that the API is reachable."
        ) from exc


def _static_items(catalog: pystac.Catalog, collection: str) -> Iterator[pystac.Item]:
    # Walk only the matching collection when the catalog has it as a child: far fewer files to read.
    if isinstance(catalog, pystac.Collection) and catalog.id == collection:
        yield from catalog.get_items(recursive=True)
        return
    child = catalog.get_child(collection)
    yield from (child if child is not None else catalog).get_items(recursive=True)


def _matches(
    item: pystac.Item,
    collection: str,
    aoi: shapely.geometry.base.BaseGeometry,
    first: dt.date | None,
    last: dt.date | None,
    max_cloud_cover: float | None,
) -> bool:
    if _collection_id(item) != collection:
        return False
    when = _item_datetime(item)
    if first is not None and (when is None or when.date() < first):
        return False
    if last is not None and (when is None or when.date() > last):
        return False
    if max_cloud_cover is not None:
        cloud = _cloud_cover(item)
        if cloud is None or not cloud < max_cloud_cover:
            return False
    geometry = _item_geometry(item)
    return geometry is not None and geometry.intersects(aoi)


# --------------------------------------------------------------------------------------- scene selection


def discover_scenes(
    source: Source,
    collection: str,
    bbox: BBox,
    seasons: Mapping[str, Any],
    *,
    max_cloud_cover: float | None = None,
    max_scenes: int | None = None,
    min_valid_fraction: float = 0.0,
) -> dict[str, list[SceneInfo]]:
    """Pick the scenes of every season from a STAC source.

    Parameters
    ----------
    source
        STAC API URL, static catalog path/URL, or an object returned by :func:`open_source`.
    collection
        Collection id, e.g. ``"sentinel-2-l2a"``.
    bbox
        Area of interest ``(west, south, east, north)`` in degrees.
    seasons
        ``{name: season}``; a season has ``start`` and ``end`` dates (inclusive) or a non-empty ``dates``
        list (then only scenes acquired on exactly those days). ``lcstack.inputs.Season`` fits, and so does
        any object or mapping with those fields.
    max_cloud_cover
        Keep scenes with ``eo:cloud_cover`` below this (percent).
    max_scenes
        Keep at most this many scenes per season: the largest estimated valid fraction, ties broken by date.
    min_valid_fraction
        Drop scenes whose estimated valid fraction (see :class:`SceneInfo`) is below this.

    Returns
    -------
    dict of str to list of SceneInfo
        Per season, the chosen scenes in chronological order.

    Raises
    ------
    lcstack.errors.NoScenesFoundError
        A season has no scene left; the message gives the count after each filter and what to relax.

    """
    catalog = open_source(source) if not isinstance(source, pystac.Catalog) else source
    aoi = _bbox_geometry(bbox)
    chosen: dict[str, list[SceneInfo]] = {}
    for name, season in seasons.items():
        first, last, days = _season_window(name, season)
        items = _season_items(catalog, collection, bbox, first, last, days, max_cloud_cover)
        scenes = [_scene_info(item, name, aoi) for item in items]
        usable = [s for s in scenes if s.valid_fraction >= min_valid_fraction]
        if not usable:
            raise _no_scenes_error(
                catalog,
                collection,
                bbox,
                name,
                first,
                last,
                days,
                max_cloud_cover,
                min_valid_fraction,
                scenes,
            )
        ranked = sorted(usable, key=lambda s: (-s.valid_fraction, _sort_key(s.item)))
        picked = ranked[:max_scenes] if max_scenes is not None else ranked
        picked.sort(key=lambda s: _sort_key(s.item))
        chosen[name] = picked
        logger.info(
            "season %s (%s..%s): %d item(s) in %s under the cloud limit, %d with valid fraction >= %g, "
            "kept %d: %s",
            name,
            first,
            last,
            len(scenes),
            collection,
            len(usable),
            min_valid_fraction,
            len(picked),
            ", ".join(f"{s.id} ({s.valid_fraction:.2f})" for s in picked),
        )
    return chosen


def discover_tile_scenes(
    source: Source,
    collection: str,
    aoi: Any,
    seasons: Mapping[str, Any],
    *,
    tile_size: int | None = None,
    max_cloud_cover: float | None = None,
    max_scenes: int | None = None,
    min_valid_fraction: float = 0.0,
    on_missing: str = "fail",
) -> tuple[dict[str, Any], dict[str, dict[str, list[SceneInfo]]]]:
    """Pick the scenes of every Sentinel-2 tile of ``aoi`` and every season, tile by tile.

    The items of all seasons are grouped by MGRS tile (:func:`lcstack.s2grid.tiles_for_aoi`); each tile's
    scenes of a season are ranked by their estimated valid fraction over the part of the AOI that tile
    owns, and the best ``max_scenes`` are kept, so every tile gets scenes of its own.

    Parameters
    ----------
    source, collection, seasons, max_cloud_cover, max_scenes, min_valid_fraction
        As for :func:`discover_scenes`.
    aoi
        Anything :func:`lcstack.grid.aoi_geometry` accepts.
    tile_size
        Sub-tile size handed to :func:`~lcstack.s2grid.tiles_for_aoi`.
    on_missing
        ``"fail"``: a tile without a usable scene in a season raises; ``"skip"``: that tile is left out
        with a warning and the other tiles go on.

    Returns
    -------
    tuple
        ``(tiles, scenes)``: tile id -> :class:`~lcstack.s2grid.S2Tile`, and tile id -> season -> the chosen
        scenes in chronological order (both without skipped tiles).

    Raises
    ------
    lcstack.errors.NoScenesFoundError
        A season has no scene at all over the AOI, a tile has no usable scene in a season (unless
        ``on_missing="skip"``), or every tile was skipped; the message names tile, season and filters.

    """
    from .grid import aoi_geometry
    from .s2grid import tiles_for_aoi

    catalog = open_source(source) if not isinstance(source, pystac.Catalog) else source
    geom = aoi_geometry(aoi).to_crs("EPSG:4326")
    bbox = tuple(geom.boundingbox)
    windows = {name: _season_window(name, season) for name, season in seasons.items()}
    found: dict[str, list[pystac.Item]] = {}
    for name, (first, last, days) in windows.items():
        found[name] = _season_items(catalog, collection, bbox, first, last, days, max_cloud_cover)
        if not found[name]:
            raise _no_scenes_error(
                catalog, collection, bbox, name, first, last, days, max_cloud_cover, min_valid_fraction, []
            )
    every = {i.id: i for items in found.values() for i in items}
    tiles = tiles_for_aoi(sorted(every.values(), key=_sort_key), geom, tile_size=tile_size)
    limits = {"max_cloud_cover": max_cloud_cover, "min_valid_fraction": min_valid_fraction}
    chosen: dict[str, dict[str, list[SceneInfo]]] = {}
    for tile, s2tile in tiles.items():
        per_season = _tile_seasons(s2tile, found, windows, collection, max_scenes, limits, on_missing)
        if per_season is not None:
            chosen[tile] = per_season
    if not chosen:
        raise NoScenesFoundError(
            f"No Sentinel-2 tile of the AOI {tuple(bbox)} has usable scenes in every season "
            f"({', '.join(tiles) or 'no tile found'}); relax the filters (see the warnings above)."
        )
    return {t: tiles[t] for t in chosen}, chosen


def _tile_seasons(
    s2tile: Any,
    found: Mapping[str, list[pystac.Item]],
    windows: Mapping[str, tuple[dt.date, dt.date, frozenset[dt.date] | None]],
    collection: str,
    max_scenes: int | None,
    limits: Mapping[str, Any],
    on_missing: str,
) -> dict[str, list[SceneInfo]] | None:
    """Choose one tile's scenes per season; None when a season has none and ``on_missing`` is skip."""
    tile = s2tile.tile
    owned = s2tile.owned.to_crs("EPSG:4326").geom
    ids = {i.id for i in s2tile.items}
    per_season = {}
    for name, items in found.items():
        scenes = [_scene_info(i, name, owned) for i in items if i.id in ids]
        per_season[name] = _pick(scenes, max_scenes, limits["min_valid_fraction"])
        if not per_season[name]:
            problem = _tile_problem(tile, name, windows[name], collection, scenes, limits)
            if on_missing != "skip":
                raise NoScenesFoundError(f"{problem} Or set `on_missing: skip` to map the other tiles.")
            logger.warning("%s on_missing: skip, so tile %s is left out.", problem, tile)
            return None
        _log_picked(f"tile {tile}, season {name}", len(scenes), per_season[name])
    return per_season


def _pick(scenes: list[SceneInfo], max_scenes: int | None, min_valid_fraction: float) -> list[SceneInfo]:
    """Return the best ``max_scenes`` usable scenes (valid fraction, then date), in chronological order."""
    usable = [s for s in scenes if s.valid_fraction >= min_valid_fraction and s.aoi_coverage > 0]
    ranked = sorted(usable, key=lambda s: (-s.valid_fraction, _sort_key(s.item)))
    picked = ranked[:max_scenes] if max_scenes is not None else ranked
    return sorted(picked, key=lambda s: _sort_key(s.item))


def _log_picked(what: str, n: int, picked: list[SceneInfo]) -> None:
    logger.info(
        "%s: %d item(s) under the cloud limit, kept %d: %s",
        what,
        n,
        len(picked),
        ", ".join(f"{s.id} ({s.valid_fraction:.2f})" for s in picked),
    )


def _tile_problem(
    tile: str,
    season: str,
    window: tuple[dt.date, dt.date, frozenset[dt.date] | None],
    collection: str,
    scenes: list[SceneInfo],
    limits: Mapping[str, float | None],
) -> str:
    """Say why ``tile`` has no usable scene in ``season`` and what to relax."""
    first, last, days = window
    when = ", ".join(d.isoformat() for d in sorted(days)) if days is not None else f"{first}..{last}"
    cloud = "none" if limits["max_cloud_cover"] is None else f"{limits['max_cloud_cover']:g}%"
    text = (
        f"No usable scene for tile {tile}, season {season!r} ({when}) in collection {collection!r} "
        f"(filters: cloud limit {cloud}, min_valid_fraction {limits['min_valid_fraction']:g}, "
        f"valid fraction over the tile's part of the AOI): {len(scenes)} item(s) of the tile are under the "
        "cloud limit"
    )
    if scenes:
        best = max(s.valid_fraction for s in scenes)
        return f"{text}, the best reaches {best:.3f}. To fix: lower min_valid_fraction or widen the season."
    return f"{text}. To fix: widen the season's dates or raise max_cloud_cover."


def discover_dem(source: Source, collection: str, bbox: BBox) -> list[pystac.Item]:
    """Return the DEM items of ``collection`` intersecting ``bbox`` (no date filter), sorted by id.

    Raises
    ------
    lcstack.errors.NoScenesFoundError
        No item of ``collection`` intersects ``bbox``.

    """
    items = search_items(source, collection, bbox=bbox, start=None, end=None)
    if not items:
        raise NoScenesFoundError(
            f"No DEM item of collection {collection!r} intersects bbox {tuple(bbox)} in {_describe(source)}. "
            "Check the DEM collection id (e.g. 'cop-dem-glo-30') and that the bbox is (west, south, east, "
            "north) in degrees."
        )
    logger.info("DEM: %d item(s) of %s: %s", len(items), collection, ", ".join(i.id for i in items))
    return sorted(items, key=lambda i: i.id)


def _season_window(name: str, season: Any) -> tuple[dt.date, dt.date, frozenset[dt.date] | None]:
    dates = _field(season, "dates")
    if dates:
        days = frozenset(_to_date(d, f"seasons[{name!r}].dates") for d in dates)
        return min(days), max(days), days  # type: ignore[type-var]
    start, end = _field(season, "start"), _field(season, "end")
    if start is None or end is None:
        raise InvalidInputError(
            f"Season {name!r} has neither a start and end date nor a list of dates. "
            "Give it start/end (YYYY-MM-DD) or dates."
        )
    first, last = _to_date(start, f"seasons[{name!r}].start"), _to_date(end, f"seasons[{name!r}].end")
    if first is None or last is None or first > last:
        raise InvalidInputError(f"Season {name!r} ends ({last}) before it starts ({first}). Swap the dates.")
    return first, last, None


def _season_items(
    catalog: pystac.Catalog,
    collection: str,
    bbox: BBox,
    first: dt.date,
    last: dt.date,
    days: frozenset[dt.date] | None,
    max_cloud_cover: float | None,
) -> list[pystac.Item]:
    if days is None:
        return search_items(
            catalog, collection, bbox=bbox, start=first, end=last, max_cloud_cover=max_cloud_cover
        )
    if isinstance(catalog, pystac_client.Client):
        # One small search per day beats one search over the whole span for sparse dates.
        found: dict[str, pystac.Item] = {}
        for day in sorted(days):
            for item in search_items(
                catalog, collection, bbox=bbox, start=day, end=day, max_cloud_cover=max_cloud_cover
            ):
                found[item.id] = item
        return sorted(found.values(), key=_sort_key)
    items = search_items(
        catalog, collection, bbox=bbox, start=first, end=last, max_cloud_cover=max_cloud_cover
    )
    return [i for i in items if (when := _item_datetime(i)) is not None and when.date() in days]


def _scene_info(item: pystac.Item, season: str, aoi: shapely.geometry.base.BaseGeometry) -> SceneInfo:
    cloud = _cloud_cover(item)
    nodata = item.properties.get("s2:nodata_pixel_percentage")
    geometry = _item_geometry(item)
    coverage = 0.0
    if geometry is not None and aoi.area > 0:
        coverage = min(1.0, geometry.intersection(aoi).area / aoi.area)
    elif geometry is not None and geometry.intersects(aoi):
        coverage = 1.0  # a point or line AOI
    fraction = coverage
    if cloud is not None:
        fraction *= 1.0 - min(max(cloud, 0.0), 100.0) / 100.0
    if isinstance(nodata, int | float):
        fraction *= 1.0 - min(max(float(nodata), 0.0), 100.0) / 100.0
    return SceneInfo(
        item=item, season=season, valid_fraction=fraction, cloud_cover=cloud, aoi_coverage=coverage
    )


def _no_scenes_error(
    catalog: pystac.Catalog,
    collection: str,
    bbox: BBox,
    season: str,
    first: dt.date,
    last: dt.date,
    days: frozenset[dt.date] | None,
    max_cloud_cover: float | None,
    min_valid_fraction: float,
    scenes: list[SceneInfo],
) -> NoScenesFoundError:
    # Only on failure: search again without the cloud limit to say which filter emptied the season.
    without_cloud = _season_items(catalog, collection, bbox, first, last, days, None)
    window = (
        f"dates {', '.join(d.isoformat() for d in sorted(days))}" if days is not None else f"{first}..{last}"
    )
    counts = [f"{len(without_cloud)} item(s) of {collection!r} intersect the bbox in {window}"]
    advice: list[str] = []
    if max_cloud_cover is not None:
        counts.append(f"{len(scenes)} of them have eo:cloud_cover < {max_cloud_cover:g}")
    counts.append(f"{0} of those reach the valid fraction {min_valid_fraction:g}")
    if not without_cloud:
        advice.append(
            "widen the season's dates, check the collection id and that the bbox is (west, south, east, "
            "north) in degrees"
        )
        if isinstance(catalog, pystac.Catalog) and not isinstance(catalog, pystac_client.Client):
            ids = sorted({c.id for c in catalog.get_children() if isinstance(c, pystac.Collection)})
            if ids and collection not in ids:
                advice.append(f"the catalog's collections are: {', '.join(ids)}")
    elif not scenes:
        clouds = [c for i in without_cloud if (c := _cloud_cover(i)) is not None]
        clearest = f"{min(clouds):g}" if clouds else "no eo:cloud_cover"
        advice.append(f"raise max_cloud_cover (now {max_cloud_cover:g}; the clearest scene has {clearest})")
    else:
        top = max(s.valid_fraction for s in scenes)
        advice.append(f"lower min_valid_fraction (now {min_valid_fraction:g}; the best scene has {top:.3f})")
    limit = "none" if max_cloud_cover is None else f"{max_cloud_cover:g}%"
    return NoScenesFoundError(
        f"No scene found for season {season!r} ({window}) in collection {collection!r}, "
        f"bbox {tuple(bbox)}, cloud limit {limit}, "
        f"source {_describe(catalog)}: {'; '.join(counts)}. To fix: {'; '.join(advice)}."
    )


# ----------------------------------------------------------------------------------- content identity


def asset_fingerprints(
    hrefs: Sequence[str],
    *,
    checksums: Mapping[str, str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    max_workers: int = 16,
) -> dict[str, str]:
    """Return a token per asset that changes when its content does, without reading any pixel.

    In order of preference: the catalog's ``file:checksum`` (given in ``checksums``); for a local file its
    size and modification time (nanoseconds); for an object store or HTTP its ETag, else its size and
    last-modified time. Remote assets are asked in parallel (one HEAD / stat each, ``max_workers`` at
    once). An asset that cannot be asked about (missing, unreachable) gets ``"missing:<reason>"``, so the
    key differs from any key of the asset once it is there; reading it then fails with its own error.

    Parameters
    ----------
    hrefs
        Absolute asset hrefs (local paths, ``file://``, ``s3://``, ``https://``, ...).
    checksums
        ``{href: file:checksum}`` where the catalog provides one.
    storage_options
        fsspec options for ``s3://`` hrefs (endpoint, credentials).
    max_workers
        Concurrent remote requests.

    Returns
    -------
    dict of str to str
        ``{href: token}`` for every href.

    """
    from concurrent.futures import ThreadPoolExecutor

    checksums = checksums or {}
    out: dict[str, str] = {h: f"checksum:{checksums[h]}" for h in hrefs if checksums.get(h)}
    todo = [h for h in dict.fromkeys(hrefs) if h not in out]
    remote = [h for h in todo if "://" in h and not h.startswith("file://")]
    for href in todo:
        if href not in remote:
            out[href] = _local_fingerprint(href[len("file://") :] if href.startswith("file://") else href)
    if remote:
        with ThreadPoolExecutor(min(max_workers, len(remote))) as pool:
            tokens = pool.map(lambda h: _remote_fingerprint(h, storage_options or {}), remote)
            out.update(zip(remote, tokens, strict=True))
    return out


def _local_fingerprint(path: str) -> str:
    try:
        st = Path(path).stat()
    except OSError as exc:
        return f"missing:{type(exc).__name__}"
    return f"stat:{st.st_size}:{st.st_mtime_ns}"


def _remote_fingerprint(href: str, storage_options: Mapping[str, Any]) -> str:
    from lcstack.store import Storage

    try:
        opts = dict(storage_options) if href.startswith(("s3://", "s3a://")) else {}
        info = Storage.for_url(href, opts).info(href)
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot tell": a key that matches nothing
        logger.debug("cannot stat asset %s: %s", href.split("?", 1)[0], type(exc).__name__)
        return f"missing:{type(exc).__name__}"
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return f"etag:{str(etag).strip(chr(34))}"
    modified = info.get("LastModified") or info.get("Last-Modified") or info.get("mtime")
    return f"size:{info.get('size')}:{modified}"


# ---------------------------------------------------------------------------------------------- helpers


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _to_date(value: DateLike | None, where: str) -> dt.date | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip()[:10])
        except ValueError:
            pass
    raise InvalidInputError(f"{where}: {value!r} is not a date. Pass a datetime.date or 'YYYY-MM-DD'.")


def _bbox_geometry(bbox: BBox) -> shapely.geometry.base.BaseGeometry:
    try:
        west, south, east, north = (float(v) for v in bbox)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"bbox {bbox!r} is not four numbers. Pass (west, south, east, north) in degrees."
        ) from exc
    if west > east or south > north:
        raise InvalidInputError(
            f"bbox {tuple(bbox)} has west > east or south > north. "
            "Pass (west, south, east, north) in degrees."
        )
    return shapely.geometry.box(west, south, east, north)


def _item_geometry(item: pystac.Item) -> shapely.geometry.base.BaseGeometry | None:
    if item.geometry:
        return shapely.geometry.shape(item.geometry)
    if item.bbox:
        return (
            shapely.geometry.box(*item.bbox[:2], *item.bbox[-2:])
            if len(item.bbox) == 6
            else shapely.geometry.box(*item.bbox)
        )
    return None


def _item_datetime(item: pystac.Item) -> dt.datetime | None:
    when = item.datetime or item.common_metadata.start_datetime
    if when is not None and when.tzinfo is not None:
        when = when.astimezone(dt.UTC)
    return when


def _cloud_cover(item: pystac.Item) -> float | None:
    value = item.properties.get("eo:cloud_cover")
    return float(value) if isinstance(value, int | float) else None


def _collection_id(item: pystac.Item) -> str | None:
    if item.collection_id:
        return item.collection_id
    parent = item.get_parent()
    return parent.id if isinstance(parent, pystac.Collection) else None


def _sort_key(item: pystac.Item) -> tuple[str, str]:
    when = _item_datetime(item)
    return (when.isoformat() if when is not None else "", item.id)


def _absolute_hrefs(item: pystac.Item) -> None:
    if item.get_self_href() is not None:
        item.make_asset_hrefs_absolute()


def _describe(source: Any) -> str:
    if isinstance(source, pystac.Catalog):
        return source.get_self_href() or source.id
    return str(source)
