"""GDAL paths and rasterio environments for files in :class:`lcstack.store.Storage` (local, S3, HTTP)."""

from __future__ import annotations

from typing import Any

__all__ = ["gdal_path", "rasterio_env"]


def gdal_path(url: str) -> str:
    """Return the path GDAL opens: local as is, ``s3://`` as ``/vsis3/``, ``http(s)`` as ``/vsicurl/``."""
    if url.startswith("file://"):
        return url[len("file://") :]
    if url.startswith(("s3://", "s3a://")):
        return "/vsis3/" + url.split("://", 1)[1]
    if url.startswith(("http://", "https://")):
        return "/vsicurl/" + url
    return url


def rasterio_env(storage: Any, url: str) -> Any:
    """Return a rasterio Env with the storage's S3 endpoint and credentials for ``url`` (no-op otherwise)."""
    import rasterio

    opts = storage.storage_options if url.startswith(("s3://", "s3a://")) else {}
    cfg: dict[str, Any] = {}
    endpoint = opts.get("endpoint_url") or (opts.get("client_kwargs") or {}).get("endpoint_url")
    if endpoint:
        scheme, host = str(endpoint).split("://", 1) if "://" in str(endpoint) else ("https", str(endpoint))
        cfg.update(AWS_S3_ENDPOINT=host.rstrip("/"), AWS_HTTPS="YES" if scheme == "https" else "NO")
        cfg["AWS_VIRTUAL_HOSTING"] = "FALSE"
    if opts.get("key"):
        cfg.update(AWS_ACCESS_KEY_ID=opts["key"], AWS_SECRET_ACCESS_KEY=opts.get("secret", ""))
    if opts.get("anon"):
        cfg["AWS_NO_SIGN_REQUEST"] = "YES"
    return rasterio.Env(**cfg)
