"""The command line (issue 7), through typer's CliRunner on the real app.

Every command on a populated SQLite store, --json documents, exit codes and
the bad-input cases: unknown store scheme, a non-threadline SQLite file,
unknown thread/branch/checkpoint (with suggestions), ambiguous prefixes and a
corrupt archive. Subprocess runs (Ctrl-C, a real terminal) are in test_cli_process.py.
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from threadline import open_store
from threadline.cli import app, render
from threadline.cli import common as app_module
from threadline.model import Checkpoint, CheckpointKind, CheckpointStatus
from threadline.storage.sqlite import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
from threadline.store import Store

runner = CliRunner()


@dataclass
class Sample:
    """A store with one thread that branched, merged, failed and has a milestone."""

    url: str
    path: Path
    ids: list[str]  # main's first five checkpoints, oldest first
    retry_head: str
    merge: str


def build(store: Store) -> tuple[list[str], str, str]:
    t = store.threads.create_thread("support-chat-42", metadata={"user": "ann"})
    messages: list[dict[str, str]] = []
    ids = []
    for i in range(5):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"})
        ids.append(store.threads.checkpoint(t.id, {"messages": messages, "step": i}).id)
    store.threads.create_branch(t.id, "retry", from_checkpoint=ids[2])
    alternative = [*messages[:3], {"role": "assistant", "content": "alternative answer"}]
    store.threads.checkpoint(t.id, {"messages": alternative, "step": 3}, branch="retry")
    retry_head = store.threads.manual(
        t.id,
        {"messages": [*alternative, {"role": "user", "content": "thanks"}], "step": 4},
        branch="retry",
        title="good answer",
        tags=["reviewed"],
    ).id
    store.threads.checkpoint(t.id, {"messages": messages, "step": 5})
    merge = store.threads.merge(t.id, "retry", "main", strategy="theirs").id
    store.threads.error(t.id, {"messages": messages, "step": 6}, error=RuntimeError("tool timed out"))
    store.threads.create_thread("batch-7", session_id="nightly")
    store.threads.checkpoint("batch-7", {"rows": list(range(50))})
    return ids, retry_head, merge


@pytest.fixture
def sample(tmp_path: Path) -> Sample:
    path = tmp_path / "store.db"
    url = f"sqlite:///{path}"
    with open_store(url) as store:
        ids, retry_head, merge = build(store)
    return Sample(url, path, ids, retry_head, merge)


def run(sample: Sample | str, *args: str) -> Result:
    url = sample if isinstance(sample, str) else sample.url
    return runner.invoke(app, ["--store", url, *args])


def run_json(sample: Sample | str, *args: str) -> Any:
    result = run(sample, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # exactly one document, nothing else on stdout


def failure(result: Result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.output
    return result.stderr


# ---------------------------------------------------------------- store selection and exit codes


def test_store_comes_from_option_then_environment_then_default(
    sample: Sample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THREADLINE_URL", sample.url)
    doc = json.loads(runner.invoke(app, ["threads", "--json"]).stdout)
    assert [t["id"] for t in doc["threads"]] == ["batch-7", "support-chat-42"]
    other = tmp_path / "other.db"
    doc = json.loads(runner.invoke(app, ["--store", f"sqlite:///{other}", "threads", "--json"]).stdout)
    assert doc == {"threads": []}
    monkeypatch.delenv("THREADLINE_URL")
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["threads"]).exit_code == 0
    assert (tmp_path / "threadline.db").exists()


def test_no_command_prints_help_and_usage_errors_exit_2(sample: Sample) -> None:
    assert "Usage" in runner.invoke(app, []).output
    assert run(sample, "no-such-command").exit_code == 2
    assert run(sample, "log").exit_code == 2
    assert run(sample, "log", "support-chat-42", "--limit", "0").exit_code == 2
    result = run(sample, "log", "support-chat-42", "--all", "--branch", "main")
    assert result.exit_code == 2 and "--branch or --all" in result.output
    assert run(sample, "merge", "support-chat-42", "retry", "--strategy", "mine").exit_code == 2
    result = run(sample, "backup", "restore", "x.tlar", "--rename", "nonsense")
    assert result.exit_code == 2 and "OLD=NEW" in result.output


def test_unknown_store_scheme_is_an_error_without_traceback(sample: Sample) -> None:
    err = failure(run("mysql://db/x", "threads"))
    assert "unknown store URL scheme 'mysql'" in err and "sqlite://" in err


def test_a_sqlite_file_of_another_application_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    for command in (["threads"], ["migrate"], ["check"]):
        err = failure(run(f"sqlite:///{path}", *command))
        assert "is not a threadline store" in err
    assert path.read_bytes() == before


def test_debug_shows_the_traceback(sample: Sample) -> None:
    result = runner.invoke(app, ["--store", sample.url, "--debug", "log", "nope"])
    assert result.exit_code == 1 and result.exception is not None
    assert type(result.exception).__name__ == "NotFound"


def test_os_errors_are_operational_errors(sample: Sample, tmp_path: Path) -> None:
    err = failure(run(sample, "backup", "create", str(tmp_path / "missing" / "b.tlar"), "-t", "batch-7"))
    assert "No such file or directory" in err


# ---------------------------------------------------------------- threads, log, show, diff, branches


def test_threads_lists_threads_with_their_figures(sample: Sample) -> None:
    doc = run_json(sample, "threads")
    chat = doc["threads"][1]
    assert set(chat) == {
        "id",
        "session_id",
        "created_at",
        "default_branch",
        "metadata",
        "origin",
        "checkpoints",
        "branches",
        "stored_bytes",
        "newest",
    }
    assert chat["id"] == "support-chat-42" and chat["metadata"] == {"user": "ann"}
    assert chat["checkpoints"] == 10 and chat["branches"] == 2 and chat["default_branch"] == "main"
    assert [t["id"] for t in run_json(sample, "threads", "--session", "nightly")["threads"]] == ["batch-7"]
    text = run(sample, "threads").stdout
    assert "support-chat-42" in text and "nightly" in text
    assert "no threads in session 'x'" in run(sample, "threads", "-s", "x").stdout


def test_log_is_newest_first_along_first_parents(sample: Sample) -> None:
    doc = run_json(sample, "log", "support-chat-42")
    assert doc["thread"] == "support-chat-42" and doc["branch"] == "main"
    cps = doc["checkpoints"]
    assert [c["kind"] for c in cps[:2]] == ["error", "auto"]
    assert cps[1]["id"] == sample.merge and cps[1]["merge_parent_id"] == sample.retry_head
    assert [c["id"] for c in cps[-5:]] == sample.ids[::-1]
    assert len(run_json(sample, "log", "support-chat-42", "-n", "2")["checkpoints"]) == 2
    retry = run_json(sample, "log", "support-chat-42", "--branch", "retry")
    assert retry["checkpoints"][0]["id"] == sample.retry_head and retry["checkpoints"][0]["tags"] == [
        "reviewed"
    ]
    everything = run_json(sample, "log", "support-chat-42", "--all")
    assert everything["branch"] is None and len(everything["checkpoints"]) == 10
    text = run(sample, "log", "support-chat-42").stdout
    assert "(main)" in text and "error: tool timed out" in text and "merge retry into main" in text


def test_log_graph_draws_the_fork_and_the_merge(sample: Sample) -> None:
    lines = run(sample, "log", "support-chat-42", "--graph").stdout.splitlines()
    shape = [line.split(" 0")[0].rstrip() if " 0" in line else line for line in lines]
    assert shape == ["*", "*", "|\\", "* |", "| *", "| *", "* |", "* |", "|/", "*", "*", "*"]
    assert "(retry) good answer" in lines[4]
    graph_doc = run_json(sample, "log", "support-chat-42", "--graph", "--all")
    assert len(graph_doc["checkpoints"]) == 10
    assert len(run_json(sample, "log", "support-chat-42", "--graph", "-n", "3")["checkpoints"]) == 3


def test_graph_of_several_heads_and_a_root() -> None:
    from datetime import UTC, datetime

    def cp(cid: str, parent: str | None, merge: str | None = None) -> Checkpoint:
        return Checkpoint(
            cid,
            "t",
            "main",
            parent,
            CheckpointKind.AUTO,
            CheckpointStatus.ACTIVE,
            datetime.now(UTC),
            merge_parent_id=merge,
        )

    # three children of one root, one of them a merge
    checkpoints = [cp("f", "a"), cp("e", "a"), cp("d", "b", "c"), cp("c", "a"), cp("b", "a"), cp("a", None)]
    rows = [(prefix, c.id if c else "") for prefix, c in render.graph(checkpoints)]
    assert rows == [
        ("*", "f"),
        ("| *", "e"),
        ("| | *", "d"),
        ("| | |\\", ""),
        ("| | | *", "c"),
        ("| | * |", "b"),
        ("|/ / /", ""),
        ("*", "a"),
    ]
    # two unrelated roots: the second starts a fresh lane
    assert [p for p, _ in render.graph([cp("y", "x"), cp("x", None), cp("w", None)])] == ["*", "*", "*"]


def test_log_of_an_empty_branch(sample: Sample) -> None:
    with open_store(sample.url) as store:
        store.threads.create_thread("empty")
    assert "no checkpoints on branch 'main'" in run(sample, "log", "empty").stdout


def test_show_accepts_unique_prefixes_and_prints_fields_and_state(sample: Sample) -> None:
    doc = run_json(sample, "show", sample.retry_head[:23])
    assert doc["checkpoint"]["id"] == sample.retry_head and doc["state"] is None
    assert doc["checkpoint"]["title"] == "good answer" and doc["checkpoint"]["branch"] == "retry"
    with_state = run_json(sample, "show", sample.retry_head, "--state", "--thread", "support-chat-42")
    assert with_state["state"]["messages"][-1] == {"role": "user", "content": "thanks"}
    text = run(sample, "show", sample.retry_head, "--state").stdout
    assert sample.retry_head in text and "good answer" in text and '"thanks"' in text and "reviewed" in text
    error_id = run_json(sample, "log", "support-chat-42")["checkpoints"][0]["id"]
    assert "tool timed out" in run(sample, "show", error_id).stdout


def test_unknown_checkpoint_suggests_ids_sharing_the_longest_prefix(sample: Sample) -> None:
    wrong = sample.retry_head[:30] + ("0" if sample.retry_head[30] != "0" else "1")
    err = failure(run(sample, "show", wrong))
    assert "no checkpoint id starts with" in err and sample.retry_head in err
    assert "close to it" not in failure(run(sample, "show", "zzzz"))


def test_ambiguous_prefix_is_refused_listing_candidates(sample: Sample) -> None:
    err = failure(run(sample, "show", sample.ids[0][:4]))
    assert "ambiguous" in err and sample.ids[0] in err


def test_unknown_thread_and_branch_suggest_close_matches(sample: Sample) -> None:
    assert "did you mean 'support-chat-42'?" in failure(run(sample, "log", "support-chat-4"))
    assert "threadline threads" in failure(run(sample, "branches", "qqqqqqq"))
    assert "did you mean 'retry'?" in failure(run(sample, "log", "support-chat-42", "-b", "retyr"))
    assert "its branches: main, retry" in failure(run(sample, "log", "support-chat-42", "-b", "zzz"))
    assert "did you mean 'batch-7'?" in failure(run(sample, "stats", "--thread", "batch-8"))


def test_diff_is_structural(sample: Sample) -> None:
    doc = run_json(sample, "diff", sample.ids[4], sample.retry_head)
    assert doc["a"] == sample.ids[4] and doc["b"] == sample.retry_head and doc["empty"] is False
    assert doc["lists"]["messages"]["common"] == 3
    assert doc["lists"]["messages"]["appended"][0]["content"] == "alternative answer"
    assert doc["unchanged"] == ["step"]
    text = run(sample, "diff", sample.ids[0], sample.ids[1]).stdout
    assert "~ messages: list, first 1 items unchanged" in text and "+ [1]" in text and "~ step:" in text
    assert "no differences" in run(sample, "diff", sample.ids[0], sample.ids[0]).stdout


def test_diff_shows_added_and_removed_keys(sample: Sample) -> None:
    with open_store(sample.url) as store:
        a = store.threads.checkpoint("batch-7", {"gone": 1, "same": 2}).id
        b = store.threads.checkpoint("batch-7", {"same": 2, "new": {"x": [1, 2]}}).id
    text = run(sample, "diff", a, b).stdout
    assert "+ new:" in text and "- gone: 1" in text and "unchanged: same" in text


def test_branches_lists_heads_and_the_default(sample: Sample) -> None:
    doc = run_json(sample, "branches", "support-chat-42")
    assert doc["default_branch"] == "main"
    assert [(b["name"], b["default"]) for b in doc["branches"]] == [("main", True), ("retry", False)]
    assert doc["branches"][1]["head"] == sample.retry_head
    text = run(sample, "branches", "support-chat-42").stdout
    assert "* main" in text and "  retry" in text


# ---------------------------------------------------------------- writing: branch, merge, milestone, restore


def test_branch_from_a_checkpoint_prefix(sample: Sample) -> None:
    doc = run_json(sample, "branch", "support-chat-42", "what-if", "--from", sample.ids[1][:28])
    assert doc["branch"]["name"] == "what-if" and doc["branch"]["head"] == sample.ids[1]
    assert "created branch 'empty-start'" in run(sample, "branch", "support-chat-42", "empty-start").stdout
    assert "already exists" in failure(run(sample, "branch", "support-chat-42", "what-if"))
    # a checkpoint of another thread is not found in this one
    batch = run_json(sample, "log", "batch-7")["checkpoints"][0]["id"]
    failure(run(sample, "branch", "support-chat-42", "x", "--from", batch))


def test_merge_with_either_strategy(sample: Sample) -> None:
    run_json(sample, "branch", "support-chat-42", "side", "--from", sample.ids[0])
    doc = run_json(sample, "merge", "support-chat-42", "side", "main", "--strategy", "ours")
    cp = doc["checkpoint"]
    assert cp["branch"] == "main" and cp["merge_parent_id"] == sample.ids[0]
    state = run_json(sample, "show", cp["id"], "--state")["state"]
    assert state["step"] == 6
    text = run(sample, "merge", "support-chat-42", "retry").stdout
    assert "merged 'retry' into 'main' (theirs)" in text
    assert "did you mean 'retry'?" in failure(run(sample, "merge", "support-chat-42", "retr", "main"))


def test_milestone_keeps_a_checkpoints_state_under_a_name(sample: Sample) -> None:
    doc = run_json(sample, "milestone", sample.ids[1], "first-answer")
    cp = doc["checkpoint"]
    assert cp["kind"] == "milestone" and cp["milestone"] == "first-answer" and cp["protected"] is True
    assert cp["branch"] == "main"
    assert (
        run_json(sample, "show", cp["id"], "--state")["state"]
        == run_json(sample, "show", sample.ids[1], "--state")["state"]
    )
    on_retry = run_json(sample, "milestone", sample.ids[1], "again", "--branch", "retry")["checkpoint"]
    assert on_retry["branch"] == "retry"
    assert "already exists" in failure(run(sample, "milestone", sample.ids[2], "first-answer"))
    text = run(sample, "log", "support-chat-42", "--graph").stdout
    assert "milestone: first-answer" in text
    assert "protected" in run(sample, "show", cp["id"]).stdout


def test_restore_appends_the_old_state(sample: Sample) -> None:
    doc = run_json(sample, "restore", sample.ids[2])
    cp = doc["checkpoint"]
    assert cp["restored_from"] == sample.ids[2] and cp["branch"] == "main"
    assert run_json(sample, "show", sample.ids[2])["checkpoint"]["restore_count"] == 1
    text = run(sample, "restore", sample.ids[2], "--branch", "retry").stdout
    assert "on branch 'retry'" in text
    assert "did you mean 'retry'?" in failure(run(sample, "restore", sample.ids[2], "-b", "retri"))


# ---------------------------------------------------------------- stats


def test_stats_figures_largest_threads_and_days(sample: Sample) -> None:
    doc = run_json(sample, "stats")
    assert doc["scope"] == {"threads": None, "session": None}
    assert doc["threads"] == 2 and doc["checkpoints"] == 11
    assert doc["by_kind"] == {"auto": 9, "manual": 1, "error": 1, "milestone": 0}
    assert [t["thread"] for t in doc["largest_threads"]] == ["support-chat-42", "batch-7"]
    assert sum(d["checkpoints"] for d in doc["per_day"]) == 11
    one = run_json(sample, "stats", "--thread", "batch-7")
    assert one["scope"] == {"threads": ["batch-7"], "session": None} and one["checkpoints"] == 1
    assert [t["thread"] for t in one["largest_threads"]] == ["batch-7"]
    assert "largest threads" not in run(sample, "stats", "--thread", "batch-7").stdout
    text = run(sample, "stats").stdout
    assert (
        "sharing ratio" in text
        and "largest threads" in text
        and "checkpoints per day" in text
        and "█" in text
    )


def test_stats_of_an_empty_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/empty.db"
    assert run_json(url, "stats")["per_day"] == []
    assert "checkpoints per day" not in run(url, "stats").stdout


def test_bar_chart_scales_to_the_busiest_day() -> None:
    from datetime import date

    lines = render.bar_chart([(date(2024, 5, 1), 10), (date(2024, 5, 2), 1), (date(2024, 5, 3), 0)], width=10)
    assert lines[0].count("█") == 10 and lines[1].count("█") == 1 and "█" not in lines[2]
    assert render.human_bytes(5 * 1024 * 1024) == "5.0 MiB" and render.human_bytes(3) == "3 B"


# ---------------------------------------------------------------- backups


def test_backup_create_verify_restore_round_trip(sample: Sample, tmp_path: Path) -> None:
    file = tmp_path / "chat.tlar"
    doc = run_json(sample, "backup", "create", str(file), "--thread", "support-chat-42", "-t", "batch-7")
    assert doc["session"] is None
    assert set(doc) == {
        "file",
        "session",
        "format_version",
        "threads",
        "checkpoints",
        "values",
        "bytes",
        "imported",
        "skipped",
    }
    assert doc["threads"] == ["support-chat-42", "batch-7"] and doc["checkpoints"] == 11
    assert doc["bytes"] == file.stat().st_size
    assert run_json(sample, "backup", "verify", str(file))["checkpoints"] == 11
    assert "verified" in run(sample, "backup", "verify", str(file)).stdout
    fresh = f"sqlite:///{tmp_path}/fresh.db"
    restored = run_json(fresh, "backup", "restore", str(file))
    assert restored["imported"] == ["support-chat-42", "batch-7"] and restored["skipped"] == []
    again = run(fresh, "backup", "restore", str(file)).stdout
    assert "already present, skipped: support-chat-42, batch-7" in again
    renamed = run(
        fresh,
        "backup",
        "restore",
        str(file),
        "--rename",
        "batch-7=batch-7-copy",
        "--rename",
        "support-chat-42=chat-copy",
    ).stdout
    assert "imported: chat-copy, batch-7-copy" in renamed
    assert run_json(fresh, "log", "support-chat-42") == run_json(sample, "log", "support-chat-42")
    assert "wrote" in run(sample, "backup", "create", str(file), "-t", "batch-7").stdout


def test_corrupt_or_foreign_archives_are_rejected_before_anything_is_written(
    sample: Sample, tmp_path: Path
) -> None:
    file = tmp_path / "chat.tlar"
    run_json(sample, "backup", "create", str(file), "-t", "support-chat-42")
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
    fresh = f"sqlite:///{tmp_path}/fresh.db"
    for command in ("verify", "restore"):
        err = failure(run(fresh, "backup", command, str(file)))
        assert "archive" in err
    assert run_json(fresh, "threads") == {"threads": []}
    (tmp_path / "notes.txt").write_text("hello")
    assert "is not a threadline archive" in failure(
        run(fresh, "backup", "verify", str(tmp_path / "notes.txt"))
    )
    assert "does not exist" in failure(run(fresh, "backup", "restore", str(tmp_path / "nope.tlar")))
    assert "did you mean" in failure(run(sample, "backup", "create", str(file), "-t", "support-chat"))


def test_progress_bars_only_on_a_terminal_and_never_with_json(
    sample: Sample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = io.StringIO()
    monkeypatch.setattr(app_module, "out", Console(file=terminal, force_terminal=True, width=100))
    monkeypatch.delenv("TERM", raising=False)
    file = tmp_path / "b.tlar"
    assert run(sample, "backup", "create", str(file), "-t", "support-chat-42").exit_code == 0
    assert run(sample, "backup", "verify", str(file)).exit_code == 0
    assert run(f"sqlite:///{tmp_path}/f.db", "backup", "restore", str(file)).exit_code == 0
    assert run(sample, "check").exit_code == 0
    drawn = terminal.getvalue()
    assert "backup" in drawn and "verify" in drawn and "restore" in drawn and "check" in drawn
    terminal.truncate(0)
    terminal.seek(0)
    assert run(sample, "check", "--json").exit_code == 0
    assert terminal.getvalue() == ""


# ---------------------------------------------------------------- check and migrate


def test_check_passes_on_a_sound_store(sample: Sample) -> None:
    doc = run_json(sample, "check")
    assert doc == {"ok": True, "threads": 2, "checkpoints": 10 + 1, "problems": []}
    assert "ok: 11 checkpoints in 2 threads verified" in run(sample, "check").stdout


def corrupt_a_blob(path: Path) -> None:
    conn = sqlite3.connect(path)
    (rowid, data) = conn.execute(
        "SELECT rowid, data FROM blobs ORDER BY length(data) DESC LIMIT 1"
    ).fetchone()
    broken = bytearray(data)
    broken[-1] ^= 0xFF
    conn.execute("UPDATE blobs SET data = ? WHERE rowid = ?", (bytes(broken), rowid))
    conn.commit()
    conn.close()


def test_check_finds_corruption_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with open_store(f"sqlite:///{path}") as store:
        store.threads.create_thread("t")
        store.threads.checkpoint("t", {"big": "x" * 500})
        store.threads.checkpoint("t", {"big": "x" * 500, "n": 1})
    corrupt_a_blob(path)
    result = run(f"sqlite:///{path}", "check", "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and len(doc["problems"]) == 2
    assert all("does not match its hash" in p for p in doc["problems"])
    text = run(f"sqlite:///{path}", "check")
    assert text.exit_code == 1 and "2 problem(s)" in text.stdout


def test_check_reports_dangling_parents_and_heads() -> None:
    with open_store("memory://") as store:
        store.threads.create_thread("t")
        cp = store.threads.checkpoint("t", {"n": 1})
        repo: Any = store.repository
        row = repo._checkpoints[("t", cp.id)]
        ghost = "00000000-0000-7000-8000-000000000000"
        repo._checkpoints[("t", cp.id)] = type(row)(
            **{**{f: getattr(row, f) for f in row.__slots__}, "parent_id": ghost}
        )
        problems = store.checkpoints.check()
    assert any("has parent 00000000" in p for p in problems)


def test_migrate_reports_schema_versions(sample: Sample, tmp_path: Path) -> None:
    doc = run_json(sample, "migrate")
    assert doc == {
        "store": sample.url,
        "before": SCHEMA_VERSION,
        "after": SCHEMA_VERSION,
        "latest": SCHEMA_VERSION,
        "migrated": False,
    }
    assert "already up to date" in run(sample, "migrate").stdout
    new = f"sqlite:///{tmp_path}/new.db"
    assert "schema version" in run(new, "migrate").stdout
    assert run_json("memory://", "migrate")["before"] is None
    old = tmp_path / "v1.db"
    conn = sqlite3.connect(old)
    for version, statements in MIGRATIONS[:1]:  # a store as the first threadline wrote it
        for sql in statements:
            conn.execute(sql)
        conn.execute("INSERT INTO threadline_meta VALUES ('schema_version', ?)", (str(version),))
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.commit()
    conn.close()
    copy = tmp_path / "v1-copy.db"
    copy.write_bytes(old.read_bytes())
    doc = run_json(f"sqlite:///{old}", "migrate")
    assert doc["before"] == 1 and doc["after"] == SCHEMA_VERSION and doc["migrated"] is True
    assert "already up to date" in run(f"sqlite:///{old}", "migrate").stdout
    assert f"migrated schema version 1 -> {SCHEMA_VERSION}" in run(f"sqlite:///{copy}", "migrate").stdout


def test_migrate_reports_the_postgres_backends_own_latest_version(
    backend_url: Callable[[str, str], str],
) -> None:
    from threadline.storage import postgres

    url = backend_url("postgres", "m")
    doc = run_json(url, "migrate")
    assert doc["after"] == doc["latest"] == postgres.SCHEMA_VERSION
    version = postgres.SCHEMA_VERSION
    assert f"schema version {version} (latest {version})" in " ".join(run(url, "migrate").stdout.split())


def test_a_store_from_a_newer_threadline_is_refused(sample: Sample) -> None:
    conn = sqlite3.connect(sample.path)
    conn.execute("UPDATE threadline_meta SET value = '999' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    assert "newer threadline" in failure(run(sample, "migrate"))


# ---------------------------------------------------------------- JSON helpers


def test_plain_turns_any_value_into_json() -> None:
    from datetime import date, datetime

    value = {
        1: {"a", "b"},
        "when": datetime(2024, 5, 1, 12),
        "d": date(2024, 5, 1),
        "raw": b"\x01",
        "kind": CheckpointKind.AUTO,
        "obj": object,
        "t": (1, 2),
    }
    doc = app_module.plain(value)
    assert json.loads(json.dumps(doc))["1"] == ["a", "b"]
    assert doc["when"] == "2024-05-01T12:00:00" and doc["raw"] == "01" and doc["kind"] == "auto"
    assert doc["t"] == [1, 2] and doc["obj"].startswith("<class")


@pytest.fixture(autouse=True)
def _reset_options() -> Iterator[None]:
    yield
    app_module.options.store, app_module.options.debug, app_module.options.keyring = None, False, None


def test_arguments_that_are_not_utf8_are_usage_errors(sample: Sample) -> None:
    result = run(sample, "log", "chat-\udcff")
    assert result.exit_code == 2 and "not valid UTF-8" in result.output and "Traceback" not in result.output


def test_ctrl_c_inside_a_command_exits_130(sample: Sample, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    from threadline.threads import ThreadCheckpointService

    monkeypatch.setattr(ThreadCheckpointService, "verify_backup", interrupted)
    result = run(sample, "backup", "verify", "x.tlar")
    assert result.exit_code == 130 and "interrupted" in result.stderr and result.stdout == ""
    debug = runner.invoke(app, ["--store", sample.url, "--debug", "backup", "verify", "x.tlar"])
    assert debug.exit_code == 130


def test_os_errors_without_a_file_name(sample: Sample, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    from threadline.threads import ThreadCheckpointService

    monkeypatch.setattr(ThreadCheckpointService, "backup", full)
    assert "No space left on device" in failure(run(sample, "backup", "create", "b.tlar", "-t", "batch-7"))
    debug = runner.invoke(
        app, ["--store", sample.url, "--debug", "backup", "create", "b.tlar", "-t", "batch-7"]
    )
    assert isinstance(debug.exception, OSError)
