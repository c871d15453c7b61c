"""Memory backend: the storage contract in process memory.

A product backend (tests, short-lived runs, caches) and the test fake for the
upper layers. One lock makes every method atomic; a write validates
everything before it changes anything, so a failed write leaves no trace.
"""

from __future__ import annotations

import bisect
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from threadline.errors import (
    AlreadyExists,
    Conflict,
    IntegrityError,
    InvalidInput,
    NotFound,
    StaleReference,
    StorageError,
)
from threadline.model import DEFAULT_BRANCH, CheckpointKind, CheckpointStatus, new_checkpoint_id, random_bits
from threadline.storage.base import (
    MAX_LIST_DEPTH,
    SCHEMA_VERSION,
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
    encode_manifest,
    manifest_refs,
    nearest_survivor,
    plan_list_gc,
    relink,
    rewrite_list_ids,
)


@dataclass
class _List:
    owner: str
    base_id: int | None
    base_len: int
    depth: int
    items: list[tuple[int, bytes]] = field(default_factory=list)  # own items from position base_len
    sealed: bool = False

    @property
    def length(self) -> int:
        return self.base_len + len(self.items)


@dataclass
class _Thread:
    row: ThreadRow
    ids: list[str] = field(default_factory=list)  # checkpoint ids, ascending
    branches: dict[str, BranchRow] = field(default_factory=dict)
    blobs: set[bytes] = field(default_factory=set)
    participants: dict[str, str] = field(default_factory=dict)
    writes: dict[str, dict[tuple[str, int], PendingWrite]] = field(default_factory=dict)


class MemoryRepository(CheckpointRepository):
    """The storage contract in memory (lost when the process ends)."""

    def __init__(self) -> None:
        self.url = "memory://"
        self._lock = threading.RLock()
        self._threads: dict[str, _Thread] = {}
        self._checkpoints: dict[tuple[str, str], CheckpointRow] = {}
        self._threads_of: dict[str, set[str]] = {}  # checkpoint id -> threads holding it
        self._blobs: dict[bytes, bytes] = {}
        self._lists: dict[int, _List] = {}
        self._sessions: dict[str, SessionRow] = {}
        self._sync_points: dict[str, dict[str, SyncPointRow]] = {}
        self._closed = False

    def close(self) -> None:
        self._closed = True

    def schema_version(self) -> int:
        return SCHEMA_VERSION

    def _thread(self, thread_id: str) -> _Thread:
        if self._closed:
            raise StorageError("store memory:// is closed")
        thread = self._threads.get(thread_id)
        if thread is None:
            raise NotFound(f"thread {thread_id!r} does not exist")
        return thread

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
        with self._lock:
            if thread_id in self._threads:
                raise AlreadyExists(f"thread {thread_id!r} already exists")
            row = ThreadRow(thread_id, created_at, session_id, metadata, DEFAULT_BRANCH, origin)
            thread = _Thread(row)
            thread.branches[DEFAULT_BRANCH] = BranchRow(thread_id, DEFAULT_BRANCH, None, created_at, None)
            self._threads[thread_id] = thread
            return row

    def get_thread(self, thread_id: str) -> ThreadRow:
        with self._lock:
            return self._thread(thread_id).row

    def list_threads(
        self, *, session_id: str | None = None, after: str | None = None, limit: int = 100
    ) -> list[ThreadRow]:
        with self._lock:
            rows = sorted(
                (
                    t.row
                    for t in self._threads.values()
                    if (session_id is None or t.row.session_id == session_id) and t.row.id > (after or "")
                ),
                key=lambda r: r.id,
            )
            return rows[:limit]

    def update_thread(self, thread_id: str, *, metadata: bytes) -> ThreadRow:
        with self._lock:
            thread = self._thread(thread_id)
            thread.row = replace(thread.row, metadata=metadata)
            return thread.row

    def delete_thread(self, thread_id: str) -> GcReport:
        with self._lock:
            return self._drop_thread(self._thread(thread_id))

    def _drop_thread(self, thread: _Thread) -> GcReport:
        for cid in thread.ids:
            self._forget(thread.row.id, cid)
        thread.ids.clear()
        del self._threads[thread.row.id]
        return self._gc_thread(thread)

    # ------------------------------------------------------------ branches

    def get_branch(self, thread_id: str, name: str) -> BranchRow:
        with self._lock:
            branch = self._thread(thread_id).branches.get(name)
            if branch is None:
                raise NotFound(f"branch {name!r} does not exist in thread {thread_id!r}")
            return branch

    def list_branches(self, thread_id: str) -> list[BranchRow]:
        with self._lock:
            return sorted(self._thread(thread_id).branches.values(), key=lambda b: b.name)

    def create_branch(self, thread_id: str, name: str, *, head: str | None, created_at: int) -> BranchRow:
        with self._lock:
            thread = self._thread(thread_id)
            if name in thread.branches:
                raise AlreadyExists(f"branch {name!r} already exists in thread {thread_id!r}")
            if head is not None and (thread_id, head) not in self._checkpoints:
                raise NotFound(f"checkpoint {head} does not exist in thread {thread_id!r}")
            row = BranchRow(thread_id, name, head, created_at, head)
            thread.branches[name] = row
            return row

    def rename_branch(self, thread_id: str, old: str, new: str) -> BranchRow:
        with self._lock:
            thread = self._thread(thread_id)
            if new in thread.branches:
                raise AlreadyExists(f"branch {new!r} already exists in thread {thread_id!r}")
            if old not in thread.branches:
                raise NotFound(f"branch {old!r} does not exist in thread {thread_id!r}")
            row = replace(thread.branches.pop(old), name=new)
            thread.branches[new] = row
            for cid in thread.ids:
                if self._checkpoints[(thread_id, cid)].branch == old:
                    self._checkpoints[(thread_id, cid)] = replace(
                        self._checkpoints[(thread_id, cid)], branch=new
                    )
            if thread.row.default_branch == old:
                thread.row = replace(thread.row, default_branch=new)
            return row

    def delete_branch(self, thread_id: str, name: str, *, force: bool = False) -> GcReport:
        with self._lock:
            thread = self._thread(thread_id)
            if name == thread.row.default_branch:
                raise InvalidInput(
                    f"branch {name!r} is the default branch of thread {thread_id!r}; "
                    "make another branch the default first"
                )
            if name not in thread.branches:
                raise NotFound(f"branch {name!r} does not exist in thread {thread_id!r}")
            rows = {cid: self._checkpoints[(thread_id, cid)] for cid in thread.ids}
            parents = {cid: (r.parent_id, r.merge_parent_id) for cid, r in rows.items()}
            heads = {b.name: b.head for b in thread.branches.values()}
            doomed, moved = branch_deletion(parents, {c: r.branch for c, r in rows.items()}, heads, name)
            if not force and any(rows[c].milestone is not None for c in doomed):
                raise Conflict(
                    f"branch {name!r} holds milestones no other branch reaches; pass force to delete them too"
                )
            for cid, target in moved.items():
                self._checkpoints[(thread_id, cid)] = replace(rows[cid], branch=target)
            for cid, (parent, merge) in relink(parents, doomed).items():
                self._checkpoints[(thread_id, cid)] = replace(
                    self._checkpoints[(thread_id, cid)], parent_id=parent, merge_parent_id=merge
                )
            for cid in doomed:
                self._forget(thread_id, cid)
                thread.writes.pop(cid, None)
            thread.ids = [c for c in thread.ids if c not in doomed]
            del thread.branches[name]
            return self._gc_thread(thread)

    def set_default_branch(self, thread_id: str, name: str) -> ThreadRow:
        with self._lock:
            thread = self._thread(thread_id)
            if name not in thread.branches:
                raise NotFound(f"branch {name!r} does not exist in thread {thread_id!r}")
            thread.row = replace(thread.row, default_branch=name)
            return thread.row

    # ------------------------------------------------------------ sessions

    def _session(self, session_id: str) -> SessionRow:
        row = self._sessions.get(session_id)
        if row is None:
            raise NotFound(f"session {session_id!r} does not exist")
        return row

    def create_session(
        self, session_id: str, *, created_at: int, metadata: bytes, owner: str | None, policy: bytes | None
    ) -> SessionRow:
        with self._lock:
            if session_id in self._sessions:
                raise AlreadyExists(f"session {session_id!r} already exists")
            row = SessionRow(session_id, created_at, metadata, owner, "active", policy)
            self._sessions[session_id] = row
            return row

    def get_session(self, session_id: str) -> SessionRow:
        with self._lock:
            return self._session(session_id)

    def list_sessions(
        self, *, after: str | None = None, limit: int = 100, status: str | None = None
    ) -> list[SessionRow]:
        with self._lock:
            rows = sorted(
                (
                    r
                    for r in self._sessions.values()
                    if r.id > (after or "") and (status is None or r.status == status)
                ),
                key=lambda r: r.id,
            )
            return rows[:limit]

    def update_session(
        self,
        session_id: str,
        *,
        metadata: bytes | None = None,
        status: str | None = None,
        policy: bytes | Any | None = UNSET,
    ) -> SessionRow:
        with self._lock:
            row = self._session(session_id)
            if metadata is not None:
                row = replace(row, metadata=metadata)
            if status is not None:
                row = replace(row, status=status)
            if policy is not UNSET:
                row = replace(row, policy=policy)
            self._sessions[session_id] = row
            return row

    def delete_session(self, session_id: str) -> GcReport:
        with self._lock:
            self._session(session_id)
            total = GcReport()
            for thread in [t for t in self._threads.values() if t.row.session_id == session_id]:
                total = total + self._drop_thread(thread)
            self._sync_points.pop(session_id, None)
            del self._sessions[session_id]
            return total

    def set_thread_session(self, thread_id: str, session_id: str | None) -> ThreadRow:
        with self._lock:
            thread = self._thread(thread_id)
            if session_id is not None:
                self._session(session_id)
            thread.row = replace(thread.row, session_id=session_id)
            return thread.row

    def set_thread_policy(self, thread_id: str, policy: bytes | None) -> ThreadRow:
        with self._lock:
            thread = self._thread(thread_id)
            thread.row = replace(thread.row, policy=policy)
            return thread.row

    # ------------------------------------------------------------ sync points

    def list_sync_points(self, session_id: str) -> list[SyncPointRow]:
        with self._lock:
            self._session(session_id)
            points = self._sync_points.get(session_id, {}).values()
            return sorted(points, key=lambda p: (p.created_at, p.label))

    def get_sync_point(self, session_id: str, label: str) -> SyncPointRow:
        with self._lock:
            point = self._sync_points.get(session_id, {}).get(label)
            if point is None:
                raise NotFound(f"sync point {label!r} does not exist in session {session_id!r}")
            return point

    def delete_sync_point(self, session_id: str, label: str) -> None:
        with self._lock:
            if self._sync_points.get(session_id, {}).pop(label, None) is None:
                raise NotFound(f"sync point {label!r} does not exist in session {session_id!r}")

    # ------------------------------------------------------------ pending writes

    def put_writes(
        self, thread_id: str, checkpoint_id: str, writes: Sequence[PendingWrite], *, upsert: bool = False
    ) -> None:
        with self._lock:
            thread = self._thread(thread_id)
            if (thread_id, checkpoint_id) not in self._checkpoints:
                raise NotFound(f"checkpoint {checkpoint_id} does not exist in thread {thread_id!r}")
            stored = thread.writes.setdefault(checkpoint_id, {})
            for w in writes:
                if upsert or (w.task_id, w.idx) not in stored:
                    stored[(w.task_id, w.idx)] = w

    def get_writes(self, thread_id: str, checkpoint_ids: Sequence[str]) -> dict[str, list[PendingWrite]]:
        with self._lock:
            thread = self._thread(thread_id)
            return {cid: [w for _, w in sorted(thread.writes.get(cid, {}).items())] for cid in checkpoint_ids}

    # ------------------------------------------------------------ participants

    def set_participant(self, thread_id: str, principal: str, role: str | None) -> None:
        with self._lock:
            thread = self._thread(thread_id)
            if role is None:
                thread.participants.pop(principal, None)
            else:
                thread.participants[principal] = role

    def participants(self, thread_id: str) -> dict[str, str]:
        with self._lock:
            return dict(sorted(self._thread(thread_id).participants.items()))

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
        with self._lock:
            if thread.id in self._threads:
                raise AlreadyExists(f"thread {thread.id!r} already exists")
            new_lists: dict[int, _List] = {}
            for la in lists:
                items = list(zip(la.crcs, la.items, strict=True))
                if la.list_id in new_lists:
                    target = new_lists[la.list_id]
                    if target.length != la.start:
                        raise IntegrityError(f"list {la.list_id} is imported out of order")
                    target.items.extend(items)
                    continue
                if la.list_id in self._lists:
                    raise AlreadyExists(f"list {la.list_id} already exists")
                if la.base is not None:
                    base = new_lists.get(la.base[0]) or self._lists.get(la.base[0])
                    if base is None or base.length < la.base[1]:
                        raise StaleReference(f"list {la.base[0]} with {la.base[1]} items does not exist")
                    new_lists[la.list_id] = _List(thread.id, la.base[0], la.base[1], base.depth + 1, items)
                else:
                    new_lists[la.list_id] = _List(thread.id, None, 0, 0, items)
            new_blobs = {b.hash: b.data for b in blobs}
            staged = _Thread(thread)
            staged.branches = {b.name: replace(b, thread_id=thread.id) for b in branches}
            staged.participants = dict(participants)
            rows = [replace(r, thread_id=thread.id) for r in checkpoints]
            for r in rows:
                staged.blobs |= manifest_refs(r.manifest)[0]
            self._lists.update(new_lists)
            for digest, data in new_blobs.items():
                self._blobs.setdefault(digest, data)
            for r in rows:
                self._checkpoints[(thread.id, r.id)] = r
                self._threads_of.setdefault(r.id, set()).add(thread.id)
            staged.ids = sorted(r.id for r in rows)
            self._threads[thread.id] = staged

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
        with self._lock:
            src = self._thread(source_id)
            if target_id in self._threads:
                raise AlreadyExists(f"thread {target_id!r} already exists")

            def mapped(cid: str | None) -> str | None:
                return id_map[cid] if cid is not None and id_map is not None else cid

            rows = [self._checkpoints[(source_id, cid)] for cid in src.ids]
            needs: dict[int, int] = {}
            for row in rows:
                for lid, n in manifest_refs(row.manifest)[1].items():
                    needs[lid] = max(needs.get(lid, 0), n)
            renames: dict[int, int] = {}
            for lid, n in needs.items():
                renames[lid] = self._new_list_id(set(renames.values()))
                self._lists[renames[lid]] = self._derived(target_id, lid, n)
            dst = _Thread(
                ThreadRow(
                    target_id,
                    created_at,
                    src.row.session_id,
                    metadata,
                    src.row.default_branch,
                    origin,
                    src.row.policy,
                )
            )
            dst.branches = {
                name: replace(b, thread_id=target_id, head=mapped(b.head), base=mapped(b.base))
                for name, b in src.branches.items()
            }
            dst.blobs = set(src.blobs)
            dst.participants = dict(src.participants)
            dst.writes = {mapped(cid) or cid: dict(ws) for cid, ws in src.writes.items()}
            for row in rows:
                new_id = mapped(row.id)
                assert new_id is not None
                self._checkpoints[(target_id, new_id)] = replace(
                    row,
                    id=new_id,
                    thread_id=target_id,
                    parent_id=mapped(row.parent_id),
                    merge_parent_id=mapped(row.merge_parent_id),
                    stored_size=0,
                    manifest=rewrite_list_ids(row.manifest, renames),
                )
                self._threads_of.setdefault(new_id, set()).add(target_id)
                dst.ids.append(new_id)
            dst.ids.sort()
            self._threads[target_id] = dst
            return dst.row

    # ------------------------------------------------------------ lists

    def _list_length(self, list_id: int) -> int | None:
        lst = self._lists.get(list_id)
        return lst.length if lst else None

    def _new_list_id(self, taken: set[int]) -> int:
        while True:
            candidate = random_bits(62) + 1
            if candidate not in self._lists and candidate not in taken:
                return candidate

    def _segments(self, list_id: int, length: int) -> list[tuple[_List, int, int]]:
        out: list[tuple[_List, int, int]] = []
        current: int | None = list_id
        end = length
        hops = 0
        while current is not None and end > 0:
            lst = self._lists.get(current)
            if lst is None:
                raise IntegrityError(f"list {current} is missing from the store")
            lo = lst.base_len if lst.base_id is not None else 0
            if end > lo:
                out.append((lst, lo, end))
            end = min(end, lo)
            current = lst.base_id
            hops += 1
            if hops > MAX_LIST_DEPTH + 2:
                raise IntegrityError(f"list {list_id} has a base chain deeper than {MAX_LIST_DEPTH}")
        out.reverse()
        return out

    def _derived(self, owner: str, base_id: int, base_len: int) -> _List:
        base = self._lists.get(base_id)
        if base is None or base.length < base_len:
            raise StaleReference(f"list {base_id} with {base_len} items does not exist")
        if base.depth + 1 < MAX_LIST_DEPTH:
            return _List(owner, base_id, base_len, base.depth + 1)
        flat = _List(owner, None, 0, 0)
        for lst, lo, hi in self._segments(base_id, base_len):
            flat.items.extend(lst.items[lo - lst.base_len : hi - lst.base_len])
        return flat

    # ------------------------------------------------------------ checkpoints

    def append_checkpoints(
        self,
        writes: Sequence[tuple[CheckpointWrite, str | Any | None]],
        *,
        sync_point: SyncPointRow | None = None,
    ) -> list[CheckpointRow]:
        with self._lock:
            if sync_point is not None:
                self._session(sync_point.session_id)
                if sync_point.label in self._sync_points.get(sync_point.session_id, {}):
                    raise AlreadyExists(
                        f"sync point {sync_point.label!r} already exists in session {sync_point.session_id!r}"
                    )
            rows: list[CheckpointRow] = []
            undos: list[Callable[[], None]] = []
            try:
                for write, expected in writes:
                    row, undo = self._append_one(write, expected)
                    rows.append(row)
                    undos.append(undo)
            except BaseException:
                for undo in reversed(undos):
                    undo()
                raise
            if sync_point is not None:
                members = tuple((r.thread_id, r.id) for r in rows)
                self._sync_points.setdefault(sync_point.session_id, {})[sync_point.label] = replace(
                    sync_point, members=members
                )
            return rows

    def _append_one(
        self, write: CheckpointWrite, expected_head: str | Any | None
    ) -> tuple[CheckpointRow, Callable[[], None]]:
        thread = self._thread(write.thread_id)
        branch = thread.branches.get(write.branch)
        if write.create_branch:
            if branch is not None:
                raise Conflict(f"branch {write.branch!r} already exists in thread {write.thread_id!r}")
            parent = write.parent_id
            if parent is not None and (write.thread_id, parent) not in self._checkpoints:
                raise NotFound(f"checkpoint {parent} does not exist in thread {write.thread_id!r}")
            head = None
        else:
            if branch is None:
                raise NotFound(f"branch {write.branch!r} does not exist in thread {write.thread_id!r}")
            head = parent = branch.head
        if expected_head is not UNSET and expected_head != head:
            raise Conflict(
                f"branch {write.branch!r} of thread {write.thread_id!r} moved: expected head "
                f"{expected_head}, found {head}; nothing was stored",
                expected=expected_head,
                actual=head,
            )
        new_id = write.id
        if write.generated_id and parent is not None and new_id <= parent:
            new_id = new_checkpoint_id(after=parent)
        if (write.thread_id, new_id) in self._checkpoints:
            raise AlreadyExists(f"checkpoint {new_id} already exists in thread {write.thread_id!r}")
        if (
            write.restored_from is not None
            and (write.thread_id, write.restored_from) not in self._checkpoints
        ):
            raise NotFound(f"checkpoint {write.restored_from} does not exist in thread {write.thread_id!r}")
        if write.milestone is not None and any(
            self._checkpoints[(write.thread_id, c)].milestone == write.milestone for c in thread.ids
        ):
            raise AlreadyExists(f"milestone {write.milestone!r} already exists in thread {write.thread_id!r}")

        # Plan every change first; apply only when nothing can fail any more.
        new_lists: dict[int, _List] = {}
        appends: list[tuple[_List, list[tuple[int, bytes]]]] = []
        renames: dict[int, int] = {}
        stored = 0
        for la in write.lists:
            items = list(zip(la.crcs, la.items, strict=True))
            stored += sum(len(d) for d in la.items)
            if la.base is not None:
                lst = self._derived(write.thread_id, *la.base)
                new_lists[la.list_id] = lst
                lst.items.extend(items)
                continue
            existing = self._lists.get(la.list_id)
            if existing is None:
                if la.start != 0:
                    raise StaleReference(f"list {la.list_id} does not exist")
                new_lists[la.list_id] = _List(write.thread_id, None, 0, 0, items)
                continue
            if existing.length < la.start:
                raise StaleReference(f"list {la.list_id} has {existing.length} items, fewer than {la.start}")
            if existing.sealed or existing.length != la.start or existing.owner != write.thread_id:
                fork_id = self._new_list_id(set(new_lists))
                lst = self._derived(write.thread_id, la.list_id, la.start)
                lst.items.extend(items)
                new_lists[fork_id] = lst
                renames[la.list_id] = fork_id
            else:
                appends.append((existing, items))
        carried = {la.list_id for la in write.lists}
        manifest = rewrite_list_ids(write.manifest, renames)
        for key, ref in list(manifest.items()):
            if not isinstance(ref, ListRef) or ref.list_id in carried or ref.list_id in renames.values():
                continue
            lst_ref = self._lists.get(ref.list_id)
            if lst_ref is None or lst_ref.length < ref.length:
                raise StaleReference(f"list {ref.list_id} with {ref.length} items does not exist")
            if lst_ref.owner != write.thread_id:
                derived_id = self._new_list_id(set(new_lists))
                new_lists[derived_id] = self._derived(write.thread_id, ref.list_id, ref.length)
                manifest[key] = ListRef(derived_id, ref.length)
        blob_refs, _ = manifest_refs(manifest)
        carried_blobs = {b.hash: b.data for b in write.blobs}
        for digest in blob_refs:
            if digest not in carried_blobs and digest not in self._blobs:
                raise StaleReference(f"blob {digest.hex()} does not exist")
        manifest_bytes = encode_manifest(manifest)
        for digest, data in carried_blobs.items():
            if digest not in self._blobs:
                stored += len(data)
        stored += len(manifest_bytes) + len(write.header)
        row = write.stored_row(new_id, parent, stored, manifest)
        # Apply, recording how to undo it (a later write of the same batch may fail).
        added_blobs = [d for d in carried_blobs if d not in self._blobs]
        old_thread_blobs = set(thread.blobs)
        lengths = [(lst, len(lst.items)) for lst, _ in appends]
        old_branch = thread.branches.get(write.branch)
        restored_key = (write.thread_id, write.restored_from) if write.restored_from else None
        old_restored = self._checkpoints.get(restored_key) if restored_key else None

        def undo() -> None:
            for digest in added_blobs:
                self._blobs.pop(digest, None)
            thread.blobs = old_thread_blobs
            for list_id in new_lists:
                self._lists.pop(list_id, None)
            for lst, length in lengths:
                del lst.items[length:]
            self._forget(write.thread_id, new_id)
            thread.ids.remove(new_id)
            if restored_key and old_restored:
                self._checkpoints[restored_key] = old_restored
            if old_branch is None:
                thread.branches.pop(write.branch, None)
            else:
                thread.branches[write.branch] = old_branch

        for digest, data in carried_blobs.items():
            self._blobs.setdefault(digest, data)
        thread.blobs |= blob_refs
        self._lists.update(new_lists)
        for lst, items in appends:
            lst.items.extend(items)
        self._checkpoints[(write.thread_id, new_id)] = row
        self._threads_of.setdefault(new_id, set()).add(write.thread_id)
        bisect.insort(thread.ids, new_id)
        if restored_key and old_restored:
            self._checkpoints[restored_key] = replace(
                old_restored, restore_count=old_restored.restore_count + 1
            )
        if write.create_branch:
            thread.branches[write.branch] = BranchRow(
                write.thread_id, write.branch, new_id, write.created_at, write.parent_id
            )
        else:
            assert branch is not None
            thread.branches[write.branch] = replace(branch, head=new_id)
        return row, undo

    def _forget(self, thread_id: str, checkpoint_id: str) -> None:
        del self._checkpoints[(thread_id, checkpoint_id)]
        holders = self._threads_of[checkpoint_id]
        holders.discard(thread_id)
        if not holders:
            del self._threads_of[checkpoint_id]

    def get_checkpoint(self, checkpoint_id: str, thread_id: str | None = None) -> CheckpointRow:
        with self._lock:
            if thread_id is not None:
                self._thread(thread_id)
                holders = [thread_id] if thread_id in self._threads_of.get(checkpoint_id, ()) else []
            else:
                holders = sorted(self._threads_of.get(checkpoint_id, ()))
            rows = [self._checkpoints[(t, checkpoint_id)] for t in holders]
            return self._one_checkpoint(checkpoint_id, thread_id, rows)

    def find_checkpoints(self, prefix: str, limit: int = 10) -> list[str]:
        wanted = prefix.replace("-", "").lower()
        with self._lock:
            return sorted(c for c in self._threads_of if c.replace("-", "").startswith(wanted))[:limit]

    def scan_checkpoints(self, thread_id: str, query: RowQuery) -> list[CheckpointRow]:
        with self._lock:
            thread = self._thread(thread_id)
            end = (
                bisect.bisect_left(thread.ids, query.before) if query.before is not None else len(thread.ids)
            )
            out: list[CheckpointRow] = []
            for cid in reversed(thread.ids[:end]):
                row = self._checkpoints[(thread_id, cid)]
                if (
                    (query.branch is None or row.branch == query.branch)
                    and (query.kinds is None or row.kind in query.kinds)
                    and (query.statuses is None or row.status in query.statuses)
                    and (query.created_after is None or row.created_at >= query.created_after)
                    and (query.created_before is None or row.created_at <= query.created_before)
                ):
                    out.append(row)
                    if len(out) >= query.limit:
                        break
            return out

    def walk_lineage(self, thread_id: str, start_id: str, *, limit: int) -> list[CheckpointRow]:
        with self._lock:
            self._thread(thread_id)
            out: list[CheckpointRow] = []
            current: str | None = start_id
            while current is not None and len(out) < limit:
                row = self._checkpoints.get((thread_id, current))
                if row is None:
                    if not out:
                        raise NotFound(f"checkpoint {start_id} does not exist in thread {thread_id!r}")
                    break
                out.append(row)
                current = row.parent_id
            return out

    def get_blobs(self, hashes: Iterable[bytes]) -> dict[bytes, bytes]:
        with self._lock:
            return {h: self._blobs[h] for h in set(hashes) if h in self._blobs}

    def get_list_items(self, list_id: int, length: int) -> ItemRows:
        with self._lock:
            out = ItemRows()
            for lst, lo, hi in self._segments(list_id, length):
                chunk = lst.items[lo - lst.base_len : hi - lst.base_len]
                if len(chunk) != hi - lo:
                    raise IntegrityError(f"list {list_id} is missing items in positions {lo}..{hi - 1}")
                out.crcs.extend(crc for crc, _ in chunk)
                out.data.extend(data for _, data in chunk)
            return out

    def update_checkpoints(
        self, thread_id: str, checkpoint_ids: Sequence[str], update: LifecycleUpdate
    ) -> int:
        with self._lock:
            self._thread(thread_id)
            changed = 0
            for cid in checkpoint_ids:
                row = self._checkpoints.get((thread_id, cid))
                if row is None:
                    continue
                changes: dict[str, Any] = {}
                if update.status is not None:
                    changes["status"] = update.status
                if update.expires_at is not UNSET:
                    changes["expires_at"] = update.expires_at
                if update.header is not None:
                    changes["header"] = update.header
                if update.restore_delta:
                    changes["restore_count"] = row.restore_count + update.restore_delta
                if changes:
                    self._checkpoints[(thread_id, cid)] = replace(row, **changes)
                    changed += 1
            return changed

    def delete_checkpoints(self, thread_id: str, checkpoint_ids: Sequence[str]) -> GcReport:
        with self._lock:
            thread = self._thread(thread_id)
            rows = {cid: self._checkpoints[(thread_id, cid)] for cid in thread.ids}
            parents = {cid: (row.parent_id, row.merge_parent_id) for cid, row in rows.items()}
            deleted = {cid for cid in checkpoint_ids if cid in parents}
            if not deleted:
                return GcReport()
            for cid, (parent, merge) in relink(parents, deleted).items():
                self._checkpoints[(thread_id, cid)] = replace(
                    rows[cid], parent_id=parent, merge_parent_id=merge
                )
            for name, branch in list(thread.branches.items()):
                if branch.head in deleted:
                    thread.branches[name] = replace(
                        branch, head=nearest_survivor(parents, branch.head, deleted)
                    )
            for cid in deleted:
                self._forget(thread_id, cid)
                thread.writes.pop(cid, None)
            thread.ids = [c for c in thread.ids if c not in deleted]
            return self._gc_thread(thread)

    def due_for_expiry(self, now: int, limit: int = 1000) -> list[tuple[str, str]]:
        with self._lock:
            due = sorted(
                (r.expires_at, r.thread_id, r.id)
                for r in self._checkpoints.values()
                if r.expires_at is not None and r.expires_at <= now and r.status is CheckpointStatus.ACTIVE
            )
            return [(tid, cid) for _, tid, cid in due[:limit]]

    def stats(
        self, thread_ids: Sequence[str] | None = None, *, largest: int = 0, per_day: bool = False
    ) -> StatsRow:
        with self._lock:
            threads = (
                [self._thread(t) for t in thread_ids]
                if thread_ids is not None
                else list(self._threads.values())
            )
            rows = [self._checkpoints[(t.row.id, c)] for t in threads for c in t.ids]
            by_kind: dict[str, int] = {}
            by_status: dict[str, int] = {}
            days: dict[str, int] = {}
            for r in rows:
                by_kind[r.kind.value] = by_kind.get(r.kind.value, 0) + 1
                by_status[r.status.value] = by_status.get(r.status.value, 0) + 1
                if per_day:
                    day = datetime.fromtimestamp(r.created_at // 1_000_000, tz=UTC).date().isoformat()
                    days[day] = days.get(day, 0) + 1
            sizes = []
            for t in threads if largest else ():
                mine = [self._checkpoints[(t.row.id, c)] for c in t.ids]
                if mine:
                    logical = sum(r.logical_size for r in mine)
                    sizes.append((t.row.id, len(mine), logical, sum(r.stored_size for r in mine)))
            sizes.sort(key=lambda x: (-x[3], -x[1], x[0]))
            return StatsRow(
                threads=len(threads),
                checkpoints=len(rows),
                by_kind=by_kind,
                by_status=by_status,
                logical_bytes=sum(r.logical_size for r in rows),
                stored_bytes=sum(r.stored_size for r in rows),
                oldest=min((r.created_at for r in rows), default=None),
                newest=max((r.created_at for r in rows), default=None),
                restores=sum(r.restore_count for r in rows),
                branches=sum(len(t.branches) for t in threads),
                milestones=sum(1 for r in rows if r.milestone is not None),
                largest=sizes[:largest],
                per_day=dict(sorted(days.items())),
            )

    def apply_ttls(self, thread_id: str, ttls: Mapping[CheckpointKind, int | None], *, now: int) -> int:
        with self._lock:
            thread = self._thread(thread_id)
            changed = 0
            for cid in thread.ids:
                row = self._checkpoints[(thread_id, cid)]
                new = row
                if row.kind in ttls:
                    ttl = ttls[row.kind]
                    new = replace(new, expires_at=None if ttl is None else row.created_at + ttl)
                if new.status is CheckpointStatus.EXPIRED and (
                    new.expires_at is None or new.expires_at > now
                ):
                    new = replace(new, status=CheckpointStatus.ACTIVE)
                if new != row:
                    self._checkpoints[(thread_id, cid)] = new
                    changed += 1
            return changed

    def put_sync_point(self, row: SyncPointRow) -> None:
        with self._lock:
            self._session(row.session_id)
            for thread_id, checkpoint_id in row.members:
                self._thread(thread_id)
                if (thread_id, checkpoint_id) not in self._checkpoints:
                    raise NotFound(f"checkpoint {checkpoint_id} does not exist in thread {thread_id!r}")
            points = self._sync_points.setdefault(row.session_id, {})
            if row.label in points:
                raise AlreadyExists(f"sync point {row.label!r} already exists in session {row.session_id!r}")
            points[row.label] = row

    # ------------------------------------------------------------ frames (key rotation)

    def rewrite_frames(
        self, transform: Callable[[bytes], bytes | None], *, after: str | None = None, limit: int = 500
    ) -> tuple[int, str | None]:
        with self._lock:
            slots = self._frame_slots()
            start = int(after or 0)
            changed = 0
            for _, get, put in slots[start : start + limit]:
                new = transform(get())
                if new is not None:
                    put(new)
                    changed += 1
            end = start + limit
            return changed, (str(end) if end < len(slots) else None)

    def _frame_slots(self) -> list[tuple[str, Callable[[], bytes], Callable[[bytes], None]]]:
        """Every stored frame as (sort key, read, replace), in a stable order."""
        slots: list[tuple[str, Callable[[], bytes], Callable[[bytes], None]]] = []

        def blob(h: bytes) -> None:
            slots.append((f"0{h.hex()}", lambda: self._blobs[h], lambda v: self._blobs.__setitem__(h, v)))

        def item(lst: _List, i: int, lid: int) -> None:
            def put(v: bytes) -> None:
                lst.items[i] = (zlib.crc32(v), v)

            slots.append((f"1{lid:020d}{i:012d}", lambda: lst.items[i][1], put))

        def header(key: tuple[str, str]) -> None:
            def put(v: bytes) -> None:
                self._checkpoints[key] = replace(self._checkpoints[key], header=v)

            slots.append((f"2{key[1]}{key[0]}", lambda: self._checkpoints[key].header, put))

        def inline(key: tuple[str, str], name: str) -> None:
            def get() -> bytes:
                ref = self._checkpoints[key].manifest[name]
                assert isinstance(ref, InlineRef)
                return ref.data

            def put(v: bytes) -> None:
                row = self._checkpoints[key]
                self._checkpoints[key] = replace(row, manifest={**row.manifest, name: InlineRef(v)})

            slots.append((f"3{key[1]}{key[0]}{name}", get, put))

        def thread_meta(t: _Thread, field_name: str) -> None:
            def put(v: bytes) -> None:
                t.row = replace(t.row, metadata=v) if field_name == "metadata" else replace(t.row, origin=v)

            slots.append((f"4{t.row.id}{field_name}", lambda: getattr(t.row, field_name), put))

        def session(sid: str) -> None:
            def put(v: bytes) -> None:
                self._sessions[sid] = replace(self._sessions[sid], metadata=v)

            slots.append((f"5{sid}", lambda: self._sessions[sid].metadata, put))

        def write(store: dict[tuple[str, int], PendingWrite], wkey: tuple[str, int], where: str) -> None:
            def put(v: bytes) -> None:
                store[wkey] = replace(store[wkey], value=v)

            slots.append((f"6{where}{wkey[0]}{wkey[1]:012d}", lambda: store[wkey].value, put))

        for h in self._blobs:
            blob(h)
        for lid, lst in self._lists.items():
            for i in range(len(lst.items)):
                item(lst, i, lid)
        for key, row in self._checkpoints.items():
            header(key)
            for name, ref in row.manifest.items():
                if isinstance(ref, InlineRef):
                    inline(key, name)
        for t in self._threads.values():
            thread_meta(t, "metadata")
            if t.row.origin is not None:
                thread_meta(t, "origin")
            for cid, writes in t.writes.items():
                for wkey in writes:
                    write(writes, wkey, f"{t.row.id}{cid}")
        for sid in self._sessions:
            session(sid)
        slots.sort(key=lambda s: s[0])
        return slots

    # ------------------------------------------------------------ garbage collection

    def _gc_thread(self, thread: _Thread) -> GcReport:
        tid = thread.row.id
        blob_refs: set[bytes] = set()
        needs: dict[int, int] = {}
        for cid in thread.ids:
            blobs, lists = manifest_refs(self._checkpoints[(tid, cid)].manifest)
            blob_refs |= blobs
            for lid, n in lists.items():
                needs[lid] = max(needs.get(lid, 0), n)
        owned = {
            lid: ListInfo(lid, lst.base_id, lst.base_len, lst.length)
            for lid, lst in self._lists.items()
            if lst.owner == tid
        }
        for lst in self._lists.values():
            if lst.base_id in owned and lst.owner != tid:
                needs[lst.base_id] = max(needs.get(lst.base_id, 0), lst.base_len)
        report = self._drop_lists(owned, needs)
        dropped = thread.blobs - blob_refs
        thread.blobs &= blob_refs
        live = {h for t in self._threads.values() for h in t.blobs}
        blob_bytes = blob_count = 0
        for digest in dropped - live:
            blob_bytes += len(self._blobs.pop(digest, b""))
            blob_count += 1
        return GcReport(blob_count, report.list_items, report.lists, report.bytes + blob_bytes)

    def _drop_lists(self, owned: Mapping[int, ListInfo], needs: Mapping[int, int]) -> GcReport:
        drop, trim = plan_list_gc(owned, needs)
        items = size = lists = 0
        orphan_bases: set[int] = set()
        for lid in drop:
            lst = self._lists.pop(lid)
            items += len(lst.items)
            size += sum(len(d) for _, d in lst.items)
            lists += 1
            if lst.base_id is not None:
                orphan_bases.add(lst.base_id)
        for lid, length in trim.items():
            lst = self._lists[lid]
            keep = max(0, length - lst.base_len)
            items += len(lst.items) - keep
            size += sum(len(d) for _, d in lst.items[keep:])
            del lst.items[keep:]
            lst.sealed = True
        for base_id in orphan_bases:
            base = self._lists.get(base_id)
            if base is None or base.owner in self._threads:
                continue
            need = max((x.base_len for x in self._lists.values() if x.base_id == base_id), default=0)
            sub = self._drop_lists(
                {base_id: ListInfo(base_id, base.base_id, base.base_len, base.length)}, {base_id: need}
            )
            items, size, lists = items + sub.list_items, size + sub.bytes, lists + sub.lists
        return GcReport(list_items=items, lists=lists, bytes=size)

    def collect_garbage(self) -> GcReport:
        with self._lock:
            blobs = items = lists = size = 0
            for thread in list(self._threads.values()):
                r = self._gc_thread(thread)
                blobs, items, lists, size = (
                    blobs + r.blobs,
                    items + r.list_items,
                    lists + r.lists,
                    size + r.bytes,
                )
            live = {h for t in self._threads.values() for h in t.blobs}
            for digest in set(self._blobs) - live:
                size += len(self._blobs.pop(digest))
                blobs += 1
            return GcReport(blobs, items, lists, size)

    def storage_bytes(self) -> int:
        with self._lock:
            rows = sum(
                len(r.header) + len(encode_manifest(r.manifest)) + 64 for r in self._checkpoints.values()
            )
            items = sum(len(d) + 16 for lst in self._lists.values() for _, d in lst.items)
            return rows + items + sum(len(b) + 16 for b in self._blobs.values())

    def reclaim_space(self) -> int:
        return 0
