"""What stages keep across rule reloads, and the protocols the process's resources offer.

A stage that needs a long-lived object (cache entries, the embedder, a fitted model)
declares a typed `KeptKey` next to it and asks `Resources.kept` for it; `/ready`
waits for the `Readiness` ones, the cache purge asks the `Purgeable` ones and
shutdown closes the `Closable` ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

log = logging.getLogger("proxy")
T = TypeVar("T")


@runtime_checkable
class Closable(Protocol):
    """A resource that must be closed at shutdown."""

    async def aclose(self) -> None: ...


@runtime_checkable
class Readiness(Protocol):
    """A resource that loads in the background; `/ready` waits for it."""

    @property
    def ready(self) -> bool: ...


@runtime_checkable
class Purgeable(Protocol):
    """A cache that can drop everything one tenant namespace stored."""

    async def purge_namespace(self, namespace: str) -> int: ...


class KeptKey(Generic[T]):
    """The typed name of an object a stage keeps across rule reloads."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"KeptKey({self.name!r})"


class Kept:
    """Objects stages keep across rule reloads, each made by its first user; `aclose`
    closes the `Closable` ones, newest first, before the resources they were made from."""

    def __init__(self) -> None:
        self._objects: dict[str, Any] = {}

    def get(self, key: KeptKey[T]) -> T | None:
        """The object kept under `key`, if one was made."""
        found: T | None = self._objects.get(key.name)
        return found

    def setdefault(self, key: KeptKey[T], make: Callable[[], T]) -> T:
        """The object kept under `key`, made by `make()` the first time."""
        if key.name not in self._objects:
            self._objects[key.name] = make()
        found: T = self._objects[key.name]
        return found

    def replace(self, key: KeptKey[T], value: T) -> T:
        """Keep `value` under `key` in place of what was there; returns `value`."""
        self._objects[key.name] = value
        return value

    def items(self) -> list[tuple[str, Any]]:
        """(name, object) of everything kept, oldest first."""
        return list(self._objects.items())

    def loading(self) -> list[str]:
        """Names of kept objects still loading (the embedder, models being fitted)."""
        return sorted(name for name, kept in self.items()
                      if isinstance(kept, Readiness) and not kept.ready)

    def purgeable(self) -> list[tuple[str, Purgeable]]:
        """(name, cache) of every kept cache that can drop a tenant namespace."""
        return [(name, kept) for name, kept in self.items() if isinstance(kept, Purgeable)]

    async def aclose(self) -> None:
        """Close every kept object that needs it, newest first."""
        for name, kept in reversed(self.items()):
            if isinstance(kept, Closable):
                await close_quietly(name, kept)


async def close_quietly(name: str, resource: Closable) -> None:
    """Close `resource`, logging (not raising) a failure so the next closer still runs."""
    try:
        await resource.aclose()
    except Exception:  # one failing closer must not keep the others open
        log.exception("closing %s failed", name)
