"""Concurrency suite (short setting): 2 to 8 OS processes writing one store at the same instant.

The workers, the checks and the long setting live in ``scripts/concurrency_suite.py``
(``python scripts/concurrency_suite.py --rounds 3 --writes 200``); see docs/reliability.md.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
WRITES = int(os.environ.get("THREADLINE_CONCURRENCY_WRITES", "25"))
PG_URL = os.environ.get("THREADLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


conc = _load("concurrency_suite")


def _postgres_available() -> bool:
    """PostgreSQL runs when its backend imports and (outside CI) a server answers; in CI it must run."""
    try:
        importlib.import_module("threadline.storage.postgres")
    except ImportError:
        return False
    if os.environ.get("CI"):
        return True
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=2).close()
    except Exception:
        return False
    return True


BACKENDS = ["sqlite"] + (["postgresql"] if _postgres_available() else [])


@pytest.fixture(params=BACKENDS)
def make_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    if request.param == "sqlite":
        return lambda name: f"sqlite:///{tmp_path}/{name}.db"
    sep = "&" if "?" in PG_URL else "?"
    return lambda name: f"{PG_URL}{sep}schema=tl_cc_{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize("processes", [2, 8])
@pytest.mark.parametrize("scenario", conc.SCENARIOS)
def test_processes_never_fork_and_losers_get_conflict(
    make_url: Callable[[str], str], scenario: str, processes: int
) -> None:
    result = conc.run_once(make_url(f"{scenario}-{processes}"), scenario, processes, WRITES)
    print(
        f"{scenario} x{processes}: stored {result.stored}, conflicts {result.conflicts}, "
        f"max latency {result.max_latency_ms} ms"
    )
    assert result.errors == []  # in particular no "database is locked"
    assert result.locked_errors == 0
    assert result.silent_forks == 0
    assert result.problems == []
    if scenario == "cas":
        assert result.stored + result.conflicts == processes * WRITES
        assert result.stored >= WRITES  # progress: at least one winner per round of reads
    else:
        assert result.stored == processes * WRITES
        assert result.conflicts == 0
