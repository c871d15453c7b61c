"""Review of session 3's changes to the core (list runs, header fast path, id caches) and to
SQLite (read snapshots, schema version 4, lazy group-commit events).

The "fixed bugs" sections hold the bugs the review found (fixed since); the others pin risks
that were checked and found handled."""

from __future__ import annotations

import copy
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import ormsgpack
import pytest

from conftest import sqlite_back_to_schema_3
from threadline import Store, open_store
from threadline.errors import AlreadyExists, InvalidInput, StorageError
from threadline.serde import EXT_TUPLE, FLAG_ENCRYPTED
from threadline.testing.conformance import assert_exact, message, text


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/r.db"


def _ext(store: Store, *items: Any) -> ormsgpack.Ext:
    return ormsgpack.Ext(EXT_TUPLE, store.serializer.dumps(list(items)))


# ---------------------------------------------------------------- lists: fixed bugs


def test_an_empty_list_after_a_stored_list_with_list_min_items_0(url: str) -> None:
    with open_store(url, list_min_items=0) as store:
        cps = store.checkpoints
        cps.create_thread("t")
        cps.create("t", {"l": [1, 2, 3]})
        cp = cps.create("t", {"l": []})
        assert_exact(cps.get_state(cp.id), {"l": []})


# ---------------------------------------------------------------- lists: handled risks


def test_in_place_retype_deep_in_a_long_list_on_a_cold_cache_is_stored(tmp_path: Path) -> None:
    """1 -> 1.0 on an item in the third run of a list, written through a second handle whose
    cache is cold (it compares against the items read back), then through the first handle
    whose cache is warm but whose list is no longer the head's."""
    path = f"sqlite:///{tmp_path}/c.db"
    with open_store(path) as a, open_store(path) as b:
        a.checkpoints.create_thread("t")
        items: list[dict[str, Any]] = [{"i": i, "body": text(3000, i), "n": 1} for i in range(40)]
        first = a.checkpoints.create("t", {"l": items})
        items[30]["n"] = 1.0
        second = b.checkpoints.create("t", {"l": items})
        items[35]["n"] = True
        items.append({"i": 40, "n": 1})
        third = a.checkpoints.create("t", {"l": items})
        for handle in (a, b):
            got = [handle.checkpoints.get_state(c.id)["l"] for c in (first, second, third)]
            assert type(got[0][30]["n"]) is int and type(got[1][30]["n"]) is float
            assert got[1][35]["n"] == 1 and type(got[1][35]["n"]) is int
            assert got[2][35]["n"] is True and len(got[2]) == 41
            assert_exact(got[2], items)


def test_list_that_shrinks_then_grows_with_other_items_reads_back(url: str) -> None:
    with open_store(url) as store:
        cps = store.checkpoints
        cps.create_thread("t")
        full = [message(i, 500) for i in range(10)]
        states = [full, full[:3], [*full[:3], {"new": 1}], full, full[:3] + full[3:5], full[:2], [full[0]]]
        ids = [cps.create("t", {"l": copy.deepcopy(s)}).id for s in states]
        for cid, s in zip(ids, states, strict=True):
            assert_exact(cps.get_state(cid)["l"], s)


def test_branch_from_an_older_checkpoint_while_the_cache_holds_a_longer_list(url: str) -> None:
    with open_store(url) as store:
        cps = store.checkpoints
        cps.create_thread("t")
        msgs = [message(i, 2000) for i in range(30)]
        old = cps.create("t", {"l": msgs[:10]})
        cps.create("t", {"l": msgs})  # the cache now holds the list at 30 items
        forked = [*msgs[:9], {"edited": True}, *msgs[10:12]]
        cp = cps.create("t", {"l": forked}, branch="b", create_branch_from=old.id)
        again = cps.create("t", {"l": [*msgs[:10], {"x": 1}]}, branch="c", create_branch_from=old.id)
        assert_exact(cps.get_state(cp.id)["l"], forked)
        assert_exact(cps.get_state(again.id)["l"], [*msgs[:10], {"x": 1}])
        assert_exact(cps.get_state(old.id)["l"], msgs[:10])


def test_items_that_take_the_careful_encoding_path_are_compared_exactly(url: str) -> None:
    """Dicts with non-string keys fail ormsgpack's one-call encoding; their runs are encoded
    item by item. An in-place change (key 1 -> 1.0, equal as a dict key) must be seen."""
    with open_store(url) as store:
        cps = store.checkpoints
        cps.create_thread("t")
        items: list[Any] = [{1: text(200, i), "i": i} for i in range(20)]
        first = cps.create("t", {"l": items})
        items[15] = {1.0: items[15][1], "i": 15}
        second = cps.create("t", {"l": items})
        assert type(next(iter(cps.get_state(first.id)["l"][15]))) is int
        assert type(next(iter(cps.get_state(second.id)["l"][15]))) is float


def test_encoded_objects_equal_copy_and_replaced_middle_item(url: str) -> None:
    with open_store(url) as store:
        cps = store.checkpoints
        cps.create_thread("t")
        values = [_ext(store, i, text(100, i)) for i in range(20)]
        first = cps.create("t", {"l": list(values)})
        # same objects but one swapped for an equal copy, and one replaced: bytes decide
        copy_5 = ormsgpack.unpackb(ormsgpack.packb(values[5]), ext_hook=ormsgpack.Ext)
        changed = [*values[:5], copy_5, *values[6:12], _ext(store, "new"), *values[13:], _ext(store, 99)]
        second = cps.create("t", {"l": changed})
        expected = [(i, text(100, i)) for i in range(20)]
        assert cps.get_state(first.id)["l"] == expected
        assert cps.get_state(second.id)["l"] == [*expected[:12], ("new",), *expected[13:], (99,)]
        # a list that mixes encoded objects and plain values takes the byte comparison
        third = cps.create("t", {"l": [*changed[:3], "plain", *changed[4:]]})
        assert cps.get_state(third.id)["l"] == [
            *expected[:3],
            "plain",
            *expected[4:12],
            ("new",),
            *expected[13:],
            (99,),
        ]


def test_very_long_list_of_tiny_items_changed_at_the_end_and_the_middle(url: str) -> None:
    with open_store(url) as store:
        cps = store.checkpoints
        cps.create_thread("t")
        items = list(range(100)) * 700  # 70,000 one-byte items: runs of ~32K items
        first = cps.create("t", {"l": items})
        items[-1] = 1.0
        second = cps.create("t", {"l": items})
        items[40_000] = True
        items.append(None)
        third = cps.create("t", {"l": items})
        a, b, c = (cps.get_state(x.id)["l"] for x in (first, second, third))
        assert type(a[-1]) is int and type(b[-1]) is float and len(b) == 70_000
        assert b[40_000] == 0 and type(b[40_000]) is int and c[40_000] is True
        assert_exact(c, items)


def test_a_list_of_one_item_between_lists(url: str) -> None:
    with open_store(url) as store:
        cps = store.checkpoints
        cps.create_thread("t")
        states = [[1, 2], [1], [1, 2.0], [1.0], [1.0, 2], [True, 2]]
        ids = [cps.create("t", {"l": list(s)}).id for s in states]
        for cid, s in zip(ids, states, strict=True):
            assert_exact(cps.get_state(cid)["l"], s)


# ---------------------------------------------------------------- header fast path, ids


def test_every_header_is_encrypted_with_a_key_ring(tmp_path: Path) -> None:
    from threadline.serde import KeyRing

    keyring = KeyRing.generate()
    path = tmp_path / "e.db"
    with open_store(f"sqlite:///{path}", keyring=keyring) as store:
        store.checkpoints.create_thread("t")
        plain = store.checkpoints.create("t", {"a": 1})
        tagged = store.checkpoints.create("t", {"a": 2}, tags=[], metadata={})
        assert store.checkpoints.get(plain.id).metadata == {}
        assert store.checkpoints.get(tagged.id).tags == ()
    conn = sqlite3.connect(path)
    headers = [bytes(r[0]) for r in conn.execute("SELECT header FROM checkpoints")]
    conn.close()
    assert len(headers) == 2
    assert all(h[0] & FLAG_ENCRYPTED for h in headers), headers


def test_header_fast_path_still_rejects_bad_tags_and_metadata(url: str) -> None:
    with open_store(url) as store:
        cps = store.checkpoints
        cps.create_thread("t")
        with pytest.raises(InvalidInput, match="single string"):
            cps.create("t", {"a": 1}, tags="")  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            cps.create("t", {"a": 1}, title=3)  # type: ignore[arg-type]
        cps.create_thread("ok")
        with pytest.raises(InvalidInput, match="control"):
            cps.create_thread("o\nk")
        with pytest.raises(InvalidInput, match="branch"):
            cps.create("ok", {"a": 1}, branch="ok/")
        assert cps.latest("ok") is None
        assert cps.latest("t") is None


# ---------------------------------------------------------------- SQLite snapshots: fixed bugs


def test_storage_bytes_inside_a_snapshot_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from threadline.storage import sqlite as sqlite_backend

    monkeypatch.setattr(sqlite_backend, "_BUSY_DEADLINE_S", 1.0)  # 60 s in production
    with open_store(f"sqlite:///{tmp_path}/s.db") as store:
        store.checkpoints.create_thread("t")
        store.checkpoints.create("t", {"a": 1})
        with store.checkpoints.snapshot():
            store.checkpoints.latest("t")
            started = time.monotonic()
            try:
                store.threads.storage_bytes()
                error = ""
            except StorageError as exc:
                error = str(exc)
            elapsed = time.monotonic() - started
        assert elapsed < 0.5, f"stalled {elapsed:.1f} s ({error})"
        assert not error or "snapshot" in error


# ---------------------------------------------------------------- SQLite snapshots: handled risks


def test_an_exception_inside_a_snapshot_ends_its_read_transaction(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/s.db") as store:
        cps = store.checkpoints
        cps.create_thread("t")
        first = cps.create("t", {"a": 1})
        with pytest.raises(KeyError), cps.snapshot(), cps.snapshot():
            cps.latest("t")
            raise KeyError("boom")
        assert not store.repository._conn().in_transaction  # type: ignore[attr-defined]
        second = cps.create("t", {"a": 2})
        assert second.parent_id == first.id
        with cps.snapshot():
            assert cps.latest("t").id == second.id  # type: ignore[union-attr]


def test_other_threads_group_commit_while_one_thread_holds_a_snapshot(tmp_path: Path) -> None:
    """Writers of other threads (leaders and waiters of group commits, with lazily made
    events) all finish while a thread sits in a snapshot; the snapshot sees none of them."""
    with open_store(f"sqlite:///{tmp_path}/g.db") as store:
        cps = store.checkpoints
        for w in range(8):
            cps.create_thread(f"w{w}")
        cps.create_thread("r")
        base = cps.create("r", {"n": 0})
        errors: list[BaseException] = []

        def writer(w: int) -> None:
            try:
                for i in range(25):
                    cps.create(f"w{w}", {"i": i, "l": [w, i, text(50, i)]})
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        with cps.snapshot():
            assert cps.latest("r").id == base.id  # type: ignore[union-attr]  # the first read fixes the view
            threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            assert not any(t.is_alive() for t in threads), "a writer never woke up"
            assert all(cps.latest(f"w{w}") is None for w in range(8))
            assert cps.latest("r").id == base.id  # type: ignore[union-attr]
        assert not errors
        for w in range(8):
            assert len(list(cps.iter(f"w{w}"))) == 25
            assert_exact(cps.get_state(cps.latest(f"w{w}").id), {"i": 24, "l": [w, 24, text(50, 24)]})  # type: ignore[union-attr]


def test_snapshot_on_a_shared_connection_is_a_plain_block(tmp_path: Path) -> None:
    from threadline.storage.sqlite import SQLiteRepository
    from threadline.store import Store as StoreClass

    conn = sqlite3.connect(tmp_path / "shared.db", check_same_thread=False)
    store = StoreClass(SQLiteRepository(connection=conn))
    try:
        cps = store.checkpoints
        cps.create_thread("t")
        with cps.snapshot():
            cp = cps.create("t", {"l": [1, 2, 3]})
            assert_exact(cps.get_state(cp.id), {"l": [1, 2, 3]})
        assert not conn.in_transaction
    finally:
        store.close()


def test_a_write_refused_inside_a_snapshot_stores_nothing_and_leaves_caches_usable(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/s.db") as store:
        cps = store.checkpoints
        cps.create_thread("t")
        msgs = [message(i, 300) for i in range(10)]
        first = cps.create("t", {"l": msgs})
        with cps.snapshot(), pytest.raises(StorageError, match="snapshot"):
            cps.create("t", {"l": [*msgs, message(10)]})
        second = cps.create("t", {"l": [*msgs, message(11)]})
        assert second.parent_id == first.id
        assert_exact(cps.get_state(second.id)["l"], [*msgs, message(11)])
        assert [c.id for c in cps.iter("t")] == [second.id, first.id]


# ---------------------------------------------------------------- schema version 4


_OPENER = """
import sys
from threadline import open_store
with open_store(sys.argv[1]) as store:
    assert store.repository.schema_version() == 4
    print(len(list(store.checkpoints.iter("t0"))))
"""


def test_old_store_opened_by_several_processes_at_once_is_migrated_once(tmp_path: Path) -> None:
    from datetime import timedelta

    path = tmp_path / "v3.db"
    written: dict[str, Any] = {}
    with open_store(f"sqlite:///{path}") as store:
        cps = store.checkpoints
        for t in range(3):
            cps.create_thread(f"t{t}")
            for i in range(8):
                state = {"l": [message(j, 80) for j in range(i + 2)], "i": i}
                cp = cps.create(f"t{t}", state, ttl=timedelta(days=1) if i % 2 else None)
                written[cp.id] = state
            cps.create(f"t{t}", {"m": t}, kind="milestone", milestone="m1")
    sqlite_back_to_schema_3(path)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPENER, f"sqlite:///{path}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip() == "9"
    with open_store(f"sqlite:///{path}") as store:
        cps = store.checkpoints
        for cid, state in written.items():
            assert_exact(cps.get_state(cid), state)
        assert not cps.check()
        with pytest.raises(AlreadyExists):  # the milestone index is unique again
            cps.create("t0", {"m": 9}, kind="milestone", milestone="m1")
        assert len(store.repository.due_for_expiry(2**62)) == 12
    conn = sqlite3.connect(path)
    indexes = {r[0]: r[1] for r in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'")}
    plans = {
        q: " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + q, args))
        for q, args in [
            ("SELECT id FROM checkpoints WHERE id = ?", (b"x",)),
            ("SELECT id FROM checkpoints WHERE tkey = ? AND id = ?", (1, b"x")),
            ("SELECT id FROM checkpoints WHERE tkey = ? ORDER BY id DESC LIMIT 5", (1,)),
            ("SELECT id FROM checkpoints WHERE expires_at IS NOT NULL AND expires_at <= ?", (5,)),
            ("SELECT id FROM checkpoints WHERE tkey = ? AND milestone = ?", (1, "m1")),
            (
                "SELECT id, tkey FROM checkpoints WHERE (id, tkey) > (?, ?) ORDER BY id, tkey LIMIT 9",
                (b"", 0),
            ),
        ]
    }
    conn.close()
    assert {"checkpoints_by_id", "checkpoints_milestone", "checkpoints_expiry"} <= set(indexes)
    assert "checkpoints_by_thread" not in indexes
    for query, plan in plans.items():
        assert "SCAN" not in plan, (query, plan)
