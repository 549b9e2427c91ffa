"""Run ``rustac serve`` on 127.0.0.1 for tests (no pytest dependency).

Usage::

    with RustacServer(items, collections) as url:
        client = pystac_client.Client.open(url)

Items and collections are STAC dicts (or pystac objects). Asset hrefs are rewritten to absolute ``file://``
URLs; relative hrefs are resolved against the item's self link or ``base_dir``. Links are dropped: the
server writes its own.

Known behaviour of rustac 0.2 (memory backend): it applies ``collections``, ``bbox``, ``datetime``, ``ids``
and ``limit`` (with ``next`` links for paging), ignores ``sortby`` and answers **no items** to a search with
``query`` or ``filter`` (it does not declare those conformance classes).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urljoin, urlparse

__all__ = ["RustacServer", "find_rustac", "free_port"]


def find_rustac() -> str:
    """Return the path of the ``rustac`` executable (next to the running Python first)."""
    candidate = Path(sys.executable).parent / "rustac"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("rustac")
    if found is None:
        raise FileNotFoundError("rustac is not installed; install it with: pip install rustac")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _to_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return json.loads(json.dumps(obj))  # deep copy
    to_dict = getattr(obj, "to_dict", None)
    if to_dict is None:
        raise TypeError(f"expected a STAC dict or pystac object, got {type(obj).__name__}")
    self_href = obj.get_self_href() if hasattr(obj, "get_self_href") else None
    data = to_dict(include_self_link=False, transform_hrefs=False)
    if self_href:
        data.setdefault("links", []).append({"rel": "self", "href": self_href})
    return data


def _file_url(href: str, base: str | None) -> str:
    parsed = urlparse(href)
    if parsed.scheme and len(parsed.scheme) > 1:  # a URL already (and not a Windows drive letter)
        return href
    if not os.path.isabs(href):
        if base is None:
            raise ValueError(
                f"relative asset href {href!r} and no self link or base_dir to resolve it against"
            )
        base_path = urlparse(base).path if base.startswith("file://") else base
        href = os.path.normpath(os.path.join(os.path.dirname(base_path), href))
    return Path(href).absolute().as_uri()


class RustacServer:
    """A ``rustac serve`` process holding the given collections and items in memory.

    Parameters
    ----------
    items
        STAC item dicts or ``pystac.Item`` objects; each names its collection.
    collections
        STAC collection dicts or ``pystac.Collection`` objects.
    base_dir
        Folder (or a file inside it) against which relative asset hrefs are resolved when an item has no
        self link.
    host
        Address to listen on.
    timeout
        Seconds to wait for the server to answer.
    """

    def __init__(
        self,
        items: Iterable[Any],
        collections: Iterable[Any],
        *,
        base_dir: str | Path | None = None,
        host: str = "127.0.0.1",
        timeout: float = 20.0,
    ) -> None:
        self.items = [_to_dict(i) for i in items]
        self.collections = [_to_dict(c) for c in collections]
        self.base_dir = base_dir
        self.host = host
        self.timeout = timeout
        self.url: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log: Any = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> str:
        """Write the data, start the server, wait until ``/`` answers and return its URL."""
        if self._process is not None:
            raise RuntimeError("server already started")
        self._tmp = tempfile.TemporaryDirectory(prefix="lcstack-rustac-")
        folder = Path(self._tmp.name)
        hrefs = self._write(folder)
        port = free_port(self.host)
        self.url = f"http://{self.host}:{port}"
        self._log = open(folder / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            [find_rustac(), "serve", "--addr", f"{self.host}:{port}", *hrefs],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        """Terminate the server (kill it after 5 s) and remove its files."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------------------

    def _write(self, folder: Path) -> list[str]:
        hrefs: list[str] = []
        for number, collection in enumerate(self.collections):
            collection["links"] = []
            path = folder / f"collection-{number}.json"
            path.write_text(json.dumps(collection))
            hrefs.append(str(path))
        if self.items:
            base = str(self.base_dir) if self.base_dir is not None else None
            path = folder / "items.ndjson"
            with path.open("w") as handle:
                for item in self.items:
                    self_href = next(
                        (ln["href"] for ln in item.get("links", []) if ln.get("rel") == "self"), None
                    )
                    item_base = self_href or (
                        os.path.join(base, "_") if base is not None and Path(base).is_dir() else base
                    )
                    for asset in item.get("assets", {}).values():
                        asset["href"] = _file_url(asset["href"], item_base)
                    item["links"] = []
                    handle.write(json.dumps(item) + "\n")
            hrefs.append(str(path))
        return hrefs

    def _wait_until_up(self) -> None:
        assert self._process is not None and self.url is not None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"rustac serve exited with {self._process.returncode}: {self._read_log()}")
            try:
                with urllib.request.urlopen(urljoin(self.url, "/"), timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        raise TimeoutError(
            f"rustac serve did not answer at {self.url} within {self.timeout} s: {self._read_log()}"
        )

    def _read_log(self) -> str:
        if self._tmp is None:
            return ""
        path = Path(self._tmp.name) / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""
