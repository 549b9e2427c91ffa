"""lcstack: Sentinel-2 land cover maps at any scale.

Discover scenes through STAC, load them lazily with odc-stac, composite them per season into Zarr,
train a hierarchical classifier from labelled points and classify block by block with Dask.
"""

from __future__ import annotations

from . import accessor as _accessor  # noqa: E402,F401  (registers ds.landcover)
from ._version import __version__
from .config import load_config
from .errors import (  # noqa: E402
    InputFileNotFoundError,
    InvalidInputError,
    LcstackError,
    LcstackWarning,
    ModelMismatchError,
    NoCloudMaskWarning,
    NoScenesFoundError,
    RegistryError,
    SkippedPointsWarning,
    StorageError,
)
from .features import stack_features  # noqa: E402
from .grid import aoi_geobox, tile_geoboxes  # noqa: E402
from .inputs import Season, read_lc_labels, read_points, read_seasons, read_sl_labels
from .store import Storage  # noqa: E402

# Heavier entry points are imported on first use (dask workers started by spawn import lcstack too).
_LAZY = {
    "Workflow": "pipeline",
    "open_source": "discover",
    "discover_scenes": "discover",
    "load_scenes": "load",
    "seasonal_composite": "composite",
    "compute_indices": "indices",
    "terrain_features": "terrain",
    "extract_samples": "samples",
    "HierarchicalClassifier": "model",
    "save_model": "model",
    "load_model": "model",
    "classify": "classify",
    "write_cog": "cog",
    "open_registry": "registry",
    "open_cluster": "cluster",
    "make_demo_area": "demo",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'lcstack' has no attribute {name!r}")


__all__ = [
    "__version__",
    "LcstackError",
    "InvalidInputError",
    "InputFileNotFoundError",
    "NoScenesFoundError",
    "StorageError",
    "RegistryError",
    "ModelMismatchError",
    "LcstackWarning",
    "NoCloudMaskWarning",
    "SkippedPointsWarning",
    "RunConfig",
    "Season",
    "load_config",
    "read_points",
    "read_seasons",
    "read_lc_labels",
    "read_sl_labels",
    "aoi_geobox",
    "tile_geoboxes",
    "stack_features",
    "Storage",
    *_LAZY,
]
