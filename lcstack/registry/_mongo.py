"""MongoDB registry backend (pymongo): one collection per kind, ``_id`` = record key."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeVar

from lcstack.errors import InvalidInputError, RegistryError

from ._base import (
    KINDS,
    check_equals,
    check_key,
    check_kind,
    check_status,
    normalise_fields,
    now_iso,
    redacted_endpoint,
    scrub,
    url_secrets,
)
from ._claim import ClaimMixin

__all__ = ["MongoRegistry"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# What pymongo's authentication code raises when a (misbehaving) server answers the SCRAM handshake
# without the fields it expects (KeyError: 'payload', ...); the operations wrapped by ``_run`` are
# pymongo calls only, so these cannot come from lcstack's own code.
_HANDSHAKE_ERRORS: tuple[type[Exception], ...] = (KeyError,)
# MongoDB's error codes for refused credentials: AuthenticationFailed, MechanismUnavailable.
_AUTH_CODES = frozenset({18, 334})

# put() is optimistic (read, then write guarded by what was read); give up after this many races.
_PUT_ATTEMPTS = 20


class MongoRegistry(ClaimMixin):
    """Registry in a MongoDB database, one collection per kind.

    A record is stored with ``_id`` equal to its key (so uniqueness is MongoDB's own) and
    a ``key`` field under a unique index, plus a secondary index on ``status``. Only
    basic operations are used (``insert_one``, ``find_one``, ``find``, ``replace_one``,
    ``update_one`` with ``$set``, ``delete_one``, ``delete_many``, ``create_index``), so
    MongoDB-compatible servers (FerretDB, nx-27017, DocumentDB) work too. Indexes are
    created on the first operation, so opening never blocks on an unreachable server;
    :meth:`ping` checks the connection.

    The URL's credentials never appear in ``repr``, logs or error messages.

    Parameters
    ----------
    url
        ``mongodb://`` or ``mongodb+srv://`` connection string.
    database
        Database name.
    collection_prefix
        Prefix of the collection names (``<prefix><kind>``).
    server_selection_timeout_ms
        How long an operation waits for a reachable server before raising :class:`RegistryError`.
    **client_options
        Further keyword arguments for :class:`pymongo.MongoClient`.

    """

    def __init__(
        self,
        url: str,
        *,
        database: str = "lcstack",
        collection_prefix: str = "",
        server_selection_timeout_ms: int = 3000,
        **client_options: Any,
    ) -> None:
        if not url.startswith(("mongodb://", "mongodb+srv://")):
            raise InvalidInputError(
                f"MongoDB URL must start with mongodb:// or mongodb+srv://, got {redacted_endpoint(url)!r}"
            )
        self._url = url
        self.endpoint = redacted_endpoint(url)
        self._secrets = url_secrets(url)
        self.database = database
        self.collection_prefix = collection_prefix
        self.server_selection_timeout_ms = int(server_selection_timeout_ms)
        self._client_options = client_options
        self._client: Any = None
        self._client_pid: int | None = None
        self._indexed_pid: int | None = None
        self._lock = threading.Lock()
        self._connect()
        logger.debug("opened %r", self)

    def __repr__(self) -> str:
        return (
            f"MongoRegistry({self.endpoint!r}, database={self.database!r}, "
            f"collection_prefix={self.collection_prefix!r})"
        )

    def __reduce__(self) -> tuple[Callable[..., MongoRegistry], tuple[Any, ...], dict[str, Any]]:
        # The pickle carries the full URL (a worker needs the credentials); it is never logged.
        return (
            _reopen,
            (
                self._url,
                self.database,
                self.collection_prefix,
                self.server_selection_timeout_ms,
                self._client_options,
            ),
            {},
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- connection ------------------------------------------------------------------------------

    def _error(self, what: str, exc: BaseException) -> RegistryError:
        reason = scrub(str(exc).split(", Timeout:")[0].split("\n")[0], self._secrets)[:300]
        auth = _auth_problem(exc)
        if auth is not None:
            return RegistryError(
                f"MongoDB registry at {self.endpoint} (database {self.database!r}): {what} failed: "
                f"{auth} ({type(exc).__name__}: {reason}). Check the user name, password "
                "and authSource (and authMechanism) in MONGO_URI or the registry URL; they are the "
                "credentials of a user the server knows, for the database that holds that user."
            )
        return RegistryError(
            f"MongoDB registry at {self.endpoint} (database {self.database!r}): {what} failed: {reason}. "
            f"Check that the MongoDB server runs and is reachable from this machine, and that MONGO_URI "
            f"(or the registry URL) names the right host, port and credentials "
            f"(timeout {self.server_selection_timeout_ms} ms)"
        )

    def _connect(self) -> Any:
        import pymongo
        from pymongo.errors import PyMongoError

        pid = os.getpid()
        with self._lock:
            if self._client is not None and self._client_pid == pid:
                return self._client
            # pymongo clients are not fork-safe: a forked dask worker opens its own.
            options = {
                "serverSelectionTimeoutMS": self.server_selection_timeout_ms,
                "connectTimeoutMS": self.server_selection_timeout_ms,
                "appname": "lcstack",
                **self._client_options,
            }
            try:
                self._client = pymongo.MongoClient(self._url, **options)
            except PyMongoError as exc:
                raise self._error("connecting", exc) from None
            self._client_pid = pid
            return self._client

    def _collection(self, kind: str) -> Any:
        name = f"{self.collection_prefix}{check_kind(kind)}"
        client = self._connect()
        if self._indexed_pid != os.getpid():
            self._ensure_indexes(client)
        return client[self.database][name]

    def _ensure_indexes(self, client: Any) -> None:
        from pymongo.errors import PyMongoError

        with self._lock:
            if self._indexed_pid == os.getpid():
                return
            try:
                for kind in KINDS:
                    collection = client[self.database][f"{self.collection_prefix}{kind}"]
                    collection.create_index("key", unique=True)
                    collection.create_index("status")
            except (PyMongoError, *_HANDSHAKE_ERRORS) as exc:
                raise self._error("creating indexes", exc) from None
            self._indexed_pid = os.getpid()

    def _run(self, what: str, func: Callable[[], T]) -> T:
        from pymongo.errors import DuplicateKeyError, PyMongoError

        try:
            return func()
        except DuplicateKeyError:
            raise  # an answer (the key exists), not a failure: insert() and put() handle it
        except (PyMongoError, *_HANDSHAKE_ERRORS) as exc:
            # `from None`: the pymongo exception may quote the server's reply verbatim.
            raise self._error(what, exc) from None

    def close(self) -> None:
        """Close the client; the registry reconnects if used again."""
        with self._lock:
            client, pid = self._client, self._client_pid
            self._client = None
            self._indexed_pid = None
        if client is not None and pid == os.getpid():
            client.close()

    # -- records ---------------------------------------------------------------------------------

    def ping(self) -> None:
        """Check that the server answers, within ``server_selection_timeout_ms``."""
        client = self._connect()
        self._run("ping", lambda: client.admin.command("ping"))

    @staticmethod
    def _out(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        if doc is not None:
            doc.pop("_id", None)
        return doc

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        """Return the record ``key`` of ``kind``, or None."""
        key = check_key(key)
        collection = self._run(f"get {kind}/{key}", lambda: self._collection(kind))
        return self._out(self._run(f"get {kind}/{key}", lambda: collection.find_one({"_id": key})))

    def put(self, kind: str, key: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Create or replace record ``key`` with the fields of ``doc``, keeping ``created_at``."""
        from pymongo.errors import DuplicateKeyError

        key = check_key(key)
        fields = normalise_fields(kind, key, doc, what="put")
        collection = self._run(f"put {kind}/{key}", lambda: self._collection(kind))
        for _ in range(_PUT_ATTEMPTS):
            old = self._run(f"put {kind}/{key}", lambda: collection.find_one({"_id": key}, {"created_at": 1}))
            now = now_iso()
            if old is None:
                record = {"key": key, **fields, "created_at": now, "updated_at": now}
                try:
                    self._run(f"put {kind}/{key}", lambda r=record: collection.insert_one({"_id": key, **r}))
                except DuplicateKeyError:
                    continue  # created meanwhile: replace it instead
                return record
            record = {"key": key, **fields, "created_at": old.get("created_at", now), "updated_at": now}
            # `_id` repeated in the replacement: nx-27017 does not take it from the filter.
            guard = {"_id": key, "created_at": old.get("created_at")}
            result = self._run(
                f"put {kind}/{key}", lambda g=guard, r=record: collection.replace_one(g, {"_id": key, **r})
            )
            if result.matched_count == 1:
                return record
        raise RegistryError(
            f"MongoDB registry at {self.endpoint}: put {kind}/{key} lost {_PUT_ATTEMPTS} races with "
            "concurrent writers of the same record; retry, or let one process own each record"
        )

    def insert(self, kind: str, key: str, doc: dict[str, Any]) -> bool:
        """Create record ``key`` atomically; return False (and change nothing) when it exists."""
        from pymongo.errors import DuplicateKeyError

        key = check_key(key)
        now = now_iso()
        record = {"_id": key, "key": key, **normalise_fields(kind, key, doc, what="insert")}
        record |= {"created_at": now, "updated_at": now}
        collection = self._run(f"insert {kind}/{key}", lambda: self._collection(kind))
        try:
            self._run(f"insert {kind}/{key}", lambda: collection.insert_one(record))
        except DuplicateKeyError:
            return False
        return True

    def update(
        self,
        kind: str,
        key: str,
        fields: dict[str, Any],
        *,
        expect_status: str | None = None,
        expect: dict[str, Any] | None = None,
    ) -> bool:
        """Set ``fields`` on record ``key`` if its status is ``expect_status`` and its fields ``expect``.

        Returns False, changing nothing, when the record does not exist or does not match.
        """
        key = check_key(key)
        check_status(kind, key, expect_status)
        changes = normalise_fields(kind, key, fields, what="update") | {"updated_at": now_iso()}
        query: dict[str, Any] = {**_query(kind, dict(expect or {})), "_id": key}
        if expect_status is not None:
            query["status"] = expect_status
        collection = self._run(f"update {kind}/{key}", lambda: self._collection(kind))
        result = self._run(f"update {kind}/{key}", lambda: collection.update_one(query, {"$set": changes}))
        return bool(result.matched_count == 1)

    def find(self, kind: str, **equals: Any) -> list[dict[str, Any]]:
        """Return the records whose top-level fields equal ``equals``, sorted by key."""
        query = _query(kind, equals)
        collection = self._run(f"find {kind}", lambda: self._collection(kind))
        docs = self._run(f"find {kind}", lambda: list(collection.find(query).sort("_id", 1)))
        return [doc for doc in map(self._out, docs) if doc is not None]

    def delete(self, kind: str, key: str) -> bool:
        """Delete record ``key``; return whether it existed."""
        key = check_key(key)
        collection = self._run(f"delete {kind}/{key}", lambda: self._collection(kind))
        return bool(
            self._run(f"delete {kind}/{key}", lambda: collection.delete_one({"_id": key})).deleted_count
        )

    def delete_many(self, kind: str, **equals: Any) -> int:
        """Delete the records matching ``equals`` (all records of ``kind`` when empty); return how many."""
        query = _query(kind, equals)
        collection = self._run(f"delete_many {kind}", lambda: self._collection(kind))
        return int(self._run(f"delete_many {kind}", lambda: collection.delete_many(query)).deleted_count)


def _auth_problem(exc: BaseException) -> str | None:
    """How authentication failed, or None when ``exc`` is not about authentication."""
    from pymongo.errors import ConfigurationError, OperationFailure

    if isinstance(exc, _HANDSHAKE_ERRORS):
        return f"authentication failed: the server's handshake reply lacks the field {exc}"
    if isinstance(exc, OperationFailure) and (exc.code in _AUTH_CODES or "auth" in str(exc).lower()):
        return "authentication was refused"
    if isinstance(exc, ConfigurationError) and "auth" in str(exc).lower():
        return "the authentication options are wrong"
    return None


def _query(kind: str, equals: dict[str, Any]) -> dict[str, Any]:
    # Plain equality on scalars; JSON types are matched exactly by MongoDB already
    # (True is not 1), and None matches a missing field, as in the SQLite backend.
    return dict(check_equals(kind, equals))


def _reopen(
    url: str, database: str, collection_prefix: str, timeout_ms: int, options: dict[str, Any]
) -> MongoRegistry:
    return MongoRegistry(
        url,
        database=database,
        collection_prefix=collection_prefix,
        server_selection_timeout_ms=timeout_ms,
        **options,
    )
