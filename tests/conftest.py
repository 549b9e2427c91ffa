"""Shared fixtures: the offline demo area, and one workflow run on it reused by many tests."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import dask
import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

# The suite never reads settings from the developer's environment or a .env file.
for _var in (
    "MONGO_URI",
    "LCSTACK_REGISTRY",
    "DASK_CLUSTER_IP",
    "LCSTACK_DASK_SCHEDULER",
    "LCSTACK_S3_ENDPOINT_URL",
):
    os.environ.pop(_var, None)
os.environ.setdefault("LCSTACK_PROGRESS", "0")


@pytest.fixture(scope="session")
def demo_area(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A 256² synthetic area (STAC catalog of COGs, DEM, points, labels, config)."""
    from lcstack.demo import make_demo_area

    return make_demo_area(tmp_path_factory.mktemp("demo") / "area", size=256, seed=0)


@pytest.fixture(scope="session")
def demo_run(demo_area: Any) -> Any:
    """The whole workflow run once on the demo area with the threaded scheduler."""
    from lcstack.config import load_config
    from lcstack.pipeline import Workflow

    cfg = load_config(demo_area.config)
    with dask.config.set(scheduler="threads"), Workflow(cfg, progress=False) as wf, demo_skips():
        results = wf.run()
    return demo_area, cfg, results


@contextlib.contextmanager
def demo_skips() -> Any:
    """Let the demo area's few points on nodata pixels (cloud, scene edges) be left out with their warning.

    Not ``pytest.warns``: rasterio's thread-unsafe ``warnings.catch_warnings`` in Dask worker threads can
    swap the recording list away while a run is going, so whether the warning is seen is a race. The warning
    itself is tested in ``tests/test_workflow.py`` and ``tests/test_samples.py``.
    """
    from lcstack.errors import SkippedPointsWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedPointsWarning)
        yield
