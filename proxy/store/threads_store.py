"""Persistence of assistants, threads, messages, runs and run steps.

Objects are JSON dicts with an `id`, owned by one tenant (`owner`): every call
is scoped by owner, so one key can never read another's objects. Each object
belongs to a list (`parent`: "" for assistants and threads, the thread id for
messages and runs, the run id for steps) ordered by creation, and to a thread
(`thread_id`) so deleting a thread removes everything in it at once. A thread
lock (`claim`/`release`) keeps one active run per thread, across replicas.

`SqliteThreadStore` (embedded default) and `RedisThreadStore` implement it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    pass

Kind = Literal["assistant", "thread", "message", "run", "step"]
Order = Literal["asc", "desc"]


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list: the objects in list order and whether more follow."""

    items: list[dict[str, Any]]
    has_more: bool


@dataclass(frozen=True, slots=True)
class PageQuery:
    """Where a page starts and how long it is (OpenAI's list parameters).

    `after`/`before` are ids relative to the list order; `match` keeps only
    objects whose field equals a value (e.g. messages of one run).
    """

    limit: int = 20
    order: Order = "desc"
    after: str | None = None
    before: str | None = None
    match: tuple[str, Any] | None = None


def from_before(query: PageQuery) -> bool:
    """True when the page is read backwards from a `before` cursor (the nearest items)."""
    return query.before is not None and query.after is None


def make_page(rows: list[dict[str, Any]], query: PageQuery) -> Page:
    """The page from up to `limit + 1` rows read in walking order."""
    items = rows[:query.limit]
    if from_before(query):
        items.reverse()
    return Page(items, len(rows) > query.limit)


class ThreadStore(Protocol):
    """Tenant-scoped objects of the Assistants API, plus the one-run-per-thread lock."""

    async def insert(self, owner: str, kind: Kind, obj: dict[str, Any], parent: str = "",
                     thread_id: str = "") -> None:
        """Store a new object at the end of its list."""
        ...

    async def update(self, owner: str, kind: Kind, obj: dict[str, Any]) -> bool:
        """Replace a stored object's body (keeping its place); False when it is gone."""
        ...

    async def get(self, owner: str, kind: Kind, obj_id: str) -> dict[str, Any] | None:
        """The object, or None when absent or owned by someone else."""
        ...

    async def delete(self, owner: str, kind: Kind, obj_id: str) -> bool:
        """Remove one object; False when there was none."""
        ...

    async def page(self, owner: str, kind: Kind, parent: str, query: PageQuery) -> Page:
        """One page of a list."""
        ...

    async def delete_thread(self, owner: str, thread_id: str) -> bool:
        """Remove a thread with its messages, runs, steps and lock."""
        ...

    async def claim(self, owner: str, thread_id: str, run_id: str, ttl: float) -> str | None:
        """Lock the thread for `run_id` (or extend its lock) for `ttl` seconds.

        Returns None on success, else the id of the run holding the lock.
        """
        ...

    async def release(self, owner: str, thread_id: str, run_id: str) -> None:
        """Drop the thread's lock if `run_id` holds it."""
        ...

    async def holder(self, owner: str, thread_id: str) -> str | None:
        """The run holding the thread's lock, if any."""
        ...
