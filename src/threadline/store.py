"""Opening a store from a URL, and the Store object that holds the layers.

``memory://``, ``sqlite:///path/file.db`` (the default ``./threadline.db``) and,
with the ``[postgres]`` extra, ``postgresql://user@host/db``. Backends are
imported lazily, so ``import threadline`` needs no database driver.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from threadline.core import CheckpointDomainService
from threadline.errors import InvalidInput
from threadline.serde import KeyRing, Serializer
from threadline.sessions import SessionCheckpointManager
from threadline.storage.base import CheckpointRepository
from threadline.threads import ThreadCheckpointService

DEFAULT_URL = "sqlite:///./threadline.db"


def _open_memory(url: str, path: str, options: Mapping[str, str]) -> CheckpointRepository:
    from threadline.storage.memory import MemoryRepository

    if path not in ("", "/") or urlsplit(url).netloc:
        raise InvalidInput(f"memory:// takes no host or path, got {url!r}")
    return MemoryRepository()


def _open_sqlite(url: str, path: str, options: Mapping[str, str]) -> CheckpointRepository:
    module = importlib.import_module("threadline.storage.sqlite")
    if not path or path == "/":
        raise InvalidInput(
            f"{url!r} names no database file; use sqlite:///relative.db or sqlite:////absolute.db"
        )
    # sqlite:///x.db -> "x.db" (relative), sqlite:////abs/x.db -> "/abs/x.db"
    file = unquote(path[1:] if path.startswith("/") else path)
    repo: CheckpointRepository = module.SQLiteRepository(file, synchronous=options.get("synchronous", "full"))
    return repo


def _open_postgres(url: str, path: str, options: Mapping[str, str]) -> CheckpointRepository:
    try:
        module = importlib.import_module("threadline.storage.postgres")
    except ModuleNotFoundError as exc:
        raise InvalidInput(
            f"PostgreSQL stores need the PostgreSQL backend ({exc.name} is missing): "
            "pip install 'threadline[postgres]'"
        ) from None
    repo: CheckpointRepository = module.PostgresRepository(url)
    return repo


#: URL scheme -> opener. Adding a backend is one line here.
BACKENDS: dict[str, Callable[[str, str, Mapping[str, str]], CheckpointRepository]] = {
    "memory": _open_memory,
    "sqlite": _open_sqlite,
    "postgresql": _open_postgres,
    "postgres": _open_postgres,
}


def open_repository(url: str) -> CheckpointRepository:
    """Open the storage backend a URL names (migrating its schema forward).

    Raises:
        InvalidInput: the URL is malformed or its scheme unknown.
        SchemaError: the store is from a newer threadline or is not a threadline store.
        StorageError: the backend cannot be reached.
    """
    if not isinstance(url, str) or "://" not in url:
        raise InvalidInput(
            f"store URL {url!r} is not a URL; use memory://, sqlite:///path/file.db or postgresql://user@host/db"
        )
    parts = urlsplit(url)
    opener = BACKENDS.get(parts.scheme.lower())
    if opener is None:
        known = ", ".join(f"{s}://" for s in BACKENDS)
        raise InvalidInput(f"unknown store URL scheme {parts.scheme!r} in {url!r}; known schemes: {known}")
    if parts.scheme.lower() == "sqlite" and parts.netloc:
        raise InvalidInput(
            f"{url!r}: a SQLite URL has three slashes: sqlite:///relative.db or sqlite:////abs/path.db"
        )
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return opener(url, parts.path, options)


class Store:
    """An open checkpoint store: the layers over one repository.

    Use it as a context manager (sync or async) or call :meth:`close`.

    Attributes:
        repository: the storage backend.
        serializer: register your own types on it before writing them.
        checkpoints: the checkpoint core layer.
        threads: the thread layer (branches, merge, restore, collaboration, backups).
        sessions: the session layer (policies, cleanup, statistics, sync points).
    """

    def __init__(
        self,
        repository: CheckpointRepository,
        *,
        serializer: Serializer | None = None,
        keyring: KeyRing | None = None,
        **options: Any,
    ) -> None:
        self.repository = repository
        self.serializer = serializer or Serializer()
        if keyring is not None:
            self.serializer.keyring = keyring
        self.checkpoints = CheckpointDomainService(repository, self.serializer, **options)
        self.threads = ThreadCheckpointService(self.checkpoints)
        self.sessions = SessionCheckpointManager(self.threads)

    @property
    def url(self) -> str:
        return self.repository.url

    def close(self) -> None:
        """Close the backend. Idempotent."""
        self.repository.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"


def open_store(
    url: str | None = None,
    *,
    serializer: Serializer | None = None,
    keyring: KeyRing | None = None,
    **options: Any,
) -> Store:
    """Open (creating and migrating as needed) the store at ``url``.

    ``url`` defaults to ``sqlite:///./threadline.db``. With ``keyring``, values, headers
    and metadata are encrypted at rest (AES-256-GCM) and content hashes are keyed.
    Options are passed to the core layer (``inline_limit``, ``max_state_bytes``,
    ``list_min_items``).

    Raises:
        InvalidInput, SchemaError, StorageError: see :func:`open_repository`.
    """
    return Store(open_repository(url or DEFAULT_URL), serializer=serializer, keyring=keyring, **options)


def url_from_env(explicit: str | None = None) -> str:
    """The store URL for command-line use: explicit, else THREADLINE_URL, else the default."""
    return explicit or os.environ.get("THREADLINE_URL") or DEFAULT_URL
