"""A name -> object registry shared by methods, datasets, backbones and regularizers.

Modelled on timm's ``register_model`` / lm-eval-harness's ``Registry``: registering a taken name raises, and an
unknown name raises a one-line error with the closest matches.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from bench.errors import BenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (``"method"``, ``"dataset"``, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering its target under ``name``; a duplicate name raises ``ValueError``."""

        def add(entry: T) -> T:
            self.add(name, entry)
            return entry

        return add

    def register_class(self, name: str, name_attribute: str) -> Callable[[T], T]:
        """Class decorator registering its class under ``name`` and recording ``name`` on it as ``name_attribute``."""

        def add(cls: T) -> T:
            setattr(cls, name_attribute, name)
            self.add(name, cls)
            return cls

        return add

    def add(self, name: str, entry: T) -> None:
        """Register ``entry`` under ``name``; a duplicate name raises ``ValueError`` (a programming error)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry

    def get(self, name: str, flag: str | None = None) -> T:
        """The entry called ``name``; an unknown name raises a ``BenchError`` suggesting close matches.

        ``flag`` (e.g. ``"--method"``) is named in the error so the user knows which input was wrong.
        """
        try:
            return self._entries[name]
        except KeyError:
            pass
        where = f"{flag}: " if flag else ""
        close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise BenchError(f"{where}unknown {self.kind} {name!r}{hint} (known: {', '.join(self.names())})")

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
