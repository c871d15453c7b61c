"""Checkpoint core layer (``CheckpointDomainService`` of the design document).

Create, read, list and delete checkpoints; their lifecycle (expiry, archive);
cleanup of expired checkpoints; statistics. It turns a state (a mapping of
string keys to values) into stored parts that grow with what changed:

* a list value is an append-only item log: a write that appends one item to a
  1,000-item list stores one item (the unchanged prefix is detected by comparing
  the list's serialized bytes with those of the parent's list, so a list mutated
  in place is still stored exactly as it is at write time);
* any other value above ``inline_limit`` bytes is a content-addressed blob,
  stored once however many checkpoints and threads hold it;
* small values are kept inline in the checkpoint's manifest.

Every stored value is verified on read (blobs by their hash, list items by a
CRC-32), and a mismatch raises IntegrityError naming the checkpoint.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import hashlib
import operator
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

import ormsgpack

from threadline.errors import (
    IntegrityError,
    InvalidInput,
    LimitExceeded,
    NotFound,
    SerializationError,
    StaleReference,
)
from threadline.model import (
    DEFAULT_BRANCH,
    Checkpoint,
    CheckpointFilter,
    CheckpointKind,
    CheckpointStatus,
    CleanupReport,
    Page,
    Stats,
    Thread,
    check_metadata,
    datetime_to_us,
    iterate_pages,
    new_checkpoint_id,
    new_id,
    now_us,
    parse_enum,
    random_bits,
    us_to_datetime,
    validate_checkpoint_id,
    validate_id,
    validate_name,
)
from threadline.serde import RUN_BYTES, ItemRun, Serializer, array_header, frame_key_id
from threadline.storage.base import (
    UNSET,
    BlobRef,
    CheckpointRepository,
    CheckpointRow,
    CheckpointWrite,
    InlineRef,
    LifecycleUpdate,
    ListAppend,
    ListRef,
    Manifest,
    NewBlob,
    Ref,
    RowQuery,
    SyncPointRow,
    ThreadRow,
)

S = TypeVar("S")
P = ParamSpec("P")
R = TypeVar("R")


def asyncify(fn: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """The async twin of a sync method, run in a worker thread (one implementation)."""

    @functools.wraps(fn)
    async def run(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(fn, self, *args, **kwargs)

    return run


def blob_hash(data: bytes) -> bytes:
    """Portable (unkeyed) content address of a serialized value: blake2b, 128 bits.
    Stores address values with ``Serializer.content_hash``, which is keyed when encrypted."""
    return hashlib.blake2b(data, digest_size=16).digest()


_HEADER_KEYS = {
    "title": "t",
    "description": "d",
    "tags": "g",
    "metadata": "m",
    "error_message": "em",
    "error_type": "et",
    "restored_from": "rf",
    "sync_point": "sp",
    "protected": "p",
    "origin": "o",
}


#: The stored header of a checkpoint without title, tags, metadata or any other header
#: field: an empty msgpack map, framed unencrypted (what encode_record makes of it).
_EMPTY_HEADER = b"\x00\x80"


@dataclass(frozen=True, slots=True)
class _ListCache:
    """A stored list's first ``length`` items, encoded (unframed) in runs of consecutive
    items, and their total size.

    The next version of the list is encoded in runs of the same items, so each run is
    compared with one ``==`` of bytes. ``objects``: when every item written was an
    already-encoded value (an ``ormsgpack.Ext``, which is immutable), those very objects;
    a later list holding the same objects at the same positions is known unchanged without
    encoding it again.
    """

    runs: tuple[ItemRun, ...]
    length: int
    size: int
    objects: list[Any] | None = None


@functools.lru_cache(maxsize=4096)
def _state_path(key: str) -> str:
    """How error messages name a state key: ``state['key']``."""
    return f"state[{key!r}]"


def _extend_runs(runs: Sequence[ItemRun], items: Sequence[bytes]) -> tuple[ItemRun, ...]:
    """``runs`` followed by item encodings, the last run filled up to about RUN_BYTES bytes."""
    if runs and len(items) == 1 and runs[-1].size < RUN_BYTES:  # the usual append of one item
        return (*runs[:-1], runs[-1].extended(items))
    out = list(runs)
    i = 0
    if out and out[-1].size < RUN_BYTES:
        room, take = RUN_BYTES - out[-1].size, 0
        while i + take < len(items) and room > 0:
            room -= len(items[i + take])
            take += 1
        if take:
            out[-1] = out[-1].extended(items[:take])
            i = take
    while i < len(items):
        size, j = 0, i
        while j < len(items) and (size < RUN_BYTES or j == i):
            size += len(items[j])
            j += 1
        out.append(ItemRun.of(items[i:j]))
        i = j
    return tuple(out)


class _Caches:
    """Per-store memory of what was written last: branch heads, list bodies, blobs.

    Only an optimisation: a stale entry makes the backend raise
    StaleReference (nothing stored) and the write is planned again without it.
    """

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.lock = threading.Lock()
        self.heads: OrderedDict[tuple[str, str], CheckpointRow] = OrderedDict()
        self.lists: OrderedDict[int, _ListCache] = OrderedDict()
        self.blobs: OrderedDict[bytes, None] = OrderedDict()
        self.list_bytes = 0
        self.max_bytes = max_bytes

    def head(self, thread_id: str, branch: str) -> CheckpointRow | None:
        with self.lock:
            return self.heads.get((thread_id, branch))

    def remember_head(self, row: CheckpointRow) -> None:
        with self.lock:
            self.heads[(row.thread_id, row.branch)] = row
            self.heads.move_to_end((row.thread_id, row.branch))
            while len(self.heads) > 4096:
                self.heads.popitem(last=False)

    def list(self, list_id: int) -> _ListCache | None:
        with self.lock:
            entry = self.lists.get(list_id)
            if entry is not None:
                self.lists.move_to_end(list_id)
            return entry

    def remember_list(self, list_id: int, entry: _ListCache) -> None:
        with self.lock:
            old = self.lists.pop(list_id, None)
            if old is not None:
                self.list_bytes -= old.size
            self.lists[list_id] = entry
            self.list_bytes += entry.size
            while self.list_bytes > self.max_bytes and len(self.lists) > 1:
                _, dropped = self.lists.popitem(last=False)
                self.list_bytes -= dropped.size

    def has_blob(self, digest: bytes) -> bool:
        with self.lock:
            return digest in self.blobs

    def remember_blob(self, digest: bytes) -> None:
        with self.lock:
            self.blobs[digest] = None
            while len(self.blobs) > 65536:
                self.blobs.popitem(last=False)

    def forget_thread(self, thread_id: str) -> None:
        with self.lock:
            for key in [k for k in self.heads if k[0] == thread_id]:
                del self.heads[key]

    def clear(self) -> None:
        with self.lock:
            self.heads.clear()
            self.lists.clear()
            self.blobs.clear()
            self.list_bytes = 0


@dataclass(slots=True)
class _Request:
    """A validated checkpoint write, planned against its parent at commit time."""

    thread_id: str
    branch: str
    kind: CheckpointKind
    created_at: int
    expires_at: int | None
    header: bytes
    state: Mapping[str, Any]
    state_of: CheckpointRow | None
    milestone: str | None
    checkpoint_id: str | None
    create_branch: bool
    parent_for_branch: str | None
    merge_parent_id: str | None
    restored_from: str | None
    expected_head: Any


@dataclass(slots=True)
class _Plan:
    manifest: Manifest
    blobs: list[NewBlob]
    lists: list[ListAppend]
    #: state key -> the encodings of all items of the list written under it
    list_bodies: dict[str, _ListCache]
    logical_size: int
    #: blob hashes shared with the parent the plan was made against
    carried: frozenset[bytes] = frozenset()


class CheckpointDomainService:
    """Checkpoint CRUD, lifecycle, expiry, cleanup and statistics over one repository.

    Args:
        repository: the storage backend.
        serializer: the safe serializer (register your own types on it).
        inline_limit: values whose stored form is at most this many bytes stay
            inside the manifest instead of becoming blobs.
        max_value_bytes: refuse a state holding one value (a top-level value, or an item
            of a stored list) whose serialized size exceeds this (None: no limit).
        max_state_bytes: refuse states whose serialized size exceeds this
            (None: no limit).
        list_min_items: lists with at least this many items are stored as item
            logs; shorter ones as ordinary values.
    """

    def __init__(
        self,
        repository: CheckpointRepository,
        serializer: Serializer,
        *,
        inline_limit: int = 24,
        max_state_bytes: int | None = 256 << 20,
        max_value_bytes: int | None = 64 << 20,
        list_min_items: int = 2,
    ) -> None:
        self.repository = repository
        self.serializer = serializer
        self.inline_limit = inline_limit
        self.max_state_bytes = max_state_bytes
        self.max_value_bytes = max_value_bytes
        self.list_min_items = list_min_items
        self._caches = _Caches()

    # ------------------------------------------------------------ threads

    def create_thread(
        self,
        thread_id: str | None = None,
        *,
        session_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        origin: Mapping[str, Any] | None = None,
    ) -> Thread:
        """Create a thread (id generated when not given) with an empty ``main`` branch.

        Raises:
            InvalidInput: malformed id or metadata.
            AlreadyExists: the id is taken.
        """
        tid = validate_id(thread_id, "thread id") if thread_id is not None else new_id()
        if session_id is not None:
            validate_id(session_id, "session id")
        meta = check_metadata(metadata or {})
        row = self.repository.create_thread(
            tid,
            created_at=now_us(),
            session_id=session_id,
            metadata=self.encode_record(dict(meta), "metadata"),
            origin=self.encode_record(dict(origin), "origin") if origin else None,
        )
        return self._thread(row)

    def get_thread(self, thread_id: str) -> Thread:
        """Raises NotFound."""
        return self._thread(self.repository.get_thread(validate_id(thread_id, "thread id")))

    def ensure_thread(self, thread_id: str, *, session_id: str | None = None) -> Thread:
        """The thread, created first when it does not exist."""
        try:
            return self.get_thread(thread_id)
        except NotFound:
            try:
                return self.create_thread(thread_id, session_id=session_id)
            except Exception:  # another writer created it between the two calls
                return self.get_thread(thread_id)

    def list_threads(
        self, *, session_id: str | None = None, cursor: str | None = None, limit: int = 100
    ) -> Page[Thread]:
        """Threads ordered by id, a page at a time."""
        check_limit(limit)
        rows = self.repository.list_threads(session_id=session_id, after=cursor, limit=limit + 1)
        items = [self._thread(r) for r in rows[:limit]]
        return Page(items, items[-1].id if len(rows) > limit else None)

    def update_thread_metadata(self, thread_id: str, metadata: Mapping[str, Any]) -> Thread:
        """Replace a thread's metadata. Raises NotFound, InvalidInput."""
        meta = check_metadata(metadata)
        row = self.repository.update_thread(
            validate_id(thread_id, "thread id"), metadata=self.encode_record(dict(meta), "metadata")
        )
        return self._thread(row)

    def delete_thread(self, thread_id: str) -> None:
        """Delete a thread with its whole history; its unshared bytes are collected."""
        self.repository.delete_thread(validate_id(thread_id, "thread id"))
        self._caches.forget_thread(thread_id)

    def encode_record(self, value: Any, path: str) -> bytes:
        """Stored form of a small record (checkpoint header, thread or session metadata):
        serialized and framed, so it is encrypted at rest when the store has a key ring."""
        return self.serializer.pack(self.serializer.dumps(value, path=path))

    def decode_record(self, raw: bytes) -> Any:
        """Inverse of :meth:`encode_record`. Raises SerializationError."""
        return self.serializer.loads(self.serializer.unpack(raw))

    def forget_thread_caches(self, thread_id: str) -> None:
        """Drop what this process remembers of a thread's branch heads."""
        self._caches.forget_thread(thread_id)

    def _thread(self, row: ThreadRow) -> Thread:
        return Thread(
            id=row.id,
            created_at=us_to_datetime(row.created_at),
            session_id=row.session_id,
            metadata=self.decode_record(row.metadata),
            default_branch=row.default_branch,
            origin=self.decode_record(row.origin) if row.origin else None,
        )

    # ------------------------------------------------------------ create

    def create(
        self,
        thread_id: str,
        state: Mapping[str, Any] | None,
        *,
        branch: str = DEFAULT_BRANCH,
        kind: CheckpointKind | str = CheckpointKind.AUTO,
        title: str | None = None,
        description: str | None = None,
        tags: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
        error_message: str | None = None,
        error_type: str | None = None,
        milestone: str | None = None,
        expires_at: datetime | None = None,
        ttl: timedelta | None = None,
        expected_head: str | Any | None = UNSET,
        checkpoint_id: str | None = None,
        create_branch_from: str | Any | None = UNSET,
        merge_parent_id: str | None = None,
        restored_from: str | None = None,
        sync_point: str | None = None,
        origin: Mapping[str, Any] | None = None,
        state_of: CheckpointRow | None = None,
        skip_unchanged: bool = False,
        _capture: builtins.list[_Request] | None = None,
    ) -> Checkpoint:
        """Write a checkpoint of ``state`` on a branch of a thread and advance its head.

        Args:
            thread_id: an existing thread.
            state: a mapping of string keys to serializable values.
            kind: ``auto``, ``manual``, ``error`` (needs ``error_message``) or
                ``milestone`` (needs ``milestone``, a name unique in the thread).
            expires_at / ttl: when the checkpoint expires (at most one of them).
            expected_head: optimistic concurrency: the head the caller last saw
                (``None`` for an empty branch). Omit it to append to whatever the
                head is; writes to one branch are serialized either way.
            checkpoint_id: use this id (a UUID string) instead of a new one.
            create_branch_from: create ``branch`` at this checkpoint (``None``:
                an empty branch) and write the checkpoint as its first one.
            origin: provenance of a copied state (thread and checkpoint it came from).
            state_of: write the state of this stored checkpoint (any thread)
                instead of ``state``, sharing all of its stored values.
            skip_unchanged: when the state equals the parent's, write nothing
                and return the parent.

        Raises:
            InvalidInput: malformed arguments or state (non-string keys).
            SerializationError: a value cannot be serialized (message names its path).
            LimitExceeded: the state is larger than ``max_state_bytes``.
            NotFound: the thread or branch does not exist.
            Conflict: ``expected_head`` is not the head; nothing was stored.
            AlreadyExists: the checkpoint id or milestone name is taken.
        """
        kind = parse_enum(CheckpointKind, kind, "checkpoint kind")
        thread_id = validate_id(thread_id, "thread id")
        branch = validate_name(branch, "branch name")
        if state_of is not None:
            state = {}
        elif not isinstance(state, Mapping):
            raise InvalidInput(
                f"state must be a mapping of string keys to values, got {type(state).__name__}"
            )
        for key in state:
            if not isinstance(key, str):
                raise InvalidInput(
                    f"state keys must be strings; got key {key!r} of type {type(key).__name__}"
                )
            if not key.isascii() and not _valid_text(key):
                raise SerializationError(f"state[{key!r}]: key contains a lone surrogate (not valid Unicode)")
        self._check_kind(kind, error_message, error_type, milestone)
        if milestone is not None:
            milestone = validate_name(milestone, "milestone name")
        if expires_at is not None and ttl is not None:
            raise InvalidInput("give expires_at or ttl, not both")
        created = now_us()
        expires = datetime_to_us(expires_at) if expires_at is not None else None
        if ttl is not None:
            if ttl <= timedelta(0):
                raise InvalidInput(f"ttl must be positive, got {ttl}")
            expires = created + int(ttl.total_seconds() * 1_000_000)
        if (
            title is None
            and description is None
            and tags == ()
            and metadata is None
            and error_message is None
            and error_type is None
            and restored_from is None
            and sync_point is None
            and origin is None
        ):
            header = self._encode_header()  # the usual write: no header field to check
        else:
            header = self._encode_header(
                title=_opt_str(title, "title"),
                description=_opt_str(description, "description"),
                tags=_check_tags(tags),
                metadata=dict(check_metadata(metadata or {})),
                error_message=error_message,
                error_type=error_type,
                restored_from=restored_from,
                sync_point=sync_point,
                origin=dict(origin) if origin else None,
            )
        create_branch = create_branch_from is not UNSET
        parent_for_branch = (
            validate_checkpoint_id(create_branch_from)
            if create_branch and create_branch_from is not None
            else None
        )
        cid = validate_checkpoint_id(checkpoint_id) if checkpoint_id is not None else None

        request = _Request(
            thread_id=thread_id,
            branch=branch,
            kind=kind,
            created_at=created,
            expires_at=expires,
            header=header,
            state=state,
            state_of=state_of,
            milestone=milestone,
            checkpoint_id=cid,
            create_branch=create_branch,
            parent_for_branch=parent_for_branch,
            merge_parent_id=validate_checkpoint_id(merge_parent_id) if merge_parent_id else None,
            restored_from=restored_from,
            expected_head=expected_head,
        )
        if _capture is not None:  # create_many: validate and prepare only
            _capture.append(request)
            return None  # type: ignore[return-value]
        if skip_unchanged and not create_branch:
            parent = self._planning_parent(thread_id, branch, UNSET)
            if (
                parent is not None
                and self._plan_request(request, parent).manifest == parent.manifest
                and self.repository.get_branch(thread_id, branch).head == parent.id
            ):
                return self._checkpoint(parent)
        return self._commit([request])[0]

    def create_many(
        self, requests: Sequence[Mapping[str, Any]], *, sync_point: SyncPointRow | None = None
    ) -> builtins.list[Checkpoint]:
        """Write several checkpoints (on any threads) in one transaction: all or nothing.

        Each request holds the keyword arguments of :meth:`create` (``thread_id``
        and ``state`` included; ``skip_unchanged`` is not supported). With
        ``sync_point``, a sync point over the written checkpoints is recorded in
        the same transaction. Raises what ``create`` raises; nothing is stored then.
        """
        prepared = [self._request(**dict(r)) for r in requests]
        if not prepared:
            raise InvalidInput("create_many needs at least one checkpoint to write")
        return self._commit(prepared, sync_point=sync_point)

    def _request(self, **fields: Any) -> _Request:
        captured: builtins.list[_Request] = []
        self.create(**fields, _capture=captured)
        return captured[0]

    def _plan_request(self, request: _Request, parent: CheckpointRow | None) -> _Plan:
        if request.state_of is not None:
            return _Plan(dict(request.state_of.manifest), [], [], {}, request.state_of.logical_size)
        plan = self._plan(request.state, parent)
        if self.max_state_bytes is not None and plan.logical_size > self.max_state_bytes:
            raise LimitExceeded(
                f"state of {plan.logical_size} bytes exceeds the limit of {self.max_state_bytes} bytes"
            )
        return plan

    def _commit(
        self, requests: Sequence[_Request], *, sync_point: SyncPointRow | None = None
    ) -> builtins.list[Checkpoint]:
        for attempt in range(2):
            plans: builtins.list[_Plan] = []
            writes: builtins.list[tuple[CheckpointWrite, Any]] = []
            for r in requests:
                parent = self._planning_parent(
                    r.thread_id, r.branch, r.parent_for_branch if r.create_branch else UNSET
                )
                plan = self._plan_request(r, parent)
                plans.append(plan)
                write = CheckpointWrite(
                    id=r.checkpoint_id or new_checkpoint_id(parent.id if parent else None),
                    generated_id=r.checkpoint_id is None,
                    thread_id=r.thread_id,
                    branch=r.branch,
                    kind=r.kind,
                    created_at=r.created_at,
                    expires_at=r.expires_at,
                    header=r.header,
                    manifest=plan.manifest,
                    blobs=plan.blobs,
                    lists=plan.lists,
                    logical_size=plan.logical_size,
                    milestone=r.milestone,
                    parent_id=r.parent_for_branch,
                    create_branch=r.create_branch,
                    merge_parent_id=r.merge_parent_id,
                    restored_from=r.restored_from,
                    planned_parent=parent.id if parent is not None else None,
                    carried_blobs=plan.carried,
                )
                writes.append((write, r.expected_head))
            try:
                rows = self.repository.append_checkpoints(writes, sync_point=sync_point)
            except StaleReference:
                self._caches.clear()
                if attempt:
                    raise
                continue
            for row, plan in zip(rows, plans, strict=True):
                self._remember(row, plan)
            return [self._checkpoint(row) for row in rows]
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _check_kind(
        kind: CheckpointKind, error_message: str | None, error_type: str | None, milestone: str | None
    ) -> None:
        if kind is CheckpointKind.ERROR:
            if not error_message or not isinstance(error_message, str):
                raise InvalidInput("an error checkpoint needs error_message (a non-empty string)")
            if error_type is not None and not isinstance(error_type, str):
                raise InvalidInput("error_type must be a string")
        elif error_message is not None or error_type is not None:
            raise InvalidInput(f"only error checkpoints carry an error message; this one is {kind.value!r}")
        if kind is CheckpointKind.MILESTONE:
            if milestone is None:
                raise InvalidInput("a milestone checkpoint needs a milestone name")
        elif milestone is not None:
            raise InvalidInput(
                f"only milestone checkpoints carry a milestone name; this one is {kind.value!r}"
            )

    def _planning_parent(
        self, thread_id: str, branch: str, branch_from: str | Any | None
    ) -> CheckpointRow | None:
        """The checkpoint whose values the new one is most likely to share."""
        if branch_from is not UNSET:
            return self.repository.get_checkpoint(branch_from, thread_id) if branch_from else None
        cached = self._caches.head(thread_id, branch)
        if cached is not None:
            return cached
        head = self.repository.get_branch(thread_id, branch).head
        return self.repository.get_checkpoint(head, thread_id) if head else None

    def _remember(self, row: CheckpointRow, plan: _Plan) -> None:
        self._caches.remember_head(row)
        for blob in plan.blobs:
            self._caches.remember_blob(blob.hash)
        for key, entry in plan.list_bodies.items():
            ref = row.manifest[key]
            assert isinstance(ref, ListRef)
            self._caches.remember_list(ref.list_id, entry)

    # ------------------------------------------------------------ encoding

    def _plan(self, state: Mapping[str, Any], parent: CheckpointRow | None) -> _Plan:
        manifest: Manifest = {}
        blobs: list[NewBlob] = []
        lists: list[ListAppend] = []
        bodies: dict[str, _ListCache] = {}
        carried: set[bytes] = set()
        logical = 0
        parent_manifest = parent.manifest if parent else {}
        dumps, pack, max_value = self.serializer.dumps, self.serializer.pack, self.max_value_bytes
        for key, value in state.items():
            path = _state_path(key)
            old = parent_manifest.get(key)
            if type(value) is list and len(value) >= self.list_min_items and value:  # [] is a plain value
                ref, append, entry = self._plan_list(value, path, old)
                manifest[key] = ref
                logical += entry.size + len(array_header(len(value)))
                if append is not None:
                    lists.append(append)
                    bodies[key] = entry
                continue
            data = dumps(value, path=path)
            if max_value is not None:
                self._check_value_size(data, path)
            logical += len(data)
            framed = pack(data)
            if len(framed) <= self.inline_limit:
                manifest[key] = InlineRef(framed)
                continue
            digest = self.serializer.content_hash(data)
            manifest[key] = BlobRef(digest)
            if isinstance(old, BlobRef) and old.hash == digest:
                carried.add(digest)
            elif not self._caches.has_blob(digest):
                blobs.append(NewBlob(digest, framed))
        return _Plan(manifest, blobs, lists, bodies, logical, frozenset(carried))

    def _check_value_size(self, data: bytes, what: str) -> None:
        if self.max_value_bytes is not None and len(data) > self.max_value_bytes:
            raise LimitExceeded(
                f"{what} is {len(data)} bytes serialized; the limit for one value is {self.max_value_bytes} bytes"
            )

    def _plan_list(
        self, value: list[Any], path: str, old: Ref | None
    ) -> tuple[ListRef, ListAppend | None, _ListCache]:
        """Store a list as "the first n items of list L", appending only what is new.

        The new list is encoded whole, in runs of the same items as the parent's list's
        cached runs (one C call each), and each run's bytes compared with the parent's, so
        an item changed in place is never mistaken for an unchanged one. Returns the
        reference, the append to store (None when the list is a prefix of the parent's) and
        the cache entry of the new list.
        """
        encoded = type(value[0]) is _EXT and set(map(type, value)) == {_EXT}
        start, kept = self._common_prefix(value, path, old, encoded) if isinstance(old, ListRef) else (0, [])
        objects = list(value) if encoded else None
        if isinstance(old, ListRef) and start == len(value):
            return (
                ListRef(old.list_id, start),
                None,
                _ListCache(tuple(kept), start, sum(r.size for r in kept), objects),
            )
        new_items = self.serializer.dumps_items(value[start:], path=path, first=start)
        self._check_value_size(max(new_items, key=len), f"an item of {path}")
        if isinstance(old, ListRef) and start > 0:
            list_id, base = (
                (old.list_id, None) if start == old.length else (random_list_id(), (old.list_id, start))
            )
        else:
            list_id, base = random_list_id(), None
        pack = self.serializer.pack
        framed = [pack(item) for item in new_items]
        append = ListAppend(
            list_id=list_id,
            start=start,
            items=framed,
            crcs=[zlib.crc32(f) for f in framed],
            fork_id=0,
            base=base,
        )
        runs = _extend_runs(kept, new_items)
        return (
            ListRef(list_id, len(value)),
            append,
            _ListCache(runs, len(value), sum(r.size for r in runs), objects),
        )

    def _parent_runs(self, old: ListRef) -> tuple[tuple[ItemRun, ...], _ListCache | None]:
        """The runs of the stored list ``old`` (its first ``old.length`` items): cached, or
        read back (empty when unreadable: everything is then stored again)."""
        cached = self._caches.list(old.list_id)
        if cached is not None and cached.length == old.length:
            return cached.runs, cached
        try:
            stored = self._read_list_raw(old, "parent")
        except (IntegrityError, NotFound, SerializationError):
            return (), None
        return _extend_runs([], stored), None

    def _common_prefix(
        self, value: list[Any], path: str, old: ListRef, encoded: bool
    ) -> tuple[int, builtins.list[ItemRun]]:
        """How many leading items the new list shares with the stored list ``old``, and the
        runs of those items."""
        runs, cached = self._parent_runs(old)
        n = old.length
        if (
            encoded
            and cached is not None
            and cached.objects is not None
            and n <= len(value)
            and all(map(operator.is_, value[:n], cached.objects))
        ):
            return n, list(runs)
        limit = min(n, len(value))
        count = 0
        kept: builtins.list[ItemRun] = []
        dumps_run = self.serializer.dumps_run
        for run in runs:
            end = count + run.length
            if end <= limit and dumps_run(value[count:end], path=path, first=count).data == run.data:
                kept.append(run)
                count = end
                continue
            # The first item that differs lies in this run: compare its items one by one
            # (msgpack values are self-delimiting, so equal leading bytes are equal items).
            offset, matched = run.start, []
            for item in self.serializer.dumps_items(value[count : min(end, limit)], path=path, first=count):
                if not run.data.startswith(item, offset):
                    break
                offset += len(item)
                matched.append(item)
            if matched:
                kept.append(ItemRun.of(matched))
                count += len(matched)
            break
        return count, kept

    def _read_list_raw(self, ref: ListRef, checkpoint_id: str) -> list[bytes]:
        try:
            rows = self.repository.get_list_items(ref.list_id, ref.length)
        except IntegrityError as exc:
            raise IntegrityError(f"checkpoint {checkpoint_id}: {exc}") from exc
        crc32 = zlib.crc32
        data = rows.data
        for i, (crc, framed) in enumerate(zip(rows.crcs, data, strict=True)):
            if crc32(framed) != crc:
                raise IntegrityError(
                    f"checkpoint {checkpoint_id}: item {i} of a stored list does not match its checksum"
                )
        unpack = self.serializer.unpack
        return [f[1:] if f[:1] == b"\x00" else unpack(f) for f in data]

    # ------------------------------------------------------------ headers

    def _encode_header(self, **fields: Any) -> bytes:
        packed = {_HEADER_KEYS[k]: v for k, v in fields.items() if v is not None and not _empty(v)}
        if not packed and self.serializer.keyring is None:
            return _EMPTY_HEADER
        return self.encode_record(packed, "metadata")

    def _decode_header(self, raw: bytes) -> dict[str, Any]:
        if raw == _EMPTY_HEADER:
            return {}
        data = self.decode_record(raw) if raw else {}
        if not isinstance(data, dict):
            raise IntegrityError("checkpoint header is not a mapping")
        return {name: data[short] for name, short in _HEADER_KEYS.items() if short in data}

    def _checkpoint(self, row: CheckpointRow) -> Checkpoint:
        header = self._decode_header(row.header)
        return Checkpoint(
            id=row.id,
            thread_id=row.thread_id,
            branch=row.branch,
            parent_id=row.parent_id,
            kind=row.kind,
            status=row.status,
            created_at=us_to_datetime(row.created_at),
            expires_at=us_to_datetime(row.expires_at) if row.expires_at is not None else None,
            title=header.get("title"),
            description=header.get("description"),
            tags=tuple(header.get("tags", ())),
            metadata=header.get("metadata", {}),
            error_message=header.get("error_message"),
            error_type=header.get("error_type"),
            milestone=row.milestone,
            protected=row.milestone is not None and header.get("protected", True) is not False,
            merge_parent_id=row.merge_parent_id,
            restored_from=header.get("restored_from"),
            sync_point=header.get("sync_point"),
            origin=header.get("origin"),
            restore_count=row.restore_count,
            logical_size=row.logical_size,
            stored_size=row.stored_size,
        )

    # ------------------------------------------------------------ read

    def row(self, checkpoint_id: str, thread_id: str | None = None) -> CheckpointRow:
        """The stored row of a checkpoint (for the layers above). Raises NotFound, InvalidInput."""
        return self.repository.get_checkpoint(
            validate_checkpoint_id(checkpoint_id),
            validate_id(thread_id, "thread id") if thread_id is not None else None,
        )

    def describe(self, row: CheckpointRow) -> Checkpoint:
        """The fields of a stored row already read (for layers that read rows in bulk)."""
        return self._checkpoint(row)

    def get(self, checkpoint_id: str, thread_id: str | None = None) -> Checkpoint:
        """A checkpoint's fields (not its state).

        ``thread_id`` is needed only for ids present in several threads (copies).
        Raises NotFound, InvalidInput.
        """
        return self._checkpoint(self.row(checkpoint_id, thread_id))

    def latest(self, thread_id: str, branch: str = DEFAULT_BRANCH) -> Checkpoint | None:
        """The head of a branch, or None when the branch is empty. Raises NotFound."""
        thread_id = validate_id(thread_id, "thread id")
        branch = validate_name(branch, "branch")
        with self.repository.snapshot():
            head = self.repository.get_branch(thread_id, branch).head
            return self.get(head, thread_id) if head else None

    def get_state(self, checkpoint_id: str, thread_id: str | None = None) -> dict[str, Any]:
        """Exactly the state that was written, verified against its checksums.

        Raises:
            NotFound: no such checkpoint.
            IntegrityError: stored bytes no longer match their hash or checksum.
        """
        with self.repository.snapshot():
            return self.materialize(self.row(checkpoint_id, thread_id))

    def get_with_state(
        self, checkpoint_id: str, thread_id: str | None = None
    ) -> tuple[Checkpoint, dict[str, Any]]:
        """A checkpoint and its state in one read."""
        with self.repository.snapshot():
            row = self.row(checkpoint_id, thread_id)
            return self._checkpoint(row), self.materialize(row)

    def materialize(self, row: CheckpointRow) -> dict[str, Any]:
        """Decode a stored row's state, verified against its hashes and checksums."""
        return self.materialize_many([row])[0]

    def materialize_many(self, rows: Sequence[CheckpointRow]) -> builtins.list[dict[str, Any]]:
        """Decode the states of several rows, reading and decoding each stored value once.

        Checkpoints of one thread share most of their values (a list prefix, a
        constant blob): each list is read once at the longest length any row needs
        and each blob once, so listing 10 checkpoints of a long chat costs about one
        state, not ten. States of one call may share value objects (list items,
        blob values); copy before mutating them in place.

        Raises IntegrityError (naming the checkpoint) when stored bytes do not match.
        """
        with self.repository.snapshot():
            return self._materialize_many(rows)

    def snapshot(self) -> contextlib.AbstractContextManager[None]:
        """Reads made inside the block (on this thread) see one snapshot of the store, in
        one read transaction where the backend has them: cheaper for several reads in a
        row. No writes inside the block."""
        return self.repository.snapshot()

    def _materialize_many(self, rows: Sequence[CheckpointRow]) -> builtins.list[dict[str, Any]]:
        wanted_blobs = {r.hash for row in rows for r in row.manifest.values() if isinstance(r, BlobRef)}
        raw_blobs = self.repository.get_blobs(wanted_blobs) if wanted_blobs else {}
        longest: dict[int, tuple[int, str]] = {}
        for row in rows:
            for ref in row.manifest.values():
                if isinstance(ref, ListRef) and ref.length > longest.get(ref.list_id, (-1, ""))[0]:
                    longest[ref.list_id] = (ref.length, row.id)
        blobs: dict[bytes, Any] = {}
        lists: dict[int, builtins.list[Any]] = {}
        states: builtins.list[dict[str, Any]] = []
        share = len(rows) > 1  # one state never aliases values between its own keys
        for row in rows:
            if not share:
                blobs.clear()
                lists.clear()
            state: dict[str, Any] = {}
            try:
                for key, ref in row.manifest.items():
                    if isinstance(ref, InlineRef):
                        state[key] = self.serializer.loads(self.serializer.unpack(ref.data))
                    elif isinstance(ref, BlobRef):
                        if ref.hash not in blobs:
                            blobs[ref.hash] = self._load_blob(row.id, key, ref, raw_blobs.get(ref.hash))
                        state[key] = blobs[ref.hash] if share else blobs.pop(ref.hash)
                    else:
                        if ref.list_id not in lists:
                            length, owner = longest[ref.list_id] if share else (ref.length, row.id)
                            raw = self._read_list_raw(ListRef(ref.list_id, length), owner)
                            lists[ref.list_id] = self.serializer.loads_items(raw)
                        items = lists[ref.list_id] if share else lists.pop(ref.list_id)
                        state[key] = items[: ref.length]
            except SerializationError as exc:
                raise IntegrityError(f"checkpoint {row.id}: stored state cannot be decoded ({exc})") from exc
            states.append(state)
        return states

    def _load_blob(self, checkpoint_id: str, key: str, ref: BlobRef, framed: bytes | None) -> Any:
        if framed is None:
            raise IntegrityError(
                f"checkpoint {checkpoint_id}: value of {key!r} is missing (blob {ref.hash.hex()})"
            )
        data = self.serializer.unpack(bytes(framed))
        if self.serializer.content_hash(data) != ref.hash:
            raise IntegrityError(
                f"checkpoint {checkpoint_id}: value of {key!r} does not match its hash {ref.hash.hex()}"
            )
        return self.serializer.loads(data)

    def list(
        self,
        thread_id: str,
        filter: CheckpointFilter | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Checkpoint]:
        """A thread's checkpoints, newest first, a page at a time.

        Pass the returned ``next_cursor`` as ``cursor`` for the next page.
        Raises NotFound (thread), InvalidInput (limit, cursor).
        """
        check_limit(limit)
        rows = self.scan(thread_id, filter, limit=limit + 1, cursor=cursor)
        items = [self._checkpoint(r) for r in rows[:limit]]
        return Page(items, items[-1].id if len(rows) > limit else None)

    def iter(self, thread_id: str, filter: CheckpointFilter | None = None) -> Iterator[Checkpoint]:
        """Every matching checkpoint, newest first, fetched in pages."""
        return iterate_pages(lambda cursor: self.list(thread_id, filter, limit=200, cursor=cursor))

    def scan(
        self, thread_id: str, filter: CheckpointFilter | None = None, *, limit: int, cursor: str | None = None
    ) -> builtins.list[CheckpointRow]:
        """Stored rows matching a filter (the backend filters what it can, the rest here)."""
        f = filter or CheckpointFilter()
        thread_id = validate_id(thread_id, "thread id")
        before = validate_checkpoint_id(cursor) if cursor is not None else None
        residual = bool(f.tags or f.metadata)
        out: builtins.list[CheckpointRow] = []
        batch = limit if not residual else max(limit * 4, 100)
        while len(out) < limit:
            query = RowQuery(
                kinds=f.kinds,
                statuses=f.statuses,
                branch=f.branch,
                created_after=datetime_to_us(f.created_after) if f.created_after else None,
                created_before=datetime_to_us(f.created_before) if f.created_before else None,
                before=before,
                limit=batch,
            )
            rows = self.repository.scan_checkpoints(thread_id, query)
            for row in rows:
                if not residual or self._matches(row, f):
                    out.append(row)
                    if len(out) >= limit:
                        break
            if len(rows) < batch:
                break
            before = rows[-1].id
        return out

    def _matches(self, row: CheckpointRow, f: CheckpointFilter) -> bool:
        header = self._decode_header(row.header)
        if f.tags and not f.tags <= set(header.get("tags", ())):
            return False
        return metadata_matches(header.get("metadata", {}), f.metadata)

    def history(
        self, thread_id: str, branch: str = DEFAULT_BRANCH, *, limit: int = 50, cursor: str | None = None
    ) -> Page[Checkpoint]:
        """A branch's history: its head and first-parent ancestors, newest first."""
        check_limit(limit)
        start = (
            validate_checkpoint_id(cursor)
            if cursor
            else self.repository.get_branch(
                validate_id(thread_id, "thread id"), validate_name(branch, "branch")
            ).head
        )
        if start is None:
            return Page([], None)
        rows = self.repository.walk_lineage(thread_id, start, limit=limit + 1)
        items = [self._checkpoint(r) for r in rows[:limit]]
        return Page(items, rows[limit].id if len(rows) > limit else None)

    def find(self, prefix: str) -> str:
        """Resolve a unique id prefix to a full checkpoint id (like git).

        Raises:
            NotFound: nothing starts with the prefix.
            InvalidInput: the prefix is ambiguous (message lists candidates).
        """
        if not isinstance(prefix, str) or not prefix:
            raise InvalidInput("checkpoint id prefix must be a non-empty string")
        matches = self.repository.find_checkpoints(prefix.lower(), limit=6)
        if not matches:
            raise NotFound(f"no checkpoint id starts with {prefix!r}")
        if len(matches) > 1 and prefix.lower() not in matches:
            raise InvalidInput(f"checkpoint id prefix {prefix!r} is ambiguous: " + ", ".join(matches[:5]))
        return prefix.lower() if prefix.lower() in matches else matches[0]

    def ids_starting_with(self, prefix: str, limit: int = 10) -> builtins.list[str]:
        """Up to ``limit`` distinct checkpoint ids (all threads) starting with ``prefix``, in order."""
        check_limit(limit)
        return self.repository.find_checkpoints(prefix.lower(), limit=limit) if prefix else []

    # ------------------------------------------------------------ lifecycle

    def set_expiry(
        self, checkpoint_id: str, expires_at: datetime | None, *, thread_id: str | None = None
    ) -> Checkpoint:
        """Set (or clear, with None) when a checkpoint expires; a checkpoint given a
        future expiry becomes active again. Raises NotFound."""
        row = self.row(checkpoint_id, thread_id)
        moment = datetime_to_us(expires_at) if expires_at is not None else None
        status = None
        if row.status is CheckpointStatus.EXPIRED and (moment is None or moment > now_us()):
            status = CheckpointStatus.ACTIVE
        self.repository.update_checkpoints(
            row.thread_id, [row.id], LifecycleUpdate(status=status, expires_at=moment)
        )
        return self.get(row.id, row.thread_id)

    def extend_expiry(self, checkpoint_id: str, by: timedelta, *, thread_id: str | None = None) -> Checkpoint:
        """Push a checkpoint's expiry later by ``by`` (from now if it had none)."""
        if by <= timedelta(0):
            raise InvalidInput(f"extend_expiry needs a positive duration, got {by}")
        current = self.get(checkpoint_id, thread_id)
        base = current.expires_at or us_to_datetime(now_us())
        return self.set_expiry(current.id, base + by, thread_id=current.thread_id)

    def archive(self, checkpoint_id: str, *, thread_id: str | None = None) -> Checkpoint:
        """Mark a checkpoint archived: kept and readable, not restorable. Raises NotFound."""
        row = self.row(checkpoint_id, thread_id)
        self.repository.update_checkpoints(
            row.thread_id, [row.id], LifecycleUpdate(status=CheckpointStatus.ARCHIVED)
        )
        return self.get(row.id, row.thread_id)

    def set_tags(
        self, checkpoint_id: str, tags: Sequence[str], *, thread_id: str | None = None
    ) -> Checkpoint:
        """Replace a checkpoint's tags (tags are lifecycle data; state never changes)."""
        return self._update_header(self.row(checkpoint_id, thread_id), tags=_check_tags(tags))

    def set_protected(
        self, checkpoint_id: str, protected: bool, *, thread_id: str | None = None
    ) -> Checkpoint:
        """Protect or unprotect a milestone from retention."""
        row = self.row(checkpoint_id, thread_id)
        if row.milestone is None:
            raise InvalidInput(f"checkpoint {row.id} is not a milestone; only milestones are protected")
        return self._update_header(row, protected=protected)

    def count_restore(self, checkpoint_id: str, *, thread_id: str | None = None) -> None:
        """Add one to a checkpoint's restore count (restores through the thread layer
        count themselves, in the same transaction as the restoring write)."""
        row = self.row(checkpoint_id, thread_id)
        self.repository.update_checkpoints(row.thread_id, [row.id], LifecycleUpdate(restore_delta=1))

    def _update_header(self, row: CheckpointRow, **changes: Any) -> Checkpoint:
        header = self._decode_header(row.header)
        header.update(changes)
        if header.get("protected") is True:
            header.pop("protected")
        update = LifecycleUpdate(header=self._encode_header(**header))
        self.repository.update_checkpoints(row.thread_id, [row.id], update)
        return self.get(row.id, row.thread_id)

    def delete(self, checkpoint_ids: Sequence[str], *, thread_id: str | None = None) -> int:
        """Delete checkpoints; survivors are re-linked to their nearest surviving
        ancestor and unreferenced bytes are collected, one transaction per thread.
        Returns how many were deleted. Raises NotFound (nothing deleted then)."""
        by_thread: dict[str, builtins.list[str]] = {}
        for raw in checkpoint_ids:
            row = self.row(raw, thread_id)
            by_thread.setdefault(row.thread_id, []).append(row.id)
        for tid, ids in by_thread.items():
            self.repository.delete_checkpoints(tid, ids)
            self._caches.forget_thread(tid)
        return sum(len(ids) for ids in by_thread.values())

    def expire_due(self, now: datetime | None = None) -> builtins.list[str]:
        """Mark active checkpoints past their expiry as expired; returns their ids."""
        moment = datetime_to_us(now) if now else now_us()
        expired: builtins.list[str] = []
        while True:
            due = self.repository.due_for_expiry(moment, limit=1000)
            if not due:
                return expired
            self._mark_expired(due)
            expired.extend(cid for _, cid in due)

    def _mark_expired(self, due: Sequence[tuple[str, str]]) -> None:
        by_thread: dict[str, builtins.list[str]] = {}
        for tid, cid in due:
            by_thread.setdefault(tid, []).append(cid)
        for tid, ids in by_thread.items():
            self.repository.update_checkpoints(tid, ids, LifecycleUpdate(status=CheckpointStatus.EXPIRED))

    def cleanup_expired(self, *, dry_run: bool = False, now: datetime | None = None) -> CleanupReport:
        """Expire what is due, then delete expired checkpoints except branch heads and
        protected milestones, one transaction per thread. A dry run changes nothing
        and reports exactly what a real run would remove."""
        moment = datetime_to_us(now) if now else now_us()
        due = self.repository.due_for_expiry(moment, limit=1_000_000)
        if not dry_run:
            self._mark_expired(due)
        rows_by_thread: dict[str, dict[str, CheckpointRow]] = {}
        for tid, cid in due:
            rows_by_thread.setdefault(tid, {})[cid] = self.repository.get_checkpoint(cid, tid)
        expired_only = CheckpointFilter(statuses=frozenset({CheckpointStatus.EXPIRED}))
        for thread in self._all_threads():
            for row in self.scan(thread.id, expired_only, limit=100_000):
                rows_by_thread.setdefault(thread.id, {})[row.id] = row
        candidates: dict[str, builtins.list[str]] = {}
        for tid, rows in rows_by_thread.items():
            heads = {b.head for b in self.repository.list_branches(tid)}
            chosen = [
                cid for cid, row in rows.items() if cid not in heads and not self._checkpoint(row).protected
            ]
            if chosen:
                candidates[tid] = sorted(chosen)
        freed = 0
        if not dry_run:
            for tid, ids in candidates.items():
                freed += self.repository.delete_checkpoints(tid, ids).bytes
                self._caches.forget_thread(tid)
            if candidates:
                self.repository.reclaim_space()
        deleted = [cid for ids in candidates.values() for cid in ids]
        return CleanupReport(
            dry_run=dry_run, expired=[cid for _, cid in due], deleted=deleted, freed_bytes=freed
        )

    def _all_threads(self) -> Iterator[ThreadRow]:
        after: str | None = None
        while True:
            rows = self.repository.list_threads(after=after, limit=500)
            yield from rows
            if len(rows) < 500:
                return
            after = rows[-1].id

    # ------------------------------------------------------------ encryption keys

    def rotate_keys(
        self,
        *,
        batch: int = 500,
        after: str | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> int:
        """Re-encrypt every stored frame not encrypted with the key ring's active key.

        Online and resumable: one short transaction per ``batch`` frames, so writers
        keep going; a run cut short can be resumed (it skips what is already
        re-encrypted). Returns how many frames were re-encrypted.
        Raises InvalidInput when the store has no key ring.
        """
        ring = self.serializer.keyring
        if ring is None:
            raise InvalidInput("this store has no key ring: open it with keyring=... to rotate keys")
        check_limit(batch)

        def reencrypt(frame: bytes) -> bytes | None:
            kid = frame_key_id(frame)
            if kid is None or kid == ring.active:
                return None
            return self.serializer.pack(self.serializer.unpack(frame))

        total = 0
        cursor = after
        while True:
            changed, cursor = self.repository.rewrite_frames(reencrypt, after=cursor, limit=batch)
            total += changed
            if progress:
                progress("rotate", total, total)
            if cursor is None:
                return total

    def keys_in_use(self, *, batch: int = 1000) -> dict[int | None, int]:
        """How many stored frames each key id encrypts (None: frames stored unencrypted)."""
        counts: dict[int | None, int] = {}

        def count(frame: bytes) -> None:
            kid = frame_key_id(frame)
            counts[kid] = counts.get(kid, 0) + 1
            return None

        cursor: str | None = None
        while True:
            _, cursor = self.repository.rewrite_frames(count, after=cursor, limit=batch)
            if cursor is None:
                return counts

    def unreadable_keys(self, *, batch: int = 1000) -> dict[int, str]:
        """Key ids in use that the store's key ring cannot decrypt, with the reason
        ({} when it reads them all). One frame of each key id in use is decrypted; reads only."""
        tried: set[int] = set()
        problems: dict[int, str] = {}

        def probe(frame: bytes) -> None:
            kid = frame_key_id(frame)
            if kid is not None and kid not in tried:
                tried.add(kid)
                try:
                    self.serializer.unpack(frame)
                except (SerializationError, InvalidInput) as exc:
                    problems[kid] = str(exc)
            return None

        cursor: str | None = None
        while True:
            _, cursor = self.repository.rewrite_frames(probe, after=cursor, limit=batch)
            if cursor is None:
                return problems

    # ------------------------------------------------------------ statistics

    def stats(self, thread_ids: Sequence[str] | None = None) -> Stats:
        """Counts by kind and status, logical and stored bytes, oldest/newest,
        restores, branches and milestones, computed by queries (states are not read)."""
        ids = [validate_id(t, "thread id") for t in thread_ids] if thread_ids is not None else None
        row = self.repository.stats(ids)
        return Stats(
            threads=row.threads,
            checkpoints=row.checkpoints,
            by_kind={k.value: row.by_kind.get(k.value, 0) for k in CheckpointKind},
            by_status={s.value: row.by_status.get(s.value, 0) for s in CheckpointStatus},
            logical_bytes=row.logical_bytes,
            stored_bytes=row.stored_bytes,
            oldest=us_to_datetime(row.oldest) if row.oldest is not None else None,
            newest=us_to_datetime(row.newest) if row.newest is not None else None,
            restores=row.restores,
            branches=row.branches,
            milestones=row.milestones,
        )

    # ------------------------------------------------------------ integrity

    def check(self, *, progress: Callable[[str, int, int], None] | None = None) -> builtins.list[str]:
        """Integrity scan of the whole store; reads only.

        Every checkpoint of every thread is materialized (blobs verified against
        their hash, list items against their CRC-32, values decoded), and every
        parent and branch head must exist in its thread. Returns the problems
        found, one message each (empty: the store is sound). ``progress(phase,
        done, total)`` is called after each checkpoint.
        """
        total = self.repository.stats(None).checkpoints
        problems: builtins.list[str] = []
        done = 0
        for thread in builtins.list(self._all_threads()):
            ids: set[str] = set()
            parents: builtins.list[tuple[str, str]] = []
            cursor: str | None = None
            while True:
                try:
                    rows = self.scan(thread.id, limit=500, cursor=cursor)
                except NotFound:  # deleted while we were scanning
                    break
                for row in rows:
                    ids.add(row.id)
                    parents.extend((row.id, p) for p in (row.parent_id, row.merge_parent_id) if p)
                    try:
                        self.materialize(row)
                    except IntegrityError as exc:
                        problems.append(f"thread {thread.id!r}: {exc}")
                    done += 1
                    if progress:
                        progress("check", done, max(total, done))
                if len(rows) < 500:
                    break
                cursor = rows[-1].id
            problems.extend(
                f"thread {thread.id!r}: checkpoint {child} has parent {parent}, which does not exist"
                for child, parent in parents
                if parent not in ids
            )
            try:
                branches = self.repository.list_branches(thread.id)
            except NotFound:
                continue
            problems.extend(
                f"thread {thread.id!r}: branch {b.name!r} points at {b.head}, which does not exist"
                for b in branches
                if b.head is not None and b.head not in ids
            )
        return problems

    # ------------------------------------------------------------ async twins (one implementation)

    acreate_thread = asyncify(create_thread)
    aget_thread = asyncify(get_thread)
    alist_threads = asyncify(list_threads)
    adelete_thread = asyncify(delete_thread)
    acreate = asyncify(create)
    aget = asyncify(get)
    alatest = asyncify(latest)
    aget_state = asyncify(get_state)
    alist = asyncify(list)
    ahistory = asyncify(history)
    adelete = asyncify(delete)
    aset_expiry = asyncify(set_expiry)
    aarchive = asyncify(archive)
    acleanup_expired = asyncify(cleanup_expired)
    astats = asyncify(stats)


# ---------------------------------------------------------------- helpers


_EXT = ormsgpack.Ext


def random_list_id() -> int:
    """A new random list id (62 bits: collisions are not a practical concern)."""
    return random_bits(62) + 1


def _valid_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _empty(value: Any) -> bool:
    return isinstance(value, tuple | list | dict) and not value


def check_limit(limit: int) -> None:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1 or limit > 100_000:
        raise InvalidInput(f"limit must be an integer between 1 and 100000, got {limit!r}")


def _opt_str(value: object, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, got {type(value).__name__}")
    return value


def _check_tags(tags: Sequence[str]) -> tuple[str, ...]:
    if isinstance(tags, str):
        raise InvalidInput("tags must be a sequence of strings, not a single string")
    return tuple(dict.fromkeys(validate_id(t, "tag") for t in tags))


def metadata_matches(metadata: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Every wanted key is present with an equal value (True is not 1)."""
    return all(key in metadata and _same(metadata[key], value) for key, value in wanted.items())


def _same(a: Any, b: Any) -> bool:
    """Metadata equality that does not confuse True with 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)
