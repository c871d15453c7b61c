"""PostgreSQL backend: the conformance suite, URLs and schemas, migrations, query plans, faults.

Needs a server (THREADLINE_TEST_POSTGRES_URL, default postgresql://postgres@127.0.0.1:5432/test);
skipped without one unless CI is set. Writers in several processes: test_postgres_processes.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg.sql
import psycopg_pool
import pytest

from conftest import unique_name, with_schema
from threadline import InvalidInput, SchemaError, StorageError, Store, open_store
from threadline.errors import Conflict, IntegrityError
from threadline.serde import KeyRing
from threadline.storage import postgres as pg
from threadline.storage.base import GcReport, ListRef, SyncPointRow
from threadline.storage.postgres import PostgresRepository
from threadline.testing import PartCounts, StoreConformance, StoreFactory
from threadline.testing.conformance import message, text

pytestmark = pytest.mark.postgres


def repo_of(store: Store) -> PostgresRepository:
    assert isinstance(store.repository, PostgresRepository)
    return store.repository


class TestPostgres(StoreConformance):
    @pytest.fixture
    def store_factory(self, postgres_factory: StoreFactory) -> StoreFactory:
        return postgres_factory

    def stored_parts(self, store: Store) -> PartCounts:
        repo = repo_of(store)
        return {
            t: repo._query(f"SELECT count(*) FROM {{s}}.{t}")[0][0]
            for t in ("blobs", "thread_blobs", "lists", "items")
        }


def general_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write on the general path, as before schema version 5 (no ``append_checkpoint``)."""
    monkeypatch.setattr(PostgresRepository, "_append_fast", lambda self, write, expected: None)
    monkeypatch.setattr(PostgresRepository, "_append_fast_many", lambda self, writes: None)


class TestPostgresGeneralPath(TestPostgres):
    """The suite again with every write on the general path, which the server-side
    ``append_checkpoint`` leaves some writes to (forks of lists, branch creation, several at once)."""

    @pytest.fixture
    def store_factory(self, postgres_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch) -> StoreFactory:
        general_path_only(monkeypatch)
        return postgres_factory


@pytest.fixture
def admin(postgres_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A separate autocommit connection to the test database."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def schema_url(postgres_url: str, admin: psycopg.Connection[Any]) -> Iterator[str]:
    """The URL of a fresh schema (not created yet), dropped at teardown."""
    name = unique_name("t")
    yield with_schema(postgres_url, name)
    admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


# ---------------------------------------------------------------- packaging


def test_import_threadline_does_not_import_psycopg() -> None:
    code = "import sys, threadline; assert not [m for m in sys.modules if m.startswith('psycopg')], 'psycopg'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- URLs, connection failures


@pytest.mark.parametrize(
    "bad",
    [
        "postgresql://127.0.0.1:notaport/test",
        "postgresql://127.0.0.1/test?schema=bad-name",
        "postgresql://127.0.0.1/test?schema=",
        "postgresql://127.0.0.1/test?pool_max=lots",
        "postgresql://127.0.0.1/test?pool_min=5&pool_max=2",
        "postgresql://127.0.0.1/test?no_such_libpq_option=1",
    ],
)
def test_malformed_urls_are_invalid_input(bad: str) -> None:
    with pytest.raises(InvalidInput):
        open_store(bad)


def test_missing_database_is_a_clear_storage_error(postgres_url: str) -> None:
    url = postgres_url.rsplit("/", 1)[0] + f"/no_such_db_{uuid.uuid4().hex[:6]}"
    with pytest.raises(StorageError, match=r"database .* does not exist.*createdb"):
        open_store(url)


def test_unknown_role_is_a_clear_storage_error(postgres_url: str) -> None:
    host = postgres_url.split("@", 1)[1]
    with pytest.raises(StorageError, match=r"role .* does not exist"):
        open_store(f"postgresql://nobody_{uuid.uuid4().hex[:6]}@{host}")


def test_unreachable_server_is_a_clear_storage_error() -> None:
    with pytest.raises(StorageError, match=r"server running"):
        open_store("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")


@pytest.fixture
def password_refusing_server() -> Iterator[int]:
    """A TCP server speaking just enough of the PostgreSQL protocol to refuse a password
    (the test cluster trusts every local connection, so it cannot refuse one itself)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                while True:
                    size = struct.unpack("!i", conn.recv(4))[0]
                    code = struct.unpack("!i", conn.recv(size - 4)[:4])[0]
                    if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: not offered
                        conn.sendall(b"N")
                        continue
                    conn.sendall(struct.pack("!ci", b"R", 8) + struct.pack("!i", 3))  # cleartext password
                    conn.recv(4096)
                    fields = b'SFATAL\0C28P01\0Mpassword authentication failed for user "someone"\0\0'
                    conn.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)
                    break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    listener.close()


def test_wrong_password_is_a_clear_storage_error_and_is_not_shown(password_refusing_server: int) -> None:
    url = f"postgresql://someone:s3cret@127.0.0.1:{password_refusing_server}/test?sslmode=disable"
    with pytest.raises(StorageError, match=r"password authentication failed.*check the user name") as info:
        open_store(url)
    assert "s3cret" not in str(info.value)


def test_shown_url_hides_the_password(schema_url: str) -> None:
    url = schema_url.replace("postgres@", "postgres:hunter2@", 1)
    with open_store(url) as store:
        assert "hunter2" not in store.url and ":***@" in store.url


# ---------------------------------------------------------------- schemas and migrations


def test_schemas_keep_stores_apart_in_one_database(postgres_factory: StoreFactory) -> None:
    a, b = postgres_factory(), postgres_factory()
    a.checkpoints.create_thread("t")
    a.checkpoints.create("t", {"x": 1})
    assert [t.id for t in a.checkpoints.list_threads().items] == ["t"]
    assert b.checkpoints.list_threads().items == []
    b.checkpoints.create_thread("t")  # the same id in another store
    assert b.checkpoints.latest("t") is None


def test_schema_is_created_and_migrated_once(schema_url: str, admin: psycopg.Connection[Any]) -> None:
    for _ in range(2):
        with open_store(schema_url) as store:
            assert repo_of(store).schema_version() == pg.SCHEMA_VERSION
            schema = repo_of(store).schema
    tables = admin.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", (schema,)).fetchone()
    assert tables is not None and tables[0] == 12


def test_newer_schema_is_refused(schema_url: str) -> None:
    with open_store(schema_url) as store:
        store.checkpoints.create_thread("t")
        repo = repo_of(store)
        repo._write(lambda c: repo._x(c, "UPDATE {s}.threadline_meta SET value = '99'"))
    with pytest.raises(SchemaError, match="newer threadline"):
        open_store(schema_url)


def test_schema_of_another_application_is_refused_untouched(
    postgres_url: str, admin: psycopg.Connection[Any]
) -> None:
    name = unique_name("t")
    admin.execute(f'CREATE SCHEMA "{name}"')
    admin.execute(f'CREATE TABLE "{name}".checkpoints (thread_id text, data jsonb)')
    try:
        with pytest.raises(SchemaError, match="not a threadline store"):
            open_store(with_schema(postgres_url, name))
        tables = admin.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (name,)).fetchall()
        assert tables == [("checkpoints",)]
    finally:
        admin.execute(f'DROP SCHEMA "{name}" CASCADE')


def test_value_columns_are_stored_without_toast_compression(schema_url: str) -> None:
    with open_store(schema_url) as store:
        repo = repo_of(store)
        rows = repo._query(
            "SELECT c.relname, a.attname, a.attstorage FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND a.attname IN ('data', 'value') "
            "AND c.relname <> 'threadline_meta'",
            (repo.schema,),
        )
    assert sorted((r[0], r[1], r[2]) for r in rows) == [
        ("blobs", "data", "e"),
        ("items", "data", "e"),
        ("pending_writes", "value", "e"),
    ]


def is_packed(repo: PostgresRepository, table: str) -> list[bool]:
    """Per row of ``table`` (items by position, blobs by hash): is its value stored compressed?"""
    order = "pos" if table == "items" else "hash"
    rows = repo._query(
        f"SELECT substring(data from 1 for 4) = %s FROM {{s}}.{table} ORDER BY {order}", (pg._ZSTD_MAGIC,)
    )
    return [r[0] for r in rows]


def test_version_3_store_migrates_and_keeps_its_values(
    schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"msgs": [message(i, 700) for i in range(3)], "doc": text(1000, 1)}
    with monkeypatch.context() as m:  # what threadline wrote before version 4: values as they are
        m.setattr(pg, "MIGRATIONS", pg.MIGRATIONS[:3])
        m.setattr(pg, "SCHEMA_VERSION", 3)
        m.setattr(pg, "_pack", lambda data: data)
        general_path_only(m)
        with open_store(schema_url) as old:
            assert repo_of(old).schema_version() == 3
            old.checkpoints.create_thread("t")
            first = old.checkpoints.create("t", state)
    with open_store(schema_url) as store:
        repo = repo_of(store)
        assert repo.schema_version() == pg.SCHEMA_VERSION == 5
        assert store.checkpoints.get_state(first.id) == state
        later = {"msgs": [*state["msgs"], message(3, 700)], "doc": text(1000, 2)}
        second = store.checkpoints.create("t", later)
        assert store.checkpoints.get_state(second.id) == later
        assert store.checkpoints.get_state(first.id) == state
        assert is_packed(repo, "items") == [False, False, False, True]
        assert sorted(is_packed(repo, "blobs")) == [False, True]


def test_version_4_store_migrates_to_the_append_function(
    schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"msgs": [message(i, 700) for i in range(3)], "doc": text(1000, 1), "n": 0}
    with monkeypatch.context() as m:  # what threadline wrote before version 5: no server function
        m.setattr(pg, "MIGRATIONS", pg.MIGRATIONS[:4])
        m.setattr(pg, "SCHEMA_VERSION", 4)
        general_path_only(m)
        with open_store(schema_url) as old:
            assert repo_of(old).schema_version() == 4
            assert not repo_of(old)._query("SELECT to_regproc('{s}.append_checkpoint') IS NOT NULL")[0][0]
            old.checkpoints.create_thread("t")
            first = old.checkpoints.create("t", state)
    with open_store(schema_url) as store:
        repo = repo_of(store)
        assert repo.schema_version() == pg.SCHEMA_VERSION == 5
        assert repo._query("SELECT to_regproc('{s}.append_checkpoint') IS NOT NULL")[0][0]
        later = {**state, "msgs": [*state["msgs"], message(3, 700)], "n": 1}
        second = store.checkpoints.create("t", later, expected_head=first.id)
        assert second.parent_id == first.id
        assert store.checkpoints.get_state(second.id) == later
        assert store.checkpoints.get_state(first.id) == state
        # the new write appended to the list and shared the blob the version 4 write stored
        assert repo._query("SELECT count(*), count(DISTINCT list_id) FROM {s}.items")[0] == (4, 1)
        assert repo._query("SELECT count(*) FROM {s}.blobs")[0][0] == 1
        with pytest.raises(Conflict):
            store.checkpoints.create("t", state, expected_head=first.id)


@pytest.mark.parametrize(
    ("data", "compressed"),
    [
        (b"", False),
        (b"\x00" + b"a" * 126, False),  # too short to try
        (b"\x00" + text(700, 2).encode(), True),
        (os.urandom(700), False),  # saves nothing
        (b"\x00" + b"y" * 9000, False),  # long values are the serializer's to compress
        (pg._ZSTD_MAGIC + b"not a frame", True),  # stored compressed whatever the saving
        (pg._ZSTD_MAGIC + os.urandom(20_000), True),
    ],
    ids=["empty", "short", "text", "random", "long", "magic", "magic long"],
)
def test_any_value_round_trips_packed(data: bytes, compressed: bool) -> None:
    packed = pg._pack(data)
    assert pg._unpack(packed, "value") == data
    assert packed.startswith(pg._ZSTD_MAGIC) == compressed
    assert compressed or packed == data


def test_values_are_stored_compressed_and_a_bad_frame_is_an_integrity_error(
    postgres_factory: StoreFactory,
) -> None:
    store = postgres_factory()
    repo = repo_of(store)
    store.checkpoints.create_thread("t")
    state = {"msgs": [message(i, 700) for i in range(4)], "tiny": [1, 2], "doc": text(3000, 3)}
    cp = store.checkpoints.create("t", state)
    assert sorted(is_packed(repo, "items")) == [False] * 2 + [True] * 4  # "tiny" items: too short
    stored = repo._query("SELECT sum(octet_length(data)) FROM {s}.items")[0][0]
    assert stored < 0.8 * 4 * 700
    assert store.checkpoints.get_state(cp.id) == state
    assert cp.stored_size > 4 * 700, "stored_size counts serialized bytes on every backend"
    repo._write(
        lambda c: repo._x(c, "UPDATE {s}.items SET data = %s WHERE pos = 2", (pg._ZSTD_MAGIC + b"\x00junk",))
    )
    with pytest.raises(IntegrityError, match=r"item 2 of list \d+ is corrupt"):
        store.checkpoints.get_state(cp.id)


def test_key_counts_and_rotation_read_frames_not_packed_bytes(
    postgres_factory: StoreFactory, schema_url: str
) -> None:
    plain = postgres_factory()
    plain.checkpoints.create_thread("p")
    plain.checkpoints.create("p", {"msgs": [message(j, 300) for j in range(3)]})
    assert is_packed(repo_of(plain), "items") == [True] * 3
    assert set(plain.checkpoints.keys_in_use()) == {None}
    ring = KeyRing.generate()
    with open_store(schema_url, keyring=ring) as store:
        core = store.checkpoints
        core.create_thread("t")
        ids = [
            core.create("t", {"msgs": [message(j, 300) for j in range(i + 2)], "n": i}).id for i in range(5)
        ]
        before = {cid: core.get_state(cid) for cid in ids}
        store.serializer.keyring = ring.rotated()
        assert core.rotate_keys(batch=3) > 5
        assert set(core.keys_in_use()) == {2}
        assert {cid: core.get_state(cid) for cid in ids} == before


# ---------------------------------------------------------------- existing connections and pools


def test_existing_connection_is_used_and_left_as_it_was(postgres_url: str, schema_url: str) -> None:
    schema = schema_url.rsplit("schema=", 1)[1]
    with psycopg.connect(postgres_url) as conn:  # not autocommit
        repo = PostgresRepository(connection=conn, schema=schema)
        store = Store(repo)
        store.checkpoints.create_thread("t")
        cp = store.checkpoints.create("t", {"msgs": [message(i) for i in range(5)]})
        assert store.checkpoints.get_state(cp.id)["msgs"][4] == message(4)
        store.close()
        assert not conn.closed and conn.autocommit is False
    with open_store(schema_url) as other:
        assert other.checkpoints.latest("t") is not None


def test_existing_pool_is_used_and_not_closed(postgres_url: str, schema_url: str) -> None:
    schema = schema_url.rsplit("schema=", 1)[1]
    with psycopg_pool.ConnectionPool(postgres_url, min_size=1, max_size=4) as pool:
        store = Store(PostgresRepository(pool=pool, schema=schema))
        store.checkpoints.create_thread("t")
        store.checkpoints.create("t", {"a": 1})
        assert store.checkpoints.stats().checkpoints == 1
        store.close()
        assert not pool.closed
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_give_exactly_one_source() -> None:
    with pytest.raises(InvalidInput):
        PostgresRepository()


# ---------------------------------------------------------------- query plans without statistics


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def _scans(
    conn: psycopg.Connection[Any], sql: str, types: str, args: tuple[Any, ...]
) -> list[tuple[str, str]]:
    """(node type, relation or index) of every scan, for the custom and the generic plan."""
    numbered = sql
    for i in range(1, sql.count("%s") + 1):
        numbered = numbered.replace("%s", f"${i}", 1)
    out: list[tuple[str, str]] = []
    for mode in ("force_custom_plan", "force_generic_plan"):
        conn.execute(f"SET plan_cache_mode = {mode}")
        conn.execute(f"PREPARE q({types}) AS {numbered}")
        try:
            values = psycopg.sql.SQL(", ").join(
                psycopg.sql.SQL("{}::{}").format(psycopg.sql.Literal(str(a)), psycopg.sql.SQL(t.strip()))
                for a, t in zip(args, types.split(","), strict=True)
            )
            raw = conn.execute(
                psycopg.sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE q({})").format(values)
            ).fetchone()
        finally:
            conn.execute("DEALLOCATE q")
        assert raw is not None
        plan = raw[0] if isinstance(raw[0], list) else json.loads(raw[0])
        for node in _plan_nodes(plan[0]["Plan"]):
            if "Scan" in node["Node Type"]:
                out.append((node["Node Type"], node.get("Index Name") or node.get("Relation Name", "")))
    return out


def test_reads_use_primary_keys_on_tables_without_statistics(
    postgres_factory: StoreFactory, postgres_url: str, admin: psycopg.Connection[Any]
) -> None:
    store = postgres_factory()
    repo = repo_of(store)
    cps = store.checkpoints
    cps.create_thread("deep")
    for _ in range(6):  # 1,200 checkpoints: enough pages that a sequential scan would show
        cps.create_many([{"thread_id": "deep", "state": {"n": i, "doc": "x" * 300}} for i in range(200)])
    latest = cps.latest("deep")
    assert latest is not None
    analyzed = admin.execute(
        "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = %s "
        "AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)",
        (repo.schema,),
    ).fetchone()
    assert analyzed == (0,), "the tables must be without statistics for this test"
    cid = uuid.UUID(latest.id)
    checks = {
        "get checkpoint": (repo.GET_CHECKPOINT_SQL, "uuid, text", (cid, "deep"), "checkpoints_pkey"),
        "branch head": (repo.GET_BRANCH_SQL, "text, text", ("main", "deep"), "branches_tkey_name_key"),
        "write lock": (repo.LOCK_BRANCH_SQL, "text, text", ("main", "deep"), "branches_tkey_name_key"),
    }
    for name, (sql, types, args, index) in checks.items():
        scans = _scans(admin, repo._sql(sql), types, args)
        assert ("Index Scan", index) in scans, f"{name}: {scans}"
        assert ("Index Scan", "threads_id_key") in scans, f"{name}: {scans}"
        assert not [s for s in scans if s[0] == "Seq Scan"], f"{name} scans a table: {scans}"


def test_history_walks_by_primary_key_on_tables_without_statistics(
    postgres_factory: StoreFactory, admin: psycopg.Connection[Any]
) -> None:
    """Each step of a history walk is a primary-key lookup: the planner must not turn the
    last lookup into a scan of every checkpoint of the thread (it did on fresh tables, and
    history 10 took 2.6x as long at depth 3,000 as at depth 10)."""
    store = postgres_factory()
    repo = repo_of(store)
    cps = store.checkpoints
    cps.create_thread("deep")
    for _ in range(6):
        cps.create_many([{"thread_id": "deep", "state": {"n": i, "doc": "x" * 300}} for i in range(200)])
    latest = cps.latest("deep")
    assert latest is not None
    sql = (
        repo._sql(repo.WALK_SQL)
        .replace("%(thread)s", "%s", 1)
        .replace("%(start)s", "%s", 1)
        .replace("%(limit)s", "%s", 1)
    )
    scans = _scans(admin, sql, "text, uuid, int", ("deep", uuid.UUID(latest.id), 11))
    on_checkpoints = [s for s in scans if s[1] in ("checkpoints", "checkpoints_pkey")]
    assert on_checkpoints and all(s[0] in ("Index Scan", "Index Only Scan") for s in on_checkpoints), scans
    assert cps.history("deep", limit=3).items[0].id == latest.id


def test_list_reads_use_the_item_key_on_tables_without_statistics(
    postgres_factory: StoreFactory, admin: psycopg.Connection[Any]
) -> None:
    store = postgres_factory()
    repo = repo_of(store)
    store.checkpoints.create_thread("t")
    msgs: list[Any] = []
    for i in range(300):
        msgs.append(message(i, 700))
        cp = store.checkpoints.create("t", {"msgs": msgs})
    ref = repo.get_checkpoint(cp.id, "t").manifest["msgs"]
    assert isinstance(ref, ListRef)
    sql = (
        repo._sql(repo.GET_ITEMS_SQL)
        .replace("%(n)s", "%s", 1)
        .replace("%(l)s", "%s", 1)
        .replace("%(hops)s", "%s")
    )
    scans = _scans(admin, sql, "int, bigint, int", (300, ref.list_id, 6))
    assert ("Index Scan", "items_pkey") in scans, scans
    assert not [s for s in scans if s == ("Seq Scan", "items")], scans


# ---------------------------------------------------------------- concurrency in one process


def test_sync_point_writes_all_or_nothing(postgres_factory: StoreFactory) -> None:
    store = postgres_factory()
    repo, cps = repo_of(store), store.checkpoints
    repo.create_session("s", created_at=1, metadata=b"", owner=None, policy=None)
    for tid in ("a", "b"):
        cps.create_thread(tid)
        cps.create(tid, {"v": 0})
    before = {tid: [c.id for c in cps.iter(tid)] for tid in ("a", "b")}
    point = SyncPointRow("s", "p1", 1, ())
    with pytest.raises(Conflict):
        cps.create_many(
            [
                {"thread_id": "a", "state": {"v": 1}},
                {"thread_id": "b", "state": {"v": 1}, "expected_head": str(uuid.uuid4())},
            ],
            sync_point=point,
        )
    assert {tid: [c.id for c in cps.iter(tid)] for tid in ("a", "b")} == before
    assert repo.list_sync_points("s") == []
    rows = cps.create_many(
        [{"thread_id": "a", "state": {"v": 2}}, {"thread_id": "b", "state": {"v": 2}}], sync_point=point
    )
    stored = repo.get_sync_point("s", "p1")
    assert stored.members == (("a", rows[0].id), ("b", rows[1].id))


def test_several_writes_in_one_call_are_one_transaction_of_server_calls(
    postgres_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = postgres_factory()
    cps = store.checkpoints
    for t in "abc":
        cps.create_thread(t)
    first = {t: cps.create(t, {"msgs": [message(0)], "n": 0}) for t in "abc"}
    calls: list[int] = []
    real = PostgresRepository._append_fast_many

    def counted(self: PostgresRepository, writes: Any) -> Any:
        rows = real(self, writes)
        calls.append(len(writes) if rows is not None else 0)
        return rows

    monkeypatch.setattr(PostgresRepository, "_append_fast_many", counted)
    later = {"msgs": [message(0), message(1)], "n": 1}
    rows = cps.create_many([{"thread_id": t, "state": later, "expected_head": first[t].id} for t in "cab"])
    assert calls == [3], "the server-side calls stored all three"
    assert [(r.thread_id, r.parent_id) for r in rows] == [(t, first[t].id) for t in "cab"]
    assert all(cps.get_state(r.id) == later for r in rows)
    # One refused write: nothing of the batch is stored, and the error is the general path's.
    with pytest.raises(Conflict, match="branch 'main' of thread 'b' moved"):
        cps.create_many(
            [
                {"thread_id": "a", "state": {**later, "n": 2}, "expected_head": rows[1].id},
                {"thread_id": "b", "state": {**later, "n": 2}, "expected_head": first["b"].id},
            ]
        )
    assert calls[-1] == 0
    assert [cps.latest(t).id for t in "cab"] == [r.id for r in rows]  # type: ignore[union-attr]
    # Two writes on one branch: the second continues the first (its list is forked by the general path).
    two = cps.create_many([{"thread_id": "a", "state": {**later, "n": n}} for n in (3, 4)])
    assert two[1].parent_id == two[0].id and two[0].parent_id == rows[1].id
    assert cps.get_state(two[1].id) == {**later, "n": 4}


def test_cleanup_of_one_thread_never_waits_on_writers_of_another(
    postgres_factory: StoreFactory, admin: psycopg.Connection[Any]
) -> None:
    """A collection holds its thread row locked; writers of other threads go on meanwhile."""
    store = postgres_factory()
    repo, cps = repo_of(store), store.checkpoints
    for tid in ("busy", "other"):
        cps.create_thread(tid)
        cps.create(tid, {"msgs": [message(i) for i in range(10)], "doc": "d" * 3000})
    admin.execute("BEGIN")
    admin.execute(
        repo._sql("SELECT 1 FROM {s}.threads WHERE id = 'busy' FOR UPDATE")
    )  # as a long cleanup does
    try:
        t0 = time.monotonic()
        cps.create("other", {"msgs": [message(i) for i in range(11)], "doc": "d" * 3000})
        assert time.monotonic() - t0 < 2
    finally:
        admin.execute("ROLLBACK")


# ---------------------------------------------------------------- faults


def _blocked_by(
    admin: psycopg.Connection[Any], blocker: int, timeout: float = 10, other_than: int = 0
) -> int:
    """The pid of the backend waiting on a lock that ``blocker`` holds (not ``other_than``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid)) AND pid <> %s",
            (blocker, other_than),
        ).fetchone()
        if row:
            return int(row[0])
        time.sleep(0.02)
    raise AssertionError("no backend got blocked")


def test_connection_killed_before_commit_is_retried(
    postgres_factory: StoreFactory, postgres_url: str
) -> None:
    store = postgres_factory()
    repo, cps = repo_of(store), store.checkpoints
    cps.create_thread("t")
    first = cps.create("t", {"n": 0})
    with (
        psycopg.connect(postgres_url, autocommit=True) as locker,
        psycopg.connect(postgres_url, autocommit=True) as admin,
    ):
        locker.execute("BEGIN")
        locker.execute(repo._sql("SELECT 1 FROM {s}.branches WHERE name = 'main' FOR UPDATE"))
        result: dict[str, Any] = {}
        writer = threading.Thread(target=lambda: result.update(cp=cps.create("t", {"n": 1})))
        writer.start()
        victim = _blocked_by(admin, locker.info.backend_pid)
        admin.execute("SELECT pg_terminate_backend(%s)", (victim,))
        _blocked_by(admin, locker.info.backend_pid, other_than=victim)  # the retry waits for the lock again
        locker.execute("COMMIT")
        writer.join(timeout=30)
    assert result["cp"].parent_id == first.id
    assert [c.id for c in cps.iter("t")] == [result["cp"].id, first.id]


def _wait_at_commit(repo: PostgresRepository, key: int) -> None:
    """A deferred trigger that waits for advisory lock ``key`` makes every checkpoint write wait
    inside its COMMIT (as a synchronous standby would)."""
    repo._write(
        lambda c: (
            c.execute(
                repo._sql(
                    "CREATE FUNCTION {s}.wait_at_commit() RETURNS trigger LANGUAGE plpgsql AS "
                    f"$$ BEGIN PERFORM pg_advisory_xact_lock({key}); RETURN NULL; END $$"
                )
            ),
            c.execute(
                repo._sql(
                    "CREATE CONSTRAINT TRIGGER wait_at_commit AFTER INSERT ON {s}.checkpoints "
                    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {s}.wait_at_commit()"
                )
            ),
        )
    )


@pytest.mark.parametrize("path", ["one statement", "general"])
def test_connection_killed_while_committing(
    postgres_factory: StoreFactory, postgres_url: str, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A write killed in its COMMIT either stored nothing (the server rolled it back) or all of it.
    The one-statement write finds out which on a new connection and stores it then; a write of the
    general path (several checkpoints, a new branch, a forked list) says it cannot know."""
    if path == "general":
        general_path_only(monkeypatch)
    store = postgres_factory()
    repo, cps = repo_of(store), store.checkpoints
    cps.create_thread("t")
    msgs = [message(i) for i in range(20)]
    first = cps.create("t", {"msgs": msgs, "doc": "a" * 3000})
    repo.collect_garbage()
    before = TestPostgres().stored_parts(store)
    key = int.from_bytes(os.urandom(7), "big")
    _wait_at_commit(repo, key)
    with (
        psycopg.connect(postgres_url, autocommit=True) as blocker,
        psycopg.connect(postgres_url, autocommit=True) as admin,
    ):
        blocker.execute("SELECT pg_advisory_lock(%s)", (key,))
        result: dict[str, Any] = {}

        def write() -> None:
            try:
                result["cp"] = cps.create("t", {"msgs": [*msgs, message(20)], "doc": "b" * 3000})
            except BaseException as exc:
                result["error"] = exc

        writer = threading.Thread(target=write)
        writer.start()
        victim = _blocked_by(admin, blocker.info.backend_pid)
        admin.execute("SELECT pg_terminate_backend(%s)", (victim,))
        if path == "one statement":  # written again on a new connection, which waits in its COMMIT
            _blocked_by(admin, blocker.info.backend_pid, other_than=victim)
        blocker.execute("SELECT pg_advisory_unlock(%s)", (key,))
        writer.join(timeout=30)
    repo._write(lambda c: c.execute(repo._sql("DROP TRIGGER wait_at_commit ON {s}.checkpoints")))
    if path == "one statement":
        assert "error" not in result, result
        assert [c.id for c in cps.iter("t")] == [result["cp"].id, first.id]
        assert result["cp"].parent_id == first.id
        assert cps.get_state(result["cp"].id) == {"msgs": [*msgs, message(20)], "doc": "b" * 3000}
        return
    assert isinstance(result.get("error"), StorageError), result
    assert "stored whole or not at all" in str(result["error"])
    assert [c.id for c in cps.iter("t")] == [first.id]
    assert repo.get_branch("t", "main").head == first.id
    assert repo.collect_garbage() == GcReport()
    assert TestPostgres().stored_parts(store) == before
    nxt = cps.create("t", {"msgs": [*msgs, message(20)]})  # the store and the pool work on
    assert nxt.parent_id == first.id


@pytest.fixture
def reply_dropping_proxy(postgres_url: str) -> Iterator[tuple[str, threading.Event]]:
    """(URL through a TCP proxy to the test server, event): while the event is set, the proxy
    closes the client's connection instead of passing on the server's next reply, once."""
    server = psycopg.conninfo.conninfo_to_dict(postgres_url)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    drop = threading.Event()
    stop = threading.Event()

    def pump(src: socket.socket, dst: socket.socket, replies: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if replies and drop.is_set():
                    drop.clear()
                    break
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(
                (str(server.get("host", "127.0.0.1")), int(server.get("port", 5432)))
            )
            threading.Thread(target=pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client, True), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    user, dbname = server.get("user", "postgres"), server.get("dbname", "test")
    yield f"postgresql://{user}@127.0.0.1:{port}/{dbname}?sslmode=disable", drop
    stop.set()
    thread.join()
    listener.close()


def test_write_whose_reply_is_lost_is_found_stored_and_not_written_twice(
    reply_dropping_proxy: tuple[str, threading.Event], admin: psycopg.Connection[Any]
) -> None:
    url, drop = reply_dropping_proxy
    name = unique_name("t")
    try:
        with open_store(with_schema(url, name) + "&pool_min=1&pool_max=1") as store:
            cps = store.checkpoints
            cps.create_thread("t")
            first = cps.create("t", {"msgs": [message(i) for i in range(5)], "n": 0})
            drop.set()  # the server commits the next write; its reply never arrives
            second = cps.create("t", {"msgs": [message(i) for i in range(6)], "n": 1}, expected_head=first.id)
            assert not drop.is_set(), "the proxy dropped no reply"
            assert [c.id for c in cps.iter("t")] == [second.id, first.id]
            assert second.parent_id == first.id and second.stored_size > 0
            assert cps.get_state(second.id) == {"msgs": [message(i) for i in range(6)], "n": 1}
            third = cps.create("t", {"msgs": [message(i) for i in range(7)], "n": 2}, expected_head=second.id)
            assert third.parent_id == second.id
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def test_pool_survives_all_its_connections_being_terminated(
    schema_url: str, admin: psycopg.Connection[Any]
) -> None:
    app = f"tl_{uuid.uuid4().hex[:10]}"
    with open_store(f"{schema_url}&application_name={app}&pool_min=3&pool_max=3") as store:
        cps = store.checkpoints
        cps.create_thread("t")
        for i in range(5):
            cps.create("t", {"n": i})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
                (app,),
            ).fetchone()
            if killed and killed[0] >= 3:
                break
            time.sleep(0.05)
        time.sleep(0.2)
        for i in range(5, 15):  # reads and writes go on, on fresh connections
            cps.create("t", {"n": i})
            latest = cps.latest("t")
            assert latest is not None and cps.get_state(latest.id) == {"n": i}
        assert cps.stats().checkpoints == 15
