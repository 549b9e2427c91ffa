"""Where Dask computations run: a LocalCluster sized to the machine, an existing scheduler, or Dask Gateway."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from .errors import InvalidInputError, MissingDependencyError

__all__ = ["open_cluster"]

logger = logging.getLogger(__name__)


def _local_cluster_kwargs(config: Any) -> dict[str, Any]:
    import psutil

    n_cpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = getattr(config, "processes", True) if config is not None else True
    n_workers = getattr(config, "n_workers", None) or (n_cpu if processes else 1)
    threads = getattr(config, "threads_per_worker", None) or (1 if processes else n_cpu)
    memory = getattr(config, "memory_limit", None) or int(psutil.virtual_memory().total * 0.8 / n_workers)
    return {
        "n_workers": n_workers,
        "threads_per_worker": threads,
        "processes": processes,
        "memory_limit": memory,
        "dashboard_address": ":0",
    }


@contextlib.contextmanager
def open_cluster(address: str | None = None, *, config: Any = None) -> Iterator[Any]:
    """Open a Dask client for the duration of the block.

    Parameters
    ----------
    address
        ``None`` or ``"local"``: a new LocalCluster sized to the machine (one single-threaded worker process
        per core unless ``config`` says otherwise). ``"threads"``: no cluster, dask's local threaded
        scheduler (yields ``None``). ``tcp://...``/``tls://...`` or ``HOST:PORT``: an existing scheduler
        (``DASK_CLUSTER_IP``). ``gateway://HOST:PORT``: a new cluster from the Dask Gateway at that address
        (its HTTP API and proxy on the same port), shut down on exit.
    config
        Optional :class:`lcstack.inputs.DaskConfig` (workers, threads, memory, processes).
    """
    from distributed import Client, LocalCluster

    if address in ("threads", "sync", "synchronous"):
        import dask

        with dask.config.set(scheduler="threads" if address == "threads" else "synchronous"):
            yield None
        return
    if address is None or address == "local":
        kwargs = _local_cluster_kwargs(config)
        with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
            logger.info("started %s; dashboard %s", cluster, client.dashboard_link)
            yield client
        return
    if address.startswith("gateway://"):
        try:
            from dask_gateway import Gateway
        except ImportError:
            raise MissingDependencyError("dask-gateway", "gateway", "a Dask Gateway cluster") from None
        hostport = address[len("gateway://") :].rstrip("/")
        gateway = Gateway(f"http://{hostport}", proxy_address=f"gateway://{hostport}")
        cluster = gateway.new_cluster()
        n = getattr(config, "n_workers", None) or 2
        cluster.scale(n)
        try:
            with cluster.get_client() as client:
                logger.info("Dask Gateway cluster %s; dashboard %s", cluster.name, client.dashboard_link)
                yield client
        finally:
            cluster.shutdown()
            gateway.close()
        return
    if "://" not in address and ":" not in address:
        raise InvalidInputError(
            f"Dask scheduler {address!r} is not an address; give tcp://HOST:PORT, gateway://HOST:PORT, "
            "'local' or 'threads'."
        )
    with Client(address if "://" in address else f"tcp://{address}", timeout="10s") as client:
        logger.info("connected to Dask scheduler %s", address)
        yield client
