"""Tests for threadline.serde: exact round trips, path-naming errors, framing, hostile input."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import inspect
import math
import os
import socket
import sys
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import ormsgpack
import pydantic
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from threadline import serde
from threadline.errors import InvalidInput, LimitExceeded, SerializationError
from threadline.serde import (
    EXT_DATETIME,
    EXT_DICT,
    EXT_OBJECT,
    EXT_TUPLE,
    FLAG_RAW,
    FLAG_ZSTD,
    Serializer,
    _PathEncoder,
    array_header,
    default_serializer,
)

# -- fixtures and helpers -----------------------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: int
    y: Any = None


@dataclasses.dataclass(frozen=True)
class Frozen:
    name: str
    tags: tuple[str, ...] = ()
    cached: int = dataclasses.field(default=0, init=False)


@dataclasses.dataclass
class Unregistered:
    a: int


class Color(enum.Enum):
    RED = "red"
    BLUE = (1, 2)


class Role(enum.StrEnum):
    USER = "user"
    AI = "ai"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Message(pydantic.BaseModel):
    role: str
    content: str
    sent: dt.datetime | None = None


class Envelope(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(populate_by_name=True)
    messages: list[Message]
    kind: str = pydantic.Field(alias="type")


class Money:
    def __init__(self, cents: int) -> None:
        self.cents = cents

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and other.cents == self.cents

    __hash__ = None  # type: ignore[assignment]


class MyStr(str):
    pass


class MyDict(dict[str, Any]):
    pass


class NoOffset(dt.tzinfo):
    def utcoffset(self, d: dt.datetime | None) -> dt.timedelta | None:
        return None


def make() -> Serializer:
    s = Serializer()
    s.register_dataclass(Point)
    s.register_dataclass(Frozen)
    s.register_enum(Color)
    s.register_enum(Role)
    s.register_enum(Level)
    s.register_pydantic(Message)
    s.register_pydantic(Envelope)
    s.register(Money, "test.Money", lambda m: m.cents, Money)
    return s


SER = make()


def same(a: Any, b: Any) -> bool:
    """Equal in type and value, recursively; NaN equals NaN; dict order and tz class count."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if dataclasses.is_dataclass(a):
        return same(dataclasses.astuple(a), dataclasses.astuple(b))
    if isinstance(a, dt.datetime | dt.time):
        return repr(a) == repr(b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    return bool(a == b)


def roundtrip(value: Any, ser: Serializer = SER) -> Any:
    data = ser.dumps(value)
    assert isinstance(data, bytes)
    back = ser.loads(data)
    assert same(value, back), (value, back)
    assert ser.dumps(back) == data
    return back


def error_of(value: Any, ser: Serializer = SER, path: str = "value") -> str:
    with pytest.raises(SerializationError) as info:
        ser.dumps(value, path=path)
    return str(info.value)


# -- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        2**63 - 1,
        -(2**63),
        2**64 - 1,
        2**64,
        -(2**63) - 1,
        2**200,
        -(2**200) + 7,
        1.5,
        -0.0,
        float("inf"),
        float("-inf"),
        float("nan"),
        "",
        "héllo \U0001f600",
        b"",
        b"\x00\xff",
        [],
        {},
        (),
        (1,),
        ((1, 2), [3, (4,)]),
        set(),
        {1, 2, 3},
        frozenset({"a", "b"}),
        frozenset({(1, 2), frozenset({3})}),
        dt.datetime(2024, 5, 6, 7, 8, 9, 123456),
        dt.datetime(2024, 5, 6, 7, 8, 9, 1, tzinfo=dt.UTC),
        dt.datetime(2024, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30))),
        dt.datetime(2024, 5, 6, tzinfo=dt.timezone(dt.timedelta(seconds=1, microseconds=7))),
        dt.datetime(2024, 11, 3, 1, 30, tzinfo=ZoneInfo("America/New_York"), fold=1),
        dt.datetime.min,
        dt.datetime.max,
        dt.date(1, 1, 1),
        dt.date(2024, 2, 29),
        dt.time(),
        dt.time(23, 59, 59, 999999),
        dt.time(12, 0, tzinfo=dt.timezone(dt.timedelta(hours=3))),
        dt.time(12, 0, tzinfo=ZoneInfo("Europe/Paris")),
        dt.timedelta(),
        dt.timedelta(days=-3, seconds=5, microseconds=9),
        dt.timedelta.max,
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        Decimal("1.10"),
        Decimal("-0"),
        Decimal("1E+999"),
        Decimal("NaN"),
        Decimal("sNaN12"),
        Decimal("-Infinity"),
        {"a": [1, {"b": (2, {3})}]},
    ],
    ids=repr,
)
def test_round_trip_builtin(value: Any) -> None:
    roundtrip(value)
    roundtrip(value, default_serializer)


def test_round_trip_non_str_keys_keep_type_and_order() -> None:
    value = {
        2: "int",
        1.5: "float",
        True: "bool",
        None: "none",
        (1, "a"): "tuple",
        b"k": "bytes",
        "s": "str",
        dt.date(2020, 1, 1): "date",
        frozenset({1}): "frozenset",
        2**80: "bigint",
    }
    back = roundtrip({"outer": [value]})
    assert list(back["outer"][0]) == list(value)
    assert [type(k) for k in back["outer"][0]] == [type(k) for k in value]


def test_non_str_keys_inside_extension_values() -> None:
    roundtrip((1, {2: {3: 4}}, frozenset({(5, 6)})))
    roundtrip(Point(1, {7: "seven"}))


def test_registered_enum_keys() -> None:
    back = roundtrip({Role.USER: 1, Level.HIGH: 2, Color.BLUE: 3})
    assert type(next(iter(back))) is Role


def test_bytearray_and_memoryview_load_as_bytes() -> None:
    assert SER.loads(SER.dumps(bytearray(b"ab"))) == b"ab"
    assert SER.loads(SER.dumps([memoryview(b"abcd")[::2], {1: bytearray(b"x")}])) == [b"ac", {1: b"x"}]


def test_sets_encode_deterministically() -> None:
    words = [f"w{i}" for i in range(50)]
    forward, backward = set(), set()
    for w in words:
        forward.add(w)
    for w in reversed(words):
        backward.add(w)
    assert SER.dumps(forward) == SER.dumps(backward)
    assert SER.dumps(frozenset(words)) == SER.dumps(frozenset(reversed(words)))
    assert SER.dumps({1, "a", (2,)}) == SER.dumps({(2,), "a", 1})


def test_equal_values_give_equal_bytes() -> None:
    def build() -> Any:
        return {"when": dt.datetime(2024, 1, 1, tzinfo=dt.UTC), "ids": {3, 1, 2}, "n": 2**70}

    assert SER.dumps(build()) == SER.dumps(build())


def test_registered_dataclass_round_trip() -> None:
    back = roundtrip([Point(1, Point(2, (3, {4}))), Frozen("f", ("a",))])
    assert type(back[0].y) is Point


def test_dataclass_non_init_field_is_restored() -> None:
    value = Frozen("f")
    object.__setattr__(value, "cached", 42)
    assert SER.loads(SER.dumps(value)).cached == 42


def test_registered_pydantic_round_trip() -> None:
    when = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    value = Envelope(messages=[Message(role="user", content="hi", sent=when)], type="chat")
    back = roundtrip({"env": value, "msg": Message(role="ai", content="yo")})
    assert back["env"].messages[0].sent == when
    assert back["env"].kind == "chat"


def test_registered_enum_round_trip() -> None:
    back = roundtrip([Color.RED, Color.BLUE, Role.AI, Level.LOW])
    assert [type(v) for v in back] == [Color, Color, Role, Level]


def test_generic_registration_round_trip() -> None:
    roundtrip({"price": Money(250), "all": (Money(1), [Money(2)])})


def test_rename_keeps_old_name_loadable() -> None:
    s = Serializer()
    s.register(Money, "old.Money", lambda m: m.cents, Money)
    old = s.dumps(Money(5))
    s.register(Money, "new.Money", lambda m: m.cents, Money)
    assert b"new.Money" in s.dumps(Money(5))
    assert s.loads(old) == Money(5)


def test_default_registration_name() -> None:
    assert f"{__name__}.Point".encode() in SER.dumps(Point(1))


def test_fast_path_is_one_call_for_plain_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(serde, "_PathEncoder", None)  # the slow path would now fail loudly

    class Spy(Serializer):
        def _default(self, value: Any) -> ormsgpack.Ext:
            calls.append(value)
            return super()._default(value)

    messages = [{"role": "user", "content": f"hello {i}", "id": str(uuid.UUID(int=i))} for i in range(200)]
    assert Spy().loads(Spy().dumps(messages)) == messages
    assert calls == []


def test_slow_path_gives_the_fast_path_bytes() -> None:
    value = {"a": [1, (2, {3}), Point(4, Color.RED), dt.date(2020, 1, 2), 2**90], "b": Money(3)}
    assert _PathEncoder(SER).dumps(value, "value") == SER.dumps(value)


# -- dumps_items / loads_items / array_header ---------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 15, 16, 300, 70000])
def test_items_are_slices_of_the_list_encoding(n: int) -> None:
    items = [{"i": i, "t": (i,)} if i % 2 else {i: i} for i in range(n)]
    encoded = SER.dumps_items(items)
    assert len(encoded) == n
    assert array_header(n) + b"".join(encoded) == SER.dumps(items)
    assert SER.loads_items(encoded) == items


def test_dumps_items_error_path() -> None:
    pattern = r"^messages\[1\]\['x'\]: object of type socket"
    with pytest.raises(SerializationError, match=pattern), socket.socket() as sock:
        SER.dumps_items([{}, {"x": sock}], path="messages")


@pytest.mark.parametrize(
    ("n", "header"),
    [
        (0, b"\x90"),
        (15, b"\x9f"),
        (16, b"\xdc\x00\x10"),
        (65535, b"\xdc\xff\xff"),
        (65536, b"\xdd\x00\x01\x00\x00"),
    ],
)
def test_array_header(n: int, header: bytes) -> None:
    assert array_header(n) == header
    assert header == ormsgpack.packb([None] * n)[: len(header)]


def test_array_header_limits() -> None:
    with pytest.raises(InvalidInput):
        array_header(-1)
    with pytest.raises(LimitExceeded):
        array_header(2**32)
    assert array_header(2**32 - 1) == b"\xdd\xff\xff\xff\xff"


# -- errors when dumping ------------------------------------------------------------------------


def test_unserializable_names_exact_path() -> None:
    with socket.socket() as sock:
        state = {"messages": [{}, {}, {}, {"payload": sock}]}
        message = error_of(state, path="state")
    assert message.startswith("state['messages'][3]['payload']: object of type socket is not serializable")


@pytest.mark.parametrize(
    ("value", "path", "hint"),
    [
        ({"a": [Unregistered(1)]}, "value['a'][0]", "register_dataclass(Unregistered)"),
        ({"m": pydantic.create_model("Loose", x=(int, 1))()}, "value['m']", "register_pydantic(Loose)"),
        ([enum.Enum("Mood", "HAPPY").HAPPY], "value[0]", "register_enum(Mood)"),
        ({"s": MyStr("x")}, "value['s']", "subclasses of str are not converted implicitly"),
        ([(1, MyDict())], "value[0][1]", "subclasses of dict are not converted implicitly"),
        ({"k": {MyStr("key"): 1}}, "value['k'][<key 'key'>]", "subclasses of str"),
        ({"k": {1: {2: object()}}}, "value['k'][1][2]", "Serializer.register(cls"),
        ({"s": {object()}}, "value['s'][<set item>]", "type object is not serializable"),
        ([Point(1, Unregistered(2))], "value[0]['y']", "register_dataclass(Unregistered)"),
    ],
)
def test_unserializable_messages(value: Any, path: str, hint: str) -> None:
    message = error_of(value)
    assert message.startswith(f"{path}: "), message
    assert hint in message


def test_subclass_of_registered_class_is_refused() -> None:
    class SubPoint(Point):
        pass

    assert error_of({"p": SubPoint(1)}).startswith("value['p']: object of type SubPoint")


def test_circular_references() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    assert error_of({"a": loop}) == "value['a'][1]: circular reference (the value contains itself)"
    d: dict[str, Any] = {}
    d["self"] = {"x": (d,)}
    assert error_of(d).startswith("value['self']['x'][0]: circular reference")
    p = Point(1)
    p.y = [p]
    assert error_of(p).startswith("value['y'][0]: circular reference")


def test_shared_references_are_fine() -> None:
    shared = [1, 2]
    assert SER.loads(SER.dumps({"a": shared, "b": (shared, shared)})) == {"a": [1, 2], "b": ([1, 2], [1, 2])}


def test_too_deep_nesting() -> None:
    value: Any = []
    for _ in range(300):
        value = [value]
    assert "nested deeper than 255 levels" in error_of(value)
    deep: Any = 1
    for _ in range(5000):
        deep = (deep,)
    assert "value" in error_of(deep)


def test_recursion_error_becomes_serialization_error() -> None:
    value: Any = [{1: 2}]  # a non-str key sends it down the slow, recursive path
    for _ in range(200):
        value = [value]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 150)
    try:
        message = error_of(value)
    finally:
        sys.setrecursionlimit(limit)
    assert message == "value: value nested too deeply to serialize"


def test_tzinfo_without_offset() -> None:
    message = error_of({"t": dt.datetime(2020, 1, 1, tzinfo=NoOffset())})
    assert message.startswith("value['t']: cannot serialize datetime")


def test_failing_to_data_hook() -> None:
    s = Serializer()
    s.register(Money, "m", lambda m: 1 / 0, Money)
    assert error_of([Money(1)], s).startswith("value[0]: cannot serialize Money: ZeroDivisionError")


# -- registration errors ------------------------------------------------------------------------


def test_registration_errors() -> None:
    s = Serializer()
    s.register_dataclass(Point, "p")
    s.register_dataclass(Point, "p")  # idempotent
    with pytest.raises(InvalidInput, match="already registered"):
        s.register_dataclass(Frozen, "p")
    with pytest.raises(InvalidInput):
        s.register(Money, "", int, int)
    with pytest.raises(InvalidInput):
        s.register("Money", "x", int, int)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="natively"):
        s.register(dict, "d", dict, dict)
    with pytest.raises(InvalidInput, match="natively"):
        s.register(dt.datetime, "d", str, str)
    with pytest.raises(InvalidInput, match="not a dataclass"):
        s.register_dataclass(Money)
    with pytest.raises(InvalidInput, match="not a dataclass"):
        s.register_dataclass(Point(1))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="not an Enum"):
        s.register_enum(Money)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="no model_dump"):
        s.register_pydantic(Money)

    class HalfModel:
        def model_dump(self) -> None: ...

    with pytest.raises(InvalidInput, match="no model_validate"):
        s.register_pydantic(HalfModel)


@pytest.mark.parametrize(
    "kwargs", [{"compress_threshold": -1}, {"compress_level": 23}, {"max_decompressed": 0}]
)
def test_constructor_validation(kwargs: dict[str, int]) -> None:
    with pytest.raises(InvalidInput):
        Serializer(**kwargs)


# -- errors when loading ------------------------------------------------------------------------


def ext(code: int, payload: bytes) -> bytes:
    """Raw msgpack ext 32 (any signed code, unlike ormsgpack.Ext)."""
    return b"\xc9" + len(payload).to_bytes(4, "big") + code.to_bytes(1, "big", signed=True) + payload


def test_unknown_ext_code() -> None:
    with pytest.raises(SerializationError, match="unknown extension code 99"):
        SER.loads(ormsgpack.packb({"a": [ormsgpack.Ext(99, b"")]}))


def test_unknown_registered_name_executes_nothing() -> None:
    built: list[Any] = []

    class Trap:
        def __init__(self, *args: Any) -> None:
            built.append(args)

        def __reduce__(self) -> Any:
            return (print, ("pwned",))

    s = Serializer()
    s.register(Trap, "trap", lambda t: 1, Trap)
    data = s.dumps({"x": Trap()})
    built.clear()
    with pytest.raises(SerializationError, match="unknown registered type name 'trap'"):
        SER.loads(data)
    with pytest.raises(SerializationError, match=r"unknown registered type name 'os\.system'"):
        SER.loads(ext(EXT_OBJECT, ormsgpack.packb(["os.system", "echo pwned"])))
    assert built == []


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\x92\x01",
        b"\x81\x01\x02",  # int map key: never written by dumps
        ext(EXT_TUPLE, b"\x01"),
        ext(EXT_DICT, ormsgpack.packb([1, 2, 3])),
        ext(EXT_DICT, ormsgpack.packb([[1], 2])),
        ext(EXT_DATETIME, ormsgpack.packb([2020, 13, 1, 0, 0, 0, 0, None, 0])),
        ext(EXT_DATETIME, ormsgpack.packb([2020, 1, 1, 0, 0, 0, 0, "No/Such_Zone", 0])),
        ext(EXT_DATETIME, ormsgpack.packb([2020, 1, 1, 0, 0, 0, 0, 1.5, 0])),
        ext(EXT_DATETIME, ormsgpack.packb([2020])),
        ext(EXT_OBJECT, ormsgpack.packb([1, 2])),
        ext(EXT_OBJECT, ormsgpack.packb([f"{__name__}.Point", "not a dict"])),
        ext(EXT_OBJECT, ormsgpack.packb([f"{__name__}.Point", {"z": 1}])),
        ext(EXT_OBJECT, ormsgpack.packb([f"{__name__}.Frozen", {"name": "n", "__class__": 1}])),
        ext(EXT_OBJECT, ormsgpack.packb([f"{__name__}.Message", {"role": 1}])),
        ext(EXT_OBJECT, ormsgpack.packb([f"{__name__}.Color", "green"])),
        ext(10, b"short"),
        ext(11, b"\xff"),
        ext(11, b"not a number"),
        "a str, not bytes",
    ],
)
def test_malformed_input_raises_serialization_error(data: Any) -> None:
    with pytest.raises(SerializationError):
        SER.loads(data)


def test_nested_malformed_ext_reports_inner_error() -> None:
    inner = ormsgpack.Ext(EXT_OBJECT, ormsgpack.packb(["nobody", 1]))
    with pytest.raises(SerializationError, match="'nobody'"):
        SER.loads(ext(EXT_TUPLE, ormsgpack.packb([1, inner])))


def test_deeply_nested_ext_input() -> None:
    data = ormsgpack.packb(None)
    for _ in range(3000):
        data = ext(EXT_TUPLE, b"\x91" + data)
    with pytest.raises(SerializationError):
        SER.loads(data)


def test_loads_items_rejects_garbage() -> None:
    with pytest.raises(SerializationError):
        SER.loads_items([b"\x01", b"\xc1"])


# -- framing ------------------------------------------------------------------------------------


def test_pack_small_is_raw() -> None:
    data = SER.dumps({"a": 1})
    framed = SER.pack(data)
    assert framed[0] == FLAG_RAW
    assert SER.unpack(framed) == data


def test_pack_large_compresses() -> None:
    data = SER.dumps([{"role": "user", "content": "hello " * 50}] * 100)
    framed = SER.pack(data)
    assert framed[0] == FLAG_ZSTD
    assert len(framed) < len(data) / 2
    assert SER.unpack(framed) == data
    assert SER.loads(SER.unpack(framed)) == SER.loads(data)


def test_pack_incompressible_stays_raw() -> None:
    data = os.urandom(5000)
    assert SER.pack(data)[0] == FLAG_RAW


def test_pack_without_compression() -> None:
    s = Serializer(compress_threshold=None)
    data = b"a" * 100_000
    assert s.pack(data) == b"\x00" + data
    assert Serializer(compress_threshold=0).pack(b"a" * 100)[0] == FLAG_ZSTD


@pytest.mark.parametrize(
    "framed",
    [b"", b"\x07abc", b"\x01", b"\x01not zstd at all", b"\x01" + zstandard.compress(b"x" * 100)[:-3]],
)
def test_corrupt_frames(framed: bytes) -> None:
    with pytest.raises(SerializationError):
        SER.unpack(framed)


def test_extra_data_after_zstd_frame_is_refused() -> None:
    with pytest.raises(SerializationError):
        SER.unpack(b"\x01" + zstandard.compress(b"x" * 100) + b"junk")


def test_decompression_bomb_with_declared_size() -> None:
    s = Serializer(max_decompressed=1 << 20)
    framed = b"\x01" + zstandard.ZstdCompressor().compress(b"\x00" * (1 << 21))
    with pytest.raises(LimitExceeded):
        s.unpack(framed)
    assert len(Serializer().unpack(framed)) == 1 << 21


def test_decompression_bomb_without_declared_size() -> None:
    compressor = zstandard.ZstdCompressor(write_content_size=False)
    s = Serializer(max_decompressed=1 << 20)
    with pytest.raises(LimitExceeded):
        s.unpack(b"\x01" + compressor.compress(b"\x00" * (3 << 20)))
    small = b"abc" * 1000
    assert s.unpack(b"\x01" + compressor.compress(small)) == small


# -- property tests -----------------------------------------------------------------------------

_hashable_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.dates()
    | st.timedeltas()
    | st.uuids()
)
_hashables = st.recursive(
    _hashable_leaves,
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
_timezones = (
    st.none()
    | st.timezones()
    | st.builds(
        dt.timezone, st.timedeltas(min_value=dt.timedelta(hours=-23), max_value=dt.timedelta(hours=23))
    )
)
_leaves = (
    _hashables
    | st.floats()
    | st.datetimes(timezones=_timezones, allow_imaginary=False)
    | st.times(timezones=_timezones)
    | st.decimals(allow_nan=True, allow_infinity=True).filter(lambda d: not d.is_snan())
    | st.builds(Point, st.integers(), st.text(max_size=5))
    | st.sampled_from([Color.RED, Color.BLUE, Role.USER, Level.HIGH])
    | st.builds(Money, st.integers())
)
_values = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        | st.dictionaries(_hashables, inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.sets(_hashables, max_size=4)
        | st.builds(Point, st.integers(), inner)
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(_values)
def test_property_round_trip(value: Any) -> None:
    data = SER.dumps(value)
    back = SER.loads(data)
    assert same(value, back)
    assert SER.dumps(back) == data
    assert _PathEncoder(SER).dumps(value, "value") == data
    if type(value) is list:
        assert array_header(len(value)) + b"".join(SER.dumps_items(value)) == data
        assert same(SER.loads_items(SER.dumps_items(value)), back)


_fuzz = (
    st.binary(max_size=300)
    | st.builds(ext, st.integers(min_value=-128, max_value=127), st.binary(max_size=60))
    | st.builds(ext, st.integers(min_value=1, max_value=13), _values.map(SER.dumps))
    | st.tuples(_values.map(SER.dumps), st.integers(min_value=0), st.integers(0, 255)).map(
        lambda t: t[0][: t[1] % (len(t[0]) + 1)] + bytes([t[2]]) + t[0][t[1] % (len(t[0]) + 1) + 1 :]
    )
)


@settings(max_examples=500, deadline=None)
@given(_fuzz)
def test_property_loads_raises_only_serialization_error(data: bytes) -> None:
    with contextlib.suppress(SerializationError):
        SER.loads(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_property_unpack_raises_only_serialization_error(data: bytes) -> None:
    try:
        assert SER.unpack(SER.pack(data)) == data
        SER.unpack(data)
    except SerializationError:
        pass


# ---------------------------------------------------------------- list runs


def test_dumps_runs_join_to_the_whole_list_and_stay_small() -> None:
    ser = Serializer()
    items: list[Any] = [{"i": i, "text": "x" * (i % 3000)} for i in range(400)]
    runs = ser.dumps_runs(items, path="state['l']")
    assert sum(run.length for run in runs) == len(items)
    whole = ser.dumps(items)
    body = b"".join(run.data[run.start :] for run in runs)
    assert whole == serde.array_header(len(items)) + body
    assert len(runs) > 1
    assert max(run.size for run in runs) < 4 * serde.RUN_BYTES
    assert ser.dumps_runs([]) == []


def test_dumps_runs_names_the_failing_item_in_a_late_run() -> None:
    ser = Serializer()
    items: list[Any] = [{"text": "y" * 1000} for _ in range(200)]
    items[170] = {"payload": socket.socket}
    with pytest.raises(SerializationError, match=r"state\['l'\]\[170\]\['payload'\]"):
        ser.dumps_runs(items, path="state['l']")


def test_dumps_runs_non_str_keys_take_the_careful_path() -> None:
    ser = Serializer()
    items: list[Any] = [{1: "a"}, {(2, 3): "b"}, "c"]
    runs = ser.dumps_runs(items)
    assert ser.loads(serde.array_header(3) + b"".join(r.data[r.start :] for r in runs)) == items


def test_item_run_begins_with_compares_whole_items() -> None:
    ser = Serializer()
    items = ["a", "bb", "ccc"]
    (run,) = ser.dumps_runs(items)
    encoded = ser.dumps_items(items)
    assert run.begins_with(encoded[:2])
    assert run.begins_with(encoded)
    assert not run.begins_with([encoded[0], ser.dumps("bx")])


def test_loads_items_decodes_across_runs() -> None:
    ser = Serializer()
    items = [{"i": i, "text": "z" * 700} for i in range(500)]
    assert ser.loads_items(ser.dumps_items(items)) == items
    assert ser.loads_items([]) == []


# ---------------------------------------------------------------- lists of models, by state


class Note(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    text: str
    meta: dict[str, Any] = pydantic.Field(default_factory=dict)
    tags: list[Any] = pydantic.Field(default_factory=list)
    score: Any = None


def note_serializer(**options: Any) -> Serializer:
    ser = Serializer(**options)
    ser.register(
        Note,
        "t.Note",
        lambda n: {**n.__dict__, **(n.__pydantic_extra__ or {})},
        lambda d: Note.model_validate(d),
        by_state=True,
    )
    return ser


def notes(n: int, start: int = 0) -> list[Note]:
    return [Note(text=f"note {i} " + "x" * (i % 900), meta={"i": i}, tags=[i, "t"]) for i in range(start, n)]


def encoded(ser: Serializer, items: list[Any], memo: Any = None) -> tuple[bytes, Any]:
    result = ser.encode_models(items, memo)
    assert result is not None
    exts, memo = result
    data = ormsgpack.packb(exts)
    assert data == ser.dumps(items)  # exactly what dumps writes
    return data, memo


def test_encode_models_gives_the_bytes_of_dumps_and_round_trips() -> None:
    ser = note_serializer()
    items = notes(300)
    data, memo = encoded(ser, items)
    assert ser.loads(data) == items
    assert len(memo.chunks) > 1 and max(map(len, memo.chunks)) <= 2 * serde.RUN_BYTES


def test_encode_models_reuses_unchanged_items_and_rebuilds_only_new_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ser = note_serializer()
    items = notes(120)
    _, memo = encoded(ser, items)
    built: list[int] = []
    original = Serializer._exts_from_states

    def spy(self: Serializer, types: list[type], *args: Any) -> Any:
        built.append(len(types))
        return original(self, types, *args)

    monkeypatch.setattr(Serializer, "_exts_from_states", spy)
    items = [*items, *notes(123, 120)]
    _, memo = encoded(ser, items, memo)
    assert built == [3]
    _, memo = encoded(ser, list(items), memo)  # a new list of the same objects
    assert built == [3]


def mutations() -> list[Callable[[list[Note]], None]]:
    def content(items: list[Note]) -> None:
        items[5].text = "changed in place"

    def nested(items: list[Note]) -> None:
        items[7].meta["i"] = "now a string"

    def appended(items: list[Note]) -> None:
        items[9].tags.append({"deep": [1, 2]})

    def int_to_float(items: list[Note]) -> None:
        items[11].meta["i"] = float(items[11].meta["i"])  # 11 -> 11.0: equal, not the same

    def int_to_bool(items: list[Note]) -> None:
        items[1].meta["i"] = True  # 1 -> True: equal, not the same

    def reordered(items: list[Note]) -> None:
        items[12].meta = {"b": 1, "a": 2}
        items[13].meta = {"a": 2, "b": 1}

    def key_order_of_state(items: list[Note]) -> None:
        state = items[14].__dict__
        state["text"] = state.pop("text")  # same fields, another order

    def extra(items: list[Note]) -> None:
        items[15].mood = "glad"  # type: ignore[attr-defined]  # an extra field

    def replaced(items: list[Note]) -> None:
        items[16] = Note(text=items[16].text, meta=dict(items[16].meta), tags=list(items[16].tags))
        items[17] = Note(text="a new note")

    def class_changed(items: list[Note]) -> None:
        class Other(Note):
            pass

        items[18].__class__ = Other

    return [
        content,
        nested,
        appended,
        int_to_float,
        int_to_bool,
        reordered,
        key_order_of_state,
        extra,
        replaced,
        class_changed,
    ]


@pytest.mark.parametrize("mutate", mutations(), ids=lambda f: f.__name__)
def test_encode_models_sees_every_change_made_in_place(mutate: Callable[[list[Note]], None]) -> None:
    ser = note_serializer()
    items = notes(60)
    first, memo = encoded(ser, items)
    mutate(items)
    try:
        expected = ser.dumps(items)
    except SerializationError:  # an unregistered class: encode_models must refuse the list too
        assert ser.encode_models(items, memo) is None
        return
    result = ser.encode_models(items, memo)
    assert result is not None
    assert ormsgpack.packb(result[0]) == expected != first
    assert ser.loads(expected) == items


def test_encode_models_shorter_and_forked_lists() -> None:
    ser = note_serializer()
    items = notes(200)
    _, memo = encoded(ser, items)
    encoded(ser, items[:37], memo)  # a time travel: a prefix
    fork = [*items[:150], *notes(160, 150)]
    encoded(ser, fork, memo)
    assert ser.encode_models([], memo) is None


def test_encode_models_refuses_what_it_cannot_prove() -> None:
    ser = note_serializer()
    ser.register_pydantic(Message)
    plain = notes(3)
    assert ser.encode_models([*plain, Message(role="r", content="c")]) is None  # not by state
    assert ser.encode_models([*plain, {"a": 1}]) is None  # not a model
    with_tuple = notes(2)
    with_tuple[1].score = (1, 2)  # a tuple is not plain msgpack: the ordinary path keeps its type
    assert ser.encode_models(with_tuple) is None
    with_time = notes(2)
    with_time[0].meta["when"] = dt.datetime(2024, 1, 1)
    assert ser.encode_models(with_time) is None
    with_object = notes(2)
    with_object[0].score = Note(text="nested")
    assert ser.encode_models(with_object) is None
    with_subclass = notes(2)
    with_subclass[0].meta[MyStr("k")] = 1
    assert ser.encode_models(with_subclass) is None


def test_encode_models_follows_a_new_registration() -> None:
    ser = note_serializer()
    items = notes(10)
    _, memo = encoded(ser, items)
    ser.register(Note, "t.Note2", lambda n: {"text": n.text}, lambda d: Note(**d), by_state=True)
    data, _ = encoded(ser, items, memo)
    assert b"t.Note2" in data


def test_encode_models_chunks_stay_small_as_items_grow() -> None:
    ser = note_serializer()
    items = notes(40)
    _, memo = encoded(ser, items)
    assert memo.counts == (16, 24)
    for note in items:
        note.text = "y" * 5000
    _, memo = encoded(ser, items, memo)
    assert len(memo.chunks) > 4 and max(map(len, memo.chunks)) <= 2 * serde.RUN_BYTES
    items.append(Note(text="z" * 200_000))  # alone larger than a chunk: a chunk of its own
    _, memo = encoded(ser, items, memo)
    assert memo.counts[-1] == 1


def test_encode_models_new_items_fill_the_last_chunk() -> None:
    ser = note_serializer()
    items = notes(3)
    _, memo = encoded(ser, items)
    for i in range(3, 200):
        items.append(Note(text=f"message {i} " + "m" * 600))
        _, memo = encoded(ser, items, memo)
    assert len(memo.chunks) <= 6  # not one chunk per put
    assert all(len(c) < 2 * serde.RUN_BYTES for c in memo.chunks)


def test_by_state_needs_a_pydantic_model() -> None:
    with pytest.raises(InvalidInput, match="by_state needs a pydantic model"):
        Serializer().register(Point, "p", lambda p: p.x, Point, by_state=True)
