"""Start and stop a real ``dask-gateway-server`` on 127.0.0.1 for tests.

Usage from a pytest fixture::

    @pytest.fixture(scope="module")
    def gateway(tmp_path_factory):
        with GatewayServer(tmp_path_factory.mktemp("gateway")) as server:
            yield server

The server runs as its own process group with a generated config file:

* ``UnsafeLocalBackend``: schedulers and workers are local processes of the current user
  (``dask scheduler`` / ``dask worker`` from this interpreter's ``bin``; distributed no longer ships the
  ``dask-scheduler`` script the backend would call by default);
* ``SimpleAuthenticator`` with a shared password (HTTP basic auth, any user name);
* one public port, ``c.Proxy.address``: the Go proxy serves the REST API (``http://``) *and* the TLS
  scheduler connections (``gateway://``) on it (``c.Proxy.tcp_address`` defaults to ``c.Proxy.address``);
  the private API server listens on another free port behind it (``c.DaskGateway.address``);
* in-memory database (a file database would need ``db_encrypt_keys``);
* cluster options ``worker_cores`` (int, 1..2) and ``worker_memory`` (GiB, float), the convention of
  Pangeo / daskhub deployments, and at most 2 workers per cluster.

``stop()`` sends SIGTERM to the whole process group (server, Go proxy, every scheduler and worker it
started), waits, then SIGKILLs what is left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["GatewayServer", "free_port"]

CONFIG_TEMPLATE = """\
from dask_gateway_server.options import Float, Integer, Options

c.DaskGateway.address = "127.0.0.1:{api_port}"
c.Proxy.address = "127.0.0.1:{proxy_port}"
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.SimpleAuthenticator.password = {password!r}
c.DaskGateway.log_level = "DEBUG"
c.UnsafeLocalBackend.clusters_directory = {clusters_dir!r}
c.UnsafeLocalBackend.db_url = "sqlite:///:memory:"
# Short periods so that stopped clusters and dead workers are noticed quickly in tests.
c.UnsafeLocalBackend.cluster_status_period = 0.5
c.UnsafeLocalBackend.worker_status_period = 0.5
c.UnsafeLocalBackend.sigint_timeout = 3
c.UnsafeLocalBackend.sigterm_timeout = 2
c.ClusterConfig.scheduler_cmd = [{dask!r}, "scheduler"]
c.ClusterConfig.worker_cmd = [{dask!r}, "worker"]
c.ClusterConfig.scheduler_memory = "512 M"
c.ClusterConfig.worker_cores = 1
c.ClusterConfig.worker_memory = "1 G"
c.ClusterConfig.cluster_max_workers = 2
c.ClusterConfig.idle_timeout = 300
c.ClusterConfig.environment = {{"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}


def _options_handler(options):
    return {{
        "worker_cores": options.worker_cores,
        "worker_memory": int(options.worker_memory * 2**30),
    }}


c.Backend.cluster_options = Options(
    Integer("worker_cores", default=1, min=1, max=2, label="Worker cores"),
    Float("worker_memory", default=1, min=0.25, max=2, label="Worker memory (GiB)"),
    handler=_options_handler,
)
"""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bin_dir() -> Path:
    # The venv's bin, without resolving the python symlink (that would leave the venv).
    return Path(sys.executable).parent


def gateway_executable() -> str | None:
    """Path of the ``dask-gateway-server`` console script, next to this interpreter first."""
    candidate = _bin_dir() / "dask-gateway-server"
    return str(candidate) if candidate.exists() else shutil.which("dask-gateway-server")


class GatewayServer:
    """A dask-gateway-server process group on 127.0.0.1 with its files in ``workdir``.

    Parameters
    ----------
    workdir
        Folder for the config file, the server log and the clusters' working directories; a temporary
        folder (removed on stop) when None.
    password
        The shared password of the ``SimpleAuthenticator``.
    startup_timeout
        Seconds to wait until ``/api/health`` answers through the proxy.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        password: str = "lcstack-test",
        startup_timeout: float = 30.0,
    ) -> None:
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="dask-gateway-") if workdir is None else workdir)
        self.password = password
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.api_port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def hostport(self) -> str:
        """``127.0.0.1:<proxy port>``: the one public port (REST API and scheduler proxy)."""
        if self.port is None:
            raise RuntimeError("the dask-gateway server is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """``http://127.0.0.1:<port>``, the ``address`` for ``dask_gateway.Gateway``."""
        return f"http://{self.hostport}"

    @property
    def proxy_address(self) -> str:
        """``gateway://127.0.0.1:<port>``, the ``proxy_address`` for ``dask_gateway.Gateway``."""
        return f"gateway://{self.hostport}"

    @property
    def log_path(self) -> Path:
        """The server's combined stdout/stderr."""
        return self.workdir / "gateway.log"

    def log_tail(self, n: int = 4000) -> str:
        """The last ``n`` characters of the server log."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def start(self) -> GatewayServer:
        """Write the config, start the server and wait until it answers through the proxy."""
        exe = gateway_executable()
        if exe is None:
            raise RuntimeError("dask-gateway-server is not installed; pip install 'lcstack[dev]'")
        dask = _bin_dir() / "dask"
        if not dask.exists():
            raise RuntimeError(f"{dask} not found; distributed must be installed in the test environment")
        self.workdir.mkdir(parents=True, exist_ok=True)
        clusters_dir = self.workdir / "clusters"
        clusters_dir.mkdir(exist_ok=True)
        self.port, self.api_port = free_port(), free_port()
        config = self.workdir / "dask_gateway_config.py"
        config.write_text(
            CONFIG_TEMPLATE.format(
                api_port=self.api_port,
                proxy_port=self.port,
                password=self.password,
                clusters_dir=str(clusters_dir),
                dask=str(dask),
            )
        )
        env = dict(os.environ)
        env["PATH"] = f"{_bin_dir()}{os.pathsep}{env.get('PATH', '')}"
        # The proxy token is generated when unset; never inherit one from the caller's environment.
        env.pop("DASK_GATEWAY_PROXY_TOKEN", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed right after Popen, the child keeps it
        try:
            self.process = subprocess.Popen(
                [exe, "--config", str(config)],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stop() reaches schedulers and workers too
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.address}/api/health", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except (OSError, urllib.error.URLError) as exc:  # not up yet
                last_error = exc
            time.sleep(0.2)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"dask-gateway-server did not answer on {self.address}: {last_error!r}\n{tail}")

    def stop(self) -> None:
        """Terminate the process group (SIGKILL after 10 s) and remove a temporary folder."""
        proc = self.process
        if proc is not None:
            pgid = proc.pid  # start_new_session: the group id is the server's pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            # Schedulers/workers still shutting down after the server exited, or a hung server.
            deadline = time.monotonic() + 5
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(timeout=5)
        self.process = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
