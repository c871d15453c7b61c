"""Thread layer (``ThreadCheckpointService`` of the design document).

Everything a thread does with its checkpoints, on top of the core layer:
kinds of checkpoints, branches (fork, time travel, rename, delete, merge),
optimistic concurrency, restore, diff, collaboration (participants and roles,
share and copy) and backups. It reaches storage only through the core layer.
"""

from __future__ import annotations

import builtins
import enum
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

from threadline.archive import ArchiveSummary, Progress, restore_archive, verify_archive, write_archive
from threadline.core import CheckpointDomainService, asyncify, check_limit, metadata_matches
from threadline.diff import StateDiff, diff_states
from threadline.errors import AlreadyExists, Conflict, Expired, InvalidInput, NotFound, PermissionDenied
from threadline.model import (
    DEFAULT_BRANCH,
    Branch,
    Checkpoint,
    CheckpointFilter,
    CheckpointKind,
    CheckpointStatus,
    Page,
    Stats,
    Thread,
    check_metadata,
    iterate_pages,
    new_checkpoint_id,
    new_id,
    now_us,
    parse_enum,
    us_to_datetime,
    validate_checkpoint_id,
    validate_id,
    validate_name,
)
from threadline.storage.base import (
    UNSET,
    BranchRow,
    CheckpointRow,
    GcReport,
    LifecycleUpdate,
    SessionRow,
    StatsRow,
    SyncPointRow,
    ThreadRow,
)


class Role(enum.StrEnum):
    """A participant's role on a thread; each includes the rights of those below."""

    VIEWER = "viewer"
    EDITOR = "editor"
    OWNER = "owner"


_RANK = {Role.VIEWER: 1, Role.EDITOR: 2, Role.OWNER: 3}

#: A merge strategy: "theirs" (the source branch's state), "ours" (the target's)
#: or a function of (base, ours, theirs) states returning the merged state.
MergeFunction = Callable[[Mapping[str, Any] | None, Mapping[str, Any], Mapping[str, Any]], Mapping[str, Any]]

#: Decides whether an auto checkpoint is worth saving: (previous state or None, new state).
SavePolicy = Callable[[Mapping[str, Any] | None, Mapping[str, Any]], bool]


class ThreadCheckpointService:
    """Threads and everything they do with their checkpoints.

    Operations accept an optional acting principal (``actor``). When it is
    given, reads need the ``viewer`` role, writes ``editor``, and participant
    management and deletion ``owner``; a refused operation raises
    PermissionDenied and changes nothing. Without ``actor`` no check is made
    (the caller is trusted, e.g. a single-user program).

    Args:
        core: the checkpoint core layer.
        should_save: optional policy hook asked before each ``auto`` checkpoint;
            returning False skips the write (the head is returned instead).
        skip_unchanged: skip ``auto`` checkpoints whose state equals the head's.
    """

    def __init__(
        self,
        core: CheckpointDomainService,
        *,
        should_save: SavePolicy | None = None,
        skip_unchanged: bool = False,
    ) -> None:
        self.core = core
        self.should_save = should_save
        self.skip_unchanged = skip_unchanged

    # ------------------------------------------------------------ permissions

    def role_of(self, thread_id: str, principal: str) -> Role | None:
        """The role ``principal`` holds on a thread, or None."""
        role = self.core.repository.participants(validate_id(thread_id, "thread id")).get(principal)
        return Role(role) if role else None

    def _require(self, thread_id: str, actor: str | None, needed: Role, action: str) -> None:
        if actor is None:
            return
        validate_id(actor, "principal")
        role = self.role_of(thread_id, actor)
        if role is None or _RANK[role] < _RANK[needed]:
            held = role.value if role else "no role"
            raise PermissionDenied(
                f"{actor!r} may not {action} thread {thread_id!r}: it needs the {needed.value} role and has {held}"
            )

    # ------------------------------------------------------------ threads

    def create_thread(
        self,
        thread_id: str | None = None,
        *,
        session_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        owner: str | None = None,
    ) -> Thread:
        """Create a thread (id generated when omitted); ``owner`` becomes its owner participant.

        Raises InvalidInput, AlreadyExists.
        """
        if owner is not None:
            validate_id(owner, "principal")
        thread = self.core.create_thread(thread_id, session_id=session_id, metadata=metadata)
        if owner is not None:
            self.core.repository.set_participant(thread.id, owner, Role.OWNER.value)
        return thread

    def get_thread(self, thread_id: str, *, actor: str | None = None) -> Thread:
        """Raises NotFound, PermissionDenied."""
        thread = self.core.get_thread(thread_id)
        self._require(thread.id, actor, Role.VIEWER, "read")
        return thread

    def list_threads(
        self,
        *,
        session_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[Thread]:
        """Threads ordered by id, optionally of one session and matching metadata equality."""
        if not metadata:
            return self.core.list_threads(session_id=session_id, cursor=cursor, limit=limit)
        check_limit(limit)
        wanted = check_metadata(metadata)
        items: builtins.list[Thread] = []
        after = cursor
        while len(items) <= limit:
            page = self.core.list_threads(session_id=session_id, cursor=after, limit=500)
            items.extend(t for t in page.items if metadata_matches(t.metadata, wanted))
            if page.next_cursor is None:
                break
            after = page.next_cursor
        return Page(items[:limit], items[limit - 1].id if len(items) > limit else None)

    def update_metadata(
        self, thread_id: str, metadata: Mapping[str, Any], *, actor: str | None = None
    ) -> Thread:
        """Replace a thread's metadata (editor)."""
        self._require(thread_id, actor, Role.EDITOR, "update")
        return self.core.update_thread_metadata(thread_id, metadata)

    def delete_thread(self, thread_id: str, *, actor: str | None = None) -> None:
        """Delete a thread with all its checkpoints and branches (owner)."""
        self._require(thread_id, actor, Role.OWNER, "delete")
        self.core.delete_thread(thread_id)

    # ------------------------------------------------------------ checkpoints

    def checkpoint(
        self,
        /,
        thread_id: str,
        state: Mapping[str, Any],
        *,
        kind: CheckpointKind | str = CheckpointKind.AUTO,
        branch: str | None = None,
        expected_head: str | Any | None = UNSET,
        actor: str | None = None,
        **fields: Any,
    ) -> Checkpoint:
        """Write a checkpoint on a branch (the thread's default branch when omitted).

        ``fields`` are those of :meth:`CheckpointDomainService.create` (title,
        tags, metadata, ttl, ...). ``auto`` checkpoints go through the
        ``should_save`` hook and ``skip_unchanged``; when skipped, the current
        head is returned and nothing is written.
        Raises what ``create`` raises, and PermissionDenied.
        """
        self._require(thread_id, actor, Role.EDITOR, "write to")
        kind = parse_enum(CheckpointKind, kind, "checkpoint kind")
        name = branch or self.core.get_thread(thread_id).default_branch
        if kind is CheckpointKind.AUTO and self.should_save is not None:
            head = self.core.latest(thread_id, name)
            previous = self.core.get_state(head.id, thread_id) if head else None
            if head is not None and not self.should_save(previous, state):
                return head
        skip = kind is CheckpointKind.AUTO and self.skip_unchanged
        return self.core.create(
            thread_id,
            state,
            branch=name,
            kind=kind,
            expected_head=expected_head,
            skip_unchanged=skip,
            **fields,
        )

    def manual(
        self,
        thread_id: str,
        state: Mapping[str, Any],
        *,
        title: str | None = None,
        description: str | None = None,
        tags: Sequence[str] = (),
        **options: Any,
    ) -> Checkpoint:
        """A checkpoint a person asked for, with a title, description and tags."""
        return self.checkpoint(
            thread_id,
            state,
            kind=CheckpointKind.MANUAL,
            title=title,
            description=description,
            tags=tags,
            **options,
        )

    def error(
        self,
        thread_id: str,
        state: Mapping[str, Any],
        *,
        error: BaseException | str,
        error_type: str | None = None,
        **options: Any,
    ) -> Checkpoint:
        """Keep the state of a failed step for inspection, with the error's message and type."""
        message = str(error) if isinstance(error, BaseException) else error
        if isinstance(error, BaseException):
            error_type = error_type or type(error).__name__
            message = message or type(error).__name__
        return self.checkpoint(
            thread_id,
            state,
            kind=CheckpointKind.ERROR,
            error_message=message,
            error_type=error_type,
            **options,
        )

    def milestone(self, thread_id: str, state: Mapping[str, Any], name: str, **options: Any) -> Checkpoint:
        """A named, protected checkpoint; the name is unique in the thread (AlreadyExists)."""
        return self.checkpoint(thread_id, state, kind=CheckpointKind.MILESTONE, milestone=name, **options)

    def milestone_of(
        self,
        checkpoint_id: str,
        name: str,
        *,
        thread_id: str | None = None,
        branch: str | None = None,
        actor: str | None = None,
    ) -> Checkpoint:
        """Mark an existing checkpoint's state as a milestone: appends a milestone
        checkpoint with that state (stored values shared, nothing copied) on
        ``branch`` (by default the checkpoint's branch, or the thread's default
        branch when that one is gone).

        Raises NotFound, AlreadyExists (name taken in the thread), InvalidInput, PermissionDenied.
        """
        row = self.core.row(checkpoint_id, thread_id)
        self._require(row.thread_id, actor, Role.EDITOR, "write to")
        name = validate_name(name, "milestone name")
        target = branch or row.branch
        names = {b.name for b in self.core.repository.list_branches(row.thread_id)}
        if branch is None and target not in names:
            target = self.core.get_thread(row.thread_id).default_branch
        return self.core.create(
            row.thread_id,
            None,
            state_of=row,
            branch=target,
            kind=CheckpointKind.MILESTONE,
            milestone=name,
            title=f"state of {row.id}",
        )

    def get(
        self, checkpoint_id: str, *, thread_id: str | None = None, actor: str | None = None
    ) -> Checkpoint:
        """A checkpoint's fields. Raises NotFound, PermissionDenied."""
        checkpoint = self.core.get(checkpoint_id, thread_id)
        self._require(checkpoint.thread_id, actor, Role.VIEWER, "read")
        return checkpoint

    def get_state(
        self, checkpoint_id: str, *, thread_id: str | None = None, actor: str | None = None
    ) -> dict[str, Any]:
        """Exactly the state that was written. Raises NotFound, IntegrityError, PermissionDenied."""
        row = self.core.row(checkpoint_id, thread_id)
        self._require(row.thread_id, actor, Role.VIEWER, "read")
        return self.core.materialize(row)

    def latest(
        self, thread_id: str, branch: str | None = None, *, actor: str | None = None
    ) -> Checkpoint | None:
        """The head of a branch (default branch when omitted), or None when it is empty."""
        self._require(thread_id, actor, Role.VIEWER, "read")
        return self.core.latest(thread_id, branch or self.core.get_thread(thread_id).default_branch)

    def list(
        self,
        thread_id: str,
        filter: CheckpointFilter | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        actor: str | None = None,
    ) -> Page[Checkpoint]:
        """A thread's checkpoints, newest first (all branches unless the filter names one)."""
        self._require(thread_id, actor, Role.VIEWER, "read")
        return self.core.list(thread_id, filter, limit=limit, cursor=cursor)

    def history(
        self,
        thread_id: str,
        branch: str | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        actor: str | None = None,
    ) -> Page[Checkpoint]:
        """A branch's history: its head, then first parents, newest first."""
        self._require(thread_id, actor, Role.VIEWER, "read")
        name = branch or self.core.get_thread(thread_id).default_branch
        return self.core.history(thread_id, name, limit=limit, cursor=cursor)

    # ------------------------------------------------------------ branches

    def _branch(self, row: BranchRow) -> Branch:
        return Branch(row.thread_id, row.name, row.head, us_to_datetime(row.created_at), row.base)

    def create_branch(
        self, thread_id: str, name: str, *, from_checkpoint: str | None = None, actor: str | None = None
    ) -> Branch:
        """Create a branch at any checkpoint of the thread (time travel), or at the
        default branch's head when ``from_checkpoint`` is omitted.

        Raises InvalidInput (name), AlreadyExists, NotFound (a checkpoint of
        another thread is not found in this one), PermissionDenied.
        """
        self._require(thread_id, actor, Role.EDITOR, "branch")
        name = validate_name(name, "branch name")
        thread = self.core.get_thread(thread_id)
        if from_checkpoint is None:
            head = self.core.repository.get_branch(thread.id, thread.default_branch).head
        else:
            head = self.core.row(validate_checkpoint_id(from_checkpoint), thread.id).id
        try:
            row = self.core.repository.create_branch(thread.id, name, head=head, created_at=now_us())
        except AlreadyExists:
            raise AlreadyExists(f"branch {name!r} already exists in thread {thread.id!r}") from None
        return self._branch(row)

    def get_branch(self, thread_id: str, name: str, *, actor: str | None = None) -> Branch:
        """Raises NotFound."""
        self._require(thread_id, actor, Role.VIEWER, "read")
        return self._branch(self.core.repository.get_branch(validate_id(thread_id, "thread id"), name))

    def branches(self, thread_id: str, *, actor: str | None = None) -> builtins.list[Branch]:
        """All branches of a thread with their heads, by name."""
        self._require(thread_id, actor, Role.VIEWER, "read")
        return [
            self._branch(r) for r in self.core.repository.list_branches(validate_id(thread_id, "thread id"))
        ]

    def rename_branch(self, thread_id: str, old: str, new: str, *, actor: str | None = None) -> Branch:
        """Rename a branch. Raises NotFound, AlreadyExists, InvalidInput."""
        self._require(thread_id, actor, Role.EDITOR, "rename branches of")
        row = self.core.repository.rename_branch(
            validate_id(thread_id, "thread id"),
            validate_name(old, "branch name"),
            validate_name(new, "branch name"),
        )
        self.core.forget_thread_caches(thread_id)
        return self._branch(row)

    def delete_branch(
        self, thread_id: str, name: str, *, force: bool = False, actor: str | None = None
    ) -> None:
        """Delete a branch; checkpoints no other branch reaches are deleted and their
        bytes collected. The default branch cannot be deleted; ``main`` and branches
        holding milestones need ``force``.

        Raises NotFound, InvalidInput (default branch), Conflict (needs force).
        """
        self._require(thread_id, actor, Role.EDITOR, "delete branches of")
        name = validate_name(name, "branch name")
        if name == DEFAULT_BRANCH and not force:
            raise Conflict(f"branch {DEFAULT_BRANCH!r} of thread {thread_id!r} is only deleted with force")
        self.core.repository.delete_branch(validate_id(thread_id, "thread id"), name, force=force)
        self.core.forget_thread_caches(thread_id)

    def set_default_branch(self, thread_id: str, name: str, *, actor: str | None = None) -> Thread:
        """Make another branch the thread's default."""
        self._require(thread_id, actor, Role.EDITOR, "change")
        self.core.repository.set_default_branch(
            validate_id(thread_id, "thread id"), validate_name(name, "branch")
        )
        return self.core.get_thread(thread_id)

    def merge(
        self,
        thread_id: str,
        source: str,
        target: str | None = None,
        *,
        strategy: str | MergeFunction = "theirs",
        title: str | None = None,
        actor: str | None = None,
    ) -> Checkpoint:
        """Merge branch ``source`` into ``target`` (default branch when omitted).

        Writes one checkpoint on ``target`` whose parents are both heads and whose
        state the strategy chooses: ``"theirs"`` (source), ``"ours"`` (target),
        or a function of (base, ours, theirs) states, base being the nearest
        common ancestor's state (None when the branches share none). The write
        expects the target head it read, so a concurrent writer makes it fail
        with Conflict instead of losing their checkpoint.

        Raises InvalidInput (same branch, unknown strategy, empty branch), NotFound, Conflict.
        """
        self._require(thread_id, actor, Role.EDITOR, "merge in")
        thread = self.core.get_thread(thread_id)
        target = validate_name(target or thread.default_branch, "branch name")
        source = validate_name(source, "branch name")
        if source == target:
            raise InvalidInput(f"cannot merge branch {source!r} into itself")
        if not callable(strategy) and strategy not in ("theirs", "ours"):
            raise InvalidInput(f"unknown merge strategy {strategy!r}; use 'theirs', 'ours' or a function")
        theirs_head = self.core.repository.get_branch(thread.id, source).head
        ours_head = self.core.repository.get_branch(thread.id, target).head
        if theirs_head is None:
            raise InvalidInput(f"branch {source!r} has no checkpoints to merge")
        theirs_row = self.core.row(theirs_head, thread.id)
        ours_row = self.core.row(ours_head, thread.id) if ours_head else None
        fields: dict[str, Any] = {
            "branch": target,
            "kind": CheckpointKind.AUTO,
            "title": title or f"merge {source} into {target}",
            "expected_head": ours_head,
            "merge_parent_id": theirs_head,
        }
        if strategy == "theirs" or ours_row is None:
            return self.core.create(thread.id, None, state_of=theirs_row, **fields)
        if strategy == "ours":
            return self.core.create(thread.id, None, state_of=ours_row, **fields)
        assert callable(strategy)
        base_id = self.common_ancestor(thread.id, ours_row.id, theirs_row.id)
        base = self.core.get_state(base_id, thread.id) if base_id else None
        merged = strategy(base, self.core.materialize(ours_row), self.core.materialize(theirs_row))
        if not isinstance(merged, Mapping):
            raise InvalidInput(f"merge function returned {type(merged).__name__}, not a mapping")
        return self.core.create(thread.id, merged, **fields)

    def common_ancestor(self, thread_id: str, a: str, b: str) -> str | None:
        """The nearest checkpoint both ``a`` and ``b`` descend from (both parents followed)."""
        ancestors_a = self._ancestry(thread_id, a)
        frontier = [b]
        seen: set[str] = set()
        while frontier:
            nxt: builtins.list[str] = []
            for cid in frontier:
                if cid in ancestors_a:
                    return cid
                if cid in seen:
                    continue
                seen.add(cid)
                row = self.core.row(cid, thread_id)
                nxt.extend(p for p in (row.parent_id, row.merge_parent_id) if p)
            frontier = nxt
        return None

    def _ancestry(self, thread_id: str, start: str) -> set[str]:
        seen: set[str] = set()
        stack = [start]
        while stack:
            cid = stack.pop()
            if cid in seen:
                continue
            seen.add(cid)
            row = self.core.row(cid, thread_id)
            stack.extend(p for p in (row.parent_id, row.merge_parent_id) if p)
        return seen

    # ------------------------------------------------------------ restore and diff

    def restore(
        self,
        checkpoint_id: str,
        *,
        thread_id: str | None = None,
        branch: str | None = None,
        expected_head: str | Any | None = UNSET,
        actor: str | None = None,
    ) -> Checkpoint:
        """Append a checkpoint whose state equals an earlier one's (history is never rewritten).

        Written on ``branch`` (by default the branch the checkpoint is on, or the
        thread's default branch), records ``restored_from`` and counts the
        restore on the old checkpoint, in one transaction. Stored values are
        shared, so a restore costs one small row.

        Raises NotFound (deleted checkpoint), Expired (expired or archived), Conflict.
        """
        row = self.core.row(checkpoint_id, thread_id)
        self._require(row.thread_id, actor, Role.EDITOR, "restore in")
        if row.status is not CheckpointStatus.ACTIVE:
            raise Expired(f"checkpoint {row.id} is {row.status.value} and cannot be restored")
        if row.expires_at is not None and row.expires_at <= now_us():
            raise Expired(f"checkpoint {row.id} expired and cannot be restored")
        name = branch or row.branch
        branch_names = {b.name for b in self.core.repository.list_branches(row.thread_id)}
        if name not in branch_names:
            if branch is not None:
                raise NotFound(f"branch {branch!r} does not exist in thread {row.thread_id!r}")
            name = self.core.get_thread(row.thread_id).default_branch
        return self.core.create(
            row.thread_id,
            None,
            state_of=row,
            branch=name,
            kind=CheckpointKind.MANUAL,
            title=f"restore of {row.id}",
            restored_from=row.id,
            expected_head=expected_head,
        )

    def diff(self, a: str, b: str, *, thread_id: str | None = None, actor: str | None = None) -> StateDiff:
        """Structural diff from checkpoint ``a``'s state to ``b``'s."""
        row_a = self.core.row(a, thread_id)
        row_b = self.core.row(b, thread_id)
        self._require(row_a.thread_id, actor, Role.VIEWER, "read")
        self._require(row_b.thread_id, actor, Role.VIEWER, "read")
        return diff_states(self.core.materialize(row_a), self.core.materialize(row_b))

    # ------------------------------------------------------------ collaboration

    def add_participant(
        self, thread_id: str, principal: str, role: Role | str, *, actor: str | None = None
    ) -> None:
        """Give a principal a role on the thread (owner). Raises InvalidInput (unknown role)."""
        parsed = parse_enum(Role, role, "role")
        self._require(thread_id, actor, Role.OWNER, "manage participants of")
        self.core.get_thread(thread_id)
        self.core.repository.set_participant(thread_id, validate_id(principal, "principal"), parsed.value)

    def remove_participant(self, thread_id: str, principal: str, *, actor: str | None = None) -> None:
        """Take a principal's role away (owner)."""
        self._require(thread_id, actor, Role.OWNER, "manage participants of")
        self.core.repository.set_participant(validate_id(thread_id, "thread id"), principal, None)

    def participants(self, thread_id: str, *, actor: str | None = None) -> dict[str, Role]:
        """Principal -> role."""
        self._require(thread_id, actor, Role.VIEWER, "read")
        return {
            p: Role(r)
            for p, r in self.core.repository.participants(validate_id(thread_id, "thread id")).items()
        }

    def share(
        self,
        checkpoint_id: str,
        target_thread: str,
        *,
        thread_id: str | None = None,
        branch: str | None = None,
        actor: str | None = None,
    ) -> Checkpoint:
        """Copy one checkpoint's state into another thread as a new checkpoint.

        The copy records where it came from (``origin``) and shares the stored
        values: no bytes are duplicated. Needs viewer on the source and editor
        on the target.
        """
        row = self.core.row(checkpoint_id, thread_id)
        self._require(row.thread_id, actor, Role.VIEWER, "read")
        self._require(target_thread, actor, Role.EDITOR, "write to")
        target = self.core.get_thread(target_thread)
        return self.core.create(
            target.id,
            None,
            state_of=row,
            branch=branch or target.default_branch,
            kind=CheckpointKind.MANUAL,
            title=f"shared from {row.thread_id}",
            origin={"thread": row.thread_id, "checkpoint": row.id},
        )

    def copy_thread(
        self,
        source_id: str,
        target_id: str | None = None,
        *,
        keep_ids: bool = False,
        actor: str | None = None,
    ) -> Thread:
        """Copy a whole thread (all branches, history, milestones, metadata,
        participants) to a new thread, atomically, recording its origin.

        ``keep_ids`` keeps checkpoint ids (ids are unique within a thread);
        otherwise new time-ordered ids are given in the same order. Values are
        shared, not duplicated.
        Raises NotFound (source), AlreadyExists (target).
        """
        self._require(source_id, actor, Role.VIEWER, "copy")
        source = self.core.get_thread(source_id)
        target = validate_id(target_id, "thread id") if target_id is not None else None
        id_map: dict[str, str] | None = None
        if not keep_ids:
            id_map = {}
            previous: str | None = None
            for cid in sorted(c.id for c in self.core.iter(source.id)):
                previous = id_map[cid] = new_checkpoint_id(previous)
        new_thread = target or new_id()
        self.core.repository.copy_thread(
            source.id,
            new_thread,
            created_at=now_us(),
            metadata=self.core.encode_record(dict(source.metadata), "metadata"),
            origin=self.core.encode_record({"copied_from": source.id}, "origin"),
            id_map=id_map,
        )
        if actor is not None:
            self.core.repository.set_participant(new_thread, actor, Role.OWNER.value)
        return self.core.get_thread(new_thread)

    # ------------------------------------------------------------ backups

    def backup(
        self,
        thread_ids: Sequence[str] | str,
        path: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        actor: str | None = None,
        session: Mapping[str, Any] | None = None,
    ) -> ArchiveSummary:
        """Write threads to a portable archive file (see docs/archive.md); ``session``
        is the session record the session layer adds to a session backup."""
        ids = [thread_ids] if isinstance(thread_ids, str) else builtins.list(thread_ids)
        for tid in ids:
            self._require(tid, actor, Role.VIEWER, "back up")
        return write_archive(self.core, ids, path, progress=progress, session=session)

    def verify_backup(
        self, path: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> ArchiveSummary:
        """Check an archive completely without importing it. Raises ArchiveError."""
        return verify_archive(self.core, path, progress=progress)[0]

    def restore_backup(
        self,
        path: str | os.PathLike[str],
        *,
        rename: Mapping[str, str] | None = None,
        progress: Progress | None = None,
        session_id: str | None = None,
    ) -> ArchiveSummary:
        """Import an archive: verified first, then one transaction per thread.

        Threads already present with the same checkpoints are skipped; a thread
        id that exists with different content is a Conflict unless ``rename``
        maps it to a new id. ``session_id`` puts the imported threads in that session.
        """
        return restore_archive(
            self.core, path, rename=dict(rename or {}), progress=progress, session_id=session_id
        )

    # ------------------------------------------------------------ iteration helpers

    def walk(self, thread_id: str, branch: str | None = None) -> Iterator[Checkpoint]:
        """Every checkpoint of a branch's history, newest first."""
        return iterate_pages(lambda cursor: self.history(thread_id, branch, limit=200, cursor=cursor))

    def ttl(self, checkpoint_id: str, ttl: timedelta, *, thread_id: str | None = None) -> Checkpoint:
        """Give a checkpoint an expiry ``ttl`` from now."""
        return self.core.set_expiry(checkpoint_id, us_to_datetime(now_us()) + ttl, thread_id=thread_id)

    # ------------------------------------------------------------ session support
    # The session layer reaches storage only through these (and the methods above).

    def thread_row(self, thread_id: str) -> ThreadRow:
        """A thread's stored row, with its session and its own policy fields. Raises NotFound."""
        return self.core.repository.get_thread(validate_id(thread_id, "thread id"))

    def set_thread_session(self, thread_id: str, session_id: str | None) -> ThreadRow:
        """Move a thread into a session (None: out of any). Raises NotFound (thread, session)."""
        sid = validate_id(session_id, "session id") if session_id is not None else None
        return self.core.repository.set_thread_session(validate_id(thread_id, "thread id"), sid)

    def set_thread_policy(self, thread_id: str, policy: bytes | None) -> ThreadRow:
        """Store a thread's encoded policy fields (None clears them). Raises NotFound."""
        return self.core.repository.set_thread_policy(validate_id(thread_id, "thread id"), policy)

    def create_session_row(
        self,
        session_id: str,
        *,
        metadata: bytes,
        owner: str | None,
        policy: bytes | None,
        created_at: int | None = None,
    ) -> SessionRow:
        """Raises AlreadyExists."""
        return self.core.repository.create_session(
            session_id, created_at=created_at or now_us(), metadata=metadata, owner=owner, policy=policy
        )

    def session_row(self, session_id: str) -> SessionRow:
        """Raises NotFound."""
        return self.core.repository.get_session(validate_id(session_id, "session id"))

    def session_rows(
        self, *, after: str | None = None, limit: int = 100, status: str | None = None
    ) -> builtins.list[SessionRow]:
        """Sessions ordered by id, strictly after ``after``."""
        return self.core.repository.list_sessions(after=after, limit=limit, status=status)

    def update_session_row(
        self,
        session_id: str,
        *,
        metadata: bytes | None = None,
        status: str | None = None,
        policy: bytes | Any | None = UNSET,
    ) -> SessionRow:
        """Raises NotFound."""
        return self.core.repository.update_session(
            session_id, metadata=metadata, status=status, policy=policy
        )

    def delete_session(self, session_id: str) -> GcReport:
        """Delete a session, all its threads and sync points in one transaction. Raises NotFound."""
        members = [t.id for t in iterate_pages(lambda c: self.list_threads(session_id=session_id, cursor=c))]
        report = self.core.repository.delete_session(validate_id(session_id, "session id"))
        for tid in members:
            self.core.forget_thread_caches(tid)
        return report

    def sync_point_rows(self, session_id: str) -> builtins.list[SyncPointRow]:
        """A session's sync points, oldest first. Raises NotFound (session)."""
        return self.core.repository.list_sync_points(validate_id(session_id, "session id"))

    def sync_point_row(self, session_id: str, label: str) -> SyncPointRow:
        """Raises NotFound."""
        return self.core.repository.get_sync_point(session_id, label)

    def delete_sync_point(self, session_id: str, label: str) -> None:
        """Raises NotFound."""
        self.core.repository.delete_sync_point(session_id, label)

    def checkpoint_many(
        self, requests: Sequence[Mapping[str, Any]], *, sync_point: SyncPointRow | None = None
    ) -> builtins.list[Checkpoint]:
        """Write checkpoints on several threads in one transaction (see ``core.create_many``)."""
        return self.core.create_many(requests, sync_point=sync_point)

    def checkpoint_row(self, checkpoint_id: str, thread_id: str) -> CheckpointRow:
        """A checkpoint's stored row (fields, lineage, manifest; no state). Raises NotFound."""
        return self.core.row(checkpoint_id, thread_id)

    def checkpoint_rows(self, thread_id: str) -> builtins.list[CheckpointRow]:
        """Every stored row of a thread, newest first, in one query (no state is read)."""
        return self.core.scan(thread_id, limit=100_000_000)

    def remove_checkpoints(self, thread_id: str, checkpoint_ids: Sequence[str]) -> GcReport:
        """Delete checkpoints of one thread in one transaction: survivors are re-linked to
        their nearest surviving ancestor, unreferenced bytes collected. Raises NotFound (thread)."""
        report = self.core.repository.delete_checkpoints(validate_id(thread_id, "thread id"), checkpoint_ids)
        self.core.forget_thread_caches(thread_id)
        return report

    def update_lifecycle(
        self,
        thread_id: str,
        checkpoint_ids: Sequence[str],
        *,
        status: CheckpointStatus | None = None,
        expires_at: int | Any | None = UNSET,
    ) -> int:
        """Set the status and/or expiry (microseconds, None: never) of checkpoints of one
        thread in one transaction; returns how many changed. Raises NotFound (thread)."""
        update = LifecycleUpdate(status=status, expires_at=expires_at)
        return self.core.repository.update_checkpoints(
            validate_id(thread_id, "thread id"), checkpoint_ids, update
        )

    def stats(self, thread_ids: Sequence[str] | None = None) -> Stats:
        """Aggregates over threads (all when None), computed by queries."""
        return self.core.stats(thread_ids)

    def stats_row(self, thread_ids: Sequence[str] | None, *, largest: int, per_day: bool) -> StatsRow:
        """Aggregates with the largest threads and checkpoints per day, by queries."""
        ids = [validate_id(t, "thread id") for t in thread_ids] if thread_ids is not None else None
        return self.core.repository.stats(ids, largest=largest, per_day=per_day)

    def apply_ttls(self, thread_id: str, ttls: Mapping[CheckpointKind, int | None], *, now: int) -> int:
        """Re-compute expiry from TTLs per kind in one transaction (see the storage contract)."""
        return self.core.repository.apply_ttls(validate_id(thread_id, "thread id"), ttls, now=now)

    def put_sync_point(self, row: SyncPointRow) -> None:
        """Record a sync point over existing checkpoints. Raises AlreadyExists, NotFound."""
        self.core.repository.put_sync_point(row)

    def reclaim_space(self) -> int:
        """Give space freed by deletes back to the operating system; returns the bytes."""
        return self.core.repository.reclaim_space()

    def storage_bytes(self) -> int:
        """Bytes the store occupies."""
        return self.core.repository.storage_bytes()

    # ------------------------------------------------------------ async twins (one implementation)

    acreate_thread = asyncify(create_thread)
    acheckpoint = asyncify(checkpoint)
    aget_state = asyncify(get_state)
    alatest = asyncify(latest)
    ahistory = asyncify(history)
    acreate_branch = asyncify(create_branch)
    amerge = asyncify(merge)
    arestore = asyncify(restore)
    acopy_thread = asyncify(copy_thread)
