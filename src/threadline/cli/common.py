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
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from threadline.errors import InvalidInput, ThreadlineError
from threadline.serde import KeyRing
from threadline.store import Store, open_store, url_from_env

#: Where human output goes; tests may swap them (e.g. for a forced terminal).
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

ProgressCallback = Callable[[str, int, int], None]


#: The order of ``threadline --help``: try it, look inside, change history, sessions, upkeep.
COMMAND_ORDER = (
    "demo",
    "threads",
    "log",
    "show",
    "diff",
    "branches",
    "stats",
    "sessions",
    "branch",
    "merge",
    "milestone",
    "restore",
    "policy",
    "cleanup",
    "sync-point",
    "backup",
    "import",
    "keys",
    "check",
    "migrate",
)


class ThreadlineGroup(TyperGroup):
    """Turns errors raised by any command into a message and an exit code."""

    def list_commands(self, ctx: Any) -> list[str]:
        names: list[str] = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))

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
            fail(_with_hint(str(exc)))
        except OSError as exc:  # files the user named: missing directory, permissions, full disk
            if options.debug:
                raise
            fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        except KeyboardInterrupt:
            if options.debug:
                raise
            err.print("interrupted; nothing partial was kept")
            raise typer.Exit(130) from None


def _with_hint(message: str) -> str:
    """An error message, with what to do when the store is encrypted and the key ring is missing."""
    if options.keyring is None and (
        "open the store with its key ring" in message or "not in the key ring" in message
    ):
        return f"{message}; pass the store's key ring with --keyring FILE (or THREADLINE_KEYRING)"
    return message


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
    keyring: Path | None = None


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
    keyring: Annotated[
        Path | None,
        typer.Option(
            "--keyring",
            metavar="FILE",
            envvar="THREADLINE_KEYRING",
            help="Key ring file (JSON) of an encrypted store (default: $THREADLINE_KEYRING).",
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
) -> None:
    """Checkpoints for long-running LLM agents and workflows."""
    options.store, options.debug, options.keyring = store, debug, keyring


def fail(message: str, code: int = 1) -> None:
    """Print an error on stderr and exit with ``code``."""
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def usage_error(message: str) -> None:
    """A mistake in the command line that click cannot see (exit 2)."""
    raise typer.BadParameter(message)


def store_url() -> str:
    return url_from_env(options.store)


def read_keyring(file: Path) -> KeyRing:
    """A key ring from its JSON file, with errors that name the file."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(
            f"key ring file {str(file)!r} does not exist; create one with: threadline keys generate FILE"
        ) from None
    except UnicodeDecodeError:
        raise InvalidInput(f"key ring file {str(file)!r} is not a key ring (not UTF-8 JSON)") from None
    try:
        return KeyRing.from_json(text)
    except InvalidInput as exc:
        raise InvalidInput(f"key ring file {str(file)!r}: {exc}") from None


def cli_keyring() -> KeyRing | None:
    """The key ring the global options name (--keyring, else $THREADLINE_KEYRING), if any."""
    return read_keyring(options.keyring) if options.keyring is not None else None


@contextmanager
def open_cli_store() -> Iterator[Store]:
    """The store the global options name (migrated forward when opened), with its key ring."""
    keyring = cli_keyring()
    store = open_store(store_url(), keyring=keyring)
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
