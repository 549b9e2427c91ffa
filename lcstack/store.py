"""Storage of composites, datasets, models and maps: a local folder or any fsspec URL (``s3://``...).

The layout follows LandCoverPy's buckets: ``composites``, ``datasets``, ``models`` and
``classification-maps`` under one root, or one URL per kind (``layout``), e.g. a bucket per kind.

Local writes are atomic (written under a temporary name, then renamed). On S3 every object is written
by one PUT (or one completed multipart upload), so readers see the old object or the new one, never a
part. Object stores have no rename for folders, so a Zarr store there counts as complete only once the
registry records it; a rewrite removes the old store first so that stale chunks of an interrupted
earlier write cannot mix with the new ones.

Transient S3 failures (throttling, 5xx, connection resets and refusals, timeouts) are retried by
botocore's ``standard`` retry mode with exponential backoff and jitter, configured here once for every
S3 access that goes through :attr:`Storage.storage_options`, Zarr chunk I/O included. Errors that
remain are raised as :class:`~lcstack.errors.StorageError` naming the endpoint and bucket, never the
credentials.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import posixpath
import re
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any, BinaryIO, TypeVar

import fsspec
import xarray as xr
from fsspec.core import url_to_fs

from .errors import InvalidInputError, LcstackError, StorageError
from .progress import compute

__all__ = ["KINDS", "Storage", "redact"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

KINDS = ("composites", "datasets", "models", "classification-maps")

#: botocore retry policy for S3 unless ``storage_options["config_kwargs"]["retries"]`` says otherwise.
#: "standard" retries throttling codes (SlowDown...), 500/502/503/504, RequestTimeout and connection
#: errors (refused, reset, timeouts) with exponential backoff: ``random() * 2**n`` seconds before retry
#: ``n`` (0-based), at most 20 s. ``max_attempts`` counts retries, so 6 means up to 7 requests.
DEFAULT_S3_RETRIES: dict[str, Any] = {"mode": "standard", "max_attempts": 6}
#: Pre-flight should fail in seconds, not minutes: one retry and a short connect timeout.
_PREFLIGHT_RETRIES: dict[str, Any] = {"mode": "standard", "max_attempts": 1}
_PREFLIGHT_CONNECT_TIMEOUT = 5

_SECRET_OPTION_NAMES = frozenset(
    {"key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key", "aws_session_token"}
)
# ``user@`` or ``user:password@`` (AWS secrets may contain an unescaped "/").
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?:[^/\s@:]*:[^\s@]*|[^/\s@]+)@")
_SECRET_QUERY = re.compile(
    r"(?P<name>[?&](?:x-amz-(?:signature|credential|security-token)|signature|sig|token|access_token|secret"
    r"|password|awsaccesskeyid|key)=)[^&\s]+",
    re.IGNORECASE,
)
# Class names (anywhere in an exception's cause chain) that mean "the endpoint could not be reached".
_CONNECTION_ERRORS = frozenset(
    {
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ClientConnectorError",
        "ServerDisconnectedError",
        "ConnectionRefusedError",
        "ConnectionResetError",
        "TimeoutError",
    }
)


def redact(url: str) -> str:
    """``url`` (or any text with URLs in it) without ``user:password@`` parts and secret query values."""
    return _SECRET_QUERY.sub(r"\g<name>***", _USERINFO.sub(r"\g<scheme>***@", str(url)))


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _is_s3(url: str) -> bool:
    return url.startswith(("s3://", "s3a://"))


def _strip_file(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def _secret_values(options: Mapping[str, Any]) -> set[str]:
    """Every credential string in fsspec ``options`` (nested ``client_kwargs`` included)."""
    out: set[str] = set()
    for name, value in options.items():
        if isinstance(value, Mapping):
            out |= _secret_values(value)
        elif name in _SECRET_OPTION_NAMES and isinstance(value, str) and value:
            out.add(value)
    return out


def _with_s3_defaults(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` plus lcstack's retry policy, leaving anything the caller set untouched."""
    opts = dict(options)
    config = dict(opts.get("config_kwargs") or {})
    config.setdefault("retries", dict(DEFAULT_S3_RETRIES))
    opts["config_kwargs"] = config
    return opts


def _cause_chain(err: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    cur: BaseException | None = err
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    return chain


def _error_code(err: BaseException) -> str | None:
    """Return the S3 error code (``AccessDenied``, ``NoSuchBucket``, ``503``...) behind ``err``."""
    for e in _cause_chain(err):
        response = getattr(e, "response", None)
        if isinstance(response, Mapping):
            code = (response.get("Error") or {}).get("Code")
            if code:
                return str(code)
    return None


def _is_connection_error(err: BaseException) -> bool:
    return any(type(e).__name__ in _CONNECTION_ERRORS for e in _cause_chain(err))


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Exception types an fsspec call can raise for storage trouble (botocore's are not OSErrors)."""
    types: list[type[BaseException]] = [OSError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        types += [BotoCoreError, ClientError]
    except ImportError:  # pragma: no cover - only without s3fs
        pass
    return tuple(types)


@contextmanager
def _local_atomic(path: str) -> Iterator[str]:
    """Yield a temporary name next to ``path``; rename it into place when the block succeeds.

    The one atomic write of a local file: readers see the old file or the new one, never a part. The
    ``.tmp-`` names are what :meth:`lcstack.pipeline.Workflow.clean` recognises as leftovers.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class Storage:
    """Where lcstack keeps its outputs.

    Parameters
    ----------
    url
        Root folder or fsspec URL (``s3://bucket/prefix``).
    storage_options
        fsspec options (``endpoint_url``, ``key``, ``secret``, ``client_kwargs``, ``config_kwargs``...)
        for remote URLs, e.g. from :meth:`lcstack.settings.Settings.storage_options`. For S3, lcstack
        adds its retry policy (:data:`DEFAULT_S3_RETRIES`) unless ``config_kwargs["retries"]`` is given.
    layout
        Optional URL per kind (keys from :data:`KINDS`), overriding ``<url>/<kind>``; relative values
        are taken under ``url``. ``{"composites": "s3://composites", "models": "s3://models"}`` gives a
        bucket per kind.

    """

    def __init__(
        self,
        url: str | os.PathLike,
        *,
        storage_options: Mapping[str, Any] | None = None,
        layout: Mapping[str, str] | None = None,
    ) -> None:
        self.root = str(url).rstrip("/")
        unknown = set(layout or {}) - set(KINDS)
        if unknown:
            raise InvalidInputError(
                f"layout: unknown kind(s) {sorted(unknown)}; the kinds are {', '.join(KINDS)}."
            )
        self.layout = {k: self._join(self.root, k) for k in KINDS}
        for kind, where in (layout or {}).items():
            where = str(where)
            self.layout[kind] = (
                where.rstrip("/") if "://" in where or os.path.isabs(where) else self._join(self.root, where)
            )
        opts = dict(storage_options or {})
        if any(_is_s3(u) for u in (self.root, *self.layout.values())):
            opts = _with_s3_defaults(opts)
        self.storage_options = opts
        self._secrets = _secret_values(opts)

    def __repr__(self) -> str:
        return f"Storage({redact(self.root)!r})"

    @classmethod
    def for_url(cls, url: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> Storage:
        """Return a storage for one URL outside the run's layout (a model given by URL, a static catalog).

        ``storage_options`` reach remote URLs only (S3 options must not reach a local path).
        """
        return cls(os.fspath(url), storage_options=storage_options)

    @staticmethod
    def join(base: str, *parts: str) -> str:
        """Join ``parts`` to ``base``: with the OS separator locally, with ``/`` on object stores."""
        if _is_local(base):
            return os.path.join(_strip_file(base), *parts)
        return posixpath.join(base, *parts)

    _join = join

    # ------------------------------------------------------------------ paths
    def url(self, kind: str, *parts: str) -> str:
        """Return the URL of ``parts`` under the folder of ``kind``."""
        if kind not in self.layout:
            raise InvalidInputError(f"unknown storage kind {kind!r}; use one of {', '.join(KINDS)}.")
        return self._join(self.layout[kind], *parts)

    def fs(self, url: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """Return the filesystem and path of ``url``."""
        opts = {} if _is_local(url) else self.storage_options
        return url_to_fs(_strip_file(url), **opts)

    def exists(self, url: str) -> bool:
        """Whether something is stored at ``url``."""
        fs, path = self.fs(url)

        def _exists() -> bool:
            # Another process (a Dask worker, a second run) may have written since we listed.
            fs.invalidate_cache(path)
            return bool(fs.exists(path))

        return self._call(_exists, "check", url)

    def modified(self, url: str) -> float | None:
        """Modification time (POSIX seconds) of the object at ``url`` (for a Zarr store: its metadata).

        Reading never changes it; only a rewrite does. ``None`` when nothing is stored there.
        """
        fs, path = self.fs(url)

        def _modified() -> float | None:
            for candidate in (posixpath.join(path, ".zmetadata"), posixpath.join(path, "zarr.json"), path):
                fs.invalidate_cache(candidate)
                try:
                    info = fs.info(candidate)
                except FileNotFoundError:
                    continue
                m = info.get("mtime") or info.get("LastModified") or info.get("created")
                if m is None:
                    continue
                return float(m.timestamp()) if hasattr(m, "timestamp") else float(m)
            return None

        return self._call(_modified, "stat", url)

    def remove(self, url: str) -> bool:
        """Remove ``url`` (recursively); False when nothing was there."""
        fs, path = self.fs(url)

        def _remove() -> bool:
            fs.invalidate_cache(path)
            if not fs.exists(path):
                return False
            fs.rm(path, recursive=True)
            fs.invalidate_cache(path)
            return True

        return self._call(_remove, "remove", url)

    # ------------------------------------------------------------------ bytes
    def write_bytes(self, url: str, data: bytes) -> None:
        """Write ``data`` to ``url`` atomically (temp + rename locally; one PUT on object stores)."""
        if _is_local(url):
            with _local_atomic(_strip_file(url)) as tmp:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            return
        fs, path = self.fs(url)
        self._call(lambda: fs.pipe_file(path, data), "write", url)

    def read_bytes(self, url: str) -> bytes:
        """Read the object at ``url``; ``FileNotFoundError`` when there is none."""
        fs, path = self.fs(url)
        return bytes(self._call(lambda: fs.cat_file(path), "read", url))

    def put_file(self, local_path: str | os.PathLike, url: str) -> None:
        """Copy a finished local file to ``url`` atomically (one PUT or one completed multipart upload)."""
        if _is_local(url):
            with _local_atomic(_strip_file(url)) as tmp:
                shutil.copyfile(local_path, tmp)
            return
        fs, path = self.fs(url)
        self._call(lambda: fs.put_file(str(local_path), path), "upload", url)

    @contextmanager
    def open_output(self, url: str, *, suffix: str = "") -> Iterator[str]:
        """Yield a local scratch path; once the block ends without error its file lands at ``url``.

        For files that a library must write itself (GDAL, rio-cogeo): the file is written in a private
        temporary folder (which the caller may use for further scratch files) and then stored by
        :meth:`put_file`, so ``url`` shows the old object or the whole new one, never a part. The scratch
        folder is removed in every case.
        """
        workdir = tempfile.mkdtemp(prefix="lcstack-out-")
        try:
            scratch = os.path.join(workdir, f"output{suffix}")
            yield scratch
            self.put_file(scratch, url)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    @contextmanager
    def open_input(self, url: str) -> Iterator[BinaryIO]:
        """Open the object at ``url`` for reading (binary, streamed); ``FileNotFoundError`` when absent."""
        fs, path = self.fs(url)
        handle = self._call(lambda: fs.open(path, "rb"), "read", url)
        with handle:
            yield handle

    def info(self, url: str) -> dict[str, Any]:
        """Return fsspec's fresh ``info`` of ``url`` (size, ETag, mtime); ``FileNotFoundError`` if absent."""
        fs, path = self.fs(url)

        def _info() -> dict[str, Any]:
            fs.invalidate_cache(path)
            return dict(fs.info(path))

        return self._call(_info, "stat", url)

    def listing(self, url: str) -> list[dict[str, Any]]:
        """Return fsspec's detailed listing of the folder ``url``.

        ``FileNotFoundError`` or ``NotImplementedError`` (filesystems that cannot list) pass through.
        """
        fs, path = self.fs(url)

        def _ls() -> list[dict[str, Any]]:
            fs.invalidate_cache(path)
            return list(fs.ls(path, detail=True))

        return self._call(_ls, "list", url)

    # ------------------------------------------------------------------ zarr
    def write_zarr(
        self,
        ds: xr.Dataset,
        url: str,
        *,
        progress: bool = True,
        desc: str | None = None,
        zarr_format: int | None = 2,
    ) -> None:
        """Write ``ds`` as a Zarr store at ``url``, computing it chunk by chunk.

        Locally the store is written under a temporary name and renamed into place, so a crash never
        leaves a store that looks finished. On object stores any previous store at ``url`` is removed
        first (an interrupted earlier write must not leave stale chunks among the new ones, which
        Zarr would read where the new data skips empty chunks); the caller records completion in the
        registry afterwards. ``zarr_format`` ``None`` takes the zarr library's default.
        """
        ds = ds.copy()
        for v in ds.variables.values():
            v.encoding = {
                k: val for k, val in v.encoding.items() if k in ("dtype", "_FillValue", "scale_factor")
            }
        local = _is_local(url)
        if local:
            final = _strip_file(url)
            os.makedirs(os.path.dirname(final) or ".", exist_ok=True)
            # leftovers of a write that was killed (SIGKILL skips the clean-up below)
            for stale in glob.glob(f"{glob.escape(final)}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            target = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        else:
            final = target = url
            self.remove(url)

        def _write() -> None:
            with contextlib.ExitStack() as quiet:
                if zarr_format != 2:
                    # zarr-python warns that consolidated metadata is not (yet) part of the Zarr v3 spec.
                    quiet.enter_context(warnings.catch_warnings())
                    warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
                delayed = ds.to_zarr(
                    target,
                    mode="w",
                    compute=False,
                    consolidated=True,
                    zarr_format=zarr_format,
                    storage_options=None if local else self.storage_options,
                )
                compute(delayed, desc=desc or f"writing {posixpath.basename(final)}", progress=progress)

        try:
            if local:
                _write()
            else:
                self._call(_write, "write the Zarr store", url)
        except BaseException:
            if local:
                shutil.rmtree(target, ignore_errors=True)
            raise
        if local:
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(target, final)
        logger.info("wrote %s", redact(url))

    def open_zarr(self, url: str, *, chunks: Any = None, dask: bool = True) -> xr.Dataset:
        """Open the Zarr store at ``url`` lazily.

        Dask-backed (``chunks``, by default the stored ones), or with ``dask=False`` as lazily indexed
        arrays that read only the window asked for.
        """
        if not self.exists(url):
            raise StorageError(f"no Zarr store at {redact(url)}; run the step that writes it first.")
        return self._call(
            lambda: xr.open_zarr(
                _strip_file(url),
                chunks=(chunks if chunks is not None else {}) if dask else None,
                consolidated=True,
                storage_options=None if _is_local(url) else self.storage_options,
            ),
            "open the Zarr store",
            url,
        )

    # ------------------------------------------------------------------ pre-flight
    def check(self, kinds: Iterable[str] | None = None, *, write: bool = True) -> None:
        """Check, before any work, that the storage of ``kinds`` (default: all) can be used.

        For S3 each distinct bucket/prefix is listed (endpoint reachable, bucket present, read access)
        and, with ``write``, a tiny probe object is written and deleted (write access). Local folders
        must be creatable and writable. Fails in seconds: fewer retries than ordinary calls.

        Raises
        ------
        StorageError
            Naming the endpoint and bucket (never the credentials) and what to check.

        """
        roots: dict[str, list[str]] = {}
        for kind in KINDS if kinds is None else kinds:
            if kind not in self.layout:
                raise InvalidInputError(f"unknown storage kind {kind!r}; use one of {', '.join(KINDS)}.")
            roots.setdefault(self.layout[kind], []).append(kind)
        probe_fs: Any = None
        for root, root_kinds in roots.items():
            if _is_local(root):
                self._check_local(_strip_file(root), root_kinds)
            elif _is_s3(root):
                probe_fs = probe_fs or self._preflight_fs(root)
                self._check_s3(probe_fs, root, root_kinds, write=write)
            else:
                fs, path = self.fs(root)
                self._call(partial(fs.exists, path), f"check {', '.join(root_kinds)} storage at", root)

    def _check_local(self, path: str, kinds: list[str]) -> None:
        what = "storage" if set(kinds) == set(KINDS) else f"storage for {', '.join(kinds)}"
        existing = os.path.abspath(path)
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            where = (
                "is a file"
                if existing == os.path.abspath(path)
                else f"lies under {existing!r}, which is a file"
            )
            raise StorageError(
                f"{what} folder {path!r} cannot be used: it {where}, not a folder. Point `storage:` (or "
                "`layout`) at a folder, or move the file away."
            )
        # os.access also honours read-only mounts and immutable folders (chattr +i), even for root.
        if not os.access(existing, os.W_OK | os.X_OK):
            raise StorageError(
                f"{what} folder {path!r} is not writable ({existing!r} denies write access: its permissions, "
                "a read-only mount or an immutable flag); fix that or point `storage:` / `layout` elsewhere."
            )

    def create_root(self) -> None:
        """Create the local root folder, after checking it can be (not a file, writable).

        Nothing to do for an object store root. Raises :class:`~lcstack.errors.StorageError` naming the
        path and what to change, never a bare ``OSError``.
        """
        if not _is_local(self.root):
            return
        path = _strip_file(self.root)
        self._check_local(path, list(KINDS))
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as err:
            raise StorageError(
                f"storage folder {path!r} could not be created ({err.strerror or err}); "
                "point `storage:` at a writable folder."
            ) from None

    def _preflight_fs(self, url: str) -> fsspec.AbstractFileSystem:
        """Return an uncached S3 filesystem like :meth:`fs`'s but with few retries, to fail fast."""
        opts = dict(self.storage_options)
        config = dict(opts.get("config_kwargs") or {})
        config["retries"] = dict(_PREFLIGHT_RETRIES)
        config["connect_timeout"] = min(config.get("connect_timeout", 5), _PREFLIGHT_CONNECT_TIMEOUT)
        opts["config_kwargs"] = config
        return url_to_fs(url, skip_instance_cache=True, **opts)[0]

    def _check_s3(self, fs: Any, root: str, kinds: list[str], *, write: bool) -> None:
        path = fs._strip_protocol(root)
        bucket, _, prefix = path.partition("/")
        prefix = prefix.strip("/")
        what = f"check {', '.join(kinds)} storage at"
        self._call(
            lambda: fs.call_s3(
                "list_objects_v2", Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1
            ),
            what,
            root,
        )
        if write:
            probe = posixpath.join(bucket, prefix, f".lcstack-preflight-{uuid.uuid4().hex}")
            self._call(
                lambda: fs.pipe_file(probe, b""), f"write a probe object for {', '.join(kinds)} to", root
            )
            try:
                fs.rm_file(probe)
            except Exception as err:  # noqa: BLE001 - a leftover empty probe object is harmless
                logger.warning(
                    "could not delete the pre-flight probe object s3://%s (%s); deleting old stores will "
                    "fail too unless the credentials allow s3:DeleteObject",
                    probe,
                    self._scrub(type(err).__name__),
                )
        logger.debug("storage %s: ok", redact(root))

    # ------------------------------------------------------------------ errors
    def _endpoint(self) -> str:
        opts = self.storage_options
        endpoint = opts.get("endpoint_url") or (opts.get("client_kwargs") or {}).get("endpoint_url")
        if endpoint:
            return redact(str(endpoint))
        region = (opts.get("client_kwargs") or {}).get("region_name")
        return f"the AWS S3 endpoint{f' ({region})' if region else ''}"

    def _scrub(self, text: str) -> str:
        """``text`` with every credential value of this storage replaced by ``***``."""
        text = redact(text)
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def _call(self, fn: Callable[[], T], what: str, url: str) -> T:
        """Run ``fn`` (one storage operation on ``url``) and turn storage trouble into StorageError.

        Retries already happened below (botocore); a missing object stays a ``FileNotFoundError``.
        """
        try:
            return fn()
        except LcstackError:
            raise  # already clear (a StorageError, or an AssetError from inside a Zarr write's tasks)
        except _transport_errors() as err:
            raise self._storage_error(err, what, url) from None

    def _storage_error(self, err: BaseException, what: str, url: str) -> BaseException:
        code = _error_code(err)
        where = redact(url)
        if _is_local(url):
            if isinstance(err, FileNotFoundError):
                return err
            return StorageError(self._scrub(f"could not {what} {where}: {err}"))
        endpoint = self._endpoint()
        bucket = url.split("://", 1)[1].split("/", 1)[0]
        detail = self._scrub(f"{type(err).__name__}: {err}" if code is None else f"{code}: {err}")
        if code == "NoSuchBucket" or (code == "404" and what.startswith("check")):
            return StorageError(
                f"could not {what} {where}: bucket {bucket!r} does not exist at {endpoint}; create it "
                "or fix `storage` / `layout` (and LCSTACK_S3_ENDPOINT_URL)."
            )
        if isinstance(err, FileNotFoundError):
            return err  # a missing object: callers rely on FileNotFoundError; its message is the path
        if isinstance(err, PermissionError) or code in (
            "AccessDenied",
            "403",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AllAccessDisabled",
        ):
            return StorageError(
                f"could not {what} {where}: access denied by {endpoint} for bucket {bucket!r} ({detail}); "
                "check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or LCSTACK_AWS_*) and that "
                "the bucket policy allows listing, reading, writing and deleting objects under this prefix."
            )
        if _is_connection_error(err):
            return StorageError(
                f"could not {what} {where}: cannot reach the S3 endpoint {endpoint} for bucket {bucket!r} "
                f"after retries ({detail}); check that it runs and that LCSTACK_S3_ENDPOINT_URL is right."
            )
        return StorageError(
            f"could not {what} {where} (bucket {bucket!r} at {endpoint}) after retries ({detail}); check "
            "the endpoint, region (LCSTACK_S3_REGION) and bucket, or try again later if the service is "
            "overloaded."
        )
