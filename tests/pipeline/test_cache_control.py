"""The `x-proxy-cache` request header."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.pipeline.cache_control import CacheDirectives


@pytest.mark.parametrize(("header", "read", "store", "refresh"), [
    (None, True, True, False),
    ("no-cache", False, True, False),
    ("no-store", False, False, False),
    ("refresh", False, True, True),
    ("No-Cache, no-store", False, False, False),
    ("refresh,no-store", False, False, True),
    ("no-semantic", True, True, False),  # another cache's directive: ignored here
])
def test_directives_from_header(header: str | None, read: bool, store: bool,
                                refresh: bool) -> None:
    headers = CIMultiDict({"X-Proxy-Cache": header} if header else {})
    got = CacheDirectives.from_headers(headers)
    assert (got.read, got.store, got.refresh) == (read, store, refresh)
