"""What every command shares: the app, global options, the store, errors and output.

Exit codes: 0 success, 1 operational error (a message on stderr; a traceback
only with ``--debug``), 2 usage error (bad arguments, found by click or by a
command's own checks), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from enum import Enum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from threadline.errors import ThreadlineError
from threadline.store import Store, open_store, url_from_env

#: Where human output goes; tests may swap them (e.g. for a forced terminal).
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

ProgressCallback = Callable[[str, int, int], None]


class ThreadlineGroup(TyperGroup):
    """Turns errors raised by any command into a message and an exit code."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        for arg in args:  # bytes that are not UTF-8 arrive as lone surrogates: refuse them here
            try:
                arg.encode("utf-8")
            except UnicodeEncodeError:
                raise typer.BadParameter(f"argument {arg!r} is not valid UTF-8 text") from None
        result: list[str] = super().parse_args(ctx, args)
        return result

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ThreadlineError as exc:
            if options.debug:
                raise
            fail(str(exc))
        except OSError as exc:  # files the user named: missing directory, permissions, full disk
            if options.debug:
                raise
            fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        except KeyboardInterrupt:
            if options.debug:
                raise
            err.print("interrupted; nothing partial was kept")
            raise typer.Exit(130) from None


app = typer.Typer(
    name="threadline",
    cls=ThreadlineGroup,
    help="Checkpoints for long-running LLM agents and workflows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@dataclass
class Options:
    """The global options (set by the top-level callback on every invocation)."""

    store: str | None = None
    debug: bool = False


options = Options()


@app.callback()
def main_options(
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            metavar="URL",
            help="Store URL (default: $THREADLINE_URL, else sqlite:///./threadline.db).",
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
) -> None:
    """Checkpoints for long-running LLM agents and workflows."""
    options.store, options.debug = store, debug


def fail(message: str, code: int = 1) -> None:
    """Print an error on stderr and exit with ``code``."""
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def usage_error(message: str) -> None:
    """A mistake in the command line that click cannot see (exit 2)."""
    raise typer.BadParameter(message)


def store_url() -> str:
    return url_from_env(options.store)


@contextmanager
def open_cli_store() -> Iterator[Store]:
    """The store the global options name (migrated forward when opened)."""
    store = open_store(store_url())
    try:
        yield store
    finally:
        store.close()


# ---------------------------------------------------------------- output


def plain(value: Any) -> Any:
    """A JSON-friendly copy: datetimes as ISO 8601, bytes as hex, unknown values as their repr."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Enum):
        return plain(value.value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((plain(v) for v in value), key=repr)
    if hasattr(value, "items"):
        return {str(k): plain(v) for k, v in value.items()}
    return repr(value)


def emit_json(document: dict[str, Any]) -> None:
    """Print exactly one JSON document on stdout."""
    sys.stdout.write(json.dumps(plain(document), indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document (see the README) and nothing else.")
]


def show_progress(as_json: bool) -> bool:
    """Progress bars only for a person at a terminal."""
    return not as_json and out.is_terminal and os.environ.get("TERM") != "dumb"


@contextmanager
def progress_bar(description: str, enabled: bool) -> Iterator[ProgressCallback | None]:
    """A rich progress bar fed by the layers' ``progress(phase, done, total)`` callbacks."""
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=out,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(phase: str, done: int, total: int) -> None:
            bar.update(task, description=f"{description}: {phase}", completed=done, total=total)

        yield update


def main() -> None:
    """Console entry point (``threadline``)."""
    try:
        app()
    except BrokenPipeError:  # pragma: no cover - output piped into e.g. `head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(141)
