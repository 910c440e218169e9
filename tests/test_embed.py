"""The embedder: one model per process, concurrent requests micro-batched off the loop."""

from __future__ import annotations

import asyncio

import numpy as np

from proxy.embed import DIMENSIONS, Embedder

TEXTS = [f"how do I look after a {thing}?" for thing in (
    "cactus", "goldfish", "sourdough starter", "leather jacket", "bonsai tree", "wool sweater",
    "cast iron pan", "vinyl record", "hamster", "rose bush")] * 4


async def test_concurrent_embeds_are_encoded_in_few_batches() -> None:
    embedder = Embedder(max_batch=32)
    await embedder.wait_ready()
    await asyncio.gather(*(embedder.embed(t) for t in TEXTS))
    await embedder.aclose()
    assert embedder.encode_calls == 2  # 40 waiting texts: a batch of 32, then 8


async def test_batched_vectors_equal_one_by_one_vectors() -> None:
    embedder = Embedder()
    alone = [await embedder.embed(t) for t in TEXTS[:10]]
    together = await asyncio.gather(*(embedder.embed(t) for t in TEXTS[:10]))
    await embedder.aclose()
    np.testing.assert_allclose(np.stack(alone), np.stack(together), atol=1e-5)


async def test_vectors_are_unit_length_float32_rows() -> None:
    embedder = Embedder()
    rows = await embedder.embed_many(["a cat", "a dog", "a tax return"])
    await embedder.aclose()
    assert rows.shape == (3, DIMENSIONS) and rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    assert rows[0] @ rows[1] > rows[0] @ rows[2]


async def test_cached_texts_are_encoded_once() -> None:
    embedder = Embedder()
    await embedder.embed_cached(["kettle", "teapot"])
    calls = embedder.encode_calls
    found = await embedder.embed_cached(["teapot", "kettle"])
    await embedder.aclose()
    assert embedder.encode_calls == calls and set(found) == {"kettle", "teapot"}
