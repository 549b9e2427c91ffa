"""The one pending → complete protocol of every output: claim, heartbeat, complete or release.

A process that is about to write an output *claims* its record: the record becomes ``pending`` with
an ``owner`` (host, pid, run id, process start time), a random ``token``, a ``heartbeat`` time and a
``lease_s``. While the output is written a thread renews the heartbeat. ``complete`` and ``release``
are compare-and-set on the token, so only the owner can finish its claim. A claim whose owner is
gone (its heartbeat older than its lease, or, on the same host, its process no longer running) is
taken over by the next process that asks, again by compare-and-set, so exactly one process wins.
A live owner is waited for (:meth:`ClaimMixin.acquire`), and a complete output is reused.

Both backends get these methods from :class:`ClaimMixin`; they need only ``get``, ``insert`` and
``update(..., expect=...)``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import lru_cache
from types import TracebackType
from typing import Any, Final, Self

from lcstack.errors import RegistryError

from ._base import now_iso

__all__ = ["DEFAULT_LEASE_S", "Claim", "ClaimMixin", "Owner"]

logger = logging.getLogger(__name__)

#: Seconds without a heartbeat after which a pending claim counts as abandoned (any host).
DEFAULT_LEASE_S: Final = 120.0
#: Poll interval while waiting for another process's output: starts small, grows to the maximum.
_POLL_S: Final = (0.1, 2.0)
#: Fields the protocol owns on a claimed record.
CLAIM_FIELDS: Final = ("status", "owner", "token", "heartbeat", "lease_s", "error")


@lru_cache(maxsize=1)
def _boot_id() -> str:
    # Two hosts (or containers) may share a name; a pid is only meaningful on the same running kernel.
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _process_started(pid: int) -> float | None:
    """Start time of process ``pid`` (POSIX seconds), None when no such process runs."""
    import psutil

    try:
        return round(psutil.Process(pid).create_time(), 2)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


@dataclass(frozen=True)
class Owner:
    """Who holds a claim: enough to tell, on the same host, whether that process still runs."""

    host: str
    boot: str
    pid: int
    started: float | None
    run: str

    @classmethod
    def current(cls) -> Owner:
        """Return the owner identity of this process (a new run id after ``fork``)."""
        return _current_owner(os.getpid())

    def as_doc(self) -> dict[str, Any]:
        """Return the owner as a registry field."""
        return asdict(self)

    def is_gone(self) -> bool:
        """Tell whether this owner ran on this host and its process has ended (or its pid was reused)."""
        here = Owner.current()
        if (self.host, self.boot) != (here.host, here.boot) or not self.boot:
            return False
        started = _process_started(self.pid)
        return started is None or (self.started is not None and abs(started - self.started) > 1.0)


@lru_cache(maxsize=4)
def _current_owner(pid: int) -> Owner:
    return Owner(socket.gethostname(), _boot_id(), pid, _process_started(pid), uuid.uuid4().hex[:12])


def _owner_of(record: dict[str, Any]) -> Owner | None:
    doc = record.get("owner")
    if not isinstance(doc, dict):
        return None
    try:
        return Owner(str(doc["host"]), str(doc["boot"]), int(doc["pid"]), doc.get("started"), str(doc["run"]))
    except (KeyError, TypeError, ValueError):
        return None


def _age_s(iso: Any) -> float:
    try:
        return time.time() - datetime.fromisoformat(str(iso)).timestamp()
    except ValueError:
        return float("inf")


def abandoned(record: dict[str, Any]) -> bool:
    """Whether a record may be taken over: failed, or pending with no live owner."""
    status = record.get("status")
    if status == "failed":
        return True
    if status != "pending":
        return False
    owner = _owner_of(record)
    if owner is None or not record.get("token"):
        return True  # written before claims existed, or by hand: nobody heartbeats it
    lease = record.get("lease_s")
    lease = DEFAULT_LEASE_S if not isinstance(lease, int | float) else float(lease)
    return _age_s(record.get("heartbeat")) > lease or owner.is_gone()


def describe_owner(record: dict[str, Any]) -> str:
    """``host pid N (run R), heartbeat S s ago`` for log lines."""
    owner = _owner_of(record)
    who = f"{owner.host} pid {owner.pid} (run {owner.run})" if owner else "an unknown process"
    return f"{who}, last heartbeat {_age_s(record.get('heartbeat')):.0f} s ago"


class Claim:
    """The right to write one output, held until :meth:`complete` or :meth:`release`.

    As a context manager it renews the heartbeat in a thread, and releases the claim as ``failed``
    (recording the error) when the block raises before :meth:`complete`.
    """

    def __init__(self, registry: ClaimMixin, kind: str, key: str, token: str, lease_s: float) -> None:
        self.registry, self.kind, self.key, self.token, self.lease_s = registry, kind, key, token, lease_s
        self.done = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Claim({self.kind}/{self.key}, token={self.token})"

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                if not self.registry.heartbeat(self.kind, self.key, self.token):
                    logger.error("%s/%s: the claim was taken over by another process", self.kind, self.key)
                    return
            except RegistryError as exc:  # keep trying: the lease is several beats long
                logger.warning("%s/%s: heartbeat failed: %s", self.kind, self.key, exc)

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._beat, name=f"lcstack-heartbeat-{self.key}", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc is not None and not self.done:
            try:
                self.release(error=f"{type(exc).__name__}: {exc}"[:500])
            except RegistryError as err:
                logger.warning("%s/%s: could not release the claim: %s", self.kind, self.key, err)

    def complete(self, fields: dict[str, Any] | None = None) -> None:
        """Record the output complete (with ``fields``); raise RegistryError when the claim was lost."""
        if not self.registry.complete(self.kind, self.key, self.token, fields or {}):
            raise RegistryError(
                f"{self.kind}/{self.key}: this process's claim was taken over before the output was "
                "recorded complete (no heartbeat reached the registry within the lease); re-run to "
                "check the output"
            )
        self.done = True
        self._stop.set()

    def release(self, *, error: str | None = None) -> bool:
        """Give the claim up as ``failed`` so the next process may take it at once."""
        self.done = True
        self._stop.set()
        return self.registry.release(self.kind, self.key, self.token, error=error)


class ClaimMixin:
    """Claim / heartbeat / complete / release / acquire on top of ``get``, ``insert`` and ``update``."""

    get: Callable[..., dict[str, Any] | None]
    insert: Callable[..., bool]
    update: Callable[..., bool]

    def claim(
        self,
        kind: str,
        key: str,
        doc: dict[str, Any] | None = None,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        retake_complete: bool = False,
    ) -> Claim | None:
        """Claim record ``key`` of ``kind`` for writing, once (no waiting).

        Parameters
        ----------
        kind, key
            The record.
        doc
            Fields stored with the claim (tile, season, location...).
        lease_s
            Seconds without a heartbeat after which others may take the claim over.
        retake_complete
            Take a ``complete`` record too (its output is known to be missing).

        Returns
        -------
        Claim or None
            The claim when this process now owns the record; None when the record is complete
            (and ``retake_complete`` is false) or pending under a live owner, or another process
            won the race.

        """
        fields = {k: v for k, v in (doc or {}).items() if k not in CLAIM_FIELDS}
        token = uuid.uuid4().hex
        owned = {
            **fields,
            "status": "pending",
            "owner": Owner.current().as_doc(),
            "token": token,
            "heartbeat": now_iso(),
            "lease_s": float(lease_s),
            "error": None,
        }
        record = self.get(kind, key)
        if record is None:
            return Claim(self, kind, key, token, lease_s) if self.insert(kind, key, owned) else None
        takeable = abandoned(record) or (retake_complete and record.get("status") == "complete")
        if not takeable:
            return None
        guard = {"updated_at": record.get("updated_at"), "token": record.get("token")}
        if not self.update(kind, key, owned, expect=guard):
            return None
        if record.get("status") == "pending":
            logger.warning("%s/%s: took over the claim of %s", kind, key, describe_owner(record))
        return Claim(self, kind, key, token, lease_s)

    def heartbeat(self, kind: str, key: str, token: str) -> bool:
        """Renew the heartbeat of a claim; False when ``token`` no longer holds it."""
        return bool(
            self.update(kind, key, {"heartbeat": now_iso()}, expect_status="pending", expect={"token": token})
        )

    def complete(self, kind: str, key: str, token: str, fields: dict[str, Any] | None = None) -> bool:
        """Mark the claimed record ``complete`` with ``fields``; False when ``token`` no longer holds it."""
        extra = {k: v for k, v in (fields or {}).items() if k not in CLAIM_FIELDS}
        return bool(
            self.update(
                kind,
                key,
                {**extra, "status": "complete", "error": None, "completed_at": now_iso()},
                expect_status="pending",
                expect={"token": token},
            )
        )

    def release(self, kind: str, key: str, token: str, *, error: str | None = None) -> bool:
        """Mark the claimed record ``failed`` (with ``error``); False when ``token`` no longer holds it."""
        return bool(
            self.update(
                kind,
                key,
                {"status": "failed", "error": error},
                expect_status="pending",
                expect={"token": token},
            )
        )

    def acquire(
        self,
        kind: str,
        key: str,
        doc: dict[str, Any] | None = None,
        *,
        usable: Callable[[dict[str, Any]], bool] = lambda record: True,
        lease_s: float = DEFAULT_LEASE_S,
        timeout_s: float | None = None,
    ) -> Claim | None:
        """Claim ``key`` for writing, waiting while another live process writes it.

        Returns the claim, or None when the record is complete and ``usable(record)`` (reuse it).
        A complete record whose output is not usable is claimed again.

        Raises
        ------
        RegistryError
            ``timeout_s`` passed while another process held the claim.

        """
        start, poll, waiting = time.monotonic(), _POLL_S[0], False
        while True:
            record = self.get(kind, key)
            if record is not None and record.get("status") == "complete" and usable(record):
                if waiting:
                    logger.info("%s/%s: written by another process meanwhile; reused", kind, key)
                return None
            retake = record is not None and record.get("status") == "complete"
            claim = self.claim(kind, key, doc, lease_s=lease_s, retake_complete=retake)
            if claim is not None:
                return claim
            record = self.get(kind, key)
            if record is not None and record.get("status") == "pending" and not waiting:
                logger.info("%s/%s: being written by %s; waiting for it", kind, key, describe_owner(record))
                waiting = True
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise RegistryError(
                    f"{kind}/{key}: still being written by {describe_owner(record or {})} after "
                    f"{timeout_s:g} s; wait for that run to finish, or stop it and re-run"
                )
            time.sleep(poll)
            poll = min(_POLL_S[1], poll * 1.5)
