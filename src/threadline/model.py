"""The domain model: immutable values shared by every layer.

Nothing here touches storage. Ids are validated here, at the boundary, so the
layers below can trust them.
"""

from __future__ import annotations

import enum
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from threadline.errors import InvalidInput

T = TypeVar("T")

MAX_ID_LENGTH = 256
MAX_NAME_LENGTH = 128
DEFAULT_BRANCH = "main"


class CheckpointKind(enum.StrEnum):
    """Why a checkpoint was taken."""

    AUTO = "auto"
    MANUAL = "manual"
    ERROR = "error"
    MILESTONE = "milestone"


class CheckpointStatus(enum.StrEnum):
    """Lifecycle status; the only part of a checkpoint besides tags and counters that changes."""

    ACTIVE = "active"
    EXPIRED = "expired"
    ARCHIVED = "archived"


KIND_CODES: dict[CheckpointKind, int] = {k: i for i, k in enumerate(CheckpointKind)}
KINDS_BY_CODE: dict[int, CheckpointKind] = {i: k for k, i in KIND_CODES.items()}
STATUS_CODES: dict[CheckpointStatus, int] = {s: i for i, s in enumerate(CheckpointStatus)}
STATUSES_BY_CODE: dict[int, CheckpointStatus] = {i: s for s, i in STATUS_CODES.items()}


# ---------------------------------------------------------------- time


def now_us() -> int:
    """Wall-clock time in integer microseconds since the epoch (UTC)."""
    return time.time_ns() // 1000


def us_to_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


def datetime_to_us(value: datetime) -> int:
    if value.tzinfo is None:
        raise InvalidInput(f"datetime {value.isoformat()} has no timezone; pass an aware datetime (UTC)")
    return int(value.timestamp() * 1_000_000)


# ---------------------------------------------------------------- ids

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


#: Identifiers and names already found valid (exact str objects' values), so that the
#: ids a process writes again and again are checked once. Bounded: cleared when full.
_VALID_IDS: set[str] = set()
_VALID_NAMES: set[str] = set()
_VALID_MAX = 4096


def _remember_valid(cache: set[str], value: str) -> str:
    if len(cache) >= _VALID_MAX:
        cache.clear()
    cache.add(value)
    return value


def validate_id(value: object, what: str = "id") -> str:
    """Check a caller-chosen identifier (thread id, session id, principal).

    Raises:
        InvalidInput: not a string, empty, longer than 256 characters, or
            containing control characters.
    """
    if type(value) is str and value in _VALID_IDS:
        return value
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidInput(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(f"{what} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}")
    if _CONTROL.search(value):
        raise InvalidInput(f"{what} {value!r} contains control characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"{what} {value!r} contains a lone surrogate (not valid Unicode)") from None
    return _remember_valid(_VALID_IDS, value) if type(value) is str else value


def validate_name(value: object, what: str = "name") -> str:
    """Check a branch or milestone name: like an id, at most 128 characters,
    no leading/trailing slash or whitespace, no '..' component."""
    if type(value) is str and value in _VALID_NAMES:
        return value
    name = validate_id(value, what)
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"{what} is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}")
    if name != name.strip():
        raise InvalidInput(f"{what} {name!r} has leading or trailing whitespace")
    if name.startswith("/") or name.endswith("/") or "//" in name:
        raise InvalidInput(f"{what} {name!r} must not start or end with '/' or contain '//'")
    if name in {".", ".."} or any(part in {".", ".."} for part in name.split("/")):
        raise InvalidInput(f"{what} {name!r} must not contain '.' or '..' components")
    return _remember_valid(_VALID_NAMES, name) if type(name) is str else name


# Random bits of ids come from a generator seeded from the OS (and reseeded in a forked
# child), not from os.urandom per id: a system call per id releases the GIL, and a thread
# that must take it back behind busy threads waits up to a switch interval (5 ms).
_RNG = random.Random()


def _reseed() -> None:
    _RNG.seed(os.urandom(32))


_reseed()
os.register_at_fork(after_in_child=_reseed)


def random_bits(n: int) -> int:
    """``n`` random bits for ids (unique, not secret: never use them as keys or nonces)."""
    return _RNG.getrandbits(n)


class _IdClock:
    """Time-ordered 128-bit ids in the UUIDv7 layout, strictly increasing within a process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._seq = 0

    def next(self, after: str | None = None) -> str:
        floor_ms, floor_seq = _id_time(after) if after else (0, -1)
        with self._lock:
            wall_ms = time.time_ns() // 1_000_000
            if floor_ms > wall_ms + 60_000:  # not our layout (or a wild clock): do not follow it
                floor_ms, floor_seq = 0, -1
            ms = max(wall_ms, self._last_ms, floor_ms)
            seq = self._seq + 1 if ms == self._last_ms else 0
            if ms == floor_ms and seq <= floor_seq:
                seq = floor_seq + 1
            if seq > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                ms, seq = ms + 1, 0
            self._last_ms, self._seq = ms, seq
        rand = _RNG.getrandbits(62)
        value = (ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _id_time(checkpoint_id: str) -> tuple[int, int]:
    if _CANONICAL_ID.match(checkpoint_id):
        value = int(checkpoint_id.replace("-", ""), 16)
    else:
        value = uuid.UUID(checkpoint_id).int
    return value >> 80, (value >> 64) & 0xFFF


_CLOCK = _IdClock()


def new_checkpoint_id(after: str | None = None) -> str:
    """A new time-ordered checkpoint id, greater than ``after`` when given.

    Ids are canonical lowercase UUID strings (UUIDv7 layout); their string
    order is their creation order.
    """
    return _CLOCK.next(after)


def new_id() -> str:
    """A new random identifier for threads and sessions (time-ordered too)."""
    return _CLOCK.next()


_CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def validate_checkpoint_id(value: object) -> str:
    """Return the canonical form of a checkpoint id (any UUID string).

    Raises:
        InvalidInput: not a UUID string.
    """
    if not isinstance(value, str):
        raise InvalidInput(f"checkpoint id must be a string, got {type(value).__name__}")
    if _CANONICAL_ID.match(value):
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidInput(f"checkpoint id {value[:80]!r} is not a valid id (expected a UUID)") from None


def checkpoint_id_bytes(checkpoint_id: str) -> bytes:
    """The 16 bytes of a canonical checkpoint id."""
    return bytes.fromhex(checkpoint_id.replace("-", ""))


def checkpoint_id_from_bytes(raw: bytes) -> str:
    """The canonical string of 16 id bytes."""
    h = bytes(raw).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# ---------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """An immutable snapshot of a thread's state, without the state itself.

    Read the state with ``get_state``. ``stored_size`` is what this checkpoint
    added to the store (new bytes); ``logical_size`` what its state adds up to.
    """

    id: str
    thread_id: str
    branch: str
    parent_id: str | None
    kind: CheckpointKind
    status: CheckpointStatus
    created_at: datetime
    expires_at: datetime | None = None
    title: str | None = None
    description: str | None = None
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    error_message: str | None = None
    error_type: str | None = None
    milestone: str | None = None
    protected: bool = False
    merge_parent_id: str | None = None
    restored_from: str | None = None
    sync_point: str | None = None
    origin: Mapping[str, Any] | None = None
    restore_count: int = 0
    logical_size: int = 0
    stored_size: int = 0

    @property
    def parents(self) -> tuple[str, ...]:
        """Both parents for a merge checkpoint, else the one parent (or none)."""
        return tuple(p for p in (self.parent_id, self.merge_parent_id) if p)


@dataclass(frozen=True, slots=True)
class Thread:
    """One line of execution with its own history and branches."""

    id: str
    created_at: datetime
    session_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    default_branch: str = DEFAULT_BRANCH
    origin: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Branch:
    """A named head pointer inside a thread."""

    thread_id: str
    name: str
    head: str | None
    created_at: datetime
    base: str | None = None


@dataclass(frozen=True, slots=True)
class CheckpointFilter:
    """What ``list_checkpoints`` selects. Every field narrows the selection.

    ``metadata`` matches by equality of each given key; ``tags`` requires all
    given tags; times are inclusive bounds; ``statuses`` defaults to all.
    """

    branch: str | None = None
    kinds: frozenset[CheckpointKind] | None = None
    statuses: frozenset[CheckpointStatus] | None = None
    tags: frozenset[str] = frozenset()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    created_after: datetime | None = None
    created_before: datetime | None = None

    @staticmethod
    def build(
        *,
        branch: str | None = None,
        kinds: Sequence[CheckpointKind | str] | CheckpointKind | str | None = None,
        statuses: Sequence[CheckpointStatus | str] | CheckpointStatus | str | None = None,
        tags: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> CheckpointFilter:
        """Validate loose arguments into a filter (strings accepted for enums)."""
        return CheckpointFilter(
            branch=validate_name(branch, "branch name") if branch is not None else None,
            kinds=_enum_set(CheckpointKind, kinds, "kind"),
            statuses=_enum_set(CheckpointStatus, statuses, "status"),
            tags=frozenset(validate_id(t, "tag") for t in tags),
            metadata=_check_metadata(metadata or {}),
            created_after=created_after,
            created_before=created_before,
        )


E = TypeVar("E", bound=enum.Enum)


def parse_enum(cls: type[E], value: object, what: str) -> E:
    """Parse an enum member from itself or its value; InvalidInput lists the valid values."""
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:
        valid = ", ".join(str(m.value) for m in cls)
        raise InvalidInput(f"unknown {what} {value!r}; expected one of: {valid}") from None


def _enum_set(cls: type[E], values: Sequence[Any] | E | str | None, what: str) -> frozenset[E] | None:
    if values is None:
        return None
    if isinstance(values, str | enum.Enum):
        values = [values]
    return frozenset(parse_enum(cls, v, what) for v in values)


def _check_metadata(metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(metadata, Mapping):
        raise InvalidInput(f"metadata must be a mapping, got {type(metadata).__name__}")
    for key in metadata:
        if not isinstance(key, str):
            raise InvalidInput(f"metadata keys must be strings, got {key!r}")
    return dict(metadata)


check_metadata = _check_metadata


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing; pass ``next_cursor`` back to get the next page."""

    items: list[T]
    next_cursor: str | None


def iterate_pages(fetch: Callable[[str | None], Page[T]]) -> Iterator[T]:
    """Every item of a paged listing: ``fetch(cursor)`` returns one page."""
    cursor: str | None = None
    while True:
        page = fetch(cursor)
        yield from page.items
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


@dataclass(frozen=True, slots=True)
class Stats:
    """Statistics of a thread, a set of threads or a whole store."""

    threads: int
    checkpoints: int
    by_kind: Mapping[str, int]
    by_status: Mapping[str, int]
    logical_bytes: int
    stored_bytes: int
    oldest: datetime | None
    newest: datetime | None
    restores: int
    branches: int
    milestones: int

    @property
    def sharing_ratio(self) -> float:
        """Logical bytes per stored byte: how much sharing saved."""
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else 0.0


@dataclass(frozen=True, slots=True)
class CleanupReport:
    """What a cleanup removed (or, in a dry run, would remove)."""

    dry_run: bool
    expired: list[str]
    deleted: list[str]
    freed_bytes: int = 0


# ---------------------------------------------------------------- sessions (session layer values)

#: Fields of :class:`Policy`, in order; a thread may override any of them.
POLICY_FIELDS = ("ttl_auto", "ttl_manual", "ttl_error", "ttl_milestone", "max_checkpoints", "min_age")


@dataclass(frozen=True, slots=True)
class Policy:
    """A retention policy: what cleanup may remove. The default keeps everything.

    * ``ttl_<kind>``: a checkpoint of that kind expires this long after it was
      created (None: never). Milestones expire too, but a protected milestone is
      never removed; unprotect it (``set_protected``) to let retention take it.
    * ``max_checkpoints``: at most this many checkpoints per thread; cleanup
      removes the oldest ``auto`` ones first, then ``error``, then ``manual``, then
      unprotected milestones (None: no limit).
    * ``min_age``: nothing younger than this is ever removed (None: no minimum).

    Whatever the policy, branch heads, protected milestones and checkpoints held
    by a sync point are never removed.

    Raises:
        InvalidInput: a negative duration, a count below 1, or a value of the wrong type.
    """

    ttl_auto: timedelta | None = None
    ttl_manual: timedelta | None = None
    ttl_error: timedelta | None = None
    ttl_milestone: timedelta | None = None
    max_checkpoints: int | None = None
    min_age: timedelta | None = None

    def __post_init__(self) -> None:
        for name in ("ttl_auto", "ttl_manual", "ttl_error", "ttl_milestone", "min_age"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, timedelta):
                raise InvalidInput(f"policy {name} must be a timedelta or None, got {type(value).__name__}")
            if value < timedelta(0):
                raise InvalidInput(f"policy {name} must not be negative, got {value}")
        count = self.max_checkpoints
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
            raise InvalidInput(f"policy max_checkpoints must be a positive integer or None, got {count!r}")

    @staticmethod
    def build(
        *,
        ttl: Mapping[CheckpointKind | str, timedelta | None] | None = None,
        max_checkpoints: int | None = None,
        min_age: timedelta | None = None,
    ) -> Policy:
        """A policy from a ``{kind: ttl}`` mapping (kinds as enums or strings).

        Raises InvalidInput (unknown kind, bad value).
        """
        return Policy(**_ttl_fields(ttl or {}), max_checkpoints=max_checkpoints, min_age=min_age)

    def ttl(self, kind: CheckpointKind) -> timedelta | None:
        """How long checkpoints of ``kind`` live (None: forever)."""
        value: timedelta | None = getattr(self, f"ttl_{kind.value}")
        return value

    def override(self, overrides: Mapping[str, Any]) -> Policy:
        """This policy with some fields replaced (``ttl={kind: ...}`` is accepted too).

        Raises InvalidInput (unknown field or kind, bad value).
        """
        return Policy(**{**{n: getattr(self, n) for n in POLICY_FIELDS}, **policy_overrides(overrides)})

    @property
    def keeps_everything(self) -> bool:
        return all(getattr(self, n) is None for n in POLICY_FIELDS if n != "min_age")


def _ttl_fields(ttl: Mapping[CheckpointKind | str, timedelta | None]) -> dict[str, timedelta | None]:
    if not isinstance(ttl, Mapping):
        raise InvalidInput(f"ttl must be a mapping of checkpoint kind to timedelta, got {type(ttl).__name__}")
    return {f"ttl_{parse_enum(CheckpointKind, k, 'checkpoint kind').value}": v for k, v in ttl.items()}


def policy_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Validate per-thread policy overrides into ``{field: value}`` (None is a value: "never")."""
    if not isinstance(overrides, Mapping):
        raise InvalidInput(f"policy overrides must be a mapping, got {type(overrides).__name__}")
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if key == "ttl":
            out.update(_ttl_fields(value))
        elif key in POLICY_FIELDS:
            out[key] = value
        else:
            valid = ", ".join(POLICY_FIELDS)
            raise InvalidInput(f"unknown policy field {key!r}; expected one of: ttl, {valid}")
    Policy(**out)  # validates the values
    return out


class SessionStatus(enum.StrEnum):
    ACTIVE = "active"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Session:
    """A named group of threads with one retention policy."""

    id: str
    created_at: datetime
    metadata: Mapping[str, Any] = field(default_factory=dict)
    owner: str | None = None
    status: SessionStatus = SessionStatus.ACTIVE
    policy: Policy = field(default_factory=Policy)


@dataclass(frozen=True, slots=True)
class SyncPoint:
    """One checkpoint per thread, written atomically under a label."""

    session_id: str
    label: str
    created_at: datetime
    members: Mapping[str, str]  # thread id -> checkpoint id
    metadata: Mapping[str, Any] = field(default_factory=dict)
