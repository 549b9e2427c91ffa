"""Start and stop a throw-away MongoDB wire-protocol server (nx-27017) for tests.

Usage from a pytest fixture::

    @pytest.fixture(scope="module")
    def mongo_uri(tmp_path_factory):
        with NxMongoServer(tmp_path_factory.mktemp("nx")) as server:
            yield server.uri

The server binds 127.0.0.1 on a free port, keeps its SQLite file, log file and pid
file inside the given folder (the nx-27017 defaults live in /tmp and would clash
between concurrent test runs), and is terminated on exit.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["NxMongoServer", "free_port", "nx_executable"]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nx_executable() -> str | None:
    """Path of the ``nx-27017`` console script, next to this interpreter first."""
    candidate = Path(sys.executable).with_name("nx-27017")
    if candidate.exists():
        return str(candidate)
    return shutil.which("nx-27017")


class NxMongoServer:
    """An nx-27017 server process on 127.0.0.1 with its database in ``workdir``.

    Parameters
    ----------
    workdir
        Folder for the database, log and pid files; a temporary folder (removed on
        stop) when None.
    startup_timeout
        Seconds to wait until ``ping`` answers.
    """

    def __init__(
        self, workdir: str | os.PathLike[str] | None = None, *, startup_timeout: float = 20.0
    ) -> None:
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="nx27017-") if workdir is None else workdir)
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """``mongodb://127.0.0.1:<port>/`` of the running server."""
        if self.port is None:
            raise RuntimeError("the nx-27017 server is not started")
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self) -> NxMongoServer:
        """Start the server and wait until pymongo's ``ping`` succeeds."""
        import pymongo

        exe = nx_executable()
        if exe is None:
            raise RuntimeError("nx-27017 is not installed; pip install 'lcstack[dev]'")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = open(self.workdir / "server.out", "ab")  # noqa: SIM115 - closed with the process
        cmd = [
            exe,
            "--host", "127.0.0.1",
            "-p", str(self.port),
            "--db", str(self.workdir / "nx.db"),
            "--log-file", str(self.workdir / "nx.log"),
            "--pid-file", str(self.workdir / "nx.pid"),
        ]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            client: pymongo.MongoClient | None = None
            try:
                client = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500)
                client.admin.command("ping")
                return self
            except Exception as exc:  # not up yet
                last_error = exc
                time.sleep(0.1)
            finally:
                if client is not None:
                    client.close()
        output = (self.workdir / "server.out").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"nx-27017 did not answer ping on {self.uri}: {last_error!r}\n{output}")

    def stop(self) -> None:
        """Terminate the server (kill after 5 s) and remove a temporary folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> NxMongoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
