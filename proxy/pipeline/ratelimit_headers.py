"""OpenAI's `x-ratelimit-*` response headers, shared by the admission and budget stages.

Both stages write into `ctx.ratelimit_headers`; the admission
stage (first in the chain) copies it onto every reply and error of a limited key.
"""

from __future__ import annotations

import math

from proxy.pipeline.core import Context
from proxy.store.limits import Window


def duration(seconds: float) -> str:
    """A duration the way OpenAI writes it: `20ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def retry_after(seconds: float) -> str:
    """`Retry-After` in whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def record_window(ctx: Context, kind: str, window: Window | None) -> dict[str, str]:
    """Put the `kind` (requests|tokens) triple of `window` into the request's headers."""
    headers = ctx.ratelimit_headers
    if window is not None:
        headers[f"x-ratelimit-limit-{kind}"] = str(window.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(window.remaining)
        headers[f"x-ratelimit-reset-{kind}"] = duration(window.reset_seconds)
    return headers
