"""A cleanup killed (SIGKILL) in the middle leaves a consistent SQLite store, and the
next cleanup finishes the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from threadline import Policy, open_store

THREADS = 30
PER_THREAD = 40

CHILD = textwrap.dedent(
    """
    import sys
    from threadline import open_store
    from threadline.sessions import SessionCheckpointManager

    class Announcing(SessionCheckpointManager):
        def _apply(self, thread_id, expire, delete):
            freed = super()._apply(thread_id, expire, delete)
            print(thread_id, flush=True)  # one thread done: the parent may kill us any time now
            return freed

    with open_store(sys.argv[1]) as store:
        Announcing(store.threads).cleanup("s")
    print("finished", flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_cleanup_leaves_a_consistent_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/k.db"
    with open_store(url) as store:
        store.sessions.create_session("s", policy=Policy(max_checkpoints=5))
        for t in range(THREADS):
            tid = f"t{t:02d}"
            store.sessions.create_thread("s", tid)
            for i in range(PER_THREAD):
                store.threads.checkpoint(
                    tid, {"log": [f"m{j}" for j in range(i + 2)], "i": i, "pad": "z" * 300}
                )
        point = store.sessions.coordinate_cross_thread_checkpoints("s", ["t00", "t01"], "v1")
        expected = {t.thread_id: t.deleted for t in store.sessions.cleanup("s", dry_run=True).threads}

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, url], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    done = [child.stdout.readline().strip() for _ in range(3)]  # three threads cleaned, then kill
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert all(done) and "finished" not in done

    with open_store(url) as store:
        assert store.checkpoints.check() == []  # every state readable, every parent and head present
        for t in range(THREADS):
            tid = f"t{t:02d}"
            remaining = {c.id for c in store.checkpoints.iter(tid)}
            gone = set(expected[tid])
            # per thread: all of the plan applied or none of it, never half
            assert remaining.isdisjoint(gone) or gone <= remaining, tid
            history = list(store.threads.walk(tid))
            assert history and history[-1].parent_id is None
            state = store.threads.get_state(history[0].id)
            assert state["log"] == [f"m{j}" for j in range(state["i"] + 2)]
        for tid in done:
            assert {c.id for c in store.checkpoints.iter(tid)}.isdisjoint(expected[tid])
        result = store.sessions.cleanup("s")
        assert result.ok
        assert store.checkpoints.check() == []
        for t in range(THREADS):
            assert len({c.id for c in store.checkpoints.iter(f"t{t:02d}")}) == 5
        for tid, cid in point.members.items():
            assert store.threads.get(cid, thread_id=tid)
        store.sessions.restore_sync_point("s", "v1")
