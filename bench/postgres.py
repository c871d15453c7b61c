"""threadline PostgreSQL benchmark: W1, W3 and CONC on PostgreSQL, with ratios against a raw
psycopg ceiling measured in the same run.

Usage::

    .venv/bin/python bench/postgres.py [--quick] [--url postgresql://...] [--only W1,W3,CONC] [--json out.json]

The server URL defaults to THREADLINE_TEST_POSTGRES_URL (else postgresql://postgres@127.0.0.1:5432/test).
Every store lives in a fresh schema ``bench_<random>``, dropped at the end.

Ceiling: a plain psycopg connection (autocommit, one ``with conn.transaction()`` per
checkpoint) inserting the same new bytes as threadline stores per W1 step: the new message
into an items table and a 100-byte row into a checkpoints table (BEGIN; 2 INSERTs; COMMIT).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (
    FULL,
    MODEL_CONFIG,
    QUICK,
    Config,
    TextGen,
    chat_state,
    console,
    fmt,
    growth,
    latency_table,
    mb,
    simple_table,
    summarize,
    w1_puts,
    w1_reads,
)
from threadline import Serializer, open_store
from threadline.storage.postgres import parse_url

DEFAULT_URL = os.environ.get("THREADLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


class Schemas:
    """Fresh schemas for the run, all dropped at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.names: list[str] = []

    def new(self, label: str) -> str:
        self.names.append(f"bench_{label}_{uuid.uuid4().hex[:8]}")
        return self.names[-1]

    def drop_all(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            for name in self.names:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


# ---------------------------------------------------------------- raw psycopg ceiling


class RawPsycopg:
    """One autocommit connection; per checkpoint one transaction: BEGIN; 2 INSERTs; COMMIT."""

    def __init__(self, url: str, schema: str, *, pipeline: bool = False, seed: int = 99) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.schema = schema
        self.pipeline = pipeline
        self.conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        self.conn.execute(f'CREATE TABLE IF NOT EXISTS "{schema}".items (thread int, pos int, data bytea)')
        self.conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".checkpoints (id bytea PRIMARY KEY, data bytea)'
        )
        self.rng = random.Random(seed)
        self.q_items = f'INSERT INTO "{schema}".items (thread, pos, data) VALUES (%s, %s, %s)'
        self.q_cps = f'INSERT INTO "{schema}".checkpoints (id, data) VALUES (%s, %s)'

    def put(self, thread: int, pos: int, new_bytes: bytes) -> float:
        row = self.rng.randbytes(100)
        cid = self.rng.randbytes(16)
        c = self.conn
        t0 = time.perf_counter()
        if self.pipeline:
            with c.pipeline():
                c.execute("BEGIN")
                c.execute(self.q_items, (thread, pos, new_bytes))
                c.execute(self.q_cps, (cid, row))
                c.execute("COMMIT")
        else:
            with c.transaction():
                c.execute(self.q_items, (thread, pos, new_bytes))
                c.execute(self.q_cps, (cid, row))
        return time.perf_counter() - t0

    def storage_bytes(self) -> int:
        row = self.conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(k.oid)), 0) FROM pg_class k "
            "JOIN pg_namespace n ON n.oid = k.relnamespace WHERE n.nspname = %s AND k.relkind = 'r'",
            (self.schema,),
        ).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.conn.close()


def table_sizes(url: str, schema: str) -> dict[str, dict[str, int]]:
    """Per table of a schema: heap (main fork, with free space and visibility maps), TOAST
    (table and index) and indexes, in bytes; together they are pg_total_relation_size."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT k.relname, pg_table_size(k.oid) - coalesce(pg_total_relation_size(k.reltoastrelid), 0), "
            "coalesce(pg_total_relation_size(k.reltoastrelid), 0), pg_indexes_size(k.oid) FROM pg_class k "
            "JOIN pg_namespace n ON n.oid = k.relnamespace WHERE n.nspname = %s AND k.relkind = 'r' "
            "ORDER BY pg_total_relation_size(k.oid) DESC, k.relname",
            (schema,),
        ).fetchall()
    return {name: {"heap": heap, "toast": toast, "indexes": idx} for name, heap, toast, idx in rows}


def run_w1_interleaved(server: str, schema: str, raws: dict[str, RawPsycopg], cfg: Config) -> dict[str, Any]:
    """W1 on a threadline store, each put followed (or preceded, alternately) by the same new bytes
    written by each raw ceiling: load changes on the machine hit all of them alike."""
    ser = Serializer()
    store = open_store(with_schema(server, schema))
    cps = store.checkpoints
    tids = [f"w1-{t:03d}" for t in range(cfg.threads)]
    for tid in tids:
        cps.create_thread(tid)
    ids: dict[str, list[str]] = {tid: [] for tid in tids}
    raw_lat: dict[str, list[float]] = {name: [] for name in raws}

    def put(t: int, step: int, msg: dict[str, Any], state: dict[str, Any]) -> float:
        def ours() -> float:
            t0 = time.perf_counter()
            ids[tids[t]].append(cps.create(tids[t], state).id)
            return time.perf_counter() - t0

        first = ours() if (t + step) % 2 else None
        for name, raw in raws.items():
            raw_lat[name].append(raw.put(t, step, ser.dumps(msg)))
        return first if first is not None else ours()

    by_step, finals = w1_puts(put, cfg)
    unique = sum(len(store.serializer.dumps(state)) for state in finals.values())
    disk = store.repository.storage_bytes()
    tables = table_sizes(server, schema)
    store.repository.reclaim_space()  # a plain VACUUM: what autovacuum would leave
    vacuumed = store.repository.storage_bytes()
    latest = cps.latest(tids[0])
    assert latest is not None and cps.get_state(latest.id) == finals[0], "W1: latest state differs"
    out: dict[str, Any] = {
        "put": summarize([x for s in by_step for x in s]),
        "growth": growth(by_step),
        "bytes_on_disk": disk,
        "unique_bytes": unique,
        "bytes_ratio": disk / unique,
        "tables": tables,
        "bytes_after_vacuum": vacuumed,
        "reads": w1_reads(store, tids, ids, cfg),
    }
    store.close()
    for name, raw in raws.items():
        out[name] = {"put": summarize(raw_lat[name]), "bytes": raw.storage_bytes()}
        raw.close()
    return out


# ---------------------------------------------------------------- workloads


def bench_w1(schemas: Schemas, cfg: Config, targets: list[tuple[str, str, bool]]) -> dict[str, Any]:
    console.print(
        f"[bold]W1 agent chat (PostgreSQL)[/]: {cfg.threads} threads x {cfg.steps} checkpoints, "
        "each put interleaved with the raw ceilings' puts of the same new bytes"
    )
    raws = {
        "ceiling": RawPsycopg(schemas.url, schemas.new("raw")),
        "ceiling pipelined": RawPsycopg(schemas.url, schemas.new("rawp"), pipeline=True),
    }
    schema = schemas.new("w1")
    pg = run_w1_interleaved(schemas.url, schema, raws, cfg)
    res: dict[str, Any] = {
        "postgres": pg,
        "ceiling": pg.pop("ceiling"),
        "ceiling pipelined": pg.pop("ceiling pipelined"),
    }
    vs = pg["put"]["ops_per_s"] / res["ceiling"]["put"]["ops_per_s"]
    vs_pipe = pg["put"]["ops_per_s"] / res["ceiling pipelined"]["put"]["ops_per_s"]
    res["put_vs_ceiling"], res["put_vs_pipelined_ceiling"] = vs, vs_pipe
    rows = [
        ("put", "threadline postgres", pg["put"], f"{vs:.2f}x ceiling, {vs_pipe:.2f}x pipelined ceiling"),
        ("raw psycopg ceiling put", "postgres", res["ceiling"]["put"], "BEGIN; 2 INSERTs; COMMIT"),
        ("raw psycopg ceiling put", "pipelined", res["ceiling pipelined"]["put"], "same, one round trip"),
        *((op, "threadline postgres", s, "") for op, s in pg["reads"].items()),
    ]
    console.print(
        latency_table("W1 PostgreSQL latency / throughput (ops/s = n / time inside the call)", rows)
    )
    g = pg["growth"]
    console.print(
        f"put p50 steps {g['early_steps']}: {fmt(g['p50_early_ms'])} ms, steps {g['late_steps']}: "
        f"{fmt(g['p50_late_ms'])} ms (late/early {g['ratio']:.2f})"
    )
    console.print(
        simple_table(
            "W1 bytes (pg_total_relation_size of the store's tables, TOAST and indexes included)",
            ["store", "bytes in tables", "unique bytes (final states)", "stored/unique"],
            [
                [
                    "threadline postgres",
                    mb(pg["bytes_on_disk"]),
                    mb(pg["unique_bytes"]),
                    f"{pg['bytes_ratio']:.2f}",
                ],
                ["raw ceiling (new bytes only)", mb(res["ceiling"]["bytes"]), "", ""],
            ],
        )
    )
    unique = pg["unique_bytes"]
    console.print(
        simple_table(
            "W1 PostgreSQL bytes per table, after the puts (x = share of the unique bytes)",
            ["table", "heap kB", "TOAST kB", "indexes kB", "total kB", "x"],
            [
                [
                    name,
                    *(f"{n / 1000:,.0f}" for n in (*sizes.values(), sum(sizes.values()))),
                    f"{sum(sizes.values()) / unique:.3f}",
                ]
                for name, sizes in pg["tables"].items()
                if sum(sizes.values())
            ],
        )
    )
    console.print(
        f"after a plain VACUUM (reclaim_space; it adds free space and visibility maps): "
        f"{mb(pg['bytes_after_vacuum'])}, {pg['bytes_after_vacuum'] / unique:.2f}x"
    )
    targets += [
        (
            "W1 PostgreSQL bytes in tables / unique bytes <= 1.5",
            f"{pg['bytes_ratio']:.2f}",
            pg["bytes_ratio"] <= 1.5,
        ),
        ("W1 PostgreSQL put throughput / raw psycopg ceiling >= 0.5", f"{vs:.2f}", vs >= 0.5),
    ]
    return res


def disable_autovacuum(url: str, schema: str) -> None:
    """So that no ANALYZE runs during W3: the reads are planned on tables without statistics."""
    with psycopg.connect(url, autocommit=True) as conn:
        for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)):
            conn.execute(f'ALTER TABLE "{schema}"."{table}" SET (autovacuum_enabled = false)')


def analyzed_tables(url: str, schema: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relname FROM pg_stat_user_tables WHERE schemaname = %s "
            "AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)",
            (schema,),
        ).fetchall()
    return [r[0] for r in rows]


W3_OPS = ("get latest (latest+get_state)", "list 10", "history 10")


def run_w3_interleaved(url: str, cfg: Config) -> dict[str, Any]:
    """One store, one thread per depth (constant-size state), reads alternating between the
    threads so that load changes on the machine hit every depth alike."""
    store = open_store(url)
    cps = store.checkpoints
    gen = TextGen(3)
    messages = [gen.message(0, i) for i in range(10)]
    for depth in cfg.w3_depths:
        tid = f"w3-{depth}"
        cps.create_thread(tid)
        for turn in range(depth):
            cps.create(
                tid,
                {
                    "messages": messages,
                    "turn": turn,
                    "status": "running",
                    "scratch": {"step": turn, "notes": gen.text(600)},
                    "model_config": MODEL_CONFIG,
                },
            )

    def latest_state(tid: str) -> None:
        cp = cps.latest(tid)
        assert cp is not None
        cps.get_state(cp.id)

    ops: dict[str, Any] = {
        W3_OPS[0]: latest_state,
        W3_OPS[1]: lambda tid: cps.list(tid, limit=10),
        W3_OPS[2]: lambda tid: cps.history(tid, limit=10),
    }
    lat: dict[int, dict[str, list[float]]] = {d: {op: [] for op in ops} for d in cfg.w3_depths}
    for rep in range(cfg.w3_reps + 10):
        for depth in cfg.w3_depths if rep % 2 else reversed(cfg.w3_depths):
            for op, fn in ops.items():
                t0 = time.perf_counter()
                fn(f"w3-{depth}")
                if rep >= 10:  # warm-up
                    lat[depth][op].append(time.perf_counter() - t0)
    store.close()
    return {d: {op: summarize(v) for op, v in by_op.items()} for d, by_op in lat.items()}


def bench_w3(schemas: Schemas, cfg: Config, targets: list[tuple[str, str, bool]]) -> dict[str, Any]:
    console.print(
        f"[bold]W3 depth (PostgreSQL)[/]: one thread per depth {cfg.w3_depths}, constant-size state, "
        "reads interleaved across depths"
    )
    schema = schemas.new("w3")
    url = with_schema(schemas.url, schema)
    open_store(url).close()
    disable_autovacuum(schemas.url, schema)
    res = run_w3_interleaved(url, cfg)
    analyzed = analyzed_tables(schemas.url, schema)
    first, last = cfg.w3_depths[0], cfg.w3_depths[-1]
    rows = []
    for op in W3_OPS:
        p50s = [res[d][op]["p50_ms"] for d in cfg.w3_depths]
        rows.append([op, *(fmt(x) for x in p50s), f"{p50s[-1] / p50s[0]:.2f}"])
    console.print(
        simple_table(
            f"W3 PostgreSQL p50 ms by history depth (tables never analyzed: {not analyzed})",
            ["operation", *(f"depth {d}" for d in cfg.w3_depths), f"{last}/{first}"],
            rows,
        )
    )
    op = W3_OPS[0]
    ratio = res[last][op]["p50_ms"] / res[first][op]["p50_ms"]
    targets.append(
        (
            f"W3 PostgreSQL get latest p50 depth {last} / depth {first} <= 1.2 (no ANALYZE)",
            f"{ratio:.2f}",
            ratio <= 1.2 and not analyzed,
        )
    )
    return {"by_depth": {str(d): v for d, v in res.items()}, "analyzed_tables": analyzed}


def backend_cpu(pids: list[int]) -> float | None:
    """CPU seconds used so far by server backends, from /proc (None when the server is not local)."""
    try:
        total = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def machine_busy() -> tuple[float, float] | None:
    """(busy, idle) CPU seconds of the whole machine so far, from /proc/stat (None elsewhere)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]  # idle, iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks[:8]) - idle) / hz, idle / hz


def conc_worker(url: str, idx: int, puts: int, barrier: Any, queue: Any) -> None:
    """One writer process: ``puts`` W1-like checkpoints on its own thread. Also measures its own
    CPU time and its server backends' (the pool has one connection)."""
    result: dict[str, Any] = {"idx": idx, "lat": [], "errors": [], "start": 0.0, "end": 0.0}
    try:
        gen = TextGen(100 + idx)
        app = f"bench-conc-{uuid.uuid4().hex[:8]}"
        with open_store(f"{url}&application_name={app}&pool_min=1&pool_max=1") as store:
            tid = f"conc-{idx}-{uuid.uuid4().hex[:6]}"
            store.checkpoints.create_thread(tid)
            store.checkpoints.create(tid, {"warm": True})
            messages: list[dict[str, Any]] = []
            with psycopg.connect(parse_url(url)[0], autocommit=True) as admin:
                pids = [
                    r[0]
                    for r in admin.execute(
                        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
                    )
                ]
            barrier.wait()
            result["start"] = time.monotonic()
            cpu0, server0 = time.process_time(), backend_cpu(pids)
            for step in range(puts):
                messages.append(gen.message(idx, step))
                state = chat_state(messages, step)
                t0 = time.perf_counter()
                store.checkpoints.create(tid, state)
                result["lat"].append(time.perf_counter() - t0)
            result["end"] = time.monotonic()
            result["client_cpu"] = time.process_time() - cpu0
            server1 = backend_cpu(pids)
            result["server_cpu"] = server1 - server0 if server0 is not None and server1 is not None else None
    except Exception as exc:  # reported, never hangs the parent
        result["errors"].append(f"{type(exc).__name__}: {exc}")
        result["start"] = result["start"] or time.monotonic()
        result["end"] = time.monotonic()
    queue.put(result)


def run_conc(url: str, procs: int, puts: int) -> dict[str, Any]:
    open_store(url).close()  # schema created once, before the writers start
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    queue = ctx.Queue()
    workers = [ctx.Process(target=conc_worker, args=(url, i, puts, barrier, queue)) for i in range(procs)]
    machine0 = machine_busy()
    for p in workers:
        p.start()
    results = [queue.get(timeout=600) for _ in workers]
    machine1 = machine_busy()
    for p in workers:
        p.join(timeout=60)
    lat = [x for r in results for x in r["lat"]]
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    out = summarize(lat)
    servers = [r.get("server_cpu") for r in results]
    out.update(
        {
            "errors": [e for r in results for e in r["errors"]],
            "wall_s": wall,
            "aggregate_puts_per_s": len(lat) / wall if wall else math.nan,
            "client_cpu_s": sum(r.get("client_cpu", 0.0) for r in results),
            "server_cpu_s": sum(servers) if None not in servers else None,  # type: ignore[arg-type]
            # the whole machine during the run (with process start-up): what others took is visible
            "machine_busy_s": machine1[0] - machine0[0] if machine0 and machine1 else None,
            "machine_s": sum(machine1) - sum(machine0) if machine0 and machine1 else None,
        }
    )
    return out


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one CONC configuration: aggregate = all puts / all wall time."""
    out = dict(runs[-1])
    out["errors"] = [e for r in runs for e in r["errors"]]
    out["wall_s"] = sum(r["wall_s"] for r in runs)
    out["aggregate_puts_per_s"] = sum(r["aggregate_puts_per_s"] * r["wall_s"] for r in runs) / out["wall_s"]
    out["puts"] = sum(r["aggregate_puts_per_s"] * r["wall_s"] for r in runs)
    out["client_cpu_s"] = sum(r["client_cpu_s"] for r in runs)
    servers = [r["server_cpu_s"] for r in runs]
    out["server_cpu_s"] = sum(servers) if None not in servers else None
    machine = [(r["machine_busy_s"], r["machine_s"]) for r in runs]
    out["machine_busy_share"] = (
        sum(b for b, _ in machine) / sum(t for _, t in machine)
        if all(b is not None for b, _ in machine)
        else None
    )
    return out


def bench_conc(schemas: Schemas, cfg: Config, targets: list[tuple[str, str, bool]]) -> dict[str, Any]:
    procs, puts = cfg.conc_procs, cfg.conc_puts
    console.print(f"[bold]CONC (PostgreSQL)[/]: 1 vs {procs} processes x {puts} puts, distinct threads")
    runs: dict[str, list[dict[str, Any]]] = {"1 process": [], f"{procs} processes": []}
    for _ in range(2):  # alternated, so that load changes on the machine hit both alike
        runs["1 process"].append(run_conc(with_schema(schemas.url, schemas.new("conc1")), 1, puts))
        runs[f"{procs} processes"].append(
            run_conc(with_schema(schemas.url, schemas.new("concn")), procs, puts)
        )
    res = {name: merge_runs(rs) for name, rs in runs.items()}
    console.print(
        simple_table(
            "CONC PostgreSQL",
            ["writers", "errors", "aggregate puts/s", "p50 ms", "p99 ms", "max ms", "wall s"],
            [
                [
                    name,
                    str(len(r["errors"])),
                    fmt(r["aggregate_puts_per_s"], 0),
                    fmt(r["p50_ms"]),
                    fmt(r["p99_ms"]),
                    fmt(r["max_ms"]),
                    f"{r['wall_s']:.2f}",
                ]
                for name, r in res.items()
            ],
        )
    )
    for r in res.values():
        for e in r["errors"][:3]:
            console.print(f"[red]CONC error:[/] {e}", markup=False)
    ratio = res[f"{procs} processes"]["aggregate_puts_per_s"] / res["1 process"]["aggregate_puts_per_s"]
    ok = not any(r["errors"] for r in res.values())
    console.print(f"{procs} processes / 1 process aggregate puts/s: {ratio:.2f}x ({os.cpu_count()} CPUs)")
    one = res["1 process"]
    if one["server_cpu_s"] is not None:
        # What bounds the scaling: a put costs this much CPU, client and server together; N CPUs
        # do at most N / that puts per second, whatever the number of writers.
        cpu_per_put = (one["client_cpu_s"] + one["server_cpu_s"]) / one["puts"]
        busy = (one["client_cpu_s"] + one["server_cpu_s"]) / one["wall_s"]
        bound = (os.cpu_count() or 1) / cpu_per_put
        res["cpu"] = {
            "client_ms_per_put": one["client_cpu_s"] / one["puts"] * 1e3,
            "server_ms_per_put": one["server_cpu_s"] / one["puts"] * 1e3,
            "one_writer_busy_cpus": busy,
            "bound_puts_per_s": bound,
            "bound_ratio": bound / one["aggregate_puts_per_s"],
        }
        many = res[f"{procs} processes"]
        if many["server_cpu_s"] is not None:
            res["cpu"][f"{procs}_writers_busy_cpus"] = (many["client_cpu_s"] + many["server_cpu_s"]) / many[
                "wall_s"
            ]
            res["cpu"][f"{procs}_writers_ms_per_put"] = (
                (many["client_cpu_s"] + many["server_cpu_s"]) / many["puts"] * 1e3
            )
        console.print(
            f"one writer: {res['cpu']['client_ms_per_put']:.3f} ms of its own CPU and "
            f"{res['cpu']['server_ms_per_put']:.3f} ms of its server backend's per put, {busy:.2f} CPUs busy; "
            f"{os.cpu_count()} CPUs allow at most {bound:,.0f} puts/s = {bound / one['aggregate_puts_per_s']:.2f}x "
            "one writer (if nothing else ran)"
        )
        if f"{procs}_writers_busy_cpus" in res["cpu"]:
            console.print(
                f"{procs} writers: {res['cpu'][f'{procs}_writers_ms_per_put']:.3f} ms of CPU per put (theirs and "
                f"their backends'), {res['cpu'][f'{procs}_writers_busy_cpus']:.2f} CPUs busy"
            )
    for name, r in res.items():
        if isinstance(r, dict) and r.get("machine_busy_share") is not None:
            console.print(
                f"{name}: the machine's CPUs were {r['machine_busy_share']:.0%} busy during the runs "
                "(these writers, their backends and everything else)"
            )
    targets.append(
        (f"CONC PostgreSQL {procs} processes aggregate >= 2x one process", f"{ratio:.2f}", ok and ratio >= 2)
    )
    return {**res, "ratio": ratio}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shrink everything ~10x (smoke run)")
    parser.add_argument("--url", default=DEFAULT_URL, help="PostgreSQL server URL (a database to work in)")
    parser.add_argument("--only", default="W1,W3,CONC", help="comma-separated: W1,W3,CONC")
    parser.add_argument("--json", type=Path, help="write all figures to this JSON file")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    with psycopg.connect(args.url) as conn:
        version = conn.info.server_version
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('synchronous_commit', 'fsync', 'shared_buffers')"
            ).fetchall()
        )
    console.print(
        f"threadline PostgreSQL bench ({'quick' if args.quick else 'full'}), server {version}, {settings}, "
        f"psycopg {psycopg.__version__}, {os.cpu_count()} CPUs"
    )
    only = {w.strip().upper() for w in args.only.split(",") if w.strip()}
    benches = {"W1": bench_w1, "W3": bench_w3, "CONC": bench_conc}
    targets: list[tuple[str, str, bool]] = []
    results: dict[str, Any] = {"config": cfg.__dict__, "quick": args.quick}
    schemas = Schemas(args.url)
    try:
        for name, bench in benches.items():
            if name in only:
                t0 = time.perf_counter()
                results[name] = bench(schemas, cfg, targets)
                console.print(f"[dim]{name} took {time.perf_counter() - t0:.1f} s[/]\n")
    finally:
        schemas.drop_all()
    console.print(
        simple_table(
            "targets",
            ["target", "measured", "result"],
            [[t, m, "[green]PASS[/]" if ok else "[red]FAIL[/]"] for t, m, ok in targets],
        )
    )
    results["targets"] = [{"target": t, "measured": m, "pass": ok} for t, m, ok in targets]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
