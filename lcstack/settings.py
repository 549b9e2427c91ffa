"""Process-wide settings from the environment (``LCSTACK_*`` and a few names users already know).

Only this module reads ``os.environ``; everything else receives a :class:`Settings` object.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Settings read from ``LCSTACK_*`` environment variables (and ``.env`` if present).

    Attributes
    ----------
    s3_endpoint_url
        S3-compatible endpoint (MinIO, Ceph, moto), ``LCSTACK_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL``.
    s3_region
        ``LCSTACK_S3_REGION`` or ``AWS_DEFAULT_REGION``.
    s3_path_style
        Use path-style addressing (MinIO); default on when an endpoint is given.
    aws_access_key_id, aws_secret_access_key
        Credentials; when unset, s3fs/botocore use their own chain (profiles, instance roles).
    registry
        Registry URL (``mongodb://...``) or SQLite path; ``LCSTACK_REGISTRY`` or ``MONGO_URI``.
    dask_scheduler
        Address of an existing Dask scheduler (``tcp://...``) or a ``gateway://`` URL;
        ``LCSTACK_DASK_SCHEDULER`` or ``DASK_CLUSTER_IP`` (LandCoverPy's name).
    gateway_username, gateway_password
        HTTP basic-auth credentials for Dask Gateway (``LCSTACK_GATEWAY_USERNAME``,
        ``LCSTACK_GATEWAY_PASSWORD``); when both are unset, dask-gateway's own config applies
        (``DASK_GATEWAY__AUTH__TYPE``, ...).
    memory_budget
        Memory per Dask worker that chunk sizes are chosen for, e.g. ``"2GB"``.
    progress
        ``LCSTACK_PROGRESS``: ``0`` silences progress bars, ``1`` shows them even when standard error is
        not a terminal; unset, they are shown only on a terminal
        (:func:`lcstack.progress.progress_enabled`).

    """

    model_config = SettingsConfigDict(env_prefix="LCSTACK_", env_file=".env", extra="ignore")

    s3_endpoint_url: str | None = Field(
        None,
        validation_alias=AliasChoices("LCSTACK_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    )
    s3_region: str | None = Field(
        None, validation_alias=AliasChoices("LCSTACK_S3_REGION", "AWS_DEFAULT_REGION")
    )
    s3_path_style: bool | None = None
    aws_access_key_id: SecretStr | None = Field(
        None, validation_alias=AliasChoices("LCSTACK_AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")
    )
    aws_secret_access_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("LCSTACK_AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")
    )
    registry: SecretStr | None = Field(None, validation_alias=AliasChoices("LCSTACK_REGISTRY", "MONGO_URI"))
    mongo_database: str = "lcstack"
    dask_scheduler: str | None = Field(
        None, validation_alias=AliasChoices("LCSTACK_DASK_SCHEDULER", "DASK_CLUSTER_IP")
    )
    gateway_username: str | None = None
    gateway_password: SecretStr | None = None
    memory_budget: str = "2GB"
    progress: bool | None = None

    def storage_options(self, url: str) -> dict[str, Any]:
        """Fsspec ``storage_options`` for ``url`` built from these settings (empty for local paths)."""
        if not url.startswith(("s3://", "s3a://")):
            return {}
        opts: dict[str, Any] = {}
        client_kwargs: dict[str, Any] = {}
        if self.s3_endpoint_url:
            opts["endpoint_url"] = self.s3_endpoint_url
        if self.s3_region:
            client_kwargs["region_name"] = self.s3_region
        if self.aws_access_key_id and self.aws_secret_access_key:
            opts["key"] = self.aws_access_key_id.get_secret_value()
            opts["secret"] = self.aws_secret_access_key.get_secret_value()
        path_style = self.s3_path_style if self.s3_path_style is not None else bool(self.s3_endpoint_url)
        if path_style:
            opts["config_kwargs"] = {"s3": {"addressing_style": "path"}}
        if client_kwargs:
            opts["client_kwargs"] = client_kwargs
        return opts


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the settings of this process, read once (``get_settings.cache_clear()`` re-reads them)."""
    return Settings()
