"""Statistics: figures, largest threads and a per-day chart of checkpoints written."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import date
from typing import Annotated, Any

import typer
from rich.markup import escape

from threadline.cli import render, resolve
from threadline.cli.common import JsonOption, app, emit_json, open_cli_store, out
from threadline.cli.documents import stats_doc
from threadline.model import us_to_datetime
from threadline.store import Store

_LARGEST = 5
_CHART_DAYS = 30


def _per_day(store: Store, thread_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Checkpoints written and bytes stored per day (UTC), from stored rows (states are not read)."""
    counts: Counter[date] = Counter()
    stored: Counter[date] = Counter()
    for tid in thread_ids:
        cursor: str | None = None
        while True:
            rows = store.checkpoints.scan(tid, limit=1000, cursor=cursor)
            for row in rows:
                day = us_to_datetime(row.created_at).date()
                counts[day] += 1
                stored[day] += row.stored_size
            if len(rows) < 1000:
                break
            cursor = rows[-1].id
    return [{"day": d, "checkpoints": counts[d], "stored_bytes": stored[d]} for d in sorted(counts)]


@app.command()
def stats(
    thread: Annotated[
        list[str] | None, typer.Option("--thread", "-t", help="Only these threads (repeatable).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Statistics of the store (or of some threads): counts, bytes, largest threads, activity per day."""
    with open_cli_store() as store:
        ids = (
            [resolve.thread(store, t).id for t in thread]
            if thread
            else [t.id for t in resolve.all_threads(store)]
        )
        figures = stats_doc(store.checkpoints.stats(ids if thread else None))
        per_thread = [(tid, store.checkpoints.stats([tid])) for tid in ids] if len(ids) > 1 else []
        largest = sorted(per_thread, key=lambda p: p[1].stored_bytes, reverse=True)[:_LARGEST]
        document = {
            "scope": {"threads": list(thread) if thread else None},
            **figures,
            "largest_threads": [
                {"thread": tid, "checkpoints": s.checkpoints, "stored_bytes": s.stored_bytes}
                for tid, s in largest
            ],
            "per_day": _per_day(store, ids),
        }
        if as_json:
            emit_json(document)
            return
        scope = f"threads {', '.join(thread)}" if thread else store.url
        rows = [
            ("threads", str(figures["threads"])),
            ("checkpoints", str(figures["checkpoints"])),
            *((f"  {kind}", str(n)) for kind, n in figures["by_kind"].items() if n),
            *((f"  {status}", str(n)) for status, n in figures["by_status"].items() if n),
            ("logical bytes (sum of states)", f"{figures['logical_bytes']:,}"),
            ("stored bytes (after sharing)", f"{figures['stored_bytes']:,}"),
            ("sharing ratio", f"{figures['sharing_ratio']:.1f}x"),
            ("branches", str(figures["branches"])),
            ("milestones", str(figures["milestones"])),
            ("restores", str(figures["restores"])),
            ("oldest", figures["oldest"].strftime("%Y-%m-%d %H:%M:%S") if figures["oldest"] else "-"),
            ("newest", figures["newest"].strftime("%Y-%m-%d %H:%M:%S") if figures["newest"] else "-"),
        ]
        out.print(render.figures(f"statistics of {scope}", rows))
        if largest:
            table = render.make_table("largest threads")
            table.add_column("thread")
            table.add_column("checkpoints", justify="right")
            table.add_column("stored", justify="right")
            for tid, s in largest:
                table.add_row(escape(tid), str(s.checkpoints), render.human_bytes(s.stored_bytes))
            out.print(table)
        days = document["per_day"][-_CHART_DAYS:]
        if days:
            out.print("checkpoints per day (UTC)")
            for line in render.bar_chart([(d["day"], d["checkpoints"]) for d in days]):
                out.print(line)
