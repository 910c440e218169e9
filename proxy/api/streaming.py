"""Send a streamed body to the client and tell the caller how it ended."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from proxy.pipeline.drain import CLIENT_CLOSED as CLIENT_LEFT


async def send_stream(request: web.Request, resp: web.StreamResponse,
                      chunks: AsyncIterator[bytes], on_end: Callable[[int], None],
                      broken: Callable[[], bool] = lambda: False) -> web.StreamResponse:
    """Write `chunks` as `resp`'s body, then call `on_end(status)` once however it ends
    (CLIENT_LEFT when the client went away). The chunks are closed (releasing what they
    hold upstream) in every case. When `broken()` says the source broke off, the
    connection is cut instead of ending the body cleanly, so the client cannot take a
    truncated body for a whole one."""
    status = resp.status
    try:
        await resp.prepare(request)
        async for chunk in chunks:
            await resp.write(chunk)
        if broken():
            resp.force_close()
            if request.transport is not None:
                request.transport.close()
        else:
            await resp.write_eof()
    except ConnectionResetError:
        status = CLIENT_LEFT  # client went away: the upstream is released, nothing more to send
    except asyncio.CancelledError:
        status = CLIENT_LEFT
        raise
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
        on_end(status)
    return resp
