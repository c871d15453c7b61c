"""One module per group of commands; importing a module registers its commands on ``app``.

To add commands (sessions, policies, sync points, cleanup, importers), add a
module here that decorates functions with ``@app.command()`` (or adds a typer
sub-app) and list it below.
"""

from __future__ import annotations

from threadline.cli.commands import backup, demo, edit, inspect, maintenance, stats

__all__ = ["backup", "demo", "edit", "inspect", "maintenance", "stats"]
