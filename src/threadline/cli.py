"""The ``threadline`` command line (typer + rich).

The store comes from ``--store``, else ``THREADLINE_URL``, else
``sqlite:///./threadline.db``. Exit codes: 0 success, 1 operational error
(message on stderr), 2 usage error.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from threadline.errors import ThreadlineError
from threadline.store import Store, open_store, url_from_env

app = typer.Typer(
    name="threadline",
    help="Checkpoints for long-running LLM agents and workflows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

_state: dict[str, Any] = {"store": None, "debug": False}


@app.callback()
def main_options(
    store: Annotated[
        str | None,
        typer.Option("--store", help="Store URL (default: $THREADLINE_URL or sqlite:///./threadline.db)"),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
) -> None:
    _state["store"] = store
    _state["debug"] = debug


@contextmanager
def _open() -> Iterator[Store]:
    store = open_store(url_from_env(_state["store"]))
    try:
        yield store
    finally:
        store.close()


def _run(fn: Callable[[], None]) -> None:
    """Run a command body: threadline errors become a message and exit code 1."""
    try:
        fn()
    except ThreadlineError as exc:
        if _state["debug"]:
            raise
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@app.command()
def demo() -> None:
    """Write a small agent conversation as checkpoints, read it back, print a summary."""

    def body() -> None:
        with _open() as store:
            core = store.checkpoints
            run = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1000:03d}"
            thread = core.create_thread(f"demo-{run}", metadata={"demo": True})
            messages: list[dict[str, str]] = []
            started = time.perf_counter()
            last = None
            for step in range(20):
                role = "user" if step % 2 == 0 else "assistant"
                messages.append(
                    {"role": role, "content": f"step {step}: " + "lorem ipsum " * 40, "id": f"m{step}"}
                )
                last = core.create(thread.id, {"messages": messages, "turn": step, "status": "running"})
            assert last is not None
            elapsed = time.perf_counter() - started
            state = core.get_state(last.id)
            if state["messages"] != messages:
                raise ThreadlineError("demo read back a different state than it wrote")
            stats = core.stats([thread.id])
            table = Table(title=f"threadline demo on {store.url}")
            table.add_column("figure")
            table.add_column("value", justify="right")
            table.add_row("thread", thread.id)
            table.add_row("checkpoints written", str(stats.checkpoints))
            table.add_row("write time", f"{elapsed * 1000:.1f} ms")
            table.add_row("logical bytes (sum of states)", f"{stats.logical_bytes:,}")
            table.add_row("stored bytes (after sharing)", f"{stats.stored_bytes:,}")
            table.add_row("sharing ratio", f"{stats.sharing_ratio:.1f}x")
            table.add_row("latest checkpoint", last.id)
            out.print(table)
            out.print("State read back and verified: identical to what was written.")

    _run(body)


@app.command()
def stats(
    thread: Annotated[list[str] | None, typer.Option("--thread", help="Only these threads.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Statistics of the store (or of some threads)."""

    def body() -> None:
        with _open() as store:
            s = store.checkpoints.stats(thread or None)
            data = {
                "threads": s.threads,
                "checkpoints": s.checkpoints,
                "by_kind": dict(s.by_kind),
                "by_status": dict(s.by_status),
                "logical_bytes": s.logical_bytes,
                "stored_bytes": s.stored_bytes,
                "oldest": s.oldest.isoformat() if s.oldest else None,
                "newest": s.newest.isoformat() if s.newest else None,
                "restores": s.restores,
                "branches": s.branches,
                "milestones": s.milestones,
            }
            if as_json:
                sys.stdout.write(json.dumps(data) + "\n")
                return
            table = Table(title=f"statistics of {store.url}")
            table.add_column("figure")
            table.add_column("value", justify="right")
            for key, value in data.items():
                table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
            out.print(table)

    _run(body)


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
