"""Async puts are written by the saver's writer thread, several in one transaction: each
caller still gets its own result, or its own error."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.base.id import uuid6

from threadline.errors import NotFound, SerializationError
from threadline.langgraph import ThreadlineSaver


@pytest.fixture(params=["memory", "sqlite"])
def saver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ThreadlineSaver]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/async.db"
    with ThreadlineSaver.from_url(url) as opened:
        yield opened


def checkpoint(values: dict[str, Any], step: int) -> Any:
    cp = empty_checkpoint()
    cp["id"] = str(uuid6(clock_seq=step))
    cp["channel_values"] = values
    cp["channel_versions"] = dict.fromkeys(values, step + 1)
    return cp


def config(thread: str, parent: str | None = None) -> Any:
    conf: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ""}
    if parent is not None:
        conf["checkpoint_id"] = parent
    return {"configurable": conf}


async def test_concurrent_writers_each_get_their_checkpoints(saver: ThreadlineSaver) -> None:
    async def writer(k: int) -> list[str]:
        messages: list[Any] = []
        parent: str | None = None
        ids = []
        for step in range(12):
            cls = HumanMessage if step % 2 == 0 else AIMessage
            messages.append(cls(f"message {step} of writer {k}", id=f"{k}-{step}"))
            cp = checkpoint({"messages": list(messages), "turn": step}, step)
            stored = await saver.aput(config(f"t{k}", parent), cp, {"source": "loop", "step": step}, {})
            parent = stored["configurable"]["checkpoint_id"]
            assert parent == cp["id"]
            ids.append(parent)
        return ids

    written = await asyncio.gather(*(writer(k) for k in range(8)))
    for k, ids in enumerate(written):
        history = [t async for t in saver.alist(config(f"t{k}"))]
        assert [t.checkpoint["id"] for t in history] == ids[::-1]
        assert [t.parent_config["configurable"]["checkpoint_id"] for t in history[:-1]] == ids[-2::-1]  # type: ignore[index]
        latest = history[0].checkpoint["channel_values"]
        assert [m.content for m in latest["messages"]] == [f"message {s} of writer {k}" for s in range(12)]
        assert latest["turn"] == 11
        assert {b.name for b in saver.store.threads.branches(f"t{k}")} == {"main"}  # no forks


async def test_a_failing_put_fails_alone(saver: ThreadlineSaver) -> None:
    first = {}
    for k in range(4):
        first[k] = (await saver.aput(config(f"t{k}"), checkpoint({"v": k}, 0), {"source": "input"}, {}))[
            "configurable"
        ]["checkpoint_id"]
    bad = socket.socket()
    try:
        results = await asyncio.gather(
            *(
                saver.aput(config(f"t{k}", first[k]), checkpoint({"v": bad if k == 2 else k + 10}, 1), {}, {})
                for k in range(4)
            ),
            return_exceptions=True,
        )
    finally:
        bad.close()
    assert isinstance(results[2], SerializationError)
    for k in (0, 1, 3):
        stored = saver.get_tuple(config(f"t{k}"))
        assert stored is not None and stored.checkpoint["channel_values"] == {"v": k + 10}
    assert saver.get_tuple(config("t2")).checkpoint["id"] == first[2]  # type: ignore[union-attr]


def test_a_batch_that_fails_is_written_put_by_put(saver: ThreadlineSaver) -> None:
    """When the transaction of several puts fails, each is written alone: the put whose
    thread was deleted meanwhile fails, the others are stored."""
    puts = [saver.prepare(f"t{k}", "", None, checkpoint({"v": k}, 0), {"source": "input"}) for k in range(3)]
    saver.core.delete_thread("t1")
    outcomes = saver.write_checkpoints(puts)
    assert outcomes[0] is True and outcomes[2] is True
    assert isinstance(outcomes[1], NotFound)
    assert saver.get_tuple(config("t0")) is not None and saver.get_tuple(config("t2")) is not None
    again = saver.write_checkpoints([saver.prepare("t0", "", None, checkpoint({"v": 0}, 0), {})])
    assert again == [True]  # a new checkpoint id: a second root, on its own branch


async def test_put_again_after_close_and_a_cancelled_put(tmp_path: Path) -> None:
    saver = ThreadlineSaver.from_url(f"sqlite:///{tmp_path}/c.db")
    await saver.aput(config("a"), checkpoint({"v": 1}, 0), {}, {})
    saver._writer.close()  # the writer thread stops; the next async put starts a new one
    task = asyncio.ensure_future(saver.aput(config("b"), checkpoint({"v": 2}, 0), {}, {}))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stored = await saver.aput(config("c"), checkpoint({"v": 3}, 0), {}, {})
    assert stored["configurable"]["thread_id"] == "c"
    saver.close()


async def test_puts_waiting_for_the_writer_are_committed_together(
    saver: ThreadlineSaver, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    started, release = threading.Event(), threading.Event()
    prepare, create_many = saver.prepare, saver.core.create_many
    batches: list[int] = []

    def slow_prepare(thread_id: str, *args: Any) -> Any:
        if thread_id == "first":
            started.set()
            release.wait(10)
        return prepare(thread_id, *args)

    def counting_create_many(requests: Any, **kwargs: Any) -> Any:
        batches.append(len(requests))
        return create_many(requests, **kwargs)

    monkeypatch.setattr(saver, "prepare", slow_prepare)
    monkeypatch.setattr(saver.core, "create_many", counting_create_many)
    first = asyncio.ensure_future(saver.aput(config("first"), checkpoint({"v": 0}, 0), {}, {}))
    await asyncio.to_thread(started.wait, 10)  # the writer thread is preparing "first"
    rest = [
        asyncio.ensure_future(saver.aput(config(f"t{k}"), checkpoint({"v": k}, 0), {}, {})) for k in range(5)
    ]
    while len(saver._writer._queue) < 5:  # the five puts wait for the writer
        await asyncio.sleep(0.001)
    release.set()
    await asyncio.gather(first, *rest)
    assert batches == [5]
    for k in range(5):
        assert saver.get_tuple(config(f"t{k}")).checkpoint["channel_values"] == {"v": k}  # type: ignore[union-attr]
