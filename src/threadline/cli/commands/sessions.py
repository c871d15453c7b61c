"""The session layer: sessions, retention policies, cleanup and sync points (docs/retention.md)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import typer
from rich.markup import escape

from threadline.cli import render, resolve
from threadline.cli.common import (
    JsonOption,
    app,
    emit_json,
    open_cli_store,
    out,
    progress_bar,
    show_progress,
    usage_error,
)
from threadline.cli.documents import (
    checkpoint_doc,
    cleanup_doc,
    policy_doc,
    session_doc,
    sync_point_doc,
)
from threadline.cli.durations import NEVER, format_duration, parse_count, parse_duration
from threadline.model import POLICY_FIELDS, Policy, SessionStatus
from threadline.sessions import CleanupResult
from threadline.store import Store

SessionOption = Annotated[str | None, typer.Option("--session", "-s", help="One session (all its threads).")]
ThreadScopeOption = Annotated[str | None, typer.Option("--thread", "-t", help="One thread.")]


def _scope(session: str | None, thread: str | None) -> None:
    if session is not None and thread is not None:
        usage_error("give --session or --thread, not both")


# ---------------------------------------------------------------- sessions


@app.command()
def sessions(
    status: Annotated[
        SessionStatus | None, typer.Option("--status", help="Only sessions with this status.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List sessions with their policy, threads and size."""
    with open_cli_store() as store:
        found = [s for s in resolve.all_sessions(store) if status is None or s.status is status]
        docs = [
            session_doc(s, store.checkpoints.stats([t.id for t in resolve.all_threads(store, s.id)]))
            for s in found
        ]
        if as_json:
            emit_json({"sessions": docs})
            return
        if not docs:
            out.print("no sessions" + (f" with status {status.value!r}" if status else ""), soft_wrap=True)
            return
        table = render.make_table(f"sessions of {store.url}")
        for column in ("session", "status", "threads", "checkpoints", "stored", "policy"):
            numeric = column in ("threads", "checkpoints", "stored")
            table.add_column(column, justify="right" if numeric else "left", no_wrap=column != "policy")
        for d, s in zip(docs, found, strict=True):
            table.add_row(
                escape(d["id"]),
                d["status"],
                str(d["threads"]),
                str(d["checkpoints"]),
                render.human_bytes(d["stored_bytes"]),
                escape(policy_summary(s.policy)),
            )
        out.print(table)


# ---------------------------------------------------------------- policies


_SHORT = {
    "ttl_auto": "auto",
    "ttl_manual": "manual",
    "ttl_error": "error",
    "ttl_milestone": "milestone",
    "max_checkpoints": "max",
    "min_age": "min-age",
}


def policy_summary(policy: Policy) -> str:
    """One short line: the fields that limit anything (``keep all`` when none does),
    e.g. ``auto 7d, error 1d, max 500, min-age 1h``."""
    parts = []
    for name in POLICY_FIELDS:
        value = getattr(policy, name)
        if value is not None:
            parts.append(
                f"{_SHORT[name]} {format_duration(value) if isinstance(value, timedelta) else value}"
            )
    return ", ".join(parts) if parts else "keep all"


def _value_text(name: str, value: Any) -> str:
    if name == "max_checkpoints":
        return "no limit" if value is None else str(value)
    if name == "min_age":
        return "none" if value is None else format_duration(value)
    return format_duration(value)


def _thread_policy_doc(
    thread_id: str, session_id: str | None, effective: Policy, overrides: dict[str, Any]
) -> dict[str, Any]:
    """The JSON document of a thread's policy (``policy show`` and ``policy set``)."""
    return {
        "scope": {"session": None, "thread": thread_id},
        "policy": policy_doc(effective),
        "overrides": policy_doc(overrides),
        "inherited_from": session_id,
    }


def _policy_table(title: str, policy: Policy, overridden: set[str], inherited: str) -> None:
    table = render.make_table(title)
    table.add_column("field")
    table.add_column("value", justify="right")
    table.add_column("from")
    for name in POLICY_FIELDS:
        table.add_row(
            name.replace("_", "-"),
            _value_text(name, getattr(policy, name)),
            "thread" if name in overridden else escape(inherited),
        )
    out.print(table)


policy_app = typer.Typer(
    name="policy", help="Show or set retention policies.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(policy_app)


@policy_app.command("show")
def policy_show(
    session: SessionOption = None, thread: ThreadScopeOption = None, as_json: JsonOption = False
) -> None:
    """The policy of a session, the effective policy of a thread, or (without either) every session's."""
    _scope(session, thread)
    with open_cli_store() as store:
        if thread is not None:
            t = resolve.thread(store, thread)
            effective = store.sessions.thread_policy(t.id)
            overrides = store.sessions.thread_overrides(t.id)
            inherited = f"session {t.session_id}" if t.session_id else "default"
            if as_json:
                emit_json(_thread_policy_doc(t.id, t.session_id, effective, overrides))
                return
            _policy_table(f"policy of thread {t.id}", effective, set(overrides), inherited)
            return
        if session is not None:
            s = resolve.session(store, session)
            if as_json:
                emit_json(
                    {
                        "scope": {"session": s.id, "thread": None},
                        "policy": policy_doc(s.policy),
                        "overrides": None,
                        "inherited_from": None,
                    }
                )
                return
            _policy_table(f"policy of session {s.id}", s.policy, set(), "session")
            return
        found = list(resolve.all_sessions(store))
        default = store.sessions.default_policy
        if as_json:
            emit_json(
                {
                    "default": policy_doc(default),
                    "sessions": [{"session": s.id, "policy": policy_doc(s.policy)} for s in found],
                }
            )
            return
        table = render.make_table("retention policies")
        table.add_column("session")
        table.add_column("policy")
        table.add_row("(threads outside sessions)", escape(policy_summary(default)))
        for s in found:
            table.add_row(escape(s.id), escape(policy_summary(s.policy)))
        out.print(table)


def _duration_option(flag: str, what: str) -> Any:
    return typer.Option(flag, metavar="DURATION", help=f"{what} (30s, 15m, 2h, 7d, 1h30m; 'none': never).")


def _parse_fields(values: dict[str, str | None]) -> dict[str, Any]:
    """Option text -> policy fields (only the options given; None means never/no limit)."""
    fields: dict[str, Any] = {}
    for name, text in values.items():
        if text is None:
            continue
        flag = "--" + name.replace("_", "-")
        try:
            parsed = parse_count(text) if name == "max_checkpoints" else parse_duration(text)
        except typer.BadParameter as exc:
            raise typer.BadParameter(exc.message, param_hint=flag) from None
        fields[name] = None if parsed == NEVER else parsed
    return fields


@policy_app.command("set")
def policy_set(
    session: SessionOption = None,
    thread: ThreadScopeOption = None,
    ttl_auto: Annotated[str | None, _duration_option("--ttl-auto", "Lifetime of auto checkpoints")] = None,
    ttl_manual: Annotated[
        str | None, _duration_option("--ttl-manual", "Lifetime of manual checkpoints")
    ] = None,
    ttl_error: Annotated[str | None, _duration_option("--ttl-error", "Lifetime of error checkpoints")] = None,
    ttl_milestone: Annotated[
        str | None, _duration_option("--ttl-milestone", "Lifetime of unprotected milestones")
    ] = None,
    max_checkpoints: Annotated[
        str | None,
        typer.Option(
            "--max-checkpoints", metavar="N", help="At most N checkpoints per thread ('none': no limit)."
        ),
    ] = None,
    min_age: Annotated[str | None, _duration_option("--min-age", "Nothing younger is ever removed")] = None,
    reset: Annotated[
        bool,
        typer.Option(
            "--reset",
            help="Start from scratch: a session's policy from 'keep everything', a thread's without overrides.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Change some fields of a session's policy, or override them for one thread.

    A session's threads inherit its policy; a thread's overrides win field by field.
    Existing checkpoints' expiry is re-computed.
    """
    _scope(session, thread)
    if session is None and thread is None:
        usage_error("name what to change: --session S or --thread T")
    fields = _parse_fields(
        {
            "ttl_auto": ttl_auto,
            "ttl_manual": ttl_manual,
            "ttl_error": ttl_error,
            "ttl_milestone": ttl_milestone,
            "max_checkpoints": max_checkpoints,
            "min_age": min_age,
        }
    )
    if not fields and not reset:
        usage_error("give at least one field to set (--ttl-auto, --max-checkpoints, ...) or --reset")
    with open_cli_store() as store:
        if thread is not None:
            t = resolve.thread(store, thread)
            overrides = {} if reset else store.sessions.thread_overrides(t.id)
            overrides.update(fields)
            effective = store.sessions.set_thread_policy(t.id, overrides)
            if as_json:
                emit_json(_thread_policy_doc(t.id, t.session_id, effective, overrides))
                return
            inherited = f"session {t.session_id}" if t.session_id else "default"
            _policy_table(f"policy of thread {t.id} (set)", effective, set(overrides), inherited)
            return
        assert session is not None
        s = resolve.session(store, session)
        policy = (Policy() if reset else s.policy).override(fields)
        changed = store.sessions.set_global_checkpoint_policy(s.id, policy)
        if as_json:
            emit_json(
                {
                    "scope": {"session": s.id, "thread": None},
                    "policy": policy_doc(policy),
                    "overrides": None,
                    "inherited_from": None,
                    "recomputed": changed,
                }
            )
            return
        _policy_table(f"policy of session {s.id} (set)", policy, set(), "session")
        out.print(f"expiry re-computed for {changed} checkpoint(s)", soft_wrap=True)


# ---------------------------------------------------------------- cleanup


def _run_cleanup(
    store: Store, session: str | None, thread: str | None, dry_run: bool, as_json: bool
) -> CleanupResult:
    with progress_bar("cleanup", show_progress(as_json)) as progress:
        if thread is not None:
            return store.sessions.cleanup_thread(
                resolve.thread(store, thread).id, dry_run=dry_run, progress=progress
            )
        if session is not None:
            return store.sessions.cleanup(
                resolve.session(store, session).id, dry_run=dry_run, progress=progress
            )
        return store.sessions.cleanup_store(dry_run=dry_run, progress=progress)


def print_cleanup(result: CleanupResult, scope: str) -> None:
    """What a cleanup removed (or, in a dry run, would remove), thread by thread."""
    touched = [t for t in result.threads if t.deleted or t.expired or t.error]
    verb = "would remove" if result.dry_run else "removed"
    if touched:
        table = render.make_table(f"cleanup of {scope}" + (" (dry run)" if result.dry_run else ""))
        table.add_column("thread")
        table.add_column(verb, justify="right")
        table.add_column("would expire" if result.dry_run else "expired", justify="right")
        if not result.dry_run:
            table.add_column("freed", justify="right")
        table.add_column("error")
        for t in touched:
            cells = [escape(t.thread_id), str(len(t.deleted)), str(len(t.expired))]
            if not result.dry_run:
                cells.append(render.human_bytes(t.freed_bytes))
            cells.append(f"[red]{escape(t.error)}[/red]" if t.error else "")
            table.add_row(*cells)
        out.print(table)
    checked = len(result.threads)
    deleted, expired = len(result.deleted), len(result.expired)
    if result.dry_run:
        out.print(
            f"dry run: {deleted} checkpoint(s) would be removed and {expired} marked expired "
            f"in {checked} thread(s); nothing was changed",
            soft_wrap=True,
        )
    else:
        out.print(
            f"removed {deleted} checkpoint(s), marked {expired} expired in {checked} thread(s); "
            f"freed {render.human_bytes(result.freed_bytes)} of stored values"
            + (
                f", the file shrank by {render.human_bytes(result.reclaimed_bytes)}"
                if result.reclaimed_bytes
                else ""
            ),
            soft_wrap=True,
        )
    if result.failures:
        out.print(
            f"[red]{len(result.failures)} thread(s) failed; the others were cleaned[/red]", soft_wrap=True
        )


@app.command()
def cleanup(
    session: SessionOption = None,
    thread: ThreadScopeOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", "-n", help="Report what would be removed; change nothing.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Apply retention policies (every thread, one session's or one thread); exit 1 if a thread failed."""
    _scope(session, thread)
    with open_cli_store() as store:
        result = _run_cleanup(store, session, thread, dry_run, as_json)
        if as_json:
            emit_json(cleanup_doc(result, {"session": session, "thread": thread}))
        else:
            scope = f"thread {thread}" if thread else f"session {session}" if session else store.url
            print_cleanup(result, scope)
    if not result.ok:
        raise SystemExit(1)


# ---------------------------------------------------------------- sync points

sync_app = typer.Typer(
    name="sync-point",
    help="Checkpoint several threads of a session atomically, list and restore those points.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(sync_app)

SessionArgument = Annotated[str, typer.Argument(metavar="SESSION")]
LabelArgument = Annotated[str, typer.Argument(metavar="LABEL")]


@sync_app.command("create")
def sync_create(
    session: SessionArgument,
    label: LabelArgument,
    thread: Annotated[
        list[str] | None,
        typer.Option("--thread", "-t", help="A thread of the session (repeatable; default: all of them)."),
    ] = None,
    title: Annotated[str | None, typer.Option("--title", help="Title of the checkpoints written.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Re-record the head state of threads of a session under one label, all or nothing."""
    with open_cli_store() as store:
        s = resolve.session(store, session)
        ids = (
            [resolve.thread(store, t).id for t in thread]
            if thread
            else [t.id for t in resolve.all_threads(store, s.id)]
        )
        point = store.sessions.coordinate_cross_thread_checkpoints(s.id, ids, label, title=title)
        if as_json:
            emit_json({"sync_point": sync_point_doc(point)})
            return
        out.print(
            f"sync point {escape(point.label)!r} in session {escape(s.id)!r}: {len(point.members)} thread(s)",
            soft_wrap=True,
        )
        _print_members(store, point.members)


def _print_members(store: Store, members: dict[str, str] | Any) -> None:
    short = resolve.abbreviations(store, members.values())
    width = max((len(t) for t in members), default=0)
    for tid, cid in members.items():
        out.print(f"  {escape(tid.ljust(width))}  [yellow]{short[cid]}[/yellow]", soft_wrap=True)


@sync_app.command("list")
def sync_list(session: SessionArgument, as_json: JsonOption = False) -> None:
    """The sync points of a session, oldest first."""
    with open_cli_store() as store:
        s = resolve.session(store, session)
        points = store.sessions.list_sync_points(s.id)
        if as_json:
            emit_json({"session": s.id, "sync_points": [sync_point_doc(p) for p in points]})
            return
        if not points:
            out.print(f"no sync points in session {s.id!r}", soft_wrap=True)
            return
        table = render.make_table(f"sync points of session {s.id}")
        table.add_column("label")
        table.add_column("created")
        table.add_column("threads", justify="right")
        table.add_column("members")
        for p in points:
            table.add_row(
                escape(p.label),
                p.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                str(len(p.members)),
                escape(", ".join(p.members)),
            )
        out.print(table)


@sync_app.command("restore")
def sync_restore(session: SessionArgument, label: LabelArgument, as_json: JsonOption = False) -> None:
    """Restore every thread of a sync point to its state there, atomically (appends, never rewrites)."""
    with open_cli_store() as store:
        point = resolve.sync_point(store, session, label)
        written = store.sessions.restore_sync_point(point.session_id, point.label)
        if as_json:
            emit_json(
                {
                    "session": point.session_id,
                    "label": point.label,
                    "checkpoints": [checkpoint_doc(c) for c in written],
                }
            )
            return
        out.print(
            f"restored sync point {escape(point.label)!r}: {len(written)} new checkpoint(s)", soft_wrap=True
        )
        _print_members(store, {c.thread_id: c.id for c in written})


@sync_app.command("delete")
def sync_delete(session: SessionArgument, label: LabelArgument, as_json: JsonOption = False) -> None:
    """Forget a sync point (its checkpoints stay, now subject to retention)."""
    with open_cli_store() as store:
        point = resolve.sync_point(store, session, label)
        store.sessions.delete_sync_point(point.session_id, point.label)
        if as_json:
            emit_json({"session": point.session_id, "label": point.label, "deleted": True})
            return
        out.print(
            f"deleted sync point {escape(point.label)!r} of session {escape(point.session_id)!r}",
            soft_wrap=True,
        )
