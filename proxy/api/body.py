"""Reading a request body: within a time limit, decoded from its Content-Encoding, bounded.

The server runs with aiohttp's own decompression off (`proxy.server.SERVER_OPTIONS`),
so that every problem with a body is answered here, in OpenAI's error shape: a body
still arriving `server.body_timeout_seconds` after the request started is a 408, a
corrupt gzip or deflate body a 400, any other encoding a 415, and a body above
`server.max_body_bytes`, as sent or once decoded, a 413.
"""

from __future__ import annotations

import asyncio
import zlib

from aiohttp import web

from proxy.errors import InvalidRequest, PayloadTooLarge, RequestTimeout, UnsupportedEncoding
from proxy.resources import RESOURCES

IDENTITY = ("", "identity")
ZLIB_FORMATS = {"gzip": 31, "x-gzip": 31, "deflate": 15}  # wbits of each encoding
INLINE_DECODE_BYTES = 256 * 1024  # larger bodies are decompressed in a worker thread


async def read_body(request: web.Request) -> bytes:
    """The request body, decoded; OpenAI-shaped errors for every way it can go wrong."""
    server = request.app[RESOURCES].config.server
    try:
        async with asyncio.timeout(server.body_timeout_seconds):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeout(f"The request body was not received within "
                             f"{server.body_timeout_seconds:g} seconds "
                             "(server.body_timeout_seconds).") from None
    except web.HTTPRequestEntityTooLarge:
        raise too_large(server.max_body_bytes) from None
    except web.RequestPayloadError:  # e.g. broken chunked framing
        raise InvalidRequest("The request body could not be read: its transfer framing is "
                             "malformed.", code="invalid_body") from None
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in IDENTITY or not raw:
        return raw
    if encoding not in ZLIB_FORMATS:
        raise UnsupportedEncoding(f"Content-Encoding {encoding!r} is not supported; send the "
                                  "body uncompressed or as gzip or deflate.")
    if len(raw) <= INLINE_DECODE_BYTES:
        return decode(raw, encoding, server.max_body_bytes)
    return await asyncio.to_thread(decode, raw, encoding, server.max_body_bytes)


def decode(raw: bytes, encoding: str, limit: int) -> bytes:
    """Decompress a gzip or deflate body of at most `limit` bytes once decoded."""
    wbits = ZLIB_FORMATS[encoding]
    if wbits == 15 and not _has_zlib_header(raw):
        wbits = -15  # "deflate" is sent both zlib-wrapped (as the RFC says) and raw
    decoder = zlib.decompressobj(wbits)
    try:
        body = decoder.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"The request body is not valid {encoding} data "
                             f"(Content-Encoding: {encoding}): {exc}.",
                             code="invalid_body") from None
    if len(body) > limit:
        raise too_large(limit)
    if not decoder.eof:
        raise InvalidRequest(f"The request body is truncated {encoding} data "
                             f"(Content-Encoding: {encoding}).", code="invalid_body")
    return body


def too_large(limit: int) -> PayloadTooLarge:
    """The 413 for a body above `limit` bytes."""
    return PayloadTooLarge(f"Request body too large: the limit is {limit} bytes "
                           "(server.max_body_bytes).")


def _has_zlib_header(raw: bytes) -> bool:
    return len(raw) >= 2 and raw[0] & 0x0F == 8 and (raw[0] << 8 | raw[1]) % 31 == 0
