"""``StoreConformance``: the contract every storage backend passes, through the public API.

Tests go through ``store.checkpoints`` (the checkpoint core layer) and, where the
storage contract itself is the subject, ``store.repository``. They cover exact
round trips, delta storage, paging, filters, kinds, lifecycle and cleanup,
statistics, error semantics (nothing written on failure), optimistic concurrency
under real threads, atomicity and the async API.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import random
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from types import TracebackType
from typing import Any

import pytest

from threadline.errors import (
    AlreadyExists,
    Conflict,
    InvalidInput,
    LimitExceeded,
    NotFound,
    SerializationError,
)
from threadline.model import CheckpointFilter, CheckpointKind, CheckpointStatus
from threadline.storage.base import GcReport
from threadline.store import Store, open_store

#: Counts of stored parts (e.g. ``{"blobs": 3, "lists": 1, "items": 40}``), backend-defined keys.
PartCounts = Mapping[str, int]

WORKERS = 8


class StoreFactory:
    """Opens fresh, empty stores from URLs and closes them all on exit.

    ``make_url(n)`` returns the URL of the ``n``-th store (a new file, schema or
    database each time). Keyword options of a call go to :func:`open_store`.
    """

    def __init__(self, make_url: Callable[[int], str]) -> None:
        self._make_url = make_url
        self._stores: list[Store] = []

    def __call__(self, **options: Any) -> Store:
        store = open_store(self._make_url(len(self._stores)), **options)
        self._stores.append(store)
        return store

    def close_all(self) -> None:
        for store in self._stores:
            store.close()
        self._stores.clear()

    def __enter__(self) -> StoreFactory:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close_all()


@dataclasses.dataclass
class Note:
    """A user dataclass registered on the serializer for the round-trip tests."""

    text: str
    score: float = 0.0
    labels: list[str] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------- helpers


def assert_exact(actual: Any, expected: Any, path: str = "state") -> None:
    """Equal values of exactly the same types, recursively (True is not 1, tuple is not list)."""
    assert type(actual) is type(expected), f"{path}: {type(actual).__name__} != {type(expected).__name__}"
    if isinstance(expected, dict):
        assert list(actual) == list(expected), f"{path}: keys {list(actual)} != {list(expected)}"
        for key in expected:
            assert_exact(actual[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_exact(a, e, f"{path}[{i}]")
    elif isinstance(expected, datetime | time):
        assert actual == expected and actual.utcoffset() == expected.utcoffset(), f"{path}: {actual!r}"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def text(n: int, seed: int) -> str:
    """``n`` characters of incompressible text (so sizes are not blurred by compression)."""
    rng = random.Random(seed)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 ") for _ in range(n))


def message(i: int, size: int = 40) -> dict[str, Any]:
    return {"role": "user" if i % 2 else "assistant", "content": text(size, i), "n": i}


def all_ids(store: Store, thread_id: str) -> list[str]:
    return [c.id for c in store.checkpoints.iter(thread_id)]


def head(store: Store, thread_id: str, branch: str = "main") -> str | None:
    return store.repository.get_branch(thread_id, branch).head


def lineage(store: Store, thread_id: str, branch: str = "main") -> list[str]:
    out: list[str] = []
    cursor: str | None = None
    while True:
        page = store.checkpoints.history(thread_id, branch, limit=100, cursor=cursor)
        out.extend(c.id for c in page.items)
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


class StoreConformance:
    """Abstract test class: subclass it and provide the ``store_factory`` fixture.

    ``store_factory(**options)`` returns a new, empty :class:`~threadline.Store`
    each call (options such as ``max_state_bytes`` go to the core layer) and
    closes it at teardown; :class:`StoreFactory` does this from URLs. Override
    :meth:`stored_parts` to let the atomicity and collection tests also count
    the rows (blobs, lists, items) your backend holds.
    """

    @pytest.fixture
    def store_factory(self) -> Callable[..., Store]:
        raise NotImplementedError("subclass StoreConformance and provide a store_factory fixture")

    @pytest.fixture
    def store(self, store_factory: Callable[..., Store]) -> Store:
        store = store_factory()
        store.serializer.register_dataclass(Note, "threadline.testing.Note")
        return store

    def stored_parts(self, store: Store) -> PartCounts | None:
        """Counts of every stored blob, list and list item, or None when not inspectable."""
        return None

    # ------------------------------------------------------------ shared assertions

    def _parts(self, store: Store) -> PartCounts | None:
        parts = self.stored_parts(store)
        return dict(parts) if parts is not None else None

    def assert_nothing_written(
        self, store: Store, thread_id: str, before: tuple[list[str], str | None], branch: str = "main"
    ) -> None:
        assert all_ids(store, thread_id) == before[0], "a failed write left a checkpoint behind"
        assert head(store, thread_id, branch) == before[1], "a failed write moved the branch head"

    def snapshot(self, store: Store, thread_id: str, branch: str = "main") -> tuple[list[str], str | None]:
        return all_ids(store, thread_id), head(store, thread_id, branch)

    def assert_clean_after_failure(self, store: Store, parts_before: PartCounts | None) -> None:
        assert store.repository.collect_garbage() == GcReport(), "a failed write left unreferenced data"
        assert self._parts(store) == parts_before

    # ============================================================ 1. round trips

    def values(self) -> dict[str, Any]:
        return {
            "str": "héllo \x00 wörld 🚀",
            "empty_str": "",
            "int": 42,
            "neg": -7,
            "u64": 2**64 - 1,
            "big": 2**200 + 1,
            "bigneg": -(2**100),
            "float": 3.25,
            "negzero": -0.0,
            "inf": float("inf"),
            "true": True,
            "false": False,
            "none": None,
            "bytes": b"\x00\xffbin",
            "list": [1, "a", None, 2.5, [True, 1]],
            "nested": {"a": {"b": [1, {"c": (1, 2)}], "d": {}}, "e": []},
            "tuple": (1, "x", (2, 3)),
            "set": {1, 2, 3},
            "frozenset": frozenset({"a", "b"}),
            "dt_naive": datetime(2024, 1, 2, 3, 4, 5, 678901),
            "dt_utc": datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
            "dt_offset": datetime(2024, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            "date": date(1999, 12, 31),
            "time": time(23, 59, 59, 999999),
            "timedelta": timedelta(days=-3, seconds=5, microseconds=7),
            "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
            "decimal": Decimal("-1.2300E+5"),
            "dataclass": Note("n", 1.5, ["x", "y"]),
            "dc_in_list": [Note("a"), Note("b", 2.0)],
            "large_str": text(5000, 1),
            "large_bytes": bytes(range(256)) * 20,
            "large_dict": {f"k{i}": text(30, i) for i in range(50)},
            "long_list": [message(i) for i in range(300)],
            "empty_list": [],
            "one_item": [{"only": 1}],
            "list_of_tuples": [(1, 2), (3, 4)],
        }

    def test_round_trip_every_value_type(self, store: Store) -> None:
        store.checkpoints.create_thread("t")
        values = self.values()
        cp = store.checkpoints.create("t", values)
        assert_exact(store.checkpoints.get_state(cp.id), values)
        assert cp.logical_size > 0 and cp.stored_size > 0

    @pytest.mark.parametrize("key", ["big", "dt_offset", "dataclass", "large_str", "long_list", "one_item"])
    def test_round_trip_single_value(self, store: Store, key: str) -> None:
        store.checkpoints.create_thread("t")
        state = {key: self.values()[key]}
        cp = store.checkpoints.create("t", state)
        assert_exact(store.checkpoints.get_state(cp.id), state)

    def test_empty_state(self, store: Store) -> None:
        store.checkpoints.create_thread("t")
        cp = store.checkpoints.create("t", {})
        assert store.checkpoints.get_state(cp.id) == {}

    def test_every_checkpoint_of_a_history_reads_back_exactly(self, store: Store) -> None:
        store.checkpoints.create_thread("t")
        msgs = [message(i) for i in range(10)]
        steps: list[dict[str, Any]] = []
        big = text(3000, 9)

        def write(state: dict[str, Any]) -> None:
            steps.append(copy.deepcopy(state))
            cps.append(store.checkpoints.create("t", state).id)

        cps: list[str] = []
        write({"msgs": msgs, "doc": big, "n": 0})
        for i in range(10, 25):  # appends
            msgs.append(message(i))
            write({"msgs": msgs, "doc": big, "n": i})
        write({"msgs": msgs[:12], "doc": big, "n": 100})  # truncate
        edited = msgs[:12]
        edited[5] = {"role": "system", "content": "edited"}
        write({"msgs": edited, "doc": big + "!", "n": 101})  # edit a middle item, change the blob
        write({"msgs": [message(900), message(901)], "n": 102})  # replace entirely, drop a key
        write({"msgs": msgs[:8], "doc": big, "n": 103})  # an old, shorter prefix again
        write({"msgs": [], "n": 104})
        write({"msgs": [message(0)], "n": 105})
        write({"msgs": msgs, "n": 106, "t": (1, 2)})
        write({"msgs": "not a list any more", "n": 107})
        write({"msgs": [*msgs, message(999)], "n": 108})
        for cid, expected in zip(cps, steps, strict=True):
            assert_exact(store.checkpoints.get_state(cid), expected, f"state of {cid}")

    # ============================================================ 2. delta storage

    def test_appending_one_item_stores_about_one_item(self, store: Store) -> None:
        store.checkpoints.create_thread("t")
        msgs = [message(i, 680) for i in range(200)]
        store.checkpoints.create("t", {"messages": msgs})
        new = message(200, 680)
        item_size = len(store.serializer.dumps(new))
        assert 650 < item_size < 800
        msgs.append(new)
        cp = store.checkpoints.create("t", {"messages": msgs})
        assert cp.stored_size < 2 * item_size, f"stored {cp.stored_size} bytes for one {item_size}-byte item"
        assert cp.logical_size > 200 * item_size
        assert_exact(store.checkpoints.get_state(cp.id), {"messages": msgs})

    def test_constant_large_value_is_stored_once(self, store: Store) -> None:
        store.checkpoints.create_thread("t")
        doc = text(20_000, 3)
        first = store.checkpoints.create("t", {"doc": doc, "step": 0})
        assert first.stored_size > 10_000
        later = [store.checkpoints.create("t", {"doc": doc, "step": i}) for i in range(1, 6)]
        for cp in later:
            assert cp.stored_size < 300, f"a repeated 20 kB value cost {cp.stored_size} bytes"
            assert_exact(store.checkpoints.get_state(cp.id), {"doc": doc, "step": later.index(cp) + 1})

    def test_large_value_shared_across_threads_is_stored_once(self, store: Store) -> None:
        doc = text(20_000, 4)
        store.checkpoints.create_thread("a")
        store.checkpoints.create_thread("b")
        store.checkpoints.create("a", {"doc": doc})
        cp = store.checkpoints.create("b", {"doc": doc})
        assert cp.stored_size < 300

    def test_list_mutated_in_place_is_stored_as_at_write_time(self, store: Store) -> None:
        store.checkpoints.create_thread("t")
        msgs: list[Any] = [message(i) for i in range(8)]
        original = copy.deepcopy(msgs)
        first = store.checkpoints.create("t", {"msgs": msgs})
        msgs[3]["content"] = "changed"  # same list object, same dict object
        second = store.checkpoints.create("t", {"msgs": msgs})
        msgs[3]["content"] = "changed again, and longer than before"
        msgs.append(message(8))
        third = store.checkpoints.create("t", {"msgs": msgs})
        msgs[0] = "replaced"
        fourth = store.checkpoints.create("t", {"msgs": msgs})
        assert_exact(store.checkpoints.get_state(first.id), {"msgs": original})
        expected_second = copy.deepcopy(original)
        expected_second[3]["content"] = "changed"
        assert_exact(store.checkpoints.get_state(second.id), {"msgs": expected_second})
        expected_third = copy.deepcopy(expected_second)
        expected_third[3]["content"] = "changed again, and longer than before"
        expected_third.append(message(8))
        assert_exact(store.checkpoints.get_state(third.id), {"msgs": expected_third})
        assert_exact(store.checkpoints.get_state(fourth.id), {"msgs": ["replaced", *expected_third[1:]]})

    def test_long_list_mutated_in_place_deep_inside_is_stored_as_at_write_time(self, store: Store) -> None:
        # ~300 kB: the list is encoded and compared in many runs of items; a change in a
        # late run, and one that only changes a type (1 -> 1.0), must both be seen.
        store.checkpoints.create_thread("t")
        msgs: list[Any] = [{**message(i), "n": 1, "pad": text(900, i)} for i in range(300)]
        first = store.checkpoints.create("t", {"msgs": msgs})
        snapshot = copy.deepcopy(msgs)
        msgs[250]["content"] = "edited late in the list"
        msgs[299]["n"] = 1.0
        msgs.append(message(300))
        second = store.checkpoints.create("t", {"msgs": msgs})
        assert_exact(store.checkpoints.get_state(first.id), {"msgs": snapshot})
        assert_exact(store.checkpoints.get_state(second.id), {"msgs": copy.deepcopy(msgs)})
        assert second.stored_size < first.stored_size

    def test_list_changes_read_back_exactly(self, store: Store) -> None:
        store.checkpoints.create_thread("t")
        base = [message(i) for i in range(20)]
        variants: list[list[Any]] = [
            base,
            base[:5],  # truncate
            [*base[:5], message(50)],  # truncate then append
            [*base[:10], "middle", *base[11:]],  # edit a middle item
            [message(70 + i) for i in range(3)],  # replace entirely
            base[:15],  # restore an old prefix
            base,  # and the whole old list
            [],
            [base[0]],
            [*base, message(99)],
        ]
        cps = [store.checkpoints.create("t", {"l": v}).id for v in variants]
        for cid, v in zip(cps, variants, strict=True):
            assert_exact(store.checkpoints.get_state(cid), {"l": v})

    def test_branches_append_independently(self, store: Store) -> None:
        store.checkpoints.create_thread("t")
        msgs = [message(i) for i in range(10)]
        fork_point = store.checkpoints.create("t", {"msgs": msgs})
        main_msgs = msgs + [message(i) for i in range(10, 15)]
        store.checkpoints.create("t", {"msgs": main_msgs})
        b_msgs = [*msgs, message(100)]
        b1 = store.checkpoints.create("t", {"msgs": b_msgs}, branch="b", create_branch_from=fork_point.id)
        assert b1.parent_id == fork_point.id and b1.branch == "b"
        main_msgs.append(message(15))
        m2 = store.checkpoints.create("t", {"msgs": main_msgs})
        b_msgs.append(message(101))
        b2 = store.checkpoints.create("t", {"msgs": b_msgs}, branch="b")
        assert b2.parent_id == b1.id
        assert_exact(store.checkpoints.get_state(m2.id), {"msgs": main_msgs})
        assert_exact(store.checkpoints.get_state(b2.id), {"msgs": b_msgs})
        assert_exact(store.checkpoints.get_state(b1.id), {"msgs": [*msgs, message(100)]})
        assert_exact(store.checkpoints.get_state(fork_point.id), {"msgs": msgs})
        for branch, expected in (("main", main_msgs), ("b", b_msgs)):
            latest = store.checkpoints.latest("t", branch)
            assert latest is not None
            assert_exact(store.checkpoints.get_state(latest.id), {"msgs": expected})

    def test_many_forks_of_one_list_stay_readable(self, store: Store) -> None:
        store.checkpoints.create_thread("t")
        msgs = [message(i) for i in range(6)]
        prev = store.checkpoints.create("t", {"msgs": msgs})
        expected: dict[str, list[Any]] = {prev.id: list(msgs)}
        for depth in range(8):  # each branch forks from the previous branch's head
            cur = [*expected[prev.id], message(100 + depth)]
            prev = store.checkpoints.create(
                "t", {"msgs": cur}, branch=f"b{depth}", create_branch_from=prev.id
            )
            expected[prev.id] = cur
            store.checkpoints.create("t", {"msgs": [*cur, "tail"]}, branch=f"b{depth}")
        for cid, value in expected.items():
            assert_exact(store.checkpoints.get_state(cid), {"msgs": value})

    # ============================================================ 3. paging and ordering

    def test_list_pages_walk_every_checkpoint_once_newest_first(self, store: Store) -> None:
        store.checkpoints.create_thread("t")
        created = [store.checkpoints.create("t", {"i": i}).id for i in range(23)]
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            page = store.checkpoints.list("t", limit=5, cursor=cursor)
            assert len(page.items) <= 5
            seen.extend(c.id for c in page.items)
            pages += 1
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == created[::-1]
        assert pages == 5
        assert all_ids(store, "t") == created[::-1]
        assert created == sorted(created), "checkpoint ids must be time-ordered"

    def test_list_limits_are_validated(self, store: Store) -> None:
        store.checkpoints.create_thread("t")
        for bad in (0, -1, 100_001):
            with pytest.raises(InvalidInput):
                store.checkpoints.list("t", limit=bad)
        with pytest.raises(InvalidInput):
            store.checkpoints.list("t", cursor="not-an-id")

    def test_history_walks_first_parent_lineage(self, store: Store) -> None:
        store.checkpoints.create_thread("t")
        main = [store.checkpoints.create("t", {"i": i}).id for i in range(5)]
        b = [store.checkpoints.create("t", {"b": 0}, branch="b", create_branch_from=main[2]).id]
        b += [store.checkpoints.create("t", {"b": i}, branch="b").id for i in range(1, 4)]
        main.append(store.checkpoints.create("t", {"i": 5}).id)
        assert lineage(store, "t") == main[::-1]
        assert lineage(store, "t", "b") == b[::-1] + main[:3][::-1]
        page = store.checkpoints.history("t", "b", limit=3)
        assert [c.id for c in page.items] == b[::-1][:3] and page.next_cursor == b[0]
        assert store.checkpoints.history("t", "main", limit=6).next_cursor is None
        assert {c.id for c in store.checkpoints.iter("t")} == set(main) | set(b)
        assert [c.id for c in store.checkpoints.iter("t", CheckpointFilter.build(branch="b"))] == b[::-1]

    def test_history_of_empty_branch(self, store: Store) -> None:
        store.checkpoints.create_thread("t")
        page = store.checkpoints.history("t")
        assert page.items == [] and page.next_cursor is None
        assert store.checkpoints.latest("t") is None

    def test_iter_crosses_page_boundaries(self, store: Store) -> None:
        store.checkpoints.create_thread("t")
        created = [store.checkpoints.create("t", {}).id for _ in range(205)]
        assert all_ids(store, "t") == created[::-1]

    # ============================================================ 4. filters

    def test_filters_by_kind_status_tag_branch_and_time(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        a = cps.create("t", {"x": 1}, tags=["red", "blue"])
        b = cps.create("t", {"x": 2}, kind="manual", title="b", tags=["red"])
        c = cps.create("t", {"x": 3}, kind="error", error_message="boom")
        d = cps.create("t", {"x": 4}, kind="milestone", milestone="m")
        e = cps.create("t", {"x": 5}, branch="side", create_branch_from=b.id, tags=["blue"])
        cps.archive(c.id)

        def ids(**kw: Any) -> list[str]:
            return [x.id for x in cps.iter("t", CheckpointFilter.build(**kw))]

        assert ids() == [e.id, d.id, c.id, b.id, a.id]
        assert ids(kinds="manual") == [b.id]
        assert ids(kinds=["error", CheckpointKind.MILESTONE]) == [d.id, c.id]
        assert ids(statuses="archived") == [c.id]
        assert ids(statuses=["active"]) == [e.id, d.id, b.id, a.id]
        assert ids(tags=["red"]) == [b.id, a.id]
        assert ids(tags=["red", "blue"]) == [a.id]
        assert ids(tags=["green"]) == []
        assert ids(branch="side") == [e.id]
        assert ids(branch="main", kinds="auto") == [a.id]
        assert ids(created_after=c.created_at) == [x.id for x in (e, d, c) if x.created_at >= c.created_at]
        assert ids(created_before=b.created_at) == [x.id for x in (b, a) if x.created_at <= b.created_at]
        assert ids(created_after=b.created_at, created_before=d.created_at, kinds="error") == [c.id]
        with pytest.raises(InvalidInput):
            CheckpointFilter.build(kinds="bogus")
        with pytest.raises(InvalidInput):
            CheckpointFilter.build(statuses=["gone"])

    @pytest.mark.parametrize(
        "value",
        [
            'it\'s "quoted"',
            "'; DROP TABLE checkpoints; --",
            '") OR 1=1 --',
            "nul\x00byte",
            "ünïcødé ✓ 🚀 中文",
            "%",
            "_",
            "\\",
            "",
        ],
    )
    def test_metadata_filter_matches_data_only(self, store: Store, value: str) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        hit = cps.create("t", {"v": 1}, metadata={"k": value, "other": 1})
        cps.create("t", {"v": 2}, metadata={"k": value + "x"})
        cps.create("t", {"v": 3}, metadata={"k": "plain"})
        cps.create("t", {"v": 4}, metadata={"j": value})
        found = [c.id for c in cps.iter("t", CheckpointFilter.build(metadata={"k": value}))]
        assert found == [hit.id]
        assert cps.get(hit.id).metadata == {"k": value, "other": 1}
        assert len(all_ids(store, "t")) == 4  # nothing was dropped
        assert_exact(cps.get_state(hit.id), {"v": 1})

    def test_metadata_filter_keeps_types_apart(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        t = cps.create("t", {}, metadata={"flag": True})
        one = cps.create("t", {}, metadata={"flag": 1})
        s = cps.create("t", {}, metadata={"flag": "1"})
        f = cps.create("t", {}, metadata={"flag": 1.0})
        nested = cps.create("t", {}, metadata={"flag": {"a": [1, 2]}, "n": None})

        def ids(value: Any) -> set[str]:
            return {c.id for c in cps.iter("t", CheckpointFilter.build(metadata={"flag": value}))}

        assert ids(True) == {t.id}
        assert ids(1) == {one.id, f.id}
        assert ids("1") == {s.id}
        assert ids({"a": [1, 2]}) == {nested.id}
        assert ids(False) == set()
        assert {c.id for c in cps.iter("t", CheckpointFilter.build(metadata={"n": None}))} == {nested.id}

    def test_filters_page_with_residual_matching(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        tagged = [cps.create("t", {}, tags=["x"] if i % 7 == 0 else []).id for i in range(300)]
        wanted = [cid for i, cid in enumerate(tagged) if i % 7 == 0][::-1]
        f = CheckpointFilter.build(tags=["x"])
        seen: list[str] = []
        cursor: str | None = None
        while True:
            page = cps.list("t", f, limit=4, cursor=cursor)
            seen.extend(c.id for c in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == wanted

    # ============================================================ 5. kinds and invariants

    def test_manual_checkpoint_fields(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        cp = cps.create(
            "t",
            {"a": 1},
            kind="manual",
            title="Before deploy",
            description="all green",
            tags=["x", "y", "x"],
            metadata={"by": "me"},
        )
        got = cps.get(cp.id)
        assert (got.kind, got.title, got.description, got.tags) == (
            CheckpointKind.MANUAL,
            "Before deploy",
            "all green",
            ("x", "y"),
        )
        assert got.metadata == {"by": "me"} and got.status is CheckpointStatus.ACTIVE
        assert got.milestone is None and got.error_message is None and not got.protected

    def test_error_checkpoint_needs_a_message(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        before = self.snapshot(store, "t")
        for bad in ({}, {"error_message": ""}, {"error_message": "x", "error_type": 3}):
            with pytest.raises(InvalidInput):
                cps.create("t", {"a": 1}, kind="error", **bad)
        self.assert_nothing_written(store, "t", before)
        cp = cps.create("t", {"a": 1}, kind="error", error_message="boom", error_type="ValueError")
        got = cps.get(cp.id)
        assert (got.kind, got.error_message, got.error_type) == (CheckpointKind.ERROR, "boom", "ValueError")

    def test_milestone_names_are_unique_in_a_thread(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        cps.create_thread("u")
        with pytest.raises(InvalidInput):
            cps.create("t", {}, kind="milestone")
        m = cps.create("t", {"v": 1}, kind="milestone", milestone="v1")
        assert cps.get(m.id).milestone == "v1" and cps.get(m.id).protected
        cps.create("t", {"v": 2})
        before = self.snapshot(store, "t")
        parts = self._parts(store)
        with pytest.raises(AlreadyExists):
            cps.create(
                "t",
                {"v": 3, "big": text(4000, 5), "l": [message(i) for i in range(30)]},
                kind="milestone",
                milestone="v1",
            )
        self.assert_nothing_written(store, "t", before)
        self.assert_clean_after_failure(store, parts)
        with pytest.raises(AlreadyExists):  # on another branch of the same thread too
            cps.create("t", {}, kind="milestone", milestone="v1", branch="b", create_branch_from=m.id)
        assert [b.name for b in store.repository.list_branches("t")] == ["main"]
        other = cps.create("u", {}, kind="milestone", milestone="v1")  # other threads are free to use it
        assert other.milestone == "v1"

    def test_kind_specific_fields_are_refused_on_other_kinds(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        before = self.snapshot(store, "t")
        cases: list[dict[str, Any]] = [
            {"kind": "auto", "error_message": "x"},
            {"kind": "manual", "error_type": "E"},
            {"kind": "auto", "milestone": "m"},
            {"kind": "error", "error_message": "x", "milestone": "m"},
            {"kind": "milestone", "milestone": "m", "error_message": "x"},
            {"kind": "bogus"},
            {"kind": "milestone", "milestone": "../bad"},
            {"kind": "milestone", "milestone": " padded "},
        ]
        for case in cases:
            with pytest.raises(InvalidInput):
                cps.create("t", {"a": 1}, **case)
        self.assert_nothing_written(store, "t", before)

    def test_other_create_arguments_are_validated(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        before = self.snapshot(store, "t")
        soon = datetime.now(UTC) + timedelta(hours=1)
        cases: list[dict[str, Any]] = [
            {"ttl": timedelta(0)},
            {"ttl": timedelta(seconds=-1)},
            {"ttl": timedelta(hours=1), "expires_at": soon},
            {"expires_at": datetime(2030, 1, 1)},  # naive
            {"tags": "red"},
            {"tags": [""]},
            {"title": 3},
            {"metadata": {1: "x"}},
            {"metadata": ["x"]},
            {"branch": ""},
            {"branch": "a//b"},
            {"checkpoint_id": "nope"},
        ]
        for case in cases:
            with pytest.raises(InvalidInput):
                cps.create("t", {"a": 1}, **case)
        self.assert_nothing_written(store, "t", before)

    # ============================================================ 6. lifecycle

    def test_expiry_set_extend_and_clear(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        cp = cps.create("t", {"a": 1}, ttl=timedelta(minutes=5))
        assert cp.expires_at is not None
        assert timedelta(minutes=4) < cp.expires_at - cp.created_at <= timedelta(minutes=5)
        when = datetime(2031, 5, 17, 12, 34, 56, 789012, tzinfo=UTC)
        assert cps.set_expiry(cp.id, when).expires_at == when
        assert cps.extend_expiry(cp.id, timedelta(days=1, microseconds=3)).expires_at == when + timedelta(
            days=1, microseconds=3
        )
        assert cps.set_expiry(cp.id, None).expires_at is None
        start = datetime.now(UTC)
        extended = cps.extend_expiry(cp.id, timedelta(hours=1)).expires_at
        assert extended is not None and start + timedelta(hours=1) <= extended <= datetime.now(
            UTC
        ) + timedelta(hours=1)
        with pytest.raises(InvalidInput):
            cps.extend_expiry(cp.id, timedelta(0))
        with pytest.raises(InvalidInput):
            cps.set_expiry(cp.id, datetime(2031, 1, 1))
        assert_exact(cps.get_state(cp.id), {"a": 1})
        at = datetime(2030, 1, 1, tzinfo=UTC)
        assert cps.create("t", {}, expires_at=at).expires_at == at

    def test_archive_and_set_tags_never_touch_state(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        state = {"msgs": [message(i) for i in range(5)], "doc": text(500, 2)}
        cp = cps.create("t", state, tags=["a"])
        assert cps.set_tags(cp.id, ["b", "c"]).tags == ("b", "c")
        assert cps.set_tags(cp.id, []).tags == ()
        archived = cps.archive(cp.id)
        assert archived.status is CheckpointStatus.ARCHIVED
        assert cps.get(cp.id).status is CheckpointStatus.ARCHIVED
        assert_exact(cps.get_state(cp.id), state)
        with pytest.raises(InvalidInput):
            cps.set_tags(cp.id, "abc")

    def test_expire_due_marks_exactly_what_is_due(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        now = datetime.now(UTC)
        soon = cps.create("t", {"i": 0}, ttl=timedelta(minutes=1))
        later = cps.create("t", {"i": 1}, ttl=timedelta(hours=2))
        never = cps.create("t", {"i": 2})
        assert cps.expire_due(now) == []
        assert cps.expire_due(now + timedelta(minutes=30)) == [soon.id]
        assert cps.get(soon.id).status is CheckpointStatus.EXPIRED
        assert cps.get(later.id).status is CheckpointStatus.ACTIVE
        assert cps.expire_due(now + timedelta(minutes=30)) == []
        assert cps.expire_due(now + timedelta(days=1)) == [later.id]
        assert cps.get(never.id).status is CheckpointStatus.ACTIVE
        assert_exact(cps.get_state(soon.id), {"i": 0})
        revived = cps.set_expiry(soon.id, now + timedelta(days=10))
        assert revived.status is CheckpointStatus.ACTIVE

    def test_cleanup_dry_run_then_real_run(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        cps.create_thread("keep")
        ttl = timedelta(minutes=1)
        msgs: list[Any] = []
        states: dict[str, dict[str, Any]] = {}
        ids: list[str] = []
        for i in range(8):
            msgs.append(message(i, 200))
            kw: dict[str, Any] = {"kind": "milestone", "milestone": "m"} if i == 3 else {}
            state = {"msgs": list(msgs), "doc": text(300, i % 2), "i": i}
            cp = cps.create("t", state, ttl=ttl if i != 5 else None, **kw)
            ids.append(cp.id)
            states[cp.id] = copy.deepcopy(state)
        side = cps.create("t", {"side": msgs[:2]}, branch="side", create_branch_from=ids[1], ttl=ttl)
        states[side.id] = {"side": copy.deepcopy(msgs[:2])}
        other = cps.create("keep", {"doc": text(300, 0)}, ttl=timedelta(days=1))
        later = datetime.now(UTC) + timedelta(hours=1)
        total_before = cps.stats().checkpoints

        dry = cps.cleanup_expired(dry_run=True, now=later)
        assert dry.dry_run and dry.freed_bytes == 0
        assert cps.stats().checkpoints == total_before
        assert all(cps.get(c).status is CheckpointStatus.ACTIVE for c in ids)
        expected_deleted = {ids[0], ids[1], ids[2], ids[4], ids[6]}  # not milestone 3, no-ttl 5, heads 7/side
        assert set(dry.deleted) == expected_deleted
        assert set(dry.expired) == expected_deleted | {ids[3], ids[7], side.id}

        real = cps.cleanup_expired(now=later)
        assert not real.dry_run
        assert sorted(real.deleted) == sorted(dry.deleted)
        assert sorted(real.expired) == sorted(dry.expired)
        survivors = [c for c in ids if c not in expected_deleted]
        assert all_ids(store, "t") == sorted([*survivors, side.id], reverse=True)
        for cid in [*survivors, side.id]:
            assert_exact(cps.get_state(cid), states[cid], f"survivor {cid}")
        assert cps.get(ids[3]).parent_id is None
        assert cps.get(ids[5]).parent_id == ids[3]
        assert cps.get(ids[7]).parent_id == ids[5]
        assert cps.get(side.id).parent_id is None
        assert lineage(store, "t") == [ids[7], ids[5], ids[3]]
        assert head(store, "t", "side") == side.id
        assert cps.get(other.id).status is CheckpointStatus.ACTIVE
        assert_exact(cps.get_state(other.id), {"doc": text(300, 0)})
        again = cps.cleanup_expired(now=later)
        assert again.deleted == [] and again.expired == []

    def test_unprotected_milestone_is_cleaned(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        m = cps.create("t", {}, kind="milestone", milestone="m", ttl=timedelta(minutes=1))
        cps.create("t", {})
        assert cps.set_protected(m.id, False).protected is False
        report = cps.cleanup_expired(now=datetime.now(UTC) + timedelta(hours=1))
        assert report.deleted == [m.id]

    def test_delete_relinks_survivors(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        msgs: list[Any] = []
        ids: list[str] = []
        states: dict[str, dict[str, Any]] = {}
        for i in range(6):
            msgs.append(message(i))
            state = {"msgs": list(msgs), "blob": text(200, i % 2)}
            ids.append(cps.create("t", state).id)
            states[ids[-1]] = copy.deepcopy(state)
        b = cps.create("t", {"b": 1}, branch="b", create_branch_from=ids[2])
        assert cps.delete([ids[1], ids[2], ids[5]]) == 3
        assert cps.get(ids[3]).parent_id == ids[0]
        assert cps.get(b.id).parent_id == ids[0]
        assert head(store, "t") == ids[4], "a deleted head moves to its nearest surviving ancestor"
        assert lineage(store, "t") == [ids[4], ids[3], ids[0]]
        for cid in (ids[0], ids[3], ids[4]):
            assert_exact(cps.get_state(cid), states[cid])
        for gone in (ids[1], ids[2], ids[5]):
            with pytest.raises(NotFound):
                cps.get(gone)
        msgs = states[ids[4]]["msgs"] + [message(50)]
        after = cps.create("t", {"msgs": msgs})
        assert after.parent_id == ids[4]
        assert_exact(cps.get_state(after.id), {"msgs": msgs})
        assert cps.delete([ids[0], ids[3], ids[4], after.id, b.id]) == 5
        assert head(store, "t") is None and head(store, "t", "b") is None
        assert all_ids(store, "t") == []

    def test_delete_is_validated_before_anything_is_deleted(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        a = cps.create("t", {})
        before = self.snapshot(store, "t")
        with pytest.raises(NotFound):
            cps.delete([a.id, str(uuid.uuid4())])
        with pytest.raises(InvalidInput):
            cps.delete([a.id, "nope"])
        self.assert_nothing_written(store, "t", before)

    def test_delete_thread(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        cp = cps.create("t", {"msgs": [message(i) for i in range(5)], "doc": text(1000, 1)})
        cps.delete_thread("t")
        with pytest.raises(NotFound):
            cps.get_thread("t")
        with pytest.raises(NotFound):
            cps.get(cp.id)
        with pytest.raises(NotFound):
            cps.get_state(cp.id)
        with pytest.raises(NotFound):
            cps.list("t")
        with pytest.raises(NotFound):
            cps.create("t", {})
        with pytest.raises(NotFound):
            cps.delete_thread("t")
        cps.create_thread("t")  # the id is free again, with an empty history
        assert all_ids(store, "t") == []
        assert store.checkpoints.latest("t") is None

    def test_everything_is_collected_after_deletion(self, store: Store) -> None:
        cps = store.checkpoints
        empty = self._parts(store)
        for t in ("a", "b"):
            cps.create_thread(t)
            msgs: list[Any] = []
            for i in range(10):
                msgs.append(message(i))
                cps.create(
                    t, {"msgs": list(msgs), "doc": text(2000, i % 3), "own": text(500, hash(t) % 100 + i)}
                )
            cps.create(t, {"msgs": [*msgs[:3], "x"]}, branch="b", create_branch_from=cps.list(t).items[4].id)
        ids_a = all_ids(store, "a")
        cps.delete(ids_a)
        cps.delete_thread("b")
        store.repository.collect_garbage()
        assert self._parts(store) == empty
        stats = cps.stats()
        assert (stats.checkpoints, stats.logical_bytes, stats.stored_bytes) == (0, 0, 0)
        assert store.repository.collect_garbage() == GcReport()
        cps.delete_thread("a")
        assert cps.stats().threads == 0

    def test_deleting_a_thread_never_breaks_another_that_shares_blobs(self, store: Store) -> None:
        cps = store.checkpoints
        shared = text(5000, 11)
        msgs = [message(i, 100) for i in range(20)]
        cps.create_thread("a")
        cps.create_thread("b")
        cps.create("a", {"doc": shared, "msgs": msgs})
        cb = cps.create("b", {"doc": shared, "msgs": msgs})
        cps.create("a", {"doc": shared + "a", "msgs": msgs})
        cps.delete_thread("a")
        store.repository.collect_garbage()
        assert_exact(cps.get_state(cb.id), {"doc": shared, "msgs": msgs})
        again = cps.create("b", {"doc": shared, "msgs": [*msgs, message(20)]})
        assert_exact(cps.get_state(again.id), {"doc": shared, "msgs": [*msgs, message(20)]})
        cps.create_thread("a")  # and writing the shared value in a new thread after its blob was shared
        ca = cps.create("a", {"doc": shared})
        assert_exact(cps.get_state(ca.id), {"doc": shared})

    def test_rewriting_a_collected_value(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        doc = text(3000, 12)
        msgs = [message(i) for i in range(10)]
        first = cps.create("t", {"doc": doc, "msgs": msgs})
        cps.create("t", {"other": 1})
        cps.delete([first.id])  # the blob and the list are collected, caches may remember them
        again = cps.create("t", {"doc": doc, "msgs": msgs})
        assert_exact(cps.get_state(again.id), {"doc": doc, "msgs": msgs})

    # ============================================================ 7. statistics

    def test_stats(self, store: Store) -> None:
        cps = store.checkpoints
        empty = cps.stats()
        assert (empty.threads, empty.checkpoints, empty.oldest, empty.newest) == (0, 0, None, None)
        cps.create_thread("t")
        cps.create_thread("u")
        doc = text(4000, 5)
        first = cps.create("t", {"doc": doc})
        cps.create("t", {"doc": doc}, kind="manual")
        err = cps.create("t", {"doc": doc}, kind="error", error_message="x")
        m = cps.create("t", {"doc": doc}, kind="milestone", milestone="m")
        last = cps.create("t", {"doc": doc}, branch="b", create_branch_from=first.id)
        cps.archive(err.id)
        cps.count_restore(m.id)
        cps.count_restore(m.id)
        cps.count_restore(first.id)
        u = cps.create("u", {"x": 1})
        assert cps.get(m.id).restore_count == 2
        s = cps.stats(["t"])
        assert s.threads == 1 and s.checkpoints == 5
        assert dict(s.by_kind) == {"auto": 2, "manual": 1, "error": 1, "milestone": 1}
        assert dict(s.by_status) == {"active": 4, "expired": 0, "archived": 1}
        assert s.oldest == first.created_at and s.newest == last.created_at
        assert s.restores == 3 and s.milestones == 1 and s.branches == 2
        assert s.logical_bytes >= 5 * 4000
        assert s.stored_bytes < s.logical_bytes / 3, "a value held by 5 checkpoints is stored once"
        assert s.sharing_ratio > 3
        whole = cps.stats()
        assert whole.threads == 2 and whole.checkpoints == 6 and whole.branches == 3
        assert whole.newest == u.created_at
        assert whole.logical_bytes == s.logical_bytes + u.logical_size
        assert whole.stored_bytes == s.stored_bytes + u.stored_size
        assert cps.stats([]).checkpoints == 0
        with pytest.raises(NotFound):
            cps.stats(["nope"])

    # ============================================================ 8. errors

    def test_not_found(self, store: Store) -> None:
        cps = store.checkpoints
        missing = str(uuid.uuid4())
        cps.create_thread("t")
        cp = cps.create("t", {})
        calls: list[Callable[[], object]] = [
            lambda: cps.get_thread("nope"),
            lambda: cps.create("nope", {}),
            lambda: cps.list("nope"),
            lambda: cps.history("nope"),
            lambda: cps.latest("nope"),
            lambda: cps.delete_thread("nope"),
            lambda: cps.get(missing),
            lambda: cps.get_state(missing),
            lambda: cps.archive(missing),
            lambda: cps.set_expiry(missing, None),
            lambda: cps.set_tags(missing, []),
            lambda: cps.delete([missing]),
            lambda: cps.history("t", "nope"),
            lambda: cps.latest("t", "nope"),
            lambda: cps.create("t", {}, branch="nope"),
            lambda: cps.create("t", {}, branch="b", create_branch_from=missing),
            lambda: store.repository.get_branch("t", "nope"),
        ]
        for call in calls:
            with pytest.raises(NotFound):
                call()
        assert all_ids(store, "t") == [cp.id]
        assert [b.name for b in store.repository.list_branches("t")] == ["main"]

    def test_branch_from_another_threads_checkpoint_is_refused(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        cps.create_thread("u")
        foreign = cps.create("u", {"x": 1})
        with pytest.raises(NotFound):
            cps.create("t", {}, branch="b", create_branch_from=foreign.id)
        assert [b.name for b in store.repository.list_branches("t")] == ["main"]

    def test_creating_an_existing_branch_conflicts(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        a = cps.create("t", {})
        before = self.snapshot(store, "t")
        with pytest.raises(Conflict):
            cps.create("t", {}, branch="main", create_branch_from=a.id)
        self.assert_nothing_written(store, "t", before)

    def test_count_restore_of_unknown_checkpoint(self, store: Store) -> None:
        cps = store.checkpoints
        with pytest.raises(NotFound):
            cps.count_restore(str(uuid.uuid4()))
        with pytest.raises(InvalidInput):
            cps.count_restore("nope")

    @pytest.mark.parametrize("bad", ["", "x" * 257, "a\nb", "nul\x00", "tab\there", "del\x7f", 3, None])
    def test_invalid_thread_ids(self, store: Store, bad: Any) -> None:
        cps = store.checkpoints
        if bad is not None:
            with pytest.raises(InvalidInput):
                cps.create_thread(bad)
        with pytest.raises(InvalidInput):
            cps.create(bad, {})
        with pytest.raises(InvalidInput):
            cps.get_thread(bad)
        with pytest.raises(InvalidInput):
            cps.list(bad)
        assert cps.stats().threads == 0

    def test_longest_thread_id_is_accepted(self, store: Store) -> None:
        tid = "é" * 256
        store.checkpoints.create_thread(tid)
        cp = store.checkpoints.create(tid, {"a": 1})
        assert store.checkpoints.get(cp.id).thread_id == tid
        with pytest.raises(AlreadyExists):
            store.checkpoints.create_thread(tid)

    @pytest.mark.parametrize("bad", ["", "nope", "1234", "g" * 32, "00000000-0000-0000-0000-00000000000", 7])
    def test_malformed_checkpoint_ids(self, store: Store, bad: Any) -> None:
        cps = store.checkpoints
        for call in (cps.get, cps.get_state, cps.archive, lambda x: cps.delete([x])):
            with pytest.raises(InvalidInput):
                call(bad)

    def test_checkpoint_ids_in_any_uuid_spelling(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        cp = cps.create("t", {"a": 1})
        for spelling in (cp.id.upper(), cp.id.replace("-", ""), "{" + cp.id + "}"):
            assert cps.get(spelling).id == cp.id
            assert cps.get_state(spelling) == {"a": 1}

    def test_bad_states_write_nothing(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        cps.create("t", {"msgs": [message(i) for i in range(5)]})
        before = self.snapshot(store, "t")
        parts = self._parts(store)
        bad_states: list[Any] = [
            {1: "int key"},
            {("a",): "tuple key"},
            {"ok": 1, None: "none key"},
            [("a", 1)],
            "state",
            None,
        ]
        for state in bad_states:
            with pytest.raises(InvalidInput):
                cps.create("t", state)
        self.assert_nothing_written(store, "t", before)
        self.assert_clean_after_failure(store, parts)

    @pytest.mark.parametrize(
        ("state", "path"),
        [
            ({"a": {"b": [1, 2, object()]}}, "state['a']['b'][2]"),
            ({"msgs": [message(0), message(1), {"x": object()}]}, "state['msgs'][2]['x']"),
            ({"ok": text(5000, 1), "s": {1, 2, object()}}, "state['s']"),
            ({"d": {"k": (1, lambda: 0)}}, "state['d']['k'][1]"),
        ],
    )
    def test_serialization_error_names_the_key_path(
        self, store: Store, state: dict[str, Any], path: str
    ) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        cps.create("t", {"msgs": [message(i) for i in range(3)]})
        before = self.snapshot(store, "t")
        parts = self._parts(store)
        with pytest.raises(SerializationError) as info:
            cps.create("t", state)
        assert path in str(info.value)
        self.assert_nothing_written(store, "t", before)
        self.assert_clean_after_failure(store, parts)

    def test_state_limit(self, store_factory: Callable[..., Store]) -> None:
        store = store_factory(max_state_bytes=1000)
        cps = store.checkpoints
        cps.create_thread("t")
        ok = cps.create("t", {"a": "x" * 500})
        before = self.snapshot(store, "t")
        parts = self._parts(store)
        for state in (
            {"a": "x" * 2000},
            {"a": "x" * 600, "b": "y" * 600},
            {"msgs": [message(i, 100) for i in range(20)]},
            {"b": b"\x00" * 1001},
        ):
            with pytest.raises(LimitExceeded) as info:
                cps.create("t", state)
            assert "1000" in str(info.value)
        self.assert_nothing_written(store, "t", before)
        self.assert_clean_after_failure(store, parts)
        assert_exact(cps.get_state(ok.id), {"a": "x" * 500})

    # ============================================================ 9. optimistic concurrency

    def test_expected_head(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        first = cps.create("t", {"i": 0}, expected_head=None)
        second = cps.create("t", {"i": 1}, expected_head=first.id)
        assert second.parent_id == first.id
        before = self.snapshot(store, "t")
        parts = self._parts(store)
        for stale in (first.id, None, str(uuid.uuid4())):
            with pytest.raises(Conflict) as info:
                cps.create(
                    "t",
                    {"i": 2, "doc": text(3000, 7), "msgs": [message(i) for i in range(9)]},
                    expected_head=stale,
                )
            assert info.value.expected == stale and info.value.actual == second.id
        self.assert_nothing_written(store, "t", before)
        self.assert_clean_after_failure(store, parts)
        b = cps.create("t", {}, branch="b", create_branch_from=first.id, expected_head=None)
        with pytest.raises(Conflict):
            cps.create("t", {}, branch="b", expected_head=first.id)
        assert cps.create("t", {}, branch="b", expected_head=b.id).parent_id == b.id

    def test_concurrent_writers_on_one_branch_make_one_chain(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        per_worker = 12
        barrier = threading.Barrier(WORKERS)

        def work(w: int) -> list[tuple[str, dict[str, Any]]]:
            barrier.wait()
            out = []
            log = [message(1000 + w)]
            for i in range(per_worker):
                log.append(message(w * 100 + i, 60))
                state = {"w": w, "i": i, "log": list(log), "doc": text(300, w)}
                out.append((cps.create("t", state).id, copy.deepcopy(state)))
            return out

        with ThreadPoolExecutor(WORKERS) as pool:
            written = [x for chunk in pool.map(work, range(WORKERS)) for x in chunk]
        ids = all_ids(store, "t")
        assert len(ids) == WORKERS * per_worker == len(written)
        assert set(ids) == {cid for cid, _ in written}
        parents = [cps.get(cid).parent_id for cid in ids]
        assert len(set(parents)) == len(parents), "two checkpoints share a parent: the branch forked"
        assert parents.count(None) == 1
        chain = lineage(store, "t")
        assert len(chain) == len(ids) and set(chain) == set(ids), "the branch is one chain of every write"
        for cid, state in written:
            assert_exact(cps.get_state(cid), state, f"state of {cid}")

    def test_ids_increase_along_the_lineage_under_concurrency(self, store: Store) -> None:
        cps = store.checkpoints
        inversions: list[tuple[str, str]] = []
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # many interleavings
        try:
            for attempt in range(10):
                tid = f"t{attempt}"
                cps.create_thread(tid)

                def work(w: int, tid: str = tid) -> None:
                    for i in range(10):
                        cps.create(tid, {"w": w, "i": i})

                with ThreadPoolExecutor(WORKERS) as pool:
                    list(pool.map(work, range(WORKERS)))
                inversions = [
                    (c.id, c.parent_id)
                    for c in cps.iter(tid)
                    if c.parent_id is not None and c.parent_id > c.id
                ]
                if inversions:
                    break
        finally:
            sys.setswitchinterval(interval)
        assert not inversions, f"{len(inversions)} checkpoints have an id smaller than their parent's"
        assert lineage(store, tid) == all_ids(store, tid)

    def test_concurrent_writers_on_distinct_threads(self, store: Store) -> None:
        cps = store.checkpoints

        def work(w: int) -> list[str]:
            tid = f"w{w}"
            cps.create_thread(tid)
            msgs: list[Any] = []
            ids = []
            for i in range(10):
                msgs.append(message(i))
                ids.append(cps.create(tid, {"msgs": list(msgs), "shared": text(2000, 0)}).id)
            return ids

        with ThreadPoolExecutor(WORKERS) as pool:
            results = list(pool.map(work, range(WORKERS)))
        for w, ids in enumerate(results):
            assert all_ids(store, f"w{w}") == ids[::-1]
            assert_exact(
                cps.get_state(ids[-1]), {"msgs": [message(i) for i in range(10)], "shared": text(2000, 0)}
            )
        assert cps.stats().checkpoints == WORKERS * 10

    def test_concurrent_expected_head_exactly_one_winner_per_round(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        cps.create("t", {"round": -1})
        rounds = 5
        barrier = threading.Barrier(WORKERS)

        def work(w: int) -> list[bool]:
            won = []
            for r in range(rounds):
                seen = head(store, "t")
                barrier.wait()
                try:
                    cps.create("t", {"round": r, "w": w, "doc": text(500, w)}, expected_head=seen)
                    won.append(True)
                except Conflict as exc:
                    assert exc.expected == seen and exc.actual not in (None, seen)
                    won.append(False)
                barrier.wait()
            return won

        with ThreadPoolExecutor(WORKERS) as pool:
            outcomes = list(pool.map(work, range(WORKERS)))
        for r in range(rounds):
            assert sum(o[r] for o in outcomes) == 1, f"round {r}: not exactly one winner"
        ids = all_ids(store, "t")
        assert len(ids) == rounds + 1
        assert lineage(store, "t") == ids
        assert [cps.get_state(c)["round"] for c in ids] == list(range(rounds - 1, -2, -1))

    # ============================================================ 10. atomicity

    def test_duplicate_checkpoint_id_writes_nothing(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        fixed = str(uuid.uuid4())
        cps.create("t", {"a": 1}, checkpoint_id=fixed)
        cps.create("t", {"b": 2})
        store.repository.collect_garbage()
        before = self.snapshot(store, "t")
        parts = self._parts(store)
        stats = cps.stats()
        with pytest.raises(AlreadyExists):
            cps.create(
                "t", {"doc": text(4000, 8), "msgs": [message(i) for i in range(40)]}, checkpoint_id=fixed
            )
        self.assert_nothing_written(store, "t", before)
        assert cps.stats() == stats
        self.assert_clean_after_failure(store, parts)
        assert_exact(cps.get_state(fixed), {"a": 1})

    def test_failed_writes_leave_nothing_half_written(self, store: Store) -> None:
        cps = store.checkpoints
        cps.create_thread("t")
        msgs = [message(i) for i in range(30)]
        good = cps.create("t", {"msgs": msgs, "doc": text(3000, 1)}, kind="milestone", milestone="m")
        store.repository.collect_garbage()
        before = self.snapshot(store, "t")
        parts = self._parts(store)
        stats = cps.stats()
        longer = [*msgs, message(30), message(31)]
        failures: list[tuple[type[Exception], dict[str, Any]]] = [
            (SerializationError, {"state": {"msgs": longer, "doc": text(3000, 2), "bad": [1, object()]}}),
            (
                AlreadyExists,
                {"state": {"msgs": longer, "doc": text(3000, 3)}, "kind": "milestone", "milestone": "m"},
            ),
            (Conflict, {"state": {"msgs": longer, "doc": text(3000, 4)}, "expected_head": None}),
            (NotFound, {"state": {"msgs": longer, "doc": text(3000, 5)}, "branch": "absent"}),
        ]
        for error, kwargs in failures:
            with pytest.raises(error):
                cps.create("t", **kwargs)
            self.assert_nothing_written(store, "t", before)
            assert cps.stats() == stats
        self.assert_clean_after_failure(store, parts)
        # the failed writes did not poison later ones (caches, list logs)
        nxt = cps.create("t", {"msgs": longer, "doc": text(3000, 3)})
        assert nxt.parent_id == good.id
        assert_exact(cps.get_state(nxt.id), {"msgs": longer, "doc": text(3000, 3)})
        assert_exact(cps.get_state(good.id), {"msgs": msgs, "doc": text(3000, 1)})

    # ============================================================ 11. async API

    def test_async_api(self, store: Store) -> None:
        cps = store.checkpoints

        async def scenario() -> None:
            await cps.acreate_thread("t")
            msgs = [message(i) for i in range(5)]
            first = await cps.acreate("t", {"msgs": msgs})
            second = await cps.acreate("t", {"msgs": [*msgs, message(5)]}, expected_head=first.id)
            assert_exact(await cps.aget_state(first.id), {"msgs": msgs})
            assert_exact(await cps.aget_state(second.id), {"msgs": [*msgs, message(5)]})
            page = await cps.alist("t", limit=1)
            assert [c.id for c in page.items] == [second.id] and page.next_cursor == second.id
            assert [c.id for c in (await cps.ahistory("t")).items] == [second.id, first.id]
            assert (await cps.alatest("t")) == cps.get(second.id)
            with pytest.raises(Conflict):
                await cps.acreate("t", {}, expected_head=first.id)
            await asyncio.gather(*(cps.acreate_thread(f"a{i}") for i in range(WORKERS)))
            made = await asyncio.gather(*(cps.acreate(f"a{i}", {"i": i}) for i in range(WORKERS)))
            states = await asyncio.gather(*(cps.aget_state(c.id) for c in made))
            assert states == [{"i": i} for i in range(WORKERS)]
            assert (await cps.astats()).checkpoints == 2 + WORKERS
            await cps.adelete_thread("a0")
            with pytest.raises(NotFound):
                await cps.aget(made[0].id)

        asyncio.run(scenario())
