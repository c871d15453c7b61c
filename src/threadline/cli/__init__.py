"""The ``threadline`` command line (typer + rich).

``common.py`` holds what every command shares (global options, opening the store
with its key ring, errors and exit codes, JSON output, progress bars); ``resolve.py``
turns command-line references into objects with helpful errors; ``render.py`` draws
(log graph, diffs, bar charts); ``documents.py`` builds the ``--json`` documents;
``durations.py`` parses ``7d``-style durations; ``commands/`` has one module per group
of commands, each registering itself on ``app``.
"""

from __future__ import annotations

from threadline.cli import commands as _commands  # noqa: F401 - registers the commands
from threadline.cli.common import app, main

__all__ = ["app", "main"]
