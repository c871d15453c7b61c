"""One exception tree for everything threadline raises.

Every error a caller can cause derives from :class:`ThreadlineError`, so
``except ThreadlineError`` is enough to handle all of them. Driver errors
(sqlite3, psycopg) are translated into these in exactly one place per backend.
"""

from __future__ import annotations


class ThreadlineError(Exception):
    """Base class of every threadline error."""


class InvalidInput(ThreadlineError, ValueError):
    """An argument was malformed: an id, a name, a URL, a filter, a state."""


class NotFound(ThreadlineError, LookupError):
    """A checkpoint, thread, branch or session does not exist."""


class StaleReference(NotFound):
    """A write referenced a stored value that is gone (collected meanwhile).

    Raised by backends inside a write, which stored nothing; the core layer
    re-plans the write without its caches and tries once more.
    """


class AlreadyExists(ThreadlineError):
    """Something with the same identity exists already (thread id, milestone name)."""


class Conflict(ThreadlineError):
    """Another writer changed what this write expected (optimistic concurrency).

    Nothing was stored. ``expected`` and ``actual`` name the two branch heads.
    """

    def __init__(self, message: str, *, expected: str | None = None, actual: str | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class Expired(ThreadlineError):
    """The checkpoint exists but has expired (or was archived) and cannot be used so."""


class PermissionDenied(ThreadlineError, PermissionError):
    """The acting principal lacks the role the operation needs."""


class SerializationError(ThreadlineError, TypeError):
    """A value cannot be serialized, or stored bytes cannot be decoded safely."""


class IntegrityError(ThreadlineError):
    """Stored bytes no longer match their checksum or hash, or a reference is dangling."""


class ArchiveError(IntegrityError):
    """A backup archive is truncated, tampered with, malformed or of an unknown
    format version. Raised before anything is written."""


class LimitExceeded(InvalidInput):
    """A state or value is larger than the configured limit."""


class StorageError(ThreadlineError):
    """The backend failed: I/O error, lost connection, not a threadline store."""


class SchemaError(StorageError):
    """The store's schema is from a newer threadline, or is not a threadline schema."""


__all__ = [
    "AlreadyExists",
    "ArchiveError",
    "Conflict",
    "Expired",
    "IntegrityError",
    "InvalidInput",
    "LimitExceeded",
    "NotFound",
    "PermissionDenied",
    "SchemaError",
    "SerializationError",
    "StaleReference",
    "StorageError",
    "ThreadlineError",
]
