"""One validated registry helper: model families, checkpoint formats and feature extractors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Registry:
    """A name -> object table that refuses duplicates and names the choices on a miss.

    ``check(name, obj)``, when given, validates every entry as it is registered (raise to
    refuse it), so a malformed entry fails where it is written, not where it is used.

    Examples
    --------
    >>> families = Registry("model family")
    >>> @families.register("toy")
    ... def build_toy(config):
    ...     return config
    >>> families.get("toy")({"a": 1})
    {'a': 1}
    >>> families.get("toys")
    Traceback (most recent call last):
    ...
    KeyError: "unknown model family 'toys'; registered: toy"
    >>> callables = Registry("builder", check=lambda name, obj: callable(obj) or
    ...                      (_ for _ in ()).throw(TypeError(f"{name} is not callable")))
    >>> callables.register("number", 3)
    Traceback (most recent call last):
    ...
    TypeError: number is not callable
    """

    def __init__(self, kind: str, check: Callable[[str, Any], None] | None = None):
        self.kind = kind
        self.check = check  # called as check(name, obj) before an entry is accepted
        self._entries: dict[str, Any] = {}

    def register(self, name: str, obj: Any = None) -> Callable | Any:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def add(target):
            if name in self._entries and self._entries[name] is not target:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            if self.check is not None:
                self.check(name, target)
            self._entries[name] = target
            return target

        return add if obj is None else add(obj)

    def get(self, name: str) -> Any:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self):
        """Names in the order they were registered (``names()`` sorts them)."""
        return iter(list(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)
