"""Looking inside a store: threads, log (with the branch graph), show, diff, branches."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable
from typing import Annotated

import typer
from rich.markup import escape

from threadline.cli import render, resolve
from threadline.cli.common import JsonOption, app, emit_json, open_cli_store, out, plain, usage_error
from threadline.cli.documents import branch_doc, checkpoint_doc, thread_doc
from threadline.model import Checkpoint, Thread
from threadline.storage.base import CheckpointRow
from threadline.store import Store

ThreadOption = Annotated[
    str | None,
    typer.Option(
        "--thread", "-t", help="The checkpoint's thread (needed only for ids copied into several threads)."
    ),
]


@app.command()
def threads(
    session: Annotated[
        str | None, typer.Option("--session", "-s", help="Only threads of this session.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List threads with their size and latest activity."""
    with open_cli_store() as store:
        docs = [thread_doc(t, store.checkpoints.stats([t.id])) for t in resolve.all_threads(store, session)]
        if as_json:
            emit_json({"threads": docs})
            return
        if not docs:
            out.print("no threads" + (f" in session {session!r}" if session else ""))
            return
        table = render.make_table(f"threads of {store.url}")
        for column in ("thread", "session", "checkpoints", "branches", "stored", "latest"):
            numeric = column in ("checkpoints", "branches", "stored")
            table.add_column(column, justify="right" if numeric else "left", no_wrap=column != "thread")
        for d in docs:
            newest = d["newest"].strftime("%Y-%m-%d %H:%M") if d["newest"] else "-"
            table.add_row(
                escape(d["id"]),
                escape(d["session_id"] or "-"),
                str(d["checkpoints"]),
                str(d["branches"]),
                render.human_bytes(d["stored_bytes"]),
                newest,
            )
        out.print(table)


def time_ordered(rows: Iterable[CheckpointRow]) -> list[CheckpointRow]:
    """Newest first by creation time, every child before its parents.

    Ids cannot order a thread whose checkpoints were not all made by threadline (LangGraph
    and imported checkpoints keep their own time-ordered ids, which sort apart from
    threadline's), so the order comes from creation times and parent links.
    """
    ranked = sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)
    rank = {r.id: i for i, r in enumerate(ranked)}
    waiting = Counter(p for r in ranked for p in set(_parents(r)) if p in rank)
    ready = [rank[r.id] for r in ranked if not waiting[r.id]]
    heapq.heapify(ready)
    ordered: list[CheckpointRow] = []
    while ready:
        row = ranked[heapq.heappop(ready)]
        ordered.append(row)
        for parent in set(_parents(row)):
            if parent in rank:
                waiting[parent] -= 1
                if not waiting[parent]:
                    heapq.heappush(ready, rank[parent])
    return ordered


def _parents(row: CheckpointRow) -> tuple[str, ...]:
    return tuple(p for p in (row.parent_id, row.merge_parent_id) if p)


def _graph_selection(store: Store, thread_id: str, head: str | None, limit: int) -> list[Checkpoint]:
    """Newest first, the checkpoints reachable from ``head`` through both parents (all when None)."""
    wanted = {head} if head else None
    chosen: list[str] = []
    for row in time_ordered(store.threads.checkpoint_rows(thread_id)):
        if wanted is not None:
            if row.id not in wanted:
                continue
            wanted.update(_parents(row))
        chosen.append(row.id)
        if len(chosen) >= limit:
            break
    return [store.threads.get(cid, thread_id=thread_id) for cid in chosen]


@app.command()
def log(
    thread_id: Annotated[str, typer.Argument(metavar="THREAD")],
    branch: Annotated[
        str | None, typer.Option("--branch", "-b", help="This branch (default: the thread's default branch).")
    ] = None,
    all_branches: Annotated[bool, typer.Option("--all", "-a", help="Every branch of the thread.")] = False,
    graph: Annotated[
        bool, typer.Option("--graph", "-g", help="Draw branches and merges as a text graph.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many checkpoints.")] = 30,
    as_json: JsonOption = False,
) -> None:
    """History of a thread, newest first (first parents of one branch, or --all)."""
    if all_branches and branch:
        usage_error("give --branch or --all, not both")
    with open_cli_store() as store:
        thread = resolve.thread(store, thread_id)
        name = resolve.branch(store, thread.id, branch).name if branch else thread.default_branch
        if as_json:
            cps = _log_selection(store, thread, name, all_branches, graph, limit)
            emit_json(
                {
                    "thread": thread.id,
                    "branch": None if all_branches else name,
                    "checkpoints": [checkpoint_doc(c) for c in cps],
                }
            )
            return
        print_log(store, thread, name, all_branches=all_branches, graph=graph, limit=limit)


def _log_selection(
    store: Store, thread: Thread, name: str, all_branches: bool, graph: bool, limit: int
) -> list[Checkpoint]:
    if all_branches:
        return _graph_selection(store, thread.id, None, limit)
    if graph:
        head = next((b.head for b in store.threads.branches(thread.id) if b.name == name), None)
        return _graph_selection(store, thread.id, head, limit)
    return store.threads.history(thread.id, name, limit=limit).items


def print_log(
    store: Store,
    thread: Thread,
    name: str,
    *,
    all_branches: bool = False,
    graph: bool = False,
    limit: int = 30,
) -> None:
    """A thread's history, newest first (as ``log`` prints it)."""
    cps = _log_selection(store, thread, name, all_branches, graph, limit)
    if not cps:
        out.print(f"no checkpoints on branch {name!r} of thread {thread.id!r}")
        return
    heads: dict[str, list[str]] = {}
    for b in store.threads.branches(thread.id):
        if b.head:
            heads.setdefault(b.head, []).append(b.name)
    short = resolve.abbreviations(store, (c.id for c in cps))
    if not graph:
        for cp in cps:
            out.print(render.describe(cp, short[cp.id], heads.get(cp.id, ())), soft_wrap=True)
        return
    for prefix, maybe_cp in render.graph(cps):
        text = render.describe(maybe_cp, short[maybe_cp.id], heads.get(maybe_cp.id, ())) if maybe_cp else ""
        out.print(f"{prefix} {text}".rstrip() if text else prefix, soft_wrap=True)


@app.command()
def show(
    checkpoint: Annotated[
        str, typer.Argument(metavar="CHECKPOINT", help="A checkpoint id or a unique prefix of it.")
    ],
    state: Annotated[bool, typer.Option("--state", help="Also print the checkpoint's state.")] = False,
    thread_id: ThreadOption = None,
    as_json: JsonOption = False,
) -> None:
    """A checkpoint's fields (and, with --state, its state)."""
    with open_cli_store() as store:
        cp = resolve.checkpoint(store, checkpoint, thread_id)
        values = store.threads.get_state(cp.id, thread_id=cp.thread_id) if state else None
        if as_json:
            emit_json({"checkpoint": checkpoint_doc(cp), "state": values})
            return
        doc = checkpoint_doc(cp)
        out.print(f"[yellow]checkpoint {cp.id}[/yellow]")
        for key in (
            "thread_id",
            "branch",
            "kind",
            "status",
            "created_at",
            "expires_at",
            "parent_id",
            "merge_parent_id",
        ):
            if doc[key] is not None:
                out.print(f"{key.replace('_', ' '):<16}{escape(str(plain(doc[key])))}", soft_wrap=True)
        for key in (
            "milestone",
            "sync_point",
            "restored_from",
            "title",
            "description",
            "error_type",
            "error_message",
        ):
            if doc[key]:
                out.print(f"{key.replace('_', ' '):<16}{escape(str(doc[key]))}", soft_wrap=True)
        for key in ("tags", "metadata", "origin"):
            if doc[key]:
                out.print(f"{key:<16}{escape(render.dumps(doc[key]))}", soft_wrap=True)
        if cp.milestone:
            out.print(f"{'protected':<16}{'yes' if cp.protected else 'no'}")
        out.print(f"{'restores':<16}{cp.restore_count}")
        out.print(
            f"{'size':<16}{render.human_bytes(cp.logical_size)} logical, {render.human_bytes(cp.stored_size)} stored"
        )
        if values is not None:
            out.print("state")
            out.print_json(data=plain(values))


@app.command()
def diff(
    a: Annotated[str, typer.Argument(metavar="A", help="The older checkpoint (id or unique prefix).")],
    b: Annotated[str, typer.Argument(metavar="B", help="The newer checkpoint (id or unique prefix).")],
    thread_id: ThreadOption = None,
    as_json: JsonOption = False,
) -> None:
    """Structural diff of two checkpoints' states (key by key, lists item by item)."""
    with open_cli_store() as store:
        first = resolve.checkpoint(store, a, thread_id)
        second = resolve.checkpoint(store, b, thread_id)
        result = store.threads.diff(first.id, second.id, thread_id=thread_id)
        if as_json:
            emit_json({"a": first.id, "b": second.id, "empty": result.empty, **result.to_dict()})
            return
        out.print(f"[dim]diff {first.id} -> {second.id}[/dim]", soft_wrap=True)
        if result.empty:
            out.print("no differences")
        for line in render.diff_lines(result):
            out.print(line, soft_wrap=True)


@app.command()
def branches(
    thread_id: Annotated[str, typer.Argument(metavar="THREAD")], as_json: JsonOption = False
) -> None:
    """Branches of a thread with their heads."""
    with open_cli_store() as store:
        thread = resolve.thread(store, thread_id)
        found = store.threads.branches(thread.id)
        if as_json:
            emit_json(
                {
                    "thread": thread.id,
                    "default_branch": thread.default_branch,
                    "branches": [branch_doc(b, b.name == thread.default_branch) for b in found],
                }
            )
            return
        short = resolve.abbreviations(store, (b.head for b in found if b.head))
        width = max((len(b.name) for b in found), default=0)
        for br in found:
            mark = "*" if br.name == thread.default_branch else " "
            head = short[br.head] if br.head else "(empty)"
            name = escape(br.name.ljust(width))
            out.print(f"{mark} [green]{name}[/green]  [yellow]{head}[/yellow]", soft_wrap=True)
