"""Concurrency suite (short setting): 2 to 8 OS processes writing one store at the same instant.

The workers, the checks and the long setting live in ``scripts/concurrency_suite.py``
(``python scripts/concurrency_suite.py --rounds 3 --writes 200``); see docs/reliability.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import POSTGRES_URL as PG_URL
from conftest import load_script, postgres_available, unique_name

WRITES = int(os.environ.get("THREADLINE_CONCURRENCY_WRITES", "25"))


conc = load_script("concurrency_suite")


BACKENDS = ["sqlite"] + (["postgresql"] if postgres_available() else [])


@pytest.fixture(params=BACKENDS)
def make_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    if request.param == "sqlite":
        return lambda name: f"sqlite:///{tmp_path}/{name}.db"
    sep = "&" if "?" in PG_URL else "?"
    return lambda name: f"{PG_URL}{sep}schema={unique_name('tl_cc')}"


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
