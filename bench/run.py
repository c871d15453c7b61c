"""threadline benchmark: throughput, p50/p99 latency and bytes stored, with ratios
against baselines measured in the same run.

Usage::

    .venv/bin/python bench/run.py [--quick] [--only W1,W2,W3,CONC] [--json out.json] [--profile]

Workloads
    W1   agent chat: T threads x S checkpoints written round-robin; each state holds a
         message list that grows by one ~700-byte message per step (same list object).
    W2   big state: 1 thread x N checkpoints of a ~1 MB constant document list plus a
         ~1 KB dict that changes every step.
    W3   depth: read latency (latest + get_state, list 10, history 10) at growing
         history depths of one thread whose state has a constant size.
    CONC 4 OS processes (spawn) writing distinct threads of one SQLite file.

Baselines ("ceiling"): a plain sqlite3 connection to a fresh WAL file with the same
``synchronous`` level, writing per checkpoint the same new bytes (BEGIN; 2 INSERTs;
COMMIT). Each W1 put of a SQLite store is paired with the ceiling's put of the same new
bytes, in alternating order, so that load changes on the (shared) machine hit both alike.
Everything runs in a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import math
import multiprocessing as mp
import os
import pstats
import random
import sqlite3
import string
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from threadline import Serializer, open_store

console = Console(width=140)

USER_ID = "user-7f3a9c"
MODEL_CONFIG = {"model": "gpt-4o-mini", "temperature": 0.2, "max_tokens": 1024}
MB = 1_000_000


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Config:
    threads: int  # W1 threads
    steps: int  # W1 checkpoints per thread
    reps: int  # W1 read repetitions
    history_threads: int  # W1 threads walked in full
    delete_threads: int  # W1 threads deleted
    w2_steps: int
    w2_docs: int  # ~2 KB each
    w3_depths: tuple[int, ...]
    w3_reps: int
    conc_procs: int
    conc_puts: int

    @property
    def w2_target_bytes(self) -> float:
        return 2.5 * MB * self.w2_docs / 500


FULL = Config(
    threads=50,
    steps=200,
    reps=500,
    history_threads=3,
    delete_threads=5,
    w2_steps=100,
    w2_docs=500,
    w3_depths=(10, 100, 1000, 3000),
    w3_reps=200,
    conc_procs=4,
    conc_puts=300,
)
QUICK = Config(
    threads=10,
    steps=40,
    reps=50,
    history_threads=1,
    delete_threads=2,
    w2_steps=10,
    w2_docs=50,
    w3_depths=(10, 100, 300),
    w3_reps=30,
    conc_procs=4,
    conc_puts=30,
)

WORKLOADS = ("W1", "W2", "W3", "CONC")


# ---------------------------------------------------------------- measurement helpers


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(latencies: Sequence[float]) -> dict[str, float]:
    """Latencies in seconds -> n, ops/s (n / time spent in the operation), p50/p99/max in ms."""
    total = sum(latencies)
    return {
        "n": len(latencies),
        "ops_per_s": len(latencies) / total if total else math.nan,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "max_ms": max(latencies) * 1e3 if latencies else math.nan,
    }


def measure(fn: Callable[[], Any], n: int, *, warmup: int = 0) -> dict[str, Any]:
    """Time ``fn`` ``n`` times (after ``warmup`` untimed calls); a failure is recorded
    (with its message) instead of aborting the run."""
    latencies: list[float] = []
    try:
        for _ in range(warmup):
            fn()
        for _ in range(n):
            latencies.append(timed(fn)[0])
    except Exception as exc:
        out: dict[str, Any] = summarize(latencies) if latencies else dict(NO_FIGURES)
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    return summarize(latencies)


NO_FIGURES = {"n": 0, "ops_per_s": math.nan, "p50_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def step_windows(steps: int) -> tuple[range, range]:
    """Early and late step windows: 5..15 and 190..199 for 200 steps."""
    lo = max(1, round(steps * 5 / 200))
    hi = max(lo + 1, round(steps * 16 / 200))
    return range(lo, hi), range(steps - max(1, round(steps * 10 / 200)), steps)


def file_bytes(path: Path) -> int:
    return sum(os.path.getsize(f"{path}{s}") for s in ("", "-wal") if os.path.exists(f"{path}{s}"))


# ---------------------------------------------------------------- data generation


class TextGen:
    """Seeded random-ish text: random words from a random vocabulary (compresses ~1.7x, not 100x)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        vocab_rng = random.Random(12345)
        self.vocab = [
            "".join(vocab_rng.choices(string.ascii_lowercase, k=vocab_rng.randint(2, 10)))
            for _ in range(5000)
        ]

    def text(self, chars: int) -> str:
        words: list[str] = []
        size = 0
        while size < chars:
            word = self.rng.choice(self.vocab)
            words.append(word)
            size += len(word) + 1
        return " ".join(words)

    def message(self, thread: int, step: int) -> dict[str, Any]:
        """One chat message of ~700 serialized bytes."""
        return {
            "role": "user" if step % 2 == 0 else "assistant",
            "content": self.text(655),
            "id": f"msg-{thread:03d}-{step:05d}",
        }


def chat_state(messages: list[dict[str, Any]], step: int) -> dict[str, Any]:
    return {
        "messages": messages,
        "turn": step,
        "status": "running" if step % 7 else "waiting_for_tool",
        "user_id": USER_ID,
        "model_config": MODEL_CONFIG,
    }


# ---------------------------------------------------------------- raw sqlite3 ceiling


class RawCeiling:
    """A plain sqlite3 writer: WAL, the given synchronous level, one transaction per checkpoint."""

    def __init__(self, path: Path, synchronous: str, *, busy_timeout_s: float = 0.0, seed: int = 99) -> None:
        self.path = path
        self.conn = sqlite3.connect(str(path), isolation_level=None, timeout=busy_timeout_s)
        self.conn.execute("PRAGMA journal_mode = WAL").fetchone()
        self.conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        self.conn.execute("CREATE TABLE IF NOT EXISTS items (thread INTEGER, pos INTEGER, data BLOB)")
        self.conn.execute("CREATE TABLE IF NOT EXISTS checkpoints (id BLOB PRIMARY KEY, data BLOB)")
        self.rng = random.Random(seed)

    def put(self, thread: int, pos: int, new_bytes: bytes) -> float:
        row = self.rng.randbytes(100)
        cid = self.rng.randbytes(16)
        t0 = time.perf_counter()
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("INSERT INTO items (thread, pos, data) VALUES (?, ?, ?)", (thread, pos, new_bytes))
            c.execute("INSERT INTO checkpoints (id, data) VALUES (?, ?)", (cid, row))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return time.perf_counter() - t0

    def storage_bytes(self) -> int:
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return file_bytes(self.path)

    def close(self) -> None:
        self.conn.close()


# ---------------------------------------------------------------- W1


def w1_puts(
    put: Callable[[int, int, dict[str, Any], dict[str, Any]], float], cfg: Config
) -> tuple[list[list[float]], dict[int, dict[str, Any]]]:
    """Round-robin W1 writes through ``put(thread, step, message, state) -> seconds``.

    Returns per-step latencies and the final state of each thread.
    """
    gen = TextGen(1)
    messages: dict[int, list[dict[str, Any]]] = {t: [] for t in range(cfg.threads)}
    finals: dict[int, dict[str, Any]] = {}
    by_step: list[list[float]] = [[] for _ in range(cfg.steps)]
    for step in range(cfg.steps):
        for t in range(cfg.threads):
            msg = gen.message(t, step)
            messages[t].append(msg)
            state = chat_state(messages[t], step)
            by_step[step].append(put(t, step, msg, state))
            finals[t] = state
    return by_step, finals


def growth(by_step: list[list[float]]) -> dict[str, float]:
    early, late = step_windows(len(by_step))
    e = percentile([x for s in early for x in by_step[s]], 50) * 1e3
    la = percentile([x for s in late for x in by_step[s]], 50) * 1e3
    return {
        "early_steps": f"{early.start}..{early.stop - 1}",
        "late_steps": f"{late.start}..{late.stop - 1}",
        "p50_early_ms": e,
        "p50_late_ms": la,
        "ratio": la / e,
    }


def run_w1(url: str, cfg: Config, *, reads: bool, ceiling: RawCeiling | None = None) -> dict[str, Any]:
    """W1 on one store: puts (per-step latencies), bytes, then (optionally) reads and deletes.

    With ``ceiling``, every put is paired with the raw ceiling's put of the same new bytes
    (the new message), the two in alternating order, so that load changes on the machine
    hit both alike; the ceiling's figures are returned under ``"ceiling"``.
    """
    store = open_store(url)
    cps = store.checkpoints
    tids = [f"w1-{t:03d}" for t in range(cfg.threads)]
    for tid in tids:
        cps.create_thread(tid)
    ids: dict[str, list[str]] = {tid: [] for tid in tids}
    raw_by_step: list[list[float]] = [[] for _ in range(cfg.steps)]
    raw_ser = Serializer()

    def put(t: int, step: int, msg: dict[str, Any], state: dict[str, Any]) -> float:
        new = raw_ser.dumps(msg) if ceiling is not None else b""
        if ceiling is not None and step % 2:
            raw_by_step[step].append(ceiling.put(t, step, new))
        t0 = time.perf_counter()
        cp = cps.create(tids[t], state)
        dt = time.perf_counter() - t0
        if ceiling is not None and not step % 2:
            raw_by_step[step].append(ceiling.put(t, step, new))
        ids[tids[t]].append(cp.id)
        return dt

    by_step, finals = w1_puts(put, cfg)
    flat = [x for s in by_step for x in s]
    unique = sum(len(store.serializer.dumps(state)) for state in finals.values())
    disk = store.repository.storage_bytes()
    out: dict[str, Any] = {
        "put": summarize(flat),
        "put_wall_s": sum(flat),
        "growth": growth(by_step),
        "bytes_on_disk": disk,
        "unique_bytes": unique,
        "bytes_ratio": disk / unique,
    }
    if ceiling is not None:
        raw_flat = [x for s in raw_by_step for x in s]
        out["ceiling"] = {
            "put": summarize(raw_flat),
            "growth": growth(raw_by_step),
            "bytes_on_disk": ceiling.storage_bytes(),
        }
        ceiling.close()
    # Correctness spot check: the latest state of thread 0 is exactly the last state written.
    latest = cps.latest(tids[0])
    assert latest is not None and cps.get_state(latest.id) == finals[0], "W1: latest state differs"
    if reads:
        out["reads"] = w1_reads(store, tids, ids, cfg)
    store.close()
    return out


def w1_reads(store: Any, tids: list[str], ids: dict[str, list[str]], cfg: Config) -> dict[str, Any]:
    cps = store.checkpoints
    rng = random.Random(7)
    res: dict[str, Any] = {}

    def get_latest() -> None:
        cp = cps.latest(rng.choice(tids))
        cps.get_state(cp.id)

    def get_by_id() -> None:
        tid = rng.choice(tids)
        cps.get_state(rng.choice(ids[tid]))

    def list10() -> None:
        cps.list(rng.choice(tids), limit=10)

    def list10_states() -> None:
        for cp in cps.list(rng.choice(tids), limit=10).items:
            cps.get_state(cp.id)

    def history_full(tid: str) -> None:
        page = cps.history(tid, limit=cfg.steps)
        assert len(page.items) == cfg.steps, f"history returned {len(page.items)} checkpoints"
        for cp in page.items:
            cps.get_state(cp.id)

    history_tids = iter(tids[: cfg.history_threads])
    delete_tids = iter(tids[-cfg.delete_threads :])
    res["get latest (latest+get_state)"] = measure(get_latest, cfg.reps, warmup=10)
    res["get by id (get_state, random step)"] = measure(get_by_id, cfg.reps, warmup=10)
    res["list 10 (metadata)"] = measure(list10, cfg.reps, warmup=10)
    res["list 10 + get_state each"] = measure(list10_states, max(5, cfg.reps // 5))
    res[f"history all {cfg.steps} + states"] = measure(
        lambda: history_full(next(history_tids)), cfg.history_threads
    )
    res["stats (whole store)"] = measure(cps.stats, 20)
    res["delete_thread"] = measure(lambda: cps.delete_thread(next(delete_tids)), cfg.delete_threads)
    return res


# ---------------------------------------------------------------- W2


def w2_data(cfg: Config) -> tuple[list[dict[str, Any]], Callable[[int], dict[str, Any]]]:
    gen = TextGen(2)
    docs = [
        {"doc_id": f"doc-{i:04d}", "title": gen.text(40), "body": gen.text(1950), "score": i / 7}
        for i in range(cfg.w2_docs)
    ]

    def scratch(step: int) -> dict[str, Any]:
        return {"step": step, "notes": gen.text(900), "tool": "search", "ok": step % 3 != 0}

    return docs, scratch


def run_w2(url: str, cfg: Config) -> dict[str, Any]:
    store = open_store(url)
    cps = store.checkpoints
    cps.create_thread("w2")
    docs, scratch = w2_data(cfg)
    lat: list[float] = []
    state: dict[str, Any] = {}
    for step in range(cfg.w2_steps):
        state = {"documents": docs, "scratch": scratch(step)}
        lat.append(timed(lambda s=state: cps.create("w2", s))[0])
    disk = store.repository.storage_bytes()
    latest = cps.latest("w2")
    get_lat = [timed(lambda: cps.get_state(latest.id))[0] for _ in range(20)]
    assert cps.get_state(latest.id) == state, "W2: latest state differs"
    one_state = len(store.serializer.dumps(state))
    store.close()
    return {
        "first_put_ms": lat[0] * 1e3,
        "put": summarize(lat[1:]),
        "get latest state": summarize(get_lat),
        "bytes_on_disk": disk,
        "one_state_bytes": one_state,
        "naive_bytes": one_state * cfg.w2_steps,
    }


def run_w2_ceiling(tmp: Path, cfg: Config) -> dict[str, Any]:
    ser = Serializer()
    raw = RawCeiling(tmp / "ceiling-w2.db", "full")
    docs, scratch = w2_data(cfg)
    lat = []
    for step in range(cfg.w2_steps):
        new = ser.dumps(scratch(step))
        if step == 0:
            new += ser.dumps(docs)
        lat.append(raw.put(0, step, new))
    out = {"first_put_ms": lat[0] * 1e3, "put": summarize(lat[1:]), "bytes_on_disk": raw.storage_bytes()}
    raw.close()
    return out


# ---------------------------------------------------------------- W3


def run_w3(url: str, cfg: Config) -> dict[str, Any]:
    """Constant-size state, so that only the history depth changes between measurements."""
    store = open_store(url)
    cps = store.checkpoints
    cps.create_thread("w3")
    gen = TextGen(3)
    messages = [gen.message(0, i) for i in range(10)]  # constant list: shared, never re-stored
    built = 0
    out: dict[str, Any] = {}
    for depth in cfg.w3_depths:
        while built < depth:
            cps.create(
                "w3",
                {
                    "messages": messages,
                    "turn": built,
                    "status": "running",
                    "scratch": {"step": built, "notes": gen.text(600)},
                    "model_config": MODEL_CONFIG,
                },
            )
            built += 1

        def latest_state() -> None:
            cp = cps.latest("w3")
            cps.get_state(cp.id)

        out[depth] = {
            "get latest (latest+get_state)": measure(latest_state, cfg.w3_reps, warmup=10),
            "list 10": measure(lambda: cps.list("w3", limit=10), cfg.w3_reps, warmup=10),
            "history 10": measure(lambda: cps.history("w3", limit=10), cfg.w3_reps, warmup=10),
        }
    store.close()
    return out


# ---------------------------------------------------------------- CONC


def conc_worker(mode: str, path: str, idx: int, puts: int, barrier: Any, queue: Any) -> None:
    """One writer process: ``puts`` W1-like checkpoints on its own thread."""
    result: dict[str, Any] = {"idx": idx, "lat": [], "errors": 0, "messages": []}
    try:
        gen = TextGen(100 + idx)
        ser = Serializer()
        if mode == "threadline":
            store = open_store(f"sqlite:///{path}")
            tid = f"conc-{idx}"
            store.checkpoints.create_thread(tid)
        else:
            raw = RawCeiling(Path(path), "full", busy_timeout_s=30.0, seed=1000 + idx)
        messages: list[dict[str, Any]] = []
        barrier.wait()
        result["start"] = time.monotonic()
        for step in range(puts):
            msg = gen.message(idx, step)
            messages.append(msg)
            state = chat_state(messages, step)
            t0 = time.perf_counter()
            try:
                if mode == "threadline":
                    store.checkpoints.create(tid, state)
                else:
                    raw.put(idx, step, ser.dumps(msg))
            except Exception as exc:
                result["errors"] += 1
                if len(result["messages"]) < 3:
                    result["messages"].append(f"{type(exc).__name__}: {exc}")
                continue
            result["lat"].append(time.perf_counter() - t0)
        result["end"] = time.monotonic()
        if mode == "threadline":
            store.close()
        else:
            raw.close()
    except Exception as exc:  # setup failure: report, never hang the parent
        result["errors"] += 1
        result["messages"].append(f"setup {type(exc).__name__}: {exc}")
        result.setdefault("start", time.monotonic())
        result.setdefault("end", time.monotonic())
    queue.put(result)


def run_conc(tmp: Path, mode: str, cfg: Config) -> dict[str, Any]:
    path = tmp / f"conc-{mode}.db"
    # The file and its schema are created once, before the writers start.
    if mode == "threadline":
        open_store(f"sqlite:///{path}").close()
    else:
        RawCeiling(path, "full").close()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(cfg.conc_procs)
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=conc_worker, args=(mode, str(path), i, cfg.conc_puts, barrier, queue))
        for i in range(cfg.conc_procs)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    lat = [x for r in results for x in r["lat"]]
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    out = summarize(lat)
    out.update(
        {
            "errors": sum(r["errors"] for r in results),
            "error_messages": [m for r in results for m in r["messages"]],
            "wall_s": wall,
            "aggregate_puts_per_s": len(lat) / wall if wall else math.nan,
        }
    )
    if mode == "threadline":
        try:
            with open_store(f"sqlite:///{path}") as store:
                out["checkpoints_stored"] = store.checkpoints.stats().checkpoints
        except Exception as exc:  # reported, not fatal: the table still shows what the writers saw
            out["checkpoints_stored"] = None
            out["error_messages"].append(f"verify (reopen) {type(exc).__name__}: {exc}")
    return out


# ---------------------------------------------------------------- profiling (--profile)


def profile_w1(tmp: Path, cfg: Config, top: int = 25) -> dict[str, str]:
    """cProfile of W1 puts and of get-latest on SQLite FULL; returns printable reports."""
    store = open_store(f"sqlite:///{tmp / 'profile.db'}")
    cps = store.checkpoints
    tids = [f"p-{t:03d}" for t in range(cfg.threads)]
    for tid in tids:
        cps.create_thread(tid)
    prof = cProfile.Profile()

    def put(t: int, step: int, msg: dict[str, Any], state: dict[str, Any]) -> float:
        prof.enable()
        cps.create(tids[t], state)
        prof.disable()
        return 0.0

    w1_puts(put, cfg)
    reports = {"W1 put (SQLite FULL)": _pstats_text(prof, top)}
    prof = cProfile.Profile()
    rng = random.Random(7)
    prof.enable()
    for _ in range(cfg.reps):
        cp = cps.latest(rng.choice(tids))
        cps.get_state(cp.id)
    prof.disable()
    reports["W1 get latest (SQLite FULL)"] = _pstats_text(prof, top)
    store.close()
    return reports


def _pstats_text(prof: cProfile.Profile, top: int) -> str:
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.strip_dirs().sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


# ---------------------------------------------------------------- printing


def fmt(value: float, digits: int = 3) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def latency_table(title: str, rows: list[tuple[str, str, dict[str, float], str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("operation", "backend", "n"):
        table.add_column(col)
    for col in ("ops/s", "p50 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="right")
    table.add_column("note")
    for op, backend, s, note in rows:
        if "error" in s:
            note = f"[red]ERROR {s['error']}[/]" + (f"; {note}" if note else "")
        table.add_row(
            op,
            backend,
            fmt(s["n"]),
            fmt(s["ops_per_s"], 0),
            fmt(s["p50_ms"]),
            fmt(s["p99_ms"]),
            fmt(s["max_ms"]),
            note,
        )
    return table


def simple_table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def mb(n: float) -> str:
    return f"{n / MB:,.2f} MB"


# ---------------------------------------------------------------- main


BACKENDS = {
    "memory": lambda tmp, name: "memory://",
    "sqlite full": lambda tmp, name: f"sqlite:///{tmp / name}.db",
    "sqlite normal": lambda tmp, name: f"sqlite:///{tmp / name}-normal.db?synchronous=normal",
}


def bench_w1(tmp: Path, cfg: Config, targets: list[tuple[str, str, bool]]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    console.print(f"[bold]W1 agent chat[/]: {cfg.threads} threads x {cfg.steps} checkpoints, round-robin")
    res["memory"] = run_w1(BACKENDS["memory"](tmp, "w1"), cfg, reads=True)
    for level in ("full", "normal"):
        raw = RawCeiling(tmp / f"ceiling-w1-{level}.db", level)
        res[f"sqlite {level}"] = run_w1(
            BACKENDS[f"sqlite {level}"](tmp, "w1"), cfg, reads=level == "full", ceiling=raw
        )
        res[f"ceiling {level}"] = res[f"sqlite {level}"].pop("ceiling")

    vs = {
        "sqlite full": res["sqlite full"]["put"]["ops_per_s"] / res["ceiling full"]["put"]["ops_per_s"],
        "sqlite normal": res["sqlite normal"]["put"]["ops_per_s"] / res["ceiling normal"]["put"]["ops_per_s"],
    }
    res["put_vs_ceiling"] = vs
    rows = [("put", b, res[b]["put"], f"{vs[b]:.2f}x ceiling" if b in vs else "") for b in BACKENDS]
    rows += [
        ("raw sqlite3 ceiling put", "sqlite full", res["ceiling full"]["put"], "BEGIN; 2 INSERTs; COMMIT"),
        (
            "raw sqlite3 ceiling put",
            "sqlite normal",
            res["ceiling normal"]["put"],
            "BEGIN; 2 INSERTs; COMMIT",
        ),
    ]
    for op in res["memory"]["reads"]:
        for b in ("memory", "sqlite full"):
            rows.append((op, b, res[b]["reads"][op], ""))
    console.print(latency_table("W1 latency / throughput (ops/s = n / time inside the call)", rows))

    g_rows = []
    for b in (*BACKENDS, "ceiling full", "ceiling normal"):
        g = res[b]["growth"]
        g_rows.append(
            [
                b,
                g["early_steps"],
                fmt(g["p50_early_ms"]),
                g["late_steps"],
                fmt(g["p50_late_ms"]),
                f"{g['ratio']:.2f}",
            ]
        )
    console.print(
        simple_table(
            "W1 put p50 as the message list grows",
            ["backend", "early steps", "p50 ms", "late steps", "p50 ms", "late/early"],
            g_rows,
        )
    )
    b_rows = [
        [
            b,
            mb(res[b]["bytes_on_disk"]),
            mb(res[b]["unique_bytes"]),
            f"{res[b]['bytes_ratio']:.2f}",
        ]
        for b in BACKENDS
    ]
    b_rows += [[f"raw {b}", mb(res[b]["bytes_on_disk"]), "", ""] for b in ("ceiling full", "ceiling normal")]
    console.print(
        simple_table(
            "W1 bytes (SQLite: file + WAL after checkpoint(TRUNCATE); memory: backend estimate)",
            ["store", "bytes stored", "unique bytes (50 final states)", "stored/unique"],
            b_rows,
        )
    )
    full = res["sqlite full"]
    targets += [
        (
            "W1 SQLite FULL bytes_on_disk / unique_bytes <= 1.5",
            f"{full['bytes_ratio']:.2f}",
            full["bytes_ratio"] <= 1.5,
        ),
        (
            "W1 SQLite FULL put throughput / raw ceiling >= 0.7",
            f"{vs['sqlite full']:.2f}",
            vs["sqlite full"] >= 0.7,
        ),
        (
            "W1 SQLite FULL put p50 late/early (step 200 / step 10) <= 1.3",
            f"{full['growth']['ratio']:.2f}",
            full["growth"]["ratio"] <= 1.3,
        ),
    ]
    return res


def bench_w2(tmp: Path, cfg: Config, targets: list[tuple[str, str, bool]]) -> dict[str, Any]:
    console.print(
        f"[bold]W2 big state[/]: 1 thread x {cfg.w2_steps} checkpoints, {cfg.w2_docs} docs of ~2 KB"
    )
    res = {b: run_w2(BACKENDS[b](tmp, "w2"), cfg) for b in ("memory", "sqlite full")}
    res["ceiling full"] = run_w2_ceiling(tmp, cfg)
    ratio = res["sqlite full"]["put"]["ops_per_s"] / res["ceiling full"]["put"]["ops_per_s"]
    res["put_vs_ceiling"] = ratio
    rows = [
        (
            "put (steps 2..)",
            "memory",
            res["memory"]["put"],
            f"first put {res['memory']['first_put_ms']:.1f} ms",
        ),
        (
            "put (steps 2..)",
            "sqlite full",
            res["sqlite full"]["put"],
            f"first put {res['sqlite full']['first_put_ms']:.1f} ms; {ratio:.2f}x ceiling",
        ),
        (
            "raw sqlite3 ceiling put",
            "sqlite full",
            res["ceiling full"]["put"],
            f"first put {res['ceiling full']['first_put_ms']:.1f} ms",
        ),
        ("get_state (latest)", "memory", res["memory"]["get latest state"], ""),
        ("get_state (latest)", "sqlite full", res["sqlite full"]["get latest state"], ""),
    ]
    console.print(latency_table("W2 latency / throughput", rows))
    b_rows = [
        [b, mb(res[b]["bytes_on_disk"]), mb(res[b]["one_state_bytes"]), mb(res[b]["naive_bytes"])]
        for b in ("memory", "sqlite full")
    ]
    b_rows.append(["raw ceiling", mb(res["ceiling full"]["bytes_on_disk"]), "", ""])
    console.print(
        simple_table(
            "W2 bytes", ["store", "bytes stored", "one state (msgpack)", "naive: every state in full"], b_rows
        )
    )
    disk = res["sqlite full"]["bytes_on_disk"]
    targets.append(
        (f"W2 SQLite bytes on disk <= {mb(cfg.w2_target_bytes)}", mb(disk), disk <= cfg.w2_target_bytes)
    )
    return res


def bench_w3(tmp: Path, cfg: Config, targets: list[tuple[str, str, bool]]) -> dict[str, Any]:
    console.print(f"[bold]W3 depth[/]: one thread, constant-size state, depths {cfg.w3_depths}")
    res = {b: run_w3(BACKENDS[b](tmp, "w3"), cfg) for b in ("memory", "sqlite full")}
    ops = list(res["memory"][cfg.w3_depths[0]])
    first, last = cfg.w3_depths[0], cfg.w3_depths[-1]
    rows = []
    for b in ("memory", "sqlite full"):
        for op in ops:
            p50s = [res[b][d][op]["p50_ms"] for d in cfg.w3_depths]
            rows.append([f"{op} ({b})", *(fmt(x) for x in p50s), f"{p50s[-1] / p50s[0]:.2f}"])
    console.print(
        simple_table(
            f"W3 p50 ms by history depth ({cfg.w3_reps} repetitions each)",
            ["operation", *(f"depth {d}" for d in cfg.w3_depths), f"{last}/{first}"],
            rows,
        )
    )
    for op in ("get latest (latest+get_state)", "list 10"):
        r = res["sqlite full"][last][op]["p50_ms"] / res["sqlite full"][first][op]["p50_ms"]
        targets.append((f"W3 SQLite {op}: p50 depth {last} / depth {first} <= 1.2", f"{r:.2f}", r <= 1.2))
    return {b: {str(d): v for d, v in r.items()} for b, r in res.items()}


def bench_conc(tmp: Path, cfg: Config, targets: list[tuple[str, str, bool]]) -> dict[str, Any]:
    console.print(
        f"[bold]CONC[/]: {cfg.conc_procs} processes x {cfg.conc_puts} puts, "
        "distinct threads, one SQLite file (FULL)"
    )
    res = {"threadline": run_conc(tmp, "threadline", cfg), "ceiling": run_conc(tmp, "raw", cfg)}
    rows = []
    for name, r in res.items():
        rows.append(
            [
                name if name == "threadline" else "raw sqlite3 ceiling (busy_timeout)",
                fmt(r["errors"]),
                fmt(r["aggregate_puts_per_s"], 0),
                fmt(r["p50_ms"]),
                fmt(r["p99_ms"]),
                fmt(r["max_ms"]),
                f"{r['wall_s']:.2f}",
            ]
        )
    console.print(
        simple_table(
            "CONC",
            ["writer", "errors", "aggregate puts/s", "p50 ms", "p99 ms", "max ms", "wall s"],
            rows,
        )
    )
    tl = res["threadline"]
    for name, r in res.items():
        counts = Counter(r["error_messages"])
        for message, n in counts.items():
            console.print(f"[red]CONC {name} error (x{n}):[/] ", end="")
            console.print(message, markup=False, highlight=False)
    expected = cfg.conc_procs * cfg.conc_puts
    res["aggregate_vs_ceiling"] = tl["aggregate_puts_per_s"] / res["ceiling"]["aggregate_puts_per_s"]
    console.print(
        f"threadline aggregate / raw ceiling aggregate: {res['aggregate_vs_ceiling']:.2f}x; "
        f"checkpoints stored: {tl.get('checkpoints_stored')} of {expected}"
    )
    targets += [
        (
            "CONC errors == 0 (and every put stored)",
            f"{tl['errors']}",
            tl["errors"] == 0 and tl.get("checkpoints_stored") == expected,
        ),
        ("CONC max put latency <= 100 ms", f"{tl['max_ms']:.1f} ms", tl["max_ms"] <= 100),
    ]
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shrink everything ~10x (smoke run)")
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated: W1,W2,W3,CONC")
    parser.add_argument("--json", type=Path, help="write all figures to this JSON file")
    parser.add_argument("--profile", action="store_true", help="also print cProfile of W1 put / get latest")
    args = parser.parse_args(argv)
    only = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    unknown = set(only) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s) {sorted(unknown)}; choose from {','.join(WORKLOADS)}")
    cfg = QUICK if args.quick else FULL
    console.print(
        f"threadline bench ({'quick' if args.quick else 'full'}), Python {sys.version.split()[0]}, "
        f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs"
    )
    targets: list[tuple[str, str, bool]] = []
    results: dict[str, Any] = {"config": cfg.__dict__, "quick": args.quick}
    t_start = time.perf_counter()
    benches = {"W1": bench_w1, "W2": bench_w2, "W3": bench_w3, "CONC": bench_conc}
    with tempfile.TemporaryDirectory(prefix="threadline-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for name in WORKLOADS:
            if name in only:
                gc.collect()  # start each workload from a clean heap: earlier garbage skews latencies
                gc.freeze()
                t0 = time.perf_counter()
                try:
                    results[name] = benches[name](tmp, cfg, targets)
                except Exception as exc:  # one broken workload must not hide the others
                    console.print_exception(max_frames=8)
                    results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                    targets.append((f"{name} ran to completion", f"{type(exc).__name__}", False))
                console.print(f"[dim]{name} took {time.perf_counter() - t0:.1f} s[/]\n")
        if args.profile:
            reports = profile_w1(tmp, cfg)
            results["profile"] = reports
            for title, text in reports.items():
                console.rule(f"cProfile: {title}")
                console.print(text, markup=False, highlight=False)
    results["elapsed_s"] = time.perf_counter() - t_start

    table = Table(title="targets", title_justify="left")
    table.add_column("target")
    table.add_column("measured", justify="right")
    table.add_column("result")
    for text, measured, ok in targets:
        table.add_row(text, measured, "[green]PASS[/]" if ok else "[red]FAIL[/]")
    console.print(table)
    results["targets"] = [{"target": t, "measured": m, "pass": ok} for t, m, ok in targets]
    console.print(
        f"{sum(ok for *_, ok in targets)}/{len(targets)} targets pass; total {results['elapsed_s']:.1f} s"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
