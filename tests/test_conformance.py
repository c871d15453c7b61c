"""The shipped storage conformance suite, run against the memory and SQLite backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import sqlite_counts
from threadline import Store
from threadline.storage.memory import MemoryRepository
from threadline.storage.sqlite import SQLiteRepository
from threadline.testing import PartCounts, StoreConformance, StoreFactory


class TestMemory(StoreConformance):
    @pytest.fixture
    def store_factory(self, memory_factory: StoreFactory) -> StoreFactory:
        return memory_factory

    def stored_parts(self, store: Store) -> PartCounts:
        repo = store.repository
        assert isinstance(repo, MemoryRepository)
        return {
            "blobs": len(repo._blobs),
            "lists": len(repo._lists),
            "items": sum(len(lst.items) for lst in repo._lists.values()),
        }


class TestSQLite(StoreConformance):
    @pytest.fixture
    def store_factory(self, sqlite_factory: StoreFactory) -> StoreFactory:
        return sqlite_factory

    def stored_parts(self, store: Store) -> PartCounts:
        repo = store.repository
        assert isinstance(repo, SQLiteRepository) and isinstance(repo.path, Path)
        counts = sqlite_counts(repo.path)
        return {k: counts[k] for k in ("blobs", "thread_blobs", "lists", "items")}
