"""Registry of scenes, composites, datasets, models and maps: MongoDB or an embedded SQLite file.

Both backends implement :class:`Registry` and pass one contract test suite, so code
written against one runs unchanged on the other::

    with open_registry(settings.mongo_uri, default_path=storage / "registry.db") as reg:
        claim = reg.acquire("composites", key, {"tile": tile_id}, usable=lambda rec: exists(url))
        if claim is None:
            ...  # complete (perhaps written meanwhile by another process): reuse it
        else:
            with claim:  # heartbeats while the output is written; released as failed on error
                ...  # write the output
                claim.complete({"seconds": 12.5})

``claim`` / ``complete`` (:mod:`._claim`) is the one pending → complete protocol of every output:
compare-and-set on a per-claim token, with an owner and a heartbeat lease so that the claim of a
killed process is taken over while a live one is waited for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lcstack.errors import InvalidInputError

from ._base import KINDS, STATUSES, Kind, Status, redacted_endpoint
from ._claim import DEFAULT_LEASE_S, Claim, Owner
from ._mongo import MongoRegistry
from ._protocol import Registry
from ._sqlite import SQLiteRegistry

__all__ = [
    "DEFAULT_LEASE_S",
    "KINDS",
    "STATUSES",
    "Claim",
    "Kind",
    "MongoRegistry",
    "Owner",
    "Registry",
    "SQLiteRegistry",
    "Status",
    "open_registry",
]


def open_registry(
    url: str | os.PathLike[str] | None,
    *,
    default_path: str | os.PathLike[str] | None = None,
    database: str = "lcstack",
    collection_prefix: str = "",
    **options: Any,
) -> Registry:
    """Open the registry named by ``url``.

    Parameters
    ----------
    url
        ``mongodb://…`` or ``mongodb+srv://…`` for :class:`MongoRegistry`;
        ``sqlite:///relative/registry.db``, ``sqlite:////absolute/registry.db`` (SQLAlchemy
        style) or a plain file path for :class:`SQLiteRegistry`; None or ``""`` for
        ``default_path``.
    default_path
        SQLite file used when ``url`` is empty.
    database
        MongoDB database name (ignored by SQLite).
    collection_prefix
        Prefix of collection / table names, to keep several deployments in one database.
    **options
        Backend options: ``server_selection_timeout_ms`` and pymongo client options for
        MongoDB, ``timeout`` (seconds) for SQLite.

    Returns
    -------
    Registry
        An open registry; use it as a context manager or call ``close()``.

    Raises
    ------
    InvalidInputError
        The URL has an unsupported scheme, or neither ``url`` nor ``default_path`` is given.
    RegistryError
        The SQLite file cannot be created or opened (MongoDB is only contacted on first use;
        call ``ping()`` to check it).

    """
    if url is None or str(url) == "":
        if default_path is None:
            raise InvalidInputError(
                "no registry given: set MONGO_URI / the registry URL, or pass default_path for an embedded "
                "SQLite registry"
            )
        return SQLiteRegistry(default_path, collection_prefix=collection_prefix, **options)
    text = os.fspath(url)
    if text.startswith(("mongodb://", "mongodb+srv://")):
        return MongoRegistry(text, database=database, collection_prefix=collection_prefix, **options)
    if text.startswith("sqlite://"):
        path = text.removeprefix("sqlite://")
        if not path.startswith("/") or path == "/" or path.startswith("/:memory:"):
            raise InvalidInputError(
                f"registry URL {text!r}: write sqlite:///relative/path.db or sqlite:////absolute/path.db "
                "(an in-memory database cannot be shared between threads and processes)"
            )
        return SQLiteRegistry(Path(path[1:]), collection_prefix=collection_prefix, **options)
    if "://" in text:
        raise InvalidInputError(
            f"registry URL scheme of {redacted_endpoint(text)!r} is not supported; use mongodb://, "
            "mongodb+srv://, sqlite:/// or a file path"
        )
    return SQLiteRegistry(Path(text), collection_prefix=collection_prefix, **options)
