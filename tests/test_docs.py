"""The documentation site builds offline with warnings as errors, and its config reference is complete."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

pytest.importorskip("sphinx")
pytest.importorskip("numpydoc")
pytest.importorskip("pydata_sphinx_theme")
pytest.importorskip("myst_parser")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    env = {k: v for k, v in os.environ.items() if k != "LCSTACK_DOCS_ONLINE"}  # no intersphinx: offline
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        "-m",
        "sphinx",
        "-b",
        "html",
        "-W",
        "--keep-going",
        "-q",
        "-d",
        str(out / "doctrees"),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*cmd, str(ROOT / "docs"), str(out / "html")], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, f"sphinx failed:\n{proc.stdout}\n{proc.stderr}"
    assert not proc.stderr.strip(), proc.stderr  # -q: only warnings and errors are printed
    print(f"docs built in {time.perf_counter() - t0:.1f} s")
    return out / "html"


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every key of the YAML schema, nested ones dotted (walked here apart from the docs extension)."""
    keys = set()
    for name, field in model.model_fields.items():
        if not prefix and name in ("source", "stac_source"):  # filled in by load_config, not YAML keys
            continue
        keys.add(prefix + name)
        stack = [field.annotation]
        while stack:
            ann = stack.pop()
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                keys |= _keys(ann, f"{prefix}{name}.")
            stack.extend(typing.get_args(ann))
    return keys


def _text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def test_config_reference_lists_every_key_of_the_schema(site):
    from lcstack.config import RunConfig
    from lcstack.signing import StacSource

    keys = _keys(RunConfig) | {f"stac.{k}" for k in StacSource.model_fields}
    assert {"model.cv.folds", "dask.scheduler", "mask.classes", "aoi.bbox"} <= keys
    page = (site / "config.html").read_text()
    listed = set(
        re.findall(r'<tr class="row-(?:odd|even)"><td><p><code[^>]*><span class="pre">([^<]+)</span>', page)
    )
    assert keys - listed == set(), "keys missing from the config reference"
    assert listed - keys == set(), "the config reference lists keys the schema does not have"
    text = _text(site / "config.html")
    assert "the seasons file" in text  # required keys say what they are for


def test_every_page_is_built(site):
    for page in ("index", "getting-started", "workflow", "inputs", "setups", "notebooks", "plots",
                 "landcoverpy", "benchmarks", "architecture", "api"):  # fmt: skip
        assert (site / f"{page}.html").stat().st_size > 0, page
    api = (site / "api.html").read_text()
    for name in ("lcstack.pipeline.Workflow", "lcstack.plot.plot_map", "lcstack.config.load_config"):
        assert f'id="{name}"' in api, name
    assert "DASK_CLUSTER_IP" in _text(site / "landcoverpy.html")
    assert "Summary" in _text(site / "benchmarks.html")  # benchmarks/RESULTS.md is included
