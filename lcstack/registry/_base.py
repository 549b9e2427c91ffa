"""The record kinds, statuses and the checks both backends share (the protocol is in ``_protocol``)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit

from lcstack.errors import InvalidInputError

__all__ = ["KINDS", "STATUSES", "Kind", "Status"]

Kind = Literal["scenes", "composites", "datasets", "models", "maps", "plans"]
Status = Literal["pending", "complete", "failed"]

#: Record kinds, one table (SQLite) or collection (MongoDB) each; ``plans`` holds the composites a
#: config's last discovery planned, so that status and clean work offline.
KINDS: Final[tuple[str, ...]] = ("scenes", "composites", "datasets", "models", "maps", "plans")
#: Allowed values of a record's ``status`` field.
STATUSES: Final[tuple[str, ...]] = ("pending", "complete", "failed")

#: Fields the registry owns: ``key`` is the identity, the timestamps are set on every write.
_TIMESTAMPS: Final = ("created_at", "updated_at")
_SCALARS: Final = (str, int, float, bool, type(None))


def now_iso() -> str:
    """Return the current UTC time as an ISO 8601 string with microseconds (sorts as text)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def check_kind(kind: str) -> str:
    """Return ``kind`` if it is one of :data:`KINDS`."""
    if kind not in KINDS:
        raise InvalidInputError(f"unknown registry kind {kind!r}; use one of {', '.join(KINDS)}")
    return kind


def check_key(key: str) -> str:
    """Return ``key`` if it is a non-empty string."""
    if not isinstance(key, str) or not key:
        raise InvalidInputError(f"registry key must be a non-empty string, got {key!r}")
    return key


def _json_default(value: Any) -> Any:
    # NumPy scalars and arrays are common in metadata (metrics, bounds); store them as plain JSON.
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(doc: dict[str, Any], where: str) -> str:
    """Serialise ``doc`` as JSON text, raising InvalidInputError that names ``where``."""
    try:
        return json.dumps(doc, ensure_ascii=False, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"{where}: the record is not JSON serialisable ({exc}); store strings, numbers, booleans, "
            "None, lists and dicts with string keys (convert datetimes to ISO strings, NaN to None)"
        ) from None


def normalise_fields(kind: str, key: str, doc: dict[str, Any], *, what: str) -> dict[str, Any]:
    """Return a JSON-normalised copy of the user fields of ``doc`` (no key, no timestamps, no ``_id``).

    Both backends store exactly what comes back from JSON, so tuples become lists and
    NumPy scalars become Python numbers alike in SQLite and MongoDB.
    """
    where = f"{what} {kind}/{key}"
    if not isinstance(doc, dict):
        raise InvalidInputError(f"{where}: the record must be a dict, got {type(doc).__name__}")
    if "key" in doc and doc["key"] != key:
        raise InvalidInputError(
            f"{where}: the record's 'key' field is {doc['key']!r}; "
            "it must match the key argument or be left out"
        )
    fields = json.loads(to_json(doc, where))
    for name in ("key", "_id", *_TIMESTAMPS):
        fields.pop(name, None)
    for name in fields:
        if not name or name.startswith("$") or "." in name:
            raise InvalidInputError(
                f"{where}: field name {name!r} is not allowed (empty, starting with '$' or containing '.')"
            )
    if "status" in fields and fields["status"] not in STATUSES:
        raise InvalidInputError(f"{where}: status {fields['status']!r} is not one of {', '.join(STATUSES)}")
    return fields


def check_equals(kind: str, equals: dict[str, Any]) -> dict[str, Any]:
    """Validate the ``field=value`` filters of ``find``/``delete_many`` (scalar values only)."""
    for name, value in equals.items():
        if not name or name.startswith("$") or "." in name or '"' in name or name == "_id":
            raise InvalidInputError(f"find {kind}: cannot filter on field name {name!r}")
        if not isinstance(value, _SCALARS):
            raise InvalidInputError(
                f"find {kind}: filter {name}={value!r} must be a str, int, float, bool or None; "
                "nested dicts and lists cannot be filtered on"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInputError(f"find {kind}: filter {name}={value!r} must be a finite number")
    return equals


def _same(value: Any, wanted: Any) -> bool:
    # JSON equality as MongoDB sees it: True is not 1, "1" is not 1, None matches a missing field.
    if wanted is None:
        return value is None
    if isinstance(wanted, bool) or isinstance(value, bool):
        return type(value) is type(wanted) and value == wanted
    if isinstance(wanted, int | float):
        return isinstance(value, int | float) and value == wanted
    return bool(type(value) is type(wanted) and value == wanted)


def matches(record: dict[str, Any], equals: dict[str, Any]) -> bool:
    """Whether the top-level fields of ``record`` equal ``equals`` (as :meth:`Registry.find` compares)."""
    return all(_same(record.get(name), wanted) for name, wanted in equals.items())


def check_status(kind: str, key: str, status: str | None) -> None:
    """Validate an ``expect_status`` argument."""
    if status is not None and status not in STATUSES:
        raise InvalidInputError(
            f"update {kind}/{key}: expect_status={status!r} is not one of {', '.join(STATUSES)}"
        )


def redacted_endpoint(url: str) -> str:
    """Return ``scheme://host:port[,host:port]/`` of a MongoDB URL, without credentials or options."""
    parts = urlsplit(url)
    hosts = parts.netloc.rsplit("@", 1)[-1]
    if parts.scheme == "mongodb":
        hosts = ",".join(h if (":" in h and not h.endswith("]")) else f"{h}:27017" for h in hosts.split(","))
    return f"{parts.scheme}://{hosts}"


def url_secrets(url: str) -> list[str]:
    """Return the secret substrings of a URL (password, raw and decoded) to scrub from any text."""
    netloc = urlsplit(url).netloc
    if "@" not in netloc:
        return []
    userinfo = netloc.rsplit("@", 1)[0]
    secrets = [userinfo]
    if ":" in userinfo:
        password = userinfo.split(":", 1)[1]
        secrets += [password, unquote(password)]
    return sorted({s for s in secrets if s}, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """Replace every secret in ``text`` with ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
