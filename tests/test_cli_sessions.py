"""The session layer on the command line (issue 7 part 2): sessions, stats --session,
policy show/set, cleanup, sync points and session backups, through typer's CliRunner on
the real app, with their --json documents and bad input."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from threadline import Policy, open_store
from threadline.cli import app
from threadline.cli import common as app_module
from threadline.cli.durations import NEVER, format_duration, parse_count, parse_duration
from threadline.sessions import SessionCheckpointManager

runner = CliRunner()


@pytest.fixture(autouse=True)
def _reset_options() -> Iterator[None]:
    yield
    app_module.options.store, app_module.options.debug, app_module.options.keyring = None, False, None


@pytest.fixture
def url(tmp_path: Path) -> str:
    """Session 'run' (auto 7d, max 3) with threads planner and coder (5 checkpoints each),
    an empty session 'nightly' and a thread 'loose' outside any session."""
    url = f"sqlite:///{tmp_path}/s.db"
    with open_store(url) as store:
        store.sessions.create_session(
            "run", policy=Policy(ttl_auto=timedelta(days=7), max_checkpoints=3), metadata={"user": "ann"}
        )
        for t in ("planner", "coder"):
            store.sessions.create_thread("run", t)
            for i in range(5):
                store.threads.checkpoint(t, {"step": i, "log": [f"{t} {j}" for j in range(i + 1)]})
        store.sessions.create_session("nightly")
        store.threads.create_thread("loose")
        store.threads.checkpoint("loose", {"x": 1})
    return url


def run(url: str, *args: str) -> Result:
    return runner.invoke(app, ["--store", url, *args])


def run_json(url: str, *args: str) -> Any:
    result = run(url, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def failure(result: Result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.output
    return result.stderr


# ---------------------------------------------------------------- durations


def test_durations_and_counts_parse_and_print() -> None:
    import typer

    assert parse_duration("30s") == timedelta(seconds=30)
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("2h") == timedelta(hours=2)
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("1w") == timedelta(days=7)
    assert parse_duration(" 1h30m ") == timedelta(minutes=90)
    assert parse_duration("0.5s") == timedelta(milliseconds=500)
    assert parse_duration("none") == NEVER and parse_duration("Never") == NEVER
    for bad in ("", "5", "-5m", "7 days", "1y", "h", "1h-5m"):
        with pytest.raises(typer.BadParameter):
            parse_duration(bad)
    assert parse_count("12") == 12 and parse_count("none") == NEVER
    for bad in ("0", "-1", "1.5", "many"):
        with pytest.raises(typer.BadParameter):
            parse_count(bad)
    assert format_duration(None) == "never"
    assert format_duration(timedelta(0)) == "0s"
    assert format_duration(timedelta(days=1, hours=2, minutes=3, seconds=4)) == "1d2h3m4s"
    assert format_duration(timedelta(days=7)) == "7d"
    assert format_duration(timedelta(milliseconds=1500)) == "1.5s"
    for text in ("30s", "15m", "2h", "7d", "1h30m"):
        parsed = parse_duration(text)
        assert isinstance(parsed, timedelta) and parse_duration(format_duration(parsed)) == parsed


# ---------------------------------------------------------------- sessions and stats


def test_sessions_lists_sessions_with_policy_and_size(url: str) -> None:
    doc = run_json(url, "sessions")
    by_id = {s["id"]: s for s in doc["sessions"]}
    assert set(by_id) == {"run", "nightly"}
    run_doc = by_id["run"]
    assert set(run_doc) == {
        "id",
        "status",
        "created_at",
        "owner",
        "metadata",
        "policy",
        "threads",
        "checkpoints",
        "stored_bytes",
        "newest",
    }
    assert run_doc["threads"] == 2 and run_doc["checkpoints"] == 10 and run_doc["metadata"] == {"user": "ann"}
    assert run_doc["policy"] == {
        "ttl_auto": 604800,
        "ttl_manual": None,
        "ttl_error": None,
        "ttl_milestone": None,
        "max_checkpoints": 3,
        "min_age": None,
    }
    assert by_id["nightly"]["threads"] == 0 and by_id["nightly"]["checkpoints"] == 0
    text = run(url, "sessions").stdout
    assert "auto 7d, max 3" in text and "keep all" in text
    with open_store(url) as store:
        store.sessions.close_session("nightly")
    assert [s["id"] for s in run_json(url, "sessions", "--status", "closed")["sessions"]] == ["nightly"]
    assert "no sessions with status 'active'" not in run(url, "sessions", "--status", "active").stdout
    assert failure(run(url, "sessions", "--status", "gone"), 2)


def test_sessions_of_an_empty_store(tmp_path: Path) -> None:
    assert run(f"sqlite:///{tmp_path}/e.db", "sessions").stdout.strip() == "no sessions"
    assert run_json(f"sqlite:///{tmp_path}/e.db", "sessions") == {"sessions": []}


def test_stats_of_a_session(url: str) -> None:
    doc = run_json(url, "stats", "--session", "run")
    assert doc["scope"] == {"threads": None, "session": "run"}
    assert doc["threads"] == 2 and doc["checkpoints"] == 10
    assert {t["thread"] for t in doc["largest_threads"]} == {"planner", "coder"}
    assert set(doc["largest_threads"][0]) == {"thread", "checkpoints", "logical_bytes", "stored_bytes"}
    assert sum(d["checkpoints"] for d in doc["per_day"]) == 10
    text = run(url, "stats", "--session", "run").stdout
    assert "statistics of session run" in text and "largest threads" in text and "█" in text
    whole = run_json(url, "stats")
    assert whole["threads"] == 3 and whole["checkpoints"] == 11
    assert "did you mean 'run'" in failure(run(url, "stats", "--session", "rum"))
    assert "not both" in failure(run(url, "stats", "--session", "run", "--thread", "coder"), 2)


# ---------------------------------------------------------------- policies


def test_policy_show_of_a_session_a_thread_and_everything(url: str) -> None:
    doc = run_json(url, "policy", "show", "--session", "run")
    assert doc["scope"] == {"session": "run", "thread": None}
    assert doc["policy"]["ttl_auto"] == 604800 and doc["policy"]["max_checkpoints"] == 3
    thread_doc = run_json(url, "policy", "show", "--thread", "coder")
    assert thread_doc["inherited_from"] == "run" and thread_doc["overrides"] == {}
    assert thread_doc["policy"] == doc["policy"]
    loose = run_json(url, "policy", "show", "--thread", "loose")
    assert loose["inherited_from"] is None and loose["policy"]["max_checkpoints"] is None
    everything = run_json(url, "policy", "show")
    assert everything["default"]["ttl_auto"] is None
    assert {s["session"] for s in everything["sessions"]} == {"run", "nightly"}
    text = run(url, "policy", "show", "--thread", "coder").stdout
    assert "policy of thread coder" in text and "session run" in text and "7d" in text
    assert "(threads outside sessions)" in run(url, "policy", "show").stdout
    assert "ttl-auto" in run(url, "policy", "show", "--session", "run").stdout


def test_policy_set_changes_fields_of_a_session_and_overrides_a_thread(url: str) -> None:
    doc = run_json(url, "policy", "set", "--session", "run", "--ttl-error", "2h", "--min-age", "15m")
    assert doc["policy"]["ttl_error"] == 7200 and doc["policy"]["min_age"] == 900
    assert doc["policy"]["ttl_auto"] == 604800  # fields not given are kept
    assert doc["recomputed"] >= 0
    doc = run_json(
        url, "policy", "set", "--session", "run", "--max-checkpoints", "none", "--ttl-auto", "never"
    )
    assert doc["policy"]["max_checkpoints"] is None and doc["policy"]["ttl_auto"] is None
    thread = run_json(url, "policy", "set", "--thread", "coder", "--max-checkpoints", "2", "--ttl-auto", "1d")
    assert thread["overrides"] == {"max_checkpoints": 2, "ttl_auto": 86400}
    assert thread["policy"]["max_checkpoints"] == 2 and thread["policy"]["ttl_error"] == 7200
    more = run_json(url, "policy", "set", "--thread", "coder", "--ttl-manual", "30s")
    assert more["overrides"] == {"max_checkpoints": 2, "ttl_auto": 86400, "ttl_manual": 30}
    cleared = run_json(url, "policy", "set", "--thread", "coder", "--reset")
    assert cleared["overrides"] == {} and cleared["policy"]["max_checkpoints"] is None
    reset = run_json(url, "policy", "set", "--session", "run", "--reset", "--max-checkpoints", "9")
    assert reset["policy"] == {
        "ttl_auto": None,
        "ttl_manual": None,
        "ttl_error": None,
        "ttl_milestone": None,
        "max_checkpoints": 9,
        "min_age": None,
    }
    text = run(url, "policy", "set", "--thread", "planner", "--ttl-error", "1h30m").stdout
    assert "thread" in text and "1h30m" in text
    text = run(url, "policy", "set", "--session", "nightly", "--ttl-auto", "7d").stdout
    assert "expiry re-computed for 0 checkpoint(s)" in text
    with open_store(url) as store:
        assert store.sessions.thread_policy("planner").ttl_error == timedelta(minutes=90)


def test_policy_set_refuses_bad_values_as_usage_errors(url: str) -> None:
    cases = {
        ("--ttl-auto", "-5m"): "cannot be negative",
        ("--ttl-auto", "5"): "is not a duration",
        ("--min-age", "soon"): "is not a duration",
        ("--max-checkpoints", "-1"): "at least 1",
        ("--max-checkpoints", "0"): "at least 1",
        ("--max-checkpoints", "lots"): "not a whole number",
    }
    for (flag, value), message in cases.items():
        result = run(url, "policy", "set", "--session", "run", flag, value)
        assert result.exit_code == 2 and message in result.output and flag in result.output, result.output
        assert "Traceback" not in result.output
    assert "at least one field" in run(url, "policy", "set", "--session", "run").output
    assert "--session S or --thread T" in run(url, "policy", "set", "--ttl-auto", "1d").output
    assert "not both" in run(url, "policy", "set", "--session", "run", "--thread", "coder").output
    assert "did you mean 'run'" in failure(run(url, "policy", "set", "--session", "runn", "--ttl-auto", "1d"))
    assert "thread 'codr' does not exist" in failure(run(url, "policy", "show", "--thread", "codr"))
    with open_store(url) as store:  # nothing changed
        assert store.sessions.get_session("run").policy == Policy(
            ttl_auto=timedelta(days=7), max_checkpoints=3
        )


# ---------------------------------------------------------------- cleanup


def test_cleanup_dry_run_then_real_run(url: str) -> None:
    plan = run_json(url, "cleanup", "--session", "run", "--dry-run")
    assert (
        plan["dry_run"] is True and plan["ok"] is True and plan["scope"] == {"session": "run", "thread": None}
    )
    assert plan["deleted"] == 4  # 5 per thread, max 3: the 2 oldest autos of each
    assert set(plan["threads"][0]) == {"thread", "deleted", "expired", "freed_bytes", "error"}
    with open_store(url) as store:
        assert store.checkpoints.stats(["planner", "coder"]).checkpoints == 10  # nothing changed
    text = run(url, "cleanup", "--session", "run", "--dry-run").stdout
    assert "would remove" in text and "dry run: 4 checkpoint(s) would be removed" in text
    assert "nothing was changed" in text
    done = run_json(url, "cleanup", "--session", "run")
    assert done["dry_run"] is False and done["deleted"] == 4
    deleted = {cid for t in done["threads"] for cid in t["deleted"]}
    assert deleted == {cid for t in plan["threads"] for cid in t["deleted"]}
    with open_store(url) as store:
        assert store.checkpoints.stats(["planner", "coder"]).checkpoints == 6
    text = run(url, "cleanup", "--thread", "coder").stdout
    assert "removed 0 checkpoint(s)" in text
    everything = run_json(url, "cleanup", "--dry-run")
    assert everything["scope"] == {"session": None, "thread": None} and len(everything["threads"]) == 3


def test_cleanup_text_of_a_real_run_lists_threads_and_bytes(url: str) -> None:
    text = run(url, "cleanup", "--session", "run").stdout
    assert "cleanup of session run" in text and "freed" in text and "removed 4 checkpoint(s)" in text


def test_cleanup_reports_failing_threads_and_exits_1(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = SessionCheckpointManager._clean_thread

    def flaky(self: SessionCheckpointManager, thread_id: str, *args: Any) -> Any:
        if thread_id == "coder":
            raise OSError("disk I/O error")
        return real(self, thread_id, *args)

    monkeypatch.setattr(SessionCheckpointManager, "_clean_thread", flaky)
    result = run(url, "cleanup", "--session", "run")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "OSError: disk I/O error" in result.stdout and "1 thread(s) failed" in result.stdout
    doc = json.loads(run(url, "cleanup", "--session", "run", "--json").stdout)
    assert doc["ok"] is False
    assert {t["thread"]: t["error"] for t in doc["threads"]}["coder"] == "OSError: disk I/O error"


def test_cleanup_bad_input(url: str) -> None:
    assert "did you mean 'run'" in failure(run(url, "cleanup", "--session", "runs"))
    assert "does not exist" in failure(run(url, "cleanup", "--thread", "nope"))
    assert "not both" in run(url, "cleanup", "--session", "run", "--thread", "coder").output


def test_cleanup_draws_a_progress_bar_on_a_terminal(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = io.StringIO()
    monkeypatch.setattr(app_module, "out", Console(file=terminal, force_terminal=True, width=100))
    monkeypatch.delenv("TERM", raising=False)
    assert run(url, "cleanup", "--dry-run").exit_code == 0
    assert "cleanup" in terminal.getvalue()


# ---------------------------------------------------------------- sync points


def test_sync_point_create_list_restore_delete(url: str) -> None:
    created = run_json(url, "sync-point", "create", "run", "before-deploy")
    point = created["sync_point"]
    assert point["session_id"] == "run" and point["label"] == "before-deploy"
    assert set(point["members"]) == {"planner", "coder"}
    one = run_json(url, "sync-point", "create", "run", "planner-only", "--thread", "planner", "--title", "t")
    assert set(one["sync_point"]["members"]) == {"planner"}
    listed = run_json(url, "sync-point", "list", "run")
    assert [p["label"] for p in listed["sync_points"]] == ["before-deploy", "planner-only"]
    text = run(url, "sync-point", "list", "run").stdout
    assert "before-deploy" in text and "coder, planner" in text
    with open_store(url) as store:
        store.threads.checkpoint("coder", {"step": 99, "log": ["oops"]})
    restored = run_json(url, "sync-point", "restore", "run", "before-deploy")
    assert {c["thread_id"] for c in restored["checkpoints"]} == {"planner", "coder"}
    assert all(c["restored_from"] in point["members"].values() for c in restored["checkpoints"])
    with open_store(url) as store:
        head = store.threads.latest("coder")
        assert head is not None and store.threads.get_state(head.id)["step"] == 4
    assert (
        "restored sync point 'before-deploy'"
        in run(url, "sync-point", "restore", "run", "before-deploy").stdout
    )
    assert run_json(url, "sync-point", "delete", "run", "planner-only") == {
        "session": "run",
        "label": "planner-only",
        "deleted": True,
    }
    assert "deleted sync point" in run(url, "sync-point", "delete", "run", "before-deploy").stdout
    assert run(url, "sync-point", "list", "run").stdout.strip() == "no sync points in session 'run'"
    text = run(url, "sync-point", "create", "run", "again").stdout
    assert "sync point 'again' in session 'run': 2 thread(s)" in text and "planner" in text


def test_sync_point_bad_input(url: str) -> None:
    assert run(url, "sync-point", "create", "run", "p1").exit_code == 0
    assert "did you mean 'run'" in failure(run(url, "sync-point", "list", "rn"))
    assert "session 'ghost' does not exist" in failure(run(url, "sync-point", "create", "ghost", "x"))
    assert run(url, "sync-point", "create", "run", "before-deploy").exit_code == 0
    assert "did you mean 'before-deploy'" in failure(
        run(url, "sync-point", "restore", "run", "before-deplyo")
    )
    assert "its sync points: p1, before-deploy" in failure(run(url, "sync-point", "delete", "run", "zzzzzz"))
    assert "has no sync points" in failure(run(url, "sync-point", "restore", "nightly", "p1"))
    assert "already exists" in failure(run(url, "sync-point", "create", "run", "p1"))
    assert "belongs to no session" in failure(
        run(url, "sync-point", "create", "run", "p9", "--thread", "loose")
    )
    assert "does not exist" in failure(run(url, "sync-point", "create", "run", "p9", "--thread", "ghost"))
    assert "at least one thread" in failure(run(url, "sync-point", "create", "nightly", "p1"))


# ---------------------------------------------------------------- session backups


def test_session_backup_round_trip(url: str, tmp_path: Path) -> None:
    assert run(url, "sync-point", "create", "run", "p1").exit_code == 0
    assert run(url, "policy", "set", "--thread", "coder", "--max-checkpoints", "2").exit_code == 0
    file = tmp_path / "run.tlar"
    doc = run_json(url, "backup", "create", str(file), "--session", "run")
    assert doc["session"] == "run" and set(doc["threads"]) == {"planner", "coder"}
    assert run_json(url, "backup", "verify", str(file))["session"] == "run"
    other = f"sqlite:///{tmp_path}/other.db"
    restored = run_json(other, "backup", "restore", str(file))
    assert restored["session"] == "run" and set(restored["imported"]) == {"planner", "coder"}
    again = run_json(other, "backup", "restore", str(file))
    assert set(again["skipped"]) == {"planner", "coder"} and again["imported"] == []
    assert [p["label"] for p in run_json(other, "sync-point", "list", "run")["sync_points"]] == ["p1"]
    assert run_json(other, "policy", "show", "--thread", "coder")["overrides"] == {"max_checkpoints": 2}
    text = run(
        f"sqlite:///{tmp_path}/third.db", "backup", "restore", str(file), "--as-session", "copy"
    ).stdout
    assert "session: copy" in text
    assert "wrote" in run(url, "backup", "create", str(tmp_path / "again.tlar"), "-s", "run").stdout


def test_session_backup_bad_input(url: str, tmp_path: Path) -> None:
    file = tmp_path / "x.tlar"
    assert "did you mean 'run'" in failure(run(url, "backup", "create", str(file), "--session", "runn"))
    assert not file.exists()
    assert "--thread T" in run(url, "backup", "create", str(file)).output
    result = run(url, "backup", "create", str(file), "--session", "run", "--thread", "coder")
    assert result.exit_code == 2
    threads_file = tmp_path / "t.tlar"
    assert run(url, "backup", "create", str(threads_file), "-t", "loose").exit_code == 0
    result = run(f"sqlite:///{tmp_path}/o.db", "backup", "restore", str(threads_file), "--as-session", "s")
    assert result.exit_code == 2 and "holds threads, not a session" in result.output
    session_file = tmp_path / "s.tlar"
    assert run(url, "backup", "create", str(session_file), "-s", "run").exit_code == 0
    result = run(f"sqlite:///{tmp_path}/o.db", "backup", "restore", str(session_file), "--rename", "coder=c2")
    assert result.exit_code == 2 and "--rename applies to thread archives" in result.output
