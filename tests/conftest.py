"""Shared fixtures: a live proxy with the fake upstream, reachable by the openai SDK."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# fitted models go to a directory of this run (tests write only to temporary places);
# proxies the tests start as processes inherit it
os.environ["PROXY_FIT_CACHE"] = tempfile.mkdtemp(prefix="proxy-fitted-")

from proxy.testing import (  # noqa: E402
    REDIS_URL,
    LiveProxy,
    drop_redis_prefix,
    redis_test_prefix,
)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveProxy]:
    """A proxy with no stages in front of a fresh fake upstream."""
    with LiveProxy(tmp_path) as proxy:
        yield proxy


@pytest.fixture
def redis_storage() -> Iterator[dict[str, Any]]:
    """`storage` config on the machine's redis under a random prefix, removed afterwards."""
    prefix = redis_test_prefix()
    yield {"storage": {"backend": "redis", "redis_url": REDIS_URL, "redis_prefix": prefix}}
    drop_redis_prefix(prefix)
