"""Limits: the maximum state size, and bounded memory for listing and for archive streaming.

Memory is measured in a child process (peak resident set, ``VmHWM`` of /proc/self/status, and the
resident set before the measured work), so the figures are not disturbed by the test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import POSTGRES_URL as PG_URL
from conftest import postgres_available, sqlite_counts, unique_name
from threadline import InvalidInput, LimitExceeded, open_store

MB = 1 << 20


DURABLE = ["memory", "sqlite"] + (["postgresql"] if postgres_available() else [])


def _url(backend: str, tmp_path: Path, name: str = "s") -> str:
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/{name}.db"
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}schema={unique_name('tl_limits')}"


@pytest.fixture(params=DURABLE)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param


# ---------------------------------------------------------------- maximum state size


def test_a_state_above_max_state_bytes_is_refused_and_nothing_is_written(
    backend: str, tmp_path: Path
) -> None:
    url = _url(backend, tmp_path)
    with open_store(url, max_state_bytes=10_000) as store:
        store.threads.create_thread("t")
        small = store.threads.checkpoint("t", {"text": "x" * 9_000})
        before = store.checkpoints.stats()
        counts = sqlite_counts(tmp_path / "s.db") if backend == "sqlite" else None
        cases = [
            {"text": "y" * 10_001},  # one value
            {"a": "a" * 6_000, "b": "b" * 6_000},  # several values adding up
            {"log": [f"message {i} " + "z" * 100 for i in range(100)]},  # a list stored as an item log
            {"blob": os.urandom(20_000)},  # incompressible bytes
        ]
        for state in cases:
            with pytest.raises(LimitExceeded, match=r"state of \d+ bytes exceeds the limit of 10000 bytes"):
                store.threads.checkpoint("t", state)
        with pytest.raises(InvalidInput):  # LimitExceeded is an InvalidInput
            store.threads.checkpoint("t", cases[0])
        store.threads.create_branch("t", "side")
        side = store.threads.checkpoint("t", {"text": "side"}, branch="side")
        with pytest.raises(LimitExceeded):  # a merge function's result is checked too
            store.threads.merge("t", "side", strategy=lambda base, ours, theirs: cases[0])
        after = store.checkpoints.stats()
        assert after.checkpoints == before.checkpoints + 1  # the branch's own checkpoint only
        assert after.logical_bytes == before.logical_bytes + side.logical_size
        assert store.threads.latest("t").id == small.id  # type: ignore[union-attr]
        if counts is not None:
            now = sqlite_counts(tmp_path / "s.db")
            assert now["blobs"] == counts["blobs"] and now["items"] == counts["items"]
        assert store.threads.get_state(small.id) == {"text": "x" * 9_000}


def test_the_default_limit_is_256_mib_and_none_disables_it(tmp_path: Path) -> None:
    with open_store("memory://") as store:
        assert store.checkpoints.max_state_bytes == 256 * MB
    with open_store("memory://", max_state_bytes=None) as store:
        store.threads.create_thread("t")
        store.threads.checkpoint("t", {"big": b"\x00" * (2 * MB)})


# ---------------------------------------------------------------- child-process measurements

_CHILD = r"""
import json, sys, time
from pathlib import Path

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

from threadline import open_store
job, url, arg = sys.argv[1], sys.argv[2], sys.argv[3]
with open_store(url) as store:
    if job == "iter":
        it = store.checkpoints.iter("big")
        first = next(it)
        base = status("VmRSS")
        t = time.perf_counter()
        count = 1 + sum(1 for _ in it)
    else:
        store.checkpoints.list_threads(limit=1)
        base = status("VmRSS")
        t = time.perf_counter()
        if job == "backup":
            count = store.threads.backup(["big"], arg).checkpoints
        elif job == "verify":
            count = store.threads.verify_backup(arg).checkpoints
        elif job == "reject":
            from threadline.errors import ArchiveError
            try:
                store.threads.restore_backup(arg)
            except ArchiveError as exc:
                count = -1 if "too large when decompressed" in str(exc) else -2
            else:
                count = 0
        else:
            count = len(store.threads.restore_backup(arg).imported)
    seconds = time.perf_counter() - t
print(json.dumps({"base": base, "peak": status("VmHWM"), "count": count, "seconds": seconds}))
"""


def _measure(job: str, url: str, arg: str = "") -> dict[str, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = (
        str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    )
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, job, url, arg], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"{job}: {result['count']} items, resident before {result['base'] / MB:.1f} MiB, "
        f"peak {result['peak'] / MB:.1f} MiB, {result['seconds']:.1f} s"
    )
    return result


@pytest.mark.parametrize("durable", [b for b in DURABLE if b != "memory"])
def test_iterating_20k_checkpoints_keeps_memory_flat(durable: str, tmp_path: Path) -> None:
    url = _url(durable, tmp_path, "list")
    fast = url + "?synchronous=normal" if durable == "sqlite" else url
    pad = "m" * 4000  # each checkpoint carries ~4 KB of metadata: holding them all would cost > 80 MB
    with open_store(fast) as store:
        store.threads.create_thread("big")
        batch = [
            {"thread_id": "big", "state": {"i": i}, "metadata": {"i": i, "pad": pad}, "title": f"step {i}"}
            for i in range(500)
        ]
        for _ in range(40):
            store.checkpoints.create_many(batch)
        assert store.checkpoints.stats(["big"]).checkpoints == 20_000
    result = _measure("iter", url)
    assert result["count"] == 20_000
    # SQLite's page cache (cache_size = 16 MB per connection) fills while the file is read; beyond it
    # nothing may grow with the number of checkpoints listed.
    assert result["peak"] - result["base"] < 28 * MB


ARCHIVE_VALUES = 200  # distinct incompressible values of 1 MiB: a ~200 MiB archive


@pytest.mark.parametrize("durable", [b for b in DURABLE if b != "memory"])
def test_a_200_mb_archive_streams_in_bounded_memory(durable: str, tmp_path: Path) -> None:
    started = time.monotonic()
    url = _url(durable, tmp_path, "src")
    fast = url + "?synchronous=normal" if durable == "sqlite" else url
    with open_store(fast) as store:
        store.threads.create_thread("big")
        for i in range(ARCHIVE_VALUES):  # each checkpoint adds one new 1 MiB value and keeps a small list
            store.threads.checkpoint("big", {"chunk": os.urandom(MB), "i": i, "log": ["a", "b", i]})
    archive = tmp_path / "big.tlar"
    backup = _measure("backup", url, str(archive))
    size = archive.stat().st_size
    assert size > ARCHIVE_VALUES * MB
    verify = _measure("verify", url, str(archive))
    restore = _measure("restore", _url("sqlite", tmp_path, "dst"), str(archive))
    assert (backup["count"], verify["count"], restore["count"]) == (ARCHIVE_VALUES, ARCHIVE_VALUES, 1)
    print(f"archive of {size / MB:.0f} MiB, whole test {time.monotonic() - started:.0f} s")
    for result in (backup, verify, restore):
        assert result["peak"] < 100 * MB  # well below the 200 MiB the archive holds
        assert result["peak"] - result["base"] < 50 * MB
    with open_store(_url("sqlite", tmp_path, "dst")) as restored:
        head = restored.threads.latest("big")
        assert head is not None and len(restored.threads.get_state(head.id)["chunk"]) == MB


def test_a_decompression_bomb_in_an_archive_is_rejected_within_the_documented_bound(tmp_path: Path) -> None:
    """A 10 KB zstd frame without a declared size that inflates to 300 MiB of zeros. The reader stops at
    the serializer's bound (256 MiB of output) and rejects the archive; it holds at most that much."""
    import zstandard

    from threadline.archive import _Writer
    from threadline.core import blob_hash

    compressor = zstandard.ZstdCompressor(level=1, write_content_size=False).compressobj()
    zeros = bytes(MB)
    frame = b"".join(compressor.compress(zeros) for _ in range(300)) + compressor.flush()
    assert len(frame) < 64 * 1024
    path = tmp_path / "bomb.tlar"
    with open(path, "wb") as f:
        writer = _Writer(f)
        writer.record(b"H", {"format": 1, "created_at": 1, "threads": ["t"], "extra": {}})
        writer.record(b"V", {"h": blob_hash(b"x"), "d": b"\x01" + frame})
        writer.finish()
    url = _url("sqlite", tmp_path, "bomb")
    result = _measure("reject", url, str(path))
    assert result["count"] == -1
    assert result["peak"] < 256 * MB + 64 * MB
    with open_store(url) as store:
        assert store.checkpoints.stats().threads == 0


@pytest.mark.parametrize("shape", ["value", "item"])
def test_max_value_bytes_refuses_one_large_value(shape: str) -> None:
    from threadline import LimitExceeded, open_store

    with open_store("memory://", max_value_bytes=1000) as store:
        store.checkpoints.create_thread("t")
        store.checkpoints.create("t", {"small": "x" * 500, "items": ["y" * 500, "z" * 500]})
        big = "b" * 2000
        state = {"doc": big} if shape == "value" else {"items": ["y" * 500, "z" * 500, big]}
        with pytest.raises(LimitExceeded, match="limit for one value is 1000 bytes") as info:
            store.checkpoints.create("t", state)
        assert ("state['doc']" if shape == "value" else "an item of state['items']") in str(info.value)
        assert len(store.checkpoints.list("t").items) == 1  # nothing written
