"""The explicit allowlist of LangGraph and langchain-core types a LangGraph store may hold.

threadline never pickles and never looks a class up by a name read from storage: a value
of a class loads only if the class was registered on the store's :class:`~threadline.Serializer`.
:func:`register_langgraph_types` registers what LangGraph graphs put in their state and
pending writes; it mirrors LangGraph's own strict-mode allowlist
(``langgraph.checkpoint.serde._msgpack.SAFE_MSGPACK_TYPES``). Register your own pydantic
models and dataclasses with ``store.serializer.register_pydantic`` / ``register_dataclass``.

Registered names are short and stable (``lc.AIMessage``, ``lg.Send``): they are written
with every value, and they do not change when a library moves a class between modules.
"""

from __future__ import annotations

import collections
import copy
import functools
import ipaddress
import pathlib
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from threadline.serde import Serializer

#: (registered name, module, class name) of every pydantic model registered.
LANGCHAIN_MODELS: tuple[tuple[str, str, str], ...] = tuple(
    (f"lc.{name}", module, name)
    for module, names in (
        ("langchain_core.messages", ("HumanMessage", "HumanMessageChunk", "AIMessage", "AIMessageChunk")),
        (
            "langchain_core.messages",
            ("SystemMessage", "SystemMessageChunk", "ChatMessage", "ChatMessageChunk"),
        ),
        ("langchain_core.messages", ("ToolMessage", "ToolMessageChunk", "FunctionMessage")),
        ("langchain_core.messages", ("FunctionMessageChunk", "RemoveMessage")),
        ("langchain_core.documents", ("Document",)),
    )
    for name in names
)

#: LangGraph dataclasses registered field by field.
LANGGRAPH_DATACLASSES: tuple[tuple[str, str], ...] = (
    ("lg.Interrupt", "Interrupt"),
    ("lg.Command", "Command"),
    ("lg.Overwrite", "Overwrite"),
    ("lg.TimeoutPolicy", "TimeoutPolicy"),
)


def _model_hooks(cls: Any) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """A model is stored as its non-default fields (plus extra fields): a plain message
    costs its content and id, not a dozen empty fields, and loads back equal.

    Fields are read from the instance and restored with ``model_construct`` (no
    re-validation: the values are the model's own, read back from a verified store).
    This is about ten times faster than ``model_dump``/``model_validate`` for messages,
    which matters because a chat's whole message list is serialized on every put.
    """
    defaults = {  # required fields have none, so they are always stored
        name: field.get_default(call_default_factory=True)
        for name, field in cls.model_fields.items()
        if not field.is_required()
    }
    required = {name for name, field in cls.model_fields.items() if field.is_required()}

    def to_data(value: Any) -> Any:
        data = {}
        for name, v in value.__dict__.items():
            if name in defaults:
                default = defaults[name]
                if v is default or (type(v) is type(default) and v == default):
                    continue
            data[name] = v
        extra = value.__pydantic_extra__
        if extra:
            data.update(extra)
        return data

    fields = cls.model_fields
    names = frozenset(fields)
    # Each missing field's default, in field order: immutable defaults are shared (as
    # pydantic shares them), mutable ones are made fresh at every load.
    template: dict[str, Any] = {}
    fresh: list[tuple[str, Callable[[], Any]]] = []
    for name, field in fields.items():
        template[name] = None
        if field.default_factory is not None:
            fresh.append((name, field.default_factory))
        elif isinstance(field.default, list | dict | set):
            fresh.append((name, functools.partial(copy.deepcopy, field.default)))
        elif not field.is_required():
            template[name] = field.default
    allow_extra = cls.model_config.get("extra") == "allow"
    private = getattr(cls, "__private_attributes__", {})
    setattr_ = object.__setattr__

    def from_data(data: Any) -> Any:
        # What model_construct does, without its per-call signature inspection (slow here).
        # The fields keep their declared order (as in an instance made by the class), so
        # a loaded message encodes to the very bytes it was stored as.
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__} data must be a mapping")
        keys = data.keys()
        if not required <= keys:
            raise TypeError(f"{cls.__name__} data lacks {sorted(required - keys)}")
        values = template.copy()
        for name, make in fresh:
            if name not in data:
                values[name] = make()
        if keys <= names:
            values.update(data)
            extra: dict[str, Any] = {}
        else:
            extra = {k: v for k, v in data.items() if k not in names}
            if not allow_extra:
                raise TypeError(f"{cls.__name__} has no fields {sorted(extra)}")
            values.update((k, v) for k, v in data.items() if k in names)
        obj = cls.__new__(cls)
        setattr_(obj, "__dict__", values)
        setattr_(obj, "__pydantic_fields_set__", set(keys))  # extra fields too, as pydantic does
        setattr_(obj, "__pydantic_extra__", extra if allow_extra else None)
        setattr_(
            obj, "__pydantic_private__", {k: a.get_default() for k, a in private.items()} if private else None
        )
        return obj

    return to_data, from_data


def _register_stdlib(serializer: Serializer) -> None:
    serializer.register(collections.deque, "py.deque", list, collections.deque)
    for path_cls in (pathlib.PurePosixPath, pathlib.PosixPath, pathlib.PureWindowsPath):
        serializer.register(path_cls, f"py.{path_cls.__name__}", str, path_cls)
    for ip_cls in (
        ipaddress.IPv4Address,
        ipaddress.IPv6Address,
        ipaddress.IPv4Network,
        ipaddress.IPv6Network,
        ipaddress.IPv4Interface,
        ipaddress.IPv6Interface,
    ):
        serializer.register(ip_cls, f"py.{ip_cls.__name__}", str, ip_cls)
    serializer.register(ZoneInfo, "py.ZoneInfo", lambda z: z.key, ZoneInfo)


def register_langgraph_types(serializer: Serializer) -> Serializer:
    """Register the allowlist on ``serializer`` (idempotent) and return it.

    Covers langchain-core messages (every message class and chunk, ``RemoveMessage``) and
    ``Document``; LangGraph's ``Send``, ``Interrupt``, ``Command``, ``Overwrite``,
    ``TimeoutPolicy`` and delta-channel snapshots; and ``deque``, paths, IP addresses and
    ``ZoneInfo`` from the standard library. Anything else fails to serialize with an error
    naming its key path and how to register it.
    """
    import importlib

    from langgraph.checkpoint.serde.types import _DeltaSnapshot
    from langgraph.types import Send

    _register_stdlib(serializer)
    for name, module, attr in LANGCHAIN_MODELS:
        cls = getattr(importlib.import_module(module), attr)
        to_data, from_data = _model_hooks(cls)
        serializer.register(cls, name, to_data, from_data, by_state=True)
    lg_types = importlib.import_module("langgraph.types")
    for name, attr in LANGGRAPH_DATACLASSES:
        serializer.register_dataclass(getattr(lg_types, attr), name)
    serializer.register(
        Send,
        "lg.Send",
        lambda s: [s.node, s.arg, s.timeout],
        lambda d: Send(d[0], d[1], timeout=d[2]),
    )
    serializer.register(_DeltaSnapshot, "lg.DeltaSnapshot", lambda s: s.value, _DeltaSnapshot)
    return serializer


__all__ = ["LANGCHAIN_MODELS", "LANGGRAPH_DATACLASSES", "register_langgraph_types"]
