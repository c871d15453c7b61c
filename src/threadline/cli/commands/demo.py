"""``threadline demo``: write a small agent conversation and read it back.

(The full demo, on LangGraph with sessions and sync points, lands with those layers.)
"""

from __future__ import annotations

import time

from threadline.cli import render
from threadline.cli.common import app, open_cli_store, out
from threadline.errors import IntegrityError


@app.command()
def demo() -> None:
    """Write a small agent conversation as checkpoints, read it back, print a summary."""
    with open_cli_store() as store:
        core = store.checkpoints
        run = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1000:03d}"
        thread = core.create_thread(f"demo-{run}", metadata={"demo": True})
        messages: list[dict[str, str]] = []
        started = time.perf_counter()
        last = None
        for step in range(20):
            role = "user" if step % 2 == 0 else "assistant"
            messages.append(
                {"role": role, "content": f"step {step}: " + "lorem ipsum " * 40, "id": f"m{step}"}
            )
            last = core.create(thread.id, {"messages": messages, "turn": step, "status": "running"})
        assert last is not None
        elapsed = time.perf_counter() - started
        if core.get_state(last.id)["messages"] != messages:  # pragma: no cover - would be a bug
            raise IntegrityError("demo read back a different state than it wrote")
        stats = core.stats([thread.id])
        rows = [
            ("thread", thread.id),
            ("checkpoints written", str(stats.checkpoints)),
            ("write time", f"{elapsed * 1000:.1f} ms"),
            ("logical bytes (sum of states)", f"{stats.logical_bytes:,}"),
            ("stored bytes (after sharing)", f"{stats.stored_bytes:,}"),
            ("sharing ratio", f"{stats.sharing_ratio:.1f}x"),
            ("latest checkpoint", last.id),
        ]
        out.print(render.figures(f"threadline demo on {store.url}", rows))
        out.print("State read back and verified: identical to what was written.")
        out.print(f"Next: threadline log {thread.id} --graph")
