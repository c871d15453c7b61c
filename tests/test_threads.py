"""Thread layer (issue 3): threads, checkpoint kinds, branches, merge, concurrency,
restore, diff, collaboration, share and copy, on every embedded backend."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from threadline import open_store
from threadline.diff import ListChange, diff_states
from threadline.errors import (
    AlreadyExists,
    Conflict,
    Expired,
    InvalidInput,
    NotFound,
    PermissionDenied,
)
from threadline.model import CheckpointFilter, CheckpointKind
from threadline.sessions import decode_policy, encode_policy
from threadline.storage.base import BlobRef
from threadline.store import Store
from threadline.threads import Role, ThreadCheckpointService

BACKENDS = ["memory", "sqlite", "postgres"]
BIG = "x" * 400  # stored as a blob (above the inline limit)


def _url(kind: str, tmp_path: Path, name: str = "t") -> str:
    return "memory://" if kind == "memory" else f"sqlite:///{tmp_path}/{name}.db"


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, backend_url: Callable[[str, str], str]) -> Iterator[Store]:
    with open_store(backend_url(request.param, "t")) as s:
        yield s


def ids(page: Any) -> list[str]:
    return [item.id for item in page.items]


def chain(store: Store, thread: str, n: int, branch: str | None = None, key: str = "n") -> list[str]:
    return [store.threads.checkpoint(thread, {key: i}, branch=branch).id for i in range(n)]


def history_ids(store: Store, thread: str, branch: str | None = None) -> list[str]:
    return [c.id for c in store.threads.walk(thread, branch)]


# ---------------------------------------------------------------- threads


def test_create_thread_with_given_and_generated_ids(store: Store) -> None:
    t = store.threads.create_thread("t1", metadata={"user": "ann"})
    assert t.id == "t1" and t.metadata == {"user": "ann"} and t.default_branch == "main"
    assert t.origin is None and t.session_id is None
    g1 = store.threads.create_thread()
    g2 = store.threads.create_thread()
    assert g1.id and g2.id and g1.id != g2.id
    assert store.threads.get_thread("t1") == t
    assert [b.name for b in store.threads.branches("t1")] == ["main"]
    assert store.threads.latest("t1") is None
    with pytest.raises(AlreadyExists):
        store.threads.create_thread("t1")


@pytest.mark.parametrize("bad", ["", "a\x00b", "x" * 300, 5])
def test_create_thread_refuses_bad_ids(store: Store, bad: Any) -> None:
    with pytest.raises(InvalidInput):
        store.threads.create_thread(bad)
    assert store.threads.list_threads().items == []


def test_get_unknown_thread_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.threads.get_thread("nope")


def test_list_threads_paged_by_session_and_metadata(store: Store) -> None:
    for i in range(7):
        store.threads.create_thread(
            f"t{i}", session_id="s1" if i % 2 else "s2", metadata={"even": i % 2 == 0, "i": i}
        )
    seen: list[str] = []
    cursor = None
    while True:
        page = store.threads.list_threads(limit=3, cursor=cursor)
        assert len(page.items) <= 3
        seen.extend(ids(page))
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [f"t{i}" for i in range(7)]
    assert ids(store.threads.list_threads(session_id="s1")) == ["t1", "t3", "t5"]
    assert ids(store.threads.list_threads(session_id="s2", limit=2)) == ["t0", "t2"]
    assert ids(store.threads.list_threads(metadata={"even": True})) == ["t0", "t2", "t4", "t6"]
    assert ids(store.threads.list_threads(metadata={"i": 3})) == ["t3"]
    assert ids(store.threads.list_threads(metadata={"i": 99})) == []
    assert ids(store.threads.list_threads(session_id="s1", metadata={"even": True})) == []
    # paging through a metadata selection
    first = store.threads.list_threads(metadata={"even": True}, limit=2)
    assert ids(first) == ["t0", "t2"] and first.next_cursor is not None
    second = store.threads.list_threads(metadata={"even": True}, limit=2, cursor=first.next_cursor)
    assert ids(second) == ["t4", "t6"] and second.next_cursor is None
    exact = store.threads.list_threads(metadata={"even": True}, limit=4)
    assert len(exact.items) == 4 and exact.next_cursor is None


def test_list_threads_by_metadata_does_not_confuse_true_with_one(store: Store) -> None:
    store.threads.create_thread("flag", metadata={"x": True})
    store.threads.create_thread("one", metadata={"x": 1})
    assert ids(store.threads.list_threads(metadata={"x": 1})) == ["one"]


def test_list_threads_by_metadata_checks_limit(store: Store) -> None:
    store.threads.create_thread("a", metadata={"k": 1})
    with pytest.raises(InvalidInput):
        store.threads.list_threads(limit=0)
    with pytest.raises(InvalidInput):
        store.threads.list_threads(metadata={"k": 1}, limit=0)


def test_update_metadata_replaces_it(store: Store) -> None:
    store.threads.create_thread("t", metadata={"a": 1, "b": 2})
    updated = store.threads.update_metadata("t", {"c": [1, 2]})
    assert updated.metadata == {"c": [1, 2]}
    assert store.threads.get_thread("t").metadata == {"c": [1, 2]}
    with pytest.raises(InvalidInput):
        store.threads.update_metadata("t", {1: "x"})  # type: ignore[dict-item]
    with pytest.raises(NotFound):
        store.threads.update_metadata("missing", {})


def test_delete_thread_removes_everything_and_its_blobs_become_collectable(store: Store) -> None:
    keep = store.threads.create_thread("keep")
    gone = store.threads.create_thread("gone")
    shared = {"big": "shared" + BIG}
    store.threads.checkpoint(keep.id, shared)
    c1 = store.threads.checkpoint(gone.id, {"own": "own" + BIG, "big": "shared" + BIG})
    store.threads.checkpoint(gone.id, {"own": "own" + BIG, "list": ["a" * 100, "b" * 100]})
    store.threads.create_branch(gone.id, "dev", from_checkpoint=c1.id)
    store.threads.milestone(gone.id, {"m": 1}, "v1", branch="dev")
    row = store.checkpoints.row(c1.id)
    own_hash = row.manifest["own"]
    shared_hash = row.manifest["big"]
    assert isinstance(own_hash, BlobRef) and isinstance(shared_hash, BlobRef)
    before = store.checkpoints.stats()
    assert before.threads == 2 and before.checkpoints == 4
    store.threads.delete_thread(gone.id)
    with pytest.raises(NotFound):
        store.threads.get_thread(gone.id)
    with pytest.raises(NotFound):
        store.threads.get(c1.id)
    with pytest.raises(NotFound):
        store.threads.branches(gone.id)
    with pytest.raises(NotFound):
        store.threads.delete_thread(gone.id)
    store.repository.collect_garbage()
    assert store.repository.get_blobs([own_hash.hash]) == {}
    assert set(store.repository.get_blobs([shared_hash.hash])) == {shared_hash.hash}
    after = store.checkpoints.stats()
    assert after.threads == 1 and after.checkpoints == 1 and after.milestones == 0
    assert after.stored_bytes == store.checkpoints.stats([keep.id]).stored_bytes
    assert after.stored_bytes < before.stored_bytes
    assert store.repository.collect_garbage().blobs == 0  # nothing more to collect
    assert store.threads.get_state(store.threads.latest(keep.id).id) == shared  # type: ignore[union-attr]
    # the id can be reused afterwards
    assert store.threads.create_thread(gone.id).id == gone.id


# ---------------------------------------------------------------- checkpoint kinds


def test_checkpoint_kinds_and_their_fields(store: Store) -> None:
    t = store.threads.create_thread("t").id
    auto = store.threads.checkpoint(t, {"step": 1})
    assert auto.kind is CheckpointKind.AUTO and auto.parent_id is None and auto.branch == "main"
    manual = store.threads.manual(t, {"step": 2}, title="Before deploy", description="why", tags=["a", "b"])
    assert manual.kind is CheckpointKind.MANUAL and manual.parent_id == auto.id
    assert (manual.title, manual.description, manual.tags) == ("Before deploy", "why", ("a", "b"))
    try:
        raise ValueError("tool call failed")
    except ValueError as exc:
        err = store.threads.error(t, {"step": 3, "partial": [1, 2]}, error=exc)
    assert err.kind is CheckpointKind.ERROR
    assert err.error_message == "tool call failed" and err.error_type == "ValueError"
    assert store.threads.get_state(err.id) == {"step": 3, "partial": [1, 2]}
    bare = store.threads.error(t, {"s": 1}, error=KeyError())
    assert bare.error_type == "KeyError" and bare.error_message == "KeyError"
    text = store.threads.error(t, {"s": 2}, error="boom", error_type="Timeout")
    assert (text.error_message, text.error_type) == ("boom", "Timeout")
    ms = store.threads.milestone(t, {"step": 4}, "v1.0")
    assert ms.kind is CheckpointKind.MILESTONE and ms.milestone == "v1.0" and ms.protected
    via_kind = store.threads.checkpoint(t, {"step": 5}, kind="manual", title="x")
    assert via_kind.kind is CheckpointKind.MANUAL
    page = store.threads.list(t, CheckpointFilter.build(kinds="error"))
    assert {c.id for c in page.items} == {err.id, bare.id, text.id}
    assert store.threads.get(ms.id) == ms
    assert store.threads.latest(t) == via_kind


def test_checkpoint_kind_errors(store: Store) -> None:
    t = store.threads.create_thread("t").id
    with pytest.raises(InvalidInput):
        store.threads.checkpoint(t, {"a": 1}, kind="bogus")
    with pytest.raises(InvalidInput):
        store.threads.checkpoint(t, {"a": 1}, kind="error")  # no message
    with pytest.raises(InvalidInput):
        store.threads.checkpoint(t, {"a": 1}, kind="milestone")  # no name
    with pytest.raises(InvalidInput):
        store.threads.error(t, {"a": 1}, error="")
    with pytest.raises(InvalidInput):
        store.threads.checkpoint(t, {1: "a"})  # type: ignore[dict-item]
    with pytest.raises(InvalidInput):
        store.threads.checkpoint(t, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        store.threads.checkpoint("missing", {"a": 1})
    with pytest.raises(NotFound):
        store.threads.checkpoint(t, {"a": 1}, branch="nope")
    assert store.threads.latest(t) is None


def test_milestone_names_are_unique_in_a_thread(store: Store) -> None:
    t = store.threads.create_thread("t").id
    u = store.threads.create_thread("u").id
    first = store.threads.milestone(t, {"a": 1}, "release")
    store.threads.create_branch(t, "dev")
    with pytest.raises(AlreadyExists):
        store.threads.milestone(t, {"a": 2}, "release")
    with pytest.raises(AlreadyExists):
        store.threads.milestone(t, {"a": 3}, "release", branch="dev")
    assert store.threads.latest(t) == first
    assert store.threads.latest(t, "dev") == first
    assert store.checkpoints.stats([t]).checkpoints == 1
    assert store.threads.milestone(u, {"a": 1}, "release").milestone == "release"  # other thread: fine
    for bad in ["", "..", "/x", "x/", "a\nb", "y" * 129]:
        with pytest.raises(InvalidInput):
            store.threads.milestone(t, {"a": 1}, bad)


def test_should_save_hook_skips_auto_checkpoints(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/h.db") as s:
        calls: list[tuple[Any, Any]] = []

        def policy(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
            calls.append((previous, dict(new)))
            return new.get("n", 0) % 2 == 0

        svc = ThreadCheckpointService(s.checkpoints, should_save=policy)
        t = svc.create_thread("t").id
        first = svc.checkpoint(t, {"n": 0})
        skipped = svc.checkpoint(t, {"n": 1})
        assert skipped == first  # the head is returned, nothing written
        assert calls[-1] == ({"n": 0}, {"n": 1})
        second = svc.checkpoint(t, {"n": 2})
        assert second.parent_id == first.id
        # only auto checkpoints ask the hook
        manual = svc.manual(t, {"n": 3})
        assert manual.parent_id == second.id
        assert s.checkpoints.stats([t]).checkpoints == 3
        assert [c.id for c in svc.walk(t)] == [manual.id, second.id, first.id]


def test_skip_unchanged_returns_head_and_writes_nothing(store: Store) -> None:
    svc = ThreadCheckpointService(store.checkpoints, skip_unchanged=True)
    t = svc.create_thread("t").id
    a = svc.checkpoint(t, {"x": 1, "big": BIG, "items": ["a", "b", "c"]})
    again = svc.checkpoint(t, {"x": 1, "big": BIG, "items": ["a", "b", "c"]})
    assert again == a
    changed = svc.checkpoint(t, {"x": 2, "big": BIG, "items": ["a", "b", "c"]})
    assert changed.id != a.id and changed.parent_id == a.id
    # non-auto kinds are written even when unchanged
    manual = svc.manual(t, {"x": 2, "big": BIG, "items": ["a", "b", "c"]})
    assert manual.parent_id == changed.id
    assert store.checkpoints.stats([t]).checkpoints == 3


# ---------------------------------------------------------------- branches


def test_branches_fork_time_travel_and_history(store: Store) -> None:
    t = store.threads.create_thread("t").id
    main = chain(store, t, 4)
    dev = store.threads.create_branch(t, "dev", from_checkpoint=main[1])
    assert dev.head == main[1] and dev.name == "dev"
    d1 = store.threads.checkpoint(t, {"dev": 1}, branch="dev")
    d2 = store.threads.checkpoint(t, {"dev": 2}, branch="dev")
    assert d1.parent_id == main[1] and d2.parent_id == d1.id and d1.branch == "dev"
    assert history_ids(store, t, "dev") == [d2.id, d1.id, main[1], main[0]]
    assert history_ids(store, t) == main[::-1]
    page = store.threads.history(t, "dev", limit=2)
    assert ids(page) == [d2.id, d1.id]
    rest = store.threads.history(t, "dev", limit=2, cursor=page.next_cursor)
    assert ids(rest) == [main[1], main[0]] and rest.next_cursor is None
    heads = {b.name: b.head for b in store.threads.branches(t)}
    assert heads == {"main": main[-1], "dev": d2.id}
    assert store.threads.get_branch(t, "dev").head == d2.id
    # the branch state at the fork point is the old state
    assert store.threads.get_state(main[1]) == {"n": 1}
    tip = store.threads.create_branch(t, "tip")  # default branch head
    assert tip.head == main[-1]
    assert store.threads.latest(t, "tip") == store.threads.latest(t)


def test_branch_from_empty_thread_is_empty(store: Store) -> None:
    t = store.threads.create_thread("t").id
    b = store.threads.create_branch(t, "empty")
    assert b.head is None
    assert store.threads.history(t, "empty").items == []
    first = store.threads.checkpoint(t, {"a": 1}, branch="empty")
    assert first.parent_id is None


def test_rename_branch(store: Store) -> None:
    t = store.threads.create_thread("t").id
    main = chain(store, t, 2)
    store.threads.create_branch(t, "dev", from_checkpoint=main[0])
    d = store.threads.checkpoint(t, {"d": 1}, branch="dev")
    renamed = store.threads.rename_branch(t, "dev", "feature/x")
    assert renamed.name == "feature/x" and renamed.head == d.id
    assert {b.name for b in store.threads.branches(t)} == {"main", "feature/x"}
    with pytest.raises(NotFound):
        store.threads.get_branch(t, "dev")
    nxt = store.threads.checkpoint(t, {"d": 2}, branch="feature/x")
    assert nxt.parent_id == d.id
    with pytest.raises(AlreadyExists):
        store.threads.rename_branch(t, "feature/x", "main")
    with pytest.raises(NotFound):
        store.threads.rename_branch(t, "nope", "other")
    # renaming the default branch renames the thread's default too
    store.threads.rename_branch(t, "main", "trunk")
    assert store.threads.get_thread(t).default_branch == "trunk"
    after = store.threads.checkpoint(t, {"n": 9})
    assert after.branch == "trunk" and after.parent_id == main[-1]
    assert history_ids(store, t) == [after.id, main[1], main[0]]


def test_renamed_branch_checkpoints_are_listed_under_the_new_name(store: Store) -> None:
    t = store.threads.create_thread("t").id
    main = chain(store, t, 1)
    store.threads.create_branch(t, "dev", from_checkpoint=main[0])
    d = store.threads.checkpoint(t, {"d": 1}, branch="dev")
    store.threads.rename_branch(t, "dev", "feature")
    listed = store.threads.list(t, CheckpointFilter.build(branch="feature"))
    assert [c.id for c in listed.items] == [d.id]
    assert store.threads.get(d.id).branch == "feature"


def test_delete_branch_keeps_shared_checkpoints(store: Store) -> None:
    t = store.threads.create_thread("t").id
    main = chain(store, t, 3)
    store.threads.create_branch(t, "dev", from_checkpoint=main[1])
    d1 = store.threads.checkpoint(t, {"only": "dev" + BIG}, branch="dev")
    d2 = store.threads.checkpoint(t, {"only": "dev2" + BIG}, branch="dev")
    store.threads.create_branch(t, "keeper", from_checkpoint=d1.id)
    blob = store.checkpoints.row(d2.id).manifest["only"]
    assert isinstance(blob, BlobRef)
    store.threads.delete_branch(t, "dev")
    assert {b.name for b in store.threads.branches(t)} == {"main", "keeper"}
    with pytest.raises(NotFound):
        store.threads.get(d2.id)
    survivor = store.threads.get(d1.id)  # reachable from keeper
    assert survivor.branch == "keeper"
    assert store.threads.get_state(d1.id) == {"only": "dev" + BIG}
    for cid, n in zip(main, range(3), strict=True):
        assert store.threads.get_state(cid) == {"n": n}
    assert history_ids(store, t, "keeper") == [d1.id, main[1], main[0]]
    store.repository.collect_garbage()
    assert store.repository.get_blobs([blob.hash]) == {}
    with pytest.raises(NotFound):
        store.threads.delete_branch(t, "dev")


def test_delete_branch_rules_main_milestones_default(store: Store) -> None:
    t = store.threads.create_thread("t").id
    main = chain(store, t, 2)
    store.threads.create_branch(t, "rel", from_checkpoint=main[0])
    ms = store.threads.milestone(t, {"r": 1}, "v1", branch="rel")
    with pytest.raises(Conflict):
        store.threads.delete_branch(t, "rel")
    assert store.threads.get(ms.id).milestone == "v1"
    store.threads.delete_branch(t, "rel", force=True)
    with pytest.raises(NotFound):
        store.threads.get(ms.id)
    # main needs force even when it is not the default
    store.threads.create_branch(t, "dev", from_checkpoint=main[1])
    store.threads.checkpoint(t, {"d": 1}, branch="dev")
    with pytest.raises(InvalidInput):  # the default branch
        store.threads.delete_branch(t, "main", force=True)
    thread = store.threads.set_default_branch(t, "dev")
    assert thread.default_branch == "dev"
    assert store.threads.latest(t).branch == "dev"  # type: ignore[union-attr]
    with pytest.raises(Conflict):
        store.threads.delete_branch(t, "main")
    assert {b.name for b in store.threads.branches(t)} == {"main", "dev"}
    with pytest.raises(InvalidInput):
        store.threads.delete_branch(t, "dev", force=True)
    store.threads.delete_branch(t, "main", force=True)
    assert {b.name for b in store.threads.branches(t)} == {"dev"}
    # main's checkpoints reachable from dev survive and keep their state
    assert store.threads.get_state(main[1]) == {"n": 1}
    with pytest.raises(NotFound):
        store.threads.set_default_branch(t, "main")


@pytest.mark.parametrize(
    "bad", ["", "..", "a/../b", ".", "/lead", "trail/", "a//b", "ctl\x01", "tab\tx", " pad", "z" * 129, 7]
)
def test_bad_branch_names_are_refused(store: Store, bad: Any) -> None:
    t = store.threads.create_thread("t").id
    chain(store, t, 1)
    with pytest.raises(InvalidInput):
        store.threads.create_branch(t, bad)
    with pytest.raises(InvalidInput):
        store.threads.rename_branch(t, "main", bad)
    assert [b.name for b in store.threads.branches(t)] == ["main"]


def test_branch_name_limits_and_duplicates(store: Store) -> None:
    t = store.threads.create_thread("t").id
    chain(store, t, 1)
    assert store.threads.create_branch(t, "y" * 128).name == "y" * 128
    assert store.threads.create_branch(t, "feature/a.b-c").name == "feature/a.b-c"
    with pytest.raises(AlreadyExists):
        store.threads.create_branch(t, "feature/a.b-c")
    with pytest.raises(AlreadyExists):
        store.threads.create_branch(t, "main")
    assert len(store.threads.branches(t)) == 3


def test_branch_from_checkpoint_of_another_thread_is_not_found(store: Store) -> None:
    t = store.threads.create_thread("t").id
    other = store.threads.create_thread("other").id
    chain(store, t, 1)
    foreign = chain(store, other, 1)[0]
    with pytest.raises(NotFound):
        store.threads.create_branch(t, "x", from_checkpoint=foreign)
    with pytest.raises(NotFound):
        store.threads.create_branch(t, "x", from_checkpoint="0190a6c6-0000-7000-8000-000000000000")
    with pytest.raises(InvalidInput):
        store.threads.create_branch(t, "x", from_checkpoint="not-an-id")
    with pytest.raises(NotFound):
        store.threads.create_branch("missing", "x")
    assert [b.name for b in store.threads.branches(t)] == ["main"]


# ---------------------------------------------------------------- merge


def _forked(store: Store) -> tuple[str, list[str], list[str]]:
    t = store.threads.create_thread("t").id
    base = store.threads.checkpoint(t, {"a": 1, "b": 1, "log": ["x", "y"]}).id
    ours = store.threads.checkpoint(t, {"a": 2, "b": 1, "log": ["x", "y", "main"]}).id
    store.threads.create_branch(t, "dev", from_checkpoint=base)
    theirs = store.threads.checkpoint(t, {"a": 1, "b": 3, "log": ["x", "y", "dev"]}, branch="dev").id
    return t, [base, ours], [theirs]


def test_merge_theirs_and_ours(store: Store) -> None:
    t, (_, ours), (theirs,) = _forked(store)
    m = store.threads.merge(t, "dev", strategy="theirs")
    assert m.parent_id == ours and m.merge_parent_id == theirs and m.parents == (ours, theirs)
    assert m.branch == "main" and m.title == "merge dev into main"
    assert store.threads.get_state(m.id) == {"a": 1, "b": 3, "log": ["x", "y", "dev"]}
    assert store.threads.latest(t) == m
    assert store.threads.latest(t, "dev").id == theirs  # type: ignore[union-attr]
    m2 = store.threads.merge(t, "dev", "main", strategy="ours", title="keep mine")
    assert m2.parent_id == m.id and m2.merge_parent_id == theirs and m2.title == "keep mine"
    assert store.threads.get_state(m2.id) == store.threads.get_state(m.id)
    # merge the other way
    back = store.threads.merge(t, "main", "dev", strategy="ours")
    assert back.branch == "dev" and back.parent_id == theirs and back.merge_parent_id == m2.id
    assert store.threads.get_state(back.id) == {"a": 1, "b": 3, "log": ["x", "y", "dev"]}


def test_merge_function_gets_base_ours_theirs(store: Store) -> None:
    t, (base, ours), (theirs,) = _forked(store)
    seen: list[tuple[Any, Any, Any]] = []

    def three_way(b: Mapping[str, Any] | None, o: Mapping[str, Any], th: Mapping[str, Any]) -> dict[str, Any]:
        seen.append((b, o, th))
        assert b is not None
        out = dict(o)
        for k, v in th.items():
            if b.get(k) != v:
                out[k] = v
        out["log"] = list(o["log"]) + [x for x in th["log"] if x not in o["log"]]
        return out

    m = store.threads.merge(t, "dev", strategy=three_way)
    assert seen == [
        (
            {"a": 1, "b": 1, "log": ["x", "y"]},
            {"a": 2, "b": 1, "log": ["x", "y", "main"]},
            {"a": 1, "b": 3, "log": ["x", "y", "dev"]},
        )
    ]
    assert store.threads.get_state(m.id) == {"a": 2, "b": 3, "log": ["x", "y", "main", "dev"]}
    assert (m.parent_id, m.merge_parent_id) == (ours, theirs)
    assert store.threads.common_ancestor(t, ours, theirs) == base
    # after the merge, the nearest common ancestor of main and dev is dev's head
    d2 = store.threads.checkpoint(t, {"a": 5, "b": 3, "log": ["z"]}, branch="dev")
    assert store.threads.common_ancestor(t, m.id, d2.id) == theirs
    bases: list[Any] = []
    store.threads.merge(t, "dev", strategy=lambda b, o, th: bases.append(b) or dict(th))
    assert bases == [{"a": 1, "b": 3, "log": ["x", "y", "dev"]}]


def test_merge_function_without_common_ancestor_gets_none(store: Store) -> None:
    t = store.threads.create_thread("t").id
    store.threads.checkpoint(t, {"m": 1})
    store.checkpoints.create(t, {"o": 1}, branch="orphan", create_branch_from=None)
    got: list[Any] = []
    m = store.threads.merge(t, "orphan", strategy=lambda b, o, th: got.append(b) or {**o, **th})
    assert got == [None]
    assert store.threads.get_state(m.id) == {"m": 1, "o": 1}


def test_merge_errors(store: Store) -> None:
    t, (_, ours), _ = _forked(store)
    with pytest.raises(InvalidInput):
        store.threads.merge(t, "main")  # into itself
    with pytest.raises(InvalidInput):
        store.threads.merge(t, "dev", "dev")
    with pytest.raises(InvalidInput):
        store.threads.merge(t, "dev", strategy="octopus")
    with pytest.raises(InvalidInput):
        store.threads.merge(t, "dev", strategy=lambda b, o, th: [1, 2])  # type: ignore[arg-type,return-value]
    with pytest.raises(NotFound):
        store.threads.merge(t, "nope")
    store.repository.create_branch(t, "empty", head=None, created_at=1)
    with pytest.raises(InvalidInput):
        store.threads.merge(t, "empty")
    assert store.threads.latest(t).id == ours  # type: ignore[union-attr]


def test_merge_into_empty_branch_takes_theirs(store: Store) -> None:
    t, _, (theirs,) = _forked(store)
    store.repository.create_branch(t, "empty", head=None, created_at=1)
    m = store.threads.merge(t, "dev", "empty", strategy="ours")
    assert m.parent_id is None and m.merge_parent_id == theirs
    assert store.threads.get_state(m.id) == store.threads.get_state(theirs)


def test_merge_conflicts_when_target_moves_during_merge(store: Store) -> None:
    t, (_, ours), _ = _forked(store)

    def sneaky(b: Any, o: Mapping[str, Any], th: Mapping[str, Any]) -> dict[str, Any]:
        store.threads.checkpoint(t, {"sneak": 1})  # another writer moves main
        return dict(th)

    with pytest.raises(Conflict) as info:
        store.threads.merge(t, "dev", strategy=sneaky)
    assert info.value.expected == ours and info.value.actual != ours
    assert store.threads.get_state(store.threads.latest(t).id) == {"sneak": 1}  # type: ignore[union-attr]


# ---------------------------------------------------------------- optimistic concurrency


def test_expected_head_conflict_names_both_heads_and_stores_nothing(store: Store) -> None:
    t = store.threads.create_thread("t").id
    first = store.threads.checkpoint(t, {"a": 1}, expected_head=None)
    second = store.threads.checkpoint(t, {"a": 2}, expected_head=first.id)
    before = store.checkpoints.stats([t])
    with pytest.raises(Conflict) as info:
        store.threads.checkpoint(t, {"a": 3, "big": BIG}, expected_head=first.id)
    assert info.value.expected == first.id and info.value.actual == second.id
    with pytest.raises(Conflict) as info2:
        store.threads.checkpoint(t, {"a": 3}, expected_head=None)
    assert info2.value.expected is None and info2.value.actual == second.id
    assert store.checkpoints.stats([t]) == before
    assert store.threads.latest(t) == second
    assert history_ids(store, t) == [second.id, first.id]
    # restore honours expected_head too
    with pytest.raises(Conflict):
        store.threads.restore(first.id, expected_head=first.id)
    assert store.checkpoints.stats([t]) == before


# ---------------------------------------------------------------- restore


def test_restore_appends_a_copy_and_counts(store: Store) -> None:
    t = store.threads.create_thread("t").id
    old_state = {"msgs": ["hi", "there", "x" * 200], "big": BIG, "n": 1}
    old = store.threads.checkpoint(t, old_state)
    later = store.threads.checkpoint(t, {"msgs": ["hi"], "n": 2})
    r = store.threads.restore(old.id)
    assert r.branch == "main" and r.parent_id == later.id and r.restored_from == old.id
    assert r.kind is CheckpointKind.MANUAL
    assert store.threads.get_state(r.id) == old_state
    assert store.threads.get(old.id).restore_count == 1
    r2 = store.threads.restore(old.id, thread_id=t)
    assert r2.parent_id == r.id
    assert store.threads.get(old.id).restore_count == 2
    assert store.checkpoints.stats([t]).restores == 2
    # history is never rewritten
    assert history_ids(store, t) == [r2.id, r.id, later.id, old.id]
    assert store.threads.get_state(later.id) == {"msgs": ["hi"], "n": 2}
    # onto a named branch
    store.threads.create_branch(t, "side", from_checkpoint=later.id)
    r3 = store.threads.restore(old.id, branch="side")
    assert r3.branch == "side" and r3.parent_id == later.id
    assert store.threads.get_state(r3.id) == old_state
    assert store.threads.latest(t).id == r2.id  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        store.threads.restore(old.id, branch="nope")
    assert store.threads.get(old.id).restore_count == 3


def test_restore_deleted_expired_archived(store: Store) -> None:
    t = store.threads.create_thread("t").id
    a, b, c, _ = chain(store, t, 4)
    store.checkpoints.delete([a])
    with pytest.raises(NotFound):
        store.threads.restore(a)
    store.checkpoints.set_expiry(b, datetime.now(UTC) - timedelta(seconds=5))
    with pytest.raises(Expired):
        store.threads.restore(b)
    store.checkpoints.archive(c)
    with pytest.raises(Expired):
        store.threads.restore(c)
    store.checkpoints.expire_due()
    with pytest.raises(Expired):
        store.threads.restore(b)
    assert store.checkpoints.stats([t]).checkpoints == 3
    # a future expiry is fine
    store.checkpoints.set_expiry(b, datetime.now(UTC) + timedelta(hours=1))
    assert store.threads.get_state(store.threads.restore(b).id) == {"n": 1}
    assert store.threads.ttl(b, timedelta(hours=2)).expires_at is not None


def test_restore_of_checkpoint_whose_branch_was_renamed_goes_to_default(store: Store) -> None:
    t = store.threads.create_thread("t").id
    main = chain(store, t, 2)
    store.threads.create_branch(t, "dev", from_checkpoint=main[0])
    d = store.threads.checkpoint(t, {"dev": 1}, branch="dev")
    store.threads.rename_branch(t, "dev", "feature")
    r = store.threads.restore(d.id)
    assert r.branch == "feature"
    assert store.threads.get_state(r.id) == {"dev": 1}


# ---------------------------------------------------------------- diff


def test_diff_through_the_service(store: Store) -> None:
    t = store.threads.create_thread("t").id
    a = store.threads.checkpoint(t, {"keep": 1, "gone": "x", "chg": "old", "log": ["a", "b", "c"]})
    b = store.threads.checkpoint(t, {"keep": 1, "new": [1], "chg": "new", "log": ["a", "b", "d", "e"]})
    d = store.threads.diff(a.id, b.id)
    assert d.added == {"new": [1]} and d.removed == {"gone": "x"}
    assert d.changed["chg"] == ("old", "new")
    assert d.lists["log"] == ListChange(2, ["c"], ["d", "e"])
    assert d.unchanged == ["keep"] and not d.empty
    assert store.threads.diff(a.id, a.id).empty
    json.dumps(d.to_dict())


def test_diff_states_lists_and_json() -> None:
    d = diff_states(
        {"log": [1, 2, 3], "same": [1, 2], "t": (1, 2), "b": b"\x00", "o": {"k": [1]}},
        {"log": [1, 2, 3, 4, 5], "same": [1, 2], "t": (1, 3), "b": b"\x01", "o": {"k": [2]}},
    )
    assert d.lists["log"] == ListChange(3, [], [4, 5])
    assert d.unchanged == ["same"]
    assert set(d.changed) == {"log", "t", "b", "o"}
    assert "t" not in d.lists  # tuples are not lists
    shrink = diff_states({"log": [1, 2, 3]}, {"log": [1]})
    assert shrink.lists["log"] == ListChange(1, [2, 3], [])
    replaced = diff_states({"log": [9, 2]}, {"log": [1, 2]})
    assert replaced.lists["log"] == ListChange(0, [9, 2], [1, 2])
    typed = diff_states({"v": 1, "w": [1]}, {"v": 1.0, "w": "1"})
    assert set(typed.changed) == {"v", "w"} and typed.lists == {}
    out = d.to_dict()
    text = json.dumps(out)
    assert json.loads(text)["lists"]["log"] == {"common": 3, "removed": [], "appended": [4, 5]}
    assert out["changed"]["b"] == {"old": repr(b"\x00"), "new": repr(b"\x01")}
    assert out["changed"]["t"] == {"old": [1, 2], "new": [1, 3]}
    weird = diff_states({}, {"obj": {1: object()}, "s": {1, 2}})
    json.dumps(weird.to_dict())
    assert diff_states({}, {}).empty and diff_states({}, {}).to_dict()["unchanged"] == []


def test_diff_sees_nested_bool_int_changes() -> None:
    assert not diff_states({"x": [1, 2]}, {"x": [True, 2]}).empty
    assert not diff_states({"x": {"k": 1}}, {"x": {"k": 1.0}}).empty


# ---------------------------------------------------------------- collaboration


@pytest.fixture
def team(store: Store) -> tuple[Store, str, str]:
    t = store.threads.create_thread("team", owner="alice").id
    store.threads.add_participant(t, "bob", "editor", actor="alice")
    store.threads.add_participant(t, "carol", Role.VIEWER, actor="alice")
    c = store.threads.checkpoint(t, {"v": 1}, actor="bob").id
    return store, t, c


def test_roles_are_recorded(team: tuple[Store, str, str]) -> None:
    store, t, _ = team
    assert store.threads.participants(t) == {"alice": Role.OWNER, "bob": Role.EDITOR, "carol": Role.VIEWER}
    assert store.threads.participants(t, actor="carol")["alice"] is Role.OWNER
    assert store.threads.role_of(t, "bob") is Role.EDITOR
    assert store.threads.role_of(t, "mallory") is None
    store.threads.add_participant(t, "carol", "editor", actor="alice")
    assert store.threads.role_of(t, "carol") is Role.EDITOR
    store.threads.remove_participant(t, "carol", actor="alice")
    assert "carol" not in store.threads.participants(t)


def test_viewer_reads_but_cannot_write(team: tuple[Store, str, str]) -> None:
    store, t, c = team
    before = store.checkpoints.stats([t])
    assert store.threads.get_thread(t, actor="carol").id == t
    assert store.threads.get_state(c, actor="carol") == {"v": 1}
    assert store.threads.get(c, actor="carol").id == c
    assert store.threads.latest(t, actor="carol").id == c  # type: ignore[union-attr]
    assert ids(store.threads.list(t, actor="carol")) == [c]
    assert ids(store.threads.history(t, actor="carol")) == [c]
    assert store.threads.branches(t, actor="carol")[0].head == c
    assert store.threads.get_branch(t, "main", actor="carol").head == c
    assert store.threads.diff(c, c, actor="carol").empty
    refused = [
        lambda: store.threads.checkpoint(t, {"v": 2}, actor="carol"),
        lambda: store.threads.manual(t, {"v": 2}, actor="carol"),
        lambda: store.threads.milestone(t, {"v": 2}, "m", actor="carol"),
        lambda: store.threads.create_branch(t, "x", actor="carol"),
        lambda: store.threads.rename_branch(t, "main", "x", actor="carol"),
        lambda: store.threads.delete_branch(t, "main", force=True, actor="carol"),
        lambda: store.threads.set_default_branch(t, "main", actor="carol"),
        lambda: store.threads.merge(t, "main", "x", actor="carol"),
        lambda: store.threads.restore(c, actor="carol"),
        lambda: store.threads.update_metadata(t, {"x": 1}, actor="carol"),
        lambda: store.threads.add_participant(t, "dave", "viewer", actor="carol"),
        lambda: store.threads.delete_thread(t, actor="carol"),
    ]
    for op in refused:
        with pytest.raises(PermissionDenied):
            op()
    assert store.checkpoints.stats([t]) == before
    assert [b.name for b in store.threads.branches(t)] == ["main"]
    assert store.threads.get_thread(t).metadata == {}
    assert "dave" not in store.threads.participants(t)


def test_editor_writes_but_cannot_manage(team: tuple[Store, str, str]) -> None:
    store, t, c = team
    store.threads.manual(t, {"v": 2}, actor="bob")
    store.threads.create_branch(t, "dev", actor="bob")
    store.threads.update_metadata(t, {"x": 1}, actor="bob")
    r = store.threads.restore(c, actor="bob")
    assert r.restored_from == c
    for op in [
        lambda: store.threads.add_participant(t, "dave", "owner", actor="bob"),
        lambda: store.threads.remove_participant(t, "alice", actor="bob"),
        lambda: store.threads.delete_thread(t, actor="bob"),
    ]:
        with pytest.raises(PermissionDenied):
            op()
    assert store.threads.participants(t)["alice"] is Role.OWNER
    assert "dave" not in store.threads.participants(t)
    store.threads.get_thread(t)
    store.threads.delete_thread(t, actor="alice")
    with pytest.raises(NotFound):
        store.threads.get_thread(t)


def test_stranger_and_unknown_role(team: tuple[Store, str, str]) -> None:
    store, t, c = team
    before = store.checkpoints.stats([t])
    for op in [
        lambda: store.threads.get_thread(t, actor="mallory"),
        lambda: store.threads.get_state(c, actor="mallory"),
        lambda: store.threads.participants(t, actor="mallory"),
        lambda: store.threads.checkpoint(t, {"x": 1}, actor="mallory"),
        lambda: store.threads.backup(t, "/nonexistent/x.tlar", actor="mallory"),
        lambda: store.threads.copy_thread(t, "stolen", actor="mallory"),
    ]:
        with pytest.raises(PermissionDenied):
            op()
    with pytest.raises(InvalidInput):
        store.threads.add_participant(t, "dave", "admin", actor="alice")
    with pytest.raises(InvalidInput):
        store.threads.add_participant(t, "dave", "admin")
    with pytest.raises(InvalidInput):
        store.threads.get_thread(t, actor="")
    with pytest.raises(InvalidInput):
        store.threads.create_thread("x", owner="bad\x00")
    assert "dave" not in store.threads.participants(t)
    assert store.checkpoints.stats([t]) == before
    with pytest.raises(NotFound):
        store.threads.get_thread("stolen")


def test_share_copies_a_checkpoint_with_origin(store: Store) -> None:
    src = store.threads.create_thread("src", owner="alice").id
    dst = store.threads.create_thread("dst", owner="bob").id
    state = {"msgs": ["a" * 80, "b" * 80, "c"], "big": BIG, "n": 1}
    c = store.threads.checkpoint(src, state)
    with pytest.raises(PermissionDenied):
        store.threads.share(c.id, dst, actor="alice")  # no rights on dst
    store.threads.add_participant(dst, "alice", "editor", actor="bob")
    stored_before = store.checkpoints.stats().stored_bytes
    shared = store.threads.share(c.id, dst, actor="alice")
    assert shared.thread_id == dst and shared.branch == "main" and shared.id != c.id
    assert shared.origin == {"thread": src, "checkpoint": c.id}
    assert store.threads.get_state(shared.id) == state
    # only a small row is added: no value is stored again
    assert store.checkpoints.stats().stored_bytes - stored_before < stored_before / 3
    store.threads.create_branch(dst, "in")
    on_branch = store.threads.share(c.id, dst, branch="in")
    assert on_branch.branch == "in" and on_branch.parent_id == shared.id
    # the copy survives the source's deletion
    store.threads.delete_thread(src)
    store.repository.collect_garbage()
    assert store.threads.get_state(shared.id) == state
    assert store.threads.get_state(on_branch.id) == state


def _rich_thread(store: Store, tid: str = "src") -> str:
    t = store.threads.create_thread(tid, metadata={"m": 1}, session_id="s", owner="alice").id
    store.threads.add_participant(t, "bob", "viewer")
    store.threads.set_thread_policy(t, encode_policy({"max_checkpoints": 50, "ttl_auto": None}))
    msgs: list[str] = []
    for i in range(6):
        msgs.append(f"message {i} " + "z" * 300)
        store.threads.checkpoint(t, {"msgs": list(msgs), "big": BIG * 3, "i": i})
    mid = store.threads.history(t, limit=3).items[-1].id
    store.threads.create_branch(t, "alt", from_checkpoint=mid)
    store.threads.checkpoint(t, {"msgs": [*msgs[:3], "alt"], "i": 99}, branch="alt")
    store.threads.milestone(t, {"msgs": msgs, "done": True}, "v1")
    store.threads.merge(t, "alt", strategy="ours")
    return t


def _snapshot(store: Store, tid: str) -> dict[str, Any]:
    svc = store.threads
    thread = svc.get_thread(tid)
    cps = sorted(store.checkpoints.iter(tid), key=lambda c: c.id)
    return {
        "metadata": thread.metadata,
        "session": thread.session_id,
        "default": thread.default_branch,
        "policy": decode_policy(svc.thread_row(tid).policy),
        "branches": {b.name: (b.head, b.created_at, b.base) for b in svc.branches(tid)},
        "participants": svc.participants(tid),
        "checkpoints": [
            (
                c.id,
                c.parent_id,
                c.merge_parent_id,
                c.kind,
                c.status,
                c.branch,
                c.milestone,
                c.created_at,
                c.title,
                c.restore_count,
                c.logical_size,
                c.expires_at,
                c.tags,
            )
            for c in cps
        ],
        "states": {c.id: svc.get_state(c.id, thread_id=tid) for c in cps},
    }


def test_copy_thread_keep_ids(store: Store) -> None:
    src = _rich_thread(store)
    before = store.checkpoints.stats()
    copy = store.threads.copy_thread(src, "cpy", keep_ids=True)
    assert copy.id == "cpy" and copy.origin == {"copied_from": src}
    a, b = _snapshot(store, src), _snapshot(store, "cpy")
    assert a["branches"].keys() == b["branches"].keys()
    assert {k: v[0] for k, v in a["branches"].items()} == {k: v[0] for k, v in b["branches"].items()}
    for key in ("metadata", "session", "default", "policy", "participants", "checkpoints", "states"):
        assert a[key] == b[key], key
    after = store.checkpoints.stats()
    logical = store.checkpoints.stats(["cpy"]).logical_bytes
    assert logical > 5000
    assert after.stored_bytes - before.stored_bytes < logical / 20
    assert after.checkpoints == 2 * before.checkpoints
    # ids are now in two threads: lookups need the thread
    cid = a["checkpoints"][0][0]
    with pytest.raises(InvalidInput):
        store.threads.get(cid)
    assert store.threads.get(cid, thread_id="cpy").thread_id == "cpy"
    # the copy is independent: writing to it leaves the source unchanged
    store.threads.checkpoint("cpy", {"new": 1})
    assert _snapshot(store, src) == a
    store.threads.delete_thread(src)
    store.repository.collect_garbage()
    for cid, state in b["states"].items():
        assert store.threads.get_state(cid, thread_id="cpy") == state
    with pytest.raises(AlreadyExists):
        store.threads.copy_thread("cpy", "cpy")
    with pytest.raises(NotFound):
        store.threads.copy_thread("missing")


def test_copy_thread_new_ids_keep_structure(store: Store) -> None:
    src = _rich_thread(store)
    copy = store.threads.copy_thread(src, actor="bob")  # a viewer may copy; becomes owner of the copy
    assert copy.id != src and copy.origin == {"copied_from": src}
    assert store.threads.role_of(copy.id, "bob") is Role.OWNER
    assert store.threads.role_of(copy.id, "alice") is Role.OWNER
    a, b = _snapshot(store, src), _snapshot(store, copy.id)
    assert not {c[0] for c in a["checkpoints"]} & {c[0] for c in b["checkpoints"]}
    mapping = {x[0]: y[0] for x, y in zip(a["checkpoints"], b["checkpoints"], strict=True)}
    assert sorted(mapping.values()) == [c[0] for c in b["checkpoints"]]  # same order

    def m(cid: str | None) -> str | None:
        return mapping[cid] if cid else None

    for x, y in zip(a["checkpoints"], b["checkpoints"], strict=True):
        assert y[1:3] == (m(x[1]), m(x[2]))
        assert y[3:] == x[3:]
        assert b["states"][y[0]] == a["states"][x[0]]
    assert {k: m(v[0]) for k, v in a["branches"].items()} == {k: v[0] for k, v in b["branches"].items()}
    assert b["metadata"] == {"m": 1}
    milestones = [c for c in b["checkpoints"] if c[6]]
    assert [c[6] for c in milestones] == ["v1"]
    assert store.threads.get(milestones[0][0]).protected


# ---------------------------------------------------------------- async twins


async def test_async_twins(store: Store) -> None:
    svc = store.threads
    t = (await svc.acreate_thread("a")).id
    c = await svc.acheckpoint(t, {"x": 1})
    assert await svc.aget_state(c.id) == {"x": 1}
    assert (await svc.alatest(t)) == c
    assert [x.id for x in (await svc.ahistory(t)).items] == [c.id]
    await svc.acreate_branch(t, "b")
    await svc.acheckpoint(t, {"x": 2}, branch="b")
    m = await svc.amerge(t, "b")
    r = await svc.arestore(c.id)
    assert r.parent_id == m.id
    copy = await svc.acopy_thread(t, "a2")
    assert copy.origin == {"copied_from": t}
