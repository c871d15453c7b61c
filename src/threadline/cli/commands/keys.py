"""Encryption keys of encrypted stores: key ring files, which keys the store uses, rotation.

A key ring is a JSON file (``KeyRing.to_json``) named by the global ``--keyring FILE``
option or ``$THREADLINE_KEYRING``. Rotation: ``keys add FILE`` adds a new active key to the
file, then ``keys rotate`` re-encrypts every stored value with it (online, resumable).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from threadline.cli import render
from threadline.cli.common import (
    JsonOption,
    app,
    cli_keyring,
    emit_json,
    err,
    open_cli_store,
    options,
    out,
    progress_bar,
    read_keyring,
    show_progress,
)
from threadline.errors import AlreadyExists, IntegrityError, InvalidInput
from threadline.serde import KeyRing
from threadline.store import Store

keys_app = typer.Typer(
    name="keys",
    help="Key rings of encrypted stores: generate, add a key, status, rotate.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(keys_app)

FileArgument = Annotated[
    Path, typer.Argument(metavar="FILE", help="The key ring file (JSON; keep it secret).")
]


def _write_private(file: Path, ring: KeyRing, *, replace: bool) -> None:
    """Write a key ring readable by its owner only (0600); atomically when it replaces a file."""
    data = (ring.to_json() + "\n").encode()
    if not replace:
        try:
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise AlreadyExists(
                f"{str(file)!r} already exists; add a key to it with: threadline keys add {file}"
            ) from None
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        return
    fd, temp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")  # created 0600
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, file)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


@keys_app.command("generate")
def generate(file: FileArgument, as_json: JsonOption = False) -> None:
    """Write a new key ring (one random key and a hash key) to FILE, readable by you only."""
    ring = KeyRing.generate()
    _write_private(file, ring, replace=False)
    if as_json:
        emit_json({"file": str(file), "active": ring.active, "keys": sorted(ring.keys)})
        return
    out.print(
        f"wrote key ring {escape(str(file))} (key {ring.active}, mode 0600); keep it secret and backed up",
        soft_wrap=True,
    )
    out.print(
        f"use it with: threadline --keyring {escape(str(file))} ...  (or THREADLINE_KEYRING={escape(str(file))})",
        soft_wrap=True,
    )


@keys_app.command("add")
def add(file: FileArgument, as_json: JsonOption = False) -> None:
    """Add a new random key to the key ring FILE and make it the active one (old keys stay)."""
    ring = read_keyring(file).rotated()
    _write_private(file, ring, replace=True)
    if as_json:
        emit_json({"file": str(file), "active": ring.active, "keys": sorted(ring.keys)})
        return
    out.print(
        f"added key {ring.active} to {escape(str(file))}; it encrypts new values from now on "
        f"(keys: {', '.join(map(str, sorted(ring.keys)))})",
        soft_wrap=True,
    )
    out.print(
        f"re-encrypt what is stored with: threadline --keyring {escape(str(file))} keys rotate",
        soft_wrap=True,
    )


def _require_keyring() -> KeyRing:
    ring = cli_keyring()
    if ring is None:
        raise InvalidInput(
            "no key ring: pass --keyring FILE (or set THREADLINE_KEYRING) to name the store's keys"
        )
    return ring


def _check_readable(store: Store) -> None:
    problems = store.checkpoints.unreadable_keys()
    if problems:
        detail = "; ".join(f"key {kid}: {why}" for kid, why in sorted(problems.items()))
        raise IntegrityError(
            f"the key ring {str(options.keyring)!r} cannot read this store ({detail}); "
            "is it the store's key ring?"
        )


@keys_app.command("status")
def status(as_json: JsonOption = False) -> None:
    """Which keys encrypt the stored values (frames per key id); exit 1 if the key ring cannot read them."""
    ring = cli_keyring()
    with open_cli_store() as store:
        in_use = store.checkpoints.keys_in_use()
        problems = store.checkpoints.unreadable_keys() if ring is not None else {}
        if as_json:
            emit_json(
                {
                    "active": ring.active if ring else None,
                    "keyring": sorted(ring.keys) if ring else None,
                    "frames": {
                        ("none" if k is None else str(k)): n for k, n in sorted(in_use.items(), key=_order)
                    },
                    "unreadable": {str(k): why for k, why in sorted(problems.items())},
                    "rotation_needed": ring is not None
                    and any(k is not None and k != ring.active for k in in_use),
                }
            )
        else:
            table = render.make_table(f"keys of {store.url}")
            table.add_column("key")
            table.add_column("frames", justify="right")
            table.add_column("")
            for kid, frames in sorted(in_use.items(), key=_order):
                if kid is None:
                    name, note = "none", "stored unencrypted"
                else:
                    name = str(kid)
                    note = (
                        f"[red]unreadable: {escape(problems[kid])}[/red]"
                        if kid in problems
                        else "active"
                        if ring is not None and kid == ring.active
                        else "in the key ring"
                        if ring is not None and kid in ring.keys
                        else "[red]not in the key ring[/red]"
                        if ring is not None
                        else "[red]no key ring given[/red]"
                    )
                table.add_row(name, f"{frames:,}", note)
            out.print(table)
            if ring is None:
                out.print("no key ring given (--keyring FILE or THREADLINE_KEYRING)", soft_wrap=True)
            elif not problems and any(k is not None and k != ring.active for k in in_use):
                out.print(
                    f"values under older keys remain; re-encrypt them with key {ring.active}: threadline keys rotate",
                    soft_wrap=True,
                )
    if problems:
        raise SystemExit(1)


def _order(item: tuple[int | None, int]) -> int:
    return -1 if item[0] is None else item[0]


@keys_app.command("rotate")
def rotate(as_json: JsonOption = False) -> None:
    """Re-encrypt every stored value with the key ring's active key (online; resumable if interrupted).

    Add the new key to the key ring file first: threadline keys add FILE.
    """
    ring = _require_keyring()
    with open_cli_store() as store:
        _check_readable(store)
        try:
            with progress_bar("rotate", show_progress(as_json)) as progress:
                changed = store.checkpoints.rotate_keys(progress=progress)
        except KeyboardInterrupt:
            err.print(
                "interrupted; what was re-encrypted stays so (each batch is complete): "
                "run threadline keys rotate again to finish",
                soft_wrap=True,
            )
            raise typer.Exit(130) from None
        in_use = store.checkpoints.keys_in_use()
        if as_json:
            emit_json(
                {
                    "active": ring.active,
                    "reencrypted": changed,
                    "frames": {
                        ("none" if k is None else str(k)): n for k, n in sorted(in_use.items(), key=_order)
                    },
                }
            )
            return
        total = sum(n for k, n in in_use.items() if k is not None)
        if changed:
            out.print(
                f"re-encrypted {changed:,} value(s) with key {ring.active}; {total:,} encrypted value(s) in the store",
                soft_wrap=True,
            )
        else:
            out.print(
                f"nothing to do: every encrypted value ({total:,}) already uses key {ring.active}",
                soft_wrap=True,
            )
        if None in in_use:
            out.print(
                f"{in_use[None]:,} value(s) were stored before encryption was turned on and stay unencrypted",
                soft_wrap=True,
            )
