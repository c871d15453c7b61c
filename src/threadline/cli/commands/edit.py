"""Changing a thread's history (always by appending): branch, merge, milestone, restore."""

from __future__ import annotations

import enum
from typing import Annotated

import typer
from rich.markup import escape

from threadline.cli import resolve
from threadline.cli.commands.inspect import ThreadOption
from threadline.cli.common import JsonOption, app, emit_json, open_cli_store, out
from threadline.cli.documents import branch_doc, checkpoint_doc
from threadline.model import Checkpoint


class Strategy(enum.StrEnum):
    THEIRS = "theirs"
    OURS = "ours"


def _report(action: str, cp: Checkpoint, as_json: bool) -> None:
    if as_json:
        emit_json({"checkpoint": checkpoint_doc(cp)})
    else:
        out.print(
            f"{escape(action)}: new checkpoint [yellow]{cp.id}[/yellow] on branch {escape(cp.branch)!r}",
            soft_wrap=True,
        )


@app.command()
def branch(
    thread_id: Annotated[str, typer.Argument(metavar="THREAD")],
    name: Annotated[str, typer.Argument(metavar="NAME", help="The new branch's name.")],
    from_checkpoint: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="CHECKPOINT",
            help="Start it at this checkpoint (default: the default branch's head).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a branch at any checkpoint of a thread (fork, time travel)."""
    with open_cli_store() as store:
        thread = resolve.thread(store, thread_id)
        start = resolve.checkpoint(store, from_checkpoint, thread.id).id if from_checkpoint else None
        created = store.threads.create_branch(thread.id, name, from_checkpoint=start)
        if as_json:
            emit_json({"branch": branch_doc(created, created.name == thread.default_branch)})
            return
        at = f"at [yellow]{created.head}[/yellow]" if created.head else "(empty)"
        out.print(f"created branch {escape(created.name)!r} in thread {escape(thread.id)!r} {at}")


@app.command()
def merge(
    thread_id: Annotated[str, typer.Argument(metavar="THREAD")],
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="The branch to merge.")],
    into: Annotated[
        str | None,
        typer.Argument(metavar="INTO", help="The branch that receives it (default: the default branch)."),
    ] = None,
    strategy: Annotated[
        Strategy,
        typer.Option("--strategy", help="Whose state the merge keeps: theirs (SOURCE) or ours (INTO)."),
    ] = Strategy.THEIRS,
    as_json: JsonOption = False,
) -> None:
    """Merge branch SOURCE into INTO: a new checkpoint on INTO with both heads as parents."""
    with open_cli_store() as store:
        thread = resolve.thread(store, thread_id)
        resolve.branch(store, thread.id, source)
        target = resolve.branch(store, thread.id, into).name if into else thread.default_branch
        cp = store.threads.merge(thread.id, source, target, strategy=strategy.value)
        _report(f"merged {source!r} into {target!r} ({strategy.value})", cp, as_json)


@app.command()
def milestone(
    checkpoint: Annotated[
        str, typer.Argument(metavar="CHECKPOINT", help="A checkpoint id or a unique prefix of it.")
    ],
    name: Annotated[str, typer.Argument(metavar="NAME", help="The milestone's name (unique in the thread).")],
    on_branch: Annotated[str | None, typer.Option("--branch", "-b", help="Write it on this branch.")] = None,
    thread_id: ThreadOption = None,
    as_json: JsonOption = False,
) -> None:
    """Keep a checkpoint's state as a named, protected milestone checkpoint."""
    with open_cli_store() as store:
        cp = resolve.checkpoint(store, checkpoint, thread_id)
        if on_branch:
            resolve.branch(store, cp.thread_id, on_branch)
        marked = store.threads.milestone_of(cp.id, name, thread_id=cp.thread_id, branch=on_branch)
        _report(f"milestone {name!r} of {cp.id}", marked, as_json)


@app.command()
def restore(
    checkpoint: Annotated[
        str, typer.Argument(metavar="CHECKPOINT", help="A checkpoint id or a unique prefix of it.")
    ],
    on_branch: Annotated[
        str | None,
        typer.Option("--branch", "-b", help="Write the restored state on this branch (default: its own)."),
    ] = None,
    thread_id: ThreadOption = None,
    as_json: JsonOption = False,
) -> None:
    """Restore an earlier state: appends a checkpoint with it (history is never rewritten)."""
    with open_cli_store() as store:
        cp = resolve.checkpoint(store, checkpoint, thread_id)
        if on_branch:
            resolve.branch(store, cp.thread_id, on_branch)
        restored = store.threads.restore(cp.id, thread_id=cp.thread_id, branch=on_branch)
        _report(f"restored {cp.id}", restored, as_json)
