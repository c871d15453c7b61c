"""Command-line references to objects, with errors that say what to type instead.

Checkpoints are named by a unique prefix of their id (like git); threads and
branches by name, with close matches suggested when one is unknown.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterable, Iterator
from itertools import islice

from threadline.errors import NotFound
from threadline.model import Branch, Checkpoint, Session, SyncPoint, Thread, iterate_pages
from threadline.store import Store

_MAX_THREADS_FOR_SUGGESTIONS = 10_000


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """'; did you mean a, b?' for close matches, else ''."""
    close = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def all_threads(store: Store, session: str | None = None) -> Iterator[Thread]:
    """Every thread (of one session), by id, fetched in pages."""
    return iterate_pages(
        lambda cursor: store.threads.list_threads(session_id=session, cursor=cursor, limit=500)
    )


def thread(store: Store, thread_id: str) -> Thread:
    """The thread, or NotFound suggesting similar thread ids."""
    try:
        return store.threads.get_thread(thread_id)
    except NotFound:
        hint = did_you_mean(
            thread_id, (t.id for t in islice(all_threads(store), _MAX_THREADS_FOR_SUGGESTIONS))
        )
        raise NotFound(
            f"thread {thread_id!r} does not exist{hint or '; list them with: threadline threads'}"
        ) from None


def branch(store: Store, thread_id: str, name: str) -> Branch:
    """A branch of a thread, or NotFound suggesting similar names."""
    names = [b.name for b in store.threads.branches(thread(store, thread_id).id)]
    if name not in names:
        hint = did_you_mean(name, names) or f"; its branches: {', '.join(names)}"
        raise NotFound(f"branch {name!r} does not exist in thread {thread_id!r}{hint}")
    return store.threads.get_branch(thread_id, name)


def all_sessions(store: Store) -> Iterator[Session]:
    """Every session, by id, fetched in pages."""
    return iterate_pages(lambda cursor: store.sessions.list_sessions(cursor=cursor, limit=500))


def session(store: Store, session_id: str) -> Session:
    """The session, or NotFound suggesting similar session ids."""
    try:
        return store.sessions.get_session(session_id)
    except NotFound:
        hint = did_you_mean(
            session_id, (s.id for s in islice(all_sessions(store), _MAX_THREADS_FOR_SUGGESTIONS))
        )
        raise NotFound(
            f"session {session_id!r} does not exist{hint or '; list them with: threadline sessions'}"
        ) from None


def sync_point(store: Store, session_id: str, label: str) -> SyncPoint:
    """A sync point of a session, or NotFound suggesting similar labels."""
    labels = [p.label for p in store.sessions.list_sync_points(session(store, session_id).id)]
    if label not in labels:
        hint = did_you_mean(label, labels) or (
            f"; its sync points: {', '.join(labels)}" if labels else "; the session has no sync points"
        )
        raise NotFound(f"sync point {label!r} does not exist in session {session_id!r}{hint}")
    return store.sessions.get_sync_point(session_id, label)


def checkpoint_id(store: Store, prefix: str) -> str:
    """The full id of the checkpoint a unique id prefix names.

    Raises InvalidInput (ambiguous, listing candidates) or NotFound (suggesting
    ids that share the longest prefix with it, found by shortening it).
    """
    try:
        return store.checkpoints.find(prefix)
    except NotFound:
        raise NotFound(f"no checkpoint id starts with {prefix!r}{_near_ids(store, prefix)}") from None


def _near_ids(store: Store, prefix: str) -> str:
    text = prefix.strip().lower()
    # Shorten the prefix until something matches: one indexed lookup each, at most ~30.
    for end in range(len(text) - 1, 7, -1):
        found = store.checkpoints.ids_starting_with(text[:end], limit=3)
        if found:
            return "; ids close to it: " + ", ".join(found)
    return ""


def checkpoint(store: Store, prefix: str, thread_id: str | None = None) -> Checkpoint:
    """The checkpoint a unique id prefix names (in ``thread_id`` when given)."""
    if thread_id is not None:
        thread(store, thread_id)
    return store.threads.get(checkpoint_id(store, prefix), thread_id=thread_id)


def abbreviations(store: Store, ids: Iterable[str], minimum: int = 13) -> dict[str, str]:
    """Shortest prefixes (at least ``minimum`` characters) that name each id uniquely in the store.

    Time-ordered ids share their leading characters for a minute, so the
    length is chosen among the shown ids first, then checked against the store.
    """
    wanted = sorted(set(ids))
    length = minimum
    for a, b in itertools.pairwise(wanted):
        common = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
        length = max(length, common + 1)
    result: dict[str, str] = {}
    for cid in wanted:
        end = length
        while end < len(cid):
            if cid[end - 1] != "-" and store.checkpoints.ids_starting_with(cid[:end], limit=2) == [cid]:
                break
            end += 1
        result[cid] = cid[:end]
    return result
