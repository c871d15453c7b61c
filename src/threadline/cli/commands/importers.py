"""``threadline import langgraph SOURCE``: LangGraph checkpoint databases into the store.

See docs/langgraph.md ("Importing LangGraph databases"): values are decoded by threadline
(an allowlist, never pickle); a checkpoint holding anything else is skipped and reported,
or imported with those values kept as raw bytes with ``--allow-opaque``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from threadline.cli.common import (
    JsonOption,
    app,
    emit_json,
    err,
    open_cli_store,
    out,
    progress_bar,
    show_progress,
)
from threadline.errors import InvalidInput, StorageError

if TYPE_CHECKING:  # pragma: no cover
    from threadline.importers import ImportReport, Problem

import_app = typer.Typer(
    name="import", help="Import checkpoints from other stores.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(import_app)

_SHOWN_PROBLEMS = 20


def _check_sqlite_source(source: str) -> None:
    """Refuse, with a clear message, a file that is not a LangGraph SqliteSaver database."""
    path = source[len("sqlite:///") :] if source.startswith("sqlite:///") else source
    if not Path(path).is_file():
        raise InvalidInput(f"LangGraph SQLite database {path!r} does not exist")
    try:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise InvalidInput(f"{path!r} is not a LangGraph checkpoint database: {exc}") from None
    missing = {"checkpoints", "writes"} - tables
    if missing:
        raise InvalidInput(
            f"{path!r} is not a LangGraph SqliteSaver database (no {', '.join(sorted(missing))} table)"
        )


def _problem_doc(problem: Problem) -> dict[str, Any]:
    return {
        "thread_id": problem.thread_id,
        "checkpoint_ns": problem.checkpoint_ns,
        "checkpoint_id": problem.checkpoint_id,
        "reasons": list(problem.reasons),
    }


def import_doc(report: ImportReport) -> dict[str, Any]:
    return {
        "source": report.source,
        "ok": report.ok,
        "seen": report.seen,
        "imported": report.imported,
        "already_present": report.already_present,
        "writes": report.writes,
        "verified": report.verified,
        "skipped": [_problem_doc(p) for p in report.skipped],
        "opaque": [_problem_doc(p) for p in report.opaque],
        "mismatches": list(report.mismatches),
    }


def _print_problems(title: str, problems: list[Problem]) -> None:
    out.print(title, soft_wrap=True)
    for p in problems[:_SHOWN_PROBLEMS]:
        where = f"{p.thread_id} / {p.checkpoint_ns or '-'} / {p.checkpoint_id}"
        out.print(f"  {escape(where)}: {escape('; '.join(p.reasons))}", soft_wrap=True)
    if len(problems) > _SHOWN_PROBLEMS:
        out.print(f"  ... and {len(problems) - _SHOWN_PROBLEMS} more (--json lists them all)", soft_wrap=True)


@import_app.command("langgraph")
def langgraph(
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE",
            help="A LangGraph SqliteSaver file (path or sqlite:///path) or a PostgresSaver postgresql:// URL.",
        ),
    ],
    allow_opaque: Annotated[
        bool,
        typer.Option(
            "--allow-opaque",
            help="Import checkpoints holding values threadline does not load (pickle, unknown classes) "
            "with those values kept as raw bytes, never executed.",
        ),
    ] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify", help="Read every imported checkpoint back and compare it with the source."
        ),
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Import a LangGraph checkpoint database (re-runnable: only what is new is written); exit 1 if some
    checkpoints were skipped or differ after import."""
    try:
        from threadline.importers import import_langgraph
        from threadline.langgraph import ThreadlineSaver
    except ModuleNotFoundError as exc:
        raise InvalidInput(
            f"importing LangGraph databases needs LangGraph ({exc.name} is missing): pip install 'threadline[langgraph]'"
        ) from None
    postgres = source.startswith(("postgresql://", "postgres://"))
    if not postgres:
        _check_sqlite_source(source)
    with open_cli_store() as store:
        saver = ThreadlineSaver(store)
        seen = [0]
        try:
            with progress_bar("import", show_progress(as_json)) as progress:

                def step(done: int, total: int) -> None:
                    seen[0] = done
                    if progress is not None:
                        progress("checkpoints", done, total)

                report = import_langgraph(
                    source, saver, allow_opaque=allow_opaque, verify=verify, progress=step
                )
        except KeyboardInterrupt:
            err.print(
                f"interrupted after {seen[0]} source checkpoint(s); each imported checkpoint is complete. "
                "Run the same command again to import the rest.",
                soft_wrap=True,
            )
            raise typer.Exit(130) from None
        except ModuleNotFoundError as exc:
            raise InvalidInput(
                f"{exc.name} is needed to read this source: pip install "
                + (
                    "langgraph-checkpoint-postgres 'psycopg[binary]'"
                    if postgres
                    else "langgraph-checkpoint-sqlite"
                )
                + (" (or pass --no-verify)" if not postgres else "")
            ) from None
        except sqlite3.Error as exc:
            raise StorageError(f"reading {source!r} failed: {exc}") from None
        except Exception as exc:
            if postgres and type(exc).__module__.startswith("psycopg"):
                raise StorageError(f"cannot read the LangGraph database at {source!r}: {exc}") from None
            raise
    if as_json:
        emit_json(import_doc(report))
    else:
        out.print(
            f"imported from {escape(report.source)}: {report.seen} checkpoint(s) read, {report.imported} imported, "
            f"{report.already_present} already present, {report.writes} pending write(s), "
            f"{report.verified} verified",
            soft_wrap=True,
        )
        if report.opaque:
            _print_problems(
                f"[yellow]{len(report.opaque)} checkpoint(s) imported with opaque values (raw bytes):[/yellow]",
                report.opaque,
            )
        if report.skipped:
            _print_problems(
                f"[red]{len(report.skipped)} checkpoint(s) skipped: they hold values threadline does not load "
                "(--allow-opaque imports them with those values kept as raw bytes):[/red]",
                report.skipped,
            )
        for mismatch in report.mismatches:
            out.print(f"[red]mismatch: {escape(mismatch)}[/red]", soft_wrap=True)
    if not report.ok:
        raise SystemExit(1)
