"""Group commit on SQLite: concurrent writers of one process share transactions, each
write in its own savepoint, so a failing write rolls back alone."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from threadline import AlreadyExists, Conflict, open_store


def test_failing_writes_roll_back_alone_under_concurrency(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/g.db") as store:
        core = store.checkpoints
        for t in range(8):
            core.create_thread(f"t{t}")
        core.create("t0", {"x": 0}, kind="milestone", milestone="taken")
        barrier = threading.Barrier(8)
        errors: dict[int, list[BaseException]] = {t: [] for t in range(8)}

        def worker(t: int) -> None:
            barrier.wait()
            for i in range(30):
                try:
                    if t == 0 and i % 3 == 0:  # a write that must fail inside a shared transaction
                        core.create("t0", {"x": i}, kind="milestone", milestone="taken")
                    elif t == 1 and i % 5 == 0:
                        core.create("t1", {"x": i}, expected_head="00000000-0000-7000-8000-000000000000")
                    else:
                        core.create(f"t{t}", {"items": list(range(i + 2)), "i": i})
                except (AlreadyExists, Conflict) as exc:
                    errors[t].append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()

        assert len(errors[0]) == 10 and all(isinstance(e, AlreadyExists) for e in errors[0])
        assert len(errors[1]) == 6 and all(isinstance(e, Conflict) for e in errors[1])
        assert all(not errors[t] for t in range(2, 8))
        for t in range(8):
            history = core.history(f"t{t}", limit=1000).items
            expected = {0: 1 + 20, 1: 24}.get(t, 30)
            assert len(history) == expected
            # one linear chain, every state exactly as written
            assert len({c.parent_id for c in history}) == len(history)
            for cp in history:
                state = core.get_state(cp.id)
                if "items" in state:
                    assert state["items"] == list(range(state["i"] + 2))


@pytest.mark.asyncio
async def test_async_writers_on_distinct_threads(tmp_path: Path) -> None:
    import asyncio

    with open_store(f"sqlite:///{tmp_path}/g.db") as store:
        core = store.checkpoints
        for t in range(8):
            core.create_thread(f"a{t}")

        async def writer(t: int) -> None:
            messages: list[str] = []
            for i in range(25):
                messages.append(f"message {i} of {t}")
                await core.acreate(f"a{t}", {"messages": messages, "i": i})

        await asyncio.gather(*(writer(t) for t in range(8)))
        for t in range(8):
            latest = core.latest(f"a{t}")
            assert latest is not None
            assert core.get_state(latest.id)["messages"] == [f"message {i} of {t}" for i in range(25)]
