"""Tenant-scoped create/read/modify/delete of assistants, threads and messages.

`owner` is the key's name (`Tenant.name`): objects belong to the key, not to
its cache namespace, so keys sharing a cache still never see each other's
threads. Another owner's object is reported exactly like a missing one (404).
"""

from __future__ import annotations

from typing import Any

from proxy.errors import NotFound
from proxy.store.threads_store import Kind, PageQuery, ThreadStore
from proxy.threads import params
from proxy.threads.objects import (
    assistant_object,
    deleted_object,
    list_object,
    message_object,
    public,
    thread_object,
)

_LABELS = {"assistant": "assistant", "thread": "thread", "message": "message", "run": "run",
           "step": "run step"}


def not_found(kind: Kind, obj_id: str) -> NotFound:
    """OpenAI's 404 for an unknown object."""
    return NotFound(f"No {_LABELS[kind]} found with id '{obj_id}'.")


class Records:
    """Assistants, threads and messages of one store."""

    def __init__(self, store: ThreadStore) -> None:
        self.store = store

    async def require(self, owner: str, kind: Kind, obj_id: str,
                      parent: tuple[str, str] | None = None) -> dict[str, Any]:
        """The object, or 404 (also when it is not inside `parent` = (field, id))."""
        obj = await self.store.get(owner, kind, obj_id)
        if obj is None or (parent is not None and obj.get(parent[0]) != parent[1]):
            raise not_found(kind, obj_id)
        return obj

    async def listing(self, owner: str, kind: Kind, parent: str, query: dict[str, Any],
                      match: tuple[str, Any] | None = None) -> dict[str, Any]:
        """OpenAI's list object for one page."""
        page = await self.store.page(owner, kind, parent, PageQuery(match=match, **query))
        return list_object(page)

    async def all_items(self, owner: str, kind: Kind, parent: str) -> list[dict[str, Any]]:
        """Every object of a list, oldest first."""
        items: list[dict[str, Any]] = []
        after = None
        while True:
            page = await self.store.page(owner, kind, parent,
                                         PageQuery(limit=100, order="asc", after=after))
            items += page.items
            if not page.has_more:
                return items
            after = items[-1]["id"]

    async def _modify(self, owner: str, kind: Kind, obj: dict[str, Any],
                      fields: dict[str, Any]) -> dict[str, Any]:
        obj.update(fields)
        if not await self.store.update(owner, kind, obj):
            raise not_found(kind, obj["id"])
        return public(obj)

    async def create_assistant(self, owner: str, body: dict[str, Any]) -> dict[str, Any]:
        """A new assistant."""
        assistant = assistant_object(params.assistant_fields(body, creating=True))
        await self.store.insert(owner, "assistant", assistant)
        return public(assistant)

    async def modify_assistant(self, owner: str, assistant_id: str,
                               body: dict[str, Any]) -> dict[str, Any]:
        """The assistant with the given fields changed."""
        fields = params.assistant_fields(body, creating=False)
        assistant = await self.require(owner, "assistant", assistant_id)
        return await self._modify(owner, "assistant", assistant, fields)

    async def delete_assistant(self, owner: str, assistant_id: str) -> dict[str, Any]:
        """Delete an assistant (its past runs stay)."""
        if not await self.store.delete(owner, "assistant", assistant_id):
            raise not_found("assistant", assistant_id)
        return deleted_object(assistant_id, "assistant")

    async def create_thread(self, owner: str, body: dict[str, Any]) -> dict[str, Any]:
        """A new thread with its initial messages."""
        initial = params.messages(body, "messages")
        thread = thread_object({"metadata": params.metadata(body) or {}})
        params.tool_resources(body)
        await self.store.insert(owner, "thread", thread, thread_id=thread["id"])
        for fields in initial:
            await self.add_message(owner, thread["id"], fields)
        return public(thread)

    async def modify_thread(self, owner: str, thread_id: str,
                            body: dict[str, Any]) -> dict[str, Any]:
        """The thread with new metadata."""
        fields = {"metadata": params.metadata(body) or {}} if "metadata" in body else {}
        params.tool_resources(body)
        thread = await self.require(owner, "thread", thread_id)
        return await self._modify(owner, "thread", thread, fields)

    async def delete_thread(self, owner: str, thread_id: str) -> dict[str, Any]:
        """Delete a thread with its messages, runs and steps."""
        if not await self.store.delete_thread(owner, thread_id):
            raise not_found("thread", thread_id)
        return deleted_object(thread_id, "thread")

    async def add_message(self, owner: str, thread_id: str,
                          fields: dict[str, Any]) -> dict[str, Any]:
        """Append a validated message (see `params.message`) to a thread."""
        message = message_object(thread_id, fields["role"], fields["content"],
                                 metadata=fields["metadata"])
        await self.store.insert(owner, "message", message, parent=thread_id,
                                thread_id=thread_id)
        return public(message)

    async def modify_message(self, owner: str, thread_id: str, message_id: str,
                             body: dict[str, Any]) -> dict[str, Any]:
        """The message with new metadata."""
        fields = {"metadata": params.metadata(body) or {}} if "metadata" in body else {}
        message = await self.require(owner, "message", message_id, ("thread_id", thread_id))
        return await self._modify(owner, "message", message, fields)

    async def delete_message(self, owner: str, thread_id: str,
                             message_id: str) -> dict[str, Any]:
        """Delete one message of a thread."""
        await self.require(owner, "message", message_id, ("thread_id", thread_id))
        await self.store.delete(owner, "message", message_id)
        return deleted_object(message_id, "thread.message")
