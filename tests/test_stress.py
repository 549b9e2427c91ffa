"""Concurrent runs on one config, and runs SIGKILLed at random points then re-run, end byte-identical.

Every run is ``lcstack run`` in its own process (threads scheduler) on a 128² window of the demo area,
against the embedded SQLite registry and against MongoDB (nx-27017). The outputs are compared with
those of one undisturbed run (model artefacts without their creation time), and the registry must
hold exactly one complete record per output.

The default suite runs 2 concurrent runs per registry and one kill; ``LCSTACK_TEST_STRESS=1`` runs the
full version (4 concurrent runs per registry, 5 kill points).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from mongo_server import NxMongoServer, nx_executable  # noqa: E402
from test_resume import _outputs  # noqa: E402
from test_state import LCSTACK, small_config, small_points  # noqa: E402

from lcstack.registry import open_registry  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

FULL = os.environ.get("LCSTACK_TEST_STRESS") == "1"
#: One output per planned composite (3 seasons + terrain), dataset, model and map; one plan.
EXPECTED = {"composites": 4, "datasets": 1, "models": 1, "maps": 1, "plans": 1}


def _start(config: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "LCSTACK_PROGRESS": "0"}
    return subprocess.Popen(
        [LCSTACK, "run", str(config), "--scheduler", "threads", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.fixture(scope="module")
def points(demo_area: Any) -> Path:
    return small_points(demo_area, Path(demo_area.root) / "stress_points.csv")


@pytest.fixture(scope="module")
def reference(demo_area: Any, points: Path) -> tuple[dict[str, str], float]:
    """Outputs of one undisturbed run, and how long it took."""
    config = small_config(demo_area, "stress_ref", storage="stress-ref", points=points)
    t0 = time.monotonic()
    _finish(_start(config))
    return _outputs(Path(demo_area.root) / "stress-ref"), time.monotonic() - t0


@pytest.fixture(scope="module")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if nx_executable() is None:
        pytest.skip("nx-27017 is not installed (pip install 'lcstack[dev]')")
    with NxMongoServer(tmp_path_factory.mktemp("nx-stress")) as server:
        yield server.uri


def _check_registry(url: str | None, storage: Path, database: str = "lcstack") -> None:
    options = {"database": database} if url else {}
    with open_registry(url, default_path=storage / "registry.sqlite", **options) as reg:
        for kind, n in EXPECTED.items():
            records = reg.find(kind)
            assert len(records) == n, (kind, [r["key"] for r in records])
            assert len({r["key"] for r in records}) == n
            if kind != "plans":
                assert all(r["status"] == "complete" for r in records), (kind, records)


def test_concurrent_runs_on_one_config(
    demo_area: Any, points: Path, reference: tuple[dict[str, str], float], mongo_uri: str
) -> None:
    """Several runs of one config at once, per registry: all succeed, nothing is written twice."""
    n = 4 if FULL else 2
    configs = {
        "sqlite": small_config(demo_area, "stress_sqlite", storage="stress-sqlite", points=points),
        "mongo": small_config(demo_area, "stress_mongo", storage="stress-mongo", points=points),
    }
    text = configs["mongo"].read_text() + f"registry: {mongo_uri}\n"
    configs["mongo"].write_text(text)
    procs = [(name, _start(config)) for _ in range(n) for name, config in configs.items()]
    outs: dict[str, list[str]] = {name: [] for name in configs}
    for name, proc in procs:
        outs[name].append(_finish(proc))
    for name in configs:
        storage = Path(demo_area.root) / f"stress-{name}"
        assert _outputs(storage) == reference[0], name
        _check_registry(mongo_uri if name == "mongo" else None, storage)
        written = [ln.split()[0] for out in outs[name] for ln in out.splitlines() if " written " in ln]
        # each output written by exactly one run; the others waited for it and reused it
        assert sorted(written) == ["classify", "composite", "composite", "composite", "composite", "train"]


def test_sigkill_at_random_points_then_rerun(
    demo_area: Any, points: Path, reference: tuple[dict[str, str], float]
) -> None:
    """A run killed at seeded random moments, each followed by a re-run, ends as an undisturbed run."""
    expected, seconds = reference
    rng = random.Random(14)
    fractions = sorted(rng.uniform(0.15, 0.85) for _ in range(5 if FULL else 1))
    for i, fraction in enumerate(fractions):
        name = f"stress-kill{i}"
        config = small_config(demo_area, name.replace("-", "_"), storage=name, points=points)
        proc = _start(config)
        try:
            proc.wait(timeout=fraction * seconds)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, f"the run ended before {fraction:.2f} of its time"
        storage = Path(demo_area.root) / name
        _finish(_start(config))
        assert _outputs(storage) == expected, f"killed at {fraction:.2f} of a run"
        assert not any(storage.rglob("*.tmp-*")), "no temporary leftovers"
        _check_registry(None, storage)
