"""``threadline demo`` (issue 7 item 3): a real LangGraph agent on threadline checkpoints,
re-runnable on the same store, fast, and what it leaves behind is what it says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from threadline import open_store
from threadline.cli import app
from threadline.cli import common as app_module
from threadline.model import CheckpointKind

runner = CliRunner()


@pytest.fixture(autouse=True)
def _reset_options() -> Iterator[None]:
    yield
    app_module.options.store, app_module.options.debug, app_module.options.keyring = None, False, None


def run(url: str, *args: str) -> Result:
    return runner.invoke(app, ["--store", url, *args])


def session_of(output: str) -> str:
    return output.split("session ", 1)[1].split(" ", 1)[0]


def test_demo_runs_twice_on_the_same_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/demo.db"
    started = time.perf_counter()
    first = run(url, "demo")
    assert first.exit_code == 0, first.output
    second = run(url, "demo")
    assert second.exit_code == 0, second.output
    assert time.perf_counter() - started < 20
    text = first.stdout
    for expected in (
        "paused by interrupt()",
        "resumed with Command(resume='ann')",
        "crashed in 'act'",
        "a fresh saver and graph resumed from that checkpoint: 3 steps done",
        "renamed 'short-plan'",
        "milestone 'answer-v1'",
        "sync point 'all-done'",
        "cleanup dry run:",
        "--graph --all",
        "|/",
        "(short-plan)",
        "sync: all-done",
        "milestone: answer-v1",
        "statistics of session",
        "Try next:",
    ):
        assert expected in text, expected
    one, two = session_of(first.stdout), session_of(second.stdout)
    assert one != two and one.startswith("demo-")
    sessions = json.loads(run(url, "sessions", "--json").stdout)["sessions"]
    assert {s["id"] for s in sessions} == {one, two}
    assert all(s["threads"] == 3 for s in sessions)

    with open_store(url) as store:
        research, coder = f"{one}-research", f"{one}-coder"
        assert {b.name for b in store.threads.branches(research)} == {"main", "short-plan"}
        kinds = {cp.kind for cp in store.checkpoints.iter(coder)}
        assert CheckpointKind.ERROR in kinds  # the crash is on record
        point = store.sessions.get_sync_point(one, "all-done")
        assert set(point.members) == {f"{one}-research", f"{one}-coder", f"{one}-writer"}
        milestone = next(cp for cp in store.checkpoints.iter(research) if cp.milestone == "answer-v1")
        assert store.threads.get_state(milestone.id)["answer"].startswith("compare vector databases:")
        assert store.threads.get_state(milestone.id)["approved_by"] == "ann"
        stats = store.sessions.stats(one)
        assert stats.totals.checkpoints > 30 and stats.totals.by_status["active"] == stats.totals.checkpoints

    # the commands it suggests work
    suggested = [
        line.strip().split(" ", 3)[3]
        for line in first.stdout.split("Try next:")[1].splitlines()
        if line.strip().startswith("threadline --store")
    ]
    assert len(suggested) >= 10
    for command in suggested:
        if command.startswith("backup create"):
            command = command.replace("backup create ", f"backup create {tmp_path}/", 1)
        result = run(url, *command.split())
        assert result.exit_code == 0, (command, result.output)
    assert run(url, "check").exit_code == 0


def test_demo_on_a_memory_store() -> None:
    result = run("memory://", "demo")
    assert result.exit_code == 0, result.output
    assert "threadline demo on memory://" in result.stdout


def test_demo_without_langgraph_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import builtins

    real_import = builtins.__import__

    def no_langgraph(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "langgraph" or name.startswith("langgraph."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_langgraph)
    result = run(f"sqlite:///{tmp_path}/d.db", "demo")
    assert result.exit_code == 1 and result.stdout == "" and "Traceback" not in result.output
    assert "pip install 'threadline[langgraph]'" in result.stderr


def test_the_readme_command_runs_the_demo_on_the_default_store(tmp_path: Path) -> None:
    """`threadline demo` as the README's first command runs it: the default ./threadline.db."""
    exe = str(Path(sys.executable).with_name("threadline"))
    env = {k: v for k, v in os.environ.items() if k not in ("THREADLINE_URL", "THREADLINE_KEYRING")}
    proc = subprocess.run([exe, "demo"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and (tmp_path / "threadline.db").is_file()
    assert "threadline demo on sqlite:///threadline.db" in proc.stdout
    assert "\n  threadline sessions\n" in proc.stdout  # the default store needs no --store
