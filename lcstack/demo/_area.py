"""Deterministic, offline synthetic Sentinel-2 area for demos, tests and benchmarks.

:func:`make_demo_area` writes, under one folder:

* ``stac/catalog.json`` — a self-contained static STAC catalog (relative hrefs) with a ``sentinel-2-l2a``
  (or ``sentinel-2-l1c``) collection shaped like Earth Search v1, and a ``cop-dem-glo-30`` collection;
  every asset is a DEFLATE-compressed COG next to its item JSON;
* ``truth.tif`` / ``truth_sl.tif`` — level-1 / level-2 class codes on the 10 m grid;
* ``dataset.csv`` (``latitude;longitude;category;subcategory``), ``seasons.json``, ``lc_labels.json``,
  ``sl_labels.json`` and ``config.yaml`` (paths relative to the folder).

The area lies in the hills west of Málaga (UTM 30N, EPSG:32630), top-left corner (360000, 4080000), on a
10 m grid of ``size`` × ``size`` pixels whose origin is a multiple of 60 m so that the 20 m and 60 m band
grids nest in it. Surface reflectance is a linear mixture of endmember spectra whose fractions follow each
class's phenology (see :mod:`lcstack.demo.spectra`); parcels are warped Voronoi cells, with towns, lakes and
rivers (with riparian wetland) drawn over them. Every scene has its own smooth cloud field, cirrus veil and
cloud shadows, all marked in the SCL band.

With ``tiles`` = 2 to 4, the area is instead made of windows of real Sentinel-2 tiles either side of 0° E
(UTM zones 30 and 31) with one truth pair per tile under ``truth/``; see :mod:`lcstack.demo._tiles`.

Everything is generated in row blocks, so memory stays well under 3 GB even for a full 10980² tile. The same
``seed`` (and size, flavour, ...) gives byte-identical rasters and CSV on the same software stack; nothing
depends on the clock.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from scipy import ndimage
from scipy.spatial import cKDTree
from tqdm.auto import tqdm

from lcstack.demo import spectra
from lcstack.errors import InvalidInputError

__all__ = ["DemoArea", "check_arguments", "make_area"]

logger = logging.getLogger(__name__)

X0, Y0 = 360_000.0, 4_080_000.0
EPSG = 32630
CRS = f"EPSG:{EPSG}"
RESOLUTION = 10
MIN_SIZE, MAX_SIZE = 256, 10980
MGRS_TILE = "30SUF"
MAX_TILES = 4
DEM_COLLECTION = "cop-dem-glo-30"
CATALOG_ID = "lcstack-demo"
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
]
DEM_STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
]

#: Rows per processing block on the 10 m grid; a multiple of 6 so that no 20 m or 60 m pixel straddles two.
_BLOCK_ROWS = 600
_PARCEL_SPACING = 36.0  # px; mean parcel ~ 360 m across
_ARCSEC = 1.0 / 3600.0
_DEM_MARGIN_DEG = 0.01
_SCENES_PER_SEASON = 4
_SENSOR_NOISE = 0.004  # reflectance units, per 10 m pixel and scene

# Independent random streams, one per purpose: changing one part of the generator never shifts the others.
_S_TERRAIN, _S_PARCELS, _S_OVERLAYS, _S_UNITS, _S_TEXTURE, _S_POINTS, _S_SCHEDULE, _S_SCENE = range(1, 9)


@dataclass(frozen=True)
class _Tile:
    """A Sentinel-2 tile of the demo: MGRS id, UTM EPSG code, upper-left corner and relative orbit."""

    tile: str
    epsg: int
    x0: float
    y0: float
    orbit: int = 37

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"


MALAGA = _Tile(MGRS_TILE, EPSG, X0, Y0)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


@dataclass(frozen=True)
class DemoArea:
    """Paths and grid of a generated demo area (all paths absolute)."""

    root: Path
    catalog: Path
    config: Path
    points: Path
    seasons: Path
    lc_labels: Path
    sl_labels: Path
    truth: Path
    truth_sl: Path
    collection: str
    dem_collection: str | None
    geobox: GeoBox
    #: every tile's 10 m grid (one entry, ``30SUF``, for a one-tile area)
    tiles: Mapping[str, GeoBox] = field(default_factory=dict)
    #: every tile's level-1 and level-2 truth rasters
    truths: Mapping[str, tuple[Path, Path]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# smooth random fields


def _cubic_taps(n_out: int, step: float, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Return indices and Keys cubic-convolution weights (4 taps) of output pixels on a node lattice."""
    u = (np.arange(n_out, dtype=np.float64) + 0.5) / step + 1.0
    i = np.floor(u).astype(np.int64)
    t = u - i
    a = -0.5

    def near(s: np.ndarray) -> np.ndarray:
        return (a + 2) * s**3 - (a + 3) * s**2 + 1

    def far(s: np.ndarray) -> np.ndarray:
        return a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a

    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)])
    index = np.clip(np.stack([i - 1, i, i + 1, i + 2]), 0, n_nodes - 1)
    return index, weights


class _Smooth:
    """Band-limited Gaussian noise on a square grid, evaluated block by block (same values in any split).

    Interpolation is a 4-tap gather rather than a matrix product, so results do not depend on BLAS threading.
    """

    def __init__(self, rng: np.random.Generator, n: int, step: float) -> None:
        self.n_nodes = int(math.ceil(n / step)) + 4
        self.step = step
        nodes = rng.standard_normal((self.n_nodes, self.n_nodes))
        ci, cw = _cubic_taps(n, step, self.n_nodes)
        self._by_col = sum(nodes[:, ci[k]] * cw[k] for k in range(4))  # (n_nodes, n)
        self._n = n

    def block(self, r0: int, r1: int) -> np.ndarray:
        ri, rw = _cubic_taps(r1, self.step, self.n_nodes)
        ri, rw = ri[:, r0:r1], rw[:, r0:r1]
        out = np.zeros((r1 - r0, self._n), dtype=np.float32)
        for k in range(4):
            out += (self._by_col[ri[k]] * rw[k][:, None]).astype(np.float32)
        return out


# ---------------------------------------------------------------------------------------------------------
# terrain


class _Terrain:
    """Smooth hills from a sum of plane waves in UTM metres, 0–1200 m, rising gently inland (north)."""

    def __init__(self, seed: int, origin: tuple[float, float] = (X0, Y0)) -> None:
        self.x0, self.y0 = origin
        rng = _rng(seed, _S_TERRAIN)
        n = 14
        wavelength = np.exp(rng.uniform(np.log(2_500.0), np.log(30_000.0), n))
        theta = rng.uniform(0, 2 * np.pi, n)
        self.phase = rng.uniform(0, 2 * np.pi, n)
        amp = (wavelength / 30_000.0) ** 0.7
        self.amp = amp / amp.sum()
        self.kx = 2 * np.pi * np.cos(theta) / wavelength
        self.ky = 2 * np.pi * np.sin(theta) / wavelength

    def elevation(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = np.asarray(x, dtype=np.float64) - self.x0, np.asarray(y, dtype=np.float64) - self.y0
        s = np.zeros(np.broadcast(dx, dy).shape)
        for k in range(len(self.amp)):
            s += self.amp[k] * np.cos(self.kx[k] * dx + self.ky[k] * dy + self.phase[k])
        z = 520.0 + 1400.0 * s + 0.003 * (dy + 2_560.0)
        return np.clip(z, 0.0, 1200.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# landscape: parcels + overlays -> "units" (patches with one class and their own spectral perturbation)


@dataclass(frozen=True)
class _Disc:
    """A town or a lake: a wobbly disc, optionally with a partial ring of wetland."""

    row: float
    col: float
    radius: float
    unit: int
    ring_unit: int | None = None


@dataclass(frozen=True)
class _River:
    base: float
    amp: tuple[float, float]
    wavelength: tuple[float, float]
    phase: tuple[float, float]
    half_width: float
    bank: float
    unit: int
    bank_unit: int

    def centre(self, cols: np.ndarray) -> np.ndarray:
        return (
            self.base
            + self.amp[0] * np.sin(2 * np.pi * cols / self.wavelength[0] + self.phase[0])
            + self.amp[1] * np.sin(2 * np.pi * cols / self.wavelength[1] + self.phase[1])
        )

    def width(self, cols: np.ndarray) -> np.ndarray:
        return self.half_width * (1.0 + 0.3 * np.sin(2 * np.pi * cols / 700.0 + self.phase[1]))


class _Landscape:
    """Unit map (int32 per 10 m pixel, padded grid), unit classes and unit spectra."""

    def __init__(self, size: int, seed: int, terrain: _Terrain, progress: tqdm | None = None,
                 origin: tuple[float, float] = (X0, Y0), hard: bool = False) -> None:  # fmt: skip
        """Lay out parcels, overlays (towns, lakes, rivers) and the warped unit map of the landscape.

        Long because the steps draw in a fixed order from seeded random streams that fix the demo's
        bytes; they read top to bottom as one recipe.
        """
        self.size = size
        #: the hard demo (spectra.HARD): confusable classes, more variability, mixed border pixels
        self.hard = hard
        self.n = int(math.ceil(size / 6) * 6)  # padded so that the 60 m grid is whole
        self.seed = seed
        n = self.n
        leaves = spectra.LEAVES
        n_leaves = len(leaves)

        # parcels: jittered lattice of Voronoi seeds, classes weighted by elevation preference
        rng = _rng(seed, _S_PARCELS)
        s = _PARCEL_SPACING
        k = int(math.ceil(n / s)) + 2
        lattice = (
            np.stack(np.meshgrid(np.arange(k), np.arange(k), indexing="ij"), -1).reshape(-1, 2) - 0.5
        ) * s
        seeds = lattice + rng.uniform(-0.42 * s, 0.42 * s, lattice.shape)
        self._tree = cKDTree(seeds)
        n_parcels = len(seeds)
        elev = terrain.elevation(origin[0] + seeds[:, 1] * RESOLUTION, origin[1] - seeds[:, 0] * RESOLUTION)
        e = (elev / 1200.0 - 0.5) * 2.0
        logits = np.log([leaf.weight for leaf in leaves])[None, :] + np.outer(
            e, [leaf.uphill for leaf in leaves]
        )
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        parcel_leaf = np.full(n_parcels, -1, dtype=np.int64)
        inside = np.flatnonzero(np.all((seeds > s / 2) & (seeds < size - s / 2), axis=1))
        min_count = max(2, len(inside) // (4 * n_leaves))
        for leaf_id in rng.permutation(n_leaves):
            free = inside[parcel_leaf[inside] < 0]
            p = prob[free, leaf_id] / prob[free, leaf_id].sum()
            chosen = rng.choice(free, size=min(min_count, len(free)), replace=False, p=p)
            parcel_leaf[chosen] = leaf_id
        todo = np.flatnonzero(parcel_leaf < 0)
        cdf = np.cumsum(prob[todo], axis=1)
        draw = rng.uniform(size=len(todo))[:, None]
        parcel_leaf[todo] = np.minimum((draw > cdf).sum(axis=1), n_leaves - 1)

        # overlays: towns, lakes (+ wetland ring), rivers (+ riparian wetland); each is a unit of its own
        rng = _rng(seed, _S_OVERLAYS)
        unit_leaf: list[int] = parcel_leaf.tolist()

        def new_unit(name: str) -> int:
            unit_leaf.append(spectra.LEAF_INDEX[name])
            return len(unit_leaf) - 1

        def disc(lo: float, hi: float, r_min: float, r_max: float, leaf: str, ring: str | None) -> _Disc:
            row, col = rng.uniform(lo * size, hi * size, 2)
            radius = rng.uniform(r_min, r_max)
            return _Disc(row, col, radius, new_unit(leaf), new_unit(ring) if ring else None)

        self.towns = [
            disc(0.15, 0.85, 35, 60, "builtUp", None) for _ in range(max(1, round(size**2 / 700**2)))
        ]
        self.lakes = [
            disc(0.1, 0.9, 18, 32, "water", "wetland") for _ in range(max(1, round(size**2 / 600**2)))
        ]
        n_rivers = max(1, round(size / 1500))
        self.rivers = [
            _River(
                base=(i + 0.5 + rng.uniform(-0.15, 0.15)) * size / n_rivers,
                amp=(rng.uniform(20, 45), rng.uniform(4, 9)),
                wavelength=(rng.uniform(600, 1200), rng.uniform(150, 300)),
                phase=(rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)),
                half_width=rng.uniform(2.5, 4.0),
                bank=10.0,
                unit=new_unit("water"),
                bank_unit=new_unit("wetland"),
            )
            for i in range(n_rivers)
        ]
        self.unit_leaf = np.asarray(unit_leaf, dtype=np.uint8)

        # boundary warping: coarse meanders + fine wiggle
        self._warp = [_Smooth(rng, n, step) for step in (48.0, 48.0, 12.0, 12.0)]

        self.unit_map = np.empty((n, n), dtype=np.int32)
        self.texture = np.empty((n, n), dtype=np.float16)
        for b, (r0, r1) in enumerate(_blocks(n)):
            self.unit_map[r0:r1] = self._unit_block(r0, r1)
            tex = _rng(seed, _S_TEXTURE, b).standard_normal((r1 - r0, n), dtype=np.float32)
            self.texture[r0:r1] = 1.0 + (spectra.HARD["texture"] if hard else 0.035) * np.clip(tex, -3, 3)
            if progress is not None:
                progress.set_postfix_str(f"landscape rows {r1}/{n}")

        self._unit_spectra()

    def _unit_block(self, r0: int, r1: int) -> np.ndarray:
        n = self.n
        w_r1, w_c1, w_r2, w_c2 = (f.block(r0, r1) for f in self._warp)
        rows = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
        cols = np.arange(n, dtype=np.float32)[None, :] + 0.5
        qr = rows + 7.0 * w_r1 + 2.0 * w_r2
        qc = cols + 7.0 * w_c1 + 2.0 * w_c2
        _, idx = self._tree.query(np.column_stack([qr.ravel(), qc.ravel()]), workers=1)
        unit = idx.reshape(r1 - r0, n).astype(np.int32)

        def window(row: float, col: float, reach: float) -> tuple[slice, slice] | None:
            a, b = max(r0, int(row - reach)), min(r1, int(row + reach) + 1)
            c, d = max(0, int(col - reach)), min(n, int(col + reach) + 1)
            return (slice(a - r0, b - r0), slice(c, d)) if a < b and c < d else None

        for town in self.towns:
            win = window(town.row, town.col, 1.4 * town.radius)
            if win is not None:
                d = np.hypot(rows[win[0]] - town.row, cols[:, win[1]] - town.col) / town.radius
                hit = d * (1.0 + 0.15 * w_r2[win]) < 1.0
                unit[win][hit] = town.unit
        for lake in self.lakes:
            win = window(lake.row, lake.col, 1.8 * lake.radius)
            if win is not None:
                d = np.hypot(rows[win[0]] - lake.row, cols[:, win[1]] - lake.col) / lake.radius
                ring = (d * (1.0 + 0.1 * w_c2[win]) < 1.5) & (w_c1[win] > -0.3)
                unit[win][ring] = lake.ring_unit
                unit[win][d * (1.0 + 0.1 * w_r2[win]) < 1.0] = lake.unit
        for river in self.rivers:
            centre = river.centre(cols[0])[None, :]
            dist = np.abs(rows - centre - 1.5 * w_r2)
            half = river.width(cols[0])[None, :]
            bank = (dist < half + river.bank) & (w_r1 > -0.2)
            unit[bank] = river.bank_unit
            unit[dist < half] = river.unit
        return unit

    def _unit_spectra(self) -> None:
        """Per-unit, per-season surface reflectance and SCL class: class phenology + per-unit perturbation."""
        rng = _rng(self.seed, _S_UNITS)
        n_units = len(self.unit_leaf)
        table = spectra.hard_fraction_table() if self.hard else spectra.leaf_fraction_table()
        base = table[self.unit_leaf]  # (unit, season, endmember)
        delta = rng.normal(0.0, spectra.HARD["delta"] if self.hard else 0.05, base.shape) * (base > 0)
        frac = np.clip(base + delta, 0.0, None)
        frac /= frac.sum(axis=-1, keepdims=True)
        spread = spectra.HARD["brightness"] if self.hard else 0.04
        brightness = 1.0 + spread * np.clip(rng.standard_normal(n_units), -2.5, 2.5)
        refl = np.einsum("use,eb->usb", frac, spectra.ENDMEMBER_MATRIX) * brightness[:, None, None]
        self.unit_reflectance = refl.astype(np.float32)  # (unit, season, band)
        red = refl[..., spectra.SPECTRAL_BANDS.index("red")]
        nir = refl[..., spectra.SPECTRAL_BANDS.index("nir")]
        ndvi = (nir - red) / (nir + red)
        water = frac[..., spectra.ENDMEMBER_NAMES.index("water")]
        scl = np.where(ndvi >= 0.3, spectra.SCL_VEGETATION, spectra.SCL_NOT_VEGETATED)
        self.unit_scl = np.where(water >= 0.5, spectra.SCL_WATER, scl).astype(np.uint8)  # (unit, season)

    def leaf_map(self) -> np.ndarray:
        """Leaf-class index of every pixel of the (cropped) output grid."""
        return self.unit_leaf[self.unit_map[: self.size, : self.size]]


def _blocks(n_rows: int, step: int = _BLOCK_ROWS) -> Iterator[tuple[int, int]]:
    for r0 in range(0, n_rows, step):
        yield r0, min(n_rows, r0 + step)


# ---------------------------------------------------------------------------------------------------------
# acquisition schedule


@dataclass(frozen=True)
class _Scene:
    index: int
    season: int
    time: dt.datetime
    platform: str
    cloud_target: float
    cirrus_target: float
    baseline: str
    nodata_fraction: float
    sun_azimuth: float
    sun_elevation: float
    cloud_height: float
    tile: _Tile = field(default_factory=lambda: MALAGA)

    @property
    def item_id(self) -> str:
        return f"S2{self.platform[-1].upper()}_{self.tile.tile}_{self.time:%Y%m%d}_0"


def _schedule(seed: int, flavour: str, tile: _Tile | None = None, tile_index: int = 0,
              hard: bool = False) -> list[_Scene]:  # fmt: skip
    """Four usable scenes and one nearly overcast scene per season, on a 5-day S2A/S2B revisit.

    Tile ``tile_index`` > 0 is seen ``tile_index`` days later in the revisit cycle (another relative orbit),
    from a random stream of its own; its scene indices start at ``1000 * tile_index``.
    """
    tile = tile or MALAGA
    rng = _rng(seed, _S_SCHEDULE, tile_index) if tile_index else _rng(seed, _S_SCHEDULE)
    first_pass = dt.datetime(2023, 3, 2, 11, 3, 21, tzinfo=dt.UTC) + dt.timedelta(days=tile_index)
    scenes: list[_Scene] = []
    for s, (start, end) in enumerate(spectra.SEASONS.values()):
        d0, d1 = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
        passes = [k for k in range(0, 400) if d0 <= (first_pass + dt.timedelta(days=5 * k)).date() <= d1]
        chosen = np.sort(rng.choice(passes, size=_SCENES_PER_SEASON + 1, replace=False))
        overcast = int(rng.integers(_SCENES_PER_SEASON + 1))
        targets = rng.permutation(
            [
                rng.uniform(0.0, 0.04),
                rng.uniform(0.04, 0.15),
                rng.uniform(0.10, 0.30),
                rng.uniform(0.15, 0.35),
            ]
        )
        if hard and s == spectra.HARD["cloudy_season"]:  # a season that is often cloudy
            targets = np.clip(targets + spectra.HARD["cloud_extra"], 0.0, 0.8)
        usable = 0
        for j, k in enumerate(chosen):
            time = first_pass + dt.timedelta(days=5 * int(k), seconds=float(rng.uniform(-40, 40)))
            doy = time.timetuple().tm_yday
            declination = 23.44 * math.sin(2 * math.pi * (284 + doy) / 365)
            is_overcast = j == overcast
            scenes.append(
                _Scene(
                    index=1000 * tile_index + len(scenes),
                    season=s,
                    time=time.replace(microsecond=(time.microsecond // 1000) * 1000),
                    platform="sentinel-2a" if k % 2 == 0 else "sentinel-2b",
                    cloud_target=float(rng.uniform(0.85, 0.95)) if is_overcast else float(targets[usable]),
                    cirrus_target=float(rng.uniform(0.0, 0.05)) if rng.uniform() < 0.5 else 0.0,
                    # one usable scene in an older baseline (no BOA offset) so that harmonisation is exercised
                    baseline="03.01"
                    if (flavour == "l2a" and s == 0 and usable == 0 and not is_overcast)
                    else "05.09",
                    nodata_fraction=0.25 if (s == 1 and usable == 1 and not is_overcast) else 0.0,
                    sun_azimuth=float(
                        150.0 + 12.0 * math.cos(2 * math.pi * (doy - 172) / 365) + rng.uniform(-2, 2)
                    ),
                    sun_elevation=float(90.0 - 36.8 + declination - 9.0 + rng.uniform(-1, 1)),
                    cloud_height=float(rng.uniform(800.0, 2500.0)),
                    tile=tile,
                )
            )
            usable += 0 if is_overcast else 1
    return scenes


# ---------------------------------------------------------------------------------------------------------
# rasters


def _write_cog(path: Path, array: np.ndarray, transform: Affine, crs: str, *, nodata: float | None,
               resampling: str = "average", predictor: int = 2) -> None:  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    # one tile (and so no overview) up to 512 px; overviews appear from 1024 px on
    blocksize = 512 if min(array.shape) >= 512 else 256
    profile: dict[str, Any] = {
        "driver": "COG",
        "width": array.shape[1],
        "height": array.shape[0],
        "count": 1,
        "dtype": array.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "compress": "DEFLATE",
        "level": 1,  # zlib level 1: twice as fast as the default 6, and no bigger on this data
        "predictor": predictor,
        "blocksize": blocksize,
        "overview_resampling": resampling,
        "bigtiff": "IF_SAFER",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array, 1)


def _encode(reflectance: np.ndarray, offset_dn: int) -> np.ndarray:
    """Reflectance -> uint16 DN (``round(r * 10000) + offset_dn``, at least 1 since 0 is nodata)."""
    dn = np.clip(reflectance, 0.0, 1.0)
    dn *= np.float32(10_000.0)
    np.rint(dn, out=dn)
    dn += np.float32(offset_dn)
    np.clip(dn, 1, 65_535, out=dn)
    return dn.astype(np.uint16)


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Mean over f x f blocks (strided sums: much faster than a reshaped ``mean`` for small f)."""
    if f == 1:
        return a
    out = a[0::f, 0::f].copy()
    for i in range(f):
        for j in range(f):
            if i or j:
                out += a[i::f, j::f]
    out *= np.float32(1.0 / (f * f))
    return out


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean triangular noise with standard deviation ``sigma`` (several times cheaper than Gaussian)."""
    u = rng.random(shape, dtype=np.float32)
    u += rng.random(shape, dtype=np.float32)
    u -= np.float32(1.0)
    u *= np.float32(sigma * math.sqrt(6.0))
    return u


class _SceneRenderer:
    """Cloud, cirrus and shadow fields of one scene (on the 20 m grid) and its band rasters."""

    def __init__(self, scene: _Scene, land: _Landscape, seed: int, flavour: str) -> None:
        self.scene, self.land, self.seed, self.flavour = scene, land, seed, flavour
        n20 = land.n // 2
        s20 = (land.size + 1) // 2
        rng = _rng(seed, _S_SCENE, scene.index)
        coarse, fine, cirrus = _Smooth(rng, n20, 48.0), _Smooth(rng, n20, 12.0), _Smooth(rng, n20, 64.0)
        field = np.empty((n20, n20), dtype=np.float32)
        veil = np.empty((n20, n20), dtype=np.float32)
        for r0, r1 in _blocks(n20):
            field[r0:r1] = 0.8 * coarse.block(r0, r1) + 0.35 * fine.block(r0, r1)
            veil[r0:r1] = cirrus.block(r0, r1)

        # thresholds from a regular subsample: exact up to 1024 px, ~300k samples on a full tile
        sub = max(1, s20 // 512)
        thr = (
            float(np.quantile(field[:s20:sub, :s20:sub], 1.0 - scene.cloud_target))
            if scene.cloud_target > 0
            else np.inf
        )
        cloud = field > thr
        self.alpha = np.where(cloud, 0.30 + 0.65 * np.clip((field - thr) / 0.6, 0.0, 1.0), 0.0).astype(
            np.float32
        )
        del field
        thr_c = (
            float(np.quantile(veil[:s20:sub, :s20:sub], 1.0 - scene.cirrus_target))
            if scene.cirrus_target > 0
            else np.inf
        )
        cirrus_mask = (veil > thr_c) & ~cloud
        self.cirrus = np.where(cirrus_mask, 0.10 + 0.05 * np.clip(veil - thr_c, 0.0, 1.0), 0.0).astype(
            np.float32
        )
        del veil

        # shadows: thick clouds projected away from the sun
        distance = scene.cloud_height / math.tan(math.radians(scene.sun_elevation)) / 20.0
        away = math.radians(scene.sun_azimuth + 180.0)
        dr, dc = round(-math.cos(away) * distance), round(math.sin(away) * distance)
        thick = self.alpha >= 0.45
        shadow = np.zeros_like(thick)
        src = thick[max(0, -dr) : n20 - max(0, dr), max(0, -dc) : n20 - max(0, dc)]
        shadow[max(0, dr) : max(0, dr) + src.shape[0], max(0, dc) : max(0, dc) + src.shape[1]] = src
        # surface is seen through (1 - alpha) of cloud, darkened to 35 % in shadow
        self.mult = (1.0 - self.alpha) * np.where(shadow, np.float32(0.35), np.float32(1.0))

        scl = land.unit_scl[land.unit_map[::2, ::2], scene.season]
        scl[shadow & ~cloud & ~cirrus_mask] = spectra.SCL_SHADOW
        scl[cirrus_mask] = spectra.SCL_CIRRUS
        scl[cloud & (self.alpha < 0.6)] = spectra.SCL_CLOUD_MEDIUM
        scl[cloud & (self.alpha >= 0.6)] = spectra.SCL_CLOUD_HIGH
        scl[self._nodata(20, 0, n20)] = 0
        self.scl = scl[:s20, :s20]

        gain = 1.0 + 0.01 * rng.standard_normal(len(spectra.SPECTRAL_BANDS))
        jitter = 1.0 + 0.01 * rng.standard_normal((len(land.unit_leaf), len(spectra.SPECTRAL_BANDS)))
        # phenology keeps moving within a season: drift up to 25 % towards the previous / next season
        start, end = (dt.date.fromisoformat(d) for d in list(spectra.SEASONS.values())[scene.season])
        t = (scene.time.date() - start).days / max(1, (end - start).days)
        other = scene.season - 1 if t < 0.5 else scene.season + 1
        other = min(max(other, 0), len(spectra.SEASONS) - 1)
        drift = 0.5 * abs(t - 0.5)
        table = (1 - drift) * land.unit_reflectance[:, scene.season, :] + drift * land.unit_reflectance[
            :, other, :
        ]
        self.table = (table * gain * jitter).astype(np.float32)
        self.cloud_spectrum = spectra.CLOUD_SPECTRUM * rng.uniform(0.85, 1.1)

    def nodata_fraction_10m(self) -> float:
        """Fraction of the 10 m grid beyond the swath edge."""
        size = self.land.size
        return (
            sum(float(self._nodata(RESOLUTION, r0, r1)[:, :size].sum()) for r0, r1 in _blocks(size)) / size**2
        )

    def _nodata(self, res: int, r0: int, r1: int) -> np.ndarray:
        """Pixels beyond the swath edge (a slanted line in the west), rows ``r0:r1`` at resolution ``res``.

        The edge is drawn on the 60 m grid so that every band and the SCL agree on which pixels hold data.
        """
        n_cols = self.land.n * RESOLUTION // res
        if self.scene.nodata_fraction <= 0:
            return np.zeros((r1 - r0, n_cols), dtype=bool)
        extent = self.land.size * RESOLUTION
        slope = math.tan(math.radians(15.0))
        x_edge = X0 + self.scene.nodata_fraction * extent - 0.5 * extent * slope
        coarse = 60 // res
        x = X0 + ((np.arange(n_cols) // coarse) + 0.5) * 60.0
        depth = ((np.arange(r0, r1) // coarse) + 0.5) * 60.0  # metres south of Y0
        return x[None, :] < x_edge + depth[:, None] * slope

    def band(self, name: str, offset_dn: int) -> np.ndarray:
        """Digital numbers (uint16, 0 beyond the swath edge) of one band at its native resolution.

        Reflectance is encoded block by block, so no full-size float array of the band ever exists.
        """
        land, scene = self.land, self.scene
        b = spectra.SPECTRAL_BANDS.index(name)
        res = spectra.BAND_INFO[name][1]
        f = res // RESOLUTION
        n_out = int(math.ceil(land.size / f))
        out = np.empty((n_out, n_out), dtype=np.uint16)
        column = np.ascontiguousarray(self.table[:, b])
        cloud_b, cirrus_b = np.float32(self.cloud_spectrum[b]), np.float32(spectra.CIRRUS_SPECTRUM[b])
        path_b = np.float32(spectra.PATH_REFLECTANCE[b]) if self.flavour == "l1c" else None
        for k, (r0, r1) in enumerate(_blocks(land.n)):
            surface = column[land.unit_map[r0:r1]]
            if land.hard:  # mixed pixels at patch borders: each pixel sees a little of its neighbours
                surface = ndimage.uniform_filter(surface, size=3, mode="nearest")
            surface *= land.texture[r0:r1]
            rng = _rng(self.seed, _S_SCENE, scene.index, b, k)
            # clouds live on the 20 m grid: apply them there (or broadcast over 2x2 blocks for 10 m bands)
            h0, h1 = r0 // 2, r1 // 2
            alpha = self.alpha[h0:h1]
            add = alpha * cloud_b
            add += self.cirrus[h0:h1] * cirrus_b
            if path_b is not None:
                add += (1.0 - alpha) * path_b
            mult = self.mult[h0:h1]
            if f == 1:
                surface += _noise(rng, surface.shape, _SENSOR_NOISE)
                quad = surface.reshape(h1 - h0, 2, land.n // 2, 2)
                quad *= mult[:, None, :, None]
                quad += add[:, None, :, None]
                toa = surface
            else:
                toa = _block_mean(surface, 2)
                # the mean of four 10 m noise draws
                toa += _noise(rng, toa.shape, _SENSOR_NOISE / 2)
                toa *= mult
                toa += add
                toa = _block_mean(toa, f // 2)
            o0, o1 = r0 // f, min(r1 // f, n_out)
            if o0 >= o1:
                break
            dn = _encode(toa[: o1 - o0, :n_out], offset_dn)
            dn[self._nodata(res, o0, o1)[:, :n_out]] = 0
            out[o0:o1] = dn
        return out


# ---------------------------------------------------------------------------------------------------------
# STAC


def _footprint(geobox: GeoBox) -> tuple[dict[str, Any], list[float]]:
    """Footprint polygon (four corners, as Earth Search writes it) and bbox of the densified outline."""
    to_lonlat = Transformer.from_crs(str(geobox.crs), "EPSG:4326", always_xy=True)
    left, bottom, right, top = geobox.extent.boundingbox
    corners = [(right, bottom), (right, top), (left, top), (left, bottom), (right, bottom)]
    ring = [list(to_lonlat.transform(x, y)) for x, y in corners]
    bbox = geobox.extent.to_crs("EPSG:4326", resolution=100.0).boundingbox
    return {"type": "Polygon", "coordinates": [ring]}, [bbox.left, bbox.bottom, bbox.right, bbox.top]


def _iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def _scene_item(scene: _Scene, geobox: GeoBox, flavour: str, collection: str, assets: dict[str, Path],
                stats: dict[str, float]) -> pystac.Item:  # fmt: skip
    """Return the STAC item of one synthetic scene, as a Sentinel-2 L2A (or L1C) item of a real catalog.

    Long because it is one flat literal of the item's properties and assets, read top to bottom.
    """
    level = "L1C" if flavour == "l1c" else "L2A"
    item_id = f"{scene.item_id}_{level}"
    tile = scene.tile
    geometry, bbox = _footprint(geobox)
    generated = scene.time + dt.timedelta(hours=5, minutes=17)
    sat = "S2" + scene.platform[-1].upper()
    stamp, gen = f"{scene.time:%Y%m%dT%H%M%S}", f"{generated:%Y%m%dT%H%M%S}"
    pb = scene.baseline
    props: dict[str, Any] = {
        "created": _iso(generated + dt.timedelta(minutes=40)),
        "platform": scene.platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": stats["cloud_cover"],
        "proj:code": tile.crs,
        "proj:epsg": tile.epsg,
        "mgrs:utm_zone": int(tile.tile[:2]),
        "mgrs:latitude_band": tile.tile[2],
        "mgrs:grid_square": tile.tile[3:],
        "grid:code": f"MGRS-{tile.tile}",
        "view:sun_azimuth": round(scene.sun_azimuth, 6),
        "view:sun_elevation": round(scene.sun_elevation, 6),
        "s2:nodata_pixel_percentage": stats["nodata"],
    }
    if flavour == "l2a":
        props.update({f"s2:{k}": v for k, v in stats.items() if k.endswith("_percentage")})
    props.update(
        {
            "s2:product_type": "S2MSI1C" if flavour == "l1c" else "S2MSI2A",
            "s2:processing_baseline": pb,
            "s2:product_uri": f"{sat}_MSI{level}_{stamp}_N{pb.replace('.', '')}_R{tile.orbit:03d}"
            f"_T{tile.tile}_{gen}.SAFE",
            "s2:generation_time": _iso(generated),
            "s2:datatake_id": f"G{sat}_{stamp}_0{40000 + scene.index}_N{pb}",
            "s2:datatake_type": "INS-NOBS",
            "datetime": _iso(scene.time),
            "s2:sequence": "0",
        }
    )
    if flavour == "l2a":
        props["earthsearch:boa_offset_applied"] = False
    props["updated"] = props["created"]

    item = pystac.Item(
        id=item_id,
        geometry=geometry,
        bbox=bbox,
        datetime=scene.time,
        properties=props,
        stac_extensions=list(STAC_EXTENSIONS),
        collection=collection,
    )
    offset = -0.1 if (flavour == "l2a" and pb >= "04.00") else 0.0
    for key, path in assets.items():
        if key == "scl":
            extra: dict[str, Any] = {
                "proj:shape": list(_shape(geobox, 20)),
                "proj:transform": _transform_list(20, tile),
                "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}],
            }
            title = "Scene classification map (SCL)"
        else:
            _, res, title, description, centre, fwhm, common = spectra.BAND_INFO[key]
            extra = {
                "eo:bands": [
                    {
                        "name": key,
                        "common_name": common,
                        "description": description,
                        "center_wavelength": centre,
                        "full_width_half_max": fwhm,
                    }
                ],
                "gsd": res,
                "proj:shape": list(_shape(geobox, res)),
                "proj:transform": _transform_list(res, tile),
                "raster:bands": [
                    {
                        "nodata": 0,
                        "data_type": "uint16",
                        "bits_per_sample": 15,
                        "spatial_resolution": res,
                        "scale": 0.0001,
                        "offset": offset,
                    }
                ],
            }
        item.add_asset(
            key,
            pystac.Asset(
                href=str(path),
                media_type=COG_MEDIA_TYPE,
                title=title,
                roles=["data", "reflectance"],
                extra_fields=extra,
            ),
        )
    return item


def _shape(geobox: GeoBox, res: int) -> tuple[int, int]:
    n = int(math.ceil(geobox.shape[0] * RESOLUTION / res))
    return n, n


def _transform_list(res: int, tile: _Tile | None = None) -> list[float]:
    tile = tile or MALAGA
    return [res, 0, tile.x0, 0, -res, tile.y0]


def _scene_stats(
    scene: _Scene, scl: np.ndarray | None, nodata_fraction: float, cloud_mask: np.ndarray
) -> dict:
    """``eo:cloud_cover`` and ``s2:*_percentage`` as ESA computes them: over the pixels that hold data."""
    stats: dict[str, float] = {"nodata": round(100.0 * nodata_fraction, 6)}
    valid = max(1, int((cloud_mask >= 0).sum()))
    stats["cloud_cover"] = round(100.0 * int((cloud_mask == 1).sum()) / valid, 6)
    if scl is not None:
        n = max(1, int((scl != 0).sum()))

        def pct(*codes: int) -> float:
            return round(100.0 * int(np.isin(scl, codes).sum()) / n, 6)

        stats.update(
            {
                "cloud_cover": pct(8, 9, 10),
                "dark_features_percentage": pct(2),
                "cloud_shadow_percentage": pct(3),
                "vegetation_percentage": pct(4),
                "not_vegetated_percentage": pct(5),
                "water_percentage": pct(6),
                "unclassified_percentage": pct(7),
                "medium_proba_clouds_percentage": pct(8),
                "high_proba_clouds_percentage": pct(9),
                "thin_cirrus_percentage": pct(10),
                "snow_ice_percentage": pct(11),
            }
        )
    return stats


def _dem_item(
    item_id: str, grid_code: str, path: Path, transform: Affine, shape: tuple[int, int]
) -> pystac.Item:
    west, north = transform.c, transform.f
    east, south = west + shape[1] * transform.a, north + shape[0] * transform.e
    item = pystac.Item(
        id=item_id,
        geometry={
            "type": "Polygon",
            "coordinates": [[[east, south], [east, north], [west, north], [west, south], [east, south]]],
        },
        bbox=[west, south, east, north],
        datetime=dt.datetime(2021, 4, 22, tzinfo=dt.UTC),
        properties={
            "platform": "tandem-x",
            "gsd": 30,
            "proj:code": "EPSG:4326",
            "proj:epsg": 4326,
            "proj:transform": list(transform)[:6],
            "proj:shape": list(shape),
            "grid:code": grid_code,
            "created": "2023-03-28T15:22:58.882Z",
            "updated": "2023-04-20T18:14:07.025Z",
        },
        stac_extensions=list(DEM_STAC_EXTENSIONS),
        collection=DEM_COLLECTION,
    )
    item.add_asset(
        "data",
        pystac.Asset(
            href=str(path),
            media_type=COG_MEDIA_TYPE,
            title="Data",
            roles=["data"],
            extra_fields={
                "raster:bands": [
                    {"sampling": "point", "data_type": "float32", "spatial_resolution": 30, "unit": "meter"}
                ]
            },
        ),
    )
    return item


def _write_dem(folder: Path, geobox: GeoBox, terrain: _Terrain, crs: str = CRS) -> pystac.Item:
    """Float32 DEM in EPSG:4326 on the 1 arc-second Copernicus lattice, covering the area plus a margin."""
    bbox = geobox.extent.to_crs("EPSG:4326", resolution=100.0).boundingbox
    # Copernicus pixel centres sit on whole arc-seconds: edges are half an arc-second off
    col0 = math.floor((bbox.left - _DEM_MARGIN_DEG) / _ARCSEC)
    col1 = math.ceil((bbox.right + _DEM_MARGIN_DEG) / _ARCSEC)
    row0 = math.floor((bbox.bottom - _DEM_MARGIN_DEG) / _ARCSEC)
    row1 = math.ceil((bbox.top + _DEM_MARGIN_DEG) / _ARCSEC)
    width, height = col1 - col0, row1 - row0
    west, north = (col0 - 0.5) * _ARCSEC, (row1 - 0.5) * _ARCSEC
    transform = Affine(_ARCSEC, 0.0, west, 0.0, -_ARCSEC, north)
    to_utm = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    lon = west + (np.arange(width) + 0.5) * _ARCSEC
    dem = np.empty((height, width), dtype=np.float32)
    for r0, r1 in _blocks(height, 256):
        lat = north - (np.arange(r0, r1) + 0.5) * _ARCSEC
        lon2, lat2 = np.meshgrid(lon, lat)
        x, y = to_utm.transform(lon2, lat2)
        dem[r0:r1] = terrain.elevation(x, y)
    lat_tag, lon_tag = f"N{int(math.floor(bbox.bottom)):02d}", f"W{int(math.ceil(-bbox.left)):03d}"
    item_id = f"Copernicus_DSM_COG_10_{lat_tag}_00_{lon_tag}_00_DEM"
    path = folder / DEM_COLLECTION / item_id / f"{item_id}.tif"
    _write_cog(path, dem, transform, "EPSG:4326", nodata=None, resampling="average", predictor=3)
    return _dem_item(item_id, f"CDEM-{lat_tag}{lon_tag}", path, transform, (height, width))


def _collection(collection_id: str, title: str, description: str, bbox: list[float],
                interval: tuple[dt.datetime, dt.datetime]) -> pystac.Collection:  # fmt: skip
    return pystac.Collection(
        id=collection_id,
        title=title,
        description=description,
        license="proprietary",
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([list(interval)])),
    )


# ---------------------------------------------------------------------------------------------------------
# points and side files


def _sample_points(land: Any, geobox: GeoBox, seed: int, n_points: int | None, *, tile_index: int = 0,
                   keep: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None, hard: bool = False
                   ) -> list[str]:  # fmt: skip
    """Stratified random points (one stratum per leaf class) at least 2 pixels inside a patch.

    With ``keep`` (lon, lat -> bool), five times as many points are drawn, those not kept are dropped and
    each class is cut back to its quota (tiles of a multi-tile area keep the points they own).
    """
    leaves = spectra.LEAVES
    leaf = land.leaf_map()
    interior = ndimage.maximum_filter(leaf, size=5, mode="nearest") == ndimage.minimum_filter(
        leaf, size=5, mode="nearest"
    )
    interior[:2], interior[-2:], interior[:, :2], interior[:, -2:] = False, False, False, False
    if n_points is None:
        per_leaf = [round(60 * math.sqrt(land.size / 512))] * len(leaves)
    else:
        q, r = divmod(n_points, len(leaves))
        per_leaf = [q + (1 if i < r else 0) for i in range(len(leaves))]
    if hard:  # rare classes: at most 1 % of the points each (and at least 2)
        is_rare = [leaf.category in spectra.HARD["rare"] for leaf in leaves]
        rare = max(2, int(0.01 * sum(q for q, r in zip(per_leaf, is_rare, strict=True) if not r)))
        per_leaf = [rare if r else q for q, r in zip(per_leaf, is_rare, strict=True)]
    quota = list(per_leaf)
    if keep is not None:
        per_leaf = [5 * q for q in per_leaf]
    rng = _rng(seed, _S_POINTS, tile_index) if tile_index else _rng(seed, _S_POINTS)
    flat_leaf, flat_interior = leaf.ravel(), interior.ravel()
    # Rejection sampling of random pixels keeps memory flat on a full tile (no index of every interior pixel);
    # classes it cannot fill (rare ones) fall back to an exhaustive draw.
    picked: list[np.ndarray] = [np.empty(0, dtype=np.int64) for _ in leaves]
    for _ in range(20):
        need = [want - len(got) for want, got in zip(per_leaf, picked, strict=True)]
        if max(need) <= 0:
            break
        draw = rng.integers(0, flat_leaf.size, 20 * sum(need) + 1000)
        draw = draw[flat_interior[draw]]
        draw_leaf = flat_leaf[draw]
        for i in range(len(leaves)):
            if need[i] > 0:
                new = draw[draw_leaf == i]
                new = new[np.sort(np.unique(new, return_index=True)[1])]
                new = new[~np.isin(new, picked[i])]
                picked[i] = np.concatenate([picked[i], new[: need[i]]])
    for i, want in enumerate(per_leaf):
        if len(picked[i]) < want:
            pool = np.setdiff1d(np.flatnonzero((flat_leaf == i) & flat_interior), picked[i])
            if len(picked[i]) + len(pool) < want:
                # a tile of a multi-tile area may well lack a class: the whole area is checked instead
                logger.log(
                    logging.WARNING if keep is None else logging.DEBUG,
                    "demo area: only %d interior pixels of class %r, wanted %d points",
                    len(picked[i]) + len(pool), leaves[i].subcategory or leaves[i].category, want,
                )  # fmt: skip
            extra = rng.choice(pool, size=min(want - len(picked[i]), len(pool)), replace=False)
            picked[i] = np.concatenate([picked[i], extra])
    del interior, leaf, flat_leaf, flat_interior
    labels = [np.full(len(p), i) for i, p in enumerate(picked)]
    idx, lab = np.concatenate(picked), np.concatenate(labels)
    order = rng.permutation(len(idx))
    idx, lab = idx[order], lab[order]
    rows, cols = np.divmod(idx, land.size)
    x = geobox.affine.c + (cols + 0.5) * geobox.affine.a
    y = geobox.affine.f + (rows + 0.5) * geobox.affine.e
    lon, lat = Transformer.from_crs(str(geobox.crs), "EPSG:4326", always_xy=True).transform(x, y)
    if keep is not None:
        kept = np.asarray(keep(np.asarray(lon), np.asarray(lat)), dtype=bool)
        rank = np.zeros(len(lab), dtype=np.int64)
        for i in range(len(leaves)):  # rank of each kept point within its class, in draw order
            sel = np.flatnonzero(kept & (lab == i))
            rank[sel] = np.arange(len(sel))
        kept &= rank < np.asarray(quota)[lab]
        lon, lat, lab = np.asarray(lon)[kept], np.asarray(lat)[kept], lab[kept]
    if hard:  # label noise in dataset.csv only (the truth rasters stay clean)
        lab = _label_noise(lab, _rng(seed, _S_POINTS, 99), spectra.HARD["label_noise"])
    lines = ["latitude;longitude;category;subcategory"]
    for la, lo, k in zip(lat, lon, lab, strict=True):
        leaf_k = leaves[k]
        lines.append(f"{la:.7f};{lo:.7f};{leaf_k.category};{leaf_k.subcategory or ''}")
    return lines


def _label_noise(lab: np.ndarray, rng: np.random.Generator, fraction: float) -> np.ndarray:
    """Give ``fraction`` of the points (drawn at random) the label of another common leaf class.

    The rare classes keep their few points and take none, so they stay rare.
    """
    rare = spectra.HARD["rare"]
    common = np.array([i for i, leaf in enumerate(spectra.LEAVES) if leaf.category not in rare])
    candidates = np.flatnonzero(np.isin(lab, common))
    flip = rng.permutation(candidates)[: int(round(fraction * len(lab)))]
    out = lab.copy()
    pos = np.searchsorted(common, lab[flip])
    out[flip] = common[(pos + rng.integers(1, len(common), flip.size)) % len(common)]
    return out


def _aoi(*geoboxes: GeoBox) -> list[float]:
    """Lon/lat bounds of the grids, rounded outwards to 7 decimals (about 1 cm)."""
    boxes = [g.extent.to_crs("EPSG:4326", resolution=100.0).boundingbox for g in geoboxes]
    return [
        math.floor(min(b.left for b in boxes) * 1e7) / 1e7,
        math.floor(min(b.bottom for b in boxes) * 1e7) / 1e7,
        math.ceil(max(b.right for b in boxes) * 1e7) / 1e7,
        math.ceil(max(b.top for b in boxes) * 1e7) / 1e7,
    ]


_AOI_NOTE = (
    "# Lon/lat bounds of the demo grid, rounded outwards. The tile is processed on its own grid (the",
    "# EPSG:32630 grid its items carry in proj:transform, cropped to the AOI), which is the demo grid:",
    "# its top-left corner is at",
)
_TILES_AOI_NOTE = (
    "# Lon/lat bounds of all demo tiles, rounded outwards. Each tile is processed on its own UTM grid",
    "# (the grid its items carry in proj:transform); every location is owned by one tile.",
)


def _config_text(collection: str, with_dem: bool, aoi: list[float], size: int, seed: int,
                 tiles: list[str] | None = None) -> str:  # fmt: skip
    """Return the demo's run config: one tile near Malaga, or ``tiles`` in several zones (no ``crs``)."""
    where = f"at 0 deg E): tiles {', '.join(tiles)}, each" if tiles else "near Malaga):"
    lines = [
        f"# lcstack demo area (synthetic Sentinel-2 {where} {size} x {size} px at 10 m, seed {seed}.",
        "# Paths are relative to this file.",
        "stac: stac/catalog.json",
        f"collection: {collection}",
    ]
    if with_dem:
        lines.append(f"dem_collection: {DEM_COLLECTION}")
    lines += ["seasons: seasons.json", "points: dataset.csv", "lc_labels: lc_labels.json"]
    lines += ["sl_labels: sl_labels.json"]
    aoi_line = "aoi: [" + ", ".join(f"{v:.7f}" for v in aoi) + "]"
    if tiles:
        lines += [*_TILES_AOI_NOTE, aoi_line]
    else:
        lines += [*_AOI_NOTE, f"# ({X0:.0f}, {Y0:.0f}) and is {size} x {size} px.", aoi_line]
    lines += [
        f"resolution: {RESOLUTION}",
        "storage: lcstack-data",
        "max_cloud_cover: 60",
        f"max_scenes_per_season: {_SCENES_PER_SEASON}",
        "min_valid_fraction: 0.3",
    ]
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")


def _write_side_files(root: Path) -> None:
    """``seasons.json``, ``lc_labels.json`` and ``sl_labels.json``."""
    season_json = {name: {"start": a, "end": b} for name, (a, b) in spectra.SEASONS.items()}
    files = {
        "seasons.json": season_json,
        "lc_labels.json": spectra.LC_LABELS,
        "sl_labels.json": spectra.SL_LABELS,
    }
    for name, content in files.items():
        _write_text(root / name, json.dumps(content, indent=2) + "\n")


def _prepare_folder(root: Path) -> Path:
    stac_dir = root / "stac"
    if stac_dir.exists():
        catalog = stac_dir / "catalog.json"
        try:
            ours = json.loads(catalog.read_text(encoding="utf-8")).get("id") == CATALOG_ID
        except (OSError, ValueError):
            ours = False
        if not ours and any(stac_dir.iterdir()):
            raise InvalidInputError(
                f"{stac_dir} exists and is not an lcstack demo catalog; "
                "pass an empty or new folder as out_dir to make_demo_area."
            )
        shutil.rmtree(stac_dir)
    stac_dir.mkdir(parents=True)
    return stac_dir


# ---------------------------------------------------------------------------------------------------------
# public entry point


def check_arguments(size: Any, seed: Any, flavour: Any, n_points: Any, tiles: Any) -> None:
    """Raise :class:`InvalidInputError` where an argument of :func:`lcstack.demo.make_demo_area` is bad."""
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or not MIN_SIZE <= size <= MAX_SIZE:
        raise InvalidInputError(
            f"size={size!r} is out of range: pass an integer from {MIN_SIZE} to {MAX_SIZE}."
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InvalidInputError(f"seed={seed!r} is invalid: pass a non-negative integer.")
    if flavour not in ("l2a", "l1c"):
        raise InvalidInputError(f"flavour={flavour!r} is invalid: pass 'l2a' or 'l1c'.")
    if n_points is not None and (
        isinstance(n_points, bool) or not isinstance(n_points, int | np.integer) or n_points < 1
    ):
        raise InvalidInputError(f"n_points={n_points!r} is invalid: pass a positive integer or None.")
    if isinstance(tiles, bool) or not isinstance(tiles, int | np.integer) or not 1 <= tiles <= MAX_TILES:
        raise InvalidInputError(f"tiles={tiles!r} is out of range: pass an integer from 1 to {MAX_TILES}.")


def make_area(
    out_dir: str | Path,
    *,
    size: int,
    seed: int,
    flavour: str,
    with_dem: bool,
    n_points: int | None,
    progress: bool,
    difficulty: str = "normal",
) -> DemoArea:
    """Write the one-tile demo area (arguments checked: :func:`lcstack.demo.make_demo_area`)."""
    hard = difficulty == "hard"
    root = Path(out_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    stac_dir = _prepare_folder(root)
    collection = "sentinel-2-l1c" if flavour == "l1c" else "sentinel-2-l2a"
    geobox = GeoBox((size, size), Affine(RESOLUTION, 0.0, X0, 0.0, -RESOLUTION, Y0), CRS)
    scenes = _schedule(seed, flavour, hard=True) if hard else _schedule(seed, flavour)
    logger.info(
        "demo area: %d x %d px, seed %d, %s, %d scenes -> %s", size, size, seed, flavour, len(scenes), root
    )

    with tqdm(total=len(scenes) + 3, desc="demo area", unit="step", disable=not progress) as bar:
        terrain = _Terrain(seed)
        land = _Landscape(size, seed, terrain, bar if progress else None, hard=hard)
        bar.update()

        level1, level2 = spectra.leaf_codes()
        leaf = land.leaf_map()
        truth, truth_sl = root / "truth.tif", root / "truth_sl.tif"
        _write_cog(truth, level1[leaf], geobox.affine, CRS, nodata=0, resampling="mode")
        _write_cog(truth_sl, level2[leaf], geobox.affine, CRS, nodata=0, resampling="mode")
        del leaf
        points = root / "dataset.csv"
        _write_text(points, "\n".join(_sample_points(land, geobox, seed, n_points, hard=hard)) + "\n")
        bar.update()

        _, footprint_bbox = _footprint(geobox)
        s2 = _collection(
            collection,
            f"Sentinel-2 Level-{'1C' if flavour == 'l1c' else '2A'} (lcstack synthetic demo)",
            "Synthetic Sentinel-2 scenes shaped like Earth Search v1, generated by lcstack.demo.",
            footprint_bbox,
            (scenes[0].time, scenes[-1].time),
        )
        _write_scenes(stac_dir, s2, scenes, land, geobox, seed, flavour, bar)

        description = f"lcstack synthetic Sentinel-2 area near Malaga ({size} x {size} px, seed {seed})"
        _save_catalog(stac_dir, s2, description, geobox, terrain, with_dem, CRS)
        bar.update()

    _write_side_files(root)
    config = root / "config.yaml"
    _write_text(config, _config_text(collection, with_dem, _aoi(geobox), size, seed))
    logger.info("demo area written to %s", root)
    return _demo_area(root, collection, with_dem, {MGRS_TILE: geobox}, {MGRS_TILE: (truth, truth_sl)})


def _transform(res: int, tile: _Tile | None = None) -> Affine:
    tile = tile or MALAGA
    return Affine(res, 0.0, tile.x0, 0.0, -res, tile.y0)


def _write_scenes(stac_dir: Path, s2: pystac.Collection, scenes: list[_Scene], land: Any, geobox: GeoBox,
                  seed: int, flavour: str, bar: tqdm) -> None:  # fmt: skip
    """Render every scene of one tile (bands, SCL) as COGs and add its item to the collection."""
    collection = s2.id
    bands = spectra.L1C_BANDS if flavour == "l1c" else spectra.L2A_BANDS
    for scene in scenes:
        tile = scene.tile
        item_dir = stac_dir / collection / f"{scene.item_id}_{'L1C' if flavour == 'l1c' else 'L2A'}"
        renderer = _SceneRenderer(scene, land, seed, flavour)
        offset_dn = 1000 if (flavour == "l2a" and scene.baseline >= "04.00") else 0
        assets: dict[str, Path] = {}
        for name in bands:
            dn = renderer.band(name, offset_dn)
            res = spectra.BAND_INFO[name][1]
            path = item_dir / f"{spectra.BAND_INFO[name][0]}.tif"
            _write_cog(path, dn, _transform(res, tile), tile.crs, nodata=0)
            assets[name] = path
        scl: np.ndarray | None = None
        if flavour == "l2a":
            scl = renderer.scl
            _write_cog(item_dir / "SCL.tif", scl, _transform(20, tile), tile.crs, nodata=0, resampling="mode")
            assets["scl"] = item_dir / "SCL.tif"
        # cloud truth on the 20 m grid: 1 cloud/cirrus, 0 clear, -1 no data
        s20 = renderer.scl.shape
        cloud = ((renderer.alpha > 0) | (renderer.cirrus > 0))[: s20[0], : s20[1]].astype(np.int8)
        cloud[renderer.scl == 0] = -1
        nodata_fraction = float(renderer.nodata_fraction_10m())
        stats = _scene_stats(scene, scl, nodata_fraction, cloud)
        s2.add_item(_scene_item(scene, geobox, flavour, collection, assets, stats))
        logger.debug("demo scene %s: cloud cover %.2f %%", scene.item_id, stats["cloud_cover"])
        bar.update()


def _save_catalog(stac_dir: Path, s2: pystac.Collection, description: str, dem_box: GeoBox, terrain: _Terrain,
                  with_dem: bool, crs: str) -> None:  # fmt: skip
    """Write the self-contained catalog: the Sentinel-2 collection and, with ``with_dem``, a DEM."""
    catalog = pystac.Catalog(id=CATALOG_ID, description=description, title="lcstack demo")
    catalog.add_child(s2)
    if with_dem:
        dem_item = _write_dem(stac_dir, dem_box, terrain, crs)
        dem = _collection(
            DEM_COLLECTION,
            "Copernicus DEM GLO-30 (lcstack synthetic demo)",
            "Synthetic smooth hills on the Copernicus GLO-30 1 arc-second lattice (lcstack.demo).",
            list(dem_item.bbox or s2.extent.spatial.bboxes[0]),
            (dt.datetime(2021, 4, 22, tzinfo=dt.UTC), dt.datetime(2021, 4, 22, tzinfo=dt.UTC)),
        )
        dem.add_item(dem_item)
        catalog.add_child(dem)
    catalog.normalize_hrefs(str(stac_dir))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)


def _demo_area(root: Path, collection: str, with_dem: bool, tiles: dict[str, GeoBox],
               truths: dict[str, tuple[Path, Path]]) -> DemoArea:  # fmt: skip
    """Return the :class:`DemoArea` of a written folder (``truth``, ``geobox``, ...: the first tile)."""
    first = next(iter(tiles))
    return DemoArea(
        root=root,
        catalog=root / "stac" / "catalog.json",
        config=root / "config.yaml",
        points=root / "dataset.csv",
        seasons=root / "seasons.json",
        lc_labels=root / "lc_labels.json",
        sl_labels=root / "sl_labels.json",
        truth=truths[first][0],
        truth_sl=truths[first][1],
        collection=collection,
        dem_collection=DEM_COLLECTION if with_dem else None,
        geobox=tiles[first],
        tiles=tiles,
        truths=truths,
    )
