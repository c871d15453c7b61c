"""The JSON documents ``--json`` prints: one builder per kind of object, so every
command spells an object with the same keys (documented in the README)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from threadline.archive import ArchiveSummary
from threadline.model import POLICY_FIELDS, Branch, Checkpoint, Policy, Session, Stats, SyncPoint, Thread
from threadline.sessions import CleanupResult


def checkpoint_doc(cp: Checkpoint) -> dict[str, Any]:
    return {
        "id": cp.id,
        "thread_id": cp.thread_id,
        "branch": cp.branch,
        "parent_id": cp.parent_id,
        "merge_parent_id": cp.merge_parent_id,
        "kind": cp.kind.value,
        "status": cp.status.value,
        "created_at": cp.created_at,
        "expires_at": cp.expires_at,
        "title": cp.title,
        "description": cp.description,
        "tags": list(cp.tags),
        "metadata": dict(cp.metadata),
        "error_message": cp.error_message,
        "error_type": cp.error_type,
        "milestone": cp.milestone,
        "protected": cp.protected,
        "restored_from": cp.restored_from,
        "sync_point": cp.sync_point,
        "origin": dict(cp.origin) if cp.origin else None,
        "restore_count": cp.restore_count,
        "logical_size": cp.logical_size,
        "stored_size": cp.stored_size,
    }


def thread_doc(thread: Thread, stats: Stats) -> dict[str, Any]:
    return {
        "id": thread.id,
        "session_id": thread.session_id,
        "created_at": thread.created_at,
        "default_branch": thread.default_branch,
        "metadata": dict(thread.metadata),
        "origin": dict(thread.origin) if thread.origin else None,
        "checkpoints": stats.checkpoints,
        "branches": stats.branches,
        "stored_bytes": stats.stored_bytes,
        "newest": stats.newest,
    }


def branch_doc(branch: Branch, default: bool) -> dict[str, Any]:
    return {
        "thread_id": branch.thread_id,
        "name": branch.name,
        "head": branch.head,
        "created_at": branch.created_at,
        "base": branch.base,
        "default": default,
    }


def stats_doc(s: Stats) -> dict[str, Any]:
    return {
        "threads": s.threads,
        "checkpoints": s.checkpoints,
        "by_kind": dict(s.by_kind),
        "by_status": dict(s.by_status),
        "logical_bytes": s.logical_bytes,
        "stored_bytes": s.stored_bytes,
        "sharing_ratio": round(s.sharing_ratio, 3),
        "oldest": s.oldest,
        "newest": s.newest,
        "restores": s.restores,
        "branches": s.branches,
        "milestones": s.milestones,
    }


def archive_doc(file: str | Path, summary: ArchiveSummary) -> dict[str, Any]:
    return {
        "file": str(file),
        "session": summary.session["id"] if summary.session else None,
        "format_version": summary.format_version,
        "threads": list(summary.threads),
        "checkpoints": summary.checkpoints,
        "values": summary.values,
        "bytes": summary.bytes,
        "imported": list(summary.imported),
        "skipped": list(summary.skipped),
    }


def seconds(value: timedelta | None) -> float | int | None:
    """A duration in JSON: seconds (whole when it is), None for "never"."""
    if value is None:
        return None
    total = value.total_seconds()
    return int(total) if total.is_integer() else total


def policy_doc(policy: Policy | dict[str, Any]) -> dict[str, Any]:
    """A policy (or some overridden fields of one): durations in seconds, null for never/no limit."""
    fields = policy if isinstance(policy, dict) else {name: getattr(policy, name) for name in POLICY_FIELDS}
    return {
        name: (seconds(value) if isinstance(value, timedelta) or value is None else value)
        for name, value in fields.items()
    }


def session_doc(session: Session, stats: Stats) -> dict[str, Any]:
    return {
        "id": session.id,
        "status": session.status.value,
        "created_at": session.created_at,
        "owner": session.owner,
        "metadata": dict(session.metadata),
        "policy": policy_doc(session.policy),
        "threads": stats.threads,
        "checkpoints": stats.checkpoints,
        "stored_bytes": stats.stored_bytes,
        "newest": stats.newest,
    }


def sync_point_doc(point: SyncPoint) -> dict[str, Any]:
    return {
        "session_id": point.session_id,
        "label": point.label,
        "created_at": point.created_at,
        "members": dict(point.members),
        "metadata": dict(point.metadata),
    }


def cleanup_doc(result: CleanupResult, scope: dict[str, str | None]) -> dict[str, Any]:
    return {
        "scope": scope,
        "dry_run": result.dry_run,
        "ok": result.ok,
        "deleted": len(result.deleted),
        "expired": len(result.expired),
        "freed_bytes": result.freed_bytes,
        "reclaimed_bytes": result.reclaimed_bytes,
        "threads": [
            {
                "thread": t.thread_id,
                "deleted": list(t.deleted),
                "expired": list(t.expired),
                "freed_bytes": t.freed_bytes,
                "error": t.error,
            }
            for t in result.threads
        ],
    }
