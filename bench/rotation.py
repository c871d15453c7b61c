"""Key rotation throughput: re-encrypt N blobs of an encrypted SQLite store.

Usage: ``python bench/rotation.py [--blobs 100000] [--batch 500]``. Prints the time to build
the store, the rotation throughput (frames re-encrypted per second; a frame is a blob, a list
item, a header, an inline value or a metadata record) and checks every value still reads.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from threadline import open_store
from threadline.serde import KeyRing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    ring = KeyRing.generate()
    with tempfile.TemporaryDirectory(prefix="threadline-rotation-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'r.db'}?synchronous=normal"
        with open_store(url, keyring=ring) as store:
            core = store.checkpoints
            threads = 100
            for t in range(threads):
                core.create_thread(f"t{t}")
            started = time.perf_counter()
            per_thread = args.blobs // threads
            for step in range(0, per_thread, 10):
                requests = [
                    {"thread_id": f"t{t}", "state": {"doc": f"document {t}-{s} " + "x" * 64}}
                    for t in range(threads)
                    for s in range(step, min(step + 10, per_thread))
                ]
                core.create_many(requests)
            built = time.perf_counter() - started
            before = core.keys_in_use()
            store.serializer.keyring = ring.rotated()
            started = time.perf_counter()
            frames = core.rotate_keys(batch=args.batch)
            elapsed = time.perf_counter() - started
            after = core.keys_in_use()
            sample = core.latest("t7")
            assert sample is not None and core.get_state(sample.id)["doc"].startswith("document 7-")
            print(f"built {args.blobs:,} blobs in {built:.1f} s; frames by key before: {before}")
            print(
                f"rotated {frames:,} frames in {elapsed:.1f} s: {frames / elapsed:,.0f} frames/s "
                f"(batch {args.batch}); frames by key after: {after}"
            )


if __name__ == "__main__":
    main()
