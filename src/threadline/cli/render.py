"""Drawing for people: checkpoint lines, the branch graph, diffs, bar charts.

Pure functions of the values they draw (no store access); the commands decide
what to fetch. Text from users (titles, names) is escaped before it meets rich
markup.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from threadline.diff import StateDiff
from threadline.model import Checkpoint, CheckpointKind, CheckpointStatus

_KIND_STYLE = {
    CheckpointKind.AUTO: "dim",
    CheckpointKind.MANUAL: "cyan",
    CheckpointKind.ERROR: "red",
    CheckpointKind.MILESTONE: "magenta",
}


def when(cp: Checkpoint) -> str:
    return cp.created_at.strftime("%Y-%m-%d %H:%M:%S")


def describe(cp: Checkpoint, short: str, heads: Sequence[str] = ()) -> str:
    """One line of rich markup for a checkpoint: id, time, kind, decorations, title."""
    parts = [f"[yellow]{short}[/yellow]", f"[dim]{when(cp)}[/dim]"]
    if heads:
        parts.append("[bold green](" + ", ".join(escape(h) for h in heads) + ")[/bold green]")
    if cp.milestone:
        parts.append(f"[magenta]milestone: {escape(cp.milestone)}[/magenta]")
    if cp.sync_point:
        parts.append(f"[blue]sync: {escape(cp.sync_point)}[/blue]")
    if cp.status is not CheckpointStatus.ACTIVE:
        parts.append(f"[red]{cp.status.value}[/red]")
    if cp.error_message:
        parts.append(f"[red]error: {escape(cp.error_message)}[/red]")
    if cp.title and cp.title != f"sync point {cp.sync_point}":  # the default title repeats the label
        parts.append(escape(cp.title))
    elif "step" in cp.metadata and "source" in cp.metadata:  # written by LangGraph (see docs/langgraph.md)
        parts.append(
            f"[dim]{escape(str(cp.metadata['source']))} step {escape(str(cp.metadata['step']))}[/dim]"
        )
    kind = cp.kind.value if len(parts) == 2 else f"{cp.kind.value:<9}"  # aligned, no trailing blanks
    parts.insert(2, f"[{_KIND_STYLE[cp.kind]}]{kind}[/]")
    return " ".join(parts)


# ---------------------------------------------------------------- branch graph


def graph(checkpoints: Sequence[Checkpoint]) -> list[tuple[str, Checkpoint | None]]:
    """Lanes of a ``git log --graph`` style drawing.

    ``checkpoints`` come newest first (ids are time-ordered and a child always
    sorts after its parents, so that is a topological order). Returns rows of
    (graph prefix, checkpoint or None for connector rows).
    """
    lanes: list[str | None] = []
    rows: list[tuple[str, Checkpoint | None]] = []
    for cp in checkpoints:
        mine = [i for i, lane in enumerate(lanes) if lane == cp.id]
        if not mine:
            free = [i for i, lane in enumerate(lanes) if lane is None]
            col = free[0] if free else len(lanes)
            if col == len(lanes):
                lanes.append(cp.id)
            else:
                lanes[col] = cp.id
            mine = [col]
        col, joining = mine[0], mine[1:]
        if joining:  # several children of this checkpoint: their lanes join here
            for i in joining:
                lanes[i] = None
            rows.append((_connector(lanes, col, joining), None))
        rows.append((_cells(lanes, {col: "*"}), cp))
        lanes[col] = cp.parent_id
        if cp.merge_parent_id:
            before = len(lanes)
            lanes.insert(col + 1, cp.merge_parent_id)
            rows.append((_merge_row(before, col, lanes), None))
        while lanes and lanes[-1] is None:
            lanes.pop()
    return rows


def _cells(lanes: Sequence[str | None], marks: Mapping[int, str]) -> str:
    return " ".join(marks.get(i, "|" if lane is not None else " ") for i, lane in enumerate(lanes)).rstrip()


def _connector(lanes: Sequence[str | None], col: int, joining: Sequence[int]) -> str:
    chars = [" "] * (2 * max(len(lanes), max(joining) + 1))
    for i, lane in enumerate(lanes):
        if lane is not None or i == col:
            chars[2 * i] = "|"
    for i in joining:
        chars[2 * i - 1] = "/"
    return "".join(chars).rstrip()


def _merge_row(before: int, col: int, lanes: Sequence[str | None]) -> str:
    chars = [" "] * (2 * (before + 1))
    for i in range(before):
        if i <= col:
            chars[2 * i] = "|" if lanes[i] is not None or i == col else " "
        elif lanes[i + 1] is not None:
            chars[2 * i + 1] = "\\"
    chars[2 * col + 1] = "\\"
    return "".join(chars).rstrip()


# ---------------------------------------------------------------- diff


def dumps(value: Any) -> str:
    """Compact JSON of a value (repr for what JSON lacks)."""
    return json.dumps(value, ensure_ascii=False, default=repr)


def _short(value: Any, limit: int = 120) -> str:
    text = dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def diff_lines(diff: StateDiff) -> list[str]:
    """Rich markup lines: + added, - removed, ~ changed (lists item by item)."""
    lines: list[str] = []
    for key, value in diff.added.items():
        lines.append(f"[green]+ {escape(key)}: {escape(_short(value))}[/green]")
    for key, value in diff.removed.items():
        lines.append(f"[red]- {escape(key)}: {escape(_short(value))}[/red]")
    for key, (old, new) in diff.changed.items():
        change = diff.lists.get(key)
        if change is None:
            lines.append(f"[yellow]~ {escape(key)}:[/yellow]")
            lines.append(f"[red]    - {escape(_short(old))}[/red]")
            lines.append(f"[green]    + {escape(_short(new))}[/green]")
            continue
        lines.append(f"[yellow]~ {escape(key)}: list, first {change.common} items unchanged[/yellow]")
        for n, item in enumerate(change.removed, change.common):
            lines.append(f"[red]    - [{n}] {escape(_short(item))}[/red]")
        for n, item in enumerate(change.appended, change.common):
            lines.append(f"[green]    + [{n}] {escape(_short(item))}[/green]")
    if diff.unchanged:
        lines.append(f"[dim]  unchanged: {escape(', '.join(diff.unchanged))}[/dim]")
    return lines


# ---------------------------------------------------------------- tables and charts


def make_table(title: str) -> Table:
    """The look of every table: a title on the left, a rule under the header, no boxes."""
    return Table(
        title=escape(title), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, min_width=len(title)
    )


def figures(title: str, rows: Sequence[tuple[str, str]]) -> Table:
    table = make_table(title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, escape(value))
    return table


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def bar_chart(per_day: Sequence[tuple[date, int]], width: int = 40) -> list[str]:
    """One line per day: date, a bar proportional to the count, the count."""
    top = max((n for _, n in per_day), default=0)
    lines = []
    for day, n in per_day:
        length = round(width * n / top) if top else 0
        bar = "█" * length if length or not n else "▏"
        lines.append(f"{day.isoformat()} [cyan]{bar}[/cyan] {n}")
    return lines
