"""Planetary Computer signing, offline: a token endpoint and a blob store that refuses unsigned reads."""

from __future__ import annotations

import datetime as dt
import json
import pickle
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine

from lcstack.errors import InvalidInputError
from lcstack.signing import PlanetaryComputerSigner, StacSource, client_modifier, signer_for, stac_source

pc = pytest.importorskip("planetary_computer")

KEY = "test-subscription-key"
HOST = "pcstore.blob.core.windows.net"
HREF = f"http://{HOST}/sentinel2-l2/T30SUF/B04.tif"


class _Handler(BaseHTTPRequestHandler):
    """Token endpoint at /api/sas/v1/token/<account>/<container>; any other URL is a proxied blob read."""

    server: _PCServer

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        if self.path.startswith("/api/sas/v1/token/"):
            return self._token()
        self._blob(body=True)

    def do_HEAD(self):
        self._blob(body=False)

    def _token(self):
        account, container = self.path.rsplit("/", 2)[-2:]
        if self.headers.get("Ocp-Apim-Subscription-Key") != KEY:
            return self._send(401, b"no key")
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.server.lifetime)
        sig = uuid.uuid4().hex
        self.server.tokens[sig] = expiry
        self.server.issued.append((account, container))
        token = f"sv=2024-05-04&se={expiry:%Y-%m-%dT%H:%M:%SZ}&sp=rl&sr=c&sig={sig}"
        body = json.dumps({"msft:expiry": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"), "token": token}).encode()
        self._send(200, body, "application/json")

    def _blob(self, *, body: bool):
        url = urlsplit(self.path)  # a proxy request carries the absolute URL
        sig = parse_qs(url.query).get("sig", [""])[0]
        expiry = self.server.tokens.get(sig)
        if url.netloc != HOST or expiry is None or expiry < dt.datetime.now(dt.UTC):
            self.server.refused += 1
            return self._send(403, b"AuthenticationFailed")
        data = self.server.files.get(url.path)
        if data is None:
            return self._send(404, b"BlobNotFound")
        rng = self.headers.get("Range")
        status, start, end = 200, 0, len(data) - 1
        if rng and rng.startswith("bytes="):
            first, _, last = rng[len("bytes=") :].partition("-")
            status, start = 206, int(first)
            end = min(int(last), len(data) - 1) if last else len(data) - 1
        self.send_response(status)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(data[start : end + 1])

    def _send(self, status: int, body: bytes, ctype: str = "text/plain"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _PCServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.tokens: dict[str, dt.datetime] = {}
        self.issued: list[tuple[str, str]] = []
        self.files: dict[str, bytes] = {}
        self.refused = 0
        self.lifetime = 3600.0


@pytest.fixture
def pc_server(tmp_path, monkeypatch):
    """The fake Planetary Computer, with one uint16 COG-like tiled GeoTIFF served at ``HREF``."""
    server = _PCServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    values = np.random.default_rng(0).integers(1, 10_000, (64, 96), dtype=np.uint16)
    path = tmp_path / "B04.tif"
    profile = dict(
        driver="GTiff",
        width=96,
        height=64,
        count=1,
        dtype="uint16",
        crs="EPSG:32630",
        transform=Affine(10, 0, 300_000, 0, -10, 4_100_000),
        tiled=True,
        blockxsize=32,
        blockysize=32,
        nodata=0,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values, 1)
    server.files[urlsplit(HREF).path] = path.read_bytes()
    port = server.server_address[1]
    monkeypatch.setenv("PC_SDK_SUBSCRIPTION_KEY", KEY)
    monkeypatch.setenv("PC_SDK_SAS_URL", f"http://127.0.0.1:{port}/api/sas/v1/token")
    # GDAL reaches the "blob store" through the local server acting as an HTTP proxy.
    monkeypatch.setenv("GDAL_HTTP_PROXY", f"127.0.0.1:{port}")
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    from planetary_computer.sas import TOKEN_CACHE
    from planetary_computer.settings import Settings

    Settings.get.cache_clear()
    TOKEN_CACHE.clear()
    yield server, values
    server.shutdown()
    server.server_close()
    Settings.get.cache_clear()
    TOKEN_CACHE.clear()


def _item() -> pystac.Item:
    item = pystac.Item(
        "S2_T30SUF_20240601",
        {"type": "Point", "coordinates": [-5.2, 37.0]},
        [-5.3, 36.9, -5.1, 37.1],
        dt.datetime(2024, 6, 1, tzinfo=dt.UTC),
        {},
    )
    item.properties.update(
        {
            "proj:code": "EPSG:32630",
            "proj:shape": [64, 96],
            "proj:transform": [10, 0, 300_000, 0, -10, 4_100_000],
        }
    )
    item.stac_extensions.append("https://stac-extensions.github.io/projection/v2.0.0/schema.json")
    item.add_asset("B04", pystac.Asset(HREF, media_type=pystac.MediaType.COG, roles=["data"]))
    return item


def test_unsigned_read_is_refused_and_signed_read_returns_the_pixels(pc_server):
    server, values = pc_server
    with pytest.raises(rasterio.errors.RasterioIOError):
        rasterio.open(f"/vsicurl/{HREF}")
    assert server.refused >= 1
    signed = PlanetaryComputerSigner()(HREF)
    assert "sig=" in signed and server.issued == [("pcstore", "sentinel2-l2")]
    with rasterio.open(f"/vsicurl/{signed}") as src:
        np.testing.assert_array_equal(src.read(1), values)


def test_odc_stac_load_with_the_signer_as_patch_url(pc_server):
    import dask
    import odc.stac

    server, values = pc_server
    signer = signer_for(stac_source({"url": "https://example.test/stac", "modifier": "planetary_computer"}))
    # The signer travels inside the Dask graph (and to distributed workers) by pickle.
    signer = pickle.loads(pickle.dumps(signer))
    ds = odc.stac.load([_item()], bands=["B04"], patch_url=signer, chunks={"x": 48, "y": 32})
    with dask.config.set(scheduler="threads"):
        got = ds["B04"].isel(time=0).values
    np.testing.assert_array_equal(got, values)
    unsigned = odc.stac.load([_item()], bands=["B04"], chunks={}, fail_on_error=True)
    with dask.config.set(scheduler="threads"), pytest.raises(Exception, match="(?i)403|not recognized|open"):
        unsigned["B04"].compute()


def test_tokens_close_to_expiry_are_replaced_and_stale_hrefs_re_signed(pc_server):
    server, values = pc_server
    first = PlanetaryComputerSigner(min_ttl=900)(HREF)  # the server's tokens live 3600 s
    assert PlanetaryComputerSigner(min_ttl=900)(first) == first  # still fresh: reused, not stacked
    assert len(server.issued) == 1
    # A run that needs more time left than the cached token has: a new token replaces the old one.
    later = PlanetaryComputerSigner(min_ttl=3700)(first)
    assert len(server.issued) == 2 and later != first and later.count("sig=") == 1
    server.tokens.pop(parse_qs(urlsplit(first).query)["sig"][0])  # the first token expires
    with pytest.raises(rasterio.errors.RasterioIOError):
        rasterio.open(f"/vsicurl/{first}")
    with rasterio.open(f"/vsicurl/{later}") as src:
        np.testing.assert_array_equal(src.read(1), values)


def test_client_modifier_signs_search_results(pc_server):
    modify = client_modifier(StacSource(url="https://example.test/stac", modifier="planetary_computer"))
    items = pystac.ItemCollection([_item(), _item()])
    modify(items)
    assert all("sig=" in i.assets["B04"].href for i in items)
    item = _item()
    modify(item)
    assert "sig=" in item.assets["B04"].href
    assert client_modifier(StacSource(url="x")) is None


def test_signing_errors_name_the_endpoint(pc_server, monkeypatch):
    monkeypatch.setenv("PC_SDK_SUBSCRIPTION_KEY", "wrong-key")
    from planetary_computer.settings import Settings

    Settings.get.cache_clear()
    with pytest.raises(InvalidInputError, match="signing failed .*127.0.0.1"):
        PlanetaryComputerSigner()(HREF)
    assert PlanetaryComputerSigner()("https://example.com/a.tif") == "https://example.com/a.tif"


def test_stac_source_forms_and_errors():
    assert stac_source("https://earth-search.aws.element84.com/v1").modifier is None
    assert stac_source(Path("catalog.json")).url == "catalog.json"
    src = stac_source({"url": "https://x/stac", "headers": {"Authorization": "Bearer t"}})
    assert src.headers == {"Authorization": "Bearer t"}
    with pytest.raises(InvalidInputError, match="modifier.*planetary_computer"):
        stac_source({"url": "https://x", "modifier": "planetary"}, where="config.yaml, line 1")
    with pytest.raises(InvalidInputError, match="config.yaml, line 1: .*urls"):
        stac_source({"urls": "https://x"}, where="config.yaml, line 1")
    with pytest.raises(InvalidInputError, match="expected a URL"):
        stac_source(3)


def test_load_scenes_of_signed_items_reads_the_pixels(pc_server):
    from odc.geo.geobox import GeoBox

    from lcstack.load import load_scenes
    from lcstack.signing import sign_items

    server, values = pc_server
    item = _item()
    gbox = GeoBox((64, 96), Affine(10, 0, 300_000, 0, -10, 4_100_000), "EPSG:32630")
    signed = sign_items([item], PlanetaryComputerSigner())
    assert item.assets["B04"].href == HREF  # the caller's items are left as they were
    ds = load_scenes(signed, gbox, bands=["red"], chunks={"x": 64, "y": 64}, eager=True)
    np.testing.assert_array_equal(ds["red"].isel(time=0).values, values)


def test_config_accepts_a_stac_mapping(tmp_path, demo_area):
    import yaml

    from lcstack.config import load_config

    raw = yaml.safe_load(Path(demo_area.config).read_text())
    base = Path(demo_area.config).parent
    for key in ("seasons", "points", "lc_labels", "sl_labels", "storage"):
        if key in raw:
            raw[key] = str((base / raw[key]).resolve())
    raw["stac"] = {
        "url": "https://planetarycomputer.example/api/stac/v1",
        "modifier": "planetary_computer",
        "headers": {"X-Test": "1"},
    }
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = load_config(cfg_path)
    assert cfg.stac == "https://planetarycomputer.example/api/stac/v1"
    assert cfg.stac_source.modifier == "planetary_computer" and cfg.stac_source.headers == {"X-Test": "1"}
    raw["stac"]["modifier"] = "pc"
    cfg_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InvalidInputError, match=r"config.yaml, line \d+, key 'stac': modifier"):
        load_config(cfg_path)
    raw["stac_source"] = "x"
    raw["stac"] = "https://x/stac"
    cfg_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InvalidInputError, match="unknown key 'stac_source'"):
        load_config(cfg_path)
