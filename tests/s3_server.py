"""Real S3 endpoints on 127.0.0.1 for tests: moto's server, a flaky proxy and an always-403 server.

Usage from a pytest fixture::

    @pytest.fixture(scope="session")
    def s3():
        with s3_endpoint() as endpoint:
            yield endpoint

    def test_x(s3):
        bucket = s3.create_bucket()            # unique name, removed again by s3.cleanup()
        opts = s3.storage_options()            # fsspec options: endpoint, credentials, path style

When ``LCSTACK_TEST_S3_ENDPOINT`` is set (e.g. ``http://127.0.0.1:9000`` for a MinIO), that endpoint is
used instead and no moto server is started; ``LCSTACK_TEST_S3_KEY``, ``LCSTACK_TEST_S3_SECRET`` and
``LCSTACK_TEST_S3_REGION`` give its credentials and region.

:class:`FlakyProxy` forwards to an endpoint but fails its first requests (503, 500, SlowDown throttling
or a dropped connection); :class:`DenyServer` answers every request with 403 AccessDenied. Both are
real HTTP servers on 127.0.0.1, so the whole botocore / aiohttp stack runs.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

__all__ = ["DenyServer", "FlakyProxy", "S3Endpoint", "closed_port", "s3_endpoint", "unique_bucket"]

ENV_ENDPOINT = "LCSTACK_TEST_S3_ENDPOINT"


def closed_port() -> int:
    """A TCP port on 127.0.0.1 with nothing listening on it (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_bucket(prefix: str = "lcstack-test") -> str:
    """A bucket name no other test (or test run on a shared endpoint) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass
class S3Endpoint:
    """An S3-compatible endpoint and the credentials to use it."""

    url: str
    key: str = field(default="lcstack-test-key", repr=False)
    secret: str = field(default="lcstack-test-secret", repr=False)
    region: str = "us-east-1"
    buckets: list[str] = field(default_factory=list)
    _fs: Any = field(default=None, repr=False)

    def storage_options(self, **extra: Any) -> dict[str, Any]:
        """fsspec options for this endpoint (path-style addressing, as for MinIO); ``extra`` on top."""
        opts: dict[str, Any] = {
            "endpoint_url": self.url,
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"region_name": self.region},
            "config_kwargs": {"s3": {"addressing_style": "path"}},
        }
        opts.update(extra)
        return opts

    def env(self) -> dict[str, str]:
        """Environment variables that make :class:`lcstack.settings.Settings` point at this endpoint."""
        return {
            "LCSTACK_S3_ENDPOINT_URL": self.url,
            "LCSTACK_S3_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
        }

    def fs(self) -> Any:
        """An s3fs filesystem of its own on this endpoint, for test set-up and inspection.

        Its listings cache is cleared on every call, so it sees what other clients wrote.
        """
        import s3fs

        if self._fs is None:
            self._fs = s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options())
        self._fs.invalidate_cache()
        return self._fs

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a unique name by default); :meth:`cleanup` removes it."""
        name = name or unique_bucket()
        # create_bucket without LocationConstraint: what us-east-1, moto and MinIO all accept.
        self.fs().call_s3("create_bucket", Bucket=name)
        self.buckets.append(name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it."""
        fs = self.fs()
        with contextlib.suppress(FileNotFoundError):
            keys = fs.find(name)
            if keys:
                fs.rm(keys)
            fs.call_s3("delete_bucket", Bucket=name)

    def cleanup(self) -> None:
        """Delete the buckets made by :meth:`create_bucket`."""
        while self.buckets:
            self.delete_bucket(self.buckets.pop())


@contextlib.contextmanager
def s3_endpoint(*, process: bool = False) -> Iterator[S3Endpoint]:
    """The endpoint named by ``LCSTACK_TEST_S3_ENDPOINT``, or a moto server for the duration.

    ``process=True`` runs moto in a process of its own (``moto_server``) instead of a thread of this one:
    needed where GDAL reads from it while holding the GIL (a VRT on S3 opens its sources that way), which
    would otherwise wait forever on a server thread that cannot run.
    """
    external = os.environ.get(ENV_ENDPOINT)
    if external:
        endpoint = S3Endpoint(
            external.rstrip("/"),
            key=os.environ.get("LCSTACK_TEST_S3_KEY", "minioadmin"),
            secret=os.environ.get("LCSTACK_TEST_S3_SECRET", "minioadmin"),
            region=os.environ.get("LCSTACK_TEST_S3_REGION", "us-east-1"),
        )
        try:
            yield endpoint
        finally:
            endpoint.cleanup()
        return
    if process:
        with _moto_process() as url:
            yield S3Endpoint(
                url, key=f"moto-key-{uuid.uuid4().hex}", secret=f"moto-secret-{uuid.uuid4().hex}"
            )
        return
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Endpoint(
            f"http://{host}:{port}",
            key=f"moto-key-{uuid.uuid4().hex}",
            secret=f"moto-secret-{uuid.uuid4().hex}",
        )
    finally:
        server.stop()


class _Server:
    """A ThreadingHTTPServer on a free 127.0.0.1 port, run in a daemon thread; a context manager."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self.lock = threading.Lock()
        self.requests = 0

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> _Server:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the access log
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

    def _error(self, status: int, code: str, message: str) -> None:
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>lcstack-test</RequestId></Error>"
        ).encode()
        self._reply(status, body, {"Content-Type": "application/xml"})

    def _handle(self) -> None:
        raise NotImplementedError

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = lambda self: self._handle()  # noqa: E731


class _DenyHandler(_Handler):
    def _handle(self) -> None:
        owner = self.server.owner  # type: ignore[attr-defined]
        with owner.lock:
            owner.requests += 1
        self._read_body()
        self._error(403, "AccessDenied", "Access Denied")


class DenyServer(_Server):
    """An 'S3 endpoint' that answers every request with 403 AccessDenied (wrong credentials / policy)."""

    def __init__(self) -> None:
        super().__init__(_DenyHandler)


FailureMode = Literal["503", "500", "slowdown", "reset"]


class _ProxyHandler(_Handler):
    def _handle(self) -> None:
        owner: FlakyProxy = self.server.owner  # type: ignore[attr-defined]
        body = self._read_body()
        with owner.lock:
            owner.requests += 1
            owner.log.append(f"{self.command} {self.path}")
            fail = owner.failures_left > 0
            if fail:
                owner.failures_left -= 1
                owner.failed += 1
        if fail:
            if owner.mode == "reset":
                # RST instead of a response: what a load balancer dropping the connection looks like.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
                return
            if owner.mode == "slowdown":
                self._error(503, "SlowDown", "Please reduce your request rate.")
            elif owner.mode == "500":
                self._error(500, "InternalError", "We encountered an internal error. Please try again.")
            else:
                self._error(503, "ServiceUnavailable", "Service is unable to handle request.")
            return
        host, port = owner.target.split("://", 1)[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")
        }
        headers["Content-Length"] = str(len(body))
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = {
                k: v
                for k, v in resp.getheaders()
                if k.lower() not in ("transfer-encoding", "connection", "content-length")
            }
            self._reply(resp.status, data, out)
        finally:
            conn.close()


class FlakyProxy(_Server):
    """Forwards to ``target`` (``http://host:port``) after failing the first ``failures`` requests.

    Attributes ``requests`` (all requests seen) and ``failed`` (requests failed on purpose) let a test
    check that retries happened. ``failures`` can be reset between uses with :meth:`fail_next`.
    """

    def __init__(self, target: str, *, failures: int = 2, mode: FailureMode = "503") -> None:
        super().__init__(_ProxyHandler)
        self.target = target.rstrip("/")
        self.mode: FailureMode = mode
        self.failures_left = failures
        self.failed = 0
        self.log: list[str] = []

    def fail_next(self, failures: int, mode: FailureMode | None = None) -> None:
        """Fail the next ``failures`` requests (with ``mode``) and reset the counters."""
        with self.lock:
            self.failures_left = failures
            self.mode = mode or self.mode
            self.failed = 0
            self.requests = 0
            self.log = []


@contextlib.contextmanager
def _moto_process() -> Iterator[str]:
    """``moto_server`` on a free port of 127.0.0.1 in a child process; its URL until it is stopped."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    port = closed_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on port {port}") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
