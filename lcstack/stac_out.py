"""A static STAC collection that describes the outputs of a run: composites, class maps, extra layers.

One item per processing tile. Its assets are the tile's maps (level-1 / level-2 COGs, the maps Zarr, and
probability / uncertainty COGs when they exist) and its seasonal composites (Zarr). Every item carries the
projection extension (``proj:code``, ``proj:shape``, ``proj:transform``, ``proj:bbox``, and a lon/lat
footprint as its geometry); every COG asset carries the file extension (``file:size`` and a SHA2-256
``file:checksum`` multihash); every class-map asset carries the classification extension
(``classification:classes`` with value, name and the colour of the map's colour table as ``color_hint``).

The grid, the colour table and the class names are read back from the written COGs, so the catalog
describes what is stored, not what was meant to be stored. Every JSON file is written through
:class:`lcstack.store.Storage` (atomic locally, one PUT on S3).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pystac
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension

from ._gdal import gdal_path, rasterio_env
from .errors import InvalidInputError, StorageError
from .store import Storage

__all__ = ["TileOutputs", "write_outputs_collection", "outputs_from_workflow", "MULTIHASH_SHA256"]

logger = logging.getLogger(__name__)

#: Multihash prefix of a SHA2-256 digest: function code 0x12, digest length 0x20 (32 bytes).
MULTIHASH_SHA256 = "1220"

#: Asset keys of class maps (classification extension) and of continuous layers.
CLASS_MAP_KEYS = ("level1", "level2")
_NAME_SAFE = re.compile(r"[^0-9A-Za-z_-]+")
_HASH_BLOCK = 8 << 20


@dataclass
class TileOutputs:
    """What a run wrote for one processing tile.

    Parameters
    ----------
    tile
        Tile id (becomes the item id).
    maps
        Asset key -> COG URL: ``level1``, ``level2`` (class maps) and, when present, ``valid_seasons``,
        the probability / uncertainty layers (``level1_proba``, one band per class, ``level1_confidence``,
        ...: described with STAC 1.1 ``bands``) or any other layer.
    maps_zarr
        URL of the tile's maps Zarr store, if any.
    composites
        Season (or ``terrain``) -> composite Zarr URL.
    start, end
        Time span the outputs describe (the run's seasons); the item's ``start_datetime`` /
        ``end_datetime``.
    properties
        Extra item properties (model key, lcstack version, ...).

    """

    tile: str
    maps: Mapping[str, str]
    maps_zarr: str | None = None
    composites: Mapping[str, str] = field(default_factory=dict)
    start: dt.date | None = None
    end: dt.date | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)


class _StorageStacIO(pystac.StacIO):
    """pystac I/O through :class:`~lcstack.store.Storage`, so catalog JSON lands where the outputs are."""

    def __init__(self, storage: Storage) -> None:
        super().__init__()
        self.storage = storage

    def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
        return self.storage.read_bytes(str(pystac.utils.make_posix_style(source))).decode()

    def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
        self.storage.write_bytes(str(pystac.utils.make_posix_style(dest)), txt.encode())


def _checksum_and_size(storage: Storage, url: str) -> tuple[str, int]:
    """SHA2-256 multihash (hex) and size of the object at ``url``, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    size = 0
    try:
        with storage.open_input(url) as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
                size += len(block)
    except FileNotFoundError as exc:
        raise StorageError(
            f"{url}: listed as a run output but not found; re-run `lcstack run` (classify) to rewrite it."
        ) from exc
    return MULTIHASH_SHA256 + digest.hexdigest(), size


def _raster_info(storage: Storage, url: str) -> dict[str, Any]:
    """CRS, grid, colour table and class names of a COG, as stored."""
    import rasterio

    with rasterio_env(storage, url), rasterio.open(gdal_path(url)) as src:
        try:
            colormap = src.colormap(1)
        except ValueError:
            colormap = None
        labels = json.loads(src.tags().get("LCSTACK_LABELS") or "{}")
        layer = src.tags().get("LCSTACK_LAYER")
        bands = [{"description": src.descriptions[i], **src.tags(i + 1)} for i in range(src.count)]
        return {
            "layer": layer,
            "bands": bands,
            "crs": src.crs,
            "shape": [src.height, src.width],
            "transform": list(src.transform)[:6],
            "bounds": src.bounds,
            "colormap": colormap,
            "labels": {str(k): int(v) for k, v in labels.items()},
            "dtype": src.dtypes[0],
            "nodata": src.nodata,
        }


def _classes(info: Mapping[str, Any], where: str) -> list[Classification]:
    labels = info["labels"]
    if not labels:
        raise InvalidInputError(
            f"{where}: the COG has no LCSTACK_LABELS tag, so its classes are unknown; write class maps "
            "with lcstack.cog.write_cog(..., labels=...)."
        )
    cmap = info["colormap"] or {}
    out = []
    for name, code in sorted(labels.items(), key=lambda kv: kv[1]):
        rgb = cmap.get(code)
        hint = "{:02X}{:02X}{:02X}".format(*rgb[:3]) if rgb is not None else None
        out.append(
            Classification.create(
                value=int(code),
                name=_NAME_SAFE.sub("_", name) or f"class_{code}",
                description=name,
                color_hint=hint,
            )
        )
    return out


def _footprint(info: Mapping[str, Any]) -> tuple[dict[str, Any], list[float], list[float]]:
    """Lon/lat polygon and bbox of a raster, and its bbox in its own CRS."""
    from odc.geo.geom import box

    b = info["bounds"]
    native = [b.left, b.bottom, b.right, b.top]
    geom = box(*native, crs=str(info["crs"])).to_crs("EPSG:4326")
    lon_lat = geom.boundingbox
    return geom.json, [lon_lat.left, lon_lat.bottom, lon_lat.right, lon_lat.top], native


def _cog_asset(storage: Storage, key: str, url: str, info: Mapping[str, Any]) -> pystac.Asset:
    class_map = key in CLASS_MAP_KEYS or bool(info["labels"])
    asset = pystac.Asset(
        href=url,
        media_type=pystac.MediaType.COG,
        roles=["data"] if class_map else ["data", key],
        title=f"{key} map" if class_map else key,
    )
    checksum, size = _checksum_and_size(storage, url)
    file_ext = FileExtension.ext(asset)
    file_ext.checksum, file_ext.size = checksum, size
    proj = ProjectionExtension.ext(asset)
    proj.code, proj.shape, proj.transform = _proj_code(info["crs"]), info["shape"], info["transform"]
    if class_map:
        ClassificationExtension.ext(asset).classes = _classes(info, f"{url} (asset {key!r})")
    elif info.get("layer"):
        asset.extra_fields["bands"] = _layer_bands(info)
    return asset


def _layer_bands(info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """STAC 1.1 ``bands`` of a probability / uncertainty COG (``lcstack.cog.write_layer_cog``).

    One entry per band with ``nodata``, ``data_type`` and ``unit``; the bands of class probabilities are
    named after their class and carry its code (``lcstack:class``).
    """
    out = []
    for i, band in enumerate(info["bands"]):
        entry: dict[str, Any] = {"name": _NAME_SAFE.sub("_", band.get("description") or "") or f"b{i + 1}"}
        if "class_code" in band:
            entry["description"] = f"probability of {band.get('description')} (level 1)"
            entry["lcstack:class"] = int(band["class_code"])
        elif band.get("description"):
            entry["description"] = band["description"]
        entry.update(nodata=info["nodata"], data_type=info["dtype"])
        if band.get("units"):
            entry["unit"] = band["units"]
        out.append(entry)
    return out


def _proj_code(crs: Any) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else str(crs.to_string())


def _zarr_asset(url: str, title: str) -> pystac.Asset:
    return pystac.Asset(href=url, media_type=pystac.MediaType.ZARR, roles=["data"], title=title)


def _tile_item(storage: Storage, out: TileOutputs) -> pystac.Item:
    if not out.maps:
        raise InvalidInputError(f"tile {out.tile!r}: no map COG to describe (TileOutputs.maps is empty).")
    infos = {key: _raster_info(storage, url) for key, url in out.maps.items()}
    ref = infos.get("level1") or next(iter(infos.values()))
    geometry, bbox, native_bbox = _footprint(ref)
    start = dt.datetime.combine(out.start or dt.date.today(), dt.time(0), tzinfo=dt.UTC)
    end = dt.datetime.combine(out.end or out.start or dt.date.today(), dt.time(23, 59, 59), dt.UTC)
    item = pystac.Item(
        id=out.tile,
        geometry=geometry,
        bbox=bbox,
        datetime=None,
        start_datetime=start,
        end_datetime=end,
        properties={"lcstack:tile": out.tile, **dict(out.properties)},
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.code, proj.shape, proj.transform, proj.bbox = (
        _proj_code(ref["crs"]),
        ref["shape"],
        ref["transform"],
        native_bbox,
    )
    FileExtension.add_to(item)
    ClassificationExtension.add_to(item)
    for key, url in out.maps.items():
        item.add_asset(key, _cog_asset(storage, key, url, infos[key]))
    if out.maps_zarr:
        item.add_asset("maps_zarr", _zarr_asset(out.maps_zarr, "class maps (Zarr)"))
    for season, url in sorted(out.composites.items()):
        item.add_asset(f"composite_{season}", _zarr_asset(url, f"{season} composite (Zarr)"))
    return item


def write_outputs_collection(
    storage: Storage,
    tiles: Sequence[TileOutputs],
    *,
    collection_id: str = "lcstack-outputs",
    description: str = "Land cover maps and seasonal composites written by lcstack.",
    url: str | None = None,
) -> str:
    """Write a static STAC collection of the run's outputs; return the URL of ``collection.json``.

    Parameters
    ----------
    storage
        Where the outputs are, and where the catalog is written.
    tiles
        The outputs of each tile; one item each.
    collection_id, description
        Collection id and description.
    url
        Where ``collection.json`` goes; ``<storage root>/stac/collection.json`` by default. Items go under
        ``<its folder>/<tile>/<tile>.json`` with relative links (a self-contained catalog); asset hrefs
        stay absolute, so the catalog can be read from anywhere the outputs can.

    Returns
    -------
    str
        The URL of the written ``collection.json``.

    """
    if not tiles:
        raise InvalidInputError("write_outputs_collection: no tile outputs given; run `classify` first.")
    ids = [t.tile for t in tiles]
    if len(set(ids)) != len(ids):
        raise InvalidInputError(f"write_outputs_collection: duplicate tile ids in {ids}.")
    items = [_tile_item(storage, t) for t in tiles]
    collection = pystac.Collection(
        id=collection_id,
        description=description,
        extent=pystac.Extent.from_items(items),
        license="other",
    )
    collection.add_items(items)
    target = url or Storage._join(storage.root, "stac", "collection.json")
    if posixpath.basename(target) != "collection.json":
        raise InvalidInputError(f"write_outputs_collection: url {target!r} must end in /collection.json.")
    collection.normalize_hrefs(posixpath.dirname(str(pystac.utils.make_posix_style(target))))
    collection.save(pystac.CatalogType.SELF_CONTAINED, stac_io=_StorageStacIO(storage))
    logger.info("Wrote STAC collection %s (%d items)", collection.self_href, len(items))
    return collection.self_href


def outputs_from_workflow(wf: Any) -> list[TileOutputs]:
    """Collect the complete map and composite outputs of a :class:`lcstack.pipeline.Workflow`, per tile.

    Reads the registry's ``maps`` records of the run's model and its composite plan; tiles without a
    complete map are left out.
    """
    seasons = wf.seasons.values()
    start = min((s.start for s in seasons), default=None)
    end = max((s.end for s in seasons), default=None)
    composites: dict[str, dict[str, str]] = {}
    for p in wf.composite_plan():
        composites.setdefault(p.unit, {})[str(p.season)] = p.url
    model = wf.model_key()
    out = []
    keys = {p.key for p in wf._map_jobs(model)}  # this config's maps (smoothed or not)
    for rec in wf.registry.find("maps", model=model):
        if rec.get("status") != "complete" or rec.get("key") not in keys:
            continue
        urls = wf.map_urls(rec)  # relative record paths located under this storage
        tile = str(rec["tile"])
        maps = {k: v for k, v in urls.items() if k != "zarr" and wf.storage.exists(v)}
        out.append(
            TileOutputs(
                tile=tile,
                maps=maps,
                maps_zarr=urls.get("zarr"),
                composites=composites.get(tile, {}),
                start=start,
                end=end,
                properties={"lcstack:model": model},
            )
        )
    return sorted(out, key=lambda t: t.tile)
