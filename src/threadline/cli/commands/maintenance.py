"""Keeping a store healthy: integrity check and schema migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlsplit

from rich.markup import escape

from threadline.cli.common import (
    JsonOption,
    app,
    emit_json,
    open_cli_store,
    out,
    progress_bar,
    show_progress,
    store_url,
)


@app.command()
def check(as_json: JsonOption = False) -> None:
    """Verify every checkpoint of every thread (hashes, checksums, lineage); exit 1 on problems."""
    with open_cli_store() as store:
        totals = store.checkpoints.stats()
        with progress_bar("check", show_progress(as_json)) as progress:
            problems = store.checkpoints.check(progress=progress)
        if as_json:
            emit_json(
                {
                    "ok": not problems,
                    "threads": totals.threads,
                    "checkpoints": totals.checkpoints,
                    "problems": problems,
                }
            )
        elif problems:
            out.print(f"[red]{len(problems)} problem(s) in {store.url}:[/red]")
            for problem in problems:
                out.print(f"  {escape(problem)}", soft_wrap=True)
        else:
            out.print(f"ok: {totals.checkpoints} checkpoints in {totals.threads} threads verified")
    if problems:
        raise SystemExit(1)


def _sqlite_version_on_disk(url: str) -> int | None:
    """The schema version a SQLite store file records, read without changing it
    (None: no such file, or not a SQLite URL; opening would create it)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite" or parts.netloc:
        return None
    file = Path(unquote(parts.path[1:] if parts.path.startswith("/") else parts.path))
    if not file.is_file():
        return None
    try:
        conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM threadline_meta WHERE key = 'schema_version'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return 0  # not (yet) a threadline store: opening it says what is wrong
    return int(row[0]) if row else 0


@app.command()
def migrate(as_json: JsonOption = False) -> None:
    """Apply schema migrations explicitly (opening a store also does) and report the versions."""
    before = _sqlite_version_on_disk(store_url())
    with open_cli_store() as store:
        after = store.repository.schema_version()
        latest = store.repository.latest_schema_version()
        if as_json:
            emit_json(
                {
                    "store": store.url,
                    "before": before,
                    "after": after,
                    "latest": latest,
                    "migrated": before is not None and before != after,
                }
            )
        elif before is None:
            out.print(f"{escape(store.url)}: schema version {after} (latest {latest})")
        elif before == after:
            out.print(f"{escape(store.url)}: schema version {after}, already up to date")
        else:
            out.print(f"{escape(store.url)}: migrated schema version {before} -> {after}")
