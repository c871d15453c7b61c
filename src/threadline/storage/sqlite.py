"""SQLite backend: the embedded default.

WAL journal, ``synchronous=FULL`` by default (each acknowledged write is
fsynced; ``?synchronous=normal`` trades power-loss durability for speed),
``auto_vacuum=INCREMENTAL`` so cleanup can give disk space back. One connection
per OS thread. Writers take the write lock with ``BEGIN IMMEDIATE`` and retry
on SQLITE_BUSY with short jittered sleeps of our own instead of SQLite's busy
handler, whose long sleeps stall some writers for a second under contention.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import ormsgpack

from threadline.errors import (
    AlreadyExists,
    Conflict,
    IntegrityError,
    InvalidInput,
    NotFound,
    SchemaError,
    StaleReference,
    StorageError,
)
from threadline.model import (
    DEFAULT_BRANCH,
    KIND_CODES,
    KINDS_BY_CODE,
    STATUS_CODES,
    STATUSES_BY_CODE,
    CheckpointKind,
    CheckpointStatus,
    checkpoint_id_bytes,
    checkpoint_id_from_bytes,
    new_checkpoint_id,
    random_bits,
)
from threadline.storage.base import (
    MAX_LIST_DEPTH,
    UNSET,
    BranchRow,
    CheckpointRepository,
    CheckpointRow,
    CheckpointWrite,
    GcReport,
    InlineRef,
    ItemRows,
    LifecycleUpdate,
    ListAppend,
    ListInfo,
    ListRef,
    NewBlob,
    PendingWrite,
    RowQuery,
    SessionRow,
    StatsRow,
    SyncPointRow,
    ThreadRow,
    branch_deletion,
    decode_manifest,
    encode_manifest,
    manifest_refs,
    nearest_survivor,
    plan_list_gc,
    relink,
    rewrite_list_ids,
)

R = TypeVar("R")

APPLICATION_ID = 0x546C6E31  # "Tln1": marks a file as a threadline store

_CHECKPOINT_COLUMNS = (
    "id, tkey, bkey, parent, merge_parent, kind, status, created_at, expires_at, restore_count, "
    "logical_size, stored_size, milestone, header, manifest"
)


def _checkpoints_table(name: str, key: str) -> str:
    """The checkpoints table (its columns are the same in every schema version)."""
    return f"""CREATE TABLE {name} (
                id BLOB NOT NULL,
                tkey INTEGER NOT NULL,
                bkey INTEGER NOT NULL,
                parent BLOB,
                merge_parent BLOB,
                kind INTEGER NOT NULL,
                status INTEGER NOT NULL DEFAULT 0,
                created_at INTEGER NOT NULL,
                expires_at INTEGER,
                restore_count INTEGER NOT NULL DEFAULT 0,
                logical_size INTEGER NOT NULL,
                stored_size INTEGER NOT NULL,
                milestone TEXT,
                header BLOB NOT NULL,
                manifest BLOB NOT NULL,
                PRIMARY KEY ({key})
            ) WITHOUT ROWID"""


MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE threadline_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
            """CREATE TABLE threads (
                tkey INTEGER PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                created_at INTEGER NOT NULL,
                session_id TEXT,
                metadata BLOB NOT NULL,
                default_branch TEXT NOT NULL DEFAULT 'main',
                origin BLOB
            )""",
            "CREATE INDEX threads_by_session ON threads (session_id, id) WHERE session_id IS NOT NULL",
            """CREATE TABLE branches (
                bkey INTEGER PRIMARY KEY,
                tkey INTEGER NOT NULL,
                name TEXT NOT NULL,
                head BLOB,
                created_at INTEGER NOT NULL,
                base BLOB,
                UNIQUE (tkey, name)
            )""",
            _checkpoints_table("checkpoints", "id, tkey"),
            "CREATE INDEX checkpoints_by_thread ON checkpoints (tkey, id)",
            "CREATE UNIQUE INDEX checkpoints_milestone ON checkpoints (tkey, milestone) "
            "WHERE milestone IS NOT NULL",
            "CREATE INDEX checkpoints_expiry ON checkpoints (expires_at) WHERE expires_at IS NOT NULL",
            """CREATE TABLE blobs (
                bkey INTEGER PRIMARY KEY,
                hash BLOB NOT NULL UNIQUE,
                data BLOB NOT NULL
            )""",
            """CREATE TABLE thread_blobs (
                tkey INTEGER NOT NULL,
                hash BLOB NOT NULL,
                PRIMARY KEY (tkey, hash)
            ) WITHOUT ROWID""",
            "CREATE INDEX thread_blobs_by_hash ON thread_blobs (hash)",
            """CREATE TABLE lists (
                list_id INTEGER PRIMARY KEY,
                tkey INTEGER NOT NULL,
                base_id INTEGER,
                base_len INTEGER NOT NULL DEFAULT 0,
                depth INTEGER NOT NULL DEFAULT 0,
                sealed INTEGER NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX lists_by_thread ON lists (tkey)",
            "CREATE INDEX lists_by_base ON lists (base_id) WHERE base_id IS NOT NULL",
            """CREATE TABLE items (
                list_id INTEGER NOT NULL,
                pos INTEGER NOT NULL,
                crc INTEGER NOT NULL,
                data BLOB NOT NULL
            )""",
            "CREATE UNIQUE INDEX items_by_list ON items (list_id, pos)",
        ],
    ),
    (
        2,
        [
            """CREATE TABLE participants (
                tkey INTEGER NOT NULL,
                principal TEXT NOT NULL,
                role TEXT NOT NULL,
                PRIMARY KEY (tkey, principal)
            ) WITHOUT ROWID""",
        ],
    ),
    (
        3,
        [
            "ALTER TABLE threads ADD COLUMN policy BLOB",
            """CREATE TABLE sessions (
                id TEXT PRIMARY KEY,
                created_at INTEGER NOT NULL,
                metadata BLOB NOT NULL,
                owner TEXT,
                status TEXT NOT NULL DEFAULT 'active',
                policy BLOB
            ) WITHOUT ROWID""",
            """CREATE TABLE sync_points (
                session_id TEXT NOT NULL,
                label TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                members BLOB NOT NULL,
                metadata BLOB NOT NULL DEFAULT x'',
                PRIMARY KEY (session_id, label)
            ) WITHOUT ROWID""",
            """CREATE TABLE pending_writes (
                tkey INTEGER NOT NULL,
                checkpoint BLOB NOT NULL,
                task_id TEXT NOT NULL,
                idx INTEGER NOT NULL,
                channel TEXT NOT NULL,
                value BLOB NOT NULL,
                task_path TEXT NOT NULL DEFAULT '',
                PRIMARY KEY (tkey, checkpoint, task_id, idx)
            ) WITHOUT ROWID""",
        ],
    ),
    (
        # Checkpoints clustered by thread: a thread's rows share pages, so deleting or
        # listing a thread touches a few pages instead of one page per checkpoint (writes
        # round-robin over threads spread a thread's rows over every page). Lookups by id
        # alone go through the id index. Puts still write one table leaf and one index leaf.
        4,
        [
            _checkpoints_table("checkpoints_v4", "tkey, id"),
            f"INSERT INTO checkpoints_v4 ({_CHECKPOINT_COLUMNS}) "
            f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY tkey, id",
            "DROP TABLE checkpoints",
            "ALTER TABLE checkpoints_v4 RENAME TO checkpoints",
            "CREATE INDEX checkpoints_by_id ON checkpoints (id)",
            "CREATE UNIQUE INDEX checkpoints_milestone ON checkpoints (tkey, milestone) "
            "WHERE milestone IS NOT NULL",
            "CREATE INDEX checkpoints_expiry ON checkpoints (expires_at) WHERE expires_at IS NOT NULL",
        ],
    ),
]

#: The schema version this module writes (the last migration's).
SCHEMA_VERSION = MIGRATIONS[-1][0]

_BUSY_DEADLINE_S = 60.0
#: 8 KiB pages hold ten ~700-byte chat messages with little slack (4 KiB pages waste ~12%).
PAGE_SIZE = 8192


#: The background checkpointer wakes after this many commits of this process.
CHECKPOINT_EVERY_COMMITS = 32
#: Writers still run SQLite's auto-checkpoint past this many WAL pages (its default). By then
#: the background checkpointer has copied most pages, so the writer copies only the last few;
#: and a checkpoint that catches up with the writer is what lets the WAL restart from its
#: beginning (background checkpoints alone never catch up with a busy writer).
FALLBACK_AUTOCHECKPOINT_PAGES = 1000


_ListInfo = tuple[int, int | None, int, int, bool, int]


def _list_info_of(row: Sequence[Any] | None) -> _ListInfo | None:
    """(owner tkey, base id, base length, depth, sealed, length) from a row of
    (tkey, base_id, base_len, depth, sealed, max(pos)); None when the list is missing."""
    if row is None or row[0] is None:
        return None
    length = row[2] if row[5] is None else max(row[2], row[5] + 1)
    return (row[0], row[1], row[2], row[3], bool(row[4]), length)


class _Checkpointer:
    """Copies committed WAL pages into the database file off the writers' path.

    SQLite's auto-checkpoint runs inside the COMMIT of whichever write crosses the
    threshold: that write waits for hundreds of pages to be copied and the file to be
    synced. Writers wake this thread every ``CHECKPOINT_EVERY_COMMITS`` commits and it runs
    a PASSIVE checkpoint on its own connection, which never blocks readers or writers (it
    copies what no reader still needs and gives up on a busy lock); the writer's own
    auto-checkpoint then has only the last few pages to copy.
    Checkpoints are as crash-safe as SQLite's own: this only moves where they run.
    """

    def __init__(self, path: Path, synchronous: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.runs = 0

    def wake(self) -> None:
        with self._lock:
            if self._stopping:
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="threadline-checkpointer", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def _loop(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(str(self._path), check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                with contextlib.suppress(sqlite3.Error):  # busy: the next wake-up retries
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.runs += 1
        except sqlite3.Error:  # pragma: no cover - the file went away; writers fall back
            return
        finally:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(timeout=10)


class _Pending:
    """A write waiting for (or done by) a group commit."""

    __slots__ = ("done", "error", "fn", "lead", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn
        #: set when the write is done or this thread must lead; only a write that waits has one
        self.done: threading.Event | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.lead = False

    def value(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class SQLiteRepository(CheckpointRepository):
    """The storage contract on one SQLite file (or an existing connection)."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        connection: sqlite3.Connection | None = None,
        synchronous: str = "full",
    ) -> None:
        if (path is None) == (connection is None):
            raise InvalidInput("give SQLiteRepository exactly one of a path or a connection")
        if synchronous.lower() not in {"full", "normal", "extra"}:
            raise InvalidInput(f"synchronous must be full, normal or extra, got {synchronous!r}")
        self._synchronous = synchronous.upper()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        self._shared: sqlite3.Connection | None = None
        self._shared_lock = threading.RLock()
        self._group_lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._leading = False
        self._commits = 0
        self._checkpointer: _Checkpointer | None = None
        self.path: Path | None = None
        if connection is not None:
            self.url = "sqlite://(connection)"
            self._shared = connection
            self._configure(connection)
        else:
            p = Path(path)  # type: ignore[arg-type]
            if not p.parent.exists():
                raise InvalidInput(
                    f"cannot create store {str(p)!r}: directory {str(p.parent)!r} does not exist"
                )
            if p.is_dir():
                raise InvalidInput(f"cannot open store {str(p)!r}: it is a directory")
            self.path = p
            self.url = f"sqlite:///{p}"
            self._checkpointer = _Checkpointer(p, self._synchronous)
        self._migrate()

    # ------------------------------------------------------------ connections

    def _configure(self, conn: sqlite3.Connection) -> None:
        conn.isolation_level = None
        pragmas = [
            "PRAGMA busy_timeout = 0",
            f"PRAGMA synchronous = {self._synchronous}",
            "PRAGMA foreign_keys = OFF",
            "PRAGMA cache_size = -16000",
        ]
        if self._checkpointer is not None:
            pragmas.append(f"PRAGMA wal_autocheckpoint = {FALLBACK_AUTOCHECKPOINT_PAGES}")
        with self._translate():
            # A pragma may need to read the schema, which another process creating the
            # file can hold locked for a moment: retry BUSY like any other statement.
            for pragma in pragmas:
                self._retry(lambda pragma=pragma: conn.execute(pragma).fetchall())  # type: ignore[misc]

    def _set_journal(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("PRAGMA journal_mode").fetchone()
        if row and str(row[0]).lower() != "wal":
            self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StorageError(f"store {self.url} is closed")
        if self._shared is not None:
            return self._shared
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            assert self.path is not None
            with self._translate():
                conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._configure(conn)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        with self._lock:
            self._closed = True
            for conn in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()

    # ------------------------------------------------------------ errors and transactions

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        """The one place where sqlite3 errors become threadline errors."""
        try:
            yield
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"{self.url}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            text = str(exc)
            if "file is not a database" in text or "malformed" in text:
                raise SchemaError(
                    f"{self.url} is not a threadline store (not a valid SQLite database)"
                ) from exc
            raise StorageError(f"{self.url}: {text}") from exc

    @staticmethod
    def _is_busy(exc: sqlite3.OperationalError) -> bool:
        text = str(exc)
        return "locked" in text or "busy" in text

    def _retry(self, fn: Callable[[], R]) -> R:
        """Run ``fn``, retrying SQLITE_BUSY with short jittered sleeps."""
        delay = 0.0001
        deadline = time.monotonic() + _BUSY_DEADLINE_S
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not self._is_busy(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 1.5, 0.002)

    def _write(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        """Run ``fn`` in a write transaction (BEGIN IMMEDIATE ... COMMIT).

        Group commit: writes that threads of this process start while another
        transaction is committing are run together in the next transaction,
        each inside its own savepoint, so one fsync acknowledges all of them and
        a failing write rolls back alone. A single writer pays nothing for it.
        """
        if self._shared is not None:
            with self._shared_lock:
                result: R = self._run_batch([_Pending(fn)], self._shared)[0].value()
                return result
        self._refuse_in_snapshot("a write")
        item = _Pending(fn)
        with self._group_lock:
            lead = not self._leading
            if not lead:
                item.done = threading.Event()
            self._queue.append(item)
            self._leading = True
        if item.done is not None:
            item.done.wait()  # set when the write is done, or when this thread must lead
            if not item.lead:
                return item.value()  # type: ignore[no-any-return]
        with self._group_lock:
            batch, self._queue = self._queue, []
        self._run_batch(batch, self._conn())
        with self._group_lock:
            if self._queue:  # hand over to the oldest waiter; its write is in its own batch
                successor = self._queue[0]
                successor.lead = True
                assert successor.done is not None
                successor.done.set()
            else:
                self._leading = False
        return item.value()  # type: ignore[no-any-return]

    def _run_batch(self, batch: list[_Pending], conn: sqlite3.Connection) -> list[_Pending]:
        single = len(batch) == 1
        try:
            with self._translate():
                self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
                try:
                    for item in batch:
                        if single:
                            item.result = item.fn(conn)
                            continue
                        conn.execute("SAVEPOINT w")
                        try:
                            with self._translate():
                                item.result = item.fn(conn)
                        except BaseException as exc:
                            conn.execute("ROLLBACK TO w")
                            item.error = exc
                        conn.execute("RELEASE w")
                    self._retry(lambda: conn.execute("COMMIT"))
                    self._committed()
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except BaseException as exc:
            for item in batch:
                if item.error is None:
                    item.error = exc
        for item in batch:
            if not item.lead and item.done is not None:
                item.done.set()
        return batch

    def _committed(self) -> None:
        self._commits += 1
        if self._checkpointer is not None and self._commits % CHECKPOINT_EVERY_COMMITS == 0:
            self._checkpointer.wake()

    def _read(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        """Run ``fn`` on one consistent snapshot (the open :meth:`snapshot`'s, if any)."""
        conn = self._conn()
        lock = self._shared_lock if self._shared is not None else contextlib.nullcontext()
        with lock, self._translate():
            if self._shared is None and conn.in_transaction:  # inside snapshot() on this thread
                return fn(conn)
            self._retry(lambda: conn.execute("BEGIN"))
            try:
                return fn(conn)
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction for every read this thread makes inside the block."""
        conn = self._conn()
        if self._shared is not None or conn.in_transaction:  # shared connection, or nested
            yield
            return
        with self._translate():
            self._retry(lambda: conn.execute("BEGIN"))
        try:
            yield
        finally:
            if conn.in_transaction:
                with self._translate():
                    conn.execute("COMMIT")

    # ------------------------------------------------------------ schema

    def _migrate(self) -> None:
        conn = self._conn()
        with self._translate():
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if app_id != APPLICATION_ID and (app_id != 0 or tables):
            raise SchemaError(
                f"{self.url} is not a threadline store (it holds other data); refusing to use or change it"
            )
        current = self.schema_version() if tables else 0
        if current > SCHEMA_VERSION:
            raise SchemaError(
                f"{self.url} has schema version {current}, written by a newer threadline "
                f"(this one knows up to {SCHEMA_VERSION}); upgrade threadline to open it"
            )
        with self._translate():
            if not tables:  # both must be chosen before the first table (and WAL) exists
                self._retry(lambda: conn.execute(f"PRAGMA page_size = {PAGE_SIZE}"))
                self._retry(lambda: conn.execute("PRAGMA auto_vacuum = INCREMENTAL"))
            self._set_journal(conn)
        if current == SCHEMA_VERSION:
            return

        def apply(c: sqlite3.Connection) -> None:
            found = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = 0
            if "threadline_meta" in found:
                version = int(
                    c.execute("SELECT value FROM threadline_meta WHERE key = 'schema_version'").fetchone()[0]
                )
            for target, statements in MIGRATIONS:
                if target <= version:
                    continue
                for sql in statements:
                    c.execute(sql)
                c.execute(
                    "INSERT INTO threadline_meta (key, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(target),),
                )
            c.execute(f"PRAGMA application_id = {APPLICATION_ID}")

        self._write(apply)

    def latest_schema_version(self) -> int:
        return SCHEMA_VERSION

    def schema_version(self) -> int:
        def read(c: sqlite3.Connection) -> int:
            try:
                row = c.execute("SELECT value FROM threadline_meta WHERE key = 'schema_version'").fetchone()
            except sqlite3.OperationalError:
                return 0
            return int(row[0]) if row else 0

        return self._read(read)

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _tkey(c: sqlite3.Connection, thread_id: str) -> int:
        row = c.execute("SELECT tkey FROM threads WHERE id = ?", (thread_id,)).fetchone()
        if row is None:
            raise NotFound(f"thread {thread_id!r} does not exist")
        return int(row[0])

    @staticmethod
    def _thread_row(row: Sequence[Any]) -> ThreadRow:
        return ThreadRow(
            id=row[0],
            created_at=row[1],
            session_id=row[2],
            metadata=bytes(row[3]),
            default_branch=row[4],
            origin=bytes(row[5]) if row[5] is not None else None,
            policy=bytes(row[6]) if row[6] is not None else None,
        )

    _THREAD_COLS = "id, created_at, session_id, metadata, default_branch, origin, policy"
    _CP_COLS = (
        "c.id, t.id, b.name, c.parent, c.merge_parent, c.kind, c.status, c.created_at, c.expires_at, "
        "c.restore_count, c.logical_size, c.stored_size, c.header, c.manifest, c.milestone"
    )
    _CP_FROM = "checkpoints c JOIN threads t ON t.tkey = c.tkey JOIN branches b ON b.bkey = c.bkey"

    @staticmethod
    def _cp_row(row: Sequence[Any]) -> CheckpointRow:
        cid = checkpoint_id_from_bytes(row[0])
        return CheckpointRow(
            id=cid,
            thread_id=row[1],
            branch=row[2],
            parent_id=checkpoint_id_from_bytes(row[3]) if row[3] is not None else None,
            merge_parent_id=checkpoint_id_from_bytes(row[4]) if row[4] is not None else None,
            kind=KINDS_BY_CODE[row[5]],
            status=STATUSES_BY_CODE[row[6]],
            created_at=row[7],
            expires_at=row[8],
            restore_count=row[9],
            logical_size=row[10],
            stored_size=row[11],
            header=bytes(row[12]),
            manifest=decode_manifest(bytes(row[13]), cid),
            milestone=row[14],
        )

    @staticmethod
    def _list_info(c: sqlite3.Connection, list_id: int) -> _ListInfo | None:
        """(owner tkey, base id, base length, depth, sealed, length) of a list."""
        row = c.execute(
            "SELECT tkey, base_id, base_len, depth, sealed, "
            "(SELECT max(pos) FROM items WHERE items.list_id = lists.list_id) FROM lists WHERE list_id = ?",
            (list_id,),
        ).fetchone()
        return _list_info_of(row)

    @staticmethod
    def _list_length(c: sqlite3.Connection, list_id: int, base_len: int) -> int:
        top = c.execute("SELECT max(pos) FROM items WHERE list_id = ?", (list_id,)).fetchone()[0]
        return base_len if top is None else max(base_len, int(top) + 1)

    @staticmethod
    def _new_list_id(c: sqlite3.Connection) -> int:
        while True:
            candidate = random_bits(62) + 1
            if c.execute("SELECT 1 FROM lists WHERE list_id = ?", (candidate,)).fetchone() is None:
                return candidate

    def _segments(self, c: sqlite3.Connection, list_id: int, length: int) -> list[tuple[int, int, int]]:
        """(list id, first pos, end pos) segments that make up a list prefix, oldest first."""
        segments: list[tuple[int, int, int]] = []
        current: int | None = list_id
        end = length
        hops = 0
        while current is not None and end > 0:
            info = c.execute("SELECT base_id, base_len FROM lists WHERE list_id = ?", (current,)).fetchone()
            if info is None:
                raise IntegrityError(f"list {current} is missing from the store")
            base_id, base_len = info
            lo = base_len if base_id is not None else 0
            if end > lo:
                segments.append((current, lo, end))
            end = min(end, lo)
            current = base_id
            hops += 1
            if hops > MAX_LIST_DEPTH + 2:
                raise IntegrityError(f"list {list_id} has a base chain deeper than {MAX_LIST_DEPTH}")
        segments.reverse()
        return segments

    def _create_list(
        self, c: sqlite3.Connection, tkey: int, list_id: int, base: tuple[int, int] | None
    ) -> None:
        if base is None:
            c.execute("INSERT INTO lists (list_id, tkey) VALUES (?, ?)", (list_id, tkey))
            return
        base_id, base_len = base
        info = self._list_info(c, base_id)
        if info is None:
            raise StaleReference(f"list {base_id} does not exist")
        if info[5] < base_len:
            raise StaleReference(f"list {base_id} has fewer than {base_len} items")
        depth = info[3] + 1
        if depth < MAX_LIST_DEPTH:
            c.execute(
                "INSERT INTO lists (list_id, tkey, base_id, base_len, depth) VALUES (?, ?, ?, ?, ?)",
                (list_id, tkey, base_id, base_len, depth),
            )
            return
        # Too deep: copy the prefix into a fresh root list so reads stay bounded.
        c.execute("INSERT INTO lists (list_id, tkey) VALUES (?, ?)", (list_id, tkey))
        for seg_id, lo, hi in self._segments(c, base_id, base_len):
            c.execute(
                "INSERT INTO items (list_id, pos, crc, data) "
                "SELECT ?, pos, crc, data FROM items WHERE list_id = ? AND pos >= ? AND pos < ? ORDER BY pos",
                (list_id, seg_id, lo, hi),
            )

    def _apply_list(
        self, c: sqlite3.Connection, tkey: int, la: ListAppend, info: _ListInfo | Any | None = UNSET
    ) -> tuple[int, int]:
        """Store one list append; returns (final list id, bytes added).

        ``info`` is the list's :meth:`_list_info` when the caller already read it in this
        transaction."""
        target = la.list_id
        if la.base is not None:
            self._create_list(c, tkey, target, la.base)
        else:
            if info is UNSET:
                info = self._list_info(c, target)
            if info is None:
                if la.start != 0:
                    raise StaleReference(f"list {target} does not exist")
                self._create_list(c, tkey, target, None)
            else:
                owner, _, _, _, sealed, length = info
                if length < la.start:
                    raise StaleReference(f"list {target} has {length} items, fewer than {la.start}")
                if sealed or length != la.start or owner != tkey:
                    target = self._new_list_id(c)
                    self._create_list(c, tkey, target, (la.list_id, la.start))
        c.executemany(
            "INSERT INTO items (list_id, pos, crc, data) VALUES (?, ?, ?, ?)",
            [
                (target, la.start + i, crc, data)
                for i, (crc, data) in enumerate(zip(la.crcs, la.items, strict=True))
            ],
        )
        return target, sum(len(d) for d in la.items)

    def _check_list_ref(self, c: sqlite3.Connection, tkey: int, ref: ListRef) -> ListRef:
        """Make sure a referenced list prefix exists and is owned by this thread."""
        info = self._list_info(c, ref.list_id)
        if info is None or info[5] < ref.length:
            raise StaleReference(f"list {ref.list_id} with {ref.length} items does not exist")
        if info[0] == tkey:
            return ref
        derived = self._new_list_id(c)
        self._create_list(c, tkey, derived, (ref.list_id, ref.length))
        return ListRef(derived, ref.length)

    # ------------------------------------------------------------ threads

    def create_thread(
        self,
        thread_id: str,
        *,
        created_at: int,
        session_id: str | None,
        metadata: bytes,
        origin: bytes | None = None,
    ) -> ThreadRow:
        def op(c: sqlite3.Connection) -> ThreadRow:
            if c.execute("SELECT 1 FROM threads WHERE id = ?", (thread_id,)).fetchone():
                raise AlreadyExists(f"thread {thread_id!r} already exists")
            cur = c.execute(
                "INSERT INTO threads (id, created_at, session_id, metadata, origin) VALUES (?, ?, ?, ?, ?)",
                (thread_id, created_at, session_id, metadata, origin),
            )
            c.execute(
                "INSERT INTO branches (tkey, name, created_at) VALUES (?, ?, ?)",
                (cur.lastrowid, DEFAULT_BRANCH, created_at),
            )
            return ThreadRow(thread_id, created_at, session_id, metadata, DEFAULT_BRANCH, origin)

        return self._write(op)

    def get_thread(self, thread_id: str) -> ThreadRow:
        def op(c: sqlite3.Connection) -> ThreadRow:
            row = c.execute(f"SELECT {self._THREAD_COLS} FROM threads WHERE id = ?", (thread_id,)).fetchone()
            if row is None:
                raise NotFound(f"thread {thread_id!r} does not exist")
            return self._thread_row(row)

        return self._read(op)

    def list_threads(
        self, *, session_id: str | None = None, after: str | None = None, limit: int = 100
    ) -> list[ThreadRow]:
        sql = f"SELECT {self._THREAD_COLS} FROM threads WHERE id > ?"
        args: list[Any] = [after or ""]
        if session_id is not None:
            sql += " AND session_id = ?"
            args.append(session_id)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        return self._read(lambda c: [self._thread_row(r) for r in c.execute(sql, args)])

    def update_thread(self, thread_id: str, *, metadata: bytes) -> ThreadRow:
        def op(c: sqlite3.Connection) -> ThreadRow:
            self._tkey(c, thread_id)
            c.execute("UPDATE threads SET metadata = ? WHERE id = ?", (metadata, thread_id))
            row = c.execute(f"SELECT {self._THREAD_COLS} FROM threads WHERE id = ?", (thread_id,)).fetchone()
            return self._thread_row(row)

        return self._write(op)

    def delete_thread(self, thread_id: str) -> GcReport:
        return self._write(lambda c: self._drop_thread(c, self._tkey(c, thread_id)))

    # ------------------------------------------------------------ branches

    def get_branch(self, thread_id: str, name: str) -> BranchRow:
        def op(c: sqlite3.Connection) -> BranchRow:
            tkey = self._tkey(c, thread_id)
            row = c.execute(
                "SELECT name, head, created_at, base FROM branches WHERE tkey = ? AND name = ?", (tkey, name)
            ).fetchone()
            if row is None:
                raise NotFound(f"branch {name!r} does not exist in thread {thread_id!r}")
            return self._branch_row(thread_id, row)

        return self._read(op)

    @staticmethod
    def _branch_row(thread_id: str, row: Sequence[Any]) -> BranchRow:
        return BranchRow(
            thread_id=thread_id,
            name=row[0],
            head=checkpoint_id_from_bytes(row[1]) if row[1] is not None else None,
            created_at=row[2],
            base=checkpoint_id_from_bytes(row[3]) if row[3] is not None else None,
        )

    def list_branches(self, thread_id: str) -> list[BranchRow]:
        def op(c: sqlite3.Connection) -> list[BranchRow]:
            tkey = self._tkey(c, thread_id)
            rows = c.execute(
                "SELECT name, head, created_at, base FROM branches WHERE tkey = ? ORDER BY name", (tkey,)
            )
            return [self._branch_row(thread_id, r) for r in rows]

        return self._read(op)

    def create_branch(self, thread_id: str, name: str, *, head: str | None, created_at: int) -> BranchRow:
        def op(c: sqlite3.Connection) -> BranchRow:
            tkey = self._tkey(c, thread_id)
            if c.execute("SELECT 1 FROM branches WHERE tkey = ? AND name = ?", (tkey, name)).fetchone():
                raise AlreadyExists(f"branch {name!r} already exists in thread {thread_id!r}")
            raw = checkpoint_id_bytes(head) if head is not None else None
            if (
                raw is not None
                and not c.execute(
                    "SELECT 1 FROM checkpoints WHERE tkey = ? AND id = ?", (tkey, raw)
                ).fetchone()
            ):
                raise NotFound(f"checkpoint {head} does not exist in thread {thread_id!r}")
            c.execute(
                "INSERT INTO branches (tkey, name, head, created_at, base) VALUES (?, ?, ?, ?, ?)",
                (tkey, name, raw, created_at, raw),
            )
            return BranchRow(thread_id, name, head, created_at, head)

        return self._write(op)

    def rename_branch(self, thread_id: str, old: str, new: str) -> BranchRow:
        def op(c: sqlite3.Connection) -> BranchRow:
            tkey = self._tkey(c, thread_id)
            if c.execute("SELECT 1 FROM branches WHERE tkey = ? AND name = ?", (tkey, new)).fetchone():
                raise AlreadyExists(f"branch {new!r} already exists in thread {thread_id!r}")
            cur = c.execute("UPDATE branches SET name = ? WHERE tkey = ? AND name = ?", (new, tkey, old))
            if not cur.rowcount:
                raise NotFound(f"branch {old!r} does not exist in thread {thread_id!r}")
            c.execute(
                "UPDATE threads SET default_branch = ? WHERE tkey = ? AND default_branch = ?",
                (new, tkey, old),
            )
            row = c.execute(
                "SELECT name, head, created_at, base FROM branches WHERE tkey = ? AND name = ?", (tkey, new)
            ).fetchone()
            return self._branch_row(thread_id, row)

        return self._write(op)

    def delete_branch(self, thread_id: str, name: str, *, force: bool = False) -> GcReport:
        def op(c: sqlite3.Connection) -> GcReport:
            tkey = self._tkey(c, thread_id)
            default = c.execute("SELECT default_branch FROM threads WHERE tkey = ?", (tkey,)).fetchone()[0]
            if name == default:
                raise InvalidInput(
                    f"branch {name!r} is the default branch of thread {thread_id!r}; "
                    "make another branch the default first"
                )
            branches = {
                r[1]: (r[0], checkpoint_id_from_bytes(r[2]) if r[2] is not None else None)
                for r in c.execute("SELECT bkey, name, head FROM branches WHERE tkey = ?", (tkey,))
            }
            if name not in branches:
                raise NotFound(f"branch {name!r} does not exist in thread {thread_id!r}")
            names = {bkey: bname for bname, (bkey, _) in branches.items()}
            parents: dict[str, tuple[str | None, str | None]] = {}
            branch_of: dict[str, str] = {}
            milestones: set[str] = set()
            for cid, parent, merge, bkey, milestone in c.execute(
                "SELECT id, parent, merge_parent, bkey, milestone FROM checkpoints WHERE tkey = ?", (tkey,)
            ):
                key = checkpoint_id_from_bytes(cid)
                parents[key] = (
                    checkpoint_id_from_bytes(parent) if parent is not None else None,
                    checkpoint_id_from_bytes(merge) if merge is not None else None,
                )
                branch_of[key] = names.get(bkey, "")
                if milestone is not None:
                    milestones.add(key)
            heads = {n: h for n, (_, h) in branches.items()}
            doomed, moved = branch_deletion(parents, branch_of, heads, name)
            if doomed & milestones and not force:
                raise Conflict(
                    f"branch {name!r} holds milestones no other branch reaches; pass force to delete them too"
                )
            for cid, target in moved.items():
                c.execute(
                    "UPDATE checkpoints SET bkey = ? WHERE tkey = ? AND id = ?",
                    (branches[target][0], tkey, checkpoint_id_bytes(cid)),
                )
            self._relink(c, tkey, relink(parents, doomed))
            gone = [(tkey, checkpoint_id_bytes(x)) for x in doomed]
            c.executemany("DELETE FROM checkpoints WHERE tkey = ? AND id = ?", gone)
            c.executemany("DELETE FROM pending_writes WHERE tkey = ? AND checkpoint = ?", gone)
            c.execute("DELETE FROM branches WHERE bkey = ?", (branches[name][0],))
            return self._gc_thread(c, tkey)

        return self._write(op)

    def set_default_branch(self, thread_id: str, name: str) -> ThreadRow:
        def op(c: sqlite3.Connection) -> ThreadRow:
            tkey = self._tkey(c, thread_id)
            if not c.execute("SELECT 1 FROM branches WHERE tkey = ? AND name = ?", (tkey, name)).fetchone():
                raise NotFound(f"branch {name!r} does not exist in thread {thread_id!r}")
            c.execute("UPDATE threads SET default_branch = ? WHERE tkey = ?", (name, tkey))
            row = c.execute(f"SELECT {self._THREAD_COLS} FROM threads WHERE tkey = ?", (tkey,)).fetchone()
            return self._thread_row(row)

        return self._write(op)

    # ------------------------------------------------------------ sessions

    _SESSION_COLS = "id, created_at, metadata, owner, status, policy"

    @staticmethod
    def _session_row(row: Sequence[Any]) -> SessionRow:
        return SessionRow(
            id=row[0],
            created_at=row[1],
            metadata=bytes(row[2]),
            owner=row[3],
            status=row[4],
            policy=bytes(row[5]) if row[5] is not None else None,
        )

    def _session(self, c: sqlite3.Connection, session_id: str) -> SessionRow:
        row = c.execute(f"SELECT {self._SESSION_COLS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise NotFound(f"session {session_id!r} does not exist")
        return self._session_row(row)

    def create_session(
        self, session_id: str, *, created_at: int, metadata: bytes, owner: str | None, policy: bytes | None
    ) -> SessionRow:
        def op(c: sqlite3.Connection) -> SessionRow:
            try:
                c.execute(
                    "INSERT INTO sessions (id, created_at, metadata, owner, status, policy) "
                    "VALUES (?, ?, ?, ?, 'active', ?)",
                    (session_id, created_at, metadata, owner, policy),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"session {session_id!r} already exists") from None
            return SessionRow(session_id, created_at, metadata, owner, "active", policy)

        return self._write(op)

    def get_session(self, session_id: str) -> SessionRow:
        return self._read(lambda c: self._session(c, session_id))

    def list_sessions(
        self, *, after: str | None = None, limit: int = 100, status: str | None = None
    ) -> list[SessionRow]:
        sql = f"SELECT {self._SESSION_COLS} FROM sessions WHERE id > ?"
        args: list[Any] = [after or ""]
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        return self._read(lambda c: [self._session_row(r) for r in c.execute(sql, args)])

    def update_session(
        self,
        session_id: str,
        *,
        metadata: bytes | None = None,
        status: str | None = None,
        policy: bytes | Any | None = UNSET,
    ) -> SessionRow:
        def op(c: sqlite3.Connection) -> SessionRow:
            self._session(c, session_id)
            if metadata is not None:
                c.execute("UPDATE sessions SET metadata = ? WHERE id = ?", (metadata, session_id))
            if status is not None:
                c.execute("UPDATE sessions SET status = ? WHERE id = ?", (status, session_id))
            if policy is not UNSET:
                c.execute("UPDATE sessions SET policy = ? WHERE id = ?", (policy, session_id))
            return self._session(c, session_id)

        return self._write(op)

    def _drop_thread(self, c: sqlite3.Connection, tkey: int) -> GcReport:
        for table in ("checkpoints", "branches", "participants", "pending_writes"):
            c.execute(f"DELETE FROM {table} WHERE tkey = ?", (tkey,))
        c.execute("DELETE FROM threads WHERE tkey = ?", (tkey,))
        return self._gc_thread(c, tkey)

    def delete_session(self, session_id: str) -> GcReport:
        def op(c: sqlite3.Connection) -> GcReport:
            self._session(c, session_id)
            total = GcReport()
            for (tkey,) in c.execute(
                "SELECT tkey FROM threads WHERE session_id = ?", (session_id,)
            ).fetchall():
                total = total + self._drop_thread(c, tkey)
            c.execute("DELETE FROM sync_points WHERE session_id = ?", (session_id,))
            c.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            return total

        return self._write(op)

    def set_thread_session(self, thread_id: str, session_id: str | None) -> ThreadRow:
        def op(c: sqlite3.Connection) -> ThreadRow:
            tkey = self._tkey(c, thread_id)
            if session_id is not None:
                self._session(c, session_id)
            c.execute("UPDATE threads SET session_id = ? WHERE tkey = ?", (session_id, tkey))
            return self._thread_row(
                c.execute(f"SELECT {self._THREAD_COLS} FROM threads WHERE tkey = ?", (tkey,)).fetchone()
            )

        return self._write(op)

    def set_thread_policy(self, thread_id: str, policy: bytes | None) -> ThreadRow:
        def op(c: sqlite3.Connection) -> ThreadRow:
            tkey = self._tkey(c, thread_id)
            c.execute("UPDATE threads SET policy = ? WHERE tkey = ?", (policy, tkey))
            return self._thread_row(
                c.execute(f"SELECT {self._THREAD_COLS} FROM threads WHERE tkey = ?", (tkey,)).fetchone()
            )

        return self._write(op)

    # ------------------------------------------------------------ sync points

    @staticmethod
    def _sync_row(row: Sequence[Any]) -> SyncPointRow:
        members = tuple((str(t), str(cid)) for t, cid in ormsgpack.unpackb(row[3]))
        return SyncPointRow(row[0], row[1], row[2], members, bytes(row[4]))

    def list_sync_points(self, session_id: str) -> list[SyncPointRow]:
        def op(c: sqlite3.Connection) -> list[SyncPointRow]:
            self._session(c, session_id)
            rows = c.execute(
                "SELECT session_id, label, created_at, members, metadata FROM sync_points "
                "WHERE session_id = ? ORDER BY created_at, label",
                (session_id,),
            )
            return [self._sync_row(r) for r in rows]

        return self._read(op)

    def get_sync_point(self, session_id: str, label: str) -> SyncPointRow:
        def op(c: sqlite3.Connection) -> SyncPointRow:
            row = c.execute(
                "SELECT session_id, label, created_at, members, metadata FROM sync_points "
                "WHERE session_id = ? AND label = ?",
                (session_id, label),
            ).fetchone()
            if row is None:
                raise NotFound(f"sync point {label!r} does not exist in session {session_id!r}")
            return self._sync_row(row)

        return self._read(op)

    def delete_sync_point(self, session_id: str, label: str) -> None:
        def op(c: sqlite3.Connection) -> None:
            cur = c.execute("DELETE FROM sync_points WHERE session_id = ? AND label = ?", (session_id, label))
            if not cur.rowcount:
                raise NotFound(f"sync point {label!r} does not exist in session {session_id!r}")

        self._write(op)

    def apply_ttls(self, thread_id: str, ttls: Mapping[CheckpointKind, int | None], *, now: int) -> int:
        def op(c: sqlite3.Connection) -> int:
            tkey = self._tkey(c, thread_id)
            changed = 0
            for kind, ttl in ttls.items():
                changed += c.execute(
                    "UPDATE checkpoints SET expires_at = CASE WHEN ? IS NULL THEN NULL ELSE created_at + ? END "
                    "WHERE tkey = ? AND kind = ? AND expires_at IS NOT (CASE WHEN ? IS NULL THEN NULL "
                    "ELSE created_at + ? END)",
                    (ttl, ttl, tkey, KIND_CODES[kind], ttl, ttl),
                ).rowcount
            changed += c.execute(
                "UPDATE checkpoints SET status = ? WHERE tkey = ? AND status = ? "
                "AND (expires_at IS NULL OR expires_at > ?)",
                (STATUS_CODES[CheckpointStatus.ACTIVE], tkey, STATUS_CODES[CheckpointStatus.EXPIRED], now),
            ).rowcount
            return changed

        return self._write(op)

    def put_sync_point(self, row: SyncPointRow) -> None:
        def op(c: sqlite3.Connection) -> None:
            self._session(c, row.session_id)
            for thread_id, checkpoint_id in row.members:
                tkey = self._tkey(c, thread_id)
                if not c.execute(
                    "SELECT 1 FROM checkpoints WHERE tkey = ? AND id = ?",
                    (tkey, checkpoint_id_bytes(checkpoint_id)),
                ).fetchone():
                    raise NotFound(f"checkpoint {checkpoint_id} does not exist in thread {thread_id!r}")
            try:
                c.execute(
                    "INSERT INTO sync_points (session_id, label, created_at, members, metadata) VALUES (?, ?, ?, ?, ?)",
                    (
                        row.session_id,
                        row.label,
                        row.created_at,
                        ormsgpack.packb([list(m) for m in row.members]),
                        row.metadata,
                    ),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(
                    f"sync point {row.label!r} already exists in session {row.session_id!r}"
                ) from None

        self._write(op)

    # ------------------------------------------------------------ pending writes

    def put_writes(
        self, thread_id: str, checkpoint_id: str, writes: Sequence[PendingWrite], *, upsert: bool = False
    ) -> None:
        def op(c: sqlite3.Connection) -> None:
            tkey = self._tkey(c, thread_id)
            cid = checkpoint_id_bytes(checkpoint_id)
            if not c.execute("SELECT 1 FROM checkpoints WHERE tkey = ? AND id = ?", (tkey, cid)).fetchone():
                raise NotFound(f"checkpoint {checkpoint_id} does not exist in thread {thread_id!r}")
            verb = "INSERT OR REPLACE" if upsert else "INSERT OR IGNORE"
            c.executemany(
                f"{verb} INTO pending_writes (tkey, checkpoint, task_id, idx, channel, value, task_path) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(tkey, cid, w.task_id, w.idx, w.channel, w.value, w.task_path) for w in writes],
            )

        self._write(op)

    def get_writes(self, thread_id: str, checkpoint_ids: Sequence[str]) -> dict[str, list[PendingWrite]]:
        def op(c: sqlite3.Connection) -> dict[str, list[PendingWrite]]:
            tkey = self._tkey(c, thread_id)
            out: dict[str, list[PendingWrite]] = {cid: [] for cid in checkpoint_ids}
            wanted = [checkpoint_id_bytes(cid) for cid in checkpoint_ids]
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                rows = c.execute(
                    "SELECT checkpoint, task_id, idx, channel, value, task_path FROM pending_writes "
                    f"WHERE tkey = ? AND checkpoint IN ({','.join('?' * len(chunk))}) "
                    "ORDER BY checkpoint, task_id, idx",
                    (tkey, *chunk),
                )
                for r in rows:
                    out[checkpoint_id_from_bytes(r[0])].append(
                        PendingWrite(r[1], r[2], r[3], bytes(r[4]), r[5])
                    )
            return out

        return self._read(op)

    # ------------------------------------------------------------ participants

    def set_participant(self, thread_id: str, principal: str, role: str | None) -> None:
        def op(c: sqlite3.Connection) -> None:
            tkey = self._tkey(c, thread_id)
            if role is None:
                c.execute("DELETE FROM participants WHERE tkey = ? AND principal = ?", (tkey, principal))
            else:
                c.execute(
                    "INSERT INTO participants (tkey, principal, role) VALUES (?, ?, ?) "
                    "ON CONFLICT (tkey, principal) DO UPDATE SET role = excluded.role",
                    (tkey, principal, role),
                )

        self._write(op)

    def participants(self, thread_id: str) -> dict[str, str]:
        def op(c: sqlite3.Connection) -> dict[str, str]:
            tkey = self._tkey(c, thread_id)
            rows = c.execute(
                "SELECT principal, role FROM participants WHERE tkey = ? ORDER BY principal", (tkey,)
            )
            return dict(rows.fetchall())

        return self._read(op)

    def import_thread(
        self,
        thread: ThreadRow,
        *,
        branches: Sequence[BranchRow],
        participants: Mapping[str, str],
        lists: Iterable[ListAppend],
        blobs: Iterable[NewBlob],
        checkpoints: Iterable[CheckpointRow],
    ) -> None:
        def op(c: sqlite3.Connection) -> None:
            if c.execute("SELECT 1 FROM threads WHERE id = ?", (thread.id,)).fetchone():
                raise AlreadyExists(f"thread {thread.id!r} already exists")
            cur = c.execute(
                "INSERT INTO threads (id, created_at, session_id, metadata, default_branch, origin, policy) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    thread.id,
                    thread.created_at,
                    thread.session_id,
                    thread.metadata,
                    thread.default_branch,
                    thread.origin,
                    thread.policy,
                ),
            )
            tkey = int(cur.lastrowid or 0)
            for la in lists:
                self._apply_list(c, tkey, la)
            for blob in blobs:
                c.execute("INSERT OR IGNORE INTO blobs (hash, data) VALUES (?, ?)", (blob.hash, blob.data))
                c.execute("INSERT OR IGNORE INTO thread_blobs (tkey, hash) VALUES (?, ?)", (tkey, blob.hash))
            bkeys: dict[str, int] = {}
            for b in branches:
                cur = c.execute(
                    "INSERT INTO branches (tkey, name, head, created_at, base) VALUES (?, ?, ?, ?, ?)",
                    (
                        tkey,
                        b.name,
                        checkpoint_id_bytes(b.head) if b.head else None,
                        b.created_at,
                        checkpoint_id_bytes(b.base) if b.base else None,
                    ),
                )
                bkeys[b.name] = int(cur.lastrowid or 0)
            for row in checkpoints:
                manifest = encode_manifest(row.manifest)
                c.execute(
                    "INSERT INTO checkpoints (id, tkey, bkey, parent, merge_parent, kind, status, created_at, "
                    "expires_at, restore_count, logical_size, stored_size, milestone, header, manifest) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        checkpoint_id_bytes(row.id),
                        tkey,
                        bkeys[row.branch],
                        checkpoint_id_bytes(row.parent_id) if row.parent_id else None,
                        checkpoint_id_bytes(row.merge_parent_id) if row.merge_parent_id else None,
                        KIND_CODES[row.kind],
                        STATUS_CODES[row.status],
                        row.created_at,
                        row.expires_at,
                        row.restore_count,
                        row.logical_size,
                        row.stored_size,
                        row.milestone,
                        row.header,
                        manifest,
                    ),
                )
            c.executemany(
                "INSERT INTO participants (tkey, principal, role) VALUES (?, ?, ?)",
                [(tkey, p, r) for p, r in participants.items()],
            )

        self._write(op)

    # ------------------------------------------------------------ copies

    def copy_thread(
        self,
        source_id: str,
        target_id: str,
        *,
        created_at: int,
        metadata: bytes,
        origin: bytes | None,
        id_map: Mapping[str, str] | None = None,
    ) -> ThreadRow:
        def op(c: sqlite3.Connection) -> ThreadRow:
            src = self._tkey(c, source_id)
            if c.execute("SELECT 1 FROM threads WHERE id = ?", (target_id,)).fetchone():
                raise AlreadyExists(f"thread {target_id!r} already exists")
            session_id, default, policy = c.execute(
                "SELECT session_id, default_branch, policy FROM threads WHERE tkey = ?", (src,)
            ).fetchone()
            cur = c.execute(
                "INSERT INTO threads (id, created_at, session_id, metadata, default_branch, origin, policy) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (target_id, created_at, session_id, metadata, default, origin, policy),
            )
            dst = int(cur.lastrowid or 0)

            def mapped(raw: bytes | None) -> bytes | None:
                if raw is None or id_map is None:
                    return raw
                return checkpoint_id_bytes(id_map[checkpoint_id_from_bytes(raw)])

            bkeys: dict[int, int] = {}
            for bkey, name, head, bcreated, base in c.execute(
                "SELECT bkey, name, head, created_at, base FROM branches WHERE tkey = ?", (src,)
            ).fetchall():
                cur = c.execute(
                    "INSERT INTO branches (tkey, name, head, created_at, base) VALUES (?, ?, ?, ?, ?)",
                    (dst, name, mapped(head), bcreated, mapped(base)),
                )
                bkeys[bkey] = int(cur.lastrowid or 0)
            rows = c.execute(
                "SELECT id, bkey, parent, merge_parent, kind, status, created_at, expires_at, restore_count, "
                "logical_size, milestone, header, manifest FROM checkpoints WHERE tkey = ? ORDER BY id",
                (src,),
            ).fetchall()
            manifests = [decode_manifest(bytes(row[12])) for row in rows]
            needs: dict[int, int] = {}
            for manifest in manifests:
                for lid, n in manifest_refs(manifest)[1].items():
                    needs[lid] = max(needs.get(lid, 0), n)
            renames: dict[int, int] = {}
            for lid, n in needs.items():
                renames[lid] = self._new_list_id(c)
                self._create_list(c, dst, renames[lid], (lid, n))
            for row, manifest in zip(rows, manifests, strict=True):
                c.execute(
                    "INSERT INTO checkpoints (id, tkey, bkey, parent, merge_parent, kind, status, created_at, "
                    "expires_at, restore_count, logical_size, stored_size, milestone, header, manifest) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                    (
                        mapped(row[0]),
                        dst,
                        bkeys[row[1]],
                        mapped(row[2]),
                        mapped(row[3]),
                        *row[4:11],
                        row[11],
                        encode_manifest(rewrite_list_ids(manifest, renames)),
                    ),
                )
            c.execute(
                "INSERT INTO thread_blobs (tkey, hash) SELECT ?, hash FROM thread_blobs WHERE tkey = ?",
                (dst, src),
            )
            c.execute(
                "INSERT INTO participants (tkey, principal, role) "
                "SELECT ?, principal, role FROM participants WHERE tkey = ?",
                (dst, src),
            )
            for row in c.execute(
                "SELECT checkpoint, task_id, idx, channel, value, task_path FROM pending_writes WHERE tkey = ?",
                (src,),
            ).fetchall():
                c.execute(
                    "INSERT INTO pending_writes (tkey, checkpoint, task_id, idx, channel, value, task_path) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (dst, mapped(row[0]), *row[1:]),
                )
            row = c.execute(f"SELECT {self._THREAD_COLS} FROM threads WHERE tkey = ?", (dst,)).fetchone()
            return self._thread_row(row)

        return self._write(op)

    # ------------------------------------------------------------ checkpoints

    def _append_one(
        self, c: sqlite3.Connection, write: CheckpointWrite, expected_head: str | Any | None
    ) -> CheckpointRow:
        # The common write appends to one list: read that list's state with the thread and
        # branch, in one statement (each statement costs a round through the GIL).
        first = write.lists[0] if write.lists and write.lists[0].base is None else None
        if first is None:
            found = c.execute(
                "SELECT t.tkey, b.bkey, b.head FROM threads t "
                "LEFT JOIN branches b ON b.tkey = t.tkey AND b.name = ? WHERE t.id = ?",
                (write.branch, write.thread_id),
            ).fetchone()
        else:
            found = c.execute(
                "SELECT t.tkey, b.bkey, b.head, l.tkey, l.base_id, l.base_len, l.depth, l.sealed, "
                "(SELECT max(pos) FROM items WHERE items.list_id = l.list_id) FROM threads t "
                "LEFT JOIN branches b ON b.tkey = t.tkey AND b.name = ? "
                "LEFT JOIN lists l ON l.list_id = ? WHERE t.id = ?",
                (write.branch, first.list_id, write.thread_id),
            ).fetchone()
        if found is None:
            raise NotFound(f"thread {write.thread_id!r} does not exist")
        first_info = _list_info_of(found[3:]) if first is not None else None
        found = found[:3]
        tkey = found[0]
        branch = found[1:] if found[1] is not None else None
        if write.create_branch:
            if branch is not None:
                raise Conflict(f"branch {write.branch!r} already exists in thread {write.thread_id!r}")
            parent = write.parent_id
            if parent is not None:
                prow = c.execute(
                    "SELECT 1 FROM checkpoints WHERE tkey = ? AND id = ?",
                    (tkey, checkpoint_id_bytes(parent)),
                ).fetchone()
                if prow is None:
                    raise NotFound(f"checkpoint {parent} does not exist in thread {write.thread_id!r}")
            cur = c.execute(
                "INSERT INTO branches (tkey, name, created_at, base) VALUES (?, ?, ?, ?)",
                (tkey, write.branch, write.created_at, checkpoint_id_bytes(parent) if parent else None),
            )
            bkey = int(cur.lastrowid or 0)
            head = None
        else:
            if branch is None:
                raise NotFound(f"branch {write.branch!r} does not exist in thread {write.thread_id!r}")
            bkey = int(branch[0])
            head = checkpoint_id_from_bytes(branch[1]) if branch[1] is not None else None
            parent = head
        if expected_head is not UNSET and expected_head != head:
            raise Conflict(
                f"branch {write.branch!r} of thread {write.thread_id!r} moved: expected head "
                f"{expected_head}, found {head}; nothing was stored",
                expected=expected_head,
                actual=head,
            )
        stored = 0
        renames: dict[int, int] = {}
        for la in write.lists:
            final, added = (
                self._apply_list(c, tkey, la, first_info) if la is first else self._apply_list(c, tkey, la)
            )
            stored += added
            if final != la.list_id:
                renames[la.list_id] = final
        carried = {la.list_id for la in write.lists}
        manifest = rewrite_list_ids(write.manifest, renames)
        for key, ref in list(manifest.items()):
            if (
                isinstance(ref, ListRef)
                and ref.list_id not in carried
                and ref.list_id not in renames.values()
            ):
                manifest[key] = self._check_list_ref(c, tkey, ref)
        new_blobs = {b.hash for b in write.blobs}
        for blob in write.blobs:
            cur = c.execute("INSERT OR IGNORE INTO blobs (hash, data) VALUES (?, ?)", (blob.hash, blob.data))
            if cur.rowcount:
                stored += len(blob.data)
        blob_refs, _ = manifest_refs(manifest)
        # Blobs the planned parent references are live and recorded for this thread while
        # that parent is still the head (read above, in this transaction).
        known_blobs = (
            write.carried_blobs
            if write.planned_parent is not None and write.planned_parent == head
            else frozenset()
        )
        for digest in blob_refs:
            if digest in known_blobs:
                continue
            cur = c.execute("INSERT OR IGNORE INTO thread_blobs (tkey, hash) VALUES (?, ?)", (tkey, digest))
            fresh = cur.rowcount and digest not in new_blobs
            if fresh and c.execute("SELECT 1 FROM blobs WHERE hash = ?", (digest,)).fetchone() is None:
                raise StaleReference(f"blob {digest.hex()} does not exist")
        manifest_bytes = encode_manifest(manifest)
        stored += len(manifest_bytes) + len(write.header)
        new_id = write.id
        if write.generated_id and parent is not None and new_id <= parent:
            new_id = new_checkpoint_id(after=parent)
        cid = checkpoint_id_bytes(new_id)
        if (
            write.milestone is not None
            and c.execute(
                "SELECT 1 FROM checkpoints WHERE tkey = ? AND milestone = ?", (tkey, write.milestone)
            ).fetchone()
        ):
            raise AlreadyExists(f"milestone {write.milestone!r} already exists in thread {write.thread_id!r}")
        parent_b = checkpoint_id_bytes(parent) if parent else None
        merge_b = checkpoint_id_bytes(write.merge_parent_id) if write.merge_parent_id else None
        try:
            c.execute(
                "INSERT INTO checkpoints (id, tkey, bkey, parent, merge_parent, kind, status, created_at, "
                "expires_at, logical_size, stored_size, milestone, header, manifest) "
                "VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?)",
                (
                    cid,
                    tkey,
                    bkey,
                    parent_b,
                    merge_b,
                    KIND_CODES[write.kind],
                    write.created_at,
                    write.expires_at,
                    write.logical_size,
                    stored,
                    write.milestone,
                    write.header,
                    manifest_bytes,
                ),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"checkpoint {new_id} already exists in thread {write.thread_id!r}") from None
        c.execute("UPDATE branches SET head = ? WHERE bkey = ?", (cid, bkey))
        if write.restored_from is not None:
            cur = c.execute(
                "UPDATE checkpoints SET restore_count = restore_count + 1 WHERE tkey = ? AND id = ?",
                (tkey, checkpoint_id_bytes(write.restored_from)),
            )
            if not cur.rowcount:
                raise NotFound(
                    f"checkpoint {write.restored_from} does not exist in thread {write.thread_id!r}"
                )
        return write.stored_row(new_id, parent, stored, manifest)

    def append_checkpoints(
        self,
        writes: Sequence[tuple[CheckpointWrite, str | Any | None]],
        *,
        sync_point: SyncPointRow | None = None,
    ) -> list[CheckpointRow]:
        def op(c: sqlite3.Connection) -> list[CheckpointRow]:
            rows = [self._append_one(c, write, expected) for write, expected in writes]
            if sync_point is not None:
                members = tuple((r.thread_id, r.id) for r in rows)
                try:
                    c.execute(
                        "INSERT INTO sync_points (session_id, label, created_at, members, metadata) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (
                            sync_point.session_id,
                            sync_point.label,
                            sync_point.created_at,
                            ormsgpack.packb([list(m) for m in members]),
                            sync_point.metadata,
                        ),
                    )
                except sqlite3.IntegrityError:
                    raise AlreadyExists(
                        f"sync point {sync_point.label!r} already exists in session {sync_point.session_id!r}"
                    ) from None
            return rows

        return self._write(op)

    def get_checkpoint(self, checkpoint_id: str, thread_id: str | None = None) -> CheckpointRow:
        def op(c: sqlite3.Connection) -> CheckpointRow:
            if thread_id is None:
                rows = c.execute(
                    f"SELECT {self._CP_COLS} FROM {self._CP_FROM} WHERE c.id = ? LIMIT 6",
                    (checkpoint_id_bytes(checkpoint_id),),
                ).fetchall()
            else:
                rows = c.execute(
                    f"SELECT {self._CP_COLS} FROM {self._CP_FROM} WHERE c.tkey = ? AND c.id = ?",
                    (self._tkey(c, thread_id), checkpoint_id_bytes(checkpoint_id)),
                ).fetchall()
            return self._one_checkpoint(checkpoint_id, thread_id, [self._cp_row(r) for r in rows])

        return self._read(op)

    def find_checkpoints(self, prefix: str, limit: int = 10) -> list[str]:
        hexes = prefix.replace("-", "").lower()
        if not hexes or any(ch not in "0123456789abcdef" for ch in hexes) or len(hexes) > 32:
            return []
        lo = bytes.fromhex(hexes.ljust(32, "0"))
        hi = bytes.fromhex(hexes.ljust(32, "f"))
        rows = self._read(
            lambda c: c.execute(
                "SELECT DISTINCT id FROM checkpoints WHERE id >= ? AND id <= ? ORDER BY id LIMIT ?",
                (lo, hi, limit),
            ).fetchall()
        )
        return [checkpoint_id_from_bytes(r[0]) for r in rows]

    def scan_checkpoints(self, thread_id: str, query: RowQuery) -> list[CheckpointRow]:
        def op(c: sqlite3.Connection) -> list[CheckpointRow]:
            tkey = self._tkey(c, thread_id)
            sql = [f"SELECT {self._CP_COLS} FROM {self._CP_FROM} WHERE c.tkey = ?"]
            args: list[Any] = [tkey]
            if query.before is not None:
                sql.append("AND c.id < ?")
                args.append(checkpoint_id_bytes(query.before))
            if query.branch is not None:
                sql.append("AND b.name = ?")
                args.append(query.branch)
            if query.kinds is not None:
                sql.append(f"AND c.kind IN ({','.join('?' * len(query.kinds))})")
                args.extend(KIND_CODES[k] for k in query.kinds)
            if query.statuses is not None:
                sql.append(f"AND c.status IN ({','.join('?' * len(query.statuses))})")
                args.extend(STATUS_CODES[s] for s in query.statuses)
            if query.created_after is not None:
                sql.append("AND c.created_at >= ?")
                args.append(query.created_after)
            if query.created_before is not None:
                sql.append("AND c.created_at <= ?")
                args.append(query.created_before)
            sql.append("ORDER BY c.tkey DESC, c.id DESC LIMIT ?")
            args.append(query.limit)
            return [self._cp_row(r) for r in c.execute(" ".join(sql), args)]

        return self._read(op)

    def walk_lineage(self, thread_id: str, start_id: str, *, limit: int) -> list[CheckpointRow]:
        def op(c: sqlite3.Connection) -> list[CheckpointRow]:
            tkey = self._tkey(c, thread_id)
            rows = c.execute(
                f"""WITH RECURSIVE chain(id, n) AS (
                        SELECT id, 0 FROM checkpoints WHERE tkey = :t AND id = :start
                        UNION ALL
                        SELECT p.parent, chain.n + 1 FROM chain
                        JOIN checkpoints p ON p.tkey = :t AND p.id = chain.id
                        WHERE p.parent IS NOT NULL AND chain.n + 1 < :limit
                    )
                    SELECT {self._CP_COLS} FROM chain
                    CROSS JOIN checkpoints c ON c.tkey = :t AND c.id = chain.id
                    JOIN threads t ON t.tkey = c.tkey JOIN branches b ON b.bkey = c.bkey
                    ORDER BY chain.n""",
                {"t": tkey, "start": checkpoint_id_bytes(start_id), "limit": limit},
            ).fetchall()
            if not rows:
                raise NotFound(f"checkpoint {start_id} does not exist in thread {thread_id!r}")
            return [self._cp_row(r) for r in rows]

        return self._read(op)

    def get_blobs(self, hashes: Iterable[bytes]) -> dict[bytes, bytes]:
        wanted = list(set(hashes))
        if not wanted:
            return {}

        def op(c: sqlite3.Connection) -> dict[bytes, bytes]:
            out: dict[bytes, bytes] = {}
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                rows = c.execute(
                    f"SELECT hash, data FROM blobs WHERE hash IN ({','.join('?' * len(chunk))})", chunk
                )
                out.update((bytes(h), bytes(d)) for h, d in rows)
            return out

        return self._read(op)

    def get_list_items(self, list_id: int, length: int) -> ItemRows:
        def op(c: sqlite3.Connection) -> ItemRows:
            out = ItemRows()
            for seg_id, lo, hi in self._segments(c, list_id, length):
                rows = c.execute(
                    "SELECT crc, data FROM items WHERE list_id = ? AND pos >= ? AND pos < ? ORDER BY pos",
                    (seg_id, lo, hi),
                ).fetchall()
                if len(rows) != hi - lo:
                    raise IntegrityError(f"list {seg_id} is missing items in positions {lo}..{hi - 1}")
                out.crcs.extend(r[0] for r in rows)
                out.data.extend(r[1] for r in rows)
            return out

        return self._read(op)

    def update_checkpoints(
        self, thread_id: str, checkpoint_ids: Sequence[str], update: LifecycleUpdate
    ) -> int:
        sets: list[str] = []
        args: list[Any] = []
        if update.status is not None:
            sets.append("status = ?")
            args.append(STATUS_CODES[update.status])
        if update.expires_at is not UNSET:
            sets.append("expires_at = ?")
            args.append(update.expires_at)
        if update.header is not None:
            sets.append("header = ?")
            args.append(update.header)
        if update.restore_delta:
            sets.append("restore_count = restore_count + ?")
            args.append(update.restore_delta)
        if not sets or not checkpoint_ids:
            return 0

        def op(c: sqlite3.Connection) -> int:
            changed = 0
            tkey = self._tkey(c, thread_id)
            for cid in checkpoint_ids:
                cur = c.execute(
                    f"UPDATE checkpoints SET {', '.join(sets)} WHERE tkey = ? AND id = ?",
                    [*args, tkey, checkpoint_id_bytes(cid)],
                )
                changed += cur.rowcount
            return changed

        return self._write(op)

    @staticmethod
    def _relink(
        c: sqlite3.Connection, tkey: int, changes: Mapping[str, tuple[str | None, str | None]]
    ) -> None:
        """Point survivors at their nearest surviving ancestors (see ``base.relink``)."""
        c.executemany(
            "UPDATE checkpoints SET parent = ?, merge_parent = ? WHERE tkey = ? AND id = ?",
            [
                (
                    checkpoint_id_bytes(parent) if parent else None,
                    checkpoint_id_bytes(merge) if merge else None,
                    tkey,
                    checkpoint_id_bytes(cid),
                )
                for cid, (parent, merge) in changes.items()
            ],
        )

    def delete_checkpoints(self, thread_id: str, checkpoint_ids: Sequence[str]) -> GcReport:
        def op(c: sqlite3.Connection) -> GcReport:
            tkey = self._tkey(c, thread_id)
            parents: dict[str, tuple[str | None, str | None]] = {}
            for cid, parent, merge in c.execute(
                "SELECT id, parent, merge_parent FROM checkpoints WHERE tkey = ?", (tkey,)
            ):
                parents[checkpoint_id_from_bytes(cid)] = (
                    checkpoint_id_from_bytes(parent) if parent is not None else None,
                    checkpoint_id_from_bytes(merge) if merge is not None else None,
                )
            deleted = {cid for cid in checkpoint_ids if cid in parents}
            if not deleted:
                return GcReport()
            self._relink(c, tkey, relink(parents, deleted))
            for bkey, head in c.execute("SELECT bkey, head FROM branches WHERE tkey = ?", (tkey,)).fetchall():
                if head is not None and checkpoint_id_from_bytes(head) in deleted:
                    survivor = nearest_survivor(parents, checkpoint_id_from_bytes(head), deleted)
                    c.execute(
                        "UPDATE branches SET head = ? WHERE bkey = ?",
                        (checkpoint_id_bytes(survivor) if survivor else None, bkey),
                    )
            gone = [(tkey, checkpoint_id_bytes(x)) for x in deleted]
            c.executemany("DELETE FROM checkpoints WHERE tkey = ? AND id = ?", gone)
            c.executemany("DELETE FROM pending_writes WHERE tkey = ? AND checkpoint = ?", gone)
            return self._gc_thread(c, tkey)

        return self._write(op)

    def due_for_expiry(self, now: int, limit: int = 1000) -> list[tuple[str, str]]:
        rows = self._read(
            lambda c: c.execute(
                "SELECT t.id, c.id FROM checkpoints c JOIN threads t ON t.tkey = c.tkey "
                "WHERE c.expires_at IS NOT NULL AND c.expires_at <= ? AND c.status = 0 "
                "ORDER BY c.expires_at LIMIT ?",
                (now, limit),
            ).fetchall()
        )
        return [(r[0], checkpoint_id_from_bytes(r[1])) for r in rows]

    def stats(
        self, thread_ids: Sequence[str] | None = None, *, largest: int = 0, per_day: bool = False
    ) -> StatsRow:
        def op(c: sqlite3.Connection) -> StatsRow:
            if thread_ids is None:
                where, args = "", []
                tcount = c.execute("SELECT count(*) FROM threads").fetchone()[0]
            else:
                keys = [self._tkey(c, t) for t in thread_ids]
                where = f"WHERE tkey IN ({','.join('?' * len(keys))})" if keys else "WHERE 0"
                args = keys
                tcount = len(keys)
            by_kind: dict[str, int] = {}
            by_status: dict[str, int] = {}
            for kind, status, n in c.execute(
                f"SELECT kind, status, count(*) FROM checkpoints {where} GROUP BY kind, status", args
            ):
                by_kind[KINDS_BY_CODE[kind].value] = by_kind.get(KINDS_BY_CODE[kind].value, 0) + n
                by_status[STATUSES_BY_CODE[status].value] = (
                    by_status.get(STATUSES_BY_CODE[status].value, 0) + n
                )
            total, logical, stored, oldest, newest, restores, milestones = c.execute(
                "SELECT count(*), coalesce(sum(logical_size), 0), coalesce(sum(stored_size), 0), "
                "min(created_at), max(created_at), coalesce(sum(restore_count), 0), count(milestone) "
                f"FROM checkpoints {where}",
                args,
            ).fetchone()
            branches = c.execute(f"SELECT count(*) FROM branches {where}", args).fetchone()[0]
            top: list[tuple[str, int, int, int]] = []
            if largest:
                top = [
                    (r[0], r[1], r[2], r[3])
                    for r in c.execute(
                        "SELECT t.id, count(*), sum(c.logical_size), sum(c.stored_size) FROM checkpoints c "
                        f"JOIN threads t ON t.tkey = c.tkey {where.replace('tkey', 'c.tkey')} "
                        "GROUP BY c.tkey ORDER BY sum(c.stored_size) DESC, count(*) DESC, t.id LIMIT ?",
                        [*args, largest],
                    )
                ]
            days: dict[str, int] = {}
            if per_day:
                days = dict(
                    c.execute(
                        "SELECT date(created_at / 1000000, 'unixepoch') AS day, count(*) FROM checkpoints "
                        f"{where} GROUP BY day ORDER BY day",
                        args,
                    ).fetchall()
                )
            return StatsRow(
                threads=tcount,
                checkpoints=total,
                by_kind=by_kind,
                by_status=by_status,
                logical_bytes=logical,
                stored_bytes=stored,
                oldest=oldest,
                newest=newest,
                restores=restores,
                branches=branches,
                milestones=milestones,
                largest=top,
                per_day=days,
            )

        return self._read(op)

    # ------------------------------------------------------------ frames (key rotation)

    def rewrite_frames(
        self, transform: Callable[[bytes], bytes | None], *, after: str | None = None, limit: int = 500
    ) -> tuple[int, str | None]:
        stage, _, key = (after or "blobs:").partition(":")
        stages = ["blobs", "items", "checkpoints", "threads", "sessions", "pending_writes"]
        if stage not in stages:
            raise InvalidInput(f"frame cursor {after!r} is not one rewrite_frames returned")

        def op(c: sqlite3.Connection) -> tuple[int, str | None]:
            changed, last = self._rewrite_stage(c, stage, key, transform, limit)
            if last is not None:
                return changed, f"{stage}:{last}"
            following = stages.index(stage) + 1
            return changed, f"{stages[following]}:" if following < len(stages) else None

        return self._write(op)

    def _rewrite_stage(
        self,
        c: sqlite3.Connection,
        stage: str,
        key: str,
        transform: Callable[[bytes], bytes | None],
        limit: int,
    ) -> tuple[int, str | None]:
        """One batch of one table; returns (frames replaced, last key seen or None when done)."""
        changed = 0
        if stage in ("blobs", "items", "threads"):
            table, pk, columns = {
                "blobs": ("blobs", "bkey", ("data",)),
                "items": ("items", "rowid", ("data",)),
                "threads": ("threads", "tkey", ("metadata", "origin")),
            }[stage]
            rows = c.execute(
                f"SELECT {pk}, {', '.join(columns)} FROM {table} WHERE {pk} > ? ORDER BY {pk} LIMIT ?",
                (int(key or 0), limit),
            ).fetchall()
            for row in rows:
                for column, value in zip(columns, row[1:], strict=True):
                    new = transform(bytes(value)) if value is not None else None
                    if new is not None:
                        extra = ", crc = ?" if stage == "items" else ""
                        args = (new, zlib.crc32(new)) if stage == "items" else (new,)
                        c.execute(f"UPDATE {table} SET {column} = ?{extra} WHERE {pk} = ?", (*args, row[0]))
                        changed += 1
            return changed, (str(rows[-1][0]) if len(rows) == limit else None)
        if stage == "sessions":
            rows = c.execute(
                "SELECT id, metadata FROM sessions WHERE id > ? ORDER BY id LIMIT ?", (key, limit)
            ).fetchall()
            for sid, metadata in rows:
                new = transform(bytes(metadata))
                if new is not None:
                    c.execute("UPDATE sessions SET metadata = ? WHERE id = ?", (new, sid))
                    changed += 1
            return changed, (rows[-1][0] if len(rows) == limit else None)
        if stage == "pending_writes":
            tkey, _, rest = key.partition("/")
            rows = c.execute(
                "SELECT tkey, checkpoint, task_id, idx, value FROM pending_writes "
                "WHERE (tkey, checkpoint, task_id, idx) > (?, ?, ?, ?) ORDER BY tkey, checkpoint, task_id, idx LIMIT ?",
                (*_write_cursor(tkey, rest), limit),
            ).fetchall()
            for tk, cp, task, idx, value in rows:
                new = transform(bytes(value))
                if new is not None:
                    c.execute(
                        "UPDATE pending_writes SET value = ? WHERE tkey = ? AND checkpoint = ? AND task_id = ? AND idx = ?",
                        (new, tk, cp, task, idx),
                    )
                    changed += 1
            if len(rows) < limit:
                return changed, None
            tk, cp, task, idx, _ = rows[-1]
            return changed, f"{tk}/{bytes(cp).hex()}/{idx}/{task}"
        # checkpoints: headers and inline values of manifests
        cid_hex, _, tk = key.partition("/")
        rows = c.execute(
            "SELECT id, tkey, header, manifest FROM checkpoints WHERE (id, tkey) > (?, ?) ORDER BY id, tkey LIMIT ?",
            (bytes.fromhex(cid_hex) if cid_hex else b"", int(tk or -1), limit),
        ).fetchall()
        for cid, tkey_, header, raw_manifest in rows:
            new_header = transform(bytes(header))
            manifest = decode_manifest(bytes(raw_manifest))
            replaced = {
                k: InlineRef(n)
                for k, r in manifest.items()
                if isinstance(r, InlineRef) and (n := transform(r.data))
            }
            if new_header is not None or replaced:
                c.execute(
                    "UPDATE checkpoints SET header = ?, manifest = ? WHERE id = ? AND tkey = ?",
                    (
                        new_header if new_header is not None else header,
                        encode_manifest({**manifest, **replaced}),
                        cid,
                        tkey_,
                    ),
                )
                changed += (new_header is not None) + len(replaced)
        if len(rows) < limit:
            return changed, None
        return changed, f"{bytes(rows[-1][0]).hex()}/{rows[-1][1]}"

    # ------------------------------------------------------------ garbage collection

    def _gc_thread(self, c: sqlite3.Connection, tkey: int) -> GcReport:
        """Collect what thread ``tkey`` no longer references (inside the caller's transaction)."""
        blob_refs: set[bytes] = set()
        needs: dict[int, int] = {}
        for (raw,) in c.execute("SELECT manifest FROM checkpoints WHERE tkey = ?", (tkey,)):
            blobs, lists = manifest_refs(decode_manifest(bytes(raw)))
            blob_refs |= blobs
            for lid, n in lists.items():
                needs[lid] = max(needs.get(lid, 0), n)
        owned: dict[int, ListInfo] = {}
        for lid, base_id, base_len in c.execute(
            "SELECT list_id, base_id, base_len FROM lists WHERE tkey = ?", (tkey,)
        ).fetchall():
            owned[lid] = ListInfo(lid, base_id, base_len, self._list_length(c, lid, base_len))
        for base_id, n in c.execute(
            "SELECT l.base_id, max(l.base_len) FROM lists l JOIN lists o ON o.list_id = l.base_id "
            "WHERE o.tkey = ? AND l.tkey != ? GROUP BY l.base_id",
            (tkey, tkey),
        ):
            needs[base_id] = max(needs.get(base_id, 0), n)
        report = self._drop_lists(c, owned, needs)
        candidates = [bytes(h) for (h,) in c.execute("SELECT hash FROM thread_blobs WHERE tkey = ?", (tkey,))]
        dropped = [h for h in candidates if h not in blob_refs]
        c.executemany("DELETE FROM thread_blobs WHERE tkey = ? AND hash = ?", [(tkey, h) for h in dropped])
        blob_count = blob_bytes = 0
        for start in range(0, len(dropped), 500):
            chunk = dropped[start : start + 500]
            marks = ",".join("?" * len(chunk))
            orphans = c.execute(
                f"SELECT hash, length(data) FROM blobs WHERE hash IN ({marks}) "
                "AND NOT EXISTS (SELECT 1 FROM thread_blobs tb WHERE tb.hash = blobs.hash)",
                chunk,
            ).fetchall()
            c.executemany("DELETE FROM blobs WHERE hash = ?", [(h,) for h, _ in orphans])
            blob_count += len(orphans)
            blob_bytes += sum(size for _, size in orphans)
        return GcReport(
            blobs=blob_count,
            list_items=report.list_items,
            lists=report.lists,
            bytes=report.bytes + blob_bytes,
        )

    def _drop_lists(
        self, c: sqlite3.Connection, owned: Mapping[int, ListInfo], needs: Mapping[int, int]
    ) -> GcReport:
        drop, trim = plan_list_gc(owned, needs)
        items = size = 0
        orphan_bases: set[int] = set()
        for lid in drop:
            n, b = c.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0) FROM items WHERE list_id = ?", (lid,)
            ).fetchone()
            items, size = items + n, size + b
            c.execute("DELETE FROM items WHERE list_id = ?", (lid,))
            c.execute("DELETE FROM lists WHERE list_id = ?", (lid,))
            if owned[lid].base_id is not None:
                orphan_bases.add(owned[lid].base_id)  # type: ignore[arg-type]
        for lid, length in trim.items():
            n, b = c.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0) FROM items WHERE list_id = ? AND pos >= ?",
                (lid, length),
            ).fetchone()
            items, size = items + n, size + b
            c.execute("DELETE FROM items WHERE list_id = ? AND pos >= ?", (lid, length))
            c.execute("UPDATE lists SET sealed = 1 WHERE list_id = ?", (lid,))
        # A base owned by a deleted thread lives only as long as lists built on it.
        for base_id in orphan_bases - set(drop):
            row = c.execute(
                "SELECT l.tkey, l.base_id, l.base_len FROM lists l LEFT JOIN threads t ON t.tkey = l.tkey "
                "WHERE l.list_id = ? AND t.tkey IS NULL",
                (base_id,),
            ).fetchone()
            if row is None:
                continue
            sub = self._drop_lists(
                c,
                {base_id: ListInfo(base_id, row[1], row[2], self._list_length(c, base_id, row[2]))},
                {
                    base_id: c.execute(
                        "SELECT coalesce(max(base_len), 0) FROM lists WHERE base_id = ?", (base_id,)
                    ).fetchone()[0]
                },
            )
            items, size = items + sub.list_items, size + sub.bytes
            drop.extend([base_id] if sub.lists else [])
        return GcReport(list_items=items, lists=len(drop), bytes=size)

    def collect_garbage(self) -> GcReport:
        def op(c: sqlite3.Connection) -> GcReport:
            total = GcReport()
            keys = [
                r[0]
                for r in c.execute(
                    "SELECT DISTINCT tkey FROM lists UNION SELECT DISTINCT tkey FROM thread_blobs"
                )
            ]
            for tkey in keys:
                r = self._gc_thread(c, tkey)
                total = GcReport(
                    total.blobs + r.blobs,
                    total.list_items + r.list_items,
                    total.lists + r.lists,
                    total.bytes + r.bytes,
                )
            orphan = c.execute(
                "DELETE FROM blobs WHERE NOT EXISTS "
                "(SELECT 1 FROM thread_blobs tb WHERE tb.hash = blobs.hash)"
            ).rowcount
            return GcReport(total.blobs + orphan, total.list_items, total.lists, total.bytes)

        return self._write(op)

    def _refuse_in_snapshot(self, what: str) -> None:
        """Raise StorageError when this thread's connection holds a read snapshot open (its
        own transaction would block the work forever, not just for a while)."""
        if self._shared is None and self._conn().in_transaction:
            raise StorageError(f"{self.url}: {what} inside a read snapshot (snapshot()) of the same thread")

    def _truncate_wal(self, conn: sqlite3.Connection) -> None:
        """Checkpoint the whole WAL and truncate it. The pragma reports a checkpoint it could
        not finish (another connection, such as the background checkpointer, is running one,
        or a reader still needs old pages) in its result instead of raising: try again for a
        few seconds, then leave the rest to later checkpoints."""
        self._refuse_in_snapshot("a WAL checkpoint (storage_bytes, reclaim_space)")
        deadline = time.monotonic() + 5.0
        while True:
            row = self._retry(lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
            if not row[0] or time.monotonic() > deadline:
                return
            time.sleep(0.002)

    def reclaim_space(self) -> int:
        before = self.storage_bytes()
        conn = self._conn()
        with self._translate():
            self._truncate_wal(conn)
            # executescript steps the pragma to completion (execute would free one page)
            self._retry(lambda: conn.executescript("PRAGMA incremental_vacuum;"))
            self._truncate_wal(conn)
        return max(0, before - self.storage_bytes())

    def storage_bytes(self) -> int:
        conn = self._conn()
        with self._translate():
            self._truncate_wal(conn)
        if self.path is None:
            c = self._conn()
            return int(c.execute("PRAGMA page_count").fetchone()[0]) * int(
                c.execute("PRAGMA page_size").fetchone()[0]
            )
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += os.path.getsize(f"{self.path}{suffix}")
        return total


def _write_cursor(tkey: str, rest: str) -> tuple[int, bytes, str, int]:
    """(tkey, checkpoint, task id, index) of a pending-writes cursor ("" = the start)."""
    if not tkey:
        return (-1, b"", "", -1)
    cp_hex, idx, task = rest.split("/", 2)
    return (int(tkey), bytes.fromhex(cp_hex), task, int(idx))
