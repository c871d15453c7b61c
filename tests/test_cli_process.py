"""The installed ``threadline`` executable, run as a user would: exit codes,
stderr without tracebacks, Ctrl-C during a long operation, and progress bars
on a real terminal (a pseudo-terminal) but not in a pipe."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from threadline import open_store

EXE = str(Path(sys.executable).with_name("threadline"))


def threadline(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "THREADLINE_URL"}
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


def assert_clean_failure(proc: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    return proc.stderr


def test_unknown_scheme(tmp_path: Path) -> None:
    err = assert_clean_failure(threadline("--store", "redis://localhost/0", "threads", "--json"))
    assert err.startswith("error: unknown store URL scheme 'redis'")


def test_unreachable_postgresql(tmp_path: Path) -> None:
    # port 9 (discard) on the loopback: nothing listens, the connection is refused at once
    err = assert_clean_failure(
        threadline("--store", "postgresql://postgres@127.0.0.1:9/test?connect_timeout=2", "threads")
    )
    assert err.startswith("error:") and "127.0.0.1" in err


def test_environment_variable_names_the_store(tmp_path: Path) -> None:
    env = {**os.environ, "THREADLINE_URL": "nope://x"}
    proc = subprocess.run([EXE, "threads"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1 and "unknown store URL scheme 'nope'" in proc.stderr


def test_non_threadline_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    err = assert_clean_failure(threadline("--store", f"sqlite:///{path}", "threads"))
    assert "is not a threadline store" in err
    (tmp_path / "random.db").write_bytes(os.urandom(8192))
    err = assert_clean_failure(threadline("--store", f"sqlite:///{tmp_path}/random.db", "check"))
    assert "not a threadline store" in err


def test_ambiguous_prefix_and_unknown_thread(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    with open_store(url) as store:
        store.threads.create_thread("alpha")
        ids = [store.threads.checkpoint("alpha", {"n": i}).id for i in range(3)]
    err = assert_clean_failure(threadline("--store", url, "show", ids[0][:6]))
    assert "ambiguous" in err and ids[0] in err and ids[1] in err
    err = assert_clean_failure(threadline("--store", url, "log", "alpah"))
    assert "did you mean 'alpha'?" in err
    proc = threadline("--store", url, "show", ids[2], "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["checkpoint"]["id"] == ids[2]
    assert_clean_failure(threadline("--store", url, "log"), code=2)


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A thread whose backup takes about a second (12,000 checkpoints of 4 KB each)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('big')}/big.db?synchronous=normal"
    with open_store(url) as store:
        store.threads.create_thread("big")
        for batch in range(60):
            store.checkpoints.create_many(
                [
                    {"thread_id": "big", "state": {"blob": os.urandom(4000), "n": batch * 200 + i}}
                    for i in range(200)
                ]
            )
    return url


def test_ctrl_c_during_backup_leaves_no_file_and_exits_130(big_store: str, tmp_path: Path) -> None:
    target = tmp_path / "big.tlar"
    partial = tmp_path / "big.tlar.partial"
    proc = subprocess.Popen(
        [EXE, "--store", big_store, "backup", "create", str(target), "--thread", "big"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not partial.exists():  # the backup is under way
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert stdout == ""
    assert not target.exists() and not partial.exists()
    assert list(tmp_path.iterdir()) == []


def run_in_terminal(*args: str) -> tuple[int, str]:
    """Run the executable with stdout and stderr on a pseudo-terminal; returns (exit code, output)."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100"}
    proc = subprocess.Popen([EXE, *args], stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")


def test_progress_bar_on_a_terminal_not_in_a_pipe_nor_with_json(big_store: str, tmp_path: Path) -> None:
    code, shown = run_in_terminal("--store", big_store, "check")
    assert code == 0 and "ok: 12000 checkpoints in 1 threads verified" in shown
    assert "check: check" in shown and "━" in shown  # the bar was drawn (then cleared)
    code, shown = run_in_terminal("--store", big_store, "check", "--json")
    assert code == 0 and "━" not in shown and json.loads(shown)["ok"] is True
    piped = threadline("--store", big_store, "check")
    assert piped.returncode == 0 and "━" not in piped.stdout + piped.stderr
