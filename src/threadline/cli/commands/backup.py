"""Backups: portable, checksummed archive files (see docs/archive.md)."""

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
    thread: Annotated[list[str], typer.Option("--thread", "-t", help="A thread to back up (repeatable).")],
    as_json: JsonOption = False,
) -> None:
    """Write threads to an archive (atomically: an interrupted backup leaves no file)."""
    with open_cli_store() as store:
        ids = [resolve.thread(store, t).id for t in dict.fromkeys(thread)]
        with progress_bar("backup", show_progress(as_json)) as progress:
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
    as_json: JsonOption = False,
) -> None:
    """Import an archive (verified first; threads already present are skipped)."""
    mapping = _renames(rename or [])
    with open_cli_store() as store:
        with progress_bar("restore", show_progress(as_json)) as progress:
            summary = store.threads.restore_backup(file, rename=mapping, progress=progress)
        if as_json:
            emit_json(archive_doc(file, summary))
            return
        _print("restored", file, summary)
        if summary.imported:
            out.print("imported: " + escape(", ".join(summary.imported)), soft_wrap=True)
        if summary.skipped:
            out.print("already present, skipped: " + escape(", ".join(summary.skipped)), soft_wrap=True)
