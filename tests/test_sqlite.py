"""SQLite-specific behaviour: bad inputs, foreign files, schema versions, tampering, processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sqlite3
from pathlib import Path
from typing import Any

import ormsgpack
import pytest

from conftest import sqlite_back_to_schema_3, sqlite_counts
from threadline import (
    AlreadyExists,
    IntegrityError,
    InvalidInput,
    SchemaError,
    Store,
    ThreadlineError,
    open_store,
)
from threadline.storage.base import InlineRef, decode_manifest, encode_manifest
from threadline.testing.conformance import assert_exact, message, text


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- bad URLs and files


@pytest.mark.parametrize(
    "bad", ["foo://x", "nope", "sqlite://", "sqlite:///", "sqlite://host/x.db", "memory:///x", 3]
)
def test_malformed_or_unknown_urls_are_refused(
    bad: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInput):
        open_store(bad)
    assert list(tmp_path.iterdir()) == []


def test_memory_url_with_a_host_is_refused() -> None:
    with pytest.raises(InvalidInput):
        open_store("memory://x")


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        open_store(url(tmp_path / "no" / "such" / "dir" / "t.db"))
    assert not (tmp_path / "no").exists()


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        open_store(url(tmp_path))


def test_file_that_is_not_sqlite_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "random.db"
    path.write_bytes(os.urandom(8192))
    before = digest(path)
    with pytest.raises(SchemaError, match="not a threadline store"):
        open_store(url(path))
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["random.db"]


def _foreign_db(path: Path, journal: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode = {journal}")
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.commit()
    conn.close()


def test_sqlite_database_with_other_tables_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    _foreign_db(path, "wal")
    before = digest(path)
    with pytest.raises(SchemaError, match="not a threadline store"):
        open_store(url(path))
    assert digest(path) == before
    assert sqlite_counts(path) == {"customers": 1}


def test_foreign_rollback_journal_database_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    _foreign_db(path, "delete")
    before = digest(path)
    with pytest.raises(SchemaError, match="not a threadline store"):
        open_store(url(path))
    assert digest(path) == before, "the refused database file was modified"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


def test_store_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    with open_store(url(path)) as store:
        store.checkpoints.create_thread("t")
        store.checkpoints.create("t", {"a": 1})
    conn = sqlite3.connect(path)
    conn.execute("UPDATE threadline_meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    before = digest(path)
    with pytest.raises(SchemaError, match="newer"):
        open_store(url(path))
    assert digest(path) == before


def test_a_version_3_store_is_migrated_with_every_checkpoint_kept(tmp_path: Path) -> None:
    """Version 4 clusters checkpoints by thread; a store written by version 3 (checkpoints
    keyed by id, with a per-thread index) is rebuilt on open and reads back the same."""
    path = tmp_path / "t.db"
    with open_store(url(path)) as store:
        ids, states = _write_history(store)
        store.checkpoints.create_thread("u")
        other = store.checkpoints.create("u", {"k": "v"}, kind="milestone", milestone="m1").id
        expected = [c.id for c in store.checkpoints.iter("t")]
    sqlite_back_to_schema_3(path)
    with open_store(url(path)) as store:
        assert store.repository.schema_version() == 4
        assert [c.id for c in store.checkpoints.iter("t")] == expected
        for cid, state in zip(ids, states, strict=True):
            assert_exact(store.checkpoints.get_state(cid), state)
        assert store.checkpoints.get(other).milestone == "m1"
        assert store.checkpoints.get_state(other) == {"k": "v"}
        assert not store.checkpoints.check()
        nxt = store.checkpoints.create("t", {"n": 99})
        assert nxt.parent_id == ids[-1]
    conn = sqlite3.connect(path)
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    pk = [r[2] for r in conn.execute("PRAGMA index_info(sqlite_autoindex_checkpoints_1)")]
    conn.close()
    assert "checkpoints_by_id" in indexes and "checkpoints_by_thread" not in indexes
    assert pk == ["tkey", "id"]


# ---------------------------------------------------------------- tampering


def _write_history(store: Store) -> tuple[list[str], list[dict[str, Any]]]:
    cps = store.checkpoints
    cps.create_thread("t")
    msgs: list[Any] = []
    ids, states = [], []
    for i in range(5):
        msgs.append(message(i, 100))
        state = {"msgs": list(msgs), "doc": text(3000, 1), "n": i}
        ids.append(cps.create("t", state).id)
        states.append(state)
    return ids, states


def _tamper(path: Path, sql: str, *args: Any) -> None:
    """Change the file behind the open store's back, with another connection."""
    conn = sqlite3.connect(path)
    cur = conn.execute(sql, args)
    assert cur.rowcount > 0
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE items SET data = X'00C0' WHERE pos = 0",
        "UPDATE items SET data = CAST(data || X'00' AS BLOB) WHERE pos = 0",
        "UPDATE items SET crc = crc + 1 WHERE pos = 0",
        "UPDATE blobs SET data = CAST(X'00' || substr(data, 2, length(data) - 2) || X'21' AS BLOB)",
        "UPDATE blobs SET data = X'01DEADBEEF'",
        "DELETE FROM blobs",
        "DELETE FROM items WHERE pos = 0",
    ],
)
def test_tampered_values_raise_integrity_error_naming_the_checkpoint(tmp_path: Path, sql: str) -> None:
    path = tmp_path / "t.db"
    with open_store(url(path)) as store:
        ids, _ = _write_history(store)
        _tamper(path, sql)
        for cid in ids if "blobs" in sql else ids[1:]:  # the first state's one-item list is inline
            with pytest.raises(IntegrityError, match=cid):
                store.checkpoints.get_state(cid)


def test_unknown_manifest_tag_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    with open_store(url(path)) as store:
        ids, _ = _write_history(store)
        _tamper(path, "UPDATE checkpoints SET manifest = ?", ormsgpack.packb({"a": [9, b"x"]}))
        with pytest.raises(IntegrityError):
            store.checkpoints.get_state(ids[0])


@pytest.mark.parametrize(
    "payload",
    [
        ormsgpack.Ext(99, b"\x01\x02"),  # unknown extension code
        ormsgpack.Ext(12, b"\x92" + ormsgpack.packb("os.system") + ormsgpack.packb("touch PWNED")),
        ormsgpack.Ext(12, b"\x92" + ormsgpack.packb("builtins.eval") + ormsgpack.packb("open('PWNED','w')")),
    ],
)
def test_unknown_type_tag_in_inline_value_executes_nothing(
    tmp_path: Path, payload: ormsgpack.Ext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "t.db"
    with open_store(url(path)) as store:
        store.checkpoints.create_thread("t")
        cid = store.checkpoints.create("t", {"v": 1}).id
        manifest = decode_manifest(_manifest_bytes(path))
        assert isinstance(manifest["v"], InlineRef)
        manifest["v"] = InlineRef(b"\x00" + ormsgpack.packb(payload))
        _tamper(path, "UPDATE checkpoints SET manifest = ?", encode_manifest(manifest))
        with pytest.raises(ThreadlineError) as info:
            store.checkpoints.get_state(cid)
    assert isinstance(info.value, IntegrityError) and cid in str(info.value)
    assert not (tmp_path / "PWNED").exists()


def _manifest_bytes(path: Path) -> bytes:
    conn = sqlite3.connect(path)
    try:
        return bytes(conn.execute("SELECT manifest FROM checkpoints").fetchone()[0])
    finally:
        conn.close()


# ---------------------------------------------------------------- reopening and transactions


def test_reopen_reads_everything_back(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    with open_store(url(path)) as store:
        ids, states = _write_history(store)
    with open_store(url(path)) as store:
        assert store.repository.schema_version() >= 1
        assert [c.id for c in store.checkpoints.iter("t")] == ids[::-1]
        for cid, state in zip(ids, states, strict=True):
            assert_exact(store.checkpoints.get_state(cid), state)
        # keep appending after a reopen (no caches): still stores one item, reads back exactly
        msgs = [*states[-1]["msgs"], message(5, 100)]
        cp = store.checkpoints.create("t", {"msgs": msgs, "doc": text(3000, 1), "n": 5})
        assert cp.stored_size < 400
        assert_exact(store.checkpoints.get_state(cp.id), {"msgs": msgs, "doc": text(3000, 1), "n": 5})


def test_failure_inside_the_transaction_leaves_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    with open_store(url(path)) as store:
        cps = store.checkpoints
        cps.create_thread("t")
        fixed = cps.create("t", {"msgs": [message(i) for i in range(3)]}).id
        cps.create("t", {"m": 1}, kind="milestone", milestone="m")
        before, stats = sqlite_counts(path), cps.stats()
        big = {"msgs": [message(i, 300) for i in range(50)], "doc": text(10_000, 3)}
        with pytest.raises(AlreadyExists):
            cps.create("t", big, checkpoint_id=fixed)
        with pytest.raises(AlreadyExists):
            cps.create("t", big, kind="milestone", milestone="m")
        assert sqlite_counts(path) == before
        assert cps.stats() == stats


def test_connection_and_file_are_released_on_close(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    store = open_store(url(path))
    store.checkpoints.create_thread("t")
    store.close()
    store.close()
    with pytest.raises(ThreadlineError):
        store.checkpoints.create("t", {})


# ---------------------------------------------------------------- several processes


PROCESSES = 4
WRITES = 50


def _process_writer(path: str, worker: int) -> list[str]:
    errors: list[str] = []
    with open_store(f"sqlite:///{path}") as store:
        cps = store.checkpoints
        own = f"own-{worker}"
        cps.create_thread(own)
        msgs: list[Any] = []
        for i in range(WRITES):
            msgs.append(message(worker * 1000 + i, 50))
            try:
                cps.create(own, {"msgs": list(msgs), "w": worker})
                cps.create("shared", {"w": worker, "i": i, "doc": text(200, worker)})
            except Exception as exc:  # reported to the parent, which asserts there are none
                errors.append(f"{type(exc).__name__}: {exc}")
    return errors


@pytest.mark.slow
def test_several_processes_write_one_file(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    with open_store(url(path)) as store:
        store.checkpoints.create_thread("shared")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(PROCESSES) as pool:
        results = pool.starmap(_process_writer, [(str(path), w) for w in range(PROCESSES)])
    assert [e for r in results for e in r] == []
    with open_store(url(path)) as store:
        cps = store.checkpoints
        shared = list(cps.iter("shared"))
        assert len(shared) == PROCESSES * WRITES
        parents = [c.parent_id for c in shared]
        assert len(set(parents)) == len(parents), "the shared branch forked"
        history = []
        cursor = None
        while True:
            page = cps.history("shared", limit=100, cursor=cursor)
            history.extend(c.id for c in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert sorted(history) == sorted(c.id for c in shared)
        for w in range(PROCESSES):
            own = list(cps.iter(f"own-{w}"))
            assert len(own) == WRITES
            expected = [message(w * 1000 + i, 50) for i in range(WRITES)]
            assert_exact(cps.get_state(own[0].id), {"msgs": expected, "w": w})


def _wal_frames(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return (wal.stat().st_size - 32) // (8192 + 24) if wal.exists() else 0


def test_wal_is_checkpointed_in_the_background_and_stays_bounded(tmp_path: Path) -> None:
    from threadline.storage import sqlite as backend

    path = tmp_path / "s.db"
    with open_store(url(path)) as store:
        repo = store.checkpoints.repository
        assert isinstance(repo, backend.SQLiteRepository)
        checkpointer = repo._checkpointer
        assert checkpointer is not None
        store.checkpoints.create_thread("t")
        msgs: list[Any] = []
        for i in range(40 * backend.CHECKPOINT_EVERY_COMMITS):
            msgs.append(message(i, 600))
            store.checkpoints.create("t", {"msgs": msgs, "i": i})
        assert checkpointer.runs >= 1
        # The WAL restarts from its beginning once a checkpoint catches up: it stays bounded.
        assert _wal_frames(path) < 2 * backend.FALLBACK_AUTOCHECKPOINT_PAGES
        latest = store.checkpoints.latest("t")
        assert latest is not None
        assert_exact(store.checkpoints.get_state(latest.id), {"msgs": msgs, "i": len(msgs) - 1})
        thread = checkpointer._thread
    assert thread is not None and not thread.is_alive()
    with open_store(url(path)) as again:
        assert len(again.checkpoints.list("t", limit=2000).items) == 40 * backend.CHECKPOINT_EVERY_COMMITS


def test_store_on_an_existing_connection_keeps_sqlite_auto_checkpoint(tmp_path: Path) -> None:
    from threadline.storage.sqlite import SQLiteRepository

    conn = sqlite3.connect(tmp_path / "c.db", check_same_thread=False)
    repo = SQLiteRepository(connection=conn)
    assert repo._checkpointer is None
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    repo.close()


def test_write_planned_against_a_parent_deleted_by_another_handle_restores_its_values(
    tmp_path: Path,
) -> None:
    # Handle A plans against its cached head; handle B deletes that head and collects
    # its values. A's write must notice (the head moved) and store the values again,
    # not skip them as "carried from the parent".
    path = tmp_path / "s.db"
    doc = {"doc": text(5000, 1)}
    msgs = [message(i, 300) for i in range(5)]
    with open_store(url(path)) as a, open_store(url(path)) as b:
        a.checkpoints.create_thread("t")
        first = a.checkpoints.create("t", {"config": doc, "msgs": msgs})
        b.checkpoints.delete([first.id], thread_id="t")
        b.checkpoints.repository.collect_garbage()
        assert sqlite_counts(path)["blobs"] == 0
        again = a.checkpoints.create("t", {"config": doc, "msgs": [*msgs, message(5, 300)]})
        assert again.parent_id is None
        assert_exact(b.checkpoints.get_state(again.id), {"config": doc, "msgs": [*msgs, message(5, 300)]})
        third = a.checkpoints.create("t", {"config": doc, "msgs": msgs})
        assert third.stored_size < 400  # the parent is the head again: the blob is carried
        assert_exact(b.checkpoints.get_state(third.id), {"config": doc, "msgs": msgs})


# ---------------------------------------------------------------- read snapshots


def test_reads_inside_a_snapshot_see_one_state_of_the_store(tmp_path: Path) -> None:
    import threading

    from threadline.errors import StorageError

    path = tmp_path / "t.db"
    with open_store(url(path)) as store:
        cps = store.checkpoints
        cps.create_thread("t")
        first = cps.create("t", {"msgs": [message(0), message(1)]})
        with cps.snapshot(), cps.snapshot():  # blocks nest
            assert cps.latest("t").id == first.id  # type: ignore[union-attr]
            written: list[str] = []
            writer = threading.Thread(target=lambda: written.append(cps.create("t", {"n": 2}).id))
            writer.start()
            writer.join()
            # another thread's commit is not seen inside the block ...
            assert cps.latest("t").id == first.id  # type: ignore[union-attr]
            assert cps.get_state(first.id) == {"msgs": [message(0), message(1)]}
            # ... and this thread cannot write inside it: nothing is stored
            with pytest.raises(StorageError, match="read snapshot"):
                cps.create("t", {"n": 3})
        assert cps.latest("t").id == written[0]  # type: ignore[union-attr]
        assert [c.id for c in cps.iter("t")] == [written[0], first.id]
        cps.create("t", {"n": 4})  # writes work again after the block


def test_snapshot_is_a_plain_block_on_the_memory_backend() -> None:
    with open_store("memory://") as store:
        store.checkpoints.create_thread("t")
        with store.checkpoints.snapshot():
            cp = store.checkpoints.create("t", {"a": 1})
            assert store.checkpoints.get_state(cp.id) == {"a": 1}
