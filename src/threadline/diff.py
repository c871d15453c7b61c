"""Structural diff between two states (pure functions, used by the thread layer and the CLI)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ListChange:
    """How a list value changed: the common prefix, then what was removed and appended."""

    common: int
    removed: list[Any]
    appended: list[Any]


@dataclass(frozen=True, slots=True)
class StateDiff:
    """Differences from state ``a`` to state ``b``.

    ``changed`` maps a key to its (old, new) values; ``lists`` says, for changed
    list values, how many leading items they share and what was removed and
    appended after that.
    """

    added: dict[str, Any] = field(default_factory=dict)
    removed: dict[str, Any] = field(default_factory=dict)
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    lists: dict[str, ListChange] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary (values as their repr when not JSON types)."""
        return {
            "added": {k: _plain(v) for k, v in self.added.items()},
            "removed": {k: _plain(v) for k, v in self.removed.items()},
            "changed": {k: {"old": _plain(a), "new": _plain(b)} for k, (a, b) in self.changed.items()},
            "lists": {
                k: {"common": c.common, "removed": _plain(c.removed), "appended": _plain(c.appended)}
                for k, c in self.lists.items()
            },
            "unchanged": list(self.unchanged),
        }


def diff_states(a: Mapping[str, Any], b: Mapping[str, Any]) -> StateDiff:
    """Compare two states key by key; lists are compared item by item."""
    result = StateDiff()
    for key in a:
        if key not in b:
            result.removed[key] = a[key]
    for key, new in b.items():
        if key not in a:
            result.added[key] = new
            continue
        old = a[key]
        if _equal(old, new):
            result.unchanged.append(key)
            continue
        result.changed[key] = (old, new)
        if isinstance(old, list) and isinstance(new, list):
            common = 0
            for x, y in zip(old, new, strict=False):
                if not _equal(x, y):
                    break
                common += 1
            result.lists[key] = ListChange(common, old[common:], new[common:])
    return result


def _equal(a: Any, b: Any) -> bool:
    """Equality that also compares types all the way down (1, 1.0 and True differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, set | frozenset):
        return bool(a == b) and {(type(x), x) for x in a} == {(type(x), x) for x in b}
    return bool(a == b)


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)
