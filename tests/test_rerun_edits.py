"""Editing an input after a complete run and re-running: what is recomputed, what is reused, and no crash.

Each re-run is a fresh ``lcstack run`` process (as a user would start it), so nothing imported by an
earlier step in the same interpreter can hide a missing import on the re-run path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import dask
import pytest

from lcstack.config import load_config
from lcstack.errors import SkippedPointsWarning
from lcstack.pipeline import Workflow
from lcstack.registry import open_registry

pytestmark = pytest.mark.slow


def _cli_run(config: Path) -> dict[str, str]:
    """Run ``lcstack run`` in a new process; return ``{"<step> <tile> <season>": "reused"|"written"}``."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-c", "from lcstack.cli import main; main()", "run", str(config)]
        + ["--scheduler", "threads", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        step, state, *what, _url = line.split()
        out["train" if step == "train" else " ".join([step, *what])] = state
    return out


def _n_records(storage: str, kind: str) -> int:
    reg = open_registry(None, default_path=f"{storage}/registry.sqlite")
    try:
        return len(reg.find(kind))
    finally:
        reg.close()


def _states(out: dict[str, str], prefix: str) -> set[str]:
    return {v for k, v in out.items() if k.startswith(prefix)}


def test_rerun_after_editing_each_input(tmp_path: Path) -> None:
    from lcstack.demo import make_demo_area

    area = make_demo_area(tmp_path / "area", size=256, seed=0)
    cfg = load_config(area.config)
    with (
        dask.config.set(scheduler="threads"),
        Workflow(cfg, progress=False) as wf,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", SkippedPointsWarning)  # points on pixels no season observed, if any
        first = wf.run()
    assert not any(r.reused for r in first)
    storage = cfg.storage
    n_datasets = _n_records(storage, "datasets")

    # 1. points: one point removed -> samples, model and maps again; every composite reused
    lines = area.points.read_text().splitlines(keepends=True)
    area.points.write_text("".join(lines[:1] + lines[2:]))
    out = _cli_run(area.config)
    assert _states(out, "composite") == {"reused"}, out
    assert out["train"] == "written" and _states(out, "classify") == {"written"}, out
    assert _n_records(storage, "datasets") == n_datasets + 1

    # 2. labels: a level-1 code renumbered -> samples, model and maps again
    lc: dict[str, Any] = json.loads(area.lc_labels.read_text())
    lc["wetland"] = 9
    area.lc_labels.write_text(json.dumps(lc))
    out = _cli_run(area.config)
    assert _states(out, "composite") == {"reused"}, out
    assert out["train"] == "written" and _states(out, "classify") == {"written"}, out
    assert _n_records(storage, "datasets") == n_datasets + 2

    # 3. seasons: autumn ends earlier -> only the autumn composite again (terrain and the others reused)
    seasons = json.loads(area.seasons.read_text())
    seasons["autumn"]["end"] = "2023-11-20"
    area.seasons.write_text(json.dumps(seasons))
    out = _cli_run(area.config)
    written = {k for k, v in out.items() if k.startswith("composite") and v == "written"}
    assert written and all(k.endswith(" autumn") for k in written), out
    assert {k.rsplit(" ", 1)[-1] for k, v in out.items() if v == "reused"} >= {"spring", "summer", "terrain"}
    assert out["train"] == "written" and _states(out, "classify") == {"written"}, out
    assert _n_records(storage, "datasets") == n_datasets + 3

    # 4. model params: composites and samples reused, model and maps again
    with area.config.open("a", encoding="utf-8") as f:
        f.write("model:\n  params:\n    n_estimators: 20\n")
    out = _cli_run(area.config)
    assert _states(out, "composite") == {"reused"}, out
    assert out["train"] == "written" and _states(out, "classify") == {"written"}, out
    assert _n_records(storage, "datasets") == n_datasets + 3
    assert _n_records(storage, "models") == 5
