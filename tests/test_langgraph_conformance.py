"""LangGraph's own conformance suite (langgraph-checkpoint-conformance) against ThreadlineSaver."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES

from threadline.langgraph import ThreadlineSaver


def postgres_admin_url() -> str | None:
    """A reachable PostgreSQL server when the PostgreSQL backend exists; None (skip) outside CI."""
    url = os.environ.get("THREADLINE_TEST_POSTGRES_URL", "postgresql:///postgres")
    try:
        if importlib.util.find_spec("threadline.storage.postgres") is None:
            raise RuntimeError("threadline.storage.postgres is missing")
        import psycopg

        psycopg.connect(url, connect_timeout=2).close()
        return url
    except Exception:
        if os.environ.get("CI"):
            pytest.fail("CI must test the PostgreSQL backend: set THREADLINE_TEST_POSTGRES_URL")
        return None


@contextlib.contextmanager
def temporary_database(admin: str) -> Iterator[str]:
    """A fresh database on the server (dropped afterwards), as a URL."""
    import psycopg

    name = f"tl_lg_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(admin)
    try:
        yield f"{parts.scheme}://{parts.netloc}/{name}" + (f"?{parts.query}" if parts.query else "")
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _url_factories(tmp_path: Path) -> dict[str, Callable[[int], str]]:
    factories: dict[str, Callable[[int], str]] = {
        "memory": lambda n: "memory://",
        "sqlite": lambda n: f"sqlite:///{tmp_path}/conf{n}.db",
    }
    return factories


@pytest.mark.parametrize("backend", ["memory", "sqlite", "postgres"])
async def test_conformance_all_capabilities(backend: str, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        if backend == "postgres":
            admin = postgres_admin_url()
            if admin is None:
                pytest.skip("no PostgreSQL backend or server (set THREADLINE_TEST_POSTGRES_URL)")
            make_url: Callable[[int], str] = lambda n: stack.enter_context(temporary_database(admin))  # noqa: E731
        else:
            make_url = _url_factories(tmp_path)[backend]
        await _validate_all(backend, make_url)


async def _validate_all(backend: str, make_url: Callable[[int], str]) -> None:
    counter = iter(range(1000))

    async def factory() -> AsyncIterator[ThreadlineSaver]:
        with ThreadlineSaver.from_url(make_url(next(counter))) as saver:
            yield saver

    registered = checkpointer_test(name=f"ThreadlineSaver[{backend}]")(factory)
    report = await validate(registered)
    failures = {name: r.failures for name, r in report.results.items() if not r.passed}
    assert not failures, failures
    assert {name for name, r in report.results.items() if r.passed} == {c.value for c in ALL_CAPABILITIES}
