"""Session layer (``SessionCheckpointManager`` of the design document).

A session groups threads and decides policy; its threads execute it. This
layer owns sessions, retention policies (inherited by threads, overridable per
field), cleanup across threads with error isolation, statistics, atomic
cross-thread sync points and session backups. It reaches checkpoints only
through the thread layer.

Retention rules (docs/retention.md):

* a checkpoint is *due* when its expiry has passed: its own ``expires_at`` when
  it has one, else ``created_at`` + the policy's TTL for its kind;
* cleanup removes due (or already expired) checkpoints, then, above
  ``max_checkpoints``, the oldest ``auto``, then ``error``, ``manual`` and
  unprotected milestone checkpoints;
* it never removes a branch head, a protected milestone, a checkpoint held by a
  sync point, or anything younger than ``min_age``;
* each thread is cleaned in its own transaction; a thread that fails is reported
  with its cause and the others proceed.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import ormsgpack

from threadline.archive import ArchiveSummary, Progress
from threadline.core import asyncify, check_limit, metadata_matches
from threadline.errors import (
    AlreadyExists,
    ArchiveError,
    Conflict,
    Expired,
    IntegrityError,
    InvalidInput,
    NotFound,
)
from threadline.model import (
    POLICY_FIELDS,
    Checkpoint,
    CheckpointKind,
    CheckpointStatus,
    Page,
    Policy,
    Session,
    SessionStatus,
    Stats,
    SyncPoint,
    Thread,
    check_metadata,
    datetime_to_us,
    iterate_pages,
    new_id,
    now_us,
    policy_overrides,
    us_to_datetime,
    validate_id,
    validate_name,
)
from threadline.storage.base import UNSET, CheckpointRow, SessionRow, SyncPointRow
from threadline.threads import ThreadCheckpointService

#: Order in which ``max_checkpoints`` removes checkpoints (oldest first within a kind).
COUNT_ORDER: dict[CheckpointKind, int] = {
    CheckpointKind.AUTO: 0,
    CheckpointKind.ERROR: 1,
    CheckpointKind.MANUAL: 2,
    CheckpointKind.MILESTONE: 3,
}

_DURATIONS = frozenset(POLICY_FIELDS) - {"max_checkpoints"}


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class ThreadCleanup:
    """What cleanup did (or, in a dry run, would do) to one thread.

    ``error`` is set when the thread failed: its cause, and nothing of the
    thread was changed by the failed step.
    """

    thread_id: str
    expired: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CleanupResult:
    """The outcome of a cleanup over one or more threads."""

    dry_run: bool
    threads: list[ThreadCleanup]
    reclaimed_bytes: int = 0

    @property
    def deleted(self) -> list[str]:
        return [cid for t in self.threads for cid in t.deleted]

    @property
    def expired(self) -> list[str]:
        return [cid for t in self.threads for cid in t.expired]

    @property
    def freed_bytes(self) -> int:
        return sum(t.freed_bytes for t in self.threads)

    @property
    def failures(self) -> dict[str, str]:
        """Thread id -> cause, for the threads that failed."""
        return {t.thread_id: t.error for t in self.threads if t.error is not None}

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(frozen=True, slots=True)
class ThreadSize:
    thread_id: str
    checkpoints: int
    logical_bytes: int
    stored_bytes: int


@dataclass(frozen=True, slots=True)
class SessionStats:
    """Statistics of a session (or of the whole store when ``session_id`` is None)."""

    session_id: str | None
    totals: Stats
    largest_threads: list[ThreadSize]
    #: ISO date (UTC) -> checkpoints created that day, oldest day first.
    created_per_day: dict[str, int]


@dataclass(frozen=True, slots=True)
class SessionRestore:
    """What restoring a session backup did."""

    session: Session
    archive: ArchiveSummary


# ---------------------------------------------------------------- policy encoding


def encode_policy(fields: Mapping[str, Any]) -> bytes:
    """Stored form of policy fields (durations in microseconds; None kept: it means "never")."""
    out = {
        name: (int(value / timedelta(microseconds=1)) if isinstance(value, timedelta) else value)
        for name, value in fields.items()
    }
    return ormsgpack.packb({"v": 1, "f": out})


def decode_policy(raw: bytes | None) -> dict[str, Any]:
    """Inverse of :func:`encode_policy`. Raises IntegrityError on malformed bytes."""
    if raw is None:
        return {}
    try:
        data = ormsgpack.unpackb(raw)
        if not isinstance(data, dict) or data.get("v") != 1 or not isinstance(data.get("f"), dict):
            raise ValueError("unknown layout")
        fields = {
            name: (timedelta(microseconds=value) if name in _DURATIONS and value is not None else value)
            for name, value in data["f"].items()
        }
        return policy_overrides(fields)
    except (ValueError, TypeError, InvalidInput, ormsgpack.MsgpackDecodeError) as exc:
        raise IntegrityError(f"stored retention policy is corrupt ({exc})") from None


def policy_fields(policy: Policy) -> dict[str, Any]:
    return {name: getattr(policy, name) for name in POLICY_FIELDS}


def _us(delta: timedelta) -> int:
    return int(delta / timedelta(microseconds=1))


# ---------------------------------------------------------------- retention planning (pure)


def plan_retention(
    rows: Sequence[CheckpointRow],
    policy: Policy,
    *,
    now: int,
    keep: set[str],
    unprotected_milestones: set[str],
) -> tuple[list[str], list[str]]:
    """Decide what cleanup does to one thread: (ids to mark expired, ids to delete).

    ``keep`` holds ids that are never touched (branch heads, sync point members);
    milestones are kept too unless listed in ``unprotected_milestones``.
    """

    def kept(r: CheckpointRow) -> bool:
        return r.id in keep or (r.milestone is not None and r.id not in unprotected_milestones)

    young_after = now - _us(policy.min_age) if policy.min_age is not None else None
    expire: list[str] = []
    doomed: set[str] = set()
    for r in rows:
        if kept(r):
            continue
        due = False
        if r.status is CheckpointStatus.ACTIVE:
            ttl = policy.ttl(r.kind)
            expiry = r.expires_at
            if expiry is None and ttl is not None:
                expiry = r.created_at + _us(ttl)
            due = expiry is not None and expiry <= now
            if due:
                expire.append(r.id)
        young = young_after is not None and r.created_at > young_after
        if (due or r.status is CheckpointStatus.EXPIRED) and not young:
            doomed.add(r.id)
    excess = len(rows) - len(doomed) - (policy.max_checkpoints or len(rows))
    if policy.max_checkpoints is not None and excess > 0:
        candidates = sorted(
            (
                r
                for r in rows
                if r.id not in doomed
                and not kept(r)
                and not (young_after is not None and r.created_at > young_after)
            ),
            key=lambda r: (COUNT_ORDER[r.kind], r.created_at, r.id),
        )
        doomed.update(r.id for r in candidates[:excess])
    return sorted(expire), sorted(doomed)


# ---------------------------------------------------------------- the manager


class SessionCheckpointManager:
    """Sessions, their retention policies, cleanup, statistics, sync points and backups.

    Args:
        threads: the thread layer (the only way this layer reaches checkpoints).
        default_policy: the policy of threads that belong to no session
            (default: keep everything).
    """

    def __init__(self, threads: ThreadCheckpointService, *, default_policy: Policy | None = None) -> None:
        self.threads = threads
        self.default_policy = default_policy or Policy()
        self._records = threads.core

    # ------------------------------------------------------------ sessions

    def create_session(
        self,
        session_id: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        owner: str | None = None,
        policy: Policy | None = None,
    ) -> Session:
        """Create a session (id generated when omitted) with a retention policy
        (default: keep everything). Raises InvalidInput, AlreadyExists."""
        sid = validate_id(session_id, "session id") if session_id is not None else new_id()
        if owner is not None:
            validate_id(owner, "owner")
        policy = _check_policy(policy or Policy())
        row = self.threads.create_session_row(
            sid,
            metadata=self._dump_metadata(metadata),
            owner=owner,
            policy=encode_policy(policy_fields(policy)),
        )
        return self._session(row)

    def get_session(self, session_id: str) -> Session:
        """Raises NotFound."""
        return self._session(self.threads.session_row(session_id))

    def list_sessions(
        self,
        *,
        status: SessionStatus | str | None = None,
        metadata: Mapping[str, Any] | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[Session]:
        """Sessions ordered by id, optionally by status and metadata equality, a page at a time."""
        check_limit(limit)
        wanted_status = SessionStatus(_parse_status(status)).value if status is not None else None
        wanted = check_metadata(metadata or {})
        items: builtins.list[Session] = []
        after = cursor
        while len(items) <= limit:
            rows = self.threads.session_rows(after=after, limit=500, status=wanted_status)
            items.extend(s for s in map(self._session, rows) if metadata_matches(s.metadata, wanted))
            if len(rows) < 500:
                break
            after = rows[-1].id
        return Page(items[:limit], items[limit - 1].id if len(items) > limit else None)

    def update_session_metadata(self, session_id: str, metadata: Mapping[str, Any]) -> Session:
        """Replace a session's metadata. Raises NotFound, InvalidInput."""
        row = self.threads.update_session_row(session_id, metadata=self._dump_metadata(metadata))
        return self._session(row)

    def close_session(self, session_id: str) -> Session:
        """Close a session: no thread may join it and no sync point be taken any more.
        Its threads, policy and cleanup keep working. Idempotent. Raises NotFound."""
        self.get_session(session_id)
        return self._session(self.threads.update_session_row(session_id, status=SessionStatus.CLOSED.value))

    def delete_session(self, session_id: str) -> None:
        """Delete a session with all its threads and sync points, in one transaction;
        their unshared bytes are collected. Raises NotFound."""
        self.threads.delete_session(session_id)

    def _session(self, row: SessionRow) -> Session:
        return Session(
            id=row.id,
            created_at=us_to_datetime(row.created_at),
            metadata=self._records.decode_record(row.metadata) if row.metadata else {},
            owner=row.owner,
            status=SessionStatus(row.status),
            policy=Policy(**decode_policy(row.policy)),
        )

    def _dump_metadata(self, metadata: Mapping[str, Any] | None) -> bytes:
        return self._records.encode_record(dict(check_metadata(metadata or {})), "metadata")

    # ------------------------------------------------------------ threads of a session

    def create_thread(
        self,
        session_id: str,
        thread_id: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        owner: str | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> Thread:
        """Create a thread inside a session, optionally with its own policy overrides.

        Raises NotFound (session), InvalidInput (closed session, bad input), AlreadyExists.
        """
        self._open_session(session_id)
        overrides = policy_overrides(policy) if policy else None
        thread = self.threads.create_thread(thread_id, session_id=session_id, metadata=metadata, owner=owner)
        if overrides:
            self.threads.set_thread_policy(thread.id, encode_policy(overrides))
        return thread

    def add_thread(self, session_id: str, thread_id: str) -> Thread:
        """Make an existing thread join a session (a thread belongs to at most one).

        Its checkpoints' stored expiry is re-computed under the session's policy.
        Raises NotFound, InvalidInput (closed session), Conflict (in another session).
        """
        self._open_session(session_id)
        row = self.threads.thread_row(thread_id)
        if row.session_id == session_id:
            return self.threads.get_thread(thread_id)
        if row.session_id is not None:
            raise Conflict(
                f"thread {thread_id!r} belongs to session {row.session_id!r}; "
                "remove it from that session first (remove_thread)"
            )
        self.threads.set_thread_session(thread_id, session_id)
        self.recompute_expiry(thread_id)
        return self.threads.get_thread(thread_id)

    def remove_thread(self, thread_id: str) -> Thread:
        """Take a thread out of its session (it keeps its checkpoints). Raises NotFound."""
        self.threads.set_thread_session(thread_id, None)
        self.recompute_expiry(thread_id)
        return self.threads.get_thread(thread_id)

    def list_threads(self, session_id: str, *, cursor: str | None = None, limit: int = 100) -> Page[Thread]:
        """A session's threads ordered by id. Raises NotFound (session)."""
        self.get_session(session_id)
        return self.threads.list_threads(session_id=session_id, cursor=cursor, limit=limit)

    def _thread_ids(self, session_id: str | None) -> builtins.list[str]:
        pages = iterate_pages(
            lambda cursor: self.threads.list_threads(session_id=session_id, cursor=cursor, limit=1000)
        )
        return [t.id for t in pages]

    def _open_session(self, session_id: str) -> Session:
        session = self.get_session(session_id)
        if session.status is SessionStatus.CLOSED:
            raise InvalidInput(f"session {session_id!r} is closed; threads and sync points cannot be added")
        return session

    # ------------------------------------------------------------ policies

    def set_global_checkpoint_policy(self, session_id: str, policy: Policy) -> int:
        """Set a session's policy and re-compute the stored expiry of the existing
        checkpoints of all its threads (their own overrides still apply).

        Returns how many checkpoints' expiry changed. Raises NotFound, InvalidInput.
        """
        policy = _check_policy(policy)
        self.threads.update_session_row(
            validate_id(session_id, "session id"), policy=encode_policy(policy_fields(policy))
        )
        return sum(self.recompute_expiry(tid) for tid in self._thread_ids(session_id))

    def set_thread_policy(self, thread_id: str, overrides: Mapping[str, Any] | None) -> Policy:
        """Override some fields of the inherited policy for one thread (None or {}
        removes the overrides); re-computes its checkpoints' expiry.

        ``overrides`` uses Policy field names (``ttl_auto``, ``max_checkpoints``, ...)
        or ``ttl={kind: timedelta}``; a value of None means "never"/"no limit".
        Returns the thread's effective policy. Raises NotFound, InvalidInput.
        """
        fields = policy_overrides(overrides) if overrides else {}
        self.threads.set_thread_policy(thread_id, encode_policy(fields) if fields else None)
        self.recompute_expiry(thread_id)
        return self.thread_policy(thread_id)

    def thread_policy(self, thread_id: str) -> Policy:
        """The policy that applies to a thread: its session's (or the default), with
        the thread's own overrides. Raises NotFound."""
        return self._policies([thread_id], {})[thread_id]

    def thread_overrides(self, thread_id: str) -> dict[str, Any]:
        """The fields a thread overrides. Raises NotFound."""
        return decode_policy(self.threads.thread_row(thread_id).policy)

    def _policies(self, thread_ids: Iterable[str], sessions: dict[str | None, Policy]) -> dict[str, Policy]:
        out: dict[str, Policy] = {}
        for tid in thread_ids:
            row = self.threads.thread_row(tid)
            if row.session_id not in sessions:
                sessions[row.session_id] = (
                    self.get_session(row.session_id).policy
                    if row.session_id is not None
                    else self.default_policy
                )
            base = sessions[row.session_id]
            out[tid] = base.override(decode_policy(row.policy)) if row.policy else base
        return out

    def recompute_expiry(self, thread_id: str) -> int:
        """Set each checkpoint's stored expiry to ``created_at`` + its kind's TTL under
        the thread's policy (None where the TTL is None); an expired checkpoint whose
        new expiry is later than now becomes active again. This replaces expiries set
        by hand. One transaction per thread; returns how many changed."""
        policy = self.thread_policy(thread_id)
        ttls = {
            kind: (_us(ttl) if (ttl := policy.ttl(kind)) is not None else None) for kind in CheckpointKind
        }
        return self.threads.apply_ttls(thread_id, ttls, now=now_us())

    # ------------------------------------------------------------ cleanup

    def cleanup(
        self,
        session_id: str,
        *,
        dry_run: bool = False,
        now: datetime | None = None,
        progress: Progress | None = None,
    ) -> CleanupResult:
        """Apply retention to every thread of a session. Raises NotFound (session).
        ``progress("cleanup", threads done, threads)`` is called after each thread."""
        self.get_session(session_id)
        return self._cleanup(self._thread_ids(session_id), dry_run=dry_run, now=now, progress=progress)

    def cleanup_thread(
        self,
        thread_id: str,
        *,
        dry_run: bool = False,
        now: datetime | None = None,
        progress: Progress | None = None,
    ) -> CleanupResult:
        """Apply retention to one thread. Raises NotFound (thread)."""
        self.threads.thread_row(thread_id)
        return self._cleanup([thread_id], dry_run=dry_run, now=now, progress=progress)

    def cleanup_store(
        self, *, dry_run: bool = False, now: datetime | None = None, progress: Progress | None = None
    ) -> CleanupResult:
        """Apply retention to every thread of the store (threads outside sessions use
        ``default_policy`` with their own overrides)."""
        everything = iterate_pages(lambda cursor: self.threads.list_threads(cursor=cursor, limit=1000))
        return self._cleanup([t.id for t in everything], dry_run=dry_run, now=now, progress=progress)

    def _cleanup(
        self,
        thread_ids: Sequence[str],
        *,
        dry_run: bool,
        now: datetime | None,
        progress: Progress | None = None,
    ) -> CleanupResult:
        moment = datetime_to_us(now) if now is not None else now_us()
        held = self._held_by_sync_points()
        sessions: dict[str | None, Policy] = {}
        results: builtins.list[ThreadCleanup] = []
        for tid in thread_ids:
            try:
                policy = self._policies([tid], sessions)[tid]
                results.append(self._clean_thread(tid, policy, held.get(tid, set()), moment, dry_run))
            except Exception as exc:  # error isolation: report the cause, go on with the others
                results.append(ThreadCleanup(tid, error=f"{type(exc).__name__}: {exc}"))
            if progress is not None:
                progress("cleanup", len(results), len(thread_ids))
        reclaimed = 0
        if not dry_run and any(r.deleted for r in results):
            reclaimed = self.threads.reclaim_space()
        return CleanupResult(dry_run=dry_run, threads=results, reclaimed_bytes=reclaimed)

    def _clean_thread(
        self, thread_id: str, policy: Policy, held: set[str], now: int, dry_run: bool
    ) -> ThreadCleanup:
        rows = self.threads.checkpoint_rows(thread_id)
        heads = {b.head for b in self.threads.branches(thread_id) if b.head is not None}
        unprotected = {
            r.id
            for r in rows
            if r.milestone is not None and not self.threads.get(r.id, thread_id=thread_id).protected
        }
        expire, delete = plan_retention(
            rows, policy, now=now, keep=heads | held, unprotected_milestones=unprotected
        )
        if dry_run or not (expire or delete):
            return ThreadCleanup(thread_id, expire, delete)
        freed = self._apply(thread_id, expire, delete)
        return ThreadCleanup(thread_id, expire, delete, freed)

    def _apply(self, thread_id: str, expire: Sequence[str], delete: Sequence[str]) -> int:
        """Carry out one thread's plan: the deletion is one transaction (survivors
        re-linked, bytes collected), then what stays but is due is marked expired."""
        freed = self.threads.remove_checkpoints(thread_id, delete).bytes if delete else 0
        remaining = sorted(set(expire) - set(delete))
        if remaining:
            self.threads.update_lifecycle(thread_id, remaining, status=CheckpointStatus.EXPIRED)
        return freed

    def _held_by_sync_points(self) -> dict[str, set[str]]:
        held: dict[str, set[str]] = {}
        after: str | None = None
        while True:
            rows = self.threads.session_rows(after=after, limit=500)
            for session in rows:
                for point in self.threads.sync_point_rows(session.id):
                    for tid, cid in point.members:
                        held.setdefault(tid, set()).add(cid)
            if len(rows) < 500:
                return held
            after = rows[-1].id

    # ------------------------------------------------------------ statistics

    def stats(self, session_id: str | None = None, *, largest: int = 5, per_day: bool = True) -> SessionStats:
        """Statistics of a session (the whole store when None).

        Threads, checkpoints by kind and status, logical and stored bytes,
        oldest/newest, restores, branches, milestones and the ``largest`` threads
        by stored bytes come from aggregate queries. Checkpoints created per day
        (``per_day``) are counted from checkpoint rows (no state is read); it is
        the slow part on large stores (see docs/retention.md).
        """
        if session_id is not None:
            self.get_session(session_id)
        ids = self._thread_ids(session_id) if session_id is not None else None
        totals = self.threads.stats(ids)
        row = self.threads.stats_row(ids, largest=largest, per_day=per_day)
        sizes = [ThreadSize(tid, n, logical, stored) for tid, n, logical, stored in row.largest]
        days = row.per_day
        return SessionStats(session_id, totals, sizes[:largest], dict(sorted(days.items())))

    # ------------------------------------------------------------ sync points

    def coordinate_cross_thread_checkpoints(
        self,
        session_id: str,
        thread_ids: Sequence[str],
        label: str,
        states: Mapping[str, Mapping[str, Any]] | Literal["current"] = "current",
        *,
        expected_heads: Mapping[str, str | None] | None = None,
        metadata: Mapping[str, Any] | None = None,
        title: str | None = None,
    ) -> SyncPoint:
        """Checkpoint several threads of a session atomically under one label.

        One new checkpoint per thread on its default branch, all in one
        transaction with the sync point record: all or nothing. ``states`` gives
        each thread's state, or ``"current"`` re-records each thread's head state
        (the write then expects that head, so a concurrent writer makes the whole
        sync point fail). ``expected_heads`` (thread -> head id, None: empty)
        makes it fail with Conflict, storing nothing, if any head moved.

        Raises:
            NotFound: the session or a thread does not exist.
            InvalidInput: empty or duplicate threads, a thread of another session,
                a closed session, states not matching the threads, an empty thread
                with ``"current"``, a malformed label.
            AlreadyExists: the label is taken in the session.
            Conflict: a head moved.
        """
        self._open_session(session_id)
        label = validate_name(label, "sync point label")
        members = self._members(session_id, thread_ids)
        expected = dict(expected_heads or {})
        if set(expected) - set(members):
            raise InvalidInput(
                f"expected_heads names threads outside the sync point: {sorted(set(expected) - set(members))}"
            )
        if states != "current" and (not isinstance(states, Mapping) or set(states) != set(members)):
            raise InvalidInput('states must be "current" or a mapping with exactly one state per thread')
        try:
            self.threads.sync_point_row(session_id, label)
        except NotFound:
            pass
        else:
            raise AlreadyExists(f"sync point {label!r} already exists in session {session_id!r}")
        requests = [
            self._sync_request(tid, label, states, expected, title or f"sync point {label}")
            for tid in members
        ]
        record = SyncPointRow(
            session_id=session_id,
            label=label,
            created_at=now_us(),
            members=(),
            metadata=self._dump_metadata(metadata),
        )
        self.threads.checkpoint_many(requests, sync_point=record)
        return self.get_sync_point(session_id, label)

    def _members(self, session_id: str, thread_ids: Sequence[str]) -> builtins.list[str]:
        if isinstance(thread_ids, str) or not isinstance(thread_ids, Sequence | set | frozenset):
            raise InvalidInput("thread_ids must be a sequence of thread ids")
        members = [validate_id(t, "thread id") for t in thread_ids]
        if not members:
            raise InvalidInput("a sync point needs at least one thread")
        if len(set(members)) != len(members):
            dupes = sorted({t for t in members if members.count(t) > 1})
            raise InvalidInput(f"a sync point names each thread once; repeated: {dupes}")
        for tid in members:
            owner = self.threads.thread_row(tid).session_id
            if owner != session_id:
                where = f"session {owner!r}" if owner else "no session"
                raise InvalidInput(
                    f"thread {tid!r} belongs to {where}, not session {session_id!r}; "
                    "a sync point covers threads of its own session only"
                )
        return members

    def _sync_request(
        self,
        thread_id: str,
        label: str,
        states: Mapping[str, Mapping[str, Any]] | Literal["current"],
        expected: Mapping[str, str | None],
        title: str,
    ) -> dict[str, Any]:
        branch = self.threads.get_thread(thread_id).default_branch
        request: dict[str, Any] = {
            "thread_id": thread_id,
            "branch": branch,
            "kind": CheckpointKind.MANUAL,
            "title": title,
            "sync_point": label,
            "expected_head": expected.get(thread_id, UNSET),
        }
        if states != "current":
            return {**request, "state": states[thread_id]}
        head = self.threads.latest(thread_id, branch)
        if head is None:
            raise InvalidInput(
                f"thread {thread_id!r} has no checkpoint to take as 'current'; pass its state explicitly"
            )
        if thread_id in expected and expected[thread_id] != head.id:
            raise Conflict(
                f"head of thread {thread_id!r} moved: expected {expected[thread_id]}, found {head.id}",
                expected=expected[thread_id],
                actual=head.id,
            )
        row = self.threads.checkpoint_row(head.id, thread_id)
        return {**request, "state": None, "state_of": row, "expected_head": head.id}

    def restore_sync_point(
        self,
        session_id: str,
        label: str,
        *,
        expected_heads: Mapping[str, str | None] | None = None,
        title: str | None = None,
    ) -> builtins.list[Checkpoint]:
        """Restore every thread of a sync point to its state there, atomically: one new
        checkpoint per thread (``restored_from`` the member), all or nothing.

        Raises NotFound (sync point, or a member checkpoint was deleted), Expired
        (a member expired or was archived), Conflict (an expected head moved).
        """
        point = self.threads.sync_point_row(validate_id(session_id, "session id"), label)
        expected = dict(expected_heads or {})
        rows: builtins.list[CheckpointRow] = []
        missing: builtins.list[str] = []
        for tid, cid in point.members:
            try:
                rows.append(self.threads.checkpoint_row(cid, tid))
            except NotFound:
                missing.append(f"{cid} of thread {tid!r}")
        if missing:
            raise NotFound(
                f"sync point {label!r} cannot be restored: checkpoint {', '.join(missing)} no longer exists"
            )
        for row in rows:
            if row.status is not CheckpointStatus.ACTIVE:
                raise Expired(
                    f"sync point {label!r} cannot be restored: checkpoint {row.id} of thread "
                    f"{row.thread_id!r} is {row.status.value}"
                )
        requests = []
        for row in rows:
            branches = {b.name for b in self.threads.branches(row.thread_id)}
            branch = (
                row.branch
                if row.branch in branches
                else self.threads.get_thread(row.thread_id).default_branch
            )
            requests.append(
                {
                    "thread_id": row.thread_id,
                    "state": None,
                    "state_of": row,
                    "branch": branch,
                    "kind": CheckpointKind.MANUAL,
                    "title": title or f"restore of sync point {label}",
                    "restored_from": row.id,
                    "expected_head": expected.get(row.thread_id, UNSET),
                }
            )
        return self.threads.checkpoint_many(requests)

    def get_sync_point(self, session_id: str, label: str) -> SyncPoint:
        """Raises NotFound."""
        return self._sync_point(self.threads.sync_point_row(validate_id(session_id, "session id"), label))

    def list_sync_points(self, session_id: str) -> builtins.list[SyncPoint]:
        """A session's sync points, oldest first. Raises NotFound (session)."""
        return [self._sync_point(r) for r in self.threads.sync_point_rows(session_id)]

    def delete_sync_point(self, session_id: str, label: str) -> None:
        """Forget a sync point; its checkpoints become subject to retention. Raises NotFound."""
        self.threads.delete_sync_point(validate_id(session_id, "session id"), label)

    def _sync_point(self, row: SyncPointRow) -> SyncPoint:
        return SyncPoint(
            session_id=row.session_id,
            label=row.label,
            created_at=us_to_datetime(row.created_at),
            members=dict(row.members),
            metadata=self._records.decode_record(row.metadata) if row.metadata else {},
        )

    # ------------------------------------------------------------ backups

    def backup_session(
        self, session_id: str, path: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> ArchiveSummary:
        """Write a whole session (its threads, policy, thread overrides, sync points)
        to an archive (docs/archive.md). Raises NotFound, ArchiveError (no threads)."""
        row = self.threads.session_row(session_id)
        ids = self._thread_ids(session_id)
        section = {
            "id": row.id,
            "created_at": row.created_at,
            "metadata": self._records.serializer.dumps(
                self._records.decode_record(row.metadata), path="metadata"
            ),
            "owner": row.owner,
            "status": row.status,
            "policy": row.policy,
            "thread_policies": {
                tid: policy for tid in ids if (policy := self.threads.thread_row(tid).policy) is not None
            },
            "sync_points": [
                [p.label, p.created_at, [list(m) for m in p.members], p.metadata]
                for p in self.threads.sync_point_rows(session_id)
            ],
        }
        return self.threads.backup(ids, path, progress=progress, session=section)

    def restore_session(
        self,
        path: str | os.PathLike[str],
        *,
        session_id: str | None = None,
        progress: Progress | None = None,
    ) -> SessionRestore:
        """Restore a session backup: the session (under ``session_id`` when given),
        its threads (skipped when already present with the same content), their
        policies, and its sync points. Restoring twice creates no duplicates.

        Everything is verified before anything is written. Raises ArchiveError
        (not a session backup, malformed), Conflict (a different session or thread
        with the same id exists). Sync points are recreated over the restored checkpoints.
        """
        summary = self.threads.verify_backup(path)
        section = summary.session
        if section is None:
            raise ArchiveError("archive holds no session; restore its threads with threads.restore_backup")
        session_policy = _archived_policy(section.get("policy"), "session policy")
        thread_policies = {
            tid: _archived_policy(raw, f"policy of thread {tid!r}")
            for tid, raw in section["thread_policies"].items()
        }
        target = validate_id(session_id, "session id") if session_id is not None else section["id"]
        try:
            existing = self.threads.session_row(target)
        except NotFound:
            self.threads.create_session_row(
                target,
                metadata=self._records.encode_record(
                    self._records.serializer.loads(section["metadata"]), "metadata"
                ),
                owner=section["owner"],
                policy=encode_policy(session_policy) if section.get("policy") is not None else None,
                created_at=section["created_at"],
            )
        else:
            if existing.created_at != section["created_at"] and session_id is None:
                raise Conflict(
                    f"session {target!r} exists and is not the archived one; restore under another session_id"
                )
        archive = self.threads.restore_backup(path, progress=progress, session_id=target)
        for tid in summary.threads:
            if self.threads.thread_row(tid).session_id != target:
                self.threads.set_thread_session(tid, target)
            if tid in thread_policies:
                self.threads.set_thread_policy(tid, encode_policy(thread_policies[tid]))
        if section["status"] == SessionStatus.CLOSED.value:
            self.threads.update_session_row(target, status=SessionStatus.CLOSED.value)
        present = {p.label for p in self.threads.sync_point_rows(target)}
        for label, created_at, members, metadata in section["sync_points"]:
            if label not in present:
                point = SyncPointRow(target, label, created_at, tuple((t, c) for t, c in members), metadata)
                self.threads.put_sync_point(point)
        return SessionRestore(self.get_session(target), archive)

    # ------------------------------------------------------------ async twins (one implementation)

    acreate_session = asyncify(create_session)
    aget_session = asyncify(get_session)
    alist_sessions = asyncify(list_sessions)
    aclose_session = asyncify(close_session)
    adelete_session = asyncify(delete_session)
    acreate_thread = asyncify(create_thread)
    aadd_thread = asyncify(add_thread)
    aset_global_checkpoint_policy = asyncify(set_global_checkpoint_policy)
    aset_thread_policy = asyncify(set_thread_policy)
    acleanup = asyncify(cleanup)
    acleanup_store = asyncify(cleanup_store)
    astats = asyncify(stats)
    acoordinate_cross_thread_checkpoints = asyncify(coordinate_cross_thread_checkpoints)
    arestore_sync_point = asyncify(restore_sync_point)


# ---------------------------------------------------------------- helpers


def _check_policy(policy: object) -> Policy:
    if not isinstance(policy, Policy):
        raise InvalidInput(f"policy must be a threadline.Policy, got {type(policy).__name__}")
    return policy


def _parse_status(status: SessionStatus | str) -> str:
    try:
        return SessionStatus(status).value
    except ValueError:
        raise InvalidInput(f"unknown session status {status!r}; expected one of: active, closed") from None


def _archived_policy(raw: object, what: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, bytes):
        raise ArchiveError(f"archive {what} is malformed")
    try:
        return decode_policy(raw)
    except IntegrityError as exc:
        raise ArchiveError(f"archive {what} is malformed ({exc})") from None


__all__ = [
    "CleanupResult",
    "SessionCheckpointManager",
    "SessionRestore",
    "SessionStats",
    "ThreadCleanup",
    "ThreadSize",
    "decode_policy",
    "encode_policy",
    "plan_retention",
]
