"""What a run's turn and the run bookkeeping need from the threads runtime that hosts them
(`ThreadsRuntime` is the one host; they see it through this protocol, not its class)."""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Any, Protocol

from proxy.auth import Tenant
from proxy.pipeline.registry import PipelineHolder
from proxy.resources import Resources
from proxy.store.threads_store import ThreadStore
from proxy.threads.events import RunEvents
from proxy.threads.records import Records


class TurnHost(Protocol):
    """The threads runtime as its runs and turns see it."""

    resources: Resources
    pipeline: PipelineHolder
    store: ThreadStore
    records: Records
    closing: bool  # shutting down: a turn stops at its next step

    @property
    def turns(self) -> Container[str]:
        """Ids of the runs whose turn executes in this process."""
        ...

    def start_turn(self, tenant: Tenant, run: dict[str, Any], events: RunEvents | None,
                   request_id: str, headers: Mapping[str, str]) -> None:
        """Execute the run's next turn in a background task."""
        ...

    def cancel_turn(self, run_id: str) -> None:
        """Cancel the run's turn if it executes in this process."""
        ...
