"""Import LangGraph checkpoint databases (SqliteSaver, PostgresSaver) into a threadline store.

Every checkpoint (with its metadata, parent and pending writes) is written through
:meth:`ThreadlineSaver.write_checkpoint`, so imported threads look exactly like threads the
saver wrote: forks become branches, subgraph namespaces become linked threads.

Safety: source values are decoded by this module, never by LangGraph's serializer. Only the
types of the allowlist (:mod:`threadline.langgraph.types`, plus the standard library types
LangGraph encodes) are rebuilt; a pickled value, a value of an unknown class or any other
encoding is *reported* for its checkpoint and the checkpoint is skipped, unless
``allow_opaque=True``, which imports it with those values kept as :class:`Opaque` records
(their raw bytes, never executed or imported).

Re-running an import writes only what is new (checkpoints already present are skipped; their
new pending writes are added). With ``verify=True`` every checkpoint imported by this run is
read back through the saver and compared with the source read through LangGraph's own saver
(strict allowlist mode).
"""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import ipaddress
import json
import pathlib
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import ormsgpack
from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple

from threadline.errors import InvalidInput
from threadline.langgraph.saver import ThreadlineSaver, thread_key
from threadline.langgraph.types import LANGCHAIN_MODELS, LANGGRAPH_DATACLASSES
from threadline.storage.base import PendingWrite

#: progress(done, total): called after each source checkpoint.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Opaque:
    """A source value threadline would not rebuild, kept as its raw encoding."""

    encoding: str  # "pickle", "msgpack-ext:5", ...
    type_name: str  # "module.Class" when the encoding names one, else ""
    data: bytes


@dataclass(frozen=True)
class Problem:
    """Why a source checkpoint was skipped (or imported with opaque values)."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    reasons: tuple[str, ...]


@dataclass
class ImportReport:
    """What an import did."""

    source: str
    seen: int = 0
    imported: int = 0
    already_present: int = 0
    writes: int = 0
    skipped: list[Problem] = field(default_factory=list)
    opaque: list[Problem] = field(default_factory=list)
    verified: int = 0
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.skipped and not self.mismatches


class _Unsafe(Exception):
    pass


@dataclass
class _SourceWrite:
    task_id: str
    idx: int
    channel: str
    type: str | None
    data: bytes | None
    task_path: str


@dataclass
class _SourceCheckpoint:
    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_id: str | None
    checkpoint: tuple[str | None, bytes | None] | dict[str, Any]
    blobs: dict[str, tuple[str | None, bytes | None]]  # PostgresSaver: channel -> typed value
    metadata: Any
    writes: list[_SourceWrite]


# ---------------------------------------------------------------- safe decoding


def _allowed_classes() -> dict[tuple[str, str], Any]:
    """(module, class name) as LangGraph writes them -> the class, for the allowlist only."""
    import importlib

    classes: list[Any] = [
        uuid.UUID,
        decimal.Decimal,
        set,
        frozenset,
        collections.deque,
        dt.date,
        dt.timedelta,
        dt.time,
        dt.timezone,
        ZoneInfo,
        pathlib.Path,
        pathlib.PosixPath,
        pathlib.PurePosixPath,
        ipaddress.IPv4Address,
        ipaddress.IPv6Address,
        ipaddress.IPv4Network,
        ipaddress.IPv6Network,
        ipaddress.IPv4Interface,
        ipaddress.IPv6Interface,
    ]
    for _, module, name in LANGCHAIN_MODELS:
        classes.append(getattr(importlib.import_module(module), name))
    lg_types = importlib.import_module("langgraph.types")
    classes.extend(getattr(lg_types, name) for _, name in LANGGRAPH_DATACLASSES)
    classes.append(lg_types.Send)
    table = {(c.__module__, c.__name__): c for c in classes}
    table[("pathlib._local", "PosixPath")] = pathlib.PosixPath
    table[("pathlib._local", "Path")] = pathlib.Path
    return table


class SafeDecoder:
    """Decodes LangGraph's typed values ("msgpack", "json", "null", "bytes") rebuilding only
    allowlisted classes; anything else raises, or becomes :class:`Opaque` when allowed."""

    def __init__(self, *, allow_opaque: bool) -> None:
        self.allow_opaque = allow_opaque
        self.classes = _allowed_classes()
        self.problems: list[str] = []

    def typed(self, type_: str | None, data: bytes | None) -> Any:
        if type_ == "null" or (type_ is None and data is None):
            return None
        if type_ == "bytes":
            return bytes(data or b"")
        if type_ == "bytearray":
            return bytes(data or b"")
        if type_ == "msgpack":
            return self._unpack(data or b"")
        if type_ == "json":
            return json.loads(data or b"null", object_hook=self._lc_object)
        return self._opaque(str(type_), "", data or b"", f"values of type {type_!r} are never loaded")

    def _opaque(self, encoding: str, type_name: str, data: bytes, reason: str) -> Opaque:
        self.problems.append(reason)
        if not self.allow_opaque:
            raise _Unsafe(reason)
        return Opaque(encoding, type_name, bytes(data))

    def _unpack(self, data: bytes) -> Any:
        return ormsgpack.unpackb(data, ext_hook=self._ext, option=ormsgpack.OPT_NON_STR_KEYS)

    def _cls(self, module: str, name: str) -> Any:
        return self.classes.get((module, name))

    def _ext(self, code: int, data: bytes) -> Any:
        from langgraph.checkpoint.serde.types import _DeltaSnapshot

        unpack = self._unpack
        if code == 7:
            return _DeltaSnapshot(unpack(data))
        if code not in (0, 1, 2, 3, 4, 5):
            return self._opaque(f"msgpack-ext:{code}", "", data, f"msgpack extension {code} is not allowed")
        tup = unpack(data)
        module, name = str(tup[0]), str(tup[1])
        if code == 3:
            if (module, name, tup[3]) == ("datetime", "datetime", "fromisoformat"):
                return dt.datetime.fromisoformat(tup[2])
            return self._opaque(
                f"msgpack-ext:{code}", f"{module}.{name}", data, f"{module}.{name} is not allowed"
            )
        cls = self._cls(module, name)
        if cls is None:
            return self._opaque(
                f"msgpack-ext:{code}",
                f"{module}.{name}",
                data,
                f"type {module}.{name} is not in the allowlist",
            )
        if code == 0:
            return cls(tup[2])
        if code == 1:
            if name == "Send":
                args = tup[2]
                return cls(args[0], args[1], timeout=args[2] if len(args) > 2 else None)
            return cls(*tup[2])
        try:
            return cls(**tup[2])
        except Exception:
            if hasattr(cls, "model_construct"):
                return cls.model_construct(**tup[2])
            raise

    def _lc_object(self, obj: dict[str, Any]) -> Any:
        if obj.get("lc") in (1, 2) and obj.get("type") == "constructor" and isinstance(obj.get("id"), list):
            parts = [str(p) for p in obj["id"]]
            module, name = ".".join(parts[:-1]), parts[-1]
            cls = self._cls(module, name) or self._by_name(name, module)
            if cls is None:
                return self._opaque(
                    "json", f"{module}.{name}", json.dumps(obj).encode(), f"{module}.{name} is not allowed"
                )
            return cls(**obj.get("kwargs", {}))
        return obj

    def _by_name(self, name: str, module: str) -> Any:
        # langchain's json ids use public paths (langchain.schema.messages.AIMessage)
        if module.startswith(("langchain", "langchain_core")):
            for (_, cls_name), cls in self.classes.items():
                if cls_name == name and cls.__module__.startswith("langchain_core"):
                    return cls
        return None


# ---------------------------------------------------------------- sources


class _Source:
    name: str

    def count(self) -> int:
        raise NotImplementedError

    def checkpoints(self) -> Iterator[_SourceCheckpoint]:
        raise NotImplementedError

    def saver(self) -> BaseCheckpointSaver[Any]:
        """LangGraph's own saver over the source, in strict allowlist mode (for verification)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _strict_serde() -> Any:
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    return JsonPlusSerializer(allowed_msgpack_modules=list(_allowed_classes()))


class SqliteSource(_Source):
    """A langgraph-checkpoint-sqlite database, opened read-only."""

    def __init__(self, path: str) -> None:
        self.name = f"sqlite:{path}"
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0])

    def checkpoints(self) -> Iterator[_SourceCheckpoint]:
        rows = self.conn.execute(
            "SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata "
            "FROM checkpoints ORDER BY thread_id, checkpoint_ns, checkpoint_id"
        )
        for tid, ns, cid, parent, type_, blob, meta in rows:
            writes = [
                _SourceWrite(*w)
                for w in self.conn.execute(
                    "SELECT task_id, idx, channel, type, value, task_path FROM writes "
                    "WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ? ORDER BY task_id, idx",
                    (tid, ns, cid),
                )
            ]
            yield _SourceCheckpoint(tid, ns, cid, parent, (type_, blob), {}, meta, writes)

    def saver(self) -> BaseCheckpointSaver[Any]:
        from langgraph.checkpoint.sqlite import SqliteSaver

        return SqliteSaver(self.conn, serde=_strict_serde())

    def close(self) -> None:
        self.conn.close()


class PostgresSource(_Source):
    """A langgraph-checkpoint-postgres database."""

    def __init__(self, url: str) -> None:
        import psycopg
        from psycopg.rows import dict_row

        self.name = "postgresql:" + url.split("@")[-1]
        self.conn = psycopg.connect(url, autocommit=True, prepare_threshold=0, row_factory=dict_row)

    def count(self) -> int:
        row = self.conn.execute("SELECT count(*) AS n FROM checkpoints").fetchone()
        return int(row["n"]) if row else 0

    def checkpoints(self) -> Iterator[_SourceCheckpoint]:
        cur = self.conn.cursor()
        rows = cur.execute(
            "SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata "
            "FROM checkpoints ORDER BY thread_id, checkpoint_ns, checkpoint_id"
        ).fetchall()
        for r in rows:
            checkpoint = dict(r["checkpoint"])
            versions = checkpoint.get("channel_versions", {})
            blobs: dict[str, tuple[str | None, bytes | None]] = {}
            for b in self.conn.execute(
                "SELECT channel, version, type, blob FROM checkpoint_blobs "
                "WHERE thread_id = %s AND checkpoint_ns = %s",
                (r["thread_id"], r["checkpoint_ns"]),
            ):
                version = versions.get(b["channel"])
                if version is not None and str(version) == b["version"] and b["type"] != "empty":
                    blobs[b["channel"]] = (b["type"], bytes(b["blob"]) if b["blob"] is not None else None)
            writes = [
                _SourceWrite(
                    w["task_id"],
                    w["idx"],
                    w["channel"],
                    w["type"],
                    bytes(w["blob"]) if w["blob"] else None,
                    w.get("task_path") or "",
                )
                for w in self.conn.execute(
                    "SELECT * FROM checkpoint_writes WHERE thread_id = %s AND checkpoint_ns = %s "
                    "AND checkpoint_id = %s ORDER BY task_id, idx",
                    (r["thread_id"], r["checkpoint_ns"], r["checkpoint_id"]),
                )
            ]
            yield _SourceCheckpoint(
                r["thread_id"],
                r["checkpoint_ns"],
                r["checkpoint_id"],
                r["parent_checkpoint_id"],
                checkpoint,
                blobs,
                r["metadata"],
                writes,
            )

    def saver(self) -> BaseCheckpointSaver[Any]:
        from langgraph.checkpoint.postgres import PostgresSaver

        return PostgresSaver(self.conn, serde=_strict_serde())

    def close(self) -> None:
        self.conn.close()


def open_source(source: str) -> _Source:
    """``sqlite:///path.db`` / a file path, or ``postgresql://...``."""
    if source.startswith(("postgresql://", "postgres://")):
        return PostgresSource(source)
    path = source[len("sqlite:///") :] if source.startswith("sqlite:///") else source
    if not pathlib.Path(path).is_file():
        raise InvalidInput(f"LangGraph SQLite database {path!r} does not exist")
    return SqliteSource(path)


# ---------------------------------------------------------------- the import


def _decode(src: _SourceCheckpoint, decoder: SafeDecoder) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    if isinstance(src.checkpoint, dict):  # PostgresSaver: inline primitives + blobs per channel
        checkpoint = dict(src.checkpoint)
        values = dict(checkpoint.get("channel_values") or {})
        for channel, (type_, data) in src.blobs.items():
            values[channel] = decoder.typed(type_, data)
        checkpoint["channel_values"] = values
    else:
        checkpoint = decoder.typed(*src.checkpoint)
    meta = src.metadata
    if isinstance(meta, bytes | str):
        meta = json.loads(meta)
    writes = [decoder.typed(w.type, w.data) for w in src.writes]
    return checkpoint, dict(meta or {}), writes


def import_langgraph(
    source: str,
    target: ThreadlineSaver,
    *,
    allow_opaque: bool = False,
    verify: bool = True,
    progress: Progress | None = None,
) -> ImportReport:
    """Import a LangGraph SQLite or PostgreSQL checkpoint database into ``target``'s store.

    Returns a report: counts, the checkpoints skipped (with reasons) or imported with
    opaque values, and verification mismatches. Safe to re-run: only what is new is written.
    """
    src = open_source(source)
    target.serializer.register_dataclass(Opaque, "threadline.Opaque")  # idempotent
    report = ImportReport(source=src.name)
    imported: list[tuple[str, str, str]] = []
    try:
        total = src.count()
        for item in src.checkpoints():
            report.seen += 1
            _import_one(item, target, allow_opaque, report, imported)
            if progress is not None:
                progress(report.seen, total)
        if verify and imported:
            _verify(src.saver(), target, imported, report)
    finally:
        src.close()
    return report


def _import_one(
    item: _SourceCheckpoint,
    target: ThreadlineSaver,
    allow_opaque: bool,
    report: ImportReport,
    imported: list[tuple[str, str, str]],
) -> None:
    decoder = SafeDecoder(allow_opaque=allow_opaque)
    where = (item.thread_id, item.checkpoint_ns, item.checkpoint_id)
    try:
        checkpoint, metadata, values = _decode(item, decoder)
    except _Unsafe:
        report.skipped.append(Problem(*where, tuple(decoder.problems)))
        return
    clean = not decoder.problems
    if not clean:
        report.opaque.append(Problem(*where, tuple(decoder.problems)))
    checkpoint["id"] = item.checkpoint_id
    new = target.write_checkpoint(item.thread_id, item.checkpoint_ns, item.parent_id, checkpoint, metadata)  # type: ignore[arg-type]
    if new:
        report.imported += 1
        if clean:  # opaque values cannot equal what LangGraph's saver would rebuild
            imported.append(where)
    else:
        report.already_present += 1
    ser = target.serializer
    writes = [
        PendingWrite(
            w.task_id, w.idx, w.channel, ser.pack(ser.dumps(v, path=f"writes[{w.channel!r}]")), w.task_path
        )
        for w, v in zip(item.writes, values, strict=True)
    ]
    target.store_writes(
        thread_key(item.thread_id, item.checkpoint_ns), item.checkpoint_id, writes, upsert=False
    )
    report.writes += len(writes)


def _comparable(tup: CheckpointTuple | None) -> Any:
    if tup is None:
        return None
    cp = tup.checkpoint
    parent = tup.parent_config["configurable"].get("checkpoint_id") if tup.parent_config else None
    return (
        cp["id"],
        cp["channel_values"],
        {k: str(v) for k, v in cp["channel_versions"].items()},
        {n: {k: str(v) for k, v in seen.items()} for n, seen in cp["versions_seen"].items()},
        dict(tup.metadata),
        parent,
        sorted((w[0], w[1], repr(w[2])) for w in tup.pending_writes or []),
    )


def _verify(
    source: BaseCheckpointSaver[Any],
    target: ThreadlineSaver,
    imported: Sequence[tuple[str, str, str]],
    report: ImportReport,
) -> None:
    for tid, ns, cid in imported:
        config: Mapping[str, Any] = {
            "configurable": {"thread_id": tid, "checkpoint_ns": ns, "checkpoint_id": cid}
        }
        expected = _comparable(source.get_tuple(config))  # type: ignore[arg-type]
        actual = _comparable(target.get_tuple(config))  # type: ignore[arg-type]
        if expected == actual:
            report.verified += 1
        else:
            report.mismatches.append(f"{tid}/{ns or '-'}/{cid}: imported checkpoint differs from the source")


__all__ = ["ImportReport", "Opaque", "Problem", "SafeDecoder", "import_langgraph", "open_source"]
