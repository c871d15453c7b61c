"""Session layer (issue 4): sessions, retention policies, cleanup, statistics, sync
points and session backups, on every embedded backend.

Every test takes the ``store_url`` fixture, so a PostgreSQL URL can be added to
``SESSION_BACKENDS`` (or the fixture overridden) once that backend lands.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from threadline import Policy, SessionStatus, open_store
from threadline.errors import (
    AlreadyExists,
    ArchiveError,
    Conflict,
    InvalidInput,
    NotFound,
    SerializationError,
)
from threadline.model import CheckpointKind, CheckpointStatus
from threadline.sessions import SessionCheckpointManager
from threadline.store import Store

SESSION_BACKENDS = ["memory", "sqlite", "postgres"]
BIG = "x" * 400
LATER = datetime.now(UTC) + timedelta(days=365)


@pytest.fixture(params=SESSION_BACKENDS)
def store_url(request: pytest.FixtureRequest, backend_url: Callable[[str, str], str]) -> str:
    return backend_url(request.param, "s")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with open_store(store_url) as s:
        yield s


def fill(store: Store, thread: str, n: int, key: str = "n", **fields: Any) -> list[str]:
    return [store.threads.checkpoint(thread, {key: i, "big": BIG + str(i)}, **fields).id for i in range(n)]


def all_ids(store: Store, thread: str) -> set[str]:
    return {c.id for c in store.checkpoints.iter(thread)}


def session_with(store: Store, *threads: str, policy: Policy | None = None) -> str:
    store.sessions.create_session("s", policy=policy)
    for t in threads:
        store.sessions.create_thread("s", t)
    return "s"


# ---------------------------------------------------------------- sessions


def test_session_create_get_list_close(store: Store) -> None:
    s = store.sessions.create_session("s1", metadata={"user": "ann"}, owner="ann")
    assert (s.id, s.metadata, s.owner, s.status, s.policy) == (
        "s1",
        {"user": "ann"},
        "ann",
        SessionStatus.ACTIVE,
        Policy(),
    )
    generated = store.sessions.create_session()
    assert store.sessions.get_session(generated.id) == generated
    for i in range(5):
        store.sessions.create_session(f"p{i}", metadata={"team": "a" if i % 2 else "b"})
    with pytest.raises(AlreadyExists):
        store.sessions.create_session("s1")
    first = store.sessions.list_sessions(limit=3)
    second = store.sessions.list_sessions(limit=3, cursor=first.next_cursor)
    everything = [s.id for s in first.items + second.items]
    assert len(everything) == 6 and everything == sorted(everything)
    assert [s.id for s in store.sessions.list_sessions(metadata={"team": "a"}).items] == ["p1", "p3"]
    store.sessions.close_session("p0")
    assert store.sessions.close_session("p0").status is SessionStatus.CLOSED  # idempotent
    assert [s.id for s in store.sessions.list_sessions(status="closed").items] == ["p0"]
    assert "p0" not in [s.id for s in store.sessions.list_sessions(status=SessionStatus.ACTIVE).items]
    with pytest.raises(InvalidInput, match="unknown session status"):
        store.sessions.list_sessions(status="done")
    with pytest.raises(NotFound):
        store.sessions.get_session("nope")
    with pytest.raises(InvalidInput):
        store.sessions.create_session("bad\x00id")
    assert store.sessions.update_session_metadata("s1", {"user": "bob"}).metadata == {"user": "bob"}


def test_threads_join_a_session_at_creation_or_later_and_belong_to_one(store: Store) -> None:
    store.sessions.create_session("a")
    store.sessions.create_session("b")
    t = store.sessions.create_thread("a", "t1", metadata={"k": 1})
    assert t.session_id == "a"
    store.threads.create_thread("loose")
    assert store.sessions.add_thread("b", "loose").session_id == "b"
    assert store.sessions.add_thread("b", "loose").session_id == "b"  # idempotent
    with pytest.raises(Conflict, match="belongs to session 'a'"):
        store.sessions.add_thread("b", "t1")
    store.sessions.remove_thread("t1")
    assert store.sessions.add_thread("b", "t1").session_id == "b"
    assert [t.id for t in store.sessions.list_threads("b").items] == ["loose", "t1"]
    with pytest.raises(NotFound):
        store.sessions.create_thread("missing", "t9")
    store.sessions.close_session("a")
    with pytest.raises(InvalidInput, match="closed"):
        store.sessions.create_thread("a", "t2")


def test_delete_session_removes_its_threads_and_sync_points(store: Store) -> None:
    session_with(store, "t1", "t2")
    store.threads.create_thread("outside")
    fill(store, "t1", 3)
    fill(store, "t2", 3)
    fill(store, "outside", 2)
    store.sessions.coordinate_cross_thread_checkpoints("s", ["t1", "t2"], "v1")
    store.sessions.delete_session("s")
    with pytest.raises(NotFound):
        store.sessions.get_session("s")
    for t in ("t1", "t2"):
        with pytest.raises(NotFound):
            store.threads.get_thread(t)
    assert len(all_ids(store, "outside")) == 2
    assert store.checkpoints.stats().checkpoints == 2
    store.sessions.create_session("s")  # the id is free again, without old sync points
    assert store.sessions.list_sync_points("s") == []
    with pytest.raises(NotFound):
        store.sessions.delete_session("never")


# ---------------------------------------------------------------- policies


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Policy(ttl_auto=timedelta(seconds=-1)), "must not be negative"),
        (lambda: Policy(min_age=timedelta(days=-1)), "must not be negative"),
        (lambda: Policy(max_checkpoints=-3), "positive integer"),
        (lambda: Policy(max_checkpoints=0), "positive integer"),
        (lambda: Policy(max_checkpoints=True), "positive integer"),
        (lambda: Policy(ttl_error=5), "timedelta"),  # type: ignore[arg-type]
        (lambda: Policy.build(ttl={"snapshot": timedelta(1)}), "unknown checkpoint kind 'snapshot'"),
        (lambda: Policy().override({"ttl_forever": None}), "unknown policy field"),
        (lambda: Policy().override({"ttl": {"bogus": None}}), "unknown checkpoint kind"),
    ],
)
def test_bad_policies_are_refused(make: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        make()


def test_bad_policy_input_through_the_manager(store: Store) -> None:
    store.sessions.create_session("s")
    store.sessions.create_thread("s", "t")
    with pytest.raises(InvalidInput, match="Policy"):
        store.sessions.create_session("x", policy={"ttl_auto": 1})  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="unknown policy field"):
        store.sessions.set_thread_policy("t", {"max": 3})
    with pytest.raises(InvalidInput, match="negative"):
        store.sessions.set_thread_policy("t", {"ttl": {"auto": timedelta(hours=-1)}})
    with pytest.raises(InvalidInput, match="unknown checkpoint kind"):
        store.sessions.create_thread("s", "t2", policy={"ttl": {"nap": timedelta(hours=1)}})
    assert store.sessions.thread_overrides("t") == {}


def test_threads_inherit_the_session_policy_and_override_fields(store: Store) -> None:
    base = Policy.build(ttl={"auto": timedelta(days=7), "error": timedelta(days=30)}, max_checkpoints=100)
    session_with(store, "t1", "t2", policy=base)
    assert store.sessions.get_session("s").policy == base
    assert store.sessions.thread_policy("t1") == base
    effective = store.sessions.set_thread_policy("t2", {"ttl_auto": None, "max_checkpoints": 5})
    assert effective == Policy(ttl_auto=None, ttl_error=timedelta(days=30), max_checkpoints=5)
    assert store.sessions.thread_overrides("t2") == {"ttl_auto": None, "max_checkpoints": 5}
    newer = Policy(ttl_error=timedelta(days=1), max_checkpoints=50)
    store.sessions.set_global_checkpoint_policy("s", newer)
    assert store.sessions.thread_policy("t1") == newer
    assert store.sessions.thread_policy("t2") == Policy(ttl_error=timedelta(days=1), max_checkpoints=5)
    store.sessions.set_thread_policy("t2", None)
    assert store.sessions.thread_policy("t2") == newer
    store.threads.create_thread("loose")
    assert store.sessions.thread_policy("loose") == Policy()  # the default keeps everything


def test_set_global_checkpoint_policy_recomputes_expiry_of_existing_checkpoints(store: Store) -> None:
    session_with(store, "t")
    autos = fill(store, "t", 3)
    err = store.threads.error("t", {"n": 9}, error="boom").id
    mile = store.threads.milestone("t", {"n": 10}, "m1").id
    assert all(store.threads.get(c).expires_at is None for c in [*autos, err, mile])
    changed = store.sessions.set_global_checkpoint_policy(
        "s", Policy(ttl_auto=timedelta(hours=1), ttl_milestone=timedelta(days=2))
    )
    assert changed == 4
    for cid in autos:
        c = store.threads.get(cid)
        assert c.expires_at is not None
        assert abs((c.expires_at - c.created_at) - timedelta(hours=1)) < timedelta(milliseconds=1)
    assert store.threads.get(err).expires_at is None
    m = store.threads.get(mile)
    assert m.expires_at is not None and abs((m.expires_at - m.created_at) - timedelta(days=2)) < timedelta(
        milliseconds=1
    )
    assert store.sessions.set_global_checkpoint_policy("s", Policy(ttl_auto=timedelta(hours=1))) == 1
    assert store.sessions.set_global_checkpoint_policy("s", Policy()) == 3
    assert all(store.threads.get(c).expires_at is None for c in autos)


def test_recompute_revives_expired_checkpoints_whose_new_expiry_is_later(store: Store) -> None:
    session_with(store, "t", policy=Policy(ttl_auto=timedelta(0)))
    ids = fill(store, "t", 3)
    result = store.sessions.cleanup("s", now=LATER, dry_run=True)
    assert result.deleted == sorted(ids[:-1])
    store.sessions.set_global_checkpoint_policy("s", Policy(ttl_auto=timedelta(0), min_age=timedelta(days=1)))
    store.sessions.cleanup("s")  # marks due ones expired, keeps them (too young)
    assert store.threads.get(ids[0]).status is CheckpointStatus.EXPIRED
    store.sessions.set_global_checkpoint_policy("s", Policy(ttl_auto=timedelta(days=3)))
    assert store.threads.get(ids[0]).status is CheckpointStatus.ACTIVE


# ---------------------------------------------------------------- cleanup


def test_cleanup_applies_ttl_and_keeps_heads_milestones_and_young_ones(store: Store) -> None:
    session_with(store, "t", policy=Policy.build(ttl={k: timedelta(hours=1) for k in CheckpointKind}))
    old = fill(store, "t", 4)
    mile = store.threads.milestone("t", {"n": "m"}, "release").id
    loose_mile = store.threads.milestone("t", {"n": "m2"}, "draft").id
    store.checkpoints.set_protected(loose_mile, False, thread_id="t")
    more = fill(store, "t", 2, key="m")
    store.threads.create_branch("t", "side", from_checkpoint=old[1])
    # now: everything is older than its TTL
    dry = store.sessions.cleanup("s", now=LATER, dry_run=True)
    expected = sorted({*old, loose_mile, more[0]} - {old[1]})  # old[1] heads branch 'side'
    assert dry.dry_run and dry.deleted == expected
    assert all_ids(store, "t") >= set(expected)  # dry run changed nothing
    real = store.sessions.cleanup("s", now=LATER)
    assert real.deleted == dry.deleted and real.ok
    assert all_ids(store, "t") == {old[1], mile, more[1]}
    # min_age: nothing younger than a day goes, whatever the TTL
    store.sessions.set_global_checkpoint_policy("s", Policy(ttl_auto=timedelta(0), min_age=timedelta(days=1)))
    fill(store, "t", 3, key="y")
    assert store.sessions.cleanup("s", dry_run=True).deleted == []


def test_survivors_stay_restorable_and_are_relinked(store: Store) -> None:
    session_with(store, "t", policy=Policy(max_checkpoints=3))
    ids = [
        store.threads.checkpoint("t", {"log": [f"m{j}" for j in range(i + 2)], "big": BIG}).id
        for i in range(8)
    ]
    err = store.threads.error("t", {"log": ["e"]}, error="bad").id
    manual = store.threads.manual("t", {"log": ["keep"]}, title="mine").id
    result = store.sessions.cleanup("s")
    # 10 checkpoints, at most 3: the 7 oldest autos go first; the error and manual stay
    assert result.deleted == sorted(ids[:7])
    survivors = [c.id for c in store.threads.walk("t")]
    assert survivors == [manual, err, ids[7]]
    assert store.threads.get(ids[7]).parent_id is None
    assert store.threads.get(err).parent_id == ids[7]
    assert store.threads.get_state(ids[7])["log"] == [f"m{j}" for j in range(9)]
    restored = store.threads.restore(ids[7])
    assert store.threads.get_state(restored.id)["log"] == [f"m{j}" for j in range(9)]
    # next in line: the error checkpoint, then the manual one
    store.sessions.set_thread_policy("t", {"max_checkpoints": 2})
    assert store.sessions.cleanup_thread("t").deleted == sorted([ids[7], err])


def test_count_limit_order_auto_then_error_then_manual(store: Store) -> None:
    session_with(store, "t", policy=Policy(max_checkpoints=2))
    m = store.threads.manual("t", {"n": 0}).id
    e = store.threads.error("t", {"n": 1}, error="x").id
    a = store.threads.checkpoint("t", {"n": 2}).id
    head = store.threads.checkpoint("t", {"n": 3}, kind="manual").id
    assert store.sessions.cleanup("s", dry_run=True).deleted == sorted([a, e])
    store.sessions.set_global_checkpoint_policy("s", Policy(max_checkpoints=3))
    assert store.sessions.cleanup("s").deleted == [a]  # the auto one goes first
    store.sessions.set_global_checkpoint_policy("s", Policy(max_checkpoints=2))
    assert store.sessions.cleanup("s").deleted == [e]  # then the error one
    assert all_ids(store, "t") == {m, head}


def test_cleanup_never_deletes_checkpoints_held_by_a_sync_point(store: Store) -> None:
    session_with(store, "t1", "t2", policy=Policy(ttl_auto=timedelta(0), ttl_manual=timedelta(0)))
    fill(store, "t1", 2)
    fill(store, "t2", 2)
    point = store.sessions.coordinate_cross_thread_checkpoints("s", ["t1", "t2"], "v1")
    fill(store, "t1", 2, key="after")
    fill(store, "t2", 2, key="after")
    store.sessions.cleanup("s", now=LATER)
    for tid, cid in point.members.items():
        assert cid in all_ids(store, tid)
    states = {t: store.threads.get_state(c) for t, c in point.members.items()}
    restored = store.sessions.restore_sync_point("s", "v1")
    assert {c.thread_id: store.threads.get_state(c.id) for c in restored} == states
    # once the sync point is deleted, its checkpoints are ordinary again
    store.sessions.delete_sync_point("s", "v1")
    removed = store.sessions.cleanup("s", now=LATER).deleted
    assert set(point.members.values()) <= set(removed)


def test_dry_run_reports_exactly_what_a_real_run_removes(store: Store) -> None:
    policy = Policy.build(
        ttl={"auto": timedelta(minutes=5), "error": timedelta(minutes=1)}, max_checkpoints=6
    )
    session_with(store, "a", "b", "c", policy=policy)
    for t in ("a", "b", "c"):
        fill(store, t, 6)
        store.threads.error(t, {"n": "e"}, error="x")
        store.threads.milestone(t, {"n": "m"}, "m")
        fill(store, t, 3, key="k")
    moment = datetime.now(UTC) + timedelta(minutes=2)
    dry = store.sessions.cleanup("s", dry_run=True, now=moment)
    real = store.sessions.cleanup("s", now=moment)
    assert [(t.thread_id, t.deleted, t.expired) for t in dry.threads] == [
        (t.thread_id, t.deleted, t.expired) for t in real.threads
    ]
    assert dry.deleted and dry.freed_bytes == 0 and dry.reclaimed_bytes == 0


class FailingManager(SessionCheckpointManager):
    """Fails while applying the plan of one thread, after planning it (a fault injection)."""

    def __init__(self, store: Store, failing: str) -> None:
        super().__init__(store.threads)
        self.failing = failing

    def _apply(self, thread_id: str, expire: Any, delete: Any) -> int:
        if thread_id == self.failing:
            raise OSError(f"disk on fire while cleaning {thread_id}")
        return super()._apply(thread_id, expire, delete)


def test_a_failing_thread_is_reported_and_the_others_are_cleaned(store: Store) -> None:
    session_with(store, "a", "b", "c", policy=Policy(max_checkpoints=2))
    for t in ("a", "b", "c"):
        fill(store, t, 5)
    before_b = all_ids(store, "b")
    result = FailingManager(store, "b").cleanup("s")
    assert not result.ok
    assert result.failures == {"b": "OSError: disk on fire while cleaning b"}
    assert all_ids(store, "b") == before_b  # untouched
    assert len(all_ids(store, "a")) == len(all_ids(store, "c")) == 2
    assert {t.thread_id: len(t.deleted) for t in result.threads} == {"a": 3, "b": 0, "c": 3}
    assert store.sessions.cleanup("s").deleted and len(all_ids(store, "b")) == 2


def test_cleanup_store_and_threads_outside_sessions(store: Store) -> None:
    store.threads.create_thread("loose")
    ids = fill(store, "loose", 3)
    store.threads.ttl(ids[0], timedelta(seconds=1))
    session_with(store, "t", policy=Policy(ttl_auto=timedelta(0)))
    fill(store, "t", 3)
    result = store.sessions.cleanup_store(now=LATER)
    assert {t.thread_id: len(t.deleted) for t in result.threads} == {"loose": 1, "t": 2}
    store.sessions.set_thread_policy("loose", {"max_checkpoints": 1})
    assert store.sessions.cleanup_store().deleted == [ids[1]]
    with pytest.raises(NotFound):
        store.sessions.cleanup("nope")
    with pytest.raises(NotFound):
        store.sessions.cleanup_thread("nope")


def _bulky_session(path: Path) -> Store:
    store = open_store(f"sqlite:///{path}?synchronous=normal")
    session_with(store, "t", policy=Policy(max_checkpoints=1))
    for _ in range(60):
        store.threads.checkpoint("t", {"payload": secrets.token_hex(20_000)})
    return store


def test_cleanup_collects_the_bytes_of_removed_checkpoints(tmp_path: Path) -> None:
    with _bulky_session(tmp_path / "big.db") as store:
        result = store.sessions.cleanup("s")
        assert len(result.deleted) == 59
        assert result.freed_bytes > 59 * 15_000
        assert result.reclaimed_bytes > 0
        assert store.checkpoints.stats().stored_bytes < 2 * 25_000


def test_cleanup_shrinks_the_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "big.db"
    with _bulky_session(path) as store:
        before = store.threads.storage_bytes()
        store.sessions.cleanup("s")
        after = store.threads.storage_bytes()
        assert after < before / 4, (before, after)
        assert path.stat().st_size < before / 4


# ---------------------------------------------------------------- statistics


def test_stats_per_session_and_store(store: Store) -> None:
    session_with(store, "small", "large")
    fill(store, "small", 2)
    big = fill(store, "large", 5)
    store.threads.error("large", {"n": 1}, error="x")
    store.threads.milestone("large", {"n": 2}, "m")
    store.threads.create_branch("large", "alt", from_checkpoint=big[0])
    store.threads.restore(big[1])
    store.threads.create_thread("other")
    fill(store, "other", 1)
    stats = store.sessions.stats("s")
    t = stats.totals
    assert (t.threads, t.checkpoints, t.milestones, t.restores, t.branches) == (2, 10, 1, 1, 3)
    assert t.by_kind == {"auto": 7, "manual": 1, "error": 1, "milestone": 1}
    assert t.by_status["active"] == 10
    assert t.logical_bytes > 0 and t.stored_bytes > 0
    assert t.oldest is not None and t.newest is not None and t.oldest <= t.newest
    assert [s.thread_id for s in stats.largest_threads] == ["large", "small"]
    assert stats.largest_threads[0].checkpoints == 8
    assert sum(stats.created_per_day.values()) == 10
    assert list(stats.created_per_day) == [datetime.now(UTC).date().isoformat()]
    whole = store.sessions.stats(largest=1)
    assert whole.session_id is None and whole.totals.checkpoints == 11 and whole.totals.threads == 3
    assert [s.thread_id for s in whole.largest_threads] == ["large"]
    assert store.sessions.stats("s", per_day=False).created_per_day == {}
    with pytest.raises(NotFound):
        store.sessions.stats("nope")


async def test_async_twins(store: Store) -> None:
    await store.sessions.acreate_session("s", policy=Policy(max_checkpoints=1))
    await store.sessions.acreate_thread("s", "t")
    fill(store, "t", 3)
    assert len((await store.sessions.acleanup("s")).deleted) == 2
    assert (await store.sessions.astats("s")).totals.checkpoints == 1


# ---------------------------------------------------------------- sync points


def test_sync_point_checkpoints_threads_atomically(store: Store) -> None:
    session_with(store, "a", "b", "c")
    fill(store, "a", 2)
    fill(store, "b", 1)
    point = store.sessions.coordinate_cross_thread_checkpoints("s", ["a", "b"], "v1", metadata={"step": 3})
    assert point.label == "v1" and set(point.members) == {"a", "b"} and point.metadata == {"step": 3}
    for tid, cid in point.members.items():
        c = store.threads.get(cid)
        assert c.sync_point == "v1" and c.thread_id == tid
        assert store.threads.latest(tid).id == cid  # type: ignore[union-attr]
    explicit = store.sessions.coordinate_cross_thread_checkpoints(
        "s", ["a", "c"], "v2", {"a": {"x": 1}, "c": {"x": 2}}
    )
    assert store.threads.get_state(explicit.members["c"]) == {"x": 2}
    assert [p.label for p in store.sessions.list_sync_points("s")] == ["v1", "v2"]
    assert store.sessions.get_sync_point("s", "v2") == explicit


def test_sync_point_is_all_or_nothing(store: Store) -> None:
    session_with(store, "a", "b")
    fill(store, "a", 1)
    fill(store, "b", 1)
    counts = store.checkpoints.stats().checkpoints
    with pytest.raises(SerializationError):
        store.sessions.coordinate_cross_thread_checkpoints(
            "s", ["a", "b"], "bad", {"a": {"ok": 1}, "b": {"no": object()}}
        )
    assert store.checkpoints.stats().checkpoints == counts
    with pytest.raises(NotFound):
        store.sessions.get_sync_point("s", "bad")


def test_sync_point_with_expected_heads_fails_as_a_whole_if_a_head_moved(store: Store) -> None:
    session_with(store, "a", "b")
    heads = {"a": fill(store, "a", 1)[0], "b": fill(store, "b", 1)[0]}
    fill(store, "b", 1, key="moved")  # another writer
    counts = store.checkpoints.stats().checkpoints
    for states in ("current", {"a": {"n": 1}, "b": {"n": 2}}):
        with pytest.raises(Conflict):
            store.sessions.coordinate_cross_thread_checkpoints(
                "s", ["a", "b"], "v", states, expected_heads=heads
            )
        assert store.checkpoints.stats().checkpoints == counts
        assert store.sessions.list_sync_points("s") == []
    heads["b"] = store.threads.latest("b").id  # type: ignore[union-attr]
    store.sessions.coordinate_cross_thread_checkpoints("s", ["a", "b"], "v", expected_heads=heads)


def test_sync_point_bad_input(store: Store) -> None:
    session_with(store, "a", "b")
    store.sessions.create_session("other")
    store.sessions.create_thread("other", "foreign")
    store.threads.create_thread("loose")
    for t in ("a", "b", "foreign", "loose"):
        fill(store, t, 1)
    make = store.sessions.coordinate_cross_thread_checkpoints
    with pytest.raises(InvalidInput, match="belongs to session 'other'"):
        make("s", ["a", "foreign"], "x")
    with pytest.raises(InvalidInput, match="belongs to no session"):
        make("s", ["a", "loose"], "x")
    with pytest.raises(InvalidInput, match="at least one thread"):
        make("s", [], "x")
    with pytest.raises(InvalidInput, match="repeated"):
        make("s", ["a", "a"], "x")
    with pytest.raises(InvalidInput, match="sequence"):
        make("s", "a", "x")
    with pytest.raises(InvalidInput, match="exactly one state per thread"):
        make("s", ["a", "b"], "x", {"a": {}})
    with pytest.raises(InvalidInput, match="outside the sync point"):
        make("s", ["a"], "x", expected_heads={"b": None})
    with pytest.raises(InvalidInput):
        make("s", ["a"], "../bad")
    with pytest.raises(NotFound):
        make("missing", ["a"], "x")
    with pytest.raises(NotFound):
        make("s", ["ghost"], "x")
    make("s", ["a"], "dup")
    with pytest.raises(AlreadyExists, match="dup"):
        make("s", ["a", "b"], "dup")
    store.sessions.create_thread("s", "empty")
    with pytest.raises(InvalidInput, match="no checkpoint"):
        make("s", ["a", "empty"], "y")
    store.sessions.close_session("s")
    with pytest.raises(InvalidInput, match="closed"):
        make("s", ["a"], "z")
    with pytest.raises(NotFound):
        store.sessions.delete_sync_point("s", "never")
    with pytest.raises(NotFound):
        store.sessions.restore_sync_point("s", "never")


def test_restore_sync_point_restores_every_thread_atomically(store: Store) -> None:
    session_with(store, "a", "b")
    store.threads.checkpoint("a", {"v": "a1", "log": ["x", "y"]})
    store.threads.checkpoint("b", {"v": "b1"})
    point = store.sessions.coordinate_cross_thread_checkpoints("s", ["a", "b"], "v1")
    store.threads.checkpoint("a", {"v": "a2", "log": ["x", "y", "z"]})
    store.threads.checkpoint("b", {"v": "b2"})
    restored = store.sessions.restore_sync_point("s", "v1")
    assert [c.restored_from for c in restored] == [point.members["a"], point.members["b"]]
    assert store.threads.get_state(store.threads.latest("a").id) == {"v": "a1", "log": ["x", "y"]}  # type: ignore[union-attr]
    assert store.threads.get_state(store.threads.latest("b").id) == {"v": "b1"}  # type: ignore[union-attr]
    assert store.threads.get(point.members["a"]).restore_count == 1
    # a stale expected head makes the whole restore fail
    counts = store.checkpoints.stats().checkpoints
    with pytest.raises(Conflict):
        store.sessions.restore_sync_point(
            "s", "v1", expected_heads={"a": restored[0].id, "b": point.members["b"]}
        )
    assert store.checkpoints.stats().checkpoints == counts


def test_restore_of_a_sync_point_whose_checkpoint_was_deleted_is_refused(store: Store) -> None:
    session_with(store, "a", "b")
    fill(store, "a", 1)
    fill(store, "b", 1)
    point = store.sessions.coordinate_cross_thread_checkpoints("s", ["a", "b"], "v1")
    fill(store, "b", 1, key="later")
    store.checkpoints.delete([point.members["b"]], thread_id="b")  # by hand: retention never does this
    counts = store.checkpoints.stats().checkpoints
    with pytest.raises(NotFound, match="cannot be restored"):
        store.sessions.restore_sync_point("s", "v1")
    assert store.checkpoints.stats().checkpoints == counts


# ---------------------------------------------------------------- session backups


def test_session_backup_round_trip(store: Store, tmp_path: Path) -> None:
    policy = Policy(ttl_auto=timedelta(days=3), max_checkpoints=40)
    store.sessions.create_session("s", metadata={"user": "ann"}, owner="ann", policy=policy)
    store.sessions.create_thread("s", "a", policy={"max_checkpoints": 7})
    store.sessions.create_thread("s", "b")
    fill(store, "a", 3)
    fill(store, "b", 2)
    store.sessions.coordinate_cross_thread_checkpoints("s", ["a", "b"], "v1")
    path = tmp_path / "session.tlar"
    summary = store.sessions.backup_session("s", path)
    assert summary.threads == ["a", "b"] and summary.session is not None
    with open_store(f"sqlite:///{tmp_path}/other.db") as other:
        result = other.sessions.restore_session(path)
        s = result.session
        assert (s.id, s.metadata, s.owner, s.policy) == ("s", {"user": "ann"}, "ann", policy)
        assert other.sessions.thread_policy("a") == Policy(ttl_auto=timedelta(days=3), max_checkpoints=7)
        assert [t.id for t in other.sessions.list_threads("s").items] == ["a", "b"]
        assert all_ids(other, "a") == all_ids(store, "a")
        assert [p.label for p in other.sessions.list_sync_points("s")] == ["v1"]
        again = other.sessions.restore_session(path)  # idempotent
        assert again.archive.imported == [] and sorted(again.archive.skipped) == ["a", "b"]
        assert other.checkpoints.stats().checkpoints == store.checkpoints.stats().checkpoints
        renamed = other.sessions.restore_session(path, session_id="s-copy")
        assert renamed.session.id == "s-copy"


def test_session_restore_refuses_thread_archives_and_tampering(store: Store, tmp_path: Path) -> None:
    session_with(store, "a")
    fill(store, "a", 2)
    plain = tmp_path / "plain.tlar"
    store.threads.backup(["a"], plain)
    with pytest.raises(ArchiveError, match="holds no session"):
        store.sessions.restore_session(plain)
    path = tmp_path / "s.tlar"
    store.sessions.backup_session("s", path)
    data = bytearray(path.read_bytes())
    data[-60] ^= 0xFF
    path.write_bytes(bytes(data))
    with open_store("memory://") as other:
        with pytest.raises(ArchiveError):
            other.sessions.restore_session(path)
        assert other.sessions.list_sessions().items == []
