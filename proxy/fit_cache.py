"""Fitted models kept on disk, so a restart loads them instead of fitting again.

The context classifier and the pair verifier are fitted at start-up from the packaged
examples (and the operator's), which takes a minute on a busy 2-core machine and imports
scikit-learn (~90 MB) for the forest. The result depends only on the examples, the
calibration targets, the embedding engine's vectors and the fitting code, so it is kept
under a key made of all of them (the code by the hash of the modules that compute
features and fit) in PROXY_FIT_CACHE (default ~/.cache/llm-cost-proxy/fitted), written
atomically. A missing, unreadable or unwritable cache only means fitting again.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import numpy as np

log = logging.getLogger("proxy.learn")
F = TypeVar("F", bound="Storable")
FORMAT = 1
# the code a fitted model depends on: a change to any of them fits again
CODE = ("proxy.learn", "proxy.pipeline.semantic.pair_model",
        "proxy.pipeline.semantic.standalone", "proxy.pipeline.semantic.followup",
        "proxy.pipeline.semantic.paraphrase", "proxy.pipeline.text")


def cache_dir() -> Path:
    """Where fitted models are kept."""
    configured = os.environ.get("PROXY_FIT_CACHE")
    return Path(configured) if configured else \
        Path.home() / ".cache" / "llm-cost-proxy" / "fitted"


def _code_digest() -> str:
    digest = hashlib.sha256()
    for name in CODE:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        digest.update(name.encode() + b"\0" + Path(spec.origin).read_bytes())
    return digest.hexdigest()


def fit_key(kind: str, *inputs: object) -> str:
    """The cache key of a `kind` of model fitted from `inputs` (their repr must name every
    value that changes the fit) with the current code."""
    digest = hashlib.sha256(f"{FORMAT}:{kind}:{_code_digest()}:{inputs!r}".encode())
    return f"{kind}-{digest.hexdigest()[:32]}"


def load(key: str) -> dict[str, np.ndarray] | None:
    """The arrays stored under `key`, or None (not stored, or unreadable)."""
    path = cache_dir() / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring the unreadable fitted model %s: %s", path, exc)
        return None


def save(key: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Store `arrays` under `key` (atomically; a failure is logged, not raised)."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=folder, suffix=".npz.tmp")
        with os.fdopen(handle, "wb") as out:
            np.savez(out, **cast(dict[str, Any], arrays))  # names only, never allow_pickle
        os.replace(temp, folder / f"{key}.npz")
    except OSError as exc:
        log.warning("could not keep the fitted model %s in %s: %s", key, folder, exc)


class Storable(Protocol):
    """A fit that can be kept as arrays."""

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fit as named arrays."""
        ...


async def fitted(kind: str, key: tuple[object, ...], memo: dict[tuple[object, ...], F],
                 restore: Callable[[Mapping[str, np.ndarray]], F],
                 fit: Callable[[], Awaitable[F]]) -> F:
    """The fit of `kind` for `key`: this process's (`memo`), else the one kept on disk
    (`restore`d), else a new one from `fit()`, kept in both."""
    if key in memo:
        return memo[key]
    disk_key = fit_key(kind, *key)
    stored = await asyncio.to_thread(load, disk_key)
    if stored is not None:
        memo[key] = restore(stored)
        return memo[key]
    made = memo[key] = await fit()
    await asyncio.to_thread(save, disk_key, made.to_arrays())
    return made
