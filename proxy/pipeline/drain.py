"""Finish a stream whose client left: read the upstream to its end so the request is billed.

The upstream bills every token it generates whether anyone reads them or not, so a
client that reads one chunk and hangs up must not make its request free (nor release
its budget hold at $0). `finish_abandoned` marks the reply (`client_left`: the caches
store nothing from it) and reads the rest of the stream, forwarding nothing, until the
upstream's usage chunk and `[DONE]`, bounded by the upstream's `total_timeout` and by
MAX_BYTES (each read is bounded by its `first_byte_timeout` already). Then it closes
the stream, which runs the stages' end hooks exactly once (the budget settles,
admission frees the concurrency slot: the slot stays taken while the upstream still
works), and records the ledger row with status 499. When a bound cut the drain, or
the upstream sent no usage, the upstream client has counted the usage from what
streamed (upstream/meter.py).

The handler runs it in a background task (`resources.background`) so it returns at
once; at shutdown the running ones get a short grace, then are cancelled: a cancelled
drain still closes its stream and records its row, billed from what streamed so far.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from proxy.pipeline.core import Chunks, Context, Reply
from proxy.pipeline.dispatch import record

if TYPE_CHECKING:
    from proxy.resources import Resources

log = logging.getLogger("proxy.drain")
CLIENT_CLOSED = 499  # nginx's "client closed request": the ledger status of such requests
MAX_BYTES = 32 * 1024 * 1024
# the ledger status of a stream whose upstream broke off (cut, stalled, malformed) after the
# client got its 200: the client saw an error event, and the row must count as a failure
UPSTREAM_BROKE_OFF = 502


async def drain(chunks: Chunks, seconds: float, max_bytes: int) -> str | None:
    """Read `chunks` to their end, dropping them; why it stopped early, or None.

    The bounds are checked as chunks arrive, never by cancelling a read (that could land
    in a stage's end hook); a stalled upstream is ended by the client's read timeout.
    """
    loop = asyncio.get_running_loop()
    deadline, read = loop.time() + seconds, 0
    async for chunk in chunks:
        read += len(chunk)
        if read > max_bytes:
            return f"more than {max_bytes} bytes came after the client left"
        if loop.time() > deadline:
            return f"the upstream still streamed {seconds:g}s after the client left"
    return None


async def close_and_record(resources: Resources, ctx: Context, reply: Reply, status: int) -> None:
    """Close the reply's stream (its end hooks run) and record its ledger row."""
    assert reply.chunks is not None
    try:
        await reply.chunks.aclose()  # type: ignore[attr-defined]
    finally:
        record(resources, ctx, reply, status=status)


async def finish_abandoned(resources: Resources, ctx: Context, reply: Reply) -> None:
    """Read on a stream the client left, then close it and record it as 499."""
    assert reply.chunks is not None
    reply.client_left = True
    ctx.decide("upstream", "client_left", "the client closed the stream; reading the rest "
               "of it (unsent) so the upstream's usage is billed")
    seconds = resources.upstream.upstream_for(reply.model or ctx.model).total_timeout
    try:
        why = await drain(reply.chunks, seconds, MAX_BYTES)
        if why:
            ctx.decide("upstream", "drain_cut", why)
    except Exception:  # the end hooks and the ledger row below must still happen
        log.exception("reading on request %s after its client left failed", ctx.request_id)
    finally:
        await close_and_record(resources, ctx, reply, CLIENT_CLOSED)


async def stream_reply(resources: Resources, ctx: Context, reply: Reply,
                       send: Callable[[], Awaitable[None]]) -> None:
    """Run `send` (which writes the reply's stream to the client); however it ends, the
    reply is closed and recorded once: when the client left, the rest is read on in the
    background and billed (`finish_abandoned`); at shutdown, what streamed is billed; when
    the upstream broke off, the row says 502 (the client got an error event), billed from
    what streamed."""
    status, handed_off = reply.status, False
    try:
        await send()
    except ConnectionResetError:
        # SDKs hang up as soon as they read [DONE]: a stream that came whole keeps its status
        if reply.error is None and not reply.completed:
            # the client went away, the upstream did not: read it on (behind) so it is billed
            resources.background.start(finish_abandoned(resources, ctx, reply), name="drain")
            handed_off = True
    except asyncio.CancelledError:
        status = CLIENT_CLOSED  # shutting down: billed from what streamed so far
        raise
    finally:
        if not handed_off:
            if reply.error is not None and status < 400:
                status = UPSTREAM_BROKE_OFF
            await close_and_record(resources, ctx, reply, status)
