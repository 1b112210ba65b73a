"""Named registries: one per kind of pluggable thing (datasets, methods, feature spaces, presets).

Registering a name twice is an error, and asking for an unknown name lists the valid ones,
so typos surface at once and the command line can take its choices from the registry.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Generic, TypeVar

from benchmark.core.errors import ConfigError

T = TypeVar("T")


class UnknownNameError(ConfigError, KeyError):
    """Raised for a name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str, *, base: type | None = None) -> None:
        """``base``: the entries are subclasses of it, and each gets its ``name`` from its key."""
        self.kind = kind
        self.base = base
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None):
        """Register ``obj`` under ``name``; without ``obj`` works as a decorator."""

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered; pick another name")
            if self.base is not None:
                if not (isinstance(item, type) and issubclass(item, self.base)):
                    raise TypeError(f"{self.kind} {name!r} must be a subclass of {self.base.__module__}."
                                    f"{self.base.__qualname__}; got {item!r}")  # fmt: skip
                item.name = name  # type: ignore[attr-defined]  # the key is the name: stated once
            self._check(name, item)
            self._items[name] = item
            return item

        if obj is not None:
            return add(obj)
        return add

    def _check(self, name: str, item: T) -> None:
        """A further check of an entry before it is added (subclasses); raise to refuse it."""

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self._items, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Valid {self.kind}s: {', '.join(self.names())}"

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._items[n]) for n in self.names()]

