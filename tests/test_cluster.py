"""open_cluster against real Dask schedulers and a real Dask Gateway server (tests/gateway_server.py).

Clusters are kept small (at most 2 workers with 1 thread each): the tests share a small machine.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import psutil
import pytest
from distributed import Client, LocalCluster

from lcstack import cluster as cluster_mod
from lcstack.cli import _dask
from lcstack.cluster import (
    ClusterError,
    _forget_gateway,
    _local_cluster_kwargs,
    _parse_address,
    _Target,
    open_cluster,
)
from lcstack.config import DaskConfig
from lcstack.errors import InvalidInputError, LcstackError
from lcstack.settings import Settings, get_settings

sys.path.insert(0, str(Path(__file__).parent))
from gateway_server import GatewayServer, free_port  # noqa: E402

GATEWAY_PASSWORD = "lcstack-test-secret"


def _ones_sum() -> float:
    return float(da.ones((1000, 1000), chunks=250).sum().compute())


def _children() -> set[int]:
    """Child processes of this test process, but not multiprocessing's resource tracker.

    The tracker starts with the first spawned worker and lives as long as this process, by design.
    """
    pids = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if "multiprocessing.resource_tracker" not in " ".join(proc.cmdline()):
                pids.add(proc.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


def _wait_until(predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Isolate the cached settings from the developer's environment; re-read after each setenv."""
    for name in (
        "LCSTACK_MEMORY_BUDGET",
        "LCSTACK_GATEWAY_USERNAME",
        "LCSTACK_GATEWAY_PASSWORD",
        "LCSTACK_DASK_SCHEDULER",
        "DASK_CLUSTER_IP",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(Path(__file__).parent)  # no stray .env from the caller's working directory
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


# ----------------------------------------------------------------------------------------------------
# address parsing


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (None, _Target("local")),
        ("", _Target("local")),
        (" Local ", _Target("local")),
        ("threads", _Target("threads")),
        ("sync", _Target("synchronous")),
        ("gateway", _Target("gateway")),
        ("tcp://10.0.0.5:8786", _Target("scheduler", "tcp://10.0.0.5:8786", "10.0.0.5", 8786)),
        ("10.0.0.5:9000", _Target("scheduler", "tcp://10.0.0.5:9000", "10.0.0.5", 9000)),
        ("10.0.0.5", _Target("scheduler", "tcp://10.0.0.5:8786", "10.0.0.5", 8786)),
        (
            "TCP://sched.example:8786/",
            _Target("scheduler", "tcp://sched.example:8786", "sched.example", 8786),
        ),
        ("tls://sched.example:8786", _Target("scheduler", "tls://sched.example:8786", "sched.example", 8786)),
        ("[::1]:8786", _Target("scheduler", "tcp://[::1]:8786", "::1", 8786)),
        ("gateway://gw.example:8000", _Target("gateway", "gw.example:8000", "gw.example", 8000)),
    ],
)
def test_parse_address(address: str | None, expected: _Target) -> None:
    assert _parse_address(address) == expected


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("ftp://host:21", "unsupported scheme 'ftp'"),
        ("tcp://host:notaport", "malformed"),
        ("tcp://host:99999", "malformed"),
        ("tcp://host:8786/path", "not HOST:PORT"),
        ("tcp://user@host:8786", "not HOST:PORT"),
        ("gateway://gw.example", "has no port"),
    ],
)
def test_malformed_address_raises_invalid_input(address: str, fragment: str) -> None:
    with pytest.raises(InvalidInputError, match=fragment) as info:
        with open_cluster(address):
            pass
    assert isinstance(info.value, ValueError)
    assert address in str(info.value) and "DASK_CLUSTER_IP" in str(info.value)


# ----------------------------------------------------------------------------------------------------
# LocalCluster sizing (pure) and real LocalClusters


def test_local_sizing_follows_cores_budget_and_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dask.system.CPU_COUNT", 8)
    monkeypatch.setattr("distributed.system.MEMORY_LIMIT", 64 * 2**30)
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    kw = _local_cluster_kwargs(None, Settings(memory_budget="2GB"))
    assert kw == {
        "n_workers": 8,
        "threads_per_worker": 1,
        "processes": True,
        "memory_limit": 2_000_000_000,
        "dashboard_address": ":0",
        "env": {"GDAL_CACHEMAX": "238"},  # an eighth of the worker's limit, in MB
    }
    # A small machine: the budget is capped by each worker's share of physical memory.
    monkeypatch.setattr("distributed.system.MEMORY_LIMIT", 8 * 2**30)
    assert _local_cluster_kwargs(None, Settings(memory_budget="4GB"))["memory_limit"] == 2**30
    # Threads: one worker with a thread per core.
    kw = _local_cluster_kwargs(DaskConfig(processes=False), Settings())
    assert (kw["n_workers"], kw["threads_per_worker"], kw["processes"]) == (1, 8, False)
    # The run config overrides everything.
    cfg = DaskConfig(n_workers=3, threads_per_worker=2, memory_limit="1.5GiB")
    kw = _local_cluster_kwargs(cfg, Settings())
    assert (kw["n_workers"], kw["threads_per_worker"], kw["memory_limit"]) == (3, 2, int(1.5 * 2**30))
    assert _local_cluster_kwargs(DaskConfig(memory_limit="auto"), Settings())["memory_limit"] == "auto"


def test_bad_memory_sizes_name_their_source() -> None:
    with pytest.raises(InvalidInputError, match="LCSTACK_MEMORY_BUDGET = 'lots'"):
        _local_cluster_kwargs(None, Settings(memory_budget="lots"))
    with pytest.raises(InvalidInputError, match="dask.memory_limit in the run config = '2 bananas'"):
        _local_cluster_kwargs(DaskConfig(memory_limit="2 bananas"), Settings())


def test_local_process_cluster_sized_from_settings_computes_and_leaks_nothing(
    settings_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings_env.setattr("dask.system.CPU_COUNT", 2)
    settings_env.setenv("LCSTACK_MEMORY_BUDGET", "300MB")
    before = _children()
    with caplog.at_level("INFO", logger="lcstack.cluster"), open_cluster(None) as client:
        assert isinstance(client, Client)
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert len(workers) == 2
        assert {w["nthreads"] for w in workers.values()} == {1}
        assert {w["memory_limit"] for w in workers.values()} == {300_000_000}
        assert client.run(lambda: __import__("os").getpid()).keys() == workers.keys()
        assert set(client.run(lambda: __import__("os").getpid()).values()).isdisjoint({psutil.Process().pid})
        assert _ones_sum() == 1e6  # through the default client
    assert "started a LocalCluster: 2 process workers x 1 threads, memory limit 286.10 MiB" in caplog.text
    assert "dashboard http" in caplog.text
    _wait_until(lambda: _children() <= before, what="the worker processes to exit")
    with pytest.raises(ValueError):
        __import__("distributed").default_client()


def test_local_thread_workers_compute_in_this_process() -> None:
    cfg = DaskConfig(processes=False, n_workers=1, threads_per_worker=2, memory_limit="1GB")
    before = _children()
    with open_cluster("local", config=cfg) as client:
        assert client is not None
        pids = client.run(lambda: __import__("os").getpid())
        assert set(pids.values()) == {psutil.Process().pid}
        (worker,) = client.scheduler_info(n_workers=-1)["workers"].values()
        assert (worker["nthreads"], worker["memory_limit"]) == (2, 1_000_000_000)
        assert _ones_sum() == 1e6
    assert _children() <= before


def test_threads_scheduler_has_no_cluster() -> None:
    with open_cluster("threads") as client:
        assert client is None
        assert dask.config.get("scheduler") == "threads"
        assert _ones_sum() == 1e6
    assert dask.config.get("scheduler", None) is None


# ----------------------------------------------------------------------------------------------------
# an existing scheduler


@pytest.fixture(scope="module")
def scheduler() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=":0",
    ) as cluster:
        yield cluster


@pytest.mark.parametrize("form", ["tcp", "bare"])
def test_connects_to_existing_scheduler_and_leaves_it_running(scheduler: LocalCluster, form: str) -> None:
    address = scheduler.scheduler_address
    if form == "bare":
        address = address.removeprefix("tcp://")
    with open_cluster(address, config=DaskConfig(n_workers=7)) as client:  # sizing is ignored here
        assert client is not None
        assert client.scheduler.address == scheduler.scheduler_address
        assert len(client.scheduler_info()["workers"]) == 1
        assert _ones_sum() == 1e6
    assert client.status == "closed"
    assert scheduler.status.name == "running"
    with Client(scheduler.scheduler_address) as again:
        assert len(again.scheduler_info()["workers"]) == 1


def test_unreachable_scheduler_fails_fast_with_advice() -> None:
    port = free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(ClusterError) as info:
        with open_cluster(f"127.0.0.1:{port}"):
            pass
    assert time.monotonic() - start < 10
    err = info.value
    assert isinstance(err, LcstackError) and isinstance(err, ConnectionError)
    message = str(err)
    assert f"tcp://127.0.0.1:{port}" in message
    assert "check that it is running" in message and "DASK_CLUSTER_IP" in message


def test_worker_address_is_not_mistaken_for_a_scheduler(scheduler: LocalCluster) -> None:
    (worker,) = scheduler.workers.values()
    with pytest.raises(ClusterError, match=f"{worker.address} is a Dask Worker, not a scheduler"):
        with open_cluster(worker.address):
            pass


def test_silent_service_is_not_mistaken_for_a_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster_mod, "CONNECT_TIMEOUT", 1.0)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:  # accepts and never answers
            server.settimeout(0.2)
            while not stop.is_set():
                try:
                    accepted.append(server.accept()[0])
                except OSError:
                    pass

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        start = time.monotonic()
        try:
            with pytest.raises(
                ClusterError, match=f"cannot connect to the Dask scheduler at tcp://127.0.0.1:{port}"
            ):
                with open_cluster(f"tcp://127.0.0.1:{port}"):
                    pass
        finally:
            stop.set()
            thread.join()
            for conn in accepted:
                conn.close()
    assert time.monotonic() - start < 10


# ----------------------------------------------------------------------------------------------------
# the CLI's scheduler choice


def test_cli_dask_threads_and_address_from_environment(
    scheduler: LocalCluster, settings_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with _dask("threads") as client:
        assert client is None
    settings_env.setenv("DASK_CLUSTER_IP", scheduler.scheduler_address.removeprefix("tcp://"))
    with _dask(None) as client:
        assert client.scheduler.address == scheduler.scheduler_address
        assert _ones_sum() == 1e6
    assert "Dask dashboard: http" in capsys.readouterr().err
    with pytest.raises(InvalidInputError):
        with _dask("ftp://nowhere:1"):
            pass


# ----------------------------------------------------------------------------------------------------
# Dask Gateway (a real dask-gateway-server with local processes)


@pytest.fixture(scope="module")
def gateway_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    with GatewayServer(tmp_path_factory.mktemp("gateway"), password=GATEWAY_PASSWORD) as server:
        yield server


@contextlib.contextmanager
def _gateway(server: GatewayServer) -> Iterator[Any]:
    """A dask_gateway.Gateway on the test server, closed without dask-gateway's noisy second close."""
    from dask_gateway import BasicAuth, Gateway

    auth = BasicAuth("tester", server.password)
    gateway = Gateway(server.address, proxy_address=server.proxy_address, auth=auth)
    try:
        yield gateway
    finally:
        gateway.close()
        _forget_gateway(gateway)


def _cluster_processes(server: GatewayServer) -> list[psutil.Process]:
    """Schedulers and workers the gateway started (its other child is the Go proxy)."""
    assert server.process is not None
    procs = psutil.Process(server.process.pid).children(recursive=True)
    return [p for p in procs if "dask-gateway-proxy" not in " ".join(p.cmdline())]


@pytest.mark.slow
def test_gateway_cluster_computes_and_is_shut_down(
    gateway_server: GatewayServer, settings_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings_env.setenv("LCSTACK_GATEWAY_USERNAME", "tester")
    settings_env.setenv("LCSTACK_GATEWAY_PASSWORD", GATEWAY_PASSWORD)
    cfg = DaskConfig(n_workers=1, threads_per_worker=1, memory_limit="512MiB")
    with (
        _gateway(gateway_server) as gateway,
        caplog.at_level("INFO", logger="lcstack.cluster"),
        open_cluster(f"gateway://{gateway_server.hostport}", config=cfg) as client,
    ):
        (report,) = gateway.list_clusters()
        assert report.status.name == "RUNNING"
        assert report.options == {"worker_cores": 1, "worker_memory": 0.5}
        assert _ones_sum() == 1e6
        (worker,) = client.scheduler_info(n_workers=-1)["workers"].values()
        assert (worker["nthreads"], worker["memory_limit"]) == (1, 2**29)
        assert _cluster_processes(gateway_server)  # its scheduler and worker run under the gateway
    assert f"started Dask Gateway cluster {report.name}" in caplog.text
    assert f"shut down Dask Gateway cluster {report.name}" in caplog.text
    with _gateway(gateway_server) as gateway:
        assert gateway.list_clusters() == []  # stopping or stopped
        _wait_until(
            lambda: gateway.get_cluster(report.name).status.name == "STOPPED", what="the cluster to stop"
        )
    _wait_until(lambda: not _cluster_processes(gateway_server), what="the cluster processes to exit")


@pytest.mark.slow
def test_gateway_from_dask_config_is_shut_down_after_an_error(
    gateway_server: GatewayServer, settings_env: pytest.MonkeyPatch
) -> None:
    # The Pangeo/JupyterHub way: DASK_GATEWAY__ADDRESS, __PROXY_ADDRESS and __AUTH__* in the dask config.
    gateway_config = {
        "gateway.address": gateway_server.address,
        "gateway.proxy-address": gateway_server.proxy_address,
        "gateway.auth.type": "basic",
        "gateway.auth.kwargs": {"username": "tester", "password": GATEWAY_PASSWORD},
    }
    with dask.config.set(gateway_config), pytest.raises(RuntimeError, match="boom"):
        with open_cluster("gateway", config=DaskConfig(n_workers=1)) as client:
            assert client is not None
            name = client.cluster.name
            raise RuntimeError("boom")
    with _gateway(gateway_server) as gateway:
        assert gateway.list_clusters() == []
        _wait_until(lambda: gateway.get_cluster(name).status.name == "STOPPED", what="the cluster to stop")


@pytest.mark.slow
def test_gateway_rejections_raise_clear_errors(
    gateway_server: GatewayServer, settings_env: pytest.MonkeyPatch
) -> None:
    address = f"gateway://{gateway_server.hostport}"
    settings_env.setenv("LCSTACK_GATEWAY_PASSWORD", "wrong")
    get_settings.cache_clear()
    with pytest.raises(ClusterError, match="HTTP 401.*LCSTACK_GATEWAY_PASSWORD"):
        with open_cluster(address):
            pass
    settings_env.setenv("LCSTACK_GATEWAY_PASSWORD", GATEWAY_PASSWORD)
    get_settings.cache_clear()
    with pytest.raises(InvalidInputError, match=r"rejects worker_memory=14\.901 \(from dask.memory_limit"):
        with open_cluster(address, config=DaskConfig(memory_limit="16GB")):
            pass
    with _gateway(gateway_server) as gateway:
        assert gateway.list_clusters() == []
    with pytest.raises(ClusterError, match="cannot reach the Dask Gateway at gateway://127.0.0.1"):
        with open_cluster(f"gateway://127.0.0.1:{free_port()}"):
            pass
