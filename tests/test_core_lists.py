"""Lists handed to the core already encoded (ormsgpack.Ext items, as the LangGraph saver
does): the same objects at the same positions are known unchanged without encoding them
again; anything else is still compared by its bytes."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ormsgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from threadline import Store, open_store
from threadline.serde import EXT_TUPLE
from threadline.testing.conformance import assert_exact, text

_COUNTER = itertools.count()


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/l.db"
    with open_store(url) as s:
        yield s


def ext(store: Store, *items: Any) -> ormsgpack.Ext:
    """An already-encoded tuple: loads back as ``tuple(items)``."""
    return ormsgpack.Ext(EXT_TUPLE, store.serializer.dumps(list(items)))


def test_same_encoded_objects_append_only_what_is_new(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = store.checkpoints
    svc.create_thread("t")
    values = [ext(store, i, "x" * 500) for i in range(50)]
    first = svc.create("t", {"l": list(values)})
    values.append(ext(store, 50, "y" * 500))

    def no_whole_list_encoding(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the unchanged prefix was encoded again")

    monkeypatch.setattr(store.serializer, "dumps_runs", no_whole_list_encoding)
    monkeypatch.setattr(store.serializer, "dumps_run", no_whole_list_encoding)
    second = svc.create("t", {"l": list(values)})
    monkeypatch.undo()
    assert second.stored_size < first.stored_size / 20
    assert svc.get_state(second.id)["l"] == [(i, "x" * 500) for i in range(50)] + [(50, "y" * 500)]
    assert svc.get_state(first.id)["l"] == [(i, "x" * 500) for i in range(50)]


def test_a_replaced_or_moved_encoded_object_is_stored_as_written(store: Store) -> None:
    svc = store.checkpoints
    svc.create_thread("t")
    values = [ext(store, i) for i in range(20)]
    first = svc.create("t", {"l": list(values)})
    changed = list(values)
    changed[7] = ext(store, "changed")  # a new object in the middle
    second = svc.create("t", {"l": changed})
    swapped = list(changed)
    swapped[0], swapped[1] = swapped[1], swapped[0]  # same objects, other positions
    third = svc.create("t", {"l": swapped})
    equal_copy = [ext(store, i) for i in range(20)]  # equal bytes, other objects
    fourth = svc.create("t", {"l": equal_copy})
    expected = [(i,) for i in range(20)]
    assert svc.get_state(first.id)["l"] == expected
    assert svc.get_state(second.id)["l"] == [*expected[:7], ("changed",), *expected[8:]]
    assert svc.get_state(third.id)["l"] == [(1,), (0,), *expected[2:7], ("changed",), *expected[8:]]
    assert svc.get_state(fourth.id)["l"] == expected
    shorter = svc.create("t", {"l": equal_copy[:5]})
    assert svc.get_state(shorter.id)["l"] == expected[:5]
    mixed = svc.create("t", {"l": [*equal_copy[:5], "plain"]})
    assert svc.get_state(mixed.id)["l"] == [*expected[:5], "plain"]


# ---------------------------------------------------------------- property: in-place edits


_EDITS = st.lists(
    st.tuples(
        st.sampled_from(
            ["append", "append_many", "set_field", "retype", "replace", "truncate", "insert", "swap"]
        ),
        st.integers(min_value=0, max_value=10_000),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=_EDITS)
def test_a_list_edited_in_place_between_writes_reads_back_as_written(
    store: Store, edits: list[tuple[str, int]]
) -> None:
    """One list object, edited in place between writes (appends, fields changed, a value's
    type changed with an equal value, items replaced, inserted, swapped, the list cut), spans
    several encoding runs of ~32 KiB; every checkpoint reads back exactly as it was written."""
    svc = store.checkpoints
    tid = f"t{next(_COUNTER)}"
    svc.create_thread(tid)
    items: list[dict[str, Any]] = [{"i": i, "body": text(2000, i), "n": 1} for i in range(40)]
    written: list[tuple[str, list[dict[str, Any]]]] = []

    def write() -> None:
        cp = svc.create(tid, {"l": items})
        written.append((cp.id, copy.deepcopy(items)))

    write()
    for op, k in edits:
        at = k % max(1, len(items))
        if op == "append":
            items.append({"i": len(items), "body": text(300, k), "n": 1})
        elif op == "append_many":
            items.extend({"i": j, "body": text(2500, j + k), "n": 1} for j in range(20))
        elif op == "set_field" and items:
            items[at]["body"] = items[at]["body"][:-1] + "!"
        elif op == "retype" and items:
            items[at]["n"] = 1.0 if type(items[at]["n"]) is int else 1  # equal value, other type
        elif op == "replace" and items:
            items[at] = {"i": -1, "body": "replaced", "n": 2}
        elif op == "truncate":
            del items[max(2, at) :]
        elif op == "insert":
            items.insert(at, {"i": -2, "body": "inserted", "n": 3})
        elif op == "swap" and len(items) > 1:
            items[0], items[at] = items[at], items[0]
        if len(items) < 2:
            items.append({"i": 0, "body": "pad", "n": 0})
        write()
    for cid, expected in written:
        assert_exact(svc.get_state(cid)["l"], expected)
