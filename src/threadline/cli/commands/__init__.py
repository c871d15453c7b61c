"""One module per group of commands; importing a module registers its commands on ``app``.

To add commands, add a module here that decorates functions with ``@app.command()``
(or adds a typer sub-app) and list it below. The order of the list is the order of
``threadline --help``.
"""

from __future__ import annotations

from threadline.cli.commands import (
    backup,
    demo,
    edit,
    importers,
    inspect,
    keys,
    maintenance,
    sessions,
    stats,
)

__all__ = ["backup", "demo", "edit", "importers", "inspect", "keys", "maintenance", "sessions", "stats"]
