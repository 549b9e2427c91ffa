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
    """Return a rasterio Env with the storage's S3 endpoint and credentials for ``url`` (plain otherwise).

    Credentials go through :class:`rasterio.session.AWSSession` (rasterio refuses them as plain GDAL
    options); a custom endpoint (MinIO, moto, Ceph...) is addressed path-style.
    """
    import rasterio
    from rasterio.session import AWSSession

    if not url.startswith(("s3://", "s3a://")):
        return rasterio.Env()
    opts = storage.storage_options
    client = opts.get("client_kwargs") or {}
    endpoint = str(opts.get("endpoint_url") or client.get("endpoint_url") or "")
    cfg: dict[str, Any] = {}
    host = None
    if endpoint:
        scheme, _, host = endpoint.rpartition("://")
        host = host.rstrip("/")
        cfg.update(AWS_HTTPS="NO" if scheme == "http" else "YES", AWS_VIRTUAL_HOSTING="FALSE")
    session = AWSSession(
        aws_unsigned=bool(opts.get("anon")),
        aws_access_key_id=opts.get("key"),
        aws_secret_access_key=opts.get("secret"),
        aws_session_token=opts.get("token"),
        region_name=client.get("region_name"),
        endpoint_url=host,
    )
    return rasterio.Env(session=session, **cfg)
