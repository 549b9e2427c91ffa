"""Where Dask computations run: a LocalCluster sized to the machine, an existing scheduler, or Dask Gateway.

:func:`open_cluster` is the one entry point; the address forms it accepts are parsed once, at the boundary,
by :func:`_parse_address`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from .errors import ClusterError, InvalidInputError, MissingDependencyError

if TYPE_CHECKING:
    from distributed import Client

    from .settings import Settings

__all__ = ["ClusterError", "open_cluster"]

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a scheduler or a Dask Gateway to accept a connection."""

DEFAULT_SCHEDULER_PORT = 8786
"""Port of a Dask scheduler given as a bare host (``DASK_CLUSTER_IP=10.0.0.5``)."""

_WHERE = "--scheduler, the run config's dask.scheduler, LCSTACK_DASK_SCHEDULER or DASK_CLUSTER_IP"
_FORMS = (
    "'local' (a LocalCluster), 'threads' (no cluster), tcp://HOST:PORT or HOST:PORT (an existing scheduler), "
    "gateway://HOST:PORT (a new Dask Gateway cluster) or 'gateway' (the gateway in the dask config)"
)


@dataclass(frozen=True)
class _Target:
    """A parsed scheduler address."""

    kind: Literal["local", "threads", "synchronous", "scheduler", "gateway"]
    address: str | None = None  # tcp://HOST:PORT for "scheduler", HOST:PORT for "gateway" (None: dask config)
    host: str | None = None
    port: int | None = None


def _parse_address(address: str | None) -> _Target:
    """Normalise every accepted address form to a :class:`_Target` (raises InvalidInputError)."""
    text = (address or "").strip()
    word = text.lower()
    if word in ("", "local"):
        return _Target("local")
    if word == "threads":
        return _Target("threads")
    if word in ("sync", "synchronous"):
        return _Target("synchronous")
    if word == "gateway":
        return _Target("gateway")
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "tcp", text
    scheme = scheme.lower()
    if scheme not in ("tcp", "tls", "gateway"):
        raise InvalidInputError(
            f"Dask scheduler address {address!r} has the unsupported scheme {scheme!r}; give one of {_FORMS} "
            f"({_WHERE})."
        )
    rest = rest.rstrip("/")
    try:
        parts = urlsplit(f"//{rest}")
        host, port = parts.hostname, parts.port
    except ValueError as err:
        raise InvalidInputError(
            f"Dask scheduler address {address!r} is malformed ({err}); give one of {_FORMS} ({_WHERE})."
        ) from None
    if not host or parts.path or parts.query or parts.username:
        raise InvalidInputError(
            f"Dask scheduler address {address!r} is not HOST:PORT; give one of {_FORMS} ({_WHERE})."
        )
    netloc_host = f"[{host}]" if ":" in host else host
    if scheme == "gateway":
        if port is None:
            raise InvalidInputError(
                f"Dask Gateway address {address!r} has no port; give gateway://HOST:PORT, the port the "
                f"gateway's proxy listens at (c.Proxy.address, 8000 unless configured) ({_WHERE})."
            )
        return _Target("gateway", f"{netloc_host}:{port}", host, port)
    port = DEFAULT_SCHEDULER_PORT if port is None else port
    return _Target("scheduler", f"{scheme}://{netloc_host}:{port}", host, port)


def _probe(host: str, port: int, what: str) -> None:
    """Fail within CONNECT_TIMEOUT with a ClusterError when nothing accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise ClusterError(
            f"cannot reach {what} ({reason} after at most {CONNECT_TIMEOUT:g} s): check that it is running, "
            f"that host and port are right ({_WHERE}) and that no firewall blocks the port."
        ) from err


def _parse_memory(value: str | int | float, source: str) -> int:
    from dask.utils import parse_bytes

    try:
        return int(parse_bytes(value))
    except (ValueError, TypeError):
        raise InvalidInputError(
            f"{source} = {value!r} is not a memory size; give bytes or a size such as '2GB' or '1.5GiB'."
        ) from None


def _local_cluster_kwargs(config: Any, settings: Settings) -> dict[str, Any]:
    """LocalCluster arguments: one single-threaded worker process per core, memory within the machine's."""
    from dask.system import CPU_COUNT  # CPU affinity and cgroup quota aware
    from distributed.system import MEMORY_LIMIT  # physical memory, or the cgroup limit

    processes = bool(getattr(config, "processes", True)) if config is not None else True
    n_workers = getattr(config, "n_workers", None) or (CPU_COUNT if processes else 1)
    threads = getattr(config, "threads_per_worker", None) or (1 if processes else CPU_COUNT)
    explicit = getattr(config, "memory_limit", None)
    memory: int | str
    if explicit is not None and str(explicit).strip().lower() == "auto":
        memory = "auto"  # distributed's own share of the machine's memory
    elif explicit is not None:
        memory = _parse_memory(explicit, "dask.memory_limit in the run config")  # 0: no limit
    else:
        budget = _parse_memory(settings.memory_budget, "LCSTACK_MEMORY_BUDGET")
        memory = min(budget, MEMORY_LIMIT // n_workers)
    kwargs: dict[str, Any] = {
        "n_workers": n_workers,
        "threads_per_worker": threads,
        "processes": processes,
        "memory_limit": memory,
        "dashboard_address": ":0",  # any free port: several runs on one machine must not clash on 8787
    }
    if processes:
        kwargs["env"] = worker_env(
            memory if isinstance(memory, int) and memory > 0 else MEMORY_LIMIT // n_workers
        )
    return kwargs


def worker_env(memory_limit: int) -> dict[str, str]:
    """Environment of worker processes: GDAL's raster block cache sized to the worker's memory.

    GDAL caches decoded COG blocks up to ``GDAL_CACHEMAX``, 5 % of the *machine's* memory by default, per
    process. That cache fills as a run reads more blocks, so a worker's memory would grow with the area
    up to that cap; an eighth of the worker's own limit (at most 512 MB) keeps it flat and small. A value
    already set in the environment wins.
    """
    if "GDAL_CACHEMAX" in os.environ:
        return {"GDAL_CACHEMAX": os.environ["GDAL_CACHEMAX"]}
    return {"GDAL_CACHEMAX": str(max(32, min(512, memory_limit // 8 // 2**20)))}


def _dashboard_link(client: Client) -> str | None:
    """Return the dashboard URL, or None when the scheduler serves none (bokeh not installed)."""
    try:
        link = client.dashboard_link
    except Exception:  # KeyError when the scheduler has no dashboard service
        return None
    return link or None


@contextlib.contextmanager
def open_cluster(address: str | None = None, *, config: Any = None) -> Iterator[Client | None]:
    """Open a Dask client for the duration of the block.

    Parameters
    ----------
    address
        Where to compute; parsed case-insensitively:

        * ``None``, ``""`` or ``"local"``: a new LocalCluster sized to the machine: one single-threaded
          worker process per core available to this process, each limited to
          ``LCSTACK_MEMORY_BUDGET`` (default 2GB) but never more than its share of physical memory. With
          ``config.processes=False``, one threaded worker with a thread per core.
        * ``"threads"`` (or ``"synchronous"``): no cluster, dask's local threaded (synchronous) scheduler;
          yields ``None``.
        * ``tcp://HOST:PORT``, ``tls://HOST:PORT``, ``HOST:PORT`` or a bare ``HOST`` (port 8786), as in
          LandCoverPy's ``DASK_CLUSTER_IP``: an existing scheduler, left running on exit.
        * ``gateway://HOST:PORT``: a new cluster from the Dask Gateway whose proxy serves both the REST API
          and the scheduler connections on that port (the dask-gateway-server default, ``c.Proxy.address``).
          ``"gateway"``: the gateway in the dask config (``DASK_GATEWAY__ADDRESS``,
          ``DASK_GATEWAY__PROXY_ADDRESS``), as JupyterHub deployments set it. Credentials come from
          ``LCSTACK_GATEWAY_USERNAME``/``LCSTACK_GATEWAY_PASSWORD`` (HTTP basic auth) or else the dask
          config (``DASK_GATEWAY__AUTH__TYPE``). The cluster is shut down on exit, also after an error.
    config
        Optional :class:`lcstack.config.DaskConfig`. For a LocalCluster, ``n_workers``,
        ``threads_per_worker``, ``memory_limit`` and ``processes`` override the sizing above. For Dask
        Gateway, ``n_workers`` gives a fixed cluster size (adaptive from 1 worker up to the gateway's limit
        when unset), and ``threads_per_worker``/``memory_limit`` set the ``worker_cores``/``worker_memory``
        cluster options where the gateway offers them. Ignored for an existing scheduler.

    Yields
    ------
    distributed.Client or None
        A client, set as the default scheduler inside the block; ``None`` for ``"threads"``.

    Raises
    ------
    InvalidInputError
        The address or a size in ``config`` is malformed, or the gateway rejects a cluster option.
    ClusterError
        The scheduler or gateway does not accept a connection within 10 s, or rejects the credentials.
    MissingDependencyError
        ``gateway://`` without the ``dask-gateway`` package.

    """
    from .settings import get_settings

    target = _parse_address(address)
    if target.kind in ("threads", "synchronous"):
        import dask

        with dask.config.set(scheduler=target.kind):
            yield None
    elif target.kind == "local":
        with _local_client(config, get_settings()) as client:
            yield client
    elif target.kind == "scheduler":
        with _scheduler_client(target) as client:
            yield client
    else:
        with _gateway_client(target, config, get_settings()) as client:
            yield client


@contextlib.contextmanager
def _local_client(config: Any, settings: Settings) -> Iterator[Client]:
    from distributed import Client, LocalCluster

    kwargs = _local_cluster_kwargs(config, settings)
    with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
        logger.info(
            "started a LocalCluster: %d %s workers x %d threads, memory limit %s each; dashboard %s",
            kwargs["n_workers"],
            "process" if kwargs["processes"] else "thread",
            kwargs["threads_per_worker"],
            _format_bytes(kwargs["memory_limit"]),
            _dashboard_link(client) or "not available (pip install bokeh)",
        )
        yield client


@contextlib.contextmanager
def _scheduler_client(target: _Target) -> Iterator[Client]:
    from distributed import Client

    assert target.address is not None and target.host is not None and target.port is not None
    what = f"the Dask scheduler at {target.address}"
    _probe(target.host, target.port, what)
    try:
        kind = _identify(target.address)
    except (OSError, TimeoutError) as err:
        raise ClusterError(
            f"cannot connect to {what} ({type(err).__name__}: {err}): check that a Dask scheduler (not "
            f"another service) listens there, that tls:// is used when it requires TLS, and the address "
            f"({_WHERE})."
        ) from err
    if kind != "Scheduler":
        raise ClusterError(
            f"{target.address} is a Dask {kind}, not a scheduler: give the scheduler's address ({_WHERE}); "
            "the scheduler logs it as 'Scheduler at: tcp://HOST:PORT'."
        )
    try:
        client = Client(target.address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as err:
        raise ClusterError(f"cannot connect to {what} ({err}): check the address ({_WHERE}).") from err
    with client:
        n_workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        logger.info(
            "connected to %s (%d workers); dashboard %s", what, n_workers, _dashboard_link(client) or "none"
        )
        if n_workers == 0:
            logger.warning("%s has no workers yet; computations wait until workers join it", what)
        yield client


def _identify(address: str) -> str:
    """Ask the server at ``address`` what it is ("Scheduler", "Worker", ...) within CONNECT_TIMEOUT.

    ``distributed.Client`` waits forever for the handshake of a server that accepts the TCP connection but
    never answers (another service on the port), so the question is asked first, with a deadline. It runs
    on a fresh event loop in a helper thread, which also works where the caller's thread already runs one
    (Jupyter).
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from distributed.comm import connect
    from distributed.core import send_recv
    from distributed.security import Security

    async def ask() -> str:
        kwargs = Security().get_connection_args("client")  # TLS settings from the dask config
        comm = await asyncio.wait_for(connect(address, timeout=CONNECT_TIMEOUT, **kwargs), CONNECT_TIMEOUT)
        try:
            info = await asyncio.wait_for(send_recv(comm, op="identity"), CONNECT_TIMEOUT)
        finally:
            comm.abort()
        return str(info.get("type", "unknown service")) if isinstance(info, dict) else "unknown service"

    with ThreadPoolExecutor(1, thread_name_prefix="lcstack-identify") as pool:
        return pool.submit(asyncio.run, ask()).result()


def _gateway_auth(settings: Settings) -> Any:
    """BasicAuth from the lcstack settings, or None to let dask_gateway use the dask config."""
    if settings.gateway_username is None and settings.gateway_password is None:
        return None
    from dask_gateway.auth import BasicAuth  # type: ignore[import-untyped]

    password = settings.gateway_password.get_secret_value() if settings.gateway_password else None
    return BasicAuth(username=settings.gateway_username, password=password)


def _cluster_options(gateway: Any, config: Any) -> Any:
    """Get the gateway's cluster options with ``threads_per_worker``/``memory_limit`` applied."""
    options = gateway.cluster_options()
    wanted: dict[str, tuple[str, Any]] = {}
    threads = getattr(config, "threads_per_worker", None)
    if threads is not None:
        for name in ("worker_cores", "worker_threads"):
            if name in options:
                wanted[name] = ("dask.threads_per_worker", threads)
    memory = getattr(config, "memory_limit", None)
    if memory is not None and "worker_memory" in options:
        if isinstance(options["worker_memory"], str):
            wanted["worker_memory"] = ("dask.memory_limit", str(memory))
        else:  # numeric worker_memory is in GiB (the daskhub / Pangeo convention)
            nbytes = _parse_memory(memory, "dask.memory_limit in the run config")
            wanted["worker_memory"] = ("dask.memory_limit", round(nbytes / 2**30, 3))
    for name, (key, value) in wanted.items():
        try:
            options[name] = value
        except (ValueError, TypeError) as err:
            raise InvalidInputError(
                f"the Dask Gateway rejects {name}={value!r} (from {key} in the run config): {err}; change "
                f"{key} or leave it out to use the gateway's default."
            ) from None
    return options


@contextlib.contextmanager
def _gateway_client(target: _Target, config: Any, settings: Settings) -> Iterator[Client]:
    try:
        from dask_gateway import Gateway  # type: ignore[import-untyped]
    except ImportError:
        raise MissingDependencyError("dask-gateway", "gateway", "a Dask Gateway cluster") from None
    import aiohttp

    kwargs: dict[str, Any] = {"auth": _gateway_auth(settings)}
    if target.address is not None:
        assert target.host is not None and target.port is not None
        kwargs["address"] = f"http://{target.address}"
        kwargs["proxy_address"] = f"gateway://{target.address}"
        what = f"the Dask Gateway at gateway://{target.address}"
        _probe(target.host, target.port, what)
    else:
        what = "the Dask Gateway of the dask config (gateway.address)"
    try:
        gateway = Gateway(**kwargs)
    except ValueError as err:  # no address given and none in the dask config
        raise InvalidInputError(
            f"{err}: give gateway://HOST:PORT ({_WHERE}) or set DASK_GATEWAY__ADDRESS."
        ) from None
    cluster = None
    try:
        try:
            options = _cluster_options(gateway, config)
            cluster = gateway.new_cluster(options, shutdown_on_close=True)
        except aiohttp.ClientResponseError as err:
            hint = (
                "check LCSTACK_GATEWAY_USERNAME / LCSTACK_GATEWAY_PASSWORD or the dask config's gateway.auth"
                if err.status in (401, 403)
                else "check the address; it must be the gateway's proxy port"
            )
            raise ClusterError(f"{what} answered HTTP {err.status} {err.message}: {hint}.") from err
        except aiohttp.ClientError as err:
            raise ClusterError(
                f"cannot talk to {what} ({err}): check that it is running and the address."
            ) from err
        n_workers = getattr(config, "n_workers", None)
        if n_workers:
            cluster.scale(n_workers)
        else:
            cluster.adapt(minimum=1)
        with cluster.get_client(set_as_default=True) as client:
            logger.info(
                "started Dask Gateway cluster %s at %s (%s); dashboard %s",
                cluster.name,
                what,
                f"{n_workers} workers" if n_workers else "adaptive, from 1 worker",
                _dashboard_link(client) or "none",
            )
            yield client
    finally:
        if cluster is not None:
            try:
                cluster.shutdown()
                logger.info("shut down Dask Gateway cluster %s", cluster.name)
            except Exception:
                logger.error(
                    "could not shut down Dask Gateway cluster %s at %s; stop it with "
                    "dask_gateway.Gateway(...).stop_cluster(%r) before it uses up your quota",
                    cluster.name,
                    what,
                    cluster.name,
                    exc_info=True,
                )
            _forget_gateway(cluster.gateway)
        gateway.close()
        _forget_gateway(gateway)


def _forget_gateway(gateway: Any) -> None:
    """Stop a closed ``dask_gateway.Gateway`` from closing itself again when garbage collected.

    ``Gateway.__del__`` calls ``close()`` again, which raises ("Accessing the loop property while the loop is
    not running") once distributed's shared event loop has stopped; without its loop runner, ``__del__``
    skips the second close.
    """
    with contextlib.suppress(AttributeError):
        del gateway._loop_runner


def _format_bytes(value: int | str | None) -> str:
    if isinstance(value, int):
        from dask.utils import format_bytes

        return str(format_bytes(value))
    return str(value)
