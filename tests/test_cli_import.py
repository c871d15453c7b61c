"""``threadline import langgraph SOURCE`` through the real entry point: a LangGraph SqliteSaver
database imported, re-imported, with unsafe values skipped (exit 1) or kept opaque, and the
sources that are not LangGraph databases refused with a message, never a traceback."""

from __future__ import annotations

import io
import json
import os
import pickle
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from rich.console import Console
from typer.testing import CliRunner, Result

from threadline import open_store
from threadline.cli import app
from threadline.cli import common as app_module
from threadline.cli.commands import importers as import_module

runner = CliRunner()


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def bot(state: Chat) -> dict[str, Any]:
    n = len(state["messages"])
    return {"messages": [AIMessage(f"echo {n}", id=f"ai-{n}")]}


def make_source(path: Path, threads: tuple[str, ...] = ("a", "b"), turns: int = 2) -> None:
    conn = sqlite3.connect(str(path), check_same_thread=False)
    try:
        g = StateGraph(Chat)
        g.add_node("bot", bot)
        g.add_edge(START, "bot")
        g.add_edge("bot", END)
        graph = g.compile(checkpointer=SqliteSaver(conn))
        for t in threads:
            for i in range(turns):
                graph.invoke(
                    {"messages": [HumanMessage(f"hi {i}", id=f"h-{t}-{i}")]},
                    {"configurable": {"thread_id": t}},
                )
    finally:
        conn.close()


def poison(path: Path) -> list[str]:
    """Make the pending writes of every checkpoint that has some pickled; returns those checkpoint ids."""
    conn = sqlite3.connect(str(path))
    ids = [r[0] for r in conn.execute("SELECT DISTINCT checkpoint_id FROM writes ORDER BY checkpoint_id")]
    conn.execute("UPDATE writes SET type = 'pickle', value = ?", (pickle.dumps({"x": 1}),))
    conn.commit()
    conn.close()
    return ids


@pytest.fixture(autouse=True)
def _reset_options() -> Iterator[None]:
    yield
    app_module.options.store, app_module.options.debug, app_module.options.keyring = None, False, None


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "langgraph.db"
    make_source(path)
    return path


def run(url: str, *args: str) -> Result:
    return runner.invoke(app, ["--store", url, *args])


def failure(result: Result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.output
    return result.stderr


def test_import_then_reimport(source: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tl.db"
    result = run(url, "import", "langgraph", str(source), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == {
        "source",
        "ok",
        "seen",
        "imported",
        "already_present",
        "writes",
        "verified",
        "skipped",
        "opaque",
        "mismatches",
    }
    assert doc["ok"] and doc["imported"] == doc["seen"] == doc["verified"] > 0 and doc["writes"] > 0
    with open_store(url) as store:
        assert {t.id for t in store.threads.list_threads().items} == {"a", "b"}
    again = run(url, "import", "langgraph", f"sqlite:///{source}")
    assert again.exit_code == 0, again.output
    assert f"{doc['seen']} checkpoint(s) read, 0 imported, {doc['seen']} already present" in again.stdout
    assert "imported from sqlite:" in again.stdout
    assert run(url, "log", "a").exit_code == 0


def test_unsafe_values_are_skipped_and_exit_1_or_kept_opaque(source: Path, tmp_path: Path) -> None:
    poisoned = poison(source)
    url = f"sqlite:///{tmp_path}/tl.db"
    result = run(url, "import", "langgraph", str(source))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{len(poisoned)} checkpoint(s) skipped" in result.stdout and "--allow-opaque" in result.stdout
    assert "pickle" in result.stdout
    doc = json.loads(run(url, "import", "langgraph", str(source), "--json").stdout)
    assert doc["ok"] is False and [p["checkpoint_id"] for p in doc["skipped"]] == poisoned
    assert set(doc["skipped"][0]) == {"thread_id", "checkpoint_ns", "checkpoint_id", "reasons"}
    opaque = run(f"sqlite:///{tmp_path}/o.db", "import", "langgraph", str(source), "--allow-opaque")
    assert opaque.exit_code == 0, opaque.output
    assert f"{len(poisoned)} checkpoint(s) imported with opaque values" in opaque.stdout


def test_long_problem_lists_are_cut(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poisoned = poison(source)
    monkeypatch.setattr(import_module, "_SHOWN_PROBLEMS", 1)
    result = run(f"sqlite:///{tmp_path}/tl.db", "import", "langgraph", str(source))
    assert f"... and {len(poisoned) - 1} more (--json lists them all)" in result.stdout


def test_sources_that_are_not_langgraph_databases(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tl.db"
    assert "does not exist" in failure(run(url, "import", "langgraph", str(tmp_path / "missing.db")))
    other = tmp_path / "app.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    err = failure(run(url, "import", "langgraph", str(other)))
    assert "is not a LangGraph SqliteSaver database (no checkpoints, writes table)" in err
    with open_store(f"sqlite:///{tmp_path}/threadline-store.db") as store:
        store.threads.create_thread("t")
    assert "not a LangGraph SqliteSaver database" in failure(
        run(url, "import", "langgraph", str(tmp_path / "threadline-store.db"))
    )
    noise = tmp_path / "noise.db"
    noise.write_bytes(os.urandom(4096))
    assert "is not a LangGraph checkpoint database" in failure(run(url, "import", "langgraph", str(noise)))
    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 200)
    assert "is not a LangGraph checkpoint database" in failure(run(url, "import", "langgraph", str(text)))


def test_unreachable_postgres_source(tmp_path: Path) -> None:
    err = failure(
        run(f"sqlite:///{tmp_path}/tl.db", "import", "langgraph", "postgresql://nobody@127.0.0.1:1/none")
    )
    assert "cannot read the LangGraph database" in err


def test_missing_verification_driver_and_broken_reads(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from threadline.importers import langgraph as importer

    def no_driver(self: Any) -> Any:
        raise ModuleNotFoundError(
            "No module named 'langgraph.checkpoint.sqlite'", name="langgraph.checkpoint.sqlite"
        )

    monkeypatch.setattr(importer.SqliteSource, "saver", no_driver)
    err = failure(run(f"sqlite:///{tmp_path}/a.db", "import", "langgraph", str(source)))
    assert "langgraph-checkpoint-sqlite" in err and "--no-verify" in err
    ok = run(f"sqlite:///{tmp_path}/b.db", "import", "langgraph", str(source), "--no-verify")
    assert ok.exit_code == 0 and "0 verified" in ok.stdout

    def broken(self: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(importer.SqliteSource, "count", broken)
    assert "disk I/O error" in failure(run(f"sqlite:///{tmp_path}/c.db", "import", "langgraph", str(source)))


def test_mismatches_are_listed_and_exit_1(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from threadline.importers import langgraph as importer

    def differ(src: Any, target: Any, imported: Any, report: Any) -> None:
        report.mismatches.append("a/-/x: imported checkpoint differs from the source")

    monkeypatch.setattr(importer, "_verify", differ)
    result = run(f"sqlite:///{tmp_path}/tl.db", "import", "langgraph", str(source))
    assert result.exit_code == 1 and "mismatch: a/-/x" in result.stdout


def test_ctrl_c_during_import_exits_130(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from threadline.importers import langgraph as importer

    real = importer._import_one
    calls = [0]

    def interrupted(*args: Any) -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        real(*args)

    monkeypatch.setattr(importer, "_import_one", interrupted)
    url = f"sqlite:///{tmp_path}/tl.db"
    result = run(url, "import", "langgraph", str(source))
    assert result.exit_code == 130 and "interrupted after 2 source checkpoint(s)" in result.stderr
    monkeypatch.setattr(importer, "_import_one", real)
    again = json.loads(run(url, "import", "langgraph", str(source), "--json").stdout)
    assert again["already_present"] == 2 and again["ok"]


def test_import_draws_a_progress_bar_on_a_terminal(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = io.StringIO()
    monkeypatch.setattr(app_module, "out", Console(file=terminal, force_terminal=True, width=100))
    monkeypatch.delenv("TERM", raising=False)
    assert run(f"sqlite:///{tmp_path}/tl.db", "import", "langgraph", str(source)).exit_code == 0
    assert "import" in terminal.getvalue()


def test_without_langgraph_the_command_says_what_to_install(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_langgraph(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("threadline.importers"):
            raise ModuleNotFoundError("No module named 'langgraph'", name="langgraph")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_langgraph)
    err = failure(run(f"sqlite:///{tmp_path}/tl.db", "import", "langgraph", str(source)))
    assert "pip install 'threadline[langgraph]'" in err
