"""The registry protocol: what both backends offer, records and the claim protocol on them.

Apart from ``_base`` (the shared checks, which the claim module uses too), so that ``_claim`` and the
protocol that names its :class:`~lcstack.registry.Claim` do not import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

if TYPE_CHECKING:
    from ._claim import Claim

__all__ = ["Registry"]


@runtime_checkable
class Registry(Protocol):
    """A store of JSON records, one collection per kind, identified by a string ``key``.

    Every record carries ``key``, ``created_at`` and ``updated_at`` (UTC ISO 8601
    strings set by the registry) and, where relevant, ``status`` (one of
    :data:`~lcstack.registry.STATUSES`). Both backends (:class:`~lcstack.registry.SQLiteRegistry`,
    :class:`~lcstack.registry.MongoRegistry`) pass the same contract tests.
    """

    def ping(self) -> None:
        """Check that the registry is reachable; raise :class:`~lcstack.errors.RegistryError` if not."""

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        """Return the record ``key`` of ``kind``, or None."""

    def put(self, kind: str, key: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Create or replace record ``key`` with the fields of ``doc``, keeping ``created_at``."""

    def insert(self, kind: str, key: str, doc: dict[str, Any]) -> bool:
        """Create record ``key`` atomically; return False (and change nothing) when it exists."""

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

        ``expect`` compares top-level scalar fields for equality (None matches a missing field), so
        ``update(..., expect={"token": t})`` is a compare-and-set on the token.
        """

    def find(self, kind: str, **equals: Any) -> list[dict[str, Any]]:
        """Return the records whose top-level fields equal ``equals``, sorted by key."""

    def delete(self, kind: str, key: str) -> bool:
        """Delete record ``key``; return whether it existed."""

    def delete_many(self, kind: str, **equals: Any) -> int:
        """Delete the records matching ``equals`` (all records of ``kind`` when empty); return how many."""

    def claim(
        self,
        kind: str,
        key: str,
        doc: dict[str, Any] | None = None,
        *,
        lease_s: float = ...,
        retake_complete: bool = False,
    ) -> Claim | None:
        """Claim ``key`` for writing (pending, with owner and heartbeat); None when it is not free."""

    def heartbeat(self, kind: str, key: str, token: str) -> bool:
        """Renew the heartbeat of the claim ``token``; False when the claim was lost."""

    def complete(self, kind: str, key: str, token: str, fields: dict[str, Any] | None = None) -> bool:
        """Mark the claim ``token`` complete with ``fields``; False when the claim was lost."""

    def release(self, kind: str, key: str, token: str, *, error: str | None = None) -> bool:
        """Mark the claim ``token`` failed; False when the claim was lost."""

    def acquire(
        self,
        kind: str,
        key: str,
        doc: dict[str, Any] | None = None,
        *,
        usable: Callable[[dict[str, Any]], bool] = ...,
        lease_s: float = ...,
        timeout_s: float | None = None,
    ) -> Claim | None:
        """Claim ``key``, waiting for a live owner; None when it is complete and usable (reuse it)."""

    def close(self) -> None:
        """Release connections; the registry reconnects if used again."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
