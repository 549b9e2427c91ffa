"""Contract tests of lcstack.registry: one suite for the SQLite and the MongoDB backend.

The MongoDB backend runs against nx-27017 started on 127.0.0.1 (tests/mongo_server.py),
and against a real server too when LCSTACK_TEST_MONGO_URI is set.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import random
import sys
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lcstack.errors import InvalidInputError, RegistryError
from lcstack.registry import KINDS, MongoRegistry, Registry, SQLiteRegistry, open_registry

sys.path.insert(0, str(Path(__file__).parent))
from mongo_server import NxMongoServer, free_port, nx_executable  # noqa: E402

REAL_MONGO_URI = os.environ.get("LCSTACK_TEST_MONGO_URI")
BACKENDS = ["sqlite", "mongo-nx"] + (["mongo-real"] if REAL_MONGO_URI else [])


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nx_uri(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if nx_executable() is None:
        pytest.skip("nx-27017 is not installed (pip install 'lcstack[dev]')")
    with NxMongoServer(tmp_path_factory.mktemp("nx27017")) as server:
        yield server.uri


class Backend:
    """How to open (and reopen) one fresh, isolated registry."""

    def __init__(self, name: str, url: str, options: dict[str, Any]) -> None:
        self.name, self.url, self.options = name, url, options

    def open(self) -> Registry:
        return open_registry(self.url, **self.options)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path}/registry.db", {})
        return
    uri = REAL_MONGO_URI if request.param == "mongo-real" else request.getfixturevalue("nx_uri")
    database = f"lcstack_test_{uuid.uuid4().hex[:12]}"
    yield Backend(request.param, uri, {"database": database, "server_selection_timeout_ms": 5000})
    import pymongo

    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        client.drop_database(database)


@pytest.fixture
def registry(backend: Backend) -> Any:
    with backend.open() as reg:
        yield reg


# -- basic contract -------------------------------------------------------------------------------


def test_open_registry_returns_backend_class(backend: Backend, registry: Registry) -> None:
    assert isinstance(registry, Registry)
    expected = SQLiteRegistry if backend.name == "sqlite" else MongoRegistry
    assert type(registry) is expected
    registry.ping()


def test_insert_is_create_if_absent(registry: Registry) -> None:
    assert registry.insert("composites", "c1", {"status": "pending", "tile": "T1"}) is True
    assert registry.insert("composites", "c1", {"status": "failed", "tile": "T2"}) is False
    doc = registry.get("composites", "c1")
    assert doc is not None
    assert (doc["key"], doc["status"], doc["tile"]) == ("c1", "pending", "T1")
    assert registry.find("composites") == [doc]


def test_kinds_are_separate(registry: Registry) -> None:
    for kind in KINDS:
        assert registry.insert(kind, "same", {"kind": kind})
    for kind in KINDS:
        assert registry.get(kind, "same")["kind"] == kind  # type: ignore[index]


def test_put_get_roundtrip_keeps_created_at(registry: Registry) -> None:
    assert registry.get("models", "m1") is None
    first = registry.put("models", "m1", {"status": "pending", "old": 1})
    assert registry.get("models", "m1") == first
    time.sleep(0.002)
    second = registry.put("models", "m1", {"status": "complete", "metrics": {"oa": 0.9}})
    stored = registry.get("models", "m1")
    assert stored == second
    assert "old" not in stored  # put replaces the record's fields
    assert stored["status"] == "complete" and stored["metrics"] == {"oa": 0.9}
    assert stored["created_at"] == first["created_at"]
    assert stored["updated_at"] > first["updated_at"]
    # a record read back and written again keeps its identity fields
    again = registry.put("models", "m1", stored)
    assert again["created_at"] == first["created_at"] and again["key"] == "m1"


def test_update_sets_fields(registry: Registry) -> None:
    assert registry.update("maps", "missing", {"status": "complete"}) is False
    assert registry.get("maps", "missing") is None
    registry.insert("maps", "t1", {"status": "pending", "a": 1, "nested": {"x": 1}})
    before = registry.get("maps", "t1")
    time.sleep(0.002)
    assert registry.update("maps", "t1", {"b": [1, 2], "nested": {"y": 2}}) is True
    after = registry.get("maps", "t1")
    assert after["a"] == 1 and after["b"] == [1, 2] and after["nested"] == {"y": 2}
    assert after["created_at"] == before["created_at"]
    assert after["updated_at"] > before["updated_at"]


def test_compare_and_set_on_status(registry: Registry) -> None:
    registry.insert("composites", "c", {"status": "pending"})
    assert (
        registry.update("composites", "c", {"status": "complete", "by": 1}, expect_status="failed") is False
    )
    assert registry.get("composites", "c")["status"] == "pending"
    assert (
        registry.update("composites", "c", {"status": "complete", "by": 2}, expect_status="pending") is True
    )
    assert (
        registry.update("composites", "c", {"status": "complete", "by": 3}, expect_status="pending") is False
    )
    doc = registry.get("composites", "c")
    assert (doc["status"], doc["by"]) == ("complete", 2)
    assert registry.update("composites", "absent", {"status": "failed"}, expect_status="pending") is False
    registry.insert("composites", "no-status", {})
    assert registry.update("composites", "no-status", {"x": 1}, expect_status="pending") is False


def test_find_filters_and_orders_by_key(registry: Registry) -> None:
    keys = ["b", "a", "c10", "c2", "Z", "é", "ä", "中"]
    rng = random.Random(0)
    rng.shuffle(keys)
    for i, key in enumerate(keys):
        doc: dict[str, Any] = {"status": "complete" if i % 2 else "pending", "n": i % 3, "flag": i % 2 == 0}
        if i % 4 == 0:
            doc["tile"] = "T31"
        registry.insert("scenes", key, doc)
    everything = registry.find("scenes")
    assert [d["key"] for d in everything] == sorted(keys)  # code-point order in both backends
    complete = registry.find("scenes", status="complete")
    assert [d["key"] for d in complete] == sorted(k for i, k in enumerate(keys) if i % 2)
    both = registry.find("scenes", status="pending", n=0)
    assert [d["key"] for d in both] == sorted(k for i, k in enumerate(keys) if i % 2 == 0 and i % 3 == 0)
    # JSON types match exactly: True is not 1, "1" is not 1
    assert [d["key"] for d in registry.find("scenes", flag=True)] == sorted(keys[0::2])
    assert [d["key"] for d in registry.find("scenes", n=1)] == sorted(
        k for i, k in enumerate(keys) if i % 3 == 1
    )
    assert registry.find("scenes", n="1") == []
    assert registry.find("scenes", n=1.0) == registry.find("scenes", n=1)
    # None matches a missing field
    assert [d["key"] for d in registry.find("scenes", tile=None)] == sorted(
        k for i, k in enumerate(keys) if i % 4
    )
    assert [d["key"] for d in registry.find("scenes", key="é")] == ["é"]
    assert registry.find("scenes", status="failed") == []


def test_delete_and_delete_many(registry: Registry) -> None:
    for i in range(6):
        registry.insert("datasets", f"d{i}", {"status": "failed" if i < 4 else "complete", "tile": i % 2})
    assert registry.delete("datasets", "d0") is True
    assert registry.delete("datasets", "d0") is False
    assert registry.get("datasets", "d0") is None
    assert registry.delete_many("datasets", status="failed", tile=1) == 2
    assert [d["key"] for d in registry.find("datasets")] == ["d2", "d4", "d5"]
    assert registry.delete_many("datasets", status="pending") == 0
    assert registry.delete_many("datasets") == 3
    assert registry.find("datasets") == []
    assert registry.insert("datasets", "d0", {}) is True  # a deleted key can be created again


def test_timestamps_are_utc_iso(registry: Registry) -> None:
    before = datetime.now(UTC)
    registry.insert("scenes", "s", {"created_at": "1999", "updated_at": "1999"})  # owned by the registry
    doc = registry.get("scenes", "s")
    created = datetime.fromisoformat(doc["created_at"])
    assert created.utcoffset() is not None and created.utcoffset().total_seconds() == 0
    assert before <= created <= datetime.now(UTC)
    assert doc["updated_at"] == doc["created_at"]


def test_nested_and_non_ascii_roundtrip(registry: Registry) -> None:
    doc = {
        "status": "complete",
        "name": "Ñandú – 東京 – Zürich 🌍",
        "items": ["S2A_31TCJ_20240101", "S2B_31TCJ_20240111"],
        "params": {"mask": {"classes": [3, 8, 9], "dilation_m": 60.5}, "empty": {}, "none": None},
        "matrix": [[1, 2], [3, 4.25]],
        "ok": True,
        "big": 2**53,
        "neg": -1e-9,
        "tuple": (1, "a"),
    }
    registry.put("composites", "Ünïcode/κλειδί", doc)
    stored = registry.get("composites", "Ünïcode/κλειδί")
    expected = {**doc, "tuple": [1, "a"], "key": "Ünïcode/κλειδί"}
    assert {k: v for k, v in stored.items() if not k.endswith("_at")} == expected
    assert registry.find("composites", name="Ñandú – 東京 – Zürich 🌍")[0]["key"] == "Ünïcode/κλειδί"


def test_numpy_values_are_stored_as_json(registry: Registry) -> None:
    np = pytest.importorskip("numpy")
    registry.put("models", "np", {"oa": np.float32(0.5), "n": np.int64(3), "cm": np.eye(2, dtype="uint8")})
    stored = registry.get("models", "np")
    assert (stored["oa"], stored["n"], stored["cm"]) == (0.5, 3, [[1, 0], [0, 1]])
    assert type(stored["n"]) is int


def test_invalid_arguments(registry: Registry) -> None:
    with pytest.raises(InvalidInputError, match="unknown registry kind 'scene'"):
        registry.get("scene", "x")
    with pytest.raises(InvalidInputError, match="status 'running'"):
        registry.insert("scenes", "x", {"status": "running"})
    with pytest.raises(InvalidInputError, match="expect_status"):
        registry.update("scenes", "x", {}, expect_status="done")
    with pytest.raises(InvalidInputError, match="'key' field"):
        registry.put("scenes", "x", {"key": "y"})
    with pytest.raises(InvalidInputError, match="not JSON serialisable"):
        registry.put("scenes", "x", {"when": datetime.now(UTC)})
    with pytest.raises(InvalidInputError, match="not JSON serialisable"):
        registry.put("scenes", "x", {"nan": float("nan")})
    with pytest.raises(InvalidInputError, match="non-empty string"):
        registry.get("scenes", "")
    with pytest.raises(InvalidInputError, match="nested"):
        registry.find("scenes", params={"a": 1})
    with pytest.raises(InvalidInputError, match="field name"):
        registry.put("scenes", "x", {"a.b": 1})
    assert registry.get("scenes", "x") is None
    assert isinstance(InvalidInputError("x"), ValueError)


def test_persistence_across_reopen(backend: Backend) -> None:
    with backend.open() as reg:
        reg.insert("maps", "m", {"status": "pending", "path": "s3://b/m.tif"})
        reg.update("maps", "m", {"status": "complete"}, expect_status="pending")
    with backend.open() as reg:
        doc = reg.get("maps", "m")
        assert doc["status"] == "complete" and doc["path"] == "s3://b/m.tif"
        assert reg.insert("maps", "m", {}) is False


def test_registry_pickles_and_reconnects(registry: Registry) -> None:
    registry.insert("scenes", "p", {"v": 1})
    clone = pickle.loads(pickle.dumps(registry))
    try:
        assert repr(clone) == repr(registry)
        assert clone.get("scenes", "p")["v"] == 1
    finally:
        clone.close()
    registry.close()  # closed registries reconnect on use
    assert registry.get("scenes", "p")["v"] == 1


# -- concurrency ----------------------------------------------------------------------------------

N_KEYS = 50


def _insert_all(reg: Registry, worker: int) -> list[str]:
    keys = [f"k{i:02d}" for i in range(N_KEYS)]
    random.Random(worker).shuffle(keys)
    return [key for key in keys if reg.insert("composites", key, {"status": "pending", "worker": worker})]


def _claim_all(reg: Registry, worker: int, n_jobs: int) -> list[str]:
    jobs = [f"job{i:02d}" for i in range(n_jobs)]
    random.Random(1000 + worker).shuffle(jobs)
    return [
        job
        for job in jobs
        if reg.update("composites", job, {"status": "complete", "worker": worker}, expect_status="pending")
    ]


def _process_worker(
    url: str, options: dict[str, Any], worker: int, n_jobs: int, start_at: float
) -> tuple[list[str], list[str]]:
    # Runs in a fresh worker process: opens its own registry, as a dask worker would, and starts
    # at the same instant as the others so that their writes really overlap.
    with open_registry(url, **options) as reg:
        reg.ping()
        time.sleep(max(0.0, start_at - time.time()))
        return _insert_all(reg, worker), _claim_all(reg, worker, n_jobs)


def _warm_up() -> int:
    time.sleep(0.3)  # keep this worker busy so that each warm-up call lands on its own process
    return os.getpid()


N_PROCS = 4


def _check_inserts(reg: Registry, won: dict[int, list[str]]) -> None:
    all_won = [key for keys in won.values() for key in keys]
    assert sorted(all_won) == [f"k{i:02d}" for i in range(N_KEYS)]  # True exactly once per key
    docs = [d for d in reg.find("composites") if d["key"].startswith("k")]
    assert [d["key"] for d in docs] == [f"k{i:02d}" for i in range(N_KEYS)]  # stored exactly once
    for doc in docs:  # the stored record is the one whose insert returned True
        assert doc["key"] in won[doc["worker"]]


def _check_claims(reg: Registry, claimed: dict[int, list[str]], n_jobs: int) -> None:
    all_claimed = [job for jobs in claimed.values() for job in jobs]
    assert sorted(all_claimed) == [f"job{i:02d}" for i in range(n_jobs)]  # exactly one winner per job
    for worker, jobs in claimed.items():
        for job in jobs:
            doc = reg.get("composites", job)
            assert (doc["status"], doc["worker"]) == ("complete", worker)


def _run_threads(n_threads: int, target: Any) -> dict[int, list[str]]:
    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def work(worker: int) -> None:
        try:
            barrier.wait()
            results[worker] = target(worker)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results


def test_threads_insert_each_key_once(registry: Registry) -> None:
    won = _run_threads(8, lambda worker: _insert_all(registry, worker))
    _check_inserts(registry, won)


def test_threads_compare_and_set_has_one_winner(registry: Registry) -> None:
    n_jobs = 20
    for i in range(n_jobs):
        registry.insert("composites", f"job{i:02d}", {"status": "pending"})
    claimed = _run_threads(8, lambda worker: _claim_all(registry, worker, n_jobs))
    _check_claims(registry, claimed, n_jobs)


@pytest.fixture(scope="module")
def process_pool() -> Any:
    # Fresh processes (no inherited connections), as dask's nanny starts workers. forkserver
    # imports lcstack once and forks each worker from that, where spawn would re-import
    # xarray & co. in every worker (tens of seconds on a loaded 2-core machine).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["lcstack.registry", __name__])
    with ProcessPoolExecutor(max_workers=N_PROCS, mp_context=ctx) as pool:
        pids = {future.result(timeout=120) for future in [pool.submit(_warm_up) for _ in range(N_PROCS)]}
        assert os.getpid() not in pids
        yield pool


def test_processes_insert_and_claim_once(backend: Backend, registry: Registry, process_pool: Any) -> None:
    n_jobs = 20
    for i in range(n_jobs):
        registry.insert("composites", f"job{i:02d}", {"status": "pending"})
    start_at = time.time() + 1.0
    futures = {
        w: process_pool.submit(_process_worker, backend.url, backend.options, w, n_jobs, start_at)
        for w in range(N_PROCS)
    }
    results = {w: future.result(timeout=60) for w, future in futures.items()}  # re-raises worker errors
    _check_inserts(registry, {w: r[0] for w, r in results.items()})
    _check_claims(registry, {w: r[1] for w, r in results.items()}, n_jobs)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_reconnects(registry: Registry) -> None:
    registry.insert("scenes", "parent", {})  # the parent's connection now exists
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_forked_insert, args=(registry,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert registry.get("scenes", "child") is not None
    assert registry.insert("scenes", "after-fork", {}) is True


def _forked_insert(reg: Registry) -> None:
    if not reg.insert("scenes", "child", {"pid": os.getpid()}):
        raise SystemExit(1)


# -- claim / complete: the one pending -> complete protocol --------------------------------------


def test_update_expect_is_compare_and_set_on_fields(registry: Registry) -> None:
    registry.insert("maps", "m", {"status": "pending", "token": "a", "n": 1, "flag": True})
    assert registry.update("maps", "m", {"x": 1}, expect={"token": "b"}) is False
    assert registry.update("maps", "m", {"x": 1}, expect={"n": 2}) is False
    assert registry.update("maps", "m", {"x": 1}, expect={"token": "a"}, expect_status="complete") is False
    assert registry.get("maps", "m").get("x") is None
    assert registry.update("maps", "m", {"x": 2}, expect={"token": "a", "missing": None, "n": 1}) is True
    assert registry.get("maps", "m")["x"] == 2
    assert registry.update("maps", "absent", {"x": 1}, expect={"token": None}) is False
    with pytest.raises(InvalidInputError):
        registry.update("maps", "m", {"x": 1}, expect={"$where": 1})


def test_claim_records_owner_and_only_the_token_completes(registry: Registry) -> None:
    claim = registry.claim("composites", "c", {"tile": "T", "status": "complete", "token": "forged"})
    assert claim is not None
    doc = registry.get("composites", "c")
    assert (doc["status"], doc["tile"], doc["token"]) == ("pending", "T", claim.token)
    assert doc["owner"]["pid"] == os.getpid() and doc["owner"]["host"] and doc["owner"]["run"]
    assert doc["heartbeat"] and doc["lease_s"] > 0
    assert registry.claim("composites", "c") is None  # a live owner keeps it
    assert registry.complete("composites", "c", "not-the-token", {"n": 1}) is False
    assert registry.release("composites", "c", "not-the-token") is False
    before = registry.get("composites", "c")["heartbeat"]
    time.sleep(0.002)
    assert registry.heartbeat("composites", "c", claim.token) is True
    assert registry.get("composites", "c")["heartbeat"] > before
    claim.complete({"n": 1, "status": "failed"})  # protocol fields cannot be overridden
    doc = registry.get("composites", "c")
    assert (doc["status"], doc["n"]) == ("complete", 1)
    with pytest.raises(RegistryError, match="taken over"):
        claim.complete({"n": 2})  # a finished claim cannot complete twice
    assert registry.heartbeat("composites", "c", claim.token) is False
    assert registry.claim("composites", "c") is None  # complete: reuse, do not rewrite
    again = registry.claim("composites", "c", retake_complete=True)  # its output went missing
    assert again is not None and registry.get("composites", "c")["status"] == "pending"


def test_released_and_expired_claims_are_taken_over_once(registry: Registry) -> None:
    claim = registry.claim("models", "m", {"url": "x"})
    with pytest.raises(ValueError, match="boom"), claim:
        raise ValueError("boom")
    doc = registry.get("models", "m")
    assert doc["status"] == "failed" and "boom" in doc["error"]
    second = registry.claim("models", "m")
    assert second is not None and registry.get("models", "m")["error"] is None
    assert registry.complete("models", "m", claim.token) is False  # the old owner cannot finish

    stale = registry.claim("maps", "t", lease_s=0.0)  # a lease that has already run out
    assert stale is not None
    winners = _run_threads(8, lambda worker: [registry.claim("maps", "t")])
    took = [c for cs in winners.values() for c in cs if c is not None]
    assert len(took) == 1  # compare-and-set: one process takes an abandoned claim over
    assert registry.complete("maps", "t", stale.token) is False
    assert registry.complete("maps", "t", took[0].token) is True
    # a record left pending by an older lcstack (no owner, no token) is taken over too
    registry.put("datasets", "old", {"status": "pending", "url": "u"})
    assert registry.claim("datasets", "old") is not None


def _claim_and_die(url: str, options: dict[str, Any]) -> None:
    # Claims and ends without completing or releasing, as a SIGKILLed run does.
    with open_registry(url, **options) as reg:
        if reg.claim("composites", "dead", {"by": "child"}) is None:
            os._exit(3)
    os._exit(0)


def _claim_and_stay(url: str, options: dict[str, Any]) -> tuple[int, bool]:
    with open_registry(url, **options) as reg:
        return os.getpid(), reg.claim("composites", "alive", {"by": "worker"}) is not None


def test_claim_of_a_dead_process_is_taken_over_a_live_one_waited_for(
    backend: Backend, registry: Registry, process_pool: Any
) -> None:
    child = multiprocessing.get_context("forkserver").Process(
        target=_claim_and_die, args=(backend.url, backend.options)
    )
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert registry.get("composites", "dead")["owner"]["pid"] == child.pid
    assert registry.claim("composites", "dead") is not None  # its process is gone: take over at once

    pid, won = process_pool.submit(_claim_and_stay, backend.url, backend.options).result(timeout=60)
    assert won and pid != os.getpid()
    assert registry.claim("composites", "alive") is None  # the worker process still runs
    with pytest.raises(RegistryError, match=f"pid {pid}.*after 0.3 s"):
        registry.acquire("composites", "alive", timeout_s=0.3)


def test_acquire_waits_for_the_writer_then_reuses(registry: Registry) -> None:
    n = 6
    order: list[str] = []

    def work(worker: int) -> list[str]:
        claim = registry.acquire("maps", "shared", {"worker": worker})
        if claim is None:
            order.append(f"reused {worker}")
            return ["reused"]
        with claim:
            order.append(f"writing {worker}")
            time.sleep(0.3)  # others must wait this long, not write beside it
            order.append(f"done {worker}")
            claim.complete({"worker": worker})
        return ["wrote"]

    results = _run_threads(n, work)
    assert sorted(r[0] for r in results.values()) == ["reused"] * (n - 1) + ["wrote"]
    writer = next(w for w, r in results.items() if r == ["wrote"])
    assert order.index(f"done {writer}") < min(i for i, e in enumerate(order) if e.startswith("reused"))
    assert registry.get("maps", "shared")["worker"] == writer
    # a complete record whose output is gone is claimed again
    claim = registry.acquire("maps", "shared", usable=lambda rec: False)
    assert claim is not None and registry.get("maps", "shared")["token"] == claim.token


def _claim_keys(url: str, options: dict[str, Any], worker: int, start_at: float) -> list[str]:
    with open_registry(url, **options) as reg:
        reg.ping()
        time.sleep(max(0.0, start_at - time.time()))
        keys = [f"c{i:02d}" for i in range(N_KEYS // 2)]
        random.Random(worker).shuffle(keys)
        return [key for key in keys if reg.claim("composites", key, {"worker": worker}) is not None]


def test_processes_claim_each_key_once(backend: Backend, registry: Registry, process_pool: Any) -> None:
    start_at = time.time() + 1.0
    futures = [
        process_pool.submit(_claim_keys, backend.url, backend.options, w, start_at) for w in range(N_PROCS)
    ]
    won = {w: f.result(timeout=60) for w, f in enumerate(futures)}
    assert sorted(k for keys in won.values() for k in keys) == [f"c{i:02d}" for i in range(N_KEYS // 2)]
    for worker, keys in won.items():
        for key in keys:
            assert registry.get("composites", key)["worker"] == worker


# -- SQLite specifics -----------------------------------------------------------------------------


def test_open_registry_dispatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_registry("sqlite:///rel.db") as reg:
        assert reg.path == tmp_path / "rel.db"  # type: ignore[attr-defined]
    with open_registry(f"sqlite:///{tmp_path}/abs.db") as reg:
        assert reg.path == tmp_path / "abs.db"  # type: ignore[attr-defined]
    with open_registry(tmp_path / "plain.db") as reg:
        assert isinstance(reg, SQLiteRegistry)
    with open_registry(None, default_path=tmp_path / "default.db") as reg:
        assert reg.path == tmp_path / "default.db"  # type: ignore[attr-defined]
    with open_registry("", default_path=tmp_path / "default.db", collection_prefix="dev_") as reg:
        reg.insert("maps", "x", {})
    assert isinstance(open_registry("mongodb://127.0.0.1:1/"), MongoRegistry)  # lazy: no connection yet
    with pytest.raises(InvalidInputError, match="not supported"):
        open_registry("postgres://user:secret@db/x")
    with pytest.raises(InvalidInputError, match="default_path"):
        open_registry(None)
    with pytest.raises(InvalidInputError, match="in-memory"):
        open_registry("sqlite:///:memory:")


def test_sqlite_uses_wal_and_one_table_per_kind(tmp_path: Path) -> None:
    import sqlite3

    with SQLiteRegistry(tmp_path / "r.db", collection_prefix="p_") as reg:
        reg.insert("scenes", "a", {"status": "pending"})
    conn = sqlite3.connect(tmp_path / "r.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {f"p_{kind}" for kind in KINDS}
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT doc FROM p_scenes WHERE json_extract(doc, '$.\"status\"') = 'pending'"
        ).fetchall()
        assert "p_scenes_status" in str(plan)
    finally:
        conn.close()


def test_sqlite_missing_folder_is_a_registry_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="does not exist.*create it"):
        open_registry(tmp_path / "nope" / "registry.db")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RegistryError, match="not a folder"):
        open_registry(f"sqlite:///{tmp_path}/file/registry.db")
    (tmp_path / "garbage.db").write_bytes(b"this is not a sqlite database" * 100)
    with pytest.raises(RegistryError, match="garbage.db"):
        open_registry(tmp_path / "garbage.db")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_sqlite_read_only_folder_is_a_registry_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(RegistryError, match="not writable"):
            open_registry(folder / "registry.db")
    finally:
        folder.chmod(0o755)


# -- MongoDB specifics ----------------------------------------------------------------------------


def test_mongo_unreachable_ping_names_endpoint_without_credentials(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()  # nothing listens there
    url = f"mongodb://alice:s3cr%40t-pw@127.0.0.1:{port}/?authSource=admin"
    reg = open_registry(url, server_selection_timeout_ms=1000)
    assert "s3cr" not in repr(reg) and "alice" not in repr(reg)
    start = time.monotonic()
    with pytest.raises(RegistryError) as info:
        reg.ping()
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "MONGO_URI" in message and "server runs" in message
    with pytest.raises(RegistryError) as info2:
        reg.get("scenes", "x")
    for text in (message, str(info2.value), repr(reg), caplog.text, repr(info.value.__cause__)):
        assert "s3cr" not in text and "s3cr@t" not in text and "alice:" not in text
    assert info.value.__cause__ is None  # the pymongo error is not chained into tracebacks
    reg.close()


def test_mongo_redacts_srv_and_default_port() -> None:
    from lcstack.registry._base import redacted_endpoint, scrub, url_secrets

    assert (
        redacted_endpoint("mongodb+srv://u:secret@cluster0.example.net/db?x=1")
        == "mongodb+srv://cluster0.example.net"
    )
    assert redacted_endpoint("mongodb://u:secret@h1,h2:27018/db") == "mongodb://h1:27017,h2:27018"
    secrets = url_secrets("mongodb://u:p%40ss@h/")
    assert scrub("auth failed for u:p%40ss (p@ss)", secrets) == "auth failed for *** (***)"


def test_mongo_records_use_key_as_id_with_unique_indexes(backend: Backend, registry: Registry) -> None:
    if backend.name == "sqlite":
        pytest.skip("MongoDB storage layout")
    import pymongo

    registry.insert("scenes", "s1", {"status": "pending"})
    assert "_id" not in registry.get("scenes", "s1")
    with pymongo.MongoClient(backend.url, serverSelectionTimeoutMS=5000) as client:
        collection = client[backend.options["database"]]["scenes"]
        assert collection.find_one({"_id": "s1"})["key"] == "s1"
        indexes = list(collection.list_indexes())
        assert any(dict(ix["key"]) == {"key": 1} and ix.get("unique") for ix in indexes)
        assert any(dict(ix["key"]) == {"status": 1} for ix in indexes)
        with pytest.raises(pymongo.errors.DuplicateKeyError):
            collection.insert_one({"_id": "other", "key": "s1"})
