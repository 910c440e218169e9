"""`x-proxy-defer: batch` on a chat or Responses request: refused, clearly.

Deferring single requests into a batch the proxy submits later is not built yet. A
client asking for it wants its request run later at the batch price; running it now at
the full price would silently break that expectation, so the request is refused with a
400 that names the header and says what to do instead.
"""

from __future__ import annotations

from collections.abc import Mapping

from proxy.errors import InvalidRequest

HEADER = "x-proxy-defer"


def refuse_deferral(headers: Mapping[str, str]) -> None:
    """Raise InvalidRequest when the request asks to be deferred."""
    value = headers.get(HEADER)
    if value is None:
        return
    raise InvalidRequest(
        f"{HEADER}: {value} is not supported by this proxy: deferred requests are not "
        "queued. Send the request without the header, or submit it in a batch "
        "(POST /v1/batches; lines the proxy's caches can answer cost nothing).",
        param=HEADER, code="defer_not_supported")
