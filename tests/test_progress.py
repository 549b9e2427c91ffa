"""Progress bars: LCSTACK_PROGRESS=0 silences, =1 forces, none in a non-terminal log, log lines stay whole."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import pytest

from lcstack.config import load_config
from lcstack.pipeline import Workflow
from lcstack.progress import compute, progress_iter
from lcstack.settings import Settings


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    (tmp_path / "dataset.csv").write_text(
        "latitude;longitude;category\n36.70;-4.40;forest\n36.71;-4.41;forest\n"
    )
    (tmp_path / "seasons.json").write_text(
        json.dumps({"spring": {"start": "2023-03-01", "end": "2023-05-31"}})
    )
    (tmp_path / "lc.json").write_text('{"forest": 2}')
    (tmp_path / "catalog.json").write_text(
        json.dumps({"type": "Catalog", "id": "x", "stac_version": "1.0.0", "description": "x", "links": []})
    )
    cfg = tmp_path / "config.yaml"
    cfg.write_text("stac: catalog.json\nseasons: seasons.json\npoints: dataset.csv\nlc_labels: lc.json\n")
    return cfg


@pytest.mark.parametrize(
    ("env", "tty", "expected"),
    [("0", True, False), ("1", False, True), (None, False, False), (None, True, True)],
)
def test_workflow_progress_follows_env_and_terminal(
    config: Path, monkeypatch: pytest.MonkeyPatch, env: str | None, tty: bool, expected: bool
) -> None:
    if env is None:
        monkeypatch.delenv("LCSTACK_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("LCSTACK_PROGRESS", env)
    monkeypatch.setattr("sys.stderr.isatty", lambda: tty, raising=False)
    with Workflow(load_config(config), settings=Settings(), progress=True) as wf:
        assert wf.progress is expected
    with Workflow(load_config(config), settings=Settings(), progress=False) as wf:
        assert wf.progress is False  # --quiet always wins


def _log_lines(err: str, marker: str) -> list[str]:
    """The lines of ``err`` carrying ``marker``, as a terminal shows them (text after the last \\r)."""
    return [line.rsplit("\r", 1)[-1] for line in err.split("\n") if marker in line]


@contextlib.contextmanager
def console_log() -> Iterator[logging.Logger]:
    """A logger with a console handler on the current ``sys.stderr``, as the CLI sets up."""
    log = logging.getLogger("lcstack.test_progress")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("LOG %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield log
    finally:
        log.removeHandler(handler)


def test_log_lines_do_not_interleave_with_a_bar(capsys: pytest.CaptureFixture[str]) -> None:
    with console_log() as log:
        for i in progress_iter(range(3), desc="bar", progress=True):
            log.info("step %d", i)
    err = capsys.readouterr().err
    assert "bar:" in err  # the bar was drawn
    assert _log_lines(err, "LOG step") == ["LOG step 0", "LOG step 1", "LOG step 2"]


def test_log_lines_do_not_interleave_with_a_compute_bar(capsys: pytest.CaptureFixture[str]) -> None:
    with console_log() as log, dask.config.set(scheduler="sync"):

        def noisy(block: Any) -> Any:  # logs from inside a task while the bar is shown
            log.info("task")
            return block

        (out,) = compute(da.ones(4, chunks=2).map_blocks(noisy), desc="tasks", progress=True)
    err = capsys.readouterr().err
    assert out.sum() == 4 and "tasks:" in err
    assert set(_log_lines(err, "LOG task")) == {"LOG task"}
