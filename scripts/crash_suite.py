"""Crash suite: kill a writer with SIGKILL at random moments and check the store after each kill.

A *writer* process loops over deterministic operations on one store: checkpoints of every kind on
several branches, branch creations, merges, restores, expiry + ``cleanup_expired``, explicit
deletes, backups of a thread restored under a new id, and thread deletions. After each operation
returns it prints one acknowledgement line (flushed). States are derived from ``(seed, step)`` and
carry their step, so a checker can recompute any state without trusting the store.

The *harness* starts the writer, kills it with SIGKILL after a random delay, reopens the store and
checks:

* every acknowledged checkpoint is present with exactly the state that was written (unless a
  deletion covering it was started later, then it is present and exact, or absent);
* every present checkpoint of every thread reads back fully and equals the state its step derives
  (nothing half-written: blob hashes and item CRCs are verified on read);
* lineage is intact (parents and branch heads exist), restored threads are complete or absent,
  acknowledged deletions are complete;
* SQLite: ``PRAGMA integrity_check`` is ``ok``;
* writing continues (the next writer incarnation starts on the same store; a final write is made).

Usage::

    python scripts/crash_suite.py --kills 200                    # SQLite, temporary directory
    python scripts/crash_suite.py --kills 200 --url postgresql://postgres@127.0.0.1/test?schema=crash
    python scripts/crash_suite.py writer --url URL --seed S --start N --workdir DIR   # (internal)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

MAIN_THREAD = "t0"
SMALL_THREAD = "t1"

# ---------------------------------------------------------------- deterministic states


def derive_state(seed: int, step: int) -> dict[str, Any]:
    """The state written at ``step``: a growing message list (shared prefixes), a blob shared by
    a few consecutive steps, inline values and extension types."""
    n = step % 37 + 2
    messages = [
        {"role": "user" if i % 2 else "assistant", "text": f"{seed}-{i}-" + "lorem ipsum " * (i % 9)}
        for i in range(n)
    ]
    blob_rng = random.Random(f"{seed}:blob:{step // 4}")
    size = blob_rng.randrange(64, 6000)
    return {
        "step": step,
        "messages": messages,
        "blob": blob_rng.randbytes(size),
        "text": "é" * (step % 50) + str(step),
        "pair": (step, -step, float(step) / 7),
        "tags": {step % 5, "x"},
        "nested": {"a": [step, str(step), None, True], "b": {"deep": [[step]]}},
    }


# ---------------------------------------------------------------- writer


def _say(*parts: object) -> None:
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


OPS = {
    "cp": 50,
    "branch": 6,
    "merge": 6,
    "restore": 6,
    "cleanup": 4,
    "delete": 4,
    "small": 10,
    "archive": 4,
    "drop": 2,
    "delbranch": 2,
}


def writer(url: str, seed: int, start: int, workdir: Path, skip: frozenset[str] = frozenset()) -> None:
    from threadline import CheckpointStatus, Expired, NotFound, StorageError, open_store

    store = open_store(url)
    core, threads = store.checkpoints, store.threads
    for tid in (MAIN_THREAD, SMALL_THREAD):
        core.ensure_thread(tid)
    _say("READY", start)
    step = start
    past = datetime.now(UTC) - timedelta(days=1)
    while True:
        try:
            rng = random.Random(f"{seed}:op:{step}")
            ops = [op for op in OPS if op not in skip]
            op = rng.choices(ops, weights=[OPS[op] for op in ops])[0]
            branches = [b for b in threads.branches(MAIN_THREAD)]
            names = [b.name for b in branches]
            if op == "cp":
                name = "main" if rng.random() < 0.6 or len(names) == 1 else rng.choice(names)
                kind = rng.choices(["auto", "manual", "error", "milestone"], weights=[70, 15, 10, 5])[0]
                extra: dict[str, Any] = {"metadata": {"step": step, "q": 'it\'s "quoted"'}}
                if kind == "error":
                    extra["error_message"] = f"boom {step}"
                if kind == "milestone":
                    extra["milestone"] = f"m{step}"
                if kind == "manual":
                    extra["tags"] = [f"tag{step % 3}"]
                if rng.random() < 0.3:
                    head = threads.latest(MAIN_THREAD, name)
                    extra["expected_head"] = head.id if head else None
                cp = core.create(MAIN_THREAD, derive_state(seed, step), branch=name, kind=kind, **extra)
                _say("CP", MAIN_THREAD, cp.id, step, name)
            elif op == "branch" and len(names) < 8:
                page = threads.history(MAIN_THREAD, limit=30).items
                if page:
                    source = rng.choice(page)
                    threads.create_branch(MAIN_THREAD, f"b{step}", from_checkpoint=source.id)
                    _say("BR", MAIN_THREAD, f"b{step}")
            elif op == "merge":
                sources = [b for b in branches if b.name != "main" and b.head]
                if sources:
                    src = rng.choice(sources)
                    strategy = rng.choice(["theirs", "ours", "fn"])
                    main_head = threads.latest(MAIN_THREAD, "main")
                    if strategy == "theirs" or main_head is None:
                        state_step = core.get_state(src.head, MAIN_THREAD)["step"]  # type: ignore[arg-type]
                        cp = threads.merge(MAIN_THREAD, src.name, "main", strategy="theirs")
                    elif strategy == "ours":
                        state_step = core.get_state(main_head.id, MAIN_THREAD)["step"]
                        cp = threads.merge(MAIN_THREAD, src.name, "main", strategy="ours")
                    else:
                        state_step = step
                        merged = derive_state(seed, step)
                        cp = threads.merge(
                            MAIN_THREAD,
                            src.name,
                            "main",
                            strategy=lambda base, ours, theirs, merged=merged: merged,
                        )
                    _say("CP", MAIN_THREAD, cp.id, state_step, "main")
            elif op == "restore":
                page = threads.history(MAIN_THREAD, limit=40).items
                if page:
                    source = rng.choice(page)
                    try:
                        state_step = core.get_state(source.id, MAIN_THREAD)["step"]
                        cp = threads.restore(source.id, thread_id=MAIN_THREAD)
                    except (Expired, NotFound):
                        pass
                    else:
                        _say("CP", MAIN_THREAD, cp.id, state_step, cp.branch)
            elif op in ("cleanup", "delete"):
                heads = {b.head for b in branches}
                old = [
                    c
                    for c in list(core.iter(MAIN_THREAD))[25:]
                    if c.id not in heads and c.milestone is None and c.status is CheckpointStatus.ACTIVE
                ]
                if old:
                    chosen = rng.sample(old, min(len(old), 8 if op == "cleanup" else 3))
                    ids = [c.id for c in chosen]
                    _say("DELSTART", MAIN_THREAD, *ids)
                    if op == "cleanup":
                        for cid in ids:
                            core.set_expiry(cid, past, thread_id=MAIN_THREAD)
                        report = core.cleanup_expired()
                        _say("DEL", MAIN_THREAD, *report.deleted)
                    else:
                        core.delete(ids, thread_id=MAIN_THREAD)
                        _say("DEL", MAIN_THREAD, *ids)
            elif op == "delbranch":
                others = [n for n in names if n != "main"]
                if others:
                    name = rng.choice(others)
                    _say("DELBRSTART", MAIN_THREAD, name)
                    threads.delete_branch(MAIN_THREAD, name, force=True)
                    _say("DELBR", MAIN_THREAD, name)
            elif op == "small":
                cp = core.create(SMALL_THREAD, derive_state(seed, step))
                _say("CP", SMALL_THREAD, cp.id, step, "main")
            elif op == "archive":
                path = workdir / f"a{step}.tlar"
                summary = threads.backup([SMALL_THREAD], path)
                target = f"r{step}"
                _say("RSTART", target, summary.checkpoints)
                threads.restore_backup(path, rename={SMALL_THREAD: target})
                _say("RT", target, summary.checkpoints)
                again = threads.restore_backup(path, rename={SMALL_THREAD: target})  # idempotent
                assert again.skipped == [target], again
                path.unlink()
            elif op == "drop":
                restored = [t.id for t in core.list_threads(limit=1000).items if t.id.startswith("r")]
                if len(restored) > 3:
                    victim = rng.choice(restored)
                    _say("TDSTART", victim)
                    threads.delete_thread(victim)
                    _say("TD", victim)
        except StorageError as exc:  # the server connection was cut: outcome unknown, go on
            _say("LOST", step, type(exc).__name__)
            time.sleep(0.01)
        step += 1


# ---------------------------------------------------------------- checking


@dataclass
class Acks:
    """Everything the writers acknowledged (and started), across incarnations."""

    checkpoints: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    maybe_deleted: set[tuple[str, str]] = field(default_factory=set)
    deleted: set[tuple[str, str]] = field(default_factory=set)
    branch_deletes_started: dict[str, set[str]] = field(default_factory=dict)  # thread -> names
    branches_deleted: set[tuple[str, str]] = field(default_factory=set)
    branches_created: set[tuple[str, str]] = field(default_factory=set)
    restores_started: dict[str, int] = field(default_factory=dict)
    restores_done: dict[str, int] = field(default_factory=dict)
    drops_started: set[str] = field(default_factory=set)
    drops_done: set[str] = field(default_factory=set)
    lines: int = 0

    def feed(self, line: str) -> None:
        parts = line.split()
        if not parts:
            return
        self.lines += 1
        tag = parts[0]
        if tag == "CP":
            _, tid, cid, step, branch = parts
            self.checkpoints[(tid, cid)] = (int(step), branch)
        elif tag == "DELSTART":
            self.maybe_deleted.update((parts[1], cid) for cid in parts[2:])
        elif tag == "DEL":
            self.deleted.update((parts[1], cid) for cid in parts[2:])
        elif tag == "DELBRSTART":
            self.branch_deletes_started.setdefault(parts[1], set()).add(parts[2])
            # checkpoints written on that branch so far may go with it
            for (tid, cid), (_, branch) in self.checkpoints.items():
                if tid == parts[1] and branch == parts[2]:
                    self.maybe_deleted.add((tid, cid))
        elif tag == "DELBR":
            self.branches_deleted.add((parts[1], parts[2]))
        elif tag == "BR":
            self.branches_created.add((parts[1], parts[2]))
        elif tag == "RSTART":
            self.restores_started[parts[1]] = int(parts[2])
        elif tag == "RT":
            self.restores_done[parts[1]] = int(parts[2])
        elif tag == "TDSTART":
            self.drops_started.add(parts[1])
        elif tag == "TD":
            self.drops_done.add(parts[1])


class CheckFailure(AssertionError):
    pass


def check_store(url: str, seed: int, acks: Acks) -> dict[str, int]:
    """Verify the store against the acknowledgements; raises CheckFailure. Returns counts."""
    from threadline import NotFound, open_store

    problems: list[str] = []
    present: dict[str, set[str]] = {}
    counts = {"threads": 0, "checkpoints": 0}
    with open_store(url) as store:
        core = store.checkpoints
        after: str | None = None
        thread_ids: list[str] = []
        while True:
            page = core.list_threads(cursor=after, limit=500)
            thread_ids.extend(t.id for t in page.items)
            if page.next_cursor is None:
                break
            after = page.next_cursor
        for tid in thread_ids:
            ids = present.setdefault(tid, set())
            rows = list(core.iter(tid))
            ids.update(c.id for c in rows)
            for c in rows:  # integrity scan: every checkpoint materializes and is exact
                try:
                    state = core.get_state(c.id, tid)
                except Exception as exc:
                    problems.append(f"{tid}/{c.id}: cannot be read: {type(exc).__name__}: {exc}")
                    continue
                step = state.get("step")
                if not isinstance(step, int) or state != derive_state(seed, step):
                    problems.append(f"{tid}/{c.id}: state does not match the state of its step {step!r}")
                if c.parent_id is not None and c.parent_id not in ids:
                    problems.append(f"{tid}/{c.id}: parent {c.parent_id} is missing")
            for b in store.threads.branches(tid):
                if b.head is not None and b.head not in ids:
                    problems.append(f"{tid}: head {b.head} of branch {b.name!r} is missing")
                if b.head is not None:
                    walked = list(store.threads.walk(tid, b.name))
                    if walked[-1].parent_id is not None:
                        problems.append(f"{tid}: history of {b.name!r} does not reach a root")
            counts["checkpoints"] += len(rows)
        counts["threads"] = len(thread_ids)
        for (tid, cid), (step, _branch) in acks.checkpoints.items():
            if (tid, cid) in acks.maybe_deleted or tid in acks.drops_started:
                continue
            if cid not in present.get(tid, set()):
                problems.append(f"acknowledged checkpoint {tid}/{cid} (step {step}) is missing")
                continue
            if core.get_state(cid, tid) != derive_state(seed, step):
                problems.append(f"acknowledged checkpoint {tid}/{cid} has the wrong state (step {step})")
        for tid, cid in acks.deleted:
            if cid in present.get(tid, set()):
                problems.append(f"deleted checkpoint {tid}/{cid} is still present")
        for tid, name in acks.branches_deleted:
            if tid in present and name in {b.name for b in store.threads.branches(tid)}:
                problems.append(f"deleted branch {tid}/{name} still exists")
        for tid, name in acks.branches_created - acks.branches_deleted:
            if name not in acks.branch_deletes_started.get(tid, set()):
                try:
                    store.threads.get_branch(tid, name)
                except NotFound:
                    problems.append(f"acknowledged branch {tid}/{name} is missing")
        for name, n in acks.restores_started.items():
            exists = name in present
            if name in acks.drops_done and exists:
                problems.append(f"deleted thread {name} still exists")
            if name in acks.restores_done and name not in acks.drops_started and not exists:
                problems.append(f"restored thread {name} is missing")
            if exists and len(present[name]) != n:
                problems.append(f"restored thread {name} has {len(present[name])} checkpoints, not {n}")
    if url.startswith("sqlite:"):
        path = url.split("sqlite:///", 1)[1]
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            result = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
        if result != [("ok",)]:
            problems.append(f"PRAGMA integrity_check: {result[:5]}")
    if problems:
        raise CheckFailure(f"{len(problems)} problems:\n" + "\n".join(problems[:30]))
    return counts


# ---------------------------------------------------------------- harness


@dataclass
class SuiteResult:
    url: str
    kills: int = 0
    kills_before_ready: int = 0
    connection_cuts: int = 0
    acknowledged_lines: int = 0
    acknowledged_checkpoints: int = 0
    checks_passed: int = 0
    final_threads: int = 0
    final_checkpoints: int = 0
    writer_errors: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures and not self.writer_errors


def _reader(proc: subprocess.Popen[str], sink: list[str], ready: threading.Event) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if not line.endswith("\n"):  # cut by the kill: not an acknowledgement
            break
        if line.startswith("READY"):
            ready.set()
        sink.append(line)


WRITER_APP = "tl_crash_writer"


def _cut_connections(url: str) -> int:
    """Terminate the writer's PostgreSQL backends (as a server restart or network cut would)."""
    import psycopg

    with psycopg.connect(url.split("?")[0], autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (WRITER_APP,),
        ).fetchall()
    return len(rows)


def run_suite(
    url: str,
    *,
    kills: int,
    seed: int = 1,
    workdir: Path,
    max_delay: float = 0.6,
    early_kill_ratio: float = 0.1,
    skip: tuple[str, ...] = (),
    log: Callable[[str], None] | None = None,
) -> SuiteResult:
    """Run ``kills`` writer incarnations, each killed with SIGKILL, checking the store after each."""
    rng = random.Random(seed)
    result = SuiteResult(url)
    acks = Acks()
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    postgres = url.startswith(("postgresql:", "postgres:"))
    writer_url = f"{url}{'&' if '?' in url else '?'}application_name={WRITER_APP}" if postgres else url
    for n in range(kills):
        cmd = [sys.executable, __file__, "writer", "--url", writer_url, "--seed", str(seed)]
        cmd += ["--start", str((n + 1) * 1_000_000), "--workdir", str(workdir), "--skip", ",".join(skip)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        lines: list[str] = []
        ready = threading.Event()
        reader = threading.Thread(target=_reader, args=(proc, lines, ready), daemon=True)
        reader.start()
        if rng.random() < early_kill_ratio:
            time.sleep(rng.uniform(0.0, 0.4))  # during start-up: imports, open, migration
            if not ready.is_set():
                result.kills_before_ready += 1
        else:
            ready.wait(30)
            time.sleep(rng.uniform(0.0, max_delay))
        if postgres and rng.random() < 0.5:  # also cut the writer's server connections first
            result.connection_cuts += _cut_connections(url)
            time.sleep(rng.uniform(0.0, 0.2))
        if proc.poll() is not None:
            assert proc.stderr is not None
            result.writer_errors.append(
                f"writer {n} exited with {proc.returncode}: {proc.stderr.read()[-3000:]}"
            )
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join(10)
        assert proc.stderr is not None
        proc.stderr.close()
        if proc.stdout is not None:
            proc.stdout.close()
        result.kills += 1
        with open(workdir / "acks.log", "a") as ack_log:
            ack_log.write(f"# incarnation {n + 1}\n" + "".join(lines))
        for line in lines:
            acks.feed(line)
        try:
            counts = check_store(url, seed, acks)
        except CheckFailure as exc:
            result.failures.append(f"after kill {n + 1}: {exc}")
            break
        result.checks_passed += 1
        result.final_threads, result.final_checkpoints = counts["threads"], counts["checkpoints"]
        if log:
            log(
                f"kill {n + 1}/{kills}: {len(lines)} lines acknowledged, "
                f"{counts['threads']} threads, {counts['checkpoints']} checkpoints: ok"
            )
    if result.ok:  # writing continues after the last kill
        from threadline import open_store

        with open_store(url) as store:
            cp = store.checkpoints.create(MAIN_THREAD, derive_state(seed, 999_999_999))
            if store.checkpoints.get_state(cp.id, MAIN_THREAD) != derive_state(seed, 999_999_999):
                result.failures.append("the final write does not read back")
    result.acknowledged_lines = acks.lines
    result.acknowledged_checkpoints = len(acks.checkpoints)
    result.seconds = round(time.monotonic() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command")
    w = sub.add_parser("writer")
    w.add_argument("--url", required=True)
    w.add_argument("--seed", type=int, required=True)
    w.add_argument("--start", type=int, required=True)
    w.add_argument("--workdir", type=Path, required=True)
    w.add_argument("--skip", default="")
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--url", default=None, help="store URL (default: a new SQLite file)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-delay", type=float, default=0.6)
    parser.add_argument("--skip", default="", help=f"operations to leave out, of: {','.join(OPS)}")
    parser.add_argument("--dir", type=Path, default=None, help="keep the store and logs here")
    args = parser.parse_args(argv)
    if args.command == "writer":
        writer(args.url, args.seed, args.start, args.workdir, frozenset(filter(None, args.skip.split(","))))
        return 0
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    with tempfile.TemporaryDirectory(prefix="tl-crash-") as tmp:
        base = args.dir or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        url = args.url or f"sqlite:///{base}/crash.db"
        result = run_suite(
            url,
            kills=args.kills,
            seed=seed,
            workdir=base / "work",
            max_delay=args.max_delay,
            skip=tuple(filter(None, args.skip.split(","))),
            log=print,
        )
    summary = dict(result.__dict__) | {"seed": seed, "skip": args.skip, "ok": result.ok}
    print(json.dumps(summary, indent=2))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
