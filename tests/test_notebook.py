"""Execute the notebook gallery (notebooks/*.ipynb) end to end on small demo areas."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK = NOTEBOOKS / "quickstart.ipynb"
GALLERY = ("large_area", "map_quality", "custom_cube", "dask")


def _tagged(nb, tag):
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def _has_png(cell) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


@pytest.mark.parametrize("name", ["quickstart", *GALLERY])
def test_notebook_is_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                "clear the notebook's outputs before committing"
            )


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A `python3` kernelspec that runs this interpreter, and an isolated Jupyter/IPython environment."""
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager

    prefix = tmp_path / "jupyter-prefix"
    install(prefix=str(prefix), kernel_name="python3")
    # JUPYTER_PATH comes first in the search path, ahead of user/system kernelspecs that may point at
    # another Python.
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("LCSTACK_NB_SIZE", "256")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's tempfile.mkdtemp() lands here
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert Path(spec.argv[0]) == Path(sys.executable), spec.argv
    work = tmp_path / "work"
    work.mkdir()
    return work


@pytest.mark.slow
def test_quickstart_notebook_runs(kernel_env):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(kernel_env)}}
    )
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError (with the cell's traceback) on any error
    elapsed = time.perf_counter() - t0

    for cell in nb.cells:
        if cell.cell_type == "code":
            errors = [o for o in cell.outputs if o.get("output_type") == "error"]
            assert not errors, errors

    accuracy = _text(_tagged(nb, "accuracy"))
    m = re.search(r"level-1 accuracy vs truth: ([0-9.]+)", accuracy)
    assert m, accuracy
    assert float(m.group(1)) >= 0.9, accuracy

    assert _has_png(_tagged(nb, "level1-map")), "the level-1 map cell produced no figure"
    assert "classes:" in _text(_tagged(nb, "accessor-window"))
    # every figure cell rendered: RGB composite, confusion matrix, level-1 map
    assert sum(_has_png(c) for c in nb.cells if c.cell_type == "code") >= 3
    print(f"quickstart notebook executed in {elapsed:.1f} s")


# ------------------------------------------------------------------------------------------ the gallery
@pytest.fixture(scope="module")
def gallery_env(demo_run, tmp_path_factory):
    """One prepared area for every gallery notebook: the suite's demo area (already run), a 3-tile area, and
    the offline Dask Gateway."""
    from gateway_server import GatewayServer

    from lcstack.demo import make_demo_area

    area, _, _ = demo_run
    tiles = make_demo_area(tmp_path_factory.mktemp("nb-tiles") / "area", size=256, tiles=3)
    with GatewayServer(tmp_path_factory.mktemp("nb-gateway"), password="lcstack-nb-secret") as gateway:
        yield {
            "LCSTACK_NB_AREA": str(area.root),
            "LCSTACK_NB_AREA_TILES": str(tiles.root),
            "LCSTACK_NB_GATEWAY": f"gateway://{gateway.hostport}",
            "LCSTACK_GATEWAY_USERNAME": "notebook",
            "LCSTACK_GATEWAY_PASSWORD": "lcstack-nb-secret",
        }


def _figures(nb) -> list[bytes]:
    import base64

    return [
        base64.b64decode(o["data"]["image/png"])
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]


def _warnings(nb) -> list[str]:
    return [
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.get("output_type") == "stream" and o.get("name") == "stderr"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", GALLERY)
def test_gallery_notebook_runs(name, kernel_env, gallery_env, monkeypatch, tmp_path):
    for key, value in gallery_env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(kernel_env)}}
    )
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError (with the cell's traceback) on any error
    elapsed = time.perf_counter() - t0
    assert _warnings(nb) == [], "the notebook printed warnings or errors"
    figures = _figures(nb)
    assert figures, "the notebook drew no figure"
    out = tmp_path / "figures"
    out.mkdir()
    for i, png in enumerate(figures):
        path = out / f"{name}_{i}.png"
        path.write_bytes(png)
        assert path.stat().st_size > 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    print(f"{name} notebook executed in {elapsed:.1f} s, {len(figures)} figure(s)")
