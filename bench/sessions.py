"""Session layer benchmark: statistics and cleanup on 100,000 checkpoints (SQLite).

Usage::

    .venv/bin/python bench/sessions.py [--threads 100] [--per-thread 1000] [--keep 100]

Builds one session of ``threads`` threads x ``per_thread`` checkpoints of a growing chat
(one ~200-byte message per step; written in batches with ``create_many``, synchronous=normal),
then times: session statistics, store statistics, re-computing expiry for a new TTL policy,
a cleanup dry run and a real cleanup keeping ``keep`` checkpoints per thread (the file size is
measured before and after). Everything runs in a temporary directory removed at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import file_bytes, mb, simple_table, timed
from threadline import Policy, open_store

console = Console(width=140)


def build(url: str, threads: int, per_thread: int) -> None:
    with open_store(url) as store:
        store.sessions.create_session("bench")
        tids = [f"t{t:04d}" for t in range(threads)]
        for tid in tids:
            store.sessions.create_thread("bench", tid)
        logs: dict[str, list[str]] = {tid: [] for tid in tids}
        for step in range(per_thread):
            requests = []
            for tid in tids:
                logs[tid].append(f"{tid} step {step}: " + "lorem ipsum dolor sit amet " * 7)
                requests.append({"thread_id": tid, "state": {"messages": logs[tid], "step": step}})
            store.threads.checkpoint_many(requests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=100)
    parser.add_argument("--per-thread", type=int, default=1000)
    parser.add_argument("--keep", type=int, default=100)
    args = parser.parse_args(argv)
    total = args.threads * args.per_thread
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sessions.db"
        url = f"sqlite:///{path}?synchronous=normal"
        seconds, _ = timed(lambda: build(url, args.threads, args.per_thread))
        rows.append([f"build {total:,} checkpoints", f"{seconds:.2f} s", mb(file_bytes(path))])
        with open_store(url) as store:
            sessions = store.sessions
            seconds, stats = timed(lambda: sessions.stats("bench"))
            assert stats.totals.checkpoints == total
            rows.append(["session stats (totals, largest, per day)", f"{seconds * 1000:.0f} ms", ""])
            seconds, _ = timed(lambda: sessions.stats("bench", per_day=False))
            rows.append(["session stats without per day (queries only)", f"{seconds * 1000:.0f} ms", ""])
            seconds, totals = timed(lambda: store.threads.stats())
            rows.append(["store totals (aggregate queries only)", f"{seconds * 1000:.0f} ms", ""])
            policy = Policy(ttl_auto=timedelta(days=30), max_checkpoints=args.keep)
            seconds, changed = timed(lambda: sessions.set_global_checkpoint_policy("bench", policy))
            rows.append([f"set policy: re-compute expiry of {changed:,}", f"{seconds:.2f} s", ""])
            seconds, dry = timed(lambda: sessions.cleanup("bench", dry_run=True))
            rows.append([f"cleanup dry run ({len(dry.deleted):,} to remove)", f"{seconds:.2f} s", ""])
            before = store.threads.storage_bytes()  # WAL flushed first
            seconds, result = timed(lambda: sessions.cleanup("bench"))
            assert result.ok and result.deleted == dry.deleted
            after = store.threads.storage_bytes()
            rows.append(
                [
                    f"cleanup: remove {len(result.deleted):,}, keep {total - len(result.deleted):,}",
                    f"{seconds:.2f} s",
                    f"{mb(before)} -> {mb(after)} (reclaimed {mb(result.reclaimed_bytes)})",
                ]
            )
            seconds, stats = timed(lambda: sessions.stats("bench"))
            rows.append(["session stats after cleanup", f"{seconds * 1000:.0f} ms", ""])
            print_stats = stats.totals
            console.print(
                f"after cleanup: {print_stats.checkpoints:,} checkpoints, logical {mb(print_stats.logical_bytes)}, "
                f"stored {mb(print_stats.stored_bytes)} (sharing x{print_stats.sharing_ratio:.1f}); "
                f"before: {totals.checkpoints:,} checkpoints, logical {mb(totals.logical_bytes)}"
            )
    console.print(simple_table("Session layer on SQLite", ["operation", "time", "file"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
