"""Exception and warning hierarchy of lcstack.

Every error lcstack raises on purpose derives from :class:`LcstackError`, and
also from the matching built-in exception so that callers who catch
``ValueError`` or ``FileNotFoundError`` keep working. A message says what was
wrong, where (file, line, key, item id) and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "LcstackError",
    "InvalidInputError",
    "InputFileNotFoundError",
    "NoScenesFoundError",
    "AssetError",
    "StorageError",
    "RegistryError",
    "ModelMismatchError",
    "ClusterError",
    "MissingDependencyError",
    "LcstackWarning",
    "NoCloudMaskWarning",
    "SkippedPointsWarning",
    "SkippedScenesWarning",
]


class LcstackError(Exception):
    """Base class of every error raised by lcstack."""


class InvalidInputError(LcstackError, ValueError):
    """An input file, config value or argument is malformed."""


class InputFileNotFoundError(LcstackError, FileNotFoundError):
    """An input file named in the config or on the command line does not exist."""


class NoScenesFoundError(LcstackError, LookupError):
    """Discovery found no usable scene for a season."""


class AssetError(LcstackError, OSError):
    """A scene or DEM asset cannot be read: no href, a missing or empty file, a truncated or corrupt COG.

    ``item``, ``asset``, ``href`` and ``why`` say which one and what is wrong (also after the error
    crossed from a Dask worker).
    """

    def __init__(
        self,
        message: str,
        *,
        item: str | None = None,
        asset: str | None = None,
        href: str | None = None,
        why: str | None = None,
    ) -> None:
        super().__init__(message)
        self.item, self.asset, self.href, self.why = item, asset, href, why

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[object, ...]:
        return (_asset_error, (self.args[0], self.item, self.asset, self.href, self.why))


def _asset_error(
    message: str, item: str | None, asset: str | None, href: str | None, why: str | None
) -> AssetError:
    return AssetError(message, item=item, asset=asset, href=href, why=why)


class StorageError(LcstackError, OSError):
    """Object storage (local folder or fsspec URL) is unreachable or refuses access."""


class RegistryError(LcstackError, RuntimeError):
    """The asset registry (MongoDB or embedded) is unreachable or inconsistent."""


class ModelMismatchError(LcstackError, ValueError):
    """A model does not fit the features it is asked to classify."""


class ClusterError(LcstackError, ConnectionError):
    """A Dask scheduler or Dask Gateway is unreachable or refuses the connection."""


class MissingDependencyError(LcstackError, ImportError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the optional package {package!r}, which is not installed. "
            f"Install it with: pip install 'lcstack[{extra}]'"
        )


class LcstackWarning(UserWarning):
    """Base class of every warning issued by lcstack."""


class NoCloudMaskWarning(LcstackWarning):
    """Scenes have no scene-classification (SCL) asset, so no cloud mask is applied."""


class SkippedPointsWarning(LcstackWarning):
    """Some labelled points were left out (outside the area or on nodata)."""


class SkippedScenesWarning(LcstackWarning):
    """Scenes were left out of a season because an asset could not be read (``on_error: skip-scene``)."""
