"""Backups (issue 3): write, verify and restore archives across backends, and reject
every malformed or tampered archive before anything is written."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ormsgpack
import pytest
import zstandard

from threadline import open_store
from threadline.archive import _HEAD, FORMAT_VERSION, MAGIC, _Writer
from threadline.core import blob_hash
from threadline.errors import ArchiveError, Conflict, InvalidInput, LimitExceeded, NotFound
from threadline.serde import Serializer
from threadline.store import Store

BACKENDS = ["memory", "sqlite", "postgres"]
BIG = "y" * 500


def _url(kind: str, tmp_path: Path, name: str) -> str:
    return "memory://" if kind == "memory" else f"sqlite:///{tmp_path}/{name}.db"


@pytest.fixture(params=BACKENDS)
def source(request: pytest.FixtureRequest, backend_url: Callable[[str, str], str]) -> Iterator[Store]:
    with open_store(backend_url(request.param, "source")) as s:
        yield s


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, backend_url: Callable[[str, str], str]) -> Iterator[Store]:
    with open_store(backend_url(request.param, "target")) as s:
        yield s


def fill(store: Store, tid: str, *, seed: int = 0) -> str:
    svc = store.threads
    t = svc.create_thread(tid, metadata={"seed": seed, "tags": ["a"]}, session_id="sess", owner="alice").id
    svc.add_participant(t, "bob", "editor")
    svc.add_participant(t, "carol", "viewer")
    msgs: list[str] = []
    for i in range(5):
        msgs.append(f"{seed}-{i} " + "m" * 120)
        svc.checkpoint(t, {"msgs": list(msgs), "big": BIG, "i": i, "nested": {"k": [i, None, 1.5]}})
    mid = svc.history(t, limit=3).items[-1].id
    svc.create_branch(t, "alt", from_checkpoint=mid)
    svc.checkpoint(t, {"msgs": [*msgs[:3], "alt"], "i": -1}, branch="alt")
    svc.error(t, {"msgs": msgs, "partial": b"\x00\x01"}, error=RuntimeError("boom"), branch="alt")
    svc.milestone(t, {"msgs": msgs, "done": True}, f"v{seed}", tags=["release"])
    svc.manual(t, {"msgs": msgs, "big": BIG}, title="t", description="d", tags=["x", "y"])
    svc.merge(t, "alt", strategy="ours")
    old = svc.history(t, limit=10).items[-1].id
    svc.restore(old)
    svc.ttl(mid, timedelta(days=3))
    store.checkpoints.archive(old)
    svc.create_branch(t, "feature/empty-ish")
    return t


def snapshot(store: Store, tid: str) -> dict[str, Any]:
    svc = store.threads
    thread = svc.get_thread(tid)
    cps = sorted(store.checkpoints.iter(tid), key=lambda c: c.id)
    return {
        "thread": (
            thread.created_at,
            thread.session_id,
            thread.metadata,
            thread.default_branch,
            thread.origin,
        ),
        "branches": [(b.name, b.head, b.created_at, b.base) for b in svc.branches(tid)],
        "participants": svc.participants(tid),
        "checkpoints": cps,
        "states": {c.id: svc.get_state(c.id, thread_id=tid) for c in cps},
        "history": {b.name: [c.id for c in svc.walk(tid, b.name)] for b in svc.branches(tid)},
    }


def renamed(snap: dict[str, Any], tid: str) -> dict[str, Any]:
    out = dict(snap)
    out["checkpoints"] = [_with_thread(c, tid) for c in snap["checkpoints"]]
    return out


def _with_thread(c: Any, tid: str) -> Any:
    from dataclasses import replace

    return replace(c, thread_id=tid)


def no_threads(store: Store) -> bool:
    return store.threads.list_threads().items == [] and store.checkpoints.stats().checkpoints == 0


# ---------------------------------------------------------------- round trips


def test_backup_one_thread_verify_and_restore(source: Store, target: Store, tmp_path: Path) -> None:
    t = fill(source, "t1")
    fill(source, "other", seed=1)
    path = tmp_path / "one.tlar"
    events: list[tuple[str, int, int]] = []
    summary = source.threads.backup(t, path, progress=lambda *a: events.append(a))
    assert summary.threads == ["t1"] and summary.format_version == FORMAT_VERSION
    assert summary.checkpoints == source.checkpoints.stats([t]).checkpoints
    assert summary.values > 0 and summary.bytes == path.stat().st_size
    assert events == [("backup", 1, 1)]
    assert not (tmp_path / "one.tlar.partial").exists()
    checked = target.threads.verify_backup(path)
    assert (checked.threads, checked.checkpoints) == (["t1"], summary.checkpoints)
    assert no_threads(target)  # verify writes nothing
    restored = target.threads.restore_backup(path, progress=lambda *a: events.append(a))
    assert restored.imported == ["t1"] and restored.skipped == []
    assert events[-1] == ("restore", 1, 1)
    assert snapshot(target, "t1") == snapshot(source, "t1")
    assert [t.id for t in target.threads.list_threads().items] == ["t1"]
    # the restored thread is fully usable
    target.threads.checkpoint("t1", {"after": 1})
    again = target.threads.restore(snapshot(source, "t1")["checkpoints"][1].id, thread_id="t1")
    assert again.restored_from is not None


def test_backup_several_threads(source: Store, target: Store, tmp_path: Path) -> None:
    ids = [fill(source, f"t{i}", seed=i) for i in range(3)]
    path = tmp_path / "many.tlar"
    summary = source.threads.backup(ids, path)
    assert summary.threads == ids
    assert summary.checkpoints == source.checkpoints.stats(ids).checkpoints
    restored = target.threads.restore_backup(path)
    assert restored.imported == ids
    for tid in ids:
        assert snapshot(target, tid) == snapshot(source, tid)
    assert target.checkpoints.stats().checkpoints == source.checkpoints.stats().checkpoints
    assert target.checkpoints.stats().logical_bytes == source.checkpoints.stats().logical_bytes


def test_restore_twice_creates_no_duplicates(source: Store, target: Store, tmp_path: Path) -> None:
    fill(source, "t1")
    fill(source, "t2", seed=2)
    path = tmp_path / "a.tlar"
    source.threads.backup(["t1", "t2"], path)
    target.threads.restore_backup(path)
    stats = target.checkpoints.stats()
    snap = snapshot(target, "t1")
    second = target.threads.restore_backup(path)
    assert second.imported == [] and sorted(second.skipped) == ["t1", "t2"]
    assert target.checkpoints.stats() == stats
    assert snapshot(target, "t1") == snap
    assert len(target.threads.list_threads().items) == 2


def test_restore_over_different_thread_conflicts_unless_renamed(
    source: Store, target: Store, tmp_path: Path
) -> None:
    fill(source, "t1")
    fill(source, "t2", seed=2)
    path = tmp_path / "a.tlar"
    source.threads.backup(["t1", "t2"], path)
    target.threads.create_thread("t2")
    target.threads.checkpoint("t2", {"mine": 1})
    with pytest.raises(Conflict):
        target.threads.restore_backup(path)
    # nothing was imported, not even the thread without a clash
    assert [t.id for t in target.threads.list_threads().items] == ["t2"]
    assert target.checkpoints.stats().checkpoints == 1
    summary = target.threads.restore_backup(path, rename={"t2": "t2-restored"})
    assert summary.imported == ["t1", "t2-restored"]
    assert target.threads.get_state(target.threads.latest("t2").id) == {"mine": 1}  # type: ignore[union-attr]
    assert snapshot(target, "t2-restored") == renamed(snapshot(source, "t2"), "t2-restored")
    with pytest.raises(ArchiveError):
        target.threads.restore_backup(path, rename={"not-there": "x"})


def test_restore_over_empty_thread_with_same_id_conflicts(
    source: Store, target: Store, tmp_path: Path
) -> None:
    fill(source, "t1")
    path = tmp_path / "a.tlar"
    source.threads.backup("t1", path)
    target.threads.create_thread("t1")
    with pytest.raises(Conflict):
        target.threads.restore_backup(path)
    assert target.checkpoints.stats().checkpoints == 0


def test_sqlite_memory_sqlite_round_trip(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/a.db") as a:
        fill(a, "t1")
        fill(a, "t2", seed=5)
        copy = a.threads.copy_thread("t1", "t1-copy")
        a.threads.backup(["t1", "t2", copy.id], tmp_path / "1.tlar")
        original = {t: snapshot(a, t) for t in ("t1", "t2", "t1-copy")}
        original_stats = a.checkpoints.stats()
    with open_store("memory://") as m:
        m.threads.restore_backup(tmp_path / "1.tlar")
        assert {t: snapshot(m, t) for t in original} == original
        m.threads.backup(["t1", "t2", "t1-copy"], tmp_path / "2.tlar")
    with open_store(f"sqlite:///{tmp_path}/b.db") as b:
        b.threads.restore_backup(tmp_path / "2.tlar")
        assert {t: snapshot(b, t) for t in original} == original
        assert b.threads.get_thread("t1-copy").origin == {"copied_from": "t1"}
        stats = b.checkpoints.stats()
        assert (stats.checkpoints, stats.logical_bytes, stats.milestones, stats.restores) == (
            original_stats.checkpoints,
            original_stats.logical_bytes,
            original_stats.milestones,
            original_stats.restores,
        )
        b.threads.backup(["t1", "t2", "t1-copy"], tmp_path / "3.tlar")
    with open_store(f"sqlite:///{tmp_path}/b.db") as reopened:
        assert {t: snapshot(reopened, t) for t in original} == original


def test_backup_errors_leave_no_file(source: Store, tmp_path: Path) -> None:
    path = tmp_path / "x.tlar"
    with pytest.raises(ArchiveError):
        source.threads.backup([], path)
    with pytest.raises(NotFound):
        source.threads.backup(["missing"], path)
    assert list(tmp_path.glob("x.tlar*")) == []


# ---------------------------------------------------------------- malformed archives


@pytest.fixture(scope="module")
def good_archive(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("arch") / "good.tlar"
    with open_store("memory://") as s:
        fill(s, "t1")
        fill(s, "t2", seed=1)
        s.threads.backup(["t1", "t2"], path)
    return path.read_bytes()


def parse(data: bytes) -> list[tuple[bytes, Any]]:
    pos = len(MAGIC) + 1
    out: list[tuple[bytes, Any]] = []
    while True:
        tag, n = _HEAD.unpack_from(data, pos)
        pos += _HEAD.size
        body = data[pos : pos + n]
        pos += n
        if tag == b"Z":
            assert pos == len(data)
            return out
        out.append((tag, ormsgpack.unpackb(body)))


def craft(path: Path, records: list[tuple[bytes, Any]]) -> Path:
    """Write records as a well-formed archive (correct count and end checksum)."""
    with open(path, "wb") as f:
        w = _Writer(f)
        for tag, payload in records:
            w.record(tag, payload)
        w.finish()
    return path


def rejected(
    store: Store, path: Path, error: type[Exception] | tuple[type[Exception], ...] = ArchiveError
) -> None:
    with pytest.raises(error):
        store.threads.verify_backup(path)
    with pytest.raises(error):
        store.threads.restore_backup(path)
    assert no_threads(store)


def test_crafted_archive_round_trips_unchanged(good_archive: bytes, target: Store, tmp_path: Path) -> None:
    path = craft(tmp_path / "same.tlar", parse(good_archive))
    assert path.read_bytes() == good_archive
    assert target.threads.restore_backup(path).imported == ["t1", "t2"]


@pytest.mark.parametrize("cut", [0, 3, 7, 8, 10, 13, 100, 0.25, 0.5, 0.9, -40, -1])
def test_truncated_archives_are_rejected(
    good_archive: bytes, target: Store, tmp_path: Path, cut: Any
) -> None:
    n = int(len(good_archive) * cut) if isinstance(cut, float) else cut % len(good_archive)
    path = tmp_path / "cut.tlar"
    path.write_bytes(good_archive[:n])
    rejected(target, path)


@pytest.mark.parametrize("pos", [0, 6, 7, 8, 9, 12, -60, -30, -5, -1])
def test_flipped_bits_in_framing_are_rejected(
    good_archive: bytes, target: Store, tmp_path: Path, pos: int
) -> None:
    i = pos % len(good_archive)
    for bit in (0, 3, 6):
        data = bytearray(good_archive)
        data[i] ^= 1 << bit
        path = tmp_path / f"flip{bit}.tlar"
        path.write_bytes(bytes(data))
        rejected(target, path)


@pytest.mark.parametrize("pos", [20, 60, 0.1, 0.3, 0.5, 0.7, 0.95])
def test_flipped_bits_in_records_are_rejected_before_writing(
    good_archive: bytes, target: Store, tmp_path: Path, pos: Any
) -> None:
    # Inside record bodies a flip may hit a checkpoint id, which currently escapes as
    # InvalidInput/TypeError instead of ArchiveError (see the xfail test below); what
    # must hold in every case is that nothing is written.
    i = int(len(good_archive) * pos) if isinstance(pos, float) else pos
    for bit in (0, 3, 6):
        data = bytearray(good_archive)
        data[i] ^= 1 << bit
        path = tmp_path / f"flip{bit}.tlar"
        path.write_bytes(bytes(data))
        rejected(target, path, (ArchiveError, InvalidInput, TypeError))


def test_every_single_bit_flip_is_an_archive_error(tmp_path: Path) -> None:
    path = tmp_path / "small.tlar"
    with open_store("memory://") as s:
        fill(s, "t1")
        s.threads.backup("t1", path)
        good = path.read_bytes()
        escaped: list[tuple[int, str]] = []
        flipped = tmp_path / "f.tlar"
        for i in range(len(good)):
            data = bytearray(good)
            data[i] ^= 0x80 if i % 2 else 0x01
            flipped.write_bytes(bytes(data))
            try:
                s.threads.verify_backup(flipped)
            except ArchiveError:
                continue
            except Exception as exc:
                escaped.append((i, type(exc).__name__))
            else:
                escaped.append((i, "accepted"))
        assert escaped == []


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_format_version_is_rejected(
    good_archive: bytes, target: Store, tmp_path: Path, version: int
) -> None:
    data = bytearray(good_archive)
    data[len(MAGIC)] = version
    path = tmp_path / "v.tlar"
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="version"):
        target.threads.restore_backup(path)
    assert no_threads(target)


@pytest.mark.parametrize(
    "content", [b"", b"TLARCHV", b"PK\x03\x04 a zip file", b"SQLite format 3\x00" + b"\x00" * 100, b"{}"]
)
def test_non_archive_files_are_rejected(target: Store, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.tlar"
    path.write_bytes(content)
    rejected(target, path)


def test_missing_file_and_directory_are_rejected(target: Store, tmp_path: Path) -> None:
    rejected(target, tmp_path / "nope.tlar")
    rejected(target, tmp_path)


def test_trailing_bytes_are_rejected(good_archive: bytes, target: Store, tmp_path: Path) -> None:
    for extra in (b"\x00", b"junk", good_archive[-20:]):
        path = tmp_path / "trail.tlar"
        path.write_bytes(good_archive + extra)
        rejected(target, path)


def test_huge_declared_record_length_is_rejected(good_archive: bytes, target: Store, tmp_path: Path) -> None:
    start = len(MAGIC) + 1
    for length in (0xFFFFFFFF, (256 << 20) + 1, len(good_archive)):
        data = bytearray(good_archive)
        struct.pack_into(">I", data, start + 1, length)
        path = tmp_path / "huge.tlar"
        path.write_bytes(bytes(data))
        rejected(target, path)
    # and a crafted file whose only record declares 4 GiB
    path = tmp_path / "huge2.tlar"
    path.write_bytes(MAGIC + bytes([FORMAT_VERSION]) + _HEAD.pack(b"H", 0xFFFFFFFF) + b"\x80")
    rejected(target, path)


def _index(records: list[tuple[bytes, Any]], tag: bytes, nth: int = 0) -> int:
    return [i for i, (t, _) in enumerate(records) if t == tag][nth]


def test_duplicated_value_record_is_rejected(good_archive: bytes, target: Store, tmp_path: Path) -> None:
    records = parse(good_archive)
    i = _index(records, b"V")
    records.insert(i + 1, records[i])
    rejected(target, craft(tmp_path / "dupv.tlar", records))


def test_duplicated_checkpoint_record_is_rejected(good_archive: bytes, target: Store, tmp_path: Path) -> None:
    records = parse(good_archive)
    i = _index(records, b"C", 3)
    records.insert(i + 1, records[i])
    rejected(target, craft(tmp_path / "dupc.tlar", records))


def test_duplicated_thread_and_list_records_are_rejected(
    good_archive: bytes, target: Store, tmp_path: Path
) -> None:
    records = parse(good_archive)
    i = _index(records, b"T")
    rejected(target, craft(tmp_path / "dupt.tlar", [*records[: i + 1], records[i], *records[i + 1 :]]))
    j = _index(records, b"L")
    rejected(target, craft(tmp_path / "dupl.tlar", [*records[: j + 1], records[j], *records[j + 1 :]]))


def test_list_entry_pointing_outside_the_archive_is_rejected(
    good_archive: bytes, target: Store, tmp_path: Path
) -> None:
    records = parse(good_archive)
    i = _index(records, b"L")
    payload = dict(records[i][1])
    payload["h"] = [*payload["h"][:-1], b"\x01" * 16]
    records[i] = (b"L", payload)
    rejected(target, craft(tmp_path / "list.tlar", records))


def _checkpoint_with(records: list[tuple[bytes, Any]], kind: int) -> int:
    for i, (tag, rec) in enumerate(records):
        if tag == b"C" and any(ref[0] == kind for ref in rec["v"].values()):
            return i
    raise AssertionError(f"no checkpoint has a state entry of kind {kind}")


@pytest.mark.parametrize(
    "ref", [[1, b"\x02" * 16], [2, 999, 1], [2, 0, 10_000], [2, 0, -1], [7, b"x"], [], [0, 5]]
)
def test_checkpoint_entry_pointing_outside_the_archive_is_rejected(
    good_archive: bytes, target: Store, tmp_path: Path, ref: list[Any]
) -> None:
    records = parse(good_archive)
    i = _checkpoint_with(records, 1)
    payload = dict(records[i][1])
    payload["v"] = {**payload["v"], "big": ref}
    records[i] = (b"C", payload)
    rejected(target, craft(tmp_path / "ref.tlar", records))


@pytest.mark.parametrize("ref", [[1, [1, 2]], [2, {"a": 1}, 1]])
def test_checkpoint_entry_with_unhashable_reference_is_an_archive_error(
    good_archive: bytes, tmp_path: Path, ref: list[Any]
) -> None:
    records = parse(good_archive)
    i = _checkpoint_with(records, 1)
    payload = dict(records[i][1])
    payload["v"] = {**payload["v"], "big": ref}
    records[i] = (b"C", payload)
    with open_store("memory://") as s:
        rejected(s, craft(tmp_path / "unhashable.tlar", records))


def test_value_whose_hash_does_not_match_is_rejected(
    good_archive: bytes, target: Store, tmp_path: Path
) -> None:
    records = parse(good_archive)
    i = _index(records, b"V")
    payload = dict(records[i][1])
    other = Serializer()
    payload["d"] = other.pack(other.dumps("not the original value"))
    records[i] = (b"V", payload)
    rejected(target, craft(tmp_path / "hash.tlar", records))
    # a value whose bytes are not a valid frame at all
    payload["d"] = b"\xff\xff\xff"
    records[i] = (b"V", payload)
    rejected(target, craft(tmp_path / "frame.tlar", records))


def test_decompression_bomb_is_rejected(tmp_path: Path) -> None:
    raw = Serializer().dumps("z" * 200_000)
    framed = bytes([1]) + zstandard.ZstdCompressor().compress(raw)
    assert Serializer().unpack(framed) == raw  # a genuine compressed frame
    header = {"format": 1, "created_at": 1, "threads": ["t"], "extra": {}}
    path = craft(tmp_path / "bomb.tlar", [(b"H", header), (b"V", {"h": blob_hash(raw), "d": framed})])
    for url in ("memory://", f"sqlite:///{tmp_path}/bomb.db"):
        with open_store(url, serializer=Serializer(max_decompressed=10_000)) as s:
            rejected(s, path, (ArchiveError, LimitExceeded))


@pytest.mark.parametrize(
    "mutate",
    [
        "unknown_tag",
        "no_header",
        "header_twice_thread",
        "thread_not_in_header",
        "checkpoint_before_thread",
        "parent_outside",
        "branch_head_outside",
        "unknown_branch",
        "unknown_kind",
        "bad_participant",
        "list_incomplete",
        "missing_thread_record",
        "count_mismatch",
        "not_a_mapping",
    ],
)
def test_structurally_broken_archives_are_rejected(
    good_archive: bytes, target: Store, tmp_path: Path, mutate: str
) -> None:
    records = parse(good_archive)
    t = _index(records, b"T")
    c = _index(records, b"C", 2)

    def edit(i: int, **changes: Any) -> None:
        records[i] = (records[i][0], {**records[i][1], **changes})

    if mutate == "unknown_tag":
        records.insert(1, (b"Q", {"x": 1}))
    elif mutate == "no_header":
        records.pop(0)
    elif mutate == "header_twice_thread":
        edit(0, threads=["t1", "t1"])
    elif mutate == "thread_not_in_header":
        edit(0, threads=["t1"])
    elif mutate == "checkpoint_before_thread":
        records.insert(t, records.pop(c))
    elif mutate == "parent_outside":
        edit(c, p="0190a6c6-0000-7000-8000-000000000000")
    elif mutate == "branch_head_outside":
        branches = [list(b) for b in records[t][1]["branches"]]
        branches[0][1] = "0190a6c6-0000-7000-8000-000000000000"
        edit(t, branches=branches)
    elif mutate == "unknown_branch":
        edit(c, b="ghost")
    elif mutate == "unknown_kind":
        edit(c, k=42)
    elif mutate == "bad_participant":
        edit(t, participants={"eve": "god"})
    elif mutate == "list_incomplete":
        li = _index(records, b"L")
        edit(li, n=records[li][1]["n"] + 5)
    elif mutate == "missing_thread_record":
        records = [r for r in records if not (r[0] == b"T" and r[1]["id"] == "t2")]
        records = [r for r in records if not (r[0] in (b"C", b"L") and r[1]["t"] == "t2")]
    elif mutate == "count_mismatch":
        path = tmp_path / "count.tlar"
        with open(path, "wb") as f:
            w = _Writer(f)
            for tag, payload in records:
                w.record(tag, payload)
            w.count += 1  # the end record claims one record more than the file holds
            w.finish()
        rejected(target, path)
        return
    elif mutate == "not_a_mapping":
        records[c] = (b"C", [1, 2, 3])
    rejected(target, craft(tmp_path / f"{mutate}.tlar", records))


@pytest.mark.parametrize("mutate", ["header_thread_id", "checkpoint_id", "branch_name"])
def test_malformed_ids_are_archive_errors(good_archive: bytes, tmp_path: Path, mutate: str) -> None:
    records = parse(good_archive)
    if mutate == "header_thread_id":
        records[0] = (b"H", {**records[0][1], "threads": ["t1", ""]})
    elif mutate == "checkpoint_id":
        i = _index(records, b"C")
        records[i] = (b"C", {**records[i][1], "id": "not-a-uuid"})
    else:
        i = _index(records, b"T")
        records[i] = (b"T", {**records[i][1], "default_branch": "../x"})
    with open_store("memory://") as s:
        rejected(s, craft(tmp_path / "ids.tlar", records))


@pytest.mark.parametrize("mutate", ["metadata", "inline"])
def test_undecodable_metadata_or_inline_values_are_rejected(
    good_archive: bytes, tmp_path: Path, mutate: str
) -> None:
    records = parse(good_archive)
    if mutate == "metadata":
        i = _index(records, b"T")
        records[i] = (b"T", {**records[i][1], "metadata": b"\xc1\xc1"})
    else:
        i = _checkpoint_with(records, 0)
        rec = records[i][1]
        key = next(k for k, ref in rec["v"].items() if ref[0] == 0)
        records[i] = (b"C", {**rec, "v": {**rec["v"], key: [0, b"\x07\xc1"]}})
    with open_store("memory://") as s:
        rejected(s, craft(tmp_path / "undecodable.tlar", records))


def test_expired_checkpoints_keep_their_expiry_through_backup(
    source: Store, target: Store, tmp_path: Path
) -> None:
    t = source.threads.create_thread("t").id
    c = source.threads.checkpoint(t, {"a": 1})
    source.threads.checkpoint(t, {"a": 2})
    source.checkpoints.set_expiry(c.id, datetime.now(UTC) - timedelta(seconds=1))
    source.threads.backup(t, tmp_path / "e.tlar")
    target.threads.restore_backup(tmp_path / "e.tlar")
    assert target.threads.get(c.id).expires_at == source.threads.get(c.id).expires_at
    assert target.threads.get_state(c.id) == {"a": 1}
