"""The saver's message-list fast path: only new or changed messages are encoded, and a
message changed in place between two puts is stored exactly as it was at each put."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.base import BaseCheckpointSaver, empty_checkpoint
from langgraph.checkpoint.base.id import uuid6
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from threadline.langgraph import ThreadlineSaver
from threadline.serde import Serializer


class Writer:
    """Puts successive checkpoints of one thread through the saver API, as LangGraph does."""

    def __init__(self, saver: BaseCheckpointSaver[Any], thread_id: str = "t") -> None:
        self.saver = saver
        self.thread_id = thread_id
        self.parent: str | None = None
        self.version: Any = None

    def put(self, messages: list[Any], parent: str | None = None) -> str:
        self.version = self.saver.get_next_version(self.version, None)
        checkpoint = empty_checkpoint()
        checkpoint["id"] = str(uuid6())
        checkpoint["channel_values"] = {"messages": list(messages)}
        checkpoint["channel_versions"] = {"messages": self.version}
        config: dict[str, Any] = {"configurable": {"thread_id": self.thread_id, "checkpoint_ns": ""}}
        if parent or self.parent:
            config["configurable"]["checkpoint_id"] = parent or self.parent
        stored = self.saver.put(config, checkpoint, {"source": "loop", "step": 0}, {"messages": self.version})  # type: ignore[arg-type]
        self.parent = stored["configurable"]["checkpoint_id"]
        return self.parent

    def messages(self, checkpoint_id: str) -> list[Any]:
        config = {
            "configurable": {"thread_id": self.thread_id, "checkpoint_ns": "", "checkpoint_id": checkpoint_id}
        }
        found = self.saver.get_tuple(config)  # type: ignore[arg-type]
        assert found is not None
        return list(found.checkpoint["channel_values"]["messages"])


@pytest.fixture(params=["memory", "sqlite"])
def saver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ThreadlineSaver]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/enc.db"
    with ThreadlineSaver.from_url(url) as opened:
        yield opened


def chat(n: int) -> list[AnyMessage]:
    out: list[AnyMessage] = []
    for i in range(n):
        if i % 3 == 0:
            out.append(HumanMessage(f"question {i} " + "q" * (i * 37 % 900), id=f"h{i}"))
        elif i % 3 == 1:
            out.append(
                AIMessage(
                    f"answer {i}",
                    id=f"a{i}",
                    tool_calls=[{"name": "search", "args": {"q": f"x{i}", "k": [1, 2]}, "id": f"c{i}"}],
                    response_metadata={"model_name": "m", "finish_reason": "tool_calls"},
                    usage_metadata={"input_tokens": i, "output_tokens": 2 * i, "total_tokens": 3 * i},
                )
            )
        else:
            out.append(ToolMessage(f"result {i}", tool_call_id=f"c{i - 1}", id=f"t{i}"))
    return out


def mutate_content(msgs: list[Any]) -> None:
    msgs[3].content = "rewritten in place"


def mutate_tool_args(msgs: list[Any]) -> None:
    msgs[1].tool_calls[0]["args"]["q"] = "another query"


def mutate_metadata_type(msgs: list[Any]) -> None:
    msgs[4].usage_metadata["input_tokens"] = float(msgs[4].usage_metadata["input_tokens"])  # 4 -> 4.0


def mutate_kwargs(msgs: list[Any]) -> None:
    msgs[0].additional_kwargs["flag"] = True


def mutate_kwargs_to_equal_bool(msgs: list[Any]) -> None:
    msgs[6].additional_kwargs["n"] = 1
    msgs[7].additional_kwargs["n"] = True  # equal to 1, not the same


def replace_and_drop(msgs: list[Any]) -> None:
    msgs[2] = HumanMessage("replaced", id="r2")
    del msgs[5]


MUTATIONS = [
    mutate_content,
    mutate_tool_args,
    mutate_metadata_type,
    mutate_kwargs,
    mutate_kwargs_to_equal_bool,
    replace_and_drop,
]


@pytest.mark.parametrize("mutate", MUTATIONS, ids=lambda f: f.__name__)
def test_messages_changed_in_place_are_stored_as_at_each_put(
    saver: ThreadlineSaver, mutate: Callable[[list[Any]], None]
) -> None:
    writer = Writer(saver)
    msgs = chat(40)
    first = writer.put(msgs)
    at_first = copy.deepcopy(msgs)
    mutate(msgs)
    msgs.append(HumanMessage("one more", id="last"))
    second = writer.put(msgs)
    at_second = copy.deepcopy(msgs)
    mutate_content(msgs)  # and again, after the second put
    third = writer.put(msgs)
    assert writer.messages(first) == at_first
    assert writer.messages(second) == at_second
    assert writer.messages(third) == msgs
    dumps = saver.serializer.dumps
    for stored, original in zip(writer.messages(second), at_second, strict=True):
        assert dumps(stored) == dumps(original)  # same fields, same types
    assert saver.serializer.dumps(writer.messages(third)) == saver.serializer.dumps(msgs)


def test_a_growing_chat_encodes_only_new_messages(
    saver: ThreadlineSaver, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = Writer(saver)
    msgs = chat(30)
    writer.put(msgs)
    rebuilt: list[int] = []
    original = Serializer._exts_from_states

    def spy(self: Serializer, types: list[type], *args: Any) -> Any:
        rebuilt.append(len(types))
        return original(self, types, *args)

    monkeypatch.setattr(Serializer, "_exts_from_states", spy)
    for i in range(30, 60):
        msgs = [*msgs, HumanMessage(f"more {i}", id=f"m{i}")]  # a new list, as add_messages makes
        last = writer.put(msgs)
    assert sum(rebuilt) == 30
    assert writer.messages(last) == msgs
    stats = saver.store.checkpoints.stats(["t"])
    assert stats.stored_bytes < stats.logical_bytes / 10  # each put stored one message


def test_time_travel_and_a_second_thread_stay_exact(saver: ThreadlineSaver) -> None:
    writer = Writer(saver)
    msgs = chat(20)
    ids = [writer.put(msgs[: i + 1]) for i in range(20)]
    fork = writer.put([*msgs[:5], AIMessage("a different future", id="f")], parent=ids[4])
    assert writer.messages(fork) == [*msgs[:5], AIMessage("a different future", id="f")]
    other = Writer(saver, "other")
    shared = msgs[:10]  # the same message objects in two threads
    shared[0].content = "changed for the other thread"
    other_id = other.put(shared)
    assert other.messages(other_id) == shared
    assert writer.messages(ids[19])[0].content == "question 0 "


def test_messages_holding_other_values_take_the_ordinary_path(saver: ThreadlineSaver) -> None:
    writer = Writer(saver)
    msgs = chat(5)
    msgs[0].additional_kwargs["when"] = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)  # not plain msgpack
    msgs[1].additional_kwargs["pair"] = (1, 2)
    first = writer.put(msgs)
    msgs.append(HumanMessage("next", id="n"))
    second = writer.put(msgs)
    assert writer.messages(first) == msgs[:5]
    assert writer.messages(second) == msgs
    assert writer.messages(second)[1].additional_kwargs["pair"] == (1, 2)


def test_memo_bound_forgets_threads_and_stays_exact(tmp_path: Path) -> None:
    with ThreadlineSaver.from_url(f"sqlite:///{tmp_path}/b.db") as saver:
        saver._lists.limit = 20_000  # a few messages' worth
        writers = [Writer(saver, f"t{k}") for k in range(4)]
        chats = [chat(30) for _ in writers]
        last: list[str] = []
        for step in range(3):
            last = []
            for w, msgs in zip(writers, chats, strict=True):
                msgs.append(HumanMessage(f"step {step}", id=f"s{step}"))
                last.append(w.put(msgs))
        assert saver._lists._size <= 20_000 or len(saver._lists._memos) == 1
        for w, cid, msgs in zip(writers, last, chats, strict=True):
            assert w.messages(cid) == msgs
        saver.delete_thread("t0")
        assert all(key[0] != "t0" for key in saver._lists._memos)


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def test_same_states_as_inmemorysaver_when_a_node_edits_history() -> None:
    def bot(state: Chat) -> dict[str, Any]:
        first = state["messages"][0]
        first.content = f"{first.content}!"  # edits an earlier message in place
        first.additional_kwargs.setdefault("edits", []).append(len(state["messages"]))
        return {"messages": [AIMessage(f"seen {len(state['messages'])}", id=f"ai-{len(state['messages'])}")]}

    def run(saver: BaseCheckpointSaver[Any]) -> Any:
        g = StateGraph(Chat)
        g.add_node("bot", bot)
        g.add_edge(START, "bot")
        g.add_edge("bot", END)
        graph = g.compile(checkpointer=saver)
        config = {"configurable": {"thread_id": "edit"}}
        for i in range(4):  # each checkpoint stored before the next step edits the messages
            graph.invoke({"messages": [HumanMessage(f"hi {i}", id=f"h{i}")]}, config, durability="sync")
        return [h.values for h in graph.get_state_history(config)]

    with ThreadlineSaver.from_url("memory://") as saver:
        assert run(saver) == run(InMemorySaver())


def test_loaded_messages_are_like_constructed_ones() -> None:
    """A message loads with its fields in declared order (so it encodes to the bytes it was
    stored as), fresh mutable defaults, its extra fields and the fields it was built with."""
    from langchain_core.documents import Document

    from threadline.langgraph import register_langgraph_types

    serializer = register_langgraph_types(Serializer())
    made = [
        HumanMessage("hi", id="h1"),
        AIMessage("", tool_calls=[{"name": "f", "args": {"x": 1}, "id": "c1"}], custom="extra"),
        ToolMessage("42", tool_call_id="c1", name="f", additional_kwargs={"k": [1, 2]}),
        Document("page", metadata={"source": "a"}),
    ]
    loaded = serializer.loads(serializer.dumps(made))
    assert loaded == made
    for original, copy_ in zip(made, loaded, strict=True):
        assert list(copy_.__dict__) == list(original.__dict__)
        assert copy_.__pydantic_fields_set__ == original.__pydantic_fields_set__
        assert copy_.__pydantic_extra__ == original.__pydantic_extra__
    assert serializer.dumps(loaded) == serializer.dumps(made)
    again = serializer.loads(serializer.dumps(made))
    assert again[0].additional_kwargs is not loaded[0].additional_kwargs  # fresh defaults
    assert loaded[1].custom == "extra"  # type: ignore[attr-defined]


def test_malformed_message_data_is_refused() -> None:
    from threadline.langgraph.types import _model_hooks

    _, human = _model_hooks(HumanMessage)
    _, doc = _model_hooks(__import__("langchain_core.documents", fromlist=["Document"]).Document)
    with pytest.raises(TypeError, match="mapping"):
        human(["hi"])
    with pytest.raises(TypeError, match="lacks"):
        human({"id": "x"})
    assert human({"content": "hi", "other": 1}).other == 1  # messages allow extra fields
    with pytest.raises(TypeError, match="no fields"):
        doc({"page_content": "p", "other": 1})
