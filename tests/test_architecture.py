"""The package's shape, checked from its source with ``ast`` (no import, no I/O beyond reading files).

- :class:`lcstack.store.Storage` is the only door to bytes: no other module imports fsspec / s3fs or
  opens files for writing (the exceptions below say why);
- functions stay under 80 lines (docstring not counted) unless their docstring says why ("long because ...");
- nothing imports the package face (``lcstack/__init__.py``): modules import the module that defines a
  name, so the arrows run one way.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lcstack"

#: The storage layer: the only modules that may reach a filesystem through fsspec / s3fs.
STORAGE_LAYER = {"store.py"}

#: Modules (or ``module:function``) that write files themselves, with the reason.
WRITERS_ALLOWED = {
    "store.py": "the storage door itself (atomic local writes)",
    "demo/": "the demo generator writes the user's demo folder (inputs of a run, not outputs)",
    "cog.py:_write_tiled": "GDAL writes the scratch GeoTIFF inside the private folder of Storage.open_output",
    "forest/engine.py:_calibrate": "the SIMD calibration table lives in numba's cache folder",
}

MAX_LINES = 80
WRITE_MODES = ("w", "a", "x", "+")


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        yield rel, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _functions(tree: ast.AST) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function and method with its qualified name (``Class.method``, ``outer.inner``)."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                yield f"{prefix}{child.name}", child
                yield from walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def _enclosing(tree: ast.AST) -> dict[int, str]:
    """Map ``id(node)`` -> the qualified name of the innermost function holding it."""
    out: dict[int, str] = {}
    for name, fn in _functions(tree):
        for node in ast.walk(fn):
            out[id(node)] = name  # inner functions come later and overwrite: innermost wins
    return out


def _allowed(rel: str, function: str | None, allowed: dict[str, str]) -> bool:
    return any(
        rel == key or (key.endswith("/") and rel.startswith(key)) or key == f"{rel}:{function}"
        for key in allowed
    )


def _mode(call: ast.Call) -> str | None:
    """The literal mode of an ``open``-like call (second positional argument or ``mode=``)."""
    node = call.args[1] if len(call.args) > 1 else None
    for kw in call.keywords:
        if kw.arg == "mode":
            node = kw.value
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _writes(tree: ast.AST) -> Iterator[ast.Call]:
    """Calls that write a file: ``open(p, "w"...)`` (builtin, rasterio, io, Path.open), ``Path.write_*``."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        mode = _mode(node)
        if name == "open" and mode is not None and any(c in mode for c in WRITE_MODES):
            yield node
        elif isinstance(func, ast.Attribute) and name == "write_text":
            yield node
        elif isinstance(func, ast.Attribute) and name == "write_bytes" and len(node.args) == 1:
            yield node  # Path.write_bytes(data); Storage.write_bytes(url, data) takes two


def test_only_the_storage_layer_imports_fsspec_or_s3fs():
    offenders = []
    for rel, tree in _modules():
        if rel in STORAGE_LAYER:
            continue
        for node in ast.walk(tree):  # module-level and function-level imports alike
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                if name.split(".")[0] in ("fsspec", "s3fs"):
                    offenders.append(f"lcstack/{rel}:{node.lineno} imports {name}")
    assert not offenders, "go through lcstack.store.Storage instead:\n" + "\n".join(offenders)


def test_no_module_writes_files_outside_the_storage_door():
    offenders = []
    for rel, tree in _modules():
        where = _enclosing(tree)
        for call in _writes(tree):
            function = where.get(id(call))
            if not _allowed(rel, function, WRITERS_ALLOWED):
                offenders.append(
                    f"lcstack/{rel}:{call.lineno} ({function or 'module'}): {ast.unparse(call)[:80]}"
                )
    assert not offenders, (
        "write through lcstack.store.Storage (write_bytes / put_file / open_output / write_zarr), or add the "
        "module to WRITERS_ALLOWED with the reason:\n" + "\n".join(offenders)
    )


def test_the_write_checks_see_what_they_look_for():
    """The detectors themselves: each kind of write is found, a Storage write and a read are not."""
    tree = ast.parse(
        "def f(p, s, rasterio):\n"
        "    open(p, 'wb')\n"
        "    rasterio.open(p, mode='w')\n"
        "    p.write_text('x')\n"
        "    p.write_bytes(b'x')\n"
        "    s.write_bytes(p, b'x')\n"
        "    open(p)\n"
        "    open(p, 'rb')\n"
    )
    assert [c.lineno for c in _writes(tree)] == [2, 3, 4, 5]
    assert _allowed("cog.py", "_write_tiled", WRITERS_ALLOWED)
    assert not _allowed("cog.py", "write_cog", WRITERS_ALLOWED)
    assert _allowed("demo/_area.py", "make_area", WRITERS_ALLOWED)


def _code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of ``fn`` from its ``def`` to its end, its docstring not counted."""
    lines = (fn.end_lineno or fn.lineno) - fn.lineno + 1
    first = fn.body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        lines -= (first.end_lineno or first.lineno) - first.lineno + 1
    return lines


def test_functions_are_short_or_say_why():
    offenders = []
    for rel, tree in _modules():
        for name, fn in _functions(tree):
            lines = _code_lines(fn)
            doc = (ast.get_docstring(fn) or "").lower()
            if lines > MAX_LINES and "long because" not in doc:
                offenders.append(f"lcstack/{rel}:{fn.lineno} {name}: {lines} lines")
    assert not offenders, (
        f"functions over {MAX_LINES} lines: split them, or say in the docstring why it is long "
        '("... long because ..."):\n' + "\n".join(offenders)
    )


def _face_names() -> set[str]:
    """Names ``lcstack/__init__.py`` defines or re-exports (its lazy ``_LAZY`` entries included)."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
            if any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in targets):
                names |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}  # type: ignore[union-attr]
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
    return names


def _submodules() -> set[str]:
    return {p.stem for p in PACKAGE.glob("*.py")} | {p.parent.name for p in PACKAGE.glob("*/__init__.py")}


def _face_imports(rel: str, tree: ast.AST, face: set[str]) -> Iterator[str]:
    """``import lcstack`` and ``from lcstack import X`` (or ``from . import X`` / ``from .. import X``)."""
    depth = rel.count("/") + 1  # the level of a relative import that names the package itself
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == "lcstack" for a in node.names):
            yield f"lcstack/{rel}:{node.lineno} import lcstack"
        elif isinstance(node, ast.ImportFrom) and (
            (node.level == 0 and node.module == "lcstack") or (node.level == depth and node.module is None)
        ):
            bad = [a.name for a in node.names if a.name in face or a.name == "*"]
            if bad:
                yield f"lcstack/{rel}:{node.lineno} imports {bad} from the package face"


def test_nothing_imports_the_package_face():
    face = _face_names() - _submodules()
    assert {"__version__", "Storage", "Workflow", "load_config"} <= face
    offenders = [
        hit for rel, tree in _modules() if rel != "__init__.py" for hit in _face_imports(rel, tree, face)
    ]
    assert not offenders, "import from the defining module (e.g. lcstack._version):\n" + "\n".join(offenders)


def test_the_face_check_sees_what_it_looks_for():
    face = {"__version__", "Storage"}
    code = "import lcstack\nfrom lcstack import __version__\nfrom . import Storage\nfrom . import store\n"
    assert len(list(_face_imports("cli.py", ast.parse(code), face))) == 3
    assert len(list(_face_imports("forest/engine.py", ast.parse("from .. import __version__"), face))) == 1
    assert not list(_face_imports("forest/engine.py", ast.parse("from . import Storage"), face))


@pytest.mark.parametrize("name", sorted(WRITERS_ALLOWED))
def test_every_exception_still_exists(name):
    """An entry of WRITERS_ALLOWED that names nothing any more must go."""
    rel, _, function = name.partition(":")
    path = PACKAGE / rel
    assert path.exists(), f"{name}: no such module or folder"
    if function:
        names = {n for n, _ in _functions(ast.parse(path.read_text(encoding="utf-8")))}
        assert function in names, f"{name}: no such function"
