"""Backups: portable, checksummed archive files of threads or whole sessions (see docs/archive.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from threadline.archive import ArchiveSummary
from threadline.cli import resolve
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
from threadline.cli.documents import archive_doc

backup_app = typer.Typer(
    name="backup",
    help="Write, verify and restore backup archives.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(backup_app)

FileArgument = Annotated[Path, typer.Argument(metavar="FILE", help="The archive file.")]


def _print(verb: str, file: Path, summary: ArchiveSummary) -> None:
    out.print(
        f"{verb} {escape(str(file))}: {len(summary.threads)} thread(s), {summary.checkpoints} checkpoints, "
        f"{summary.values} values, {summary.bytes:,} bytes (format {summary.format_version})",
        soft_wrap=True,
    )


@backup_app.command("create")
def create(
    file: FileArgument,
    thread: Annotated[
        list[str] | None, typer.Option("--thread", "-t", help="A thread to back up (repeatable).")
    ] = None,
    session: Annotated[
        str | None,
        typer.Option("--session", "-s", help="A whole session: its threads, policies and sync points."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Write threads or a session to an archive (atomically: an interrupted backup leaves no file)."""
    if bool(thread) == (session is not None):
        usage_error("give the threads (--thread T, repeatable) or one --session S")
    with open_cli_store() as store:
        with progress_bar("backup", show_progress(as_json)) as progress:
            if session is not None:
                sid = resolve.session(store, session).id
                summary = store.sessions.backup_session(sid, file, progress=progress)
            else:
                ids = [resolve.thread(store, t).id for t in dict.fromkeys(thread or [])]
                summary = store.threads.backup(ids, file, progress=progress)
        if as_json:
            emit_json(archive_doc(file, summary))
        else:
            _print("wrote", file, summary)


@backup_app.command("verify")
def verify(file: FileArgument, as_json: JsonOption = False) -> None:
    """Check an archive completely (structure, checksums, references) without importing it."""
    with open_cli_store() as store:
        with progress_bar("verify", show_progress(as_json)) as progress:
            summary = store.threads.verify_backup(file, progress=progress)
        if as_json:
            emit_json(archive_doc(file, summary))
        else:
            _print("verified", file, summary)


def _renames(pairs: list[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            usage_error(f"--rename takes OLD=NEW, got {pair!r}")
        mapping[old] = new
    return mapping


@backup_app.command("restore")
def restore(
    file: FileArgument,
    rename: Annotated[
        list[str] | None,
        typer.Option("--rename", metavar="OLD=NEW", help="Import thread OLD under the id NEW."),
    ] = None,
    as_session: Annotated[
        str | None,
        typer.Option(
            "--as-session", metavar="SESSION", help="Restore a session archive under this session id."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Import an archive (verified first; threads already present are skipped).

    A session archive restores the session too (policies, sync points).
    """
    mapping = _renames(rename or [])
    with open_cli_store() as store:
        with progress_bar("restore", show_progress(as_json)) as progress:
            kind = store.threads.verify_backup(file, progress=progress)
            if kind.session is not None:
                if mapping:
                    usage_error(
                        "--rename applies to thread archives; restore a session with --as-session NEW"
                    )
                restored = store.sessions.restore_session(file, session_id=as_session, progress=progress)
                summary, session = restored.archive, restored.session.id
            else:
                if as_session is not None:
                    usage_error(f"{file} holds threads, not a session; --as-session does not apply")
                summary = store.threads.restore_backup(file, rename=mapping, progress=progress)
                session = None
        if as_json:
            emit_json({**archive_doc(file, summary), "session": session})
            return
        _print("restored", file, summary)
        if session is not None:
            out.print(f"session: {escape(session)}", soft_wrap=True)
        if summary.imported:
            out.print("imported: " + escape(", ".join(summary.imported)), soft_wrap=True)
        if summary.skipped:
            out.print("already present, skipped: " + escape(", ".join(summary.skipped)), soft_wrap=True)
