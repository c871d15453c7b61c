"""Shared fixtures: store factories for the backends under test."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from threadline.testing import StoreFactory

#: Names this test run gives its PostgreSQL schemas contain this token, so that the run drops
#: its own leftovers at the end and never another concurrent run's (a benchmark, a CI check).
RUN_TOKEN = f"r{uuid.uuid4().hex[:8]}"


def unique_name(prefix: str) -> str:
    """A fresh schema or database name of this test run: ``<prefix>_<run token><random>``."""
    return f"{prefix}_{RUN_TOKEN}{uuid.uuid4().hex[:8]}"


@pytest.fixture
def memory_factory() -> Iterator[StoreFactory]:
    with StoreFactory(lambda n: "memory://") as factory:
        yield factory


@pytest.fixture
def sqlite_factory(tmp_path: Path) -> Iterator[StoreFactory]:
    with StoreFactory(lambda n: f"sqlite:///{tmp_path}/store{n}.db") as factory:
        yield factory


def sqlite_back_to_schema_3(path: str | Path) -> None:
    """Rewrite a SQLite store as threadline's schema version 3 left it: checkpoints keyed by
    (id, tkey) with a per-thread index (version 4 clusters them by thread)."""
    columns = (
        "id, tkey, bkey, parent, merge_parent, kind, status, created_at, expires_at, "
        "restore_count, logical_size, stored_size, milestone, header, manifest"
    )
    conn = sqlite3.connect(str(path))
    try:
        conn.executescript(
            f"""
            BEGIN;
            CREATE TABLE v3 AS SELECT {columns} FROM checkpoints;
            DROP TABLE checkpoints;
            CREATE TABLE checkpoints (
                id BLOB NOT NULL, tkey INTEGER NOT NULL, bkey INTEGER NOT NULL, parent BLOB,
                merge_parent BLOB, kind INTEGER NOT NULL, status INTEGER NOT NULL DEFAULT 0,
                created_at INTEGER NOT NULL, expires_at INTEGER,
                restore_count INTEGER NOT NULL DEFAULT 0, logical_size INTEGER NOT NULL,
                stored_size INTEGER NOT NULL, milestone TEXT, header BLOB NOT NULL,
                manifest BLOB NOT NULL, PRIMARY KEY (id, tkey)
            ) WITHOUT ROWID;
            INSERT INTO checkpoints SELECT * FROM v3;
            DROP TABLE v3;
            CREATE INDEX checkpoints_by_thread ON checkpoints (tkey, id);
            CREATE UNIQUE INDEX checkpoints_milestone ON checkpoints (tkey, milestone)
                WHERE milestone IS NOT NULL;
            CREATE INDEX checkpoints_expiry ON checkpoints (expires_at) WHERE expires_at IS NOT NULL;
            UPDATE threadline_meta SET value = '3' WHERE key = 'schema_version';
            COMMIT;
            """
        )
    finally:
        conn.close()


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


POSTGRES_URL = os.environ.get("THREADLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL. Skips when no server answers, except in CI (``CI`` set), where it fails."""
    try:
        import psycopg

        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must test the PostgreSQL backend, but {POSTGRES_URL} is unreachable: {exc}")
        pytest.skip(f"no PostgreSQL server at {POSTGRES_URL}: {exc}")
    return POSTGRES_URL


def with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


@pytest.fixture
def postgres_factory(postgres_url: str) -> Iterator[StoreFactory]:
    """Stores in fresh schemas ``t_<random>`` of the test database, dropped at teardown."""
    import psycopg

    schemas: list[str] = []

    def make_url(n: int) -> str:
        schemas.append(unique_name("t"))
        return with_schema(postgres_url, schemas[-1])

    with StoreFactory(make_url) as factory:
        yield factory
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str, str], str]]:
    """``backend_url(kind, name)``: a fresh store URL of a backend kind (memory, sqlite, postgres).

    PostgreSQL stores get their own schema, dropped at teardown.
    """
    schemas: list[str] = []

    def make(kind: str, name: str = "t") -> str:
        if kind == "memory":
            return "memory://"
        if kind == "sqlite":
            return f"sqlite:///{tmp_path}/{name}.db"
        base = request.getfixturevalue("postgres_url")
        schemas.append(unique_name("t"))
        return with_schema(base, schemas[-1])

    yield make
    if schemas:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="session", autouse=True)
def _drop_test_schemas() -> Iterator[None]:
    """Drop the PostgreSQL schemas this test run created (their names hold ``RUN_TOKEN``).

    Schemas of other runs (a concurrent test run, a crash suite, a benchmark) are left alone.
    """
    yield
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3) as conn:
            rows = conn.execute(
                "SELECT nspname FROM pg_namespace WHERE strpos(nspname, %s) > 0", (RUN_TOKEN,)
            ).fetchall()
            for (name,) in rows:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    except Exception:  # no server, or no driver: nothing to drop
        return


def postgres_available() -> bool:
    """Whether PostgreSQL suites run: when its backend imports and (outside CI) a server answers.

    In CI (``CI`` set) they always run, so an unreachable server fails them instead of skipping.
    """
    try:
        importlib.import_module("threadline.storage.postgres")
    except ImportError:
        return False
    if os.environ.get("CI"):
        return True
    try:
        import psycopg

        psycopg.connect(POSTGRES_URL, connect_timeout=2).close()
    except Exception:
        return False
    return True


def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` (the long-run harnesses the tests drive in short settings)."""
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
