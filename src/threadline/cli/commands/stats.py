"""Statistics: figures, largest threads and a per-day chart of checkpoints written.

Everything comes from aggregate queries of the session layer (``store.sessions.stats``)
or, for a list of threads, the same queries restricted to them; no state is read.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import typer
from rich.markup import escape

from threadline.cli import render, resolve
from threadline.cli.common import JsonOption, app, emit_json, open_cli_store, out, usage_error
from threadline.cli.documents import stats_doc
from threadline.store import Store

_LARGEST = 5
_CHART_DAYS = 30


def stats_document(
    store: Store, *, session: str | None = None, threads: list[str] | None = None
) -> dict[str, Any]:
    """The ``stats --json`` document of the store, one session or some threads."""
    if threads:
        ids = list(dict.fromkeys(resolve.thread(store, t).id for t in threads))
        totals = store.checkpoints.stats(ids)
        row = store.threads.stats_row(ids, largest=_LARGEST, per_day=True)
        largest = [(tid, n, logical, stored) for tid, n, logical, stored in row.largest]
        per_day = dict(sorted(row.per_day.items()))
    else:
        sid = resolve.session(store, session).id if session is not None else None
        found = store.sessions.stats(sid, largest=_LARGEST)
        totals = found.totals
        largest = [
            (t.thread_id, t.checkpoints, t.logical_bytes, t.stored_bytes) for t in found.largest_threads
        ]
        per_day = found.created_per_day
    return {
        "scope": {"threads": list(threads) if threads else None, "session": session},
        **stats_doc(totals),
        "largest_threads": [
            {"thread": tid, "checkpoints": n, "logical_bytes": logical, "stored_bytes": stored}
            for tid, n, logical, stored in largest[:_LARGEST]
        ],
        "per_day": [{"day": day, "checkpoints": n} for day, n in per_day.items()],
    }


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def print_stats(document: dict[str, Any], title: str) -> None:
    """Tables and the per-day bar chart of a ``stats_document``."""
    rows = [
        ("threads", str(document["threads"])),
        ("checkpoints", str(document["checkpoints"])),
        *((f"  {kind}", str(n)) for kind, n in document["by_kind"].items() if n),
        *((f"  {status}", str(n)) for status, n in document["by_status"].items() if n),
        ("logical bytes (sum of states)", f"{document['logical_bytes']:,}"),
        ("stored bytes (after sharing)", f"{document['stored_bytes']:,}"),
        ("sharing ratio", f"{document['sharing_ratio']:.1f}x"),
        ("branches", str(document["branches"])),
        ("milestones", str(document["milestones"])),
        ("restores", str(document["restores"])),
        ("oldest", _when(document["oldest"])),
        ("newest", _when(document["newest"])),
    ]
    out.print(render.figures(title, rows))
    if document["threads"] > 1 and document["largest_threads"]:
        table = render.make_table("largest threads")
        table.add_column("thread")
        table.add_column("checkpoints", justify="right")
        table.add_column("stored", justify="right")
        for t in document["largest_threads"]:
            table.add_row(escape(t["thread"]), str(t["checkpoints"]), render.human_bytes(t["stored_bytes"]))
        out.print(table)
    days = document["per_day"][-_CHART_DAYS:]
    if days:
        out.print("checkpoints per day (UTC)")
        for line in render.bar_chart([(date.fromisoformat(d["day"]), d["checkpoints"]) for d in days]):
            out.print(line)


@app.command()
def stats(
    thread: Annotated[
        list[str] | None, typer.Option("--thread", "-t", help="Only these threads (repeatable).")
    ] = None,
    session: Annotated[
        str | None, typer.Option("--session", "-s", help="Only the threads of this session.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Statistics of the store, a session or some threads: counts, bytes, largest threads, activity per day."""
    if thread and session is not None:
        usage_error("give --session or --thread, not both")
    with open_cli_store() as store:
        document = stats_document(store, session=session, threads=thread)
        if as_json:
            emit_json(document)
            return
        if thread:
            scope = f"threads {', '.join(thread)}"
        elif session is not None:
            scope = f"session {session}"
        else:
            scope = store.url
        print_stats(document, f"statistics of {scope}")
