"""Crash suite (short setting): SIGKILL a writer at random moments, then check the store.

The writer, the checker and the long setting live in ``scripts/crash_suite.py``
(``python scripts/crash_suite.py --kills 200``); see docs/reliability.md.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import POSTGRES_URL as PG_URL
from conftest import load_script, postgres_available, unique_name
from threadline import open_store

KILLS = int(os.environ.get("THREADLINE_CRASH_KILLS", "8"))


crash = load_script("crash_suite")


BACKENDS = ["sqlite"] + (["postgresql"] if postgres_available() else [])


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/crash.db"
    else:
        sep = "&" if "?" in PG_URL else "?"
        yield f"{PG_URL}{sep}schema={unique_name('tl_crash')}"


# Operations the random writer leaves out (none: every operation takes part).
SKIP: tuple[str, ...] = ()


def test_sigkill_at_random_moments_loses_nothing_acknowledged(store_url: str, tmp_path: Path) -> None:
    result = crash.run_suite(
        store_url, kills=KILLS, seed=7, workdir=tmp_path / "work", max_delay=0.5, skip=SKIP
    )
    print(
        f"{result.kills} kills, {result.acknowledged_lines} acknowledged operations, "
        f"{result.final_checkpoints} checkpoints checked at the end, {result.seconds} s"
    )
    assert result.writer_errors == []
    assert result.failures == []
    assert result.kills == KILLS
    assert result.checks_passed == KILLS
    assert result.acknowledged_checkpoints > KILLS  # the writer did real work between kills


def test_checker_notices_a_missing_acknowledged_checkpoint(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    acks = crash.Acks()
    with open_store(url) as store:
        store.checkpoints.create_thread("t0")
        cp = store.checkpoints.create("t0", crash.derive_state(1, 5))
    acks.feed(f"CP t0 {cp.id} 5 main")
    crash.check_store(url, 1, acks)  # consistent
    acks.feed(f"CP t0 {uuid.uuid4()} 6 main")
    with pytest.raises(crash.CheckFailure, match="missing"):
        crash.check_store(url, 1, acks)


def test_checker_notices_a_state_that_is_not_what_was_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    acks = crash.Acks()
    with open_store(url) as store:
        store.checkpoints.create_thread("t0")
        cp = store.checkpoints.create("t0", crash.derive_state(1, 5))
    acks.feed(f"CP t0 {cp.id} 4 main")  # acknowledged with another step's state
    with pytest.raises(crash.CheckFailure, match="wrong state"):
        crash.check_store(url, 1, acks)


def test_checker_notices_corrupt_stored_bytes(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with open_store(f"sqlite:///{path}") as store:
        store.checkpoints.create_thread("t0")
        store.checkpoints.create("t0", crash.derive_state(1, 5))
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE blobs SET data = substr(data, 1, 20) || x'00' || substr(data, 22)")
        conn.execute("UPDATE items SET data = data || x'00' WHERE pos = 1")
    conn.close()
    with pytest.raises(crash.CheckFailure, match="cannot be read"):
        crash.check_store(f"sqlite:///{path}", 1, crash.Acks())


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_branch_deletion_keeps_lineage_of_orphans(backend: str, tmp_path: Path) -> None:
    """Found by the crash suite: after deleting a merge checkpoint, the merged branch's checkpoints are
    reachable from no head; deleting another branch that reaches their ancestors leaves a dangling parent."""
    url = "memory://" if backend == "memory" else f"sqlite:///{tmp_path}/o.db"
    with open_store(url) as store:
        threads = store.threads
        threads.create_thread("t")
        a = threads.checkpoint("t", {"v": "a"})
        threads.create_branch("t", "b", from_checkpoint=a.id)
        b1 = threads.checkpoint("t", {"v": "b1"}, branch="b")
        threads.checkpoint("t", {"v": "b2"}, branch="b")
        merge = threads.merge("t", "b", "main")
        threads.checkpoint("t", {"v": "c"})
        threads.delete_branch("t", "b", force=True)  # b1, b2 survive through the merge parent link
        store.checkpoints.delete([merge.id], thread_id="t")  # now b1, b2 are reachable from no head
        threads.create_branch("t", "x", from_checkpoint=b1.id)
        threads.checkpoint("t", {"v": "x1"}, branch="x")
        threads.delete_branch("t", "x", force=True)  # deletes b1 (only x reached it); b2 survives
        everything = list(store.checkpoints.iter("t"))
        ids = {c.id for c in everything}
        dangling = [c.id for c in everything if c.parent_id is not None and c.parent_id not in ids]
        assert dangling == []
