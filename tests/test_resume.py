"""Runs killed with SIGKILL in the middle of compositing or classification resume and give identical bytes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lcstack.registry import open_registry

LCSTACK = str(Path(sys.executable).with_name("lcstack"))


def _config(area: Any, name: str) -> Path:
    text = Path(area.config).read_text().replace("storage: lcstack-data", f"storage: {name}")
    path = Path(area.root) / f"config_{name}.yaml"
    path.write_text(text)
    return path


def _run(config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LCSTACK_PROGRESS": "0"}
    return subprocess.run(
        [LCSTACK, "run", str(config), "--scheduler", "threads", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


def _run_and_kill(config: Path, storage: Path, when: str) -> None:
    """Start a run and SIGKILL it as soon as a file matching ``when`` appears under ``storage``."""
    env = {**os.environ, "LCSTACK_PROGRESS": "0"}
    proc = subprocess.Popen(
        [LCSTACK, "run", str(config), "--scheduler", "threads", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            if storage.exists() and any(storage.glob(when)):
                proc.send_signal(signal.SIGKILL)
                break
            if proc.poll() is not None:
                pytest.fail(f"the run finished before {when!r} appeared; nothing was interrupted")
            time.sleep(0.005)
        else:
            pytest.fail(f"{when!r} never appeared")
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _outputs(storage: Path) -> dict[str, str]:
    """Content hashes of every output file by relative path.

    Model artefacts record when they were made (a creation time in metadata.json, zip timestamps in
    model.skops, PNG metadata): those are compared without the time; everything else byte for byte.
    """
    out = {}
    for p in sorted(storage.rglob("*")):
        if not p.is_file() or "registry.sqlite" in p.name or p.suffix == ".png":
            continue
        rel = str(p.relative_to(storage))
        if p.name == "model.skops":
            continue
        if p.name == "metadata.json" and "models" in p.parts:
            meta = json.loads(p.read_text())
            for volatile in ("created_at", "model_sha256", "created"):
                meta.pop(volatile, None)
            out[rel] = json.dumps(meta, sort_keys=True)
            continue
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def reference(demo_area: Any) -> dict[str, str]:
    config = _config(demo_area, "ref")
    proc = _run(config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _outputs(Path(demo_area.root) / "ref")


def test_kill_during_compositing_then_resume(demo_area: Any, reference: dict[str, str]) -> None:
    storage = Path(demo_area.root) / "killc"
    config = _config(demo_area, "killc")
    # the first season's store is complete once it has its final name; kill while the next is written
    _run_and_kill(config, storage, "composites/*/summer_*.zarr.tmp-*")
    done = {p.name: p.stat().st_mtime_ns for p in storage.glob("composites/*/*.zarr")}
    assert done and all(not n.startswith("summer") for n in done), done
    with open_registry(None, default_path=str(storage / "registry.sqlite")) as reg:
        statuses = {r["season"]: r["status"] for r in reg.find("composites")}
    assert statuses.get("summer") == "pending"
    assert not any(storage.glob("classification-maps/**/*.tif"))

    proc = _run(config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reused" in proc.stdout and "spring" in proc.stdout
    for name, mtime in done.items():
        store = next(storage.glob(f"composites/*/{name}"))
        assert store.stat().st_mtime_ns == mtime, f"{name} was complete and must not be recomputed"
    assert not any(storage.rglob("*.tmp-*")), "no temporary leftovers"
    assert _outputs(storage) == reference


def test_kill_during_classification_then_resume(demo_area: Any, reference: dict[str, str]) -> None:
    storage = Path(demo_area.root) / "killm"
    config = _config(demo_area, "killm")
    _run_and_kill(config, storage, "classification-maps/*/*/maps.zarr.tmp-*")
    assert any(storage.glob("models/*/metadata.json"))
    assert not any(storage.glob("classification-maps/*/*/level1.tif"))
    proc = _run(config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reused = [ln for ln in proc.stdout.splitlines() if "reused" in ln]
    assert any(ln.startswith("composite") for ln in reused) and any(ln.startswith("train") for ln in reused)
    assert not any(storage.rglob("*.tmp-*"))
    assert _outputs(storage) == reference
