"""STAC sources that need more than a URL: HTTP headers, and URL signing (Microsoft Planetary Computer).

``stac:`` in a run config is a URL / path string, or a mapping::

    stac:
      url: https://planetarycomputer.microsoft.com/api/stac/v1
      headers: {X-Custom: value}          # optional, sent with every STAC API request
      modifier: planetary_computer        # optional: sign asset hrefs with SAS tokens

Signing goes through the ``planetary-computer`` package (``pip install 'lcstack[planetary]'``), which
reads ``PC_SDK_SUBSCRIPTION_KEY`` (optional, raises rate limits) and ``PC_SDK_SAS_URL`` (the token
endpoint) from the environment. :class:`PlanetaryComputerSigner` is what lcstack hands on:

* to ``pystac_client.Client.open(..., modifier=signer.modify)``: search results come back signed;
* to ``odc.stac.load(..., patch_url=signer)``: odc-stac signs every asset href it reads when it
  builds the load graph, so Dask workers get signed URLs and need neither the package nor a key.

Tokens and long runs: a signed href is only as good as its token. The signer strips any older SAS
token from an href before signing it again (items stored by discovery, or signed hours ago, are
re-signed with a current token), and it takes a token from the package's cache only while that token
still has ``min_ttl`` seconds to live (15 minutes by default), else it fetches a new one. Each load
(one tile and season) is signed when its graph is built, so every graph starts with at least
``min_ttl`` seconds of token validity; raise ``min_ttl`` if one composite takes longer than that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidInputError, MissingDependencyError

__all__ = [
    "StacSource",
    "Signer",
    "PlanetaryComputerSigner",
    "stac_source",
    "signer_for",
    "client_modifier",
    "sign_items",
    "MODIFIERS",
]

logger = logging.getLogger(__name__)

MODIFIERS = ("planetary_computer",)
#: Query parameters of an Azure SAS token; dropped from an href before it is signed again.
_SAS_KEYS = frozenset(
    {
        "sv",
        "ss",
        "srt",
        "sp",
        "se",
        "st",
        "spr",
        "sig",
        "sr",
        "skoid",
        "sktid",
        "skt",
        "ske",
        "sks",
        "skv",
        "sdd",
        "rscc",
        "rscd",
        "rsce",
        "rscl",
        "rsct",
        "si",
    }
)
_BLOB_DOMAIN = ".blob.core.windows.net"


class StacSource(BaseModel):
    """Where scenes come from: a STAC API or static catalog, and how to reach its assets.

    Parameters
    ----------
    url
        STAC API landing page, or path / URL of a static catalog.
    headers
        HTTP headers for the STAC API (not for asset reads).
    modifier
        ``planetary_computer`` to sign asset hrefs with Planetary Computer SAS tokens.
    min_ttl
        Seconds a token must still be valid for to be used (see the module notes on long runs).

    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    modifier: Literal["planetary_computer"] | None = None
    min_ttl: float = Field(900.0, ge=60)


def stac_source(value: Any, *, where: str = "stac") -> StacSource:
    """Read ``stac:`` of a config: a URL / path string or a mapping; ``where`` names it in errors."""
    if isinstance(value, StacSource):
        return value
    if isinstance(value, str | bytes) or hasattr(value, "__fspath__"):
        return StacSource(url=str(value))
    if not isinstance(value, Mapping):
        raise InvalidInputError(
            f"{where}: expected a URL / path or a mapping {{url, headers, modifier}}, "
            f"got {type(value).__name__}."
        )
    try:
        return StacSource.model_validate(dict(value))
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'stac'}: {e['msg']}" for e in err.errors()
        )
        raise InvalidInputError(
            f"{where}: {problems}. Use `stac: {{url: ..., headers: {{...}}, modifier: planetary_computer}}` "
            f"(modifiers: {', '.join(MODIFIERS)})."
        ) from None


class Signer(Protocol):
    """Turns an asset href into one that can be read; used as odc-stac's ``patch_url``."""

    def __call__(self, href: str) -> str:
        """Return ``href`` ready to read."""
        ...

    def modify(self, obj: Any) -> None:
        """Sign the asset hrefs of a pystac object in place."""
        ...


def _without_sas(href: str) -> str:
    parts = urlsplit(href)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in _SAS_KEYS]
    return urlunsplit(parts._replace(query=urlencode(query)))


class PlanetaryComputerSigner:
    """Sign Azure Blob hrefs with Planetary Computer SAS tokens that have ``min_ttl`` seconds left.

    Picklable (it holds only ``min_ttl``), so it can travel in a Dask graph; hrefs outside Azure Blob
    Storage are returned unchanged.
    """

    def __init__(self, min_ttl: float = 900.0) -> None:
        self.min_ttl = float(min_ttl)
        _planetary_computer()

    def __repr__(self) -> str:
        return f"PlanetaryComputerSigner(min_ttl={self.min_ttl:g})"

    def __call__(self, href: str) -> str:
        """Return ``href`` signed with a current token (an older token in it is replaced)."""
        if not urlsplit(href).netloc.endswith(_BLOB_DOMAIN):
            return href
        pc = _planetary_computer()
        from planetary_computer.sas import TOKEN_CACHE
        from planetary_computer.settings import Settings
        from planetary_computer.utils import parse_blob_url

        href = _without_sas(href)
        account, container = parse_blob_url(urlsplit(href))
        cached = TOKEN_CACHE.get(f"{Settings.get().sas_url}/{account}/{container}")
        if cached is not None and cached.ttl() < self.min_ttl:
            logger.debug(
                "SAS token for %s/%s expires in %.0f s: fetching a new one", account, container, cached.ttl()
            )
            TOKEN_CACHE.pop(f"{Settings.get().sas_url}/{account}/{container}", None)
        try:
            return str(pc.sign_url(href))
        except Exception as exc:  # requests.HTTPError, connection errors
            raise InvalidInputError(
                f"Planetary Computer signing failed for {href} (token endpoint {Settings.get().sas_url}): "
                f"{type(exc).__name__}: {exc}. Check the network and PC_SDK_SUBSCRIPTION_KEY."
            ) from exc

    def modify(self, obj: Any) -> None:
        """Sign every asset href of an item, item collection or collection in place.

        The signature of ``pystac_client.Client.open(..., modifier=...)``.
        """
        import pystac

        items = [obj] if isinstance(obj, pystac.Item) else getattr(obj, "items", None)
        if items is None and isinstance(obj, pystac.Collection):
            items = []
        for item in items or []:
            for asset in item.assets.values():
                asset.href = self(asset.href)
        for asset in obj.assets.values() if isinstance(obj, pystac.Collection) else ():
            asset.href = self(asset.href)


def sign_items(items: Sequence[Any], signer: Callable[[str], str] | None) -> list[Any]:
    """Return copies of ``items`` with asset hrefs signed by ``signer`` (unchanged without one).

    Sign right before the load graph of a tile and season is built (``load_scenes(sign_items(...))``):
    the graph then carries URLs that are valid for at least the signer's ``min_ttl``, whichever loader
    (odc-stac or stackstac) builds it and wherever its tasks run.
    """
    if signer is None:
        return list(items)
    out = []
    for item in items:
        copy = item.clone()
        for asset in copy.assets.values():
            asset.href = signer(asset.get_absolute_href() or asset.href)
        out.append(copy)
    return out


def _planetary_computer() -> Any:
    try:
        import planetary_computer
    except ImportError as exc:
        raise MissingDependencyError(
            "planetary-computer", "planetary", "`stac: {modifier: planetary_computer}`"
        ) from exc
    return planetary_computer


def signer_for(source: StacSource | None) -> PlanetaryComputerSigner | None:
    """Return the signer a source asks for, or None (no signing)."""
    if source is None or source.modifier is None:
        return None
    return PlanetaryComputerSigner(min_ttl=source.min_ttl)


def client_modifier(source: StacSource | None) -> Callable[[Any], None] | None:
    """Return ``modifier=`` for ``pystac_client.Client.open`` (signs search results), or None."""
    signer = signer_for(source)
    return None if signer is None else signer.modify
