"""Progress bars the caller can silence, for loops and for dask computations.

Whether bars are shown is decided once, where a run starts, by :func:`progress_enabled`:
``LCSTACK_PROGRESS=0`` silences them, ``LCSTACK_PROGRESS=1`` forces them, and otherwise they are shown
only when standard error is a terminal (so a log file or CI output gets no bar lines). While a bar is
shown, log records of console handlers go through ``tqdm.write`` (tqdm's logging redirection), so a log
line is never glued to a bar.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import dask
from dask.callbacks import Callback
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["progress_enabled", "progress_iter", "compute"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


def progress_enabled(requested: bool = True, settings: Settings | None = None) -> bool:
    """Decide whether to show progress bars.

    Parameters
    ----------
    requested
        What the caller asks for (``False`` for ``--quiet``: never a bar).
    settings
        ``settings.progress`` (``LCSTACK_PROGRESS``): ``False`` silences, ``True`` forces, ``None`` shows
        bars only when standard error is a terminal. Read from the environment by default.

    """
    if not requested:
        return False
    if settings is None:
        from .settings import get_settings

        settings = get_settings()
    if settings.progress is not None:
        return bool(settings.progress)
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def _on_console(handler: logging.Handler) -> bool:
    """Whether a handler writes to standard output or error (what tqdm's redirection replaces)."""
    return isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)


@contextlib.contextmanager
def _redirect_logging(active: bool) -> Iterator[None]:
    """Route the console log handlers through ``tqdm.write`` while a bar is shown."""
    if not active:
        yield
        return
    candidates = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    loggers = [
        lg for lg in candidates if isinstance(lg, logging.Logger) and any(_on_console(h) for h in lg.handlers)
    ]
    if not loggers:
        yield
        return
    with logging_redirect_tqdm(loggers=loggers):
        yield


def progress_iter(
    items: Iterable[T], *, desc: str, progress: bool = True, total: int | None = None
) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar unless ``progress`` is false."""
    with _redirect_logging(progress):
        yield from tqdm(items, desc=desc, total=total, disable=not progress, leave=False)


class _TqdmCallback(Callback):
    """A dask local-scheduler callback that drives a tqdm bar (one tick per task)."""

    def __init__(self, desc: str) -> None:
        super().__init__()
        self._desc = desc
        self._bar: Any = None

    def _start_state(self, dsk: Any, state: Any) -> None:
        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self._bar = tqdm(total=total, desc=self._desc, leave=False)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        if self._bar is not None:
            self._bar.close()


def _client() -> Any:
    """Return the ``distributed`` client dask.compute would use now, or None for a local scheduler.

    An explicit ``dask.config.set(scheduler="threads")`` (or "sync", "processes", a get function) wins
    over a default client, as it does for ``dask.compute``.
    """
    scheduler = dask.config.get("scheduler", None)
    if scheduler is not None and scheduler not in ("dask.distributed", "distributed"):
        owner = getattr(scheduler, "__self__", None)
        if not (owner is not None and type(owner).__name__ == "Client"):
            return None
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def compute(*objs: Any, desc: str = "computing", progress: bool = True) -> tuple[Any, ...]:
    """Compute dask collections, with a progress bar unless ``progress`` is false.

    Uses the current ``distributed`` client when there is one (bar over finished futures), the local
    scheduler otherwise.
    """
    client = _client()
    if client is None:
        if progress:
            with _redirect_logging(True), _TqdmCallback(desc):
                return dask.compute(*objs)
        return dask.compute(*objs)
    from distributed import as_completed, futures_of

    persisted = client.persist(list(objs))
    futures = futures_of(persisted)
    for _ in progress_iter(as_completed(futures), total=len(futures), desc=desc, progress=progress):
        pass
    return tuple(client.compute(persisted, sync=True))
