"""Importing LangGraph SqliteSaver / PostgresSaver databases into threadline."""

from __future__ import annotations

import os
import pickle
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict
from urllib.parse import urlsplit

import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command, interrupt

from threadline.importers import Opaque, import_langgraph
from threadline.langgraph import ThreadlineSaver


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def graph_on(saver: BaseCheckpointSaver[Any]) -> Any:
    def bot(state: Chat) -> dict[str, Any]:
        n = len(state["messages"])
        if state["messages"][-1].content == "ask":
            answer = interrupt("really?")
            return {"messages": [AIMessage(f"ok {answer}", id=f"ai-{n}")]}
        return {"messages": [AIMessage(f"echo {n}", id=f"ai-{n}")]}

    g = StateGraph(Chat)
    g.add_node("bot", bot)
    g.add_edge(START, "bot")
    g.add_edge("bot", END)
    return g.compile(checkpointer=saver)


def fill(saver: BaseCheckpointSaver[Any], thread: str, turns: int) -> None:
    graph = graph_on(saver)
    config = {"configurable": {"thread_id": thread}}
    for i in range(turns):
        graph.invoke({"messages": [HumanMessage(f"hi {i}", id=f"h-{thread}-{i}")]}, config)
    graph.invoke({"messages": [HumanMessage("ask", id=f"ask-{thread}")]}, config)  # pending interrupt


def sqlite_source(path: Path) -> Iterator[SqliteSaver]:
    conn = sqlite3.connect(str(path), check_same_thread=False)
    try:
        yield SqliteSaver(conn)
    finally:
        conn.close()


def test_import_sqlite_full_then_incremental(tmp_path: Path) -> None:
    db = tmp_path / "lg.db"
    for saver in sqlite_source(db):
        fill(saver, "a", 3)
        fill(saver, "b", 2)
        # a fork: time travel on thread a
        graph = graph_on(saver)
        past = list(graph.get_state_history({"configurable": {"thread_id": "a"}}))[3]
        graph.update_state(past.config, {"messages": [HumanMessage("edited", id="edit")]})
    seen: list[tuple[int, int]] = []
    with ThreadlineSaver.from_url(f"sqlite:///{tmp_path}/tl.db") as target:
        report = import_langgraph(str(db), target, progress=lambda done, total: seen.append((done, total)))
        assert report.ok, report
        assert report.imported == report.seen == report.verified > 0
        assert report.writes > 0 and seen[-1] == (report.seen, report.seen)
        assert any(b.name.startswith("fork-") for b in target.store.threads.branches("a"))
        # the interrupted thread resumes on threadline after the import
        done = graph_on(target).invoke(Command(resume="yes"), {"configurable": {"thread_id": "b"}})
        assert done["messages"][-1].content == "ok yes"

        again = import_langgraph(str(db), target)
        assert again.imported == 0 and again.already_present == report.seen

        for saver in sqlite_source(db):
            fill(saver, "c", 1)
        third = import_langgraph(f"sqlite:///{db}", target)
        assert third.imported > 0 and third.already_present == report.seen and third.ok


def test_pickle_and_unknown_types_are_reported_never_loaded(tmp_path: Path) -> None:
    db = tmp_path / "lg.db"
    for saver in sqlite_source(db):
        fill(saver, "t", 1)
    conn = sqlite3.connect(str(db))
    (cid,) = conn.execute(
        "SELECT checkpoint_id FROM checkpoints ORDER BY checkpoint_id DESC LIMIT 1"
    ).fetchone()
    marker = tmp_path / "executed"
    payload = pickle.dumps(Exploit(str(marker)))
    conn.execute("UPDATE writes SET type = 'pickle', value = ? WHERE checkpoint_id = ?", (payload, cid))
    conn.commit()
    conn.close()
    with ThreadlineSaver.from_url("memory://") as target:
        report = import_langgraph(str(db), target)
        assert [p.checkpoint_id for p in report.skipped] == [cid]
        assert "pickle" in report.skipped[0].reasons[0]
        assert report.imported == report.seen - 1
    with ThreadlineSaver.from_url("memory://") as target:
        report = import_langgraph(str(db), target, allow_opaque=True)
        assert not report.skipped and [p.checkpoint_id for p in report.opaque] == [cid]
        tup = target.get_tuple(
            {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": cid}}
        )
        assert tup is not None and any(isinstance(w[2], Opaque) for w in tup.pending_writes or [])
    assert not marker.exists()


class Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


def postgres_admin_url() -> str | None:
    url = os.environ.get("THREADLINE_TEST_POSTGRES_URL", "postgresql:///postgres")
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=2).close()
        return url
    except Exception:
        if os.environ.get("CI"):
            pytest.fail("CI must test PostgreSQL imports: set THREADLINE_TEST_POSTGRES_URL")
        return None


@pytest.fixture
def pg_database() -> Iterator[str]:
    admin = postgres_admin_url()
    if admin is None:
        pytest.skip("no PostgreSQL server")
    import psycopg

    name = f"tl_import_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(admin)
    try:
        yield f"{parts.scheme}://{parts.netloc}/{name}" + (f"?{parts.query}" if parts.query else "")
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_import_postgres(pg_database: str, tmp_path: Path) -> None:
    from langgraph.checkpoint.postgres import PostgresSaver

    with PostgresSaver.from_conn_string(pg_database) as saver:
        saver.setup()
        fill(saver, "p", 3)
    with ThreadlineSaver.from_url(f"sqlite:///{tmp_path}/tl.db") as target:
        report = import_langgraph(pg_database, target)
        assert report.ok, report
        assert report.imported == report.seen == report.verified > 0
        assert import_langgraph(pg_database, target).imported == 0
