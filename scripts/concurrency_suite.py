"""Concurrency suite: several OS processes writing one store at the same moment.

Scenarios (each with 2 to 8 writer processes released together at one instant):

* ``append``: every process appends to the same branch without ``expected_head``;
* ``cas``: every process reads the head and writes expecting it (optimistic concurrency);
* ``threads``: every process writes its own thread of the same store (half of the writes
  expecting their own previous head).

After each run the store is checked: no silent fork (no two checkpoints with the same parent on
one branch), every write is either stored or refused with ``Conflict`` (and ``Conflict`` only for
a stale expected head), losers store nothing, no other error at all reaches a caller (in
particular no "database is locked"), and the history is one chain holding exactly the winners,
each process's writes in its own order.

Usage::

    python scripts/concurrency_suite.py --rounds 3 --writes 200          # SQLite, 2..8 processes
    python scripts/concurrency_suite.py --url postgresql://...?schema=cc  # another backend
    python scripts/concurrency_suite.py worker ...                         # (internal)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCENARIOS = ("append", "cas", "threads")


# ---------------------------------------------------------------- worker (a separate process)


def worker(url: str, scenario: str, worker_id: int, writes: int, start_at: float) -> dict[str, Any]:
    from threadline import Conflict, open_store

    won: list[str] = []
    conflicts = 0
    bad_conflicts: list[str] = []
    errors: list[str] = []
    latencies: list[float] = []
    thread = f"w{worker_id}" if scenario == "threads" else "shared"
    with open_store(url) as store:
        core = store.checkpoints
        time.sleep(max(0.0, start_at - time.time()))
        previous: str | None = None
        for i in range(writes):
            state = {"worker": worker_id, "i": i, "log": [worker_id, i], "pad": "x" * (i % 50)}
            options: dict[str, Any] = {}
            expected: str | None = None
            if scenario == "cas" or (scenario == "threads" and i % 2):
                try:
                    head = core.latest(thread)
                except Exception as exc:
                    errors.append(f"latest: {type(exc).__name__}: {exc}")
                    continue
                expected = head.id if head else None
                options["expected_head"] = expected
            t0 = time.perf_counter()
            try:
                cp = core.create(thread, state, **options)
            except Conflict as exc:
                conflicts += 1
                if "expected_head" not in options or exc.expected != expected or exc.actual == expected:
                    bad_conflicts.append(f"{exc} (expected {expected}, got {exc.expected}/{exc.actual})")
            except Exception as exc:
                errors.append(f"create: {type(exc).__name__}: {exc}")
            else:
                if "expected_head" in options and cp.parent_id != expected:
                    bad_conflicts.append(f"{cp.id} written on {cp.parent_id}, expected {expected}")
                if scenario == "threads" and cp.parent_id != previous:
                    bad_conflicts.append(f"{cp.id} of {thread} has parent {cp.parent_id}, not {previous}")
                previous = cp.id
                won.append(cp.id)
            latencies.append(time.perf_counter() - t0)
    return {
        "worker": worker_id,
        "won": won,
        "conflicts": conflicts,
        "bad_conflicts": bad_conflicts,
        "errors": errors,
        "max_latency": max(latencies, default=0.0),
        "mean_latency": sum(latencies) / len(latencies) if latencies else 0.0,
    }


# ---------------------------------------------------------------- one run


@dataclass
class RunResult:
    scenario: str
    processes: int
    writes: int
    stored: int = 0
    conflicts: int = 0
    silent_forks: int = 0
    errors: list[str] = field(default_factory=list)
    locked_errors: int = 0
    problems: list[str] = field(default_factory=list)
    max_latency_ms: float = 0.0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors and not self.problems and self.silent_forks == 0


def _spawn(url: str, scenario: str, n: int, writes: int, start_at: float) -> subprocess.Popen[str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "worker", url, scenario, str(n), str(writes), repr(start_at)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def run_once(url: str, scenario: str, processes: int, writes: int) -> RunResult:
    """Run one scenario on a fresh store at ``url`` and check the result."""
    from threadline import open_store

    result = RunResult(scenario, processes, writes)
    with open_store(url) as store:
        for tid in [f"w{n}" for n in range(processes)] if scenario == "threads" else ["shared"]:
            store.checkpoints.create_thread(tid)
    started = time.monotonic()
    start_at = time.time() + 1.0 + 0.15 * processes  # everyone opens the store, then all go at once
    procs = [_spawn(url, scenario, n, writes, start_at) for n in range(processes)]
    outputs: list[dict[str, Any]] = []
    for n, proc in enumerate(procs):
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            result.errors.append(f"worker {n} crashed ({proc.returncode}): {err[-2000:]}")
            continue
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    result.seconds = round(time.monotonic() - started, 2)
    for o in outputs:
        result.errors.extend(o["errors"])
        result.problems.extend(o["bad_conflicts"])
        result.conflicts += o["conflicts"]
        result.max_latency_ms = max(result.max_latency_ms, round(o["max_latency"] * 1000, 1))
    result.locked_errors = sum("locked" in e or "busy" in e for e in result.errors)
    won = {o["worker"]: o["won"] for o in outputs}
    attempts = sum(len(ids) for ids in won.values()) + result.conflicts
    if not result.errors and attempts != processes * writes:
        result.problems.append(f"{attempts} outcomes for {processes * writes} writes")
    with open_store(url) as store:
        core = store.checkpoints
        threads = [f"w{n}" for n in range(processes)] if scenario == "threads" else ["shared"]
        for tid in threads:
            everything = list(core.iter(tid))
            parents = [c.parent_id for c in everything]
            result.silent_forks += len(parents) - len(set(parents))
            history = list(store.threads.walk(tid))
            result.stored += len(everything)
            if len(history) != len(everything):
                result.problems.append(
                    f"{tid}: {len(everything)} checkpoints but {len(history)} in the chain"
                )
            if history and history[-1].parent_id is not None:
                result.problems.append(f"{tid}: the chain does not end at a root")
            for newer, older in itertools.pairwise(history):
                if newer.parent_id != older.id:
                    result.problems.append(f"{tid}: {newer.id} does not follow {older.id}")
            expected_ids = (
                {cid for ids in won.values() for cid in ids}
                if scenario != "threads"
                else set(won.get(int(tid[1:]), []))
            )
            if {c.id for c in everything} != expected_ids:
                result.problems.append(f"{tid}: stored checkpoints differ from the acknowledged winners")
            order: dict[int, list[int]] = {}
            for c in reversed(history):
                state = core.get_state(c.id, tid)
                if state["log"] != [state["worker"], state["i"]]:
                    result.problems.append(f"{tid}/{c.id}: state is not what was written")
                order.setdefault(state["worker"], []).append(state["i"])
            for w, seq in order.items():
                if seq != sorted(seq):
                    result.problems.append(f"{tid}: writes of worker {w} are out of order")
            if scenario == "append" and sorted(len(v) for v in order.values()) != [writes] * processes:
                result.problems.append(f"{tid}: some unconditional writes are missing")
    if scenario == "append" and result.conflicts:
        result.problems.append(f"{result.conflicts} conflicts without expected_head")
    if scenario == "threads" and result.conflicts:
        result.problems.append(f"{result.conflicts} conflicts on distinct threads")
    return result


def run_suite(
    make_url: Callable[[str], str],
    *,
    process_counts: tuple[int, ...] = (2, 4, 8),
    writes: int = 50,
    rounds: int = 1,
    scenarios: tuple[str, ...] = SCENARIOS,
    log: Callable[[str], None] | None = None,
) -> list[RunResult]:
    """Every scenario for every process count, ``rounds`` times; ``make_url(name)`` gives a fresh store."""
    results = []
    for r, scenario, n in itertools.product(range(rounds), scenarios, process_counts):
        res = run_once(make_url(f"{scenario}-{n}-{r}"), scenario, n, writes)
        results.append(res)
        if log:
            log(
                f"{scenario:8} {n} processes x {writes}: stored {res.stored}, conflicts {res.conflicts}, "
                f"forks {res.silent_forks}, errors {len(res.errors)} (locked {res.locked_errors}), "
                f"problems {len(res.problems)}, max latency {res.max_latency_ms} ms, {res.seconds} s"
            )
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        url, scenario, n, writes, start_at = argv[1:6]
        print(json.dumps(worker(url, scenario, int(n), int(writes), float(start_at))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--processes", default="2,3,4,6,8")
    parser.add_argument("--url", default=None, help="base URL; default: a new SQLite file per run")
    args = parser.parse_args(argv)
    counts = tuple(int(x) for x in args.processes.split(","))
    with tempfile.TemporaryDirectory(prefix="tl-conc-") as tmp:

        def make_url(name: str) -> str:
            if args.url is None:
                return f"sqlite:///{tmp}/{name}.db"
            sep = "&" if "?" in args.url else "?"
            return f"{args.url}{sep}schema=cc_{name.replace('-', '_')}_{os.getpid()}"

        results = run_suite(
            make_url, process_counts=counts, writes=args.writes, rounds=args.rounds, log=print
        )
    total = {
        "runs": len(results),
        "writes_attempted": sum(r.processes * r.writes for r in results),
        "stored": sum(r.stored for r in results),
        "conflicts": sum(r.conflicts for r in results),
        "silent_forks": sum(r.silent_forks for r in results),
        "errors": sum(len(r.errors) for r in results),
        "locked_errors": sum(r.locked_errors for r in results),
        "problems": sum(len(r.problems) for r in results),
        "max_latency_ms": max(r.max_latency_ms for r in results),
        "failed_runs": [
            {
                "scenario": r.scenario,
                "processes": r.processes,
                "errors": r.errors[:5],
                "problems": r.problems[:5],
            }
            for r in results
            if not r.ok
        ],
    }
    print(json.dumps(total, indent=2))
    return 0 if not total["failed_runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
