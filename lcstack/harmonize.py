"""Map Sentinel-2 assets of every catalog onto one band vocabulary and one reflectance scale.

Pure metadata logic: the functions read STAC items (``pystac.Item``) and never touch the network.

* Band names are Earth Search v1 names (:data:`CANONICAL_BANDS`). Planetary Computer keys (``B02``, ``B8A``,
  ``SCL``) and CDSE keys (``B02_10m``, ``SCL_20m``) are mapped onto them.
* Reflectance is ``DN * scale + offset``. Which ``(scale, offset)`` applies depends on the catalog and the
  processing baseline; the rules (and the sources behind them) are those of the STAC fixtures README:

  1. ``scl`` is a class raster: ``(1.0, 0.0)``.
  2. Earth Search ``sentinel-2-l2a`` COGs flagged ``earthsearch:boa_offset_applied: true`` already have the
     −1000 DN offset subtracted in their pixels, even though their ``raster:bands`` still declare −0.1:
     ``(1e-4, 0.0)``. The ``-jp2`` assets of the same items keep ESA DNs and follow rule 3.
  3. A declared scale/offset (``raster:bands`` in STAC 1.0, flat ``raster:scale``/``raster:offset`` in
     STAC 1.1 as CDSE writes them) is used as declared.
  4. Nothing declared (Planetary Computer): ``(1e-4, -0.1)`` from processing baseline 04.00 on, else
     ``(1e-4, 0.0)``. The baseline comes from ``s2:processing_baseline``, ``processing:version`` or the
     ``_Nxxyy_`` part of the item id; without any of them the acquisition date decides (04.00 started on
     2022-01-25), which is a guess and is said so in :func:`explain_scale_offset`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
from typing import Any

import pystac

__all__ = [
    "CANONICAL_BANDS",
    "SCL_CLOUD_CLASSES",
    "NATIVE_RESOLUTION",
    "REFLECTANCE_BANDS",
    "asset_for_band",
    "band_assets",
    "canonical_band",
    "explain_scale_offset",
    "processing_baseline",
    "reflectance_scale_offset",
]

#: Scene classification (SCL) classes masked as not clear by default: cloud shadows (3), cloud medium and
#: high probability (8, 9), thin cirrus (10) and snow or ice (11); SCL 0 (no data) is always masked.
SCL_CLOUD_CLASSES: tuple[int, ...] = (3, 8, 9, 10, 11)

logger = logging.getLogger(__name__)

CANONICAL_BANDS: tuple[str, ...] = (
    "coastal",
    "blue",
    "green",
    "red",
    "rededge1",
    "rededge2",
    "rededge3",
    "nir",
    "nir08",
    "nir09",
    "swir16",
    "swir22",
    "cirrus",
    "scl",
)
"""Earth Search v1 band names; ``cirrus`` exists in L1C only, ``scl`` in L2A only."""

REFLECTANCE_BANDS: tuple[str, ...] = tuple(b for b in CANONICAL_BANDS if b != "scl")

NATIVE_RESOLUTION: dict[str, int] = {
    "coastal": 60,
    "blue": 10,
    "green": 10,
    "red": 10,
    "rededge1": 20,
    "rededge2": 20,
    "rededge3": 20,
    "nir": 10,
    "nir08": 20,
    "nir09": 60,
    "swir16": 20,
    "swir22": 20,
    "cirrus": 60,
    "scl": 20,
}
"""Native ground sampling distance of each band in metres."""

_ESA_TO_CANONICAL: dict[str, str] = {
    "b01": "coastal",
    "b02": "blue",
    "b03": "green",
    "b04": "red",
    "b05": "rededge1",
    "b06": "rededge2",
    "b07": "rededge3",
    "b08": "nir",
    "b8a": "nir08",
    "b09": "nir09",
    "b10": "cirrus",
    "b11": "swir16",
    "b12": "swir22",
    "scl": "scl",
}

_CDSE_KEY = re.compile(r"^(?P<band>[a-z0-9]+)_(?P<res>\d+)m$")
_BASELINE_IN_ID = re.compile(r"_N(\d{2})(\d{2})_")
_BASELINE_04_START = _dt.date(2022, 1, 25)
_DEFAULT_SCALE = 1e-4
_OFFSET_PB04 = -0.1


def canonical_band(asset_key: str, item: pystac.Item | None = None) -> str | None:
    """Return the canonical (Earth Search v1) band name of an asset key, or None.

    Parameters
    ----------
    asset_key
        Asset key as written by Earth Search (``red``, ``red-jp2``), Planetary Computer (``B04``) or
        CDSE (``B04_10m``).
    item
        Optional item the key belongs to. When given and the item is clearly not Sentinel-2 (a Landsat item
        also has a ``red`` asset), None is returned.

    Returns
    -------
    str or None
        The canonical name, or None for non-band assets (``visual``, ``thumbnail``, ``aot``, ``wvp``,
        metadata, ...).

    """
    if item is not None and not _is_sentinel2(item):
        return None
    key = asset_key.strip().lower()
    if key.endswith("-jp2"):
        key = key[: -len("-jp2")]
    if key in CANONICAL_BANDS:
        return key
    match = _CDSE_KEY.match(key)
    if match:
        key = match["band"]
    return _ESA_TO_CANONICAL.get(key)


def band_assets(item: pystac.Item) -> dict[str, str]:
    """Return ``{canonical band: asset key}`` for the bands an item has.

    Where several assets hold the same band, a COG is preferred over a JP2 (Earth Search ``red`` over
    ``red-jp2``) and the native resolution over resampled ones (CDSE ``B02_10m`` over ``B02_20m``).
    Bands are returned in :data:`CANONICAL_BANDS` order.
    """
    candidates: dict[str, list[tuple[tuple[int, float, str], str]]] = {}
    for key, asset in item.assets.items():
        band = canonical_band(key, item)
        if band is None:
            continue
        resolution = _asset_resolution(key, asset)
        mismatch = abs(resolution - NATIVE_RESOLUTION[band]) if resolution is not None else 0.0
        rank = (int(_is_jp2(key, asset)), mismatch, key)
        candidates.setdefault(band, []).append((rank, key))
    return {band: min(candidates[band])[1] for band in CANONICAL_BANDS if band in candidates}


def asset_for_band(item: pystac.Item, band: str) -> str | None:
    """Return the asset key holding ``band`` (a canonical name) in ``item``, or None when it has none."""
    if band not in CANONICAL_BANDS:
        from lcstack.errors import InvalidInputError

        raise InvalidInputError(
            f"Unknown band {band!r}. Use one of the canonical (Earth Search v1) names: "
            f"{', '.join(CANONICAL_BANDS)}."
        )
    return band_assets(item).get(band)


def processing_baseline(item: pystac.Item) -> str | None:
    """Return the processing baseline of an item as ``"NN.NN"``, or None when the metadata does not say.

    Read from ``s2:processing_baseline`` (Earth Search, Planetary Computer), ``processing:version`` (CDSE)
    or the ``_Nxxyy_`` part of an ESA product id.
    """
    props = item.properties
    for name in ("s2:processing_baseline", "processing:version"):
        value = props.get(name)
        if value is not None and _baseline_tuple(str(value)) is not None:
            return str(value)
    match = _BASELINE_IN_ID.search(item.id)
    if match:
        return f"{match[1]}.{match[2]}"
    return None


def reflectance_scale_offset(item: pystac.Item, asset_key: str) -> tuple[float, float]:
    """Return ``(scale, offset)`` such that ``reflectance = DN * scale + offset`` for one asset.

    See the module docstring for the rules; :func:`explain_scale_offset` says which rule applied.

    Parameters
    ----------
    item
        The STAC item.
    asset_key
        Key of the asset in ``item.assets``.

    Returns
    -------
    tuple of float
        ``(scale, offset)``; ``(1.0, 0.0)`` for ``scl``.

    Raises
    ------
    lcstack.errors.InvalidInputError
        If the item has no asset ``asset_key``.

    """
    return _decide(item, asset_key)[:2]


def explain_scale_offset(item: pystac.Item, asset_key: str) -> str:
    """Return one sentence saying which ``(scale, offset)`` applies to an asset and why (for logs)."""
    scale, offset, reason = _decide(item, asset_key)
    return f"{item.id}/{asset_key}: scale={scale:g}, offset={offset:g} ({reason})"


# --------------------------------------------------------------------------------------------- internals


def _decide(item: pystac.Item, asset_key: str) -> tuple[float, float, str]:
    asset = item.assets.get(asset_key)
    if asset is None:
        from lcstack.errors import InvalidInputError

        raise InvalidInputError(
            f"Item {item.id!r} has no asset {asset_key!r}; it has {', '.join(sorted(item.assets))}. "
            "Pick a key from band_assets(item)."
        )
    band = canonical_band(asset_key, item)
    declared = _declared_scale_offset(asset)

    if band == "scl":
        return 1.0, 0.0, "scene classification is a class raster, not reflectance"
    if band is None:
        if declared is not None:
            return declared[0], declared[1], "not a Sentinel-2 reflectance band; declared raster scale/offset"
        return 1.0, 0.0, "not a Sentinel-2 reflectance band and nothing declared"

    flag = item.properties.get("earthsearch:boa_offset_applied")
    baseline = processing_baseline(item)
    if flag is True and not _is_jp2(asset_key, asset):
        scale = declared[0] if declared is not None else _DEFAULT_SCALE
        return (
            scale,
            0.0,
            "earthsearch:boa_offset_applied is true: Earth Search already removed the BOA offset from the "
            "COG pixels, so a declared offset is ignored",
        )
    if declared is not None:
        reason = "declared raster scale/offset"
        if flag is False and baseline is not None and _at_least_04(baseline):
            # Known to be unreliable (earth-search#66, #71); no metadata-only rule settles it.
            reason += (
                f"; note: earthsearch:boa_offset_applied is false on baseline {baseline}, "
                "which Earth Search has got wrong before"
            )
        return declared[0], declared[1], reason
    if baseline is not None:
        if _at_least_04(baseline):
            return _DEFAULT_SCALE, _OFFSET_PB04, f"nothing declared; processing baseline {baseline} >= 04.00"
        return _DEFAULT_SCALE, 0.0, f"nothing declared; processing baseline {baseline} < 04.00"
    acquired = _item_date(item)
    if acquired is not None and acquired >= _BASELINE_04_START:
        return (
            _DEFAULT_SCALE,
            _OFFSET_PB04,
            f"nothing declared and no processing baseline; guessed >= 04.00 from the date {acquired}",
        )
    return (
        _DEFAULT_SCALE,
        0.0,
        "nothing declared and no processing baseline; guessed < 04.00 from the acquisition date",
    )


def _declared_scale_offset(asset: pystac.Asset) -> tuple[float, float] | None:
    """Scale/offset from ``raster:bands`` (STAC 1.0) or flat ``raster:scale``/``raster:offset`` (1.1)."""
    fields = asset.extra_fields
    scale: Any = fields.get("raster:scale")
    offset: Any = fields.get("raster:offset")
    bands = fields.get("raster:bands")
    if scale is None and offset is None and isinstance(bands, list) and bands:
        first = bands[0] if isinstance(bands[0], dict) else {}
        scale, offset = first.get("scale"), first.get("offset")
    if scale is None and offset is None:
        return None
    return float(1.0 if scale is None else scale), float(0.0 if offset is None else offset)


def _is_jp2(key: str, asset: pystac.Asset) -> bool:
    media = (asset.media_type or "").lower()
    return key.lower().endswith("-jp2") or media == "image/jp2" or asset.href.lower().endswith(".jp2")


def _asset_resolution(key: str, asset: pystac.Asset) -> float | None:
    match = _CDSE_KEY.match(key.lower())
    if match:
        return float(match["res"])
    gsd = asset.extra_fields.get("gsd")
    if isinstance(gsd, int | float):
        return float(gsd)
    bands = asset.extra_fields.get("raster:bands")
    if isinstance(bands, list) and bands and isinstance(bands[0], dict):
        res = bands[0].get("spatial_resolution")
        if isinstance(res, int | float):
            return float(res)
    return None


def _is_sentinel2(item: pystac.Item) -> bool:
    """Tell whether an item may be Sentinel-2: False only when its platform names another mission."""
    for name in ("platform", "constellation"):
        value = re.sub(r"[\s_-]", "", str(item.properties.get(name) or "").lower())
        if value and not value.startswith("sentinel2"):
            return False
    return True


def _baseline_tuple(value: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"\s*(\d{1,2})\.(\d{1,2})\s*", value)
    return (int(match[1]), int(match[2])) if match else None


def _at_least_04(baseline: str) -> bool:
    parsed = _baseline_tuple(baseline)
    return parsed is not None and parsed >= (4, 0)


def _item_date(item: pystac.Item) -> _dt.date | None:
    when = item.datetime or item.common_metadata.start_datetime
    return when.date() if when is not None else None
