"""The synthetic demo: deterministic Sentinel-2 areas (STAC catalog of COGs, truth, points, config) on disk.

The generator the offline demo, the tests and the benchmarks run on: :func:`make_demo_area` writes one area
in tile 30SUF near Malaga, or windows of 2 to 4 real Sentinel-2 tiles around 0° E in two UTM zones.
:mod:`lcstack.demo.scoring` compares maps with the truth rasters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lcstack.demo._area import DemoArea, check_arguments, make_area
from lcstack.demo._tiles import make_tiles_area
from lcstack.errors import InvalidInputError

__all__ = ["DemoArea", "make_demo_area"]


def make_demo_area(
    out_dir: str | Path,
    *,
    size: int = 512,
    seed: int = 0,
    flavour: Literal["l2a", "l1c"] = "l2a",
    with_dem: bool = True,
    n_points: int | None = None,
    progress: bool = False,
    tiles: int = 1,
    difficulty: Literal["normal", "hard"] = "normal",
) -> DemoArea:
    """Write a synthetic, deterministic Sentinel-2 area (STAC catalog, truth, points, config) to a folder.

    Parameters
    ----------
    out_dir
        Folder to write into; created if missing. A previous demo catalog in ``out_dir/stac`` is replaced.
    size
        Width and height of the 10 m grid in pixels, 256 to 10980 (a full MGRS tile).
    seed
        Seed of every random choice; the same seed gives byte-identical rasters and points.
    flavour
        ``"l2a"``: Earth Search ``sentinel-2-l2a`` items with an SCL asset and the −0.1 BOA offset of
        processing baseline ≥ 04.00 (one spring scene uses baseline 03.01 without offset).
        ``"l1c"``: ``sentinel-2-l1c`` items (top-of-atmosphere, with ``cirrus``, without ``scl``, no offset).
    with_dem
        Also write a ``cop-dem-glo-30`` collection with one EPSG:4326 float32 DEM item.
    n_points
        Number of labelled points in ``dataset.csv``, split evenly over the 11 leaf classes. Default: about
        60 per leaf class for a 512² area, growing with the square root of ``size``.
    progress
        Show a progress bar.
    tiles
        Number of Sentinel-2 tiles, 1 to 4. ``1``: one area in tile 30SUF near Malaga. ``2`` to ``4``:
        windows of ``size`` × ``size`` px of the real tiles 30SYJ, 31SBD, 30SYH, 31SBC around 0° E, in two UTM
        zones (see :mod:`lcstack.demo._tiles`); ``dataset.csv`` covers all of them, and the truth rasters are
        ``truth/<tile>.tif`` and ``truth/<tile>_sl.tif``.
    difficulty
        ``"normal"``, or ``"hard"`` for measuring map quality (one tile): spectrally confusable class pairs
        (:data:`lcstack.demo.spectra.HARD`), more within-class variability, mixed pixels at patch borders,
        10 % wrong labels in ``dataset.csv`` (the truth rasters stay clean), rare classes (water, wetland:
        at most 1 % of the points each) and an often cloudy autumn.

    Returns
    -------
    DemoArea
        Paths of the written files, the collection ids and the 10 m GeoBox.

    Raises
    ------
    InvalidInputError
        If ``size``, ``seed``, ``flavour`` or ``n_points`` is out of range, or ``out_dir/stac`` holds
        something other than a demo catalog.

    """
    check_arguments(size, seed, flavour, n_points, tiles)
    if difficulty not in ("normal", "hard") or (difficulty == "hard" and tiles > 1):
        raise InvalidInputError(
            f"difficulty={difficulty!r} is invalid: pass 'normal' or 'hard' (the hard demo has one tile)."
        )
    if difficulty == "hard":
        return make_area(
            out_dir, size=int(size), seed=int(seed), flavour=flavour, with_dem=with_dem, n_points=n_points,
            progress=progress, difficulty="hard",
        )  # fmt: skip
    if tiles > 1:
        return make_tiles_area(out_dir, size=int(size), seed=int(seed), flavour=flavour, with_dem=with_dem,
                               n_points=n_points, progress=progress, tiles=int(tiles))  # fmt: skip
    return make_area(
        out_dir, size=int(size), seed=int(seed), flavour=flavour, with_dem=with_dem, n_points=n_points,
        progress=progress,
    )  # fmt: skip
