"""Shared fixtures: store factories for the backends under test."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from threadline.testing import StoreFactory


@pytest.fixture
def memory_factory() -> Iterator[StoreFactory]:
    with StoreFactory(lambda n: "memory://") as factory:
        yield factory


@pytest.fixture
def sqlite_factory(tmp_path: Path) -> Iterator[StoreFactory]:
    with StoreFactory(lambda n: f"sqlite:///{tmp_path}/store{n}.db") as factory:
        yield factory


def sqlite_counts(path: str | Path) -> dict[str, int]:
    """Rows of every table of a SQLite store, read with a separate connection."""
    conn = sqlite3.connect(str(path))
    try:
        tables = [
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        conn.close()
