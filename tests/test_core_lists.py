"""Lists handed to the core already encoded (ormsgpack.Ext items, as the LangGraph saver
does): the same objects at the same positions are known unchanged without encoding them
again; anything else is still compared by its bytes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ormsgpack
import pytest

from threadline import Store, open_store
from threadline.serde import EXT_TUPLE


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
