"""Writers in several OS processes on one SQLite thread: never a silent fork."""

from __future__ import annotations

import itertools
import multiprocessing
from pathlib import Path

import pytest

from threadline import open_store
from threadline.errors import Conflict

PROCESSES = 4
WRITES = 25


def append_worker(url: str, worker: int, writes: int) -> int:
    """Append ``writes`` checkpoints without expected_head; returns how many were written."""
    with open_store(url) as store:
        for i in range(writes):
            store.threads.checkpoint("shared", {"worker": worker, "i": i, "log": [worker, i]})
    return writes


def cas_worker(url: str, worker: int, attempts: int) -> tuple[list[str], int]:
    """Read the head, then write expecting it; returns (ids written, conflicts seen)."""
    won: list[str] = []
    conflicts = 0
    with open_store(url) as store:
        for i in range(attempts):
            head = store.threads.latest("cas")
            try:
                c = store.threads.checkpoint(
                    "cas", {"worker": worker, "i": i}, expected_head=head.id if head else None
                )
            except Conflict as exc:
                assert exc.expected == (head.id if head else None)
                assert exc.actual != exc.expected
                conflicts += 1
            else:
                assert c.parent_id == (head.id if head else None)
                won.append(c.id)
    return won, conflicts


@pytest.mark.slow
def test_unconditional_writes_from_processes_are_serialized(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    with open_store(url) as store:
        store.threads.create_thread("shared")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(PROCESSES) as pool:
        written = pool.starmap(append_worker, [(url, w, WRITES) for w in range(PROCESSES)])
    assert sum(written) == PROCESSES * WRITES
    with open_store(url) as store:
        history = list(store.threads.walk("shared"))
        everything = list(store.checkpoints.iter("shared"))
        assert len(history) == len(everything) == PROCESSES * WRITES
        parents = [c.parent_id for c in everything]
        assert len(set(parents)) == len(parents)  # no two checkpoints claim the same parent
        assert parents.count(None) == 1
        assert history[-1].parent_id is None
        for newer, older in itertools.pairwise(history):
            assert newer.parent_id == older.id
        per_worker: dict[int, list[int]] = {}
        for c in reversed(history):
            state = store.threads.get_state(c.id)
            assert state["log"] == [state["worker"], state["i"]]
            per_worker.setdefault(state["worker"], []).append(state["i"])
        assert per_worker == {w: list(range(WRITES)) for w in range(PROCESSES)}  # each in its order
        assert store.threads.latest("shared").id == history[0].id  # type: ignore[union-attr]
        assert [b.name for b in store.threads.branches("shared")] == ["main"]


@pytest.mark.slow
def test_expected_head_writers_from_processes_form_one_chain(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cas.db"
    with open_store(url) as store:
        store.threads.create_thread("cas")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(PROCESSES) as pool:
        results = pool.starmap(cas_worker, [(url, w, WRITES) for w in range(PROCESSES)])
    won = [cid for ids, _ in results for cid in ids]
    conflicts = sum(n for _, n in results)
    assert len(won) + conflicts == PROCESSES * WRITES
    print(f"{len(won)} writes won, {conflicts} conflicts")
    assert won  # somebody always wins
    with open_store(url) as store:
        history = list(store.threads.walk("cas"))
        assert sorted(c.id for c in history) == sorted(won)  # every winner, no loser, stored
        assert store.checkpoints.stats(["cas"]).checkpoints == len(won)
        assert history[-1].parent_id is None
        for newer, older in itertools.pairwise(history):
            assert newer.parent_id == older.id
        parents = [c.parent_id for c in history]
        assert len(set(parents)) == len(parents)
