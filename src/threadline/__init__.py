"""threadline: checkpoints for long-running LLM agents and workflows.

Sessions group threads; threads hold branches of checkpoints; checkpoints are
immutable snapshots of state, stored so that cost grows with what changed.

    >>> import threadline
    >>> with threadline.open_store("memory://") as store:
    ...     thread = store.checkpoints.create_thread("chat-1")
    ...     cp = store.checkpoints.create("chat-1", {"messages": ["hi", "hello"]})
    ...     store.checkpoints.get_state(cp.id)
    {'messages': ['hi', 'hello']}
"""

from threadline.core import CheckpointDomainService
from threadline.errors import (
    AlreadyExists,
    Conflict,
    Expired,
    IntegrityError,
    InvalidInput,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    SchemaError,
    SerializationError,
    StorageError,
    ThreadlineError,
)
from threadline.model import (
    Branch,
    Checkpoint,
    CheckpointFilter,
    CheckpointKind,
    CheckpointStatus,
    CleanupReport,
    Page,
    Policy,
    Session,
    SessionStatus,
    Stats,
    SyncPoint,
    Thread,
)
from threadline.serde import Serializer
from threadline.sessions import CleanupResult, SessionCheckpointManager, SessionStats
from threadline.store import Store, open_store

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "Branch",
    "Checkpoint",
    "CheckpointDomainService",
    "CheckpointFilter",
    "CheckpointKind",
    "CheckpointStatus",
    "CleanupReport",
    "CleanupResult",
    "Conflict",
    "Expired",
    "IntegrityError",
    "InvalidInput",
    "LimitExceeded",
    "NotFound",
    "Page",
    "PermissionDenied",
    "Policy",
    "SchemaError",
    "SerializationError",
    "Serializer",
    "Session",
    "SessionCheckpointManager",
    "SessionStats",
    "SessionStatus",
    "Stats",
    "StorageError",
    "Store",
    "SyncPoint",
    "Thread",
    "ThreadlineError",
    "__version__",
    "open_store",
]
