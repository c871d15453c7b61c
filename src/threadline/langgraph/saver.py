"""``ThreadlineSaver``: LangGraph's checkpointer interface over a threadline store.

Mapping (see docs/langgraph.md):

* a LangGraph thread is a threadline thread of the same id; each subgraph namespace
  (``checkpoint_ns``) has its own threadline thread ``<thread id>␟<namespace>`` whose
  metadata names the LangGraph thread, so whole-thread operations act on all namespaces;
* a LangGraph checkpoint is a threadline checkpoint with the same id; channel values are
  top-level state keys (a growing ``messages`` list stores one message per step) and
  LangGraph's bookkeeping (versions, versions seen, timestamp) is the state key ``~lg``;
* LangGraph metadata is the checkpoint metadata; ``update_state`` checkpoints are ``manual``;
* a write continuing a checkpoint that is not the head of its branch (time travel, a new
  run from a past checkpoint) creates the branch ``fork-<checkpoint id>``;
* pending writes are stored against their checkpoint; an error write also records an
  ``error`` checkpoint (on a branch ``error/...``, sharing the failed step's state) that
  LangGraph never sees but ``threadline log`` and statistics do.

Every method is written once, synchronously; the async methods run it in a worker thread,
except ``aput``: async puts go to the saver's writer thread, which commits the puts waiting
for it in one transaction (group commit).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import hashlib
import heapq
import random
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.base import Checkpoint as LGCheckpoint
from langgraph.checkpoint.serde.types import ERROR

from threadline.core import metadata_matches
from threadline.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from threadline.langgraph.types import register_langgraph_types
from threadline.model import MAX_ID_LENGTH, CheckpointFilter, CheckpointKind
from threadline.serde import ListMemo
from threadline.storage.base import CheckpointRow, PendingWrite
from threadline.store import Store, open_store

#: Separates a LangGraph thread id from a subgraph namespace in a threadline thread id.
NS_SEP = "\u241f"
#: The state key holding LangGraph's bookkeeping; channel names starting with "~" are escaped.
BOOK = "~lg"
#: Kinds of the checkpoints LangGraph sees (error checkpoints are threadline's own record).
LG_KINDS = frozenset({CheckpointKind.AUTO, CheckpointKind.MANUAL})
_CORE_KEYS = frozenset({"v", "id", "ts", "channel_values", "channel_versions", "versions_seen"})
_PAGE = 100
#: Bytes the memos of encoded message lists may keep alive per saver (least recently used
#: threads are forgotten first): about twice the encoded size of the lists remembered.
LIST_MEMO_BYTES = 64 << 20
#: At most this many async puts are committed in one transaction.
_MAX_BATCH = 64


R = TypeVar("R")


def _threaded(fn: Callable[..., R]) -> Callable[..., Coroutine[Any, Any, R]]:
    """The async twin of a sync method, run in a worker thread (one implementation)."""

    @functools.wraps(fn)
    async def run(*args: Any, **kwargs: Any) -> R:
        return await asyncio.to_thread(fn, *args, **kwargs)

    return run


@dataclass(frozen=True)
class _Batch:
    """One put_writes call, encoded."""

    task_id: str
    special: builtins.list[PendingWrite]
    regular: builtins.list[PendingWrite]
    errors: builtins.list[Any]


@dataclass(frozen=True)
class _Put:
    """A LangGraph checkpoint ready to be written (:meth:`ThreadlineSaver.prepare`)."""

    key: str
    cid: str
    branch: str | None
    parent_id: str | None
    fields: dict[str, Any]


@dataclass(frozen=True)
class _Job:
    """An async put waiting for the writer thread, and the future its caller awaits."""

    key: str
    args: tuple[Any, ...]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[bool]


def _resolve(results: builtins.list[tuple[asyncio.Future[bool], bool | BaseException]]) -> None:
    for future, outcome in results:
        if future.done():  # cancelled by its caller
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class _Writer:
    """The thread that writes a saver's async puts, several in one transaction.

    The puts that arrive while it writes wait for it, then are prepared (encoded) and
    committed together: one transaction and one fsync for all of them (group commit); each
    caller still gets its own result or error (:meth:`ThreadlineSaver.write_checkpoints`).
    A batch holds at most one put per threadline thread, since a thread's next put
    continues the one before it. One thread does all this work, so Python threads do not
    contend for the interpreter lock and SQLite keeps one connection with a warm cache;
    and a batch wakes each event loop once, not once per put.
    """

    def __init__(self, saver: ThreadlineSaver) -> None:
        self._saver = saver
        self._lock = threading.Lock()
        self._queue: builtins.list[_Job] = []
        self._executor: ThreadPoolExecutor | None = None
        self._draining = False

    def submit(self, job: _Job) -> None:
        with self._lock:
            self._queue.append(job)
            if not self._draining:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(1, thread_name_prefix="threadline-saver")
                self._executor.submit(self._drain)
                self._draining = True

    def close(self) -> None:
        """Write what is queued and stop the thread (a later put starts a new one)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def _take(self) -> builtins.list[_Job]:
        with self._lock:
            batch: builtins.list[_Job] = []
            rest: builtins.list[_Job] = []
            keys: set[str] = set()
            for job in self._queue:
                if job.future.done():  # cancelled before it was written
                    continue
                if job.key in keys or len(batch) >= _MAX_BATCH:
                    rest.append(job)
                else:
                    keys.add(job.key)
                    batch.append(job)
            self._queue = rest
            if not batch:
                self._draining = False
            return batch

    def _drain(self) -> None:
        while batch := self._take():
            outcomes: builtins.list[bool | BaseException]
            try:
                outcomes = self._write(batch)
            except BaseException as exc:  # handed to every caller of the batch
                outcomes = [exc] * len(batch)
            by_loop: dict[asyncio.AbstractEventLoop, builtins.list[Any]] = {}
            for job, outcome in zip(batch, outcomes, strict=True):
                by_loop.setdefault(job.loop, []).append((job.future, outcome))
            for loop, results in by_loop.items():
                with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
                    loop.call_soon_threadsafe(_resolve, results)

    def _write(self, jobs: builtins.list[_Job]) -> builtins.list[bool | BaseException]:
        outcomes: builtins.list[bool | BaseException] = []
        puts: builtins.list[_Put] = []
        for job in jobs:
            try:
                puts.append(self._saver.prepare(*job.args))
                outcomes.append(True)
            except Exception as exc:
                outcomes.append(exc)
        written = iter(self._saver.write_checkpoints(puts))
        return [next(written) if outcome is True else outcome for outcome in outcomes]


class _ListMemos:
    """The last encoding of each message list, per (threadline thread, channel): what makes
    a put re-encode only the messages that are new or changed (Serializer.encode_models)."""

    def __init__(self, limit: int = LIST_MEMO_BYTES) -> None:
        self.limit = limit
        self._memos: dict[tuple[str, str], ListMemo] = {}  # in order of use
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> ListMemo | None:
        return self._memos.get(key)

    def put(self, key: tuple[str, str], memo: ListMemo | None) -> None:
        with self._lock:
            old = self._memos.pop(key, None)
            self._size -= old.size if old is not None else 0
            if memo is None:
                return
            self._memos[key] = memo
            self._size += memo.size
            while self._size > self.limit and len(self._memos) > 1:
                self._size -= self._memos.pop(next(iter(self._memos))).size

    def forget(self, thread: str) -> None:
        with self._lock:
            for key in [k for k in self._memos if k[0] == thread]:
                self._size -= self._memos.pop(key).size


def thread_key(thread_id: str, checkpoint_ns: str = "") -> str:
    """The threadline thread holding one namespace of a LangGraph thread."""
    if not isinstance(thread_id, str) or not thread_id:
        raise InvalidInput(f"LangGraph thread_id must be a non-empty string, got {thread_id!r}")
    if NS_SEP in thread_id:
        raise InvalidInput(f"LangGraph thread_id {thread_id!r} must not contain {NS_SEP!r}")
    if not checkpoint_ns:
        return thread_id
    key = f"{thread_id}{NS_SEP}{checkpoint_ns}"
    if len(key) > MAX_ID_LENGTH:  # deep subgraph paths: name the namespace by its hash
        key = f"{thread_id}{NS_SEP}#{hashlib.blake2b(checkpoint_ns.encode(), digest_size=12).hexdigest()}"
    return key


def _escape(channel: str) -> str:
    return "~" + channel if channel.startswith("~") else channel


def _unescape(key: str) -> str:
    return key[1:] if key.startswith("~") else key


_PutArgs = tuple[str, str, str | None, LGCheckpoint, dict[str, Any]]


def _put_args(config: RunnableConfig, checkpoint: LGCheckpoint, metadata: CheckpointMetadata) -> _PutArgs:
    """(thread id, namespace, parent checkpoint id, checkpoint, metadata) of a put."""
    conf = config["configurable"]
    meta = dict(get_serializable_checkpoint_metadata(config, metadata))
    return conf["thread_id"], conf.get("checkpoint_ns", ""), conf.get("checkpoint_id"), checkpoint, meta


def _written(args: _PutArgs) -> RunnableConfig:
    """The config LangGraph gets back from a put."""
    thread_id, ns, _, checkpoint, _ = args
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint["id"]}}


def _pack_ts(ts: Any) -> Any:
    """ISO timestamps that round-trip exactly are stored as datetimes (12 bytes, not 32)."""
    if isinstance(ts, str):
        try:
            moment = datetime.fromisoformat(ts)
        except ValueError:
            return ts
        if moment.isoformat() == ts:
            return moment
    return ts


class ThreadlineSaver(BaseCheckpointSaver[int]):
    """A LangGraph checkpointer storing into a threadline store (memory, SQLite, PostgreSQL).

    ``ThreadlineSaver(store)`` uses an open store (the caller closes it);
    :meth:`from_url` opens one that :meth:`close` (or leaving the ``with`` / ``async with``
    block) closes. LangGraph and langchain-core types are registered on the store's
    serializer (:func:`~threadline.langgraph.register_langgraph_types`); register your own
    state classes on ``saver.store.serializer``.
    """

    def __init__(self, store: Store, *, owns_store: bool = False) -> None:
        super().__init__()
        self.store = store
        self.core = store.checkpoints
        self.serializer = register_langgraph_types(store.serializer)
        self._owns_store = owns_store
        self._known: set[str] = set()
        #: Writes LangGraph sends before the put of their checkpoint has committed (it puts
        #: checkpoints in the background): applied by that put. (thread, checkpoint) -> batches
        self._early: dict[tuple[str, str], builtins.list[_Batch]] = {}
        self._inflight: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        #: threadline thread -> (last checkpoint written, its branch): the usual parent of the next put
        self._last: dict[str, tuple[str, str]] = {}
        self._lists = _ListMemos()
        self._writer = _Writer(self)

    @classmethod
    def from_url(cls, url: str | None = None, **options: Any) -> ThreadlineSaver:
        """Open the store at ``url`` (``memory://``, ``sqlite:///file.db``,
        ``sqlite:///file.db?synchronous=normal``, ``postgresql://...``) and a saver over it."""
        return cls(open_store(url, **options), owns_store=True)

    def close(self) -> None:
        """Finish the async puts under way, and close the store if this saver opened it.
        Idempotent."""
        self._writer.close()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> ThreadlineSaver:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> ThreadlineSaver:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------ threads and namespaces

    def _ensure_thread(self, thread_id: str, checkpoint_ns: str) -> str:
        key = thread_key(thread_id, checkpoint_ns)
        if key not in self._known:
            with contextlib.suppress(AlreadyExists):
                self.core.create_thread(
                    key, metadata={"langgraph": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns}}
                )
            self._known.add(key)
        return key

    def namespaces(self, thread_id: str) -> builtins.list[tuple[str, str]]:
        """(checkpoint_ns, threadline thread id) of every namespace a LangGraph thread has."""
        root = thread_key(thread_id)
        found: builtins.list[tuple[str, str]] = []
        prefix = root + NS_SEP
        with self.core.snapshot():
            try:
                self.core.get_thread(root)
                found.append(("", root))
            except NotFound:
                pass
            cursor: str | None = prefix
            while cursor is not None:
                page = self.core.list_threads(cursor=cursor, limit=_PAGE)
                for thread in page.items:
                    if not thread.id.startswith(prefix):
                        return found
                    info = thread.metadata.get("langgraph")
                    if isinstance(info, dict) and info.get("thread_id") == thread_id:
                        found.append((str(info.get("checkpoint_ns", "")), thread.id))
                cursor = page.next_cursor
        return found

    def _all_namespaces(self) -> Iterator[tuple[str, str, str]]:
        """(LangGraph thread id, namespace, threadline thread) of every LangGraph thread."""
        cursor: str | None = None
        while True:
            page = self.core.list_threads(cursor=cursor, limit=500)
            for thread in page.items:
                info = thread.metadata.get("langgraph")
                if isinstance(info, dict) and isinstance(info.get("thread_id"), str):
                    yield info["thread_id"], str(info.get("checkpoint_ns", "")), thread.id
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def _forget(self, key: str) -> None:
        self._known.discard(key)
        self._last.pop(key, None)
        self._lists.forget(key)

    # ------------------------------------------------------------ encoding

    def _encode_state(
        self, key: str, checkpoint: LGCheckpoint, lg_parent: str | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(state: one key per channel, book: LangGraph's bookkeeping). The book changes
        at every step, so it travels in the checkpoint's header (metadata key ``~lg``),
        not as a stored value of its own. A list of messages is handed over already
        encoded, item by item (see :meth:`_encode_list`)."""
        state = {
            _escape(k): self._encode_list(key, k, v) if type(v) is list else v
            for k, v in checkpoint["channel_values"].items()
        }
        book: dict[str, Any] = {
            "v": checkpoint["v"],
            "ts": _pack_ts(checkpoint["ts"]),
            "cv": checkpoint["channel_versions"],
            "vs": checkpoint["versions_seen"],
        }
        extra = {k: v for k, v in checkpoint.items() if k not in _CORE_KEYS}
        if extra:
            book["x"] = extra
        if lg_parent is not None:
            book["p"] = lg_parent
        return state, book

    def _encode_list(self, key: str, channel: str, value: builtins.list[Any]) -> builtins.list[Any]:
        """A list of langchain messages as the list of their extension values (the bytes
        the store writes for them, so nothing else changes), re-encoding only the messages
        that are new or whose state changed since this channel's last put; any other list
        as it is."""
        memo_key = (key, channel)
        encoded = self.serializer.encode_models(value, self._lists.get(memo_key))
        if encoded is None:
            self._lists.put(memo_key, None)
            return value
        exts, memo = encoded
        self._lists.put(memo_key, memo)
        return exts

    def _tuple(
        self,
        thread_id: str,
        checkpoint_ns: str,
        row: CheckpointRow,
        writes: Sequence[PendingWrite],
        state: dict[str, Any],
    ) -> CheckpointTuple:
        metadata = dict(self.core.describe(row).metadata)
        book = metadata.pop(BOOK, None) or {}
        ts = book.get("ts", "")
        checkpoint: dict[str, Any] = {
            "v": book.get("v", 1),
            "id": row.id,
            "ts": ts.isoformat() if isinstance(ts, datetime) else ts,
            "channel_values": {_unescape(k): v for k, v in state.items()},
            "channel_versions": book.get("cv", {}),
            "versions_seen": book.get("vs", {}),
            **book.get("x", {}),
        }
        parent = book.get("p", row.parent_id)
        base = {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns}
        return CheckpointTuple(
            config={"configurable": {**base, "checkpoint_id": row.id}},
            checkpoint=checkpoint,  # type: ignore[arg-type]
            metadata=metadata,  # type: ignore[arg-type]
            parent_config={"configurable": {**base, "checkpoint_id": parent}} if parent else None,
            pending_writes=self._decode_writes(writes),
        )

    def _decode_writes(self, writes: Sequence[PendingWrite]) -> builtins.list[tuple[str, str, Any]]:
        ordered = sorted(writes, key=lambda w: writes_sort_key(w.task_path, w.task_id, w.idx))
        loads, unpack = self.serializer.loads, self.serializer.unpack
        return [(w.task_id, w.channel, loads(unpack(w.value))) for w in ordered]

    def _writes_of(self, key: str, ids: Sequence[str]) -> dict[str, builtins.list[PendingWrite]]:
        return self.store.repository.get_writes(key, ids) if ids else {}

    # ------------------------------------------------------------ reads

    def get_tuple(self, /, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names, or the newest of its thread and namespace."""
        conf = config["configurable"]
        thread_id, ns = conf["thread_id"], conf.get("checkpoint_ns", "")
        key = thread_key(thread_id, ns)
        checkpoint_id = get_checkpoint_id(config)
        with self.core.snapshot():  # one read transaction for the row, its writes and its state
            try:
                if checkpoint_id:
                    row = self.core.row(checkpoint_id, key)
                    if row.kind not in LG_KINDS:
                        return None
                else:
                    rows = self.core.scan(key, CheckpointFilter(kinds=LG_KINDS), limit=1)
                    if not rows:
                        return None
                    row = rows[0]
                writes = self._writes_of(key, [row.id]).get(row.id, [])
                state = self.core.materialize(row)
            except (NotFound, InvalidInput):
                return None
        return self._tuple(thread_id, ns, row, writes, state)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first: of one namespace (``checkpoint_ns`` given), of every
        namespace of a thread, or of every LangGraph thread (``config`` None)."""
        if limit is not None and limit <= 0:
            return
        if config is None:
            targets = [(tid, ns, key) for tid, ns, key in self._all_namespaces()]
        else:
            conf = config["configurable"]
            thread_id = conf["thread_id"]
            if "checkpoint_ns" in conf and conf["checkpoint_ns"] is not None:
                targets = [(thread_id, conf["checkpoint_ns"], thread_key(thread_id, conf["checkpoint_ns"]))]
            else:
                targets = [(thread_id, ns, key) for ns, key in self.namespaces(thread_id)]
        wanted = CheckpointFilter.build(metadata=filter or None, kinds=builtins.list(LG_KINDS))
        cursor = get_checkpoint_id(before) if before else None
        only = get_checkpoint_id(config) if config else None
        streams = [self._rows(t, wanted, cursor, only, limit) for t in targets]
        merged = (
            streams[0] if len(streams) == 1 else heapq.merge(*streams, key=lambda e: e[2].id, reverse=True)
        )
        for count, (tid, ns, row, writes, state) in enumerate(merged, 1):
            yield self._tuple(tid, ns, row, writes, state)
            if limit is not None and count >= limit:
                return

    def _rows(
        self,
        target: tuple[str, str, str],
        wanted: CheckpointFilter,
        cursor: str | None,
        only: str | None,
        limit: int | None,
    ) -> Iterator[tuple[str, str, CheckpointRow, builtins.list[PendingWrite], dict[str, Any]]]:
        """One namespace's matching rows, newest first, a page at a time with their writes
        and states: each page read in one snapshot, never held open while the caller iterates."""
        thread_id, ns, key = target
        size = min(limit, _PAGE) if limit else _PAGE
        while True:
            try:
                with self.core.snapshot():
                    page = self._page(key, wanted, cursor, only, size)
                    writes = self._writes_of(key, [r.id for r in page])
                    states = self.core.materialize_many(page)  # shared values decoded once per page
            except NotFound:
                return
            for row, state in zip(page, states, strict=True):
                yield thread_id, ns, row, writes.get(row.id, []), state
            if only is not None or len(page) < size:
                return
            cursor, size = page[-1].id, _PAGE

    def _page(
        self, key: str, wanted: CheckpointFilter, cursor: str | None, only: str | None, size: int
    ) -> builtins.list[CheckpointRow]:
        if only is None:
            return self.core.scan(key, wanted, limit=size, cursor=cursor)
        row = self.core.row(only, key)
        if row.kind not in LG_KINDS or (cursor is not None and row.id >= cursor):
            return []
        if wanted.metadata and not metadata_matches(self.core.describe(row).metadata, wanted.metadata):
            return []
        return [row]

    # ------------------------------------------------------------ writes

    def put(
        self,
        /,
        config: RunnableConfig,
        checkpoint: LGCheckpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint as the child of ``config``'s checkpoint (a fork when that one
        is not the head of its branch any more)."""
        args = _put_args(config, checkpoint, metadata)
        self.write_checkpoint(*args)
        return _written(args)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: LGCheckpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """:meth:`put`, committed by the saver's writer thread together with the other async
        puts waiting for it (group commit: one transaction and one fsync for all of them)."""
        args = _put_args(config, checkpoint, metadata)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._writer.submit(_Job(thread_key(args[0], args[1]), args, loop, future))
        await future
        return _written(args)

    def write_checkpoint(
        self,
        thread_id: str,
        checkpoint_ns: str,
        parent_id: str | None,
        checkpoint: LGCheckpoint,
        metadata: Mapping[str, Any],
    ) -> bool:
        """Store one LangGraph checkpoint with exactly this metadata (used by :meth:`put`
        and the importers). Returns False when a checkpoint with its id was already stored."""
        outcome = self.write_checkpoints(
            [self.prepare(thread_id, checkpoint_ns, parent_id, checkpoint, metadata)]
        )[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def prepare(
        self,
        thread_id: str,
        checkpoint_ns: str,
        parent_id: str | None,
        checkpoint: LGCheckpoint,
        metadata: Mapping[str, Any],
    ) -> _Put:
        """A LangGraph checkpoint as a threadline write: its thread (created if new), the
        branch it continues and its encoded state."""
        key = self._ensure_thread(thread_id, checkpoint_ns)
        kind = CheckpointKind.MANUAL if metadata.get("source") in ("update", "fork") else CheckpointKind.AUTO
        branch: str | None = "main"
        lg_parent: str | None = None
        if parent_id is not None:
            last = self._last.get(key)
            if last is not None and last[0] == parent_id:
                branch = last[1]
            else:
                try:
                    branch = self.core.row(parent_id, key).branch
                except NotFound:  # a parent this store never saw: keep LangGraph's link as data
                    branch, lg_parent, parent_id = None, parent_id, None
        state, book = self._encode_state(key, checkpoint, lg_parent)
        fields = {
            "state": state,
            "kind": kind,
            "metadata": {**metadata, BOOK: book},
            "checkpoint_id": checkpoint["id"],
        }
        return _Put(key, checkpoint["id"], branch, parent_id, fields)

    def write_checkpoints(self, puts: Sequence[_Put]) -> builtins.list[bool | Exception]:
        """Write prepared checkpoints: for each, True, False (its id was already stored) or
        the error that made it fail. Several appends are tried in one transaction first;
        when that fails, nothing of it is stored and each is written alone, so an error
        (a conflict, say) fails only its own write."""
        with self._lock:
            self._inflight.update((p.key, p.cid) for p in puts)
        outcomes: builtins.list[bool | Exception] = []
        try:
            if len(puts) > 1 and all(p.branch is not None for p in puts):
                with contextlib.suppress(Exception):
                    stored = self.core.create_many(
                        [
                            {"thread_id": p.key, "branch": p.branch, "expected_head": p.parent_id, **p.fields}
                            for p in puts
                        ]
                    )
                    for p, row in zip(puts, stored, strict=True):
                        self._last[p.key] = (row.id, row.branch)
                    outcomes = [True] * len(puts)
            if not outcomes:
                for p in puts:
                    try:
                        outcomes.append(self._create(p))
                    except Exception as exc:
                        outcomes.append(exc)
        finally:
            for i, p in enumerate(puts):
                with self._lock:
                    self._inflight.discard((p.key, p.cid))
                    early = self._early.pop((p.key, p.cid), [])
                for batch in early:
                    try:
                        self._apply_writes(p.key, p.cid, batch)
                    except Exception as exc:
                        if i < len(outcomes) and not isinstance(outcomes[i], Exception):
                            outcomes[i] = exc
        return outcomes

    def _create(self, p: _Put) -> bool:
        """Append to the branch the put continues; fork when it moved on (or has no head to
        continue); False when the checkpoint was already stored."""
        try:
            try:
                if p.branch is None:
                    raise Conflict("no branch to continue")
                stored = self.core.create(p.key, branch=p.branch, expected_head=p.parent_id, **p.fields)
            except (Conflict, NotFound):
                name = f"fork-{p.cid}" if p.parent_id is not None else f"root-{p.cid}"
                stored = self.core.create(p.key, branch=name, create_branch_from=p.parent_id, **p.fields)
        except (AlreadyExists, Conflict):
            if self._exists(p.key, p.cid):
                return False
            raise
        self._last[p.key] = (stored.id, stored.branch)
        return True

    def _exists(self, key: str, checkpoint_id: str) -> bool:
        try:
            self.core.row(checkpoint_id, key)
            return True
        except NotFound:
            return False

    def put_writes(
        self,
        /,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's intermediate writes: special channels (error, interrupt, resume,
        scheduled) replace what the task wrote before, other writes are kept once."""
        conf = config["configurable"]
        thread_id, ns, cid = conf["thread_id"], conf.get("checkpoint_ns", ""), conf["checkpoint_id"]
        key = thread_key(thread_id, ns)
        special: builtins.list[PendingWrite] = []
        regular: builtins.list[PendingWrite] = []
        for idx, (channel, value) in enumerate(writes):
            stored = repr(value) if isinstance(value, BaseException) else value
            data = self.serializer.pack(self.serializer.dumps(stored, path=f"writes[{channel!r}]"))
            write = PendingWrite(task_id, WRITES_IDX_MAP.get(channel, idx), channel, data, task_path)
            (special if channel in WRITES_IDX_MAP else regular).append(write)
        errors = [value for channel, value in writes if channel == ERROR]
        batch = _Batch(task_id, special, regular, errors)
        try:
            self._apply_writes(key, cid, batch)
        except NotFound:
            with self._lock:
                if (key, cid) in self._inflight or not self._exists(key, cid):
                    # its put has not committed yet: that put applies the batch
                    self._early.setdefault((key, cid), []).append(batch)
                    return
            self._apply_writes(key, cid, batch)

    def _apply_writes(self, key: str, cid: str, batch: _Batch) -> None:
        self.store_writes(key, cid, batch.special, upsert=True)
        self.store_writes(key, cid, batch.regular, upsert=False)
        for error in batch.errors:
            self._record_error(key, cid, batch.task_id, error)

    def store_writes(
        self, key: str, checkpoint_id: str, writes: Sequence[PendingWrite], *, upsert: bool
    ) -> None:
        """Store already encoded writes against a checkpoint of a threadline thread."""
        if writes:
            self.store.repository.put_writes(key, checkpoint_id, writes, upsert=upsert)

    def _record_error(self, key: str, checkpoint_id: str, task_id: str, error: Any) -> None:
        """An ``error`` checkpoint sharing the failed step's state, on its own branch."""
        digest = hashlib.blake2b(task_id.encode(), digest_size=4).hexdigest()
        message = (str(error) if isinstance(error, BaseException) else "") or repr(error)
        with contextlib.suppress(AlreadyExists, Conflict):  # the same task failed again at this step
            self.core.create(
                key,
                None,
                state_of=self.core.row(checkpoint_id, key),
                branch=f"error/{checkpoint_id}/{digest}",
                create_branch_from=checkpoint_id,
                kind=CheckpointKind.ERROR,
                error_message=message[:4000],
                error_type=type(error).__name__ if isinstance(error, BaseException) else "error",
                metadata={"langgraph_task_id": task_id, "failed_checkpoint": checkpoint_id},
            )

    # ------------------------------------------------------------ deletion and copies

    def delete_thread(self, /, thread_id: str) -> None:
        """Delete a LangGraph thread: every namespace, checkpoint and write."""
        for _, key in self.namespaces(thread_id):
            with contextlib.suppress(NotFound):
                self.core.delete_thread(key)
            self._forget(key)

    def delete_for_runs(self, /, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) whose metadata ``run_id`` is one of ``run_ids``."""
        runs = set(run_ids)
        if not runs:
            return
        for _, _, key in builtins.list(self._all_namespaces()):
            doomed = [cp.id for cp in self.core.iter(key) if cp.metadata.get("run_id") in runs]
            if doomed:
                self.core.delete(doomed, thread_id=key)
                self._last.pop(key, None)

    def copy_thread(self, /, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every namespace of a thread (checkpoints with their ids, writes, branches) to a
        new LangGraph thread; values are shared, not duplicated. Raises AlreadyExists when
        the target thread has checkpoints."""
        if self.namespaces(target_thread_id):
            raise AlreadyExists(f"LangGraph thread {target_thread_id!r} already exists; delete it first")
        for ns, key in self.namespaces(source_thread_id):
            target = thread_key(target_thread_id, ns)
            self.store.threads.copy_thread(key, target, keep_ids=True)
            self.core.update_thread_metadata(
                target, {"langgraph": {"thread_id": target_thread_id, "checkpoint_ns": ns}}
            )

    def prune(self, /, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``keep_latest``: keep only the newest checkpoint of each namespace (with its writes);
        ``delete``: delete the threads."""
        if strategy not in ("keep_latest", "delete"):
            raise InvalidInput(f"unknown prune strategy {strategy!r}; use 'keep_latest' or 'delete'")
        for thread_id in thread_ids:
            if strategy == "delete":
                self.delete_thread(thread_id)
                continue
            for _, key in self.namespaces(thread_id):
                latest = self.core.scan(key, CheckpointFilter(kinds=LG_KINDS), limit=1)
                doomed = [cp.id for cp in self.core.iter(key) if not latest or cp.id != latest[0].id]
                if doomed:
                    self.core.delete(doomed, thread_id=key)
                    self._last.pop(key, None)

    # ------------------------------------------------------------ versions

    def get_next_version(self, current: Any, channel: None = None) -> Any:
        """Integer versions (a few bytes per channel per checkpoint). A thread imported with
        LangGraph's string versions (``"000…05.0.123"``) continues in that format."""
        if current is None:
            return 1
        if isinstance(current, str):
            return f"{int(current.split('.')[0]) + 1:032}.{random.random():016}"
        return int(current) + 1

    # ------------------------------------------------------------ async twins (one implementation)

    aget_tuple = _threaded(get_tuple)
    aput_writes = _threaded(put_writes)
    adelete_thread = _threaded(delete_thread)
    adelete_for_runs = _threaded(delete_for_runs)
    acopy_thread = _threaded(copy_thread)
    aprune = _threaded(prune)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """:meth:`list`, run in a worker thread (collected, then yielded)."""
        items = await asyncio.to_thread(
            lambda: builtins.list(self.list(config, filter=filter, before=before, limit=limit))
        )
        for item in items:
            yield item


__all__ = ["BOOK", "NS_SEP", "ThreadlineSaver", "thread_key"]
