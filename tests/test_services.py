"""The whole workflow against real services over TCP: S3 (moto's server) and MongoDB (nx-27017).

``LCSTACK_TEST_S3_ENDPOINT`` / ``LCSTACK_TEST_MONGO_URI`` point the same tests at real servers.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pymongo
import pytest
import s3fs
import xarray as xr
from conftest import demo_skips
from mongo_server import NxMongoServer, nx_executable  # noqa: E402
from s3_server import S3Endpoint, s3_endpoint  # noqa: E402

from lcstack.config import load_config
from lcstack.errors import RegistryError, StorageError
from lcstack.pipeline import Workflow
from lcstack.settings import get_settings


@pytest.fixture(scope="module")
def s3() -> Any:
    with s3_endpoint() as endpoint:
        yield endpoint
        endpoint.cleanup()


@pytest.fixture(scope="module")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Any:
    real = os.environ.get("LCSTACK_TEST_MONGO_URI")
    if real:
        yield real
        return
    if nx_executable() is None:
        pytest.fail("nx-27017 is not installed; pip install -e '.[dev]'")
    with NxMongoServer(tmp_path_factory.mktemp("nx")) as server:
        yield server.uri


@pytest.fixture()
def services_env(s3: S3Endpoint, mongo_uri: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    database = f"lcstack_{uuid.uuid4().hex[:8]}"
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LCSTACK_MONGO_DATABASE", database)
    get_settings.cache_clear()
    yield database
    get_settings.cache_clear()
    with pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000) as client:
        client.drop_database(database)


def _config(area: Any, storage: str, registry: str) -> Any:
    return load_config(area.config, storage=storage, registry=registry)


def test_workflow_on_s3_and_mongodb(
    demo_area: Any, s3: S3Endpoint, mongo_uri: str, services_env: str, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = s3.create_bucket()
    cfg = _config(demo_area, f"s3://{bucket}/lc", mongo_uri)
    caplog.set_level(logging.DEBUG, logger="lcstack")
    with dask.config.set(scheduler="threads"), Workflow(cfg, progress=False) as wf:
        with demo_skips():
            first = wf.run()
        second = wf.run()
        model_url = wf.model_url()
    assert not any(r.reused for r in first)
    assert all(r.reused for r in second), "a second run of an unchanged config recomputes nothing"

    fs = s3.fs()
    keys = fs.find(f"{bucket}/lc")
    for folder in ("composites", "datasets", "models", "classification-maps"):
        assert any(k.startswith(f"{bucket}/lc/{folder}/") for k in keys), folder
    assert any(k.endswith("level1.tif") for k in keys) and any(k.endswith("model.skops") for k in keys)
    maps_zarr = next(k for k in keys if k.endswith("maps.zarr/.zmetadata")).rsplit("/", 1)[0]
    maps = xr.open_zarr(f"s3://{maps_zarr}", storage_options=s3.storage_options())
    assert maps["level1"].dtype == np.uint8 and int(maps["level1"].max()) > 1

    with pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000) as client:
        db = client[services_env]
        records = {name: list(db[name].find({}, {"_id": 0})) for name in db.list_collection_names()}
    for kind in ("scenes", "composites", "datasets", "models", "maps"):
        assert records.get(kind), f"no {kind} records in MongoDB"
    assert {r["status"] for r in records["composites"]} == {"complete"}
    assert {r["status"] for r in records["maps"]} == {"complete"}

    secret_places = json.dumps(records, default=str) + caplog.text
    meta = fs.cat_file(f"{model_url[len('s3://') :]}/metadata.json").decode()
    for secret in (s3.key, s3.secret):
        assert secret not in secret_places and secret not in meta


def test_embedded_defaults_need_no_server(demo_run: Any) -> None:
    area, cfg, results = demo_run
    assert Path(cfg.storage, "registry.sqlite").is_file()
    assert {r.step for r in results} == {"composite", "train", "classify"}


def test_preflight_mongodb_unreachable(demo_area: Any, tmp_path: Path) -> None:
    from mongo_server import free_port

    uri = f"mongodb://lcuser:hunter2secret@127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=1500"
    cfg = _config(demo_area, str(tmp_path / "out"), uri)
    with pytest.raises(RegistryError) as err, Workflow(cfg, progress=False) as wf:
        wf.run()
    msg = str(err.value)
    assert "127.0.0.1" in msg and "hunter2secret" not in msg
    assert not any((tmp_path / "out").rglob("*.zarr")), "no work before the pre-flight check"


def test_preflight_bucket_missing(demo_area: Any, s3: S3Endpoint, services_env: str, tmp_path: Path) -> None:
    cfg = _config(demo_area, "s3://no-such-bucket-lcstack/lc", f"sqlite:///{tmp_path}/reg.sqlite")
    with pytest.raises(StorageError) as err, Workflow(cfg, progress=False) as wf:
        wf.run()
    msg = str(err.value)
    assert "no-such-bucket-lcstack" in msg and s3.secret not in msg


def test_mongodb_authentication_failure_is_a_registry_error(
    demo_area: Any, mongo_uri: str, tmp_path: Path
) -> None:
    # nx-27017 has no users: pymongo's SCRAM handshake gets a reply without `payload` (a KeyError in
    # pymongo) where a real server refuses the credentials (OperationFailure 18): both are RegistryErrors.
    uri = mongo_uri.replace("mongodb://", "mongodb://lcuser:hunter2secret@", 1)
    cfg = _config(demo_area, str(tmp_path / "out"), uri)
    with pytest.raises(RegistryError) as err, Workflow(cfg, progress=False) as wf:
        wf.run()
    msg = str(err.value)
    assert "hunter2secret" not in msg and "127.0.0.1" in msg
    assert "authentication" in msg and "credentials" in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__, "no pymongo traceback"
    assert not any((tmp_path / "out").rglob("*.zarr")), "no work before the pre-flight check"


def test_static_catalog_on_s3_is_read_with_the_storage_options(
    demo_area: Any, s3: S3Endpoint, mongo_uri: str, services_env: str, tmp_path: Path
) -> None:
    """A static catalog on the custom S3 endpoint is opened with the same options as `storage`."""
    bucket = s3.create_bucket()
    fs = s3fs.S3FileSystem(**s3.storage_options())
    for path in (demo_area.root / "stac").rglob("*.json"):
        fs.put_file(str(path), f"{bucket}/stac/{path.relative_to(demo_area.root / 'stac').as_posix()}")
    cfg = load_config(
        demo_area.config,
        stac=f"s3://{bucket}/stac/catalog.json",
        storage=f"s3://{bucket}/lc",
        registry=mongo_uri,
    )
    local = load_config(demo_area.config, storage=str(tmp_path / "local"))
    with Workflow(cfg, progress=False) as wf, Workflow(local, progress=False) as ref:
        remote_scenes, local_scenes = wf.discover(), ref.discover()
    ids = {t: {s: [i.id for i in v] for s, v in seasons.items()} for t, seasons in remote_scenes.items()}
    assert ids == {
        t: {s: [i.id for i in v] for s, v in seasons.items()} for t, seasons in local_scenes.items()
    }
    assert all(ids[t][s] for t in ids for s in ids[t])
