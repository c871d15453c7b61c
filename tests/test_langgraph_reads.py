"""Reads run in one snapshot per call (get_tuple) or per page (list), never held open
while the caller iterates: a caller may write between two items of a listing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.base.id import uuid6

from threadline.langgraph import ThreadlineSaver
from threadline.langgraph import saver as saver_module


@pytest.fixture(params=["memory", "sqlite"])
def saver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ThreadlineSaver]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/reads.db"
    with ThreadlineSaver.from_url(url) as opened:
        yield opened


def put(saver: ThreadlineSaver, thread: str, parent: str | None, value: int) -> str:
    cp = empty_checkpoint()
    cp["id"] = str(uuid6(clock_seq=value))
    cp["channel_values"] = {"v": value}
    conf: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ""}
    if parent:
        conf["checkpoint_id"] = parent
    return saver.put({"configurable": conf}, cp, {"source": "loop", "step": value}, {})["configurable"][  # type: ignore[arg-type]
        "checkpoint_id"
    ]


def test_writing_while_listing(saver: ThreadlineSaver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(saver_module, "_PAGE", 2)  # several pages
    parent = None
    for value in range(5):
        parent = put(saver, "t", parent, value)
    seen = []
    other = None
    for item in saver.list({"configurable": {"thread_id": "t"}}):
        seen.append(item.checkpoint["channel_values"]["v"])
        other = put(saver, "u", other, len(seen))  # a write between two items
        saver.put_writes(item.config, [("ch", len(seen))], "task")
    assert seen == [4, 3, 2, 1, 0]
    assert len(list(saver.list({"configurable": {"thread_id": "u"}}))) == 5
    latest = saver.get_tuple({"configurable": {"thread_id": "t"}})
    assert latest is not None and latest.pending_writes == [("task", "ch", 1)]
