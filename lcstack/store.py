"""Storage of composites, datasets, models and maps: a local folder or any fsspec URL (``s3://``...).

The layout follows LandCoverPy's buckets: ``composites``, ``datasets``, ``models`` and
``classification-maps`` under one root, or one URL per kind (``layout``), e.g. a bucket per kind.
Local writes are atomic (written under a temporary name, then renamed). Object stores have no rename
for folders, so a Zarr store there counts as complete only once the registry records it.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import time
import uuid
from collections.abc import Mapping
from typing import Any

import fsspec
import xarray as xr
from fsspec.core import url_to_fs

from .errors import InvalidInputError, StorageError
from .progress import compute

__all__ = ["KINDS", "Storage", "redact"]

logger = logging.getLogger(__name__)

KINDS = ("composites", "datasets", "models", "classification-maps")


def redact(url: str) -> str:
    """``url`` with any ``user:password@`` part removed, for logs and messages."""
    if "://" in url and "@" in url.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = url.split("://", 1)
        host = rest.split("@", 1)[1]
        return f"{scheme}://***@{host}"
    return url


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _strip_file(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


class Storage:
    """Where lcstack keeps its outputs.

    Parameters
    ----------
    url
        Root folder or fsspec URL (``s3://bucket/prefix``).
    storage_options
        fsspec options (``endpoint_url``, ``key``, ...) for remote URLs.
    layout
        Optional URL per kind (keys from :data:`KINDS`), overriding ``<url>/<kind>``; relative values
        are taken under ``url``.
    """

    def __init__(
        self,
        url: str | os.PathLike,
        *,
        storage_options: Mapping[str, Any] | None = None,
        layout: Mapping[str, str] | None = None,
    ) -> None:
        self.root = str(url).rstrip("/")
        self.storage_options = dict(storage_options or {})
        unknown = set(layout or {}) - set(KINDS)
        if unknown:
            raise InvalidInputError(
                f"layout: unknown kind(s) {sorted(unknown)}; the kinds are {', '.join(KINDS)}."
            )
        self.layout = {k: self._join(self.root, k) for k in KINDS}
        for kind, where in (layout or {}).items():
            self.layout[kind] = where.rstrip("/") if "://" in where or os.path.isabs(where) else self._join(
                self.root, where
            )

    def __repr__(self) -> str:
        return f"Storage({redact(self.root)!r})"

    @staticmethod
    def _join(base: str, *parts: str) -> str:
        if _is_local(base):
            return os.path.join(_strip_file(base), *parts)
        return posixpath.join(base, *parts)

    # ------------------------------------------------------------------ paths
    def url(self, kind: str, *parts: str) -> str:
        """The URL of ``parts`` under the folder of ``kind``."""
        if kind not in self.layout:
            raise InvalidInputError(f"unknown storage kind {kind!r}; use one of {', '.join(KINDS)}.")
        return self._join(self.layout[kind], *parts)

    def fs(self, url: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """The filesystem and path of ``url``."""
        opts = {} if _is_local(url) else self.storage_options
        return url_to_fs(_strip_file(url), **opts)

    def exists(self, url: str) -> bool:
        """Whether something is stored at ``url``."""
        fs, path = self.fs(url)
        return bool(fs.exists(path))

    def modified(self, url: str) -> float | None:
        """Modification time (POSIX seconds) of the object at ``url`` (for a Zarr store: its metadata)."""
        fs, path = self.fs(url)
        for candidate in (posixpath.join(path, ".zmetadata"), posixpath.join(path, "zarr.json"), path):
            try:
                info = fs.info(candidate)
            except FileNotFoundError:
                continue
            m = info.get("mtime") or info.get("LastModified") or info.get("created")
            if hasattr(m, "timestamp"):
                return float(m.timestamp())
            return float(m) if m is not None else None
        return None

    def remove(self, url: str) -> bool:
        """Remove ``url`` (recursively); False when nothing was there."""
        fs, path = self.fs(url)
        if not fs.exists(path):
            return False
        fs.rm(path, recursive=True)
        return True

    # ------------------------------------------------------------------ bytes
    def write_bytes(self, url: str, data: bytes) -> None:
        """Write ``data`` to ``url`` atomically (temp + rename locally; one PUT on object stores)."""
        if _is_local(url):
            path = _strip_file(url)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
            return
        fs, path = self.fs(url)
        _retry(lambda: fs.pipe_file(path, data), what=f"write {redact(url)}")

    def read_bytes(self, url: str) -> bytes:
        """Read the object at ``url``."""
        fs, path = self.fs(url)
        return bytes(_retry(lambda: fs.cat_file(path), what=f"read {redact(url)}"))

    def put_file(self, local_path: str | os.PathLike, url: str) -> None:
        """Copy a finished local file to ``url`` atomically."""
        if _is_local(url):
            path = _strip_file(url)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, path)
            return
        fs, path = self.fs(url)
        _retry(lambda: fs.put_file(str(local_path), path), what=f"upload {redact(url)}")

    # ------------------------------------------------------------------ zarr
    def write_zarr(self, ds: xr.Dataset, url: str, *, progress: bool = True, desc: str | None = None) -> None:
        """Write ``ds`` as a Zarr store at ``url``, computing it chunk by chunk.

        Locally the store is written under a temporary name and renamed into place, so a crash never
        leaves a store that looks finished. On object stores a previous store is replaced; the caller
        records completion in the registry afterwards.
        """
        ds = ds.copy()
        for v in ds.variables.values():
            v.encoding = {k: val for k, val in v.encoding.items() if k in ("dtype", "_FillValue", "scale_factor")}
        if _is_local(url):
            final = _strip_file(url)
            os.makedirs(os.path.dirname(final) or ".", exist_ok=True)
            target = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        else:
            final = target = url
            self.remove(url)
        delayed = ds.to_zarr(
            target,
            mode="w",
            compute=False,
            consolidated=True,
            zarr_format=2,
            storage_options=None if _is_local(url) else self.storage_options,
        )
        try:
            compute(delayed, desc=desc or f"writing {posixpath.basename(final)}", progress=progress)
        except BaseException:
            if _is_local(url):
                shutil.rmtree(target, ignore_errors=True)
            raise
        if _is_local(url):
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(target, final)
        logger.info("wrote %s", redact(url))

    def open_zarr(self, url: str, *, chunks: Any = None) -> xr.Dataset:
        """Open the Zarr store at ``url`` lazily."""
        if not self.exists(url):
            raise StorageError(f"no Zarr store at {redact(url)}; run the step that writes it first.")
        return xr.open_zarr(
            _strip_file(url),
            chunks=chunks if chunks is not None else {},
            consolidated=True,
            storage_options=None if _is_local(url) else self.storage_options,
        )


def _retry(fn: Any, *, what: str, attempts: int = 4, base_delay: float = 0.5) -> Any:
    """Call ``fn`` and retry transient errors (timeouts, throttling, 5xx) with exponential backoff."""
    for i in range(attempts):
        try:
            return fn()
        except (FileNotFoundError, PermissionError):
            raise
        except OSError as err:
            if i == attempts - 1:
                raise StorageError(f"could not {what} after {attempts} attempts: {err}") from err
            delay = base_delay * 2**i
            logger.warning("%s failed (%s); retrying in %.1f s", what, err, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
