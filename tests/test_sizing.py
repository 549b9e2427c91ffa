"""Chunk sizes and worker settings derived from the memory budget."""

from __future__ import annotations

import pytest

from lcstack.cluster import worker_env
from lcstack.pipeline import auto_chunk_size


@pytest.mark.parametrize(
    ("budget", "expected"), [("512MB", 256), ("2GB", 512), ("4GB", 1024), ("16GB", 2048), (2 * 1024**3, 768)]
)
def test_chunk_size_follows_the_budget(budget: str | int, expected: int) -> None:
    assert auto_chunk_size(budget, n_time=4, n_features=75) == expected


def test_chunk_size_shrinks_with_more_features_or_scenes() -> None:
    few = auto_chunk_size("8GB", n_time=4, n_features=30)
    many = auto_chunk_size("8GB", n_time=4, n_features=300)
    deep = auto_chunk_size("8GB", n_time=200, n_features=30)
    assert many < few and deep < few
    assert all(size % 256 == 0 and 256 <= size <= 2048 for size in (few, many, deep))


def test_gdal_cache_sized_to_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    assert worker_env(2 * 1024**3) == {"GDAL_CACHEMAX": "256"}
    assert worker_env(64 * 1024**3) == {"GDAL_CACHEMAX": "512"}
    assert worker_env(100 * 1024**2) == {"GDAL_CACHEMAX": "32"}
    monkeypatch.setenv("GDAL_CACHEMAX", "64")
    assert worker_env(2 * 1024**3) == {"GDAL_CACHEMAX": "64"}
