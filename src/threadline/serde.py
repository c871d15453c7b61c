"""Safe serialization of checkpoint values: msgpack, no pickle, only registered classes load.

Values are encoded with ``ormsgpack`` in one C call; the ``default`` hook only sees what
msgpack has no native form for and turns it into an extension value (``Ext``). Decoding
rebuilds only the built-in types below and classes registered on the :class:`Serializer`;
nothing else is ever imported or called.

Extension codes (a storage format: never renumber, only append)::

    code  type                    payload
    1     int beyond 64 bits      signed big-endian two's complement, minimal length
    2     tuple                   msgpack array of the items
    3     set                     msgpack array of the items, sorted by their encoded bytes
    4     frozenset               same as set
    5     dict with non-str keys  msgpack array [k0, v0, k1, v1, ...] in insertion order
    6     datetime                msgpack [year, month, day, hour, minute, second, microsecond, tz, fold]
    7     date                    msgpack [year, month, day]
    8     time                    msgpack [hour, minute, second, microsecond, tz, fold]
    9     timedelta               msgpack [days, seconds, microseconds]
    10    UUID                    the 16 raw bytes
    11    Decimal                 ASCII of ``str(value)`` (exact, keeps exponent, sign and NaN)
    12    registered class        msgpack [name, data], data = the class's ``to_data(value)``

Lists of registered pydantic models (a chat's messages) can be encoded item by item as
extension values that reuse the previous version's encodings where an item's state is
unchanged (:meth:`Serializer.encode_models`); the bytes are those :meth:`Serializer.dumps`
writes.

``tz`` is ``None`` (naive), a ``zoneinfo.ZoneInfo`` key (str), or a fixed UTC offset in
microseconds (int), restored as ``datetime.timezone(offset)``: other tzinfo classes keep their
offset but not their class or name.

Lossy on purpose: ``bytearray`` and ``memoryview`` load as ``bytes``. Dict insertion order is
kept and is part of the encoding, so equal dicts built in different orders encode differently;
sets are sorted, so equal sets encode equally. Only exact types are accepted: subclasses of
``str``, ``dict``, ``datetime``... are refused unless registered (enums via
:meth:`Serializer.register_enum`), never silently downgraded.

Storage framing (:meth:`Serializer.pack`): one flag byte whose bit 0 means "zstd frame" and
bit 1 "encrypted". An encrypted frame continues with the key id (2 bytes, big endian), a
96-bit random nonce and the AES-256-GCM ciphertext with its tag; the flag byte and key id are
authenticated as associated data. Compression happens before encryption.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import hashlib
import itertools
import json
import operator
import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import ormsgpack
import zstandard

from threadline.errors import InvalidInput, LimitExceeded, SerializationError

EXT_BIGINT = 1
EXT_TUPLE = 2
EXT_SET = 3
EXT_FROZENSET = 4
EXT_DICT = 5
EXT_DATETIME = 6
EXT_DATE = 7
EXT_TIME = 8
EXT_TIMEDELTA = 9
EXT_UUID = 10
EXT_DECIMAL = 11
EXT_OBJECT = 12
#: Extensions whose payload is a msgpack array of values.
_CONTAINER_CODES = frozenset((EXT_OBJECT, EXT_TUPLE, EXT_SET, EXT_FROZENSET, EXT_DICT))

FLAG_RAW = 0
FLAG_ZSTD = 1
FLAG_ENCRYPTED = 2

DEFAULT_MAX_DECOMPRESSED = 256 * 1024 * 1024

# Everything msgpack cannot express goes through `default`, which refuses what is not registered.
_OPTIONS = (
    ormsgpack.OPT_PASSTHROUGH_BIG_INT
    | ormsgpack.OPT_PASSTHROUGH_DATACLASS
    | ormsgpack.OPT_PASSTHROUGH_DATETIME
    | ormsgpack.OPT_PASSTHROUGH_ENUM
    | ormsgpack.OPT_PASSTHROUGH_SUBCLASS
    | ormsgpack.OPT_PASSTHROUGH_TUPLE
    | ormsgpack.OPT_PASSTHROUGH_UUID
)
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
# ormsgpack refuses more nested containers than this within one packb call.
_MAX_DEPTH = 255
_PAIR = b"\x92"
_MIN_SAVING = 0.9
_READ_CHUNK = 1 << 20
# Lists are encoded and decoded in runs of items of about this many bytes: one encoder
# or decoder call per run, and no buffer large enough for the allocator to map fresh
# pages for it (glibc maps blocks above 128 KiB; their page faults cost more than the
# encoding itself).
RUN_BYTES = 32 << 10
_MICROSECOND = dt.timedelta(microseconds=1)
_STATE = operator.attrgetter("__dict__", "__pydantic_extra__")
_PROBE_ITEMS = 16

_BASES = (str, int, float, bytes, list, dict, tuple, set, frozenset, dt.date, dt.time, dt.timedelta)


class ItemRun(NamedTuple):
    """Consecutive list items encoded in one call: ``data`` is the msgpack array of the
    ``length`` items, ``data[start:]`` (after the array header) the concatenation of their
    encodings (msgpack values, so no item is a prefix of another)."""

    length: int
    data: bytes
    start: int

    @property
    def size(self) -> int:
        return len(self.data) - self.start

    def begins_with(self, encoded: Sequence[bytes]) -> bool:
        """Whether this run's first ``len(encoded)`` items are encoded exactly as ``encoded``."""
        return self.data.startswith(b"".join(encoded), self.start)

    def extended(self, encoded: Sequence[bytes]) -> ItemRun:
        """This run followed by more item encodings."""
        count = self.length + len(encoded)
        header = array_header(count)
        return ItemRun(count, header + self.data[self.start :] + b"".join(encoded), len(header))

    @staticmethod
    def of(encoded: Sequence[bytes]) -> ItemRun:
        """A run of item encodings already made (by :meth:`Serializer.dumps_items`)."""
        header = array_header(len(encoded))
        return ItemRun(len(encoded), header + b"".join(encoded), len(header))


def array_header(n: int) -> bytes:
    """Return the msgpack array header for ``n`` elements.

    Raises InvalidInput when ``n`` is negative and LimitExceeded above 2**32 - 1.
    """
    if n < 0:
        raise InvalidInput(f"array length must be >= 0, got {n}")
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    if n < 1 << 32:
        return b"\xdd" + n.to_bytes(4, "big")
    raise LimitExceeded(f"msgpack arrays hold at most 2**32 - 1 items, got {n}")


class _Registration(NamedTuple):
    cls: type
    name: str
    to_data: Callable[[Any], Any]
    from_data: Callable[[Any], Any]
    prefix: bytes  # the start of the ext payload: array header + packed name
    by_state: bool  # to_data reads only the instance's __dict__ and __pydantic_extra__


class ListMemo(NamedTuple):
    """What :meth:`Serializer.encode_models` keeps of a list it encoded, for the next version
    of the list. Immutable: it may be shared between threads.

    ``chunks[j]`` is the plain msgpack encoding (no hook, so built-in types only) of the
    states of ``counts[j]`` consecutive items from ``starts[j]``: each item's ``__dict__``
    then its ``__pydantic_extra__``. ``exts[i]`` is item ``i``'s extension value, made from
    exactly the state encoded in ``chunks`` under the registration in ``registrations``.
    """

    starts: dict[int, int]  # first item of a chunk -> its index in chunks
    chunks: tuple[bytes, ...]
    counts: tuple[int, ...]
    types: list[type]
    exts: list[ormsgpack.Ext]
    registrations: dict[type, _Registration]
    size: int  # about how many bytes the memo keeps alive


# -- built-in extension types ------------------------------------------------------------------


def _tz_field(tz: dt.tzinfo | None, offset: dt.timedelta | None) -> int | str | None:
    if tz is None:
        return None
    if isinstance(tz, ZoneInfo) and tz.key:
        return tz.key
    if offset is None:
        raise ValueError(f"tzinfo {tz!r} gives no UTC offset")
    return offset // _MICROSECOND


def _tz_from_field(field: Any) -> dt.tzinfo | None:
    if field is None:
        return None
    if isinstance(field, str):
        return ZoneInfo(field)
    if type(field) is int:
        return dt.timezone(dt.timedelta(microseconds=field))
    raise ValueError(f"invalid tz field {field!r}")


def _encode_bigint(value: int) -> ormsgpack.Ext:
    return ormsgpack.Ext(EXT_BIGINT, value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True))


def _encode_datetime(value: dt.datetime) -> ormsgpack.Ext:
    tz = _tz_field(value.tzinfo, value.utcoffset())
    fields = [value.year, value.month, value.day, value.hour, value.minute, value.second]
    return ormsgpack.Ext(EXT_DATETIME, ormsgpack.packb([*fields, value.microsecond, tz, value.fold]))


def _encode_date(value: dt.date) -> ormsgpack.Ext:
    return ormsgpack.Ext(EXT_DATE, ormsgpack.packb([value.year, value.month, value.day]))


def _encode_time(value: dt.time) -> ormsgpack.Ext:
    tz = _tz_field(value.tzinfo, value.utcoffset())
    fields = [value.hour, value.minute, value.second, value.microsecond, tz, value.fold]
    return ormsgpack.Ext(EXT_TIME, ormsgpack.packb(fields))


def _encode_timedelta(value: dt.timedelta) -> ormsgpack.Ext:
    return ormsgpack.Ext(EXT_TIMEDELTA, ormsgpack.packb([value.days, value.seconds, value.microseconds]))


def _encode_uuid(value: uuid.UUID) -> ormsgpack.Ext:
    return ormsgpack.Ext(EXT_UUID, value.bytes)


def _encode_decimal(value: Decimal) -> ormsgpack.Ext:
    return ormsgpack.Ext(EXT_DECIMAL, str(value).encode("ascii"))


_ATOMIC_ENCODERS: dict[type, Callable[[Any], ormsgpack.Ext]] = {
    int: _encode_bigint,
    dt.datetime: _encode_datetime,
    dt.date: _encode_date,
    dt.time: _encode_time,
    dt.timedelta: _encode_timedelta,
    uuid.UUID: _encode_uuid,
    Decimal: _encode_decimal,
}


_BUILTIN_TYPES = frozenset(
    [type(None), bool, float, str, bytes, bytearray, memoryview, list, dict, tuple, set, frozenset]
) | frozenset(_ATOMIC_ENCODERS)


def _fields(payload: bytes, count: int) -> list[Any]:
    fields = ormsgpack.unpackb(payload)
    if type(fields) is not list or len(fields) != count:
        raise ValueError(f"expected an array of {count} fields")
    return fields


def _decode_datetime(payload: bytes) -> dt.datetime:
    year, month, day, hour, minute, second, microsecond, tz, fold = _fields(payload, 9)
    return dt.datetime(year, month, day, hour, minute, second, microsecond, _tz_from_field(tz), fold=fold)


def _decode_date(payload: bytes) -> dt.date:
    return dt.date(*_fields(payload, 3))


def _decode_time(payload: bytes) -> dt.time:
    hour, minute, second, microsecond, tz, fold = _fields(payload, 6)
    return dt.time(hour, minute, second, microsecond, _tz_from_field(tz), fold=fold)


def _decode_timedelta(payload: bytes) -> dt.timedelta:
    days, seconds, microseconds = _fields(payload, 3)
    return dt.timedelta(days=days, seconds=seconds, microseconds=microseconds)


_ATOMIC_DECODERS: dict[int, Callable[[bytes], Any]] = {
    EXT_BIGINT: lambda payload: int.from_bytes(payload, "big", signed=True),
    EXT_DATETIME: _decode_datetime,
    EXT_DATE: _decode_date,
    EXT_TIME: _decode_time,
    EXT_TIMEDELTA: _decode_timedelta,
    EXT_UUID: lambda payload: uuid.UUID(bytes=payload),
    EXT_DECIMAL: lambda payload: Decimal(payload.decode("ascii")),
}


# -- registration helpers -----------------------------------------------------------------------


def _default_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _dataclass_hooks(cls: type) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    fields = dataclasses.fields(cls)
    init_names = frozenset(f.name for f in fields if f.init)
    other_names = frozenset(f.name for f in fields if not f.init)

    def to_data(value: Any) -> dict[str, Any]:
        # Shallow on purpose: nested dataclasses stay objects and keep their own registration.
        return {f.name: getattr(value, f.name) for f in fields}

    def from_data(data: Any) -> Any:
        if type(data) is not dict:
            raise ValueError(f"expected a dict of fields, got {type(data).__name__}")
        unknown = data.keys() - init_names - other_names
        if unknown:
            raise ValueError(f"unknown fields {sorted(map(str, unknown))}")
        obj = cls(**{k: v for k, v in data.items() if k in init_names})
        for key in other_names & data.keys():
            object.__setattr__(obj, key, data[key])
        return obj

    return to_data, from_data


def _hint(value: Any) -> str:
    cls = type(value)
    if dataclasses.is_dataclass(cls):
        return f"; register it with Serializer.register_dataclass({cls.__qualname__})"
    if callable(getattr(cls, "model_dump", None)) and callable(getattr(cls, "model_validate", None)):
        return f"; register it with Serializer.register_pydantic({cls.__qualname__})"
    if isinstance(value, enum.Enum):
        return f"; register it with Serializer.register_enum({cls.__qualname__})"
    for base in _BASES:
        if isinstance(value, base):
            return (
                f"; subclasses of {base.__name__} are not converted implicitly: convert the value to "
                f"{base.__name__} or register {cls.__qualname__} with Serializer.register"
            )
    return f"; register {cls.__qualname__} with Serializer.register(cls, name, to_data, from_data)"


# -- the serializer -----------------------------------------------------------------------------


class KeyRing:
    """Keys for authenticated encryption at rest (AES-256-GCM), with rotation.

    Several keys can decrypt, one (``active``) encrypts new values; every stored value
    records the id of the key that encrypted it. ``hash_key`` keys the content hashes that
    address shared values, so equal values deduplicate within a store while their hashes
    reveal nothing across stores; it is not rotated (changing it changes every address).

    Raises InvalidInput for key ids outside 1..65535, keys that are not 32 bytes, an
    active id without a key, or a hash key shorter than 16 bytes.
    """

    def __init__(self, keys: Mapping[int, bytes], active: int, hash_key: bytes) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ModuleNotFoundError:  # pragma: no cover - depends on the environment
            raise InvalidInput(
                "encryption needs the cryptography package: pip install 'threadline[crypto]'"
            ) from None
        for kid, key in keys.items():
            if not isinstance(kid, int) or not 1 <= kid <= 0xFFFF:
                raise InvalidInput(f"key id {kid!r} must be an integer between 1 and 65535")
            if not isinstance(key, bytes) or len(key) != 32:
                raise InvalidInput(f"key {kid} must be 32 bytes (AES-256), got {len(key)} bytes")
        if active not in keys:
            raise InvalidInput(f"active key {active} is not in the key ring (ids: {sorted(keys)})")
        if not isinstance(hash_key, bytes) or not 16 <= len(hash_key) <= 64:
            raise InvalidInput("hash_key must be 16 to 64 bytes")
        self.keys = dict(keys)
        self.active = active
        self.hash_key = hash_key
        self._aead = {kid: AESGCM(key) for kid, key in keys.items()}

    @classmethod
    def generate(cls) -> KeyRing:
        """A new key ring with one random key (id 1) and a random hash key."""
        return cls({1: os.urandom(32)}, 1, os.urandom(32))

    def rotated(self) -> KeyRing:
        """This key ring plus a new random key, which becomes the active one."""
        kid = max(self.keys) + 1
        if kid > 0xFFFF:
            raise InvalidInput("the key ring has no key ids left")
        return KeyRing({**self.keys, kid: os.urandom(32)}, kid, self.hash_key)

    def to_json(self) -> str:
        """The key ring as JSON (keep it secret: it holds the keys)."""
        return json.dumps(
            {
                "active": self.active,
                "keys": {str(k): base64.b64encode(v).decode() for k, v in sorted(self.keys.items())},
                "hash_key": base64.b64encode(self.hash_key).decode(),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> KeyRing:
        """Read a key ring written by :meth:`to_json`. Raises InvalidInput when malformed."""
        try:
            data = json.loads(text)
            keys = {int(k): base64.b64decode(v, validate=True) for k, v in data["keys"].items()}
            return cls(keys, int(data["active"]), base64.b64decode(data["hash_key"], validate=True))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidInput(f"key ring is malformed: {exc}") from None

    def encrypt(self, flag: int, data: bytes) -> bytes:
        head = bytes((flag,)) + self.active.to_bytes(2, "big")
        nonce = os.urandom(12)
        return head + nonce + self._aead[self.active].encrypt(nonce, data, head)

    def decrypt(self, framed: bytes) -> bytes:
        if len(framed) < 3 + 12 + 16:
            raise SerializationError("encrypted frame is truncated")
        head, kid = framed[:3], int.from_bytes(framed[1:3], "big")
        aead = self._aead.get(kid)
        if aead is None:
            raise SerializationError(
                f"value is encrypted with key {kid}, which is not in the key ring (ids: {sorted(self.keys)})"
            )
        try:
            return bytes(aead.decrypt(framed[3:15], framed[15:], head))
        except Exception:  # cryptography raises InvalidTag
            raise SerializationError(
                f"value encrypted with key {kid} cannot be decrypted: wrong key or tampered bytes"
            ) from None


def frame_key_id(framed: bytes) -> int | None:
    """The id of the key that encrypted a stored frame, or None when it is not encrypted."""
    if len(framed) >= 3 and framed[0] & FLAG_ENCRYPTED:
        return int.from_bytes(framed[1:3], "big")
    return None


class Serializer:
    """Encode values to msgpack and back, rebuilding only built-in and registered types.

    Thread-safe once registration is done (register everything at start-up). With a
    ``keyring``, every stored frame is encrypted and content hashes are keyed.
    """

    def __init__(
        self,
        *,
        compress_threshold: int | None = 2048,
        compress_level: int = 3,
        max_decompressed: int = DEFAULT_MAX_DECOMPRESSED,
        keyring: KeyRing | None = None,
    ) -> None:
        """Raise InvalidInput for a negative threshold, a zstd level outside -7..22 or a limit < 1."""
        if compress_threshold is not None and compress_threshold < 0:
            raise InvalidInput(f"compress_threshold must be >= 0 or None, got {compress_threshold}")
        if not -7 <= compress_level <= 22:
            raise InvalidInput(f"compress_level must be between -7 and 22, got {compress_level}")
        if max_decompressed < 1:
            raise InvalidInput(f"max_decompressed must be >= 1, got {max_decompressed}")
        self.compress_threshold = compress_threshold
        self.compress_level = compress_level
        self.max_decompressed = max_decompressed
        self.keyring = keyring
        self._by_type: dict[type, _Registration] = {}
        self._by_name: dict[str, _Registration] = {}
        self._local = threading.local()

    # -- registration

    def register(
        self,
        cls: type,
        name: str,
        to_data: Callable[[Any], Any],
        from_data: Callable[[Any], Any],
        *,
        by_state: bool = False,
    ) -> None:
        """Register ``cls`` under ``name``: dumped as ``to_data(value)``, loaded by ``from_data(data)``.

        ``to_data`` may return any serializable value. Registering a class again under a new
        name makes the new name the one written while the old one still loads (for renames).
        ``by_state=True`` (pydantic models only) declares that ``to_data`` reads nothing but
        the instance's ``__dict__`` and ``__pydantic_extra__``, and reads them by value
        (types and contents, not object identity; bytes, bytearray and memoryview alike, as
        the serializer stores all three as bytes), so that :meth:`encode_models` may encode
        an instance rebuilt from a copy of that state.
        Raises InvalidInput for an empty name, a built-in type, a name taken by another
        class, or ``by_state`` for a class that is not a pydantic model.
        """
        if not isinstance(cls, type):
            raise InvalidInput(f"expected a class, got {cls!r}")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"registration name must be a non-empty str, got {name!r}")
        if cls in _BUILTIN_TYPES:
            raise InvalidInput(f"{cls.__qualname__} is serialized natively and cannot be registered")
        if by_state and not hasattr(cls, "__pydantic_extra__"):
            raise InvalidInput(f"by_state needs a pydantic model; {cls.__qualname__} is not one")
        taken = self._by_name.get(name)
        if taken is not None and taken.cls is not cls:
            raise InvalidInput(f"name {name!r} is already registered for {_default_name(taken.cls)}")
        registration = _Registration(cls, name, to_data, from_data, _PAIR + ormsgpack.packb(name), by_state)
        self._by_type[cls] = registration
        self._by_name[name] = registration

    def register_dataclass(self, cls: type, name: str | None = None) -> None:
        """Register a dataclass; its fields are stored shallowly, so nested objects need registering too.

        Loading calls ``cls(**init_fields)`` then sets the non-init fields. The name defaults to
        ``module.QualName``. Raises InvalidInput if ``cls`` is not a dataclass, or as :meth:`register`.
        """
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise InvalidInput(f"{cls!r} is not a dataclass")
        to_data, from_data = _dataclass_hooks(cls)
        self.register(cls, name or _default_name(cls), to_data, from_data)

    def register_pydantic(self, cls: type, name: str | None = None) -> None:
        """Register a pydantic v2 model: stored as ``model_dump``, loaded by ``model_validate``.

        The name defaults to ``module.QualName``. Raises InvalidInput if ``cls`` lacks
        ``model_dump``/``model_validate``, or as :meth:`register`.
        """
        model_validate = getattr(cls, "model_validate", None)
        if not isinstance(cls, type) or not callable(getattr(cls, "model_dump", None)):
            raise InvalidInput(f"{cls!r} is not a pydantic v2 model (no model_dump)")
        if not callable(model_validate):
            raise InvalidInput(f"{cls!r} is not a pydantic v2 model (no model_validate)")

        def to_data(value: Any) -> Any:
            return value.model_dump(mode="python", by_alias=True, round_trip=True)

        self.register(cls, name or _default_name(cls), to_data, model_validate)

    def register_enum(self, cls: type[enum.Enum], name: str | None = None) -> None:
        """Register an Enum class: stored as its member's value, loaded by ``cls(value)``.

        Raises InvalidInput if ``cls`` is not an Enum, or as :meth:`register`.
        """
        if not (isinstance(cls, type) and issubclass(cls, enum.Enum)):
            raise InvalidInput(f"{cls!r} is not an Enum class")
        self.register(cls, name or _default_name(cls), lambda member: member.value, cls)

    # -- values

    def dumps(self, value: Any, *, path: str = "value") -> bytes:
        """Encode ``value`` to msgpack bytes, equal bytes for equal values built the same way.

        Raises SerializationError naming the key path (``path`` is the root's name) of the first
        value that cannot be encoded, or of a circular reference.
        """
        try:
            return ormsgpack.packb(value, default=self._default, option=_OPTIONS)
        except Exception:
            # Rare path: redo it in Python, which knows where it is (and handles non-str keys).
            return _PathEncoder(self).dumps(value, path)

    def loads(self, data: bytes) -> Any:
        """Decode bytes made by :meth:`dumps`.

        Raises SerializationError for anything else: malformed msgpack, unknown extension
        code, unknown registered name, or data a registered class refuses.
        """
        decoder = _Decoder(self)
        try:
            return ormsgpack.unpackb(data, ext_hook=decoder.hook)
        except Exception as exc:
            raise decoder.failure(exc) from None

    def dumps_runs(self, items: Sequence[Any], *, path: str = "value") -> list[ItemRun]:
        """Encode a list in runs of consecutive items, one encoder call per run.

        The runs' bodies joined are the bytes of ``dumps(list(items))`` after its array
        header. Runs hold about :data:`RUN_BYTES` bytes each (sized from the items seen
        so far).

        Raises SerializationError as :meth:`dumps`, with paths ``path[i]...``.
        """
        runs: list[ItemRun] = []
        start, total, step = 0, len(items), 16
        while start < total:
            end = min(total, start + step)
            run = self.dumps_run(items[start:end], path=path, first=start)
            runs.append(run)
            step = max(1, RUN_BYTES * run.length // max(1, run.size))
            start = end
        return runs

    def dumps_run(self, items: Sequence[Any], *, path: str = "value", first: int = 0) -> ItemRun:
        """Encode consecutive list items in one encoder call: the msgpack array of them.

        Raises SerializationError as :meth:`dumps`, with paths ``path[first + i]...``.
        """
        count = len(items)
        try:
            data = ormsgpack.packb(
                items if type(items) is list else list(items), default=self._default, option=_OPTIONS
            )
        except Exception:  # rare path: item by item, naming what fails
            return ItemRun.of(self.dumps_items(items, path=path, first=first))
        return ItemRun(count, data, 1 if count < 16 else 3 if count < 1 << 16 else 5)

    def encode_models(
        self, items: Sequence[Any], memo: ListMemo | None = None
    ) -> tuple[list[ormsgpack.Ext], ListMemo] | None:
        """Each item's extension value (what :meth:`dumps` writes for it), reusing ``memo``,
        the memo of an earlier version of the list, for every item whose state is unchanged;
        and the memo of this list. A list of these extension values encodes to the bytes of
        the list itself, in one C call.

        Applies to lists of instances of classes registered ``by_state`` whose states hold
        only built-in types (str, bytes, int, float, bool, None, list, dict with str keys);
        returns None for any other list (encode it as usual then).

        Exact by construction: the states of all items are encoded with plain msgpack, in
        chunks aligned with the memo's. A memo item is reused only when its state's bytes are
        found again at the same position, with the same class and registration; plain msgpack
        is a prefix-free encoding, so equal bytes are equal states, field by field, in order,
        with their types. Any other item is rebuilt from the bytes just encoded (an object of
        its class holding the decoded state) and encoded by its registration, so its
        extension value and its memo bytes describe the same state even if another thread
        changes the item meanwhile.
        """
        n = len(items)
        if not n:
            return None
        types = list(map(type, items))
        registrations: dict[type, _Registration] = {}
        for cls in set(types):
            registration = self._by_type.get(cls)
            if registration is None or not registration.by_state:
                return None
            registrations[cls] = registration
        if memo is not None and any(memo.registrations.get(c, r) is not r for c, r in registrations.items()):
            memo = None
        try:
            return self._encode_models(items, types, registrations, memo)
        except ormsgpack.MsgpackEncodeError:  # a state plain msgpack cannot hold
            return None

    def _encode_models(
        self,
        items: Sequence[Any],
        types: list[type],
        registrations: dict[type, _Registration],
        memo: ListMemo | None,
    ) -> tuple[list[ormsgpack.Ext], ListMemo]:
        n = len(items)
        exts: list[ormsgpack.Ext] = []
        chunks: list[bytes] = []
        counts: list[int] = []
        old_starts, old_chunks, old_counts = (memo.starts, memo.chunks, memo.counts) if memo else ({}, (), ())
        old_types, old_exts = (memo.types, memo.exts) if memo else ([], [])
        start, seen, seen_bytes = 0, 0, 0
        while start < n:
            # A chunk where the memo has one, as long as it (or longer while it is small:
            # the memo's last chunk is where new items arrive); elsewhere ~RUN_BYTES.
            j = old_starts.get(start, -1)
            old, old_count = (old_chunks[j], old_counts[j]) if j >= 0 else (b"", 0)
            if old_count and len(old) < RUN_BYTES and j == len(old_chunks) - 1:
                count = max(old_count, RUN_BYTES * old_count // len(old))
            elif old_count:
                count = old_count
            else:
                count = RUN_BYTES * seen // seen_bytes if seen_bytes else _PROBE_ITEMS
            count = max(1, min(count, n - start))
            body = _pack_states(items[start : start + count])
            while len(body) > 2 * RUN_BYTES and count > 1:  # large items: a smaller chunk
                count = max(1, min(count - 1, count * RUN_BYTES // len(body)))
                body = _pack_states(items[start : start + count])
            kept, offset = _common_items(body, count, old, old_count) if old_count else (0, 0)
            same = (
                itertools.islice(types, start, start + kept),
                itertools.islice(old_types, start, start + kept),
            )
            if kept and not all(map(operator.is_, *same)):
                kept, offset = 0, 0
            exts.extend(old_exts[start : start + kept])
            if kept < count:
                exts.extend(
                    self._exts_from_states(types[start + kept : start + count], registrations, body, offset)
                )
            chunks.append(body)
            counts.append(count)
            seen, seen_bytes = seen + count, seen_bytes + len(body)
            start += count
        starts = dict(zip(itertools.accumulate(counts, initial=0), range(len(counts)), strict=False))
        size = 2 * seen_bytes + 64 * n
        return list(exts), ListMemo(starts, tuple(chunks), tuple(counts), types, exts, registrations, size)

    def _exts_from_states(
        self, types: list[type], registrations: dict[type, _Registration], body: bytes, offset: int
    ) -> list[ormsgpack.Ext]:
        """Extension values of items of ``types`` whose states are encoded in the chunk
        ``body`` from ``offset`` (0: the whole chunk) to its end."""
        count = len(types)
        states = ormsgpack.unpackb(array_header(2 * count) + body[offset:] if offset else body)
        exts: list[ormsgpack.Ext] = []
        for cls, state, extra in zip(types, states[0::2], states[1::2], strict=True):
            obj: Any = object.__new__(cls)
            object.__setattr__(obj, "__dict__", state)
            object.__setattr__(obj, "__pydantic_extra__", extra)
            exts.append(ormsgpack.Ext(EXT_OBJECT, self._object_payload(registrations[cls], obj)))
        return exts

    def dumps_items(self, items: Sequence[Any], *, path: str = "value", first: int = 0) -> list[bytes]:
        """Encode each item alone: the bytes it has inside ``dumps(list(items))``.

        Raises SerializationError as :meth:`dumps`, with paths ``path[first + i]...``.
        """
        dumps, fast = self.dumps, self._pack_fast
        result: list[bytes] = []
        for i, item in enumerate(items):
            try:
                result.append(fast(item, path))
            except Exception:
                result.append(dumps(item, path=f"{path}[{first + i}]"))
        return result

    def loads_items(self, encoded: Sequence[bytes]) -> list[Any]:
        """Decode item encodings from :meth:`dumps_items` into a list, in runs of about
        :data:`RUN_BYTES` bytes (one decoder call per run).

        Raises SerializationError as :meth:`loads`.
        """
        result: list[Any] = []
        start, size = 0, 0
        for end, item in enumerate(encoded, 1):
            size += len(item)
            if size >= RUN_BYTES or end == len(encoded):
                run = encoded[start:end]
                result.extend(self.loads(array_header(len(run)) + b"".join(run)))
                start, size = end, 0
        return result

    # -- storage framing

    def pack(self, data: bytes, *, encrypt: bool = True) -> bytes:
        """Frame ``data`` for storage: zstd-compressed when long enough and it saves >= 10%,
        then encrypted with the key ring's active key when there is one (and ``encrypt``)."""
        threshold = self.compress_threshold
        if self.keyring is None and (threshold is None or len(data) < threshold):
            return b"\x00" + data  # FLAG_RAW: the usual small value
        flag, payload = FLAG_RAW, data
        if threshold is not None and len(data) >= threshold:
            compressed: bytes = self._compressor().compress(data)
            if len(compressed) <= len(data) * _MIN_SAVING:
                flag, payload = FLAG_ZSTD, compressed
        if self.keyring is not None and encrypt:
            return self.keyring.encrypt(flag | FLAG_ENCRYPTED, payload)
        return bytes((flag,)) + payload

    def unpack(self, framed: bytes) -> bytes:
        """Return the payload of a frame made by :meth:`pack`, decrypted and decompressed.

        Raises SerializationError for an empty frame, an unknown flag, corrupt zstd data, an
        encrypted frame without its key (or with a wrong key, or tampered), and LimitExceeded
        when the payload would decompress beyond ``max_decompressed`` bytes.
        """
        if not framed:
            raise SerializationError("empty frame: no flag byte")
        flag = framed[0]
        if flag & ~(FLAG_ZSTD | FLAG_ENCRYPTED):
            raise SerializationError(f"unknown frame flag {flag}: written by a newer threadline or corrupt")
        if flag & FLAG_ENCRYPTED:
            if self.keyring is None:
                raise SerializationError("value is encrypted: open the store with its key ring")
            payload = self.keyring.decrypt(bytes(framed))
        else:
            payload = bytes(framed[1:])
        if flag & FLAG_ZSTD:
            return self._decompress(payload)
        return payload

    def content_hash(self, data: bytes) -> bytes:
        """The 128-bit address of a serialized value: blake2b, keyed by the key ring's hash
        key when there is one (so addresses reveal no equality across stores)."""
        key = self.keyring.hash_key if self.keyring is not None else b""
        return hashlib.blake2b(data, digest_size=16, key=key).digest()

    # -- internals

    def _default(self, value: Any) -> ormsgpack.Ext:
        registration = self._by_type.get(type(value))
        if registration is not None:  # the common case first: a registered class
            return ormsgpack.Ext(EXT_OBJECT, self._object_payload(registration, value))
        return self._to_ext(value, "", self._pack_fast)

    def _object_payload(self, registration: _Registration, value: Any) -> bytes:
        data = ormsgpack.packb(registration.to_data(value), default=self._default, option=_OPTIONS)
        return registration.prefix + data

    def _pack_fast(self, value: Any, path: str) -> bytes:
        return ormsgpack.packb(value, default=self._default, option=_OPTIONS)

    def _to_ext(self, value: Any, path: str, pack: Callable[[Any, str], bytes]) -> ormsgpack.Ext:
        """Encode one non-native value; ``pack`` encodes nested values (fast, or path-aware)."""
        cls = type(value)
        atomic = _ATOMIC_ENCODERS.get(cls)
        if atomic is not None:
            return atomic(value)
        if cls is tuple:
            return ormsgpack.Ext(EXT_TUPLE, pack(list(value), path))
        if cls is set or cls is frozenset:
            items = sorted(pack(item, f"{path}[<set item>]") for item in value)
            code = EXT_SET if cls is set else EXT_FROZENSET
            return ormsgpack.Ext(code, array_header(len(items)) + b"".join(items))
        registration = self._by_type.get(cls)
        if registration is None:
            raise SerializationError(
                f"{path}: object of type {cls.__name__} is not serializable{_hint(value)}"
            )
        data = registration.to_data(value)
        return ormsgpack.Ext(EXT_OBJECT, registration.prefix + pack(data, path))

    def _decode_ext(self, code: int, payload: bytes, unpack: Callable[[bytes], Any]) -> Any:
        if code in _CONTAINER_CODES:  # first: registered objects (messages) are the common case
            items = unpack(payload)
            if type(items) is not list:
                raise ValueError(f"extension {code} payload is not an array")
            if code == EXT_OBJECT:
                return self._rebuild(items)
            if code == EXT_TUPLE:
                return tuple(items)
            if code == EXT_SET:
                return set(items)
            if code == EXT_FROZENSET:
                return frozenset(items)
            pairs = iter(items)  # EXT_DICT
            return dict(zip(pairs, pairs, strict=True))
        atomic = _ATOMIC_DECODERS.get(code)
        if atomic is not None:
            return atomic(payload)
        raise SerializationError(f"unknown extension code {code}: written by a newer threadline or corrupt")

    def _rebuild(self, items: list[Any]) -> Any:
        if len(items) != 2 or type(items[0]) is not str:
            raise ValueError("registered object payload is not [name, data]")
        name, data = items
        registration = self._by_name.get(name)
        if registration is None:
            raise SerializationError(f"unknown registered type name {name!r}: register it before loading")
        try:
            return registration.from_data(data)
        except Exception as exc:
            raise SerializationError(f"cannot rebuild registered type {name!r}: {exc}") from exc

    def _compressor(self) -> Any:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:  # zstd contexts are not thread-safe: one per thread
            compressor = self._local.compressor = zstandard.ZstdCompressor(level=self.compress_level)
        return compressor

    def _decompress(self, payload: bytes) -> bytes:
        limit = self.max_decompressed
        try:
            size = zstandard.frame_content_size(payload)
            if size > limit:
                raise LimitExceeded(f"value decompresses to {size} bytes, above the limit of {limit}")
            decompressor = zstandard.ZstdDecompressor()
            if size >= 0:
                result: bytes = decompressor.decompress(payload, allow_extra_data=False)
                return result
            # No declared size (not written by us): stream, and stop past the limit.
            return _read_bounded(decompressor.stream_reader(payload), limit)
        except zstandard.ZstdError as exc:
            raise SerializationError(f"corrupt compressed frame: {exc}") from exc


def _pack_states(items: Sequence[Any]) -> bytes:
    """Plain msgpack of the items' states: [dict0, extra0, dict1, extra1, ...]. Raises
    TypeError (ormsgpack's error) for anything that is not a built-in type."""
    return ormsgpack.packb(list(itertools.chain.from_iterable(map(_STATE, items))), option=_OPTIONS)


def _common_items(body: bytes, count: int, old: bytes, old_count: int) -> tuple[int, int]:
    """How many leading items two chunks of states (``count`` and ``old_count`` items) have
    in common, all or none of the shorter one; and where the next item starts in ``body``
    (0 when none are common)."""
    head, old_head = len(array_header(2 * count)), len(array_header(2 * old_count))
    if old_count == count:
        return (count, len(body)) if body == old else (0, 0)
    if old_count < count:
        if body.startswith(memoryview(old)[old_head:], head):
            return old_count, head + len(old) - old_head
        return 0, 0
    return (count, len(body)) if old.startswith(memoryview(body)[head:], old_head) else (0, 0)


def _read_bounded(reader: Any, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    with reader:
        while chunk := reader.read(_READ_CHUNK):
            total += len(chunk)
            if total > limit:
                raise LimitExceeded(f"value decompresses to more than the limit of {limit} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


class _PathEncoder:
    """The slow, path-aware encoder used after the fast path failed; gives identical bytes."""

    def __init__(self, serializer: Serializer) -> None:
        self._serializer = serializer
        self._active: set[int] = set()

    def dumps(self, value: Any, path: str) -> bytes:
        try:
            return self._pack(value, path)
        except RecursionError as exc:
            raise SerializationError(f"{path}: value nested too deeply to serialize") from exc

    def _pack(self, value: Any, path: str) -> bytes:
        return ormsgpack.packb(self._prepare(value, path, 0), option=_OPTIONS)

    def _prepare(self, value: Any, path: str, depth: int) -> Any:
        """Return ``value`` with every non-native part replaced by its Ext."""
        cls = type(value)
        if cls is str:
            return _check_text(value, path)
        if cls is float or cls is bool or cls is bytes or value is None:
            return value
        if cls is int:
            return value if _INT_MIN <= value <= _INT_MAX else _encode_bigint(value)
        if cls is bytearray or cls is memoryview:
            return bytes(value)
        key = id(value)
        if key in self._active:
            raise SerializationError(f"{path}: circular reference (the value contains itself)")
        self._active.add(key)
        try:
            return self._prepare_container(value, path, depth)
        finally:
            self._active.discard(key)

    def _prepare_container(self, value: Any, path: str, depth: int) -> Any:
        cls = type(value)
        if cls is list or cls is dict:
            if depth >= _MAX_DEPTH:
                raise SerializationError(f"{path}: nested deeper than {_MAX_DEPTH} levels")
            if cls is list:
                return [self._prepare(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
            if all(type(key) is str for key in value):
                return {
                    _check_text(k, f"{path}[<key {k!r}>]"): self._prepare(v, f"{path}[{k!r}]", depth + 1)
                    for k, v in value.items()
                }
            return self._dict_ext(value, path)
        try:
            return self._serializer._to_ext(value, path, self._pack)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(f"{path}: cannot serialize {cls.__name__}: {exc!r}") from exc

    def _dict_ext(self, value: dict[Any, Any], path: str) -> ormsgpack.Ext:
        parts: list[bytes] = [array_header(2 * len(value))]
        for key, item in value.items():
            parts.append(self._pack(key, f"{path}[<key {key!r}>]"))
            parts.append(self._pack(item, f"{path}[{key!r}]"))
        return ormsgpack.Ext(EXT_DICT, b"".join(parts))


def _check_text(value: str, path: str) -> str:
    """Strings must be valid Unicode text (msgpack stores UTF-8): no lone surrogates."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise SerializationError(
                f"{path}: string contains a lone surrogate (not valid Unicode)"
            ) from None
    return value


class _Decoder:
    """One decoding: remembers the first error of the ext hook, which ormsgpack replaces."""

    __slots__ = ("_serializer", "error")

    def __init__(self, serializer: Serializer) -> None:
        self._serializer = serializer
        self.error: Exception | None = None

    def hook(self, code: int, payload: bytes) -> Any:
        try:
            return self._serializer._decode_ext(code, payload, self._unpack)
        except Exception as exc:
            if self.error is None:
                self.error = exc
            raise

    def _unpack(self, payload: bytes) -> Any:
        return ormsgpack.unpackb(payload, ext_hook=self.hook)

    def failure(self, exc: Exception) -> SerializationError:
        cause = self.error or exc
        if isinstance(cause, SerializationError):
            return cause
        error = SerializationError(f"cannot decode stored value: {cause}")
        error.__cause__ = cause
        return error


default_serializer = Serializer()
"""A serializer with nothing registered: built-in types only."""

__all__ = ["DEFAULT_MAX_DECOMPRESSED", "ListMemo", "Serializer", "array_header", "default_serializer"]
