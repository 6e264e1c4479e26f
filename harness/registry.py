"""Name → object registries for mixers, model presets, tasks, suites and launchers.

This is a leaf module: it imports nothing of the project but its errors (nothing heavy), so that `models/` and `tasks/` can register
themselves here without importing each other (docs/architecture.md: imports point one way).

    from harness.registry import MIXERS

    @MIXERS.register("kda")
    class KDA(nn.Module): ...

    MIXERS.get("kda")     # -> KDA
    MIXERS.get("kdaa")    # UnknownName: unknown mixer 'kdaa'; did you mean: kda?
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from harness.errors import UnknownName

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of objects of one kind (e.g. "mixer"), filled with the `register` decorator."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._entries:
            raise ValueError(
                f"{self.kind} '{name}' is registered twice ({self._entries[name]!r} and {obj!r})"
            )
        self._entries[name] = obj

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownName(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        return unknown_message(self.kind, name, list(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(sorted(self._entries.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def unknown_message(kind: str, name: str, known: list[str]) -> str:
    """ "unknown mixer 'kdaa'; did you mean: kda?" (or the known names, when none is close)."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"did you mean: {', '.join(close)}?" if close else f"known: {', '.join(sorted(known))}"
    return f"unknown {kind} '{name}'; {hint}"


MIXERS: Registry = Registry("mixer")
ARCHITECTURES: Registry = Registry("model")
SIZES: Registry = Registry("model size")
TASKS: Registry = Registry("task")
SUITES: Registry = Registry("suite")
LAUNCHERS: Registry = Registry("launcher")
