r"""numba's on-disk cache for the forest kernels, keyed on every source file they compile from.

numba's own ``cache=True`` keys a cached kernel on the file of the decorated function only, so a kernel
of :mod:`lcstack.forest` that inlines a step of :mod:`lcstack.forest._simd` stays stale after ``_simd.py``
changes. :func:`jit` compiles with numba as ``numba.njit`` does and caches through a locator whose source
stamp is a hash of *all* the given files (:func:`source_digest`): editing any of them invalidates the cache
of every kernel compiled from them. numba still keys each entry on the signature, the CPU and its own
version.

The cache lives in the first writable folder of (:func:`cache_dirs`):

1. ``$NUMBA_CACHE_DIR/lcstack`` when the user set ``NUMBA_CACHE_DIR``;
2. ``__pycache__`` beside the sources (a user's checkout, a writable site-packages);
3. the user's cache folder: ``$XDG_CACHE_HOME/lcstack/numba`` (``~/.cache/lcstack/numba``), or
   ``%LOCALAPPDATA%\lcstack\numba`` on Windows, ``~/Library/Caches/lcstack/numba`` on macOS.

With none writable the kernels compile in every process, as without a cache. The first compilation of
a process that finds no cached kernel is logged once at INFO (it takes about a minute).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["cache_dirs", "jit", "source_digest"]

logger = logging.getLogger(__name__)

_announced = False


def source_digest(sources: Sequence[str]) -> str:
    """Hash of the content of every file in ``sources`` (in order, with their names).

    Parameters
    ----------
    sources : sequence of str
        Paths of the source files the kernels compile from.

    Returns
    -------
    str
        Hex SHA-256; it changes when any byte of any of the files changes.

    """
    digest = hashlib.sha256()
    for path in sources:
        with open(path, "rb") as f:
            content = f.read()
        digest.update(os.path.basename(path).encode() + b"\0" + len(content).to_bytes(8, "little") + content)
    return digest.hexdigest()


def _user_cache_root() -> str:
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
    elif sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "lcstack", "numba")


def cache_dirs(source: str) -> list[str]:
    """Return the folders tried, in order, for the cache of kernels defined in ``source`` (see above)."""
    folder = os.path.dirname(os.path.abspath(source))
    # one sub-folder per source folder outside the tree, so checkouts never share entries
    sub = f"{os.path.basename(folder)}_{hashlib.sha1(folder.encode()).hexdigest()[:16]}"
    dirs = []
    if os.environ.get("NUMBA_CACHE_DIR"):
        dirs.append(os.path.join(os.environ["NUMBA_CACHE_DIR"], "lcstack", sub))
    dirs.append(os.path.join(folder, "__pycache__"))
    dirs.append(os.path.join(_user_cache_root(), sub))
    return dirs


def _writable(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


@functools.cache
def _cache_class(sources: tuple[str, ...]) -> Any:
    """Make a numba ``FunctionCache`` class whose entries carry :func:`source_digest` of ``sources``."""
    from numba.core.caching import CompileResultCacheImpl, FunctionCache, _CacheLocator

    class Locator(_CacheLocator):
        def __init__(self, py_func: Any, path: str) -> None:
            self._lineno = py_func.__code__.co_firstlineno
            self._path = path

        def get_cache_path(self) -> str:
            return self._path

        def get_source_stamp(self) -> str:
            return source_digest(sources)

        def get_disambiguator(self) -> str:
            return str(self._lineno)

        @classmethod
        def from_function(cls, py_func: Any, py_file: str) -> Locator | None:
            for path in cache_dirs(py_file):
                if _writable(path):
                    return cls(py_func, path)
            return None

    class Impl(CompileResultCacheImpl):
        _locator_classes = [Locator]

    class Cache(FunctionCache):
        _impl_class = Impl

        def load_overload(self, sig: Any, target_context: Any) -> Any:
            found = super().load_overload(sig, target_context)
            global _announced
            if found is None and not _announced:
                _announced = True
                logger.info(
                    "compiling the forest engine, once per install and CPU (about a minute); the kernels "
                    "are cached in %s",
                    self.cache_path,
                )
            return found

    return Cache


def jit(sources: Sequence[str], **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(**options)``, cached on disk with a stamp over every file of ``sources``.

    Parameters
    ----------
    sources : sequence of str
        Every source file the decorated kernels compile from (their own file and each module whose
        functions they call or inline).
    **options
        Passed to ``numba.njit`` (``cache`` must not be given: this is the cache).

    Returns
    -------
    callable
        A decorator returning the numba dispatcher.

    """
    import numba
    from numba.core.dispatcher import Dispatcher

    cache = _cache_class(tuple(os.path.abspath(s) for s in sources))

    def decorate(func: Callable[..., Any]) -> Any:
        dispatcher = numba.njit(**options)(func)
        if isinstance(dispatcher, Dispatcher):  # not with NUMBA_DISABLE_JIT
            try:
                dispatcher._cache = cache(dispatcher.py_func)  # what Dispatcher.enable_caching does
            except RuntimeError:  # no writable folder: compile in every process
                logger.debug("no writable cache folder for %s", func.__qualname__)
        return dispatcher

    return decorate
