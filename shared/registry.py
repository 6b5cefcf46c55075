"""A name -> factory registry, filled by decorators (timm's pattern): one per kind of thing."""
from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ['Registry']

F = TypeVar('F', bound=Callable)


class Registry(Generic[F]):
    """Factories by name. `register` is a decorator (a repeated name warns, as in timm); `get` raises
    KeyError with close matches."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, F] = {}

    def register(self, name: str | None = None) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            key = name or fn.__name__
            if key in self._entries and self._entries[key] is not fn:
                warnings.warn(f'{self.kind} {key!r} registered again; the later one wins', stacklevel=2)
            self._entries[key] = fn
            return fn
        return deco

    def get(self, name: str) -> F:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f'; did you mean {", ".join(close)}?' if close else ''
            raise KeyError(f'unknown {self.kind} {name!r} (known: {", ".join(sorted(self._entries))}){hint}') from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
