"""Agreement of produced maps with reference rasters (the demo area's truth)."""

from __future__ import annotations

from typing import Any

import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

__all__ = ["agreement", "score_maps", "score_tiles"]


def agreement(map_da: xr.DataArray, truth: xr.DataArray) -> float:
    """Overall agreement between a class map and a reference on the reference's grid.

    The map is aligned onto the reference grid by coordinates (nearest); pixels that are nodata (0) in
    either are left out.
    """
    m = map_da.reindex_like(truth, method="nearest", tolerance=1e-6).fillna(0).to_numpy()
    t = truth.to_numpy()
    valid = (m > 0) & (t > 0)
    if not valid.any():
        return float("nan")
    return float(np.mean(m[valid] == t[valid]))


def quality(map_da: xr.DataArray, truth: xr.DataArray) -> dict[str, float]:
    """Overall accuracy and macro F1 of a class map against a reference, over all its valid pixels.

    Aligned as :func:`agreement`; F1 is averaged over the classes present in the reference (a class
    the map never predicts counts with F1 0).
    """
    from sklearn.metrics import f1_score

    m = map_da.reindex_like(truth, method="nearest", tolerance=1e-6).fillna(0).to_numpy()
    t = truth.to_numpy()
    valid = (m > 0) & (t > 0)
    if not valid.any():
        return {"overall_accuracy": float("nan"), "macro_f1": float("nan")}
    ref, pred = t[valid].astype(np.int64), m[valid].astype(np.int64)
    return {
        "overall_accuracy": float(np.mean(ref == pred)),
        "macro_f1": float(f1_score(ref, pred, labels=np.unique(ref), average="macro", zero_division=0)),
    }


def score_maps(area: Any, workflow: Any) -> dict[str, Any]:
    """Level-1 and level-2 agreement of a workflow's maps with the demo area's truth rasters."""
    truth1 = rioxarray.open_rasterio(area.truth).squeeze("band", drop=True)
    truth2 = rioxarray.open_rasterio(area.truth_sl).squeeze("band", drop=True)
    maps = []
    for rec in workflow.registry.find("maps", model=workflow.model_key()):
        maps.append(workflow.storage.open_zarr(workflow.map_urls(rec)["zarr"]))
    merged = xr.combine_by_coords([m[["level1", "level2"]] for m in maps]) if len(maps) > 1 else maps[0]
    return {
        "level1": agreement(merged["level1"], truth1),
        "level2": agreement(merged["level2"], truth2),
        "maps": [
            workflow.map_urls(rec)["level1"]
            for rec in workflow.registry.find("maps", model=workflow.model_key())
        ],
    }


def score_tiles(area: Any, workflow: Any) -> dict[str, dict[str, float]]:
    """Level-1 and level-2 agreement of each Sentinel-2 tile's maps with that tile's own truth rasters.

    ``area.truths`` gives each tile's truth pair (``truth/<tile>.tif``); the maps of a tile are those of
    its units (records with ``s2_tile``). A tile's maps hold only the pixels it owns (0 elsewhere), so the
    score is over its owned pixels.
    """
    recs = list(workflow.registry.find("maps", model=workflow.model_key()))
    out = {}
    for tile, (path1, path2) in area.truths.items():
        maps = [
            workflow.storage.open_zarr(workflow.map_urls(r)["zarr"]) for r in recs if r.get("s2_tile") == tile
        ]
        if not maps:
            continue
        merged = xr.combine_by_coords([m[["level1", "level2"]] for m in maps]) if len(maps) > 1 else maps[0]
        scores = {}
        for level, path in (("level1", path1), ("level2", path2)):
            truth = rioxarray.open_rasterio(path).squeeze("band", drop=True)
            scores[level] = agreement(merged[level], truth)
        out[tile] = scores
    return out
