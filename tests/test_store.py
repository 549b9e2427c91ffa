"""lcstack.store against real HTTP endpoints on 127.0.0.1: moto's S3 server, a flaky proxy, a 403 server.

Set LCSTACK_TEST_S3_ENDPOINT (and LCSTACK_TEST_S3_KEY / _SECRET / _REGION) to run the S3 tests against
another endpoint, e.g. a local MinIO, instead of moto.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import sys
import time
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from lcstack.errors import StorageError
from lcstack.settings import Settings
from lcstack.store import KINDS, Storage, redact

sys.path.insert(0, str(Path(__file__).parent))
from s3_server import DenyServer, FlakyProxy, S3Endpoint, closed_port, s3_endpoint  # noqa: E402

# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3() -> Any:
    with s3_endpoint() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(s3: S3Endpoint) -> Any:
    name = s3.create_bucket()
    yield name
    s3.delete_bucket(name)
    s3.buckets.remove(name)


@pytest.fixture(scope="module")
def flaky(s3: S3Endpoint) -> Any:
    with FlakyProxy(s3.url, failures=0) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def deny() -> Any:
    with DenyServer() as server:
        yield server


@pytest.fixture
def backoff(monkeypatch: Any) -> list[float]:
    """botocore's retry delays, made deterministic and short: 0.02 * 2**n s instead of random() * 2**n."""
    from botocore.retries.standard import ExponentialBackoff

    delays: list[float] = []
    original = ExponentialBackoff.delay_amount

    def delay_amount(self: Any, context: Any) -> float:
        self._random = lambda: 0.02
        delay = float(original(self, context))
        delays.append(delay)
        return delay

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", delay_amount)
    return delays


def _storage(s3: S3Endpoint, root: str, *, endpoint: str | None = None, **extra: Any) -> Storage:
    opts = s3.storage_options(**extra)
    if endpoint is not None:
        opts["endpoint_url"] = endpoint
    return Storage(root, storage_options=opts)


def _composite(seed: int = 0, *, nan_block: bool = False) -> xr.Dataset:
    """A tiny composite shaped like lcstack's: (season, band, y, x), dask-backed, with spatial_ref."""
    bands = np.array(["blue", "green", "red", "nir", "ndvi"])
    ny, nx = 6, 8
    values = np.random.default_rng(seed).random((1, len(bands), ny, nx), dtype=np.float32)
    if nan_block:
        values[:, :, :3, :4] = np.nan  # exactly one (y, x) chunk of all bands
    ds = xr.Dataset(
        {
            "composite": (("season", "band", "y", "x"), da.from_array(values, chunks=(1, 5, 3, 4))),
            "valid_count": (("season", "y", "x"), da.full((1, ny, nx), 7, dtype=np.uint8, chunks=(1, 3, 4))),
        },
        coords={
            "season": ["spring"],
            "band": bands,
            "y": 5_000_000.0 - 10.0 * np.arange(ny) - 5.0,
            "x": 600_000.0 + 10.0 * np.arange(nx) + 5.0,
            "spatial_ref": xr.DataArray(
                np.int32(0), attrs={"crs_wkt": "EPSG:32633", "spatial_ref": "EPSG:32633"}
            ),
        },
        attrs={"lcstack_version": "0.0.test", "items": json.dumps(["S2A_1", "S2B_2"])},
    )
    return ds


# -- S3: bytes, files, layout ---------------------------------------------------------------------


def test_bytes_and_files_through_settings(
    s3: S3Endpoint, bucket: str, monkeypatch: Any, tmp_path: Path
) -> None:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    root = f"s3://{bucket}/runs/a"
    settings = Settings(_env_file=None)
    storage = Storage(root, storage_options=settings.storage_options(root))
    assert storage.storage_options["config_kwargs"]["s3"] == {"addressing_style": "path"}
    assert storage.storage_options["config_kwargs"]["retries"]["mode"] == "standard"

    url = storage.url("datasets", "metrics.json")
    assert url == f"s3://{bucket}/runs/a/datasets/metrics.json"
    assert not storage.exists(url) and storage.modified(url) is None
    storage.write_bytes(url, b'{"a": 1}')
    assert storage.read_bytes(url) == b'{"a": 1}'
    assert storage.exists(url)
    first = storage.modified(url)
    assert first is not None and abs(first - time.time()) < 120
    storage.write_bytes(url, b'{"a": 2}')  # overwrite = one PUT: readers see old or new, nothing else
    assert storage.read_bytes(url) == b'{"a": 2}'

    local = tmp_path / "level1.tif"
    local.write_bytes(b"II*\x00" + bytes(range(256)) * 64)
    cog = storage.url("classification-maps", "model_x", "tile", "level1.tif")
    storage.put_file(local, cog)
    assert storage.read_bytes(cog) == local.read_bytes()
    # Nothing but the final objects: no temporary names left behind.
    assert sorted(s3.fs().find(bucket)) == [
        f"{bucket}/runs/a/classification-maps/model_x/tile/level1.tif",
        f"{bucket}/runs/a/datasets/metrics.json",
    ]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.url("datasets", "missing.json"))
    assert storage.remove(f"s3://{bucket}/runs/a") is True
    assert storage.remove(f"s3://{bucket}/runs/a") is False
    assert not storage.exists(url)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_outputs_written_by_a_library_land_whole_or_not_at_all(
    s3: S3Endpoint, bucket: str, tmp_path: Path, where: str
) -> None:
    """open_output: the scratch file lands at the URL only when the block succeeds; no scratch is left."""
    storage = _storage(s3, f"s3://{bucket}/r") if where == "s3" else Storage(tmp_path / "r")
    url = storage.url("classification-maps", "m", "t", "level1.tif")
    with storage.open_output(url, suffix=".tif") as scratch:
        assert scratch.endswith(".tif") and not storage.exists(url)
        Path(scratch).write_bytes(b"first")
        (Path(scratch).parent / "blocks.tif").write_bytes(b"side file")  # the caller's own scratch
    assert storage.read_bytes(url) == b"first" and not Path(scratch).parent.exists()
    with pytest.raises(RuntimeError), storage.open_output(url) as scratch:
        Path(scratch).write_bytes(b"half")
        raise RuntimeError("GDAL failed")
    assert storage.read_bytes(url) == b"first", "a failed write leaves the old object"
    assert not Path(scratch).parent.exists()
    with storage.open_input(url) as fh:
        assert fh.read(2) == b"fi" and fh.read() == b"rst"
    assert storage.info(url)["size"] == 5
    names = [posixpath.basename(str(e["name"])) for e in storage.listing(posixpath.dirname(url))]
    assert names == ["level1.tif"], "nothing but the final file (no temporary names)"
    with pytest.raises(FileNotFoundError):
        storage.info(storage.join(posixpath.dirname(url), "none.tif"))
    one = Storage.for_url(url, storage.storage_options)
    assert one.read_bytes(url) == b"first"


def test_bucket_per_kind_layout(s3: S3Endpoint) -> None:
    buckets = {kind: s3.create_bucket() for kind in KINDS}
    storage = Storage(
        f"s3://{buckets['composites']}",
        storage_options=s3.storage_options(),
        layout={kind: f"s3://{b}" for kind, b in buckets.items()},
    )
    storage.check()
    for kind in KINDS:
        storage.write_bytes(storage.url(kind, "x", "obj.bin"), kind.encode())
    fs = s3.fs()
    for kind, b in buckets.items():
        # The pre-flight probe objects are gone; each kind's object is in its own bucket.
        assert fs.find(b) == [f"{b}/x/obj.bin"]
        assert fs.cat_file(f"{b}/x/obj.bin") == kind.encode()


# -- S3: Zarr ---------------------------------------------------------------------------------------


def test_zarr_round_trip_with_plain_xarray_and_clean_rewrite(s3: S3Endpoint, bucket: str) -> None:
    storage = _storage(s3, f"s3://{bucket}/lc")
    ds = _composite(seed=1)
    url = storage.url("composites", "32633_600000_5000000", "spring_abc.zarr")
    assert url == f"s3://{bucket}/lc/composites/32633_600000_5000000/spring_abc.zarr"
    storage.write_zarr(ds, url, progress=False)

    back = xr.open_zarr(url, storage_options=s3.storage_options(), consolidated=True)
    xr.testing.assert_identical(back.compute(), ds.compute())
    assert back["band"].values.tolist() == ["blue", "green", "red", "nir", "ndvi"]
    assert back["spatial_ref"].attrs["crs_wkt"] == "EPSG:32633"
    assert json.loads(back.attrs["items"]) == ["S2A_1", "S2B_2"]
    assert back["composite"].dtype == np.float32 and back["valid_count"].dtype == np.uint8

    stamp = storage.modified(url)
    assert stamp is not None and abs(stamp - time.time()) < 120
    # Opening, reading and checking write nothing: the stamp stays.
    xr.testing.assert_identical(storage.open_zarr(url).compute(), ds.compute())
    assert storage.exists(url)
    time.sleep(1.1)  # S3 LastModified has whole seconds
    assert storage.modified(url) == stamp

    # What an interrupted earlier write with another chunking could have left behind.
    stale = f"{bucket}/lc/composites/32633_600000_5000000/spring_abc.zarr/composite/0.0.9.9"
    s3.fs().pipe_file(stale, b"stale")
    new = _composite(seed=2, nan_block=True)
    storage.write_zarr(new, url, progress=False)
    assert storage.modified(url) > stamp
    assert stale not in s3.fs().find(url)
    back = xr.open_zarr(url, storage_options=s3.storage_options()).compute()
    # The all-NaN chunk is not written (empty chunks are skipped): an old chunk there would show.
    xr.testing.assert_identical(back, new.compute())
    assert np.isnan(back["composite"].values[:, :, :3, :4]).all()


def test_open_missing_zarr_is_storage_error(s3: S3Endpoint, bucket: str) -> None:
    storage = _storage(s3, f"s3://{bucket}")
    with pytest.raises(StorageError, match="no Zarr store"):
        storage.open_zarr(storage.url("composites", "nope.zarr"))


# -- pre-flight -------------------------------------------------------------------------------------


def test_check_passes_and_leaves_nothing(s3: S3Endpoint, bucket: str) -> None:
    storage = _storage(s3, f"s3://{bucket}/prefix")
    storage.check()
    storage.check(["models"], write=False)
    assert s3.fs().find(bucket) == []


def test_check_missing_bucket(s3: S3Endpoint) -> None:
    storage = _storage(s3, "s3://lcstack-no-such-bucket-4711/run")
    with pytest.raises(StorageError) as info:
        storage.check()
    msg = str(info.value)
    assert "lcstack-no-such-bucket-4711" in msg and "does not exist" in msg and s3.url in msg


def test_check_unreachable_endpoint(s3: S3Endpoint) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    storage = _storage(s3, "s3://some-bucket/run", endpoint=endpoint)
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        storage.check()
    assert time.monotonic() - start < 15
    msg = str(info.value)
    assert endpoint in msg and "some-bucket" in msg and "cannot reach" in msg
    assert "LCSTACK_S3_ENDPOINT_URL" in msg


def test_check_access_denied(s3: S3Endpoint, deny: DenyServer) -> None:
    storage = _storage(s3, "s3://locked-bucket/run", endpoint=deny.url)
    with pytest.raises(StorageError) as info:
        storage.check()
    msg = str(info.value)
    assert "access denied" in msg and deny.url in msg and "locked-bucket" in msg
    assert "AWS_ACCESS_KEY_ID" in msg


def test_check_local_folder(tmp_path: Path) -> None:
    Storage(tmp_path / "new" / "deeper").check()
    assert not (tmp_path / "new").exists()  # checking creates nothing
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StorageError, match="is a file"):
        Storage(tmp_path / "afile" / "sub").check()
    with pytest.raises(StorageError, match="is a file"):
        Storage(tmp_path / "afile").check()


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Any:
    """A folder nobody may write into, root included (``chattr +i`` as root, mode 0500 otherwise)."""
    import shutil
    import subprocess

    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:
        locked.chmod(0o500)
        yield locked
        locked.chmod(0o700)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(locked)], capture_output=True).returncode:
        pytest.skip("running as root on a file system without `chattr +i`: no folder is read-only")
    yield locked
    subprocess.run([chattr, "-i", str(locked)], check=True)


def test_check_local_folder_read_only(read_only_dir: Path) -> None:
    for where in (read_only_dir, read_only_dir / "out"):
        with pytest.raises(StorageError, match="not writable") as err:
            Storage(where).check()
        assert str(read_only_dir) in str(err.value)


def _cli_config(tmp_path: Path, storage: Path) -> Path:
    (tmp_path / "dataset.csv").write_text(
        "latitude;longitude;category\n36.7;-4.4;forest\n36.702;-4.402;forest\n36.71;-4.41;water\n36.712;-4.412;water\n"
    )
    (tmp_path / "seasons.json").write_text('{"spring": {"start": "2023-03-01", "end": "2023-05-31"}}')
    (tmp_path / "lc.json").write_text('{"forest": 2, "water": 7}')
    (tmp_path / "catalog.json").write_text(
        '{"type": "Catalog", "id": "empty", "stac_version": "1.0.0", "description": "x", "links": []}'
    )
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "stac: catalog.json\nseasons: seasons.json\npoints: dataset.csv\nlc_labels: lc.json\n"
        f"storage: {storage}\n"
    )
    return cfg


@pytest.mark.parametrize("case", ["file", "under a file", "read-only", "under read-only"])
def test_cli_unusable_storage_exits_2_naming_the_path(tmp_path: Path, read_only_dir: Path, case: str) -> None:
    from typer.testing import CliRunner

    from lcstack.cli import app

    afile = tmp_path / "afile"
    afile.write_text("x")
    storage, expected = {
        "file": (afile, "is a file"),
        "under a file": (afile / "out", "is a file"),
        "read-only": (read_only_dir, "not writable"),
        "under read-only": (read_only_dir / "out", "not writable"),
    }[case]
    cfg = _cli_config(tmp_path, storage)
    result = CliRunner().invoke(app, ["run", str(cfg), "--quiet", "--scheduler", "threads"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output
    assert expected in result.output and str(storage) in result.output
    assert "storage" in result.output  # what to change
    assert afile.read_text() == "x" and not any(read_only_dir.iterdir())


# -- retries ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["503", "500", "slowdown", "reset"])
def test_transient_errors_are_retried(
    s3: S3Endpoint, bucket: str, flaky: FlakyProxy, backoff: list[float], mode: str
) -> None:
    storage = _storage(s3, f"s3://{bucket}", endpoint=flaky.url)
    url = storage.url("datasets", f"{mode}.json")
    flaky.fail_next(2, mode)  # type: ignore[arg-type]
    storage.write_bytes(url, b"payload")
    assert flaky.failed == 2 and flaky.requests == 3
    # Exponential backoff; after a reset aiohttp may itself resend an idempotent request once.
    assert backoff == pytest.approx([0.02, 0.04][: len(backoff)]) and len(backoff) >= 1
    flaky.fail_next(2, mode)  # type: ignore[arg-type]
    assert storage.read_bytes(url) == b"payload"
    assert flaky.failed == 2


def test_zarr_write_survives_transient_errors(
    s3: S3Endpoint, bucket: str, flaky: FlakyProxy, backoff: list[float]
) -> None:
    storage = _storage(s3, f"s3://{bucket}", endpoint=flaky.url)
    url = storage.url("composites", "t", "flaky.zarr")
    flaky.fail_next(3, "503")
    storage.write_zarr(_composite(seed=3), url, progress=False)
    assert flaky.failed == 3
    back = xr.open_zarr(url, storage_options=s3.storage_options()).compute()
    xr.testing.assert_identical(back, _composite(seed=3).compute())


def test_persistent_errors_give_up_with_storage_error(
    s3: S3Endpoint, bucket: str, flaky: FlakyProxy, backoff: list[float]
) -> None:
    config = {"s3": {"addressing_style": "path"}, "retries": {"mode": "standard", "max_attempts": 3}}
    storage = _storage(s3, f"s3://{bucket}", endpoint=flaky.url, config_kwargs=config)
    flaky.fail_next(1000, "503")
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        storage.write_bytes(storage.url("datasets", "x.json"), b"x")
    assert time.monotonic() - start < 10
    assert flaky.requests == 4  # bounded: the first request and max_attempts retries
    assert backoff == pytest.approx([0.02, 0.04, 0.08])
    msg = str(info.value)
    assert flaky.url in msg and bucket in msg and "after retries" in msg
    flaky.fail_next(0)


# -- credentials ------------------------------------------------------------------------------------


def test_credentials_never_leak(
    s3: S3Endpoint, bucket: str, flaky: FlakyProxy, deny: DenyServer, backoff: list[float], caplog: Any
) -> None:
    key, secret = "AKIALCSTACKLEAKCHECK1", "lcstack/leak+check/secret-value-0123456789"
    down = f"http://127.0.0.1:{closed_port()}"
    few = {"s3": {"addressing_style": "path"}, "retries": {"mode": "standard", "max_attempts": 2}}

    def make(root: str, endpoint: str) -> Storage:
        return _storage(s3, root, endpoint=endpoint, key=key, secret=secret, config_kwargs=few)

    errors: list[BaseException] = []
    storages: list[Storage] = []

    def expect(fn: Any, exc: type[BaseException] = StorageError) -> None:
        with pytest.raises(exc) as info:
            fn()
        errors.append(info.value)

    caplog.set_level(logging.DEBUG, logger="lcstack")
    caplog.set_level(logging.INFO)
    ok = make(f"s3://{bucket}/leak", s3.url)
    missing = make("s3://lcstack-leak-no-bucket/x", s3.url)
    unreachable = make("s3://leak-bucket/x", down)
    denied = make("s3://leak-bucket/x", deny.url)
    flaky_store = make(f"s3://{bucket}/leak", flaky.url)
    storages += [ok, missing, unreachable, denied, flaky_store]

    ok.write_bytes(ok.url("datasets", "ok.json"), b"{}")
    ok.check()
    expect(lambda: ok.read_bytes(ok.url("datasets", "none.json")), FileNotFoundError)
    expect(lambda: ok.open_zarr(ok.url("composites", "none.zarr")))
    for storage in (missing, unreachable, denied):
        expect(storage.check)
        expect(lambda s=storage: s.read_bytes(s.url("datasets", "x.json")))
        expect(lambda s=storage: s.write_bytes(s.url("datasets", "x.json"), b"x"))
        expect(lambda s=storage: s.put_file(__file__, s.url("models", "x.bin")))
        expect(lambda s=storage: s.write_zarr(_composite(), s.url("composites", "c.zarr"), progress=False))
        expect(lambda s=storage: s.open_zarr(s.url("composites", "c.zarr")))
    for storage in (unreachable, denied):  # removing from a missing bucket is a no-op, not an error
        expect(lambda s=storage: s.remove(s.url("composites", "c.zarr")))
    assert missing.remove(missing.url("composites", "c.zarr")) is False
    flaky.fail_next(1000, "slowdown")
    expect(lambda: flaky_store.write_bytes(flaky_store.url("datasets", "x.json"), b"x"))
    flaky.fail_next(0)

    texts = [str(e) for e in errors] + [repr(e) for e in errors] + [repr(s) for s in storages]
    texts += [caplog.text, redact(f"s3://{key}:{secret}@host/bucket")]
    assert len(errors) == 2 + 3 * 6 + 2 + 1
    for text in texts:
        assert key not in text and secret not in text, text


def test_redact() -> None:
    assert redact("s3://bucket/prefix") == "s3://bucket/prefix"
    assert redact("mongodb://user:pw@host:27017/db") == "mongodb://***@host:27017/db"
    text = redact("see https://h/b/k?X-Amz-Signature=abc&X-Amz-Credential=AKIA/x&max-keys=1")
    assert "abc" not in text and "AKIA" not in text and "max-keys=1" in text
    assert repr(Storage("s3://u:p@bucket/x")) == "Storage('s3://***@bucket/x')"
