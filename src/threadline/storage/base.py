"""The storage contract: what every backend (memory, SQLite, PostgreSQL) provides.

The contract stores three kinds of immutable data and a few mutable pointers:

* **Checkpoint rows**: one small row per checkpoint: identity, lineage, kind,
  lifecycle fields, an encoded *header* (title, tags, metadata, ...) and a
  *manifest* that maps each top-level state key to a :data:`Ref`.
* **Blobs**: content-addressed values (``blake2b-128`` of the stored bytes),
  shared by any number of checkpoints and threads. A blob is stored once.
* **Lists**: append-only item logs keyed by ``(list_id, position)``. A list value
  of a checkpoint is a :class:`ListRef` "the first *n* items of list *L*". A list may
  start from a prefix of another list (its *base*), so a fork or a copy shares
  the prefix; base chains are kept shorter than :data:`MAX_LIST_DEPTH`, so a read
  follows a bounded number of segments whatever the history length.
* **Pointers**: branch heads, thread and session rows, lifecycle fields.

Atomicity: every method is one transaction. :meth:`CheckpointRepository.append_checkpoint`
stores a checkpoint row, its new blobs and list items entirely or not at all, and
checks the branch head inside the same transaction, so two writers can never
give two checkpoints the same parent on one branch.

Encoding of values, checksums and the state model belong to the core layer; a
backend stores bytes and integers and never decodes a value. The shared pure
helpers at the bottom of this module (manifest codec, lineage relinking, list
resolution rules) are used by every backend so that they cannot drift.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import ormsgpack

from threadline.errors import IntegrityError, InvalidInput, NotFound
from threadline.model import CheckpointKind, CheckpointStatus

#: A list's base chain never gets this deep: a write that would go deeper
#: copies the prefix into a fresh root list instead (rare; bounded reads).
MAX_LIST_DEPTH: Final = 4

#: The schema version every backend migrates to; a store with a higher one is refused.
SCHEMA_VERSION: Final = 3


# ---------------------------------------------------------------- refs


@dataclass(frozen=True, slots=True)
class InlineRef:
    """A small value stored inside the manifest itself (framed bytes)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A value stored as a content-addressed blob."""

    hash: bytes


@dataclass(frozen=True, slots=True)
class ListRef:
    """The first ``length`` items of list ``list_id``."""

    list_id: int
    length: int


Ref = InlineRef | BlobRef | ListRef
Manifest = dict[str, Ref]


# ---------------------------------------------------------------- writes


@dataclass(slots=True)
class NewBlob:
    """A blob the write needs. Stored unless a blob with this hash exists."""

    hash: bytes
    data: bytes


@dataclass(slots=True)
class ListAppend:
    """Items to add to a list so that ``ListRef(list_id, start + len(items))`` holds.

    * ``base is None``: ``list_id`` is a new root list when ``start == 0``, or an
      existing list that must have exactly ``start`` items and not be sealed.
    * ``base = (B, n)``: ``list_id`` is a new list whose first ``n`` items are
      those of list ``B`` (``start == n``).

    When an existing list has moved past ``start`` (another branch appended to
    the shared log, or the list was trimmed and sealed), the backend does not
    fail: it creates list ``fork_id`` with base ``(list_id, start)``, stores the
    items there, and rewrites the manifest's refs to ``list_id`` accordingly.
    ``crcs[i]`` is the checksum of ``items[i]`` computed by the core.
    """

    list_id: int
    start: int
    items: Sequence[bytes]
    crcs: Sequence[int]
    fork_id: int
    base: tuple[int, int] | None = None


@dataclass(slots=True)
class CheckpointWrite:
    """Everything one checkpoint write stores, in one transaction."""

    id: str
    thread_id: str
    branch: str
    kind: CheckpointKind
    created_at: int
    expires_at: int | None
    header: bytes
    manifest: Manifest
    blobs: Sequence[NewBlob] = ()
    lists: Sequence[ListAppend] = ()
    logical_size: int = 0
    milestone: str | None = None
    #: Write with this parent instead of the branch head. Used when a write
    #: creates a branch (``create_branch=True``) at ``parent_id``.
    parent_id: str | None = None
    create_branch: bool = False
    merge_parent_id: str | None = None
    restored_from: str | None = None
    #: The id was generated (not chosen by the caller): the backend may replace
    #: it by a later one so that a checkpoint's id always sorts after its parent's.
    generated_id: bool = False
    #: The checkpoint the core planned this write against (compared its values with).
    planned_parent: str | None = None
    #: Blob hashes the manifest shares with ``planned_parent``. While that parent is
    #: still the branch head, inside the write's transaction, these blobs are known to
    #: exist and to be recorded for the thread: a backend may skip checking them.
    carried_blobs: frozenset[bytes] = frozenset()

    def stored_row(
        self, checkpoint_id: str, parent_id: str | None, stored_size: int, manifest: Manifest
    ) -> CheckpointRow:
        """The row of this write once stored under ``checkpoint_id`` after ``parent_id``
        (active, never restored), with the manifest as the backend stored it."""
        return CheckpointRow(
            id=checkpoint_id,
            thread_id=self.thread_id,
            branch=self.branch,
            parent_id=parent_id,
            merge_parent_id=self.merge_parent_id,
            kind=self.kind,
            status=CheckpointStatus.ACTIVE,
            created_at=self.created_at,
            expires_at=self.expires_at,
            restore_count=0,
            logical_size=self.logical_size,
            stored_size=stored_size,
            header=self.header,
            manifest=manifest,
            milestone=self.milestone,
        )


_UNSET: Any = object()
UNSET: Final[Any] = _UNSET


# ---------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """A stored checkpoint as the backend returns it (times in microseconds)."""

    id: str
    thread_id: str
    branch: str
    parent_id: str | None
    merge_parent_id: str | None
    kind: CheckpointKind
    status: CheckpointStatus
    created_at: int
    expires_at: int | None
    restore_count: int
    logical_size: int
    stored_size: int
    header: bytes
    manifest: Manifest
    milestone: str | None = None


@dataclass(frozen=True, slots=True)
class ThreadRow:
    id: str
    created_at: int
    session_id: str | None
    metadata: bytes
    default_branch: str
    origin: bytes | None
    #: The thread's own retention policy fields (encoded by the session layer), if any.
    policy: bytes | None = None


@dataclass(frozen=True, slots=True)
class SessionRow:
    id: str
    created_at: int
    metadata: bytes
    owner: str | None
    status: str
    policy: bytes | None


@dataclass(frozen=True, slots=True)
class SyncPointRow:
    """A label over one checkpoint per thread, written atomically."""

    session_id: str
    label: str
    created_at: int
    members: tuple[tuple[str, str], ...]  # (thread id, checkpoint id)
    metadata: bytes = b""


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """An intermediate write of a step, stored against a checkpoint (LangGraph's put_writes)."""

    task_id: str
    idx: int
    channel: str
    value: bytes
    task_path: str = ""


@dataclass(frozen=True, slots=True)
class BranchRow:
    thread_id: str
    name: str
    head: str | None
    created_at: int
    base: str | None


@dataclass(frozen=True, slots=True)
class RowQuery:
    """The part of a checkpoint filter every backend evaluates natively.

    Rows come newest first (descending id); ``before`` is an exclusive id bound.
    """

    kinds: frozenset[CheckpointKind] | None = None
    statuses: frozenset[CheckpointStatus] | None = None
    branch: str | None = None
    created_after: int | None = None
    created_before: int | None = None
    before: str | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class LifecycleUpdate:
    """Fields of a checkpoint that may change after it is written."""

    status: CheckpointStatus | None = None
    expires_at: int | Any | None = _UNSET
    header: bytes | None = None
    restore_delta: int = 0


@dataclass(frozen=True, slots=True)
class StatsRow:
    threads: int
    checkpoints: int
    by_kind: dict[str, int]
    by_status: dict[str, int]
    logical_bytes: int
    stored_bytes: int
    oldest: int | None
    newest: int | None
    restores: int
    branches: int
    milestones: int
    #: (thread id, checkpoints, logical bytes, stored bytes), most stored bytes first.
    largest: list[tuple[str, int, int, int]] = field(default_factory=list)
    #: Checkpoints created per UTC day ("YYYY-MM-DD").
    per_day: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GcReport:
    """What a garbage collection removed."""

    blobs: int = 0
    list_items: int = 0
    lists: int = 0
    bytes: int = 0

    def __add__(self, other: GcReport) -> GcReport:
        return GcReport(
            self.blobs + other.blobs,
            self.list_items + other.list_items,
            self.lists + other.lists,
            self.bytes + other.bytes,
        )


@dataclass(slots=True)
class ItemRows:
    """Stored items of one list prefix, in order, with their checksums."""

    data: list[bytes] = field(default_factory=list)
    crcs: list[int] = field(default_factory=list)


# ---------------------------------------------------------------- the contract


class CheckpointRepository(abc.ABC):
    """The storage contract. Every method is atomic; every error is a ThreadlineError.

    Threads are addressed by their public id, checkpoints by their canonical
    UUID string. Times are integer microseconds since the epoch.
    Implementations are safe to call from several threads of one process and,
    for SQLite and PostgreSQL, from several processes at once.
    """

    url: str

    # ------------------------------------------------------------ lifecycle

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and files. Idempotent."""

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The schema version recorded in the store."""

    def latest_schema_version(self) -> int:
        """The newest schema version this backend knows (what opening migrates to)."""
        return SCHEMA_VERSION

    # ------------------------------------------------------------ threads

    @abc.abstractmethod
    def create_thread(
        self,
        thread_id: str,
        *,
        created_at: int,
        session_id: str | None,
        metadata: bytes,
        origin: bytes | None = None,
    ) -> ThreadRow:
        """Create a thread with an empty ``main`` branch.

        Raises:
            AlreadyExists: a thread with this id exists.
        """

    @abc.abstractmethod
    def get_thread(self, thread_id: str) -> ThreadRow:
        """Raises NotFound when the thread does not exist."""

    @abc.abstractmethod
    def list_threads(
        self, *, session_id: str | None = None, after: str | None = None, limit: int = 100
    ) -> list[ThreadRow]:
        """Threads ordered by id ascending, strictly after ``after``."""

    @abc.abstractmethod
    def update_thread(self, thread_id: str, *, metadata: bytes) -> ThreadRow:
        """Replace a thread's metadata. Raises NotFound."""

    @abc.abstractmethod
    def delete_thread(self, thread_id: str) -> GcReport:
        """Delete a thread, its branches, checkpoints and milestones, and collect
        the blobs and list items no other thread references. Raises NotFound."""

    # ------------------------------------------------------------ branches

    @abc.abstractmethod
    def get_branch(self, thread_id: str, name: str) -> BranchRow:
        """Raises NotFound (thread or branch)."""

    @abc.abstractmethod
    def list_branches(self, thread_id: str) -> list[BranchRow]:
        """All branches of a thread, ordered by name. Raises NotFound (thread)."""

    @abc.abstractmethod
    def create_branch(self, thread_id: str, name: str, *, head: str | None, created_at: int) -> BranchRow:
        """Create a branch whose head is an existing checkpoint of the thread (or empty).

        Raises:
            NotFound: the thread or the head checkpoint does not exist.
            AlreadyExists: a branch with this name exists.
        """

    @abc.abstractmethod
    def rename_branch(self, thread_id: str, old: str, new: str) -> BranchRow:
        """Rename a branch (and the thread's default branch with it).

        Raises NotFound (thread, branch), AlreadyExists (new name taken).
        """

    @abc.abstractmethod
    def delete_branch(self, thread_id: str, name: str, *, force: bool = False) -> GcReport:
        """Delete a branch and the checkpoints no other branch reaches.

        Checkpoints reachable from another branch's head survive and are
        attributed to such a branch.

        Raises:
            NotFound: thread or branch.
            InvalidInput: the branch is the thread's default branch.
            Conflict: checkpoints only this branch reaches include milestones
                and ``force`` is false (nothing changed).
        """

    @abc.abstractmethod
    def set_default_branch(self, thread_id: str, name: str) -> ThreadRow:
        """Make an existing branch the thread's default. Raises NotFound."""

    # ------------------------------------------------------------ sessions

    @abc.abstractmethod
    def create_session(
        self, session_id: str, *, created_at: int, metadata: bytes, owner: str | None, policy: bytes | None
    ) -> SessionRow:
        """Raises AlreadyExists."""

    @abc.abstractmethod
    def get_session(self, session_id: str) -> SessionRow:
        """Raises NotFound."""

    @abc.abstractmethod
    def list_sessions(
        self, *, after: str | None = None, limit: int = 100, status: str | None = None
    ) -> list[SessionRow]:
        """Sessions ordered by id ascending, strictly after ``after``."""

    @abc.abstractmethod
    def update_session(
        self,
        session_id: str,
        *,
        metadata: bytes | None = None,
        status: str | None = None,
        policy: bytes | Any | None = UNSET,
    ) -> SessionRow:
        """Change a session's metadata, status or policy. Raises NotFound."""

    @abc.abstractmethod
    def delete_session(self, session_id: str) -> GcReport:
        """Delete a session with all its threads and sync points, in one transaction.
        Raises NotFound."""

    @abc.abstractmethod
    def set_thread_session(self, thread_id: str, session_id: str | None) -> ThreadRow:
        """Move a thread into a session (or out of any, with None).

        Raises NotFound (thread or session).
        """

    @abc.abstractmethod
    def set_thread_policy(self, thread_id: str, policy: bytes | None) -> ThreadRow:
        """Set or clear a thread's own policy fields. Raises NotFound."""

    # ------------------------------------------------------------ sync points

    @abc.abstractmethod
    def list_sync_points(self, session_id: str) -> list[SyncPointRow]:
        """A session's sync points, oldest first. Raises NotFound (session)."""

    @abc.abstractmethod
    def get_sync_point(self, session_id: str, label: str) -> SyncPointRow:
        """Raises NotFound."""

    @abc.abstractmethod
    def delete_sync_point(self, session_id: str, label: str) -> None:
        """Raises NotFound."""

    # ------------------------------------------------------------ pending writes

    @abc.abstractmethod
    def put_writes(
        self, thread_id: str, checkpoint_id: str, writes: Sequence[PendingWrite], *, upsert: bool = False
    ) -> None:
        """Store intermediate writes against a checkpoint, atomically.

        A write with the same (task id, index) as a stored one replaces it when
        ``upsert``, and is ignored otherwise. Raises NotFound (thread or checkpoint).
        Deleting a checkpoint deletes its writes; copying a thread copies them.
        """

    @abc.abstractmethod
    def get_writes(self, thread_id: str, checkpoint_ids: Sequence[str]) -> dict[str, list[PendingWrite]]:
        """Pending writes per checkpoint, ordered by (task id, index). Raises NotFound (thread)."""

    # ------------------------------------------------------------ participants

    @abc.abstractmethod
    def set_participant(self, thread_id: str, principal: str, role: str | None) -> None:
        """Give ``principal`` a role on the thread (None removes it). Raises NotFound (thread)."""

    @abc.abstractmethod
    def participants(self, thread_id: str) -> dict[str, str]:
        """Principal -> role of a thread. Raises NotFound (thread)."""

    # ------------------------------------------------------------ copies

    @abc.abstractmethod
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
        """Copy a whole thread (branches, history, milestones, participants) atomically.

        Values are shared, not duplicated: the copy references the same blobs
        and builds its lists on the source's. ``id_map`` renames checkpoints
        (every source id must be mapped); None keeps the ids.

        Raises NotFound (source), AlreadyExists (target).
        """

    @abc.abstractmethod
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
        """Store a whole thread read from a backup archive, in one transaction.

        ``lists`` come first and create (or extend, in chunks) lists whose ids the
        caller chose; ``checkpoints`` reference those lists and the ``blobs``.
        The iterables are consumed inside the transaction, so the caller can
        stream them from a file. Raises AlreadyExists (thread).
        """

    # ------------------------------------------------------------ checkpoints

    def append_checkpoint(
        self, write: CheckpointWrite, *, expected_head: str | Any | None = UNSET
    ) -> CheckpointRow:
        """One write of :meth:`append_checkpoints`."""
        return self.append_checkpoints([(write, expected_head)])[0]

    @abc.abstractmethod
    def append_checkpoints(
        self,
        writes: Sequence[tuple[CheckpointWrite, str | Any | None]],
        *,
        sync_point: SyncPointRow | None = None,
    ) -> list[CheckpointRow]:
        """Store checkpoints and advance their branch heads, all in one transaction.

        Each write comes with its expected head (``UNSET`` for none). Either
        every write is stored or none is. With ``sync_point``, a sync point
        over the stored checkpoints is recorded in the same transaction (its
        ``members`` are filled in by the backend; ``AlreadyExists`` when the
        label is taken in the session).

        For each write:

        The new checkpoint's parent is the branch head read inside the
        transaction (or ``write.parent_id`` when ``write.create_branch``).

        Args:
            write: the checkpoint, its new blobs and list items.
            expected_head: when given (``None`` meaning "the branch is empty or
                does not exist yet"), the branch head must equal it.

        Raises:
            NotFound: the thread does not exist; or the branch does not exist
                and ``create_branch`` is false; or a referenced blob or list
                that this write does not carry is missing (the core retries).
            Conflict: ``expected_head`` differs from the head (nothing stored),
                or ``create_branch`` names an existing branch.
            AlreadyExists: the id exists, or the milestone name is taken.
        Returns:
            The stored rows, in order (manifests reflect any list fork the backend made).
        """

    @abc.abstractmethod
    def get_checkpoint(self, checkpoint_id: str, thread_id: str | None = None) -> CheckpointRow:
        """A checkpoint by id, within one thread when ``thread_id`` is given.

        Checkpoint ids are unique within a thread; ids threadline generates are
        unique store-wide, but a thread copied with its ids kept shares them.

        Raises:
            NotFound: no such checkpoint (or thread).
            InvalidInput: ``thread_id`` is None and several threads hold the id.
        """

    @abc.abstractmethod
    def find_checkpoints(self, prefix: str, limit: int = 10) -> list[str]:
        """Ids starting with ``prefix`` (canonical lowercase form), at most ``limit``."""

    @abc.abstractmethod
    def scan_checkpoints(self, thread_id: str, query: RowQuery) -> list[CheckpointRow]:
        """A thread's checkpoints matching ``query``, newest first, at most
        ``query.limit``. Raises NotFound (thread)."""

    @abc.abstractmethod
    def walk_lineage(self, thread_id: str, start_id: str, *, limit: int) -> list[CheckpointRow]:
        """``start_id`` and its first-parent ancestors, newest first, at most ``limit``
        rows, in one round trip. Raises NotFound (thread or start)."""

    @staticmethod
    def _one_checkpoint(
        checkpoint_id: str, thread_id: str | None, rows: Sequence[CheckpointRow]
    ) -> CheckpointRow:
        """The single row a lookup by id found, or the right error (shared by backends)."""
        if not rows:
            where = f" in thread {thread_id!r}" if thread_id is not None else ""
            raise NotFound(f"checkpoint {checkpoint_id} does not exist{where}")
        if len(rows) > 1:
            threads = ", ".join(repr(r.thread_id) for r in rows[:5])
            raise InvalidInput(
                f"checkpoint {checkpoint_id} exists in several threads ({threads}); name the thread"
            )
        return rows[0]

    @abc.abstractmethod
    def get_blobs(self, hashes: Iterable[bytes]) -> dict[bytes, bytes]:
        """Stored bytes of the given blobs; missing hashes are absent from the result."""

    @abc.abstractmethod
    def get_list_items(self, list_id: int, length: int) -> ItemRows:
        """The first ``length`` items of a list, following its base chain.

        Raises:
            IntegrityError: the list or some of its items are missing.
        """

    @abc.abstractmethod
    def update_checkpoints(
        self, thread_id: str, checkpoint_ids: Sequence[str], update: LifecycleUpdate
    ) -> int:
        """Apply a lifecycle update to checkpoints of one thread; unknown ids are
        skipped. Returns how many changed. Raises NotFound (thread)."""

    @abc.abstractmethod
    def delete_checkpoints(self, thread_id: str, checkpoint_ids: Sequence[str]) -> GcReport:
        """Delete checkpoints of one thread and collect what they alone referenced.

        Survivors whose parent was deleted are re-linked to their nearest
        surviving ancestor; a branch whose head was deleted moves to it too.
        Unknown ids are ignored. Raises NotFound (thread).
        """

    @abc.abstractmethod
    def due_for_expiry(self, now: int, limit: int = 1000) -> list[tuple[str, str]]:
        """(thread id, checkpoint id) of active checkpoints whose ``expires_at`` is at
        or before ``now``, soonest first."""

    @abc.abstractmethod
    def stats(
        self, thread_ids: Sequence[str] | None = None, *, largest: int = 0, per_day: bool = False
    ) -> StatsRow:
        """Aggregates over the given threads (all threads when None), by queries; with
        ``largest`` the top threads by stored bytes, with ``per_day`` counts per UTC day.
        Raises NotFound (a thread)."""

    @abc.abstractmethod
    def apply_ttls(self, thread_id: str, ttls: Mapping[CheckpointKind, int | None], *, now: int) -> int:
        """Set the expiry of a thread's checkpoints of the given kinds to ``created_at +
        ttl`` (microseconds; None clears it), and make expired checkpoints whose new
        expiry is later than ``now`` (or cleared) active again, in one transaction.
        Returns how many checkpoints changed. Raises NotFound (thread)."""

    @abc.abstractmethod
    def put_sync_point(self, row: SyncPointRow) -> None:
        """Record a sync point over existing checkpoints (used when restoring backups).

        Raises AlreadyExists (label taken), NotFound (session or a member checkpoint).
        """

    @abc.abstractmethod
    def rewrite_frames(
        self, transform: Callable[[bytes], bytes | None], *, after: str | None = None, limit: int = 500
    ) -> tuple[int, str | None]:
        """Pass a batch of stored frames through ``transform`` in one transaction.

        Frames are every framed value the store holds: blobs, list items (their
        CRC is recomputed), checkpoint headers and inline manifest values, thread
        and session metadata, pending writes. ``transform`` returns a replacement
        frame or None to keep it. Used for key rotation, online and resumable:
        returns (frames replaced, the cursor to pass as ``after`` next; None when
        every frame has been seen).
        """

    @abc.abstractmethod
    def collect_garbage(self) -> GcReport:
        """Remove every blob, list and list item no checkpoint references, store-wide."""

    @abc.abstractmethod
    def storage_bytes(self) -> int:
        """Bytes the store occupies, journal flushed first (file size for SQLite,
        table sizes for PostgreSQL, an estimate of held bytes for memory)."""

    def snapshot(self) -> contextlib.AbstractContextManager[None]:
        """Run the reads made inside the ``with`` block, on this thread, on one consistent
        snapshot of the store (one read transaction for several calls) where the backend
        can; otherwise each read is its own snapshot, as outside the block.

        No write may be made inside the block on the same thread (a backend with real
        snapshots raises StorageError). Blocks nest.
        """
        return contextlib.nullcontext()

    @abc.abstractmethod
    def reclaim_space(self) -> int:
        """Give space freed by deletes back to the operating system; returns the
        bytes given back (0 where the backend frees memory as it goes)."""


# ---------------------------------------------------------------- shared helpers

_TAG_INLINE, _TAG_BLOB, _TAG_LIST = 0, 1, 2


def encode_manifest(manifest: Mapping[str, Ref]) -> bytes:
    """The compact stored form of a manifest (msgpack: key -> [tag, ...])."""
    out: dict[str, list[Any]] = {}
    for key, ref in manifest.items():
        if isinstance(ref, InlineRef):
            out[key] = [_TAG_INLINE, ref.data]
        elif isinstance(ref, BlobRef):
            out[key] = [_TAG_BLOB, ref.hash]
        else:
            out[key] = [_TAG_LIST, ref.list_id, ref.length]
    return ormsgpack.packb(out)


def decode_manifest(raw: bytes, checkpoint_id: str = "?") -> Manifest:
    """Inverse of :func:`encode_manifest`. Raises IntegrityError on malformed bytes."""
    try:
        data = ormsgpack.unpackb(raw)
        manifest: Manifest = {}
        for key, entry in data.items():
            tag = entry[0]
            if tag == _TAG_INLINE:
                manifest[key] = InlineRef(bytes(entry[1]))
            elif tag == _TAG_BLOB:
                manifest[key] = BlobRef(bytes(entry[1]))
            elif tag == _TAG_LIST:
                manifest[key] = ListRef(int(entry[1]), int(entry[2]))
            else:
                raise ValueError(f"unknown tag {tag}")
        return manifest
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, ormsgpack.MsgpackDecodeError) as exc:
        raise IntegrityError(f"checkpoint {checkpoint_id}: manifest is corrupt ({exc})") from None


def manifest_refs(manifest: Mapping[str, Ref]) -> tuple[set[bytes], dict[int, int]]:
    """Blob hashes and, per list id, the longest prefix the manifest references."""
    blobs: set[bytes] = set()
    lists: dict[int, int] = {}
    for ref in manifest.values():
        if isinstance(ref, BlobRef):
            blobs.add(ref.hash)
        elif isinstance(ref, ListRef):
            lists[ref.list_id] = max(lists.get(ref.list_id, 0), ref.length)
    return blobs, lists


def rewrite_list_ids(manifest: Manifest, renames: Mapping[int, int]) -> Manifest:
    """The manifest with list ids replaced after a backend forked a list."""
    if not renames:
        return manifest
    return {
        key: ListRef(renames[ref.list_id], ref.length)
        if isinstance(ref, ListRef) and ref.list_id in renames
        else ref
        for key, ref in manifest.items()
    }


def relink(
    parents: Mapping[str, tuple[str | None, str | None]], deleted: set[str]
) -> dict[str, tuple[str | None, str | None]]:
    """New (parent, merge_parent) of survivors whose parents are being deleted.

    ``parents`` maps every checkpoint id of a thread to its two parents. A
    survivor's parent becomes its nearest surviving first-parent ancestor.
    """

    changes: dict[str, tuple[str | None, str | None]] = {}
    for cid, (parent, merge_parent) in parents.items():
        if cid in deleted:
            continue
        new_parent = nearest_survivor(parents, parent, deleted)
        new_merge = nearest_survivor(parents, merge_parent, deleted)
        if (new_parent, new_merge) != (parent, merge_parent):
            changes[cid] = (new_parent, new_merge)
    return changes


def nearest_survivor(
    parents: Mapping[str, tuple[str | None, str | None]], start: str | None, deleted: set[str]
) -> str | None:
    """The first ancestor-or-self of ``start`` that is not deleted."""
    steps = 0
    while start is not None and start in deleted:
        start = parents.get(start, (None, None))[0]
        steps += 1
        if steps > len(parents):
            raise IntegrityError("checkpoint lineage contains a cycle")
    return start


@dataclass(frozen=True, slots=True)
class ListInfo:
    """A stored list: its base and how many items it holds (base prefix included)."""

    list_id: int
    base_id: int | None
    base_len: int
    length: int


def plan_list_gc(lists: Mapping[int, ListInfo], needs: Mapping[int, int]) -> tuple[list[int], dict[int, int]]:
    """Decide which of a thread's lists to drop and which to trim.

    Args:
        lists: the lists the thread owns.
        needs: per list id, the longest prefix something references (the
            thread's manifests and lists of other threads built on these).
    Returns:
        (lists to delete, {list id: new length} for lists to trim and seal).
    """
    need = dict(needs)
    changed = True
    while changed:
        changed = False
        for list_id, length in list(need.items()):
            info = lists.get(list_id)
            if info is None or info.base_id is None or length <= 0:
                continue
            wanted = min(length, info.base_len)
            if need.get(info.base_id, 0) < wanted:
                need[info.base_id] = wanted
                changed = True
    drop = [lid for lid in lists if need.get(lid, 0) <= 0]
    trim = {lid: need[lid] for lid, info in lists.items() if 0 < need.get(lid, 0) < info.length}
    return drop, trim


def reachable(parents: Mapping[str, tuple[str | None, str | None]], starts: Iterable[str | None]) -> set[str]:
    """Every checkpoint reachable from ``starts`` through both parent links."""
    seen: set[str] = set()
    stack = [s for s in starts if s is not None]
    while stack:
        cid = stack.pop()
        if cid in seen or cid not in parents:
            continue
        seen.add(cid)
        stack.extend(p for p in parents[cid] if p is not None)
    return seen


def branch_deletion(
    parents: Mapping[str, tuple[str | None, str | None]],
    branch_of: Mapping[str, str],
    heads: Mapping[str, str | None],
    name: str,
) -> tuple[set[str], dict[str, str]]:
    """Plan a branch deletion: (checkpoints to delete, {survivor: new branch}).

    A checkpoint goes when no other branch's head reaches it; a survivor that
    was written on the deleted branch is attributed to the first other branch
    (by name) whose head reaches it. Survivors whose parents go must be re-linked
    with :func:`relink` by the caller.
    """
    others = {b: h for b, h in heads.items() if b != name}
    keep_by_branch = {b: reachable(parents, [h]) for b, h in sorted(others.items())}
    keep = set().union(*keep_by_branch.values()) if keep_by_branch else set()
    mine = reachable(parents, [heads.get(name)]) | {c for c, b in branch_of.items() if b == name}
    doomed = mine - keep
    moved: dict[str, str] = {}
    for cid in mine & keep:
        if branch_of.get(cid) == name:
            moved[cid] = next(b for b, reach in keep_by_branch.items() if cid in reach)
    return doomed, moved
