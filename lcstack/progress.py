"""Progress bars the caller can silence, for loops and for dask computations."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import dask
from dask.callbacks import Callback
from tqdm.auto import tqdm

__all__ = ["progress_iter", "compute"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


def progress_iter(
    items: Iterable[T], *, desc: str, progress: bool = True, total: int | None = None
) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar unless ``progress`` is false."""
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
            with _TqdmCallback(desc):
                return dask.compute(*objs)
        return dask.compute(*objs)
    from distributed import as_completed, futures_of

    persisted = client.persist(list(objs))
    futures = futures_of(persisted)
    for _ in tqdm(as_completed(futures), total=len(futures), desc=desc, disable=not progress, leave=False):
        pass
    return tuple(client.compute(persisted, sync=True))
