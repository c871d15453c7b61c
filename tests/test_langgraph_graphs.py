"""Real LangGraph graphs (plain Python nodes) on ThreadlineSaver, compared with InMemorySaver."""

from __future__ import annotations

import asyncio
import operator
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command, interrupt

from threadline.langgraph import ThreadlineSaver
from threadline.model import CheckpointKind


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    turns: int


def bot(state: Chat) -> dict[str, Any]:
    last = state["messages"][-1]
    n = state.get("turns", 0) + 1
    return {"messages": [AIMessage(f"echo: {last.content}", id=f"ai-{n}")], "turns": n}


def chat_graph(saver: BaseCheckpointSaver[Any]) -> Any:
    g = StateGraph(Chat)
    g.add_node("bot", bot)
    g.add_edge(START, "bot")
    g.add_edge("bot", END)
    return g.compile(checkpointer=saver)


@pytest.fixture(params=["memory", "sqlite"])
def make_saver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], ThreadlineSaver]]:
    opened: list[ThreadlineSaver] = []

    def make() -> ThreadlineSaver:
        url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/graphs.db"
        saver = ThreadlineSaver.from_url(url)
        opened.append(saver)
        return saver

    yield make
    for saver in opened:
        saver.close()


def observe(graph: Any, config: dict[str, Any]) -> dict[str, Any]:
    """What must be identical whatever the checkpointer: state, next nodes, history."""
    state = graph.get_state(config)
    history = list(graph.get_state_history(config))
    return {
        "values": state.values,
        "next": state.next,
        "tasks": [(t.name, [i.value for i in t.interrupts]) for t in state.tasks],
        "history": [(h.values, h.next, h.metadata.get("source"), h.metadata.get("step")) for h in history],
    }


def both(
    make_saver: Callable[[], ThreadlineSaver], scenario: Callable[[BaseCheckpointSaver[Any]], Any]
) -> Any:
    """Run a scenario on InMemorySaver and on ThreadlineSaver; their observations must match."""
    expected = scenario(InMemorySaver())
    saver = make_saver()
    actual = scenario(saver)
    assert actual == expected
    return saver, actual


def test_chat_stream_values_and_updates(make_saver: Callable[[], ThreadlineSaver]) -> None:
    def scenario(saver: BaseCheckpointSaver[Any]) -> Any:
        graph = chat_graph(saver)
        config = {"configurable": {"thread_id": "chat"}}
        chunks = []
        for i in range(5):
            mode = "values" if i % 2 else "updates"
            msg = {"messages": [HumanMessage(f"hello {i}", id=f"h-{i}")]}
            chunks.append(list(graph.stream(msg, config, stream_mode=mode)))
        return chunks, observe(graph, config)

    saver, (_, seen) = both(make_saver, scenario)
    assert len(seen["values"]["messages"]) == 10
    assert len(seen["history"]) == 15  # input + loop per turn... as InMemorySaver
    # LangGraph threads are threadline threads; their messages are stored as a list log.
    thread = saver.store.checkpoints.get_thread("chat")
    assert thread.metadata["langgraph"] == {"thread_id": "chat", "checkpoint_ns": ""}
    stats = saver.store.checkpoints.stats(["chat"])
    assert stats.checkpoints == 15


async def test_chat_async(make_saver: Callable[[], ThreadlineSaver]) -> None:
    async def run(saver: BaseCheckpointSaver[Any]) -> Any:
        graph = chat_graph(saver)
        config = {"configurable": {"thread_id": "achat"}}
        out = []
        for i in range(3):
            out.append(await graph.ainvoke({"messages": [HumanMessage(f"hi {i}", id=f"h-{i}")]}, config))
        history = [h.values async for h in graph.aget_state_history(config)]
        return out, (await graph.aget_state(config)).values, history

    assert await run(make_saver()) == await run(InMemorySaver())


async def test_concurrent_async_graphs(make_saver: Callable[[], ThreadlineSaver]) -> None:
    """Eight graphs on distinct threads at once: their puts are committed in shared batches
    by the saver's writer thread, while their pending writes arrive alongside."""

    async def run(saver: BaseCheckpointSaver[Any]) -> Any:
        chat, ask = chat_graph(saver), ask_graph(saver)

        async def talk(k: int) -> Any:
            config = {"configurable": {"thread_id": f"c{k}"}}
            for i in range(4):
                await chat.ainvoke({"messages": [HumanMessage(f"hi {i} from {k}", id=f"h-{k}-{i}")]}, config)
            history = [(h.values, h.next) async for h in chat.aget_state_history(config)]
            return (await chat.aget_state(config)).values, history

        async def question(k: int) -> Any:
            config = {"configurable": {"thread_id": f"q{k}"}}
            await ask.ainvoke({"question": f"q{k}", "log": []}, config)
            await ask.ainvoke(Command(resume=f"a{k}"), config)
            return (await ask.aget_state(config)).values

        return await asyncio.gather(*(talk(k) for k in range(6)), *(question(k) for k in range(2)))

    assert await run(make_saver()) == await run(InMemorySaver())


class Ask(TypedDict):
    question: str
    answer: str
    log: Annotated[list[str], operator.add]


def ask_graph(saver: BaseCheckpointSaver[Any]) -> Any:
    def ask(state: Ask) -> dict[str, Any]:
        answer = interrupt({"question": state["question"]})
        return {"answer": answer, "log": [f"asked {state['question']}"]}

    def finish(state: Ask) -> dict[str, Any]:
        return {"log": [f"answered {state['answer']}"]}

    g = StateGraph(Ask)
    g.add_node("ask", ask)
    g.add_node("finish", finish)
    g.add_edge(START, "ask")
    g.add_edge("ask", "finish")
    g.add_edge("finish", END)
    return g.compile(checkpointer=saver)


def test_interrupt_and_resume(make_saver: Callable[[], ThreadlineSaver]) -> None:
    def scenario(saver: BaseCheckpointSaver[Any]) -> Any:
        graph = ask_graph(saver)
        config = {"configurable": {"thread_id": "ask"}}
        first = graph.invoke({"question": "name?", "answer": "", "log": []}, config)
        paused = observe(graph, config)
        done = graph.invoke(Command(resume="Ada"), config)
        return first["__interrupt__"][0].value, paused, done, observe(graph, config)

    _, (_, paused, done, _) = both(make_saver, scenario)
    assert paused["next"] == ("ask",) and paused["tasks"] == [("ask", [{"question": "name?"}])]
    assert done["answer"] == "Ada"


def test_interrupt_resumed_by_a_new_saver(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/resume.db"
    config = {"configurable": {"thread_id": "t"}}
    with ThreadlineSaver.from_url(url) as saver:
        ask_graph(saver).invoke({"question": "q", "answer": "", "log": []}, config)
    with ThreadlineSaver.from_url(url) as saver:
        done = ask_graph(saver).invoke(Command(resume="later"), config)
    assert done["log"] == ["asked q", "answered later"]


def test_time_travel_update_state_forks_a_branch(make_saver: Callable[[], ThreadlineSaver]) -> None:
    def scenario(saver: BaseCheckpointSaver[Any]) -> Any:
        graph = chat_graph(saver)
        config = {"configurable": {"thread_id": "tt"}}
        for i in range(3):
            graph.invoke({"messages": [HumanMessage(f"m{i}", id=f"h-{i}")]}, config)
        past = next(h for h in graph.get_state_history(config) if h.values.get("turns") == 1 and not h.next)
        forked = graph.update_state(past.config, {"messages": [HumanMessage("edited", id="edit")]})
        graph.invoke(None, forked)
        after = graph.invoke({"messages": [HumanMessage("again", id="again")]}, config)
        return after, observe(graph, config)

    saver, (after, _) = both(make_saver, scenario)
    assert [m.content for m in after["messages"]][:4] == ["m0", "echo: m0", "edited", "again"]
    branches = {b.name for b in saver.store.threads.branches("tt")}
    assert "main" in branches and any(b.startswith("fork-") for b in branches)
    kinds = {cp.kind for cp in saver.store.checkpoints.iter("tt")}
    assert CheckpointKind.MANUAL in kinds  # update_state checkpoints are manual


class Outer(TypedDict):
    items: Annotated[list[str], operator.add]


def nested_graph(saver: BaseCheckpointSaver[Any]) -> Any:
    def inner_step(state: Outer) -> dict[str, Any]:
        approved = interrupt("approve?")
        return {"items": [f"inner:{approved}"]}

    sub = StateGraph(Outer)
    sub.add_node("inner", inner_step)
    sub.add_edge(START, "inner")
    sub.add_edge("inner", END)

    g = StateGraph(Outer)
    g.add_node("before", lambda s: {"items": ["before"]})
    g.add_node("child", sub.compile())
    g.add_node("after", lambda s: {"items": ["after"]})
    g.add_edge(START, "before")
    g.add_edge("before", "child")
    g.add_edge("child", "after")
    g.add_edge("after", END)
    return g.compile(checkpointer=saver)


def test_subgraph_namespaces(make_saver: Callable[[], ThreadlineSaver]) -> None:
    def scenario(saver: BaseCheckpointSaver[Any]) -> Any:
        graph = nested_graph(saver)
        config = {"configurable": {"thread_id": "nest"}}
        graph.invoke({"items": []}, config)
        state = graph.get_state(config, subgraphs=True)
        sub_values = state.tasks[0].state.values if state.tasks and state.tasks[0].state else None
        done = graph.invoke(Command(resume="yes"), config)
        return sub_values, done, observe(graph, config)

    saver, (sub_values, done, _) = both(make_saver, scenario)
    assert sub_values == {"items": ["before"]}
    assert done["items"] == ["before", "before", "inner:yes", "after"]  # the child returns its whole state
    namespaces = saver.namespaces("nest")
    assert len(namespaces) >= 2 and namespaces[0] == ("", "nest")
    saver.delete_thread("nest")
    assert saver.namespaces("nest") == []


class Flaky(TypedDict):
    value: int


def flaky_graph(saver: BaseCheckpointSaver[Any], broken: dict[str, bool]) -> Any:
    def work(state: Flaky) -> dict[str, Any]:
        if broken["on"]:
            raise RuntimeError("tool is down")
        return {"value": state["value"] * 10}

    g = StateGraph(Flaky)
    g.add_node("prepare", lambda s: {"value": s["value"] + 1})
    g.add_node("work", work)
    g.add_edge(START, "prepare")
    g.add_edge("prepare", "work")
    g.add_edge("work", END)
    return g.compile(checkpointer=saver)


def test_node_raises_then_resume_after_fix(make_saver: Callable[[], ThreadlineSaver]) -> None:
    def scenario(saver: BaseCheckpointSaver[Any]) -> Any:
        broken = {"on": True}
        graph = flaky_graph(saver, broken)
        config = {"configurable": {"thread_id": "flaky"}}
        with pytest.raises(RuntimeError, match="tool is down"):
            graph.invoke({"value": 1}, config)
        failed = observe(graph, config)
        broken["on"] = False
        return failed, graph.invoke(None, config), observe(graph, config)

    saver, (failed, done, _) = both(make_saver, scenario)
    assert failed["next"] == ("work",) and done == {"value": 20}
    errors = saver.store.checkpoints.list("flaky", saver_filter(CheckpointKind.ERROR)).items
    assert len(errors) == 1
    assert errors[0].error_type == "RuntimeError" and "tool is down" in (errors[0].error_message or "")


def saver_filter(kind: CheckpointKind) -> Any:
    from threadline.model import CheckpointFilter

    return CheckpointFilter.build(kinds=[kind])


KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys, operator
    from typing import Annotated, TypedDict
    from langgraph.graph import StateGraph, START, END
    from threadline.langgraph import ThreadlineSaver

    class S(TypedDict):
        steps: Annotated[list[int], operator.add]

    def step(n):
        def node(state):
            if n == 3 and os.environ.get("KILL_AT_3") == "1":
                os.kill(os.getpid(), signal.SIGKILL)
            return {"steps": [n]}
        return node

    g = StateGraph(S)
    for n in range(6):
        g.add_node(f"s{n}", step(n))
    g.add_edge(START, "s0")
    for n in range(5):
        g.add_edge(f"s{n}", f"s{n + 1}")
    g.add_edge("s5", END)
    with ThreadlineSaver.from_url(sys.argv[1]) as saver:
        graph = g.compile(checkpointer=saver)
        config = {"configurable": {"thread_id": "killed"}}
        resume = sys.argv[2] == "resume"
        # durability="sync": each checkpoint is committed before the next step starts
        out = graph.invoke(None if resume else {"steps": []}, config, durability="sync")
        print(out["steps"])
    """
)


def test_sigkill_mid_run_then_resume_in_new_process(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN)
    url = f"sqlite:///{tmp_path}/killed.db"
    env = {**os.environ, "KILL_AT_3": "1"}
    first = subprocess.run(
        [sys.executable, str(script), url, "start"], env=env, capture_output=True, text=True
    )
    assert first.returncode == -signal.SIGKILL, first.stderr
    with ThreadlineSaver.from_url(url) as saver:
        latest = saver.get_tuple({"configurable": {"thread_id": "killed", "checkpoint_ns": ""}})
        assert latest is not None and latest.checkpoint["channel_values"]["steps"] == [0, 1, 2]
    env["KILL_AT_3"] = "0"
    second = subprocess.run(
        [sys.executable, str(script), url, "resume"], env=env, capture_output=True, text=True
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "[0, 1, 2, 3, 4, 5]"
