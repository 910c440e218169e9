"""Shared fixtures: a live proxy with the fake upstream, reachable by the openai SDK."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from proxy.testing import LiveProxy  # noqa: E402


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveProxy]:
    """A proxy with no stages in front of a fresh fake upstream."""
    with LiveProxy(tmp_path) as proxy:
        yield proxy
