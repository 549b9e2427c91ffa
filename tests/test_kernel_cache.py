"""The forest kernels' on-disk cache is stamped with every source they compile from."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

numba = pytest.importorskip("numba")

from numba.core.dispatcher import Dispatcher  # noqa: E402

from lcstack.forest import _cache as _kernel_cache  # noqa: E402
from lcstack.forest import _simd, kernels  # noqa: E402
from lcstack.forest._cache import cache_dirs, source_digest  # noqa: E402


def test_digest_changes_when_any_source_changes(tmp_path: Path) -> None:
    copies = []
    for path in _simd.KERNEL_SOURCES:
        copies.append(tmp_path / os.path.basename(path))
        shutil.copy(path, copies[-1])
    before = source_digest(copies)
    assert before == source_digest(_simd.KERNEL_SOURCES)
    for copy in copies:
        original = copy.read_bytes()
        copy.write_bytes(original.replace(b"\n", b"\n ", 1))
        assert source_digest(copies) != before, copy.name
        copy.write_bytes(original)
    assert source_digest(copies) == before


def _dispatchers() -> list[Dispatcher]:
    found = []
    for module in (kernels, _simd):
        found += [obj for obj in vars(module).values() if isinstance(obj, Dispatcher)]
    return found


def test_every_kernel_is_cached_with_the_stamp_over_all_its_sources() -> None:
    kernels = _dispatchers()
    assert {k.py_func.__name__ for k in kernels} >= {"_predict_serial", "_predict_parallel", "_descend"}
    sources = {os.path.abspath(s) for s in _simd.KERNEL_SOURCES}
    stamp = source_digest(_simd.KERNEL_SOURCES)
    for kernel in kernels:
        # every file a kernel is defined in is stamped (a new engine module must join KERNEL_SOURCES)
        assert os.path.abspath(inspect.getfile(kernel.py_func)) in sources, kernel
        assert kernel._cache._impl.locator.get_source_stamp() == stamp, kernel


_KERNEL = """
from lcstack.forest._cache import jit
import os, b
HERE = os.path.dirname(os.path.abspath(__file__))

@jit((os.path.join(HERE, "a.py"), os.path.join(HERE, "b.py")), nogil=True)
def f(x):
    return b.g(x)
"""

_STEP = """
from lcstack.forest._cache import jit
import os
HERE = os.path.dirname(os.path.abspath(__file__))

@jit((os.path.join(HERE, "a.py"), os.path.join(HERE, "b.py")), inline="always")
def g(x):
    return x + {}
"""

_RUN = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
import a
value = a.f(1)
print(json.dumps({"value": value, "hits": sum(a.f.stats.cache_hits.values()), "path": a.f.stats.cache_path}))
"""


def _run(package: Path, env: dict[str, str]) -> tuple[dict, str]:
    done = subprocess.run(
        [sys.executable, "-c", _RUN], cwd=package, capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    *log, last = done.stdout.strip().splitlines()
    return json.loads(last), "\n".join(log)


def test_editing_a_called_module_recompiles_the_kernel(tmp_path: Path) -> None:
    """numba's own cache=True would keep f's stale machine code after b.py changes; this cache does not."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text(_KERNEL)
    (package / "b.py").write_text(_STEP.format(1))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([str(package), *sys.path])
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")

    first, log = _run(package, env)
    assert first == {"value": 2, "hits": 0, "path": str(package / "__pycache__")}
    assert "compiling the forest engine, once per install" in log
    second, log = _run(package, env)
    assert second["value"] == 2 and second["hits"] == 1 and "compiling" not in log
    (package / "b.py").write_text(_STEP.format(2))  # only the callee's file changes
    third, log = _run(package, env)
    assert third["value"] == 3 and third["hits"] == 0 and "compiling" in log

    # no writable __pycache__ beside the sources (here a file of that name): the user's cache folder
    shutil.rmtree(package / "__pycache__")
    (package / "__pycache__").write_text("")
    fourth, _ = _run(package, env)
    user_dir = os.path.basename(cache_dirs(str(package / "a.py"))[-1])
    assert fourth == {"value": 3, "hits": 0, "path": str(tmp_path / "xdg" / "lcstack" / "numba" / user_dir)}


def test_cache_dirs_put_numba_cache_dir_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    dirs = cache_dirs(kernels.__file__)
    assert dirs[0].startswith(str(tmp_path / "lcstack"))
    assert dirs[1] == os.path.join(os.path.dirname(os.path.abspath(kernels.__file__)), "__pycache__")
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    assert cache_dirs(kernels.__file__) == dirs[1:]
    assert _kernel_cache.__name__ == "lcstack.forest._cache"
