"""Spectral and thematic tables behind :mod:`lcstack.demo`.

Surface reflectance is a linear mixture of a few endmember spectra. Each land
cover class has, per season, a set of endmember fractions (its phenology), so
a class is defined by *how its spectrum changes through the year* as much as
by the spectrum itself, which is what seasonal composites exploit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# -- bands --------------------------------------------------------------------------------------------------

# fmt: off
#: Earth Search v1 asset key, file name, resolution (m), title, description, centre (µm), FWHM (µm),
#: common name.
BAND_INFO: dict[str, tuple[str, int, str, str, float, float, str]] = {
    "coastal": ("B01", 60, "Coastal aerosol (band 1) - 60m", "Coastal aerosol (band 1)", 0.443, 0.027,
                "coastal"),
    "blue": ("B02", 10, "Blue (band 2) - 10m", "Blue (band 2)", 0.49, 0.098, "blue"),
    "green": ("B03", 10, "Green (band 3) - 10m", "Green (band 3)", 0.56, 0.045, "green"),
    "red": ("B04", 10, "Red (band 4) - 10m", "Red (band 4)", 0.665, 0.038, "red"),
    "rededge1": ("B05", 20, "Red edge 1 (band 5) - 20m", "Red edge 1 (band 5)", 0.704, 0.019, "rededge"),
    "rededge2": ("B06", 20, "Red edge 2 (band 6) - 20m", "Red edge 2 (band 6)", 0.74, 0.018, "rededge"),
    "rededge3": ("B07", 20, "Red edge 3 (band 7) - 20m", "Red edge 3 (band 7)", 0.783, 0.028, "rededge"),
    "nir": ("B08", 10, "NIR 1 (band 8) - 10m", "NIR 1 (band 8)", 0.842, 0.145, "nir"),
    "nir08": ("B8A", 20, "NIR 2 (band 8A) - 20m", "NIR 2 (band 8A)", 0.865, 0.033, "nir08"),
    "nir09": ("B09", 60, "NIR 3 (band 9) - 60m", "NIR 3 (band 9)", 0.945, 0.026, "nir09"),
    "cirrus": ("B10", 60, "Cirrus (band 10) - 60m", "Cirrus (band 10)", 1.3735, 0.075, "cirrus"),
    "swir16": ("B11", 20, "SWIR 1 (band 11) - 20m", "SWIR 1 (band 11)", 1.61, 0.143, "swir16"),
    "swir22": ("B12", 20, "SWIR 2 (band 12) - 20m", "SWIR 2 (band 12)", 2.19, 0.242, "swir22"),
}

#: Order of the rows of every spectral table below.
SPECTRAL_BANDS: tuple[str, ...] = (
    "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3",
    "nir", "nir08", "nir09", "swir16", "swir22", "cirrus",
)

L2A_BANDS: tuple[str, ...] = SPECTRAL_BANDS[:-1]
L1C_BANDS: tuple[str, ...] = SPECTRAL_BANDS

# -- endmembers (surface reflectance, same order as SPECTRAL_BANDS) -----------------------------------------
# Rough library spectra; the cirrus band (1375 nm) sees almost nothing of the surface (water vapour).
ENDMEMBERS: dict[str, list[float]] = {
    "green_veg": [0.030, 0.040, 0.085, 0.040, 0.130, 0.300, 0.380, 0.420, 0.430, 0.410, 0.230, 0.110, 0.004],
    "dark_veg": [0.020, 0.025, 0.050, 0.028, 0.075, 0.180, 0.230, 0.255, 0.262, 0.250, 0.140, 0.065, 0.003],
    "dry_veg": [0.060, 0.075, 0.110, 0.150, 0.190, 0.220, 0.245, 0.265, 0.275, 0.270, 0.370, 0.270, 0.005],
    "soil": [0.085, 0.105, 0.150, 0.210, 0.240, 0.265, 0.285, 0.300, 0.310, 0.305, 0.380, 0.320, 0.005],
    "bright_soil": [0.140, 0.170, 0.235, 0.300, 0.330, 0.350, 0.365, 0.375, 0.385, 0.380, 0.450, 0.400,
                    0.006],
    "water": [0.070, 0.065, 0.055, 0.030, 0.022, 0.015, 0.012, 0.010, 0.009, 0.007, 0.004, 0.003, 0.001],
    "urban": [0.130, 0.145, 0.160, 0.175, 0.190, 0.200, 0.210, 0.220, 0.225, 0.222, 0.260, 0.240, 0.004],
    "plastic": [0.240, 0.270, 0.295, 0.305, 0.315, 0.325, 0.335, 0.345, 0.350, 0.345, 0.310, 0.260, 0.005],
}
# fmt: on
ENDMEMBER_NAMES: tuple[str, ...] = tuple(ENDMEMBERS)
ENDMEMBER_MATRIX = np.array([ENDMEMBERS[n] for n in ENDMEMBER_NAMES], dtype=np.float64)  # (endmember, band)

#: Top-of-cloud reflectance (thick cloud), same band order. Bright and flat, darker in the SWIR.
CLOUD_SPECTRUM = np.array(
    [0.60, 0.60, 0.59, 0.58, 0.58, 0.57, 0.57, 0.56, 0.56, 0.52, 0.42, 0.30, 0.30], dtype=np.float64
)
#: Thin cirrus adds a faint veil, strongest in the cirrus band.
CIRRUS_SPECTRUM = np.array(
    [0.20, 0.19, 0.18, 0.17, 0.17, 0.16, 0.16, 0.16, 0.16, 0.15, 0.12, 0.10, 0.35], dtype=np.float64
)
#: Path radiance added on top of the surface for top-of-atmosphere (L1C) reflectance.
PATH_REFLECTANCE = np.array(
    [0.085, 0.060, 0.035, 0.020, 0.015, 0.012, 0.010, 0.008, 0.008, 0.006, 0.002, 0.001, 0.0],
    dtype=np.float64,
)

# -- classes ------------------------------------------------------------------------------------------------

SEASONS: dict[str, tuple[str, str]] = {
    "spring": ("2023-03-01", "2023-05-31"),
    "summer": ("2023-06-01", "2023-08-31"),
    "autumn": ("2023-09-01", "2023-11-30"),
}
SEASON_NAMES: tuple[str, ...] = tuple(SEASONS)

LC_LABELS: dict[str, int] = {
    "builtUp": 1,
    "forest": 2,
    "shrubland": 3,
    "grassland": 4,
    "cropland": 5,
    "bareSoil": 6,
    "water": 7,
    "wetland": 8,
}
SL_LABELS: dict[str, int] = {"conifers": 2, "broadleaf": 3, "irrigated": 4, "rainfed": 5, "greenhouses": 6}

# SCL codes of the Sen2Cor scene classification.
SCL_VEGETATION, SCL_NOT_VEGETATED, SCL_WATER = 4, 5, 6
SCL_SHADOW, SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS = 3, 8, 9, 10


@dataclass(frozen=True)
class Leaf:
    """A terminal class of the two-level legend: a category, or one of its subcategories."""

    category: str
    subcategory: str | None
    #: endmember -> (spring, summer, autumn) fraction; normalised to 1 per season.
    fractions: dict[str, tuple[float, float, float]]
    #: relative frequency among farmland/landscape parcels
    weight: float
    #: preference for high ground (>0) or valley floors (<0)
    uphill: float


LEAVES: tuple[Leaf, ...] = (
    Leaf("builtUp", None, {"urban": (0.70, 0.72, 0.70), "green_veg": (0.12, 0.06, 0.09),
                           "dry_veg": (0.03, 0.07, 0.06), "soil": (0.15, 0.15, 0.15)}, 0.05, -1.0),
    Leaf("forest", "conifers", {"dark_veg": (0.78, 0.76, 0.77), "dry_veg": (0.08, 0.12, 0.10),
                                "green_veg": (0.04, 0.02, 0.03), "soil": (0.10, 0.10, 0.10)}, 0.09, 1.5),
    Leaf("forest", "broadleaf", {"green_veg": (0.60, 0.78, 0.42), "dark_veg": (0.15, 0.12, 0.12),
                                 "dry_veg": (0.10, 0.03, 0.34), "soil": (0.15, 0.07, 0.12)}, 0.08, 1.0),
    Leaf("shrubland", None, {"green_veg": (0.30, 0.20, 0.25), "dark_veg": (0.10, 0.10, 0.10),
                             "dry_veg": (0.25, 0.38, 0.32), "soil": (0.35, 0.32, 0.33)}, 0.12, 1.0),
    Leaf("grassland", None, {"green_veg": (0.62, 0.08, 0.35), "dry_veg": (0.22, 0.72, 0.40),
                             "soil": (0.16, 0.20, 0.25)}, 0.11, 0.3),
    Leaf("cropland", "irrigated", {"green_veg": (0.25, 0.85, 0.55), "dry_veg": (0.05, 0.05, 0.15),
                                   "soil": (0.70, 0.10, 0.30)}, 0.11, -1.5),
    Leaf("cropland", "rainfed", {"green_veg": (0.80, 0.04, 0.08), "dry_veg": (0.10, 0.55, 0.20),
                                 "soil": (0.10, 0.41, 0.72)}, 0.13, -0.3),
    Leaf("cropland", "greenhouses", {"plastic": (0.78, 0.80, 0.78), "green_veg": (0.08, 0.08, 0.10),
                                     "soil": (0.14, 0.12, 0.12)}, 0.07, -2.0),
    Leaf("bareSoil", None, {"bright_soil": (0.80, 0.85, 0.80), "soil": (0.14, 0.11, 0.14),
                            "dry_veg": (0.04, 0.04, 0.04), "green_veg": (0.02, 0.0, 0.02)}, 0.07, 0.5),
    Leaf("water", None, {"water": (1.0, 0.97, 1.0), "green_veg": (0.0, 0.03, 0.0)}, 0.04, -1.5),
    Leaf("wetland", None, {"water": (0.35, 0.50, 0.40), "green_veg": (0.50, 0.30, 0.38),
                           "dry_veg": (0.10, 0.15, 0.15), "soil": (0.05, 0.05, 0.07)}, 0.04, -1.5),
)  # fmt: skip

LEAF_INDEX: dict[str, int] = {(leaf.subcategory or leaf.category): i for i, leaf in enumerate(LEAVES)}


def leaf_fraction_table() -> np.ndarray:
    """Endmember fractions of every leaf class, shape ``(leaf, season, endmember)``, rows sum to 1."""
    table = np.zeros((len(LEAVES), len(SEASONS), len(ENDMEMBER_NAMES)), dtype=np.float64)
    for i, leaf in enumerate(LEAVES):
        for name, values in leaf.fractions.items():
            table[i, :, ENDMEMBER_NAMES.index(name)] = values
    return table / table.sum(axis=-1, keepdims=True)


def leaf_codes() -> tuple[np.ndarray, np.ndarray]:
    """Level-1 and level-2 codes of every leaf class (level 2 is 1 where the category has no subcategory)."""
    level1 = np.array([LC_LABELS[leaf.category] for leaf in LEAVES], dtype=np.uint8)
    level2 = np.array(
        [SL_LABELS[leaf.subcategory] if leaf.subcategory else 1 for leaf in LEAVES], dtype=np.uint8
    )
    return level1, level2


# -- the hard demo (make_demo_area(..., difficulty="hard")) --------------------------------------------------

#: Knobs of the hard demo: classes moved towards a confusable partner (``confusion``; ``blend``: fraction
#: of the partner's phenology mixed in), per-unit fraction noise (``delta``) and brightness spread, pixel
#: texture, the season index that is often cloudy and by how much its scenes' cloud cover grows, the rare
#: categories (at most 1 % of the points each) and the fraction of points given a wrong label.
HARD: dict = {
    "confusion": {("shrubland", None): ("grassland", None),
                  ("cropland", "irrigated"): ("cropland", "rainfed"),
                  ("forest", "conifers"): ("forest", "broadleaf"),
                  ("wetland", None): ("grassland", None),
                  ("builtUp", None): ("bareSoil", None)},
    "blend": 0.5,
    "delta": 0.10,
    "brightness": 0.10,
    "texture": 0.08,
    "cloudy_season": 2,
    "cloud_extra": 0.35,
    "rare": ("water", "wetland"),
    "label_noise": 0.10,
}  # fmt: skip


def hard_fraction_table() -> np.ndarray:
    """Endmember fractions of the hard demo: each class of ``HARD["confusion"]`` moved towards its partner."""
    table = leaf_fraction_table()
    out = table.copy()
    index = {(leaf.category, leaf.subcategory): i for i, leaf in enumerate(LEAVES)}
    blend = float(HARD["blend"])
    for a, b in HARD["confusion"].items():
        out[index[a]] = (1 - blend) * table[index[a]] + blend * table[index[b]]
    return out / out.sum(axis=-1, keepdims=True)
