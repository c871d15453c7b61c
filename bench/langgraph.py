"""W1, W2, W3 through LangGraph's saver API: ThreadlineSaver against LangGraph's own savers.

Usage::

    .venv/bin/python bench/langgraph.py [--full] [--json out.json]

Every saver receives the same realistic checkpoints: langchain-core messages in a growing
``messages`` channel, ``channel_versions`` from the saver's own ``get_next_version``,
``versions_seen``, ``new_versions`` naming the changed channels, and loop metadata.
Savers: ThreadlineSaver (SQLite FULL and NORMAL, memory, PostgreSQL), InMemorySaver,
SqliteSaver (WAL, FULL and NORMAL), AsyncSqliteSaver, PostgresSaver and AsyncPostgresSaver
over a pool of 8 (when a server answers at $THREADLINE_BENCH_POSTGRES_URL, default
postgresql:///postgres), and a raw sqlite3 ceiling (WAL, FULL) committing each W1 step's new
bytes (the new message and a 100-byte row) in one transaction. Synchronous levels are stated
in every row name.

The savers run side by side: each put, read or delete is timed on every saver in turn, in
a rotating order (the concurrent workloads alternate whole rounds), so that load changes on
the machine hit all of them alike. The ratios the LangGraph issue targets are printed at
the end.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# This file is named like the package it measures: take its folder off the import path
# (Python puts it first) and load the shared helpers of bench/run.py by file.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
_spec = importlib.util.spec_from_file_location("bench_run", _HERE / "run.py")
assert _spec is not None and _spec.loader is not None
_run = sys.modules["bench_run"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_run)
MODEL_CONFIG, USER_ID, TextGen, console = _run.MODEL_CONFIG, _run.USER_ID, _run.TextGen, _run.console
file_bytes, mb, percentile = _run.file_bytes, _run.mb, _run.percentile

from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402
from langgraph.checkpoint.base import BaseCheckpointSaver  # noqa: E402
from langgraph.checkpoint.base.id import uuid6  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from rich.table import Table  # noqa: E402

from threadline import Serializer  # noqa: E402
from threadline.langgraph import ThreadlineSaver, register_langgraph_types  # noqa: E402


class Scale:
    def __init__(self, full: bool) -> None:
        self.threads, self.steps = (50, 200) if full else (10, 60)
        self.reps = 300 if full else 60
        self.delete_threads = 5 if full else 3
        self.w2_steps, self.w2_docs = (100, 500) if full else (20, 100)
        self.w3_depths = (10, 100, 1000) if full else (10, 100, 300)
        self.writers = 8
        self.async_puts = 100 if full else 30
        self.rounds = 3 if full else 2


# ---------------------------------------------------------------- checkpoints


class ThreadWriter:
    """Builds one LangGraph thread's successive checkpoints for a given saver."""

    def __init__(self, saver: BaseCheckpointSaver[Any], thread_id: str) -> None:
        self.saver = saver
        self.thread_id = thread_id
        self.parent: str | None = None
        self.versions: dict[str, Any] = {}
        self.seen: dict[str, dict[str, Any]] = {"__input__": {}}
        self.step = -1
        self.run_id = str(uuid.uuid4())

    def next(self, values: dict[str, Any], changed: list[str]) -> tuple[dict[str, Any], Any, Any, Any]:
        self.step += 1
        new_versions = {}
        for channel in changed:
            self.versions[channel] = self.saver.get_next_version(self.versions.get(channel), None)
            new_versions[channel] = self.versions[channel]
        self.seen["agent"] = {c: self.versions[c] for c in changed if c in self.versions}
        checkpoint = {
            "v": 4,
            "id": str(uuid6(clock_seq=self.step)),
            "ts": datetime.now(UTC).isoformat(),
            "channel_values": values,
            "channel_versions": dict(self.versions),
            "versions_seen": {k: dict(v) for k, v in self.seen.items()},
            "updated_channels": changed,
        }
        config: dict[str, Any] = {"configurable": {"thread_id": self.thread_id, "checkpoint_ns": ""}}
        if self.parent:
            config["configurable"]["checkpoint_id"] = self.parent
        metadata = {"source": "loop", "step": self.step, "parents": {}, "run_id": self.run_id}
        return config, checkpoint, metadata, new_versions

    def done(self, stored: dict[str, Any]) -> None:
        self.parent = stored["configurable"]["checkpoint_id"]


def chat_values(gen: TextGen, messages: list[Any], t: int, step: int) -> dict[str, Any]:
    content = gen.text(640)
    cls = HumanMessage if step % 2 == 0 else AIMessage
    messages.append(cls(content, id=f"msg-{t:03d}-{step:05d}"))
    return {
        "messages": list(messages),
        "turn": step,
        "status": "running" if step % 7 else "waiting_for_tool",
        "user_id": USER_ID,
        "model_config": MODEL_CONFIG,
    }


# ---------------------------------------------------------------- savers


def saver_factories(tmp: Path, pg: str | None) -> dict[str, Callable[[str], tuple[Any, Callable[[], int]]]]:
    """name -> make(tag) -> (saver, stored_bytes())."""

    def tl(url: str, path: Path | None) -> tuple[Any, Callable[[], int]]:
        saver = ThreadlineSaver.from_url(url)
        return saver, saver.store.repository.storage_bytes

    def sqlite_saver(tag: str, sync: str) -> tuple[Any, Callable[[], int]]:
        from langgraph.checkpoint.sqlite import SqliteSaver

        path = tmp / f"lg-{tag}-{sync}.db"
        conn = sqlite3.connect(str(path), check_same_thread=False)
        saver = SqliteSaver(conn)
        saver.setup()
        conn.execute(f"PRAGMA synchronous = {sync}")

        def size() -> int:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            return file_bytes(path)

        return saver, size

    makers: dict[str, Callable[[str], tuple[Any, Callable[[], int]]]] = {
        "ThreadlineSaver sqlite FULL": lambda tag: tl(f"sqlite:///{tmp}/tl-{tag}.db", None),
        "ThreadlineSaver sqlite NORMAL": lambda tag: tl(
            f"sqlite:///{tmp}/tln-{tag}.db?synchronous=normal", None
        ),
        "SqliteSaver FULL": lambda tag: sqlite_saver(tag, "FULL"),
        "SqliteSaver NORMAL": lambda tag: sqlite_saver(tag, "NORMAL"),
        "ThreadlineSaver memory": lambda tag: tl("memory://", None),
        "InMemorySaver": lambda tag: (InMemorySaver(), lambda: 0),
    }
    if pg is not None:
        from langgraph.checkpoint.postgres import PostgresSaver

        def pg_saver(tag: str) -> tuple[Any, Callable[[], int]]:
            url = fresh_pg_database(pg, f"lg_{tag}")
            cm = PostgresSaver.from_conn_string(url)
            _OPEN.append(cm)  # the context manager owns the connection
            saver = cm.__enter__()
            saver.setup()
            return saver, lambda: pg_size(url)

        def tl_pg(tag: str) -> tuple[Any, Callable[[], int]]:
            url = fresh_pg_database(pg, f"tl_{tag}")
            saver = ThreadlineSaver.from_url(url)
            return saver, lambda: pg_size(url)

        makers["ThreadlineSaver postgres"] = tl_pg
        makers["PostgresSaver"] = pg_saver
    return makers


_PG_DATABASES: list[str] = []
_OPEN: list[Any] = []


def fresh_pg_database(admin: str, tag: str) -> str:
    from urllib.parse import urlsplit

    import psycopg

    name = f"bench_{tag}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    _PG_DATABASES.append(name)
    p = urlsplit(admin)
    return f"{p.scheme}://{p.netloc}/{name}" + (f"?{p.query}" if p.query else "")


def pg_size(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM")
        row = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND c.relkind = 'r'"
        ).fetchone()
        return int(row[0]) if row else 0


def drop_pg_databases(admin: str) -> None:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        for name in _PG_DATABASES:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_admin() -> str | None:
    url = os.environ.get("THREADLINE_BENCH_POSTGRES_URL", "postgresql:///postgres")
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=2).close()
        return url
    except Exception:
        return None


# ---------------------------------------------------------------- workloads
#
# Savers are measured side by side: every operation is timed on each saver in turn (in
# a rotating order), so that load changes on the machine hit all of them alike and the
# ratios of one run can be trusted.

RAW = "raw sqlite3 FULL (ceiling)"
Opened = dict[str, tuple[Any, Callable[[], int]]]


def rotate(names: list[str], k: int) -> list[str]:
    k %= len(names)
    return names[k:] + names[:k]


def open_all(makers: dict[str, Callable[[str], tuple[Any, Callable[[], int]]]], tag: str) -> Opened:
    return {name: make(tag) for name, make in makers.items()}


def timed_put(saver: Any, writer: ThreadWriter, values: dict[str, Any], changed: list[str]) -> float:
    args = writer.next(dict(values), changed)
    t0 = time.perf_counter()
    stored = saver.put(*args)
    elapsed = time.perf_counter() - t0
    writer.done(stored)
    return elapsed


def p50_side_by_side(savers: Opened, reps: int, op: Callable[[Any, int], Any]) -> dict[str, float]:
    """p50 latency (ms) of ``op(saver, rep)`` for each saver, the savers taking turns."""
    names = list(savers)
    lat: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in rotate(names, rep):
            t0 = time.perf_counter()
            op(savers[name][0], rep)
            lat[name].append(time.perf_counter() - t0)
    return {name: percentile(v, 50) * 1e3 for name, v in lat.items()}


def w1(
    makers: dict[str, Callable[[str], tuple[Any, Callable[[], int]]]], sc: Scale, tmp: Path
) -> dict[str, dict[str, Any]]:
    savers = open_all(makers, "w1")
    ceiling = _run.RawCeiling(tmp / "ceiling-w1.db", "FULL")
    encoder = register_langgraph_types(Serializer())
    names = [*savers, RAW]
    gen = TextGen(1)
    writers = {
        name: [ThreadWriter(saver, f"w1-{t:03d}") for t in range(sc.threads)]
        for name, (saver, _) in savers.items()
    }
    messages: list[list[Any]] = [[] for _ in range(sc.threads)]
    put_time = dict.fromkeys(names, 0.0)
    for step in range(sc.steps):
        for t in range(sc.threads):
            values = chat_values(gen, messages[t], t, step)
            changed = ["messages", "turn"] + (["status"] if step % 7 in (0, 1) else [])
            if step == 0:
                changed = list(values)
            for name in rotate(names, step * sc.threads + t):
                if name == RAW:  # the same new bytes: the new message, and a 100-byte row
                    put_time[name] += ceiling.put(t, step, encoder.dumps(messages[t][-1]))
                else:
                    put_time[name] += timed_put(savers[name][0], writers[name][t], values, changed)
    puts = sc.threads * sc.steps
    out: dict[str, dict[str, Any]] = {name: {"put/s": puts / put_time[name]} for name in names}
    out[RAW]["bytes"] = ceiling.storage_bytes()
    ceiling.close()
    configs = [
        {"configurable": {"thread_id": w.thread_id, "checkpoint_ns": ""}}
        for w in next(iter(writers.values()))
    ]
    for name, (saver, size) in savers.items():
        out[name]["bytes"] = size()
        last = saver.get_tuple(configs[0])
        assert last is not None and last.checkpoint["channel_values"]["messages"] == messages[0], (
            f"W1: {name}: state differs"
        )
    for key, value in p50_side_by_side(
        savers, sc.reps, lambda saver, rep: saver.get_tuple(configs[rep % len(configs)])
    ).items():
        out[key]["get_tuple p50 ms"] = value
    for key, value in p50_side_by_side(
        savers,
        max(10, sc.reps // 3),
        lambda saver, rep: list(saver.list(configs[rep % len(configs)], limit=10)),
    ).items():
        out[key]["list10 p50 ms"] = value
    doomed = [w.thread_id for w in next(iter(writers.values()))[-sc.delete_threads :]]
    for key, value in p50_side_by_side(
        savers, len(doomed), lambda saver, rep: saver.delete_thread(doomed[rep])
    ).items():
        out[key]["delete_thread p50 ms"] = value
    for saver, _ in savers.values():
        close(saver)
    return out


def w2(
    makers: dict[str, Callable[[str], tuple[Any, Callable[[], int]]]], sc: Scale, tmp: Path
) -> dict[str, dict[str, Any]]:
    savers = open_all(makers, "w2")
    gen = TextGen(2)
    docs = [{"doc_id": f"d{i}", "body": gen.text(1950)} for i in range(sc.w2_docs)]
    writers = {name: ThreadWriter(saver, "w2") for name, (saver, _) in savers.items()}
    put_time = dict.fromkeys(savers, 0.0)
    for step in range(sc.w2_steps):
        values = {"documents": docs, "scratch": {"step": step, "notes": gen.text(900)}}
        changed = ["scratch"] if step else ["documents", "scratch"]
        for name in rotate(list(savers), step):
            put_time[name] += timed_put(savers[name][0], writers[name], values, changed)
    out = {
        name: {"put/s": sc.w2_steps / put_time[name], "bytes": size()} for name, (_, size) in savers.items()
    }
    for saver, _ in savers.values():
        close(saver)
    return out


def w3(
    makers: dict[str, Callable[[str], tuple[Any, Callable[[], int]]]], sc: Scale, tmp: Path
) -> dict[str, dict[str, Any]]:
    savers = open_all(makers, "w3")
    gen = TextGen(3)
    msgs = [HumanMessage(gen.text(640), id=f"m{i}") for i in range(10)]
    writers = {name: ThreadWriter(saver, "w3") for name, (saver, _) in savers.items()}
    config = {"configurable": {"thread_id": "w3", "checkpoint_ns": ""}}
    out: dict[str, dict[str, Any]] = {name: {} for name in savers}
    built = 0
    for depth in sc.w3_depths:
        while built < depth:
            values = {"messages": msgs, "turn": built, "scratch": {"notes": gen.text(600)}}
            changed = ["turn", "scratch"] if built else list(values)
            for name in savers:
                timed_put(savers[name][0], writers[name], values, changed)
            built += 1
        for key, value in p50_side_by_side(savers, sc.reps, lambda saver, _: saver.get_tuple(config)).items():
            out[key][f"get_tuple p50 ms @{depth}"] = value
        for key, value in p50_side_by_side(
            savers, max(10, sc.reps // 3), lambda saver, _: list(saver.list(config, limit=10))
        ).items():
            out[key][f"list10 p50 ms @{depth}"] = value
    for saver, _ in savers.values():
        close(saver)
    return out


async def async_writers(saver: Any, sc: Scale, tag: str) -> tuple[int, float]:
    """8 concurrent tasks, each putting W1 checkpoints on its own thread: (puts, seconds).
    The messages are made before the clock starts (as in W1): the time is the savers'."""
    gen = TextGen(9)
    steps: list[list[dict[str, Any]]] = []
    for k in range(sc.writers):
        messages: list[Any] = []
        steps.append([chat_values(gen, messages, k, step) for step in range(sc.async_puts)])

    async def writer(k: int) -> None:
        w = ThreadWriter(saver, f"async-{tag}-{k}")
        for step, values in enumerate(steps[k]):
            w.done(await saver.aput(*w.next(values, list(values) if step == 0 else ["messages", "turn"])))

    t0 = time.perf_counter()
    await asyncio.gather(*(writer(k) for k in range(sc.writers)))
    return sc.writers * sc.async_puts, time.perf_counter() - t0


async def side_by_side_rounds(savers: dict[str, Any], sc: Scale) -> dict[str, float]:
    """puts/s of each saver under the 8-writer load, the savers taking turns round by round."""
    done = dict.fromkeys(savers, 0)
    spent = dict.fromkeys(savers, 0.0)
    for r in range(sc.rounds):
        for name in rotate(list(savers), r):
            puts, seconds = await async_writers(savers[name], sc, f"r{r}")
            done[name] += puts
            spent[name] += seconds
    return {name: done[name] / spent[name] for name in savers}


async def conc(tmp: Path, sc: Scale) -> dict[str, float]:
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async with (
        AsyncSqliteSaver.from_conn_string(str(tmp / "async-lg.db")) as lg,
        ThreadlineSaver.from_url(f"sqlite:///{tmp}/async-tl.db") as tl,
    ):
        await lg.setup()
        return await side_by_side_rounds({"AsyncSqliteSaver FULL": lg, "ThreadlineSaver sqlite FULL": tl}, sc)


async def conc_postgres(admin: str, sc: Scale) -> dict[str, float]:
    """One async saver over a pool of 8 connections, 8 concurrent tasks."""
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    lg_url, tl_url = fresh_pg_database(admin, "alg"), fresh_pg_database(admin, "atl")
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        lg_url,
        min_size=sc.writers,
        max_size=sc.writers,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        open=False,
    )
    await pool.open()
    try:
        lg = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await lg.setup()
        sep = "&" if "?" in tl_url else "?"
        async with ThreadlineSaver.from_url(
            f"{tl_url}{sep}pool_min={sc.writers}&pool_max={sc.writers}"
        ) as tl:
            return await side_by_side_rounds(
                {"AsyncPostgresSaver (pool of 8)": lg, "ThreadlineSaver postgres (pool of 8)": tl}, sc
            )
    finally:
        await pool.close()


def close(saver: Any) -> None:
    if isinstance(saver, ThreadlineSaver):
        saver.close()
    elif hasattr(saver, "conn") and hasattr(saver.conn, "close"):
        saver.conn.close()


# ---------------------------------------------------------------- report


def table(title: str, rows: dict[str, dict[str, Any]]) -> Table:
    columns = sorted(
        {k for r in rows.values() for k in r},
        key=lambda k: list(next(iter(rows.values()))).index(k) if k in next(iter(rows.values())) else 99,
    )
    t = Table(title=title)
    t.add_column("saver")
    for c in columns:
        t.add_column(c, justify="right")
    for name, r in rows.items():
        t.add_row(name, *[fmt(c, r.get(c)) for c in columns])
    return t


def fmt(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column == "bytes":
        return mb(value)
    return f"{value:,.3f}" if value < 100 else f"{value:,.0f}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:,.1f}x" if a and b else "n/a"


def targets(res: dict[str, Any]) -> list[tuple[str, str, str]]:
    w1r = res["W1"]
    tl, sq = w1r["ThreadlineSaver sqlite FULL"], w1r["SqliteSaver FULL"]
    tln = w1r["ThreadlineSaver sqlite NORMAL"]
    rows = [
        ("stored bytes vs SqliteSaver (W1)", ">= 60x smaller", ratio(sq["bytes"], tl["bytes"])),
        ("put vs SqliteSaver, both FULL (W1)", ">= 2x", ratio(tl["put/s"], sq["put/s"])),
        ("put NORMAL vs SqliteSaver FULL (W1)", ">= 5x", ratio(tln["put/s"], sq["put/s"])),
        ("put vs raw sqlite3 ceiling, both FULL (W1)", ">= 0.7x", ratio(tl["put/s"], w1r[RAW]["put/s"])),
        (
            "8 async writers vs AsyncSqliteSaver (FULL)",
            ">= 4x",
            ratio(res["CONC"]["ThreadlineSaver sqlite FULL"], res["CONC"]["AsyncSqliteSaver FULL"]),
        ),
        (
            "get_tuple latest p50 vs SqliteSaver (W1)",
            "no slower (>= 1x)",
            ratio(sq["get_tuple p50 ms"], tl["get_tuple p50 ms"]),
        ),
        (
            "list(limit=10) vs SqliteSaver (W1)",
            ">= 5x faster",
            ratio(sq["list10 p50 ms"], tl["list10 p50 ms"]),
        ),
        (
            "delete_thread vs SqliteSaver (W1)",
            ">= 10x faster",
            ratio(sq["delete_thread p50 ms"], tl["delete_thread p50 ms"]),
        ),
    ]
    if "PostgresSaver" in w1r:
        pg, tlpg = w1r["PostgresSaver"], w1r["ThreadlineSaver postgres"]
        rows.append(
            ("stored bytes vs PostgresSaver (W1)", ">= 60x smaller", ratio(pg["bytes"], tlpg["bytes"]))
        )
        rows.append(("put vs PostgresSaver (W1)", ">= 3x", ratio(tlpg["put/s"], pg["put/s"])))
    if "CONC_PG" in res:
        cp = res["CONC_PG"]
        rows.append(
            (
                "8 tasks, pool of 8 vs AsyncPostgresSaver",
                ">= 3x",
                ratio(cp["ThreadlineSaver postgres (pool of 8)"], cp["AsyncPostgresSaver (pool of 8)"]),
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="the issue's scale (W1: 50 threads x 200 steps)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    sc = Scale(args.full)
    pg = postgres_admin()
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tl-lg-bench-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            makers = saver_factories(tmp, pg)
            for name, fn in (("W1", w1), ("W2", w2), ("W3", w3)):
                console.print(f"[bold]{name}[/] ({sc.threads} threads x {sc.steps} steps for W1)")
                res[name] = fn(makers, sc, tmp)
                console.print(table(name, res[name]))
            res["CONC"] = asyncio.run(conc(tmp, sc))
            console.print(table("8 async writers, puts/s", {k: {"put/s": v} for k, v in res["CONC"].items()}))
            if pg is not None:
                res["CONC_PG"] = asyncio.run(conc_postgres(pg, sc))
                console.print(
                    table(
                        "8 async tasks over a pool of 8, puts/s",
                        {k: {"put/s": v} for k, v in res["CONC_PG"].items()},
                    )
                )
        finally:
            if pg is not None:
                drop_pg_databases(pg)
    t = Table(title="Targets of the LangGraph issue (threadline / LangGraph)")
    for c in ("measure", "target", "measured"):
        t.add_column(c)
    rows = targets(res)
    for row in rows:
        t.add_row(*row)
    console.print(t)
    res["targets"] = rows
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
