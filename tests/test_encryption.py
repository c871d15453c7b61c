"""Encryption at rest: AES-256-GCM frames with a key ring, keyed content hashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from threadline import InvalidInput, SerializationError, open_store
from threadline.errors import IntegrityError
from threadline.serde import FLAG_ENCRYPTED, KeyRing, Serializer, frame_key_id

SECRET = "attack at dawn " * 20


def test_frames_are_encrypted_and_authenticated() -> None:
    ring = KeyRing.generate()
    ser = Serializer(keyring=ring)
    framed = ser.pack(SECRET.encode())
    assert framed[0] & FLAG_ENCRYPTED
    assert SECRET.encode()[:20] not in framed
    assert frame_key_id(framed) == 1
    assert ser.unpack(framed) == SECRET.encode()
    tampered = bytearray(framed)
    tampered[-1] ^= 1
    with pytest.raises(SerializationError, match="wrong key or tampered"):
        ser.unpack(bytes(tampered))
    with pytest.raises(SerializationError, match="open the store with its key ring"):
        Serializer().unpack(framed)
    with pytest.raises(SerializationError, match="wrong key"):
        Serializer(keyring=KeyRing.generate()).unpack(framed)


def test_compression_happens_before_encryption() -> None:
    ser = Serializer(keyring=KeyRing.generate())
    framed = ser.pack(b"a" * 100_000)
    assert len(framed) < 1000
    assert ser.unpack(framed) == b"a" * 100_000


def test_rotation_keeps_old_values_readable() -> None:
    ring = KeyRing.generate()
    old = Serializer(keyring=ring).pack(b"old value")
    rotated = ring.rotated()
    assert rotated.active == 2 and set(rotated.keys) == {1, 2}
    ser = Serializer(keyring=rotated)
    new = ser.pack(b"new value")
    assert frame_key_id(old) == 1 and frame_key_id(new) == 2
    assert ser.unpack(old) == b"old value" and ser.unpack(new) == b"new value"
    with pytest.raises(SerializationError, match="key 2, which is not in the key ring"):
        Serializer(keyring=ring).unpack(new)


def test_keyed_hashes_do_not_reveal_equality_across_stores() -> None:
    a, b = Serializer(keyring=KeyRing.generate()), Serializer(keyring=KeyRing.generate())
    plain = Serializer()
    assert a.content_hash(b"x") == a.content_hash(b"x")
    assert a.content_hash(b"x") != b.content_hash(b"x") != plain.content_hash(b"x")


def test_key_ring_json_round_trip_and_validation() -> None:
    ring = KeyRing.generate().rotated()
    again = KeyRing.from_json(ring.to_json())
    assert again.keys == ring.keys and again.active == ring.active and again.hash_key == ring.hash_key
    with pytest.raises(InvalidInput):
        KeyRing.from_json("{not json")
    with pytest.raises(InvalidInput, match="32 bytes"):
        KeyRing({1: b"short"}, 1, b"h" * 32)
    with pytest.raises(InvalidInput, match="active key"):
        KeyRing({1: b"k" * 32}, 2, b"h" * 32)
    with pytest.raises(InvalidInput, match="hash_key"):
        KeyRing({1: b"k" * 32}, 1, b"h")
    with pytest.raises(InvalidInput, match="key id"):
        KeyRing({0: b"k" * 32}, 0, b"h" * 32)


def test_encrypted_store_keeps_no_plaintext_on_disk(tmp_path: Path) -> None:
    ring = KeyRing.generate()
    path = tmp_path / "e.db"
    with open_store(f"sqlite:///{path}", keyring=ring) as store:
        store.checkpoints.create_thread("t")
        messages = [f"{SECRET} #{i}" for i in range(5)]
        cp = store.checkpoints.create("t", {"secret": SECRET, "messages": messages, "n": 1})
        again = store.checkpoints.create("t", {"secret": SECRET, "messages": [*messages, "more"], "n": 2})
        assert store.checkpoints.get_state(cp.id) == {"secret": SECRET, "messages": messages, "n": 1}
        assert again.stored_size < len(SECRET)  # dedup keeps working under one key
        store.repository.storage_bytes()
    assert b"attack at dawn" not in path.read_bytes()
    with open_store(f"sqlite:///{path}") as store, pytest.raises(IntegrityError, match="key ring"):
        store.checkpoints.get_state(cp.id)
    with open_store(f"sqlite:///{path}", keyring=KeyRing.generate()) as store, pytest.raises(IntegrityError):
        store.checkpoints.get_state(cp.id)


def test_backups_of_encrypted_stores_are_portable(tmp_path: Path) -> None:
    ring = KeyRing.generate()
    with open_store(f"sqlite:///{tmp_path}/e.db", keyring=ring) as store:
        store.threads.create_thread("t", metadata={"customer": "zebra-4711"})
        big = "x" * 5000
        first = store.threads.checkpoint("t", {"doc": big, "items": ["a" * 100, "b" * 100], "n": 1})
        store.threads.checkpoint("t", {"doc": big, "items": ["a" * 100, "b" * 100, "c"], "n": 2}, tags=["t1"])
        store.threads.backup("t", tmp_path / "t.tlar")
        expected = {c.id: store.threads.get_state(c.id) for c in store.threads.walk("t")}
    assert b"zebra-4711" not in (tmp_path / "e.db").read_bytes()
    with open_store("memory://") as plain:  # no key ring needed to restore an archive
        plain.threads.restore_backup(tmp_path / "t.tlar")
        assert {c.id: plain.threads.get_state(c.id) for c in plain.threads.walk("t")} == expected
        assert plain.threads.get_thread("t").metadata == {"customer": "zebra-4711"}
        plain.threads.backup("t", tmp_path / "again.tlar")
    with open_store(f"sqlite:///{tmp_path}/e2.db", keyring=KeyRing.generate()) as other:
        other.threads.restore_backup(tmp_path / "again.tlar")
        assert {c.id: other.threads.get_state(c.id) for c in other.threads.walk("t")} == expected
        assert other.threads.get(first.id).tags == ()
        assert other.threads.get_thread("t").metadata == {"customer": "zebra-4711"}


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_rotation_reencrypts_everything_online_and_resumably(tmp_path: Path, backend: str) -> None:
    ring = KeyRing.generate()
    url = "memory://" if backend == "memory" else f"sqlite:///{tmp_path}/r.db"
    store = open_store(url, keyring=ring)
    try:
        core = store.checkpoints
        core.create_thread("t", metadata={"k": "v"})
        ids = []
        for i in range(30):
            ids.append(
                core.create(
                    "t", {"items": [f"item {j}" * 5 for j in range(i + 2)], "doc": "d" * 300, "n": i}
                ).id
            )
        store.repository.put_writes("t", ids[-1], [])
        before = {cid: core.get_state(cid) for cid in ids}
        assert set(core.keys_in_use()) == {1}
        store.serializer.keyring = ring.rotated()
        core.create("t", {"items": ["new"] * 3, "n": 99})
        assert set(core.keys_in_use()) == {1, 2}
        first = core.rotate_keys(batch=7)
        assert first > 30
        assert set(core.keys_in_use()) == {2}
        assert core.rotate_keys(batch=7) == 0  # resumable: nothing left to do
        assert {cid: core.get_state(cid) for cid in ids} == before
        assert core.get_thread("t").metadata == {"k": "v"}
        old_ring_only = KeyRing({1: ring.keys[1]}, 1, ring.hash_key)
        store.serializer.keyring = old_ring_only
        with pytest.raises(IntegrityError, match="key 2"):
            core.get_state(ids[0])
    finally:
        store.close()


def test_rotation_needs_a_key_ring() -> None:
    with open_store("memory://") as store, pytest.raises(InvalidInput, match="no key ring"):
        store.checkpoints.rotate_keys()
    with open_store("memory://") as store:
        store.checkpoints.create_thread("t")
        store.checkpoints.create("t", {"a": "x" * 100})
        assert store.checkpoints.keys_in_use() == {None: 3}
