"""PostgreSQL backend: one store shared by many processes and machines.

psycopg 3 with a psycopg_pool pool (or a connection or pool you pass in). All
tables live in one schema (``?schema=name``, default ``threadline``), created
and migrated on open under ``pg_advisory_xact_lock``. Writes are READ COMMITTED
transactions. The usual checkpoint write (no new branch, no list to fork) is one
autocommit statement calling the schema's ``append_checkpoint`` function, which
takes the locks, checks, inserts and moves the head on the server; the other
writes are sent in pipeline mode: the locks and facts a write depends on in one
round trip, the rows and the COMMIT in a second.

Row locks keep the contract across processes: a writer locks its branch row
``FOR UPDATE`` (head read and moved in one transaction) and its thread row
``FOR KEY SHARE``; deletions and collection lock the thread row ``FOR UPDATE``;
a list is locked ``FOR NO KEY UPDATE`` to append and ``FOR KEY SHARE`` to build
on; a blob ``FOR KEY SHARE`` to reference and ``FOR UPDATE`` to delete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import threading
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import ormsgpack
import psycopg
import psycopg.errors
import psycopg_pool
import zstandard
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from threadline.errors import (
    AlreadyExists,
    Conflict,
    IntegrityError,
    InvalidInput,
    NotFound,
    SchemaError,
    StaleReference,
    StorageError,
    ThreadlineError,
)
from threadline.model import (
    DEFAULT_BRANCH,
    KIND_CODES,
    KINDS_BY_CODE,
    STATUS_CODES,
    STATUSES_BY_CODE,
    CheckpointKind,
    CheckpointStatus,
    new_checkpoint_id,
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
Conn = psycopg.Connection[Any]

DEFAULT_SCHEMA = "threadline"
#: Retries of a transaction that failed without effect (deadlock, lost connection before COMMIT).
_RETRIES = 3
#: Rows per statement when deleting or copying many: bounds statement size and lock time.
_BATCH = 1000

_EXTERNAL = "ALTER TABLE {s}.%s ALTER COLUMN %s SET STORAGE EXTERNAL"  # framed bytes: no TOAST recompression

#: One checkpoint write in one call: what :meth:`PostgresRepository._append_one` does in two
#: round trips of six statements, for writes that create no branch and fork no list (the usual
#: put). The same locks (branch FOR UPDATE, thread FOR KEY SHARE, blobs referenced FOR KEY SHARE,
#: lists appended to FOR NO KEY UPDATE, lists built on FOR KEY SHARE) and the same checks in the
#: same order; the blobs are locked before the lists (the general path locks them after), which
#: no other writer or collector waits on in the opposite order for a list of this thread, and a
#: deadlock would be retried anyway. Errors are raised with SQLSTATEs of class TL that the client
#: maps back to threadline's exceptions (``_fast_error``); TLF01 asks the client to run the general
#: path instead (a list to fork, a list of another thread, a generated id to move after the head).
#: Blobs the manifest shares with the planned parent are known to exist and to be recorded for
#: the thread while that parent is the head: the client sends the blobs to check and to record
#: both with and without them, and the function picks. The usual put of a growing chat runs five
#: statements: the branch lock, the list update (which locks it), the items, the checkpoint row
#: and the head. Returns the parent and the stored size.
APPEND_FUNCTION = """
CREATE FUNCTION {s}.append_checkpoint(
    p_thread text, p_branch text, p_check_head boolean, p_expected uuid,
    p_id uuid, p_generated boolean, p_planned uuid,
    p_kind smallint, p_created_at bigint, p_expires_at bigint, p_logical bigint, p_stored bigint,
    p_milestone text, p_merge_parent uuid, p_restored uuid, p_header bytea, p_manifest bytea,
    p_check bytea[], p_check_carried bytea[], p_record bytea[], p_record_carried bytea[],
    p_new_hashes bytea[], p_new_offsets integer[], p_new_sizes integer[], p_new_logical bigint[],
    p_new_data bytea, p_new_referenced bytea[],
    p_lists bigint[], p_starts integer[], p_ends integer[],
    p_item_lists bigint[], p_item_pos integer[], p_item_crcs integer[], p_item_offsets integer[],
    p_item_sizes integer[], p_item_data bytea,
    p_refs bigint[], p_ref_lens integer[],
    OUT o_parent uuid, OUT o_stored bigint
) LANGUAGE plpgsql AS $$
DECLARE
    v_tkey bigint;
    v_bkey bigint;
    v_carried boolean;
    v_blobs bytea[];
    v_missing bytea;
    v_ltkey bigint;
    v_len integer;
    v_sealed boolean;
BEGIN
    SELECT t.tkey, b.bkey, b.head INTO v_tkey, v_bkey, o_parent FROM {s}.threads t LEFT JOIN LATERAL
        (SELECT bkey, head FROM {s}.branches WHERE tkey = t.tkey AND name = p_branch FOR UPDATE) b ON true
        WHERE t.id = p_thread FOR KEY SHARE OF t;
    IF v_tkey IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'TLT01', MESSAGE = 'thread does not exist';
    END IF;
    v_carried := p_planned IS NOT NULL AND o_parent IS NOT DISTINCT FROM p_planned;
    v_blobs := CASE WHEN v_carried THEN p_check_carried ELSE p_check END;
    IF cardinality(v_blobs) > 0 THEN
        SELECT h INTO v_missing FROM unnest(v_blobs) h WHERE h <> ALL(ARRAY(
            SELECT hash FROM {s}.blobs WHERE hash = ANY(v_blobs) ORDER BY hash FOR KEY SHARE)) ORDER BY h LIMIT 1;
        IF v_missing IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'TLS01',
                MESSAGE = format('blob %s does not exist', encode(v_missing, 'hex'));
        END IF;
    END IF;
    IF v_bkey IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'TLB01', MESSAGE = 'branch does not exist';
    END IF;
    IF p_check_head AND o_parent IS DISTINCT FROM p_expected THEN
        RAISE EXCEPTION USING ERRCODE = 'TLH01', MESSAGE = 'branch moved', DETAIL = coalesce(o_parent::text, '');
    END IF;
    IF p_restored IS NOT NULL
            AND NOT EXISTS (SELECT FROM {s}.checkpoints WHERE tkey = v_tkey AND id = p_restored) THEN
        RAISE EXCEPTION USING ERRCODE = 'TLR01', MESSAGE = 'restored checkpoint does not exist';
    END IF;
    IF p_milestone IS NOT NULL
            AND EXISTS (SELECT FROM {s}.checkpoints WHERE tkey = v_tkey AND milestone = p_milestone) THEN
        RAISE EXCEPTION USING ERRCODE = 'TLM01', MESSAGE = 'milestone exists';
    END IF;
    IF p_generated THEN
        IF o_parent IS NOT NULL AND p_id <= o_parent THEN
            RAISE EXCEPTION USING ERRCODE = 'TLF01', MESSAGE = 'generated id not after the head';
        END IF;
    ELSIF EXISTS (SELECT FROM {s}.checkpoints WHERE tkey = v_tkey AND id = p_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'TLI01', MESSAGE = 'checkpoint exists';
    END IF;
    FOR i IN 1 .. cardinality(p_lists) LOOP
        IF p_ends[i] > p_starts[i] THEN  -- the usual append: one statement updates and locks the list
            UPDATE {s}.lists SET length = p_ends[i]
                WHERE list_id = p_lists[i] AND tkey = v_tkey AND length = p_starts[i] AND NOT sealed;
            CONTINUE WHEN FOUND;
        END IF;
        SELECT tkey, length, sealed INTO v_ltkey, v_len, v_sealed FROM {s}.lists
            WHERE list_id = p_lists[i] FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            IF p_starts[i] <> 0 THEN
                RAISE EXCEPTION USING ERRCODE = 'TLS01', MESSAGE = format('list %s does not exist', p_lists[i]);
            END IF;
            INSERT INTO {s}.lists (list_id, tkey, length) VALUES (p_lists[i], v_tkey, p_ends[i]);
        ELSIF v_len < p_starts[i] THEN
            RAISE EXCEPTION USING ERRCODE = 'TLS01',
                MESSAGE = format('list %s has %s items, fewer than %s', p_lists[i], v_len, p_starts[i]);
        ELSIF v_ltkey <> v_tkey OR v_sealed OR v_len <> p_starts[i] THEN
            RAISE EXCEPTION USING ERRCODE = 'TLF01', MESSAGE = 'list to fork';
        END IF;
    END LOOP;
    FOR i IN 1 .. cardinality(p_refs) LOOP
        SELECT tkey, length INTO v_ltkey, v_len FROM {s}.lists WHERE list_id = p_refs[i] FOR KEY SHARE;
        IF NOT FOUND OR v_len < p_ref_lens[i] THEN
            RAISE EXCEPTION USING ERRCODE = 'TLS01',
                MESSAGE = format('list %s with %s items does not exist', p_refs[i], p_ref_lens[i]);
        ELSIF v_ltkey <> v_tkey THEN
            RAISE EXCEPTION USING ERRCODE = 'TLF01', MESSAGE = 'list of another thread';
        END IF;
    END LOOP;
    o_stored := p_stored;
    IF cardinality(p_new_hashes) > 0 THEN
        WITH added AS (
            INSERT INTO {s}.blobs (hash, data)
                SELECT h, substring(p_new_data FROM o FOR z) FROM unnest(p_new_hashes, p_new_offsets, p_new_sizes)
                    AS u(h, o, z)
            ON CONFLICT DO NOTHING RETURNING hash
        )
        SELECT o_stored + coalesce(sum(n.size), 0) INTO o_stored
            FROM added JOIN unnest(p_new_hashes, p_new_logical) AS n(hash, size) USING (hash);
        IF cardinality(p_new_referenced) > 0 THEN
            SELECT h INTO v_missing FROM unnest(p_new_referenced) h WHERE h <> ALL(ARRAY(
                SELECT hash FROM {s}.blobs WHERE hash = ANY(p_new_referenced) ORDER BY hash FOR KEY SHARE))
                ORDER BY h LIMIT 1;
            IF v_missing IS NOT NULL THEN
                RAISE EXCEPTION USING ERRCODE = 'TLS01',
                    MESSAGE = format('blob %s was collected while it was written', encode(v_missing, 'hex'));
            END IF;
        END IF;
    END IF;
    IF cardinality(p_item_lists) > 0 THEN
        INSERT INTO {s}.items (list_id, pos, crc, data)
            SELECT l, p, c, substring(p_item_data FROM o FOR z)
            FROM unnest(p_item_lists, p_item_pos, p_item_crcs, p_item_offsets, p_item_sizes) AS u(l, p, c, o, z);
    END IF;
    v_blobs := CASE WHEN v_carried THEN p_record_carried ELSE p_record END;
    IF cardinality(v_blobs) > 0 THEN
        INSERT INTO {s}.thread_blobs (tkey, hash) SELECT v_tkey, h FROM unnest(v_blobs) h ON CONFLICT DO NOTHING;
    END IF;
    INSERT INTO {s}.checkpoints (tkey, bkey, created_at, logical_size, stored_size, expires_at, id, parent,
            merge_parent, kind, milestone, header, manifest)
        VALUES (v_tkey, v_bkey, p_created_at, p_logical, o_stored, p_expires_at, p_id, o_parent,
            p_merge_parent, p_kind, p_milestone, p_header, p_manifest);
    UPDATE {s}.branches SET head = p_id WHERE bkey = v_bkey;
    IF p_restored IS NOT NULL THEN
        UPDATE {s}.checkpoints SET restore_count = restore_count + 1 WHERE tkey = v_tkey AND id = p_restored;
    END IF;
END
$$"""

MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            "CREATE TABLE {s}.threadline_meta (key text PRIMARY KEY, value text NOT NULL)",
            """CREATE TABLE {s}.threads (
                tkey bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                created_at bigint NOT NULL,
                id text COLLATE "C" NOT NULL UNIQUE,
                session_id text COLLATE "C",
                metadata bytea NOT NULL,
                default_branch text NOT NULL DEFAULT 'main',
                origin bytea
            )""",
            "CREATE INDEX threads_by_session ON {s}.threads (session_id, id) WHERE session_id IS NOT NULL",
            """CREATE TABLE {s}.branches (
                bkey bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                tkey bigint NOT NULL,
                created_at bigint NOT NULL,
                head uuid,
                base uuid,
                name text COLLATE "C" NOT NULL,
                UNIQUE (tkey, name)
            )""",
            # Fixed-width columns first: no alignment padding in a row that exists per checkpoint.
            """CREATE TABLE {s}.checkpoints (
                tkey bigint NOT NULL,
                bkey bigint NOT NULL,
                created_at bigint NOT NULL,
                logical_size bigint NOT NULL,
                stored_size bigint NOT NULL,
                expires_at bigint,
                id uuid NOT NULL,
                parent uuid,
                merge_parent uuid,
                restore_count integer NOT NULL DEFAULT 0,
                kind smallint NOT NULL,
                status smallint NOT NULL DEFAULT 0,
                milestone text,
                header bytea NOT NULL,
                manifest bytea NOT NULL,
                PRIMARY KEY (tkey, id)
            )""",
            "CREATE INDEX checkpoints_by_id ON {s}.checkpoints (id)",
            "CREATE UNIQUE INDEX checkpoints_milestone ON {s}.checkpoints (tkey, milestone) "
            "WHERE milestone IS NOT NULL",
            "CREATE INDEX checkpoints_expiry ON {s}.checkpoints (expires_at) WHERE expires_at IS NOT NULL",
            "CREATE TABLE {s}.blobs (hash bytea PRIMARY KEY, data bytea NOT NULL)",
            _EXTERNAL % ("blobs", "data"),
            """CREATE TABLE {s}.thread_blobs (
                tkey bigint NOT NULL,
                hash bytea NOT NULL,
                PRIMARY KEY (tkey, hash)
            )""",
            "CREATE INDEX thread_blobs_by_hash ON {s}.thread_blobs (hash)",
            """CREATE TABLE {s}.lists (
                list_id bigint PRIMARY KEY,
                tkey bigint NOT NULL,
                base_id bigint,
                base_len integer NOT NULL DEFAULT 0,
                length integer NOT NULL DEFAULT 0,
                depth smallint NOT NULL DEFAULT 0,
                sealed boolean NOT NULL DEFAULT false
            )""",
            "CREATE INDEX lists_by_thread ON {s}.lists (tkey)",
            "CREATE INDEX lists_by_base ON {s}.lists (base_id) WHERE base_id IS NOT NULL",
            """CREATE TABLE {s}.items (
                list_id bigint NOT NULL,
                pos integer NOT NULL,
                crc integer NOT NULL,
                data bytea NOT NULL,
                PRIMARY KEY (list_id, pos)
            )""",
            _EXTERNAL % ("items", "data"),
        ],
    ),
    (
        2,
        [
            """CREATE TABLE {s}.participants (
                tkey bigint NOT NULL,
                principal text COLLATE "C" NOT NULL,
                role text NOT NULL,
                PRIMARY KEY (tkey, principal)
            )""",
        ],
    ),
    (
        3,
        [
            "ALTER TABLE {s}.threads ADD COLUMN policy bytea",
            """CREATE TABLE {s}.sessions (
                id text COLLATE "C" PRIMARY KEY,
                created_at bigint NOT NULL,
                metadata bytea NOT NULL,
                owner text,
                status text NOT NULL DEFAULT 'active',
                policy bytea
            )""",
            """CREATE TABLE {s}.sync_points (
                session_id text COLLATE "C" NOT NULL,
                label text COLLATE "C" NOT NULL,
                created_at bigint NOT NULL,
                members bytea NOT NULL,
                metadata bytea NOT NULL DEFAULT '',
                PRIMARY KEY (session_id, label)
            )""",
            """CREATE TABLE {s}.pending_writes (
                tkey bigint NOT NULL,
                checkpoint uuid NOT NULL,
                task_id text COLLATE "C" NOT NULL,
                idx integer NOT NULL,
                channel text NOT NULL,
                value bytea NOT NULL,
                task_path text NOT NULL DEFAULT '',
                PRIMARY KEY (tkey, checkpoint, task_id, idx)
            )""",
            _EXTERNAL % ("pending_writes", "value"),
        ],
    ),
    # Item and blob values may be stored zstd-compressed (_pack): a threadline that does not know
    # that must refuse the store. Existing values stay as they are, so nothing is rewritten.
    (4, []),
    # The usual checkpoint write as one server-side call (PostgresRepository._append_fast).
    (5, [APPEND_FUNCTION]),
]
#: The schema version this backend migrates to (its own: PostgreSQL's layout moves on its own).
SCHEMA_VERSION: Final = MIGRATIONS[-1][0]

TABLES = (
    "threadline_meta",
    "threads",
    "branches",
    "checkpoints",
    "blobs",
    "thread_blobs",
    "lists",
    "items",
    "participants",
    "sessions",
    "sync_points",
    "pending_writes",
)

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
#: Unique violations that mean "already exists" (the rest are races the caller may retry).
_UNIQUE_MESSAGES = {
    "threads_id_key": "thread already exists",
    "checkpoints_pkey": "checkpoint already exists in this thread",
    "checkpoints_milestone": "milestone name already exists in this thread",
    "branches_tkey_name_key": "branch already exists in this thread",
    "sessions_pkey": "session already exists",
    "sync_points_pkey": "sync point label already exists in this session",
}


def _u(checkpoint_id: str | None) -> uuid.UUID | None:
    return uuid.UUID(checkpoint_id) if checkpoint_id is not None else None


def _s(value: uuid.UUID | None) -> str | None:
    return str(value) if value is not None else None


def _crc_in(crc: int) -> int:
    """A CRC-32 as a signed 32-bit integer (PostgreSQL has no unsigned int4)."""
    return crc - (1 << 32) if crc >= 1 << 31 else crc


#: Stored item and blob values that start with this (the zstd magic number) are zstd frames.
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: Sizes of the values _pack tries to compress: below, the saving is a few bytes; above, the
#: serializer has compressed them already (from 2 KiB by default) or they do not compress.
_PACK_MIN, _PACK_MAX = 128, 8192
#: No stored value can decompress to more (a bytea holds at most 1 GB).
_UNPACK_MAX = 1 << 30
_zstd = threading.local()  # zstd contexts are not thread-safe: one pair per thread


def _pack(data: bytes) -> bytes:
    """The stored form of an item or blob value: zstd level 1 when that saves at least 10%.

    PostgreSQL compresses nothing in rows under ~2 KB, where its ~28 bytes of overhead per row
    already weigh most, and the serializer compresses values of 2 KiB or more: a list of
    700-byte chat messages would otherwise be stored as it is. A stored value is a zstd frame
    exactly when it starts with the zstd magic number, so a value that starts with it (never a
    serializer frame, whose first byte is 0-3) is stored compressed whatever the saving.
    """
    magic = data.startswith(_ZSTD_MAGIC)
    if not (magic or _PACK_MIN <= len(data) < _PACK_MAX):
        return data
    compressor = getattr(_zstd, "c", None)
    if compressor is None:
        compressor = _zstd.c = zstandard.ZstdCompressor(level=1, write_content_size=True)
    packed: bytes = compressor.compress(data)
    return packed if magic or len(packed) <= len(data) * 0.9 else data


def _unpack(stored: bytes, what: str) -> bytes:
    """Inverse of :func:`_pack`; IntegrityError naming ``what`` for a corrupt frame."""
    if not stored.startswith(_ZSTD_MAGIC):
        return stored
    try:
        if not 0 <= zstandard.frame_content_size(stored) <= _UNPACK_MAX:
            raise zstandard.ZstdError("no valid content size in the frame header")
        decompressor = getattr(_zstd, "d", None)
        if decompressor is None:
            decompressor = _zstd.d = zstandard.ZstdDecompressor()
        data: bytes = decompressor.decompress(stored)
        return data
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{what} is corrupt: bad zstd frame ({exc})") from None


def _ints(values: Iterable[int]) -> str:
    """An integer array parameter as its text literal."""
    return "{" + ",".join(map(str, values)) + "}"


def _hashes(values: Iterable[bytes]) -> str:
    """A bytea array parameter as its text literal."""
    return "{" + ",".join(f'"\\\\x{h.hex()}"' for h in values) + "}"


def _cut(values: Sequence[bytes]) -> tuple[str, str]:
    """Integer array literals of the 1-based offsets and the sizes of ``values`` joined in one bytea."""
    offsets, at = [], 1
    for v in values:
        offsets.append(at)
        at += len(v)
    return _ints(offsets), _ints(len(v) for v in values)


def _first(cur: psycopg.Cursor[Any]) -> Any:
    """The first row of a statement that always returns one (aggregates, RETURNING of a known row)."""
    row = cur.fetchone()
    assert row is not None
    return row


def _chunks(values: Sequence[R], size: int = _BATCH) -> Iterator[Sequence[R]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


class _GeneralPath(Exception):
    """``append_checkpoint`` left this write to the general path (nothing was written)."""


@dataclass(frozen=True, slots=True)
class _ListRow:
    list_id: int
    tkey: int
    base_id: int | None
    base_len: int
    length: int
    depth: int
    sealed: bool


@dataclass(slots=True)
class _Attempt:
    committing: bool = False
    read_only: bool = False


def parse_url(url: str) -> tuple[str, str, dict[str, str], str]:
    """(libpq conninfo, schema, threadline options, URL safe to show) of a store URL.

    ``schema``, ``pool_min`` and ``pool_max`` are threadline's; other query
    parameters (``sslmode``, ``connect_timeout``, ...) go to libpq.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in ("schema", "pool_min", "pool_max")}
    theirs = [(k, v) for k, v in query if k not in ours]
    schema = ours.pop("schema", DEFAULT_SCHEMA)
    if not _SCHEMA_NAME.fullmatch(schema):
        raise InvalidInput(
            f"schema {schema!r} in {url!r} is not a plain identifier (letters, digits, _; at most 63)"
        )
    conninfo = f"postgresql://{parts.netloc}{parts.path}" + (f"?{urlencode(theirs)}" if theirs else "")
    try:
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number)
        conninfo_to_dict(conninfo)
    except (ValueError, psycopg.Error) as exc:
        raise InvalidInput(f"malformed PostgreSQL URL {url!r}: {exc}") from None
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    shown = f"{parts.scheme}://{netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")
    return conninfo, schema, ours, shown


class PostgresRepository(CheckpointRepository):
    """The storage contract on a PostgreSQL schema (URL, connection or pool)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        connection: Conn | None = None,
        pool: psycopg_pool.ConnectionPool[Any] | None = None,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
    ) -> None:
        if sum(x is not None for x in (url, connection, pool)) != 1:
            raise InvalidInput("give PostgresRepository exactly one of a URL, a connection or a pool")
        self._closed = False
        self._shared: Conn | None = connection
        self._shared_lock = threading.RLock()
        self._pool: psycopg_pool.ConnectionPool[Any] | None = pool
        self._owns_pool = False
        self._sql_cache: dict[str, str] = {}
        if url is not None:
            conninfo, url_schema, options, self.url = parse_url(url)
            schema = schema or url_schema
            try:
                min_size = int(options.get("pool_min", min_size))
                max_size = int(options.get("pool_max", max_size))
            except ValueError:
                raise InvalidInput(f"pool_min and pool_max must be integers in {self.url!r}") from None
            if not 0 <= min_size <= max_size or max_size < 1:
                raise InvalidInput(f"need 0 <= pool_min <= pool_max and pool_max >= 1 in {self.url!r}")
            self._connect_once(conninfo)
            self._pool = psycopg_pool.ConnectionPool(
                conninfo,
                min_size=min_size,
                max_size=max_size,
                kwargs={"autocommit": True, **self._application_name(conninfo)},
                open=True,
                name="threadline",
            )
            self._owns_pool = True
        else:
            self.url = "postgresql://(connection)" if connection is not None else "postgresql://(pool)"
        self.schema = schema or DEFAULT_SCHEMA
        if not _SCHEMA_NAME.fullmatch(self.schema):
            raise InvalidInput(f"schema {self.schema!r} is not a plain identifier")
        self._prefix = f'"{self.schema}"'
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ connections

    def _connect_once(self, conninfo: str) -> None:
        """Fail fast with the server's own reason (bad password, no database, refused)."""
        try:
            psycopg.connect(conninfo, connect_timeout=10).close()
        except psycopg.Error as exc:
            raise self._translate(exc) from None

    @staticmethod
    def _application_name(conninfo: str) -> dict[str, str]:
        return {} if "application_name" in conninfo_to_dict(conninfo) else {"application_name": "threadline"}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_pool and self._pool is not None:
            self._pool.close()

    def _sql(self, text: str) -> str:
        sql = self._sql_cache.get(text)
        if sql is None:
            sql = self._sql_cache[text] = text.replace("{s}", self._prefix)
        return sql

    def _x(
        self, c: Conn, sql: str, args: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> psycopg.Cursor[Any]:
        return c.execute(self._sql(sql), args, binary=True)

    def _x_or_defer(
        self, c: Conn, deferred: list[tuple[str, Sequence[Any]]] | None, sql: str, args: Sequence[Any]
    ) -> None:
        if deferred is None:
            self._x(c, sql, args)
        else:
            deferred.append((self._sql(sql), args))

    def _run_deferred(self, c: Conn, deferred: list[tuple[str, Sequence[Any]]]) -> None:
        """Run independent data-changing statements as one (data-modifying CTEs): one message, one plan."""
        if len(deferred) == 1:
            c.execute(deferred[0][0], deferred[0][1])
        elif deferred:
            sql = "WITH " + ", ".join(f"w{i} AS ({q})" for i, (q, _) in enumerate(deferred)) + " SELECT 1"
            c.execute(sql, [a for _, args in deferred for a in args])

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Conn]:
        if self._closed:
            raise StorageError(f"store {self.url} is closed")
        if self._shared is not None:
            with self._shared_lock:
                yield from self._autocommit(self._shared)
            return
        assert self._pool is not None
        with self._pool.connection() as conn:
            yield from self._autocommit(conn)

    @staticmethod
    def _autocommit(conn: Conn) -> Iterator[Conn]:
        """Transactions are ours (explicit BEGIN); a caller's non-autocommit setting is restored."""
        if conn.autocommit or conn.closed:
            yield conn
            return
        if conn.info.transaction_status == TransactionStatus.IDLE:
            conn.autocommit = True
        try:
            yield conn
        finally:
            if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
                conn.autocommit = False

    # ------------------------------------------------------------ errors and transactions

    def _translate(self, exc: psycopg.Error) -> ThreadlineError:
        """The one place where psycopg errors become threadline errors."""
        if isinstance(exc, psycopg.errors.UniqueViolation):
            name = exc.diag.constraint_name or ""
            if name in _UNIQUE_MESSAGES:
                detail = exc.diag.message_detail or ""
                return AlreadyExists(f"{_UNIQUE_MESSAGES[name]} ({detail.strip()})")
            return StaleReference(f"a concurrent write changed {name or 'the store'}; retry")
        if isinstance(exc, psycopg_pool.PoolTimeout):
            return StorageError(f"{self.url}: no database connection became available ({exc})")
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            return StorageError(
                f"{self.url}: permission denied ({exc.diag.message_primary}); grant the role access to "
                f"schema {getattr(self, 'schema', DEFAULT_SCHEMA)!r} or name another with ?schema="
            )
        if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName):
            return SchemaError(f"{self.url}: the store's tables are missing ({exc.diag.message_primary})")
        if isinstance(exc, psycopg.errors.DataError):
            return InvalidInput(f"{self.url}: value refused by PostgreSQL ({exc.diag.message_primary})")
        if isinstance(exc, psycopg.OperationalError) and exc.sqlstate in (None, "08006", "08001", "08004"):
            text = str(exc).strip()
            reason = text.splitlines()[-1] if text else type(exc).__name__
            reason = re.sub(r"^.*?FATAL:\s*", "", reason)
            hint = ""
            if "does not exist" in reason and "database" in reason:
                hint = "; create the database first (createdb NAME) or fix the URL"
            elif "password" in reason or "authentication" in reason:
                hint = "; check the user name and password in the URL"
            elif "refused" in reason or "timeout" in reason or "translate host" in reason:
                hint = "; is the server running and the host/port right?"
            return StorageError(f"cannot use PostgreSQL store {self.url}: {reason}{hint}")
        return StorageError(f"{self.url}: {type(exc).__name__}: {str(exc).strip()}")

    @staticmethod
    def _lost(exc: psycopg.Error) -> bool:
        """The connection died (server restart, terminated backend, network)."""
        return isinstance(exc, psycopg.OperationalError) and (
            exc.sqlstate in (None, "08000", "08003", "08006", "57P01", "57P02", "57P03")
            and not isinstance(exc, psycopg_pool.PoolTimeout)
        )

    def _retryable(self, exc: psycopg.Error, attempt: _Attempt) -> bool:
        if isinstance(exc, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure):
            return True
        # Once COMMIT is on the wire a lost connection leaves the outcome unknown: never retry a write then.
        return self._lost(exc) and (attempt.read_only or not attempt.committing)

    def _run(
        self,
        body: Callable[[Conn, _Attempt], R],
        *,
        read_only: bool,
        retry: bool = True,
        on_lost: Callable[[], R] | None = None,
    ) -> R:
        """Run ``body`` on a pooled connection; ``on_lost`` answers instead when the connection dies."""
        tries = 0
        while True:
            attempt = _Attempt(read_only=read_only)
            try:
                with self._connection() as conn:
                    return body(conn, attempt)
            except psycopg.Error as exc:
                if on_lost is not None and self._lost(exc):
                    self._heal()
                    return on_lost()
                if retry and tries < _RETRIES and self._retryable(exc, attempt):
                    tries += 1
                    self._heal()
                    continue
                if attempt.committing and not read_only and self._lost(exc):
                    raise StorageError(
                        f"{self.url}: connection lost while committing ({str(exc).strip()}); "
                        "the write was either stored whole or not at all: read the branch head to know"
                    ) from exc
                raise self._translate(exc) from exc

    def _heal(self) -> None:
        """Drop dead connections (server restart, terminated backends) before retrying."""
        if self._pool is not None and not self._closed:
            with contextlib.suppress(psycopg.Error):
                self._pool.check()

    def _tx(
        self,
        fn: Callable[[Conn], R],
        begin: str,
        *,
        read_only: bool,
        retry: bool = True,
        pipeline: bool = True,
    ) -> R:
        def body(conn: Conn, attempt: _Attempt) -> R:
            try:
                with conn.pipeline() if pipeline else contextlib.nullcontext():
                    conn.execute(begin)
                    result = fn(conn)
                    attempt.committing = True
                    conn.execute("COMMIT")
                return result
            except BaseException:
                if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                raise

        return self._run(body, read_only=read_only, retry=retry)

    def _write(self, fn: Callable[[Conn], R], *, retry: bool = True, pipeline: bool = True) -> R:
        """Run ``fn`` in one READ COMMITTED transaction, pipelined unless told; retried when it had
        no effect (``retry=False`` when ``fn`` consumes iterators)."""
        return self._tx(fn, "BEGIN", read_only=False, retry=retry, pipeline=pipeline)

    def _read(self, fn: Callable[[Conn], R]) -> R:
        """Run ``fn`` on one consistent snapshot."""
        return self._tx(fn, "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", read_only=True)

    def _query(self, sql: str, args: Sequence[Any] | Mapping[str, Any] | None = None) -> list[Any]:
        """One statement, in autocommit: one round trip."""
        return self._run(lambda c, _: self._x(c, sql, args).fetchall(), read_only=True)

    # ------------------------------------------------------------ schema

    def _lock_key(self) -> int:
        digest = hashlib.blake2b(f"threadline schema {self.schema}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    def _inspect(self, c: Conn) -> tuple[bool, int | None]:
        """(schema holds tables, recorded version or None when there is no version table)."""
        row = c.execute(
            "SELECT (SELECT count(*) FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace "
            "WHERE n.nspname = %s AND k.relkind IN ('r', 'p', 'v', 'm', 'f')), to_regclass(%s)",
            (self.schema, f"{self._prefix}.threadline_meta"),
        ).fetchone()
        assert row is not None
        if row[1] is None:
            return bool(row[0]), None
        found = self._x(c, "SELECT value FROM {s}.threadline_meta WHERE key = 'schema_version'").fetchone()
        return True, int(found[0]) if found else 0

    def _check_version(self, has_tables: bool, version: int | None) -> bool:
        """True when migrations are needed; raises for stores this threadline must not touch."""
        if version is None and has_tables:
            raise SchemaError(
                f"{self.url}: schema {self.schema!r} holds other tables and is not a threadline store; "
                "refusing to use or change it (name another with ?schema=)"
            )
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaError(
                f"{self.url} (schema {self.schema!r}) has schema version {version}, written by a newer "
                f"threadline (this one knows up to {SCHEMA_VERSION}); upgrade threadline to open it"
            )
        return version != SCHEMA_VERSION

    def _migrate(self) -> None:
        if not self._check_version(*self._read(self._inspect)):
            return

        def apply(c: Conn) -> None:
            c.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key(),))
            has_tables, version = self._inspect(c)  # again: another process may have migrated meanwhile
            if not self._check_version(has_tables, version):
                return
            if c.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone() is None:
                c.execute(self._sql("CREATE SCHEMA {s}"))
            for target, statements in MIGRATIONS:
                if target <= (version or 0):
                    continue
                for sql in statements:
                    c.execute(self._sql(sql))
                self._x(
                    c,
                    "INSERT INTO {s}.threadline_meta (key, value) VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(target),),
                )

        self._write(apply)

    def latest_schema_version(self) -> int:
        return SCHEMA_VERSION

    def schema_version(self) -> int:
        return self._read(self._inspect)[1] or 0

    # ------------------------------------------------------------ helpers

    def _tkey(self, c: Conn, thread_id: str, lock: str = "") -> int:
        row = self._x(c, f"SELECT tkey FROM {{s}}.threads WHERE id = %s {lock}", (thread_id,)).fetchone()
        if row is None:
            raise NotFound(f"thread {thread_id!r} does not exist")
        return int(row[0])

    @staticmethod
    def _thread_row(row: Sequence[Any]) -> ThreadRow:
        return ThreadRow(
            id=row[0],
            created_at=row[1],
            session_id=row[2],
            metadata=row[3],
            default_branch=row[4],
            origin=row[5],
            policy=row[6],
        )

    _THREAD_COLS = "id, created_at, session_id, metadata, default_branch, origin, policy"
    _CP_COLS = (
        "c.id, (SELECT b.name FROM {s}.branches b WHERE b.bkey = c.bkey), c.parent, c.merge_parent, c.kind, "
        "c.status, c.created_at, c.expires_at, c.restore_count, c.logical_size, c.stored_size, c.header, "
        "c.manifest, c.milestone"
    )

    @staticmethod
    def _cp_row(row: Sequence[Any], thread_id: str) -> CheckpointRow:
        cid = str(row[0])
        return CheckpointRow(
            id=cid,
            thread_id=thread_id,
            branch=row[1],
            parent_id=_s(row[2]),
            merge_parent_id=_s(row[3]),
            kind=KINDS_BY_CODE[row[4]],
            status=STATUSES_BY_CODE[row[5]],
            created_at=row[6],
            expires_at=row[7],
            restore_count=row[8],
            logical_size=row[9],
            stored_size=row[10],
            header=row[11],
            manifest=decode_manifest(row[12], cid),
            milestone=row[13],
        )

    _LIST_COLS = "list_id, tkey, base_id, base_len, length, depth, sealed"

    def _lists(self, c: Conn, list_ids: Iterable[int], lock: str) -> psycopg.Cursor[Any]:
        """Queue a locking read of lists, in id order (a fixed lock order avoids deadlocks)."""
        ids = sorted(set(list_ids))
        return self._x(
            c,
            f"SELECT {self._LIST_COLS} FROM {{s}}.lists WHERE list_id IN ({', '.join(['%s'] * len(ids))}) "
            f"ORDER BY list_id FOR {lock}",
            ids,
        )

    @staticmethod
    def _list_rows(cur: psycopg.Cursor[Any] | None) -> dict[int, _ListRow]:
        return {r[0]: _ListRow(*r) for r in cur.fetchall()} if cur is not None else {}

    def _new_list_id(self, c: Conn) -> int:
        while True:
            candidate = secrets.randbits(62) + 1
            if self._x(c, "SELECT 1 FROM {s}.lists WHERE list_id = %s", (candidate,)).fetchone() is None:
                return candidate

    def _segments(self, c: Conn, list_id: int, length: int) -> list[tuple[int, int, int]]:
        """(list id, first pos, end pos) segments that make up a list prefix, oldest first."""
        segments: list[tuple[int, int, int]] = []
        current: int | None = list_id
        end = length
        hops = 0
        while current is not None and end > 0:
            info = self._x(
                c, "SELECT base_id, base_len FROM {s}.lists WHERE list_id = %s", (current,)
            ).fetchone()
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
        self, c: Conn, tkey: int, list_id: int, base: tuple[int, int] | None, known: _ListRow | None = None
    ) -> None:
        if base is None:
            self._x(c, "INSERT INTO {s}.lists (list_id, tkey) VALUES (%s, %s)", (list_id, tkey))
            return
        base_id, base_len = base
        info = known if known is not None and known.list_id == base_id else None
        if info is None:
            info = self._list_rows(self._lists(c, [base_id], "KEY SHARE")).get(base_id)
        if info is None:
            raise StaleReference(f"list {base_id} does not exist")
        if info.length < base_len:
            raise StaleReference(f"list {base_id} has fewer than {base_len} items")
        depth = info.depth + 1
        if depth < MAX_LIST_DEPTH:
            self._x(
                c,
                "INSERT INTO {s}.lists (list_id, tkey, base_id, base_len, length, depth) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (list_id, tkey, base_id, base_len, base_len, depth),
            )
            return
        # Too deep: copy the prefix into a fresh root list so reads stay bounded.
        self._x(
            c, "INSERT INTO {s}.lists (list_id, tkey, length) VALUES (%s, %s, %s)", (list_id, tkey, base_len)
        )
        for seg_id, lo, hi in self._segments(c, base_id, base_len):
            self._x(
                c,
                "INSERT INTO {s}.items (list_id, pos, crc, data) SELECT %s, pos, crc, data FROM {s}.items "
                "WHERE list_id = %s AND pos >= %s AND pos < %s",
                (list_id, seg_id, lo, hi),
            )

    def _apply_list(
        self,
        c: Conn,
        tkey: int,
        la: ListAppend,
        info: _ListRow | None,
        deferred: list[tuple[str, Sequence[Any]]] | None = None,
    ) -> tuple[int, int]:
        """Store one list append (``info``: the locked list row, if any); returns (final list id, bytes).

        With ``deferred``, the item rows and the new length are queued there instead of sent.
        """
        target = la.list_id
        start = la.start
        if la.base is not None:
            self._create_list(c, tkey, target, la.base)
        elif info is None:
            if start != 0:
                raise StaleReference(f"list {target} does not exist")
            self._create_list(c, tkey, target, None)
        else:
            if info.length < start:
                raise StaleReference(f"list {target} has {info.length} items, fewer than {start}")
            if info.sealed or info.length != start or info.tkey != tkey:
                target = self._new_list_id(c)
                self._create_list(c, tkey, target, (la.list_id, start), info)
        for first in range(0, len(la.items), _BATCH):
            rows = range(first, min(first + _BATCH, len(la.items)))
            self._x_or_defer(
                c,
                deferred,
                "INSERT INTO {s}.items (list_id, pos, crc, data) VALUES "
                + ", ".join(["(%s, %s, %s, %s)"] * len(rows)),
                [v for k in rows for v in (target, start + k, _crc_in(la.crcs[k]), _pack(la.items[k]))],
            )
        if la.items:
            self._x_or_defer(
                c,
                deferred,
                "UPDATE {s}.lists SET length = %s WHERE list_id = %s",
                (start + len(la.items), target),
            )
        return target, sum(len(d) for d in la.items)

    def _check_list_ref(self, c: Conn, tkey: int, ref: ListRef, info: _ListRow | None) -> ListRef:
        """Make sure a referenced list prefix exists and is owned by this thread."""
        if info is None or info.length < ref.length:
            raise StaleReference(f"list {ref.list_id} with {ref.length} items does not exist")
        if info.tkey == tkey:
            return ref
        derived = self._new_list_id(c)
        self._create_list(c, tkey, derived, (ref.list_id, ref.length), info)
        return ListRef(derived, ref.length)

    def _lock_blobs(self, c: Conn, hashes: set[bytes]) -> psycopg.Cursor[Any] | None:
        """Queue a locking read of blobs (hash order): none of them can be collected until COMMIT."""
        if not hashes:
            return None
        return self._x(
            c,
            "SELECT hash FROM {s}.blobs WHERE hash = ANY(%s::bytea[]) ORDER BY hash FOR KEY SHARE",
            (sorted(hashes),),
        )

    @staticmethod
    def _check_blobs(cur: psycopg.Cursor[Any] | None, hashes: set[bytes], carried: set[bytes]) -> None:
        """Raise StaleReference unless :meth:`_lock_blobs` found all ``hashes``."""
        missing = hashes - ({bytes(r[0]) for r in cur.fetchall()} if cur is not None else set())
        if missing:
            first = min(missing)
            kind = "was collected while it was written" if first in carried else "does not exist"
            raise StaleReference(f"blob {first.hex()} {kind}")

    def _reference_blobs(
        self,
        c: Conn,
        tkey: int,
        hashes: set[bytes],
        deferred: list[tuple[str, Sequence[Any]]] | None = None,
    ) -> None:
        """Record that thread ``tkey`` references blobs (locked and checked by the caller)."""
        if hashes:
            self._x_or_defer(
                c,
                deferred,
                "INSERT INTO {s}.thread_blobs (tkey, hash) SELECT %s, h FROM unnest(%s::bytea[]) AS u(h) "
                "ON CONFLICT DO NOTHING",
                (tkey, sorted(hashes)),
            )

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
        def op(c: Conn) -> ThreadRow:
            row = self._x(
                c,
                "INSERT INTO {s}.threads (id, created_at, session_id, metadata, origin) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING tkey",
                (thread_id, created_at, session_id, metadata, origin),
            ).fetchone()
            if row is None:
                raise AlreadyExists(f"thread {thread_id!r} already exists")
            self._x(
                c,
                "INSERT INTO {s}.branches (tkey, name, created_at) VALUES (%s, %s, %s)",
                (row[0], DEFAULT_BRANCH, created_at),
            )
            return ThreadRow(thread_id, created_at, session_id, metadata, DEFAULT_BRANCH, origin)

        return self._write(op)

    def get_thread(self, thread_id: str) -> ThreadRow:
        rows = self._query(f"SELECT {self._THREAD_COLS} FROM {{s}}.threads WHERE id = %s", (thread_id,))
        if not rows:
            raise NotFound(f"thread {thread_id!r} does not exist")
        return self._thread_row(rows[0])

    def list_threads(
        self, *, session_id: str | None = None, after: str | None = None, limit: int = 100
    ) -> list[ThreadRow]:
        sql = f"SELECT {self._THREAD_COLS} FROM {{s}}.threads WHERE id > %s"
        args: list[Any] = [after or ""]
        if session_id is not None:
            sql += " AND session_id = %s"
            args.append(session_id)
        sql += " ORDER BY id LIMIT %s"
        args.append(limit)
        return [self._thread_row(r) for r in self._query(sql, args)]

    def _thread_by_key(self, c: Conn, tkey: int) -> ThreadRow:
        return self._thread_row(
            _first(self._x(c, f"SELECT {self._THREAD_COLS} FROM {{s}}.threads WHERE tkey = %s", (tkey,)))
        )

    def update_thread(self, thread_id: str, *, metadata: bytes) -> ThreadRow:
        def op(c: Conn) -> ThreadRow:
            row = self._x(
                c,
                f"UPDATE {{s}}.threads SET metadata = %s WHERE id = %s RETURNING {self._THREAD_COLS}",
                (metadata, thread_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"thread {thread_id!r} does not exist")
            return self._thread_row(row)

        return self._write(op)

    def delete_thread(self, thread_id: str) -> GcReport:
        return self._write(lambda c: self._drop_thread(c, self._tkey(c, thread_id, "FOR UPDATE")))

    # ------------------------------------------------------------ branches

    _BRANCH_COLS = "b.name, b.head, b.created_at, b.base"

    @staticmethod
    def _branch_row(thread_id: str, row: Sequence[Any]) -> BranchRow:
        return BranchRow(
            thread_id=thread_id, name=row[0], head=_s(row[1]), created_at=row[2], base=_s(row[3])
        )

    #: The branch-head read: thread by its unique id, branch by its unique (tkey, name).
    GET_BRANCH_SQL = (
        "SELECT t.tkey, b.name, b.head, b.created_at, b.base FROM {s}.threads t "
        "LEFT JOIN {s}.branches b ON b.tkey = t.tkey AND b.name = %s WHERE t.id = %s"
    )

    def get_branch(self, thread_id: str, name: str) -> BranchRow:
        rows = self._query(self.GET_BRANCH_SQL, (name, thread_id))
        if not rows:
            raise NotFound(f"thread {thread_id!r} does not exist")
        if rows[0][1] is None:
            raise NotFound(f"branch {name!r} does not exist in thread {thread_id!r}")
        return self._branch_row(thread_id, rows[0][1:])

    def list_branches(self, thread_id: str) -> list[BranchRow]:
        def op(c: Conn) -> list[BranchRow]:
            tkey = self._tkey(c, thread_id)
            rows = self._x(
                c,
                f"SELECT {self._BRANCH_COLS} FROM {{s}}.branches b WHERE b.tkey = %s ORDER BY b.name",
                (tkey,),
            ).fetchall()
            return [self._branch_row(thread_id, r) for r in rows]

        return self._read(op)

    def create_branch(self, thread_id: str, name: str, *, head: str | None, created_at: int) -> BranchRow:
        def op(c: Conn) -> BranchRow:
            tkey = self._tkey(c, thread_id, "FOR KEY SHARE")
            if (
                head is not None
                and self._x(
                    c, "SELECT 1 FROM {s}.checkpoints WHERE tkey = %s AND id = %s", (tkey, _u(head))
                ).fetchone()
                is None
            ):
                raise NotFound(f"checkpoint {head} does not exist in thread {thread_id!r}")
            row = self._x(
                c,
                "INSERT INTO {s}.branches (tkey, name, head, created_at, base) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (tkey, name) DO NOTHING RETURNING bkey",
                (tkey, name, _u(head), created_at, _u(head)),
            ).fetchone()
            if row is None:
                raise AlreadyExists(f"branch {name!r} already exists in thread {thread_id!r}")
            return BranchRow(thread_id, name, head, created_at, head)

        return self._write(op)

    def rename_branch(self, thread_id: str, old: str, new: str) -> BranchRow:
        def op(c: Conn) -> BranchRow:
            tkey = self._tkey(c, thread_id, "FOR KEY SHARE")
            if self._x(c, "SELECT 1 FROM {s}.branches WHERE tkey = %s AND name = %s", (tkey, new)).fetchone():
                raise AlreadyExists(f"branch {new!r} already exists in thread {thread_id!r}")
            row = self._x(
                c,
                f"UPDATE {{s}}.branches b SET name = %s WHERE b.tkey = %s AND b.name = %s "
                f"RETURNING {self._BRANCH_COLS}",
                (new, tkey, old),
            ).fetchone()
            if row is None:
                raise NotFound(f"branch {old!r} does not exist in thread {thread_id!r}")
            self._x(
                c,
                "UPDATE {s}.threads SET default_branch = %s WHERE tkey = %s AND default_branch = %s",
                (new, tkey, old),
            )
            return self._branch_row(thread_id, row)

        return self._write(op)

    def _parents(self, c: Conn, tkey: int) -> tuple[dict[str, tuple[str | None, str | None]], list[Any]]:
        rows = self._x(
            c,
            "SELECT id, parent, merge_parent, bkey, milestone FROM {s}.checkpoints WHERE tkey = %s",
            (tkey,),
        ).fetchall()
        return {str(r[0]): (_s(r[1]), _s(r[2])) for r in rows}, rows

    def _delete_rows(self, c: Conn, tkey: int, ids: Iterable[str]) -> None:
        for chunk in _chunks([uuid.UUID(x) for x in ids]):
            self._x(c, "DELETE FROM {s}.checkpoints WHERE tkey = %s AND id = ANY(%s::uuid[])", (tkey, chunk))
            self._x(
                c,
                "DELETE FROM {s}.pending_writes WHERE tkey = %s AND checkpoint = ANY(%s::uuid[])",
                (tkey, chunk),
            )

    def delete_branch(self, thread_id: str, name: str, *, force: bool = False) -> GcReport:
        def op(c: Conn) -> GcReport:
            tkey = self._tkey(c, thread_id, "FOR UPDATE")
            default = self._x(c, "SELECT default_branch FROM {s}.threads WHERE tkey = %s", (tkey,)).fetchone()
            if default is not None and name == default[0]:
                raise InvalidInput(
                    f"branch {name!r} is the default branch of thread {thread_id!r}; "
                    "make another branch the default first"
                )
            branches = {
                r[1]: (r[0], _s(r[2]))
                for r in self._x(c, "SELECT bkey, name, head FROM {s}.branches WHERE tkey = %s", (tkey,))
            }
            if name not in branches:
                raise NotFound(f"branch {name!r} does not exist in thread {thread_id!r}")
            names = {bkey: bname for bname, (bkey, _) in branches.items()}
            parents, rows = self._parents(c, tkey)
            branch_of = {str(r[0]): names.get(r[3], "") for r in rows}
            milestones = {str(r[0]) for r in rows if r[4] is not None}
            heads = {n: h for n, (_, h) in branches.items()}
            doomed, moved = branch_deletion(parents, branch_of, heads, name)
            if doomed & milestones and not force:
                raise Conflict(
                    f"branch {name!r} holds milestones no other branch reaches; pass force to delete them too"
                )
            for cid, target in moved.items():
                self._x(
                    c,
                    "UPDATE {s}.checkpoints SET bkey = %s WHERE tkey = %s AND id = %s",
                    (branches[target][0], tkey, _u(cid)),
                )
            for cid, (parent, merge) in relink(parents, doomed).items():
                self._x(
                    c,
                    "UPDATE {s}.checkpoints SET parent = %s, merge_parent = %s WHERE tkey = %s AND id = %s",
                    (_u(parent), _u(merge), tkey, _u(cid)),
                )
            self._delete_rows(c, tkey, doomed)
            self._x(c, "DELETE FROM {s}.branches WHERE bkey = %s", (branches[name][0],))
            return self._gc_thread(c, tkey)

        return self._write(op)

    def set_default_branch(self, thread_id: str, name: str) -> ThreadRow:
        def op(c: Conn) -> ThreadRow:
            tkey = self._tkey(c, thread_id)
            if not self._x(
                c, "SELECT 1 FROM {s}.branches WHERE tkey = %s AND name = %s", (tkey, name)
            ).fetchone():
                raise NotFound(f"branch {name!r} does not exist in thread {thread_id!r}")
            self._x(c, "UPDATE {s}.threads SET default_branch = %s WHERE tkey = %s", (name, tkey))
            return self._thread_by_key(c, tkey)

        return self._write(op)

    # ------------------------------------------------------------ sessions

    _SESSION_COLS = "id, created_at, metadata, owner, status, policy"

    @staticmethod
    def _session_row(row: Sequence[Any]) -> SessionRow:
        return SessionRow(
            id=row[0], created_at=row[1], metadata=row[2], owner=row[3], status=row[4], policy=row[5]
        )

    def _session(self, c: Conn, session_id: str, lock: str = "") -> SessionRow:
        row = self._x(
            c, f"SELECT {self._SESSION_COLS} FROM {{s}}.sessions WHERE id = %s {lock}", (session_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"session {session_id!r} does not exist")
        return self._session_row(row)

    def create_session(
        self, session_id: str, *, created_at: int, metadata: bytes, owner: str | None, policy: bytes | None
    ) -> SessionRow:
        def op(c: Conn) -> SessionRow:
            row = self._x(
                c,
                "INSERT INTO {s}.sessions (id, created_at, metadata, owner, status, policy) "
                "VALUES (%s, %s, %s, %s, 'active', %s) ON CONFLICT (id) DO NOTHING RETURNING id",
                (session_id, created_at, metadata, owner, policy),
            ).fetchone()
            if row is None:
                raise AlreadyExists(f"session {session_id!r} already exists")
            return SessionRow(session_id, created_at, metadata, owner, "active", policy)

        return self._write(op)

    def get_session(self, session_id: str) -> SessionRow:
        rows = self._query(f"SELECT {self._SESSION_COLS} FROM {{s}}.sessions WHERE id = %s", (session_id,))
        if not rows:
            raise NotFound(f"session {session_id!r} does not exist")
        return self._session_row(rows[0])

    def list_sessions(
        self, *, after: str | None = None, limit: int = 100, status: str | None = None
    ) -> list[SessionRow]:
        sql = f"SELECT {self._SESSION_COLS} FROM {{s}}.sessions WHERE id > %s"
        args: list[Any] = [after or ""]
        if status is not None:
            sql += " AND status = %s"
            args.append(status)
        sql += " ORDER BY id LIMIT %s"
        args.append(limit)
        return [self._session_row(r) for r in self._query(sql, args)]

    def update_session(
        self,
        session_id: str,
        *,
        metadata: bytes | None = None,
        status: str | None = None,
        policy: bytes | Any | None = UNSET,
    ) -> SessionRow:
        def op(c: Conn) -> SessionRow:
            self._session(c, session_id, "FOR UPDATE")
            if metadata is not None:
                self._x(c, "UPDATE {s}.sessions SET metadata = %s WHERE id = %s", (metadata, session_id))
            if status is not None:
                self._x(c, "UPDATE {s}.sessions SET status = %s WHERE id = %s", (status, session_id))
            if policy is not UNSET:
                self._x(c, "UPDATE {s}.sessions SET policy = %s WHERE id = %s", (policy, session_id))
            return self._session(c, session_id)

        return self._write(op)

    def _drop_thread(self, c: Conn, tkey: int) -> GcReport:
        for table in ("checkpoints", "branches", "participants", "pending_writes"):
            self._x(c, f"DELETE FROM {{s}}.{table} WHERE tkey = %s", (tkey,))
        self._x(c, "DELETE FROM {s}.threads WHERE tkey = %s", (tkey,))
        return self._gc_thread(c, tkey)

    def delete_session(self, session_id: str) -> GcReport:
        def op(c: Conn) -> GcReport:
            self._session(c, session_id, "FOR UPDATE")
            total = GcReport()
            keys = self._x(
                c,
                "SELECT tkey FROM {s}.threads WHERE session_id = %s ORDER BY tkey FOR UPDATE",
                (session_id,),
            ).fetchall()
            for (tkey,) in keys:
                total = total + self._drop_thread(c, tkey)
            self._x(c, "DELETE FROM {s}.sync_points WHERE session_id = %s", (session_id,))
            self._x(c, "DELETE FROM {s}.sessions WHERE id = %s", (session_id,))
            return total

        return self._write(op)

    def set_thread_session(self, thread_id: str, session_id: str | None) -> ThreadRow:
        def op(c: Conn) -> ThreadRow:
            tkey = self._tkey(c, thread_id)
            if session_id is not None:
                self._session(c, session_id, "FOR KEY SHARE")
            self._x(c, "UPDATE {s}.threads SET session_id = %s WHERE tkey = %s", (session_id, tkey))
            return self._thread_by_key(c, tkey)

        return self._write(op)

    def set_thread_policy(self, thread_id: str, policy: bytes | None) -> ThreadRow:
        def op(c: Conn) -> ThreadRow:
            row = self._x(
                c,
                f"UPDATE {{s}}.threads SET policy = %s WHERE id = %s RETURNING {self._THREAD_COLS}",
                (policy, thread_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"thread {thread_id!r} does not exist")
            return self._thread_row(row)

        return self._write(op)

    # ------------------------------------------------------------ sync points

    _SYNC_COLS = "session_id, label, created_at, members, metadata"

    @staticmethod
    def _sync_row(row: Sequence[Any]) -> SyncPointRow:
        members = tuple((str(t), str(cid)) for t, cid in ormsgpack.unpackb(row[3]))
        return SyncPointRow(row[0], row[1], row[2], members, row[4])

    def list_sync_points(self, session_id: str) -> list[SyncPointRow]:
        def op(c: Conn) -> list[SyncPointRow]:
            self._session(c, session_id)
            rows = self._x(
                c,
                f"SELECT {self._SYNC_COLS} FROM {{s}}.sync_points WHERE session_id = %s "
                "ORDER BY created_at, label",
                (session_id,),
            ).fetchall()
            return [self._sync_row(r) for r in rows]

        return self._read(op)

    def get_sync_point(self, session_id: str, label: str) -> SyncPointRow:
        rows = self._query(
            f"SELECT {self._SYNC_COLS} FROM {{s}}.sync_points WHERE session_id = %s AND label = %s",
            (session_id, label),
        )
        if not rows:
            raise NotFound(f"sync point {label!r} does not exist in session {session_id!r}")
        return self._sync_row(rows[0])

    def delete_sync_point(self, session_id: str, label: str) -> None:
        def op(c: Conn) -> None:
            row = self._x(
                c,
                "DELETE FROM {s}.sync_points WHERE session_id = %s AND label = %s RETURNING label",
                (session_id, label),
            ).fetchone()
            if row is None:
                raise NotFound(f"sync point {label!r} does not exist in session {session_id!r}")

        self._write(op)

    def apply_ttls(self, thread_id: str, ttls: Mapping[CheckpointKind, int | None], *, now: int) -> int:
        def op(c: Conn) -> int:
            tkey = self._tkey(c, thread_id, "FOR KEY SHARE")
            changed = 0
            for kind, ttl in ttls.items():
                changed += len(
                    self._x(
                        c,
                        "UPDATE {s}.checkpoints SET expires_at = created_at + %s::bigint WHERE tkey = %s "
                        "AND kind = %s AND expires_at IS DISTINCT FROM created_at + %s::bigint RETURNING 1",
                        (ttl, tkey, KIND_CODES[kind], ttl),
                    ).fetchall()
                )
            changed += len(
                self._x(
                    c,
                    "UPDATE {s}.checkpoints SET status = %s WHERE tkey = %s AND status = %s "
                    "AND (expires_at IS NULL OR expires_at > %s) RETURNING 1",
                    (
                        STATUS_CODES[CheckpointStatus.ACTIVE],
                        tkey,
                        STATUS_CODES[CheckpointStatus.EXPIRED],
                        now,
                    ),
                ).fetchall()
            )
            return changed

        return self._write(op)

    def put_sync_point(self, row: SyncPointRow) -> None:
        def op(c: Conn) -> None:
            self._session(c, row.session_id, "FOR KEY SHARE")
            for thread_id, checkpoint_id in row.members:
                tkey = self._tkey(c, thread_id, "FOR KEY SHARE")
                if not self._x(
                    c, "SELECT 1 FROM {s}.checkpoints WHERE tkey = %s AND id = %s", (tkey, _u(checkpoint_id))
                ).fetchone():
                    raise NotFound(f"checkpoint {checkpoint_id} does not exist in thread {thread_id!r}")
            inserted = self._x(
                c,
                "INSERT INTO {s}.sync_points (session_id, label, created_at, members, metadata) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING label",
                (
                    row.session_id,
                    row.label,
                    row.created_at,
                    ormsgpack.packb([list(m) for m in row.members]),
                    row.metadata,
                ),
            ).fetchone()
            if inserted is None:
                raise AlreadyExists(f"sync point {row.label!r} already exists in session {row.session_id!r}")

        self._write(op)

    # ------------------------------------------------------------ pending writes

    def put_writes(
        self, thread_id: str, checkpoint_id: str, writes: Sequence[PendingWrite], *, upsert: bool = False
    ) -> None:
        def op(c: Conn) -> None:
            tkey = self._tkey(c, thread_id, "FOR KEY SHARE")
            cid = _u(checkpoint_id)
            if not self._x(
                c, "SELECT 1 FROM {s}.checkpoints WHERE tkey = %s AND id = %s", (tkey, cid)
            ).fetchone():
                raise NotFound(f"checkpoint {checkpoint_id} does not exist in thread {thread_id!r}")
            action = (
                "DO UPDATE SET channel = excluded.channel, value = excluded.value, task_path = excluded.task_path"
                if upsert
                else "DO NOTHING"
            )
            sql = self._sql(
                "INSERT INTO {s}.pending_writes (tkey, checkpoint, task_id, idx, channel, value, task_path) "
                f"VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (tkey, checkpoint, task_id, idx) {action}"
            )
            c.cursor().executemany(
                sql, [(tkey, cid, w.task_id, w.idx, w.channel, w.value, w.task_path) for w in writes]
            )

        self._write(op)

    def get_writes(self, thread_id: str, checkpoint_ids: Sequence[str]) -> dict[str, list[PendingWrite]]:
        def op(c: Conn) -> dict[str, list[PendingWrite]]:
            tkey = self._tkey(c, thread_id)
            out: dict[str, list[PendingWrite]] = {cid: [] for cid in checkpoint_ids}
            if not checkpoint_ids:
                return out
            wanted = {str(uuid.UUID(cid)): cid for cid in checkpoint_ids}
            rows = self._x(
                c,
                "SELECT checkpoint, task_id, idx, channel, value, task_path FROM {s}.pending_writes "
                "WHERE tkey = %s AND checkpoint = ANY(%s::uuid[]) ORDER BY checkpoint, task_id, idx",
                (tkey, [uuid.UUID(x) for x in checkpoint_ids]),
            ).fetchall()
            for r in rows:
                out[wanted[str(r[0])]].append(PendingWrite(r[1], r[2], r[3], r[4], r[5]))
            return out

        return self._read(op)

    # ------------------------------------------------------------ participants

    def set_participant(self, thread_id: str, principal: str, role: str | None) -> None:
        def op(c: Conn) -> None:
            tkey = self._tkey(c, thread_id, "FOR KEY SHARE")
            if role is None:
                self._x(
                    c, "DELETE FROM {s}.participants WHERE tkey = %s AND principal = %s", (tkey, principal)
                )
            else:
                self._x(
                    c,
                    "INSERT INTO {s}.participants (tkey, principal, role) VALUES (%s, %s, %s) "
                    "ON CONFLICT (tkey, principal) DO UPDATE SET role = excluded.role",
                    (tkey, principal, role),
                )

        self._write(op)

    def participants(self, thread_id: str) -> dict[str, str]:
        def op(c: Conn) -> dict[str, str]:
            tkey = self._tkey(c, thread_id)
            rows = self._x(
                c,
                "SELECT principal, role FROM {s}.participants WHERE tkey = %s ORDER BY principal",
                (tkey,),
            ).fetchall()
            return {r[0]: r[1] for r in rows}

        return self._read(op)

    # ------------------------------------------------------------ copies

    def _insert_thread(self, c: Conn, thread: ThreadRow) -> int:
        row = self._x(
            c,
            "INSERT INTO {s}.threads (id, created_at, session_id, metadata, default_branch, origin, policy) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING tkey",
            (
                thread.id,
                thread.created_at,
                thread.session_id,
                thread.metadata,
                thread.default_branch,
                thread.origin,
                thread.policy,
            ),
        ).fetchone()
        if row is None:
            raise AlreadyExists(f"thread {thread.id!r} already exists")
        return int(row[0])

    _INSERT_CP = (
        "INSERT INTO {s}.checkpoints (tkey, bkey, created_at, logical_size, stored_size, expires_at, id, "
        "parent, merge_parent, restore_count, kind, status, milestone, header, manifest) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    )

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
        def op(c: Conn) -> None:
            tkey = self._insert_thread(c, thread)
            for la in lists:
                info = None
                if la.base is None:
                    info = self._list_rows(self._lists(c, [la.list_id], "NO KEY UPDATE")).get(la.list_id)
                self._apply_list(c, tkey, la, info)
            hashes: set[bytes] = set()
            for chunk in _chunks(list(blobs)):
                self._x(
                    c,
                    "INSERT INTO {s}.blobs (hash, data) SELECT * FROM unnest(%s::bytea[], %s::bytea[]) "
                    "ON CONFLICT DO NOTHING",
                    ([b.hash for b in chunk], [_pack(b.data) for b in chunk]),
                )
                hashes.update(b.hash for b in chunk)
            self._check_blobs(self._lock_blobs(c, hashes), hashes, hashes)
            self._reference_blobs(c, tkey, hashes)
            bkeys: dict[str, int] = {}
            for b in branches:
                row = self._x(
                    c,
                    "INSERT INTO {s}.branches (tkey, name, head, created_at, base) "
                    "VALUES (%s, %s, %s, %s, %s) RETURNING bkey",
                    (tkey, b.name, _u(b.head), b.created_at, _u(b.base)),
                ).fetchone()
                assert row is not None
                bkeys[b.name] = int(row[0])
            c.cursor().executemany(
                self._sql(self._INSERT_CP),
                (
                    (
                        tkey,
                        bkeys[row.branch],
                        row.created_at,
                        row.logical_size,
                        row.stored_size,
                        row.expires_at,
                        _u(row.id),
                        _u(row.parent_id),
                        _u(row.merge_parent_id),
                        row.restore_count,
                        KIND_CODES[row.kind],
                        STATUS_CODES[row.status],
                        row.milestone,
                        row.header,
                        encode_manifest(row.manifest),
                    )
                    for row in checkpoints
                ),
            )
            if participants:
                c.cursor().executemany(
                    self._sql("INSERT INTO {s}.participants (tkey, principal, role) VALUES (%s, %s, %s)"),
                    [(tkey, p, r) for p, r in participants.items()],
                )

        self._write(op, retry=False)

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
        def op(c: Conn) -> ThreadRow:
            src = self._tkey(c, source_id, "FOR KEY SHARE")
            session_id, default, policy = _first(
                self._x(
                    c, "SELECT session_id, default_branch, policy FROM {s}.threads WHERE tkey = %s", (src,)
                )
            )
            dst = self._insert_thread(
                c,
                ThreadRow(
                    target_id,
                    created_at,
                    session_id,
                    metadata,
                    default,
                    origin,
                    bytes(policy) if policy is not None else None,
                ),
            )

            def mapped(value: uuid.UUID | None) -> uuid.UUID | None:
                if value is None or id_map is None:
                    return value
                return uuid.UUID(id_map[str(value)])

            bkeys: dict[int, int] = {}
            for bkey, name, head, bcreated, base in self._x(
                c, "SELECT bkey, name, head, created_at, base FROM {s}.branches WHERE tkey = %s", (src,)
            ).fetchall():
                row = _first(
                    self._x(
                        c,
                        "INSERT INTO {s}.branches (tkey, name, head, created_at, base) "
                        "VALUES (%s, %s, %s, %s, %s) RETURNING bkey",
                        (dst, name, mapped(head), bcreated, mapped(base)),
                    )
                )
                bkeys[bkey] = row[0]
            rows = self._x(
                c,
                "SELECT id, bkey, parent, merge_parent, kind, status, created_at, expires_at, restore_count, "
                "logical_size, milestone, header, manifest FROM {s}.checkpoints WHERE tkey = %s ORDER BY id",
                (src,),
            ).fetchall()
            manifests = [decode_manifest(row[12]) for row in rows]
            needs: dict[int, int] = {}
            for manifest in manifests:
                for lid, n in manifest_refs(manifest)[1].items():
                    needs[lid] = max(needs.get(lid, 0), n)
            infos = self._list_rows(self._lists(c, needs, "KEY SHARE")) if needs else {}
            renames: dict[int, int] = {}
            for lid, n in needs.items():
                renames[lid] = self._new_list_id(c)
                self._create_list(c, dst, renames[lid], (lid, n), infos.get(lid))
            c.cursor().executemany(
                self._sql(self._INSERT_CP),
                [
                    (
                        dst,
                        bkeys[row[1]],
                        row[6],
                        row[9],
                        0,
                        row[7],
                        mapped(row[0]),
                        mapped(row[2]),
                        mapped(row[3]),
                        row[8],
                        row[4],
                        row[5],
                        row[10],
                        row[11],
                        encode_manifest(rewrite_list_ids(manifest, renames)),
                    )
                    for row, manifest in zip(rows, manifests, strict=True)
                ],
            )
            self._x(
                c,
                "INSERT INTO {s}.thread_blobs (tkey, hash) SELECT %s, hash FROM {s}.thread_blobs WHERE tkey = %s",
                (dst, src),
            )
            self._x(
                c,
                "INSERT INTO {s}.participants (tkey, principal, role) "
                "SELECT %s, principal, role FROM {s}.participants WHERE tkey = %s",
                (dst, src),
            )
            writes = self._x(
                c,
                "SELECT checkpoint, task_id, idx, channel, value, task_path FROM {s}.pending_writes "
                "WHERE tkey = %s",
                (src,),
            ).fetchall()
            if writes:
                c.cursor().executemany(
                    self._sql(
                        "INSERT INTO {s}.pending_writes (tkey, checkpoint, task_id, idx, channel, value, "
                        "task_path) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    ),
                    [(dst, mapped(w[0]), *w[1:]) for w in writes],
                )
            return self._thread_by_key(c, dst)

        return self._write(op)

    # ------------------------------------------------------------ checkpoints

    #: A writer's locks in one statement: its thread row (against deletion) and its branch row
    #: (the head is read and moved under this lock, so two writers never fork a branch).
    LOCK_BRANCH_SQL = (
        "SELECT t.tkey, b.bkey, b.head FROM {s}.threads t LEFT JOIN LATERAL "
        "(SELECT bkey, head FROM {s}.branches WHERE tkey = t.tkey AND name = %s FOR UPDATE) b ON true "
        "WHERE t.id = %s FOR KEY SHARE OF t"
    )

    def _append_one(self, c: Conn, write: CheckpointWrite, expected_head: str | Any | None) -> CheckpointRow:
        # Round trip 1: locks and every fact the write depends on, queued together.
        lock_cur = self._x(c, self.LOCK_BRANCH_SQL, (write.branch, write.thread_id))
        appended = {la.list_id for la in write.lists if la.base is None}
        carried = {la.list_id for la in write.lists}
        referenced = {r.list_id for r in write.manifest.values() if isinstance(r, ListRef)} - carried
        append_cur = self._lists(c, appended, "NO KEY UPDATE") if appended else None
        ref_cur = self._lists(c, referenced, "KEY SHARE") if referenced else None
        blob_refs, _ = manifest_refs(write.manifest)
        carried_blobs = {b.hash for b in write.blobs}
        known_cur = self._lock_blobs(c, blob_refs - carried_blobs)  # those carried are checked once inserted
        probe_ids = [i for i in (write.parent_id if write.create_branch else None, write.restored_from) if i]
        probe_cur = (
            self._x(
                c,
                "SELECT id FROM {s}.checkpoints WHERE tkey = (SELECT tkey FROM {s}.threads WHERE id = %s) "
                "AND id = ANY(%s::uuid[])",
                (write.thread_id, [uuid.UUID(i) for i in probe_ids]),
            )
            if probe_ids
            else None
        )
        taken_cur = None
        if write.milestone is not None or not write.generated_id:
            taken_cur = self._x(
                c,
                "SELECT id = %s, milestone = %s FROM {s}.checkpoints "
                "WHERE tkey = (SELECT tkey FROM {s}.threads WHERE id = %s) AND (id = %s OR milestone = %s)",
                (_u(write.id), write.milestone, write.thread_id, _u(write.id), write.milestone),
            )
        found = lock_cur.fetchone()
        if found is None:
            raise NotFound(f"thread {write.thread_id!r} does not exist")
        tkey = int(found[0])
        branch = found[1:] if found[1] is not None else None
        present = {str(r[0]) for r in probe_cur.fetchall()} if probe_cur is not None else set()
        append_info = self._list_rows(append_cur)
        ref_info = self._list_rows(ref_cur)
        taken = taken_cur.fetchall() if taken_cur is not None else []
        self._check_blobs(known_cur, blob_refs - carried_blobs, set())

        if write.create_branch:
            if branch is not None:
                raise Conflict(f"branch {write.branch!r} already exists in thread {write.thread_id!r}")
            parent = write.parent_id
            if parent is not None and parent not in present:
                raise NotFound(f"checkpoint {parent} does not exist in thread {write.thread_id!r}")
            head = None
        else:
            if branch is None:
                raise NotFound(f"branch {write.branch!r} does not exist in thread {write.thread_id!r}")
            head = _s(branch[1])
            parent = head
        if expected_head is not UNSET and expected_head != head:
            raise Conflict(
                f"branch {write.branch!r} of thread {write.thread_id!r} moved: expected head "
                f"{expected_head}, found {head}; nothing was stored",
                expected=expected_head,
                actual=head,
            )
        if write.restored_from is not None and write.restored_from not in present:
            raise NotFound(f"checkpoint {write.restored_from} does not exist in thread {write.thread_id!r}")
        if any(row[1] for row in taken):
            raise AlreadyExists(f"milestone {write.milestone!r} already exists in thread {write.thread_id!r}")
        new_id = write.id
        if write.generated_id and parent is not None and new_id <= parent:
            new_id = new_checkpoint_id(after=parent)
        elif any(row[0] for row in taken):
            raise AlreadyExists(f"checkpoint {new_id} already exists in thread {write.thread_id!r}")

        # Round trip 2: the rows, then COMMIT (queued by the caller).
        if write.create_branch:
            created = self._x(
                c,
                "INSERT INTO {s}.branches (tkey, name, created_at, base) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (tkey, name) DO NOTHING RETURNING bkey",
                (tkey, write.branch, write.created_at, _u(parent)),
            ).fetchone()
            if created is None:
                raise Conflict(f"branch {write.branch!r} already exists in thread {write.thread_id!r}")
            bkey = int(created[0])
        else:
            assert branch is not None
            bkey = int(branch[0])
        stored = 0
        renames: dict[int, int] = {}
        deferred: list[tuple[str, Sequence[Any]]] = []
        for la in write.lists:
            final, added = self._apply_list(c, tkey, la, append_info.get(la.list_id), deferred)
            stored += added
            if final != la.list_id:
                renames[la.list_id] = final
        manifest = rewrite_list_ids(write.manifest, renames)
        for key, ref in list(manifest.items()):
            if isinstance(ref, ListRef) and ref.list_id in referenced:
                manifest[key] = self._check_list_ref(c, tkey, ref, ref_info.get(ref.list_id))
        new_blobs = {b.hash: b for b in write.blobs}
        if new_blobs:
            inserted = self._x(
                c,
                "INSERT INTO {s}.blobs (hash, data) SELECT * FROM unnest(%s::bytea[], %s::bytea[]) "
                "ON CONFLICT DO NOTHING RETURNING hash",
                (list(new_blobs), [_pack(b.data) for b in new_blobs.values()]),
            ).fetchall()
            stored += sum(len(new_blobs[bytes(r[0])].data) for r in inserted)
            self._check_blobs(
                self._lock_blobs(c, blob_refs & carried_blobs), blob_refs & carried_blobs, carried_blobs
            )
        self._reference_blobs(c, tkey, blob_refs, deferred)
        manifest_bytes = encode_manifest(manifest)
        stored += len(manifest_bytes) + len(write.header)
        self._x_or_defer(
            c,
            deferred,
            self._INSERT_CP,
            (
                tkey,
                bkey,
                write.created_at,
                write.logical_size,
                stored,
                write.expires_at,
                _u(new_id),
                _u(parent),
                _u(write.merge_parent_id),
                0,
                KIND_CODES[write.kind],
                0,
                write.milestone,
                write.header,
                manifest_bytes,
            ),
        )
        self._x_or_defer(c, deferred, "UPDATE {s}.branches SET head = %s WHERE bkey = %s", (_u(new_id), bkey))
        if write.restored_from is not None:
            self._x_or_defer(
                c,
                deferred,
                "UPDATE {s}.checkpoints SET restore_count = restore_count + 1 WHERE tkey = %s AND id = %s",
                (tkey, _u(write.restored_from)),
            )
        self._run_deferred(c, deferred)
        return write.stored_row(new_id, parent, stored, manifest)

    #: The parameters are strings, integers and bytes only: psycopg dumps a Python list or UUID in
    #: Python code (~5 us each, ~100 us for this call), a string in C. Arrays go as text literals,
    #: the values of several items or blobs as one bytea cut by offsets and sizes.
    APPEND_SQL = (
        "SELECT o_parent::text, o_stored FROM {s}.append_checkpoint("
        + ", ".join(
            f"%s::{t}"
            for t in (
                *("text", "text", "boolean", "uuid", "uuid", "boolean", "uuid"),
                *(
                    "smallint",
                    "bigint",
                    "bigint",
                    "bigint",
                    "bigint",
                    "text",
                    "uuid",
                    "uuid",
                    "bytea",
                    "bytea",
                ),
                *("bytea[]", "bytea[]", "bytea[]", "bytea[]"),
                *("bytea[]", "integer[]", "integer[]", "bigint[]", "bytea", "bytea[]"),
                *("bigint[]", "integer[]", "integer[]"),
                *("bigint[]", "integer[]", "integer[]", "integer[]", "integer[]", "bytea"),
                *("bigint[]", "integer[]"),
            )
        )
        + ")"
    )

    @staticmethod
    def _fast_args(write: CheckpointWrite, expected_head: str | Any | None) -> tuple[Any, ...] | None:
        """The arguments of ``append_checkpoint`` for a write (the encoded manifest is the 17th);
        None when the write needs the general path (:meth:`_append_one`)."""
        if write.create_branch or any(la.base is not None for la in write.lists):
            return None
        lists = sorted(write.lists, key=lambda la: la.list_id)
        appended = {la.list_id for la in lists}
        if len(appended) != len(lists):
            return None
        blob_refs, list_refs = manifest_refs(write.manifest)
        refs = sorted((i, n) for i, n in list_refs.items() if i not in appended)
        new_data = {b.hash: b.data for b in write.blobs}
        new_hashes = sorted(new_data)
        new_packed = [_pack(new_data[h]) for h in new_hashes]
        carried = write.carried_blobs & blob_refs
        check = blob_refs - new_data.keys()
        item_lists: list[int] = []
        item_pos: list[int] = []
        item_crcs: list[int] = []
        item_packed: list[bytes] = []
        stored = 0
        for la in lists:
            n = len(la.items)
            item_lists += [la.list_id] * n
            item_pos += range(la.start, la.start + n)
            item_crcs += [_crc_in(crc) for crc in la.crcs]
            item_packed += [_pack(d) for d in la.items]
            stored += sum(len(d) for d in la.items)
        manifest_bytes = encode_manifest(write.manifest)
        stored += len(manifest_bytes) + len(write.header)
        check_head = expected_head is not UNSET
        args = (
            write.thread_id,
            write.branch,
            check_head,
            expected_head if check_head else None,
            write.id,
            write.generated_id,
            write.planned_parent,
            KIND_CODES[write.kind],
            write.created_at,
            write.expires_at,
            write.logical_size,
            stored,
            write.milestone,
            write.merge_parent_id,
            write.restored_from,
            write.header,
            manifest_bytes,
            _hashes(sorted(check)),
            _hashes(sorted(check - carried)),
            _hashes(sorted(blob_refs)),
            _hashes(sorted(blob_refs - carried)),
            _hashes(new_hashes),
            *_cut(new_packed),
            _ints(len(new_data[h]) for h in new_hashes),
            b"".join(new_packed),
            _hashes(h for h in new_hashes if h in blob_refs),
            _ints(la.list_id for la in lists),
            _ints(la.start for la in lists),
            _ints(la.start + len(la.items) for la in lists),
            _ints(item_lists),
            _ints(item_pos),
            _ints(item_crcs),
            *_cut(item_packed),
            b"".join(item_packed),
            _ints(i for i, _ in refs),
            _ints(n for _, n in refs),
        )
        return args

    @staticmethod
    def _fast_row(write: CheckpointWrite, parent: str | None, stored: int) -> CheckpointRow:
        return write.stored_row(write.id, parent, stored, write.manifest)

    def _append_fast(self, write: CheckpointWrite, expected_head: str | Any | None) -> CheckpointRow | None:
        """One write by one statement, the server-side ``append_checkpoint`` in autocommit; None
        when the write needs the general path (:meth:`_append_one`).

        When the connection is lost during the statement, its outcome is resolved on a new connection
        (``resolve``): the write is found stored, or stored then (in a transaction).
        """
        args = self._fast_args(write, expected_head)
        if args is None:
            return None
        manifest_bytes = args[16]

        def call(c: Conn) -> tuple[str | None, int]:
            try:
                parent, total = _first(self._x(c, self.APPEND_SQL, args))
            except psycopg.Error as exc:
                if exc.sqlstate is None or not exc.sqlstate.startswith("TL"):
                    raise
                raise self._fast_error(exc, write, expected_head) from None
            return parent, total

        def resolve(c: Conn) -> tuple[str | None, int]:
            # The lost call holds the branch lock until it has committed or rolled back: once we hold
            # it, the checkpoint is there (that call stored it) or the write has not happened.
            self._x(c, self.LOCK_BRANCH_SQL, (write.branch, write.thread_id))
            found = self._x(
                c,
                "SELECT parent::text, stored_size FROM {s}.checkpoints WHERE tkey = "
                "(SELECT tkey FROM {s}.threads WHERE id = %s) AND id = %s::uuid AND header = %s AND manifest = %s",
                (write.thread_id, write.id, write.header, manifest_bytes),
            ).fetchone()
            return (found[0], found[1]) if found is not None else call(c)

        try:
            # Autocommit: the statement is the transaction, one round trip.
            parent, total = self._run(
                lambda c, _: call(c), read_only=False, on_lost=lambda: self._write(resolve, pipeline=False)
            )
        except _GeneralPath:
            return None
        return self._fast_row(write, parent, total)

    def _append_fast_many(
        self, writes: Sequence[tuple[CheckpointWrite, str | Any | None]]
    ) -> list[CheckpointRow] | None:
        """Several writes in one transaction, one ``append_checkpoint`` call each, all in one
        pipeline (group commit: one round trip and one WAL flush for all). None when one of them
        needs the general path or was refused: the general path then stores them, or raises the
        exception with its full message. The calls run in (thread, branch) order, so two such
        writes lock branch rows in the same order and cannot deadlock on them."""
        calls = [self._fast_args(w, e) for w, e in writes]
        if any(a is None for a in calls):
            return None
        order = sorted(range(len(writes)), key=lambda i: (writes[i][0].thread_id, writes[i][0].branch, i))

        def op(c: Conn) -> dict[int, tuple[str | None, int]]:
            cursors = [(i, self._x(c, self.APPEND_SQL, calls[i])) for i in order]
            try:
                return {i: (row[0], row[1]) for i, cur in cursors for row in [_first(cur)]}
            except psycopg.Error as exc:
                if exc.sqlstate is None or not exc.sqlstate.startswith("TL"):
                    raise
                raise _GeneralPath() from None

        try:
            results = self._write(op)
        except _GeneralPath:
            return None
        return [self._fast_row(w, *results[i]) for i, (w, _) in enumerate(writes)]

    @staticmethod
    def _fast_error(exc: psycopg.Error, write: CheckpointWrite, expected_head: str | Any | None) -> Exception:
        """The exception the general path raises for what ``append_checkpoint`` refused."""
        code, where = exc.sqlstate, f"in thread {write.thread_id!r}"
        if code == "TLT01":
            return NotFound(f"thread {write.thread_id!r} does not exist")
        if code == "TLB01":
            return NotFound(f"branch {write.branch!r} does not exist {where}")
        if code == "TLH01":
            actual = exc.diag.message_detail or None
            return Conflict(
                f"branch {write.branch!r} of thread {write.thread_id!r} moved: expected head "
                f"{expected_head}, found {actual}; nothing was stored",
                expected=expected_head,
                actual=actual,
            )
        if code == "TLR01":
            return NotFound(f"checkpoint {write.restored_from} does not exist {where}")
        if code == "TLM01":
            return AlreadyExists(f"milestone {write.milestone!r} already exists {where}")
        if code == "TLI01":
            return AlreadyExists(f"checkpoint {write.id} already exists {where}")
        if code == "TLS01":
            return StaleReference(exc.diag.message_primary or "a stored value is gone")
        return _GeneralPath()

    def append_checkpoints(
        self,
        writes: Sequence[tuple[CheckpointWrite, str | Any | None]],
        *,
        sync_point: SyncPointRow | None = None,
    ) -> list[CheckpointRow]:
        if sync_point is None:
            if len(writes) == 1:
                row = self._append_fast(*writes[0])
                if row is not None:
                    return [row]
            elif (rows := self._append_fast_many(writes)) is not None:
                return rows
        # Several branches are locked in one fixed order, so that two multi-thread writes cannot deadlock.
        order = sorted(range(len(writes)), key=lambda i: (writes[i][0].thread_id, writes[i][0].branch, i))

        def op(c: Conn) -> list[CheckpointRow]:
            if (
                sync_point is not None
                and self._x(
                    c,
                    "SELECT 1 FROM {s}.sync_points WHERE session_id = %s AND label = %s",
                    (sync_point.session_id, sync_point.label),
                ).fetchone()
            ):
                raise AlreadyExists(
                    f"sync point {sync_point.label!r} already exists in session {sync_point.session_id!r}"
                )
            if len(writes) > 1:
                for i in order:
                    self._x(
                        c,
                        "SELECT 1 FROM {s}.branches WHERE tkey = (SELECT tkey FROM {s}.threads WHERE id = %s) "
                        "AND name = %s FOR UPDATE",
                        (writes[i][0].thread_id, writes[i][0].branch),
                    )
            rows = [self._append_one(c, write, expected) for write, expected in writes]
            if sync_point is not None:
                members = tuple((r.thread_id, r.id) for r in rows)
                self._x(
                    c,
                    "INSERT INTO {s}.sync_points (session_id, label, created_at, members, metadata) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    (
                        sync_point.session_id,
                        sync_point.label,
                        sync_point.created_at,
                        ormsgpack.packb([list(m) for m in members]),
                        sync_point.metadata,
                    ),
                )
            return rows

        return self._write(op)

    #: The checkpoint read by primary key (tkey, id), whatever the history depth.
    GET_CHECKPOINT_SQL = (
        f"SELECT t.tkey, {_CP_COLS} FROM {{s}}.threads t "
        "LEFT JOIN {s}.checkpoints c ON c.tkey = t.tkey AND c.id = %s WHERE t.id = %s"
    )

    def get_checkpoint(self, checkpoint_id: str, thread_id: str | None = None) -> CheckpointRow:
        cid = uuid.UUID(checkpoint_id)
        if thread_id is None:
            rows = self._query(
                f"SELECT (SELECT t.id FROM {{s}}.threads t WHERE t.tkey = c.tkey), {self._CP_COLS} "
                "FROM {s}.checkpoints c WHERE c.id = %s LIMIT 6",
                (cid,),
            )
            found = [self._cp_row(r[1:], r[0]) for r in rows]
        else:
            rows = self._query(self.GET_CHECKPOINT_SQL, (cid, thread_id))
            if not rows:
                raise NotFound(f"thread {thread_id!r} does not exist")
            found = [self._cp_row(r[1:], thread_id) for r in rows if r[1] is not None]
        return self._one_checkpoint(checkpoint_id, thread_id, found)

    def find_checkpoints(self, prefix: str, limit: int = 10) -> list[str]:
        hexes = prefix.replace("-", "").lower()
        if not hexes or any(ch not in "0123456789abcdef" for ch in hexes) or len(hexes) > 32:
            return []
        lo = uuid.UUID(hexes.ljust(32, "0"))
        hi = uuid.UUID(hexes.ljust(32, "f"))
        rows = self._query(
            "SELECT DISTINCT id FROM {s}.checkpoints WHERE id >= %s AND id <= %s ORDER BY id LIMIT %s",
            (lo, hi, limit),
        )
        return [str(r[0]) for r in rows]

    def scan_checkpoints(self, thread_id: str, query: RowQuery) -> list[CheckpointRow]:
        sql = [
            f"SELECT {self._CP_COLS} FROM {{s}}.checkpoints c "
            "WHERE c.tkey = (SELECT tkey FROM {s}.threads WHERE id = %s)"
        ]
        args: list[Any] = [thread_id]
        if query.before is not None:
            sql.append("AND c.id < %s")
            args.append(uuid.UUID(query.before))
        if query.branch is not None:
            sql.append(
                "AND c.bkey = (SELECT b.bkey FROM {s}.branches b WHERE b.tkey = c.tkey AND b.name = %s)"
            )
            args.append(query.branch)
        if query.kinds is not None:
            sql.append("AND c.kind = ANY(%s::smallint[])")
            args.append([KIND_CODES[k] for k in query.kinds])
        if query.statuses is not None:
            sql.append("AND c.status = ANY(%s::smallint[])")
            args.append([STATUS_CODES[s] for s in query.statuses])
        if query.created_after is not None:
            sql.append("AND c.created_at >= %s")
            args.append(query.created_after)
        if query.created_before is not None:
            sql.append("AND c.created_at <= %s")
            args.append(query.created_before)
        sql.append("ORDER BY c.tkey DESC, c.id DESC LIMIT %s")
        args.append(query.limit)
        rows = self._query(" ".join(sql), args)
        if not rows:
            self.get_thread(thread_id)  # NotFound when the thread is missing
        return [self._cp_row(r, thread_id) for r in rows]

    #: First-parent ancestors in one statement, each step a primary-key lookup.
    WALK_SQL = f"""WITH RECURSIVE tk(tkey) AS (SELECT tkey FROM {{s}}.threads WHERE id = %(thread)s),
        chain(id, n) AS (
            SELECT k.id, 0 FROM {{s}}.checkpoints k, tk WHERE k.tkey = tk.tkey AND k.id = %(start)s
            UNION ALL
            SELECT p.parent, chain.n + 1 FROM chain, tk, LATERAL (
                SELECT k.parent FROM {{s}}.checkpoints k WHERE k.tkey = tk.tkey AND k.id = chain.id LIMIT 1
            ) p
            WHERE p.parent IS NOT NULL AND chain.n + 1 < %(limit)s
        )
        SELECT {_CP_COLS} FROM chain, tk, LATERAL (
            SELECT * FROM {{s}}.checkpoints k WHERE k.tkey = tk.tkey AND k.id = chain.id LIMIT 1
        ) c
        ORDER BY chain.n"""
    # LIMIT 1 on both lookups (a primary-key lookup finds at most one row anyway) keeps the
    # planner from flattening them into joins over every checkpoint of the thread, which it
    # chose on tables without statistics: history 10 then grew with the history's depth.

    def walk_lineage(self, thread_id: str, start_id: str, *, limit: int) -> list[CheckpointRow]:
        rows = self._query(self.WALK_SQL, {"thread": thread_id, "start": uuid.UUID(start_id), "limit": limit})
        if not rows:
            self.get_thread(thread_id)
            raise NotFound(f"checkpoint {start_id} does not exist in thread {thread_id!r}")
        return [self._cp_row(r, thread_id) for r in rows]

    def get_blobs(self, hashes: Iterable[bytes]) -> dict[bytes, bytes]:
        wanted = sorted(set(hashes))
        if not wanted:
            return {}
        rows = self._query("SELECT hash, data FROM {s}.blobs WHERE hash = ANY(%s::bytea[])", (wanted,))
        return {bytes(h): _unpack(bytes(d), f"blob {bytes(h).hex()}") for h, d in rows}

    #: A list prefix in one statement: its base chain (at most MAX_LIST_DEPTH hops), then each
    #: segment's items by primary-key range.
    GET_ITEMS_SQL = """WITH RECURSIVE chain(list_id, base_id, lo, hi, hop) AS (
            SELECT l.list_id, l.base_id, CASE WHEN l.base_id IS NULL THEN 0 ELSE l.base_len END,
                   %(n)s::int, 0
            FROM {s}.lists l WHERE l.list_id = %(l)s
            UNION ALL
            SELECT l.list_id, l.base_id, CASE WHEN l.base_id IS NULL THEN 0 ELSE l.base_len END,
                   LEAST(chain.hi, chain.lo), chain.hop + 1
            FROM chain JOIN {s}.lists l ON l.list_id = chain.base_id
            WHERE chain.lo > 0 AND chain.hop < %(hops)s
        )
        SELECT i.crc, i.data FROM chain
        CROSS JOIN LATERAL (
            SELECT it.pos, it.crc, it.data FROM {s}.items it
            WHERE it.list_id = chain.list_id AND it.pos >= chain.lo AND it.pos < chain.hi ORDER BY it.pos
        ) i
        ORDER BY i.pos"""

    def get_list_items(self, list_id: int, length: int) -> ItemRows:
        out = ItemRows()
        if length <= 0:
            return out
        rows = self._query(self.GET_ITEMS_SQL, {"l": list_id, "n": length, "hops": MAX_LIST_DEPTH + 2})
        if len(rows) != length:
            self._read(lambda c: self._diagnose(c, list_id, length))
        out.crcs = [r[0] & 0xFFFFFFFF for r in rows]
        out.data = [r[1] for r in rows]
        for i, stored in enumerate(out.data):
            if stored.startswith(_ZSTD_MAGIC):
                out.data[i] = _unpack(stored, f"item {i} of list {list_id}")
        return out

    def _diagnose(self, c: Conn, list_id: int, length: int) -> None:
        """Raise the IntegrityError that explains why a list prefix could not be read whole."""
        for seg_id, lo, hi in self._segments(c, list_id, length):
            row = self._x(
                c,
                "SELECT count(*) FROM {s}.items WHERE list_id = %s AND pos >= %s AND pos < %s",
                (seg_id, lo, hi),
            ).fetchone()
            if row is None or row[0] != hi - lo:
                raise IntegrityError(f"list {seg_id} is missing items in positions {lo}..{hi - 1}")
        raise IntegrityError(f"list {list_id} changed while it was read; read it again")

    def update_checkpoints(
        self, thread_id: str, checkpoint_ids: Sequence[str], update: LifecycleUpdate
    ) -> int:
        sets: list[str] = []
        args: list[Any] = []
        if update.status is not None:
            sets.append("status = %s")
            args.append(STATUS_CODES[update.status])
        if update.expires_at is not UNSET:
            sets.append("expires_at = %s")
            args.append(update.expires_at)
        if update.header is not None:
            sets.append("header = %s")
            args.append(update.header)
        if update.restore_delta:
            sets.append("restore_count = restore_count + %s")
            args.append(update.restore_delta)
        if not sets or not checkpoint_ids:
            if not checkpoint_ids:
                return 0
            self.get_thread(thread_id)
            return 0

        def op(c: Conn) -> int:
            tkey = self._tkey(c, thread_id, "FOR KEY SHARE")
            changed = 0
            for chunk in _chunks(sorted({uuid.UUID(x) for x in checkpoint_ids})):
                changed += len(
                    self._x(
                        c,
                        f"UPDATE {{s}}.checkpoints SET {', '.join(sets)} "
                        "WHERE tkey = %s AND id = ANY(%s::uuid[]) RETURNING 1",
                        [*args, tkey, list(chunk)],
                    ).fetchall()
                )
            return changed

        return self._write(op)

    def delete_checkpoints(self, thread_id: str, checkpoint_ids: Sequence[str]) -> GcReport:
        def op(c: Conn) -> GcReport:
            tkey = self._tkey(c, thread_id, "FOR UPDATE")
            if not checkpoint_ids:
                return GcReport()
            parents, _ = self._parents(c, tkey)
            deleted = {cid for cid in checkpoint_ids if cid in parents}
            if not deleted:
                return GcReport()
            for cid, (parent, merge) in relink(parents, deleted).items():
                self._x(
                    c,
                    "UPDATE {s}.checkpoints SET parent = %s, merge_parent = %s WHERE tkey = %s AND id = %s",
                    (_u(parent), _u(merge), tkey, _u(cid)),
                )
            for bkey, head in self._x(
                c, "SELECT bkey, head FROM {s}.branches WHERE tkey = %s", (tkey,)
            ).fetchall():
                if head is not None and str(head) in deleted:
                    survivor = nearest_survivor(parents, str(head), deleted)
                    self._x(c, "UPDATE {s}.branches SET head = %s WHERE bkey = %s", (_u(survivor), bkey))
            self._delete_rows(c, tkey, deleted)
            return self._gc_thread(c, tkey)

        return self._write(op)

    def due_for_expiry(self, now: int, limit: int = 1000) -> list[tuple[str, str]]:
        rows = self._query(
            "SELECT t.id, c.id FROM {s}.checkpoints c JOIN {s}.threads t ON t.tkey = c.tkey "
            "WHERE c.expires_at IS NOT NULL AND c.expires_at <= %s AND c.status = 0 "
            "ORDER BY c.expires_at LIMIT %s",
            (now, limit),
        )
        return [(r[0], str(r[1])) for r in rows]

    def stats(
        self, thread_ids: Sequence[str] | None = None, *, largest: int = 0, per_day: bool = False
    ) -> StatsRow:
        def op(c: Conn) -> StatsRow:
            if thread_ids is None:
                where, args = "", []
                tcount = _first(self._x(c, "SELECT count(*) FROM {s}.threads"))[0]
            else:
                keys = [self._tkey(c, t) for t in thread_ids]
                where, args = "WHERE tkey = ANY(%s::bigint[])", [keys]
                tcount = len(keys)
            by_kind: dict[str, int] = {}
            by_status: dict[str, int] = {}
            for kind, status, n in self._x(
                c, f"SELECT kind, status, count(*) FROM {{s}}.checkpoints {where} GROUP BY kind, status", args
            ).fetchall():
                by_kind[KINDS_BY_CODE[kind].value] = by_kind.get(KINDS_BY_CODE[kind].value, 0) + n
                by_status[STATUSES_BY_CODE[status].value] = (
                    by_status.get(STATUSES_BY_CODE[status].value, 0) + n
                )
            total, logical, stored, oldest, newest, restores, milestones = _first(
                self._x(
                    c,
                    "SELECT count(*), coalesce(sum(logical_size), 0), coalesce(sum(stored_size), 0), "
                    "min(created_at), max(created_at), coalesce(sum(restore_count), 0), count(milestone) "
                    f"FROM {{s}}.checkpoints {where}",
                    args,
                )
            )
            branches = _first(self._x(c, f"SELECT count(*) FROM {{s}}.branches {where}", args))[0]
            top: list[tuple[str, int, int, int]] = []
            if largest:
                top = [
                    (r[0], r[1], int(r[2]), int(r[3]))
                    for r in self._x(
                        c,
                        "SELECT (SELECT t.id FROM {s}.threads t WHERE t.tkey = c.tkey), count(*), "
                        "sum(c.logical_size), sum(c.stored_size) FROM {s}.checkpoints c "
                        f"{where.replace('tkey', 'c.tkey')} GROUP BY c.tkey "
                        "ORDER BY sum(c.stored_size) DESC, count(*) DESC, 1 LIMIT %s",
                        [*args, largest],
                    ).fetchall()
                ]
            days: dict[str, int] = {}
            if per_day:
                days = {
                    r[0]: r[1]
                    for r in self._x(
                        c,
                        "SELECT to_char(to_timestamp(created_at / 1000000) AT TIME ZONE 'UTC', 'YYYY-MM-DD') "
                        f"AS day, count(*) FROM {{s}}.checkpoints {where} GROUP BY day ORDER BY day",
                        args,
                    ).fetchall()
                }
            return StatsRow(
                threads=tcount,
                checkpoints=total,
                by_kind=by_kind,
                by_status=by_status,
                logical_bytes=int(logical),
                stored_bytes=int(stored),
                oldest=oldest,
                newest=newest,
                restores=int(restores),
                branches=branches,
                milestones=milestones,
                largest=top,
                per_day=days,
            )

        return self._read(op)

    #: stage -> (table, key columns, frame columns), in the order rewrite_frames walks them.
    _FRAME_STAGES: Mapping[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
        "blobs": ("blobs", ("hash",), ("data",)),
        "items": ("items", ("list_id", "pos"), ("data",)),
        "checkpoints": ("checkpoints", ("tkey", "id"), ("header", "manifest")),
        "threads": ("threads", ("tkey",), ("metadata", "origin")),
        "sessions": ("sessions", ("id",), ("metadata",)),
        "pending_writes": ("pending_writes", ("tkey", "checkpoint", "task_id", "idx"), ("value",)),
    }

    def rewrite_frames(
        self, transform: Callable[[bytes], bytes | None], *, after: str | None = None, limit: int = 500
    ) -> tuple[int, str | None]:
        stage, _, raw_key = (after or "blobs:").partition(":")
        stages = list(self._FRAME_STAGES)
        try:
            key = json.loads(raw_key) if raw_key else None
            if stage == "blobs" and key is not None:
                key = [bytes.fromhex(key[0])]
        except (ValueError, TypeError, IndexError):
            key = stage = None  # type: ignore[assignment]
        if stage not in stages or (key is not None and not isinstance(key, list)):
            raise InvalidInput(f"frame cursor {after!r} is not one rewrite_frames returned")

        def op(c: Conn) -> tuple[int, str | None]:
            changed, last = self._rewrite_stage(c, stage, key, transform, limit)
            if last is not None:
                return changed, f"{stage}:{json.dumps(last)}"
            following = stages.index(stage) + 1
            return changed, f"{stages[following]}:" if following < len(stages) else None

        return self._write(op)

    def _rewrite_stage(
        self,
        c: Conn,
        stage: str,
        key: list[Any] | None,
        transform: Callable[[bytes], bytes | None],
        limit: int,
    ) -> tuple[int, list[Any] | None]:
        """One batch of one table; returns (frames replaced, last key seen or None when done)."""
        table, keys, columns = self._FRAME_STAGES[stage]
        where = f"WHERE ({', '.join(keys)}) > ({', '.join(['%s'] * len(keys))})" if key else ""
        rows = self._x(
            c,
            f"SELECT {', '.join(keys + columns)} FROM {{s}}.{table} {where} "
            f"ORDER BY {', '.join(keys)} LIMIT %s FOR UPDATE",
            [*(key or []), limit],
        ).fetchall()
        changed = 0
        match = " AND ".join(f"{k} = %s" for k in keys)
        for row in rows:
            ident, values = list(row[: len(keys)]), row[len(keys) :]
            updates: dict[str, Any] = {}
            if stage == "checkpoints":
                header, raw_manifest = values
                new_header = transform(header)
                manifest = decode_manifest(raw_manifest)
                replaced = {
                    k: InlineRef(n)
                    for k, r in manifest.items()
                    if isinstance(r, InlineRef) and (n := transform(r.data))
                }
                if new_header is not None:
                    updates["header"] = new_header
                if replaced:
                    updates["manifest"] = encode_manifest({**manifest, **replaced})
                changed += (new_header is not None) + len(replaced)
            elif stage in ("blobs", "items"):  # one value column, stored packed
                what = f"blob {ident[0].hex()}" if stage == "blobs" else f"item {ident[1]} of list {ident[0]}"
                new = transform(_unpack(values[0], what))
                if new is not None:
                    updates["data"] = _pack(new)
                    changed += 1
                    if stage == "items":
                        updates["crc"] = _crc_in(zlib.crc32(new))
            else:
                for column, value in zip(columns, values, strict=True):
                    new = transform(value) if value is not None else None
                    if new is not None:
                        updates[column] = new
                        changed += 1
            if updates:
                self._x(
                    c,
                    f"UPDATE {{s}}.{table} SET {', '.join(f'{k} = %s' for k in updates)} WHERE {match}",
                    [*updates.values(), *ident],
                )
        if len(rows) < limit:
            return changed, None
        last = [
            v.hex() if isinstance(v, bytes) else str(v) if isinstance(v, uuid.UUID) else v
            for v in rows[-1][: len(keys)]
        ]
        return changed, last

    # ------------------------------------------------------------ garbage collection

    def _gc_thread(self, c: Conn, tkey: int) -> GcReport:
        """Collect what thread ``tkey`` no longer references (inside the caller's transaction).

        The caller holds the thread row ``FOR UPDATE`` (or the thread is gone), so no writer of
        this thread runs meanwhile; writers of other threads only wait on shared blobs and bases.
        """
        owned_rows = self._x(
            c,
            "SELECT list_id, base_id, base_len, length FROM {s}.lists WHERE tkey = %s ORDER BY list_id FOR UPDATE",
            (tkey,),
        ).fetchall()
        blob_refs: set[bytes] = set()
        needs: dict[int, int] = {}
        for (raw,) in self._x(c, "SELECT manifest FROM {s}.checkpoints WHERE tkey = %s", (tkey,)).fetchall():
            blobs, lists = manifest_refs(decode_manifest(raw))
            blob_refs |= blobs
            for lid, n in lists.items():
                needs[lid] = max(needs.get(lid, 0), n)
        owned = {r[0]: ListInfo(r[0], r[1], r[2], r[3]) for r in owned_rows}
        if owned:
            for base_id, n in self._x(
                c,
                "SELECT l.base_id, max(l.base_len) FROM {s}.lists l WHERE l.base_id = ANY(%s::bigint[]) "
                "AND l.tkey <> %s GROUP BY l.base_id",
                (list(owned), tkey),
            ).fetchall():
                needs[base_id] = max(needs.get(base_id, 0), n)
        report = self._drop_lists(c, owned, needs)
        candidates = [
            bytes(h)
            for (h,) in self._x(c, "SELECT hash FROM {s}.thread_blobs WHERE tkey = %s", (tkey,)).fetchall()
        ]
        dropped = sorted(h for h in candidates if h not in blob_refs)
        blob_count = blob_bytes = 0
        for chunk in _chunks(dropped):
            self._x(
                c, "DELETE FROM {s}.thread_blobs WHERE tkey = %s AND hash = ANY(%s::bytea[])", (tkey, chunk)
            )
            n, size = self._delete_blobs(c, chunk)
            blob_count, blob_bytes = blob_count + n, blob_bytes + size
        return GcReport(
            blobs=blob_count,
            list_items=report.list_items,
            lists=report.lists,
            bytes=report.bytes + blob_bytes,
        )

    def _delete_blobs(self, c: Conn, hashes: Sequence[bytes]) -> tuple[int, int]:
        """Delete the blobs no thread references: lock them, then decide on a fresh snapshot."""
        locked = [
            bytes(r[0])
            for r in self._x(
                c,
                "SELECT hash FROM {s}.blobs WHERE hash = ANY(%s::bytea[]) ORDER BY hash FOR UPDATE",
                (list(hashes),),
            ).fetchall()
        ]
        if not locked:
            return 0, 0
        row = _first(
            self._x(
                c,
                "WITH gone AS (DELETE FROM {s}.blobs b WHERE b.hash = ANY(%s::bytea[]) AND NOT EXISTS "
                "(SELECT 1 FROM {s}.thread_blobs tb WHERE tb.hash = b.hash) RETURNING octet_length(b.data) AS n) "
                "SELECT count(*), coalesce(sum(n), 0) FROM gone",
                (locked,),
            )
        )
        return int(row[0]), int(row[1])

    def _delete_items(self, c: Conn, sql: str, args: Sequence[Any]) -> tuple[int, int]:
        row = _first(
            self._x(
                c,
                f"WITH gone AS ({sql} RETURNING octet_length(data) AS n) SELECT count(*), coalesce(sum(n), 0) FROM gone",
                args,
            )
        )
        return int(row[0]), int(row[1])

    def _drop_lists(self, c: Conn, owned: Mapping[int, ListInfo], needs: Mapping[int, int]) -> GcReport:
        drop, trim = plan_list_gc(owned, needs)
        items = size = 0
        orphan_bases: set[int] = set()
        for chunk in _chunks(sorted(drop)):
            n, b = self._delete_items(
                c, "DELETE FROM {s}.items WHERE list_id = ANY(%s::bigint[])", (list(chunk),)
            )
            items, size = items + n, size + b
            self._x(c, "DELETE FROM {s}.lists WHERE list_id = ANY(%s::bigint[])", (list(chunk),))
        for lid in drop:
            base_id = owned[lid].base_id
            if base_id is not None:
                orphan_bases.add(base_id)
        for lid, length in sorted(trim.items()):
            n, b = self._delete_items(
                c, "DELETE FROM {s}.items WHERE list_id = %s AND pos >= %s", (lid, length)
            )
            items, size = items + n, size + b
            self._x(c, "UPDATE {s}.lists SET sealed = true, length = %s WHERE list_id = %s", (length, lid))
        # A base owned by a deleted thread lives only as long as lists built on it.
        for base_id in sorted(orphan_bases - set(drop)):
            row = self._x(
                c,
                "SELECT l.base_id, l.base_len, l.length FROM {s}.lists l WHERE l.list_id = %s "
                "AND NOT EXISTS (SELECT 1 FROM {s}.threads t WHERE t.tkey = l.tkey) FOR UPDATE",
                (base_id,),
            ).fetchone()
            if row is None:
                continue
            need = _first(
                self._x(c, "SELECT coalesce(max(base_len), 0) FROM {s}.lists WHERE base_id = %s", (base_id,))
            )
            sub = self._drop_lists(
                c, {base_id: ListInfo(base_id, row[0], row[1], row[2])}, {base_id: need[0]}
            )
            items, size = items + sub.list_items, size + sub.bytes
            drop.extend([base_id] if sub.lists else [])
        return GcReport(list_items=items, lists=len(drop), bytes=size)

    def collect_garbage(self) -> GcReport:
        """One transaction per thread (each consistent), then orphan blobs in batches."""
        keys = [
            r[0]
            for r in self._query(
                "SELECT tkey FROM {s}.lists UNION SELECT tkey FROM {s}.thread_blobs ORDER BY 1"
            )
        ]
        total = GcReport()
        for tkey in keys:

            def one(c: Conn, tkey: int = tkey) -> GcReport:
                self._x(c, "SELECT 1 FROM {s}.threads WHERE tkey = %s FOR UPDATE", (tkey,)).fetchall()
                return self._gc_thread(c, tkey)

            total = total + self._write(one)

        def orphans(c: Conn) -> tuple[int, int, int]:
            batch = [
                bytes(r[0])
                for r in self._x(
                    c,
                    "SELECT hash FROM {s}.blobs b WHERE NOT EXISTS "
                    "(SELECT 1 FROM {s}.thread_blobs tb WHERE tb.hash = b.hash) ORDER BY hash LIMIT %s",
                    (_BATCH,),
                ).fetchall()
            ]
            return (*self._delete_blobs(c, batch), len(batch)) if batch else (0, 0, 0)

        while True:
            n, size, seen = self._write(orphans)
            total = total + GcReport(blobs=n, bytes=size)
            if seen < _BATCH:
                return GcReport(total.blobs, total.list_items, total.lists, total.bytes)

    def reclaim_space(self) -> int:
        """Plain VACUUM (no exclusive lock): frees dead rows and returns empty tail pages to the OS."""
        before = self.storage_bytes()

        def vacuum(c: Conn, _: _Attempt) -> None:
            for table in TABLES:
                c.execute(self._sql(f"VACUUM {{s}}.{table}"))

        self._run(vacuum, read_only=True)
        return max(0, before - self.storage_bytes())

    def storage_bytes(self) -> int:
        rows = self._query(
            "SELECT coalesce(sum(pg_total_relation_size(k.oid)), 0) FROM pg_class k "
            "JOIN pg_namespace n ON n.oid = k.relnamespace WHERE n.nspname = %s AND k.relkind = 'r'",
            (self.schema,),
        )
        return int(rows[0][0])
