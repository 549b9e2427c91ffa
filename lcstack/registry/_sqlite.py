"""Embedded registry backend: one SQLite file, one table per kind, JSON documents."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from lcstack.errors import InvalidInputError, RegistryError

from ._base import (
    KINDS,
    check_equals,
    check_key,
    check_kind,
    check_status,
    matches,
    normalise_fields,
    now_iso,
    to_json,
)
from ._claim import ClaimMixin

__all__ = ["SQLiteRegistry"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long one statement waits for another writer before SQLite gives up, and how often we
# retry on top of that: a registry write is a few hundred bytes, so waiting is always right.
_BUSY_RETRIES = 5


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    message = str(exc).lower()
    return "locked" in message or "busy" in message


class SQLiteRegistry(ClaimMixin):
    """Registry in a single SQLite file (stdlib :mod:`sqlite3`), safe across threads and processes.

    Each kind is a table ``(key TEXT PRIMARY KEY, doc TEXT)`` holding the record as JSON.
    The file runs in WAL mode, so readers never block the one writer; writes take the
    write lock up front (``BEGIN IMMEDIATE``) and wait up to ``timeout`` seconds for it.
    Every thread and every process gets its own connection (forked dask workers
    reconnect on first use), and the object pickles as its path.

    Parameters
    ----------
    path
        The database file; its folder must exist and be writable. Use a local disk:
        SQLite locking is unreliable on network file systems (NFS, SMB).
    collection_prefix
        Prefix of the table names (letters, digits and ``_``).
    timeout
        Seconds a write waits for another writer before raising :class:`RegistryError`.

    """

    def __init__(
        self, path: str | os.PathLike[str], *, collection_prefix: str = "", timeout: float = 30.0
    ) -> None:
        if collection_prefix and not collection_prefix.replace("_", "").isalnum():
            raise InvalidInputError(
                f"collection_prefix={collection_prefix!r} may only contain letters, digits and '_'"
            )
        self.path = Path(path).expanduser().absolute()
        self.collection_prefix = collection_prefix
        self.timeout = float(timeout)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[tuple[int, sqlite3.Connection]] = []
        self._schema_pid: int | None = None
        self._check_path()
        self._connect()  # create the file and the tables now, so a bad path fails at open
        logger.debug("opened %r", self)

    def __repr__(self) -> str:
        return f"SQLiteRegistry({str(self.path)!r}, collection_prefix={self.collection_prefix!r})"

    def __reduce__(self) -> tuple[Callable[..., SQLiteRegistry], tuple[Any, ...], dict[str, Any]]:
        return (_reopen, (str(self.path), self.collection_prefix, self.timeout), {})

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- connections -----------------------------------------------------------------------------

    def _check_path(self) -> None:
        folder = self.path.parent
        if not folder.is_dir():
            raise RegistryError(
                f"cannot open the registry database {self.path}: the folder {folder} does not exist "
                "(or is not a folder); create it, or point the registry URL (LCSTACK_REGISTRY_URL / "
                "registry in the run config) at an existing folder"
            )
        target = self.path if self.path.exists() else folder
        if not os.access(target, os.W_OK):
            raise RegistryError(
                f"cannot open the registry database {self.path}: {target} is not writable by this user; "
                "fix its permissions or point the registry URL at a writable folder"
            )

    def _table(self, kind: str) -> str:
        return f'"{self.collection_prefix}{check_kind(kind)}"'

    def _connect(self) -> sqlite3.Connection:
        pid = os.getpid()
        current: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if current is not None and getattr(self._local, "pid", None) == pid:
            return current
        # A connection inherited through fork() must not be used (nor closed) in the child.
        conn = None
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=True
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            mode = self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if mode.lower() != "wal":
                logger.warning("registry %s runs in journal mode %s, not WAL", self.path, mode)
            if self._schema_pid != pid:
                self._create_schema(conn)
                self._schema_pid = pid
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise RegistryError(
                f"cannot open the registry database {self.path}: {exc}; check that the file is an "
                "lcstack registry on a local, writable disk and that no other program holds it locked"
            ) from exc
        self._local.conn = conn
        self._local.pid = pid
        with self._lock:
            self._connections.append((pid, conn))
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        with self._write(conn):
            for kind in KINDS:
                table = self._table(kind)
                index = f'"{self.collection_prefix}{kind}_status"'
                conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, doc TEXT NOT NULL)")
                conn.execute(
                    f"CREATE INDEX IF NOT EXISTS {index} ON {table} (json_extract(doc, '$.\"status\"'))"
                )

    def _retry(self, func: Callable[[], T]) -> T:
        for attempt in range(_BUSY_RETRIES):
            try:
                return func()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or attempt == _BUSY_RETRIES - 1:
                    raise
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    @contextmanager
    def _write(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
        try:
            yield conn
            self._retry(lambda: conn.execute("COMMIT"))
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _run(self, what: str, func: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connect()
        try:
            return self._retry(lambda: func(conn))
        except sqlite3.OperationalError as exc:
            raise RegistryError(
                f"registry {self.path}: {what} failed: {exc}; another process may hold a long write "
                f"lock (waited {self.timeout:g} s), or the disk is full or read-only"
            ) from exc
        except sqlite3.DatabaseError as exc:
            raise RegistryError(
                f"registry {self.path}: {what} failed: {exc}; the file may be damaged or not an "
                "lcstack registry; move it aside and rerun to rebuild it"
            ) from exc

    def close(self) -> None:
        """Close this process's connections; the registry reconnects if used again."""
        pid = os.getpid()
        with self._lock:
            mine = [conn for owner, conn in self._connections if owner == pid]
            self._connections = [(owner, conn) for owner, conn in self._connections if owner != pid]
        for conn in mine:
            try:
                conn.close()
            except sqlite3.ProgrammingError:
                # Created in another thread; SQLite allows closing it only there. Dropping it is enough.
                pass
        self._local = threading.local()

    # -- records ---------------------------------------------------------------------------------

    def ping(self) -> None:
        """Check that the database file can be read."""
        self._run("ping", lambda conn: conn.execute("SELECT 1").fetchone())

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        """Return the record ``key`` of ``kind``, or None."""
        table, key = self._table(kind), check_key(key)
        row = self._run(
            f"get {kind}/{key}",
            lambda conn: conn.execute(f"SELECT doc FROM {table} WHERE key = ?", (key,)).fetchone(),
        )
        return None if row is None else json.loads(row[0])

    def put(self, kind: str, key: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Create or replace record ``key`` with the fields of ``doc``, keeping ``created_at``."""
        table, key = self._table(kind), check_key(key)
        fields = normalise_fields(kind, key, doc, what="put")

        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            with self._write(conn):
                row = conn.execute(f"SELECT doc FROM {table} WHERE key = ?", (key,)).fetchone()
                now = now_iso()
                created = json.loads(row[0])["created_at"] if row is not None else now
                record = {"key": key, **fields, "created_at": created, "updated_at": now}
                conn.execute(
                    f"INSERT INTO {table} (key, doc) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET doc = excluded.doc",
                    (key, to_json(record, f"put {kind}/{key}")),
                )
            return record

        return self._run(f"put {kind}/{key}", op)

    def insert(self, kind: str, key: str, doc: dict[str, Any]) -> bool:
        """Create record ``key`` atomically; return False (and change nothing) when it exists."""
        table, key = self._table(kind), check_key(key)
        now = now_iso()
        record = {
            "key": key,
            **normalise_fields(kind, key, doc, what="insert"),
            "created_at": now,
            "updated_at": now,
        }
        text = to_json(record, f"insert {kind}/{key}")

        def op(conn: sqlite3.Connection) -> bool:
            with self._write(conn):
                cursor = conn.execute(
                    f"INSERT INTO {table} (key, doc) VALUES (?, ?) ON CONFLICT(key) DO NOTHING", (key, text)
                )
                return cursor.rowcount == 1

        return self._run(f"insert {kind}/{key}", op)

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
        table, key = self._table(kind), check_key(key)
        check_status(kind, key, expect_status)
        guard = check_equals(kind, dict(expect or {}))
        if expect_status is not None:
            guard["status"] = expect_status
        changes = normalise_fields(kind, key, fields, what="update")

        def op(conn: sqlite3.Connection) -> bool:
            with self._write(conn):
                row = conn.execute(f"SELECT doc FROM {table} WHERE key = ?", (key,)).fetchone()
                if row is None:
                    return False
                record = json.loads(row[0])
                if not matches(record, guard):
                    return False
                record.update(changes)
                record["updated_at"] = now_iso()
                conn.execute(
                    f"UPDATE {table} SET doc = ? WHERE key = ?",
                    (to_json(record, f"update {kind}/{key}"), key),
                )
                return True

        return self._run(f"update {kind}/{key}", op)

    @staticmethod
    def _where(equals: dict[str, Any]) -> tuple[str, list[Any]]:
        # Match JSON types exactly, as MongoDB does: True is not 1, "1" is not 1, None matches missing.
        clauses: list[str] = []
        params: list[Any] = []
        for name, value in equals.items():
            # Inlined (not bound) so that the expression index on status applies; check_equals
            # has refused names with '"', and single quotes are doubled.
            path = "'$.\"" + name.replace("'", "''") + "\"'"
            if value is None:
                clauses.append(f"(json_type(doc, {path}) IS NULL OR json_type(doc, {path}) = 'null')")
            elif isinstance(value, bool):
                clauses.append(f"json_type(doc, {path}) = '{'true' if value else 'false'}'")
            elif isinstance(value, int | float):
                clauses.append(
                    f"json_type(doc, {path}) IN ('integer', 'real') AND json_extract(doc, {path}) = ?"
                )
                params.append(value)
            else:
                clauses.append(f"json_extract(doc, {path}) = ? AND json_type(doc, {path}) = 'text'")
                params.append(value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def find(self, kind: str, **equals: Any) -> list[dict[str, Any]]:
        """Return the records whose top-level fields equal ``equals``, sorted by key."""
        table = self._table(kind)
        where, params = self._where(check_equals(kind, equals))
        rows = self._run(
            f"find {kind}",
            lambda conn: conn.execute(f"SELECT doc FROM {table}{where} ORDER BY key", params).fetchall(),
        )
        return [json.loads(row[0]) for row in rows]

    def delete(self, kind: str, key: str) -> bool:
        """Delete record ``key``; return whether it existed."""
        table, key = self._table(kind), check_key(key)

        def op(conn: sqlite3.Connection) -> bool:
            with self._write(conn):
                return conn.execute(f"DELETE FROM {table} WHERE key = ?", (key,)).rowcount == 1

        return self._run(f"delete {kind}/{key}", op)

    def delete_many(self, kind: str, **equals: Any) -> int:
        """Delete the records matching ``equals`` (all records of ``kind`` when empty); return how many."""
        table = self._table(kind)
        where, params = self._where(check_equals(kind, equals))

        def op(conn: sqlite3.Connection) -> int:
            with self._write(conn):
                return int(conn.execute(f"DELETE FROM {table}{where}", params).rowcount)

        return self._run(f"delete_many {kind}", op)


def _reopen(path: str, collection_prefix: str, timeout: float) -> SQLiteRegistry:
    return SQLiteRegistry(path, collection_prefix=collection_prefix, timeout=timeout)
