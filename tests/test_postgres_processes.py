"""Several OS processes on one PostgreSQL store: migrations on open, branch heads, compare-and-set."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from conftest import unique_name, with_schema
from threadline import open_store
from threadline.errors import Conflict
from threadline.storage.postgres import SCHEMA_VERSION

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PROCESSES = 4
WRITES = 25


@pytest.fixture
def url(postgres_url: str) -> Iterator[str]:
    name = unique_name("t")
    yield with_schema(postgres_url, name)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def open_worker(url: str, barrier: Any) -> int:
    barrier.wait()
    with open_store(url) as store:
        return store.repository.schema_version()


def append_worker(url: str, worker: int, writes: int) -> int:
    with open_store(url) as store:
        for i in range(writes):
            store.checkpoints.create("shared", {"worker": worker, "i": i, "log": [worker, i]})
    return writes


def cas_worker(url: str, worker: int, attempts: int) -> tuple[list[str], int]:
    won: list[str] = []
    conflicts = 0
    with open_store(url) as store:
        for i in range(attempts):
            head = store.checkpoints.latest("cas")
            expected = head.id if head else None
            try:
                c = store.checkpoints.create("cas", {"worker": worker, "i": i}, expected_head=expected)
            except Conflict as exc:
                assert exc.expected == expected and exc.actual != expected
                conflicts += 1
            else:
                assert c.parent_id == expected
                won.append(c.id)
    return won, conflicts


def test_processes_opening_a_new_store_at_once_migrate_it_once(url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(PROCESSES)
        with ctx.Pool(PROCESSES) as pool:
            versions = pool.starmap(open_worker, [(url, barrier)] * PROCESSES)
    assert versions == [SCHEMA_VERSION] * PROCESSES
    with open_store(url) as store:
        assert store.repository.schema_version() == SCHEMA_VERSION


def test_unconditional_writers_in_processes_make_one_chain(url: str) -> None:
    with open_store(url) as store:
        store.checkpoints.create_thread("shared")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(PROCESSES) as pool:
        written = pool.starmap(append_worker, [(url, w, WRITES) for w in range(PROCESSES)])
    assert sum(written) == PROCESSES * WRITES
    with open_store(url) as store:
        everything = list(store.checkpoints.iter("shared"))
        assert len(everything) == PROCESSES * WRITES
        parents = [c.parent_id for c in everything]
        assert len(set(parents)) == len(parents), "two checkpoints share a parent: the branch forked"
        assert sum(p is None for p in parents) == 1
        history = store.checkpoints.history("shared", limit=PROCESSES * WRITES + 1).items
        assert len(history) == PROCESSES * WRITES


def test_compare_and_set_from_processes_never_loses_a_write(url: str) -> None:
    with open_store(url) as store:
        store.checkpoints.create_thread("cas")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(PROCESSES) as pool:
        results = pool.starmap(cas_worker, [(url, w, WRITES) for w in range(PROCESSES)])
    won = [cid for ids, _ in results for cid in ids]
    assert sum(n for _, n in results) + len(won) == PROCESSES * WRITES
    with open_store(url) as store:
        chain = [c.id for c in store.checkpoints.history("cas", limit=len(won) + 1).items]
        assert sorted(chain) == sorted(won)
