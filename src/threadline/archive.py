"""Backup archives: a portable, versioned, checksummed file of threads.

Format (version 1), documented in docs/archive.md::

    magic  b"TLARCHV"  + format version (1 byte)
    record tag (1 byte) + payload length (4 bytes, big endian) + payload (msgpack)
    ...
    end    tag b"Z" whose payload holds the record count and the SHA-256 of
           every byte before it

Record tags: ``H`` header, ``V`` value (a blob or a list item, addressed by the
blake2b-128 hash of its serialized bytes, stored framed as in a store), ``L`` a
list (its item hashes, in order), ``T`` a thread (row, branches,
participants), ``C`` a checkpoint (row and manifest). Every value is written
once per archive; a record may only refer to records before it.

Reading verifies everything (magic, version, lengths, record shapes, value
hashes, references, duplicates, the final checksum, no trailing bytes) in a
first streaming pass, before anything is written; import then reads each
thread's records again and stores the thread in one transaction.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

import ormsgpack

from threadline.core import CheckpointDomainService, blob_hash, random_list_id
from threadline.errors import (
    AlreadyExists,
    ArchiveError,
    Conflict,
    LimitExceeded,
    NotFound,
    SerializationError,
    ThreadlineError,
)
from threadline.model import (
    KIND_CODES,
    KINDS_BY_CODE,
    STATUS_CODES,
    STATUSES_BY_CODE,
    now_us,
    validate_checkpoint_id,
    validate_id,
    validate_name,
)
from threadline.serde import FLAG_ENCRYPTED
from threadline.storage.base import (
    BlobRef,
    BranchRow,
    CheckpointRow,
    InlineRef,
    ListAppend,
    ListRef,
    Manifest,
    NewBlob,
    Ref,
    ThreadRow,
)

MAGIC = b"TLARCHV"
FORMAT_VERSION = 1
MAX_RECORD = 256 << 20
_HEAD = struct.Struct(">cI")
_CHUNK = 1000

Progress = Callable[[str, int, int], None]


# ---------------------------------------------------------------- writing


class _Writer:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.count = 0
        self._emit(MAGIC + bytes([FORMAT_VERSION]))

    def _emit(self, data: bytes) -> None:
        self.out.write(data)
        self.digest.update(data)

    def record(self, tag: bytes, payload: Any) -> None:
        body = ormsgpack.packb(payload)
        if len(body) > MAX_RECORD:
            raise LimitExceeded(f"archive record of {len(body)} bytes exceeds {MAX_RECORD} bytes")
        self._emit(_HEAD.pack(tag, len(body)) + body)
        self.count += 1

    def finish(self) -> None:
        body = ormsgpack.packb({"records": self.count, "sha256": self.digest.hexdigest()})
        self.out.write(_HEAD.pack(b"Z", len(body)) + body)


def write_archive(
    core: CheckpointDomainService,
    thread_ids: Sequence[str],
    path: str | os.PathLike[str],
    *,
    extra: dict[str, Any] | None = None,
    progress: Progress | None = None,
    session: Mapping[str, Any] | None = None,
) -> ArchiveSummary:
    """Write threads to an archive file (written to a temporary name, then renamed).

    ``session`` (written by the session layer) becomes the archive's ``S`` record,
    after the threads: the session row, its policy, its threads' policies and its
    sync points.

    Raises NotFound (a thread), StorageError, IntegrityError (a stored value is corrupt).
    """
    ids = [validate_id(t, "thread id") for t in thread_ids]
    if not ids:
        raise ArchiveError("nothing to back up: no threads given")
    target = Path(path)
    temp = target.with_name(target.name + ".partial")
    summary = ArchiveSummary(format_version=FORMAT_VERSION, threads=list(ids))
    written: set[bytes] = set()
    try:
        with open(temp, "wb") as raw:
            out = _Writer(raw)
            out.record(
                b"H", {"format": FORMAT_VERSION, "created_at": now_us(), "threads": ids, "extra": extra or {}}
            )
            for n, thread_id in enumerate(ids):
                _write_thread(core, out, thread_id, written, summary)
                if progress:
                    progress("backup", n + 1, len(ids))
            if session is not None:
                out.record(b"S", dict(session))
                summary.session = dict(session)
            out.finish()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temp, target)
    finally:
        if temp.exists():
            temp.unlink()
    summary.bytes = target.stat().st_size
    return summary


def _write_thread(
    core: CheckpointDomainService, out: _Writer, thread_id: str, written: set[bytes], summary: ArchiveSummary
) -> None:
    repo = core.repository
    thread = repo.get_thread(thread_id)
    rows = list(reversed(core.scan(thread_id, limit=10_000_000)))
    lists: dict[tuple[int, int], int] = {}
    portable: dict[bytes, bytes] = {}  # store hash -> archive hash of each blob
    for row in rows:
        for ref in row.manifest.values():
            if isinstance(ref, BlobRef) and ref.hash not in portable:
                data = repo.get_blobs([ref.hash]).get(ref.hash)
                if data is None:
                    raise ArchiveError(f"checkpoint {row.id}: a value is missing from the store")
                digest, framed = _portable(core, bytes(data))
                portable[ref.hash] = digest
                if digest not in written:
                    out.record(b"V", {"h": digest, "d": framed})
                    written.add(digest)
                    summary.values += 1
            elif isinstance(ref, ListRef) and (ref.list_id, ref.length) not in lists:
                hashes: list[bytes] = []
                items = repo.get_list_items(ref.list_id, ref.length)
                for crc, framed in zip(items.crcs, items.data, strict=True):
                    framed = bytes(framed)
                    if zlib.crc32(framed) != crc:
                        raise ArchiveError(f"checkpoint {row.id}: a stored list item is corrupt")
                    digest, framed = _portable(core, framed)
                    if digest not in written:
                        out.record(b"V", {"h": digest, "d": framed})
                        written.add(digest)
                        summary.values += 1
                    hashes.append(digest)
                lists[(ref.list_id, ref.length)] = len(lists)
                for start in range(0, max(len(hashes), 1), _CHUNK * 10):
                    out.record(
                        b"L",
                        {
                            "t": thread_id,
                            "id": len(lists) - 1,
                            "s": start,
                            "n": len(hashes),
                            "h": hashes[start : start + _CHUNK * 10],
                        },
                    )
    out.record(
        b"T",
        {
            "id": thread.id,
            "created_at": thread.created_at,
            "session": thread.session_id,
            "metadata": _plain_record(core, thread.metadata),
            "default_branch": thread.default_branch,
            "origin": _plain_record(core, thread.origin) if thread.origin else None,
            "branches": [[b.name, b.head, b.created_at, b.base] for b in repo.list_branches(thread_id)],
            "participants": repo.participants(thread_id),
        },
    )
    for row in rows:
        out.record(
            b"C",
            {
                "t": thread_id,
                "id": row.id,
                "b": row.branch,
                "p": row.parent_id,
                "mp": row.merge_parent_id,
                "k": KIND_CODES[row.kind],
                "s": STATUS_CODES[row.status],
                "c": row.created_at,
                "e": row.expires_at,
                "r": row.restore_count,
                "l": row.logical_size,
                "z": row.stored_size,
                "m": row.milestone,
                "h": _plain_record(core, row.header),
                "v": {key: _ref_out(core, ref, lists, portable) for key, ref in row.manifest.items()},
            },
        )
        summary.checkpoints += 1


def _ref_out(
    core: CheckpointDomainService, ref: Ref, lists: dict[tuple[int, int], int], portable: dict[bytes, bytes]
) -> list[Any]:
    if isinstance(ref, InlineRef):
        return [0, _portable(core, ref.data)[1]]
    if isinstance(ref, BlobRef):
        return [1, portable[ref.hash]]
    return [2, lists[(ref.list_id, ref.length)], ref.length]


def _portable(core: CheckpointDomainService, framed: bytes) -> tuple[bytes, bytes]:
    """A stored frame in archive form: (unkeyed hash of its value, unencrypted frame).
    Archives are portable: they never depend on a store's key ring."""
    raw = core.serializer.unpack(framed)
    if framed[:1] and framed[0] & FLAG_ENCRYPTED:
        framed = core.serializer.pack(raw, encrypt=False)
    return blob_hash(raw), framed


def _plain_record(core: CheckpointDomainService, stored: bytes) -> bytes:
    """A stored record (header, metadata) as plain msgpack, for the archive."""
    return core.serializer.dumps(core.decode_record(stored), path="record")


def _stored_record(core: CheckpointDomainService, plain: bytes) -> bytes:
    """An archived record in this store's form (framed; encrypted with a key ring)."""
    return core.encode_record(core.serializer.loads(plain), "record")


# ---------------------------------------------------------------- reading


@dataclass
class ArchiveSummary:
    """What an archive holds (returned by write, verify and restore)."""

    format_version: int
    threads: list[str] = field(default_factory=list)
    checkpoints: int = 0
    values: int = 0
    bytes: int = 0
    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    #: The ``S`` record of a session backup (see docs/archive.md), else None.
    session: dict[str, Any] | None = None


@dataclass
class _ThreadIndex:
    record: dict[str, Any] | None = None
    checkpoints: list[int] = field(default_factory=list)  # offsets of C records
    lists: dict[int, list[int]] = field(default_factory=dict)  # archive list id -> offsets of L records
    list_lengths: dict[int, int] = field(default_factory=dict)
    list_totals: dict[int, int] = field(default_factory=dict)
    values: set[bytes] = field(default_factory=set)
    rows: list[tuple[str, str | None, int, int, int]] = field(default_factory=list)


class _Reader:
    def __init__(self, stream: IO[bytes], size: int) -> None:
        self.stream = stream
        self.size = size
        self.digest = hashlib.sha256()

    def read_exact(self, n: int, what: str) -> bytes:
        data = self.stream.read(n)
        if len(data) != n:
            raise ArchiveError(f"archive is truncated (while reading {what})")
        self.digest.update(data)
        return data

    def records(self) -> Iterator[tuple[int, bytes, Any]]:
        """Yield (offset, tag, payload) for every record up to and including the end record."""
        count = 0
        while True:
            offset = self.stream.tell()
            head = self.stream.read(_HEAD.size)
            if len(head) != _HEAD.size:
                raise ArchiveError("archive is truncated: its end record is missing")
            tag, length = _HEAD.unpack(head)
            if length > MAX_RECORD or offset + _HEAD.size + length > self.size:
                raise ArchiveError(
                    f"archive record at byte {offset} declares {length} bytes, more than the file holds or allows"
                )
            if tag == b"Z":
                end = _decode(self.stream.read(length), "end record")
                if not isinstance(end, dict) or end.get("records") != count:
                    raise ArchiveError(
                        "archive end record does not match its content (records missing or added)"
                    )
                if end.get("sha256") != self.digest.hexdigest():
                    raise ArchiveError("archive checksum does not match: the file was changed or corrupted")
                if self.stream.read(1):
                    raise ArchiveError("archive has bytes after its end record")
                yield offset, tag, end
                return
            self.digest.update(head)
            body = self.read_exact(length, "a record")
            count += 1
            yield offset, tag, _decode(body, f"record at byte {offset}")


def _decode(body: bytes, what: str) -> Any:
    try:
        return ormsgpack.unpackb(body)
    except (ormsgpack.MsgpackDecodeError, ValueError, TypeError) as exc:
        raise ArchiveError(f"archive {what} is malformed ({exc})") from None


def _field(record: Any, key: str, kind: type | tuple[type, ...], what: str, optional: bool = False) -> Any:
    if not isinstance(record, dict):
        raise ArchiveError(f"archive {what} is not a mapping")
    value = record.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ArchiveError(f"archive {what} has a malformed field {key!r}")
    return value


def _open_archive(path: str | os.PathLike[str]) -> tuple[BinaryIO, int]:
    file = Path(path)
    if not file.is_file():
        raise ArchiveError(f"archive {str(file)!r} does not exist or is not a file")
    size = file.stat().st_size
    stream = open(file, "rb")  # noqa: SIM115 - closed by the caller
    magic = stream.read(len(MAGIC) + 1)
    if magic[: len(MAGIC)] != MAGIC:
        stream.close()
        raise ArchiveError(f"{str(file)!r} is not a threadline archive")
    if len(magic) <= len(MAGIC) or magic[-1] != FORMAT_VERSION:
        stream.close()
        version = magic[-1] if len(magic) > len(MAGIC) else "?"
        raise ArchiveError(
            f"archive {str(file)!r} has format version {version}; this threadline reads version {FORMAT_VERSION}"
        )
    return stream, size


def verify_archive(
    core: CheckpointDomainService, path: str | os.PathLike[str], *, progress: Progress | None = None
) -> tuple[ArchiveSummary, dict[str, _ThreadIndex], dict[bytes, int]]:
    """Check an archive completely without importing it: structure, checksums,
    references, and that every value, header and metadata decodes.

    Returns the summary and the index import uses. Raises ArchiveError with
    what is wrong.
    """
    try:
        return _verify(core, path, progress)
    except ArchiveError:
        raise
    except (ThreadlineError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise ArchiveError(f"archive is malformed: {exc}") from None


def _decodes(core: CheckpointDomainService, data: bytes, what: str) -> None:
    try:
        core.serializer.loads(data)
    except SerializationError as exc:
        raise ArchiveError(f"archive {what} cannot be decoded ({exc})") from None


def _verify(
    core: CheckpointDomainService, path: str | os.PathLike[str], progress: Progress | None
) -> tuple[ArchiveSummary, dict[str, _ThreadIndex], dict[bytes, int]]:
    stream, size = _open_archive(path)
    with stream:
        reader = _Reader(stream, size)
        reader.digest.update(MAGIC + bytes([FORMAT_VERSION]))
        values: dict[bytes, int] = {}
        threads: dict[str, _ThreadIndex] = {}
        summary: ArchiveSummary | None = None
        seen_checkpoints: set[tuple[str, str]] = set()
        for offset, tag, rec in reader.records():
            if tag == b"Z":
                break
            if summary is None:
                if tag != b"H":
                    raise ArchiveError("archive does not start with a header record")
                declared = _field(rec, "threads", list, "header")
                summary = ArchiveSummary(
                    format_version=FORMAT_VERSION,
                    threads=[validate_id(t, "archived thread id") for t in declared],
                    extra=rec.get("extra") or {},
                )
                threads = {t: _ThreadIndex() for t in summary.threads}
                if len(threads) != len(declared):
                    raise ArchiveError("archive header lists a thread twice")
                continue
            if tag == b"V":
                digest = _field(rec, "h", bytes, "value")
                framed = _field(rec, "d", bytes, "value")
                if digest in values:
                    raise ArchiveError(f"archive holds value {digest.hex()} twice")
                try:
                    raw = core.serializer.unpack(framed)
                except SerializationError as exc:
                    raise ArchiveError(f"archive value {digest.hex()} is corrupt ({exc})") from None
                except LimitExceeded as exc:
                    raise ArchiveError(
                        f"archive value {digest.hex()} is too large when decompressed ({exc})"
                    ) from None
                if blob_hash(raw) != digest:
                    raise ArchiveError(f"archive value {digest.hex()} does not match its hash")
                _decodes(core, raw, f"value {digest.hex()}")
                values[digest] = offset
            elif tag == b"L":
                index = _thread_of(threads, rec, "list")
                list_id = _field(rec, "id", int, "list")
                total = _field(rec, "n", int, "list")
                start = _field(rec, "s", int, "list")
                hashes = _field(rec, "h", list, "list")
                got = index.lists.setdefault(list_id, [])
                if start != index.list_lengths.get(list_id, 0) or start + len(hashes) > total:
                    raise ArchiveError(f"archive list {list_id} has duplicated or misplaced entries")
                for h in hashes:
                    if not isinstance(h, bytes) or h not in values:
                        raise ArchiveError(f"archive list {list_id} refers to a value outside the archive")
                    index.values.add(h)
                got.append(offset)
                index.list_lengths[list_id] = start + len(hashes)
                index.list_totals[list_id] = total
            elif tag == b"T":
                tid = _field(rec, "id", str, "thread")
                if tid not in threads:
                    raise ArchiveError(f"archive holds thread {tid!r} its header does not list")
                index = threads[tid]
                if index.record is not None:
                    raise ArchiveError(f"archive holds thread {tid!r} twice")
                _check_thread_record(rec)
                _decodes(core, rec["metadata"], f"metadata of thread {tid!r}")
                if rec.get("origin"):
                    _decodes(core, rec["origin"], f"origin of thread {tid!r}")
                index.record = rec
            elif tag == b"C":
                index = _thread_of(threads, rec, "checkpoint")
                if index.record is None:
                    raise ArchiveError("archive checkpoint comes before its thread record")
                cid = validate_checkpoint_id(_field(rec, "id", str, "checkpoint"))
                key = (rec["t"], cid)
                if key in seen_checkpoints:
                    raise ArchiveError(f"archive holds checkpoint {cid} twice")
                seen_checkpoints.add(key)
                _check_checkpoint_record(rec, index, values)
                _decodes(core, rec["h"], f"header of checkpoint {cid}")
                for key, ref in rec["v"].items():
                    if ref[0] == 0:
                        _decodes(core, core.serializer.unpack(ref[1]), f"value {key!r} of checkpoint {cid}")
                index.checkpoints.append(offset)
                index.rows.append((cid, rec.get("p"), rec["k"], rec["c"], rec["l"]))
                summary.checkpoints += 1
            elif tag == b"S":
                if summary.session is not None:
                    raise ArchiveError("archive holds two session records")
                _check_session_record(core, rec, threads, seen_checkpoints)
                summary.session = rec
            else:
                raise ArchiveError(f"archive has an unknown record type {tag!r}")
            if progress:
                progress("verify", stream.tell(), size)
        if summary is None:
            raise ArchiveError("archive has no header record")
        for tid, index in threads.items():
            if index.record is None:
                raise ArchiveError(f"archive lists thread {tid!r} but holds no record for it")
            ids = {r[0] for r in index.rows}
            for cid, parent, *_ in index.rows:
                if parent is not None and parent not in ids:
                    raise ArchiveError(f"archive checkpoint {cid} has a parent outside the archive")
            for list_id, length in index.list_lengths.items():
                if index.list_totals[list_id] != length:
                    raise ArchiveError(f"archive list {list_id} of thread {tid!r} is incomplete")
            for name, head, *_ in index.record["branches"]:
                if head is not None and head not in ids:
                    raise ArchiveError(f"archive branch {name!r} points outside the archive")
        summary.values = len(values)
        summary.bytes = size
        return summary, threads, values


def _thread_of(threads: dict[str, _ThreadIndex], rec: Any, what: str) -> _ThreadIndex:
    tid = _field(rec, "t", str, what)
    index = threads.get(tid)
    if index is None:
        raise ArchiveError(f"archive {what} belongs to thread {tid!r} its header does not list")
    return index


def _check_thread_record(rec: dict[str, Any]) -> None:
    _field(rec, "created_at", int, "thread")
    _field(rec, "metadata", bytes, "thread")
    validate_name(_field(rec, "default_branch", str, "thread"), "archived branch name")
    _field(rec, "session", str, "thread", optional=True)
    _field(rec, "origin", bytes, "thread", optional=True)
    branches = _field(rec, "branches", list, "thread")
    names = set()
    for entry in branches:
        if not isinstance(entry, list) or len(entry) != 4:
            raise ArchiveError("archive thread has a malformed branch")
        validate_name(entry[0], "archived branch name")
        if entry[0] in names:
            raise ArchiveError(f"archive thread has branch {entry[0]!r} twice")
        names.add(entry[0])
    participants = _field(rec, "participants", dict, "thread")
    for principal, role in participants.items():
        if not isinstance(principal, str) or role not in ("owner", "editor", "viewer"):
            raise ArchiveError("archive thread has a malformed participant")


def _check_session_record(
    core: CheckpointDomainService,
    rec: Any,
    threads: dict[str, _ThreadIndex],
    checkpoints: set[tuple[str, str]],
) -> None:
    """A session record: its fields, and sync points that refer only to archived checkpoints."""
    validate_id(_field(rec, "id", str, "session"), "archived session id")
    _field(rec, "created_at", int, "session")
    _decodes(core, _field(rec, "metadata", bytes, "session"), "session metadata")
    owner = _field(rec, "owner", str, "session", optional=True)
    if owner is not None:
        validate_id(owner, "archived session owner")
    if _field(rec, "status", str, "session") not in ("active", "closed"):
        raise ArchiveError("archive session has an unknown status")
    _field(rec, "policy", bytes, "session", optional=True)
    for tid, policy in _field(rec, "thread_policies", dict, "session").items():
        if tid not in threads or not isinstance(policy, bytes):
            raise ArchiveError("archive session has a policy for a thread the archive does not hold")
    labels: set[str] = set()
    for point in _field(rec, "sync_points", list, "session"):
        if not isinstance(point, list) or len(point) != 4:
            raise ArchiveError("archive session has a malformed sync point")
        label, created_at, members, metadata = point
        validate_name(label, "archived sync point label")
        if label in labels:
            raise ArchiveError(f"archive session has sync point {label!r} twice")
        labels.add(label)
        if not (isinstance(created_at, int) and isinstance(members, list) and isinstance(metadata, bytes)):
            raise ArchiveError(f"archive sync point {label!r} is malformed")
        for member in members:
            if not isinstance(member, list) or len(member) != 2 or tuple(member) not in checkpoints:
                raise ArchiveError(f"archive sync point {label!r} refers to a checkpoint outside the archive")


def _check_checkpoint_record(rec: dict[str, Any], index: _ThreadIndex, values: dict[bytes, int]) -> None:
    assert index.record is not None
    branch = _field(rec, "b", str, "checkpoint")
    if branch not in {b[0] for b in index.record["branches"]}:
        raise ArchiveError(f"archive checkpoint is on branch {branch!r} the thread does not have")
    for key in ("p", "mp"):
        parent = _field(rec, key, str, "checkpoint", optional=True)
        if parent is not None:
            validate_checkpoint_id(parent)
    if _field(rec, "k", int, "checkpoint") not in KINDS_BY_CODE:
        raise ArchiveError("archive checkpoint has an unknown kind")
    if _field(rec, "s", int, "checkpoint") not in STATUSES_BY_CODE:
        raise ArchiveError("archive checkpoint has an unknown status")
    for key in ("c", "r", "l"):
        _field(rec, key, int, "checkpoint")
    _field(rec, "e", int, "checkpoint", optional=True)
    _field(rec, "m", str, "checkpoint", optional=True)
    _field(rec, "h", bytes, "checkpoint")
    for key, ref in _field(rec, "v", dict, "checkpoint").items():
        if not isinstance(key, str) or not isinstance(ref, list) or not ref:
            raise ArchiveError("archive checkpoint has a malformed state entry")
        if ref[0] == 0 and len(ref) == 2 and isinstance(ref[1], bytes):
            continue
        if ref[0] == 1 and len(ref) == 2 and isinstance(ref[1], bytes) and ref[1] in values:
            continue
        if (
            ref[0] == 2
            and len(ref) == 3
            and isinstance(ref[1], int)
            and isinstance(ref[2], int)
            and index.list_lengths.get(ref[1], -1) >= ref[2] >= 0
        ):
            continue
        raise ArchiveError(f"archive checkpoint state entry {key!r} refers to a value outside the archive")


# ---------------------------------------------------------------- importing


def restore_archive(
    core: CheckpointDomainService,
    path: str | os.PathLike[str],
    *,
    rename: dict[str, str] | None = None,
    session_id: str | None = None,
    progress: Progress | None = None,
) -> ArchiveSummary:
    """Import an archive into a store, one transaction per thread, idempotently.

    A thread that exists with the same checkpoints is skipped (re-importing an
    archive creates no duplicates); one that exists with different content is
    a Conflict unless ``rename`` maps it to a new id. Everything is verified
    before the first write.
    """
    summary, threads, values = verify_archive(core, path)
    rename = dict(rename or {})
    for old, new in rename.items():
        if old not in threads:
            raise ArchiveError(f"cannot rename thread {old!r}: the archive does not hold it")
        validate_id(new, "thread id")
    plans: list[tuple[str, str]] = []
    for tid, index in threads.items():
        target = rename.get(tid, tid)
        try:
            existing = core.scan(target, limit=10_000_000)
        except NotFound:
            existing = None
        if existing is not None:
            mine = sorted(
                (r.id, r.parent_id, KIND_CODES[r.kind], r.created_at, r.logical_size) for r in existing
            )
            if mine == sorted(index.rows):
                summary.skipped.append(target)
                continue
            raise Conflict(
                f"thread {target!r} exists with different content; import it under a new id (rename={{{tid!r}: ...}})"
            )
        plans.append((tid, target))
    stream, _ = _open_archive(path)
    with stream:
        for n, (tid, target) in enumerate(plans):
            _import_thread(core, stream, threads[tid], values, target, session_id)
            summary.imported.append(target)
            core.forget_thread_caches(target)
            if progress:
                progress("restore", n + 1, len(plans))
    return summary


def _read_record(stream: BinaryIO, offset: int) -> Any:
    stream.seek(offset)
    _, length = _HEAD.unpack(stream.read(_HEAD.size))
    return ormsgpack.unpackb(stream.read(length))


def _import_thread(
    core: CheckpointDomainService,
    stream: BinaryIO,
    index: _ThreadIndex,
    values: dict[bytes, int],
    target: str,
    session_id: str | None,
) -> None:
    rec = index.record
    assert rec is not None
    list_ids = {aid: random_list_id() for aid in index.lists}

    keyed = core.serializer.keyring is not None
    converted: dict[bytes, tuple[bytes, bytes]] = {}

    def value(digest: bytes) -> bytes:
        return stored(digest)[1]

    def stored(digest: bytes) -> tuple[bytes, bytes]:
        """(store hash, store frame) of an archived value: re-framed for an encrypted store."""
        framed = bytes(_read_record(stream, values[digest])["d"])
        if not keyed:
            return digest, framed
        if digest not in converted:
            raw = core.serializer.unpack(framed)
            converted[digest] = (core.serializer.content_hash(raw), core.serializer.pack(raw))
        return converted[digest]

    def lists() -> Iterator[ListAppend]:
        roots: list[
            tuple[int, list[bytes]]
        ] = []  # imported lists (new id, item hashes) to share prefixes with
        for aid, offsets in index.lists.items():
            hashes: list[bytes] = []
            for off in offsets:
                hashes.extend(_read_record(stream, off)["h"])
            base, start = _best_base(roots, hashes)
            for chunk_start in range(start, max(len(hashes), start + 1), _CHUNK):
                chunk = [value(h) for h in hashes[chunk_start : chunk_start + _CHUNK]]
                yield ListAppend(
                    list_id=list_ids[aid],
                    start=chunk_start,
                    items=chunk,
                    crcs=[zlib.crc32(x) for x in chunk],
                    fork_id=0,
                    base=base if chunk_start == start else None,
                )
            if base is None:
                roots.append((list_ids[aid], hashes))

    def blobs() -> Iterator[NewBlob]:
        needed: set[bytes] = set()
        for off in index.checkpoints:
            for ref in _read_record(stream, off)["v"].values():
                if ref[0] == 1:
                    needed.add(bytes(ref[1]))
        for digest in sorted(needed):
            yield NewBlob(*stored(digest))

    def checkpoints() -> Iterator[CheckpointRow]:
        for off in index.checkpoints:
            c = _read_record(stream, off)
            manifest: Manifest = {}
            for key, ref in c["v"].items():
                if ref[0] == 0:
                    inline = bytes(ref[1])
                    manifest[key] = InlineRef(
                        core.serializer.pack(core.serializer.unpack(inline)) if keyed else inline
                    )
                elif ref[0] == 1:
                    manifest[key] = BlobRef(stored(bytes(ref[1]))[0])
                else:
                    manifest[key] = ListRef(list_ids[ref[1]], ref[2])
            yield CheckpointRow(
                id=validate_checkpoint_id(c["id"]),
                thread_id=target,
                branch=c["b"],
                parent_id=c["p"],
                merge_parent_id=c["mp"],
                kind=KINDS_BY_CODE[c["k"]],
                status=STATUSES_BY_CODE[c["s"]],
                created_at=c["c"],
                expires_at=c["e"],
                restore_count=c["r"],
                logical_size=c["l"],
                stored_size=c.get("z") if isinstance(c.get("z"), int) else 0,
                header=_stored_record(core, bytes(c["h"])),
                manifest=manifest,
                milestone=c["m"],
            )

    thread = ThreadRow(
        id=target,
        created_at=rec["created_at"],
        session_id=session_id if session_id is not None else rec.get("session"),
        metadata=_stored_record(core, bytes(rec["metadata"])),
        default_branch=rec["default_branch"],
        origin=_stored_record(core, bytes(rec["origin"])) if rec.get("origin") else None,
    )
    branches = [BranchRow(target, name, head, created, base) for name, head, created, base in rec["branches"]]
    try:
        core.repository.import_thread(
            thread,
            branches=branches,
            participants=rec["participants"],
            lists=lists(),
            blobs=blobs(),
            checkpoints=checkpoints(),
        )
    except AlreadyExists:
        raise Conflict(f"thread {target!r} was created while the archive was being imported") from None


def _best_base(
    roots: Sequence[tuple[int, list[bytes]]], hashes: list[bytes]
) -> tuple[tuple[int, int] | None, int]:
    """The imported root list sharing the longest prefix with ``hashes``: ((id, n), n)."""
    best: tuple[int, int] | None = None
    for list_id, other in roots:
        common = 0
        for a, b in zip(other, hashes, strict=False):
            if a != b:
                break
            common += 1
        if common and (best is None or common > best[1]):
            best = (list_id, common)
    return best, best[1] if best else 0
